// SPDX-License-Identifier: MIT OR Apache-2.0
//! The client library and the prhelper-client binary against an in-test fake helper: a
//! thread that speaks the helper side of the protocol, records what it received (CDB,
//! fds, parameter list) and replies as each test scripts it, including badly.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use prhelper::client::{Client, Error, Phase, RawConn};
use prhelper::proto::wire::ReplyError;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction, PrType};
use prhelper::scsi::prin::{FullStatus, ReadKeys, ReadReservation, Reservation, StatusDescriptor};
use prhelper::scsi::prout::{BasicParams, RegisterMoveParams, TransportId};
use prhelper::scsi::sense::{Sense, SenseCode};
use prhelper::scsi::Status;
use prhelper::sys::fdpass::recv_with_fds;

/// What the fake helper saw in one request.
#[derive(Debug)]
struct Seen {
    cdb: [u8; 16],
    /// Inode of each fd received with the CDB.
    inodes: Vec<u64>,
    /// O_ACCMODE of the first fd.
    accmode: Option<i32>,
    params: Vec<u8>,
}

/// What the fake helper does with a request.
enum Act {
    /// Send these bytes and keep serving.
    Send(Vec<u8>),
    /// Send these bytes, then close the connection.
    SendAndClose(Vec<u8>),
    /// Never answer; wait for the client to go away.
    Hang,
}

fn reply(status: i32, sense: &Sense, data: &[u8]) -> Vec<u8> {
    reply_sized(status, data.len() as u32, sense, data)
}

/// A reply whose size field may lie about the data that follows.
fn reply_sized(status: i32, size: u32, sense: &Sense, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&status.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&sense.0);
    v.extend_from_slice(data);
    v
}

fn good(data: &[u8]) -> Vec<u8> {
    reply(0, &Sense::default(), data)
}

fn check(code: SenseCode) -> Vec<u8> {
    reply(2, &Sense::fixed(code), &[])
}

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    thread: Option<JoinHandle<Vec<Seen>>>,
}

impl Fake {
    /// A helper that sends `features`, reads the client's word, then serves requests with
    /// `handler` until the client disconnects. With `features == None` it closes at once.
    fn start(
        features: Option<u32>,
        mut handler: impl FnMut(&Seen) -> Act + Send + 'static,
    ) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pr.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let Some(f) = features else { return seen };
            s.write_all(&f.to_be_bytes()).unwrap();
            let mut req = [0u8; 4];
            if s.read_exact(&mut req).is_err() {
                return seen;
            }
            assert_eq!(req, [0, 0, 0, 0], "client must request no features");
            while let Some(r) = read_request(&s) {
                let act = handler(&r);
                seen.push(r);
                match act {
                    Act::Send(b) => s.write_all(&b).unwrap(),
                    Act::SendAndClose(b) => {
                        let _ = s.write_all(&b);
                        return seen;
                    }
                    Act::Hang => {
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                        return seen;
                    }
                }
            }
            seen
        });
        Fake {
            _dir: dir,
            path,
            thread: Some(thread),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Wait for the helper thread and return what it saw.
    fn seen(mut self) -> Vec<Seen> {
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("fake helper panicked")
    }
}

/// Read one request as the helper does: 16 bytes with fds, then the PR OUT parameter list.
fn read_request(s: &UnixStream) -> Option<Seen> {
    let mut cdb = [0u8; 16];
    let mut have = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    while have < 16 {
        let r = recv_with_fds(s.as_fd(), &mut cdb[have..], false).ok()?;
        if r.len == 0 {
            return None;
        }
        have += r.len;
        fds.extend(r.fds);
    }
    let inodes = fds
        .iter()
        .map(|fd| {
            std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino()
        })
        .collect();
    let accmode = fds.first().map(|fd| {
        let fl = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            nix::fcntl::FcntlArg::F_GETFL,
        )
        .unwrap();
        fl & libc::O_ACCMODE
    });
    let mut params = Vec::new();
    if cdb[0] == 0x5f {
        params.resize(usize::from(u16::from_be_bytes([cdb[7], cdb[8]])), 0);
        let mut r = s;
        r.read_exact(&mut params).ok()?;
    }
    Some(Seen {
        cdb,
        inodes,
        accmode,
        params,
    })
}

fn padded(cdb: [u8; 10]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..10].copy_from_slice(&cdb);
    c
}

