// Package migrate moves a running VM to another govmm process over a
// stream (TCP or a Unix socket) by pre-copy: guest memory is sent while the
// guest runs, then the pages it dirtied meanwhile, round after round until
// few remain; then the source pauses, sends the last dirty pages and the
// device and vCPU state (the same state file a snapshot holds), and the
// destination starts. Virtio devices' writes into guest memory are in the
// VMM's dirty log, which the machine's DirtyPages merges with the
// accelerator's (memory.CollectDirty); their backends are not copied (a disk image is shared
// storage), so the destination must have the same devices, which it
// checks against the hello before any page moves. If anything fails before the
// destination confirms, the source resumes, so no VM is ever lost.
//
// The package is architecture-neutral: a source is any machine with the
// methods of VM (the x86 vm.VM and the arm64 platform/arm64.Machine), the
// hello names the machine's architecture, and a receiver of another
// architecture refuses it by name before any page moves. The state is
// each architecture's own state file, tagged with its architecture.
//
// The receiver treats the stream as hostile until it has checked the hello:
// every read has a deadline (a silent peer cannot hold it forever), the
// hello's memory size is bounded by host RAM and must equal the size the
// receiving side expects when it names one, and a refusal is sent back to
// the source as an acknowledgement carrying the reason.
//
// Wire format (all integers little endian):
//
//	'H' u32 len  JSON hello (format version, memory size, vCPUs, the machine: CPU model and CPUID, ...; the virtio devices;
//	             the architecture, absent for x86_64)
//	'P' u32 n    n x (u64 GPA, 4096 bytes)            memory pages
//	'S' u32 len  state file                            (snapshot format)
//	'V' u32 len  u32 region, u32 first page, u64 CRC-64 per page   checksums (only with SendOptions.Verify; verify.go)
//	'E' u32 len  u8 n, n bytes name, device data   a device's state read while the guest runs (DevicePreCopier;
//	             the name is its state section's, the receiver keeps the data in Incoming.DeviceData)
//	'D'                                                 end of stream
//	destination -> source: 'A' u32 len  error text (empty: success)
package migrate

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"govmm/internal/unixsock"
	"govmm/memory"
	"govmm/snapshot"
)

// Version is the migration stream version. The architecture field of
// the hello did not change it: an x86 hello is byte for byte what it
// was (no arch field means x86_64), and an arm64 hello only adds one.
const Version = 1

// VM is what a migration source needs of a running machine. The x86
// machine (package vm) and the arm64 one (platform/arm64) both have it.
type VM interface {
	// Memory is the guest RAM whose pages are sent.
	Memory() *memory.Memory
	NumCPUs() int
	// Pause stops the vCPUs and quiesces the devices; Resume undoes it.
	Pause() error
	Resume() error
	// StartDirtyLog turns on the accelerator's and the VMM's dirty
	// logs; DirtyPages returns (and clears) the GPAs written since the
	// last call; StopDirtyLog turns both off.
	StartDirtyLog() error
	StopDirtyLog() error
	DirtyPages() ([]uint64, error)
	// SaveState captures the paused machine as its architecture's
	// state file. It may write guest RAM (the arm64 vGIC's ITS tables
	// and LPI pending bits), which the dirty log sees.
	SaveState() (*snapshot.State, error)
	// VirtioDevices describes the virtio devices in slot order.
	VirtioDevices() []string
	// MigrationMachine is what the hello announces: the architecture
	// (snapshot.ArchX86_64, ArchARM64) and the machine description the
	// destination builds from, sent as JSON.
	MigrationMachine() (arch string, machine any)
	// WarmStateCodec runs the state encoder once before the pause, so
	// that its first-use cost is not downtime.
	WarmStateCodec()
}

