//! The write path: one producer thread (walk, read, hash, compress, frame)
//! and one writer thread that owns the drive, joined by a bounded pool of
//! block buffers. This is the only way tapir writes sessions.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use crate::device::{TapeDrive, WriteOutcome};
use crate::format::label::SetMembership;
use crate::format::meta::{
    to_cbor, CatalogEnd, CatalogEntry, CatalogHeader, Checkpoint, Entry, EntryEnd, EntryKind,
    SessionEnd, SessionStart, Timestamp, END_COMPLETE, END_INTERRUPTED, END_SOURCE_CHANGED,
    END_SOURCE_READ_ERROR, SESSION_INTERRUPTED, SESSION_OK, SESSION_WITH_WARNINGS,
};
use crate::format::record::{Codec, DataPrefix, RecordType, DATA_CHUNK_LEN};
use crate::format::stream::{StreamFramer, StreamIdentity};
use crate::format::BlockKind;

use super::pool::BufferPool;
use super::source::{open_source_file, WalkItem, WalkOptions, Walker};
use super::volume::{hostname, map_tape, write_label, TapeMap};
use super::{Error, Result};
use crate::catalog::record::WriteDone;
use crate::catalog::{Catalog, WriterInfo};

/// Catalog entries go to the recorder in batches (one handoff per batch);
/// at most this many batches wait.
const CATALOG_BATCH: usize = 256;
const CATALOG_QUEUE_BATCHES: usize = 64;

/// What to write and how.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub sources: Vec<PathBuf>,
    /// Set name; a blank labelled cartridge starts a set of this name.
    pub set_name: Option<String>,
    pub walk: WalkOptions,
    /// Compress content with zstd (chunks that do not shrink are stored).
    pub compress: bool,
    /// Total size of the block buffer pool between producer and drive.
    pub buffer_bytes: usize,
    /// Make data durable after at least this many bytes...
    pub checkpoint_bytes: u64,
    /// ...or this much time, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Start the drive only when the buffer is this full (percent), and
    /// refill to it after running dry, like mbuffer's `-P`.
    pub start_fill_percent: u8,
    /// Stage the stream on disk when the sources are too slow for the drive.
    pub spool: Option<super::spool::SpoolOptions>,
    /// Set (by a signal handler) to close the session early and cleanly.
    pub interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Record the session in this host catalog (None: do not record).
    pub catalog: Option<PathBuf>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            sources: Vec::new(),
            set_name: None,
            walk: WalkOptions::default(),
            compress: false,
            buffer_bytes: 256 * 1024 * 1024,
            checkpoint_bytes: 8 << 30,
            checkpoint_interval: Duration::from_secs(300),
            start_fill_percent: 25,
            spool: None,
            interrupt: None,
            catalog: None,
        }
    }
}

/// Live counters, readable from another thread for progress display.
#[derive(Debug, Default)]
pub struct WriteProgress {
    pub files_done: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub buffers_in_flight: AtomicUsize,
    pub buffers_total: AtomicUsize,
    pub underruns: AtomicU64,
    pub current: std::sync::Mutex<String>,
}

/// The job summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriteSummary {
    pub cartridge: String,
    pub set_name: String,
    pub set_uuid: String,
    pub session: u32,
    pub data_tape_file: u32,
    pub catalog_tape_file: u32,
    pub entries: u64,
    pub files: u64,
    pub directories: u64,
    pub other_entries: u64,
    /// Logical bytes of file content read from sources.
    pub bytes_read: u64,
    /// Bytes of content as stored (after compression).
    pub bytes_stored: u64,
    /// Bytes written to the drive, headers and catalog included.
    pub bytes_written: u64,
    pub blocks_written: u64,
    pub skipped_sockets: u64,
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub throughput_mb_s: f64,
    /// Time the drive waited for data after writing began.
    pub drive_wait_seconds: f64,
    pub underruns: u64,
    pub average_buffer_fill_percent: f64,
    pub compression_ratio: f64,
    pub checkpoints: u64,
    pub early_warning: bool,
    pub new_set: bool,
    /// What the drive reports of its streaming (simulated drives, for now).
    pub drive_streaming: Option<crate::device::drivesim::StreamingStats>,
    pub spool: Option<super::spool::SpoolStats>,
    /// The job was interrupted and the session closed early.
    pub interrupted: bool,
}

pub(super) enum ToDrive {
    Block(Vec<u8>),
    Filemark { immediate: bool },
    Flush,
}

struct DriveStats {
    blocks: u64,
    bytes: u64,
    wait: Duration,
    underruns: u64,
    fill_samples: u64,
    fill_sum: u64,
    early_warning: bool,
}