/// A file standing in for the disk, and its inode.
fn disk() -> (tempfile::NamedTempFile, u64) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let ino = f.as_file().metadata().unwrap().ino();
    (f, ino)
}

#[test]
fn read_keys_sends_cdb_and_fd_and_decodes() {
    let data = ReadKeys {
        generation: 3,
        keys: vec![1, 0x1234],
    }
    .encode();
    let fake = Fake::start(Some(0), move |_| Act::Send(good(&data)));
    let (f, ino) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    assert_eq!(c.helper_features(), 0);
    let keys = c.read_keys(f.as_file().as_fd()).unwrap();
    assert_eq!(
        keys,
        ReadKeys {
            generation: 3,
            keys: vec![1, 0x1234]
        }
    );
    drop(c);
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].cdb, padded(cdb::pr_in(PrInAction::ReadKeys, 8192)));
    assert_eq!(seen[0].cdb[..10], [0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]);
    assert_eq!(seen[0].inodes, vec![ino]);
}

#[test]
fn every_typed_helper_and_one_fd_per_request() {
    let rr = ReadReservation {
        generation: 1,
        reservation: Some(Reservation {
            key: 9,
            scope: 0,
            pr_type: 5,
        }),
    };
    let fs = FullStatus {
        generation: 1,
        descriptors: vec![StatusDescriptor {
            key: 9,
            r_holder: true,
            pr_type: 5,
            transport_id: TransportId::Sas {
                address: 0x5001405000000001,
            }
            .encode(),
            ..Default::default()
        }],
    };
    let caps = [0, 8, 0x0d, 0x90, 0xea, 0x01, 0, 0];
    let (rr2, fs2) = (rr.encode(), fs.encode());
    let fake = Fake::start(Some(0), move |s| {
        Act::Send(match (s.cdb[0], s.cdb[1]) {
            (0x5e, 1) => good(&rr2),
            (0x5e, 2) => good(&caps),
            (0x5e, 3) => good(&fs2),
            (0x5f, _) => good(&[]),
            _ => check(SenseCode::INVALID_FIELD),
        })
    });
    let (f, ino) = disk();
    let dev = f.as_file().as_fd();
    let mut c = Client::connect(fake.path()).unwrap();
    assert_eq!(c.read_reservation(dev).unwrap(), rr);
    let cap = c.report_capabilities(dev).unwrap();
    assert!(cap.sip_c && cap.atp_c && cap.ptpl_c && cap.tmv && cap.supports(8));
    assert_eq!(c.read_full_status(dev).unwrap(), fs);
    let params = BasicParams {
        key: 0,
        sa_key: 0xabc,
        aptpl: true,
        ..Default::default()
    }
    .encode();
    c.pr_out(dev, PrOutAction::Register, None, &params).unwrap();
    let mv = RegisterMoveParams {
        key: 0xabc,
        sa_key: 0xdef,
        unreg: true,
        aptpl: false,
        relative_target_port: 2,
        transport_id: TransportId::parse("naa.5001405000000002").unwrap(),
    }
    .encode();
    c.pr_out(
        dev,
        PrOutAction::RegisterAndMove,
        Some(PrType::ExclusiveAccessAllRegistrants),
        &mv,
    )
    .unwrap();
    drop(c);
    let seen = fake.seen();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert_eq!(s.inodes, vec![ino], "one fd with every request");
    }
    assert_eq!(seen[3].cdb[..10], [0x5f, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0]);
    assert_eq!(seen[3].params, params);
    assert_eq!(seen[3].params[20], 0x01);
    assert_eq!(seen[4].cdb[..3], [0x5f, 0x07, 0x08]);
    assert_eq!(seen[4].params, mv);
    assert_eq!(seen[4].params.len(), 48);
}

