// Command snapbench measures govmm's snapshot, restore and live migration
// (issue 7) side by side with QEMU on the same Multiboot guests, and
// prints medians and ratios:
//
//   - snapshot: wall time of a snapshot through the control socket and the
//     time the VM stayed paused, for a 256 MiB and a 2 GiB guest that keeps
//     writing 32 MiB (testguest test=memwrite) and an idle one (the probe
//     guest waiting in hlt). QEMU: stop, migrate to "exec:cat > FILE &&
//     sync FILE", cont (what savevm does, without the qcow2 disk savevm
//     needs).
//   - restore to first guest instruction: from exec of `govmm restore` to
//     its "entering the guest" log line (vCPU 0 about to enter the guest;
//     the line also gives the part from the start of main). QEMU: from exec
//     of qemu -incoming "exec:cat FILE" to its RESUME event.
//   - live migration over a Unix socket: total time, downtime and bytes
//     sent, idle and memwrite guests, govmm on KVM and on mshvsim; QEMU
//     between two processes (migrate unix:PATH, bandwidth limit lifted).
//
// Every VM runs alone (one at a time on this small machine); the order of
// the VMMs alternates from one configuration to the next. A memwrite
// guest verifies every page at the end of each snapshot session, after
// one restore of each size and after its chain of migrations (exit
// status 33), so a fast but wrong path fails the benchmark.
//
// Usage: go run ./bench/snapbench [-runs 7] [-no-qemu] [-no-mshv]
package main

import (
	"flag"
	"fmt"
	"govmm/bench/internal/host"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"govmm/api"
)

// Columns of the report.
const (
	colKVM  = "govmm-kvm"
	colMSHV = "govmm-mshvsim"
	colQEMU = "qemu-kvm"
)

// guest is a workload the benchmark runs on every VMM.
type guest struct {
	name    string // "memwrite" or "idle"
	kernel  string
	cmdline string
}

func (g guest) writes() bool { return g.name == "memwrite" }

type bench struct {
	tmp, govmm, qemu string
	runs             int
	cols             []string
	res              map[string]map[string][]float64 // row -> column -> samples
	guests           map[string]guest
	snaps            map[string]string // column/size -> snapshot dir or file (memwrite)
}

func main() {
	runs := flag.Int("runs", 7, "runs of each measurement (medians are reported)")
	noQEMU := flag.Bool("no-qemu", false, "leave QEMU out")
	noMSHV := flag.Bool("no-mshv", false, "leave govmm on mshvsim out")
	nestedFlag := flag.Bool("nested", false, "run inside a nested-KVM VM even where /dev/kvm exists")
	prebuilt := flag.String("prebuilt", "", "use the govmm binary in DIR (how the run inside the nested VM gets it)")
	flag.Parse()
	err := run(*runs, *noQEMU, *noMSHV, *nestedFlag, *prebuilt)
	killAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapbench:", err)
		os.Exit(1)
	}
}

