package net

import (
	"bytes"
	"encoding/binary"
	"fmt"
	stdnet "net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"govmm/virtio"
)

// The queues of a single-pair device.
const (
	rxQ = 0
	txQ = 1
)

func TestParseFlag(t *testing.T) {
	c, err := ParseFlag("tap=tap0,mac=52:54:00:12:34:56")
	if err != nil || c.Tap != "tap0" || c.MAC != "52:54:00:12:34:56" {
		t.Fatalf("%+v %v", c, err)
	}
	a, _ := ParseFlag("tap=tap0")
	b, _ := ParseFlag("tap=tap0")
	o, _ := ParseFlag("tap=tap1")
	if a.MAC != b.MAC || a.MAC == o.MAC || a.MAC[:8] != macPrefix {
		t.Fatalf("derived MACs %s %s %s: want stable per name, different across names", a.MAC, b.MAC, o.MAC)
	}
	// A comma in the TAP's name (Linux allows one) is written ",,"; the
	// MAC derives from the name itself.
	if c, err := ParseFlag("tap=t,,0,packed=on"); err != nil || c.Tap != "t,0" || !c.Packed || c.MAC != derivedMAC("t,0") {
		t.Errorf("tap=t,,0: %+v %v", c, err)
	}
	for _, bad := range []string{"mac=52:54:00:12:34:56", "tap=x,mac=01:00:00:00:00:01", "tap=x,mac=zz", "tap=x,q=1", "tap", "tap=x,", "tap=t,0", "tap=x,mac=52:54:00:12:34:56,,"} {
		if _, err := ParseFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCheckTxHeader(t *testing.T) {
	hdr := func(flags, gso uint8, gsoSize, start, off uint16) []byte {
		h := make([]byte, vnetHdrLen)
		h[0], h[1] = flags, gso
		binary.LittleEndian.PutUint16(h[4:], gsoSize)
		binary.LittleEndian.PutUint16(h[6:], start)
		binary.LittleEndian.PutUint16(h[8:], off)
		return h
	}
	all := uint64(offered)
	for _, c := range []struct {
		name string
		h    []byte
		f    uint64
		ok   bool
	}{
		{"plain", hdr(0, 0, 0, 0, 0), 0, true},
		{"csum", hdr(1, 0, 0, 34, 6), fCsum, true},
		{"csum not negotiated", hdr(1, 0, 0, 34, 6), 0, false},
		{"csum past the frame", hdr(1, 0, 0, 1000, 6), fCsum, false},
		{"tso4", hdr(1, gsoTCPv4, 1448, 34, 16), all, true},
		{"tso4 without the feature", hdr(1, gsoTCPv4, 1448, 34, 16), fCsum, false},
		{"tso6 without a checksum", hdr(0, gsoTCPv6, 1448, 0, 0), all, false},
		{"tso with size 0", hdr(1, gsoTCPv4, 0, 34, 16), all, false},
		{"udp fragmentation", hdr(1, 3, 1448, 34, 6), all, false},
		{"ecn", hdr(1, gsoTCPv4|0x80, 1448, 34, 16), all, false},
		{"unknown flag", hdr(4, 0, 0, 0, 0), all, false},
	} {
		if err := checkTxHeader(c.h, c.f, 100); (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
}

// ipv4UDP builds an Ethernet frame carrying a UDP datagram (checksum 0:
// none, which IPv4 allows).
func ipv4UDP(dst, src stdnet.HardwareAddr, sip, dip stdnet.IP, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	copy(ip[12:], sip.To4())
	copy(ip[16:], dip.To4())
	var s uint32
	for i := 0; i < 20; i += 2 {
		s += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(s))
	u := f[34:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	copy(u[8:], payload)
	return f
}

// TestTap runs the device on a real TAP (where this process may create
// one): a datagram the host sends to the guest's address arrives in the
// receive buffers (spread over several with mergeable buffers), and a
// frame the guest transmits reaches a host socket, with and without a
// partial checksum the TAP completes. A header with an offload the
// guest did not negotiate is dropped. Closing leaves no goroutine.
func TestTap(t *testing.T) {
	baseG := runtime.NumGoroutine()
	name := fmt.Sprintf("gvnt%d", os.Getpid()%100000)
	d, err := Open(Config{Tap: name}, nil)
	if err != nil {
		t.Skipf("no TAP here: %v", err)
	}
	defer d.Close()
	ipCmd(t, "addr", "add", "10.231.7.1/24", "dev", name)
	ipCmd(t, "link", "set", name, "up")
	ipCmd(t, "neigh", "add", "10.231.7.2", "lladdr", d.mac.String(), "dev", name, "nud", "permanent")
	ifc, err := stdnet.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	feat := uint64(virtio.FVersion1 | fMrgRxbuf | fCsum | fGuestCsum | fHostTSO4 | fMAC | fStatus)
	if err := d.Activate(feat); err != nil {
		t.Fatal(err)
	}
	type used struct {
		buf []byte
		n   uint32
	}
	rx := make(chan used, 64)
	post := func() {
		buf := make([]byte, 1024)
		if err := d.Handle(rxQ, &virtio.Chain{Writable: []virtio.Buffer{{Bytes: buf}}}, func(n uint32) { rx <- used{buf, n &^ virtio.More} }); err != nil {
			t.Fatal(err)
		}
	}
	for range 32 {
		post()
	}
	// Host to guest: 1400 bytes of UDP (one frame of 1454 bytes with the
	// header) take two 1 KiB buffers.
	payload := bytes.Repeat([]byte("govmm-net-"), 140)
	hc, err := stdnet.DialUDP("udp4", nil, &stdnet.UDPAddr{IP: stdnet.IPv4(10, 231, 7, 2), Port: 9999})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if _, err := hc.Write(payload); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for found := false; !found; {
		var first used
		select {
		case first = <-rx:
		case <-deadline:
			t.Fatal("the datagram never reached the receive buffers")
		}
		post()
		nb := int(binary.LittleEndian.Uint16(first.buf[10:]))
		frame := append([]byte(nil), first.buf[vnetHdrLen:first.n]...)
		for range nb - 1 {
			u := <-rx
			post()
			frame = append(frame, u.buf[:u.n]...)
		}
		if len(frame) < 42 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 || frame[23] != 17 || binary.BigEndian.Uint16(frame[36:]) != 9999 {
			continue // ARP, IPv6 neighbour discovery and the like
		}
		found = true
		if nb != 2 {
			t.Errorf("a %d-byte frame took %d buffers, want 2", len(frame), nb)
		}
		if !bytes.Equal(frame[:6], d.mac) || !bytes.Equal(frame[42:], payload) {
			t.Errorf("frame to %s carries %d bytes, want %d to %s", stdnet.HardwareAddr(frame[:6]), len(frame)-42, len(payload), d.mac)
		}
	}
	// Guest to host.
	ln, err := stdnet.ListenUDP("udp4", &stdnet.UDPAddr{IP: stdnet.IPv4(10, 231, 7, 1), Port: 9998})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	send := func(h []byte, frame []byte) {
		t.Helper()
		// Header and frame in separate buffers, the frame split too.
		c := &virtio.Chain{Readable: []virtio.Buffer{{Bytes: h}, {Bytes: frame[:20]}, {Bytes: frame[20:]}}}
		if err := d.Handle(txQ, c, func(uint32) {}); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(want []byte) {
		t.Helper()
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 4096)
		n, err := ln.Read(b)
		if err != nil || !bytes.Equal(b[:n], want) {
			t.Fatalf("host read %q, %v; want %q", b[:n], err, want)
		}
	}
	msg := []byte("from the guest, no checksum")
	send(make([]byte, vnetHdrLen), ipv4UDP(ifc.HardwareAddr, d.mac, stdnet.IPv4(10, 231, 7, 2), stdnet.IPv4(10, 231, 7, 1), 4000, 9998, msg))
	recv(msg)
	// A partial checksum: the field holds the pseudo-header sum.
	msg = []byte("from the guest, checksum left to the host")
	f := ipv4UDP(ifc.HardwareAddr, d.mac, stdnet.IPv4(10, 231, 7, 2), stdnet.IPv4(10, 231, 7, 1), 4000, 9998, msg)
	var s uint32 = 17 + uint32(8+len(msg))
	for i := 26; i < 34; i += 2 {
		s += uint32(binary.BigEndian.Uint16(f[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	binary.BigEndian.PutUint16(f[40:], uint16(s))
	h := make([]byte, vnetHdrLen)
	h[0] = hdrFNeedsCsum
	binary.LittleEndian.PutUint16(h[6:], 34)
	binary.LittleEndian.PutUint16(h[8:], 6)
	send(h, f)
	recv(msg)
	// TCP segmentation for IPv6 was not negotiated: dropped, counted.
	h[1] = gsoTCPv6
	binary.LittleEndian.PutUint16(h[4:], 1400)
	send(h, f)
	if _, tx := d.Dropped(); tx[0] != 1 {
		t.Errorf("%d packets dropped, want the one with an offload not negotiated", tx[0])
	}
	// Every buffer is either kept (and given back) or was used (other
	// frames, such as IPv6 neighbour discovery, take some).
	n := d.Unkeep(rxQ)
	time.Sleep(100 * time.Millisecond)
	if n+len(rx) != 32 {
		t.Errorf("Unkeep = %d and %d buffers used, want 32 in all", n, len(rx))
	}
	d.Close()
	for i := 0; i < 100 && runtime.NumGoroutine() > baseG; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseG {
		t.Errorf("%d goroutines after Close, %d before", n, baseG)
	}
}
