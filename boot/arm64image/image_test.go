package arm64image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// header builds an Image of n bytes with the given header fields.
func image(n int, textOffset, imageSize, flags uint64) []byte {
	b := make([]byte, n)
	le := binary.LittleEndian
	le.PutUint32(b[0:], 0xfa405a4d) // "MZ" + a branch, as real Images start
	le.PutUint64(b[8:], textOffset)
	le.PutUint64(b[16:], imageSize)
	le.PutUint64(b[24:], flags)
	le.PutUint32(b[56:], Magic)
	return b
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestLoad(t *testing.T) {
	img := image(4096, 0, 1<<20, 0b1010) // 4K pages, anywhere
	for _, in := range [][]byte{img, gz(img)} {
		k, err := Load(in)
		if err != nil {
			t.Fatal(err)
		}
		if k.Compressed != IsGzip(in) || !bytes.Equal(k.Image, img) {
			t.Errorf("compressed=%v, image of %d bytes", k.Compressed, len(k.Image))
		}
		if k.TextOffset != 0 || k.ImageSize != 1<<20 || k.PageSize() != 4096 || k.Flags&FlagPhysAnywhere == 0 {
			t.Errorf("header %+v, page size %d", k.Header, k.PageSize())
		}
		if a := k.LoadAddress(0x40000000); a != 0x40000000 {
			t.Errorf("load address %#x", a)
		}
	}
}

func TestOldKernel(t *testing.T) {
	h, err := ParseHeader(image(8192, 0x1234, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if h.TextOffset != 0x80000 || h.ImageSize != 8192 {
		t.Errorf("pre-3.17 header: %+v", h)
	}
	if a := h.LoadAddress(0x40100000); a != 0x40280000 {
		t.Errorf("load address %#x, want 0x40280000", a)
	}
}

func TestReject(t *testing.T) {
	for name, b := range map[string][]byte{
		"short":          image(64, 0, 1<<20, 0)[:63],
		"magic":          append(image(64, 0, 64, 0)[:56], 0, 0, 0, 0, 0, 0, 0, 0),
		"big endian":     image(64, 0, 64, FlagBigEndian),
		"text offset":    image(64, 2<<20, 64, 0),
		"unaligned":      image(64, 4, 64, 0),
		"size too small": image(4096, 0, 100, 0),
		"huge":           image(64, 0, 1<<40, 0),
		"bad gzip":       gz(image(64, 0, 64, 0))[:20],
		"gzip of junk":   gz([]byte("hello")),
		"x86 bzImage":    append(make([]byte, 0x202), "HdrS"...),
	} {
		_, err := Load(b)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), "arm64 Image") {
			t.Errorf("%s: error %q does not say what was being read", name, err)
		}
	}
}

// TestDebianKernel reads the cloud kernel .ci/run downloads, when present.
func TestDebianKernel(t *testing.T) {
	home, _ := os.UserHomeDir()
	dir := filepath.Join(home, ".cache", "govmm", "arm64", "boot")
	if d := os.Getenv("GOVMM_CACHE"); d != "" {
		dir = filepath.Join(d, "arm64", "boot")
	}
	m, _ := filepath.Glob(filepath.Join(dir, "vmlinuz-*"))
	if len(m) == 0 {
		t.Skip("no arm64 kernel in " + dir + " (.ci/run downloads it)")
	}
	b, err := os.ReadFile(m[0])
	if err != nil {
		t.Fatal(err)
	}
	k, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	if k.PageSize() != 4096 || k.ImageSize < uint64(len(k.Image)) || k.TextOffset != 0 {
		t.Errorf("%s: %+v", m[0], k.Header)
	}
	t.Logf("%s: compressed %v, %d bytes, image_size %d, flags %#x", filepath.Base(m[0]), k.Compressed, len(k.Image), k.ImageSize, k.Flags)
}

func FuzzLoad(f *testing.F) {
	f.Add(image(64, 0, 4096, 0b1010))
	f.Add(gz(image(128, 0, 4096, 0)))
	f.Add(image(64, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := Load(b)
		if err != nil {
			return
		}
		if k.ImageSize < uint64(len(k.Image)) || k.TextOffset >= 2<<20 || k.BigEndian() {
			t.Fatalf("accepted an inconsistent header: %+v for %d bytes", k.Header, len(k.Image))
		}
		if a := k.LoadAddress(0x40000000); a%8 != 0 || a < 0x40000000 {
			t.Fatalf("load address %#x", a)
		}
	})
}
