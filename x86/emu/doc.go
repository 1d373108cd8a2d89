// Package emu executes x86 instructions on behalf of a VMM whose
// accelerator reports instruction intercepts instead of completed
// accesses. On MSHV an access to an unmapped GPA (MMIO) or a port
// intercept arrives with up to 16 instruction bytes and the register
// state, and the VMM must decode the instruction, perform it against the
// device or guest memory, write back registers and flags and advance RIP.
// This package does that for any backend, through the small CPU interface
// in iface.go, and depends on nothing else in govmm (decoding is package
// x86/decode).
//
// # How an instruction is executed
//
// Step reads CR0, CR4, EFER, RFLAGS, RIP and CS, derives the mode (real,
// virtual-8086, 16/32-bit protected, 64-bit) and the CPL (CS.RPL), decodes
// the instruction (fetching the rest from guest RAM at CS:RIP when the
// intercept gave fewer bytes than the instruction needs) and executes it.
// Every memory operand goes through:
//
//   - segmentation outside 64-bit mode (base, limit with expand-down,
//     type checks: writes to read-only or code segments, reads of
//     execute-only code, null/unusable segments), #GP(0) or #SS(0) for
//     stack references; in 64-bit mode FS/GS bases and the canonical
//     check (4- or 5-level) with #GP(0)/#SS(0);
//   - alignment checking (#AC(0) at CPL3 with CR0.AM and RFLAGS.AC) and
//     the 16/32-byte alignment of MOVDQA/MOVAPS/MOVNTDQ/VMOVDQA and
//     CMPXCHG16B (#GP(0));
//   - the page walk: no paging, 32-bit (with 4 MiB PSE pages), PAE,
//     4-level and 5-level, with 2 MiB and 1 GiB pages; U/S, R/W with
//     CR0.WP, NX with EFER.NXE, SMEP, SMAP (with RFLAGS.AC and implicit
//     supervisor accesses), reserved-bit checks (52-bit physical
//     addresses assumed), #PF with the architectural error code and CR2;
//     accessed bits on every entry used and the dirty bit on writes, set
//     only when the translation succeeds; a per-Step GVA->GPA Hint from
//     the intercept skips the walk;
//   - the split of the access at a 4 KiB page boundary (both pages are
//     translated before anything is read or written, so a fault leaves
//     memory untouched) and, inside a page, at the boundary between RAM
//     and MMIO: RAM bytes go to ReadPhys/WritePhys, the rest to one
//     MMIORead/MMIOWrite of the instruction's natural size.
//
// Registers are written back only when the instruction completes; a fault
// leaves RIP and the registers unchanged, except for the iterations of a
// REP string instruction that completed (RCX, RSI, RDI), exactly as on the
// CPU, which also restores the flags of an interrupted REPE/REPNE CMPS or
// SCAS. When both operands of CMPS fault, ES:rDI is reported first, as on
// the CPU. INS checks its memory operand before it reads the port, so a
// faulting INS consumes no device data (the CPU may read the port first). A REP
// instruction runs at most MaxRepeat iterations per Step and then returns
// with RIP unchanged so the guest re-executes it and takes pending
// interrupts in between. LOCK-prefixed read-modify-writes (and XCHG with
// memory) are one read and one write of the operand size at the same
// address, bracketed by BusLocker.LockBus/UnlockBus when the CPU
// implements it.
//
// # Supported instructions
//
// Every operand size (8/16/32/64 bits, 66 and REX.W), every addressing
// form (ModRM/SIB, disp8/32, RIP-relative, moffs, 16-bit [bx+si] forms,
// 67 address-size override, segment overrides), and exact CF/PF/AF/ZF/
// SF/OF (the differential test compares them with the CPU):
//
//	MOV (88-8B, C6/C7, A0-A3 moffs, B0-BF), MOVZX, MOVSX, MOVSXD, MOVBE,
//	MOVNTI; MOVS, CMPS, STOS, LODS, SCAS with REP/REPE/REPNE, DF and the
//	address size; ADD, OR, ADC, SBB, AND, SUB, XOR, CMP (all forms),
//	TEST, NOT, NEG, INC, DEC, XCHG (incl. 90+r), CMPXCHG, CMPXCHG8B,
//	CMPXCHG16B, XADD, BT/BTS/BTR/BTC (register and immediate; the
//	register form addresses the unit that holds the signed bit offset),
//	SETcc, CMOVcc, PUSH r/m, POP r/m, IN, OUT, INS, OUTS (with the IOPL
//	and TSS I/O-bitmap checks), MOVDIRI, MOVDIR64B (one 64-byte write),
//	LOCK forms of the read-modify-writes;
//	SSE: MOVD/MOVQ (66 0F 6E/7E, F3 0F 7E, 66 0F D6), MOVDQA, MOVDQU,
//	MOVAPS/MOVAPD, MOVUPS/MOVUPD, MOVNTDQ, MOVNTPS/MOVNTPD (with
//	CR0.EM/CR4.OSFXSR #UD and CR0.TS #NM);
//	AVX (VEX, 128 and 256 bits): VMOVDQU, VMOVDQA, VMOVUPS/VMOVUPD,
//	VMOVAPS/VMOVAPD, VMOVNTDQ, VMOVNTPS/PD, VMOVD, VMOVQ.
//
// # Refused
//
// Everything else decodes (with the right length) and is refused with an
// *UnsupportedError that names the instruction and its bytes, never
// executed approximately: other ALU instructions (MUL, DIV, shifts,
// rotates, LEA, ...), ENQCMD/ENQCMDS, control transfers, MOV to/from segment,
// control and debug registers, system instructions, x87, MMX register
// forms of MOVD/MOVQ/MOVDQ, MOVSS/MOVSD and the other SSE/AVX
// instructions, all EVEX (AVX-512) and XOP encodings. Encodings the CPU
// rejects (LOCK misuse, opcodes invalid in the mode, VEX with a bad vvvv)
// raise #UD, instructions longer than 15 bytes #GP(0).
//
// Not modelled: MAXPHYADDR below 52 bits, protection keys, CET shadow
// stacks, the PAE PDPTE cache (PDPTEs are read from memory), XCR0 (the
// CPU already checked it before the intercept), segment-descriptor loads
// (no instruction here loads a segment).
package emu
