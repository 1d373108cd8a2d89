package devices

import (
	"fmt"
	"strings"
)

// Compare checks the virtio devices a live migration's source announced
// (each device's virtio.Device.Describe, in slot order) against the
// destination's own, before any guest memory moves, and names every
// difference by PCI slot: a device missing here, one extra here, or one
// configured differently (another image, size, TAP or CID). The x86 and
// arm64 receivers both use it: their devices are built by this package
// at the same slots.
func Compare(source, here []string) error {
	var diffs []string
	for i := range max(len(source), len(here)) {
		slot := i + 1 // virtio devices start at PCI slot 1
		switch {
		case i >= len(here):
			diffs = append(diffs, fmt.Sprintf("slot %d: the source's %q is missing here", slot, source[i]))
		case i >= len(source):
			diffs = append(diffs, fmt.Sprintf("slot %d: %q here is not on the source", slot, here[i]))
		case source[i] != here[i]:
			diffs = append(diffs, fmt.Sprintf("slot %d: the source has %q, this destination %q", slot, source[i], here[i]))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("the incoming VM's virtio devices differ from this destination's: %s (give migrate receive the source's --disk, --rng, --vsock, --net, --console and --balloon flags: the same image paths, as on shared storage, the same TAP names and vsock CIDs)",
		strings.Join(diffs, "; "))
}

// Describe lists the set's devices as a migration's hello carries them:
// each one's virtio.Device.Describe, in slot order.
func (s *Set) Describe() []string {
	out := []string{}
	for _, d := range s.Devices {
		out = append(out, d.Transport.Device().Describe())
	}
	return out
}
