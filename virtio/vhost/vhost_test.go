package vhost

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"govmm/virtio/vhost/abi"
)

// TestBackend checks what the core asks of the kernel: ownership and
// features first, the memory table as the VMM's mappings, a ring's
// addresses translated through it, and refusals of what cannot work.
func TestBackend(t *testing.T) {
	f := &Fake{Offer: 1<<32 | 1<<29}
	b, err := New("fake", f)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Log(); !slices.Equal(got, []string{"VHOST_SET_OWNER", "VHOST_GET_FEATURES"}) {
		t.Errorf("opening asked %q", got)
	}
	low, high := make([]byte, 1<<20), make([]byte, 1<<20)
	if err := b.SetMemTable([]Region{{GPA: 0, Host: low}, {GPA: 1 << 32, Host: high}}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("VHOST_SET_MEM_TABLE 0x0+0x100000@%#x 0x100000000+0x100000@%#x", abi.UserAddr(low), abi.UserAddr(high))
	if got := f.Log(); !slices.Equal(got, []string{want}) {
		t.Errorf("memory table %q, want %q", got, want)
	}
	if err := b.SetFeatures(1 << 33); err == nil {
		t.Error("a feature the kernel does not offer was acked")
	}
	if err := b.SetFeatures(1 << 32); err != nil {
		t.Fatal(err)
	}
	if err := b.SetVring(1, Vring{Size: 256, Desc: 1<<32 + 0x1000, Avail: 1<<32 + 0x2000, Used: 1<<32 + 0x3000, Base: 7}); err != nil {
		t.Fatal(err)
	}
	got := f.Log()
	wantRing := []string{
		"VHOST_SET_FEATURES 0x100000000",
		"VHOST_SET_VRING_NUM 1 256",
		fmt.Sprintf("VHOST_SET_VRING_ADDR 1 %#x %#x %#x", abi.UserAddr(high[0x1000:]), abi.UserAddr(high[0x2000:]), abi.UserAddr(high[0x3000:])),
		"VHOST_SET_VRING_BASE 1 7",
	}
	if !slices.Equal(got, wantRing) {
		t.Errorf("ring set-up asked\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRing, "\n"))
	}
	// A used ring that runs past its region is refused before any
	// request.
	if err := b.SetVring(0, Vring{Size: 256, Desc: 0x1000, Avail: 0x2000, Used: 1<<20 - 16}); err == nil || !strings.Contains(err.Error(), "used ring") {
		t.Errorf("a ring past RAM: %v", err)
	}
	if got := f.Log(); len(got) != 0 {
		t.Errorf("a refused ring still asked %q", got)
	}
	if err := b.SetKick(0, 5); err != nil {
		t.Fatal(err)
	}
	if err := b.SetCall(0, 6); err != nil {
		t.Fatal(err)
	}
	f.Bases = map[uint32]uint32{0: 42}
	if n, err := b.VringBase(0); err != nil || n != 42 {
		t.Errorf("VringBase = %d, %v", n, err)
	}
	if got := f.Log(); !slices.Equal(got, []string{"VHOST_SET_VRING_KICK 0 5", "VHOST_SET_VRING_CALL 0 6", "VHOST_GET_VRING_BASE 0"}) {
		t.Errorf("kick, call, base asked %q", got)
	}
	// A failing request names itself.
	f.Fail = abi.SetVringCall
	if err := b.SetCall(1, 9); err == nil || !strings.Contains(err.Error(), "VHOST_SET_VRING_CALL") {
		t.Errorf("failed SetCall: %v", err)
	}
}

// TestOpenMissing names the module to load when the device is missing.
func TestOpenMissing(t *testing.T) {
	_, err := Open("/dev/vhost-vsock-does-not-exist")
	if err == nil {
		t.Fatal("opened a missing device")
	}
}

// TestDirtyLog: the log covers RAM from GPA 0 to its highest byte, and
// Collect hands runs of marked pages over once, in order.
func TestDirtyLog(t *testing.T) {
	ram := []Region{{GPA: 0, Host: make([]byte, 1<<20)}, {GPA: 1 << 32, Host: make([]byte, 1<<20)}}
	l, err := NewDirtyLog(ram)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if want := uint64(1<<32+1<<20) / 4096; l.pages != want {
		t.Errorf("the log covers %d pages, want %d", l.pages, want)
	}
	for _, gpa := range []uint64{0x3000, 0x4000, 0x5fff, 0x3f000, 0x40000, 1<<32 + 0x2000} {
		l.Mark(gpa)
	}
	var got []string
	l.Collect(func(gpa, n uint64) { got = append(got, fmt.Sprintf("%#x+%#x", gpa, n)) })
	want := []string{"0x3000+0x3000", "0x3f000+0x2000", "0x100002000+0x1000"}
	if !slices.Equal(got, want) {
		t.Errorf("collected %q, want %q", got, want)
	}
	got = nil
	l.Collect(func(gpa, n uint64) { got = append(got, fmt.Sprintf("%#x+%#x", gpa, n)) })
	if len(got) != 0 {
		t.Errorf("a second collection found %q", got)
	}
}
