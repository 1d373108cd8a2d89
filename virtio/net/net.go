// Package net is virtio-net (virtio 1.2 §5.1) backed by a host TAP device
// in IFF_VNET_HDR mode, so that a guest's Ethernet frames reach the host's
// network stack (a bridge, a namespace, routing) with their checksum and
// segmentation offloads intact.
//
// A device has one or more queue pairs (queues=N). With one, it has a
// receive and a transmit queue, as a device without VIRTIO_NET_F_MQ. With
// N > 1 it opens the TAP with IFF_MULTI_QUEUE, one file per pair, offers
// VIRTIO_NET_F_MQ with a control queue (ctrl.go), and attaches a pair's
// TAP queue only while the driver has it enabled. Each pair's receive
// side runs on its own goroutine that reads its TAP queue, its transmit
// side on the transport's goroutine for that queue, all off the vCPU
// threads.
//
// The device offers only the offloads the TAP carries in its virtio-net
// header: partial checksums and TCP segmentation (IPv4 and IPv6) in both
// directions. The guest's headers are checked against what it negotiated
// before they reach the TAP.
package net

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"govmm/internal/optlist"
	"govmm/virtio"
)

// Feature bits (virtio 1.2 §5.1.3).
const (
	fCsum      = 1 << 0
	fGuestCsum = 1 << 1
	fMAC       = 1 << 5
	fGuestTSO4 = 1 << 7
	fGuestTSO6 = 1 << 8
	fHostTSO4  = 1 << 11
	fHostTSO6  = 1 << 12
	fMrgRxbuf  = 1 << 15
	fStatus    = 1 << 16
	fCtrlVQ    = 1 << 17
	fCtrlRx    = 1 << 18
	fMQ        = 1 << 22

	offered = fCsum | fGuestCsum | fMAC | fGuestTSO4 | fGuestTSO6 | fHostTSO4 | fHostTSO6 | fMrgRxbuf | fStatus
	// offeredMQ is what a device with more than one queue pair adds: the
	// control queue, the receive-mode commands on it, and multiqueue.
	offeredMQ = fCtrlVQ | fCtrlRx | fMQ
)

// virtio_net_hdr flags and GSO types.
const (
	hdrFNeedsCsum = 1
	hdrFDataValid = 2
	gsoNone       = 0
	gsoTCPv4      = 1
	gsoTCPv6      = 4
)

const (
	// QueueSize is each receive and transmit queue's maximum size.
	QueueSize = 256
	// CtrlQueueSize is the control queue's maximum size.
	CtrlQueueSize = 64
	// MaxQueuePairs bounds queues=N.
	MaxQueuePairs = 16
	// maxFrame bounds one packet either way: a 64 KiB TSO segment's
	// payload with its headers, and the virtio-net header.
	maxFrame  = vnetHdrLen + 65536 + 14 + 4
	statusUp  = 1
	cfgLen    = 10
	macLen    = 6
	macPrefix = "52:54:00"
)

// Config is the --net flag.
type Config struct {
	Tap string
	// MAC is the guest's address; empty derives one from the TAP's name
	// (so a restore with the same flags finds the same).
	MAC string
	// Packed offers packed virtqueues (VIRTIO_F_RING_PACKED).
	Packed bool
	// Queues is the number of queue pairs, 1..MaxQueuePairs (0 means 1).
	Queues int
	// Vhost has the kernel's vhost-net serve the receive and transmit
	// queues (vhost=on, OpenVhost): one /dev/vhost-net file per pair
	// reads and writes the pair's TAP queue itself.
	Vhost bool
	// VhostPath is the vhost-net device (default VhostDevice).
	VhostPath string
}

