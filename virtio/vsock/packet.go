package vsock

import (
	"encoding/binary"
	"fmt"
)

// Packet header (virtio 1.2 §5.10.6, struct virtio_vsock_hdr): 44 bytes,
// little-endian.
const hdrLen = 44

// Socket types and operations.
const (
	typeStream = 1

	opRequest       = 1
	opResponse      = 2
	opRST           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7

	// SHUTDOWN flags: the sender will receive no more, send no more.
	shutRcv  = 1
	shutSend = 2
)

// header is one packet's header.
type header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

var le = binary.LittleEndian

// parseHeader decodes the first hdrLen bytes of b.
func parseHeader(b []byte) (header, error) {
	if len(b) < hdrLen {
		return header{}, fmt.Errorf("a %d-byte packet is shorter than the %d-byte header", len(b), hdrLen)
	}
	return header{
		SrcCID: le.Uint64(b[0:]), DstCID: le.Uint64(b[8:]),
		SrcPort: le.Uint32(b[16:]), DstPort: le.Uint32(b[20:]),
		Len: le.Uint32(b[24:]), Type: le.Uint16(b[28:]), Op: le.Uint16(b[30:]),
		Flags: le.Uint32(b[32:]), BufAlloc: le.Uint32(b[36:]), FwdCnt: le.Uint32(b[40:]),
	}, nil
}

// put encodes h into b[:hdrLen].
func (h header) put(b []byte) {
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}

// verdict is what the device does with a packet the guest sent.
type verdict int

const (
	accept verdict = iota // serve it
	drop                  // ignore it (it is not the guest's)
	reset                 // answer RST (nothing on the host takes it)
)

// check classifies a packet from guest cid with n payload bytes in its
// chain. An error is a broken driver: a header that claims more payload
// than the chain carries, or more than any packet may.
func (h header) check(cid uint64, n uint64) (verdict, error) {
	if uint64(h.Len) > n {
		return 0, fmt.Errorf("the header claims %d payload bytes, the chain carries %d", h.Len, n)
	}
	if h.Len > maxPayload {
		return 0, fmt.Errorf("the header claims %d payload bytes, more than the %d a packet may carry", h.Len, maxPayload)
	}
	switch {
	case h.SrcCID != cid:
		// Not from this guest's address: a driver bug or a spoof.
		return drop, nil
	case h.Op == opRST:
		// Nothing answers an RST, whatever it was sent to.
		if h.DstCID != HostCID || h.Type != typeStream {
			return drop, nil
		}
		return accept, nil
	case h.DstCID != HostCID, h.Type != typeStream, h.Op < opRequest || h.Op > opCreditRequest:
		return reset, nil
	}
	return accept, nil
}

func (h header) String() string {
	return fmt.Sprintf("op %d type %d %d:%d -> %d:%d len %d flags %#x buf_alloc %d fwd_cnt %d",
		h.Op, h.Type, h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Flags, h.BufAlloc, h.FwdCnt)
}
