// Package net is virtio-net (virtio 1.2 §5.1) backed by a host TAP device
// in IFF_VNET_HDR mode, so that a guest's Ethernet frames reach the host's
// network stack (a bridge, a namespace, routing) with their checksum and
// segmentation offloads intact. One receive and one transmit queue; the
// receive side runs on its own goroutine that reads the TAP, the transmit
// side on the queue's goroutine, both off the vCPU threads.
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
	"strings"
	"sync"

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

	offered = fCsum | fGuestCsum | fMAC | fGuestTSO4 | fGuestTSO6 | fHostTSO4 | fHostTSO6 | fMrgRxbuf | fStatus
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
	rxQ = 0
	txQ = 1
	// QueueSize is each queue's maximum size.
	QueueSize = 256
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
}

// ParseFlag parses tap=NAME[,mac=MAC][,packed=on|off].
func ParseFlag(s string) (Config, error) {
	var c Config
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return c, fmt.Errorf("--net %q: %q is not key=value", s, kv)
		}
		switch k {
		case "tap":
			c.Tap = v
		case "mac":
			hw, err := stdnet.ParseMAC(v)
			if err != nil || len(hw) != macLen {
				return c, fmt.Errorf("--net %q: mac %q is not a 6-byte Ethernet address", s, v)
			}
			if hw[0]&1 != 0 {
				return c, fmt.Errorf("--net %q: mac %s is a multicast address", s, v)
			}
			c.MAC = hw.String()
		case "packed":
			on, ok := virtio.ParseOnOff(v)
			if !ok {
				return c, fmt.Errorf("--net %q: packed=%s, want on or off", s, v)
			}
			c.Packed = on
		default:
			return c, fmt.Errorf("--net %q: unknown option %q (want tap, mac, packed)", s, k)
		}
	}
	if c.Tap == "" {
		return c, fmt.Errorf("--net %q: no tap=", s)
	}
	if c.MAC == "" {
		h := sha256.Sum256([]byte(c.Tap))
		c.MAC = fmt.Sprintf("%s:%02x:%02x:%02x", macPrefix, h[0], h[1], h[2])
	}
	return c, nil
}

// Device is one virtio-net device.
type Device struct {
	cfg Config
	mac stdnet.HardwareAddr
	tap *tap
	log *slog.Logger

	mu       sync.Mutex
	cond     *sync.Cond
	active   bool
	closed   bool
	features uint64
	// rx are the driver's receive buffers, in the order it posted them.
	rx []kept
	// rxDropped and txDropped count packets lost (no room, or the TAP
	// refused them); warned: the guest's first bad header was logged.
	rxDropped, txDropped uint64
	warned               bool
	wg                   sync.WaitGroup
}

type kept struct {
	c    *virtio.Chain
	done func(uint32)
}

// Open attaches to (or creates) the TAP and starts the receive goroutine.
func Open(c Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	if c.MAC == "" {
		var err error
		if c, err = ParseFlag("tap=" + c.Tap); err != nil {
			return nil, err
		}
	}
	mac, err := stdnet.ParseMAC(c.MAC)
	if err != nil || len(mac) != macLen {
		return nil, fmt.Errorf("virtio-net: mac %q is not a 6-byte Ethernet address", c.MAC)
	}
	t, err := openTap(c.Tap)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	d := &Device{cfg: c, mac: mac, tap: t, log: log}
	d.cond = sync.NewCond(&d.mu)
	d.wg.Add(1)
	go d.receive()
	return d, nil
}

// Close closes the TAP and waits for the receive goroutine.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.cond.Broadcast()
	d.mu.Unlock()
	err := d.tap.f.Close()
	d.wg.Wait()
	return err
}

func (d *Device) Type() uint16       { return virtio.IDNet }
func (d *Device) Name() string       { return "virtio-net " + d.cfg.Tap }
func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize, QueueSize} }
func (d *Device) Features() uint64   { return offered }

// OfferPacked implements virtio.PackedOfferer (packed=on).
func (d *Device) OfferPacked() bool { return d.cfg.Packed }

// Describe names the TAP and the MAC, which a restore must keep.
func (d *Device) Describe() string {
	return fmt.Sprintf("virtio-net tap=%s mac=%s", d.cfg.Tap, d.mac)
}

// ReadConfig reads struct virtio_net_config: the MAC, the link status
// (always up) and one queue pair.
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [cfgLen]byte
	copy(c[:], d.mac)
	binary.LittleEndian.PutUint16(c[6:], statusUp)
	binary.LittleEndian.PutUint16(c[8:], 1)
	virtio.ReadConfigImage(c[:], off, data)
}

// WriteConfig drops the write (the MAC is writable only with
// VIRTIO_NET_F_CTRL_MAC_ADDR, not offered).
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate tells the TAP which offloaded packets the guest takes.
func (d *Device) Activate(features uint64) error {
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
	if err := d.tap.setOffload(off); err != nil {
		return err
	}
	d.mu.Lock()
	d.active, d.features = true, features
	d.cond.Broadcast()
	d.mu.Unlock()
	return nil
}