// DevicePreCopier is a source with devices whose state can be read while
// the guest runs (VFIO PRE_COPY, entered by StartDirtyLog): Send calls
// DevicePreCopy after each round of pages, before the pause, and sends
// what it returns (data read since the last call, by the name of the
// device's state section) in device frames, which the receiver collects
// in Incoming.DeviceData for the machine to put in front of the device's
// saved data. A VM without such devices does not need the method.
type DevicePreCopier interface {
	DevicePreCopy() (map[string][]byte, error)
}

const (
	msgHello = 'H'
	msgPages = 'P'
	msgState = 'S'
	msgDone  = 'D'
	msgAck   = 'A'
	msgDev   = 'E'

	maxDevName = 255

	pageSize      = memory.PageSize
	pagesPerFrame = 256
	maxHello      = 1 << 20
	maxState      = 256 << 20
	maxMemSize    = 4 << 40 // a hello asking for more is not a VM govmm sent
	// DefaultFrameTimeout is how long the receiver waits for the hello, and
	// then for any progress of the stream, before giving up on the peer.
	DefaultFrameTimeout = 60 * time.Second
	// Pre-copy stops iterating when fewer pages than this are dirty, or
	// after maxRounds rounds (a guest dirtying faster than the link).
	finalThreshold = 256
	maxRounds      = 30
)

// Hello opens a migration stream. Machine describes the VM being sent, so
// that the destination can build it while memory is still being copied:
// it is the architecture's own description (x86: vm.MachineState, arm64:
// arm64.MachineState), which the receiver decodes once Arch matched.
// Devices describes its virtio devices in slot order (VM.VirtioDevices):
// the destination builds its own from its flags and refuses the VM if
// they differ, before any guest memory moves. Arch is the machine's
// architecture; empty means x86_64 (what every x86 source sends, so that
// its hello is the same bytes as before the field existed).
type Hello struct {
	Version int             `json:"version"`
	MemSize uint64          `json:"mem_size"`
	CPUs    int             `json:"cpus"`
	Machine json.RawMessage `json:"machine"`
	Devices []string        `json:"virtio_devices,omitempty"`
	Arch    string          `json:"arch,omitempty"`
}

// HelloArch is the architecture h names (x86_64 when it names none).
func (h *Hello) HelloArch() string {
	if h.Arch == "" {
		return snapshot.ArchX86_64
	}
	return h.Arch
}

// checkArch refuses a hello of another architecture than want.
func checkArch(h *Hello, want string) error {
	got := h.HelloArch()
	switch got {
	case snapshot.ArchX86_64, snapshot.ArchARM64:
	default:
		return fmt.Errorf("the migration source names architecture %q (govmm knows %s and %s)", got, snapshot.ArchX86_64, snapshot.ArchARM64)
	}
	if got != want {
		return fmt.Errorf("the source is an %s VM and this govmm receives %s VMs: a VM cannot migrate across architectures", got, want)
	}
	return nil
}

// Stats describes a finished migration.
type Stats struct {
	Total, Downtime time.Duration
	Bytes, Pages    uint64
	Rounds          int
	// DeviceBytes is the device state sent while the guest ran
	// (DevicePreCopier), before the pause.
	DeviceBytes uint64
	// Verified is set when the destination compared every page with the
	// source's checksums (SendOptions.Verify) and found them equal.
	Verified bool
}

// SendOptions tune a migration's source.
type SendOptions struct {
	// Verify sends a checksum of every guest page once the source is
	// paused, and the destination refuses the VM unless its copy
	// matches (see verify.go). It lengthens the downtime by the time
	// both sides take to checksum guest RAM.
	Verify bool
	// Progress, when set, is called as memory is sent.
	Progress func(done, total uint64)
}

// Dial connects to a destination given as unix:PATH or tcp:HOST:PORT.
func Dial(to string) (net.Conn, error) {
	network, addr, err := splitAddr(to)
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to migration destination %s: %w", to, err)
	}
	return c, nil
}

