// SPDX-License-Identifier: MIT OR Apache-2.0
//! Micro-benchmarks of the pure protocol layer: decoding a full request and encoding a
//! reply header.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use prhelper::proto::{Conn, Reply, RequestKind};
use prhelper::scsi::sense::{Sense, SenseCode};
use prhelper::scsi::Status;

fn read_keys() -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5e;
    cdb[7..9].copy_from_slice(&1024u16.to_be_bytes());
    cdb
}

fn ready_conn() -> Conn<u32> {
    let mut c = Conn::new(0);
    c.feed(&[0, 0, 0, 0], vec![]).expect("handshake");
    c
}

fn decoder(c: &mut Criterion) {
    let cdb = read_keys();
    let mut conn = ready_conn();
    c.bench_function("Conn::feed full PR IN request (16-byte CDB + fd)", |b| {
        b.iter(|| {
            let req = conn
                .feed(black_box(&cdb), vec![black_box(3)])
                .expect("valid request")
                .expect("complete request");
            black_box(req)
        })
    });
}

fn encoder(c: &mut Criterion) {
    let mut conn = ready_conn();
    let req = conn
        .feed(&read_keys(), vec![3])
        .expect("valid")
        .expect("complete");
    let RequestKind::PrIn { alloc } = req.kind else {
        unreachable!("a PR IN CDB")
    };
    let sense = Sense::fixed(SenseCode::COMMAND_ABORTED);
    let data = [0xa5u8; 24];
    c.bench_function("Reply::pr_in(..).header() CHECK CONDITION", |b| {
        b.iter(|| {
            let r = Reply::pr_in(
                black_box(Status::CHECK_CONDITION),
                black_box(&sense),
                black_box(&[]),
                alloc,
            );
            black_box(r.header())
        })
    });
    c.bench_function("Reply::pr_in(..).header() GOOD with 24 bytes", |b| {
        b.iter(|| {
            let r = Reply::pr_in(
                black_box(Status::GOOD),
                black_box(&sense),
                black_box(&data),
                alloc,
            );
            black_box(r.header())
        })
    });
}

criterion_group!(benches, decoder, encoder);
criterion_main!(benches);
