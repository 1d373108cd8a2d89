package acpi

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// A small AML encoder (ACPI 6.5, chapter 20): enough to describe the
// machine's devices in the DSDT (scopes, devices, named integers, strings,
// EISA IDs, packages, buffers, methods that return a value) and the
// resource templates their _CRS objects hold. Each function returns the
// encoded bytes of one term; callers concatenate them.

// AML opcodes.
const (
	amlZeroOp      = 0x00
	amlOneOp       = 0x01
	amlNameOp      = 0x08
	amlBytePrefix  = 0x0A
	amlWordPrefix  = 0x0B
	amlDWordPrefix = 0x0C
	amlStringPref  = 0x0D
	amlQWordPrefix = 0x0E
	amlScopeOp     = 0x10
	amlBufferOp    = 0x11
	amlPackageOp   = 0x12
	amlMethodOp    = 0x14
	amlReturnOp    = 0xA4
	amlOnesOp      = 0xFF
	amlExtOpPrefix = 0x5B
	amlDeviceOp    = 0x82 // after amlExtOpPrefix
	amlOpRegionOp  = 0x80 // after amlExtOpPrefix
	amlFieldOp     = 0x81 // after amlExtOpPrefix
	amlStoreOp     = 0x70
	amlAndOp       = 0x7B
	amlNotifyOp    = 0x86
	amlIfOp        = 0xA0
	amlLocal0Op    = 0x60
	amlArg0Op      = 0x68
	amlRootChar    = '\\'
	amlDualName    = 0x2E
	amlMultiName   = 0x2F
)

// amlPkgLength encodes a PkgLength for n bytes of content that follow it
// (the encoded length counts itself).
func amlPkgLength(n int) []byte {
	if n+1 < 1<<6 {
		return []byte{byte(n + 1)}
	}
	for k := 1; k <= 3; k++ {
		total := n + 1 + k
		if total < 1<<(4+8*k) {
			b := []byte{byte(k<<6) | byte(total&0xF)}
			for i := 0; i < k; i++ {
				b = append(b, byte(total>>(4+8*i)))
			}
			return b
		}
	}
	panic(fmt.Sprintf("aml: package of %d bytes is too long", n)) // 256 MiB: never built here
}

// amlPkg prefixes body with its PkgLength.
func amlPkg(body []byte) []byte { return append(amlPkgLength(len(body)), body...) }

// amlNameSeg checks and pads one name segment ("_SB" -> "_SB_").
func amlNameSeg(s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		panic(fmt.Sprintf("aml: bad name segment %q", s))
	}
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			panic(fmt.Sprintf("aml: bad name segment %q", s))
		}
	}
	return []byte(s + strings.Repeat("_", 4-len(s)))
}

// amlNameString encodes a name path: "\\_SB.PCI0", "PCI0", "_CRS".
// Names are the encoder's own constants, so a malformed one is a bug and
// panics.
func amlNameString(path string) []byte {
	var b []byte
	if strings.HasPrefix(path, "\\") {
		b = append(b, amlRootChar)
		path = path[1:]
	}
	if path == "" {
		return append(b, 0) // NullName
	}
	segs := strings.Split(path, ".")
	switch {
	case len(segs) == 2:
		b = append(b, amlDualName)
	case len(segs) > 2:
		b = append(b, amlMultiName, byte(len(segs)))
	}
	for _, s := range segs {
		b = append(b, amlNameSeg(s)...)
	}
	return b
}

// amlInt encodes an integer with the shortest constant.
func amlInt(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xFF:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xFFFF:
		return binary.LittleEndian.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xFFFFFFFF:
		return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{amlQWordPrefix}, v)
}

// amlString encodes an ASCII string constant.
func amlString(s string) []byte {
	b := []byte{amlStringPref}
	for _, c := range []byte(s) {
		if c == 0 || c > 0x7F {
			panic(fmt.Sprintf("aml: string %q is not printable ASCII", s))
		}
		b = append(b, c)
	}
	return append(b, 0)
}

// amlEISAID encodes a PNP ID such as "PNP0A08" as the compressed 32-bit
// EISA ID iasl's EisaId() produces.
func amlEISAID(id string) []byte {
	if len(id) != 7 {
		panic(fmt.Sprintf("aml: bad EISA ID %q", id))
	}
	var v uint32
	for i := 0; i < 3; i++ {
		c := id[i]
		if c < 'A' || c > 'Z' {
			panic(fmt.Sprintf("aml: bad EISA ID %q", id))
		}
		v = v<<5 | uint32(c-'@')
	}
	for i := 3; i < 7; i++ {
		var d uint32
		switch c := id[i]; {
		case c >= '0' && c <= '9':
			d = uint32(c - '0')
		case c >= 'A' && c <= 'F':
			d = uint32(c-'A') + 10
		default:
			panic(fmt.Sprintf("aml: bad EISA ID %q", id))
		}
		v = v<<4 | d
	}
	// 7 bits of zero at the top, then the letters and digits, stored
	// big-endian.
	be := make([]byte, 4)
	binary.BigEndian.PutUint32(be, v)
	return append([]byte{amlDWordPrefix}, be...)
}

