//! The host catalog: every file version tapir wrote, the cartridge that
//! holds it, and where that cartridge is now (SQLite, bundled).
//!
//! The cartridges are the truth; the catalog is an index that can always be
//! rebuilt from them (`tapir catalog import`). Three rules follow:
//!
//! - the catalog never shows a session, or entries, that the tape lacks:
//!   a write records its entries as *pending* and makes them visible only
//!   when the write job calls [`SessionRecorder::commit`] after the final
//!   synchronous filemark ([`record`]);
//! - an existing file is never silently recreated: a damaged or foreign file
//!   is reported with a typed [`Error`] and a one-line hint ([`schema`]);
//! - merging is by UUID (set, cartridge, session), so importing the same
//!   cartridge twice changes nothing ([`ingest`]).
//!
//! Layout: [`schema`] (open, migrations, corruption probe), [`paths`]
//! (compact path storage), [`record`] (the write job's recorder),
//! [`ingest`] (import and merge), [`query`] (find, recall, sets, media),
//! [`location`] and [`when`] (pure parsing and policy), [`prune`].

pub mod ingest;
pub mod levels;
pub mod location;
pub mod paths;
pub mod prune;
pub mod query;
pub mod record;
pub mod schema;
pub mod when;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::exit::ExitStatus;

pub use ingest::{ImportOptions, ImportReport, MergeAction};
pub use location::{Location, LocationKind};
pub use record::{DriveIdentity, SessionRecorder, WriterInfo};

/// Where the catalog lives unless `--catalog` or `$TAPIR_CATALOG` says otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/tapir/catalog.db";

/// The environment variable naming the catalog file.
pub const ENV_VAR: &str = "TAPIR_CATALOG";

/// The one-line hint printed with every damaged-catalog error.
pub const REBUILD_HINT: &str = "move the file aside and rebuild the catalog from the cartridges: \
     load each one and run `tapir catalog import` (the last cartridge of a set is enough once sets carry catalog copies)";

