package net

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/virtio"
	"govmm/virtio/vhost"
	"govmm/virtio/vhost/abi"
	"govmm/virtio/virtiotest"
)

// vhostNetFeatures is what Linux 6.1's vhost-net offers: VHOST_FEATURES
// (NOTIFY_ON_EMPTY, ANY_LAYOUT = VHOST_NET_F_VIRTIO_NET_HDR,
// INDIRECT_DESC, EVENT_IDX, LOG_ALL, VERSION_1), MRG_RXBUF and
// ACCESS_PLATFORM; no RING_PACKED.
const vhostNetFeatures = 1<<24 | 1<<27 | 1<<28 | 1<<29 | 1<<26 | 1<<32 | 1<<15 | 1<<33

// vhostRig is an n-pair vhost-net device on a fake TAP and fake vhost
// files behind the transport and the test driver.
type vhostRig struct {
	dev   *Vhost
	fakes []*vhost.Fake
	ft    *fakeTap
	mem   *virtiotest.Mem
	tr    *virtio.PCI
	vm    *virtiotest.VM
}

func newVhostDevice(t *testing.T, n int, offer uint64, c Config) (*Vhost, []*vhost.Fake, *fakeTap, *virtiotest.Mem, error) {
	t.Helper()
	ft := newFakeTap(t, n)
	mem := virtiotest.RAM(t, 16<<20)
	var fakes []*vhost.Fake
	var bes []*vhost.Backend
	for range n {
		f := &vhost.Fake{Offer: offer}
		b, err := vhost.New("fake-vhost-net", f)
		if err != nil {
			t.Fatal(err)
		}
		fakes, bes = append(fakes, f), append(bes, b)
	}
	c.Tap, c.Queues, c.Vhost = "fake0", n, true
	d, err := newVhost(c, testMAC, ft, bes, []vhost.Region{{GPA: 0, Host: mem.B}}, quiet)
	return d, fakes, ft, mem, err
}

func newVhostRig(t *testing.T, n int, offer uint64) *vhostRig {
	t.Helper()
	d, fakes, ft, mem, err := newVhostDevice(t, n, offer, Config{})
	if err != nil {
		t.Fatal(err)
	}
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(d, virtio.PCIConfig{Mem: mem, Router: tb, Log: quiet, Class: virtio.PCIClass{Class: 2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); d.Close(); tb.Close() })
	return &vhostRig{dev: d, fakes: fakes, ft: ft, mem: mem, tr: tr, vm: vm}
}

