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
// its console quiet. `govmm info --vcpus` shows it; SubstrateFailure
// names it, so that a stalled test says whose failure it was.

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

// SubstrateFailure reads the text of `govmm info --vcpus` and, when a
// vCPU shows the substrate's failure (RIP in L1's module area, CR2 equal
// to RIP and a #PF on that fetch pending or injected), returns a line
// that says so; otherwise "".
func SubstrateFailure(vcpus string) string {
	heads := vcpuHeader.FindAllStringSubmatchIndex(vcpus, -1)
	var found []string
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
	return "the nested substrate's known failure, not the VMM's: " + strings.Join(found, ", ") +
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
