//! `tapir drive qualify`: what a drive, its HBA and the kernel path to it
//! really do, checked on a scratch cartridge the way Bacula's `btape test`
//! and `fill` do, and the settings that follow from it.
//!
//! Every block written here starts with a 4-byte tag, its tape file in the
//! top byte and its block number below (big-endian), so where a read lands
//! is known even on a device that keeps only the first bytes of each block
//! (the kernel's scsi_debug); the rest is pseudo-random (BLAKE3 output), so
//! a drive's compression gains nothing and any substitution shows.
//!
//! The tape files written, from the beginning of tape:
//!
//! 0. one block of each power-of-two size from 4 KiB up to the drive's
//!    largest (READ BLOCK LIMITS), until one is refused;
//! 1. and 2. [`DATA_BLOCKS`] blocks each at the block size under test;
//! 3. half as many, appended at end of data after reading the rest back;
//! 4. the throughput run; 5. the fill run, when asked for.
//!
//! Afterwards the cartridge is erased from the beginning where the drive
//! can, so it is blank again.

use std::time::Instant;

use crate::device::{DeviceError, DriveIdentity, PositioningReport, ReadOutcome, TapeDrive};

use super::volume::{read_label, LabelState};
use super::{Error, Result};

/// Blocks in each of tape files 1 and 2.
pub const DATA_BLOCKS: u64 = 16;
/// Smallest block size tried.
const FIRST_TRIAL: usize = 4096;
/// Largest block size tried, whatever the drive claims.
const LAST_TRIAL: usize = 1 << 26;
/// Blocks written after early warning before the fill run stops (drives
/// without a hard end, like tgt's emulation, accept them forever).
const BLOCKS_AFTER_EARLY_WARNING: u32 = 16;
/// The default ceiling for a recommended block size: a rescue system's
/// HBA may not read larger blocks.
pub const PORTABLE_BLOCK_SIZE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct QualifyOptions {
    /// Use a cartridge that holds data (a label, anything), destroying it.
    pub force: bool,
    /// Bytes written and read back to measure throughput.
    pub throughput_bytes: u64,
    /// Write until early warning (a whole cartridge on a real drive).
    pub fill: bool,
    /// The largest block size to recommend.
    pub max_recommended_block: usize,
}

impl Default for QualifyOptions {
    fn default() -> Self {
        QualifyOptions {
            force: false,
            throughput_bytes: 64 << 20,
            fill: false,
            max_recommended_block: PORTABLE_BLOCK_SIZE,
        }
    }
}

/// One block size tried.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockTrial {
    pub size: usize,
    /// The write's error, if it failed.
    pub write_error: Option<String>,
    /// What reading it back found: "ok", "content differs", or what else.
    pub read_back: Option<String>,
}

/// One check with its verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Where LOCATEs landed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocateFindings {
    /// Targets tried and whether the next block read was the one asked for.
    pub landed_right: u32,
    pub landed_wrong: u32,
    /// What the drive layer saw underneath (READ POSITION, LOCATE support,
    /// off-by-one landings it corrected).
    pub drive: Option<PositioningReport>,
}