#[test]
fn non_good_statuses_are_responses_or_scsi_errors() {
    let mut n = 0;
    let fake = Fake::start(Some(0), move |_| {
        n += 1;
        Act::Send(match n {
            1 => reply(0x18, &Sense::default(), &[]),
            2 => check(SenseCode::INVALID_FIELD),
            _ => reply(0x18, &Sense::default(), &[]),
        })
    });
    let (f, _) = disk();
    let dev = f.as_file().as_fd();
    let mut c = Client::connect(fake.path()).unwrap();
    let r = c
        .execute(
            dev,
            &cdb::pr_out(PrOutAction::Reserve, 0, 3, 24),
            &[0; 24],
            0,
        )
        .unwrap();
    assert_eq!(r.status, Status::RESERVATION_CONFLICT);
    assert_eq!(prhelper::sg3::category(r.status, &r.sense), 24);
    let r = c.pr_in(dev, PrInAction::ReadKeys, 64).unwrap();
    assert_eq!(r.status, Status::CHECK_CONDITION);
    assert_eq!(r.sense_data().unwrap().code, SenseCode::INVALID_FIELD);
    assert!(r.data.is_empty());
    assert_eq!(prhelper::sg3::category(r.status, &r.sense), 5);
    // Typed helpers turn non-GOOD into Error::Scsi; the connection stays usable.
    let e = c
        .pr_out(
            dev,
            PrOutAction::Release,
            Some(PrType::ExclusiveAccess),
            &[0; 24],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Scsi {
                status: Status::RESERVATION_CONFLICT,
                ..
            }
        ),
        "{e}"
    );
    assert!(!c.is_broken());
    drop(c);
    assert_eq!(fake.seen().len(), 3);
}

#[test]
fn oversized_reply_is_an_error_not_a_panic() {
    let fake = Fake::start(Some(0), |_| Act::Send(good(&[0u8; 64])));
    let (f, _) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 32)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidReply(ReplyError::BadSize { size: 64, max: 32 })
        ),
        "{e}"
    );
    assert!(c.is_broken());
    assert!(matches!(
        c.pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 32),
        Err(Error::Broken)
    ));
}

#[test]
fn huge_size_field_allocates_nothing() {
    let fake = Fake::start(Some(0), |_| {
        Act::SendAndClose(reply_sized(0, u32::MAX, &Sense::default(), &[]))
    });
    let (f, _) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 8192)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidReply(ReplyError::BadSize { size: u32::MAX, .. })
        ),
        "{e}"
    );
}

#[test]
fn data_with_pr_out_or_bad_status_is_invalid() {
    let mut n = 0;
    let fake = Fake::start(Some(0), move |_| {
        n += 1;
        Act::Send(if n == 1 {
            good(&[0u8; 8])
        } else {
            reply(0x100, &Sense::default(), &[])
        })
    });
    let (f, _) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    let e = c
        .pr_out(f.as_file().as_fd(), PrOutAction::Register, None, &[0; 24])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidReply(ReplyError::BadSize { size: 8, max: 0 })
        ),
        "{e}"
    );
    drop(c);
    let fake2 = Fake::start(Some(0), |_| Act::Send(reply(0x100, &Sense::default(), &[])));
    let mut c = Client::connect(fake2.path()).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 8)
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidReply(ReplyError::BadStatus(0x100))),
        "{e}"
    );
}

#[test]
fn helper_closing_mid_reply() {
    // Header says 24 bytes, only 10 follow.
    let fake = Fake::start(Some(0), |_| {
        let mut b = reply_sized(0, 24, &Sense::default(), &[0u8; 10]);
        b.truncate(104 + 10);
        Act::SendAndClose(b)
    });
    let (f, _) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 24)
        .unwrap_err();
    assert!(matches!(e, Error::Closed(Phase::ReplyData)), "{e}");
    assert!(e.to_string().contains("closed the connection"), "{e}");

    // Half a header.
    let fake = Fake::start(Some(0), |_| Act::SendAndClose(good(&[])[..50].to_vec()));
    let mut c = Client::connect(fake.path()).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 24)
        .unwrap_err();
    assert!(matches!(e, Error::Closed(Phase::ReplyHeader)), "{e}");
}

#[test]
fn helper_rejecting_a_request_by_closing() {
    let fake = Fake::start(Some(0), |_| Act::SendAndClose(vec![]));
    let (f, _) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 8)
        .unwrap_err();
    assert!(matches!(e, Error::Closed(Phase::ReplyHeader)), "{e}");
    // A further request fails without touching the socket.
    assert!(matches!(
        c.pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 8),
        Err(Error::Broken)
    ));
}

#[test]
fn helper_closing_during_handshake() {
    let fake = Fake::start(None, |_| Act::Hang);
    let e = Client::connect(fake.path()).unwrap_err();
    assert!(matches!(e, Error::Closed(Phase::Handshake)), "{e}");
}

