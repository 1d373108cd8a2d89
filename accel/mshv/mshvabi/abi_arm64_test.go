//go:build arm64

package mshvabi

import (
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"
)

// The expected offsets are those of the packed C structures in
// include/hyperv/hvhdk.h (hv_arm64_intercept_message_header,
// hv_arm64_memory_intercept_message) and rust-vmm/mshv's hv-headers/hvhdk.h
// (hv_arm64_reset_intercept_message), counted field by field.
func TestArm64Layouts(t *testing.T) {
	var h Arm64InterceptMessageHeader
	var mem Arm64MemoryInterceptMessage
	var rst Arm64ResetInterceptMessage
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof header", unsafe.Sizeof(h), SizeofArm64InterceptHeader},
		{"header.vp_index", unsafe.Offsetof(h.VPIndex), 0},
		{"header.instruction_length", unsafe.Offsetof(h.InstructionLength), 4},
		{"header.intercept_access_type", unsafe.Offsetof(h.InterceptAccessType), 5},
		{"header.execution_state", unsafe.Offsetof(h.ExecutionState), 6},
		{"header.pc", unsafe.Offsetof(h.PC), 8},
		{"header.cpsr", unsafe.Offsetof(h.CPSR), 16},

		{"sizeof memory intercept", unsafe.Sizeof(mem), SizeofArm64MemoryIntercept},
		{"memory.cache_type", unsafe.Offsetof(mem.CacheType), 24},
		{"memory.instruction_byte_count", unsafe.Offsetof(mem.InstructionByteCount), 28},
		{"memory.memory_access_info", unsafe.Offsetof(mem.MemoryAccessInfo), 29},
		{"memory.reserved1", unsafe.Offsetof(mem.Reserved1), 30},
		{"memory.instruction_bytes", unsafe.Offsetof(mem.InstructionBytes), 32},
		{"memory.reserved2", unsafe.Offsetof(mem.Reserved2), 36},
		{"memory.guest_virtual_address", unsafe.Offsetof(mem.GuestVirtualAddress), 40},
		{"memory.guest_physical_address", unsafe.Offsetof(mem.GuestPhysicalAddress), 48},
		{"memory.syndrome", unsafe.Offsetof(mem.Syndrome), 56},

		{"sizeof reset intercept", unsafe.Sizeof(rst), SizeofArm64ResetIntercept},
		{"reset.reset_type", unsafe.Offsetof(rst.ResetType), 24},
		{"reset.reset_code", unsafe.Offsetof(rst.ResetCode), 28},

		// Shared with x86 and reused unchanged on arm64.
		{"sizeof hv_message", unsafe.Sizeof(Message{}), 256},
		{"sizeof hv_register_assoc", unsafe.Sizeof(RegisterAssoc{}), 32},
		{"sizeof hv_input_assert_virtual_interrupt", unsafe.Sizeof(InputAssertVirtualInterrupt{}), 32},
		{"sizeof mshv_user_irq_entry", unsafe.Sizeof(UserIRQEntry{}), 16},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestArm64RegisterNames(t *testing.T) {
	for n, want := range map[int]uint32{0: 0x00020000, 1: 0x00020001, 28: 0x0002001C, 29: 0x0002001D, 30: 0x0002001E} {
		got, err := Arm64RegX(n)
		if err != nil || got != want {
			t.Errorf("Arm64RegX(%d) = %#x, %v; want %#x", n, got, err, want)
		}
	}
	for _, n := range []int{-1, 31, 32} {
		if _, err := Arm64RegX(n); err == nil || !strings.Contains(err.Error(), "X") {
			t.Errorf("Arm64RegX(%d) accepted", n)
		}
	}
	for n, want := range map[int]uint32{0: 0x00030000, 31: 0x0003001F} {
		got, err := Arm64RegQ(n)
		if err != nil || got != want {
			t.Errorf("Arm64RegQ(%d) = %#x, %v; want %#x", n, got, err, want)
		}
	}
	if _, err := Arm64RegQ(32); err == nil {
		t.Error("Arm64RegQ(32) accepted")
	}
	// Spot values of hvgdk_mini.h's arm64 enum that the boot path needs.
	for name, c := range map[string][2]uint32{
		"PC":            {Arm64RegPC, 0x00020022},
		"PSTATE":        {Arm64RegPSTATE, 0x00020023},
		"MPIDR_EL1":     {Arm64RegMPIDREL1, 0x00040001},
		"SCTLR_EL1":     {Arm64RegSCTLREL1, 0x00040002},
		"VBAR_EL1":      {Arm64RegVBAREL1, 0x0004000C},
		"SPSR_EL1":      {Arm64RegSPSREL1, 0x00040014},
		"ELR_EL1":       {Arm64RegELREL1, 0x00040015},
		"CNTVCT_EL0":    {Arm64RegCNTVCTEL0, 0x00058011},
		"GICR_BASE_GPA": {Arm64RegGICRBaseGPA, 0x00063000},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %#x, want %#x", name, c[0], c[1])
		}
	}
	// The generic (architecture-independent) names stay the x86 values.
	if RegExplicitSuspend != 0 || RegInterceptSuspend != 1 || RegInternalActivityState != 4 {
		t.Error("generic suspend/activity register names changed")
	}
}

