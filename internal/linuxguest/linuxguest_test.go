package linuxguest

import (
	"reflect"
	"testing"
)

func TestParseLog(t *testing.T) {
	console := "noise\r\n[    1.0] early console line\r\n" +
		"govmm-userspace: token=x cpus=1 online=0 clocksource=kvm-clock\r\n" +
		"govmm-dmesg-begin\r\n" +
		"<5>[    0.000000] Linux version 6.1.0\r\n" +
		"<4>[    0.100000] ..MP-BIOS bug: 8254 timer not connected to IO-APIC\r\n" +
		"<6>[    0.200000] Call Trace:\r\n" +
		" <TASK>\r\n" +
		"<12>[    3.000000] from userspace\r\n" +
		"govmm-dmesg-end\r\n"
	want := []LogLine{
		{5, "Linux version 6.1.0"},
		{4, "..MP-BIOS bug: 8254 timer not connected to IO-APIC"},
		{6, "Call Trace:\n <TASK>"},
		{4, "from userspace"},
	}
	if got := ParseLog(console); !reflect.DeepEqual(got, want) {
		t.Errorf("ParseLog:\n got %+v\nwant %+v", got, want)
	}
	if got := ParseLog("govmm-dmesg-begin\n<6>[ 1.0] cut short"); got != nil {
		t.Errorf("log without its end marker: %+v", got)
	}
	m := userspaceLine.FindStringSubmatch(console)
	if m == nil || m[4] != "kvm-clock" {
		t.Errorf("userspace line: %q", m)
	}
}
