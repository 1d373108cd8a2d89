// Package vsock is virtio-vsock (virtio 1.2 §5.10) served in userspace,
// with the host side in Firecracker's hybrid model: a host process talks
// to the guest through Unix sockets instead of AF_VSOCK. It exists because
// sandbox runtimes expect exactly that channel (an agent in the guest, a
// controller on the host) without needing vhost-vsock in the host kernel.
//
// Host-initiated connections arrive on the Unix socket Config.Socket: the
// client writes "CONNECT <port>\n", the device sends the guest a
// connection request to that port, and once the guest accepts, the
// client reads "OK <hostport>\n" and the socket carries the stream.
// Guest-initiated connections to the host (CID 2) port P are connected to
// the Unix socket "<Socket>_P", which a host process must listen on.
//
// Every packet the guest sends is untrusted: a malformed chain puts the
// device into DEVICE_NEEDS_RESET, a packet that breaks a connection's
// rules (data past its credit, data on a connection that is not open)
// resets that connection only. Each connection is served by a reader and
// a writer goroutine off the vCPU and queue goroutines, and both end with
// the connection.
package vsock

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"govmm/internal/optlist"
	"govmm/virtio"
)

// HostCID is the host's address; the guest reaches the host there.
const HostCID = 2

// Queues and their maximum sizes.
const (
	rxQ = iota
	txQ
	evQ

	// QueueSize is each queue's maximum size.
	QueueSize = 256
)

const (
	// maxPayload bounds one packet's payload either way (Linux's
	// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
	maxPayload = 64 << 10
	// bufAlloc is each connection's buffer for the guest's data on its
	// way to the host socket: the credit the guest gets.
	bufAlloc = 256 << 10
	// maxConns bounds the connections (each holds a socket and two
	// goroutines), maxCtrl the control packets waiting for buffers.
	maxConns = 1024
	maxCtrl  = 4 * maxConns
	// firstLocalPort is where host-initiated connections' host ports
	// start (Firecracker's choice too: above what guests listen on).
	firstLocalPort = 1 << 30

	// acceptTimeout bounds the guest's answer to a connection request,
	// lineTimeout the host client's CONNECT line, dialTimeout the host
	// socket a guest connects to.
	acceptTimeout = 10 * time.Second
	lineTimeout   = 10 * time.Second
	dialTimeout   = 2 * time.Second

	eventTransportReset = 0
	cfgLen              = 8
)

// Config is the --vsock flag.
type Config struct {
	// CID is the guest's address (3 and up).
	CID uint64
	// Socket is the host-side Unix socket path.
	Socket string
	// Packed offers packed virtqueues (VIRTIO_F_RING_PACKED).
	Packed bool
	// Vhost serves the device through the kernel's vhost-vsock
	// (/dev/vhost-vsock, NewVhost) instead of in userspace: host
	// processes then use AF_VSOCK with the guest's CID, and Socket is
	// empty.
	Vhost bool
	// VhostPath is the vhost-vsock device (default VhostDevice).
	VhostPath string
}

// VhostDevice is where the kernel's vhost-vsock device is.
const VhostDevice = "/dev/vhost-vsock"

