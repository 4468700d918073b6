//! Recording a session while `tapir write` runs.
//!
//! The session row is created *pending*; entries are buffered and written in
//! short transactions (memory and lock time stay bounded whatever the
//! session's size), but every query ignores pending sessions. The write job
//! calls [`SessionRecorder::commit`] only after the final synchronous
//! filemark returned, so the catalog never shows a session the tape lacks.
//! A failed write calls [`SessionRecorder::abort`] (dropping the recorder
//! does the same); a crash leaves a pending session that stays invisible and
//! is replaced by the next write to, or import of, that cartridge.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::format::label::VolumeLabel;
use crate::format::meta::{CatalogEntry, EntryKind, SessionEnd, SessionStart};

use super::ingest::{merge_cartridge_tx, merge_set_tx, CartridgeRecord};
use super::location::{Location, LocationKind};
use super::paths::{self, PathCache};
use super::{now_sec, u64_sql, Catalog, Error, Result};

/// Entries buffered before a flush.
pub const BATCH: usize = 4096;

/// The drive that writes, as far as it can tell.
pub use crate::device::DriveIdentity;

/// Who and what is writing.
#[derive(Debug, Clone, Default)]
pub struct WriterInfo {
    /// The device name (`/dev/nst0`, `vtape:/srv/vtl`): the cartridge is
    /// recorded as being in this drive when the session commits.
    pub drive_name: Option<String>,
    pub drive: Option<DriveIdentity>,
    /// Who ran the job, for the location history.
    pub who: String,
}

/// What the write job knows once the session is on tape.
#[derive(Debug, Clone, Default)]
pub struct WriteDone {
    /// The tape file holding the session's catalog stream.
    pub catalog_tape_file: Option<u32>,
    /// Bytes written to the drive, headers and catalog included.
    pub bytes_written: u64,
    /// The drive reported early warning: mark the cartridge full.
    pub cartridge_full: bool,
}

/// Records one session into the catalog; see the module documentation.
pub struct SessionRecorder<'c> {
    cat: &'c mut Catalog,
    session_id: i64,
    cartridge_id: i64,
    next_seq: i64,
    buf: Vec<CatalogEntry>,
    writer: WriterInfo,
    finished: bool,
}

impl Catalog {
    /// Start recording a session that `write_session` is about to write:
    /// `label` is the cartridge's label as on tape (with its set),
    /// `start` the session's `SessionStart`, `data_tape_file` its data file.
    pub fn begin_session(
        &mut self,
        label: &VolumeLabel,
        start: &SessionStart,
        data_tape_file: u32,
        writer: &WriterInfo,
    ) -> Result<SessionRecorder<'_>> {
        let path = self.path.clone();
        let ctx = "recording a new session";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sql(&path, ctx, e))?;
        let set_id = match &label.set {
            Some(m) => Some(merge_set_tx(&tx, m).map_err(|e| Error::sql(&path, ctx, e))?),
            None => None,
        };
        let cartridge_id = merge_cartridge_tx(&tx, &CartridgeRecord::from_label(label), set_id)
            .map_err(|e| Error::sql(&path, ctx, e))?;
        // A new write to this cartridge means earlier writers of it are gone:
        // their pending sessions will never commit.
        discard_pending(&tx, "cartridge_id = ?1", cartridge_id)
            .map_err(|e| Error::sql(&path, ctx, e))?;
        // The tape says this session number is next, so a committed session
        // with this number is no longer on the cartridge.
        let stale: Option<i64> = tx
            .query_row(
                "SELECT id FROM sessions WHERE cartridge_id = ?1 AND number = ?2",
                params![cartridge_id, start.session],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| Error::sql(&path, ctx, e))?;
        if let Some(id) = stale {
            tracing::warn!(
                "catalog: session {} of {} is being written again; the earlier record of it is marked overwritten",
                start.session,
                label.label
            );
            mark_overwritten(&tx, id).map_err(|e| Error::sql(&path, ctx, e))?;
        }
        discard_pending(&tx, "uuid = ?1", start.session_uuid)
            .map_err(|e| Error::sql(&path, ctx, e))?;
        let drive = writer.drive.clone().unwrap_or_default();
        tx.execute(
            "INSERT INTO sessions (uuid, cartridge_id, set_id, number, data_file, host, started,
                 sources, tapir_version, status, origin, drive_name, drive_vendor, drive_model,
                 drive_serial, drive_firmware, recorded)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', 'write', ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                start.session_uuid,
                cartridge_id,
                set_id,
                start.session,
                data_tape_file,
                start.host,
                start.started.sec,
                join_sources(start.sources.iter().map(|s| s.as_slice())),
                start.tapir_version,
                writer.drive_name,
                drive.vendor,
                drive.model,
                drive.serial,
                drive.firmware,
                now_sec(),
            ],
        )
        .map_err(|e| Error::sql(&path, ctx, e))?;
        let session_id = tx.last_insert_rowid();
        if let Some(j) = &start.job {
            let continues = start.continues.as_ref().map(|c| c.previous_session_uuid);
            note_job(&tx, session_id, j, continues).map_err(|e| Error::sql(&path, ctx, e))?;
        }
        tx.commit().map_err(|e| Error::sql(&path, ctx, e))?;
        Ok(SessionRecorder {
            cat: self,
            session_id,
            cartridge_id,
            next_seq: 0,
            buf: Vec::with_capacity(BATCH),
            writer: writer.clone(),
            finished: false,
        })
    }
}

