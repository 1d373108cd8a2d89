package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/internal/directio"
	"govmm/internal/kvmtest"
	"govmm/internal/nested"
)

// brdModuleEnv names the RAM-disk driver (brd.ko) of L1's kernel. L1's
// root is an initramfs, on tmpfs, which Linux 6.1 does not let open a
// file with O_DIRECT: TestVirtioLinuxDirect makes an ext2 file system on
// a RAM disk there for its images. kvmtest copies every GOVMM_* path into
// L1, so the module travels with the test.
const brdModuleEnv = "GOVMM_E2E_BRD_MODULE"

func init() {
	if os.Getenv(brdModuleEnv) != "" {
		return
	}
	k := nested.LinuxKernel() // L1's kernel
	if k == "" {
		return
	}
	p := filepath.Join(moduleTree(k), "drivers", "block", "brd.ko")
	if _, err := os.Stat(p); err == nil {
		os.Setenv(brdModuleEnv, p)
	}
}

// directDir returns a directory on a file system that takes O_DIRECT:
// the test's temporary directory where it is one, else (in L1) a RAM
// disk with an ext2 file system (Linux's ext4 driver) mounted for the
// test.
func directDir(t *testing.T) string {
	t.Helper()
	if d := t.TempDir(); directio.Supported(d) {
		return d
	}
	if !kvmtest.InL1() {
		t.Fatalf("%s does not take O_DIRECT: run the test with TMPDIR on a disk file system (ext4, xfs, btrfs)", os.TempDir())
	}
	bb := "/bin/busybox"
	if _, err := os.Stat("/dev/ram0"); err != nil {
		mod := os.Getenv(brdModuleEnv)
		if mod == "" {
			t.Fatalf("L1's root does not take O_DIRECT and %s (brd.ko, for a RAM disk) is not set", brdModuleEnv)
		}
		if out, err := exec.Command(bb, "insmod", mod, "rd_nr=1", "rd_size=65536").CombinedOutput(); err != nil {
			t.Fatalf("insmod %s: %v\n%s", mod, err, out)
		}
	}
	if out, err := exec.Command(bb, "mke2fs", "-q", "/dev/ram0").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs /dev/ram0: %v\n%s", err, out)
	}
	mnt, err := os.MkdirTemp("", "govmm-direct-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/dev/ram0", mnt, "ext2", 0, ""); err != nil {
		t.Fatalf("mount /dev/ram0 (ext2) on %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Logf("umount %s: %v", mnt, err)
		}
		os.Remove(mnt)
	})
	if !directio.Supported(mnt) {
		t.Fatalf("the RAM disk's ext2 file system at %s does not take O_DIRECT either", mnt)
	}
	t.Logf("images on a RAM disk's ext2 file system at %s (L1's root, tmpfs, refuses O_DIRECT; %s)", mnt, dioAlign(mnt))
	return mnt
}

// dioAlign describes the direct I/O alignments statx reports for a
// regular file in dir (only regular files have them).
func dioAlign(dir string) string {
	f, err := os.CreateTemp(dir, "statx-")
	if err != nil {
		return err.Error()
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var st unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st); err != nil {
		return "statx: " + err.Error()
	}
	if st.Mask&unix.STATX_DIOALIGN == 0 {
		return "statx gives no direct I/O alignment"
	}
	return fmt.Sprintf("statx: memory alignment %d, offset alignment %d", st.Dio_mem_align, st.Dio_offset_align)
}

// refusedDir returns a directory whose file system refuses O_DIRECT at
// open (L1's root, tmpfs before Linux 6.6, or /dev/shm there), or "".
func refusedDir(t *testing.T) string {
	if d := t.TempDir(); !directio.Supported(d) {
		return d
	}
	if d, err := os.MkdirTemp("/dev/shm", "govmm-e2e-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
		if !directio.Supported(d) {
			return d
		}
	}
	return ""
}

// watchDirect watches govmm's processes for a descriptor open on path
// and returns a function that stops watching and reports what it saw:
// the flags of a descriptor with O_DIRECT if there was one, else of the
// last one seen, and whether any was seen. (govmm also has the image
// open without O_DIRECT for a moment, as it checks the file first.)
func watchDirect(path string) func() (uint64, bool) {
	stop, done := make(chan struct{}), make(chan struct{})
	var flags uint64
	var seen bool
	go func() {
		defer close(done)
		for {
			for _, f := range govmmOpen(path) {
				flags, seen = f, true
				if f&unix.O_DIRECT != 0 {
					return
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() (uint64, bool) {
		close(stop)
		<-done
		return flags, seen
	}
}

// govmmOpen returns the flags (from /proc/PID/fdinfo) of the descriptors
// that processes of the govmm binary under test have open on path.
func govmmOpen(path string) []uint64 {
	var out []uint64
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if exe, err := os.Readlink(p + "/exe"); err != nil || exe != binary {
			continue
		}
		fds, _ := filepath.Glob(p + "/fd/*")
		for _, fd := range fds {
			if l, err := os.Readlink(fd); err != nil || l != path {
				continue
			}
			info, err := os.ReadFile(strings.Replace(fd, "/fd/", "/fdinfo/", 1))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(info), "\n") {
				if v, ok := strings.CutPrefix(line, "flags:"); ok {
					if f, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64); err == nil {
						out = append(out, f)
					}
				}
			}
		}
	}
	return out
}

// TestVirtioLinuxDirect is TestVirtioLinux with both disks opened
// direct=on (O_DIRECT), on each accelerator: Linux's drivers read, copy,
// write, discard and try to write the read-only disk, and the host checks
// both images byte for byte; govmm's descriptor of the image, read from
// /proc while the guest runs, must have O_DIRECT. An image on a file
// system that refuses O_DIRECT is bad input: exit 64 naming the file and
// the option.
func TestVirtioLinuxDirect(t *testing.T) {
	needLinux(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	accs := accels(t)
	if dir := refusedDir(t); dir != "" {
		img := filepath.Join(dir, "vda.img")
		if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		r := govmm(t, append(append([]string{"run"}, accs[0]...), "--kernel", kernel, "--memory=256M",
			"--cmdline", "console=ttyS0 quiet panic=-1", "--disk", "path="+img+",direct=on")...)
		if r.Code != 64 || !strings.Contains(r.Stderr, img) || !strings.Contains(r.Stderr, "direct=on") {
			t.Errorf("an image on a file system that refuses O_DIRECT: want exit 64 naming %s and direct=on, got\n%s", img, r)
		} else {
			t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
		}
	} else {
		t.Logf("no file system here refuses O_DIRECT (tmpfs takes it since Linux 6.6): the exit-64 check did not run")
	}
	dir := directDir(t)
	initrd := virtioInitrd(t, virtioInit)
	for _, acc := range accs {
		t.Run(accelName(acc), func(t *testing.T) {
			d, err := os.MkdirTemp(dir, accelName(acc)+"-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(d)
			// The image govmm has open must have O_DIRECT in its
			// flags: the page cache is not in the way of what the
			// host reads back.
			stop := watchDirect(filepath.Join(d, "vda.img"))
			virtioLinux(t, acc, kernel, initrd, d, ",direct=on")
			flags, seen := stop()
			switch {
			case !seen:
				t.Errorf("no govmm process (%s) was seen with %s open", binary, filepath.Join(d, "vda.img"))
			case flags&unix.O_DIRECT == 0:
				t.Errorf("govmm had vda.img open with flags %#o, without O_DIRECT (%#o)", flags, unix.O_DIRECT)
			default:
				t.Logf("govmm had vda.img open with flags %#o (O_DIRECT)", flags)
			}
		})
	}
}
