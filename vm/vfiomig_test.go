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
