package nested

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShutdownExits(t *testing.T) {
	const head = "# tracer: nop\n#\n#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
	guest := "           govmm-812     [001] d..1.   101.250000: kvm_exit: vcpu 1 reason shutdown rip 0xffffffff8105a2c3 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000b08 error_code 0x00000000\n"
	l1 := "           govmm-901     [000] d..1.   200.500000: kvm_exit: vcpu 0 reason shutdown rip 0xffffffffc0a1fdcc info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000\n"
	// The first capture (TestVirtioLiveMigration, mshvsim to KVM): RIP
	// right after an RDMSR, a #PF on that fetch being delivered.
	captured := "           vcpu1-207     [000] .....   162.396783: kvm_exit: vcpu 1 reason shutdown rip 0xffffffff970737c5 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000b0e error_code 0x00000010\n"
	vmcb := func(cr3 string) string {
		return "           vcpu1-207     [000] .....   162.396790: vmcb_at_shutdown: (shutdown_interception+0x0/0x50 [kvm_amd]) cr0=0x80050033 cr2=0xffffffff970737c5 cr3=" + cr3 + " cr4=0x350ef0 efer=0x1d01 rip=0xffffffff970737c5 rsp=0xffffa4c0c0123e40 idtr=0xfffffe0000000000 gsbase=0xffff8e4e1f280000\n"
	}
	idtLost := "           vcpu1-218     [000] .N...    66.843576: vmcb_at_shutdown: (shutdown_interception+0x0/0x50 [kvm_amd]) cr0=0x80050033 cr2=0xfffffe0000000080 cr3=0x15604000 cr4=0x751ea0 efer=0x1d01 rip=0xffffffff970737c5 rsp=0xff557094800ccea0 idtr=0xfffffe0000000000 gsbase=0xff3e42a31ef00000\n"
	probeExit := "           vcpu0-1894    [000] .....   257.986493: kvm_exit: vcpu 0 reason shutdown rip 0x105ce5 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000b0e error_code 0x00000000\n"
	probeVMCB := "           vcpu0-1894    [000] .....   257.986524: vmcb_at_shutdown: (shutdown_interception+0x0/0x50 [kvm_amd]) cr0=0x80000033 cr2=0x123b00 cr3=0x167000 cr4=0x620 efer=0x1500 rip=0x105ce5 rsp=0x170de8 idtr=0x123a80 gsbase=0x121940\n"
	timerExit := "           vcpu0-1720    [000] .....   204.739073: kvm_exit: vcpu 0 reason shutdown rip 0xffffffffa5c17a0b info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x800000ec error_code 0x00000000\n"
	timerVMCB := "           vcpu0-1720    [000] .....   204.739116: vmcb_at_shutdown: (shutdown_interception+0x0/0x50 [kvm_amd]) cr0=0x80050033 cr2=0xfffffe0000000080 cr3=0x11d06000 cr4=0x751eb0 efer=0x1d01 rip=0xffffffffa5c17a0b rsp=0xffffffffa6c03e98 idtr=0xfffffe0000000000 gsbase=0xff1911b4df200000\n"
	for _, c := range []struct {
		name, trace string
		mark        int
		ram         uint64
		want        []string
		not         []string
	}{
		{name: "empty", trace: head},
		{name: "no file", trace: ""},
		{name: "guest", trace: head + guest, want: []string{"not the substrate's known failure as far as the trace shows: vCPU 1 at RIP 0xffffffff8105a2c3 while delivering exception 8 (error code 0x0)", "intr_info 0x80000b08"}},
		{name: "substrate", trace: head + guest + l1, mark: 1, want: []string{"the nested substrate's known failure", "vCPU 0 at RIP 0xffffffffc0a1fdcc (in L1's module area"}, not: []string{"ffffffff8105a2c3"}},
		{name: "before", trace: head + guest, mark: 1},
		{name: "nothing new", trace: head + guest + l1, mark: 2},
		{name: "captured", trace: head + captured, want: []string{"vCPU 1 at RIP 0xffffffff970737c5 while delivering #PF (error code 0x10)"}},
		{name: "guest CR3", trace: head + captured + vmcb("0x1a4e000"), ram: 512 << 20,
			want: []string{"as far as the trace shows", "#PF (error code 0x10), CR3 0x1a4e000", "vmcb_at_shutdown"}, not: []string{"beyond"}},
		{name: "L1's CR3", trace: head + captured + vmcb("0x10093e000"), ram: 512 << 20,
			want: []string{"the nested substrate's known failure", "CR3 0x10093e000 (beyond the guest's 512 MiB of RAM: not its page tables)"}},
		{name: "RAM unknown", trace: head + captured + vmcb("0x10093e000"), want: []string{"as far as the trace shows", "CR3 0x10093e000"}, not: []string{"beyond"}},
		// TestNetSnapshot/mshvsim, 2026-12-06: the same fetch #PF, whose
		// delivery then faulted reading the IDT (CR2 = IDT + 0x80).
		{name: "IDT lost", trace: head + captured + idtLost, ram: 512 << 20,
			want: []string{"the nested substrate's second known failure", "the event's delivery faulted reading the IDT", "CR3 0x15604000"}, not: []string{"not the substrate's"}},
		// TestCPUModelRestoreRefused in CI, 2026-12-06: the bare-metal
		// probe's supervisor read at a low RIP, then its IDT unreadable.
		{name: "IDT lost, bare metal", trace: head + probeExit + probeVMCB, ram: 128 << 20,
			want: []string{"second known failure", "vCPU 0 at RIP 0x105ce5 while delivering #PF (error code 0x0), CR3 0x167000 (the event's delivery"}},
		// TestVirtioConsole/kvm, 2026-12-06: the timer's interrupt, whose
		// delivery read only the IDT.
		{name: "IDT lost, interrupt", trace: head + timerExit + timerVMCB, ram: 512 << 20,
			want: []string{"second known failure", "vCPU 0 at RIP 0xffffffffa5c17a0b while delivering external interrupt 236, CR3 0x11d06000 (the event's delivery"}},
		{name: "IDT mapped", trace: head + captured + vmcb("0x1a4e000"), ram: 512 << 20, not: []string{"second known failure"},
			want: []string{"not the substrate's known failure"}},
		{name: "IDT lost, user fetch", trace: head + strings.Replace(captured, "error_code 0x00000010", "error_code 0x00000014", 1) + idtLost,
			want: []string{"not the substrate's known failure"}, not: []string{"second known failure"}},
		{name: "both", trace: head + guest + l1, want: []string{"substrate's known failure", "ffffffff8105a2c3", "ffffffffc0a1fdcc"}},
	} {
		got := shutdownExits(c.trace, c.mark, c.ram)
		if len(c.want) == 0 {
			if got != "" {
				t.Errorf("%s: want nothing, got %q", c.name, got)
			}
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", c.name, got, w)
			}
		}
		for _, w := range c.not {
			if strings.Contains(got, w) {
				t.Errorf("%s: %q has %q", c.name, got, w)
			}
		}
	}
}

