package net

import (
	"bytes"
	"fmt"
	stdnet "net"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/confine"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// threadHooks records the confinement hooks' calls: each says "not yet"
// (false) at its first call and "done" (true) at its second, as govmm's
// hook does across the VMM's confinement.
type threadHooks struct {
	mu    sync.Mutex
	calls map[string]int
	tids  map[string]int // the thread each hook took, at its true
}

func (h *threadHooks) hook(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls[name]++
	if h.calls[name] == 1 {
		return false
	}
	h.tids[name] = unix.Gettid()
	return true
}

func (h *threadHooks) snapshot() (map[string]int, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	calls, tids := map[string]int{}, map[string]int{}
	for k, v := range h.calls {
		calls[k] = v
	}
	for k, v := range h.tids {
		tids[k] = v
	}
	return calls, tids
}

// TestThreadHooks: with a 2-pair device, every goroutine of the data
// path (each queue's server in the transport, each TAP queue's reader)
// asks its hook at its work until the hook takes, then never again, each
// on a thread of its own; the packets go through all the same. TapFDs
// names the TAP's queue descriptors.
func TestThreadHooks(t *testing.T) {
	const n = 2
	h := &threadHooks{calls: map[string]int{}, tids: map[string]int{}}
	ft := newFakeTap(t, n)
	dev := newDevice(Config{Tap: "fake0", Queues: n}, testMAC, ft, quiet, true)
	fds, err := dev.TapFDs()
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range ft.fs {
		rc, _ := f.SyscallConn()
		rc.Control(func(fd uintptr) {
			if i >= len(fds) || fds[i] != int(fd) {
				t.Errorf("TapFDs %v: queue %d is descriptor %d", fds, i, fd)
			}
		})
	}
	dev.SetReaderThread(func(p int) bool { return h.hook(fmt.Sprintf("rx%d", p)) })
	mem := virtiotest.RAM(t, 16<<20)
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb, Log: quiet, Class: virtio.PCIClass{Class: 2},
		QueueThread: func(q int) bool { return h.hook(fmt.Sprintf("q%d", q)) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); dev.Close(); tb.Close() })
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(mqFeatures, 0); err != nil {
		t.Fatal(err)
	}
	r := &mqRig{t: t, d: d, tr: tr, dev: dev, ft: ft, n: n, bufAt: virtiotest.BufBase}
	frame := func(s string) []byte {
		return ipv4UDP(testMAC, stdnet.HardwareAddr{2, 0, 0, 0, 0, 1}, stdnet.IPv4(10, 0, 0, 1), stdnet.IPv4(10, 0, 0, 2), 1, 2, []byte(s))
	}
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(2)); ack != ackOK {
		t.Fatalf("VQ_PAIRS_SET 2: ack %d", ack)
	}
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(2)); ack != ackOK {
		t.Fatalf("VQ_PAIRS_SET 2 again: ack %d", ack)
	}
	gpa := []map[uint16]uint64{{}, {}}
	// Three rounds: the first finds every hook saying "not yet", the
	// second takes, the third asks nothing.
	for round := range 3 {
		for p := range n {
			hd, g := r.postRx(p, 2048)
			gpa[p][hd] = g
			msg := fmt.Sprintf("round %d to pair %d", round, p)
			r.ft.send(t, p, frame(msg))
			if got := r.received(p, gpa[p]); !bytes.Equal(got, frame(msg)) {
				t.Fatalf("pair %d received %q", p, got)
			}
			msg = fmt.Sprintf("round %d from pair %d", round, p)
			r.transmit(p, frame(msg))
			if got := r.ft.recv(t, p); !bytes.Equal(got[vnetHdrLen:], frame(msg)) {
				t.Fatalf("queue %d of the TAP got %q", p, got)
			}
		}
	}
	calls, tids := h.snapshot()
	want := []string{"q0", "q1", "q2", "q3", "q4", "rx0", "rx1"}
	var got []string
	for k := range calls {
		got = append(got, k)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("hooks asked for %v, want %v", got, want)
	}
	seen := map[int]string{}
	for _, name := range want {
		if calls[name] != 2 {
			t.Errorf("%s's hook was asked %d times, want 2 (not yet, then taken)", name, calls[name])
		}
		if other, dup := seen[tids[name]]; dup {
			t.Errorf("%s and %s took the same thread %d", name, other, tids[name])
		}
		seen[tids[name]] = name
	}

	// The TAP's requests on those threads, now each locked to its
	// goroutine, are the ones the virtio-net queue threads' filter
	// allows (package confine): the control queue's thread detaches and
	// attaches pair 1's TAP queue.
	ft.takeIoctls()
	for _, pairs := range []int{1, 2} {
		if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(uint16(pairs))); ack != ackOK {
			t.Fatalf("VQ_PAIRS_SET %d: ack %d", pairs, ack)
		}
	}
	allowed, ok := confine.DeviceIoctls("virtio-net")
	if !ok {
		t.Fatal("confine has no virtio-net role")
	}
	onCtrl := 0
	for _, c := range ft.takeIoctls() {
		name, hooked := seen[c.tid]
		if !hooked {
			continue
		}
		if name == "q4" {
			onCtrl++
		}
		if !slices.Contains(allowed, c.req) {
			t.Errorf("thread %s made %s, which the virtio-net queue threads' filter refuses (confine allows %v)", name, c.req, allowed)
		}
	}
	if onCtrl != 2 {
		t.Errorf("the control queue's thread made %d TAP requests, want 2 (a detach and an attach)", onCtrl)
	}
}
