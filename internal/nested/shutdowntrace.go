package nested

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"govmm/internal/memsize"
)

// A triple fault of an L2 guest leaves nothing to read: KVM on AMD
// reinitialises the vCPU on the shutdown intercept, so govmm can only say
// "triple fault at RIP 0xfff0". L1's KVM traces the exit first, though
// (the kvm_exit tracepoint fires before the exit is handled), and QEMU's
// SVM writes the faulting RIP into the VMCB. L1's init turns that
// tracepoint on, filtered to shutdown exits so it costs nothing else, and
// ShutdownExits reads it back: the RIP tells the substrate's known failure
// (L1's module area, see SubstrateFailure) from a guest that really
// faulted.

// tracingDir is where L1 mounts tracefs.
const tracingDir = "/sys/kernel/tracing"

// shutdownTraceScript is the init script's part that enables the
// kvm_exit tracepoint for shutdown exits only: SVM's SHUTDOWN (0x7f) and
// VMX's TRIPLE_FAULT (2). With vmcbOff (see vmcbOffset) it also puts a
// kprobe on kvm_amd's shutdown_interception that records the guest's
// control registers from the VMCB's save area before KVM clears it. It
// fails quietly: a kernel without tracefs or kprobes only loses the
// diagnosis.
func shutdownTraceScript(vmcbOff int) string {
	s := `mount -t tracefs nodev ` + tracingDir + ` 2>/dev/null
if [ -d ` + tracingDir + `/events/kvm/kvm_exit ]; then
	echo '(isa == 2 && exit_reason == 127) || (isa == 1 && exit_reason == 2)' > ` + tracingDir + `/events/kvm/kvm_exit/filter &&
	echo 1 > ` + tracingDir + `/events/kvm/kvm_exit/enable || echo 'nested: no kvm_exit trace for triple faults'
fi
`
	if vmcbOff <= 0 {
		return s
	}
	// The VMCB save area (AMD APM vol. 2, appendix B) starts at 0x400.
	v := fmt.Sprintf("(+%#x(%%di))", vmcbOff)
	var args []string
	for _, f := range []struct {
		name string
		off  int
	}{{"cr0", 0x558}, {"cr2", 0x640}, {"cr3", 0x550}, {"cr4", 0x548}, {"efer", 0x4d0}, {"rip", 0x578}, {"rsp", 0x5d8}, {"idtr", 0x488}, {"gsbase", 0x458}} {
		args = append(args, fmt.Sprintf("%s=+%#x%s:x64", f.name, f.off, v))
	}
	return s + `echo 'p:govmm/vmcb_at_shutdown shutdown_interception ` + strings.Join(args, " ") + `' >> ` + tracingDir + `/kprobe_events 2>/dev/null &&
	echo 1 > ` + tracingDir + `/events/govmm/vmcb_at_shutdown/enable 2>/dev/null || echo 'nested: no kprobe for the VMCB at a triple fault'
`
}

// vmcbOffset finds, in kvm-amd.ko, where struct vcpu_svm keeps its
// current VMCB pointer (an offset from the struct kvm_vcpu pointer
// every exit handler gets, which changes with the kernel's build):
// shutdown_interception begins by clearing that VMCB, so its first
// "mov disp32(%rdi),%rdi" (48 8b bf disp32) followed by a call is the
// load. 0 when the module or the pattern is not found.
func vmcbOffset(kvmAMD string) int {
	f, err := elf.Open(kvmAMD)
	if err != nil {
		return 0
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return 0
	}
	for _, sym := range syms {
		if sym.Name != "shutdown_interception" || int(sym.Section) >= len(f.Sections) || sym.Section == elf.SHN_UNDEF {
			continue
		}
		sec := f.Sections[sym.Section]
		b, err := sec.Data()
		if err != nil || sym.Value >= uint64(len(b)) {
			return 0
		}
		code := b[sym.Value:min(uint64(len(b)), sym.Value+48)]
		for i := 0; i+12 <= len(code); i++ {
			if code[i] == 0x48 && code[i+1] == 0x8b && code[i+2] == 0xbf && code[i+7] == 0xe8 {
				off := int(int32(binary.LittleEndian.Uint32(code[i+3:])))
				if off > 0 && off < 1<<16 {
					return off
				}
			}
		}
		return 0
	}
	return 0
}