// ParseFlag parses cid=N[,socket=PATH][,backend=vhost|hybrid][,packed=on|off]
// (",," in a value is a literal comma, as in QEMU: optlist):
// with socket= the device is Firecracker's hybrid one served in
// userspace; without it (or with backend=vhost) the kernel's vhost-vsock
// serves the guest's CID, as QEMU's vhost-vsock-pci guest-cid=N does.
func ParseFlag(s string) (Config, error) {
	var c Config
	haveCID := false
	backend := ""
	opts, err := optlist.Parse(s)
	if err != nil {
		return c, fmt.Errorf("--vsock %q: %w", s, err)
	}
	for _, o := range opts {
		k, v := o.Key, o.Value
		switch k {
		case "cid":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return c, fmt.Errorf("--vsock %q: cid %q is not a number", s, v)
			}
			c.CID, haveCID = n, true
		case "socket":
			c.Socket = v
		case "backend":
			switch v {
			case "vhost":
				backend = "vhost"
			case "hybrid":
				backend = "hybrid"
			default:
				return c, fmt.Errorf("--vsock %q: backend=%s, want vhost or hybrid", s, v)
			}
		case "packed":
			on, ok := virtio.ParseOnOff(v)
			if !ok {
				return c, fmt.Errorf("--vsock %q: packed=%s, want on or off", s, v)
			}
			c.Packed = on
		default:
			return c, fmt.Errorf("--vsock %q: unknown option %q (want cid, socket, backend, packed)", s, k)
		}
	}
	switch {
	case !haveCID:
		return c, fmt.Errorf("--vsock %q: no cid=", s)
	case c.CID < 3 || c.CID >= 0xffffffff:
		// 0-2 are the hypervisor, local and host addresses; -1U is
		// VMADDR_CID_ANY.
		return c, fmt.Errorf("--vsock %q: cid %d is reserved (want 3..4294967294)", s, c.CID)
	case backend == "hybrid" && c.Socket == "":
		return c, fmt.Errorf("--vsock %q: backend=hybrid needs socket=PATH", s)
	case backend == "vhost" && c.Socket != "":
		return c, fmt.Errorf("--vsock %q: backend=vhost takes no socket= (host processes use AF_VSOCK with cid %d)", s, c.CID)
	}
	c.Vhost = c.Socket == ""
	if c.Vhost && c.Packed {
		return c, fmt.Errorf("--vsock %q: packed=on needs the hybrid backend (socket=PATH): the kernel's vhost-vsock serves split rings only", s)
	}
	return c, nil
}

// Device is one virtio-vsock device.
type Device struct {
	cfg Config
	log *slog.Logger
	ln  *net.UnixListener

	mu sync.Mutex
	// cond wakes connections' goroutines: a receive buffer arrived,
	// credit changed, data or a shutdown arrived, a connection ended.
	cond     *sync.Cond
	active   bool
	closed   bool
	features uint64
	// rx are the driver's receive buffers the device keeps, in the
	// order it got them; ev is the event queue.
	rx []kept
	ev eventQueue
	// ctrl are the control packets waiting for receive buffers; they go
	// before data.
	ctrl      []ctrlPkt
	conns     map[connKey]*conn
	localUsed map[uint32]bool
	nextLocal uint32
	// handshakes are host clients that have not sent CONNECT yet.
	handshakes map[net.Conn]bool
	wg         sync.WaitGroup
}

type kept struct {
	c    *virtio.Chain
	done func(uint32)
}

type ctrlPkt struct {
	key   connKey
	op    uint16
	flags uint32
	c     *conn // nil for an RST to a connection the device does not know
}

// connKey is a connection's host port and guest port.
type connKey struct{ local, peer uint32 }

type connState int

const (
	stateRequested   connState = iota // host-initiated: waiting for the guest's RESPONSE
	stateDialing                      // guest-initiated: connecting to the host socket
	stateEstablished                  // both sides open
)

// conn is one connection. Its fields are guarded by Device.mu.
type conn struct {
	key   connKey
	uc    net.Conn
	state connState
	// accepted is closed when the guest answers a host-initiated
	// request; gone when the connection ends.
	accepted, gone chan struct{}
	closed         bool

	// Guest to host: wbuf waits for the writer; rxCnt counts the
	// guest's payload bytes, fwdCnt those written to the socket,
	// sentFwd the fwd_cnt the guest last heard.
	wbuf                   []byte
	rxCnt, fwdCnt, sentFwd uint32
	creditQueued           bool
	// wrClosed: the guest shut down sending and all its data was
	// written, so the socket's write side is shut.
	wrClosed bool

	// Host to guest: the guest's buffer and what it consumed, and what
	// the device sent.
	peerBufAlloc, peerFwdCnt, txCnt uint32
	creditAsked                     bool
	// peerShut is the SHUTDOWN flags the guest sent; hostEOF: the host
	// socket ended and the guest heard SHUTDOWN(SEND).
	peerShut uint32
	hostEOF  bool
}

