package virtio_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"govmm/virtio"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
)

func newRNG(t *testing.T) (*virtiotest.Driver, *virtio.PCI) {
	t.Helper()
	return newRNGMem(t, virtiotest.RAM(t, 4<<20))
}

// newRNGMem is newRNG over the given guest memory.
func newRNGMem(t *testing.T, mem *virtiotest.Mem) (*virtiotest.Driver, *virtio.PCI) {
	t.Helper()
	return attach(t, rng.New(), mem, virtio.PCIConfig{})
}

const wait = 5 * time.Second

func TestRNGRequest(t *testing.T) {
	d, _ := newRNG(t)
	if err := d.Init(virtio.FIndirectDesc, 16); err != nil {
		t.Fatal(err)
	}
	buf := uint64(virtiotest.BufBase)
	head := d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 100, Write: true}, {GPA: buf + 0x1000, Len: 28, Write: true}}, 0)
	u, err := d.Wait(0, wait)
	if err != nil {
		t.Fatal(err)
	}
	if u.ID != uint32(head) || u.Len != 128 {
		t.Fatalf("used %+v, want head %d len 128", u, head)
	}
	if bytes.Equal(d.Mem.B[buf:buf+100], make([]byte, 100)) {
		t.Fatal("no random bytes written")
	}
	if n := d.WaitInterrupts(0, wait); n != 1 {
		t.Fatalf("%d queue interrupts, want 1", n)
	}
	// Through an indirect table.
	head = d.Put(0, []virtiotest.Seg{{GPA: buf + 0x2000, Len: 64, Write: true}, {GPA: buf + 0x3000, Len: 64, Write: true}}, buf+0x8000)
	if u, err = d.Wait(0, wait); err != nil || u.ID != uint32(head) || u.Len != 128 {
		t.Fatalf("indirect: used %+v, %v", u, err)
	}
	if bytes.Equal(d.Mem.B[buf+0x3000:buf+0x3040], make([]byte, 64)) {
		t.Fatal("indirect: second buffer not filled")
	}
}

func TestRNGDoorbellThroughIOEventFD(t *testing.T) {
	d, tr := newRNG(t)
	// Place BAR 0 and enable memory decode, as the Root does.
	f := tr.Function()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], virtiotest.BARBase)
	f.WriteConfig(0x10, b[:4])
	f.WriteConfig(0x14, b[4:])
	f.WriteConfig(0x04, []byte{2, 0})
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	if len(d.VM.IOEvents) != 1 {
		t.Fatalf("%d ioeventfds bound, want 1", len(d.VM.IOEvents))
	}
	var fd int
	for k, e := range d.VM.IOEvents {
		if e.Addr != virtiotest.BARBase+0x3000 || e.Len != 2 || e.PIO {
			t.Fatalf("doorbell %+v", e)
		}
		fd = k
	}
	// Make a buffer available without the MMIO write, then signal the
	// ioeventfd as the accelerator would.
	d.Mem.B[virtiotest.BufBase] = 0
	q := uint64(0x10000)
	desc := d.Desc(0)
	binary.LittleEndian.PutUint64(desc, virtiotest.BufBase)
	binary.LittleEndian.PutUint32(desc[8:], 32)
	binary.LittleEndian.PutUint16(desc[12:], 2)
	avail := q + 16*8
	binary.LittleEndian.PutUint16(d.Mem.B[avail+4:], 0)
	binary.LittleEndian.PutUint16(d.Mem.B[avail+2:], 1)
	binary.LittleEndian.PutUint64(b[:], 1)
	if _, err := writeFD(fd, b[:]); err != nil {
		t.Fatal(err)
	}
	if u, err := d.Wait(0, wait); err != nil || u.Len != 32 {
		t.Fatalf("used %+v, %v", u, err)
	}
	// Moving the BAR moves the doorbell.
	binary.LittleEndian.PutUint32(b[:], virtiotest.BARBase+0x100000)
	f.WriteConfig(0x10, b[:4])
	for _, e := range d.VM.IOEvents {
		if e.Addr != virtiotest.BARBase+0x100000+0x3000 {
			t.Fatalf("doorbell after the BAR moved: %#x", e.Addr)
		}
	}
	// Reset unbinds it.
	d.SetCommon(0x14, 1, 0)
	if len(d.VM.IOEvents) != 0 {
		t.Fatal("doorbell still bound after reset")
	}
}