impl SessionRecorder<'_> {
    /// Add the next entry, in catalog order. Buffered; flushed every [`BATCH`].
    pub fn add(&mut self, e: &CatalogEntry) -> Result<()> {
        self.add_owned(e.clone())
    }

    /// [`SessionRecorder::add`], taking the entry (no copy).
    pub fn add_owned(&mut self, e: CatalogEntry) -> Result<()> {
        self.buf.push(e);
        if self.buf.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.next_seq as u64 + self.buf.len() as u64
    }

    /// Write the buffered entries (still pending) in one short transaction.
    pub fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.cat.path.clone();
        let tx = self
            .cat
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sql(&path, "recording entries", e))?;
        let n = insert_entries(
            &tx,
            &mut PathCache::default(),
            self.session_id,
            self.next_seq,
            self.buf.iter(),
        )
        .map_err(|e| Error::sql(&path, "recording entries", e))?;
        tx.commit()
            .map_err(|e| Error::sql(&path, "recording entries", e))?;
        self.next_seq += n;
        self.buf.clear();
        Ok(())
    }

    /// Make the session and its entries visible. Call only when the whole
    /// session is on the medium (the final synchronous filemark returned).
    pub fn commit(mut self, end: &SessionEnd, done: &WriteDone) -> Result<()> {
        let path = self.cat.path.clone();
        let ctx = "committing the session";
        let tx = self
            .cat
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sql(&path, ctx, e))?;
        let n = insert_entries(
            &tx,
            &mut PathCache::default(),
            self.session_id,
            self.next_seq,
            self.buf.iter(),
        )
        .map_err(|e| Error::sql(&path, ctx, e))?;
        let total = self.next_seq + n;
        tx.execute(
            "UPDATE sessions SET status = 'complete', catalog_file = ?2, ended = ?3, entries = ?4,
                 stored_bytes = ?5, warnings = ?6, skipped = ?7, end_status = ?8
             WHERE id = ?1",
            params![
                self.session_id,
                done.catalog_tape_file,
                end.ended.sec,
                total,
                u64_sql(end.stored_bytes),
                u64_sql(end.warnings),
                u64_sql(end.skipped),
                end.status,
            ],
        )
        .map_err(|e| Error::sql(&path, ctx, e))?;
        tx.execute(
            "UPDATE cartridges SET write_count = write_count + 1,
                 bytes_written = bytes_written + ?2,
                 state = CASE WHEN ?3 AND state = 'writable' THEN 'full' ELSE state END,
                 state_changed = CASE WHEN ?3 AND state = 'writable' THEN ?4 ELSE state_changed END
             WHERE id = ?1",
            params![
                self.cartridge_id,
                u64_sql(done.bytes_written),
                done.cartridge_full,
                now_sec()
            ],
        )
        .map_err(|e| Error::sql(&path, ctx, e))?;
        if let Some(name) = &self.writer.drive_name {
            let loc = Location {
                kind: LocationKind::Drive,
                name: name.clone(),
            };
            let who = if self.writer.who.is_empty() {
                "tapir write"
            } else {
                &self.writer.who
            };
            super::location::note_seen_tx(&tx, self.cartridge_id, &loc, who, "written")
                .map_err(|e| Error::sql(&path, ctx, e))?;
        }
        tx.commit().map_err(|e| Error::sql(&path, ctx, e))?;
        self.buf.clear();
        self.finished = true;
        Ok(())
    }

    /// Forget the session: the write failed. (What reached the tape before the
    /// last checkpoint can be catalogued later with `tapir catalog import`.)
    pub fn abort(mut self) -> Result<()> {
        self.finished = true;
        self.discard()
    }

    fn discard(&mut self) -> Result<()> {
        self.buf.clear();
        let path = self.cat.path.clone();
        let tx = self
            .cat
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sql(&path, "discarding a pending session", e))?;
        discard_pending(&tx, "id = ?1", self.session_id)
            .map_err(|e| Error::sql(&path, "discarding a pending session", e))?;
        tx.commit()
            .map_err(|e| Error::sql(&path, "discarding a pending session", e))
    }
}