// Listen listens on unix:PATH or tcp:HOST:PORT. A Unix socket is created
// mode 0600 (owner only) from the start: it is bound inside a fresh 0700
// directory next to PATH, chmod'ed there and then renamed into place, so
// there is no moment at which another user can connect to it.
func Listen(on string) (net.Listener, error) {
	network, addr, err := splitAddr(on)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return unixsock.Listen(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", on, err)
	}
	return ln, nil
}

// CheckAddr validates a unix:PATH or tcp:HOST:PORT address without using it.
func CheckAddr(s string) error {
	_, _, err := splitAddr(s)
	return err
}

func splitAddr(s string) (string, string, error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok || addr == "" || (network != "unix" && network != "tcp") {
		return "", "", fmt.Errorf("migration address %q: want unix:PATH or tcp:HOST:PORT", s)
	}
	return network, addr, nil
}

type countWriter struct {
	w io.Writer
	n uint64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// Send migrates v over conn. On success the caller ends v (the guest now
// runs on the destination); on failure v has been resumed and keeps running.
func Send(conn net.Conn, v VM, progress func(done, total uint64)) (st Stats, err error) {
	return SendWith(conn, v, SendOptions{Progress: progress})
}

// SendWith is Send with options.
func SendWith(conn net.Conn, v VM, opts SendOptions) (st Stats, err error) {
	progress := opts.Progress
	start := time.Now()
	cw := &countWriter{w: conn}
	w := bufio.NewWriterSize(cw, 1<<20)
	mem := v.Memory()
	paused := false
	defer func() {
		if err != nil && (errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
			// The destination hung up: it may have said why first (a
			// refused hello).
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			if t, msg, rerr := readFrame(bufio.NewReader(conn), 1<<16); rerr == nil && t == msgAck && len(msg) > 0 {
				err = fmt.Errorf("destination refused the VM: %s", msg)
			}
		}
		if err != nil {
			_ = v.StopDirtyLog()
			if paused {
				if rerr := v.Resume(); rerr != nil {
					err = fmt.Errorf("%w; and resuming the source failed: %v", err, rerr)
				}
			}
		}
	}()
	arch, machine := v.MigrationMachine()
	mj, err := json.Marshal(machine)
	if err != nil {
		return st, fmt.Errorf("migration hello: %w", err)
	}
	hello := Hello{Version: Version, MemSize: mem.Size(), CPUs: v.NumCPUs(), Machine: mj, Devices: v.VirtioDevices()}
	if arch != snapshot.ArchX86_64 {
		hello.Arch = arch
	}
	h, _ := json.Marshal(hello)
	if err := writeFrame(w, msgHello, h); err != nil {
		return st, err
	}
	v.WarmStateCodec()
	if err := v.StartDirtyLog(); err != nil {
		return st, fmt.Errorf("start dirty page tracking: %w", err)
	}
	// Round 0: every page that is not zero (the destination starts zeroed).
	total := mem.Size()
	var done uint64
	// Pages the host never backed are zero without looking (dirty
	// tracking, already on, catches any the guest writes from now on).
	for i, r := range mem.Regions() {
		maybe := mem.MaybeNonZero(i)
		for off := 0; off < len(r.Host); off += pageSize {
			pg := r.Host[off : off+pageSize]
			if k := off / pageSize; maybe[k/64]&(1<<(k%64)) != 0 && !snapshot.IsZero(pg) {
				if err := sendPages(w, &st, []uint64{r.GPA + uint64(off)}, mem); err != nil {
					return st, err
				}
			}
			done += pageSize
			if progress != nil && done%(16<<20) == 0 {
				progress(done, total)
			}
		}
	}
	for st.Rounds = 1; ; st.Rounds++ {
		dirty, err := v.DirtyPages()
		if err != nil {
			return st, fmt.Errorf("read dirty pages: %w", err)
		}
		if err := sendPages(w, &st, dirty, mem); err != nil {
			return st, err
		}
		if progress != nil {
			progress(total, total)
		}
		if err := sendDevices(w, &st, v); err != nil {
			return st, err
		}
		if len(dirty) < finalThreshold || st.Rounds >= maxRounds {
			break
		}
	}
	pauseAt := time.Now()
	if err := v.Pause(); err != nil {
		return st, fmt.Errorf("pause for the final copy: %w", err)
	}
	paused = true
	// The state is captured before the last dirty pages are read: saving
	// it may write guest RAM (KVM/arm64 stores the ITS tables and LPI
	// pending bits there), and those pages must be in the last round.
	state, err := v.SaveState()
	if err != nil {
		return st, err
	}
	b, err := state.Marshal()
	if err != nil {
		return st, err
	}
	dirty, err := v.DirtyPages()
	if err != nil {
		return st, fmt.Errorf("read dirty pages: %w", err)
	}
	if err := sendPages(w, &st, dirty, mem); err != nil {
		return st, err
	}
	if opts.Verify {
		if err := sendVerify(mem, func(p []byte) error { return writeFrame(w, msgVerify, p) }); err != nil {
			return st, err
		}
	}
	if err := writeFrame(w, msgState, b); err != nil {
		return st, err
	}
	if err := w.WriteByte(msgDone); err != nil {
		return st, err
	}
	if err := w.Flush(); err != nil {
		return st, fmt.Errorf("send to destination: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(conn)
	t, msg, err := readFrame(r, 1<<16)
	if err != nil {
		return st, fmt.Errorf("destination did not confirm: %w", err)
	}
	if t != msgAck {
		return st, fmt.Errorf("destination answered %q instead of an acknowledgement", t)
	}
	if len(msg) > 0 {
		return st, fmt.Errorf("destination refused the VM: %s", msg)
	}
	_ = v.StopDirtyLog()
	st.Verified = opts.Verify
	st.Downtime = time.Since(pauseAt)
	st.Total = time.Since(start)
	st.Bytes = cw.n
	return st, nil
}

func sendPages(w *bufio.Writer, st *Stats, gpas []uint64, mem *memory.Memory) error {
	for len(gpas) > 0 {
		n := min(len(gpas), pagesPerFrame)
		if err := w.WriteByte(msgPages); err != nil {
			return fmt.Errorf("send pages: %w", err)
		}
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], uint32(n))
		w.Write(hdr[:])
		for _, gpa := range gpas[:n] {
			pg, err := mem.Slice(gpa, pageSize)
			if err != nil {
				return err
			}
			var a [8]byte
			binary.LittleEndian.PutUint64(a[:], gpa)
			w.Write(a[:])
			if _, err := w.Write(pg); err != nil {
				return fmt.Errorf("send pages: %w", err)
			}
		}
		st.Pages += uint64(n)
		gpas = gpas[n:]
	}
	return nil
}

// sendDevices sends what v's devices offer while the guest runs, in
// device frames (nothing for a VM that is no DevicePreCopier).
func sendDevices(w *bufio.Writer, st *Stats, v VM) error {
	pc, ok := v.(DevicePreCopier)
	if !ok {
		return nil
	}
	data, err := pc.DevicePreCopy()
	if err != nil {
		return fmt.Errorf("read device state before the pause: %w", err)
	}
	names := make([]string, 0, len(data))
	for n := range data {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b := data[n]
		if len(n) == 0 || len(n) > maxDevName {
			return fmt.Errorf("device state name %q: 1 to %d bytes", n, maxDevName)
		}
		if len(b) == 0 {
			continue
		}
		// A frame's length is 32 bits; a device's pre-copy data is
		// bounded far below (vfio.MaxMigrationData).
		if len(b) > maxState {
			return fmt.Errorf("device %s offers %d bytes of state at once, more than the %d a frame takes", n, len(b), maxState)
		}
		f := make([]byte, 0, 1+len(n)+len(b))
		f = append(append(append(f, byte(len(n))), n...), b...)
		if err := writeFrame(w, msgDev, f); err != nil {
			return err
		}
		st.DeviceBytes += uint64(len(b))
	}
	return nil
}

func writeFrame(w *bufio.Writer, t byte, b []byte) error {
	w.WriteByte(t)
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(b)))
	w.Write(hdr[:])
	_, err := w.Write(b)
	if err != nil {
		return fmt.Errorf("send to destination: %w", err)
	}
	return nil
}

