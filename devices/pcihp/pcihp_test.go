package pcihp

import (
	"encoding/binary"
	"slices"
	"testing"
)

func read32(c *Controller, off uint64) uint32 {
	var b [4]byte
	c.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func TestPlugRaisesAndReadClears(t *testing.T) {
	raised := 0
	c := New(func() { raised++ }, nil)
	if err := c.Plug(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Plug(5); err != nil {
		t.Fatal(err)
	}
	if raised != 2 {
		t.Fatalf("GPE raised %d times, want 2", raised)
	}
	if got := read32(c, OffUp); got != 1<<3|1<<5 {
		t.Fatalf("PCIU = %#x, want slots 3 and 5", got)
	}
	if got := read32(c, OffUp); got != 0 {
		t.Fatalf("PCIU after a read = %#x, want 0", got)
	}
	if got := read32(c, OffDown); got != 0 {
		t.Fatalf("PCID = %#x, want 0", got)
	}
	for _, bad := range []int{0, -1, 32} {
		if c.Plug(bad) == nil {
			t.Errorf("Plug(%d) succeeded", bad)
		}
	}
}

func TestEject(t *testing.T) {
	var got []int
	c := New(func() {}, func(slot int) { got = append(got, slot) })
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 1<<0|1<<4|1<<31)
	c.Write(OffEject, b[:])
	if want := []int{4, 31}; !slices.Equal(got, want) {
		t.Fatalf("ejected %v, want %v (never slot 0)", got, want)
	}
	got = nil
	c.Write(OffUp, b[:])              // PCIU is read-only
	c.Write(OffEject+1, []byte{0x02}) // slot 9 as a byte write
	if want := []int{9}; !slices.Equal(got, want) {
		t.Fatalf("a byte write at B0EJ+1 ejected %v, want %v", got, want)
	}
}

// TestSaveRestore: a plug the guest has not read yet survives a
// snapshot: the restored controller shows it in PCIU once, raises no GPE
// of its own, and still ejects.
func TestSaveRestore(t *testing.T) {
	c := New(func() {}, nil)
	if err := c.Plug(4); err != nil {
		t.Fatal(err)
	}
	s := c.Save()
	if s.Up != 1<<4 {
		t.Fatalf("saved PCIU %#x, want slot 4", s.Up)
	}
	raised := 0
	var ejected []int
	r := New(func() { raised++ }, func(slot int) { ejected = append(ejected, slot) })
	if err := r.Restore(s); err != nil {
		t.Fatal(err)
	}
	if raised != 0 {
		t.Errorf("Restore raised the GPE %d times", raised)
	}
	if got := read32(r, OffUp); got != 1<<4 {
		t.Errorf("restored PCIU = %#x, want slot 4", got)
	}
	if got := read32(r, OffUp); got != 0 {
		t.Errorf("restored PCIU after a read = %#x, want 0", got)
	}
	r.Write(OffEject, []byte{1 << 4, 0, 0, 0})
	if !slices.Equal(ejected, []int{4}) {
		t.Errorf("the restored controller ejected %v, want [4]", ejected)
	}
	if err := r.Restore(State{Up: 1}); err == nil {
		t.Error("a saved PCIU with slot 0 plugged was accepted")
	}
}
