package mshvabi

import (
	"fmt"
	"unsafe"
)

// The wrappers below are the only place where the backend's Go values turn
// into raw ioctl arguments. Buffers whose addresses travel inside argument
// structs (in_ptr, out_ptr, bitmap_ptr, buf_ptr) are forced onto the heap
// (see keep), because the Go heap does not move while the kernel (or the
// in-process simulator, which runs Go code that may grow the stack) holds
// their address as a plain integer.

var (
	never bool
	sink  any
)

// keep makes the compiler treat b as escaping, so callers allocate it on
// the heap and its address stays valid while it is held as an integer.
func keep(b []byte) {
	if never {
		sink = b
	}
}

func addr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// Addr is the address of b's first byte (0 for an empty slice), for
// comparing host ranges.
func Addr(b []byte) uintptr { return uintptr(addr(b)) }

// Bytes returns the memory of *p as a byte slice (no copy).
func Bytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// Load copies a T out of the start of b; ok is false if b is too short.
func Load[T any](b []byte) (v T, ok bool) {
	if len(b) < int(unsafe.Sizeof(v)) {
		return v, false
	}
	copy(Bytes(&v), b)
	return v, true
}

// Store copies *v into the start of b, which must be long enough.
func Store[T any](b []byte, v *T) {
	copy(b, Bytes(v))
}

// AlignedBuffer returns n zeroed bytes on the heap, aligned to 4 KiB
// (MSHV_GET/SET_VP_STATE require page-aligned buffers).
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+4096)
	off := int((4096 - uintptr(unsafe.Pointer(&b[0]))%4096) % 4096)
	return b[off : off+n : off+n]
}

// CreatePartitionFD issues MSHV_CREATE_PARTITION with the v1 payload.
func CreatePartitionFD(d Device, a *CreatePartition) (int, error) {
	return d.Ioctl(d.SystemFD(), ReqCreatePartition, unsafe.Pointer(a))
}

// CreatePartitionV2FD issues MSHV_CREATE_PARTITION with the v2 payload (the
// request number still encodes 16 bytes; pt_flags bit 3 tells the kernel
// to read 64).
func CreatePartitionV2FD(d Device, a *CreatePartitionV2) (int, error) {
	return d.Ioctl(d.SystemFD(), ReqCreatePartition, unsafe.Pointer(a))
}

// InitializePartition issues MSHV_INITIALIZE_PARTITION.
func InitializePartition(d Device, pfd int) error {
	_, err := d.Ioctl(pfd, ReqInitializePartition, nil)
	return err
}

// CreateVPFD issues MSHV_CREATE_VP and returns the VP fd.
func CreateVPFD(d Device, pfd int, index uint32) (int, error) {
	a := &CreateVP{VPIndex: index}
	return d.Ioctl(pfd, ReqCreateVP, unsafe.Pointer(a))
}

// SetGuestMemory issues MSHV_SET_GUEST_MEMORY. host is the region's host
// memory (userspace_addr and size come from it).
func SetGuestMemory(d Device, pfd int, gpa uint64, host []byte, flags uint8) error {
	if len(host) == 0 {
		return fmt.Errorf("empty memory region")
	}
	a := &UserMemRegion{Size: uint64(len(host)), GuestPFN: gpa >> 12, UserspaceAddr: addr(host), Flags: flags}
	_, err := d.Ioctl(pfd, ReqSetGuestMemory, unsafe.Pointer(a))
	return err
}

// SetIRQFD issues MSHV_IRQFD.
func SetIRQFD(d Device, pfd int, a UserIRQFD) error {
	_, err := d.Ioctl(pfd, ReqIRQFD, unsafe.Pointer(&a))
	return err
}

// SetIOEventFD issues MSHV_IOEVENTFD.
func SetIOEventFD(d Device, pfd int, a UserIOEventFD) error {
	_, err := d.Ioctl(pfd, ReqIOEventFD, unsafe.Pointer(&a))
	return err
}

// SetMSIRouting issues MSHV_SET_MSI_ROUTING with the whole table.
func SetMSIRouting(d Device, pfd int, entries []UserIRQEntry) error {
	words := make([]uint64, 1+2*len(entries))
	h := (*UserIRQTable)(unsafe.Pointer(&words[0]))
	h.Nr = uint32(len(entries))
	if len(entries) > 0 {
		copy(unsafe.Slice((*UserIRQEntry)(unsafe.Pointer(&words[1])), len(entries)), entries)
	}
	_, err := d.Ioctl(pfd, ReqSetMSIRouting, unsafe.Pointer(&words[0]))
	return err
}

