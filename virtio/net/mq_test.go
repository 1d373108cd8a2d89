package net

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

const wait = 5 * time.Second

var quiet = slog.New(slog.DiscardHandler)

// fakeTap is a TAP made of SOCK_SEQPACKET socket pairs, one per queue:
// the device gets one end (a packet per read and per writev, as a TAP
// queue), the test the other. It records the offloads and which queues
// are attached.
type fakeTap struct {
	fs    []*os.File
	peers []*os.File

	mu       sync.Mutex
	offload  []int
	attached []bool
	// ioctls are the requests the TAP would have been asked, each with
	// the thread that asked.
	ioctls []tapIoctl
	// failAttach makes setAttached fail; failQueue, when not 0, makes
	// it fail for that queue alone.
	failAttach bool
	failQueue  int
}

func newFakeTap(t testing.TB, queues int) *fakeTap {
	t.Helper()
	ft := &fakeTap{attached: make([]bool, queues)}
	ft.attached[0] = true
	for i := range queues {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ft.fs = append(ft.fs, os.NewFile(uintptr(fds[0]), fmt.Sprintf("fake-tap-%d", i)))
		ft.peers = append(ft.peers, os.NewFile(uintptr(fds[1]), fmt.Sprintf("fake-tap-peer-%d", i)))
	}
	t.Cleanup(func() {
		for _, p := range ft.peers {
			p.Close()
		}
	})
	return ft
}

// tapIoctl is a request the TAP (tap.go) makes for a fakeTap call, and
// the thread that made the call.
type tapIoctl struct {
	req string
	tid int
}

// takeIoctls returns the requests recorded so far and forgets them.
func (f *fakeTap) takeIoctls() []tapIoctl {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.ioctls
	f.ioctls = nil
	return out
}

func (f *fakeTap) queues() []*os.File { return f.fs }

func (f *fakeTap) setOffload(flags int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offload = append(f.offload, flags)
	f.ioctls = append(f.ioctls, tapIoctl{"TUNSETOFFLOAD", unix.Gettid()})
	return nil
}

func (f *fakeTap) setAttached(i int, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ioctls = append(f.ioctls, tapIoctl{"TUNSETQUEUE", unix.Gettid()})
	if f.failAttach || i == f.failQueue {
		return errors.New("fake TUNSETQUEUE failure")
	}
	if i == 0 || f.attached[i] == on {
		return fmt.Errorf("queue %d set attached=%v twice (or queue 0)", i, on)
	}
	f.attached[i] = on
	return nil
}

func (f *fakeTap) close() error {
	for _, x := range f.fs {
		x.Close()
	}
	return nil
}

func (f *fakeTap) attachedNow() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]bool(nil), f.attached...)
}

// send writes a packet (virtio-net header and frame) into queue i as
// the host's side of the TAP.
func (f *fakeTap) send(t *testing.T, i int, frame []byte) {
	t.Helper()
	if _, err := f.peers[i].Write(append(make([]byte, vnetHdrLen), frame...)); err != nil {
		t.Fatal(err)
	}
}

// recv reads the next packet the device sent through queue i.
func (f *fakeTap) recv(t *testing.T, i int) []byte {
	t.Helper()
	f.peers[i].SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, maxFrame)
	n, err := f.peers[i].Read(b)
	if err != nil {
		t.Fatalf("queue %d: the device sent nothing: %v", i, err)
	}
	return b[:n]
}

type mqRig struct {
	t   *testing.T
	d   *virtiotest.Driver
	tr  *virtio.PCI
	dev *Device
	ft  *fakeTap
	n   int
	// bufAt is the next free guest address for buffers.
	bufAt uint64
}

var testMAC = stdnet.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}

func newTransport(t *testing.T, dev *Device, mem *virtiotest.Mem) (*virtio.PCI, *virtiotest.VM) {
	t.Helper()
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb, Log: quiet, Class: virtio.PCIClass{Class: 2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); dev.Close(); tb.Close() })
	return tr, vm
}

// newMQRig is an n-pair device on a fake TAP behind the transport,
// initialized by the test driver with want (and VERSION_1).
func newMQRig(t *testing.T, n int, want uint64) *mqRig {
	t.Helper()
	ft := newFakeTap(t, n)
	dev := newDevice(Config{Tap: "fake0", Queues: n}, testMAC, ft, quiet, true)
	mem := virtiotest.RAM(t, 16<<20)
	tr, vm := newTransport(t, dev, mem)
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(want, 0); err != nil {
		t.Fatal(err)
	}
	return &mqRig{t: t, d: d, tr: tr, dev: dev, ft: ft, n: n, bufAt: virtiotest.BufBase}
}

