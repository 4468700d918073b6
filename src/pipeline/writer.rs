//! The write path: one producer thread (walk, read, hash, compress, frame)
//! and one writer thread that owns the drive, joined by a bounded pool of
//! block buffers. This is the only way tapir writes sessions.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use crate::device::{TapeDrive, WriteOutcome};
use crate::format::label::{SetMembership, VolumeLabel};
use crate::format::meta::{
    to_cbor, to_cbor_into, CatalogEnd, CatalogEntry, CatalogHeader, Checkpoint, Entry, EntryEnd,
    EntryKind, SessionEnd, SessionLink, SessionStart, StreamPosition, Timestamp, END_COMPLETE,
    END_CONTINUES, END_INTERRUPTED, END_SOURCE_CHANGED, END_SOURCE_READ_ERROR, SESSION_CONTINUES,
    SESSION_INTERRUPTED, SESSION_OK, SESSION_WITH_WARNINGS,
};
use crate::format::record::{Codec, DataPrefix, RecordType, DATA_CHUNK_LEN};
use crate::format::setcat::{CopyBase, SessionInfo, VolumeInfo, SESSION_NO_END};
use crate::format::stream::{StreamFramer, StreamIdentity};
use crate::format::BlockKind;

use super::pool::BufferPool;
use super::replay::{Replay, ReplayLog, ReplayQueue};
use super::setcat::SetCatalogBuilder;
use super::source::{open_source_file, SourceEntry, WalkItem, WalkOptions, Walker};
use super::span::CartridgeSupply;
use super::volume::{hostname, map_tape, write_label, TapeMap};
use super::{Error, Result};
use crate::catalog::record::WriteDone;
use crate::catalog::{Catalog, WriterInfo};

/// Catalog entries go to the recorder in batches (one handoff per batch);
/// at most this many batches wait.
const CATALOG_BATCH: usize = 128;
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
    /// The rescue kit of cartridges whose label this write (re)writes.
    pub rescue_kit: super::rescue::KitChoice,
    /// Gather the system manifest and store it as the session's first
    /// entry (FORMAT.md §7.6), for a bare-metal restore.
    pub system_manifest: bool,
    /// The job that writes, its level, and its base session.
    pub job: Option<crate::format::meta::JobRun>,
    /// For an incremental or differential: which files are unchanged since
    /// the base (they become `Unchanged` entries, FORMAT.md §7.7).
    pub baseline: Option<Baseline>,
}

/// Says whether a file is unchanged since an incremental's base, and its
/// BLAKE3 there; a job also notes what it saw of every file here, for its
/// next run. Called from the producer thread, once per regular file.
pub type UnchangedCheck = dyn FnMut(&SourceEntry) -> Option<[u8; 32]> + Send;

#[derive(Clone)]
pub struct Baseline(pub std::sync::Arc<std::sync::Mutex<Box<UnchangedCheck>>>);

impl Baseline {
    pub fn new(check: Box<UnchangedCheck>) -> Self {
        Baseline(std::sync::Arc::new(std::sync::Mutex::new(check)))
    }
    fn unchanged(&self, e: &SourceEntry) -> Option<[u8; 32]> {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(e)
    }
}

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Baseline")
    }
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
            rescue_kit: Default::default(),
            system_manifest: false,
            job: None,
            baseline: None,
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
    /// The cartridges the session was written on, in order.
    pub parts: Vec<PartSummary>,
}

pub(super) enum ToDrive {
    Block(Vec<u8>),
    Filemark {
        immediate: bool,
    },
    Flush,
    /// The cartridge is finished (or its drive failed): load the next one
    /// of the set.
    NextCartridge,
    /// The job is done: say whether everything sent is on the medium.
    Confirm,
}

/// The drive a job writes with: one cartridge, or a drive whose cartridge
/// is changed when it fills.
enum DriveSlot<'a> {
    Fixed(&'a mut dyn TapeDrive),
    Changing {
        drive: Option<Box<dyn TapeDrive>>,
        supply: &'a mut dyn CartridgeSupply,
    },
}

impl DriveSlot<'_> {
    fn drive(&mut self) -> &mut dyn TapeDrive {
        match self {
            DriveSlot::Fixed(d) => &mut **d,
            DriveSlot::Changing { drive, .. } => drive.as_deref_mut().expect("a drive is loaded"),
        }
    }
}

/// One cartridge's share of a session, for the summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartSummary {
    pub cartridge: String,
    pub volume_seq: u32,
    pub session: u32,
    pub data_tape_file: u32,
    pub entries: u64,
    /// The part ends because the cartridge filled; the session goes on.
    pub continues: bool,
    /// Entries in the set catalog copy after this part, and whether it is
    /// a delta on the cartridge's previous copy (FORMAT.md §13).
    pub set_catalog_entries: u64,
    pub set_catalog_delta: bool,
    /// The drive failed under this part: what it reported. The part keeps
    /// only what was durable; the rest was written again on the next one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
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
/// If the cartridge fills, the session is closed cleanly there and the job
/// fails saying so (no other cartridge can be loaded).
pub fn write_session(
    drive: &mut dyn TapeDrive,
    opts: &WriteOptions,
    progress: &WriteProgress,
) -> Result<WriteSummary> {
    write_job(DriveSlot::Fixed(drive), opts, progress)
}

/// Write one session, continuing on cartridges from `supply` whenever one
/// fills (FORMAT.md §12).
pub fn write_session_spanning(
    drive: Box<dyn TapeDrive>,
    supply: &mut dyn CartridgeSupply,
    opts: &WriteOptions,
    progress: &WriteProgress,
) -> Result<WriteSummary> {
    write_job(
        DriveSlot::Changing {
            drive: Some(drive),
            supply,
        },
        opts,
        progress,
    )
}

