package main

// QEMU's QMP monitor: commands, events, migration.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

type qmpEvent struct {
	name string
	data json.RawMessage
	recv time.Time
}

// qmp is a QMP connection. QEMU connects to the benchmark (the monitor is
// a client socket), so events from the very start are seen.
type qmp struct {
	conn   net.Conn
	resp   chan json.RawMessage // "return" or an error, as {"error":...}
	events chan qmpEvent
	mu     sync.Mutex
}

// startQEMU starts QEMU with argv (whose monitor connects to qmpPath) and
// completes the QMP handshake.
func (b *bench) startQEMU(argv []string, qmpPath string) (*proc, *qmp, error) {
	os.Remove(qmpPath)
	ln, err := net.Listen("unix", qmpPath)
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	p, err := spawn(argv)
	if err != nil {
		return nil, nil, err
	}
	type acc struct {
		c   net.Conn
		err error
	}
	ch := make(chan acc, 1)
	go func() { c, err := ln.Accept(); ch <- acc{c, err} }()
	var a acc
	select {
	case a = <-ch:
	case <-p.done:
		return nil, nil, fmt.Errorf("qemu exited (%v):\n%s", p.err, p.output())
	case <-time.After(time.Minute):
		p.kill()
		return nil, nil, fmt.Errorf("qemu never connected its monitor:\n%s", p.output())
	}
	if a.err != nil {
		p.kill()
		return nil, nil, a.err
	}
	q := &qmp{conn: a.c, resp: make(chan json.RawMessage, 1), events: make(chan qmpEvent, 256)}
	greeting := make(chan struct{})
	go q.read(greeting)
	select {
	case <-greeting:
	case <-time.After(time.Minute):
		p.kill()
		return nil, nil, errors.New("no QMP greeting")
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		p.kill()
		return nil, nil, err
	}
	return p, q, nil
}

func (q *qmp) read(greeting chan struct{}) {
	dec := json.NewDecoder(q.conn)
	for {
		var m map[string]json.RawMessage
		if err := dec.Decode(&m); err != nil {
			close(q.events)
			return
		}
		now := time.Now()
		switch {
		case m["QMP"] != nil:
			close(greeting)
		case m["event"] != nil:
			var name string
			json.Unmarshal(m["event"], &name)
			select {
			case q.events <- qmpEvent{name, m["data"], now}:
			default:
			}
		case m["return"] != nil:
			q.resp <- m["return"]
		case m["error"] != nil:
			q.resp <- append([]byte(`{"error":`), append(m["error"], '}')...)
		}
	}
}

func (q *qmp) execute(cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r := <-q.resp:
		if strings.HasPrefix(string(r), `{"error":`) {
			return nil, fmt.Errorf("qmp %s: %s", cmd, r)
		}
		return r, nil
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("qmp %s: no answer", cmd)
	}
}

// waitEvent waits for event name whose data satisfies ok (nil: any).
func (q *qmp) waitEvent(name string, ok func(json.RawMessage) bool, d time.Duration) (qmpEvent, error) {
	t := time.After(d)
	for {
		select {
		case ev, open := <-q.events:
			if !open {
				return ev, fmt.Errorf("QMP closed while waiting for %s", name)
			}
			if ev.name == name && (ok == nil || ok(ev.data)) {
				return ev, nil
			}
		case <-t:
			return qmpEvent{}, fmt.Errorf("no %s event within %v", name, d)
		}
	}
}

type migStats struct {
	TotalMS, DowntimeMS float64
	Bytes               uint64
}

// migrate runs a migration to uri and waits for it to end.
func (q *qmp) migrate(uri string) (migStats, error) {
	var st migStats
	if _, err := q.execute("migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "events", "state": true}}}); err != nil {
		return st, err
	}
	if _, err := q.execute("migrate-set-parameters", map[string]any{"max-bandwidth": int64(10) << 30}); err != nil {
		return st, err
	}
	if _, err := q.execute("migrate", map[string]any{"uri": uri}); err != nil {
		return st, err
	}
	ev, err := q.waitEvent("MIGRATION", func(d json.RawMessage) bool {
		var s struct{ Status string }
		json.Unmarshal(d, &s)
		return s.Status == "completed" || s.Status == "failed" || s.Status == "cancelled"
	}, 2*time.Minute)
	if err != nil {
		return st, err
	}
	if !strings.Contains(string(ev.data), "completed") {
		return st, fmt.Errorf("qemu migration to %s: %s", uri, ev.data)
	}
	r, err := q.execute("query-migrate", nil)
	if err != nil {
		return st, err
	}
	var info struct {
		Total    float64 `json:"total-time"`
		Downtime float64 `json:"downtime"`
		RAM      struct {
			Transferred uint64 `json:"transferred"`
		} `json:"ram"`
	}
	if err := json.Unmarshal(r, &info); err != nil {
		return st, fmt.Errorf("query-migrate: %w", err)
	}
	return migStats{info.Total, info.Downtime, info.RAM.Transferred}, nil
}

// saveToFile is QEMU's snapshot analogue: stop, migrate to a file, cont.
func (q *qmp) saveToFile(path string) (time.Duration, error) {
	t0 := time.Now()
	if _, err := q.execute("stop", nil); err != nil {
		return 0, err
	}
	// sync: durable when it completes, as govmm's (QEMU waits for the
	// command to exit).
	if _, err := q.migrate("exec:cat > " + path + " && sync " + path); err != nil {
		return 0, err
	}
	// The completed event comes just before QEMU leaves finish-migrate,
	// where it refuses cont.
	for i := 0; ; i++ {
		r, err := q.execute("query-status", nil)
		if err != nil {
			return 0, err
		}
		if !strings.Contains(string(r), "finish-migrate") {
			break
		}
		if i == 10000 {
			return 0, fmt.Errorf("qemu stays in finish-migrate: %s", r)
		}
		time.Sleep(100 * time.Microsecond)
	}
	if _, err := q.execute("cont", nil); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