func (r *mqRig) alloc(n int) uint64 {
	gpa := r.bufAt
	r.bufAt += uint64(n+0xfff) &^ 0xfff
	clear(r.d.Mem.B[gpa : gpa+uint64(n)])
	return gpa
}

// command sends a control command (header, data, one status byte, as
// Linux lays it out) and returns the ack.
func (r *mqRig) command(class, cmd uint8, data []byte) byte {
	r.t.Helper()
	q := 2 * r.n
	h := r.alloc(2)
	r.d.Mem.B[h], r.d.Mem.B[h+1] = class, cmd
	segs := []virtiotest.Seg{{GPA: h, Len: 2}}
	if len(data) > 0 {
		g := r.alloc(len(data))
		copy(r.d.Mem.B[g:], data)
		segs = append(segs, virtiotest.Seg{GPA: g, Len: uint32(len(data))})
	}
	st := r.alloc(1)
	r.d.Mem.B[st] = 0xee
	segs = append(segs, virtiotest.Seg{GPA: st, Len: 1, Write: true})
	r.d.Put(q, segs, 0)
	u, err := r.d.Wait(q, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	if u.Len != 1 {
		r.t.Errorf("control command used with length %d, want 1", u.Len)
	}
	return r.d.Mem.B[st]
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }

// macTables is MAC_TABLE_SET's data with nu unicast and nm multicast
// entries.
func macTables(nu, nm int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(nu))
	for i := range nu {
		b = append(b, 0x52, 0x54, 0, 0, 0, byte(i))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(nm))
	for i := range nm {
		b = append(b, 0x01, 0, 0x5e, 0, 0, byte(i))
	}
	return b
}

// postRx makes a receive buffer of n bytes available on pair p.
func (r *mqRig) postRx(p, n int) (uint16, uint64) {
	gpa := r.alloc(n)
	return r.d.Put(2*p, []virtiotest.Seg{{GPA: gpa, Len: uint32(n), Write: true}}, 0), gpa
}

// transmit sends frame (after a zero header) on pair p and waits for it
// to be used.
func (r *mqRig) transmit(p int, frame []byte) {
	r.t.Helper()
	h := r.alloc(vnetHdrLen)
	g := r.alloc(len(frame))
	copy(r.d.Mem.B[g:], frame)
	r.d.Put(2*p+1, []virtiotest.Seg{{GPA: h, Len: vnetHdrLen}, {GPA: g, Len: uint32(len(frame))}}, 0)
	if _, err := r.d.Wait(2*p+1, wait); err != nil {
		r.t.Fatal(err)
	}
}

// received waits for pair p's next used receive buffer and returns the
// frame in it.
func (r *mqRig) received(p int, gpaOf map[uint16]uint64) []byte {
	r.t.Helper()
	u, err := r.d.Wait(2*p, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	g := gpaOf[uint16(u.ID)]
	b := r.d.Mem.B[g : g+uint64(u.Len)]
	if nb := binary.LittleEndian.Uint16(b[10:]); nb != 1 {
		r.t.Errorf("num_buffers %d, want 1", nb)
	}
	return append([]byte(nil), b[vnetHdrLen:]...)
}

const mqFeatures = fMrgRxbuf | fMAC | fStatus | fCtrlVQ | fCtrlRx | fMQ

func TestParseFlagQueues(t *testing.T) {
	c, err := ParseFlag("tap=t0")
	if err != nil || c.Queues != 1 {
		t.Fatalf("default: %+v %v, want queues 1", c, err)
	}
	c, err = ParseFlag("tap=t0,queues=4,mac=52:54:00:00:00:07")
	if err != nil || c.Queues != 4 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"tap=t0,queues=0", "tap=t0,queues=17", "tap=t0,queues=two", "tap=t0,queues=", "tap=t0,queues=-1"} {
		if _, err := ParseFlag(bad); err == nil || !strings.Contains(err.Error(), "queues=") {
			t.Errorf("%q: %v, want an error naming queues=", bad, err)
		}
	}
}

