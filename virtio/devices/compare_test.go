package devices

import (
	"strings"
	"testing"
)

// Compare names each difference by slot, and nothing for equal lists.
func TestCompare(t *testing.T) {
	disk := `virtio-blk path=/img/a bytes=16777216 readonly=false serial=""`
	if err := Compare([]string{disk, "virtio-rng"}, []string{disk, "virtio-rng"}); err != nil {
		t.Fatal(err)
	}
	if err := Compare(nil, []string{}); err != nil {
		t.Fatal(err)
	}
	err := Compare([]string{disk, "virtio-rng"}, []string{"virtio-rng"})
	if err == nil || !strings.Contains(err.Error(), "slot 1: the source has") || !strings.Contains(err.Error(), `slot 2: the source's "virtio-rng" is missing here`) {
		t.Fatalf("%v", err)
	}
}
