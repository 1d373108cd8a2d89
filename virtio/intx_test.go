package virtio_test

import (
	"encoding/binary"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/irq/routes"
	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
)

// fakePins is the IOAPIC as the routing table sees it (the fake line):
// each pin's resample input, how many times it rose, and the resamplers
// an EOI calls.
type fakePins struct {
	mu    sync.Mutex
	level map[int]bool
	rises map[int]int
	rs    map[int]func()
}

func newFakePins() *fakePins {
	return &fakePins{level: map[int]bool{}, rises: map[int]int{}, rs: map[int]func(){}}
}

func (p *fakePins) SetResampleInput(pin int, high bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if high && !p.level[pin] {
		p.rises[pin]++
	}
	p.level[pin] = high
}

func (p *fakePins) SetResampler(pin int, fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rs[pin] = fn
}

// eoi is the guest's EOI of pin's level interrupt, as the IOAPIC serves
// it: the resample input drops, then the resampler is called.
func (p *fakePins) eoi(pin int) {
	p.mu.Lock()
	p.level[pin] = false
	fn := p.rs[pin]
	p.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (p *fakePins) state(pin int) (high bool, rises int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.level[pin], p.rises[pin]
}

const intxGSI = 17

// waitPin waits for pin intxGSI to be high with rises rises so far, and
// checks it stays so for a while (the irqfd and the resample are served
// by goroutines, so a wrong extra rise would come late).
func waitPin(t *testing.T, p *fakePins, high bool, rises int) {
	t.Helper()
	end := time.Now().Add(wait)
	for {
		h, r := p.state(intxGSI)
		if h == high && r == rises {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("INTx pin: high=%v after %d rises, want high=%v after %d", h, r, high, rises)
		}
		time.Sleep(100 * time.Microsecond)
	}
	time.Sleep(20 * time.Millisecond)
	if h, r := p.state(intxGSI); h != high || r != rises {
		t.Fatalf("INTx pin changed to high=%v after %d rises, want it to stay high=%v after %d", h, r, high, rises)
	}
}

type intxRig struct {
	d    *virtiotest.Driver
	tr   *virtio.PCI
	pins *fakePins
	tb   *routes.Table
}

// newINTxRig is an rng device with INTA on GSI 17 over a routing table
// whose IOAPIC is the fake.
func newINTxRig(t *testing.T, mem *virtiotest.Mem) *intxRig {
	t.Helper()
	vm, tb := virtiotest.NewVM()
	pins := newFakePins()
	tb.SetPinController(pins)
	tr, err := virtio.NewPCI(rng.New(), virtio.PCIConfig{Mem: mem, Router: tb, INTx: &virtio.INTxConfig{GSI: intxGSI}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	return &intxRig{d: d, tr: tr, pins: pins, tb: tb}
}

func (r *intxRig) msixCtl(t *testing.T, ctl uint16) {
	t.Helper()
	f := r.tr.Function()
	caps := f.Capabilities(pci.CapIDMSIX)
	if len(caps) != 1 {
		t.Fatal("no MSI-X capability")
	}
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], ctl)
	f.WriteConfig(caps[0]+2, b[:])
}

func (r *intxRig) command(t *testing.T, cmd uint16) {
	t.Helper()
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], cmd)
	r.tr.Function().WriteConfig(pci.RegCommand, b[:])
}

func (r *intxRig) status() uint16 {
	var b [2]byte
	r.tr.Function().ReadConfig(pci.RegStatus, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

func (r *intxRig) isr() uint8 {
	var b [4]byte
	r.tr.BAR().Read(0x1000, b[:])
	return b[0]
}

// request makes the rng fill a buffer and waits for it to be used.
func (r *intxRig) request(t *testing.T) {
	t.Helper()
	r.d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 64, Write: true}}, 0)
	if _, err := r.d.Wait(0, wait); err != nil {
		t.Fatal(err)
	}
}