/// Write one session of `opts.sources` at the end of the loaded cartridge.
pub fn write_session(
    drive: &mut dyn TapeDrive,
    opts: &WriteOptions,
    progress: &WriteProgress,
) -> Result<WriteSummary> {
    let started = Instant::now();
    let status = drive.status()?;
    if status.write_protected {
        return Err(crate::device::DeviceError::WriteProtected {
            device: drive.name().to_string(),
        }
        .into());
    }
    let mut map = map_tape(drive)?;
    let new_set = prepare_set(drive, &mut map, opts)?;
    let membership = map.label.set.clone().expect("set prepared");
    let session = map.next_session();
    let data_file = if new_set {
        super::volume::FIRST_SESSION_FILE
    } else {
        position_for_append(drive, &map)?
    };

    let block_size = map.label.block_size as usize;
    let n_buffers = (opts.buffer_bytes / block_size).max(4);
    progress.buffers_total.store(n_buffers, Ordering::Relaxed);
    // The producer always holds one buffer while it fills it.
    let start_blocks = ((n_buffers - 1) * opts.start_fill_percent.min(100) as usize / 100).max(1);
    let (to_drive, from_producer) = sync_channel::<ToDrive>(n_buffers);
    let pool = BufferPool::new(n_buffers, block_size);

    let start = session_start(opts, &membership, session, map.label.block_size);
    // The host catalog: a problem with it never stops the backup; it is a
    // warning, and `tapir catalog import` catalogues the cartridge later.
    let mut catalog_warnings = Vec::new();
    let mut catalog = match &opts.catalog {
        Some(path) => match Catalog::open(path) {
            Ok(c) => Some(c),
            Err(e) => {
                catalog_warnings.push(format!("{e}; this session is not catalogued"));
                None
            }
        },
        None => None,
    };
    let writer_info = WriterInfo {
        drive_name: Some(drive.name().to_string()),
        drive: drive.identity(),
        who: String::new(),
    };
    let mut recorder = match catalog.as_mut() {
        Some(c) => match c.begin_session(&map.label, &start, data_file, &writer_info) {
            Ok(r) => Some(r),
            Err(e) => {
                catalog_warnings.push(format!("{e}; this session is not catalogued"));
                None
            }
        },
        None => None,
    };
    let (to_catalog, catalog_queue) = sync_channel::<Vec<CatalogEntry>>(CATALOG_QUEUE_BATCHES);

    // Compression, when asked for, runs on every core beside reading.
    let workers = if opts.compress {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        0
    };
    let ctx = ProducerContext {
        opts,
        compress_workers: workers,
        start: &start,
        to_catalog: recorder.is_some().then_some(to_catalog),
        membership: &membership,
        label_name: &map.label.label,
        session,
        data_file,
        block_size: map.label.block_size,
        progress,
    };
    let drive_for_writer: &mut dyn TapeDrive = &mut *drive;
    let (produced, drove, spooled, recorded) = std::thread::scope(|scope| {
        let pool = &pool;
        // Walking (lstat, xattrs, inode flags, opening) runs beside reading
        // and hashing; the bounded queue also bounds open descriptors.
        // Items travel in batches: one thread handoff per batch, not per file.
        let (to_producer, walked) = sync_channel::<Vec<WalkItem>>(WALK_QUEUE_BATCHES);
        let sources = &opts.sources;
        let walk = opts.walk.clone();
        let walker = scope.spawn(move || {
            let mut batch = Vec::with_capacity(WALK_BATCH);
            for item in Walker::new(sources.iter(), walk) {
                batch.push(item);
                if batch.len() == WALK_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(WALK_BATCH));
                    if to_producer.send(full).is_err() {
                        return Ok(()); // the producer stopped; its error explains why
                    }
                }
            }
            if !batch.is_empty() {
                let _ = to_producer.send(batch);
            }
            Ok(())
        });
        let (compress_jobs, jobs) =
            sync_channel::<CompressJob>(workers * COMPRESS_DEPTH_PER_WORKER);
        let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
        let compressors: Vec<_> = (0..workers)
            .map(|_| {
                let jobs = jobs.clone();
                scope.spawn(move || compress_worker(&jobs))
            })
            .collect();
        let compress_jobs = (workers > 0).then_some(compress_jobs);
        // With a spool, it sits between the producer and the drive writer.
        let (to_next, spool) = match &opts.spool {
            Some(sp) => {
                let (to_spool, spool_input) = sync_channel::<ToDrive>(n_buffers);
                let h = scope.spawn(move || {
                    super::spool::run_spool(sp, spool_input, to_drive, pool, progress)
                });
                (to_spool, Some(h))
            }
            None => (to_drive, None),
        };
        // Recording runs in its own thread, so the catalog never slows the drive.
        let recording = recorder.as_mut().map(|r| {
            scope.spawn(move || -> crate::catalog::Result<()> {
                for e in catalog_queue.into_iter().flatten() {
                    r.add(&e)?;
                }
                r.flush()
            })
        });
        let producer = scope.spawn(move || produce(ctx, walked, compress_jobs, to_next, pool));
        let writer = scope.spawn(move || {
            let r = drive_writer(
                drive_for_writer,
                from_producer,
                pool,
                progress,
                start_blocks,
            );
            // Whatever happened, the producer must not wait for buffers any more.
            pool.close();
            r
        });
        let walked = join(walker);
        let produced = join(producer);
        let compressed = compressors
            .into_iter()
            .map(join)
            .collect::<Result<Vec<()>>>();
        let spooled = spool.map(join).transpose();
        let recorded = recording.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(crate::catalog::Error::Invalid(
                    "the catalog recorder panicked".into(),
                ))
            })
        });
        (
            produced.and_then(|p| walked.and(compressed).map(|_| p)),
            join(writer),
            spooled,
            recorded,
        )
    });
    // The drive's error explains a producer that stopped because the drive did.
    let drove = drove?;
    let drive_streaming = drive.streaming_stats();
    let spool = spooled?;
    let produced = produced?;

    // Both threads succeeded, so the final synchronous filemark returned:
    // the whole session is on the medium. Only now may the catalog show it.
    // (On any error above, the recorder is dropped, which discards it.)
    if let Some(r) = recorder {
        let done = WriteDone {
            catalog_tape_file: Some(data_file + 1),
            bytes_written: drove.bytes,
            cartridge_full: drove.early_warning,
        };
        let committed = match (recorded, &produced.summary) {
            (Some(Err(e)), _) => {
                let _ = r.abort();
                Err(e)
            }
            (_, Some(end)) => r.commit(end, &done),
            (_, None) => Ok(()),
        };
        if let Err(e) = committed {
            catalog_warnings.push(format!(
                "{e}; this session is not catalogued: run `tapir catalog import` with the cartridge loaded"
            ));
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    let mut warnings = produced.warnings;
    warnings.extend(catalog_warnings);
    if drove.early_warning {
        warnings.push(format!(
            "{}: the cartridge reached early warning; it is nearly full",
            map.label.label
        ));
    }
    Ok(WriteSummary {
        cartridge: map.label.label.clone(),
        set_name: membership.set_name.clone(),
        set_uuid: crate::format::label::uuid_text(&membership.set_uuid),
        session,
        data_tape_file: data_file,
        catalog_tape_file: data_file + 1,
        entries: produced.entries,
        files: produced.files,
        directories: produced.dirs,
        other_entries: produced.entries - produced.files - produced.dirs,
        bytes_read: produced.bytes_read,
        bytes_stored: produced.bytes_stored,
        bytes_written: drove.bytes,
        blocks_written: drove.blocks,
        skipped_sockets: produced.skipped,
        warnings,
        seconds: elapsed,
        throughput_mb_s: if elapsed > 0.0 {
            drove.bytes as f64 / elapsed / 1e6
        } else {
            0.0
        },
        drive_wait_seconds: drove.wait.as_secs_f64(),
        underruns: drove.underruns,
        average_buffer_fill_percent: if drove.fill_samples > 0 {
            drove.fill_sum as f64 / drove.fill_samples as f64 * 100.0 / n_buffers as f64
        } else {
            0.0
        },
        compression_ratio: if produced.bytes_stored > 0 {
            produced.bytes_read as f64 / produced.bytes_stored as f64
        } else {
            1.0
        },
        checkpoints: produced.checkpoints,
        early_warning: drove.early_warning,
        new_set,
        drive_streaming,
        spool,
        interrupted: produced.interrupted,
    })
}

/// The `SessionStart` of the session about to be written.
fn session_start(
    opts: &WriteOptions,
    membership: &SetMembership,
    session: u32,
    block_size: u32,
) -> SessionStart {
    SessionStart {
        session_uuid: *uuid::Uuid::new_v4().as_bytes(),
        session,
        set_uuid: membership.set_uuid,
        set_name: membership.set_name.clone(),
        host: hostname(),
        started: Timestamp::now(),
        tapir_version: env!("CARGO_PKG_VERSION").to_string(),
        sources: opts
            .sources
            .iter()
            .map(|p| {
                minicbor::bytes::ByteVec::from(
                    std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec(),
                )
            })
            .collect(),
        volume_seq: membership.volume_seq,
        block_size,
        continues: None,
    }
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join().unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Panic(msg))
    })
}

