//! Incremental and differential levels: which session a new one is
//! relative to, what that session knew of a file, and, for `restore --at`,
//! which session holds each file's content (FORMAT.md §7.7).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::{paths, schema, Catalog, Result};
use crate::format::meta::{EntryKind, LEVEL_FULL};

/// A session of a job, as a later one refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSession {
    pub id: i64,
    pub uuid: [u8; 16],
    pub started: i64,
    pub level: u8,
    pub cartridge: String,
    pub number: u32,
}

/// What a job's run recorded of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFacts {
    pub kind: u8,
    pub size: u64,
    pub mtime: (i64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub hash: Option<[u8; 32]>,
    /// What the job saw of the file on this host; None for a session
    /// imported from a cartridge (no cartridge holds these).
    pub state: Option<FileState>,
}

/// What a job saw of a regular file as it wrote it: the host facts an
/// incremental needs beyond the entry's own metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    pub dev: u64,
    pub ino: u64,
    pub ctime: (i64, u32),
    /// When the job looked (this host's clock, seconds since the epoch).
    pub seen: i64,
}

/// A session part holding a file's content, with its place in the order
/// of restoring (see [`ContentAt::order`]).
type Holder = (JobSession, (i64, usize));

/// A session no other part continues: the last part of its run (row ids
/// say nothing of the order of parts in a catalog rebuilt from cartridges).
const LAST_PART: &str = "NOT EXISTS (SELECT 1 FROM sessions n WHERE n.continues = s.uuid)";

/// At most this many cartridges in one run (a bound on chain walks).
const MAX_PARTS: usize = 100_000;

/// Where one path's content is, for a restore as of a date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentAt {
    pub path: Vec<u8>,
    pub cartridge: String,
    /// The session's number on that cartridge.
    pub number: u32,
    pub started: i64,
    /// Where it comes in the order of restoring: its run's start, then
    /// the part's place in the run (parts are restored in the order
    /// written, so a file cut at a cartridge's end is joined).
    pub order: (i64, usize),
}

const JOB_SESSION: &str = "SELECT s.id, s.uuid, s.started, s.level, c.label, s.number
     FROM sessions s JOIN cartridges c ON c.id = s.cartridge_id";

fn job_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobSession> {
    Ok(JobSession {
        id: r.get(0)?,
        uuid: r.get(1)?,
        started: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
        level: r.get::<_, Option<u8>>(3)?.unwrap_or(LEVEL_FULL),
        cartridge: r.get(4)?,
        number: r.get(5)?,
    })
}

impl Catalog {
    /// The session a new run of copy `copy` of `job` is relative to: the
    /// newest complete session of that copy of the job (incremental) or
    /// its newest complete full one (differential). None: the run must be
    /// a full one.
    pub fn job_base(&self, job: &str, differential: bool, copy: u8) -> Result<Option<JobSession>> {
        let sql = format!(
            "{JOB_SESSION} WHERE s.job = ?1 AND s.status = 'complete' AND s.entries_pruned = 0
                 AND (?2 = 0 OR s.level = 0) AND coalesce(s.copy, 1) = ?3 AND {LAST_PART}
             ORDER BY s.started DESC, s.id DESC LIMIT 1"
        );
        self.conn()
            .query_row(&sql, params![job, differential, copy], job_session)
            .optional()
            .map_err(self.err("finding a job's base session"))
    }

    /// The newest complete session of copy `copy` of `job` that started at
    /// or before `at`.
    pub fn job_session_at(&self, job: &str, at: i64, copy: u8) -> Result<Option<JobSession>> {
        let sql = format!(
            "{JOB_SESSION} WHERE s.job = ?1 AND s.status = 'complete' AND s.started <= ?2
                 AND coalesce(s.copy, 1) = ?3 AND {LAST_PART}
             ORDER BY s.started DESC, s.id DESC LIMIT 1"
        );
        self.conn()
            .query_row(&sql, params![job, at, copy], job_session)
            .optional()
            .map_err(self.err("finding a job's session"))
    }

