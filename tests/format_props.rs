//! Property tests for the on-media format (src/format, FORMAT.md).
//!
//! Round trips for every fixed header and every CBOR structure, the stream
//! framer against the deframer, decoders fed arbitrary or mutated bytes, bit
//! flips in blocks, and forward compatibility of CBOR maps (unknown keys are
//! skipped). Case counts are kept modest so this runs in seconds in debug.

use std::convert::Infallible;

use minicbor::data::Tag;
use minicbor::{Decoder, Encoder};
use proptest::collection::vec;
use proptest::prelude::*;

use tapir::format::block::{
    BlockHeader, BlockKind, BLOCK_HEADER_LEN, FLAG_LAST_IN_FILE, NO_RECORD_START,
};
use tapir::format::label::{LabelBlock, RescueKit, SetMembership, VolumeLabel, MAX_LABEL_CBOR};
use tapir::format::meta::{
    from_cbor, to_cbor, CatalogEnd, CatalogEntry, CatalogHeader, Checkpoint, DeviceNumbers, Entry,
    EntryEnd, EntryKind, Extent, JobRun, SessionEnd, SessionLink, SessionStart, StreamPosition,
    Timestamp, Xattr,
};
use tapir::format::record::{
    Codec, DataPrefix, RecordHeader, RecordType, DATA_CHUNK_LEN, DATA_PREFIX_LEN, MAX_RECORD_BODY,
    RECORD_FLAG_SKIPPABLE, RECORD_HEADER_LEN,
};
use tapir::format::stream::{Record, StreamDeframer, StreamFramer, StreamIdentity};
use tapir::format::{FormatError, FORMAT_VERSION, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a failure should not take minutes in a debug build.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn block_kind() -> impl Strategy<Value = BlockKind> {
    prop_oneof![
        Just(BlockKind::Label),
        Just(BlockKind::SessionData),
        Just(BlockKind::SessionCatalog),
    ]
}

/// A payload and a header that a v1 reader must accept for it.
fn valid_block() -> impl Strategy<Value = (BlockHeader, Vec<u8>)> {
    (
        block_kind(),
        any::<bool>(),
        any::<u16>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        vec(any::<u8>(), 0..512),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                kind,
                last,
                info_flags,
                set_uuid,
                volume_seq,
                tape_file,
                block_seq,
                session,
                payload,
                fr,
                has_first,
            )| {
                // Informational flags (high 16 bits) may be anything; of the
                // critical ones only "last in file" is defined in v1.
                let flags = ((info_flags as u32) << 16) | if last { FLAG_LAST_IN_FILE } else { 0 };
                let first_record = if has_first && !payload.is_empty() {
                    fr.index(payload.len()) as u32
                } else {
                    NO_RECORD_START
                };
                let header = BlockHeader {
                    version: FORMAT_VERSION,
                    kind,
                    flags,
                    set_uuid,
                    volume_seq,
                    tape_file,
                    block_seq,
                    payload_len: payload.len() as u32,
                    first_record,
                    session,
                };
                (header, payload)
            },
        )
}

fn known_record_type() -> impl Strategy<Value = RecordType> {
    prop_oneof![
        Just(RecordType::SessionStart),
        Just(RecordType::Entry),
        Just(RecordType::Data),
        Just(RecordType::EntryEnd),
        Just(RecordType::Checkpoint),
        Just(RecordType::SessionEnd),
        Just(RecordType::CatalogHeader),
        Just(RecordType::CatalogEntry),
        Just(RecordType::CatalogEnd),
        Just(RecordType::SetCatalogHeader),
        Just(RecordType::VolumeInfo),
        Just(RecordType::SessionInfo),
        Just(RecordType::PageIndex),
        Just(RecordType::SetCatalogEntry),
        Just(RecordType::SetCatalogEnd),
    ]
}

/// Every record type code FORMAT.md defines (§5.4), set catalog ones included.
const KNOWN_RECORD_CODES: [u16; 15] = [
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0010, 0x0011, 0x0012, 0x0020, 0x0021, 0x0022,
    0x0023, 0x0024, 0x0025,
];

/// A record header a v1 reader must accept: a known type with any flags, or
/// an unknown type marked skippable.
fn valid_record_header() -> impl Strategy<Value = RecordHeader> {
    let known = (known_record_type(), any::<u16>(), 0..=MAX_RECORD_BODY).prop_map(
        |(rtype, flags, body_len)| RecordHeader {
            rtype,
            flags,
            body_len,
        },
    );
    let unknown = (
        any::<u16>().prop_filter("not a known code", |c| !KNOWN_RECORD_CODES.contains(c)),
        any::<u16>(),
        0..=MAX_RECORD_BODY,
    )
        .prop_map(|(code, flags, body_len)| RecordHeader {
            rtype: RecordType::Unknown(code),
            flags: flags | RECORD_FLAG_SKIPPABLE,
            body_len,
        });
    prop_oneof![3 => known, 1 => unknown]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (any::<i64>(), any::<u32>()).prop_map(|(sec, nsec)| Timestamp { sec, nsec }),
        (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timestamp { sec, nsec }),
    ]
}

