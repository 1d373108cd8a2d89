package pl011

import "fmt"

// State is the UART's registers and the host input the guest has not read
// yet, for snapshots. The interrupt line's level is not in it: the vGIC's
// saved line levels hold it, and Restore recomputes it.
type State struct {
	RX    []byte `json:"rx,omitempty"`
	RIS   uint32 `json:"ris"`
	IMSC  uint32 `json:"imsc"`
	IBRD  uint32 `json:"ibrd"`
	FBRD  uint32 `json:"fbrd"`
	LCRH  uint32 `json:"lcrh"`
	IFLS  uint32 `json:"ifls"`
	CR    uint32 `json:"cr"`
	DMACR uint32 `json:"dmacr"`
	ILPR  uint32 `json:"ilpr"`
}

// Save returns the UART's state.
func (u *UART) Save() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	return State{RX: append([]byte(nil), u.rx...), RIS: u.ris, IMSC: u.imsc, IBRD: u.ibrd, FBRD: u.fbrd,
		LCRH: u.lcrh, IFLS: u.ifls, CR: u.cr, DMACR: u.dmacr, ILPR: u.ilpr}
}

// Restore loads a saved state into a UART that the guest has not used,
// refusing values no guest write could have produced.
func (u *UART) Restore(s State) error {
	if len(s.RX) > InputBufferSize {
		return fmt.Errorf("pl011: %d bytes of pending input (at most %d)", len(s.RX), InputBufferSize)
	}
	if s.RIS&^intMask != 0 || s.IMSC&^intMask != 0 || s.IBRD > 0xffff || s.FBRD > 0x3f || s.LCRH > 0xff ||
		s.IFLS > 0x3f || s.CR > 0xffff || s.DMACR > 7 || s.ILPR > 0xff {
		return fmt.Errorf("pl011: saved registers out of range: %+v", s)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.rx = nil
	if len(s.RX) > 0 {
		u.rx = append([]byte(nil), s.RX...)
	}
	u.ris, u.imsc, u.ibrd, u.fbrd, u.lcrh = s.RIS, s.IMSC, s.IBRD, s.FBRD, s.LCRH
	u.ifls, u.cr, u.dmacr, u.ilpr = s.IFLS, s.CR, s.DMACR, s.ILPR
	// The line's level came back with the vGIC; note it without driving
	// the line again.
	u.level = u.ris&u.imsc != 0 || (len(u.rx) > 0 && u.imsc&(IntRX|IntRT) != 0)
	return nil
}
