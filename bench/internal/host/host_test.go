package host

import (
	"slices"
	"testing"
)

func TestLastLines(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\n", 5, "a\nb"},
		{"", 3, ""},
	} {
		if got := LastLines(c.in, c.n); got != c.want {
			t.Errorf("LastLines(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestLineWriter(t *testing.T) {
	var got []string
	w := &LineWriter{Line: func(l string) { got = append(got, l) }}
	for _, p := range []string{"one\ntw", "o", "\nthree\nfour"} {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if want := []string{"one\n", "two\n", "three\n"}; !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q (a partial last line waits for its newline)", got, want)
	}
}
