package e2e

import (
	"bytes"
	le64 "encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"govmm/internal/kvmtest"
	"govmm/internal/nested"
)

// Exit statuses of the project's own boot test guests (guests/elf64,
// guests/realmode, guests/testguest): a debug-exit write of V ends govmm
// with status (V<<1)|1.
const (
	statusGuestOK   = 0x10<<1 | 1 // elf64 and testguest success (33)
	statusGuestFail = 0x11<<1 | 1 // a guest's own check failed (35)
	statusRealMode  = 0x12<<1 | 1 // realmode success (37)
	statusCrashed   = 2           // triple fault, emulation failure, ...
	statusBadInput  = 64          // usage or bad kernel file
)

// bootRun runs govmm with the accelerator flags acc followed by args.
func bootRun(t *testing.T, acc []string, args ...string) Result {
	t.Helper()
	full := append([]string{"run", "--test-devices"}, acc...)
	full = append(full, "--serial", "stdio")
	full = append(full, args...)
	r := govmm(t, full...)
	r.Stdout = strings.ReplaceAll(r.Stdout, "\r", "")
	return r
}

// forEachAccel runs fn as a subtest on every accelerator flag set.
func forEachAccel(t *testing.T, fn func(t *testing.T, acc []string)) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { fn(t, acc) })
	}
}

func wantLine(t *testing.T, r Result, line string) {
	t.Helper()
	for _, l := range strings.Split(r.Stdout, "\n") {
		if l == line {
			return
		}
	}
	t.Errorf("guest output lacks the line %q\n%s", line, r)
}

func TestBootELF64(t *testing.T) {
	kernel := guestPath(t, "elf64")
	forEachAccel(t, func(t *testing.T, acc []string) {
		r := bootRun(t, acc, "--kernel", kernel)
		if r.Code != statusGuestOK {
			t.Fatalf("elf64 guest: want exit status %d\n%s", statusGuestOK, r)
		}
		wantLine(t, r, "elf64: hello from long mode")
		wantLine(t, r, "elf64: long mode ok (EFER.LMA=1, CS.L=1)")
		if strings.Contains(r.Stdout, "FAIL") {
			t.Errorf("elf64 guest reports a failure\n%s", r)
		}
	})
}

func TestBootRealMode(t *testing.T) {
	kernel := guestPath(t, "realmode")
	forEachAccel(t, func(t *testing.T, acc []string) {
		r := bootRun(t, acc, "--kernel", kernel)
		if r.Code != statusRealMode {
			t.Fatalf("realmode guest: want exit status %d\n%s", statusRealMode, r)
		}
		wantLine(t, r, "realmode: hello")
	})
}

// guestEscape renders b as testguest's print_bytes does.
func guestEscape(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			s.WriteByte(c)
		} else {
			fmt.Fprintf(&s, "\\x%02x", c)
		}
	}
	return s.String()
}

