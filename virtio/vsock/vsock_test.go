package vsock

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"govmm/virtio"
)

const guestCID = 3

// pkt is one packet the device put into a receive buffer.
type pkt struct {
	h    header
	data []byte
}

// guest plays the driver: it keeps receive buffers posted and sends
// packets through the transmit queue.
type guest struct {
	t    *testing.T
	d    *Device
	rx   chan pkt
	head uint16
}

func newGuest(t *testing.T, sock string) *guest {
	t.Helper()
	d, err := New(Config{CID: guestCID, Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	g := &guest{t: t, d: d, rx: make(chan pkt, 1024)}
	if err := d.Activate(virtio.FVersion1); err != nil {
		t.Fatal(err)
	}
	for range 32 {
		g.post()
	}
	return g
}

// post gives the device one receive buffer (4 KiB of payload, as Linux).
func (g *guest) post() {
	buf := make([]byte, hdrLen+4096)
	for i := range buf {
		buf[i] = 0xee
	}
	g.head++
	c := &virtio.Chain{Head: g.head, Writable: []virtio.Buffer{{Bytes: buf}}}
	err := g.d.Handle(rxQ, c, func(w uint32) {
		h, err := parseHeader(buf[:min(int(w), len(buf))])
		if err != nil {
			g.t.Errorf("receive buffer completed with %d bytes: %v", w, err)
			return
		}
		if int(w) != hdrLen+int(h.Len) {
			g.t.Errorf("receive buffer completed with %d bytes, header says %d of payload", w, h.Len)
		}
		g.rx <- pkt{h, append([]byte(nil), buf[hdrLen:w]...)}
	})
	if err != nil {
		g.t.Fatal(err)
	}
}

// recv returns the next packet, and posts a buffer for the one taken.
func (g *guest) recv() pkt {
	g.t.Helper()
	select {
	case p := <-g.rx:
		g.post()
		if p.h.SrcCID != HostCID || p.h.DstCID != guestCID || p.h.Type != typeStream {
			g.t.Fatalf("packet %v: wrong addresses or type", p.h)
		}
		return p
	case <-time.After(5 * time.Second):
		g.t.Fatal("no packet from the device within 5 s")
	}
	return pkt{}
}

// expect receives the next packet and checks its operation.
func (g *guest) expect(op uint16) pkt {
	g.t.Helper()
	p := g.recv()
	if p.h.Op != op {
		g.t.Fatalf("got %v, want op %d", p.h, op)
	}
	return p
}

func (g *guest) send(h header, payload []byte) error {
	if h.SrcCID == 0 {
		h.SrcCID = guestCID
	}
	if h.DstCID == 0 {
		h.DstCID = HostCID
	}
	if h.Type == 0 {
		h.Type = typeStream
	}
	if h.Len == 0 {
		h.Len = uint32(len(payload))
	}
	b := make([]byte, hdrLen+len(payload))
	h.put(b)
	copy(b[hdrLen:], payload)
	g.head++
	// Header and payload in two buffers, as older Linux sends them.
	c := &virtio.Chain{Head: g.head, Readable: []virtio.Buffer{{Bytes: b[:hdrLen]}, {Bytes: b[hdrLen:]}}}
	n := -1
	err := g.d.Handle(txQ, c, func(w uint32) { n = int(w) })
	if err == nil && n != 0 {
		g.t.Fatalf("transmitted packet completed with %d bytes, want 0", n)
	}
	return err
}

func (g *guest) mustSend(h header, payload []byte) {
	g.t.Helper()
	if err := g.send(h, payload); err != nil {
		g.t.Fatal(err)
	}
}

// conn is the guest's side of one connection.
type gconn struct {
	g               *guest
	port, hostPort  uint32
	bufAlloc, recvd uint32
	peerAlloc       uint32
	peerFwd, sent   uint32
}

func (c *gconn) hdr(op uint16) header {
	return header{SrcPort: c.port, DstPort: c.hostPort, Op: op, BufAlloc: c.bufAlloc, FwdCnt: c.recvd}
}

// write sends data within the host's credit, waiting for credit updates.
func (c *gconn) write(data []byte) {
	c.g.t.Helper()
	for len(data) > 0 {
		free := c.peerAlloc - (c.sent - c.peerFwd)
		if free == 0 {
			p := c.g.recv()
			c.track(p)
			continue
		}
		n := min(uint32(len(data)), free, 4096)
		c.g.mustSend(c.hdr(opRW), data[:n])
		c.sent += n
		data = data[n:]
	}
}

// track notes a packet's credit fields.
func (c *gconn) track(p pkt) {
	if p.h.DstPort != c.port || p.h.SrcPort != c.hostPort {
		c.g.t.Fatalf("packet %v for another connection", p.h)
	}
	c.peerAlloc, c.peerFwd = p.h.BufAlloc, p.h.FwdCnt
	if p.h.Op == opCreditRequest {
		c.g.mustSend(c.hdr(opCreditUpdate), nil)
	}
}

// read receives until n payload bytes arrived, giving credit back as it
// consumes.
func (c *gconn) read(n int) []byte {
	c.g.t.Helper()
	var out []byte
	for len(out) < n {
		p := c.g.recv()
		c.track(p)
		switch p.h.Op {
		case opRW:
			out = append(out, p.data...)
			c.recvd += uint32(len(p.data))
			c.g.mustSend(c.hdr(opCreditUpdate), nil)
		case opCreditUpdate, opCreditRequest:
		default:
			c.g.t.Fatalf("got %v while reading", p.h)
		}
	}
	return out
}

func pattern(seed string, n int) []byte {
	var out []byte
	for i := 0; len(out) < n; i++ {
		h := sha256.Sum256(fmt.Appendf(nil, "%s-%d", seed, i))
		out = append(out, h[:]...)
	}
	return out[:n]
}

func sockPath(t testing.TB) string {
	// Unix socket paths are short; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "vsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "v.sock")
}

func hostDial(t *testing.T, sock string, port uint32) net.Conn {
	t.Helper()
	uc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(uc, "CONNECT %d\n", port)
	return uc
}

// TestHostToGuest: a host client connects to guest port 5000 through
// CONNECT, the guest accepts, and 300 KiB go each way with a small guest
// buffer (so the device waits for credit) and the device's 256 KiB
// buffer (so the guest must wait for the device's credit updates). The
// host half-closes, the guest shuts down, and the device ends the
// connection with an RST.
func TestHostToGuest(t *testing.T) {
	sock := sockPath(t)
	g := newGuest(t, sock)
	uc := hostDial(t, sock, 5000)
	defer uc.Close()
	req := g.expect(opRequest)
	if req.h.DstPort != 5000 || req.h.SrcPort < firstLocalPort || req.h.BufAlloc != bufAlloc {
		t.Fatalf("request %v", req.h)
	}
	c := &gconn{g: g, port: 5000, hostPort: req.h.SrcPort, bufAlloc: 8192, peerAlloc: req.h.BufAlloc}
	g.mustSend(c.hdr(opResponse), nil)
	line, err := readLine(uc)
	if want := fmt.Sprintf("OK %d", req.h.SrcPort); err != nil || line != want {
		t.Fatalf("host client read %q, %v; want %q", line, err, want)
	}
	toGuest, toHost := pattern("h2g", 300<<10), pattern("g2h", 300<<10)
	go func() {
		uc.Write(toGuest)
		uc.(*net.UnixConn).CloseWrite()
	}()
	got := c.read(len(toGuest))
	if !bytes.Equal(got, toGuest) {
		t.Fatal("the guest received other bytes than the host sent")
	}
	// The host's EOF reaches the guest as SHUTDOWN(SEND).
	for {
		p := g.recv()
		c.track(p)
		if p.h.Op == opShutdown {
			if p.h.Flags != shutSend {
				t.Fatalf("shutdown flags %d, want SEND", p.h.Flags)
			}
			break
		}
	}
	hostGot := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(uc)
		hostGot <- b
	}()
	c.write(toHost)
	g.mustSend(c.hdr(opShutdown).withFlags(shutRcv|shutSend), nil)
	for {
		p := g.recv()
		if p.h.Op == opRST {
			break
		}
		c.track(p)
	}
	if b := <-hostGot; !bytes.Equal(b, toHost) {
		t.Fatalf("the host read %d bytes, not the %d the guest sent", len(b), len(toHost))
	}
}

func (h header) withFlags(f uint32) header { h.Flags = f; return h }

// guestDials starts a device on a fresh socket whose host side listens on
// hostPort, has the guest connect from guest port port (advertising
// bufAlloc) and returns the guest's side, tracking the RESPONSE's credit,
// and the host's accepted socket, closed when the test ends.
func guestDials(t *testing.T, port, hostPort, bufAlloc uint32) (*gconn, net.Conn) {
	t.Helper()
	sock := sockPath(t)
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, hostPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g := newGuest(t, sock)
	c := &gconn{g: g, port: port, hostPort: hostPort, bufAlloc: bufAlloc}
	g.mustSend(c.hdr(opRequest), nil)
	hc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Close() })
	c.track(g.expect(opResponse))
	return c, hc
}