#[test]
fn connect_failure() {
    let dir = tempfile::tempdir().unwrap();
    let e = Client::connect(dir.path().join("nope.sock")).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("nope.sock"));
}

#[test]
fn read_timeout() {
    let fake = Fake::start(Some(0), |_| Act::Hang);
    let (f, _) = disk();
    let mut c =
        Client::connect_with_timeouts(fake.path(), Some(Duration::from_millis(200)), None).unwrap();
    let e = c
        .pr_in(f.as_file().as_fd(), PrInAction::ReadKeys, 8)
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(Phase::ReplyHeader)), "{e}");
}

#[test]
fn nonzero_helper_features_are_read_and_none_requested() {
    let fake = Fake::start(Some(1), |_| Act::Send(good(&[0; 8])));
    let (f, _) = disk();
    let mut c = Client::connect(fake.path()).unwrap();
    assert_eq!(c.helper_features(), 1);
    c.read_keys(f.as_file().as_fd()).unwrap();
}

#[test]
fn raw_conn_can_misbehave() {
    let fake = Fake::start(Some(0), |_| Act::SendAndClose(vec![]));
    let (f, ino) = disk();
    let (g, ino2) = disk();
    let mut raw = RawConn::connect(fake.path()).unwrap();
    assert_eq!(raw.handshake().unwrap(), 0);
    // A CDB in two pieces with two fds on the first piece.
    let cdb = padded(cdb::pr_in(PrInAction::ReadKeys, 8));
    assert_eq!(
        raw.send_with_fds(&cdb[..3], &[f.as_file().as_fd(), g.as_file().as_fd()])
            .unwrap(),
        3
    );
    raw.send_all(&cdb[3..]).unwrap();
    assert!(raw.wait_closed(Duration::from_secs(5)).unwrap());
    let seen = fake.seen();
    assert_eq!(seen[0].inodes, vec![ino, ino2]);
    assert_eq!(seen[0].cdb, cdb);
}

// ---------------------------------------------------------------------------------------
// The prhelper-client binary.

