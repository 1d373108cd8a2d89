package vm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"govmm/snapshot"
	"govmm/vfio"
)

// A VM with passed-through devices is saved and migrated when every
// device has VFIO migration: each device's state goes in a section
// "vfio/N" of its own (N: the device's place in --device order), beside
// the PCI bus's state, which holds govmm's side of the function
// (configuration space: BARs, command register, the MSI and MSI-X
// capabilities, interrupt line). The section holds the interrupt state
// govmm keeps outside configuration space too (the MSI-X table, the MSI
// and MSI-X pending bits).
//
// In a live migration a device with PRE_COPY enters it with the dirty
// logs (StartDirtyLog) and is read during the rounds (DevicePreCopy,
// sent by package migrate as device frames named by section); its
// section then counts those bytes (PreCopy), and the receiver puts them
// back in front of the section's data (Restored.AddPreCopy) before the
// device loads it.

// vfioVersion is the version of the "vfio/N" sections. Version 2 added
// the interrupt state (MSI-X, pending bits) and the pre-copy count;
// version 1 sections (no device with MSI-X could be saved then) are read,
// with nothing pending.
const vfioVersion = 2

// vfioSection names device i's section.
func vfioSection(i int) string { return "vfio/" + strconv.Itoa(i) }

// refuseUnmigratable refuses what (a snapshot, a live migration) when a
// device cannot be migrated, naming each such device and why; nil when
// every device can, or there are none.
func (x *vfioDevices) refuseUnmigratable(what string) error {
	if x == nil {
		return nil
	}
	var why []string
	for _, d := range x.devs {
		if err := d.Migratable(); err != nil {
			why = append(why, err.Error())
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("%s of a VM with VFIO devices %v is not supported: %s", what, x.names(), strings.Join(why, "; "))
	}
	return nil
}

// save stops every device and adds its state to st. The VM is paused;
// run returns the devices to RUNNING when it resumes.
func (x *vfioDevices) save(st *snapshot.State) error {
	if x == nil {
		return nil
	}
	for i, d := range x.devs {
		ms, err := d.SaveMigration()
		if err != nil {
			return fmt.Errorf("save VFIO device state: %w", err)
		}
		if err := st.Add(vfioSection(i), vfioVersion, ms); err != nil {
			return err
		}
		x.log.Info("vfio device state saved", "device", d.Name(), "bytes", len(ms.Data), "pre_copy_bytes", ms.PreCopy, "msix", ms.MSIX != nil)
	}
	return nil
}

// run returns stopped devices to RUNNING; failures are logged (the
// guest runs on, and the device is in whatever state its driver left).
func (x *vfioDevices) run() {
	if x == nil {
		return
	}
	for _, d := range x.devs {
		if err := d.Run(); err != nil {
			x.log.Error("vfio: return the device to RUNNING", "device", d.Name(), "err", err)
		}
	}
}

// parseVFIO reads the "vfio/N" sections, in order, until one is missing.
func parseVFIO(st *snapshot.State) ([]vfio.MigrationState, error) {
	var out []vfio.MigrationState
	for i := 0; ; i++ {
		if _, ok := st.Find(vfioSection(i)); !ok {
			break
		}
		var ms vfio.MigrationState
		if _, err := st.Get(vfioSection(i), 1, vfioVersion, &ms); err != nil {
			return nil, err
		}
		if len(ms.Data) == 0 && ms.PreCopy == 0 {
			return nil, fmt.Errorf("state section %q: the device %s has no migration data", vfioSection(i), ms.Name)
		}
		out = append(out, ms)
	}
	for _, n := range st.Names() {
		if rest, ok := strings.CutPrefix(n, "vfio/"); ok {
			if i, err := strconv.Atoi(rest); err != nil || i >= len(out) {
				return nil, fmt.Errorf("state section %q is out of sequence (%d VFIO devices before it)", n, len(out))
			}
		}
	}
	return out, nil
}

// checkLoad refuses saved VFIO state that does not fit this VM's devices,
// before any is loaded.
func (x *vfioDevices) checkLoad(saved []vfio.MigrationState) error {
	var have []string
	if x != nil {
		have = x.names()
	}
	if len(saved) != len(have) {
		var names []string
		for _, s := range saved {
			names = append(names, s.Name)
		}
		return fmt.Errorf("the saved VM had %d VFIO devices %v, this one %d %v: give a --device vfio=... of the same kind for each, in the same order", len(saved), names, len(have), have)
	}
	var errs []error
	for i, s := range saved {
		errs = append(errs, x.devs[i].CheckMigration(s))
	}
	return errors.Join(errs...)
}

// load loads saved state into the devices, after the PCI bus's state,
// and runs them: the guest runs next.
func (x *vfioDevices) load(saved []vfio.MigrationState) error {
	if len(saved) == 0 {
		return nil
	}
	for i, s := range saved {
		if err := x.devs[i].LoadMigration(s); err != nil {
			return fmt.Errorf("restore VFIO device state: %w", err)
		}
		// Its interrupts now, after the interrupt controllers' state
		// (addVFIO left a VM built for saved state unstarted).
		if err := x.devs[i].Start(); err != nil {
			return fmt.Errorf("restore VFIO device %s: %w", x.devs[i].Name(), err)
		}
		x.log.Info("vfio device state restored", "device", x.devs[i].Name(), "from", s.Name, "bytes", len(s.Data), "msix", s.MSIX != nil)
	}
	x.run()
	return nil
}

// AddPreCopy puts the device data a live migration sent during its
// rounds (by section name, "vfio/N") in front of each device's state,
// where its driver expects it: one stream, written whole in RESUMING. A
// section must get exactly the bytes it counts, and data for a section
// the state does not have is refused.
func (r *Restored) AddPreCopy(data map[string][]byte) error {
	for name := range data {
		i, err := strconv.Atoi(strings.TrimPrefix(name, "vfio/"))
		if !strings.HasPrefix(name, "vfio/") || err != nil || i < 0 || i >= len(r.VFIO) {
			return fmt.Errorf("the migration sent pre-copy data for %q, which is not one of the %d VFIO devices of its state", name, len(r.VFIO))
		}
	}
	for i := range r.VFIO {
		s := &r.VFIO[i]
		pre := data[vfioSection(i)]
		if uint64(len(pre)) != s.PreCopy {
			return fmt.Errorf("VFIO device %s (%s): %d bytes of its pre-copy data arrived, its state counts %d", s.Name, vfioSection(i), len(pre), s.PreCopy)
		}
		if s.PreCopy == 0 {
			continue
		}
		s.Data = append(append([]byte(nil), pre...), s.Data...)
		s.PreCopy = 0
	}
	return nil
}

// startPreCopy puts the devices that offer PRE_COPY in it, at the start
// of a live migration's copy of guest RAM; on a failure those started
// return to RUNNING and the error names the device.
func (x *vfioDevices) startPreCopy() error {
	if x == nil {
		return nil
	}
	for i, d := range x.devs {
		on, err := d.StartPreCopy()
		if err != nil {
			for _, e := range x.devs[:i] {
				e.EndPreCopy()
			}
			return fmt.Errorf("live migration: %w", err)
		}
		if on {
			x.log.Info("vfio device in PRE_COPY", "device", d.Name())
		}
	}
	return nil
}

// preCopyData returns what each device in PRE_COPY offers now, by
// section name.
func (x *vfioDevices) preCopyData() (map[string][]byte, error) {
	if x == nil {
		return nil, nil
	}
	var out map[string][]byte
	for i, d := range x.devs {
		b, err := d.PreCopyData()
		if err != nil {
			return nil, err
		}
		if len(b) > 0 {
			if out == nil {
				out = map[string][]byte{}
			}
			out[vfioSection(i)] = b
			x.log.Info("vfio device pre-copy data read", "device", d.Name(), "bytes", len(b))
		}
	}
	return out, nil
}

// endPreCopy returns devices still in PRE_COPY to RUNNING (a live
// migration that ended before they stopped); failures are logged.
func (x *vfioDevices) endPreCopy() {
	if x == nil {
		return
	}
	for _, d := range x.devs {
		if err := d.EndPreCopy(); err != nil {
			x.log.Error("vfio: return the device from PRE_COPY to RUNNING", "device", d.Name(), "err", err)
		}
	}
}

// startDMALogging has every device log its DMA writes to guest RAM for
// a live migration, after checking that each can be migrated; on a
// failure the devices started are stopped again and the error names the
// device.
func (x *vfioDevices) startDMALogging(ranges []vfio.DirtyRange) error {
	if x == nil {
		return nil
	}
	if err := x.refuseUnmigratable("live migration"); err != nil {
		return err
	}
	for i, d := range x.devs {
		if err := d.StartDMALogging(ranges); err != nil {
			for _, e := range x.devs[:i] {
				e.StopDMALogging()
			}
			return fmt.Errorf("live migration of a VM with VFIO devices %v is not supported: %w", x.names(), err)
		}
	}
	return nil
}

// dmaDirty marks what the devices wrote by DMA since the last call in
// the VMM's dirty log.
func (x *vfioDevices) dmaDirty(mark func(gpa, size uint64)) error {
	if x == nil {
		return nil
	}
	for _, d := range x.devs {
		if err := d.DMADirty(mark); err != nil {
			return err
		}
	}
	return nil
}

// stopDMALogging ends the devices' DMA logging.
func (x *vfioDevices) stopDMALogging() error {
	if x == nil {
		return nil
	}
	var errs []error
	for _, d := range x.devs {
		errs = append(errs, d.StopDMALogging())
	}
	return errors.Join(errs...)
}
