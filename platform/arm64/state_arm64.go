//go:build linux && arm64

package arm64

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"govmm/devices/bus"
	"govmm/memory"
	"govmm/pci"
	"govmm/snapshot"
	"govmm/virtio/devices"
	virtionet "govmm/virtio/net"
)

// pauser parks the vCPU threads for Pause and lets them go on Resume.
type pauser struct {
	mu     sync.Mutex
	cond   *sync.Cond
	want   bool // a pause is asked for, or in force
	paused bool // every vCPU is parked and the devices are quiet
	parked int
}

func (p *pauser) init() { p.cond = sync.NewCond(&p.mu) }

func closed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// park holds a kicked vCPU thread while a pause is in force. It returns
// false when the machine ended meanwhile.
func (p *pauser) park(done <-chan struct{}) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.want {
		return true
	}
	p.parked++
	p.cond.Broadcast()
	for p.want && !closed(done) {
		p.cond.Wait()
	}
	p.parked--
	return !closed(done)
}

// wake lets parked threads see that the machine ended.
func (p *pauser) wake() {
	p.mu.Lock()
	p.cond.Broadcast()
	p.mu.Unlock()
}

// ErrStopped is returned by Pause and Resume once the guest has ended.
var ErrStopped = errors.New("the VM has stopped")

// Pause stops every vCPU (out of KVM_RUN, parked in the VMM) and then the
// virtio devices, waiting for their requests in flight. Pausing a paused
// machine does nothing. It needs Run to be running (or about to).
func (m *Machine) Pause() error {
	p := &m.pause
	p.mu.Lock()
	if p.paused {
		p.mu.Unlock()
		return nil
	}
	p.want = true
	p.mu.Unlock()
	for _, v := range m.vcpus {
		v.Kick()
	}
	p.mu.Lock()
	for p.parked < len(m.vcpus) && !closed(m.done) {
		p.cond.Wait()
	}
	if closed(m.done) {
		p.want = false
		p.mu.Unlock()
		return ErrStopped
	}
	p.paused = true
	p.mu.Unlock()
	m.virtio.Pause()
	return nil
}

// Resume lets a paused machine run again.
func (m *Machine) Resume() error {
	if closed(m.done) {
		return ErrStopped
	}
	p := &m.pause
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		return nil
	}
	m.virtio.Resume()
	p.paused, p.want = false, false
	p.cond.Broadcast()
	return nil
}

// Stop ends the machine from outside the guest: Run returns StopRequested.
func (m *Machine) Stop() { m.stop(Result{Stop: StopRequested}) }

// Paused says whether the machine is paused.
func (m *Machine) Paused() bool {
	m.pause.mu.Lock()
	defer m.pause.mu.Unlock()
	return m.pause.paused
}

// NumCPUs and MemSize are the machine's vCPU count and RAM size.
func (m *Machine) NumCPUs() int       { return len(m.vcpus) }
func (m *Machine) MemSize() uint64    { return uint64(len(m.ram)) }
func (m *Machine) Cmdline() string    { return m.cfg.Cmdline }
func (m *Machine) Exits() []bus.Count { return m.bus.Counts() }

// PCIDevice is one function on the PCI bus (function 0 of its slot).
type PCIDevice struct {
	Slot           int
	Vendor, Device uint16
	What           string
	Queues         []string // a virtio device's status and queues (virtio.PCI.QueueStates)
}

// PCIDevices lists the PCI bus in slot order: the host bridge and the
// virtio devices with what backs them.
func (m *Machine) PCIDevices() []PCIDevice {
	what := map[*pci.Function]string{}
	queues := map[*pci.Function][]string{}
	for _, d := range m.virtio.Devices {
		queues[d.Transport.Function()] = d.Transport.QueueStates()
		what[d.Transport.Function()] = d.Transport.Describe()
		what[d.Transport.Function()] += virtionet.DeviceNote(d.Transport.Device())
	}
	var out []PCIDevice
	for slot := range pci.NumSlots {
		f := m.pci.Function(slot, 0)
		if f == nil {
			continue
		}
		var id [4]byte
		f.ReadConfig(pci.RegVendorID, id[:])
		d := PCIDevice{Slot: slot, Vendor: binary.LittleEndian.Uint16(id[:]), Device: binary.LittleEndian.Uint16(id[2:]), What: what[f], Queues: queues[f]}
		if slot == 0 && d.What == "" {
			d.What = "host bridge"
		}
		out = append(out, d)
	}
	return out
}

