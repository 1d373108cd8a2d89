package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestUnixDial: unixdial speaks govmm's hybrid vsock handshake to a fake
// device socket (CONNECT line, OK answer), sends its pattern, half-closes
// and reads the guest's reply to its end.
func TestUnixDial(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vs.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reply := Pattern("reply", 70000)
	got := make(chan []byte, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil || line != "CONNECT 5000\n" {
			errc <- &net.OpError{Op: "handshake " + line, Err: err}
			return
		}
		if _, err := c.Write([]byte("OK 1025\n")); err != nil {
			errc <- err
			return
		}
		b, err := io.ReadAll(r)
		if err != nil {
			errc <- err
			return
		}
		got <- b
		if _, err := c.Write(reply); err != nil {
			errc <- err
			return
		}
		errc <- nil
	}()
	if err := unixDial(path, 5000, "sent", 300000); err != nil {
		t.Fatalf("unixDial: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("fake device: %v", err)
	}
	if b := <-got; !bytes.Equal(b, Pattern("sent", 300000)) {
		t.Fatalf("the device got %d bytes, not the %d of the pattern", len(b), 300000)
	}
}

// TestUnixDialRefused: an answer other than OK is an error naming it.
func TestUnixDialRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vs.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("NO\n"))
			c.Close()
		}
	}()
	if err := unixDial(path, 5000, "sent", 10); err == nil {
		t.Fatal("unixDial took NO as an answer")
	}
}

// TestUnixServe: unixserve answers the connection govmm would open for
// a guest's dial: it reads to the end and replies with the pattern of
// seed-1.
func TestUnixServe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vs.sock_1024")
	errc := make(chan error, 1)
	go func() { errc <- unixServe(path, 1, "answer", 200000) }()
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.Dial("unix", path); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(Pattern("up", 100000)); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, Pattern("answer-1", 200000)) {
		t.Fatalf("unixserve replied %d bytes, not the %d of answer-1's pattern", len(b), 200000)
	}
	if err := <-errc; err != nil {
		t.Fatalf("unixServe: %v", err)
	}
}