// ParseFlag parses tap=NAME[,mac=MAC][,packed=on|off][,queues=N][,vhost=on|off],
// where ",," in a value is a literal comma, as in QEMU (optlist): Linux
// allows a comma in an interface's name.
func ParseFlag(s string) (Config, error) {
	c := Config{Queues: 1}
	opts, err := optlist.Parse(s)
	if err != nil {
		return c, fmt.Errorf("--net %q: %w", s, err)
	}
	for _, o := range opts {
		k, v := o.Key, o.Value
		switch k {
		case "tap":
			c.Tap = v
		case "mac":
			mac, err := parseMAC(v)
			if err != nil {
				return c, fmt.Errorf("--net %q: %w", s, err)
			}
			c.MAC = mac
		case "packed":
			on, ok := virtio.ParseOnOff(v)
			if !ok {
				return c, fmt.Errorf("--net %q: packed=%s, want on or off", s, v)
			}
			c.Packed = on
		case "queues":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxQueuePairs {
				return c, fmt.Errorf("--net %q: queues=%s, want a number of queue pairs in 1..%d", s, v, MaxQueuePairs)
			}
			c.Queues = n
		case "vhost":
			on, ok := virtio.ParseOnOff(v)
			if !ok {
				return c, fmt.Errorf("--net %q: vhost=%s, want on or off", s, v)
			}
			c.Vhost = on
		default:
			return c, fmt.Errorf("--net %q: unknown option %q (want tap, mac, packed, queues, vhost)", s, k)
		}
	}
	if c.Tap == "" {
		return c, fmt.Errorf("--net %q: no tap=", s)
	}
	if c.MAC == "" {
		c.MAC = derivedMAC(c.Tap)
	}
	return c, nil
}

// parseMAC is a mac= value in its canonical form (lower case, colons):
// a 6-byte unicast Ethernet address.
func parseMAC(v string) (string, error) {
	hw, err := stdnet.ParseMAC(v)
	if err != nil || len(hw) != macLen {
		return "", fmt.Errorf("mac %q is not a 6-byte Ethernet address", v)
	}
	if hw[0]&1 != 0 {
		return "", fmt.Errorf("mac %s is a multicast address", v)
	}
	return hw.String(), nil
}

// Spec is c in ParseFlag's syntax, such that ParseFlag(c.Spec()) is c
// (its MAC derived from the TAP's name when c has none, in canonical
// form, and Queues 1 when 0): how a snapshot or a live migration records
// a hot-added network device. A comma in the TAP's name is written as
// ",,". A vhost device path (which the syntax does not take), and what
// ParseFlag refuses (no TAP, a bad MAC, a queue count outside
// 1..MaxQueuePairs), have no such form, and Spec says so.
func (c Config) Spec() (string, error) {
	switch {
	case c.Tap == "":
		return "", errors.New("virtio-net: no TAP")
	case c.VhostPath != "":
		return "", fmt.Errorf("virtio-net %s: the vhost device path %s has no --net form", c.Tap, c.VhostPath)
	case c.Queues < 0 || c.Queues > MaxQueuePairs:
		return "", fmt.Errorf("virtio-net %s: %d queue pairs, want 1..%d", c.Tap, c.Queues, MaxQueuePairs)
	}
	mac := c.MAC
	if mac == "" {
		mac = derivedMAC(c.Tap)
	} else if _, err := parseMAC(mac); err != nil {
		return "", fmt.Errorf("virtio-net %s: %w", c.Tap, err)
	}
	opts := []optlist.Option{{Key: "tap", Value: c.Tap}, {Key: "mac", Value: mac}}
	if c.Packed {
		opts = append(opts, optlist.Option{Key: "packed", Value: "on"})
	}
	if c.Queues > 1 {
		opts = append(opts, optlist.Option{Key: "queues", Value: strconv.Itoa(c.Queues)})
	}
	if c.Vhost {
		opts = append(opts, optlist.Option{Key: "vhost", Value: "on"})
	}
	return optlist.Join(opts...), nil
}

// derivedMAC is the MAC of a device given no mac=: the QEMU/KVM prefix
// and three bytes of the TAP name's hash.
func derivedMAC(tap string) string {
	h := sha256.Sum256([]byte(tap))
	return fmt.Sprintf("%s:%02x:%02x:%02x", macPrefix, h[0], h[1], h[2])
}

