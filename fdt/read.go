package fdt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Node is a device tree node as Parse returns it.
type Node struct {
	Name     string
	Props    []Property
	Children []*Node
}

// Property is one property of a Node.
type Property struct {
	Name  string
	Value []byte
}

// Tree is a parsed DTB.
type Tree struct {
	Root       *Node
	Reserve    [][2]uint64
	BootCPU    uint32
	Version    uint32
	TotalBytes uint32
}

// Prop returns the value of the named property and whether it exists.
func (n *Node) Prop(name string) ([]byte, bool) {
	for _, p := range n.Props {
		if p.Name == name {
			return p.Value, true
		}
	}
	return nil, false
}

// Child returns the child with the given name (unit address included).
func (n *Node) Child(name string) *Node {
	for _, c := range n.Children {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Lookup finds a node by its absolute path ("/" is the root).
func (t *Tree) Lookup(path string) *Node {
	n := t.Root
	for _, part := range bytes.Split([]byte(path), []byte("/")) {
		if len(part) == 0 {
			continue
		}
		if n = n.Child(string(part)); n == nil {
			return nil
		}
	}
	return n
}

// maxDepth bounds the nesting Parse accepts.
const maxDepth = 64

// Parse reads a DTB (version 16 or 17).
func Parse(b []byte) (*Tree, error) {
	be := binary.BigEndian
	if len(b) < headerSize {
		return nil, fmt.Errorf("fdt: %d bytes, shorter than the header", len(b))
	}
	if m := be.Uint32(b); m != magic {
		return nil, fmt.Errorf("fdt: magic %#x, want %#x", m, magic)
	}
	total := be.Uint32(b[4:])
	structOff, stringsOff, rsvOff := be.Uint32(b[8:]), be.Uint32(b[12:]), be.Uint32(b[16:])
	ver := be.Uint32(b[20:])
	stringsSize, structSize := be.Uint32(b[32:]), be.Uint32(b[36:])
	if ver < 16 {
		return nil, fmt.Errorf("fdt: version %d, want 16 or later", ver)
	}
	if uint64(total) > uint64(len(b)) || total < headerSize {
		return nil, fmt.Errorf("fdt: total size %d, but %d bytes given", total, len(b))
	}
	b = b[:total]
	within := func(off, size uint32) bool { return uint64(off)+uint64(size) <= uint64(total) }
	if !within(structOff, structSize) || !within(stringsOff, stringsSize) || !within(rsvOff, 0) {
		return nil, errors.New("fdt: a block lies outside the blob")
	}
	t := &Tree{BootCPU: be.Uint32(b[28:]), Version: ver, TotalBytes: total}
	for off := rsvOff; ; off += 16 {
		if !within(off, 16) {
			return nil, errors.New("fdt: memory reservation map is not terminated")
		}
		addr, size := be.Uint64(b[off:]), be.Uint64(b[off+8:])
		if addr == 0 && size == 0 {
			break
		}
		t.Reserve = append(t.Reserve, [2]uint64{addr, size})
	}
	strs := b[stringsOff : stringsOff+stringsSize]
	s := b[structOff : structOff+structSize]
	var stack []*Node
	pos := 0
	word := func() (uint32, error) {
		if pos+4 > len(s) {
			return 0, fmt.Errorf("fdt: structure block ends at %d inside a token", pos)
		}
		v := be.Uint32(s[pos:])
		pos += 4
		return v, nil
	}
	align := func() { pos = (pos + 3) &^ 3 }
	for {
		tok, err := word()
		if err != nil {
			return nil, err
		}
		switch tok {
		case tokenBeginNode:
			end := bytes.IndexByte(s[pos:], 0)
			if end < 0 {
				return nil, errors.New("fdt: unterminated node name")
			}
			n := &Node{Name: string(s[pos : pos+end])}
			pos += end + 1
			align()
			switch {
			case len(stack) == 0 && t.Root != nil:
				return nil, errors.New("fdt: a second root node")
			case len(stack) == 0:
				t.Root = n
			default:
				p := stack[len(stack)-1]
				p.Children = append(p.Children, n)
			}
			if len(stack) >= maxDepth {
				return nil, fmt.Errorf("fdt: nodes nested deeper than %d", maxDepth)
			}
			stack = append(stack, n)
		case tokenEndNode:
			if len(stack) == 0 {
				return nil, errors.New("fdt: END_NODE without a node")
			}
			stack = stack[:len(stack)-1]
		case tokenProp:
			if len(stack) == 0 {
				return nil, errors.New("fdt: property outside a node")
			}
			n, err := word()
			if err != nil {
				return nil, err
			}
			nameOff, err := word()
			if err != nil {
				return nil, err
			}
			if uint64(pos)+uint64(n) > uint64(len(s)) {
				return nil, fmt.Errorf("fdt: property of %d bytes runs past the structure block", n)
			}
			if nameOff >= uint32(len(strs)) {
				return nil, fmt.Errorf("fdt: property name offset %d outside the strings block", nameOff)
			}
			end := bytes.IndexByte(strs[nameOff:], 0)
			if end < 0 {
				return nil, errors.New("fdt: unterminated property name")
			}
			node := stack[len(stack)-1]
			node.Props = append(node.Props, Property{Name: string(strs[nameOff : nameOff+uint32(end)]), Value: s[pos : pos+int(n)]})
			pos += int(n)
			align()
		case tokenNop:
		case tokenEnd:
			if len(stack) != 0 {
				return nil, fmt.Errorf("fdt: END with %d nodes open", len(stack))
			}
			if t.Root == nil {
				return nil, errors.New("fdt: no root node")
			}
			return t, nil
		default:
			return nil, fmt.Errorf("fdt: unknown token %#x at %d", tok, pos-4)
		}
	}
}
