//go:build linux

// Package jail runs one program, normally `govmm run`, in a jail modelled
// on Firecracker's jailer. govmm's own seccomp filter and Landlock confine
// the VMM once its VM is built, but they cannot take away what the process
// was started with: root's uid and capabilities, the host's file system
// view, its network and process namespaces, unbounded resources. A VMM that
// a hostile guest subverts should hold none of these, so the jail strips
// them before the VMM starts:
//
//   - a per-VM directory <chroot-base>/govmm/<id>/root holds hard links to
//     (or copies of) the files the VM needs and the device nodes it opens,
//     made with the host's major and minor numbers and owned by the jailed
//     uid;
//   - the program starts in new mount (and optionally PID, network and
//     user) namespaces, with that directory as its root (pivot_root, or a move
//     over / and chroot where the root is an initramfs);
//   - rlimits (RLIMIT_NOFILE, RLIMIT_FSIZE) and an optional cgroup v2
//     placement (cpu.max, memory.max) bound what it can consume;
//   - it runs as an unprivileged uid/gid with no supplementary groups, no
//     capabilities and no_new_privs, with every inherited descriptor but
//     stdin, stdout and stderr closed.
//
// Everything is validated before anything is created. The work is split
// between two processes: Start (in the caller, as root) checks the
// configuration, builds the directory and the cgroup, and re-executes the
// current binary into new namespaces (placed in the cgroup as it is
// cloned); that child, in this package's init, enters the directory, applies
// the limits, drops its identity and executes the program. Go cannot do
// the second half between fork and exec, hence the re-execution.
package jail

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultChrootBase is where jails are built unless Config.ChrootBase says
// otherwise; the same default as Firecracker's jailer.
const DefaultChrootBase = "/srv/jailer"

// DefaultNoFile is RLIMIT_NOFILE when no nofile limit is given, as with
// Firecracker's jailer.
const DefaultNoFile = 2048

// Config describes one jail.
type Config struct {
	// ID names the jail: 1 to 64 letters, digits and hyphens. The jail's
	// directory is <ChrootBase>/govmm/<ID>, which must not exist yet.
	ID string
	// UID and GID are the identity the program runs as. 0 is refused
	// unless AllowRoot is set.
	UID, GID  int
	AllowRoot bool
	// ChrootBase is the directory jails are built under (default
	// DefaultChrootBase); it is created if missing.
	ChrootBase string
	// Exec is the program's host path. It is hard-linked (or copied) to
	// /<base name of Exec> in the jail and executed from there.
	Exec string
	// Args are the program's arguments after argv[0]; Env its whole
	// environment (nothing of the caller's is passed on).
	Args, Env []string
	// Files are linked or copied into the jail.
	Files []File
	// Devices are host character devices recreated (mknod, same major and
	// minor) at the same path in the jail, mode 0600, owned by UID:GID.
	Devices []string
	// NetNS is a network namespace to join (e.g. /var/run/netns/NAME);
	// NewNetNS asks for a new, empty one instead. Without either the
	// program stays in the caller's network namespace.
	NetNS    string
	NewNetNS bool
	// NewPIDNS starts the program as PID 1 of a new PID namespace.
	NewPIDNS bool
	// NewUserNS starts the program in a new user namespace that maps
	// root (for the jail's first process, which sets the jail up in it)
	// and UID and GID, each to itself; every other identity is the
	// overflow id there. The program, which has left root, holds no
	// capability there, as in the caller's namespace.
	NewUserNS bool
	// Cgroup is a cgroup v2 path relative to the cgroup2 mount (e.g.
	// govmm/vm1), created if missing; the program is cloned into it.
	// CPUMax ("QUOTA[/PERIOD]" in microseconds, or "max") and MemoryMax
	// (bytes with an optional K, M, G or T suffix, or "max") are written
	// to its cpu.max and memory.max; they need Cgroup.
	Cgroup            string
	CPUMax, MemoryMax string
	// Rlimits bound the program's resources (soft and hard limit alike).
	// Without a nofile entry, RLIMIT_NOFILE is DefaultNoFile.
	Rlimits []Rlimit
	// moveRoot makes the stage enter the jail as on an initramfs root
	// (move the directory over / and chroot) even where pivot_root works:
	// tests use it to cover that path.
	moveRoot bool
}

