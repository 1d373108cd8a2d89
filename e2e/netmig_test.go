package e2e

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// netMigBytes is each direction's stream in TestNetLiveMigration: more
// than the paced rate moves in the longest migration seen, so that both
// streams are still flowing when the move ends.
const netMigBytes = 24 << 20

// netMigPace is how the host paces both streams until the move ends: a
// chunk per tick (320 KiB/s), so that TCP's flow control holds the
// guest's upload and the host's download in flight across the move.
const (
	netMigChunk = 32 << 10
	netMigTick  = 100 * time.Millisecond
)

// netMigInit serves one connection from L1 (the download: L1 sends, the
// guest checks it and answers) while it uploads to L1 from CPU 0 (L1
// answers), then powers off.
var netMigInit = netMQHead + fmt.Sprintf(`/bin/vsockpeer tcpserve 7000 1 g2h-answer %d &
srv=$!
$B taskset 1 /bin/vsockpeer tcpdial %s:7001 mig-up %d
wait $srv
echo "vsock-test: done"
$B poweroff -f
`, netReply, netHostIP, netMigBytes)

// pacedStream counts the bytes one paced stream moved, and those it had
// moved when the move ended.
type pacedStream struct {
	moved  atomic.Int64
	atMove int64
}

// pace sleeps one tick while gate is open.
func pace(gate <-chan struct{}) {
	select {
	case <-gate:
	case <-time.After(netMigTick):
	}
}

// TestNetLiveMigration moves a 2-vCPU Linux guest live between two govmm
// processes while TCP streams run both ways over its virtio-net device
// (queues=2 on a multiqueue TAP, which both processes attach to on one
// host): KVM to mshvsim, mshvsim to KVM and KVM to KVM, with the CPU
// models of TestVirtioLiveMigration. L1 paces both streams (the guest's
// 24 MiB upload, read a chunk per tick, and its own 24 MiB download to
// the guest) until the move has ended, so both are in flight across it;
// then it lets them run. Every byte is checked on both sides, and so are
// the answers each side sends after its half-close. `migrate send
// --verify` checks every page the destination got, the device's writes
// into receive buffers during the move included.
func TestNetLiveMigration(t *testing.T) { netLiveMigration(t, "", needTun, nil) }

// netLiveMigration is TestNetLiveMigration with opt added to both sides'
// --net flag, need run before each move, and moved, if set, called with
// the destination once the move ended.
func netLiveMigration(t *testing.T, opt string, need func(*testing.T), moved func(*testing.T, *proc)) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, netMigInit)
	for _, m := range linuxMoves(t) {
		t.Run(accelName(m.src)+"-to-"+accelName(m.dst), func(t *testing.T) {
			need(t)
			ln, err := net.Listen("tcp4", ":7001")
			if err != nil {
				t.Fatal(err)
			}
			gate := make(chan struct{})
			var gateOnce sync.Once
			open := func() { gateOnce.Do(func() { close(gate) }) }
			t.Cleanup(open)
			var up, down pacedStream
			upDone := serveUploadPaced(t, ln, &up, gate, pattern("mig-up-answer", netReply))

			dir := tempSocketDir(t)
			sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
			nf := "tap=" + netTap + ",mac=" + netMAC + ",queues=2" + opt
			s := bootGuest(t, append(append([]string{"run"}, m.src...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--cpu", m.cpu, "--api-socket", sock, "--net", nf,
				"--cmdline", "console=ttyS0 quiet panic=-1"+tscArgs(t, m.src, m.cpu)),
				"vsock-test: listening 7000", func() { hostTap(t) })
			downDone := sendDownloadPaced(t, &down, gate)

			// Both streams flowing before the move starts.
			deadline := time.Now().Add(2 * time.Minute)
			for up.moved.Load() < 1<<20 || down.moved.Load() < 1<<20 {
				if time.Now().After(deadline) {
					t.Fatalf("the streams did not start: %d bytes up, %d down\n%s", up.moved.Load(), down.moved.Load(), s.output())
				}
				time.Sleep(100 * time.Millisecond)
			}
			receive := append(append([]string{"migrate", "receive"}, m.dst...), "--listen", "unix:"+mig)
			d := start(t, append(append([]string(nil), receive...), "--net", nf, "--api-socket", filepath.Join(dir, "dst.sock"))...)
			waitPath(t, mig)
			migrateLive(t, sock, mig, s, d)
			up.atMove, down.atMove = up.moved.Load(), down.moved.Load()
			open()
			t.Logf("at the move's end: %d of %d bytes up, %d down", up.atMove, netMigBytes, down.atMove)
			if up.atMove >= netMigBytes || down.atMove >= netMigBytes {
				t.Fatalf("a stream ended before the move did (%d up, %d down of %d): the test moved no load", up.atMove, down.atMove, netMigBytes)
			}
			if moved != nil {
				moved(t, d)
			}

			progress := func() int64 { return up.moved.Load() + down.moved.Load() }
			if b, ok := awaitStream(d, upDone, progress, 4*time.Minute); !ok {
				t.Errorf("the guest's upload did not end within 4 minutes of the move (%d bytes)\n%s", up.moved.Load(), d.output())
			} else if w := pattern("mig-up", netMigBytes); string(b) != string(w) {
				t.Errorf("L1 read %d bytes of the guest's upload, want %d of the pattern (first difference at %d)", len(b), len(w), firstDiff(b, w))
			}
			if err, ok := awaitStream(d, downDone, progress, 4*time.Minute); !ok {
				t.Errorf("L1's download to the guest did not end within 4 minutes of the move (%d bytes)\n%s", down.moved.Load(), d.output())
			} else if err != nil {
				t.Error(err)
			}
			d.waitFor("vsock-test: done", 3*time.Minute)
			if code := d.exit(time.Minute); code != 0 {
				t.Fatalf("destination: exit %d\n%s", code, d.output())
			}
			out := s.output() + withoutVMMLog(d.output())
			dl := pattern("mig-down", netMigBytes)
			if got, w := vsockLine(out, "h2g-recv-1"), fmt.Sprintf("%d %s", len(dl), sum(dl)); got != w {
				t.Errorf("L1's download: the guest printed %q, want %q", got, w)
			}
			if got, w := vsockLine(out, "g2h-reply"), fmt.Sprintf("%d %s", netReply, sum(pattern("mig-up-answer", netReply))); got != w {
				t.Errorf("L1's answer to the upload: the guest printed %q, want %q", got, w)
			}
			if t.Failed() {
				t.Fatalf("source:\n%s\ndestination:\n%s", lastLines(s.output(), 40), d.output())
			}
		})
	}
}

