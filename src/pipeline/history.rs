//! What a job's run knows of its files: whether one is unchanged since the
//! run's base (an incremental or differential writes such a file as an
//! `Unchanged` entry, FORMAT.md §7.7), and what the run saw of each file,
//! kept in the host catalog for the next run.
//!
//! A file counts as unchanged without being read only when everything
//! the base recorded still holds: kind, size, mtime, mode, owner, and the
//! host facts the base's run saw (device, inode, ctime), and the base saw
//! the file settled (its ctime well before the moment it looked, so a
//! later change within the same clock tick cannot hide). Otherwise, where
//! the metadata agrees but those facts are missing (a catalog rebuilt
//! from cartridges holds none) or the base saw the file mid-change, the
//! file is read and its BLAKE3 compared with the base's.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::catalog::levels::{BaseFacts, FileState, JobSession};
use crate::catalog::Catalog;
use crate::format::meta::EntryKind;

use super::source::SourceEntry;

/// A base that saw a file's ctime less than this long before it looked
/// may have missed a change in the same tick (filesystems with coarse
/// timestamps tick in whole seconds, FAT in two).
const SETTLED_SECS: i64 = 2;

/// Bytes read at a time when hashing a file to compare it.
const HASH_CHUNK: usize = 1 << 20;

/// Counts of how unchanged files were decided.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Files found unchanged by their metadata and host facts alone.
    pub by_metadata: AtomicU64,
    /// Files read and hashed because the facts alone could not decide.
    pub hashed: AtomicU64,
    /// Of those, the ones whose content had changed after all.
    pub changed_by_hash: AtomicU64,
}

/// What the run saw of each regular file, spilled to an anonymous temp
/// file so memory stays bounded whatever the number of files.
pub struct SeenLog {
    out: Option<BufWriter<File>>,
    failed: Option<String>,
    noted: u64,
}

impl SeenLog {
    pub fn new() -> std::io::Result<Self> {
        Ok(SeenLog {
            out: Some(BufWriter::new(tempfile::tempfile()?)),
            failed: None,
            noted: 0,
        })
    }

    fn note(&mut self, path: &[u8], s: &FileState) {
        let Some(out) = self.out.as_mut() else { return };
        // Straight into the buffered writer: no allocation per file.
        let written = [
            &(path.len() as u32).to_le_bytes()[..],
            path,
            &s.dev.to_le_bytes(),
            &s.ino.to_le_bytes(),
            &s.ctime.0.to_le_bytes(),
            &s.ctime.1.to_le_bytes(),
            &s.seen.to_le_bytes(),
        ]
        .iter()
        .try_for_each(|part| out.write_all(part));
        if let Err(e) = written {
            // The next run hashes instead: slower, never wrong.
            self.failed = Some(e.to_string());
            self.out = None;
        } else {
            self.noted += 1;
        }
    }

    /// A log that notes nothing (what is left once one is taken).
    pub fn empty() -> Self {
        SeenLog {
            out: None,
            failed: Some("the list was already taken".into()),
            noted: 0,
        }
    }

    /// Files noted so far.
    pub fn noted(&self) -> u64 {
        self.noted
    }

    /// Everything noted, in order; an error when noting failed.
    pub fn finish(
        self,
    ) -> std::io::Result<impl Iterator<Item = std::io::Result<(Vec<u8>, FileState)>>> {
        if let Some(why) = self.failed {
            return Err(std::io::Error::other(format!(
                "noting what the job saw of its files failed: {why}"
            )));
        }
        let out = self.out.expect("present unless noting failed");
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        let mut r = BufReader::new(file);
        Ok(std::iter::from_fn(move || read_seen(&mut r).transpose()))
    }
}

fn read_seen(r: &mut impl Read) -> std::io::Result<Option<(Vec<u8>, FileState)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let mut path = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut path)?;
    let mut fixed = [0u8; 36];
    r.read_exact(&mut fixed)?;
    let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().expect("8 bytes"));
    let state = FileState {
        dev: u64_at(0),
        ino: u64_at(8),
        ctime: (
            u64_at(16) as i64,
            u32::from_le_bytes(fixed[24..28].try_into().expect("4 bytes")),
        ),
        seen: u64_at(28) as i64,
    };
    Ok(Some((path, state)))
}

/// The base a run compares against: the catalog and the base run's parts.
pub struct Base {
    pub catalog: Catalog,
    pub parts: Vec<JobSession>,
}

/// One job run's view of its files (the check the writer calls per file).
pub struct History {
    pub base: Option<Base>,
    pub seen: Arc<Mutex<SeenLog>>,
    pub decisions: Arc<Decisions>,
}

