package snapshot

import (
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

// WriteDir writes a snapshot: the state file and guest memory as a sparse
// file (all-zero pages are holes, so an idle 2 GiB guest costs what it
// touched). Files are written under temporary names and renamed, so an
// interrupted snapshot never leaves a half-written one behind under the
// real names.
func WriteDir(dir string, st *State, mem *memory.Memory, progress Progress) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create snapshot directory: %w", err)
	}
	b, err := st.Marshal()
	if err != nil {
		return err
	}
	memTmp := filepath.Join(dir, "."+MemoryFile+".tmp")
	if err := writeMemory(memTmp, mem, progress); err != nil {
		os.Remove(memTmp)
		return err
	}
	stTmp := filepath.Join(dir, "."+StateFile+".tmp")
	if err := writeFileSync(stTmp, b); err != nil {
		os.Remove(memTmp)
		return err
	}
	if err := os.Rename(memTmp, filepath.Join(dir, MemoryFile)); err != nil {
		return fmt.Errorf("snapshot memory file: %w", err)
	}
	if err := os.Rename(stTmp, filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("snapshot state file: %w", err)
	}
	return nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// writeMemory writes RAM in GPA order with the MMIO hole squeezed out (the
// layout memory.NewFromFile maps), skipping zero pages.
func writeMemory(path string, mem *memory.Memory, progress Progress) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create snapshot memory file: %w", err)
	}
	defer f.Close()
	total := mem.Size()
	var off int64
	const chunk = 1 << 20
	for _, r := range mem.Regions() {
		for p := 0; p < len(r.Host); p += chunk {
			end := min(p+chunk, len(r.Host))
			if err := writeNonZero(f, off+int64(p), r.Host[p:end]); err != nil {
				return fmt.Errorf("write guest memory at GPA %#x: %w", r.GPA+uint64(p), err)
			}
			if progress != nil {
				progress(uint64(off)+uint64(end), total)
			}
		}
		off += int64(len(r.Host))
	}
	if err := f.Truncate(off); err != nil {
		return fmt.Errorf("size snapshot memory file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync snapshot memory file: %w", err)
	}
	return f.Close()
}

// writeNonZero writes the non-zero pages of b at off, leaving holes.
func writeNonZero(f *os.File, off int64, b []byte) error {
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
		if isZero(b[p : p+page]) {
			if err := flush(p); err != nil {
				return err
			}
		} else if start < 0 {
			start = p
		}
	}
	return flush(len(b))
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
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