func readFrame(r *bufio.Reader, limit uint32) (byte, []byte, error) {
	t, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return t, nil, err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > limit {
		return t, nil, fmt.Errorf("frame %q of %d bytes exceeds the %d limit", t, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return t, nil, err
	}
	return t, b, nil
}

// readHello reads and checks the hello. It returns the hello it read (nil if
// none) with any error, which is a *HelloError.
func readHello(r *bufio.Reader, opts ReceiveOptions) (*Hello, error) {
	t, b, err := readFrame(r, maxHello)
	if err != nil {
		return nil, &HelloError{fmt.Errorf("read migration hello: %w", err)}
	}
	if t != msgHello {
		return nil, &HelloError{fmt.Errorf("migration stream starts with %q, not a hello", t)}
	}
	var h Hello
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, &HelloError{fmt.Errorf("migration hello: %w", err)}
	}
	if h.Version != Version {
		return &h, &HelloError{fmt.Errorf("migration stream version %d, this govmm speaks %d", h.Version, Version)}
	}
	want := opts.Arch
	if want == "" {
		want = snapshot.HostArch()
	}
	if err := checkArch(&h, want); err != nil {
		return &h, &HelloError{err}
	}
	limit, what := uint64(maxMemSize), "the stream format's"
	if opts.MaxMemSize != 0 {
		limit, what = opts.MaxMemSize, "the receiver's"
	} else if ram := hostRAM(); ram != 0 && ram < limit {
		limit, what = ram, "this host's RAM,"
	}
	switch {
	case h.MemSize == 0 || h.MemSize%pageSize != 0:
		return &h, &HelloError{fmt.Errorf("migration hello announces %d bytes of guest memory, not a positive multiple of 4 KiB", h.MemSize)}
	case h.MemSize > limit:
		return &h, &HelloError{fmt.Errorf("migration hello asks for %d MiB of guest memory, more than %s limit of %d MiB", h.MemSize>>20, what, limit>>20)}
	case opts.MemSize != 0 && h.MemSize != opts.MemSize:
		return &h, &HelloError{fmt.Errorf("the incoming VM has %d MiB of guest memory, not the %d MiB this receiver expects (--memory): a migration cannot change the memory size", h.MemSize>>20, opts.MemSize>>20)}
	case opts.CPUs != 0 && h.CPUs != opts.CPUs:
		return &h, &HelloError{fmt.Errorf("the incoming VM has %d vCPUs, not the %d this receiver expects (--cpus): a migration cannot change the vCPU count", h.CPUs, opts.CPUs)}
	}
	return &h, nil
}

