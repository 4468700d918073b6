//! Paths as a tree of names: `paths(id, parent, name)`, parent 0 for the
//! first component. Any byte string is stored and given back exactly
//! (empty components included), so hostile paths from a tape cannot break it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: path names are short and not attacker-chosen in a way that
/// matters here (a collision costs time, never correctness).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

use rusqlite::{Connection, OptionalExtension};

/// The parent id of first components.
pub const ROOT: i64 = 0;

/// What ingest remembers about paths within one write transaction (no other
/// writer can change the tree meanwhile, so what it remembers stays true;
/// make a new one for each transaction), so a session in walk order costs a
/// hash lookup per entry instead of a B-tree search: the ids of recent
/// directories, and the children of the few directories being filled
/// (loaded with one range read when first met). Bounded: a directory with
/// more than [`DIR_LOAD_LIMIT`] children is looked up entry by entry, and
/// the maps are dropped when they grow past their limits.
pub struct PathCache {
    dirs: FastMap<Vec<u8>, i64>,
    dir_limit: usize,
    /// Directories with more children than this are not loaded whole.
    load_limit: usize,
    /// Children of recent parents, most recent last.
    kids: Vec<Children>,
    /// The next free path id (0: not read yet). Ids are given out here, so
    /// new paths can be inserted many rows per statement.
    next_id: i64,
    /// New paths not inserted yet: (id, parent, name).
    pending: Vec<(i64, i64, Vec<u8>)>,
    /// The children query for a load limit (built once per limit).
    children_sql: (usize, String),
}

/// Rows per multi-row INSERT into `paths`.
const PATH_ROWS: usize = 64;

struct Children {
    parent: i64,
    names: FastMap<Vec<u8>, i64>,
    /// Every child of `parent` is in `names`: a miss means a new path.
    complete: bool,
}

/// Parents whose children are kept (a walk returns to a parent after each
/// subdirectory, so the chain of open directories should fit).
const KIDS_KEPT: usize = 16;

/// Directories with more children are not loaded whole.
pub const DIR_LOAD_LIMIT: usize = 50_000;

impl Default for PathCache {
    fn default() -> Self {
        PathCache::new(200_000)
    }
}

impl PathCache {
    pub fn new(dir_limit: usize) -> Self {
        PathCache {
            dirs: FastMap::default(),
            dir_limit,
            load_limit: DIR_LOAD_LIMIT,
            kids: Vec::new(),
            next_id: 0,
            pending: Vec::new(),
            children_sql: (usize::MAX, String::new()),
        }
    }