func TestArm64AssertInterrupt(t *testing.T) {
	in, err := Arm64AssertInterrupt(33, true)
	if err != nil {
		t.Fatal(err)
	}
	// As the hypervisor reads it: type in the low word, asserted = bit 2 of
	// the high word, the INTID in vector, no destination.
	if uint32(in.Control) != Arm64InterruptTypeFixed || (in.Control>>32)&0b100 == 0 || in.Vector != 33 || in.DestAddr != 0 {
		t.Errorf("assert SPI 1 = %+v", in)
	}
	low, err := Arm64AssertInterrupt(33, false)
	if err != nil || low.Control != 0 || low.Vector != 33 {
		t.Errorf("deassert SPI 1 = %+v, %v", low, err)
	}
	for _, bad := range []uint32{0, 15, 16, 27, 31, 1020, 1 << 20} {
		if _, err := Arm64AssertInterrupt(bad, true); err == nil {
			t.Errorf("INTID %d accepted", bad)
		}
	}
}

// The kernel's decoding of a routing entry (mshv_copy_girq_info): the
// entries this package builds must come back out as the INTID and VP that
// went in, with interrupt type 0.
func TestArm64RouteEntry(t *testing.T) {
	for _, c := range []struct{ gsi, intid, vp uint32 }{{0, 32, 0}, {5, 40, 3}, {9, 255, 255}} {
		e, err := Arm64RouteEntry(c.gsi, c.intid, c.vp)
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		vector := e.Data & 0xff
		vp := (e.AddressLo >> 12) & 0xff
		typ := (e.Data & 0x700) >> 8
		if e.GSI != c.gsi || vector != c.intid || vp != c.vp || typ != 0 || e.AddressHi != 0 {
			t.Errorf("%+v -> %+v decodes as vector %d vp %d type %d", c, e, vector, vp, typ)
		}
	}
	for _, c := range []struct {
		intid, vp uint32
		want      string
	}{{256, 0, "INTID 256"}, {31, 0, "INTID 31"}, {40, 256, "VP index 256"}} {
		_, err := Arm64RouteEntry(7, c.intid, c.vp)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "GSI 7") {
			t.Errorf("intid %d vp %d: err %v, want one naming %q and the GSI", c.intid, c.vp, err, c.want)
		}
	}
}

// memMessage lays out an arm64 memory intercept byte by byte at the C
// offsets, independently of the Go struct.
func memMessage(typ uint32, count uint8) *Message {
	m := &Message{}
	m.Header.MessageType = typ
	m.Header.PayloadSize = SizeofArm64MemoryIntercept
	p := m.Payload[:]
	binary.LittleEndian.PutUint32(p[0:], 3)                    // vp_index
	p[4] = 4                                                   // instruction_length
	p[5] = 1                                                   // write
	binary.LittleEndian.PutUint16(p[6:], 1)                    // EL1
	binary.LittleEndian.PutUint64(p[8:], 0xffff800008001234)   // pc
	binary.LittleEndian.PutUint64(p[16:], 0x3c5)               // cpsr
	p[28] = count                                              // instruction_byte_count
	p[29] = Arm64MemAccessGVAValid | Arm64MemAccessGVAGPAValid // memory_access_info
	copy(p[32:36], []byte{0x20, 0x00, 0x00, 0xb9})             // str w0, [x1]
	binary.LittleEndian.PutUint64(p[40:], 0xffff000009000000)  // gva
	binary.LittleEndian.PutUint64(p[48:], 0x09000000)          // gpa
	binary.LittleEndian.PutUint64(p[56:], 0x93800040)          // syndrome
	return m
}

