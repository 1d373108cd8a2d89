package confine

// Implemented in sigsys_arm64.s.
func sigsysHandler()
func sigsysHandlerPC() uintptr

// sigsysRestorerPC: arm64 signal frames need no sa_restorer (the kernel
// returns through the vDSO's trampoline), so none is set.
func sigsysRestorerPC() uintptr { return 0 }
