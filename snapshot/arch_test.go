package snapshot

import (
	"errors"
	"strings"
	"testing"
)

func marshalArch(t *testing.T, arch string) []byte {
	t.Helper()
	st := &State{}
	if err := st.Add("machine", 1, map[string]int{"num_cpus": 2}); err != nil {
		t.Fatal(err)
	}
	if arch != "" {
		if err := st.SetArch(arch); err != nil {
			t.Fatal(err)
		}
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestArchTag: an untagged state is x86_64, a tagged one names its
// architecture, and each host refuses the other's with a clear error
// before reading any section.
func TestArchTag(t *testing.T) {
	other := ArchARM64
	if HostArch() == ArchARM64 {
		other = ArchX86_64
	}
	for _, c := range []struct {
		tag, want string
	}{{"", ArchX86_64}, {ArchX86_64, ArchX86_64}, {ArchARM64, ArchARM64}} {
		b := marshalArch(t, c.tag)
		st, err := Unmarshal(b)
		if c.want != HostArch() {
			if !errors.Is(err, ErrWrongArch) {
				t.Fatalf("tag %q on %s: err %v, want ErrWrongArch", c.tag, HostArch(), err)
			}
			if !strings.Contains(err.Error(), "holds an "+c.want+" VM") || !strings.Contains(err.Error(), "restores "+HostArch()) {
				t.Fatalf("tag %q: the error does not name both architectures: %v", c.tag, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("tag %q on %s: %v", c.tag, HostArch(), err)
		}
		if a, err := st.Arch(); err != nil || a != c.want {
			t.Fatalf("tag %q: Arch() = %q, %v; want %q", c.tag, a, err, c.want)
		}
	}
	// The other architecture's state, checked explicitly (what the
	// reverse host does in Unmarshal).
	st := &State{}
	st.SetArch(other)
	st.SetArch(other) // replaces, never two sections
	if n := len(st.Sections); n != 1 {
		t.Fatalf("SetArch twice left %d sections", n)
	}
	if err := st.CheckArch(HostArch()); !errors.Is(err, ErrWrongArch) {
		t.Fatalf("CheckArch(%s) of a %s state: %v", HostArch(), other, err)
	}
	if err := st.CheckArch(other); err != nil {
		t.Fatalf("CheckArch(%s) of a %s state: %v", other, other, err)
	}
	st.SetArch("riscv64")
	if _, err := st.Arch(); err == nil || !strings.Contains(err.Error(), "riscv64") {
		t.Fatalf("an unknown architecture: %v", err)
	}
}
