package virtio

// DirtyLogger is a Device whose backend writes guest memory outside the
// VMM (a kernel vhost device) and can log those writes for live
// migration, which merges them into the VMM's own dirty log: the
// accelerator's log holds only the vCPUs' writes, and the VMM's only
// what its own device code marks.
type DirtyLogger interface {
	// StartDirtyLog has the backend log its writes from now on;
	// SyncDirtyLog passes the pages logged since the last call to mark
	// (a GPA and a length in bytes) and clears them.
	StartDirtyLog(mark func(gpa, n uint64)) error
	SyncDirtyLog()
	StopDirtyLog() error
}

// StartDirtyLog starts the device's backend logging its writes into
// guest memory, if it has such a backend (DirtyLogger); mark receives
// them at each SyncDirtyLog.
func (t *PCI) StartDirtyLog(mark func(gpa, n uint64)) error {
	if l, ok := t.dev.(DirtyLogger); ok {
		return l.StartDirtyLog(mark)
	}
	return nil
}

// SyncDirtyLog hands what the backend logged since the last call to the
// mark StartDirtyLog was given. Called before every collection of the
// VMM's dirty log, and after Pause for the last one.
func (t *PCI) SyncDirtyLog() {
	if l, ok := t.dev.(DirtyLogger); ok {
		l.SyncDirtyLog()
	}
}

// StopDirtyLog stops the backend's logging.
func (t *PCI) StopDirtyLog() error {
	if l, ok := t.dev.(DirtyLogger); ok {
		return l.StopDirtyLog()
	}
	return nil
}
