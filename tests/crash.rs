//! Crashes and power losses during a write (issue #4). The virtual drive's
//! `kill_after_blocks` fault SIGKILLs `tapir write` at points spread over a
//! whole session: while a new set rewrites the label, in the first data
//! blocks, mid-data, at and right after checkpoints, at the filemark after
//! the data, inside the catalog and right before the final filemark; as a
//! plain crash, with a torn last record, or as a power loss that also drops
//! everything written since the last fsync.
//!
//! After each kill the test reads the image itself, following
//! docs/FORMAT.md rather than tapir's code, to know what is on the medium:
//! which entries were closed (their `EntryEnd` is there), which one was cut,
//! and where the checkpoints are. Then it checks that
//! - `list` exits with the documented status and lists exactly the closed
//!   entries, names the cut one, and marks the session interrupted;
//! - the last checkpoint the writer had passed (known from an un-killed
//!   reference write of the same tree) is on the medium, even after a power
//!   loss, and after a power loss nothing later is;
//! - `restore` brings back exactly the closed entries, byte for byte, so
//!   everything before that checkpoint in particular, and nothing with
//!   wrong content;
//! - `verify` counts the intact entries and reports the interruption;
//! - a second `write` appends after the interrupted session (closing its
//!   tape file first) without touching a byte of it, and afterwards both
//!   sessions restore and verify as before;
//! - the host catalog is intact and records only the finished sessions.
//!
//! The kill points and the trees come from a seeded PRNG; the seed is
//! printed (a failing test shows it) and `TAPIR_CRASH_SEED` replays one.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::*;
use serde_json::Value;

const DEFAULT_SEED: u64 = 0x7A91_C4A5_0004_2025;
const BARCODE: &str = "TAP001L9";
const CAPACITY: &str = "64M";
const BLOCK_SIZE: &str = "64K";
const CHECKPOINT_EVERY: &str = "256K";
/// Tape files of the label and of the rescue kit.
const FIRST_SESSION_FILE: usize = 2;

// ---------------------------------------------------------------------------
// Seeded randomness

/// SplitMix64: small, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `lo..hi` (`lo` when the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.range(0, from.len() as u64) as usize]
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn seed() -> u64 {
    let seed = match std::env::var("TAPIR_CRASH_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .expect("TAPIR_CRASH_SEED is a number")
        }
        Err(_) => DEFAULT_SEED,
    };
    println!("crash test seed {seed:#x} (set TAPIR_CRASH_SEED={seed:#x} to replay)");
    seed
}

// ---------------------------------------------------------------------------
// Source trees