/// Errors of the catalog, each with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a readable SQLite database, or SQLite reports it malformed.
    #[error("catalog {path}: damaged: {detail}\nhint: {REBUILD_HINT}")]
    Damaged { path: PathBuf, detail: String },
    /// A valid SQLite database that some other program owns.
    #[error("catalog {path}: this is a SQLite database of another program (application id {app_id:#010x}), not a tapir catalog; check --catalog / $TAPIR_CATALOG")]
    Foreign { path: PathBuf, app_id: u32 },
    /// Written by a newer tapir whose schema this one does not know.
    #[error("catalog {path}: schema version {found} is newer than this tapir understands ({supported}); use a newer tapir")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A read-only command found no catalog file.
    #[error("no catalog at {path}: it is created by the first `tapir write` or `tapir catalog import` (or give --catalog PATH)")]
    Missing { path: PathBuf },
    /// Something named on the command line is not in the catalog.
    #[error("{0}")]
    NotFound(String),
    /// A name matches several things; the message lists them.
    #[error("{0}")]
    Ambiguous(String),
    /// A bad argument (date, location, pattern).
    #[error("{0}")]
    Invalid(String),
    /// The catalog disagrees with itself or with the request in a way that
    /// needs a human (never resolved by guessing).
    #[error("{0}")]
    Conflict(String),
    #[error("catalog {path}: {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit status this error maps to.
    ///
    /// A damaged catalog is a system fault on this host (like an I/O error),
    /// not a usage mistake and not damage to archived data: 6. A foreign or
    /// newer-schema file, or a missing one, is a configuration problem: 2.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Damaged { .. } | Error::Sqlite { .. } | Error::Io { .. } => {
                ExitStatus::DeviceError
            }
            Error::Foreign { .. }
            | Error::TooNew { .. }
            | Error::Missing { .. }
            | Error::NotFound(_)
            | Error::Ambiguous(_)
            | Error::Invalid(_) => ExitStatus::Usage,
            Error::Conflict(_) => ExitStatus::Refused,
        }
    }

    /// Wrap a SQLite error; a malformed or non-database file becomes `Damaged`.
    pub(crate) fn sql(path: &Path, context: impl Into<String>, source: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let context = context.into();
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Error::Damaged {
                path: path.to_path_buf(),
                detail: format!("{context}: {source}"),
            },
            _ => Error::Sqlite {
                path: path.to_path_buf(),
                context,
                source,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The catalog path: the one given, else `$TAPIR_CATALOG`, else [`DEFAULT_PATH`].
/// (The CLI passes what clap read; this is for callers without clap.)
pub fn resolve_path(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    match std::env::var_os(ENV_VAR) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// An open catalog.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
    /// A checkpoint of the sessions merged so far, running on a connection
    /// and thread of its own while the next session is inserted.
    checkpoint: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Open the catalog at `path`, creating it (and its directory) if there
    /// is no file there. An existing file is checked and migrated, never
    /// recreated.
    pub fn open(path: &Path) -> Result<Catalog> {
        schema::open(path, true)
    }

    /// Open an existing catalog; [`Error::Missing`] if there is none.
    pub fn open_existing(path: &Path) -> Result<Catalog> {
        schema::open(path, false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Map a SQLite error with this catalog's path.
    pub(crate) fn err(&self, context: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        let context = context.to_string();
        move |e| Error::sql(&self.path, context, e)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Wait for the checkpoint started after the last merge, if any. The
    /// merged sessions are committed either way (in the write-ahead log);
    /// a checkpoint only moves them into the database file, and one left
    /// unfinished is done again by the next connection that checkpoints.
    pub fn wait_for_checkpoint(&mut self) {
        if let Some(h) = self.checkpoint.take() {
            let _ = h.join();
        }
    }

    /// Copy what is committed in the write-ahead log into the database on
    /// another thread (PASSIVE: it never waits for, or blocks, this
    /// connection), so the next bulk insert overlaps it.
    pub(crate) fn begin_background_checkpoint(&mut self) {
        self.wait_for_checkpoint();
        let path = self.path.clone();
        self.checkpoint = Some(std::thread::spawn(move || {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let done = Connection::open_with_flags(&path, flags)
                .and_then(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())));
            if let Err(e) = done {
                tracing::debug!("catalog {}: background checkpoint: {e}", path.display());
            }
        }));
    }
}

/// Seconds since the epoch, now.
pub(crate) fn now_sec() -> i64 {
    crate::format::meta::Timestamp::now().sec
}

/// A u64 stored losslessly in SQLite's signed 64-bit integer.
pub(crate) fn u64_sql(v: u64) -> i64 {
    v as i64
}

/// The inverse of [`u64_sql`].
pub(crate) fn sql_u64(v: i64) -> u64 {
    v as u64
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::format::label::{RescueKit, SetMembership, VolumeLabel};
    use crate::format::meta::{
        CatalogEntry, EntryKind, SessionEnd, SessionStart, StreamPosition, Timestamp,
    };

    pub fn temp_catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        (dir, cat)
    }

    pub fn label(name: &str, uuid: u8, set: Option<(u8, &str, u32)>) -> VolumeLabel {
        VolumeLabel {
            format_version: 1,
            volume_uuid: [uuid; 16],
            label: name.into(),
            pool: "default".into(),
            labelled: Timestamp {
                sec: 1_700_000_000,
                nsec: 0,
            },
            host: "backup01".into(),
            block_size: 256 * 1024,
            set: set.map(|(u, n, seq)| SetMembership {
                set_uuid: [u; 16],
                set_name: n.into(),
                volume_seq: seq,
                previous_volume: None,
                joined: Timestamp {
                    sec: 1_700_000_100,
                    nsec: 0,
                },
                host: "backup01".into(),
            }),
            rescue_kit: RescueKit::spec_only(),
            worm: false,
            tapir_version: "0.1.0".into(),
        }
    }

    pub fn start(l: &VolumeLabel, uuid: u8, number: u32, started: i64) -> SessionStart {
        let m = l.set.as_ref().unwrap();
        SessionStart {
            session_uuid: [uuid; 16],
            session: number,
            set_uuid: m.set_uuid,
            set_name: m.set_name.clone(),
            host: "web01".into(),
            started: Timestamp {
                sec: started,
                nsec: 0,
            },
            tapir_version: "0.1.0".into(),
            sources: vec![minicbor::bytes::ByteVec::from(b"/etc".to_vec())],
            volume_seq: m.volume_seq,
            block_size: l.block_size,
            continues: None,
            excludes: None,
            contents_excluded: None,
            job: None,
        }
    }

    pub fn entry(path: &str, size: u64, mtime: i64, tape_file: u32, block: u64) -> CatalogEntry {
        CatalogEntry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File.code(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: Some("root".into()),
            group: Some("root".into()),
            mtime: Timestamp {
                sec: mtime,
                nsec: 7,
            },
            size,
            link_target: None,
            position: StreamPosition {
                tape_file,
                block,
                offset: 64,
            },
            blake3: Some(*blake3::hash(path.as_bytes()).as_bytes()),
            status: 0,
            device: None,
            continued_from: None,
        }
    }

    pub fn end(entries: u64, ended: i64) -> SessionEnd {
        SessionEnd {
            entries,
            stored_bytes: 1000,
            ended: Timestamp {
                sec: ended,
                nsec: 0,
            },
            warnings: 0,
            status: 0,
            skipped: 0,
        }
    }

    /// Every row of every table, as text, for before/after comparisons.
    pub fn dump(cat: &Catalog) -> Vec<String> {
        let mut out = Vec::new();
        let tables: Vec<String> = cat
            .conn()
            .prepare("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        for t in tables {
            let mut st = cat.conn().prepare(&format!("SELECT * FROM {t}")).unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    let mut s = format!("{t}:");
                    for i in 0..n {
                        let v: rusqlite::types::Value = r.get(i)?;
                        s.push_str(&format!(" {v:?}"));
                    }
                    Ok(s)
                })
                .unwrap();
            for r in rows {
                out.push(r.unwrap());
            }
        }
        out.sort();
        out
    }
}
