//! SCSI sense data: fixed (response codes 0x70/0x71) and descriptor
//! (0x72/0x73) formats, decoded into a sense key and a named condition.
//!
//! Layouts follow SPC-4 §4.5 (sense data) and SSC-3/SSC-5 for the tape
//! specifics (the FILEMARK, EOM and ILI bits, and the stream commands sense
//! data descriptor). Logic elsewhere matches on [`SenseKey`] and
//! [`Condition`], never on raw ASC/ASCQ numbers.

use std::fmt;

/// Response code of current-error sense data, fixed format.
pub const RESPONSE_FIXED_CURRENT: u8 = 0x70;
/// Response code of deferred-error sense data, fixed format.
pub const RESPONSE_FIXED_DEFERRED: u8 = 0x71;
/// Response code of current-error sense data, descriptor format.
pub const RESPONSE_DESCRIPTOR_CURRENT: u8 = 0x72;
/// Response code of deferred-error sense data, descriptor format.
pub const RESPONSE_DESCRIPTOR_DEFERRED: u8 = 0x73;

// Fixed format (SPC-4 table 48).
const FIXED_VALID: u8 = 0x80;
const FIXED_FLAGS: usize = 2;
const FIXED_INFORMATION: usize = 3;
const FIXED_ADDITIONAL_LENGTH: usize = 7;
const FIXED_COMMAND_SPECIFIC: usize = 8;
const FIXED_ASC: usize = 12;
const FIXED_ASCQ: usize = 13;
const FIXED_SKS: usize = 15;
/// The FILEMARK, EOM and ILI bits in byte 2 of fixed sense data, and in
/// byte 3 of the stream commands descriptor.
const BIT_FILEMARK: u8 = 0x80;
const BIT_EOM: u8 = 0x40;
const BIT_ILI: u8 = 0x20;
/// SKSV: the sense-key-specific bytes are valid.
const SKSV: u8 = 0x80;

// Descriptor format (SPC-4 table 40) and descriptor types.
const DESC_HEADER_LEN: usize = 8;
const DESC_INFORMATION: u8 = 0x00;
const DESC_COMMAND_SPECIFIC: u8 = 0x01;
const DESC_SENSE_KEY_SPECIFIC: u8 = 0x02;
const DESC_STREAM_COMMANDS: u8 = 0x04;

/// The sense key (SPC-4 table 49).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SenseKey {
    NoSense,
    RecoveredError,
    NotReady,
    MediumError,
    HardwareError,
    IllegalRequest,
    UnitAttention,
    DataProtect,
    BlankCheck,
    VendorSpecific,
    CopyAborted,
    AbortedCommand,
    /// 0xC, obsolete ("EQUAL" in older standards).
    Obsolete,
    VolumeOverflow,
    Miscompare,
    /// 0xF.
    Reserved,
}

impl SenseKey {
    pub fn from_bits(bits: u8) -> SenseKey {
        use SenseKey::*;
        match bits & 0x0F {
            0x0 => NoSense,
            0x1 => RecoveredError,
            0x2 => NotReady,
            0x3 => MediumError,
            0x4 => HardwareError,
            0x5 => IllegalRequest,
            0x6 => UnitAttention,
            0x7 => DataProtect,
            0x8 => BlankCheck,
            0x9 => VendorSpecific,
            0xA => CopyAborted,
            0xB => AbortedCommand,
            0xC => Obsolete,
            0xD => VolumeOverflow,
            0xE => Miscompare,
            _ => Reserved,
        }
    }

