package vm

import (
	"encoding/binary"
	"io"
	"log/slog"
	"testing"

	"govmm/accel"
	"govmm/guests"
	"govmm/platform"
)

// fakeAccel is an accelerator with no hardware behind it: enough to build
// the whole platform (devices, interrupt controllers, firmware tables, the
// loaded kernel) without /dev/kvm.
type fakeAccel struct{}

func (fakeAccel) Name() string                                { return "fake" }
func (fakeAccel) Caps() (accel.Caps, error)                   { return accel.Caps{}, nil }
func (fakeAccel) SupportedCPUID() ([]accel.CPUIDEntry, error) { return nil, nil }
func (fakeAccel) CreateVM(accel.VMConfig) (accel.VM, error)   { return &fakeVM{}, nil }
func (fakeAccel) Close() error                                { return nil }

type fakeVM struct{ msis int }

func (v *fakeVM) MapMemory(accel.MemoryRegion) error      { return nil }
func (v *fakeVM) UnmapMemory(uint64) error                { return nil }
func (v *fakeVM) CreateVCPU(int) (accel.VCPU, error)      { return nil, accel.ErrNotSupported }
func (v *fakeVM) SetGSIRouting([]accel.Route) error       { return nil }
func (v *fakeVM) SignalMSI(accel.MSI) error               { v.msis++; return nil }
func (v *fakeVM) AssignIRQFD(accel.IRQFD) error           { return nil }
func (v *fakeVM) DeassignIRQFD(accel.IRQFD) error         { return nil }
func (v *fakeVM) AssignIOEventFD(accel.IOEventFD) error   { return nil }
func (v *fakeVM) DeassignIOEventFD(accel.IOEventFD) error { return nil }
func (v *fakeVM) EnableDirtyLog() error                   { return nil }
func (v *fakeVM) DisableDirtyLog() error                  { return nil }
func (v *fakeVM) DirtyLog(uint64) ([]uint64, error)       { return nil, nil }
func (v *fakeVM) Clock() (uint64, error)                  { return 0, nil }
func (v *fakeVM) SetClock(uint64) error                   { return nil }
func (v *fakeVM) Pause() error                            { return nil }
func (v *fakeVM) Resume() error                           { return nil }
func (v *fakeVM) Close() error                            { return nil }

func fakeMachine(t testing.TB) *VM {
	img, err := guests.Image("probe")
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(Config{
		Accel: fakeAccel{}, MemSize: 32 << 20, NumCPUs: 2, Kernel: img, TestDevices: true,
		Serial: io.Discard, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// FuzzGuestAccesses drives the whole device model the way a hostile guest
// can: any port or MMIO address in the platform's ranges, any access
// length an accelerator may hand over (1 to 64 bytes; MSHV's emulator
// passes SSE/AVX and MOVDIR64B accesses whole), any data. Nothing may
// panic, and every read must fill exactly the bytes asked for.
func FuzzGuestAccesses(f *testing.F) {
	f.Add([]byte{0, 0xf8, 0x03, 4, 0x41, 0x42, 0x43, 0x44})
	f.Add([]byte{1, 0x00, 0x00, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add([]byte{2, 0x70, 0x00, 1, 0x0c, 3, 0x71, 0x00, 1})
	v := fakeMachine(f)
	h := ioHandler{v.pio, v.mmio, &vcpuActivity{}}
	mmioBases := []uint64{platform.IOAPICBase, platform.TestDeviceBase, platform.TestDeviceBase + 0x1000, platform.LAPICBase}
	f.Fuzz(func(t *testing.T, ops []byte) {
		for len(ops) >= 4 {
			kind, lo, hi, n := ops[0]%4, ops[1], ops[2], int(ops[3]%64)+1
			ops = ops[4:]
			off := uint64(lo) | uint64(hi)<<8
			data := make([]byte, n)
			k := copy(data, ops)
			ops = ops[k:]
			pio := make([]byte, []int{1, 2, 4}[n%3])
			copy(pio, data)
			switch kind {
			case 0:
				h.PIOWrite(uint16(off), pio)
			case 1:
				h.PIORead(uint16(off), pio)
			case 2:
				h.MMIOWrite(mmioBases[int(hi)%len(mmioBases)]+uint64(lo)*8, data)
			case 3:
				buf := make([]byte, n+8)
				binary.LittleEndian.PutUint64(buf[n:], 0x5a5a5a5a5a5a5a5a)
				h.MMIORead(mmioBases[int(hi)%len(mmioBases)]+uint64(lo)*8, buf[:n])
				if binary.LittleEndian.Uint64(buf[n:]) != 0x5a5a5a5a5a5a5a5a {
					t.Fatalf("an MMIO read of %d bytes wrote past its buffer", n)
				}
			}
		}
	})
}
