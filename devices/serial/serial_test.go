package serial

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
)

// fakeLine records every level the device drives.
type fakeLine struct {
	mu     sync.Mutex
	sets   []bool
	pulses int
}

func (l *fakeLine) Set(h bool) { l.mu.Lock(); l.sets = append(l.sets, h); l.mu.Unlock() }
func (l *fakeLine) Pulse()     { l.mu.Lock(); l.pulses++; l.mu.Unlock() }

func (l *fakeLine) level() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sets) > 0 && l.sets[len(l.sets)-1]
}

func (l *fakeLine) count() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.sets) }

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type rig struct {
	t    *testing.T
	u    *UART
	line *fakeLine
	out  *syncBuf
}

func newRig(t *testing.T) *rig {
	r := &rig{t: t, line: &fakeLine{}, out: &syncBuf{}}
	r.u = New(r.out, r.line)
	return r
}

func (r *rig) w(off int, v byte) { r.u.Write(uint64(off), []byte{v}) }
func (r *rig) r(off int) byte    { b := []byte{0}; r.u.Read(uint64(off), b); return b[0] }

func (r *rig) wantIIR(want byte) {
	r.t.Helper()
	if got := r.r(RegIIR); got != want {
		r.t.Fatalf("IIR = %#x, want %#x", got, want)
	}
}

func (r *rig) wantLine(want bool) {
	r.t.Helper()
	if got := r.line.level(); got != want {
		r.t.Fatalf("IRQ line %v, want %v (sets %v)", got, want, r.line.sets)
	}
}

func TestResetValues(t *testing.T) {
	r := newRig(t)
	for _, c := range []struct {
		off  int
		want byte
	}{{RegIER, 0}, {RegIIR, IIRNone}, {RegLCR, 0}, {RegMCR, 0}, {RegLSR, LSRTHRE | LSRTEMT}, {RegMSR, MSRCTS | MSRDSR | MSRDCD}, {RegSCR, 0}, {RegData, 0}} {
		if got := r.r(c.off); got != c.want {
			t.Errorf("register %d = %#x, want %#x", c.off, got, c.want)
		}
	}
	if r.line.count() != 0 {
		t.Errorf("line driven at reset: %v", r.line.sets)
	}
}

func TestScratchAndDivisor(t *testing.T) {
	r := newRig(t)
	r.w(RegSCR, 0x5a)
	if r.r(RegSCR) != 0x5a {
		t.Fatal("scratch register does not hold its value")
	}
	r.w(RegLCR, LCRDLAB|0x03)
	r.w(RegData, 0x01)
	r.w(RegIER, 0x02)
	if r.r(RegData) != 0x01 || r.r(RegIER) != 0x02 {
		t.Fatal("divisor latch does not read back")
	}
	r.w(RegLCR, 0x03)
	if r.r(RegIER) != 0 {
		t.Fatal("DLM write leaked into IER")
	}
	if s := r.u.Save(); s.DLL != 1 || s.DLM != 2 || s.LCR != 3 {
		t.Fatalf("state %+v", s)
	}
	if err := r.u.Flush(); err != nil {
		t.Fatal(err)
	}
	if r.out.String() != "" {
		t.Fatalf("DLL write was transmitted: %q", r.out.String())
	}
}

func TestTransmit(t *testing.T) {
	r := newRig(t)
	for _, c := range []byte("hello, world\n") {
		r.w(RegData, c)
	}
	r.u.Write(RegData, []byte{'x', 0}) // 16-bit out: 'x' to THR, 0 to IER
	if err := r.u.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := r.out.String(); got != "hello, world\nx" {
		t.Fatalf("output %q", got)
	}
	if r.r(RegLSR)&(LSRTHRE|LSRTEMT) != LSRTHRE|LSRTEMT {
		t.Fatal("THRE/TEMT not set after transmit")
	}
}

func TestTHREInterrupt(t *testing.T) {
	r := newRig(t)
	r.w(RegIER, IERTHRI)
	r.wantLine(true) // enabling THRI with THR empty raises it
	r.wantIIR(IIRTHRI)
	r.wantLine(false) // reading IIR with THRE the source clears it
	r.wantIIR(IIRNone)
	r.w(RegData, 'a')
	r.wantLine(true) // THR empties again after the byte leaves
	r.w(RegIER, 0)
	r.wantLine(false)
	r.w(RegIER, IERTHRI) // re-enabling raises it again (Linux's THRE test)
	r.wantLine(true)
	r.w(RegIER, 0)
	if r.line.count() != 6 {
		t.Fatalf("line transitions %v, want exactly 6 alternating", r.line.sets)
	}
	for i, v := range r.line.sets {
		if v != (i%2 == 0) {
			t.Fatalf("line transitions %v are not alternating", r.line.sets)
		}
	}
}

