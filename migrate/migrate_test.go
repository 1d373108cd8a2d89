package migrate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"govmm/memory"
	"govmm/snapshot"
)

// readAck reads what a receiver told its source: the text of an
// acknowledgement frame, or what arrived instead, quoted.
func readAck(c net.Conn) string {
	ack := make([]byte, 512)
	n, _ := io.ReadAtLeast(c, ack, 6)
	if n < 5 || ack[0] != 'A' {
		return fmt.Sprintf("not an acknowledgement: %q", ack[:n])
	}
	return string(ack[5:n])
}

// stream builds a migration stream by hand.
func stream(memSize uint64, pages map[uint64]byte, state []byte, done bool) []byte {
	var b bytes.Buffer
	frame := func(t byte, p []byte) {
		b.WriteByte(t)
		binary.Write(&b, binary.LittleEndian, uint32(len(p)))
		b.Write(p)
	}
	frame('H', []byte(`{"version":1,"mem_size":`+itoa(memSize)+`,"cpus":1`+hostArchField()+`}`))
	for gpa, v := range pages {
		b.WriteByte('P')
		binary.Write(&b, binary.LittleEndian, uint32(1))
		binary.Write(&b, binary.LittleEndian, gpa)
		b.Write(bytes.Repeat([]byte{v}, pageSize))
	}
	if state != nil {
		frame('S', state)
	}
	if done {
		b.WriteByte('D')
	}
	return b.Bytes()
}

func itoa(v uint64) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(buf[i:])
		}
	}
}

func receive(t testing.TB, b []byte) (*Incoming, error) {
	c1, c2 := net.Pipe()
	// The source also reads what the receiver says back: net.Pipe's writes
	// wait for a reader, so a receiver that refuses the stream early and
	// writes its reason would otherwise wait out the deadline (which held
	// FuzzReceive to one input every 10 s).
	go io.Copy(io.Discard, c1)
	go func() {
		c1.Write(b)
		c1.Close()
	}()
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	return Receive(c2, nil)
}

