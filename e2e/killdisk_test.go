package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The disk TestKilledDuringDiskIO's guest writes: killWriters writers,
// each cycling over killBlocks blocks of its own, killBlock bytes each.
const (
	killWriters = 2
	killBlocks  = 8
	killBlock   = 256 << 10
	killDisk    = killWriters * killBlocks * killBlock
	// Every 512-byte sector the guest writes is one 32-byte line repeated
	// 16 times; the line names the write (writer-local sequence number),
	// the disk block and the sector within it.
	killLine   = 32
	killSector = 512
)

// killLineFormat is one line of a sector (31 bytes and a newline), the
// format the guest's awk and the host's check share.
const killLineFormat = "kd s=%08d b=%04d c=%03d.....\n"

// killDiskInit is the guest's /init. Writer w (0 and 1, running at once)
// writes its sequence numbers 1, 2, ... to its blocks in turn, block
// w*8+(seq-1)%8, each as 64 direct 4 KiB writes followed by an fsync of
// the device (a virtio-blk FLUSH), and prints "killdisk: w flushed seq"
// once the fsync returned. With killdisk=verify on the command line it
// instead prints the SHA-256 of the whole disk and powers off.
const killDiskInit = `#!/bin/busybox sh
` + virtioInitHead + `$B mkdir -p /tmp
$B mount -t tmpfs tmp /tmp
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
if $B grep -q killdisk=verify /proc/cmdline; then
	echo "killdisk: sum $($B dd if=/dev/vda bs=64k 2>/dev/null | $B sha256sum)"
	$B poweroff -f
fi
writer() {
	w=$1
	s=1
	while true; do
		b=$((w*8 + (s-1)%8))
		$B awk -v s=$s -v b=$b 'BEGIN{for(c=0;c<512;c++){l=sprintf("kd s=%08d b=%04d c=%03d.....",s,b,c); for(k=0;k<16;k++) print l}}' > /tmp/w$w
		echo "killdisk: $w writing $s"
		if $B dd if=/tmp/w$w of=/dev/vda bs=4k seek=$((b*64)) oflag=direct conv=fsync,notrunc 2>/dev/null; then
			echo "killdisk: $w flushed $s"
		else
			echo "killdisk: $w write failed $s"
		fi
		s=$((s+1))
	done
}
writer 0 &
writer 1 &
wait
`

// TestKilledDuringDiskIO kills the VMM with SIGKILL while a Linux guest
// writes to its virtio-blk disk, then checks what a user may rely on.
//
// What govmm promises (see virtio/blk): a write request completes only
// after its data has been handed to the image file with pwrite, and a
// FLUSH completes only after fdatasync. A SIGKILL of the VMM does not
// take the host's page cache with it, so after one, every write the guest
// saw complete is in the image, and certainly every write it saw flushed
// (flushes matter for a host crash, which this test cannot stage).
// Requests still in flight may be applied in part, but never inside a
// 512-byte sector: Linux's block layer assumes the logical block is
// written whole, and govmm writes each guest buffer, which Linux aligns
// to 512 bytes, with one pwrite, which the host's kernel copies into its
// page cache without stopping for a signal inside a sector. So:
//
//   - every block holds, sector by sector, the last write the guest saw
//     flushed to it, or the one write that followed it (the unflushed
//     tail, in part or whole);
//   - no sector holds bytes of two writes, or bytes that no write wrote;
//   - a fresh VMM boots the guest with the image again and the guest reads
//     exactly what the host sees in the file.
func TestKilledDuringDiskIO(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := virtioInitrd(t, killDiskInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { killedDuringDiskIO(t, acc, kernel, initrd) })
	}
}

