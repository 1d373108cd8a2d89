package main

// The source side of a live migration (`govmm migrate send`), shared by
// the x86 and arm64 builds: it asks the VM's control socket to migrate,
// and each build's controlTarget.Migrate sends its own machine.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"govmm/api"
	"govmm/memory"
	"govmm/migrate"
)

func cmdMigrateSend(args []string, stdout, stderr io.Writer) error {
	var to string
	var verify bool
	c, _, err := parseControl("migrate send", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&to, "to", "", "destination: unix:PATH or tcp:HOST:PORT (a `govmm migrate receive`)")
		fs.BoolVar(&verify, "verify", false, "after the last copy, send a checksum of every guest page; the destination starts the VM only if its copy matches (longer downtime)")
	})
	if err != nil {
		return err
	}
	if to == "" {
		return fail(exitUsage, "migrate send: --to is required")
	}
	if err := migrate.CheckAddr(to); err != nil {
		return fail(exitUsage, "migrate send: --to: %v", err)
	}
	pb := newProgressBar(stdout, "migrate")
	res, err := c.Migrate(api.MigrateRequest{To: to, Verify: verify}, pb.update)
	pb.finish()
	if err != nil {
		return controlError("migrate", err)
	}
	verified := ""
	if res.Verified {
		verified = ", every page verified"
	}
	if res.DeviceBytes > 0 {
		verified += fmt.Sprintf(", %d bytes of device state before the pause", res.DeviceBytes)
	}
	fmt.Fprintf(stdout, "migrated: total %.1f ms, downtime %.1f ms, %d bytes sent (%d pages, %d rounds%s)\n",
		res.TotalMS, res.DowntimeMS, res.Bytes, res.Pages, res.Iterations, verified)
	return nil
}

// migrateVM moves v to req.To (each build's controlTarget.Migrate). On
// success the caller ends its copy; on failure v keeps running.
func migrateVM(v migrate.VM, req api.MigrateRequest, progress func(done, total uint64), log *slog.Logger) (api.MigrateResult, error) {
	conn, err := migrate.Dial(req.To)
	if err != nil {
		return api.MigrateResult{}, fmt.Errorf("live migration not started, the VM keeps running here: %w", err)
	}
	defer conn.Close()
	st, err := migrate.SendWith(conn, v, migrate.SendOptions{Verify: req.Verify, Progress: progress})
	if err != nil {
		return api.MigrateResult{}, fmt.Errorf("live migration to %s failed, the VM keeps running here: %w", req.To, err)
	}
	res := api.MigrateResult{TotalMS: ms(st.Total), DowntimeMS: ms(st.Downtime), Bytes: st.Bytes, Pages: st.Pages,
		Iterations: st.Rounds, Verified: st.Verified, DeviceBytes: st.DeviceBytes}
	log.Info("migrated", "to", req.To, "total_ms", res.TotalMS, "downtime_ms", res.DowntimeMS, "pages", res.Pages,
		"rounds", res.Iterations, "verified", res.Verified, "device_pre_copy_bytes", res.DeviceBytes)
	return res, nil
}

// receivable is a machine built from a migration hello: x86's vm.VM or
// arm64's Machine.
type receivable interface {
	comparable
	// CheckVirtioDevices refuses a source whose virtio devices (its
	// hello's list) differ from this machine's.
	CheckVirtioDevices(source []string) error
	Close() error
}

// receiveVM accepts sources on ln until one's VM has arrived, for both
// builds' `migrate receive`. build decodes the hello's machine (refusing
// it with a *migrate.HelloError, e.g. a CPU this host cannot present) and
// builds the machine around the incoming memory as soon as the hello says
// what it is, so that only the last pages and the state remain for the
// source's pause; a machine with other virtio devices than the source's
// is refused here, before any page moves. A peer whose hello this
// receiver refuses (no hello, another protocol or architecture, memory
// size or vCPU count, a CPU this host cannot present, other virtio
// devices) is logged and the receiver keeps waiting: nothing was built
// for it, and its source hears why. A failure after an accepted hello
// ends the receiver (the machine is closed); its source resumes the VM.
func receiveVM[M receivable](ln net.Listener, listen string, opts migrate.ReceiveOptions,
	build func(migrate.Hello) (M, *memory.Memory, error), log *slog.Logger, stderr io.Writer) (M, *migrate.Incoming, net.Conn, error) {
	var machine, none M
	prepare := func(h migrate.Hello) (*memory.Memory, error) {
		m, mem, err := build(h)
		if err != nil {
			return nil, err
		}
		if err := m.CheckVirtioDevices(h.Devices); err != nil {
			m.Close()
			return nil, &migrate.HelloError{Err: err}
		}
		machine = m
		return mem, nil
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return none, nil, nil, fail(exitInternal, "migrate receive: %v", err)
		}
		in, err := migrate.ReceiveWith(conn, opts, prepare)
		var he *migrate.HelloError
		if errors.As(err, &he) {
			log.Warn("migration: refused a peer, still listening", "listen", listen, "remote", conn.RemoteAddr().String(), "err", err)
			fmt.Fprintf(stderr, "govmm: migrate receive: refused a peer: %v (still listening on %s)\n", err, listen)
			conn.Close()
			continue
		}
		if err != nil {
			conn.Close()
			if machine != none {
				machine.Close()
			}
			return none, nil, nil, fail(exitInternal, "migrate receive: %v (nothing was started)", err)
		}
		return machine, in, conn, nil
	}
}

// confirmVM applies the received state with apply and tells the source
// the outcome; the VM may start only when it returns nil.
func confirmVM(in *migrate.Incoming, apply func() error) error {
	if err := apply(); err != nil {
		in.Ack(err)
		return fail(exitInternal, "migrate receive: %v (nothing was started)", err)
	}
	if err := in.Ack(nil); err != nil {
		// The source did not hear us: it resumes the VM there, so this
		// copy must not run.
		return fail(exitInternal, "migrate receive: confirm to the source: %v (nothing was started: the source did not hear the confirmation, so the VM stays there)", err)
	}
	return nil
}

// checkListen checks migrate receive's --listen address (both builds)
// before anything is opened.
func checkListen(listen string) error {
	if err := migrate.CheckAddr(listen); err != nil {
		return fail(exitUsage, "migrate receive: --listen: %v", err)
	}
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		return checkSocketPath("--listen", path)
	}
	return nil
}
