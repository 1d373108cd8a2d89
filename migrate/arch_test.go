package migrate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/memory"
	"govmm/snapshot"
)

// hostArchField is the hello's arch field for a stream this host's
// receiver takes by default (none for x86_64).
func hostArchField() string {
	if a := snapshot.HostArch(); a != snapshot.ArchX86_64 {
		return `,"arch":"` + a + `"`
	}
	return ""
}

// helloFrame frames a hello.
func helloFrame(hello string) []byte {
	var b bytes.Buffer
	b.WriteByte('H')
	binary.Write(&b, binary.LittleEndian, uint32(len(hello)))
	b.WriteString(hello)
	return b.Bytes()
}

// A hello of another architecture is refused by name before prepare
// builds anything or a page is read, and the source hears why; a hello
// naming an architecture govmm does not know is refused too.
func TestReceiveRefusesOtherArch(t *testing.T) {
	for _, c := range []struct {
		name, hello, receiver, want string
	}{
		{"arm64 source, x86 receiver", `{"version":1,"mem_size":1048576,"cpus":2,"machine":{"mem_size":1048576,"num_cpus":2,"mpidrs":[0,1]},"arch":"arm64"}`,
			snapshot.ArchX86_64, "the source is an arm64 VM and this govmm receives x86_64 VMs"},
		{"x86 source (no arch), arm64 receiver", `{"version":1,"mem_size":1048576,"cpus":1,"machine":{"mem_size":1048576,"num_cpus":1,"accel":"kvm"}}`,
			snapshot.ArchARM64, "the source is an x86_64 VM and this govmm receives arm64 VMs"},
		{"x86 source (named), arm64 receiver", `{"version":1,"mem_size":1048576,"cpus":1,"machine":{},"arch":"x86_64"}`,
			snapshot.ArchARM64, "the source is an x86_64 VM and this govmm receives arm64 VMs"},
		{"unknown arch", `{"version":1,"mem_size":1048576,"cpus":1,"machine":{},"arch":"riscv64"}`,
			snapshot.ArchARM64, `names architecture "riscv64"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()
			c1.SetDeadline(time.Now().Add(10 * time.Second))
			errc := make(chan error, 1)
			go func() {
				opts := ReceiveOptions{Arch: c.receiver}
				_, err := ReceiveWith(c2, opts, func(Hello) (*memory.Memory, error) {
					t.Error("prepare called for a hello of another architecture")
					return nil, errors.New("no")
				})
				errc <- err
			}()
			// A page follows the hello: the receiver must refuse
			// before it reads it.
			b := append(helloFrame(c.hello), 'P')
			if _, err := c1.Write(b); err != nil {
				t.Fatal(err)
			}
			ack := readAck(c1)
			err := <-errc
			var he *HelloError
			if !errors.As(err, &he) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("receiver: %v, want a HelloError naming %q", err, c.want)
			}
			if !strings.Contains(ack, c.want) {
				t.Fatalf("source was told %q, want %q", ack, c.want)
			}
		})
	}
}

// fakeVM is a migration source without an accelerator: guest RAM in the
// arm64 layout (or x86's), a "guest" that writes pages between rounds,
// and a dirty log kept by the VMM's log alone (the accelerator's bitmap
// is empty). Its SaveState writes a page of guest RAM, as KVM/arm64's
// ITS table save does.
type fakeVM struct {
	t        *testing.T
	arch     string
	mem      *memory.Memory
	mu       sync.Mutex
	paused   bool
	logging  bool
	rounds   int
	resumed  int
	statePg  uint64
	writePer int // pages the "guest" writes per round
	// loseWrite leaves the first write of each round out of the dirty
	// log, as a dirty tracking that misses writes would.
	loseWrite bool
}

func (f *fakeVM) Memory() *memory.Memory { return f.mem }
func (f *fakeVM) NumCPUs() int           { return 2 }
func (f *fakeVM) Pause() error           { f.paused = true; return nil }
func (f *fakeVM) Resume() error          { f.paused = false; f.resumed++; return nil }
func (f *fakeVM) StartDirtyLog() error {
	f.logging = true
	return f.mem.StartDirtyLog()
}
func (f *fakeVM) StopDirtyLog() error { f.logging = false; f.mem.StopDirtyLog(); return nil }

// guestWrite writes n pages with the round's number, as a running guest
// would between two reads of the dirty log.
func (f *fakeVM) guestWrite(n int) {
	base := f.mem.Regions()[0].GPA
	for i := range n {
		gpa := base + uint64((f.rounds*7+i*13)%64)*memory.PageSize
		pg := bytes.Repeat([]byte{byte(0x40 + f.rounds)}, memory.PageSize)
		f.mem.Write(gpa, pg)
		if !f.loseWrite || i > 0 {
			f.mem.MarkDirty(gpa, memory.PageSize)
		}
	}
}

func (f *fakeVM) DirtyPages() ([]uint64, error) {
	if !f.logging {
		f.t.Error("DirtyPages with the log off")
	}
	if !f.paused {
		f.rounds++
		f.guestWrite(f.writePer)
	}
	return f.mem.CollectDirty(func(gpa uint64) ([]uint64, error) { return nil, nil })
}

func (f *fakeVM) SaveState() (*snapshot.State, error) {
	if !f.paused {
		return nil, errors.New("not paused")
	}
	// KVM/arm64 writes the ITS tables into guest RAM here.
	f.mem.Write(f.statePg, bytes.Repeat([]byte{0x17}, memory.PageSize))
	f.mem.MarkDirty(f.statePg, memory.PageSize)
	st := &snapshot.State{}
	if f.arch != snapshot.ArchX86_64 {
		if err := st.SetArch(f.arch); err != nil {
			return nil, err
		}
	}
	if err := st.Add("machine", 1, map[string]int{"num_cpus": 2}); err != nil {
		return nil, err
	}
	return st, nil
}

func (f *fakeVM) VirtioDevices() []string { return []string{"virtio-blk path=/img bytes=1048576"} }
func (f *fakeVM) MigrationMachine() (string, any) {
	return f.arch, map[string]any{"mem_size": f.mem.Size(), "num_cpus": 2}
}
func (f *fakeVM) WarmStateCodec() {}

// TestSendReceiveARM64 moves a fake arm64 machine (RAM at 1 GiB) through
// Send and ReceiveWith: the hello names arm64, the receiver of arm64
// takes it and builds its memory in the arm64 layout, every page the
// "guest" wrote during the rounds arrives, and so does the page SaveState
// wrote after the pause (the state is captured before the last dirty
// pages are read).
func TestSendReceiveARM64(t *testing.T) {
	const ramBase, size = 0x4000_0000, 1 << 20
	src, err := memory.NewAt(ramBase, size, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	src.Write(ramBase+0x5000, []byte("before the migration"))
	f := &fakeVM{t: t, arch: snapshot.ArchARM64, mem: src, statePg: ramBase + 0x9000, writePer: 3}
	var hello Hello
	st, err, in, rerr := transfer(t, f, SendOptions{}, ReceiveOptions{Arch: snapshot.ArchARM64}, func(hh Hello) (*memory.Memory, error) {
		// The machine arrives in the architecture's own format.
		var ms struct {
			NumCPUs int `json:"num_cpus"`
		}
		if err := json.Unmarshal(hh.Machine, &ms); err != nil || ms.NumCPUs != 2 {
			return nil, &HelloError{errors.New("bad machine")}
		}
		hello = hh
		return memory.NewAt(ramBase, hh.MemSize, memory.Options{})
	})
	if err != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", err, rerr)
	}
	defer in.Memory.Close()
	if hello.Arch != snapshot.ArchARM64 || hello.CPUs != 2 || len(hello.Devices) != 1 {
		t.Errorf("hello %+v", hello)
	}
	if a, _ := in.State.Arch(); a != snapshot.ArchARM64 {
		t.Errorf("received state of architecture %q", a)
	}
	if !bytes.Equal(in.Memory.Regions()[0].Host, src.Regions()[0].Host) {
		t.Errorf("destination memory differs from the source's")
	}
	pg, _ := in.Memory.Slice(f.statePg, 1)
	if pg[0] != 0x17 {
		t.Errorf("the page SaveState wrote after the pause did not arrive (%#x)", pg[0])
	}
	if st.Rounds < 1 || st.Pages == 0 || f.resumed != 0 || f.logging {
		t.Errorf("stats %+v, resumed %d, still logging %v", st, f.resumed, f.logging)
	}
	t.Logf("%d rounds, %d pages, %d bytes", st.Rounds, st.Pages, st.Bytes)
}

// An x86 source's hello is what it was before the arch field existed:
// no "arch" key, the machine as vm.MachineState marshals it inline.
func TestX86HelloUnchanged(t *testing.T) {
	mem, err := memory.New(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	f := &fakeVM{t: t, arch: snapshot.ArchX86_64, mem: mem, statePg: 0x9000}
	c1, c2 := net.Pipe()
	defer c1.Close()
	go func() {
		defer c2.Close()
		r := make([]byte, 1<<16)
		c2.Read(r[:5])
		n := binary.LittleEndian.Uint32(r[1:5])
		var got bytes.Buffer
		buf := make([]byte, n)
		for got.Len() < int(n) {
			k, err := c2.Read(buf[:int(n)-got.Len()])
			if err != nil {
				break
			}
			got.Write(buf[:k])
		}
		want := `{"version":1,"mem_size":1048576,"cpus":2,"machine":{"mem_size":1048576,"num_cpus":2},"virtio_devices":["virtio-blk path=/img bytes=1048576"]}`
		if got.String() != want {
			t.Errorf("x86 hello\n%s\nwant\n%s", got.String(), want)
		}
	}()
	c1.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := Send(c1, f, nil); err == nil {
		t.Fatal("send to a peer that hung up succeeded")
	}
	if f.resumed != 1 && f.paused {
		t.Errorf("the source was left paused")
	}
}