func TestReceiveNoFIFO(t *testing.T) {
	r := newRig(t)
	r.u.Input([]byte("ab"))
	r.wantLine(false) // RDI not enabled
	if r.r(RegLSR)&LSRDR == 0 {
		t.Fatal("DR clear with data waiting")
	}
	r.w(RegIER, IERRDI)
	r.wantLine(true)
	r.wantIIR(IIRRDI)
	if r.r(RegData) != 'a' {
		t.Fatal("first byte wrong")
	}
	r.wantLine(true) // 'b' moved in from the input buffer
	if r.r(RegData) != 'b' {
		t.Fatal("second byte wrong")
	}
	r.wantLine(false)
	if r.r(RegLSR)&LSRDR != 0 {
		t.Fatal("DR set with nothing received")
	}
}

func TestFIFOTriggerAndTimeout(t *testing.T) {
	r := newRig(t)
	r.w(RegIIR, FCREnable|FCRClearRX|FCRClearTX|0xC0) // trigger level 14
	r.wantIIR(IIRFIFO | IIRNone)
	r.w(RegIER, IERRDI)
	r.u.Input([]byte("abc"))
	r.wantLine(true)
	r.wantIIR(IIRFIFO | IIRTimeout)
	r.u.Input([]byte("defghijklmn")) // 14 bytes
	r.wantIIR(IIRFIFO | IIRRDI)
	more := bytes.Repeat([]byte("0123456789"), 10)
	r.u.Input(more)
	if n := len(r.u.Save().RX); n != FIFOSize {
		t.Fatalf("FIFO holds %d bytes, want %d", n, FIFOSize)
	}
	var got []byte
	for r.r(RegLSR)&LSRDR != 0 {
		got = append(got, r.r(RegData))
	}
	if want := append([]byte("abcdefghijklmn"), more...); !bytes.Equal(got, want) {
		t.Fatalf("received %q, want %q", got, want)
	}
	r.wantLine(false)
	if r.u.Dropped() != 0 {
		t.Fatalf("dropped %d", r.u.Dropped())
	}
	// Clearing the RX FIFO discards what was in it; waiting input then
	// flows in.
	r.u.Input(bytes.Repeat([]byte{'z'}, 20))
	r.w(RegIIR, FCREnable|FCRClearRX)
	if s := r.u.Save(); len(s.RX) != 4 || len(s.Input) != 0 {
		t.Fatalf("after FIFO reset RX=%d input=%d, want 4, 0", len(s.RX), len(s.Input))
	}
	// Trigger level 1 (bits 00): one byte is "data available".
	r.w(RegIIR, FCREnable)
	r.wantIIR(IIRFIFO | IIRRDI)
	// Disabling the FIFOs empties them and drops the FIFO bits of IIR.
	r.w(RegIIR, 0)
	if r.r(RegIIR) != IIRNone || r.r(RegLSR)&LSRDR != 0 {
		t.Fatal("FIFO disable did not empty RX / clear IIR FIFO bits")
	}
}

func TestInputBufferBound(t *testing.T) {
	r := newRig(t)
	r.u.Input(make([]byte, InputBufferSize+10))
	if r.u.Dropped() != 10 {
		t.Fatalf("dropped %d, want 10", r.u.Dropped())
	}
	r.u.Input([]byte{1})
	// The buffer moved one byte into RBR before the second call, so one
	// byte of room was free.
	if r.u.Dropped() != 10 {
		t.Fatalf("dropped %d after 1 more byte, want 10", r.u.Dropped())
	}
	r.u.Input([]byte{2, 3})
	if r.u.Dropped() != 12 {
		t.Fatalf("dropped %d, want 12", r.u.Dropped())
	}
}

