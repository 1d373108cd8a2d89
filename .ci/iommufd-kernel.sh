#!/usr/bin/env bash
# Builds the L1 kernel of TestVFIOIOMMUFD into $1: Debian's 6.12 cloud
# kernel (bookworm-security) with iommufd and the VFIO cdev as modules.
# Debian builds its kernels without CONFIG_IOMMUFD (so without
# CONFIG_VFIO_DEVICE_CDEV): /dev/iommu and /dev/vfio/devices never appear
# on them. This compiles iommufd.ko and the four VFIO modules again from
# Debian's linux-source-6.12 against the matching linux-headers, with
# those two options on, and lays the kernel out as $GOVMM_CACHE/linux is
# (boot/vmlinuz-V, lib/modules/V/kernel/..., uncompressed), with
# irqbypass, kvm and kvm-amd from the image package. Nothing is installed:
# the packages are downloaded and unpacked in a temporary directory.
set -euo pipefail
out=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

# linux-source-6.12's newest version names the kernel: 6.12.118-1~deb12u1
# is ABI 6.12.118+deb12.
ver=$(apt-cache madison linux-source-6.12 | awk '{print $3}' | sort -V | tail -1)
if [ -z "$ver" ]; then
  echo "iommufd-kernel: no linux-source-6.12 in the apt lists (bookworm-security)" >&2
  exit 1
fi
abi="${ver%%-*}+deb12"
flavour="$abi-cloud-amd64"
apt-get download "linux-source-6.12=$ver" "linux-image-$flavour-unsigned" "linux-headers-$flavour" \
  "linux-headers-$abi-common" "linux-kbuild-$abi" >/dev/null

for p in linux-headers-* linux-kbuild-*; do dpkg -x "$p" hdr; done
dpkg -x linux-image-*.deb img
dpkg -x linux-source-*.deb src
# The headers' Makefile includes the common tree at its installed path.
hdrs="$tmp/hdr/usr/src/linux-headers-$flavour"
echo "include $tmp/hdr/usr/src/linux-headers-$abi-common/Makefile" > "$hdrs/Makefile"

s=linux-source-6.12
tar -xJf src/usr/src/$s.tar.xz "$s/drivers/vfio" "$s/drivers/iommu" "$s/lib/interval_tree.c"
mkdir -p mod/drivers/iommu
cp "$s"/drivers/iommu/*.h mod/drivers/iommu/
cp -r "$s/drivers/iommu/iommufd" mod/drivers/iommu/
cp -r "$s/drivers/vfio" mod/drivers/
# iommufd walks its interval trees with the span iterator, which Debian's
# vmlinux lacks (CONFIG_INTERVAL_TREE_SPAN_ITER comes only with iommufd):
# the module carries its own copy, lib/interval_tree.c's span part.
{
  echo '#include <linux/interval_tree.h>'
  echo '#include <linux/export.h>'
  sed -n '/^#ifdef CONFIG_INTERVAL_TREE_SPAN_ITER/,$p' "$s/lib/interval_tree.c"
} > mod/drivers/iommu/iommufd/span.c
echo 'iommufd-y += span.o' >> mod/drivers/iommu/iommufd/Makefile
echo 'obj-m += drivers/iommu/iommufd/ drivers/vfio/' > mod/Kbuild
# The two options on for Kbuild (the Makefiles) and for the C code
# (IS_ENABLED reads the macros); no BTF (it needs pahole).
make -s -C "$hdrs" M="$tmp/mod" -j"$(nproc)" CONFIG_IOMMUFD=m CONFIG_VFIO_DEVICE_CDEV=y CONFIG_DEBUG_INFO_BTF_MODULES= \
  KCFLAGS="-DCONFIG_IOMMUFD_MODULE=1 -DCONFIG_VFIO_DEVICE_CDEV=1 -DCONFIG_INTERVAL_TREE_SPAN_ITER=1" modules

rm -rf "$out.new"
mkdir -p "$out.new/boot"
cp img/boot/vmlinuz-"$flavour" img/boot/config-"$flavour" "$out.new/boot/"
k="$out.new/lib/modules/$flavour/kernel"
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd; do
  mkdir -p "$k/$(dirname $m)"
  xz -dc "img/lib/modules/$flavour/kernel/$m.ko.xz" > "$k/$m.ko"
done
for m in drivers/iommu/iommufd/iommufd drivers/vfio/vfio drivers/vfio/vfio_iommu_type1 drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci; do
  mkdir -p "$k/$(dirname $m)"
  cp "mod/$m.ko" "$k/$m.ko"
done
rm -rf "$out"
mv "$out.new" "$out"
echo "iommufd-kernel: $flavour with iommufd and the VFIO cdev in $out"
