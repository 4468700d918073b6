//! Opening the catalog: atomic creation, the corruption probe, versioned
//! migrations and connection settings.
//!
//! A new catalog is built under a temporary name in the same directory and
//! linked into place only when its schema is complete, so a crash never
//! leaves a half-made file at the catalog's path. An existing file is checked
//! (header, application id, schema version, the edges of every B-tree, and a
//! full `quick_check` when it is small) and never recreated: whatever is
//! wrong with it is reported with a hint on rebuilding it from the cartridges.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{Catalog, Error, Result};

/// `PRAGMA application_id` of a tapir catalog: "TAPR".
pub const APPLICATION_ID: u32 = 0x5441_5052;

/// Schema versions, in order; `PRAGMA user_version` counts those applied.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this tapir writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Catalogs up to this size get a full `PRAGMA quick_check` at every open;
/// larger ones get the cheap probe only (`tapir catalog check` does the rest).
pub const QUICK_CHECK_LIMIT: u64 = 64 << 20;

/// How long a writer waits for another (an import holds the write lock for
/// one session at a time: about 5 s per 2.5 million entries).
const BUSY_SECS: u64 = 120;

/// Page cache per connection (negative: KiB).
const CACHE_KIB: i64 = 64 * 1024;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Version 1: cartridges and their locations, sets, sessions, entries.
///
/// Paths are stored as a tree of names (`paths`: parent, name), so a
/// directory's name is stored once however many files and versions it
/// holds; the unique index on (parent, name) serves both exact lookups and
/// directory listings. An entry's rowid is `session << 32 | seq` (see
/// [`entry_id`]), so a session is written (appended), listed and deleted
/// as one range of the table; `entries_path` finds every version of a path.
const V1: &str = r#"
PRAGMA application_id = 1413566546;

CREATE TABLE sets (
    id       INTEGER PRIMARY KEY,
    uuid     BLOB NOT NULL UNIQUE,
    name     TEXT NOT NULL,
    host     TEXT NOT NULL,
    created  INTEGER NOT NULL
) STRICT;
CREATE INDEX sets_name ON sets(name);

CREATE TABLE cartridges (
    id              INTEGER PRIMARY KEY,
    uuid            BLOB NOT NULL UNIQUE,
    label           TEXT NOT NULL,
    pool            TEXT NOT NULL,
    set_id          INTEGER REFERENCES sets(id),
    volume_seq      INTEGER,
    previous_volume BLOB,
    labelled        INTEGER NOT NULL,
    host            TEXT NOT NULL,
    block_size      INTEGER NOT NULL,
    worm            INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'writable'
                    CHECK (state IN ('writable', 'full', 'damaged', 'retired')),
    state_note      TEXT,
    state_changed   INTEGER,
    bytes_written   INTEGER NOT NULL DEFAULT 0,
    write_count     INTEGER NOT NULL DEFAULT 0,
    read_count      INTEGER NOT NULL DEFAULT 0,
    error_count     INTEGER NOT NULL DEFAULT 0,
    verified        INTEGER,
    verify_ok       INTEGER,
    verify_detail   TEXT,
    retention_until INTEGER,
    first_seen      INTEGER NOT NULL
) STRICT;
CREATE INDEX cartridges_label ON cartridges(label);
CREATE INDEX cartridges_set ON cartridges(set_id, volume_seq);

CREATE TABLE locations (
    id           INTEGER PRIMARY KEY,
    cartridge_id INTEGER NOT NULL REFERENCES cartridges(id),
    kind         TEXT NOT NULL
                 CHECK (kind IN ('drive', 'slot', 'library', 'shelf', 'transit', 'vault')),
    name         TEXT NOT NULL DEFAULT '',
    at           INTEGER NOT NULL,
    by           TEXT NOT NULL,
    note         TEXT
) STRICT;
CREATE INDEX locations_cartridge ON locations(cartridge_id, id);

