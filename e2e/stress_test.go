//go:build stress

// TestStressGuest is behind the stress build tag (go test -tags stress
// -run TestStressGuest ./e2e): it takes minutes, and on the nested
// substrate it has not yet passed: one run on KVM hammered for 209 s to
// its end but failed on a socket call made as the VMM exited (a test bug,
// fixed since), and the stress guest triple-faulted after 50 s on KVM and
// after 297 s on mshvsim in the others, cause not yet found. It is not
// part of CI.

package e2e

import (
	"bufio"
	"flag"
	"fmt"
	"os"
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
// the first tenth of the stress run to its end. The bus remembers at most
// 1,024 unclaimed addresses per bus (devices/bus loggedCap), a few tens
// of KiB; the rest of the bound is room for the Go runtime's heap and
// stacks settling. Before that cap, 2 million distinct MMIO reads grew the
// heap by 71 MiB (issue 16), so the guest's million addresses would have
// grown it by about 35 MiB.
const stressRSSGrowth = 8 << 20

// TestStressGuest runs the stress guest (guests/stress): port I/O at
// random ports and MMIO at 2^20 distinct addresses no device backs
// (-stress.bits; on nested KVM a round of 2^20 takes many minutes), for
// -stress.seconds and at least one full round of the addresses, on each
// accelerator. Meanwhile the test asks the control socket for the VM's
// info again and again, and samples the VMM's resident set from
// /proc/PID/status. The control socket must answer every request, the
// guest must read all ones from every unbacked address and end cleanly,
// and the resident set at the end must not have grown from the first
// tenth of the run by more than stressRSSGrowth.
func TestStressGuest(t *testing.T) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { stressGuest(t, acc) })
	}
}

// rssSample is the VMM's resident set at one moment of the run.
type rssSample struct {
	at  time.Duration // since the guest started hammering
	rss uint64        // bytes
}

func stressGuest(t *testing.T, acc []string) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmdline := fmt.Sprintf("stress.seconds=%d stress.rounds=1 stress.bits=%d", *stressSeconds, *stressBits)
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
		answers     int
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
			answers++
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
			rss, err := vmRSS(p.cmd.Process.Pid)
			if err != nil {
				continue // the VMM has exited
			}
			mu.Lock()
			samples = append(samples, rssSample{time.Since(begin), rss})
			mu.Unlock()
		}
	}()

	p.waitFor("stress: done", time.Duration(*stressSeconds)*time.Second+30*time.Minute)
	code := p.exit(time.Minute)
	close(stop)
	<-pollerDone
	<-samplerDone
	out := p.output()
	if code != 33 {
		t.Fatalf("the stress guest: exit %d, want 33 (STRESS_OK)\n%s", code, lastLines(out, 30))
	}
	done := fields(t, out, "stress", "done ")
	if want := strconv.Itoa(1 << *stressBits); done["distinct"] != want || done["bad"] != "0" {
		t.Fatalf("the stress guest touched %s distinct addresses with %s wrong reads, want %s and 0:\n%s", done["distinct"], done["bad"], want, lastLines(out, 30))
	}
	mu.Lock()
	defer mu.Unlock()
	if callErr != nil {
		t.Fatalf("the control socket failed while the guest hammered the VMM: %v", callErr)
	}
	if answers == 0 {
		t.Fatal("the control socket answered no request during the run")
	}
	if unclaimed == 0 {
		t.Fatal("info counted no unclaimed accesses: the guest's accesses did not reach the VMM's bus")
	}
	if len(samples) < 10 {
		t.Fatalf("only %d RSS samples over the run: too few to compare its start and end", len(samples))
	}
	last := samples[len(samples)-1]
	early := samples[0]
	for _, s := range samples {
		if s.at > last.at/10 {
			break
		}
		early = s
	}
	peak := early
	for _, s := range samples {
		if s.at >= early.at && s.rss > peak.rss {
			peak = s
		}
	}
	t.Logf("stress guest: %s s, %s MMIO accesses (%s distinct addresses, %s rounds), %s port accesses; bus-unclaimed exits seen by info: %d",
		done["seconds"], done["mmio"], done["distinct"], done["rounds"], done["pio"], unclaimed)
	t.Logf("control socket: %d info answers, the slowest in %v", answers, slowest.Round(time.Millisecond))
	t.Logf("VMM RSS: %.1f MiB at %v (10%% of the run), %.1f MiB at the end (%v), peak %.1f MiB at %v; %d samples",
		mb(early.rss), early.at.Round(time.Second), mb(last.rss), last.at.Round(time.Second), mb(peak.rss), peak.at.Round(time.Second), len(samples))
	if peak.rss > early.rss+stressRSSGrowth {
		t.Fatalf("the VMM's RSS grew from %.1f MiB at 10%% of the run to %.1f MiB, more than the %d MiB the bus's bounded state allows",
			mb(early.rss), mb(peak.rss), stressRSSGrowth>>20)
	}
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

// vmRSS reads VmRSS from /proc/PID/status, in bytes.
func vmRSS(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS (the process has exited?)", pid)
}
