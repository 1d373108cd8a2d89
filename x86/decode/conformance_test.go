package decode

import (
	"bufio"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// decodeTxt finds x86asm's testdata/decode.txt in the module cache.
func decodeTxt(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skipf("go env GOMODCACHE: %v", err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "golang.org/x/arch@v0.33.0/x86/x86asm/testdata/decode.txt")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("decode.txt not in module cache: %v", err)
	}
	return p
}

type txtCase struct {
	code []byte
	size int
	mode int
	asm  string // x86asm's expected output (intel syntax when present)
}

func readDecodeTxt(t *testing.T) []txtCase {
	f, err := os.Open(decodeTxt(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]int{}
	var cases []txtCase
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for strings.Contains(line, "\t\t") {
			line = strings.ReplaceAll(line, "\t\t", "\t")
		}
		fs := strings.SplitN(line, "\t", 4)
		if len(fs) != 4 {
			t.Fatalf("bad line %q", line)
		}
		i := strings.Index(fs[0], "|")
		code, err := hex.DecodeString(fs[0][:i] + fs[0][i+1:])
		if err != nil {
			t.Fatal(err)
		}
		mode, _ := strconv.Atoi(fs[1])
		key := fs[0] + "/" + fs[1]
		if j, ok := seen[key]; ok {
			if fs[2] == "intel" {
				cases[j].asm = fs[3]
			}
			continue
		}
		seen[key] = len(cases)
		cases = append(cases, txtCase{code: code, size: i / 2, mode: mode, asm: fs[3]})
	}
	return cases
}

// x86asmPrefixOnly are the pseudo-instructions x86asm returns (with a nil
// error) for input it cannot decode: a bare prefix.
var x86asmPrefixOnly = map[string]bool{
	"es": true, "cs": true, "ss": true, "ds": true, "fs": true, "gs": true,
	"data16": true, "addr32": true, "lock": true, "rep": true, "repn": true,
}

// x86asmQuirks lists every decode.txt case on which this decoder
// disagrees with x86asm, with the reason (the key is the case's hex bytes
// with the | separator, and the mode). The test fails on a disagreement
// that is not listed, and on a listed case that no longer disagrees.
const (
	quirkVMX    = "x86asm quirk: 0F C7 /6 with a memory operand is VMPTRLD (VMX), valid; x86asm has no VMX"
	quirk82     = "x86asm quirk: opcode 82 (alias of 80) is valid outside 64-bit mode; x86asm rejects it"
	quirkRexRex = "x86asm quirk: a REX prefix followed by another REX is ignored by the CPU (the last one applies); x86asm rejects the pair"
	vendorAMD   = "vendor difference: SYSCALL/SYSRET outside 64-bit mode are #UD on Intel and valid on AMD; decoded as valid here (the emulator refuses them as unsupported)"
)

var x86asmQuirks = map[string]string{
	"0fc730|11223344556677885f5f5f5f5f/32": quirkVMX,
	"0fc730|11223344556677885f5f5f5f5f/64": quirkVMX,
	"26|8211223344556677885f5f5f5f5f5f/32": quirk82,
	"4040|11223344556677885f5f5f5f5f5f/64": quirkRexRex,
	"4048|11223344556677885f5f5f5f5f5f/64": quirkRexRex,
	"0f05|11223344556677885f5f5f5f5f5f/32": vendorAMD,
	"0f07|11223344556677885f5f5f5f5f5f/32": vendorAMD,
}

// TestDecodeTxt checks the decoded length against every distinct case of
// x86asm's decode.txt.
func TestDecodeTxt(t *testing.T) {
	cases := readDecodeTxt(t)
	var agree, bothReject, weReject, quirk, bad int
	reasons := map[string]int{}
	for _, c := range cases {
		var inst Inst
		err := Decode(c.code, c.mode, &inst)
		key := hex.EncodeToString(c.code[:c.size]) + "|" + hex.EncodeToString(c.code[c.size:]) + "/" + strconv.Itoa(c.mode)
		xerr := strings.HasPrefix(c.asm, "error:") || x86asmPrefixOnly[c.asm]
		ok := false
		switch {
		case xerr && (errors.Is(err, ErrInvalid) || errors.Is(err, ErrTooLong)):
			bothReject++
			ok = true
		case !xerr && err == nil && inst.Len == c.size:
			agree++
			ok = true
		case !xerr && errors.Is(err, ErrInvalid) && inst.Len == c.size:
			weReject++
			ok = true
		}
		if ok {
			if why, listed := x86asmQuirks[key]; listed {
				t.Errorf("%s is listed (%s) but agrees now: remove it from x86asmQuirks", key, why)
			}
			continue
		}
		if why, found := x86asmQuirks[key]; found {
			quirk++
			reasons[why]++
			continue
		}
		bad++
		t.Errorf("%s: x86asm %q len %d; we: len %d err %v", key, c.asm, c.size, inst.Len, err)
	}
	t.Logf("decode.txt: %d distinct cases: %d same length, %d rejected by both, %d same length but #UD here (LOCK misuse etc.), %d listed differences (x86asmQuirks), %d disagreements",
		len(cases), agree, bothReject, weReject, quirk, bad)
	for why, n := range reasons {
		t.Logf("  %4d  %s", n, why)
	}
}
