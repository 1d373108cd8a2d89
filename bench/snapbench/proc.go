package main

// Child processes whose output lines are timestamped as they arrive.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

type line struct {
	t time.Time
	s string
}

// proc is a child process whose output lines are kept with the time each
// arrived.
type proc struct {
	argv  []string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	start time.Time
	mu    sync.Mutex
	lines []line
	done  chan struct{}
	err   error
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

func spawn(argv []string) (*proc, error) {
	p := &proc{argv: argv, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errp, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	var wg sync.WaitGroup
	for _, r := range []io.Reader{out, errp} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				now := time.Now()
				p.mu.Lock()
				p.lines = append(p.lines, line{now, sc.Text()})
				p.mu.Unlock()
			}
		}()
	}
	go func() {
		wg.Wait()
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		b.WriteString(l.s + "\n")
	}
	return b.String()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine waits for the first output line containing s.
func (p *proc) waitLine(s string, d time.Duration) (line, error) {
	deadline := time.Now().Add(d)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.Contains(l.s, s) {
				p.mu.Unlock()
				return l, nil
			}
		}
		p.mu.Unlock()
		if p.exited() {
			return line{}, fmt.Errorf("%s exited (%v) before printing %q:\n%s", p.name(), p.err, s, p.output())
		}
		if time.Now().After(deadline) {
			return line{}, fmt.Errorf("%s: no %q within %v:\n%s", p.name(), s, d, p.output())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (p *proc) name() string { return filepath.Base(p.argv[0]) + " " + p.argv[1] }

// wait waits for the process to end and returns its exit status.
func (p *proc) wait(d time.Duration) (int, error) {
	select {
	case <-p.done:
	case <-time.After(d):
		return 0, fmt.Errorf("%s did not end within %v:\n%s", p.name(), d, p.output())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, p.err
}

func (p *proc) kill() {
	if !p.exited() {
		p.cmd.Process.Kill()
		<-p.done
	}
}

func killAll() {
	procsMu.Lock()
	defer procsMu.Unlock()
	for _, p := range procs {
		p.kill()
	}
}

func waitPath(p *proc, path string) error {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before creating %s:\n%s", p.name(), p.err, path, p.output())
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("%s: %s never appeared:\n%s", p.name(), path, p.output())
}

// waitIdle waits until the process uses under ~15% of a CPU for two
// samples in a row (an idle guest has finished booting).
func waitIdle(p *proc, d time.Duration) error {
	deadline := time.Now().Add(d)
	last, quiet := cpuTicks(p.cmd.Process.Pid), 0
	for time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		if p.exited() {
			return fmt.Errorf("%s exited (%v) while booting:\n%s", p.name(), p.err, p.output())
		}
		now := cpuTicks(p.cmd.Process.Pid)
		if now-last <= 4 {
			if quiet++; quiet == 2 {
				return nil
			}
		} else {
			quiet = 0
		}
		last = now
	}
	return fmt.Errorf("%s never went idle:\n%s", p.name(), p.output())
}

// cpuTicks is a process's user+system CPU time in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}
