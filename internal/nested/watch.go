package nested

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"
)

// L1's init prints a heartbeat to its console while the command runs, and
// the host reads the console as it grows. Three deaths are seen there long
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
//   - L1's kernel reports a task blocked for 120 s ("INFO: task
//     khugepaged:36 blocked for more than 120 seconds") while the command
//     has printed nothing for hungIdle: a deadlock in L1's kernel, which
//     the command does not come back from (a CI run of 2026-12-06 waited
//     the full IdleTimeout on one, the heartbeat going on).
//
// The heartbeat loop also watches the command's output device. When the
// command has written nothing there for stallDumps' times, it prints the
// kernel stacks of govmm's threads and of every task in D state, lines
// marked stallMark, for the report of the death that usually follows.
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
	// hungIdle is past the first stall dump, so that the report has it.
	hungIdle  = 5 * time.Minute
	watchPoll = 2 * time.Second
	stallMark = "nested-stall"
)

// stallDumps are the output silences (in L1's seconds) after which the
// heartbeat loop dumps the stacks: once before hungIdle, and once again
// before a 10-minute IdleTimeout, to tell a stuck task from a slow one.
var stallDumps = []int{240, 540}

// heartbeatScript starts the heartbeat loop in L1's init. out is the
// command's output device: a write to a tty updates its inode's mtime (to
// 8 s), which is how the loop sees the command's silence.
func heartbeatScript(out string) string {
	return fmt.Sprintf(`nested_stall() {
	{
	echo "%[1]s: the command printed nothing for $1 s; load $(cut -d' ' -f1-3 /proc/loadavg), $(grep MemAvailable /proc/meminfo | tr -s ' '); kernel stacks of govmm's threads and of tasks in D state:"
	for t in /proc/[0-9]*/task/[0-9]*; do
		p=${t%%/task/*}
		st=$(sed -n 's/^State:[[:space:]]*//p' $t/status 2>/dev/null)
		case "$st" in D*) ;; *) [ "$(cat $p/comm 2>/dev/null)" = govmm ] || continue;; esac
		echo "%[1]s ${p#/proc/}/${t##*/} $(cat $t/comm 2>/dev/null) $st wchan=$(cat $t/wchan 2>/dev/null)"
		sed 's/^/%[1]s   /' $t/stack 2>/dev/null
	done
	echo "%[1]s: end"
	} >/dev/console 2>&1
}
(last=0
while :; do
	echo "%[2]s $(cut -d' ' -f1 /proc/uptime)" >/dev/console
	now=$(date +%%s)
	idle=$((now - $(stat -c %%Y %[3]s 2>/dev/null || echo $now)))
	for s in %[4]s; do
		[ $idle -ge $s ] && [ $last -lt $s ] && nested_stall $idle
	done
	last=$idle
	sleep %[5]d
done) &
`, stallMark, heartbeatMark, out, strings.Trim(fmt.Sprint(stallDumps), "[]"), int(heartbeatInterval/time.Second))
}

// consoleWatch reads L1's console as it grows and says when L1 is dead
// though QEMU still runs.
type consoleWatch struct {
	path     string
	off      int64
	partial  []byte    // the unfinished last line read
	beat     time.Time // the last heartbeat seen, or when the watch began
	panicked time.Time // when a kernel panic was first seen (zero: none)
	hung     string    // the first hung-task report seen ("": none)
}

// check reads what the console gained since the last call and returns a
// reason to kill L1, or "" while it lives. now is the caller's clock, and
// output when the command last printed a line (or L1 started).
func (w *consoleWatch) check(now, output time.Time) string {
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
	case w.hung != "" && now.Sub(output) >= hungIdle:
		return fmt.Sprintf("L1's kernel reports a hung task (%q) and the command printed nothing for %v (killed)", w.hung, hungIdle)
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
		case bytes.Contains(line, []byte("blocked for more than")) && w.hung == "":
			w.hung = strings.TrimSpace(string(line))
		}
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 4096 {
		w.partial = w.partial[len(w.partial)-4096:] // a line this long is no mark
	}
}