// TestConfigSpace: a multiqueue device offers MQ, CTRL_VQ and CTRL_RX,
// has 2N+1 queues and says N in max_virtqueue_pairs; a single-pair
// device is as it was before multiqueue.
func TestConfigSpace(t *testing.T) {
	for _, n := range []int{1, 2, 4, MaxQueuePairs} {
		r := newMQRig(t, n, mqFeatures)
		wantQ, wantF := 2*n+1, uint64(mqFeatures)
		if n == 1 {
			wantQ, wantF = 2, fMrgRxbuf|fMAC|fStatus
		}
		if r.d.NumQueue != wantQ {
			t.Errorf("queues=%d: %d virtqueues, want %d", n, r.d.NumQueue, wantQ)
		}
		if got := r.d.Feats &^ virtio.FVersion1; got != wantF {
			t.Errorf("queues=%d: negotiated %#x, want %#x", n, got, wantF)
		}
		var c [cfgLen]byte
		r.d.DeviceConfig(0, c[:])
		if !bytes.Equal(c[:6], testMAC) || binary.LittleEndian.Uint16(c[6:]) != statusUp || binary.LittleEndian.Uint16(c[8:]) != uint16(n) {
			t.Errorf("queues=%d: config % x", n, c)
		}
		desc := r.tr.Describe()
		if hasQ := strings.Contains(desc, fmt.Sprintf(" queues=%d", n)); hasQ != (n > 1) {
			t.Errorf("queues=%d: description %q", n, desc)
		}
		if n > 1 && r.d.T.Function() != nil {
			// Queue sizes: pairs of QueueSize, then the control queue.
			for q := range wantQ {
				r.d.SetCommon(0x16, 2, uint64(q))
				want := uint64(QueueSize)
				if q == 2*n {
					want = CtrlQueueSize
				}
				if got := r.d.Common(0x18, 2); got != want {
					t.Errorf("queues=%d: queue %d size %d, want %d", n, q, got, want)
				}
			}
		}
	}
}

