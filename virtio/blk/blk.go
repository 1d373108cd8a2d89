// Package blk is virtio-blk (virtio 1.2 §5.2) backed by a raw image file:
// reads, writes, flush, discard, write-zeroes and the serial ID, with a
// read-only option and an O_DIRECT option (direct.go). Requests run on a
// small pool of worker goroutines, off the vCPU threads and off the
// queue's notification goroutine, so a slow disk stalls neither the
// guest's CPUs nor the other requests.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"govmm/internal/optlist"
	"govmm/virtio"
)

// Feature bits (virtio 1.2 §5.2.3).
const (
	fSegMax      = 1 << 2
	fRO          = 1 << 5
	fBlkSize     = 1 << 6
	fFlush       = 1 << 9
	fDiscard     = 1 << 13
	fWriteZeroes = 1 << 14
)

// Request types and status values.
const (
	tIn          = 0
	tOut         = 1
	tFlush       = 4
	tGetID       = 8
	tDiscard     = 11
	tWriteZeroes = 13

	sOK     = 0
	sIOErr  = 1
	sUnsupp = 2

	hdrLen     = 16
	sectorSize = 512
	// IDLen is the serial ID's length (VIRTIO_BLK_ID_BYTES).
	IDLen = 20

	// QueueSize is the request queue's maximum size.
	QueueSize = 256
	segMax    = QueueSize - 2
	// maxDiscardSectors bounds one discard or write-zeroes segment, and
	// maxSegs the segments per request.
	maxDiscardSectors = 1 << 22 // 2 GiB
	maxSegs           = 1
	// Workers is the size of the I/O pool.
	Workers = 4
	cfgLen  = 60
)

// Config is one disk's configuration (the --disk flag).
type Config struct {
	Path     string
	ReadOnly bool
	// Serial is the ID the guest reads (up to 20 bytes).
	Serial string
	// Direct opens the image with O_DIRECT: the guest's I/O bypasses
	// the host's page cache (direct.go).
	Direct bool
	// Packed offers packed virtqueues (VIRTIO_F_RING_PACKED).
	Packed bool
}

// ParseFlag parses Cloud Hypervisor's --disk syntax:
// path=FILE[,readonly=on|off][,serial=ID][,direct=on|off][,packed=on|off],
// where ",," in a value is a literal comma, as in QEMU (optlist).
func ParseFlag(s string) (Config, error) {
	var c Config
	opts, err := optlist.Parse(s)
	if err != nil {
		return c, fmt.Errorf("--disk %q: %w", s, err)
	}
	for _, o := range opts {
		k, v := o.Key, o.Value
		switch k {
		case "path":
			c.Path = v
		case "readonly", "direct", "packed":
			on, ok := virtio.ParseOnOff(v)
			if !ok {
				return c, fmt.Errorf("--disk %q: %s=%s, want on or off", s, k, v)
			}
			switch k {
			case "readonly":
				c.ReadOnly = on
			case "direct":
				c.Direct = on
			default:
				c.Packed = on
			}
		case "serial":
			if len(v) > IDLen {
				return c, fmt.Errorf("--disk %q: serial %q is longer than %d bytes", s, v, IDLen)
			}
			c.Serial = v
		default:
			return c, fmt.Errorf("--disk %q: unknown option %q (want path, readonly, serial, direct, packed)", s, k)
		}
	}
	if c.Path == "" {
		return c, fmt.Errorf("--disk %q: no path=", s)
	}
	return c, nil
}

// Spec is c in ParseFlag's syntax, such that ParseFlag(c.Spec()) is c:
// how a snapshot or a live migration records a hot-added disk. Commas in
// the path and the serial are written as ",,". A Config ParseFlag could
// not have made (no path, a serial too long) has no such form, and Spec
// says so.
func (c Config) Spec() (string, error) {
	if c.Path == "" {
		return "", errors.New("disk: no path")
	}
	if len(c.Serial) > IDLen {
		return "", fmt.Errorf("disk %s: serial %q is longer than %d bytes", c.Path, c.Serial, IDLen)
	}
	opts := []optlist.Option{{Key: "path", Value: c.Path}}
	if c.ReadOnly {
		opts = append(opts, optlist.Option{Key: "readonly", Value: "on"})
	}
	if c.Serial != "" {
		opts = append(opts, optlist.Option{Key: "serial", Value: c.Serial})
	}
	if c.Direct {
		opts = append(opts, optlist.Option{Key: "direct", Value: "on"})
	}
	if c.Packed {
		opts = append(opts, optlist.Option{Key: "packed", Value: "on"})
	}
	return optlist.Join(opts...), nil
}