fn write_job(
    mut slot: DriveSlot<'_>,
    opts: &WriteOptions,
    progress: &WriteProgress,
) -> Result<WriteSummary> {
    let started = Instant::now();
    let drive = slot.drive();
    let status = drive.status()?;
    if status.write_protected {
        return Err(crate::device::DeviceError::WriteProtected {
            device: drive.name().to_string(),
        }
        .into());
    }
    let mut map = map_tape(drive)?;
    refuse_if_catalogued_unusable(drive.name(), &map.label, opts)?;
    let new_set = prepare_set(drive, &mut map, opts)?;
    let membership = map.label.set.clone().expect("set prepared");
    let session = map.next_session();
    let SetCatalogSoFar {
        builder: mut set_catalog,
        warnings: set_catalog_warnings,
        delta: set_catalog_delta,
    } = set_catalog_so_far(drive, &map)?;
    // Memory stays bounded by the buffer size whatever the number of files.
    set_catalog.set_run_bytes(opts.buffer_bytes / 4);
    // A cartridge the set continued from is full: appending to it would
    // start a second chain of volumes after it.
    let volume_seq = membership.volume_seq;
    let full = set_catalog
        .volumes()
        .iter()
        .any(|v| v.volume_uuid == map.label.volume_uuid && v.full)
        || set_catalog
            .sessions()
            .iter()
            .any(|s| s.volume_seq == volume_seq && s.status == SESSION_CONTINUES);
    if full {
        return Err(Error::Refused(format!(
            "{}: cartridge {} is full: it is volume {volume_seq} of set \"{}\" and the set continues on volume {}; load the set's last cartridge to append to the set",
            drive.name(),
            map.label.label,
            membership.set_name,
            volume_seq + 1
        )));
    }
    // A crash while the label and rescue kit were being rewritten leaves
    // them cut short, with nothing after: they are written again.
    let label_cut_short = !new_set
        && map.sessions.is_empty()
        && map.unknown_files.is_empty()
        && map.closed_files < super::volume::FIRST_SESSION_FILE;
    if label_cut_short {
        write_label(drive, &mut map.label, &opts.rescue_kit, true)?;
    }
    let data_file = if new_set || label_cut_short {
        super::volume::FIRST_SESSION_FILE
    } else {
        position_for_append(drive, &map)?
    };

    let block_size = map.label.block_size as usize;
    let n_buffers = (opts.buffer_bytes / block_size).max(4);
    progress.buffers_total.store(n_buffers, Ordering::Relaxed);
    // The producer always holds one buffer while it fills it. A medium
    // that does not stream is written from the first block.
    let start_blocks = if drive.streams() {
        ((n_buffers - 1) * opts.start_fill_percent.min(100) as usize / 100).max(1)
    } else {
        1
    };
    let (to_drive, from_producer) = sync_channel::<ToDrive>(n_buffers);
    let pool = BufferPool::new(n_buffers, block_size);

    let start = session_start(opts, &membership, session, map.label.block_size);
    let manifest = opts
        .system_manifest
        .then(super::manifest::manifest_entry)
        .transpose()?;
    let room = drive.room_before_early_warning();
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
    let catalog_open = catalog.is_some();
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
    let early_warning_volume = AtomicU32::new(0);
    let cartridge_failed = AtomicBool::new(false);
    let (news, drive_news) = sync_channel::<DriveNews>(1);
    let ctx = ProducerContext {
        opts,
        compress_workers: workers,
        start: start.clone(),
        to_catalog: recorder.is_some().then_some(to_catalog),
        label: map.label.clone(),
        data_file,
        progress,
        set_catalog,
        set_catalog_delta,
        room,
        early_warning_volume: &early_warning_volume,
        cartridge_failed: &cartridge_failed,
        drive_news,
    };
    let slot_for_writer = &mut slot;
    let first_label = map.label.clone();
    let early_warning_volume = &early_warning_volume;
    let cartridge_failed = &cartridge_failed;
    let (produced, drove, spooled, recorded) = std::thread::scope(|scope| {
        let pool = &pool;
        // The buffers filled before the drive starts are mapped beside the
        // producer, not by it (the drive writer is idle until then).
        scope.spawn(move || pool.prefault(start_blocks + 1));
        // Walking (lstat, xattrs, inode flags, opening) runs beside reading
        // and hashing; the bounded queue also bounds open descriptors.
        // Items travel in batches: one thread handoff per batch, not per file.
        let (to_producer, walked) = sync_channel::<Vec<WalkItem>>(WALK_QUEUE_BATCHES);
        let sources = &opts.sources;
        let walk = opts.walk.clone();
        let walker = scope.spawn(move || {
            let mut batch = Vec::with_capacity(WALK_BATCH);
            let walked = Walker::new(sources.iter(), walk);
            for item in super::manifest::manifest_first(manifest, walked) {
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
                    r.add_owned(e)?;
                }
                r.flush()
            })
        });
        let producer = scope.spawn(move || produce(ctx, walked, compress_jobs, to_next, pool));
        let writer = scope.spawn(move || {
            let r = drive_writer(
                slot_for_writer,
                DriveWriterLinks {
                    label: first_label,
                    early_warning_volume,
                    cartridge_failed,
                    news,
                    rescue_kit: &opts.rescue_kit,
                },
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
    let drive_streaming = slot.drive().streaming_stats();
    let spool = spooled?;
    let mut produced = produced?;
    let spanned = produced.parts.len() > 1;

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
            // Parts on several cartridges are recorded from their spills below.
            _ if spanned => r.abort(),
            (_, Some(end)) => r.commit(end, &done),
            (_, None) => Ok(()),
        };
        if let Err(e) = committed {
            catalog_warnings.push(format!(
                "{e}; this session is not catalogued: run `tapir catalog import` with the cartridge loaded"
            ));
        }
    }
    if spanned && catalog_open {
        // A connection of its own: the first is still held by the recorder.
        let recorded = opts
            .catalog
            .as_deref()
            .map(Catalog::open)
            .transpose()
            .and_then(|c| c.map_or(Ok(()), |mut c| record_parts(&mut c, &mut produced.parts)));
        {
            if let Err(e) = recorded {
                catalog_warnings.push(format!(
                    "{e}; this session is not catalogued: run `tapir catalog import` on each of its cartridges"
                ));
            }
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    let mut warnings = set_catalog_warnings;
    warnings.extend(produced.warnings);
    warnings.extend(catalog_warnings);
    if drove.early_warning && !spanned {
        warnings.push(format!(
            "{}: the cartridge reached early warning; it is nearly full",
            map.label.label
        ));
    }
    let parts: Vec<PartSummary> = produced
        .parts
        .iter()
        .map(|p| PartSummary {
            cartridge: p.label.label.clone(),
            volume_seq: p.label.set.as_ref().map_or(0, |m| m.volume_seq),
            session: p.start.session,
            data_tape_file: p.data_file,
            entries: p.end.entries,
            continues: p.end.status == SESSION_CONTINUES,
            set_catalog_entries: p.set_catalog_entries,
            set_catalog_delta: p.set_catalog_delta,
            write_error: p.failure.clone(),
        })
        .collect();
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
        parts,
    })
}

/// A cartridge the host catalog marks damaged (a drive failed while
/// writing it, FORMAT.md §12.5) or retired takes no new session. The tape
/// alone cannot say so: its last part just looks interrupted.
fn refuse_if_catalogued_unusable(
    device: &str,
    label: &VolumeLabel,
    opts: &WriteOptions,
) -> Result<()> {
    let Some(path) = &opts.catalog else {
        return Ok(());
    };
    // An unreadable catalog is reported later, as a warning.
    let Ok(cat) = Catalog::open(path) else {
        return Ok(());
    };
    let uuid = crate::format::label::uuid_text(&label.volume_uuid);
    match cat.media_info(&uuid) {
        Ok(m) if m.brief.state == "damaged" || m.brief.state == "retired" => {
            Err(Error::Refused(format!(
                "{device}: cartridge {} is {} in the host catalog ({}); not writing to it. Load another cartridge of the set",
                label.label,
                m.brief.state,
                m.state_note.as_deref().unwrap_or("no reason recorded")
            )))
        }
        _ => Ok(()),
    }
}

/// Record every part of a spanning session in the host catalog, now that
/// all of them are on tape.
fn record_parts(cat: &mut Catalog, parts: &mut [PartDone]) -> crate::catalog::Result<()> {
    use crate::catalog::ingest::{CartridgeRecord, Origin, SessionRecord};
    for part in parts.iter_mut() {
        cat.merge_cartridge(&CartridgeRecord::from_label(&part.label))?;
        // A part whose cartridge failed has no end and no catalog on tape.
        let failed = part.failure.is_some();
        let rec = SessionRecord {
            uuid: part.start.session_uuid,
            number: part.start.session,
            data_tape_file: part.data_file,
            catalog_tape_file: (!failed).then_some(part.data_file + 1),
            host: Some(part.start.host.clone()),
            started: Some(part.start.started),
            sources: part.start.sources.iter().map(|b| b.to_vec()).collect(),
            tapir_version: Some(part.start.tapir_version.clone()),
            end: (!failed).then(|| part.end.clone()),
            complete: !failed,
            origin: Origin::Catalog,
            lost_blocks: 0,
            job: part.start.job.clone(),
            continues: part
                .start
                .continues
                .as_ref()
                .map(|c| c.previous_session_uuid),
        };
        let count = part.count();
        let entries = part
            .entries()
            .map_err(|e| crate::catalog::Error::Invalid(e.to_string()))?;
        cat.merge_session_stream(&part.label.volume_uuid, &rec, count, entries)?;
        let uuid = crate::format::label::uuid_text(&part.label.volume_uuid);
        if let Some(error) = &part.failure {
            cat.set_media_state(
                &uuid,
                crate::catalog::query::MediaState::Damaged,
                Some(&format!("writing failed: {error}")),
            )?;
        } else if part.end.status == SESSION_CONTINUES {
            cat.set_media_state(
                &uuid,
                crate::catalog::query::MediaState::Full,
                Some("filled; the set continues on the next volume"),
            )?;
        }
    }
    cat.wait_for_checkpoint();
    Ok(())
}

/// The set catalog as it stands before this session: the last copy on the
/// cartridge, plus the sessions written after it (whose copy is missing:
/// a crash, or an older tapir), from their catalogs or by scanning them.
fn set_catalog_so_far(drive: &mut dyn TapeDrive, map: &TapeMap) -> Result<SetCatalogSoFar> {
    let mut warnings = Vec::new();
    let membership = map.label.set.as_ref().expect("set prepared");
    let fresh = || SetCatalogBuilder::new(membership.set_uuid, membership.set_name.clone());
    // The newest copy that reads intact (a copy cut short by a crash, or
    // damaged, is passed over); the sessions after it are added from
    // their own catalogs or by scanning them.
    let mut delta = None;
    let (mut builder, after) = match super::setcat::newest_set_catalog(drive, map)? {
        Some(n) if n.intact => {
            let depth = n.copy.header.base.as_ref().map_or(0, |b| b.depth) + 1;
            delta = n.copy.end_digest.map(|digest| {
                let since = n.copy.builder.next_session_index();
                let base = CopyBase {
                    tape_file: n.tape_file,
                    session: n.session,
                    digest,
                    depth,
                };
                (since, base)
            });
            (n.copy.builder, n.session)
        }
        _ => {
            if membership.volume_seq > 1 {
                warnings.push(format!(
                    "{}: no intact set catalog copy on cartridge {}: the new copy covers this cartridge's sessions only",
                    drive.name(),
                    map.label.label
                ));
            }
            (fresh()?, 0)
        }
    };
    for s in map.sessions.iter().filter(|s| s.number > after) {
        // The cartridge is mapped already: only the session is read.
        let listed = &super::list::session_entries(drive, &map.label, s)?;
        let start = listed.session.start.as_ref();
        let index = builder.add_session(SessionInfo {
            index: 0,
            session_uuid: start.map_or_else(
                || crate::catalog::ingest::synthetic_session_uuid(&map.label.volume_uuid, s.number),
                |st| st.session_uuid,
            ),
            volume_seq: membership.volume_seq,
            session: s.number,
            data_tape_file: s.data_file,
            started: start.map(|st| st.started).unwrap_or_default(),
            ended: listed.summary.as_ref().map(|e| e.ended),
            status: listed.summary.as_ref().map_or(SESSION_NO_END, |e| e.status),
            entries: listed.entries.len() as u64,
            continues: None,
            host: start.map(|st| st.host.clone()).unwrap_or_default(),
            job: start.and_then(|st| st.job.clone()),
        });
        // A continuation part rebuilt here keeps its link to the part before.
        let before = start.and_then(|st| st.continues.as_ref()).and_then(|l| {
            builder
                .sessions()
                .iter()
                .find(|x| x.session_uuid == l.previous_session_uuid)
                .map(|x| x.index)
        });
        if let Some(info) = builder.session_mut(index) {
            info.continues = before;
        }
        for e in &listed.entries {
            builder.add_entry(index, e)?;
        }
    }
    builder.upsert_volume(VolumeInfo {
        location: Some("in the drive".into()),
        location_at: Some(Timestamp::now()),
        ..VolumeInfo::of_label(&map.label)
    });
    Ok(SetCatalogSoFar {
        builder,
        warnings,
        // Only a delta on a copy that held every session before this one.
        delta: delta.filter(|(_, b)| b.depth <= MAX_WRITTEN_DELTA_DEPTH),
    })
}

/// Deltas in a row before the next copy is whole again: a reader then
/// reads at most this many copies besides a whole one.
const MAX_WRITTEN_DELTA_DEPTH: u32 = 8;

/// The set catalog before this session, and what a delta copy may extend.
struct SetCatalogSoFar {
    builder: SetCatalogBuilder,
    warnings: Vec<String>,
    /// The first new session part's index, and the copy a delta extends.
    delta: Option<(u32, CopyBase)>,
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
        job: opts.job.clone(),
        excludes: Some(
            opts.walk
                .excludes
                .iter()
                .map(|p| p.as_bytes().to_vec().into())
                .collect(),
        ),
        contents_excluded: Some(
            opts.walk
                .contents_excluded
                .iter()
                .map(|p| {
                    std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())
                        .to_vec()
                        .into()
                })
                .collect(),
        ),
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
    // first checkpoint or final filemark makes the new label durable with
    // it (a synchronous filemark here would cost a stop of the drive); a
    // power loss before that may leave the cartridge blank, to be labelled
    // again, with nothing lost.
    write_label(drive, &mut map.label, &opts.rescue_kit, false)?;
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
/// What the drive writer shares with the rest of the job.
struct DriveWriterLinks<'a> {
    /// The loaded cartridge's label.
    label: VolumeLabel,
    early_warning_volume: &'a AtomicU32,
    /// Raised when the drive reported trouble with data it had accepted
    /// and the writer is waiting for the producer to move on.
    cartridge_failed: &'a AtomicBool,
    news: SyncSender<DriveNews>,
    rescue_kit: &'a super::rescue::KitChoice,
}

