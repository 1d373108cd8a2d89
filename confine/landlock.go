package confine

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// landlockConfig is what govmm restricts: every file-system access right
// up to Landlock ABI 8, and the IPC scopes (abstract Unix sockets and
// signals to processes outside the domain). Not restricted:
//   - TCP (ABI 4) and UDP (ABI 10): a live migration's destination is
//     chosen at run time through the control socket;
//   - connecting to pathname Unix sockets (ABI 9), for the same reason.
//
// BestEffort: on a kernel with an older ABI (Linux 6.1 has ABI 2: no
// truncate, device ioctl or scope rights) Landlock restricts what that
// kernel can; without Landlock at all, nothing.
var landlockConfig = landlock.Config{
	HandledAccessFS: landlock.V8.HandledAccessFS,
	Scoped:          landlock.V8.Scoped,
}.BestEffort()

// writeDirAccess is what the snapshot directory grants: make and remove
// files and directories, write and truncate them (a snapshot writes
// temporary files and renames them within one directory). No execute, no
// devices, sockets, fifos or symbolic links.
const writeDirAccess = ll.AccessFSReadFile | ll.AccessFSReadDir | ll.AccessFSWriteFile | ll.AccessFSTruncate |
	ll.AccessFSMakeReg | ll.AccessFSMakeDir | ll.AccessFSRemoveFile | ll.AccessFSRemoveDir

// restrictPaths enforces the ruleset on every thread and describes it.
func restrictPaths(o Options) (string, error) {
	var rules []landlock.Rule
	var granted []string
	if o.WriteDir != "" {
		rules = append(rules, landlock.PathAccess(writeDirAccess, o.WriteDir))
		granted = append(granted, "write "+o.WriteDir)
	}
	for _, d := range o.RemoveDirs {
		if d == "" || (o.WriteDir != "" && Within(d, o.WriteDir)) {
			continue
		}
		rules = append(rules, landlock.PathAccess(ll.AccessFSRemoveFile, d))
		granted = append(granted, "remove in "+d)
	}
	// /proc/self/pagemap tells a snapshot which pages the host never
	// backed. The rule holds the inode of this process's pagemap as
	// resolved now; should the kernel drop and recreate it, the open
	// fails and the snapshot falls back to scanning every page (slower,
	// same result).
	reads := append(append([]string(nil), o.ReadFiles...), runtimeReadFiles...)
	reads = append(reads, fmt.Sprintf("/proc/%d/pagemap", os.Getpid()))
	for _, f := range reads {
		if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() && !strings.HasPrefix(f, "/proc/") {
			continue
		}
		rules = append(rules, landlock.PathAccess(ll.AccessFSReadFile, f))
		granted = append(granted, "read "+filepath.Clean(f))
	}
	if err := landlockConfig.Restrict(rules...); err != nil {
		return "", err
	}
	abi, _ := ll.LandlockGetABIVersion()
	if abi <= 0 {
		return "not enforced: this kernel has no Landlock", nil
	}
	return fmt.Sprintf("ABI %d, %s", abi, strings.Join(granted, ", ")), nil
}
