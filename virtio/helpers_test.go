package virtio_test

import (
	"log/slog"

	"golang.org/x/sys/unix"

	"govmm/virtio/virtiotest"
)

func captureLog(w *virtiotest.SyncBuffer) func() {
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(w, nil)))
	return func() { slog.SetDefault(old) }
}

func writeFD(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
