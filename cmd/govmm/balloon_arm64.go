package main

import "io"

// cmdBalloon: the arm64 machine has no virtio-balloon device (run,
// restore and migrate receive refuse --balloon), so there is nothing for
// `govmm balloon` to steer.
func cmdBalloon(args []string, stdout, stderr io.Writer) error {
	return notOnARM64("balloon (virtio-balloon)")
}
