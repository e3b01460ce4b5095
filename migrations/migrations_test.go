package migrations_test

import (
	"io/fs"
	"regexp"
	"strconv"
	"testing"

	"github.com/fleetplane/fleetplane/migrations"
)

var nameRe = regexp.MustCompile(`^(\d{6})_([a-z]+(?:_[a-z0-9]+)+)\.(up|down)\.sql$`)

// TestFiles checks the conventions golang-migrate and reviewers rely on:
// NNNNNN_verb_noun names, numbers from 1 without gaps, an up and a down
// file for each, none empty.
func TestFiles(t *testing.T) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	type pair struct{ up, down bool }
	byVersion := map[int]*pair{}
	names := map[int]string{}
	for _, e := range entries {
		m := nameRe.FindStringSubmatch(e.Name())
		if m == nil {
			t.Errorf("%s: not NNNNNN_verb_noun.(up|down).sql", e.Name())
			continue
		}
		v, _ := strconv.Atoi(m[1])
		if n, ok := names[v]; ok && n != m[2] {
			t.Errorf("version %d has two names: %s and %s", v, n, m[2])
		}
		names[v] = m[2]
		p := byVersion[v]
		if p == nil {
			p = &pair{}
			byVersion[v] = p
		}
		if m[3] == "up" {
			p.up = true
		} else {
			p.down = true
		}
		if b, err := fs.ReadFile(migrations.FS, e.Name()); err != nil || len(b) == 0 {
			t.Errorf("%s: empty or unreadable (%v)", e.Name(), err)
		}
	}
	if len(byVersion) == 0 {
		t.Fatal("no migrations embedded")
	}
	for v := 1; v <= len(byVersion); v++ {
		p := byVersion[v]
		switch {
		case p == nil:
			t.Errorf("version %06d is missing (versions must have no gaps)", v)
		case !p.up || !p.down:
			t.Errorf("version %06d: up=%v down=%v; both are needed", v, p.up, p.down)
		}
	}
}
