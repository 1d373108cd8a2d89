#!/bin/sh
# Builds the benchmark guests into $1 (default: bench/guest/bin).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/bin}
iter=${ITER:-100000}
mkdir -p "$out"
for k in 0:exit 1:pio 2:mmio; do
  kind=${k%%:*}; name=${k#*:}
  gcc -m32 -c -DKIND="$kind" -DITER="$iter" -o "$out/$name.o" "$here/bench.S"
  ld -m elf_i386 -N --no-warn-rwx-segments -Ttext 0x100000 --build-id=none -o "$out/$name.elf" "$out/$name.o"
  rm -f "$out/$name.o"
done
