package e2e

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// entryLine matches vCPU 0's log line just before it first enters the guest.
var entryLine = regexp.MustCompile(`msg="entering the guest" since_main_ms=([0-9.]+) restored=(true|false)`)

// entryTime returns since_main_ms and restored from output, failing the
// test unless exactly one entry line is there.
func entryTime(t *testing.T, out string) (float64, bool) {
	t.Helper()
	m := entryLine.FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		t.Fatalf("want one \"entering the guest\" line with since_main_ms, got %d:\n%s", len(m), out)
	}
	v, err := strconv.ParseFloat(m[0][1], 64)
	if err != nil || v <= 0 {
		t.Fatalf("since_main_ms=%s: want a positive number of milliseconds", m[0][1])
	}
	return v, m[0][2] == "true"
}

// TestEntryTiming: at --log-level info, a booted and a restored VM each log
// the time from main to the guest's first instruction (what
// bench/snapbench reads); at the default level they log nothing.
func TestEntryTiming(t *testing.T) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			boot := append(append([]string{"run"}, acc...), "--kernel", guestPath(t, "testguest"), "--cmdline", "test=exit code=0")
			r := govmm(t, boot...)
			if r.Code != 1 || strings.Contains(r.Stderr, "entering the guest") {
				t.Fatalf("default log level: want exit 1 and no timing line: %s", r)
			}
			r = govmm(t, append(boot, "--log-level", "info")...)
			if r.Code != 1 {
				t.Fatalf("want exit 1: %s", r)
			}
			if _, restored := entryTime(t, r.Stderr); restored {
				t.Fatalf("a booted VM logged restored=true:\n%s", r.Stderr)
			}

			dir := t.TempDir()
			sock, snap := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "snap")
			s := memwriter(t, acc, sock)
			if r := govmm(t, "snapshot", "--api-socket", sock, "--dir", snap, "--stop"); r.Code != 0 {
				t.Fatalf("snapshot: %s", r)
			}
			if code := s.exit(30 * time.Second); code != 0 {
				t.Fatalf("snapshot --stop: source exit %d:\n%s", code, s.output())
			}
			p := start(t, append(append([]string{"restore"}, acc...), "--snapshot", snap, "--log-level", "info")...)
			p.waitFor("entering the guest", time.Minute)
			if _, restored := entryTime(t, p.output()); !restored {
				t.Fatalf("a restored VM logged restored=false:\n%s", p.output())
			}
			verify(t, p)
		})
	}
}
