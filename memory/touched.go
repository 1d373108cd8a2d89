package memory

import (
	"encoding/binary"
	"errors"
	"os"
	"reflect"

	"golang.org/x/sys/unix"
)

// extent is a byte range [start, end) of a file.
type extent struct{ start, end int64 }

// Bits of a /proc/self/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
)

// MaybeNonZero returns a bitmap over region i of Regions(), one bit per
// page (bit p%64 of word p/64), set where the page may hold non-zero bytes.
// A clear bit is a promise that the page reads as zeros, found without
// reading it: scans for zero pages (snapshot, live migration) skip those
// pages, which for a mostly idle guest is most of its RAM, and do not
// fault them in.
//
// Anonymous RAM that the host never backed (neither present nor swapped
// out, per /proc/self/pagemap) reads as zeros. For RAM mapped from a file
// (a restored snapshot) such a page reads from the file, so it is zero only
// where the file has a hole. When pagemap cannot be read, every bit is set.
func (m *Memory) MaybeNonZero(i int) []uint64 {
	r := m.regions[i]
	pages := len(r.Host) / PageSize
	bm := make([]uint64, (pages+63)/64)
	set := func(p int) { bm[p/64] |= 1 << (p % 64) }
	if err := m.backedPages(r, set); err != nil {
		for p := 0; p < pages; p++ {
			set(p)
		}
		return bm
	}
	if m.fileOff != nil {
		base := m.fileOff[i]
		for _, e := range m.fileData {
			first := max(e.start, base) - base
			last := min(e.end, base+int64(len(r.Host))) - base
			for off := first &^ (PageSize - 1); off < last; off += PageSize {
				set(int(off / PageSize))
			}
		}
	}
	return bm
}

// backedPages calls set for every page of r that the host has backed.
func (m *Memory) backedPages(r Region, set func(page int)) error {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer f.Close()
	// The pagemap is indexed by virtual page number; the address is only
	// used as that index.
	vpn := int64(reflect.ValueOf(r.Host).Pointer()) / PageSize
	pages := len(r.Host) / PageSize
	buf := make([]byte, 8*min(pages, 64<<10))
	for done := 0; done < pages; {
		n := min(pages-done, len(buf)/8)
		got, err := f.ReadAt(buf[:8*n], 8*(vpn+int64(done)))
		if got != 8*n {
			if err == nil {
				err = errors.New("short read")
			}
			return err
		}
		for k := 0; k < n; k++ {
			if binary.LittleEndian.Uint64(buf[8*k:])&(pagemapPresent|pagemapSwapped) != 0 {
				set(done + k)
			}
		}
		done += n
	}
	return nil
}

// dataExtents lists the data ranges of the first size bytes of file fd
// (SEEK_DATA/SEEK_HOLE); a file system without them is all data.
func dataExtents(fd int, size int64) []extent {
	var out []extent
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) { // no data after off
				return out
			}
			return []extent{{0, size}}
		}
		if start >= size {
			return out
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return []extent{{0, size}}
		}
		end = min(end, size)
		out = append(out, extent{start, end})
		off = end
	}
	return out
}