func TestBootMultibootCmdlineAndModule(t *testing.T) {
	kernel := guestPath(t, "testguest")
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	cases := []struct {
		name    string
		cmdline string
		initrd  []byte
	}{
		{"small", "test=cmdline console=ttyS0 key=value-with-dashes quiet", []byte("initrd: \"module zero\"\x00\x01\xff\ttail\n")},
		{"3MiB", "test=cmdline", big},
	}
	for _, c := range cases {
		initrdPath := filepath.Join(t.TempDir(), "initrd.img")
		if err := os.WriteFile(initrdPath, c.initrd, 0o644); err != nil {
			t.Fatal(err)
		}
		c := c
		t.Run(c.name, func(t *testing.T) {
			forEachAccel(t, func(t *testing.T, acc []string) {
				r := bootRun(t, acc, "--kernel", kernel, "--cmdline", c.cmdline, "--initrd", initrdPath)
				if r.Code != statusGuestOK {
					t.Fatalf("testguest test=cmdline: want exit status %d\n%s", statusGuestOK, r)
				}
				// The Multiboot command line is the kernel's path, then
				// --cmdline (as GRUB and QEMU's -kernel pass it); the
				// guest's runtime splits off the first word.
				wantLine(t, r, fmt.Sprintf("image: %q", kernel))
				wantLine(t, r, fmt.Sprintf("cmdline: %q len=%d", c.cmdline, len(c.cmdline)))
				wantLine(t, r, "modules: 1")
				re := regexp.MustCompile(`(?m)^module0: len=(\d+) name="[^"]*" data="(.*)"(\.\.\.)?$`)
				m := re.FindStringSubmatch(r.Stdout)
				if m == nil {
					t.Fatalf("no module0 line in the guest output\n%s", r)
				}
				if m[1] != fmt.Sprint(len(c.initrd)) {
					t.Errorf("module0 length: guest saw %s bytes, the initrd has %d", m[1], len(c.initrd))
				}
				if want := guestEscape(c.initrd[:min(len(c.initrd), 256)]); m[2] != want {
					t.Errorf("module0 contents: guest saw %.200q..., want %.200q...", m[2], want)
				}
				h := fnv.New64a()
				h.Write(c.initrd)
				wantLine(t, r, fmt.Sprintf("module0: fnv1a=%#x", h.Sum64()))
			})
		})
	}
}

// TestBootMultibootBelow1MiB boots guests/mblow, a Multiboot kernel linked
// at 0x8000 whose bss covers the usual homes of govmm's Multiboot
// information (0x8000), boot stack (below 0x1f000) and command line
// (0x20000): govmm must put them around the image. The guest checks that
// nothing it was handed overlaps its image or anything else, and prints
// its command line word by word: the kernel's path, then the arguments.
func TestBootMultibootBelow1MiB(t *testing.T) {
	kernel := guestPath(t, "mblow")
	cases := []struct {
		name   string
		initrd []byte
		low    bool // the module goes right above the image, below 1 MiB
	}{
		{"small module", moduleBytes(5000, 1), true},
		{"2MiB module", moduleBytes(2<<20+77, 2), false},
	}
	for _, c := range cases {
		initrdPath := filepath.Join(t.TempDir(), "module")
		if err := os.WriteFile(initrdPath, c.initrd, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Run(c.name, func(t *testing.T) {
			forEachAccel(t, func(t *testing.T, acc []string) {
				r := bootRun(t, acc, "--kernel", kernel, "--cmdline", "alpha=1  beta", "--initrd", initrdPath)
				if r.Code != statusGuestOK || strings.Contains(r.Stdout, "FAIL") {
					t.Fatalf("mblow: want exit status %d and no FAIL\n%s", statusGuestOK, r)
				}
				if img := regexp.MustCompile(`(?m)^mblow: image 0x8000-(0x[0-9a-f]+)$`).FindStringSubmatch(r.Stdout); img == nil || hexAddr(t, img[1]) <= 0x20000 {
					t.Errorf("image line %q, want the image at 0x8000 reaching past the usual command line at 0x20000", img)
				}
				wantLine(t, r, fmt.Sprintf("mblow: argv[0]=%q", kernel))
				wantLine(t, r, `mblow: argv[1]="alpha=1"`)
				wantLine(t, r, `mblow: argv[2]="beta"`)
				wantLine(t, r, "mblow: argc=3")
				wantLine(t, r, "mblow: ok")
				h := fnv.New32a()
				h.Write(c.initrd[:min(len(c.initrd), 4096)])
				re := regexp.MustCompile(`(?m)^mblow: module0 at (0x[0-9a-f]+) len=(\d+) fnv1a4k=(0x[0-9a-f]+)$`)
				m := re.FindStringSubmatch(r.Stdout)
				if m == nil || m[2] != fmt.Sprint(len(c.initrd)) || m[3] != fmt.Sprintf("%#x", h.Sum32()) {
					t.Fatalf("module line %q, want len=%d fnv1a4k=%#x\n%s", m, len(c.initrd), h.Sum32(), r)
				}
				if low := hexAddr(t, m[1]) < 0x100000; low != c.low {
					t.Errorf("module at %s: below 1 MiB is %v, want %v", m[1], low, c.low)
				}
				// The information and the stack went below the image.
				info := regexp.MustCompile(`(?m)^mblow: info=(0x[0-9a-f]+) cmdline=(0x[0-9a-f]+) esp=(0x[0-9a-f]+)$`).FindStringSubmatch(r.Stdout)
				if info == nil {
					t.Fatalf("no info line\n%s", r)
				}
				for _, v := range info[1:] {
					if hexAddr(t, v) > 0x8000 {
						t.Errorf("boot structure at %s, want it below the image at 0x8000 (%s)", v, info[0])
					}
				}
			})
		})
	}
}

func hexAddr(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		t.Fatalf("guest printed a bad address %q: %v", s, err)
	}
	return v
}