// GetGPAPAccessBitmap issues MSHV_GET_GPAP_ACCESS_BITMAP for count pages
// from GFN base into bitmap (at least ceil(count/8) bytes).
func GetGPAPAccessBitmap(d Device, pfd int, accessType, op uint8, base, count uint64, bitmap []byte) error {
	keep(bitmap)
	if uint64(len(bitmap))*8 < count {
		return fmt.Errorf("GPAP bitmap of %d bytes is too small for %d pages", len(bitmap), count)
	}
	a := &GPAPAccessBitmap{AccessType: accessType, AccessOp: op, PageCount: count, GPAPBase: base, BitmapPtr: addr(bitmap)}
	_, err := d.Ioctl(pfd, ReqGetGPAPAccessBitmap, unsafe.Pointer(a))
	return err
}

// HvcallResult is what MSHV_ROOT_HVCALL reports back.
type HvcallResult struct {
	Reps   uint16 // reps completed
	Status uint16 // HV_STATUS_*
}

// Hvcall issues MSHV_ROOT_HVCALL on fd (the partition or a VP fd; the
// /dev/mshv fd only for self-targeted property reads). in must be at least
// 8 bytes; the kernel overwrites its first 8 with the partition id.
func Hvcall(d Device, fd int, code, reps uint16, in, out []byte) (HvcallResult, error) {
	keep(in)
	keep(out)
	a := &RootHvcall{Code: code, Reps: reps, InSz: uint16(len(in)), OutSz: uint16(len(out)), InPtr: addr(in), OutPtr: addr(out)}
	if len(in) > HvcallMaxInput || len(out) > HvcallMaxInput {
		return HvcallResult{}, fmt.Errorf("hypercall %#x buffers too large (in %d, out %d)", code, len(in), len(out))
	}
	_, err := d.Ioctl(fd, ReqRootHvcall, unsafe.Pointer(a))
	return HvcallResult{Reps: a.Reps, Status: a.Status}, err
}

// RunVP issues MSHV_RUN_VP and stores the message in m.
func RunVP(d Device, vpFD int, m *Message) error {
	_, err := d.Ioctl(vpFD, ReqRunVP, unsafe.Pointer(m))
	return err
}

// GetVPState issues MSHV_GET_VP_STATE into buf (page aligned, a multiple of
// 4 KiB; see AlignedBuffer) and returns the size the kernel reports.
func GetVPState(d Device, vpFD int, typ uint8, buf []byte) (uint32, error) {
	keep(buf)
	a := &GetSetVPState{Type: typ, BufSz: uint32(len(buf)), BufPtr: addr(buf)}
	_, err := d.Ioctl(vpFD, ReqGetVPState, unsafe.Pointer(a))
	return a.BufSz, err
}

// SetVPState issues MSHV_SET_VP_STATE from buf.
func SetVPState(d Device, vpFD int, typ uint8, buf []byte) (uint32, error) {
	keep(buf)
	a := &GetSetVPState{Type: typ, BufSz: uint32(len(buf)), BufPtr: addr(buf)}
	_, err := d.Ioctl(vpFD, ReqSetVPState, unsafe.Pointer(a))
	return a.BufSz, err
}

// RegisterPage views a mapped register page (mmap offset 0).
func RegisterPage(b []byte) (*VPRegisterPage, error) {
	if len(b) < int(unsafe.Sizeof(VPRegisterPage{})) {
		return nil, fmt.Errorf("register page mapping of %d bytes is too small", len(b))
	}
	return (*VPRegisterPage)(unsafe.Pointer(&b[0])), nil
}

func payload[T any](m *Message) *T {
	return (*T)(unsafe.Pointer(&m.Payload[0]))
}

// InterceptHeader views the payload's common x64 intercept header.
func (m *Message) InterceptHeader() *InterceptMessageHeader {
	return payload[InterceptMessageHeader](m)
}

// Memory views the payload of UNMAPPED_GPA / GPA_INTERCEPT.
func (m *Message) Memory() *MemoryInterceptMessage { return payload[MemoryInterceptMessage](m) }

// IOPort views the payload of X64_IO_PORT_INTERCEPT.
func (m *Message) IOPort() *IOPortInterceptMessage { return payload[IOPortInterceptMessage](m) }

// CPUID views the payload of X64_CPUID_INTERCEPT.
func (m *Message) CPUID() *CPUIDInterceptMessage { return payload[CPUIDInterceptMessage](m) }

// MSR views the payload of X64_MSR_INTERCEPT.
func (m *Message) MSR() *MSRInterceptMessage { return payload[MSRInterceptMessage](m) }

// Exception views the payload of X64_EXCEPTION_INTERCEPT.
func (m *Message) Exception() *ExceptionInterceptMessage {
	return payload[ExceptionInterceptMessage](m)
}

// APICEOI views the payload of X64_APIC_EOI.
func (m *Message) APICEOI() *APICEOIMessage { return payload[APICEOIMessage](m) }

// SIPI views the payload of X64_SIPI_INTERCEPT.
func (m *Message) SIPI() *SIPIInterceptMessage { return payload[SIPIInterceptMessage](m) }