// TestVMCBOffset finds the VMCB pointer's offset in the kvm-amd.ko the
// harness uses (Debian 6.1.0-57: 0x1998, from shutdown_interception's
// disassembly), when that module is in the cache.
func TestVMCBOffset(t *testing.T) {
	mods, _ := filepath.Glob(filepath.Join(os.Getenv("HOME"), ".cache/govmm/linux/lib/modules/*/kernel/arch/x86/kvm/kvm-amd.ko"))
	if len(mods) == 0 {
		t.Skip("no kvm-amd.ko in ~/.cache/govmm (the nested harness downloads it)")
	}
	for _, m := range mods {
		off := vmcbOffset(m)
		if off <= 0 || off%8 != 0 {
			t.Errorf("%s: VMCB pointer offset %#x", m, off)
		}
		if strings.Contains(m, "/6.1.0-57-cloud-amd64/") && off != 0x1998 {
			t.Errorf("%s: VMCB pointer offset %#x, want 0x1998", m, off)
		}
		s := shutdownTraceScript(off)
		if !strings.Contains(s, fmt.Sprintf("cr3=+0x550(+%#x(%%di)):x64", off)) {
			t.Errorf("the kprobe does not read CR3 through the VMCB pointer:\n%s", s)
		}
	}
	if vmcbOffset("/nonexistent") != 0 || !strings.Contains(shutdownTraceScript(0), "kvm_exit") || strings.Contains(shutdownTraceScript(0), "kprobe") {
		t.Error("without the module the script must keep the tracepoint and add no kprobe")
	}
}

func TestGuestRAM(t *testing.T) {
	for _, c := range []struct {
		args []string
		want uint64
	}{
		{[]string{"run", "--memory=512M", "--cpus=2"}, 512 << 20},
		{[]string{"run", "--memory", "2G"}, 2 << 30},
		{[]string{"migrate", "receive", "--listen", "unix:/x"}, 0},
		{[]string{"run", "--memory"}, 0},
		{[]string{"run", "--memory=lots"}, 0},
	} {
		if got := GuestRAM(c.args); got != c.want {
			t.Errorf("GuestRAM(%q) = %d, want %d", c.args, got, c.want)
		}
	}
}