// TestGuestToHost: the guest connects to host port 6000, which a host
// process serves on <socket>_6000; data goes both ways and the guest's
// close ends with the device's RST.
func TestGuestToHost(t *testing.T) {
	c, hc := guestDials(t, 40000, 6000, 65536)
	g := c.g
	toHost, toGuest := pattern("up", 1<<20), pattern("down", 200<<10)
	hostGot := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(hc)
		hostGot <- b
		hc.Write(toGuest)
		hc.Close()
	}()
	c.write(toHost)
	g.mustSend(c.hdr(opShutdown).withFlags(shutSend), nil)
	if b := <-hostGot; !bytes.Equal(b, toHost) {
		t.Fatalf("the host read %d bytes, not the %d the guest sent", len(b), len(toHost))
	}
	if got := c.read(len(toGuest)); !bytes.Equal(got, toGuest) {
		t.Fatal("the guest received other bytes than the host sent")
	}
	// Both sides are done: SHUTDOWN(SEND) for the host's EOF, then RST.
	ops := []uint16{}
	for len(ops) == 0 || ops[len(ops)-1] != opRST {
		p := g.recv()
		ops = append(ops, p.h.Op)
	}
	if ops[0] != opShutdown && !(len(ops) > 1 && ops[len(ops)-2] == opShutdown) {
		t.Fatalf("ops after the data %v, want a SHUTDOWN before the RST", ops)
	}
}

