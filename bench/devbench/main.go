// Command devbench measures govmm's virtio devices against QEMU's on the
// same KVM (issue #13, item 5): disk IOPS and throughput, TCP throughput
// both ways, and vsock round-trip latency, from one Linux guest per VMM
// running the same load program (guestload) with the same kernel,
// initramfs, disk image and TAP set-up, interleaved per repetition, each
// column in each place in turn.
//
// The VMMs: govmm on KVM (--disk, --net tap=, --vsock over a Unix socket:
// govmm's hybrid vsock served in userspace; the column govmm-vhost has
// --vsock cid=N and --net ...,vhost=on instead, the kernel's vhost-vsock
// and vhost-net as qemu-vhost's) and qemu-system-x86_64 -accel kvm
// -cpu host -M pc with virtio-blk-pci (cache=writeback, aio=threads, its
// defaults), virtio-net-pci on a TAP (vhost=off, its default, and a
// column with vhost=on, the kernel's vhost-net) and vhost-vsock-pci (the kernel's: QEMU
// has no userspace vsock); the column qemu-uring is QEMU with aio=io_uring
// on its disk, to weigh io_uring against a thread pool (issue #13 asks
// for the choice to be measured; govmm's disk uses a worker pool). The
// guest's disk I/O is O_DIRECT, so its page
// cache is out of the figures; the host's is in for both (the image lies
// in the nested VM's RAM, whose file system has no O_DIRECT).
//
// Around each TCP transfer, the vsock ping-pong and a 2-second idle
// stretch it also reads KVM's per-VM exit counters from debugfs (exits,
// io_exits, halt_exits, irq_window_exits, insn_emulation, ...) and the
// guest's /proc/interrupts and the VMM process's /proc/PID (CPU time
// outside and inside the guest, read and write system calls, context
// switches; around each disk pattern too), and the guest prints its virtio
// devices' feature bits, its clocksource, its CPU flags, the mitigations
// its kernel chose, its command line and its kernel's platform lines: the
// report sets them side by side per MB, per round trip and per second, to
// show where one VMM's guest costs more than another's.
//
// Where there is no hardware-semantics /dev/kvm (or with -nested), the
// benchmark builds here and runs itself inside a nested-KVM VM (L1),
// QEMU included; its numbers are then TCG's, and only the ratios mean
// anything. An L1 that dies is replaced, and the run goes on from the
// repetition it was in.
//
//	go run ./bench/devbench [-runs 3] [-cpus 1] [-vmms govmm,qemu,qemu-vhost] [-nested]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"govmm/bench/internal/host"
	"govmm/internal/initramfs"
	"govmm/internal/linuxguest"
	"govmm/internal/nested"
	"govmm/internal/stats"
)

// The guest's and the host's ends of the TAP, and the vsock set-up.
const (
	tap       = "devtap0"
	hostIP    = "10.88.0.1"
	guestIP   = "10.88.0.2"
	guestMAC  = "52:54:00:88:00:02"
	guestCID  = 3
	vsockPort = 5003
	diskSize  = 128 << 20
	memoryMiB = 512
)

// netBytes is what each TCP direction carries; blkSeconds how long each
// disk pattern runs; rtts how many vsock round trips are timed.
const (
	netBytes   = 64 << 20
	blkSeconds = 4
	rtts       = 200
)

// guestModules are the guest's modules, in load order, under the
// kernel's modules/VER/kernel directory.
var guestModules = []string{
	"drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci.ko",
	"drivers/block/virtio_blk.ko",
	"net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko",
	"net/vmw_vsock/vsock.ko", "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
}

// l1Modules are what L1 needs besides KVM: TAPs, and the host side of
// vhost-vsock (and vhost-net) for QEMU.
var l1Modules = []string{
	"drivers/net/tun.ko",
	"net/vmw_vsock/vsock.ko", "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
	"drivers/net/tap.ko", "drivers/vhost/vhost_iotlb.ko", "drivers/vhost/vhost.ko", "drivers/vhost/vhost_vsock.ko", "drivers/vhost/vhost_net.ko",
}

