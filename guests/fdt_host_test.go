package guests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/platform/arm64"
)

// The arm64 probe's device-tree reader (arm64probe/fdt.c) built for the
// build host by arm64probe/fdt_host.c, with AddressSanitizer and UBSan:
// these tests feed it govmm's own DTB, and cut and corrupted copies of it,
// and fail on any read outside the input or undefined behaviour.
var (
	fdtHostOnce sync.Once
	fdtHostBin  string
	fdtHostErr  error
)

// TestMain removes the harness's directory after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if fdtHostBin != "" && fdtHostErr == nil {
		os.RemoveAll(filepath.Dir(fdtHostBin))
	}
	os.Exit(code)
}

// fdtHost builds the harness once per test process into a directory of
// its own.
func fdtHost(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatalf("gcc not found (needed to run the arm64 probe's FDT reader on the host): %v", err)
		}
		t.Skipf("gcc not found: %v", err)
	}
	fdtHostOnce.Do(func() {
		dir, err := os.MkdirTemp("", "arm64probe-fdthost")
		if err != nil {
			fdtHostErr = err
			return
		}
		fdtHostBin = filepath.Join(dir, "fdthost")
		args := []string{"-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-builtin",
			"-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-o", fdtHostBin,
			"arm64probe/fdt_host.c", "arm64probe/fdt.c", "arm64probe/lib.c", "lib/string.c"}
		// The probe's own libc-named helpers, renamed away from the host's.
		for _, f := range []string{"memset", "memcpy", "memmove", "memcmp", "strlen", "strcmp", "strncmp", "vsnprintf", "snprintf", "printf"} {
			args = append(args, "-D"+f+"=probe_"+f)
		}
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			fdtHostErr = err
			fdtHostBin = string(out)
		}
	})
	if fdtHostErr != nil {
		t.Fatalf("building the FDT harness: %v\n%s", fdtHostErr, fdtHostBin)
	}
	return fdtHostBin
}

// runFDTHost parses dtb with the probe's reader; a sanitizer report or a
// crash fails the test.
func runFDTHost(t testing.TB, bin string, dtb []byte) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Stdin = bytes.NewReader(dtb)
	cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS=halt_on_error=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil || errb.Len() > 0 {
		t.Fatalf("the probe's FDT reader on a %d-byte input: %v\n%s\ninput: %x", len(dtb), err, errb.String(), dtb)
	}
	if !strings.HasPrefix(out.String(), "ok=") {
		t.Fatalf("harness output %q", out.String())
	}
	return out.String()
}

func govmmDTB(t testing.TB) []byte {
	t.Helper()
	dtb, err := arm64.DeviceTree(arm64.TreeConfig{MemSize: 384 << 20, MPIDRs: []uint64{0, 1, 2, 0x100}, Cmdline: "console=x probe.mode=report probe.mode=tui"})
	if err != nil {
		t.Fatal(err)
	}
	return dtb
}

// TestARM64ProbeFDT checks what the probe takes from govmm's device tree.
func TestARM64ProbeFDT(t *testing.T) {
	bin := fdtHost(t)
	got := runFDTHost(t, bin, govmmDTB(t))
	for _, want := range []string{
		"ok=1\n",
		"model=govmm arm64 virt\n",
		"bootargs=console=x probe.mode=report probe.mode=tui\n",
		"stdout=" + arm64.UARTPath + "\n",
		"mem=0x40000000+0x18000000\n",
		"cpu=0 psci\ncpu=0x1 psci\ncpu=0x2 psci\ncpu=0x100 psci\n",
		"psci=1 arm,psci-1.0,arm,psci-0.2 hvc\n",
		"gic=arm,gic-v3 d=0x8000000+0x10000 r=0x80a0000+0x80000 regions=1 its=1\n",
		"timer=1 13,14,11,10 freq=0\n",
		"uart=1 0x9000000 " + arm64.UARTPath + " spi=1\n",
		"probe.mode=tui\n", // the last occurrence wins
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the probe's reading of govmm's DTB lacks %q:\n%s", want, got)
		}
	}
}

// TestARM64ProbeFDTDamaged feeds the reader every short prefix of govmm's
// DTB, longer ones in steps, and copies with bytes overwritten: it must
// refuse or parse them without reading outside the input.
func TestARM64ProbeFDTDamaged(t *testing.T) {
	bin := fdtHost(t)
	dtb := govmmDTB(t)
	n := 0
	for l := 0; l < len(dtb); l++ {
		if l > 64 && l%97 != 0 {
			continue
		}
		if out := runFDTHost(t, bin, dtb[:l]); !strings.HasPrefix(out, "ok=0") {
			t.Errorf("a %d-byte prefix of a %d-byte DTB parsed: %s", l, len(dtb), out)
		}
		n++
	}
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 150; i++ {
		b := bytes.Clone(dtb)
		for j := 0; j <= i%4; j++ {
			b[r.Intn(len(b))] = byte(r.Intn(256))
		}
		runFDTHost(t, bin, b)
		n++
	}
	t.Logf("%d damaged device trees read without a fault", n)
}

// fdtLoop is one harness in -loop mode per fuzzing process.
type fdtLoop struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr *bytes.Buffer
}

func startFDTLoop(t testing.TB, bin string) *fdtLoop {
	cmd := exec.Command(bin, "-loop")
	cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS=halt_on_error=1")
	l := &fdtLoop{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = l.stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.in, l.out = in, bufio.NewReader(out)
	return l
}

// parse sends one input; false (with the sanitizer's report) when the
// harness died on it.
func (l *fdtLoop) parse(b []byte) (string, bool) {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := l.in.Write(append(n[:], b...)); err != nil {
		return err.Error(), false
	}
	type answer struct {
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		line, err := l.out.ReadString('\n')
		ch <- answer{line, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil || !strings.HasPrefix(a.line, "ok=") {
			l.cmd.Wait()
			return fmt.Sprintf("%v %q\n%s", a.err, a.line, l.stderr.String()), false
		}
		return a.line, true
	case <-time.After(10 * time.Second):
		// The reader must end on every input: a loop is a bug too.
		l.cmd.Process.Kill()
		l.cmd.Wait()
		return "no answer in 10 s: the reader loops on this input", false
	}
}

// FuzzARM64ProbeFDT runs the probe's reader on arbitrary input (go test
// -fuzz FuzzARM64ProbeFDT ./guests): it may refuse, never read outside
// the input nor loop. Inputs go to one long-lived harness.
func FuzzARM64ProbeFDT(f *testing.F) {
	dtb := govmmDTB(f)
	f.Add(dtb)
	f.Add(dtb[:40])
	bin := fdtHost(f)
	var l *fdtLoop
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4<<20 {
			return
		}
		if l == nil {
			l = startFDTLoop(t, bin)
		}
		if msg, ok := l.parse(b); !ok {
			l = nil
			t.Fatalf("the probe's FDT reader on a %d-byte input: %s\ninput: %x", len(b), msg, b)
		}
	})
}
