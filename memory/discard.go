package memory

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Discard gives the host memory behind guest RAM [gpa, gpa+n) back to the
// host kernel (MADV_DONTNEED), for a balloon device whose driver handed
// those pages to the host. The range must be whole pages inside one RAM
// region. Afterwards anonymous RAM reads as zeros and RAM mapped from a
// snapshot's memory file reads as the file holds it (a private mapping
// drops the guest's copy); either way the page costs the host nothing
// until it is touched again.
//
// The pages are marked in the VMM's dirty log: their contents changed
// without a write the accelerator's log sees, so a live migration in
// progress sends them again as they read now, and the destination agrees
// with the source. A snapshot reads RAM as it is, so it needs nothing.
func (m *Memory) Discard(gpa, n uint64) error {
	if gpa%PageSize != 0 || n%PageSize != 0 {
		return fmt.Errorf("discard guest RAM [%#x, +%#x): not whole 4 KiB pages", gpa, n)
	}
	if n == 0 {
		return nil
	}
	b, err := m.Slice(gpa, n)
	if err != nil {
		return fmt.Errorf("discard guest RAM: %w", err)
	}
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("discard guest RAM [%#x, +%#x): madvise(MADV_DONTNEED): %w", gpa, n, err)
	}
	m.MarkDirty(gpa, n)
	return nil
}
