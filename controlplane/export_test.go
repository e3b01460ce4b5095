package controlplane

import "time"

// SetNow replaces the Service's clock (tests of time-based policies).
func SetNow(s *Service, now func() time.Time) { s.now = now }
