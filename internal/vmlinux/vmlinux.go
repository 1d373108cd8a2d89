// Package vmlinux takes the kernel ELF (vmlinux) out of a Linux x86
// bzImage, as the kernel's scripts/extract-vmlinux does. The tests use it
// to boot the same kernel through PVH, and the boot benchmark to measure
// how long the guest alone takes when nothing decompresses it: the floor
// under any VMM's boot time. govmm itself boots the bzImage as it is.
package vmlinux

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// Setup header fields (Documentation/arch/x86/boot.rst).
const (
	offSetupSects    = 0x1f1
	offMagic         = 0x202 // "HdrS"
	offVersion       = 0x206
	offPayloadOffset = 0x248 // from the protected-mode code (protocol 2.08+)
	offPayloadLength = 0x24c
	minVersion       = 0x0208
)

// maxSize bounds the decompressed kernel: Debian's is 53 MB.
const maxSize = 512 << 20

// The payload's compression, by its first bytes, as the kernel's
// decompressors and extract-vmlinux recognise them.
var formats = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}}, // the legacy LZ4 frame the kernel's Makefile writes
	{"bzip2", []byte("BZh")},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"lzma", []byte{0x5d, 0, 0}},
	{"lzo", []byte{0x89, 'L', 'Z', 'O'}},
}

// Extract returns the ELF kernel inside bzImage and the name of the
// payload's compression. Payloads in gzip, LZ4 and bzip2 are decompressed;
// xz, zstd, lzma and lzo are named in the error. The kernel's relocation
// table, which the build appends to the ELF before compressing, is
// returned with it (a loader reads the ELF's headers and ignores it).
func Extract(bzImage []byte) ([]byte, string, error) {
	le := binary.LittleEndian
	if len(bzImage) < offPayloadLength+4 || string(bzImage[offMagic:offMagic+4]) != "HdrS" {
		return nil, "", errors.New("not a bzImage: no \"HdrS\" setup header at 0x202")
	}
	if v := le.Uint16(bzImage[offVersion:]); v < minVersion {
		return nil, "", fmt.Errorf("boot protocol %d.%02d has no payload fields (2.08 and later do)", v>>8, v&0xff)
	}
	sects := int(bzImage[offSetupSects])
	if sects == 0 {
		sects = 4
	}
	start := (sects+1)*512 + int(le.Uint32(bzImage[offPayloadOffset:]))
	n := int(le.Uint32(bzImage[offPayloadLength:]))
	if start < 0 || n <= 0 || start > len(bzImage) || n > len(bzImage)-start {
		return nil, "", fmt.Errorf("payload at %#x, %d bytes, lies outside the %d-byte file", start, n, len(bzImage))
	}
	payload := bzImage[start : start+n]
	name := ""
	for _, f := range formats {
		if bytes.HasPrefix(payload, f.magic) {
			name = f.name
			break
		}
	}
	var r io.Reader
	switch name {
	case "gzip":
		z, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, name, fmt.Errorf("gzip payload: %w", err)
		}
		r = z
	case "lz4":
		r = lz4.NewReader(bytes.NewReader(payload))
	case "bzip2":
		r = bzip2.NewReader(bytes.NewReader(payload))
	case "":
		return nil, "", fmt.Errorf("payload starts % x: no compression the kernel builds with", payload[:min(6, len(payload))])
	default:
		return nil, name, fmt.Errorf("payload is %s: only gzip, lz4 and bzip2 are decompressed here", name)
	}
	out, err := io.ReadAll(io.LimitReader(r, maxSize+1))
	if err != nil {
		return nil, name, fmt.Errorf("decompress the %s payload: %w", name, err)
	}
	if len(out) > maxSize {
		return nil, name, fmt.Errorf("the %s payload decompresses to more than %d MiB", name, maxSize>>20)
	}
	if !bytes.HasPrefix(out, []byte("\x7fELF")) {
		return nil, name, fmt.Errorf("the %s payload decompresses to %d bytes that are not ELF (start % x)", name, len(out), out[:min(4, len(out))])
	}
	return out, name, nil
}
