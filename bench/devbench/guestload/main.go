// Command guestload is the guest's side of bench/devbench: a small static
// program in the benchmark's initramfs that loads the virtio disk,
// network and vsock devices the same way under every VMM and prints what
// it measured as "devbench: KEY VALUE" lines on the console.
//
//	guestload blk DEV SECONDS    4 KiB random reads (8 at a time), then
//	                             1 MiB sequential reads and writes, all
//	                             O_DIRECT (the guest's page cache is out)
//	guestload net HOST BYTES     TCP guest->host to HOST:5001 (the host
//	                             answers "ok" after the last byte), then
//	                             host->guest from HOST:5002, to EOF
//	guestload vsock PORT         listen on vsock PORT, print that it does,
//	                             and echo one connection until EOF (the
//	                             host times the round trips)
package main

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Printf("devbench: error %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "blk":
		secs, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		return blk(args[1], time.Duration(secs)*time.Second)
	case len(args) == 3 && args[0] == "net":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		return netBench(args[1], n)
	case len(args) == 2 && args[0] == "vsock":
		port, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		return vsockEcho(uint32(port))
	}
	return fmt.Errorf("usage: guestload blk DEV SECONDS | net HOST BYTES | vsock PORT")
}

// aligned returns n bytes aligned for O_DIRECT.
func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & 4095)
	return b[off : off+n]
}

func blk(dev string, d time.Duration) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size < 2<<20 {
		return fmt.Errorf("%s: size %d: %v", dev, size, err)
	}

	// Random 4 KiB reads, 8 in flight (8 goroutines, each blocking in
	// pread: the block layer sees a queue depth of up to 8).
	var ops atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	// As for the network: the host reads its counters around each
	// disk pattern.
	fmt.Println("devbench: mark blk-randread")
	start := time.Now()
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := aligned(4096)
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for time.Now().Before(stop) {
				off := int64(r.IntN(int(size/4096))) * 4096
				if _, err := f.ReadAt(buf, off); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				ops.Add(1)
			}
		}()
	}
	irqs := virtioInterrupts()
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return fmt.Errorf("random read: %v", e)
	}
	fmt.Printf("devbench: blk-randread-iops %.0f\n", float64(ops.Load())/time.Since(start).Seconds())
	if n := ops.Load(); n > 0 {
		fmt.Printf("devbench: blk-randread-irqs-per-op %.2f\n", float64(virtioInterrupts()-irqs)/float64(n))
	}

	// 1 MiB sequential reads, wrapping at the end of the disk.
	buf := aligned(1 << 20)
	var bytes int64
	fmt.Println("devbench: mark blk-seqread")
	start, stop = time.Now(), time.Now().Add(d)
	for off := int64(0); time.Now().Before(stop); off = (off + 1<<20) % (size &^ (1<<20 - 1)) {
		n, err := f.ReadAt(buf, off)
		if err != nil {
			return fmt.Errorf("sequential read at %d: %v", off, err)
		}
		bytes += int64(n)
	}
	fmt.Printf("devbench: blk-seqread-mbs %.1f\n", float64(bytes)/time.Since(start).Seconds()/1e6)

	// 1 MiB sequential writes, then a flush that is part of the time.
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	bytes = 0
	fmt.Println("devbench: mark blk-seqwrite")
	start, stop = time.Now(), time.Now().Add(d)
	for off := int64(0); time.Now().Before(stop); off = (off + 1<<20) % (size &^ (1<<20 - 1)) {
		n, err := f.WriteAt(buf, off)
		if err != nil {
			return fmt.Errorf("sequential write at %d: %v", off, err)
		}
		bytes += int64(n)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush: %v", err)
	}
	fmt.Printf("devbench: blk-seqwrite-mbs %.1f\n", float64(bytes)/time.Since(start).Seconds()/1e6)
	return nil
}

// virtioInterrupts sums the interrupts of /proc/interrupts' virtio
// lines (the disk's request queue, and the other devices', which are idle
// while the disk is measured).
func virtioInterrupts() int64 {
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return 0
	}
	var sum int64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "virtio") {
			n, _ := lineCounts(strings.Fields(line))
			sum += n
		}
	}
	return sum
}

