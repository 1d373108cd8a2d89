package net

import (
	"strings"
	"testing"
)

// TestSpecRoundTrip: what a snapshot records of a hot-added network
// device parses back to the same configuration (a MAC derived from the
// TAP's name written out; a comma in the name, which Linux allows,
// written ",,"), and what the syntax cannot carry is refused.
func TestSpecRoundTrip(t *testing.T) {
	for _, c := range []Config{
		{Tap: "tap0", MAC: "52:54:00:12:ab:cd", Queues: 1},
		{Tap: "tap1", Queues: 1},
		{Tap: "tap2", MAC: "52:54:00:00:00:01", Packed: true, Queues: 4, Vhost: true},
		{Tap: "t,1", Queues: 1},
		{Tap: "a=b,,", MAC: "52:54:00:00:00:02", Queues: 2},
	} {
		s, err := c.Spec()
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		got, err := ParseFlag(s)
		want := c
		if want.MAC == "" {
			want.MAC = derivedMAC(c.Tap)
		}
		if err != nil || got != want {
			t.Errorf("%+v: Spec %q parses to %+v, %v", c, s, got, err)
		}
	}
	for _, c := range []struct {
		c    Config
		want string
	}{
		{Config{}, "no TAP"},
		{Config{Tap: "tap0", MAC: "53:54:00:00:00:01"}, "multicast"},
		{Config{Tap: "tap0", MAC: "52:54:00"}, "not a 6-byte"},
		{Config{Tap: "tap0", Queues: MaxQueuePairs + 1}, "queue pairs"},
		{Config{Tap: "tap0", VhostPath: "/dev/vhost-net"}, "vhost device path"},
	} {
		if _, err := c.c.Spec(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: want an error naming %q, got %v", c.c, c.want, err)
		}
	}
}
