package e2e

import (
	"slices"
	"testing"
)

// TestRealMSHVHostRunsLinux plays a host with a real /dev/mshv (issue #15
// item 9: there the end-to-end tests must run on it, without the
// simulator, rather than skip). The tests that boot Linux must not skip
// for want of KVM (needLinux), --accel=mshv comes first among the
// accelerators, the Linux migration tests move MSHV to MSHV, and a test
// that needs KVM and mshvsim, missing on such a host unless KVM is there
// too, skips naming them instead of failing. Run here without KVM
// (GOVMM_NESTED=0 on a machine without /dev/kvm), accels has nothing else.
func TestRealMSHVHostRunsLinux(t *testing.T) {
	defer func(f func() bool) { hostMSHV = f }(hostMSHV)
	hostMSHV = func() bool { return true }

	reached := false
	t.Run("needLinux", func(t *testing.T) {
		needLinux(t)
		reached = true
	})
	if !reached {
		t.Errorf("needLinux skipped a Linux test on a /dev/mshv host")
	}

	all := accels(t)
	if len(all) == 0 || !slices.Equal(all[0], []string{"--accel=mshv"}) {
		t.Fatalf("accelerators %q, want --accel=mshv (the real device, no simulator) first", all)
	}
	mshv := false
	for _, m := range linuxMoves(t) {
		if accelName(m.src) == "mshv" && accelName(m.dst) == "mshv" {
			mshv = true
		}
	}
	if !mshv {
		t.Errorf("the Linux moves on a /dev/mshv host include no move from MSHV to MSHV")
	}

	// Without KVM here this skips (a failure would fail this test too);
	// with it, it returns both.
	t.Run("needAccels", func(t *testing.T) {
		pair := needAccels(t, "kvm", "mshvsim")
		if accelName(pair[0]) != "kvm" || accelName(pair[1]) != "mshvsim" {
			t.Errorf("needAccels(kvm, mshvsim) = %q", pair)
		}
	})
}
