// Package web holds the portal's HTML templates and static assets
// (templates/, static/), embedded into the binary: the portal works
// offline, with no CDN, fonts or map tiles. controlplane/portal renders
// them; nothing here imports Fleetplane code.
package web

import (
	"embed"
	"io/fs"
)

// templates/*.html, not templates: embedding a directory leaves out the
// files whose names begin with "_" (the partials).
//
//go:embed templates/*.html static
var files embed.FS

// Templates are the html/template sources: layout.html and one file per page.
func Templates() fs.FS { return sub("templates") }

// Static are the assets served under /static/.
func Static() fs.FS { return sub("static") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		panic(err) // the directories are embedded at build time
	}
	return f
}
