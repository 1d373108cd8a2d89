package decode

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

var benchInsn = []byte{0x44, 0x89, 0x43, 0x0c} // mov [rbx+0xc],r8d

func BenchmarkDecode(b *testing.B) {
	var inst Inst
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := Decode(benchInsn, 64, &inst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkX86asm is the same decode with golang.org/x/arch/x86/x86asm,
// for comparison.
func BenchmarkX86asm(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := x86asm.Decode(benchInsn, 64); err != nil {
			b.Fatal(err)
		}
	}
}
