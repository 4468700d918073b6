//! Turning a session's data stream back into entries: content, holes,
//! hashes, and which entries a lost block damaged.

use crate::device::TapeDrive;
use crate::format::meta::{
    from_cbor, Checkpoint, Entry, EntryEnd, EntryKind, SessionEnd, SessionStart, StreamPosition,
    END_COMPLETE, END_CONTINUES,
};
use crate::format::record::{DataPrefix, RecordType, DATA_CHUNK_LEN};
use crate::format::BlockKind;

use super::reader::{LostBlocks, StreamEnd, StreamEvent, StreamExpect, StreamReader};
use super::Result;

/// How one entry came off the tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// All content read and its BLAKE3 matches.
    Complete { blake3: Option<[u8; 32]> },
    /// Read intact, but the writer could not read its source fully (status code).
    IncompleteAtSource { status: u8 },
    /// Content lost or wrong on tape.
    Damaged { reason: String },
    /// Only part of the content is on this cartridge: the entry spans
    /// cartridges of the set. What is here was read intact (block CRCs);
    /// the whole content's hash can only be checked with every part.
    Partial {
        /// Where this part's content starts (None: at the beginning).
        continued_from: Option<u64>,
        /// The content goes on on the next cartridge.
        continues: bool,
        /// BLAKE3 of the whole content, as the last part's end records it.
        whole_blake3: Option<[u8; 32]>,
    },
}