// Device is one virtio-blk disk.
type Device struct {
	cfg      Config
	name     string
	f        *os.File
	sectors  uint64
	size     int64
	jobs     chan job
	wg       sync.WaitGroup
	features uint64
	// dio is the O_DIRECT state (nil without direct=on), and bounces
	// the workers' aligned bounce buffers.
	dio     *dio
	bounces [][]byte
	// workerThread is SetWorkerThread's hook.
	workerThread func(name string)
}

type job struct {
	c    *virtio.Chain
	done func(uint32)
}

// Open opens the image (read-only when asked, with O_DIRECT when asked)
// and starts the workers. name is the guest-facing name in log lines
// ("vda").
func Open(c Config, name string) (*Device, error) {
	abs, err := filepath.Abs(c.Path)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", c.Path, err)
	}
	c.Path = abs
	flag := os.O_RDWR
	if c.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(c.Path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	d, err := newDevice(c, name, f)
	if err != nil {
		return nil, err
	}
	if c.Direct {
		// The buffered descriptor has shown the path is a regular
		// file; the direct one replaces it.
		f.Close()
		if d.f, d.dio, err = openDirect(c.Path, flag, d.size); err != nil {
			return nil, err
		}
		for range Workers {
			b, err := allocBounce(d.dio.bounceSize())
			if err != nil {
				d.closeFiles()
				return nil, fmt.Errorf("disk %s: %w", c.Path, err)
			}
			d.bounces = append(d.bounces, b)
		}
	}
	d.startWorkers(name)
	return d, nil
}

func (d *Device) startWorkers(name string) {
	for i := range Workers {
		d.wg.Add(1)
		var b []byte
		if d.dio != nil {
			b = d.bounces[i]
		}
		go d.worker(fmt.Sprintf("%s-io%d", name, i), b)
	}
}

// OpenFD is Open on an image the caller opened and passed over the
// control socket (a hot-added disk: the confined VMM opens no path). fd
// must be a regular file, opened read-write unless c.ReadOnly; c.Path
// only names it. direct=on is refused: its unaligned tail needs a second,
// buffered descriptor. The device owns fd from then on, also on error.
func OpenFD(c Config, name string, fd int) (*Device, error) {
	if c.Direct {
		unix.Close(fd)
		return nil, fmt.Errorf("disk %s: direct=on is not supported for a hot-added disk", c.Path)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("disk %s: the descriptor passed: %w", c.Path, err)
	}
	if !c.ReadOnly && fl&unix.O_ACCMODE != unix.O_RDWR {
		unix.Close(fd)
		return nil, fmt.Errorf("disk %s: the descriptor passed is not open for writing (readonly=on for a read-only disk)", c.Path)
	}
	d, err := newDevice(c, name, os.NewFile(uintptr(fd), c.Path))
	if err != nil {
		return nil, err
	}
	d.startWorkers(name)
	return d, nil
}

// newDevice is a device on image f, which must be a regular file; its
// workers are not started yet. f is closed on error.
func newDevice(c Config, name string, f *os.File) (*Device, error) {
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk %s: %w", c.Path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("disk %s: not a regular file (raw images only)", c.Path)
	}
	return &Device{cfg: c, name: "virtio-blk " + name, f: f, size: st.Size(), sectors: uint64(st.Size()) / sectorSize,
		jobs: make(chan job, QueueSize)}, nil
}

// OpenImageFile opens c's image as Open would without direct=on (the
// control socket's client does, to pass the descriptor to the VMM).
func OpenImageFile(c Config) (*os.File, error) {
	if c.Direct {
		return nil, fmt.Errorf("disk %s: direct=on is not supported for a hot-added disk", c.Path)
	}
	flag := os.O_RDWR
	if c.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(c.Path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	return f, nil
}

// SetWorkerThread has each worker run fn before its first request, on
// its goroutine locked to its thread (which ends with the worker), with a
// thread name such as "vda-io0": the thread's confinement
// (confine.DiskWorkerThread), whose failure fn reports. Call it before the
// device is on a transport. A request comes only once the guest runs,
// after the VMM is confined.
func (d *Device) SetWorkerThread(fn func(name string)) { d.workerThread = fn }

// Close stops the workers (after the queued requests) and closes the
// image.
func (d *Device) Close() error {
	close(d.jobs)
	d.wg.Wait()
	return d.closeFiles()
}

func (d *Device) closeFiles() error {
	for _, b := range d.bounces {
		freeBounce(b)
	}
	d.bounces = nil
	if d.dio != nil && d.dio.tail != nil {
		d.dio.tail.Close()
	}
	return d.f.Close()
}

func (d *Device) Type() uint16       { return virtio.IDBlock }
func (d *Device) Name() string       { return d.name }
func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize} }

