package vm

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"govmm/devices/pcihp"
	"govmm/snapshot"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
)

// stateWith is a whole state file (through its encoding) whose machine
// record is m at version ver (0: the version SaveState would write) and
// whose other sections are empty.
func stateWith(t *testing.T, m MachineState, ver uint32, ds DeviceState) *snapshot.State {
	t.Helper()
	st := &snapshot.State{}
	var err error
	if ver == 0 {
		err = addMachine(st, m)
	} else {
		err = st.Add("machine", ver, m)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		name string
		v    any
	}{{"vcpu/0", VCPUState{}}, {"devices", ds}, {"clock", ClockState{NS: 1}}} {
		if err := st.Add(a.name, 1, a.v); err != nil {
			t.Fatal(err)
		}
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out, err := snapshot.UnmarshalArch(b, snapshot.ArchX86_64)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var hotPair = []HotAddedDevice{
	{Kind: HotAddedDisk, Slot: 1, Spec: "path=/img/hot,,1.img,serial=hs,,0"},
	{Kind: HotAddedNet, Slot: 3, Spec: "tap=govmmtap0,mac=52:54:00:12:ab:cd"},
}

// TestHotAddedRecordRoundTrip: a machine with hot-added devices is
// written as machine record version 2 and parses back with the same
// devices, and the hotplug controller's state with them; one without is
// still version 1, which a govmm from before hot-add reads.
func TestHotAddedRecordRoundTrip(t *testing.T) {
	m := MachineState{MemSize: 1 << 20, NumCPUs: 1, Accel: "kvm", HotAdded: hotPair}
	st := stateWith(t, m, 0, DeviceState{Hotplug: &pcihp.State{Up: 1 << 3}})
	if sec, _ := st.Find("machine"); sec.Version != 2 {
		t.Errorf("the machine record with hot-added devices is version %d, want 2", sec.Version)
	}
	r, err := ParseState(st)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Machine.HotAdded, hotPair) {
		t.Errorf("hot-added devices %+v, want %+v", r.Machine.HotAdded, hotPair)
	}
	if r.Devices.Hotplug == nil || r.Devices.Hotplug.Up != 1<<3 {
		t.Errorf("hotplug controller state %+v, want PCIU slot 3", r.Devices.Hotplug)
	}

	m.HotAdded = nil
	st = stateWith(t, m, 0, DeviceState{})
	if sec, _ := st.Find("machine"); sec.Version != 1 || strings.Contains(string(sec.Data), "hot_added") {
		t.Errorf("the machine record without hot-added devices: version %d, %s; want version 1 without hot_added", sec.Version, sec.Data)
	}
}

// TestHotAddedRecordOld: a snapshot from before hot-add (machine record
// version 1, no hot_added, no pci_hotplug) restores as before: no
// hot-added device, the controller in its reset state.
func TestHotAddedRecordOld(t *testing.T) {
	st := &snapshot.State{}
	// The machine and devices sections as a govmm before hot-add wrote
	// them: fields it did not have are absent, not empty.
	old := []struct {
		name string
		json string
	}{
		{"machine", `{"mem_size":1048576,"num_cpus":1,"cpuid":null,"saved_on_accel":"kvm"}`},
		{"vcpu/0", `{}`},
		{"devices", `{"chipset":{},"uart":{},"rtc":{},"pit":{},"acpi_pm":{}}`},
		{"clock", `{"ns":5}`},
	}
	for _, s := range old {
		st.Sections = append(st.Sections, snapshot.Section{Name: s.name, Version: 1, Data: []byte(s.json)})
	}
	r, err := ParseState(st)
	if err != nil {
		t.Fatal(err)
	}
	if r.Machine.HotAdded != nil || r.Devices.Hotplug != nil {
		t.Errorf("an old snapshot parsed with hot-added devices %+v, hotplug state %+v", r.Machine.HotAdded, r.Devices.Hotplug)
	}
}

// TestHotAddedRecordMalformed: a machine record whose hot-added devices
// cannot be rebuilt is refused whole, before anything is built, with an
// error that names what is wrong.
func TestHotAddedRecordMalformed(t *testing.T) {
	base := MachineState{MemSize: 1 << 20, NumCPUs: 1, Accel: "kvm"}
	for _, c := range []struct {
		name string
		hot  []HotAddedDevice
		ver  uint32
		want string
	}{
		{"version 1 with devices", hotPair, 1, "version 2 introduced"},
		{"version 3", hotPair, 3, "reads versions 1 to 2"},
		{"unknown kind", []HotAddedDevice{{Kind: "floppy", Slot: 2, Spec: "path=/a"}}, 2, `kind "floppy"`},
		{"slot 0", []HotAddedDevice{{Kind: HotAddedDisk, Slot: 0, Spec: "path=/a"}}, 2, "slot 0 is outside 1..31"},
		{"slot 32", []HotAddedDevice{{Kind: HotAddedDisk, Slot: 32, Spec: "path=/a"}}, 2, "slot 32 is outside 1..31"},
		{"two at one slot", []HotAddedDevice{hotPair[0], {Kind: HotAddedNet, Slot: 1, Spec: "tap=t0"}}, 2, "two at PCI slot 1"},
		{"no path", []HotAddedDevice{{Kind: HotAddedDisk, Slot: 2, Spec: "serial=x"}}, 2, "no path="},
		{"relative path", []HotAddedDevice{{Kind: HotAddedDisk, Slot: 2, Spec: "path=hot.img"}}, 2, "not absolute"},
		{"direct", []HotAddedDevice{{Kind: HotAddedDisk, Slot: 2, Spec: "path=/a,direct=on"}}, 2, "direct=on"},
		{"bad option", []HotAddedDevice{{Kind: HotAddedNet, Slot: 2, Spec: "tap=t0,speed=9"}}, 2, `unknown option "speed"`},
		{"multiqueue", []HotAddedDevice{{Kind: HotAddedNet, Slot: 2, Spec: "tap=t0,queues=2"}}, 2, "queues>1"},
		{"trailing comma", []HotAddedDevice{{Kind: HotAddedDisk, Slot: 2, Spec: "path=/a,"}}, 2, "ends in a lone comma"},
	} {
		m := base
		m.HotAdded = c.hot
		_, err := ParseState(stateWith(t, m, c.ver, DeviceState{}))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want an error naming %q, got %v", c.name, c.want, err)
		}
	}
	// Not a list: the JSON does not decode.
	st := &snapshot.State{Sections: []snapshot.Section{{Name: "machine", Version: 2,
		Data: []byte(`{"mem_size":1048576,"num_cpus":1,"hot_added":{"kind":"disk"}}`)}}}
	if _, err := ParseState(st); err == nil || !strings.Contains(err.Error(), `decode state section "machine"`) {
		t.Errorf("hot_added not a list: %v", err)
	}
	// A migration's hello carries the machine without a section
	// version: Prepare checks the devices as ParseState does.
	var m MachineState
	if err := json.Unmarshal([]byte(`{"mem_size":1048576,"num_cpus":1,"hot_added":[{"kind":"disk","slot":40,"spec":"path=/a"}]}`), &m); err != nil {
		t.Fatal(err)
	}
	if err := checkHotAdded(m.HotAdded); err == nil || !strings.Contains(err.Error(), "slot 40") {
		t.Errorf("a hello's machine with a device at slot 40: %v", err)
	}
}

