package pci

import (
	"encoding/binary"
	"testing"
)

// FuzzMSIX drives the vector table, the PBA, message control and the
// device's triggers in any order: each 8-byte record is (op, size,
// 2-byte offset, 4 value bytes). After every step no masked vector has
// fired, pending bits stay inside the table, reserved bits read zero and
// every vector that may fire carries the route its entry says.
func FuzzMSIX(f *testing.F) {
	f.Add([]byte{2, 2, 0, 0, 0, 0x80, 0, 0, 0, 4, 0, 0, 0, 0, 0xe0, 0xfe, 0, 4, 12, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 8, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 4, 12, 0, 1, 0, 0, 0, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newMSIXRig(t, nil, nil)
		for len(data) >= 8 {
			op, size, off, val := data[0]%5, int(data[1]%9), uint64(binary.LittleEndian.Uint16(data[2:])), data[4:8]
			data = data[8:]
			buf := make([]byte, size)
			copy(buf, val)
			r.m.mu.Lock()
			before := r.m.pending[0]
			r.m.mu.Unlock()
			switch op {
			case 0:
				r.m.Table().Write(off%(rigVectors*16+32), buf)
			case 1:
				r.m.Table().Read(off, buf)
			case 2:
				r.f.WriteConfig(r.m.CapOffset()+int(off%12), buf)
			case 3:
				r.m.PBA().Write(off%16, buf)
				r.m.PBA().Read(off%16, buf)
			case 4:
				v := int(off % (rigVectors + 1))
				r.m.mu.Lock()
				may := v < rigVectors && r.m.mayFire(v) && r.m.vec[v].irqfd != nil
				r.m.mu.Unlock()
				err := r.m.Trigger(v)
				if (err != nil) != (v >= rigVectors) {
					t.Fatalf("Trigger(%d) = %v", v, err)
				}
				if v < rigVectors {
					if got := r.fired(v); may != (got == 1) {
						t.Fatalf("vector %d: may fire %v, fired %d", v, may, got)
					}
				}
			}
			if op != 4 {
				// Only a pending message may go out, once, and
				// its bit clears.
				for v := range rigVectors {
					n := r.fired(v)
					r.m.mu.Lock()
					now := r.m.pendingBit(v)
					r.m.mu.Unlock()
					if n > 1 || n == 1 && (before&(1<<v) == 0 || now) {
						t.Fatalf("vector %d fired %d times without a trigger (pending before %v, now %v)", v, n, before&(1<<v) != 0, now)
					}
				}
			}
			m := r.m
			m.mu.Lock()
			if m.pending[0]>>rigVectors != 0 {
				t.Fatalf("pending bits %#x past the table", m.pending[0])
			}
			for v := range rigVectors {
				e := m.table[v*16:]
				if e[12]&^1 != 0 || e[13]|e[14]|e[15] != 0 || e[0]&3 != 0 {
					t.Fatalf("vector %d reserved bits set: % x", v, e[:16])
				}
				if m.mayFire(v) {
					msi, _ := m.entry(v)
					if rt, ok := r.vm.routes[m.vec[v].gsi]; !ok || rt.MSI != msi || m.vec[v].irqfd == nil {
						t.Fatalf("vector %d may fire with route %+v (%v), entry %+v", v, rt, ok, msi)
					}
					if m.pendingBit(v) {
						t.Fatalf("vector %d may fire and is still pending", v)
					}
				}
			}
			m.mu.Unlock()
		}
	})
}