    pub fn name(self) -> &'static str {
        use SenseKey::*;
        match self {
            NoSense => "no sense",
            RecoveredError => "recovered error",
            NotReady => "not ready",
            MediumError => "medium error",
            HardwareError => "hardware error",
            IllegalRequest => "illegal request",
            UnitAttention => "unit attention",
            DataProtect => "data protect",
            BlankCheck => "blank check",
            VendorSpecific => "vendor specific",
            CopyAborted => "copy aborted",
            AbortedCommand => "aborted command",
            Obsolete => "obsolete sense key 0xC",
            VolumeOverflow => "volume overflow",
            Miscompare => "miscompare",
            Reserved => "reserved sense key 0xF",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Named additional sense code / qualifier pairs that matter to a tape
/// application (SPC-4 Annex D). Everything else is [`Condition::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Condition {
    NoAdditionalSense,
    FilemarkDetected,
    /// Early warning: the logical end of the partition or medium.
    EndOfPartitionOrMedium,
    SetmarkDetected,
    BeginningOfPartitionOrMedium,
    EndOfData,
    OperationInProgress,
    NotReadyCauseNotReportable,
    BecomingReady,
    InitializingCommandRequired,
    ManualInterventionRequired,
    NotReadyOperationInProgress,
    WriteError,
    UnrecoveredReadError,
    RecordedEntityNotFound,
    EndOfDataNotFound,
    MechanicalPositioningError,
    ParameterListLengthError,
    InvalidCommandOperationCode,
    InvalidFieldInCdb,
    LogicalUnitNotSupported,
    InvalidFieldInParameterList,
    /// Write protected (any of the 27h qualifiers).
    WriteProtected,
    /// The medium may have changed (not ready to ready transition).
    MediumMayHaveChanged,
    /// Power on, reset, or bus device reset (any of the 29h qualifiers).
    PowerOnOrReset,
    ModeParametersChanged,
    IncompatibleMediumInstalled,
    CannotReadMediumUnknownFormat,
    CannotReadMediumIncompatibleFormat,
    CleaningCartridgeInstalled,
    WormMediumOverwriteAttempted,
    MediumFormatCorrupted,
    TapeLengthError,
    MediumNotPresent,
    SequentialPositioningError,
    PositionErrorAtBeginningOfMedium,
    PositionErrorAtEndOfMedium,
    InternalTargetFailure,
    WriteAppendError,
    WriteAppendPositionError,
    EraseFailure,
    CartridgeFault,
    MediaLoadOrEjectFailed,
    MediumRemovalPrevented,
    FailurePredictionThresholdExceeded,
    /// Media changers (SMC-3): the element a move would put a cartridge
    /// into already holds one.
    MediumDestinationElementFull,
    /// Media changers: the element a move would take a cartridge from is empty.
    MediumSourceElementEmpty,
    MediumMagazineNotAccessible,
    MediumMagazineRemoved,
    /// Media changers: an element address the library does not have.
    InvalidElementAddress,
    /// Media changers: an operator opened the mail slot (a unit attention).
    ImportOrExportElementAccessed,
    Other {
        asc: u8,
        ascq: u8,
    },
}

impl Condition {
    pub fn from_codes(asc: u8, ascq: u8) -> Condition {
        use Condition::*;
        match (asc, ascq) {
            (0x00, 0x00) => NoAdditionalSense,
            (0x00, 0x01) => FilemarkDetected,
            (0x00, 0x02) => EndOfPartitionOrMedium,
            (0x00, 0x03) => SetmarkDetected,
            (0x00, 0x04) => BeginningOfPartitionOrMedium,
            (0x00, 0x05) => EndOfData,
            (0x00, 0x16) => OperationInProgress,
            (0x04, 0x00) => NotReadyCauseNotReportable,
            (0x04, 0x01) => BecomingReady,
            (0x04, 0x02) => InitializingCommandRequired,
            (0x04, 0x03) => ManualInterventionRequired,
            (0x04, 0x07) => NotReadyOperationInProgress,
            (0x0C, 0x00) => WriteError,
            (0x11, 0x00) => UnrecoveredReadError,
            (0x14, 0x00) => RecordedEntityNotFound,
            (0x14, 0x03) => EndOfDataNotFound,
            (0x15, 0x01) => MechanicalPositioningError,
            (0x1A, 0x00) => ParameterListLengthError,
            (0x20, 0x00) => InvalidCommandOperationCode,
            (0x24, 0x00) => InvalidFieldInCdb,
            (0x25, 0x00) => LogicalUnitNotSupported,
            (0x26, 0x00) => InvalidFieldInParameterList,
            (0x27, _) => WriteProtected,
            (0x28, 0x00) => MediumMayHaveChanged,
            (0x29, _) => PowerOnOrReset,
            (0x2A, 0x01) => ModeParametersChanged,
            (0x30, 0x00) => IncompatibleMediumInstalled,
            (0x30, 0x01) => CannotReadMediumUnknownFormat,
            (0x30, 0x02) => CannotReadMediumIncompatibleFormat,
            (0x30, 0x03) => CleaningCartridgeInstalled,
            (0x30, 0x0C) => WormMediumOverwriteAttempted,
            (0x31, 0x00) => MediumFormatCorrupted,
            (0x33, 0x00) => TapeLengthError,
            (0x3A, _) => MediumNotPresent,
            (0x3B, 0x00) => SequentialPositioningError,
            (0x3B, 0x01) => PositionErrorAtBeginningOfMedium,
            (0x3B, 0x02) => PositionErrorAtEndOfMedium,
            (0x44, 0x00) => InternalTargetFailure,
            (0x50, 0x00) => WriteAppendError,
            (0x50, 0x01) => WriteAppendPositionError,
            (0x51, 0x00) => EraseFailure,
            (0x52, 0x00) => CartridgeFault,
            (0x53, 0x00) => MediaLoadOrEjectFailed,
            (0x53, 0x02) => MediumRemovalPrevented,
            (0x5D, _) => FailurePredictionThresholdExceeded,
            (0x3B, 0x0D) => MediumDestinationElementFull,
            (0x3B, 0x0E) => MediumSourceElementEmpty,
            (0x3B, 0x11) => MediumMagazineNotAccessible,
            (0x3B, 0x12) => MediumMagazineRemoved,
            (0x21, 0x01) => InvalidElementAddress,
            (0x28, 0x01) => ImportOrExportElementAccessed,
            (asc, ascq) => Other { asc, ascq },
        }
    }

