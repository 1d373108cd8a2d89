package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
)

// The architecture tag. A state file names the architecture of the VM it
// holds in an "arch" section (a JSON string). A file without one is
// x86_64: every state file written before the tag existed, and x86's,
// which keep their layout. An arm64 state file always has it.
const (
	ArchSection = "arch"
	ArchX86_64  = "x86_64"
	ArchARM64   = "arm64"
)

// ErrWrongArch is wrapped by the error for a state file of another
// architecture than the one reading it.
var ErrWrongArch = errors.New("snapshot of another architecture")

// HostArch is the architecture whose VMs this build saves and restores.
func HostArch() string {
	if runtime.GOARCH == "arm64" {
		return ArchARM64
	}
	return ArchX86_64
}

// SetArch tags the state with its architecture.
func (s *State) SetArch(arch string) error {
	for i := range s.Sections {
		if s.Sections[i].Name == ArchSection {
			s.Sections = append(s.Sections[:i], s.Sections[i+1:]...)
			break
		}
	}
	return s.Add(ArchSection, 1, arch)
}

// Arch is the architecture the state names (x86_64 when it names none).
func (s *State) Arch() (string, error) {
	sec, ok := s.Find(ArchSection)
	if !ok {
		return ArchX86_64, nil
	}
	var a string
	if err := json.Unmarshal(sec.Data, &a); err != nil {
		return "", fmt.Errorf("state section %q: %w", ArchSection, err)
	}
	switch a {
	case ArchX86_64, ArchARM64:
		return a, nil
	}
	return "", fmt.Errorf("state file names architecture %q (this govmm knows %s and %s)", a, ArchX86_64, ArchARM64)
}

// CheckArch refuses a state of another architecture than want, naming
// both.
func (s *State) CheckArch(want string) error {
	a, err := s.Arch()
	if err != nil {
		return err
	}
	if a != want {
		return fmt.Errorf("%w: the snapshot holds an %s VM and this govmm restores %s VMs; restore it with govmm on an %s host", ErrWrongArch, a, want, a)
	}
	return nil
}
