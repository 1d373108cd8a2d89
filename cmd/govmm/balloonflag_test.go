package main

import (
	"flag"
	"io"
	"testing"

	"govmm/virtio/balloon"
)

// TestBalloonFlag: --balloon alone adds the device, KEY=on adds it with
// that feature (free_page_reporting, deflate_on_oom, statistics), =false
// none; anything else is refused. String gives back what Set took.
func TestBalloonFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		on   bool
		opts balloon.Options
		bad  bool
	}{
		{nil, false, balloon.Options{}, false},
		{[]string{"--balloon"}, true, balloon.Options{}, false},
		{[]string{"--balloon=true"}, true, balloon.Options{}, false},
		{[]string{"--balloon=false"}, false, balloon.Options{}, false},
		{[]string{"--balloon=free_page_reporting=on"}, true, balloon.Options{Reporting: true}, false},
		{[]string{"--balloon=free_page_reporting=off"}, true, balloon.Options{}, false},
		{[]string{"--balloon=deflate_on_oom=on"}, true, balloon.Options{DeflateOnOOM: true}, false},
		{[]string{"--balloon=statistics=on,free_page_reporting=on"}, true, balloon.Options{Reporting: true, Stats: true}, false},
		{[]string{"--balloon=free_page_reporting=on,deflate_on_oom=on,statistics=on"}, true, balloon.Options{Reporting: true, DeflateOnOOM: true, Stats: true}, false},
		{[]string{"--balloon=free_page_reporting=yes"}, false, balloon.Options{}, true},
		{[]string{"--balloon=statistics"}, false, balloon.Options{}, true},
		{[]string{"--balloon=size=1G"}, false, balloon.Options{}, true},
	} {
		var f virtioFlags
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.register(fs)
		err := fs.Parse(c.args)
		if (err != nil) != c.bad {
			t.Errorf("%q: error %v", c.args, err)
			continue
		}
		if c.bad {
			continue
		}
		if f.balloon.on != c.on || f.balloon.opts != c.opts {
			t.Errorf("%q: %+v, want on=%v %+v", c.args, f.balloon, c.on, c.opts)
		}
		var again balloonFlag
		if err := again.Set(f.balloon.String()); err != nil || again != f.balloon {
			t.Errorf("%q: String %q sets %+v (%v)", c.args, f.balloon.String(), again, err)
		}
	}
}
