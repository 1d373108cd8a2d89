// Package memory owns a VM's guest RAM: anonymous host mappings laid out at
// guest physical addresses around the x86 MMIO hole (or, NewAt, as one
// region where the arm64 machine puts RAM), and the GPA->host table
// every other part of govmm uses to read and write guest memory. All access
// goes through bounds-checked methods, so a guest-controlled address can
// never reach host memory outside the guest's RAM.
package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"govmm/platform"
)

// The x86 physical address map govmm builds: RAM from 0 up to the MMIO hole,
// the hole (IOAPIC, LAPIC, HPET, PCI windows, firmware) up to 4 GiB, and any
// remaining RAM above 4 GiB.
const (
	MMIOHoleStart = 0xC000_0000
	MMIOHoleEnd   = 0x1_0000_0000
	PageSize      = 4096
)

// ErrOutOfRange is wrapped by accesses that fall outside guest RAM.
var ErrOutOfRange = errors.New("guest physical address is not RAM")

// Region is one contiguous range of guest RAM and its host mapping.
type Region struct {
	GPA  uint64
	Host []byte
}

// End is the first GPA after the region.
func (r Region) End() uint64 { return r.GPA + uint64(len(r.Host)) }

// Memory is a VM's guest RAM.
type Memory struct {
	regions []Region // sorted by GPA, non-overlapping
	// maps are the host mappings to unmap on Close (a region may be an
	// aligned window into a larger reservation).
	maps [][]byte
	size uint64
	// For RAM mapped from a file: each region's offset in the file and
	// the file's data (non-hole) ranges. See MaybeNonZero.
	fileOff  []int64
	fileData []extent
	// dirty is the VMM's dirty page log while it is on (see dirty.go).
	dirty atomic.Pointer[dirtyLog]
}

// Options tune how anonymous guest RAM is mapped.
type Options struct {
	// HugePages asks for transparent huge pages (MADV_HUGEPAGE). Guest
	// RAM is always mapped 2 MiB-aligned, so the kernel can back it with
	// huge pages; asking for them trades a larger resident size and a
	// slower first touch (each 2 MiB is zeroed at once) for fewer TLB
	// misses in guests with large working sets.
	HugePages bool
}

// hugePage is the alignment of anonymous guest RAM in host memory.
const hugePage = 2 << 20

// New maps size bytes of anonymous guest RAM (private, not reserved) in
// the standard x86 layout.
func New(size uint64) (*Memory, error) {
	return NewWithOptions(size, Options{})
}

// NewWithOptions is New with mapping options.
func NewWithOptions(size uint64, o Options) (*Memory, error) {
	return newMapped(size, -1, o)
}

// NewFromFile maps size bytes of guest RAM from f, private and
// copy-on-write, so nothing is copied up front (snapshot restore). The file
// holds RAM in GPA order with the MMIO hole squeezed out (the layout
// snapshot.WriteDir writes). NewFromFile notes where the file has holes
// (MaybeNonZero), which moves f's offset.
func NewFromFile(f *os.File, size uint64) (*Memory, error) {
	return newMapped(size, int(f.Fd()), Options{})
}

func newMapped(size uint64, fd int, o Options) (*Memory, error) {
	if size == 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("guest memory size %d is not a positive multiple of %d", size, PageSize)
	}
	low := min(size, MMIOHoleStart)
	layout := []Region{{GPA: 0, Host: nil}}
	lens := []uint64{low}
	if size > low {
		layout = append(layout, Region{GPA: MMIOHoleEnd})
		lens = append(lens, size-low)
	}
	return mapLayout(size, layout, lens, fd, o)
}

// NewAt maps size bytes of anonymous guest RAM as one region starting at
// gpa: the arm64 machine's layout (RAM above its device space, no hole).
func NewAt(gpa, size uint64, o Options) (*Memory, error) {
	return newAt(gpa, size, -1, o)
}

// NewAtFromFile is NewAt with RAM mapped from f, private and copy-on-write,
// as NewFromFile does for the x86 layout (a restored arm64 snapshot).
func NewAtFromFile(f *os.File, gpa, size uint64) (*Memory, error) {
	return newAt(gpa, size, int(f.Fd()), Options{})
}

func newAt(gpa, size uint64, fd int, o Options) (*Memory, error) {
	if size == 0 || size%PageSize != 0 || gpa%PageSize != 0 {
		return nil, fmt.Errorf("guest memory of %d bytes at %#x: want a positive multiple of %d at a page-aligned address", size, gpa, PageSize)
	}
	if gpa+size < gpa {
		return nil, fmt.Errorf("guest memory of %d bytes at %#x wraps the address space", size, gpa)
	}
	return mapLayout(size, []Region{{GPA: gpa}}, []uint64{size}, fd, o)
}

