//! Ctrl-C or SIGTERM during a write: the session is closed early with its
//! catalog, what it lists is restorable, and the job says it was cut short.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tapir::device::vtape::VirtualTape;
use tapir::device::*;
use tapir::pipeline::writer::{write_session, WriteOptions, WriteProgress};

/// A drive that raises the interrupt flag after `after` blocks, as a
/// signal arriving mid-write would.
struct InterruptAfter {
    inner: VirtualTape,
    after: u64,
    written: u64,
    flag: Arc<AtomicBool>,
}

impl BlockRead for InterruptAfter {
    fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<ReadOutcome> {
        self.inner.read_block(buf)
    }
}

impl BlockWrite for InterruptAfter {
    fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome> {
        self.written += 1;
        if self.written == self.after {
            self.flag.store(true, Ordering::Relaxed);
        }
        self.inner.write_block(block)
    }
    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DeviceResult<()> {
        self.inner.write_filemarks(count, immediate)
    }
    fn flush(&mut self) -> DeviceResult<()> {
        self.inner.flush()
    }
}

impl TapeDrive for InterruptAfter {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn rewind(&mut self) -> DeviceResult<()> {
        self.inner.rewind()
    }
    fn space_filemarks(&mut self, count: i64) -> DeviceResult<()> {
        self.inner.space_filemarks(count)
    }
    fn space_blocks(&mut self, count: i64) -> DeviceResult<()> {
        self.inner.space_blocks(count)
    }
    fn seek_end_of_data(&mut self) -> DeviceResult<()> {
        self.inner.seek_end_of_data()
    }
    fn position(&mut self) -> DeviceResult<TapePosition> {
        self.inner.position()
    }
    fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()> {
        self.inner.locate(file, block)
    }
    fn status(&mut self) -> DeviceResult<DriveStatus> {
        self.inner.status()
    }
    fn max_block_size(&self) -> usize {
        self.inner.max_block_size()
    }
}

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
    let mut drive = InterruptAfter {
        inner: VirtualTape::open(lab.image("TAP001L9"), "test").unwrap(),
        // Each file is 12 blocks; the 1 MiB buffer lets the producer run at
        // most 5 blocks ahead, so at block 16 it is inside the second file.
        after: 16,
        written: 0,
        flag: flag.clone(),
    };
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