// initINTx sets the driver up as Linux does without MSI: Init (which
// enables MSI-X and programs the vectors) and MSI-X off again.
func (r *intxRig) initINTx(t *testing.T) {
	t.Helper()
	if err := r.d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	r.msixCtl(t, 0)
}

func TestINTxConfigSpace(t *testing.T) {
	mem := virtiotest.RAM(t, 4<<20)
	r := newINTxRig(t, mem)
	var b [2]byte
	r.tr.Function().ReadConfig(pci.RegInterruptLine, b[:])
	if b[0] != intxGSI || b[1] != 1 {
		t.Fatalf("Interrupt Line %d, Pin %d: want %d and 1 (INTA)", b[0], b[1], intxGSI)
	}
	if st := r.tr.INTx(); !st.Present || st.GSI != intxGSI || st.Asserted {
		t.Fatalf("INTx %+v", st)
	}
	// Without INTx (a machine that gives none) the pin stays 0.
	_, tr := attach(t, rng.New(), mem, virtio.PCIConfig{})
	tr.Function().ReadConfig(pci.RegInterruptLine, b[:])
	if b[1] != 0 {
		t.Fatalf("a function without INTx has Interrupt Pin %d", b[1])
	}
	if tr.INTx().Present {
		t.Fatal("a function without INTx reports one")
	}
}

// TestINTxLevel: a completion with MSI-X off sets the ISR, raises the pin
// and the Interrupt Status bit; the EOI of an interrupt whose ISR was not
// read raises it again; reading the ISR clears both, and the EOI after it
// leaves the pin low.
func TestINTxLevel(t *testing.T) {
	r := newINTxRig(t, virtiotest.RAM(t, 4<<20))
	r.initINTx(t)
	waitPin(t, r.pins, false, 0)
	r.request(t)
	waitPin(t, r.pins, true, 1)
	if r.status()&pci.StatusINTx == 0 {
		t.Fatal("Interrupt Status clear with the line asserted")
	}
	if st := r.tr.INTx(); !st.Asserted || st.Raises != 1 {
		t.Fatalf("INTx %+v, want asserted after 1 raise", st)
	}
	// The guest EOIs without reading the ISR: still wanted, raised again.
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, true, 2)
	if got := r.isr(); got != 1 {
		t.Fatalf("ISR %#x, want 1 (queue)", got)
	}
	if r.status()&pci.StatusINTx != 0 {
		t.Fatal("Interrupt Status set after the ISR was read")
	}
	if r.tr.INTx().Asserted {
		t.Fatal("line asserted after the ISR was read")
	}
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 2)
	if got := r.isr(); got != 0 {
		t.Fatalf("ISR %#x after reading it, want 0", got)
	}
	// Two completions before the handler runs are one interrupt.
	r.request(t)
	r.request(t)
	waitPin(t, r.pins, true, 3)
	if r.isr() != 1 {
		t.Fatal("ISR lost")
	}
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 3)
	// A completion between the ISR read and the EOI is delivered after
	// the EOI.
	r.request(t)
	waitPin(t, r.pins, true, 4)
	r.isr()
	r.request(t)
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, true, 5)
	r.isr()
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 5)
	// A configuration change is ISR bit 1 on the same line.
	r.tr.ConfigChanged()
	waitPin(t, r.pins, true, 6)
	if got := r.isr(); got != 2 {
		t.Fatalf("ISR %#x after a configuration change, want 2", got)
	}
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 6)
	// Reset drops the line.
	r.request(t)
	waitPin(t, r.pins, true, 7)
	r.d.SetCommon(0x14, 1, 0)
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 7)
	if r.status()&pci.StatusINTx != 0 || r.isr() != 0 {
		t.Fatal("Interrupt Status or ISR set after reset")
	}
}

