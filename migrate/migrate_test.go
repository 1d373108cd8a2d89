package migrate

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"govmm/snapshot"
)

// stream builds a migration stream by hand.
func stream(memSize uint64, pages map[uint64]byte, state []byte, done bool) []byte {
	var b bytes.Buffer
	frame := func(t byte, p []byte) {
		b.WriteByte(t)
		binary.Write(&b, binary.LittleEndian, uint32(len(p)))
		b.Write(p)
	}
	frame('H', []byte(`{"version":1,"mem_size":`+itoa(memSize)+`,"cpus":1}`))
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
	f.Fuzz(func(t *testing.T, b []byte) {
		if in, err := receive(t, b); err == nil {
			in.Memory.Close()
		}
	})
}
