//go:build linux

package jail

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The test binary plays two more parts: the jail's stage (the package's
// init, when Start re-executes it) and the jailed program (helperEnv
// set), which reports what it sees from inside.
const helperEnv = "GOVMM_JAIL_TEST_HELPER=1"

func TestMain(m *testing.M) {
	for _, e := range os.Environ() {
		if e == helperEnv {
			os.Exit(helper())
		}
	}
	os.Exit(m.Run())
}

// report is what the jailed helper sees.
type report struct {
	Pid                    int
	UID, EUID, SUID        int
	GID, EGID, SGID        int
	Groups                 []int
	Root                   []string // "/" entries: name and kind
	NoFile, FSize          uint64
	CapEff, CapPrm, CapInh uint32
	NoNewPrivs             int
	DevOpen, WriteRoot     string // "ok" or the error
	ReadFile               string
	Args                   []string
	Env                    []string
}

func helper() int {
	var r report
	r.Pid = os.Getpid()
	r.UID, r.EUID, r.SUID = unix.Getresuid()
	r.GID, r.EGID, r.SGID = unix.Getresgid()
	r.Groups, _ = unix.Getgroups()
	ents, _ := os.ReadDir("/")
	for _, e := range ents {
		r.Root = append(r.Root, e.Name()+":"+e.Type().String())
	}
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	r.NoFile = lim.Max
	unix.Getrlimit(unix.RLIMIT_FSIZE, &lim)
	r.FSize = lim.Max
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err == nil {
		r.CapEff, r.CapPrm, r.CapInh = data[0].Effective|data[1].Effective, data[0].Permitted|data[1].Permitted, data[0].Inheritable|data[1].Inheritable
	}
	r.NoNewPrivs, _ = unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	r.DevOpen = result(func() error {
		f, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		return err
	})
	r.WriteRoot = result(func() error { return os.WriteFile("/written-inside", []byte("x"), 0o600) })
	if b, err := os.ReadFile("/data/in.txt"); err == nil {
		r.ReadFile = string(b)
	} else {
		r.ReadFile = err.Error()
	}
	r.Args, r.Env = os.Args, os.Environ()
	json.NewEncoder(os.Stdout).Encode(r)
	// Wait for the test to look at this process from outside.
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 7
}

func result(f func() error) string {
	if err := f(); err != nil {
		return err.Error()
	}
	return "ok"
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("building a jail needs root")
	}
}

// testConfig is a jail of this test binary as the helper.
func testConfig(t *testing.T) Config {
	t.Helper()
	if raceBuild {
		t.Skip("a -race test binary is dynamically linked, and a jail runs a static program alone (TestCheckStatic)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		ID: testID(t), UID: 4242, GID: 4343,
		ChrootBase: t.TempDir(), Exec: exe,
		Args: []string{"-arg", "one"}, Env: []string{helperEnv},
	}
}

// testID makes a jail ID of the test's name.
func testID(t *testing.T) string {
	id := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(filepath.Base(t.Name())))
	return ("t-" + id)[:min(64, len(id)+2)]
}

func nsLink(t *testing.T, pid, kind string) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join("/proc", pid, "ns", kind))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// procStatus returns the named fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// jailed starts c, reads the helper's report, runs inspect on the live
// process, lets the helper end and checks its status comes back.
func jailed(t *testing.T, c Config, inspect func(j *Jail, r report)) report {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	j, err := Start(c, inR, outW, os.Stderr)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		t.Fatalf("Start: %v", err)
	}
	var r report
	derr := json.NewDecoder(outR).Decode(&r)
	if derr == nil {
		inspect(j, r)
	}
	inW.Write([]byte("\n"))
	inW.Close()
	outR.Close()
	status, werr := j.Wait()
	if derr != nil {
		t.Fatalf("the helper's report: %v (exit status %d, %v)", derr, status, werr)
	}
	if werr != nil || status != 7 {
		t.Errorf("Wait = %d, %v; want the helper's status 7", status, werr)
	}
	return r
}

