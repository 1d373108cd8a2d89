//go:build linux

package jail

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheckRefuses(t *testing.T) {
	needRoot(t) // the files below are made with owners other than the tester
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")   // root's, 0600: uid 4242 cannot read it
	ro := filepath.Join(dir, "ro.img")       // readable by all, writable by root only
	notExec := filepath.Join(dir, "notexec") // 0644
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{secret, 0o600}, {ro, 0o644}, {notExec, 0o644}} {
		if err := os.WriteFile(f.path, nil, f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(f.path, f.mode)
	}
	regular := filepath.Join(dir, "regular")
	os.WriteFile(regular, nil, 0o644)

	for _, tc := range []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"empty id", func(c *Config) { c.ID = "" }, "want 1 to 64 letters"},
		{"id charset", func(c *Config) { c.ID = "a/b" }, "want 1 to 64 letters"},
		{"id dots", func(c *Config) { c.ID = ".." }, "want 1 to 64 letters"},
		{"id too long", func(c *Config) { c.ID = strings.Repeat("a", 65) }, "want 1 to 64 letters"},
		{"uid 0", func(c *Config) { c.UID = 0 }, "uid 0: the jailed program would keep root's identity"},
		{"gid 0", func(c *Config) { c.GID = 0 }, "gid 0:"},
		{"uid -1", func(c *Config) { c.UID = -1 }, "uid -1: want 0 to"},
		{"base is a file", func(c *Config) { c.ChrootBase = regular }, "not a directory"},
		{"missing program", func(c *Config) { c.Exec = filepath.Join(dir, "nope") }, "program " + filepath.Join(dir, "nope") + ": stat"},
		{"program not executable", func(c *Config) { c.Exec = notExec }, "may not execute it"},
		{"program is a directory", func(c *Config) { c.Exec = dir }, "not a regular file"},
		{"unreadable file", func(c *Config) { c.Files = []File{{Host: secret, Jail: "/kernel"}} }, "uid 4242 gid 4343 may not read it (owner 0:0, mode 0600): change its owner or mode"},
		{"unwritable disk", func(c *Config) { c.Files = []File{{Host: ro, Jail: "/disk0", Write: true}} }, "may not read and write it"},
		{"missing file", func(c *Config) { c.Files = []File{{Host: filepath.Join(dir, "gone"), Jail: "/kernel"}} }, "no such file"},
		{"relative jail path", func(c *Config) { c.Files = []File{{Host: ro, Jail: "kernel"}} }, "must be absolute, clean and not /"},
		{"unclean jail path", func(c *Config) { c.Files = []File{{Host: ro, Jail: "/a/../kernel"}} }, "must be absolute, clean"},
		{"jail path twice", func(c *Config) { c.Files = []File{{Host: ro, Jail: "/k"}, {Host: ro, Jail: "/k"}} }, "already taken"},
		{"jail path is the program's", func(c *Config) { c.Files = []File{{Host: ro, Jail: "/" + filepath.Base(c.Exec)}} }, "already taken by the program"},
		{"device not a device", func(c *Config) { c.Devices = []string{regular} }, "not a character device"},
		{"missing device", func(c *Config) { c.Devices = []string{"/dev/no-such-device"} }, "device /dev/no-such-device: stat"},
		{"relative device", func(c *Config) { c.Devices = []string{"dev/null"} }, "absolute, clean path"},
		{"userns with root", func(c *Config) { c.NewUserNS, c.GID, c.AllowRoot = true, 0, true }, "root cannot be one of them"},
		{"both netns", func(c *Config) { c.NetNS, c.NewNetNS = "/proc/self/ns/net", true }, "choose one"},
		{"netns not a namespace", func(c *Config) { c.NetNS = regular }, "not a namespace handle"},
		{"netns of another kind", func(c *Config) { c.NetNS = "/proc/self/ns/mnt" }, "a namespace of another kind"},
		{"limits without cgroup", func(c *Config) { c.MemoryMax = "1G" }, "need a cgroup"},
		{"cgroup escapes", func(c *Config) { c.Cgroup = "a/../../b" }, "want a relative path"},
		{"cgroup absolute", func(c *Config) { c.Cgroup = "/sys/fs/cgroup/x" }, "want a relative path"},
		{"cpu max words", func(c *Config) { c.Cgroup, c.CPUMax = "x", "half" }, "cpu.max \"half\""},
		{"cpu max tiny", func(c *Config) { c.Cgroup, c.CPUMax = "x", "10/100000" }, "cpu.max"},
		{"cpu max period", func(c *Config) { c.Cgroup, c.CPUMax = "x", "50000/5000000" }, "cpu.max"},
		{"memory max", func(c *Config) { c.Cgroup, c.MemoryMax = "x", "1.5G" }, "memory.max \"1.5G\""},
		{"rlimit unknown", func(c *Config) { c.Rlimits = []Rlimit{{"core", 0}} }, "unknown resource"},
		{"rlimit twice", func(c *Config) { c.Rlimits = []Rlimit{{"nofile", 1}, {"nofile", 2}} }, "given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			tc.edit(&c)
			err := Check(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want an error containing %q", err, tc.want)
			}
			if _, err := Start(c, nil, nil, nil); err == nil {
				t.Fatal("Start succeeded")
			} else if _, ok := err.(*ConfigError); !ok {
				t.Fatalf("Start = %T %v, want a *ConfigError", err, err)
			}
			if ents, _ := os.ReadDir(c.ChrootBase); len(ents) != 0 && tc.name != "base is a file" {
				t.Errorf("a refused jail left %v in the chroot base", ents)
			}
		})
	}
}

