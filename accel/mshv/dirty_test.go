package mshv

import (
	"testing"

	"govmm/accel"
	"govmm/memory"
)

// TestFakeEmulatorWritesDirty: a store govmm's instruction emulator makes
// to guest RAM (an MMIO read copied into RAM by a string move) is not in
// the hypervisor's GPA access bitmap, which sees only the guest's own
// writes; the backend reports it to VMConfig.MarkDirty, so guest memory's
// dirty log has it, once, while tracking is on, for every page the store
// touches, and not when tracking is off.
func TestFakeEmulatorWritesDirty(t *testing.T) {
	f := newFake()
	a, err := Open(f.dev)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(16 * 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	vm, err := a.NewVM(accel.VMConfig{NumVCPUs: 1, MarkDirty: mem.MarkDirty})
	if err != nil {
		t.Fatal(err)
	}
	v, err := vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	r := mem.Regions()[0]
	if err := vm.MapMemory(accel.MemoryRegion{GPA: r.GPA, Host: r.Host}); err != nil {
		t.Fatal(err)
	}
	base := r.GPA
	c := &emuCPU{v: v}
	if !c.WritePhys(base+0x1000, []byte{1}) {
		t.Fatal("write before tracking failed")
	}
	if err := mem.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	// A store that straddles pages 2 and 3, and one to page 9.
	if !c.WritePhys(base+3*4096-4, make([]byte, 8)) || !c.WritePhys(base+9*4096, []byte{2}) {
		t.Fatal("emulated store failed")
	}
	words := mem.TakeDirty(0, nil)
	if want := uint64(1<<2 | 1<<3 | 1<<9); len(words) != 1 || words[0] != want {
		t.Fatalf("dirty log %#x, want %#x (pages 2, 3 and 9; not page 1, written before tracking)", words, want)
	}
	if words = mem.TakeDirty(0, nil); words[0] != 0 {
		t.Errorf("second read: %#x; want the pages reported once", words)
	}
	mem.StopDirtyLog()
	c.WritePhys(base+5*4096, []byte{3})
	if err := mem.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if words = mem.TakeDirty(0, nil); words[0] != 0 {
		t.Errorf("a store while tracking was off shows up later: %#x", words)
	}
}
