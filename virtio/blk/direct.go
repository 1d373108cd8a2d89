package blk

// direct=on: the image is opened with O_DIRECT, so the guest's data goes
// between guest RAM and the disk without the host's page cache. O_DIRECT
// has alignment rules the guest does not know: the file offset and
// length must be multiples of the file system's offset alignment (often
// the device's logical block size, 512 or 4096), and each buffer's
// address a multiple of its memory alignment. A request whose offset,
// segment lengths and guest addresses all fit goes straight to and from
// guest RAM; any other is served through an aligned bounce buffer, with a
// read-modify-write of the partial blocks at its ends for a write. The
// image's last bytes past its last whole aligned block (an image whose
// size is not a multiple of the alignment) go through a second, buffered
// descriptor, so a read-modify-write never extends the file.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// bounceLen is the size of one worker's bounce buffer: a request longer
// than this is served in pieces.
const bounceLen = 1 << 20

// maxAlign bounds the alignments govmm accepts from a file system.
const maxAlign = 64 << 10

// dio is the O_DIRECT state of a disk.
type dio struct {
	memAlign int64 // buffer addresses: a multiple of this
	offAlign int64 // file offsets and lengths: multiples of this
	// alignSrc says where the alignments came from, for messages.
	alignSrc string
	// end is the image size rounded down to offAlign; bytes from end on
	// go through tail, a buffered descriptor (nil when end is the size).
	end  int64
	tail *os.File
	// locks keeps mutating requests whose aligned spans overlap from
	// running at once: a read-modify-write of a block would otherwise
	// write back stale data over a neighbour's sectors.
	locks rangeLock
	// zeroCopy and bounced count the requests served from guest RAM
	// directly and through the bounce buffer (tests, benchmarks).
	zeroCopy, bounced atomic.Uint64
}

// openDirect opens path with O_DIRECT and finds its alignments. A file
// system that refuses O_DIRECT, or reports that it cannot do direct I/O
// on this file, is an error that names the file and the option.
func openDirect(path string, flag int, size int64) (*os.File, *dio, error) {
	f, err := os.OpenFile(path, flag|unix.O_DIRECT, 0)
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			return nil, nil, fmt.Errorf("disk %s: direct=on: the file system refuses O_DIRECT (%v); put the image on a file system that supports it (ext4, xfs, btrfs) or drop direct=on", path, err)
		}
		return nil, nil, fmt.Errorf("disk: %w", err)
	}
	d, err := dioAlignment(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("disk %s: direct=on: %w", path, err)
	}
	d.end = size &^ (d.offAlign - 1)
	if err := d.probe(f); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("disk %s: direct=on: the file system refused an aligned O_DIRECT read (%d bytes at offset 0, alignment %s): %w; drop direct=on or move the image", path, d.offAlign, d.alignSrc, err)
	}
	if d.end != size {
		t, err := os.OpenFile(path, flag, 0)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("disk: %w", err)
		}
		d.tail = t
	}
	return f, d, nil
}

// dioAlignment asks statx for the file's direct I/O alignments
// (STATX_DIOALIGN, Linux 6.1); without them it takes the logical block
// size of the file system's device from sysfs for both, or 4096, which
// every common device divides.
func dioAlignment(f *os.File) (*dio, error) {
	var st unix.Statx_t
	err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st)
	if err == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
		if st.Dio_mem_align == 0 || st.Dio_offset_align == 0 {
			return nil, errors.New("the file system does not do direct I/O on this file (statx reports no direct I/O alignment): drop direct=on or move the image")
		}
		return newDIO(int64(st.Dio_mem_align), int64(st.Dio_offset_align), "statx")
	}
	if err == nil {
		if lbs, ok := logicalBlockSize(st.Dev_major, st.Dev_minor); ok {
			return newDIO(lbs, lbs, "the device's logical block size")
		}
	}
	return newDIO(4096, 4096, "a default of 4096")
}

func newDIO(mem, off int64, src string) (*dio, error) {
	for _, a := range []int64{mem, off} {
		if a <= 0 || a&(a-1) != 0 || a > maxAlign {
			return nil, fmt.Errorf("direct I/O alignment %d (memory %d, offset %d, from %s) is not a power of two up to %d", a, mem, off, src, maxAlign)
		}
	}
	if mem > int64(os.Getpagesize()) {
		return nil, fmt.Errorf("direct I/O memory alignment %d (from %s) is larger than a page", mem, src)
	}
	// A bounce buffer is aligned to both; a sector-granular request is
	// widened to whole offset-aligned blocks.
	return &dio{memAlign: mem, offAlign: max(off, sectorSize), alignSrc: fmt.Sprintf("memory %d, offset %d, from %s", mem, off, src)}, nil
}

