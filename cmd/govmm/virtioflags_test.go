package main

import (
	"flag"
	"io"
	"strings"
	"testing"
)

// --disk takes direct=on (and off) beside readonly and serial, repeated,
// and names a bad value.
func TestDiskFlagDirect(t *testing.T) {
	var f virtioFlags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.register(fs)
	if err := fs.Parse([]string{"--disk", "path=/a.img,direct=on,readonly=on", "--disk=path=/b.img,direct=off", "--disk", "path=/c.img"}); err != nil {
		t.Fatal(err)
	}
	want := diskList{{Path: "/a.img", ReadOnly: true, Direct: true}, {Path: "/b.img"}, {Path: "/c.img"}}
	if len(f.disks) != len(want) {
		t.Fatalf("disks %+v, want %+v", f.disks, want)
	}
	for i := range want {
		if f.disks[i] != want[i] {
			t.Errorf("disk %d: %+v, want %+v", i, f.disks[i], want[i])
		}
	}
	fs = flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var g virtioFlags
	g.register(fs)
	err := fs.Parse([]string{"--disk", "path=/a.img,direct=maybe"})
	if err == nil || !strings.Contains(err.Error(), "direct=maybe") {
		t.Fatalf("direct=maybe: %v", err)
	}
	if u := fs.Lookup("disk").Usage; !strings.Contains(u, "[,direct=on]") {
		t.Errorf("--disk's usage does not name direct=on: %q", u)
	}
}
