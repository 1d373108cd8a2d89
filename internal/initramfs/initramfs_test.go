package initramfs

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

type record struct {
	name string
	mode uint32
	data string
}

// parse reads a newc archive the way the kernel's init/initramfs.c does:
// fixed header, name and data each padded to four bytes, up to the trailer.
func parse(t *testing.T, b []byte) []record {
	t.Helper()
	var out []record
	for off := 0; ; {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		if b[off+110+namesize-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		off += (110 + namesize + 3) &^ 3
		data := string(b[off : off+size])
		off += (size + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, record{name, uint32(mode), data})
	}
}

func TestArchive(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := New()
	a.Bytes("/etc/motd", 0o644, []byte("hello"))
	if err := a.File("/usr/bin/tool", src); err != nil {
		t.Fatal(err)
	}
	a.Symlink("/bin/sh", "busybox")
	a.Dir("/proc")
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got := parse(t, buf.Bytes())
	want := []record{
		{"bin", sIFDIR | 0o755, ""},
		{"bin/sh", sIFLNK | 0o777, "busybox"},
		{"etc", sIFDIR | 0o755, ""},
		{"etc/motd", sIFREG | 0o644, "hello"},
		{"proc", sIFDIR | 0o755, ""},
		{"usr", sIFDIR | 0o755, ""},
		{"usr/bin", sIFDIR | 0o755, ""},
		{"usr/bin/tool", sIFREG | 0o755, "#!/bin/sh\necho hi\n"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d records %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if err := a.File("/x", filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing source file was accepted")
	}
}
