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

fn write(dir: &Path, inputs: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (n, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{n:03}")), input)?;
    }
    println!("{}: {} seeds", dir.display(), inputs.len());
    Ok(())
}
