#!/bin/busybox sh
# PID 1 of the icvq test guest (busybox, inside the cached initramfs).
# Everything that varies per run comes from the "icvqrun" 9p share (config.sh, rw.list, overlay/),
# so this script and the initramfs stay byte-identical and cacheable across runs.
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The host greps the console for this prefix to explain a failed boot.
die() {
    echo "ICVQ-INIT-ERROR: $*" >/dev/console
    sync
    poweroff -f
}

while read -r mod; do
    insmod "/lib/modules/$mod.ko" || die "insmod $mod failed"
done </modules.order

P9="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /icvq /newroot
mount -t 9p -o "$P9" icvqrun /icvq || die "cannot mount the icvqrun share"
. /icvq/config.sh || die "cannot read /icvq/config.sh"
# On-demand modules (e.g. the KMS driver for a display device), already in load order.
for mod in $ICVQ_MODULES; do
    insmod "/lib/modules/$mod.ko" || die "insmod $mod failed"
done

# Without it the guest is "(none)", an odd value for anything deriving client ids from the hostname.
hostname icvq-vm
ip link set lo up || die "lo up failed"
i=0
while [ "$i" -lt "${ICVQ_VCAN:-0}" ]; do
    ip link add dev "vcan$i" type vcan || die "cannot create vcan$i"
    ip link set "vcan$i" up || die "cannot bring vcan$i up"
    i=$((i + 1))
done

# cache=loose: the read-only host root does not change under a test, and caching makes
# Python imports over 9p several times faster.
if [ "$ICVQ_MODE" = systemd ]; then
    mkdir -p /lower /ovl
    mount -t 9p -o "ro,cache=loose,$P9" hostroot /lower || die "cannot mount the host root"
    mount -t tmpfs -o mode=755 tmpfs /ovl
    mkdir -p /ovl/upper /ovl/work
    mount -t overlay overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work /newroot \
        || die "cannot mount the overlay root"
    # The host is a container: systemd would see /.dockerenv, believe it runs in docker and then
    # ignore the kernel command line (systemd.unit=) and skip parts of a real boot.
    rm -f /newroot/.dockerenv
    # Without the host's D-Bus id, systemd gives the guest its own machine id instead of the host's.
    rm -f /newroot/var/lib/dbus/machine-id
    if [ -d /icvq/overlay ]; then
        cp -a /icvq/overlay/. /newroot/ || die "cannot copy the overlay files"
    fi
else
    mount -t 9p -o "ro,cache=loose,$P9" hostroot /newroot || die "cannot mount the host root"
fi

mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || die "cannot mount /tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || die "cannot mount /run"
mkdir -p /newroot/run/vmjob
mount -o bind /icvq /newroot/run/vmjob || die "cannot bind the run share"
# Writable host directories, mounted over the same path as on the host. cache=mmap because SQLite's
# WAL mode maps its -shm file shared-writable, which plain 9p refuses ("disk I/O error").
n=0
while IFS= read -r path; do
    [ -n "$path" ] || continue
    mkdir -p "/newroot$path" 2>/dev/null
    mount -t 9p -o "cache=mmap,$P9" "icvqrw$n" "/newroot$path" || die "cannot mount rw share $path"
    n=$((n + 1))
done </icvq/rw.list

if [ "$ICVQ_MODE" = systemd ]; then
    # systemd mounts its own /dev/pts, /dev/shm and cgroups; hand over the API filesystems.
    mount --move /dev /newroot/dev
    mount --move /proc /newroot/proc
    mount --move /sys /newroot/sys
    exec switch_root /newroot /lib/systemd/systemd
    die "switch_root failed"
fi

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
chroot /newroot /bin/sh /run/vmjob/wrap.sh
sync
poweroff -f
