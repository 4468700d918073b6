//! Import and merge: what a cartridge says (its label, its sessions and
//! their catalogs or scans) merged into the catalog by UUID.
//!
//! Sets, cartridges and sessions are keyed by their UUIDs, never by names or
//! numbers, so the same facts arriving twice (importing a cartridge again, or
//! a set-wide catalog copy repeating what its earlier cartridges said)
//! change nothing, and facts about cartridges not in hand (a set-wide copy
//! read from the last cartridge of a set) merge the same way as those read
//! from the cartridge itself: [`Catalog::merge_cartridge`] and
//! [`Catalog::merge_session`] are the entry points for such copies.
//! Whether an incoming session replaces a recorded one is the pure
//! [`decide`].

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::format::label::{uuid_text, SetMembership, VolumeLabel};
use crate::format::meta::{CatalogEntry, SessionEnd, Timestamp};
use crate::pipeline::list::{ListSource, Listing, SessionEntries};

use super::location::{Location, LocationKind};
use super::paths::PathCache;
use super::record::{insert_entries, join_sources};
use super::{now_sec, u64_sql, Catalog, Error, Result};

/// Who imports, and from where.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The drive the cartridge was read in: recorded as its location.
    pub drive_name: Option<String>,
    /// Who ran the import, for the location history.
    pub who: String,
}

/// What happened to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeAction {
    /// The catalog did not know it.
    Added,
    /// The catalog's record was pending, interrupted or different; the
    /// cartridge's version replaced it.
    Replaced,
    /// The catalog already knew it (or knows more than a scan could tell).
    Unchanged,
}

/// How a session's entries were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The session's own catalog stream, digest verified.
    Catalog,
    /// A scan of the data stream (catalog missing or damaged).
    Scan,
    /// A set-wide catalog copy read from another cartridge.
    SetCopy,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Catalog => "catalog",
            Origin::Scan => "scan",
            Origin::SetCopy => "set-copy",
        }
    }
}

/// A session's status in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Pending,
    Complete,
    Interrupted,
    Overwritten,
}

impl SessionStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => SessionStatus::Pending,
            "complete" => SessionStatus::Complete,
            "interrupted" => SessionStatus::Interrupted,
            "overwritten" => SessionStatus::Overwritten,
            _ => return None,
        })
    }
}

/// The catalog's record of a session, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub status: SessionStatus,
    pub entries: u64,
}

/// The incoming version of a session, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The session was closed on tape (end record and catalog present).
    pub complete: bool,
    pub origin: Origin,
    pub entries: u64,
}

/// Whether an incoming session replaces the catalog's record of it.
///
/// The cartridge is the truth, with one exception: a scan of a damaged
/// cartridge sees fewer entries than were written, and a complete record
/// made when the session was written is kept over it.
pub fn decide(existing: Option<Existing>, incoming: Incoming) -> MergeAction {
    let Some(e) = existing else {
        return MergeAction::Added;
    };
    match e.status {
        SessionStatus::Pending | SessionStatus::Overwritten => MergeAction::Replaced,
        SessionStatus::Interrupted => {
            if incoming.complete || incoming.entries > e.entries {
                MergeAction::Replaced
            } else {
                MergeAction::Unchanged
            }
        }
        SessionStatus::Complete => {
            if incoming.complete && incoming.origin != Origin::Scan && incoming.entries != e.entries
            {
                MergeAction::Replaced
            } else {
                MergeAction::Unchanged
            }
        }
    }
}

/// A cartridge's identity, as its label gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartridgeRecord {
    pub uuid: [u8; 16],
    pub label: String,
    pub pool: String,
    pub set: Option<SetMembership>,
    pub labelled: Timestamp,
    pub host: String,
    pub block_size: u32,
    pub worm: bool,
}

impl CartridgeRecord {
    pub fn from_label(l: &VolumeLabel) -> Self {
        CartridgeRecord {
            uuid: l.volume_uuid,
            label: l.label.clone(),
            pool: l.pool.clone(),
            set: l.set.clone(),
            labelled: l.labelled,
            host: l.host.clone(),
            block_size: l.block_size,
            worm: l.worm,
        }
    }
}

/// A session as a cartridge (or a set-wide catalog copy) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub uuid: [u8; 16],
    pub number: u32,
    pub data_tape_file: u32,
    pub catalog_tape_file: Option<u32>,
    pub host: Option<String>,
    pub started: Option<Timestamp>,
    pub sources: Vec<Vec<u8>>,
    pub tapir_version: Option<String>,
    pub end: Option<SessionEnd>,
    /// Closed on tape: end record and catalog present.
    pub complete: bool,
    pub origin: Origin,
    pub lost_blocks: u64,
    /// The job that wrote it (from its `SessionStart`).
    pub job: Option<crate::format::meta::JobRun>,
    /// The part on the previous cartridge that this one continues.
    pub continues: Option<[u8; 16]>,
}

