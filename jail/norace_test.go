//go:build linux && !race

package jail

const raceBuild = false