// TestRefusals: what the device answers packets that open nothing.
func TestRefusals(t *testing.T) {
	sock := sockPath(t)
	g := newGuest(t, sock)
	// No listener on the host port.
	g.mustSend(header{SrcPort: 1, DstPort: 7000, Op: opRequest, BufAlloc: 4096}, nil)
	if p := g.expect(opRST); p.h.SrcPort != 7000 || p.h.DstPort != 1 {
		t.Fatalf("RST %v", p.h)
	}
	// Data on no connection.
	g.mustSend(header{SrcPort: 2, DstPort: 7000, Op: opRW}, []byte("x"))
	g.expect(opRST)
	// Another CID than the host: RST. Another source CID: dropped.
	g.mustSend(header{SrcPort: 3, DstPort: 7000, DstCID: 5, Op: opRequest}, nil)
	g.expect(opRST)
	g.mustSend(header{SrcCID: 9, SrcPort: 3, DstPort: 7000, Op: opRequest}, nil)
	// Unknown op, SEQPACKET type: RST.
	g.mustSend(header{SrcPort: 4, DstPort: 7000, Op: 99}, nil)
	if p := g.expect(opRST); p.h.DstPort != 4 {
		t.Fatalf("RST %v, want to port 4 (the dropped packet must not be answered)", p.h)
	}
	g.mustSend(header{SrcPort: 5, DstPort: 7000, Op: opRequest, Type: 2}, nil)
	g.expect(opRST)
	// An RST to nothing is not answered.
	g.mustSend(header{SrcPort: 6, DstPort: 7000, Op: opRST}, nil)
	select {
	case p := <-g.rx:
		t.Fatalf("answer %v to an RST", p.h)
	case <-time.After(100 * time.Millisecond):
	}
	// Malformed chains break the device.
	for _, tc := range []struct {
		name string
		h    header
		pay  []byte
	}{
		{"length past the chain", header{Op: opRW, Len: 10}, []byte("abc")},
		{"length past 64 KiB", header{Op: opRW, Len: maxPayload + 1}, make([]byte, maxPayload+1)},
	} {
		if err := g.send(tc.h, tc.pay); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if err := g.d.Handle(txQ, &virtio.Chain{Readable: []virtio.Buffer{{Bytes: make([]byte, 20)}}}, func(uint32) {}); err == nil {
		t.Error("a 20-byte packet was accepted")
	}
	if err := g.d.Handle(rxQ, &virtio.Chain{Writable: []virtio.Buffer{{Bytes: make([]byte, hdrLen)}}}, func(uint32) {}); err == nil {
		t.Error("a receive buffer without room for payload was accepted")
	}
	// A host client that does not say CONNECT is dropped.
	uc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(uc, "HELLO 5\n")
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(uc); err != nil || len(b) != 0 {
		t.Errorf("a bad CONNECT line got %q, %v; want EOF", b, err)
	}
	uc.Close()
}

// TestCreditOverrun: a guest that sends more than the device's buffer
// allows, while the host does not read, gets its connection reset.
func TestCreditOverrun(t *testing.T) {
	c, _ := guestDials(t, 1, 6001, 4096) // the host side never reads
	g := c.g
	// Far past 256 KiB plus what the socket buffers take.
	chunk := make([]byte, maxPayload)
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("no RST after 64 MiB past the credit")
		}
		g.mustSend(c.hdr(opRW), chunk)
		select {
		case p := <-g.rx:
			g.post()
			if p.h.Op == opRST {
				return
			}
		default:
		}
	}
}