/// Join the cartridge to a set: a blank labelled cartridge gets a new set and
/// its label rewritten; a cartridge of another set is refused.
fn prepare_set(drive: &mut dyn TapeDrive, map: &mut TapeMap, opts: &WriteOptions) -> Result<bool> {
    if let Some(set) = &map.label.set {
        if let Some(want) = &opts.set_name {
            if want != &set.set_name {
                return Err(Error::Refused(format!(
                    "{}: cartridge {} belongs to set \"{}\", not \"{}\"; load a cartridge of that set or a blank labelled one",
                    drive.name(),
                    map.label.label,
                    set.set_name,
                    want
                )));
            }
        }
        return Ok(false);
    }
    if !map.sessions.is_empty() || !map.unknown_files.is_empty() || map.next_file() > 2 {
        return Err(Error::Refused(format!(
            "{}: cartridge {} has no set in its label but holds data after it; refusing to rewrite its label",
            drive.name(),
            map.label.label
        )));
    }
    let name = opts
        .set_name
        .clone()
        .unwrap_or_else(|| map.label.pool.clone());
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "set name {name:?} must be 1 to 64 characters without control characters"
        )));
    }
    map.label.set = Some(SetMembership {
        set_uuid: *uuid::Uuid::new_v4().as_bytes(),
        set_name: name,
        volume_seq: 1,
        previous_volume: None,
        joined: Timestamp::now(),
        host: hostname(),
    });
    // Safe: the cartridge holds only its label and rescue kit. The session's
    // final synchronous filemark makes the new label durable with it.
    write_label(drive, &map.label, false)?;
    Ok(true)
}