func run(runs int, noQEMU, noMSHV, forceNested bool, prebuilt string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	tmp, err := os.MkdirTemp("", "govmm-snapbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{tmp: tmp, runs: runs, res: map[string]map[string][]float64{}, snaps: map[string]string{},
		govmm: filepath.Join(tmp, "govmm"), cols: []string{colKVM}}
	if prebuilt != "" {
		b.govmm = filepath.Join(prebuilt, "govmm")
	} else {
		c := exec.Command("go", "build", "-o", b.govmm, "./cmd/govmm")
		c.Dir = root
		c.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the README builds it
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("build govmm: %v\n%s", err, out)
		}
		if host.Nested(forceNested) {
			args := []string{"-runs", fmt.Sprint(runs), "-prebuilt", tmp}
			if noQEMU {
				args = append(args, "-no-qemu")
			}
			if noMSHV {
				args = append(args, "-no-mshv")
			}
			// 2 GiB guests, their snapshots in L1's RAM-backed /tmp, and QEMU.
			return host.RunInL1(args, []string{tmp, filepath.Join(root, "guests", "bin")}, !noQEMU, 8192)
		}
	}
	if !noMSHV {
		b.cols = append(b.cols, colMSHV)
	}
	if !noQEMU {
		if b.qemu, err = host.EnsureQEMU(); err != nil {
			return err
		}
		b.cols = append(b.cols, colQEMU)
	}
	bin := filepath.Join(root, "guests", "bin")
	b.guests = map[string]guest{
		"memwrite": {"memwrite", filepath.Join(bin, "testguest.elf"), "test=memwrite mb=32"},
		"idle":     {"idle", filepath.Join(bin, "probe.elf"), "probe.mode=report probe.wait=86400000 probe.smp=0"},
	}
	command := strings.TrimSpace("go run ./bench/snapbench " + strings.Join(os.Args[1:], " "))
	fmt.Printf("govmm snapshot/restore/migration benchmark: %d runs each, on %s\n", runs, host.Substrate())
	begin := time.Now()

	// Snapshots (the memwrite snapshots are kept for the restores).
	order := 0
	for _, size := range []string{"256M", "2G"} {
		for _, g := range []string{"memwrite", "idle"} {
			for _, col := range alternate(b.cols, order) {
				progress("snapshot %s %s on %s", g, size, col)
				if err := b.snapshotSession(col, b.guests[g], size); err != nil {
					return fmt.Errorf("snapshot %s %s on %s: %w", g, size, col, err)
				}
			}
			order++
		}
	}
	// Restores, pair by pair in alternating order.
	for r := 0; r < runs; r++ {
		for _, size := range []string{"256M", "2G"} {
			for _, col := range alternate(b.cols, r) {
				progress("restore %s on %s, run %d/%d", size, col, r+1, runs)
				if err := b.restoreOnce(col, size, r == runs-1); err != nil {
					return fmt.Errorf("restore %s on %s: %w", size, col, err)
				}
			}
		}
	}
	// Live migration chains: each destination is the next source.
	for i, g := range []string{"idle", "memwrite"} {
		for _, col := range alternate(b.cols, i) {
			progress("migrate %s on %s", g, col)
			if err := b.migrateChain(col, b.guests[g], "256M"); err != nil {
				return fmt.Errorf("migrate %s on %s: %w", g, col, err)
			}
		}
	}
	b.report(command, time.Since(begin))
	return nil
}

func alternate(cols []string, i int) []string {
	if i%2 == 0 {
		return cols
	}
	out := make([]string, len(cols))
	for k := range cols {
		out[len(cols)-1-k] = cols[k]
	}
	return out
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "snapbench: "+format+"\n", args...)
}

func (b *bench) add(row, col string, v float64) {
	if b.res[row] == nil {
		b.res[row] = map[string][]float64{}
	}
	b.res[row][col] = append(b.res[row][col], v)
}

func (b *bench) accelFlags(col string) []string {
	if col == colMSHV {
		return []string{"--accel=mshv", "--mshv-device=sim"}
	}
	return []string{"--accel=kvm"}
}

// qemuArgs is the QEMU command line for g with size of RAM, its QMP
// monitor connecting to the benchmark at qmpPath.
func (b *bench) qemuArgs(g guest, size, qmpPath string, extra ...string) []string {
	mb := strings.TrimSuffix(size, "M")
	if strings.HasSuffix(size, "G") {
		n, _ := strconv.Atoi(strings.TrimSuffix(size, "G"))
		mb = strconv.Itoa(n << 10)
	}
	args := []string{b.qemu, "-accel", "kvm", "-M", "pc", "-m", mb, "-nodefaults", "-display", "none",
		"-serial", "stdio", "-no-reboot", "-kernel", g.kernel, "-append", g.cmdline,
		"-device", "isa-debug-exit,iobase=0xf4,iosize=4",
		"-chardev", "socket,id=qmp,path=" + qmpPath, "-mon", "chardev=qmp,mode=control",
		// A snapshot is taken stopped; without the run state in the
		// stream, the restoring QEMU starts the guest as soon as it
		// has loaded it (as govmm restore does).
		"-global", "migration.store-global-state=off"}
	return append(args, extra...)
}

// vmSession is one running VM of either kind.
type vmSession struct {
	p   *proc
	api string // govmm control socket
	q   *qmp   // QEMU monitor
}