func TestFeatureNegotiation(t *testing.T) {
	d, _ := newRNG(t)
	d.SetCommon(0x14, 1, 3)
	// Without VERSION_1.
	d.SetCommon(0x08, 4, 1)
	d.SetCommon(0x0c, 4, 0)
	d.SetCommon(0x14, 1, 0xb)
	if d.Status()&virtio.StatusFeaturesOK != 0 {
		t.Fatal("FEATURES_OK kept without VERSION_1")
	}
	// A feature not offered (bit 40).
	d.SetCommon(0x14, 1, 0)
	d.SetCommon(0x14, 1, 3)
	d.SetCommon(0x0c, 4, 1|1<<8)
	d.SetCommon(0x14, 1, 0xb)
	if d.Status()&virtio.StatusFeaturesOK != 0 {
		t.Fatal("FEATURES_OK kept with an unoffered feature")
	}
	// DRIVER_OK without FEATURES_OK: the device needs reset.
	d.SetCommon(0x14, 1, 0x7)
	if d.Status()&virtio.StatusNeedsReset == 0 {
		t.Fatal("DRIVER_OK without FEATURES_OK accepted")
	}
	// After reset, a proper init works.
	if err := d.Init(0, 0); err != nil {
		t.Fatal(err)
	}
	// Vector numbers past the table read back as NO_VECTOR.
	d.SetCommon(0x16, 2, 0)
	d.SetCommon(0x1a, 2, 7)
	if d.Common(0x1a, 2) != virtio.NoVector {
		t.Fatal("queue vector past the table accepted")
	}
	// Queue registers are read-only once the driver is running.
	d.SetCommon(0x18, 2, 4)
	if d.Common(0x18, 2) == 4 {
		t.Fatal("queue size changed after DRIVER_OK")
	}
}

// TestMalformedChains: each broken ring puts the device into
// DEVICE_NEEDS_RESET, interrupts the configuration vector, and a reset
// makes it work again.
func TestMalformedChains(t *testing.T) {
	le := binary.LittleEndian
	buf := uint64(virtiotest.BufBase)
	for _, c := range []struct {
		name  string
		want  string
		setup func(d *virtiotest.Driver)
	}{
		{"loop", "loops", func(d *virtiotest.Driver) {
			desc := d.Desc(0)
			le.PutUint64(desc, buf)
			le.PutUint32(desc[8:], 8)
			le.PutUint16(desc[12:], 1|2)
			le.PutUint16(desc[14:], 0)
			d.Publish(0, 0)
		}},
		{"out of RAM", "not in RAM", func(d *virtiotest.Driver) {
			d.Put(0, []virtiotest.Seg{{GPA: 1 << 40, Len: 8, Write: true}}, 0)
		}},
		{"straddles the end of RAM", "not in RAM", func(d *virtiotest.Driver) {
			d.Put(0, []virtiotest.Seg{{GPA: uint64(len(d.Mem.B)) - 4, Len: 8, Write: true}}, 0)
		}},
		{"head past the queue size", "past the queue size", func(d *virtiotest.Driver) {
			d.Publish(0, 16)
		}},
		{"next past the table", "past the table", func(d *virtiotest.Driver) {
			desc := d.Desc(0)
			le.PutUint64(desc, buf)
			le.PutUint32(desc[8:], 8)
			le.PutUint16(desc[12:], 1|2)
			le.PutUint16(desc[14:], 200)
			d.Publish(0, 0)
		}},
		{"available index too far ahead", "ahead", func(d *virtiotest.Driver) {
			// Avail ring of queue 0 at 0x10000 + 16*16.
			le.PutUint16(d.Mem.B[0x10000+16*16+2:], 40)
			d.Notify(0)
		}},
		{"nested indirect", "another", func(d *virtiotest.Driver) {
			tbl := buf + 0x8000
			b := d.Mem.B[tbl:]
			le.PutUint64(b, tbl)
			le.PutUint32(b[8:], 16)
			le.PutUint16(b[12:], 4)
			desc := d.Desc(0)
			le.PutUint64(desc, tbl)
			le.PutUint32(desc[8:], 16)
			le.PutUint16(desc[12:], 4)
			d.Publish(0, 0)
		}},
		{"indirect table of odd length", "multiple of 16", func(d *virtiotest.Driver) {
			desc := d.Desc(0)
			le.PutUint64(desc, buf)
			le.PutUint32(desc[8:], 15)
			le.PutUint16(desc[12:], 4)
			d.Publish(0, 0)
		}},
		{"readable after writable", "readable after", func(d *virtiotest.Driver) {
			d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 8, Write: true}, {GPA: buf + 8, Len: 8}}, 0)
		}},
		{"readable buffer to rng", "reads none", func(d *virtiotest.Driver) {
			d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 8}}, 0)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, _ := newRNG(t)
			var logbuf virtiotest.SyncBuffer
			restore := captureLog(&logbuf)
			defer restore()
			if err := d.Init(virtio.FIndirectDesc, 16); err != nil {
				t.Fatal(err)
			}
			c.setup(d)
			end := time.Now().Add(wait)
			for d.Status()&virtio.StatusNeedsReset == 0 {
				if time.Now().After(end) {
					t.Fatalf("device did not ask for a reset (status %#x)", d.Status())
				}
				time.Sleep(time.Millisecond)
			}
			if n := d.Interrupts(1); n != 1 {
				t.Fatalf("%d configuration interrupts, want 1", n)
			}
			if l := logbuf.String(); !strings.Contains(l, c.want) || !strings.Contains(l, "virtio-rng") || !strings.Contains(l, "queue 0") {
				t.Fatalf("log line %q does not say %q for virtio-rng queue 0", l, c.want)
			}
			// The device serves nothing until reset, then works.
			if err := d.Init(0, 16); err != nil {
				t.Fatal(err)
			}
			d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 16, Write: true}}, 0)
			if u, err := d.Wait(0, wait); err != nil || u.Len != 16 {
				t.Fatalf("after reset: %+v %v", u, err)
			}
		})
	}
}

