package vsock

import (
	"bytes"
	"net"
	"testing"

	"govmm/virtio"
)

// FuzzHeader: any 44 bytes decode, and encode back to themselves.
func FuzzHeader(f *testing.F) {
	f.Add(make([]byte, hdrLen))
	f.Add(bytes.Repeat([]byte{0xff}, hdrLen+3))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if len(b) < hdrLen {
			if err == nil {
				t.Fatalf("%d bytes parsed", len(b))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		out := make([]byte, hdrLen)
		h.put(out)
		if !bytes.Equal(out, b[:hdrLen]) {
			t.Fatalf("round trip %x -> %x", b[:hdrLen], out)
		}
	})
}

// FuzzTransmit feeds the device packets the fuzzer makes, split into two
// buffers at a point it chooses, with connections open to a host socket
// that reads nothing: the device never panics, refuses exactly the chains
// whose header is short or claims more payload than they carry, keeps
// every connection within its buffer, and answers only with well-formed
// packets.
func FuzzTransmit(f *testing.F) {
	mk := func(op uint16, src, dst uint32, flags uint32, payload []byte) []byte {
		b := make([]byte, hdrLen+len(payload))
		header{SrcCID: guestCID, DstCID: HostCID, SrcPort: src, DstPort: dst, Len: uint32(len(payload)),
			Type: typeStream, Op: op, Flags: flags, BufAlloc: 4096}.put(b)
		copy(b[hdrLen:], payload)
		return b
	}
	f.Add(mk(opRequest, 1, 6100, 0, nil), uint16(10))
	f.Add(mk(opRW, 1, 6100, 0, []byte("hello")), uint16(44))
	f.Add(mk(opShutdown, 1, 6100, 3, nil), uint16(0))
	f.Add(mk(opCreditRequest, 1, 6100, 0, nil), uint16(50))
	f.Add(mk(opRST, 1, 6100, 0, nil), uint16(50))
	f.Add(mk(opResponse, 7, 1<<30, 0, nil), uint16(50))
	f.Add(mk(opRW, 1, 6100, 0, nil)[:30], uint16(3))
	sock := sockPath(f)
	ln, err := net.Listen("unix", sock+"_6100")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn // accepted and kept: the host reads nothing
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	d, err := New(Config{CID: guestCID, Socket: sock}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	d.Activate(virtio.FVersion1)
	f.Fuzz(func(t *testing.T, pktBytes []byte, split uint16) {
		fuzzOne(t, d, pktBytes, split)
	})
}

func fuzzOne(t *testing.T, d *Device, b []byte, split uint16) {
	// Keep receive buffers posted; check what comes back.
	d.mu.Lock()
	posted := len(d.rx)
	d.mu.Unlock()
	for range 4 - min(posted, 4) {
		buf := make([]byte, hdrLen+256)
		d.Handle(rxQ, &virtio.Chain{Writable: []virtio.Buffer{{Bytes: buf}}}, func(w uint32) {
			h, err := parseHeader(buf[:w])
			if err != nil || w != hdrLen+h.Len || h.SrcCID != HostCID || h.DstCID != guestCID || h.Op < opRequest || h.Op > opCreditRequest {
				t.Errorf("device sent %d bytes %x (%v)", w, buf[:min(int(w), len(buf))], err)
			}
		})
	}
	s := min(int(split), len(b))
	c := &virtio.Chain{Readable: []virtio.Buffer{{Bytes: b[:s]}, {Bytes: b[s:]}}}
	err := d.Handle(txQ, c, func(uint32) {})
	wantErr := len(b) < hdrLen
	if !wantErr {
		h, _ := parseHeader(b)
		wantErr = uint64(h.Len) > uint64(len(b)-hdrLen) || h.Len > maxPayload
	}
	if (err != nil) != wantErr {
		t.Fatalf("packet %x: error %v, want one: %v", b, err, wantErr)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, cn := range d.conns {
		if cn.rxCnt-cn.fwdCnt > bufAlloc {
			t.Fatalf("connection %v buffers %d bytes, more than %d", k, cn.rxCnt-cn.fwdCnt, bufAlloc)
		}
	}
	if len(d.conns) > maxConns {
		t.Fatalf("%d connections", len(d.conns))
	}
}