/// `prhelper-client ARGS` on a scratch file against a fake helper that answers GOOD
/// with no data; asserts exit status 0. Returns the fake (for what it saw) and the output.
fn cli_good(args: &[&str]) -> (Fake, Output) {
    let fake = Fake::start(Some(0), |_| Act::Send(good(&[])));
    let (f, _) = disk();
    let o = cli(&fake, f.path(), args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (fake, o)
}

fn cli(fake: &Fake, dev: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prhelper-client"))
        .arg("-k")
        .arg(fake.path())
        .args(args)
        .arg(dev)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_read_keys() {
    let data = ReadKeys {
        generation: 3,
        keys: vec![1, 2],
    }
    .encode();
    let fake = Fake::start(Some(0), move |_| Act::Send(good(&data)));
    let (f, ino) = disk();
    let o = cli(&fake, f.path(), &["--in", "--read-keys"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "  PR generation=0x3, 2 registered reservation keys follow:\n    0x1\n    0x2\n"
    );
    let seen = fake.seen();
    assert_eq!(seen[0].inodes, vec![ino]);
    assert_eq!(
        seen[0].accmode,
        Some(libc::O_RDONLY),
        "PR In opens read-only"
    );
    assert_eq!(seen[0].cdb[..10], [0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]);
}

#[test]
fn cli_default_is_read_keys_with_alloc_length() {
    let fake = Fake::start(Some(0), |_| Act::Send(good(&[0, 0, 0, 0, 0, 0, 0, 0])));
    let (f, _) = disk();
    let o = cli(&fake, f.path(), &["-l", "40"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "  PR generation=0x0, there are NO registered reservation keys\n"
    );
    assert!(stderr(&o).contains("No service action given"));
    assert_eq!(fake.seen()[0].cdb[7..9], [0, 0x40]);
}

#[test]
fn cli_read_reservation_and_full_status() {
    let rr = ReadReservation {
        generation: 7,
        reservation: Some(Reservation {
            key: 0xab,
            scope: 0,
            pr_type: 3,
        }),
    }
    .encode();
    let fake = Fake::start(Some(0), move |_| Act::Send(good(&rr)));
    let (f, _) = disk();
    let o = cli(&fake, f.path(), &["-r"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "  PR generation=0x7, Reservation follows:\n    Key=0xab\n    scope: LU_SCOPE,  type: Exclusive Access\n");

    let fs = FullStatus {
        generation: 2,
        descriptors: vec![StatusDescriptor {
            key: 0xab,
            r_holder: true,
            pr_type: 3,
            relative_target_port: 1,
            transport_id: TransportId::Sas {
                address: 0x5001405000000001,
            }
            .encode(),
            ..Default::default()
        }],
    }
    .encode();
    let fake = Fake::start(Some(0), move |_| Act::Send(good(&fs)));
    let o = cli(&fake, f.path(), &["--read-full-status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "  PR generation=0x2\n    Key=0xab\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Exclusive Access\n      Transport Id of initiator:\n        SAS address: 0x5001405000000001\n"
    );
}

#[test]
fn cli_hex_output() {
    let data = ReadKeys {
        generation: 4,
        keys: vec![1],
    }
    .encode();
    let fake = Fake::start(Some(0), move |_| Act::Send(good(&data)));
    let (f, _) = disk();
    let o = cli(&fake, f.path(), &["-H"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "  PR generation=0x4, Additional length=8\n 00     00 00 00 00 00 00 00 01\n"
    );
}

#[test]
fn cli_register_sends_parameter_list_read_write() {
    let (fake, o) = cli_good(&[
        "--out",
        "--register",
        "--param-sark=0x1234",
        "-Z",
        "-X",
        "sas,5001405000000001",
    ]);
    assert_eq!(stdout(&o), "");
    let seen = fake.seen();
    assert_eq!(
        seen[0].accmode,
        Some(libc::O_RDWR),
        "PR Out opens read-write"
    );
    assert_eq!(seen[0].cdb[..10], [0x5f, 0, 0, 0, 0, 0, 0, 0, 52, 0]);
    let p = BasicParams::decode(&seen[0].params).unwrap();
    assert_eq!(
        p,
        BasicParams {
            key: 0,
            sa_key: 0x1234,
            all_tg_pt: false,
            aptpl: true,
            transport_ids: Some(vec![TransportId::Sas {
                address: 0x5001405000000001
            }]),
        }
    );
}

#[test]
fn cli_reserve_type_scope_and_forced_readonly() {
    let (fake, _) = cli_good(&["-o", "-R", "-K", "abc", "-T", "6", "--scope", "2", "-y"]);
    let seen = fake.seen();
    assert_eq!(seen[0].accmode, Some(libc::O_RDONLY), "-y forces read-only");
    assert_eq!(seen[0].cdb[..3], [0x5f, 0x01, 0x26]);
    assert_eq!(seen[0].params[..8], 0xabcu64.to_be_bytes());
}

#[test]
fn cli_register_move() {
    let (fake, _) = cli_good(&[
        "-o",
        "-M",
        "-K",
        "1",
        "-S",
        "2",
        "-T",
        "1",
        "-U",
        "-Q",
        "3",
        "-X",
        "naa.5001405000000002",
    ]);
    let seen = fake.seen();
    assert_eq!(seen[0].cdb[..3], [0x5f, 0x07, 0x01]);
    let p = RegisterMoveParams::decode(&seen[0].params).unwrap();
    assert_eq!(
        p,
        RegisterMoveParams {
            key: 1,
            sa_key: 2,
            unreg: true,
            aptpl: false,
            relative_target_port: 3,
            transport_id: TransportId::Sas {
                address: 0x5001405000000002
            },
        }
    );
}

#[test]
fn cli_exit_codes_follow_sg3_utils() {
    let cases: Vec<(Vec<u8>, i32, &str)> = vec![
        (
            reply(0x18, &Sense::default(), &[]),
            24,
            "Reservation conflict",
        ),
        (check(SenseCode::INVALID_FIELD), 5, "bad field in cdb"),
        (check(SenseCode::INVALID_OPCODE), 9, "command not supported"),
        (check(SenseCode::RESET), 6, "Unit attention"),
        (check(SenseCode::NOT_READY), 2, "Device not ready"),
        (
            check(SenseCode::TARGET_FAILURE),
            3,
            "Medium or hardware error",
        ),
        (check(SenseCode::LUN_COMM_FAILURE), 11, "Aborted command"),
        (reply(0x08, &Sense::default(), &[]), 26, "Busy"),
        (reply(0x28, &Sense::default(), &[]), 27, "Task set full"),
        (reply(0x02, &Sense::default(), &[]), 98, "other sense"),
        (reply(0x22, &Sense::default(), &[]), 99, "other error"),
    ];
    let (f, _) = disk();
    for (bytes, code, text) in cases {
        let fake = Fake::start(Some(0), move |_| Act::Send(bytes.clone()));
        let o = cli(&fake, f.path(), &["-o", "-G", "-S", "1"]);
        assert_eq!(o.status.code(), Some(code), "{text}: {}", stderr(&o));
        assert!(stderr(&o).contains(text), "{text}: {}", stderr(&o));
    }
    // The decoded sense is printed.
    let fake = Fake::start(Some(0), |_| Act::Send(check(SenseCode::INVALID_FIELD)));
    let o = cli(&fake, f.path(), &["-c"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(
        stderr(&o).contains("Illegal Request: Invalid field in cdb (asc=0x24, ascq=0x00)"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("PR in (Report capabilities)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cli_connection_failures() {
    let (f, _) = disk();
    // Helper closes the connection instead of replying.
    let fake = Fake::start(Some(0), |_| Act::SendAndClose(vec![]));
    let o = cli(&fake, f.path(), &[]);
    assert_eq!(o.status.code(), Some(16), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("helper closed the connection"),
        "{}",
        stderr(&o)
    );
    // Oversized reply.
    let fake = Fake::start(Some(0), |_| Act::Send(good(&[0u8; 100])));
    let o = cli(&fake, f.path(), &["-m", "64"]);
    assert_eq!(o.status.code(), Some(97), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid reply"), "{}", stderr(&o));
    // Malformed capabilities.
    let fake = Fake::start(Some(0), |_| Act::Send(good(&[0, 4, 0, 0])));
    let o = cli(&fake, f.path(), &["-c"]);
    assert_eq!(o.status.code(), Some(97), "{}", stderr(&o));
    // No helper at all.
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_prhelper-client"))
        .arg("-k")
        .arg(dir.path().join("none.sock"))
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    // No device.
    let o = Command::new(env!("CARGO_BIN_EXE_prhelper-client"))
        .arg(dir.path().join("no-such-disk"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", stderr(&o));
    assert!(stderr(&o).contains("error opening file"), "{}", stderr(&o));
    // Timeout.
    let fake = Fake::start(Some(0), |_| Act::Hang);
    let o = cli(&fake, f.path(), &["--timeout", "0.2"]);
    assert_eq!(o.status.code(), Some(15), "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
}

#[test]
fn cli_syntax_errors() {
    let bin = env!("CARGO_BIN_EXE_prhelper-client");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    for args in [
        &["--out", "/dev/null"][..],
        &["--out", "-G", "-R", "/dev/null"],
        &["-G", "/dev/null"],
        &["-r", "-c", "/dev/null"],
        &["-i", "-o", "-G", "/dev/null"],
        &["-o", "-G", "-U", "/dev/null"],
        &["-o", "-M", "/dev/null"],
        &["-T", "10", "/dev/null"],
        &["-l", "2001", "/dev/null"],
        &["-X", "sas,12", "-o", "-G", "/dev/null"],
        &["--bogus", "/dev/null"],
        &[],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for s in [
        "--socket",
        "/var/run/qemu-pr-helper.sock",
        "24  reservation conflict",
        "16  helper closed",
    ] {
        assert!(help.contains(s), "help lacks {s:?}");
    }
}

#[test]
fn reconnect_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        // First connection: reject the request by closing. Second: answer it.
        for answer in [None, Some(good(&[0, 0, 0, 9, 0, 0, 0, 0]))] {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&[0; 4]).unwrap();
            let mut f = [0u8; 4];
            s.read_exact(&mut f).unwrap();
            read_request(&s).unwrap();
            if let Some(b) = answer {
                s.write_all(&b).unwrap();
            }
        }
    });
    let (f, _) = disk();
    let mut c = Client::connect(&path).unwrap();
    assert!(matches!(
        c.read_keys(f.as_file().as_fd()),
        Err(Error::Closed(_))
    ));
    assert!(c.is_broken());
    c.reconnect().unwrap();
    assert!(!c.is_broken());
    assert_eq!(c.read_keys(f.as_file().as_fd()).unwrap().generation, 9);
    t.join().unwrap();
}