// File is one file placed in the jail.
type File struct {
	// Host is the file's path on the host, Jail its absolute path in the
	// jail.
	Host, Jail string
	// Write says the program writes the file (a read-write disk image).
	// It must then be writable by UID:GID, and it is only hard-linked,
	// never copied: a copy would take the guest's writes and leave the
	// original as it was.
	Write bool
}

// Rlimit is one resource limit.
type Rlimit struct {
	Name  string // "nofile" or "fsize"
	Value uint64
}

// rlimitResources maps the rlimit names the jail accepts to resources.
var rlimitResources = map[string]int{
	"nofile": unix.RLIMIT_NOFILE,
	"fsize":  unix.RLIMIT_FSIZE,
}

// ParseRlimits parses "nofile=N,fsize=N" (Firecracker's "no-file" is
// accepted for nofile).
func ParseRlimits(spec string) ([]Rlimit, error) {
	var out []Rlimit
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if k == "no-file" {
			k = "nofile"
		}
		if !ok {
			return nil, fmt.Errorf("rlimit %q: want NAME=VALUE (nofile, fsize)", kv)
		}
		if _, known := rlimitResources[k]; !known {
			return nil, fmt.Errorf("rlimit %q: unknown resource %q (want nofile or fsize)", kv, k)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("rlimit %q: value %q is not a number", kv, v)
		}
		out = append(out, Rlimit{Name: k, Value: n})
	}
	return out, nil
}

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	cgroupPattern = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
	memoryPattern = regexp.MustCompile(`^([0-9]+[KMGT]?|max)$`)
)

// plan is a validated Config with everything derived from it.
type plan struct {
	cfg       Config
	dir       string // <base>/govmm/<id>
	root      string // dir/root
	execName  string // the program's name in the jail's root
	rlimits   []Rlimit
	cgroupDir string // absolute, under the cgroup2 mount; "" without Cgroup
	cgroupMnt string
	cpuMax    string // as written to cpu.max
}