/// Go to end of data, close an interrupted tape file, and confirm the drive
/// is where the map says the next session belongs.
fn position_for_append(drive: &mut dyn TapeDrive, map: &TapeMap) -> Result<u32> {
    confirm_last_block(drive, map)?;
    drive.seek_end_of_data()?;
    if map.open_last_file {
        drive.write_filemarks(1, false)?;
    }
    let expected = map.next_file();
    let pos = drive.position()?;
    if pos.file != expected || pos.block != 0 {
        return Err(Error::Refused(format!(
            "{}: after seeking end of data the drive is at tape file {}, block {}, but cartridge {} should end at tape file {}; not writing",
            drive.name(),
            pos.file,
            pos.block,
            map.label.label,
            expected
        )));
    }
    Ok(expected)
}

/// Read back the last block before end of data and check it is the one the
/// map says ends the cartridge: this set, the last tape file. Appending
/// anywhere else (a drive that lost its place, a cartridge changed behind
/// tapir's back, data written by something else) is refused.
fn confirm_last_block(drive: &mut dyn TapeDrive, map: &TapeMap) -> Result<()> {
    let last_file = match (map.closed_files, map.open_last_file) {
        (n, true) => n,
        (n, false) if n > super::volume::FIRST_SESSION_FILE => n - 1,
        _ => return Ok(()), // only the label and rescue kit, read just now
    };
    drive.seek_end_of_data()?;
    if !map.open_last_file {
        drive.space_filemarks(-1)?;
    }
    drive.space_blocks(-1)?;
    let mut buf = vec![0u8; drive.max_block_size()];
    let device = drive.name().to_string();
    let refuse = |what: String| {
        Error::Refused(format!(
            "{device}: the last block on cartridge {} is {what}, not the end of tape file {last_file} of its set; not appending",
            map.label.label
        ))
    };
    let n = match drive.read_block(&mut buf)? {
        crate::device::ReadOutcome::Block(n) => n,
        other => return Err(refuse(format!("{other:?}"))),
    };
    let set_uuid = map.label.set_uuid();
    match crate::format::BlockHeader::decode(&buf[..n]) {
        Ok((h, _)) if h.tape_file == last_file && h.set_uuid == set_uuid => Ok(()),
        Ok((h, _)) => Err(refuse(format!(
            "from tape file {} of set {}",
            h.tape_file,
            crate::format::label::uuid_text(&h.set_uuid)
        ))),
        // A torn last block of an interrupted session is expected there.
        Err(_) if map.open_last_file => Ok(()),
        Err(e) => Err(refuse(format!("unreadable ({e})"))),
    }
}