// OfferPacked implements virtio.PackedOfferer (packed=on).
func (d *Device) OfferPacked() bool { return d.cfg.Packed }

// Describe names the image, its size and the options; a restore must
// find the same. direct=true is named only when on, so that snapshots
// from before the option still match a disk without it.
func (d *Device) Describe() string {
	s := fmt.Sprintf("virtio-blk path=%s bytes=%d readonly=%v serial=%q", d.cfg.Path, d.size, d.cfg.ReadOnly, d.cfg.Serial)
	if d.cfg.Direct {
		s += " direct=true"
	}
	return s
}

// Features offers SEG_MAX, BLK_SIZE and FLUSH, and RO for a read-only disk
// or DISCARD and WRITE_ZEROES for a writable one.
func (d *Device) Features() uint64 {
	f := uint64(fSegMax | fBlkSize | fFlush)
	if d.cfg.ReadOnly {
		f |= fRO
	} else {
		f |= fDiscard | fWriteZeroes
	}
	return f
}

// Activate records the negotiated features.
func (d *Device) Activate(features uint64) error {
	d.features = features
	return nil
}

// Reset forgets the negotiated features (the transport waits for
// requests in flight first).
func (d *Device) Reset() { d.features = 0 }

// ReadConfig reads struct virtio_blk_config.
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [cfgLen]byte
	le := binary.LittleEndian
	le.PutUint64(c[0:], d.sectors)
	le.PutUint32(c[12:], segMax)
	le.PutUint32(c[20:], sectorSize)
	le.PutUint16(c[34:], 1) // num_queues
	le.PutUint32(c[36:], maxDiscardSectors)
	le.PutUint32(c[40:], maxSegs)
	le.PutUint32(c[44:], 1)
	le.PutUint32(c[48:], maxDiscardSectors)
	le.PutUint32(c[52:], maxSegs)
	c[56] = 1 // write_zeroes_may_unmap
	for i := range data {
		o := off + uint64(i)
		if o < off || o >= cfgLen {
			data[i] = 0
			continue
		}
		data[i] = c[o]
	}
}

// WriteConfig drops the write: nothing in the configuration is
// writable without CONFIG_WCE, which is not offered.
func (d *Device) WriteConfig(uint64, []byte) {}

// Handle checks the request's framing and queues it for a worker. A chain
// without a 16-byte header or a status byte breaks the protocol.
func (d *Device) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	if c.ReadableLen() < hdrLen {
		return fmt.Errorf("request %d has %d readable bytes, less than the 16-byte header", c.Head, c.ReadableLen())
	}
	if c.WritableLen() < 1 {
		return fmt.Errorf("request %d has no writable status byte", c.Head)
	}
	d.jobs <- job{c, done}
	return nil
}

// worker serves requests; thread names its thread for WorkerThread, and
// bounce is its O_DIRECT bounce buffer.
func (d *Device) worker(thread string, bounce []byte) {
	defer d.wg.Done()
	first := true
	for j := range d.jobs {
		if first && d.workerThread != nil {
			// Locked for good: the runtime ends the thread with this
			// goroutine rather than run others under its filter.
			runtime.LockOSThread()
			d.workerThread(thread)
		}
		first = false
		st, n := d.serve(j.c, bounce)
		// The status is the chain's last writable byte.
		w := j.c.WritableLen()
		j.c.Write(w-1, []byte{st})
		j.done(uint32(n + 1))
	}
}

// span returns the writable buffers' first n bytes, as slices.
func span(bs []virtio.Buffer, skip, n uint64) [][]byte {
	var out [][]byte
	for _, b := range bs {
		if n == 0 {
			break
		}
		l := uint64(len(b.Bytes))
		if skip >= l {
			skip -= l
			continue
		}
		p := b.Bytes[skip:]
		skip = 0
		if uint64(len(p)) > n {
			p = p[:n]
		}
		out = append(out, p)
		n -= uint64(len(p))
	}
	return out
}

