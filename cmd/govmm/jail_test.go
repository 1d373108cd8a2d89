//go:build !arm64

package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"govmm/guests"
	"govmm/jail"
)

func TestRewriteFlags(t *testing.T) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var rf runFlags
	rf.register(fs)
	args := []string{"--kernel", "/a/k", "-disk=path=/x/d.img,readonly=on", "--disk", "path=/y/e.img,serial=s",
		"--rng", "--serial", "file:/tmp/s.log", "--api-socket=/run/a.sock", "--vsock", "cid=3,socket=/tmp/v.sock",
		"--memory", "128M", "--hugepages=false", "--cmdline", "console=ttyS0 path=/x"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	n := 0
	got := rewriteFlags(args, fs, func(name, v string) string {
		n++
		return strings.ToUpper(name) + "<" + v + ">"
	})
	want := []string{"--kernel=KERNEL</a/k>", "--disk=DISK<path=/x/d.img,readonly=on>", "--disk=DISK<path=/y/e.img,serial=s>",
		"--rng", "--serial=SERIAL<file:/tmp/s.log>", "--api-socket=API-SOCKET</run/a.sock>", "--vsock=VSOCK<cid=3,socket=/tmp/v.sock>",
		"--memory=MEMORY<128M>", "--hugepages=false", "--cmdline=CMDLINE<console=ttyS0 path=/x>"}
	if !reflect.DeepEqual(got, want) || n != 8 {
		t.Errorf("rewriteFlags =\n%q\nwant\n%q (%d rewrites)", got, want, n)
	}
	if got := replaceOption("path=/a,readonly=on,serial=path", "path", "/disk0"); got != "path=/disk0,readonly=on,serial=path" {
		t.Errorf("replaceOption = %q", got)
	}
	// Commas written as ",," (in the path replaced and in the values
	// kept) stay one option each.
	if got := replaceOption("path=/a,,b.img,serial=s,,1,readonly=on", "path", "/disk0"); got != "path=/disk0,serial=s,,1,readonly=on" {
		t.Errorf("replaceOption with escaped commas = %q", got)
	}
}

