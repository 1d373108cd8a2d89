//go:build !arm64

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"govmm/api"
)

// run calls govmm's main with args and returns its exit status and stderr.
func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := realMain(args, strings.NewReader(""), &stdout, &stderr)
	return code, stderr.String()
}

// An accelerator that cannot open anywhere: a missing MSHV device.
var noAccel = []string{"--accel", "mshv", "--mshv-device", "/nonexistent/mshv"}

// A serial file is left alone when the accelerator cannot be opened: run
// and restore open it only once the accelerator works.
func TestSerialFileNotTruncatedWithoutAccel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stderr := run(t, append([]string{"run", "--serial", "file:" + path}, noAccel...)...)
	if code != exitNoAccel {
		t.Fatalf("run without the accelerator: exit %d, want %d: %s", code, exitNoAccel, stderr)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatalf("--serial file was truncated before the accelerator check failed: %q", b)
	}
	code, stderr = run(t, append([]string{"migrate", "receive", "--listen", "unix:" + filepath.Join(t.TempDir(), "m.sock"), "--serial", "file:" + path}, noAccel...)...)
	if code != exitNoAccel {
		t.Fatalf("migrate receive without the accelerator: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatalf("migrate receive truncated the --serial file: %q", b)
	}
}

// Bad input is 64 on any host, also one without the accelerator: every
// input is checked before the accelerator is opened.
func TestBadInputBeforeAccel(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "kernel")
	if err := os.WriteFile(bad, []byte("\x7fELF\x02\x01\x01\x00 truncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := [][]string{
		{"run", "--kernel", bad},
		{"run", "--serial", "file:" + filepath.Join(dir, "no", "such", "dir", "log")},
		{"run", "--serial", "file:" + dir},
		{"run", "--api-socket", filepath.Join(dir, "no", "such", "dir", "vm.sock")},
		{"migrate", "receive", "--listen", "udp:1.2.3.4:5"},
		{"migrate", "receive", "--listen", "unix:" + filepath.Join(dir, "no", "such", "dir", "m.sock")},
		{"migrate", "receive", "--listen", "unix:" + filepath.Join(dir, "m.sock"), "--memory", "lots"},
		{"migrate", "receive", "--listen", "unix:" + filepath.Join(dir, "m.sock"), "--serial", "tty"},
	}
	for _, c := range cases {
		code, stderr := run(t, append(c, noAccel...)...)
		if code != exitUsage {
			t.Errorf("govmm %s: exit %d, want %d (bad input): %s", strings.Join(c, " "), code, exitUsage, stderr)
		}
	}
}

// A control socket that is missing, not a socket, or served by no VM is
// bad input (64), not "accelerator unavailable" (69).
func TestMissingControlSocket(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o644)
	for _, sock := range []string{filepath.Join(dir, "nope.sock"), plain} {
		for _, args := range [][]string{
			{"pause", "--api-socket", sock},
			{"info", "--api-socket", sock},
			{"snapshot", "--api-socket", sock, "--dir", dir},
			{"migrate", "send", "--api-socket", sock, "--to", "unix:/x"},
		} {
			if code, stderr := run(t, args...); code != exitUsage || !strings.Contains(stderr, "control socket") {
				t.Errorf("govmm %s: exit %d, want %d: %s", strings.Join(args, " "), code, exitUsage, stderr)
			}
		}
	}
}

type snapTarget struct {
	api.Target
	dir string
}

func (s *snapTarget) Snapshot(r api.SnapshotRequest, _ func(done, total uint64)) (api.SnapshotResult, error) {
	s.dir = r.Dir
	return api.SnapshotResult{Dir: r.Dir}, nil
}

// snapshot --dir with a relative path means the client's directory: the VM
// gets an absolute path.
func TestSnapshotDirIsClientRelative(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	tg := &snapTarget{}
	srv, err := api.Listen(sock, tg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if code, stderr := run(t, "snapshot", "--api-socket", sock, "--dir", "rel/snap"); code != 0 {
		t.Fatalf("snapshot: exit %d: %s", code, stderr)
	}
	wd, _ := os.Getwd()
	if want := filepath.Join(wd, "rel/snap"); tg.dir != want {
		t.Fatalf("the VM was asked to write %q, want %q", tg.dir, want)
	}
}