func TestCheckAccepts(t *testing.T) {
	needRoot(t)
	c := testConfig(t)
	c.UID, c.GID, c.AllowRoot = 0, 0, true
	c.Cgroup, c.CPUMax, c.MemoryMax = "govmm/vm-1", "max/100000", "512M"
	if _, err := cgroup2Mount(); err != nil {
		c.Cgroup, c.CPUMax, c.MemoryMax = "", "", ""
	}
	c.Rlimits = []Rlimit{{"fsize", 1 << 30}}
	p, err := c.check()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(c.ChrootBase, "govmm", c.ID, "root"); p.root != want {
		t.Errorf("root %s, want %s", p.root, want)
	}
	if len(p.rlimits) != 2 || p.rlimits[1] != (Rlimit{"nofile", DefaultNoFile}) {
		t.Errorf("rlimits %v: want fsize and the default nofile", p.rlimits)
	}
	if c.Cgroup != "" && p.cpuMax != "max 100000" {
		t.Errorf("cpu.max %q", p.cpuMax)
	}
	// A jail whose directory exists is refused.
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Check(c); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("Check with the jail directory present = %v", err)
	}
}

func TestParseRlimits(t *testing.T) {
	got, err := ParseRlimits("nofile=100,fsize=4096")
	if err != nil || len(got) != 2 || got[0] != (Rlimit{"nofile", 100}) || got[1] != (Rlimit{"fsize", 4096}) {
		t.Errorf("ParseRlimits = %v, %v", got, err)
	}
	if got, err := ParseRlimits("no-file=5"); err != nil || got[0] != (Rlimit{"nofile", 5}) {
		t.Errorf("no-file: %v, %v", got, err)
	}
	for _, bad := range []string{"", "nofile", "nofile=x", "nproc=1", "nofile=-1", "nofile=1,"} {
		if _, err := ParseRlimits(bad); err == nil {
			t.Errorf("ParseRlimits(%q) accepted", bad)
		}
	}
}

