// Package fdt writes flattened device trees (the DTB format of the
// Devicetree Specification, version 17), which is how an arm64 Linux guest
// learns its machine: memory, CPUs, interrupt controller, timer, UART and
// the command line. It also reads them back (Parse), so tests can check
// what the writer produced and tools can print a guest's tree.
package fdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

const (
	magic          = 0xd00dfeed
	version        = 17
	lastCompatible = 16
	headerSize     = 40

	tokenBeginNode = 1
	tokenEndNode   = 2
	tokenProp      = 3
	tokenNop       = 4
	tokenEnd       = 9
)

// Writer builds a device tree node by node, in order: BeginNode, the
// node's properties, its children, EndNode. The root node's name is "".
type Writer struct {
	structure []byte
	strings   []byte
	stringOff map[string]uint32
	reserve   [][2]uint64
	depth     int
	err       error
	bootCPU   uint32
}

// NewWriter returns an empty tree.
func NewWriter() *Writer { return &Writer{stringOff: map[string]uint32{}} }

func (w *Writer) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf(format, args...)
	}
}

func (w *Writer) u32(v uint32) { w.structure = binary.BigEndian.AppendUint32(w.structure, v) }

func (w *Writer) pad() {
	for len(w.structure)%4 != 0 {
		w.structure = append(w.structure, 0)
	}
}

// Reserve adds a memory reservation entry (memory the guest must not use).
func (w *Writer) Reserve(addr, size uint64) { w.reserve = append(w.reserve, [2]uint64{addr, size}) }

// SetBootCPU sets the header's boot_cpuid_phys.
func (w *Writer) SetBootCPU(id uint32) { w.bootCPU = id }

// BeginNode opens a child of the current node (the root when none is open).
func (w *Writer) BeginNode(name string) {
	if w.depth == 0 && name != "" {
		w.fail("fdt: the root node must be named \"\", not %q", name)
	}
	if w.depth > 0 && name == "" {
		w.fail("fdt: a node below the root needs a name")
	}
	if strings.ContainsRune(name, 0) || strings.Contains(name, "/") {
		w.fail("fdt: bad node name %q", name)
	}
	w.u32(tokenBeginNode)
	w.structure = append(w.structure, name...)
	w.structure = append(w.structure, 0)
	w.pad()
	w.depth++
}

// EndNode closes the current node.
func (w *Writer) EndNode() {
	if w.depth == 0 {
		w.fail("fdt: EndNode without BeginNode")
		return
	}
	w.u32(tokenEndNode)
	w.depth--
}

// Prop adds a property with a raw value.
func (w *Writer) Prop(name string, value []byte) {
	if w.depth == 0 {
		w.fail("fdt: property %q outside a node", name)
		return
	}
	if name == "" || strings.ContainsRune(name, 0) {
		w.fail("fdt: bad property name %q", name)
		return
	}
	off, ok := w.stringOff[name]
	if !ok {
		off = uint32(len(w.strings))
		w.strings = append(w.strings, name...)
		w.strings = append(w.strings, 0)
		w.stringOff[name] = off
	}
	w.u32(tokenProp)
	w.u32(uint32(len(value)))
	w.u32(off)
	w.structure = append(w.structure, value...)
	w.pad()
}

// PropEmpty adds a property without a value (a flag such as
// "interrupt-controller").
func (w *Writer) PropEmpty(name string) { w.Prop(name, nil) }

// PropU32 adds a property of 32-bit cells.
func (w *Writer) PropU32(name string, cells ...uint32) {
	b := make([]byte, 0, 4*len(cells))
	for _, c := range cells {
		b = binary.BigEndian.AppendUint32(b, c)
	}
	w.Prop(name, b)
}

// PropU64 adds a property of 64-bit values (two cells each).
func (w *Writer) PropU64(name string, vals ...uint64) {
	b := make([]byte, 0, 8*len(vals))
	for _, v := range vals {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	w.Prop(name, b)
}

// PropString adds a string list property (one or more NUL-terminated
// strings, e.g. a compatible list).
func (w *Writer) PropString(name string, vals ...string) {
	var b []byte
	for _, v := range vals {
		if strings.ContainsRune(v, 0) {
			w.fail("fdt: property %q: string %q holds a NUL", name, v)
			return
		}
		b = append(b, v...)
		b = append(b, 0)
	}
	w.Prop(name, b)
}

// Finish returns the DTB.
func (w *Writer) Finish() ([]byte, error) {
	if w.err != nil {
		return nil, w.err
	}
	if w.depth != 0 {
		return nil, fmt.Errorf("fdt: %d nodes left open", w.depth)
	}
	if len(w.structure) == 0 {
		return nil, errors.New("fdt: no root node")
	}
	rsvOff := headerSize
	rsvSize := 16 * (len(w.reserve) + 1)
	structOff := rsvOff + rsvSize
	structSize := len(w.structure) + 4
	stringsOff := structOff + structSize
	total := stringsOff + len(w.strings)
	out := make([]byte, 0, total)
	be := binary.BigEndian
	for _, v := range []uint32{magic, uint32(total), uint32(structOff), uint32(stringsOff), uint32(rsvOff),
		version, lastCompatible, w.bootCPU, uint32(len(w.strings)), uint32(structSize)} {
		out = be.AppendUint32(out, v)
	}
	for _, r := range w.reserve {
		out = be.AppendUint64(out, r[0])
		out = be.AppendUint64(out, r[1])
	}
	out = append(out, make([]byte, 16)...)
	out = append(out, w.structure...)
	out = be.AppendUint32(out, tokenEnd)
	out = append(out, w.strings...)
	return out, nil
}