// TestRestoredSendsReset: after a restore the driver hears
// TRANSPORT_RESET on the event queue, once.
func TestRestoredSendsReset(t *testing.T) {
	g := newGuest(t, sockPath(t))
	g.d.Restored()
	got := make(chan []byte, 2)
	for i := range 2 {
		buf := make([]byte, 8)
		for j := range buf {
			buf[j] = 0xee
		}
		err := g.d.Handle(evQ, &virtio.Chain{Head: uint16(i), Writable: []virtio.Buffer{{Bytes: buf}}}, func(w uint32) { got <- buf[:w] })
		if err != nil {
			t.Fatal(err)
		}
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, []byte{0, 0, 0, 0}) {
			t.Fatalf("event %x, want TRANSPORT_RESET (0)", b)
		}
	case <-time.After(time.Second):
		t.Fatal("no event")
	}
	select {
	case b := <-got:
		t.Fatalf("a second event %x", b)
	case <-time.After(100 * time.Millisecond):
	}
	if n := g.d.Unkeep(evQ); n != 1 {
		t.Fatalf("Unkeep(event) = %d, want the 1 buffer left", n)
	}
	if n := g.d.Unkeep(rxQ); n != 32 {
		t.Fatalf("Unkeep(rx) = %d, want 32", n)
	}
}

func fds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// settle waits until f() <= want, for up to 5 s, and returns f().
func settle(want int, f func() int) int {
	n := f()
	for i := 0; i < 100 && n > want; i++ {
		time.Sleep(50 * time.Millisecond)
		n = f()
	}
	return n
}

// TestTeardownLeaksNothing opens connections both ways and ends them every
// way there is (guest RST, host close, guest shutdown, a guest that never
// answers, device reset, device close): afterwards the process has the
// goroutines and file descriptors it had before.
func TestTeardownLeaksNothing(t *testing.T) {
	baseG, baseF := runtime.NumGoroutine(), fds(t)
	sock := sockPath(t)
	ln, err := net.Listen("unix", sock+"_6002")
	if err != nil {
		t.Fatal(err)
	}
	var hosts []net.Conn
	accepted := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	d, err := New(Config{CID: guestCID, Socket: sock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, d: d, rx: make(chan pkt, 1024)}
	d.Activate(virtio.FVersion1)
	for range 64 {
		g.post()
	}
	// Guest-initiated, ended by guest RST, guest shutdown, host close.
	for i := uint32(1); i <= 9; i++ {
		c := &gconn{g: g, port: i, hostPort: 6002, bufAlloc: 4096}
		g.mustSend(c.hdr(opRequest), nil)
		g.expect(opResponse)
		hc := <-accepted
		hosts = append(hosts, hc)
		switch i % 3 {
		case 0:
			g.mustSend(c.hdr(opRST), nil)
		case 1:
			g.mustSend(c.hdr(opShutdown).withFlags(shutRcv|shutSend), nil)
			g.expect(opRST)
		case 2:
			hc.Close()
			g.expect(opShutdown)
			g.mustSend(c.hdr(opShutdown).withFlags(shutRcv|shutSend), nil)
			g.expect(opRST)
		}
	}
	// Host-initiated: refused by the guest, accepted then closed by the
	// host, and left open for Reset.
	for i := range 3 {
		uc := hostDial(t, sock, 5000)
		req := g.expect(opRequest)
		c := &gconn{g: g, port: 5000, hostPort: req.h.SrcPort, bufAlloc: 4096}
		if i == 0 {
			g.mustSend(c.hdr(opRST), nil)
			uc.Close()
			continue
		}
		g.mustSend(c.hdr(opResponse), nil)
		if _, err := readLine(uc); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			uc.Close()
			g.expect(opShutdown)
			g.mustSend(c.hdr(opRST), nil)
		}
		hosts = append(hosts, uc)
	}
	// A host client that never sends CONNECT, and one the guest never
	// answers: Close ends both.
	idle, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hosts = append(hosts, idle, hostDial(t, sock, 5001))
	g.expect(opRequest)
	d.Reset()
	d.Activate(virtio.FVersion1)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		h.Close()
	}
	ln.Close()
	for range accepted {
	}
	if n := settle(baseG, runtime.NumGoroutine); n > baseG {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after teardown, %d before:\n%s", n, baseG, buf[:runtime.Stack(buf, true)])
	}
	if n := settle(baseF, func() int { return fds(t) }); n > baseF {
		t.Fatalf("%d fds after teardown, %d before", n, baseF)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the socket file outlived Close")
	}
}

