//! Questions the catalog answers: `find` (a file's versions and where they
//! are), `recall` (the cartridges to bring back), `sets`, and the media
//! inventory (`media list|show|move|retire|damaged`).
//!
//! Every query sees only sessions that are complete or interrupted on tape;
//! pending (being written, or abandoned by a crash) and overwritten sessions
//! are invisible.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, OptionalExtension};

use crate::format::label::uuid_text;
use crate::format::meta::{StreamPosition, Timestamp};
use crate::pipeline::glob::{glob_match, normalise_pattern};

use super::location::{self, Location, LocationEvent, LocationKind};
use super::paths::{self, ROOT};
use super::{now_sec, sql_u64, Catalog, Error, Result};

/// A cartridge, briefly, with where it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartridgeBrief {
    pub id: i64,
    pub label: String,
    pub uuid: String,
    pub state: String,
    pub location: Option<LocationEvent>,
}

/// A session, briefly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBrief {
    pub id: i64,
    pub number: u32,
    pub uuid: String,
    pub host: Option<String>,
    pub started: Option<i64>,
    pub set_name: Option<String>,
    pub set_uuid: Option<String>,
    /// False for an interrupted session (what reached the tape before it stopped).
    pub complete: bool,
    pub cartridge_id: i64,
}

/// One version of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub path: Vec<u8>,
    pub kind: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub blake3: Option<[u8; 32]>,
    /// `EntryEnd` status (0: complete at source).
    pub status: u8,
    pub link_target: Option<Vec<u8>>,
    pub position: StreamPosition,
    pub session: SessionBrief,
    pub cartridge: CartridgeBrief,
}

/// What `find` looks for.
#[derive(Debug, Clone, Default)]
pub struct FindQuery {
    /// An archive path (`/etc/ssh/sshd_config` and `etc/ssh/sshd_config` are
    /// the same) or a glob over archive paths (`*` also crosses `/`).
    pub pattern: String,
    /// Only the newest version from a session started at or before this time.
    pub at: Option<i64>,
    /// Only sessions written from this host.
    pub host: Option<String>,
    /// Stop after this many matching paths.
    pub limit: Option<usize>,
}

impl FindQuery {
    pub fn new(pattern: &str) -> Self {
        FindQuery {
            pattern: pattern.to_string(),
            ..Default::default()
        }
    }
}

/// Versions found, grouped by path in path order, newest first within a path.
#[derive(Debug, Clone, Default)]
pub struct FindResult {
    pub versions: Vec<Version>,
    /// Paths with at least one version.
    pub paths: usize,
    /// The limit cut the result short.
    pub truncated: bool,
}

fn has_glob(b: &[u8]) -> bool {
    b.iter().any(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
}

/// The leading components without glob characters, and the rest.
fn literal_prefix(pat: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lit = Vec::new();
    let mut rest = pat;
    while let Some(i) = rest.iter().position(|&b| b == b'/') {
        let comp = &rest[..i];
        if has_glob(comp) {
            break;
        }
        lit.push(comp);
        rest = &rest[i + 1..];
    }
    (lit, rest)
}

/// Caches session and cartridge details for one query.
struct Details<'a> {
    cat: &'a Catalog,
    sessions: HashMap<i64, SessionBrief>,
    cartridges: HashMap<i64, CartridgeBrief>,
}

impl<'a> Details<'a> {
    fn new(cat: &'a Catalog) -> Self {
        Details {
            cat,
            sessions: HashMap::new(),
            cartridges: HashMap::new(),
        }
    }

    fn session(&mut self, id: i64) -> Result<SessionBrief> {
        if let Some(s) = self.sessions.get(&id) {
            return Ok(s.clone());
        }
        let s = session_brief(self.cat, id)?;
        self.sessions.insert(id, s.clone());
        Ok(s)
    }

    fn cartridge(&mut self, id: i64) -> Result<CartridgeBrief> {
        if let Some(c) = self.cartridges.get(&id) {
            return Ok(c.clone());
        }
        let c = cartridge_brief(self.cat, id)?;
        self.cartridges.insert(id, c.clone());
        Ok(c)
    }
}

fn session_brief(cat: &Catalog, id: i64) -> Result<SessionBrief> {
    let mut st = cat
        .conn()
        .prepare_cached(
            "SELECT s.number, s.uuid, s.host, s.started, s.status, s.cartridge_id, t.name, t.uuid
             FROM sessions s LEFT JOIN sets t ON t.id = s.set_id WHERE s.id = ?1",
        )
        .map_err(cat.err("reading a session"))?;
    st.query_row([id], |r| {
        let uuid: [u8; 16] = r.get(1)?;
        let status: String = r.get(4)?;
        let set_uuid: Option<[u8; 16]> = r.get(7)?;
        Ok(SessionBrief {
            id,
            number: r.get(0)?,
            uuid: uuid_text(&uuid),
            host: r.get(2)?,
            started: r.get(3)?,
            complete: status == "complete",
            cartridge_id: r.get(5)?,
            set_name: r.get(6)?,
            set_uuid: set_uuid.map(|u| uuid_text(&u)),
        })
    })
    .map_err(cat.err("reading a session"))
}

fn cartridge_brief(cat: &Catalog, id: i64) -> Result<CartridgeBrief> {
    let mut st = cat
        .conn()
        .prepare_cached("SELECT label, uuid, state FROM cartridges WHERE id = ?1")
        .map_err(cat.err("reading a cartridge"))?;
    let (label, uuid, state): (String, [u8; 16], String) = st
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(cat.err("reading a cartridge"))?;
    let location = location::current(cat.conn(), id).map_err(cat.err("reading a location"))?;
    Ok(CartridgeBrief {
        id,
        label,
        uuid: uuid_text(&uuid),
        state,
        location,
    })
}

