package nested

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// The nested substrate's best-known failure is QEMU's SVM emulation
// resuming an L2 guest with L1's own registers: the guest's RIP becomes
// the address in L1's kvm_amd right after its VMRUN, in L1's module area,
// and its CR3 L1's page tables. The guest then fetches from an address
// its own page tables do not map and loops on the #PF that fetch raises,
// its console quiet. `govmm info --vcpus` shows it, and so does a hang
// report's KVM trace (internal/hangreport: every entry at one RIP inside
// L1's kvm module); SubstrateFailure names it, so that a stalled test
// says whose failure it was.

// diagnosedMark begins every diagnosis that names the substrate as the
// cause of a failure; a failure's text that holds it was explained
// (Diagnosed). "not the substrate's" never contains it.
const diagnosedMark = "the nested substrate's "

// Diagnosed says whether a line of a test's output carries a diagnosis
// that names the substrate as a failure's cause: the test harness reruns
// such failures without counting them against the code (internal/kvmtest).
func Diagnosed(line string) bool { return strings.Contains(line, diagnosedMark) }

// L1's module area (Linux x86-64: MODULES_VADDR to MODULES_END).
const (
	moduleAreaStart = 0xffffffffc0000000
	moduleAreaEnd   = 0xfffffffffe000000
)

var (
	vcpuHeader = regexp.MustCompile(`(?m)^vCPU (\d+): `)
	vcpuRIP    = regexp.MustCompile(`(?m)^\s+rip (0x[0-9a-f]+)`)
	vcpuCR     = regexp.MustCompile(`(?m)\bcr2 (0x[0-9a-f]+)\s+cr3 (0x[0-9a-f]+)`)
	vcpuPF     = regexp.MustCompile(`(?m)^\s+events:.*exception #PF \(14\) (injected|pending)`)
)

// hangEntries matches a hang report's line for a vCPU that KVM entered
// only at one RIP, which lies in L1's kvm module.
var hangEntries = regexp.MustCompile(`(?m)^(vCPU \d+) \(thread \d+\): (\d+) guest entries, all at RIP (0x[0-9a-f]+); RIP 0x[0-9a-f]+ lies inside this kernel's module (kvm_amd|kvm_intel|kvm) `)

// hangMinEntries is how many entries at that one RIP make a loop: the
// report watches for 1.3 s, and the failure re-enters thousands of times.
const hangMinEntries = 100

// SubstrateFailure reads the text of `govmm info --vcpus`, or of a hang
// report, and, when a vCPU shows the substrate's failure, returns a line
// that says so; otherwise "". In `info --vcpus` that is RIP in L1's
// module area, CR2 equal to RIP and a #PF on that fetch pending or
// injected; in a hang report, KVM entering the vCPU again and again at
// one RIP inside L1's own kvm module.
func SubstrateFailure(vcpus string) string {
	var found []string
	for _, m := range hangEntries.FindAllStringSubmatch(vcpus, -1) {
		if n, _ := strconv.Atoi(m[2]); n >= hangMinEntries {
			found = append(found, fmt.Sprintf("%s entered %s times at RIP %s in L1's %s", m[1], m[2], m[3], m[4]))
		}
	}
	heads := vcpuHeader.FindAllStringSubmatchIndex(vcpus, -1)
	for i, h := range heads {
		end := len(vcpus)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		block := vcpus[h[0]:end]
		idx := vcpus[h[2]:h[3]]
		rip, ok1 := hexField(vcpuRIP, block, 1)
		cr2, ok2 := hexField(vcpuCR, block, 1)
		cr3, _ := hexField(vcpuCR, block, 2)
		if !ok1 || !ok2 || rip < moduleAreaStart || rip >= moduleAreaEnd || cr2 != rip || !vcpuPF.MatchString(block) {
			continue
		}
		found = append(found, fmt.Sprintf("vCPU %s at RIP %#x (CR3 %#x)", idx, rip, cr3))
	}
	if len(found) == 0 {
		return ""
	}
	return diagnosedMark + "known failure, not the VMM's: " + strings.Join(found, ", ") +
		" fetching from L1's module area (where L1's kvm_amd runs VMRUN) with a #PF on that fetch: QEMU resumed the guest with L1's registers"
}

func hexField(re *regexp.Regexp, s string, group int) (uint64, bool) {
	m := re.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(m[group], "0x"), 16, 64)
	return v, err == nil
}
