package memsize

import "testing"

func TestParse(t *testing.T) {
	good := map[string]uint64{
		"256M": 256 << 20, "2G": 2 << 30, "512MiB": 512 << 20, "1g": 1 << 30,
		"4096": 4096, "64K": 64 << 10, " 1T ": 1 << 40, "8MB": 8 << 20,
	}
	for in, want := range good {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1M", "lots", "1000", "1.5G", "M", "99999999999T"} {
		if got, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", in, got)
		}
	}
}
