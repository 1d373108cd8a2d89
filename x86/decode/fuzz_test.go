package decode

import (
	"errors"
	"testing"
)

// FuzzDecode checks that any input in any mode decodes without panicking,
// that lengths stay within the input and 15 bytes, and that every prefix
// of a decoded instruction is reported as truncated (so a caller that
// fetches more bytes on ErrTruncated always ends up with the same
// instruction).
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"\x89\x03", "\x48\xc7\x03\x01\x02\x03\x04", "\xc5\xfe\x6f\x13", "\x62\xf1\x7c\x48\x10\x03",
		"\x66\x0f\x38\xf8\x01", "\x8f\xe9\x78\x01\xc1", "\x0f\x0f\xc1\xb4", "\xf3\xa5",
		"\x67\xa1\x00\x00\x00\xc0", "\xa1\x00\x00\x00\x00\x00\x00\x00\xc0", "\xc4\x02", "\x62",
	} {
		for _, mode := range []int{16, 32, 64} {
			f.Add([]byte(s), mode)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte, mode int) {
		mode = []int{16, 32, 64}[uint(mode)%3]
		var in Inst
		err := Decode(src, mode, &in)
		switch {
		case err == nil:
			if in.Len < 1 || in.Len > MaxLen || in.Len > len(src) {
				t.Fatalf("% x mode %d: len %d", src, mode, in.Len)
			}
			for k := 0; k < in.Len; k++ {
				var p Inst
				if e := Decode(src[:k], mode, &p); !errors.Is(e, ErrTruncated) {
					t.Fatalf("% x mode %d: prefix of %d bytes gives %v (len %d), want truncated", src[:in.Len], mode, k, e, p.Len)
				}
			}
		case errors.Is(err, ErrTruncated):
			if len(src) >= MaxLen {
				t.Fatalf("% x: truncated with %d bytes", src, len(src))
			}
		case errors.Is(err, ErrInvalid), errors.Is(err, ErrTooLong):
		default:
			t.Fatalf("% x: unexpected error %v", src, err)
		}
		_ = in.OpcodeString()
	})
}