impl Catalog {
    /// Every version of the paths matching `q.pattern` (with `q.at`: the
    /// version as of that time), and the cartridges that hold them.
    pub fn find(&self, q: &FindQuery) -> Result<FindResult> {
        let pat = normalise_pattern(&q.pattern);
        if pat.is_empty() {
            return Err(Error::Invalid(
                "an empty pattern; give a path or a glob such as 'etc/*'".into(),
            ));
        }
        let mut d = Details::new(self);
        let mut out = FindResult::default();
        let err = |e| Error::sql(&self.path, "searching", e);
        if !has_glob(&pat) {
            if let Some(id) = paths::lookup(self.conn(), &pat).map_err(err)? {
                self.versions_of(&mut d, id, &pat, q, &mut out)?;
            }
            return Ok(out);
        }
        let (lit, rest) = literal_prefix(&pat);
        let mut base = ROOT;
        for comp in &lit {
            match paths::child(self.conn(), base, comp).map_err(err)? {
                Some(id) => base = id,
                None => return Ok(out),
            }
        }
        let base_path = lit.join(&b'/');
        // `*` crosses `/`; without one the match has a fixed depth.
        let max_depth = if rest.contains(&b'*') {
            usize::MAX
        } else {
            rest.split(|&b| b == b'/').count()
        };
        // Depth-first in name order, so paths come out sorted like `find`.
        let mut stack: Vec<(i64, Vec<u8>, usize)> = vec![(base, base_path, 0)];
        while let Some((id, path, depth)) = stack.pop() {
            // The base itself is no match: it has no glob part.
            if depth > 0 && glob_match(&pat, &path) {
                if q.limit.is_some_and(|l| out.paths >= l) {
                    out.truncated = true;
                    break;
                }
                self.versions_of(&mut d, id, &path, q, &mut out)?;
            }
            if depth < max_depth {
                let kids = paths::children(self.conn(), id).map_err(err)?;
                for (cid, name) in kids.into_iter().rev() {
                    let mut full = path.clone();
                    if id != ROOT {
                        full.push(b'/');
                    }
                    full.extend_from_slice(&name);
                    stack.push((cid, full, depth + 1));
                }
            }
        }
        Ok(out)
    }

    fn versions_of(
        &self,
        d: &mut Details<'_>,
        path_id: i64,
        path: &[u8],
        q: &FindQuery,
        out: &mut FindResult,
    ) -> Result<()> {
        let err = |e| Error::sql(&self.path, "reading versions", e);
        let mut st = self
            .conn()
            .prepare_cached(
                "SELECT s.id, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime, e.mtime_ns,
                        e.hash, e.status, e.link, e.tape_file, e.block, e.offset
                 FROM entries e INDEXED BY entries_path CROSS JOIN sessions s
                 WHERE e.path = ?1 AND s.id = e.id >> 32
                   AND s.status IN ('complete', 'interrupted')
                   AND (?2 IS NULL OR s.started <= ?2)
                   AND (?3 IS NULL OR s.host = ?3)
                 ORDER BY s.started DESC, s.id DESC, e.id DESC",
            )
            .map_err(err)?;
        let mut rows = st.query(params![path_id, q.at, q.host]).map_err(err)?;
        let mut any = false;
        while let Some(r) = rows.next().map_err(err)? {
            let session_id: i64 = r.get(0).map_err(err)?;
            let session = d.session(session_id)?;
            let cartridge = d.cartridge(session.cartridge_id)?;
            let hash: Option<Vec<u8>> = r.get(8).map_err(err)?;
            out.versions.push(Version {
                path: path.to_vec(),
                kind: r.get(1).map_err(err)?,
                mode: r.get(2).map_err(err)?,
                uid: r.get(3).map_err(err)?,
                gid: r.get(4).map_err(err)?,
                size: sql_u64(r.get(5).map_err(err)?),
                mtime: Timestamp {
                    sec: r.get(6).map_err(err)?,
                    nsec: r.get(7).map_err(err)?,
                },
                blake3: hash.and_then(|h| h.try_into().ok()),
                status: r.get(9).map_err(err)?,
                link_target: r.get(10).map_err(err)?,
                position: StreamPosition {
                    tape_file: r.get(11).map_err(err)?,
                    block: sql_u64(r.get(12).map_err(err)?),
                    offset: r.get(13).map_err(err)?,
                },
                session,
                cartridge,
            });
            any = true;
            if q.at.is_some() {
                break;
            }
        }
        if any {
            out.paths += 1;
        }
        Ok(())
    }
}

/// A set, with its cartridges and sessions counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub host: String,
    pub created: i64,
    pub cartridges: Vec<SetCartridge>,
    /// Visible sessions (complete or interrupted).
    pub sessions: u64,
    pub interrupted: u64,
    pub first_started: Option<i64>,
    pub last_started: Option<i64>,
    pub entries: u64,
    pub stored_bytes: u64,
    /// Sessions whose file records were pruned.
    pub pruned_sessions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCartridge {
    pub label: String,
    pub volume_seq: Option<u32>,
    pub state: String,
    pub location: Option<Location>,
}

