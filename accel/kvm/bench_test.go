package kvm

import (
	"runtime"
	"testing"

	"govmm/accel"
)

// countingHandler counts exits and kicks its vCPU after n of them. It
// does not allocate, so allocs/op measures the backend's exit path.
type countingHandler struct {
	n, count int
	vcpu     *VCPU
}

func (h *countingHandler) hit() {
	h.count++
	if h.count == h.n {
		h.vcpu.Kick()
	}
}

func (h *countingHandler) PIORead(port uint16, data []byte)   { data[0] = 0; h.hit() }
func (h *countingHandler) PIOWrite(port uint16, data []byte)  { h.hit() }
func (h *countingHandler) MMIORead(addr uint64, data []byte)  { data[0] = 0; h.hit() }
func (h *countingHandler) MMIOWrite(addr uint64, data []byte) { h.hit() }

// Guest loops: at 0x1000 `out 0x80, al; jmp` and at 0x1010 `mov ds,
// 0x2000; mov [0], al; jmp` (an MMIO write to unmapped 0x20000).
var benchGuest = []byte{0xe6, 0x80, 0xeb, 0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xa2, 0x00, 0x00, 0xeb, 0xfb}

func benchExits(b *testing.B, ip uint64) {
	tv := newTestVM(b, 1, 1<<16)
	copy(tv.mem[0x1000:], benchGuest)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v := tv.realModeVCPU(b, 0, ip)
	h := &countingHandler{n: b.N, vcpu: v}
	b.ReportAllocs()
	b.ResetTimer()
	x, err := v.Run(h)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if x.Reason != accel.ExitInterrupted || h.count != b.N {
		b.Fatalf("exit %v after %d exits, want interrupted after %d", x.Reason, h.count, b.N)
	}
}

// BenchmarkPIOExit is the port-I/O exit round trip through Run (guest
// `out` loop, emulated at CPL0 on PVM hosts).
func BenchmarkPIOExit(b *testing.B) { benchExits(b, 0x1000) }

// BenchmarkMMIOExit is the MMIO-write exit round trip through Run.
func BenchmarkMMIOExit(b *testing.B) { benchExits(b, 0x1010) }

// BenchmarkRunRawPIO is the same `out` loop through RunRaw, the floor
// Run's dispatch is measured against.
func BenchmarkRunRawPIO(b *testing.B) {
	tv := newTestVM(b, 1, 1<<16)
	copy(tv.mem[0x1000:], benchGuest)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v := tv.realModeVCPU(b, 0, 0x1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		x, err := v.RunRaw()
		if err == nil && x.Interrupted { // Go's preemption signal
			i--
			continue
		}
		if err != nil || x.Reason != RawExitIO {
			b.Fatalf("exit %+v %v", x, err)
		}
	}
}
