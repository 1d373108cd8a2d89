package vm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"govmm/virtio/blk"
	"govmm/virtio/devices"
	virtionet "govmm/virtio/net"
)

// Hot-added devices in saved state. A restore or a migration's
// destination builds its machine from its own flags, which name only the
// boot-time devices; the devices hot-added since (and not ejected) are
// recorded in the machine record (MachineState.HotAdded), by kind, slot
// and options in --disk / --net syntax, and the destination opens the
// image or TAP itself, as it opens a --disk or --net, before it is
// confined. Their transports' state travels with every other virtio
// device's, and the hotplug controller's in DeviceState.Hotplug.

// The kinds of hot-added device a record names.
const (
	HotAddedDisk = "disk"
	HotAddedNet  = "net"
)

// HotAddedDevice is one device hot-added to the VM and still present, as
// a snapshot or a live migration records it.
type HotAddedDevice struct {
	// Kind is HotAddedDisk or HotAddedNet.
	Kind string `json:"kind"`
	// Slot is its PCI slot on bus 0 (function 0).
	Slot int `json:"slot"`
	// Spec is its options in --disk or --net syntax, as the control
	// socket's client gave them (blk.Config.Spec, net.Config.Spec): the
	// image's absolute path, readonly, serial; the TAP's name, the MAC.
	// A comma in a value is written ",," (optlist).
	Spec string `json:"spec"`
}

// String names the device for messages: kind, slot and options.
func (h HotAddedDevice) String() string {
	return fmt.Sprintf("the hot-added %s at PCI slot %d (0000:00:%02x.0, %s)", h.Kind, h.Slot, h.Slot, h.Spec)
}

// hotDevice is a device hot-added to this VM: its record, or why it
// cannot have one (a snapshot or a migration of the VM is then refused,
// saying so).
type hotDevice struct {
	rec       HotAddedDevice
	uncarried error
}

// hotRecord makes a device's record, or the reason it has none.
func hotRecord(kind string, spec func() (string, error)) hotDevice {
	s, err := spec()
	if err != nil {
		return hotDevice{rec: HotAddedDevice{Kind: kind}, uncarried: err}
	}
	return hotDevice{rec: HotAddedDevice{Kind: kind, Spec: s}}
}

// parseDisk and parseNet parse a record's options as --disk and --net
// do, and refuse what a hot-added device cannot have.
func (h HotAddedDevice) parseDisk() (blk.Config, error) {
	c, err := blk.ParseFlag(h.Spec)
	if err != nil {
		return c, err
	}
	if !filepath.IsAbs(c.Path) {
		return c, fmt.Errorf("path %s is not absolute", c.Path)
	}
	if c.Direct {
		return c, errors.New("direct=on, which a hot-added disk does not have")
	}
	return c, nil
}

func (h HotAddedDevice) parseNet() (virtionet.Config, error) {
	c, err := virtionet.ParseFlag(h.Spec)
	if err != nil {
		return c, err
	}
	if c.Queues > 1 || c.Vhost {
		return c, errors.New("queues>1 or vhost=on, which a hot-added network device does not have")
	}
	return c, nil
}

// checkHotAdded validates the hot-added devices of a machine record: a
// kind, a slot from 1 to 31 that no other has, options that parse.
func checkHotAdded(list []HotAddedDevice) error {
	seen := map[int]bool{}
	for i, h := range list {
		if h.Slot < 1 || h.Slot > 31 {
			return fmt.Errorf("hot-added device %d (%s %q): PCI slot %d is outside 1..31", i, h.Kind, h.Spec, h.Slot)
		}
		if seen[h.Slot] {
			return fmt.Errorf("hot-added devices: two at PCI slot %d", h.Slot)
		}
		seen[h.Slot] = true
		var err error
		switch h.Kind {
		case HotAddedDisk:
			_, err = h.parseDisk()
		case HotAddedNet:
			_, err = h.parseNet()
		default:
			return fmt.Errorf("hot-added device at PCI slot %d: kind %q, want %q or %q", h.Slot, h.Kind, HotAddedDisk, HotAddedNet)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", h, err)
		}
	}
	return nil
}

