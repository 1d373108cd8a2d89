package nested

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
// VMX's TRIPLE_FAULT (2). Failing quietly: a kernel without tracefs only
// loses the diagnosis.
const shutdownTraceScript = `mount -t tracefs nodev ` + tracingDir + ` 2>/dev/null
if [ -d ` + tracingDir + `/events/kvm/kvm_exit ]; then
	echo '(isa == 2 && exit_reason == 127) || (isa == 1 && exit_reason == 2)' > ` + tracingDir + `/events/kvm/kvm_exit/filter &&
	echo 1 > ` + tracingDir + `/events/kvm/kvm_exit/enable || echo 'nested: no kvm_exit trace for triple faults'
fi
`

var (
	traceExit = regexp.MustCompile(`(?m)^.*\skvm_exit: .*$`)
	traceVCPU = regexp.MustCompile(`kvm_exit: vcpu (\d+) `)
	traceRIP  = regexp.MustCompile(` rip 0x([0-9a-f]+)`)
	traceInt  = regexp.MustCompile(` intr_info 0x([0-9a-f]+) error_code 0x([0-9a-f]+)`)
)

// ShutdownMark is how many shutdown exits L1's KVM has traced so far: a
// test takes it before it starts a guest and gives it to ShutdownExits,
// which then lists only the exits after it. 0 outside L1.
func ShutdownMark() int {
	b, err := os.ReadFile(filepath.Join(tracingDir, "trace"))
	if err != nil {
		return 0
	}
	return len(traceExit.FindAllString(string(b), -1))
}

// ShutdownExits is the text to add to a failure in which a guest
// triple-faulted: the shutdown exits L1's KVM traced after mark (from
// ShutdownMark), each with its RIP, and a diagnosis. "" outside L1 or
// when none was traced.
func ShutdownExits(mark int) string {
	b, err := os.ReadFile(filepath.Join(tracingDir, "trace"))
	if err != nil {
		return ""
	}
	return shutdownExits(string(b), mark)
}

func shutdownExits(trace string, mark int) string {
	var lines, substrate, guest []string
	for i, l := range traceExit.FindAllString(trace, -1) {
		if i < mark {
			continue
		}
		lines = append(lines, strings.TrimSpace(l))
		r, v := traceRIP.FindStringSubmatch(l), traceVCPU.FindStringSubmatch(l)
		if r == nil || v == nil {
			continue
		}
		rip, err := strconv.ParseUint(r[1], 16, 64)
		if err != nil {
			continue
		}
		at := fmt.Sprintf("vCPU %s at RIP %#x", v[1], rip) + delivering(l)
		if rip >= moduleAreaStart && rip < moduleAreaEnd {
			substrate = append(substrate, at)
		} else {
			guest = append(guest, at)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	var d string
	switch {
	case len(substrate) > 0:
		d = "the nested substrate's known failure, not the VMM's: " + strings.Join(substrate, ", ") +
			" in L1's module area (where L1's kvm_amd runs VMRUN): QEMU resumed the guest with L1's registers, and it triple-faulted there"
	default:
		d = "not the substrate's known failure: the guest's own addresses: " + strings.Join(guest, ", ")
	}
	return "\n--- diagnosis of the triple fault (L1's KVM traced the shutdown exit before it reset the vCPU): " + d +
		"\n--- L1's trace of shutdown exits:\n" + strings.Join(lines, "\n") + "\n"
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
