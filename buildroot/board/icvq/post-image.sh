#!/bin/sh
# Post-image script of icvq_qemu_aarch64_virt_defconfig.
#
# 1. Creates output/images/data.ext4, the persistent data disk mounted at
#    /var/lib/icvq (label icvq-data, see var-lib-icvq.mount). An existing
#    image is kept: rebuilding the rootfs must not wipe the spool.
# 2. Writes output/images/start-qemu.sh, which boots both disks.
#
# Buildroot calls this with BINARIES_DIR as $1 and PATH starting with
# $(HOST_DIR)/bin:$(HOST_DIR)/sbin, so mkfs.ext4 is host-e2fsprogs'.

set -eu

images="${1:-${BINARIES_DIR:?}}"
data="${images}/data.ext4"

if [ ! -e "${data}" ]; then
	truncate -s 64M "${data}"
	mkfs.ext4 -q -L icvq-data "${data}"
	echo "post-image: created ${data}"
else
	echo "post-image: keeping existing ${data}"
fi

cat > "${images}/start-qemu.sh" <<'QEMU'
#!/bin/sh
# Boot the icvq reference image. Extra arguments are passed to QEMU.
# Root is read-only (/dev/vda); /dev/vdb is the persistent data disk. The
# network stays on virtio-mmio so the interface is eth0 (BR2_SYSTEM_DHCP).
cd "$(dirname "$0")" || exit 1
exec qemu-system-aarch64 -M virt -cpu cortex-a53 -smp 2 -m 512 \
	-nographic \
	-kernel Image \
	-append "rootwait root=/dev/vda ro console=ttyAMA0" \
	-drive file=rootfs.ext4,if=none,format=raw,id=root \
	-device virtio-blk-pci,drive=root \
	-drive file=data.ext4,if=none,format=raw,id=data \
	-device virtio-blk-pci,drive=data \
	-netdev user,id=net0 -device virtio-net-device,netdev=net0 \
	"$@"
QEMU
chmod 0755 "${images}/start-qemu.sh"
