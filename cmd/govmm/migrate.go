package main

// The source side of a live migration (`govmm migrate send`), shared by
// the x86 and arm64 builds: it asks the VM's control socket to migrate,
// and each build's controlTarget.Migrate sends its own machine.

import (
	"flag"
	"fmt"
	"io"
	"log/slog"

	"govmm/api"
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
		Iterations: st.Rounds, Verified: st.Verified}
	log.Info("migrated", "to", req.To, "total_ms", res.TotalMS, "downtime_ms", res.DowntimeMS, "pages", res.Pages,
		"rounds", res.Iterations, "verified", res.Verified)
	return res, nil
}