/// The thread that owns the drive. Like mbuffer's `-P`, it starts writing
/// only once `start_blocks` blocks are buffered (or the producer is done or
/// asks for a filemark), and after running dry it refills to that level
/// again, so the drive gets long runs instead of trickles.
fn drive_writer(
    drive: &mut dyn TapeDrive,
    rx: Receiver<ToDrive>,
    pool: &BufferPool,
    progress: &WriteProgress,
    start_blocks: usize,
) -> Result<DriveStats> {
    let mut st = DriveStats {
        blocks: 0,
        bytes: 0,
        wait: Duration::ZERO,
        underruns: 0,
        fill_samples: 0,
        fill_sum: 0,
        early_warning: false,
    };
    let mut streaming = false;
    let mut held: VecDeque<ToDrive> = VecDeque::new();
    let mut held_blocks = 0usize;
    let mut closed = false;
    let hold = |m: ToDrive, held: &mut VecDeque<ToDrive>, held_blocks: &mut usize| -> bool {
        let is_block = matches!(m, ToDrive::Block(_));
        *held_blocks += usize::from(is_block);
        held.push_back(m);
        is_block
    };
    loop {
        if held.is_empty() && !closed {
            let t = Instant::now();
            let mut waited = false;
            while held_blocks < start_blocks {
                let m = match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => {
                        waited = true;
                        match rx.recv() {
                            Ok(m) => m,
                            Err(_) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                };
                // A filemark or flush is written now, whatever the fill.
                if !hold(m, &mut held, &mut held_blocks) {
                    break;
                }
            }
            if streaming && waited {
                st.underruns += 1;
                progress.underruns.fetch_add(1, Ordering::Relaxed);
                st.wait += t.elapsed();
            }
        }
        let Some(msg) = held.pop_front() else {
            if closed {
                break;
            }
            continue;
        };
        match msg {
            ToDrive::Block(buf) => {
                held_blocks -= 1;
                let in_flight = progress.buffers_in_flight.fetch_sub(1, Ordering::Relaxed);
                st.fill_samples += 1;
                st.fill_sum += in_flight as u64;
                if drive.write_block(&buf)? == WriteOutcome::EarlyWarning {
                    st.early_warning = true;
                }
                streaming = true;
                st.blocks += 1;
                st.bytes += buf.len() as u64;
                progress
                    .bytes_written
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                pool.give(buf);
            }
            ToDrive::Filemark { immediate } => {
                drive.write_filemarks(1, immediate)?;
                // A synchronous filemark stops the tape: not the buffer's fault.
                streaming &= immediate;
            }
            ToDrive::Flush => {
                drive.flush()?;
                streaming = false;
            }
        }
        // Keep going while data is queued; an empty queue is an underrun.
        while held.is_empty() && !closed {
            match rx.try_recv() {
                Ok(m) => {
                    hold(m, &mut held, &mut held_blocks);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
    }
    Ok(st)
}

struct ProducerContext<'a> {
    opts: &'a WriteOptions,
    /// Compression worker threads (0: no compression).
    compress_workers: usize,
    start: &'a SessionStart,
    /// Each entry's catalog record, for the host catalog (if recording).
    to_catalog: Option<SyncSender<Vec<CatalogEntry>>>,
    membership: &'a SetMembership,
    label_name: &'a str,
    session: u32,
    data_file: u32,
    block_size: u32,
    progress: &'a WriteProgress,
}

struct Produced {
    summary: Option<SessionEnd>,
    interrupted: bool,
    entries: u64,
    files: u64,
    dirs: u64,
    bytes_read: u64,
    bytes_stored: u64,
    skipped: u64,
    checkpoints: u64,
    warnings: Vec<String>,
}

/// Sends sealed blocks to the drive and takes empty ones from the pool.
struct BlockChannel<'p> {
    tx: SyncSender<ToDrive>,
    pool: &'p BufferPool,
}

impl BlockChannel<'_> {
    fn send(&self, msg: ToDrive) -> Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| Error::Panic("the drive writer stopped".into()))
    }
    fn emit(&self, block: Vec<u8>, progress: &WriteProgress) -> Result<Vec<u8>> {
        progress.buffers_in_flight.fetch_add(1, Ordering::Relaxed);
        self.send(ToDrive::Block(block))?;
        self.take()
    }
    fn take(&self) -> Result<Vec<u8>> {
        self.pool
            .take()
            .ok_or_else(|| Error::Panic("the drive writer stopped".into()))
    }
}

/// Catalog entries wait in a temporary file, so memory stays bounded
/// whatever the number of files.
struct CatalogSpill {
    out: BufWriter<File>,
    count: u64,
}

impl CatalogSpill {
    fn new() -> Result<Self> {
        let f =
            tempfile::tempfile().map_err(|e| Error::io("creating the catalog spill file", e))?;
        Ok(CatalogSpill {
            out: BufWriter::new(f),
            count: 0,
        })
    }
    fn push(&mut self, e: &CatalogEntry) -> Result<()> {
        let body = to_cbor(e);
        self.out
            .write_all(&(body.len() as u32).to_le_bytes())
            .and_then(|_| self.out.write_all(&body))
            .map_err(|e| Error::io("writing the catalog spill file", e))?;
        self.count += 1;
        Ok(())
    }
    fn into_reader(self) -> Result<BufReader<File>> {
        let mut f = self
            .out
            .into_inner()
            .map_err(|e| Error::io("flushing the catalog spill file", e.into_error()))?;
        std::io::Seek::rewind(&mut f)
            .map_err(|e| Error::io("rewinding the catalog spill file", e))?;
        Ok(BufReader::new(f))
    }
}