func TestJailHelper(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	in := filepath.Join(src, "in.txt")
	if err := os.WriteFile(in, []byte("payload"), 0o644); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(src, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(disk, 4242, 0); err != nil {
		t.Fatal(err)
	}

	// A network namespace to join: a sleeping process's.
	sleeper := exec.Command("sleep", "60")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := sleeper.Start(); err != nil {
		t.Fatalf("start a process in a new network namespace: %v", err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	sleeperNet := fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid)

	cgMount, _ := cgroup2Mount()

	for _, tc := range []struct {
		name                 string
		pidNS, newNet, move  bool
		userNS               bool
		netns                string
		rlimits              []Rlimit
		wantNoFile, wantSize uint64
		cgroup               bool
	}{
		{name: "pivot-newns", pidNS: true, newNet: true, userNS: true, rlimits: []Rlimit{{"nofile", 64}, {"fsize", 1 << 20}}, wantNoFile: 64, wantSize: 1 << 20, cgroup: true},
		{name: "move-root-joinnet", move: true, netns: sleeperNet, wantNoFile: DefaultNoFile, wantSize: unix.RLIM_INFINITY},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			c.NewPIDNS, c.NewNetNS, c.NewUserNS, c.moveRoot, c.NetNS, c.Rlimits = tc.pidNS, tc.newNet, tc.userNS, tc.move, tc.netns, tc.rlimits
			c.Files = []File{{Host: in, Jail: "/data/in.txt"}, {Host: disk, Jail: "/disk0", Write: true}}
			c.Devices = []string{"/dev/null"}
			limits := cgMount != "" && hasWord(readString(cgMount+"/cgroup.controllers"), "cpu") && hasWord(readString(cgMount+"/cgroup.controllers"), "memory")
			if tc.cgroup && cgMount != "" {
				c.Cgroup = "govmm-jailtest/" + c.ID
				if limits {
					c.CPUMax, c.MemoryMax = "50000/100000", "256M"
				} else {
					t.Logf("cgroup2 at %s has no cpu and memory controllers here: membership only", cgMount)
				}
				defer os.Remove(filepath.Join(cgMount, "govmm-jailtest"))
			}
			r := jailed(t, c, func(j *Jail, r report) {
				pid := fmt.Sprint(j.Pid())
				if b, err := os.ReadFile(j.PIDFile); err != nil || strings.TrimSpace(string(b)) != pid {
					t.Errorf("pid file %s = %q, %v; want %s", j.PIDFile, b, err, pid)
				}
				if nsLink(t, pid, "mnt") == nsLink(t, "self", "mnt") {
					t.Error("the helper shares the test's mount namespace")
				}
				if got := nsLink(t, pid, "pid") != nsLink(t, "self", "pid"); got != tc.pidNS {
					t.Errorf("new PID namespace: %v, want %v", got, tc.pidNS)
				}
				if got := nsLink(t, pid, "user") != nsLink(t, "self", "user"); got != tc.userNS {
					t.Errorf("new user namespace: %v, want %v", got, tc.userNS)
				}
				if tc.userNS {
					for f, want := range map[string]string{"uid_map": "0 0 1 4242 4242 1", "gid_map": "0 0 1 4343 4343 1"} {
						if got := strings.Join(strings.Fields(readString("/proc/"+pid+"/"+f)), " "); got != want {
							t.Errorf("%s: %q, want %q", f, got, want)
						}
					}
				}
				wantNet := nsLink(t, "self", "net")
				if tc.netns != "" {
					wantNet = nsLink(t, fmt.Sprint(sleeper.Process.Pid), "net")
				}
				if got := nsLink(t, pid, "net"); (got == wantNet) == tc.newNet {
					t.Errorf("network namespace %s (test's %s, new wanted: %v)", got, nsLink(t, "self", "net"), tc.newNet)
				}
				st := procStatus(t, j.Pid())
				for k, want := range map[string]string{
					"Uid": "4242 4242 4242 4242", "Gid": "4343 4343 4343 4343", "Groups": "",
					"NoNewPrivs": "1", "CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapAmb": "0000000000000000",
				} {
					if st[k] != want {
						t.Errorf("/proc/%s/status %s: %q, want %q", pid, k, st[k], want)
					}
				}
				if c.Cgroup != "" {
					cg := readString(fmt.Sprintf("/proc/%s/cgroup", pid))
					if !strings.Contains(cg, "0::/"+c.Cgroup+"\n") {
						t.Errorf("/proc/%s/cgroup = %q, want 0::/%s", pid, cg, c.Cgroup)
					}
					if limits {
						dir := filepath.Join(cgMount, c.Cgroup)
						if got := readString(dir + "/cpu.max"); got != "50000 100000\n" {
							t.Errorf("cpu.max = %q", got)
						}
						if got := readString(dir + "/memory.max"); got != fmt.Sprint(256<<20)+"\n" {
							t.Errorf("memory.max = %q", got)
						}
					}
				}
			})
			if (r.Pid == 1) != tc.pidNS {
				t.Errorf("helper's pid %d (new PID namespace: %v)", r.Pid, tc.pidNS)
			}
			if r.UID != 4242 || r.EUID != 4242 || r.SUID != 4242 || r.GID != 4343 || r.EGID != 4343 || r.SGID != 4343 {
				t.Errorf("ids inside: uid %d/%d/%d gid %d/%d/%d", r.UID, r.EUID, r.SUID, r.GID, r.EGID, r.SGID)
			}
			if len(r.Groups) != 0 || r.CapEff != 0 || r.CapPrm != 0 || r.CapInh != 0 || r.NoNewPrivs != 1 {
				t.Errorf("groups %v caps eff %#x prm %#x inh %#x no_new_privs %d", r.Groups, r.CapEff, r.CapPrm, r.CapInh, r.NoNewPrivs)
			}
			root := append([]string(nil), r.Root...)
			sort.Strings(root)
			want := []string{"data:d---------", "dev:d---------", "disk0:----------", filepath.Base(c.Exec) + ":----------"}
			if strings.Join(root, " ") != strings.Join(want, " ") {
				t.Errorf("the jail's / holds %v, want %v", root, want)
			}
			if r.NoFile != tc.wantNoFile || r.FSize != tc.wantSize {
				t.Errorf("rlimits nofile %d fsize %d, want %d %d", r.NoFile, r.FSize, tc.wantNoFile, tc.wantSize)
			}
			if r.DevOpen != "ok" || r.WriteRoot != "ok" || r.ReadFile != "payload" {
				t.Errorf("inside: open /dev/null %s, write / %s, read /data/in.txt %q", r.DevOpen, r.WriteRoot, r.ReadFile)
			}
			if strings.Join(r.Args[1:], " ") != "-arg one" || strings.Join(r.Env, " ") != helperEnv {
				t.Errorf("args %q env %q", r.Args, r.Env)
			}
			// Outside, the jail: the device node is the jail's own, owned
			// by the jailed identity; the disk is the original's inode.
			root0 := filepath.Join(c.ChrootBase, "govmm", c.ID, "root")
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(root0, "dev/null"), &st); err != nil || st.Mode != unix.S_IFCHR|0o600 || st.Uid != 4242 || st.Gid != 4343 || st.Rdev != unix.Mkdev(1, 3) {
				t.Errorf("jail's dev/null: %+v, %v", st, err)
			}
			var orig unix.Stat_t
			unix.Stat(disk, &orig)
			if err := unix.Stat(filepath.Join(root0, "disk0"), &st); err != nil || st.Ino != orig.Ino {
				t.Errorf("jail's disk0 is not the original's inode: %v", err)
			}
			if err := unix.Stat(filepath.Join(root0, "written-inside"), &st); err != nil || st.Uid != 4242 {
				t.Errorf("the file the helper wrote: uid %d, %v", st.Uid, err)
			}
			if c.Cgroup != "" {
				if _, err := os.Stat(filepath.Join(cgMount, c.Cgroup)); !os.IsNotExist(err) {
					t.Errorf("the jail's cgroup is still there after Wait: %v", err)
				}
			}
		})
	}
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestJailStageFails: what fails inside the stage (here, a program the
// kernel cannot execute) comes back from Start, which leaves no jail
// directory behind.
func TestJailStageFails(t *testing.T) {
	needRoot(t)
	c := testConfig(t)
	c.Exec = filepath.Join(t.TempDir(), "not-a-program")
	if err := os.WriteFile(c.Exec, []byte("neither ELF nor #!\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := c.check()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(c, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "execute /not-a-program in the jail: exec format error") {
		t.Fatalf("Start = %v, want the stage's exec failure", err)
	}
	if _, serr := os.Stat(p.dir); !os.IsNotExist(serr) {
		t.Errorf("the jail directory %s is left after a failed start", p.dir)
	}
}

// TestCheckStatic: a dynamically linked program is refused before anything
// is built, naming its loader; a static one (this test binary, unless built
// with -race) passes, and so does a file that is not ELF.
func TestCheckStatic(t *testing.T) {
	dyn, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	if f, err := elf.Open(dyn); err != nil || !hasInterp(f) {
		t.Skipf("%s is not a dynamically linked ELF program here", dyn)
	}
	if err := checkStatic(dyn); err == nil || !strings.Contains(err.Error(), "dynamically linked") || !strings.Contains(err.Error(), "ld-linux") {
		t.Errorf("checkStatic(%s) = %v, want a refusal naming the loader", dyn, err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkStatic(exe); (err == nil) == raceBuild {
		t.Errorf("checkStatic(this test binary, race %v) = %v", raceBuild, err)
	}
	script := filepath.Join(t.TempDir(), "run.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkStatic(script); err != nil {
		t.Errorf("checkStatic(a script) = %v", err)
	}
}

func hasInterp(f *elf.File) bool {
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}
