package vm

import (
	"errors"
	"strings"
	"testing"
)

func TestCompareVirtio(t *testing.T) {
	disk := `virtio-blk path=/img/a bytes=16777216 readonly=false serial=""`
	for _, c := range []struct {
		name         string
		source, here []string
		want         []string // in the error, in order; nil: no error
	}{
		{"same", []string{disk, "virtio-rng"}, []string{disk, "virtio-rng"}, nil},
		{"none", nil, []string{}, nil},
		{"missing", []string{disk, "virtio-rng"}, []string{disk}, []string{`slot 2: the source's "virtio-rng" is missing here`}},
		{"extra", []string{disk}, []string{disk, "virtio-rng"}, []string{`slot 2: "virtio-rng" here is not on the source`}},
		{"other size", []string{disk}, []string{strings.Replace(disk, "16777216", "8388608", 1)},
			[]string{"slot 1: the source has", "bytes=16777216", "this destination", "bytes=8388608"}},
		{"shifted", []string{disk, "virtio-vsock cid=3"}, []string{"virtio-vsock cid=3"},
			[]string{"slot 1: the source has", "slot 2: the source's \"virtio-vsock cid=3\" is missing here"}},
	} {
		err := compareVirtio(c.source, c.here)
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		var ie *InputError
		if !errors.As(err, &ie) {
			t.Errorf("%s: %v, want an InputError", c.name, err)
			continue
		}
		msg, at := err.Error(), 0
		for _, w := range c.want {
			k := strings.Index(msg[at:], w)
			if k < 0 {
				t.Errorf("%s: %q does not name %q (in order)", c.name, msg, w)
				break
			}
			at += k + len(w)
		}
	}
}