// check validates c without changing anything and returns the plan.
func (c Config) check() (*plan, error) {
	p := &plan{cfg: c}
	if !idPattern.MatchString(c.ID) {
		return nil, fmt.Errorf("id %q: want 1 to 64 letters, digits and hyphens", c.ID)
	}
	for _, id := range []struct {
		name string
		v    int
	}{{"uid", c.UID}, {"gid", c.GID}} {
		if id.v < 0 || id.v >= 1<<32-1 {
			return nil, fmt.Errorf("%s %d: want 0 to %d", id.name, id.v, uint32(1<<32-2))
		}
		if id.v == 0 && !c.AllowRoot {
			return nil, fmt.Errorf("%s 0: the jailed program would keep root's identity; pick an unprivileged %s (or allow root explicitly)", id.name, id.name)
		}
	}

	base := c.ChrootBase
	if base == "" {
		base = DefaultChrootBase
	}
	base, err := filepath.Abs(base)
	if err != nil {
		return nil, fmt.Errorf("chroot base %s: %w", c.ChrootBase, err)
	}
	if fi, err := os.Stat(base); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("chroot base %s: not a directory", base)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("chroot base: %w", err)
	}
	p.dir = filepath.Join(base, "govmm", c.ID)
	p.root = filepath.Join(p.dir, "root")
	if _, err := os.Lstat(p.dir); err == nil {
		return nil, fmt.Errorf("jail directory %s exists: another jail has id %q, or an old one was not removed (remove the directory)", p.dir, c.ID)
	}
	// The device nodes must work and the program must execute from the
	// file system the jail is built on.
	var sfs unix.Statfs_t
	if err := unix.Statfs(existingAncestor(base), &sfs); err != nil {
		return nil, fmt.Errorf("chroot base %s: statfs: %w", base, err)
	}
	if sfs.Flags&unix.ST_NOEXEC != 0 {
		return nil, fmt.Errorf("chroot base %s: its file system is mounted noexec", base)
	}
	if sfs.Flags&unix.ST_NODEV != 0 && len(c.Devices) > 0 {
		return nil, fmt.Errorf("chroot base %s: its file system is mounted nodev, so the jail's device nodes would not open", base)
	}
	baseDev := uint64(0)
	if st, err := statT(existingAncestor(base)); err == nil {
		baseDev = st.Dev
	}

	// The program.
	if _, err := c.checkFile(c.Exec, unix.S_IXUSR, "program"); err != nil {
		return nil, err
	}
	p.execName = filepath.Base(c.Exec)
	taken := map[string]string{"/" + p.execName: "the program " + c.Exec}

	for _, f := range c.Files {
		if !filepath.IsAbs(f.Jail) || filepath.Clean(f.Jail) != f.Jail || f.Jail == "/" {
			return nil, fmt.Errorf("file %s: jail path %q must be absolute, clean and not /", f.Host, f.Jail)
		}
		if other, dup := taken[f.Jail]; dup {
			return nil, fmt.Errorf("file %s: jail path %s is already taken by %s", f.Host, f.Jail, other)
		}
		taken[f.Jail] = f.Host
		want := uint32(unix.S_IRUSR)
		if f.Write {
			want |= unix.S_IWUSR
		}
		st, err := c.checkFile(f.Host, want, "file")
		if err != nil {
			return nil, err
		}
		if f.Write && baseDev != 0 && st.Dev != baseDev {
			return nil, fmt.Errorf("file %s: it is written by the program, and it lies on another file system than the chroot base %s, so it can only be copied, and the copy would take the writes: move it to that file system or make it read-only", f.Host, base)
		}
	}
	for _, d := range c.Devices {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d {
			return nil, fmt.Errorf("device %q: want an absolute, clean path", d)
		}
		if other, dup := taken[d]; dup {
			return nil, fmt.Errorf("device %s: the jail path is already taken by %s", d, other)
		}
		taken[d] = "device " + d
		st, err := statT(d)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR {
			return nil, fmt.Errorf("device %s: not a character device", d)
		}
	}

	if c.NewUserNS && (c.UID == 0 || c.GID == 0) {
		return nil, errors.New("a new user namespace maps root for the jail's set-up and the jailed uid and gid apart from it: root cannot be one of them")
	}
	if c.NetNS != "" && c.NewNetNS {
		return nil, errors.New("a network namespace to join and a new one: choose one")
	}
	if c.NetNS != "" {
		if err := checkNetNS(c.NetNS); err != nil {
			return nil, err
		}
	}

	if c.Cgroup == "" && (c.CPUMax != "" || c.MemoryMax != "") {
		return nil, errors.New("cpu.max and memory.max need a cgroup to be written to")
	}
	if c.Cgroup != "" {
		if !cgroupPattern.MatchString(c.Cgroup) || strings.Contains("/"+c.Cgroup+"/", "/../") || strings.Contains("/"+c.Cgroup+"/", "/./") {
			return nil, fmt.Errorf("cgroup %q: want a relative path of names made of letters, digits, '.', '_' and '-'", c.Cgroup)
		}
		if c.CPUMax != "" {
			if p.cpuMax, err = parseCPUMax(c.CPUMax); err != nil {
				return nil, err
			}
		}
		if c.MemoryMax != "" && !memoryPattern.MatchString(c.MemoryMax) {
			return nil, fmt.Errorf("memory.max %q: want bytes with an optional K, M, G or T suffix, or max", c.MemoryMax)
		}
		if p.cgroupMnt, err = cgroup2Mount(); err != nil {
			return nil, err
		}
		p.cgroupDir = filepath.Join(p.cgroupMnt, c.Cgroup)
	}

	seen := map[string]bool{}
	for _, r := range c.Rlimits {
		if _, ok := rlimitResources[r.Name]; !ok {
			return nil, fmt.Errorf("rlimit %q: unknown resource (want nofile or fsize)", r.Name)
		}
		if seen[r.Name] {
			return nil, fmt.Errorf("rlimit %s given twice", r.Name)
		}
		seen[r.Name] = true
		p.rlimits = append(p.rlimits, r)
	}
	if !seen["nofile"] {
		p.rlimits = append(p.rlimits, Rlimit{Name: "nofile", Value: DefaultNoFile})
	}
	// Last, so that the other refusals read the same from a test binary,
	// which go test links dynamically where cgo is on.
	if err := checkStatic(c.Exec); err != nil {
		return nil, err
	}
	return p, nil
}

