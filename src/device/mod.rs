//! The device layer: the only place that talks to drives, and the only place
//! with `unsafe` code. Everything above it sees these capability traits and
//! the typed conditions in [`DeviceError`] and [`ReadOutcome`].

pub mod changer;
pub mod discover;
pub mod disk;
pub mod drivesim;
pub mod inode_flags;
pub mod library;
pub mod open;
pub mod sense;
pub mod sg;
pub mod st;
pub mod statx;
pub mod vtape;

/// A position on tape as the drive reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapePosition {
    /// Tape file number (filemarks passed since the beginning of tape).
    pub file: u32,
    /// Block number within the current tape file.
    pub block: u64,
    /// Logical block address from the beginning of tape (blocks and filemarks).
    pub logical: u64,
}

/// What a block read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A block of this many bytes was read.
    Block(usize),
    /// A filemark: the end of a tape file. Position is now past it.
    Filemark,
    /// End of recorded data: nothing more on this cartridge.
    EndOfData,
}

/// What a block write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written, plenty of room left.
    Written,
    /// Written, but the early-warning zone is reached: finish up soon.
    EarlyWarning,
}

/// Who the drive is, as far as it can tell (for the catalog: which drive
/// wrote a cartridge, so a verify can be run on another).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriveIdentity {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
}

/// Drive and cartridge status as the drive reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriveStatus {
    pub online: bool,
    pub write_protected: bool,
    pub at_bot: bool,
    pub at_eod: bool,
    pub early_warning: bool,
    pub position: TapePosition,
    /// Barcode or label of the loaded cartridge, when the device knows it.
    pub barcode: Option<String>,
}

/// How a drive positions, as far as this process has used it: whether it
/// reports its position (READ POSITION) and LOCATEs, and where its LOCATEs
/// landed before any correction (drives disagree by one around filemarks).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PositioningReport {
    /// `None` until tried.
    pub read_position: Option<bool>,
    /// `None` until tried.
    pub locate: Option<bool>,
    /// LOCATEs that landed on the object asked for.
    pub locate_exact: u32,
    /// LOCATEs that stopped one object past it (corrected by spacing back).
    pub locate_one_past: u32,
    /// LOCATEs that stopped one object short (corrected by spacing forward).
    pub locate_one_short: u32,
    /// LOCATEs that landed further off (tried again).
    pub locate_elsewhere: u32,
}