/// What the drive writer answers at `NextCartridge` and `Confirm`.
pub(super) enum DriveNews {
    /// The next cartridge is loaded (after a full or a failed one).
    Ready(Box<CartridgeReady>),
    /// Everything sent is on the medium.
    Confirmed,
}

/// A cartridge whose drive reported trouble with data it had accepted
/// (FORMAT.md §12.5).
pub(super) struct FailedCartridge {
    label: String,
    error: String,
    /// The drive's error, which ends the job if no other cartridge comes.
    cause: Error,
    /// Checkpoint flushes of this cartridge's part that the drive completed.
    durable_checkpoints: usize,
}

/// Errors after which what the drive had accepted may be lost, and the
/// session can go on, rewritten from its last durable point, on another
/// cartridge.
fn lost_accepted_data(e: &Error) -> bool {
    use crate::device::DeviceError;
    matches!(
        e,
        Error::Device(
            DeviceError::DeferredError { .. }
                | DeviceError::UnitAttention { .. }
                | DeviceError::MediumError { .. }
        )
    )
}

fn drive_writer(
    slot: &mut DriveSlot<'_>,
    mut links: DriveWriterLinks<'_>,
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
    // Set while the cartridge has failed and the producer has not yet moved on.
    let mut failed: Option<FailedCartridge> = None;
    let mut durable_flushes = 0usize;
    let changing = matches!(slot, DriveSlot::Changing { .. });
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
                if failed.is_some() {
                    pool.give(buf);
                    continue;
                }
                st.fill_samples += 1;
                st.fill_sum += in_flight as u64;
                match slot.drive().write_block(&buf) {
                    Ok(outcome) => {
                        if outcome == WriteOutcome::EarlyWarning {
                            st.early_warning = true;
                            let volume = links.label.set.as_ref().map_or(0, |m| m.volume_seq);
                            links.early_warning_volume.store(volume, Ordering::Relaxed);
                        }
                        streaming = true;
                        st.blocks += 1;
                        st.bytes += buf.len() as u64;
                        progress
                            .bytes_written
                            .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed = Some(go_on_after(e.into(), changing, &links, durable_flushes)?)
                    }
                }
                pool.give(buf);
            }
            ToDrive::Filemark { immediate } => {
                if failed.is_none() {
                    if let Err(e) = slot.drive().write_filemarks(1, immediate) {
                        failed = Some(go_on_after(e.into(), changing, &links, durable_flushes)?);
                    }
                }
                // A synchronous filemark stops the tape: not the buffer's fault.
                streaming &= immediate;
            }
            ToDrive::Flush => {
                if failed.is_none() {
                    match slot.drive().flush() {
                        Ok(()) => durable_flushes += 1,
                        Err(e) => {
                            failed = Some(go_on_after(e.into(), changing, &links, durable_flushes)?)
                        }
                    }
                }
                streaming = false;
            }
            ToDrive::Confirm if failed.is_none() => {
                links
                    .news
                    .send(DriveNews::Confirmed)
                    .map_err(|_| Error::Panic("the producer stopped".into()))?;
            }
            ToDrive::NextCartridge | ToDrive::Confirm => {
                let ready = match (
                    next_cartridge(slot, &links.label, links.rescue_kit),
                    failed.take(),
                ) {
                    (Ok(mut r), f) => {
                        r.failed = f;
                        r
                    }
                    (Err(e), None) => return Err(e),
                    // The drive's error is what happened; say why it ends the job.
                    (Err(e), Some(f)) => {
                        tracing::warn!("the session cannot go on on another cartridge: {e}");
                        return Err(f.cause);
                    }
                };
                links.cartridge_failed.store(false, Ordering::Relaxed);
                durable_flushes = 0;
                links.label = ready.label.clone();
                streaming = false;
                links
                    .news
                    .send(DriveNews::Ready(Box::new(ready)))
                    .map_err(|_| Error::Panic("the producer stopped".into()))?;
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

/// A failure the job can go on from (another cartridge can be loaded and
/// the drive may have lost what it had accepted): stop writing to this
/// cartridge and wait for the producer, who rewrites from the last durable
/// point on the next one. Anything else ends the job.
fn go_on_after(
    e: Error,
    changing: bool,
    links: &DriveWriterLinks<'_>,
    durable_checkpoints: usize,
) -> Result<FailedCartridge> {
    if !changing || !lost_accepted_data(&e) {
        return Err(e);
    }
    tracing::warn!("{e}; continuing the session on the next cartridge");
    links.cartridge_failed.store(true, Ordering::Relaxed);
    Ok(FailedCartridge {
        label: links.label.label.clone(),
        error: e.to_string(),
        cause: e,
        durable_checkpoints,
    })
}

/// The full cartridge (finished, durable) goes; the next one comes.
fn next_cartridge(
    slot: &mut DriveSlot<'_>,
    full: &VolumeLabel,
    rescue_kit: &super::rescue::KitChoice,
) -> Result<CartridgeReady> {
    let membership = full.set.clone().expect("a set cartridge");
    let DriveSlot::Changing { drive, supply } = slot else {
        return Err(Error::Refused(format!(
            "{}: cartridge {} is full; its session was closed there and is complete and \
             restorable (volume {} of set \"{}\"). Write the rest with a library (vtape:DIR or \
             a changer) so tapir can load the next cartridge, or as a new session on another cartridge",
            slot.drive().name(),
            full.label,
            membership.volume_seq,
            membership.set_name
        )));
    };
    let current = drive.take().expect("a drive is loaded");
    let c = super::span::load_continuation(
        &mut **supply,
        current,
        &membership,
        &full.pool,
        full.block_size,
        full.volume_uuid,
        rescue_kit,
    )?;
    let previous_whereabouts = supply.whereabouts(&full.label);
    let mut d = c.drive;
    let room = d.room_before_early_warning();
    *drive = Some(d);
    Ok(CartridgeReady {
        label: c.label,
        room,
        previous_whereabouts,
        refused: c.refused,
        failed: None,
    })
}

struct ProducerContext<'a> {
    opts: &'a WriteOptions,
    /// Compression worker threads (0: no compression).
    compress_workers: usize,
    start: SessionStart,
    /// Each entry's catalog record, for the host catalog (if recording).
    to_catalog: Option<SyncSender<Vec<CatalogEntry>>>,
    label: VolumeLabel,
    data_file: u32,
    progress: &'a WriteProgress,
    /// The set catalog so far (everything before this session).
    set_catalog: SetCatalogBuilder,
    /// What a delta copy at the end of this session may extend (the
    /// cartridge's last copy): from which session index, on which copy.
    set_catalog_delta: Option<(u32, CopyBase)>,
    /// Data bytes that fit on the first cartridge before early warning.
    room: Option<u64>,
    /// Volume sequence number at which the drive writer last saw early warning.
    early_warning_volume: &'a AtomicU32,
    /// Raised by the drive writer when the cartridge failed (§12.5).
    cartridge_failed: &'a AtomicBool,
    /// The drive writer's answers: new cartridges, and the final confirmation.
    drive_news: Receiver<DriveNews>,
}

