package net

import (
	"encoding/binary"
	"testing"
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
