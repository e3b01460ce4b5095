package portal

import (
	"fmt"
	"html/template"
	"time"
)

// funcs are the template functions every page may use.
var funcs = template.FuncMap{
	// when formats a time for people (UTC, minutes); "—" for nil/zero.
	"when": func(v any) string {
		var t time.Time
		switch x := v.(type) {
		case time.Time:
			t = x
		case *time.Time:
			if x != nil {
				t = *x
			}
		}
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	// iso formats a time for <time datetime> and scripts.
	"iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	// bytes formats a byte count (1.5 MiB).
	"bytes": func(n int64) string {
		const unit = 1024
		if n < unit {
			return fmt.Sprintf("%d B", n)
		}
		div, exp := int64(unit), 0
		for m := n / unit; m >= unit; m /= unit {
			div *= unit
			exp++
		}
		return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
	},
	// money formats an amount in the smallest currency unit (cents).
	"money": func(cents int64, currency string) string {
		return fmt.Sprintf("%.2f %s", float64(cents)/100, currency)
	},
}
