package mshv

import (
	"fmt"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

var _ accel.SynICVCPU = (*VCPU)(nil)

// SynIC reads the VP's SynIC pages and synthetic timers
// (MSHV_GET_VP_STATE types SIMP, SIEFP and SYNTHETIC_TIMERS).
func (v *VCPU) SynIC() (accel.SynIC, error) {
	var s accel.SynIC
	simp, err := v.vpState(mshvabi.VPStateSIMP, 4096)
	if err != nil {
		return s, err
	}
	siefp, err := v.vpState(mshvabi.VPStateSIEFP, 4096)
	if err != nil {
		return s, err
	}
	tb, err := v.vpState(mshvabi.VPStateSyntheticTimers, 4096)
	if err != nil {
		return s, err
	}
	ts, ok := mshvabi.Load[mshvabi.SyntheticTimersState](tb)
	if !ok {
		return s, fmt.Errorf("vCPU %d: synthetic timer state of %d bytes is too short", v.index, len(tb))
	}
	s.MessagePage = append([]byte(nil), simp[:4096]...)
	s.EventFlagsPage = append([]byte(nil), siefp[:4096]...)
	for i, t := range ts.Timers {
		s.Timers[i] = accel.STimer{Config: t.Config, Count: t.Count, Adjustment: t.Adjustment,
			UndeliveredExpTime: t.UndeliveredExpTime, UndeliveredMessagePending: t.Flags&1 != 0}
	}
	return s, nil
}

// SetSynIC writes the VP's SynIC pages and synthetic timers.
func (v *VCPU) SetSynIC(s *accel.SynIC) error {
	for _, p := range []struct {
		typ  uint8
		data []byte
	}{{mshvabi.VPStateSIMP, s.MessagePage}, {mshvabi.VPStateSIEFP, s.EventFlagsPage}} {
		if len(p.data) > 4096 {
			return fmt.Errorf("vCPU %d: SynIC page of %d bytes", v.index, len(p.data))
		}
		page := make([]byte, 4096)
		copy(page, p.data)
		if err := v.setVPState(p.typ, page); err != nil {
			return err
		}
	}
	var ts mshvabi.SyntheticTimersState
	for i, t := range s.Timers {
		ts.Timers[i] = mshvabi.StimerState{Config: t.Config, Count: t.Count, Adjustment: t.Adjustment,
			UndeliveredExpTime: t.UndeliveredExpTime}
		if t.UndeliveredMessagePending {
			ts.Timers[i].Flags = 1
		}
	}
	return v.setVPState(mshvabi.VPStateSyntheticTimers, mshvabi.Bytes(&ts))
}