// hotAddedLocked lists the VM's hot-added devices by slot. Called with
// v.hotMu held.
func (v *VM) hotAddedLocked() []HotAddedDevice {
	if v.plat == nil || len(v.plat.hotDevs) == 0 {
		return nil
	}
	var out []HotAddedDevice
	for _, d := range v.plat.hotDevs {
		out = append(out, d.rec)
	}
	slices.SortFunc(out, func(a, b HotAddedDevice) int { return a.Slot - b.Slot })
	return out
}

// refuseUncarriedLocked refuses a snapshot or a live migration of a VM
// with a hot-added device its record cannot describe, naming it and why.
// Called with v.hotMu held.
func (v *VM) refuseUncarriedLocked(what string) error {
	if v.plat == nil {
		return nil
	}
	var why []string
	for slot := 1; slot < 32; slot++ {
		if d, ok := v.plat.hotDevs[slot]; ok && d.uncarried != nil {
			why = append(why, fmt.Sprintf("the hot-added %s at PCI slot %d: %v", d.rec.Kind, slot, d.uncarried))
		}
	}
	if len(why) > 0 {
		return &InputError{Err: fmt.Errorf("%s: %s; a restore or a destination could not open it again (eject it first)", what, strings.Join(why, "; "))}
	}
	return nil
}

// rebuildHotAdded puts the saved VM's hot-added devices back at their
// slots, after the boot-time devices: the VMM opens each image or TAP
// itself (it is not confined yet), and the transports stay in their
// reset state, with BARs unplaced, until Apply loads the saved PCI and
// virtio state.
func (v *VM) rebuildHotAdded(p *platformDevices, list []HotAddedDevice) error {
	if len(list) == 0 {
		return nil
	}
	if err := checkHotAdded(list); err != nil {
		return &InputError{Err: err}
	}
	if p.virtioSet == nil {
		p.virtioSet = &devices.Set{}
	}
	for _, rec := range list {
		if !slices.Contains(p.hotSlots, rec.Slot) {
			return &InputError{Err: fmt.Errorf("%s: slot %d is not a hotplug slot of this machine (slots %v are): start it with the boot-time devices the saved VM had", rec, rec.Slot, p.hotSlots)}
		}
		var err error
		var logArgs []any
		switch rec.Kind {
		case HotAddedDisk:
			c, _ := rec.parseDisk()
			var f *os.File
			if f, err = blk.OpenImageFile(c); err == nil {
				var fd int
				if fd, err = dupClose(f); err == nil {
					_, err = p.virtioSet.HotAddDisk(v.cfg.Virtio, c, fd, rec.Slot, v.hotHost(p))
				}
			}
		case HotAddedNet:
			c, _ := rec.parseNet()
			var f *os.File
			var hostMAC net.HardwareAddr
			if f, hostMAC, err = virtionet.OpenTapFile(c); err == nil {
				if hostMAC != nil {
					// This VMM created the TAP: its host side has
					// the address the saved VM's TAP had, if
					// govmm created that one too.
					logArgs = append(logArgs, "created_tap_host_mac", hostMAC.String())
				}
				var fd int
				if fd, err = dupClose(f); err == nil {
					_, err = p.virtioSet.HotAddNet(v.cfg.Virtio, c, fd, rec.Slot, v.hotHost(p))
				}
			}
		}
		if err != nil {
			return &InputError{Err: fmt.Errorf("%s: %w", rec, err)}
		}
		if p.hotDevs == nil {
			p.hotDevs = map[int]hotDevice{}
		}
		p.hotDevs[rec.Slot] = hotDevice{rec: rec}
		v.log.Info("hot-added device rebuilt from the saved VM", append([]any{"slot", rec.Slot, "kind", rec.Kind, "spec", rec.Spec}, logArgs...)...)
	}
	p.virtio = p.virtioSet.List()
	return nil
}

// dupClose returns a descriptor of its own for f's open file (the
// non-blocking flag a TAP's has stays: it belongs to the open file) and
// closes f.
func dupClose(f *os.File) (int, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(raw uintptr) { fd, derr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("duplicate %s: %w", f.Name(), derr)
	}
	return fd, nil
}