    /// A short human description.
    pub fn describe(self) -> String {
        use Condition::*;
        let s = match self {
            NoAdditionalSense => "no additional sense information",
            FilemarkDetected => "filemark detected",
            EndOfPartitionOrMedium => "end of partition/medium detected (early warning)",
            SetmarkDetected => "setmark detected",
            BeginningOfPartitionOrMedium => "beginning of partition/medium detected",
            EndOfData => "end of data detected",
            OperationInProgress => "operation in progress",
            NotReadyCauseNotReportable => "not ready, cause not reportable",
            BecomingReady => "becoming ready (loading or calibrating)",
            InitializingCommandRequired => {
                "not ready, initializing command required (load the cartridge)"
            }
            ManualInterventionRequired => "not ready, manual intervention required",
            NotReadyOperationInProgress => "not ready, an operation is in progress",
            WriteError => "write error",
            UnrecoveredReadError => "unrecovered read error",
            RecordedEntityNotFound => "recorded entity not found",
            EndOfDataNotFound => "end of data not found",
            MechanicalPositioningError => "mechanical positioning error",
            ParameterListLengthError => "parameter list length error",
            InvalidCommandOperationCode => "invalid command operation code",
            InvalidFieldInCdb => "invalid field in CDB",
            LogicalUnitNotSupported => "logical unit not supported",
            InvalidFieldInParameterList => "invalid field in parameter list",
            WriteProtected => "write protected",
            MediumMayHaveChanged => "not ready to ready change, medium may have changed",
            PowerOnOrReset => "power on, reset, or bus device reset occurred",
            ModeParametersChanged => "mode parameters changed",
            IncompatibleMediumInstalled => "incompatible medium installed",
            CannotReadMediumUnknownFormat => "cannot read medium, unknown format",
            CannotReadMediumIncompatibleFormat => "cannot read medium, incompatible format",
            CleaningCartridgeInstalled => "cleaning cartridge installed",
            WormMediumOverwriteAttempted => "WORM medium, overwrite attempted",
            MediumFormatCorrupted => "medium format corrupted",
            TapeLengthError => "tape length error",
            MediumNotPresent => "medium not present",
            SequentialPositioningError => "sequential positioning error",
            PositionErrorAtBeginningOfMedium => "tape position error at beginning of medium",
            PositionErrorAtEndOfMedium => "tape position error at end of medium",
            InternalTargetFailure => "internal target failure",
            WriteAppendError => "write append error",
            WriteAppendPositionError => "write append position error",
            EraseFailure => "erase failure",
            CartridgeFault => "cartridge fault",
            MediaLoadOrEjectFailed => "media load or eject failed",
            MediumRemovalPrevented => "medium removal prevented",
            FailurePredictionThresholdExceeded => "failure prediction threshold exceeded",
            MediumDestinationElementFull => "medium destination element full",
            MediumSourceElementEmpty => "medium source element empty",
            MediumMagazineNotAccessible => "medium magazine not accessible",
            MediumMagazineRemoved => "medium magazine removed",
            InvalidElementAddress => "invalid element address",
            ImportOrExportElementAccessed => "import or export element accessed",
            Other { asc, ascq } => return format!("additional sense {asc:02X}h/{ascq:02X}h"),
        };
        s.to_string()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why a drive raised UNIT ATTENTION (sense key 6), named from its
/// additional sense code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum UnitAttention {
    /// Power on, or a bus, target or device reset (29h): the drive forgot
    /// its position, and data it had buffered but not written may be gone.
    PowerOnOrReset,
    /// Not ready to ready change (28h/00h): a cartridge was loaded, perhaps
    /// another one.
    MediumChanged,
    /// Another initiator changed the mode parameters (2Ah/01h).
    ModeParametersChanged,
    /// Any other reason; the position is kept.
    Other(Condition),
}

impl UnitAttention {
    pub fn from_condition(condition: Condition) -> UnitAttention {
        match condition {
            Condition::PowerOnOrReset => UnitAttention::PowerOnOrReset,
            Condition::MediumMayHaveChanged => UnitAttention::MediumChanged,
            Condition::ModeParametersChanged => UnitAttention::ModeParametersChanged,
            other => UnitAttention::Other(other),
        }
    }

