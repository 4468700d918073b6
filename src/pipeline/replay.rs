//! What a part of a session wrote, kept so it can be written again: when
//! a drive reports trouble with data it had already accepted, the entries
//! after the last durable checkpoint go again onto the next cartridge
//! (FORMAT.md §12.5), read again from their sources.
//!
//! The log lives in a temporary file, so memory stays bounded however
//! many entries a checkpoint interval holds.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::meta::{from_cbor, Entry};

use super::source::SourceEntry;
use super::{Error, Result};

fn io(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} the rewrite log"), e)
}

/// Each entry a part began, in order: its source path and `Entry` record.
pub(super) struct ReplayLog {
    out: BufWriter<File>,
    len: u64,
}

impl ReplayLog {
    pub fn new() -> Result<Self> {
        let f = tempfile::tempfile().map_err(|e| io("creating", e))?;
        Ok(ReplayLog {
            out: BufWriter::new(f),
            len: 0,
        })
    }

    /// Bytes logged so far: where the next entry will start.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Log an entry about to be written: `entry_cbor` is its `Entry`
    /// record (with `continued_from` when it resumes a cut entry).
    pub fn push(&mut self, abs_path: &Path, entry_cbor: &[u8]) -> Result<()> {
        let path = abs_path.as_os_str().as_bytes();
        self.out
            .write_all(&(path.len() as u32).to_le_bytes())
            .and_then(|_| self.out.write_all(path))
            .and_then(|_| self.out.write_all(&(entry_cbor.len() as u32).to_le_bytes()))
            .and_then(|_| self.out.write_all(entry_cbor))
            .map_err(|e| io("writing", e))?;
        self.len += 8 + path.len() as u64 + entry_cbor.len() as u64;
        Ok(())
    }

    /// The entries logged from byte `from` on, to be written again.
    pub fn replay_from(mut self, from: u64) -> Result<Replay> {
        self.out.flush().map_err(|e| io("flushing", e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io("flushing", e.into_error()))?;
        Ok(Replay::Log {
            file,
            at: from,
            end: self.len,
        })
    }
}

/// Entries waiting to be written again.
pub(super) enum Replay {
    /// A stretch of a failed part's log.
    Log { file: File, at: u64, end: u64 },
    /// One entry that was about to be written when its cartridge failed
    /// (None once taken).
    One(Option<Box<SourceEntry>>),
}

impl Replay {
    fn next(&mut self) -> Result<Option<SourceEntry>> {
        match self {
            Replay::One(e) => Ok(e.take().map(|e| *e)),
            Replay::Log { file, at, end } => {
                if *at >= *end {
                    return Ok(None);
                }
                let read_field = |at: &mut u64| -> Result<Vec<u8>> {
                    let mut len = [0u8; 4];
                    file.read_exact_at(&mut len, *at)
                        .map_err(|e| io("reading", e))?;
                    let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
                    file.read_exact_at(&mut v, *at + 4)
                        .map_err(|e| io("reading", e))?;
                    *at += 4 + v.len() as u64;
                    Ok(v)
                };
                let path = read_field(at)?;
                let cbor = read_field(at)?;
                let entry: Entry = from_cbor(&cbor).map_err(|e| {
                    io(
                        "decoding",
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })?;
                Ok(Some(SourceEntry {
                    abs_path: PathBuf::from(OsStr::from_bytes(&path)),
                    entry,
                    file: None,
                    inode: None,
                }))
            }
        }
    }
}

/// Everything waiting to be written again, in the order it must go: a
/// failure during a rewrite puts its own stretch before what was left.
#[derive(Default)]
pub(super) struct ReplayQueue {
    queue: VecDeque<Replay>,
}

impl ReplayQueue {
    pub fn push_front(&mut self, r: Replay) {
        self.queue.push_front(r);
    }

    pub fn next(&mut self) -> Result<Option<SourceEntry>> {
        while let Some(front) = self.queue.front_mut() {
            if let Some(e) = front.next()? {
                return Ok(Some(e));
            }
            self.queue.pop_front();
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::meta::{to_cbor, EntryKind, Timestamp};

    fn entry(path: &str, continued_from: Option<u64>) -> Entry {
        Entry {
            size: 10,
            mtime: Timestamp { sec: 5, nsec: 6 },
            continued_from,
            ..Entry::new(path, EntryKind::File)
        }
    }

    fn paths(q: &mut ReplayQueue) -> Vec<(String, Option<u64>)> {
        let mut v = Vec::new();
        while let Some(e) = q.next().unwrap() {
            v.push((e.abs_path.display().to_string(), e.entry.continued_from));
        }
        v
    }

    #[test]
    fn a_failure_during_a_rewrite_goes_before_what_was_left() {
        let mut first = ReplayLog::new().unwrap();
        first
            .push(Path::new("/src/a"), &to_cbor(&entry("a", Some(7))))
            .unwrap();
        let mark = first.len();
        for p in ["b", "c", "d"] {
            first
                .push(&Path::new("/src").join(p), &to_cbor(&entry(p, None)))
                .unwrap();
        }
        let mut q = ReplayQueue::default();
        q.push_front(first.replay_from(mark).unwrap());
        assert_eq!(q.next().unwrap().unwrap().abs_path, Path::new("/src/b"));
        // "c" was about to be written when the next cartridge failed too.
        let c = q.next().unwrap().unwrap();
        let mut second = ReplayLog::new().unwrap();
        second
            .push(Path::new("/src/b"), &to_cbor(&entry("b", None)))
            .unwrap();
        q.push_front(Replay::One(Some(Box::new(c))));
        q.push_front(second.replay_from(0).unwrap());
        assert_eq!(
            paths(&mut q),
            vec![
                ("/src/b".into(), None),
                ("/src/c".into(), None),
                ("/src/d".into(), None)
            ]
        );
    }

    #[test]
    fn a_resumed_entry_keeps_its_offset() {
        let mut log = ReplayLog::new().unwrap();
        log.push(Path::new("/big"), &to_cbor(&entry("big", Some(1 << 20))))
            .unwrap();
        let mut q = ReplayQueue::default();
        q.push_front(log.replay_from(0).unwrap());
        assert_eq!(paths(&mut q), vec![("/big".into(), Some(1 << 20))]);
    }
}
