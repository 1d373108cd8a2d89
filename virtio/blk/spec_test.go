package blk

import (
	"strings"
	"testing"
)

// TestSpecRoundTrip: what a snapshot records of a hot-added disk parses
// back to the same configuration, for every option, and what the syntax
// cannot carry is refused naming why.
func TestSpecRoundTrip(t *testing.T) {
	for _, c := range []Config{
		{Path: "/img/a.img"},
		{Path: "/img/a.img", ReadOnly: true, Serial: "hot0"},
		{Path: "/img/b=c.img", Serial: "x=y", Direct: true, Packed: true},
	} {
		s, err := c.Spec()
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		got, err := ParseFlag(s)
		if err != nil || got != c {
			t.Errorf("%+v: Spec %q parses to %+v, %v", c, s, got, err)
		}
	}
	for _, c := range []struct {
		c    Config
		want string
	}{
		{Config{}, "no path"},
		{Config{Path: "/a,b.img"}, "comma"},
		{Config{Path: "/a.img", Serial: "a,b"}, "comma"},
	} {
		if _, err := c.c.Spec(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: want an error naming %q, got %v", c.c, c.want, err)
		}
	}
}
