package main

// govmm add-disk and add-net: the client side of a hot-add. The VMM is
// confined and opens no path once the guest runs, so this process opens
// the image or the TAP, checks the options as --disk and --net would, and
// passes the descriptor over the control socket.

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"govmm/api"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
)

// cmdHotAdd is `govmm add-disk --api-socket S path=FILE[,readonly=on][,serial=..]`
// and `govmm add-net --api-socket S tap=NAME[,mac=..]`.
func cmdHotAdd(name string, args []string, stdout, stderr io.Writer) error {
	var wait time.Duration
	c, fs, err := parseControl(name, args, stderr, func(fs *flag.FlagSet) {
		fs.DurationVar(&wait, "wait", api.DefaultHotAddWait, "how long to wait for the guest to bind a driver to the device")
	})
	if err != nil {
		return err
	}
	if wait <= 0 {
		return fail(exitUsage, "%s: --wait must be positive", name)
	}
	if fs.NArg() != 1 {
		if name == "add-disk" {
			return fail(exitUsage, "add-disk: want one argument, the disk as --disk takes it: path=FILE[,readonly=on][,serial=ID]")
		}
		return fail(exitUsage, "add-net: want one argument, the device as --net takes it: tap=NAME[,mac=MAC]")
	}
	spec := fs.Arg(0)
	var f *os.File
	// created notes the host-side MAC of a TAP this client created.
	var created string
	switch name {
	case "add-disk":
		dc, err := blk.ParseFlag(spec)
		if err != nil {
			return fail(exitUsage, "add-disk: %v", err)
		}
		if f, err = blk.OpenImageFile(dc); err != nil {
			return fail(exitUsage, "add-disk: %v", err)
		}
		// The VMM names the disk by the path it is given (info,
		// logs, a snapshot's record): the absolute one, not one
		// relative to this process.
		if abs, err := filepath.Abs(dc.Path); err == nil && abs != dc.Path {
			dc.Path = abs
			if spec, err = dc.Spec(); err != nil {
				return fail(exitUsage, "add-disk: %v", err)
			}
		}
	default:
		nc, err := virtionet.ParseFlag(spec)
		if err != nil {
			return fail(exitUsage, "add-net: %v", err)
		}
		var hostMAC net.HardwareAddr
		if f, hostMAC, err = virtionet.OpenTapFile(nc); err != nil {
			return fail(exitUsage, "add-net: %v", err)
		}
		if hostMAC != nil {
			created = virtionet.CreatedNote(hostMAC)
		}
	}
	defer f.Close()
	var d api.PCIDevice
	req := api.AddDeviceRequest{Spec: spec, WaitMS: wait.Milliseconds()}
	if name == "add-disk" {
		d, err = c.AddDisk(req, f)
	} else {
		d, err = c.AddNet(req, f)
	}
	if err != nil {
		return controlError(name, err)
	}
	fmt.Fprintf(stdout, "%s %s %s%s\n", d.Address, d.ID, d.What, created)
	return nil
}
