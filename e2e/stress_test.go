//go:build stress

// TestStressGuest is behind the stress build tag (go test -tags stress
// -run TestStressGuest ./e2e): a round of 2^20 addresses takes about 3
// minutes on KVM and 11 on mshvsim on the nested substrate (about 5,500
// and 1,600 MMIO exits a second; three times longer while the machine is
// busy), so it is not part of CI. The guest has triple-faulted in two of
// three runs of full length on mshvsim (after 297 s and 359 s) and in one
// of five on KVM (after 50 s), cause not yet found: L1's kvm_exit trace of
// one on mshvsim
// shows the shutdown on the first instruction after an emulated MMIO
// write, with a #PF (error code 0) in delivery, which an instruction that
// touches no memory (add $1,%rdi) can take only on its fetch; the guest's
// page tables never change. The README (Testing, "Fuzzing and the guest
// stress test") has the runs.

package e2e

import (
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/api"
)

var (
	stressSeconds = flag.Int("stress.seconds", 60, "TestStressGuest: how long the stress guest runs at least, per accelerator")
	stressBits    = flag.Int("stress.bits", 20, "TestStressGuest: the stress guest touches 2^N distinct unbacked MMIO addresses (1-20)")
)

// stressRSSGrowth bounds how much the VMM's resident set may grow from
// the first tenth of the stress run to its peak. The bus remembers at most
// 1,024 unclaimed addresses per bus (devices/bus loggedCap), a few tens
// of KiB; the rest of the bound is room for the Go runtime's heap and
// stacks settling. Before that cap, 2 million distinct MMIO reads grew the
// heap by 71 MiB (issue 16), so the guest's 2^20 addresses on KVM would
// have grown it by about 35 MiB, well past the bound (a run with stress.bits
// below 18 cannot tell the two apart).
const stressRSSGrowth = 8 << 20

// TestStressGuest runs the stress guest (guests/stress): port I/O at
// random ports and MMIO at 2^N distinct addresses no device backs
// (-stress.bits, 20 by default: 1,048,576 addresses), for -stress.seconds
// and at least one full round of the addresses, on each accelerator. Meanwhile the test asks the control
// socket for the VM's info again and again, and samples the VMM's resident
// set from /proc/PID/status. The control socket must answer in every tenth
// of the run, the guest must read all ones from every unbacked address and
// end cleanly, and the resident set must not grow from the first tenth of
// the run to its peak by more than stressRSSGrowth. The log has the
// figures: accesses, distinct addresses, the resident set at the start,
// at each tenth of the run, its peak and its end, and the control socket's
// answers.
func TestStressGuest(t *testing.T) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { stressGuest(t, acc, *stressBits) })
	}
}

// rssSample is the VMM's resident set at one moment of the run.
type rssSample struct {
	at  time.Duration // since the guest started hammering
	rss uint64        // bytes
}