CREATE TABLE sessions (
    id             INTEGER PRIMARY KEY,
    uuid           BLOB NOT NULL UNIQUE,
    cartridge_id   INTEGER NOT NULL REFERENCES cartridges(id),
    set_id         INTEGER REFERENCES sets(id),
    number         INTEGER NOT NULL,
    data_file      INTEGER NOT NULL,
    catalog_file   INTEGER,
    host           TEXT,
    started        INTEGER,
    ended          INTEGER,
    sources        BLOB,
    tapir_version  TEXT,
    status         TEXT NOT NULL
                   CHECK (status IN ('pending', 'complete', 'interrupted', 'overwritten')),
    origin         TEXT NOT NULL CHECK (origin IN ('write', 'catalog', 'scan', 'set-copy')),
    entries        INTEGER NOT NULL DEFAULT 0,
    stored_bytes   INTEGER,
    warnings       INTEGER,
    skipped        INTEGER,
    end_status     INTEGER,
    lost_blocks    INTEGER NOT NULL DEFAULT 0,
    drive_name     TEXT,
    drive_vendor   TEXT,
    drive_model    TEXT,
    drive_serial   TEXT,
    drive_firmware TEXT,
    entries_pruned INTEGER NOT NULL DEFAULT 0,
    recorded       INTEGER NOT NULL,
    UNIQUE (cartridge_id, number)
) STRICT;
CREATE INDEX sessions_set ON sessions(set_id, started);
CREATE INDEX sessions_started ON sessions(started);

CREATE TABLE paths (
    id     INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name   BLOB NOT NULL
) STRICT;
CREATE UNIQUE INDEX paths_parent_name ON paths(parent, name);

CREATE TABLE entries (
    id        INTEGER PRIMARY KEY,
    path      INTEGER NOT NULL,
    kind      INTEGER NOT NULL,
    status    INTEGER NOT NULL,
    mode      INTEGER NOT NULL,
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    mtime     INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    hash      BLOB,
    tape_file INTEGER NOT NULL,
    block     INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    link      BLOB
) STRICT;
CREATE INDEX entries_path ON entries(path);
"#;

/// Version 2: the job that wrote a session, its level, and the session
/// an incremental or differential is relative to (FORMAT.md §7.7).
const V2: &str = r#"
ALTER TABLE sessions ADD COLUMN job TEXT;
ALTER TABLE sessions ADD COLUMN level INTEGER;
ALTER TABLE sessions ADD COLUMN base BLOB;
CREATE INDEX sessions_job ON sessions(job, started) WHERE job IS NOT NULL;
"#;

/// Version 3: how a job's session parts chain across cartridges, which of
/// a pool's copies a run is, and what a job saw of each file it wrote
/// (device, inode, change time, and when it looked), so the next
/// incremental trusts metadata only when it can. The file facts are the
/// host's only: no cartridge holds them, and an imported session has none
/// (its next incremental hashes instead).
const V3: &str = r#"
ALTER TABLE sessions ADD COLUMN continues BLOB;
ALTER TABLE sessions ADD COLUMN copy INTEGER;
CREATE INDEX sessions_continues ON sessions(continues) WHERE continues IS NOT NULL;
CREATE TABLE file_state (
    entry    INTEGER PRIMARY KEY,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    ctime    INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    seen     INTEGER NOT NULL
) STRICT;
"#;

/// The rowid of entry `seq` of session `session`.
pub fn entry_id(session: i64, seq: i64) -> i64 {
    (session << 32) | seq
}

/// The rowids of session `session`'s entries: `lo..=hi`.
pub fn session_range(session: i64) -> (i64, i64) {
    (session << 32, (session << 32) | 0xffff_ffff)
}

/// Most entries one session can hold (the seq part of the rowid).
pub const MAX_SESSION_ENTRIES: i64 = 1 << 32;

