package linuxguest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dmesgDump is what init prints of log: gzip, then base64 in 76-character
// lines, as busybox writes them.
func dmesgDump(t *testing.T, log string) string {
	t.Helper()
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	zw.Write([]byte(log))
	zw.Close()
	enc := base64.StdEncoding.EncodeToString(z.Bytes())
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.String()
}

func TestParseLog(t *testing.T) {
	log := "<5>[    0.000000] Linux version 6.1.0\n" +
		"<4>[    0.100000] ..MP-BIOS bug: 8254 timer not connected to IO-APIC\n" +
		"<6>[    0.200000] Call Trace:\n" +
		" <TASK>\n" +
		"<12>[    3.000000] from userspace\n" + strings.Repeat("<7>[    3.100000] padding, so that the dump spans lines\n", 40)
	dump := dmesgDump(t, log)
	// A console message of the kernel's between two of init's lines.
	nl := strings.Index(dump, "\r\n") + 2
	dump = dump[:nl] + "[    9.1] hrtimer: interrupt took 2913452 ns\r\n" + dump[nl:]
	console := "noise\r\n[    1.0] early console line\r\n" +
		"govmm-userspace: token=x cpus=1 online=0 clocksource=kvm-clock\r\n" +
		"govmm-dmesg-begin\r\n" + dump + "govmm-dmesg-end\r\n"
	want := []LogLine{
		{5, "Linux version 6.1.0"},
		{4, "..MP-BIOS bug: 8254 timer not connected to IO-APIC"},
		{6, "Call Trace:\n <TASK>"},
		{4, "from userspace"},
	}
	got, err := ParseLog(console)
	if err != nil || len(got) != len(want)+40 || !reflect.DeepEqual(got[:len(want)], want) {
		t.Errorf("ParseLog: %v\n got %+v\nwant %+v and 40 more", err, got, want)
	}
	for in, wantErr := range map[string]string{
		"govmm-dmesg-begin\nH4sIAAAA":                                  "end marker missing",
		"govmm-dmesg-begin\nH4sI\u00e9AA\ngovmm-dmesg-end":             "not gzip",
		"govmm-dmesg-begin\n" + dmesgDump(t, "") + "govmm-dmesg-end\n": "no message",
		"govmm-dmesg-begin\nH4s\ngovmm-dmesg-end":                      "does not decode",
		"nothing": "begin marker missing",
	} {
		if got, err := ParseLog(in); got != nil || err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ParseLog(%q) = %+v, %v; want an error saying %q", in, got, err, wantErr)
		}
	}
	m := userspaceLine.FindStringSubmatch(console)
	if m == nil || m[4] != "kvm-clock" {
		t.Errorf("userspace line: %q", m)
	}
}

// fakeVMM writes a shell script that stands in for govmm: `info` answers
// with a fake vCPU line and the control socket it was given, anything
// else runs script.
func fakeVMM(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake-govmm")
	info := `if [ "$1" = info ]; then echo "vCPU 0: fake, asked on $3 with $4"; exit 0; fi`
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+info+"\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunStall(t *testing.T) {
	b := Boot{Govmm: fakeVMM(t, "echo '[    0.1] Linux version 6.1.0'; exec sleep 60"), CPUs: 1, Token: "x",
		Stall: 2 * time.Second, Timeout: time.Minute}
	start := time.Now()
	_, err := b.Run(context.Background())
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("a VMM that goes quiet: %v, want ErrStalled", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the stall took %v to notice", d)
	}
	if !strings.Contains(err.Error(), "Linux version 6.1.0") {
		t.Fatalf("the error does not show the console: %v", err)
	}
	// Before the SIGQUIT, the boot asked the VMM for its vCPUs on the
	// control socket it gave it.
	if !regexp.MustCompile(`(?s)--- the guest's vCPUs .*\nvCPU 0: fake, asked on /\S+/api\.sock with --vcpus`).MatchString(err.Error()) {
		t.Fatalf("the error does not show the vCPUs: %v", err)
	}
}

func TestRunNotAStall(t *testing.T) {
	// Prints steadily, then ends without init's line: a failure, not a stall.
	b := Boot{Govmm: fakeVMM(t, "for i in 1 2 3 4; do echo tick $i; sleep 0.5; done; exit 3"), CPUs: 1, Token: "x",
		Stall: 2 * time.Second, Timeout: time.Minute}
	_, err := b.Run(context.Background())
	if err == nil || errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "init never printed its line: exit status 3") {
		t.Fatalf("a VMM that prints and exits: %v", err)
	}
	// A timeout is not a stall either.
	b = Boot{Govmm: fakeVMM(t, "while :; do echo tick; sleep 0.2; done"), CPUs: 1, Token: "x",
		Stall: 10 * time.Second, Timeout: 2 * time.Second}
	_, err = b.Run(context.Background())
	if err == nil || errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "no power-off within 2s") {
		t.Fatalf("a VMM that never ends: %v", err)
	}
}

func TestRunTripleFault(t *testing.T) {
	b := Boot{Govmm: fakeVMM(t, "echo '[    4.9] x86/fpu: Enabled xstate features 0x207'; echo 'govmm: vCPU 0: triple fault (the guest took an exception it could not handle) at RIP 0xfff0' >&2; exit 2"),
		CPUs: 1, Token: "x", Timeout: time.Minute}
	if _, err := b.Run(context.Background()); !errors.Is(err, ErrTripleFault) || errors.Is(err, ErrStalled) {
		t.Fatalf("a guest that triple-faulted: %v, want ErrTripleFault", err)
	}
	// After init's line, while init prints the kernel log: the log is cut
	// short, and the triple fault is still what the error is.
	b = Boot{Govmm: fakeVMM(t, "echo 'govmm-userspace: token=x cpus=1 online=0 clocksource=tsc'; echo govmm-dmesg-begin; echo '<6>[    7.4] ACPI: Inter'; "+
		"echo 'govmm: vCPU 1: triple fault (the guest took an exception it could not handle) at RIP 0xfff0' >&2; exit 2"),
		CPUs: 1, Token: "x", Dmesg: true, Timeout: time.Minute}
	if _, err := b.Run(context.Background()); !errors.Is(err, ErrTripleFault) || !strings.Contains(err.Error(), "init printed no kernel log") {
		t.Fatalf("a guest that triple-faulted while init printed the log: %v, want ErrTripleFault", err)
	}
	b.Govmm = fakeVMM(t, "echo 'govmm: vCPU 0: emulation failure at RIP 0x1000' >&2; exit 2")
	if _, err := b.Run(context.Background()); err == nil || errors.Is(err, ErrTripleFault) {
		t.Fatalf("another crash: %v, want a plain failure", err)
	}
}

func TestVMMLogKeepsVCPUGoroutines(t *testing.T) {
	stderr := "level=WARN msg=early\nSIGQUIT: quit\nPC=0x4711 m=0 sigcode=0\n\n" +
		"goroutine 1 [running]:\nruntime.gopark()\n\n" +
		"goroutine 7 [syscall]:\nsyscall.Syscall(0x10)\ngovmm/accel/kvm.(*VCPU).Run()\ngovmm/vm.(*VM).runVCPU()\n"
	got := vmmLog(stderr)
	if !strings.Contains(got, "level=WARN msg=early") || !strings.Contains(got, "goroutine 7 [syscall]") ||
		!strings.Contains(got, "govmm/accel/kvm.(*VCPU).Run()") || strings.Contains(got, "goroutine 1 ") {
		t.Errorf("vmmLog kept:\n%s", got)
	}
}