func TestLoopback(t *testing.T) {
	r := newRig(t)
	// Linux 8250 autoconfig: MCR = LOOP|OUT2|RTS must read MSR 0x90.
	r.w(RegMCR, MCRLoop|MCROUT2|MCRRTS)
	if msr := r.r(RegMSR); msr&0xF0 != MSRDCD|MSRCTS {
		t.Fatalf("loopback MSR %#x, want 0x90 in the top nibble", msr)
	}
	r.w(RegMCR, MCRLoop|MCRDTR|MCROUT1)
	if msr := r.r(RegMSR); msr != MSRDSR|MSRRI|MSRDCTS|MSRDDSR|MSRDDCD {
		t.Fatalf("MSR %#x", msr)
	}
	r.w(RegMCR, MCRLoop|MCRDTR)
	if msr := r.r(RegMSR); msr != MSRDSR|MSRTERI {
		t.Fatalf("MSR %#x after RI falls, want DSR|TERI", msr)
	}
	r.u.Input([]byte("host")) // held: the receiver is cut off in loopback
	r.w(RegData, 'L')
	if r.r(RegData) != 'L' {
		t.Fatal("loopback byte did not come back")
	}
	// Overrun: RBR holds one byte with the FIFOs off.
	r.w(RegData, '1')
	r.w(RegData, '2')
	if lsr := r.r(RegLSR); lsr&LSROE == 0 {
		t.Fatalf("LSR %#x: no overrun", lsr)
	}
	if lsr := r.r(RegLSR); lsr&LSROE != 0 {
		t.Fatal("OE not cleared by reading LSR")
	}
	if r.r(RegData) != '1' {
		t.Fatal("overrun replaced the held byte")
	}
	r.w(RegMCR, 0)
	if msr := r.r(RegMSR); msr&0xF0 != msrIdle {
		t.Fatalf("MSR %#x after loopback off", msr)
	}
	var got []byte
	for r.r(RegLSR)&LSRDR != 0 {
		got = append(got, r.r(RegData))
	}
	if string(got) != "host" {
		t.Fatalf("host input after loopback %q", got)
	}
	if err := r.u.Flush(); err != nil {
		t.Fatal(err)
	}
	if r.out.String() != "" {
		t.Fatalf("loopback bytes reached the host: %q", r.out.String())
	}
}

func TestPriorities(t *testing.T) {
	r := newRig(t)
	r.w(RegIIR, FCREnable) // trigger 1
	r.w(RegMCR, MCRLoop)
	for i := 0; i < FIFOSize+1; i++ { // fill and overrun
		r.w(RegData, byte(i))
	}
	r.w(RegMCR, MCRLoop|MCRRTS) // modem status delta
	r.w(RegIER, IERRDI|IERTHRI|IERRLSI|IERMSI)
	r.wantLine(true)
	r.wantIIR(IIRFIFO | IIRRLSI)
	r.wantIIR(IIRFIFO | IIRRLSI) // stays until LSR is read
	r.r(RegLSR)
	r.wantIIR(IIRFIFO | IIRRDI)
	for r.r(RegLSR)&LSRDR != 0 {
		r.r(RegData)
	}
	r.wantIIR(IIRFIFO | IIRTHRI) // the read clears it
	r.wantIIR(IIRFIFO | IIRMSI)
	r.wantLine(true)
	r.r(RegMSR)
	r.wantIIR(IIRFIFO | IIRNone)
	r.wantLine(false)
}

func TestLinuxAutoconfig(t *testing.T) {
	// The probes of drivers/tty/serial/8250/8250_port.c autoconfig() that
	// decide the port type.
	r := newRig(t)
	r.w(RegIER, 0)
	if r.r(RegIER)&0x0F != 0 {
		t.Fatal("IER test 1")
	}
	r.w(RegIER, 0x0F)
	if r.r(RegIER)&0x0F != 0x0F {
		t.Fatal("IER test 2")
	}
	r.w(RegIER, 0)
	r.w(RegIIR, FCREnable)
	if r.r(RegIIR)>>6 != 3 {
		t.Fatal("IIR does not report FIFOs enabled (not a 16550A)")
	}
	r.w(RegIER, 0x40) // UART_IER_UUE must not stick on a 16550A
	if r.r(RegIER) != 0 {
		t.Fatal("IER bit 6 stuck: would look like an XScale UART")
	}
	r.w(RegLCR, LCRDLAB)
	r.w(RegIIR, FCREnable|0x20) // 16750 64-byte FIFO bit
	r.w(RegLCR, 0)
	if r.r(RegIIR)&0x20 != 0 {
		t.Fatal("IIR bit 5 set: would look like a 16750")
	}
}

func TestSaveRestore(t *testing.T) {
	r := newRig(t)
	r.w(RegIIR, FCREnable|0x80)
	r.w(RegLCR, 0x03)
	r.w(RegSCR, 0x42)
	r.w(RegIER, IERRDI)
	r.u.Input(bytes.Repeat([]byte("x"), 40))
	r.wantLine(true)
	s := r.u.Save()
	j, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	if err := json.Unmarshal(j, &s2); err != nil {
		t.Fatal(err)
	}
	r2 := newRig(t)
	if err := r2.u.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r2.u.Save(), s) {
		t.Fatalf("restored %+v\nwant %+v", r2.u.Save(), s)
	}
	r2.wantLine(true)
	n := 0
	for r2.r(RegLSR)&LSRDR != 0 {
		r2.r(RegData)
		n++
	}
	if n != 40 {
		t.Fatalf("read %d bytes after restore, want 40", n)
	}
	r2.wantLine(false)

	bad := s
	bad.FCR = 0
	if err := r2.u.Restore(bad); err == nil {
		t.Fatal("Restore accepted 16 bytes in RBR with the FIFOs off")
	}
}