/// One cartridge's part of the session, finished and on its way to tape.
pub(super) struct PartDone {
    pub label: VolumeLabel,
    pub start: SessionStart,
    pub end: SessionEnd,
    pub data_file: u32,
    spill: CatalogSpill,
    pub set_catalog_entries: u64,
    pub set_catalog_delta: bool,
    /// The drive failed under this part (FORMAT.md §12.5): it has no
    /// `SessionEnd` on tape, and lists only what was durable.
    pub failure: Option<String>,
    /// Kept until the drive confirms the part is on the medium.
    unconfirmed: Option<Unconfirmed>,
}

/// What a part needs to be rolled back and written again, kept until the
/// drive confirms it is on the medium.
struct Unconfirmed {
    replay: ReplayLog,
    marks: Vec<Mark>,
    set_index: u32,
}

/// Where a part stood at a point it may be rolled back to: its start, or
/// a checkpoint whose flush the drive completes (FORMAT.md §12.5).
#[derive(Debug, Clone)]
struct Mark {
    replay_at: u64,
    spill: SpillMark,
    set_seq: u64,
    part_entries: u64,
    part_stored: u64,
    entries: u64,
    files: u64,
    dirs: u64,
    bytes_stored: u64,
    warnings: usize,
}

/// What became of an entry the producer was given.
enum ItemOutcome {
    Done,
    /// Its cartridge failed before it was finished; `logged`: it is in the
    /// failed part's rewrite log, so it is written again from there.
    Abandoned {
        logged: bool,
    },
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
    /// Every cartridge's part, in order (one unless the job spanned).
    parts: Vec<PartDone>,
}

/// What the drive writer tells the producer after loading the next cartridge.
pub(super) struct CartridgeReady {
    label: VolumeLabel,
    room: Option<u64>,
    /// Where the full cartridge went.
    previous_whereabouts: Option<String>,
    refused: Vec<String>,
    /// The previous cartridge failed rather than filled.
    failed: Option<FailedCartridge>,
}

/// Sends sealed blocks to the drive and takes empty ones from the pool.
struct BlockChannel<'p> {
    tx: SyncSender<ToDrive>,
    pool: &'p BufferPool,
    /// Bytes sent for the current cartridge.
    cartridge_bytes: std::cell::Cell<u64>,
}

impl BlockChannel<'_> {
    fn send(&self, msg: ToDrive) -> Result<()> {
        if let ToDrive::Block(b) = &msg {
            self.cartridge_bytes
                .set(self.cartridge_bytes.get() + b.len() as u64);
        }
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

/// Catalog entries wait in memory up to a limit, then in a temporary file,
/// so memory stays bounded whatever the number of files. Either way the
/// records are `[len u32 LE][body]`, back to back.
struct CatalogSpill {
    /// The records while they fit in `mem_limit` (and no file was started).
    mem: Vec<u8>,
    mem_limit: usize,
    out: Option<BufWriter<File>>,
    count: u64,
    /// Record bytes the entries take in a catalog stream.
    bytes: u64,
    /// Bytes of the records.
    len: u64,
}

/// How far a spill had got, to cut it back there.
#[derive(Debug, Clone, Copy)]
struct SpillMark {
    count: u64,
    bytes: u64,
    len: u64,
}

impl CatalogSpill {
    fn new(mem_limit: usize) -> Self {
        CatalogSpill {
            mem: Vec::new(),
            mem_limit,
            out: None,
            count: 0,
            bytes: 0,
            len: 0,
        }
    }
    fn mark(&self) -> SpillMark {
        SpillMark {
            count: self.count,
            bytes: self.bytes,
            len: self.len,
        }
    }
    /// Move the records to a temporary file (memory past the limit, or a
    /// part that is kept while the session goes on elsewhere).
    fn move_to_disk(&mut self) -> Result<&mut BufWriter<File>> {
        if self.out.is_none() {
            let f = tempfile::tempfile()
                .map_err(|e| Error::io("creating the catalog spill file", e))?;
            let mut out = BufWriter::new(f);
            out.write_all(&self.mem)
                .map_err(|e| Error::io("writing the catalog spill file", e))?;
            self.mem = Vec::new();
            self.out = Some(out);
        }
        Ok(self.out.as_mut().expect("just made"))
    }
    /// Forget the entries pushed after `m`.
    fn truncate(&mut self, m: SpillMark) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let cut = |e| Error::io("cutting back the catalog spill file", e);
        match &mut self.out {
            None => self.mem.truncate(m.len as usize),
            Some(out) => {
                out.flush().map_err(cut)?;
                out.get_ref().set_len(m.len).map_err(cut)?;
                out.get_mut().seek(SeekFrom::Start(m.len)).map_err(cut)?;
            }
        }
        self.count = m.count;
        self.bytes = m.bytes;
        self.len = m.len;
        Ok(())
    }
    fn push_encoded(&mut self, body: &[u8]) -> Result<()> {
        let len = (body.len() as u32).to_le_bytes();
        if self.out.is_none() && self.mem.len() + 4 + body.len() <= self.mem_limit {
            self.mem.extend_from_slice(&len);
            self.mem.extend_from_slice(body);
        } else {
            let out = self.move_to_disk()?;
            out.write_all(&len)
                .and_then(|_| out.write_all(body))
                .map_err(|e| Error::io("writing the catalog spill file", e))?;
        }
        self.count += 1;
        self.bytes += body.len() as u64 + crate::format::record::RECORD_HEADER_LEN as u64;
        self.len += 4 + body.len() as u64;
        Ok(())
    }
    /// Read every entry body back, in order (the spill stays usable).
    fn for_each_body(&mut self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let Some(out) = &mut self.out else {
            let mut rest = &self.mem[..];
            while let Some((body, next)) = next_spilled(rest) {
                f(body)?;
                rest = next;
            }
            return Ok(());
        };
        out.flush()
            .map_err(|e| Error::io("flushing the catalog spill file", e))?;
        let mut reader = SpillReader::new(out.get_ref(), self.count);
        while let Some(body) = reader
            .next_body()
            .map_err(|e| Error::io("reading the catalog spill file", e))?
        {
            f(body)?;
        }
        Ok(())
    }
}

/// The first `[len][body]` record of `records` and the rest; None at the end.
fn next_spilled(records: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(records.get(..4)?.try_into().ok()?) as usize;
    let body = records.get(4..4 + len)?;
    Some((body, &records[4 + len..]))
}

/// Catalog records a part keeps in memory before its spill goes to a file:
/// a sixteenth of the block buffer, at most 16 MiB (about 100,000 files).
fn spill_memory(buffer_bytes: usize) -> usize {
    (buffer_bytes / 16).min(16 << 20)
}

/// Reads a spill file's `[len u32 LE][body]` records back in large
/// positional reads (not two system calls per entry), without moving the
/// file's offset, so the spill stays usable for appending.
struct SpillReader<F> {
    file: F,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    /// Next unread byte in `buf`.
    at: usize,
    left: u64,
}

/// Bytes read from a spill file at once.
const SPILL_READ_LEN: usize = 1 << 20;

impl<F: std::borrow::Borrow<File>> SpillReader<F> {
    fn new(file: F, count: u64) -> Self {
        SpillReader {
            file,
            base: 0,
            buf: Vec::new(),
            at: 0,
            left: count,
        }
    }

