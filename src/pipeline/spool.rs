//! Disk spooling between the producer and the drive writer.
//!
//! RAM cannot keep a drive streaming when the sources are slower than its
//! speed-matching floor (1 GiB lasts 2.5 s at 400 MB/s). The spool stages
//! the stream in files of `chunk_bytes` on disk and despools each one at
//! full speed while the next fills. With a threshold, it measures the
//! source over a window while spooling (so the drive never sees the slow
//! start), then either stays on or despools what it has and passes the
//! rest straight through. Spooled data is not written data: the summary
//! counts bytes only when the drive takes them.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use super::pool::BufferPool;
use super::writer::{ToDrive, WriteProgress};
use super::{Error, Result};

/// How and when to spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// Size of each spool file; two exist at most (one filling, one despooling).
    pub chunk_bytes: u64,
    /// Spool once the source delivers less than this many bytes per second;
    /// `None`: spool everything.
    pub below_rate: Option<f64>,
    /// How long to measure the source before deciding.
    pub window: Duration,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpoolStats {
    /// The spool stayed on for the session (always, or the source was slow).
    pub used: bool,
    /// Bytes that went through the spool files.
    pub spooled_bytes: u64,
    pub spool_files: u64,
    /// Source rate measured before deciding, in MB/s.
    pub measured_source_mb_s: Option<f64>,
}

const TAG_BLOCK: u8 = 1;
const TAG_FILEMARK_IMMEDIATE: u8 = 2;
const TAG_FILEMARK_SYNC: u8 = 3;
const TAG_FLUSH: u8 = 4;
const TAG_NEXT_CARTRIDGE: u8 = 5;
const TAG_CONFIRM: u8 = 6;

/// Pass `input` to `output`, through spool files once spooling is on.
pub(super) fn run_spool(
    opts: &SpoolOptions,
    input: Receiver<ToDrive>,
    output: SyncSender<ToDrive>,
    pool: &BufferPool,
    progress: &WriteProgress,
) -> Result<SpoolStats> {
    std::fs::create_dir_all(&opts.dir).map_err(|e| {
        Error::io(
            format!("creating spool directory {}", opts.dir.display()),
            e,
        )
    })?;
    let mut stats = SpoolStats::default();
    let (to_despool, spooled) = sync_channel::<PathBuf>(1);
    let mut to_despool = Some(to_despool);
    let phase = std::thread::scope(|scope| {
        let out = output.clone();
        let despooler = scope.spawn(move || despool(spooled, out, pool, progress));
        let r = spool_loop(opts, &input, &mut to_despool, pool, progress, &mut stats);
        // No more spool files: the despooler finishes what it has.
        drop(to_despool.take());
        let d = despooler
            .join()
            .unwrap_or_else(|_| Err(Error::Panic("the despooler panicked".into())));
        r.and_then(|phase| d.map(|()| phase))
    });
    let phase = match phase {
        Ok(p) => p,
        Err(e) => {
            remove_leftovers(&opts.dir);
            return Err(e);
        }
    };
    if phase == Phase::PassThrough {
        // Everything spooled so far is on its way: the rest follows in order.
        for m in input.iter() {
            send(&output, m)?;
        }
    }
    Ok(stats)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The input ended while spooling.
    Done,
    /// The source is fast enough: pass the rest straight through.
    PassThrough,
}

fn send(output: &SyncSender<ToDrive>, m: ToDrive) -> Result<()> {
    output
        .send(m)
        .map_err(|_| Error::Panic("the drive writer stopped".into()))
}