// TestRebuildHotAddedErrors: a device whose image cannot be opened, or
// whose slot this machine does not offer for hotplug, is refused naming
// the device, its slot and its path.
func TestRebuildHotAddedErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone.img")
	v := &VM{log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	p := &platformDevices{hotSlots: []int{1, 2, 3}}
	err := v.rebuildHotAdded(p, []HotAddedDevice{{Kind: HotAddedDisk, Slot: 2, Spec: "path=" + missing}})
	var ie *InputError
	if err == nil || !strings.Contains(err.Error(), "hot-added disk at PCI slot 2") || !strings.Contains(err.Error(), missing) ||
		!strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing image: %v", err)
	} else if !errors.As(err, &ie) {
		t.Errorf("a missing image is not an InputError (exit 64): %v", err)
	}
	err = v.rebuildHotAdded(p, []HotAddedDevice{{Kind: HotAddedDisk, Slot: 9, Spec: "path=" + missing}})
	if err == nil || !strings.Contains(err.Error(), "slot 9 is not a hotplug slot") {
		t.Errorf("a slot the machine does not offer: %v", err)
	}
	if len(p.hotDevs) != 0 {
		t.Errorf("failed rebuilds left records: %+v", p.hotDevs)
	}
}

// TestUncarriedRefused: a hot-added device whose options have no --net
// form (a vhost device path, which no hot-added device has today, but
// which Spec cannot write) refuses a snapshot and a migration, naming the
// device and why.
func TestUncarriedRefused(t *testing.T) {
	d := hotRecord(HotAddedNet, virtionet.Config{Tap: "tap0", VhostPath: "/dev/vhost-net"}.Spec)
	d.rec.Slot = 4
	v := &VM{plat: &platformDevices{hotDevs: map[int]hotDevice{4: d, 1: {rec: hotPair[0]}}}}
	err := v.refuseUncarriedLocked("a snapshot")
	if err == nil || !strings.Contains(err.Error(), "a snapshot: the hot-added net at PCI slot 4: virtio-net tap0: the vhost device path /dev/vhost-net has no --net form") {
		t.Errorf("refusal: %v", err)
	}
	delete(v.plat.hotDevs, 4)
	if err := v.refuseUncarriedLocked("a snapshot"); err != nil {
		t.Errorf("with the device ejected: %v", err)
	}
	if got := v.hotAddedLocked(); !slices.Equal(got, hotPair[:1]) {
		t.Errorf("records %+v, want %+v", got, hotPair[:1])
	}
}