// startVM boots g and waits until it is at work (memwrite) or idle.
func (b *bench) startVM(col string, g guest, size string) (*vmSession, error) {
	s := &vmSession{}
	var err error
	if col == colQEMU {
		qp := filepath.Join(b.tmp, "boot-qmp.sock")
		s.p, s.q, err = b.startQEMU(b.qemuArgs(g, size, qp), qp)
		if err != nil {
			return nil, err
		}
	} else {
		s.api = filepath.Join(b.tmp, "boot-api.sock")
		args := append([]string{b.govmm, "run"}, b.accelFlags(col)...)
		args = append(args, "--memory", size, "--kernel", g.kernel, "--cmdline", g.cmdline,
			"--api-socket", s.api, "--serial", "stdio")
		if s.p, err = spawn(args); err != nil {
			return nil, err
		}
		if err := waitPath(s.p, s.api); err != nil {
			return nil, err
		}
	}
	if g.writes() {
		if _, err := s.p.waitLine("memwrite: running", 2*time.Minute); err != nil {
			return nil, err
		}
		time.Sleep(300 * time.Millisecond) // let it dirty its working set
		return s, nil
	}
	return s, waitIdle(s.p, 2*time.Minute)
}

// finish ends a session: a memwrite guest is asked to verify every page
// and must exit with status 33; an idle one is stopped.
func (s *vmSession) finish(g guest) error {
	if !g.writes() {
		if s.q != nil {
			s.q.execute("quit", nil)
		}
		s.p.kill()
		return nil
	}
	return verify(s.p)
}

func verify(p *proc) error {
	if _, err := io.WriteString(p.stdin, "v"); err != nil {
		return fmt.Errorf("ask the guest to verify: %w", err)
	}
	code, err := p.wait(2 * time.Minute)
	if err != nil {
		return err
	}
	if code != 33 || !strings.Contains(p.output(), "bad=0") {
		return fmt.Errorf("memwrite guest failed its check: exit %d, want 33 and bad=0\n%s", code, p.output())
	}
	return nil
}

func (b *bench) snapshotSession(col string, g guest, size string) error {
	s, err := b.startVM(col, g, size)
	if err != nil {
		return err
	}
	defer s.p.kill()
	key := fmt.Sprintf("%s %s", g.name, size)
	dir := filepath.Join(b.tmp, fmt.Sprintf("snap-%s-%s-%s", col, g.name, size))
	for r := 0; r < b.runs; r++ {
		if r > 0 {
			time.Sleep(200 * time.Millisecond) // the guest runs (and writes) between snapshots
		}
		if col == colQEMU {
			wall, err := s.q.saveToFile(dir)
			if err != nil {
				return err
			}
			b.add("snap wall "+key, col, ms(wall))
			b.add("snap pause "+key, col, ms(wall)) // stopped throughout
			if fi, err := os.Stat(dir); err == nil {
				b.add("snap disk "+key, col, float64(fi.Sys().(*syscall.Stat_t).Blocks*512)/(1<<20))
			}
			continue
		}
		c, err := api.Dial(s.api)
		if err != nil {
			return err
		}
		t0 := time.Now()
		res, err := c.Snapshot(api.SnapshotRequest{Dir: dir}, nil)
		wall := time.Since(t0)
		if err != nil {
			return err
		}
		b.add("snap wall "+key, col, ms(wall))
		b.add("snap pause "+key, col, res.PauseMS)
		if fi, err := os.Stat(filepath.Join(dir, "memory")); err == nil {
			b.add("snap disk "+key, col, float64(fi.Sys().(*syscall.Stat_t).Blocks*512)/(1<<20))
		}
	}
	if g.writes() {
		b.snaps[col+"/"+size] = dir
	}
	return s.finish(g)
}

