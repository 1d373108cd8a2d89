//go:build !arm64

package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"govmm/api"
	"govmm/vm"
)

func TestParseBalloonSize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "256M": 256 << 20, " 1G": 1 << 30} {
		if got, err := parseBalloonSize(in); err != nil || got != want {
			t.Errorf("parseBalloonSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1M", "1000", "lots"} {
		if _, err := parseBalloonSize(in); err == nil {
			t.Errorf("parseBalloonSize(%q) succeeded", in)
		}
	}
}

func TestBalloonConfigKeepsOnPinnedRAM(t *testing.T) {
	on := vm.VirtioConfig{Balloon: true}
	if c := balloonConfig(on, "mshv", "/dev/mshv"); c.BalloonKeep == "" {
		t.Error("a balloon on /dev/mshv releases pinned RAM")
	}
	for _, c := range []vm.VirtioConfig{balloonConfig(on, "mshv", "sim"), balloonConfig(on, "kvm", "/dev/mshv"), balloonConfig(vm.VirtioConfig{}, "mshv", "/dev/mshv")} {
		if c.BalloonKeep != "" {
			t.Errorf("%+v keeps inflated pages", c)
		}
	}
}

// balloonVM is a control target with a balloon of 1 GiB of RAM.
type balloonVM struct {
	api.Target
	target atomic.Uint64 // set by the control server's goroutine
}

func (b *balloonVM) SetBalloon(r api.BalloonRequest) (api.BalloonInfo, error) {
	if r.TargetBytes > 1<<30 {
		return api.BalloonInfo{}, errors.New("balloon target 2048 MiB is more than the guest's 1024 MiB of RAM")
	}
	b.target.Store(r.TargetBytes)
	return api.BalloonInfo{TargetBytes: r.TargetBytes}, nil
}

func TestCmdBalloon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	b := &balloonVM{}
	srv, err := api.Listen(sock, b)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var out, errb bytes.Buffer
	if code := realMain([]string{"balloon", "--api-socket", sock, "--size", "256M"}, strings.NewReader(""), &out, &errb); code != 0 || b.target.Load() != 256<<20 {
		t.Fatalf("balloon --size 256M: exit %d, target %d: %s", code, b.target.Load(), errb.String())
	}
	if !strings.Contains(out.String(), "balloon target 256 MiB") {
		t.Errorf("output %q", out.String())
	}
	if code, _ := run(t, "balloon", "--api-socket", sock, "--size", "0"); code != 0 || b.target.Load() != 0 {
		t.Errorf("balloon --size 0: exit %d, target %d", code, b.target.Load())
	}
	for _, args := range [][]string{
		{"balloon", "--api-socket", sock},
		{"balloon", "--api-socket", sock, "--size", "12"},
		{"balloon", "--api-socket", sock, "--size", "2G"},
		{"balloon", "--size", "1M"},
		{"balloon", "--api-socket", filepath.Join(t.TempDir(), "none"), "--size", "1M"},
	} {
		if code, stderr := run(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d: %s", args, code, exitUsage, stderr)
		}
	}
}

func TestPrintBalloon(t *testing.T) {
	var w bytes.Buffer
	printBalloon(&w, nil)
	if w.Len() != 0 {
		t.Errorf("no balloon printed %q", w.String())
	}
	printBalloon(&w, &api.BalloonInfo{TargetBytes: 256 << 20, ActualBytes: 128 << 20, ReleasedBytes: 128 << 20, Kept: "pinned"})
	for _, s := range []string{"target 256 MiB", "actual 128 MiB", "released to the host 128 MiB", "stay with the guest: pinned"} {
		if !strings.Contains(w.String(), s) {
			t.Errorf("balloon line %q lacks %q", w.String(), s)
		}
	}
}