/// Cheap reads that walk both edges of every B-tree of the schema: a
/// truncated or clobbered file fails one of them.
const PROBES: &[&str] = &[
    "SELECT count(*) FROM sqlite_schema",
    // One min() or max() per query: only then does SQLite walk an index
    // edge instead of scanning.
    "SELECT min(id) FROM sets",
    "SELECT max(id) FROM sets",
    "SELECT min(uuid) FROM sets",
    "SELECT max(uuid) FROM sets",
    "SELECT min(name) FROM sets",
    "SELECT max(name) FROM sets",
    "SELECT min(id) FROM cartridges",
    "SELECT max(id) FROM cartridges",
    "SELECT min(uuid) FROM cartridges",
    "SELECT max(uuid) FROM cartridges",
    "SELECT min(label) FROM cartridges",
    "SELECT max(label) FROM cartridges",
    "SELECT min(set_id) FROM cartridges",
    "SELECT max(set_id) FROM cartridges",
    "SELECT min(id) FROM locations",
    "SELECT max(id) FROM locations",
    "SELECT min(cartridge_id) FROM locations",
    "SELECT max(cartridge_id) FROM locations",
    "SELECT min(id) FROM sessions",
    "SELECT max(id) FROM sessions",
    "SELECT min(uuid) FROM sessions",
    "SELECT max(uuid) FROM sessions",
    "SELECT min(set_id) FROM sessions",
    "SELECT max(set_id) FROM sessions",
    "SELECT min(started) FROM sessions",
    "SELECT max(started) FROM sessions",
    "SELECT min(cartridge_id) FROM sessions",
    "SELECT max(cartridge_id) FROM sessions",
    "SELECT min(id) FROM paths",
    "SELECT max(id) FROM paths",
    "SELECT min(parent) FROM paths",
    "SELECT max(parent) FROM paths",
    "SELECT min(id) FROM entries",
    "SELECT max(id) FROM entries",
    "SELECT min(path) FROM entries",
    "SELECT max(path) FROM entries",
    "SELECT min(entry) FROM file_state",
    "SELECT max(entry) FROM file_state",
];

/// Open (and with `create`, create) the catalog at `path`.
pub(super) fn open(path: &Path, create: bool) -> Result<Catalog> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_file() => {}
        Ok(_) => {
            return Err(Error::Invalid(format!(
                "catalog {}: not a regular file; give --catalog a file path",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Err(Error::Missing {
                    path: path.to_path_buf(),
                });
            }
            create_new(path)?;
        }
        Err(e) => return Err(io(path, "reading its metadata", e)),
    }
    let header = probe_header(path)?;
    let conn = connect(path)?;
    let cat = Catalog {
        conn,
        path: path.to_path_buf(),
        checkpoint: None,
    };
    let app_id: u32 = pragma_u32(&cat, "application_id")?;
    if app_id != APPLICATION_ID {
        return Err(Error::Foreign {
            path: path.to_path_buf(),
            app_id,
        });
    }
    let version = pragma_u32(&cat, "user_version")?;
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let mut cat = cat;
    if version < SCHEMA_VERSION {
        migrate(&mut cat, version)?;
    }
    probe_structure(&cat, header.file_len)?;
    configure(&cat)?;
    Ok(cat)
}

/// What the first 100 bytes said.
struct Header {
    file_len: u64,
}