const initScript = `#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /lib/modules/order); do $B insmod /lib/modules/$m || echo "devbench: error insmod $m"; done
if [ "$devbench" = root ]; then
	# Boot on to the disk's root, as a distribution's initramfs does.
	i=0
	while [ ! -e /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.05; i=$((i+1)); done
	$B mkdir -p /newroot
	$B mount -t ext4 /dev/vda /newroot || echo "devbench: error mount /dev/vda"
	exec $B switch_root /newroot /sbin/init
fi
i=0
while { [ ! -e /sys/class/net/eth0 ] || [ ! -e /dev/vda ]; } && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
$B ip link set lo up
$B ip addr add ` + guestIP + `/24 dev eth0
$B ip link set eth0 up
echo "devbench: init"
# What the guest got: its virtio devices' feature bits, its clock, its
# CPU flags, the mitigations its kernel chose (they set the cost of every
# system call and interrupt), its command line and what the kernel said
# about its platform.
for d in /sys/bus/virtio/devices/*; do echo "devbench: info virtio device $($B cat $d/device) features $($B cat $d/features)"; done
echo "devbench: info clocksource $($B cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "devbench: info cpuflags$($B grep -m1 '^flags' /proc/cpuinfo | $B cut -d: -f2)"
for v in /sys/devices/system/cpu/vulnerabilities/*; do echo "devbench: info vulnerability $($B basename $v): $($B cat $v)"; done
echo "devbench: info cmdline $($B cat /proc/cmdline)"
$B dmesg | $B grep -iE 'kvm|x2apic|apic|tsc|clocksource|hypervisor|ioapic|msi|pv' | $B sed -e 's/^\[[^]]*\] *//' -e 's/^/devbench: info dmesg /' | $B head -60
# An idle stretch: the exits a guest that does nothing costs.
echo "devbench: mark idle"
$B sleep 2
echo "devbench: idle-end"
/bin/guestload blk /dev/vda ` + "BLKSECONDS" + `
i=0
until $B ping -c 1 -W 1 ` + hostIP + ` >/dev/null 2>&1 || [ $i -ge 30 ]; do i=$((i+1)); done
/bin/guestload net ` + hostIP + ` NETBYTES
/bin/guestload vsock ` + "VSOCKPORT" + `
echo "devbench: end"
$B poweroff -f
`

// config is what every run shares.
type config struct {
	govmm, qemu, initrd, kernel, tmp string
	alt                              string // -govmm-alt, copied into tmp as govmm-alt
	runs, from, cpus                 int
	columns                          []string // -vmms
	timeout                          time.Duration
	emit                             func(result)
}

// result is one figure of one boot, or a boot's failure (Key "failed").
type result struct {
	VMM   string  `json:"vmm"`
	Rep   int     `json:"rep"`
	Key   string  `json:"key"`
	Value float64 `json:"value"`
	Note  string  `json:"note,omitempty"`
}

const resultPrefix = "devbench-result "

func (r result) String() string {
	b, _ := json.Marshal(r)
	return resultPrefix + string(b)
}

func parseResult(line string) (result, bool) {
	var r result
	s, ok := strings.CutPrefix(strings.TrimSpace(line), resultPrefix)
	if !ok || json.Unmarshal([]byte(s), &r) != nil || r.VMM == "" || r.Key == "" {
		return r, false
	}
	return r, true
}

