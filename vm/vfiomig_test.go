package vm

import (
	"strings"
	"testing"

	"govmm/snapshot"
	"govmm/vfio"
)

func TestParseVFIOSections(t *testing.T) {
	st := &snapshot.State{}
	a := vfio.MigrationState{Name: "a", Vendor: 0x4348, Device: 0x3253, MigFlags: 1, Data: []byte{1, 2, 3}}
	b := a
	b.Name, b.Data = "b", []byte{4}
	for i, s := range []vfio.MigrationState{a, b} {
		if err := st.Add(vfioSection(i), vfioVersion, s); err != nil {
			t.Fatal(err)
		}
	}
	got, err := parseVFIO(st)
	if err != nil || len(got) != 2 || got[0].Name != "a" || string(got[1].Data) != "\x04" || got[0].Vendor != 0x4348 {
		t.Fatalf("parseVFIO = %+v, %v", got, err)
	}
	// A gap in the sequence, a newer version, or a device without data
	// is refused.
	gap := &snapshot.State{}
	gap.Add(vfioSection(0), vfioVersion, a)
	gap.Add(vfioSection(2), vfioVersion, b)
	if _, err := parseVFIO(gap); err == nil || !strings.Contains(err.Error(), "out of sequence") {
		t.Errorf("a gap: %v", err)
	}
	newer := &snapshot.State{}
	newer.Add(vfioSection(0), vfioVersion+1, a)
	if _, err := parseVFIO(newer); err == nil {
		t.Error("a newer section version: no error")
	}
	empty := &snapshot.State{}
	a.Data = nil
	empty.Add(vfioSection(0), vfioVersion, a)
	if _, err := parseVFIO(empty); err == nil || !strings.Contains(err.Error(), "no migration data") {
		t.Errorf("no data: %v", err)
	}
	if got, err := parseVFIO(&snapshot.State{}); err != nil || len(got) != 0 {
		t.Errorf("no sections: %v, %v", got, err)
	}
}

// A saved VM with a VFIO device restored without one (and the other way
// round) is refused, naming the saved devices.
func TestCheckVFIOLoadCount(t *testing.T) {
	var none *vfioDevices
	saved := []vfio.MigrationState{{Name: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", Data: []byte{1}}}
	err := none.checkLoad(saved)
	if err == nil || !strings.Contains(err.Error(), "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001") || !strings.Contains(err.Error(), "had 1 VFIO devices") {
		t.Errorf("one saved, none here: %v", err)
	}
	if err := none.checkLoad(nil); err != nil {
		t.Errorf("none and none: %v", err)
	}
	if err := none.refuseUnmigratable("a snapshot"); err != nil {
		t.Errorf("no devices: %v", err)
	}
}

// Version 1 sections (before the MSI-X table and pending bits were
// carried) are still read, with no interrupt state; a version 2 section
// keeps its MSI-X table.
func TestParseVFIOVersion1(t *testing.T) {
	st := &snapshot.State{}
	// What a version 1 govmm wrote: no msix, msi or pre_copy_bytes.
	type v1 struct {
		Name     string `json:"name"`
		Vendor   uint16 `json:"vendor"`
		Device   uint16 `json:"device"`
		MigFlags uint64 `json:"migration_flags"`
		Data     []byte `json:"data"`
	}
	if err := st.Add(vfioSection(0), 1, v1{Name: "old", Vendor: 0x4348, Device: 0x3253, MigFlags: 1, Data: []byte("fifo:x")}); err != nil {
		t.Fatal(err)
	}
	msix := &vfio.MSIXState{Vectors: 1, Table: make([]byte, 16), Pending: []uint64{1}}
	if err := st.Add(vfioSection(1), vfioVersion, vfio.MigrationState{Name: "new", Data: []byte{1}, MSIX: msix}); err != nil {
		t.Fatal(err)
	}
	got, err := parseVFIO(st)
	if err != nil || len(got) != 2 || got[0].Name != "old" || got[0].MSIX != nil || got[0].MSI != nil || string(got[0].Data) != "fifo:x" {
		t.Fatalf("parseVFIO = %+v, %v", got, err)
	}
	if m := got[1].MSIX; m == nil || m.Vectors != 1 || len(m.Table) != 16 || m.Pending[0] != 1 {
		t.Errorf("version 2 MSI-X: %+v", m)
	}
}

// AddPreCopy puts the bytes a live migration sent before the pause in
// front of each device's data, and refuses a count that does not match
// or data for a device the state does not have.
func TestAddPreCopy(t *testing.T) {
	mk := func() *Restored {
		return &Restored{VFIO: []vfio.MigrationState{
			{Name: "a", Data: []byte("rest"), PreCopy: 5},
			{Name: "b", Data: []byte("all")},
		}}
	}
	r := mk()
	if err := r.AddPreCopy(map[string][]byte{"vfio/0": []byte("head:")}); err != nil {
		t.Fatal(err)
	}
	if string(r.VFIO[0].Data) != "head:rest" || r.VFIO[0].PreCopy != 0 || string(r.VFIO[1].Data) != "all" {
		t.Errorf("after AddPreCopy: %+v", r.VFIO)
	}
	for _, c := range []struct {
		name string
		data map[string][]byte
		want string
	}{
		{"missing", nil, "0 bytes of its pre-copy data arrived, its state counts 5"},
		{"short", map[string][]byte{"vfio/0": []byte("hea")}, "3 bytes"},
		{"unexpected", map[string][]byte{"vfio/0": []byte("head:"), "vfio/1": []byte("x")}, "1 bytes of its pre-copy data arrived, its state counts 0"},
		{"unknown device", map[string][]byte{"vfio/0": []byte("head:"), "vfio/7": []byte("x")}, `"vfio/7"`},
		{"not a VFIO section", map[string][]byte{"pci": []byte("x")}, `"pci"`},
	} {
		if err := mk().AddPreCopy(c.data); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	// A snapshot (no pre-copy) is unchanged.
	r = &Restored{VFIO: []vfio.MigrationState{{Name: "b", Data: []byte("all")}}}
	if err := r.AddPreCopy(nil); err != nil || string(r.VFIO[0].Data) != "all" {
		t.Errorf("no pre-copy: %v, %+v", err, r.VFIO)
	}
}
