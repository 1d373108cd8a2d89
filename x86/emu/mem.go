package emu

// Memory access: segmentation, alignment checks, paging and the split of
// an access into RAM and MMIO pieces.

const (
	cr0PE = 1 << 0
	cr0EM = 1 << 2
	cr0TS = 1 << 3
	cr0WP = 1 << 16
	cr0AM = 1 << 18
	cr0PG = 1 << 31

	cr4PSE    = 1 << 4
	cr4PAE    = 1 << 5
	cr4OSFXSR = 1 << 9
	cr4LA57   = 1 << 12
	cr4SMEP   = 1 << 20
	cr4SMAP   = 1 << 21

	eferLMA = 1 << 10
	eferNXE = 1 << 11

	flagCF   = 1 << 0
	flagPF   = 1 << 2
	flagAF   = 1 << 4
	flagZF   = 1 << 6
	flagSF   = 1 << 7
	flagDF   = 1 << 10
	flagOF   = 1 << 11
	flagIOPL = 3 << 12
	flagRF   = 1 << 16
	flagVM   = 1 << 17
	flagAC   = 1 << 18

	flagsArith = flagCF | flagPF | flagAF | flagZF | flagSF | flagOF
)

// access kinds.
type access uint8

const (
	accRead access = 1 << iota
	accWrite
	accFetch
	// accImplicit is a supervisor-mode access the CPU makes on its own
	// (TSS I/O bitmap), regardless of CPL.
	accImplicit
)

// pa is a resolved access: up to two physical pieces (two when the linear
// access crosses a 4 KiB page).
type pa struct {
	gpa [2]uint64
	n   [2]int
}

func (p *pa) size() int { return p.n[0] + p.n[1] }

func (s *state) gp0() error { return s.fault(VectorGP, true, 0, 0) }

func (s *state) fault(vec uint8, hasErr bool, code uint32, cr2 uint64) error {
	return &Fault{Vector: vec, HasErrorCode: hasErr, ErrorCode: code, CR2: cr2, RIP: s.rip}
}

// segFault is #SS(0) for stack references and #GP(0) otherwise.
func (s *state) segFault(seg SegReg) error {
	if seg == SS {
		return s.fault(VectorSS, true, 0, 0)
	}
	return s.gp0()
}

// linear converts seg:off (off already truncated to the address size) to
// a linear address, applying the mode's segmentation rules.
func (s *state) linear(seg SegReg, off uint64, size int, acc access) (uint64, error) {
	if s.mode == 64 {
		la := off
		if seg == FS || seg == GS {
			la += s.segment(seg).Base
		}
		if !s.canonical(la) || (size > 1 && !s.canonical(la+uint64(size)-1)) {
			return 0, s.segFault(seg)
		}
		return la, nil
	}
	sg := s.segment(seg)
	if s.protected() && !s.vm86 {
		if sg.Unusable || (!sg.Present && seg != CS) {
			return 0, s.segFault(seg)
		}
		code := sg.Type&8 != 0
		switch {
		case acc&accWrite != 0 && (code || sg.Type&2 == 0):
			return 0, s.segFault(seg)
		case acc&accRead != 0 && code && sg.Type&2 == 0:
			return 0, s.segFault(seg)
		}
	}
	last := off + uint64(size) - 1
	if !s.protected() || s.vm86 || sg.Type&8 != 0 || sg.Type&4 == 0 {
		// Expand-up (real mode uses the cached limit too).
		if last > uint64(sg.Limit) || last < off {
			return 0, s.segFault(seg)
		}
	} else {
		upper := uint64(0xffff)
		if sg.DB {
			upper = 0xffffffff
		}
		if off <= uint64(sg.Limit) || last > upper {
			return 0, s.segFault(seg)
		}
	}
	return (sg.Base + off) & 0xffffffff, nil
}

func (s *state) canonical(la uint64) bool {
	if uint64(int64(la<<16)>>16) == la {
		return true // canonical with 48 bits is canonical with 57
	}
	return s.getCR4()&cr4LA57 != 0 && uint64(int64(la<<7)>>7) == la
}

// resolve checks and translates a data access of size bytes at seg:off.
func (s *state) resolve(seg SegReg, off uint64, size int, acc access, p *pa) error {
	la, err := s.linear(seg, off, size, acc)
	if err != nil {
		return err
	}
	if size > 1 && size <= 8 && s.cpl == 3 && s.cr0&cr0AM != 0 && s.rflags&flagAC != 0 &&
		la&uint64(size-1) != 0 && acc&accImplicit == 0 {
		return s.fault(VectorAC, true, 0, 0)
	}
	return s.resolveLinear(la, size, acc, p)
}