/// Receives entries as the stream is read.
pub trait EntryVisitor {
    fn session_start(&mut self, _start: &SessionStart) -> Result<()> {
        Ok(())
    }
    /// An entry begins. Return true to receive its content.
    fn entry(&mut self, entry: &Entry, position: StreamPosition) -> Result<bool>;
    /// Content of the current entry at `offset` (holes are never passed).
    fn data(&mut self, _offset: u64, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
    /// The current entry ends. Called for every entry `entry` was called for.
    fn entry_end(&mut self, outcome: EntryOutcome) -> Result<()>;
    /// Blocks were lost (after retries).
    fn lost(&mut self, _lost: &LostBlocks) -> Result<()> {
        Ok(())
    }
    /// A record that could not be understood (bad CBOR, unknown entry kind).
    fn problem(&mut self, _position: StreamPosition, _message: String) -> Result<()> {
        Ok(())
    }
    /// Asked between entries: stop reading here (the caller may seek on).
    fn keep_reading(&self) -> bool {
        true
    }
}

/// What reading a session's data stream found.
#[derive(Debug, Clone, Default)]
pub struct DataReadReport {
    pub start: Option<SessionStart>,
    pub end: Option<SessionEnd>,
    pub last_checkpoint: Option<Checkpoint>,
    pub stream_end: StreamEnd,
    pub lost: Vec<LostBlocks>,
    pub blocks_read: u64,
    pub bytes_read: u64,
    pub retries: u64,
    pub entries_seen: u64,
}

struct Current {
    entry_size: u64,
    is_file: bool,
    wanted: bool,
    hasher: blake3::Hasher,
    /// Next logical offset not yet hashed.
    hashed_to: u64,
    damaged: Option<String>,
    /// This part of a spanning entry starts at this offset.
    continued_from: Option<u64>,
}

/// Read a session's data stream from the current position (block 0 of the
/// tape file) and feed `visitor`.
pub fn read_session_data(
    drive: &mut dyn TapeDrive,
    set_uuid: [u8; 16],
    tape_file: u32,
    session: u32,
    visitor: &mut dyn EntryVisitor,
) -> Result<DataReadReport> {
    read_session_data_from(drive, set_uuid, tape_file, session, None, visitor)
}

/// Like [`read_session_data`], but starting at the record at `start` (the
/// drive positioned at its block) and stopping between entries when the
/// visitor says so.
pub fn read_session_data_from(
    drive: &mut dyn TapeDrive,
    set_uuid: [u8; 16],
    tape_file: u32,
    session: u32,
    start: Option<StreamPosition>,
    visitor: &mut dyn EntryVisitor,
) -> Result<DataReadReport> {
    let expect = StreamExpect {
        kind: BlockKind::SessionData,
        set_uuid,
        tape_file,
        session,
    };
    let mut reader = match start {
        Some(at) => StreamReader::starting_at(drive, expect, at),
        None => StreamReader::new(drive, expect),
    };
    let mut report = DataReadReport::default();
    let mut current: Option<Current> = None;
    let mut content = Vec::with_capacity(DATA_CHUNK_LEN);
    while let Some(ev) = reader.next_event()? {
        let rec = match ev {
            StreamEvent::Lost(lost) => {
                if let Some(c) = current.as_mut() {
                    c.damaged.get_or_insert_with(|| {
                        format!(
                            "blocks {}..={} of tape file {} unreadable: {}",
                            lost.first_block, lost.last_block, lost.tape_file, lost.reason
                        )
                    });
                }
                visitor.lost(&lost)?;
                report.lost.push(lost);
                continue;
            }
            StreamEvent::Record(r) => r,
        };
        match rec.header.rtype {
            RecordType::SessionStart => match from_cbor::<SessionStart>(&rec.body) {
                Ok(s) => {
                    visitor.session_start(&s)?;
                    report.start = Some(s);
                }
                Err(e) => visitor.problem(rec.position, format!("session start: {e}"))?,
            },
            RecordType::Entry => {
                if let Some(c) = current.take() {
                    let reason = c
                        .damaged
                        .unwrap_or_else(|| "its end record is missing".to_string());
                    visitor.entry_end(EntryOutcome::Damaged { reason })?;
                }
                let entry: Entry = match from_cbor(&rec.body) {
                    Ok(e) => e,
                    Err(e) => {
                        visitor.problem(rec.position, format!("entry metadata: {e}"))?;
                        continue;
                    }
                };
                let kind = match entry.kind() {
                    Ok(k) => k,
                    Err(e) => {
                        visitor.problem(rec.position, format!("entry skipped: {e}"))?;
                        continue;
                    }
                };
                report.entries_seen += 1;
                let wanted = visitor.entry(&entry, rec.position)?;
                current = Some(Current {
                    entry_size: entry.size,
                    is_file: kind == EntryKind::File,
                    wanted,
                    hasher: blake3::Hasher::new(),
                    hashed_to: entry.continued_from.unwrap_or(0),
                    damaged: None,
                    continued_from: entry.continued_from,
                });
            }
            RecordType::Data => {
                let Some(c) = current.as_mut() else {
                    continue; // content of an entry whose start was lost
                };
                if !c.wanted || c.damaged.is_some() {
                    continue;
                }
                let checked = DataPrefix::decode(&rec.body).and_then(|(prefix, stored)| {
                    prefix.decode_content(stored, &mut content)?;
                    Ok(prefix)
                });
                let prefix = match checked {
                    Ok(p) => p,
                    Err(e) => {
                        c.damaged = Some(format!("content record does not decode: {e}"));
                        continue;
                    }
                };
                let end = prefix.offset.checked_add(prefix.raw_len as u64);
                if !c.is_file || prefix.offset < c.hashed_to || end.is_none_or(|e| e > c.entry_size)
                {
                    c.damaged = Some(format!(
                        "content at offset {} is out of order or past the size {}",
                        prefix.offset, c.entry_size
                    ));
                    continue;
                }
                super::hash_zeros(&mut c.hasher, prefix.offset - c.hashed_to);
                c.hasher.update(&content);
                c.hashed_to = prefix.offset + prefix.raw_len as u64;
                visitor.data(prefix.offset, &content)?;
            }
            RecordType::EntryEnd => {
                let Some(mut c) = current.take() else {
                    continue;
                };
                let end: EntryEnd = match from_cbor(&rec.body) {
                    Ok(e) => e,
                    Err(e) => {
                        let reason = format!("end record does not decode: {e}");
                        visitor.entry_end(EntryOutcome::Damaged { reason })?;
                        continue;
                    }
                };
                let outcome = if let Some(reason) = c.damaged.take() {
                    EntryOutcome::Damaged { reason }
                } else if end.status == END_CONTINUES || c.continued_from.is_some() {
                    EntryOutcome::Partial {
                        continued_from: c.continued_from,
                        continues: end.status == END_CONTINUES,
                        whole_blake3: end.blake3,
                    }
                } else if !c.is_file || !c.wanted {
                    if end.status == END_COMPLETE {
                        EntryOutcome::Complete { blake3: end.blake3 }
                    } else {
                        EntryOutcome::IncompleteAtSource { status: end.status }
                    }
                } else {
                    if end.status == END_COMPLETE {
                        super::hash_zeros(&mut c.hasher, c.entry_size.saturating_sub(c.hashed_to));
                    }
                    let got = *c.hasher.finalize().as_bytes();
                    if end.blake3 != Some(got) {
                        EntryOutcome::Damaged {
                            reason: "content does not match its BLAKE3 hash".into(),
                        }
                    } else if end.status == END_COMPLETE {
                        EntryOutcome::Complete { blake3: Some(got) }
                    } else {
                        EntryOutcome::IncompleteAtSource { status: end.status }
                    }
                };
                visitor.entry_end(outcome)?;
                if !visitor.keep_reading() {
                    break;
                }
            }
            RecordType::Checkpoint => {
                if let Ok(cp) = from_cbor::<Checkpoint>(&rec.body) {
                    report.last_checkpoint = Some(cp);
                }
            }
            RecordType::SessionEnd => match from_cbor::<SessionEnd>(&rec.body) {
                Ok(e) => report.end = Some(e),
                Err(e) => visitor.problem(rec.position, format!("session end: {e}"))?,
            },
            RecordType::CatalogHeader
            | RecordType::CatalogEntry
            | RecordType::CatalogEnd
            | RecordType::SetCatalogHeader
            | RecordType::VolumeInfo
            | RecordType::SessionInfo
            | RecordType::PageIndex
            | RecordType::SetCatalogEntry
            | RecordType::SetCatalogEnd
            | RecordType::Unknown(_) => {}
        }
    }
    if let Some(c) = current.take() {
        let reason = c.damaged.unwrap_or_else(|| {
            "the session ends before this entry does (interrupted write)".into()
        });
        visitor.entry_end(EntryOutcome::Damaged { reason })?;
    }
    report.stream_end = reader.end();
    report.blocks_read = reader.blocks_read;
    report.bytes_read = reader.bytes_read;
    report.retries = reader.retries;
    Ok(report)
}
