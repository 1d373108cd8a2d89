//go:build arm64

package mshvarm

import (
	"errors"
	"strings"
	"testing"
)

func TestNotImplementedNamesWhatIsMissing(t *testing.T) {
	err := NotImplemented()
	if !errors.Is(err, ErrNotImplemented) {
		t.Fatalf("%v does not wrap ErrNotImplemented", err)
	}
	msg := err.Error()
	if len(Missing) == 0 {
		t.Fatal("nothing listed as missing")
	}
	for _, m := range Missing {
		if m == "" || !strings.Contains(msg, m) {
			t.Errorf("error does not name %q", m)
		}
	}
	if !strings.Contains(msg, "MSHV on arm64") {
		t.Errorf("error does not point at the README section: %s", msg)
	}
}
