package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/internal/kvmtest"
)

// jailUID and jailGID are the identity the jailed VMM drops to: nobody's
// on the host, so that what it creates can only be its own.
const jailUID, jailGID = 4242, 4243

// TestJail boots the probe guest under govmm jail on each accelerator: a
// new PID and network namespace (and user namespace on mshvsim), rlimits,
// a cgroup with CPU and memory limits where cgroup v2 is available
// (mounted here inside the nested VM), whose parent's CPU usage must grow
// by the VMM's, and the guest's kernel hard-linked into the jail. The guest must run to
// its power-off, and the console file, which govmm creates only once the
// accelerator is open, must belong to the dropped uid and gid: the VMM ran
// as them.
func TestJail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("govmm jail needs root")
	}
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			kernel := guestPath(t, jailProbe)
			base := t.TempDir()
			id := "e2e-" + accelName(acc)
			args := []string{"jail", "--id", id, "--uid", fmt.Sprint(jailUID), "--gid", fmt.Sprint(jailGID), "--chroot-base", base,
				"--new-pid-ns", "--new-netns", "--rlimit", "nofile=1024,fsize=1073741824"}
			if accelName(acc) == "mshvsim" {
				args = append(args, "--new-user-ns")
			}
			cgMount := jailCgroup2(t)
			usage := func() int { return -1 }
			if cgMount != "" {
				args = append(args, "--cgroup", "govmm-e2e/"+id, "--cpu-max", "200000/100000", "--memory-max", "1G")
				// The jail removes its cgroup at the end; the parent's
				// usage counts the VMM's CPU time.
				usage = func() int {
					b, _ := os.ReadFile(filepath.Join(cgMount, "govmm-e2e", "cpu.stat"))
					for _, line := range strings.Split(string(b), "\n") {
						if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
							n, _ := strconv.Atoi(v)
							return n
						}
					}
					return 0
				}
			}
			before := usage()
			args = append(append(append(args, "--", "run"), acc...), "--kernel", kernel, "--cpus=2", "--memory=256M", "--serial=file:/var/log/ignored.log")
			r := govmm(t, args...)
			if r.Code != 0 {
				t.Fatalf("govmm %s: want exit 0 (poweroff)\n%s", strings.Join(args, " "), r)
			}
			if cgMount != "" {
				after := usage()
				if after <= before {
					t.Errorf("govmm-e2e/cpu.stat usage_usec %d before, %d after: the VMM did not run in the jail's cgroup", before, after)
				}
				t.Logf("cgroup %s/govmm-e2e: usage_usec %d before, %d after", cgMount, before, after)
			}
			root := filepath.Join(base, "govmm", id, "root")
			console, err := os.ReadFile(filepath.Join(root, "serial.log"))
			if err != nil {
				t.Fatalf("the jailed VM's console: %v\n%s", err, r)
			}
			for _, want := range []string{"govmm probe guest", "cpus:       2 started", "probe: done, powering off"} {
				if !strings.Contains(string(console), want) {
					t.Errorf("console lacks %q:\n%s", want, console)
				}
			}
			fi, err := os.Stat(filepath.Join(root, "serial.log"))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != jailUID || st.Gid != jailGID {
				t.Errorf("serial.log belongs to %d:%d, want the jailed %d:%d", st.Uid, st.Gid, jailUID, jailGID)
			}
			var k, orig unix.Stat_t
			if unix.Stat(filepath.Join(root, "kernel"), &k) != nil || unix.Stat(kernel, &orig) != nil || k.Ino != orig.Ino {
				t.Errorf("the jail's /kernel is not a hard link of %s", kernel)
			}
		})
	}
}

const jailProbe = "probe.elf"

// jailCgroup2 returns where a cgroup v2 hierarchy with the cpu and memory
// controllers is mounted, mounting one at /sys/fs/cgroup in the nested
// VM, whose init mounts none; "" if there is none.
func jailCgroup2(t *testing.T) string {
	t.Helper()
	info, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(info), "\n") {
		if _, post, ok := strings.Cut(line, " - "); ok && strings.HasPrefix(post, "cgroup2 ") {
			mnt := strings.Fields(line)[4]
			c, _ := os.ReadFile(filepath.Join(mnt, "cgroup.controllers"))
			if strings.Contains(string(c), "cpu") && strings.Contains(string(c), "memory") {
				return mnt
			}
			t.Logf("the cgroup2 at %s lacks the cpu or memory controller: the jail runs without a cgroup", mnt)
			return ""
		}
	}
	if !kvmtest.InL1() {
		t.Log("no cgroup2 mounted: the jail runs without a cgroup")
		return ""
	}
	if err := unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2 in the nested VM: %v", err)
	}
	return "/sys/fs/cgroup"
}
