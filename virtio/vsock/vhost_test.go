package vsock

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"govmm/virtio"
	"govmm/virtio/vhost"
	"govmm/virtio/vhost/abi"
)

// vhostFeatures is what Linux 6.1's vhost-vsock offers: VHOST_FEATURES
// (NOTIFY_ON_EMPTY, ANY_LAYOUT, INDIRECT_DESC, EVENT_IDX, LOG_ALL,
// VERSION_1), ACCESS_PLATFORM and SEQPACKET.
const vhostFeatures = 1<<24 | 1<<27 | 1<<28 | 1<<29 | 1<<26 | 1<<32 | 1<<33 | 1<<1

func newFakeVhost(t *testing.T, ram []byte) (*Vhost, *vhost.Fake) {
	t.Helper()
	f := &vhost.Fake{Offer: vhostFeatures}
	be, err := vhost.New("fake-vhost-vsock", f)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newVhost(Config{CID: 9, Vhost: true}, be, []vhost.Region{{GPA: 0, Host: ram}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, f
}

// TestVhostRequests checks what the device asks of vhost-vsock, in
// order: ownership, memory and CID at set-up; features, both rings and
// running at start; stopped and read back at stop.
func TestVhostRequests(t *testing.T) {
	ram := make([]byte, 1<<20)
	d, f := newFakeVhost(t, ram)
	want := []string{"VHOST_SET_OWNER", "VHOST_GET_FEATURES",
		fmt.Sprintf("VHOST_SET_MEM_TABLE 0x0+0x100000@%#x", abi.UserAddr(ram)), "VHOST_VSOCK_SET_GUEST_CID 0x9"}
	if got := f.Log(); !slices.Equal(got, want) {
		t.Errorf("set-up asked\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := d.Features(); got != 1<<1 {
		t.Errorf("device features %#x, want SEQPACKET alone", got)
	}
	if d.Describe() != "virtio-vsock cid=9 backend=vhost" {
		t.Errorf("Describe = %q", d.Describe())
	}
	feats := uint64(virtio.FVersion1 | virtio.FEventIdx)
	qs := []virtio.OffloadQueue{
		{Index: 0, Config: virtio.QueueConfig{Size: 128, Desc: 0x10000, Avail: 0x10800, Used: 0x11000}, Base: 3, Kick: 20, Call: 21},
		{Index: 1, Config: virtio.QueueConfig{Size: 128, Desc: 0x20000, Avail: 0x20800, Used: 0x21000}, Base: 4, Kick: 22, Call: 23},
	}
	if err := d.StartOffload(feats, qs); err != nil {
		t.Fatal(err)
	}
	want = []string{"VHOST_SET_FEATURES 0x120000000"}
	for _, q := range qs {
		c := q.Config
		want = append(want, fmt.Sprintf("VHOST_SET_VRING_NUM %d %d", q.Index, c.Size),
			fmt.Sprintf("VHOST_SET_VRING_ADDR %d %#x %#x %#x", q.Index, abi.UserAddr(ram[c.Desc:]), abi.UserAddr(ram[c.Avail:]), abi.UserAddr(ram[c.Used:])),
			fmt.Sprintf("VHOST_SET_VRING_BASE %d %d", q.Index, q.Base),
			fmt.Sprintf("VHOST_SET_VRING_KICK %d %d", q.Index, q.Kick),
			fmt.Sprintf("VHOST_SET_VRING_CALL %d %d", q.Index, q.Call))
	}
	want = append(want, "VHOST_VSOCK_SET_RUNNING 1")
	if got := f.Log(); !slices.Equal(got, want) {
		t.Errorf("start asked\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	f.Bases = map[uint32]uint32{0: 10, 1: 11}
	bases, err := d.StopOffload()
	if err != nil || bases[0] != 10 || bases[1] != 11 || len(bases) != 2 {
		t.Errorf("StopOffload = %v, %v", bases, err)
	}
	want = []string{"VHOST_VSOCK_SET_RUNNING 0", "VHOST_GET_VRING_BASE 0", "VHOST_GET_VRING_BASE 1"}
	if got := f.Log(); !slices.Equal(got, want) {
		t.Errorf("stop asked %q, want %q", got, want)
	}
	if !d.Offloaded(0) || !d.Offloaded(1) || d.Offloaded(2) {
		t.Error("the kernel must serve queues 0 and 1, the VMM queue 2")
	}
	if err := d.RefuseLiveMigration(); err == nil || !strings.Contains(err.Error(), "socket=") {
		t.Errorf("live migration refusal %v does not say what works", err)
	}
}

// TestVhostTransportReset: after a restore the driver hears
// TRANSPORT_RESET on the first event buffer, and only once.
func TestVhostTransportReset(t *testing.T) {
	ram := make([]byte, 1<<20)
	d, _ := newFakeVhost(t, ram)
	if err := d.Activate(virtio.FVersion1); err != nil {
		t.Fatal(err)
	}
	var got []uint32
	post := func(at int) {
		b := ram[at : at+4]
		copy(b, []byte{0xff, 0xff, 0xff, 0xff})
		c := &virtio.Chain{Writable: []virtio.Buffer{{GPA: uint64(at), Bytes: b}}}
		if err := d.Handle(evQ, c, func(n uint32) { got = append(got, n) }); err != nil {
			t.Fatal(err)
		}
	}
	post(0x100)
	if len(got) != 0 {
		t.Fatal("an event before any restore")
	}
	d.Restored()
	if len(got) != 1 || got[0] != 4 || le.Uint32(ram[0x100:]) != eventTransportReset {
		t.Fatalf("after Restored: completions %v, event %#x", got, le.Uint32(ram[0x100:]))
	}
	post(0x200)
	if len(got) != 1 {
		t.Error("a second event without a second restore")
	}
	if n := d.Unkeep(evQ); n != 1 {
		t.Errorf("Unkeep gave back %d event buffers, want 1", n)
	}
	// A chain on a kernel queue is the driver's or the transport's bug.
	if err := d.Handle(rxQ, &virtio.Chain{}, func(uint32) {}); err == nil {
		t.Error("the device served a receive chain the kernel owns")
	}
	// Restored before a buffer: sent when one comes.
	d.Restored()
	post(0x300)
	if len(got) != 2 {
		t.Error("a reset asked before the event buffer came was not sent with it")
	}
}
