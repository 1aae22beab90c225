//! Every message survives `encoding::encode` then `encoding::decode` unchanged, and the
//! size functions agree with the encoder.

mod common;

use common::{client_frame, instance, server_frame};
use discovery_proto::encoding;
use discovery_proto::{ClientFrame, InstanceRef, Response, ServerFrame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let payload = encoding::encode(&frame)?;
        prop_assert_eq!(payload.len(), encoding::encoded_len(&frame));
        let back: ClientFrame = encoding::decode(&payload)?;
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let payload = encoding::encode(&frame)?;
        prop_assert_eq!(payload.len(), encoding::encoded_len(&frame));
        let back: ServerFrame = encoding::decode(&payload)?;
        prop_assert_eq!(back, frame);
    }

    /// A server writes query answers from `InstanceRef`s: they must be the bytes of the
    /// `Instance` with the same fields.
    #[test]
    fn instance_refs_encode_as_instances(instance in instance()) {
        let borrowed = InstanceRef {
            id: instance.id,
            service_type: &instance.service_type,
            ip: instance.ip,
            port: instance.port,
            metadata: &instance.metadata,
            last_heartbeat_ms: instance.last_heartbeat.timestamp_millis(),
        };
        let mut by_ref = Vec::new();
        encoding::encode_value_into(&borrowed, &mut by_ref)?;
        let mut by_value = Vec::new();
        encoding::encode_value_into(&instance, &mut by_value)?;
        prop_assert_eq!(by_ref, by_value);
    }

    /// `encode_into` appends to what the writer already holds and says how much it wrote.
    #[test]
    fn encode_into_appends(prefix in proptest::collection::vec(any::<u8>(), 0..16),
                           frame in server_frame()) {
        let mut out = prefix.clone();
        let written = encoding::encode_into(&frame, &mut out)?;
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(written, out.len() - prefix.len());
        prop_assert_eq!(&out[prefix.len()..], &encoding::encode(&frame)?[..]);
    }

    /// The server sizes a register before it builds the instance, from a tuple of the same
    /// fields (with the largest timestamp standing in for the real one): that tuple must
    /// encode exactly as the instance does, and the instance's real size within
    /// `instance_frame_len` must never exceed the estimate.
    #[test]
    fn instance_size_from_its_fields(instance in instance()) {
        let millis = instance.last_heartbeat.timestamp_millis();
        let fields = (
            instance.id,
            instance.service_type.as_str(),
            instance.ip,
            instance.port,
            &instance.metadata,
            millis,
        );
        prop_assert_eq!(
            encoding::instance_frame_len_of(&fields),
            encoding::instance_frame_len(&instance)
        );
        let worst = (
            instance.id,
            instance.service_type.as_str(),
            instance.ip,
            instance.port,
            &instance.metadata,
            i64::MAX,
        );
        prop_assert!(encoding::instance_frame_len_of(&worst) >= encoding::instance_frame_len(&instance));

        // One instance alone in a frame takes no more than its `instance_frame_len`.
        let frame = ServerFrame::new(
            u64::MAX,
            Response::Instances { instances: vec![instance.clone()], more: true },
        );
        prop_assert!(encoding::encode(&frame)?.len() <= encoding::instance_frame_len(&instance));
    }
}

/// The decoder's memory limit counts what decoded values take in memory, which can be
/// several times their size on the wire: frames as large as the protocol allows, filled
/// with the smallest possible items, must still decode.
#[test]
fn largest_frames_of_smallest_items_decode() {
    use std::net::Ipv4Addr;

    use discovery_proto::{Instance, MAX_FRAME_BYTES, Metadata, Request};

    // A register whose metadata is as many short pairs as fit in one frame.
    let mut metadata = Metadata::new();
    let mut n = 0u32;
    let register = |metadata: &Metadata| {
        ClientFrame::new(
            u64::MAX,
            Request::Register {
                service_type: "t".into(),
                ip: Ipv4Addr::LOCALHOST.into(),
                port: 1,
                metadata: metadata.clone(),
            },
        )
    };
    // Each pair takes its key's length byte, the key, and the empty value's length byte;
    // the map's own length grows from 1 to 5 bytes on the way.
    let mut len = encoding::encoded_len(&register(&metadata)) + 4;
    loop {
        let key = format!("{n:x}");
        if len + key.len() + 2 > MAX_FRAME_BYTES {
            break;
        }
        len += key.len() + 2;
        metadata.insert(key, String::new());
        n += 1;
    }
    let frame = register(&metadata);
    let payload = encoding::encode(&frame).expect("encodes");
    assert!(payload.len() <= MAX_FRAME_BYTES);
    assert_eq!(
        encoding::decode::<ClientFrame>(&payload).expect("decodes"),
        frame
    );

    // The same from a peer that repeats one empty key: 2 bytes a pair, the last one wins.
    let pairs = (MAX_FRAME_BYTES - 20) / 2;
    let mut raw = vec![1, 1, 1, b't', 0, 127, 0, 0, 1, 1, 252];
    raw.extend((pairs as u32).to_le_bytes());
    raw.resize(raw.len() + 2 * pairs, 0);
    let back: ClientFrame = encoding::decode(&raw).expect("decodes");
    assert_eq!(
        back.request,
        Request::Register {
            service_type: "t".into(),
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
            metadata: Metadata::from([(String::new(), String::new())]),
        }
    );

    // An answer of the smallest instances, split at the largest frame size.
    let smallest: Vec<Instance> = (0..10_000u128)
        .map(|i| Instance {
            id: uuid::Uuid::from_u128(i),
            service_type: "t".into(),
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
            metadata: Metadata::new(),
            last_heartbeat: chrono::DateTime::UNIX_EPOCH,
        })
        .collect();
    let frames = encoding::instance_frames(1, smallest, MAX_FRAME_BYTES).expect("splits");
    for frame in frames {
        let payload = encoding::encode(&frame).expect("encodes");
        assert!(
            payload.len() > MAX_FRAME_BYTES - 64
                || matches!(&frame.response, Response::Instances { more: false, .. })
        );
        assert_eq!(
            encoding::decode::<ServerFrame>(&payload).expect("decodes"),
            frame
        );
    }
}
