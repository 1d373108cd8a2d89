package main

import (
	"flag"
	"io"
	"testing"
)

// TestBalloonFlag: --balloon alone adds the device, =free_page_reporting=on
// adds it with page reporting, =false none; anything else is refused.
func TestBalloonFlag(t *testing.T) {
	for _, c := range []struct {
		args          []string
		on, reporting bool
		bad           bool
	}{
		{nil, false, false, false},
		{[]string{"--balloon"}, true, false, false},
		{[]string{"--balloon=true"}, true, false, false},
		{[]string{"--balloon=false"}, false, false, false},
		{[]string{"--balloon=free_page_reporting=on"}, true, true, false},
		{[]string{"--balloon=free_page_reporting=off"}, true, false, false},
		{[]string{"--balloon=free_page_reporting=yes"}, false, false, true},
		{[]string{"--balloon=deflate_on_oom=on"}, false, false, true},
		{[]string{"--balloon=size=1G"}, false, false, true},
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
		if !c.bad && (f.balloon.on != c.on || f.balloon.reporting != c.reporting) {
			t.Errorf("%q: %+v, want on=%v reporting=%v", c.args, f.balloon, c.on, c.reporting)
		}
	}
}