/// Raw path bytes: anything, including invalid UTF-8, newlines and NULs,
/// with a bias towards nasty but realistic names.
fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..48),
        1 => Just(b"dir/file with space".to_vec()),
        1 => Just(b"dir/new\nline".to_vec()),
        1 => Just(b"latin1/caf\xe9/\xff\xfe".to_vec()),
        1 => Just(b"deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q".to_vec()),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,16}",
        1 => Just(String::new()),
        1 => Just("line\nbreak\ttab\u{0}nul".to_string()),
        1 => Just("ünïcødé ✓ 🦛".to_string()),
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

fn xattr() -> impl Strategy<Value = Xattr> {
    (
        prop_oneof![
            vec(any::<u8>(), 0..32),
            Just(b"user.comment".to_vec()),
            Just(b"security.capability".to_vec()),
            Just(b"system.posix_acl_access".to_vec()),
        ],
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, value)| Xattr { name, value })
}

fn extent() -> impl Strategy<Value = Extent> {
    (any::<u64>(), any::<u64>()).prop_map(|(offset, len)| Extent { offset, len })
}

fn device_numbers() -> impl Strategy<Value = DeviceNumbers> {
    (any::<u32>(), any::<u32>()).prop_map(|(major, minor)| DeviceNumbers { major, minor })
}

fn hash32() -> impl Strategy<Value = Option<[u8; 32]>> {
    prop::option::of(any::<[u8; 32]>())
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        (
            path_bytes(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            opt_text(),
            opt_text(),
        ),
        (timestamp(), timestamp(), timestamp(), any::<u64>()),
        (
            prop::option::of(path_bytes()),
            prop::option::of(device_numbers()),
            vec(xattr(), 0..4),
            prop::option::of(vec(extent(), 0..6)),
            any::<u32>(),
            prop::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (path, kind, mode, uid, gid, user, group),
                (mtime, atime, ctime, size),
                (link_target, device, xattrs, sparse, inode_flags, continued_from),
            )| Entry {
                path,
                kind,
                mode,
                uid,
                gid,
                user,
                group,
                mtime,
                atime,
                ctime,
                size,
                link_target,
                device,
                xattrs,
                sparse,
                inode_flags,
                continued_from,
            },
        )
}

fn entry_end() -> impl Strategy<Value = EntryEnd> {
    (hash32(), any::<u64>(), any::<u8>()).prop_map(|(blake3, stored_bytes, status)| EntryEnd {
        blake3,
        stored_bytes,
        status,
    })
}

fn session_start() -> impl Strategy<Value = SessionStart> {
    (
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<[u8; 16]>(),
            text(),
            text(),
        ),
        (
            timestamp(),
            text(),
            vec(path_bytes(), 0..4),
            any::<u32>(),
            any::<u32>(),
            prop::option::of(session_link()),
        ),
        (
            prop::option::of(vec(path_bytes(), 0..3)),
            prop::option::of(vec(path_bytes(), 0..3)),
            prop::option::of((text(), 0u8..3, prop::option::of(any::<[u8; 16]>()))),
        ),
    )
        .prop_map(
            |(
                (session_uuid, session, set_uuid, set_name, host),
                (started, tapir_version, sources, volume_seq, block_size, continues),
                (excludes, contents_excluded, job),
            )| SessionStart {
                session_uuid,
                session,
                set_uuid,
                set_name,
                host,
                started,
                tapir_version,
                sources: sources.into_iter().map(Into::into).collect(),
                volume_seq,
                block_size,
                continues,
                excludes: excludes.map(|v| v.into_iter().map(Into::into).collect()),
                contents_excluded: contents_excluded
                    .map(|v| v.into_iter().map(Into::into).collect()),
                job: job.map(|(name, level, base)| JobRun {
                    name,
                    level,
                    base,
                    copy: (level > 0).then_some(level + 1),
                }),
            },
        )
}

fn session_link() -> impl Strategy<Value = SessionLink> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<[u8; 16]>(),
    )
        .prop_map(
            |(previous_session_uuid, previous_volume_uuid, part, first_session_uuid)| SessionLink {
                previous_session_uuid,
                previous_volume_uuid,
                part,
                first_session_uuid,
            },
        )
}

fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    (any::<u64>(), any::<u64>(), timestamp()).prop_map(|(entries, bytes, at)| Checkpoint {
        entries,
        bytes,
        at,
    })
}

fn session_end() -> impl Strategy<Value = SessionEnd> {
    (
        any::<u64>(),
        any::<u64>(),
        timestamp(),
        any::<u64>(),
        any::<u8>(),
        any::<u64>(),
    )
        .prop_map(
            |(entries, stored_bytes, ended, warnings, status, skipped)| SessionEnd {
                entries,
                stored_bytes,
                ended,
                warnings,
                status,
                skipped,
            },
        )
}

