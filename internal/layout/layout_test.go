// Package layout holds a test that keeps the layout of DESIGN.md §7: the
// domain imports no adapter, adapters do not import each other, and the
// edge never imports the control plane.
package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/fleetplane/fleetplane/"

// deps lists the module's packages that pkg depends on.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", module+pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var ds []string
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, module) {
			ds = append(ds, strings.TrimPrefix(d, module))
		}
	}
	return ds
}

func TestLayout(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool on PATH")
	}
	// Every package under controlplane/ is an adapter of the domain.
	out, err := exec.Command("go", "list", module+"controlplane/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	var adapters []string
	for _, p := range strings.Fields(string(out)) {
		if d := strings.TrimPrefix(p, module); d != "controlplane" {
			adapters = append(adapters, d)
		}
	}
	if len(adapters) < 7 {
		t.Fatalf("found only adapters %v", adapters)
	}
	isAdapter := func(d string) bool {
		for _, a := range adapters {
			if d == a {
				return true
			}
		}
		return false
	}
	for _, d := range deps(t, "controlplane") {
		if isAdapter(d) || strings.HasPrefix(d, "edge") || strings.HasPrefix(d, "cmd") {
			t.Errorf("the domain (controlplane) imports %s", d)
		}
	}
	for _, a := range adapters {
		for _, d := range deps(t, a) {
			if d != a && isAdapter(d) {
				t.Errorf("adapter %s imports adapter %s (only cmd/ wires adapters)", a, d)
			}
		}
	}
	for _, p := range []string{"edge/...", "cmd/fleetplane-agent"} {
		out, err := exec.Command("go", "list", module+p).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, pkg := range strings.Fields(string(out)) {
			for _, d := range deps(t, strings.TrimPrefix(pkg, module)) {
				if strings.HasPrefix(d, "controlplane") {
					t.Errorf("%s imports %s: the edge never imports the control plane", pkg, d)
				}
			}
		}
	}
}
