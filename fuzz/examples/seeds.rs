//! Writes the seed corpora of the fuzz targets into `seeds/<target>/`: real frames, so that
//! the fuzzer starts past the framing. Run from `fuzz/`: `cargo run --example seeds`.

use std::path::Path;

use discovery_fuzz::{
    Setup, client_frame, framed, hello, sample_requests, sample_responses, server_frame,
};
use discovery_proto::{ClientFrame, Request, encoding};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");

    // frame_decode: each message as a bare payload and as a framed stream, and all of the
    // requests one after another.
    let mut decode = Vec::new();
    let mut all = Vec::new();
    for (n, request) in sample_requests().into_iter().enumerate() {
        let payload = encoding::encode(&ClientFrame::new(n as u64 + 1, request)).expect("encodes");
        all.extend(framed(&payload));
        decode.push(framed(&payload));
        decode.push(payload);
    }
    for (n, response) in sample_responses().into_iter().enumerate() {
        let frame = server_frame(n as u64 + 1, response);
        decode.push(frame[4..].to_vec());
        decode.push(frame);
    }
    decode.push(all);
    decode.push(vec![0xff, 0xff, 0xff, 0xff]);
    for payload in lying_lengths() {
        decode.push(framed(&payload));
        decode.push(payload);
    }
    write(&root.join("frame_decode"), &decode)?;

    // connection: each request after the Hello the target adds, through each pipe size;
    // all of them pipelined; a stream with no Hello; a watch that sees a register.
    let mut connection = Vec::new();
    let greeted = |capacity: usize, small_frames: bool| {
        Setup {
            hello: true,
            pipe_capacity: capacity,
            small_frames,
            shut_down: false,
        }
        .to_byte()
    };
    for (n, request) in sample_requests().into_iter().enumerate() {
        let mut input = vec![greeted(8192, false)];
        input.extend(client_frame(n as u64 + 2, request));
        connection.push(input);
    }
    for (capacity, small) in [(1, false), (7, true), (64, false), (8192, true)] {
        let mut input = vec![greeted(capacity, small)];
        for (n, request) in sample_requests().into_iter().skip(2).enumerate() {
            input.extend(client_frame(n as u64 + 2, request));
        }
        connection.push(input);
    }
    let mut goodbye = vec![
        Setup {
            shut_down: true,
            ..Setup::parse(&[greeted(64, false)]).0
        }
        .to_byte(),
    ];
    for n in 2..40 {
        goodbye.extend(client_frame(n, Request::Ping));
    }
    connection.push(goodbye);
    let mut unsaid = vec![Setup::parse(&[0]).0.to_byte()];
    unsaid.extend(client_frame(1, hello()));
    unsaid.extend(client_frame(2, Request::Ping));
    connection.push(unsaid);
    let mut watched = vec![greeted(64, false)];
    watched.extend(client_frame(
        2,
        Request::Watch {
            service_type: "kept".into(),
            since: None,
            min_revision: None,
        },
    ));
    for port in 1..=10 {
        watched.extend(client_frame(
            2 + u64::from(port),
            Request::Register {
                service_type: "kept".into(),
                ip: [10, 0, 0, 1].into(),
                port,
                metadata: Default::default(),
                ttl: None,
            },
        ));
    }
    // An update of an instance the watch sees, by the id the server gave: unknown to the
    // seed, so a fixed one (answered NotFound) stands in, and the fuzzer mutates it.
    watched.extend(client_frame(
        19,
        Request::Update {
            id: uuid::Uuid::from_bytes([7; 16]),
            metadata: Default::default(),
            min_revision: None,
        },
    ));
    watched.extend(client_frame(20, Request::Unwatch { watch: 2 }));
    connection.push(watched);
    write(&root.join("connection"), &connection)?;
    Ok(())
}

/// Payloads whose lengths lie (issue 15, finding 7): strings, lists and maps that claim far
/// more than the payload holds, from just under the decode limit to 2^63, at the top of a
/// message and inside an entry, and a count the payload could hold whose items run out.
/// The decoder must refuse each having allocated nothing for the claim.
fn lying_lengths() -> Vec<Vec<u8>> {
    let varint = |n: u64| -> Vec<u8> {
        match n {
            0..=250 => vec![n as u8],
            251..=0xFFFF => [&[251][..], &(n as u16).to_le_bytes()].concat(),
            0x1_0000..=0xFFFF_FFFF => [&[252][..], &(n as u32).to_le_bytes()].concat(),
            _ => [&[253][..], &n.to_le_bytes()].concat(),
        }
    };
    let claims = [(4 << 20) - 64, 3_000_000, u64::from(u32::MAX), 1 << 63];
    let mut payloads = Vec::new();
    for claim in claims {
        let lie = varint(claim);
        let with = |head: &[u8], tail: &[u8]| [head, &lie, tail].concat();
        let mut update = vec![1, 9, 16];
        update.extend([0xab; 16]);
        let mut entry = vec![1, 4, 1, b'a', 0, 1, 16];
        entry.extend([0xab; 16]);
        entry.extend([0, 127, 0, 0, 1, 80, 1]);
        payloads.extend([
            // Query { service_type } with a string of `claim` bytes, 3 of them there: the
            // 14-byte frame of the finding for the first claim.
            with(&[1, 4], b"abc"),
            // Register "a" 127.0.0.1:80 with `claim` metadata pairs.
            with(
                &[1, 1, 1, b'a', 0, 127, 0, 0, 1, 80],
                &[1, b'k', 1, b'v', 0],
            ),
            // Update with `claim` metadata pairs.
            with(&update, &[1, b'k', 1, b'v']),
            // Instances of "a" with `claim` entries.
            with(&[1, 4, 1, b'a', 0], &[0]),
            // Snapshot at revision 1-2 with `claim` entries.
            with(&[1, 7, 1, 2, 0], &[0]),
            // Types with `claim` types.
            with(&[1, 11], &[1, b'a', 1, 0]),
            // An entry whose metadata key claims `claim` bytes.
            with(&entry, b"zone"),
        ]);
    }
    // Types claiming 600 types in a payload of about 600 bytes, one of them there.
    let mut short = vec![1, 11, 251];
    short.extend(600u16.to_le_bytes());
    short.extend([1, b'a', 1]);
    short.extend([0xff; 590]);
    payloads.push(short);
    payloads
}

fn write(dir: &Path, inputs: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (n, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{n:03}")), input)?;
    }
    println!("{}: {} seeds", dir.display(), inputs.len());
    Ok(())
}