// TestINTxDisable: with the command register's Interrupt Disable set the
// interrupt is held (Interrupt Status shows it) and asserted when the bit
// clears.
func TestINTxDisable(t *testing.T) {
	r := newINTxRig(t, virtiotest.RAM(t, 4<<20))
	r.initINTx(t)
	r.command(t, pci.CmdMemory|pci.CmdBusMaster|pci.CmdINTxDisable)
	r.request(t)
	waitPin(t, r.pins, false, 0)
	if r.status()&pci.StatusINTx == 0 {
		t.Fatal("Interrupt Status clear with an interrupt held by Interrupt Disable")
	}
	r.command(t, pci.CmdMemory|pci.CmdBusMaster)
	waitPin(t, r.pins, true, 1)
	// Setting it while asserted: the line goes at the EOI and is not
	// raised again.
	r.command(t, pci.CmdMemory|pci.CmdBusMaster|pci.CmdINTxDisable)
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 1)
	r.command(t, pci.CmdMemory|pci.CmdBusMaster)
	waitPin(t, r.pins, true, 2)
	if r.isr() != 1 {
		t.Fatal("ISR lost across Interrupt Disable")
	}
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 2)
}

// TestINTxMSIXToggle: switching MSI-X on and off loses no interrupt.
func TestINTxMSIXToggle(t *testing.T) {
	r := newINTxRig(t, virtiotest.RAM(t, 4<<20))
	r.initINTx(t)
	r.d.Interrupts(0)
	// INTx asserted, then MSI-X on: the queue's vector gets it.
	r.request(t)
	waitPin(t, r.pins, true, 1)
	r.msixCtl(t, 1<<15)
	if n := r.d.WaitInterrupts(0, wait); n != 1 {
		t.Fatalf("%d messages on the queue's vector after MSI-X came on with the ISR set, want 1", n)
	}
	if r.status()&pci.StatusINTx != 0 {
		t.Fatal("Interrupt Status set with MSI-X enabled")
	}
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 1)
	// With MSI-X on, completions are messages and leave the pin alone.
	r.request(t)
	if n := r.d.WaitInterrupts(0, wait); n != 1 {
		t.Fatalf("%d messages for a completion with MSI-X on, want 1", n)
	}
	waitPin(t, r.pins, false, 1)
	// A message held by the function mask when MSI-X goes off becomes
	// an INTx interrupt.
	r.msixCtl(t, 1<<15|1<<14)
	r.request(t)
	waitPin(t, r.pins, false, 1)
	r.msixCtl(t, 0)
	waitPin(t, r.pins, true, 2)
	if got := r.isr(); got != 1 {
		t.Fatalf("ISR %#x after MSI-X went off with a message pending, want 1", got)
	}
	r.pins.eoi(intxGSI)
	waitPin(t, r.pins, false, 2)
	if n := r.d.Interrupts(0); n != 0 {
		t.Fatalf("%d messages while masked", n)
	}
}

