//go:build !arm64

package guests

import "embed"

// x86Bin holds the x86 guests (Multiboot ELF images and the real-mode
// blob); the arm64 build does not carry them.
//
//go:embed bin/*.elf bin/*.bin
var x86Bin embed.FS

func init() { sources = append(sources, x86Bin) }