// moduleBytes is n recognisable bytes.
func moduleBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i>>12)
	}
	return b
}

func TestBootSMP(t *testing.T) {
	kernel := guestPath(t, "testguest")
	forEachAccel(t, func(t *testing.T, acc []string) {
		for _, n := range []int{2, 4} {
			r := bootRun(t, acc, "--kernel", kernel, "--cpus", fmt.Sprint(n), "--cmdline", fmt.Sprintf("test=smp expect=%d", n))
			if r.Code != statusGuestOK {
				t.Errorf("testguest test=smp with --cpus %d: want exit status %d\n%s", n, statusGuestOK, r)
				continue
			}
			for i := 0; i < n; i++ {
				wantLine(t, r, fmt.Sprintf("cpu %d up", i))
			}
			wantLine(t, r, fmt.Sprintf("smp: %d of %d cpus up", n, n))
		}
	})
}

func TestDebugExitStatus(t *testing.T) {
	kernel := guestPath(t, "testguest")
	forEachAccel(t, func(t *testing.T, acc []string) {
		for _, v := range []int{0, 1, 42, 0x7f} {
			r := bootRun(t, acc, "--kernel", kernel, "--cmdline", fmt.Sprintf("test=exit code=%d", v))
			if want := v<<1 | 1; r.Code != want {
				t.Errorf("guest wrote %#x to the debug-exit port: want exit status %d\n%s", v, want, r)
			}
			wantLine(t, r, fmt.Sprintf("exit: code=%d", v))
		}
	})
}

func TestTripleFault(t *testing.T) {
	kernel := guestPath(t, "testguest")
	forEachAccel(t, func(t *testing.T, acc []string) {
		// govmm() fails the test if the run outlives its timeout: no hang.
		mark := nested.ShutdownMark()
		r := bootRun(t, acc, "--kernel", kernel, "--cmdline", "test=triplefault")
		if r.Code != statusCrashed {
			t.Fatalf("triple fault: want exit status %d (guest crashed)\n%s", statusCrashed, r)
		}
		wantLine(t, r, "triplefault: loading a null IDT and faulting")
		if !strings.Contains(strings.ToLower(r.Stderr), "triple fault") {
			t.Errorf("the error does not say the guest triple-faulted\n%s", r)
		}
		// KVM on AMD (nested KVM on TCG included) resets the vCPU on a
		// triple fault: RIP 0xfff0 is then not where the guest faulted,
		// and the message must say so rather than name it.
		if strings.Contains(r.Stderr, "RIP 0xfff0") && !strings.Contains(r.Stderr, "reset state") {
			t.Errorf("the error names the reset vector as the faulting RIP without saying the state was lost\n%s", r)
		}
		// In L1, its KVM traced the shutdown exit with the RIP that
		// faulted (what the e2e tests print for any triple fault), and
		// it is the test guest's, not the reset vector; the kprobe on
		// shutdown_interception read the guest's CR3 from the VMCB.
		if kvmtest.InL1() {
			d := nested.ShutdownExits(mark, 0)
			if !strings.Contains(d, "as far as the trace shows: vCPU 0 at RIP 0x") || regexp.MustCompile(`at RIP 0xfff0\b`).MatchString(d) ||
				!strings.Contains(d, "vmcb_at_shutdown:") || !strings.Contains(d, ", CR3 0x") {
				t.Errorf("L1's trace of the shutdown exit does not name the guest's faulting RIP:\n%s", d)
			}
			t.Logf("L1's trace:%s", d)
		}
	})
}