// TestINTxSaveRestore: a transport saved with its line asserted is
// restored with the ISR and the Interrupt Status bit, and raises the line
// again at Start, not before (the vCPUs' LAPICs are not restored yet).
func TestINTxSaveRestore(t *testing.T) {
	mem := virtiotest.RAM(t, 4<<20)
	r := newINTxRig(t, mem)
	r.initINTx(t)
	r.request(t)
	waitPin(t, r.pins, true, 1)
	r.tr.Pause()
	st := r.tr.Save()
	fs := r.tr.Function().Save()
	rs := r.tb.Save()
	if !st.INTx || st.ISR != 1 {
		t.Fatalf("saved INTx %v ISR %#x, want asserted and 1", st.INTx, st.ISR)
	}
	r2 := newINTxRig(t, mem)
	if err := r2.tb.Restore(rs); err != nil {
		t.Fatal(err)
	}
	if err := r2.tr.Function().Restore(fs); err != nil {
		t.Fatal(err)
	}
	if err := r2.tr.Restore(st); err != nil {
		t.Fatal(err)
	}
	if r2.status()&pci.StatusINTx == 0 {
		t.Fatal("Interrupt Status clear after the restore")
	}
	waitPin(t, r2.pins, false, 0)
	r2.tr.Start()
	waitPin(t, r2.pins, true, 1)
	if got := r2.isr(); got != 1 {
		t.Fatalf("restored ISR %#x, want 1", got)
	}
	r2.pins.eoi(intxGSI)
	waitPin(t, r2.pins, false, 1)

	// A snapshot that says asserted with an ISR of 0 is refused.
	bad := st
	bad.ISR = 0
	r3 := newINTxRig(t, mem)
	if err := r3.tr.Function().Restore(fs); err != nil {
		t.Fatal(err)
	}
	if err := r3.tr.Restore(bad); err == nil || !strings.Contains(err.Error(), "INTx") {
		t.Fatalf("restore of an asserted line with ISR 0: %v", err)
	}
	// And a function without INTx refuses an asserted line.
	_, tr4 := attach(t, rng.New(), mem, virtio.PCIConfig{})
	if err := tr4.Function().Restore(fs); err != nil {
		t.Fatal(err)
	}
	if err := tr4.Restore(st); err == nil || !strings.Contains(err.Error(), "no INTx") {
		t.Fatalf("restore of an asserted line without INTx: %v", err)
	}
}

// FuzzINTx drives an INTx function as a guest could (BAR reads and
// writes, the ISR among them, configuration writes to the command
// register and MSI-X control among them) with configuration-change
// interrupts and EOIs in between, and checks the line's rules after each
// step: Interrupt Status only with MSI-X off and the ISR non-zero, the
// line asserted only when Interrupt Status is set, Interrupt Disable is
// clear and MSI-X is off.
func FuzzINTx(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0, 3, 4, 0, 0, 0, 0x04, 0x06, 0x04, 5, 0, 0, 0, 0, 0x10, 0, 0, 3, 2, 4, 0, 0, 0x04, 0x04, 0, 0, 0x10, 0, 0})
	f.Fuzz(fuzzINTx)
}

func fuzzINTx(t *testing.T, data []byte) {
	{
		r := newINTxRig(t, virtiotest.RAM(t, 4<<20))
		r.initINTx(t)
		bar := r.tr.BAR()
		msix := r.tr.Function().Capabilities(pci.CapIDMSIX)[0]
		for len(data) >= 8 {
			op, size, off := data[0]%6, int(data[1]%5), int(binary.LittleEndian.Uint16(data[2:]))
			buf := append([]byte(nil), data[4:4+size%5]...)
			data = data[8:]
			switch op {
			case 0:
				bar.Read(uint64(off%0x8000), buf)
			case 1:
				bar.Write(uint64(off%0x8000), buf)
			case 2:
				r.tr.Function().WriteConfig(off%256, buf)
			case 3:
				// The command register and MSI-X control, densely.
				if off&1 == 0 {
					r.tr.Function().WriteConfig(pci.RegCommand, buf)
				} else {
					r.tr.Function().WriteConfig(msix+2, buf)
				}
			case 4:
				r.tr.ConfigChanged()
			case 5:
				r.pins.eoi(intxGSI)
			}
			var ctl [2]byte
			r.tr.Function().ReadConfig(msix+2, ctl[:])
			msixOn := binary.LittleEndian.Uint16(ctl[:])&(1<<15) != 0
			disabled := r.tr.Function().Command()&pci.CmdINTxDisable != 0
			status := r.status()&pci.StatusINTx != 0
			if status && msixOn {
				t.Fatal("Interrupt Status set with MSI-X enabled")
			}
			if st := r.tr.INTx(); st.Asserted && (!status || disabled || msixOn) {
				t.Fatalf("line asserted with Interrupt Status %v, Interrupt Disable %v, MSI-X %v", status, disabled, msixOn)
			}
		}
	}
}
