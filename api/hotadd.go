package api

// The "add-disk" and "add-net" operations hot-add a virtio-blk disk or a
// virtio-net device (`govmm add-disk|add-net`). The VMM is confined
// (Landlock, seccomp) and opens no path once the guest runs, so the client
// opens the image or the TAP and passes its descriptor with the request
// line, as SCM_RIGHTS ancillary data on the Unix socket: the server uses
// it and opens nothing.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// HotAddTarget is a Target that can hot-add devices. fd is the descriptor
// the client passed; the target owns it (and closes it on error).
type HotAddTarget interface {
	AddDisk(req AddDeviceRequest, fd int) (PCIDevice, error)
	AddNet(req AddDeviceRequest, fd int) (PCIDevice, error)
}

// AddDeviceRequest is a hot-add's device, in the syntax of --disk or
// --net ("path=FILE,readonly=on", "tap=NAME,mac=..."; a comma in a value
// is written ",,").
type AddDeviceRequest struct {
	Spec string `json:"spec"`
	// WaitMS is how long to wait for the guest to bind a driver to the
	// device before answering with an error (0: the VMM's default).
	WaitMS int64 `json:"wait_ms,omitempty"`
}

// DefaultHotAddWait is how long a hot-add waits for the guest to bind a
// driver to the new device when the request does not say.
const DefaultHotAddWait = 2 * time.Minute

// maxRequestFDs bounds the descriptors a request may carry (one is used).
const maxRequestFDs = 4

// readRequest reads the request line of c and the descriptors sent with
// it. Data after the line is ignored (one request per connection).
func readRequest(c net.Conn) (line []byte, fds []int, err error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("not a Unix socket")
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*maxRequestFDs))
	for len(line) < 1<<20 {
		n, oobn, flags, _, rerr := uc.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				return line, fds, perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return line, fds, fmt.Errorf("more than %d descriptors sent", maxRequestFDs)
		}
		line = append(line, buf[:n]...)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			return line[:i+1], fds, nil
		}
		if rerr != nil {
			return line, fds, rerr
		}
		if n == 0 && oobn == 0 {
			return line, fds, errors.New("connection closed before the request line ended")
		}
	}
	return line, fds, errors.New("request line longer than 1 MiB")
}

// parseRights returns the descriptors of the SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("ancillary data: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, fmt.Errorf("ancillary data: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// hotAdd serves add-disk and add-net: exactly one descriptor, which it
// hands to the target.
func (s *Server) hotAdd(req *request, fds []int) (any, error) {
	ht, ok := s.t.(HotAddTarget)
	if !ok {
		closeFDs(fds)
		return nil, fmt.Errorf("%s: this VM cannot hot-add devices", req.Op)
	}
	if req.Add == nil || req.Add.Spec == "" {
		closeFDs(fds)
		return nil, fmt.Errorf("%s: the device's options are required", req.Op)
	}
	if len(fds) != 1 {
		closeFDs(fds)
		return nil, fmt.Errorf("%s: want the device's descriptor with the request (SCM_RIGHTS), got %d descriptors", req.Op, len(fds))
	}
	if req.Op == "add-disk" {
		return ht.AddDisk(*req.Add, fds[0])
	}
	return ht.AddNet(*req.Add, fds[0])
}

// AddDisk hot-adds a disk: req.Spec is --disk's syntax, f the image the
// caller opened (read-write, or read-only with readonly=on).
func (c *Client) AddDisk(req AddDeviceRequest, f *os.File) (PCIDevice, error) {
	return c.addDevice("add-disk", req, f)
}

// AddNet hot-adds a network device: req.Spec is --net's syntax, f the TAP
// queue the caller opened (virtio/net.OpenTapFile).
func (c *Client) AddNet(req AddDeviceRequest, f *os.File) (PCIDevice, error) {
	return c.addDevice("add-net", req, f)
}

func (c *Client) addDevice(op string, req AddDeviceRequest, f *os.File) (PCIDevice, error) {
	// The raw descriptor through SyscallConn: File.Fd would make a
	// non-blocking TAP blocking, for the VMM too (the flag belongs to
	// the open file the two share).
	rc, err := f.SyscallConn()
	if err != nil {
		return PCIDevice{}, fmt.Errorf("%s: %w", op, err)
	}
	var rights []byte
	if err := rc.Control(func(fd uintptr) { rights = unix.UnixRights(int(fd)) }); err != nil {
		return PCIDevice{}, fmt.Errorf("%s: %w", op, err)
	}
	var res PCIDevice
	return res, c.callWith(request{Op: op, Add: &req}, rights, nil, &res)
}
