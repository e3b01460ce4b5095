package controlplane

import (
	"regexp"
)

// Identifier rules. Vehicle IDs and environments become NATS subject tokens
// (fleet.<env>.veh.<vid>...), so they may never contain '.', '*', '>' or
// whitespace; slugs appear in URLs.
var (
	vehicleIDRe   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	slugRe        = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$`)
	environmentRe = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$`)
	regionRe      = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$`)
	labelKeyRe    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
)

// ValidVehicleID reports whether s is a valid vehicle ID: 1-64 characters of
// [A-Za-z0-9_-], a single NATS subject token.
func ValidVehicleID(s string) bool { return vehicleIDRe.MatchString(s) }

// ValidSlug reports whether s is a valid fleet slug: 1-63 characters of
// [a-z0-9-], starting and ending with a letter or digit.
func ValidSlug(s string) bool { return slugRe.MatchString(s) }

// ValidEnvironment reports whether s is a valid fleet environment: 1-32
// characters of [a-z0-9_-], starting and ending with a letter or digit.
func ValidEnvironment(s string) bool { return environmentRe.MatchString(s) }

// ValidRegionName reports whether s is a valid region name (like a slug, at most 32 characters).
func ValidRegionName(s string) bool { return regionRe.MatchString(s) }

// ValidLabelKey reports whether s is a valid vehicle label key.
func ValidLabelKey(s string) bool { return labelKeyRe.MatchString(s) }

const (
	MaxNameLen        = 200
	MaxDescriptionLen = 2000
	MaxLabels         = 32
	MaxLabelValueLen  = 256
)

// vehicleIDRule is the validation message for a vehicle ID.
const vehicleIDRule = "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-' (it becomes a NATS subject token)"