// TestControlCommands: the commands Linux sends are accepted, every
// other one is answered VIRTIO_NET_ERR, and only VQ_PAIRS_SET changes
// which TAP queues are attached.
func TestControlCommands(t *testing.T) {
	r := newMQRig(t, 4, mqFeatures)
	if got := r.ft.attachedNow(); !equalBools(got, []bool{true, false, false, false}) {
		t.Fatalf("attached before VQ_PAIRS_SET: %v, want pair 0 alone", got)
	}
	for _, c := range []struct {
		name       string
		class, cmd uint8
		data       []byte
		ack        byte
		attached   []bool
	}{
		{"pairs 3", ctrlMQ, ctrlMQPairsSet, le16(3), ackOK, []bool{true, true, true, false}},
		{"pairs 0", ctrlMQ, ctrlMQPairsSet, le16(0), ackErr, nil},
		{"pairs 5 (past max)", ctrlMQ, ctrlMQPairsSet, le16(5), ackErr, nil},
		{"pairs 0x8000", ctrlMQ, ctrlMQPairsSet, le16(0x8000), ackErr, nil},
		{"pairs, 1 byte", ctrlMQ, ctrlMQPairsSet, []byte{2}, ackErr, nil},
		{"pairs, 3 bytes", ctrlMQ, ctrlMQPairsSet, []byte{2, 0, 0}, ackErr, nil},
		{"RSS config", ctrlMQ, 1, make([]byte, 16), ackErr, nil},
		{"hash config", ctrlMQ, 2, make([]byte, 16), ackErr, nil},
		{"promisc on", ctrlRx, ctrlRxPromisc, []byte{1}, ackOK, nil},
		{"promisc off", ctrlRx, ctrlRxPromisc, []byte{0}, ackOK, nil},
		{"allmulti on", ctrlRx, ctrlRxAllMulti, []byte{1}, ackOK, nil},
		{"promisc 2", ctrlRx, ctrlRxPromisc, []byte{2}, ackErr, nil},
		{"promisc, no data", ctrlRx, ctrlRxPromisc, nil, ackErr, nil},
		{"alluni (CTRL_RX_EXTRA)", ctrlRx, 2, []byte{1}, ackErr, nil},
		{"MAC tables", ctrlMAC, ctrlMACTableSet, macTables(1, 3), ackOK, nil},
		{"MAC tables, empty", ctrlMAC, ctrlMACTableSet, macTables(0, 0), ackOK, nil},
		{"MAC tables, short", ctrlMAC, ctrlMACTableSet, macTables(2, 2)[:20], ackErr, nil},
		{"MAC tables, trailing bytes", ctrlMAC, ctrlMACTableSet, append(macTables(1, 1), 0), ackErr, nil},
		{"MAC tables, huge count", ctrlMAC, ctrlMACTableSet, append([]byte{0xff, 0xff, 0xff, 0xff}, make([]byte, 10)...), ackErr, nil},
		{"MAC address set", ctrlMAC, ctrlMACAddrSet, []byte(testMAC), ackErr, nil},
		{"VLAN add", 2, 0, le16(5), ackErr, nil},
		{"announce ack", 3, 0, nil, ackErr, nil},
		{"guest offloads", 5, 0, make([]byte, 8), ackErr, nil},
		{"class 200", 200, 7, []byte{1, 2, 3}, ackErr, nil},
		{"pairs 1", ctrlMQ, ctrlMQPairsSet, le16(1), ackOK, []bool{true, false, false, false}},
		{"pairs 4", ctrlMQ, ctrlMQPairsSet, le16(4), ackOK, []bool{true, true, true, true}},
		{"pairs 2", ctrlMQ, ctrlMQPairsSet, le16(2), ackOK, []bool{true, true, false, false}},
	} {
		if got := r.command(c.class, c.cmd, c.data); got != c.ack {
			t.Errorf("%s: ack %d, want %d", c.name, got, c.ack)
		}
		if c.attached != nil {
			if got := r.ft.attachedNow(); !equalBools(got, c.attached) {
				t.Errorf("%s: attached %v, want %v", c.name, got, c.attached)
			}
		}
	}
	r.dev.setMu.Lock()
	n := r.dev.npairs
	r.dev.setMu.Unlock()
	if n != 2 {
		t.Errorf("%d pairs enabled, want 2", n)
	}
	if r.d.Status()&virtio.StatusNeedsReset != 0 {
		t.Fatal("a well-framed command put the device into NEEDS_RESET")
	}

	// A TUNSETQUEUE failure is an error ack, and the pairs stay.
	r.ft.mu.Lock()
	r.ft.failAttach = true
	r.ft.mu.Unlock()
	if got := r.command(ctrlMQ, ctrlMQPairsSet, le16(4)); got != ackErr {
		t.Errorf("pairs 4 with TUNSETQUEUE failing: ack %d, want an error", got)
	}
	if got := r.ft.attachedNow(); !equalBools(got, []bool{true, true, false, false}) {
		t.Errorf("after a failed attach: %v", got)
	}
	if got := r.command(ctrlMQ, ctrlMQPairsSet, le16(1)); got != ackErr {
		t.Errorf("pairs 1 with TUNSETQUEUE failing: ack %d, want an error", got)
	}
	if got := r.ft.attachedNow(); !equalBools(got, []bool{true, true, false, false}) {
		t.Errorf("after a failed detach: %v", got)
	}
	r.dev.setMu.Lock()
	n = r.dev.npairs
	r.dev.setMu.Unlock()
	if n != 2 {
		t.Errorf("%d pairs enabled after failed changes, want the 2 the driver still has", n)
	}

	// A failure half way up takes back the queues attached before it.
	r.ft.mu.Lock()
	r.ft.failAttach, r.ft.failQueue = false, 3
	r.ft.mu.Unlock()
	if got := r.command(ctrlMQ, ctrlMQPairsSet, le16(1)); got != ackOK {
		t.Errorf("pairs 1: ack %d", got)
	}
	if got := r.command(ctrlMQ, ctrlMQPairsSet, le16(4)); got != ackErr {
		t.Errorf("pairs 4 with queue 3 failing: ack %d, want an error", got)
	}
	if got := r.ft.attachedNow(); !equalBools(got, []bool{true, false, false, false}) {
		t.Errorf("after attaching queue 3 failed: %v, want pair 0 alone as before", got)
	}
	r.dev.setMu.Lock()
	n = r.dev.npairs
	r.dev.setMu.Unlock()
	if n != 1 {
		t.Errorf("%d pairs enabled after a failed change from 1, want 1", n)
	}

	// Reset goes back to one pair.
	r.ft.mu.Lock()
	r.ft.failQueue = 0
	r.ft.mu.Unlock()
	if got := r.command(ctrlMQ, ctrlMQPairsSet, le16(3)); got != ackOK {
		t.Errorf("pairs 3: ack %d", got)
	}
	r.d.SetCommon(0x14, 1, 0)
	if got := r.ft.attachedNow(); !equalBools(got, []bool{true, false, false, false}) {
		t.Errorf("after a reset: attached %v, want pair 0 alone", got)
	}
}

