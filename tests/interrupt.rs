//! Ctrl-C or SIGTERM during a write: the session is closed early with its
//! catalog, what it lists is restorable, and the job says it was cut short.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::before_block::BeforeBlock;
use common::*;
use tapir::device::vtape::VirtualTape;
use tapir::pipeline::writer::{write_session, WriteOptions, WriteProgress};

#[test]
fn an_interrupted_write_closes_the_session_with_a_catalog() {
    let lab = Lab::new(1, "1G");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(src.join("t")).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("t/f{i}")), vec![i as u8 + 1; 3 << 20]).unwrap();
    }
    let flag = Arc::new(AtomicBool::new(false));
    // A signal arrives before block 16: each file is 12 blocks, and the
    // 1 MiB buffer lets the producer run at most 5 blocks ahead, so it is
    // inside the second file then.
    let raise = flag.clone();
    let mut drive = BeforeBlock::new(
        Box::new(VirtualTape::open(lab.image("TAP001L9"), "test").unwrap()),
        15,
        move || raise.store(true, Ordering::Relaxed),
    );
    let opts = WriteOptions {
        sources: vec![src.join("t")],
        interrupt: Some(flag),
        start_fill_percent: 0,
        buffer_bytes: 1 << 20,
        ..Default::default()
    };
    let summary = write_session(&mut drive, &opts, &WriteProgress::default()).unwrap();
    drop(drive);
    assert!(summary.interrupted);
    assert!(summary.files < 6, "stopped early: {summary:?}");
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("interrupted while being written")),
        "{summary:?}"
    );

    // The session is closed: catalog present, list clean of damage.
    let (code, json) = lab.json(["list"]);
    assert_eq!(code, 0, "{json}");
    let session = &json["sessions"][0];
    assert_eq!(session["closed"], true);
    let entries = session["entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, summary.entries);
    assert!(
        entries.iter().any(|e| e["complete_at_source"] == false),
        "the cut file is marked: {json}"
    );

    // Complete files restore exactly; verify checks all that was written.
    let out = lab.path("out");
    let r = lab.tapir(["--json", "restore", "--to", out.to_str().unwrap()]);
    assert_code(&r, 1);
    let root = out.join(src.strip_prefix("/").unwrap()).join("t");
    assert_eq!(fs::read(root.join("f0")).unwrap(), vec![1u8; 3 << 20]);
    assert_code(&lab.tapir(["verify"]), 1);
}