func main() {
	runs := flag.Int("runs", 3, "repetitions (medians are reported)")
	cpus := flag.Int("cpus", 1, "vCPUs of every guest")
	kernel := flag.String("kernel", os.Getenv("GOVMM_LINUX_KERNEL"), "Linux bzImage (default: the one .ci/run caches)")
	vmms := flag.String("vmms", "govmm,qemu,qemu-vhost", "columns, in order: govmm, qemu (its TAP with vhost=off, its default), qemu-vhost (vhost=on: the kernel's vhost-net), govmm-alt (-govmm-alt's binary), govmm-vhost (govmm with --vsock cid=N and --net ...,vhost=on: the kernel's vhost-vsock and vhost-net, like qemu-vhost; its boot is govmm's), govmm-vhost-alt (-govmm-alt's binary with govmm-vhost's arguments), qemu-uring (qemu with aio=io_uring on its disk instead of its thread pool)")
	alt := flag.String("govmm-alt", "", "another static govmm binary, run as the column govmm-alt with govmm's arguments and govmm-vhost-alt with govmm-vhost's (to compare two builds pair by pair)")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on one guest's run")
	forceNested := flag.Bool("nested", false, "run inside a nested-KVM VM even where /dev/kvm exists")
	prebuilt := flag.String("prebuilt", "", "use govmm and the initrd in DIR and print result lines (how the run inside L1 is started)")
	from := flag.Int("from", 0, "first repetition (a fresh L1 goes on from there)")
	flag.Parse()
	cfg := &config{runs: *runs, from: *from, cpus: *cpus, timeout: *timeout, kernel: *kernel}
	for _, v := range strings.Split(*vmms, ",") {
		if !slices.Contains([]string{"govmm", "qemu", "qemu-vhost", "govmm-alt", "govmm-vhost", "govmm-vhost-alt", "qemu-uring"}, v) {
			fail("-vmms: unknown column %q", v)
		}
		cfg.columns = append(cfg.columns, v)
	}
	if (slices.Contains(cfg.columns, "govmm-alt") || slices.Contains(cfg.columns, "govmm-vhost-alt")) != (*alt != "") {
		fail("-govmm-alt and a column govmm-alt or govmm-vhost-alt go together")
	}
	cfg.alt = *alt
	if cfg.kernel == "" {
		cfg.kernel = nested.LinuxKernel()
	}
	if cfg.kernel == "" {
		fail("no kernel: run .ci/run once, or pass -kernel")
	}
	q, err := host.EnsureQEMU()
	if err != nil {
		fail("%v", err)
	}
	cfg.qemu = q
	if *prebuilt != "" {
		cfg.tmp = *prebuilt
		cfg.govmm, cfg.initrd = filepath.Join(cfg.tmp, "govmm"), filepath.Join(cfg.tmp, "initrd.cpio")
		cfg.emit = func(r result) { fmt.Println(r) }
		measure(cfg)
		return
	}
	tmp, err := os.MkdirTemp("", "govmm-devbench-")
	if err != nil {
		fail("%v", err)
	}
	defer os.RemoveAll(tmp)
	cfg.tmp = tmp
	if err := build(cfg); err != nil {
		fail("%v", err)
	}
	begin := time.Now()
	c := &collector{}
	if os.Getenv(nested.InL1Env) != "1" && (*forceNested || !nested.HardwareKVM()) {
		err = inL1(cfg, c)
	} else {
		for _, m := range l1Modules {
			loadModule(filepath.Join(moduleTree(cfg.kernel), m))
		}
		cfg.emit = c.add
		measure(cfg)
	}
	report(os.Stdout, c.results, cfg, strings.TrimSpace("go run ./bench/devbench "+strings.Join(os.Args[1:], " ")), time.Since(begin))
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "devbench: "+format+"\n", a...)
	os.Exit(1)
}

// moduleTree is the modules/VER/kernel directory next to an unpacked
// Debian kernel's boot/vmlinuz-VER.
func moduleTree(kernel string) string {
	ver := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	return filepath.Join(filepath.Dir(filepath.Dir(kernel)), "lib", "modules", ver, "kernel")
}

// loadModule loads a module where it is not loaded yet (errors are
// reported by what then fails).
func loadModule(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	unix.FinitModule(int(f.Fd()), "", 0)
}

