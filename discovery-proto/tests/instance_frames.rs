//! `encoding::instance_frames`, `split_list` and `ListWriter`: a list answer split into
//! frames that each fit the frame limit, `more` on all but the last, the items in order;
//! a query's `Instances` frames say their type once and carry entries without it.

mod common;

use std::net::Ipv4Addr;

use chrono::DateTime;
use common::{entry, text, type_count};
use discovery_proto::encoding::{self, ListWriter};
use discovery_proto::{
    Entry, Error, Instance, MAX_FRAME_BYTES, Metadata, Response, Revision, ServerFrame, TypeCount,
};
use proptest::collection::vec;
use proptest::prelude::*;
use uuid::Uuid;

/// The bytes the splitter keeps for a frame's item count (a varint of up to 3 bytes),
/// however few the count turns out to need.
const COUNT_ROOM: usize = 3;

/// The parts of an answer's frames, checked for what every list answer promises: each
/// frame within `limit`, under `request_id`, `more` on all but the last, no empty frame
/// but a lone last one, and each frame full (it ends only where the next item would not
/// have fitted in it). `parts` takes a frame apart into its list, its `more` and the
/// encoding of the same frame with an empty list.
fn check_frames<T: serde::Serialize + Clone + PartialEq + std::fmt::Debug>(
    frames: &[ServerFrame],
    request_id: u64,
    limit: usize,
    parts: impl Fn(&Response) -> Option<(Vec<T>, bool, Response)>,
) -> Result<Vec<T>, TestCaseError> {
    prop_assert!(!frames.is_empty());
    let limit = limit.min(MAX_FRAME_BYTES);
    let mut rejoined = Vec::new();
    let last = frames.len() - 1;
    for (i, frame) in frames.iter().enumerate() {
        let payload = encoding::encode(frame)?;
        prop_assert!(
            payload.len() <= limit,
            "frame {} is {} bytes, over {}",
            i,
            payload.len(),
            limit
        );
        let decoded: ServerFrame = encoding::decode(&payload)?;
        prop_assert_eq!(&decoded, frame);
        prop_assert_eq!(frame.request_id, request_id);
        let Some((part, more, empty)) = parts(&frame.response) else {
            return Err(TestCaseError::fail(format!("frame {i} is of another kind")));
        };
        prop_assert_eq!(more, i != last, "more on frame {} of {}", i, frames.len());
        if i != last {
            prop_assert!(!part.is_empty(), "frame {} is empty but not the last", i);
            let Some((next, _, _)) = parts(&frames[i + 1].response) else {
                return Err(TestCaseError::fail(format!(
                    "frame {} is of another kind",
                    i + 1
                )));
            };
            // The envelope (with its 1-byte count of 0 and `more`), the room kept for the
            // count beyond that byte, the items, and the next item did not fit.
            let envelope = encoding::encoded_len(&ServerFrame::new(request_id, empty));
            let used: usize = part.iter().map(encoding::encoded_len).sum();
            prop_assert!(
                envelope + (COUNT_ROOM - 1) + used + encoding::encoded_len(&next[0]) > limit,
                "frame {} could have held one more item",
                i
            );
        }
        rejoined.extend(part);
    }
    Ok(rejoined)
}

/// Checks every promise of `instance_frames` for one answer: those of any list, and that
/// each frame says the type queried and is current (`stale_ms` none).
fn check_split(
    request_id: u64,
    service_type: &str,
    entries: &[Entry],
    limit: usize,
) -> Result<(), TestCaseError> {
    let frames = encoding::instance_frames(request_id, service_type, entries.to_vec(), limit)?;
    let rejoined = check_frames(&frames, request_id, limit, |response| match response {
        Response::Instances {
            service_type: said,
            stale_ms: None,
            instances,
            more,
        } if said == service_type => Some((
            instances.clone(),
            *more,
            Response::Instances {
                service_type: said.clone(),
                stale_ms: None,
                instances: vec![],
                more: false,
            },
        )),
        _ => None,
    })?;
    prop_assert_eq!(rejoined, entries);
    Ok(())
}

