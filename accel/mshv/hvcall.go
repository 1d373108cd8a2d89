package mshv

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
)

// maxEAGAIN bounds the retries of one hypercall that keeps answering
// EAGAIN (the kernel deposited memory into the partition and asks for a
// retry). A hypervisor that never stops asking is an error, not a hang.
const maxEAGAIN = 1000

// hvcaller issues MSHV_ROOT_HVCALL on one fd with EAGAIN retry.
type hvcaller struct {
	dev mshvabi.Device
	fd  int
}

// HvcallError is a failed MSHV_ROOT_HVCALL: the errno and the hypervisor
// status the kernel copied back.
type HvcallError struct {
	Code   uint16
	Status uint16
	Err    error
}

func (e *HvcallError) Error() string {
	return fmt.Sprintf("hypercall %s: %v (hv status %#x)", hvcallName(e.Code), e.Err, e.Status)
}

func (e *HvcallError) Unwrap() error { return e.Err }

func hvcallName(code uint16) string {
	switch code {
	case mshvabi.HvcallGetPartitionProperty:
		return "GET_PARTITION_PROPERTY"
	case mshvabi.HvcallSetPartitionProperty:
		return "SET_PARTITION_PROPERTY"
	case mshvabi.HvcallGetVPRegisters:
		return "GET_VP_REGISTERS"
	case mshvabi.HvcallSetVPRegisters:
		return "SET_VP_REGISTERS"
	case mshvabi.HvcallTranslateVirtualAddress:
		return "TRANSLATE_VIRTUAL_ADDRESS"
	case mshvabi.HvcallAssertVirtualInterrupt:
		return "ASSERT_VIRTUAL_INTERRUPT"
	case mshvabi.HvcallRegisterInterceptResult:
		return "REGISTER_INTERCEPT_RESULT"
	case mshvabi.HvcallGetVPCPUIDValues:
		return "GET_VP_CPUID_VALUES"
	case mshvabi.HvcallInstallIntercept:
		return "INSTALL_INTERCEPT"
	case mshvabi.HvcallGetPartitionPropertyEx:
		return "GET_PARTITION_PROPERTY_EX"
	}
	return fmt.Sprintf("%#04x", code)
}

// call issues one hypercall, retrying EAGAIN. For rep calls it returns the
// reps completed (which may be short; the caller continues).
func (c hvcaller) call(code, reps uint16, in, out []byte) (uint16, error) {
	for try := 0; ; try++ {
		r, err := mshvabi.Hvcall(c.dev, c.fd, code, reps, in, out)
		if err == nil {
			if r.Status != mshvabi.HvStatusSuccess {
				return r.Reps, &HvcallError{Code: code, Status: r.Status, Err: fmt.Errorf("kernel reported success with a failure status")}
			}
			return r.Reps, nil
		}
		if errors.Is(err, unix.EAGAIN) && try < maxEAGAIN {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return r.Reps, &HvcallError{Code: code, Status: r.Status, Err: fmt.Errorf("still EAGAIN after %d retries: %w", maxEAGAIN, err)}
		}
		return r.Reps, &HvcallError{Code: code, Status: r.Status, Err: err}
	}
}

// getProperty reads a partition property.
func (c hvcaller) getProperty(code uint32) (uint64, error) {
	in := make([]byte, 16)
	binary.LittleEndian.PutUint32(in[8:], code)
	out := make([]byte, 8)
	if _, err := c.call(mshvabi.HvcallGetPartitionProperty, 0, in, out); err != nil {
		return 0, fmt.Errorf("get partition property %#x: %w", code, err)
	}
	return binary.LittleEndian.Uint64(out), nil
}

// setProperty writes a partition property (partition fd only).
func (c hvcaller) setProperty(code uint32, v uint64) error {
	in := make([]byte, 24)
	binary.LittleEndian.PutUint32(in[8:], code)
	binary.LittleEndian.PutUint64(in[16:], v)
	if _, err := c.call(mshvabi.HvcallSetPartitionProperty, 0, in, nil); err != nil {
		return fmt.Errorf("set partition property %#x = %#x: %w", code, v, err)
	}
	return nil
}

// regBufs are a VP's reusable hypercall buffers (on the heap: their
// addresses travel inside mshv_root_hvcall).
type regBufs struct {
	in  [mshvabi.HvcallMaxInput]byte
	out [mshvabi.HvcallMaxInput]byte
}

