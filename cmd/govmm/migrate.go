package main

// The source side of a live migration (`govmm migrate send`), shared by
// the x86 and arm64 builds: it asks the VM's control socket to migrate,
// and each build's controlTarget.Migrate sends its own machine.

import (
	"flag"
	"fmt"
	"io"

	"govmm/api"
	"govmm/migrate"
)

func cmdMigrateSend(args []string, stdout, stderr io.Writer) error {
	var to string
	c, _, err := parseControl("migrate send", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&to, "to", "", "destination: unix:PATH or tcp:HOST:PORT (a `govmm migrate receive`)")
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
	res, err := c.Migrate(apiMigrate(to), pb.update)
	pb.finish()
	if err != nil {
		return controlError("migrate", err)
	}
	fmt.Fprintf(stdout, "migrated: total %.1f ms, downtime %.1f ms, %d bytes sent (%d pages, %d rounds)\n",
		res.TotalMS, res.DowntimeMS, res.Bytes, res.Pages, res.Iterations)
	return nil
}

func apiMigrate(to string) api.MigrateRequest { return api.MigrateRequest{To: to} }