// amlName encodes Name (name, obj).
func amlName(name string, obj []byte) []byte {
	return append(append([]byte{amlNameOp}, amlNameString(name)...), obj...)
}

// amlPackage encodes Package () { elems... } (at most 255 elements).
func amlPackage(elems ...[]byte) []byte {
	if len(elems) > 255 {
		panic("aml: package with more than 255 elements")
	}
	body := []byte{byte(len(elems))}
	for _, e := range elems {
		body = append(body, e...)
	}
	return append([]byte{amlPackageOp}, amlPkg(body)...)
}

// amlBuffer encodes Buffer () { data... }.
func amlBuffer(data []byte) []byte {
	body := append(amlInt(uint64(len(data))), data...)
	return append([]byte{amlBufferOp}, amlPkg(body)...)
}

func amlTerms(name string, terms [][]byte) []byte {
	body := amlNameString(name)
	for _, t := range terms {
		body = append(body, t...)
	}
	return body
}

// amlScope encodes Scope (name) { terms... }.
func amlScope(name string, terms ...[]byte) []byte {
	return append([]byte{amlScopeOp}, amlPkg(amlTerms(name, terms))...)
}

// amlDevice encodes Device (name) { terms... }.
func amlDevice(name string, terms ...[]byte) []byte {
	return append([]byte{amlExtOpPrefix, amlDeviceOp}, amlPkg(amlTerms(name, terms))...)
}

// amlMethod encodes Method (name, args, NotSerialized) { terms... }.
func amlMethod(name string, args int, terms ...[]byte) []byte {
	body := amlNameString(name)
	body = append(body, byte(args&7))
	for _, t := range terms {
		body = append(body, t...)
	}
	return append([]byte{amlMethodOp}, amlPkg(body)...)
}

// amlReturn encodes Return (obj).
func amlReturn(obj []byte) []byte { return append([]byte{amlReturnOp}, obj...) }

// Resource descriptors (ACPI 6.5, section 6.4).

// Address space descriptor fields.
const (
	rdResMemory = 0
	rdResIO     = 1
	rdResBus    = 2
	// General flags: producer (bit 0 clear), positive decode, min and
	// max fixed.
	rdWindowFlags = 1<<3 | 1<<2
	// Type-specific flags.
	rdIOEntireRange   = 3
	rdMemRW           = 1
	rdMemCacheable    = 1 << 1
	rdMemPrefetchable = 3 << 1
)

func rdAddress(tag byte, resType, typeFlags byte, width int, min, max uint64) []byte {
	length := max - min + 1
	fields := []uint64{0, min, max, 0, length} // granularity, min, max, translation, length
	b := []byte{tag, 0, 0, resType, rdWindowFlags, typeFlags}
	for _, v := range fields {
		switch width {
		case 2:
			b = binary.LittleEndian.AppendUint16(b, uint16(v))
		case 4:
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		default:
			b = binary.LittleEndian.AppendUint64(b, v)
		}
	}
	binary.LittleEndian.PutUint16(b[1:], uint16(len(b)-3))
	return b
}

// rdWordBusNumber is WordBusNumber (ResourceProducer, MinFixed, MaxFixed,
// PosDecode, 0, min, max, 0, max-min+1).
func rdWordBusNumber(min, max uint16) []byte {
	return rdAddress(0x88, rdResBus, 0, 2, uint64(min), uint64(max))
}

// rdWordIO is WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode,
// EntireRange, 0, min, max, 0, max-min+1): an I/O window.
func rdWordIO(min, max uint16) []byte {
	return rdAddress(0x88, rdResIO, rdIOEntireRange, 2, uint64(min), uint64(max))
}

// rdDWordMemory is DWordMemory (ResourceProducer, PosDecode, MinFixed,
// MaxFixed, Cacheable or Prefetchable, ReadWrite, 0, min, max, 0, len).
func rdDWordMemory(min, max uint32, prefetch bool) []byte {
	return rdAddress(0x87, rdResMemory, memFlags(prefetch), 4, uint64(min), uint64(max))
}