// Save captures the paused machine: the vCPUs, the vGIC and ITS (whose
// tables and LPI pending bits KVM writes to guest RAM first, so save
// guest memory after Save) and the devices.
func (m *Machine) Save() (*Saved, error) {
	if !m.Paused() {
		return nil, errors.New("save state: the VM is not paused")
	}
	s := &Saved{Machine: m.machineState()}
	for _, v := range m.vcpus {
		vs, err := v.SaveState()
		if err != nil {
			return nil, fmt.Errorf("save: %w", err)
		}
		s.VCPUs = append(s.VCPUs, vs)
	}
	gic, err := m.vm.SaveGIC(m.mpidrs, NumIRQs)
	if err != nil {
		return nil, err
	}
	s.GIC = gic
	s.Devices = DeviceState{UART: m.uart.Save(), PCI: m.pci.Save()}
	for _, d := range m.virtio.Devices {
		s.Devices.Virtio = append(s.Devices.Virtio, d.Transport.Save())
	}
	if c := m.virtio.Console; c != nil {
		cs := c.Save()
		s.Devices.VirtioConsole = &cs
	}
	return s, nil
}

// WriteSnapshot writes a snapshot of the paused machine into dir: the
// state file and guest RAM as a sparse file (zero pages are holes), each
// under a temporary name first, synced, then renamed, the state file
// last (an older snapshot's state file is removed first, so that it is
// never paired with the new memory). It returns the state file's size.
func (m *Machine) WriteSnapshot(dir string, progress func(done, total uint64)) (int, error) {
	s, err := m.Save()
	if err != nil {
		return 0, err
	}
	st, err := s.State()
	if err != nil {
		return 0, err
	}
	b, err := st.Marshal()
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("snapshot directory: %w", err)
	}
	memTmp := filepath.Join(dir, "."+snapshot.MemoryFile+".tmp")
	stTmp := filepath.Join(dir, "."+snapshot.StateFile+".tmp")
	fail := func(err error) (int, error) {
		os.Remove(memTmp)
		os.Remove(stTmp)
		return 0, err
	}
	if err := writeSparse(memTmp, m.ram, progress); err != nil {
		return fail(err)
	}
	if err := writeSynced(stTmp, b); err != nil {
		return fail(err)
	}
	final := filepath.Join(dir, snapshot.StateFile)
	if err := os.Remove(final); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Errorf("remove the old state file: %w", err))
	}
	if err := os.Rename(memTmp, filepath.Join(dir, snapshot.MemoryFile)); err != nil {
		return fail(fmt.Errorf("snapshot memory file: %w", err))
	}
	if err := os.Rename(stTmp, final); err != nil {
		return fail(fmt.Errorf("snapshot state file: %w", err))
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return len(b), nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// writeSparse writes ram to path leaving its zero pages as holes.
func writeSparse(path string, ram []byte, progress func(done, total uint64)) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create snapshot memory file: %w", err)
	}
	defer f.Close()
	const page, chunk = 4096, 1 << 20
	total := uint64(len(ram))
	for off := 0; off < len(ram); off += chunk {
		end := min(off+chunk, len(ram))
		start := -1
		for p := off; p <= end; p += page {
			zero := p == end || snapshot.IsZero(ram[p:min(p+page, end)])
			if !zero && start < 0 {
				start = p
			}
			if zero && start >= 0 {
				if _, err := f.WriteAt(ram[start:p], int64(start)); err != nil {
					return fmt.Errorf("write guest memory at %#x: %w", RAMBase+uint64(start), err)
				}
				start = -1
			}
		}
		if progress != nil {
			progress(uint64(end), total)
		}
	}
	if err := f.Truncate(int64(len(ram))); err != nil {
		return fmt.Errorf("size snapshot memory file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync snapshot memory file: %w", err)
	}
	return nil
}

