package blk

import (
	"strings"
	"testing"
)

// TestSpecRoundTrip: what a snapshot records of a hot-added disk parses
// back to the same configuration, for every option, commas in the path
// and the serial included (written ",,"), and a Config ParseFlag could
// not have made is refused naming why.
func TestSpecRoundTrip(t *testing.T) {
	for _, c := range []Config{
		{Path: "/img/a.img"},
		{Path: "/img/a.img", ReadOnly: true, Serial: "hot0"},
		{Path: "/img/b=c.img", Serial: "x=y", Direct: true, Packed: true},
		{Path: "/img/a,b.img", Serial: "s,1"},
		{Path: "/img/,,a,", ReadOnly: true, Serial: ",", Packed: true},
		{Path: ",", Serial: "01234567890123456,,,"},
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
	if s, _ := (Config{Path: "/img/a,b.img", Serial: "s,1"}).Spec(); s != "path=/img/a,,b.img,serial=s,,1" {
		t.Errorf("Spec with commas = %q, want them doubled", s)
	}
	for _, c := range []struct {
		c    Config
		want string
	}{
		{Config{}, "no path"},
		{Config{Path: "/a.img", Serial: "012345678901234567890"}, "longer than 20 bytes"},
	} {
		if _, err := c.c.Spec(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: want an error naming %q, got %v", c.c, c.want, err)
		}
	}
}
