// Package snapshot defines govmm's state file: the one accelerator-neutral
// format in which a VM's vCPU and device state is saved to disk (snapshot)
// or sent over a connection (live migration), so that a VM saved on KVM
// restores on MSHV and back.
//
// A state file is an envelope around named sections:
//
//	magic "GOVMMSTA" | u32 format version | u32 section count |
//	sections... | u64 CRC-64/ECMA of every byte before it
//	section: u16 name length | name | u32 section version | u64 length | data
//
// Section data is JSON (small, inspectable, tolerant of added fields); each
// section carries its own version so one component can change its layout
// without touching the others. The checksum is verified and every section
// is parsed before anything is restored, so a corrupted or truncated file
// is refused whole, never half-applied. Guest memory is not in the state
// file: it is a separate sparse file that restore maps copy-on-write.
package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"sort"
	"sync"
)

// Magic starts every state file.
const Magic = "GOVMMSTA"

// FormatVersion is the envelope version this build writes. Versions from
// MinFormatVersion up to FormatVersion are read.
const (
	FormatVersion    = 1
	MinFormatVersion = 1
)

// Limits that keep a hostile file from making the reader allocate without bound.
const (
	maxSections    = 4096
	maxNameLen     = 256
	maxSectionSize = 64 << 20
)

// crcTable is built on first use (it costs 32 KiB and start-up time that
// a VM which never snapshots should not pay).
var crcTable = sync.OnceValue(func() *crc64.Table { return crc64.MakeTable(crc64.ECMA) })

// ErrCorrupt is wrapped by every error about a damaged state file.
var ErrCorrupt = errors.New("state file is corrupted or truncated")

// Section is one component's saved state.
type Section struct {
	Name    string
	Version uint32
	Data    []byte
}

// State is a whole state file in memory.
type State struct {
	FormatVersion uint32
	Sections      []Section
}

// Add appends a section holding v encoded as JSON.
func (s *State) Add(name string, version uint32, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode state section %s: %w", name, err)
	}
	s.Sections = append(s.Sections, Section{Name: name, Version: version, Data: b})
	return nil
}

// Find returns the named section.
func (s *State) Find(name string) (*Section, bool) {
	for i := range s.Sections {
		if s.Sections[i].Name == name {
			return &s.Sections[i], true
		}
	}
	return nil, false
}

// Get decodes the named section into v, checking its version is one this
// build reads (from minVersion to maxVersion).
func (s *State) Get(name string, minVersion, maxVersion uint32, v any) (uint32, error) {
	sec, ok := s.Find(name)
	if !ok {
		return 0, fmt.Errorf("state file has no %q section", name)
	}
	if sec.Version < minVersion || sec.Version > maxVersion {
		return 0, fmt.Errorf("state section %q is version %d; this govmm reads versions %d to %d", name, sec.Version, minVersion, maxVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(sec.Data))
	if err := dec.Decode(v); err != nil {
		return 0, fmt.Errorf("decode state section %q: %w", name, err)
	}
	return sec.Version, nil
}

// Names lists the section names, sorted.
func (s *State) Names() []string {
	out := make([]string, len(s.Sections))
	for i, sec := range s.Sections {
		out[i] = sec.Name
	}
	sort.Strings(out)
	return out
}

// Marshal encodes the state file.
func (s *State) Marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(Magic)
	w := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }
	w(uint32(FormatVersion))
	w(uint32(len(s.Sections)))
	seen := map[string]bool{}
	for _, sec := range s.Sections {
		if len(sec.Name) == 0 || len(sec.Name) > maxNameLen {
			return nil, fmt.Errorf("state section name %q: want 1 to %d bytes", sec.Name, maxNameLen)
		}
		if seen[sec.Name] {
			return nil, fmt.Errorf("state section %q appears twice", sec.Name)
		}
		seen[sec.Name] = true
		if len(sec.Data) > maxSectionSize {
			return nil, fmt.Errorf("state section %q is %d bytes, over the %d limit", sec.Name, len(sec.Data), maxSectionSize)
		}
		w(uint16(len(sec.Name)))
		b.WriteString(sec.Name)
		w(sec.Version)
		w(uint64(len(sec.Data)))
		b.Write(sec.Data)
	}
	w(crc64.Checksum(b.Bytes(), crcTable()))
	return b.Bytes(), nil
}

