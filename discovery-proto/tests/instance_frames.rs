//! `encoding::instance_frames`: a query answer split into `Instances` frames that each fit
//! the frame limit, `more` on all but the last, the instances in order.

mod common;

use std::net::Ipv4Addr;

use chrono::DateTime;
use common::instance;
use discovery_proto::encoding;
use discovery_proto::{Error, Instance, MAX_FRAME_BYTES, Metadata, Response, ServerFrame};
use proptest::collection::vec;
use proptest::prelude::*;
use uuid::Uuid;

/// Checks every promise of `instance_frames` for one answer, and that the frames are full:
/// a frame ends only where the next instance would not have fitted in it.
fn check_split(request_id: u64, instances: &[Instance], limit: usize) -> Result<(), TestCaseError> {
    let frames = encoding::instance_frames(request_id, instances.to_vec(), limit)?;
    prop_assert!(!frames.is_empty());
    let mut rejoined = Vec::with_capacity(instances.len());
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
        let frame: ServerFrame = encoding::decode(&payload)?;
        prop_assert_eq!(frame.request_id, request_id);
        let Response::Instances {
            instances: part,
            more,
        } = frame.response
        else {
            return Err(TestCaseError::fail(format!("frame {i} is not Instances")));
        };
        prop_assert_eq!(more, i != last, "more on frame {} of {}", i, frames.len());
        if i != last {
            prop_assert!(!part.is_empty(), "frame {} is empty but not the last", i);
            // The first instance of the next frame did not fit in this one.
            let Response::Instances {
                instances: next, ..
            } = &frames[i + 1].response
            else {
                unreachable!()
            };
            // The splitter reserves 24 bytes for a frame's envelope (request id, variant,
            // vector length, `more`), however small they really are.
            let used: usize = part.iter().map(encoding::encoded_len).sum();
            prop_assert!(
                24 + used + encoding::encoded_len(&next[0]) > limit,
                "frame {} could have held one more instance",
                i
            );
        }
        rejoined.extend(part);
    }
    prop_assert_eq!(rejoined, instances);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn frames_fit_and_rejoin(instances in vec(instance(), 0..300),
                             limit in 1024usize..=MAX_FRAME_BYTES,
                             request_id in common::request_id()) {
        check_split(request_id, &instances, limit)?;
    }

    /// A limit over the protocol's maximum is the maximum.
    #[test]
    fn limit_is_capped_at_the_maximum(instances in vec(instance(), 0..50),
                                      limit in MAX_FRAME_BYTES..usize::MAX) {
        let frames = encoding::instance_frames(1, instances, limit)?;
        for frame in &frames {
            prop_assert!(encoding::encode(frame)?.len() <= MAX_FRAME_BYTES);
        }
    }
}

#[test]
fn an_empty_answer_is_one_empty_last_frame() {
    let frames = encoding::instance_frames(7, Vec::new(), 1024).expect("splits");
    assert_eq!(
        frames,
        vec![ServerFrame::new(
            7,
            Response::Instances {
                instances: vec![],
                more: false
            }
        )]
    );
}

#[test]
fn an_instance_too_large_for_any_frame_is_refused() {
    let huge = Instance {
        id: Uuid::nil(),
        service_type: "t".into(),
        ip: Ipv4Addr::LOCALHOST.into(),
        port: 1,
        metadata: Metadata::from([("k".into(), "v".repeat(2000))]),
        last_heartbeat: DateTime::UNIX_EPOCH,
    };
    let len = encoding::instance_frame_len(&huge);
    assert!(matches!(
        encoding::instance_frames(1, vec![huge.clone()], 1024),
        Err(Error::FrameTooLarge { max: 1024, .. })
    ));
    // With a limit of exactly its `instance_frame_len`, it fits alone.
    let frames = encoding::instance_frames(u64::MAX, vec![huge], len).expect("fits");
    assert_eq!(frames.len(), 1);
    assert!(encoding::encode(&frames[0]).expect("encodes").len() <= len);
}

/// The answer to a query of 100,000 instances (the default cap of one type) at the
/// default frame limit.
#[test]
fn a_hundred_thousand_instances() {
    let base = DateTime::from_timestamp_millis(1_700_000_000_000).expect("in range");
    let instances: Vec<Instance> = (0..100_000u32)
        .map(|i| Instance {
            id: Uuid::from_u128(u128::from(i) * 0x9e37_79b9_7f4a_7c15),
            service_type: "billing".into(),
            ip: Ipv4Addr::from(0x0a00_0000 + i).into(),
            port: 8000 + (i % 1000) as u16,
            metadata: Metadata::from([("zone".into(), format!("eu-{}", i % 3))]),
            last_heartbeat: base + chrono::Duration::milliseconds(i64::from(i)),
        })
        .collect();
    let frames = encoding::instance_frames(9, instances.clone(), MAX_FRAME_BYTES).expect("splits");
    assert!(frames.len() > 1);
    let last = frames.len() - 1;
    let mut rejoined = Vec::with_capacity(instances.len());
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
            instances: part,
            more,
        } = frame.response
        else {
            panic!("frame {i} is not Instances");
        };
        assert_eq!(more, i != last);
        rejoined.extend(part);
    }
    assert_eq!(rejoined, instances);
}
