package controlplane

// The projection and the period's days, for table tests (usage_service.go).
var (
	ProjectCharge = projectCharge
	PeriodDays    = periodDays
)