impl SessionRecord {
    /// The record of a session listed from a cartridge.
    pub fn from_listed(label: &VolumeLabel, s: &SessionEntries) -> Self {
        let start = s.session.start.as_ref();
        SessionRecord {
            uuid: start
                .map(|st| st.session_uuid)
                .unwrap_or_else(|| synthetic_session_uuid(&label.volume_uuid, s.session.number)),
            number: s.session.number,
            data_tape_file: s.session.data_file,
            catalog_tape_file: s.session.catalog_file,
            host: start
                .map(|st| st.host.clone())
                .or_else(|| label.set.as_ref().map(|m| m.host.clone())),
            started: start.map(|st| st.started),
            sources: start
                .map(|st| st.sources.iter().map(|b| b.to_vec()).collect())
                .unwrap_or_default(),
            tapir_version: start.map(|st| st.tapir_version.clone()),
            end: s.summary.clone(),
            complete: s.closed,
            origin: match s.source {
                ListSource::Catalog => Origin::Catalog,
                ListSource::Scan => Origin::Scan,
            },
            lost_blocks: s
                .lost
                .iter()
                .map(|l| l.last_block.saturating_sub(l.first_block) + 1)
                .sum(),
            job: start.and_then(|st| st.job.clone()),
            continues: start
                .and_then(|st| st.continues.as_ref())
                .map(|c| c.previous_session_uuid),
        }
    }
}

/// A stable UUID for a session whose `SessionStart` could not be read, so
/// importing it again finds the same session.
pub fn synthetic_session_uuid(volume_uuid: &[u8; 16], number: u32) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"tapir unreadable session start\0");
    h.update(volume_uuid);
    h.update(&number.to_le_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub cartridge: String,
    pub volume_uuid: String,
    pub set: Option<String>,
    pub set_uuid: Option<String>,
    pub volume_seq: Option<u32>,
    /// The catalog did not know this cartridge before.
    pub new_cartridge: bool,
    pub sessions: Vec<SessionImported>,
    /// Cartridges with the same label written over by this one (relabelled):
    /// retired, their sessions hidden.
    pub superseded: Vec<String>,
    /// The location recorded because tapir read the cartridge there.
    pub location_recorded: Option<String>,
}

impl ImportReport {
    /// Nothing in the catalog changed.
    pub fn unchanged(&self) -> bool {
        !self.new_cartridge
            && self.superseded.is_empty()
            && self.location_recorded.is_none()
            && self
                .sessions
                .iter()
                .all(|s| s.action == MergeAction::Unchanged)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionImported {
    pub number: u32,
    pub uuid: String,
    pub action: MergeAction,
    pub complete: bool,
    pub source: Origin,
    pub entries: u64,
    pub lost_blocks: u64,
}

/// Result of merging a cartridge's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedCartridge {
    pub id: i64,
    pub set_id: Option<i64>,
    pub new: bool,
    pub superseded: Vec<String>,
}

impl Catalog {
    /// Merge everything a cartridge listing says: label, set, every session
    /// and its entries. Each session is merged in its own transaction.
    pub fn import_listing(
        &mut self,
        listing: &Listing,
        opts: &ImportOptions,
    ) -> Result<ImportReport> {
        let label = &listing.map.label;
        let merged = self.merge_cartridge(&CartridgeRecord::from_label(label))?;
        let mut location_recorded = None;
        if let Some(drive) = &opts.drive_name {
            let loc = Location {
                kind: LocationKind::Drive,
                name: drive.clone(),
            };
            let who = if opts.who.is_empty() {
                "tapir catalog import"
            } else {
                &opts.who
            };
            let changed =
                super::location::note_seen_tx(&self.conn, merged.id, &loc, who, "imported")
                    .map_err(self.err("recording the cartridge's location"))?;
            if changed {
                location_recorded = Some(loc.to_string());
            }
        }
        let mut sessions = Vec::new();
        for s in &listing.sessions {
            let rec = SessionRecord::from_listed(label, s);
            let action = self.merge_session_ids(
                merged.id,
                merged.set_id,
                &rec,
                s.entries.len() as u64,
                &s.entries,
            )?;
            sessions.push(SessionImported {
                number: rec.number,
                uuid: uuid_text(&rec.uuid),
                action,
                complete: rec.complete,
                source: rec.origin,
                entries: s.entries.len() as u64,
                lost_blocks: rec.lost_blocks,
            });
        }
        self.wait_for_checkpoint();
        Ok(ImportReport {
            cartridge: label.label.clone(),
            volume_uuid: uuid_text(&label.volume_uuid),
            set: label.set.as_ref().map(|m| m.set_name.clone()),
            set_uuid: label.set.as_ref().map(|m| uuid_text(&m.set_uuid)),
            volume_seq: label.set.as_ref().map(|m| m.volume_seq),
            new_cartridge: merged.new,
            sessions,
            superseded: merged.superseded,
            location_recorded,
        })
    }

