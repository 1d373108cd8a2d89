// Command gomin is the C floor (bench/floor/floor.c) written in Go, ioctl for
// ioctl: it loads the Multiboot ELF32 guest, enters it in 32-bit protected
// mode and completes every port and MMIO exit with no device model, until
// the guest writes the debug-exit port. It shares nothing with govmm, so
// next to the C floor it shows what the Go runtime alone adds to a VMM's
// start-up; the Go floor (bench/gofloor) adds govmm's KVM backend and
// loader, and govmm the whole machine.
//
// Like floor.c, and unlike govmm's own packages, it talks to /dev/kvm with
// raw ioctls: it is a baseline, not part of the VMM.
//
// usage: gomin KERNEL.elf [MEM_MIB]
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl numbers and exit reasons from <linux/kvm.h>.
const (
	kvmGetVCPUMmapSize       = 0xae04
	kvmCreateVM              = 0xae01
	kvmCreateVCPU            = 0xae41
	kvmRun                   = 0xae80
	kvmSetTSSAddr            = 0xae47
	kvmSetUserMemoryRegion   = 0x4020ae46
	kvmGetSregs              = 0x8138ae83
	kvmSetSregs              = 0x4138ae84
	kvmSetRegs               = 0x4090ae82
	exitIO                   = 2
	exitHLT                  = 5
	exitMMIO                 = 6
	ioDirectionOut           = 1
	debugExitPort            = 0xf4
	runExitUnionOffset       = 32
	multibootBootloaderMagic = 0x2badb002
)

type memoryRegion struct {
	slot, flags                   uint32
	guestPhysAddr, size, userAddr uint64
}

type segment struct {
	base                                uint64
	limit                               uint32
	selector                            uint16
	typ, present, dpl, db, s, l, g, avl uint8
	unusable, _                         uint8
}

type dtable struct {
	base  uint64
	limit uint16
	_     [3]uint16
}

type sregs struct {
	cs, ds, es, fs, gs, ss, tr, ldt segment
	gdt, idt                        dtable
	cr0, cr2, cr3, cr4, cr8, efer   uint64
	apicBase                        uint64
	interruptBitmap                 [4]uint64
}

type regs struct {
	rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp uint64
	r8, r9, r10, r11, r12, r13, r14, r15   uint64
	rip, rflags                            uint64
}

// The layouts of <linux/kvm.h>, checked at compile time.
var (
	_ [32 - unsafe.Sizeof(memoryRegion{})]byte
	_ [unsafe.Sizeof(memoryRegion{}) - 32]byte
	_ [312 - unsafe.Sizeof(sregs{})]byte
	_ [unsafe.Sizeof(sregs{}) - 312]byte
	_ [144 - unsafe.Sizeof(regs{})]byte
	_ [unsafe.Sizeof(regs{}) - 144]byte
)

