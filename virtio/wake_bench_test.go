package virtio_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/virtio"
	"govmm/virtio/blk"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
)

// handoff is a device that completes each chain on a worker goroutine
// of its own, as virtio-blk's workers and vsock's writer do: the chain
// crosses from the queue's server to another goroutine.
type handoff struct{ jobs chan func() }

func newHandoff() *handoff {
	h := &handoff{jobs: make(chan func(), 16)}
	go func() {
		for f := range h.jobs {
			f()
		}
	}()
	return h
}

func (*handoff) Type() uint16               { return 96 }
func (*handoff) Name() string               { return "handoff" }
func (*handoff) Features() uint64           { return 0 }
func (*handoff) QueueMax() []uint16         { return []uint16{8} }
func (*handoff) ReadConfig(uint64, []byte)  {}
func (*handoff) WriteConfig(uint64, []byte) {}
func (*handoff) Activate(uint64) error      { return nil }
func (*handoff) Describe() string           { return "handoff" }
func (*handoff) Reset()                     {}
func (h *handoff) Handle(_ int, _ *virtio.Chain, done func(uint32)) error {
	h.jobs <- func() { done(1) }
	return nil
}

// BenchmarkDoorbellToInterrupt is one request from the guest's doorbell
// to its interrupt through the transport, with the accelerator's part
// played by the benchmark: it makes a chain available, signals the
// doorbell's ioeventfd as KVM does on the guest's write, and waits, its
// thread blocked in poll(2) as a halted vCPU's, for the MSI-X vector's
// irqfd. vcsw/op is the process's voluntary context switches per
// request (the benchmark thread's own wait is one of them): how many
// threads the request woke. rng completes a chain inside Handle;
// handoff on a goroutine of its own; blk is virtio-blk reading 4 KiB of
// an image (queue depth one); -locked, with the queue's server locked to
// its thread as a confined one is.
func BenchmarkDoorbellToInterrupt(b *testing.B) {
	img := filepath.Join(b.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	disk := func() virtio.Device {
		d, err := blk.Open(blk.Config{Path: img}, "vda")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		// Its workers keep their threads, as confined ones do.
		d.SetWorkerThread(func(string) {})
		return d
	}
	for _, c := range []struct {
		name   string
		dev    func() virtio.Device
		locked bool
	}{
		{"blk", disk, false},
		{"blk-locked", disk, true},
		{"rng", func() virtio.Device { return rng.New() }, false},
		{"handoff", func() virtio.Device { return newHandoff() }, false},
		{"rng-locked", func() virtio.Device { return rng.New() }, true},
		{"handoff-locked", func() virtio.Device { return newHandoff() }, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			vm, tb := virtiotest.NewVM()
			mem := &virtiotest.Mem{B: make([]byte, 4<<20)}
			cfg := virtio.PCIConfig{Mem: mem, Router: tb}
			if c.locked {
				// The queue's server keeps its thread, as a confined
				// one does (virtio-net's, vsock's, a disk's).
				cfg.QueueThread = func(int) bool { return true }
			}
			tr, err := virtio.NewPCI(c.dev(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			d, err := virtiotest.New(tr, mem, vm)
			if err != nil {
				b.Fatal(err)
			}
			f := tr.Function()
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], virtiotest.BARBase)
			f.WriteConfig(0x10, w[:4])
			f.WriteConfig(0x14, w[4:])
			f.WriteConfig(0x04, []byte{2, 0})
			if err := d.Init(0, 8); err != nil {
				b.Fatal(err)
			}
			bell, irq := -1, -1
			for fd := range vm.IOEvents {
				bell = fd
			}
			for fd, r := range vm.IRQFDs {
				if vm.Routes[r.GSI].MSI.Data == virtiotest.MSIXData0 {
					irq = fd
				}
			}
			if bell < 0 || irq < 0 {
				b.Fatalf("doorbell %d, irqfd %d", bell, irq)
			}
			le := binary.LittleEndian
			desc, avail, _ := d.Rings(0)
			dt := mem.B[desc:]
			if strings.HasPrefix(c.name, "blk") {
				// A 4 KiB read of sector 8: header, data, status.
				le.PutUint32(mem.B[virtiotest.BufBase:], 0)
				le.PutUint64(mem.B[virtiotest.BufBase+8:], 8)
				for i, s := range []struct {
					gpa uint64
					n   uint32
					fl  uint16
				}{{virtiotest.BufBase, 16, 1}, {virtiotest.BufBase + 0x1000, 4096, 3}, {virtiotest.BufBase + 0x3000, 1, 2}} {
					e := dt[16*i:]
					le.PutUint64(e, s.gpa)
					le.PutUint32(e[8:], s.n)
					le.PutUint16(e[12:], s.fl)
					le.PutUint16(e[14:], uint16(i+1))
				}
			} else {
				le.PutUint64(dt, virtiotest.BufBase)
				le.PutUint32(dt[8:], 16)
				le.PutUint16(dt[12:], 2)
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var idx uint16
			one := make([]byte, 8)
			le.PutUint64(one, 1)
			var buf [8]byte
			var before, after unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &before)
			for b.Loop() {
				le.PutUint16(mem.B[avail+4+2*uint64(idx%8):], 0)
				idx++
				le.PutUint16(mem.B[avail+2:], idx)
				if _, err := unix.Write(bell, one); err != nil {
					b.Fatal(err)
				}
				fds := []unix.PollFd{{Fd: int32(irq), Events: unix.POLLIN}}
				for {
					if _, err := unix.Poll(fds, -1); err == nil || err != unix.EINTR {
						break
					}
				}
				if _, err := unix.Read(irq, buf[:]); err != nil {
					b.Fatal(err)
				}
			}
			unix.Getrusage(unix.RUSAGE_SELF, &after)
			b.ReportMetric(float64(after.Nvcsw-before.Nvcsw)/float64(b.N), "vcsw/op")
		})
	}
}
