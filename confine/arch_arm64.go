package confine

// hostArch is the architecture govmm is built for.
var hostArch = &archARM64