    /// Insert the new paths given out so far. Must run before anything
    /// reads `paths`, and before the transaction commits.
    pub fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // The statements' text is built once: a flush comes with every
        // directory first met, and formatting 192 parameters costs more
        // than inserting its rows.
        static MANY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        static ONE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let mut many = conn.prepare_cached(MANY.get_or_init(|| paths_insert_sql(PATH_ROWS)))?;
        let mut chunks = self.pending.chunks_exact(PATH_ROWS);
        for chunk in &mut chunks {
            for (i, (id, parent, name)) in chunk.iter().enumerate() {
                many.raw_bind_parameter(3 * i + 1, id)?;
                many.raw_bind_parameter(3 * i + 2, parent)?;
                many.raw_bind_parameter(3 * i + 3, name.as_slice())?;
            }
            many.raw_execute()?;
        }
        let mut one = conn.prepare_cached(ONE.get_or_init(|| paths_insert_sql(1)))?;
        for (id, parent, name) in chunks.remainder() {
            one.raw_bind_parameter(1, id)?;
            one.raw_bind_parameter(2, parent)?;
            one.raw_bind_parameter(3, name.as_slice())?;
            one.raw_execute()?;
        }
        self.pending.clear();
        Ok(())
    }

    fn new_id(&mut self, conn: &Connection) -> rusqlite::Result<i64> {
        if self.next_id == 0 {
            self.next_id =
                conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM paths", [], |r| {
                    r.get(0)
                })?;
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    fn remember(&mut self, dir: &[u8], id: i64) {
        if self.dirs.len() >= self.dir_limit {
            self.dirs.clear();
        }
        self.dirs.insert(dir.to_vec(), id);
    }

    /// The children map of `parent`, loading it when first met.
    fn children_of(&mut self, conn: &Connection, parent: i64) -> rusqlite::Result<&mut Children> {
        if let Some(i) = self.kids.iter().position(|k| k.parent == parent) {
            let k = self.kids.remove(i);
            self.kids.push(k);
        } else {
            if self.kids.len() >= KIDS_KEPT {
                self.kids.remove(0);
            }
            self.flush(conn)?;
            // The limit is written into the SQL, not bound: SQLite prepares a
            // statement again at every new binding of a LIMIT parameter.
            if self.children_sql.0 != self.load_limit {
                self.children_sql = (
                    self.load_limit,
                    format!(
                        "SELECT id, name FROM paths WHERE parent = ?1 LIMIT {}",
                        self.load_limit + 1
                    ),
                );
            }
            let mut st = conn.prepare_cached(&self.children_sql.1)?;
            let mut names = FastMap::default();
            let mut rows = st.query([parent])?;
            while let Some(r) = rows.next()? {
                names.insert(r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(0)?);
            }
            let complete = names.len() <= self.load_limit;
            if !complete {
                names.clear();
            }
            self.kids.push(Children {
                parent,
                names,
                complete,
            });
        }
        Ok(self.kids.last_mut().expect("just pushed"))
    }
}

fn paths_insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT OR FAIL INTO paths (id, parent, name) VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("(?{}, ?{}, ?{})", 3 * r + 1, 3 * r + 2, 3 * r + 3));
    }
    sql
}

/// Split at the last `/`: (directory, name); no `/` means a first component.
pub fn split(path: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (Some(&path[..i]), &path[i + 1..]),
        None => (None, path),
    }
}

/// The id of `path`, creating it and any missing parents.
pub fn intern(
    conn: &Connection,
    cache: &mut PathCache,
    path: &[u8],
    is_dir: bool,
) -> rusqlite::Result<i64> {
    let (dir, name) = split(path);
    let parent = match dir {
        None => ROOT,
        Some(d) => match cache.dirs.get(d) {
            Some(&id) => id,
            None => {
                let id = intern(conn, cache, d, true)?;
                cache.remember(d, id);
                id
            }
        },
    };
    let kids = cache.children_of(conn, parent)?;
    let id = match kids.names.get(name) {
        Some(&id) => id,
        None => {
            let complete = kids.complete;
            let known = if complete {
                None
            } else {
                cache.flush(conn)?;
                child(conn, parent, name)?
            };
            let id = match known {
                Some(id) => id,
                None => {
                    let id = cache.new_id(conn)?;
                    cache.pending.push((id, parent, name.to_vec()));
                    id
                }
            };
            if complete {
                // The map is the most recent one.
                if let Some(k) = cache.kids.last_mut() {
                    k.names.insert(name.to_vec(), id);
                }
            }
            id
        }
    };
    if is_dir {
        cache.remember(path, id);
    }
    Ok(id)
}

/// The id of the child `name` of `parent`, if known.
pub fn child(conn: &Connection, parent: i64, name: &[u8]) -> rusqlite::Result<Option<i64>> {
    let mut sel = conn.prepare_cached("SELECT id FROM paths WHERE parent = ?1 AND name = ?2")?;
    sel.query_row(rusqlite::params![parent, name], |r| r.get(0))
        .optional()
}

/// The id of an existing path (exact bytes), if the catalog knows it.
pub fn lookup(conn: &Connection, path: &[u8]) -> rusqlite::Result<Option<i64>> {
    let mut id = ROOT;
    for name in path.split(|&b| b == b'/') {
        match child(conn, id, name)? {
            Some(c) => id = c,
            None => return Ok(None),
        }
    }
    Ok(Some(id))
}

