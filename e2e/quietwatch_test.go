package e2e

import (
	"testing"
	"time"

	"govmm/internal/linuxguest"
)

// TestQuietWatch: a wait asks about the substrate only after each
// StallCheckEvery of quiet, and output starts the count again.
func TestQuietWatch(t *testing.T) {
	const poll = 50 * time.Millisecond
	every := int(linuxguest.StallCheckEvery / poll)
	var w quietWatch
	n, asked := 10, 0
	for i := 1; i <= 3*every; i++ {
		if i == every/2 {
			n++ // output half-way to the first check
		}
		if w.due(n, poll) {
			asked++
			if want := every/2 + every*asked; i != want {
				t.Fatalf("asked at poll %d, want %d", i, want)
			}
		}
	}
	if asked != 2 {
		t.Fatalf("asked %d times in %d polls with output at poll %d, want 2", asked, 3*every, every/2)
	}
}