impl Drop for SessionRecorder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.discard() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Delete pending sessions matching `cond` (one `?1` parameter) and their entries.
pub(crate) fn discard_pending(
    conn: &Connection,
    cond: &str,
    arg: impl rusqlite::ToSql,
) -> rusqlite::Result<usize> {
    let ids: Vec<i64> = conn
        .prepare(&format!(
            "SELECT id FROM sessions WHERE status = 'pending' AND {cond}"
        ))?
        .query_map([&arg], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        delete_entries(conn, *id)?;
        conn.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
    }
    Ok(ids.len())
}

/// Delete a session's entries (one range of rowids) and what a job saw of
/// their files; returns how many entries.
pub(crate) fn delete_entries(conn: &Connection, session_id: i64) -> rusqlite::Result<usize> {
    let (lo, hi) = super::schema::session_range(session_id);
    conn.execute(
        "DELETE FROM file_state WHERE entry BETWEEN ?1 AND ?2",
        [lo, hi],
    )?;
    conn.execute("DELETE FROM entries WHERE id BETWEEN ?1 AND ?2", [lo, hi])
}

/// A session no longer on its cartridge: hidden from queries; its entries
/// stay until pruned (a re-import of the cartridge brings it back).
pub(crate) fn mark_overwritten(conn: &Connection, session_id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sessions SET status = 'overwritten' WHERE id = ?1",
        [session_id],
    )?;
    Ok(())
}

/// Rows per multi-row INSERT (statement overhead is paid once per group).
/// `OR FAIL`: a failing row ends the statement without undoing the rows
/// before it, so SQLite keeps no statement journal; every caller rolls the
/// whole transaction back on error anyway.
const ROWS_PER_INSERT: usize = 32;
/// Columns of `entries` bound per row.
const ENTRY_COLUMNS: usize = 15;

fn entries_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR FAIL INTO entries (id, path, kind, status, mode, uid, gid, mtime, mtime_ns,
             size, hash, tape_file, block, offset, link) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..ENTRY_COLUMNS {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("?{}", r * ENTRY_COLUMNS + c + 1));
        }
        sql.push(')');
    }
    sql
}