    /// Merge a cartridge's identity (and its set). Catalog-managed facts
    /// (state, counters, location) are left alone.
    pub fn merge_cartridge(&mut self, c: &CartridgeRecord) -> Result<MergedCartridge> {
        let path = self.path.clone();
        let ctx = format!("merging cartridge {}", c.label);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sql(&path, &ctx, e))?;
        let existed: bool = tx
            .query_row("SELECT 1 FROM cartridges WHERE uuid = ?1", [c.uuid], |_| {
                Ok(())
            })
            .optional()
            .map_err(|e| Error::sql(&path, &ctx, e))?
            .is_some();
        let set_id = match &c.set {
            Some(m) => Some(merge_set_tx(&tx, m).map_err(|e| Error::sql(&path, &ctx, e))?),
            None => None,
        };
        let id = merge_cartridge_tx(&tx, c, set_id).map_err(|e| Error::sql(&path, &ctx, e))?;
        let superseded =
            supersede_relabelled(&tx, id, c).map_err(|e| Error::sql(&path, &ctx, e))?;
        tx.commit().map_err(|e| Error::sql(&path, &ctx, e))?;
        Ok(MergedCartridge {
            id,
            set_id,
            new: !existed,
            superseded,
        })
    }

    /// Merge one session of the cartridge `cartridge_uuid` (already merged)
    /// with its entries, in catalog order.
    pub fn merge_session(
        &mut self,
        cartridge_uuid: &[u8; 16],
        rec: &SessionRecord,
        entries: &[CatalogEntry],
    ) -> Result<MergeAction> {
        self.merge_session_stream(cartridge_uuid, rec, entries.len() as u64, entries)
    }

    /// [`Catalog::merge_session`] with the entries streamed (a catalog copy
    /// read block by block): `count` is how many the stream holds (its
    /// `CatalogEnd` says), so the merge can be decided before reading them.
    /// The session is merged in one transaction; a stream that yields a
    /// different number of entries is refused and nothing changes.
    pub fn merge_session_stream<B: std::borrow::Borrow<CatalogEntry> + Send>(
        &mut self,
        cartridge_uuid: &[u8; 16],
        rec: &SessionRecord,
        count: u64,
        entries: impl IntoIterator<Item = B> + Send,
    ) -> Result<MergeAction> {
        let (cid, set_id): (i64, Option<i64>) = self
            .conn
            .query_row(
                "SELECT id, set_id FROM cartridges WHERE uuid = ?1",
                [cartridge_uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err("finding the session's cartridge"))?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "cartridge {} is not in the catalog; merge it first",
                    uuid_text(cartridge_uuid)
                ))
            })?;
        self.merge_session_ids(cid, set_id, rec, count, entries)
    }

    fn merge_session_ids<B: std::borrow::Borrow<CatalogEntry> + Send>(
        &mut self,
        cartridge_id: i64,
        set_id: Option<i64>,
        rec: &SessionRecord,
        count: u64,
        entries: impl IntoIterator<Item = B> + Send,
    ) -> Result<MergeAction> {
        let path = self.path.clone();
        let ctx = format!("merging session {}", rec.number);
        let e = |err| Error::sql(&path, &ctx, err);
        // The checkpoint of the session merged before runs beside this one's
        // inserts; it is waited for before this commit.
        let previous = self.checkpoint.take();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let existing: Option<(i64, String, i64, i64)> = tx
            .query_row(
                "SELECT id, status, entries, cartridge_id FROM sessions WHERE uuid = ?1",
                [rec.uuid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(e)?;
        let action = decide(
            existing.as_ref().map(|(_, status, n, _)| Existing {
                status: SessionStatus::parse(status).unwrap_or(SessionStatus::Pending),
                entries: *n as u64,
            }),
            Incoming {
                complete: rec.complete,
                origin: rec.origin,
                entries: count,
            },
        );
        if action == MergeAction::Unchanged {
            drop(tx);
            self.checkpoint = previous;
            return Ok(action);
        }
        // Another session under the same number on this cartridge is gone
        // from it (the number now holds this one).
        let clash: Option<i64> = tx
            .query_row(
                "SELECT id FROM sessions WHERE cartridge_id = ?1 AND number = ?2 AND uuid != ?3",
                params![cartridge_id, rec.number, rec.uuid],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        if let Some(id) = clash {
            delete_session(&tx, id).map_err(e)?;
        }
        let end = rec.end.as_ref();
        let status = if rec.complete {
            "complete"
        } else {
            "interrupted"
        };
        let values = params![
            rec.uuid,
            cartridge_id,
            set_id,
            rec.number,
            rec.data_tape_file,
            rec.catalog_tape_file,
            rec.host,
            rec.started.map(|t| t.sec),
            end.map(|x| x.ended.sec),
            join_sources(rec.sources.iter().map(|s| s.as_slice())),
            rec.tapir_version,
            status,
            rec.origin.as_str(),
            u64_sql(count),
            end.map(|x| u64_sql(x.stored_bytes)),
            end.map(|x| u64_sql(x.warnings)),
            end.map(|x| u64_sql(x.skipped)),
            end.map(|x| x.status),
            u64_sql(rec.lost_blocks),
            now_sec(),
        ];
        let session_id = match existing {
            Some((id, ..)) => {
                super::record::delete_entries(&tx, id).map_err(e)?;
                tx.execute(
                    "UPDATE sessions SET uuid = ?1, cartridge_id = ?2, set_id = ?3, number = ?4,
                         data_file = ?5, catalog_file = ?6, host = ?7, started = ?8, ended = ?9,
                         sources = ?10, tapir_version = ?11, status = ?12, origin = ?13,
                         entries = ?14, stored_bytes = ?15, warnings = ?16, skipped = ?17,
                         end_status = ?18, lost_blocks = ?19, recorded = ?20, entries_pruned = 0
                     WHERE id = ?21",
                    rusqlite::params_from_iter(
                        values.iter().copied().chain([&id as &dyn rusqlite::ToSql]),
                    ),
                )
                .map_err(e)?;
                id
            }
            None => {
                tx.execute(
                    "INSERT INTO sessions (uuid, cartridge_id, set_id, number, data_file,
                         catalog_file, host, started, ended, sources, tapir_version, status, origin,
                         entries, stored_bytes, warnings, skipped, end_status, lost_blocks, recorded)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                         ?16, ?17, ?18, ?19, ?20)",
                    values,
                )
                .map_err(e)?;
                tx.last_insert_rowid()
            }
        };
        if let Some(j) = &rec.job {
            super::record::note_job(&tx, session_id, j, rec.continues).map_err(e)?;
        }
        let mut cache = PathCache::default();
        // The entries are produced (decoded from a catalog copy) on a thread
        // of their own, beside the inserts; a few batches ahead at most.
        let n = std::thread::scope(|scope| {
            let (to_insert, batches) = std::sync::mpsc::sync_channel::<Vec<B>>(DECODED_BATCHES);
            scope.spawn(move || {
                let mut batch = Vec::with_capacity(DECODED_BATCH);
                for entry in entries {
                    batch.push(entry);
                    if batch.len() == DECODED_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(DECODED_BATCH));
                        if to_insert.send(full).is_err() {
                            return; // the insert failed; its error is reported
                        }
                    }
                }
                let _ = to_insert.send(batch);
            });
            insert_entries(
                &tx,
                &mut cache,
                session_id,
                0,
                batches.into_iter().flatten(),
            )
        })
        .map_err(e)?;
        if n as u64 != count {
            // Dropping the transaction rolls the session back.
            return Err(Error::Invalid(format!(
                "session {}: the stream held {n} entries, not the {count} announced; nothing merged",
                rec.number
            )));
        }
        if let Some(h) = previous {
            let _ = h.join();
        }
        // This commit does not checkpoint: a thread of its own does, beside
        // the next session's inserts.
        tx.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(e)?;
        let committed = tx.commit();
        let restored = self
            .conn
            .execute_batch(&format!("PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}"));
        committed.and(restored).map_err(e)?;
        self.begin_background_checkpoint();
        Ok(action)
    }
}

