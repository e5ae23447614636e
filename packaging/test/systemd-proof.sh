#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# packaging/test/systemd-proof.sh PKGDIR: runs inside the lab VM booted with systemd
# as PID 1 (lab/boot.sh --systemd; the root is a RAM overlay over the host's, so dpkg
# may install). Installs the .debs from PKGDIR with dpkg and proves, on a real LIO LUN:
# the socket listens and the service is not started; the first connection activates it
# (socket passed by systemd, no -k); PR commands succeed through it; journal entries
# carry the structured per-command fields; `systemctl stop` exits 0 and keeps the
# socket file; after kill -9 systemd restarts it and clients that connected meanwhile
# are served from the backlog; the diversion package makes `qemu-pr-helper -V` report
# prhelper and purging it restores the C helper; purge removes everything.
set -euo pipefail
pkgdir=${1:?usage: systemd-proof.sh PKGDIR}
SOCK=/run/qemu-pr-helper.sock
t0=$(date +%s.%N)

fail() {
    echo "FAIL: $*"
    systemctl status --no-pager prhelper.socket prhelper.service 2>&1 | tail -20 || true
    journalctl -b --no-pager -u prhelper.socket -u prhelper.service 2>&1 | tail -30 || true
    exit 1
}
ok() { printf 'ok %5.1fs  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
# Poll until a command succeeds (a wait, not a timed assertion: the bound is generous).
wait_for() {
    local what=$1; shift
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "timed out waiting for: $what"
}
prop() { systemctl show -p "$2" --value "$1"; }

[[ $(readlink /proc/1/exe) == */systemd ]] || fail "PID 1 is $(readlink /proc/1/exe), not systemd"
ok "PID 1 is systemd $(systemctl --version | head -1 | cut -d' ' -f2)"

# A LIO LUN through tcm_loop (the lab's modules are loaded by its initramfs).
cfg=/sys/kernel/config/target
mkdir -p /tmp/lio/db/pr
echo /tmp/lio/db >"$cfg/dbroot"
truncate -s 64M /tmp/lio/pk.img
bs=$cfg/core/fileio_90/pk
mkdir -p "$bs"
echo "fd_dev_name=/tmp/lio/pk.img,fd_dev_size=67108864" >"$bs/control"
echo 1 >"$bs/enable"
tpg=$cfg/loopback/naa.5001405cafe00001/tpgt_1
mkdir -p "$tpg"
echo naa.5001405cafe000a1 >"$tpg/nexus"
mkdir -p "$tpg/lun/lun_0"
ln -s "$bs" "$tpg/lun/lun_0/lio_lun"
hctl="$(cat "$tpg/address"):0"
wait_for "the disk of $hctl" bash -c "ls /sys/bus/scsi/devices/$hctl/block/ | grep -q ."
disk=/dev/$(ls "/sys/bus/scsi/devices/$hctl/block/")
wait_for "$disk" test -b "$disk"
devnum=$(printf '%d:%d' "0x$(stat -c %t "$disk")" "0x$(stat -c %T "$disk")")
ok "LIO LUN $hctl is $disk ($devnum)"

# --- install
# man-db's trigger would rebuild its index of the whole (9p, TCG) root: minutes.
rm -f /var/lib/man-db/auto-update
c_version=$(/usr/bin/qemu-pr-helper -V | head -1)
[[ $c_version == *qemu-pr-helper* ]] || fail "C helper -V: $c_version"
# Debug logging for the journal check, the way an admin would (a drop-in), and a
# longer restart delay so that clients surely connect while no service runs.
mkdir -p /etc/systemd/system/prhelper.service.d
printf '[Service]\nEnvironment=PRHELPER_LOG=prhelper=debug\nRestartSec=5\n' \
    >/etc/systemd/system/prhelper.service.d/test.conf
dpkg -i "$pkgdir"/prhelper_*_amd64.deb
[[ $(systemctl is-enabled prhelper.socket) == enabled ]] || fail "socket not enabled"
[[ $(systemctl is-active prhelper.socket) == active ]] || fail "socket not active"
[[ $(systemctl is-active prhelper.service) == inactive ]] || fail "service started before any connection"
[[ -S $SOCK ]] || fail "$SOCK is not a socket"
[[ $(stat -c '%a %U' "$SOCK") == "600 root" ]] || fail "socket mode: $(stat -c '%a %U' "$SOCK")"
ok "installed: prhelper.socket enabled and listening on $SOCK (0600 root), service inactive"

systemd-analyze verify /usr/lib/systemd/system/prhelper.socket /usr/lib/systemd/system/prhelper.service 2>&1 | tee /tmp/verify.log
[[ ! -s /tmp/verify.log ]] || fail "systemd-analyze verify complained"
ok "systemd-analyze verify: no warnings"
score=$(systemd-analyze security prhelper.service 2>&1 | tail -1)
ok "live $score"

# --- first connection activates; PR commands on the LUN through it
prhelper-client --timeout 300 -k "$SOCK" --out --register -S abc "$disk" || fail "REGISTER through the socket"
[[ $(systemctl is-active prhelper.service) == active ]] || fail "service not active after the first connection"
pid=$(prop prhelper.service MainPID)
cmdline=$(tr '\0' ' ' </proc/"$pid"/cmdline)
[[ $cmdline == "/usr/bin/prhelper " ]] || fail "service command line: $cmdline"
journalctl -b -u prhelper.service -o cat | grep -q "listening on socket-activated socket" ||
    fail "the daemon did not use the socket systemd passed"
ok "first connection started prhelper (pid $pid, '$cmdline', socket from systemd)"
prhelper-client --timeout 300 -k "$SOCK" --out --reserve -K abc -T 1 "$disk" || fail "RESERVE"
keys=$(prhelper-client --timeout 300 -k "$SOCK" "$disk")
[[ $keys == *0xabc* ]] || fail "READ KEYS through prhelper: $keys"
lio=$(sg_persist --in --read-reservation "$disk")
[[ $lio == *"Key=0xabc"* && $lio == *"Write Exclusive"* ]] || fail "LIO's view: $lio"
ok "REGISTER, RESERVE, READ KEYS through the socket; LIO (sg_persist) sees key 0xabc holding Write Exclusive"

# --- structured journal fields
check_fields() {
    journalctl -b -u prhelper.service -o json PRHELPER_ACTION=register | python3 -c '
import json, sys
want = {"PRHELPER_PEER_UID": "0", "PRHELPER_DEVICE": sys.argv[1], "PRHELPER_ACTION": "register",
        "PRHELPER_PR_TYPE": "0", "PRHELPER_STATUS": "0x00"}
for line in sys.stdin:
    e = json.loads(line)
    if all(e.get(k) == v for k, v in want.items()) and int(e["PRHELPER_PEER_PID"]) > 0 \
            and int(e["PRHELPER_DURATION_US"]) > 0 and e.get("MESSAGE") == "command":
        print(json.dumps({k: v for k, v in e.items() if k.startswith("PRHELPER_")}))
        sys.exit(0)
sys.exit(1)' "$devnum"
}
wait_for "the register entry with its fields in the journal" check_fields
ok "journal: $(check_fields)"

# --- systemctl stop: exit 0, socket file kept (systemd owns it)
systemctl stop prhelper.service
[[ $(prop prhelper.service ExecMainStatus) == 0 && $(prop prhelper.service ExecMainCode) == 1 ]] ||
    fail "stop: ExecMainCode=$(prop prhelper.service ExecMainCode) ExecMainStatus=$(prop prhelper.service ExecMainStatus)"
[[ -S $SOCK && $(systemctl is-active prhelper.socket) == active ]] || fail "socket gone after stopping the service"
ok "systemctl stop: exited with status 0; $SOCK kept, socket unit active"

# --- kill -9: restarted; clients connecting meanwhile wait in the backlog
prhelper-client --timeout 300 -k "$SOCK" "$disk" >/dev/null || fail "re-activation"
old=$(prop prhelper.service MainPID)
restarts=$(prop prhelper.service NRestarts)
kill -9 "$old"
wait_for "pid $old to die" bash -c "! grep -qs '^State:.*[RSD]' /proc/$old/status"
# Clients start now, while systemd waits RestartSec=5 before restarting.
launch_us=$(awk '{ printf "%d", $1 * 1000000 }' /proc/uptime)
clients=()
for i in $(seq 20); do
    prhelper-client --timeout 300 -k "$SOCK" "$disk" >/tmp/client-$i.out 2>&1 &
    clients+=($!)
done
state=$(prop prhelper.service SubState)
failed=0
for i in "${!clients[@]}"; do
    wait "${clients[$i]}" || { failed=$((failed + 1)); cat /tmp/client-$((i + 1)).out; }
done
((failed == 0)) || fail "$failed of 20 clients failed across the restart"
grep -q 0xabc /tmp/client-1.out || fail "client output: $(cat /tmp/client-1.out)"
new=$(prop prhelper.service MainPID)
[[ $new != "$old" && $new != 0 && $(prop prhelper.service NRestarts) -gt $restarts ]] ||
    fail "not restarted: MainPID $old -> $new"
started_us=$(prop prhelper.service ExecMainStartTimestampMonotonic)
((started_us > launch_us)) || fail "the new prhelper started before the clients ($started_us <= $launch_us us)"
ok "kill -9 $old: 20 clients started $(((started_us - launch_us) / 1000)) ms before systemd restarted it (state then: $state), all served by the new prhelper ($new)"

# --- the diversion package
dpkg -i "$pkgdir"/prhelper-qemu-compat_*_all.deb
v=$(/usr/bin/qemu-pr-helper -V | head -1)
[[ $v == prhelper* ]] || fail "qemu-pr-helper -V with the diversion: $v"
dpkg-divert --list /usr/bin/qemu-pr-helper | grep -q prhelper-qemu-compat || fail "no diversion registered"
# The C helper prints its argv[0] first: compare what follows (version, Debian revision).
c=$(/usr/bin/qemu-pr-helper.c-helper -V | head -1)
[[ ${c#* } == "${c_version#* }" ]] || fail "the C helper is not kept aside: $c"
ok "prhelper-qemu-compat: qemu-pr-helper -V says '$v'; the C helper is qemu-pr-helper.c-helper"
dpkg --purge prhelper-qemu-compat
v=$(/usr/bin/qemu-pr-helper -V | head -1)
[[ $v == "$c_version" ]] || fail "after purge qemu-pr-helper -V: $v"
[[ -z $(dpkg-divert --list /usr/bin/qemu-pr-helper) && ! -e /usr/bin/qemu-pr-helper.c-helper ]] ||
    fail "diversion left behind"
[[ -z $(dpkg-divert --list '*qemu-pr-helper*') ]] || fail "man page diversion left behind"
ok "purged prhelper-qemu-compat: qemu-pr-helper -V says '$v' again, no diversion left"

# --- purge removes everything
files=$(dpkg -L prhelper | grep -v '^/\.$')
rm -r /etc/systemd/system/prhelper.service.d # the test's drop-in: the admin's, not dpkg's
dpkg --purge prhelper
left=()
for f in $files; do [[ -f $f || -L $f ]] && left+=("$f"); done
((${#left[@]} == 0)) || fail "files left after purge: ${left[*]}"
[[ ! -e $SOCK ]] || fail "$SOCK left after purge"
[[ -z $(find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name '*prhelper*' 2>/dev/null) ]] ||
    fail "unit state left: $(find /etc/systemd /var/lib/systemd -name '*prhelper*')"
[[ $(systemctl is-active prhelper.socket prhelper.service | sort -u | tr '\n' ' ') == "inactive " ]] ||
    fail "units still active"
! dpkg -s prhelper >/dev/null 2>&1 || fail "dpkg still knows prhelper"
ok "purged prhelper: no files, socket, unit links or dpkg state left"
echo "systemd proof: all checks passed"
