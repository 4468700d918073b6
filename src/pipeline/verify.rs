//! Verify: read every block of every session back, check block CRCs, record
//! structure and each file's BLAKE3, and compare with the session catalog.

use std::collections::HashMap;

use crate::device::TapeDrive;
use crate::format::meta::{CatalogEntry, Entry, EntryKind, StreamPosition};

use super::assemble::{read_session_data, EntryOutcome, EntryVisitor};
use super::reader::LostBlocks;
use super::restore::NotRestored;
use super::volume::{map_tape, read_catalog};
use super::Result;

/// A run of bad blocks and the entries whose data it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadBlocks {
    #[serde(flatten)]
    pub blocks: LostBlocks,
    pub session: u32,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifySummary {
    pub cartridge: String,
    /// The cartridge's volume UUID, for the host catalog.
    #[serde(skip)]
    pub volume_uuid: [u8; 16],
    pub sessions: u64,
    pub entries: u64,
    pub entries_ok: u64,
    pub bytes_read: u64,
    pub blocks_read: u64,
    pub retries: u64,
    pub damaged: Vec<NotRestored>,
    pub bad_blocks: Vec<BadBlocks>,
    /// Structural problems: missing or damaged catalogs, interrupted sessions.
    pub problems: Vec<String>,
    /// Entries archived incomplete because their source could not be read fully.
    pub incomplete_at_source: Vec<String>,
    /// Entries that span cartridges: the part on this cartridge read
    /// intact, but the whole content's hash needs every part.
    pub spanning_parts: Vec<String>,
}

impl VerifySummary {
    pub fn exit_status(&self) -> crate::exit::ExitStatus {
        use crate::exit::ExitStatus;
        if !self.damaged.is_empty() || !self.bad_blocks.is_empty() || !self.problems.is_empty() {
            ExitStatus::DataDamage
        } else if !self.incomplete_at_source.is_empty() || !self.spanning_parts.is_empty() {
            ExitStatus::Warnings
        } else {
            ExitStatus::Success
        }
    }
}

struct Checker {
    expected: HashMap<Vec<u8>, CatalogEntry>,
    current: Option<Vec<u8>>,
    /// The current entry is an incremental's `Unchanged` one: its content
    /// is in an earlier session, and its catalog hash is that content's.
    current_unchanged: bool,
    seen: u64,
    ok: u64,
    session: u32,
    damaged: Vec<NotRestored>,
    incomplete: Vec<String>,
    partial: Vec<String>,
    unlisted: Vec<String>,
}

impl EntryVisitor for Checker {
    fn entry(&mut self, entry: &Entry, _position: StreamPosition) -> Result<bool> {
        self.current = Some(entry.path.clone());
        self.current_unchanged = entry.kind == EntryKind::Unchanged.code();
        self.seen += 1;
        Ok(true)
    }

    fn entry_end(&mut self, outcome: EntryOutcome) -> Result<()> {
        let Some(path) = self.current.take() else {
            return Ok(());
        };
        let show = String::from_utf8_lossy(&path).into_owned();
        let listed = self.expected.remove(&path);
        if listed.is_none() && !self.expected.is_empty() {
            self.unlisted.push(show.clone());
        }
        match outcome {
            EntryOutcome::Complete { blake3: None } if self.current_unchanged => self.ok += 1,
            EntryOutcome::Complete { blake3 } => {
                if listed.as_ref().is_some_and(|c| c.blake3 != blake3) {
                    self.damaged.push(NotRestored {
                        path: show,
                        session: self.session,
                        reason: "content hash differs from the catalog's".into(),
                    });
                } else {
                    self.ok += 1;
                }
            }
            EntryOutcome::IncompleteAtSource { .. } => {
                self.ok += 1;
                self.incomplete.push(show);
            }
            EntryOutcome::Partial {
                continued_from,
                continues,
                ..
            } => {
                self.ok += 1;
                self.partial.push(format!(
                    "{show} ({})",
                    super::restore::describe_part(continued_from, continues)
                ));
            }
            EntryOutcome::Damaged { reason } => self.damaged.push(NotRestored {
                path: show,
                session: self.session,
                reason,
            }),
        }
        Ok(())
    }
}