// build writes a static govmm, the guest's load program and its
// initramfs into cfg.tmp.
func build(cfg *config) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	cfg.govmm = filepath.Join(cfg.tmp, "govmm")
	load := filepath.Join(cfg.tmp, "guestload")
	for _, b := range [][2]string{{cfg.govmm, "./cmd/govmm"}, {load, "./bench/devbench/guestload"}} {
		c := exec.Command("go", "build", "-o", b[0], b[1])
		c.Dir = root
		c.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b[1], err, out)
		}
	}
	if cfg.alt != "" {
		b, err := os.ReadFile(cfg.alt)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(cfg.tmp, "govmm-alt"), b, 0o755); err != nil {
			return err
		}
	}
	ar := initramfs.New()
	for _, d := range []string{"/proc", "/sys", "/dev", "/newroot"} {
		ar.Dir(d)
	}
	bb, err := linuxguest.Busybox()
	if err != nil {
		return err
	}
	if err := ar.File("/bin/busybox", bb); err != nil {
		return err
	}
	if err := ar.File("/bin/guestload", load); err != nil {
		return err
	}
	var order []string
	for _, m := range guestModules {
		if err := ar.File("/lib/modules/"+filepath.Base(m), filepath.Join(moduleTree(cfg.kernel), m)); err != nil {
			return fmt.Errorf("guest module: %w", err)
		}
		order = append(order, filepath.Base(m))
	}
	ar.Bytes("/lib/modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	init := strings.NewReplacer("BLKSECONDS", strconv.Itoa(blkSeconds), "NETBYTES", strconv.Itoa(netBytes),
		"VSOCKPORT", strconv.Itoa(vsockPort)).Replace(initScript)
	ar.Bytes("/init", 0o755, []byte(init))
	cfg.initrd = filepath.Join(cfg.tmp, "initrd.cpio")
	if err := ar.WriteFile(cfg.initrd); err != nil {
		return err
	}
	// The disk root: ext4 with busybox and an init that prints the
	// marker and powers off.
	rootfs := filepath.Join(cfg.tmp, "rootfs")
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	if b, err := os.ReadFile(bb); err != nil {
		return err
	} else if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), b, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "sbin", "init"), []byte(rootInit), 0o755); err != nil {
		return err
	}
	img := filepath.Join(cfg.tmp, "root.img")
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", "-d", rootfs, img, "32M").CombinedOutput(); err != nil {
		return fmt.Errorf("mke2fs: %v\n%s", err, out)
	}
	return os.RemoveAll(rootfs)
}

// rootInit is the disk root's /sbin/init.
const rootInit = `#!/bin/busybox sh
echo "devbench: root init"
/bin/busybox poweroff -f
`

// inL1 runs the benchmark in nested-KVM VMs and collects its result
// lines: when L1 dies, a fresh one goes on from the repetition that was
// running (at most twice more).
func inL1(cfg *config, c *collector) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := func() []string {
		a := []string{self, "-prebuilt", cfg.tmp, "-kernel", cfg.kernel, "-runs", strconv.Itoa(cfg.runs),
			"-from", strconv.Itoa(c.nextRep(cfg.from)), "-cpus", strconv.Itoa(cfg.cpus), "-timeout", cfg.timeout.String(),
			"-vmms", strings.Join(cfg.columns, ",")}
		if cfg.alt != "" {
			a = append(a, "-govmm-alt", filepath.Join(cfg.tmp, "govmm-alt"))
		}
		return a
	}
	_, err = host.ResumeInL1("devbench", 2, args, nested.Config{
		Dir:         "/tmp",
		Files:       []string{self, cfg.tmp, cfg.kernel},
		Programs:    []string{"qemu-system-x86_64"},
		Modules:     l1Modules,
		MemoryMB:    3072,
		Timeout:     2 * time.Hour,
		IdleTimeout: cfg.timeout + 2*time.Minute,
		Output:      &host.LineWriter{Line: c.line},
	})
	return err
}

// collector keeps the result lines of L1's output and passes the others
// on to stderr as progress.
type collector struct {
	mu      sync.Mutex
	results []result
}

func (c *collector) add(r result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.results = append(c.results, r)
	fmt.Fprintf(os.Stderr, "devbench: %s run %d: %s %g %s\n", r.VMM, r.Rep+1, r.Key, r.Value, r.Note)
}

// nextRep is the first repetition without a "done" result.
func (c *collector) nextRep(from int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := from
	for _, r := range c.results {
		if r.Key == "done" && r.Rep >= next {
			next = r.Rep + 1
		}
	}
	return next
}

// line takes one line of L1's output.
func (c *collector) line(l string) {
	if r, ok := parseResult(l); ok {
		c.add(r)
	} else {
		io.WriteString(os.Stderr, l)
	}
}

