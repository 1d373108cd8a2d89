package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"govmm/memory"
)

// A snapshot directory holds two files.
const (
	StateFile  = "state"
	MemoryFile = "memory"
)

// Progress is told how many bytes of guest memory have been processed.
type Progress func(done, total uint64)

// WriteDir writes a snapshot: Write, then Commit.
func WriteDir(dir string, st *State, mem *memory.Memory, progress Progress) error {
	p, err := Write(dir, st, mem, progress)
	if err != nil {
		return err
	}
	return p.Commit()
}

// Pending is a snapshot whose files are written but not yet durable nor
// under their real names: Commit or Abort it.
type Pending struct {
	dir, memTmp, stTmp string
	mem, st            *os.File
}

// Write writes a snapshot's files under temporary names: the state file
// and guest memory as a sparse file (all-zero pages are holes, so an idle
// 2 GiB guest costs what it touched). Write is the part that reads guest
// memory, so the VM must stay paused until it returns; once it has, the
// snapshot no longer depends on guest memory (the kernel holds its own
// copy), and the VM may run while Commit makes the files durable.
func Write(dir string, st *State, mem *memory.Memory, progress Progress) (*Pending, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create snapshot directory: %w", err)
	}
	b, err := st.Marshal()
	if err != nil {
		return nil, err
	}
	p := &Pending{dir: dir, memTmp: filepath.Join(dir, "."+MemoryFile+".tmp"), stTmp: filepath.Join(dir, "."+StateFile+".tmp")}
	if p.mem, err = writeMemory(p.memTmp, mem, progress); err != nil {
		p.Abort()
		return nil, err
	}
	if p.st, err = createWrite(p.stTmp, b); err != nil {
		p.Abort()
		return nil, err
	}
	return p, nil
}

// Commit makes the files durable and gives them their real names, the
// state file last: an interrupted snapshot never leaves a half-written one
// behind under the real names, and one that replaces an older snapshot
// removes the old state file first, so that the old state is never paired
// with the new memory.
func (p *Pending) Commit() error {
	for _, f := range []*os.File{p.mem, p.st} {
		if err := f.Sync(); err != nil {
			p.Abort()
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
		if err := f.Close(); err != nil {
			p.Abort()
			return fmt.Errorf("close %s: %w", f.Name(), err)
		}
	}
	p.mem, p.st = nil, nil
	if err := os.Remove(filepath.Join(p.dir, StateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.Abort()
		return fmt.Errorf("replace the old snapshot: %w", err)
	}
	if err := os.Rename(p.memTmp, filepath.Join(p.dir, MemoryFile)); err != nil {
		p.Abort()
		return fmt.Errorf("snapshot memory file: %w", err)
	}
	if err := os.Rename(p.stTmp, filepath.Join(p.dir, StateFile)); err != nil {
		p.Abort()
		return fmt.Errorf("snapshot state file: %w", err)
	}
	return nil
}

// Abort removes what Write wrote.
func (p *Pending) Abort() {
	for _, f := range []*os.File{p.mem, p.st} {
		if f != nil {
			f.Close()
		}
	}
	p.mem, p.st = nil, nil
	os.Remove(p.memTmp)
	os.Remove(p.stTmp)
}

// createWrite creates path and writes b to it; the caller syncs and closes.
func createWrite(path string, b []byte) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return f, nil
}

// writeMemory writes RAM in GPA order with the MMIO hole squeezed out (the
// layout memory.NewFromFile maps), skipping zero pages: those the host
// never backed without reading them (memory.MaybeNonZero), the others by
// looking. It returns the file open and not yet synced.
func writeMemory(path string, mem *memory.Memory, progress Progress) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create snapshot memory file: %w", err)
	}
	total := mem.Size()
	var off int64
	const chunk = 1 << 20
	for i, r := range mem.Regions() {
		maybe := mem.MaybeNonZero(i)
		for p := 0; p < len(r.Host); p += chunk {
			end := min(p+chunk, len(r.Host))
			if err := writeNonZero(f, off+int64(p), r.Host[p:end], maybe, p/memory.PageSize); err != nil {
				f.Close()
				return nil, fmt.Errorf("write guest memory at GPA %#x: %w", r.GPA+uint64(p), err)
			}
			if progress != nil {
				progress(uint64(off)+uint64(end), total)
			}
		}
		off += int64(len(r.Host))
	}
	if err := f.Truncate(off); err != nil {
		f.Close()
		return nil, fmt.Errorf("size snapshot memory file: %w", err)
	}
	return f, nil
}

// writeNonZero writes the non-zero pages of b at off, leaving holes. Page
// k of b is page first+k of the maybe bitmap (memory.MaybeNonZero).
func writeNonZero(f *os.File, off int64, b []byte, maybe []uint64, first int) error {
	const page = memory.PageSize
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := f.WriteAt(b[start:end], off+int64(start))
		start = -1
		return err
	}
	for p := 0; p < len(b); p += page {
		k := first + p/page
		if maybe[k/64]&(1<<(k%64)) == 0 || IsZero(b[p:p+page]) {
			if err := flush(p); err != nil {
				return err
			}
		} else if start < 0 {
			start = p
		}
	}
	return flush(len(b))
}

// zeroPage is what IsZero compares against.
var zeroPage [memory.PageSize]byte

// IsZero reports whether b holds only zero bytes. It compares against a
// zero page with bytes.Equal, which the runtime vectorises: scanning the
// untouched RAM of a 2 GiB guest for its zero pages takes tens of
// milliseconds instead of hundreds with a byte or word loop.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// ReadDir reads and validates a snapshot directory's state file and opens
// its memory file (for memory.NewFromFile). The caller closes the file.
func ReadDir(dir string) (*State, *os.File, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("%s is not a govmm snapshot (no %s file)", dir, StateFile)
		}
		return nil, nil, err
	}
	st, err := Unmarshal(b)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	f, err := os.Open(filepath.Join(dir, MemoryFile))
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s: guest memory: %w", dir, err)
	}
	return st, f, nil
}

// CheckMemoryFile verifies the memory file holds exactly size bytes.
func CheckMemoryFile(f *os.File, size uint64) error {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if uint64(end) != size {
		return fmt.Errorf("snapshot memory file is %d bytes but the machine has %d bytes of RAM (truncated or from another snapshot)", end, size)
	}
	return nil
}
