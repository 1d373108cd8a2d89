package hangreport

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	// comm may hold spaces and parentheses; the fields after it count
	// from the last ')'.
	line := "4242 (vcpu0 (x) y) R 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0 100\n"
	comm, state, ticks := parseStat(line)
	if comm != "vcpu0 (x) y" || state != "R" || ticks != 175 {
		t.Errorf("parseStat = %q, %q, %d; want \"vcpu0 (x) y\", \"R\", 175", comm, state, ticks)
	}
	if c, s, n := parseStat("garbage"); c != "" || s != "" || n != 0 {
		t.Errorf("parseStat(garbage) = %q, %q, %d", c, s, n)
	}
}

const sampleTrace = `# tracer: nop
#
           vcpu0-1199    [000] .....   112.100000: kvm_entry: vcpu 0, rip 0x100190
           vcpu0-1199    [000] .....   112.100010: kvm_exit: vcpu 0 reason npf rip 0x100190 info1 0x0000000000000004 info2 0x00000000feb00000 intr_info 0x00000000 error_code 0x00000000
           vcpu0-1199    [000] .....   112.100020: kvm_page_fault: vcpu 0 rip 0x100190 address 0xfeb00000 error_code 0x4
           vcpu0-1199    [000] .....   112.100030: kvm_entry: vcpu 0, rip 0x100190
           vcpu0-1199    [000] .....   112.100040: kvm_exit: vcpu 0 reason npf rip 0x100190 info1 0x0000000000000004 info2 0x00000000feb00000 intr_info 0x00000000 error_code 0x00000000
           vcpu0-1199    [000] .....   112.100050: kvm_exit: vcpu 0 reason intr rip 0x100190 info1 0x0 info2 0x0 intr_info 0x00000000 error_code 0x00000000
`

func TestSummarizeTrace(t *testing.T) {
	got := summarizeTrace(sampleTrace)
	for _, want := range []string{
		"6 events: kvm_entry 2, kvm_exit npf 2, kvm_exit intr 1, kvm_page_fault 1\n",
		"kvm_entry: vcpu 0, rip 0x100190",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if got := summarizeTrace("# tracer: nop\n#\n"); !strings.Contains(got, "no events") {
		t.Errorf("empty trace summarized as %q", got)
	}
	// A long trace keeps its ends and says how much it left out.
	var long strings.Builder
	for range 100 {
		long.WriteString("           vcpu0-1199    [000] .....   112.100000: kvm_entry: vcpu 0, rip 0x100190\n")
	}
	long.WriteString("           vcpu0-1199    [000] .....   112.200000: kvm_exit: vcpu 0 reason hlt rip 0x100200 info1 0x0\n")
	got = summarizeTrace(long.String())
	if !strings.Contains(got, "... 61 events ...") || !strings.HasSuffix(got, "reason hlt rip 0x100200 info1 0x0\n") {
		t.Errorf("long trace summarized as:\n%s", got)
	}
}

// spinnerEnv makes the test binary a child with a busy thread named
// vcpu0 and an idle one named vcpu1, for TestReport.
const spinnerEnv = "HANGREPORT_SPINNER"

func TestMain(m *testing.M) {
	if os.Getenv(spinnerEnv) == "1" {
		spin()
	}
	os.Exit(m.Run())
}

func spin() {
	var named sync.WaitGroup
	named.Add(2)
	name := func(n string) {
		runtime.LockOSThread()
		os.WriteFile(fmt.Sprintf("/proc/self/task/%d/comm", unix.Gettid()), []byte(n), 0)
		named.Done()
	}
	go func() {
		name("vcpu0")
		for {
		}
	}()
	go func() {
		name("vcpu1")
		for {
			time.Sleep(time.Hour)
		}
	}()
	named.Wait()
	os.Stdout.WriteString("ready\n")
	time.Sleep(time.Minute)
	os.Exit(0)
}

// TestReport watches a child with a spinning vCPU-named thread: the
// report names both vCPU threads, finds CPU time on the spinning one and
// none on the idle one, and kicks them with a signal the child ignores.
// Where tracefs has no KVM events (this host), it says why there is no
// trace instead of failing.
func TestReport(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), spinnerEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("child: %q, %v", buf, err)
	}
	rep := Report(cmd.Process.Pid)
	t.Log(rep)
	busy := regexp.MustCompile(`thread \d+ vcpu0: state R, wchan \S+, cpu (\S+) of`)
	if m := busy.FindStringSubmatch(rep); m == nil || parseDuration(m[1]) < 100*time.Millisecond {
		t.Errorf("report does not show vcpu0 running with CPU time:\n%s", rep)
	}
	if !regexp.MustCompile(`thread \d+ vcpu1: state S, wchan \S+, cpu 0s`).MatchString(rep) {
		t.Errorf("report does not show vcpu1 asleep with no CPU time:\n%s", rep)
	}
	if !regexp.MustCompile(`vCPU threads \[\d+ \d+\]`).MatchString(rep) || !strings.Contains(rep, "kicked with signal 23") {
		t.Errorf("report does not name and kick the two vCPU threads:\n%s", rep)
	}
	if !strings.Contains(rep, "kvm trace") {
		t.Errorf("report says nothing of the trace:\n%s", rep)
	}
	if cmd.ProcessState != nil {
		t.Errorf("the kick ended the child: %v", cmd.ProcessState)
	}
}