/// What writing up to early warning showed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EarlyWarningFindings {
    /// Bytes written in the fill run before early warning was reported.
    pub bytes_before: u64,
    /// Whether early warning came at all (else the physical end did).
    pub reached: bool,
    /// Blocks accepted after early warning before the end of medium or
    /// the run's limit.
    pub blocks_after: u32,
    /// The end of medium came within the limit.
    pub end_of_medium: bool,
    /// A filemark could be written after early warning.
    pub filemark_after: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Throughput {
    pub bytes: u64,
    pub block_size: usize,
    pub write_mb_per_s: f64,
    pub read_mb_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recommendation {
    /// Block size for `tapir label --block-size`, when one is usable.
    pub block_size: Option<usize>,
    /// Whether tapir may position with LOCATE on this drive.
    pub locate_trusted: bool,
    pub locate: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualifyReport {
    pub device: String,
    pub identity: Option<DriveIdentity>,
    /// The largest block the drive says it takes.
    pub max_block_reported: usize,
    pub block_sizes: Vec<BlockTrial>,
    pub largest_block_written: Option<usize>,
    /// The largest block that came back with its content intact.
    pub largest_block_verified: Option<usize>,
    /// Blocks come back as they were written (not so on scsi_debug).
    pub data_intact: bool,
    /// Block size of the data, spacing, LOCATE and throughput runs.
    pub test_block_size: usize,
    pub checks: Vec<Check>,
    pub locate: LocateFindings,
    pub early_warning: Option<EarlyWarningFindings>,
    pub throughput: Option<Throughput>,
    pub recommendation: Recommendation,
    /// The cartridge was erased afterwards (else it holds the test data).
    pub erased: bool,
    /// Every check passed and data came back intact.
    pub passed: bool,
}

/// The tag a test block starts with.
fn tag(file: u32, block: u64) -> [u8; 4] {
    ((file << 24) | (block as u32 & 0x00FF_FFFF)).to_be_bytes()
}

fn untag(b: &[u8]) -> Option<(u32, u64)> {
    let t = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    Some((t >> 24, (t & 0x00FF_FFFF) as u64))
}

/// The content of test block (`file`, `block`) of `len` bytes.
pub fn test_block(file: u32, block: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(b"tapir qualify");
    h.update(&file.to_le_bytes());
    h.update(&block.to_le_bytes());
    h.finalize_xof().fill(&mut b);
    let n = len.min(4);
    b[..n].copy_from_slice(&tag(file, block)[..n]);
    b
}

/// What one read found, for messages and comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Block(Option<(u32, u64)>, usize),
    Filemark,
    EndOfData,
    Error(String),
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Block(Some((file, block)), n) => {
                write!(f, "block {block} of tape file {file} ({n} bytes)")
            }
            Seen::Block(None, n) => write!(f, "an untagged block of {n} bytes"),
            Seen::Filemark => write!(f, "a filemark"),
            Seen::EndOfData => write!(f, "end of data"),
            Seen::Error(e) => write!(f, "an error: {e}"),
        }
    }
}

struct Run<'d> {
    drive: &'d mut dyn TapeDrive,
    buf: Vec<u8>,
    checks: Vec<Check>,
}

impl Run<'_> {
    fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) -> bool {
        let mut detail = detail.into();
        if passed {
            tracing::info!("qualify: {name}: ok");
            detail.clear();
        } else {
            tracing::warn!("qualify: {name}: {detail}");
        }
        self.checks.push(Check {
            name: name.to_string(),
            passed,
            detail,
        });
        passed
    }

    /// Read one block; device errors that lose the position end the run.
    fn read(&mut self) -> Result<Seen> {
        match self.drive.read_block(&mut self.buf) {
            Ok(ReadOutcome::Block(n)) => Ok(Seen::Block(untag(&self.buf[..n]), n)),
            Ok(ReadOutcome::Filemark) => Ok(Seen::Filemark),
            Ok(ReadOutcome::EndOfData) => Ok(Seen::EndOfData),
            Err(e) if e.position_lost() => Err(e.into()),
            Err(e) => Ok(Seen::Error(e.to_string())),
        }
    }

    /// Read and expect block (`file`, `block`).
    fn expect_block(&mut self, name: &str, file: u32, block: u64) -> Result<bool> {
        let seen = self.read()?;
        let ok = matches!(seen, Seen::Block(Some(t), _) if t == (file, block));
        Ok(self.check(
            name,
            ok,
            format!("expected block {block} of tape file {file}, read {seen}"),
        ))
    }

    /// Check that the drive reports position (`file`, `block`).
    fn expect_position(&mut self, name: &str, file: u32, block: u64) -> Result<bool> {
        let detail = match self.drive.position() {
            Ok(p) if (p.file, p.block) == (file, block) => return Ok(self.check(name, true, "")),
            Ok(p) => format!(
                "expected tape file {file}, block {block}; the drive reports tape file {}, block {}",
                p.file, p.block
            ),
            Err(e) if e.position_lost() => return Err(e.into()),
            Err(e) => e.to_string(),
        };
        Ok(self.check(name, false, detail))
    }

    /// Run a positioning step; its failure is a failed check, not the end.
    fn step(&mut self, name: &str, r: std::result::Result<(), DeviceError>) -> Result<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.position_lost() => Err(e.into()),
            Err(e) => Ok(self.check(name, false, e.to_string())),
        }
    }

    fn write_file(&mut self, file: u32, blocks: u64, size: usize) -> Result<()> {
        for b in 0..blocks {
            self.drive.write_block(&test_block(file, b, size))?;
        }
        self.drive.write_filemarks(1, false)?;
        Ok(())
    }

    /// Read a tape file from its start and compare every block and the
    /// filemark that ends it.
    fn verify_file(&mut self, file: u32, blocks: u64, size: usize) -> Result<bool> {
        let name = format!("read back tape file {file}");
        // Blocks in their place whose content differs: reading goes on, so
        // the rest of the file is still checked where it is.
        let mut differ = 0;
        for b in 0..blocks {
            let seen = match self.drive.read_block(&mut self.buf) {
                Ok(ReadOutcome::Block(n)) if self.buf[..n] == test_block(file, b, size)[..] => {
                    continue
                }
                Ok(ReadOutcome::Block(n)) if untag(&self.buf[..n]) == Some((file, b)) => {
                    differ += 1;
                    continue;
                }
                Ok(ReadOutcome::Block(n)) => Seen::Block(untag(&self.buf[..n]), n),
                Ok(ReadOutcome::Filemark) => Seen::Filemark,
                Ok(ReadOutcome::EndOfData) => Seen::EndOfData,
                Err(e) if e.position_lost() => return Err(e.into()),
                Err(e) => Seen::Error(e.to_string()),
            };
            return Ok(self.check(
                &name,
                false,
                format!("block {b}: expected block {b} of tape file {file}, read {seen}"),
            ));
        }
        let seen = self.read()?;
        let detail = if seen != Seen::Filemark {
            format!("after {blocks} blocks expected a filemark, read {seen}")
        } else {
            format!("{differ} of {blocks} blocks came back with other content")
        };
        Ok(self.check(&name, seen == Seen::Filemark && differ == 0, detail))
    }
}

