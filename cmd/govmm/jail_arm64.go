package main

import "io"

// cmdJail: the jail builds on the x86 run flags; arm64 refuses it by name.
func cmdJail(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return notOnARM64("govmm jail")
}