fn stream_position() -> impl Strategy<Value = StreamPosition> {
    (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(tape_file, block, offset)| {
        StreamPosition {
            tape_file,
            block,
            offset,
        }
    })
}

fn catalog_header() -> impl Strategy<Value = CatalogHeader> {
    (any::<[u8; 16]>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
        |(session_uuid, session, data_tape_file, entries)| CatalogHeader {
            session_uuid,
            session,
            data_tape_file,
            entries,
        },
    )
}

fn catalog_entry() -> impl Strategy<Value = CatalogEntry> {
    (
        (
            path_bytes(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            opt_text(),
            opt_text(),
        ),
        (
            timestamp(),
            any::<u64>(),
            prop::option::of(path_bytes()),
            stream_position(),
            hash32(),
            any::<u8>(),
            prop::option::of(device_numbers()),
            prop::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (path, kind, mode, uid, gid, user, group),
                (mtime, size, link_target, position, blake3, status, device, continued_from),
            )| CatalogEntry {
                path,
                kind,
                mode,
                uid,
                gid,
                user,
                group,
                mtime,
                size,
                link_target,
                position,
                blake3,
                status,
                device,
                continued_from,
            },
        )
}

fn catalog_end() -> impl Strategy<Value = CatalogEnd> {
    (any::<u64>(), any::<[u8; 32]>(), session_end()).prop_map(|(entries, digest, summary)| {
        CatalogEnd {
            entries,
            digest,
            summary,
        }
    })
}

fn set_membership() -> impl Strategy<Value = SetMembership> {
    (
        any::<[u8; 16]>(),
        text(),
        any::<u32>(),
        prop::option::of(any::<[u8; 16]>()),
        timestamp(),
        text(),
    )
        .prop_map(
            |(set_uuid, set_name, volume_seq, previous_volume, joined, host)| SetMembership {
                set_uuid,
                set_name,
                volume_seq,
                previous_volume,
                joined,
                host,
            },
        )
}

fn rescue_kit() -> impl Strategy<Value = RescueKit> {
    (
        any::<bool>(),
        any::<bool>(),
        opt_text(),
        hash32(),
        any::<Option<u64>>(),
        any::<Option<u32>>(),
    )
        .prop_map(
            |(
                format_spec,
                binary,
                binary_version,
                binary_blake3,
                binary_size,
                binary_first_block,
            )| {
                RescueKit {
                    format_spec,
                    binary,
                    binary_version,
                    binary_blake3,
                    binary_size,
                    binary_first_block,
                }
            },
        )
}

/// A label that a v1 reader accepts: block size within the allowed range.
fn volume_label() -> impl Strategy<Value = VolumeLabel> {
    (
        (any::<[u8; 16]>(), text(), text(), timestamp(), text()),
        (
            MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE,
            prop::option::of(set_membership()),
            rescue_kit(),
            any::<bool>(),
            text(),
        ),
    )
        .prop_map(
            |(
                (volume_uuid, label, pool, labelled, host),
                (block_size, set, rescue_kit, worm, tapir_version),
            )| VolumeLabel {
                format_version: FORMAT_VERSION,
                volume_uuid,
                label,
                pool,
                labelled,
                host,
                block_size,
                set,
                rescue_kit,
                worm,
                tapir_version,
            },
        )
}

/// A CBOR value of any shape, for unknown fields a future version might add.
#[derive(Debug, Clone)]
enum Value {
    U(u64),
    N(i64),
    F(f64),
    Bool(bool),
    Null,
    Undefined,
    Bytes(Vec<u8>),
    Text(String),
    IndefBytes(Vec<Vec<u8>>),
    Tagged(u64, Box<Value>),
    Array(Vec<Value>),
    IndefArray(Vec<Value>),
    Map(Vec<(Value, Value)>),
    IndefMap(Vec<(Value, Value)>),
}

fn cbor_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Value::U),
        any::<i64>().prop_map(Value::N),
        any::<f64>().prop_map(Value::F),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        Just(Value::Undefined),
        vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        "\\PC{0,12}".prop_map(Value::Text),
        vec(vec(any::<u8>(), 0..8), 0..3).prop_map(Value::IndefBytes),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            (any::<u64>(), inner.clone()).prop_map(|(t, v)| Value::Tagged(t, Box::new(v))),
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(inner.clone(), 0..4).prop_map(Value::IndefArray),
            vec((inner.clone(), inner.clone()), 0..3).prop_map(Value::Map),
            vec((inner.clone(), inner), 0..3).prop_map(Value::IndefMap),
        ]
    })
}

