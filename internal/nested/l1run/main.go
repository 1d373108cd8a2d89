// Command l1run runs one command inside a nested-KVM VM (L1), for
// developers and benchmarks: what the tests do through internal/kvmtest,
// by hand.
//
//	go run ./internal/nested/l1run [-files F,F] [-programs P,P] [-dir D] [-timeout 10m] -- CMD ARGS...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"govmm/internal/nested"
)

func main() {
	files := flag.String("files", "", "comma-separated host files or directories to copy into L1 (same paths)")
	programs := flag.String("programs", "", "comma-separated programs from PATH to copy into L1 with their libraries")
	dir := flag.String("dir", "", "working directory in L1 (default: the current directory, copied in)")
	timeout := flag.Duration("timeout", 30*time.Minute, "bound on the whole run")
	cpus := flag.Int("cpus", 2, "L1 vCPUs")
	mem := flag.Int("memory", 3072, "L1 RAM in MiB")
	linux := flag.String("linux", "", "another L1 kernel: an unpacked kernel package (e.g. ~/.cache/govmm/linux-mdev, from .ci/mdev-kernel)")
	modules := flag.String("modules", "", "comma-separated modules to load after KVM's: paths under the kernel's modules' kernel/ directory, or absolute")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: l1run [flags] -- CMD ARGS...")
		os.Exit(64)
	}
	cfg := nested.Config{
		Command:  flag.Args(),
		Dir:      *dir,
		Programs: split(*programs),
		Files:    split(*files),
		CPUs:     *cpus,
		MemoryMB: *mem,
		Timeout:  *timeout,
		Output:   os.Stdout,
		Linux:    *linux,
		Modules:  split(*modules),
	}
	if cfg.Dir == "" {
		wd, _ := os.Getwd()
		cfg.Dir = wd
		cfg.Files = append(cfg.Files, wd)
	}
	res, err := nested.Run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(70)
	}
	fmt.Fprintf(os.Stderr, "l1run: exit %d, L1 boot %v, wall %v\n", res.ExitCode, res.Boot.Round(time.Millisecond), res.Wall.Round(time.Millisecond))
	os.Exit(res.ExitCode)
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
