package nested

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConsoleWatch drives the watch over a console file that grows, on a
// clock of the test's own.
func TestConsoleWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	w := &consoleWatch{path: path, beat: t0}

	// Booting, no heartbeat yet: alive until heartbeatLimit from the start.
	f.WriteString("[    0.000000] Linux version 6.1\n")
	if why := w.check(at(heartbeatLimit - time.Second)); why != "" {
		t.Fatalf("before the limit: %q", why)
	}
	// A heartbeat split over two reads still counts, when its line ends.
	f.WriteString(heartbeatMark + " 12.")
	if why := w.check(at(heartbeatLimit - time.Second)); why != "" {
		t.Fatalf("half a heartbeat: %q", why)
	}
	f.WriteString("5\n")
	if why := w.check(at(heartbeatLimit)); why != "" {
		t.Fatalf("right after a heartbeat: %q", why)
	}
	// Kernel lines are no heartbeat: silence from init for the limit is a
	// freeze.
	f.WriteString("[   60.0] SVM: kvm [615]: vcpu0, Unhandled WRMSR(0x1d9)\n")
	if why := w.check(at(2*heartbeatLimit - time.Second)); why != "" {
		t.Fatalf("within the limit of the last heartbeat: %q", why)
	}
	if why := w.check(at(2 * heartbeatLimit)); !strings.Contains(why, "froze") {
		t.Fatalf("no heartbeat for the limit: %q, want a freeze", why)
	}

	// A panic: L1 gets panicGrace to power off, then is killed, heartbeats
	// or not.
	w = &consoleWatch{path: path, beat: t0}
	f.WriteString("[ 1188.706696] Kernel panic - not syncing: corrupted stack end detected inside scheduler\n")
	if why := w.check(at(time.Second)); why != "" {
		t.Fatalf("at the panic: %q", why)
	}
	f.WriteString(heartbeatMark + " 1190.0\n")
	if why := w.check(at(time.Second + panicGrace)); !strings.Contains(why, "panicked") {
		t.Fatalf("%v after a panic: %q, want a panic", panicGrace, why)
	}
}

// TestHeartbeatScript: the line init runs prints the mark the watch looks
// for, in the background.
func TestHeartbeatScript(t *testing.T) {
	s := heartbeatScript()
	if !strings.Contains(s, heartbeatMark) || !strings.HasSuffix(s, "&\n") || !strings.Contains(s, ">/dev/console") {
		t.Fatalf("heartbeat script %q", s)
	}
}