fn bind_entry(
    st: &mut rusqlite::Statement<'_>,
    row: usize,
    id: i64,
    path_id: i64,
    e: &CatalogEntry,
) -> rusqlite::Result<()> {
    let b = row * ENTRY_COLUMNS;
    st.raw_bind_parameter(b + 1, id)?;
    st.raw_bind_parameter(b + 2, path_id)?;
    st.raw_bind_parameter(b + 3, e.kind)?;
    st.raw_bind_parameter(b + 4, e.status)?;
    st.raw_bind_parameter(b + 5, e.mode)?;
    st.raw_bind_parameter(b + 6, e.uid)?;
    st.raw_bind_parameter(b + 7, e.gid)?;
    st.raw_bind_parameter(b + 8, e.mtime.sec)?;
    st.raw_bind_parameter(b + 9, e.mtime.nsec)?;
    st.raw_bind_parameter(b + 10, u64_sql(e.size))?;
    st.raw_bind_parameter(b + 11, e.blake3.as_ref().map(|h| &h[..]))?;
    st.raw_bind_parameter(b + 12, e.position.tape_file)?;
    st.raw_bind_parameter(b + 13, u64_sql(e.position.block))?;
    st.raw_bind_parameter(b + 14, e.position.offset)?;
    st.raw_bind_parameter(b + 15, e.link_target.as_deref())?;
    Ok(())
}

/// Insert entries `first_seq..` of a session; returns how many.
pub(crate) fn insert_entries<B: std::borrow::Borrow<CatalogEntry>>(
    conn: &Connection,
    cache: &mut PathCache,
    session_id: i64,
    first_seq: i64,
    entries: impl IntoIterator<Item = B>,
) -> rusqlite::Result<i64> {
    // Built once: the recorder inserts a batch at a time.
    static MANY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static ONE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let mut many = conn.prepare_cached(MANY.get_or_init(|| entries_insert_sql(ROWS_PER_INSERT)))?;
    let mut one = conn.prepare_cached(ONE.get_or_init(|| entries_insert_sql(1)))?;
    let mut group: Vec<(i64, i64, B)> = Vec::with_capacity(ROWS_PER_INSERT);
    let mut seq = first_seq;
    for e in entries {
        if seq >= super::schema::MAX_SESSION_ENTRIES {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                "a session holds more than 2^32 entries".into(),
            ));
        }
        let entry = e.borrow();
        let is_dir = entry.kind == EntryKind::Dir.code();
        let path_id = paths::intern(conn, cache, &entry.path, is_dir)?;
        group.push((super::schema::entry_id(session_id, seq), path_id, e));
        seq += 1;
        if group.len() == ROWS_PER_INSERT {
            for (row, (id, path_id, e)) in group.iter().enumerate() {
                bind_entry(&mut many, row, *id, *path_id, e.borrow())?;
            }
            many.raw_execute()?;
            group.clear();
        }
    }
    for (id, path_id, e) in &group {
        bind_entry(&mut one, 0, *id, *path_id, e.borrow())?;
        one.raw_execute()?;
    }
    cache.flush(conn)?;
    Ok(seq - first_seq)
}

/// Record which job wrote session `id`, at which level, relative to what.
/// `continues`: the session part on the previous cartridge this one
/// continues, so a job's run is found whole from its last part.
pub(crate) fn note_job(
    conn: &Connection,
    id: i64,
    j: &crate::format::meta::JobRun,
    continues: Option<[u8; 16]>,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sessions SET job = ?2, level = ?3, base = ?4, continues = ?5, copy = ?6
         WHERE id = ?1",
        params![id, j.name, j.level, j.base, continues, j.copy],
    )?;
    Ok(())
}

/// Source paths as stored: NUL-separated (archive paths never hold NUL).
pub(crate) fn join_sources<'a>(sources: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in sources.enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(s);
    }
    out
}