// TestControlFraming: a control chain without a header or a status
// byte, or with them the wrong way round, is the driver's fault: the
// device needs a reset, with a log line that says why.
func TestControlFraming(t *testing.T) {
	for _, c := range []struct {
		name string
		segs func(r *mqRig) []virtiotest.Seg
		want string
	}{
		{"no status byte", func(r *mqRig) []virtiotest.Seg {
			return []virtiotest.Seg{{GPA: r.alloc(4), Len: 4}}
		}, "status byte"},
		{"1-byte header", func(r *mqRig) []virtiotest.Seg {
			return []virtiotest.Seg{{GPA: r.alloc(1), Len: 1}, {GPA: r.alloc(1), Len: 1, Write: true}}
		}, "2-byte header"},
		{"all writable", func(r *mqRig) []virtiotest.Seg {
			return []virtiotest.Seg{{GPA: r.alloc(4), Len: 4, Write: true}}
		}, "0 device-readable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logBuf virtiotest.SyncBuffer
			old := slog.Default()
			slog.SetDefault(slog.New(slog.NewTextHandler(&logBuf, nil)))
			defer slog.SetDefault(old)
			ft := newFakeTap(t, 2)
			dev := newDevice(Config{Tap: "fake0", Queues: 2}, testMAC, ft, quiet, true)
			mem := virtiotest.RAM(t, 16<<20)
			vm, tb := virtiotest.NewVM()
			tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb, Class: virtio.PCIClass{Class: 2}})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { tr.Close(); dev.Close(); tb.Close() }()
			d, err := virtiotest.New(tr, mem, vm)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Init(mqFeatures, 0); err != nil {
				t.Fatal(err)
			}
			r := &mqRig{t: t, d: d, tr: tr, dev: dev, ft: ft, n: 2, bufAt: virtiotest.BufBase}
			d.Put(4, c.segs(r), 0)
			end := time.Now().Add(wait)
			for d.Status()&virtio.StatusNeedsReset == 0 {
				if time.Now().After(end) {
					t.Fatal("the device did not ask for a reset")
				}
				time.Sleep(time.Millisecond)
			}
			if l := logBuf.String(); !strings.Contains(l, c.want) || !strings.Contains(l, "queue 4") {
				t.Errorf("log %q: want the queue and %q", l, c.want)
			}
		})
	}
}

// TestPairTraffic: after VQ_PAIRS_SET 2, pair 1 receives what the TAP
// steers to its queue and transmits through it, with interrupts on its
// own vectors; before, its TAP queue is not read.
func TestPairTraffic(t *testing.T) {
	r := newMQRig(t, 2, mqFeatures)
	frame := func(s string) []byte {
		return ipv4UDP(testMAC, stdnet.HardwareAddr{2, 0, 0, 0, 0, 1}, stdnet.IPv4(10, 0, 0, 1), stdnet.IPv4(10, 0, 0, 2), 1, 2, []byte(s))
	}
	gpa := []map[uint16]uint64{{}, {}}
	for p := range 2 {
		for range 4 {
			h, g := r.postRx(p, 2048)
			gpa[p][h] = g
		}
	}
	// Pair 1 is not enabled: what waits on its TAP queue stays there.
	r.ft.send(t, 1, frame("early on queue 1"))
	if _, err := r.d.Wait(2, 100*time.Millisecond); err == nil {
		t.Fatal("pair 1 received before the driver enabled it")
	}
	r.ft.send(t, 0, frame("to pair 0"))
	if got := r.received(0, gpa[0]); !bytes.Equal(got, frame("to pair 0")) {
		t.Fatalf("pair 0 received %q", got)
	}
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(2)); ack != ackOK {
		t.Fatalf("VQ_PAIRS_SET 2: ack %d", ack)
	}
	if got := r.received(1, gpa[1]); !bytes.Equal(got, frame("early on queue 1")) {
		t.Fatalf("pair 1 received %q", got)
	}
	r.ft.send(t, 1, frame("to pair 1"))
	if got := r.received(1, gpa[1]); !bytes.Equal(got, frame("to pair 1")) {
		t.Fatalf("pair 1 received %q", got)
	}
	r.transmit(1, frame("from pair 1"))
	if got := r.ft.recv(t, 1); !bytes.Equal(got[vnetHdrLen:], frame("from pair 1")) {
		t.Fatalf("queue 1 of the TAP got %q", got)
	}
	r.transmit(0, frame("from pair 0"))
	if got := r.ft.recv(t, 0); !bytes.Equal(got[vnetHdrLen:], frame("from pair 0")) {
		t.Fatalf("queue 0 of the TAP got %q", got)
	}
	// Each queue signalled its own vector (the driver gave queue i
	// vector i).
	for q := range 4 {
		if n := r.d.WaitInterrupts(q, wait); n == 0 {
			t.Errorf("queue %d's vector was not signalled", q)
		}
	}
	// Back to one pair: pair 1 takes nothing more, and a packet still
	// transmitted on it goes out through queue 0.
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(1)); ack != ackOK {
		t.Fatalf("VQ_PAIRS_SET 1: ack %d", ack)
	}
	r.ft.send(t, 1, frame("late on queue 1"))
	if _, err := r.d.Wait(2, 100*time.Millisecond); err == nil {
		t.Fatal("pair 1 received after the driver disabled it")
	}
	r.transmit(1, frame("straggler"))
	if got := r.ft.recv(t, 0); !bytes.Equal(got[vnetHdrLen:], frame("straggler")) {
		t.Fatalf("queue 0 of the TAP got %q", got)
	}
}