fn encode_value(e: &mut Encoder<&mut Vec<u8>>, v: &Value) {
    match v {
        Value::U(x) => {
            e.u64(*x).unwrap();
        }
        Value::N(x) => {
            e.i64(*x).unwrap();
        }
        Value::F(x) => {
            e.f64(*x).unwrap();
        }
        Value::Bool(x) => {
            e.bool(*x).unwrap();
        }
        Value::Null => {
            e.null().unwrap();
        }
        Value::Undefined => {
            e.undefined().unwrap();
        }
        Value::Bytes(b) => {
            e.bytes(b).unwrap();
        }
        Value::Text(s) => {
            e.str(s).unwrap();
        }
        Value::IndefBytes(chunks) => {
            e.begin_bytes().unwrap();
            for c in chunks {
                e.bytes(c).unwrap();
            }
            e.end().unwrap();
        }
        Value::Tagged(t, inner) => {
            e.tag(Tag::new(*t)).unwrap();
            encode_value(e, inner);
        }
        Value::Array(items) => {
            e.array(items.len() as u64).unwrap();
            for i in items {
                encode_value(e, i);
            }
        }
        Value::IndefArray(items) => {
            e.begin_array().unwrap();
            for i in items {
                encode_value(e, i);
            }
            e.end().unwrap();
        }
        Value::Map(pairs) => {
            e.map(pairs.len() as u64).unwrap();
            for (k, v) in pairs {
                encode_value(e, k);
                encode_value(e, v);
            }
        }
        Value::IndefMap(pairs) => {
            e.begin_map().unwrap();
            for (k, v) in pairs {
                encode_value(e, k);
                encode_value(e, v);
            }
            e.end().unwrap();
        }
    }
}

fn value_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(&mut Encoder::new(&mut out), v);
    out
}

/// Re-emit an encoded CBOR map with one more key/value pair, placed first
/// or last. The map header is rewritten with minicbor's own encoder.
fn with_extra_key(encoded: &[u8], key: u32, value: &[u8], first: bool) -> Vec<u8> {
    let mut d = Decoder::new(encoded);
    let len = d
        .map()
        .expect("structure encodes as a map")
        .expect("definite-length map");
    let body = &encoded[d.position()..];
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out);
    e.map(len + 1).unwrap();
    if first {
        e.u32(key).unwrap();
        out.extend_from_slice(value);
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(body);
        Encoder::new(&mut out).u32(key).unwrap();
        out.extend_from_slice(value);
    }
    out
}

/// Keys a future version might add: well above every key v1 uses (max 16).
fn future_key() -> impl Strategy<Value = u32> {
    prop_oneof![24u32..64, 1000u32..=u32::MAX]
}