// New listens on c.Socket (a stale socket file nobody serves is
// replaced) and returns the device.
func New(c Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	if st, err := os.Lstat(c.Socket); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("vsock: %s exists and is not a socket", c.Socket)
		}
		if cn, err := net.Dial("unix", c.Socket); err == nil {
			cn.Close()
			return nil, fmt.Errorf("vsock: %s is in use by another process", c.Socket)
		}
		if err := os.Remove(c.Socket); err != nil {
			return nil, fmt.Errorf("vsock: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: c.Socket, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	d := &Device{cfg: c, log: log, ln: ln, conns: map[connKey]*conn{}, localUsed: map[uint32]bool{},
		nextLocal: firstLocalPort, handshakes: map[net.Conn]bool{}}
	d.cond = sync.NewCond(&d.mu)
	d.wg.Add(1)
	go d.acceptLoop()
	return d, nil
}

// Close stops listening, ends every connection and waits for their
// goroutines.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.flush(flushTimeout)
	for _, c := range d.conns {
		d.teardown(c, false)
	}
	for h := range d.handshakes {
		h.Close()
	}
	d.cond.Broadcast()
	d.mu.Unlock()
	err := d.ln.Close()
	d.wg.Wait()
	return err
}

// flushTimeout bounds how long Close waits for host sockets to take the
// bytes the guest already sent.
const flushTimeout = time.Second

// flush waits, for at most timeout, until every connection's writer has
// handed its host socket the bytes the device took off the guest's
// transmit queue: the guest counts them as sent (a guest that writes its
// last bytes, closes and powers off at once loses nothing the device
// holds), but a host peer that does not read cannot hold the VM's exit
// longer. Called with mu held.
func (d *Device) flush(timeout time.Duration) {
	pending := func() bool {
		for _, c := range d.conns {
			if !c.closed && c.uc != nil && c.rxCnt != c.fwdCnt {
				return true
			}
		}
		return false
	}
	if !pending() {
		return
	}
	deadline := time.Now().Add(timeout)
	for _, c := range d.conns {
		if c.uc != nil {
			c.uc.SetWriteDeadline(deadline)
		}
	}
	wake := time.AfterFunc(timeout, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer wake.Stop()
	for pending() && time.Now().Before(deadline) {
		d.cond.Wait()
	}
}

func (d *Device) Type() uint16       { return virtio.IDVsock }
func (d *Device) Name() string       { return "virtio-vsock" }
func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// Features offers none: stream sockets are implied (SEQPACKET is not
// served).
func (d *Device) Features() uint64 { return 0 }

// Describe names the guest's CID, which a restore must keep (the guest
// knows it); the host socket may move.
func (d *Device) Describe() string { return fmt.Sprintf("virtio-vsock cid=%d", d.cfg.CID) }

// OfferPacked implements virtio.PackedOfferer (packed=on).
func (d *Device) OfferPacked() bool { return d.cfg.Packed }

// ReadConfig reads struct virtio_vsock_config (the guest CID).
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [cfgLen]byte
	le.PutUint64(c[:], d.cfg.CID)
	virtio.ReadConfigImage(c[:], off, data)
}

// WriteConfig drops the write: the CID is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate starts serving with the negotiated features.
func (d *Device) Activate(features uint64) error {
	d.mu.Lock()
	d.active, d.features = true, features
	d.cond.Broadcast()
	d.unlock()
	return nil
}

// Reset ends every connection (the driver that knew them is gone) and
// forgets the buffers.
func (d *Device) Reset() {
	d.mu.Lock()
	d.active, d.features = false, 0
	for _, c := range d.conns {
		d.teardown(c, false)
	}
	d.rx, d.ev, d.ctrl = nil, eventQueue{}, nil
	d.cond.Broadcast()
	d.mu.Unlock()
}

// Restored tells the driver, through the event queue, that the transport
// was reset: connections do not survive a snapshot (the host sockets
// were the saved process's), so the guest closes its own.
func (d *Device) Restored() {
	d.mu.Lock()
	d.ev.resetPending = true
	d.unlock()
}

