//go:build linux && race

package jail

// raceBuild: a -race test binary links the C race runtime dynamically, so
// it cannot be the program a jail runs.
const raceBuild = true
