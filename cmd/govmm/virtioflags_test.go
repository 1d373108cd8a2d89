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

// TestConsoleFlag: --console is serial by default, virtio when asked,
// and anything else is refused naming the choices; run, restore and
// migrate receive share it through virtioFlags.
func TestConsoleFlag(t *testing.T) {
	parse := func(args ...string) (virtioFlags, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var f virtioFlags
		f.register(fs)
		return f, fs.Parse(args)
	}
	if f, err := parse(); err != nil || f.console.virtio || f.console.String() != "serial" {
		t.Errorf("default: %v, %v", f.console, err)
	}
	if f, err := parse("--console=virtio"); err != nil || !f.console.virtio {
		t.Errorf("--console=virtio: %v, %v", f.console, err)
	}
	if f, err := parse("--console", "virtio", "--console", "serial"); err != nil || f.console.virtio {
		t.Errorf("the last --console wins: %v, %v", f.console, err)
	}
	if _, err := parse("--console=hvc0"); err == nil || !strings.Contains(err.Error(), "want serial or virtio") {
		t.Errorf("--console=hvc0: %v", err)
	}
}