// rdQWordMemory is the 64-bit form of rdDWordMemory.
func rdQWordMemory(min, max uint64, prefetch bool) []byte {
	return rdAddress(0x8A, rdResMemory, memFlags(prefetch), 8, min, max)
}

func memFlags(prefetch bool) byte {
	if prefetch {
		return rdMemRW | rdMemPrefetchable
	}
	return rdMemRW | rdMemCacheable
}

// rdIO is IO (Decode16, min, max, align, length): ports a device consumes.
func rdIO(min, max uint16, align, length byte) []byte {
	b := []byte{0x47, 1}
	b = binary.LittleEndian.AppendUint16(b, min)
	b = binary.LittleEndian.AppendUint16(b, max)
	return append(b, align, length)
}

// rdMemory32Fixed is Memory32Fixed (ReadWrite, base, length).
func rdMemory32Fixed(base, length uint32) []byte {
	b := []byte{0x86, 9, 0, 1}
	b = binary.LittleEndian.AppendUint32(b, base)
	return binary.LittleEndian.AppendUint32(b, length)
}

// amlResourceTemplate encodes ResourceTemplate () { items... }: a buffer
// holding the descriptors and an end tag.
func amlResourceTemplate(items ...[]byte) []byte {
	var b []byte
	for _, it := range items {
		b = append(b, it...)
	}
	return amlBuffer(append(b, 0x79, 0)) // end tag, checksum 0 ("not computed")
}

// Statements and expressions for the methods of PCI hotplug.

// amlLocal is LocalN (0..7); amlArg is ArgN (0..6).
func amlLocal(n int) []byte { return []byte{amlLocal0Op + byte(n&7)} }
func amlArg(n int) []byte   { return []byte{amlArg0Op + byte(n%7)} }

// amlPath is a name used as a term (a reference to a named object).
func amlPath(name string) []byte { return amlNameString(name) }

// amlStore encodes Store (src, dst).
func amlStore(src, dst []byte) []byte {
	return append(append([]byte{amlStoreOp}, src...), dst...)
}

// amlAnd encodes And (a, b) with no target (its value is the result).
func amlAnd(a, b []byte) []byte {
	return append(append(append([]byte{amlAndOp}, a...), b...), 0) // NullName target
}

// amlIf encodes If (predicate) { terms... }.
func amlIf(pred []byte, terms ...[]byte) []byte {
	body := append([]byte(nil), pred...)
	for _, t := range terms {
		body = append(body, t...)
	}
	return append([]byte{amlIfOp}, amlPkg(body)...)
}

// amlNotify encodes Notify (object, value).
func amlNotify(object string, value uint64) []byte {
	return append(append([]byte{amlNotifyOp}, amlNameString(object)...), amlInt(value)...)
}

// Operation region spaces.
const amlSystemIO = 1

// amlOpRegion encodes OperationRegion (name, space, offset, length).
func amlOpRegion(name string, space byte, offset, length uint64) []byte {
	b := append([]byte{amlExtOpPrefix, amlOpRegionOp}, amlNameString(name)...)
	b = append(b, space)
	b = append(b, amlInt(offset)...)
	return append(b, amlInt(length)...)
}

// Field flags: access width and update rule.
const (
	amlFieldDWordAcc     = 3
	amlFieldWriteAsZeros = 2 << 5
)

// amlFieldUnit is one named field of amlField, bits wide.
type amlFieldUnit struct {
	name string
	bits int
}

// amlField encodes Field (region, flags) { name, bits, ... }.
func amlField(region string, flags byte, units ...amlFieldUnit) []byte {
	body := append(amlNameString(region), flags)
	for _, u := range units {
		// A NamedField's length is a PkgLength-encoded bit count
		// (the encoding does not count itself).
		l := []byte{byte(u.bits)}
		if u.bits >= 1<<6 {
			l = amlBitLength(u.bits)
		}
		body = append(body, amlNameSeg(u.name)...)
		body = append(body, l...)
	}
	return append([]byte{amlExtOpPrefix, amlFieldOp}, amlPkg(body)...)
}

// amlBitLength encodes n (at least 64) in PkgLength form without
// counting the encoding itself.
func amlBitLength(n int) []byte {
	for k := 1; k <= 3; k++ {
		if n < 1<<(4+8*k) {
			b := []byte{byte(k<<6) | byte(n&0xF)}
			for i := 0; i < k; i++ {
				b = append(b, byte(n>>(4+8*i)))
			}
			return b
		}
	}
	panic(fmt.Sprintf("aml: field of %d bits is too long", n))
}
