package i8042

import (
	"encoding/binary"
	"encoding/json"
	"testing"
)

type rig struct {
	d      *Device
	resets int
}

func newRig() *rig {
	r := &rig{}
	r.d = New(func() { r.resets++ })
	return r
}

func (r *rig) cmd(c byte)   { r.d.CmdPort().Write(0, []byte{c}) }
func (r *rig) data(b byte)  { r.d.DataPort().Write(0, []byte{b}) }
func (r *rig) status() byte { b := []byte{0}; r.d.CmdPort().Read(0, b); return b[0] }
func (r *rig) read() byte   { b := []byte{0}; r.d.DataPort().Read(0, b); return b[0] }

func TestResetCommand(t *testing.T) {
	r := newRig()
	r.cmd(0xFE)
	if r.resets != 1 {
		t.Fatalf("0xFE: %d resets, want 1", r.resets)
	}
	r.cmd(0xFF) // pulses no line
	if r.resets != 1 {
		t.Fatalf("0xFF reset the machine")
	}
	r.data(0xFE) // 0xFE to the data port is a keyboard byte, not a reset
	if r.resets != 1 {
		t.Fatalf("0xFE to port 0x60 reset the machine")
	}
	r.cmd(CmdWriteOutputPort)
	r.data(0x02) // reset line low
	if r.resets != 2 {
		t.Fatalf("output port write with bit0 clear: %d resets, want 2", r.resets)
	}
	if r.d.Save().Resets != 2 {
		t.Fatalf("Resets = %d", r.d.Save().Resets)
	}
}

func TestStatusIdle(t *testing.T) {
	r := newRig()
	s := r.status()
	if s&(StatusOBF|StatusIBF) != 0 || s&StatusSYS == 0 {
		t.Fatalf("idle status %#x: want no data, input empty, SYS set", s)
	}
}

func TestSelfTest(t *testing.T) {
	r := newRig()
	r.cmd(CmdSelfTest)
	if s := r.status(); s&StatusOBF == 0 {
		t.Fatalf("status %#x after self-test: OBF clear", s)
	}
	if b := r.read(); b != 0x55 {
		t.Fatalf("self-test result %#x, want 0x55", b)
	}
	if s := r.status(); s&StatusOBF != 0 {
		t.Fatalf("OBF still set after reading data (%#x)", s)
	}
	r.cmd(CmdKbdTest)
	if b := r.read(); b != 0x00 {
		t.Fatalf("keyboard interface test %#x, want 0", b)
	}
}

func TestCommandByte(t *testing.T) {
	r := newRig()
	r.cmd(CmdReadCommandByte)
	if b := r.read(); b != defaultCmdB {
		t.Fatalf("initial command byte %#x", b)
	}
	r.cmd(CmdWriteCommandByte)
	if s := r.status(); s&StatusCMD == 0 {
		t.Fatalf("status %#x: CMD bit clear after command write", s)
	}
	r.data(0x30)
	if s := r.status(); s&StatusCMD != 0 || s&StatusSYS != 0 {
		t.Fatalf("status %#x after data write of 0x30 (want CMD and SYS clear)", s)
	}
	r.cmd(CmdReadCommandByte)
	if b := r.read(); b != 0x30 {
		t.Fatalf("command byte %#x, want 0x30", b)
	}
	r.cmd(CmdEnableKbd)
	r.cmd(CmdEnableAux)
	r.cmd(CmdReadCommandByte)
	if b := r.read(); b != 0x00 {
		t.Fatalf("command byte %#x after enabling kbd and aux, want 0", b)
	}
	// A data byte with no pending command does not touch the command byte.
	r.data(0xFF)
	r.cmd(CmdReadCommandByte)
	if b := r.read(); b != 0x00 {
		t.Fatalf("stray data byte changed the command byte to %#x", b)
	}
	r.cmd(CmdReadOutputPort)
	if b := r.read(); b != defaultOutput {
		t.Fatalf("output port %#x", b)
	}
}

func TestWideAndOffsetAccess(t *testing.T) {
	r := newRig()
	r.d.CmdPort().Write(0, []byte{0xFE, 0x00}) // 16-bit out: low byte is the command
	if r.resets != 1 {
		t.Fatalf("16-bit write of 0xFE did not reset")
	}
	b := []byte{0, 0}
	r.d.CmdPort().Read(0, b)
	if b[1] != 0xff {
		t.Fatalf("upper byte of 16-bit status read = %#x, want 0xff", b[1])
	}
}

func TestSaveRestore(t *testing.T) {
	r := newRig()
	r.cmd(CmdWriteCommandByte)
	j, err := json.Marshal(r.d.Save())
	if err != nil {
		t.Fatal(err)
	}
	var s State
	if err := json.Unmarshal(j, &s); err != nil {
		t.Fatal(err)
	}
	r2 := newRig()
	if err := r2.d.Restore(s); err != nil {
		t.Fatal(err)
	}
	r2.data(0x11) // completes the pending 0x60 from before the snapshot
	r2.cmd(CmdReadCommandByte)
	if b := r2.read(); b != 0x11 {
		t.Fatalf("command byte %#x after restored pending write", b)
	}
	s.Pending = 0xAA
	if err := r2.d.Restore(s); err == nil {
		t.Fatal("Restore accepted a bogus pending command")
	}
}

func FuzzAccess(f *testing.F) {
	f.Add([]byte{4, 0, 1, 0xAA, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{4, 0, 1, 0x60, 0, 0, 0, 0, 0, 1, 0x45, 0, 0, 0})
	f.Add([]byte{4, 0, 1, 0xFE, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRig()
		for len(ops) >= 7 {
			p := r.d.DataPort()
			isCmd := ops[0]&4 != 0
			if isCmd {
				p = r.d.CmdPort()
			}
			size := []int{1, 2, 4}[int(ops[1])%3]
			write := ops[2]&1 == 1
			val := binary.LittleEndian.Uint32(ops[3:7])
			ops = ops[7:]
			buf := make([]byte, 4)
			binary.LittleEndian.PutUint32(buf, val)
			buf = buf[:size]
			before := r.resets
			if write {
				p.Write(0, buf)
				c := buf[0]
				if isCmd && c&0xF1 == 0xF0 && r.resets != before+1 {
					t.Fatalf("command %#x did not reset", c)
				}
			} else {
				p.Read(0, buf)
				for _, x := range buf[1:] {
					if x != 0xff {
						t.Fatalf("bytes beyond the port read %x", buf)
					}
				}
			}
			s := r.d.Save()
			if s.Status&StatusIBF != 0 {
				t.Fatalf("IBF set: %#x", s.Status)
			}
			if s.Pending != 0 && s.Pending != CmdWriteCommandByte && s.Pending != CmdWriteOutputPort {
				t.Fatalf("pending %#x", s.Pending)
			}
			if uint64(r.resets) != s.Resets {
				t.Fatalf("resets %d, state says %d", r.resets, s.Resets)
			}
		}
	})
}