// jailFiles writes a kernel (the probe guest) and two disk images, the
// second with a comma in its name.
func jailFiles(t *testing.T) (kernel, disk0, disk1 string) {
	t.Helper()
	dir := t.TempDir()
	img, err := guests.Image(defaultGuest)
	if err != nil {
		t.Fatal(err)
	}
	kernel, disk0, disk1 = filepath.Join(dir, "k.elf"), filepath.Join(dir, "a.img"), filepath.Join(dir, "b,1.img")
	for _, f := range []struct {
		p string
		b []byte
	}{{kernel, img}, {disk0, make([]byte, 4096)}, {disk1, make([]byte, 4096)}} {
		if err := os.WriteFile(f.p, f.b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return
}

func TestJailConfig(t *testing.T) {
	kernel, disk0, disk1 := jailFiles(t)
	f := jailFlags{id: "vm-1", uid: 1000, gid: 1000, chrootBase: "/srv/x", newPIDNS: true, newUserNS: true,
		files: []jail.File{{Host: "/etc/hostname", Jail: "/hostname"}}}
	runArgs := []string{"--accel", "mshv", "--mshv-device", "/dev/null", "--kernel", kernel,
		"--disk", "path=" + disk0 + ",readonly=on", "--disk=path=" + strings.ReplaceAll(disk1, ",", ",,") + ",serial=s,,1", "--net", "tap=tap0",
		"--serial", "file:/var/log/vm.log", "--api-socket", "/run/vm.sock", "--vsock", "cid=3,socket=/run/v.sock", "--cpus", "2"}
	c, err := jailConfig(f, runArgs, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	if c.ID != "vm-1" || c.UID != 1000 || c.GID != 1000 || c.ChrootBase != "/srv/x" || !c.NewPIDNS || !c.NewUserNS || c.Exec != exe {
		t.Errorf("config %+v", c)
	}
	wantFiles := []jail.File{{Host: kernel, Jail: "/kernel"}, {Host: disk0, Jail: "/disk0"}, {Host: disk1, Jail: "/disk1", Write: true}, {Host: "/etc/hostname", Jail: "/hostname"}}
	if !reflect.DeepEqual(c.Files, wantFiles) {
		t.Errorf("files %+v\nwant %+v", c.Files, wantFiles)
	}
	if want := []string{"/dev/null", "/dev/net/tun"}; !reflect.DeepEqual(c.Devices, want) {
		t.Errorf("devices %q, want %q", c.Devices, want)
	}
	wantArgs := []string{"run", "--accel=mshv", "--mshv-device=/dev/null", "--kernel=/kernel", "--disk=path=/disk0,readonly=on",
		"--disk=path=/disk1,serial=s,,1", "--net=tap=tap0", "--serial=file:/serial.log", "--api-socket=/api.sock", "--vsock=cid=3,socket=/vsock.sock", "--cpus=2"}
	if !reflect.DeepEqual(c.Args, wantArgs) {
		t.Errorf("args\n%q\nwant\n%q", c.Args, wantArgs)
	}
}

// Bad jail or run flags are refused with 64 before anything is made.
func TestJailRefuses(t *testing.T) {
	kernel, _, _ := jailFiles(t)
	base := t.TempDir()
	bad := filepath.Join(t.TempDir(), "bad.bin")
	os.WriteFile(bad, []byte("\x7fELF\x02\x01\x01"), 0o644) // a truncated ELF header
	ok := []string{"jail", "--id", "vm", "--uid", "1000", "--gid", "1000", "--chroot-base", base}
	dev := []string{"--accel", "mshv", "--mshv-device", "/dev/null"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no id", []string{"jail", "--uid", "1", "--gid", "1", "--", "run"}, "--id is required"},
		{"no uid", []string{"jail", "--id", "x", "--gid", "1", "--", "run"}, "--uid and --gid are required"},
		{"no command", ok, "want \"-- run [run flags]\""},
		{"restore", append(ok, "--", "restore"), "run is the only command"},
		{"uid 0", []string{"jail", "--id", "vm", "--uid", "0", "--gid", "1000", "--chroot-base", base, "--", "run", "--accel", "mshv", "--mshv-device", "/dev/null"}, "uid 0: the jailed program would keep root's identity"},
		{"bad id", []string{"jail", "--id", "../x", "--uid", "1", "--gid", "1", "--chroot-base", base, "--", "run", "--accel", "mshv", "--mshv-device", "/dev/null"}, "want 1 to 64 letters"},
		{"bad rlimit", append(ok, "--rlimit", "nproc=1", "--", "run"), "unknown resource"},
		{"snapshot dir", append(append(ok, "--", "run", "--snapshot-dir", base), dev...), "--snapshot-dir: a jailed VM writes snapshots only inside its jail"},
		{"vfio", append(append(ok, "--", "run", "--device", "vfio=/sys/bus/pci/devices/0000:00:03.0"), dev...), "--device vfio is not supported in a jail"},
		{"memory", append(append(ok, "--", "run", "--memory", "lots"), dev...), "--memory"},
		{"serial", append(append(ok, "--", "run", "--serial", "tty"), dev...), "--serial \"tty\""},
		{"bad kernel", append(append(ok, "--", "run", "--kernel", bad), dev...), "--kernel " + bad},
		{"missing kernel", append(append(ok, "--", "run", "--kernel", bad+".gone"), dev...), "no such file"},
		{"missing disk", append(append(ok, "--", "run", "--kernel", kernel, "--disk", "path="+bad+".gone"), dev...), "no such file"},
		{"missing accel", append(ok, "--", "run", "--accel", "mshv", "--mshv-device", "/nonexistent/mshv"), "does not exist on this host"},
		{"run flag", append(ok, "--", "run", "--no-such-flag"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := run(t, tc.args...)
			want := exitUsage
			if tc.name == "missing accel" {
				want = exitNoAccel
			}
			if code != want || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q in:\n%s", code, want, tc.want, stderr)
			}
			if ents, _ := os.ReadDir(base); len(ents) != 0 {
				t.Errorf("a refused jail made %v", ents)
			}
		})
	}
}

// TestJailRunsGovmm jails the real binary: the jailed govmm run parses its
// rewritten flags, finds its files, opens the jail's node of the stand-in
// accelerator device, /dev/null, and fails at its first MSHV ioctl: its
// status and message come back through the jail. The e2e test TestJail boots guests this way on KVM.
func TestJailRunsGovmm(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("building a jail needs root")
	}
	bin := filepath.Join(t.TempDir(), "govmm")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build govmm: %v\n%s", err, out)
	}
	kernel, disk0, _ := jailFiles(t)
	os.Chmod(filepath.Dir(disk0), 0o755)
	os.Chown(disk0, 4242, 4242)
	base := t.TempDir()
	cmd := exec.Command(bin, "jail", "--id", "cli-1", "--uid", "4242", "--gid", "4242", "--chroot-base", base, "--new-pid-ns", "--new-user-ns", "--rlimit", "nofile=256",
		"--", "run", "--accel", "mshv", "--mshv-device", "/dev/null", "--kernel", kernel, "--disk", "path="+disk0, "--serial", "file:/var/log/x.log", "--api-socket", "/run/x.sock")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	ee, _ := err.(*exec.ExitError)
	if ee == nil || ee.ExitCode() != exitNoAccel || !strings.Contains(stderr.String(), "MSHV_CREATE_PARTITION (v1 payload, after v2 was refused): inappropriate ioctl for device") {
		t.Fatalf("govmm jail: %v, want exit %d from the jailed govmm's accelerator check:\n%s", err, exitNoAccel, stderr.String())
	}
	root := filepath.Join(base, "govmm", "cli-1", "root")
	var got []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if p != root && err == nil {
			rel, _ := filepath.Rel(root, p)
			got = append(got, rel)
		}
		return nil
	})
	// serial.log: govmm opens the console once the accelerator is open,
	// as the jailed identity.
	want := []string{"dev", "dev/null", "disk0", "govmm", "kernel", "serial.log"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the jail holds %q, want %q", got, want)
	}
	if fi, err := os.Stat(filepath.Join(root, "serial.log")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 4242 || fi.Sys().(*syscall.Stat_t).Gid != 4242 {
		t.Errorf("serial.log was not created by uid 4242 gid 4242: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "govmm", "cli-1", "pid")); err != nil {
		t.Errorf("pid file: %v", err)
	}
}

// TestJailVhostVsock: --vsock without socket= needs the kernel's
// vhost-vsock in the jail (where the host has it), and the flag passes
// unchanged; a host without it is told before the jail is built.
func TestJailVhostVsock(t *testing.T) {
	kernel, _, _ := jailFiles(t)
	f := jailFlags{id: "vm-1", uid: 1000, gid: 1000, chrootBase: "/srv/x"}
	runArgs := []string{"--accel", "mshv", "--mshv-device", "/dev/null", "--kernel", kernel, "--vsock", "cid=3"}
	c, err := jailConfig(f, runArgs, io.Discard)
	if _, serr := os.Stat("/dev/vhost-vsock"); serr != nil {
		var e *exitError
		if !errors.As(err, &e) || e.status != exitUsage || !strings.Contains(err.Error(), "/dev/vhost-vsock") {
			t.Fatalf("without /dev/vhost-vsock: %v, want exit 64 naming it", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dev/null", "/dev/vhost-vsock"}; !reflect.DeepEqual(c.Devices, want) {
		t.Errorf("devices %q, want %q", c.Devices, want)
	}
	if got := c.Args[len(c.Args)-1]; got != "--vsock=cid=3" {
		t.Errorf("the jailed --vsock is %q", got)
	}
}

// TestJailVhostNet: --net ...,vhost=on needs the kernel's vhost-net in
// the jail (where the host has it) besides /dev/net/tun, and the flag
// passes unchanged; a host without it is told before the jail is built.
func TestJailVhostNet(t *testing.T) {
	kernel, _, _ := jailFiles(t)
	f := jailFlags{id: "vm-1", uid: 1000, gid: 1000, chrootBase: "/srv/x"}
	runArgs := []string{"--accel", "mshv", "--mshv-device", "/dev/null", "--kernel", kernel, "--net", "tap=t0,vhost=on"}
	c, err := jailConfig(f, runArgs, io.Discard)
	if _, serr := os.Stat("/dev/vhost-net"); serr != nil {
		var e *exitError
		if !errors.As(err, &e) || e.status != exitUsage || !strings.Contains(err.Error(), "/dev/vhost-net") {
			t.Fatalf("without /dev/vhost-net: %v, want exit 64 naming it", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dev/null", "/dev/net/tun", "/dev/vhost-net"}; !reflect.DeepEqual(c.Devices, want) {
		t.Errorf("devices %q, want %q", c.Devices, want)
	}
	if got := c.Args[len(c.Args)-1]; got != "--net=tap=t0,vhost=on" {
		t.Errorf("the jailed --net is %q", got)
	}
	// Without vhost=on, no vhost-net in the jail.
	c, err = jailConfig(f, []string{"--accel", "mshv", "--mshv-device", "/dev/null", "--kernel", kernel, "--net", "tap=t0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dev/null", "/dev/net/tun"}; !reflect.DeepEqual(c.Devices, want) {
		t.Errorf("devices without vhost=on %q, want %q", c.Devices, want)
	}
}
