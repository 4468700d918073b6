//! What a cartridge holds: each session's entries, from its catalog or, for
//! an interrupted session, by scanning its data.

use crate::device::TapeDrive;
use crate::format::label::VolumeLabel;
use crate::format::meta::{CatalogEntry, Entry, SessionEnd, StreamPosition};

use super::assemble::{read_session_data, EntryOutcome, EntryVisitor};
use super::reader::LostBlocks;
use super::volume::{map_tape, read_catalog, SessionOnTape, TapeMap};
use super::Result;

/// Where a session's entry list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListSource {
    /// The session's catalog, intact.
    Catalog,
    /// Scanned from the data: the catalog is missing or damaged.
    Scan,
}

/// One session's entries.
#[derive(Debug, Clone)]
pub struct SessionEntries {
    pub session: SessionOnTape,
    pub source: ListSource,
    pub entries: Vec<CatalogEntry>,
    /// For scanned sessions: entries whose content did not end intact.
    pub incomplete: Vec<(Vec<u8>, String)>,
    pub summary: Option<SessionEnd>,
    pub lost: Vec<LostBlocks>,
    /// The session was closed properly (end record and catalog present).
    pub closed: bool,
}

/// The cartridge's map and, for each selected session, its entries.
pub struct Listing {
    pub map: TapeMap,
    pub sessions: Vec<SessionEntries>,
}

/// List `only` (a session number) or every session.
pub fn list_cartridge(drive: &mut dyn TapeDrive, only: Option<u32>) -> Result<Listing> {
    let map = map_tape(drive)?;
    if let Some(n) = only {
        if map.session(n).is_none() {
            return Err(super::Error::Usage(format!(
                "{}: cartridge {} has no session {n} (it has {})",
                drive.name(),
                map.label.label,
                session_numbers(&map)
            )));
        }
    }
    let mut sessions = Vec::new();
    for s in map
        .sessions
        .iter()
        .filter(|s| only.is_none_or(|n| n == s.number))
    {
        sessions.push(session_entries(drive, &map.label, s)?);
    }
    Ok(Listing { map, sessions })
}

pub fn session_numbers(map: &TapeMap) -> String {
    if map.sessions.is_empty() {
        return "no sessions".into();
    }
    let v: Vec<String> = map.sessions.iter().map(|s| s.number.to_string()).collect();
    format!("sessions {}", v.join(", "))
}

/// A session's entries: its catalog when intact, else a scan of its data.
pub fn session_entries(
    drive: &mut dyn TapeDrive,
    label: &VolumeLabel,
    s: &SessionOnTape,
) -> Result<SessionEntries> {
    let catalog = read_catalog(drive, label, s)?;
    // A catalog without its end record was cut short: the write never
    // finished (§11.1), whatever the data stream holds.
    let cut_short = catalog.as_ref().is_some_and(|c| c.end.is_none());
    if let Some(cat) = catalog {
        if cat.digest_ok && cat.lost.is_empty() {
            return Ok(SessionEntries {
                session: s.clone(),
                source: ListSource::Catalog,
                entries: cat.entries,
                incomplete: Vec::new(),
                summary: cat.end.map(|e| e.summary),
                lost: Vec::new(),
                closed: true,
            });
        }
    }
    let mut scanned = scan_session(drive, label, s)?;
    if cut_short {
        scanned.closed = false;
    }
    Ok(scanned)
}

/// Rebuild a session's entry list from its data stream.
pub fn scan_session(
    drive: &mut dyn TapeDrive,
    label: &VolumeLabel,
    s: &SessionOnTape,
) -> Result<SessionEntries> {
    struct Scan {
        entries: Vec<CatalogEntry>,
        incomplete: Vec<(Vec<u8>, String)>,
        current: Option<usize>,
    }
    impl EntryVisitor for Scan {
        fn entry(&mut self, e: &Entry, position: StreamPosition) -> Result<bool> {
            self.entries.push(catalog_entry_of(e, position));
            self.current = Some(self.entries.len() - 1);
            Ok(false)
        }
        fn entry_end(&mut self, outcome: EntryOutcome) -> Result<()> {
            let Some(i) = self.current.take() else {
                return Ok(());
            };
            match outcome {
                EntryOutcome::Complete { blake3 } => self.entries[i].blake3 = blake3,
                EntryOutcome::IncompleteAtSource { status } => self.entries[i].status = status,
                EntryOutcome::Partial {
                    continues,
                    whole_blake3,
                    ..
                } => {
                    if continues {
                        self.entries[i].status = crate::format::meta::END_CONTINUES;
                    } else {
                        self.entries[i].blake3 = whole_blake3;
                    }
                }
                EntryOutcome::Damaged { reason } => {
                    let e = self.entries.remove(i);
                    self.incomplete.push((e.path, reason));
                }
            }
            Ok(())
        }
    }
    let set_uuid = label.set_uuid();
    drive.locate(s.data_file, 0)?;
    let mut scan = Scan {
        entries: Vec::new(),
        incomplete: Vec::new(),
        current: None,
    };
    let report = read_session_data(drive, set_uuid, s.data_file, s.number, &mut scan)?;
    let closed = report.end.is_some() && s.catalog_file.is_some();
    Ok(SessionEntries {
        session: s.clone(),
        source: ListSource::Scan,
        entries: scan.entries,
        incomplete: scan.incomplete,
        summary: report.end,
        lost: report.lost,
        closed,
    })
}

/// The catalog's view of an entry (hash filled in when its end is read).
pub fn catalog_entry_of(e: &Entry, position: StreamPosition) -> CatalogEntry {
    CatalogEntry {
        path: e.path.clone(),
        kind: e.kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        user: e.user.clone(),
        group: e.group.clone(),
        mtime: e.mtime,
        size: e.size,
        link_target: e.link_target.clone(),
        position,
        blake3: None,
        status: crate::format::meta::END_COMPLETE,
        device: e.device,
        continued_from: e.continued_from,
    }
}