struct ContentWriter {
    compress: Option<SyncSender<CompressJob>>,
    chunk: Vec<u8>,
    /// Chunks out for compression, in file order, and how many may be.
    inflight: VecDeque<(u64, Receiver<Compressed>)>,
    max_inflight: usize,
    /// Spare chunk buffers for the compressed path.
    spare: Vec<Vec<u8>>,
    /// Raised by a signal: stop between chunks.
    interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl ContentWriter {
    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// A chunk to compress, and where to send it back.
struct CompressJob {
    raw: Vec<u8>,
    reply: SyncSender<Compressed>,
}

struct Compressed {
    raw: Vec<u8>,
    packed: Vec<u8>,
    codec: Codec,
}

/// Walked items per handoff to the producer, and batches queued: together
/// they bound the files held open ahead of the reader.
const WALK_BATCH: usize = 32;
const WALK_QUEUE_BATCHES: usize = 8;

/// How many chunks may be out for compression at once, per worker.
const COMPRESS_DEPTH_PER_WORKER: usize = 2;

/// A compression worker: zstd level 1; a chunk that does not shrink by at
/// least 1/32 is stored as it is (incompressible data costs no space).
fn compress_worker(jobs: &std::sync::Mutex<Receiver<CompressJob>>) -> Result<()> {
    let mut z =
        zstd::bulk::Compressor::new(1).map_err(|e| Error::io("starting the zstd compressor", e))?;
    loop {
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return Ok(()), // the producer is done
        };
        let n = job.raw.len();
        let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(n));
        let codec = match z.compress_to_buffer(&job.raw, &mut packed) {
            Ok(k) if k < n - n / 32 => Codec::Zstd,
            _ => {
                packed.clear();
                Codec::Stored
            }
        };
        // The producer may have stopped; then nobody needs the result.
        let _ = job.reply.send(Compressed {
            raw: job.raw,
            packed,
            codec,
        });
    }
}

