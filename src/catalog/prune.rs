//! Upkeep: pruning file records on their own schedule (separately from
//! media retention), and `catalog check`.
//!
//! Pruning deletes a session's entries but keeps the session, its cartridge
//! and its set: `recall SET` and `media show` still work, and `find` no
//! longer lists those versions. Paths no longer used by any entry are
//! removed too. Importing the cartridge again brings the entries back.

use rusqlite::{params, TransactionBehavior};

use super::{Catalog, Error, Result};

/// Which sessions lose their file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneRule {
    /// Sessions started before this time (seconds since the epoch).
    OlderThan(i64),
    /// All but the newest N sessions of each set name (a job's history).
    KeepSessions(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PrunedSession {
    pub cartridge: String,
    pub number: u32,
    pub set: Option<String>,
    pub started: Option<i64>,
    pub entries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub sessions: Vec<PrunedSession>,
    pub entries_deleted: u64,
    pub paths_deleted: u64,
}

/// What `catalog check` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub path: String,
    pub schema_version: u32,
    pub file_bytes: u64,
    /// `integrity_check` (full) or `quick_check`.
    pub check: String,
    pub cartridges: u64,
    pub sets: u64,
    pub sessions: u64,
    pub entries: u64,
    pub paths: u64,
    pub bytes_per_entry: Option<f64>,
    /// Sessions being written, or left by a write that crashed.
    pub pending: Vec<String>,
    /// Inconsistencies that do not make the file unreadable.
    pub problems: Vec<String>,
}

impl Catalog {
    /// Delete the file records the rule selects (overwritten sessions always).
    pub fn prune(&mut self, rule: PruneRule, dry_run: bool) -> Result<PruneReport> {
        let err = |e| Error::sql(&self.path, "pruning", e);
        type Row = (i64, String, u32, Option<String>, Option<i64>, i64, String);
        let rows: Vec<Row> = self
            .conn()
            .prepare(
                "SELECT s.id, c.label, s.number, t.name, s.started, s.entries, s.status
                 FROM sessions s JOIN cartridges c ON c.id = s.cartridge_id
                 LEFT JOIN sets t ON t.id = s.set_id
                 WHERE s.entries_pruned = 0 AND s.status != 'pending'
                 ORDER BY t.name, s.started DESC, s.id DESC",
            )
            .map_err(err)?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        let mut chosen = Vec::new();
        let mut kept_in_set: std::collections::HashMap<Option<String>, usize> = Default::default();
        for (id, label, number, set, started, entries, status) in rows {
            let prune = status == "overwritten"
                || match rule {
                    PruneRule::OlderThan(t) => started.is_some_and(|s| s < t),
                    PruneRule::KeepSessions(n) => {
                        let k = kept_in_set.entry(set.clone()).or_default();
                        *k += 1;
                        *k > n
                    }
                };
            if prune {
                chosen.push((
                    id,
                    PrunedSession {
                        cartridge: label,
                        number,
                        set,
                        started,
                        entries: entries as u64,
                    },
                ));
            }
        }
        let mut report = PruneReport {
            dry_run,
            ..Default::default()
        };
        if dry_run {
            report.entries_deleted = chosen.iter().map(|(_, s)| s.entries).sum();
            report.sessions = chosen.into_iter().map(|(_, s)| s).collect();
            return Ok(report);
        }
        let path = self.path.clone();
        let err = |e| Error::sql(&path, "pruning", e);
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS prune_candidates (id INTEGER PRIMARY KEY);
                 DELETE FROM temp.prune_candidates;",
            )
            .map_err(err)?;
        for (id, s) in chosen {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let (lo, hi) = super::schema::session_range(id);
            tx.execute(
                "INSERT OR IGNORE INTO temp.prune_candidates
                 SELECT path FROM entries WHERE id BETWEEN ?1 AND ?2",
                [lo, hi],
            )
            .map_err(err)?;
            let n = super::record::delete_entries(&tx, id).map_err(err)?;
            tx.execute(
                "UPDATE sessions SET entries_pruned = 1 WHERE id = ?1",
                params![id],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            report.entries_deleted += n as u64;
            report.sessions.push(s);
        }
        report.paths_deleted = self.collect_paths()?;
        Ok(report)
    }