// WriteTo writes the encoded state file to w.
func (s *State) WriteTo(w io.Writer) (int64, error) {
	b, err := s.Marshal()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// Unmarshal decodes and fully validates a state file.
func Unmarshal(b []byte) (*State, error) { return UnmarshalArch(b, HostArch()) }

// UnmarshalArch is Unmarshal for a state of architecture arch rather than
// this build's (a migration receiver told which it takes; host tests).
func UnmarshalArch(b []byte, arch string) (*State, error) {
	if len(b) < len(Magic)+8+8 {
		return nil, fmt.Errorf("%w: %d bytes is shorter than any state file", ErrCorrupt, len(b))
	}
	if string(b[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("not a govmm state file (magic %q, want %q)", b[:len(Magic)], Magic)
	}
	body, sum := b[:len(b)-8], binary.LittleEndian.Uint64(b[len(b)-8:])
	ver := binary.LittleEndian.Uint32(b[len(Magic):])
	if ver > FormatVersion {
		return nil, fmt.Errorf("state file format version %d is newer than this govmm understands (%d to %d): restore it with a newer govmm", ver, MinFormatVersion, FormatVersion)
	}
	if ver < MinFormatVersion {
		return nil, fmt.Errorf("state file format version %d is no longer supported (this govmm reads %d to %d)", ver, MinFormatVersion, FormatVersion)
	}
	if got := crc64.Checksum(body, crcTable()); got != sum {
		return nil, fmt.Errorf("%w: checksum %#016x, want %#016x", ErrCorrupt, got, sum)
	}
	r := body[len(Magic)+4:]
	take := func(n uint64, what string) ([]byte, error) {
		if uint64(len(r)) < n {
			return nil, fmt.Errorf("%w: %s needs %d bytes, %d left", ErrCorrupt, what, n, len(r))
		}
		out := r[:n]
		r = r[n:]
		return out, nil
	}
	hdr, err := take(4, "section count")
	if err != nil {
		return nil, err
	}
	count := binary.LittleEndian.Uint32(hdr)
	if count > maxSections {
		return nil, fmt.Errorf("%w: %d sections (limit %d)", ErrCorrupt, count, maxSections)
	}
	st := &State{FormatVersion: ver}
	seen := map[string]bool{}
	for i := uint32(0); i < count; i++ {
		nb, err := take(2, "section name length")
		if err != nil {
			return nil, err
		}
		nl := binary.LittleEndian.Uint16(nb)
		if nl == 0 || nl > maxNameLen {
			return nil, fmt.Errorf("%w: section %d name length %d", ErrCorrupt, i, nl)
		}
		name, err := take(uint64(nl), "section name")
		if err != nil {
			return nil, err
		}
		vb, err := take(12, "section header")
		if err != nil {
			return nil, err
		}
		size := binary.LittleEndian.Uint64(vb[4:])
		if size > maxSectionSize {
			return nil, fmt.Errorf("%w: section %q claims %d bytes (limit %d)", ErrCorrupt, name, size, maxSectionSize)
		}
		data, err := take(size, fmt.Sprintf("section %q", name))
		if err != nil {
			return nil, err
		}
		if seen[string(name)] {
			return nil, fmt.Errorf("%w: section %q appears twice", ErrCorrupt, name)
		}
		seen[string(name)] = true
		st.Sections = append(st.Sections, Section{
			Name: string(name), Version: binary.LittleEndian.Uint32(vb), Data: append([]byte(nil), data...),
		})
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last section", ErrCorrupt, len(r))
	}
	// A state of another architecture is refused here, before anything
	// reads its sections, so that restore and a migration's receiver
	// say so instead of failing on a section they do not find.
	if err := st.CheckArch(arch); err != nil {
		return nil, err
	}
	return st, nil
}