fn produce(
    ctx: ProducerContext<'_>,
    walked: Receiver<Vec<WalkItem>>,
    compress_jobs: Option<SyncSender<CompressJob>>,
    tx: SyncSender<ToDrive>,
    pool: &BufferPool,
) -> Result<Produced> {
    let chan = BlockChannel { tx, pool };
    let progress = ctx.progress;
    let mut emit = |b: Vec<u8>| chan.emit(b, progress);
    let first = chan.take()?;
    let mut framer = StreamFramer::new(
        StreamIdentity {
            kind: BlockKind::SessionData,
            set_uuid: ctx.membership.set_uuid,
            volume_seq: ctx.membership.volume_seq,
            tape_file: ctx.data_file,
            session: ctx.session,
        },
        ctx.block_size,
        first,
    );
    let start = ctx.start;
    framer.push_record(RecordType::SessionStart, 0, &[&to_cbor(start)], &mut emit)?;

    let mut p = Produced {
        summary: None,
        interrupted: false,
        entries: 0,
        files: 0,
        dirs: 0,
        bytes_read: 0,
        bytes_stored: 0,
        skipped: 0,
        checkpoints: 0,
        warnings: Vec::new(),
    };
    let mut spill = CatalogSpill::new()?;
    let mut content = ContentWriter {
        max_inflight: ctx.compress_workers * COMPRESS_DEPTH_PER_WORKER,
        compress: compress_jobs,
        chunk: vec![0u8; DATA_CHUNK_LEN],
        inflight: VecDeque::new(),
        spare: Vec::new(),
        interrupt: ctx.opts.interrupt.clone(),
    };
    let mut since_checkpoint_bytes = 0u64;
    let mut last_checkpoint = Instant::now();
    let mut catalog_batch = Vec::with_capacity(CATALOG_BATCH);
    // Files left out as unreadable: later hard links to them are left out too.
    let mut left_out: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();

    for item in walked.into_iter().flatten() {
        if content.interrupted() {
            p.interrupted = true;
            break;
        }
        let src = match item {
            WalkItem::Entry(e) => e,
            WalkItem::Skipped { .. } => {
                p.skipped += 1;
                continue;
            }
            WalkItem::Warning { path, message } => {
                tracing::warn!("{}: {message}", path.display());
                p.warnings.push(format!("{}: {message}", path.display()));
                continue;
            }
        };
        let entry = src.entry;
        let kind = entry.kind().expect("the walker makes known kinds");
        if let Ok(mut cur) = progress.current.lock() {
            cur.clear();
            cur.push_str(&String::from_utf8_lossy(&entry.path));
        }
        // Open before announcing the entry, so an unreadable file is a
        // warning rather than a damaged entry on tape.
        let file = if kind == EntryKind::File {
            match src.file.map_or_else(|| open_source_file(&src.abs_path), Ok) {
                Ok(f) => Some(f),
                Err(e) => {
                    let w = format!("{}: cannot read, not archived: {e}", src.abs_path.display());
                    tracing::warn!("{w}");
                    p.warnings.push(w);
                    left_out.insert(entry.path.clone());
                    continue;
                }
            }
        } else {
            None
        };
        if kind == EntryKind::HardLink
            && entry
                .link_target
                .as_ref()
                .is_some_and(|t| left_out.contains(t))
        {
            let w = format!(
                "{}: hard link to a file that could not be read, not archived",
                src.abs_path.display()
            );
            p.warnings.push(w);
            continue;
        }
        let position = framer.push_record(RecordType::Entry, 0, &[&to_cbor(&entry)], &mut emit)?;
        let end = match &file {
            Some(f) => write_content(
                f,
                &entry,
                &mut framer,
                &mut content,
                &mut emit,
                &mut p,
                progress,
            )?,
            None => EntryEnd {
                blake3: None,
                stored_bytes: 0,
                status: END_COMPLETE,
            },
        };
        if end.status == END_INTERRUPTED {
            p.interrupted = true;
            p.warnings.push(format!(
                "{}: interrupted while being written; archived content is incomplete",
                src.abs_path.display()
            ));
        } else if end.status != END_COMPLETE {
            let w = format!(
                "{}: {}",
                src.abs_path.display(),
                if end.status == END_SOURCE_CHANGED {
                    "changed while being read; archived as read"
                } else {
                    "read error; archived content is incomplete"
                }
            );
            tracing::warn!("{w}");
            p.warnings.push(w);
        }
        framer.push_record(RecordType::EntryEnd, 0, &[&to_cbor(&end)], &mut emit)?;
        let mut listed = super::list::catalog_entry_of(&entry, position);
        listed.blake3 = end.blake3;
        listed.status = end.status;
        spill.push(&listed)?;
        if let Some(tx) = &ctx.to_catalog {
            catalog_batch.push(listed);
            if catalog_batch.len() == CATALOG_BATCH {
                // A recorder that failed has hung up; its error is reported at the end.
                let _ = tx.send(std::mem::replace(
                    &mut catalog_batch,
                    Vec::with_capacity(CATALOG_BATCH),
                ));
            }
        }
        p.entries += 1;
        match kind {
            EntryKind::File => p.files += 1,
            EntryKind::Dir => p.dirs += 1,
            _ => {}
        }
        progress.files_done.fetch_add(1, Ordering::Relaxed);
        since_checkpoint_bytes += end.stored_bytes;
        if since_checkpoint_bytes >= ctx.opts.checkpoint_bytes
            || last_checkpoint.elapsed() >= ctx.opts.checkpoint_interval
        {
            let cp = Checkpoint {
                entries: p.entries,
                bytes: p.bytes_stored,
                at: Timestamp::now(),
            };
            framer.push_record(RecordType::Checkpoint, 0, &[&to_cbor(&cp)], &mut emit)?;
            framer.seal_early(&mut emit)?;
            chan.send(ToDrive::Flush)?;
            p.checkpoints += 1;
            since_checkpoint_bytes = 0;
            last_checkpoint = Instant::now();
        }
    }

    if let Some(tx) = &ctx.to_catalog {
        if !catalog_batch.is_empty() {
            let _ = tx.send(std::mem::take(&mut catalog_batch));
        }
    }
    let summary = SessionEnd {
        entries: p.entries,
        stored_bytes: p.bytes_stored,
        ended: Timestamp::now(),
        warnings: p.warnings.len() as u64,
        status: if p.interrupted {
            SESSION_INTERRUPTED
        } else if p.warnings.is_empty() {
            SESSION_OK
        } else {
            SESSION_WITH_WARNINGS
        },
        skipped: p.skipped,
    };
    framer.push_record(RecordType::SessionEnd, 0, &[&to_cbor(&summary)], &mut emit)?;
    p.summary = Some(summary.clone());
    let last = framer.finish();
    let fresh = emit(last)?;
    // Structure uses an immediate filemark; durability comes at the end.
    chan.send(ToDrive::Filemark { immediate: true })?;

    let mut cat = StreamFramer::new(
        StreamIdentity {
            kind: BlockKind::SessionCatalog,
            set_uuid: ctx.membership.set_uuid,
            volume_seq: ctx.membership.volume_seq,
            tape_file: ctx.data_file + 1,
            session: ctx.session,
        },
        ctx.block_size,
        fresh,
    );
    let header = CatalogHeader {
        session_uuid: start.session_uuid,
        session: ctx.session,
        data_tape_file: ctx.data_file,
        entries: spill.count,
    };
    cat.push_record(
        RecordType::CatalogHeader,
        0,
        &[&to_cbor(&header)],
        &mut emit,
    )?;
    let mut digest = blake3::Hasher::new();
    let count = spill.count;
    let mut rd = spill.into_reader()?;
    let mut body = Vec::new();
    for _ in 0..count {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len)
            .map_err(|e| Error::io("reading the catalog spill file", e))?;
        body.resize(u32::from_le_bytes(len) as usize, 0);
        rd.read_exact(&mut body)
            .map_err(|e| Error::io("reading the catalog spill file", e))?;
        digest.update(&body);
        cat.push_record(RecordType::CatalogEntry, 0, &[&body], &mut emit)?;
    }
    let end = CatalogEnd {
        entries: count,
        digest: *digest.finalize().as_bytes(),
        summary,
    };
    cat.push_record(RecordType::CatalogEnd, 0, &[&to_cbor(&end)], &mut emit)?;
    let last = cat.finish();
    progress.buffers_in_flight.fetch_add(1, Ordering::Relaxed);
    chan.send(ToDrive::Block(last))?;
    // Synchronous: when this returns the whole session is on the medium.
    chan.send(ToDrive::Filemark { immediate: false })?;
    tracing::debug!("session {} of {} produced", ctx.session, ctx.label_name);
    Ok(p)
}