impl History {
    /// Note what the run sees of `src`; when the file is unchanged since
    /// the base, its BLAKE3 there.
    pub fn check(&mut self, src: &SourceEntry) -> Option<[u8; 32]> {
        let e = &src.entry;
        if let Some((dev, ino)) = src.inode {
            let state = FileState {
                dev,
                ino,
                ctime: (e.ctime.sec, e.ctime.nsec),
                seen: jiff::Timestamp::now().as_second(),
            };
            if let Ok(mut log) = self.seen.lock() {
                log.note(&e.path, &state);
            }
        }
        let base = self.base.as_ref()?;
        let facts = match base.catalog.base_facts(&base.parts, &e.path) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!("{err}; the file is written whole");
                return None;
            }
        };
        if !same_metadata(&facts, src) {
            return None;
        }
        let hash = facts.hash?;
        if settled_and_same(&facts, src) {
            self.decisions.by_metadata.fetch_add(1, Ordering::Relaxed);
            return Some(hash);
        }
        self.decisions.hashed.fetch_add(1, Ordering::Relaxed);
        match content_hash(src) {
            Ok(h) if h == hash => Some(hash),
            _ => {
                self.decisions
                    .changed_by_hash
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Kind, size, mtime, mode and owner as the base recorded them.
fn same_metadata(f: &BaseFacts, src: &SourceEntry) -> bool {
    let e = &src.entry;
    (f.kind == EntryKind::File.code() || f.kind == EntryKind::Unchanged.code())
        && f.size == e.size
        && f.mtime == (e.mtime.sec, e.mtime.nsec)
        && f.mode == e.mode
        && f.uid == e.uid
        && f.gid == e.gid
}

/// The same inode with the same ctime, which the base saw settled.
fn settled_and_same(f: &BaseFacts, src: &SourceEntry) -> bool {
    match (f.state, src.inode) {
        (Some(s), Some((dev, ino))) => {
            s.dev == dev
                && s.ino == ino
                && s.ctime == (src.entry.ctime.sec, src.entry.ctime.nsec)
                && s.ctime.0 < s.seen - SETTLED_SECS
        }
        _ => false,
    }
}

/// BLAKE3 of the file as it is now, read without moving the position of
/// the descriptor the writer will read from.
fn content_hash(src: &SourceEntry) -> std::io::Result<[u8; 32]> {
    let opened;
    let file = match &src.file {
        Some(f) => f,
        None => {
            opened = File::open(&src.abs_path)?;
            &opened
        }
    };
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::meta::{Entry, Timestamp};

    fn source(dir: &std::path::Path, content: &[u8]) -> SourceEntry {
        let p = dir.join("f");
        std::fs::write(&p, content).unwrap();
        let mut entry = Entry::new(b"f".to_vec(), EntryKind::File);
        entry.size = content.len() as u64;
        entry.ctime = Timestamp { sec: 100, nsec: 5 };
        SourceEntry {
            abs_path: p,
            entry,
            file: None,
            inode: Some((1, 2)),
        }
    }

    fn facts(src: &SourceEntry, state: Option<FileState>) -> BaseFacts {
        BaseFacts {
            kind: EntryKind::File.code(),
            size: src.entry.size,
            mtime: (src.entry.mtime.sec, src.entry.mtime.nsec),
            mode: src.entry.mode,
            uid: src.entry.uid,
            gid: src.entry.gid,
            hash: Some(*blake3::hash(b"same").as_bytes()),
            state,
        }
    }

    #[test]
    fn only_a_settled_same_inode_with_the_same_ctime_is_trusted_unread() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), b"same");
        let settled = FileState {
            dev: 1,
            ino: 2,
            ctime: (100, 5),
            seen: 200,
        };
        assert!(settled_and_same(&facts(&src, Some(settled)), &src));
        for (what, s) in [
            ("no host facts (imported)", None),
            ("another inode", Some(FileState { ino: 3, ..settled })),
            ("another device", Some(FileState { dev: 9, ..settled })),
            (
                "ctime moved",
                Some(FileState {
                    ctime: (100, 6),
                    ..settled
                }),
            ),
            (
                "seen mid-change",
                Some(FileState {
                    seen: 101,
                    ..settled
                }),
            ),
        ] {
            assert!(!settled_and_same(&facts(&src, s), &src), "{what}");
        }
    }

    #[test]
    fn where_facts_cannot_decide_the_content_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let decisions = Arc::new(Decisions::default());
        let mut h = History {
            base: None,
            seen: Arc::new(Mutex::new(SeenLog::new().unwrap())),
            decisions: decisions.clone(),
        };
        // No base: nothing is unchanged, but what was seen is noted.
        let src = source(dir.path(), b"same");
        assert_eq!(h.check(&src), None);
        assert_eq!(h.seen.lock().unwrap().noted(), 1);
        assert_eq!(
            content_hash(&src).unwrap(),
            *blake3::hash(b"same").as_bytes()
        );
        let other = source(dir.path(), b"sane");
        assert_ne!(
            content_hash(&other).unwrap(),
            *blake3::hash(b"same").as_bytes()
        );
    }

    #[test]
    fn the_seen_log_reads_back_what_was_noted() {
        let mut log = SeenLog::new().unwrap();
        let a = FileState {
            dev: u64::MAX,
            ino: 7,
            ctime: (-3, 999_999_999),
            seen: 1_800_000_000,
        };
        log.note(b"a/b", &a);
        log.note(b"", &FileState { ino: 8, ..a });
        let back: Vec<_> = log.finish().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            back,
            vec![
                (b"a/b".to_vec(), a),
                (Vec::new(), FileState { ino: 8, ..a })
            ]
        );
    }
}
