package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/internal/directio"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// directDir is a fresh directory on a file system that takes O_DIRECT:
// the test's temporary directory where it does (not on tmpfs before
// Linux 6.6, nor on ramfs), else one under /var/tmp or the package's
// own directory, which are on disk on most machines.
func directDir(t testing.TB) string {
	t.Helper()
	if d := t.TempDir(); directio.Supported(d) {
		return d
	}
	wd, _ := os.Getwd()
	for _, base := range []string{"/var/tmp", wd} {
		d, err := os.MkdirTemp(base, "govmm-blk-direct-")
		if err != nil {
			continue
		}
		if directio.Supported(d) {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
		os.RemoveAll(d)
	}
	t.Skipf("no file system here takes O_DIRECT (tried %s, /var/tmp and %s): the direct=on path cannot be tested on this machine", os.TempDir(), wd)
	return ""
}

// refusingDir is a directory on a file system that refuses O_DIRECT at
// open: /dev/shm where it is tmpfs from before Linux 6.6, else a ramfs
// the test mounts (as root).
func refusingDir(t *testing.T) string {
	t.Helper()
	if d, err := os.MkdirTemp("/dev/shm", "govmm-blk-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
		if !directio.Supported(d) {
			return d
		}
	}
	d := t.TempDir()
	if err := unix.Mount("govmm-blk-test", d, "ramfs", 0, ""); err != nil {
		t.Skipf("no file system that refuses O_DIRECT: /dev/shm takes it (tmpfs since Linux 6.6) and mounting a ramfs failed: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	if directio.Supported(d) {
		t.Skip("ramfs took O_DIRECT")
	}
	return d
}

// image writes a deterministic image of n bytes at path.
func image(t testing.TB, path string, n int, seed uint64) []byte {
	t.Helper()
	img := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// forceAlign makes a direct disk use alignment a (a multiple of the file
// system's), as a file system with 4 KiB logical blocks would: the
// bounce and read-modify-write paths then run on any machine.
func forceAlign(t testing.TB, d *Device, a int64) {
	t.Helper()
	d.dio.memAlign, d.dio.offAlign = a, a
	d.dio.alignSrc = fmt.Sprintf("%d, forced by the test", a)
	d.dio.end = d.size &^ (a - 1)
	if d.dio.end != d.size && d.dio.tail == nil {
		flag := os.O_RDWR
		if d.cfg.ReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(d.cfg.Path, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		d.dio.tail = f
	}
}

// Layout of the requests the tests below put in guest memory: headers
// and status bytes for up to 64 chains at once, data at dataBase on.
const (
	hdrBase    = 0x100000
	statusBase = 0x110000
	dataBase   = 0x400000
	dataEnd    = 0x800000
)

// ioReq is one request: its type, sector and data buffers (their Write
// flag set for reads).
type ioReq struct {
	typ    uint32
	sector uint64
	data   []virtiotest.Seg
}

// run puts the requests in the queue all at once, waits for them all and
// returns their status bytes and used lengths.
func (r *rig) run(reqs []ioReq) ([]byte, []uint32) {
	r.t.Helper()
	idx := map[uint16]int{}
	for i, q := range reqs {
		h := r.d.Mem.B[hdrBase+16*i:]
		binary.LittleEndian.PutUint32(h, q.typ)
		binary.LittleEndian.PutUint32(h[4:], 0)
		binary.LittleEndian.PutUint64(h[8:], q.sector)
		segs := append([]virtiotest.Seg{{GPA: uint64(hdrBase + 16*i), Len: 16}}, q.data...)
		r.d.Mem.B[statusBase+i] = 0xee
		segs = append(segs, virtiotest.Seg{GPA: uint64(statusBase + i), Len: 1, Write: true})
		idx[r.d.Put(0, segs, 0)] = i
	}
	st, lens := make([]byte, len(reqs)), make([]uint32, len(reqs))
	for range reqs {
		u, err := r.d.Wait(0, wait)
		if err != nil {
			r.t.Fatal(err)
		}
		i := idx[uint16(u.ID)]
		st[i], lens[i] = r.d.Mem.B[statusBase+i], u.Len
	}
	return st, lens
}

// segBytes is the concatenation of the buffers' bytes in guest memory.
func segBytes(mem []byte, segs []virtiotest.Seg) []byte {
	var out []byte
	for _, s := range segs {
		out = append(out, mem[s.GPA:s.GPA+uint64(s.Len)]...)
	}
	return out
}

// layout places n bytes in guest memory as buffers: aligned ones (4 KiB
// addresses and lengths) or buffers of random lengths, which split
// sectors, at random addresses, which are unaligned.
func layout(r *rand.Rand, n uint32, aligned, write bool) []virtiotest.Seg {
	var segs []virtiotest.Seg
	gpa := uint64(dataBase)
	for n > 0 {
		k := n
		if aligned {
			k = min(n, 4096*uint32(1+r.IntN(4)))
		} else {
			gpa += uint64(r.IntN(700))
			if r.IntN(3) > 0 {
				k = min(n, 1+uint32(r.IntN(3000)))
			}
		}
		segs = append(segs, virtiotest.Seg{GPA: gpa, Len: k, Write: write})
		gpa += uint64(k)
		if aligned {
			gpa = (gpa + 4095) &^ 4095
		}
		n -= k
	}
	return segs
}

func seg16(sector uint64, n, flags uint32) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, sector)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

// TestDirectMatchesBuffered runs the same random requests on a buffered
// and a direct disk (reads and writes of guest buffers that are aligned
// or not, whose lengths split sectors, discards and write-zeroes) and
// checks each read against a model of the image, both disks' reads
// against each other byte for byte, and both images against the model
// at the end. It runs at the file system's own alignment and at 4 KiB,
// with an image whose size is not a multiple of 4 KiB (its last 1536
// bytes go through the buffered descriptor).
func TestDirectMatchesBuffered(t *testing.T) {
	dir := directDir(t)
	for _, align := range []int64{0, 4096} {
		name := "fs-alignment"
		if align != 0 {
			name = fmt.Sprintf("align-%d", align)
		}
		t.Run(name, func(t *testing.T) {
			const size = 1<<20 + 1536
			sectors := uint64(size / 512)
			pb, pd := filepath.Join(dir, name+"-buffered.img"), filepath.Join(dir, name+"-direct.img")
			model := image(t, pb, size, 7)
			image(t, pd, size, 7)
			memB, err := virtiotest.NewMem(8 << 20)
			if err != nil {
				t.Fatal(err)
			}
			defer memB.RAM.Close()
			memD, err := virtiotest.NewMem(8 << 20)
			if err != nil {
				t.Fatal(err)
			}
			defer memD.RAM.Close()
			rb := newRigAt(t, Config{Path: pb}, memB, nil)
			rd := newRigAt(t, Config{Path: pd, Direct: true}, memD, func(d *Device) {
				if align != 0 {
					forceAlign(t, d, align)
				}
			})
			t.Logf("alignment: %s; end of the direct part %d of %d bytes", rd.dev.dio.alignSrc, rd.dev.dio.end, size)
			r := rand.New(rand.NewPCG(uint64(align), 3))
			for op := range 600 {
				var q ioReq
				var payload []byte
				kind := r.IntN(10)
				switch {
				case kind < 4: // read
					n := uint32(1+r.IntN(40)) * 512
					q = ioReq{typ: tIn, sector: uint64(r.IntN(int(sectors - uint64(n/512) + 1))), data: layout(r, n, r.IntN(3) == 0, true)}
					if q.data[0].Len%4096 == 0 && r.IntN(2) == 0 {
						q.sector &^= 7
					}
				case kind < 8: // write
					n := uint32(1+r.IntN(40)) * 512
					q = ioReq{typ: tOut, sector: uint64(r.IntN(int(sectors - uint64(n/512) + 1))), data: layout(r, n, r.IntN(3) == 0, false)}
					if r.IntN(2) == 0 {
						q.sector &^= 7
					}
					payload = make([]byte, n)
					for i := range payload {
						payload[i] = byte(r.Uint32())
					}
				case kind == 8: // flush
					q = ioReq{typ: tFlush}
				default: // discard or write-zeroes of 1..24 sectors
					typ, flags := uint32(tDiscard), uint32(0)
					if r.IntN(2) == 0 {
						typ, flags = tWriteZeroes, uint32(r.IntN(2))
					}
					cnt := uint32(1 + r.IntN(24))
					start := uint64(r.IntN(int(sectors - uint64(cnt) + 1)))
					payload = seg16(start, cnt, flags)
					q = ioReq{typ: typ, data: []virtiotest.Seg{{GPA: dataBase + uint64(r.IntN(100)), Len: 16}}}
					clear(model[start*512 : (start+uint64(cnt))*512])
				}
				for _, m := range [][]byte{memB.B, memD.B} {
					clear(m[dataBase:dataEnd])
					if payload != nil {
						off := 0
						for _, s := range q.data {
							off += copy(m[s.GPA:s.GPA+uint64(s.Len)], payload[off:])
						}
					}
				}
				sb, lb := rb.run([]ioReq{q})
				sd, ld := rd.run([]ioReq{q})
				if sb[0] != sOK || sd[0] != sOK || lb[0] != ld[0] {
					t.Fatalf("op %d (type %d, sector %d, %d buffers): buffered status %d len %d, direct status %d len %d", op, q.typ, q.sector, len(q.data), sb[0], lb[0], sd[0], ld[0])
				}
				switch q.typ {
				case tIn:
					want := model[q.sector*512:][:lb[0]-1]
					gb, gd := segBytes(memB.B, q.data), segBytes(memD.B, q.data)
					if !bytes.Equal(gb, want) {
						t.Fatalf("op %d: buffered read of sector %d differs from the model", op, q.sector)
					}
					if !bytes.Equal(gd, gb) {
						t.Fatalf("op %d: direct read of %d bytes at sector %d in %d buffers (first at %#x, %d bytes) differs from the buffered read", op, len(gb), q.sector, len(q.data), q.data[0].GPA, q.data[0].Len)
					}
				case tOut:
					copy(model[q.sector*512:], payload)
				}
			}
			for _, p := range []string{pb, pd} {
				got, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, model) {
					i := 0
					for i < len(got) && i < len(model) && got[i] == model[i] {
						i++
					}
					t.Fatalf("%s: %d bytes, differs from the model first at byte %d", filepath.Base(p), len(got), i)
				}
			}
			zc, bn := rd.dev.dio.zeroCopy.Load(), rd.dev.dio.bounced.Load()
			t.Logf("direct requests: %d zero-copy, %d through the bounce buffer", zc, bn)
			if zc == 0 || bn == 0 {
				t.Errorf("%d zero-copy and %d bounced requests: both paths should have run", zc, bn)
			}
		})
	}
}

// TestDirectNeighbours writes the 64 sectors of eight 4 KiB blocks, one
// sector a request from unaligned buffers, all in the queue at once: the
// workers' read-modify-writes of the same blocks must not undo each
// other's sectors. A discard of sectors inside the same blocks runs
// alongside.
func TestDirectNeighbours(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	want := image(t, path, 1<<20, 11)
	mem, err := virtiotest.NewMem(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.RAM.Close()
	r := newRigAt(t, Config{Path: path, Direct: true}, mem, func(d *Device) { forceAlign(t, d, 4096) })
	for round := range 10 {
		var reqs []ioReq
		for s := range 64 {
			if s%8 == 5 && round%2 == 1 {
				continue // sector 5 of each block: the discard's
			}
			gpa := uint64(dataBase + s*1024 + 3)
			b := bytes.Repeat([]byte{byte(round*64 + s + 1)}, 512)
			copy(mem.B[gpa:], b)
			copy(want[(100*8+s)*512:], b)
			reqs = append(reqs, ioReq{typ: tOut, sector: uint64(100*8 + s), data: []virtiotest.Seg{{GPA: gpa, Len: 300}, {GPA: gpa + 300, Len: 212}}})
		}
		if round%2 == 1 {
			for blk := range 8 {
				gpa := uint64(dataBase + 0x80000 + blk*64)
				copy(mem.B[gpa:], seg16(uint64(100*8+blk*8+5), 1, 1))
				clear(want[(100*8+blk*8+5)*512:][:512])
				reqs = append(reqs, ioReq{typ: tWriteZeroes, data: []virtiotest.Seg{{GPA: gpa, Len: 16}}})
			}
		}
		st, _ := r.run(reqs)
		for i, s := range st {
			if s != sOK {
				t.Fatalf("round %d: request %d status %d", round, i, s)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			for s := range len(want) / 512 {
				if !bytes.Equal(got[s*512:(s+1)*512], want[s*512:(s+1)*512]) {
					t.Fatalf("round %d: sector %d lost its write (%#x, want %#x)", round, s, got[s*512], want[s*512])
				}
			}
		}
	}
}

// TestDirectRefused: a file system that refuses O_DIRECT is an error at
// Open naming the file and the option, where the same file opens
// without it.
func TestDirectRefused(t *testing.T) {
	dir := refusingDir(t)
	path := filepath.Join(dir, "disk.img")
	image(t, path, 64<<10, 1)
	_, err := Open(Config{Path: path, Direct: true}, "vda")
	if err == nil {
		t.Fatal("Open with direct=on on a file system that refuses O_DIRECT succeeded")
	}
	for _, want := range []string{path, "direct=on", "O_DIRECT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if !errors.Is(err, unix.EINVAL) && !strings.Contains(err.Error(), "invalid argument") {
		t.Errorf("error %q does not carry the kernel's EINVAL", err)
	}
	t.Logf("refused: %v", err)
	d, err := Open(Config{Path: path}, "vda")
	if err != nil {
		t.Fatalf("the same file without direct=on: %v", err)
	}
	d.Close()
}

// TestDirectDescribe: the device's description, which a snapshot and a
// migration carry and a restore compares, names direct=on; without it,
// it is the description of disks from before the option.
func TestDirectDescribe(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	image(t, path, 64<<10, 1)
	d, err := Open(Config{Path: path, Direct: true, Serial: "s"}, "vda")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := Open(Config{Path: path, Serial: "s"}, "vdb")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, want := b.Describe(), fmt.Sprintf("virtio-blk path=%s bytes=%d readonly=false serial=%q", path, 64<<10, "s"); got != want {
		t.Errorf("buffered: %q, want %q", got, want)
	}
	if got, want := d.Describe(), b.Describe()+" direct=true"; got != want {
		t.Errorf("direct: %q, want %q", got, want)
	}
}

// TestDirectAlignment: the alignments found are powers of two that an
// aligned O_DIRECT read at them satisfies.
func TestDirectAlignment(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	image(t, path, 64<<10, 1)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := dioAlignment(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s", dir, d.alignSrc)
	if d.offAlign < 512 || d.offAlign&(d.offAlign-1) != 0 || d.memAlign&(d.memAlign-1) != 0 {
		t.Fatalf("alignments: memory %d, offset %d", d.memAlign, d.offAlign)
	}
	// A buffer at the memory alignment, not the page's.
	b, err := allocBounce(int(d.offAlign + d.memAlign))
	if err != nil {
		t.Fatal(err)
	}
	defer freeBounce(b)
	if _, err := unix.Pread(int(f.Fd()), b[d.memAlign:][:d.offAlign], d.offAlign); err != nil {
		t.Fatalf("an O_DIRECT read at the alignment found: %v", err)
	}
}

// TestDirectFlushReadOnly: flush succeeds on a direct disk, and a
// read-only direct disk refuses writes and leaves the image alone.
func TestDirectFlushReadOnly(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	img := image(t, path, 1<<20, 5)
	r := newRigAt(t, Config{Path: path, Direct: true, ReadOnly: true}, virtiotest.RAM(t, 8<<20), nil)
	if st, _ := r.req(tOut, 0, make([]byte, 512), false); st != sIOErr {
		t.Fatalf("write to a read-only direct disk: status %d", st)
	}
	if st, _ := r.req(tFlush, 0, nil, false); st != sOK {
		t.Fatalf("flush: status %d", st)
	}
	buf := make([]byte, 4096)
	if st, _ := r.req(tIn, 3, buf, true); st != sOK || !bytes.Equal(r.d.Mem.B[dataGPA:dataGPA+4096], img[3*512:3*512+4096]) {
		t.Fatalf("read: status %d or other bytes", st)
	}
	if got := r.file(); !bytes.Equal(got, img) {
		t.Fatal("read-only image changed")
	}
	w := newRigAt(t, Config{Path: path, Direct: true}, virtiotest.RAM(t, 8<<20), nil)
	if st, _ := w.req(tOut, 9, bytes.Repeat([]byte{0x5a}, 1024), false); st != sOK {
		t.Fatalf("write: status %d", st)
	}
	if st, _ := w.req(tFlush, 0, nil, false); st != sOK {
		t.Fatalf("flush: status %d", st)
	}
	if !bytes.Equal(w.file()[9*512:11*512], bytes.Repeat([]byte{0x5a}, 1024)) {
		t.Fatal("the direct write is not in the image")
	}
}

// TestDirectRestore: a snapshot's virtio state names direct=on, so a
// restore onto a disk opened without it is refused, naming the option,
// and one onto a direct disk goes through.
func TestDirectRestore(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	image(t, path, 64<<10, 1)
	transport := func(c Config) *virtio.PCI {
		d, err := Open(c, "vda")
		if err != nil {
			t.Fatal(err)
		}
		_, tb := virtiotest.NewVM()
		tr, err := virtio.NewPCI(d, virtio.PCIConfig{Mem: virtiotest.RAM(t, 1<<20), Router: tb})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close(); d.Close() })
		return tr
	}
	s := transport(Config{Path: path, Direct: true}).Save()
	err := transport(Config{Path: path}).Restore(s)
	if err == nil || !strings.Contains(err.Error(), "direct=true") {
		t.Fatalf("restore of a direct disk's state onto a buffered disk: %v", err)
	}
	t.Logf("refused: %v", err)
	if err := transport(Config{Path: path, Direct: true}).Restore(s); err != nil {
		t.Fatalf("restore onto a direct disk: %v", err)
	}
	if err := transport(Config{Path: path, Direct: true}).Restore(transport(Config{Path: path}).Save()); err == nil {
		t.Fatal("restore of a buffered disk's state onto a direct disk went through")
	}
}

// BenchmarkDirect compares a buffered and a direct disk on a 256 MiB
// image on disk: 4 KiB reads at random aligned offsets and 1 MiB
// sequential reads, into an aligned buffer (direct: zero-copy) and into
// one 8 bytes off (direct: through the bounce buffer). It measures the
// device's request path (serve), without the transport's notification
// and interrupt. Each run starts with the image's pages dropped from the
// host's page cache (POSIX_FADV_DONTNEED); the buffered disk then fills
// it as it reads, the direct one never does.
func BenchmarkDirect(b *testing.B) {
	const size = 256 << 20
	path := filepath.Join(directDir(b), "bench.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for off := 0; off < size; off += len(chunk) {
		for i := range chunk {
			chunk[i] = byte(r.Uint32())
		}
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	mem, err := allocBounce(2 << 20) // page-aligned, as guest RAM is
	if err != nil {
		b.Fatal(err)
	}
	defer freeBounce(mem)
	for _, mode := range []struct {
		name   string
		direct bool
		skew   int
	}{{"buffered", false, 0}, {"direct", true, 0}, {"direct-bounce", true, 8}} {
		for _, w := range []struct {
			name string
			n    int
			rand bool
		}{{"4k-random", 4096, true}, {"1m-sequential", 1 << 20, false}} {
			b.Run(mode.name+"/"+w.name, func(b *testing.B) {
				if err := unix.Fadvise(int(f.Fd()), 0, size, unix.FADV_DONTNEED); err != nil {
					b.Fatal(err)
				}
				dev, err := Open(Config{Path: path, Direct: mode.direct}, "vda")
				if err != nil {
					b.Fatal(err)
				}
				defer dev.Close()
				var bounce []byte
				if dev.dio != nil {
					if bounce, err = allocBounce(dev.dio.bounceSize()); err != nil {
						b.Fatal(err)
					}
					defer freeBounce(bounce)
				}
				hdr := make([]byte, hdrLen)
				c := &virtio.Chain{Readable: []virtio.Buffer{{Bytes: hdr}},
					Writable: []virtio.Buffer{{Bytes: mem[mode.skew : mode.skew+w.n]}, {Bytes: make([]byte, 1)}}}
				r := rand.New(rand.NewPCG(3, 4))
				b.SetBytes(int64(w.n))
				for i := 0; b.Loop(); i++ {
					sector := uint64(i%(size>>20)) * 2048
					if w.rand {
						sector = uint64(r.IntN(size/4096)) * 8
					}
					binary.LittleEndian.PutUint64(hdr[8:], sector)
					if st, _ := dev.serve(c, bounce); st != sOK {
						b.Fatalf("read: status %d", st)
					}
				}
				if d := dev.dio; d != nil {
					b.ReportMetric(float64(d.bounced.Load())/float64(d.bounced.Load()+d.zeroCopy.Load()), "bounced/op")
				}
			})
		}
	}
}

// TestDIOFallback: without STATX_DIOALIGN the alignment is the file
// system's device's logical block size, read from sysfs; alignments that
// are not powers of two, or beyond a page for memory, are refused.
func TestDIOFallback(t *testing.T) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, directDir(t), 0, unix.STATX_BASIC_STATS, &st); err != nil {
		t.Fatal(err)
	}
	if n, ok := logicalBlockSize(st.Dev_major, st.Dev_minor); ok {
		t.Logf("device %d:%d: logical block size %d", st.Dev_major, st.Dev_minor, n)
		if n < 512 || n&(n-1) != 0 {
			t.Errorf("logical block size %d", n)
		}
	} else {
		t.Logf("device %d:%d has no queue/logical_block_size in sysfs (not a block device): the fallback is 4096", st.Dev_major, st.Dev_minor)
	}
	if _, ok := logicalBlockSize(0, 1<<19); ok {
		t.Error("a device that does not exist has a logical block size")
	}
	for _, c := range []struct{ mem, off int64 }{{512, 1000}, {3, 512}, {512, 1 << 20}, {2 * int64(os.Getpagesize()), 512}, {0, 512}} {
		if _, err := newDIO(c.mem, c.off, "test"); err == nil {
			t.Errorf("alignments memory %d, offset %d accepted", c.mem, c.off)
		}
	}
	d, err := newDIO(4, 1, "test")
	if err != nil || d.offAlign != 512 || d.memAlign != 4 {
		t.Errorf("memory 4, offset 1: %+v %v; want offset alignment 512 (a sector), memory 4", d, err)
	}
}