// lineCounts sums the per-CPU counts of a /proc/interrupts line split into
// fields f (the counts follow the "NAME:" field), and says how many there
// were.
func lineCounts(f []string) (sum int64, counts int) {
	for _, x := range f[1:] {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			break
		}
		sum += n
		counts++
	}
	return sum, counts
}

// interrupts reads /proc/interrupts: each line's total over the CPUs, by
// its name (the last field for a device's line, such as virtio1-input.0;
// the first, such as LOC or CAL, for the CPU's own).
func interrupts() map[string]int64 {
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return nil
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		sum, counts := lineCounts(f)
		name := strings.TrimSuffix(f[0], ":")
		if _, err := strconv.Atoi(name); err == nil && len(f) > counts+1 {
			name = f[len(f)-1]
		}
		m[name] += sum
	}
	return m
}

// printInterrupts prints the lines of /proc/interrupts that counted since
// before, as "devbench: irq PHASE NAME=COUNT ...".
func printInterrupts(phase string, before map[string]int64) {
	var parts []string
	for name, n := range interrupts() {
		if d := n - before[name]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", name, d))
		}
	}
	slices.Sort(parts)
	fmt.Printf("devbench: irq %s %s\n", phase, strings.Join(parts, " "))
}

func netBench(host string, n int) error {
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	// Guest to host: the host's "ok" after the last byte ends the clock.
	// The "mark" lines tell the host when a phase starts, so it can take
	// KVM's exit counters around it.
	fmt.Println("devbench: mark net-g2h")
	irqs := interrupts()
	start := time.Now()
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(host, "5001"), 30*time.Second)
	if err != nil {
		return err
	}
	for sent := 0; sent < n; sent += len(chunk) {
		if _, err := c.Write(chunk[:min(len(chunk), n-sent)]); err != nil {
			return fmt.Errorf("send: %v", err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	ack, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || ack != "ok\n" {
		return fmt.Errorf("the host's answer %q: %v", ack, err)
	}
	fmt.Printf("devbench: net-g2h-mbs %.1f\n", float64(n)/time.Since(start).Seconds()/1e6)
	printInterrupts("net-g2h", irqs)

	// Host to guest, to EOF; and how many packets the driver dropped
	// for buffers it could not find (a device that publishes a packet's
	// buffers one at a time loses packets so).
	lenErrs := rxLengthErrors()
	fmt.Println("devbench: mark net-h2g")
	irqs = interrupts()
	start = time.Now()
	c, err = net.DialTimeout("tcp4", net.JoinHostPort(host, "5002"), 30*time.Second)
	if err != nil {
		return err
	}
	got, err := io.CopyBuffer(io.Discard, c, chunk)
	c.Close()
	if err != nil || got != int64(n) {
		return fmt.Errorf("received %d of %d bytes: %v", got, n, err)
	}
	fmt.Printf("devbench: net-h2g-mbs %.1f\n", float64(n)/time.Since(start).Seconds()/1e6)
	printInterrupts("net-h2g", irqs)
	fmt.Printf("devbench: net-h2g-rx-length-errors %d\n", rxLengthErrors()-lenErrs)
	return nil
}

// rxLengthErrors is eth0's rx_length_errors counter.
func rxLengthErrors() int64 {
	b, err := os.ReadFile("/sys/class/net/eth0/statistics/rx_length_errors")
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func vsockEcho(port uint32) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err != nil {
		return fmt.Errorf("vsock socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return fmt.Errorf("vsock bind: %v", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("vsock listen: %v", err)
	}
	fmt.Printf("devbench: vsock listening %d\n", port)
	cfd, _, err := unix.Accept(fd)
	if err != nil {
		return fmt.Errorf("vsock accept: %v", err)
	}
	unix.Close(fd)
	c := os.NewFile(uintptr(cfd), "vsock")
	defer c.Close()
	irqs := interrupts()
	if _, err := io.Copy(c, c); err != nil {
		return fmt.Errorf("vsock echo: %v", err)
	}
	printInterrupts("vsock", irqs)
	fmt.Println("devbench: vsock done")
	return nil
}
