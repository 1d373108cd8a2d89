package irqtestdev

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/irq/routes"
)

// fakeVM models the kernel's irqfd: once assigned, every signal of the
// eventfd injects the GSI's committed route (here: the "guest" handler
// acknowledges it on the device). Signals that were pending when the irqfd
// was assigned are injected then, as the kernel does.
type fakeVM struct {
	accel.VM
	mu       sync.Mutex
	routes   map[uint32]accel.MSI
	stops    map[int]chan struct{}
	dev      *Device
	got      []accel.MSI
	assigned int
	ioevents map[int]accel.IOEventFD
}

func (v *fakeVM) SetGSIRouting(rs []accel.Route) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.routes = map[uint32]accel.MSI{}
	for _, r := range rs {
		v.routes[r.GSI] = r.MSI
	}
	return nil
}

func (v *fakeVM) AssignIRQFD(f accel.IRQFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.routes[f.GSI]; !ok {
		return errors.New("no route")
	}
	stop := make(chan struct{})
	v.stops[f.FD] = stop
	v.assigned++
	go func() {
		var b [8]byte
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
			n, _ := unix.Read(f.FD, b[:])
			if n != 8 {
				continue
			}
			for i := uint64(0); i < binary.LittleEndian.Uint64(b[:]); i++ {
				v.mu.Lock()
				v.got = append(v.got, v.routes[f.GSI])
				v.mu.Unlock()
				v.dev.Write(RegMSIAck, []byte{1, 0, 0, 0})
			}
		}
	}()
	return nil
}

func (v *fakeVM) AssignIOEventFD(e accel.IOEventFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ioevents == nil {
		v.ioevents = map[int]accel.IOEventFD{}
	}
	v.ioevents[e.FD] = e
	return nil
}

func (v *fakeVM) DeassignIOEventFD(e accel.IOEventFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.ioevents, e.FD)
	return nil
}

func (v *fakeVM) SignalMSI(m accel.MSI) error {
	v.mu.Lock()
	v.got = append(v.got, m)
	v.mu.Unlock()
	go v.dev.Write(RegMSIAck, []byte{1, 0, 0, 0})
	return nil
}

func (v *fakeVM) DeassignIRQFD(f accel.IRQFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	close(v.stops[f.FD])
	delete(v.stops, f.FD)
	return nil
}

func w32(d *Device, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.Write(off, b[:])
}

func r32(d *Device, off uint64) uint32 {
	var b [4]byte
	d.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

type lvl struct{ high bool }

func (l *lvl) Set(h bool) { l.high = h }
func (l *lvl) Pulse()     {}

func TestLevel(t *testing.T) {
	l := &lvl{}
	d := New(Config{Level: l})
	if r32(d, RegID) != ID {
		t.Fatal("ID")
	}
	w32(d, RegLevel, 1)
	w32(d, RegLevel, 1)
	if !l.high || r32(d, RegLevel) != 1 || r32(d, RegAsserts) != 1 {
		t.Fatal("assert")
	}
	w32(d, RegLevel, 0)
	if l.high || r32(d, RegLevel) != 0 {
		t.Fatal("deassert")
	}
}

func TestRunsBothOrders(t *testing.T) {
	for _, order := range []uint32{OrderQEMU, OrderCH, OrderUserspace} {
		vm := &fakeVM{stops: map[int]chan struct{}{}}
		tb := routes.New(vm, nil)
		if err := tb.Commit(); err != nil {
			t.Fatal(err)
		}
		d := New(Config{Routes: tb, SignalMSI: vm.SignalMSI})
		vm.dev = d
		w32(d, RegMSIAddr, 0xFEE00000)
		w32(d, RegMSIData, 0x61)
		w32(d, RegOrder, order)
		w32(d, RegFire, 25)
		deadline := time.Now().Add(20 * time.Second)
		for r32(d, RegStatus)&StatusDone == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if s := r32(d, RegStatus); s != StatusDone {
			t.Fatalf("order %d: status %#x", order, s)
		}
		if r32(d, RegSent) != 25 || r32(d, RegAcks) != 25 || len(vm.got) != 25 {
			t.Fatalf("order %d: sent %d acks %d delivered %d", order, r32(d, RegSent), r32(d, RegAcks), len(vm.got))
		}
		for _, m := range vm.got {
			if m.Data != 0x61 || m.AddressLo != 0xFEE00000 {
				t.Fatalf("delivered through a wrong route: %+v", m)
			}
		}
		if n, _ := tb.Assigned(); n != 0 || len(vm.stops) != 0 {
			t.Fatal("run left its irqfd assigned")
		}
		if r32(d, RegFastMode) != 1 || len(vm.ioevents) != 1 {
			t.Fatal("FASTBELL ioeventfd not assigned")
		}
		if len(tb.Routes()) != routes.NumReserved {
			t.Fatal("run left its route")
		}
		d.Close()
		if len(vm.ioevents) != 0 {
			t.Fatal("Close left the FASTBELL ioeventfd assigned")
		}
	}
}

func TestDoorbells(t *testing.T) {
	vm := &fakeVM{stops: map[int]chan struct{}{}}
	tb := routes.New(vm, nil)
	d := New(Config{Routes: tb})
	defer d.Close()
	for i := 0; i < 3; i++ {
		w32(d, RegDoorbell, 1)
	}
	// The kernel signals the ioeventfd: model it with the eventfd the
	// device assigned.
	var fd int
	for k := range vm.ioevents {
		fd = k
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 5)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r32(d, RegFastCnt) != 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if r32(d, RegDBCount) != 3 || r32(d, RegFastCnt) != 5 {
		t.Fatalf("doorbells %d fast %d", r32(d, RegDBCount), r32(d, RegFastCnt))
	}
}

func TestCloseStopsRun(t *testing.T) {
	vm := &fakeVM{stops: map[int]chan struct{}{}}
	tb := routes.New(vm, nil)
	tb.Commit()
	d := New(Config{Routes: tb})
	// Nobody acknowledges: the run waits until Close.
	vm.dev = New(Config{})
	w32(d, RegFire, 5)
	time.Sleep(10 * time.Millisecond)
	d.Close()
	if s := r32(d, RegStatus); s != StatusDone|StatusError {
		t.Fatalf("status after Close %#x", s)
	}
	if n, _ := tb.Assigned(); n != 0 {
		t.Fatal("Close left the irqfd assigned")
	}
	w32(d, RegFire, 1)
	if r32(d, RegStatus) != StatusError {
		t.Fatal("FIRE after Close")
	}
}

func TestBadFire(t *testing.T) {
	d := New(Config{})
	w32(d, RegFire, 1)
	if r32(d, RegStatus) != StatusError {
		t.Fatal("FIRE without a routing table must fail")
	}
}

// FuzzIRQTestDev: random register accesses never panic or start runs
// without a routing table.
func FuzzIRQTestDev(f *testing.F) {
	f.Add([]byte{0x04, 1, 0x20, 5, 0x24, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d := New(Config{})
		for len(ops) >= 2 {
			off, v := uint64(ops[0]&0x3f), ops[1]
			ops = ops[2:]
			if v&0x80 != 0 {
				var b [4]byte
				d.Read(off, b[:1+int(v&3)])
			} else {
				d.Write(off, []byte{v, 0, 0, 0}[:1+int(v&3)])
			}
		}
		if d.Save().Status&StatusBusy != 0 {
			t.Fatal("a run started without a routing table")
		}
		d.Close()
	})
}