// backend is the TAP as the device uses it (a fake in tests).
type backend interface {
	// queues are the TAP's queue files, one per queue pair: pollable
	// (deadlines work), one packet per read and per writev.
	queues() []*os.File
	// setOffload tells the TAP which offloaded packets the guest takes.
	setOffload(flags int) error
	// setAttached attaches queue i (i > 0) to the TAP, so that the TAP
	// steers packets to it, or detaches it.
	setAttached(i int, on bool) error
	close() error
}

// Device is one virtio-net device.
type Device struct {
	cfg   Config
	mac   stdnet.HardwareAddr
	be    backend
	log   *slog.Logger
	pairs []*pair
	// readers: the pairs' receive goroutines read the TAP (not so under
	// vhost-net, whose TAP files are blocking and outside Go's poller).
	readers bool
	// features are the negotiated features (0 while inactive).
	features atomic.Uint64

	// setMu orders changes of the enabled pairs (the control queue,
	// reset, restore) and guards npairs.
	setMu  sync.Mutex
	npairs int

	mu     sync.Mutex
	active bool
	closed bool
	warned bool
	wg     sync.WaitGroup

	// readerThread is SetReaderThread's hook (nil: none).
	readerThread atomic.Pointer[func(pair int) bool]
}

// pair is one receive and transmit queue pair and its TAP queue.
type pair struct {
	i int
	f *os.File
	// confined: the receive goroutine's thread is locked and its
	// readerThread hook returned true (the goroutine's own).
	confined bool

	mu   sync.Mutex
	cond *sync.Cond
	// rx are the driver's receive buffers, in the order it posted them.
	rx []kept
	// attached: the TAP steers packets to this pair's queue (pair 0:
	// always). on: the device is active and the driver enabled the
	// pair, so its receive queue takes packets.
	attached, on bool
	closed       bool
	// rxDropped and txDropped count packets lost (no room, no driver,
	// or the TAP refused them).
	rxDropped, txDropped uint64
}

type kept struct {
	c    *virtio.Chain
	done func(uint32)
}

// Open attaches to (or creates) the TAP and starts the receive goroutines.
func Open(c Config, log *slog.Logger) (*Device, error) {
	mac, err := checkConfig(&c)
	if err != nil {
		return nil, err
	}
	t, err := openTap(c.Tap, c.Queues, mac)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	return newDevice(c, mac, t, log, true), nil
}

// checkConfig defaults c's queue pairs and MAC and checks them.
func checkConfig(c *Config) (stdnet.HardwareAddr, error) {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.Queues < 1 || c.Queues > MaxQueuePairs {
		return nil, fmt.Errorf("virtio-net %s: %d queue pairs, want 1..%d", c.Tap, c.Queues, MaxQueuePairs)
	}
	if c.MAC == "" {
		c.MAC = derivedMAC(c.Tap)
	}
	mac, err := stdnet.ParseMAC(c.MAC)
	if err != nil || len(mac) != macLen {
		return nil, fmt.Errorf("virtio-net: mac %q is not a 6-byte Ethernet address", c.MAC)
	}
	return mac, nil
}

// newDevice builds the device on a backend whose queues 1.. are
// detached. With readers, each pair has a goroutine that reads its TAP
// queue into the guest's receive buffers; without (vhost-net reads the
// TAP), nothing in the VMM reads it.
func newDevice(c Config, mac stdnet.HardwareAddr, be backend, log *slog.Logger, readers bool) *Device {
	if log == nil {
		log = slog.Default()
	}
	d := &Device{cfg: c, mac: mac, be: be, log: log, npairs: 1, readers: readers}
	if t, ok := be.(*tap); ok && t.hostMAC != nil {
		log.Info("virtio-net: created the TAP", "tap", c.Tap, "host_mac", t.hostMAC.String(), "guest_mac", mac.String())
	}
	for i, f := range be.queues() {
		p := &pair{i: i, f: f, attached: i == 0}
		p.cond = sync.NewCond(&p.mu)
		d.pairs = append(d.pairs, p)
	}
	if !readers {
		return d
	}
	for _, p := range d.pairs {
		d.wg.Add(1)
		go d.receive(p)
	}
	return d
}

