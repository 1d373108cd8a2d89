// Package initramfs writes Linux initramfs images: uncompressed cpio
// "newc" archives built from host files, trees and inline content. The
// nested-KVM harness builds L1's root with it, and the e2e tests the root of
// their Linux guests.
package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Archive collects the files of an initramfs, keyed by their absolute path
// in the guest, and writes them as one uncompressed cpio "newc" archive.
// Uncompressed because the guests that unpack it may run on TCG, where
// unpacking gzip costs seconds, and a RAM-backed root costs nothing. Later
// entries replace earlier ones; parent directories are added as needed.
type Archive struct {
	entries map[string]entry
}

type entry struct {
	mode    uint32 // S_IF* | permission bits
	src     string // host file to copy (regular files)
	data    []byte // inline content (regular files) or link target
	symlink bool
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

// New returns an empty archive.
func New() *Archive { return &Archive{entries: map[string]entry{}} }

// Dir adds a directory and its parents.
func (a *Archive) Dir(p string) {
	p = path.Clean("/" + p)
	for q := p; q != "/"; q = path.Dir(q) {
		if e, ok := a.entries[q]; ok && e.mode&sIFDIR != 0 {
			break
		}
		a.entries[q] = entry{mode: sIFDIR | 0o755}
	}
}

// Bytes adds a regular file with the given content and permissions.
func (a *Archive) Bytes(p string, perm uint32, data []byte) {
	p = path.Clean("/" + p)
	a.Dir(path.Dir(p))
	a.entries[p] = entry{mode: sIFREG | perm&0o7777, data: data}
}

// File adds the host file src (symlinks followed) at path p.
func (a *Archive) File(p, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	p = path.Clean("/" + p)
	a.Dir(path.Dir(p))
	a.entries[p] = entry{mode: sIFREG | uint32(st.Mode().Perm()), src: src}
	return nil
}

// Symlink adds a symbolic link at p pointing to target.
func (a *Archive) Symlink(p, target string) {
	p = path.Clean("/" + p)
	a.Dir(path.Dir(p))
	a.entries[p] = entry{mode: sIFLNK | 0o777, data: []byte(target), symlink: true}
}

// Tree adds the host directory root at the same path, keeping symlinks as
// links, skipping what skip says to.
func (a *Archive) Tree(root string, skip func(rel string, d fs.DirEntry) bool) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if skip != nil && rel != "." && skip(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir():
			a.Dir(p)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			a.Symlink(p, target)
		case d.Type().IsRegular():
			return a.File(p, p)
		}
		return nil
	})
}

// Write writes the archive, parents before children.
func (a *Archive) Write(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for p := range a.entries {
		names = append(names, p)
	}
	sort.Strings(names) // a parent sorts before everything below it
	bw := bufio.NewWriterSize(w, 1<<20)
	ino := uint32(1)
	for _, p := range names {
		e := a.entries[p]
		data := e.data
		if e.src != "" {
			b, err := os.ReadFile(e.src)
			if err != nil {
				return err
			}
			data = b
		}
		if err := writeCPIO(bw, strings.TrimPrefix(p, "/"), e.mode, ino, data); err != nil {
			return err
		}
		ino++
	}
	if err := writeCPIO(bw, "TRAILER!!!", 0, 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}

// WriteFile writes the archive to a new file at path.
func (a *Archive) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := a.Write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeCPIO writes one newc record: a 110-byte ASCII header, the name with
// its NUL padded to four bytes, then the data padded to four bytes.
func writeCPIO(w *bufio.Writer, name string, mode, ino uint32, data []byte) error {
	nlink := uint32(1)
	if mode&sIFDIR != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.WriteString(hdr)
	w.WriteString(name)
	w.WriteByte(0)
	pad(w, len(hdr)+len(name)+1)
	w.Write(data)
	_, err := w.Write(make([]byte, (4-len(data)%4)%4))
	return err
}

func pad(w *bufio.Writer, n int) {
	for ; n%4 != 0; n++ {
		w.WriteByte(0)
	}
}
