//! Continuing a set on the next cartridge: where cartridges come from (a
//! library's changer, or an operator), and checking one before it is used.

use std::collections::HashSet;

use crate::device::library::VirtualLibrary;
use crate::device::{Changer, ChangerInventory, TapeDrive};
use crate::format::label::{SetMembership, VolumeLabel};
use crate::format::meta::Timestamp;
use crate::media::{accept_for_continuation, ContinuationNeed, Offered, Verdict};

use super::rescue::KitChoice;
use super::volume::{hostname, map_tape, new_label, read_label, write_label, LabelState};
use super::{Error, Result};

/// A drive with a candidate cartridge loaded, and its barcode if known.
pub type Candidate = (Box<dyn TapeDrive>, Option<String>);

/// Supplies cartridges to continue a set on.
pub trait CartridgeSupply: Send {
    /// Put the cartridge in `current` away and load another candidate.
    /// Returns the drive with it and its barcode (if known), or None when
    /// there is no candidate left.
    fn next(&mut self, current: Box<dyn TapeDrive>) -> Result<Option<Candidate>>;
    /// Where the cartridge with `barcode` is now, in words (for the media
    /// inventory written on tape).
    fn whereabouts(&self, barcode: &str) -> Option<String>;
}

/// The slots of a virtual library, in slot order.
pub struct LibrarySupply {
    lib: VirtualLibrary,
    tried: HashSet<String>,
}

impl LibrarySupply {
    /// Candidates are every cartridge in the library except the one loaded now.
    pub fn new(lib: VirtualLibrary) -> Result<Self> {
        let inv = lib.inventory()?;
        let tried = inv.drive.map(|(b, _)| b).into_iter().collect();
        Ok(LibrarySupply { lib, tried })
    }
}

impl CartridgeSupply for LibrarySupply {
    fn next(&mut self, current: Box<dyn TapeDrive>) -> Result<Option<Candidate>> {
        // Closing the drive releases the library's lock.
        drop(current);
        if self.lib.inventory()?.drive.is_some() {
            self.lib.unload()?;
        }
        let inv = self.lib.inventory()?;
        for (slot, barcode) in inv.slots {
            let Some(barcode) = barcode else { continue };
            if !self.tried.insert(barcode.clone()) {
                continue;
            }
            self.lib.load_slot(slot)?;
            let drive = self.lib.open_drive()?;
            return Ok(Some((Box::new(drive), Some(barcode))));
        }
        Ok(None)
    }

    fn whereabouts(&self, barcode: &str) -> Option<String> {
        whereabouts_in(&self.lib.inventory().ok()?, self.lib.name(), barcode)
    }
}

/// Where `barcode` is in library `name`, in words: its drive or a slot.
pub fn whereabouts_in(inv: &ChangerInventory, name: &str, barcode: &str) -> Option<String> {
    let place = match &inv.drive {
        Some((b, _)) if b == barcode => "drive".to_string(),
        _ => inv
            .slots
            .iter()
            .find(|(_, b)| b.as_deref() == Some(barcode))
            .map(|(s, _)| format!("slot {s}"))?,
    };
    Some(format!("library {name}, {place}"))
}

/// A cartridge made ready to continue the set.
pub struct Continuation {
    pub drive: Box<dyn TapeDrive>,
    pub label: VolumeLabel,
    /// Cartridges looked at and refused, with why.
    pub refused: Vec<String>,
}

