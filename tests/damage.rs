//! Damaged and interrupted cartridges: bad blocks are found, named and
//! skipped; everything else restores; nothing is reported as success.

mod common;

use std::fs;

use common::*;

/// A tree whose files each have a distinctive byte pattern, so a test can
/// find a file's data inside the cartridge image.
fn tree(lab: &Lab) -> std::path::PathBuf {
    let src = lab.path("src");
    fs::create_dir_all(src.join("t")).unwrap();
    for (name, byte) in [("a.bin", b'A'), ("victim.bin", b'V'), ("z.bin", b'Z')] {
        fs::write(src.join("t").join(name), vec![byte; 700_000]).unwrap();
    }
    src
}

#[test]
fn a_flipped_byte_is_found_by_verify_and_only_its_file_is_lost() {
    let lab = Lab::new(1, "1G");
    let src = tree(&lab);
    lab.label("TAP001L9");
    assert_ok(&lab.tapir_in(&src, ["write", "t"]));
    assert_ok(&lab.tapir(["verify"]));

    let image = lab.image("TAP001L9");
    let hits = find_all(&image, &[b'V'; 4096]);
    assert!(!hits.is_empty());
    flip_byte(&image, hits[hits.len() / 2] + 100);

    let v = lab.tapir(["verify"]);
    assert_code(&v, 4);
    let report = text(&v.stdout);
    assert!(report.contains("BAD BLOCKS"), "{report}");
    assert!(
        report.contains("t/victim.bin"),
        "verify names the file: {report}"
    );
    assert!(!report.contains("DAMAGED t/a.bin"), "{report}");

    let (code, json) = lab.json(["verify"]);
    assert_eq!(code, 4);
    assert!(json["bad_blocks"][0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "t/victim.bin"));

    let out = lab.path("out");
    let r = lab.tapir(["restore", "--to", out.to_str().unwrap()]);
    assert_code(&r, 4);
    let report = text(&r.stdout);
    assert!(report.contains("NOT RESTORED t/victim.bin"), "{report}");
    assert!(
        !out.join("t/victim.bin").exists(),
        "no file with wrong content is left"
    );
    assert_eq!(fs::read(out.join("t/a.bin")).unwrap(), vec![b'A'; 700_000]);
    assert_eq!(fs::read(out.join("t/z.bin")).unwrap(), vec![b'Z'; 700_000]);
}

#[test]
fn a_block_that_reads_once_badly_is_retried_and_verifies() {
    let lab = Lab::new(1, "1G");
    let src = tree(&lab);
    lab.label("TAP001L9");
    assert_ok(&lab.tapir_in(&src, ["write", "t"]));
    // Records from BOT: label, filemark, rescue kit block, filemark, data block 0, data block 1.
    let faults = tapir::device::vtape::faults_path(&lab.image("TAP001L9"));
    fs::write(
        &faults,
        r#"{"fail_read_at_block": 5, "read_fail_count": 1}"#,
    )
    .unwrap();
    let (code, json) = lab.json(["verify"]);
    assert_eq!(code, 0, "{json}");
    assert!(json["retries"].as_u64().unwrap() >= 1, "{json}");

    // A block that never reads is reported, not hidden.
    fs::write(&faults, r#"{"fail_read_at_block": 5}"#).unwrap();
    let (code, json) = lab.json(["verify"]);
    assert_eq!(code, 4, "{json}");
    assert_eq!(json["bad_blocks"][0]["first_block"], 1);
}

#[test]
fn an_interrupted_write_keeps_complete_entries_and_the_next_write_appends() {
    let lab = Lab::new(1, "1G");
    let src = tree(&lab);
    lab.label("TAP001L9");
    // Fail the data block write at logical record 8: mid-session, after a.bin.
    let faults = tapir::device::vtape::faults_path(&lab.image("TAP001L9"));
    fs::write(&faults, r#"{"fail_write_at_block": 8}"#).unwrap();
    let w = lab.tapir_in(&src, ["write", "--set", "s", "t"]);
    assert_code(&w, 6);
    let err = text(&w.stderr);
    assert!(err.contains("medium error"), "{err}");
    // The library had no other cartridge to continue on, and says so.
    assert!(err.contains("no other cartridge was available"), "{err}");
    fs::remove_file(&faults).unwrap();
    // Looking for another cartridge put the failed one back in its slot.
    assert_ok(&lab.tapir(["changer", "load", "TAP001L9"]));

    let l = lab.tapir(["list"]);
    assert_code(&l, 4);
    let listing = text(&l.stdout);
    assert!(listing.contains("INTERRUPTED"), "{listing}");
    assert!(
        listing.contains("t/a.bin"),
        "complete entry listed: {listing}"
    );
    assert!(listing.contains("incomplete: t/victim.bin"), "{listing}");

    fs::write(src.join("t/after.txt"), b"written after the crash").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "s", "t/after.txt"]));
    let (_, json) = lab.json(["list"]);
    let sessions = json["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{json}");
    assert_eq!(sessions[0]["closed"], false);
    assert_eq!(sessions[1]["closed"], true);

    let out = lab.path("out");
    let r = lab.tapir(["restore", "--to", out.to_str().unwrap()]);
    assert_code(&r, 4);
    assert_eq!(fs::read(out.join("t/a.bin")).unwrap(), vec![b'A'; 700_000]);
    assert_eq!(
        fs::read(out.join("t/after.txt")).unwrap(),
        b"written after the crash"
    );
    assert!(!out.join("t/victim.bin").exists());
    assert!(text(&r.stdout).contains("t/victim.bin"));
}