func TestQueueSetupRefused(t *testing.T) {
	d, _ := newRNG(t)
	d.SetCommon(0x14, 1, 3)
	d.SetCommon(0x08, 4, 1)
	d.SetCommon(0x0c, 4, 1)
	d.SetCommon(0x14, 1, 0xb)
	d.SetCommon(0x16, 2, 0)
	d.SetCommon(0x18, 2, 12) // not a power of two
	d.SetCommon(0x20, 8, 0x10000)
	d.SetCommon(0x28, 8, 0x11000)
	d.SetCommon(0x30, 8, 0x12000)
	d.SetCommon(0x1c, 2, 1)
	if d.Status()&virtio.StatusNeedsReset == 0 || d.Common(0x1c, 2) != 0 {
		t.Fatal("a queue of size 12 was enabled")
	}
	d.SetCommon(0x14, 1, 0)
	d.SetCommon(0x14, 1, 3)
	d.SetCommon(0x08, 4, 1)
	d.SetCommon(0x0c, 4, 1)
	d.SetCommon(0x14, 1, 0xb)
	d.SetCommon(0x18, 2, 16)
	d.SetCommon(0x30, 8, 1<<40) // used ring outside RAM
	d.SetCommon(0x1c, 2, 1)
	if d.Status()&virtio.StatusNeedsReset == 0 {
		t.Fatal("a used ring outside RAM was accepted")
	}
}

func TestSaveRestore(t *testing.T) {
	d, tr := newRNG(t)
	if err := d.Init(virtio.FEventIdx, 8); err != nil {
		t.Fatal(err)
	}
	buf := uint64(virtiotest.BufBase)
	for i := range 3 {
		d.Put(0, []virtiotest.Seg{{GPA: buf + uint64(i)*64, Len: 64, Write: true}}, 0)
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
	}
	tr.Pause()
	fs, st := tr.Function().Save(), tr.Save()
	tr.Resume()

	// A new transport over the same memory continues where it was.
	d2, _ := attachRestored(t, rng.New(), d.Mem, virtio.PCIConfig{}, fs, st)
	if d2.Status() != 0xf {
		t.Fatalf("restored status %#x", d2.Status())
	}
	// The old driver keeps its ring positions; the old transport is
	// paused for good (as a snapshot's source that stopped), and the
	// doorbell goes to the new one.
	tr.Pause()
	head := d.Put(0, []virtiotest.Seg{{GPA: buf + 0x1000, Len: 40, Write: true}}, 0)
	d2.Notify(0)
	u, err := d.Wait(0, wait)
	if err != nil || u.ID != uint32(head) || u.Len != 40 {
		t.Fatalf("after restore: %+v %v", u, err)
	}

	bad := st
	bad.Device = "virtio-blk path=/other"
	_, tb3 := virtiotest.NewVM()
	tr3, _ := virtio.NewPCI(rng.New(), virtio.PCIConfig{Mem: d.Mem, Router: tb3})
	defer tr3.Close()
	if err := tr3.Restore(bad); err == nil || !strings.Contains(err.Error(), "virtio-blk path=/other") {
		t.Fatalf("restore of another device: %v", err)
	}
}