/// The full path of `id` (empty for the root).
pub fn full_path(conn: &Connection, id: i64) -> rusqlite::Result<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut cur = id;
    let mut st = conn.prepare_cached("SELECT parent, name FROM paths WHERE id = ?1")?;
    // Bounded by the number of rows: a cycle can only come from corruption.
    let mut guard = 0u32;
    while cur != ROOT {
        let (parent, name): (i64, Vec<u8>) = st.query_row([cur], |r| Ok((r.get(0)?, r.get(1)?)))?;
        names.push(name);
        cur = parent;
        guard += 1;
        if guard > 65_536 {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some("a cycle in the path tree".into()),
            ));
        }
    }
    names.reverse();
    Ok(names.join(&b'/'))
}

/// The children of `parent`, in name order: (id, name).
pub fn children(conn: &Connection, parent: i64) -> rusqlite::Result<Vec<(i64, Vec<u8>)>> {
    let mut st =
        conn.prepare_cached("SELECT id, name FROM paths WHERE parent = ?1 ORDER BY name")?;
    let rows = st.query_map([parent], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE paths (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL);
             CREATE UNIQUE INDEX paths_parent_name ON paths(parent, name);",
        )
        .unwrap();
        c
    }

    #[test]
    fn interleaved_directories_and_big_ones_keep_ids_unique() {
        // Many parents visited in turn (more than the maps kept), small
        // load limits (directories looked up entry by entry), paths
        // pending across reloads: every path gets one id, and a second
        // pass in another order finds the same ones.
        let c = db();
        let mut all = Vec::new();
        for round in 0..3 {
            for d in 0..40 {
                for f in 0..5 {
                    all.push(format!("top/d{d}/f{}", round * 5 + f));
                }
            }
        }
        let mut cache = PathCache::new(7);
        cache.load_limit = 3;
        let ids: Vec<i64> = all
            .iter()
            .map(|p| intern(&c, &mut cache, p.as_bytes(), false).unwrap())
            .collect();
        cache.flush(&c).unwrap();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), all.len());
        let mut again = PathCache::new(3);
        for (p, id) in all.iter().zip(&ids).rev() {
            assert_eq!(intern(&c, &mut again, p.as_bytes(), false).unwrap(), *id);
            assert_eq!(full_path(&c, *id).unwrap(), p.as_bytes());
        }
        let n: i64 = c
            .query_row("SELECT count(*) FROM paths", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, all.len() + 41);
    }

    #[test]
    fn paths_round_trip_exactly_and_share_directories() {
        let c = db();
        let mut cache = PathCache::new(2);
        let paths: Vec<&[u8]> = vec![
            b"etc",
            b"etc/ssh",
            b"etc/ssh/sshd_config",
            b"etc/ssh/ssh_config",
            b"etc/hosts",
            b"/abs/odd",
            b"a//b/",
            b"",
            b"caf\xc3\xa9/\xff\xfe",
        ];
        let mut ids = Vec::new();
        for p in &paths {
            ids.push(intern(&c, &mut cache, p, false).unwrap());
        }
        cache.flush(&c).unwrap();
        for (p, id) in paths.iter().zip(&ids) {
            assert_eq!(&full_path(&c, *id).unwrap(), p);
            assert_eq!(lookup(&c, p).unwrap(), Some(*id), "{p:?}");
            // Interning again gives the same id (with a cold cache too).
            assert_eq!(intern(&c, &mut PathCache::new(1), p, false).unwrap(), *id);
            assert_eq!(intern(&c, &mut cache, p, false).unwrap(), *id);
        }
        // "etc" is stored once: etc, ssh, sshd_config, ssh_config, hosts.
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM paths WHERE name IN (x'657463', x'737368')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(lookup(&c, b"etc/nope").unwrap(), None);
        let kids: Vec<Vec<u8>> = children(&c, ids[1])
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(kids, vec![b"ssh_config".to_vec(), b"sshd_config".to_vec()]);
    }
}
