// Package guests embeds the bare-metal guest images built from this
// directory (freestanding C and assembly, `make -C guests`), so that the
// govmm binary carries its default guest and tests run the project's own
// guests without needing gcc. The blobs in bin/ are committed; the test in
// this package rebuilds them and fails when a committed blob is stale.
package guests

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// arm64Bin holds the arm64 guests (Linux arm64 Images, bin/*.img): every
// build embeds them (the arm64 govmm runs them; x86 hosts hand them to
// arm64 machines in tests). The x86 guests are embedded by x86.go, which
// the arm64 build leaves out.
//
//go:embed bin/*.img
var arm64Bin embed.FS

// sources are the embedded file systems, each holding a bin/ directory.
var sources = []embed.FS{arm64Bin}

// open returns the embedded file system holding bin/name.
func open(name string) (embed.FS, bool) {
	for _, s := range sources {
		if _, err := fs.Stat(s, "bin/"+name); err == nil {
			return s, true
		}
	}
	return embed.FS{}, false
}

// files lists the embedded file names (e.g. "probe.elf").
func files() []string {
	var out []string
	for _, s := range sources {
		ents, err := fs.ReadDir(s, "bin")
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir() {
				out = append(out, e.Name())
			}
		}
	}
	sort.Strings(out)
	return out
}

func stem(f string) string { return strings.TrimSuffix(f, path.Ext(f)) }

// Names returns the names Image accepts, sorted: each image's file name
// without its extension ("probe" for bin/probe.elf).
func Names() []string {
	var out []string
	for _, f := range files() {
		out = append(out, stem(f))
	}
	return out
}

// Image returns the embedded image called name, given either without its
// extension ("probe") or as its file name ("probe.elf").
func Image(name string) ([]byte, error) {
	var match []string
	for _, f := range files() {
		if f == name {
			match = []string{f}
			break
		}
		if stem(f) == name {
			match = append(match, f)
		}
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("no built-in guest image %q (available: %s)", name, strings.Join(Names(), ", "))
	case 1:
		s, _ := open(match[0])
		return s.ReadFile("bin/" + match[0])
	default:
		return nil, fmt.Errorf("guest image name %q is ambiguous (%s): give the file name", name, strings.Join(match, ", "))
	}
}