// SetReaderThread has each pair's receive goroutine, the one that reads
// its TAP queue and fills the guest's receive buffers, call fn(pair) on
// its thread, locked to it, before it delivers a packet, until fn returns
// true (false: the VMM is not confined yet; the goroutine is unlocked
// again and asks at the next packet). After true the goroutine keeps its
// thread, which ends with it when the device closes: fn is the thread's
// confinement (confine.NetQueueThread).
func (d *Device) SetReaderThread(fn func(pair int) bool) {
	if fn == nil {
		d.readerThread.Store(nil)
		return
	}
	d.readerThread.Store(&fn)
}

// TapFDs returns the descriptors of the TAP's queues, one per pair: the
// only ones a transmitting thread writes packets to.
func (d *Device) TapFDs() ([]int, error) {
	var fds []int
	for _, p := range d.pairs {
		rc, err := p.f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("virtio-net %s: queue %d: %w", d.cfg.Tap, p.i, err)
		}
		if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
			return nil, fmt.Errorf("virtio-net %s: queue %d: %w", d.cfg.Tap, p.i, err)
		}
	}
	return fds, nil
}

// confineReader runs the readerThread hook on pair p's receive goroutine
// until it took (see SetReaderThread).
func (d *Device) confineReader(p *pair) {
	if p.confined {
		return
	}
	fn := d.readerThread.Load()
	if fn == nil {
		return
	}
	runtime.LockOSThread()
	if p.confined = (*fn)(p.i); !p.confined {
		runtime.UnlockOSThread()
	}
}

// Close closes the TAP and waits for the receive goroutines.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	for _, p := range d.pairs {
		p.mu.Lock()
		p.closed = true
		p.cond.Broadcast()
		p.mu.Unlock()
	}
	err := d.be.close()
	d.wg.Wait()
	return err
}

func (d *Device) Type() uint16 { return virtio.IDNet }
func (d *Device) Name() string { return "virtio-net " + d.cfg.Tap }

// mq reports whether the device has more than one queue pair (and so a
// control queue).
func (d *Device) mq() bool { return len(d.pairs) > 1 }

// QueueMax is receiveq1, transmitq1, ... receiveqN, transmitqN and, with
// N > 1, the control queue.
func (d *Device) QueueMax() []uint16 {
	var q []uint16
	for range d.pairs {
		q = append(q, QueueSize, QueueSize)
	}
	if d.mq() {
		q = append(q, CtrlQueueSize)
	}
	return q
}

func (d *Device) Features() uint64 {
	if d.mq() {
		return offered | offeredMQ
	}
	return offered
}

// OfferPacked implements virtio.PackedOfferer (packed=on).
func (d *Device) OfferPacked() bool { return d.cfg.Packed }

// Describe names the TAP, the MAC and, with more than one, the queue
// pairs, which a restore must keep. A single-pair device's description
// is the one it had before multiqueue, so older snapshots restore.
func (d *Device) Describe() string {
	s := fmt.Sprintf("virtio-net tap=%s mac=%s", d.cfg.Tap, d.mac)
	if d.mq() {
		s += fmt.Sprintf(" queues=%d", len(d.pairs))
	}
	return s
}

// HostMAC is the address govmm gave the host side of the TAP when it
// created the TAP (HostMAC of the guest's MAC), nil when it attached to a
// TAP that was there before: what govmm info shows beside the device's
// description, which a restore compares and which this does not join.
func (d *Device) HostMAC() stdnet.HardwareAddr {
	if t, ok := d.be.(*tap); ok {
		return t.hostMAC
	}
	return nil
}

// CreatedNote is what govmm info and add-net add to a device's
// description when govmm created its TAP and gave the host side hostMAC.
func CreatedNote(hostMAC stdnet.HardwareAddr) string {
	return fmt.Sprintf(" (TAP created by govmm, host side %s)", hostMAC)
}