// logicalBlockSize reads the logical block size of block device
// major:minor (a partition's is its disk's).
func logicalBlockSize(major, minor uint32) (int64, bool) {
	dir := filepath.Join("/sys/dev/block", strconv.FormatUint(uint64(major), 10)+":"+strconv.FormatUint(uint64(minor), 10))
	for _, p := range []string{filepath.Join(dir, "queue", "logical_block_size"), filepath.Join(dir, "..", "queue", "logical_block_size")} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err == nil && n > 0 {
			return n, true
		}
	}
	return 0, false
}

// probe reads the first aligned block, for file systems that accept
// O_DIRECT at open and refuse it on I/O.
func (d *dio) probe(f *os.File) error {
	if d.end == 0 {
		return nil
	}
	b, err := allocBounce(int(d.offAlign))
	if err != nil {
		return err
	}
	defer freeBounce(b)
	_, err = unix.Pread(int(f.Fd()), b, 0)
	return err
}

// allocBounce maps n bytes of page-aligned anonymous memory.
func allocBounce(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("bounce buffer of %d bytes: %w", n, err)
	}
	return b, nil
}

func freeBounce(b []byte) {
	if b != nil {
		unix.Munmap(b)
	}
}

// bounceSize is a bounce buffer's length for the alignment: at least
// bounceLen, a whole number of aligned blocks.
func (d *dio) bounceSize() int {
	return int((bounceLen + d.offAlign - 1) &^ (d.offAlign - 1))
}

// aligned reports whether the request can go to the guest's buffers as
// they are: its offset and each buffer's length a multiple of the offset
// alignment, and each buffer's address of the memory alignment.
func (d *dio) aligned(segs [][]byte, off int64) bool {
	if off&(d.offAlign-1) != 0 {
		return false
	}
	for _, p := range segs {
		if int64(len(p))&(d.offAlign-1) != 0 || int64(reflect.ValueOf(p).Pointer())&(d.memAlign-1) != 0 {
			return false
		}
	}
	return true
}

// span returns the aligned blocks [a0, a1) that [off, off+n) touches.
func (d *dio) span(off, n int64) (int64, int64) {
	return off &^ (d.offAlign - 1), (off + n + d.offAlign - 1) &^ (d.offAlign - 1)
}

// splitTail cuts a request at end: the part before goes through the
// direct descriptor, the part from end on through the buffered one.
func (d *dio) splitTail(segs [][]byte, off, n int64) (head [][]byte, tail [][]byte, tailOff int64) {
	if d.tail == nil || off+n <= d.end {
		return segs, nil, 0
	}
	k := max(d.end-off, 0)
	head, tail = cut(segs, k)
	return head, tail, off + k
}

// readAt reads [off, off+n) into segs (n bytes in all).
func (d *dio) readAt(fd int, segs [][]byte, off, n int64, bounce []byte) error {
	segs, tail, toff := d.splitTail(segs, off, n)
	if tail != nil {
		if err := preadSegs(int(d.tail.Fd()), tail, toff); err != nil {
			return err
		}
		n = toff - off
	}
	if n == 0 {
		return nil
	}
	if d.aligned(segs, off) {
		err := preadSegs(fd, segs, off)
		if !errors.Is(err, unix.EINVAL) {
			d.zeroCopy.Add(1)
			return err
		}
		// EINVAL: an alignment rule statx did not tell; the bounce
		// buffer meets every rule.
	}
	d.bounced.Add(1)
	a0, a1 := d.span(off, n)
	sc := scatter{segs: segs}
	for pos := a0; pos < a1; {
		m := min(int64(len(bounce)), a1-pos)
		if err := preadFull(fd, bounce[:m], pos); err != nil {
			return err
		}
		lo, hi := max(off, pos), min(off+n, pos+m)
		sc.put(bounce[lo-pos : hi-pos])
		pos += m
	}
	return nil
}

// writeAt writes segs (n bytes in all) at off. The caller holds the
// range lock for [off, off+n)'s aligned span.
func (d *dio) writeAt(fd int, segs [][]byte, off, n int64, bounce []byte) error {
	segs, tail, toff := d.splitTail(segs, off, n)
	if tail != nil {
		if err := pwriteSegs(int(d.tail.Fd()), tail, toff); err != nil {
			return err
		}
		n = toff - off
	}
	if n == 0 {
		return nil
	}
	if d.aligned(segs, off) {
		err := pwriteSegs(fd, segs, off)
		if !errors.Is(err, unix.EINVAL) {
			d.zeroCopy.Add(1)
			return err
		}
	}
	d.bounced.Add(1)
	a0, a1 := d.span(off, n)
	g := gather{segs: segs}
	for pos := a0; pos < a1; {
		m := min(int64(len(bounce)), a1-pos)
		buf := bounce[:m]
		// The partial blocks at the request's two ends keep the bytes
		// the request does not cover.
		if off > pos {
			if err := preadFull(fd, buf[:d.offAlign], pos); err != nil {
				return err
			}
		}
		if last := pos + m - d.offAlign; off+n < pos+m && (last > pos || off <= pos) {
			if err := preadFull(fd, buf[last-pos:], last); err != nil {
				return err
			}
		}
		lo, hi := max(off, pos), min(off+n, pos+m)
		g.take(buf[lo-pos : hi-pos])
		if err := pwriteFull(fd, buf, pos); err != nil {
			return err
		}
		pos += m
	}
	return nil
}