func (s *state) resolveLinear(la uint64, size int, acc access, p *pa) error {
	first := 4096 - int(la&0xfff)
	if first > size {
		first = size
	}
	g, err := s.translate(la, acc)
	if err != nil {
		return err
	}
	p.gpa[0], p.n[0] = g, first
	p.n[1] = 0
	if first < size {
		next := la + uint64(first)
		if s.mode != 64 {
			next &= 0xffffffff
		}
		g, err := s.translate(next, acc)
		if err != nil {
			return err
		}
		p.gpa[1], p.n[1] = g, size-first
	}
	return nil
}

// translate walks the page tables for one linear address.
func (s *state) translate(la uint64, acc access) (uint64, error) {
	if s.cr0&cr0PG == 0 || !s.protected() {
		if s.mode != 64 {
			la &= 0xffffffff
		}
		return la, nil
	}
	if s.hintValid && la>>12 == s.hintGVA>>12 {
		return s.hintGPA&^0xfff | la&0xfff, nil
	}
	if !s.cr3Valid {
		s.cr3, s.cr3Valid = s.cpu.Control(CR3), true
	}
	s.getCR4()
	write := acc&accWrite != 0
	fetch := acc&accFetch != 0
	user := s.cpl == 3 && acc&accImplicit == 0
	var code uint32
	if write {
		code |= PFWrite
	}
	if user {
		code |= PFUser
	}
	if fetch && (s.efer&eferNXE != 0 || s.cr4&cr4SMEP != 0) {
		code |= PFFetch
	}
	nxe := s.efer&eferNXE != 0
	const physMask = 0x000f_ffff_ffff_f000 // 52-bit physical addresses
	var (
		levels  int
		table   uint64
		entSize int
	)
	switch {
	case s.cr4&cr4PAE == 0:
		levels, entSize, table = 2, 4, s.cr3&0xffff_f000
		la &= 0xffffffff
	case s.efer&eferLMA == 0:
		// PAE: the PDPTE (read from memory here; the CPU caches the four
		// PDPTEs when CR3 is loaded).
		la &= 0xffffffff
		b := &s.pte
		addr := s.cr3&0xffff_ffe0 + (la>>30)*8
		if !s.cpu.ReadPhys(addr, b[:]) {
			return 0, s.pf(la, code)
		}
		e := le64(b[:])
		if e&1 == 0 {
			return 0, s.pf(la, code)
		}
		if e&(0x1e6|0xfff0_0000_0000_0000) != 0 {
			return 0, s.pf(la, code|PFPresent|PFReserved)
		}
		levels, entSize, table = 2, 8, e&physMask
	default:
		levels, entSize, table = 4, 8, s.cr3&physMask
		if s.cr4&cr4LA57 != 0 {
			levels = 5
		}
	}
	// The walk: remember the entries and where they live to set A/D
	// only when the translation succeeds.
	var (
		addrs [5]uint64
		ents  [5]uint64
		n     int
		rw    = true
		us    = true
		nx    = false
		gpa   uint64
		// needAD: some entry lacks its accessed bit (or, for a write,
		// the leaf its dirty bit).
		needAD bool
	)
	for lvl := levels; lvl >= 1; lvl-- {
		var idx uint64
		if entSize == 4 {
			idx = la >> (12 + 10*uint(lvl-1)) & 0x3ff
		} else {
			idx = la >> (12 + 9*uint(lvl-1)) & 0x1ff
		}
		addr := table + idx*uint64(entSize)
		b := &s.pte
		if !s.cpu.ReadPhys(addr, b[:entSize]) {
			return 0, s.pf(la, code)
		}
		e := le64(b[:])
		if entSize == 4 {
			e &= 0xffffffff
		}
		addrs[n], ents[n] = addr, e
		n++
		if e&1 == 0 {
			return 0, s.pf(la, code)
		}
		large := lvl > 1 && e&0x80 != 0
		// Reserved bits.
		if entSize == 8 && (large || !nxe && e>>63 != 0) {
			var rsv uint64 // bits 52-62 are ignored (or protection keys)
			if !nxe {
				rsv = e & (1 << 63)
			}
			if large {
				if lvl > 3 || (lvl == 3 && levels == 2) {
					rsv |= 0x80 // PS in PML5E/PML4E (and PDPTE... handled above)
				}
				// Reserved bits between the PAT bit and the frame.
				pageBits := uint(12 + 9*(lvl-1))
				rsv |= e & ((1 << pageBits) - 1) & ^uint64(0x1fff)
			}
			if rsv != 0 {
				return 0, s.pf(la, code|PFPresent|PFReserved)
			}
		} else if entSize == 8 {
			// Not large and no reserved bit: nothing to check.
		} else if large && s.cr4&cr4PSE == 0 {
			large = false
		} else if large && e&(1<<21) != 0 {
			return 0, s.pf(la, code|PFPresent|PFReserved)
		}
		rw = rw && e&2 != 0
		us = us && e&4 != 0
		nx = nx || (nxe && e>>63 != 0)
		if e&0x20 == 0 {
			needAD = true
		}
		if lvl == 1 || large {
			switch {
			case entSize == 4 && large:
				gpa = e&0xffc0_0000 | (e>>13&0xff)<<32 | la&0x3f_ffff
			case entSize == 4:
				gpa = e&0xffff_f000 | la&0xfff
			default:
				pageMask := uint64(1)<<(12+9*uint(lvl-1)) - 1
				gpa = e&physMask&^pageMask | la&pageMask
			}
			break
		}
		if entSize == 4 {
			table = e & 0xffff_f000
		} else {
			table = e & physMask
		}
	}
	// Permissions.
	pcode := code | PFPresent
	switch {
	case user && !us:
		return 0, s.pf(la, pcode)
	case write && !rw && (user || s.cr0&cr0WP != 0):
		return 0, s.pf(la, pcode)
	case fetch && nx:
		return 0, s.pf(la, pcode)
	case fetch && !user && us && s.cr4&cr4SMEP != 0:
		return 0, s.pf(la, pcode)
	case !fetch && !user && us && s.cr4&cr4SMAP != 0 &&
		(acc&accImplicit != 0 || s.cpl == 3 || s.rflags&flagAC == 0):
		return 0, s.pf(la, pcode)
	}
	// Accessed and dirty bits.
	if write && ents[n-1]&0x40 == 0 {
		needAD = true
	}
	for i := 0; needAD && i < n; i++ {
		e := ents[i]
		leaf := i == n-1
		set := e | 0x20
		if leaf && write {
			set |= 0x40
		}
		if set != e {
			b := &s.pte
			putLE(b[:], set, 8)
			s.cpu.WritePhys(addrs[i], b[:entSize])
		}
	}
	return gpa, nil
}