// DeviceNote is CreatedNote for dev when it is a virtio-net device (Device,
// and Vhost through it) on a TAP govmm created, and "" for any other
// device: what govmm info adds to a device's line, on x86 and arm64.
func DeviceNote(dev any) string {
	if n, ok := dev.(interface{ HostMAC() stdnet.HardwareAddr }); ok && n.HostMAC() != nil {
		return CreatedNote(n.HostMAC())
	}
	return ""
}

// ReadConfig reads struct virtio_net_config: the MAC, the link status
// (always up) and max_virtqueue_pairs.
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [cfgLen]byte
	copy(c[:], d.mac)
	binary.LittleEndian.PutUint16(c[6:], statusUp)
	binary.LittleEndian.PutUint16(c[8:], uint16(len(d.pairs)))
	virtio.ReadConfigImage(c[:], off, data)
}

// WriteConfig drops the write (the MAC is writable only with
// VIRTIO_NET_F_CTRL_MAC_ADDR, not offered).
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate tells the TAP which offloaded packets the guest takes and
// starts filling the enabled pairs' receive queues.
func (d *Device) Activate(features uint64) error {
	if features&(fMQ|fCtrlRx) != 0 && features&fCtrlVQ == 0 {
		return fmt.Errorf("the driver accepted MQ or CTRL_RX (features %#x) without CTRL_VQ, which they need", features)
	}
	off := 0
	if features&fGuestCsum != 0 {
		off |= tunFCsum
		if features&fGuestTSO4 != 0 {
			off |= tunFTSO4
		}
		if features&fGuestTSO6 != 0 {
			off |= tunFTSO6
		}
	}
	if err := d.be.setOffload(off); err != nil {
		return err
	}
	d.features.Store(features)
	d.mu.Lock()
	d.active = true
	d.mu.Unlock()
	// The attached pairs are the enabled ones (setPairs keeps them so).
	for _, p := range d.pairs {
		p.mu.Lock()
		p.on = p.attached
		p.cond.Broadcast()
		p.mu.Unlock()
	}
	return nil
}

// Reset forgets the buffers and the offloads, and goes back to one
// queue pair.
func (d *Device) Reset() {
	d.mu.Lock()
	d.active = false
	d.mu.Unlock()
	d.features.Store(0)
	for _, p := range d.pairs {
		p.mu.Lock()
		p.on, p.rx = false, nil
		p.cond.Broadcast()
		p.mu.Unlock()
	}
	if err := d.setPairs(1); err != nil {
		d.log.Warn("virtio-net: reset: detach the TAP's queues", "tap", d.cfg.Tap, "err", err)
	}
	if err := d.be.setOffload(0); err != nil && !errors.Is(err, os.ErrClosed) {
		d.log.Warn("virtio-net: reset offloads", "tap", d.cfg.Tap, "err", err)
	}
}

// setPairs enables queue pairs 0..n-1 and disables the others: their TAP
// queues are attached or detached, so that the TAP steers packets only
// to pairs the driver fills. A pair being disabled stops taking packets
// before its queue is detached, and its receive goroutine is woken from
// its read (a deadline in the past) to wait. If the TAP refuses, the
// pairs go back to what they were, which is what the driver still
// believes once it hears VIRTIO_NET_ERR.
func (d *Device) setPairs(n int) error {
	if n < 1 || n > len(d.pairs) {
		return fmt.Errorf("%d queue pairs, want 1..%d", n, len(d.pairs))
	}
	d.setMu.Lock()
	defer d.setMu.Unlock()
	old := d.npairs
	err := d.applyPairs(n)
	if err != nil && !errors.Is(err, os.ErrClosed) {
		if rerr := d.applyPairs(old); rerr != nil {
			d.log.Warn("virtio-net: back to the queue pairs before a failed change", "tap", d.cfg.Tap,
				"pairs", old, "enabled", d.npairs, "err", rerr)
		}
	}
	return err
}