fn types_parts(response: &Response) -> Option<(Vec<TypeCount>, bool, Response)> {
    match response {
        Response::Types { types, more } => Some((
            types.clone(),
            *more,
            Response::Types {
                types: vec![],
                more: false,
            },
        )),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn frames_fit_and_rejoin(entries in vec(entry(), 0..300),
                             service_type in text(40),
                             limit in 1024usize..=MAX_FRAME_BYTES,
                             request_id in common::request_id()) {
        check_split(request_id, &service_type, &entries, limit)?;
    }

    /// Taking the whole frames out while writing (as a server streaming a long answer does)
    /// sends exactly the bytes of writing it all at once, and never takes part of a frame.
    #[test]
    fn draining_while_writing_sends_the_same_bytes(entries in vec(entry(), 0..200),
                                                   limit in 1024usize..=4096,
                                                   drain_every in 1usize..20) {
        let envelope = |instances: Vec<Entry>, more| Response::Instances {
            service_type: "billing".into(),
            stale_ms: None,
            instances,
            more,
        };
        let mut whole = Vec::new();
        let mut writer = ListWriter::new(&mut whole, 3, limit, envelope).expect("envelope");
        for entry in &entries {
            writer.push(entry).expect("fits");
        }
        writer.finish();

        let mut sent = Vec::new();
        let mut out = Vec::new();
        let mut writer = ListWriter::new(&mut out, 3, limit, envelope).expect("envelope");
        for (i, entry) in entries.iter().enumerate() {
            writer.push(entry).expect("fits");
            if i % drain_every == 0 {
                let complete = writer.complete_len();
                let drained: Vec<u8> = writer.drain_complete().collect();
                prop_assert_eq!(drained.len(), complete);
                prop_assert_eq!(writer.complete_len(), 0);
                // What was taken is whole frames: each length prefix is followed by its
                // whole payload.
                let mut rest = drained.as_slice();
                while let Some((head, tail)) = rest.split_first_chunk::<4>() {
                    let len = u32::from_be_bytes(*head) as usize;
                    prop_assert!(len <= tail.len());
                    rest = &tail[len..];
                }
                sent.extend(drained);
            }
        }
        writer.finish();
        sent.extend(out);
        prop_assert_eq!(sent, whole);
    }

    /// A limit over the protocol's maximum is the maximum.
    #[test]
    fn limit_is_capped_at_the_maximum(entries in vec(entry(), 0..50),
                                      limit in MAX_FRAME_BYTES..usize::MAX) {
        check_split(1, "billing", &entries, limit)?;
    }

    /// The answer to `ListTypes` splits like a query's, within the cap, the types in order.
    /// The smallest cap still holds the widest `TypeCount` of the strategy (20 characters
    /// of up to 4 bytes, a 9-byte count) with its envelope.
    #[test]
    fn types_split_within_the_cap(types in vec(type_count(), 0..400),
                                  limit in 128usize..=4096,
                                  request_id in common::request_id()) {
        let frames = encoding::split_list(request_id, types.clone(), limit, |types, more| {
            Response::Types { types, more }
        })?;
        let rejoined = check_frames(&frames, request_id, limit, types_parts)?;
        prop_assert_eq!(rejoined, types);
    }

    /// A watch's snapshot splits the same way, each frame with the revision and `reset`.
    #[test]
    fn snapshots_split_within_the_cap(entries in vec(entry(), 0..200),
                                      reset in any::<bool>(),
                                      revision in common::revision(),
                                      limit in 1024usize..=8192) {
        let frames = encoding::split_list(3, entries.clone(), limit, |instances, more| {
            Response::Snapshot { revision, reset, instances, more }
        })?;
        let rejoined = check_frames(&frames, 3, limit, |response| match response {
            Response::Snapshot { revision: r, reset: z, instances, more }
                if *r == revision && *z == reset =>
            {
                Some((
                    instances.clone(),
                    *more,
                    Response::Snapshot { revision, reset, instances: vec![], more: false },
                ))
            }
            _ => None,
        })?;
        prop_assert_eq!(rejoined, entries);
    }

    /// `ListWriter` writes exactly the frames `split_list` returns, each with its length
    /// prefix, one after the other. The smallest cap holds the widest `TypeCount` of the
    /// strategy with its envelope, as in `types_split_within_the_cap`.
    #[test]
    fn the_writer_writes_the_split_frames(types in vec(type_count(), 0..200),
                                          limit in 128usize..=2048) {
        let frames = encoding::split_list(5, types.clone(), limit, |types, more| {
            Response::Types { types, more }
        })?;
        let mut expected = Vec::new();
        for frame in &frames {
            let payload = encoding::encode(frame)?;
            expected.extend((payload.len() as u32).to_be_bytes());
            expected.extend(payload);
        }
        let mut out = Vec::new();
        let mut writer = ListWriter::new(&mut out, 5, limit, |types, more| {
            Response::Types { types, more }
        })?;
        for item in &types {
            writer.push(item)?;
        }
        writer.finish();
        prop_assert_eq!(out, expected);
    }
}

#[test]
fn an_empty_answer_is_one_empty_last_frame() {
    let frames = encoding::instance_frames(7, "billing", Vec::new(), 1024).expect("splits");
    assert_eq!(
        frames,
        vec![ServerFrame::new(
            7,
            Response::Instances {
                service_type: "billing".into(),
                stale_ms: None,
                instances: vec![],
                more: false
            }
        )]
    );
    let frames = encoding::split_list(8, Vec::<TypeCount>::new(), 1024, |types, more| {
        Response::Types { types, more }
    })
    .expect("splits");
    assert_eq!(
        frames,
        vec![ServerFrame::new(
            8,
            Response::Types {
                types: vec![],
                more: false
            }
        )]
    );
}

fn huge() -> Instance {
    Instance {
        id: Uuid::nil(),
        service_type: "t".into(),
        ip: Ipv4Addr::LOCALHOST.into(),
        port: 1,
        metadata: Metadata::from([("k".into(), "v".repeat(2000))]),
        last_heartbeat: DateTime::UNIX_EPOCH,
    }
}

#[test]
fn an_instance_too_large_for_any_frame_is_refused() {
    let huge = huge();
    let len = encoding::instance_frame_len(&huge);
    assert!(matches!(
        encoding::instance_frames(1, "t", vec![huge.clone().into_entry()], 1024),
        Err(Error::FrameTooLarge { max: 1024, .. })
    ));
    // With a limit of exactly its `instance_frame_len`, it fits alone, in a query's answer
    // and in a snapshot of the widest revision.
    let frames = encoding::instance_frames(u64::MAX, "t", vec![huge.clone().into_entry()], len)
        .expect("fits");
    assert_eq!(frames.len(), 1);
    assert!(encoding::encode(&frames[0]).expect("encodes").len() <= len);
    let revision = Revision {
        incarnation: u64::MAX,
        seq: u64::MAX,
    };
    let frames = encoding::split_list(u64::MAX, vec![huge.into_entry()], len, |instances, more| {
        Response::Snapshot {
            revision,
            reset: true,
            instances,
            more,
        }
    })
    .expect("fits");
    assert_eq!(frames.len(), 1);
    assert!(encoding::encode(&frames[0]).expect("encodes").len() <= len);
}

/// An item too large for a frame alone is refused by `push` with nothing written, and the
/// answer goes on without it.
#[test]
fn the_writer_refuses_an_item_too_large_and_goes_on() {
    let small = TypeCount {
        service_type: "a".into(),
        instances: 1,
    };
    let large = TypeCount {
        service_type: "x".repeat(2000),
        instances: 1,
    };
    let mut out = Vec::new();
    let mut writer = ListWriter::new(&mut out, 1, 1024, |types, more| Response::Types {
        types,
        more,
    })
    .expect("an envelope ending with its list and more");
    writer.push(&small).expect("fits");
    assert!(matches!(
        writer.push(&large),
        Err(Error::FrameTooLarge { max: 1024, .. })
    ));
    writer.push(&small).expect("fits");
    writer.finish();
    let expected = encoding::encode(&ServerFrame::new(
        1,
        Response::Types {
            types: vec![small.clone(), small],
            more: false,
        },
    ))
    .expect("encodes");
    assert_eq!(out[..4], (expected.len() as u32).to_be_bytes());
    assert_eq!(out[4..], expected[..]);
}

/// An envelope whose list and `more` are not its last two fields is refused at once.
#[test]
fn an_envelope_must_end_with_its_list_and_more() {
    let mut out = Vec::new();
    let refused = ListWriter::new(&mut out, 1, 1024, |_: Vec<Entry>, _| Response::Pong);
    assert!(matches!(refused, Err(Error::Encode(_))));
}

/// A frame holds at most 65,535 items, whose count still fits the room kept for it, even
/// of items that take no bytes at all (no real item is that small: the cap is a guard).
#[test]
fn the_writer_closes_a_frame_at_65535_items() {
    let mut out = Vec::new();
    let mut writer = ListWriter::new(&mut out, 1, MAX_FRAME_BYTES, |types, more| {
        Response::Types { types, more }
    })
    .expect("an envelope ending with its list and more");
    for _ in 0..70_000 {
        writer.push(&()).expect("no bytes fit");
    }
    writer.finish();
    // id 1, Types (11), count 65535 (fb ff ff), more; then id 1, Types, 4465 (fb 71 11), no
    // more.
    assert_eq!(
        out,
        [
            0, 0, 0, 6, 1, 11, 0xfb, 0xff, 0xff, 1, 0, 0, 0, 6, 1, 11, 0xfb, 0x71, 0x11, 0
        ]
    );
}

/// The answer to a query of 100,000 instances (the default cap of one type) at the
/// default frame limit: the compact frames say "billing" once each.
#[test]
fn a_hundred_thousand_instances() {
    let base = DateTime::from_timestamp_millis(1_700_000_000_000).expect("in range");
    let entries: Vec<Entry> = (0..100_000u32)
        .map(|i| Entry {
            id: Uuid::from_u128(u128::from(i) * 0x9e37_79b9_7f4a_7c15),
            ip: Ipv4Addr::from(0x0a00_0000 + i).into(),
            port: 8000 + (i % 1000) as u16,
            metadata: Metadata::from([("zone".into(), format!("eu-{}", i % 3))]),
            last_heartbeat: base + chrono::Duration::milliseconds(i64::from(i)),
        })
        .collect();
    let frames =
        encoding::instance_frames(9, "billing", entries.clone(), MAX_FRAME_BYTES).expect("splits");
    // 100,000 entries of 45 bytes (a 17-byte id, a 5-byte address, a 3-byte port, an
    // 11-byte map of one pair, a 9-byte time) after an envelope of 15 (id, variant, the
    // type, no `stale_ms`, the room for the count, `more`): 1,456 entries in a full frame
    // of 64 KiB, 69 frames. With the type in each instance, as in version 1, it took 81.
    assert_eq!(frames.len(), 69);
    let last = frames.len() - 1;
    let mut rejoined = Vec::with_capacity(entries.len());
    for (i, frame) in frames.into_iter().enumerate() {
        let payload = encoding::encode(&frame).expect("encodes");
        assert!(
            payload.len() <= MAX_FRAME_BYTES,
            "frame {i}: {} bytes",
            payload.len()
        );
        // What the client reads is what the decoder makes of the bytes.
        let frame: ServerFrame = encoding::decode(&payload).expect("decodes");
        assert_eq!(frame.request_id, 9);
        let Response::Instances {
            service_type,
            stale_ms,
            instances: part,
            more,
        } = frame.response
        else {
            panic!("frame {i} is not Instances");
        };
        assert_eq!(service_type, "billing");
        assert_eq!(stale_ms, None);
        assert_eq!(more, i != last);
        if i != last {
            assert_eq!(part.len(), 1456, "frame {i}");
        }
        rejoined.extend(part);
    }
    assert_eq!(rejoined, entries);
}
