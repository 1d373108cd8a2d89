//go:build linux

package jail

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// build creates the jail's directory: the program, the files and the
// device nodes. The directory is new (check refused an existing one);
// everything in it is made by root before the program runs, so nothing
// in it can be a link planted by the jailed identity.
func (p *plan) build() error {
	if err := os.MkdirAll(filepath.Dir(p.dir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(p.dir), err)
	}
	if err := os.Mkdir(p.dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("jail directory %s exists: another jail has id %q (remove the directory)", p.dir, p.cfg.ID)
		}
		return fmt.Errorf("create the jail directory: %w", err)
	}
	if err := os.Mkdir(p.root, 0o700); err != nil {
		return fmt.Errorf("create the jail root: %w", err)
	}
	if _, err := linkOrCopy(p.cfg.Exec, filepath.Join(p.root, p.execName), true); err != nil {
		return fmt.Errorf("place the program: %w", err)
	}
	for _, f := range p.cfg.Files {
		dst := filepath.Join(p.root, f.Jail)
		if err := mkdirs(p.root, filepath.Dir(f.Jail)); err != nil {
			return err
		}
		if _, err := linkOrCopy(f.Host, dst, !f.Write); err != nil {
			return fmt.Errorf("place %s: %w", f.Host, err)
		}
	}
	for _, d := range p.cfg.Devices {
		st, err := statT(d)
		if err != nil {
			return fmt.Errorf("device %s: %w", d, err)
		}
		if err := mkdirs(p.root, filepath.Dir(d)); err != nil {
			return err
		}
		dst := filepath.Join(p.root, d)
		if err := unix.Mknod(dst, unix.S_IFCHR|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod %s (%d:%d): %w", dst, unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
		}
		if err := os.Lchown(dst, p.cfg.UID, p.cfg.GID); err != nil {
			return fmt.Errorf("chown %s: %w", dst, err)
		}
	}
	// Last, the root becomes the jailed identity's: the program creates
	// its sockets and files there.
	if err := os.Chown(p.root, p.cfg.UID, p.cfg.GID); err != nil {
		return fmt.Errorf("chown the jail root: %w", err)
	}
	return nil
}

// mkdirs creates dir (absolute, inside the jail) and its parents under
// root, owned by root, mode 0755.
func mkdirs(root, dir string) error {
	cur := root
	for _, part := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		if part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		if err := os.Mkdir(cur, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create %s: %w", cur, err)
		}
		if fi, err := os.Lstat(cur); err != nil || !fi.IsDir() {
			return fmt.Errorf("create %s: not a directory", cur)
		}
	}
	return nil
}

// linkOrCopy hard-links src to dst, or, when they are on different file
// systems and mayCopy is set, copies it keeping its mode and owner.
func linkOrCopy(src, dst string, mayCopy bool) (copied bool, err error) {
	err = os.Link(src, dst)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, syscall.EXDEV) || !mayCopy {
		return false, err
	}
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(in.Fd()), &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", src, err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, os.FileMode(st.Mode&0o777))
	if err != nil {
		return false, err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return false, fmt.Errorf("copy %s: %w", src, err)
	}
	// Owner first: chown clears set-id bits, which the mode then restores
	// (never for the jail's program, which runs with no_new_privs).
	if err := out.Chown(int(st.Uid), int(st.Gid)); err != nil {
		out.Close()
		return false, err
	}
	if err := out.Chmod(os.FileMode(st.Mode & 0o777)); err != nil {
		out.Close()
		return false, err
	}
	return true, out.Close()
}

// setupCgroup creates the cgroup (and its parents), enables the
// controllers its limits need in every ancestor, writes the limits, and
// returns the open directory for CLONE_INTO_CGROUP and whether it was
// created here.
func (p *plan) setupCgroup() (dir *os.File, created bool, err error) {
	var need []string
	if p.cpuMax != "" {
		need = append(need, "cpu")
	}
	if p.cfg.MemoryMax != "" {
		need = append(need, "memory")
	}
	rel := strings.Split(p.cfg.Cgroup, "/")
	cur := p.cgroupMnt
	for i, name := range rel {
		if err := enableControllers(cur, need); err != nil {
			return nil, false, err
		}
		cur = filepath.Join(cur, name)
		err := os.Mkdir(cur, 0o755)
		switch {
		case err == nil:
			created = i == len(rel)-1
		case errors.Is(err, os.ErrExist):
		default:
			return nil, false, fmt.Errorf("create cgroup %s: %w", cur, err)
		}
	}
	if p.cpuMax != "" {
		if err := writeCgroupFile(cur, "cpu.max", p.cpuMax); err != nil {
			return nil, created, err
		}
	}
	if p.cfg.MemoryMax != "" {
		if err := writeCgroupFile(cur, "memory.max", p.cfg.MemoryMax); err != nil {
			return nil, created, err
		}
	}
	f, err := os.Open(cur)
	if err != nil {
		return nil, created, fmt.Errorf("open cgroup %s: %w", cur, err)
	}
	return f, created, nil
}

// enableControllers makes the controllers available to dir's children.
func enableControllers(dir string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	enabled, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	for _, n := range names {
		if hasWord(string(enabled), n) {
			continue
		}
		if !hasWord(string(avail), n) {
			return fmt.Errorf("cgroup %s: the %s controller is not available there (cgroup.controllers: %q)", dir, n, strings.TrimSpace(string(avail)))
		}
		if err := writeCgroupFile(dir, "cgroup.subtree_control", "+"+n); err != nil {
			return err
		}
	}
	return nil
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

func writeCgroupFile(dir, name, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: write %q to %s: %w", dir, value, name, err)
	}
	return nil
}