/// `root/name`: `dirs` directories of `per_dir` small files, a big file at
/// the end of each directory listed in `big` (sizes in bytes), an empty
/// file and a symlink. Content is pseudo-random, so no two files agree.
fn make_tree(
    root: &Path,
    name: &str,
    rng: &mut Rng,
    dirs: usize,
    per_dir: usize,
    big: &[(usize, usize)],
) {
    let top = root.join(name);
    fs::create_dir_all(&top).unwrap();
    for d in 0..dirs {
        let dir = top.join(format!("d{d:02}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..per_dir {
            let mut content = vec![0u8; rng.range(1, 4097) as usize];
            rng.fill(&mut content);
            fs::write(dir.join(format!("f{f:03}")), content).unwrap();
        }
        for &(_, size) in big.iter().filter(|(at, _)| *at == d) {
            let mut content = vec![0u8; size];
            rng.fill(&mut content);
            fs::write(dir.join("zz-big.bin"), content).unwrap();
        }
    }
    fs::write(top.join("d00").join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("f000", top.join("d00").join("link")).unwrap();
}

/// Trees of one test: `a` is the one whose write is killed, `b` the one
/// written after the crash, `s` a small session written before, for the
/// cases where the killed write appends.
struct Fixture {
    src: tempfile::TempDir,
    /// The seed as printed, to name in messages.
    seed: u64,
    reference: Reference,
}

/// The trees and the reference write of one test; `salt` gives each test
/// its own random stream from the one seed.
fn fixture(salt: u64) -> (Fixture, Rng) {
    let seed = seed();
    let mut rng = Rng(seed ^ salt.wrapping_mul(0xA076_1D64_78BD_642F));
    let src = tempfile::Builder::new()
        .prefix("tapir-crash-src-")
        .tempdir()
        .unwrap();
    let mib = 1 << 20;
    let bigs = [
        (2, rng.range(3 * mib / 2, 3 * mib) as usize),
        (5, rng.range(2 * mib, 7 * mib / 2) as usize),
        (8, rng.range(3 * mib / 2, 3 * mib) as usize),
    ];
    make_tree(src.path(), "a", &mut rng, 10, 70, &bigs);
    make_tree(src.path(), "b", &mut rng, 2, 25, &[(1, mib as usize)]);
    make_tree(src.path(), "s", &mut rng, 1, 10, &[]);
    let reference = reference_write(src.path());
    let fx = Fixture {
        src,
        seed,
        reference,
    };
    (fx, rng)
}

// ---------------------------------------------------------------------------
// Reading an image as docs/FORMAT.md describes it

/// The records of a cartridge image: its tape files, each a list of blocks.
struct Image {
    bytes: Vec<u8>,
    /// Tape file `i` holds the blocks between filemark `i - 1` and filemark
    /// `i`; the last one is the file after the last filemark (maybe empty).
    files: Vec<Vec<Vec<u8>>>,
    /// End of data: where the walk of the record framing stops.
    eod: usize,
}

impl Image {
    fn read(path: &Path) -> Image {
        let bytes = fs::read(path).unwrap();
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let mut files = vec![Vec::new()];
        let mut off = 512;
        while off + 4 <= bytes.len() {
            let lead = word(off);
            let size = match lead {
                0x8000_0000 => 8,
                1..=0x7FFF_FFFF => lead as usize + 12,
                _ => break,
            };
            if off + size > bytes.len() || word(off + size - 4) != lead {
                break;
            }
            if lead == 0x8000_0000 {
                files.push(Vec::new());
            } else {
                let data = &bytes[off + 4..off + 4 + lead as usize];
                let crc = word(off + 4 + lead as usize);
                assert_eq!(crc32fast::hash(data), crc, "record at {off} is damaged");
                files.last_mut().unwrap().push(data.to_vec());
            }
            off += size;
        }
        Image {
            bytes,
            files,
            eod: off,
        }
    }

    fn blank(&self) -> bool {
        self.files.len() == 1 && self.files[0].is_empty()
    }

    fn blocks(&self) -> usize {
        self.files.iter().map(Vec::len).sum()
    }

    fn torn_tail(&self) -> bool {
        self.bytes.len() > self.eod
    }

    /// The tape file a new session goes to: after the last one, closed by a
    /// filemark first if it is not.
    fn next_file(&self) -> usize {
        match self.files.last() {
            Some(last) if !last.is_empty() => self.files.len(),
            _ => self.files.len() - 1,
        }
    }

    fn labelled(&self) -> bool {
        // §4.1: a text area of 16384 bytes, then a framed block of kind 1.
        self.files[0].first().is_some_and(|b| {
            assert!(b.starts_with(b"TAPIR VOLUME LABEL"), "a label block");
            let h = Block::parse(&b[16384..]);
            h.kind == 1 && h.tape_file == 0
        })
    }

    fn sessions(&self) -> Vec<SessionImage> {
        let mut sessions: Vec<SessionImage> = Vec::new();
        for (f, blocks) in self.files.iter().enumerate().skip(FIRST_SESSION_FILE) {
            let Some(first) = blocks.first() else {
                continue;
            };
            let closed_by_filemark = f + 1 < self.files.len();
            let stream = Stream::parse(blocks, f);
            match Block::parse(first).kind {
                2 => sessions.push(SessionImage::from_data(
                    Block::parse(first).session,
                    f,
                    stream,
                )),
                // A session's catalog (3) and the set catalog copy after it (4).
                kind @ (3 | 4) => {
                    let s = sessions
                        .last_mut()
                        .filter(|s| s.number == Block::parse(first).session)
                        .expect("a catalog follows its session's data");
                    let end = if kind == 3 { 0x12 } else { 0x25 };
                    let image = CatalogImage {
                        has_end: stream.records.iter().any(|r| r.rtype == end),
                        complete: stream.last_in_file
                            && !stream.partial
                            && stream.records.last().is_some_and(|r| r.rtype == end),
                        closed_by_filemark,
                    };
                    if kind == 3 {
                        s.catalog = Some(image);
                    } else {
                        s.set_catalog = Some(image);
                    }
                }
                k => panic!("tape file {f} starts with a block of kind {k}"),
            }
        }
        sessions
    }
}

/// A framed block (§3), checked.
struct Block<'a> {
    kind: u16,
    flags: u32,
    tape_file: u32,
    block_seq: u64,
    session: u32,
    payload: &'a [u8],
}

impl Block<'_> {
    fn parse(b: &[u8]) -> Block<'_> {
        assert!(b.len() >= 64 && &b[..8] == b"TAPIRBLK", "not a tapir block");
        let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let payload_len = u32_at(48) as usize;
        assert_eq!(b.len(), 64 + payload_len, "block length");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b[..60]);
        crc.update(&b[64..]);
        assert_eq!(crc.finalize(), u32_at(60), "block CRC");
        Block {
            kind: u16_at(10),
            flags: u32_at(12),
            tape_file: u32_at(36),
            block_seq: u64::from_le_bytes(b[40..48].try_into().unwrap()),
            session: u32_at(56),
            payload: &b[64..],
        }
    }
}