/// Verify `only` (a session number) or every session on the loaded cartridge.
pub fn verify(drive: &mut dyn TapeDrive, only: Option<u32>) -> Result<VerifySummary> {
    let map = map_tape(drive)?;
    let set_uuid = map.label.set_uuid();
    let mut sum = VerifySummary {
        cartridge: map.label.label.clone(),
        volume_uuid: map.label.volume_uuid,
        ..Default::default()
    };
    for (file, why) in &map.unknown_files {
        sum.problems.push(format!("tape file {file}: {why}"));
    }
    for s in map
        .sessions
        .iter()
        .filter(|s| only.is_none_or(|n| n == s.number))
    {
        sum.sessions += 1;
        if let Some(file) = s.set_catalog_file {
            match super::setcat::read_set_catalog(drive, set_uuid, file, s.number) {
                Ok(copy) if copy.digest_ok && copy.lost.is_empty() => {}
                Ok(copy) => sum.problems.push(format!(
                    "set catalog copy in tape file {file} (after session {}): {}",
                    s.number,
                    if copy.lost.is_empty() {
                        "incomplete (its end record is missing or does not match)".to_string()
                    } else {
                        format!("{} unreadable stretch(es) of blocks", copy.lost.len())
                    }
                )),
                Err(e) => sum.problems.push(format!(
                    "set catalog copy in tape file {file} (after session {}): {e}",
                    s.number
                )),
            }
        }
        let catalog = read_catalog(drive, &map.label, s)?;
        let mut listed: Vec<CatalogEntry> = Vec::new();
        match &catalog {
            None => sum.problems.push(format!(
                "session {}: no catalog (the write was interrupted); entries checked from the data alone",
                s.number
            )),
            Some(c) => {
                if !c.digest_ok {
                    sum.problems
                        .push(format!("session {}: catalog is damaged or incomplete", s.number));
                }
                for l in &c.lost {
                    sum.bad_blocks.push(BadBlocks {
                        blocks: l.clone(),
                        session: s.number,
                        paths: Vec::new(),
                    });
                }
                listed = c.entries.clone();
            }
        }
        drive.locate(s.data_file, 0)?;
        let mut checker = Checker {
            expected: listed.iter().map(|e| (e.path.clone(), e.clone())).collect(),
            current: None,
            current_unchanged: false,
            seen: 0,
            ok: 0,
            session: s.number,
            damaged: Vec::new(),
            incomplete: Vec::new(),
            partial: Vec::new(),
            unlisted: Vec::new(),
        };
        let report = read_session_data(drive, set_uuid, s.data_file, s.number, &mut checker)?;
        if report.end.is_none() {
            sum.problems.push(format!(
                "session {}: its data has no end record (interrupted write)",
                s.number
            ));
        }
        for l in &report.lost {
            sum.bad_blocks.push(BadBlocks {
                blocks: l.clone(),
                session: s.number,
                paths: paths_in_blocks(&listed, l),
            });
        }
        for (path, e) in checker.expected.drain() {
            let reason = report
                .lost
                .iter()
                .find(|l| l.first_block <= e.position.block && e.position.block <= l.last_block)
                .map(|l| {
                    format!(
                        "its start is in unreadable block(s) {}..={}",
                        l.first_block, l.last_block
                    )
                })
                .unwrap_or_else(|| "listed in the catalog but not found in the data".into());
            sum.damaged.push(NotRestored {
                path: String::from_utf8_lossy(&path).into_owned(),
                session: s.number,
                reason,
            });
        }
        for p in checker.unlisted {
            sum.problems.push(format!(
                "session {}: {p} is in the data but not in the catalog",
                s.number
            ));
        }
        sum.entries += checker.seen.max(listed.len() as u64);
        sum.entries_ok += checker.ok;
        sum.damaged.extend(checker.damaged);
        sum.incomplete_at_source.extend(checker.incomplete);
        sum.spanning_parts.extend(checker.partial);
        sum.bytes_read += report.bytes_read;
        sum.blocks_read += report.blocks_read;
        sum.retries += report.retries;
    }
    Ok(sum)
}

/// Entries (in stream order) whose records overlap the lost blocks.
pub fn paths_in_blocks(entries: &[CatalogEntry], lost: &LostBlocks) -> Vec<String> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.position.tape_file != lost.tape_file {
            continue;
        }
        let start = e.position.block;
        let end = entries
            .get(i + 1)
            .map(|n| n.position.block)
            .unwrap_or(u64::MAX);
        if start <= lost.last_block && end >= lost.first_block {
            out.push(String::from_utf8_lossy(&e.path).into_owned());
        }
    }
    out
}
