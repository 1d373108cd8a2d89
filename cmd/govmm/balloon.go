//go:build !arm64

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"govmm/api"
	"govmm/virtio/balloon"
	"govmm/vm"
)

// balloonConfig adds to the virtio configuration why the balloon must
// keep inflated pages, where the host cannot take them back: the
// Microsoft Hypervisor pins a partition's RAM (MSHV_SET_GUEST_MEMORY), so
// a page the VMM dropped would stay mapped in the guest while the VMM saw
// a new one. mshvsim maps RAM through KVM, which does not pin.
func balloonConfig(c vm.VirtioConfig, accelName, mshvDev string) vm.VirtioConfig {
	if c.Balloon && accelName == "mshv" && mshvDev != "sim" {
		c.BalloonKeep = "the Microsoft Hypervisor pins guest RAM"
	}
	return c
}

// balloonInfo is the VM's balloon for the control socket, or nil. With
// statistics it first asks the guest for fresh ones (up to a second).
func balloonInfo(v *vm.VM) *api.BalloonInfo {
	i, ok := v.BalloonInfo()
	if !ok {
		return nil
	}
	if i.Stats != nil || i.Options.Stats {
		if v.RequestBalloonStats(time.Second) {
			i, _ = v.BalloonInfo()
		}
	}
	b := &api.BalloonInfo{
		TargetBytes: uint64(i.TargetPages) * balloon.PageSize, ActualBytes: uint64(i.ActualPages) * balloon.PageSize,
		InflatedBytes: i.Inflated * balloon.PageSize, DeflatedBytes: i.Deflated * balloon.PageSize,
		ReleasedBytes: i.Released * balloon.PageSize, Kept: i.KeepReason,
		FreePageReporting: i.Reporting, ReportedBytes: i.Reported * balloon.PageSize, ReportReleasedBytes: i.ReportReleased * balloon.PageSize,
		DeflateOnOOM: i.DeflateOnOOM, Statistics: i.Options.Stats,
	}
	if i.Stats != nil {
		b.Stats = make(map[string]uint64, len(i.Stats))
		for tag, val := range i.Stats {
			b.Stats[balloon.StatName(tag)] = val
		}
		b.StatsAgeMS = ms(time.Since(i.StatsAt))
	}
	return b
}

// SetBalloon serves the control socket's "balloon" operation.
func (t *controlTarget) SetBalloon(req api.BalloonRequest) (api.BalloonInfo, error) {
	if err := t.vm.SetBalloonTarget(req.TargetBytes); err != nil {
		return api.BalloonInfo{}, err
	}
	t.log.Info("balloon target set", "target_mib", req.TargetBytes>>20)
	return *balloonInfo(t.vm), nil
}

// cmdBalloon is `govmm balloon --api-socket PATH --size SIZE`.
func cmdBalloon(args []string, stdout, stderr io.Writer) error {
	var size string
	c, fs, err := parseControl("balloon", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&size, "size", "", "how much RAM the balloon takes from the guest, e.g. 256M (0 gives it all back)")
	})
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "balloon: unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	target, err := parseBalloonSize(size)
	if err != nil {
		return fail(exitUsage, "balloon: --size: %v", err)
	}
	res, err := c.SetBalloon(api.BalloonRequest{TargetBytes: target})
	if err != nil {
		if strings.Contains(err.Error(), "no balloon device") || strings.Contains(err.Error(), "more than the guest's") {
			return fail(exitUsage, "balloon: %v", err)
		}
		return controlError("balloon", err)
	}
	fmt.Fprintf(stdout, "balloon target %d MiB; the guest's balloon holds %d MiB now (it inflates or deflates at its own pace: govmm info shows it)\n",
		res.TargetBytes>>20, res.ActualBytes>>20)
	return nil
}

// parseBalloonSize is parseSize that also takes 0.
func parseBalloonSize(s string) (uint64, error) {
	switch strings.TrimSpace(s) {
	case "":
		return 0, errors.New("required (e.g. 256M, or 0)")
	case "0":
		return 0, nil
	}
	return parseSize(s)
}