func killedDuringDiskIO(t *testing.T, acc []string, kernel, initrd string) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vda.img")
	disk := "path=" + img + ",serial=killdisk"
	boots := 0
	boot := func(cmdline, until string) *proc {
		// A control socket per boot (a killed VMM leaves its socket
		// behind): a stalled boot shows its vCPUs (proc.vcpus).
		boots++
		sock := filepath.Join(dir, fmt.Sprintf("api%d.sock", boots))
		return bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
			"--memory=512M", "--disk", disk, "--api-socket", sock, "--cmdline", "console=ttyS0 quiet panic=-1 "+cmdline), until, nil)
	}

	// Writer 0 has cycled over all its blocks and begun overwriting
	// them; both writers keep requests in flight when the kill lands.
	if err := os.WriteFile(img, make([]byte, killDisk), 0o644); err != nil {
		t.Fatal(err)
	}
	const killAt = killBlocks + 4
	p := boot("", fmt.Sprintf("killdisk: 0 writing %d", killAt))
	// Aim the kill into writer 0's write killAt: once its first 4 KiB
	// request is in the image, 63 more are to come, one at a time.
	first := (killAt - 1) % killBlocks * killBlock
	if err := waitImage(img, first, killSectorBytes(killAt, (killAt-1)%killBlocks, 0), p.done); err != nil {
		t.Fatalf("write %d of writer 0: %v\n%s", killAt, err, lastLines(p.output(), 30))
	}
	p.cmd.Process.Kill()
	<-p.done
	out := p.output()
	if strings.Contains(out, "write failed") || strings.Contains(out, "insmod") && strings.Contains(out, "failed") {
		t.Fatalf("the guest could not write its disk:\n%s", out)
	}
	image, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(image) != killDisk {
		t.Fatalf("the image is %d bytes after the kill, want %d", len(image), killDisk)
	}
	var flushed [killWriters]int
	for w := range flushed {
		flushed[w] = lastSeq(out, w, "flushed")
		if flushed[w] == 0 {
			t.Fatalf("writer %d flushed nothing before the kill:\n%s", w, out)
		}
	}
	tail, problems := checkKilledImage(image, flushed)
	for _, pr := range problems {
		t.Error(pr)
	}
	if len(problems) > 0 {
		t.Fatalf("the image after the kill breaks what virtio-blk promises (writers had flushed %v):\n%s", flushed, lastLines(out, 30))
	}
	for w, tl := range tail {
		t.Logf("writer %d: flushed up to %d (last writing %d); the unflushed tail on the image: %s", w, flushed[w], lastSeq(out, w, "writing"), tl)
	}

	// A fresh VMM boots with the image and the guest reads what the
	// host sees.
	v := boot("killdisk=verify", "killdisk: sum ")
	if code := v.exit(time.Minute); code != 0 {
		t.Fatalf("the guest booted on the image after the kill: exit %d\n%s", code, v.output())
	}
	if got, want := guestValue(v.output(), "killdisk", "sum"), sum(image); got != want {
		t.Fatalf("a fresh VMM's guest read the image with SHA-256 %q, the file has %s\n%s", got, want, v.output())
	}
	if after, err := os.ReadFile(img); err != nil || !bytes.Equal(after, image) {
		t.Fatalf("the image changed under a guest that only read it (%v)", err)
	}
}

// waitImage polls the file at path until it holds want at offset off.
// It fails when done is closed first (the VMM ended) or after a few
// minutes (the guest stopped writing: it prints its progress, so the
// error comes with its last lines).
func waitImage(path string, off int, want []byte, done chan struct{}) error {
	got := make([]byte, len(want))
	end := time.Now().Add(5 * time.Minute)
	for time.Now().Before(end) {
		if f, err := os.Open(path); err == nil {
			_, err = f.ReadAt(got, int64(off))
			f.Close()
			if err == nil && bytes.Equal(got, want) {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("the VMM ended before the write reached byte %#x of the image", off)
		case <-time.After(time.Millisecond):
		}
	}
	return fmt.Errorf("not at byte %#x of the image after 5 minutes", off)
}

// lastSeq is the highest sequence number writer w printed as "killdisk:
// w what SEQ" (0 if none).
func lastSeq(console string, w int, what string) int {
	last := 0
	re := regexp.MustCompile(fmt.Sprintf(`killdisk: %d %s (\d+)`, w, what))
	for _, m := range re.FindAllStringSubmatch(console, -1) {
		if n, _ := strconv.Atoi(m[1]); n > last {
			last = n
		}
	}
	return last
}

// killSectorBytes is the sector of write seq to disk block b, sector c.
func killSectorBytes(seq, b, c int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, killLineFormat, seq, b, c), killSector/killLine)
}

