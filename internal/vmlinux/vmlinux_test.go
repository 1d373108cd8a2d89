package vmlinux

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// bzImage builds a file with a setup header whose payload is payload,
// placed after 2 setup sectors plus gap bytes.
func bzImage(payload []byte, gap int) []byte {
	le := binary.LittleEndian
	b := make([]byte, 3*512+gap)
	b[offSetupSects] = 2
	copy(b[offMagic:], "HdrS")
	le.PutUint16(b[offVersion:], 0x020f)
	le.PutUint32(b[offPayloadOffset:], uint32(gap))
	le.PutUint32(b[offPayloadLength:], uint32(len(payload)))
	return append(b, payload...)
}

var kernel = append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel text "), 1000)...)

func TestExtract(t *testing.T) {
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(kernel)
	w.Close()
	// The kernel's build writes the legacy LZ4 frame (lz4 -l).
	var l4 bytes.Buffer
	lw := lz4.NewWriter(&l4)
	if err := lw.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	lw.Write(kernel)
	lw.Close()
	for _, c := range []struct {
		name    string
		payload []byte
	}{{"gzip", gz.Bytes()}, {"lz4", l4.Bytes()}} {
		out, name, err := Extract(bzImage(c.payload, 0x40))
		if err != nil || name != c.name || !bytes.Equal(out, kernel) {
			t.Errorf("%s: %q, %d bytes, %v", c.name, name, len(out), err)
		}
	}
}

func TestExtractRefuses(t *testing.T) {
	var notELF bytes.Buffer
	w := gzip.NewWriter(&notELF)
	w.Write([]byte("plain text"))
	w.Close()
	truncated := bzImage([]byte{0x1f, 0x8b, 8}, 0)
	binary.LittleEndian.PutUint32(truncated[offPayloadLength:], 1<<20)
	old := bzImage(notELF.Bytes(), 0)
	binary.LittleEndian.PutUint16(old[offVersion:], 0x0206)
	for _, c := range []struct {
		name string
		img  []byte
		want string
	}{
		{"not a bzImage", kernel, "not a bzImage"},
		{"old protocol", old, "no payload fields"},
		{"payload past the end", truncated, "outside"},
		{"xz", bzImage([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}, 0), "payload is xz"},
		{"unknown", bzImage([]byte("garbage"), 0), "no compression"},
		{"not ELF", bzImage(notELF.Bytes(), 0), "not ELF"},
		{"corrupt gzip", bzImage(append([]byte{0x1f, 0x8b, 8, 0}, make([]byte, 20)...), 0), "gzip"},
	} {
		if _, _, err := Extract(c.img); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}
