#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Write the hand-made seeds under fuzz/seeds/<target>/: only inputs no device or helper
traffic produces (hostile lengths, helper features, data with an error status, FC and
iSCSI-port TransportIDs, TransportID strings from the command line, sense in descriptor
format, material for the structured modes, a crash regression). Everything else is
captured from real traffic in the lab VM by fuzz/capture-seeds (files named by their
SHA-1), which this script leaves alone.

The byte layouts follow the unit tests in src/scsi/prin.rs and src/scsi/prout.rs and the
input formats documented at the top of each fuzz target. Re-run after changing a target's
input format:  python3 fuzz/gen-seeds.py   (and fuzz/capture-seeds)
"""
import os
import struct
import re

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

be16 = lambda v: struct.pack(">H", v)
be32 = lambda v: struct.pack(">I", v)
be64 = lambda v: struct.pack(">Q", v)

PRIN, PROUT = 0x5E, 0x5F
SAS_ADDR = 0x5001405000000001


def cdb16(b):
    return bytes(b) + bytes(16 - len(b))


def pr_in_cdb(action, alloc):
    return cdb16([PRIN, action, 0, 0, 0, 0, 0] + list(be16(alloc)) + [0])


# --- TransportIDs and PR OUT parameter lists (src/scsi/prout.rs) ---

def tid_sas(addr):
    return bytes([6, 0, 0, 0]) + be64(addr) + bytes(12)


def tid_fc(name):
    return bytes(8) + be64(name) + bytes(8)


def tid_iscsi(name, port=False):
    n = name.encode()
    add = max(len(n) + 1, 20)
    add = (add + 3) // 4 * 4
    return bytes([0x45 if port else 0x05, 0]) + be16(add) + n + bytes(add - len(n))


def basic(key, sa_key, flags=0, tids=None):
    b = be64(key) + be64(sa_key) + bytes(4) + bytes([flags, 0, 0, 0])
    if tids is not None:
        lst = b"".join(tids)
        b = bytearray(b)
        b[20] |= 0x08
        b = bytes(b) + be32(len(lst)) + lst
    return b


# --- PR IN payloads (src/scsi/prin.rs) ---

def with_header(gen, body):
    return be32(gen) + be32(len(body)) + body


def full_status(gen, descs):
    body = b""
    for key, all_tg_pt, holder, scope, typ, rtpi, tid in descs:
        h = be64(key) + bytes(4) + bytes([(2 if all_tg_pt else 0) | (1 if holder else 0),
                                          (scope << 4) | typ]) + bytes(4) + be16(rtpi) + be32(len(tid))
        body += h + tid
    return with_header(gen, body)


# --- conn_stream scripts ---

def chunk(data, fds=0):
    assert len(data) <= 255
    return bytes([fds, len(data)]) + data


def backend(status, claimed):
    return bytes([status]) + be16(claimed)


HANDSHAKE = b"\x00" + chunk(bytes(4))


def conn_seeds():
    s = {}
    # A helper that supports a feature (none does yet).
    s["features_supported"] = b"\x01" + chunk(be32(1)) + chunk(pr_in_cdb(2, 8), 1) + backend(0, 8)
    # Error statuses with data from the backend: the data must be dropped.
    s["prin_reservation_conflict"] = HANDSHAKE + chunk(pr_in_cdb(0, 64), 1) + backend(0x18, 64)
    s["prin_check_condition"] = HANDSHAKE + chunk(pr_in_cdb(3, 512), 1) + backend(0x02, 512)
    return s


def cdb_seeds():
    s = {}
    # Material for the CDB builders (mode 1) and structured values (mode 2).
    s["builders"] = b"\x01" + bytes(range(1, 40))
    s["structured"] = b"\x02" + bytes(range(0, 250, 3)) * 3
    s["basic_spec_i_pt_fc_port"] = b"\x00" + basic(7, 8, 0x04, [
        tid_fc(0x20000000C9123456), tid_iscsi("iqn.x.y,i,0x00023d000001", port=True)])
    s["tid_fc"] = b"\x03" + tid_fc(0x2001000000000AA)
    s["tid_list"] = b"\x03" + tid_sas(1) + tid_iscsi("iqn.q") + tid_fc(7) + bytes([5, 0, 0xFF, 0xFF, 0x69])
    for i, t in enumerate(["sas,5001405000000001", "naa.5001405000000001", "fcp,20000000c9123456",
                           "fc,0x20000000c9123456", "iqn.1994-05.com.redhat:abc", "iqn.a,i,0x1234",
                           "6,0,0,0,50,1,40,50", "fc,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00"]):
        s[f"tid_str_{i}"] = b"\x00" + t.encode()
    # Regression: a raw TransportID starting with 0xfc displayed as "fc,..." (fixed in 0702954).
    s["regress_raw_fc_display"] = b"\xdb\xfc\xd5\xcf" + b"\x1e" * 72
    return s


def prin_seeds():
    s = {}
    s["read_keys_huge_len"] = b"\x00" + be32(1) + be32(0xFFFFFFFF) + be64(1) + be64(2)
    s["full_status_iscsi_port"] = b"\x00" + full_status(4, [
        (0xABC, False, True, 0, 1, 1, tid_iscsi("iqn.1994-05.com.redhat:client1,i,0x00023d000001", port=True)),
        (0xDEF, False, False, 0, 0, 1, tid_iscsi("iqn.1994-05.com.redhat:client2"))])
    # Material for the structured values (mode 1), not a payload.
    s["structured"] = b"\x01" + bytes(range(0, 250, 7)) * 4
    s["full_status_huge_tid"] = b"\x00" + be32(1) + be32(48) + be64(1) + bytes(12) + be32(0xFFFFFFFF) + tid_sas(1)
    return s


def sense_seeds():
    s = {}

    def hdr(status, size, sense):
        return struct.pack(">iI", status, size) + sense + bytes(96 - len(sense))

    fixed = bytes([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x05, 0, 0, 0, 0])
    desc = bytes([0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0])
    outcome = lambda errno, st, host, drv: bytes([errno is not None]) + be32((errno or 0) & 0xFFFFFFFF) + bytes([st]) + be16(host) + be16(drv)
    s["check_descriptor"] = hdr(2, 0, desc) + be64(8192) + outcome(5, 0, 0, 0)
    s["too_big"] = hdr(0, 8193, b"") + be64(8192) + outcome(None, 0, 7, 0)
    s["bad_status"] = hdr(-16777214, 0, fixed) + be64(0) + outcome(None, 0, 0, 6)
    s["data_with_check"] = hdr(2, 8, fixed) + be64(8) + outcome(None, 0, 0x0E, 0)
    return s


CAPTURED = re.compile(r"^[0-9a-f]{40}$")  # fuzz/capture-seeds' files


def main():
    for target, seeds in [("conn_stream", conn_seeds()), ("cdb_and_params", cdb_seeds()),
                          ("prin_payloads", prin_seeds()), ("sense", sense_seeds())]:
        d = os.path.join(SEEDS, target)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if not CAPTURED.match(f):
                os.remove(os.path.join(d, f))
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} hand-made seeds")


if __name__ == "__main__":
    main()
