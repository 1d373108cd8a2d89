package snapshot

import (
	"errors"
	"strings"
	"testing"
)

func sample(t testing.TB) []byte {
	var s State
	if err := s.Add("machine", 1, map[string]int{"cpus": 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("vcpu/0", 3, map[string]uint64{"rip": 0x1000}); err != nil {
		t.Fatal(err)
	}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	st, err := Unmarshal(sample(t))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int
	if v, err := st.Get("machine", 1, 1, &m); err != nil || v != 1 || m["cpus"] != 2 {
		t.Fatalf("machine = %v (v%d), %v", m, v, err)
	}
	var c map[string]uint64
	if _, err := st.Get("vcpu/0", 1, 2, &c); err == nil || !strings.Contains(err.Error(), "version 3") {
		t.Fatalf("section newer than the reader: err = %v", err)
	}
	if got := strings.Join(st.Names(), ","); got != "machine,vcpu/0" {
		t.Fatalf("names %s", got)
	}
}

func TestEveryTruncationRefused(t *testing.T) {
	b := sample(t)
	for n := 0; n < len(b); n++ {
		if _, err := Unmarshal(b[:n]); err == nil {
			t.Fatalf("truncated to %d of %d bytes: accepted", n, len(b))
		}
	}
}

func TestEveryBitFlipRefused(t *testing.T) {
	b := sample(t)
	for i := 0; i < len(b)*8; i++ {
		c := append([]byte(nil), b...)
		c[i/8] ^= 1 << (i % 8)
		if _, err := Unmarshal(c); err == nil {
			t.Fatalf("bit %d flipped: accepted", i)
		}
	}
}

func TestVersions(t *testing.T) {
	b := sample(t)
	b[len(Magic)] = FormatVersion + 1
	if _, err := Unmarshal(b); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer format: %v", err)
	}
	b = sample(t)
	copy(b, "NOTGOVMM")
	if _, err := Unmarshal(b); err == nil || !strings.Contains(err.Error(), "not a govmm state file") {
		t.Fatalf("bad magic: %v", err)
	}
	b = sample(t)
	b[len(b)-1] ^= 0xff
	if _, err := Unmarshal(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bad checksum: %v", err)
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add(sample(f))
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Unmarshal(b)
		if err != nil {
			return
		}
		// Whatever parses must re-encode to a file that parses the same.
		out, err := st.Marshal()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		st2, err := Unmarshal(out)
		if err != nil || len(st2.Sections) != len(st.Sections) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}
