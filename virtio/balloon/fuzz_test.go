package balloon

import (
	"encoding/binary"
	"fmt"
	"testing"

	"govmm/virtio"
)

// fuzzRAM is guest RAM for the fuzzer: 64 pages at GPA 0 and 64 at
// 4 GiB, with a hole between, as the x86 layout has. Discard checks what
// the device releases against it.
type fuzzRAM struct {
	t        *testing.T
	released uint64
}

const fuzzHigh = 1 << 32

func (m *fuzzRAM) Slice(gpa, n uint64) ([]byte, error) {
	for _, base := range []uint64{0, fuzzHigh} {
		if gpa >= base && gpa-base <= 64*PageSize && n <= 64*PageSize-(gpa-base) {
			return make([]byte, n), nil
		}
	}
	return nil, fmt.Errorf("[%#x, +%#x) is not RAM", gpa, n)
}

func (m *fuzzRAM) MarkDirty(gpa, n uint64) {}

func (m *fuzzRAM) Discard(gpa, n uint64) error {
	if _, err := m.Slice(gpa, n); err != nil || gpa%PageSize != 0 || n%PageSize != 0 || n == 0 {
		m.t.Fatalf("the device released [%#x, +%#x), which is not whole pages of RAM", gpa, n)
	}
	m.released += n / PageSize
	return nil
}

// FuzzChains hands the device chains whose buffers and PFNs the fuzzer
// writes: the first byte picks the queue, whether a writable buffer
// follows and whether the device offers (and the driver took) statistics
// and page reporting, each further byte of the layout is a buffer's length, and the
// rest is the buffers' contents. The device must complete a chain or
// refuse it with an error, never panic; a completed inflate chain names
// only RAM, and releases exactly its PFNs.
func FuzzChains(f *testing.F) {
	pfns := func(ps ...uint32) []byte {
		var b []byte
		for _, p := range ps {
			b = binary.LittleEndian.AppendUint32(b, p)
		}
		return b
	}
	f.Add([]byte{0, 8}, pfns(1, 2))
	f.Add([]byte{1, 12}, pfns(3, 4, 5))
	f.Add([]byte{0, 4, 8}, pfns(63, 0x100000, 0x100001))
	f.Add([]byte{0, 4}, pfns(64))
	f.Add([]byte{2, 6}, pfns(1, 2))
	f.Add([]byte{4, 4, 4}, pfns(1, 2))
	f.Add([]byte{8 | 2, 10, 10}, []byte{4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Fuzz(func(t *testing.T, layout, data []byte) {
		if len(layout) == 0 {
			return
		}
		ram := &fuzzRAM{t: t}
		d := New(ram, Config{Release: ram})
		if layout[0]&8 != 0 {
			// Statistics (queue 2) and page reporting (queue 3).
			d = New(ram, Config{Release: ram, Options: Options{Stats: true, Reporting: true, DeflateOnOOM: true}})
			d.Activate(FStatsVQ | FPageReporting | FDeflateOnOOM)
		}
		c := &virtio.Chain{}
		for _, n := range layout[1:] {
			k := min(int(n), len(data))
			c.Readable = append(c.Readable, virtio.Buffer{Bytes: data[:k]})
			data = data[k:]
		}
		if layout[0]&4 != 0 {
			c.Writable = append(c.Writable, virtio.Buffer{Bytes: make([]byte, 8)})
		}
		q := int(layout[0] & 3)
		called := 0
		err := d.Handle(q, c, func(n uint32) {
			called++
			if n != 0 {
				t.Errorf("completed with %d bytes written", n)
			}
		})
		if err != nil {
			if called != 0 {
				t.Fatal("done called on an error")
			}
			if ram.released != 0 {
				t.Fatal("a refused chain released pages")
			}
			return
		}
		if d.queueRole(q) == "stats" {
			// Kept until RequestStats gives it back.
			if called != 0 || d.Info().Stats == nil {
				t.Fatalf("statistics chain: done called %d times, stats %v", called, d.Info().Stats)
			}
			return
		}
		if called != 1 {
			t.Fatalf("done called %d times", called)
		}
		n := c.ReadableLen() / 4
		if q == InflateQ && ram.released != n {
			t.Fatalf("released %d pages of an inflate chain of %d", ram.released, n)
		}
		if q == DeflateQ && ram.released != 0 {
			t.Fatal("a deflate released pages")
		}
	})
}