impl Catalog {
    /// Every set (with `host`: those created on it or with sessions from it).
    pub fn sets(&self, host: Option<&str>) -> Result<Vec<SetInfo>> {
        let err = |e| Error::sql(&self.path, "listing sets", e);
        let mut st = self
            .conn()
            .prepare(
                "SELECT t.id, t.uuid, t.name, t.host, t.created,
                    count(s.id), coalesce(sum(s.status = 'interrupted'), 0),
                    min(s.started), max(s.started), coalesce(sum(s.entries), 0),
                    coalesce(sum(s.stored_bytes), 0), coalesce(sum(s.entries_pruned), 0)
                 FROM sets t LEFT JOIN sessions s
                    ON s.set_id = t.id AND s.status IN ('complete', 'interrupted')
                 WHERE ?1 IS NULL OR t.host = ?1
                    OR EXISTS (SELECT 1 FROM sessions x WHERE x.set_id = t.id AND x.host = ?1)
                 GROUP BY t.id ORDER BY t.created, t.id",
            )
            .map_err(err)?;
        let mut sets: Vec<SetInfo> = st
            .query_map([host], |r| {
                let uuid: [u8; 16] = r.get(1)?;
                Ok(SetInfo {
                    id: r.get(0)?,
                    uuid: uuid_text(&uuid),
                    name: r.get(2)?,
                    host: r.get(3)?,
                    created: r.get(4)?,
                    cartridges: Vec::new(),
                    sessions: r.get::<_, i64>(5)? as u64,
                    interrupted: r.get::<_, i64>(6)? as u64,
                    first_started: r.get(7)?,
                    last_started: r.get(8)?,
                    entries: r.get::<_, i64>(9)? as u64,
                    stored_bytes: sql_u64(r.get(10)?),
                    pruned_sessions: r.get::<_, i64>(11)? as u64,
                })
            })
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        let mut cst = self
            .conn()
            .prepare_cached(
                "SELECT id, label, volume_seq, state FROM cartridges WHERE set_id = ?1
                 ORDER BY volume_seq, label",
            )
            .map_err(err)?;
        for s in &mut sets {
            let rows: Vec<(i64, String, Option<u32>, String)> = cst
                .query_map([s.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(err)?;
            for (id, label, volume_seq, state) in rows {
                let location = location::current(self.conn(), id)
                    .map_err(err)?
                    .map(|e| e.location);
                s.cartridges.push(SetCartridge {
                    label,
                    volume_seq,
                    state,
                    location,
                });
            }
        }
        Ok(sets)
    }

    /// Sets whose name is `key`, or whose UUID starts with `key` (8+ hex digits).
    pub fn resolve_sets(&self, key: &str) -> Result<Vec<SetInfo>> {
        let hexkey: String = key.chars().filter(|c| *c != '-').collect();
        let by_uuid = hexkey.len() >= 8 && hexkey.chars().all(|c| c.is_ascii_hexdigit());
        Ok(self
            .sets(None)?
            .into_iter()
            .filter(|s| {
                s.name == key
                    || (by_uuid
                        && s.uuid
                            .replace('-', "")
                            .starts_with(&hexkey.to_ascii_lowercase()))
            })
            .collect())
    }
}

/// What `recall` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecallTarget {
    /// Whole sets (a name can belong to several).
    Sets(Vec<(String, String)>),
    /// Paths matching a pattern: how many paths had a version.
    Paths { pattern: String, paths: usize },
}

/// A cartridge to bring back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallCartridge {
    pub cartridge: CartridgeBrief,
    pub set_name: Option<String>,
    pub volume_seq: Option<u32>,
    /// Session numbers needed from it.
    pub sessions: Vec<u32>,
    /// Versions needed from it (for a path recall).
    pub versions: u64,
    /// Why this cartridge may disappoint (damaged, retired).
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallResult {
    pub target: RecallTarget,
    /// Grouped by where they are (off-site first), then by label.
    pub cartridges: Vec<RecallCartridge>,
}

/// Order for fetching: off-site first (they take longest), then on site.
fn fetch_rank(l: Option<&LocationEvent>) -> u8 {
    match l.map(|e| e.location.kind) {
        Some(LocationKind::Vault) => 0,
        Some(LocationKind::Transit) => 1,
        Some(LocationKind::Shelf) => 2,
        Some(LocationKind::Library) => 3,
        Some(LocationKind::Slot) => 4,
        Some(LocationKind::Drive) => 5,
        None => 6,
    }
}

impl Catalog {
    /// The cartridges needed to restore a set (name or UUID) or the paths
    /// matching a pattern, as of `at`, and where each one is.
    pub fn recall(&self, key: &str, at: Option<i64>, host: Option<&str>) -> Result<RecallResult> {
        let sets = self.resolve_sets(key)?;
        let mut d = Details::new(self);
        let mut need: BTreeMap<i64, (Vec<u32>, u64)> = BTreeMap::new();
        let target = if !sets.is_empty() {
            let err = |e| Error::sql(&self.path, "recalling a set", e);
            let mut st = self
                .conn()
                .prepare_cached(
                    "SELECT cartridge_id, number FROM sessions
                     WHERE set_id = ?1 AND status IN ('complete', 'interrupted')
                       AND (?2 IS NULL OR started <= ?2) AND (?3 IS NULL OR host = ?3)
                     ORDER BY started, number",
                )
                .map_err(err)?;
            for s in &sets {
                let rows: Vec<(i64, u32)> = st
                    .query_map(params![s.id, at, host], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(err)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(err)?;
                for (c, n) in rows {
                    need.entry(c).or_default().0.push(n);
                }
            }
            RecallTarget::Sets(
                sets.iter()
                    .map(|s| (s.name.clone(), s.uuid.clone()))
                    .collect(),
            )
        } else {
            let q = FindQuery {
                pattern: key.to_string(),
                at,
                host: host.map(str::to_string),
                limit: None,
            };
            let found = self.find(&q)?;
            if found.paths == 0 {
                return Err(Error::NotFound(format!(
                    "{key}: no set of that name or UUID, and no path matching it{}",
                    if at.is_some() { " as of that date" } else { "" }
                )));
            }
            // Without --at, the newest version of each path.
            let mut last: Option<&[u8]> = None;
            for v in &found.versions {
                if last == Some(v.path.as_slice()) {
                    continue;
                }
                last = Some(&v.path);
                let e = need.entry(v.session.cartridge_id).or_default();
                if !e.0.contains(&v.session.number) {
                    e.0.push(v.session.number);
                }
                e.1 += 1;
            }
            RecallTarget::Paths {
                pattern: key.to_string(),
                paths: found.paths,
            }
        };
        let mut cartridges = Vec::new();
        for (cid, (mut sessions, versions)) in need {
            sessions.sort_unstable();
            let cartridge = d.cartridge(cid)?;
            let (set_name, volume_seq): (Option<String>, Option<u32>) = self
                .conn()
                .query_row(
                    "SELECT t.name, c.volume_seq FROM cartridges c LEFT JOIN sets t ON t.id = c.set_id
                     WHERE c.id = ?1",
                    [cid],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(self.err("reading a cartridge"))?;
            let warning = match cartridge.state.as_str() {
                "damaged" => Some("marked damaged: some data may not be readable".to_string()),
                "retired" => Some("marked retired".to_string()),
                _ => None,
            };
            cartridges.push(RecallCartridge {
                cartridge,
                set_name,
                volume_seq,
                sessions,
                versions,
                warning,
            });
        }
        cartridges.sort_by(|a, b| {
            let la = a.cartridge.location.as_ref();
            let lb = b.cartridge.location.as_ref();
            (
                fetch_rank(la),
                la.map(|e| e.location.to_string()),
                &a.cartridge.label,
            )
                .cmp(&(
                    fetch_rank(lb),
                    lb.map(|e| e.location.to_string()),
                    &b.cartridge.label,
                ))
        });
        Ok(RecallResult { target, cartridges })
    }
}

/// The states a cartridge can be put in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediaState {
    Writable,
    Full,
    Damaged,
    Retired,
}

impl MediaState {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaState::Writable => "writable",
            MediaState::Full => "full",
            MediaState::Damaged => "damaged",
            MediaState::Retired => "retired",
        }
    }
}

