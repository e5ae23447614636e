#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Write the seed corpora under fuzz/seeds/<target>/ (committed; fuzz/run copies them).

The byte layouts follow the unit tests in src/scsi/prin.rs and src/scsi/prout.rs (whose
expected bytes are LIO's and sg_persist's) and the input formats documented at the top of
each fuzz target. Re-run after changing a target's input format:  python3 fuzz/gen-seeds.py
"""
import os
import struct
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

be16 = lambda v: struct.pack(">H", v)
be32 = lambda v: struct.pack(">I", v)
be64 = lambda v: struct.pack(">Q", v)

PRIN, PROUT = 0x5E, 0x5F
IN_ACTIONS = {"read_keys": 0, "read_reservation": 1, "report_capabilities": 2, "read_full_status": 3}
OUT_ACTIONS = {"register": 0, "reserve": 1, "release": 2, "clear": 3, "preempt": 4,
               "preempt_abort": 5, "register_ignore": 6, "register_move": 7, "replace_lost": 8}
SAS_ADDR = 0x5001405000000001


def cdb16(b):
    return bytes(b) + bytes(16 - len(b))


def pr_in_cdb(action, alloc):
    return cdb16([PRIN, action, 0, 0, 0, 0, 0] + list(be16(alloc)) + [0])


def pr_out_cdb(action, scope, typ, length):
    return cdb16([PROUT, action, ((scope & 15) << 4) | (typ & 15), 0, 0] + list(be32(length)) + [0])


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


def register_move(key, sa_key, flags, rtpi, tid):
    return be64(key) + be64(sa_key) + bytes([0, flags]) + be16(rtpi) + be32(len(tid)) + tid


# --- PR IN payloads (src/scsi/prin.rs) ---

def with_header(gen, body):
    return be32(gen) + be32(len(body)) + body


def read_keys(gen, keys):
    return with_header(gen, b"".join(be64(k) for k in keys))


def read_reservation(gen, res=None):
    if res is None:
        return with_header(gen, b"")
    key, scope, typ = res
    d = be64(key) + bytes(5) + bytes([(scope << 4) | typ]) + bytes(2)
    return with_header(gen, d)


# LIO's REPORT CAPABILITIES (core_scsi3_pri_report_capabilities): CRH, SIP_C, ATP_C,
# PTPL_C, TMV, ALLOW COMMANDS 1, every type.
LIO_CAPS = bytes([0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0])


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
    for name, a in IN_ACTIONS.items():
        s[f"prin_{name}"] = HANDSHAKE + chunk(pr_in_cdb(a, 8192), 1) + backend(0, 24)
    for name, a in OUT_ACTIONS.items():
        params = basic(0x1234, 0x5678) if a != 7 else register_move(1, 2, 0x02, 1, tid_sas(SAS_ADDR))
        s[f"prout_{name}"] = (HANDSHAKE + chunk(pr_out_cdb(a, 0, 5, len(params)), 1)
                              + chunk(params))
    # QEMU's migration: READ KEYS with a growing allocation length, then READ RESERVATION.
    m = HANDSHAKE
    for alloc, claimed in [(8, 40), (40, 40), (0, 0), (4096, 40), (8192, 8200)]:
        m += chunk(pr_in_cdb(0, alloc), 1) + backend(0, claimed)
    m += chunk(pr_in_cdb(1, 24), 1) + backend(0, 24)
    s["migration_read_keys"] = m
    # Error statuses from the backend: data must be dropped.
    s["prin_reservation_conflict"] = HANDSHAKE + chunk(pr_in_cdb(0, 64), 1) + backend(0x18, 64)
    s["prin_check_condition"] = HANDSHAKE + chunk(pr_in_cdb(3, 512), 1) + backend(0x02, 512)
    # CDB split across reads, fd on the second piece.
    c = pr_in_cdb(0, 16)
    s["split_cdb"] = HANDSHAKE + chunk(c[:5]) + chunk(c[5:12], 1) + chunk(c[12:]) + backend(0, 16)
    # Handshake one byte at a time, then back-to-back requests.
    s["slow_handshake"] = b"\x00" + b"".join(chunk(b"\x00") for _ in range(4)) + b"".join(
        chunk(pr_in_cdb(a, 100), 1) + backend(0, 100) for a in range(4))
    # PR OUT with SPEC_I_PT and a TransportID list, parameters in small pieces.
    p = basic(0, 0xABC, 0x04, [tid_sas(SAS_ADDR), tid_iscsi("iqn.1994-05.com.redhat:client")])
    s["prout_spec_i_pt_pieces"] = (HANDSHAKE + chunk(pr_out_cdb(0, 0, 0, len(p)), 1)
                                   + b"".join(chunk(p[i:i + 7]) for i in range(0, len(p), 7)))
    # Largest PR OUT parameter list, 255 bytes per read.
    big = bytes(range(256)) * 32
    s["prout_8192"] = (HANDSHAKE + chunk(pr_out_cdb(0, 0, 0, 8192), 1)
                       + b"".join(chunk(big[i:i + 255]) for i in range(0, 8192, 255)))
    # Protocol errors.
    s["err_no_fd"] = HANDSHAKE + chunk(pr_in_cdb(0, 8))
    s["err_two_fds"] = HANDSHAKE + chunk(pr_in_cdb(0, 8), 2)
    s["err_fd_twice"] = HANDSHAKE + chunk(pr_in_cdb(0, 8)[:4], 1) + chunk(pr_in_cdb(0, 8)[4:], 1)
    s["err_bad_opcode"] = HANDSHAKE + chunk(cdb16([0x12, 0, 0, 0, 36]), 1)
    s["err_too_long_in"] = HANDSHAKE + chunk(pr_in_cdb(0, 8193), 1)
    s["err_too_long_out"] = HANDSHAKE + chunk(pr_out_cdb(0, 0, 0, 0xFFFF), 1)
    s["err_fd_with_params"] = HANDSHAKE + chunk(pr_out_cdb(0, 0, 0, 24), 1) + chunk(bytes(24), 1)
    s["err_features"] = b"\x00" + chunk(be32(1))
    s["features_supported"] = b"\x01" + chunk(be32(1)) + chunk(pr_in_cdb(2, 8), 1) + backend(0, 8)
    s["eof_mid_params"] = HANDSHAKE + chunk(pr_out_cdb(0, 0, 0, 24), 1) + chunk(bytes(10)) + b"\x00\x00"
    s["eof_idle"] = HANDSHAKE + chunk(pr_in_cdb(0, 8), 1) + backend(0, 8) + b"\x00\x00"
    return s


def cdb_seeds():
    s = {}
    cdbs = b"".join(pr_in_cdb(a, 8192) for a in IN_ACTIONS.values())
    cdbs += b"".join(pr_out_cdb(a, 0, 5, 24) for a in OUT_ACTIONS.values())
    s["cdbs"] = b"\x00" + cdbs
    s["builders"] = b"\x01" + bytes(range(1, 40))
    s["structured"] = b"\x02" + bytes(range(0, 250, 3)) * 3
    s["basic"] = b"\x00" + basic(0x1122334455667788, 0xABCD, 0x05)
    s["basic_spec_i_pt"] = b"\x00" + basic(0, 1, 0, [tid_sas(SAS_ADDR), tid_iscsi("iqn.a")])
    s["basic_spec_i_pt_fc_port"] = b"\x00" + basic(7, 8, 0x04, [
        tid_fc(0x20000000C9123456), tid_iscsi("iqn.x.y,i,0x00023d000001", port=True)])
    s["register_move_sas"] = b"\x00" + register_move(1, 2, 0x02, 0x0102, tid_sas(SAS_ADDR))
    s["register_move_iscsi"] = b"\x00" + register_move(3, 4, 0x01, 1,
                                                       tid_iscsi("iqn.2003-01.org.example:abc"))
    s["tid_sas"] = b"\x03" + tid_sas(SAS_ADDR)
    s["tid_fc"] = b"\x03" + tid_fc(0x2001000000000AA)
    s["tid_iscsi"] = b"\x03" + tid_iscsi("iqn.2003-01.org.example")
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
    s["read_keys"] = b"\x00" + read_keys(3, [1, 0x0102030405060708])
    s["read_keys_empty"] = b"\x00" + read_keys(0, [])
    s["read_keys_truncated"] = b"\x00" + read_keys(9, [1, 2, 3])[:28]
    s["read_keys_huge_len"] = b"\x00" + be32(1) + be32(0xFFFFFFFF) + be64(1) + be64(2)
    s["read_reservation"] = b"\x00" + read_reservation(0x10, (0xABC, 0, 3))
    s["read_reservation_none"] = b"\x00" + read_reservation(2)
    s["report_capabilities_lio"] = b"\x00" + LIO_CAPS
    s["full_status_sas"] = b"\x00" + full_status(7, [
        (0x11, False, True, 0, 5, 1, tid_sas(SAS_ADDR)),
        (0x22, True, False, 0, 0, 0, b"")])
    s["full_status_iscsi_lio"] = b"\x00" + full_status(4, [
        (0xABC, False, True, 0, 1, 1, tid_iscsi("iqn.1994-05.com.redhat:client1,i,0x00023d000001", port=True)),
        (0xDEF, False, False, 0, 0, 1, tid_iscsi("iqn.1994-05.com.redhat:client2"))])
    s["full_status_huge_tid"] = b"\x00" + be32(1) + be32(48) + be64(1) + bytes(12) + be32(0xFFFFFFFF) + tid_sas(1)
    s["structured"] = b"\x01" + bytes(range(0, 250, 7)) * 4
    s["structured_keys"] = b"\x01" + read_keys(5, [10, 20, 30, 40])
    return s


def sense_seeds():
    s = {}

    def hdr(status, size, sense):
        return struct.pack(">iI", status, size) + sense + bytes(96 - len(sense))

    fixed = bytes([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x05, 0, 0, 0, 0])
    desc = bytes([0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0])
    outcome = lambda errno, st, host, drv: bytes([errno is not None]) + be32((errno or 0) & 0xFFFFFFFF) + bytes([st]) + be16(host) + be16(drv)
    s["good_24"] = hdr(0, 24, b"") + be64(24) + outcome(None, 0, 0, 0)
    s["check_fixed"] = hdr(2, 0, fixed) + be64(0) + outcome(None, 2, 0, 8)
    s["check_descriptor"] = hdr(2, 0, desc) + be64(8192) + outcome(5, 0, 0, 0)
    s["conflict"] = hdr(0x18, 0, b"") + be64(0) + outcome(None, 0x18, 0, 0)
    s["too_big"] = hdr(0, 8193, b"") + be64(8192) + outcome(None, 0, 7, 0)
    s["bad_status"] = hdr(-16777214, 0, fixed) + be64(0) + outcome(None, 0, 0, 6)
    s["data_with_check"] = hdr(2, 8, fixed) + be64(8) + outcome(None, 0, 0x0E, 0)
    return s


def main():
    for target, seeds in [("conn_stream", conn_seeds()), ("cdb_and_params", cdb_seeds()),
                          ("prin_payloads", prin_seeds()), ("sense", sense_seeds())]:
        d = os.path.join(SEEDS, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