// vmms are the columns, in order.
func (cfg *config) vmms() []string { return cfg.columns }

// runOrder is the order of the columns in repetition rep: rotated by
// one place per repetition, so that each column takes each place in turn.
// In L1 a column's place in the repetition moves some rows as much as a
// change does (README, "govmm's helper threads SCHED_BATCH": random and
// sequential I/O went opposite ways with two builds' places swapped), and
// a fixed order would give that to one column in every pair.
func runOrder(columns []string, rep int) []string {
	n := len(columns)
	if n == 0 {
		return nil
	}
	k := rep % n
	return append(slices.Clone(columns[k:]), columns[:k]...)
}

// measure runs every VMM once per repetition, interleaved, in runOrder.
func measure(cfg *config) {
	mountDebugfs()
	for rep := cfg.from; rep < cfg.runs; rep++ {
		for _, vmm := range runOrder(cfg.vmms(), rep) {
			// qemu-vhost's boot is qemu's, govmm-vhost's govmm's.
			if !(vmm == "qemu-vhost" && slices.Contains(cfg.columns, "qemu")) && !(vmm == "govmm-vhost" && slices.Contains(cfg.columns, "govmm")) {
				ms, err := bootRoot(cfg, vmm)
				if err != nil {
					cfg.emit(result{VMM: vmm, Rep: rep, Key: "failed", Note: "boot from the disk root: " + strings.ReplaceAll(err.Error(), "\n", " | ")})
				} else {
					cfg.emit(result{VMM: vmm, Rep: rep, Key: "boot-root-ms", Value: ms})
				}
			}
			figures, err := runOne(cfg, vmm)
			for _, f := range figures {
				f.Rep = rep
				cfg.emit(f)
			}
			if err != nil {
				cfg.emit(result{VMM: vmm, Rep: rep, Key: "failed", Note: strings.ReplaceAll(err.Error(), "\n", " | ")})
			}
		}
		cfg.emit(result{VMM: "-", Rep: rep, Key: "done"})
	}
}

// cmdline is every guest's kernel command line.
const cmdline = "console=ttyS0 panic=-1 quiet"

// command is the VMM's command line for one run: with the disk alone
// (vsockSock "") or with the network and vsock too.
func command(cfg *config, vmm, disk, vsockSock string, extra string) []string {
	cl := strings.TrimSpace(cmdline + " " + extra)
	if strings.HasPrefix(vmm, "govmm") {
		bin := cfg.govmm
		if strings.HasSuffix(vmm, "-alt") {
			bin = cfg.alt
		}
		args := []string{bin, "run", "--kernel", cfg.kernel, "--initrd", cfg.initrd, "--cmdline", cl,
			"--memory", strconv.Itoa(memoryMiB) + "M", "--cpus", strconv.Itoa(cfg.cpus), "--disk", "path=" + disk}
		if vsockSock != "" {
			vs := fmt.Sprintf("cid=%d,socket=%s", guestCID, vsockSock)
			nf := "tap=" + tap + ",mac=" + guestMAC
			if isVhost(vmm) {
				// The kernel's vhost-vsock and vhost-net, as qemu-vhost.
				vs = fmt.Sprintf("cid=%d", guestCID)
				nf += ",vhost=on"
			}
			args = append(args, "--net", nf, "--vsock", vs)
		}
		return args
	}
	args := []string{cfg.qemu, "-accel", "kvm", "-cpu", "host", "-M", "pc", "-m", strconv.Itoa(memoryMiB), "-smp", strconv.Itoa(cfg.cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", cfg.kernel, "-initrd", cfg.initrd, "-append", cl,
		"-drive", "file=" + disk + ",if=none,id=d0,format=raw" + map[bool]string{true: ",aio=io_uring"}[vmm == "qemu-uring"], "-device", "virtio-blk-pci,drive=d0"}
	if vsockSock != "" {
		vhost := "off"
		if vmm == "qemu-vhost" {
			vhost = "on"
		}
		args = append(args, "-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no,vhost="+vhost, "-device", "virtio-net-pci,netdev=n0,mac="+guestMAC,
			"-device", fmt.Sprintf("vhost-vsock-pci,guest-cid=%d", guestCID))
	}
	return args
}

// bootRoot boots from a copy of the ext4 root (the initramfs loads the
// virtio modules, mounts /dev/vda and switches to it) and returns the
// milliseconds from exec to the root's init's first line.
func bootRoot(cfg *config, vmm string) (float64, error) {
	dir, err := os.MkdirTemp("", "devbench-root-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "root.img")
	b, err := os.ReadFile(filepath.Join(cfg.tmp, "root.img"))
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(img, b, 0o644); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	args := command(cfg, vmm, img, "", "devbench=root")
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var ms float64
	var console strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line + "\n")
		if ms == 0 && strings.Contains(line, "devbench: root init") {
			ms = float64(time.Since(start).Microseconds()) / 1000
		}
	}
	cmd.Wait()
	if ms == 0 {
		return 0, fmt.Errorf("no line from the disk root's init\n%s", host.LastLines(console.String()+stderr.String(), 15))
	}
	return ms, nil
}

