package net

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"govmm/virtio"
)

// Control queue classes and commands (virtio 1.2 §5.1.6.5).
const (
	ctrlRx          = 0
	ctrlRxPromisc   = 0
	ctrlRxAllMulti  = 1
	ctrlMAC         = 1
	ctrlMACTableSet = 0
	ctrlMACAddrSet  = 1
	ctrlMQ          = 4
	ctrlMQPairsSet  = 0

	ackOK  = 0
	ackErr = 1

	ctrlHdrLen = 2
)

// ctrlReq is one well-framed control command: its class, command, and
// the bytes after the header (device-readable) that the parser looked
// at.
type ctrlReq struct {
	class, cmd uint8
	// pairs is VQ_PAIRS_SET's argument, when the command is one that
	// the device carries out.
	pairs int
	// refuse says why the command is answered VIRTIO_NET_ERR ("" for
	// a command the device accepts).
	refuse string
}

// parseCtrl checks a control queue chain: a 2-byte class and command
// header and the command's data, all device-readable, then at least one
// device-writable byte for the ack. A chain not framed so is the
// driver's fault and an error; a framed command the device does not take
// (an unknown class or command, a feature not negotiated, a wrong
// length or value) comes back with refuse set.
func parseCtrl(c *virtio.Chain, features uint64, maxPairs int) (ctrlReq, error) {
	var r ctrlReq
	n := c.ReadableLen()
	if n < ctrlHdrLen || c.WritableLen() < 1 {
		return r, fmt.Errorf("control command %d has %d device-readable and %d device-writable bytes, want a %d-byte header and a status byte",
			c.Head, n, c.WritableLen(), ctrlHdrLen)
	}
	var h [ctrlHdrLen]byte
	c.Read(0, h[:])
	r.class, r.cmd = h[0], h[1]
	data := n - ctrlHdrLen
	switch r.class {
	case ctrlRx:
		if features&fCtrlRx == 0 {
			r.refuse = "receive-mode command without VIRTIO_NET_F_CTRL_RX"
			break
		}
		if r.cmd != ctrlRxPromisc && r.cmd != ctrlRxAllMulti {
			r.refuse = fmt.Sprintf("receive-mode command %d (only PROMISC and ALLMULTI without CTRL_RX_EXTRA)", r.cmd)
			break
		}
		if data != 1 {
			r.refuse = fmt.Sprintf("receive-mode command with %d bytes of data, want 1", data)
			break
		}
		var on [1]byte
		c.Read(ctrlHdrLen, on[:])
		if on[0] > 1 {
			r.refuse = fmt.Sprintf("receive-mode value %d, want 0 or 1", on[0])
		}
	case ctrlMAC:
		switch {
		case r.cmd == ctrlMACAddrSet:
			r.refuse = "MAC_ADDR_SET: the MAC is the one --net gives (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered)"
		case r.cmd != ctrlMACTableSet:
			r.refuse = fmt.Sprintf("MAC command %d", r.cmd)
		case features&fCtrlRx == 0:
			r.refuse = "MAC_TABLE_SET without VIRTIO_NET_F_CTRL_RX"
		default:
			r.refuse = checkMACTables(c, data)
		}
	case ctrlMQ:
		switch {
		case features&fMQ == 0:
			r.refuse = "multiqueue command without VIRTIO_NET_F_MQ"
		case r.cmd != ctrlMQPairsSet:
			r.refuse = fmt.Sprintf("multiqueue command %d (only VQ_PAIRS_SET: no RSS, no hash reports)", r.cmd)
		case data != 2:
			r.refuse = fmt.Sprintf("VQ_PAIRS_SET with %d bytes of data, want 2", data)
		default:
			var b [2]byte
			c.Read(ctrlHdrLen, b[:])
			r.pairs = int(binary.LittleEndian.Uint16(b[:]))
			if r.pairs < 1 || r.pairs > maxPairs {
				r.refuse = fmt.Sprintf("VQ_PAIRS_SET %d, want 1..%d", r.pairs, maxPairs)
				r.pairs = 0
			}
		}
	default:
		r.refuse = fmt.Sprintf("class %d command %d not offered", r.class, r.cmd)
	}
	return r, nil
}

// checkMACTables checks MAC_TABLE_SET's data: two struct
// virtio_net_ctrl_mac (a 32-bit entry count and that many 6-byte
// addresses), unicast then multicast, filling the data exactly. It
// returns "" when they do.
func checkMACTables(c *virtio.Chain, data uint64) string {
	off := uint64(ctrlHdrLen)
	end := off + data
	for _, what := range []string{"unicast", "multicast"} {
		if end-off < 4 {
			return fmt.Sprintf("MAC_TABLE_SET: no room for the %s table's entry count", what)
		}
		var b [4]byte
		c.Read(off, b[:])
		off += 4
		entries := uint64(binary.LittleEndian.Uint32(b[:]))
		if entries*macLen > end-off {
			return fmt.Sprintf("MAC_TABLE_SET: %d %s entries, past the command's %d bytes", entries, what, data)
		}
		off += entries * macLen
	}
	if off != end {
		return fmt.Sprintf("MAC_TABLE_SET: %d bytes after the tables", end-off)
	}
	return ""
}

// control runs one control command and writes its ack. The receive mode
// and the MAC tables are accepted and not applied: the device delivers
// every frame the TAP hands it (what reaches a TAP is the host's choice)
// and the guest's own stack drops frames not for it. VQ_PAIRS_SET
// attaches and detaches the TAP's queues.
func (d *Device) control(c *virtio.Chain, features uint64, done func(uint32)) error {
	r, err := parseCtrl(c, features, len(d.pairs))
	if err != nil {
		return err
	}
	ack := byte(ackOK)
	switch {
	case r.refuse != "":
		d.log.Debug("virtio-net: control command refused", "device", d.Name(), "class", r.class, "cmd", r.cmd, "why", r.refuse)
		ack = ackErr
	case r.class == ctrlMQ:
		if err := d.setPairs(r.pairs); err != nil {
			d.log.Warn("virtio-net: VQ_PAIRS_SET failed", "device", d.Name(), "pairs", r.pairs, "err", err)
			ack = ackErr
		}
	}
	// The ack is the first device-writable byte (Linux gives a writable
	// buffer holding just it).
	c.Write(0, []byte{ack})
	done(1)
	return nil
}

// State is the device's own state in a snapshot: how many queue pairs
// the driver enabled.
type State struct {
	Pairs int `json:"queue_pairs"`
}

// SaveState implements virtio.StateSaver. A single-pair device has no
// state of its own (its snapshots are as they were before multiqueue).
func (d *Device) SaveState() json.RawMessage {
	if !d.mq() {
		return nil
	}
	d.setMu.Lock()
	s := State{Pairs: d.npairs}
	d.setMu.Unlock()
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a struct of one int
	}
	return b
}

// RestoreState implements virtio.StateSaver: the enabled pairs' TAP
// queues are attached again.
func (d *Device) RestoreState(b json.RawMessage) error {
	s := State{Pairs: 1}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("the snapshot's virtio-net state: %w", err)
		}
	}
	if s.Pairs < 1 || s.Pairs > len(d.pairs) {
		return fmt.Errorf("the snapshot has %d queue pairs enabled; this device has %d (queues=)", s.Pairs, len(d.pairs))
	}
	if err := d.setPairs(s.Pairs); err != nil {
		return fmt.Errorf("restore %d enabled queue pairs: %w", s.Pairs, err)
	}
	return nil
}