    /// Which copy of its pool each set written by a job holds, by set
    /// UUID (text); sets of no job are not listed.
    pub fn set_copies(&self) -> Result<std::collections::HashMap<String, u8>> {
        self.conn()
            .prepare(
                "SELECT st.uuid, max(coalesce(s.copy, 1)) FROM sessions s
                 JOIN sets st ON st.id = s.set_id
                 WHERE s.job IS NOT NULL GROUP BY st.id",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    let uuid: [u8; 16] = r.get(0)?;
                    Ok((crate::format::label::uuid_text(&uuid), r.get(1)?))
                })?
                .collect()
            })
            .map_err(self.err("reading which copy each set holds"))
    }

    /// Every part of the run whose last part is `last`, oldest first:
    /// parts on earlier cartridges are found through `continues`.
    pub fn run_parts(&self, last: &JobSession) -> Result<Vec<JobSession>> {
        let mut parts = vec![last.clone()];
        let sql = format!("{JOB_SESSION} WHERE s.uuid = ?1 AND s.status <> 'overwritten'");
        while parts.len() < MAX_PARTS {
            let current = parts.last().expect("one part at least").id;
            let previous: Option<[u8; 16]> = self
                .conn()
                .query_row(
                    "SELECT continues FROM sessions WHERE id = ?1",
                    [current],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err("following a run's parts"))?
                .flatten();
            let Some(previous) = previous else { break };
            match self
                .conn()
                .query_row(&sql, [previous], job_session)
                .optional()
                .map_err(self.err("following a run's parts"))?
            {
                Some(p) if !parts.iter().any(|q| q.id == p.id) => parts.push(p),
                _ => break,
            }
        }
        parts.reverse();
        Ok(parts)
    }

    /// What the run made of parts `parts` recorded of `path`, if it holds it.
    pub fn base_facts(&self, parts: &[JobSession], path: &[u8]) -> Result<Option<BaseFacts>> {
        let Some(path_id) =
            paths::lookup(self.conn(), path).map_err(self.err("looking up a path"))?
        else {
            return Ok(None);
        };
        for part in parts.iter().rev() {
            let (lo, hi) = schema::session_range(part.id);
            let found = self
                .conn()
                .prepare_cached(
                    "SELECT e.kind, e.size, e.mtime, e.mtime_ns, e.mode, e.uid, e.gid, e.hash,
                            f.dev, f.ino, f.ctime, f.ctime_ns, f.seen
                     FROM entries e LEFT JOIN file_state f ON f.entry = e.id
                     WHERE e.path = ?1 AND e.id BETWEEN ?2 AND ?3 ORDER BY e.id DESC LIMIT 1",
                )
                .and_then(|mut st| {
                    st.query_row(params![path_id, lo, hi], |r| {
                        let state = match r.get::<_, Option<i64>>(8)? {
                            Some(dev) => Some(FileState {
                                dev: dev as u64,
                                ino: r.get::<_, i64>(9)? as u64,
                                ctime: (r.get(10)?, r.get(11)?),
                                seen: r.get(12)?,
                            }),
                            None => None,
                        };
                        Ok(BaseFacts {
                            kind: r.get(0)?,
                            size: r.get::<_, i64>(1)? as u64,
                            mtime: (r.get(2)?, r.get(3)?),
                            mode: r.get(4)?,
                            uid: r.get(5)?,
                            gid: r.get(6)?,
                            hash: r
                                .get::<_, Option<Vec<u8>>>(7)?
                                .and_then(|h| h.try_into().ok()),
                            state,
                        })
                    })
                    .optional()
                })
                .map_err(self.err("reading a base entry"))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Keep what the run ending in `last` saw of the files it wrote, for
    /// the job's next incremental. `seen` yields (archive path, state);
    /// a path the run holds no file entry for is passed over. Returns the
    /// states kept.
    pub fn keep_file_states(
        &mut self,
        last: &JobSession,
        seen: impl Iterator<Item = std::io::Result<(Vec<u8>, FileState)>>,
    ) -> Result<u64> {
        let parts = self.run_parts(last)?;
        let path = self.path.clone();
        let err = |e| super::Error::sql(&path, "keeping what the job saw of its files", e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut kept = 0u64;
        {
            let mut find = tx
                .prepare(
                    "SELECT id FROM entries WHERE path = ?1 AND id BETWEEN ?2 AND ?3
                         AND kind IN (?4, ?5)
                     ORDER BY id DESC LIMIT 1",
                )
                .map_err(err)?;
            let mut keep = tx
                .prepare(
                    "INSERT OR REPLACE INTO file_state (entry, dev, ino, ctime, ctime_ns, seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for item in seen {
                let (p, st) = item.map_err(|e| super::Error::Io {
                    path: path.clone(),
                    context: "reading what the job saw of its files".into(),
                    source: e,
                })?;
                let Some(path_id) = paths::lookup(&tx, &p).map_err(err)? else {
                    continue;
                };
                for part in parts.iter().rev() {
                    let (lo, hi) = schema::session_range(part.id);
                    let entry: Option<i64> = find
                        .query_row(
                            params![
                                path_id,
                                lo,
                                hi,
                                EntryKind::File.code(),
                                EntryKind::Unchanged.code()
                            ],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(err)?;
                    if let Some(entry) = entry {
                        keep.execute(params![
                            entry,
                            st.dev as i64,
                            st.ino as i64,
                            st.ctime.0,
                            st.ctime.1,
                            st.seen
                        ])
                        .map_err(err)?;
                        kept += 1;
                        break;
                    }
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(kept)
    }

    /// For every path of the run ending in `session`, the sessions that
    /// hold its content: its own part(s), or for an `Unchanged` entry the
    /// first run back along the base links that holds the file whole.
    /// Paths whose content cannot be found are returned apart.
    pub fn contents_at(&self, session: &JobSession) -> Result<(Vec<ContentAt>, Vec<Vec<u8>>)> {
        let err = |e| super::Error::sql(&self.path, "gathering a restore as of a date", e);
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let at = |path: &[u8], s: &JobSession, order: (i64, usize)| ContentAt {
            path: path.to_vec(),
            cartridge: s.cartridge.clone(),
            number: s.number,
            started: s.started,
            order,
        };
        // Each base run's parts, found once (by its last part's row).
        let mut runs: HashMap<i64, Vec<JobSession>> = HashMap::new();
        let parts = self.run_parts(session)?;
        let first_started = parts.first().map_or(session.started, |p| p.started);
        for (i, part) in parts.iter().enumerate() {
            let (lo, hi) = schema::session_range(part.id);
            let rows: Vec<(i64, u8)> = self
                .conn()
                .prepare("SELECT path, kind FROM entries WHERE id BETWEEN ?1 AND ?2 ORDER BY id")
                .and_then(|mut st| {
                    st.query_map(params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(&err)?;
            for (path_id, kind) in rows {
                let path = paths::full_path(self.conn(), path_id).map_err(&err)?;
                if kind != EntryKind::Unchanged.code() {
                    found.push(at(&path, part, (first_started, i)));
                    continue;
                }
                match self.content_before(session, path_id, &mut runs)? {
                    Some(holders) => {
                        found.extend(holders.iter().map(|(s, order)| at(&path, s, *order)))
                    }
                    None => missing.push(path),
                }
            }
        }
        Ok((found, missing))
    }

    /// Walk the base links from the run ending in `session` to the first
    /// run holding `path_id` with its content: the part(s) that do, oldest
    /// first (a file cut at a cartridge's end is in two), each with its
    /// place in the order of restoring.
    fn content_before(
        &self,
        session: &JobSession,
        path_id: i64,
        runs: &mut HashMap<i64, Vec<JobSession>>,
    ) -> Result<Option<Vec<Holder>>> {
        let err = |e| super::Error::sql(&self.path, "following an incremental's base", e);
        let mut current = session.id;
        // Bounded: a chain never revisits a session.
        for _ in 0..10_000 {
            let base: Option<[u8; 16]> = self
                .conn()
                .prepare_cached("SELECT base FROM sessions WHERE id = ?1")
                .and_then(|mut st| st.query_row([current], |r| r.get(0)).optional())
                .map_err(&err)?
                .flatten();
            let Some(base) = base else {
                return Ok(None);
            };
            let Some(base) = self
                .conn()
                .prepare_cached(&format!("{JOB_SESSION} WHERE s.uuid = ?1"))
                .and_then(|mut st| st.query_row([base], job_session).optional())
                .map_err(&err)?
            else {
                return Ok(None);
            };
            let parts = match runs.entry(base.id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(self.run_parts(&base)?),
            };
            let first_started = parts.first().map_or(base.started, |p| p.started);
            let mut holders = Vec::new();
            let mut unchanged_there = false;
            for (i, part) in parts.iter().enumerate() {
                let (lo, hi) = schema::session_range(part.id);
                let kind: Option<u8> = self
                    .conn()
                    .prepare_cached(
                        "SELECT kind FROM entries WHERE path = ?1 AND id BETWEEN ?2 AND ?3
                         ORDER BY id DESC LIMIT 1",
                    )
                    .and_then(|mut st| {
                        st.query_row(params![path_id, lo, hi], |r| r.get(0))
                            .optional()
                    })
                    .map_err(&err)?;
                match kind {
                    Some(k) if k == EntryKind::Unchanged.code() => unchanged_there = true,
                    Some(_) => holders.push((part.clone(), (first_started, i))),
                    None => {}
                }
            }
            if unchanged_there {
                current = base.id;
            } else if holders.is_empty() {
                return Ok(None);
            } else {
                return Ok(Some(holders));
            }
        }
        Ok(None)
    }
}
