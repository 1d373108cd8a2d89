package console

import (
	"bytes"
	"testing"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// FuzzChains hands the device chains whose queue, buffer directions and
// sizes the fuzzer chooses (layout: one byte per buffer, the low 7 bits
// its size, the top bit device-writable), with host input waiting: the
// device never panics, refuses exactly the chains the protocol forbids
// (a receive buffer with readable or no writable bytes, a transmit
// buffer with writable bytes), sends the host exactly what an accepted
// transmit chain carries, and fills an accepted receive chain with a
// prefix of the waiting input, completing each accepted chain once.
func FuzzChains(f *testing.F) {
	f.Add(uint8(txQ), []byte{5, 7}, []byte("hello, world"), []byte("in"))
	f.Add(uint8(rxQ), []byte{0x83, 0x90}, []byte{}, []byte("typed input"))
	f.Add(uint8(rxQ), []byte{0x03, 0x90}, []byte{}, []byte("x"))
	f.Add(uint8(txQ), []byte{0x85}, []byte("abc"), []byte{})
	f.Add(uint8(2), []byte{1}, []byte("a"), []byte{})
	f.Fuzz(func(t *testing.T, q uint8, layout, data, input []byte) {
		if len(layout) > 64 {
			layout = layout[:64]
		}
		out := &virtiotest.SyncBuffer{}
		d := New(out, quiet)
		defer d.Close()
		d.Activate(virtio.FVersion1)
		if len(input) > MaxPending {
			input = input[:MaxPending]
		}
		d.Input(input)

		c := &virtio.Chain{Head: 1}
		var sent []byte
		src := data
		for _, l := range layout {
			n := int(l & 0x7f)
			b := make([]byte, n)
			if l&0x80 != 0 {
				c.Writable = append(c.Writable, virtio.Buffer{Bytes: b})
				continue
			}
			k := copy(b, src)
			src = src[k:]
			sent = append(sent, b...)
			c.Readable = append(c.Readable, virtio.Buffer{Bytes: b})
		}
		calls, written := 0, uint32(0)
		err := d.Handle(int(q), c, func(n uint32) { calls++; written = n })

		var ok bool
		switch q {
		case rxQ:
			ok = len(c.Readable) == 0 && c.WritableLen() > 0
		case txQ:
			ok = len(c.Writable) == 0
		}
		if (err == nil) != ok {
			t.Fatalf("queue %d, %d readable and %d writable bytes: error %v, want accepted=%v", q, c.ReadableLen(), c.WritableLen(), err, ok)
		}
		if err != nil {
			if calls != 0 || len(out.Bytes()) != 0 {
				t.Fatalf("refused chain completed %d times, host got %d bytes", calls, len(out.Bytes()))
			}
			return
		}
		switch q {
		case txQ:
			if calls != 1 || written != 0 {
				t.Fatalf("transmit chain completed %d times with %d bytes written", calls, written)
			}
			if !bytes.Equal(out.Bytes(), sent) {
				t.Fatalf("host got %q, the chain carried %q", out.Bytes(), sent)
			}
		case rxQ:
			want := min(int(c.WritableLen()), len(input))
			if want == 0 {
				if calls != 0 {
					t.Fatal("a receive buffer completed with no input")
				}
				return
			}
			if calls != 1 || int(written) != want {
				t.Fatalf("receive chain completed %d times with %d bytes, want once with %d", calls, written, want)
			}
			got := make([]byte, want)
			gathered := 0
			for _, b := range c.Writable {
				gathered += copy(got[gathered:], b.Bytes)
			}
			if !bytes.Equal(got, input[:want]) {
				t.Fatalf("the guest got %q, want %q", got, input[:want])
			}
			if rest := d.Save().Pending; !bytes.Equal(rest, input[want:]) {
				t.Fatalf("%d bytes still pending, want %d", len(rest), len(input)-want)
			}
		}
	})
}
