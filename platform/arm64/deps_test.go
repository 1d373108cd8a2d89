package arm64

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestARM64BuildLinksNoX86 builds govmm for arm64 and checks that none of
// the x86 machine is linked in: not package vm, not the x86 instruction
// emulator or decoder, not the x86 KVM or MSHV backends. A new file in
// cmd/govmm that reaches them needs a "!arm64" build constraint. Package
// mshvarm, arm64's own (the error --accel mshv gives there), is allowed.
func TestARM64BuildLinksNoX86(t *testing.T) {
	if testing.Short() {
		t.Skip("builds govmm for arm64")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	cmd := exec.Command(goTool, "list", "-deps", "./cmd/govmm")
	cmd.Dir = root
	cmd.Env = append(cmd.Environ(), "GOARCH=arm64", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("GOARCH=arm64 go list -deps ./cmd/govmm: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "govmm/platform/arm64") {
		t.Fatalf("the arm64 govmm does not use platform/arm64: %v", deps)
	}
	for _, d := range deps {
		if d == "govmm/accel/mshv/mshvarm" {
			continue
		}
		for _, bad := range []string{"govmm/x86", "govmm/vm", "govmm/accel/kvm", "govmm/accel/mshv", "govmm/cpu", "golang.org/x/arch/x86"} {
			if d == bad || strings.HasPrefix(d, bad+"/") {
				t.Errorf("the arm64 govmm links %s", d)
			}
		}
	}
}