/// Everything the catalog knows about one cartridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub brief: CartridgeBrief,
    pub pool: String,
    pub set_name: Option<String>,
    pub set_uuid: Option<String>,
    pub volume_seq: Option<u32>,
    pub labelled: i64,
    pub host: String,
    pub block_size: u32,
    pub worm: bool,
    pub state_note: Option<String>,
    pub state_changed: Option<i64>,
    pub bytes_written: u64,
    pub write_count: u64,
    pub read_count: u64,
    pub error_count: u64,
    pub verified: Option<i64>,
    pub verify_ok: Option<bool>,
    pub verify_detail: Option<String>,
    pub retention_until: Option<i64>,
    pub first_seen: i64,
    /// Visible sessions on it.
    pub sessions: u64,
    pub stored_bytes: u64,
}

/// A session on a cartridge, in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetail {
    pub number: u32,
    pub uuid: String,
    pub status: String,
    pub origin: String,
    pub host: Option<String>,
    pub started: Option<i64>,
    pub ended: Option<i64>,
    pub sources: Vec<Vec<u8>>,
    pub entries: u64,
    pub stored_bytes: Option<u64>,
    pub warnings: Option<u64>,
    pub data_file: u32,
    pub catalog_file: Option<u32>,
    pub lost_blocks: u64,
    pub drive_name: Option<String>,
    pub drive_serial: Option<String>,
    pub drive_firmware: Option<String>,
    pub entries_pruned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDetail {
    pub media: MediaInfo,
    pub history: Vec<LocationEvent>,
    pub sessions: Vec<SessionDetail>,
}

/// Which cartridges `media list` shows.
#[derive(Debug, Clone, Default)]
pub struct MediaFilter {
    pub pool: Option<String>,
    pub state: Option<String>,
    /// Set name or UUID prefix.
    pub set: Option<String>,
    /// A location kind (`vault`) or a full location (`vault:ironmountain`).
    pub location: Option<String>,
}

/// What a move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub label: String,
    pub uuid: String,
    pub from: Option<LocationEvent>,
    pub to: LocationEvent,
}

const MEDIA_SELECT: &str = "SELECT c.id, c.label, c.uuid, c.state, c.pool, t.name, t.uuid,
        c.volume_seq, c.labelled, c.host, c.block_size, c.worm, c.state_note, c.state_changed,
        c.bytes_written, c.write_count, c.read_count, c.error_count, c.verified, c.verify_ok,
        c.verify_detail, c.retention_until, c.first_seen,
        (SELECT count(*) FROM sessions s WHERE s.cartridge_id = c.id
            AND s.status IN ('complete', 'interrupted')),
        (SELECT coalesce(sum(s.stored_bytes), 0) FROM sessions s WHERE s.cartridge_id = c.id
            AND s.status IN ('complete', 'interrupted'))
    FROM cartridges c LEFT JOIN sets t ON t.id = c.set_id";

