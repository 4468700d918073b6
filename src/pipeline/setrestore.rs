//! Restoring a whole archive set: choose each path's newest version from
//! the set catalog copy on the loaded cartridge, then restore cartridge by
//! cartridge in set order, asking for each one it needs; files that span
//! cartridges are joined from their parts and checked whole.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::device::library::VirtualLibrary;
use crate::device::{Changer, TapeDrive};
use crate::format::meta::{CatalogEntry, EntryKind};
use crate::format::setcat::{SessionInfo, VolumeInfo, SESSION_NO_END};

use super::restore::{pattern_selects, RestoreInto, RestoreOptions, RestoreSummary};
use super::volume::{map_tape, read_label, LabelState};
use super::{Error, Result};

/// Brings the cartridges of a set into the drive.
pub trait VolumeLoader {
    /// Load `want` and return the drive with it; `current` is the drive
    /// with the cartridge now loaded (to put away).
    fn load(
        &mut self,
        current: Box<dyn TapeDrive>,
        want: &VolumeInfo,
    ) -> Result<Box<dyn TapeDrive>>;
}

/// Finds cartridges in a virtual library by their label.
pub struct LibraryLoader {
    pub lib: VirtualLibrary,
}

impl VolumeLoader for LibraryLoader {
    fn load(
        &mut self,
        current: Box<dyn TapeDrive>,
        want: &VolumeInfo,
    ) -> Result<Box<dyn TapeDrive>> {
        drop(current);
        // Labels usually are the barcodes; else look at every cartridge.
        let inv = self.lib.inventory()?;
        let mut candidates: Vec<String> = inv
            .slots
            .iter()
            .filter_map(|(_, b)| b.clone())
            .chain(inv.drive.map(|(b, _)| b))
            .collect();
        candidates.sort_by_key(|b| b != &want.label);
        for barcode in candidates {
            self.lib.load_barcode(&barcode)?;
            let mut drive: Box<dyn TapeDrive> = Box::new(self.lib.open_drive()?);
            if let LabelState::Tapir(l) = read_label(drive.as_mut())? {
                if l.volume_uuid == want.volume_uuid {
                    return Ok(drive);
                }
            }
        }
        Err(Error::Refused(format!(
            "{}: cartridge {} (volume {} of the set) is not in the library; it was last known to be {}",
            self.lib.name(),
            want.label,
            want.volume_seq,
            want.location.as_deref().unwrap_or("nowhere on record")
        )))
    }
}

/// What a whole-set restore did, cartridge by cartridge.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SetRestoreSummary {
    pub set_name: String,
    pub selected: u64,
    pub restored: u64,
    pub joined: u64,
    pub cartridges: Vec<RestoreSummary>,
    /// Paths selected whose parts could not all be restored.
    pub incomplete: Vec<String>,
}

impl SetRestoreSummary {
    pub fn exit_status(&self) -> crate::exit::ExitStatus {
        let worst = self
            .cartridges
            .iter()
            .map(|c| c.exit_status())
            .max_by_key(|s| s.code())
            .unwrap_or(crate::exit::ExitStatus::Success);
        if !self.incomplete.is_empty() && worst == crate::exit::ExitStatus::Success {
            crate::exit::ExitStatus::Warnings
        } else {
            worst
        }
    }
}

/// Paths chosen for restore: by volume, then session number on it.
type Chosen = BTreeMap<u32, HashMap<u32, HashSet<Vec<u8>>>>;

/// Choose `path` of the session part with index `session` in the copy.
fn choose(chosen: &mut Chosen, sessions: &HashMap<u32, SessionInfo>, session: u32, path: Vec<u8>) {
    if let Some(info) = sessions.get(&session) {
        chosen
            .entry(info.volume_seq)
            .or_default()
            .entry(info.session)
            .or_default()
            .insert(path);
    }
}