// Unkeep gives back the receive or event buffers the device keeps.
func (d *Device) Unkeep(q int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	var n int
	switch q {
	case rxQ:
		n, d.rx = len(d.rx), nil
	case evQ:
		n = d.ev.unkeep()
	}
	return n
}

// Handle keeps receive and event buffers and serves transmitted packets.
func (d *Device) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	switch q {
	case rxQ, evQ:
		min := uint64(hdrLen + 1)
		if q == evQ {
			min = 4
		}
		if len(c.Readable) > 0 || c.WritableLen() < min {
			return fmt.Errorf("buffer %d has %d device-readable and %d device-writable bytes, want none and at least %d",
				c.Head, c.ReadableLen(), c.WritableLen(), min)
		}
		d.mu.Lock()
		if q == rxQ {
			d.rx = append(d.rx, kept{c, done})
		} else {
			d.ev.bufs = append(d.ev.bufs, kept{c, done})
		}
		d.cond.Broadcast()
		d.unlock()
		return nil
	case txQ:
		if err := d.transmit(c); err != nil {
			return err
		}
		done(0)
		return nil
	}
	return fmt.Errorf("no queue %d", q)
}

// unlock delivers the control packets and the transport reset event that
// have buffers, then unlocks mu and completes those buffers (completion
// takes the transport's lock, which the transport holds while it calls
// the device: never both).
func (d *Device) unlock() {
	var comps []func()
	for d.active && len(d.ctrl) > 0 && len(d.rx) > 0 {
		p, k := d.ctrl[0], d.rx[0]
		d.ctrl, d.rx = d.ctrl[1:], d.rx[1:]
		h := d.header(p.key, p.op, p.c)
		h.Flags = p.flags
		if p.c != nil && p.op == opCreditUpdate {
			p.c.creditQueued = false
		}
		var b [hdrLen]byte
		h.put(b[:])
		k.c.Write(0, b[:])
		comps = append(comps, func() { k.done(hdrLen) })
	}
	if f := d.ev.deliver(d.active); f != nil {
		comps = append(comps, f)
	}
	d.mu.Unlock()
	for _, f := range comps {
		f()
	}
}

// header is the header of a packet to the guest on connection key; c
// (nil for an unknown connection) gives the credit fields.
func (d *Device) header(key connKey, op uint16, c *conn) header {
	h := header{SrcCID: HostCID, DstCID: d.cfg.CID, SrcPort: key.local, DstPort: key.peer, Type: typeStream, Op: op}
	if c != nil {
		h.BufAlloc, h.FwdCnt = bufAlloc, c.fwdCnt
		c.sentFwd = c.fwdCnt
	}
	return h
}

// send queues a control packet. An RST to a connection the device does
// not know is dropped when the queue is long already: a guest that sends
// garbage and posts no receive buffers must not grow it without bound
// (each live connection queues at most a few). Called with mu held.
func (d *Device) send(key connKey, op uint16, flags uint32, c *conn) {
	if c == nil && len(d.ctrl) >= maxCtrl {
		return
	}
	d.ctrl = append(d.ctrl, ctrlPkt{key: key, op: op, flags: flags, c: c})
}

