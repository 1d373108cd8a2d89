package bus

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

type regs struct{ last []byte }

func (r *regs) Read(off uint64, d []byte) {
	for i := range d {
		d[i] = byte(off) + byte(i)
	}
}
func (r *regs) Write(off uint64, d []byte) { r.last = append([]byte(nil), d...) }

func TestRouteAndUnclaimed(t *testing.T) {
	var logs bytes.Buffer
	b := New("mmio", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	dev := &regs{}
	if err := b.Register(0x1000, 0x100, "dev", dev); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x10ff, 2, "overlap", dev); err == nil || !strings.Contains(err.Error(), "overlaps dev") {
		t.Fatalf("overlap accepted: %v", err)
	}
	d := make([]byte, 2)
	b.Read(0x1010, d)
	if d[0] != 0x10 || d[1] != 0x11 {
		t.Fatalf("read routed wrong: % x", d)
	}
	b.Write(0x1000, []byte{1, 2, 3, 4})
	if !bytes.Equal(dev.last, []byte{1, 2, 3, 4}) {
		t.Fatalf("write routed wrong: % x", dev.last)
	}
	for i := 0; i < 3; i++ {
		b.Read(0x2000, d)
		b.Write(0x2000, d)
		b.Write(0x3000, d)
	}
	if d[0] != 0xff || d[1] != 0xff {
		t.Fatalf("unclaimed read: % x, want all ones", d)
	}
	if r, w := b.Unclaimed(); r != 3 || w != 6 {
		t.Fatalf("unclaimed counts %d reads %d writes", r, w)
	}
	if n := strings.Count(logs.String(), "unclaimed access"); n != 2 {
		t.Fatalf("logged %d times, want once per address:\n%s", n, logs.String())
	}
}

func TestUnclaimedDoesNotAllocate(t *testing.T) {
	b := New("mmio", slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	d := make([]byte, 4)
	b.Write(0xfeb00000, d)
	if n := testing.AllocsPerRun(1000, func() { b.Write(0xfeb00000, d) }); n != 0 {
		t.Fatalf("a repeated unclaimed write allocates %v times", n)
	}
}
