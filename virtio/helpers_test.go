package virtio_test

import (
	"log/slog"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// attach puts dev on a transport over mem, with cfg's other settings
// (its Mem and Router are filled in), and a test driver on it; the test's
// cleanup closes the transport.
func attach(t testing.TB, dev virtio.Device, mem *virtiotest.Mem, cfg virtio.PCIConfig) (*virtiotest.Driver, *virtio.PCI) {
	t.Helper()
	vm, tb := virtiotest.NewVM()
	cfg.Mem, cfg.Router = mem, tb
	tr, err := virtio.NewPCI(dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	return d, tr
}

// attachRestored is attach for a transport restored from a saved
// configuration space and transport state, then started, as a restore
// builds it; the driver attached to it sees the restored queues.
func attachRestored(t testing.TB, dev virtio.Device, mem *virtiotest.Mem, cfg virtio.PCIConfig, fs pci.FunctionState, st virtio.PCIState) (*virtiotest.Driver, *virtio.PCI) {
	t.Helper()
	vm, tb := virtiotest.NewVM()
	cfg.Mem, cfg.Router = mem, tb
	tr, err := virtio.NewPCI(dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := tr.Function().Restore(fs); err != nil {
		t.Fatal(err)
	}
	if err := tr.Restore(st); err != nil {
		t.Fatal(err)
	}
	tr.Start()
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	return d, tr
}

func captureLog(w *virtiotest.SyncBuffer) func() {
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(w, nil)))
	return func() { slog.SetDefault(old) }
}

func writeFD(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