    /// What the host knew about the position (and, for a medium change,
    /// the cartridge) no longer holds.
    pub fn loses_position(self) -> bool {
        matches!(
            self,
            UnitAttention::PowerOnOrReset | UnitAttention::MediumChanged
        )
    }
}

impl fmt::Display for UnitAttention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitAttention::PowerOnOrReset => {
                f.write_str("the drive was reset (power on, or a bus or device reset)")
            }
            UnitAttention::MediumChanged => {
                f.write_str("a cartridge was loaded (the medium may have changed)")
            }
            UnitAttention::ModeParametersChanged => {
                f.write_str("another initiator changed the mode parameters")
            }
            UnitAttention::Other(c) => write!(f, "unit attention: {c}"),
        }
    }
}

/// A condition that concerns more than the command that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Disruption {
    /// Deferred error (response code 71h/73h): an operation the drive had
    /// already reported as done (typically buffered writes) failed.
    Deferred { key: SenseKey, condition: Condition },
    /// A unit attention after which the position is unknown.
    PositionLost(UnitAttention),
}

/// Why sense bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenseError {
    #[error("no sense data")]
    Empty,
    #[error("sense data of {0} bytes is too short for its format")]
    TooShort(usize),
    #[error("unknown sense response code {0:#04x}")]
    UnknownResponseCode(u8),
}

/// Decoded sense data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sense {
    /// 0x70..=0x73.
    pub response_code: u8,
    /// A deferred error: it concerns an earlier command (for a tape, usually
    /// data that was accepted into the drive's buffer and failed later).
    pub deferred: bool,
    /// Descriptor format (0x72/0x73) rather than fixed.
    pub descriptor_format: bool,
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// A filemark was encountered (tape).
    pub filemark: bool,
    /// End of medium: early warning, or beginning/end of partition (tape).
    pub eom: bool,
    /// Incorrect length indicator: the block was not the requested length.
    pub ili: bool,
    /// The INFORMATION field when valid. For tape reads, writes and spaces
    /// it is the residue (requested minus actual count), which some drives
    /// report negative; fixed-format values are sign-extended from 32 bits.
    pub information: Option<i64>,
    pub command_specific: Option<u64>,
    /// Sense-key-specific bytes when SKSV is set.
    pub sense_key_specific: Option<[u8; 3]>,
}

impl Sense {
    /// Decode `bytes` (what the device returned; trailing bytes past the
    /// additional length are ignored).
    pub fn decode(bytes: &[u8]) -> Result<Sense, SenseError> {
        let first = *bytes.first().ok_or(SenseError::Empty)?;
        let code = first & 0x7F;
        match code {
            RESPONSE_FIXED_CURRENT | RESPONSE_FIXED_DEFERRED => Self::decode_fixed(bytes, code),
            RESPONSE_DESCRIPTOR_CURRENT | RESPONSE_DESCRIPTOR_DEFERRED => {
                Self::decode_descriptor(bytes, code)
            }
            other => Err(SenseError::UnknownResponseCode(other)),
        }
    }