// applyPairs attaches the pairs below n, upwards, then detaches the
// others, downwards; npairs is then n, or after a failure the pairs
// enabled from 0 on. Called with setMu held.
func (d *Device) applyPairs(n int) error {
	d.mu.Lock()
	active, closed := d.active, d.closed
	d.mu.Unlock()
	if closed {
		return os.ErrClosed
	}
	for _, p := range d.pairs[1:n] {
		if err := d.attachPair(p, active); err != nil {
			d.npairs = d.leadingAttached()
			return err
		}
	}
	for k := len(d.pairs) - 1; k >= n; k-- {
		if err := d.detachPair(d.pairs[k]); err != nil {
			d.npairs = d.leadingAttached()
			return err
		}
	}
	d.npairs = n
	return nil
}

func (d *Device) attachPair(p *pair, active bool) error {
	p.mu.Lock()
	att := p.attached
	p.mu.Unlock()
	if !att {
		if err := d.be.setAttached(p.i, true); err != nil {
			return fmt.Errorf("attach the TAP's queue %d: %w", p.i, err)
		}
		if err := d.setReadDeadline(p, time.Time{}); err != nil {
			d.log.Warn("virtio-net: clear a read deadline", "tap", d.cfg.Tap, "queue", p.i, "err", err)
		}
	}
	p.mu.Lock()
	p.attached, p.on = true, active
	p.cond.Broadcast()
	p.mu.Unlock()
	return nil
}

func (d *Device) detachPair(p *pair) error {
	p.mu.Lock()
	att, on := p.attached, p.on
	p.attached, p.on = false, false
	p.cond.Broadcast()
	p.mu.Unlock()
	if !att {
		return nil
	}
	if err := d.be.setAttached(p.i, false); err != nil {
		// Still attached: the pair goes on as it was.
		p.mu.Lock()
		p.attached, p.on = true, on
		p.cond.Broadcast()
		p.mu.Unlock()
		return fmt.Errorf("detach the TAP's queue %d: %w", p.i, err)
	}
	if err := d.setReadDeadline(p, time.Unix(1, 0)); err != nil {
		d.log.Warn("virtio-net: wake a detached queue's reader", "tap", d.cfg.Tap, "queue", p.i, "err", err)
	}
	return nil
}

// setReadDeadline sets the read deadline of pair p's TAP file, by which
// a detached queue's reader is woken and an attached one's cleared; a
// device without readers (vhost-net's, whose files cannot take one) has
// nothing to wake.
func (d *Device) setReadDeadline(p *pair, t time.Time) error {
	if !d.readers {
		return nil
	}
	return p.f.SetReadDeadline(t)
}

// leadingAttached counts the pairs attached from pair 0 on.
func (d *Device) leadingAttached() int {
	n := 0
	for _, p := range d.pairs {
		p.mu.Lock()
		att := p.attached
		p.mu.Unlock()
		if !att {
			break
		}
		n++
	}
	return n
}

// ctrlQueue is the control queue's index for the negotiated features
// (virtio 1.2 §5.1.2: 2N with MQ, else 2), or -1 without one.
func (d *Device) ctrlQueue(features uint64) int {
	switch {
	case !d.mq() || features&fCtrlVQ == 0:
		return -1
	case features&fMQ != 0:
		return 2 * len(d.pairs)
	}
	return 2
}

// Unkeep gives back a receive queue's buffers.
func (d *Device) Unkeep(q int) int {
	if q%2 != 0 || q/2 >= len(d.pairs) || q == d.ctrlQueue(d.features.Load()) {
		return 0
	}
	p := d.pairs[q/2]
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.rx)
	p.rx = nil
	return n
}