// preadSegs reads consecutive file bytes from off into each buffer, with
// one preadv for up to iovMax buffers: a request's scatter list as the
// guest gave it (a 1 MiB request is up to 256 page-sized buffers, which
// took a pread, a system call, each).
func preadSegs(fd int, segs [][]byte, off int64) error { return vectored(fd, segs, off, true) }

// pwriteSegs writes each buffer's bytes at consecutive offsets from off,
// with pwritev, as preadSegs reads.
func pwriteSegs(fd int, segs [][]byte, off int64) error { return vectored(fd, segs, off, false) }

// iovMax is Linux's bound on one call's buffers (UIO_MAXIOV).
const iovMax = 1024

// vectored reads (preadv) or writes (pwritev) segs at off until every
// byte moved: after a short transfer (a signal, a file system that splits
// the call) it goes on from the byte where the call stopped. A read that
// meets the end of the file first is io.ErrUnexpectedEOF (the image
// shrank under the VM). The caller's segs are left as they were.
func vectored(fd int, segs [][]byte, off int64, read bool) error {
	segs = append([][]byte(nil), segs...)
	for {
		for len(segs) > 0 && len(segs[0]) == 0 {
			segs = segs[1:]
		}
		if len(segs) == 0 {
			return nil
		}
		batch := segs[:min(len(segs), iovMax)]
		var k int
		var err error
		if read {
			k, err = unix.Preadv(fd, batch, off)
		} else {
			k, err = unix.Pwritev(fd, batch, off)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			if read {
				return io.ErrUnexpectedEOF
			}
			return io.ErrShortWrite
		}
		off += int64(k)
		for k > 0 && k >= len(segs[0]) {
			k -= len(segs[0])
			segs = segs[1:]
		}
		if k > 0 {
			segs[0] = segs[0][k:]
		}
	}
}

// preadFull reads len(p) bytes at off; the end of the file first is
// io.ErrUnexpectedEOF (the image shrank under the VM).
func preadFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		k, err := unix.Pread(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return io.ErrUnexpectedEOF
		}
		p, off = p[k:], off+int64(k)
	}
	return nil
}

func pwriteFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		k, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return io.ErrShortWrite
		}
		p, off = p[k:], off+int64(k)
	}
	return nil
}

// cut splits a buffer list after its first k bytes.
func cut(segs [][]byte, k int64) (head, tail [][]byte) {
	for i, p := range segs {
		if k == 0 {
			return head, append(tail, segs[i:]...)
		}
		if int64(len(p)) <= k {
			head = append(head, p)
			k -= int64(len(p))
			continue
		}
		head = append(head, p[:k])
		tail = append(append(tail, p[k:]), segs[i+1:]...)
		return head, tail
	}
	return head, tail
}

// scatter copies consecutive bytes into a buffer list.
type scatter struct {
	segs [][]byte
	i, o int
}

func (s *scatter) put(b []byte) {
	for len(b) > 0 && s.i < len(s.segs) {
		k := copy(s.segs[s.i][s.o:], b)
		b, s.o = b[k:], s.o+k
		if s.o == len(s.segs[s.i]) {
			s.i, s.o = s.i+1, 0
		}
	}
}

// gather copies consecutive bytes out of a buffer list.
type gather struct {
	segs [][]byte
	i, o int
}

func (g *gather) take(b []byte) {
	for len(b) > 0 && g.i < len(g.segs) {
		k := copy(b, g.segs[g.i][g.o:])
		b, g.o = b[k:], g.o+k
		if g.o == len(g.segs[g.i]) {
			g.i, g.o = g.i+1, 0
		}
	}
}

// rangeLock serializes holders of overlapping byte ranges.
type rangeLock struct {
	mu   sync.Mutex
	cond sync.Cond
	held [][2]int64
}

func (l *rangeLock) lock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cond.L == nil {
		l.cond.L = &l.mu
	}
	for l.overlaps(a, b) {
		l.cond.Wait()
	}
	l.held = append(l.held, [2]int64{a, b})
}

func (l *rangeLock) overlaps(a, b int64) bool {
	for _, h := range l.held {
		if a < h[1] && h[0] < b {
			return true
		}
	}
	return false
}

func (l *rangeLock) unlock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, h := range l.held {
		if h == [2]int64{a, b} {
			l.held = append(l.held[:i], l.held[i+1:]...)
			break
		}
	}
	l.cond.Broadcast()
}
