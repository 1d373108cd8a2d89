package api

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// balloonTarget is a fake target with a balloon that refuses targets
// above limit.
type balloonTarget struct {
	fakeTarget
	limit uint64
	got   []uint64
}

func (b *balloonTarget) SetBalloon(r BalloonRequest) (BalloonInfo, error) {
	if r.TargetBytes > b.limit {
		return BalloonInfo{}, errors.New("too\nmuch")
	}
	b.got = append(b.got, r.TargetBytes)
	return BalloonInfo{TargetBytes: r.TargetBytes, ActualBytes: 4096, Kept: "pinned"}, nil
}

// TestBalloonRoundTrip: the target reaches the VM and its reply comes
// back; a refusal arrives as its message; a target without a balloon
// says so.
func TestBalloonRoundTrip(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	bt := &balloonTarget{limit: 1 << 30}
	srv, err := Listen(sock, bt)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, _ := Dial(sock)
	res, err := c.SetBalloon(BalloonRequest{TargetBytes: 256 << 20})
	if err != nil || res.TargetBytes != 256<<20 || res.ActualBytes != 4096 || res.Kept != "pinned" {
		t.Fatalf("balloon reply %+v, %v", res, err)
	}
	if _, err := c.SetBalloon(BalloonRequest{TargetBytes: 0}); err != nil {
		t.Fatal(err)
	}
	if len(bt.got) != 2 || bt.got[0] != 256<<20 || bt.got[1] != 0 {
		t.Errorf("targets set %v", bt.got)
	}
	if _, err := c.SetBalloon(BalloonRequest{TargetBytes: 2 << 30}); err == nil || err.Error() != "too much" {
		t.Errorf("refused target: %v", err)
	}
	if err := c.call(request{Op: "balloon"}, nil, nil); err == nil || !strings.Contains(err.Error(), "target_bytes is required") {
		t.Errorf("balloon without a request: %v", err)
	}

	sock2 := filepath.Join(t.TempDir(), "old.sock")
	srv2, err := Listen(sock2, &fakeTarget{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	c2, _ := Dial(sock2)
	if _, err := c2.SetBalloon(BalloonRequest{}); err == nil || !strings.Contains(err.Error(), "cannot steer a balloon") {
		t.Errorf("target without a balloon: %v", err)
	}
}
