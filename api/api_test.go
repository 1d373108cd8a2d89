package api

import (
	"bufio"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTarget is a control target that records the calls that change its
// state. The server calls it from a goroutine per connection, so it locks
// as the VM does.
type fakeTarget struct {
	mu     sync.Mutex
	paused bool
	calls  []string
}

func (f *fakeTarget) Info() Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := "running"
	if f.paused {
		st = "paused"
	}
	return Info{State: st, CPUs: 2}
}

func (f *fakeTarget) Pause() error { return f.set(true, "pause") }

func (f *fakeTarget) Resume() error { return f.set(false, "resume") }

func (f *fakeTarget) set(paused bool, call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = paused
	f.calls = append(f.calls, call)
	return nil
}

// state is what the target's calls left.
func (f *fakeTarget) state() (paused bool, calls []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused, append([]string(nil), f.calls...)
}
func (f *fakeTarget) Snapshot(r SnapshotRequest, p func(done, total uint64)) (SnapshotResult, error) {
	for i := uint64(0); i <= 4; i++ {
		p(i, 4)
	}
	return SnapshotResult{Dir: r.Dir, MemoryBytes: 42}, nil
}
func (f *fakeTarget) Migrate(r MigrateRequest, p func(done, total uint64)) (MigrateResult, error) {
	return MigrateResult{}, errors.New("destination refused\nsecond line")
}

func TestRoundTrip(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	ft := &fakeTarget{}
	srv, err := Listen(sock, ft)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := Listen(sock, ft); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second server on a live socket: %v", err)
	}
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if i, err := c.Info(); err != nil || i.State != "paused" || i.CPUs != 2 {
		t.Fatalf("info %+v %v", i, err)
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	res, err := c.Snapshot(SnapshotRequest{Dir: "/x"}, func(done, total uint64) { last = done })
	if err != nil || res.Dir != "/x" || res.MemoryBytes != 42 || last != 4 {
		t.Fatalf("snapshot %+v %v (last progress %d)", res, err, last)
	}
	if _, err := c.Snapshot(SnapshotRequest{}, nil); err == nil || !strings.Contains(err.Error(), "dir is required") {
		t.Fatalf("snapshot without dir: %v", err)
	}
	if _, err := c.Migrate(MigrateRequest{To: "unix:/y"}, nil); err == nil || err.Error() != "destination refused second line" {
		t.Fatalf("migrate error: %v", err)
	}
	if err := c.call(request{Op: "reboot"}, nil, nil); err == nil || !strings.Contains(err.Error(), "unknown operation") {
		t.Fatalf("unknown op: %v", err)
	}
	if _, calls := ft.state(); strings.Join(calls, ",") != "pause,resume" {
		t.Fatalf("calls %q", calls)
	}
}

func TestDialMissing(t *testing.T) {
	if _, err := Dial(filepath.Join(t.TempDir(), "none.sock")); err == nil || !strings.Contains(err.Error(), "--api-socket") {
		t.Fatalf("dial missing socket: %v", err)
	}
}

// FuzzServe feeds arbitrary request bytes to the control socket's server:
// it answers with exactly one result or error line and never panics.
func FuzzServe(f *testing.F) {
	f.Add([]byte(`{"op":"info"}` + "\n"))
	f.Add([]byte(`{"op":"snapshot","snapshot":{"dir":"/x","stop":true}}` + "\n"))
	f.Add([]byte(`{"op":"migrate","migrate":{}}`))
	f.Add([]byte("\x00\xff{"))
	f.Fuzz(func(t *testing.T, req []byte) {
		s := &Server{t: &fakeTarget{}}
		c1, c2 := net.Pipe()
		go func() {
			c1.Write(req)
			c1.Write([]byte("\n"))
		}()
		done := make(chan []byte)
		go func() {
			b, _ := io.ReadAll(c1)
			done <- b
		}()
		s.serve(c2)
		out := <-done
		lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, "result ") && !strings.HasPrefix(last, "error ") {
			t.Fatalf("request %q: last answer line %q", req, last)
		}
	})
}

// A peer whose user is neither the VM's owner nor root is refused before
// its request is read.
func TestForeignPeerRefused(t *testing.T) {
	defer func(f func(uint32) bool) { peerAllowed = f }(peerAllowed)
	peerAllowed = func(uint32) bool { return false }
	sock := filepath.Join(t.TempDir(), "vm.sock")
	ft := &fakeTarget{}
	srv, err := Listen(sock, ft)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, _ := Dial(sock)
	if err := c.Pause(); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("foreign peer's pause: %v", err)
	}
	if paused, calls := ft.state(); len(calls) != 0 || paused {
		t.Fatalf("foreign peer reached the target: %v", calls)
	}
}

// Idle connections cannot pile up: beyond 16 the server answers with an
// error and closes, and a freed slot serves again.
func TestConnectionLimit(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	srv, err := Listen(sock, &fakeTarget{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var idle []net.Conn
	for i := 0; i < 16; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(line, "error too many control connections") {
		t.Fatalf("17th connection: %q", line)
	}
	idle[0].Close()
	cl, _ := Dial(sock)
	for i := 0; ; i++ {
		_, err := cl.Info()
		if err == nil {
			break
		}
		if i == 50 {
			t.Fatalf("info after a slot was freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
