package post

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func TestLastCodeAndCount(t *testing.T) {
	var logbuf bytes.Buffer
	d := New(slog.New(slog.NewTextHandler(&logbuf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	b := []byte{0}
	d.Read(0, b)
	if b[0] != 0 {
		t.Fatalf("initial read %#x, want 0", b[0])
	}
	d.Write(0, []byte{0x12})
	d.Write(0, []byte{0x34, 0x56}) // 16-bit write: low byte is the code
	d.Read(0, b)
	if b[0] != 0x34 {
		t.Fatalf("read %#x, want 0x34", b[0])
	}
	if c, n := d.LastCode(); c != 0x34 || n != 2 {
		t.Fatalf("LastCode = %#x, %d; want 0x34, 2", c, n)
	}
	w := []byte{0, 0}
	d.Read(0, w)
	if w[0] != 0x34 || w[1] != 0xff {
		t.Fatalf("16-bit read = %x, want 34ff", w)
	}
	if !strings.Contains(logbuf.String(), "code=0x34") {
		t.Fatalf("debug log lacks code: %q", logbuf.String())
	}
}

func TestNoLogAboveDebug(t *testing.T) {
	var logbuf bytes.Buffer
	d := New(slog.New(slog.NewTextHandler(&logbuf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	d.Write(0, []byte{1})
	if logbuf.Len() != 0 {
		t.Fatalf("logged at info level: %q", logbuf.String())
	}
}

func TestSaveRestore(t *testing.T) {
	d := New(nil)
	d.Write(0, []byte{0xab})
	d.Write(0, []byte{0xcd})
	b, err := json.Marshal(d.Save())
	if err != nil {
		t.Fatal(err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	d2 := New(nil)
	if err := d2.Restore(s); err != nil {
		t.Fatal(err)
	}
	if d2.Save() != (State{LastCode: 0xcd, Writes: 2}) {
		t.Fatalf("restored %+v", d2.Save())
	}
}

func FuzzAccess(f *testing.F) {
	f.Add([]byte{0, 1, 1, 0x55})
	f.Add([]byte{0, 2, 0, 0, 1, 1, 1, 9})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d := New(slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
		var want uint8
		var writes uint64
		for len(ops) >= 4 {
			size := []int{1, 2, 4}[int(ops[0])%3]
			write := ops[1]&1 == 1
			val := ops[2]
			ops = ops[4:]
			buf := make([]byte, size)
			if write {
				buf[0] = val
				d.Write(0, buf)
				want, writes = val, writes+1
			} else {
				d.Read(0, buf)
				if buf[0] != want {
					t.Fatalf("read %#x want %#x", buf[0], want)
				}
			}
		}
		if c, n := d.LastCode(); c != want || n != writes {
			t.Fatalf("LastCode %#x,%d want %#x,%d", c, n, want, writes)
		}
	})
}
