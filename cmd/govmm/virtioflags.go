package main

import (
	"flag"
	"fmt"
	"strings"

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
	return fmt.Sprintf("cid=%d,socket=%s", f.c.CID, f.c.Socket)
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
	fs.Var(&f.disks, "disk", "virtio-blk disk backed by a raw image: path=FILE[,readonly=on][,serial=ID][,direct=on] (repeatable: vda, vdb, ...; direct=on opens the image with O_DIRECT, bypassing the host's page cache)")
	fs.BoolVar(&f.rng, "rng", false, "add a virtio-rng entropy device fed from the host's getrandom")
	fs.Var(&f.nets, "net", "virtio-net device on a TAP, attached or created by name: tap=NAME[,mac=MAC] (repeatable)")
	fs.Var(&f.vsock, "vsock", "virtio-vsock device: cid=N,socket=PATH (host clients connect to PATH and send \"CONNECT <port>\\n\"; guest connections to host port P go to PATH_P)")
}
