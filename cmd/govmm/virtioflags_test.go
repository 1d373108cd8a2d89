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

// TestNetFlagQueues: --net takes queues=N (1..16, 1 by default), and
// names a bad value; the usage names the option.
func TestNetFlagQueues(t *testing.T) {
	parse := func(args ...string) (virtioFlags, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var f virtioFlags
		f.register(fs)
		if u := fs.Lookup("net").Usage; !strings.Contains(u, "queues=N") {
			t.Errorf("--net's usage does not name queues=N: %q", u)
		}
		return f, fs.Parse(args)
	}
	f, err := parse("--net", "tap=a,queues=4", "--net=tap=b")
	if err != nil || len(f.nets) != 2 || f.nets[0].Queues != 4 || f.nets[1].Queues != 1 {
		t.Fatalf("%+v, %v", f.nets, err)
	}
	for _, bad := range []string{"tap=a,queues=0", "tap=a,queues=17", "tap=a,queues=x"} {
		if _, err := parse("--net", bad); err == nil || !strings.Contains(err.Error(), "queues=") {
			t.Errorf("--net %s: %v", bad, err)
		}
	}
}
