package mshv

import (
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// TestFakeEmulatorWritesDirty: a store govmm's instruction emulator makes
// to guest RAM (an MMIO read copied into RAM by a string move) is not in
// the hypervisor's GPA access bitmap, which sees only the guest's own
// writes; the dirty log adds it, once, while tracking is on, for every
// page the store touches, and forgets it when tracking stops.
func TestFakeEmulatorWritesDirty(t *testing.T) {
	f := newFake()
	vm, v := f.machine(t)
	host, err := unix.Mmap(-1, 0, 16*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(host)
	const base = 0x100000
	if err := vm.MapMemory(accel.MemoryRegion{GPA: base, Host: host}); err != nil {
		t.Fatal(err)
	}
	c := &emuCPU{v: v}
	if !c.WritePhys(base+0x1000, []byte{1}) {
		t.Fatal("write before tracking failed")
	}
	if err := vm.EnableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	// A store that straddles pages 2 and 3, and one to page 9.
	if !c.WritePhys(base+3*4096-4, make([]byte, 8)) || !c.WritePhys(base+9*4096, []byte{2}) {
		t.Fatal("emulated store failed")
	}
	words, err := vm.DirtyLog(base)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(1<<2 | 1<<3 | 1<<9); len(words) != 1 || words[0] != want {
		t.Fatalf("dirty log %#x, want %#x (pages 2, 3 and 9; not page 1, written before tracking)", words, want)
	}
	if words, err = vm.DirtyLog(base); err != nil || words[0] != 0 {
		t.Errorf("second read: %#x, %v; want the pages reported once", words, err)
	}
	if err := vm.DisableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	c.WritePhys(base+5*4096, []byte{3})
	if err := vm.EnableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if words, err = vm.DirtyLog(base); err != nil || words[0] != 0 {
		t.Errorf("a store while tracking was off shows up later: %#x, %v", words, err)
	}
}