// Incoming is a received VM, not yet started: its memory and state. The
// receiver builds the VM from them and then calls Ack, which tells the
// source whether it may stop.
type Incoming struct {
	Memory *memory.Memory
	State  *snapshot.State
	// VerifiedPages is how many pages matched the source's checksums
	// (0: the source did not ask for verification).
	VerifiedPages uint64
	// DeviceData is the device state the source sent while its guest
	// ran (device frames), by the name of the device's state section, in
	// the order it came.
	DeviceData map[string][]byte
	conn       net.Conn
}

// refuse tells the source on conn why the receiver does not take its
// VM, waiting at most 5 s for the write (a source that stopped reading
// cannot hold the receiver).
func refuse(conn net.Conn, why error) {
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	(&Incoming{conn: conn}).Ack(why)
	conn.SetWriteDeadline(time.Time{})
}

// Ack tells the source the outcome (nil: the destination has the VM).
func (in *Incoming) Ack(failure error) error {
	msg := ""
	if failure != nil {
		msg = failure.Error()
	}
	w := bufio.NewWriter(in.conn)
	if err := writeFrame(w, msgAck, []byte(msg)); err != nil {
		return err
	}
	return w.Flush()
}

// ReceiveOptions bound what a receiver accepts from the stream.
type ReceiveOptions struct {
	// MemSize and CPUs, when not zero, are what the receiving side expects
	// (govmm migrate receive --memory, --cpus): a hello announcing another
	// machine is refused.
	MemSize uint64
	CPUs    int
	// MaxMemSize bounds the guest memory a hello may ask for; 0 means the
	// host's RAM.
	MaxMemSize uint64
	// FrameTimeout is how long the receiver waits for the whole hello and
	// then for each read of the stream to make progress; 0 means
	// DefaultFrameTimeout.
	FrameTimeout time.Duration
	// Arch is the architecture this receiver takes (snapshot.ArchX86_64
	// or ArchARM64); empty means this build's (snapshot.HostArch). A
	// hello naming another is refused before anything else is looked at.
	Arch string
}