// TestParallelPairs: both pairs carry traffic at the same time, each on
// its own goroutines: a pair whose receive side waits for buffers does
// not hold up the other.
func TestParallelPairs(t *testing.T) {
	r := newMQRig(t, 2, mqFeatures)
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(2)); ack != ackOK {
		t.Fatalf("VQ_PAIRS_SET 2: ack %d", ack)
	}
	// Pair 0 has no buffers: its packet waits.
	r.ft.send(t, 0, []byte("pair 0 waits for a buffer"))
	gpa := []map[uint16]uint64{{}, {}}
	h, g := r.postRx(1, 2048)
	gpa[1][h] = g
	r.ft.send(t, 1, []byte("pair 1 goes on"))
	if got := r.received(1, gpa[1]); string(got) != "pair 1 goes on" {
		t.Fatalf("pair 1 received %q", got)
	}
	h, g = r.postRx(0, 2048)
	gpa[0][h] = g
	if got := r.received(0, gpa[0]); string(got) != "pair 0 waits for a buffer" {
		t.Fatalf("pair 0 received %q", got)
	}
}

// TestRestoreMQ: a snapshot carries the enabled pairs and every queue: a
// device restored from it attaches the same TAP queues, takes the
// buffers posted before, and sends what the driver queued while paused.
// A device with another queues= refuses the snapshot.
func TestRestoreMQ(t *testing.T) {
	r := newMQRig(t, 3, mqFeatures)
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(2)); ack != ackOK {
		t.Fatalf("VQ_PAIRS_SET 2: ack %d", ack)
	}
	gpa := []map[uint16]uint64{{}, {}}
	for range 2 {
		h, g := r.postRx(1, 2048)
		gpa[1][h] = g
	}
	time.Sleep(20 * time.Millisecond) // the device has taken them
	r.tr.Pause()
	// Queued while paused: not sent until the restored device runs.
	hdr := r.alloc(vnetHdrLen)
	g := r.alloc(5)
	copy(r.d.Mem.B[g:], "after")
	r.d.Put(3, []virtiotest.Seg{{GPA: hdr, Len: vnetHdrLen}, {GPA: g, Len: 5}}, 0)
	ps := r.tr.Save()
	js, err := json.Marshal(ps)
	if err != nil {
		t.Fatal(err)
	}
	var back virtio.PCIState
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if string(back.DeviceState) != `{"queue_pairs":2}` {
		t.Errorf("saved device state %s", back.DeviceState)
	}

	// Another queues= is refused, naming it.
	for _, n := range []int{1, 2, 4} {
		dev := newDevice(Config{Tap: "fake0", Queues: n}, testMAC, newFakeTap(t, n), quiet, true)
		tr, _ := newTransport(t, dev, r.d.Mem)
		if err := tr.Restore(back); err == nil || !strings.Contains(err.Error(), "queues=3") {
			t.Errorf("restore on queues=%d: %v, want a refusal naming queues=3", n, err)
		}
	}
	// A state whose pair count this device cannot have is refused.
	bad := back
	bad.DeviceState = json.RawMessage(`{"queue_pairs":7}`)
	dev := newDevice(Config{Tap: "fake0", Queues: 3}, testMAC, newFakeTap(t, 3), quiet, true)
	tr, _ := newTransport(t, dev, r.d.Mem)
	if err := tr.Restore(bad); err == nil || !strings.Contains(err.Error(), "7 queue pairs") {
		t.Errorf("restore of 7 enabled pairs: %v", err)
	}

	ft2 := newFakeTap(t, 3)
	dev2 := newDevice(Config{Tap: "fake0", Queues: 3}, testMAC, ft2, quiet, true)
	tr2, vm2 := newTransport(t, dev2, r.d.Mem)
	if err := tr2.Restore(back); err != nil {
		t.Fatal(err)
	}
	if got := ft2.attachedNow(); !equalBools(got, []bool{true, true, false}) {
		t.Fatalf("restored device attached %v, want pairs 0 and 1", got)
	}
	r.tr.Close()
	r.d.T, r.d.VM = tr2, vm2
	tr2.Start()
	if got := ft2.recv(t, 1); string(got[vnetHdrLen:]) != "after" {
		t.Fatalf("the restored device sent %q on queue 1", got)
	}
	ft2.send(t, 1, []byte("into a buffer posted before the snapshot"))
	if got := r.received(1, gpa[1]); string(got) != "into a buffer posted before the snapshot" {
		t.Fatalf("restored pair 1 received %q", got)
	}
	if got := dev2.SaveState(); string(got) != `{"queue_pairs":2}` {
		t.Errorf("restored device's state %s", got)
	}

	// A snapshot without device state (from before multiqueue state was
	// saved) restores with one pair.
	old := back
	old.DeviceState = nil
	ft3 := newFakeTap(t, 3)
	dev3 := newDevice(Config{Tap: "fake0", Queues: 3}, testMAC, ft3, quiet, true)
	tr3, _ := newTransport(t, dev3, r.d.Mem)
	if err := tr3.Restore(old); err != nil {
		t.Fatal(err)
	}
	if got := ft3.attachedNow(); !equalBools(got, []bool{true, false, false}) {
		t.Errorf("restored without device state: attached %v", got)
	}
}