// Restore builds the machine a snapshot describes, with cfg's devices
// (the same --disk, --rng, --vsock, --net and --console as the saved VM
// had) and guest RAM mapped private from memFile (copy-on-write: the file
// is not changed), and loads the saved state into it. Run starts it where
// it was.
func Restore(cfg Config, s *Saved, memFile *os.File) (m *Machine, err error) {
	fi, err := memFile.Stat()
	if err != nil {
		return nil, fmt.Errorf("snapshot memory file: %w", err)
	}
	if uint64(fi.Size()) != s.Machine.MemSize {
		return nil, &InputError{fmt.Errorf("snapshot memory file is %d bytes, the machine has %d", fi.Size(), s.Machine.MemSize)}
	}
	m, err = prepare(cfg, s.Machine, memFile, nil)
	if err != nil {
		return nil, err
	}
	if err := m.Apply(s); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Prepare builds the machine a live migration's hello announces around
// mem (guest RAM at RAMBase, which the machine owns from now on, closed on
// error too) while its pages still arrive: cfg's devices, the vCPUs (their
// MPIDRs checked against the source's), the vGIC. Apply loads the state
// once the stream is complete.
func Prepare(cfg Config, ms MachineState, mem *memory.Memory) (*Machine, error) {
	if err := ms.Check(); err != nil {
		mem.Close()
		return nil, &InputError{fmt.Errorf("the incoming %w", err)}
	}
	if mem.Size() != ms.MemSize {
		mem.Close()
		return nil, fmt.Errorf("guest memory is %d bytes, the incoming machine has %d", mem.Size(), ms.MemSize)
	}
	return prepare(cfg, ms, nil, mem)
}

func prepare(cfg Config, ms MachineState, memFile *os.File, mem *memory.Memory) (m *Machine, err error) {
	cfg.MemSize, cfg.NumCPUs = ms.MemSize, ms.NumCPUs
	if cfg.Cmdline == "" {
		cfg.Cmdline = ms.Cmdline
	}
	if cfg.KernelName == "" {
		cfg.KernelName = ms.Kernel
	}
	if cfg.Device == "" {
		cfg.Device = "/dev/kvm"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Serial == nil {
		cfg.Serial = io.Discard
	}
	if cfg.Virtio.Console {
		cfg.Serial = devices.SharedOutput(cfg.Serial)
	}
	m, err = build(cfg, Placement{}, memFile, mem)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(m.mpidrs, ms.MPIDRs) {
		m.Close()
		return nil, fmt.Errorf("the vCPUs' MPIDRs are %#x here and %#x on the saved machine", m.mpidrs, ms.MPIDRs)
	}
	return m, nil
}

// Apply loads a saved state (a snapshot's, or a live migration's last
// frame) into a machine Restore or Prepare built, whose guest RAM holds
// the saved memory: the vCPUs, the vGIC and ITS (which reads its tables
// from guest RAM), the PL011, the PCI bus and the virtio transports. Run
// then starts it where it was.
func (m *Machine) Apply(s *Saved) error {
	if s.Machine.NumCPUs != len(m.vcpus) || s.Machine.MemSize != m.MemSize() || !slices.Equal(m.mpidrs, s.Machine.MPIDRs) {
		return fmt.Errorf("restore: the saved state is of a machine with %d vCPUs and %d MiB, this one has %d and %d MiB",
			s.Machine.NumCPUs, s.Machine.MemSize>>20, len(m.vcpus), m.MemSize()>>20)
	}
	cnt := s.Counter()
	for i, v := range m.vcpus {
		if err := v.RestoreState(&s.VCPUs[i], cnt); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	if err := m.vm.RestoreGIC(&s.GIC, m.mpidrs); err != nil {
		return err
	}
	// The INTx SPIs' levels are the transports' to set: at Start each
	// raises again the line it had asserted (PCIState.INTx), through
	// its resample irqfd, whose resampler lowers it at the guest's
	// EOI. A level restored high from the vGIC's saved line levels has
	// no resampler behind it until then, and would stay high for good
	// if the guest read the ISR and EOI'd before Start.
	for i := range PCINumINTxSPIs {
		if err := m.vm.SetSPI(32+PCIINTxSPIBase+uint32(i), false); err != nil {
			return fmt.Errorf("restore: lower INTx SPI %d: %w", PCIINTxSPIBase+i, err)
		}
	}
	d := &s.Devices
	if err := m.uart.Restore(d.UART); err != nil {
		return &InputError{fmt.Errorf("restore: %w", err)}
	}
	if len(d.Virtio) != len(m.virtio.Devices) {
		var have, want []string
		for _, x := range m.virtio.Devices {
			have = append(have, x.Transport.Device().Describe())
		}
		for _, x := range d.Virtio {
			want = append(want, x.Device)
		}
		return &InputError{fmt.Errorf("restore: the snapshot has virtio devices %q, this machine %q (give the same --disk, --rng, --vsock, --net and --console flags)", want, have)}
	}
	if err := m.pci.Restore(d.PCI); err != nil {
		return &InputError{fmt.Errorf("restore PCI bus: %w", err)}
	}
	if c := m.virtio.Console; c != nil && d.VirtioConsole != nil {
		if err := c.Restore(*d.VirtioConsole); err != nil {
			return &InputError{fmt.Errorf("restore: %w", err)}
		}
	}
	// The transports after the bus: their MSI-X control bits and BARs
	// are in its configuration space.
	for i, x := range m.virtio.Devices {
		if err := x.Transport.Restore(d.Virtio[i]); err != nil {
			return &InputError{fmt.Errorf("restore virtio device: %w (give the same --disk, --rng, --vsock, --net and --console flags as the saved VM had)", err)}
		}
	}
	m.restored = true
	m.cfg.Log.Info("arm64 machine restored", "cpus", len(m.vcpus), "memory_mib", m.MemSize()>>20, "counter", cnt)
	return nil
}

// startVirtio looks at the restored queues for requests the driver posted
// before the snapshot (the vGIC is restored, so their interrupts land).
func (m *Machine) startVirtio() {
	for _, x := range m.virtio.Devices {
		x.Transport.Start()
	}
}