func validState(t testing.TB) []byte {
	var st snapshot.State
	if err := st.Add("machine", 1, map[string]int{"num_cpus": 1}); err != nil {
		t.Fatal(err)
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReceive(t *testing.T) {
	in, err := receive(t, stream(1<<20, map[uint64]byte{0x3000: 0xab}, validState(t), true))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Memory.Close()
	var b [2]byte
	in.Memory.Read(0x3fff, b[:])
	if b != [2]byte{0xab, 0} {
		t.Fatalf("page contents: % x", b)
	}
	if _, ok := in.State.Find("machine"); !ok {
		t.Fatal("state lost")
	}
}

func TestReceiveRefusesBadStreams(t *testing.T) {
	st := validState(t)
	cases := map[string][]byte{
		"empty":           nil,
		"cut in hello":    stream(1<<20, nil, st, true)[:10],
		"no state":        stream(1<<20, nil, nil, true),
		"no end":          stream(1<<20, nil, st, false),
		"page beyond RAM": stream(1<<20, map[uint64]byte{1 << 30: 1}, st, true),
		"unaligned page":  stream(1<<20, map[uint64]byte{0x3001: 1}, st, true),
		"huge memory":     stream(1<<50, nil, st, true),
		"corrupt state":   stream(1<<20, nil, st[:len(st)-1], true),
		"unknown frame":   append(stream(1<<20, nil, nil, false), 'Z'),
		// A device frame whose name is empty, or longer than the frame.
		"device frame without a name": append(stream(1<<20, nil, nil, false), 'E', 3, 0, 0, 0, 0, 'a', 'b'),
		"device name past the frame":  append(stream(1<<20, nil, nil, false), 'E', 3, 0, 0, 0, 9, 'a', 'b'),
	}
	for name, b := range cases {
		if in, err := receive(t, b); err == nil {
			in.Memory.Close()
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "panic") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzReceive(f *testing.F) {
	f.Add(stream(1<<20, map[uint64]byte{0x1000: 7}, validState(f), true))
	f.Add(stream(1<<20, nil, nil, true))
	f.Add([]byte("H\x05\x00\x00\x00{}"))
	f.Add(verifiedStream(f, noPage))
	// A device's pre-copy data ('E') before the state, as a live
	// migration with a PRE_COPY device sends it.
	dev := stream(1<<20, map[uint64]byte{0x1000: 7}, nil, false)
	name, data := "vfio/0", []byte("pre-copied device data")
	dev = append(dev, 'E')
	dev = binary.LittleEndian.AppendUint32(dev, uint32(1+len(name)+len(data)))
	dev = append(append(append(dev, byte(len(name))), name...), data...)
	st := validState(f)
	dev = append(dev, 'S')
	dev = binary.LittleEndian.AppendUint32(dev, uint32(len(st)))
	f.Add(append(append(dev, st...), 'D'))
	f.Fuzz(func(t *testing.T, b []byte) {
		if in, err := receive(t, b); err == nil {
			in.Memory.Close()
		}
	})
}

// A hello announcing another machine than the receiver expects is refused
// before anything is built, and the source hears why.
func TestReceiveRefusesMemoryMismatch(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	c1.SetDeadline(time.Now().Add(10 * time.Second))
	hello := stream(64<<20, nil, nil, false)
	errc := make(chan error, 1)
	go func() {
		in, err := ReceiveWith(c2, ReceiveOptions{MemSize: 32 << 20}, func(Hello) (*memory.Memory, error) {
			t.Error("prepare called for a refused hello")
			return nil, errors.New("no")
		})
		if in != nil {
			in.Memory.Close()
		}
		errc <- err
	}()
	if _, err := c1.Write(hello); err != nil {
		t.Fatal(err)
	}
	ack := readAck(c1)
	err := <-errc
	var he *HelloError
	if !errors.As(err, &he) || !strings.Contains(err.Error(), "64 MiB") || !strings.Contains(err.Error(), "--memory") {
		t.Fatalf("64 MiB hello with --memory 32M: %v", err)
	}
	if !strings.Contains(ack, "--memory") {
		t.Fatalf("source was told %q", ack)
	}
	// The vCPU count likewise.
	c3, c4 := net.Pipe()
	defer c3.Close()
	go func() { c3.Write(stream(1<<20, nil, nil, false)); c3.Close() }()
	c4.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := ReceiveWith(c4, ReceiveOptions{CPUs: 2}, nil); !errors.As(err, &he) || !strings.Contains(err.Error(), "--cpus") {
		t.Fatalf("1-vCPU hello with --cpus 2: %v", err)
	}
}

// A hello asking for more memory than the host has is refused.
func TestReceiveBoundedByHostRAM(t *testing.T) {
	ram := hostRAM()
	if ram == 0 {
		t.Skip("sysinfo gives no RAM size")
	}
	ask := (ram + 1<<30) &^ (pageSize - 1)
	_, err := receive(t, stream(ask, nil, validState(t), true))
	var he *HelloError
	if !errors.As(err, &he) || !strings.Contains(err.Error(), "RAM") {
		t.Fatalf("hello for %d MiB on a %d MiB host: %v", ask>>20, ram>>20, err)
	}
	c1, c2 := net.Pipe()
	defer c2.Close()
	go func() { c1.Write(stream(2<<20, nil, validState(t), true)); c1.Close() }()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := ReceiveWith(c2, ReceiveOptions{MaxMemSize: 1 << 20}, nil); !errors.As(err, &he) || !strings.Contains(err.Error(), "limit of 1 MiB") {
		t.Fatalf("2 MiB hello with a 1 MiB limit: %v", err)
	}
}

// A peer that connects and says nothing, or stops in the middle, fails the
// receive after the frame timeout instead of holding it forever.
func TestReceiveDeadlines(t *testing.T) {
	opts := ReceiveOptions{FrameTimeout: 200 * time.Millisecond}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	start := time.Now()
	done := make(chan error, 1)
	go func() { _, err := ReceiveWith(c2, opts, nil); done <- err }()
	select {
	case err := <-done:
		var he *HelloError
		if !errors.As(err, &he) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("silent peer: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a silent peer holds the receiver")
	}
	// Silent after a valid hello: the page stream times out too.
	c3, c4 := net.Pipe()
	defer c3.Close()
	defer c4.Close()
	go func() { c3.Write(stream(1<<20, nil, nil, false)) }()
	go func() {
		in, err := ReceiveWith(c4, opts, nil)
		if in != nil {
			in.Memory.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		var he *HelloError
		if err == nil || errors.As(err, &he) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("peer silent after its hello: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a peer silent after its hello holds the receiver")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

// A unix: listener is 0600 whatever the umask.
func TestListenUnixMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "mig.sock")
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("migration listener mode %v under umask 0, want 0600", fi.Mode().Perm())
	}
}

// The hello carries the source's virtio devices to prepare, and a
// prepare that refuses them (other devices than the receiver's) is a
// hello refusal the source hears, before any page is read.
func TestReceiveRefusesDevices(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	c1.SetDeadline(time.Now().Add(10 * time.Second))
	hello := []byte(`{"version":1,"mem_size":1048576,"cpus":1,"virtio_devices":["virtio-blk path=/a","virtio-rng"]` + hostArchField() + `}`)
	var b bytes.Buffer
	b.WriteByte('H')
	binary.Write(&b, binary.LittleEndian, uint32(len(hello)))
	b.Write(hello)
	errc := make(chan error, 1)
	var got []string
	go func() {
		_, err := ReceiveWith(c2, ReceiveOptions{}, func(h Hello) (*memory.Memory, error) {
			got = h.Devices
			return nil, &HelloError{errors.New(`slot 2: the source's "virtio-rng" is missing here`)}
		})
		errc <- err
	}()
	if _, err := c1.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack := readAck(c1)
	var he *HelloError
	if err := <-errc; !errors.As(err, &he) || !strings.Contains(err.Error(), "virtio-rng") {
		t.Fatalf("refused devices: %v", err)
	}
	if len(got) != 2 || got[0] != "virtio-blk path=/a" || got[1] != "virtio-rng" {
		t.Fatalf("prepare saw devices %q", got)
	}
	if !strings.Contains(ack, "is missing here") {
		t.Fatalf("source was told %q", ack)
	}
}

// preCopyVM is a source with a device read while the guest runs: its
// data comes a piece a call, and asking for it once the VM is paused is
// an error.
type preCopyVM struct {
	*fakeVM
	pieces []string
	calls  int
}

func (f *preCopyVM) DevicePreCopy() (map[string][]byte, error) {
	if f.paused {
		f.t.Error("DevicePreCopy after the pause")
	}
	f.calls++
	if len(f.pieces) == 0 {
		return nil, nil
	}
	p := f.pieces[0]
	f.pieces = f.pieces[1:]
	return map[string][]byte{"vfio/0": []byte(p)}, nil
}

// TestSendDevicePreCopy: a source's device data is read once a round,
// before the pause, and the receiver has what was read, in order, by
// device; the stats count it.
func TestSendDevicePreCopy(t *testing.T) {
	src, err := memory.New(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f := &preCopyVM{fakeVM: &fakeVM{t: t, arch: snapshot.ArchX86_64, mem: src, statePg: 0x9000, writePer: 3}, pieces: []string{"head", "er"}}
	st, serr, in, rerr := transfer(t, f, SendOptions{}, ReceiveOptions{Arch: f.arch}, nil)
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	defer in.Memory.Close()
	want := "header"[:min(6, 4*st.Rounds)]
	if got := string(in.DeviceData["vfio/0"]); got != want || len(in.DeviceData) != 1 || st.DeviceBytes != uint64(len(want)) {
		t.Errorf("received %q (%d devices), %d device bytes sent in %d rounds; want %q", got, len(in.DeviceData), st.DeviceBytes, st.Rounds, want)
	}
	if f.calls != st.Rounds {
		t.Errorf("DevicePreCopy called %d times in %d rounds", f.calls, st.Rounds)
	}
	// A source without such devices sends none.
	plain := &fakeVM{t: t, arch: snapshot.ArchX86_64, mem: src, statePg: 0x9000, writePer: 3}
	st, serr, in2, rerr := transfer(t, plain, SendOptions{}, ReceiveOptions{Arch: plain.arch}, nil)
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	defer in2.Memory.Close()
	if in2.DeviceData != nil || st.DeviceBytes != 0 {
		t.Errorf("a VM without pre-copy devices: %v, %d bytes", in2.DeviceData, st.DeviceBytes)
	}
}