/// A record of a stream (§5) and the block (within its tape file) it ends in.
struct Rec {
    rtype: u16,
    body: Vec<u8>,
    end_block: usize,
}

/// A tape file's blocks as a stream of records.
struct Stream {
    records: Vec<Rec>,
    /// The stream ends inside a record.
    partial: bool,
    /// The last block carries LAST_IN_FILE.
    last_in_file: bool,
}

impl Stream {
    fn parse(blocks: &[Vec<u8>], tape_file: usize) -> Stream {
        let mut bytes = Vec::new();
        // Stream offset where each block ends.
        let mut ends = Vec::new();
        let mut last_in_file = false;
        for (i, b) in blocks.iter().enumerate() {
            let h = Block::parse(b);
            assert_eq!(h.tape_file as usize, tape_file);
            assert_eq!(h.block_seq, i as u64);
            bytes.extend_from_slice(h.payload);
            ends.push(bytes.len());
            last_in_file = h.flags & 1 != 0;
        }
        let mut records = Vec::new();
        let mut off = 0;
        while off + 8 <= bytes.len() {
            let rtype = u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
            if off + 8 + len > bytes.len() {
                break;
            }
            let end = off + 8 + len;
            records.push(Rec {
                rtype,
                body: bytes[off + 8..end].to_vec(),
                end_block: ends.partition_point(|&e| e < end),
            });
            off = end;
        }
        Stream {
            records,
            partial: off != bytes.len(),
            last_in_file,
        }
    }
}

/// One field of a CBOR map with integer keys (§6).
fn cbor_field<'b, T>(
    body: &'b [u8],
    key: u64,
    get: impl FnOnce(&mut minicbor::Decoder<'b>) -> Result<T, minicbor::decode::Error>,
) -> Option<T> {
    let mut d = minicbor::Decoder::new(body);
    let n = d.map().unwrap().expect("a definite-length map");
    for _ in 0..n {
        if d.u64().unwrap() == key {
            return Some(get(&mut d).unwrap());
        }
        d.skip().unwrap();
    }
    None
}

struct EntryImage {
    path: String,
    /// The status in its `EntryEnd`, if that is on the medium.
    ended: Option<u8>,
}

struct CatalogImage {
    /// Its `CatalogEnd` is on the medium.
    has_end: bool,
    /// ...in a block marked LAST_IN_FILE, the last of the stream.
    complete: bool,
    closed_by_filemark: bool,
}

struct SessionImage {
    number: u32,
    data_file: usize,
    entries: Vec<EntryImage>,
    /// `Checkpoint.entries` of each checkpoint, and the block it ends in.
    checkpoints: Vec<(u64, usize)>,
    has_end: bool,
    /// The data stream ends inside a record.
    partial: bool,
    /// The last record of the data stream is a checkpoint.
    ends_at_checkpoint: bool,
    catalog: Option<CatalogImage>,
    /// The set catalog copy written after the session (§13), if begun.
    set_catalog: Option<CatalogImage>,
}

impl SessionImage {
    fn from_data(number: u32, data_file: usize, stream: Stream) -> SessionImage {
        let mut s = SessionImage {
            number,
            data_file,
            entries: Vec::new(),
            checkpoints: Vec::new(),
            has_end: false,
            partial: stream.partial,
            ends_at_checkpoint: stream.records.last().is_some_and(|r| r.rtype == 5),
            catalog: None,
            set_catalog: None,
        };
        for r in &stream.records {
            match r.rtype {
                2 => s.entries.push(EntryImage {
                    path: String::from_utf8(
                        cbor_field(&r.body, 0, |d| d.bytes()).unwrap().to_vec(),
                    )
                    .unwrap(),
                    ended: None,
                }),
                4 => {
                    let e = s.entries.last_mut().expect("an EntryEnd follows its Entry");
                    assert!(e.ended.is_none(), "two ends for {}", e.path);
                    e.ended = Some(cbor_field(&r.body, 2, |d| d.u8()).unwrap());
                }
                5 => s
                    .checkpoints
                    .push((cbor_field(&r.body, 0, |d| d.u64()).unwrap(), r.end_block)),
                6 => s.has_end = true,
                _ => {}
            }
        }
        s
    }

    /// The entries whose end is on the medium.
    fn closed(&self) -> impl Iterator<Item = &EntryImage> {
        self.entries.iter().filter(|e| e.ended.is_some())
    }

    fn closed_paths(&self) -> Vec<String> {
        self.closed().map(|e| e.path.clone()).collect()
    }

