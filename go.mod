module govmm

go 1.26.8

require (
	golang.org/x/arch v0.33.0
	golang.org/x/sys v0.50.0
	golang.org/x/term v0.48.0
)

require github.com/pierrec/lz4/v4 v4.1.34