// serve runs one request and returns its status and the data bytes
// written into the chain (besides the status byte). bounce is the
// worker's O_DIRECT bounce buffer (nil without direct=on).
func (d *Device) serve(c *virtio.Chain, bounce []byte) (uint8, uint64) {
	var h [hdrLen]byte
	c.Read(0, h[:])
	le := binary.LittleEndian
	typ, sector := le.Uint32(h[0:]), le.Uint64(h[8:])
	switch typ {
	case tIn:
		n := c.WritableLen() - 1
		if !d.inRange(sector, n) {
			return sIOErr, 0
		}
		if err := d.readAt(span(c.Writable, 0, n), int64(sector*sectorSize), int64(n), bounce); err != nil {
			return sIOErr, 0
		}
		return sOK, n
	case tOut:
		if d.cfg.ReadOnly {
			return sIOErr, 0
		}
		n := c.ReadableLen() - hdrLen
		if !d.inRange(sector, n) {
			return sIOErr, 0
		}
		off := int64(sector * sectorSize)
		unlock := d.lock(off, int64(n))
		defer unlock()
		if err := d.writeAt(span(c.Readable, hdrLen, n), off, int64(n), bounce); err != nil {
			return sIOErr, 0
		}
		return sOK, 0
	case tFlush:
		if d.cfg.ReadOnly {
			return sOK, 0
		}
		if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
			return sIOErr, 0
		}
		return sOK, 0
	case tGetID:
		var id [IDLen]byte
		copy(id[:], d.cfg.Serial)
		n := min(c.WritableLen()-1, IDLen)
		c.Write(0, id[:n])
		return sOK, n
	case tDiscard, tWriteZeroes:
		if d.cfg.ReadOnly {
			return sIOErr, 0
		}
		if typ == tDiscard && d.features&fDiscard == 0 || typ == tWriteZeroes && d.features&fWriteZeroes == 0 {
			return sUnsupp, 0
		}
		n := c.ReadableLen() - hdrLen
		if n == 0 || n%16 != 0 || n/16 > maxSegs {
			return sUnsupp, 0
		}
		var seg [16]byte
		c.Read(hdrLen, seg[:])
		start, count, flags := le.Uint64(seg[0:]), uint64(le.Uint32(seg[8:])), le.Uint32(seg[12:])
		if flags&^1 != 0 || count > maxDiscardSectors || typ == tDiscard && flags != 0 {
			return sUnsupp, 0
		}
		if !d.inRange(start, count*sectorSize) {
			return sIOErr, 0
		}
		zoff, zn := int64(start*sectorSize), int64(count*sectorSize)
		unlock := d.lock(zoff, zn)
		defer unlock()
		if err := d.zero(zoff, zn, typ == tDiscard || flags&1 != 0, bounce); err != nil {
			return sIOErr, 0
		}
		return sOK, 0
	}
	return sUnsupp, 0
}

// inRange reports whether n bytes from sector fit in the disk, in whole
// sectors.
func (d *Device) inRange(sector, n uint64) bool {
	if n%sectorSize != 0 || sector > d.sectors {
		return false
	}
	return n/sectorSize <= d.sectors-sector
}

// zero makes [off, off+n) read as zeros: a hole when unmapping is allowed,
// else zeroed blocks, and written zeros where the file system has
// neither.
func (d *Device) zero(off, n int64, unmap bool, bounce []byte) error {
	fd := int(d.f.Fd())
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if unmap {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(fd, mode, off, n)
	if err == nil || !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if err := d.writeAt([][]byte{buf[:k]}, off, k, bounce); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// readAt reads n bytes at off into segs, through the direct path with
// direct=on.
func (d *Device) readAt(segs [][]byte, off, n int64, bounce []byte) error {
	if d.dio != nil {
		return d.dio.readAt(int(d.f.Fd()), segs, off, n, bounce)
	}
	return preadSegs(int(d.f.Fd()), segs, off)
}

// writeAt writes segs (n bytes) at off, through the direct path with
// direct=on; the caller holds lock(off, n).
func (d *Device) writeAt(segs [][]byte, off, n int64, bounce []byte) error {
	if d.dio != nil {
		return d.dio.writeAt(int(d.f.Fd()), segs, off, n, bounce)
	}
	return pwriteSegs(int(d.f.Fd()), segs, off)
}

// lock holds the aligned blocks [off, off+n) touches against other
// writes, discards and write-zeroes with direct=on (a read-modify-write
// must not interleave with a neighbour's), and returns the unlock.
func (d *Device) lock(off, n int64) func() {
	if d.dio == nil {
		return func() {}
	}
	a0, a1 := d.dio.span(off, n)
	d.dio.locks.lock(a0, a1)
	return func() { d.dio.locks.unlock(a0, a1) }
}

// String names the device for messages.
func (d *Device) String() string {
	return d.name + " (" + d.cfg.Path + ", " + strconv.FormatUint(d.sectors, 10) + " sectors)"
}
