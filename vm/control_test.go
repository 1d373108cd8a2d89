package vm

import (
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/accel"
	"govmm/guests"
)

// loopVCPU is a fake vCPU whose guest leaves Run after a short spell, or
// at once when kicked; with out set, every entry first writes a byte to
// port blockPort, whose device blocks until the test lets it go.
type loopVCPU struct {
	accel.VCPU
	out    bool
	kicked chan struct{}
}

const blockPort = 0x510

// blockingDevice takes port writes one at a time from a channel's reader.
type blockingDevice struct{ writes chan byte }

func (d blockingDevice) Read(uint64, []byte)         {}
func (d blockingDevice) Write(_ uint64, data []byte) { d.writes <- data[0] }

func (f *loopVCPU) Close() error { return nil }

func (f *loopVCPU) Kick() {
	select {
	case f.kicked <- struct{}{}:
	default:
	}
}

func (f *loopVCPU) Run(h accel.IOHandler) (accel.Exit, error) {
	if f.out {
		h.PIOWrite(blockPort, []byte{'x'})
	}
	select {
	case <-f.kicked:
	case <-time.After(time.Millisecond):
	}
	return accel.Exit{Reason: accel.ExitInterrupted}, nil
}

// TestPauseBound: a vCPU stuck in a device handler makes a pause fail after its bound, naming the vCPU and the
// port, instead of hanging; the VM then runs on, unpaused, and once the
// handler returns the next pause stops every vCPU (the token the other
// vCPU left for the failed pause is not counted twice).
func TestPauseBound(t *testing.T) {
	img, err := guests.Image("probe")
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(Config{
		Accel: fakeAccel{}, MemSize: 32 << 20, NumCPUs: 2, Kernel: img,
		Serial: io.Discard, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	dev := blockingDevice{make(chan byte)}
	if err := v.pio.Register(blockPort, 1, "blocking", dev); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	drain := func() {
		for {
			select {
			case <-dev.writes:
			case <-release:
				return
			}
		}
	}
	cpus := []*loopVCPU{{kicked: make(chan struct{}, 1)}, {out: true, kicked: make(chan struct{}, 1)}}
	var wg sync.WaitGroup
	for i, c := range cpus {
		v.vcpus = append(v.vcpus, c)
		wg.Add(1)
		go func() { defer wg.Done(); v.runVCPU(i, c) }()
	}
	defer func() { v.Stop(Result{Kind: StopPowerOff}); go drain(); wg.Wait(); close(release) }()

	// Wait until vCPU 1 sits in the UART write.
	for deadline := time.Now().Add(10 * time.Second); v.ctl.activity[1].what.Load() != actPIOWrite; {
		if time.Now().After(deadline) {
			t.Fatal("vCPU 1 never reached its port write")
		}
		time.Sleep(time.Millisecond)
	}
	begin := time.Now()
	err = v.PauseWithin(200 * time.Millisecond)
	if err == nil {
		t.Fatal("the pause succeeded while vCPU 1 was blocked in a device handler")
	}
	want := "1 of 2 vCPUs did not stop within 200ms, so the VM runs on unpaused; vCPU 1: it is in the VMM, handling a port-I/O write to 0x510 and has been since the pause began"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q\nwant it to contain %q", err, want)
	}
	if waited := time.Since(begin); waited > 5*time.Second {
		t.Fatalf("the bounded pause took %v", waited)
	}
	if v.Paused() {
		t.Fatal("the VM is marked paused after a pause that failed")
	}

	// Let the device go: vCPU 1 writes on, and a pause stops both.
	if b := <-dev.writes; b != 'x' {
		t.Fatalf("the device got %q", b)
	}
	go drain()
	if err := v.PauseWithin(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range cpus {
		if err := v.onVCPU(i, func(accel.VCPU) error { return nil }); err != nil {
			t.Fatalf("vCPU %d is not parked: %v", i, err)
		}
	}
	if err := v.Resume(); err != nil {
		t.Fatal(err)
	}
}
