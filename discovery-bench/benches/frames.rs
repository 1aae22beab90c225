//! Micro-benchmarks of the wire format: encoding and decoding whole frames (length prefix
//! and bincode payload) with the protocol crate's codecs, as the server and the clients do.
//!
//! Run with `cargo bench -p discovery-bench --features micro --bench frames`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use discovery_proto::codec::{ClientCodec, ServerCodec};
use discovery_proto::{ClientFrame, Entry, Metadata, Request, Response, ServerFrame};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

fn heartbeat() -> ClientFrame {
    ClientFrame::new(
        42,
        Request::Heartbeat {
            id: Uuid::new_v4(),
            min_revision: None,
        },
    )
}

fn metadata() -> Metadata {
    [
        ("version", "1.42.0"),
        ("zone", "eu-west-1b"),
        ("weight", "100"),
        ("protocol", "grpc"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn register() -> ClientFrame {
    ClientFrame::new(
        43,
        Request::Register {
            service_type: "billing".into(),
            ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            port: 8080,
            metadata: metadata(),
            ttl: None,
        },
    )
}

/// The answer to a query of a type with 100 instances, each with one metadata pair.
fn instances() -> ServerFrame {
    let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let instances = (0..100u8)
        .map(|i| Entry {
            id: Uuid::new_v4(),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
            port: 8080,
            metadata: [("zone".to_owned(), "eu-west-1b".to_owned())].into(),
            last_heartbeat: at,
        })
        .collect();
    ServerFrame::new(
        44,
        Response::Instances {
            service_type: "billing".into(),
            stale_ms: None,
            instances,
            more: false,
        },
    )
}

/// Benchmarks encoding `frame` with `encoder` and decoding the bytes with `decoder`.
fn encode_decode<F, E, D>(c: &mut Criterion, name: &str, frame: F, mut encoder: E, mut decoder: D)
where
    F: Clone + PartialEq + std::fmt::Debug,
    E: for<'a> Encoder<&'a F, Error = discovery_proto::Error>,
    D: Decoder<Item = Result<F, discovery_proto::Error>, Error = discovery_proto::Error>,
{
    let mut wire = BytesMut::new();
    encoder.encode(&frame, &mut wire).expect("encodes");
    let wire = wire.freeze();
    let mut group = c.benchmark_group(format!("frame/{name}"));
    group.throughput(Throughput::Bytes(wire.len() as u64));

    let mut out = BytesMut::with_capacity(wire.len() * 2);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encoder
                .encode(black_box(&frame), &mut out)
                .expect("encodes");
            black_box(out.len())
        })
    });

    let mut check = BytesMut::from(&wire[..]);
    let decoded = decoder.decode(&mut check).expect("frames").expect("whole");
    assert_eq!(decoded.expect("decodes"), frame);
    group.bench_function("decode", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| decoder.decode(black_box(buf)).expect("frames"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    encode_decode(
        c,
        "heartbeat",
        heartbeat(),
        ClientCodec::default(),
        ServerCodec::default(),
    );
    encode_decode(
        c,
        "register_4_metadata",
        register(),
        ClientCodec::default(),
        ServerCodec::default(),
    );
    encode_decode(
        c,
        "instances_100",
        instances(),
        ServerCodec::default(),
        ClientCodec::default(),
    );
}

criterion_group!(benches, frames);
criterion_main!(benches);
