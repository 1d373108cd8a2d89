package nested

import (
	"strings"
	"testing"
)

func TestShutdownExits(t *testing.T) {
	const head = "# tracer: nop\n#\n#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
	guest := "           govmm-812     [001] d..1.   101.250000: kvm_exit: vcpu 1 reason shutdown rip 0xffffffff8105a2c3 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000b08 error_code 0x00000000\n"
	l1 := "           govmm-901     [000] d..1.   200.500000: kvm_exit: vcpu 0 reason shutdown rip 0xffffffffc0a1fdcc info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000\n"
	for _, c := range []struct {
		name, trace string
		mark        int
		want        []string
		none        bool
	}{
		{name: "empty", trace: head, none: true},
		{name: "no file", trace: "", none: true},
		{name: "guest", trace: head + guest, mark: 0, want: []string{"not the substrate's known failure: the guest's own addresses: vCPU 1 at RIP 0xffffffff8105a2c3 while delivering exception 8 (error code 0x0)", "intr_info 0x80000b08"}},
		{name: "substrate", trace: head + guest + l1, mark: 1, want: []string{"the nested substrate's known failure", "vCPU 0 at RIP 0xffffffffc0a1fdcc"}},
		{name: "before", trace: head + guest, mark: 1, none: true},
		{name: "nothing new", trace: head + guest + l1, mark: 2, none: true},
		{name: "captured", trace: head + "           vcpu1-207     [000] .....   162.396783: kvm_exit: vcpu 1 reason shutdown rip 0xffffffff970737c5 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000b0e error_code 0x00000010\n",
			want: []string{"vCPU 1 at RIP 0xffffffff970737c5 while delivering #PF (error code 0x10)"}},
		{name: "both", trace: head + guest + l1, mark: 0, want: []string{"substrate's known failure", "ffffffff8105a2c3", "ffffffffc0a1fdcc"}},
	} {
		got := shutdownExits(c.trace, c.mark)
		if c.none {
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
		if c.name == "substrate" && strings.Contains(got, "ffffffff8105a2c3") {
			t.Errorf("%s: an exit before the mark is listed: %q", c.name, got)
		}
	}
}