// hasInsnBytes reports whether msg shows the bytes insn, printed as
// "0f ae 2f", "0F:AE:2F", "0fae2f" or Go's "[15 174 47]".
func hasInsnBytes(msg string, insn []byte) bool {
	flat := strings.ToLower(msg)
	for _, sep := range []string{" ", ":", ",", "-"} {
		flat = strings.ReplaceAll(flat, sep, "")
	}
	if strings.Contains(flat, fmt.Sprintf("%x", insn)) {
		return true
	}
	return strings.Contains(msg, strings.Trim(fmt.Sprint(insn), "[]"))
}

// TestEmulationFailure: an instruction that touches MMIO and that the
// accelerator's instruction emulator lacks (KVM's in the kernel, govmm's on
// MSHV) stops the VM with status 2, the RIP and the instruction bytes.
func TestEmulationFailure(t *testing.T) {
	kernel := guestPath(t, "testguest")
	fld := []byte{0xdd, 0x80, 0x00, 0x01, 0x00, 0x00} // fldl 0x100(%rax)
	forEachAccel(t, func(t *testing.T, acc []string) {
		r := bootRun(t, acc, "--kernel", kernel, "--cmdline", "test=emufail")
		if r.Code != statusCrashed {
			t.Fatalf("fldl from MMIO: want exit status %d (emulation failure)\n%s", statusCrashed, r)
		}
		wantLine(t, r, "emufail: executing fldl 0x100(%rax) (dd 80 00 01 00 00) on MMIO at 0xfeb00000")
		if !hasInsnBytes(r.Stderr, fld) {
			t.Errorf("the error does not show the instruction bytes % x\n%s", fld, r)
		}
		if !strings.Contains(strings.ToLower(r.Stderr), "rip") {
			t.Errorf("the error does not name the RIP\n%s", r)
		}
	})
}

// elfSeg is one PT_LOAD segment of a generated ELF64 image.
type elfSeg struct {
	paddr, memsz uint64
	data         []byte
}

// makeELF64 builds an x86-64 ELF64 executable with the given PT_LOAD
// segments (file data page aligned after the headers) and entry point.
func makeELF64(entry uint64, segs []elfSeg) []byte {
	const ehsize, phentsize = 64, 56
	le := le64.LittleEndian
	var hdr bytes.Buffer
	ident := []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	hdr.Write(ident)
	le64.Write(&hdr, le, uint16(2))         // e_type: EXEC
	le64.Write(&hdr, le, uint16(62))        // e_machine: x86-64
	le64.Write(&hdr, le, uint32(1))         // e_version
	le64.Write(&hdr, le, entry)             // e_entry
	le64.Write(&hdr, le, uint64(ehsize))    // e_phoff
	le64.Write(&hdr, le, uint64(0))         // e_shoff
	le64.Write(&hdr, le, uint32(0))         // e_flags
	le64.Write(&hdr, le, uint16(ehsize))    // e_ehsize
	le64.Write(&hdr, le, uint16(phentsize)) // e_phentsize
	le64.Write(&hdr, le, uint16(len(segs))) // e_phnum
	le64.Write(&hdr, le, uint16(64))        // e_shentsize
	le64.Write(&hdr, le, uint16(0))         // e_shnum
	le64.Write(&hdr, le, uint16(0))         // e_shstrndx
	off := uint64(0x1000)
	var data bytes.Buffer
	for _, s := range segs {
		le64.Write(&hdr, le, uint32(1))           // PT_LOAD
		le64.Write(&hdr, le, uint32(7))           // RWX
		le64.Write(&hdr, le, off)                 // p_offset
		le64.Write(&hdr, le, s.paddr)             // p_vaddr
		le64.Write(&hdr, le, s.paddr)             // p_paddr
		le64.Write(&hdr, le, uint64(len(s.data))) // p_filesz
		le64.Write(&hdr, le, s.memsz)             // p_memsz
		le64.Write(&hdr, le, uint64(0x1000))      // p_align
		data.Write(s.data)
		pad := (0x1000 - len(s.data)%0x1000) % 0x1000
		data.Write(make([]byte, pad))
		off += uint64(len(s.data) + pad)
	}
	img := make([]byte, 0x1000)
	copy(img, hdr.Bytes())
	return append(img, data.Bytes()...)
}