// Handle keeps receive buffers, sends transmitted packets to the TAP,
// and runs control commands.
func (d *Device) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	features := d.features.Load()
	if q == d.ctrlQueue(features) {
		return d.control(c, features, done)
	}
	if q < 0 || q/2 >= len(d.pairs) {
		return fmt.Errorf("no queue %d", q)
	}
	p := d.pairs[q/2]
	if q%2 == 0 {
		if len(c.Readable) > 0 || c.WritableLen() < vnetHdrLen {
			return fmt.Errorf("receive buffer %d has %d device-readable and %d device-writable bytes, want none and at least %d",
				c.Head, c.ReadableLen(), c.WritableLen(), vnetHdrLen)
		}
		p.mu.Lock()
		p.rx = append(p.rx, kept{c, done})
		p.cond.Broadcast()
		p.mu.Unlock()
		return nil
	}
	if err := d.transmit(p, c, features); err != nil {
		return err
	}
	done(0)
	return nil
}

// checkTxHeader checks a transmitted packet's virtio-net header against
// the negotiated features: an offload the guest did not negotiate is
// refused.
func checkTxHeader(h []byte, features uint64, n uint64) error {
	flags, gso := h[0], h[1]
	if flags&^(hdrFNeedsCsum|hdrFDataValid) != 0 {
		return fmt.Errorf("header flags %#x", flags)
	}
	if flags&hdrFNeedsCsum != 0 {
		if features&fCsum == 0 {
			return errors.New("a partial checksum without VIRTIO_NET_F_CSUM")
		}
		start, off := uint64(binary.LittleEndian.Uint16(h[6:])), uint64(binary.LittleEndian.Uint16(h[8:]))
		if start+off+2 > n {
			return fmt.Errorf("checksum at %d+%d is past the %d-byte frame", start, off, n)
		}
	}
	switch gso {
	case gsoNone:
	case gsoTCPv4, gsoTCPv6:
		need := uint64(fHostTSO4)
		if gso == gsoTCPv6 {
			need = fHostTSO6
		}
		if features&need == 0 || flags&hdrFNeedsCsum == 0 {
			return fmt.Errorf("TCP segmentation (type %d) without the feature or a partial checksum", gso)
		}
		if binary.LittleEndian.Uint16(h[4:]) == 0 {
			return errors.New("TCP segmentation with segment size 0")
		}
	default:
		return fmt.Errorf("segmentation type %#x, not offered", gso)
	}
	return nil
}

// transmit sends one packet of pair p: a copy of its header (checked),
// then the guest's buffers as they are. It goes out through the pair's
// TAP queue, or the first pair's while the pair is disabled (a driver
// lowering the number of pairs may still have packets on it).
func (d *Device) transmit(p *pair, c *virtio.Chain, features uint64) error {
	if len(c.Writable) > 0 {
		return fmt.Errorf("packet %d has %d device-writable bytes; transmitted packets have none", c.Head, c.WritableLen())
	}
	n := c.ReadableLen()
	if n < vnetHdrLen {
		return fmt.Errorf("packet %d has %d bytes, less than the %d-byte virtio-net header", c.Head, n, vnetHdrLen)
	}
	var h [vnetHdrLen]byte
	c.Read(0, h[:])
	err := checkTxHeader(h[:], features, n-vnetHdrLen)
	if err == nil && n > maxFrame {
		err = fmt.Errorf("%d bytes, more than the %d a frame may have", n, maxFrame)
	}
	if err != nil {
		d.drop(p, fmt.Errorf("packet %d: %w", c.Head, err))
		return nil
	}
	bufs := [][]byte{h[:]}
	skip := uint64(vnetHdrLen)
	for _, b := range c.Readable {
		if l := uint64(len(b.Bytes)); skip >= l {
			skip -= l
			continue
		}
		bufs = append(bufs, b.Bytes[skip:])
		skip = 0
	}
	p.mu.Lock()
	f := p.f
	if !p.attached {
		f = d.pairs[0].f
	}
	p.mu.Unlock()
	if err := writev(f, bufs); err != nil {
		p.mu.Lock()
		p.txDropped++
		p.mu.Unlock()
		d.log.Debug("virtio-net: the TAP refused a packet", "tap", d.cfg.Tap, "queue", p.i, "err", err)
	}
	return nil
}

