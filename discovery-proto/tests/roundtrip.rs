//! Every message survives `encoding::encode` then `encoding::decode` unchanged, and the
//! size functions agree with the encoder.

mod common;

use common::{client_frame, entry, instance, remove_reason, server_frame};
use discovery_proto::encoding;
use discovery_proto::{ClientFrame, EntryRef, Instance, Request, Response, Revision, ServerFrame};
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

    /// A server writes query answers and snapshots from `EntryRef`s: they must be the
    /// bytes of the `Entry` with the same fields.
    #[test]
    fn entry_refs_encode_as_entries(entry in entry()) {
        let borrowed = EntryRef {
            id: entry.id,
            ip: entry.ip,
            port: entry.port,
            metadata: &entry.metadata,
            last_heartbeat_ms: entry.last_heartbeat.timestamp_millis(),
        };
        let mut by_ref = Vec::new();
        encoding::encode_value_into(&borrowed, &mut by_ref)?;
        let mut by_value = Vec::new();
        encoding::encode_value_into(&entry, &mut by_value)?;
        prop_assert_eq!(by_ref, by_value);
    }

    /// An instance and its entry are the same fields less the type, which `from_entry`
    /// puts back: the entry's bytes are the instance's with the type's bytes cut out.
    #[test]
    fn entries_are_instances_without_their_type(instance in instance()) {
        let entry = instance.clone().into_entry();
        prop_assert_eq!(
            Instance::from_entry(instance.service_type.clone(), entry.clone()),
            instance.clone()
        );
        let mut whole = Vec::new();
        encoding::encode_value_into(&instance, &mut whole)?;
        let mut id = Vec::new();
        encoding::encode_value_into(&instance.id, &mut id)?;
        let mut service_type = Vec::new();
        encoding::encode_value_into(&instance.service_type, &mut service_type)?;
        let mut expected = id.clone();
        expected.extend_from_slice(&whole[id.len() + service_type.len()..]);
        prop_assert_eq!(&whole[id.len()..id.len() + service_type.len()], &service_type[..]);
        let mut compact = Vec::new();
        encoding::encode_value_into(&entry, &mut compact)?;
        prop_assert_eq!(compact, expected);
    }

    /// A revision's text form (`incarnation-seq`, the incarnation in 16 hex digits) reads
    /// back as the same revision.
    #[test]
    fn revisions_read_back_from_their_text(revision in common::revision()) {
        let text = revision.to_string();
        let (incarnation, seq) = text.split_once('-').expect("a dash");
        prop_assert_eq!(incarnation.len(), 16);
        prop_assert_eq!(seq, revision.seq.to_string());
        prop_assert_eq!(text.parse::<Revision>(), Ok(revision));
    }

    /// `Request::min_revision` is the field of that name, never `since`, and none for the
    /// requests that have no such field.
    #[test]
    fn min_revision_is_the_requests_field(request in common::request()) {
        let expected = match &request {
            Request::Heartbeat { min_revision, .. }
            | Request::Deregister { min_revision, .. }
            | Request::Query { min_revision, .. }
            | Request::Watch { min_revision, .. }
            | Request::Update { min_revision, .. } => *min_revision,
            _ => None,
        };
        prop_assert_eq!(request.min_revision(), expected);
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
    }

    /// Every frame that carries one instance, with the widest envelope it can have (the
    /// largest request id, revision and `stale_ms`), takes no more than the instance's
    /// `instance_frame_len`: the check a server makes at register holds for all of them.
    #[test]
    fn every_frame_of_one_instance_fits_its_estimate(instance in instance(),
                                                      reason in remove_reason()) {
        let estimate = encoding::instance_frame_len(&instance);
        let revision = Revision { incarnation: u64::MAX, seq: u64::MAX };
        let entry = instance.clone().into_entry();
        let frames = [
            Response::Instances {
                service_type: instance.service_type.clone(),
                stale_ms: Some(u64::MAX),
                instances: vec![entry.clone()],
                more: true,
            },
            Response::Snapshot { revision, reset: true, instances: vec![entry], more: true },
            Response::Added { revision, instance: instance.clone() },
            Response::Updated { revision, instance: instance.clone() },
            Response::Removed { revision, instance: instance.clone(), reason },
        ];
        for response in frames {
            let frame = ServerFrame::new(u64::MAX, response);
            let len = encoding::encode(&frame)?.len();
            prop_assert!(len <= estimate, "{} bytes over the estimate {}: {:?}", len, estimate, frame);
        }
    }
}

/// Texts that are not revisions are refused, with the form a revision has.
#[test]
fn texts_that_are_not_revisions() {
    for text in [
        "",
        "42",
        "00c0ffee00c0ffee",
        "xyz-1",
        "00c0ffee00c0ffee-",
        "1-2-3",
        "10000000000000000-1",
    ] {
        let refused = text.parse::<Revision>().expect_err(text);
        assert!(refused.contains("INCARNATION-SEQ"), "{text}: {refused}");
    }
    assert_eq!(
        "00c0ffee00c0ffee-42".parse::<Revision>(),
        Ok(Revision {
            incarnation: 0x00c0_ffee_00c0_ffee,
            seq: 42
        })
    );
}

/// The decoder's memory limit counts what decoded values take in memory, which can be
/// several times their size on the wire: frames as large as the protocol allows, filled
/// with the smallest possible items, must still decode.
#[test]
fn largest_frames_of_smallest_items_decode() {
    use std::net::Ipv4Addr;

    use discovery_proto::{Entry, MAX_FRAME_BYTES, Metadata, TypeCount};

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
                ttl: None,
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

    // The same from a peer that repeats one empty key: 2 bytes a pair, the last one wins;
    // then no ttl.
    let pairs = (MAX_FRAME_BYTES - 20) / 2;
    let mut raw = vec![1, 1, 1, b't', 0, 127, 0, 0, 1, 1, 252];
    raw.extend((pairs as u32).to_le_bytes());
    raw.resize(raw.len() + 2 * pairs + 1, 0);
    assert!(raw.len() <= MAX_FRAME_BYTES);
    let back: ClientFrame = encoding::decode(&raw).expect("decodes");
    assert_eq!(
        back.request,
        Request::Register {
            service_type: "t".into(),
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
            metadata: Metadata::from([(String::new(), String::new())]),
            ttl: None,
        }
    );

    // An answer of the smallest entries, split at the largest frame size.
    let smallest: Vec<Entry> = (0..10_000u128)
        .map(|i| Entry {
            id: uuid::Uuid::from_u128(i),
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
            metadata: Metadata::new(),
            last_heartbeat: chrono::DateTime::UNIX_EPOCH,
        })
        .collect();
    let frames = encoding::instance_frames(1, "t", smallest, MAX_FRAME_BYTES).expect("splits");
    assert!(frames.len() > 1);
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

    // The list of types at its smallest: one-byte types of one instance, 3 bytes each.
    let types: Vec<TypeCount> = (0..30_000u32)
        .map(|i| TypeCount {
            service_type: char::from(b'a' + (i % 26) as u8).to_string(),
            instances: 1,
        })
        .collect();
    let frames = encoding::split_list(1, types, MAX_FRAME_BYTES, |types, more| Response::Types {
        types,
        more,
    })
    .expect("splits");
    assert!(frames.len() > 1);
    for frame in frames {
        let payload = encoding::encode(&frame).expect("encodes");
        assert!(payload.len() <= MAX_FRAME_BYTES);
        assert_eq!(
            encoding::decode::<ServerFrame>(&payload).expect("decodes"),
            frame
        );
    }
}