/// Typed conditions a drive reports, each with the device it came from.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{device}: no cartridge loaded; load one (tapir changer load SLOT) and retry")]
    NoMedium { device: String },
    #[error("{device}: cartridge is write-protected; slide its write-protect tab or use another cartridge")]
    WriteProtected { device: String },
    #[error("{device}: end of medium reached at tape file {file}, block {block}; nothing more fits on this cartridge")]
    EndOfMedium {
        device: String,
        file: u32,
        block: u64,
    },
    #[error("{device}: end of recorded data reached at tape file {file}, block {block}")]
    EndOfData {
        device: String,
        file: u32,
        block: u64,
    },
    #[error("{device}: medium error at tape file {file}, block {block}: {detail}")]
    MediumError {
        device: String,
        file: u32,
        block: u64,
        detail: String,
    },
    #[error("{device}: block of {needed} bytes does not fit the {buffer}-byte read buffer at tape file {file}, block {block}")]
    BlockTooLarge {
        device: String,
        needed: usize,
        buffer: usize,
        file: u32,
        block: u64,
    },
    /// Something the drive had already accepted (write() returned, or it
    /// acknowledged a buffered write or an immediate filemark) failed
    /// afterwards: a deferred error (sense response code 71h/73h), or the
    /// drive's position shows that accepted blocks never reached the
    /// medium. What follows the last durable point is uncertain.
    #[error("{device}: deferred error: {detail}. Data the drive had already accepted may not be on the cartridge; find out what is really there (go to end of data and read back the last blocks) and rewrite everything after the last point known to be durable")]
    DeferredError { device: String, detail: String },
    /// The drive raised UNIT ATTENTION for a reset or a medium change: its
    /// position (and, after a reset, data it had buffered) is lost, and the
    /// st driver refuses reads, writes and relative spacing until the tape
    /// is positioned absolutely again.
    #[error("{device}: {reason}; the tape position is lost. Re-establish it (rewind, locate a known tape file, or go to end of data) and, if writing, check what reached the cartridge before continuing")]
    UnitAttention {
        device: String,
        reason: sense::UnitAttention,
    },
    /// A media changer refused a move or another command, for the reason
    /// its sense data names (destination full, source empty, removal
    /// prevented, door open, ...).
    #[error("{device}: {action}: the changer refused: {condition}")]
    ChangerRefused {
        device: String,
        action: String,
        condition: sense::Condition,
    },
    /// Another process has the drive or changer now.
    #[error("{device}: {detail}")]
    Busy { device: String, detail: String },
    /// A changer could not move a cartridge; it stays where it was.
    #[error("{device}: the changer failed to move {barcode} from {from}: {detail}; it stays there. Check the library (and its log) before retrying")]
    MoveFailed {
        device: String,
        barcode: String,
        from: String,
        detail: String,
    },
    /// A removable disk that is not plugged in (or not the one needed).
    #[error("{device}: {detail}")]
    Absent { device: String, detail: String },
    /// A removable disk pulled or unmounted while in use.
    #[error("{device}: {detail}")]
    Removed { device: String, detail: String },
    #[error("{device}: {what} is not supported by this device")]
    Unsupported { device: String, what: String },
    #[error("{device}: {detail}")]
    InvalidRequest { device: String, detail: String },
    #[error("{device}: {context}: {source}")]
    Io {
        device: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DeviceError {
    pub fn io(device: &str, context: impl Into<String>, source: std::io::Error) -> Self {
        DeviceError::Io {
            device: device.to_string(),
            context: context.into(),
            source,
        }
    }

    /// The error for a condition that concerns more than one command.
    pub fn from_disruption(device: &str, d: sense::Disruption) -> Self {
        match d {
            sense::Disruption::Deferred { key, condition } => DeviceError::DeferredError {
                device: device.to_string(),
                detail: format!("{key}: {condition}"),
            },
            sense::Disruption::PositionLost(reason) => DeviceError::UnitAttention {
                device: device.to_string(),
                reason,
            },
        }
    }

    /// The drive's position is no longer what the host believed (a reset,
    /// a medium change, or accepted data that did not reach the medium).
    pub fn position_lost(&self) -> bool {
        matches!(
            self,
            DeviceError::UnitAttention { .. } | DeviceError::DeferredError { .. }
        )
    }
}

pub type DeviceResult<T> = Result<T, DeviceError>;

/// Reads blocks in order.
pub trait BlockRead {
    /// Read the next block into `buf`. A block larger than `buf` is an error
    /// ([`DeviceError::BlockTooLarge`]) and, as on the st driver, the position
    /// moves past it.
    fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<ReadOutcome>;
}

/// Writes blocks and filemarks at the current position, truncating what follows.
pub trait BlockWrite {
    fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome>;
    /// Write `count` filemarks. `immediate` returns before the drive's buffer
    /// is on the medium (st: MTWEOFI); otherwise everything before is durable.
    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DeviceResult<()>;
    /// Make everything written so far durable on the medium.
    fn flush(&mut self) -> DeviceResult<()>;
}

/// A tape drive with a cartridge: positioning and status on top of block I/O.
pub trait TapeDrive: BlockRead + BlockWrite + Send {
    /// The device's name as the user gave it, for messages.
    fn name(&self) -> &str;
    fn rewind(&mut self) -> DeviceResult<()>;
    /// Space over `count` filemarks: forward if positive, backward if negative.
    /// Backward spacing stops just before the filemark (the BOT side), as st's MTBSF.
    /// Forward spacing that reaches end of data fails with [`DeviceError::EndOfData`].
    fn space_filemarks(&mut self, count: i64) -> DeviceResult<()>;
    /// Space over `count` blocks within the current tape file (±).
    fn space_blocks(&mut self, count: i64) -> DeviceResult<()>;
    /// Go to end of recorded data, ready to append.
    fn seek_end_of_data(&mut self) -> DeviceResult<()>;
    fn position(&mut self) -> DeviceResult<TapePosition>;
    /// Go to block `block` of tape file `file`.
    fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()>;
    fn status(&mut self) -> DeviceResult<DriveStatus>;
    /// Largest block this drive can read or write.
    fn max_block_size(&self) -> usize;
    /// Vendor, model, serial and firmware, when the drive can tell.
    fn identity(&mut self) -> Option<DriveIdentity> {
        None
    }
    /// Streaming figures from the drive (backhitches), when it can tell.
    fn streaming_stats(&self) -> Option<drivesim::StreamingStats> {
        None
    }
    /// Whether the medium streams past the heads (a tape drive, which stops
    /// and repositions when data runs out): a writer then lets its buffer
    /// fill before it starts the drive. A medium that does not stream
    /// gains nothing from that wait.
    fn streams(&self) -> bool {
        true
    }
    /// Data bytes that still fit from the current position before early
    /// warning, when the drive can tell. A writer plans the end of a
    /// cartridge with it; early warning itself stays the safety net.
    fn room_before_early_warning(&mut self) -> Option<u64> {
        None
    }
    /// Rewind and eject the cartridge, so an operator can take it out.
    /// Drives an operator cannot reach (a virtual library's) do nothing.
    fn eject(&mut self) -> DeviceResult<()> {
        Ok(())
    }
    /// Erase from the current position to the end of the tape: a short
    /// erase writes end of data here; a `long` one also overwrites the rest
    /// of the tape (hours on a real cartridge).
    fn erase(&mut self, long: bool) -> DeviceResult<()> {
        let _ = long;
        Err(self.unsupported("erase"))
    }
    /// Every cartridge-memory (MAM) attribute the drive returns.
    fn cartridge_memory(&mut self) -> DeviceResult<sg::Attributes> {
        Err(self.unsupported("cartridge memory (READ ATTRIBUTE)"))
    }
    /// Write cartridge-memory (MAM) attributes.
    fn write_cartridge_memory(&mut self, attributes: &[sg::Attribute]) -> DeviceResult<()> {
        let _ = attributes;
        Err(self.unsupported("writing cartridge memory (WRITE ATTRIBUTE)"))
    }
    /// How this drive positions, when it can tell.
    fn positioning(&self) -> Option<PositioningReport> {
        None
    }
    /// [`DeviceError::Unsupported`] for `what` on this drive.
    fn unsupported(&self, what: &str) -> DeviceError {
        DeviceError::Unsupported {
            device: self.name().to_string(),
            what: what.to_string(),
        }
    }
}

/// A media changer: slots, a drive, and moves between them.
pub trait Changer {
    fn inventory(&self) -> DeviceResult<ChangerInventory>;
    /// Load the cartridge in `slot` into the drive (unloading first if needed).
    fn load_slot(&mut self, slot: usize) -> DeviceResult<()>;
    /// Return the drive's cartridge to its home slot.
    fn unload(&mut self) -> DeviceResult<()>;
}

/// What a changer holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangerInventory {
    /// Slot number (1-based) and barcode of the cartridge there, if any (a
    /// cartridge whose barcode a SCSI changer cannot read has an empty one).
    pub slots: Vec<(usize, Option<String>)>,
    /// Barcode of the cartridge in the drive and the slot it came from (0
    /// when a SCSI changer does not know).
    pub drive: Option<(String, usize)>,
}