func ioctl(fd int, req uintptr, arg uintptr, what string) int {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == unix.EINTR || e == unix.EAGAIN {
			continue
		}
		if e != 0 {
			fmt.Fprintf(os.Stderr, "gomin: %s: %v\n", what, e)
			os.Exit(70)
		}
		return int(r)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gomin KERNEL.elf [MEM_MIB]")
		os.Exit(64)
	}
	mib := 64
	if len(os.Args) > 2 {
		mib, _ = strconv.Atoi(os.Args[2])
	}
	memSize := mib << 20
	runtime.LockOSThread()

	img, err := os.ReadFile(os.Args[1])
	le := binary.LittleEndian
	if err != nil || len(img) < 52 || !bytes.HasPrefix(img, []byte("\x7fELF\x01")) {
		fmt.Fprintf(os.Stderr, "gomin: %s is not an ELF32 kernel (%v)\n", os.Args[1], err)
		os.Exit(64)
	}
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gomin: open /dev/kvm:", err)
		os.Exit(69)
	}
	vm := ioctl(kvm, kvmCreateVM, 0, "KVM_CREATE_VM")
	ioctl(vm, kvmSetTSSAddr, 0xfffbd000, "KVM_SET_TSS_ADDR")
	mem, err := unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gomin: mmap guest memory:", err)
		os.Exit(70)
	}
	region := memoryRegion{size: uint64(memSize), userAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	ioctl(vm, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region)), "KVM_SET_USER_MEMORY_REGION")
	// Elf32_Ehdr: e_entry at 24, e_phoff at 28, e_phentsize at 42,
	// e_phnum at 44; Elf32_Phdr: p_type, p_offset, p_vaddr, p_paddr,
	// p_filesz, p_memsz.
	phoff, phentsize, phnum := le.Uint32(img[28:]), uint32(le.Uint16(img[42:])), uint32(le.Uint16(img[44:]))
	for i := range phnum {
		off := phoff + i*phentsize
		if uint64(off)+32 > uint64(len(img)) {
			fmt.Fprintln(os.Stderr, "gomin: truncated program headers")
			os.Exit(64)
		}
		ph := img[off:]
		if le.Uint32(ph) != 1 { // PT_LOAD
			continue
		}
		offset, paddr, filesz, memsz := le.Uint32(ph[4:]), le.Uint32(ph[12:]), le.Uint32(ph[16:]), le.Uint32(ph[20:])
		if uint64(paddr)+uint64(memsz) > uint64(memSize) || uint64(offset)+uint64(filesz) > uint64(len(img)) {
			fmt.Fprintln(os.Stderr, "gomin: segment outside memory or file")
			os.Exit(64)
		}
		copy(mem[paddr:], img[offset:offset+filesz])
	}

	cpu := ioctl(vm, kvmCreateVCPU, 0, "KVM_CREATE_VCPU")
	runSize := ioctl(kvm, kvmGetVCPUMmapSize, 0, "KVM_GET_VCPU_MMAP_SIZE")
	run, err := unix.Mmap(cpu, 0, runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gomin: mmap kvm_run:", err)
		os.Exit(70)
	}
	var s sregs
	ioctl(cpu, kvmGetSregs, uintptr(unsafe.Pointer(&s)), "KVM_GET_SREGS")
	code := segment{limit: 0xffffffff, selector: 0x08, typ: 0xb, present: 1, db: 1, s: 1, g: 1}
	data := code
	data.typ, data.selector = 0x3, 0x10
	s.cs = code
	s.ds, s.es, s.fs, s.gs, s.ss = data, data, data, data, data
	s.cr0 = 0x11 // PE | ET
	ioctl(cpu, kvmSetSregs, uintptr(unsafe.Pointer(&s)), "KVM_SET_SREGS")
	r := regs{rip: uint64(le.Uint32(img[24:])), rflags: 2, rax: multibootBootloaderMagic}
	ioctl(cpu, kvmSetRegs, uintptr(unsafe.Pointer(&r)), "KVM_SET_REGS")

	exit := run[runExitUnionOffset:]
	for {
		ioctl(cpu, kvmRun, 0, "KVM_RUN")
		switch reason := *(*uint32)(unsafe.Pointer(&run[8])); reason {
		case exitIO: // direction u8, size u8, port u16, count u32, data_offset u64
			port := *(*uint16)(unsafe.Pointer(&exit[2]))
			if port == debugExitPort && exit[0] == ioDirectionOut {
				off := *(*uint64)(unsafe.Pointer(&exit[8]))
				os.Exit(int(run[off])<<1 | 1)
			}
		case exitMMIO: // phys_addr u64, data [8]u8, len u32, is_write u8
			if exit[20] == 0 {
				for i := range exit[8:16] {
					exit[8+i] = 0xff
				}
			}
		case exitHLT:
			os.Exit(0)
		default:
			fmt.Fprintf(os.Stderr, "gomin: unexpected exit %d\n", reason)
			os.Exit(2)
		}
	}
}
