package virtio_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// inEpoll reports whether fd is registered with an epoll instance of
// this process (Go's poller is one), from /proc/self/fdinfo.
func inEpoll(t *testing.T, fd int) bool {
	t.Helper()
	links, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		b, err := os.ReadFile("/proc/self/fdinfo/" + filepath.Base(l))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
				return true
			}
		}
	}
	return false
}

// threadInRead reports whether a thread of this process is blocked in
// read(2) on fd (/proc/self/task/TID/syscall: the call's number, then its
// arguments).
func threadInRead(t *testing.T, fd int) bool {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/syscall")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 || f[0] != strconv.Itoa(unix.SYS_READ) {
			continue
		}
		if a, err := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64); err == nil && a == uint64(fd) {
			return true
		}
	}
	return false
}