// serveUploadPaced is serveOnce reading a chunk per tick until gate
// closes and then at full speed, counting in st.
func serveUploadPaced(t *testing.T, ln net.Listener, st *pacedStream, gate <-chan struct{}, answer []byte) <-chan []byte {
	return serveOnceWith(t, ln, answer, func(r io.Reader) ([]byte, error) {
		var b []byte
		buf := make([]byte, netMigChunk)
		for {
			n, err := r.Read(buf)
			b = append(b, buf[:n]...)
			st.moved.Add(int64(n))
			if err == io.EOF {
				return b, nil
			}
			if err != nil {
				return b, err
			}
			pace(gate)
		}
	})
}

// sendDownloadPaced dials the guest's server and sends it netMigBytes of
// the "mig-down" pattern, a chunk per tick until gate closes and then at
// full speed, counting in st; then it half-closes and checks the guest's
// answer. The channel gets the outcome.
func sendDownloadPaced(t *testing.T, st *pacedStream, gate <-chan struct{}) <-chan error {
	res := make(chan error, 1)
	c, err := net.DialTimeout("tcp4", netGuestIP+":7000", 30*time.Second)
	if err != nil {
		t.Fatalf("connect to the guest: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		data := pattern("mig-down", netMigBytes)
		for off := 0; off < len(data); {
			select {
			case <-gate:
				n, err := c.Write(data[off:])
				st.moved.Add(int64(n))
				off += n
				if err != nil {
					res <- fmt.Errorf("L1's download to the guest: write after %d bytes: %w", off, err)
					return
				}
				continue
			default:
			}
			n, err := c.Write(data[off:min(off+netMigChunk, len(data))])
			st.moved.Add(int64(n))
			off += n
			if err != nil {
				res <- fmt.Errorf("L1's download to the guest: write after %d bytes: %w", off, err)
				return
			}
			pace(gate)
		}
		c.(*net.TCPConn).CloseWrite()
		answer, err := io.ReadAll(c)
		if want := pattern("g2h-answer-1", netReply); err != nil || string(answer) != string(want) {
			res <- fmt.Errorf("the guest's answer to L1's download: %d bytes (%v), want %d of the pattern", len(answer), err, len(want))
			return
		}
		res <- nil
	}()
	return res
}

// firstDiff is the first offset where a and b differ (the shorter one's
// length if one is the other's prefix).
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// awaitStream waits up to bound for a stream's result on ch while process
// d runs the guest at its other end. When the stream's progress stands
// still, it asks (as proc.waitFor does) whether the nested substrate's
// known failure holds the guest's vCPUs, and fails the test at once with
// the diagnosis if so. ok is false when the bound passed.
func awaitStream[T any](d *proc, ch <-chan T, progress func() int64, bound time.Duration) (v T, ok bool) {
	d.t.Helper()
	const poll = 100 * time.Millisecond
	var w quietWatch
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		select {
		case v := <-ch:
			return v, true
		case <-time.After(poll):
		}
		if diag := w.substrate(d, int(progress()), d.output(), poll); diag != "" {
			d.substrateFatal(diag, "the end of the streams")
		}
	}
	return v, false
}
