package mshvabi

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Fake is a scripted Device for tests of code that talks to MSHV: every
// ioctl goes to Handler with its argument as bytes and, for the requests
// that carry user pointers, those buffers resolved. It lives here because
// only this package may turn pointers into bytes.
type Fake struct {
	Handler func(c *FakeCall) (int, error)
	// MmapErr, when set, is what Mmap returns; otherwise it returns a
	// zeroed page.
	MmapErr error
	Kicks   int
	Closed  []int
}

// FakeCall is one ioctl as Fake.Handler sees it.
type FakeCall struct {
	FD  int
	Req uint32
	// Arg is the argument struct (64 bytes for a v2 CREATE_PARTITION).
	Arg []byte
	// For MSHV_ROOT_HVCALL: the header and the in/out buffers.
	Hvcall  *RootHvcall
	In, Out []byte
	// For MSHV_RUN_VP: the message buffer to fill.
	Msg *Message
	// For MSHV_GET/SET_VP_STATE: the header and the buffer.
	VPState *GetSetVPState
	Buf     []byte
	// For MSHV_SET_MSI_ROUTING: the entries after the header.
	Routes []UserIRQEntry
}

// SystemFD is a fixed fake /dev/mshv fd.
func (f *Fake) SystemFD() int { return 3 }

// Ioctl decodes the request and calls Handler.
func (f *Fake) Ioctl(fd int, req uint32, arg unsafe.Pointer) (int, error) {
	c := &FakeCall{FD: fd, Req: req}
	size := int(req >> 16 & 0x3fff)
	if arg != nil && size > 0 {
		if req == ReqCreatePartition && fd == f.SystemFD() && (*CreatePartition)(arg).Flags&(1<<PTBitCPUAndXSaveFeatures) != 0 {
			size = 64
		}
		c.Arg = unsafe.Slice((*byte)(arg), size)
	}
	switch {
	case req == ReqRootHvcall:
		h := (*RootHvcall)(arg)
		c.Hvcall = h
		c.In = user(h.InPtr, int(h.InSz))
		c.Out = user(h.OutPtr, int(h.OutSz))
	case req == ReqRunVP && fd != f.SystemFD():
		c.Msg = (*Message)(arg)
	case req == ReqSetMSIRouting && fd != f.SystemFD():
		t := (*UserIRQTable)(arg)
		if t.Nr > 0 && t.Nr <= MaxGuestIRQs {
			c.Routes = unsafe.Slice((*UserIRQEntry)(unsafe.Add(arg, unsafe.Sizeof(*t))), t.Nr)
		}
	case (req == ReqGetVPState || req == ReqSetVPState) && fd != f.SystemFD():
		s := (*GetSetVPState)(arg)
		c.VPState = s
		c.Buf = user(s.BufPtr, int(s.BufSz))
	}
	if f.Handler == nil {
		return -1, unix.ENOTTY
	}
	return f.Handler(c)
}

func user(addr uint64, n int) []byte {
	if addr == 0 || n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))), n)
}

// Mmap returns a zeroed page or MmapErr.
func (f *Fake) Mmap(fd int, pgoff int64, length int) ([]byte, error) {
	if f.MmapErr != nil {
		return nil, f.MmapErr
	}
	return make([]byte, length), nil
}

// Munmap does nothing.
func (f *Fake) Munmap(b []byte) error { return nil }

// Close records the fd.
func (f *Fake) Close(fd int) error {
	f.Closed = append(f.Closed, fd)
	return nil
}

// Kick counts kicks.
func (f *Fake) Kick(vpFD int, tid int) error {
	f.Kicks++
	return nil
}

// Tap is a Device that forwards everything to Device and shows OnMessage
// every message MSHV_RUN_VP returned, for tests that check what the
// hypervisor (or the simulator) reported. The backend reaches a
// LastError of the wrapped device through it.
type Tap struct {
	Device
	OnMessage func(vpFD int, m *Message)
}

// Ioctl forwards the request and shows a RUN_VP message to OnMessage.
func (t *Tap) Ioctl(fd int, req uint32, arg unsafe.Pointer) (int, error) {
	r, err := t.Device.Ioctl(fd, req, arg)
	if err == nil && req == ReqRunVP && fd != t.SystemFD() && t.OnMessage != nil {
		t.OnMessage(fd, (*Message)(arg))
	}
	return r, err
}

// LastError forwards to the wrapped device's LastError, if it has one.
func (t *Tap) LastError(fd int) string {
	if d, ok := t.Device.(interface{ LastError(fd int) string }); ok {
		return d.LastError(fd)
	}
	return ""
}