// checkFile checks that path is a regular file the jailed identity may
// access with want (owner bits: S_IRUSR, S_IWUSR, S_IXUSR).
func (c Config) checkFile(path string, want uint32, what string) (*syscall.Stat_t, error) {
	if path == "" {
		return nil, fmt.Errorf("%s: no path given", what)
	}
	st, err := statT(path)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s %s: not a regular file", what, path)
	}
	if !permits(st, c.UID, c.GID, want) {
		return nil, fmt.Errorf("%s %s: uid %d gid %d may not %s it (owner %d:%d, mode %#o): change its owner or mode", what, path, c.UID, c.GID, accessWords(want), st.Uid, st.Gid, st.Mode&0o7777)
	}
	return st, nil
}

// permits reports whether uid:gid, with no supplementary groups, has the
// access want (given as owner bits) to a file with st's owner and mode.
func permits(st *syscall.Stat_t, uid, gid int, want uint32) bool {
	if uid == 0 {
		// Root reads and writes anything, and executes what anyone may.
		return want&unix.S_IXUSR == 0 || st.Mode&0o111 != 0
	}
	shift := 0 // others
	switch {
	case int(st.Uid) == uid:
		shift = 6
	case int(st.Gid) == gid:
		shift = 3
	}
	bits := (st.Mode >> shift) & 0o7
	return bits&(want>>6) == want>>6
}

func accessWords(want uint32) string {
	var w []string
	if want&unix.S_IRUSR != 0 {
		w = append(w, "read")
	}
	if want&unix.S_IWUSR != 0 {
		w = append(w, "write")
	}
	if want&unix.S_IXUSR != 0 {
		w = append(w, "execute")
	}
	return strings.Join(w, " and ")
}

func statT(path string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return &st, nil
}

// existingAncestor returns path or its nearest ancestor that exists.
func existingAncestor(path string) string {
	for {
		if _, err := os.Stat(path); err == nil || path == "/" {
			return path
		}
		path = filepath.Dir(path)
	}
}

// checkNetNS checks that path is a network namespace handle.
func checkNetNS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	defer f.Close()
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		return fmt.Errorf("network namespace %s: not a namespace handle (NS_GET_NSTYPE: %w)", path, err)
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("network namespace %s: a namespace of another kind (%#x)", path, t)
	}
	return nil
}

// parseCPUMax turns "QUOTA[/PERIOD]" or "QUOTA PERIOD" (microseconds;
// QUOTA may be "max") into cpu.max's "QUOTA PERIOD".
func parseCPUMax(s string) (string, error) {
	bad := fmt.Errorf("cpu.max %q: want QUOTA[/PERIOD] in microseconds (QUOTA may be max), e.g. 50000/100000 for half a CPU", s)
	q, per, hasPeriod := strings.Cut(strings.Replace(s, " ", "/", 1), "/")
	if q != "max" {
		n, err := strconv.ParseUint(q, 10, 64)
		if err != nil || n < 1000 {
			// The kernel refuses quotas below 1 ms.
			return "", bad
		}
	}
	if !hasPeriod {
		return q, nil
	}
	n, err := strconv.ParseUint(per, 10, 64)
	if err != nil || n < 1000 || n > 1000000 {
		return "", bad
	}
	return q + " " + per, nil
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted.
func cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	if m := findCgroup2(string(b)); m != "" {
		return m, nil
	}
	return "", errors.New("no cgroup2 file system is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
}

// findCgroup2 returns the first cgroup2 mount point in a mountinfo text.
func findCgroup2(mountinfo string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) >= 5 && len(g) >= 1 && g[0] == "cgroup2" {
			return unescapeMountinfo(f[4])
		}
	}
	return ""
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// checkStatic refuses a program that needs a dynamic loader: the jail holds
// the program alone, so a dynamically linked one (govmm built with cgo, or
// with -race) would fail inside it with a bare "no such file or directory",
// which names neither the loader nor the cure.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return nil // not ELF (a script, say): the kernel says what it makes of it
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		interp, err := io.ReadAll(io.LimitReader(p.Open(), 4096))
		if err != nil {
			return fmt.Errorf("program %s: read its ELF interpreter: %w", path, err)
		}
		return fmt.Errorf("program %s is dynamically linked (it needs %s), and a jail holds the program alone: build it static (CGO_ENABLED=0, without -race)", path, strings.TrimRight(string(interp), "\x00"))
	}
	return nil
}