    /// Make `n` bytes from `at` available in `buf`.
    fn fill(&mut self, n: usize) -> std::io::Result<()> {
        if self.buf.len() - self.at >= n {
            return Ok(());
        }
        self.buf.drain(..self.at);
        self.base += self.at as u64;
        self.at = 0;
        let have = self.buf.len();
        let want = n.max(SPILL_READ_LEN);
        self.buf.resize(want, 0);
        let mut got = have;
        while got < n {
            match self
                .file
                .borrow()
                .read_at(&mut self.buf[got..], self.base + got as u64)
            {
                Ok(0) => {
                    self.buf.truncate(got);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(got);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(got);
        Ok(())
    }

    /// The next entry body, or None after the last of `count`.
    fn next_body(&mut self) -> std::io::Result<Option<&[u8]>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.fill(4)?;
        let len = u32::from_le_bytes(self.buf[self.at..self.at + 4].try_into().expect("4 bytes"));
        let len = len as usize;
        self.fill(4 + len)?;
        let start = self.at + 4;
        self.at = start + len;
        self.left -= 1;
        Ok(Some(&self.buf[start..start + len]))
    }
}

impl PartDone {
    /// The part's catalog entries, in order, streamed from the spill.
    pub fn entries(&mut self) -> Result<SpillEntries> {
        let Some(out) = &mut self.spill.out else {
            return Ok(SpillEntries(SpillSource::Memory {
                records: self.spill.mem.clone(),
                at: 0,
            }));
        };
        out.flush()
            .map_err(|e| Error::io("flushing the catalog spill file", e))?;
        let file = out
            .get_ref()
            .try_clone()
            .map_err(|e| Error::io("reopening the catalog spill file", e))?;
        Ok(SpillEntries(SpillSource::File(SpillReader::new(
            file,
            self.spill.count,
        ))))
    }
    pub fn count(&self) -> u64 {
        self.spill.count
    }
}

/// Catalog entries read back from a part's spill.
pub struct SpillEntries(SpillSource);

enum SpillSource {
    File(SpillReader<File>),
    /// The records (a copy) and the offset of the next one.
    Memory {
        records: Vec<u8>,
        at: usize,
    },
}

impl Iterator for SpillEntries {
    type Item = CatalogEntry;
    fn next(&mut self) -> Option<CatalogEntry> {
        let body = match &mut self.0 {
            SpillSource::File(reader) => reader.next_body().ok()??,
            SpillSource::Memory { records, at } => {
                let (body, rest) = next_spilled(&records[*at..])?;
                *at = records.len() - rest.len();
                body
            }
        };
        crate::format::meta::from_cbor(body).ok()
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

/// The part of the session being written to the current cartridge.
struct Part {
    framer: StreamFramer,
    spill: CatalogSpill,
    label: VolumeLabel,
    start: SessionStart,
    data_file: u32,
    /// Index of this part in the set catalog.
    set_index: u32,
    entries: u64,
    stored: u64,
    /// Data bytes that fit before early warning when the part began.
    room: Option<u64>,
    /// Something was written after `SessionStart`: only then may the part be cut.
    progressed: bool,
    /// Every entry begun in this part, to write again if the drive fails.
    replay: ReplayLog,
    /// The part's start, then each checkpoint.
    marks: Vec<Mark>,
}

/// Room kept free at the end of a cartridge beyond the estimated catalogs,
/// in blocks: the records that close the session, and block rounding.
const END_MARGIN_BLOCKS: u64 = 2;

struct Producer<'a, 'p> {
    ctx: ProducerContext<'a>,
    chan: BlockChannel<'p>,
    p: Produced,
    part: Option<Part>,
    content: ContentWriter,
    catalog_batch: Vec<CatalogEntry>,
    /// Where the entry being written starts in the current part, and the
    /// offset its content resumes from there (spanning).
    current_position: StreamPosition,
    current_continued_from: Option<u64>,
    /// Reused encoding buffers (one allocation, not one per entry).
    scratch: Vec<u8>,
    scratch_entry: Vec<u8>,
    /// Entries to write again after a cartridge failed, before the walk
    /// goes on; and the stretch a failure just produced, to queue.
    replay: ReplayQueue,
    pending_replay: Option<Replay>,
    since_checkpoint_bytes: u64,
    last_checkpoint: Instant,
    /// Files left out as unreadable: later hard links to them are left out too.
    left_out: std::collections::HashSet<Vec<u8>>,
}

impl Producer<'_, '_> {
    fn part(&mut self) -> &mut Part {
        self.part.as_mut().expect("a part is open")
    }

    fn push(&mut self, rtype: RecordType, parts: &[&[u8]]) -> Result<StreamPosition> {
        let part = self.part.as_mut().expect("a part is open");
        let chan = &self.chan;
        let progress = self.ctx.progress;
        let pos = part
            .framer
            .push_record(rtype, 0, parts, &mut |b| chan.emit(b, progress))?;
        Ok(pos)
    }

    fn seal_early(&mut self) -> Result<()> {
        let part = self.part.as_mut().expect("a part is open");
        let chan = &self.chan;
        let progress = self.ctx.progress;
        part.framer.seal_early(&mut |b| chan.emit(b, progress))
    }

    /// Open a part on the cartridge labelled `label`: its data stream
    /// starts with `start`.
    fn open_part(
        &mut self,
        label: VolumeLabel,
        start: SessionStart,
        data_file: u32,
        room: Option<u64>,
        continues: Option<u32>,
    ) -> Result<()> {
        let membership = label.set.clone().expect("a set cartridge");
        let buffer = self.chan.take()?;
        self.chan.cartridge_bytes.set(0);
        let framer = StreamFramer::new(
            StreamIdentity {
                kind: BlockKind::SessionData,
                set_uuid: membership.set_uuid,
                volume_seq: membership.volume_seq,
                tape_file: data_file,
                session: start.session,
            },
            label.block_size,
            buffer,
        );
        let set_index = self.ctx.set_catalog.add_session(SessionInfo {
            index: 0,
            session_uuid: start.session_uuid,
            volume_seq: membership.volume_seq,
            session: start.session,
            data_tape_file: data_file,
            started: start.started,
            ended: None,
            status: SESSION_NO_END,
            entries: 0,
            continues,
            host: start.host.clone(),
            job: start.job.clone(),
        });
        self.part = Some(Part {
            framer,
            spill: CatalogSpill::new(spill_memory(self.ctx.opts.buffer_bytes)),
            label,
            start: start.clone(),
            data_file,
            set_index,
            entries: 0,
            stored: 0,
            room,
            progressed: false,
            replay: ReplayLog::new()?,
            marks: Vec::new(),
        });
        let m = self.mark();
        self.part().marks.push(m);
        self.push(RecordType::SessionStart, &[&to_cbor(&start)])?;
        Ok(())
    }

    /// Where the open part stands now.
    fn mark(&self) -> Mark {
        let part = self.part.as_ref().expect("a part is open");
        Mark {
            replay_at: part.replay.len(),
            spill: part.spill.mark(),
            set_seq: self.ctx.set_catalog.next_entry_seq(),
            part_entries: part.entries,
            part_stored: part.stored,
            entries: self.p.entries,
            files: self.p.files,
            dirs: self.p.dirs,
            bytes_stored: self.p.bytes_stored,
            warnings: self.p.warnings.len(),
        }
    }

    /// Send `msg` and wait for the drive writer's answer.
    fn ask_drive(&mut self, msg: ToDrive) -> Result<DriveNews> {
        self.chan.send(msg)?;
        self.ctx
            .drive_news
            .recv()
            .map_err(|_| Error::Panic("the drive writer stopped".into()))
    }

    /// The drive has everything so far on the medium: nothing before can
    /// need writing again.
    fn confirmed(&mut self) {
        for p in &mut self.p.parts {
            p.unconfirmed = None;
        }
    }

    /// The drive failed under the open part (it raised the flag): move on
    /// to the next cartridge, and queue what must be written again.
    fn abandon_open_part(&mut self) -> Result<()> {
        let part = self.part.take().expect("a part is open");
        self.chan.pool.give(part.framer.finish());
        while let Some((_, r)) = self.content.inflight.pop_front() {
            if let Ok(c) = r.recv() {
                self.content.spare.push(c.raw);
            }
        }
        let DriveNews::Ready(ready) = self.ask_drive(ToDrive::NextCartridge)? else {
            return Err(Error::Panic(
                "the drive writer confirmed a part that was not closed".into(),
            ));
        };
        let done = PartDone {
            end: SessionEnd {
                entries: part.entries,
                stored_bytes: part.stored,
                ended: Timestamp::now(),
                warnings: self.p.warnings.len() as u64,
                status: SESSION_CONTINUES,
                skipped: self.p.skipped,
            },
            label: part.label,
            start: part.start,
            data_file: part.data_file,
            spill: part.spill,
            set_catalog_entries: 0,
            set_catalog_delta: false,
            failure: None,
            unconfirmed: Some(Unconfirmed {
                replay: part.replay,
                marks: part.marks,
                set_index: part.set_index,
            }),
        };
        self.recover(done, *ready)
    }

    /// `failed_part`'s cartridge failed and `ready` is loaded: keep of the
    /// part only what was durable, continue the session on `ready`, and
    /// leave the rest to be written again (FORMAT.md §12.5).
    fn recover(&mut self, mut failed_part: PartDone, mut ready: CartridgeReady) -> Result<()> {
        let failed = ready.failed.take().ok_or_else(|| {
            Error::Panic("the drive writer moved on without a failed cartridge".into())
        })?;
        let un = failed_part
            .unconfirmed
            .take()
            .expect("a part is kept until it is confirmed");
        let mark = un.marks[failed.durable_checkpoints.min(un.marks.len() - 1)].clone();
        failed_part.spill.truncate(mark.spill)?;
        self.ctx
            .set_catalog
            .discard_entries_from(un.set_index, mark.set_seq)?;
        self.p.entries = mark.entries;
        self.p.files = mark.files;
        self.p.dirs = mark.dirs;
        self.p.bytes_stored = mark.bytes_stored;
        self.p.warnings.truncate(mark.warnings);
        if let Some(s) = self.ctx.set_catalog.session_mut(un.set_index) {
            s.ended = None;
            s.status = SESSION_NO_END;
            s.entries = mark.part_entries;
        }
        let label = &failed_part.label;
        let known = self
            .ctx
            .set_catalog
            .volumes()
            .iter()
            .find(|v| v.volume_uuid == label.volume_uuid)
            .cloned();
        self.ctx.set_catalog.upsert_volume(VolumeInfo {
            full: true,
            write_error: Some(failed.error.clone()),
            ..known.unwrap_or_else(|| VolumeInfo::of_label(label))
        });
        self.p.warnings.push(format!(
            "cartridge {}: {}. Writing stopped there: its {} entries up to its last durable \
             checkpoint are kept, and everything after them is written again on {}",
            failed.label, failed.error, mark.part_entries, ready.label.label
        ));
        failed_part.end.entries = mark.part_entries;
        failed_part.end.stored_bytes = mark.part_stored;
        failed_part.end.status = SESSION_CONTINUES;
        failed_part.set_catalog_entries = 0;
        failed_part.set_catalog_delta = false;
        failed_part.failure = Some(failed.error);
        let previous = (
            failed_part.label.clone(),
            un.set_index,
            failed_part.start.clone(),
        );
        self.p.parts.push(failed_part);
        self.ctx.set_catalog_delta = None;
        self.pending_replay = Some(un.replay.replay_from(mark.replay_at)?);
        self.begin_next_part(previous, ready)
    }

    /// Queue what a failure left to write again, after `current` (the
    /// entry that was about to be written, if it was not logged yet).
    fn requeue(&mut self, current: Option<SourceEntry>) {
        if let Some(c) = current {
            self.replay.push_front(Replay::One(Some(Box::new(c))));
        }
        if let Some(r) = self.pending_replay.take() {
            self.replay.push_front(r);
        }
    }

    /// Must the current part end before `upcoming` more record bytes? At
    /// early warning, or when the planned room would not hold them and the
    /// catalogs that close the cartridge.
    fn must_cut(&self, upcoming: u64) -> bool {
        let Some(part) = self.part.as_ref() else {
            return false;
        };
        if !part.progressed {
            return false;
        }
        let volume = part.label.set.as_ref().map_or(0, |m| m.volume_seq);
        if self.ctx.early_warning_volume.load(Ordering::Relaxed) == volume {
            return true;
        }
        let Some(room) = part.room else {
            return false;
        };
        let bs = part.label.block_size as u64;
        let payload = bs - crate::format::BLOCK_HEADER_LEN as u64;
        let blocks = |bytes: u64| bytes.div_ceil(payload) * bs;
        let used = self.chan.cartridge_bytes.get() + bs;
        let reserve = blocks(part.spill.bytes + 4096)
            + self
                .ctx
                .set_catalog
                .estimated_tape_bytes(part.label.block_size)
            + END_MARGIN_BLOCKS * bs;
        used + blocks(upcoming) + reserve > room
    }

    /// Record a closed entry (or entry part) in the catalogs.
    fn list_entry(&mut self, listed: CatalogEntry) -> Result<()> {
        let part = self.part.as_mut().expect("a part is open");
        let mut body = std::mem::take(&mut self.scratch);
        to_cbor_into(&listed, &mut body);
        part.spill.push_encoded(&body)?;
        part.entries += 1;
        let index = part.set_index;
        self.ctx
            .set_catalog
            .add_encoded_entry(index, &listed.path, &body)?;
        self.scratch = body;
        // Live recording covers a job on one cartridge; a spanning job's
        // parts are recorded from their spills once all are on tape.
        if let Some(tx) = &self.ctx.to_catalog {
            if self.p.parts.is_empty() {
                self.catalog_batch.push(listed);
                if self.catalog_batch.len() == CATALOG_BATCH {
                    // A recorder that failed has hung up; its error is reported at the end.
                    let _ = tx.send(std::mem::replace(
                        &mut self.catalog_batch,
                        Vec::with_capacity(CATALOG_BATCH),
                    ));
                }
            }
        }
        Ok(())
    }

    /// End the current part: `SessionEnd`, the session catalog, the set
    /// catalog copy, and a synchronous filemark (everything durable).
    fn close_part(&mut self, status: u8) -> Result<SessionEnd> {
        let mut part = self.part.take().expect("a part is open");
        let summary = SessionEnd {
            entries: part.entries,
            stored_bytes: part.stored,
            ended: Timestamp::now(),
            warnings: self.p.warnings.len() as u64,
            status,
            skipped: self.p.skipped,
        };
        let chan = &self.chan;
        let progress = self.ctx.progress;
        let mut emit = |b: Vec<u8>| chan.emit(b, progress);
        part.framer
            .push_record(RecordType::SessionEnd, 0, &[&to_cbor(&summary)], &mut emit)?;
        let last = part.framer.finish();
        let fresh = emit(last)?;
        // Structure uses immediate filemarks; durability comes at the end.
        chan.send(ToDrive::Filemark { immediate: true })?;

        let membership = part.label.set.clone().expect("a set cartridge");
        let identity = |kind, tape_file| StreamIdentity {
            kind,
            set_uuid: membership.set_uuid,
            volume_seq: membership.volume_seq,
            tape_file,
            session: part.start.session,
        };
        let mut cat = StreamFramer::new(
            identity(BlockKind::SessionCatalog, part.data_file + 1),
            part.label.block_size,
            fresh,
        );
        let header = CatalogHeader {
            session_uuid: part.start.session_uuid,
            session: part.start.session,
            data_tape_file: part.data_file,
            entries: part.spill.count,
        };
        cat.push_record(
            RecordType::CatalogHeader,
            0,
            &[&to_cbor(&header)],
            &mut emit,
        )?;
        let mut digest = super::PieceHasher::new();
        part.spill.for_each_body(|body| {
            digest.update(body);
            cat.push_record(RecordType::CatalogEntry, 0, &[body], &mut emit)?;
            Ok(())
        })?;
        let end = CatalogEnd {
            entries: part.spill.count,
            digest: *digest.finalize().as_bytes(),
            summary: summary.clone(),
        };
        cat.push_record(RecordType::CatalogEnd, 0, &[&to_cbor(&end)], &mut emit)?;
        let last = cat.finish();
        let fresh = emit(last)?;
        chan.send(ToDrive::Filemark { immediate: true })?;

        // The set catalog copy: the whole set so far, this part included.
        if let Some(s) = self.ctx.set_catalog.session_mut(part.set_index) {
            s.ended = Some(summary.ended);
            s.status = status;
            s.entries = part.entries;
        }
        let known = self
            .ctx
            .set_catalog
            .volumes()
            .iter()
            .find(|v| v.volume_uuid == part.label.volume_uuid)
            .cloned();
        self.ctx.set_catalog.upsert_volume(VolumeInfo {
            full: status == SESSION_CONTINUES,
            ..known.unwrap_or_else(|| VolumeInfo::of_label(&part.label))
        });
        let mut set_framer = StreamFramer::new(
            identity(BlockKind::SetCatalog, part.data_file + 2),
            part.label.block_size,
            fresh,
        );
        // At the end of a session on the cartridge it began on: a delta on
        // the cartridge's last copy. At the end of a cartridge: whole.
        let delta = if status == SESSION_CONTINUES {
            None
        } else {
            self.ctx.set_catalog_delta.clone()
        };
        self.ctx.set_catalog.set_delta(delta.clone());
        let written = self.ctx.set_catalog.write(
            membership.volume_seq,
            part.label.block_size,
            &mut set_framer,
            &mut emit,
        );
        self.ctx.set_catalog.set_delta(None);
        let written = written?;
        let last = set_framer.finish();
        progress.buffers_in_flight.fetch_add(1, Ordering::Relaxed);
        chan.send(ToDrive::Block(last))?;
        // Synchronous: when the drive writer has done this, the part is on the medium.
        chan.send(ToDrive::Filemark { immediate: false })?;
        tracing::debug!(
            "session {} on {} produced",
            part.start.session,
            part.label.label
        );
        // A part the session goes on from waits for the whole session:
        // its records wait on disk, not in memory, however many parts there are.
        if status == SESSION_CONTINUES {
            part.spill.move_to_disk()?;
        }
        self.p.parts.push(PartDone {
            label: part.label,
            start: part.start,
            end: summary.clone(),
            data_file: part.data_file,
            spill: part.spill,
            set_catalog_entries: written.entries,
            set_catalog_delta: delta.is_some(),
            failure: None,
            unconfirmed: Some(Unconfirmed {
                replay: part.replay,
                marks: part.marks,
                set_index: part.set_index,
            }),
        });
        Ok(summary)
    }

    /// The cartridge is full: close this part (cutting `cut_entry` at
    /// `offset` if one is being written) and continue the session on the
    /// next cartridge. False: the closed part's cartridge failed instead,
    /// and what it held after its last durable point (the cut entry too)
    /// is queued to be written again.
    fn continue_on_next_cartridge(
        &mut self,
        cut_entry: Option<(&Entry, &Path, u64, u64)>,
    ) -> Result<bool> {
        if let Some((entry, _, _offset, stored_in_part)) = cut_entry {
            let end = EntryEnd {
                blake3: None,
                stored_bytes: stored_in_part,
                status: END_CONTINUES,
            };
            self.push(RecordType::EntryEnd, &[&to_cbor(&end)])?;
            let mut listed = super::list::catalog_entry_of(entry, self.current_position);
            listed.continued_from = self.current_continued_from;
            listed.status = END_CONTINUES;
            self.list_entry(listed)?;
        }
        let previous = self.part.as_ref().expect("a part is open");
        let previous = (
            previous.label.clone(),
            previous.set_index,
            previous.start.clone(),
        );
        if let Some(tx) = &self.ctx.to_catalog {
            if self.p.parts.is_empty() && !self.catalog_batch.is_empty() {
                let _ = tx.send(std::mem::take(&mut self.catalog_batch));
            }
        }
        self.close_part(SESSION_CONTINUES)?;
        // Copies on the next cartridge are whole: nothing there to extend.
        self.ctx.set_catalog_delta = None;
        let DriveNews::Ready(ready) = self.ask_drive(ToDrive::NextCartridge)? else {
            return Err(Error::Panic(
                "the drive writer did not load the next cartridge".into(),
            ));
        };
        if ready.failed.is_some() {
            let done = self.p.parts.pop().expect("the part just closed");
            self.recover(done, *ready)?;
            return Ok(false);
        }
        self.confirmed();
        self.begin_next_part(previous, *ready)?;
        if let Some((entry, abs_path, offset, _)) = cut_entry {
            let mut again = entry.clone();
            again.continued_from = Some(offset);
            let again = to_cbor(&again);
            self.part().replay.push(abs_path, &again)?;
            self.current_position = self.push(RecordType::Entry, &[&again])?;
            self.current_continued_from = Some(offset);
        }
        Ok(true)
    }

    /// Open the part that continues the session on the cartridge `ready`
    /// brought, after the part `previous` (its label, set catalog index
    /// and start).
    fn begin_next_part(
        &mut self,
        previous: (VolumeLabel, u32, SessionStart),
        ready: CartridgeReady,
    ) -> Result<()> {
        let (previous_label, previous_index, previous_start) = previous;
        let part_number = previous_start.continues.as_ref().map_or(1, |l| l.part) + 1;
        for r in &ready.refused {
            self.p
                .warnings
                .push(format!("cartridge not used to continue the set: {r}"));
        }
        if let Some(v) = self
            .ctx
            .set_catalog
            .volumes()
            .iter()
            .find(|v| v.volume_uuid == previous_label.volume_uuid)
            .cloned()
        {
            self.ctx.set_catalog.upsert_volume(VolumeInfo {
                location: ready.previous_whereabouts.clone(),
                location_at: Some(Timestamp::now()),
                ..v
            });
        }
        let membership = ready.label.set.clone().expect("labelled into the set");
        self.ctx.set_catalog.upsert_volume(VolumeInfo {
            location: Some("in the drive".into()),
            location_at: Some(Timestamp::now()),
            ..VolumeInfo::of_label(&ready.label)
        });
        let first = previous_start
            .continues
            .as_ref()
            .map_or(previous_start.session_uuid, |l| l.first_session_uuid);
        let start = SessionStart {
            session_uuid: *uuid::Uuid::new_v4().as_bytes(),
            session: 1,
            volume_seq: membership.volume_seq,
            started: Timestamp::now(),
            continues: Some(SessionLink {
                previous_session_uuid: previous_start.session_uuid,
                previous_volume_uuid: previous_label.volume_uuid,
                part: part_number,
                first_session_uuid: first,
            }),
            ..previous_start
        };
        tracing::info!(
            "continuing on {} as volume {} of set \"{}\"",
            ready.label.label,
            membership.volume_seq,
            membership.set_name
        );
        self.open_part(
            ready.label,
            start,
            super::volume::FIRST_SESSION_FILE,
            ready.room,
            Some(previous_index),
        )?;
        Ok(())
    }
}

fn produce(
    ctx: ProducerContext<'_>,
    walked: Receiver<Vec<WalkItem>>,
    compress_jobs: Option<SyncSender<CompressJob>>,
    tx: SyncSender<ToDrive>,
    pool: &BufferPool,
) -> Result<Produced> {
    let chan = BlockChannel {
        tx,
        pool,
        cartridge_bytes: std::cell::Cell::new(0),
    };
    let content = ContentWriter {
        max_inflight: ctx.compress_workers * COMPRESS_DEPTH_PER_WORKER,
        compress: compress_jobs,
        chunk: vec![0u8; DATA_CHUNK_LEN],
        inflight: VecDeque::new(),
        spare: Vec::new(),
        interrupt: ctx.opts.interrupt.clone(),
    };
    let label = ctx.label.clone();
    let start = ctx.start.clone();
    let data_file = ctx.data_file;
    let room = ctx.room;
    let mut pr = Producer {
        ctx,
        chan,
        p: Produced {
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
            parts: Vec::new(),
        },
        part: None,
        content,
        catalog_batch: Vec::with_capacity(CATALOG_BATCH),
        current_position: StreamPosition {
            tape_file: 0,
            block: 0,
            offset: 0,
        },
        current_continued_from: None,
        scratch: Vec::new(),
        scratch_entry: Vec::new(),
        replay: ReplayQueue::default(),
        pending_replay: None,
        since_checkpoint_bytes: 0,
        last_checkpoint: Instant::now(),
        left_out: std::collections::HashSet::new(),
    };
    pr.open_part(label, start, data_file, room, None)?;
    let mut walked = walked.into_iter().flatten();
    // Until the drive confirms the last part is on the medium.
    loop {
        loop {
            if pr.content.interrupted() {
                pr.p.interrupted = true;
                break;
            }
            if pr.ctx.cartridge_failed.load(Ordering::Relaxed) {
                pr.abandon_open_part()?;
                pr.requeue(None);
                continue;
            }
            let mut src = match pr.replay.next()? {
                Some(e) => e,
                None => match walked.next() {
                    None => break,
                    Some(WalkItem::Entry(e)) => e,
                    Some(WalkItem::Skipped { .. }) => {
                        pr.p.skipped += 1;
                        continue;
                    }
                    Some(WalkItem::Warning { path, message }) => {
                        tracing::warn!("{}: {message}", path.display());
                        pr.p.warnings.push(format!("{}: {message}", path.display()));
                        continue;
                    }
                },
            };
            match write_item(&mut pr, &mut src)? {
                ItemOutcome::Done => {}
                ItemOutcome::Abandoned { logged } => pr.requeue((!logged).then_some(src)),
            }
        }

        if let Some(tx) = &pr.ctx.to_catalog {
            if pr.p.parts.is_empty() && !pr.catalog_batch.is_empty() {
                let _ = tx.send(std::mem::take(&mut pr.catalog_batch));
            }
        }
        let status = if pr.p.interrupted {
            SESSION_INTERRUPTED
        } else if pr.p.warnings.is_empty() {
            SESSION_OK
        } else {
            SESSION_WITH_WARNINGS
        };
        let summary = pr.close_part(status)?;
        match pr.ask_drive(ToDrive::Confirm)? {
            DriveNews::Confirmed => {
                pr.confirmed();
                pr.p.summary = Some(summary);
                return Ok(pr.p);
            }
            DriveNews::Ready(ready) => {
                let done = pr.p.parts.pop().expect("the part just closed");
                pr.recover(done, *ready)?;
                pr.requeue(None);
            }
        }
    }
}

/// Write one walked (or rewritten) entry into the open part.
fn write_item(pr: &mut Producer<'_, '_>, src: &mut SourceEntry) -> Result<ItemOutcome> {
    let progress = pr.ctx.progress;
    // An incremental keeps only the name and metadata of a file unchanged
    // since its base: its content is there.
    let mut base_hash = None;
    if src.entry.kind == EntryKind::File.code() && src.entry.continued_from.is_none() {
        if let Some(b) = &pr.ctx.opts.baseline {
            base_hash = b.unchanged(src);
            if base_hash.is_some() {
                src.entry.kind = EntryKind::Unchanged.code();
                src.file = None;
            }
        }
    }
    let entry = &src.entry;
    let kind = entry.kind().expect("the walker makes known kinds");
    // The display shows the current file a few times a second: with many
    // small files, naming every one costs more than it shows.
    let files_done = progress.files_done.load(Ordering::Relaxed);
    if entry.size >= DATA_CHUNK_LEN as u64 || files_done.is_multiple_of(64) {
        if let Ok(mut cur) = progress.current.lock() {
            cur.clear();
            cur.push_str(&String::from_utf8_lossy(&entry.path));
        }
    }
    // Open before announcing the entry, so an unreadable file is a
    // warning rather than a damaged entry on tape.
    let file = if kind == EntryKind::File {
        match src
            .file
            .take()
            .map_or_else(|| open_source_file(&src.abs_path), Ok)
        {
            Ok(f) => Some(f),
            Err(e) => {
                let w = format!("{}: cannot read, not archived: {e}", src.abs_path.display());
                tracing::warn!("{w}");
                pr.p.warnings.push(w);
                pr.left_out.insert(entry.path.clone());
                return Ok(ItemOutcome::Done);
            }
        }
    } else {
        None
    };
    if kind == EntryKind::HardLink
        && entry
            .link_target
            .as_ref()
            .is_some_and(|t| pr.left_out.contains(t))
    {
        let w = format!(
            "{}: hard link to a file that could not be read, not archived",
            src.abs_path.display()
        );
        pr.p.warnings.push(w);
        return Ok(ItemOutcome::Done);
    }
    let mut entry_cbor = std::mem::take(&mut pr.scratch_entry);
    to_cbor_into(entry, &mut entry_cbor);
    // An entry, its catalog records and end record, and its first
    // chunk: a file is not begun on a cartridge that cannot take any of it.
    let first_chunk = if file.is_some() {
        entry.size.min(DATA_CHUNK_LEN as u64)
    } else {
        0
    };
    if pr.must_cut(2 * entry_cbor.len() as u64 + 256 + first_chunk)
        && !pr.continue_on_next_cartridge(None)?
    {
        pr.scratch_entry = entry_cbor;
        src.file = file;
        return Ok(ItemOutcome::Abandoned { logged: false });
    }
    pr.part().replay.push(&src.abs_path, &entry_cbor)?;
    pr.current_position = pr.push(RecordType::Entry, &[&entry_cbor])?;
    pr.scratch_entry = entry_cbor;
    // A continuation written again after a failed cartridge resumes where
    // the durable part of it ends.
    pr.current_continued_from = entry.continued_from;
    pr.part().progressed = true;
    let end = match &file {
        Some(f) => match write_content(f, entry, &src.abs_path, pr)? {
            Some(end) => end,
            None => return Ok(ItemOutcome::Abandoned { logged: true }),
        },
        None => EntryEnd {
            blake3: None,
            stored_bytes: 0,
            status: END_COMPLETE,
        },
    };
    if end.status == END_INTERRUPTED {
        pr.p.interrupted = true;
        pr.p.warnings.push(format!(
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
        pr.p.warnings.push(w);
    }
    let mut end_cbor = std::mem::take(&mut pr.scratch);
    to_cbor_into(&end, &mut end_cbor);
    pr.push(RecordType::EntryEnd, &[&end_cbor])?;
    pr.scratch = end_cbor;
    let mut listed = super::list::catalog_entry_of(entry, pr.current_position);
    listed.continued_from = pr.current_continued_from;
    listed.blake3 = end.blake3.or(base_hash);
    listed.status = end.status;
    pr.list_entry(listed)?;
    pr.p.entries += 1;
    match kind {
        EntryKind::File => pr.p.files += 1,
        EntryKind::Dir => pr.p.dirs += 1,
        _ => {}
    }
    progress.files_done.fetch_add(1, Ordering::Relaxed);
    pr.since_checkpoint_bytes += end.stored_bytes;
    if pr.since_checkpoint_bytes >= pr.ctx.opts.checkpoint_bytes
        // The clock is read every 64 entries, not for every small file.
        || (files_done % 64 == 63
            && pr.last_checkpoint.elapsed() >= pr.ctx.opts.checkpoint_interval)
    {
        let cp = Checkpoint {
            entries: pr.part().entries,
            bytes: pr.part().stored,
            at: Timestamp::now(),
        };
        pr.push(RecordType::Checkpoint, &[&to_cbor(&cp)])?;
        pr.seal_early()?;
        pr.chan.send(ToDrive::Flush)?;
        // Once the drive has done this flush, the part may be rolled back
        // no further than here.
        let m = pr.mark();
        pr.part().marks.push(m);
        pr.p.checkpoints += 1;
        pr.since_checkpoint_bytes = 0;
        pr.last_checkpoint = Instant::now();
    }
    Ok(ItemOutcome::Done)
}

/// Read a file's content (data extents only for sparse files), hash it with
/// holes as zeros, and frame it as `Data` records. When the cartridge fills
/// on the way, the entry is cut there and continues on the next cartridge.
/// None: the cartridge failed on the way; the entry is written again.
fn write_content(
    file: &File,
    entry: &Entry,
    abs_path: &Path,
    pr: &mut Producer<'_, '_>,
) -> Result<Option<EntryEnd>> {
    // Content before this offset is durable on an earlier cartridge: it is
    // read for the hash only.
    let resume_at = entry.continued_from.unwrap_or(0);
    let mut hasher = blake3::Hasher::new();
    let mut hashed_to = 0u64;
    // Content stored in the current part.
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
            if pr.content.interrupted() {
                status = END_INTERRUPTED;
                break 'extents;
            }
            if pr.ctx.cartridge_failed.load(Ordering::Relaxed) {
                discard_inflight(&mut pr.content);
                return Ok(None);
            }
            let want = ((end - off) as usize).min(DATA_CHUNK_LEN);
            if off >= resume_at
                && pr.must_cut((want + pr.content.inflight.len() * DATA_CHUNK_LEN) as u64 + 64)
            {
                while !pr.content.inflight.is_empty() {
                    frame_compressed(pr)?;
                }
                if !pr.continue_on_next_cartridge(Some((entry, abs_path, off, stored)))? {
                    return Ok(None);
                }
                stored = 0;
            }
            let mut buf = match pr.content.compress {
                Some(_) => pr
                    .content
                    .spare
                    .pop()
                    .unwrap_or_else(|| vec![0u8; DATA_CHUNK_LEN]),
                None => std::mem::take(&mut pr.content.chunk),
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
                give_back(&mut pr.content, buf);
                break 'extents;
            }
            buf.truncate(got);
            super::hash_zeros(&mut hasher, off - hashed_to);
            hasher.update(&buf);
            hashed_to = off + got as u64;
            pr.p.bytes_read += got as u64;
            pr.ctx
                .progress
                .bytes_read
                .fetch_add(got as u64, Ordering::Relaxed);
            let chunk_end = off + got as u64;
            let short = got < want;
            if chunk_end > resume_at {
                if off < resume_at {
                    buf.drain(..(resume_at - off) as usize);
                    off = resume_at;
                }
                stored += buf.len() as u64;
                match &pr.content.compress {
                    Some(jobs) => {
                        let (reply, result) = sync_channel(1);
                        jobs.send(CompressJob { raw: buf, reply })
                            .map_err(|_| Error::Panic("a compression worker stopped".into()))?;
                        pr.content.inflight.push_back((off, result));
                        while pr.content.inflight.len() > pr.content.max_inflight {
                            frame_compressed(pr)?;
                        }
                    }
                    None => {
                        frame_chunk(pr, off, &buf, Codec::Stored, &buf)?;
                        pr.content.chunk = buf;
                    }
                }
            } else {
                give_back(&mut pr.content, buf);
            }
            off = chunk_end;
            if short {
                status = END_SOURCE_CHANGED;
                break 'extents;
            }
        }
    }
    while !pr.content.inflight.is_empty() {
        frame_compressed(pr)?;
    }
    if status == END_COMPLETE {
        super::hash_zeros(&mut hasher, entry.size - hashed_to.min(entry.size));
    }
    Ok(Some(EntryEnd {
        blake3: Some(*hasher.finalize().as_bytes()),
        stored_bytes: stored,
        status,
    }))
}

/// Wait out the chunks sent for compression and keep their buffers.
fn discard_inflight(cw: &mut ContentWriter) {
    while let Some((_, r)) = cw.inflight.pop_front() {
        if let Ok(c) = r.recv() {
            cw.spare.push(c.raw);
        }
    }
}

fn give_back(cw: &mut ContentWriter, buf: Vec<u8>) {
    if cw.compress.is_some() {
        cw.spare.push(buf);
    } else {
        cw.chunk = buf;
    }
}

/// Frame the oldest chunk out for compression, waiting for it if needed.
fn frame_compressed(pr: &mut Producer<'_, '_>) -> Result<()> {
    let (off, result) = pr
        .content
        .inflight
        .pop_front()
        .expect("a chunk is in flight");
    let c = result
        .recv()
        .map_err(|_| Error::Panic("a compression worker stopped".into()))?;
    let body = match c.codec {
        Codec::Zstd => &c.packed[..],
        Codec::Stored => &c.raw[..],
    };
    frame_chunk(pr, off, &c.raw, c.codec, body)?;
    pr.content.spare.push(c.raw);
    Ok(())
}

fn frame_chunk(
    pr: &mut Producer<'_, '_>,
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
    pr.push(RecordType::Data, &[&prefix.encode(), body])?;
    pr.p.bytes_stored += body.len() as u64;
    let part = pr.part();
    part.stored += body.len() as u64;
    // Content is on this cartridge now: the part may be cut from here on.
    part.progressed = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(spill: &mut CatalogSpill) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        spill
            .for_each_body(|b| {
                out.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn a_catalog_spill_moves_to_a_file_past_its_memory_limit_and_cuts_back_either_way() {
        let body = |i: usize| vec![i as u8; 10 + i];
        let mut spill = CatalogSpill::new(100);
        for i in 0..3 {
            spill.push_encoded(&body(i)).unwrap();
        }
        assert!(spill.out.is_none(), "3 records fit in 100 bytes");
        let in_memory = spill.mark();
        spill.push_encoded(&body(3)).unwrap();
        spill.truncate(in_memory).unwrap();
        assert_eq!(bodies(&mut spill), (0..3).map(body).collect::<Vec<_>>());

        for i in 3..8 {
            spill.push_encoded(&body(i)).unwrap();
        }
        assert!(
            spill.out.is_some(),
            "past 100 bytes the records are in a file"
        );
        assert!(spill.mem.is_empty());
        assert_eq!(bodies(&mut spill), (0..8).map(body).collect::<Vec<_>>());
        let at_six = {
            let mut s = CatalogSpill::new(0);
            (0..6).for_each(|i| s.push_encoded(&body(i)).unwrap());
            s.mark()
        };
        spill.truncate(at_six).unwrap();
        spill.push_encoded(&body(9)).unwrap();
        let expected: Vec<_> = (0..6).chain([9]).map(body).collect();
        assert_eq!(bodies(&mut spill), expected);
        assert_eq!(spill.count, 7);
    }
}
