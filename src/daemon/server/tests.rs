// SPDX-License-Identifier: MIT OR Apache-2.0
//! Unit tests of the server's internals: session slots, claim and give-back, pipelining.

use std::os::fd::AsFd;

use super::pool::*;
use super::serve::*;
use super::sessions::*;
use super::*;
use crate::daemon::handler;
use crate::dev::{Device, Outcome};
use crate::proto::wire::MAX_DATA;
use crate::proto::wire::REPLY_HEADER_SIZE;
use crate::proto::ReplyHeader;
use crate::scsi::sense::Sense;
use crate::scsi::Status;
use crate::sys::fdpass;

/// Answers GOOD with no data.
struct Good;

impl Backend for Good {
    fn pr_in(&self, _: Device<'_>, _: &[u8; 16], _: &mut [u8]) -> Outcome {
        Outcome {
            status: Status::GOOD,
            sense: Sense::default(),
            len: 0,
        }
    }
    fn pr_out(&self, _: Device<'_>, _: &[u8; 16], _: &[u8]) -> Outcome {
        Outcome {
            status: Status::GOOD,
            sense: Sense::default(),
            len: 0,
        }
    }
}

/// READ KEYS, allocation length 0: the reply is a bare header.
const READ_KEYS: [u8; 16] = [0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn server(cfg: Config) -> (Server, tempfile::TempDir, std::path::PathBuf, UnixStream) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (sig_rd, sig_wr) = UnixStream::pair().unwrap();
    let s = Server::new(listener, sig_rd, Box::new(Good), cfg, Box::new(|| {})).unwrap();
    (s, dir, path, sig_wr)
}

/// A connected client, handshake sent (not yet read by the server).
fn client(path: &std::path::Path) -> UnixStream {
    let c = UnixStream::connect(path).unwrap();
    handshake(&c);
    c
}

fn handshake(c: &UnixStream) {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 4];
    (&*c).read_exact(&mut hello).unwrap();
    (&*c).write_all(&0u32.to_be_bytes()).unwrap();
}

/// A client accepted and registered by hand (no worker runs): session 0.
fn manual_client(shared: &Arc<Shared>, path: &std::path::Path) -> UnixStream {
    let c = UnixStream::connect(path).unwrap();
    let (stream, _) = shared
        .listener
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .accept()
        .unwrap();
    add_session(shared, stream);
    handshake(&c);
    c
}

fn send_request(c: &UnixStream) {
    let dev = std::fs::File::open("/dev/null").unwrap();
    let n = fdpass::send_with_fds(c.as_fd(), &READ_KEYS, &[dev.as_fd()], false).unwrap();
    assert_eq!(n, 16);
}

fn read_reply(c: &UnixStream) {
    let mut h = [0u8; REPLY_HEADER_SIZE];
    (&*c)
        .read_exact(&mut h)
        .expect("a reply (a lost event leaves the client waiting)");
    let h = ReplyHeader::decode(&h, 0).unwrap();
    assert_eq!((h.status, h.size), (Status::GOOD, 0));
}

fn scratch() -> Scratch {
    Scratch {
        read: vec![0; MAX_DATA].into_boxed_slice(),
        data: vec![0; handler::PR_IN_BUFFER].into_boxed_slice(),
        slot: Arc::new(WorkerSlot::new()),
    }
}