// restoreOnce restores the memwrite snapshot of size and measures the
// time to the first guest instruction; with check, the restored guest
// must then verify every page.
func (b *bench) restoreOnce(col, size string, check bool) error {
	snap := b.snaps[col+"/"+size]
	g := b.guests["memwrite"]
	var p *proc
	var err error
	if col == colQEMU {
		qp := filepath.Join(b.tmp, "restore-qmp.sock")
		var q *qmp
		p, q, err = b.startQEMU(b.qemuArgs(g, size, qp, "-incoming", "exec:cat "+snap), qp)
		if err != nil {
			return err
		}
		defer p.kill()
		ev, err := q.waitEvent("RESUME", nil, time.Minute)
		if err != nil {
			return err
		}
		b.add("restore ext "+size, col, ms(ev.recv.Sub(p.start)))
	} else {
		args := append([]string{b.govmm, "restore"}, b.accelFlags(col)...)
		args = append(args, "--snapshot", snap, "--log-level", "info", "--serial", "stdio")
		if p, err = spawn(args); err != nil {
			return err
		}
		defer p.kill()
		l, err := p.waitLine(`msg="entering the guest"`, time.Minute)
		if err != nil {
			return err
		}
		b.add("restore ext "+size, col, ms(l.t.Sub(p.start)))
		v, err := logValue(l.s, "since_main_ms")
		if err != nil {
			return err
		}
		b.add("restore main "+size, col, v)
	}
	if check {
		return verify(p)
	}
	return nil
}

// migrateChain boots g once and live-migrates it runs times, each
// destination becoming the next source; a memwrite guest then verifies
// every page.
func (b *bench) migrateChain(col string, g guest, size string) error {
	s, err := b.startVM(col, g, size)
	if err != nil {
		return err
	}
	defer func() { s.p.kill() }()
	key := fmt.Sprintf("%s %s", g.name, size)
	for r := 0; r < b.runs; r++ {
		time.Sleep(200 * time.Millisecond)
		// Names unique per chain: a socket file may outlive its process.
		mig := filepath.Join(b.tmp, fmt.Sprintf("mig-%s-%s-%d.sock", col, g.name, r))
		if col == colQEMU {
			qp := filepath.Join(b.tmp, fmt.Sprintf("qmp-%s-%d.sock", g.name, r))
			dp, dq, err := b.startQEMU(b.qemuArgs(g, size, qp, "-incoming", "unix:"+mig), qp)
			if err != nil {
				return err
			}
			d := &vmSession{p: dp, q: dq}
			// QEMU answers its monitor once its main loop runs, after
			// it set up the incoming socket.
			if _, err := dq.execute("query-status", nil); err != nil {
				d.p.kill()
				return err
			}
			st, err := s.q.migrate("unix:" + mig)
			if err != nil {
				d.p.kill()
				return err
			}
			b.add("mig total "+key, col, st.TotalMS)
			b.add("mig down "+key, col, st.DowntimeMS)
			b.add("mig bytes "+key, col, float64(st.Bytes)/(1<<20))
			s.q.execute("quit", nil)
			if _, err := s.p.wait(time.Minute); err != nil {
				return err
			}
			if _, err := d.q.waitEvent("RESUME", nil, time.Minute); err != nil {
				d.p.kill()
				return fmt.Errorf("destination did not start: %w", err)
			}
			s = d
			continue
		}
		dapi := filepath.Join(b.tmp, fmt.Sprintf("api-%s-%s-%d.sock", col, g.name, r))
		args := append([]string{b.govmm, "migrate", "receive"}, b.accelFlags(col)...)
		args = append(args, "--listen", "unix:"+mig, "--api-socket", dapi, "--serial", "stdio", "--log-level", "info")
		dp, err := spawn(args)
		if err != nil {
			return err
		}
		if err := waitPath(dp, mig); err != nil {
			dp.kill()
			return err
		}
		c, err := api.Dial(s.api)
		if err != nil {
			dp.kill()
			return err
		}
		// The socket file appears at bind, a moment before listen:
		// a refused attempt leaves the source running, so try again.
		res, err := c.Migrate(api.MigrateRequest{To: "unix:" + mig}, nil)
		for i := 0; err != nil && strings.Contains(err.Error(), "connection refused") && i < 100; i++ {
			time.Sleep(2 * time.Millisecond)
			res, err = c.Migrate(api.MigrateRequest{To: "unix:" + mig}, nil)
		}
		if err != nil {
			dp.kill()
			return err
		}
		b.add("mig total "+key, col, res.TotalMS)
		b.add("mig down "+key, col, res.DowntimeMS)
		b.add("mig bytes "+key, col, float64(res.Bytes)/(1<<20))
		if code, err := s.p.wait(time.Minute); err != nil || code != 0 {
			dp.kill()
			return fmt.Errorf("source after migrating: exit %d, %v\n%s", code, err, s.p.output())
		}
		if _, err := dp.waitLine(`msg="entering the guest"`, time.Minute); err != nil {
			dp.kill()
			return err
		}
		if err := waitPath(dp, dapi); err != nil {
			dp.kill()
			return err
		}
		s = &vmSession{p: dp, api: dapi}
	}
	return s.finish(g)
}

