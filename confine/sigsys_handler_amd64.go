package confine

// Implemented in sigsys_amd64.s.
func sigsysHandler()
func sigsysRestorer()
func sigsysHandlerPC() uintptr
func sigsysRestorerPC() uintptr
