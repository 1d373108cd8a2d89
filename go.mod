module govmm

go 1.26.8

require (
	golang.org/x/arch v0.33.0
	golang.org/x/sys v0.50.0
	golang.org/x/term v0.48.0
)

require (
	github.com/elastic/go-seccomp-bpf v1.6.0
	github.com/landlock-lsm/go-landlock v0.11.2
	github.com/pierrec/lz4/v4 v4.1.34
	golang.org/x/net v0.41.0
)

require kernel.org/pub/linux/libs/security/libcap/psx v1.2.78 // indirect
