package stats

import (
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := append([]float64(nil), c.in...)
		if got := Median(in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Errorf("Median reordered its input: %v, was %v", in, c.in)
			}
		}
	}
	if got := Median([]time.Duration{3 * time.Second, time.Second, 2 * time.Second, 4 * time.Second}); got != 2500*time.Millisecond {
		t.Errorf("Median of 1-4 s = %v, want 2.5s", got)
	}
}
