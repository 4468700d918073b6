//! The set catalog copy (FORMAT.md §13): every entry of a whole archive set
//! so far, with the sessions and cartridges of the set, sorted by path and
//! cut into pages, written as one tape file of kind `SetCatalog`.
//!
//! Building it takes bounded memory whatever the number of entries: entries
//! are encoded at once and collected into sorted runs of at most
//! [`RUN_BYTES`], which spill to temporary files; runs are merged k-way
//! ([`MERGE_FANIN`] at a time, in levels, so open files stay bounded too).
//! Volumes and sessions are few and stay in memory.
//!
//! Writing takes two passes over the merged run: the first decides where
//! pages end (sizes only), which fixes the block every page starts at (a
//! page starts at a block boundary and its records fill blocks completely),
//! so the page index, written before the pages, can name those blocks.
//!
//! Reading is either whole (`read_set_catalog`, to extend the copy on the
//! next cartridge) or by path (`find_in_set_catalog`: the header, inventory
//! and index, then only the pages that can hold the path).

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

use crate::device::TapeDrive;
use crate::format::block::{BlockHeader, BLOCK_HEADER_LEN};
use crate::format::meta::{from_cbor, to_cbor, CatalogEntry, StreamPosition, Timestamp};
use crate::format::record::{RecordType, MAX_RECORD_BODY, RECORD_HEADER_LEN};
use crate::format::setcat::{
    decode_page_index, encode_set_catalog_entry, path_in_subtree, CopyBase, PageIndex, PageRef,
    SessionInfo, SetCatalogEnd, SetCatalogEntry, SetCatalogHeader, VolumeInfo, PAGE_INDEX_MAX_REFS,
};
use crate::format::stream::{BlockContinuity, Record, StreamDeframer, StreamFramer};
use crate::format::{BlockKind, FormatError, MAX_BLOCK_SIZE};

use super::reader::{
    read_block_retrying, BlockRead, LostBlocks, StreamEvent, StreamExpect, StreamReader,
};
use super::{Error, Result};

/// Record bytes (record headers included) a page holds at most, rounded
/// down to whole blocks; a page ends before the entry that would take it
/// past this (an entry larger than this is a page of its own).
pub const PAGE_BYTES: u64 = 1 << 20;
/// Bytes of encoded entries the builder keeps in memory before it sorts them
/// and spills them to a temporary file as one run.
pub const RUN_BYTES: usize = 16 << 20;
/// Runs merged at once; also how many runs of one level may exist before
/// they are merged into one run of the next level.
pub const MERGE_FANIN: usize = 16;

/// Reader limits (FORMAT.md §13.8). A writer never writes more; a reader
/// refuses a header claiming more, before allocating anything.
pub const MAX_VOLUMES: u32 = 1 << 16;
pub const MAX_SESSIONS: u32 = 1 << 20;
pub const MAX_PAGES: u32 = 1 << 20;
/// Total body bytes of the `VolumeInfo` and `SessionInfo` records.
pub const MAX_INVENTORY_BYTES: u64 = 128 << 20;
/// Total body bytes of the `PageIndex` records.
pub const MAX_INDEX_BYTES: u64 = 128 << 20;

const REC: u64 = RECORD_HEADER_LEN as u64;
/// Upper bounds of encoded sizes, for `estimated_tape_bytes`.
const HEADER_BODY_MAX_FIXED: u64 = 96;
const PAGE_REF_MAX_FIXED: u64 = 24;
const PAGE_INDEX_RECORD_MAX_OVERHEAD: u64 = REC + 8;
const END_RECORD_MAX: u64 = REC + 64;

/// Buffer of each run file reader and writer, at most; smaller when the run
/// budget is small, so a merge (`MERGE_FANIN` readers and a writer) takes
/// no more memory than one run in memory does.
const RUN_IO_BUFFER: usize = 64 << 10;
/// Smallest run file buffer.
const MIN_RUN_IO_BUFFER: usize = 4 << 10;

/// The run file buffer for a run budget of `run_bytes`.
fn run_io_buffer(run_bytes: usize) -> usize {
    (run_bytes / (MERGE_FANIN + 1)).clamp(MIN_RUN_IO_BUFFER, RUN_IO_BUFFER)
}
/// Fixed part of a record in a run file: path length, body length,
/// session, sequence number.
const RUN_REC_HEADER: usize = 20;

/// The order of a set catalog (FORMAT.md §13.4) on slices, as
/// [`crate::format::setcat::path_order`], with the common prefix found by
/// slice comparisons (memcmp) rather than byte by byte.
fn fast_path_order(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    if a[..n] == b[..n] {
        return a.len().cmp(&b.len());
    }
    // a[..lo] == b[..lo], and they differ within [lo, hi).
    let (mut lo, mut hi) = (0, n);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if a[lo..mid] == b[lo..mid] {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let key = |c: u8| if c == b'/' { 0 } else { c };
    key(a[lo]).cmp(&key(b[lo]))
}

fn entry_order(a: (&[u8], u32, u64), b: (&[u8], u32, u64)) -> Ordering {
    fast_path_order(a.0, b.0)
        .then(a.1.cmp(&b.1))
        .then(a.2.cmp(&b.2))
}

fn tmp_err(e: std::io::Error) -> Error {
    Error::io("set catalog temporary file", e)
}

/// One entry as scanned, from memory or from a run.
struct RecView<'a> {
    path: &'a [u8],
    session: u32,
    body: &'a [u8],
}

/// One entry in a run: its sort key and its `SetCatalogEntry` body.
#[derive(Default)]
struct SortRec {
    path: Vec<u8>,
    session: u32,
    /// Insertion order: makes the order total and keeps equal keys stable.
    seq: u64,
    body: Vec<u8>,
}

impl SortRec {
    fn key(&self) -> (&[u8], u32, u64) {
        (&self.path, self.session, self.seq)
    }
}

fn write_run_rec(
    w: &mut impl Write,
    path: &[u8],
    session: u32,
    seq: u64,
    body: &[u8],
) -> std::io::Result<()> {
    let mut h = [0u8; RUN_REC_HEADER];
    h[0..4].copy_from_slice(&(path.len() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&session.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    w.write_all(&h)?;
    w.write_all(path)?;
    w.write_all(body)
}

/// A sorted run in an anonymous temporary file.
struct Run {
    file: File,
    records: u64,
    level: u32,
}

struct RunReader<'a> {
    rd: BufReader<&'a File>,
    left: u64,
}

impl<'a> RunReader<'a> {
    fn open(run: &'a Run, io_buffer: usize) -> std::io::Result<Self> {
        let mut f = &run.file;
        f.rewind()?;
        Ok(RunReader {
            rd: BufReader::with_capacity(io_buffer, f),
            left: run.records,
        })
    }

    /// Path length, body length, session, sequence number of the next record.
    fn header(&mut self) -> std::io::Result<Option<(usize, usize, u32, u64)>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let mut h = [0u8; RUN_REC_HEADER];
        self.rd.read_exact(&mut h)?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[12..20]);
        Ok(Some((
            u32_at(0) as usize,
            u32_at(4) as usize,
            u32_at(8),
            u64::from_le_bytes(seq),
        )))
    }

    /// Read the next record into `rec`, reusing its buffers.
    fn next(&mut self, rec: &mut SortRec) -> std::io::Result<bool> {
        let Some((pl, bl, session, seq)) = self.header()? else {
            return Ok(false);
        };
        rec.path.resize(pl, 0);
        self.rd.read_exact(&mut rec.path)?;
        rec.body.resize(bl, 0);
        self.rd.read_exact(&mut rec.body)?;
        rec.session = session;
        rec.seq = seq;
        Ok(true)
    }

    /// Read the next record's path and skip its body; returns the body
    /// length and the session index.
    fn next_path(&mut self, path: &mut Vec<u8>) -> std::io::Result<Option<(usize, u32)>> {
        let Some((pl, bl, session, _)) = self.header()? else {
            return Ok(None);
        };
        path.resize(pl, 0);
        self.rd.read_exact(path)?;
        self.rd.seek_relative(bl as i64)?;
        Ok(Some((bl, session)))
    }
}

/// A run's current record in the merge heap (a min-heap by entry order).
struct HeapItem {
    rec: SortRec,
    run: usize,
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        entry_order(other.rec.key(), self.rec.key())
    }
}

/// K-way merge of sorted runs into `sink`, in entry order.
fn merge_runs(
    runs: &[Run],
    io_buffer: usize,
    mut sink: impl FnMut(&SortRec) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut readers = runs
        .iter()
        .map(|r| RunReader::open(r, io_buffer))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut heap = BinaryHeap::with_capacity(readers.len());
    for (i, r) in readers.iter_mut().enumerate() {
        let mut rec = SortRec::default();
        if r.next(&mut rec)? {
            heap.push(HeapItem { rec, run: i });
        }
    }
    while let Some(mut item) = heap.pop() {
        sink(&item.rec)?;
        if readers[item.run].next(&mut item.rec)? {
            heap.push(item);
        }
    }
    Ok(())
}

fn new_run_writer(io_buffer: usize) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(io_buffer, tempfile::tempfile()?))
}

fn close_run_writer(w: BufWriter<File>, records: u64, level: u32) -> std::io::Result<Run> {
    let file = w.into_inner().map_err(|e| e.into_error())?;
    Ok(Run {
        file,
        records,
        level,
    })
}

fn merge_into_run(runs: &[Run], level: u32, io_buffer: usize) -> std::io::Result<Run> {
    let mut w = new_run_writer(io_buffer)?;
    let mut n = 0u64;
    merge_runs(runs, io_buffer, |r| {
        n += 1;
        write_run_rec(&mut w, &r.path, r.session, r.seq, &r.body)
    })?;
    close_run_writer(w, n, level)
}

/// An entry held in memory before its run spills: offsets into the arena.
struct MemRec {
    off: usize,
    path_len: u32,
    body_len: u32,
    session: u32,
    seq: u64,
}

/// What `SetCatalogBuilder::write` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSetCatalog {
    pub entries: u64,
    pub pages: u32,
    /// Blocks before the first page: header, inventory and page index.
    pub index_blocks: u64,
    /// `SetCatalogEnd.digest`.
    pub digest: [u8; 32],
}

/// One page as the first pass plans it.
struct PagePlan {
    first_path: Vec<u8>,
    entries: u32,
    /// Record bytes, record headers included.
    bytes: u64,
}

/// Collects the set catalog: volumes and sessions in memory, entries in
/// sorted runs on temporary files.
pub struct SetCatalogBuilder {
    set_uuid: [u8; 16],
    set_name: String,
    /// Sorted by `volume_seq`.
    volumes: Vec<VolumeInfo>,
    /// Sorted by `index`.
    sessions: Vec<SessionInfo>,
    next_session: u32,
    entries: u64,
    /// Sum of the record bytes (header + body) of all entries.
    entry_bytes: u64,
    max_path: u64,
    next_seq: u64,
    /// Encoded entries not yet spilled: path then body, back to back.
    mem: Vec<u8>,
    mem_recs: Vec<MemRec>,
    /// `mem_recs` is in entry order (sorted since the last addition).
    mem_sorted: bool,
    runs: Vec<Run>,
    run_bytes: usize,
    /// Write a delta copy: only sessions from this index on, on `CopyBase`.
    delta: Option<(u32, CopyBase)>,
    page_bytes: u64,
    /// Record bytes of the volumes and sessions, once computed.
    inventory_bytes: Cell<Option<u64>>,
    /// Runs spilled from memory so far (for tests).
    spilled_runs: u64,
}