func TestParseCPUMax(t *testing.T) {
	for in, want := range map[string]string{"max": "max", "50000": "50000", "50000/100000": "50000 100000", "max 20000": "max 20000"} {
		if got, err := parseCPUMax(in); err != nil || got != want {
			t.Errorf("parseCPUMax(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "999", "50000/", "50000/999", "x/100000", "1/2/3"} {
		if _, err := parseCPUMax(bad); err == nil {
			t.Errorf("parseCPUMax(%q) accepted", bad)
		}
	}
}

func TestFindCgroup2(t *testing.T) {
	info := `22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 22 0:31 / /sys/fs/cgroup/my\040unified rw,relatime shared:9 - cgroup2 cgroup2 rw
`
	if got := findCgroup2(info); got != "/sys/fs/cgroup/my unified" {
		t.Errorf("findCgroup2 = %q", got)
	}
	if got := findCgroup2("22 1 0:21 / /sys rw - sysfs sysfs rw\n"); got != "" {
		t.Errorf("findCgroup2 without cgroup2 = %q", got)
	}
}

func TestPermits(t *testing.T) {
	st := func(uid, gid uint32, mode uint32) *syscall.Stat_t {
		return &syscall.Stat_t{Uid: uid, Gid: gid, Mode: mode}
	}
	for _, tc := range []struct {
		st       *syscall.Stat_t
		uid, gid int
		want     uint32
		ok       bool
	}{
		{st(5, 6, 0o600), 5, 9, 0o600, true},
		{st(5, 6, 0o400), 5, 9, 0o600, false},
		{st(5, 6, 0o060), 7, 6, 0o600, true},
		{st(5, 6, 0o606), 7, 6, 0o400, false}, // the group's bits apply, not others'
		{st(5, 6, 0o004), 7, 8, 0o400, true},
		{st(5, 6, 0o750), 7, 6, 0o100, true},
		{st(5, 6, 0o700), 0, 0, 0o600, true},
		{st(5, 6, 0o600), 0, 0, 0o100, false}, // root executes only what someone may
	} {
		if got := permits(tc.st, tc.uid, tc.gid, tc.want); got != tc.ok {
			t.Errorf("permits(owner %d:%d mode %#o, %d:%d, %#o) = %v", tc.st.Uid, tc.st.Gid, tc.st.Mode, tc.uid, tc.gid, tc.want, got)
		}
	}
}

// otherFS returns a directory on another file system than t.TempDir, or
// skips.
func otherFS(t *testing.T) string {
	t.Helper()
	var a, b syscall.Stat_t
	if syscall.Stat("/dev/shm", &a) != nil || syscall.Stat(t.TempDir(), &b) != nil || a.Dev == b.Dev {
		t.Skip("no /dev/shm on another file system than the temporary directory")
	}
	dir, err := os.MkdirTemp("/dev/shm", "jailtest-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// A file on another file system is copied with its owner and mode; a
// written one is refused by the checks, and never copied.
func TestLinkOrCopyAcrossFileSystems(t *testing.T) {
	needRoot(t)
	src := filepath.Join(otherFS(t), "kernel")
	if err := os.WriteFile(src, []byte("image"), 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chown(src, 4242, 4343)
	dst := filepath.Join(t.TempDir(), "kernel")
	if copied, err := linkOrCopy(src, dst, false); err == nil || copied {
		t.Fatalf("linkOrCopy without copying = %v, %v; want the cross-device error", copied, err)
	}
	copied, err := linkOrCopy(src, dst, true)
	if err != nil || !copied {
		t.Fatalf("linkOrCopy = %v, %v", copied, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil || st.Uid != 4242 || st.Gid != 4343 || st.Mode&0o7777 != 0o640 {
		t.Errorf("the copy: owner %d:%d mode %#o, %v", st.Uid, st.Gid, st.Mode&0o7777, err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "image" {
		t.Errorf("the copy holds %q", b)
	}

	c := testConfig(t)
	c.Files = []File{{Host: src, Jail: "/disk0", Write: true}}
	os.Chmod(src, 0o660)
	if err := Check(c); err == nil || !strings.Contains(err.Error(), "lies on another file system than the chroot base") {
		t.Errorf("Check of a written file on another file system = %v", err)
	}
	c.Files[0].Write = false
	if err := Check(c); err != nil {
		t.Errorf("Check of a read-only file on another file system = %v", err)
	}
}