// TestNoMQNegotiated: a driver that takes the control queue without MQ
// finds it at index 2 (virtio 1.2 §5.1.2) and uses pair 0 alone; a
// driver that takes MQ without CTRL_VQ is refused at DRIVER_OK.
func TestNoMQNegotiated(t *testing.T) {
	r := newMQRig(t, 2, fMrgRxbuf|fCtrlVQ|fCtrlRx)
	r.n = 1 // the control queue is at 2
	if ack := r.command(ctrlRx, ctrlRxPromisc, []byte{1}); ack != ackOK {
		t.Errorf("promisc on queue 2: ack %d", ack)
	}
	if ack := r.command(ctrlMQ, ctrlMQPairsSet, le16(2)); ack != ackErr {
		t.Errorf("VQ_PAIRS_SET without MQ: ack %d, want an error", ack)
	}

	ft := newFakeTap(t, 2)
	dev := newDevice(Config{Tap: "fake0", Queues: 2}, testMAC, ft, quiet, true)
	mem := virtiotest.RAM(t, 16<<20)
	tr, vm := newTransport(t, dev, mem)
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(fMrgRxbuf|fMQ, 0); err == nil {
		t.Error("MQ without CTRL_VQ was activated")
	}
}

// TestTapMultiqueue opens a real multiqueue TAP where this process may
// create one: TUNSETQUEUE detaches and attaches queue 1, and a datagram
// the host sends reaches the guest on whichever queue the TAP steers it
// to once both are attached.
func TestTapMultiqueue(t *testing.T) {
	name := fmt.Sprintf("gvmq%d", os.Getpid()%100000)
	tp, err := openTap(name, 2, testMAC)
	if err != nil {
		t.Skipf("no multiqueue TAP here: %v", err)
	}
	defer tp.close()
	if err := tp.setAttached(1, false); err == nil {
		t.Error("queue 1 detached twice without an error")
	}
	if err := tp.setAttached(1, true); err != nil {
		t.Fatal(err)
	}
	if err := tp.setAttached(1, false); err != nil {
		t.Fatal(err)
	}
	if err := tp.setOffload(tunFCsum); err != nil {
		t.Fatal(err)
	}
	// A second open of the name as a single-queue TAP attaches as one
	// more queue of it, and leaves its address alone.
	one, err := openTap(name, 1, stdnet.HardwareAddr{0x52, 0x54, 0, 9, 9, 9})
	if err != nil {
		t.Fatalf("single-queue open of a multiqueue TAP: %v", err)
	}
	one.close()
	if want := HostMAC(testMAC); tp.hostMAC.String() != want.String() || one.hostMAC != nil {
		t.Errorf("host-side MACs: the creating open's %v, want %v; the attaching open's %v, want none", tp.hostMAC, want, one.hostMAC)
	}
	if got := hostSideMAC(t, name); got != HostMAC(testMAC).String() {
		t.Errorf("the TAP's host side has %s after a second open, want %s", got, HostMAC(testMAC))
	}
	// The same name through the device: packets flow on pair 0 and, once
	// enabled, pair 1.
	tp.close()
	d, err := Open(Config{Tap: name, Queues: 2}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Activate(uint64(virtio.FVersion1 | mqFeatures)); err != nil {
		t.Fatal(err)
	}
	if err := d.setPairs(2); err != nil {
		t.Fatal(err)
	}
	if err := d.setPairs(1); err != nil {
		t.Fatal(err)
	}
	if err := d.setPairs(2); err != nil {
		t.Fatal(err)
	}
	if err := d.setPairs(3); err == nil {
		t.Error("3 pairs on a 2-pair device accepted")
	}

	// Traffic on pair 1 after that detach and attach: a datagram the
	// guest sends through pair 1 records its flow on TAP queue 1, and
	// the host's answer on the same flow comes back to pair 1.
	ipCmd(t, "addr", "add", "10.231.8.1/24", "dev", name)
	ipCmd(t, "link", "set", name, "up")
	ipCmd(t, "neigh", "add", "10.231.8.2", "lladdr", d.mac.String(), "dev", name, "nud", "permanent")
	ifc, err := stdnet.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := stdnet.ListenUDP("udp4", &stdnet.UDPAddr{IP: stdnet.IPv4(10, 231, 8, 1), Port: 9997})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type used struct {
		q   int
		buf []byte
		n   uint32
	}
	rx := make(chan used, 64)
	for q := range 2 {
		for range 8 {
			buf := make([]byte, 2048)
			if err := d.Handle(2*q, &virtio.Chain{Writable: []virtio.Buffer{{Bytes: buf}}}, func(n uint32) { rx <- used{q, buf, n &^ virtio.More} }); err != nil {
				t.Fatal(err)
			}
		}
	}
	msg := []byte("through pair 1")
	f := ipv4UDP(ifc.HardwareAddr, d.mac, stdnet.IPv4(10, 231, 8, 2), stdnet.IPv4(10, 231, 8, 1), 4001, 9997, msg)
	c := &virtio.Chain{Readable: []virtio.Buffer{{Bytes: make([]byte, vnetHdrLen)}, {Bytes: f}}}
	if err := d.Handle(3, c, func(uint32) {}); err != nil {
		t.Fatal(err)
	}
	ln.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 256)
	n, from, err := ln.ReadFromUDP(b)
	if err != nil || !bytes.Equal(b[:n], msg) {
		t.Fatalf("host read %q from %v, %v; want %q", b[:n], from, err, msg)
	}
	if _, err := ln.WriteToUDP([]byte("answer to pair 1"), from); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(wait)
	for {
		var u used
		select {
		case u = <-rx:
		case <-deadline:
			t.Fatal("the answer never reached the receive buffers")
		}
		frame := u.buf[vnetHdrLen:u.n]
		if len(frame) < 42 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 || frame[23] != 17 || binary.BigEndian.Uint16(frame[36:]) != 4001 {
			continue // neighbour discovery and the like
		}
		if string(frame[42:]) != "answer to pair 1" || u.q != 1 {
			t.Fatalf("the answer %q came to pair %d, want pair 1", frame[42:], u.q)
		}
		break
	}
}