    fn decode_fixed(b: &[u8], code: u8) -> Result<Sense, SenseError> {
        // Byte 2 (key and tape bits) is the least a device must return.
        if b.len() <= FIXED_FLAGS {
            return Err(SenseError::TooShort(b.len()));
        }
        // Only what the device says it returned counts.
        let len = if b.len() > FIXED_ADDITIONAL_LENGTH {
            (FIXED_ADDITIONAL_LENGTH + 1 + b[FIXED_ADDITIONAL_LENGTH] as usize).min(b.len())
        } else {
            b.len()
        };
        let b = &b[..len];
        let get = |i: usize| b.get(i).copied();
        let flags = b[FIXED_FLAGS];
        let information = if b[0] & FIXED_VALID != 0 && b.len() >= FIXED_INFORMATION + 4 {
            let raw = u32::from_be_bytes(
                b[FIXED_INFORMATION..FIXED_INFORMATION + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            Some(raw as i32 as i64)
        } else {
            None
        };
        let command_specific = (b.len() >= FIXED_COMMAND_SPECIFIC + 4).then(|| {
            u32::from_be_bytes(
                b[FIXED_COMMAND_SPECIFIC..FIXED_COMMAND_SPECIFIC + 4]
                    .try_into()
                    .expect("4 bytes"),
            ) as u64
        });
        let sense_key_specific = match (get(FIXED_SKS), get(FIXED_SKS + 2)) {
            (Some(s), Some(_)) if s & SKSV != 0 => Some([b[FIXED_SKS], b[16], b[17]]),
            _ => None,
        };
        Ok(Sense {
            response_code: code,
            deferred: code == RESPONSE_FIXED_DEFERRED,
            descriptor_format: false,
            key: SenseKey::from_bits(flags),
            asc: get(FIXED_ASC).unwrap_or(0),
            ascq: get(FIXED_ASCQ).unwrap_or(0),
            filemark: flags & BIT_FILEMARK != 0,
            eom: flags & BIT_EOM != 0,
            ili: flags & BIT_ILI != 0,
            information,
            command_specific,
            sense_key_specific,
        })
    }

    fn decode_descriptor(b: &[u8], code: u8) -> Result<Sense, SenseError> {
        if b.len() < 4 {
            return Err(SenseError::TooShort(b.len()));
        }
        let mut s = Sense {
            response_code: code,
            deferred: code == RESPONSE_DESCRIPTOR_DEFERRED,
            descriptor_format: true,
            key: SenseKey::from_bits(b[1]),
            asc: b[2],
            ascq: b[3],
            filemark: false,
            eom: false,
            ili: false,
            information: None,
            command_specific: None,
            sense_key_specific: None,
        };
        if b.len() < DESC_HEADER_LEN {
            return Ok(s);
        }
        let end = (DESC_HEADER_LEN + b[7] as usize).min(b.len());
        let mut at = DESC_HEADER_LEN;
        // Each descriptor: type, additional length, then that many bytes.
        while at + 2 <= end {
            let kind = b[at];
            let d_end = at + 2 + b[at + 1] as usize;
            if d_end > end {
                break;
            }
            let d = &b[at..d_end];
            match kind {
                DESC_INFORMATION if d.len() >= 12 && d[2] & 0x80 != 0 => {
                    s.information =
                        Some(u64::from_be_bytes(d[4..12].try_into().expect("8 bytes")) as i64);
                }
                DESC_COMMAND_SPECIFIC if d.len() >= 12 => {
                    s.command_specific =
                        Some(u64::from_be_bytes(d[4..12].try_into().expect("8 bytes")));
                }
                DESC_SENSE_KEY_SPECIFIC if d.len() >= 7 && d[4] & SKSV != 0 => {
                    s.sense_key_specific = Some([d[4], d[5], d[6]]);
                }
                DESC_STREAM_COMMANDS if d.len() >= 4 => {
                    s.filemark = d[3] & BIT_FILEMARK != 0;
                    s.eom = d[3] & BIT_EOM != 0;
                    s.ili = d[3] & BIT_ILI != 0;
                }
                _ => {}
            }
            at = d_end;
        }
        Ok(s)
    }

    pub fn condition(&self) -> Condition {
        Condition::from_codes(self.asc, self.ascq)
    }

    /// The drive says it does not implement this command or this page/field.
    pub fn is_unsupported(&self) -> bool {
        self.key == SenseKey::IllegalRequest
            && matches!(
                self.condition(),
                Condition::InvalidCommandOperationCode | Condition::InvalidFieldInCdb
            )
    }

    /// A unit attention that invalidates what the host knows about the
    /// cartridge or position (reset, or a medium change).
    pub fn lost_position(&self) -> bool {
        self.unit_attention()
            .is_some_and(UnitAttention::loses_position)
    }

    /// The unit attention this sense reports, if it is one.
    pub fn unit_attention(&self) -> Option<UnitAttention> {
        (self.key == SenseKey::UnitAttention)
            .then(|| UnitAttention::from_condition(self.condition()))
    }

    /// What this sense says about more than the command it came with: a
    /// deferred error (data the drive had accepted earlier failed), or a
    /// unit attention that loses the position. `None` for everything else,
    /// which concerns only the command itself.
    pub fn disruption(&self) -> Option<Disruption> {
        if self.deferred {
            // A deferred recovered error: the earlier operation succeeded.
            let lost = !matches!(self.key, SenseKey::NoSense | SenseKey::RecoveredError);
            return lost.then(|| Disruption::Deferred {
                key: self.key,
                condition: self.condition(),
            });
        }
        self.unit_attention()
            .filter(|ua| ua.loses_position())
            .map(Disruption::PositionLost)
    }

    /// One line for messages, e.g. "blank check: end of data detected".
    pub fn describe(&self) -> String {
        let mut s = format!("{}: {}", self.key, self.condition());
        if self.deferred {
            s.push_str(" (deferred error: concerns data written earlier)");
        }
        let bits: Vec<&str> = [
            (self.filemark, "filemark"),
            (self.eom, "EOM"),
            (self.ili, "ILI"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, n)| *n)
        .collect();
        if !bits.is_empty() {
            s.push_str(&format!(" [{}]", bits.join(", ")));
        }
        if let Some(info) = self.information {
            s.push_str(&format!(" (information {info})"));
        }
        s
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed-format sense: response code, flags byte, information, ASC/ASCQ.
    fn fixed(code: u8, valid: bool, flags: u8, info: u32, asc: u8, ascq: u8) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = code | if valid { 0x80 } else { 0 };
        b[2] = flags;
        b[3..7].copy_from_slice(&info.to_be_bytes());
        b[7] = 10;
        b[12] = asc;
        b[13] = ascq;
        b
    }

    #[test]
    fn early_warning_fixed() {
        // NO SENSE with EOM, 0/2: a write reached early warning.
        let s = Sense::decode(&fixed(0x70, true, 0x40, 0, 0x00, 0x02)).unwrap();
        assert_eq!(s.key, SenseKey::NoSense);
        assert!(s.eom && !s.filemark && !s.ili && !s.deferred);
        assert_eq!(s.condition(), Condition::EndOfPartitionOrMedium);
        assert_eq!(s.information, Some(0));
    }

    #[test]
    fn filemark_on_read() {
        let s = Sense::decode(&fixed(0x70, true, 0x80, 0x0010_0000, 0x00, 0x01)).unwrap();
        assert_eq!(s.key, SenseKey::NoSense);
        assert!(s.filemark);
        assert_eq!(s.condition(), Condition::FilemarkDetected);
        assert_eq!(s.information, Some(0x0010_0000));
    }

    #[test]
    fn blank_check_end_of_data() {
        let s = Sense::decode(&fixed(0x70, true, 0x08, 1, 0x00, 0x05)).unwrap();
        assert_eq!(s.key, SenseKey::BlankCheck);
        assert_eq!(s.condition(), Condition::EndOfData);
        assert_eq!(
            s.describe(),
            "blank check: end of data detected (information 1)"
        );
    }

    #[test]
    fn ili_with_negative_residue() {
        // Reading a 2048-byte block with a 4096-byte request: residue 2048;
        // a larger block than requested gives a negative residue.
        let s = Sense::decode(&fixed(0x70, true, 0x20, (-2048i32) as u32, 0, 0)).unwrap();
        assert!(s.ili);
        assert_eq!(s.information, Some(-2048));
    }

    #[test]
    fn beginning_of_medium_on_space_back() {
        let s = Sense::decode(&fixed(0x70, true, 0x40, 3, 0x00, 0x04)).unwrap();
        assert!(s.eom);
        assert_eq!(s.condition(), Condition::BeginningOfPartitionOrMedium);
    }

    #[test]
    fn deferred_medium_error() {
        let s = Sense::decode(&fixed(0x71, false, 0x03, 0, 0x0C, 0x00)).unwrap();
        assert!(s.deferred);
        assert_eq!(s.key, SenseKey::MediumError);
        assert_eq!(s.condition(), Condition::WriteError);
        assert_eq!(s.information, None, "VALID bit clear");
        assert!(s.describe().contains("deferred"));
    }

    #[test]
    fn not_ready_and_unit_attention() {
        let s = Sense::decode(&fixed(0x70, false, 0x02, 0, 0x04, 0x01)).unwrap();
        assert_eq!(
            (s.key, s.condition()),
            (SenseKey::NotReady, Condition::BecomingReady)
        );
        let s = Sense::decode(&fixed(0x70, false, 0x02, 0, 0x3A, 0x00)).unwrap();
        assert_eq!(s.condition(), Condition::MediumNotPresent);
        let s = Sense::decode(&fixed(0x70, false, 0x06, 0, 0x29, 0x00)).unwrap();
        assert_eq!(s.key, SenseKey::UnitAttention);
        assert_eq!(s.condition(), Condition::PowerOnOrReset);
        assert!(s.lost_position());
        let s = Sense::decode(&fixed(0x70, false, 0x06, 0, 0x28, 0x00)).unwrap();
        assert_eq!(s.condition(), Condition::MediumMayHaveChanged);
        assert!(s.lost_position());
    }

    #[test]
    fn write_protected_and_unsupported() {
        let s = Sense::decode(&fixed(0x70, false, 0x07, 0, 0x27, 0x00)).unwrap();
        assert_eq!(
            (s.key, s.condition()),
            (SenseKey::DataProtect, Condition::WriteProtected)
        );
        let s = Sense::decode(&fixed(0x70, false, 0x05, 0, 0x20, 0x00)).unwrap();
        assert!(s.is_unsupported());
        let s = Sense::decode(&fixed(0x70, false, 0x05, 0, 0x24, 0x00)).unwrap();
        assert!(s.is_unsupported());
        let s = Sense::decode(&fixed(0x70, false, 0x05, 0, 0x1A, 0x00)).unwrap();
        assert!(!s.is_unsupported());
    }

    #[test]
    fn medium_errors() {
        let s = Sense::decode(&fixed(0x70, true, 0x03, 0, 0x11, 0x00)).unwrap();
        assert_eq!(s.condition(), Condition::UnrecoveredReadError);
        let s = Sense::decode(&fixed(0x70, true, 0x03, 0, 0x3B, 0x00)).unwrap();
        assert_eq!(s.condition(), Condition::SequentialPositioningError);
        let s = Sense::decode(&fixed(0x70, true, 0x03, 0, 0x99, 0x42)).unwrap();
        assert_eq!(
            s.condition(),
            Condition::Other {
                asc: 0x99,
                ascq: 0x42
            }
        );
        assert!(s.describe().contains("99h/42h"));
    }

    #[test]
    fn fixed_sense_key_specific_and_truncation() {
        let mut b = fixed(0x70, false, 0x05, 0, 0x24, 0x00).to_vec();
        b[15] = 0xC0; // SKSV, C/D: field in the CDB
        b[16] = 0x00;
        b[17] = 0x02; // byte 2 of the CDB
        let s = Sense::decode(&b).unwrap();
        assert_eq!(s.sense_key_specific, Some([0xC0, 0x00, 0x02]));
        // A device that returns only 8 bytes: key and bits are still known.
        let short = &fixed(0x70, false, 0x48, 0, 0, 5)[..8];
        let s = Sense::decode(short).unwrap();
        assert_eq!(s.key, SenseKey::BlankCheck);
        assert!(s.eom);
        assert_eq!((s.asc, s.ascq), (0, 0));
        // The additional length limits what is read.
        let mut b = fixed(0x70, false, 0x00, 0, 0x00, 0x05).to_vec();
        b[7] = 4; // only bytes 8..12
        let s = Sense::decode(&b).unwrap();
        assert_eq!(s.condition(), Condition::NoAdditionalSense);
    }

    #[test]
    fn descriptor_format_with_stream_and_information() {
        // 0x72, BLANK CHECK, 0/5, then an information descriptor (residue 7)
        // and a stream commands descriptor with EOM set.
        let mut b = vec![0x72, 0x08, 0x00, 0x05, 0, 0, 0, 0];
        b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 7]);
        b.extend_from_slice(&[0x04, 0x02, 0x00, 0x40]);
        b[7] = (b.len() - 8) as u8;
        let s = Sense::decode(&b).unwrap();
        assert!(s.descriptor_format && !s.deferred);
        assert_eq!(s.key, SenseKey::BlankCheck);
        assert_eq!(s.condition(), Condition::EndOfData);
        assert_eq!(s.information, Some(7));
        assert!(s.eom && !s.filemark && !s.ili);
    }

