package migrate

import (
	"encoding/binary"
	"fmt"
	"hash/crc64"
	"strings"

	"govmm/memory"
)

// Verification (SendOptions.Verify) is an end-to-end check of a live
// migration: once the source has sent its last dirty pages, paused, it
// sends a checksum of every guest RAM page as it holds it, and the
// destination compares them with the pages it received before it starts
// the VM. A page that differs means a write the dirty logs missed (the
// accelerator's, the VMM's devices', the substrate's), which otherwise
// shows only as a guest that crashes minutes later; the destination
// refuses the VM, naming the pages, and the source resumes.
//
// Wire: 'V' u32 len, then u32 region index, u32 first page, and a u64
// CRC-64 (ECMA) per page, up to verifyPagesPerFrame pages a frame, for
// every page of every region in order; the destination checks that the
// frames cover its RAM exactly.

const (
	msgVerify           = 'V'
	verifyPagesPerFrame = 64 << 10
	maxVerifyFrame      = 8 + 8*verifyPagesPerFrame
	// maxMismatchGPAs is how many differing pages a refusal names.
	maxMismatchGPAs = 8
)

var crcTable = crc64.MakeTable(crc64.ECMA)

// zeroPageCRC is the checksum of a page of zeros: pages the host never
// backed have it without being read (memory.MaybeNonZero).
var zeroPageCRC = crc64.Checksum(make([]byte, pageSize), crcTable)

// pageCRCs checksums count pages of region r of mem from page first.
func pageCRCs(mem *memory.Memory, r, first, count int, maybe []uint64, out []uint64) {
	host := mem.Regions()[r].Host
	for i := range count {
		p := first + i
		if maybe[p/64]&(1<<(p%64)) == 0 {
			out[i] = zeroPageCRC
			continue
		}
		out[i] = crc64.Checksum(host[p*pageSize:(p+1)*pageSize], crcTable)
	}
}

// sendVerify sends the checksums of all of mem (the VM paused, the last
// pages sent).
func sendVerify(mem *memory.Memory, frame func(payload []byte) error) error {
	buf := make([]byte, maxVerifyFrame)
	sums := make([]uint64, verifyPagesPerFrame)
	for r, reg := range mem.Regions() {
		maybe := mem.MaybeNonZero(r)
		pages := len(reg.Host) / pageSize
		for first := 0; first < pages; first += verifyPagesPerFrame {
			n := min(pages-first, verifyPagesPerFrame)
			pageCRCs(mem, r, first, n, maybe, sums[:n])
			binary.LittleEndian.PutUint32(buf[0:], uint32(r))
			binary.LittleEndian.PutUint32(buf[4:], uint32(first))
			for i, s := range sums[:n] {
				binary.LittleEndian.PutUint64(buf[8+8*i:], s)
			}
			if err := frame(buf[:8+8*n]); err != nil {
				return err
			}
		}
	}
	return nil
}

// verifier compares the source's checksums with the received memory.
type verifier struct {
	mem      *memory.Memory
	maybe    [][]uint64 // per region, computed on the first frame
	next     []int      // per region: the next page a frame must start at
	pages    uint64     // pages compared
	diff     uint64     // pages that differ
	diffGPAs []uint64
	sums     []uint64
}

func newVerifier(mem *memory.Memory) *verifier {
	return &verifier{mem: mem, next: make([]int, len(mem.Regions())), maybe: make([][]uint64, len(mem.Regions()))}
}

// frame checks one 'V' frame's payload.
func (v *verifier) frame(b []byte) error {
	if len(b) < 8 || (len(b)-8)%8 != 0 {
		return fmt.Errorf("verification frame of %d bytes is not a header and whole checksums", len(b))
	}
	r := int(binary.LittleEndian.Uint32(b))
	first := int(binary.LittleEndian.Uint32(b[4:]))
	n := (len(b) - 8) / 8
	regions := v.mem.Regions()
	if r >= len(regions) {
		return fmt.Errorf("verification frame for memory region %d; this VM has %d", r, len(regions))
	}
	pages := len(regions[r].Host) / pageSize
	if first != v.next[r] || n == 0 || n > pages-first {
		return fmt.Errorf("verification frame for pages %d-%d of region %d (%d pages) out of order: page %d expected", first, first+n-1, r, pages, v.next[r])
	}
	if v.maybe[r] == nil {
		v.maybe[r] = v.mem.MaybeNonZero(r)
	}
	if cap(v.sums) < n {
		v.sums = make([]uint64, verifyPagesPerFrame)
	}
	sums := v.sums[:n]
	pageCRCs(v.mem, r, first, n, v.maybe[r], sums)
	for i, s := range sums {
		if s != binary.LittleEndian.Uint64(b[8+8*i:]) {
			v.diff++
			if len(v.diffGPAs) < maxMismatchGPAs {
				v.diffGPAs = append(v.diffGPAs, regions[r].GPA+uint64(first+i)*pageSize)
			}
		}
	}
	v.pages += uint64(n)
	v.next[r] = first + n
	return nil
}

// result is nil when every page was compared and matched.
func (v *verifier) result() error {
	for r, reg := range v.mem.Regions() {
		if pages := len(reg.Host) / pageSize; v.next[r] != pages {
			return fmt.Errorf("migration verification covered %d of the %d pages of memory region %d (GPA %#x)", v.next[r], pages, r, reg.GPA)
		}
	}
	if v.diff == 0 {
		return nil
	}
	gpas := make([]string, len(v.diffGPAs))
	for i, g := range v.diffGPAs {
		gpas[i] = fmt.Sprintf("%#x", g)
	}
	more := ""
	if v.diff > uint64(len(gpas)) {
		more = ", ..."
	}
	return fmt.Errorf("migration verification failed: %d of %d guest pages here differ from the source's (GPA %s%s): the source's dirty tracking missed writes, so this copy of the VM is not started",
		v.diff, v.pages, strings.Join(gpas, ", "), more)
}