/// Read a file's content (data extents only for sparse files), hash it with
/// holes as zeros, and frame it as `Data` records.
fn write_content(
    file: &File,
    entry: &Entry,
    framer: &mut StreamFramer,
    cw: &mut ContentWriter,
    emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>>,
    p: &mut Produced,
    progress: &WriteProgress,
) -> Result<EntryEnd> {
    let mut hasher = blake3::Hasher::new();
    let mut hashed_to = 0u64;
    let mut stored = 0u64;
    let extents: Vec<(u64, u64)> = match &entry.sparse {
        Some(ex) => ex.iter().map(|e| (e.offset, e.len)).collect(),
        None => vec![(0, entry.size)],
    };
    let mut status = END_COMPLETE;
    'extents: for (start, len) in extents {
        let end = start.saturating_add(len).min(entry.size);
        let mut off = start;
        while off < end {
            if cw.interrupted() {
                status = END_INTERRUPTED;
                break 'extents;
            }
            let want = ((end - off) as usize).min(DATA_CHUNK_LEN);
            let mut buf = match cw.compress {
                Some(_) => cw.spare.pop().unwrap_or_else(|| vec![0u8; DATA_CHUNK_LEN]),
                None => std::mem::take(&mut cw.chunk),
            };
            // Only as long as this read: zero-filling a whole chunk per small file costs more than reading it.
            buf.resize(want, 0);
            let got = match read_full_at(file, &mut buf[..want], off) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("read error at offset {off}: {e}");
                    status = END_SOURCE_READ_ERROR;
                    0
                }
            };
            if got == 0 {
                if status == END_COMPLETE {
                    status = END_SOURCE_CHANGED;
                }
                give_back(cw, buf);
                break 'extents;
            }
            buf.truncate(got);
            super::hash_zeros(&mut hasher, off - hashed_to);
            hasher.update(&buf);
            hashed_to = off + got as u64;
            p.bytes_read += got as u64;
            progress.bytes_read.fetch_add(got as u64, Ordering::Relaxed);
            stored += got as u64;
            match &cw.compress {
                Some(jobs) => {
                    let (reply, result) = sync_channel(1);
                    jobs.send(CompressJob { raw: buf, reply })
                        .map_err(|_| Error::Panic("a compression worker stopped".into()))?;
                    cw.inflight.push_back((off, result));
                    while cw.inflight.len() > cw.max_inflight {
                        frame_compressed(cw, framer, emit, p)?;
                    }
                }
                None => {
                    frame_chunk(framer, emit, p, off, &buf, Codec::Stored, &buf)?;
                    cw.chunk = buf;
                }
            }
            off += got as u64;
            if got < want {
                status = END_SOURCE_CHANGED;
                break 'extents;
            }
        }
    }
    while !cw.inflight.is_empty() {
        frame_compressed(cw, framer, emit, p)?;
    }
    if status == END_COMPLETE {
        super::hash_zeros(&mut hasher, entry.size - hashed_to.min(entry.size));
    }
    Ok(EntryEnd {
        blake3: Some(*hasher.finalize().as_bytes()),
        stored_bytes: stored,
        status,
    })
}

fn give_back(cw: &mut ContentWriter, buf: Vec<u8>) {
    if cw.compress.is_some() {
        cw.spare.push(buf);
    } else {
        cw.chunk = buf;
    }
}

/// Frame the oldest chunk out for compression, waiting for it if needed.
fn frame_compressed(
    cw: &mut ContentWriter,
    framer: &mut StreamFramer,
    emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>>,
    p: &mut Produced,
) -> Result<()> {
    let (off, result) = cw.inflight.pop_front().expect("a chunk is in flight");
    let c = result
        .recv()
        .map_err(|_| Error::Panic("a compression worker stopped".into()))?;
    let body = match c.codec {
        Codec::Zstd => &c.packed[..],
        Codec::Stored => &c.raw[..],
    };
    frame_chunk(framer, emit, p, off, &c.raw, c.codec, body)?;
    cw.spare.push(c.raw);
    Ok(())
}

fn frame_chunk(
    framer: &mut StreamFramer,
    emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>>,
    p: &mut Produced,
    offset: u64,
    raw: &[u8],
    codec: Codec,
    body: &[u8],
) -> Result<()> {
    let prefix = DataPrefix {
        offset,
        raw_len: raw.len() as u32,
        codec,
    };
    framer.push_record(RecordType::Data, 0, &[&prefix.encode(), body], emit)?;
    p.bytes_stored += body.len() as u64;
    Ok(())
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
