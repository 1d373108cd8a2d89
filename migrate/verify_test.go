package migrate

import (
	"bytes"
	"encoding/binary"
	"hash/crc64"
	"net"
	"strings"
	"testing"

	"govmm/memory"
	"govmm/snapshot"
)

// transfer moves f from SendWith(sopts) to ReceiveWith(ropts, prepare)
// over a pipe, the receiver confirming what it took, and returns the
// source's stats and error and the receiver's result.
func transfer(t *testing.T, f VM, sopts SendOptions, ropts ReceiveOptions, prepare func(Hello) (*memory.Memory, error)) (Stats, error, *Incoming, error) {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	type result struct {
		in  *Incoming
		err error
	}
	rc := make(chan result, 1)
	go func() {
		in, err := ReceiveWith(c2, ropts, prepare)
		if err == nil {
			err = in.Ack(nil)
		} else {
			c2.Close() // the source stops waiting for the confirmation
		}
		rc <- result{in, err}
	}()
	st, err := SendWith(c1, f, sopts)
	r := <-rc
	return st, err, r.in, r.err
}

// TestSendVerify: with every write in the dirty log the destination
// compares all pages and takes the VM; with a write the log missed it
// refuses the VM naming that page, and the source resumes.
func TestSendVerify(t *testing.T) {
	for _, lose := range []bool{false, true} {
		src, err := memory.New(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(0x5000, []byte("before the migration"))
		f := &fakeVM{t: t, arch: snapshot.ArchX86_64, mem: src, statePg: 0x9000, writePer: 3, loseWrite: lose}
		st, serr, in, rerr := transfer(t, f, SendOptions{Verify: true}, ReceiveOptions{Arch: f.arch}, nil)
		if !lose {
			if serr != nil || rerr != nil {
				t.Fatalf("send: %v; receive: %v", serr, rerr)
			}
			if !st.Verified || in.VerifiedPages != 256 || !bytes.Equal(in.Memory.Regions()[0].Host, src.Regions()[0].Host) {
				t.Errorf("stats %+v, %d pages verified", st, in.VerifiedPages)
			}
			in.Memory.Close()
		} else {
			if rerr == nil || serr == nil {
				t.Fatalf("a write the dirty log missed: send %v, receive %v; want both to fail", serr, rerr)
			}
			for _, w := range []string{"differ from the source's", "dirty tracking missed writes"} {
				if !strings.Contains(rerr.Error(), w) || !strings.Contains(serr.Error(), w) {
					t.Errorf("the refusal does not say %q:\nreceiver: %v\nsource: %v", w, rerr, serr)
				}
			}
			if f.resumed != 1 || st.Verified {
				t.Errorf("source resumed %d times, verified %v", f.resumed, st.Verified)
			}
			t.Logf("refused: %v", rerr)
		}
		src.Close()
	}
}

// TestVerifierFrames refuses checksum frames that do not cover the
// memory exactly once, in order.
func TestVerifierFrames(t *testing.T) {
	mem, err := memory.New(1 << 20) // 256 pages in one region
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	frame := func(region, first, n uint32) []byte {
		b := make([]byte, 8+8*n)
		binary.LittleEndian.PutUint32(b, region)
		binary.LittleEndian.PutUint32(b[4:], first)
		for i := range n {
			binary.LittleEndian.PutUint64(b[8+8*i:], zeroPageCRC)
		}
		return b
	}
	v := newVerifier(mem)
	if err := v.frame(frame(0, 0, 100)); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"short":        {1, 2, 3},
		"ragged":       frame(0, 100, 1)[:13],
		"region":       frame(1, 0, 1),
		"out of order": frame(0, 0, 1),
		"gap":          frame(0, 101, 1),
		"past the end": frame(0, 100, 157),
		"empty":        frame(0, 100, 0),
	} {
		if err := v.frame(b); err == nil {
			t.Errorf("%s frame accepted", name)
		}
	}
	if err := v.result(); err == nil || !strings.Contains(err.Error(), "covered 100 of the 256 pages") {
		t.Errorf("a partial verification: %v", err)
	}
	if err := v.frame(frame(0, 100, 156)); err != nil {
		t.Fatal(err)
	}
	if err := v.result(); err != nil {
		t.Errorf("all zero pages against zero checksums: %v", err)
	}
}

// verifiedStream is a hand-built stream of a 1 MiB VM whose page 0x1000
// holds 7s, with a checksum frame for all 256 pages and then the state;
// wrong names a page whose checksum is off by one (noPage: none).
const noPage = ^uint64(0)

func verifiedStream(t testing.TB, wrong uint64) []byte {
	b := stream(1<<20, map[uint64]byte{0x1000: 7}, nil, false)
	payload := make([]byte, 8+8*256)
	for i := range 256 {
		c := zeroPageCRC
		if i == 1 {
			c = crc64.Checksum(bytes.Repeat([]byte{7}, pageSize), crcTable)
		}
		if uint64(i)*pageSize == wrong {
			c++
		}
		binary.LittleEndian.PutUint64(payload[8+8*i:], c)
	}
	v := []byte{msgVerify, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(v[1:], uint32(len(payload)))
	st := validState(t)
	sf := []byte{msgState, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(sf[1:], uint32(len(st)))
	return append(append(append(append(append(b, v...), payload...), sf...), st...), msgDone)
}

// TestReceiveVerified: a receiver takes a stream whose checksums match
// its pages and counts them, and refuses one with a page that differs.
func TestReceiveVerified(t *testing.T) {
	in, err := receive(t, verifiedStream(t, noPage))
	if err != nil {
		t.Fatal(err)
	}
	if in.VerifiedPages != 256 {
		t.Errorf("%d pages verified, want 256", in.VerifiedPages)
	}
	in.Memory.Close()
	if _, err := receive(t, verifiedStream(t, 0x3000)); err == nil || !strings.Contains(err.Error(), "1 of 256 guest pages here differ from the source's (GPA 0x3000)") {
		t.Errorf("a page whose checksum differs: %v", err)
	}
}