// TestVhostSetup: each pair's file is owned, asked its features and
// given guest RAM; the device offers the TAP's offloads, the MAC and
// the link as before, MRG_RXBUF only where the kernel fills merged
// buffers, and the same description as vhost=off (a snapshot restores
// on either).
func TestVhostSetup(t *testing.T) {
	d, fakes, _, mem, err := newVhostDevice(t, 2, vhostNetFeatures, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i, f := range fakes {
		want := []string{"VHOST_SET_OWNER", "VHOST_GET_FEATURES", fmt.Sprintf("VHOST_SET_MEM_TABLE 0x0+0x1000000@%#x", abi.UserAddr(mem.B))}
		if got := f.Log(); !slices.Equal(got, want) {
			t.Errorf("pair %d's file: set-up asked %q, want %q", i, got, want)
		}
	}
	if got, want := d.Features(), uint64(offered|offeredMQ); got != want {
		t.Errorf("features %#x, want %#x (the userspace device's)", got, want)
	}
	if got := d.Describe(); got != "virtio-net tap=fake0 mac=52:54:00:12:34:56 queues=2" {
		t.Errorf("Describe = %q", got)
	}
	if !d.Offloaded(0) || !d.Offloaded(3) || d.Offloaded(4) {
		t.Error("want queues 0..3 the kernel's and the control queue 4 the VMM's")
	}
	// A kernel without merged receive buffers: the device does not
	// offer them.
	d2, _, _, _, err := newVhostDevice(t, 1, vhostNetFeatures&^fMrgRxbuf, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got := d2.Features(); got != offered&^fMrgRxbuf {
		t.Errorf("features on a kernel without MRG_RXBUF %#x, want %#x", got, uint64(offered&^fMrgRxbuf))
	}
}

// TestVhostRefusals: a kernel short of the ring features the transport
// offers, packed=on (whether or not the kernel offers packed rings) and
// a host without /dev/vhost-net are refused with what to do, and the
// files are closed.
func TestVhostRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		offer uint64
		c     Config
		want  string
	}{
		{"no EVENT_IDX", vhostNetFeatures &^ virtio.FEventIdx, Config{}, "EVENT_IDX"},
		{"packed=on, no RING_PACKED", vhostNetFeatures, Config{Packed: true}, "does not offer VIRTIO_F_RING_PACKED"},
		{"packed=on, RING_PACKED", vhostNetFeatures | fRingPacked, Config{Packed: true}, "only split rings"},
	} {
		_, fakes, _, _, err := newVhostDevice(t, 1, tc.offer, tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
		if l := fakes[0].Log(); l[len(l)-1] != "close" {
			t.Errorf("%s: the vhost file was not closed: %q", tc.name, l)
		}
	}
	_, err := OpenVhost(Config{Tap: "t0", Vhost: true}, "/dev/vhost-net-missing", nil, quiet)
	if err == nil || !strings.Contains(err.Error(), "vhost=on") || !strings.Contains(err.Error(), "/dev/vhost-net-missing") {
		t.Errorf("a missing vhost-net: %v", err)
	}
	if c, err := ParseFlag("tap=t0,vhost=on"); err != nil || !c.Vhost {
		t.Errorf("vhost=on: %+v, %v", c, err)
	}
	if c, err := ParseFlag("tap=t0,vhost=off"); err != nil || c.Vhost {
		t.Errorf("vhost=off: %+v, %v", c, err)
	}
	if _, err := ParseFlag("tap=t0,vhost=yes"); err == nil {
		t.Error("vhost=yes taken")
	}
}

// TestVhostStartStop drives a 2-pair device through the transport: at
// DRIVER_OK each pair's file gets the negotiated features the kernel
// knows, its two rings with their kicks and calls, and the pair's TAP
// queue as both rings' backend; nothing in the VMM reads the TAP; a
// pause takes the backends away and reads back where each ring stopped,
// which the transport keeps; resume starts them from there.
func TestVhostStartStop(t *testing.T) {
	r := newVhostRig(t, 2, vhostNetFeatures)
	for _, f := range r.fakes {
		f.Log()
	}
	d, err := virtiotest.New(r.tr, r.mem, r.vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(offered|offeredMQ|virtio.FEventIdx|virtio.FIndirectDesc, 0); err != nil {
		t.Fatal(err)
	}
	fds, err := r.dev.TapFDs()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel is acked what it knows of the negotiated features:
	// VERSION_1, EVENT_IDX, INDIRECT_DESC and MRG_RXBUF.
	kf := uint64(virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc | fMrgRxbuf)
	for p, f := range r.fakes {
		got := f.Log()
		want := []string{fmt.Sprintf("VHOST_SET_FEATURES %#x", kf)}
		for ring := range 2 {
			q := 2*p + ring
			desc, avail, used := d.Rings(q)
			want = append(want, fmt.Sprintf("VHOST_SET_VRING_NUM %d %d", ring, QueueSize),
				fmt.Sprintf("VHOST_SET_VRING_ADDR %d %#x %#x %#x", ring, abi.UserAddr(r.mem.B[desc:]), abi.UserAddr(r.mem.B[avail:]), abi.UserAddr(r.mem.B[used:])),
				fmt.Sprintf("VHOST_SET_VRING_BASE %d 0", ring))
			// Kick and call: the doorbell's and the vector's eventfds.
			if len(got) < len(want)+2 {
				t.Fatalf("pair %d asked %q", p, got)
			}
			want = append(want, got[len(want)], got[len(want)+1])
			if !strings.HasPrefix(got[len(want)-2], fmt.Sprintf("VHOST_SET_VRING_KICK %d ", ring)) ||
				!strings.HasPrefix(got[len(want)-1], fmt.Sprintf("VHOST_SET_VRING_CALL %d ", ring)) {
				t.Errorf("pair %d ring %d: %q, %q, want its kick and call", p, ring, got[len(want)-2], got[len(want)-1])
			}
		}
		want = append(want, fmt.Sprintf("VHOST_NET_SET_BACKEND 0 %d", fds[p]), fmt.Sprintf("VHOST_NET_SET_BACKEND 1 %d", fds[p]))
		if !slices.Equal(got, want) {
			t.Errorf("pair %d's file at DRIVER_OK asked\n%s\nwant\n%s", p, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	// A packet on the TAP stays there for the kernel: the VMM has no
	// reader.
	if _, err := r.ft.peers[0].Write(make([]byte, 60)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n, _, err := unix.Recvfrom(fds[0], make([]byte, 100), unix.MSG_DONTWAIT|unix.MSG_PEEK); n != 60 || err != nil {
		t.Errorf("the TAP queue's packet: peek %d, %v; want it unread (60 bytes)", n, err)
	}

	// Pause: backends away, then each ring's position.
	for p, f := range r.fakes {
		f.Bases = map[uint32]uint32{0: uint32(10 + 2*p), 1: uint32(11 + 2*p)}
	}
	r.tr.Pause()
	for p, f := range r.fakes {
		want := []string{"VHOST_NET_SET_BACKEND 0 -1", "VHOST_NET_SET_BACKEND 1 -1", "VHOST_GET_VRING_BASE 0", "VHOST_GET_VRING_BASE 1"}
		if got := f.Log(); !slices.Equal(got, want) {
			t.Errorf("pair %d's file at pause asked %q, want %q", p, got, want)
		}
	}
	st := r.tr.Save()
	for q := range 4 {
		if got := st.Queues[q].LastAvail; got != uint16(10+q) {
			t.Errorf("queue %d saved at %d, want %d (the kernel's)", q, got, 10+q)
		}
	}
	r.tr.Resume()
	for p, f := range r.fakes {
		got := f.Log()
		if !slices.Contains(got, fmt.Sprintf("VHOST_SET_VRING_BASE 0 %d", 10+2*p)) || !slices.Contains(got, fmt.Sprintf("VHOST_SET_VRING_BASE 1 %d", 11+2*p)) ||
			got[len(got)-1] != fmt.Sprintf("VHOST_NET_SET_BACKEND 1 %d", fds[p]) {
			t.Errorf("pair %d's file at resume asked %q: want its rings from where they stopped, then the backend", p, got)
		}
	}
}

// TestVhostDirtyLog: live migration's dirty log reaches the kernel while
// it runs (the log base, VHOST_F_LOG_ALL for the buffers, each used
// ring logged at its GPA), what the kernel logs is handed to the VMM's
// log, a restart while logging keeps logging, and stopping turns it off
// in the reverse order.
func TestVhostDirtyLog(t *testing.T) {
	r := newVhostRig(t, 1, vhostNetFeatures)
	d, err := virtiotest.New(r.tr, r.mem, r.vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(offered|virtio.FEventIdx, 0); err != nil {
		t.Fatal(err)
	}
	f := r.fakes[0]
	f.Log()
	var marked []string
	if err := r.tr.StartDirtyLog(func(gpa, n uint64) { marked = append(marked, fmt.Sprintf("%#x+%#x", gpa, n)) }); err != nil {
		t.Fatal(err)
	}
	kf := uint64(virtio.FVersion1 | virtio.FEventIdx | fMrgRxbuf)
	ringAddr := func(ring int, log bool) string {
		desc, avail, used := d.Rings(ring)
		s := fmt.Sprintf("VHOST_SET_VRING_ADDR %d %#x %#x %#x", ring, abi.UserAddr(r.mem.B[desc:]), abi.UserAddr(r.mem.B[avail:]), abi.UserAddr(r.mem.B[used:]))
		if log {
			s += fmt.Sprintf(" log %#x", used)
		}
		return s
	}
	got := f.Log()
	want := []string{"VHOST_SET_LOG_BASE", fmt.Sprintf("VHOST_SET_FEATURES %#x", kf|abi.FLogAll), ringAddr(0, true), ringAddr(1, true)}
	if len(got) != len(want) || !strings.HasPrefix(got[0], want[0]+" 0x") || !slices.Equal(got[1:], want[1:]) {
		t.Errorf("starting the dirty log asked\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if want := fmt.Sprintf("VHOST_SET_LOG_BASE %#x", r.dev.dlog.Addr()); got[0] != want {
		t.Errorf("log base %q, want %q", got[0], want)
	}
	// What the kernel logs reaches the VMM's log at each sync.
	r.dev.dlog.Mark(0x5000)
	r.dev.dlog.Mark(0x6000)
	r.dev.dlog.Mark(0x100000)
	r.tr.SyncDirtyLog()
	if want := []string{"0x5000+0x2000", "0x100000+0x1000"}; !slices.Equal(marked, want) {
		t.Errorf("synced %q, want %q", marked, want)
	}
	// Pause and resume while logging: the rings restart logged.
	r.tr.Pause()
	r.tr.Resume()
	got = f.Log()
	if !slices.Contains(got, fmt.Sprintf("VHOST_SET_FEATURES %#x", kf|abi.FLogAll)) || !slices.Contains(got, ringAddr(0, true)) || !slices.Contains(got, ringAddr(1, true)) ||
		!strings.HasPrefix(got[4], "VHOST_SET_LOG_BASE ") {
		t.Errorf("a restart while logging asked\n%s", strings.Join(got, "\n"))
	}
	if err := r.tr.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
	want = []string{ringAddr(0, false), ringAddr(1, false), fmt.Sprintf("VHOST_SET_FEATURES %#x", kf)}
	if got := f.Log(); !slices.Equal(got, want) {
		t.Errorf("stopping the dirty log asked\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A log started while the device is stopped applies at its start.
	r.tr.Pause()
	if err := r.tr.StartDirtyLog(func(gpa, n uint64) {}); err != nil {
		t.Fatal(err)
	}
	if got := f.Log(); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "VHOST_SET_LOG_BASE") }) {
		t.Errorf("a stopped device's backend was given the log at once: %q", got)
	}
	r.tr.Resume()
	got = f.Log()
	if !strings.HasPrefix(got[0], "VHOST_SET_LOG_BASE ") || got[1] != fmt.Sprintf("VHOST_SET_FEATURES %#x", kf|abi.FLogAll) || !slices.Contains(got, ringAddr(1, true)) {
		t.Errorf("starting with the log on asked\n%s", strings.Join(got, "\n"))
	}
	if err := r.tr.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
}
