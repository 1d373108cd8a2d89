// Package api is the control socket of a running VM: a Unix socket owned by
// the VM's process (mode 0600) through which the `govmm
// pause|resume|info|snapshot|migrate` commands drive that VM.
//
// Whoever can use the socket controls the VM (it can pause it, or snapshot
// its memory to a file), so the server admits only its own user and root
// (SO_PEERCRED, on top of the socket's mode, which is 0600 from the moment
// it exists), and serves at most MaxConns connections at a time: a local
// process opening idle connections cannot grow the VMM.
//
// The protocol is one request per connection, in lines: the client sends a
// JSON request line ({"op":"snapshot","snapshot":{"dir":"/x"}}); the server
// answers with any number of "progress DONE TOTAL" lines and then exactly
// one "result JSON" or "error MESSAGE" line, and closes. Lines keep long
// operations observable (progress bars) without an HTTP stack in the VMM:
// the VMM's binary size, resident memory and start-up time are part of
// what it is judged by.
package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"govmm/internal/unixsock"
)

// MaxConns is how many control connections the server serves at once; one
// more is answered with an error line and closed.
const MaxConns = 16

// peerAllowed says whether a peer's user may use the socket (a variable so
// the tests can play a foreign user).
var peerAllowed = unixsock.PeerAllowed

// Info describes a running VM.
type Info struct {
	State   string `json:"state"` // "running" or "paused"
	Accel   string `json:"accel"`
	CPUs    int    `json:"cpus"`
	Memory  uint64 `json:"memory_bytes"`
	Uptime  string `json:"uptime"`
	Kernel  string `json:"kernel"`
	PID     int    `json:"pid"`
	Version string `json:"version"`
	// Exits are the guest's exits to the VMM so far, by device, most
	// first (devices with none are left out), and EOIs the IOAPIC EOI
	// exits of level-triggered interrupts.
	Exits []ExitCount `json:"exits,omitempty"`
	EOIs  uint64      `json:"ioapic_eois"`
	// Devices are the devices on the VM's PCI bus, in slot order.
	Devices []PCIDevice `json:"pci_devices,omitempty"`
	// Balloon is the virtio balloon, when the VM has one (--balloon).
	Balloon *BalloonInfo `json:"balloon,omitempty"`
}

// PCIDevice is one device on the VM's PCI bus.
type PCIDevice struct {
	Address string `json:"address"` // "0000:00:01.0", as the guest's lspci shows it
	ID      string `json:"id"`      // vendor:device, e.g. "1af4:1042"
	// What says what backs it: a virtio device's image, TAP or CID, the
	// host device a VFIO function passes through.
	What string `json:"what"`
	// Queues describes a virtio device's status and live queues, a line
	// each: the rings' indices and each queue's MSI-X vector.
	Queues []string `json:"queues,omitempty"`
}

// ExitCount is one device's accesses: each one an exit to the VMM.
type ExitCount struct {
	Bus    string `json:"bus"` // "pio" or "mmio"
	Device string `json:"device"`
	Base   uint64 `json:"base,omitempty"`
	Reads  uint64 `json:"reads"`
	Writes uint64 `json:"writes"`
}

// SnapshotRequest asks for a snapshot into Dir. The VM resumes afterwards
// unless Stop is set (then it ends once the snapshot is safely written).
type SnapshotRequest struct {
	Dir  string `json:"dir"`
	Stop bool   `json:"stop,omitempty"`
}

// SnapshotResult reports a finished snapshot.
type SnapshotResult struct {
	Dir         string  `json:"dir"`
	MemoryBytes uint64  `json:"memory_bytes"`
	StateBytes  int     `json:"state_bytes"`
	PauseMS     float64 `json:"pause_ms"`
	TotalMS     float64 `json:"total_ms"`
}

// MigrateRequest asks to live-migrate the VM to a receiving govmm.
type MigrateRequest struct {
	To string `json:"to"` // unix:PATH or tcp:HOST:PORT
	// Verify has the destination check every guest page against the
	// source's checksums before it starts the VM (migrate.SendOptions).
	Verify bool `json:"verify,omitempty"`
}

