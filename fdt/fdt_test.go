package fdt

import (
	"bytes"
	"encoding/binary"
	"os/exec"
	"strings"
	"testing"

	"govmm/internal/kvmtest"
)

func sample(t testing.TB) []byte {
	w := NewWriter()
	w.Reserve(0x1000, 0x2000)
	w.SetBootCPU(0)
	w.BeginNode("")
	w.PropU32("#address-cells", 2)
	w.PropU32("#size-cells", 2)
	w.PropString("compatible", "linux,dummy-virt")
	w.BeginNode("memory@40000000")
	w.PropString("device_type", "memory")
	w.PropU64("reg", 0x40000000, 0x10000000)
	w.EndNode()
	w.BeginNode("intc@8000000")
	w.PropEmpty("interrupt-controller")
	w.PropU32("#interrupt-cells", 3)
	w.PropU32("phandle", 1)
	w.EndNode()
	w.BeginNode("chosen")
	w.PropString("bootargs", "console=ttyAMA0 x=y")
	w.PropString("compatible", "a", "bc") // "compatible" again: one string-table entry
	w.EndNode()
	w.EndNode()
	b, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	b := sample(t)
	tr, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Version != 17 || int(tr.TotalBytes) != len(b) {
		t.Errorf("version %d total %d (len %d)", tr.Version, tr.TotalBytes, len(b))
	}
	if len(tr.Reserve) != 1 || tr.Reserve[0] != [2]uint64{0x1000, 0x2000} {
		t.Errorf("reserve map %v", tr.Reserve)
	}
	if v, _ := tr.Root.Prop("#address-cells"); !bytes.Equal(v, []byte{0, 0, 0, 2}) {
		t.Errorf("#address-cells = %x", v)
	}
	mem := tr.Lookup("/memory@40000000")
	if mem == nil {
		t.Fatal("no /memory@40000000")
	}
	reg, _ := mem.Prop("reg")
	if len(reg) != 16 || binary.BigEndian.Uint64(reg) != 0x40000000 || binary.BigEndian.Uint64(reg[8:]) != 0x10000000 {
		t.Errorf("memory reg = %x", reg)
	}
	ic := tr.Lookup("/intc@8000000")
	if v, ok := ic.Prop("interrupt-controller"); !ok || len(v) != 0 {
		t.Errorf("interrupt-controller = %x, %v", v, ok)
	}
	ch := tr.Lookup("/chosen")
	if v, _ := ch.Prop("bootargs"); string(v) != "console=ttyAMA0 x=y\x00" {
		t.Errorf("bootargs = %q", v)
	}
	if v, _ := ch.Prop("compatible"); string(v) != "a\x00bc\x00" {
		t.Errorf("compatible = %q", v)
	}
	if n := strings.Count(string(b), "compatible\x00"); n != 1 {
		t.Errorf("the strings block holds \"compatible\" %d times, want 1", n)
	}
}

// TestDTC decompiles the blob with dtc (Debian's device-tree-compiler),
// an independent reader, when it is installed.
func TestDTC(t *testing.T) {
	dtc, err := exec.LookPath("dtc")
	if err != nil {
		if kvmtest.Required() {
			t.Fatal("dtc not installed (apt-get install device-tree-compiler; .ci/run does)")
		}
		t.Skip("dtc not installed (apt-get install device-tree-compiler)")
	}
	cmd := exec.Command(dtc, "-I", "dtb", "-O", "dts", "-")
	cmd.Stdin = bytes.NewReader(sample(t))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dtc: %v\n%s", err, out)
	}
	for _, want := range []string{
		"/memreserve/\t0x0000000000001000 0x0000000000002000;",
		"reg = <0x00 0x40000000 0x00 0x10000000>;",
		"interrupt-controller;",
		`bootargs = "console=ttyAMA0 x=y";`,
		`compatible = "a\0bc";`,
		"#interrupt-cells = <0x03>;",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dtc output lacks %q:\n%s", want, out)
		}
	}
}

func TestWriterErrors(t *testing.T) {
	w := NewWriter()
	w.BeginNode("")
	w.BeginNode("a")
	if _, err := w.Finish(); err == nil {
		t.Error("open nodes accepted")
	}
	w = NewWriter()
	w.BeginNode("root")
	w.EndNode()
	if _, err := w.Finish(); err == nil {
		t.Error("a named root accepted")
	}
	w = NewWriter()
	w.BeginNode("")
	w.PropString("x", "a\x00b")
	w.EndNode()
	if _, err := w.Finish(); err == nil {
		t.Error("a string with a NUL accepted")
	}
}

func TestParseRejects(t *testing.T) {
	b := sample(t)
	for name, mut := range map[string]func([]byte) []byte{
		"short":     func(b []byte) []byte { return b[:20] },
		"magic":     func(b []byte) []byte { b[0] = 0; return b },
		"truncated": func(b []byte) []byte { return b[:len(b)-8] },
		"string offset": func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[32:], 0) // strings block size 0
			return b
		},
	} {
		c := mut(bytes.Clone(b))
		if _, err := Parse(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses writes back into something that parses alike.
		w := NewWriter()
		var walk func(n *Node, root bool)
		walk = func(n *Node, root bool) {
			name := n.Name
			if root {
				name = ""
			}
			w.BeginNode(name)
			for _, p := range n.Props {
				w.Prop(p.Name, p.Value)
			}
			for _, c := range n.Children {
				walk(c, false)
			}
			w.EndNode()
		}
		walk(tr.Root, true)
		out, err := w.Finish()
		if err != nil {
			return // names the writer refuses (empty, with '/') are fine to read
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-encoded tree does not parse: %v", err)
		}
	})
}
