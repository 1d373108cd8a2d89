// Package api is the control socket of a running VM: a Unix socket owned by
// the VM's process, speaking HTTP/1.1 with JSON bodies, through which the
// `govmm pause|resume|info|snapshot|migrate` commands drive that VM. Long
// operations stream progress lines before their final result, so a client
// can draw a progress bar.
package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

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
}

// MigrateResult reports a finished live migration.
type MigrateResult struct {
	TotalMS    float64 `json:"total_ms"`
	DowntimeMS float64 `json:"downtime_ms"`
	Bytes      uint64  `json:"bytes"`
	Pages      uint64  `json:"pages"`
	Iterations int     `json:"iterations"`
}

// Target is what the server controls (implemented by the VM's owner).
type Target interface {
	Info() Info
	Pause() error
	Resume() error
	Snapshot(req SnapshotRequest, progress func(done, total uint64)) (SnapshotResult, error)
	Migrate(req MigrateRequest, progress func(done, total uint64)) (MigrateResult, error)
}

// Server serves the control socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	mu   sync.Mutex // one control operation at a time
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
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{path: path, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, t.Info()) })
	mux.HandleFunc("POST /v1/pause", s.simple(t.Pause))
	mux.HandleFunc("POST /v1/resume", s.simple(t.Resume))
	mux.HandleFunc("POST /v1/snapshot", func(w http.ResponseWriter, r *http.Request) {
		var req SnapshotRequest
		if !decode(w, r, &req) {
			return
		}
		if req.Dir == "" {
			httpError(w, http.StatusBadRequest, errors.New("snapshot: dir is required"))
			return
		}
		s.stream(w, func(p func(done, total uint64)) (any, error) { return t.Snapshot(req, p) })
	})
	mux.HandleFunc("POST /v1/migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		if !decode(w, r, &req) {
			return
		}
		s.stream(w, func(p func(done, total uint64)) (any, error) { return t.Migrate(req, p) })
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	err := s.srv.Close()
	os.Remove(s.path)
	return err
}

func (s *Server) simple(fn func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := fn(); err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, map[string]string{"status": "ok"})
	}
}

// stream runs op, sending "progress DONE TOTAL" lines while it works and
// then one line "result JSON" or "error MESSAGE".
func (s *Server) stream(w http.ResponseWriter, op func(func(done, total uint64)) (any, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	fl, _ := w.(http.Flusher)
	var last time.Time
	var wmu sync.Mutex
	progress := func(done, total uint64) {
		if time.Since(last) < 100*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		wmu.Lock()
		fmt.Fprintf(w, "progress %d %d\n", done, total)
		if fl != nil {
			fl.Flush()
		}
		wmu.Unlock()
	}
	res, err := op(progress)
	wmu.Lock()
	defer wmu.Unlock()
	if err != nil {
		fmt.Fprintf(w, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	b, _ := json.Marshal(res)
	fmt.Fprintf(w, "result %s\n", b)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// Client talks to a VM's control socket.
type Client struct {
	hc *http.Client
}

// Dial returns a client for the socket at path.
func Dial(path string) (*Client, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("control socket %s: %w (is the VM running with --api-socket?)", path, err)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{hc: &http.Client{Transport: tr}}, nil
}

func (c *Client) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, "http://govmm"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		return nil, errors.New(e.Error)
	}
	return resp, nil
}

// Info asks for the VM's description.
func (c *Client) Info() (Info, error) {
	var i Info
	resp, err := c.do("GET", "/v1/info", nil)
	if err != nil {
		return i, err
	}
	defer resp.Body.Close()
	return i, json.NewDecoder(resp.Body).Decode(&i)
}

// Pause pauses the VM.
func (c *Client) Pause() error { return c.simple("/v1/pause") }

// Resume resumes the VM.
func (c *Client) Resume() error { return c.simple("/v1/resume") }

func (c *Client) simple(path string) error {
	resp, err := c.do("POST", path, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Snapshot takes a snapshot, reporting progress.
func (c *Client) Snapshot(req SnapshotRequest, progress func(done, total uint64)) (SnapshotResult, error) {
	var res SnapshotResult
	return res, c.stream("/v1/snapshot", req, progress, &res)
}

// Migrate live-migrates the VM, reporting progress.
func (c *Client) Migrate(req MigrateRequest, progress func(done, total uint64)) (MigrateResult, error) {
	var res MigrateResult
	return res, c.stream("/v1/migrate", req, progress, &res)
}

func (c *Client) stream(path string, req any, progress func(done, total uint64), out any) error {
	resp, err := c.do("POST", path, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "progress":
			var done, total uint64
			if _, err := fmt.Sscan(rest, &done, &total); err == nil && progress != nil {
				progress(done, total)
			}
		case "result":
			return json.Unmarshal([]byte(rest), out)
		case "error":
			return errors.New(rest)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	return errors.New("control socket closed before the operation finished (did the VM exit?)")
}