/// The edge-triggered hand-off, step by step on one thread: an event for a
/// connection that a worker holds makes that worker read again before it gives the
/// connection back; without one it just gives it back.
#[test]
fn event_while_held_makes_the_holder_read_again() {
    let (server, _dir, path, _stop) = server(Config::default());
    let shared = &server.shared;
    let c = manual_client(shared, &path);
    let mut scratch = scratch();
    // The owner takes it and reads the handshake, then finds the socket empty.
    let mut s = claim(shared, 0).expect("an idle session");
    assert!(matches!(
        read_and_execute(shared, &mut s, &mut scratch),
        Next::Idle
    ));
    // Nothing came meanwhile: it goes back idle.
    assert!(give_back(shared, 0, s, Next::Idle).is_none());
    assert!(matches!(*shared.sessions.slot(0).unwrap(), Slot::Idle(_)));

    let mut s = claim(shared, 0).expect("an idle session");
    assert!(matches!(
        read_and_execute(shared, &mut s, &mut scratch),
        Next::Idle
    ));
    // A request arrives after the owner's last read, before it lets go; another
    // worker gets the event and must leave the session to its holder.
    send_request(&c);
    assert!(claim(shared, 0).is_none());
    assert!(matches!(
        *shared.sessions.slot(0).unwrap(),
        Slot::Busy { again: true }
    ));
    let mut s = give_back(shared, 0, s, Next::Idle).expect("told to read again");
    assert!(matches!(
        read_and_execute(shared, &mut s, &mut scratch),
        Next::Idle
    ));
    read_reply(&c);
    assert!(give_back(shared, 0, s, Next::Idle).is_none());
    assert_eq!(scratch.slot.commands.load(Ordering::Relaxed), 1);
}

/// A stuck worker's unstarted event for a connection another worker holds is not
/// dropped by the supervisor: the holder reads again.
#[test]
fn handed_back_event_for_a_held_connection_is_not_lost() {
    let (server, _dir, path, _stop) = server(Config::default());
    let shared = &server.shared;
    let _c = manual_client(shared, &path);
    let s = claim(shared, 0).unwrap();
    hand_back(shared, FIRST_SESSION);
    assert!(give_back(shared, 0, s, Next::Idle).is_some());
}

/// Requests sent back to back without waiting for replies, more than one worker
/// serves in a row: every one is answered, in order.
#[test]
fn pipelined_requests_are_all_answered() {
    let (server, _dir, path, _stop) = server(Config::default());
    server.spawn_workers().unwrap();
    let c = client(&path);
    let n = 3 * IN_A_ROW + 1;
    for _ in 0..n {
        send_request(&c);
    }
    for _ in 0..n {
        read_reply(&c);
    }
    // And the connection still works one request at a time.
    send_request(&c);
    read_reply(&c);
}

/// Many workers, clients that pipeline 1 to 3 requests at a time: a lost edge (an
/// event dropped while another worker held the connection) would leave a client
/// waiting for a reply forever (here: the 20 s read timeout fails the test).
#[test]
fn no_event_is_lost_with_many_workers() {
    let (server, _dir, path, _stop) = server(Config {
        min_spare: 6,
        ..Config::default()
    });
    server.spawn_workers().unwrap();
    let clients: Vec<_> = (0..8u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let c = client(&path);
                let mut rng = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut done = 0;
                while done < 3000 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let depth = 1 + (rng % 3) as usize;
                    for _ in 0..depth {
                        send_request(&c);
                    }
                    for _ in 0..depth {
                        read_reply(&c);
                    }
                    done += depth;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(server.shared.refresh_stats().2 >= 24_000);
}

#[test]
fn sessions_reuse_indexes() {
    let s = Sessions::new();
    let a = s.alloc().unwrap();
    let b = s.alloc().unwrap();
    assert_ne!(a, b);
    assert_eq!(s.alloc.lock().unwrap().live, 2);
    s.release(a);
    assert_eq!(s.alloc().unwrap(), a);
    assert!(
        s.slot(b).unwrap().take().is_none(),
        "a free slot yields nothing"
    );
    *s.slot(b).unwrap() = Slot::Busy { again: false };
    assert!(
        s.slot(b).unwrap().take().is_none(),
        "a busy slot yields nothing"
    );
    assert!(s.slot(CHUNK * CHUNKS).is_none());
    assert!(s.slot(CHUNK + 5).is_none(), "no chunk allocated there yet");
}