/// Restore the newest version of every selected path in the whole set.
pub fn restore_set(
    mut drive: Box<dyn TapeDrive>,
    loader: &mut dyn VolumeLoader,
    opts: &RestoreOptions,
) -> Result<SetRestoreSummary> {
    let map = map_tape(drive.as_mut())?;
    let set = map.label.set.clone().ok_or_else(|| {
        Error::Usage(format!(
            "{}: cartridge {} belongs to no set",
            drive.name(),
            map.label.label
        ))
    })?;
    let newest = super::setcat::newest_set_catalog(drive.as_mut(), &map)?.ok_or_else(|| {
        Error::Refused(format!(
            "{}: cartridge {} holds no set catalog copy (written by an older tapir?); restore its cartridges one by one",
            drive.name(),
            map.label.label
        ))
    })?;
    let copy_damaged = !newest.intact;
    let mut copy = newest.copy;
    let sessions: HashMap<u32, SessionInfo> = copy
        .builder
        .sessions()
        .iter()
        .map(|s| (s.index, s.clone()))
        .collect();
    let volumes: Vec<VolumeInfo> = copy.builder.volumes().to_vec();
    let patterns: Vec<Vec<u8>> = opts
        .patterns
        .iter()
        .map(|p| super::glob::normalise_pattern(p))
        .collect();

    // Newest version of each path: the entries of one path come in
    // session order, so the last one wins, with the parts before it that
    // it continues.
    let mut chosen: Chosen = BTreeMap::new();
    let mut summary = SetRestoreSummary {
        set_name: set.set_name.clone(),
        ..Default::default()
    };
    if copy_damaged {
        summary.incomplete.push(format!(
            "no intact set catalog copy on {}: restored what the newest one lists; the set may hold more",
            map.label.label
        ));
    }
    let mut group: Vec<(u32, CatalogEntry)> = Vec::new();
    let mut links: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut chosen_paths: HashSet<Vec<u8>> = HashSet::new();
    let mut flush = |group: &mut Vec<(u32, CatalogEntry)>,
                     chosen: &mut Chosen,
                     summary: &mut SetRestoreSummary| {
        let Some((last_session, last)) = group.last().cloned() else {
            return;
        };
        summary.selected += 1;
        let mut take = vec![(last_session, last.clone())];
        // A continued entry: walk back the parts it continues.
        let mut want = sessions.get(&last_session).and_then(|s| s.continues);
        let mut needs_more = last.continued_from.is_some();
        for (s, e) in group.iter().rev().skip(1) {
            if !needs_more {
                break;
            }
            // A part whose cartridge failed (no end) holds no piece of a
            // cut entry: its piece was written again after it, and the
            // piece before is further back (FORMAT.md §12.5).
            while let Some(w) = want.filter(|w| w > s) {
                match sessions.get(&w) {
                    Some(x) if x.status == SESSION_NO_END => want = x.continues,
                    _ => break,
                }
            }
            if Some(*s) == want {
                take.push((*s, e.clone()));
                needs_more = e.continued_from.is_some();
                want = sessions.get(s).and_then(|x| x.continues);
            }
        }
        if needs_more {
            summary.incomplete.push(format!(
                "{}: a part is missing from the set catalog",
                String::from_utf8_lossy(&last.path)
            ));
        }
        if last.kind == EntryKind::HardLink.code() {
            if let Some(t) = &last.link_target {
                links.push((last_session, t.clone()));
            }
        }
        for (s, e) in take {
            choose(chosen, &sessions, s, e.path);
        }
        chosen_paths.insert(last.path);
        group.clear();
    };
    copy.builder.for_each_entry(|e| {
        let selected =
            patterns.is_empty() || patterns.iter().any(|p| pattern_selects(p, &e.entry.path));
        if !selected {
            return Ok(());
        }
        if group.last().is_some_and(|(_, g)| g.path != e.entry.path) {
            flush(&mut group, &mut chosen, &mut summary);
        }
        group.push((e.session, e.entry.clone()));
        Ok(())
    })?;
    flush(&mut group, &mut chosen, &mut summary);
    // A hard link needs the file it links to: from the link's own session
    // part or the parts it continues (where the target was written before
    // it), even when a newer version of that path is restored too.
    let mut needed: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
    for (s, target) in links {
        needed.entry(target).or_default().push(s);
    }
    if !needed.is_empty() {
        let chain = |mut s: Option<u32>| {
            let mut parts = Vec::new();
            while let Some(x) = s {
                parts.push(x);
                s = sessions.get(&x).and_then(|i| i.continues);
            }
            parts
        };
        let mut found: Vec<(u32, Vec<u8>)> = Vec::new();
        copy.builder.for_each_entry(|e| {
            if let Some(link_sessions) = needed.get(&e.entry.path) {
                if link_sessions
                    .iter()
                    .any(|&l| chain(Some(l)).contains(&e.session))
                {
                    found.push((e.session, e.entry.path.clone()));
                }
            }
            Ok(())
        })?;
        for (s, path) in found {
            choose(&mut chosen, &sessions, s, path);
        }
    }
    // A path chosen in more than one session part (an older version that a
    // hard link needs, and the newest): restored in set order, the newest
    // replaces the older one, and the link keeps the older content.
    let mut seen_paths: HashSet<&Vec<u8>> = HashSet::new();
    let mut replace_own: HashSet<Vec<u8>> = HashSet::new();
    for paths in chosen.values().flat_map(|by_session| by_session.values()) {
        for p in paths {
            if !seen_paths.insert(p) {
                replace_own.insert(p.clone());
            }
        }
    }
    // One target for the whole set: directory metadata is applied once, at
    // the end, after every cartridge's files are in.
    let mut into = RestoreInto::open(opts)?;
    // Parts kept as PATH.partial and not yet joined, by raw path.
    let mut waiting: HashSet<Vec<u8>> = HashSet::new();
    for (volume_seq, selection) in chosen {
        let want = volumes
            .iter()
            .find(|v| v.volume_seq == volume_seq)
            .cloned()
            .ok_or_else(|| {
                Error::Refused(format!(
                    "the set catalog names no cartridge for volume {volume_seq} of set \"{}\"",
                    set.set_name
                ))
            })?;
        let here = read_label(drive.as_mut())?;
        let loaded = matches!(&here, LabelState::Tapir(l) if l.volume_uuid == want.volume_uuid);
        if !loaded {
            tracing::info!("loading {} (volume {volume_seq})", want.label);
            drive = loader.load(drive, &want)?;
        }
        let cart = into.cartridge(
            drive.as_mut(),
            &RestoreOptions {
                partials: true,
                selection: Some(selection),
                replace_own: replace_own.clone(),
                ..opts.clone()
            },
        )?;
        for p in &cart.spanning_paths {
            waiting.insert(p.clone());
        }
        for p in &cart.joined_paths {
            waiting.remove(p);
        }
        summary.restored += cart.restored;
        summary.joined += cart.joined;
        summary.cartridges.push(cart);
    }
    if let Some(last) = summary.cartridges.last_mut() {
        into.finish(last)?;
    }
    // Parts still waiting for the rest are what is incomplete; the
    // cartridges' own lists keep only those.
    for cart in &mut summary.cartridges {
        let raw = std::mem::take(&mut cart.spanning_paths);
        let mut keep = raw.iter().map(|p| waiting.contains(p));
        cart.spanning.retain(|_| keep.next().unwrap_or(true));
    }
    let mut left: Vec<&Vec<u8>> = waiting.iter().collect();
    left.sort();
    summary.incomplete.extend(left.into_iter().map(|p| {
        format!(
            "{}: only some parts were restored (kept as PATH.partial); the rest is on a cartridge this copy does not know",
            String::from_utf8_lossy(p)
        )
    }));
    Ok(summary)
}