// runOne boots the guest under vmm once and returns what it measured.
func runOne(cfg *config, vmm string) ([]result, error) {
	dir, err := os.MkdirTemp("", "devbench-run-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	disk := filepath.Join(dir, "disk.img")
	if err := writeDisk(disk); err != nil {
		return nil, err
	}
	vsockSock := filepath.Join(dir, "vsock.sock")
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	stopServers, err := serveTCP(ctx)
	if err != nil {
		return nil, err
	}
	defer stopServers()
	args := command(cfg, vmm, disk, vsockSock, "")
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go hostTap(ctx)
	var figures []result
	units := phaseUnits()
	marks := map[string]kvmSnap{}
	snap := func() kvmSnap {
		s := readKVMStats()
		s.proc = readProc(cmd.Process.Pid)
		return s
	}
	// phaseEnd adds a phase's counters per unit: units' for the
	// network, vsock and idle, per MB or per 1000 reads (from the
	// phase's rate and length) for the disk.
	phaseEnd := func(phase string, rate float64) {
		a, b := marks[phase], snap()
		per := units[phase]
		if rate > 0 {
			per = rate * b.at.Sub(a.at).Seconds()
			if phase == "blk-randread" {
				per /= 1000
			}
		}
		figures = append(figures, kvmDelta(vmm, phase, a, b, per)...)
		figures = append(figures, procDelta(vmm, phase, a.proc, b.proc, per)...)
	}
	var console strings.Builder
	var guestErr error
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		console.WriteString(line + "\n")
		rest, ok := strings.CutPrefix(line, "devbench: ")
		if !ok {
			continue
		}
		key, val, _ := strings.Cut(rest, " ")
		switch {
		case key == "error":
			guestErr = errors.New("the guest: " + val)
		case key == "mark":
			marks[val] = snap()
		case key == "irq":
			figures = append(figures, guestIRQs(vmm, val, units)...)
		case key == "info":
			figures = append(figures, result{VMM: vmm, Key: "info " + val})
		case key == "idle-end":
			phaseEnd("idle", 0)
		case key == "vsock":
			if strings.HasPrefix(val, "listening") {
				marks["vsock"] = snap()
				rtt, err := vsockRTT(vmm, vsockSock)
				phaseEnd("vsock", 0)
				if err != nil {
					guestErr = fmt.Errorf("vsock: %w", err)
				} else {
					figures = append(figures, result{VMM: vmm, Key: "vsock-rtt-us", Value: rtt})
				}
			}
		default:
			if v, err := strconv.ParseFloat(val, 64); err == nil {
				figures = append(figures, result{VMM: vmm, Key: key, Value: v})
			}
			if phase, ok := strings.CutSuffix(key, "-mbs"); ok && strings.HasPrefix(phase, "net-") {
				phaseEnd(phase, 0)
			}
			if v, err := strconv.ParseFloat(val, 64); err == nil && (key == "blk-randread-iops" || key == "blk-seqread-mbs" || key == "blk-seqwrite-mbs") {
				phase := key[:strings.LastIndexByte(key, '-')]
				if _, ok := marks[phase]; ok {
					phaseEnd(phase, v)
				}
			}
		}
	}
	werr := cmd.Wait()
	switch {
	case guestErr != nil:
		return figures, fmt.Errorf("%w\n%s", guestErr, host.LastLines(console.String()+stderr.String(), 15))
	case ctx.Err() != nil:
		return figures, fmt.Errorf("no poweroff within %v\n%s", cfg.timeout, host.LastLines(console.String()+stderr.String(), 15))
	case !strings.Contains(console.String(), "devbench: end"):
		return figures, fmt.Errorf("the guest stopped early (%v)\n%s", werr, host.LastLines(console.String()+stderr.String(), 15))
	}
	return figures, nil
}