func parseDuration(s string) time.Duration {
	d, _ := time.ParseDuration(s)
	return d
}

func TestEntries(t *testing.T) {
	host := []codeRange{{"module kvm_amd", 0xffffffffc0680000, 0xffffffffc0680000 + 155648}, {"text", 0xffffffff81000000, 0xffffffff82000000}}
	loop := strings.Repeat("           vcpu0-803     [001] d..1.   423.613610: kvm_entry: vcpu 0, rip 0xffffffffc0688dcc\n", 3)
	if got, want := entries(loop, host), "vCPU 0 (thread 803): 3 guest entries, all at RIP 0xffffffffc0688dcc; RIP 0xffffffffc0688dcc lies inside this kernel's module kvm_amd (+0x8dcc)\n"; got != want {
		t.Errorf("entries in a loop:\n got %q\nwant %q", got, want)
	}
	got := entries(sampleTrace, host)
	if want := "vCPU 0 (thread 1199): 2 guest entries, all at RIP 0x100190\n"; got != want {
		t.Errorf("entries of a guest's own code:\n got %q\nwant %q", got, want)
	}
	arm := "           vcpu1-612     [000] d..1.    88.100000: kvm_entry: PC: 0x0000000040000004\n"
	if got, want := entries(arm+arm, nil), "vCPU thread 612 (vcpu1): 2 guest entries, all at RIP 0x40000004\n"; got != want {
		t.Errorf("arm64 entries:\n got %q\nwant %q", got, want)
	}
	var many strings.Builder
	for i := range 10 {
		fmt.Fprintf(&many, "  vcpu1-900 [000] d..1. 1.0%d: kvm_entry: vcpu 1, rip %#x\n", i, 0x1000+i)
	}
	if got := entries(many.String(), nil); !strings.Contains(got, "10 guest entries, at RIPs 0x1000 0x1001") || !strings.HasSuffix(got, "0x1007 ...\n") {
		t.Errorf("entries at many RIPs: %q", got)
	}
}

// TestHostCode reads module and kernel-text ranges from a fake /proc.
func TestHostCode(t *testing.T) {
	dir := t.TempDir()
	old := procDir
	procDir = dir
	t.Cleanup(func() { procDir = old })
	os.WriteFile(dir+"/modules", []byte("kvm_amd 155648 0 - Live 0xffffffffc0680000\nkvm 1146880 1 kvm_amd, Live 0xffffffffc0500000\nhidden 4096 0 - Live 0x0000000000000000\n"), 0o644)
	os.WriteFile(dir+"/kallsyms", []byte("ffffffff81000000 T _stext\nffffffff81000010 T foo\nffffffff82000000 T _etext\n"), 0o644)
	got := hostCode()
	want := []codeRange{
		{"module kvm_amd", 0xffffffffc0680000, 0xffffffffc0680000 + 155648},
		{"module kvm", 0xffffffffc0500000, 0xffffffffc0500000 + 1146880},
		{"text", 0xffffffff81000000, 0xffffffff82000000},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("hostCode = %v, want %v", got, want)
	}
}
