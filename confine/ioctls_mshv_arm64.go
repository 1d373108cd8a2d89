package confine

// The arm64 build has neither the MSHV backend (mshvarm refuses --accel
// mshv) nor VFIO passthrough (no --device), and links neither's ABI
// package (platform/arm64's TestARM64BuildLinksNoX86): their requests
// are none, and the filter refuses them (archARM64.mshvVFIO is false).

func mshvIoctls() []ioctlReq    { return nil }
func mshvSetupOnly() []ioctlReq { return nil }
func vfioIoctls() []ioctlReq    { return nil }