func TestParseFlag(t *testing.T) {
	c, err := ParseFlag("cid=3,socket=/tmp/v.sock")
	if err != nil || c.CID != 3 || c.Socket != "/tmp/v.sock" || c.Vhost {
		t.Fatalf("%+v %v", c, err)
	}
	// Without socket= the kernel's vhost-vsock serves the CID.
	for _, s := range []string{"cid=3", "cid=3,backend=vhost"} {
		if c, err := ParseFlag(s); err != nil || c.CID != 3 || !c.Vhost || c.Socket != "" {
			t.Errorf("%q: %+v %v", s, c, err)
		}
	}
	if c, err := ParseFlag("cid=3,socket=/tmp/a,,b.sock,packed=on"); err != nil || c.Socket != "/tmp/a,b.sock" || !c.Packed {
		t.Errorf("a socket path with a comma: %+v %v", c, err)
	}
	if c, err := ParseFlag("cid=5,socket=/x,backend=hybrid"); err != nil || c.Vhost {
		t.Errorf("backend=hybrid: %+v %v", c, err)
	}
	for _, bad := range []string{"cid=2,socket=/x", "socket=/x", "cid=x,socket=/x", "cid=3,socket=/x,foo=1", "cid=4294967295,socket=/x",
		"cid=3,backend=hybrid", "cid=3,socket=/x,backend=vhost", "cid=3,backend=qemu", "cid=3,packed=on", "cid=2", "cid=3,socket=/x,"} {
		if _, err := ParseFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "--vsock") {
			t.Errorf("%q: error %v does not name the flag", bad, err)
		}
	}
}

func TestConfigSpace(t *testing.T) {
	d := &Device{cfg: Config{CID: 0x1122334455}}
	b := make([]byte, 12)
	d.ReadConfig(0, b)
	if !bytes.Equal(b, []byte{0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("config %x", b)
	}
}

// TestControlQueueBounded: a guest that sends packets to no connection
// and posts no receive buffers does not grow the device's queue of RSTs
// without bound.
func TestControlQueueBounded(t *testing.T) {
	d, err := New(Config{CID: guestCID, Socket: sockPath(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Activate(virtio.FVersion1)
	g := &guest{t: t, d: d}
	for i := range 3 * maxCtrl {
		g.mustSend(header{SrcPort: uint32(i), DstPort: 7000, Op: opRW}, []byte("x"))
	}
	d.mu.Lock()
	n := len(d.ctrl)
	d.mu.Unlock()
	if n > maxCtrl {
		t.Fatalf("%d control packets queued, more than %d", n, maxCtrl)
	}
}

// TestCloseFlushes: bytes the device took from the guest reach the host
// socket even when the VM stops (Close) before the host read them: a
// guest that writes its last bytes and powers off at once loses nothing
// the device holds. A host that does not read holds Close for
// flushTimeout only.
func TestCloseFlushes(t *testing.T) {
	c, hc := guestDials(t, 40000, 6000, 65536)
	// A whole credit's worth, more than the socket's send buffer
	// (net.core.wmem_default, 208 KiB by default): the writer blocks
	// with bytes in hand while the host does not read.
	toHost := pattern("last", bufAlloc)
	c.write(toHost)
	closed := make(chan error, 1)
	go func() { closed <- c.g.d.Close() }()
	time.Sleep(200 * time.Millisecond)
	got, err := io.ReadAll(hc)
	if err != nil {
		t.Fatalf("read after Close: %v", err)
	}
	if !bytes.Equal(got, toHost) {
		t.Fatalf("the host read %d bytes after the device closed, want the %d the guest sent", len(got), len(toHost))
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}

	// A host that never reads: Close gives up after flushTimeout.
	c2, _ := guestDials(t, 40001, 6000, 65536)
	c2.write(pattern("unread", bufAlloc))
	start := time.Now()
	c2.g.d.Close()
	if d := time.Since(start); d > flushTimeout+5*time.Second {
		t.Fatalf("Close took %v with a host that does not read; the bound is %v", d, flushTimeout)
	}
}