// TestApplyHotAddedChanged: a migration whose final state lists other
// hot-added devices than its hello (an eject or a hot-add while memory
// moved) is refused before any state is loaded.
func TestApplyHotAddedChanged(t *testing.T) {
	v := &VM{cfg: Config{MemSize: 1 << 20, NumCPUs: 1, hotAdded: hotPair}}
	r := &Restored{Machine: MachineState{MemSize: 1 << 20, NumCPUs: 1, HotAdded: hotPair[1:]}}
	if err := v.Apply(r); err == nil || !strings.Contains(err.Error(), "ejected or hot-added after the migration began") {
		t.Errorf("Apply with another device list: %v", err)
	}
}

// TestHotRecordCommas: a hot-added disk whose image path and serial hold
// commas, and a network device whose TAP's name does, have records (their
// commas written ",,"), which a restore parses back to the same devices.
func TestHotRecordCommas(t *testing.T) {
	dc := blk.Config{Path: "/img/a,b.img", Serial: "s,1", ReadOnly: true}
	d := hotRecord(HotAddedDisk, dc.Spec)
	if d.uncarried != nil || d.rec.Spec != "path=/img/a,,b.img,readonly=on,serial=s,,1" {
		t.Fatalf("disk record %+v", d)
	}
	d.rec.Slot = 2
	nc := virtionet.Config{Tap: "t,0", MAC: "52:54:00:00:00:07", Queues: 1}
	n := hotRecord(HotAddedNet, nc.Spec)
	if n.uncarried != nil || n.rec.Spec != "tap=t,,0,mac=52:54:00:00:00:07" {
		t.Fatalf("net record %+v", n)
	}
	n.rec.Slot = 3
	v := &VM{plat: &platformDevices{hotDevs: map[int]hotDevice{2: d, 3: n}}}
	if err := v.refuseUncarriedLocked("a snapshot"); err != nil {
		t.Fatalf("a snapshot refused: %v", err)
	}
	list := v.hotAddedLocked()
	if err := checkHotAdded(list); err != nil {
		t.Fatal(err)
	}
	if got, err := list[0].parseDisk(); err != nil || got != dc {
		t.Errorf("the disk's record parses to %+v, %v; want %+v", got, err, dc)
	}
	if got, err := list[1].parseNet(); err != nil || got != nc {
		t.Errorf("the network device's record parses to %+v, %v; want %+v", got, err, nc)
	}
}