// writeDisk writes the image: every byte written, so that reads are of
// data and not of a sparse file's holes.
func writeDisk(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*13 + 1)
	}
	for off := 0; off < diskSize; off += len(buf) {
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// hostTap gives the TAP its address once the VMM created it.
func hostTap(ctx context.Context) {
	for ctx.Err() == nil {
		if _, err := net.InterfaceByName(tap); err == nil {
			exec.Command("ip", "addr", "add", hostIP+"/24", "dev", tap).Run()
			exec.Command("ip", "link", "set", tap, "up").Run()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serveTCP runs the host's ends of the two TCP transfers: a sink on 5001
// that answers "ok" after the guest's last byte, and a source on 5002.
func serveTCP(ctx context.Context) (func(), error) {
	sink, err := net.Listen("tcp4", ":5001")
	if err != nil {
		return nil, err
	}
	source, err := net.Listen("tcp4", ":5002")
	if err != nil {
		sink.Close()
		return nil, err
	}
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if n, err := io.Copy(io.Discard, c); err == nil && n == netBytes {
					io.WriteString(c, "ok\n")
				}
			}()
		}
	}()
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			c, err := source.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for sent := 0; sent < netBytes; sent += len(chunk) {
					if _, err := c.Write(chunk[:min(len(chunk), netBytes-sent)]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() { sink.Close(); source.Close() }, nil
}

// isVhost reports whether a govmm column runs with the kernel's
// vhost-vsock and vhost-net.
func isVhost(vmm string) bool { return vmm == "govmm-vhost" || vmm == "govmm-vhost-alt" }

// vsockRTT connects to the guest's echo (govmm: its Unix socket and
// CONNECT; QEMU and govmm-vhost: AF_VSOCK to the guest's CID through
// vhost-vsock) and
// returns the median of rtts round trips of 64 bytes, in microseconds.
func vsockRTT(vmm, sock string) (float64, error) {
	var c io.ReadWriteCloser
	if strings.HasPrefix(vmm, "govmm") && !isVhost(vmm) {
		u, err := net.DialTimeout("unix", sock, 10*time.Second)
		if err != nil {
			return 0, err
		}
		fmt.Fprintf(u, "CONNECT %d\n", vsockPort)
		br := bufio.NewReader(u)
		ok, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(ok, "OK ") {
			u.Close()
			return 0, fmt.Errorf("CONNECT %d: %q %v", vsockPort, ok, err)
		}
		c = struct {
			io.Reader
			io.WriteCloser
		}{br, u}
	} else {
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		if err != nil {
			return 0, fmt.Errorf("AF_VSOCK: %w", err)
		}
		if err := unix.Connect(fd, &unix.SockaddrVM{CID: guestCID, Port: vsockPort}); err != nil {
			unix.Close(fd)
			return 0, fmt.Errorf("connect to CID %d port %d: %w", guestCID, vsockPort, err)
		}
		c = os.NewFile(uintptr(fd), "vsock")
	}
	defer c.Close()
	msg, back := make([]byte, 64), make([]byte, 64)
	times := make([]float64, 0, rtts)
	for i := range rtts {
		msg[0] = byte(i)
		t := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, err
		}
		if back[0] != byte(i) {
			return 0, fmt.Errorf("round trip %d came back as %d", i, back[0])
		}
		times = append(times, float64(time.Since(t).Microseconds()))
	}
	return stats.Median(times), nil
}
