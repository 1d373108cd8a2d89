package confine

import (
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// govmm assembles its seccomp program itself, with golang.org/x/net/bpf,
// and takes only the system call tables from go-seccomp-bpf: that
// package's policy assembler (v1.6.0) leaves an argument in the
// accumulator when an argument check fails and goes on comparing it with
// the next system call's number, so a filter with conditions on several
// calls would let, say, an ioctl whose request number is 0 through as
// read(2).
//
// The program: check the architecture; refuse x32 numbers with ENOSYS;
// allow the unconditional calls (two instructions each, so the kernel's
// per-call action cache answers them without running the filter); for a
// conditional call, test its condition sets in turn; anything else gets
// the default action (trap, or log).

// seccomp_data offsets and return values (<linux/seccomp.h>).
const (
	dataNr        = 0
	dataArch      = 4
	dataArgs      = 16
	retAllow      = 0x7fff0000
	retLog        = 0x7ffc0000
	retTrap       = 0x00030000
	retErrno      = 0x00050000
	x32Bit        = 0x40000000
	setModeFilter = 1
	flagTSync     = 1
)

// sysnr is a system call's number on the host architecture, by its
// x86-64 name (arch.go); an error if the architecture lacks it.
func sysnr(name string) (uint32, error) {
	n, ok, err := hostArch.nr(name)
	if err == nil && !ok {
		err = fmt.Errorf("%s has no system call %q", hostArch.name, name)
	}
	return n, err
}

// program assembles the process filter for mode.
func program(mode SeccompMode) ([]bpf.Instruction, error) {
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = a.name
	}
	return assemble(defaultAction(mode, roleProcess), conditional(), names)
}

// defaultAction is what a filter returns for a call it does not allow:
// trap, with the role in SECCOMP_RET_DATA (the SIGSYS handler finds it in
// si_errno and names the thread), or log.
func defaultAction(mode SeccompMode, role uint16) uint32 {
	if mode == SeccompLog {
		return retLog
	}
	return retTrap | uint32(role)
}

// assemble builds a filter: the architecture check, x32 refused with
// ENOSYS (on x86-64), the conditional calls (each allowed when one of its condition
// sets holds), the unconditional ones, clone3 refused with ENOSYS, and
// def for everything else.
func assemble(def uint32, conds []conditionalCall, names []string) ([]bpf.Instruction, error) {
	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: dataArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: hostArch.audit, SkipTrue: 1},
		bpf.RetConstant{Val: def},
		bpf.LoadAbsolute{Off: dataNr, Size: 4},
	}
	if hostArch.x32 {
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32Bit, SkipFalse: 1},
			bpf.RetConstant{Val: retErrno | uint32(unix.ENOSYS)})
	}
	// The conditional calls first: ioctl (KVM_RUN) is the VMM's most
	// frequent call, and the cache cannot answer it.
	for _, c := range conds {
		nr, ok, err := hostArch.nr(c.name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		block := condBlock(c.sets, def)
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipTrue: 1},
			bpf.Jump{Skip: uint32(len(block))})
		p = append(p, block...)
	}
	for _, name := range names {
		nr, ok, err := hostArch.nr(name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue // the architecture lacks it (arch.go)
		}
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipFalse: 1},
			bpf.RetConstant{Val: retAllow})
	}
	// clone3 passes its flags in memory, where a filter cannot look: it
	// fails with ENOSYS, and the C library (in a cgo build) falls back to
	// clone, whose flags the filter checks.
	clone3, err := sysnr("clone3")
	if err != nil {
		return nil, err
	}
	p = append(p,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: clone3, SkipFalse: 1},
		bpf.RetConstant{Val: retErrno | uint32(unix.ENOSYS)},
		bpf.RetConstant{Val: def})
	if len(p) > 4096 { // BPF_MAXINSNS
		return nil, fmt.Errorf("the filter has %d instructions, more than the kernel's 4096", len(p))
	}
	return p, nil
}

// condBlock tests condition sets in turn: the first that holds allows the
// call; when none does, def. Arguments are compared on their low 32 bits:
// every argument conditioned here (ioctl's request, mmap's and mprotect's
// protection, clone's flags, socket's family) is one the kernel takes as a
// 32-bit int, so the high half changes nothing the call does.
func condBlock(sets [][]cond, def uint32) []bpf.Instruction {
	var out []bpf.Instruction
	for _, set := range sets {
		// Each condition is two or three instructions that skip to the
		// end of this set (its "ret allow", plus one) when it fails.
		var code [][]bpf.Instruction
		for _, c := range set {
			ld := bpf.LoadAbsolute{Off: dataArgs + 8*uint32(c.arg), Size: 4}
			v := uint32(c.val)
			switch c.op {
			case opEqual:
				code = append(code, []bpf.Instruction{ld, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v}})
			case opBitsClear:
				code = append(code, []bpf.Instruction{ld, bpf.JumpIf{Cond: bpf.JumpBitsNotSet, Val: v}})
			case opBitsSet:
				code = append(code, []bpf.Instruction{ld, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: v}, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v}})
			}
		}
		n := 1 // the set's final ret allow
		for _, c := range code {
			n += len(c)
		}
		done := 0
		for _, c := range code {
			done += len(c)
			j := c[len(c)-1].(bpf.JumpIf)
			j.SkipFalse = uint8(n - done) // past this set's ret allow
			c[len(c)-1] = j
			out = append(out, c...)
		}
		out = append(out, bpf.RetConstant{Val: retAllow})
	}
	return append(out, bpf.RetConstant{Val: def})
}

// rawFilter assembles a program into the kernel's instruction format.
func rawFilter(insts []bpf.Instruction) ([]unix.SockFilter, error) {
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return filter, nil
}

// loadFilter installs the program on every thread of the process (tsync)
// or on the calling thread alone.
func loadFilter(insts []bpf.Instruction, tsync bool) error {
	filter, err := rawFilter(insts)
	if err != nil {
		return err
	}
	return loadRaw(filter, tsync)
}

// loadRaw installs an assembled filter.
func loadRaw(filter []unix.SockFilter, tsync bool) error {
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	var flags uintptr
	if tsync {
		flags = flagTSync
	}
	r, _, e := unix.RawSyscall(unix.SYS_SECCOMP, setModeFilter, flags, uintptr(unsafe.Pointer(&prog)))
	if e != 0 {
		if e == unix.ENOSYS || e == unix.EINVAL {
			return fmt.Errorf("this kernel has no seccomp filters: %w", e)
		}
		return e
	}
	if r != 0 {
		// TSYNC names the thread it could not synchronize.
		return fmt.Errorf("thread %d has another seccomp filter, so the filter cannot cover every thread", r)
	}
	return nil
}
