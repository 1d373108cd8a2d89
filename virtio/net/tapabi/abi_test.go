package tapabi

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/internal/abicheck"
)

// abi pins IfreqHwaddr and the request numbers to <linux/if.h>,
// <linux/sockios.h> and <linux/if_arp.h> (recorded from gcc on x86-64
// against Debian 12's linux-libc-dev; arm64 has the same layout).
var abi = []abicheck.Value{
	abicheck.V("sizeof(struct ifreq)", unsafe.Sizeof(IfreqHwaddr{}), 40),
	abicheck.V("offsetof(struct ifreq, ifr_name)", unsafe.Offsetof(IfreqHwaddr{}.Name), 0),
	abicheck.V("sizeof(((struct ifreq *)0)->ifr_name)", unsafe.Sizeof(IfreqHwaddr{}.Name), 16),
	abicheck.V("offsetof(struct ifreq, ifr_hwaddr)", unsafe.Offsetof(IfreqHwaddr{}.Family), 16),
	abicheck.V("offsetof(struct ifreq, ifr_hwaddr.sa_family)", unsafe.Offsetof(IfreqHwaddr{}.Family), 16),
	abicheck.V("offsetof(struct ifreq, ifr_hwaddr.sa_data)", unsafe.Offsetof(IfreqHwaddr{}.Data), 18),
	abicheck.V("sizeof(((struct ifreq *)0)->ifr_hwaddr)", unsafe.Sizeof(IfreqHwaddr{}.Family)+unsafe.Sizeof(IfreqHwaddr{}.Data), 16),
	abicheck.V("SIOCSIFHWADDR", SetHwaddr, 0x8924),
	abicheck.V("SIOCGIFHWADDR", GetHwaddr, 0x8927),
	abicheck.V("ARPHRD_ETHER", unix.ARPHRD_ETHER, 1),
}

func TestABI(t *testing.T) { abicheck.Recorded(t, abi) }

func TestABIAgainstHeader(t *testing.T) {
	abicheck.Headers(t, "gcc", []string{"sys/socket.h", "linux/if.h", "linux/sockios.h", "linux/if_arp.h"}, abi)
}
