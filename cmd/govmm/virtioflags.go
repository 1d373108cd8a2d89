package main

import (
	"flag"
	"fmt"
	"govmm/virtio/balloon"
	"strings"

	"govmm/internal/optlist"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
	"govmm/virtio/vsock"
)

// virtioFlags are the virtio device flags of run, restore and migrate
// receive (a restore must name the same devices the VM was saved with),
// the same on x86 and arm64 (virtioflags_x86.go and run_arm64.go turn
// them into each machine's configuration).
type virtioFlags struct {
	disks diskList
	rng   bool
	vsock vsockFlag
	nets  netList
	// console is --console: "serial" (the default) or "virtio".
	console consoleFlag
	// balloon is --balloon: a virtio-balloon device, steered through the
	// control socket (govmm balloon).
	balloon balloonFlag
}

// balloonFlag is --balloon[=KEY=on|off,...]: a balloon device, with
// Cloud Hypervisor's keys free_page_reporting and deflate_on_oom, and
// statistics (the memory statistics queue). Plain --balloon (and
// --balloon=true) adds the device with none of them, --balloon=false
// none.
type balloonFlag struct {
	on   bool
	opts balloon.Options
}

func (b *balloonFlag) IsBoolFlag() bool { return true }

func (b *balloonFlag) String() string {
	if b == nil || !b.on {
		return "false"
	}
	var kv []string
	for _, o := range b.keys() {
		if *o.v {
			kv = append(kv, o.key+"=on")
		}
	}
	if len(kv) == 0 {
		return "true"
	}
	return strings.Join(kv, ",")
}

// keys are the flag's keys and the options they set.
func (b *balloonFlag) keys() []struct {
	key string
	v   *bool
} {
	return []struct {
		key string
		v   *bool
	}{{"free_page_reporting", &b.opts.Reporting}, {"deflate_on_oom", &b.opts.DeflateOnOOM}, {"statistics", &b.opts.Stats}}
}

func (b *balloonFlag) Set(s string) error {
	switch s {
	case "true", "":
		*b = balloonFlag{on: true}
		return nil
	case "false":
		*b = balloonFlag{}
		return nil
	}
	v := balloonFlag{on: true}
	for _, kv := range strings.Split(s, ",") {
		k, val, ok := strings.Cut(kv, "=")
		var opt *bool
		for _, o := range v.keys() {
			if o.key == k {
				opt = o.v
			}
		}
		if !ok || opt == nil {
			return fmt.Errorf("%q: want free_page_reporting, deflate_on_oom or statistics =on|off (or no value)", kv)
		}
		switch val {
		case "on":
			*opt = true
		case "off":
			*opt = false
		default:
			return fmt.Errorf("%s=%q: want on or off", k, val)
		}
	}
	*b = v
	return nil
}

// consoleFlag is --console serial|virtio: which device is the guest's
// console. With virtio a virtio-console device (the guest's hvc0) is
// added after the other virtio devices, host input goes to it instead of
// the UART, and its output goes where --serial says, with the UART's.
type consoleFlag struct{ virtio bool }

func (c *consoleFlag) String() string {
	if c.virtio {
		return "virtio"
	}
	return "serial"
}

func (c *consoleFlag) Set(v string) error {
	switch v {
	case "serial":
		c.virtio = false
	case "virtio":
		c.virtio = true
	default:
		return fmt.Errorf("%q: want serial or virtio", v)
	}
	return nil
}

// netList is the repeatable --net flag.
type netList []virtionet.Config

func (n *netList) String() string {
	var s []string
	for _, c := range *n {
		s = append(s, c.Tap)
	}
	return strings.Join(s, " ")
}

func (n *netList) Set(v string) error {
	c, err := virtionet.ParseFlag(v)
	if err != nil {
		return err
	}
	*n = append(*n, c)
	return nil
}

// vsockFlag is the --vsock flag.
type vsockFlag struct{ c *vsock.Config }

func (f *vsockFlag) String() string {
	if f.c == nil {
		return ""
	}
	if f.c.Vhost {
		return fmt.Sprintf("cid=%d", f.c.CID)
	}
	return fmt.Sprintf("cid=%d,socket=%s", f.c.CID, optlist.Escape(f.c.Socket))
}

func (f *vsockFlag) Set(v string) error {
	if f.c != nil {
		return fmt.Errorf("--vsock given twice (one vsock device per VM)")
	}
	c, err := vsock.ParseFlag(v)
	if err != nil {
		return err
	}
	f.c = &c
	return nil
}

// diskList is the repeatable --disk flag.
type diskList []blk.Config

func (d *diskList) String() string {
	var s []string
	for _, c := range *d {
		s = append(s, c.Path)
	}
	return strings.Join(s, " ")
}

func (d *diskList) Set(v string) error {
	c, err := blk.ParseFlag(v)
	if err != nil {
		return err
	}
	*d = append(*d, c)
	return nil
}

func (f *virtioFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.disks, "disk", "virtio-blk disk backed by a raw image: path=FILE[,readonly=on][,serial=ID][,direct=on] (repeatable: vda, vdb, ...; direct=on opens the image with O_DIRECT, bypassing the host's page cache; write a comma in a value as ,,)")
	fs.BoolVar(&f.rng, "rng", false, "add a virtio-rng entropy device fed from the host's getrandom")
	fs.Var(&f.nets, "net", "virtio-net device on a TAP, attached or created by name: tap=NAME[,mac=MAC][,packed=on][,queues=N][,vhost=on] (repeatable; queues=N, 1..16, gives N receive/transmit queue pairs on a multiqueue TAP and a control queue; vhost=on has the kernel's vhost-net, /dev/vhost-net, serve the receive and transmit queues; write a comma in the name as ,,)")
	fs.Var(&f.console, "console", "the guest's console: serial (the UART) or virtio (a virtio-console device, hvc0: give the guest console=hvc0; host input goes to it, its output and the UART's go where --serial says)")
	fs.Var(&f.balloon, "balloon", "add a virtio-balloon device (last of the virtio devices): \"govmm balloon --api-socket PATH --size SIZE\" takes SIZE of RAM from the guest, and gives it back with --size 0; --balloon=free_page_reporting=on also takes back, on its own, the large free ranges the guest reports")
	fs.Var(&f.vsock, "vsock", "virtio-vsock device: cid=N (the kernel's vhost-vsock: host processes use AF_VSOCK with CID N; needs /dev/vhost-vsock) or cid=N,socket=PATH (served by govmm: host clients connect to PATH and send \"CONNECT <port>\\n\"; guest connections to host port P go to PATH_P); backend=vhost|hybrid says which explicitly")
}