    /// The entry being written when the stream ends.
    fn cut_entry(&self) -> Option<&str> {
        self.entries
            .last()
            .filter(|e| e.ended.is_none())
            .map(|e| e.path.as_str())
    }

    /// Entries closed before the last checkpoint on the medium.
    fn before_last_checkpoint(&self) -> u64 {
        self.checkpoints.last().map_or(0, |c| c.0)
    }

    fn damaged(&self) -> bool {
        self.partial || self.cut_entry().is_some()
    }

    /// Data and catalog both complete.
    fn complete(&self) -> bool {
        self.has_end
            && !self.partial
            && self.catalog.as_ref().is_some_and(|c| c.complete)
            && self.set_catalog.as_ref().is_none_or(|c| c.complete)
    }
}

// ---------------------------------------------------------------------------
// The reference write, and the kill points derived from it

/// Block counts of an un-killed write of tree `a` on a freshly labelled
/// cartridge, numbered as `kill_after_blocks` counts them: from 0, in the
/// order the writing process writes them.
#[derive(Debug)]
struct Reference {
    /// Label and rescue kit, rewritten when the write starts the set.
    label_blocks: u64,
    data_blocks: u64,
    catalog_blocks: u64,
    set_catalog_blocks: u64,
    /// Index of each block that ends with a checkpoint.
    checkpoint_blocks: Vec<u64>,
    /// `Checkpoint.entries` of each checkpoint, in the same order.
    checkpoint_entries: Vec<u64>,
}

impl Reference {
    /// The last checkpoint a write killed after `kill_after` blocks had
    /// made durable: its block was written, so was the flush after it.
    /// (Killed writes lay out the same tree the same way: the checkpoint
    /// records seal their blocks, so the block boundaries agree.)
    fn passed_checkpoint(&self, case: &Case) -> Option<u64> {
        let skipped = if case.append { self.label_blocks } else { 0 };
        self.checkpoint_blocks
            .iter()
            .zip(&self.checkpoint_entries)
            .rev()
            .find(|(&block, _)| block - skipped < case.kill_after)
            .map(|(_, &entries)| entries)
    }
}

fn label(lab: &Lab) {
    assert_ok(&lab.tapir(["label", "--label", BARCODE, "--block-size", BLOCK_SIZE]));
}

fn write_args(tree: &str) -> Vec<&str> {
    vec![
        "write",
        "--set",
        "crash",
        "--buffer",
        "4M",
        "--checkpoint-every",
        CHECKPOINT_EVERY,
        tree,
    ]
}

fn reference_write(src: &Path) -> Reference {
    let lab = Lab::new(1, CAPACITY);
    label(&lab);
    assert_ok(&lab.tapir_in(src, write_args("a")));
    let img = Image::read(&lab.image(BARCODE));
    assert_eq!(
        img.files.len(),
        6,
        "label, rescue kit, data, catalog, set catalog copy, EOD"
    );
    let sessions = img.sessions();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert!(s.complete() && s.catalog.as_ref().unwrap().closed_by_filemark);
    assert!(s.entries.iter().all(|e| e.ended == Some(0)));
    assert_eq!(s.entries.len(), tree_entries(&src.join("a")));
    let label_blocks = (img.files[0].len() + img.files[1].len()) as u64;
    let r = Reference {
        label_blocks,
        data_blocks: img.files[2].len() as u64,
        catalog_blocks: img.files[3].len() as u64,
        set_catalog_blocks: img.files[4].len() as u64,
        checkpoint_blocks: s
            .checkpoints
            .iter()
            .map(|&(_, block)| label_blocks + block as u64)
            .collect(),
        checkpoint_entries: s.checkpoints.iter().map(|&(entries, _)| entries).collect(),
    };
    assert!(
        r.checkpoint_blocks.len() >= 4 && r.catalog_blocks >= 2,
        "the tree is big enough for the kill points: {r:?}"
    );
    r
}

fn tree_entries(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir).into_iter().count()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The process dies; everything it wrote stays.
    Crash,
    /// ...and its last record is half written.
    Torn,
    /// The machine loses power: what was not synced is gone too.
    PowerLoss,
    PowerLossTorn,
}

const ALL_MODES: &[Mode] = &[
    Mode::Crash,
    Mode::Torn,
    Mode::PowerLoss,
    Mode::PowerLossTorn,
];

impl Mode {
    fn torn(self) -> bool {
        matches!(self, Mode::Torn | Mode::PowerLossTorn)
    }
    fn loses_unsynced(self) -> bool {
        matches!(self, Mode::PowerLoss | Mode::PowerLossTorn)
    }
}

#[derive(Debug, Clone)]
struct Case {
    what: &'static str,
    /// Blocks the killed write gets to write.
    kill_after: u64,
    mode: Mode,
    /// The killed write appends to a cartridge holding a complete session.
    append: bool,
}

