//! Hostile cartridges: entries crafted to escape the restore target or to
//! exhaust memory are refused, with a message, and nothing leaves the target.

mod common;

use std::convert::Infallible;
use std::fs;

use common::*;
use tapir::device::vtape::VirtualTape;
use tapir::device::{BlockWrite, TapeDrive};
use tapir::format::block::{BlockHeader, BlockKind};
use tapir::format::meta::{to_cbor, Entry, EntryEnd, EntryKind, SessionStart, Timestamp};
use tapir::format::record::{Codec, DataPrefix, RecordHeader, RecordType};
use tapir::format::stream::{StreamFramer, StreamIdentity};

/// What to put on the forged tape: an entry and the content of its one chunk.
struct Forged {
    entry: Entry,
    data: Option<Vec<u8>>,
}

fn entry(path: &[u8], kind: EntryKind) -> Entry {
    let mut e = Entry::new(path.to_vec(), kind);
    e.mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
    e
}

fn file(path: &[u8], data: &[u8]) -> Forged {
    let mut e = entry(path, EntryKind::File);
    e.size = data.len() as u64;
    Forged {
        entry: e,
        data: Some(data.to_vec()),
    }
}

fn link(path: &[u8], kind: EntryKind, target: &[u8]) -> Forged {
    let mut e = entry(path, kind);
    e.link_target = Some(target.to_vec());
    Forged {
        entry: e,
        data: None,
    }
}

/// A labelled cartridge whose session 1 holds `items` exactly as given,
/// written with the format layer directly (no catalog: restore must scan).
fn forge(lab: &Lab, items: Vec<Forged>, raw_tail: Option<Vec<u8>>) {
    lab.label("TAP001L9");
    let image = lab.image("TAP001L9");
    let mut tape = VirtualTape::open(&image, "forge").unwrap();
    tape.seek_end_of_data().unwrap();
    let pos = tape.position().unwrap();
    assert_eq!(pos.file, 2);
    let id = StreamIdentity {
        kind: BlockKind::SessionData,
        set_uuid: [0; 16],
        volume_seq: 0,
        tape_file: 2,
        session: 1,
    };
    let mut blocks = Vec::new();
    let mut f = StreamFramer::new(id, 64 * 1024, Vec::new());
    let mut emit = |b: Vec<u8>| -> Result<Vec<u8>, Infallible> {
        blocks.push(b);
        Ok(Vec::new())
    };
    let start = SessionStart {
        session_uuid: [1; 16],
        session: 1,
        set_uuid: [0; 16],
        set_name: "hostile".into(),
        host: "attacker".into(),
        started: Timestamp::now(),
        tapir_version: "0".into(),
        sources: vec![],
        volume_seq: 0,
        block_size: 64 * 1024,
        continues: None,
        excludes: None,
        contents_excluded: None,
    };
    f.push_record(RecordType::SessionStart, 0, &[&to_cbor(&start)], &mut emit)
        .unwrap();
    for it in items {
        f.push_record(RecordType::Entry, 0, &[&to_cbor(&it.entry)], &mut emit)
            .unwrap();
        let mut hash = None;
        if let Some(d) = &it.data {
            let p = DataPrefix {
                offset: 0,
                raw_len: d.len() as u32,
                codec: Codec::Stored,
            };
            f.push_record(RecordType::Data, 0, &[&p.encode(), d], &mut emit)
                .unwrap();
            hash = Some(*blake3::hash(d).as_bytes());
        }
        let end = EntryEnd {
            blake3: hash,
            stored_bytes: 0,
            status: 0,
        };
        f.push_record(RecordType::EntryEnd, 0, &[&to_cbor(&end)], &mut emit)
            .unwrap();
    }
    let next_seq = f.blocks_sealed() + 1;
    blocks.push(f.finish());
    for b in &blocks {
        tape.write_block(b).unwrap();
    }
    if let Some(payload) = raw_tail {
        let h = BlockHeader {
            version: 1,
            kind: BlockKind::SessionData,
            flags: 0,
            set_uuid: [0; 16],
            volume_seq: 0,
            tape_file: 2,
            block_seq: next_seq,
            payload_len: payload.len() as u32,
            first_record: 0,
            session: 1,
        };
        let mut b = Vec::new();
        h.encode_block(&payload, &mut b);
        tape.write_block(&b).unwrap();
    }
    tape.write_filemarks(1, false).unwrap();
}

#[test]
fn paths_that_escape_the_target_are_refused() {
    let lab = Lab::new(1, "64M");
    let outside = lab.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    let outside_abs = outside.to_str().unwrap().as_bytes().to_vec();
    let mut evil_abs = outside_abs.clone();
    evil_abs.extend_from_slice(b"/planted");
    forge(
        &lab,
        vec![
            file(&evil_abs, b"absolute"),
            file(b"ok/../../planted-dotdot", b"dotdot"),
            link(b"escape", EntryKind::Symlink, &outside_abs),
            file(b"escape/planted-via-symlink", b"through a symlink"),
            link(b"hl-up", EntryKind::HardLink, b"../outside/secret"),
            link(
                b"hl-abs",
                EntryKind::HardLink,
                &[&outside_abs[..], b"/secret"].concat(),
            ),
            link(b"hl-missing", EntryKind::HardLink, b"no/such/file"),
            file(b"fine.txt", b"this one is fine"),
        ],
        None,
    );
    let target = lab.path("target");
    let r = lab.tapir(["restore", "--to", target.to_str().unwrap()]);
    assert_code(&r, 4);
    let report = text(&r.stdout);
    for what in [
        "planted\"",
        "planted-dotdot",
        "escape/planted-via-symlink",
        "hl-up",
        "hl-abs",
    ] {
        assert!(
            report.contains("REFUSED") && report.contains(what),
            "{what} refused: {report}"
        );
    }
    assert!(
        report.contains("FAILED hl-missing"),
        "a dangling hard link fails alone: {report}"
    );
    // Nothing appeared outside the target, and the secret is untouched.
    let mut names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep");
    assert!(!lab.path("planted-dotdot").exists());
    // The symlink itself is restored as a symlink; the honest entry restores.
    assert!(fs::symlink_metadata(target.join("escape"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read(target.join("fine.txt")).unwrap(),
        b"this one is fine"
    );
}

#[test]
fn absurd_lengths_are_refused_before_allocating() {
    let lab = Lab::new(1, "64M");
    // A record header claiming a 4 GiB body, then garbage.
    let mut tail = RecordHeader {
        rtype: RecordType::Entry,
        flags: 0,
        body_len: 0,
    }
    .encode()
    .to_vec();
    tail[4..8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    tail.extend_from_slice(&[0xAB; 100]);
    let mut big = entry(b"big", EntryKind::File);
    big.size = 10;
    forge(
        &lab,
        vec![
            file(b"before.txt", b"intact"),
            // Content past the entry's declared size.
            Forged {
                entry: big,
                data: Some(vec![1u8; 64]),
            },
        ],
        Some(tail),
    );
    let target = lab.path("target");
    let r = lab.tapir(["restore", "--to", target.to_str().unwrap()]);
    assert_code(&r, 4);
    let report = text(&r.stdout);
    assert!(
        report.contains("record body length 4294967280 exceeds"),
        "{report}"
    );
    assert!(report.contains("NOT RESTORED big"), "{report}");
    assert_eq!(fs::read(target.join("before.txt")).unwrap(), b"intact");
}