/// Entries handed from the decoding thread to the inserts at once, and
/// batches queued between them.
const DECODED_BATCH: usize = 1024;
const DECODED_BATCHES: usize = 4;

/// SQLite's default: a commit that leaves the write-ahead log longer than
/// this many pages checkpoints it.
const WAL_AUTOCHECKPOINT: u32 = 1000;

/// The id of the set, inserting it if new; `created` is the earliest join seen.
pub(crate) fn merge_set_tx(conn: &Connection, m: &SetMembership) -> rusqlite::Result<i64> {
    let found: Option<(i64, i64)> = conn
        .query_row(
            "SELECT id, created FROM sets WHERE uuid = ?1",
            [m.set_uuid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match found {
        Some((id, created)) => {
            if m.joined.sec < created {
                conn.execute(
                    "UPDATE sets SET created = ?2 WHERE id = ?1",
                    params![id, m.joined.sec],
                )?;
            }
            Ok(id)
        }
        None => {
            conn.execute(
                "INSERT INTO sets (uuid, name, host, created) VALUES (?1, ?2, ?3, ?4)",
                params![m.set_uuid, m.set_name, m.host, m.joined.sec],
            )?;
            Ok(conn.last_insert_rowid())
        }
    }
}

/// The id of the cartridge, inserting it or updating what its label says.
pub(crate) fn merge_cartridge_tx(
    conn: &Connection,
    c: &CartridgeRecord,
    set_id: Option<i64>,
) -> rusqlite::Result<i64> {
    let seq = c.set.as_ref().map(|m| m.volume_seq);
    let prev = c.set.as_ref().and_then(|m| m.previous_volume);
    let found: Option<i64> = conn
        .query_row("SELECT id FROM cartridges WHERE uuid = ?1", [c.uuid], |r| {
            r.get(0)
        })
        .optional()?;
    match found {
        Some(id) => {
            // Only when something differs, so a repeat changes nothing.
            conn.execute(
                "UPDATE cartridges SET label = ?2, pool = ?3, set_id = ?4, volume_seq = ?5,
                     previous_volume = ?6, labelled = ?7, host = ?8, block_size = ?9, worm = ?10
                 WHERE id = ?1 AND (label IS NOT ?2 OR pool IS NOT ?3 OR set_id IS NOT ?4
                     OR volume_seq IS NOT ?5 OR previous_volume IS NOT ?6 OR labelled IS NOT ?7
                     OR host IS NOT ?8 OR block_size IS NOT ?9 OR worm IS NOT ?10)",
                params![
                    id,
                    c.label,
                    c.pool,
                    set_id,
                    seq,
                    prev,
                    c.labelled.sec,
                    c.host,
                    c.block_size,
                    c.worm
                ],
            )?;
            Ok(id)
        }
        None => {
            conn.execute(
                "INSERT INTO cartridges (uuid, label, pool, set_id, volume_seq, previous_volume,
                     labelled, host, block_size, worm, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    c.uuid,
                    c.label,
                    c.pool,
                    set_id,
                    seq,
                    prev,
                    c.labelled.sec,
                    c.host,
                    c.block_size,
                    c.worm,
                    now_sec()
                ],
            )?;
            Ok(conn.last_insert_rowid())
        }
    }
}

/// A cartridge labelled later with the same label was written over the
/// older one (relabelled with `--force`): retire the old record and hide its
/// sessions. Returns descriptions of what was superseded.
fn supersede_relabelled(
    conn: &Connection,
    id: i64,
    c: &CartridgeRecord,
) -> rusqlite::Result<Vec<String>> {
    let olds: Vec<(i64, [u8; 16])> = conn
        .prepare(
            "SELECT id, uuid FROM cartridges
             WHERE label = ?1 AND id != ?2 AND labelled < ?3 AND state != 'retired'",
        )?
        .query_map(params![c.label, id, c.labelled.sec], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (old, uuid) in olds {
        conn.execute(
            "UPDATE cartridges SET state = 'retired', state_changed = ?2, state_note = ?3 WHERE id = ?1",
            params![
                old,
                now_sec(),
                format!("relabelled: the cartridge now carries volume {}", uuid_text(&c.uuid))
            ],
        )?;
        let sessions: Vec<i64> = conn
            .prepare("SELECT id FROM sessions WHERE cartridge_id = ?1")?
            .query_map([old], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for s in sessions {
            super::record::mark_overwritten(conn, s)?;
        }
        out.push(format!("{} (volume {})", c.label, uuid_text(&uuid)));
    }
    Ok(out)
}

/// Delete a session and its entries.
pub(crate) fn delete_session(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    super::record::delete_entries(conn, id)?;
    conn.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
    Ok(())
}

/// What importing a set catalog copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SetCopyImport {
    /// Cartridges of the set other than the one read.
    pub cartridges: u64,
    /// Their sessions merged, and the entries they hold.
    pub sessions: u64,
    pub entries: u64,
    pub added: u64,
}

impl Catalog {
    /// Merge what a set catalog copy says about the set's *other*
    /// cartridges (`except`, the one in hand, is imported from its own
    /// catalogs): their labels and their sessions with every entry. This is
    /// how one cartridge rebuilds a lost host catalog for its whole set.
    pub fn import_set_copy(
        &mut self,
        builder: &mut crate::pipeline::setcat::SetCatalogBuilder,
        except: &[u8; 16],
    ) -> Result<SetCopyImport> {
        use std::collections::HashMap;
        let set_uuid = builder.set_uuid();
        let set_name = builder.set_name().to_string();
        let volumes = builder.volumes().to_vec();
        let sessions = builder.sessions().to_vec();
        let mut report = SetCopyImport::default();
        let mut volume_of: HashMap<u32, [u8; 16]> = HashMap::new();
        for v in volumes.iter().filter(|v| &v.volume_uuid != except) {
            let labelled = v.labelled.unwrap_or_default();
            let host = v.host.clone().unwrap_or_default();
            self.merge_cartridge(&CartridgeRecord {
                uuid: v.volume_uuid,
                label: v.label.clone(),
                pool: v.pool.clone(),
                set: Some(SetMembership {
                    set_uuid,
                    set_name: set_name.clone(),
                    volume_seq: v.volume_seq,
                    previous_volume: v.previous_volume,
                    joined: labelled,
                    host: host.clone(),
                }),
                labelled,
                host,
                block_size: v.block_size.unwrap_or(0),
                worm: false,
            })?;
            if let Some(error) = &v.write_error {
                self.set_media_state(
                    &crate::format::label::uuid_text(&v.volume_uuid),
                    super::query::MediaState::Damaged,
                    Some(&format!("writing failed: {error}")),
                )?;
            }
            volume_of.insert(v.volume_seq, v.volume_uuid);
            report.cartridges += 1;
        }
        // One pass over the copy, each session's entries to a spill of its own.
        let mut spills: HashMap<u32, (std::io::BufWriter<std::fs::File>, u64)> = HashMap::new();
        let wanted: HashMap<u32, &crate::format::setcat::SessionInfo> = sessions
            .iter()
            .filter(|s| volume_of.contains_key(&s.volume_seq))
            .map(|s| (s.index, s))
            .collect();
        let io = |e: std::io::Error| Error::Invalid(format!("spilling a set catalog copy: {e}"));
        builder
            .for_each_entry(|e| {
                if !wanted.contains_key(&e.session) {
                    return Ok(());
                }
                let spill = match spills.entry(e.session) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let f = tempfile::tempfile().map_err(|err| {
                            crate::pipeline::Error::io("creating a set copy spill", err)
                        })?;
                        v.insert((std::io::BufWriter::new(f), 0))
                    }
                };
                let body = crate::format::meta::to_cbor(&e.entry);
                use std::io::Write;
                spill
                    .0
                    .write_all(&(body.len() as u32).to_le_bytes())
                    .and_then(|_| spill.0.write_all(&body))
                    .map_err(|err| crate::pipeline::Error::io("writing a set copy spill", err))?;
                spill.1 += 1;
                Ok(())
            })
            .map_err(|e| Error::Invalid(format!("reading the set catalog copy: {e}")))?;
        for (index, info) in wanted {
            let Some(volume) = volume_of.get(&info.volume_seq) else {
                continue;
            };
            let (file, count) = match spills.remove(&index) {
                Some((w, n)) => (Some(w.into_inner().map_err(|e| io(e.into_error()))?), n),
                None => (None, 0),
            };
            let mut reader = file
                .map(|mut f| std::io::Seek::rewind(&mut f).map(|_| std::io::BufReader::new(f)))
                .transpose()
                .map_err(io)?;
            let entries = std::iter::from_fn(|| {
                let r = reader.as_mut()?;
                let mut len = [0u8; 4];
                std::io::Read::read_exact(r, &mut len).ok()?;
                let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
                std::io::Read::read_exact(r, &mut body).ok()?;
                crate::format::meta::from_cbor::<CatalogEntry>(&body).ok()
            });
            let complete = info.status != crate::format::setcat::SESSION_NO_END;
            let rec = SessionRecord {
                uuid: info.session_uuid,
                number: info.session,
                data_tape_file: info.data_tape_file,
                catalog_tape_file: complete.then_some(info.data_tape_file + 1),
                host: Some(info.host.clone()),
                started: Some(info.started),
                sources: Vec::new(),
                tapir_version: None,
                end: info.ended.map(|ended| SessionEnd {
                    entries: info.entries,
                    stored_bytes: 0,
                    ended,
                    warnings: 0,
                    status: info.status,
                    skipped: 0,
                }),
                complete,
                job: info.job.clone(),
                continues: info
                    .continues
                    .and_then(|i| sessions.iter().find(|s| s.index == i))
                    .map(|s| s.session_uuid),
                origin: Origin::SetCopy,
                lost_blocks: 0,
            };
            let action = self.merge_session_stream(volume, &rec, count, entries)?;
            report.sessions += 1;
            report.entries += count;
            if action == MergeAction::Added {
                report.added += 1;
            }
        }
        self.wait_for_checkpoint();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::query::FindQuery;
    use crate::catalog::testutil::*;
    use crate::pipeline::volume::{SessionOnTape, TapeMap};

    fn listed(
        l: &VolumeLabel,
        uuid: u8,
        number: u32,
        started: i64,
        entries: Vec<CatalogEntry>,
        closed: bool,
    ) -> SessionEntries {
        let st = start(l, uuid, number, started);
        SessionEntries {
            session: SessionOnTape {
                number,
                data_file: 2 * number,
                start: Some(st),
                catalog_file: closed.then_some(2 * number + 1),
                set_catalog_file: None,
            },
            source: if closed {
                ListSource::Catalog
            } else {
                ListSource::Scan
            },
            summary: closed.then(|| end(entries.len() as u64, started + 100)),
            entries,
            incomplete: Vec::new(),
            lost: Vec::new(),
            closed,
        }
    }

    fn listing(l: &VolumeLabel, sessions: Vec<SessionEntries>) -> Listing {
        Listing {
            map: TapeMap {
                label: l.clone(),
                sessions: sessions.iter().map(|s| s.session.clone()).collect(),
                unknown_files: Vec::new(),
                closed_files: 2 + 2 * sessions.len() as u32,
                open_last_file: false,
            },
            sessions,
        }
    }

    fn entries(prefix: &str, n: usize, tape_file: u32) -> Vec<CatalogEntry> {
        (0..n)
            .map(|i| {
                entry(
                    &format!("{prefix}/f{i}"),
                    i as u64,
                    1_600_000_000 + i as i64,
                    tape_file,
                    i as u64,
                )
            })
            .collect()
    }

    #[test]
    fn decide_table() {
        use MergeAction::*;
        use SessionStatus::*;
        let inc = |complete, origin, entries| Incoming {
            complete,
            origin,
            entries,
        };
        let ex = |status, entries| Some(Existing { status, entries });
        let cases = [
            (None, inc(true, Origin::Catalog, 5), Added),
            (None, inc(false, Origin::Scan, 2), Added),
            (ex(Pending, 3), inc(true, Origin::Catalog, 5), Replaced),
            (ex(Pending, 9), inc(false, Origin::Scan, 2), Replaced),
            (ex(Overwritten, 5), inc(true, Origin::Catalog, 5), Replaced),
            (ex(Interrupted, 2), inc(true, Origin::Scan, 2), Replaced),
            (ex(Interrupted, 2), inc(false, Origin::Scan, 3), Replaced),
            (ex(Interrupted, 3), inc(false, Origin::Scan, 3), Unchanged),
            (ex(Interrupted, 3), inc(false, Origin::Scan, 1), Unchanged),
            (ex(Complete, 5), inc(true, Origin::Catalog, 5), Unchanged),
            (ex(Complete, 5), inc(true, Origin::Catalog, 6), Replaced),
            (ex(Complete, 5), inc(true, Origin::SetCopy, 6), Replaced),
            // A damaged cartridge scanned: the record made at write time is kept.
            (ex(Complete, 5), inc(true, Origin::Scan, 4), Unchanged),
            (ex(Complete, 5), inc(false, Origin::Scan, 4), Unchanged),
        ];
        for (e, i, want) in cases {
            assert_eq!(decide(e, i), want, "{e:?} + {i:?}");
        }
    }

    #[test]
    fn importing_twice_changes_nothing() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let lst = listing(
            &l,
            vec![
                listed(&l, 2, 1, 1_700_000_200, entries("etc", 50, 2), true),
                listed(&l, 3, 2, 1_700_086_600, entries("etc", 60, 4), true),
                listed(&l, 4, 3, 1_700_173_000, entries("home", 7, 6), false),
            ],
        );
        let opts = ImportOptions {
            drive_name: Some("vtape:/srv/vtl".into()),
            who: "ops".into(),
        };
        let first = cat.import_listing(&lst, &opts).unwrap();
        assert!(first.new_cartridge);
        assert_eq!(
            first.sessions.iter().map(|s| s.action).collect::<Vec<_>>(),
            vec![MergeAction::Added; 3]
        );
        assert_eq!(
            first.location_recorded.as_deref(),
            Some("drive:vtape:/srv/vtl")
        );
        let before = dump(&cat);
        let second = cat.import_listing(&lst, &opts).unwrap();
        assert!(second.unchanged(), "{second:?}");
        assert_eq!(dump(&cat), before);
        // Versions: etc/f1 in two sessions; home/f1 in an interrupted one.
        assert_eq!(
            cat.find(&FindQuery::new("etc/f1")).unwrap().versions.len(),
            2
        );
        let h = cat.find(&FindQuery::new("/home/f1")).unwrap();
        assert_eq!(h.versions.len(), 1);
        assert!(!h.versions[0].session.complete);
    }

    #[test]
    fn import_settles_a_recorded_session_and_keeps_it_when_identical() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let es = entries("etc", 20, 2);
        // Recorded by the write job...
        let st = start(&l, 2, 1, 1_700_000_200);
        let mut rec = cat.begin_session(&l, &st, 2, &Default::default()).unwrap();
        for e in &es {
            rec.add(e).unwrap();
        }
        rec.commit(
            &end(20, 1_700_000_300),
            &crate::catalog::record::WriteDone {
                catalog_tape_file: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        let before = dump(&cat);
        // ...then imported: nothing changes.
        let lst = listing(&l, vec![listed(&l, 2, 1, 1_700_000_200, es.clone(), true)]);
        let r = cat.import_listing(&lst, &ImportOptions::default()).unwrap();
        assert!(r.unchanged(), "{r:?}");
        assert_eq!(dump(&cat), before);
    }

    #[test]
    fn import_replaces_a_pending_session_from_a_crashed_write() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let st = start(&l, 2, 1, 1_700_000_200);
        let mut rec = cat.begin_session(&l, &st, 2, &Default::default()).unwrap();
        for e in entries("etc", 5000, 2) {
            rec.add(&e).unwrap();
        }
        std::mem::forget(rec); // the crash
        assert_eq!(
            cat.find(&FindQuery::new("etc/f1")).unwrap().versions.len(),
            0
        );
        // The tape has the session, interrupted after 3000 entries (scan).
        let lst = listing(
            &l,
            vec![listed(
                &l,
                2,
                1,
                1_700_000_200,
                entries("etc", 3000, 2),
                false,
            )],
        );
        let r = cat.import_listing(&lst, &ImportOptions::default()).unwrap();
        assert_eq!(r.sessions[0].action, MergeAction::Replaced);
        assert_eq!(
            cat.find(&FindQuery::new("etc/f1")).unwrap().versions.len(),
            1
        );
        assert_eq!(
            cat.find(&FindQuery::new("etc/f4000"))
                .unwrap()
                .versions
                .len(),
            0
        );
        let n: i64 = cat
            .conn()
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3000);
    }

    #[test]
    fn sessions_of_other_cartridges_merge_by_uuid() {
        // A set-wide copy read from the last cartridge describes the first
        // one's sessions too; merging them in any order gives one record.
        let (_d, mut cat) = temp_catalog();
        let l1 = label("TPR001L9", 1, Some((9, "big", 1)));
        let mut l2 = label("TPR002L9", 2, Some((9, "big", 2)));
        l2.set.as_mut().unwrap().previous_volume = Some([1; 16]);
        let s1 = listed(&l1, 5, 1, 1_700_000_200, entries("a", 10, 2), true);
        let rec1 = SessionRecord::from_listed(&l1, &s1);
        cat.merge_cartridge(&CartridgeRecord::from_label(&l2))
            .unwrap();
        cat.merge_cartridge(&CartridgeRecord::from_label(&l1))
            .unwrap();
        let mut copy = rec1.clone();
        copy.origin = Origin::SetCopy;
        assert_eq!(
            cat.merge_session(&[1; 16], &copy, &s1.entries).unwrap(),
            MergeAction::Added
        );
        // The cartridge itself imported later: same facts, nothing changes.
        let before = dump(&cat);
        let r = cat
            .import_listing(&listing(&l1, vec![s1.clone()]), &ImportOptions::default())
            .unwrap();
        assert!(r.unchanged(), "{r:?}");
        assert_eq!(dump(&cat), before);
        let sets = cat.sets(None).unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].cartridges.len(), 2);
        assert!(matches!(
            cat.merge_session(&[7; 16], &copy, &[]),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn a_merge_is_checkpointed_on_a_thread_of_its_own() {
        // The commit does not checkpoint (a thread does, beside the next
        // merge): the database file grows only once that thread is done.
        let (d, mut cat) = temp_catalog();
        let l1 = label("TPR001L9", 1, Some((9, "big", 1)));
        cat.merge_cartridge(&CartridgeRecord::from_label(&l1))
            .unwrap();
        cat.wait_for_checkpoint();
        cat.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let db = d.path().join("catalog.db");
        let before = std::fs::metadata(&db).unwrap().len();
        let s1 = listed(&l1, 1, 1, 1_700_000_200, entries("a", 20_000, 2), true);
        let rec = SessionRecord::from_listed(&l1, &s1);
        assert_eq!(
            cat.merge_session(&[1; 16], &rec, &s1.entries).unwrap(),
            MergeAction::Added
        );
        cat.wait_for_checkpoint();
        let after = std::fs::metadata(&db).unwrap().len();
        assert!(after > before, "{before} -> {after}: not checkpointed");
        // The connection checkpoints at its commits again afterwards.
        let n: i64 = cat
            .conn()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, WAL_AUTOCHECKPOINT as i64);
        let rows: i64 = cat
            .conn()
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 20_000);
    }

    #[test]
    fn a_relabelled_cartridge_retires_the_old_record() {
        let (_d, mut cat) = temp_catalog();
        let old = label("TPR001L9", 1, Some((9, "nightly", 1)));
        cat.import_listing(
            &listing(
                &old,
                vec![listed(
                    &old,
                    2,
                    1,
                    1_700_000_200,
                    entries("etc", 3, 2),
                    true,
                )],
            ),
            &ImportOptions::default(),
        )
        .unwrap();
        assert_eq!(
            cat.find(&FindQuery::new("etc/f1")).unwrap().versions.len(),
            1
        );
        let mut new = label("TPR001L9", 7, None);
        new.labelled.sec += 1000;
        let r = cat
            .import_listing(&listing(&new, vec![]), &ImportOptions::default())
            .unwrap();
        assert_eq!(r.superseded.len(), 1, "{r:?}");
        assert_eq!(
            cat.find(&FindQuery::new("etc/f1")).unwrap().versions.len(),
            0
        );
        // The label now names the new cartridge.
        assert_eq!(
            cat.media_show("TPR001L9").unwrap().media.brief.uuid,
            uuid_text(&[7; 16])
        );
    }

    #[test]
    fn synthetic_uuids_are_stable_and_distinct() {
        assert_eq!(
            synthetic_session_uuid(&[1; 16], 3),
            synthetic_session_uuid(&[1; 16], 3)
        );
        assert_ne!(
            synthetic_session_uuid(&[1; 16], 3),
            synthetic_session_uuid(&[1; 16], 4)
        );
        assert_ne!(
            synthetic_session_uuid(&[1; 16], 3),
            synthetic_session_uuid(&[2; 16], 3)
        );
    }
}
