package hubnode

import (
	"context"
	"fmt"
	"log/slog"
)

// slogLogger is nats-server's Logger over slog, so a hub node logs in the
// same format (json or text) as the rest of fleetplane.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) log(level slog.Level, format string, v []any) {
	if !s.l.Enabled(context.Background(), level) {
		return
	}
	s.l.Log(context.Background(), level, fmt.Sprintf(format, v...), "component", "nats-server")
}

func (s slogLogger) Noticef(format string, v ...any) { s.log(slog.LevelInfo, format, v) }
func (s slogLogger) Warnf(format string, v ...any)   { s.log(slog.LevelWarn, format, v) }

// Fatalf is logged, not fatal: embedded, the server returns from Start and
// Start reports that it did not become ready.
func (s slogLogger) Fatalf(format string, v ...any) { s.log(slog.LevelError, format, v) }
func (s slogLogger) Errorf(format string, v ...any) { s.log(slog.LevelError, format, v) }
func (s slogLogger) Debugf(format string, v ...any) { s.log(slog.LevelDebug, format, v) }
func (s slogLogger) Tracef(format string, v ...any) { s.log(slog.LevelDebug-4, format, v) }