// getRegs reads registers names of VP vp into vals (GET_VP_REGISTERS,
// at most 256 per call, continuing after short rep counts).
func (c hvcaller) getRegs(b *regBufs, vp uint32, names []uint32, vals []mshvabi.RegisterValue) error {
	for done := 0; done < len(names); {
		n := min(len(names)-done, mshvabi.MaxGetRegistersPerCall)
		in := b.in[:16+4*n]
		clear(in[:16])
		binary.LittleEndian.PutUint32(in[8:], vp)
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint32(in[16+4*i:], names[done+i])
		}
		out := b.out[:16*n]
		reps, err := c.call(mshvabi.HvcallGetVPRegisters, uint16(n), in, out)
		if err != nil {
			return fmt.Errorf("get %d registers of VP %d (first %#x): %w", n, vp, names[done], err)
		}
		if reps == 0 || int(reps) > n {
			return fmt.Errorf("get registers of VP %d: hypervisor completed %d of %d reps", vp, reps, n)
		}
		for i := 0; i < int(reps); i++ {
			vals[done+i] = mshvabi.RegisterValue{
				Low:  binary.LittleEndian.Uint64(out[16*i:]),
				High: binary.LittleEndian.Uint64(out[16*i+8:]),
			}
		}
		done += int(reps)
	}
	return nil
}

// setRegs writes registers of VP vp (SET_VP_REGISTERS, at most 127 per
// call, continuing after short rep counts).
func (c hvcaller) setRegs(b *regBufs, vp uint32, regs []mshvabi.RegisterAssoc) error {
	for done := 0; done < len(regs); {
		n := min(len(regs)-done, mshvabi.MaxSetRegistersPerCall)
		in := b.in[:16+32*n]
		clear(in)
		binary.LittleEndian.PutUint32(in[8:], vp)
		for i := 0; i < n; i++ {
			r := regs[done+i]
			o := 16 + 32*i
			binary.LittleEndian.PutUint32(in[o:], r.Name)
			binary.LittleEndian.PutUint64(in[o+16:], r.Value.Low)
			binary.LittleEndian.PutUint64(in[o+24:], r.Value.High)
		}
		reps, err := c.call(mshvabi.HvcallSetVPRegisters, uint16(n), in, nil)
		if err != nil {
			return fmt.Errorf("set %d registers of VP %d (first %#x): %w", n, vp, regs[done].Name, err)
		}
		if reps == 0 || int(reps) > n {
			return fmt.Errorf("set registers of VP %d: hypervisor completed %d of %d reps", vp, reps, n)
		}
		done += int(reps)
	}
	return nil
}

// assertInterrupt issues ASSERT_VIRTUAL_INTERRUPT.
func (c hvcaller) assertInterrupt(typ uint32, vector uint32, dest uint64, level, logical bool) error {
	a := mshvabi.InputAssertVirtualInterrupt{Control: uint64(typ), DestAddr: dest, Vector: vector}
	if level {
		a.Control |= mshvabi.InterruptControlLevel
	}
	if logical {
		a.Control |= mshvabi.InterruptControlLogical
	}
	in := make([]byte, 32)
	mshvabi.Store(in, &a)
	if _, err := c.call(mshvabi.HvcallAssertVirtualInterrupt, 0, in, nil); err != nil {
		return fmt.Errorf("assert interrupt type %d vector %#x to %#x: %w", typ, vector, dest, err)
	}
	return nil
}

// clearInterrupt issues CLEAR_VIRTUAL_INTERRUPT, which lowers the
// partition's ExtINT line (hv_input_clear_virtual_interrupt carries the
// partition ID only; the kernel fills it in).
func (c hvcaller) clearInterrupt() error {
	in := make([]byte, 8)
	mshvabi.Store(in, &mshvabi.InputClearVirtualInterrupt{})
	if _, err := c.call(mshvabi.HvcallClearVirtualInterrupt, 0, in, nil); err != nil {
		return fmt.Errorf("clear the ExtINT line: %w", err)
	}
	return nil
}

func reg(name uint32, v uint64) mshvabi.RegisterAssoc {
	return mshvabi.RegisterAssoc{Name: name, Value: mshvabi.RegisterValue{Low: v}}
}

func reg128(name uint32, lo, hi uint64) mshvabi.RegisterAssoc {
	return mshvabi.RegisterAssoc{Name: name, Value: mshvabi.RegisterValue{Low: lo, High: hi}}
}