var (
	traceEvent = regexp.MustCompile(`(?m)^.*\s(kvm_exit|vmcb_at_shutdown): .*$`)
	traceCR3   = regexp.MustCompile(` cr3=0x([0-9a-f]+)`)
	traceCR2   = regexp.MustCompile(` cr2=0x([0-9a-f]+)`)
	traceIDTR  = regexp.MustCompile(` idtr=0x([0-9a-f]+)`)
	traceVCPU  = regexp.MustCompile(`kvm_exit: vcpu (\d+) `)
	traceRIP   = regexp.MustCompile(` rip 0x([0-9a-f]+)`)
	traceInt   = regexp.MustCompile(` intr_info 0x([0-9a-f]+) error_code 0x([0-9a-f]+)`)
)

// ShutdownMark is how many shutdown exits L1's KVM has traced so far: a
// test takes it before it starts a guest and gives it to ShutdownExits,
// which then lists only the exits after it. 0 outside L1.
func ShutdownMark() int {
	b, err := os.ReadFile(filepath.Join(tracingDir, "trace"))
	if err != nil {
		return 0
	}
	return len(traceEvent.FindAllString(string(b), -1))
}

// ShutdownExits is the text to add to a failure in which a guest
// triple-faulted: the shutdown exits L1's KVM traced after mark (from
// ShutdownMark), each with its RIP and CR3, and a diagnosis; guestRAM
// (bytes, 0 if unknown) lets it tell a CR3 that cannot be the guest's.
// "" outside L1 or when none was traced.
func ShutdownExits(mark int, guestRAM uint64) string {
	b, err := os.ReadFile(filepath.Join(tracingDir, "trace"))
	if err != nil {
		return ""
	}
	return shutdownExits(string(b), mark, guestRAM)
}

func shutdownExits(trace string, mark int, guestRAM uint64) string {
	type exit struct {
		at, cr3 string
		// kernelPF: the exit came while an event that a running
		// kernel delivers through its IDT alone was being delivered
		// (idtOnlyDelivery).
		kernelPF bool
	}
	var lines []string
	var exits []exit
	var substrate, lostTables bool
	for i, l := range traceEvent.FindAllString(trace, -1) {
		if i < mark {
			continue
		}
		lines = append(lines, strings.TrimSpace(l))
		if m := traceCR3.FindStringSubmatch(l); m != nil && strings.Contains(l, "vmcb_at_shutdown:") {
			// The kprobe fires right after the exit's tracepoint.
			if len(exits) == 0 || exits[len(exits)-1].cr3 != "" {
				continue
			}
			cr3, err := strconv.ParseUint(m[1], 16, 64)
			if err != nil {
				continue
			}
			e := &exits[len(exits)-1]
			e.cr3 = fmt.Sprintf(", CR3 %#x", cr3)
			if e.kernelPF && inIDT(l) {
				e.cr3 += " (the event's delivery faulted reading the IDT: the IDT was not mapped)"
				lostTables = true
			}
			// Page-table root bits 51:12; below 2 GiB a guest's RAM is
			// contiguous from 0, so a root above it is nobody's table
			// in this guest.
			if root := cr3 & 0x000ffffffffff000; guestRAM > 0 && guestRAM <= 2<<30 && root >= guestRAM {
				e.cr3 += fmt.Sprintf(" (beyond the guest's %d MiB of RAM: not its page tables)", guestRAM>>20)
				substrate = true
			}
			continue
		}
		r, v := traceRIP.FindStringSubmatch(l), traceVCPU.FindStringSubmatch(l)
		if r == nil || v == nil {
			continue
		}
		rip, err := strconv.ParseUint(r[1], 16, 64)
		if err != nil {
			continue
		}
		at := fmt.Sprintf("vCPU %s at RIP %#x", v[1], rip)
		if rip >= moduleAreaStart && rip < moduleAreaEnd {
			at += " (in L1's module area, where L1's kvm_amd runs VMRUN)"
			substrate = true
		}
		exits = append(exits, exit{at: at + delivering(l), kernelPF: idtOnlyDelivery(l)})
	}
	if len(lines) == 0 {
		return ""
	}
	var all []string
	for _, e := range exits {
		all = append(all, e.at+e.cr3)
	}
	d := "not the substrate's known failure as far as the trace shows: " + strings.Join(all, "; ")
	switch {
	case substrate:
		d = diagnosedMark + "known failure, not the VMM's: " + strings.Join(all, "; ") +
			": QEMU resumed the guest with L1's registers, and it triple-faulted there"
	case lostTables:
		d = diagnosedMark + "second known failure, as far as the trace shows: " + strings.Join(all, "; ") +
			": a running kernel (Linux, or one of the project's bare-metal guests) always maps its IDT, so the vCPU was resumed on page tables that were not its own" +
			" (seen right after exits to the VMM's userspace; a VMM that overwrote the guest's top-level page table would look the same, so a test that fails this way twice deserves a look)"
	}
	return "\n--- diagnosis of the triple fault (L1's KVM traced the shutdown exit before it reset the vCPU): " + d +
		"\n--- L1's trace of shutdown exits:\n" + strings.Join(lines, "\n") + "\n"
}