impl Case {
    fn new(rng: &mut Rng, what: &'static str, kill_after: u64, modes: &[Mode]) -> Case {
        Case {
            what,
            kill_after,
            mode: rng.pick(modes),
            append: false,
        }
    }
}

// ---------------------------------------------------------------------------
// One kill point

/// Everything restorable from the cartridge, as the sessions on it say.
struct Expected {
    /// Archive paths of the entries that restore.
    entries: BTreeSet<String>,
    /// Entries cut by the crash (reported, never restored).
    cut: BTreeSet<String>,
    damaged: bool,
    /// Some session is not complete (verify reports it).
    incomplete: bool,
}

fn expected(sessions: &[SessionImage]) -> Expected {
    Expected {
        entries: sessions.iter().flat_map(|s| s.closed_paths()).collect(),
        cut: sessions
            .iter()
            .filter_map(|s| s.cut_entry().map(str::to_string))
            .collect(),
        damaged: sessions.iter().any(SessionImage::damaged),
        incomplete: sessions.iter().any(|s| !s.complete()),
    }
}

fn run_case(fx: &Fixture, case: &Case) {
    let ctx = format!("seed {:#x}, {case:?}", fx.seed);
    println!("kill point {}: {ctx}", case.what);
    let src = fx.src.path();
    let lab = Lab::new(1, CAPACITY);
    label(&lab);
    let image = lab.image(BARCODE);
    if case.append {
        assert_ok(&lab.tapir_in(src, write_args("s")));
    }
    let before = Image::read(&image);

    // The killed write.
    let faults = tapir::device::vtape::faults_path(&image);
    let sidecar = serde_json::json!({
        "kill_after_blocks": case.kill_after,
        "kill_torn": case.mode.torn(),
        "kill_lose_unsynced": case.mode.loses_unsynced(),
    });
    fs::write(&faults, sidecar.to_string()).unwrap();
    let w = lab.tapir_in(src, write_args("a"));
    assert_eq!(
        w.status.signal(),
        Some(libc::SIGKILL),
        "{ctx}: the write was killed: {:?}\nstderr:\n{}",
        w.status,
        text(&w.stderr)
    );
    fs::remove_file(&faults).unwrap();

    let img = Image::read(&image);
    let sessions = img.sessions();
    check_image_after_kill(case, &fx.reference, &before, &img, &sessions, &ctx);
    let want = expected(&sessions);
    let killed = sessions.iter().find(|s| s.data_file >= before.next_file());

    // list
    let listed_before = if img.blank() {
        let l = lab.tapir(["list"]);
        assert_code(&l, 3);
        assert!(
            text(&l.stderr).contains("blank"),
            "{ctx}: {}",
            text(&l.stderr)
        );
        None
    } else {
        let (code, json) = lab.json(["list"]);
        let want_code = if want.damaged {
            4
        } else if sessions.iter().any(|s| !list_closed(s)) {
            1
        } else {
            0
        };
        assert_eq!(code, want_code, "{ctx}: list exit status\n{json:#}");
        check_listing(&json, &sessions, &ctx);
        Some(json["sessions"].clone())
    };

    // restore
    let out1 = lab.path("out1");
    if img.blank() {
        assert_code(&lab.tapir(["restore", "--to", out1.to_str().unwrap()]), 3);
        assert_code(&lab.tapir(["verify"]), 3);
    } else {
        let restored = check_restore(&lab, src, &out1, &want, &ctx);
        if let Some(passed) = fx.reference.passed_checkpoint(case) {
            // The promise of §11.2, said outright: every entry closed before
            // the last checkpoint the writer passed restores.
            let s = killed.expect("the killed session is on the medium");
            let promised = &s.entries[..passed as usize];
            assert!(
                promised.iter().all(|e| restored.contains(&e.path)),
                "{ctx}: an entry before the last checkpoint did not restore"
            );
        }
        check_verify(&lab, &want, &ctx);
    }

    // The next write appends after the interrupted session.
    if img.blank() {
        assert_code(&lab.tapir_in(src, write_args("b")), 3);
        label(&lab);
    }
    // A label whose filemark or rescue kit was cut short is completed by
    // the next write itself (label_files_cut_short).
    let w = lab.tapir_in(src, write_args("b"));
    assert_eq!(
        code(&w),
        0,
        "{ctx}: write after the crash\n{}",
        text(&w.stderr)
    );
    let after = Image::read(&image);
    if label_files_cut_short(&img) {
        let first = &after.sessions()[0];
        assert_eq!(
            first.data_file, FIRST_SESSION_FILE,
            "{ctx}: the label's files were completed and the session follows them"
        );
        assert!(after.labelled(), "{ctx}");
    }
    let after_sessions = after.sessions();
    let new = after_sessions.last().expect("the new session");
    assert!(new.complete(), "{ctx}: the new session is complete");
    assert!(new.catalog.as_ref().unwrap().closed_by_filemark);
    assert_eq!(after.eod, after.bytes.len(), "{ctx}: no torn tail is left");
    if !sessions.is_empty() {
        assert_eq!(
            &after.bytes[..img.eod],
            &img.bytes[..img.eod],
            "{ctx}: appending changed what was on the cartridge"
        );
        assert_eq!(
            new.data_file,
            img.next_file(),
            "{ctx}: tape file of the new session"
        );
        assert_eq!(
            new.number,
            sessions.last().unwrap().number + 1,
            "{ctx}: session number"
        );
        assert_eq!(after_sessions.len(), sessions.len() + 1);
    } else {
        assert_eq!(
            new.data_file, FIRST_SESSION_FILE,
            "{ctx}: tape file of the new session"
        );
        assert_eq!(new.number, 1, "{ctx}: session number");
        assert_eq!(after_sessions.len(), 1, "{ctx}");
    }
    let want_after = expected(&after_sessions);
    assert_eq!(
        want_after.entries.len(),
        want.entries.len() + tree_entries(&src.join("b")),
        "{ctx}"
    );

    let (code, json) = lab.json(["list"]);
    let want_code = if want_after.damaged {
        4
    } else if after_sessions.iter().any(|s| !list_closed(s)) {
        1
    } else {
        0
    };
    assert_eq!(
        code, want_code,
        "{ctx}: list exit status after the append\n{json:#}"
    );
    check_listing(&json, &after_sessions, &ctx);
    let json_after_append = json;
    if let Some(old) = listed_before {
        for (i, s) in old.as_array().unwrap().iter().enumerate() {
            assert_eq!(
                &json_after_append["sessions"][i], s,
                "{ctx}: session listed as before"
            );
        }
    }
    let out2 = lab.path("out2");
    check_restore(&lab, src, &out2, &want_after, &ctx);
    check_verify(&lab, &want_after, &ctx);

    // The new set catalog copy knows the killed session too, rebuilt from
    // an earlier copy and the session's own catalog or a scan of its data.
    let out3 = lab.path("out3");
    let (code, json) = lab.json(["restore", "--whole-set", "--to", out3.to_str().unwrap()]);
    let want_code = if want_after.damaged { 4 } else { 0 };
    assert_eq!(code, want_code, "{ctx}: whole-set restore\n{json:#}");
    assert_eq!(
        json["restored"],
        want_after.entries.len() as u64,
        "{ctx}: whole-set restore from the new copy\n{json:#}"
    );

    // The host catalog survived the kill (it was inside a transaction) and
    // records only the sessions whose write finished.
    let (code, json) = lab.json(["catalog", "check"]);
    assert_eq!(code, 0, "{ctx}: catalog check\n{json:#}");
    // By volume UUID: a cartridge relabelled above is a new volume.
    let volume = json_after_append["volume_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, json) = lab.json(["media", "show", &volume]);
    assert_eq!(code, 0, "{ctx}: media show\n{json:#}");
    let recorded: Vec<(u64, u64)> = json["session_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["session"].as_u64().unwrap(),
                s["data_tape_file"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut finished = Vec::new();
    if case.append {
        finished.push((1, FIRST_SESSION_FILE as u64));
    }
    finished.push((new.number as u64, new.data_file as u64));
    assert_eq!(recorded, finished, "{ctx}: sessions in the host catalog");
}

/// What the image after the kill must look like, given the fault.
fn check_image_after_kill(
    case: &Case,
    reference: &Reference,
    before: &Image,
    img: &Image,
    sessions: &[SessionImage],
    ctx: &str,
) {
    assert_eq!(img.torn_tail(), case.mode.torn(), "{ctx}: torn tail");
    let killed = sessions.iter().find(|s| s.data_file >= before.next_file());
    // §11.2: everything up to the last checkpoint the writer passed is on
    // the medium, whatever else was lost.
    let passed = reference.passed_checkpoint(case);
    assert_eq!(
        killed.and_then(|s| s.checkpoints.last()).map(|c| c.0),
        passed,
        "{ctx}: the last checkpoint on the medium is the last one passed"
    );
    if case.mode.loses_unsynced() {
        // Nothing the writer did not sync survives: data ends at that
        // checkpoint (or there is no data at all), with no catalog.
        if let Some(s) = killed {
            assert!(
                s.ends_at_checkpoint && !s.partial,
                "{ctx}: data ends at a checkpoint"
            );
            assert_eq!(
                s.closed().count() as u64,
                s.before_last_checkpoint(),
                "{ctx}"
            );
            assert!(s.catalog.is_none() && !s.has_end, "{ctx}");
        } else if case.append {
            assert_eq!(img.bytes[..img.eod], before.bytes[..before.eod], "{ctx}");
        } else if case.kill_after == 0 && !case.mode.torn() {
            assert_eq!(
                img.bytes, before.bytes,
                "{ctx}: killed before writing anything"
            );
        } else {
            assert!(img.blank(), "{ctx}: the label rewrite was not synced");
        }
    } else if case.append {
        // Everything written stays: exactly `kill_after` blocks of this write.
        assert_eq!(
            img.blocks(),
            before.blocks() + case.kill_after as usize,
            "{ctx}: blocks written"
        );
    } else if case.kill_after == 0 && !case.mode.torn() {
        assert_eq!(
            img.bytes, before.bytes,
            "{ctx}: killed before writing anything"
        );
    } else {
        // Starting the set rewrote the cartridge from BOT.
        assert_eq!(
            img.blocks(),
            case.kill_after as usize,
            "{ctx}: blocks written"
        );
    }
    for s in sessions {
        assert!(
            s.before_last_checkpoint() <= s.closed().count() as u64
                && s.entries[..s.before_last_checkpoint() as usize]
                    .iter()
                    .all(|e| e.ended == Some(0)),
            "{ctx}: checkpoints count closed entries"
        );
    }
}

/// Whether `tapir list` calls a session closed: its data has an end and a
/// catalog follows it, with its own end.
fn list_closed(s: &SessionImage) -> bool {
    s.has_end && s.catalog.as_ref().is_some_and(|c| c.has_end)
}

/// The crash cut the label's own tape files short: no session, and not
/// even the filemark after the label.
fn label_files_cut_short(img: &Image) -> bool {
    img.labelled() && img.sessions().is_empty() && img.next_file() < FIRST_SESSION_FILE
}

fn check_listing(json: &Value, sessions: &[SessionImage], ctx: &str) {
    let listed = json["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), sessions.len(), "{ctx}: sessions\n{json:#}");
    for (l, s) in listed.iter().zip(sessions) {
        assert_eq!(l["session"], s.number, "{ctx}");
        assert_eq!(l["data_tape_file"], s.data_file, "{ctx}");
        assert_eq!(l["closed"], list_closed(s), "{ctx}: closed\n{l:#}");
        let paths: Vec<&str> = l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            s.closed_paths(),
            "{ctx}: entries of session {}",
            s.number
        );
        let cut: Vec<&str> = l["incomplete"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            cut,
            s.cut_entry().into_iter().collect::<Vec<_>>(),
            "{ctx}: incomplete"
        );
        assert_eq!(
            !l["lost_blocks"].as_array().unwrap().is_empty(),
            s.partial,
            "{ctx}: lost blocks\n{l:#}"
        );
        if s.complete() {
            assert_eq!(l["source"], "catalog", "{ctx}");
        }
    }
}

/// Restore everything into `out` and compare it with the sources; returns
/// the archive paths restored.
fn check_restore(
    lab: &Lab,
    src: &Path,
    out: &Path,
    want: &Expected,
    ctx: &str,
) -> BTreeSet<String> {
    let r = lab.tapir(["--json", "restore", "--to", out.to_str().unwrap()]);
    let json: Value = serde_json::from_slice(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "{ctx}: restore output is not JSON ({e}): {}",
            text(&r.stderr)
        )
    });
    let want_code = if want.damaged {
        4
    } else if is_root() {
        0
    } else {
        1 // ownership is left as the restoring user's
    };
    assert_eq!(code(&r), want_code, "{ctx}: restore exit status\n{json:#}");
    assert_eq!(
        json["restored"],
        want.entries.len(),
        "{ctx}: restored\n{json:#}"
    );
    let damaged: BTreeSet<String> = json["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(damaged, want.cut, "{ctx}: reported as not restored");

    // On disk: exactly the closed entries (and their directories), each
    // identical to its source.
    let mut found = BTreeSet::new();
    for e in walkdir::WalkDir::new(out).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(out).unwrap();
        let name = rel.to_str().unwrap().to_string();
        let orig = src.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            assert!(orig.is_dir(), "{ctx}: {name}");
            if want.entries.contains(&name) {
                found.insert(name);
            }
            continue;
        }
        if ft.is_symlink() {
            assert_eq!(
                fs::read_link(e.path()).unwrap(),
                fs::read_link(&orig).unwrap(),
                "{ctx}: {name}"
            );
        } else {
            assert!(
                fs::read(e.path()).unwrap() == fs::read(&orig).unwrap(),
                "{ctx}: {name} differs from its source"
            );
        }
        assert!(
            want.entries.contains(&name),
            "{ctx}: {name} restored but not closed on tape"
        );
        found.insert(name);
    }
    let missing: Vec<&String> = want.entries.difference(&found).collect();
    assert!(missing.is_empty(), "{ctx}: not restored: {missing:?}");
    found
}

fn check_verify(lab: &Lab, want: &Expected, ctx: &str) {
    let (code, json) = lab.json(["verify"]);
    let want_code = if want.incomplete { 4 } else { 0 };
    assert_eq!(code, want_code, "{ctx}: verify exit status\n{json:#}");
    assert_eq!(
        json["entries_ok"],
        want.entries.len(),
        "{ctx}: verify\n{json:#}"
    );
    let damaged: BTreeSet<String> = json["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(damaged, want.cut, "{ctx}: verify damaged");
    assert_eq!(
        json["problems"].as_array().unwrap().is_empty(),
        !want.incomplete,
        "{ctx}: verify problems\n{json:#}"
    );
}

fn run_cases(fx: &Fixture, cases: &[Case]) {
    for case in cases {
        run_case(fx, case);
    }
}

// ---------------------------------------------------------------------------
// The tests: kill points spread over a session, three groups run in parallel

#[test]
fn a_crash_while_a_set_starts_leaves_a_usable_cartridge() {
    let (fx, mut rng) = fixture(1);
    let r = &fx.reference;
    // Starting a set rewrites the label and the rescue kit (blocks 0 to
    // label_blocks - 1), each followed by an immediate filemark.
    let in_kit = rng.range(2, r.label_blocks);
    let first_data = rng.range(r.label_blocks + 1, r.label_blocks + 3);
    let cases = [
        Case::new(&mut rng, "writing the new label", 0, ALL_MODES),
        Case::new(
            &mut rng,
            "at the filemark after the label",
            1,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(&mut rng, "in the rescue kit", in_kit, ALL_MODES),
        Case::new(
            &mut rng,
            "at the filemark after the rescue kit",
            r.label_blocks,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(&mut rng, "in the first data blocks", first_data, ALL_MODES),
    ];
    run_cases(&fx, &cases);
}

#[test]
fn a_crash_mid_data_keeps_everything_up_to_the_last_checkpoint() {
    let (fx, mut rng) = fixture(2);
    let r = &fx.reference;
    let data = r.label_blocks..r.label_blocks + r.data_blocks;
    let cps = &r.checkpoint_blocks;
    let cp = |rng: &mut Rng| cps[rng.range(1, cps.len() as u64 - 1) as usize];
    let mid1 = rng.range(data.start + 3, data.end);
    let mid2 = rng.range(data.start + 3, data.end);
    let after1 = cp(&mut rng) + 1;
    let after2 = cp(&mut rng) + 1;
    let at = cp(&mut rng);
    let cases = [
        Case::new(&mut rng, "mid data", mid1, ALL_MODES),
        Case::new(&mut rng, "mid data", mid2, ALL_MODES),
        Case::new(
            &mut rng,
            "right after a checkpoint",
            after1,
            &[Mode::PowerLoss, Mode::PowerLossTorn],
        ),
        Case::new(
            &mut rng,
            "right after a checkpoint",
            after2,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(&mut rng, "writing a checkpoint's block", at, ALL_MODES),
    ];
    run_cases(&fx, &cases);
}

#[test]
fn a_crash_while_closing_a_session_keeps_all_its_data() {
    let (fx, mut rng) = fixture(3);
    let r = &fx.reference;
    let data_end = r.label_blocks + r.data_blocks;
    let catalog_end = data_end + r.catalog_blocks;
    let total = catalog_end + r.set_catalog_blocks;
    let in_catalog = rng.range(data_end + 1, catalog_end);
    let in_set_catalog = rng.range(catalog_end + 1, total + 1);
    // Appending: no label is written, block 0 is the first data block.
    let append_mid = rng.range(1, r.data_blocks);
    let append_catalog = rng.range(
        r.data_blocks,
        r.data_blocks + r.catalog_blocks + r.set_catalog_blocks + 1,
    );
    let mut cases = vec![
        Case::new(
            &mut rng,
            "at the filemark after the data",
            data_end,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(
            &mut rng,
            "inside the catalog",
            in_catalog,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(
            &mut rng,
            "at the filemark after the catalog",
            catalog_end,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(
            &mut rng,
            "inside the set catalog copy",
            in_set_catalog,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(
            &mut rng,
            "right before the final filemark",
            total,
            &[Mode::Crash, Mode::Torn],
        ),
        Case::new(&mut rng, "appending, mid data", append_mid, ALL_MODES),
        Case::new(
            &mut rng,
            "appending, closing the session",
            append_catalog,
            ALL_MODES,
        ),
    ];
    for c in &mut cases[5..] {
        c.append = true;
    }
    run_cases(&fx, &cases);
}
