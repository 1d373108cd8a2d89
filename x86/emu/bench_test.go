package emu

import "testing"

// The typical MMIO instructions: a 32-bit load and store through a
// register base into the MMIO window, in 64-bit mode with 4-level paging.
func benchStep(b *testing.B, code string, hint bool) {
	m := newMode("64")
	m.log = false
	m.regs[RBX] = modelMMIO + 0x10
	insn := mustHex(code)
	copy(m.ram[testRIP:], insn)
	e := New(m)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.rip = testRIP
		if hint {
			e.Hint(modelMMIO+0x10, modelMMIO+0x10)
		}
		if err := e.Step(insn); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMMIOLoad(b *testing.B)      { benchStep(b, "8b03", false) }     // mov eax,[rbx]
func BenchmarkMMIOStore(b *testing.B)     { benchStep(b, "8903", false) }     // mov [rbx],eax
func BenchmarkMMIOLoadHint(b *testing.B)  { benchStep(b, "8b03", true) }      // with the intercept's GVA->GPA
func BenchmarkMMIOStoreDisp(b *testing.B) { benchStep(b, "4489430c", false) } // mov [rbx+0xc],r8d
func BenchmarkMMIOLockOr(b *testing.B)    { benchStep(b, "f00903", false) }   // lock or [rbx],eax
