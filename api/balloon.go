package api

// The "balloon" operation: set the virtio balloon's target (`govmm balloon
// --size SIZE`), how much of its RAM the guest should give back to the
// host. Info carries the balloon's target and the guest's actual.

// BalloonTarget is a Target with a balloon to steer. A Target without it
// answers the "balloon" operation with an error.
type BalloonTarget interface {
	SetBalloon(req BalloonRequest) (BalloonInfo, error)
}

// BalloonRequest sets the balloon's target in bytes; 0 gives the guest
// all its RAM back.
type BalloonRequest struct {
	TargetBytes uint64 `json:"target_bytes"`
}

// BalloonInfo is the balloon as the VMM sees it.
type BalloonInfo struct {
	// TargetBytes is the host's target (num_pages), ActualBytes what the
	// guest's driver reports its balloon holds (actual).
	TargetBytes uint64 `json:"target_bytes"`
	ActualBytes uint64 `json:"actual_bytes"`
	// InflatedBytes and DeflatedBytes count what the driver put into and
	// took out of the balloon since the VM started here; ReleasedBytes
	// what of the inflated memory was given back to the host.
	InflatedBytes uint64 `json:"inflated_bytes"`
	DeflatedBytes uint64 `json:"deflated_bytes"`
	ReleasedBytes uint64 `json:"released_bytes"`
	// FreePageReporting says whether the device offers free page
	// reporting; ReportedBytes counts the free memory the guest reported
	// and ReportReleasedBytes what of it was given back to the host.
	FreePageReporting   bool   `json:"free_page_reporting,omitempty"`
	ReportedBytes       uint64 `json:"reported_bytes,omitempty"`
	ReportReleasedBytes uint64 `json:"report_released_bytes,omitempty"`
	// DeflateOnOOM says whether the device offers deflate on OOM (the
	// guest may take pages back under memory pressure).
	DeflateOnOOM bool `json:"deflate_on_oom,omitempty"`
	// Statistics says whether the device offers memory statistics;
	// Stats are the guest's latest (by the names of
	// balloon.StatName: free_memory, total_memory, available_memory,
	// disk_caches, swap_in, ...; memory figures in bytes, the others
	// counts), StatsAgeMS how old they are. Info asks the guest for fresh
	// ones and waits up to a second.
	Statistics bool              `json:"statistics,omitempty"`
	Stats      map[string]uint64 `json:"stats,omitempty"`
	StatsAgeMS float64           `json:"stats_age_ms,omitempty"`
	// Kept says why inflated pages are not given back to the host (guest
	// RAM pinned by the hypervisor or by VFIO), when they are not.
	Kept string `json:"kept,omitempty"`
}

// SetBalloon sets the balloon's target.
func (c *Client) SetBalloon(req BalloonRequest) (BalloonInfo, error) {
	var res BalloonInfo
	return res, c.call(request{Op: "balloon", Balloon: &req}, nil, &res)
}
