#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Build the lab VM image: a Debian kernel (target/lab/vmlinuz) and a small
# busybox initramfs (target/lab/initrd.img) whose /init is lab/init.
#
# Idempotent: installs missing Debian packages, downloads the kernel package
# once (cached under target/lab/debs), and rebuilds the initramfs only when
# its inputs (lab/init, this script, the kernel version) change.
set -euo pipefail

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$LAB_SRC")
OUT=${LAB_OUT:-$ROOT/target/lab}
mkdir -p "$OUT"

log() { echo "build-image: $*" >&2; }

# Kernel modules the guest loads (in this order, each after its dependencies).
MODULES=(
    virtio_pci 9pnet_virtio 9p          # host root over virtio-9p
    sd_mod sg                           # SCSI disks and generic devices
    configfs target_core_mod target_core_file tcm_loop   # LIO + loopback fabric
    dm-mod dm-multipath dm-round-robin dm-service-time scsi_dh_alua  # multipath cases
    overlay                             # writable /etc etc. when a case needs one
    virtio_scsi                         # nested guest's disk
)

# The subset a nested guest needs (it only uses its 9p root and a virtio-scsi
# disk; under TCG-in-TCG every module costs seconds).
NESTED_MODULES=(virtio_pci 9pnet_virtio 9p sd_mod sg virtio_scsi)

# --- 1. Host packages -------------------------------------------------------
PACKAGES=(qemu-system-x86 qemu-system-common busybox-static cpio kmod sg3-utils dmsetup)
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. Kernel package ------------------------------------------------------
DEBS=$OUT/debs
mkdir -p "$DEBS"
# apt-get download needs a package list; refresh it once if it knows nothing.
apt_download() {
    (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "$@") || {
        apt-get update -qq
        (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "$@")
    }
}
meta=$(ls "$DEBS"/linux-image-amd64_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $meta ]]; then
    log "downloading linux-image-amd64"
    apt_download linux-image-amd64
    meta=$(ls "$DEBS"/linux-image-amd64_*.deb | head -n1)
fi
# The metapackage depends on exactly one versioned image package.
image_pkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ (]*' | head -n1)
image_deb=$(ls "$DEBS"/"${image_pkg}"_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $image_deb ]]; then
    log "downloading $image_pkg"
    apt_download "$image_pkg"
    image_deb=$(ls "$DEBS"/"${image_pkg}"_*.deb | head -n1)
fi
KVER=${image_pkg#linux-image-}

KROOT=$OUT/kernel-root
if [[ ! -e $KROOT/.done-$KVER ]]; then
    log "extracting $image_deb"
    rm -rf "$KROOT"
    mkdir -p "$KROOT"
    dpkg-deb -x "$image_deb" "$KROOT"
    depmod -b "$KROOT" "$KVER"
    touch "$KROOT/.done-$KVER"
fi
cp -u "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
# Under TCG, the bzImage's own XZ decompressor takes ~8 s. Debian's kernel has
# CONFIG_PVH, so QEMU can boot the uncompressed ELF directly (~0.5 s to the
# first kernel message): unpack the XZ payload found inside the bzImage.
if [[ ! -e $OUT/vmlinux || $OUT/vmlinux -ot $OUT/vmlinuz ]]; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$OUT/vmlinuz" | head -n1 | cut -d: -f1)
    # xz stops at the end of its stream and complains about the bytes after it.
    tail -c +$((off + 1)) "$OUT/vmlinuz" | xz -dc >"$OUT/vmlinux.new" 2>/dev/null || true
    if [[ $(head -c4 "$OUT/vmlinux.new" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
        mv "$OUT/vmlinux.new" "$OUT/vmlinux"
    else
        log "could not unpack vmlinux; booting the (slower) bzImage"
        rm -f "$OUT/vmlinux.new"
    fi
fi

# --- 3. Initramfs -----------------------------------------------------------
# Rebuild only when an input changed: the stamp records a hash of them.
stamp_new=$(cat "$LAB_SRC/init" "${BASH_SOURCE[0]}" /usr/bin/busybox | sha256sum | cut -c1-16)-$KVER
stamp_file=$OUT/initrd.stamp
if [[ -e $OUT/initrd.img && -e $stamp_file && $(cat "$stamp_file") == "$stamp_new" ]]; then
    exit 0
fi

log "building initramfs for $KVER"
STAGE=$OUT/initrd-stage
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,dev,proc,sys,host,lib/modules}
cp /usr/bin/busybox "$STAGE/bin/busybox"
for applet in $("$STAGE/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$STAGE/bin/$applet"
done
install -m 0755 "$LAB_SRC/init" "$STAGE/init"

# Debian signs its modules; checking a signature under TCG costs ~50 ms per
# module. The kernel does not enforce signatures (it only taints), so drop
# them: the file ends with SIG, a 12-byte struct module_signature whose last
# 4 bytes are the big-endian SIG length, and a 28-byte magic string.
strip_signature() {
    local f=$1 magic siglen size
    magic=$(tail -c 28 "$f" | tr -d '\n')
    [[ $magic == '~Module signature appended~' ]] || return 0
    siglen=$((16#$(tail -c 32 "$f" | head -c 4 | od -An -tx1 | tr -d ' \n')))
    size=$(stat -c %s "$f")
    truncate -s $((size - 28 - 12 - siglen)) "$f"
}

# Resolve dependencies with modprobe against the extracted tree. Its output is
# "insmod /path/x.ko" lines (dependencies first) or "builtin x".
: >"$STAGE/lib/modules/load-order"
: >"$STAGE/lib/modules/load-order-nested"
declare -A seen=()
for m in "${MODULES[@]}"; do
    while read -r kind path _; do
        [[ $kind == insmod ]] || continue
        [[ -n ${seen[$path]:-} ]] && continue
        seen[$path]=1
        name=$(basename "$path")
        # The guest kernel may lack in-kernel decompression: store plain .ko.
        case $name in
        *.ko.xz) xz -dc "$path" >"$STAGE/lib/modules/${name%.xz}" ;;
        *.ko.zst) zstd -qdc "$path" >"$STAGE/lib/modules/${name%.zst}" ;;
        *.ko.gz) gzip -dc "$path" >"$STAGE/lib/modules/${name%.gz}" ;;
        *) cp "$path" "$STAGE/lib/modules/$name" ;;
        esac
        strip_signature "$STAGE/lib/modules/${name%.ko*}.ko"
        echo "${name%.ko*}.ko" >>"$STAGE/lib/modules/load-order"
    done < <(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m")
done
declare -A seen_nested=()
for m in "${NESTED_MODULES[@]}"; do
    while read -r kind path _; do
        [[ $kind == insmod && -z ${seen_nested[$path]:-} ]] || continue
        seen_nested[$path]=1
        name=$(basename "$path")
        echo "${name%.ko*}.ko" >>"$STAGE/lib/modules/load-order-nested"
    done < <(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m")
done

(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$OUT/initrd.img.new"
mv "$OUT/initrd.img.new" "$OUT/initrd.img"
echo "$stamp_new" >"$stamp_file"
log "done: $OUT/vmlinuz $OUT/initrd.img ($(wc -l <"$STAGE/lib/modules/load-order") modules)"