// TestTapNotMultiqueue: queues=2 on a TAP that exists without
// multi_queue is refused with an error that says what to do.
func TestTapNotMultiqueue(t *testing.T) {
	name := fmt.Sprintf("gvsq%d", os.Getpid()%100000)
	one, err := openTap(name, 1, testMAC)
	if err != nil {
		t.Skipf("no TAP here: %v", err)
	}
	defer one.close()
	_, err = Open(Config{Tap: name, Queues: 2}, quiet)
	if err == nil || !strings.Contains(err.Error(), "multi_queue") {
		t.Fatalf("queues=2 on a single-queue TAP: %v, want an error that names multi_queue", err)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestVhostPairsNoDeadlines: under vhost-net the TAP's files are blocking
// and outside Go's poller, where a read deadline cannot be set, and no
// reader of the device's needs waking: enabling and disabling pairs warns
// of nothing (it warned "clear a read deadline" on each migration of a
// multiqueue vhost-net guest).
func TestVhostPairsNoDeadlines(t *testing.T) {
	ft := newFakeTap(t, 2)
	for i, f := range ft.fs {
		f.Close()
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ft.fs[i] = os.NewFile(uintptr(fds[0]), fmt.Sprintf("blocking-tap-%d", i))
		unix.Close(fds[1])
	}
	if err := ft.fs[1].SetReadDeadline(time.Time{}); err == nil {
		t.Fatal("a blocking file took a read deadline: the test tests nothing")
	}
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dev := newDevice(Config{Tap: "fake0", Queues: 2}, testMAC, ft, log, false)
	defer dev.Close()
	dev.setMu.Lock()
	if err := dev.applyPairs(2); err != nil {
		t.Fatal(err)
	}
	if err := dev.applyPairs(1); err != nil {
		t.Fatal(err)
	}
	dev.setMu.Unlock()
	if logged.Len() != 0 {
		t.Fatalf("enabling and disabling a pair under vhost-net logged:\n%s", logged.String())
	}
}