    #[test]
    fn descriptor_format_deferred_and_malformed() {
        let mut b = vec![0x73, 0x03, 0x0C, 0x00, 0, 0, 0, 0];
        // Sense key specific descriptor, then a truncated one that is ignored.
        b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, 0x80, 0x12, 0x34, 0x00]);
        b.extend_from_slice(&[0x04, 0x09, 0x00]);
        b[7] = (b.len() - 8) as u8;
        let s = Sense::decode(&b).unwrap();
        assert!(s.deferred);
        assert_eq!(s.key, SenseKey::MediumError);
        assert_eq!(s.condition(), Condition::WriteError);
        assert_eq!(s.sense_key_specific, Some([0x80, 0x12, 0x34]));
        assert!(!s.eom);
        // Header only.
        let s = Sense::decode(&[0x72, 0x06, 0x29, 0x00]).unwrap();
        assert!(s.lost_position());
    }

    #[test]
    fn bad_input() {
        assert_eq!(Sense::decode(&[]), Err(SenseError::Empty));
        assert_eq!(Sense::decode(&[0x70, 0]), Err(SenseError::TooShort(2)));
        assert_eq!(Sense::decode(&[0x72, 0, 0]), Err(SenseError::TooShort(3)));
        assert_eq!(
            Sense::decode(&[0x7F, 0, 0, 0]),
            Err(SenseError::UnknownResponseCode(0x7F))
        );
        // Vendor-specific 0x7F aside, the VALID bit does not change the code.
        assert!(Sense::decode(&fixed(0x70, true, 0, 0, 0, 0)).is_ok());
    }

    #[test]
    fn deferred_errors_are_disruptions() {
        // A buffered write that failed, reported with a later command.
        let s = Sense::decode(&fixed(0x71, false, 0x03, 0, 0x0C, 0x00)).unwrap();
        assert_eq!(
            s.disruption(),
            Some(Disruption::Deferred {
                key: SenseKey::MediumError,
                condition: Condition::WriteError
            })
        );
        // Descriptor format: hardware error, internal target failure.
        let s = Sense::decode(&[0x73, 0x04, 0x44, 0x00, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            s.disruption(),
            Some(Disruption::Deferred {
                key: SenseKey::HardwareError,
                condition: Condition::InternalTargetFailure
            })
        );
        // Deferred, but recovered: nothing was lost.
        let s = Sense::decode(&fixed(0x71, false, 0x01, 0, 0x00, 0x00)).unwrap();
        assert!(s.deferred);
        assert_eq!(s.disruption(), None);
        // The same medium error as a current error concerns its command only.
        let s = Sense::decode(&fixed(0x70, true, 0x03, 0, 0x0C, 0x00)).unwrap();
        assert_eq!(s.disruption(), None);
        let s = Sense::decode(&fixed(0x70, false, 0x02, 0, 0x3A, 0x00)).unwrap();
        assert_eq!(s.disruption(), None);
    }

    #[test]
    fn unit_attentions_that_lose_the_position() {
        // 29h with its qualifiers: power on (00, 01), SCSI bus reset (02),
        // bus device reset (03), device internal reset (04), I_T nexus loss (07).
        for ascq in [0x00, 0x01, 0x02, 0x03, 0x04, 0x07] {
            let s = Sense::decode(&fixed(0x70, false, 0x06, 0, 0x29, ascq)).unwrap();
            assert_eq!(s.unit_attention(), Some(UnitAttention::PowerOnOrReset));
            assert_eq!(
                s.disruption(),
                Some(Disruption::PositionLost(UnitAttention::PowerOnOrReset)),
                "29h/{ascq:02X}h"
            );
        }
        let s = Sense::decode(&fixed(0x70, false, 0x06, 0, 0x28, 0x00)).unwrap();
        assert_eq!(
            s.disruption(),
            Some(Disruption::PositionLost(UnitAttention::MediumChanged))
        );
        // Descriptor format, header only.
        let s = Sense::decode(&[0x72, 0x06, 0x28, 0x00]).unwrap();
        assert_eq!(
            s.disruption(),
            Some(Disruption::PositionLost(UnitAttention::MediumChanged))
        );
        // Unit attentions that keep the position.
        let s = Sense::decode(&fixed(0x70, false, 0x06, 0, 0x2A, 0x01)).unwrap();
        assert_eq!(
            s.unit_attention(),
            Some(UnitAttention::ModeParametersChanged)
        );
        assert_eq!(s.disruption(), None);
        assert!(!s.lost_position());
        let s = Sense::decode(&fixed(0x70, false, 0x06, 0, 0x3F, 0x01)).unwrap();
        assert_eq!(
            s.unit_attention(),
            Some(UnitAttention::Other(Condition::Other {
                asc: 0x3F,
                ascq: 0x01
            }))
        );
        assert_eq!(s.disruption(), None);
        // Not a unit attention at all: the same ASC under another key.
        let s = Sense::decode(&fixed(0x70, false, 0x02, 0, 0x29, 0x00)).unwrap();
        assert_eq!(s.unit_attention(), None);
        assert_eq!(s.disruption(), None);
    }

    #[test]
    fn unit_attention_reasons_read_as_sentences() {
        assert!(UnitAttention::PowerOnOrReset.to_string().contains("reset"));
        assert!(UnitAttention::MediumChanged
            .to_string()
            .contains("cartridge"));
        let other = UnitAttention::Other(Condition::Other {
            asc: 0x3F,
            ascq: 0x01,
        });
        assert!(other.to_string().contains("3Fh/01h"), "{other}");
        assert!(UnitAttention::PowerOnOrReset.loses_position());
        assert!(UnitAttention::MediumChanged.loses_position());
        assert!(!UnitAttention::ModeParametersChanged.loses_position());
        assert!(!other.loses_position());
    }

    #[test]
    fn every_key_round_trips_its_bits() {
        for bits in 0..16u8 {
            let k = SenseKey::from_bits(bits | 0xF0);
            assert_eq!(SenseKey::from_bits(bits), k);
            assert!(!k.name().is_empty());
        }
    }
}