/// An operator brings the cartridges: the one in the drive is ejected and
/// the operator told which to insert; the drive is watched until it holds
/// that cartridge.
pub struct OperatorLoader(pub super::span::Operator);

impl VolumeLoader for OperatorLoader {
    fn load(
        &mut self,
        mut current: Box<dyn TapeDrive>,
        want: &VolumeInfo,
    ) -> Result<Box<dyn TapeDrive>> {
        current.eject()?;
        drop(current);
        let op = &mut self.0;
        (op.tell)(&format!(
            "insert cartridge {} (volume {} of the set{}) into {}; waiting up to {} s",
            want.label,
            want.volume_seq,
            want.location
                .as_deref()
                .map(|l| format!(", last known to be: {l}"))
                .unwrap_or_default(),
            op.device,
            op.timeout.as_secs()
        ));
        let mut told_wrong = None;
        let drive = op.wait_for(|state, tell| match state {
            LabelState::Tapir(l) if l.volume_uuid == want.volume_uuid => true,
            LabelState::Tapir(l) => {
                if told_wrong != Some(l.volume_uuid) {
                    tell(&format!(
                        "the drive holds {}, not {}: insert {}",
                        l.label, want.label, want.label
                    ));
                    told_wrong = Some(l.volume_uuid);
                }
                false
            }
            _ => false,
        })?;
        drive.ok_or_else(|| {
            Error::Refused(format!(
                "{}: cartridge {} (volume {}) was not inserted within {} s; what was restored so far stays",
                op.device,
                want.label,
                want.volume_seq,
                op.timeout.as_secs()
            ))
        })
    }
}
