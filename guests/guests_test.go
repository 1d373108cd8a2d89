package guests

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"govmm/boot/arm64image"
)

func TestImage(t *testing.T) {
	names := Names()
	if len(names) == 0 {
		t.Fatal("no embedded guest images")
	}
	for _, n := range names {
		if _, err := Image(n); err != nil && !strings.Contains(err.Error(), "ambiguous") {
			t.Errorf("Image(%q): %v", n, err)
		}
	}
	if runtime.GOARCH == "arm64" {
		// The arm64 build embeds only the arm64 guests.
		if _, err := Image("probe"); err == nil {
			t.Error("the arm64 build embeds the x86 probe")
		}
		return
	}
	img, err := Image("probe")
	if err != nil {
		t.Fatalf("Image(probe): %v", err)
	}
	if !bytes.HasPrefix(img, []byte("\x7fELF\x01")) {
		t.Errorf("probe is not an ELF32 image: % x", img[:8])
	}
	byFile, err := Image("probe.elf")
	if err != nil || !bytes.Equal(img, byFile) {
		t.Errorf("Image(probe.elf) differs from Image(probe): %v", err)
	}
	_, err = Image("no-such-guest")
	if err == nil || !strings.Contains(err.Error(), "no-such-guest") || !strings.Contains(err.Error(), "probe") {
		t.Errorf("Image(no-such-guest) error = %v, want one naming the guest and the available images", err)
	}
}

// TestBlobsUpToDate rebuilds every guest into a temporary directory and
// fails if a committed blob in bin/ differs (or is missing, or extra).
func TestBlobsUpToDate(t *testing.T) {
	for _, tool := range []string{"gcc", "make", "objcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
				t.Fatalf("%s not found (needed to check the committed guest blobs): %v", tool, err)
			}
			t.Skipf("%s not found: cannot rebuild the guests", tool)
		}
	}
	// The arm64 guests need Debian's cross compiler (gcc-aarch64-linux-gnu).
	args := []string{"-s", "-j2"}
	arm64 := true
	for _, tool := range []string{"aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
				t.Fatalf("%s not found (needed to check bin/arm64probe.img; apt-get install gcc-aarch64-linux-gnu): %v", tool, err)
			}
			arm64 = false
		}
	}
	if !arm64 {
		t.Log("aarch64-linux-gnu-gcc not found: the arm64 guests (bin/*.img) are not rebuilt or compared (apt-get install gcc-aarch64-linux-gnu)")
		args = append(args, "ARM64_GUESTS=")
	}
	tmp := t.TempDir()
	args = append(args, "BIN="+filepath.Join(tmp, "bin"), "BUILD="+filepath.Join(tmp, "build"))
	out, err := exec.Command("make", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("make: %v\n%s", err, out)
	}
	built, err := os.ReadDir(filepath.Join(tmp, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range built {
		seen[e.Name()] = true
		want, err := os.ReadFile(filepath.Join(tmp, "bin", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("bin", e.Name()))
		if err != nil {
			t.Errorf("bin/%s is not committed (run make -C guests): %v", e.Name(), err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("bin/%s is stale: rebuilding gives different bytes (run make -C guests)", e.Name())
		}
	}
	committed, err := os.ReadDir("bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range committed {
		f := e.Name()
		if !arm64 && strings.HasSuffix(f, ".img") {
			continue
		}
		if !seen[f] {
			t.Errorf("bin/%s is not produced by make -C guests (stale leftover?)", f)
		}
	}
}

// TestARM64ProbeImage checks that the committed arm64 probe is a Linux
// arm64 Image as the boot protocol and govmm's loader read it: a branch
// over the header, the magic at 0x38, text_offset 0, an image_size that
// covers the file (and the BSS), little endian, 4K pages, placeable
// anywhere.
func TestARM64ProbeImage(t *testing.T) {
	img, err := Image("arm64probe")
	if err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile("bin/arm64probe.img")
	if err != nil || !bytes.Equal(img, disk) {
		t.Fatalf("the embedded arm64probe differs from bin/arm64probe.img: %v", err)
	}
	h, err := arm64image.ParseHeader(img)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if code0 := le.Uint32(img); code0>>26 != 0b000101 {
		t.Errorf("code0 %#08x is not a B instruction", code0)
	} else if off := int64(int32(code0<<6)>>6) * 4; off < arm64image.HeaderSize || off >= int64(len(img)) {
		t.Errorf("code0 branches to %#x: not past the header into the image", off)
	}
	if m := le.Uint32(img[0x38:]); m != arm64image.Magic {
		t.Errorf("magic %#x at 0x38", m)
	}
	if h.TextOffset != 0 || le.Uint64(img[8:]) != 0 {
		t.Errorf("text_offset %#x, want 0", h.TextOffset)
	}
	if h.ImageSize < uint64(len(img)) || h.ImageSize%4096 != 0 || h.ImageSize > 4<<20 {
		t.Errorf("image_size %#x for a %d-byte file: want a multiple of 4 KiB covering it, at most 4 MiB", h.ImageSize, len(img))
	}
	if h.ImageSize == uint64(len(img)) {
		t.Errorf("image_size %#x equals the file size: the BSS (stacks) is not counted", h.ImageSize)
	}
	if h.BigEndian() || h.PageSize() != 4096 || h.Flags&arm64image.FlagPhysAnywhere == 0 {
		t.Errorf("flags %#x: want little endian, 4K pages, anywhere", h.Flags)
	}
	if r := le.Uint32(img[60:]); r != 0 {
		t.Errorf("res5 (PE header offset) %#x, want 0: the probe is no EFI application", r)
	}
	if !bytes.Contains(img, []byte("--- probe report begin ---")) {
		t.Error("the image lacks the report marker")
	}
}

// TestARM64BuildEmbedsOnlyARM64 checks what each build embeds: the arm64
// build only the arm64 images (bin/*.img), any other build every blob.
func TestARM64BuildEmbedsOnlyARM64(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	for _, arch := range []string{"arm64", "amd64"} {
		cmd := exec.Command(goTool, "list", "-f", "{{join .EmbedFiles \" \"}}", ".")
		cmd.Env = append(os.Environ(), "GOARCH="+arch, "CGO_ENABLED=0")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GOARCH=%s go list: %v", arch, err)
		}
		embedded := strings.Fields(string(out))
		committed, err := os.ReadDir("bin")
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, e := range committed {
			if arch != "arm64" || strings.HasSuffix(e.Name(), ".img") {
				want = append(want, "bin/"+e.Name())
			}
		}
		if strings.Join(embedded, " ") != strings.Join(want, " ") {
			t.Errorf("GOARCH=%s embeds %v, want %v", arch, embedded, want)
		}
	}
}