func TestBadKernelFiles(t *testing.T) {
	good, err := os.ReadFile(guestPath(t, "elf64"))
	if err != nil {
		t.Fatal(err)
	}
	hlt := []byte{0xf4, 0xeb, 0xfd} // hlt; jmp .-1
	wrongMagic := append([]byte("\x7fELX"), good[4:]...)
	// A Multiboot image whose header checksum is wrong.
	mb, err := os.ReadFile(guestPath(t, "testguest"))
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(mb, []byte{0x02, 0xb0, 0xad, 0x1b})
	if at < 0 || at+12 > len(mb) {
		t.Fatal("testguest has no Multiboot header")
	}
	mb[at+8] ^= 0xff
	cases := []struct {
		name  string
		image []byte
		args  []string
		// want: the error must mention one of these (lower case).
		want []string
	}{
		{"truncated-header", good[:40], nil, []string{"truncated"}},
		{"truncated-segment", good[:0x1010], nil, []string{"truncated", "beyond the end", "past the end", "outside the file", "extends"}},
		{"wrong-magic", wrongMagic, nil, []string{"magic"}},
		{"overlapping-segments", makeELF64(0x100000, []elfSeg{
			{0x100000, 0x2000, hlt},
			{0x101000, 0x1000, hlt},
		}), nil, []string{"overlap"}},
		{"multiboot-bad-checksum", mb, nil, []string{"checksum", "multiboot"}},
		{"too-big-for-memory", makeELF64(0x100000, []elfSeg{
			{0x100000, 512 << 20, hlt},
		}), []string{"--memory", "64M"}, []string{"memory", "ram", "fit"}},
	}
	for _, c := range cases {
		// A neutral file name: the error quotes the path, which must not be
		// what satisfies the check.
		path := filepath.Join(t.TempDir(), "kernel")
		if err := os.WriteFile(path, c.image, 0o644); err != nil {
			t.Fatal(err)
		}
		c := c
		t.Run(c.name, func(t *testing.T) {
			forEachAccel(t, func(t *testing.T, acc []string) {
				r := bootRun(t, acc, append([]string{"--kernel", path}, c.args...)...)
				if r.Code != statusBadInput {
					t.Fatalf("%s kernel: want exit status %d (bad input)\n%s", c.name, statusBadInput, r)
				}
				t.Logf("%s: %s", c.name, strings.TrimSpace(r.Stderr))
				msg := strings.ToLower(strings.ReplaceAll(r.Stderr, path, "KERNEL"))
				found := false
				for _, w := range c.want {
					found = found || strings.Contains(msg, w)
				}
				if !found {
					t.Errorf("%s kernel: the error should mention one of %q\n%s", c.name, c.want, r)
				}
				if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine") {
					t.Errorf("%s kernel: govmm panicked\n%s", c.name, r)
				}
				if n := strings.Count(strings.TrimSpace(r.Stderr), "\n"); n > 2 {
					t.Errorf("%s kernel: want a short error, got %d lines\n%s", c.name, n+1, r)
				}
			})
		})
	}
}