// idtOnlyDelivery says whether a shutdown exit's line shows the delivery of
// an event whose first step a guest with its IDT and kernel mapped
// cannot fail: a #PF for a not-present access in supervisor mode (error
// code bits 0 and 2 clear; a fetch of the kernel's text, Linux
// 2026-12-06, or a read of the bare-metal probe's data,
// TestCPUModelRestoreRefused in CI the same day: CR3 0x167000, RIP
// 0x105ce5), or an external interrupt or NMI, whose delivery reads only
// the IDT (TestVirtioConsole/kvm, 2026-12-06: the timer's vector 236).
// A user-mode fault is left undiagnosed.
func idtOnlyDelivery(l string) bool {
	m := traceInt.FindStringSubmatch(l)
	if m == nil {
		return false
	}
	info, err1 := strconv.ParseUint(m[1], 16, 32)
	code, err2 := strconv.ParseUint(m[2], 16, 32)
	if err1 != nil || err2 != nil || info&(1<<31) == 0 {
		return false
	}
	switch info >> 8 & 7 {
	case 0, 2: // external interrupt, NMI
		return true
	case 3: // exception
		return info&0xff == 14 && info&(1<<11) != 0 && code&0x5 == 0
	}
	return false
}

// inIDT says whether the VMCB line's CR2 lies in the IDT's page: the
// fault that ended the vCPU was a read of its own IDT.
func inIDT(l string) bool {
	c, i := traceCR2.FindStringSubmatch(l), traceIDTR.FindStringSubmatch(l)
	if c == nil || i == nil {
		return false
	}
	cr2, err1 := strconv.ParseUint(c[1], 16, 64)
	idt, err2 := strconv.ParseUint(i[1], 16, 64)
	return err1 == nil && err2 == nil && cr2 >= idt && cr2-idt < 4096
}

// GuestRAM is the guest RAM a govmm command line asks for (--memory, as
// the CLI parses it), or 0 when it names none: a migration's destination
// learns its size from the source.
func GuestRAM(args []string) uint64 {
	for i, a := range args {
		v, ok := strings.CutPrefix(a, "--memory=")
		if !ok && a == "--memory" && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if ok {
			n, err := memsize.Parse(v)
			if err == nil {
				return n
			}
		}
	}
	return 0
}

// delivering decodes the event SVM was delivering when the shutdown came
// (EXITINTINFO: valid bit 31, type in bits 10:8, error code valid bit 11,
// vector in bits 7:0), such as a #PF whose handler could not be reached.
func delivering(l string) string {
	m := traceInt.FindStringSubmatch(l)
	if m == nil || !strings.Contains(l, "reason shutdown") {
		return ""
	}
	info, err1 := strconv.ParseUint(m[1], 16, 32)
	code, err2 := strconv.ParseUint(m[2], 16, 32)
	if err1 != nil || err2 != nil || info&(1<<31) == 0 {
		return ""
	}
	vec := info & 0xff
	what := map[uint64]string{0: "external interrupt", 2: "NMI", 3: "exception", 4: "software interrupt"}[info>>8&7]
	if what == "" {
		what = fmt.Sprintf("event type %d", info>>8&7)
	}
	s := fmt.Sprintf(" while delivering %s %d", what, vec)
	if info>>8&7 == 3 && vec == 14 {
		s = " while delivering #PF"
	}
	if info&(1<<11) != 0 {
		s += fmt.Sprintf(" (error code %#x)", code)
	}
	return s
}
