package main

import "govmm/internal/memsize"

// parseSize parses a memory size such as 256M, 2G, 512MiB or a plain byte
// count, and insists on whole pages (package memsize).
var parseSize = memsize.Parse
