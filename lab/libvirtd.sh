#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Run Debian's libvirtd inside the lab VM, which has no systemd:
#     unshare --mount --propagation private lab/libvirtd.sh STATE_DIR PR_HELPER
# (lab/src/libvirt.rs does that). In the private mount namespace: overlays with
# their upper layers under STATE_DIR on /etc and /var (the VM's root is read-only),
# the libvirt-qemu user and group (libvirt's QEMU driver looks it up before
# reading qemu.conf), cgroup2 on /sys/fs/cgroup, a qemu.conf that runs QEMU as
# root without a security driver and names PR_HELPER as `pr_helper`, and a
# libvirtd.conf with `auth none` on the Unix sockets. Then libvirtd runs in the
# foreground; its sockets are in /run/libvirt (the VM's /run, visible outside).
set -euo pipefail
state=$1 pr_helper=$2

for d in etc var; do
    mkdir -p "$state/$d-upper" "$state/$d-work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$state/$d-upper,workdir=$state/$d-work" "/$d"
done
[[ -e /sys/fs/cgroup/cgroup.controllers ]] || mount -t cgroup2 cgroup2 /sys/fs/cgroup

grep -q '^libvirt-qemu:' /etc/group || echo 'libvirt-qemu:x:64055:' >>/etc/group
grep -q '^libvirt-qemu:' /etc/passwd ||
    echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>/etc/passwd

mkdir -p /etc/libvirt /var/lib/libvirt/qemu /var/cache/libvirt /var/log/libvirt/qemu /run/libvirt
cat >/etc/libvirt/qemu.conf <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
pr_helper = "$pr_helper"
CONF
cat >/etc/libvirt/libvirtd.conf <<CONF
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "2:stderr"
CONF
exec libvirtd -f /etc/libvirt/libvirtd.conf