// mapLayout maps the regions of layout, lens[i] bytes each, anonymous or
// (fd >= 0) from consecutive ranges of the file.
func mapLayout(size uint64, layout []Region, lens []uint64, fd int, o Options) (*Memory, error) {
	m := &Memory{size: size}
	var off int64
	for i, r := range layout {
		n := lens[i]
		var (
			b   []byte
			err error
		)
		if fd >= 0 {
			b, err = unix.Mmap(fd, off, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
		} else {
			// Reserve 2 MiB more and use the aligned window, so that
			// the guest's 2 MiB frames line up with host huge pages.
			b, err = unix.Mmap(-1, 0, int(n)+hugePage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("map %d MiB of guest memory at %#x: %w", n>>20, r.GPA, err)
		}
		m.maps = append(m.maps, b)
		if fd < 0 {
			skip := (hugePage - int(reflect.ValueOf(b).Pointer()%hugePage)) % hugePage
			b = b[skip : skip+int(n) : skip+int(n)]
			if o.HugePages {
				_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // best effort
			}
		}
		r.Host = b
		m.regions = append(m.regions, r)
		if fd >= 0 {
			m.fileOff = append(m.fileOff, off)
		}
		off += int64(n)
	}
	if fd >= 0 {
		m.fileData = dataExtents(fd, off)
	}
	return m, nil
}

// Close unmaps guest RAM. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	var first error
	for _, b := range m.maps {
		if err := unix.Munmap(b); err != nil && first == nil {
			first = err
		}
	}
	m.regions, m.maps = nil, nil
	return first
}

// Size is the amount of guest RAM in bytes.
func (m *Memory) Size() uint64 { return m.size }

// Regions lists the RAM regions in GPA order. The slice must not be modified.
func (m *Memory) Regions() []Region { return m.regions }

// find returns the region holding gpa.
func (m *Memory) find(gpa uint64) (*Region, bool) {
	i := sort.Search(len(m.regions), func(i int) bool { return m.regions[i].End() > gpa })
	if i < len(m.regions) && m.regions[i].GPA <= gpa {
		return &m.regions[i], true
	}
	return nil, false
}

// IsRAM reports whether [gpa, gpa+n) lies entirely in guest RAM.
func (m *Memory) IsRAM(gpa, n uint64) bool {
	_, err := m.Slice(gpa, n)
	return err == nil
}

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// within one RAM region.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	r, ok := m.find(gpa)
	if !ok || n > r.End()-gpa {
		return nil, fmt.Errorf("%w: [%#x, %#x)", ErrOutOfRange, gpa, gpa+n)
	}
	off := gpa - r.GPA
	return r.Host[off : off+n : off+n], nil
}

// Read copies guest memory at gpa into buf. Ranges may span regions only
// where the regions are contiguous.
func (m *Memory) Read(gpa uint64, buf []byte) error {
	for len(buf) > 0 {
		r, ok := m.find(gpa)
		if !ok {
			return fmt.Errorf("read %d bytes at GPA %#x: %w", len(buf), gpa, ErrOutOfRange)
		}
		n := copy(buf, r.Host[gpa-r.GPA:])
		buf = buf[n:]
		gpa += uint64(n)
	}
	return nil
}

// Write copies buf into guest memory at gpa.
func (m *Memory) Write(gpa uint64, buf []byte) error {
	for len(buf) > 0 {
		r, ok := m.find(gpa)
		if !ok {
			return fmt.Errorf("write %d bytes at GPA %#x: %w", len(buf), gpa, ErrOutOfRange)
		}
		n := copy(r.Host[gpa-r.GPA:], buf)
		buf = buf[n:]
		gpa += uint64(n)
	}
	return nil
}

// ReadU32 reads a little-endian uint32 at gpa.
func (m *Memory) ReadU32(gpa uint64) (uint32, error) {
	var b [4]byte
	err := m.Read(gpa, b[:])
	return binary.LittleEndian.Uint32(b[:]), err
}

// ReadU64 reads a little-endian uint64 at gpa.
func (m *Memory) ReadU64(gpa uint64) (uint64, error) {
	var b [8]byte
	err := m.Read(gpa, b[:])
	return binary.LittleEndian.Uint64(b[:]), err
}

// WriteU32 writes a little-endian uint32 at gpa.
func (m *Memory) WriteU32(gpa uint64, v uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return m.Write(gpa, b[:])
}

// WriteU64 writes a little-endian uint64 at gpa.
func (m *Memory) WriteU64(gpa uint64, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return m.Write(gpa, b[:])
}

// E820 describes guest RAM as e820 ranges (type 1 = usable RAM). The
// legacy hole between 640 KiB and 1 MiB (VGA, option ROMs, BIOS) is
// reported as reserved so that loaders never place data there, and so is
// the PCI ECAM window (platform.PCIECAMBase), which Linux accepts for
// MMCONFIG only where firmware reserved it.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820 returns the guest's physical memory map.
func (m *Memory) E820() []E820Entry {
	var out []E820Entry
	for _, r := range m.regions {
		if r.GPA == 0 {
			low := uint64(len(r.Host))
			out = append(out, E820Entry{0, min(low, 0x9FC00), E820RAM})
			if low > 0x100000 {
				out = append(out, E820Entry{0x9FC00, 0x100000 - 0x9FC00, E820Reserved})
				out = append(out, E820Entry{0x100000, low - 0x100000, E820RAM})
			}
			out = append(out, E820Entry{platform.PCIECAMBase, platform.PCIECAMSize, E820Reserved})
			continue
		}
		out = append(out, E820Entry{r.GPA, uint64(len(r.Host)), E820RAM})
	}
	return out
}