// transmit serves one packet from the guest.
func (d *Device) transmit(ch *virtio.Chain) error {
	if len(ch.Writable) > 0 {
		return fmt.Errorf("packet %d has %d device-writable bytes; transmitted packets have none", ch.Head, ch.WritableLen())
	}
	var hb [hdrLen]byte
	h, err := parseHeader(hb[:ch.Read(0, hb[:])])
	if err != nil {
		return fmt.Errorf("packet %d: %w", ch.Head, err)
	}
	v, err := h.check(d.cfg.CID, ch.ReadableLen()-hdrLen)
	if err != nil {
		return fmt.Errorf("packet %d (%v): %w", ch.Head, h, err)
	}
	d.mu.Lock()
	defer d.unlock()
	switch v {
	case drop:
		d.log.Debug("vsock: packet dropped", "packet", h.String())
		return nil
	case reset:
		d.send(connKey{local: h.DstPort, peer: h.SrcPort}, opRST, 0, nil)
		return nil
	}
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	c := d.conns[key]
	if c == nil {
		switch h.Op {
		case opRequest:
			d.guestConnect(key, h)
		case opRST:
		default:
			d.send(key, opRST, 0, nil)
		}
		return nil
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	if d.credit(c) > 0 {
		c.creditAsked = false
	}
	d.cond.Broadcast()
	switch h.Op {
	case opRequest:
		d.log.Debug("vsock: a second connection request on a live connection", "packet", h.String())
		d.teardown(c, true)
	case opResponse:
		if c.state != stateRequested {
			d.teardown(c, true)
			return nil
		}
		c.state = stateEstablished
		close(c.accepted)
	case opRST:
		d.teardown(c, false)
	case opShutdown:
		c.peerShut |= h.Flags & (shutRcv | shutSend)
		d.finish(c)
	case opRW:
		switch {
		case c.state != stateEstablished, c.peerShut&shutSend != 0:
			d.teardown(c, true)
		case uint64(c.rxCnt-c.fwdCnt)+uint64(h.Len) > bufAlloc:
			d.log.Warn("vsock: the guest sent past its credit; connection reset", "packet", h.String(),
				"buffered", c.rxCnt-c.fwdCnt, "buf_alloc", bufAlloc)
			d.teardown(c, true)
		default:
			n := len(c.wbuf)
			c.wbuf = append(c.wbuf, make([]byte, h.Len)...)
			ch.Read(hdrLen, c.wbuf[n:])
			c.rxCnt += h.Len
		}
	case opCreditUpdate:
	case opCreditRequest:
		if !c.creditQueued {
			c.creditQueued = true
			d.send(key, opCreditUpdate, 0, c)
		}
	}
	return nil
}

func newConn(key connKey, st connState) *conn {
	return &conn{key: key, state: st, accepted: make(chan struct{}), gone: make(chan struct{})}
}

// credit is how many bytes the guest can take now. Called with mu held.
func (d *Device) credit(c *conn) uint32 {
	inflight := c.txCnt - c.peerFwdCnt
	if inflight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inflight
}

// teardown ends connection c, with an RST to the guest if rst. Called
// with mu held; the goroutines end on their own (their socket is
// closed, the cond wakes them).
func (d *Device) teardown(c *conn, rst bool) {
	if c.closed {
		return
	}
	c.closed = true
	delete(d.conns, c.key)
	if c.key.local >= firstLocalPort {
		delete(d.localUsed, c.key.local)
	}
	// If the guest never saw its request, the connection's packets go
	// and it needs no RST either.
	unseen := false
	for _, p := range d.ctrl {
		unseen = unseen || p.c == c && p.op == opRequest
	}
	if unseen {
		kept := d.ctrl[:0]
		for _, p := range d.ctrl {
			if p.c != c {
				kept = append(kept, p)
			}
		}
		clear(d.ctrl[len(kept):])
		d.ctrl = kept
	}
	if rst && !unseen {
		d.send(c.key, opRST, 0, nil)
	}
	if c.uc != nil {
		c.uc.Close()
	}
	close(c.gone)
	d.cond.Broadcast()
}

// finish ends a connection both sides are done with: the guest sent its
// last byte and it was written, and the host sent its last or the guest
// wants no more. Called with mu held.
func (d *Device) finish(c *conn) {
	if !c.closed && c.wrClosed && (c.hostEOF || c.peerShut&shutRcv != 0) {
		d.teardown(c, true)
	}
}

// guestConnect starts connecting the guest's request to the host socket
// for its port. Called with mu held.
func (d *Device) guestConnect(key connKey, h header) {
	if d.closed || len(d.conns) >= maxConns {
		d.send(key, opRST, 0, nil)
		return
	}
	c := newConn(key, stateDialing)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	d.conns[key] = c
	d.wg.Add(1)
	go d.dial(c)
}

func (d *Device) dial(c *conn) {
	defer d.wg.Done()
	path := d.cfg.Socket + "_" + strconv.FormatUint(uint64(c.key.local), 10)
	uc, err := net.DialTimeout("unix", path, dialTimeout)
	d.mu.Lock()
	defer d.unlock()
	if err != nil || c.closed {
		if uc != nil {
			uc.Close()
		}
		if err != nil {
			d.log.Debug("vsock: the guest's connection to the host found no listener", "port", c.key.local, "err", err)
		}
		d.teardown(c, true)
		return
	}
	c.uc, c.state = uc, stateEstablished
	d.send(c.key, opResponse, 0, c)
	d.startIO(c)
}

// startIO starts c's reader and writer. Called with mu held.
func (d *Device) startIO(c *conn) {
	d.wg.Add(2)
	go d.reader(c)
	go d.writer(c)
}

func (d *Device) acceptLoop() {
	defer d.wg.Done()
	for {
		uc, err := d.ln.Accept()
		if err != nil {
			d.mu.Lock()
			closed := d.closed
			d.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("vsock: accept", "socket", d.cfg.Socket, "err", err)
			time.Sleep(100 * time.Millisecond) // out of fds: do not spin
			continue
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			uc.Close()
			return
		}
		d.handshakes[uc] = true
		d.wg.Add(1)
		d.mu.Unlock()
		go d.hostConnect(uc)
	}
}

// readLine reads one line of at most 64 bytes, byte by byte so that what
// the client sends after it stays in the socket.
func readLine(r io.Reader) (string, error) {
	var b []byte
	var one [1]byte
	for len(b) < 64 {
		if _, err := io.ReadFull(r, one[:]); err != nil {
			return "", err
		}
		if one[0] == '\n' {
			return strings.TrimSuffix(string(b), "\r"), nil
		}
		b = append(b, one[0])
	}
	return "", errors.New("line longer than 64 bytes")
}

// parseConnect parses a host client's "CONNECT <port>" line.
func parseConnect(line string) (uint32, error) {
	p, ok := strings.CutPrefix(line, "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("%q is not CONNECT <port>", line)
	}
	n, err := strconv.ParseUint(p, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q: bad port", line)
	}
	return uint32(n), nil
}

// hostConnect serves one host client: its CONNECT line, the request to
// the guest, and the OK once the guest accepts.
func (d *Device) hostConnect(uc net.Conn) {
	defer d.wg.Done()
	uc.SetDeadline(time.Now().Add(lineTimeout))
	line, err := readLine(uc)
	d.mu.Lock()
	delete(d.handshakes, uc)
	if err == nil && d.closed {
		err = errors.New("the device is closing")
	}
	var port uint32
	if err == nil {
		port, err = parseConnect(line)
	}
	if err == nil && len(d.conns) >= maxConns {
		err = fmt.Errorf("%d connections open", maxConns)
	}
	if err != nil {
		d.mu.Unlock()
		d.log.Debug("vsock: host client refused", "socket", d.cfg.Socket, "err", err)
		uc.Close()
		return
	}
	for d.localUsed[d.nextLocal] {
		d.nextLocal++
		if d.nextLocal == 0 {
			d.nextLocal = firstLocalPort
		}
	}
	key := connKey{local: d.nextLocal, peer: port}
	d.nextLocal++
	if d.nextLocal == 0 {
		d.nextLocal = firstLocalPort
	}
	d.localUsed[key.local] = true
	c := newConn(key, stateRequested)
	c.uc = uc
	d.conns[key] = c
	d.send(key, opRequest, 0, c)
	d.unlock()

	t := time.NewTimer(acceptTimeout)
	defer t.Stop()
	select {
	case <-c.accepted:
	case <-c.gone:
		return
	case <-t.C:
		d.mu.Lock()
		d.log.Debug("vsock: the guest did not answer a connection request", "port", port)
		d.teardown(c, true)
		d.unlock()
		return
	}
	uc.SetDeadline(time.Now().Add(lineTimeout))
	_, err = fmt.Fprintf(uc, "OK %d\n", key.local)
	uc.SetDeadline(time.Time{})
	d.mu.Lock()
	defer d.unlock()
	if err != nil || c.closed {
		d.teardown(c, true)
		return
	}
	d.startIO(c)
}

// reader carries the host socket's data to the guest, within the credit
// the guest gives.
func (d *Device) reader(c *conn) {
	defer d.wg.Done()
	buf := make([]byte, maxPayload)
	for {
		d.mu.Lock()
		for !c.closed && (c.peerShut&shutRcv != 0 || d.credit(c) == 0) {
			if c.peerShut&shutRcv == 0 && !c.creditAsked {
				// Out of credit: ask, in case the guest's
				// update was lost with a reset buffer.
				c.creditAsked = true
				d.send(c.key, opCreditRequest, 0, c)
				d.unlock()
				d.mu.Lock()
				continue
			}
			d.cond.Wait()
		}
		if c.closed {
			d.mu.Unlock()
			return
		}
		n := min(d.credit(c), uint32(len(buf)))
		d.mu.Unlock()
		k, err := c.uc.Read(buf[:n])
		if k > 0 && !d.deliver(c, buf[:k]) {
			return
		}
		if err != nil {
			d.mu.Lock()
			if errors.Is(err, io.EOF) && !c.closed {
				c.hostEOF = true
				d.send(c.key, opShutdown, shutSend, c)
				d.finish(c)
			} else {
				d.teardown(c, true)
			}
			d.unlock()
			return
		}
	}
}

// deliver puts data into the guest's receive buffers, after the control
// packets waiting. It reports false when the connection ended first.
func (d *Device) deliver(c *conn, data []byte) bool {
	d.mu.Lock()
	for len(data) > 0 {
		for !c.closed && (!d.active || len(d.rx) == 0 || len(d.ctrl) > 0) {
			d.cond.Wait()
		}
		if c.closed {
			d.mu.Unlock()
			return false
		}
		k := d.rx[0]
		d.rx = d.rx[1:]
		n := min(uint64(len(data)), k.c.WritableLen()-hdrLen)
		h := d.header(c.key, opRW, c)
		h.Len = uint32(n)
		var b [hdrLen]byte
		h.put(b[:])
		k.c.Write(0, b[:])
		k.c.Write(hdrLen, data[:n])
		c.txCnt += uint32(n)
		data = data[n:]
		d.mu.Unlock()
		k.done(uint32(hdrLen + n))
		d.mu.Lock()
	}
	d.unlock()
	return true
}

// writer carries the guest's data to the host socket, and gives the guest
// credit back as it goes.
func (d *Device) writer(c *conn) {
	defer d.wg.Done()
	d.mu.Lock()
	for {
		for !c.closed && len(c.wbuf) == 0 && (c.peerShut&shutSend == 0 || c.wrClosed) {
			d.cond.Wait()
		}
		if c.closed {
			d.mu.Unlock()
			return
		}
		if len(c.wbuf) == 0 {
			// The guest sent its last byte and it is written.
			c.wrClosed = true
			if cw, ok := c.uc.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			d.finish(c)
			d.unlock()
			d.mu.Lock()
			continue
		}
		data := c.wbuf
		c.wbuf = nil
		d.mu.Unlock()
		n, err := c.uc.Write(data)
		d.mu.Lock()
		c.fwdCnt += uint32(n)
		d.cond.Broadcast() // Close may be waiting for the flush
		if err != nil {
			if !c.closed && !errors.Is(err, syscall.EPIPE) {
				d.log.Debug("vsock: host socket write", "port", c.key.local, "err", err)
			}
			d.teardown(c, true)
			d.unlock()
			return
		}
		// The guest stalls once it believes less than half the buffer
		// is free: tell it what was consumed.
		if free := bufAlloc - (c.rxCnt - c.sentFwd); c.fwdCnt != c.sentFwd && free < bufAlloc/2 && !c.creditQueued {
			c.creditQueued = true
			d.send(c.key, opCreditUpdate, 0, c)
		}
		d.unlock()
		d.mu.Lock()
	}
}
