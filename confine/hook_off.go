//go:build !govmm_testhooks

package confine

// testHook does nothing outside test builds (see hook_on.go).
func testHook() {}

// vcpuTestHook does nothing outside test builds (see hook_on.go).
func vcpuTestHook(int) {}