func stressGuest(t *testing.T, acc []string, bits int) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmdline := fmt.Sprintf("stress.seconds=%d stress.rounds=1 stress.bits=%d", *stressSeconds, bits)
	p := start(t, append(append([]string{"run", "--memory=64M"}, acc...),
		"--kernel", guestPath(t, "stress"), "--cmdline", cmdline, "--api-socket", sock)...)
	p.waitFor("stress: start", time.Minute)
	begin := time.Now()
	c, err := api.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}

	// The poller asks for the VM's info in a loop; each answer must come
	// (a call that never returns shows up as the test's own timeout,
	// with the VMM's goroutines dumped by exit's SIGQUIT).
	var (
		mu          sync.Mutex
		answeredAt  []time.Duration // since begin, one per answer
		slowest     time.Duration
		unclaimed   uint64
		callErr     error
		samples     []rssSample
		stop        = make(chan struct{})
		pollerDone  = make(chan struct{})
		samplerDone = make(chan struct{})
	)
	go func() {
		defer close(pollerDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			t0 := time.Now()
			info, err := c.Info()
			d := time.Since(t0)
			mu.Lock()
			if err != nil {
				// A call that fails once the guest has said it is done
				// met a VMM on its way out (it removes its socket before
				// the process is seen to exit): not a failure to serve.
				ended := strings.Contains(p.output(), "stress: done")
				select {
				case <-p.done: // the VM ended: the socket went with it
				default:
					if callErr == nil && !ended {
						callErr = err
					}
				}
				mu.Unlock()
				continue
			}
			answeredAt = append(answeredAt, time.Since(begin))
			slowest = max(slowest, d)
			var n uint64
			for _, e := range info.Exits {
				if strings.Contains(e.Device, "unclaimed") {
					n += e.Reads + e.Writes
				}
			}
			unclaimed = max(unclaimed, n)
			mu.Unlock()
		}
	}()
	go func() {
		defer close(samplerDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			rss, err := procRSS(p.cmd.Process.Pid)
			if err != nil {
				continue // the VMM has exited
			}
			mu.Lock()
			samples = append(samples, rssSample{time.Since(begin), rss})
			mu.Unlock()
		}
	}()

	p.waitFor("stress: done", time.Duration(*stressSeconds)*time.Second+30*time.Minute)
	guestEnd := time.Since(begin)
	code := p.exit(time.Minute)
	close(stop)
	<-pollerDone
	<-samplerDone
	out := p.output()
	if code != 33 {
		t.Fatalf("the stress guest: exit %d, want 33 (STRESS_OK)\n%s", code, lastLines(out, 40))
	}
	done := fields(t, out, "stress", "done ")
	if want := strconv.Itoa(1 << bits); done["distinct"] != want || done["bad"] != "0" {
		t.Fatalf("the stress guest touched %s distinct addresses with %s wrong reads, want %s and 0:\n%s", done["distinct"], done["bad"], want, lastLines(out, 40))
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("stress guest: %s s by its PM timer (%v by the test's clock), %s MMIO accesses (%s distinct addresses, %s rounds), %s port accesses (%d writes to legacy ports); unclaimed accesses counted by info: %d",
		done["seconds"], guestEnd.Round(time.Second), done["mmio"], done["distinct"], done["rounds"], done["pio"],
		strings.Count(out, "stress: out #"), unclaimed)
	// The run in tenths: the control socket's answers and the resident set in each.
	tenth := guestEnd / 10
	var perTenth [10]int
	for _, at := range answeredAt {
		if i := int(at / max(tenth, 1)); i < 10 {
			perTenth[i]++
		}
	}
	t.Logf("control socket: %d info answers, the slowest in %v; answers in each tenth of the run: %v",
		len(answeredAt), slowest.Round(time.Millisecond), perTenth)
	if callErr != nil {
		t.Fatalf("the control socket failed while the guest hammered the VMM: %v", callErr)
	}
	for i, n := range perTenth {
		if n == 0 {
			t.Fatalf("the control socket answered nothing in tenth %d of the run (%v-%v): answers per tenth %v",
				i+1, (time.Duration(i) * tenth).Round(time.Second), (time.Duration(i+1) * tenth).Round(time.Second), perTenth)
		}
	}
	if unclaimed == 0 {
		t.Fatal("info counted no unclaimed accesses: the guest's accesses did not reach the VMM's bus")
	}
	if len(samples) < 10 {
		t.Fatalf("only %d RSS samples over the run: too few to compare its start and end", len(samples))
	}
	first, last := samples[0], samples[len(samples)-1]
	early := first // the last sample in the first tenth
	var byTenth []string
	nextTenth := tenth
	for _, s := range samples {
		if s.at <= tenth {
			early = s
		}
		if s.at >= nextTenth && len(byTenth) < 9 {
			byTenth = append(byTenth, fmt.Sprintf("%.1f", mb(s.rss)))
			nextTenth += tenth
		}
	}
	peak := early
	for _, s := range samples {
		if s.at >= early.at && s.rss > peak.rss {
			peak = s
		}
	}
	t.Logf("VMM RSS (MiB): start %.1f (%v), at 10%% %.1f (%v), peak %.1f (%v), end %.1f (%v); at 10%%, 20%%, ... 90%% of the run: %s; %d samples",
		mb(first.rss), first.at.Round(time.Second), mb(early.rss), early.at.Round(time.Second),
		mb(peak.rss), peak.at.Round(time.Second), mb(last.rss), last.at.Round(time.Second),
		strings.Join(byTenth, " "), len(samples))
	if peak.rss > early.rss+stressRSSGrowth {
		t.Fatalf("the VMM's RSS grew from %.1f MiB at 10%% of the run to %.1f MiB, more than the %d MiB the bus's bounded state allows",
			mb(early.rss), mb(peak.rss), stressRSSGrowth>>20)
	}
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }
