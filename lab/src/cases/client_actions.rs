// SPDX-License-Identifier: MIT OR Apache-2.0
//! Every PR IN and PR OUT service action through prhelper, sent with our CLI
//! client (`prhelper-client`), on a real LIO LUN, with the outcome checked
//! against the LU itself: after each step the helper's READ KEYS / READ
//! RESERVATION / READ FULL STATUS / REPORT CAPABILITIES output must equal
//! `sg_persist`'s, run directly on a third initiator's device, and the
//! reservation must really fence I/O (sg_raw READ/WRITE from the other
//! initiators).
//!
//! Initiators: A and B act through the helper; C only observes (sg_persist,
//! sg_raw) and is never registered, so it never sees a unit attention.

use prhelper::client::Client;
use prhelper::scsi::prin::FullStatus;
use prhelper_lab::helper::Helper;
use prhelper_lab::lio::SharedLun;
use prhelper_lab::prh::{self, client_cli, open_rw, with_log};
use prhelper_lab::sg::{self, EXIT_RESERVATION_CONFLICT, EXIT_UNIT_ATTENTION};
use prhelper_lab::util::{indent, scratch_dir, step, Output};
use prhelper_lab::{bail, ensure, Result};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

const KA: u64 = 0xaaaa;
const KB: u64 = 0xbbbb;

struct Ctx {
    sock: PathBuf,
    scratch: PathBuf,
    /// Disks of A, B, C.
    disk: [PathBuf; 3],
    /// sg nodes of A, B, C.
    sgn: [PathBuf; 3],
    /// Initiator WWNs of A, B, C.
    wwn: [String; 3],
    /// A library connection and A's device, for decoded state checks.
    client: Client,
    a_fd: File,
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

impl Ctx {
    /// `prhelper-client -k SOCK ARGS DISK(who)`, requiring exit status `want`.
    fn cli(&self, who: usize, args: &[&str], want: i32) -> Result<Output> {
        let out = client_cli(&self.sock, args, &self.disk[who])?;
        ensure!(
            out.status == want,
            "expected exit {want} from {}",
            out.describe()
        );
        Ok(out)
    }

    /// PR OUT through the helper from `who`, e.g. `&["-G", "-S", "0xaaaa"]`.
    fn out(&self, who: usize, args: &[&str], want: i32) -> Result<Output> {
        let mut all = vec!["--out"];
        all.extend_from_slice(args);
        self.cli(who, &all, want)
    }

    /// The next command from `who` must get UNIT ATTENTION (once).
    fn expect_ua(&self, who: usize, why: &str) -> Result<()> {
        let out = client_cli(&self.sock, &["-n", "--in", "--read-keys"], &self.disk[who])?;
        ensure!(
            out.status == EXIT_UNIT_ATTENTION,
            "{why}: expected UNIT ATTENTION (6) from {}",
            out.describe()
        );
        Ok(())
    }

    /// The helper's view (via A) and sg_persist's view (directly on C) must
    /// be identical: READ KEYS, READ RESERVATION and READ FULL STATUS as
    /// decoded text; with `full`, REPORT CAPABILITIES too, and every one also
    /// in both hex forms (-H, -HH). (Each command is a process start, slow
    /// under TCG: the full comparison is kept for a few steps.)
    fn compare_views(&self, step: &str, full: bool) -> Result<()> {
        let actions: &[&str] = if full {
            &[
                "--read-keys",
                "--read-reservation",
                "--read-full-status",
                "--report-capabilities",
            ]
        } else {
            &["--read-keys", "--read-reservation", "--read-full-status"]
        };
        let hexes: &[Option<&str>] = if full {
            &[None, Some("-H"), Some("-HH")]
        } else {
            &[None]
        };
        for &action in actions {
            for &hex in hexes {
                let mut args = vec!["-n", "--in", action];
                args.extend(hex);
                let ours = self.cli(A, &args, 0)?;
                let mut theirs = sg::sg_persist(&self.disk[C], &args)?.ok()?;
                if hex == Some("-H") {
                    // sg_persist 1.46 prints an extra unindented
                    // "Additional length=0" line after the header for an
                    // empty key list with -H; prhelper-client does not
                    // (a cosmetic difference, reported).
                    theirs.stdout = theirs
                        .stdout
                        .lines()
                        .filter(|l| *l != "Additional length=0")
                        .map(|l| format!("{l}\n"))
                        .collect();
                }
                ensure!(
                    ours.stdout == theirs.stdout,
                    "{step}: `prhelper-client {}` via A differs from `sg_persist` on C\n  helper:\n{}\n  sg_persist:\n{}",
                    args.join(" "),
                    indent(&ours.stdout),
                    indent(&theirs.stdout)
                );
            }
        }
        Ok(())
    }

    /// Registered keys (sorted) and reservation (key, type), decoded from the
    /// helper's replies; plus the text comparison with sg_persist.
    fn expect_state(&mut self, step: &str, keys: &[u64], res: Option<(u64, u8)>) -> Result<()> {
        self.expect_state_full(step, keys, res, false)
    }

    fn expect_state_full(
        &mut self,
        step: &str,
        keys: &[u64],
        res: Option<(u64, u8)>,
        full: bool,
    ) -> Result<()> {
        let fd = self.a_fd.as_fd();
        let mut got = self
            .client
            .read_keys(fd)
            .map_err(|e| format!("{step}: READ KEYS: {e}"))?
            .keys;
        got.sort();
        let mut want = keys.to_vec();
        want.sort();
        ensure!(got == want, "{step}: keys {got:x?}, expected {want:x?}");
        let r = self
            .client
            .read_reservation(fd)
            .map_err(|e| format!("{step}: READ RESERVATION: {e}"))?
            .reservation
            .map(|r| (r.key, r.pr_type));
        ensure!(r == res, "{step}: reservation {r:x?}, expected {res:x?}");
        self.compare_views(step, full)
    }

    fn full_status(&mut self) -> Result<FullStatus> {
        self.client
            .read_full_status(self.a_fd.as_fd())
            .map_err(|e| format!("READ FULL STATUS: {e}"))
    }

    /// sg_raw WRITE / READ from `who` directly: Ok(true) if it conflicted.
    fn write_conflicts(&self, who: usize) -> Result<bool> {
        let out = sg::write_block(&self.sgn[who], 8, &self.scratch)?;
        conflict_or_ok(out)
    }

    fn read_conflicts(&self, who: usize) -> Result<bool> {
        conflict_or_ok(sg::read_block(&self.sgn[who], 8)?)
    }
}

fn conflict_or_ok(out: Output) -> Result<bool> {
    match out.status {
        0 => Ok(false),
        EXIT_RESERVATION_CONFLICT => Ok(true),
        _ => bail!("{}", out.describe()),
    }
}

fn hex(k: u64) -> String {
    format!("0x{k:x}")
}

pub fn client_actions() -> Result<()> {
    let scratch = scratch_dir("client_actions")?;
    let lun = SharedLun::new("actions", 64 << 20, 3)?;
    let helper = prh::start_prhelper(&scratch.join("pr.sock"), &[])?;
    run(&lun, &helper, &scratch).map_err(with_log(&helper))?;
    let mut helper = helper;
    ensure!(helper.is_running(), "prhelper died:\n{}", helper.log_text());
    helper.stop()?;
    Ok(())
}

/// One named step of the case.
type Step = fn(&mut Ctx) -> Result<()>;

fn run(lun: &SharedLun, helper: &Helper, scratch: &Path) -> Result<()> {
    let dev = |i: usize| lun.device(i);
    let a_fd = open_rw(&dev(A).disk)?;
    let mut x = Ctx {
        sock: helper.socket().to_path_buf(),
        scratch: scratch.to_path_buf(),
        disk: [
            dev(A).disk.clone(),
            dev(B).disk.clone(),
            dev(C).disk.clone(),
        ],
        sgn: [dev(A).sg.clone(), dev(B).sg.clone(), dev(C).sg.clone()],
        wwn: [0, 1, 2].map(|i| lun.targets[i].initiator().to_string()),
        client: prh::connect(helper.socket())?,
        a_fd,
    };
    let steps: [(&str, Step); 10] = [
        ("REPORT CAPABILITIES", report_capabilities),
        ("REGISTER and REGISTER AND IGNORE", register),
        ("RESERVE/RELEASE of every type", every_type),
        ("PREEMPT", preempt),
        ("PREEMPT AND ABORT rejections", preempt_and_abort),
        ("CLEAR", clear),
        ("APTPL", aptpl),
        ("ALL_TG_PT", all_tg_pt),
        ("SPEC_I_PT", spec_i_pt),
        ("REGISTER AND MOVE", register_and_move),
    ];
    for (name, f) in steps {
        step(name, || f(&mut x))?;
    }
    Ok(())
}

fn report_capabilities(x: &mut Ctx) -> Result<()> {
    // REPORT CAPABILITIES: LIO's, all six types, SIP_C/ATP_C/PTPL_C.
    let caps = x
        .client
        .report_capabilities(x.a_fd.as_fd())
        .map_err(|e| e.to_string())?;
    for t in [1, 3, 5, 6, 7, 8] {
        ensure!(
            caps.supports(t),
            "REPORT CAPABILITIES lacks type {t}: {caps:?}"
        );
    }
    ensure!(
        caps.sip_c && caps.atp_c && caps.ptpl_c && !caps.ptpl_a,
        "capabilities {caps:?}"
    );
    x.expect_state_full("empty LU", &[], None, true)?;
    Ok(())
}

fn register(x: &mut Ctx) -> Result<()> {
    let (ka, kb) = (hex(KA), hex(KB));
    // REGISTER (A) and REGISTER AND IGNORE EXISTING KEY (B).
    x.out(A, &["-G", "-S", &ka], 0)?;
    x.out(B, &["-I", "-S", &kb], 0)?;
    x.expect_state("after REGISTER A, REGISTER AND IGNORE B", &[KA, KB], None)?;
    // Wrong key: REGISTER with a reservation key that is not A's.
    x.out(
        A,
        &["-G", "-K", "0x99", "-S", "0x1"],
        EXIT_RESERVATION_CONFLICT,
    )?;
    // REGISTER AND IGNORE replaces A's key whatever it is; then back.
    x.out(A, &["-I", "-S", "0xa2"], 0)?;
    x.expect_state("after REGISTER AND IGNORE A 0xa2", &[0xa2, KB], None)?;
    x.out(A, &["-G", "-K", "0xa2", "-S", &ka], 0)?;
    x.expect_state("after REGISTER A 0xa2 -> KA", &[KA, KB], None)?;
    Ok(())
}

fn every_type(x: &mut Ctx) -> Result<()> {
    let (ka, kb) = (hex(KA), hex(KB));
    // Every reservation type: A reserves; B conflicts (except same-type
    // RESERVE for all-registrants types, where B is a holder too); the
    // fencing of C (unregistered) and B (registered) is what the type says.
    for t in [1u8, 3, 5, 6, 7, 8] {
        let ts = t.to_string();
        let step = format!("type {t}");
        x.out(A, &["-R", "-K", &ka, "-T", &ts], 0)?;
        let all_registrants = t == 7 || t == 8;
        // An all-registrants reservation has no single holder: READ
        // RESERVATION reports key 0 (SPC-4 5.14.10).
        let holder = if all_registrants { 0 } else { KA };
        x.expect_state(
            &format!("{step}: after RESERVE by A"),
            &[KA, KB],
            Some((holder, t)),
        )?;
        // B: RESERVE of the same type; of another type; wrong key.
        let want = if all_registrants {
            0
        } else {
            EXIT_RESERVATION_CONFLICT
        };
        x.out(B, &["-R", "-K", &kb, "-T", &ts], want)?;
        let other = if t == 1 { "3" } else { "1" };
        x.out(
            B,
            &["-R", "-K", &kb, "-T", other],
            EXIT_RESERVATION_CONFLICT,
        )?;
        x.out(
            B,
            &["-R", "-K", "0x77", "-T", &ts],
            EXIT_RESERVATION_CONFLICT,
        )?;
        // I/O fencing, directly on the devices.
        let exclusive_access = matches!(t, 3 | 6 | 8);
        let registrants_ok = t >= 5;
        ensure!(
            x.write_conflicts(C)?,
            "{step}: WRITE from unregistered C went through"
        );
        ensure!(
            x.read_conflicts(C)? == exclusive_access,
            "{step}: READ from unregistered C: conflict should be {exclusive_access}"
        );
        ensure!(
            x.write_conflicts(B)? != registrants_ok,
            "{step}: WRITE from registered B: conflict should be {}",
            !registrants_ok
        );
        ensure!(
            !x.write_conflicts(A)?,
            "{step}: WRITE from holder A conflicted"
        );
        // RELEASE: by non-holder B (no effect, GOOD) unless B is a holder
        // too; A with the wrong type (SPC-4 says ILLEGAL REQUEST 26/04; LIO
        // on 6.1 answers RESERVATION CONFLICT, and logs so); wrong key.
        if !all_registrants {
            x.out(B, &["-L", "-K", &kb, "-T", &ts], 0)?;
            x.expect_state(
                &format!("{step}: after RELEASE by non-holder B"),
                &[KA, KB],
                Some((holder, t)),
            )?;
        }
        x.out(
            A,
            &["-L", "-K", &ka, "-T", other],
            EXIT_RESERVATION_CONFLICT,
        )?;
        x.out(
            A,
            &["-L", "-K", "0x77", "-T", &ts],
            EXIT_RESERVATION_CONFLICT,
        )?;
        x.out(A, &["-L", "-K", &ka, "-T", &ts], 0)?;
        // Releasing a registrants-only / all-registrants reservation tells
        // the other registrants (UNIT ATTENTION 2a/04).
        if t >= 5 {
            x.expect_ua(B, &format!("{step}: B after A's RELEASE"))?;
        }
        x.expect_state(&format!("{step}: after RELEASE by A"), &[KA, KB], None)?;
    }
    Ok(())
}

fn preempt(x: &mut Ctx) -> Result<()> {
    let (ka, kb) = (hex(KA), hex(KB));
    // PREEMPT: B takes A's Write Exclusive reservation, A's key goes; A gets
    // a unit attention. A wrong key conflicts.
    x.out(A, &["-R", "-K", &ka, "-T", "1"], 0)?;
    x.out(
        B,
        &["-P", "-K", "0x77", "-S", &ka, "-T", "1"],
        EXIT_RESERVATION_CONFLICT,
    )?;
    x.out(B, &["-P", "-K", &kb, "-S", &ka, "-T", "1"], 0)?;
    // (The unit attention is per I_T nexus: the CLI took it, so the
    // library connection on A's device does not see it.)
    x.expect_ua(A, "A after being preempted")?;
    x.expect_state("after PREEMPT by B", &[KB], Some((KB, 1)))?;
    ensure!(
        x.write_conflicts(A)?,
        "A's WRITE went through B's reservation"
    );
    Ok(())
}

fn preempt_and_abort(x: &mut Ctx) -> Result<()> {
    let (ka, kb) = (hex(KA), hex(KB));
    // PREEMPT AND ABORT: only its rejection paths (an accepted one can
    // deadlock LIO on this kernel, see lab-facts): wrong key, and from an
    // unregistered initiator.
    x.out(A, &["-G", "-S", &ka], 0)?;
    x.out(
        A,
        &["-A", "-K", "0x55", "-S", &kb, "-T", "1"],
        EXIT_RESERVATION_CONFLICT,
    )?;
    x.out(
        C,
        &["-A", "-K", "0x55", "-S", &kb, "-T", "1"],
        EXIT_RESERVATION_CONFLICT,
    )?;
    x.expect_state(
        "after rejected PREEMPT AND ABORTs",
        &[KA, KB],
        Some((KB, 1)),
    )?;
    Ok(())
}

fn clear(x: &mut Ctx) -> Result<()> {
    let kb = hex(KB);
    // CLEAR: wrong key conflicts; the right one drops everything and the
    // other registrant (A) gets a unit attention.
    x.out(B, &["-C", "-K", "0x77"], EXIT_RESERVATION_CONFLICT)?;
    x.out(B, &["-C", "-K", &kb], 0)?;
    x.expect_ua(A, "A after CLEAR")?;
    x.expect_state("after CLEAR", &[], None)?;
    Ok(())
}

fn aptpl(x: &mut Ctx) -> Result<()> {
    let ka = hex(KA);
    // APTPL: REPORT CAPABILITIES shows PTPL_A, and LIO wrote the state file.
    x.out(A, &["-G", "-Z", "-S", &ka], 0)?;
    let caps = x
        .client
        .report_capabilities(x.a_fd.as_fd())
        .map_err(|e| e.to_string())?;
    ensure!(caps.ptpl_a, "APTPL registration: PTPL_A not set: {caps:?}");
    let pr_dir = Path::new(prhelper_lab::lio::DEFAULT_DBROOT).join("pr");
    let aptpl_file = std::fs::read_dir(&pr_dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .any(|text| text.contains(&x.wwn[A]) && text.contains(&format!("res_key={KA}")));
    ensure!(
        aptpl_file,
        "no APTPL state for A's key under {}",
        pr_dir.display()
    );
    x.expect_state_full("after REGISTER with APTPL", &[KA], None, true)?;
    x.out(A, &["-C", "-K", &ka], 0)?;
    x.expect_state("after CLEAR of the APTPL registration", &[], None)?;
    Ok(())
}

fn all_tg_pt(x: &mut Ctx) -> Result<()> {
    let ka = hex(KA);
    // ALL_TG_PT: the registration is for every target port (RTPI 0).
    x.out(A, &["-G", "-Y", "-S", &ka], 0)?;
    let fs = x.full_status()?;
    ensure!(
        fs.descriptors.len() == 1 && fs.descriptors[0].all_tg_pt && fs.descriptors[0].key == KA,
        "ALL_TG_PT registration: {fs:?}"
    );
    x.expect_state("after REGISTER with ALL_TG_PT", &[KA], None)?;
    x.out(A, &["-C", "-K", &ka], 0)?;
    Ok(())
}

fn spec_i_pt(x: &mut Ctx) -> Result<()> {
    let ka = hex(KA);
    // SPEC_I_PT: A registers itself and B (by B's SAS TransportID).
    let b_tid = x.wwn[B].clone();
    x.out(A, &["-G", "-S", &ka, "-X", &b_tid], 0)?;
    let fs = x.full_status()?;
    let b_sas = prh::sas_tid(&x.wwn[B])?;
    ensure!(
        fs.descriptors
            .iter()
            .any(|d| d.key == KA && d.transport_id() == b_sas),
        "SPEC_I_PT did not register B with A's key: {fs:?}"
    );
    x.expect_state("after SPEC_I_PT registration of A and B", &[KA, KA], None)?;
    // B is registered now: it may reserve with that key.
    x.out(B, &["-R", "-K", &ka, "-T", "1"], 0)?;
    x.expect_state(
        "after RESERVE by SPEC_I_PT-registered B",
        &[KA, KA],
        Some((KA, 1)),
    )?;
    x.out(A, &["-C", "-K", &ka], 0)?;
    x.expect_ua(B, "B after CLEAR")?;
    Ok(())
}

fn register_and_move(x: &mut Ctx) -> Result<()> {
    let (ka, kb) = (hex(KA), hex(KB));
    let b_tid = x.wwn[B].clone();
    let b_sas = prh::sas_tid(&x.wwn[B])?;
    // REGISTER AND MOVE: A moves its reservation to B (unregistered), on B's
    // relative target port (learnt from B's own registration).
    x.out(B, &["-G", "-S", &kb], 0)?;
    let fs = x.full_status()?;
    let b_rtpi = fs
        .descriptors
        .iter()
        .find(|d| d.transport_id() == b_sas)
        .map(|d| d.relative_target_port)
        .ok_or_else(|| format!("B's registration missing: {fs:?}"))?;
    x.out(B, &["-G", "-K", &kb, "-S", "0"], 0)?;
    x.out(A, &["-G", "-S", &ka], 0)?;
    x.out(A, &["-R", "-K", &ka, "-T", "1"], 0)?;
    let rtpi = format!("0x{b_rtpi:x}");
    // Wrong key first.
    x.out(
        A,
        &["-M", "-K", "0x77", "-S", "0xb2", "-Q", &rtpi, "-X", &b_tid],
        EXIT_RESERVATION_CONFLICT,
    )?;
    x.out(
        A,
        &["-M", "-K", &ka, "-S", "0xb2", "-Q", &rtpi, "-X", &b_tid],
        0,
    )?;
    x.expect_state_full(
        "after REGISTER AND MOVE to B",
        &[KA, 0xb2],
        Some((0xb2, 1)),
        true,
    )?;
    let fs = x.full_status()?;
    ensure!(
        fs.descriptors
            .iter()
            .any(|d| d.key == 0xb2 && d.r_holder && d.transport_id() == b_sas),
        "B should hold the moved reservation: {fs:?}"
    );
    ensure!(
        x.write_conflicts(A)?,
        "A's WRITE went through after moving its reservation"
    );
    ensure!(
        !x.write_conflicts(B)?,
        "B's WRITE conflicted though it holds the reservation"
    );
    x.out(B, &["-C", "-K", "0xb2"], 0)?;
    x.expect_ua(A, "A after CLEAR")?;
    x.expect_state("end", &[], None)?;
    Ok(())
}
