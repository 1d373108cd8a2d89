package blk

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

const wait = 5 * time.Second

type rig struct {
	t    testing.TB
	d    *virtiotest.Driver
	dev  *Device
	path string
}

func newRig(t testing.TB, ro bool, serial string) *rig {
	t.Helper()
	return newRigMem(t, ro, serial, virtiotest.RAM(t, 8<<20))
}

// newRigMem is newRig over the given guest memory.
func newRigMem(t testing.TB, ro bool, serial string, mem *virtiotest.Mem) *rig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	img := make([]byte, 1<<20)
	for i := range img {
		img[i] = byte(i*7 + i/512)
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return newRigAt(t, Config{Path: path, ReadOnly: ro, Serial: serial}, mem, nil)
}

// newRigAt is a rig on the image c names, with guest memory mem; setup,
// when not nil, adjusts the device before the driver starts.
func newRigAt(t testing.TB, c Config, mem *virtiotest.Mem, setup func(*Device)) *rig {
	t.Helper()
	path := c.Path
	dev, err := Open(c, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(dev)
	}
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); dev.Close() })
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(fFlush|fDiscard|fWriteZeroes|fSegMax|fBlkSize|fRO|virtio.FIndirectDesc|virtio.FEventIdx, 0); err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, d: d, dev: dev, path: path}
}

const (
	hdrGPA    = 0x200000
	dataGPA   = 0x300000
	statusGPA = 0x2ff000
)