/// The inverse of `join_sources`: the sources as separate paths.
pub fn split_sources(b: &[u8]) -> Vec<Vec<u8>> {
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0).map(|s| s.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::query::FindQuery;
    use crate::catalog::testutil::*;

    fn visible(cat: &Catalog, path: &str) -> usize {
        cat.find(&FindQuery::new(path)).unwrap().versions.len()
    }

    fn count(cat: &Catalog, sql: &str) -> i64 {
        cat.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn entries_are_invisible_until_commit() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let s = start(&l, 2, 1, 1_700_000_200);
        let mut rec = cat
            .begin_session(&l, &s, 2, &WriterInfo::default())
            .unwrap();
        for i in 0..(BATCH + 10) {
            rec.add(&entry(&format!("etc/f{i}"), 1, 1, 2, i as u64))
                .unwrap();
        }
        // Flushed batches are in the database, but pending.
        assert_eq!(rec.entries(), (BATCH + 10) as u64);
        rec.flush().unwrap();
        assert_eq!(
            count(rec.cat, "SELECT count(*) FROM entries"),
            (BATCH + 10) as i64
        );
        assert_eq!(visible(rec.cat, "etc/f1"), 0);
        assert!(rec.cat.sets(None).unwrap().iter().all(|s| s.sessions == 0));
        rec.commit(
            &end((BATCH + 10) as u64, 1_700_000_300),
            &WriteDone {
                catalog_tape_file: Some(3),
                bytes_written: 1 << 20,
                cartridge_full: false,
            },
        )
        .unwrap();
        assert_eq!(visible(&cat, "etc/f1"), 1);
        assert_eq!(visible(&cat, &format!("etc/f{}", BATCH + 9)), 1);
        let v = &cat.find(&FindQuery::new("etc/f1")).unwrap().versions[0];
        assert_eq!(v.cartridge.label, "TPR001L9");
        assert_eq!(v.session.number, 1);
        assert_eq!(
            count(&cat, "SELECT entries FROM sessions"),
            (BATCH + 10) as i64
        );
        assert_eq!(count(&cat, "SELECT write_count FROM cartridges"), 1);
        assert_eq!(count(&cat, "SELECT bytes_written FROM cartridges"), 1 << 20);
    }

    #[test]
    fn abort_and_drop_leave_nothing() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let mut rec = cat
            .begin_session(
                &l,
                &start(&l, 2, 1, 1_700_000_200),
                2,
                &WriterInfo::default(),
            )
            .unwrap();
        for i in 0..(BATCH * 2) {
            rec.add(&entry(&format!("etc/f{i}"), 1, 1, 2, i as u64))
                .unwrap();
        }
        rec.abort().unwrap();
        assert_eq!(count(&cat, "SELECT count(*) FROM entries"), 0);
        assert_eq!(count(&cat, "SELECT count(*) FROM sessions"), 0);

        {
            let mut rec = cat
                .begin_session(
                    &l,
                    &start(&l, 3, 1, 1_700_000_200),
                    2,
                    &WriterInfo::default(),
                )
                .unwrap();
            for i in 0..(BATCH + 1) {
                rec.add(&entry(&format!("etc/f{i}"), 1, 1, 2, i as u64))
                    .unwrap();
            }
            // Dropped without commit: a failed write that forgot to abort.
        }
        assert_eq!(count(&cat, "SELECT count(*) FROM entries"), 0);
        assert_eq!(count(&cat, "SELECT count(*) FROM sessions"), 0);
        // The cartridge itself is known (its label is on tape).
        assert_eq!(count(&cat, "SELECT count(*) FROM cartridges"), 1);
    }

    #[test]
    fn a_crashed_write_stays_invisible_and_the_next_write_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        {
            let mut cat = Catalog::open(&p).unwrap();
            let mut rec = cat
                .begin_session(
                    &l,
                    &start(&l, 2, 1, 1_700_000_200),
                    2,
                    &WriterInfo::default(),
                )
                .unwrap();
            for i in 0..(BATCH + 1) {
                rec.add(&entry(&format!("etc/f{i}"), 1, 1, 2, i as u64))
                    .unwrap();
            }
            // Simulate a crash: no commit, no abort, no destructor.
            std::mem::forget(rec);
        }
        let mut cat = Catalog::open(&p).unwrap();
        assert_eq!(count(&cat, "SELECT count(*) FROM entries"), BATCH as i64);
        assert_eq!(visible(&cat, "etc/f0"), 0);
        // The next write to the cartridge (session 1 again: nothing reached
        // the tape) replaces the pending one.
        let mut rec = cat
            .begin_session(
                &l,
                &start(&l, 3, 1, 1_700_000_900),
                2,
                &WriterInfo::default(),
            )
            .unwrap();
        rec.add(&entry("etc/new", 1, 1, 2, 0)).unwrap();
        rec.commit(&end(1, 1_700_001_000), &WriteDone::default())
            .unwrap();
        assert_eq!(count(&cat, "SELECT count(*) FROM entries"), 1);
        assert_eq!(count(&cat, "SELECT count(*) FROM sessions"), 1);
        assert_eq!(visible(&cat, "etc/new"), 1);
    }

    #[test]
    fn commit_records_drive_location_and_full_state() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let w = WriterInfo {
            drive_name: Some("/dev/nst0".into()),
            drive: Some(DriveIdentity {
                serial: Some("HU1234".into()),
                firmware: Some("J4D1".into()),
                ..Default::default()
            }),
            who: "ops".into(),
        };
        let mut rec = cat
            .begin_session(&l, &start(&l, 2, 1, 1_700_000_200), 2, &w)
            .unwrap();
        rec.add(&entry("etc/a", 1, 1, 2, 0)).unwrap();
        rec.commit(
            &end(1, 1_700_000_300),
            &WriteDone {
                catalog_tape_file: Some(3),
                bytes_written: 10,
                cartridge_full: true,
            },
        )
        .unwrap();
        let m = cat.media_show("TPR001L9").unwrap();
        assert_eq!(m.media.brief.state, "full");
        let loc = m.media.brief.location.unwrap();
        assert_eq!(loc.location.to_string(), "drive:/dev/nst0");
        assert_eq!(loc.by, "ops");
        assert_eq!(m.sessions[0].drive_serial.as_deref(), Some("HU1234"));
        assert_eq!(m.sessions[0].drive_firmware.as_deref(), Some("J4D1"));
    }

    #[test]
    fn two_writers_record_into_one_catalog_at_once() {
        // Two drives, two jobs, one catalog file: interleaved batches from
        // two threads with their own connections.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        drop(Catalog::open(&p).unwrap());
        let job = |n: u8| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut cat = Catalog::open(&p).unwrap();
                let l = label(&format!("TPR00{n}L9"), n, Some((n, "nightly", 1)));
                let mut rec = cat
                    .begin_session(
                        &l,
                        &start(&l, 100 + n, 1, 1_700_000_000),
                        2,
                        &WriterInfo::default(),
                    )
                    .unwrap();
                for i in 0..(3 * BATCH) {
                    rec.add(&entry(
                        &format!("shared/d{}/f{i}", i % 7),
                        1,
                        1,
                        2,
                        i as u64,
                    ))
                    .unwrap();
                }
                rec.commit(
                    &end((3 * BATCH) as u64, 1_700_000_100),
                    &WriteDone::default(),
                )
                .unwrap();
            })
        };
        let (a, b) = (job(1), job(2));
        a.join().unwrap();
        b.join().unwrap();
        let cat = Catalog::open_existing(&p).unwrap();
        let v = cat.find(&FindQuery::new("shared/d3/f10")).unwrap().versions;
        let mut labels: Vec<&str> = v.iter().map(|v| v.cartridge.label.as_str()).collect();
        labels.sort();
        assert_eq!(labels, vec!["TPR001L9", "TPR002L9"]);
        assert_eq!(
            count(&cat, "SELECT count(*) FROM entries"),
            6 * BATCH as i64
        );
        // The shared paths were stored once.
        assert_eq!(
            count(&cat, "SELECT count(*) FROM paths"),
            (3 * BATCH + 7 + 1) as i64
        );
        assert!(cat.check(true).unwrap().problems.is_empty());
    }

    #[test]
    fn sources_round_trip() {
        let v: Vec<&[u8]> = vec![b"/etc", b"/home/x y"];
        assert_eq!(
            split_sources(&join_sources(v.iter().copied())),
            vec![b"/etc".to_vec(), b"/home/x y".to_vec()]
        );
        assert!(split_sources(&join_sources(std::iter::empty())).is_empty());
    }
}