// ---------------------------------------------------------------------------
// Fixed headers
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn block_header_round_trips((header, payload) in valid_block()) {
        let mut buf = Vec::new();
        header.encode_block(&payload, &mut buf);
        prop_assert_eq!(buf.len(), BLOCK_HEADER_LEN + payload.len());
        prop_assert_eq!(&buf[..BLOCK_HEADER_LEN], &header.encode(&payload)[..]);
        let (decoded, got_payload) = BlockHeader::decode(&buf).expect("valid block decodes");
        prop_assert_eq!(decoded, header);
        prop_assert_eq!(got_payload, &payload[..]);
    }

    #[test]
    fn block_decode_accepts_exactly_what_encode_reproduces(bytes in vec(any::<u8>(), 0..256)) {
        // Arbitrary bytes, with the magic forced in half the time so the
        // later checks get exercised too.
        let mut b = bytes;
        if b.len() >= 8 && b[0] & 1 == 0 {
            b[..8].copy_from_slice(b"TAPIRBLK");
        }
        if let Ok((h, payload)) = BlockHeader::decode(&b) {
            let mut again = Vec::new();
            h.encode_block(payload, &mut again);
            prop_assert_eq!(&again[..], &b[..again.len()]);
        }
    }

    #[test]
    fn any_single_flipped_bit_in_a_block_is_detected(
        (header, payload) in valid_block(),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        header.encode_block(&payload, &mut buf);
        // One chosen bit for shrinking-friendly failures, then every bit.
        let bit = pick.index(buf.len() * 8);
        let mut b = buf.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(BlockHeader::decode(&b).is_err(), "flip of bit {} undetected", bit);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(BlockHeader::decode(&b).is_err(), "flip of bit {} undetected", bit);
        }
    }

    #[test]
    fn record_header_round_trips(h in valid_record_header()) {
        let bytes = h.encode();
        prop_assert_eq!(RecordHeader::decode(&bytes).expect("valid header decodes"), h);
    }

    #[test]
    fn record_header_decode_is_total_and_canonical(bytes in any::<[u8; RECORD_HEADER_LEN]>()) {
        match RecordHeader::decode(&bytes) {
            Ok(h) => {
                prop_assert!(h.body_len <= MAX_RECORD_BODY);
                prop_assert_eq!(h.encode(), bytes);
            }
            Err(FormatError::UnknownRecordType(c)) => {
                prop_assert!(!KNOWN_RECORD_CODES.contains(&c));
            }
            Err(FormatError::TooLong { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    #[test]
    fn stored_data_prefix_round_trips(offset in any::<u64>(), content in vec(any::<u8>(), 0..2048)) {
        let prefix = DataPrefix { offset, raw_len: content.len() as u32, codec: Codec::Stored };
        let mut body = prefix.encode().to_vec();
        body.extend_from_slice(&content);
        let (p, c) = DataPrefix::decode(&body).expect("stored chunk decodes");
        prop_assert_eq!(p, prefix);
        prop_assert_eq!(c, &content[..]);
        let mut out = Vec::new();
        p.decode_content(c, &mut out).unwrap();
        prop_assert_eq!(out, content);
    }

    #[test]
    fn zstd_data_prefix_round_trips(
        offset in any::<u64>(),
        content in prop_oneof![
            vec(any::<u8>(), 0..4096),
            (any::<u8>(), 0usize..65536).prop_map(|(b, n)| vec![b; n]),
        ],
        level in 1i32..4,
    ) {
        let compressed = zstd::bulk::compress(&content, level).unwrap();
        let prefix = DataPrefix { offset, raw_len: content.len() as u32, codec: Codec::Zstd };
        let mut body = prefix.encode().to_vec();
        body.extend_from_slice(&compressed);
        let (p, c) = DataPrefix::decode(&body).expect("zstd chunk decodes");
        prop_assert_eq!(p, prefix);
        prop_assert_eq!(c, &compressed[..]);
        let mut out = vec![0xAA; 7]; // must be cleared first
        p.decode_content(c, &mut out).unwrap();
        prop_assert_eq!(out, content);
    }

    #[test]
    fn data_prefix_decoding_is_bounded(body in vec(any::<u8>(), 0..512), zstd_codec in any::<bool>()) {
        let mut body = body;
        if body.len() > 12 && zstd_codec {
            body[12] = Codec::Zstd.code();
        }
        if let Ok((p, content)) = DataPrefix::decode(&body) {
            prop_assert!(p.raw_len as usize <= DATA_CHUNK_LEN);
            prop_assert_eq!(content.len(), body.len() - DATA_PREFIX_LEN);
            let mut out = Vec::new();
            if p.decode_content(content, &mut out).is_ok() {
                prop_assert_eq!(out.len(), p.raw_len as usize);
            }
            prop_assert!(out.len() <= DATA_CHUNK_LEN);
        }
    }

    #[test]
    fn block_and_label_decoders_never_panic(bytes in vec(any::<u8>(), 0..1024)) {
        let _ = BlockHeader::decode(&bytes);
        let _ = LabelBlock::decode(&bytes);
        let mut with_magic = b"TAPIR VOLUME LABEL".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = LabelBlock::decode(&with_magic);
    }
}

// ---------------------------------------------------------------------------
// CBOR structures
// ---------------------------------------------------------------------------

/// Encode, decode, compare; then the same with an unknown key added first
/// and last; then decode a few mutations of the encoding (must not panic).
fn check_cbor<T>(
    value: &T,
    key: u32,
    extra: &Value,
    mutations: &[(prop::sample::Index, u8)],
) -> Result<(), TestCaseError>
where
    T: minicbor::Encode<()> + for<'b> minicbor::Decode<'b, ()> + PartialEq + std::fmt::Debug,
{
    let bytes = to_cbor(value);
    let back: T = from_cbor(&bytes).map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
    prop_assert_eq!(&back, value);

    let extra = value_bytes(extra);
    for first in [true, false] {
        let extended = with_extra_key(&bytes, key, &extra, first);
        let back: T = from_cbor(&extended).map_err(|e| {
            TestCaseError::fail(format!(
                "unknown key {key} (first: {first}) not ignored: {e}"
            ))
        })?;
        prop_assert_eq!(&back, value);
    }

    for (at, byte) in mutations {
        let mut m = bytes.clone();
        if m.is_empty() {
            continue;
        }
        let i = at.index(m.len());
        m[i] = *byte;
        let _ = from_cbor::<T>(&m);
        let _ = from_cbor::<T>(&m[..i]);
    }
    Ok(())
}

fn mutations() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn entry_cbor(v in entry(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
        // The kind byte maps back to an EntryKind exactly for the known codes.
        prop_assert_eq!(v.kind().is_ok(), (1..=8).contains(&v.kind));
    }

    #[test]
    fn entry_end_cbor(v in entry_end(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn session_start_cbor(v in session_start(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn checkpoint_cbor(v in checkpoint(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn session_end_cbor(v in session_end(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn catalog_header_cbor(v in catalog_header(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn catalog_entry_cbor(v in catalog_entry(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn catalog_end_cbor(v in catalog_end(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn set_membership_and_rescue_kit_cbor(
        s in set_membership(),
        r in rescue_kit(),
        k in future_key(),
        x in cbor_value(),
        m in mutations(),
    ) {
        check_cbor(&s, k, &x, &m)?;
        check_cbor(&r, k, &x, &m)?;
    }

    #[test]
    fn volume_label_cbor(v in volume_label(), k in future_key(), x in cbor_value(), m in mutations()) {
        check_cbor(&v, k, &x, &m)?;
    }

    #[test]
    fn label_block_round_trips(v in volume_label()) {
        let block = LabelBlock::encode(&v);
        prop_assume!(block.len() <= LABEL_AREA_PLUS_MAX_CBOR);
        prop_assert!(LabelBlock::looks_like_label(&block));
        let back = LabelBlock::decode(&block).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, v);
    }

    #[test]
    fn label_block_with_unknown_key_still_decodes(v in volume_label(), k in future_key(), x in cbor_value()) {
        // Rebuild the framed part of the label block with an extended map,
        // as a later tapir might write it.
        let block = LabelBlock::encode(&v);
        let area = tapir::format::label::LABEL_TEXT_AREA;
        let (h, payload) = BlockHeader::decode(&block[area..]).unwrap();
        let extended = with_extra_key(payload, k, &value_bytes(&x), false);
        prop_assume!(extended.len() <= MAX_LABEL_CBOR);
        let h2 = BlockHeader { payload_len: extended.len() as u32, ..h };
        let mut framed = Vec::new();
        h2.encode_block(&extended, &mut framed);
        let mut block2 = block[..area].to_vec();
        block2.extend_from_slice(&framed);
        let back = LabelBlock::decode(&block2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, v);
    }

    #[test]
    fn cbor_decoders_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = from_cbor::<Entry>(&bytes);
        let _ = from_cbor::<EntryEnd>(&bytes);
        let _ = from_cbor::<SessionStart>(&bytes);
        let _ = from_cbor::<Checkpoint>(&bytes);
        let _ = from_cbor::<SessionEnd>(&bytes);
        let _ = from_cbor::<CatalogHeader>(&bytes);
        let _ = from_cbor::<CatalogEntry>(&bytes);
        let _ = from_cbor::<CatalogEnd>(&bytes);
        let _ = from_cbor::<VolumeLabel>(&bytes);
        let _ = from_cbor::<SetMembership>(&bytes);
        let _ = from_cbor::<RescueKit>(&bytes);
        let _ = from_cbor::<Timestamp>(&bytes);
        let _ = from_cbor::<StreamPosition>(&bytes);
    }
}

const LABEL_AREA_PLUS_MAX_CBOR: usize =
    tapir::format::label::LABEL_TEXT_AREA + BLOCK_HEADER_LEN + MAX_LABEL_CBOR;

/// A map built entirely by hand, keys out of order and interleaved with
/// fields from the future, decodes to the v1 structure.
#[test]
fn hand_built_maps_with_future_fields_decode() {
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf);
    e.map(6).unwrap();
    e.u32(99).unwrap().str("a field from format v7").unwrap();
    e.u32(2)
        .unwrap()
        .array(2)
        .unwrap()
        .i64(1_790_000_000)
        .unwrap()
        .u32(42)
        .unwrap();
    e.u32(0).unwrap().u64(12).unwrap();
    e.u32(17).unwrap().begin_map().unwrap();
    e.str("nested")
        .unwrap()
        .array(1)
        .unwrap()
        .tag(Tag::new(1234))
        .unwrap()
        .null()
        .unwrap();
    e.end().unwrap();
    e.u32(1).unwrap().u64(4096).unwrap();
    e.u32(u32::MAX).unwrap().bytes(&[0xff; 40]).unwrap();
    let cp: Checkpoint = from_cbor(&buf).unwrap();
    assert_eq!(
        cp,
        Checkpoint {
            entries: 12,
            bytes: 4096,
            at: Timestamp {
                sec: 1_790_000_000,
                nsec: 42
            },
        }
    );

    // An EntryEnd with a future key but without its optional hash.
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf);
    e.begin_map().unwrap();
    e.u32(1).unwrap().u64(0).unwrap();
    e.u32(3)
        .unwrap()
        .begin_array()
        .unwrap()
        .u8(1)
        .unwrap()
        .u8(2)
        .unwrap()
        .end()
        .unwrap();
    e.u32(2).unwrap().u8(0).unwrap();
    e.end().unwrap();
    let ee: EntryEnd = from_cbor(&buf).unwrap();
    assert_eq!(
        ee,
        EntryEnd {
            blake3: None,
            stored_bytes: 0,
            status: 0
        }
    );
}

#[test]
fn entry_kind_codes_round_trip() {
    for k in [
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Symlink,
        EntryKind::HardLink,
        EntryKind::Fifo,
        EntryKind::CharDevice,
        EntryKind::BlockDevice,
        EntryKind::Unchanged,
    ] {
        assert_eq!(EntryKind::from_code(k.code()).unwrap(), k);
    }
    assert!(EntryKind::from_code(0).is_err());
    assert!(EntryKind::from_code(9).is_err());
}

// ---------------------------------------------------------------------------
// Stream framing
// ---------------------------------------------------------------------------

fn ident(tape_file: u32) -> StreamIdentity {
    StreamIdentity {
        kind: BlockKind::SessionData,
        set_uuid: [0x5A; 16],
        volume_seq: 1,
        tape_file,
        session: 3,
    }
}

struct Framed {
    blocks: Vec<Vec<u8>>,
    positions: Vec<StreamPosition>,
}

/// Frame `records` (type, body split into parts) into blocks of `block_size`.
fn frame(records: &[(RecordType, Vec<Vec<u8>>)], block_size: u32, tape_file: u32) -> Framed {
    let mut blocks = Vec::new();
    let mut framer = StreamFramer::new(ident(tape_file), block_size, Vec::new());
    let mut positions = Vec::new();
    for (rtype, parts) in records {
        let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let before = framer.position();
        let pos = framer
            .push_record::<Infallible>(*rtype, 0, &parts, &mut |b| {
                blocks.push(b);
                Ok(Vec::new())
            })
            .unwrap();
        assert_eq!(pos, before, "position() announced where the record went");
        positions.push(pos);
    }
    blocks.push(framer.finish());
    Framed { blocks, positions }
}

fn body_of(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn stream_records() -> impl Strategy<Value = Vec<(RecordType, Vec<Vec<u8>>)>> {
    let body_len = prop_oneof![
        4 => 0usize..64,
        2 => 64usize..700,
        1 => 700usize..3000,
    ];
    let record = (known_record_type(), body_len, 1usize..4, any::<u8>()).prop_map(
        |(rtype, len, nparts, seed)| {
            let body: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
            // Split the body into `nparts` pieces (some may be empty).
            let mut parts = Vec::new();
            let step = len / nparts + 1;
            for chunk in body.chunks(step) {
                parts.push(chunk.to_vec());
            }
            while parts.len() < nparts {
                parts.push(Vec::new());
            }
            (rtype, parts)
        },
    );
    vec(record, 0..40)
}

fn block_size() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => (BLOCK_HEADER_LEN as u32 + 1)..(BLOCK_HEADER_LEN as u32 + 300),
        1 => Just(MIN_BLOCK_SIZE),
    ]
}

fn deframe(blocks: &[Vec<u8>], lost: Option<usize>) -> Vec<Record> {
    let mut d = StreamDeframer::new();
    let mut out = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        if Some(i) == lost {
            d.lose_block();
            continue;
        }
        let (h, p) = BlockHeader::decode(b).expect("framer output decodes");
        d.push_block(&h, p, &mut out)
            .expect("framer output deframes");
    }
    out
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn framer_and_deframer_round_trip(
        records in stream_records(),
        bs in block_size(),
        tape_file in 0u32..5,
    ) {
        let f = frame(&records, bs, tape_file);
        let n = f.blocks.len();
        for (i, b) in f.blocks.iter().enumerate() {
            let (h, _) = BlockHeader::decode(b).expect("framer output decodes");
            prop_assert_eq!(h.block_seq, i as u64);
            prop_assert_eq!(h.tape_file, tape_file);
            prop_assert_eq!(h.is_last_in_file(), i + 1 == n);
            if i + 1 < n {
                prop_assert_eq!(b.len(), bs as usize, "every block but the last is full");
            } else {
                prop_assert!(b.len() <= bs as usize);
            }
        }
        let out = deframe(&f.blocks, None);
        prop_assert_eq!(out.len(), records.len());
        for ((got, (rtype, parts)), pos) in out.iter().zip(&records).zip(&f.positions) {
            prop_assert_eq!(got.header.rtype, *rtype);
            prop_assert_eq!(&got.body, &body_of(parts));
            prop_assert_eq!(got.position, *pos);
            prop_assert_eq!(got.position.tape_file, tape_file);
        }
    }

    #[test]
    fn early_sealed_blocks_round_trip(
        records in stream_records(),
        seal_after in vec(any::<bool>(), 40),
        bs in block_size(),
    ) {
        // Checkpoints seal a block before it is full; readers must not care.
        let mut blocks = Vec::new();
        let mut framer = StreamFramer::new(ident(2), bs, Vec::new());
        let mut positions = Vec::new();
        for (i, (rtype, parts)) in records.iter().enumerate() {
            let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            let mut emit = |b| {
                blocks.push(b);
                Ok::<_, Infallible>(Vec::new())
            };
            positions.push(framer.push_record(*rtype, 0, &parts, &mut emit).unwrap());
            if seal_after[i] {
                framer.seal_early(&mut emit).unwrap();
                prop_assert_eq!(framer.position().offset, 0, "a sealed block leaves an empty one");
            }
        }
        blocks.push(framer.finish());
        for (i, b) in blocks.iter().enumerate() {
            let (h, p) = BlockHeader::decode(b).expect("framer output decodes");
            prop_assert_eq!(h.block_seq, i as u64);
            prop_assert!(b.len() <= bs as usize);
            prop_assert!(!p.is_empty() || i + 1 == blocks.len(), "only the last block may be empty");
        }
        let out = deframe(&blocks, None);
        prop_assert_eq!(out.len(), records.len());
        for ((got, (rtype, parts)), pos) in out.iter().zip(&records).zip(&positions) {
            prop_assert_eq!(got.header.rtype, *rtype);
            prop_assert_eq!(&got.body, &body_of(parts));
            prop_assert_eq!(got.position, *pos);
        }
    }

    #[test]
    fn first_record_points_at_the_first_record_starting_in_each_block(
        records in stream_records(),
        bs in block_size(),
    ) {
        let f = frame(&records, bs, 1);
        for (i, b) in f.blocks.iter().enumerate() {
            let (h, _) = BlockHeader::decode(b).unwrap();
            let first = f.positions.iter().find(|p| p.block == i as u64);
            match first {
                Some(p) => prop_assert_eq!(h.first_record, p.offset),
                None => prop_assert_eq!(h.first_record, NO_RECORD_START),
            }
        }
    }

    #[test]
    fn a_lost_block_loses_exactly_the_records_it_touches(
        records in stream_records(),
        bs in block_size(),
        lost in any::<prop::sample::Index>(),
    ) {
        let f = frame(&records, bs, 1);
        let lost = lost.index(f.blocks.len());
        let out = deframe(&f.blocks, Some(lost));
        let cap = bs as u64 - BLOCK_HEADER_LEN as u64;
        let mut expected = Vec::new();
        for ((rtype, parts), pos) in records.iter().zip(&f.positions) {
            let start = pos.block * cap + pos.offset as u64;
            let len = (RECORD_HEADER_LEN + body_of(parts).len()) as u64;
            let (first_block, last_block) = (start / cap, (start + len - 1) / cap);
            if !(first_block..=last_block).contains(&(lost as u64)) {
                expected.push((*rtype, body_of(parts), *pos));
            }
        }
        let got: Vec<_> = out
            .into_iter()
            .map(|r| (r.header.rtype, r.body, r.position))
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn deframer_never_panics_on_arbitrary_valid_blocks(
        payloads in vec((vec(any::<u8>(), 0..200), any::<u64>(), any::<Option<prop::sample::Index>>()), 0..12),
    ) {
        // Blocks with valid headers and CRCs but arbitrary payloads, sequence
        // numbers and first-record offsets: the deframer must stay calm.
        let mut d = StreamDeframer::new();
        let mut out = Vec::new();
        for (i, (payload, seq, fr)) in payloads.iter().enumerate() {
            let first_record = match fr {
                Some(ix) if !payload.is_empty() => ix.index(payload.len()) as u32,
                _ => NO_RECORD_START,
            };
            let h = BlockHeader {
                version: FORMAT_VERSION,
                kind: BlockKind::SessionData,
                flags: 0,
                set_uuid: [0; 16],
                volume_seq: 1,
                tape_file: 2,
                block_seq: if i % 3 == 0 { *seq % 16 } else { i as u64 },
                payload_len: payload.len() as u32,
                first_record,
                session: 1,
            };
            let mut buf = Vec::new();
            h.encode_block(payload, &mut buf);
            let (h, p) = BlockHeader::decode(&buf).unwrap();
            let _ = d.push_block(&h, p, &mut out);
            if i % 5 == 4 {
                d.lose_block();
            }
        }
        for r in &out {
            prop_assert_eq!(r.body.len(), r.header.body_len as usize);
        }
    }
}

/// The record types a reader meets come back with their exact codes.
#[test]
fn record_type_codes_are_stable() {
    let pairs = [
        (RecordType::SessionStart, 0x0001),
        (RecordType::Entry, 0x0002),
        (RecordType::Data, 0x0003),
        (RecordType::EntryEnd, 0x0004),
        (RecordType::Checkpoint, 0x0005),
        (RecordType::SessionEnd, 0x0006),
        (RecordType::CatalogHeader, 0x0010),
        (RecordType::CatalogEntry, 0x0011),
        (RecordType::CatalogEnd, 0x0012),
    ];
    for (t, c) in pairs {
        assert_eq!(t.code(), c);
        let h = RecordHeader {
            rtype: t,
            flags: 0,
            body_len: 1,
        };
        assert_eq!(RecordHeader::decode(&h.encode()).unwrap().rtype, t);
    }
    // An unknown type without the skippable flag stops a v1 reader.
    let h = RecordHeader {
        rtype: RecordType::Unknown(0x0100),
        flags: 0,
        body_len: 0,
    };
    assert_eq!(
        RecordHeader::decode(&h.encode()).unwrap_err(),
        FormatError::UnknownRecordType(0x0100)
    );
}
