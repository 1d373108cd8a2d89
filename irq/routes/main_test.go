package routes

import (
	"os"
	"testing"

	"govmm/internal/kvmtest"
)

// TestMain runs the tests that need KVM on this machine's /dev/kvm and on
// nested KVM, as internal/kvmtest decides.
func TestMain(m *testing.M) { os.Exit(kvmtest.Main(m)) }