// Reset forgets the buffers and the offloads.
func (d *Device) Reset() {
	d.mu.Lock()
	d.active, d.features, d.rx = false, 0, nil
	d.cond.Broadcast()
	d.mu.Unlock()
	if err := d.tap.setOffload(0); err != nil && !errors.Is(err, os.ErrClosed) {
		d.log.Warn("virtio-net: reset offloads", "tap", d.cfg.Tap, "err", err)
	}
}

// Unkeep gives back the receive buffers.
func (d *Device) Unkeep(q int) int {
	if q != rxQ {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.rx)
	d.rx = nil
	return n
}

// Handle keeps receive buffers and sends transmitted packets to the TAP.
func (d *Device) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	switch q {
	case rxQ:
		if len(c.Readable) > 0 || c.WritableLen() < vnetHdrLen {
			return fmt.Errorf("receive buffer %d has %d device-readable and %d device-writable bytes, want none and at least %d",
				c.Head, c.ReadableLen(), c.WritableLen(), vnetHdrLen)
		}
		d.mu.Lock()
		d.rx = append(d.rx, kept{c, done})
		d.cond.Broadcast()
		d.mu.Unlock()
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

// transmit sends one packet: a copy of its header (checked), then the
// guest's buffers as they are.
func (d *Device) transmit(c *virtio.Chain) error {
	if len(c.Writable) > 0 {
		return fmt.Errorf("packet %d has %d device-writable bytes; transmitted packets have none", c.Head, c.WritableLen())
	}
	n := c.ReadableLen()
	if n < vnetHdrLen {
		return fmt.Errorf("packet %d has %d bytes, less than the %d-byte virtio-net header", c.Head, n, vnetHdrLen)
	}
	var h [vnetHdrLen]byte
	c.Read(0, h[:])
	d.mu.Lock()
	features := d.features
	d.mu.Unlock()
	err := checkTxHeader(h[:], features, n-vnetHdrLen)
	if err == nil && n > maxFrame {
		err = fmt.Errorf("%d bytes, more than the %d a frame may have", n, maxFrame)
	}
	if err != nil {
		d.drop(&d.txDropped, fmt.Errorf("packet %d: %w", c.Head, err))
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
	if err := d.tap.writev(bufs); err != nil {
		d.mu.Lock()
		d.txDropped++
		d.mu.Unlock()
		d.log.Debug("virtio-net: the TAP refused a packet", "tap", d.cfg.Tap, "err", err)
	}
	return nil
}

// drop counts a packet the guest got wrong, and logs the first.
func (d *Device) drop(counter *uint64, err error) {
	d.mu.Lock()
	*counter++
	first := !d.warned
	d.warned = true
	d.mu.Unlock()
	if first {
		d.log.Warn("virtio-net: the guest sent a packet that breaks its negotiated features; dropped (further ones silently)",
			"device", d.Name(), "err", err)
	}
}

// receive reads the TAP and puts each packet into the guest's receive
// buffers: one buffer, or with VIRTIO_NET_F_MRG_RXBUF as many as it
// takes. It waits for buffers while it holds a packet (the TAP queues or
// drops what comes meanwhile), and takes none until all it needs are
// there, so that a pause can take every kept buffer back.
func (d *Device) receive() {
	defer d.wg.Done()
	buf := make([]byte, maxFrame)
	for {
		n, err := d.tap.f.Read(buf)
		if err != nil {
			d.mu.Lock()
			closed := d.closed
			d.mu.Unlock()
			if !closed && !errors.Is(err, os.ErrClosed) {
				d.log.Error("virtio-net: TAP read; no more packets reach the guest", "tap", d.cfg.Tap, "err", err)
			}
			return
		}
		if n < vnetHdrLen {
			continue
		}
		if !d.deliver(buf[:n]) {
			return
		}
	}
}

// deliver puts one packet (with its header) into receive buffers. It
// reports false once the device is closed.
func (d *Device) deliver(p []byte) bool {
	need := uint64(len(p))
	d.mu.Lock()
	var take []kept
	for {
		if d.closed {
			d.mu.Unlock()
			return false
		}
		if !d.active {
			// No driver: the packet goes nowhere.
			d.rxDropped++
			d.mu.Unlock()
			return true
		}
		mrg := d.features&fMrgRxbuf != 0
		var have uint64
		k := 0
		for ; k < len(d.rx) && have < need; k++ {
			have += d.rx[k].c.WritableLen()
			if !mrg {
				k++
				break
			}
		}
		if have >= need {
			take = append(take, d.rx[:k]...)
			d.rx = d.rx[k:]
			break
		}
		if (!mrg && len(d.rx) > 0) || len(d.rx) >= QueueSize {
			// Buffers too small for this packet: it cannot be
			// delivered whatever the driver posts next.
			d.rxDropped++
			d.mu.Unlock()
			return true
		}
		d.cond.Wait()
	}
	d.mu.Unlock()
	// num_buffers: how many buffers this packet took.
	binary.LittleEndian.PutUint16(p[10:], uint16(len(take)))
	lens := make([]uint32, len(take))
	for i, k := range take {
		w := k.c.Write(0, p)
		p = p[w:]
		lens[i] = uint32(w)
	}
	for i, k := range take {
		k.done(lens[i])
	}
	return true
}
