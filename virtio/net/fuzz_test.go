package net

import (
	"encoding/binary"
	"testing"

	"govmm/virtio"
)

// FuzzTxHeader checks transmitted headers the fuzzer makes against
// feature sets it chooses: an accepted header never asks for an offload
// that was not negotiated, nor a checksum outside the frame.
func FuzzTxHeader(f *testing.F) {
	f.Add([]byte{1, gsoTCPv4, 0, 0, 0x78, 5, 34, 0, 16, 0, 0, 0}, uint64(offered), uint16(1500))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0}, uint64(fCsum), uint16(100))
	f.Add(make([]byte, vnetHdrLen), uint64(0), uint16(60))
	f.Fuzz(func(t *testing.T, h []byte, features uint64, n uint16) {
		if len(h) < vnetHdrLen {
			return
		}
		if checkTxHeader(h, features, uint64(n)) != nil {
			return
		}
		flags, gso := h[0], h[1]
		if flags&hdrFNeedsCsum != 0 {
			if features&fCsum == 0 {
				t.Fatal("partial checksum accepted without CSUM")
			}
			if s, o := binary.LittleEndian.Uint16(h[6:]), binary.LittleEndian.Uint16(h[8:]); uint64(s)+uint64(o)+2 > uint64(n) {
				t.Fatalf("checksum at %d+%d accepted in a %d-byte frame", s, o, n)
			}
		}
		switch gso {
		case gsoNone:
		case gsoTCPv4:
			if features&fHostTSO4 == 0 {
				t.Fatal("TSO4 accepted without HOST_TSO4")
			}
		case gsoTCPv6:
			if features&fHostTSO6 == 0 {
				t.Fatal("TSO6 accepted without HOST_TSO6")
			}
		default:
			t.Fatalf("segmentation type %#x accepted", gso)
		}
	})
}

// FuzzControl feeds control-queue chains the fuzzer lays out (the
// readable bytes split into buffers where it says, a writable part of
// the length it says) with the features it chooses to the parser and to
// a 4-pair device on a fake TAP. A chain without a header or a status
// byte must be an error and nothing else; an accepted command must be
// one the device offers, with a valid argument; the device answers
// every framed command with VIRTIO_NET_OK or VIRTIO_NET_ERR, and its
// number of enabled pairs stays in 1..4 and follows VQ_PAIRS_SET.
func FuzzControl(f *testing.F) {
	f.Add([]byte{ctrlMQ, ctrlMQPairsSet, 2, 0}, []byte{1}, uint8(1), uint64(mqFeatures))
	f.Add([]byte{ctrlMQ, ctrlMQPairsSet, 9, 0}, []byte{2}, uint8(1), uint64(mqFeatures))
	f.Add([]byte{ctrlRx, ctrlRxPromisc, 1}, []byte{1}, uint8(1), uint64(mqFeatures))
	f.Add(append([]byte{ctrlMAC, ctrlMACTableSet}, macTables(1, 2)...), []byte{3, 9}, uint8(1), uint64(mqFeatures))
	f.Add([]byte{ctrlMAC, ctrlMACAddrSet, 0x52, 0x54, 0, 0, 0, 1}, []byte{}, uint8(1), uint64(mqFeatures))
	f.Add([]byte{7}, []byte{}, uint8(0), uint64(0))
	const pairs = 4
	ft := newFakeTap(f, pairs)
	dev := newDevice(Config{Tap: "fuzz0", Queues: pairs}, testMAC, ft, quiet, true)
	f.Cleanup(func() { dev.Close() })
	if err := dev.Activate(virtio.FVersion1 | mqFeatures); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, readable, cuts []byte, writable uint8, features uint64) {
		// The readable bytes in buffers cut at the fuzzer's offsets.
		c := &virtio.Chain{Head: 1}
		rest := append([]byte(nil), readable...)
		for _, k := range cuts {
			n := int(k) % (len(rest) + 1)
			c.Readable = append(c.Readable, virtio.Buffer{Bytes: rest[:n]})
			rest = rest[n:]
		}
		c.Readable = append(c.Readable, virtio.Buffer{Bytes: rest})
		status := make([]byte, writable%4)
		for i := range status {
			status[i] = 0xee
		}
		if len(status) > 0 {
			c.Writable = []virtio.Buffer{{Bytes: status}}
		}
		framed := len(readable) >= ctrlHdrLen && len(status) >= 1

		r, err := parseCtrl(c, features, pairs)
		if (err == nil) != framed {
			t.Fatalf("parse: %v for %d readable and %d writable bytes", err, len(readable), len(status))
		}
		if err != nil {
			return
		}
		data := readable[ctrlHdrLen:]
		if r.refuse == "" {
			switch r.class {
			case ctrlMQ:
				if features&fMQ == 0 || r.cmd != ctrlMQPairsSet || len(data) != 2 {
					t.Fatalf("accepted MQ command %d with %d bytes, features %#x", r.cmd, len(data), features)
				}
				if n := int(binary.LittleEndian.Uint16(data)); n != r.pairs || n < 1 || n > pairs {
					t.Fatalf("accepted VQ_PAIRS_SET %d as %d", n, r.pairs)
				}
			case ctrlRx:
				if features&fCtrlRx == 0 || r.cmd > ctrlRxAllMulti || len(data) != 1 || data[0] > 1 {
					t.Fatalf("accepted RX command %d with % x, features %#x", r.cmd, data, features)
				}
			case ctrlMAC:
				if features&fCtrlRx == 0 || r.cmd != ctrlMACTableSet || !macTablesFit(data) {
					t.Fatalf("accepted MAC command %d with % x, features %#x", r.cmd, data, features)
				}
			default:
				t.Fatalf("accepted class %d", r.class)
			}
		}

		// The device: framed commands are answered, never an error.
		acked := -1
		if err := dev.control(c, features, func(n uint32) { acked = int(n) }); err != nil {
			t.Fatalf("device: %v", err)
		}
		if acked != 1 || status[0] > ackErr {
			t.Fatalf("used length %d, ack %d", acked, status[0])
		}
		if (status[0] == ackOK) != (r.refuse == "") {
			t.Fatalf("ack %d for a command refused with %q", status[0], r.refuse)
		}
		dev.setMu.Lock()
		n := dev.npairs
		dev.setMu.Unlock()
		if n < 1 || n > pairs || (r.class == ctrlMQ && r.refuse == "" && n != r.pairs) {
			t.Fatalf("%d pairs enabled after %+v", n, r)
		}
		if got := ft.attachedNow(); !got[0] || func() int {
			k := 0
			for _, a := range got {
				if a {
					k++
				}
			}
			return k
		}() != n {
			t.Fatalf("TAP queues attached %v with %d pairs enabled", got, n)
		}
	})
}

// macTablesFit is MAC_TABLE_SET's framing, computed over flat bytes.
func macTablesFit(b []byte) bool {
	for range 2 {
		if len(b) < 4 {
			return false
		}
		n := uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
		if n*6 > uint64(len(b)) {
			return false
		}
		b = b[n*6:]
	}
	return len(b) == 0
}
