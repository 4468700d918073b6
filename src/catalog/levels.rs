//! Incremental and differential levels: which session a new one is
//! relative to, what that session knew of a file, and, for `restore --at`,
//! which session holds each file's content (FORMAT.md §7.7).

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

/// What a session recorded of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFacts {
    pub kind: u8,
    pub size: u64,
    pub mtime: (i64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub hash: Option<[u8; 32]>,
}

/// Where one path's content is, for a restore as of a date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentAt {
    pub path: Vec<u8>,
    pub cartridge: String,
    /// The session's number on that cartridge.
    pub number: u32,
    pub started: i64,
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
    /// The session a new run of `job` at `level` is relative to: the newest
    /// complete session of the job (incremental) or its newest complete
    /// full one (differential). None: the run must be a full one.
    pub fn job_base(&self, job: &str, differential: bool) -> Result<Option<JobSession>> {
        let sql = format!(
            "{JOB_SESSION} WHERE s.job = ?1 AND s.status = 'complete' AND s.entries_pruned = 0
                 AND (?2 = 0 OR s.level = 0)
             ORDER BY s.started DESC, s.id DESC LIMIT 1"
        );
        self.conn()
            .query_row(&sql, params![job, differential], job_session)
            .optional()
            .map_err(self.err("finding a job's base session"))
    }

    /// The newest complete session of `job` that started at or before `at`.
    pub fn job_session_at(&self, job: &str, at: i64) -> Result<Option<JobSession>> {
        let sql = format!(
            "{JOB_SESSION} WHERE s.job = ?1 AND s.status = 'complete' AND s.started <= ?2
             ORDER BY s.started DESC, s.id DESC LIMIT 1"
        );
        self.conn()
            .query_row(&sql, params![job, at], job_session)
            .optional()
            .map_err(self.err("finding a job's session"))
    }

    /// What session `session_id` recorded of `path`, if it holds it.
    pub fn base_facts(&self, session_id: i64, path: &[u8]) -> Result<Option<BaseFacts>> {
        let Some(path_id) =
            paths::lookup(self.conn(), path).map_err(self.err("looking up a path"))?
        else {
            return Ok(None);
        };
        let (lo, hi) = schema::session_range(session_id);
        self.conn()
            .prepare_cached(
                "SELECT kind, size, mtime, mtime_ns, mode, uid, gid, hash FROM entries
                 WHERE path = ?1 AND id BETWEEN ?2 AND ?3 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![path_id, lo, hi], |r| {
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
                    })
                })
                .optional()
            })
            .map_err(self.err("reading a base entry"))
    }

    /// For every path of `session`, the session that holds its content:
    /// itself, or for an `Unchanged` entry the first session back along
    /// its base links that holds the file whole. Paths whose content
    /// cannot be found are returned apart.
    pub fn contents_at(&self, session: &JobSession) -> Result<(Vec<ContentAt>, Vec<Vec<u8>>)> {
        let err = |e| super::Error::sql(&self.path, "gathering a restore as of a date", e);
        let (lo, hi) = schema::session_range(session.id);
        let rows: Vec<(i64, u8)> = self
            .conn()
            .prepare("SELECT path, kind FROM entries WHERE id BETWEEN ?1 AND ?2 ORDER BY id")
            .and_then(|mut st| {
                st.query_map(params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(&err)?;
        let mut found = Vec::with_capacity(rows.len());
        let mut missing = Vec::new();
        for (path_id, kind) in rows {
            let path = paths::full_path(self.conn(), path_id).map_err(&err)?;
            if kind != EntryKind::Unchanged.code() {
                found.push(ContentAt {
                    path,
                    cartridge: session.cartridge.clone(),
                    number: session.number,
                    started: session.started,
                });
                continue;
            }
            match self.content_before(session, path_id)? {
                Some(s) => found.push(ContentAt {
                    path,
                    cartridge: s.cartridge,
                    number: s.number,
                    started: s.started,
                }),
                None => missing.push(path),
            }
        }
        Ok((found, missing))
    }

    /// Walk `session`'s base links to the first session holding `path_id`
    /// with its content.
    fn content_before(&self, session: &JobSession, path_id: i64) -> Result<Option<JobSession>> {
        let err = |e| super::Error::sql(&self.path, "following an incremental's base", e);
        let mut current = session.id;
        // Bounded: a chain never revisits a session.
        for _ in 0..10_000 {
            let base: Option<[u8; 16]> = self
                .conn()
                .query_row("SELECT base FROM sessions WHERE id = ?1", [current], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(&err)?
                .flatten();
            let Some(base) = base else {
                return Ok(None);
            };
            let sql = format!("{JOB_SESSION} WHERE s.uuid = ?1");
            let Some(s) = self
                .conn()
                .query_row(&sql, [base], job_session)
                .optional()
                .map_err(&err)?
            else {
                return Ok(None);
            };
            let (lo, hi) = schema::session_range(s.id);
            let kind: Option<u8> = self
                .conn()
                .query_row(
                    "SELECT kind FROM entries WHERE path = ?1 AND id BETWEEN ?2 AND ?3
                     ORDER BY id DESC LIMIT 1",
                    params![path_id, lo, hi],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?;
            match kind {
                Some(k) if k == EntryKind::Unchanged.code() => current = s.id,
                Some(_) => return Ok(Some(s)),
                None => return Ok(None),
            }
        }
        Ok(None)
    }
}