fn spool_loop(
    opts: &SpoolOptions,
    input: &Receiver<ToDrive>,
    to_despool: &mut Option<SyncSender<PathBuf>>,
    pool: &BufferPool,
    progress: &WriteProgress,
    stats: &mut SpoolStats,
) -> Result<Phase> {
    let started = Instant::now();
    let mut decided = opts.below_rate.is_none();
    stats.used = decided;
    let mut current: Option<(PathBuf, BufWriter<File>, u64)> = None;
    for m in input.iter() {
        if current.is_none() {
            let path = opts.dir.join(format!(
                "tapir-spool-{}-{}.spool",
                std::process::id(),
                stats.spool_files
            ));
            let f = File::create(&path)
                .map_err(|e| Error::io(format!("creating spool file {}", path.display()), e))?;
            stats.spool_files += 1;
            current = Some((path, BufWriter::with_capacity(4 << 20, f), 0));
        }
        let (path, w, size) = current.as_mut().expect("spool file open");
        let io = |e| Error::io(format!("writing spool file {}", path.display()), e);
        // The producer waits for an answer to these.
        let answer_awaited = matches!(m, ToDrive::NextCartridge | ToDrive::Confirm);
        match m {
            ToDrive::Block(b) => {
                w.write_all(&[TAG_BLOCK]).map_err(io)?;
                w.write_all(&(b.len() as u32).to_le_bytes()).map_err(io)?;
                w.write_all(&b).map_err(io)?;
                *size += b.len() as u64 + 5;
                stats.spooled_bytes += b.len() as u64;
                progress.buffers_in_flight.fetch_sub(1, Ordering::Relaxed);
                pool.give(b);
            }
            ToDrive::Filemark { immediate: true } => {
                w.write_all(&[TAG_FILEMARK_IMMEDIATE]).map_err(io)?
            }
            ToDrive::Filemark { immediate: false } => {
                w.write_all(&[TAG_FILEMARK_SYNC]).map_err(io)?
            }
            ToDrive::Flush => w.write_all(&[TAG_FLUSH]).map_err(io)?,
            ToDrive::NextCartridge => w.write_all(&[TAG_NEXT_CARTRIDGE]).map_err(io)?,
            ToDrive::Confirm => w.write_all(&[TAG_CONFIRM]).map_err(io)?,
        }
        // The producer waits for the drive: hand the chunk over now.
        if *size >= opts.chunk_bytes || answer_awaited {
            hand_over(&mut current, to_despool)?;
        }
        if !decided && started.elapsed() >= opts.window {
            decided = true;
            let rate = stats.spooled_bytes as f64 / started.elapsed().as_secs_f64().max(1e-9);
            stats.measured_source_mb_s = Some(rate / 1e6);
            if opts.below_rate.is_some_and(|limit| rate >= limit) {
                hand_over(&mut current, to_despool)?;
                return Ok(Phase::PassThrough);
            }
            tracing::info!(
                "source delivers {:.0} MB/s: spooling to {}",
                rate / 1e6,
                opts.dir.display()
            );
            stats.used = true;
        }
    }
    hand_over(&mut current, to_despool)?;
    Ok(Phase::Done)
}

fn hand_over(
    current: &mut Option<(PathBuf, BufWriter<File>, u64)>,
    to_despool: &mut Option<SyncSender<PathBuf>>,
) -> Result<()> {
    let Some((path, w, _)) = current.take() else {
        return Ok(());
    };
    w.into_inner().map_err(|e| {
        Error::io(
            format!("writing spool file {}", path.display()),
            e.into_error(),
        )
    })?;
    to_despool
        .as_ref()
        .expect("despooler running")
        .send(path)
        .map_err(|_| Error::Panic("the despooler stopped".into()))
}

fn despool(
    files: Receiver<PathBuf>,
    output: SyncSender<ToDrive>,
    pool: &BufferPool,
    progress: &WriteProgress,
) -> Result<()> {
    for path in files.iter() {
        let io = |e| Error::io(format!("reading spool file {}", path.display()), e);
        let f = File::open(&path).map_err(io)?;
        let mut r = BufReader::with_capacity(4 << 20, f);
        loop {
            let mut tag = [0u8; 1];
            match r.read_exact(&mut tag) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io(e)),
            }
            let m = match tag[0] {
                TAG_BLOCK => {
                    let mut len = [0u8; 4];
                    r.read_exact(&mut len).map_err(io)?;
                    let mut b = pool
                        .take()
                        .ok_or_else(|| Error::Panic("the drive writer stopped".into()))?;
                    b.resize(u32::from_le_bytes(len) as usize, 0);
                    r.read_exact(&mut b).map_err(io)?;
                    progress.buffers_in_flight.fetch_add(1, Ordering::Relaxed);
                    ToDrive::Block(b)
                }
                TAG_FILEMARK_IMMEDIATE => ToDrive::Filemark { immediate: true },
                TAG_FILEMARK_SYNC => ToDrive::Filemark { immediate: false },
                TAG_FLUSH => ToDrive::Flush,
                TAG_NEXT_CARTRIDGE => ToDrive::NextCartridge,
                TAG_CONFIRM => ToDrive::Confirm,
                other => {
                    return Err(Error::io(
                        format!("spool file {}", path.display()),
                        std::io::Error::other(format!("unknown tag {other}")),
                    ))
                }
            };
            send(&output, m)?;
        }
        std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("removing spool file {}", path.display()), e))?;
    }
    Ok(())
}

fn remove_leftovers(dir: &Path) {
    let prefix = format!("tapir-spool-{}-", std::process::id());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