/// Check the SQLite file header without SQLite: magic, page size, and that
/// the file holds every page the header counts (a truncated file does not).
fn probe_header(path: &Path) -> Result<Header> {
    let damaged = |detail: String| Error::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let mut f = File::open(path).map_err(|e| io(path, "opening", e))?;
    let len = f
        .metadata()
        .map_err(|e| io(path, "reading its size", e))?
        .len();
    if len == 0 {
        return Err(damaged("the file is empty (0 bytes)".into()));
    }
    let mut h = [0u8; 100];
    let mut got = 0;
    while got < h.len() {
        match f.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(path, "reading the header", e)),
        }
    }
    if got < h.len() {
        return Err(damaged(format!(
            "the file has only {len} bytes, less than a SQLite header"
        )));
    }
    if &h[..16] != SQLITE_MAGIC {
        return Err(damaged(
            "the file does not start with the SQLite header: it is not a SQLite database (damaged, or the wrong file)"
                .into(),
        ));
    }
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        n => n as u64,
    };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(damaged(format!(
            "the header gives an impossible page size ({page_size})"
        )));
    }
    if len % page_size != 0 {
        return Err(damaged(format!(
            "{len} bytes is not a whole number of {page_size}-byte pages: the file was truncated or extended"
        )));
    }
    let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    // The in-header page count is valid when "version-valid-for" equals the
    // change counter. A crash in the middle of a checkpoint may leave it ahead
    // of the file until SQLite replays the WAL, so a WAL with content defers
    // to SQLite's own recovery and the structural probe.
    let wal_has_data = std::fs::metadata(wal_path(path)).is_ok_and(|m| m.len() > 0);
    if be32(24) == be32(92) && !wal_has_data {
        let pages = be32(28) as u64;
        let expected = pages * page_size;
        if len < expected {
            return Err(damaged(format!(
                "truncated: the header counts {pages} pages of {page_size} bytes ({expected} bytes) but the file has {len}"
            )));
        }
    }
    Ok(Header { file_len: len })
}

fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn connect(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| Error::sql(path, "opening", e))?;
    conn.busy_timeout(Duration::from_secs(BUSY_SECS))
        .map_err(|e| Error::sql(path, "setting the busy timeout", e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn pragma_u32(cat: &Catalog, name: &str) -> Result<u32> {
    let v: i64 = cat
        .conn
        .pragma_query_value(None, name, |r| r.get(0))
        .map_err(cat.err(&format!("reading PRAGMA {name}")))?;
    Ok(v as u32)
}

/// Settings for every connection (WAL is persistent; it is checked anyway).
fn configure(cat: &Catalog) -> Result<()> {
    let mode: String = cat
        .conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(cat.err("setting WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            "catalog {}: journal mode is {mode}, not WAL",
            cat.path.display()
        );
    }
    cat.conn
        .execute_batch(&format!(
            "PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY;
             PRAGMA journal_size_limit = 67108864;
             PRAGMA cache_size = -{CACHE_KIB};"
        ))
        .map_err(cat.err("configuring the connection"))
}

/// Walk the edges of every B-tree; run `quick_check` when the file is small.
fn probe_structure(cat: &Catalog, file_len: u64) -> Result<()> {
    let damaged = |detail: String| Error::Damaged {
        path: cat.path.clone(),
        detail,
    };
    for sql in PROBES {
        cat.conn.query_row(sql, [], |_| Ok(())).map_err(|e| {
            match Error::sql(&cat.path, "probing its structure", e) {
                Error::Sqlite { source, .. } => damaged(format!("{sql}: {source}")),
                other => other,
            }
        })?;
    }
    if file_len <= QUICK_CHECK_LIMIT {
        let problems = integrity(cat, "quick_check", 5)?;
        if !problems.is_empty() {
            return Err(damaged(problems.join("; ")));
        }
    }
    Ok(())
}

/// Run `PRAGMA quick_check` or `integrity_check`; the problems found (none: ok).
pub(super) fn integrity(cat: &Catalog, pragma: &str, max: u32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    cat.conn
        .pragma(None, pragma, max, |r| {
            out.push(r.get::<_, String>(0)?);
            Ok(())
        })
        .map_err(
            |e| match Error::sql(&cat.path, format!("PRAGMA {pragma}"), e) {
                Error::Sqlite { source, .. } => Error::Damaged {
                    path: cat.path.clone(),
                    detail: format!("{pragma}: {source}"),
                },
                other => other,
            },
        )?;
    if out.len() == 1 && out[0] == "ok" {
        out.clear();
    }
    Ok(out)
}

/// Apply migrations `from`+1 ..= SCHEMA_VERSION, each in its own transaction.
fn migrate(cat: &mut Catalog, from: u32) -> Result<()> {
    let path = cat.path.clone();
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = i as u32 + 1;
        let ctx = format!("migrating the schema to version {version}");
        let tx = cat
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sql(&path, &ctx, e))?;
        tx.execute_batch(sql)
            .map_err(|e| Error::sql(&path, &ctx, e))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(|e| Error::sql(&path, &ctx, e))?;
        tx.commit().map_err(|e| Error::sql(&path, &ctx, e))?;
        if from > 0 {
            tracing::info!(
                "catalog {}: schema migrated to version {version}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Build a new catalog under a temporary name and link it into place.
fn create_new(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&dir)
        .map_err(|e| io(&dir, "creating the catalog's directory", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "catalog.db".into());
    let tmp = dir.join(format!(".{name}.creating-{}", std::process::id()));
    // A leftover from a crashed creation by this same pid number.
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(wal_path(&tmp));
    let result = build(&tmp).and_then(|()| {
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // No hard links here: rename, having checked there is no file.
            Err(_) if !path.exists() => std::fs::rename(&tmp, path)
                .map_err(|e| io(path, "moving the new catalog into place", e)),
            Err(e) => Err(io(path, "linking the new catalog into place", e)),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    result?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    tracing::info!(
        "catalog {}: created (schema version {SCHEMA_VERSION})",
        path.display()
    );
    Ok(())
}

/// Create the file with restrictive permissions, apply the schema, close.
fn build(tmp: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| io(tmp, "creating", e))?;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(tmp, "setting permissions", e))?;
    let conn = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sql(tmp, "creating", e))?;
    let mut cat = Catalog {
        conn,
        path: tmp.to_path_buf(),
        checkpoint: None,
    };
    cat.conn
        .execute_batch("PRAGMA page_size = 8192;")
        .map_err(cat.err("setting the page size"))?;
    let _: String = cat
        .conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(cat.err("setting WAL mode"))?;
    migrate(&mut cat, 0)?;
    let Catalog { conn, .. } = cat;
    conn.close()
        .map_err(|(_, e)| Error::sql(tmp, "closing the new catalog", e))?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(tmp, "syncing", e))?;
    Ok(())
}

fn io(path: &Path, context: &str, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        context: context.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::testutil::*;

    fn page_size_of(p: &Path) -> u64 {
        let h = std::fs::read(p).unwrap();
        u16::from_be_bytes([h[16], h[17]]) as u64
    }

    fn fill(cat: &mut Catalog, n: usize) {
        let l = label("TPR001L9", 1, Some((9, "nightly", 1)));
        let s = start(&l, 2, 1, 1_700_000_200);
        let mut rec = cat
            .begin_session(&l, &s, 2, &crate::catalog::WriterInfo::default())
            .unwrap();
        for i in 0..n {
            rec.add(&entry(
                &format!("etc/d{}/file{i}", i % 50),
                i as u64,
                1,
                2,
                i as u64,
            ))
            .unwrap();
        }
        rec.commit(&end(n as u64, 1_700_000_300), &Default::default())
            .unwrap();
    }

    #[test]
    fn creates_with_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/catalog.db");
        let cat = Catalog::open(&p).unwrap();
        assert_eq!(pragma_u32(&cat, "user_version").unwrap(), SCHEMA_VERSION);
        assert_eq!(pragma_u32(&cat, "application_id").unwrap(), APPLICATION_ID);
        drop(cat);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("catalog.db")]);
        Catalog::open(&p).unwrap();
        Catalog::open_existing(&p).unwrap();
    }

    #[test]
    fn open_existing_does_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        assert!(matches!(
            Catalog::open_existing(&p),
            Err(Error::Missing { .. })
        ));
        assert!(!p.exists());
    }

    /// Open must fail with `Damaged`, and the file must be left exactly as it was.
    fn assert_damaged_and_untouched(p: &Path) -> String {
        let before = std::fs::read(p).unwrap();
        let err = Catalog::open(p).unwrap_err();
        assert!(
            matches!(err, Error::Damaged { .. }),
            "expected Damaged, got {err:?}"
        );
        assert_eq!(err.exit_status(), crate::exit::ExitStatus::DeviceError);
        let msg = err.to_string();
        assert!(msg.contains("tapir catalog import"), "no hint in: {msg}");
        assert_eq!(std::fs::read(p).unwrap(), before, "the file was modified");
        msg
    }

    #[test]
    fn garbage_file_is_damaged_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        std::fs::write(&p, vec![0x5au8; 10_000]).unwrap();
        let msg = assert_damaged_and_untouched(&p);
        assert!(msg.contains("not a SQLite database"), "{msg}");
    }

    #[test]
    fn empty_and_tiny_files_are_damaged_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        std::fs::write(&p, b"").unwrap();
        assert!(assert_damaged_and_untouched(&p).contains("empty"));
        std::fs::write(&p, b"SQLite format 3\0abc").unwrap();
        assert!(assert_damaged_and_untouched(&p).contains("less than a SQLite header"));
    }

    #[test]
    fn truncated_database_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let mut cat = Catalog::open(&p).unwrap();
        fill(&mut cat, 3000);
        drop(cat);
        let len = std::fs::metadata(&p).unwrap().len();
        let ps = page_size_of(&p);
        assert!(len > 20 * ps, "test database too small: {len}");
        // At a page boundary: the header's page count gives it away.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len((len / 2) / ps * ps).unwrap();
        drop(f);
        assert!(assert_damaged_and_untouched(&p).contains("truncated"));
        // In the middle of a page.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len / 3 + 100).unwrap();
        drop(f);
        assert!(assert_damaged_and_untouched(&p).contains("whole number"));
    }

    #[test]
    fn clobbered_page_is_found_by_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let mut cat = Catalog::open(&p).unwrap();
        fill(&mut cat, 3000);
        drop(cat);
        let len = std::fs::metadata(&p).unwrap().len();
        let ps = page_size_of(&p);
        // Overwrite a page in the middle (not page 1) with garbage.
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        let page = (len / ps / 2) * ps;
        f.write_all_at(&vec![0xA5u8; ps as usize], page).unwrap();
        drop(f);
        assert_damaged_and_untouched(&p);
    }

    #[test]
    fn foreign_sqlite_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("other.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let before = std::fs::read(&p).unwrap();
        let err = Catalog::open(&p).unwrap_err();
        assert!(matches!(err, Error::Foreign { .. }), "{err:?}");
        assert_eq!(err.exit_status(), crate::exit::ExitStatus::Usage);
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        drop(Catalog::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        let err = Catalog::open(&p).unwrap_err();
        assert!(
            matches!(err, Error::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{err:?}"
        );
    }

    #[test]
    fn older_schema_is_migrated_in_place() {
        // A catalog stopped before migration 1 (user_version 0, application
        // id set, no tables) is brought up to date rather than refused.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "application_id", APPLICATION_ID as i64)
            .unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        drop(c);
        let cat = Catalog::open(&p).unwrap();
        assert_eq!(pragma_u32(&cat, "user_version").unwrap(), SCHEMA_VERSION);
        let n: i64 = cat
            .conn()
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn probes_walk_index_edges_instead_of_scanning() {
        // The probe runs at every open: it must cost O(depth), not O(rows).
        let (_d, cat) = temp_catalog();
        for sql in PROBES.iter().skip(1) {
            let plan: Vec<String> = cat
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            let plan = plan.join(" | ");
            assert!(plan.starts_with("SEARCH"), "{sql}: {plan}");
        }
    }

    #[test]
    fn a_directory_is_not_a_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let err = Catalog::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
}
