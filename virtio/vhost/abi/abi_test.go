package abi

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"govmm/internal/abicheck"
)

// abi pins the structs and request numbers govmm uses to
// <linux/vhost.h> and <linux/vhost_types.h> (recorded from gcc on x86-64
// against Debian 12's linux-libc-dev).
var abi = []abicheck.Value{
	abicheck.V("sizeof(struct vhost_vring_state)", unsafe.Sizeof(VringState{}), 8),
	abicheck.V("offsetof(struct vhost_vring_state, num)", unsafe.Offsetof(VringState{}.Num), 4),
	abicheck.V("sizeof(struct vhost_vring_file)", unsafe.Sizeof(VringFile{}), 8),
	abicheck.V("offsetof(struct vhost_vring_file, fd)", unsafe.Offsetof(VringFile{}.Fd), 4),
	abicheck.V("sizeof(struct vhost_vring_addr)", unsafe.Sizeof(VringAddr{}), 40),
	abicheck.V("offsetof(struct vhost_vring_addr, flags)", unsafe.Offsetof(VringAddr{}.Flags), 4),
	abicheck.V("offsetof(struct vhost_vring_addr, desc_user_addr)", unsafe.Offsetof(VringAddr{}.DescUser), 8),
	abicheck.V("offsetof(struct vhost_vring_addr, used_user_addr)", unsafe.Offsetof(VringAddr{}.UsedUser), 16),
	abicheck.V("offsetof(struct vhost_vring_addr, avail_user_addr)", unsafe.Offsetof(VringAddr{}.AvailUser), 24),
	abicheck.V("offsetof(struct vhost_vring_addr, log_guest_addr)", unsafe.Offsetof(VringAddr{}.LogGuestAddr), 32),
	abicheck.V("sizeof(struct vhost_memory)", unsafe.Sizeof(Memory{}), 8),
	abicheck.V("sizeof(struct vhost_memory_region)", unsafe.Sizeof(MemoryRegion{}), 32),
	abicheck.V("offsetof(struct vhost_memory_region, memory_size)", unsafe.Offsetof(MemoryRegion{}.Size), 8),
	abicheck.V("offsetof(struct vhost_memory_region, userspace_addr)", unsafe.Offsetof(MemoryRegion{}.UserAddr), 16),
	abicheck.V("offsetof(struct vhost_memory_region, flags_padding)", unsafe.Offsetof(MemoryRegion{}.FlagsPadding), 24),
	abicheck.V("VHOST_GET_FEATURES", GetFeatures, 0x8008af00),
	abicheck.V("VHOST_SET_FEATURES", SetFeatures, 0x4008af00),
	abicheck.V("VHOST_SET_OWNER", SetOwner, 0xaf01),
	abicheck.V("VHOST_RESET_OWNER", ResetOwner, 0xaf02),
	abicheck.V("VHOST_SET_MEM_TABLE", SetMemTable, 0x4008af03),
	abicheck.V("VHOST_SET_LOG_BASE", SetLogBase, 0x4008af04),
	abicheck.V("VHOST_SET_VRING_NUM", SetVringNum, 0x4008af10),
	abicheck.V("VHOST_SET_VRING_ADDR", SetVringAddr, 0x4028af11),
	abicheck.V("VHOST_SET_VRING_BASE", SetVringBase, 0x4008af12),
	abicheck.V("VHOST_GET_VRING_BASE", GetVringBase, 0xc008af12),
	abicheck.V("VHOST_SET_VRING_KICK", SetVringKick, 0x4008af20),
	abicheck.V("VHOST_SET_VRING_CALL", SetVringCall, 0x4008af21),
	abicheck.V("VHOST_SET_VRING_ERR", SetVringErr, 0x4008af22),
	abicheck.V("VHOST_NET_SET_BACKEND", NetSetBackend, 0x4008af30),
	abicheck.V("VHOST_VSOCK_SET_GUEST_CID", VsockSetCID, 0x4008af60),
	abicheck.V("VHOST_VSOCK_SET_RUNNING", VsockSetRunning, 0x4004af61),
	abicheck.V("1ULL << VHOST_F_LOG_ALL", FLogAll, 1<<26),
}

func TestABI(t *testing.T) { abicheck.Recorded(t, abi) }

func TestABIAgainstHeader(t *testing.T) {
	abicheck.Headers(t, "gcc", []string{"linux/vhost.h"}, abi)
}

// TestMemTable checks the encoding VHOST_SET_MEM_TABLE reads: the
// region count, padding, then each region's four fields.
func TestMemTable(t *testing.T) {
	b := MemTable([]MemoryRegion{{GuestPhys: 0, Size: 0x1000, UserAddr: 0x7f0000000000}, {GuestPhys: 1 << 32, Size: 1 << 30, UserAddr: 0x7f0100000000}})
	if len(b) != 8+2*32 {
		t.Fatalf("%d bytes, want %d", len(b), 8+2*32)
	}
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != 2 || le.Uint32(b[4:]) != 0 {
		t.Errorf("header % x", b[:8])
	}
	for i, want := range [][3]uint64{{0, 0x1000, 0x7f0000000000}, {1 << 32, 1 << 30, 0x7f0100000000}} {
		r := b[8+32*i:]
		if got := [3]uint64{le.Uint64(r), le.Uint64(r[8:]), le.Uint64(r[16:])}; got != want || le.Uint64(r[24:]) != 0 {
			t.Errorf("region %d = %#x, want %#x", i, got, want)
		}
	}
}

// TestLog: the log's words are the bytes the kernel sets bits in, page p
// at byte p/8, bit p%8 (little-endian), and it covers every page asked.
func TestLog(t *testing.T) {
	l, err := MapLog(130)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unmap()
	if len(l.Words) != 3 {
		t.Fatalf("%d words for 130 pages, want 3", len(l.Words))
	}
	if l.Addr() != UserAddr(l.m) || len(l.m) != 24 {
		t.Fatalf("log at %#x, %d bytes", l.Addr(), len(l.m))
	}
	l.m[129/8] |= 1 << (129 % 8) // what set_bit_to_user does for page 129
	if got := l.Words[2].Load(); got != 1<<1 {
		t.Errorf("page 129 set as the kernel does: word 2 = %#x, want bit 1", got)
	}
}