impl Catalog {
    /// The cartridge named by a label (or a volume UUID, 8+ hex digits).
    /// A label shared with retired records picks the one that is not retired.
    pub fn resolve_cartridge(&self, key: &str) -> Result<i64> {
        let err = |e| Error::sql(&self.path, "finding a cartridge", e);
        let rows: Vec<(i64, [u8; 16], String)> = self
            .conn()
            .prepare_cached(
                "SELECT id, uuid, state FROM cartridges WHERE label = ?1 ORDER BY labelled DESC",
            )
            .map_err(err)?
            .query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        let live: Vec<_> = rows.iter().filter(|r| r.2 != "retired").collect();
        let pick = match (live.len(), rows.len()) {
            (1, _) => Some(live[0].0),
            (0, 1) => Some(rows[0].0),
            (0, 0) => None,
            _ => {
                let list: Vec<String> = rows
                    .iter()
                    .map(|r| format!("{} ({})", uuid_text(&r.1), r.2))
                    .collect();
                return Err(Error::Ambiguous(format!(
                    "label {key} names {} cartridges: {}; give the volume UUID instead",
                    rows.len(),
                    list.join(", ")
                )));
            }
        };
        if let Some(id) = pick {
            return Ok(id);
        }
        let hexkey: String = key
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if hexkey.len() >= 8 && hexkey.chars().all(|c| c.is_ascii_hexdigit()) {
            let all: Vec<(i64, [u8; 16])> = self
                .conn()
                .prepare_cached("SELECT id, uuid FROM cartridges")
                .map_err(err)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(err)?;
            let hits: Vec<_> = all
                .iter()
                .filter(|(_, u)| super::hex(u).starts_with(&hexkey))
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].0),
                0 => {}
                n => {
                    return Err(Error::Ambiguous(format!(
                        "{key} is the start of {n} volume UUIDs; give more of it"
                    )))
                }
            }
        }
        Err(Error::NotFound(format!(
            "no cartridge {key} in the catalog; load it and run `tapir catalog import`"
        )))
    }

    fn media_rows(&self, cond: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<MediaInfo>> {
        let err = |e| Error::sql(&self.path, "reading cartridges", e);
        let sql = format!("{MEDIA_SELECT} {cond}");
        let mut st = self.conn().prepare(&sql).map_err(err)?;
        let rows: Vec<MediaInfo> = st
            .query_map(args, |r| {
                let uuid: [u8; 16] = r.get(2)?;
                let set_uuid: Option<[u8; 16]> = r.get(6)?;
                Ok(MediaInfo {
                    brief: CartridgeBrief {
                        id: r.get(0)?,
                        label: r.get(1)?,
                        uuid: uuid_text(&uuid),
                        state: r.get(3)?,
                        location: None,
                    },
                    pool: r.get(4)?,
                    set_name: r.get(5)?,
                    set_uuid: set_uuid.map(|u| uuid_text(&u)),
                    volume_seq: r.get(7)?,
                    labelled: r.get(8)?,
                    host: r.get(9)?,
                    block_size: r.get(10)?,
                    worm: r.get(11)?,
                    state_note: r.get(12)?,
                    state_changed: r.get(13)?,
                    bytes_written: sql_u64(r.get(14)?),
                    write_count: r.get::<_, i64>(15)? as u64,
                    read_count: r.get::<_, i64>(16)? as u64,
                    error_count: r.get::<_, i64>(17)? as u64,
                    verified: r.get(18)?,
                    verify_ok: r.get(19)?,
                    verify_detail: r.get(20)?,
                    retention_until: r.get(21)?,
                    first_seen: r.get(22)?,
                    sessions: r.get::<_, i64>(23)? as u64,
                    stored_bytes: sql_u64(r.get(24)?),
                })
            })
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        let mut out = rows;
        for m in &mut out {
            m.brief.location = location::current(self.conn(), m.brief.id).map_err(err)?;
        }
        Ok(out)
    }

    /// The media inventory, by label.
    pub fn media_list(&self, f: &MediaFilter) -> Result<Vec<MediaInfo>> {
        let set_uuids: Option<Vec<String>> = match &f.set {
            Some(key) => {
                let sets = self.resolve_sets(key)?;
                if sets.is_empty() {
                    return Err(Error::NotFound(format!("no set {key} in the catalog")));
                }
                Some(sets.into_iter().map(|s| s.uuid).collect())
            }
            None => None,
        };
        let all = self.media_rows(
            "WHERE (?1 IS NULL OR c.pool = ?1) AND (?2 IS NULL OR c.state = ?2)
             ORDER BY c.label, c.labelled",
            &[&f.pool, &f.state],
        )?;
        let loc_filter = f.location.as_deref();
        Ok(all
            .into_iter()
            .filter(|m| {
                set_uuids
                    .as_ref()
                    .is_none_or(|u| m.set_uuid.as_ref().is_some_and(|s| u.contains(s)))
            })
            .filter(|m| match loc_filter {
                None => true,
                Some(want) => m.brief.location.as_ref().is_some_and(|l| {
                    let text = l.location.to_string();
                    text == want || (!want.contains(':') && l.location.kind.as_str() == want)
                }),
            })
            .collect())
    }

    /// One cartridge's facts (label or volume UUID; a live one before a
    /// retired one of the same label).
    pub fn media_info(&self, key: &str) -> Result<MediaInfo> {
        let id = self.resolve_cartridge(key)?;
        self.media_rows("WHERE c.id = ?1", &[&id])?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("no cartridge {key}")))
    }

    /// One cartridge: its facts, location history and sessions.
    pub fn media_show(&self, key: &str) -> Result<MediaDetail> {
        let media = self.media_info(key)?;
        let id = media.brief.id;
        let err = |e| Error::sql(&self.path, "reading a cartridge", e);
        let history = location::history(self.conn(), id).map_err(err)?;
        let mut st = self
            .conn()
            .prepare(
                "SELECT number, uuid, status, origin, host, started, ended, sources, entries,
                        stored_bytes, warnings, data_file, catalog_file, lost_blocks, drive_name,
                        drive_serial, drive_firmware, entries_pruned
                 FROM sessions WHERE cartridge_id = ?1 AND status != 'pending' ORDER BY number",
            )
            .map_err(err)?;
        let sessions = st
            .query_map([id], |r| {
                let uuid: [u8; 16] = r.get(1)?;
                let sources: Option<Vec<u8>> = r.get(7)?;
                Ok(SessionDetail {
                    number: r.get(0)?,
                    uuid: uuid_text(&uuid),
                    status: r.get(2)?,
                    origin: r.get(3)?,
                    host: r.get(4)?,
                    started: r.get(5)?,
                    ended: r.get(6)?,
                    sources: super::record::split_sources(&sources.unwrap_or_default()),
                    entries: r.get::<_, i64>(8)? as u64,
                    stored_bytes: r.get::<_, Option<i64>>(9)?.map(sql_u64),
                    warnings: r.get::<_, Option<i64>>(10)?.map(sql_u64),
                    data_file: r.get(11)?,
                    catalog_file: r.get(12)?,
                    lost_blocks: r.get::<_, i64>(13)? as u64,
                    drive_name: r.get(14)?,
                    drive_serial: r.get(15)?,
                    drive_firmware: r.get(16)?,
                    entries_pruned: r.get(17)?,
                })
            })
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        Ok(MediaDetail {
            media,
            history,
            sessions,
        })
    }

    /// Record that a person moved a cartridge to `to`.
    pub fn move_media(
        &mut self,
        key: &str,
        to: &Location,
        who: &str,
        note: Option<&str>,
    ) -> Result<Moved> {
        let id = self.resolve_cartridge(key)?;
        let brief = cartridge_brief(self, id)?;
        let at = now_sec();
        location::append(self.conn(), id, to, at, who, note)
            .map_err(self.err("recording a move"))?;
        Ok(Moved {
            label: brief.label,
            uuid: brief.uuid,
            from: brief.location,
            to: LocationEvent {
                location: to.clone(),
                at,
                by: who.to_string(),
                note: note.map(str::to_string),
            },
        })
    }

    /// tapir itself saw a cartridge at `loc` (a changer put it in a slot, a
    /// drive read it): recorded only when that is not already where the
    /// catalog has it, so repeating it changes nothing. False when unchanged.
    pub fn note_seen(&mut self, key: &str, loc: &Location, who: &str, why: &str) -> Result<bool> {
        let id = self.resolve_cartridge(key)?;
        location::note_seen_tx(self.conn(), id, loc, who, why)
            .map_err(self.err("recording a location"))
    }

    /// Mark a cartridge's state (`media retire|damaged`); returns (label, previous state).
    pub fn set_media_state(
        &mut self,
        key: &str,
        state: MediaState,
        note: Option<&str>,
    ) -> Result<(String, String)> {
        let id = self.resolve_cartridge(key)?;
        let brief = cartridge_brief(self, id)?;
        if brief.state != state.as_str() {
            self.conn()
                .execute(
                    "UPDATE cartridges SET state = ?2, state_note = ?3, state_changed = ?4 WHERE id = ?1",
                    params![id, state.as_str(), note, now_sec()],
                )
                .map_err(self.err("changing a cartridge's state"))?;
        }
        Ok((brief.label, brief.state))
    }

    /// Keep a cartridge's data until `until` (None: no retention set).
    pub fn set_retention(&mut self, key: &str, until: Option<i64>) -> Result<String> {
        let id = self.resolve_cartridge(key)?;
        self.conn()
            .execute(
                "UPDATE cartridges SET retention_until = ?2 WHERE id = ?1",
                params![id, until],
            )
            .map_err(self.err("setting retention"))?;
        Ok(cartridge_brief(self, id)?.label)
    }

    /// Record a verify of the cartridge with this volume UUID (for `tapir verify`).
    pub fn record_verify(
        &mut self,
        volume_uuid: &[u8; 16],
        ok: bool,
        detail: Option<&str>,
    ) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE cartridges SET verified = ?2, verify_ok = ?3, verify_detail = ?4,
                     read_count = read_count + 1 WHERE uuid = ?1",
                params![volume_uuid, now_sec(), ok, detail],
            )
            .map_err(self.err("recording a verify"))?;
        Ok(n > 0)
    }

    /// Count a read (a restore) and any errors the drive reported.
    pub fn record_read(&mut self, volume_uuid: &[u8; 16], errors: u64) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE cartridges SET read_count = read_count + 1, error_count = error_count + ?2
                 WHERE uuid = ?1",
                params![volume_uuid, super::u64_sql(errors)],
            )
            .map_err(self.err("recording a read"))?;
        Ok(n > 0)
    }

    /// The cartridge row id for a volume UUID, if known.
    pub fn cartridge_id(&self, volume_uuid: &[u8; 16]) -> Result<Option<i64>> {
        self.conn()
            .query_row(
                "SELECT id FROM cartridges WHERE uuid = ?1",
                [volume_uuid],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("finding a cartridge"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ingest::ImportOptions;
    use crate::catalog::testutil::*;
    use crate::format::meta::CatalogEntry;
    use crate::pipeline::list::{ListSource, Listing, SessionEntries};
    use crate::pipeline::volume::{SessionOnTape, TapeMap};

    /// Import sessions (uuid, number, started, entries) onto a cartridge.
    fn import(
        cat: &mut Catalog,
        l: &crate::format::label::VolumeLabel,
        sessions: Vec<(u8, u32, i64, Vec<CatalogEntry>)>,
    ) {
        let sessions: Vec<SessionEntries> = sessions
            .into_iter()
            .map(|(u, n, started, entries)| SessionEntries {
                session: SessionOnTape {
                    number: n,
                    data_file: 2 * n,
                    start: Some(start(l, u, n, started)),
                    catalog_file: Some(2 * n + 1),
                    set_catalog_file: None,
                },
                source: ListSource::Catalog,
                summary: Some(end(entries.len() as u64, started + 60)),
                entries,
                incomplete: vec![],
                lost: vec![],
                closed: true,
            })
            .collect();
        let lst = Listing {
            map: TapeMap {
                label: l.clone(),
                sessions: sessions.iter().map(|s| s.session.clone()).collect(),
                unknown_files: vec![],
                closed_files: 0,
                open_last_file: false,
            },
            sessions,
        };
        cat.import_listing(&lst, &ImportOptions::default()).unwrap();
    }

    const DAY: i64 = 86_400;
    const T0: i64 = 1_700_000_000;

    /// Three nightly sessions of one host on two cartridges of one set:
    /// sshd_config changes on night 2, a file appears on night 3.
    fn nightly() -> (tempfile::TempDir, Catalog) {
        let (d, mut cat) = temp_catalog();
        let l1 = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let l2 = label("TPR002L9", 2, Some((9, "nightly", 2)));
        let night = |n: i64, cfg_size: u64, extra: bool| {
            let mut v = vec![
                entry("etc", 0, T0, 2, 0),
                entry("etc/ssh", 0, T0, 2, 0),
                entry("etc/ssh/sshd_config", cfg_size, T0 + n, 2, 1),
                entry("etc/ssh/ssh_config", 10, T0, 2, 2),
                entry("etc/hosts", 20, T0, 2, 3),
            ];
            if extra {
                v.push(entry("etc/ssh/moduli", 30, T0, 2, 4));
            }
            v
        };
        import(
            &mut cat,
            &l1,
            vec![
                (11, 1, T0, night(0, 100, false)),
                (12, 2, T0 + DAY, night(1, 200, false)),
            ],
        );
        import(
            &mut cat,
            &l2,
            vec![(13, 1, T0 + 2 * DAY, night(2, 200, true))],
        );
        (d, cat)
    }

    #[test]
    fn find_exact_path_lists_every_version_newest_first() {
        let (_d, cat) = nightly();
        for p in [
            "etc/ssh/sshd_config",
            "/etc/ssh/sshd_config",
            "./etc/ssh/sshd_config",
        ] {
            let r = cat.find(&FindQuery::new(p)).unwrap();
            assert_eq!(r.paths, 1);
            let sizes: Vec<u64> = r.versions.iter().map(|v| v.size).collect();
            assert_eq!(sizes, vec![200, 200, 100], "{p}");
            let labels: Vec<&str> = r
                .versions
                .iter()
                .map(|v| v.cartridge.label.as_str())
                .collect();
            assert_eq!(labels, vec!["TPR002L9", "TPR001L9", "TPR001L9"]);
            assert_eq!(r.versions[0].session.set_name.as_deref(), Some("nightly"));
        }
        assert_eq!(cat.find(&FindQuery::new("etc/ssh/nope")).unwrap().paths, 0);
        assert!(cat.find(&FindQuery::new("/")).is_err());
    }

    #[test]
    fn find_at_gives_the_version_as_of_that_time() {
        let (_d, cat) = nightly();
        let at = |t: i64| {
            let q = FindQuery {
                at: Some(t),
                ..FindQuery::new("etc/ssh/sshd_config")
            };
            cat.find(&q).unwrap().versions
        };
        // Before the first session: nothing.
        assert!(at(T0 - 1).is_empty());
        // Exactly at a session's start: that session.
        let v = at(T0);
        assert_eq!((v.len(), v[0].size, v[0].session.number), (1, 100, 1));
        // Between nights 1 and 2: night 1's version.
        let v = at(T0 + DAY - 1);
        assert_eq!(
            (v[0].size, v[0].cartridge.label.as_str()),
            (100, "TPR001L9")
        );
        let v = at(T0 + DAY + 5);
        assert_eq!(
            (v[0].size, v[0].session.number, v[0].mtime.sec),
            (200, 2, T0 + 1)
        );
        // Later: the newest.
        let v = at(T0 + 10 * DAY);
        assert_eq!(v[0].cartridge.label, "TPR002L9");
        // A file that appeared on night 3 does not exist as of night 2.
        let q = FindQuery {
            at: Some(T0 + DAY + 5),
            ..FindQuery::new("etc/ssh/moduli")
        };
        assert_eq!(cat.find(&q).unwrap().paths, 0);
        // --host filters sessions.
        let q = FindQuery {
            host: Some("other".into()),
            ..FindQuery::new("etc/ssh/sshd_config")
        };
        assert_eq!(cat.find(&q).unwrap().paths, 0);
    }

    #[test]
    fn find_globs_over_a_directory() {
        let (_d, cat) = nightly();
        let paths = |p: &str| -> Vec<String> {
            let r = cat
                .find(&FindQuery {
                    at: Some(T0 + 9 * DAY),
                    ..FindQuery::new(p)
                })
                .unwrap();
            r.versions
                .iter()
                .map(|v| String::from_utf8_lossy(&v.path).into_owned())
                .collect()
        };
        assert_eq!(
            paths("etc/ssh/*"),
            vec![
                "etc/ssh/moduli",
                "etc/ssh/ssh_config",
                "etc/ssh/sshd_config"
            ]
        );
        assert_eq!(paths("etc/ssh/ssh?_config"), vec!["etc/ssh/sshd_config"]);
        // `*` crosses `/`, like restore patterns.
        assert_eq!(
            paths("/etc/*config"),
            vec!["etc/ssh/ssh_config", "etc/ssh/sshd_config"]
        );
        assert_eq!(paths("*hosts"), vec!["etc/hosts"]);
        // `?` has a fixed depth: only direct children of etc.
        assert!(paths("etc/????").is_empty());
        assert_eq!(paths("etc/???"), vec!["etc/ssh"]);
        assert_eq!(paths("nope/*"), Vec::<String>::new());
        let r = cat
            .find(&FindQuery {
                limit: Some(2),
                ..FindQuery::new("etc/*")
            })
            .unwrap();
        assert!(r.truncated);
        assert_eq!(r.paths, 2);
    }

    #[test]
    fn media_moves_are_kept_as_history() {
        let (_d, mut cat) = nightly();
        let vault: Location = "vault:ironmountain".parse().unwrap();
        cat.move_media(
            "TPR001L9",
            &"transit:courier".parse().unwrap(),
            "alice",
            None,
        )
        .unwrap();
        let m = cat
            .move_media("TPR001L9", &vault, "bob", Some("weekly run"))
            .unwrap();
        assert_eq!(m.from.unwrap().location.to_string(), "transit:courier");
        let d = cat.media_show("TPR001L9").unwrap();
        let h: Vec<(String, String)> = d
            .history
            .iter()
            .map(|e| (e.location.to_string(), e.by.clone()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("transit:courier".to_string(), "alice".to_string()),
                ("vault:ironmountain".to_string(), "bob".to_string())
            ]
        );
        assert_eq!(d.media.brief.location.unwrap().location, vault);
        assert_eq!(d.sessions.len(), 2);
        // find shows where each version is now.
        let r = cat.find(&FindQuery::new("etc/hosts")).unwrap();
        let locs: Vec<Option<String>> = r
            .versions
            .iter()
            .map(|v| {
                v.cartridge
                    .location
                    .as_ref()
                    .map(|l| l.location.to_string())
            })
            .collect();
        assert_eq!(
            locs,
            vec![
                None,
                Some("vault:ironmountain".into()),
                Some("vault:ironmountain".into())
            ]
        );
        // Filters.
        let f = MediaFilter {
            location: Some("vault".into()),
            ..Default::default()
        };
        assert_eq!(cat.media_list(&f).unwrap().len(), 1);
        let f = MediaFilter {
            location: Some("vault:elsewhere".into()),
            ..Default::default()
        };
        assert_eq!(cat.media_list(&f).unwrap().len(), 0);
        let f = MediaFilter {
            set: Some("nightly".into()),
            ..Default::default()
        };
        assert_eq!(cat.media_list(&f).unwrap().len(), 2);
        assert!(matches!(
            cat.move_media("NOPE", &vault, "x", None),
            Err(Error::NotFound(_))
        ));
        // A changer reporting it in slot 4: recorded once, not twice.
        let slot: Location = "slot:4".parse().unwrap();
        assert!(cat
            .note_seen("TPR001L9", &slot, "changer", "inventory")
            .unwrap());
        assert!(!cat
            .note_seen("TPR001L9", &slot, "changer", "inventory")
            .unwrap());
        assert_eq!(cat.media_show("TPR001L9").unwrap().history.len(), 3);
    }

    #[test]
    fn media_states_and_lookup_by_uuid() {
        let (_d, mut cat) = nightly();
        let (label, old) = cat
            .set_media_state("TPR002L9", MediaState::Damaged, Some("CRC errors"))
            .unwrap();
        assert_eq!((label.as_str(), old.as_str()), ("TPR002L9", "writable"));
        let uuid = uuid_text(&[1; 16]);
        let (label, _) = cat
            .set_media_state(&uuid[..13], MediaState::Retired, None)
            .unwrap();
        assert_eq!(label, "TPR001L9");
        let f = MediaFilter {
            state: Some("damaged".into()),
            ..Default::default()
        };
        let l = cat.media_list(&f).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].state_note.as_deref(), Some("CRC errors"));
        // Recall warns about them.
        let r = cat.recall("nightly", None, None).unwrap();
        assert!(r.cartridges.iter().all(|c| c.warning.is_some()));
    }

    #[test]
    fn recall_a_set_or_paths_with_locations() {
        let (_d, mut cat) = nightly();
        cat.move_media(
            "TPR001L9",
            &"vault:ironmountain".parse().unwrap(),
            "ops",
            None,
        )
        .unwrap();
        cat.move_media("TPR002L9", &"shelf".parse().unwrap(), "ops", None)
            .unwrap();
        // The whole set: both cartridges, the vault one first.
        let r = cat.recall("nightly", None, None).unwrap();
        let got: Vec<(String, Vec<u32>)> = r
            .cartridges
            .iter()
            .map(|c| (c.cartridge.label.clone(), c.sessions.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("TPR001L9".into(), vec![1, 2]),
                ("TPR002L9".into(), vec![1])
            ]
        );
        // As of night 2 only the first cartridge is needed.
        let r = cat.recall("nightly", Some(T0 + DAY + 1), None).unwrap();
        assert_eq!(r.cartridges.len(), 1);
        assert_eq!(r.cartridges[0].cartridge.label, "TPR001L9");
        // By set UUID prefix.
        let r = cat.recall(&uuid_text(&[9; 16])[..8], None, None).unwrap();
        assert_eq!(r.cartridges.len(), 2);
        // A path: its newest version only.
        let r = cat.recall("/etc/ssh/sshd_config", None, None).unwrap();
        assert_eq!(r.cartridges.len(), 1);
        assert_eq!(r.cartridges[0].cartridge.label, "TPR002L9");
        let r = cat.recall("etc/ssh/*", Some(T0 + DAY + 1), None).unwrap();
        assert_eq!(
            r.target,
            RecallTarget::Paths {
                pattern: "etc/ssh/*".into(),
                paths: 2
            }
        );
        assert_eq!(r.cartridges[0].cartridge.label, "TPR001L9");
        assert_eq!(r.cartridges[0].sessions, vec![2]);
        assert_eq!(
            r.cartridges[0]
                .cartridge
                .location
                .as_ref()
                .unwrap()
                .location
                .to_string(),
            "vault:ironmountain"
        );
        assert!(matches!(
            cat.recall("nothing/here", None, None),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn sets_summarise() {
        let (_d, cat) = nightly();
        let s = cat.sets(None).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "nightly");
        assert_eq!(s[0].sessions, 3);
        assert_eq!(s[0].entries, 16);
        assert_eq!(s[0].first_started, Some(T0));
        assert_eq!(s[0].last_started, Some(T0 + 2 * DAY));
        let labels: Vec<&str> = s[0].cartridges.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, vec!["TPR001L9", "TPR002L9"]);
        assert_eq!(cat.sets(Some("web01")).unwrap().len(), 1);
        assert_eq!(cat.sets(Some("elsewhere")).unwrap().len(), 0);
    }

    #[test]
    fn lookups_use_the_indexes() {
        let (_d, cat) = nightly();
        let plan = |sql: &str| -> String {
            let mut st = cat
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let rows: Vec<String> = st
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            rows.join(" | ")
        };
        let p = plan("SELECT id FROM paths WHERE parent = 1 AND name = x'00'");
        assert!(p.contains("paths_parent_name"), "{p}");
        let p = plan(
            "SELECT e.size FROM entries e INDEXED BY entries_path CROSS JOIN sessions s
             WHERE e.path = 3 AND s.id = e.id >> 32 AND s.status IN ('complete', 'interrupted')",
        );
        assert!(p.contains("entries_path") && !p.contains("SCAN"), "{p}");
    }
}
