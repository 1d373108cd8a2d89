package main

import (
	"flag"
	"strings"

	"govmm/virtio/blk"
	"govmm/vm"
)

// virtioFlags are the virtio device flags of run, restore and migrate
// receive (a restore must name the same devices the VM was saved with).
type virtioFlags struct {
	disks diskList
	rng   bool
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
	fs.Var(&f.disks, "disk", "virtio-blk disk backed by a raw image: path=FILE[,readonly=on][,serial=ID] (repeatable: vda, vdb, ...)")
	fs.BoolVar(&f.rng, "rng", false, "add a virtio-rng entropy device fed from the host's getrandom")
}

func (f *virtioFlags) config() vm.VirtioConfig {
	return vm.VirtioConfig{Disks: f.disks, RNG: f.rng}
}