impl std::fmt::Debug for SetCatalogBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetCatalogBuilder")
            .field("set_name", &self.set_name)
            .field("volumes", &self.volumes.len())
            .field("sessions", &self.sessions.len())
            .field("entries", &self.entries)
            .field("runs", &self.runs.len())
            .finish()
    }
}

impl SetCatalogBuilder {
    pub fn new(set_uuid: [u8; 16], set_name: String) -> Result<Self> {
        Ok(SetCatalogBuilder {
            set_uuid,
            set_name,
            volumes: Vec::new(),
            sessions: Vec::new(),
            next_session: 0,
            entries: 0,
            entry_bytes: 0,
            max_path: 0,
            next_seq: 0,
            mem: Vec::new(),
            mem_recs: Vec::new(),
            mem_sorted: true,
            runs: Vec::new(),
            run_bytes: RUN_BYTES,
            delta: None,
            page_bytes: PAGE_BYTES,
            inventory_bytes: Cell::new(None),
            spilled_runs: 0,
        })
    }

    /// The next copy written is a delta on `base`: only the entries of
    /// session parts with index `since` or later (None: a whole copy).
    pub fn set_delta(&mut self, delta: Option<(u32, CopyBase)>) {
        self.delta = delta;
    }

    /// The index the next new session part gets.
    pub fn next_session_index(&self) -> u32 {
        self.next_session
    }

    /// Take in a newer copy read from tape (a delta on what this builder
    /// holds): its entries join these, its inventory replaces this one.
    pub fn absorb(&mut self, mut newer: SetCatalogBuilder) -> Result<()> {
        newer.scan(|r| self.add_raw(r.session, r.path, r.body))?;
        for v in newer.volumes.clone() {
            self.upsert_volume(v);
        }
        for s in newer.sessions.clone() {
            self.sessions.retain(|x| x.index != s.index);
            self.next_session = self.next_session.max(s.index.saturating_add(1));
            self.sessions.push(s);
        }
        self.sessions.sort_by_key(|s| s.index);
        self.inventory_bytes.set(None);
        Ok(())
    }

    /// Hold at most about `bytes` of entries in memory before sorting and
    /// spilling them (the writer ties it to its buffer size).
    pub fn set_run_bytes(&mut self, bytes: usize) {
        self.run_bytes = bytes.clamp(64 << 10, RUN_BYTES);
    }

    pub fn set_uuid(&self) -> [u8; 16] {
        self.set_uuid
    }

    pub fn set_name(&self) -> &str {
        &self.set_name
    }

    pub fn volumes(&self) -> &[VolumeInfo] {
        &self.volumes
    }

    /// Insert or replace by volume_seq; kept sorted by volume_seq.
    pub fn upsert_volume(&mut self, v: VolumeInfo) {
        self.inventory_bytes.set(None);
        match self
            .volumes
            .binary_search_by_key(&v.volume_seq, |x| x.volume_seq)
        {
            Ok(i) => self.volumes[i] = v,
            Err(i) => self.volumes.insert(i, v),
        }
    }

    pub fn sessions(&self) -> &[SessionInfo] {
        &self.sessions
    }

    /// Add a session part; its `index` field is assigned here and returned.
    /// A session_uuid already present is replaced in place, keeping its index.
    pub fn add_session(&mut self, mut s: SessionInfo) -> u32 {
        self.inventory_bytes.set(None);
        if let Some(old) = self
            .sessions
            .iter_mut()
            .find(|x| x.session_uuid == s.session_uuid)
        {
            s.index = old.index;
            *old = s;
            return old.index;
        }
        s.index = self.next_session;
        self.next_session = self.next_session.saturating_add(1);
        let index = s.index;
        self.insert_session(s);
        index
    }

    /// Insert a session keeping its own index (a copy read back from tape);
    /// a second session with the same index is ignored.
    fn insert_session(&mut self, s: SessionInfo) -> bool {
        self.inventory_bytes.set(None);
        match self.sessions.binary_search_by_key(&s.index, |x| x.index) {
            Ok(_) => false,
            Err(i) => {
                self.next_session = self.next_session.max(s.index.saturating_add(1));
                self.sessions.insert(i, s);
                true
            }
        }
    }

    pub fn session_mut(&mut self, index: u32) -> Option<&mut SessionInfo> {
        self.inventory_bytes.set(None);
        let i = self
            .sessions
            .binary_search_by_key(&index, |x| x.index)
            .ok()?;
        Some(&mut self.sessions[i])
    }

    /// Add one entry of session part `session` (its `index`).
    pub fn add_entry(&mut self, session: u32, e: &CatalogEntry) -> Result<()> {
        if session >= MAX_SESSIONS {
            return Err(Error::Usage(format!(
                "set catalog: session index {session} is out of range"
            )));
        }
        let off = self.mem.len();
        self.mem.extend_from_slice(&e.path);
        let body_at = self.mem.len();
        encode_set_catalog_entry(session, e, &mut self.mem);
        let body_len = self.mem.len() - body_at;
        self.push_mem(off, e.path.len(), body_len, session)
    }

    /// [`Self::add_entry`] for an entry already encoded as a `CatalogEntry`
    /// (the writer encodes each once for both catalogs).
    pub fn add_encoded_entry(
        &mut self,
        session: u32,
        path: &[u8],
        entry_cbor: &[u8],
    ) -> Result<()> {
        if session >= MAX_SESSIONS {
            return Err(Error::Usage(format!(
                "set catalog: session index {session} is out of range"
            )));
        }
        let off = self.mem.len();
        self.mem.extend_from_slice(path);
        let body_at = self.mem.len();
        // SetCatalogEntry = { 0 => session, 1 => CatalogEntry }
        {
            let mut enc = minicbor::Encoder::new(&mut self.mem);
            enc.map(2)
                .and_then(|e| e.u8(0))
                .and_then(|e| e.u32(session))
                .and_then(|e| e.u8(1))
                .expect("encoding to a Vec cannot fail");
        }
        self.mem.extend_from_slice(entry_cbor);
        let body_len = self.mem.len() - body_at;
        self.push_mem(off, path.len(), body_len, session)
    }

    /// Add an entry from its `SetCatalogEntry` body as read from tape
    /// (unknown fields of a newer writer are kept).
    fn add_raw(&mut self, session: u32, path: &[u8], body: &[u8]) -> Result<()> {
        let off = self.mem.len();
        self.mem.extend_from_slice(path);
        self.mem.extend_from_slice(body);
        self.next_session = self.next_session.max(session.saturating_add(1));
        self.push_mem(off, path.len(), body.len(), session)
    }