// MigrateResult reports a finished live migration.
type MigrateResult struct {
	TotalMS    float64 `json:"total_ms"`
	DowntimeMS float64 `json:"downtime_ms"`
	Bytes      uint64  `json:"bytes"`
	Pages      uint64  `json:"pages"`
	Iterations int     `json:"iterations"`
	Verified   bool    `json:"verified,omitempty"`
	// DeviceBytes is passed-through devices' state sent before the
	// pause (VFIO PRE_COPY).
	DeviceBytes uint64 `json:"device_pre_copy_bytes,omitempty"`
}

// Target is what the server controls (implemented by the VM's owner).
type Target interface {
	Info() Info
	Pause() error
	Resume() error
	Snapshot(req SnapshotRequest, progress func(done, total uint64)) (SnapshotResult, error)
	Migrate(req MigrateRequest, progress func(done, total uint64)) (MigrateResult, error)
}

// request is one control request.
type request struct {
	Op       string           `json:"op"`
	Snapshot *SnapshotRequest `json:"snapshot,omitempty"`
	Migrate  *MigrateRequest  `json:"migrate,omitempty"`
	Balloon  *BalloonRequest  `json:"balloon,omitempty"`
	// Add is add-disk's or add-net's device.
	Add *AddDeviceRequest `json:"add,omitempty"`
}

// Server serves the control socket.
type Server struct {
	path string
	ln   net.Listener
	t    Target
	mu   sync.Mutex // one control operation at a time
	wg   sync.WaitGroup
	// active counts requests being served, so that Close lets a reply
	// that is being written (a migration's result, sent just before the
	// VM stops) reach its client.
	active sync.WaitGroup
	slots  chan struct{} // one per connection being served, MaxConns deep
}

// Listen creates the socket at path (removing a stale one) and serves t.
func Listen(path string, t Target) (*Server, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s is in use by another govmm", path)
		}
		os.Remove(path)
	}
	ln, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{path: path, ln: ln, t: t, slots: make(chan struct{}, MaxConns)}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		select {
		case s.slots <- struct{}{}:
		default:
			refuse(c, fmt.Sprintf("too many control connections (limit %d); try again", MaxConns))
			continue
		}
		s.active.Add(1)
		go func() {
			defer func() { <-s.slots; s.active.Done() }()
			if uid, err := unixsock.PeerUID(c); err != nil {
				refuse(c, oneLine(err))
				return
			} else if !peerAllowed(uid) {
				refuse(c, fmt.Sprintf("permission denied: uid %d may not control this VM (owner uid %d, or root)", uid, os.Getuid()))
				return
			}
			s.serve(c)
		}()
	}
}

// refuse answers c with one error line, without reading its request, and
// closes it. The write has a short deadline: a refused peer cannot hold the
// accept loop by not reading.
func refuse(c net.Conn, msg string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c, "error %s\n", msg)
	c.Close()
}

// Close stops serving and removes the socket. Requests in flight get up
// to closeGrace to finish their reply.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	done := make(chan struct{})
	go func() { s.active.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeGrace):
	}
	os.Remove(s.path)
	return err
}

const closeGrace = 5 * time.Second

// reply writes the answer lines of one request.
type reply struct {
	mu   sync.Mutex
	w    *bufio.Writer
	last time.Time
}

func (r *reply) line(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, format, args...)
	r.w.Flush()
}

func (r *reply) progress(done, total uint64) {
	if time.Since(r.last) < 100*time.Millisecond && done < total {
		return
	}
	r.last = time.Now()
	r.line("progress %d %d\n", done, total)
}