// req runs one request: header, then data (readable for writes,
// writable for reads), then the status byte. It returns the status and
// the used length.
func (r *rig) req(typ uint32, sector uint64, data []byte, write bool) (byte, uint32) {
	r.t.Helper()
	h := r.d.Mem.B[hdrGPA:]
	binary.LittleEndian.PutUint32(h, typ)
	binary.LittleEndian.PutUint32(h[4:], 0)
	binary.LittleEndian.PutUint64(h[8:], sector)
	segs := []virtiotest.Seg{{GPA: hdrGPA, Len: 16}}
	if len(data) > 0 {
		copy(r.d.Mem.B[dataGPA:], data)
		// Split the data in two buffers to exercise scatter-gather.
		half := uint32(len(data) / 2)
		segs = append(segs, virtiotest.Seg{GPA: dataGPA, Len: half, Write: write},
			virtiotest.Seg{GPA: dataGPA + uint64(half), Len: uint32(len(data)) - half, Write: write})
		if half == 0 {
			segs = append(segs[:1], virtiotest.Seg{GPA: dataGPA, Len: uint32(len(data)), Write: write})
		}
	}
	r.d.Mem.B[statusGPA] = 0xee
	segs = append(segs, virtiotest.Seg{GPA: statusGPA, Len: 1, Write: true})
	r.d.Put(0, segs, 0)
	u, err := r.d.Wait(0, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	return r.d.Mem.B[statusGPA], u.Len
}

func (r *rig) file() []byte {
	b, err := os.ReadFile(r.path)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func TestReadWrite(t *testing.T) {
	r := newRig(t, false, "govmm-serial-1")
	var cfg [8]byte
	r.d.DeviceConfig(0, cfg[:])
	if got := binary.LittleEndian.Uint64(cfg[:]); got != 2048 {
		t.Fatalf("capacity %d sectors, want 2048", got)
	}
	img := r.file()
	buf := make([]byte, 4096)
	st, n := r.req(tIn, 8, buf, true)
	if st != sOK || n != 4097 {
		t.Fatalf("read: status %d len %d", st, n)
	}
	if !bytes.Equal(r.d.Mem.B[dataGPA:dataGPA+4096], img[4096:8192]) {
		t.Fatal("read returned other bytes than the image's")
	}
	pat := bytes.Repeat([]byte("govmm-virtio-blk"), 512/16*3)
	if st, _ := r.req(tOut, 100, pat, false); st != sOK {
		t.Fatalf("write: status %d", st)
	}
	if st, _ := r.req(tFlush, 0, nil, false); st != sOK {
		t.Fatalf("flush: status %d", st)
	}
	if got := r.file()[100*512 : 100*512+len(pat)]; !bytes.Equal(got, pat) {
		t.Fatal("written data not in the image")
	}
	// Serial.
	id := make([]byte, 20)
	if st, n := r.req(tGetID, 0, id, true); st != sOK || n != 21 {
		t.Fatalf("get ID: status %d len %d", st, n)
	}
	if got := string(bytes.TrimRight(r.d.Mem.B[dataGPA:dataGPA+20], "\x00")); got != "govmm-serial-1" {
		t.Fatalf("serial %q", got)
	}
	// Out of range, partial sectors, unknown types.
	if st, _ := r.req(tIn, 2047, make([]byte, 1024), true); st != sIOErr {
		t.Fatalf("read past the end: status %d", st)
	}
	if st, _ := r.req(tIn, 1<<60, make([]byte, 512), true); st != sIOErr {
		t.Fatalf("read at a huge sector: status %d", st)
	}
	if st, _ := r.req(tOut, 0, make([]byte, 100), false); st != sIOErr {
		t.Fatalf("write of 100 bytes: status %d", st)
	}
	if st, _ := r.req(99, 0, nil, false); st != sUnsupp {
		t.Fatalf("unknown type: status %d", st)
	}
}

func TestDiscardWriteZeroes(t *testing.T) {
	r := newRig(t, false, "")
	seg := func(sector uint64, n uint32, flags uint32) []byte {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, sector)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint32(b[12:], flags)
		return b
	}
	for _, c := range []struct {
		typ    uint32
		sector uint64
		flags  uint32
	}{{tWriteZeroes, 10, 0}, {tWriteZeroes, 20, 1}, {tDiscard, 30, 0}} {
		if st, _ := r.req(c.typ, 0, seg(c.sector, 8, c.flags), false); st != sOK {
			t.Fatalf("type %d: status %d", c.typ, st)
		}
		img := r.file()
		if !bytes.Equal(img[c.sector*512:(c.sector+8)*512], make([]byte, 8*512)) {
			t.Fatalf("type %d: sectors %d.. not zero", c.typ, c.sector)
		}
		if img[(c.sector+8)*512] == 0 && img[(c.sector+8)*512+1] == 0 {
			t.Fatalf("type %d zeroed past its range", c.typ)
		}
	}
	if st, _ := r.req(tWriteZeroes, 0, seg(2040, 16, 0), false); st != sIOErr {
		t.Fatalf("write-zeroes past the end: status %d", st)
	}
	if st, _ := r.req(tDiscard, 0, seg(0, 1, 1), false); st != sUnsupp {
		t.Fatalf("discard with unmap flag: status %d", st)
	}
}

func TestReadOnly(t *testing.T) {
	r := newRig(t, true, "")
	if r.d.Feats&fRO == 0 || r.d.Feats&fDiscard != 0 {
		t.Fatalf("read-only disk features %#x", r.d.Feats)
	}
	before := r.file()
	if st, _ := r.req(tOut, 0, make([]byte, 512), false); st != sIOErr {
		t.Fatalf("write to a read-only disk: status %d", st)
	}
	if !bytes.Equal(before, r.file()) {
		t.Fatal("read-only image changed")
	}
	if st, _ := r.req(tIn, 0, make([]byte, 512), true); st != sOK {
		t.Fatalf("read: status %d", st)
	}
}

func TestMalformedRequest(t *testing.T) {
	r := newRig(t, false, "")
	// A header of 8 bytes: the device needs reset.
	r.d.Put(0, []virtiotest.Seg{{GPA: hdrGPA, Len: 8}, {GPA: statusGPA, Len: 1, Write: true}}, 0)
	end := time.Now().Add(wait)
	for r.d.Status()&virtio.StatusNeedsReset == 0 {
		if time.Now().After(end) {
			t.Fatal("short header did not put the device into NEEDS_RESET")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestParseFlag(t *testing.T) {
	c, err := ParseFlag("path=/x.img,readonly=on,serial=abc")
	if err != nil || c != (Config{Path: "/x.img", ReadOnly: true, Serial: "abc"}) {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = ParseFlag("path=/y.img,direct=on")
	if err != nil || c != (Config{Path: "/y.img", Direct: true}) {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = ParseFlag("direct=off,path=/y.img,readonly=true")
	if err != nil || c != (Config{Path: "/y.img", ReadOnly: true}) {
		t.Fatalf("%+v %v", c, err)
	}
	// ",," is a comma in a value; ",,," a comma, then the next option.
	c, err = ParseFlag("path=/img/a,,b.img,serial=s,,,readonly=on")
	if err != nil || c != (Config{Path: "/img/a,b.img", Serial: "s,", ReadOnly: true}) {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"", "readonly=on", "path=/x,readonly=maybe", "path=/x,serial=" + strings.Repeat("s", 21), "path=/x,direct=yes", "path=/x,direct", "path=/x,cache=none", "path",
		"path=/x,", "path=/x,,,", ",path=/x", "path=/a,b.img", "=/x", "path=/x,serial=" + strings.Repeat(",,", 21)} {
		if _, err := ParseFlag(bad); err == nil {
			t.Errorf("ParseFlag(%q) accepted", bad)
		} else if !strings.HasPrefix(err.Error(), "--disk ") {
			t.Errorf("ParseFlag(%q): error %v does not name the flag", bad, err)
		}
	}
}

// TestWorkerThread: each worker runs SetWorkerThread's hook once, before
// its first request, on its own thread and named after the disk; no
// request, no hook.
func TestWorkerThread(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{} // name -> calls
	tids := map[int]bool{}
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRigAt(t, Config{Path: path}, virtiotest.RAM(t, 8<<20), func(d *Device) {
		d.SetWorkerThread(func(name string) {
			mu.Lock()
			defer mu.Unlock()
			seen[name]++
			tids[unix.Gettid()] = true
		})
	})
	mu.Lock()
	if len(seen) != 0 {
		t.Fatalf("hooks ran before any request: %v", seen)
	}
	mu.Unlock()
	for range 40 {
		if st, _ := r.req(tIn, 0, make([]byte, 512), true); st != 0 {
			t.Fatalf("read status %d", st)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 || len(seen) > Workers || len(tids) != len(seen) {
		t.Fatalf("hooks %v on threads %v: want one per worker that served, each on its own thread", seen, tids)
	}
	for name, n := range seen {
		if n != 1 || !strings.HasPrefix(name, "vda-io") {
			t.Errorf("hook for %q ran %d times", name, n)
		}
	}
}
