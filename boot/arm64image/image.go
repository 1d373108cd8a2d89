// Package arm64image reads a Linux arm64 kernel in the format the arm64
// boot protocol defines (Documentation/arch/arm64/booting.rst): the flat
// "Image" with its 64-byte header, or Image.gz, the gzip-compressed Image
// Debian ships as /boot/vmlinuz. It says where the image must be placed
// and how much memory it occupies once running.
package arm64image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size of the arm64 Image header.
const HeaderSize = 64

// Magic is the header's magic number ("ARM\x64", little endian).
const Magic = 0x644d5241

// MaxImageSize bounds a decompressed Image: a gzip bomb offered as a kernel
// is refused instead of filling host memory.
const MaxImageSize = 512 << 20

// Header is the decoded Image header.
type Header struct {
	// TextOffset is the offset from a 2 MiB aligned base at which the
	// image must be placed (0 for kernels since 5.x, 0x80000 before 3.17).
	TextOffset uint64
	// ImageSize is the memory the kernel occupies from its load address,
	// BSS included.
	ImageSize uint64
	// Flags: bit 0 big-endian, bits 1-2 page size, bit 3 may be placed
	// anywhere in RAM (otherwise as low as possible).
	Flags uint64
}

// Header flag fields.
const (
	FlagBigEndian    = 1 << 0
	FlagPageSizeMask = 3 << 1
	FlagPhysAnywhere = 1 << 3
)

// BigEndian reports whether the kernel is built big endian.
func (h Header) BigEndian() bool { return h.Flags&FlagBigEndian != 0 }

// PageSize is the kernel's page size in bytes, or 0 when unspecified.
func (h Header) PageSize() int {
	switch (h.Flags & FlagPageSizeMask) >> 1 {
	case 1:
		return 4 << 10
	case 2:
		return 16 << 10
	case 3:
		return 64 << 10
	}
	return 0
}

// Kernel is a parsed arm64 kernel.
type Kernel struct {
	Header
	// Image is the (decompressed) Image, header included; it is copied to
	// the load address as is.
	Image []byte
	// Compressed is true when the input was Image.gz.
	Compressed bool
}

// IsGzip reports whether b starts like a gzip stream.
func IsGzip(b []byte) bool { return len(b) >= 3 && b[0] == 0x1f && b[1] == 0x8b && b[2] == 8 }

// Load parses an arm64 Image or Image.gz.
func Load(b []byte) (*Kernel, error) {
	k := &Kernel{}
	if IsGzip(b) {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("arm64 Image.gz: %w", err)
		}
		zr.Multistream(false)
		img, err := io.ReadAll(io.LimitReader(zr, MaxImageSize+1))
		if err != nil {
			return nil, fmt.Errorf("arm64 Image.gz: decompress: %w", err)
		}
		if len(img) > MaxImageSize {
			return nil, fmt.Errorf("arm64 Image.gz: decompresses to more than %d MiB", MaxImageSize>>20)
		}
		b, k.Compressed = img, true
	}
	h, err := ParseHeader(b)
	if err != nil {
		return nil, err
	}
	k.Header, k.Image = h, b
	return k, nil
}

// ParseHeader decodes and checks the header at the start of an Image.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("arm64 Image: %d bytes, shorter than its %d-byte header", len(b), HeaderSize)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b[56:]); m != Magic {
		return Header{}, fmt.Errorf("arm64 Image: magic %#x at offset 56, want %#x (\"ARM\\x64\"): not an arm64 Linux Image", m, Magic)
	}
	h := Header{TextOffset: le.Uint64(b[8:]), ImageSize: le.Uint64(b[16:]), Flags: le.Uint64(b[24:])}
	if h.ImageSize == 0 {
		// Kernels before 3.17: text_offset is unreliable and the size
		// unknown; the protocol says assume 0x80000 and the file's size.
		h.TextOffset = 0x80000
		h.ImageSize = uint64(len(b))
	}
	switch {
	case h.BigEndian():
		return Header{}, errors.New("arm64 Image: big-endian kernel (only little endian is supported)")
	case h.TextOffset >= 2<<20 || h.TextOffset%8 != 0:
		return Header{}, fmt.Errorf("arm64 Image: text_offset %#x is not an 8-byte aligned offset below 2 MiB", h.TextOffset)
	case h.ImageSize < uint64(len(b)):
		return Header{}, fmt.Errorf("arm64 Image: image_size %d is smaller than the %d-byte file", h.ImageSize, len(b))
	case h.ImageSize > MaxImageSize:
		return Header{}, fmt.Errorf("arm64 Image: image_size %d exceeds %d MiB", h.ImageSize, MaxImageSize>>20)
	}
	return h, nil
}

// LoadAddress is where the kernel goes in RAM starting at ramBase: the
// first 2 MiB aligned address at or above ramBase, plus text_offset.
func (h Header) LoadAddress(ramBase uint64) uint64 {
	const align = 2 << 20
	return (ramBase+align-1)&^(align-1) + h.TextOffset
}
