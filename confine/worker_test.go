package confine

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// diskWorkerChild applies the process filter, then runs fn on a thread
// under the disk workers' filter.
func diskWorkerChild(o Options, fn func()) int {
	if _, err := Apply(o); err != nil {
		fmt.Println("apply:", err)
		return 1
	}
	tid, done := make(chan int), make(chan int)
	go func() {
		runtime.LockOSThread()
		if err := DiskWorkerThread("vda-io0", o); err != nil {
			fmt.Println("DiskWorkerThread:", err)
			os.Exit(1)
		}
		tid <- unix.Gettid()
		<-tid
		fn()
		done <- 0
	}()
	// The worker may not open /proc: this thread reads its name.
	t := <-tid
	comm, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", t))
	if err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	fmt.Printf("thread %s\n", strings.TrimSpace(string(comm)))
	tid <- 0
	return <-done
}

func diskWorkerScenario(name string) (int, bool) {
	switch name {
	case "disk-work":
		// The image is opened before the filters, as govmm opens it.
		f, err := os.OpenFile(filepath.Join(os.Getenv("CHILD_DIR"), "img"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Println("FAIL: open:", err)
			return 1, true
		}
		return diskWorkerChild(Options{Seccomp: SeccompOn}, func() {
			buf := make([]byte, 8192)
			for i := range buf {
				buf[i] = byte(i)
			}
			if _, err := f.WriteAt(buf, 4096); err != nil {
				fmt.Println("FAIL: pwrite:", err)
				os.Exit(1)
			}
			if _, err := f.ReadAt(buf[:4096], 8192); err != nil || buf[1] != 1 {
				fmt.Println("FAIL: pread:", err)
				os.Exit(1)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				fmt.Println("FAIL: fdatasync:", err)
				os.Exit(1)
			}
			err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 4096)
			if err != nil && err != unix.EOPNOTSUPP {
				fmt.Println("FAIL: fallocate:", err)
				os.Exit(1)
			}
			vcpuWork() // the runtime's and the interrupt's calls, as on a vCPU thread
			fmt.Println("disk worker: work done")
		}), true
	case "disk-openat":
		return diskWorkerChild(Options{Seccomp: SeccompOn}, func() {
			unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			fmt.Println("openat returned")
		}), true
	case "disk-gsi-routing":
		return diskWorkerChild(Options{Seccomp: SeccompOn}, gsiRouting), true
	case "disk-socket":
		return diskWorkerChild(Options{Seccomp: SeccompOn}, func() {
			unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			fmt.Println("socket returned")
		}), true
	}
	return 0, false
}

// TestDiskWorkerThread: a disk worker thread does its work (the image's
// reads, writes, FLUSH and DISCARD, and what a vCPU thread's runtime
// does) under its filter, named; what its filter refuses stops the
// process naming the call and the thread.
func TestDiskWorkerThread(t *testing.T) {
	dir := t.TempDir()
	out, code := runChild(t, "disk-work", "CHILD_DIR="+dir)
	if code != 0 || !strings.Contains(out, "thread vda-io0") || !strings.Contains(out, "disk worker: work done") {
		t.Fatalf("a disk worker's work under its filter: exit %d:\n%s", code, out)
	}
	for _, c := range []struct{ child, want string }{
		{"disk-openat", "forbidden system call openat (257) on a virtio-blk worker thread"},
		{"disk-socket", "forbidden system call socket (41) on a virtio-blk worker thread"},
		{"disk-gsi-routing", "forbidden system call ioctl (16) on a virtio-blk worker thread"},
	} {
		out, code := runChild(t, c.child)
		if code != ExitSIGSYS || !strings.Contains(out, c.want) || strings.Contains(out, "returned") {
			t.Errorf("%s: want exit %d and %q, got exit %d:\n%s", c.child, ExitSIGSYS, c.want, code, out)
		}
	}
}