// checkKilledImage checks the image against the writers' flushed
// sequence numbers (see TestKilledDuringDiskIO) and returns, per writer,
// a description of the unflushed writes found on it, and the problems.
func checkKilledImage(image []byte, flushed [killWriters]int) (tail [killWriters]string, problems []string) {
	zero := make([]byte, killSector)
	for w := range killWriters {
		found := map[int]int{} // unflushed seq -> sectors of it on the image
		for local := range killBlocks {
			b := w*killBlocks + local
			// The last flushed write to block b: seq-1 = local mod 8.
			want := 0
			for s := local + 1; s <= flushed[w]; s += killBlocks {
				want = s
			}
			for c := range killBlock / killSector {
				off := b*killBlock + c*killSector
				sec := image[off : off+killSector]
				if bytes.Equal(sec, zero) {
					if want != 0 {
						problems = append(problems, fmt.Sprintf("block %d sector %d (byte %#x) is zeros; write %d of writer %d, flushed, is lost", b, c, off, want, w))
					}
					continue
				}
				var seq, gb, gc int
				if _, err := fmt.Sscanf(string(sec[:killLine]), "kd s=%d b=%d c=%d", &seq, &gb, &gc); err != nil || !bytes.Equal(sec, killSectorBytes(seq, gb, gc)) {
					problems = append(problems, fmt.Sprintf("block %d sector %d (byte %#x) is torn or foreign: %q", b, c, off, trimSector(sec)))
					continue
				}
				switch {
				case gb != b || gc != c:
					problems = append(problems, fmt.Sprintf("block %d sector %d (byte %#x) holds block %d sector %d of write %d", b, c, off, gb, gc, seq))
				case seq == want:
				case seq > flushed[w] && (seq-1)%killBlocks == local:
					found[seq]++
				default:
					problems = append(problems, fmt.Sprintf("block %d sector %d (byte %#x) holds write %d, want %d (the last flushed) or a later one", b, c, off, seq, want))
				}
			}
		}
		var parts []string
		for seq, n := range found {
			parts = append(parts, fmt.Sprintf("write %d: %d of %d sectors", seq, n, killBlock/killSector))
		}
		if len(parts) == 0 {
			parts = append(parts, "none")
		}
		tail[w] = strings.Join(parts, ", ")
	}
	return tail, problems
}

// trimSector shows the start of a bad sector and where it stops being
// uniform.
func trimSector(sec []byte) string {
	for i := killLine; i < len(sec); i += killLine {
		if !bytes.Equal(sec[i:i+killLine], sec[:killLine]) {
			return fmt.Sprintf("%s... differs from byte %d: %s", sec[:killLine], i, sec[i:i+killLine])
		}
	}
	return string(sec[:killLine])
}

// TestKilledImageCheck shows checkKilledImage, which judges the image
// TestKilledDuringDiskIO's kill leaves, accepting what the promise allows
// and naming each way of breaking it. It needs no KVM.
func TestKilledImageCheck(t *testing.T) {
	// Writer 0 flushed write 10 (block 1, after write 2), writer 1 write
	// 3 (block 10); nothing else was flushed.
	flushed := [killWriters]int{10, 3}
	put := func(img []byte, seq, b, c int) {
		copy(img[b*killBlock+c*killSector:], killSectorBytes(seq, b, c))
	}
	good := func() []byte {
		img := make([]byte, killDisk)
		for w := range killWriters {
			for s := 1; s <= flushed[w]; s++ {
				b := w*killBlocks + (s-1)%killBlocks
				for c := range killBlock / killSector {
					put(img, s, b, c)
				}
			}
		}
		return img
	}
	tailed := good()
	for c := range 100 { // the unflushed write 11 of writer 0, in part
		put(tailed, 11, 2, c)
	}
	if tail, problems := checkKilledImage(tailed, flushed); len(problems) != 0 || tail[0] != "write 11: 100 of 512 sectors" || tail[1] != "none" {
		t.Fatalf("a valid image with an unflushed tail: tail %q, problems %q", tail, problems)
	}
	for _, c := range []struct {
		name  string
		spoil func(img []byte)
		want  string
	}{
		{"lost flushed write", func(img []byte) { clear(img[killBlock+7*killSector : killBlock+8*killSector]) }, "block 1 sector 7 (byte 0x40e00) is zeros; write 10 of writer 0, flushed, is lost"},
		{"stale sector", func(img []byte) { put(img, 2, 1, 3) }, "block 1 sector 3 (byte 0x40600) holds write 2, want 10"},
		{"torn sector", func(img []byte) {
			copy(img[killBlock+5*killSector+256:], killSectorBytes(18, 1, 5)[256:])
		}, "block 1 sector 5 (byte 0x40a00) is torn or foreign"},
		{"misplaced sector", func(img []byte) { copy(img[9*killBlock:], killSectorBytes(2, 9, 1)) }, "block 9 sector 0 (byte 0x240000) holds block 9 sector 1 of write 2"},
		{"tail in the wrong block", func(img []byte) { put(img, 11, 3, 0) }, "block 3 sector 0 (byte 0xc0000) holds write 11, want 4"},
		{"foreign bytes", func(img []byte) { img[12*killBlock+100] = 'x' }, "block 12 sector 0 (byte 0x300000) is torn or foreign"},
	} {
		img := good()
		c.spoil(img)
		_, problems := checkKilledImage(img, flushed)
		if len(problems) != 1 || !strings.Contains(problems[0], c.want) {
			t.Errorf("%s: problems %q, want one saying %q", c.name, problems, c.want)
		}
	}
}