/// Where a virtual library lives, for messages.
pub fn describe(path: &std::path::Path) -> String {
    format!("vtape:{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::sense::{Condition, Disruption, SenseKey, UnitAttention};
    use super::*;

    #[test]
    fn disruptions_become_named_errors_that_say_what_to_do() {
        let e = DeviceError::from_disruption(
            "/dev/nst0",
            Disruption::Deferred {
                key: SenseKey::MediumError,
                condition: Condition::WriteError,
            },
        );
        assert!(matches!(e, DeviceError::DeferredError { .. }));
        assert!(e.position_lost());
        let msg = e.to_string();
        assert!(
            msg.starts_with("/dev/nst0: deferred error: medium error: write error"),
            "{msg}"
        );
        assert!(
            msg.contains("already accepted") && msg.contains("rewrite"),
            "{msg}"
        );
        let e = DeviceError::from_disruption(
            "/dev/nst0",
            Disruption::PositionLost(UnitAttention::PowerOnOrReset),
        );
        assert!(matches!(
            e,
            DeviceError::UnitAttention {
                reason: UnitAttention::PowerOnOrReset,
                ..
            }
        ));
        assert!(e.position_lost());
        let msg = e.to_string();
        assert!(
            msg.contains("reset") && msg.contains("position is lost"),
            "{msg}"
        );
        assert!(msg.contains("Re-establish"), "{msg}");
        let e = DeviceError::from_disruption(
            "/dev/nst0",
            Disruption::PositionLost(UnitAttention::MediumChanged),
        );
        assert!(e.to_string().contains("cartridge was loaded"), "{e}");
        let e = DeviceError::MediumError {
            device: "d".into(),
            file: 0,
            block: 0,
            detail: String::new(),
        };
        assert!(!e.position_lost());
    }
}
