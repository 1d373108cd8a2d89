package nested

import (
	"bytes"
	"fmt"
	"os"
	"time"
)

// L1's init prints a heartbeat to its console while the command runs, and
// the host reads the console as it grows. Two deaths are seen there long
// before the command's own output falls silent for IdleTimeout:
//
//   - L1's kernel panicked but did not power off (panic=-1 asks for a
//     reboot, and -no-reboot turns that into QEMU's exit; a panic inside
//     the scheduler, "corrupted stack end detected", hung there instead:
//     a CI run of 2026-12-06 lost 9 of its 90 minutes to one).
//   - L1 froze: no heartbeat for heartbeatLimit (counted from QEMU's
//     start until the first, which comes seconds after L1's boot). A
//     shell loop that sleeps and prints is the least L1's scheduler must
//     still do.
const (
	heartbeatMark     = "nested-heartbeat"
	heartbeatInterval = 10 * time.Second
	// heartbeatLimit is long against heartbeatInterval: L1 under a full
	// load of TCG-emulated vCPUs still runs a sleeping shell within
	// seconds, and a false alarm costs a fresh L1 and a rerun.
	heartbeatLimit = 3 * time.Minute
	// panicGrace lets a panicking kernel finish its report (and power off
	// on its own, which is the usual case) before L1 is killed.
	panicGrace = 30 * time.Second
	watchPoll  = 2 * time.Second
)

// heartbeatScript starts the heartbeat loop in L1's init.
func heartbeatScript() string {
	return fmt.Sprintf("(while :; do echo \"%s $(cut -d' ' -f1 /proc/uptime)\" >/dev/console; sleep %d; done) &\n",
		heartbeatMark, int(heartbeatInterval/time.Second))
}

// consoleWatch reads L1's console as it grows and says when L1 is dead
// though QEMU still runs.
type consoleWatch struct {
	path     string
	off      int64
	partial  []byte    // the unfinished last line read
	beat     time.Time // the last heartbeat seen, or when the watch began
	panicked time.Time // when a kernel panic was first seen (zero: none)
}

// check reads what the console gained since the last call and returns a
// reason to kill L1, or "" while it lives. now is the caller's clock.
func (w *consoleWatch) check(now time.Time) string {
	if f, err := os.Open(w.path); err == nil {
		buf := make([]byte, 64<<10)
		for {
			n, _ := f.ReadAt(buf, w.off)
			if n == 0 {
				break
			}
			w.off += int64(n)
			w.scan(buf[:n], now)
		}
		f.Close()
	}
	switch {
	case !w.panicked.IsZero() && now.Sub(w.panicked) >= panicGrace:
		return fmt.Sprintf("L1's kernel panicked and did not power off within %v (killed)", panicGrace)
	case now.Sub(w.beat) >= heartbeatLimit:
		return fmt.Sprintf("L1 froze: no heartbeat from its init for %v, one is due every %v (killed)", heartbeatLimit, heartbeatInterval)
	}
	return ""
}

func (w *consoleWatch) scan(b []byte, now time.Time) {
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		switch {
		case bytes.Contains(line, []byte(heartbeatMark)):
			w.beat = now
		case bytes.Contains(line, []byte("Kernel panic")) && w.panicked.IsZero():
			w.panicked = now
		}
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 4096 {
		w.partial = w.partial[len(w.partial)-4096:] // a line this long is no mark
	}
}