    /// A cartridge whose retention expired is about to be labelled again:
    /// its sessions and their entries leave the catalog (the tape will no
    /// longer hold them), and its volume is retired with `note`. Returns the
    /// entries forgotten.
    pub fn forget_for_reuse(&mut self, key: &str, note: &str) -> Result<u64> {
        let id = self.resolve_cartridge(key)?;
        let path = self.path.clone();
        let err = |e| Error::sql(&path, "forgetting a reused cartridge", e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let sessions: Vec<(i64, i64)> = tx
            .prepare("SELECT id, entries FROM sessions WHERE cartridge_id = ?1")
            .and_then(|mut st| {
                st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(err)?;
        let mut forgotten = 0u64;
        for (sid, entries) in sessions {
            super::ingest::delete_session(&tx, sid).map_err(err)?;
            forgotten += entries.max(0) as u64;
        }
        tx.execute(
            "UPDATE cartridges SET state = 'retired', state_note = ?2, state_changed = ?3 WHERE id = ?1",
            params![id, note, super::now_sec()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(forgotten)
    }

    /// Delete candidate paths no entry uses and no path hangs under, then
    /// their parents, up the tree.
    fn collect_paths(&mut self) -> Result<u64> {
        let path = self.path.clone();
        let err = |e| Error::sql(&path, "removing unused paths", e);
        let mut deleted = 0u64;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let dead: Vec<(i64, i64)> = tx
                .prepare(
                    "SELECT p.id, p.parent FROM temp.prune_candidates c JOIN paths p ON p.id = c.id
                     WHERE NOT EXISTS (SELECT 1 FROM entries e INDEXED BY entries_path WHERE e.path = p.id)
                       AND NOT EXISTS (SELECT 1 FROM paths k WHERE k.parent = p.id)",
                )
                .map_err(err)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(err)?;
            tx.execute("DELETE FROM temp.prune_candidates", [])
                .map_err(err)?;
            {
                let mut del = tx.prepare("DELETE FROM paths WHERE id = ?1").map_err(err)?;
                let mut cand = tx
                    .prepare("INSERT OR IGNORE INTO temp.prune_candidates VALUES (?1)")
                    .map_err(err)?;
                for (id, parent) in &dead {
                    del.execute([id]).map_err(err)?;
                    if *parent != super::paths::ROOT {
                        cand.execute([parent]).map_err(err)?;
                    }
                }
            }
            tx.commit().map_err(err)?;
            deleted += dead.len() as u64;
            if dead.is_empty() {
                return Ok(deleted);
            }
        }
    }

    /// Check the whole file (`full`: `integrity_check`, else `quick_check`)
    /// and the catalog's own consistency. A damaged file is an error.
    pub fn check(&self, full: bool) -> Result<CheckReport> {
        let pragma = if full {
            "integrity_check"
        } else {
            "quick_check"
        };
        let problems = super::schema::integrity(self, pragma, 20)?;
        if !problems.is_empty() {
            return Err(Error::Damaged {
                path: self.path.clone(),
                detail: problems.join("; "),
            });
        }
        let err = |e| Error::sql(&self.path, "checking", e);
        let count = |sql: &str| -> Result<u64> {
            self.conn()
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(err)
        };
        let mut r = CheckReport {
            path: self.path.display().to_string(),
            schema_version: super::schema::SCHEMA_VERSION,
            file_bytes: std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            check: pragma.to_string(),
            cartridges: count("SELECT count(*) FROM cartridges")?,
            sets: count("SELECT count(*) FROM sets")?,
            sessions: count("SELECT count(*) FROM sessions")?,
            entries: count("SELECT count(*) FROM entries")?,
            paths: count("SELECT count(*) FROM paths")?,
            ..Default::default()
        };
        if r.entries > 0 {
            r.bytes_per_entry = Some(r.file_bytes as f64 / r.entries as f64);
        }
        let mut st = self
            .conn()
            .prepare(
                "SELECT c.label, s.number, s.started, s.status, s.entries, s.entries_pruned,
                        (SELECT count(*) FROM entries e WHERE e.id BETWEEN s.id << 32 AND (s.id << 32) | 4294967295)
                 FROM sessions s JOIN cartridges c ON c.id = s.cartridge_id ORDER BY c.label, s.number",
            )
            .map_err(err)?;
        type Row = (String, u32, Option<i64>, String, i64, bool, i64);
        let rows: Vec<Row> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        for (label, number, started, status, entries, pruned, actual) in rows {
            let when = started
                .map(super::when::ts_text)
                .unwrap_or_else(|| "?".into());
            if status == "pending" {
                r.pending.push(format!(
                    "{label} session {number} (started {when}, {actual} entries so far): being written, or left by a write that stopped; `tapir catalog import` of {label} settles it"
                ));
            } else if !pruned && status != "overwritten" && entries != actual {
                r.problems.push(format!(
                    "{label} session {number}: records {entries} entries but holds {actual}; import {label} again to repair it"
                ));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::query::FindQuery;
    use crate::catalog::record::WriteDone;
    use crate::catalog::testutil::*;

    fn write(
        cat: &mut Catalog,
        l: &crate::format::label::VolumeLabel,
        uuid: u8,
        n: u32,
        started: i64,
        paths: &[&str],
    ) {
        let mut rec = cat
            .begin_session(l, &start(l, uuid, n, started), 2 * n, &Default::default())
            .unwrap();
        for (i, p) in paths.iter().enumerate() {
            rec.add(&entry(p, 1, started, 2 * n, i as u64)).unwrap();
        }
        rec.commit(
            &end(paths.len() as u64, started + 10),
            &WriteDone::default(),
        )
        .unwrap();
    }

    fn count(cat: &Catalog, sql: &str) -> i64 {
        cat.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn prune_by_age_keeps_sessions_and_removes_unused_paths() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        write(&mut cat, &l, 2, 1, 1000, &["old", "old/gone", "both"]);
        write(&mut cat, &l, 3, 2, 2000, &["both", "new"]);
        let before = dump(&cat);
        let dry = cat.prune(PruneRule::OlderThan(1500), true).unwrap();
        assert_eq!((dry.sessions.len(), dry.entries_deleted), (1, 3));
        assert_eq!(dump(&cat), before, "a dry run changed the catalog");
        let r = cat.prune(PruneRule::OlderThan(1500), false).unwrap();
        assert_eq!(
            (r.sessions.len(), r.entries_deleted, r.paths_deleted),
            (1, 3, 2)
        );
        assert_eq!(cat.find(&FindQuery::new("both")).unwrap().versions.len(), 1);
        assert_eq!(cat.find(&FindQuery::new("old/gone")).unwrap().paths, 0);
        assert_eq!(count(&cat, "SELECT count(*) FROM paths"), 2);
        // The session is still known: the set still has both.
        assert_eq!(count(&cat, "SELECT count(*) FROM sessions"), 2);
        assert_eq!(
            cat.recall("nightly", None, None).unwrap().cartridges[0].sessions,
            vec![1, 2]
        );
        assert!(cat.check(true).unwrap().problems.is_empty());
        // Again: nothing left to do.
        let again = cat.prune(PruneRule::OlderThan(1500), false).unwrap();
        assert!(again.sessions.is_empty());
    }

    #[test]
    fn prune_keeping_n_sessions_per_set() {
        let (_d, mut cat) = temp_catalog();
        let a = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let b = label("TPR002L9", 2, Some((8, "monthly", 1)));
        for i in 0..4u32 {
            write(&mut cat, &a, 10 + i as u8, i + 1, 1000 + i as i64, &["f"]);
        }
        write(&mut cat, &b, 20, 1, 500, &["f"]);
        let r = cat.prune(PruneRule::KeepSessions(2), false).unwrap();
        let mut pruned: Vec<(String, u32)> = r
            .sessions
            .iter()
            .map(|s| (s.set.clone().unwrap(), s.number))
            .collect();
        pruned.sort();
        assert_eq!(pruned, vec![("nightly".into(), 1), ("nightly".into(), 2)]);
        assert_eq!(cat.find(&FindQuery::new("f")).unwrap().versions.len(), 3);
    }

    #[test]
    fn check_reports_pending_sessions() {
        let (_d, mut cat) = temp_catalog();
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        write(&mut cat, &l, 2, 1, 1000, &["a"]);
        let mut rec = cat
            .begin_session(&l, &start(&l, 3, 2, 2000), 4, &Default::default())
            .unwrap();
        rec.add(&entry("b", 1, 1, 4, 0)).unwrap();
        rec.flush().unwrap();
        std::mem::forget(rec);
        let r = cat.check(false).unwrap();
        assert_eq!(r.pending.len(), 1, "{r:?}");
        assert!(r.problems.is_empty());
        assert_eq!((r.sessions, r.entries, r.cartridges), (2, 2, 1));
    }
}