// logValue extracts key=value from a log/slog text line.
func logValue(line, key string) (float64, error) {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %q", key, line)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// report prints the table.
func (b *bench) report(command string, took time.Duration) {
	type row struct{ key, label, unit string }
	var rows []row
	for _, size := range []string{"256M", "2G"} {
		sz := strings.Replace(strings.Replace(size, "M", " MiB", 1), "G", " GiB", 1)
		for _, g := range []string{"memwrite", "idle"} {
			k := g + " " + size
			rows = append(rows,
				row{"snap wall " + k, fmt.Sprintf("snapshot %s %s: wall", sz, g), "ms"},
				row{"snap pause " + k, "  of it VM paused", "ms"},
				row{"snap disk " + k, "  file size on disk", "Mi"})
		}
	}
	for _, size := range []string{"256M", "2G"} {
		sz := strings.Replace(strings.Replace(size, "M", " MiB", 1), "G", " GiB", 1)
		rows = append(rows,
			row{"restore ext " + size, fmt.Sprintf("restore %s to first insn (exec)", sz), "ms"},
			row{"restore main " + size, "  of it from the start of main", "ms"})
	}
	for _, g := range []string{"idle", "memwrite"} {
		k := g + " 256M"
		rows = append(rows,
			row{"mig total " + k, fmt.Sprintf("live migration 256 MiB %s: total", g), "ms"},
			row{"mig down " + k, "  downtime", "ms"},
			row{"mig bytes " + k, "  sent", "Mi"})
	}
	med := func(key, col string) (float64, bool) {
		s := b.res[key][col]
		if len(s) == 0 {
			return 0, false
		}
		s = append([]float64(nil), s...)
		sort.Float64s(s)
		return s[len(s)/2], true
	}
	fmt.Println()
	fmt.Printf("%-40s", "metric (median)")
	for _, c := range b.cols {
		fmt.Printf("%15s", c)
	}
	hasQEMU := len(b.cols) > 0 && b.cols[len(b.cols)-1] == colQEMU
	if hasQEMU {
		fmt.Printf("%12s", "kvm/qemu")
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("%-40s", r.label)
		for _, c := range b.cols {
			if v, ok := med(r.key, c); ok {
				fmt.Printf("%13.2f%-2s", v, r.unit)
			} else {
				fmt.Printf("%15s", "-")
			}
		}
		if hasQEMU {
			g, ok1 := med(r.key, colKVM)
			q, ok2 := med(r.key, colQEMU)
			if ok1 && ok2 && q > 0 {
				fmt.Printf("%11.2fx", g/q)
			} else {
				fmt.Printf("%12s", "-")
			}
		}
		fmt.Println()
	}
	fmt.Println()
	fmt.Println("snapshot: govmm through its control socket (pause, save state and sparse memory file, resume, fsync);")
	fmt.Println("  qemu: stop + migrate \"exec:cat > FILE && sync FILE\" + cont over QMP, paused throughout.")
	fmt.Println("restore: exec to vCPU 0 entering the guest (govmm's log line), exec to the RESUME event (qemu).")
	fmt.Println("migration: unix socket; govmm downtime runs from pause to the destination's acknowledgement,")
	fmt.Println("  qemu's (query-migrate) ends on the source; qemu max-bandwidth lifted to 10 GiB/s, downtime-limit default;")
	fmt.Println("  qemu bytes are ram.transferred.")
	fmt.Println("target: restore of 256 MiB < 10 ms, independent of guest size")
	fmt.Printf("command: %s   (took %s)\n", command, took.Round(time.Second))
}