func TestConcurrentInput(t *testing.T) {
	r := newRig(t)
	r.w(RegIIR, FCREnable)
	const n = 5000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			r.u.Input([]byte{byte(i)})
		}
	}()
	var got []byte
	for len(got) < n {
		if r.r(RegLSR)&LSRDR != 0 {
			got = append(got, r.r(RegData))
		}
	}
	wg.Wait()
	for i, b := range got {
		if b != byte(i) {
			t.Fatalf("byte %d = %d: input reordered", i, b)
		}
	}
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	release chan struct{}
	syncBuf
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return w.syncBuf.Write(p)
}

func TestSlowOutputDoesNotBlockVCPU(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	u := New(w, nil)
	for _, c := range []byte("not lost\n") {
		u.Write(RegData, []byte{c}) // would deadlock here if it waited for w
	}
	close(w.release)
	if err := u.Flush(); err != nil {
		t.Fatal(err)
	}
	if w.String() != "not lost\n" {
		t.Fatalf("output %q", w.String())
	}
}

type failWriter struct{}

func (failWriter) Write(p []byte) (int, error) { return 0, errors.New("broken pipe") }

func TestFlushReportsError(t *testing.T) {
	u := New(failWriter{}, nil)
	u.Write(RegData, []byte{'a'})
	if err := u.Flush(); err == nil {
		t.Fatal("Flush hid the write error")
	}
	u.Write(RegData, []byte{'b'}) // must not block or panic after the error
	if err := u.Flush(); err == nil {
		t.Fatal("error forgotten")
	}
	if err := New(nil, nil).Flush(); err != nil {
		t.Fatal(err)
	}
}

func FuzzAccess(f *testing.F) {
	// Each op is 4 bytes: offset|kind, size, value, spare.
	f.Add([]byte{0x12, 0, 0x01, 0, 0x11, 0, 0x0f, 0, 0x04, 0, 0x10, 0, 0x10, 0, 'a', 0, 0x02, 0, 0, 0})
	f.Add([]byte{0x13, 0, 0x80, 0, 0x10, 1, 0x34, 0x12, 0x13, 0, 0x03, 0, 0x20, 0, 'x', 0, 0x05, 2, 0, 0})
	f.Add([]byte{0x12, 0, 0xc7, 0, 0x20, 0, 40, 0, 0x11, 0, 0x05, 0, 0x06, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		line := &fakeLine{}
		u := New(&syncBuf{}, line)
		for len(ops) >= 4 {
			off := uint64(ops[0] & 7)
			kind := ops[0] >> 4
			size := []int{1, 2, 4}[int(ops[1])%3]
			val := []byte{ops[2], ops[3], ops[2] ^ 0xff, ops[3] ^ 0xff}[:size]
			ops = ops[4:]
			switch kind % 3 {
			case 0:
				u.Read(off, val)
			case 1:
				u.Write(off, val)
			case 2:
				u.Input(bytes.Repeat([]byte{val[0]}, int(val[0]%64)))
			}
			u.mu.Lock()
			s := u.s
			iir := u.iir()
			level := u.level
			u.mu.Unlock()
			if len(s.RX) > FIFOSize || (s.FCR&FCREnable == 0 && len(s.RX) > 1) {
				t.Fatalf("RX holds %d bytes with FCR %#x", len(s.RX), s.FCR)
			}
			if len(s.Input) > InputBufferSize {
				t.Fatalf("input buffer %d", len(s.Input))
			}
			if len(s.Input) > 0 && len(s.RX) < u.rxCapacity() && s.MCR&MCRLoop == 0 {
				t.Fatalf("input waits (%d) while the FIFO has room (%d)", len(s.Input), len(s.RX))
			}
			if s.IER&0xF0 != 0 || s.MCR&^mcrWritable != 0 || s.LSR&^lsrErrors != 0 {
				t.Fatalf("reserved bits set: %+v", s)
			}
			switch iir {
			case IIRNone, IIRMSI, IIRTHRI, IIRRDI, IIRRLSI, IIRTimeout:
			default:
				t.Fatalf("IIR %#x", iir)
			}
			if level != (iir != IIRNone) || line.level() != level {
				t.Fatalf("line %v (fake %v) with IIR %#x", level, line.level(), iir)
			}
		}
		if err := u.Flush(); err != nil {
			t.Fatal(err)
		}
		s := u.Save()
		u2 := New(nil, nil)
		if err := u2.Restore(s); err != nil {
			t.Fatalf("restore of saved state: %v", err)
		}
		if !reflect.DeepEqual(u2.Save(), s) {
			t.Fatal("save/restore round trip differs")
		}
	})
}

func BenchmarkTransmit(b *testing.B) {
	u := New(&syncBuf{}, nil)
	for i := 0; i < b.N; i++ {
		u.Write(RegData, []byte{'x'})
	}
	if err := u.Flush(); err != nil {
		b.Fatal(err)
	}
}
