package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/internal/kvmtest"
)

// L1 loads no module beyond KVM's by itself; the tests that need one
// (tun, vhost-net, vhost-vsock, the guest's virtio_net) name it by a
// GOVMM_E2E_* variable holding its path next to the guest kernel, which
// kvmtest copies into L1 with the test binary.

// setModuleEnvs points each variable of envs (variable -> path below the
// guest kernel's module tree) at its module, where it is not set yet and
// the file exists. Outside L1 only: inside, the variables name the
// copies.
func setModuleEnvs(envs map[string]string) {
	if kvmtest.InL1() {
		return
	}
	k := guestKernelPath()
	if k == "" {
		return
	}
	kdir := moduleTree(k)
	for env, rel := range envs {
		if p := filepath.Join(kdir, rel); os.Getenv(env) == "" {
			if _, err := os.Stat(p); err == nil {
				os.Setenv(env, p)
			}
		}
	}
}

// loadModules loads the modules the variables in order name, unless the
// sysfs path loaded exists already; a module already loaded is fine.
// envs names each variable's module for the error when it is unset.
func loadModules(t *testing.T, loaded string, order []string, envs map[string]string) {
	t.Helper()
	if _, err := os.Stat(loaded); err == nil {
		return
	}
	for _, env := range order {
		p := os.Getenv(env)
		if p == "" {
			t.Fatalf("%s: the module %s was not found next to the kernel", env, envs[env])
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			t.Fatalf("load %s: %v", p, err)
		}
	}
}

// needMiscNode makes the misc device node path (major 10) where
// devtmpfs did not.
func needMiscNode(t *testing.T, path string, minor uint32) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(10, minor))); err != nil {
		t.Fatalf("mknod %s: %v", path, err)
	}
}
