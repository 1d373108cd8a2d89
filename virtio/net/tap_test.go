package net

import (
	"bytes"
	"fmt"
	"log/slog"
	stdnet "net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/virtio/net/tapabi"
)

// inPoller reports whether fd is registered with an epoll instance of
// this process (Go's poller), from /proc/self/fdinfo.
func inPoller(t *testing.T, fd int) bool {
	t.Helper()
	links, _ := filepath.Glob("/proc/self/fd/*")
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		b, _ := os.ReadFile("/proc/self/fdinfo/" + filepath.Base(l))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
				return true
			}
		}
	}
	return false
}

// TestTapPolled: the TAP govmm reads itself is in Go's poller (so Close
// ends a read), and the TAP vhost=on hands to the kernel is not, where
// each packet queued on it would wake a VMM thread for nothing.
func TestTapPolled(t *testing.T) {
	for _, polled := range []bool{true, false} {
		name := fmt.Sprintf("gvtp%d", os.Getpid()%100000)
		tp, err := openTapFor(name, 1, polled, testMAC)
		if err != nil {
			t.Skipf("no TAP here: %v", err)
		}
		var fd int
		if err := tp.control(0, func(f int) error { fd = f; return nil }); err != nil {
			tp.close()
			t.Fatal(err)
		}
		if got := inPoller(t, fd); got != polled {
			t.Errorf("openTapFor(polled %v): the TAP's descriptor in Go's poller: %v", polled, got)
		}
		if err := tp.setOffload(tunFCsum); err != nil {
			t.Errorf("openTapFor(polled %v): TUNSETOFFLOAD: %v", polled, err)
		}
		tp.close()
	}
}

// TestHostMAC: the host side's address is the guest's with the first
// byte 0xfe (0xfa where that is the guest's), unicast, locally
// administered, never the guest's, and the guest's slice is untouched.
func TestHostMAC(t *testing.T) {
	for _, c := range []struct{ guest, want string }{
		{"52:54:00:12:ab:cd", "fe:54:00:12:ab:cd"},
		{"fe:54:00:12:ab:cd", "fa:54:00:12:ab:cd"},
		{"fa:00:00:00:00:01", "fe:00:00:00:00:01"},
		{"02:00:00:00:00:00", "fe:00:00:00:00:00"},
		{"00:16:3e:01:02:03", "fe:16:3e:01:02:03"},
	} {
		g, err := stdnet.ParseMAC(c.guest)
		if err != nil {
			t.Fatal(err)
		}
		h := HostMAC(g)
		if h.String() != c.want {
			t.Errorf("HostMAC(%s) = %s, want %s", c.guest, h, c.want)
		}
		if g.String() != c.guest {
			t.Errorf("HostMAC(%s) changed its argument to %s", c.guest, g)
		}
		if h[0]&1 != 0 || h[0]&2 == 0 || bytes.Equal(h, g) {
			t.Errorf("HostMAC(%s) = %s: not a unicast, locally administered address other than the guest's", c.guest, h)
		}
	}
	if d := derivedMAC("govmmtap0"); HostMAC(mustMAC(t, d)).String() != "fe"+d[2:] {
		t.Errorf("HostMAC of the derived MAC %s: %s", d, HostMAC(mustMAC(t, d)))
	}
}

func mustMAC(t *testing.T, s string) stdnet.HardwareAddr {
	t.Helper()
	m, err := stdnet.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// hostSideMAC is the address of interface name as the host's network
// stack lists it (netlink, through package net).
func hostSideMAC(t *testing.T, name string) string {
	t.Helper()
	ifi, err := stdnet.InterfaceByName(name)
	if err != nil {
		t.Fatalf("interface %s: %v", name, err)
	}
	return ifi.HardwareAddr.String()
}

// TestTapHostMAC creates a TAP where this process may: its host side has
// HostMAC of the guest's address, which the device reports and logs; a
// TAP created again under the name (as a restore or a migration's
// destination does) has the same address; and a TAP that was there
// before govmm attached keeps the address its owner gave it.
func TestTapHostMAC(t *testing.T) {
	name := fmt.Sprintf("gvhm%d", os.Getpid()%100000)
	guest := mustMAC(t, "52:54:00:12:ab:cd")
	want := "fe:54:00:12:ab:cd"
	for round := range 2 {
		var logged bytes.Buffer
		d, err := Open(Config{Tap: name, MAC: guest.String()}, slog.New(slog.NewTextHandler(&logged, nil)))
		if err != nil {
			t.Skipf("no TAP here: %v", err)
		}
		if got := hostSideMAC(t, name); got != want {
			t.Errorf("round %d: the TAP govmm created has host-side MAC %s, want %s", round, got, want)
		}
		if got := d.HostMAC().String(); got != want {
			t.Errorf("round %d: the device reports host-side MAC %s, want %s", round, got, want)
		}
		if !strings.Contains(logged.String(), "created the TAP") || !strings.Contains(logged.String(), "host_mac="+want) {
			t.Errorf("round %d: the log does not name the created TAP's host-side MAC %s:\n%s", round, want, logged.String())
		}
		d.Close()
		if _, err := stdnet.InterfaceByName(name); err == nil {
			t.Fatalf("round %d: the TAP govmm created is still there after Close", round)
		}
	}

	// A TAP that exists (a persistent one, as "ip tuntap add" makes,
	// whose owner set its address) is attached and left as it is.
	mine := "02:11:22:33:44:55"
	persist := func(on bool) {
		t.Helper()
		tp, err := openTap(name, 1, guest)
		if err != nil {
			t.Fatal(err)
		}
		defer tp.close()
		v := 0
		if on {
			v = 1
		}
		if err := tp.control(0, func(fd int) error { return unix.IoctlSetInt(fd, unix.TUNSETPERSIST, v) }); err != nil {
			t.Fatalf("TUNSETPERSIST %d: %v", v, err)
		}
		if on {
			if err := tp.control(0, func(fd int) error { return tapabi.SetMAC(fd, mustMAC(t, mine)) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	persist(true)
	t.Cleanup(func() { persist(false) })
	var logged bytes.Buffer
	d, err := Open(Config{Tap: name, MAC: guest.String()}, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got := hostSideMAC(t, name); got != mine {
		t.Errorf("attaching to a TAP that was there changed its MAC to %s (its owner's: %s)", got, mine)
	}
	if d.HostMAC() != nil || strings.Contains(logged.String(), "created the TAP") {
		t.Errorf("attaching to a TAP that was there: HostMAC %v, log %q; want neither to claim govmm created it", d.HostMAC(), logged.String())
	}
	var read string
	if err := d.be.(*tap).control(0, func(fd int) error {
		m, err := tapabi.MAC(fd)
		read = m.String()
		return err
	}); err != nil || read != mine {
		t.Errorf("SIOCGIFHWADDR on the TAP's file: %s, %v; want %s", read, err, mine)
	}
	d.Close()
}