// drop counts a packet the guest got wrong, and logs the first.
func (d *Device) drop(p *pair, err error) {
	p.mu.Lock()
	p.txDropped++
	p.mu.Unlock()
	d.mu.Lock()
	first := !d.warned
	d.warned = true
	d.mu.Unlock()
	if first {
		d.log.Warn("virtio-net: the guest sent a packet that breaks its negotiated features; dropped (further ones silently)",
			"device", d.Name(), "queue", p.i, "err", err)
	}
}

// Dropped returns the packets lost so far on each pair's receive and
// transmit side.
func (d *Device) Dropped() (rx, tx []uint64) {
	for _, p := range d.pairs {
		p.mu.Lock()
		rx, tx = append(rx, p.rxDropped), append(tx, p.txDropped)
		p.mu.Unlock()
	}
	return rx, tx
}

// receive reads pair p's TAP queue while it is attached and puts each
// packet into the pair's receive buffers: one buffer, or with
// VIRTIO_NET_F_MRG_RXBUF as many as it takes. It waits for buffers while
// it holds a packet (the TAP queues or drops what comes meanwhile), and
// takes none until all it needs are there, so that a pause can take every
// kept buffer back.
func (d *Device) receive(p *pair) {
	defer d.wg.Done()
	buf := make([]byte, maxFrame)
	for {
		p.mu.Lock()
		for !p.closed && !p.attached {
			p.cond.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		n, err := p.f.Read(buf)
		if err != nil {
			p.mu.Lock()
			closed, attached := p.closed, p.attached
			p.mu.Unlock()
			switch {
			case closed || errors.Is(err, os.ErrClosed):
				return
			case !attached && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.EBADFD)):
				// Detached while reading: wait to be attached again.
				continue
			case errors.Is(err, os.ErrDeadlineExceeded):
				// A detach's wake-up that came after an attach.
				continue
			}
			d.log.Error("virtio-net: TAP read; no more packets reach the guest on this queue", "tap", d.cfg.Tap, "queue", p.i, "err", err)
			return
		}
		if n < vnetHdrLen {
			continue
		}
		d.confineReader(p)
		if !d.deliver(p, buf[:n]) {
			return
		}
	}
}

// deliver puts one packet (with its header) into pair p's receive
// buffers. It reports false once the device is closed.
func (d *Device) deliver(p *pair, pkt []byte) bool {
	need := uint64(len(pkt))
	p.mu.Lock()
	var take []kept
	for {
		if p.closed {
			p.mu.Unlock()
			return false
		}
		if !p.on {
			// No driver, or the pair is disabled: the packet goes
			// nowhere.
			p.rxDropped++
			p.mu.Unlock()
			return true
		}
		mrg := d.features.Load()&fMrgRxbuf != 0
		var have uint64
		k := 0
		for ; k < len(p.rx) && have < need; k++ {
			have += p.rx[k].c.WritableLen()
			if !mrg {
				k++
				break
			}
		}
		if have >= need {
			take = append(take, p.rx[:k]...)
			p.rx = p.rx[k:]
			break
		}
		if (!mrg && len(p.rx) > 0) || len(p.rx) >= QueueSize {
			// Buffers too small for this packet: it cannot be
			// delivered whatever the driver posts next.
			p.rxDropped++
			p.mu.Unlock()
			return true
		}
		p.cond.Wait()
	}
	p.mu.Unlock()
	// num_buffers: how many buffers this packet took.
	binary.LittleEndian.PutUint16(pkt[10:], uint16(len(take)))
	lens := make([]uint32, len(take))
	for i, k := range take {
		w := k.c.Write(0, pkt)
		pkt = pkt[w:]
		lens[i] = uint32(w)
	}
	// The packet's buffers reach the driver together: it reads all
	// num_buffers once it sees the first, and drops the packet if one is
	// not used yet (virtio.More).
	for i, k := range take {
		l := lens[i]
		if i < len(take)-1 {
			l |= virtio.More
		}
		k.done(l)
	}
	return true
}