func TestArm64MemoryIntercept(t *testing.T) {
	for _, typ := range []uint32{MsgUnmappedGPA, MsgGPAIntercept} {
		v, err := memMessage(typ, 4).Arm64MemoryIntercept()
		if err != nil {
			t.Fatal(err)
		}
		want := Arm64MemoryInterceptMessage{
			Header: Arm64InterceptMessageHeader{VPIndex: 3, InstructionLength: 4, InterceptAccessType: 1,
				ExecutionState: 1, PC: 0xffff800008001234, CPSR: 0x3c5},
			InstructionByteCount: 4, MemoryAccessInfo: 3, InstructionBytes: [4]byte{0x20, 0, 0, 0xb9},
			GuestVirtualAddress: 0xffff000009000000, GuestPhysicalAddress: 0x09000000, Syndrome: 0x93800040,
		}
		if v != want {
			t.Errorf("type %#x decoded\n %+v\nwant\n %+v", typ, v, want)
		}
	}
	if _, err := memMessage(MsgX64IOPortIntercept, 4).Arm64MemoryIntercept(); err == nil || !strings.Contains(err.Error(), "0x80010000") {
		t.Errorf("an x86 port intercept decoded as arm64 memory: %v", err)
	}
	if _, err := memMessage(MsgUnmappedGPA, 5).Arm64MemoryIntercept(); err == nil || !strings.Contains(err.Error(), "0x9000000") {
		t.Errorf("5 instruction bytes accepted, or the error does not name the GPA: %v", err)
	}
}

func TestArm64ResetIntercept(t *testing.T) {
	m := &Message{}
	m.Header.MessageType = MsgARM64ResetIntercept
	binary.LittleEndian.PutUint32(m.Payload[0:], 1)
	binary.LittleEndian.PutUint32(m.Payload[24:], Arm64ResetReboot)
	binary.LittleEndian.PutUint32(m.Payload[28:], 0x1234)
	v, err := m.Arm64ResetIntercept()
	if err != nil || v.Header.VPIndex != 1 || v.ResetType != Arm64ResetReboot || v.ResetCode != 0x1234 {
		t.Errorf("reset intercept = %+v, %v", v, err)
	}
	binary.LittleEndian.PutUint32(m.Payload[24:], 4)
	if _, err := m.Arm64ResetIntercept(); err == nil || !strings.Contains(err.Error(), "reset type 4") {
		t.Errorf("reset type 4 accepted: %v", err)
	}
	m.Header.MessageType = MsgUnmappedGPA
	if _, err := m.Arm64ResetIntercept(); err == nil {
		t.Error("a memory intercept decoded as a reset")
	}
}

// FuzzArm64Message feeds arbitrary hv_message bytes to the arm64 decoders:
// they must never panic, must accept only their own message types, and what
// they accept must be within the structure's bounds.
func FuzzArm64Message(f *testing.F) {
	f.Add(Bytes(memMessage(MsgUnmappedGPA, 4))[:])
	f.Add(Bytes(memMessage(MsgGPAIntercept, 9))[:])
	rst := &Message{}
	rst.Header.MessageType = MsgARM64ResetIntercept
	f.Add(Bytes(rst)[:])
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := Load[Message](b)
		if !ok {
			return
		}
		if v, err := m.Arm64MemoryIntercept(); err == nil {
			if m.Header.MessageType != MsgUnmappedGPA && m.Header.MessageType != MsgGPAIntercept {
				t.Fatalf("type %#x accepted as a memory intercept", m.Header.MessageType)
			}
			if int(v.InstructionByteCount) > len(v.InstructionBytes) {
				t.Fatalf("accepted %d instruction bytes", v.InstructionByteCount)
			}
			if got := binary.LittleEndian.Uint64(m.Payload[56:]); got != v.Syndrome {
				t.Fatalf("syndrome %#x decoded as %#x", got, v.Syndrome)
			}
		}
		if v, err := m.Arm64ResetIntercept(); err == nil {
			if m.Header.MessageType != MsgARM64ResetIntercept || v.ResetType > Arm64ResetHibernate {
				t.Fatalf("accepted type %#x reset type %d", m.Header.MessageType, v.ResetType)
			}
		}
	})
}