func (s *state) pf(la uint64, code uint32) error {
	return s.fault(VectorPF, true, code, la)
}

// rd reads a resolved access into buf (len(buf) == p.size()).
func (s *state) rd(p *pa, buf []byte) {
	s.physRead(p.gpa[0], buf[:p.n[0]])
	if p.n[1] != 0 {
		s.physRead(p.gpa[1], buf[p.n[0]:p.n[0]+p.n[1]])
	}
}

// wr writes buf to a resolved access.
func (s *state) wr(p *pa, buf []byte) {
	s.physWrite(p.gpa[0], buf[:p.n[0]])
	if p.n[1] != 0 {
		s.physWrite(p.gpa[1], buf[p.n[0]:p.n[0]+p.n[1]])
	}
}

// physRead reads RAM or MMIO; a range that is partly RAM is split at the
// boundary so the device sees only its bytes.
// samePage reports whether [gpa, gpa+n) lies in one 4 KiB page.
func samePage(gpa uint64, n int) bool { return gpa>>12 == (gpa+uint64(n)-1)>>12 }

func (s *state) physRead(gpa uint64, buf []byte)  { s.physAccess(gpa, buf, false) }
func (s *state) physWrite(gpa uint64, buf []byte) { s.physAccess(gpa, buf, true) }

// physAccess reads or writes buf at gpa in guest RAM or, where it is not
// RAM, on the device bus. Guest RAM and MMIO are mapped in whole pages, so
// the part of an access inside one page is all RAM or all MMIO: an access
// within a page goes to one of the two whole, and one that crosses pages
// is split at the page boundaries, with consecutive MMIO parts kept
// together as one device access (a device register may straddle pages).
func (s *state) physAccess(gpa uint64, buf []byte, write bool) {
	if s.ram(gpa, buf, write) {
		return
	}
	if samePage(gpa, len(buf)) {
		s.mmio(gpa, buf, write)
		return
	}
	part := func(i int) int { return min(len(buf)-i, int(0x1000-(gpa+uint64(i))&0xfff)) }
	for i := 0; i < len(buf); {
		n := part(i)
		if s.ram(gpa+uint64(i), buf[i:i+n], write) {
			i += n
			continue
		}
		j := i + n
		for j < len(buf) && !s.cpu.ReadPhys(gpa+uint64(j), s.probe[:]) {
			j += part(j)
		}
		s.mmio(gpa+uint64(i), buf[i:j], write)
		i = j
	}
}

func (s *state) ram(gpa uint64, buf []byte, write bool) bool {
	if write {
		return s.cpu.WritePhys(gpa, buf)
	}
	return s.cpu.ReadPhys(gpa, buf)
}

func (s *state) mmio(gpa uint64, buf []byte, write bool) {
	if write {
		s.cpu.MMIOWrite(gpa, buf)
	} else {
		s.cpu.MMIORead(gpa, buf)
	}
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// getLE reads an n-byte little-endian value (n <= 8).
func getLE(b []byte, n int) uint64 {
	switch n {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(b[0]) | uint64(b[1])<<8
	case 4:
		return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24
	case 8:
		return le64(b)
	}
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func putLE(b []byte, v uint64, n int) {
	for i := 0; i < n; i++ {
		b[i] = byte(v >> (8 * i))
	}
}
