package main

import "io"

// cmdBalloon: the arm64 build has no control socket (nor --balloon).
func cmdBalloon(args []string, stdout, stderr io.Writer) error {
	return notOnARM64("balloon (the control socket)")
}