func (s *Server) serve(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ln, fds, err := readRequest(c)
	rp := &reply{w: bufio.NewWriter(c)}
	if err != nil && len(ln) == 0 {
		closeFDs(fds)
		rp.line("error read request: %s\n", oneLine(err))
		return
	}
	c.SetReadDeadline(time.Time{})
	var req request
	dec := json.NewDecoder(strings.NewReader(string(ln)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		closeFDs(fds)
		rp.line("error bad request: %s\n", oneLine(err))
		return
	}
	res, err := s.do(&req, fds, rp.progress)
	if err != nil {
		rp.line("error %s\n", oneLine(err))
		return
	}
	b, _ := json.Marshal(res)
	rp.line("result %s\n", b)
}

// do serves req. fds are the descriptors sent with it: add-disk and
// add-net take theirs, every other operation closes them.
func (s *Server) do(req *request, fds []int, progress func(done, total uint64)) (any, error) {
	if req.Op != "add-disk" && req.Op != "add-net" {
		closeFDs(fds)
	}
	if req.Op == "info" {
		return s.t.Info(), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := map[string]string{"status": "ok"}
	switch req.Op {
	case "pause":
		return ok, s.t.Pause()
	case "resume":
		return ok, s.t.Resume()
	case "snapshot":
		if req.Snapshot == nil || req.Snapshot.Dir == "" {
			return nil, errors.New("snapshot: dir is required")
		}
		return s.t.Snapshot(*req.Snapshot, progress)
	case "migrate":
		if req.Migrate == nil || req.Migrate.To == "" {
			return nil, errors.New("migrate: to is required")
		}
		return s.t.Migrate(*req.Migrate, progress)
	case "vcpus":
		vt, ok := s.t.(VCPUTarget)
		if !ok {
			return nil, errors.New("vcpus: this VM cannot show its vCPUs' state")
		}
		return vt.VCPUs()
	case "balloon":
		bt, ok := s.t.(BalloonTarget)
		if !ok {
			return nil, errors.New("balloon: this VM cannot steer a balloon")
		}
		if req.Balloon == nil {
			return nil, errors.New("balloon: target_bytes is required")
		}
		return bt.SetBalloon(*req.Balloon)
	case "add-disk", "add-net":
		return s.hotAdd(req, fds)
	}
	return nil, fmt.Errorf("unknown operation %q (want info, pause, resume, snapshot, migrate, vcpus, balloon, add-disk or add-net)", req.Op)
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// Client talks to a VM's control socket.
type Client struct {
	path string
}

// Dial returns a client for the socket at path.
func Dial(path string) (*Client, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w (is the VM running with --api-socket?)", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("control socket %s: not a socket (is the VM running with --api-socket?)", path)
	}
	return &Client{path: path}, nil
}

// call sends req and decodes the result into out, reporting progress.
func (c *Client) call(req request, progress func(done, total uint64), out any) error {
	return c.callWith(req, nil, progress, out)
}

// callWith is call with ancillary data (oob: SCM_RIGHTS) sent with the
// request line.
func (c *Client) callWith(req request, oob []byte, progress func(done, total uint64), out any) error {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: c.path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	b, _ := json.Marshal(req)
	// A server that refuses the connection answers without reading the
	// request, so a failed write is reported only if no answer follows.
	_, _, werr := conn.WriteMsgUnix(append(b, '\n'), oob, nil)
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kind, rest, _ := strings.Cut(sc.Text(), " ")
		switch kind {
		case "progress":
			var done, total uint64
			if _, err := fmt.Sscan(rest, &done, &total); err == nil && progress != nil {
				progress(done, total)
			}
		case "result":
			if out == nil {
				return nil
			}
			return json.Unmarshal([]byte(rest), out)
		case "error":
			return errors.New(rest)
		}
	}
	if werr != nil {
		return fmt.Errorf("control socket: %w", werr)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	return errors.New("control socket closed before the operation finished (did the VM exit?)")
}

// Info asks for the VM's description.
func (c *Client) Info() (Info, error) {
	var i Info
	return i, c.call(request{Op: "info"}, nil, &i)
}

// Pause pauses the VM.
func (c *Client) Pause() error { return c.call(request{Op: "pause"}, nil, nil) }

// Resume resumes the VM.
func (c *Client) Resume() error { return c.call(request{Op: "resume"}, nil, nil) }

// Snapshot takes a snapshot, reporting progress.
func (c *Client) Snapshot(req SnapshotRequest, progress func(done, total uint64)) (SnapshotResult, error) {
	var res SnapshotResult
	return res, c.call(request{Op: "snapshot", Snapshot: &req}, progress, &res)
}

// Migrate live-migrates the VM, reporting progress.
func (c *Client) Migrate(req MigrateRequest, progress func(done, total uint64)) (MigrateResult, error) {
	var res MigrateResult
	return res, c.call(request{Op: "migrate", Migrate: &req}, progress, &res)
}
