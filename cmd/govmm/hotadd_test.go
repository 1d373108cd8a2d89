//go:build !arm64

package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"govmm/api"
)

// hotAddVM is a control target that records the specs hot-adds send.
type hotAddVM struct {
	api.Target
	mu    sync.Mutex // the control server calls from its own goroutine
	specs []string
}

func (h *hotAddVM) record(spec string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.specs = append(h.specs, spec)
}

// take returns the specs received since the last take.
func (h *hotAddVM) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.specs
	h.specs = nil
	return s
}

func (h *hotAddVM) AddDisk(req api.AddDeviceRequest, fd int) (api.PCIDevice, error) {
	os.NewFile(uintptr(fd), "passed").Close()
	h.record(req.Spec)
	return api.PCIDevice{Address: "0000:00:01.0", ID: "1af4:1042", What: "virtio-blk"}, nil
}

func (h *hotAddVM) AddNet(req api.AddDeviceRequest, fd int) (api.PCIDevice, error) {
	os.NewFile(uintptr(fd), "passed").Close()
	h.record(req.Spec)
	return api.PCIDevice{Address: "0000:00:02.0", ID: "1af4:1041", What: "virtio-net"}, nil
}

// TestCmdAddDiskCommas: add-disk takes an image path and a serial with
// commas written ",,", opens the image, and sends the VMM the options
// with the path made absolute and the commas still doubled; a path given
// absolute goes as the client wrote it. A single comma splits the list,
// as before.
func TestCmdAddDiskCommas(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("a,b.img", make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "vm.sock")
	h := &hotAddVM{}
	srv, err := api.Listen(sock, h)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	abs := filepath.Join(dir, "a,,b.img")
	for _, c := range []struct{ arg, want string }{
		{"path=a,,b.img,serial=s,,1,readonly=on", "path=" + abs + ",readonly=on,serial=s,,1"},
		{"path=" + abs + ",serial=s,,1", "path=" + abs + ",serial=s,,1"},
	} {
		code, stderr := run(t, "add-disk", "--api-socket", sock, c.arg)
		if specs := h.take(); code != 0 || len(specs) != 1 || specs[0] != c.want {
			t.Errorf("add-disk %s: exit %d, sent %q, want %q: %s", c.arg, code, specs, c.want, stderr)
		}
	}
	code, stderr := run(t, "add-disk", "--api-socket", sock, "path=a,b.img")
	if specs := h.take(); code != exitUsage || len(specs) != 0 || !strings.Contains(stderr, `"b.img" is not key=value`) {
		t.Errorf("add-disk path=a,b.img: exit %d, sent %q: %s", code, specs, stderr)
	}
}