/// Qualify the drive on the scratch cartridge loaded in it.
pub fn qualify(drive: &mut dyn TapeDrive, opts: &QualifyOptions) -> Result<QualifyReport> {
    if drive.status()?.write_protected {
        return Err(DeviceError::WriteProtected {
            device: drive.name().to_string(),
        }
        .into());
    }
    let found = match read_label(drive)? {
        LabelState::Blank => None,
        LabelState::Tapir(l) => Some(format!("tapir label {} (pool {})", l.label, l.pool)),
        LabelState::Foreign(what) => Some(what),
    };
    if let Some(what) = &found {
        if !opts.force {
            return Err(Error::Refused(format!(
                "{}: the cartridge is not blank: it holds {what}. Qualifying writes over it; \
                 give --force if it is a scratch cartridge",
                drive.name()
            )));
        }
        tracing::warn!("{}: --force: writing over {what}", drive.name());
    }
    let max = drive.max_block_size().min(LAST_TRIAL);
    let identity = drive.identity();
    let device = drive.name().to_string();
    let mut run = Run {
        buf: vec![0u8; 2 * max],
        drive,
        checks: Vec::new(),
    };

    // Tape file 0: the largest block the whole path takes.
    run.drive.rewind()?;
    let mut trials = Vec::new();
    let mut size = FIRST_TRIAL.min(max);
    loop {
        let write_error = match run
            .drive
            .write_block(&test_block(0, trials.len() as u64, size))
        {
            Ok(_) => None,
            Err(e) if e.position_lost() => return Err(e.into()),
            Err(e) => Some(e.to_string()),
        };
        let failed = write_error.is_some();
        trials.push(BlockTrial {
            size,
            write_error,
            read_back: None,
        });
        if failed || size >= max {
            break;
        }
        size = (size * 2).min(max);
    }
    run.drive.write_filemarks(1, false)?;
    run.drive.rewind()?;
    for (i, trial) in trials.iter_mut().enumerate() {
        if trial.write_error.is_some() {
            break;
        }
        // Twice the block: tgt corrupts reads into buffers between one and
        // two blocks long.
        let want = test_block(0, i as u64, trial.size);
        let buf = &mut run.buf[..(2 * trial.size).min(2 * max)];
        trial.read_back = Some(match run.drive.read_block(buf) {
            Ok(ReadOutcome::Block(n)) if buf[..n] == want[..] => "ok".into(),
            Ok(ReadOutcome::Block(n)) if n != trial.size => format!("{n} bytes came back"),
            Ok(ReadOutcome::Block(_)) => "content differs".into(),
            Ok(ReadOutcome::Filemark) => "a filemark came back".into(),
            Ok(ReadOutcome::EndOfData) => "end of data came back".into(),
            Err(e) if e.position_lost() => return Err(e.into()),
            Err(e) => e.to_string(),
        });
    }
    let written = |t: &&BlockTrial| t.write_error.is_none();
    let largest_block_written = trials.iter().filter(written).map(|t| t.size).max();
    let largest_block_verified = trials
        .iter()
        .filter(|t| t.read_back.as_deref() == Some("ok"))
        .map(|t| t.size)
        .max();
    // Length right but content not: the device does not keep the data.
    let data_intact = trials
        .iter()
        .filter(written)
        .all(|t| t.read_back.as_deref() == Some("ok"));
    run.check(
        "block sizes read back as written",
        data_intact,
        trials
            .iter()
            .filter(|t| t.read_back.as_deref().is_some_and(|r| r != "ok"))
            .map(|t| format!("{}: {}", t.size, t.read_back.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; "),
    );
    let Some(bs) = largest_block_verified
        .or(largest_block_written)
        .map(|b| b.min(opts.max_recommended_block))
    else {
        return Err(Error::Refused(format!(
            "{device}: the drive accepted no block of {FIRST_TRIAL} bytes or more: {}",
            trials[0].write_error.as_deref().unwrap_or("")
        )));
    };
    // The block size under test: the largest power of two accepted, within
    // the recommended ceiling.
    let bs = trials
        .iter()
        .filter(written)
        .map(|t| t.size)
        .filter(|&s| s <= bs)
        .max()
        .unwrap_or(bs);

    // Tape files 1 and 2, read back.
    run.drive.rewind()?;
    run.drive.space_filemarks(1)?;
    run.write_file(1, DATA_BLOCKS, bs)?;
    run.write_file(2, DATA_BLOCKS, bs)?;
    run.drive.rewind()?;
    let skipped = run.drive.space_filemarks(1);
    if run.step("space to tape file 1", skipped)? {
        run.verify_file(1, DATA_BLOCKS, bs)?;
        run.verify_file(2, DATA_BLOCKS, bs)?;
        let seen = run.read()?;
        run.check(
            "end of data after the last filemark",
            seen == Seen::EndOfData,
            format!("read {seen}"),
        );
    }

    // Append at end of data.
    run.drive.rewind()?;
    run.drive.seek_end_of_data()?;
    run.expect_position("end of data is at tape file 3", 3, 0)?;
    run.write_file(3, DATA_BLOCKS / 2, bs)?;
    run.drive.rewind()?;
    let r = run.drive.space_filemarks(2);
    if run.step("space over two filemarks", r)? {
        run.verify_file(2, DATA_BLOCKS, bs)?;
        run.verify_file(3, DATA_BLOCKS / 2, bs)?;
    }

    // Spacing by files and records, forward and backward.
    run.drive.rewind()?;
    let r = run.drive.space_filemarks(2);
    if run.step("forward space 2 files", r)? {
        run.expect_position("position after forward space 2 files", 2, 0)?;
        run.expect_block("forward space 2 files", 2, 0)?;
    }
    let r = run.drive.space_blocks(3);
    if run.step("forward space 3 records", r)? {
        run.expect_position("position after forward space 3 records", 2, 4)?;
        run.expect_block("forward space 3 records", 2, 4)?;
    }
    let r = run.drive.space_blocks(-2);
    if run.step("backward space 2 records", r)? {
        run.expect_position("position after backward space 2 records", 2, 3)?;
        run.expect_block("backward space 2 records", 2, 3)?;
    }
    let r = run.drive.space_filemarks(-1);
    if run.step("backward space 1 file", r)? {
        // Without READ POSITION the block within the file is unknown here.
        let reports_position = run
            .drive
            .positioning()
            .is_none_or(|p| p.read_position != Some(false));
        if reports_position {
            run.expect_position("position after backward space 1 file", 1, DATA_BLOCKS)?;
        }
        let seen = run.read()?;
        run.check(
            "backward space 1 file stops before the filemark",
            seen == Seen::Filemark,
            format!("expected the filemark that ends tape file 1, read {seen}"),
        );
        run.expect_block("after the filemark", 2, 0)?;
    }
    let r = run.drive.space_filemarks(-2);
    if run.step("backward space 2 files", r)? {
        let r = run.drive.space_blocks(-1);
        if run.step("backward space 1 record from a filemark", r)? {
            let last = trials.iter().filter(written).count() as u64 - 1;
            run.expect_block("backward space 2 files then 1 record", 0, last)?;
        }
    }

    // LOCATE, each landing checked by reading the block there.
    let mut locate = LocateFindings::default();
    for (file, block) in [
        (1, 5),
        (2, 0),
        (3, DATA_BLOCKS / 2 - 1),
        (1, 0),
        (2, DATA_BLOCKS - 1),
        (1, DATA_BLOCKS),
    ] {
        let name = format!("locate tape file {file}, block {block}");
        let r = run.drive.locate(file, block);
        if !run.step(&name, r)? {
            locate.landed_wrong += 1;
            continue;
        }
        let ok = if block == DATA_BLOCKS {
            // Block n of an n-block file is its filemark.
            let seen = run.read()?;
            run.check(
                &name,
                seen == Seen::Filemark,
                format!("expected the filemark that ends tape file {file}, read {seen}"),
            )
        } else {
            run.expect_block(&name, file, block)?
        };
        if ok {
            locate.landed_right += 1;
        } else {
            locate.landed_wrong += 1;
        }
    }

    // Sustained throughput.
    let throughput = if opts.throughput_bytes > 0 {
        Some(measure_throughput(&mut run, bs, opts.throughput_bytes)?)
    } else {
        None
    };

    let early_warning = if opts.fill {
        Some(fill(&mut run, bs)?)
    } else {
        None
    };
    locate.drive = run.drive.positioning();

    // Leave the cartridge blank where the drive can erase.
    run.drive.rewind()?;
    let erased = match run.drive.erase(false) {
        Ok(()) => true,
        Err(e) if e.position_lost() => return Err(e.into()),
        Err(e) => {
            tracing::info!("the cartridge was not erased afterwards: {e}");
            false
        }
    };

    let recommendation = recommend(&Findings {
        largest_written: largest_block_written,
        largest_verified: largest_block_verified,
        data_intact,
        locate: &locate,
        early_warning: early_warning.as_ref(),
        max_recommended: opts.max_recommended_block,
    });
    let passed = data_intact && run.checks.iter().all(|c| c.passed);
    Ok(QualifyReport {
        device,
        identity,
        max_block_reported: max,
        block_sizes: trials,
        largest_block_written,
        largest_block_verified,
        data_intact,
        test_block_size: bs,
        checks: run.checks,
        locate,
        early_warning,
        throughput,
        recommendation,
        erased,
        passed,
    })
}

/// Write `bytes` at end of data in blocks of `bs` as one tape file, then
/// read it back; both timed, the write including its synchronous filemark.
fn measure_throughput(run: &mut Run<'_>, bs: usize, bytes: u64) -> Result<Throughput> {
    const FILE: u32 = 4;
    let blocks = bytes.div_ceil(bs as u64).max(1);
    // One random block, tagged per block: building blocks must not be
    // what is measured.
    let mut block = test_block(FILE, 0, bs);
    run.drive.seek_end_of_data()?;
    let start = Instant::now();
    for b in 0..blocks {
        block[..4].copy_from_slice(&tag(FILE, b));
        run.drive.write_block(&block)?;
    }
    run.drive.write_filemarks(1, false)?;
    let write_s = start.elapsed().as_secs_f64();
    run.drive.locate(FILE, 0)?;
    let start = Instant::now();
    let mut intact = true;
    for b in 0..blocks {
        block[..4].copy_from_slice(&tag(FILE, b));
        match run.drive.read_block(&mut run.buf[..2 * bs]) {
            Ok(ReadOutcome::Block(n)) if run.buf[..n] == block[..] => {}
            Ok(_) => intact = false,
            Err(e) if e.position_lost() => return Err(e.into()),
            Err(_) => intact = false,
        }
    }
    let read_s = start.elapsed().as_secs_f64();
    run.check(
        "throughput run read back",
        intact,
        "blocks of the throughput run did not come back as written",
    );
    let total = blocks * bs as u64;
    let rate = |s: f64| (total as f64 / s.max(1e-9) / 1e6 * 10.0).round() / 10.0;
    Ok(Throughput {
        bytes: total,
        block_size: bs,
        write_mb_per_s: rate(write_s),
        read_mb_per_s: rate(read_s),
    })
}

/// Write at end of data until early warning, a few blocks past it, and a
/// filemark.
fn fill(run: &mut Run<'_>, bs: usize) -> Result<EarlyWarningFindings> {
    const FILE: u32 = 5;
    run.drive.seek_end_of_data()?;
    let mut block = test_block(FILE, 0, bs);
    let mut bytes_before = 0u64;
    let mut n = 0u64;
    let mut reached = false;
    loop {
        block[..4].copy_from_slice(&tag(FILE, n));
        n += 1;
        match run.drive.write_block(&block) {
            Ok(crate::device::WriteOutcome::Written) => bytes_before += bs as u64,
            Ok(crate::device::WriteOutcome::EarlyWarning) => {
                reached = true;
                break;
            }
            Err(DeviceError::EndOfMedium { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut blocks_after = 0;
    let mut end_of_medium = !reached;
    if reached {
        while blocks_after < BLOCKS_AFTER_EARLY_WARNING {
            block[..4].copy_from_slice(&tag(FILE, n));
            n += 1;
            match run.drive.write_block(&block) {
                Ok(_) => blocks_after += 1,
                Err(DeviceError::EndOfMedium { .. }) => {
                    end_of_medium = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let filemark_after = match run.drive.write_filemarks(1, false) {
        Ok(()) => true,
        Err(e) if e.position_lost() => return Err(e.into()),
        Err(_) => false,
    };
    run.check(
        "early warning before the end of medium",
        reached,
        "the drive reported the end of medium without an early warning first",
    );
    run.check(
        "a filemark after early warning",
        filemark_after,
        "the drive refused a filemark after early warning",
    );
    Ok(EarlyWarningFindings {
        bytes_before,
        reached,
        blocks_after,
        end_of_medium,
        filemark_after,
    })
}

/// What the recommendation is made from.
pub struct Findings<'a> {
    pub largest_written: Option<usize>,
    pub largest_verified: Option<usize>,
    pub data_intact: bool,
    pub locate: &'a LocateFindings,
    pub early_warning: Option<&'a EarlyWarningFindings>,
    pub max_recommended: usize,
}

/// Settings for this drive from what qualifying it found.
pub fn recommend(f: &Findings<'_>) -> Recommendation {
    let mut notes = Vec::new();
    let min = crate::format::MIN_BLOCK_SIZE as usize;
    let max = crate::format::MAX_BLOCK_SIZE as usize;
    let usable = if f.data_intact {
        f.largest_verified
    } else {
        f.largest_written
    };
    let block_size = usable
        .map(|b| b.min(f.max_recommended).min(max))
        .map(|b| {
            if b.is_power_of_two() {
                b
            } else {
                1 << b.ilog2()
            }
        })
        .filter(|&b| b >= min);
    if block_size.is_none() {
        notes.push(format!(
            "the path carries no block of tapir's smallest size ({} KiB): tapir cannot write here",
            min >> 10
        ));
    }
    if let (Some(b), Some(w)) = (block_size, f.largest_written) {
        if w > b && w > f.max_recommended {
            notes.push(format!(
                "blocks up to {} KiB work on this path, but a rescue system's HBA may not read \
                 blocks over {} KiB; use larger ones only if every host that will read the \
                 cartridges is known",
                w >> 10,
                f.max_recommended >> 10
            ));
        }
    }
    if !f.data_intact {
        notes.push(
            "blocks do not come back as they were written (an emulation that keeps only part \
             of each block?): do not archive to this device"
                .into(),
        );
    }
    let report = f.locate.drive.clone().unwrap_or_default();
    let (locate_trusted, locate) = if f.locate.landed_wrong > 0 {
        (
            false,
            format!(
                "{} of {} LOCATE checks landed on the wrong block: do not trust LOCATE here",
                f.locate.landed_wrong,
                f.locate.landed_wrong + f.locate.landed_right
            ),
        )
    } else if report.locate == Some(false) || report.read_position == Some(false) {
        (
            false,
            "the drive has no LOCATE or READ POSITION: tapir positions by spacing over \
             filemarks and blocks (slower over long distances)"
                .into(),
        )
    } else if report.locate_one_past + report.locate_one_short > 0 {
        (
            true,
            format!(
                "LOCATE lands one object off near filemarks ({} past, {} short); tapir checks \
                 every LOCATE with READ POSITION and corrects it",
                report.locate_one_past, report.locate_one_short
            ),
        )
    } else {
        (
            true,
            "LOCATE landed on every block asked for; tapir still checks each with READ POSITION"
                .into(),
        )
    };
    if let Some(ew) = f.early_warning {
        if !ew.reached {
            notes.push(
                "no early warning before the end of medium: a session can be cut short at the \
                 end of a cartridge; keep sessions well within its capacity"
                    .into(),
            );
        } else if !ew.end_of_medium {
            notes.push(format!(
                "after early warning the drive took {} more blocks without reaching the end \
                 of medium",
                ew.blocks_after
            ));
        }
    }
    Recommendation {
        block_size,
        locate_trusted,
        locate,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_blocks_are_distinct() {
        assert_eq!(untag(&tag(3, 17)), Some((3, 17)));
        assert_eq!(untag(&test_block(2, 5, 64)), Some((2, 5)));
        assert_ne!(test_block(1, 0, 64)[4..], test_block(1, 1, 64)[4..]);
        assert_eq!(test_block(1, 0, 64), test_block(1, 0, 64));
        assert_eq!(test_block(0, 0, 2).len(), 2);
    }

    fn findings(locate: &LocateFindings) -> Findings<'_> {
        Findings {
            largest_written: Some(8 << 20),
            largest_verified: Some(8 << 20),
            data_intact: true,
            locate,
            early_warning: None,
            max_recommended: PORTABLE_BLOCK_SIZE,
        }
    }

    #[test]
    fn recommends_at_most_a_mebibyte_and_says_why() {
        let locate = LocateFindings {
            landed_right: 6,
            landed_wrong: 0,
            drive: Some(PositioningReport {
                read_position: Some(true),
                locate: Some(true),
                locate_exact: 6,
                ..Default::default()
            }),
        };
        let r = recommend(&findings(&locate));
        assert_eq!(r.block_size, Some(1 << 20));
        assert!(r.locate_trusted, "{r:?}");
        assert!(r.notes.iter().any(|n| n.contains("8192 KiB")), "{r:?}");
        // A larger ceiling given: still within tapir's own largest block.
        let r = recommend(&Findings {
            max_recommended: 4 << 20,
            ..findings(&locate)
        });
        assert_eq!(r.block_size, Some(1 << 20));
        // A path that stops at 512 KiB.
        let r = recommend(&Findings {
            largest_written: Some(512 << 10),
            largest_verified: Some(512 << 10),
            ..findings(&locate)
        });
        assert_eq!(r.block_size, Some(512 << 10));
        assert!(r.notes.is_empty(), "{r:?}");
        // Too small for tapir.
        let r = recommend(&Findings {
            largest_written: Some(32 << 10),
            largest_verified: Some(32 << 10),
            ..findings(&locate)
        });
        assert_eq!(r.block_size, None);
        assert!(r.notes[0].contains("64 KiB"), "{r:?}");
    }

    #[test]
    fn locate_verdicts() {
        let with = |drive: PositioningReport, wrong: u32| LocateFindings {
            landed_right: 6 - wrong,
            landed_wrong: wrong,
            drive: Some(drive),
        };
        let off_by_one = with(
            PositioningReport {
                read_position: Some(true),
                locate: Some(true),
                locate_exact: 5,
                locate_one_past: 1,
                ..Default::default()
            },
            0,
        );
        let r = recommend(&findings(&off_by_one));
        assert!(r.locate_trusted && r.locate.contains("1 past"), "{r:?}");
        let none = with(
            PositioningReport {
                read_position: Some(false),
                locate: None,
                ..Default::default()
            },
            0,
        );
        let r = recommend(&findings(&none));
        assert!(!r.locate_trusted && r.locate.contains("spacing"), "{r:?}");
        let wrong = with(PositioningReport::default(), 2);
        let r = recommend(&findings(&wrong));
        assert!(!r.locate_trusted && r.locate.contains("2 of 6"), "{r:?}");
    }

    #[test]
    fn data_not_kept_and_early_warning_are_noted() {
        let locate = LocateFindings::default();
        let ew = EarlyWarningFindings {
            bytes_before: 1 << 30,
            reached: false,
            blocks_after: 0,
            end_of_medium: true,
            filemark_after: false,
        };
        let r = recommend(&Findings {
            data_intact: false,
            largest_verified: None,
            early_warning: Some(&ew),
            ..findings(&locate)
        });
        assert_eq!(r.block_size, Some(1 << 20), "{r:?}");
        assert!(
            r.notes.iter().any(|n| n.contains("do not archive")),
            "{r:?}"
        );
        assert!(
            r.notes.iter().any(|n| n.contains("no early warning")),
            "{r:?}"
        );
    }
}