/// Load candidates until one may become volume `need.volume_seq` of the
/// set; label it as that volume (previous volume `previous`) and leave it
/// positioned at the start of tape file 2, ready for the session.
pub fn load_continuation(
    supply: &mut dyn CartridgeSupply,
    full: Box<dyn TapeDrive>,
    set: &SetMembership,
    pool: &str,
    block_size: u32,
    previous: [u8; 16],
    kit: &KitChoice,
) -> Result<Continuation> {
    let need = ContinuationNeed {
        pool: pool.to_string(),
        set_name: set.set_name.clone(),
        volume_seq: set.volume_seq + 1,
        block_size,
    };
    let mut refused = Vec::new();
    let mut current = full;
    loop {
        let Some((mut drive, barcode)) = supply.next(current)? else {
            let tried = if refused.is_empty() {
                "no other cartridge was available".to_string()
            } else {
                format!("refused: {}", refused.join("; "))
            };
            return Err(Error::Refused(format!(
                "set \"{}\" needs volume {} (an empty cartridge of pool \"{pool}\"), but {tried}. \
                 Everything written so far is complete and restorable; add a blank or \
                 labelled empty cartridge of the pool and write the rest as a new session",
                set.set_name, need.volume_seq
            )));
        };
        let write_protected = drive.status()?.write_protected;
        let (offered, label) = match read_label(drive.as_mut())? {
            LabelState::Blank => (Offered::Blank { barcode }, None),
            LabelState::Foreign(what) => (Offered::Foreign { what }, None),
            LabelState::Tapir(l) => {
                let map = map_tape(drive.as_mut())?;
                let holds_data = !map.sessions.is_empty()
                    || !map.unknown_files.is_empty()
                    || map.next_file() > super::volume::FIRST_SESSION_FILE;
                (
                    Offered::Tapir {
                        label: l.label.clone(),
                        pool: l.pool.clone(),
                        set: l.set.as_ref().map(|m| (m.set_name.clone(), m.volume_seq)),
                        holds_data,
                        block_size: l.block_size,
                    },
                    Some(*l),
                )
            }
        };
        let mut label = match accept_for_continuation(&offered, write_protected, &need) {
            Verdict::Refuse { reason } => {
                let name = match &offered {
                    Offered::Tapir { label, .. } => label.clone(),
                    Offered::Blank { barcode: Some(b) } => b.clone(),
                    _ => drive.name().to_string(),
                };
                tracing::warn!("not continuing on {name}: {reason}");
                refused.push(format!("{name}: {reason}"));
                current = drive;
                continue;
            }
            Verdict::LabelThenUse { label } => new_label(&label, pool, block_size),
            Verdict::Use => label.expect("a tapir label was read"),
        };
        label.set = Some(SetMembership {
            set_uuid: set.set_uuid,
            set_name: set.set_name.clone(),
            volume_seq: need.volume_seq,
            previous_volume: Some(previous),
            joined: Timestamp::now(),
            host: hostname(),
        });
        // The cartridge is empty (checked above): its label is rewritten
        // with the set; the session's final filemark makes it durable.
        write_label(drive.as_mut(), &mut label, kit, false)?;
        let pos = drive.position()?;
        if pos.file != super::volume::FIRST_SESSION_FILE || pos.block != 0 {
            return Err(Error::Refused(format!(
                "{}: after labelling {} the drive is at tape file {}, block {}, not at tape file 2; not writing",
                drive.name(),
                label.label,
                pos.file,
                pos.block
            )));
        }
        return Ok(Continuation {
            drive,
            label,
            refused,
        });
    }
}

/// A person at a single drive: told what to do, and the drive watched
/// until they have done it.
pub struct Operator {
    /// How to open the drive again (the device as the user gave it).
    pub device: String,
    /// How long to wait for the operator.
    pub timeout: std::time::Duration,
    /// How often to look at the drive while waiting.
    pub poll: std::time::Duration,
    /// Where the operator reads what to do.
    pub tell: Box<dyn FnMut(&str) + Send>,
}

impl Operator {
    /// Look at the drive until `take` accepts the cartridge in it (`take`
    /// may tell the operator about a wrong one); None when time runs out.
    pub fn wait_for(
        &mut self,
        mut take: impl FnMut(&LabelState, &mut dyn FnMut(&str)) -> bool,
    ) -> Result<Option<Box<dyn TapeDrive>>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(mut drive) = drive_if_loaded(&self.device)? {
                let state = read_label(drive.as_mut())
                    .unwrap_or_else(|e| LabelState::Foreign(format!("unreadable: {e}")));
                if take(&state, &mut *self.tell) {
                    return Ok(Some(drive));
                }
            }
            if started.elapsed() >= self.timeout {
                return Ok(None);
            }
            // Waiting for a person: polling the drive is all there is.
            std::thread::sleep(self.poll);
        }
    }
}

/// An operator changes cartridges: the full one is ejected, the operator
/// is told what to insert, and the drive is watched until a different
/// cartridge is in it.
pub struct OperatorSupply(pub Operator);

impl CartridgeSupply for OperatorSupply {
    fn next(&mut self, mut current: Box<dyn TapeDrive>) -> Result<Option<Candidate>> {
        let previous = match read_label(current.as_mut()) {
            Ok(LabelState::Tapir(l)) => Some((l.volume_uuid, l.label)),
            _ => None,
        };
        current.eject()?;
        drop(current);
        let what = previous.as_ref().map_or_else(
            || "the cartridge in the drive".to_string(),
            |(_, l)| format!("cartridge {l}"),
        );
        let op = &mut self.0;
        (op.tell)(&format!(
            "{what} is done: take it out and insert the next cartridge (an empty one of the pool) into {}; waiting up to {} s",
            op.device,
            op.timeout.as_secs()
        ));
        let drive = op.wait_for(|state, _| match state {
            LabelState::Tapir(l) => previous.as_ref().is_none_or(|(u, _)| *u != l.volume_uuid),
            _ => true,
        })?;
        Ok(drive.map(|d| (d, None)))
    }

    fn whereabouts(&self, _barcode: &str) -> Option<String> {
        Some("taken out of the drive by the operator".into())
    }
}

/// The drive, if a cartridge is in it now; None while it is empty, busy,
/// or reporting the cartridge change (a person is at work on it).
pub fn drive_if_loaded(device: &str) -> Result<Option<Box<dyn TapeDrive>>> {
    use crate::device::DeviceError;
    match crate::device::open::open_drive(device) {
        Ok(d) => Ok(Some(d)),
        Err(
            DeviceError::NoMedium { .. }
            | DeviceError::InvalidRequest { .. }
            | DeviceError::Busy { .. }
            | DeviceError::UnitAttention { .. },
        ) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