    fn push_mem(
        &mut self,
        off: usize,
        path_len: usize,
        body_len: usize,
        session: u32,
    ) -> Result<()> {
        if body_len > MAX_RECORD_BODY as usize || path_len > u32::MAX as usize {
            self.mem.truncate(off);
            return Err(Error::Usage(format!(
                "a set catalog entry of {body_len} bytes is larger than a record may be"
            )));
        }
        self.mem_sorted = false;
        self.mem_recs.push(MemRec {
            off,
            path_len: path_len as u32,
            body_len: body_len as u32,
            session,
            seq: self.next_seq,
        });
        self.next_seq += 1;
        self.entries += 1;
        self.entry_bytes += REC + body_len as u64;
        self.max_path = self.max_path.max(path_len as u64);
        if self.mem.len() >= self.run_bytes {
            self.spill().map_err(tmp_err)?;
        }
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The sequence number the next entry added gets (entries are numbered
    /// in the order they are added).
    pub fn next_entry_seq(&self) -> u64 {
        self.next_seq
    }

    /// Forget the entries of session part `session` added at or after
    /// sequence number `from_seq` (a cartridge failed and they are not on
    /// it). Returns how many were dropped. Rare, so spilled runs are simply
    /// filtered into new ones.
    pub fn discard_entries_from(&mut self, session: u32, from_seq: u64) -> Result<u64> {
        let doomed = |s: u32, seq: u64| s == session && seq >= from_seq;
        let mut dropped = 0u64;
        let mut dropped_bytes = 0u64;
        self.mem_recs.retain(|r| {
            let keep = !doomed(r.session, r.seq);
            if !keep {
                dropped += 1;
                dropped_bytes += REC + r.body_len as u64;
            }
            keep
        });
        let mut kept_runs = Vec::with_capacity(self.runs.len());
        for run in std::mem::take(&mut self.runs) {
            let io = run_io_buffer(self.run_bytes);
            let mut rd = RunReader::open(&run, io).map_err(tmp_err)?;
            let mut w = new_run_writer(io).map_err(tmp_err)?;
            let mut rec = SortRec::default();
            let mut n = 0u64;
            while rd.next(&mut rec).map_err(tmp_err)? {
                if doomed(rec.session, rec.seq) {
                    dropped += 1;
                    dropped_bytes += REC + rec.body.len() as u64;
                    continue;
                }
                write_run_rec(&mut w, &rec.path, rec.session, rec.seq, &rec.body)
                    .map_err(tmp_err)?;
                n += 1;
            }
            drop(rd);
            kept_runs.push(close_run_writer(w, n, run.level).map_err(tmp_err)?);
        }
        self.runs = kept_runs;
        self.entries -= dropped;
        self.entry_bytes -= dropped_bytes;
        Ok(dropped)
    }

    /// Put the entries held in memory in entry order.
    fn sort_mem(&mut self) {
        if self.mem_sorted {
            return;
        }
        let mem = &self.mem;
        let path = |r: &MemRec| &mem[r.off..r.off + r.path_len as usize];
        self.mem_recs.sort_unstable_by(|a, b| {
            entry_order((path(a), a.session, a.seq), (path(b), b.session, b.seq))
        });
        self.mem_sorted = true;
    }

    /// Sort the entries held in memory and write them out as a run.
    fn spill(&mut self) -> std::io::Result<()> {
        if self.mem_recs.is_empty() {
            return Ok(());
        }
        self.sort_mem();
        let mem = &self.mem;
        let path = |r: &MemRec| &mem[r.off..r.off + r.path_len as usize];
        let mut w = new_run_writer(run_io_buffer(self.run_bytes))?;
        for r in &self.mem_recs {
            let body_at = r.off + r.path_len as usize;
            let body = &mem[body_at..body_at + r.body_len as usize];
            write_run_rec(&mut w, path(r), r.session, r.seq, body)?;
        }
        let run = close_run_writer(w, self.mem_recs.len() as u64, 0)?;
        self.runs.push(run);
        self.spilled_runs += 1;
        self.mem.clear();
        self.mem_recs.clear();
        self.merge_full_levels()
    }

    /// Merge the runs of any level that has `MERGE_FANIN` of them into one
    /// run of the next level: open files stay bounded, and every entry is
    /// rewritten once per level only.
    fn merge_full_levels(&mut self) -> std::io::Result<()> {
        loop {
            let mut full = None;
            for r in &self.runs {
                let n = self.runs.iter().filter(|x| x.level == r.level).count();
                if n >= MERGE_FANIN {
                    full = Some(r.level);
                    break;
                }
            }
            let Some(level) = full else {
                return Ok(());
            };
            let (group, rest): (Vec<Run>, Vec<Run>) = std::mem::take(&mut self.runs)
                .into_iter()
                .partition(|r| r.level == level);
            self.runs = rest;
            let merged = merge_into_run(&group, level + 1, run_io_buffer(self.run_bytes))?;
            self.runs.push(merged);
        }
    }

    /// Leave all entries in one sorted run, or, when none was spilled,
    /// sorted in memory (no temporary file is written just to be read back).
    fn consolidate(&mut self) -> Result<()> {
        if self.runs.is_empty() {
            self.sort_mem();
            return Ok(());
        }
        self.spill().map_err(tmp_err)?;
        while self.runs.len() > MERGE_FANIN {
            self.runs.sort_by_key(|r| r.records);
            let group: Vec<Run> = self.runs.drain(..MERGE_FANIN).collect();
            let level = group.iter().map(|r| r.level).max().unwrap_or(0) + 1;
            let merged =
                merge_into_run(&group, level, run_io_buffer(self.run_bytes)).map_err(tmp_err)?;
            self.runs.push(merged);
        }
        if self.runs.len() > 1 {
            let level = self.runs.iter().map(|r| r.level).max().unwrap_or(0) + 1;
            let merged = merge_into_run(&self.runs, level, run_io_buffer(self.run_bytes))
                .map_err(tmp_err)?;
            self.runs = vec![merged];
        }
        Ok(())
    }

    /// Every entry in set-catalog order.
    fn scan(&mut self, mut f: impl FnMut(RecView<'_>) -> Result<()>) -> Result<()> {
        self.consolidate()?;
        let Some(run) = self.runs.first() else {
            for r in &self.mem_recs {
                f(self.mem_view(r))?;
            }
            return Ok(());
        };
        let mut rd = RunReader::open(run, run_io_buffer(self.run_bytes)).map_err(tmp_err)?;
        let mut rec = SortRec::default();
        while rd.next(&mut rec).map_err(tmp_err)? {
            f(RecView {
                path: &rec.path,
                session: rec.session,
                body: &rec.body,
            })?;
        }
        Ok(())
    }

    fn mem_view<'a>(&'a self, r: &MemRec) -> RecView<'a> {
        let body_at = r.off + r.path_len as usize;
        RecView {
            path: &self.mem[r.off..body_at],
            session: r.session,
            body: &self.mem[body_at..body_at + r.body_len as usize],
        }
    }

    /// Every entry in set-catalog order, streamed from the temp files (for
    /// restore planning and tests).
    pub fn for_each_entry(
        &mut self,
        mut f: impl FnMut(&SetCatalogEntry) -> Result<()>,
    ) -> Result<()> {
        self.scan(|r| {
            let e = from_cbor::<SetCatalogEntry>(r.body).map_err(|e| {
                Error::io(
                    "set catalog temporary file",
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?;
            f(&e)
        })
    }

    /// Record bytes a page may hold with blocks of `payload` bytes: the
    /// whole blocks that fit in `page_bytes` (at least one), so no page ends
    /// with a nearly empty block.
    fn page_limit(&self, payload: u64) -> u64 {
        if self.page_bytes >= payload {
            self.page_bytes / payload * payload
        } else {
            self.page_bytes
        }
    }

    /// First pass: where pages end. Reads paths and lengths only.
    fn plan_pages(&mut self, payload: u64) -> Result<Vec<PagePlan>> {
        self.consolidate()?;
        let limit = self.page_limit(payload);
        let mut plan: Vec<PagePlan> = Vec::new();
        let since = self.delta.as_ref().map_or(0, |(s, _)| *s);
        let mut add = |path: &[u8], body_len: usize, session: u32| {
            if session < since {
                return;
            }
            let bytes = REC + body_len as u64;
            match plan.last_mut() {
                Some(p) if p.bytes + bytes <= limit && p.entries < u32::MAX => {
                    p.bytes += bytes;
                    p.entries += 1;
                }
                _ => plan.push(PagePlan {
                    first_path: path.to_vec(),
                    entries: 1,
                    bytes,
                }),
            }
        };
        let Some(run) = self.runs.first() else {
            for r in &self.mem_recs {
                let v = self.mem_view(r);
                add(v.path, v.body.len(), v.session);
            }
            return Ok(plan);
        };
        let mut rd = RunReader::open(run, run_io_buffer(self.run_bytes)).map_err(tmp_err)?;
        let mut path = Vec::new();
        while let Some((body_len, session)) = rd.next_path(&mut path).map_err(tmp_err)? {
            add(&path, body_len, session);
        }
        Ok(plan)
    }

    fn inventory_record_bytes(&self) -> u64 {
        if let Some(b) = self.inventory_bytes.get() {
            return b;
        }
        let b = self
            .volumes
            .iter()
            .map(|v| REC + to_cbor(v).len() as u64)
            .chain(self.sessions.iter().map(|s| REC + to_cbor(s).len() as u64))
            .sum();
        self.inventory_bytes.set(Some(b));
        b
    }

    /// Upper bound of the bytes the stream will take on tape for
    /// `block_size` (headers of blocks and records included), to plan the
    /// end of a cartridge. O(1) but for re-encoding the volumes and sessions
    /// once after they change.
    pub fn estimated_tape_bytes(&self, block_size: u32) -> u64 {
        let payload = (block_size as u64)
            .saturating_sub(BLOCK_HEADER_LEN as u64)
            .max(1);
        let e = self.entry_bytes;
        // Two consecutive pages hold more than a page's worth of bytes.
        let pages = if self.entries == 0 {
            0
        } else {
            (2 * e / self.page_limit(payload) + 1).min(self.entries)
        };
        let index = pages * (self.max_path + PAGE_REF_MAX_FIXED)
            + pages.div_ceil(PAGE_INDEX_MAX_REFS as u64) * PAGE_INDEX_RECORD_MAX_OVERHEAD;
        let pre = REC
            + HEADER_BODY_MAX_FIXED
            + self.set_name.len() as u64
            + self.inventory_record_bytes()
            + index;
        // Every page may end with a partly filled block; the end record
        // has a block of its own.
        let blocks = pre.div_ceil(payload) + e.div_ceil(payload) + pages + 1;
        pre + e + END_RECORD_MAX + blocks * BLOCK_HEADER_LEN as u64
    }

    /// Write the whole stream through `framer` (a fresh StreamFramer of kind
    /// SetCatalog, at a block boundary, normally block 0, whose blocks are
    /// `block_size` bytes) and `emit` (sealed block out, empty buffer back).
    /// Does not call framer.finish(): the caller does, and that last block
    /// holds `SetCatalogEnd` alone. The builder stays usable: more sessions
    /// and entries can be added and the copy written again later.
    pub fn write(
        &mut self,
        volume_seq: u32,
        block_size: u32,
        framer: &mut StreamFramer,
        emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>>,
    ) -> Result<WrittenSetCatalog> {
        if framer.identity().kind != BlockKind::SetCatalog {
            return Err(Error::Usage(format!(
                "a set catalog is written with blocks of kind SetCatalog, not {:?}",
                framer.identity().kind
            )));
        }
        let start = framer.position();
        if start.offset != 0 {
            return Err(Error::Usage(
                "a set catalog stream must start at a block boundary".into(),
            ));
        }
        let payload = (block_size as u64).saturating_sub(BLOCK_HEADER_LEN as u64);
        if payload == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(Error::Usage(format!(
                "block size {block_size} cannot hold a set catalog"
            )));
        }
        if self.volumes.len() > MAX_VOLUMES as usize || self.next_session > MAX_SESSIONS {
            return Err(Error::Refused(format!(
                "the set has {} cartridges and {} session parts; a set catalog copy holds at \
                 most {MAX_VOLUMES} and {MAX_SESSIONS}",
                self.volumes.len(),
                self.sessions.len()
            )));
        }
        let plan = self.plan_pages(payload)?;
        let planned: u64 = plan.iter().map(|p| p.entries as u64).sum();
        let since = self.delta.as_ref().map_or(0, |(s, _)| *s);
        if plan.len() > MAX_PAGES as usize {
            return Err(Error::Refused(format!(
                "the set catalog would have {} pages, more than the {MAX_PAGES} a reader accepts",
                plan.len()
            )));
        }
        let header = SetCatalogHeader {
            set_uuid: self.set_uuid,
            set_name: self.set_name.clone(),
            volume_seq,
            written: Timestamp::now(),
            volumes: self.volumes.len() as u32,
            sessions: self.sessions.len() as u32,
            entries: planned,
            pages: plan.len() as u32,
            base: self.delta.as_ref().map(|(_, b)| b.clone()),
        };
        let mut pre: Vec<(RecordType, Vec<u8>)> = Vec::new();
        pre.push((RecordType::SetCatalogHeader, to_cbor(&header)));
        let mut inventory = 0u64;
        for v in &self.volumes {
            let b = to_cbor(v);
            inventory += b.len() as u64;
            pre.push((RecordType::VolumeInfo, b));
        }
        for s in &self.sessions {
            let b = to_cbor(s);
            inventory += b.len() as u64;
            pre.push((RecordType::SessionInfo, b));
        }
        if inventory > MAX_INVENTORY_BYTES {
            return Err(Error::Refused(format!(
                "the set's cartridges and sessions take {inventory} bytes, more than the \
                 {MAX_INVENTORY_BYTES} a reader accepts"
            )));
        }
        let pre_bytes: u64 = pre.iter().map(|(_, b)| REC + b.len() as u64).sum();
        let base = start.block;
        let (refs, index, index_blocks) = plan_index(base, pre_bytes, &plan, payload);
        let index_bytes: u64 = index.iter().map(|b| b.len() as u64).sum();
        if index_bytes > MAX_INDEX_BYTES {
            return Err(Error::Refused(format!(
                "the set catalog's page index would take {index_bytes} bytes, more than the \
                 {MAX_INDEX_BYTES} a reader accepts"
            )));
        }

        for (t, b) in &pre {
            framer.push_record(*t, 0, &[b], emit)?;
        }
        for b in &index {
            framer.push_record(RecordType::PageIndex, 0, &[b], emit)?;
        }
        framer.seal_early(emit)?;
        let expect_at = |framer: &StreamFramer, block: u64| -> Result<()> {
            let at = framer.position();
            if at.block != block || at.offset != 0 {
                return Err(Error::Usage(format!(
                    "set catalog: a page planned at block {block} would start at block {}, \
                     offset {}: the framer's block size is not {block_size}",
                    at.block, at.offset
                )));
            }
            Ok(())
        };
        expect_at(framer, base + index_blocks)?;

        let mut digest = super::PieceHasher::new();
        let mut page = 0usize;
        let mut in_page = 0u32;
        let mut count = 0u64;
        self.scan(|r| {
            if r.session < since {
                return Ok(());
            }
            if page >= plan.len() {
                return Err(Error::Usage(
                    "set catalog: more entries than the first pass saw".into(),
                ));
            }
            if in_page == 0 {
                expect_at(framer, refs[page].block)?;
            }
            framer.push_record(RecordType::SetCatalogEntry, 0, &[r.body], emit)?;
            digest.update(r.body);
            count += 1;
            in_page += 1;
            if in_page == plan[page].entries {
                framer.seal_early(emit)?;
                page += 1;
                in_page = 0;
            }
            Ok(())
        })?;
        if page != plan.len() || count != planned {
            return Err(Error::Usage(format!(
                "set catalog: wrote {count} entries in {page} pages, planned {planned} in {}",
                plan.len()
            )));
        }
        let digest = *digest.finalize().as_bytes();
        let end = SetCatalogEnd {
            entries: count,
            digest,
        };
        framer.push_record(RecordType::SetCatalogEnd, 0, &[&to_cbor(&end)], emit)?;
        Ok(WrittenSetCatalog {
            entries: count,
            pages: plan.len() as u32,
            index_blocks,
            digest,
        })
    }
}

/// Where every page starts, the `PageIndex` bodies, and the number of
/// blocks before the first page. The index's size depends on the block
/// numbers in it, so this iterates from the smallest possible index to the
/// first size that is stable (the size only grows with the block numbers,
/// so the iteration ends, at the smallest stable size).
fn plan_index(
    base: u64,
    pre_bytes: u64,
    plan: &[PagePlan],
    payload: u64,
) -> (Vec<PageRef>, Vec<Vec<u8>>, u64) {
    let mut index_blocks = pre_bytes.div_ceil(payload).max(1);
    loop {
        let mut block = base + index_blocks;
        let refs: Vec<PageRef> = plan
            .iter()
            .map(|p| {
                let r = PageRef {
                    first_path: p.first_path.clone(),
                    block,
                    entries: p.entries,
                };
                block += p.bytes.div_ceil(payload);
                r
            })
            .collect();
        let bodies: Vec<Vec<u8>> = refs
            .chunks(PAGE_INDEX_MAX_REFS)
            .map(|c| to_cbor(&PageIndex { pages: c.to_vec() }))
            .collect();
        let index_bytes: u64 = bodies.iter().map(|b| REC + b.len() as u64).sum();
        let need = (pre_bytes + index_bytes).div_ceil(payload);
        if need <= index_blocks {
            debug_assert_eq!(need, index_blocks);
            return (refs, bodies, index_blocks);
        }
        index_blocks = need;
    }
}

/// A set catalog copy read whole from tape.
#[derive(Debug)]
pub struct SetCatalogCopy {
    pub header: SetCatalogHeader,
    /// Everything read, ready to be extended and written again.
    pub builder: SetCatalogBuilder,
    /// Blocks that could not be used, and records that did not decode.
    pub lost: Vec<LostBlocks>,
    /// `SetCatalogEnd` was read and its count and digest match the entries read.
    pub digest_ok: bool,
    /// The digest its `SetCatalogEnd` records (what a delta on it names).
    pub end_digest: Option<[u8; 32]>,
}

/// The newest set catalog copy on the cartridge that reads intact, with
/// the chain it extends; when none does, the newest that can be read at
/// all (its `digest_ok` and `lost` say what is wrong). None: no copy.
pub fn newest_set_catalog(
    drive: &mut dyn TapeDrive,
    map: &super::volume::TapeMap,
) -> Result<Option<NewestCopy>> {
    let set_uuid = map.label.set_uuid();
    let mut damaged = None;
    for s in map.sessions.iter().rev() {
        let Some(file) = s.set_catalog_file else {
            continue;
        };
        match read_set_catalog_chain(drive, set_uuid, file, s.number) {
            Ok(copy) => {
                let found = NewestCopy {
                    intact: copy.digest_ok && copy.lost.is_empty(),
                    copy,
                    tape_file: file,
                    session: s.number,
                };
                if found.intact {
                    return Ok(Some(found));
                }
                damaged.get_or_insert(found);
            }
            Err(e) => tracing::warn!(
                "{}: the set catalog copy in tape file {file} cannot be read: {e}",
                drive.name()
            ),
        }
    }
    Ok(damaged)
}

/// A copy found by [`newest_set_catalog`], and where it is.
pub struct NewestCopy {
    pub copy: SetCatalogCopy,
    pub tape_file: u32,
    /// The `session` its blocks carry.
    pub session: u32,
    /// It and the copies it extends read without damage.
    pub intact: bool,
}

/// Deltas a reader follows before refusing a chain (a writer starts a whole
/// copy long before).
pub const MAX_DELTA_DEPTH: u32 = 16;

/// Read the copy in `tape_file` and, when it is a delta, the copies it
/// extends, into one builder: the whole set as that copy knows it.
pub fn read_set_catalog_chain(
    drive: &mut dyn TapeDrive,
    set_uuid: [u8; 16],
    tape_file: u32,
    session: u32,
) -> Result<SetCatalogCopy> {
    let top = read_set_catalog(drive, set_uuid, tape_file, session)?;
    let Some(base) = top.header.base.clone() else {
        return Ok(top);
    };
    if base.depth > MAX_DELTA_DEPTH || base.tape_file >= tape_file {
        return Err(Error::Refused(format!(
            "{}: the set catalog copy in tape file {tape_file} extends tape file {} at depth {}; \
             not following it",
            drive.name(),
            base.tape_file,
            base.depth
        )));
    }
    let mut below = read_set_catalog_chain(drive, set_uuid, base.tape_file, base.session)?;
    if below.end_digest != Some(base.digest) {
        return Err(Error::Refused(format!(
            "{}: the set catalog copy in tape file {tape_file} extends the copy in tape file {}, \
             but that copy is not the one it was written on (digest differs)",
            drive.name(),
            base.tape_file
        )));
    }
    below.builder.absorb(top.builder)?;
    below.lost.extend(top.lost);
    Ok(SetCatalogCopy {
        header: top.header,
        builder: below.builder,
        lost: below.lost,
        digest_ok: below.digest_ok && top.digest_ok,
        end_digest: top.end_digest,
    })
}

/// The header, inventory and index as read from the start of the stream,
/// with every count and size bounded before anything is kept.
struct Inventory {
    set_uuid: [u8; 16],
    tape_file: u32,
    device: String,
    keep_index: bool,
    header: Option<SetCatalogHeader>,
    volumes: Vec<VolumeInfo>,
    sessions: Vec<SessionInfo>,
    refs: Vec<PageRef>,
    inventory_bytes: u64,
    index_bytes: u64,
    /// Every `PageIndex` record was accepted.
    index_ok: bool,
}

fn record_problem(tape_file: u32, at: StreamPosition, reason: String) -> LostBlocks {
    LostBlocks {
        tape_file,
        first_block: at.block,
        last_block: at.block,
        reason,
    }
}

impl Inventory {
    fn new(set_uuid: [u8; 16], tape_file: u32, device: String, keep_index: bool) -> Self {
        Inventory {
            set_uuid,
            tape_file,
            device,
            keep_index,
            header: None,
            volumes: Vec::new(),
            sessions: Vec::new(),
            refs: Vec::new(),
            inventory_bytes: 0,
            index_bytes: 0,
            index_ok: true,
        }
    }

    fn format_error(&self, block: u64, source: FormatError) -> Error {
        Error::Format {
            device: self.device.clone(),
            tape_file: self.tape_file,
            block,
            source,
        }
    }

    /// All the header announces has been read.
    fn complete(&self) -> bool {
        self.header.as_ref().is_some_and(|h| {
            self.volumes.len() as u64 == h.volumes as u64
                && self.sessions.len() as u64 == h.sessions as u64
                && (!self.keep_index || self.refs.len() as u64 == h.pages as u64)
        })
    }

    /// Take one record of the part before the pages. Problems with single
    /// records are reported in `lost`; a header that cannot be trusted is
    /// an error.
    fn take(&mut self, r: &Record, lost: &mut Vec<LostBlocks>) -> Result<()> {
        let problem = |why: String| record_problem(self.tape_file, r.position, why);
        match r.header.rtype {
            RecordType::SetCatalogHeader => {
                if self.header.is_some() || r.position.block != 0 || r.position.offset != 0 {
                    lost.push(problem(
                        "a SetCatalogHeader that does not start the stream (ignored)".into(),
                    ));
                    return Ok(());
                }
                let h: SetCatalogHeader =
                    from_cbor(&r.body).map_err(|e| self.format_error(0, e))?;
                if h.set_uuid != self.set_uuid {
                    return Err(self.format_error(
                        0,
                        FormatError::Invalid("the set catalog's header names another set".into()),
                    ));
                }
                for (what, n, limit) in [
                    ("set catalog volumes", h.volumes, MAX_VOLUMES),
                    ("set catalog sessions", h.sessions, MAX_SESSIONS),
                    ("set catalog pages", h.pages, MAX_PAGES),
                ] {
                    if n > limit {
                        return Err(self.format_error(
                            0,
                            FormatError::TooLong {
                                what,
                                len: n as u64,
                                limit: limit as u64,
                            },
                        ));
                    }
                }
                if h.pages as u64 > h.entries {
                    return Err(self.format_error(
                        0,
                        FormatError::Invalid(format!(
                            "the set catalog claims {} pages for {} entries",
                            h.pages, h.entries
                        )),
                    ));
                }
                self.header = Some(h);
            }
            RecordType::VolumeInfo | RecordType::SessionInfo => {
                let Some(h) = &self.header else {
                    lost.push(problem(
                        "inventory record before the header (ignored)".into(),
                    ));
                    return Ok(());
                };
                let is_volume = r.header.rtype == RecordType::VolumeInfo;
                let (have, claimed) = if is_volume {
                    (self.volumes.len(), h.volumes)
                } else {
                    (self.sessions.len(), h.sessions)
                };
                if have as u64 >= claimed as u64 {
                    lost.push(problem(format!(
                        "more {:?} records than the header's {claimed} (ignored)",
                        r.header.rtype
                    )));
                    return Ok(());
                }
                self.inventory_bytes += r.body.len() as u64;
                if self.inventory_bytes > MAX_INVENTORY_BYTES {
                    lost.push(problem(format!(
                        "inventory records exceed {MAX_INVENTORY_BYTES} bytes (ignored)"
                    )));
                    return Ok(());
                }
                let decoded = if is_volume {
                    from_cbor::<VolumeInfo>(&r.body).map(|v| self.volumes.push(v))
                } else {
                    from_cbor::<SessionInfo>(&r.body).map(|s| self.sessions.push(s))
                };
                if let Err(e) = decoded {
                    lost.push(problem(format!(
                        "{:?} does not decode: {e}",
                        r.header.rtype
                    )));
                }
            }
            RecordType::PageIndex => {
                if !self.keep_index {
                    return Ok(());
                }
                let Some(h) = &self.header else {
                    self.index_ok = false;
                    return Ok(());
                };
                self.index_bytes += r.body.len() as u64;
                let room = (h.pages as usize).saturating_sub(self.refs.len());
                let max = room.min(PAGE_INDEX_MAX_REFS);
                if self.index_bytes > MAX_INDEX_BYTES {
                    self.index_ok = false;
                    lost.push(problem(format!(
                        "page index exceeds {MAX_INDEX_BYTES} bytes (index not used)"
                    )));
                    return Ok(());
                }
                match decode_page_index(&r.body, max) {
                    Ok(refs) => self.refs.extend(refs),
                    Err(e) => {
                        self.index_ok = false;
                        lost.push(problem(format!("page index refused: {e} (index not used)")));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn take_header(&mut self) -> Result<SetCatalogHeader> {
        self.header.take().ok_or_else(|| {
            self.format_error(
                0,
                FormatError::Invalid("the set catalog's header (block 0) could not be read".into()),
            )
        })
    }

    /// The index is whole and consistent, so pages can be found with it.
    fn index_usable(&self, h: &SetCatalogHeader) -> bool {
        if !self.index_ok || self.refs.len() as u64 != h.pages as u64 {
            return false;
        }
        let mut total = 0u64;
        let mut prev: Option<&PageRef> = None;
        for r in &self.refs {
            if r.entries == 0 || r.block == 0 {
                return false;
            }
            if let Some(p) = prev {
                if r.block <= p.block
                    || fast_path_order(&p.first_path, &r.first_path) == Ordering::Greater
                {
                    return false;
                }
            }
            total += r.entries as u64;
            prev = Some(r);
        }
        total == h.entries
    }
}

/// Read a whole set catalog tape file into a builder (so a later write can
/// extend it). Reports lost blocks and whether the digest matched.
/// `session` is the `session` of the copy's block headers.
pub fn read_set_catalog(
    drive: &mut dyn TapeDrive,
    set_uuid: [u8; 16],
    tape_file: u32,
    session: u32,
) -> Result<SetCatalogCopy> {
    drive.locate(tape_file, 0)?;
    let device = drive.name().to_string();
    let mut reader = StreamReader::new(
        drive,
        StreamExpect {
            kind: BlockKind::SetCatalog,
            set_uuid,
            tape_file,
            session,
        },
    );
    let mut inv = Inventory::new(set_uuid, tape_file, device, false);
    let mut builder: Option<SetCatalogBuilder> = None;
    let mut lost = Vec::new();
    let mut digest = super::PieceHasher::new();
    let mut count = 0u64;
    let mut end: Option<SetCatalogEnd> = None;
    while let Some(ev) = reader.next_event()? {
        let r = match ev {
            StreamEvent::Lost(l) => {
                lost.push(l);
                continue;
            }
            StreamEvent::Record(r) => r,
        };
        match r.header.rtype {
            RecordType::SetCatalogEntry => {
                digest.update(&r.body);
                count += 1;
                let Some(b) = builder.as_mut() else {
                    continue;
                };
                match from_cbor::<SetCatalogEntry>(&r.body) {
                    Ok(e) if e.session < MAX_SESSIONS => {
                        b.add_raw(e.session, &e.entry.path, &r.body)?
                    }
                    Ok(e) => lost.push(record_problem(
                        tape_file,
                        r.position,
                        format!("SetCatalogEntry of session index {} (ignored)", e.session),
                    )),
                    Err(e) => lost.push(record_problem(
                        tape_file,
                        r.position,
                        format!("SetCatalogEntry does not decode: {e}"),
                    )),
                }
            }
            RecordType::SetCatalogEnd => match from_cbor::<SetCatalogEnd>(&r.body) {
                Ok(e) => end = Some(e),
                Err(e) => lost.push(record_problem(
                    tape_file,
                    r.position,
                    format!("SetCatalogEnd does not decode: {e}"),
                )),
            },
            _ => {
                inv.take(&r, &mut lost)?;
                if builder.is_none() {
                    if let Some(h) = &inv.header {
                        builder = Some(SetCatalogBuilder::new(h.set_uuid, h.set_name.clone())?);
                    }
                }
            }
        }
    }
    let header = inv.take_header()?;
    let mut builder = builder.expect("a builder exists once the header is read");
    for v in inv.volumes.drain(..) {
        builder.upsert_volume(v);
    }
    for s in inv.sessions.drain(..) {
        let index = s.index;
        if index >= MAX_SESSIONS || !builder.insert_session(s) {
            lost.push(LostBlocks {
                tape_file,
                first_block: 0,
                last_block: 0,
                reason: format!(
                    "SessionInfo with index {index} out of range or repeated (ignored)"
                ),
            });
        }
    }
    builder.next_session = builder.next_session.max(header.sessions);
    let digest_ok = header.entries == count
        && end
            .as_ref()
            .is_some_and(|e| e.entries == count && e.digest == *digest.finalize().as_bytes());
    let end_digest = end.as_ref().map(|e| e.digest);
    Ok(SetCatalogCopy {
        end_digest,
        header,
        builder,
        lost,
        digest_ok,
    })
}

/// What `find_in_set_catalog` found, and what it read to find it.
#[derive(Debug, Clone)]
pub struct SetCatalogLookup {
    pub header: SetCatalogHeader,
    pub volumes: Vec<VolumeInfo>,
    pub sessions: Vec<SessionInfo>,
    /// In set-catalog order: by path, versions chronological.
    pub entries: Vec<SetCatalogEntry>,
    pub blocks_read: u64,
    pub bytes_read: u64,
    /// Blocks that could not be used, and refused records: entries in
    /// them may be missing from `entries`.
    pub lost: Vec<LostBlocks>,
    /// The page index was unusable (damaged or inconsistent), so the whole
    /// stream was read instead.
    pub scanned: bool,
}

/// Which entries a lookup wants.
struct Wanted<'a> {
    path: &'a [u8],
    with_children: bool,
}

impl Wanted<'_> {
    fn matches(&self, p: &[u8]) -> bool {
        if self.with_children {
            path_in_subtree(p, self.path)
        } else {
            p == self.path
        }
    }
    /// Sorted after everything wanted: nothing wanted follows.
    fn beyond(&self, p: &[u8]) -> bool {
        fast_path_order(p, self.path) == Ordering::Greater && !self.matches(p)
    }
    /// The pages that can hold wanted entries: from the last page starting
    /// before the path (earlier versions may end it) to the last page
    /// starting at or inside the wanted range.
    fn pages(&self, refs: &[PageRef]) -> Option<(usize, usize)> {
        let lt = refs.partition_point(|r| fast_path_order(&r.first_path, self.path).is_lt());
        let le = refs.partition_point(|r| {
            fast_path_order(&r.first_path, self.path).is_le() || self.matches(&r.first_path)
        });
        (le > 0).then(|| (lt.saturating_sub(1), le - 1))
    }
}

/// Find the entries for one path (all versions, plus, if `with_children`,
/// everything under it as a directory), reading only the header, inventory
/// and index and the pages that can hold it. Falls back to reading the
/// whole stream when the index is damaged.
pub fn find_in_set_catalog(
    drive: &mut dyn TapeDrive,
    set_uuid: [u8; 16],
    tape_file: u32,
    session: u32,
    path: &[u8],
    with_children: bool,
) -> Result<SetCatalogLookup> {
    let wanted = Wanted {
        path,
        with_children,
    };
    let expect = StreamExpect {
        kind: BlockKind::SetCatalog,
        set_uuid,
        tape_file,
        session,
    };
    drive.locate(tape_file, 0)?;
    let device = drive.name().to_string();
    let mut inv = Inventory::new(set_uuid, tape_file, device, true);
    let mut lost = Vec::new();
    let mut entries = Vec::new();
    let keep = |r: &Record, entries: &mut Vec<SetCatalogEntry>, lost: &mut Vec<LostBlocks>| {
        if r.header.rtype != RecordType::SetCatalogEntry {
            return true;
        }
        match from_cbor::<SetCatalogEntry>(&r.body) {
            Ok(e) if wanted.beyond(&e.entry.path) => return false,
            Ok(e) if wanted.matches(&e.entry.path) => entries.push(e),
            Ok(_) => {}
            Err(e) => lost.push(record_problem(
                tape_file,
                r.position,
                format!("SetCatalogEntry does not decode: {e}"),
            )),
        }
        true
    };

    let mut reader = StreamReader::new(drive, expect);
    let mut first_page_record = None;
    while !inv.complete() {
        match reader.next_event()? {
            None => break,
            Some(StreamEvent::Lost(l)) => lost.push(l),
            Some(StreamEvent::Record(r)) => match r.header.rtype {
                RecordType::SetCatalogEntry | RecordType::SetCatalogEnd => {
                    // Past the index without having all of it.
                    first_page_record = Some(r);
                    break;
                }
                _ => inv.take(&r, &mut lost)?,
            },
        }
    }
    let header = inv.take_header()?;
    let scanned = !inv.index_usable(&header);
    if scanned {
        tracing::warn!(
            "{}: tape file {tape_file}: the set catalog's page index is incomplete or \
             inconsistent; reading the whole set catalog",
            reader.device_name()
        );
        let mut going = first_page_record
            .as_ref()
            .is_none_or(|r| keep(r, &mut entries, &mut lost));
        while going {
            match reader.next_event()? {
                None => break,
                Some(StreamEvent::Lost(l)) => lost.push(l),
                Some(StreamEvent::Record(r)) => going = keep(&r, &mut entries, &mut lost),
            }
        }
    }
    let mut blocks_read = reader.blocks_read;
    let mut bytes_read = reader.bytes_read;
    drop(reader);

    if !scanned {
        if let Some((a, b)) = wanted.pages(&inv.refs) {
            let refs = &inv.refs;
            let mut remaining: u64 = refs[a..=b].iter().map(|r| r.entries as u64).sum();
            let mut pr = PageReader::new(drive, expect);
            pr.read(
                refs[a].block,
                refs.get(b + 1).map(|r| r.block),
                &mut lost,
                |r, lost| {
                    if r.header.rtype != RecordType::SetCatalogEntry {
                        return false;
                    }
                    remaining = remaining.saturating_sub(1);
                    keep(r, &mut entries, lost) && remaining > 0
                },
            )?;
            blocks_read += pr.blocks_read;
            bytes_read += pr.bytes_read;
        }
    }
    Ok(SetCatalogLookup {
        header,
        volumes: inv.volumes,
        sessions: inv.sessions,
        entries,
        blocks_read,
        bytes_read,
        lost,
        scanned,
    })
}

/// Reads a range of blocks of one tape file from a known block, checking
/// that each block read is the one expected (a drive may be off by one
/// after positioning) and retrying bad blocks as `StreamReader` does.
struct PageReader<'d> {
    drive: &'d mut dyn TapeDrive,
    expect: StreamExpect,
    buf: Vec<u8>,
    blocks_read: u64,
    bytes_read: u64,
}

/// How often a wrongly positioned drive is corrected before giving up.
const POSITION_CORRECTIONS: u32 = 2;

impl<'d> PageReader<'d> {
    fn new(drive: &'d mut dyn TapeDrive, expect: StreamExpect) -> Self {
        let buf_len = drive.max_block_size().min(MAX_BLOCK_SIZE as usize);
        PageReader {
            drive,
            expect,
            buf: vec![0u8; buf_len],
            blocks_read: 0,
            bytes_read: 0,
        }
    }

    fn read_block(&mut self) -> Result<BlockRead> {
        let (blocks, bytes) = (&mut self.blocks_read, &mut self.bytes_read);
        read_block_retrying(&mut *self.drive, &mut self.buf, &mut 0, |n| {
            *blocks += 1;
            *bytes += n as u64;
        })
    }

    /// Read from block `start` (a record starts at its payload offset 0)
    /// up to block `end` (exclusive), the end of the tape file, or until
    /// `on_record` returns false.
    fn read(
        &mut self,
        start: u64,
        end: Option<u64>,
        lost: &mut Vec<LostBlocks>,
        mut on_record: impl FnMut(&Record, &mut Vec<LostBlocks>) -> bool,
    ) -> Result<()> {
        let tape_file = self.expect.tape_file;
        let lose = |lost: &mut Vec<LostBlocks>, first: u64, last: u64, reason: String| {
            lost.push(LostBlocks {
                tape_file,
                first_block: first,
                last_block: last,
                reason,
            })
        };
        self.drive.locate(tape_file, start)?;
        let mut d = StreamDeframer::starting_at(start, 0);
        let mut corrections = 0;
        let mut records = Vec::new();
        loop {
            if end.is_some_and(|e| d.next_block() >= e) {
                return Ok(());
            }
            let n = match self.read_block()? {
                BlockRead::End { .. } => {
                    if d.in_record() {
                        let b = d.next_block();
                        lose(lost, b, b, "the tape file ends inside a record".into());
                    }
                    return Ok(());
                }
                BlockRead::Bad(reason) => {
                    let b = d.next_block();
                    d.lose_block();
                    lose(lost, b, b, reason);
                    continue;
                }
                BlockRead::Block(n) => n,
            };
            let (header, payload) =
                BlockHeader::decode(&self.buf[..n]).expect("block verified just now");
            let e = &self.expect;
            if header.kind != e.kind
                || header.tape_file != e.tape_file
                || header.session != e.session
                || header.set_uuid != e.set_uuid
            {
                let b = d.next_block();
                d.lose_block();
                lose(
                    lost,
                    b,
                    b,
                    format!(
                        "misplaced block: it says {:?}, tape file {}, session {}, block {}",
                        header.kind, header.tape_file, header.session, header.block_seq
                    ),
                );
                continue;
            }
            let want = d.next_block();
            if header.block_seq != want {
                // The drive is not where it was sent: move to the block wanted.
                if corrections < POSITION_CORRECTIONS {
                    corrections += 1;
                    let delta = want as i64 - header.block_seq as i64 - 1;
                    if delta == 0 || self.drive.space_blocks(delta).is_ok() {
                        continue;
                    }
                }
                lose(
                    lost,
                    want,
                    end.map_or(want, |e| e.saturating_sub(1).max(want)),
                    format!(
                        "the drive reads block {} where block {want} was expected",
                        header.block_seq
                    ),
                );
                return Ok(());
            }
            records.clear();
            match d.push_block(&header, payload, &mut records) {
                Ok(BlockContinuity::InOrder | BlockContinuity::Duplicate) => {}
                Ok(BlockContinuity::Gap {
                    missing_from,
                    missing_to,
                }) => lose(
                    lost,
                    missing_from,
                    missing_to,
                    "blocks missing from the tape file".into(),
                ),
                Err(e) => {
                    for r in &records {
                        if !on_record(r, lost) {
                            return Ok(());
                        }
                    }
                    let b = header.block_seq;
                    lose(lost, b, b, format!("unreadable record: {e}"));
                    return Ok(());
                }
            }
            for r in &records {
                if !on_record(r, lost) {
                    return Ok(());
                }
            }
            if header.is_last_in_file() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::vtape::VirtualTape;
    use crate::device::BlockWrite;
    use crate::format::meta::SESSION_OK;
    use crate::format::setcat::{path_order, SESSION_NO_END};
    use crate::format::stream::StreamIdentity;

    const SET: [u8; 16] = [0x5e; 16];
    const KIB64: u32 = 64 * 1024;

    struct Tape {
        _dir: tempfile::TempDir,
        drive: VirtualTape,
        next_file: u32,
    }

    fn tape() -> Tape {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("TAP001L9.vtape");
        VirtualTape::create(&path, "TAP001L9", 1 << 34, 0).unwrap();
        let drive = VirtualTape::open(&path, "vtape:test").unwrap();
        Tape {
            _dir: dir,
            drive,
            next_file: 0,
        }
    }

    /// A framer for a set catalog copy in tape file `file` of the test set.
    fn set_catalog_framer(file: u32, block_size: u32) -> StreamFramer {
        StreamFramer::new(
            StreamIdentity {
                kind: BlockKind::SetCatalog,
                set_uuid: SET,
                volume_seq: 1,
                tape_file: file,
                session: 1,
            },
            block_size,
            Vec::new(),
        )
    }

    /// What one copy took on tape.
    struct Written {
        file: u32,
        written: WrittenSetCatalog,
        blocks: u64,
        bytes: u64,
    }

    /// Write the copy as its own tape file; `corrupt` flips a payload byte
    /// of that block (by block_seq), so its CRC fails.
    fn write_copy(
        t: &mut Tape,
        b: &mut SetCatalogBuilder,
        block_size: u32,
        corrupt: Option<u64>,
    ) -> Written {
        let file = t.next_file;
        let mut framer = set_catalog_framer(file, block_size);
        let mut blocks = 0u64;
        let mut bytes = 0u64;
        t.drive.seek_end_of_data().unwrap();
        let drive = &mut t.drive;
        let mut put = |mut blk: Vec<u8>| -> Result<Vec<u8>> {
            let (h, _) = BlockHeader::decode(&blk).unwrap();
            assert_eq!(h.block_seq, blocks);
            if corrupt == Some(blocks) {
                let at = blk.len() / 2;
                blk[at] ^= 0xFF;
            }
            drive.write_block(&blk)?;
            blocks += 1;
            bytes += blk.len() as u64;
            blk.clear();
            Ok(blk)
        };
        let written = b.write(1, block_size, &mut framer, &mut put).unwrap();
        put(framer.finish()).unwrap();
        t.drive.write_filemarks(1, false).unwrap();
        t.next_file += 1;
        Written {
            file,
            written,
            blocks,
            bytes,
        }
    }

    fn entry(path: &[u8], n: u64) -> CatalogEntry {
        CatalogEntry {
            path: path.to_vec(),
            kind: 1,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            user: None,
            group: None,
            mtime: Timestamp {
                sec: 1_700_000_000 + n as i64,
                nsec: 0,
            },
            size: n,
            link_target: None,
            position: StreamPosition {
                tape_file: 2,
                block: n / 7,
                offset: (n % 7) as u32,
            },
            blake3: None,
            status: 0,
            device: None,
            continued_from: None,
        }
    }

    fn session(n: u8) -> SessionInfo {
        SessionInfo {
            index: 999,
            session_uuid: [n; 16],
            volume_seq: 1,
            session: n as u32,
            data_tape_file: 2 * n as u32,
            started: Timestamp {
                sec: n as i64,
                nsec: 0,
            },
            ended: None,
            status: SESSION_NO_END,
            entries: 0,
            continues: None,
            host: "backup01".into(),
            job: None,
        }
    }

    fn volume(seq: u32) -> VolumeInfo {
        VolumeInfo {
            volume_seq: seq,
            volume_uuid: [seq as u8; 16],
            label: format!("TAP{seq:03}L9"),
            pool: "default".into(),
            location: Some("library slot 4".into()),
            location_at: None,
            full: false,
            labelled: None,
            block_size: Some(65536),
            previous_volume: None,
            host: None,
            write_error: None,
        }
    }

    #[test]
    fn a_merge_buffers_no_more_than_a_run_in_memory() {
        // The writer sets a quarter of --buffer: a merge's readers and
        // writer together stay within it (above the smallest buffers).
        for budget in [64 << 10, 256 << 10, 1 << 20, 4 << 20, RUN_BYTES] {
            let merge = (MERGE_FANIN + 1) * run_io_buffer(budget);
            assert!(merge <= budget.max((MERGE_FANIN + 1) * MIN_RUN_IO_BUFFER));
        }
        assert_eq!(run_io_buffer(RUN_BYTES), RUN_IO_BUFFER);
    }

    #[test]
    fn entries_of_a_failed_part_are_discarded_from_memory_and_runs() {
        let mut b = SetCatalogBuilder::new(SET, "s".into()).unwrap();
        b.run_bytes = 2048; // every few dozen entries spill to a run
        let keep = b.add_session(session(1));
        let failed = b.add_session(session(2));
        for n in 0..300u64 {
            b.add_entry(keep, &entry(format!("a/{n:04}").as_bytes(), n))
                .unwrap();
        }
        for n in 0..100u64 {
            b.add_entry(failed, &entry(format!("b/{n:04}").as_bytes(), n))
                .unwrap();
        }
        let from = b.next_entry_seq();
        for n in 100..250u64 {
            b.add_entry(failed, &entry(format!("b/{n:04}").as_bytes(), n))
                .unwrap();
        }
        let before = b.estimated_tape_bytes(KIB64);
        assert!(b.spilled_runs > 1);
        assert_eq!(b.discard_entries_from(failed, from).unwrap(), 150);
        assert_eq!(b.entries(), 400);
        assert!(b.estimated_tape_bytes(KIB64) < before);
        let mut seen = Vec::new();
        b.for_each_entry(|e| {
            seen.push((e.session, e.entry.path.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 400);
        assert!(seen
            .iter()
            .all(|(s, p)| *s == keep || p.as_slice() < b"b/0100".as_slice()));
        // Entries added afterwards are kept.
        b.add_entry(failed, &entry(b"b/9999", 1)).unwrap();
        assert_eq!(b.entries(), 401);
    }

    /// xorshift64*: deterministic shuffles without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
        }
    }

    /// `n` distinct paths in a tree of directories, as (path, session)
    /// pairs over `sessions` sessions, some paths in several sessions.
    fn population(n: usize, sessions: u32) -> Vec<(Vec<u8>, u32)> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0usize;
        while v.len() < n {
            let p = format!("home/u{}/d{}/f{}.txt", i % 13, (i / 13) % 50, i).into_bytes();
            // One path in five has a version in every second session.
            let versions = if i.is_multiple_of(5) {
                sessions.div_ceil(2)
            } else {
                1
            };
            for k in 0..versions {
                if v.len() < n {
                    v.push((p.clone(), (i as u32 + 2 * k) % sessions));
                }
            }
            i += 1;
        }
        v
    }

    fn sorted(mut v: Vec<(Vec<u8>, u32)>) -> Vec<(Vec<u8>, u32)> {
        // fast_path_order is path_order (tested above), only faster in debug builds.
        v.sort_by(|a, b| fast_path_order(&a.0, &b.0).then(a.1.cmp(&b.1)));
        v
    }

    fn builder(sessions: u32, pop: &[(Vec<u8>, u32)], seed: u64) -> SetCatalogBuilder {
        let mut b = SetCatalogBuilder::new(SET, "offsite".into()).unwrap();
        b.upsert_volume(volume(2));
        b.upsert_volume(volume(1));
        for s in 0..sessions {
            assert_eq!(b.add_session(session(s as u8 + 1)), s);
        }
        let mut order: Vec<usize> = (0..pop.len()).collect();
        Rng(seed).shuffle(&mut order);
        for i in order {
            let (p, s) = &pop[i];
            b.add_entry(*s, &entry(p, i as u64)).unwrap();
        }
        b
    }

    fn keys(b: &mut SetCatalogBuilder) -> Vec<(Vec<u8>, u32)> {
        let mut v = Vec::new();
        b.for_each_entry(|e| {
            v.push((e.entry.path.clone(), e.session));
            Ok(())
        })
        .unwrap();
        v
    }

    fn lookup_keys(l: &SetCatalogLookup) -> Vec<(Vec<u8>, u32)> {
        l.entries
            .iter()
            .map(|e| (e.entry.path.clone(), e.session))
            .collect()
    }

    #[test]
    fn fast_path_order_agrees_with_path_order() {
        let mut rng = Rng(7);
        let alphabet = b"ab/.-\xff";
        for _ in 0..20_000 {
            let mut gen = || {
                let n = (rng.next() % 12) as usize;
                (0..n)
                    .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                    .collect::<Vec<u8>>()
            };
            let (a, b) = (gen(), gen());
            assert_eq!(fast_path_order(&a, &b), path_order(&a, &b), "{a:?} {b:?}");
            assert_eq!(fast_path_order(&a, &a), Ordering::Equal);
        }
    }

    #[test]
    fn sessions_and_volumes_are_kept_in_order_and_replaced_in_place() {
        let mut b = SetCatalogBuilder::new(SET, "s".into()).unwrap();
        b.upsert_volume(volume(3));
        b.upsert_volume(volume(1));
        let mut v = volume(3);
        v.full = true;
        b.upsert_volume(v);
        assert_eq!(
            b.volumes().iter().map(|v| v.volume_seq).collect::<Vec<_>>(),
            [1, 3]
        );
        assert!(b.volumes()[1].full);
        assert_eq!(b.add_session(session(1)), 0);
        assert_eq!(b.add_session(session(2)), 1);
        let mut again = session(1);
        again.status = SESSION_OK;
        assert_eq!(b.add_session(again), 0);
        assert_eq!(b.sessions().len(), 2);
        assert_eq!(b.sessions()[0].status, SESSION_OK);
        assert_eq!(b.sessions()[0].index, 0);
        b.session_mut(1).unwrap().entries = 7;
        assert_eq!(b.sessions()[1].entries, 7);
        assert!(b.session_mut(2).is_none());
    }

    #[test]
    fn an_entry_added_encoded_is_the_same_copy() {
        let mut t = tape();
        let mut a = SetCatalogBuilder::new(SET, "s".into()).unwrap();
        let mut b = SetCatalogBuilder::new(SET, "s".into()).unwrap();
        for i in 0..300u64 {
            let e = entry(format!("d/{}", 299 - i).as_bytes(), i);
            let session = (i % 3) as u32;
            a.add_entry(session, &e).unwrap();
            b.add_encoded_entry(session, &e.path, &crate::format::meta::to_cbor(&e))
                .unwrap();
        }
        let ca = write_copy(&mut t, &mut a, KIB64, None);
        let cb = write_copy(&mut t, &mut b, KIB64, None);
        assert_eq!(ca.written.digest, cb.written.digest);
        assert_eq!(ca.bytes, cb.bytes);
    }

    #[test]
    fn round_trip_of_zero_and_one_entry() {
        let mut t = tape();
        for n in [0usize, 1] {
            let pop = population(n, 1);
            let mut b = builder(1, &pop, 1);
            let estimate = b.estimated_tape_bytes(KIB64);
            let c = write_copy(&mut t, &mut b, KIB64, None);
            assert!(estimate >= c.bytes, "estimate {estimate} < {}", c.bytes);
            assert_eq!(c.written.entries, n as u64);
            assert_eq!(c.written.pages, n as u32);
            assert_eq!(c.written.index_blocks, 1);
            // Header block, the page (if any), the end block.
            assert_eq!(c.blocks, 1 + n as u64 + 1);
            let mut copy = read_set_catalog(&mut t.drive, SET, c.file, 1).unwrap();
            assert!(copy.digest_ok);
            assert!(copy.lost.is_empty(), "{:?}", copy.lost);
            assert_eq!(copy.header.entries, n as u64);
            assert_eq!(copy.header.set_name, "offsite");
            assert_eq!(copy.builder.volumes(), b.volumes());
            assert_eq!(copy.builder.sessions(), b.sessions());
            assert_eq!(keys(&mut copy.builder), sorted(pop.clone()));
            let found = find_in_set_catalog(&mut t.drive, SET, c.file, 1, b"home", true).unwrap();
            assert_eq!(lookup_keys(&found), sorted(pop));
            assert!(!found.scanned);
        }
    }

    #[test]
    fn round_trip_of_50000_entries_in_random_order() {
        let mut t = tape();
        let pop = population(50_000, 6);
        let mut b = builder(6, &pop, 2);
        let estimate = b.estimated_tape_bytes(KIB64);
        let c = write_copy(&mut t, &mut b, KIB64, None);
        assert!(estimate >= c.bytes, "estimate {estimate} < {}", c.bytes);
        assert!(estimate < c.bytes + c.bytes / 20 + 4 * KIB64 as u64);
        assert!(c.written.pages >= 3, "{} pages", c.written.pages);
        let mut copy = read_set_catalog(&mut t.drive, SET, c.file, 1).unwrap();
        assert!(copy.digest_ok);
        assert!(copy.lost.is_empty());
        assert_eq!(copy.header.pages, c.written.pages);
        assert_eq!(copy.builder.entries(), 50_000);
        let got = keys(&mut copy.builder);
        assert_eq!(got, sorted(pop));
        // Versions of one path are chronological (session order).
        assert!(got.windows(2).any(|w| w[0].0 == w[1].0));
        // Written again unchanged, the copy is the same (same digest).
        let c2 = write_copy(&mut t, &mut copy.builder, KIB64, None);
        assert_eq!(c2.written.digest, c.written.digest);
        assert_eq!(c2.blocks, c.blocks);
    }

    #[test]
    fn a_second_copy_holds_what_was_added_since_the_first() {
        let mut t = tape();
        let first = population(3000, 2);
        let mut b = builder(2, &first, 3);
        let c1 = write_copy(&mut t, &mut b, KIB64, None);
        let s = b.add_session(session(3));
        assert_eq!(s, 2);
        b.upsert_volume(volume(3));
        let mut all = first.clone();
        for i in 0..2000u64 {
            let p = format!("srv/new/{i}").into_bytes();
            b.add_entry(s, &entry(&p, i)).unwrap();
            all.push((p, s));
        }
        // Another version of a path of the first copy.
        b.add_entry(s, &entry(&first[0].0, 1)).unwrap();
        all.push((first[0].0.clone(), s));
        let c2 = write_copy(&mut t, &mut b, KIB64, None);
        let mut copy1 = read_set_catalog(&mut t.drive, SET, c1.file, 1).unwrap();
        let mut copy2 = read_set_catalog(&mut t.drive, SET, c2.file, 1).unwrap();
        assert!(copy1.digest_ok && copy2.digest_ok);
        assert_eq!(keys(&mut copy1.builder), sorted(first.clone()));
        assert_eq!(keys(&mut copy2.builder), sorted(all.clone()));
        assert_eq!(copy2.builder.sessions().len(), 3);
        assert_eq!(copy2.builder.volumes().len(), 3);

        // A copy read back extends too: the next session gets the next index.
        let mut ext = copy2.builder;
        let s4 = ext.add_session(session(4));
        assert_eq!(s4, 3);
        ext.add_entry(s4, &entry(b"zz/last", 0)).unwrap();
        all.push((b"zz/last".to_vec(), s4));
        let c3 = write_copy(&mut t, &mut ext, KIB64, None);
        let mut copy3 = read_set_catalog(&mut t.drive, SET, c3.file, 1).unwrap();
        assert!(copy3.digest_ok);
        assert_eq!(keys(&mut copy3.builder), sorted(all));
        let v = find_in_set_catalog(&mut t.drive, SET, c3.file, 1, &first[0].0, false).unwrap();
        let sessions: Vec<u32> = v.entries.iter().map(|e| e.session).collect();
        assert_eq!(sessions, [first[0].1, 2]);
    }

    #[test]
    fn find_reads_the_index_and_at_most_two_pages_of_200000_entries() {
        let mut t = tape();
        let pop = population(200_000, 4);
        let mut b = builder(4, &pop, 4);
        let c = write_copy(&mut t, &mut b, KIB64, None);
        let index = read_index(&mut t, c.file);
        assert_eq!(index.len() as u32, c.written.pages);
        assert!(index.len() >= 8, "{} pages", index.len());
        // Pages fill whole blocks up to 1 MiB: 16 blocks of 64 KiB.
        let page_blocks = PAGE_BYTES / (KIB64 as u64 - 64);
        assert_eq!(page_blocks, 16);
        for w in index.windows(2) {
            assert!(w[1].block - w[0].block <= page_blocks);
        }
        assert_eq!(index[1].block - index[0].block, page_blocks);
        let bound = c.written.index_blocks + 2 * page_blocks;
        let all = sorted(pop);
        let versions = |p: &[u8]| -> Vec<(Vec<u8>, u32)> {
            all.iter().filter(|(q, _)| q == p).cloned().collect()
        };
        let mut probes: Vec<Vec<u8>> = Vec::new();
        let mut rng = Rng(9);
        for _ in 0..6 {
            probes.push(all[(rng.next() % all.len() as u64) as usize].0.clone());
        }
        // First paths of pages, the paths just before them, the very first
        // and last paths.
        for r in index.iter().skip(1).step_by(3) {
            probes.push(r.first_path.clone());
            let i = all.iter().position(|(p, _)| *p == r.first_path).unwrap();
            probes.push(all[i - 1].0.clone());
        }
        probes.push(all[0].0.clone());
        probes.push(all[all.len() - 1].0.clone());
        for p in &probes {
            let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, p, false).unwrap();
            assert_eq!(
                lookup_keys(&l),
                versions(p),
                "{}",
                String::from_utf8_lossy(p)
            );
            assert!(
                l.blocks_read <= bound,
                "{} blocks read for {}, bound {bound}",
                l.blocks_read,
                String::from_utf8_lossy(p)
            );
            assert!(l.lost.is_empty() && !l.scanned);
            assert_eq!(l.volumes.len(), 2);
            assert_eq!(l.sessions.len(), 4);
            assert!(l.bytes_read <= bound * KIB64 as u64);
        }
        for absent in [&b"home/u1/d1/nothing"[..], b"aaa", b"zzz", b"home/u1/d1"] {
            let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, absent, false).unwrap();
            assert!(l.entries.is_empty());
            assert!(l.blocks_read <= bound);
        }
    }

    /// The page index, as a reader sees it.
    fn read_index(t: &mut Tape, file: u32) -> Vec<PageRef> {
        t.drive.locate(file, 0).unwrap();
        let mut inv = Inventory::new(SET, file, "test".into(), true);
        let mut reader = StreamReader::new(
            &mut t.drive,
            StreamExpect {
                kind: BlockKind::SetCatalog,
                set_uuid: SET,
                tape_file: file,
                session: 1,
            },
        );
        let mut lost = Vec::new();
        while !inv.complete() {
            match reader.next_event().unwrap().unwrap() {
                StreamEvent::Record(r) => inv.take(&r, &mut lost).unwrap(),
                StreamEvent::Lost(l) => panic!("{l:?}"),
            }
        }
        let h = inv.take_header().unwrap();
        assert!(inv.index_usable(&h));
        inv.refs
    }

    #[test]
    fn versions_of_one_path_across_page_boundaries_are_all_found() {
        let mut t = tape();
        let mut b = SetCatalogBuilder::new(SET, "s".into()).unwrap();
        b.page_bytes = 700;
        let mut want = Vec::new();
        for s in 0..30u8 {
            let idx = b.add_session(session(s + 1));
            for p in [&b"a/before"[..], b"a/many", b"a/zafter"] {
                if p == b"a/many" || s.is_multiple_of(10) {
                    b.add_entry(idx, &entry(p, s as u64)).unwrap();
                }
            }
            want.push((b"a/many".to_vec(), idx));
        }
        let c = write_copy(&mut t, &mut b, KIB64, None);
        assert!(c.written.pages >= 3);
        let index = read_index(&mut t, c.file);
        // Several pages start inside the versions of a/many.
        assert!(index.iter().filter(|r| r.first_path == b"a/many").count() >= 2);
        let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, b"a/many", false).unwrap();
        assert_eq!(lookup_keys(&l), want);
        assert!(l.lost.is_empty());
    }

    #[test]
    fn with_children_returns_a_directorys_subtree_only() {
        let mut t = tape();
        let paths: &[&[u8]] = &[
            b"d1", b"d1/a", b"d1/a/x", b"d1/b", b"d1-x", b"d1.txt", b"d10", b"d10/a", b"d0",
            b"d0/z", b"e",
        ];
        let mut pop: Vec<(Vec<u8>, u32)> = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            for k in 0..2000 {
                // Bulk around them, so the subtree spans pages.
                if k == 0 {
                    pop.push((p.to_vec(), (i % 2) as u32));
                }
                if p.len() == 2 {
                    pop.push((
                        format!("{}/bulk{k:05}", String::from_utf8_lossy(p)).into(),
                        0,
                    ));
                }
            }
        }
        let mut b = builder(2, &pop, 5);
        b.page_bytes = 16 << 10;
        let c = write_copy(&mut t, &mut b, KIB64, None);
        assert!(c.written.pages > 4);
        let all = sorted(pop);
        for dir in [&b"d1"[..], b"d10", b"d1/a", b"d0", b"e", b""] {
            let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, dir, true).unwrap();
            let want: Vec<_> = all
                .iter()
                .filter(|(p, _)| path_in_subtree(p, dir))
                .cloned()
                .collect();
            assert_eq!(lookup_keys(&l), want, "{}", String::from_utf8_lossy(dir));
        }
        let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, b"d1", false).unwrap();
        assert_eq!(lookup_keys(&l), [(b"d1".to_vec(), 0)]);
    }

    #[test]
    fn a_corrupted_block_in_a_page_is_lost_and_the_other_pages_read() {
        let mut t = tape();
        let pop = population(30_000, 3);
        let mut b = builder(3, &pop, 6);
        let clean = write_copy(&mut t, &mut b, KIB64, None);
        let index = read_index(&mut t, clean.file);
        assert!(index.len() >= 3);
        // A block in the middle of page 1.
        let bad = (index[1].block + index[2].block) / 2;
        let c = write_copy(&mut t, &mut b, KIB64, Some(bad));
        let mut copy = read_set_catalog(&mut t.drive, SET, c.file, 1).unwrap();
        assert!(!copy.digest_ok);
        assert_eq!(copy.lost.len(), 1, "{:?}", copy.lost);
        assert_eq!(copy.lost[0].first_block, bad);
        assert_eq!(copy.lost[0].last_block, bad);
        let got = keys(&mut copy.builder);
        let all = sorted(pop);
        assert!(got.len() < all.len());
        assert!(got.len() > all.len() - 2000);
        // Everything outside page 1 survived.
        let page1 = index[1].first_path.clone()..index[2].first_path.clone();
        let outside = |k: &(Vec<u8>, u32)| {
            path_order(&k.0, &page1.start).is_lt() || path_order(&k.0, &page1.end).is_ge()
        };
        let want_outside: Vec<_> = all.iter().filter(|k| outside(k)).cloned().collect();
        let got_outside: Vec<_> = got.iter().filter(|k| outside(k)).cloned().collect();
        assert_eq!(got_outside, want_outside);
        // Finding a path on another page works; on the damaged page, the loss is reported.
        let other = &index[0].first_path;
        let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, other, false).unwrap();
        assert!(!l.entries.is_empty() && l.lost.is_empty());
        let got_set: std::collections::HashSet<_> = got.iter().collect();
        let missing = all
            .iter()
            .find(|k| !outside(k) && !got_set.contains(k))
            .unwrap();
        let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, &missing.0, false).unwrap();
        assert!(!l.entries.iter().any(|e| e.session == missing.1));
        assert!(l.lost.iter().any(|x| x.first_block == bad), "{:?}", l.lost);
    }

    #[test]
    fn the_external_sort_merges_many_runs() {
        let mut t = tape();
        let pop = population(40_000, 3);
        let mut b = SetCatalogBuilder::new(SET, "s".into()).unwrap();
        b.run_bytes = 32 << 10;
        for s in 0..3 {
            b.add_session(session(s + 1));
        }
        let mut order: Vec<usize> = (0..pop.len()).collect();
        Rng(8).shuffle(&mut order);
        let mut max_runs = 0;
        for i in order {
            b.add_entry(pop[i].1, &entry(&pop[i].0, i as u64)).unwrap();
            max_runs = max_runs.max(b.runs.len());
            assert!(b.mem.len() < b.run_bytes + 4096);
        }
        assert!(
            b.spilled_runs > MERGE_FANIN as u64 * 2,
            "{} runs",
            b.spilled_runs
        );
        assert!(b.runs.len() >= 5);
        // Levels keep the open runs bounded.
        assert!(max_runs < 2 * MERGE_FANIN);
        assert!(b.runs.iter().any(|r| r.level > 0));
        assert_eq!(keys(&mut b), sorted(pop.clone()));
        assert_eq!(b.runs.len(), 1);
        let c = write_copy(&mut t, &mut b, KIB64, None);
        let mut copy = read_set_catalog(&mut t.drive, SET, c.file, 1).unwrap();
        assert!(copy.digest_ok);
        assert_eq!(keys(&mut copy.builder), sorted(pop));
    }

    #[test]
    fn a_long_index_is_split_over_several_records() {
        let mut t = tape();
        let pop = population(9000, 1);
        let mut b = builder(1, &pop, 10);
        b.page_bytes = 1; // one entry per page
        let estimate = b.estimated_tape_bytes(KIB64);
        let c = write_copy(&mut t, &mut b, KIB64, None);
        assert!(estimate >= c.bytes);
        assert_eq!(c.written.pages, 9000);
        // 9000 pages, one block each, after the index (3 PageIndex records).
        assert_eq!(c.blocks, c.written.index_blocks + 9000 + 1);
        assert!(c.written.index_blocks > 1);
        let index = read_index(&mut t, c.file);
        assert_eq!(index.len(), 9000);
        assert_eq!(index[0].block, c.written.index_blocks);
        let p = &index[4500].first_path;
        let l = find_in_set_catalog(&mut t.drive, SET, c.file, 1, p, false).unwrap();
        assert_eq!(l.entries.len(), 1);
        assert!(l.blocks_read <= c.written.index_blocks + 2);
        let mut copy = read_set_catalog(&mut t.drive, SET, c.file, 1).unwrap();
        assert!(copy.digest_ok);
        assert_eq!(keys(&mut copy.builder), sorted(pop));
    }

    /// A drive that lands `skew` blocks away from where LOCATE sends it
    /// (beyond block 0), as some drives do.
    struct Skewed<'a> {
        inner: &'a mut VirtualTape,
        skew: i64,
    }

    impl crate::device::BlockRead for Skewed<'_> {
        fn read_block(
            &mut self,
            buf: &mut [u8],
        ) -> crate::device::DeviceResult<crate::device::ReadOutcome> {
            self.inner.read_block(buf)
        }
    }
    impl BlockWrite for Skewed<'_> {
        fn write_block(
            &mut self,
            block: &[u8],
        ) -> crate::device::DeviceResult<crate::device::WriteOutcome> {
            self.inner.write_block(block)
        }
        fn write_filemarks(
            &mut self,
            count: u32,
            immediate: bool,
        ) -> crate::device::DeviceResult<()> {
            self.inner.write_filemarks(count, immediate)
        }
        fn flush(&mut self) -> crate::device::DeviceResult<()> {
            self.inner.flush()
        }
    }
    impl TapeDrive for Skewed<'_> {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn rewind(&mut self) -> crate::device::DeviceResult<()> {
            self.inner.rewind()
        }
        fn space_filemarks(&mut self, count: i64) -> crate::device::DeviceResult<()> {
            self.inner.space_filemarks(count)
        }
        fn space_blocks(&mut self, count: i64) -> crate::device::DeviceResult<()> {
            self.inner.space_blocks(count)
        }
        fn seek_end_of_data(&mut self) -> crate::device::DeviceResult<()> {
            self.inner.seek_end_of_data()
        }
        fn position(&mut self) -> crate::device::DeviceResult<crate::device::TapePosition> {
            self.inner.position()
        }
        fn locate(&mut self, file: u32, block: u64) -> crate::device::DeviceResult<()> {
            let block = if block == 0 {
                0
            } else {
                block.saturating_add_signed(self.skew)
            };
            self.inner.locate(file, block)
        }
        fn status(&mut self) -> crate::device::DeviceResult<crate::device::DriveStatus> {
            self.inner.status()
        }
        fn max_block_size(&self) -> usize {
            self.inner.max_block_size()
        }
    }

    #[test]
    fn a_drive_that_locates_one_block_off_is_corrected() {
        let mut t = tape();
        let pop = population(20_000, 2);
        let mut b = builder(2, &pop, 11);
        let c = write_copy(&mut t, &mut b, KIB64, None);
        let index = read_index(&mut t, c.file);
        let all = sorted(pop);
        for skew in [-1i64, 1] {
            let mut d = Skewed {
                inner: &mut t.drive,
                skew,
            };
            for r in &index {
                let p = &r.first_path;
                let l = find_in_set_catalog(&mut d, SET, c.file, 1, p, false).unwrap();
                let want: Vec<_> = all.iter().filter(|(q, _)| q == p).cloned().collect();
                assert_eq!(lookup_keys(&l), want, "skew {skew}");
                assert!(l.lost.is_empty(), "{:?}", l.lost);
            }
        }
    }

    /// Frame hand-made records as a set catalog tape file.
    fn write_raw(t: &mut Tape, records: &[(RecordType, Vec<u8>)]) -> u32 {
        let file = t.next_file;
        let mut framer = set_catalog_framer(file, KIB64);
        t.drive.seek_end_of_data().unwrap();
        let drive = &mut t.drive;
        let mut put = |blk: Vec<u8>| -> Result<Vec<u8>> {
            drive.write_block(&blk)?;
            Ok(Vec::new())
        };
        for (ty, body) in records {
            framer.push_record(*ty, 0, &[body], &mut put).unwrap();
        }
        put(framer.finish()).unwrap();
        t.drive.write_filemarks(1, false).unwrap();
        t.next_file += 1;
        file
    }

    fn header(volumes: u32, sessions: u32, entries: u64, pages: u32) -> Vec<u8> {
        to_cbor(&SetCatalogHeader {
            set_uuid: SET,
            set_name: "h".into(),
            volume_seq: 1,
            written: Timestamp::default(),
            volumes,
            sessions,
            entries,
            pages,
            base: None,
        })
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let mut t = tape();
        for h in [
            header(MAX_VOLUMES + 1, 0, 0, 0),
            header(0, MAX_SESSIONS + 1, 0, 0),
            header(0, 0, u64::MAX, MAX_PAGES + 1),
            header(0, 0, 1, 2),
        ] {
            let f = write_raw(&mut t, &[(RecordType::SetCatalogHeader, h)]);
            let e = read_set_catalog(&mut t.drive, SET, f, 1).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{e}");
            assert!(find_in_set_catalog(&mut t.drive, SET, f, 1, b"a", false).is_err());
        }
        // An index claiming more pages than the header: not used; the
        // lookup reads the whole stream and still finds the path.
        let e = |p: &[u8]| {
            let mut body = Vec::new();
            encode_set_catalog_entry(0, &entry(p, 0), &mut body);
            (RecordType::SetCatalogEntry, body)
        };
        let refs = |n: usize| PageIndex {
            pages: (0..n)
                .map(|i| PageRef {
                    first_path: b"a".to_vec(),
                    block: 1 + i as u64,
                    entries: 1,
                })
                .collect(),
        };
        let f = write_raw(
            &mut t,
            &[
                (RecordType::SetCatalogHeader, header(0, 0, 2, 1)),
                (RecordType::PageIndex, to_cbor(&refs(3))),
                e(b"a"),
                e(b"b"),
            ],
        );
        let l = find_in_set_catalog(&mut t.drive, SET, f, 1, b"b", false).unwrap();
        assert!(l.scanned);
        assert_eq!(lookup_keys(&l), [(b"b".to_vec(), 0)]);
        assert!(!l.lost.is_empty());
        // More VolumeInfo records than announced are ignored.
        let f = write_raw(
            &mut t,
            &[
                (RecordType::SetCatalogHeader, header(1, 0, 0, 0)),
                (RecordType::VolumeInfo, to_cbor(&volume(1))),
                (RecordType::VolumeInfo, to_cbor(&volume(2))),
            ],
        );
        let copy = read_set_catalog(&mut t.drive, SET, f, 1).unwrap();
        assert_eq!(copy.builder.volumes().len(), 1);
        assert_eq!(copy.lost.len(), 1);
        assert!(!copy.digest_ok, "no SetCatalogEnd");
        // Session indices out of any range are refused, so the builder's
        // next index stays sane.
        let mut far = session(1);
        far.index = u32::MAX;
        let mut body = Vec::new();
        encode_set_catalog_entry(u32::MAX - 1, &entry(b"x", 0), &mut body);
        let f = write_raw(
            &mut t,
            &[
                (RecordType::SetCatalogHeader, header(0, 1, 1, 0)),
                (RecordType::SessionInfo, to_cbor(&far)),
                (RecordType::SetCatalogEntry, body),
            ],
        );
        let mut copy = read_set_catalog(&mut t.drive, SET, f, 1).unwrap();
        assert_eq!(copy.builder.entries(), 0);
        assert!(copy.builder.sessions().is_empty());
        assert_eq!(copy.lost.len(), 2, "{:?}", copy.lost);
        assert_eq!(copy.builder.add_session(session(2)), 1);
    }
}
