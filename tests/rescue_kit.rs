//! The rescue kit in tape file 1 (FORMAT.md §2.2): FORMAT.md, then the
//! tapir binary the label describes, block by block as a stranger with
//! `mt` and `dd` would read it; a kit without binary or left out says so.
//! (The extraction with dd from a real st device, and restoring with the
//! extracted binary, is in scripts/vm/init.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use tapir::device::vtape::VirtualTape;
use tapir::device::{BlockRead, ReadOutcome, TapeDrive};
use tapir::format::label::{LabelBlock, RescueKit, VolumeLabel};
use tapir::pipeline::volume::{read_kit_binary, FORMAT_SPEC};

/// An executable script that says it is tapir, padded with a comment to
/// `len` bytes (so that it spans blocks).
fn fake_tapir(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("tapir-rescue");
    let mut script = b"#!/bin/sh\necho 'tapir 9.9.9-rescue'\nexit 0\n".to_vec();
    script.resize(len.max(script.len()), b'#');
    script.push(b'\n');
    std::fs::write(&path, &script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The label, and every block of tape file 1, read with the drive's own
/// block reads (what `dd bs=BLOCK_SIZE` gets from a tape).
fn label_and_kit_blocks(lab: &Lab) -> (VolumeLabel, String, Vec<Vec<u8>>) {
    let mut tape = VirtualTape::open(lab.image("TAP001L9"), "t").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    tape.rewind().unwrap();
    let ReadOutcome::Block(n) = tape.read_block(&mut buf).unwrap() else {
        panic!("no label block")
    };
    let label = LabelBlock::decode(&buf[..n]).unwrap();
    let text = LabelBlock::text(&label);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with(&text),
        "the label's text is on the tape"
    );
    tape.space_filemarks(1).unwrap();
    let mut blocks = Vec::new();
    while let ReadOutcome::Block(n) = tape.read_block(&mut buf).unwrap() {
        assert!(n <= label.block_size as usize);
        blocks.push(buf[..n].to_vec());
    }
    (label, text, blocks)
}

#[test]
fn a_given_binary_follows_format_md_in_tape_file_1_and_the_label_describes_it() {
    let lab = Lab::new(1, "64M");
    // 700 KiB: three blocks of 256 KiB, the last one short.
    let binary = fake_tapir(lab.dir.path(), 700 * 1024);
    let bytes = std::fs::read(&binary).unwrap();
    let (code, json) = lab.json([
        "label".as_ref(),
        "--label".as_ref(),
        "TAP001L9".as_ref(),
        "--rescue-binary".as_ref(),
        binary.as_os_str(),
    ]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["rescue_kit"]["binary"]["size"], bytes.len() as u64);

    let (label, text, blocks) = label_and_kit_blocks(&lab);
    let kit = label
        .rescue_kit
        .kit_binary()
        .expect("the label describes the binary");
    assert_eq!(kit.version, "tapir 9.9.9-rescue");
    assert_eq!(kit.size, bytes.len() as u64);
    assert_eq!(kit.blake3, *blake3::hash(&bytes).as_bytes());
    let bs = label.block_size as usize;
    let first = kit.first_block as usize;
    assert_eq!(first, FORMAT_SPEC.len().div_ceil(bs));
    assert_eq!(blocks[..first].concat(), FORMAT_SPEC.as_bytes());
    // Full blocks only, the last padded with zeros.
    assert_eq!(blocks.len() - first, bytes.len().div_ceil(bs));
    assert!(blocks[first..].iter().all(|b| b.len() == bs));
    let kit_bytes = blocks[first..].concat();
    assert_eq!(kit_bytes[..bytes.len()], bytes);
    assert!(kit_bytes[bytes.len()..].iter().all(|&b| b == 0));
    // The text a stranger reads gives the numbers the extraction needs.
    let hash = blake3::hash(&bytes).to_hex().to_string();
    for line in [
        format!("mt -f /dev/nst0 fsr {first}\n"),
        format!("dd if=/dev/nst0 bs={bs} count={first} > FORMAT.md\n"),
        format!("dd if=/dev/nst0 bs={bs} | head -c {} > tapir;", bytes.len()),
        format!("BLAKE3 {hash}\n"),
    ] {
        assert!(text.contains(&line), "{line:?} missing from\n{text}");
    }
    let mut tape = VirtualTape::open(lab.image("TAP001L9"), "t").unwrap();
    assert_eq!(read_kit_binary(&mut tape, &kit).unwrap(), bytes);
}

#[test]
fn a_write_that_rewrites_the_label_keeps_the_binary_and_data_restores() {
    let lab = Lab::new(1, "64M");
    let binary = fake_tapir(lab.dir.path(), 300 * 1024);
    assert_ok(&lab.tapir([
        "label".as_ref(),
        "--label".as_ref(),
        "TAP001L9".as_ref(),
        "--rescue-binary".as_ref(),
        binary.as_os_str(),
    ]));
    let before = label_and_kit_blocks(&lab).0.rescue_kit;
    // Joining a set rewrites tape files 0 and 1; this tapir (dynamically
    // linked, no tapir-static beside it) has no binary of its own.
    std::fs::create_dir_all(lab.path("src/d")).unwrap();
    std::fs::write(lab.path("src/d/f"), b"kept").unwrap();
    assert_ok(&lab.tapir(["write", "--set", "s", "src"]));
    let (label, _, blocks) = label_and_kit_blocks(&lab);
    assert!(label.set.is_some());
    assert_eq!(label.rescue_kit, before);
    let kit = label.rescue_kit.kit_binary().unwrap();
    let bytes = std::fs::read(&binary).unwrap();
    assert_eq!(
        blocks[kit.first_block as usize..].concat()[..bytes.len()],
        bytes
    );
    assert_ok(&lab.tapir(["restore", "--to", "out"]));
    assert_eq!(std::fs::read(lab.path("out/src/d/f")).unwrap(), b"kept");
}

#[test]
fn without_a_binary_or_without_the_kit_the_label_says_so() {
    let lab = Lab::new(1, "64M");
    // The test build of tapir is dynamically linked and has no
    // tapir-static beside it: FORMAT.md alone.
    let out = lab.tapir(["label", "--label", "TAP001L9"]);
    assert_ok(&out);
    assert!(text(&out.stdout).contains("rescue kit: FORMAT.md; no tapir binary"));
    let (label, text_of_label, blocks) = label_and_kit_blocks(&lab);
    assert_eq!(label.rescue_kit, RescueKit::spec_only());
    assert!(text_of_label.contains("no tapir binary on this cartridge"));
    assert_eq!(blocks.concat(), FORMAT_SPEC.as_bytes());

    let out = lab.tapir(["label", "--label", "TAP001L9", "--force", "--no-rescue-kit"]);
    assert_ok(&out);
    let (label, text_of_label, blocks) = label_and_kit_blocks(&lab);
    assert_eq!(label.rescue_kit, RescueKit::left_out());
    assert!(text_of_label.contains("rescue kit: left out on this cartridge"));
    assert_eq!(
        blocks,
        [b"TAPIR RESCUE KIT: left out on this cartridge.\n".to_vec()]
    );

    // A write that joins the set keeps the kit left out.
    std::fs::write(lab.path("f"), b"x").unwrap();
    assert_ok(&lab.tapir(["write", "--set", "s", "f"]));
    assert_eq!(
        label_and_kit_blocks(&lab).0.rescue_kit,
        RescueKit::left_out()
    );
}

#[test]
fn a_kit_too_big_for_the_cartridge_is_refused_not_dropped() {
    let lab = Lab::new(1, "5M");
    let binary = fake_tapir(lab.dir.path(), 3 << 20);
    let out = lab.tapir([
        "label".as_ref(),
        "--label".as_ref(),
        "TAP001L9".as_ref(),
        "--rescue-binary".as_ref(),
        binary.as_os_str(),
    ]);
    assert_code(&out, 3);
    let err = text(&out.stderr);
    assert!(
        err.contains("more than half of cartridge TAP001L9") && err.contains("--no-rescue-kit"),
        "{err}"
    );
    // Nothing was written: the cartridge is still blank.
    let mut tape = VirtualTape::open(lab.image("TAP001L9"), "t").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    assert!(matches!(
        tape.read_block(&mut buf).unwrap(),
        ReadOutcome::EndOfData
    ));
    drop(tape);
    assert_ok(&lab.tapir(["label", "--label", "TAP001L9", "--no-rescue-kit"]));
}