// HelloError is a refusal before the destination built anything: the peer
// sent no valid hello (it closed, stayed silent, spoke another protocol or
// version) or announced a machine this receiver does not accept. The
// receiver may wait for another peer.
type HelloError struct{ Err error }

func (e *HelloError) Error() string { return e.Err.Error() }
func (e *HelloError) Unwrap() error { return e.Err }

// hostRAM returns the host's physical memory in bytes (0 if unknown).
func hostRAM() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit)
}

// deadlineReader gives every read of conn a fresh deadline once armed, so
// that a peer that stops sending fails the stream instead of holding the
// receiver forever.
type deadlineReader struct {
	conn    net.Conn
	timeout time.Duration // 0: leave the deadline as it is
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.timeout > 0 {
		if err := r.conn.SetReadDeadline(time.Now().Add(r.timeout)); err != nil {
			return 0, err
		}
	}
	return r.conn.Read(p)
}

// Receive is ReceiveWith with default options: memory bounded by host RAM,
// DefaultFrameTimeout.
func Receive(conn net.Conn, prepare func(Hello) (*memory.Memory, error)) (*Incoming, error) {
	return ReceiveWith(conn, ReceiveOptions{}, prepare)
}

// ReceiveWith reads a migration stream from conn. Once the hello has
// arrived and passed opts it calls prepare (if not nil) for the guest
// memory to fill: the caller can build the destination VM around that
// memory while pages still arrive; without prepare, plain memory of the
// announced size is used. A hello that is missing, invalid or refused is a
// *HelloError, and the refusal's reason is sent to the source. On error
// nothing is kept: the memory is released. An error from prepare is sent
// to the source as the reason; prepare returns a *HelloError to refuse
// the VM it announced (other devices than the receiver's) as a hello
// refusal, so the receiver may wait for another source.
func ReceiveWith(conn net.Conn, opts ReceiveOptions, prepare func(Hello) (*memory.Memory, error)) (in *Incoming, err error) {
	timeout := opts.FrameTimeout
	if timeout <= 0 {
		timeout = DefaultFrameTimeout
	}
	dr := &deadlineReader{conn: conn}
	r := bufio.NewReaderSize(dr, 1<<20)
	// The whole hello within one timeout: a peer trickling bytes cannot
	// hold the receiver either.
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("migration connection: %w", err)
	}
	h, err := readHello(r, opts)
	if err != nil {
		var he *HelloError
		if errors.As(err, &he) && h != nil {
			// A source that sent a hello hears why it was refused.
			refuse(conn, err)
		}
		return nil, err
	}
	dr.timeout = timeout
	want := opts.Arch
	if want == "" {
		want = snapshot.HostArch()
	}
	var mem *memory.Memory
	if prepare != nil {
		mem, err = prepare(*h)
	} else {
		mem, err = memory.New(h.MemSize)
	}
	if err != nil {
		// The source hears why (a *HelloError from prepare is a refusal
		// of this VM, such as other devices than the receiver's; the
		// receiver may wait for another).
		refuse(conn, err)
		return nil, err
	}
	if mem.Size() != h.MemSize {
		mem.Close()
		return nil, fmt.Errorf("migration hello announces %d bytes of memory, the prepared VM has %d", h.MemSize, mem.Size())
	}
	defer func() {
		if err != nil {
			mem.Close()
		}
	}()
	var state []byte
	var verify *verifier
	var devData map[string][]byte
	var devBytes int
	page := make([]byte, 8+pageSize)
	for {
		t, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("migration stream ended early (source gone?): %w", err)
		}
		switch t {
		case msgPages:
			var hdr [4]byte
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return nil, fmt.Errorf("migration stream ended in a page frame: %w", err)
			}
			n := binary.LittleEndian.Uint32(hdr[:])
			if n > pagesPerFrame {
				return nil, fmt.Errorf("page frame of %d pages (limit %d)", n, pagesPerFrame)
			}
			for i := uint32(0); i < n; i++ {
				if _, err := io.ReadFull(r, page); err != nil {
					return nil, fmt.Errorf("migration stream ended in a page: %w", err)
				}
				gpa := binary.LittleEndian.Uint64(page)
				if gpa%pageSize != 0 || !mem.IsRAM(gpa, pageSize) {
					return nil, fmt.Errorf("migration page at GPA %#x is not a RAM page", gpa)
				}
				if err := mem.Write(gpa, page[8:]); err != nil {
					return nil, err
				}
			}
		case msgState:
			r.UnreadByte()
			_, b, err := readFrame(r, maxState)
			if err != nil {
				return nil, fmt.Errorf("read migrated state: %w", err)
			}
			state = b
		case msgDev:
			r.UnreadByte()
			_, b, err := readFrame(r, maxState)
			if err != nil {
				return nil, fmt.Errorf("read device state frame: %w", err)
			}
			if len(b) < 1 || int(b[0]) == 0 || len(b) < 1+int(b[0]) {
				return nil, fmt.Errorf("device state frame of %d bytes: no name, or a name longer than the frame", len(b))
			}
			name, data := string(b[1:1+int(b[0])]), b[1+int(b[0]):]
			if devBytes += len(data); devBytes > maxState {
				return nil, fmt.Errorf("the source sent more than %d MiB of device state before its state file", maxState>>20)
			}
			if devData == nil {
				devData = map[string][]byte{}
			}
			devData[name] = append(devData[name], data...)
		case msgVerify:
			r.UnreadByte()
			_, b, err := readFrame(r, maxVerifyFrame)
			if err != nil {
				return nil, fmt.Errorf("read migration checksums: %w", err)
			}
			if verify == nil {
				verify = newVerifier(mem)
			}
			if err := verify.frame(b); err != nil {
				return nil, err
			}
		case msgDone:
			if state == nil {
				return nil, errors.New("migration stream ended without the VM state")
			}
			if verify != nil {
				if err := verify.result(); err != nil {
					// The source hears why and resumes.
					refuse(conn, err)
					return nil, err
				}
			}
			st, err := snapshot.UnmarshalArch(state, want)
			if err != nil {
				return nil, fmt.Errorf("migrated state: %w", err)
			}
			in := &Incoming{Memory: mem, State: st, DeviceData: devData, conn: conn}
			if verify != nil {
				in.VerifiedPages = verify.pages
			}
			return in, nil
		default:
			return nil, fmt.Errorf("unknown migration frame %q", t)
		}
	}
}
