//! SCSI commands through the SG_IO ioctl, for what the st ioctls cannot
//! reach: identity, block limits, position, mode and log pages, cartridge
//! memory and densities.
//!
//! SG_IO works on the st file descriptor itself (and on the matching
//! /dev/sgN). The kernel lets a process without CAP_SYS_RAWIO send only a
//! few commands; others fail with [`SgError::PermissionDenied`].
//!
//! Every command returns a parsed structure. A drive that lacks a command or
//! a page answers ILLEGAL REQUEST (invalid operation code, or invalid field
//! in the CDB); that becomes [`SgError::NotSupported`], which callers treat
//! as "not supported", never as a failed job. The parsers are plain
//! functions over response bytes, laid out as SPC-4 and SSC-3/SSC-5 specify,
//! and unit-tested on such bytes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::sense::{Condition, Sense, SenseKey};
use super::DeviceError;

/// The SG_IO request number (not an _IOC-encoded number).
pub const SG_IO: u32 = 0x2285;
/// `interface_id` of a version-3 request: 'S'.
const SG_INTERFACE_ID: i32 = b'S' as i32;
const SG_DXFER_NONE: i32 = -1;
const SG_DXFER_TO_DEV: i32 = -2;
const SG_DXFER_FROM_DEV: i32 = -3;
/// Room for sense data (SPC allows up to 252 bytes; tape drives send < 64).
const SENSE_LEN: usize = 96;
/// Default command timeout.
const TIMEOUT_MS: u32 = 60_000;

// SCSI status bytes (SAM-5).
const STATUS_GOOD: u8 = 0x00;
const STATUS_CHECK_CONDITION: u8 = 0x02;
const STATUS_CONDITION_MET: u8 = 0x04;
// Linux driver_status: sense data was returned.
const DRIVER_SENSE: u16 = 0x08;

// Operation codes.
const OP_TEST_UNIT_READY: u8 = 0x00;
const OP_REQUEST_SENSE: u8 = 0x03;
const OP_READ_BLOCK_LIMITS: u8 = 0x05;
const OP_INQUIRY: u8 = 0x12;
const OP_MODE_SENSE_6: u8 = 0x1A;
const OP_READ_POSITION: u8 = 0x34;
const OP_REPORT_DENSITY_SUPPORT: u8 = 0x44;
const OP_LOG_SENSE: u8 = 0x4D;
const OP_MODE_SENSE_10: u8 = 0x5A;
const OP_READ_ATTRIBUTE: u8 = 0x8C;
const OP_WRITE_ATTRIBUTE: u8 = 0x8D;

/// READ POSITION service actions (SSC-3 table 33).
const RP_SHORT: u8 = 0x00;
const RP_LONG: u8 = 0x06;
const RP_SHORT_LEN: usize = 20;
const RP_LONG_LEN: usize = 32;

/// Mode pages.
pub const PAGE_DATA_COMPRESSION: u8 = 0x0F;
pub const PAGE_MEDIUM_CONFIGURATION: u8 = 0x1D;
/// Log pages.
pub const LOG_VOLUME_STATISTICS: u8 = 0x17;
pub const LOG_TAPE_ALERT: u8 = 0x2E;
/// Tape capacity log page (SSC; LTO, DDS and T10000 drives have it).
pub const LOG_TAPE_CAPACITY: u8 = 0x31;
/// Longest sense data REQUEST SENSE may return (SPC-4).
const REQUEST_SENSE_LEN: u8 = 252;

/// The version-3 `struct sg_io_hdr` of `<scsi/sg.h>` (88 bytes on x86_64).
#[repr(C)]
#[derive(Debug)]
pub struct SgIoHdr {
    pub interface_id: libc::c_int,
    pub dxfer_direction: libc::c_int,
    pub cmd_len: libc::c_uchar,
    pub mx_sb_len: libc::c_uchar,
    pub iovec_count: libc::c_ushort,
    pub dxfer_len: libc::c_uint,
    pub dxferp: *mut libc::c_void,
    pub cmdp: *const libc::c_uchar,
    pub sbp: *mut libc::c_uchar,
    pub timeout: libc::c_uint,
    pub flags: libc::c_uint,
    pub pack_id: libc::c_int,
    pub usr_ptr: *mut libc::c_void,
    pub status: libc::c_uchar,
    pub masked_status: libc::c_uchar,
    pub msg_status: libc::c_uchar,
    pub sb_len_wr: libc::c_uchar,
    pub host_status: libc::c_ushort,
    pub driver_status: libc::c_ushort,
    pub resid: libc::c_int,
    pub duration: libc::c_uint,
    pub info: libc::c_uint,
}

nix::ioctl_readwrite_bad!(sg_io_ioctl, SG_IO, SgIoHdr);

/// Why a SCSI command failed.
#[derive(Debug, thiserror::Error)]
pub enum SgError {
    #[error("{device}: {what} is not supported by this drive")]
    NotSupported { device: String, what: String },
    #[error("{device}: {command} failed: {sense}")]
    CheckCondition {
        device: String,
        command: String,
        sense: Sense,
    },
    #[error("{device}: {command} failed with SCSI status {status:#04x} (host status {host_status:#06x}, driver status {driver_status:#06x})")]
    Failed {
        device: String,
        command: String,
        status: u8,
        host_status: u16,
        driver_status: u16,
    },
    #[error("{device}: {command} needs the CAP_SYS_RAWIO capability (run as root or grant it): {source}")]
    PermissionDenied {
        device: String,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{device}: {command}: {source}")]
    Io {
        device: String,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{device}: {command} returned a malformed response: {detail}")]
    Malformed {
        device: String,
        command: String,
        detail: String,
    },
}

impl SgError {
    /// The drive lacks the command or page.
    pub fn is_not_supported(&self) -> bool {
        matches!(self, SgError::NotSupported { .. })
    }

    /// The sense data, when the drive sent some.
    pub fn sense(&self) -> Option<&Sense> {
        match self {
            SgError::CheckCondition { sense, .. } => Some(sense),
            _ => None,
        }
    }
}

impl From<SgError> for DeviceError {
    fn from(e: SgError) -> DeviceError {
        match e {
            SgError::NotSupported { device, what } => DeviceError::Unsupported { device, what },
            SgError::CheckCondition { device, sense, .. } if sense.disruption().is_some() => {
                let d = sense.disruption().expect("checked in the guard");
                DeviceError::from_disruption(&device, d)
            }
            SgError::CheckCondition { device, sense, .. }
                if sense.condition() == Condition::MediumNotPresent =>
            {
                DeviceError::NoMedium { device }
            }
            SgError::CheckCondition { device, sense, .. } if sense.key == SenseKey::DataProtect => {
                DeviceError::WriteProtected { device }
            }
            SgError::Io {
                device,
                command,
                source,
            } => DeviceError::Io {
                device,
                context: command,
                source,
            },
            SgError::PermissionDenied {
                device,
                command,
                source,
            } => DeviceError::Io {
                device,
                context: format!("{command} (SG_IO needs CAP_SYS_RAWIO)"),
                source,
            },
            other => {
                let device = match &other {
                    SgError::CheckCondition { device, .. }
                    | SgError::Failed { device, .. }
                    | SgError::Malformed { device, .. } => device.clone(),
                    _ => String::new(),
                };
                let detail = other.to_string();
                let detail = detail
                    .strip_prefix(&format!("{device}: "))
                    .unwrap_or(&detail)
                    .to_string();
                DeviceError::InvalidRequest { device, detail }
            }
        }
    }
}

pub type SgResult<T> = Result<T, SgError>;

/// Direction and buffer of a command's data phase.
pub enum Data<'b> {
    None,
    In(&'b mut [u8]),
    Out(&'b [u8]),
}

impl Data<'_> {
    /// The same buffer, borrowed again (to send a command twice).
    fn reborrow(&mut self) -> Data<'_> {
        match self {
            Data::None => Data::None,
            Data::In(b) => Data::In(b),
            Data::Out(b) => Data::Out(b),
        }
    }
}

/// How often a command is sent when the drive answers with unit
/// attentions that keep the position.
const UA_ATTEMPTS: u32 = 3;

/// SCSI commands on an open st (or sg) file descriptor.
pub struct Scsi<'a> {
    fd: BorrowedFd<'a>,
    device: &'a str,
    timeout_ms: u32,
}

impl<'a> Scsi<'a> {
    /// `device` names the drive in messages.
    pub fn new(fd: BorrowedFd<'a>, device: &'a str) -> Scsi<'a> {
        Scsi {
            fd,
            device,
            timeout_ms: TIMEOUT_MS,
        }
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u32) -> Scsi<'a> {
        self.timeout_ms = timeout_ms;
        self
    }

    fn malformed(&self, command: &str, detail: impl Into<String>) -> SgError {
        SgError::Malformed {
            device: self.device.to_string(),
            command: command.to_string(),
            detail: detail.into(),
        }
    }

    /// Send `cdb`; return the number of bytes transferred.
    pub fn execute(&self, command: &str, cdb: &[u8], data: Data<'_>) -> SgResult<usize> {
        assert!(
            !cdb.is_empty() && cdb.len() <= 16,
            "a CDB has 1 to 16 bytes"
        );
        // A unit attention that keeps the position (mode parameters changed
        // by another initiator, and the like) means the command was not
        // run; the drive reports each one once, so try again.
        let mut data = data;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.execute_once(command, cdb, data.reborrow()) {
                Err(SgError::CheckCondition { sense, .. })
                    if attempts < UA_ATTEMPTS
                        && sense
                            .unit_attention()
                            .is_some_and(|ua| !ua.loses_position()) =>
                {
                    tracing::debug!(device = %self.device, %command, %sense, "unit attention; sending the command again");
                }
                r => return r,
            }
        }
    }

    fn execute_once(&self, command: &str, cdb: &[u8], data: Data<'_>) -> SgResult<usize> {
        let mut sense = [0u8; SENSE_LEN];
        let (direction, ptr, len) = match data {
            Data::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0usize),
            Data::In(buf) => (
                SG_DXFER_FROM_DEV,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            ),
            // The kernel only reads a to-device buffer.
            Data::Out(buf) => (
                SG_DXFER_TO_DEV,
                buf.as_ptr() as *mut libc::c_void,
                buf.len(),
            ),
        };
        let mut hdr = SgIoHdr {
            interface_id: SG_INTERFACE_ID,
            dxfer_direction: direction,
            cmd_len: cdb.len() as u8,
            mx_sb_len: SENSE_LEN as u8,
            iovec_count: 0,
            dxfer_len: u32::try_from(len).expect("SG transfers are far below 4 GiB"),
            dxferp: ptr,
            cmdp: cdb.as_ptr(),
            sbp: sense.as_mut_ptr(),
            timeout: self.timeout_ms,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: `hdr` is a valid sg_io_hdr whose pointers refer to `cdb`
        // (cmd_len bytes, only read), `sense` (mx_sb_len bytes, written) and
        // the data buffer of `len` bytes (written for DXFER_FROM_DEV, only
        // read for DXFER_TO_DEV); all outlive this synchronous call, and the
        // fd is borrowed and open for its whole duration.
        let r = unsafe { sg_io_ioctl(self.fd.as_raw_fd(), &mut hdr) };
        if let Err(errno) = r {
            let source = io::Error::from(errno);
            return Err(match errno {
                nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => SgError::PermissionDenied {
                    device: self.device.to_string(),
                    command: command.to_string(),
                    source,
                },
                nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL => SgError::NotSupported {
                    device: self.device.to_string(),
                    what: format!("{command} through SG_IO ({source})"),
                },
                _ => SgError::Io {
                    device: self.device.to_string(),
                    command: command.to_string(),
                    source,
                },
            });
        }
        let transferred = len.saturating_sub(hdr.resid.max(0) as usize);
        let sense_len = (hdr.sb_len_wr as usize).min(SENSE_LEN);
        let decoded = (sense_len > 0).then(|| Sense::decode(&sense[..sense_len]));
        let host_ok = hdr.host_status == 0;
        let driver_ok = hdr.driver_status & !DRIVER_SENSE == 0;
        match (hdr.status, decoded) {
            (STATUS_GOOD | STATUS_CONDITION_MET, _) if host_ok && driver_ok => Ok(transferred),
            (STATUS_CHECK_CONDITION, Some(Ok(s))) if host_ok => {
                if s.key == SenseKey::RecoveredError && !s.deferred {
                    // Completed, after the drive recovered an error.
                    return Ok(transferred);
                }
                if s.is_unsupported() {
                    return Err(SgError::NotSupported {
                        device: self.device.to_string(),
                        what: format!("{command} ({})", s.condition()),
                    });
                }
                Err(SgError::CheckCondition {
                    device: self.device.to_string(),
                    command: command.to_string(),
                    sense: s,
                })
            }
            _ => Err(SgError::Failed {
                device: self.device.to_string(),
                command: command.to_string(),
                status: hdr.status,
                host_status: hdr.host_status,
                driver_status: hdr.driver_status,
            }),
        }
    }

    fn data_in(&self, command: &str, cdb: &[u8], len: usize) -> SgResult<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self.execute(command, cdb, Data::In(&mut buf))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// TEST UNIT READY: `Ok(())` when a cartridge is loaded and ready.
    pub fn test_unit_ready(&self) -> SgResult<()> {
        self.execute(
            "TEST UNIT READY",
            &[OP_TEST_UNIT_READY, 0, 0, 0, 0, 0],
            Data::None,
        )
        .map(|_| ())
    }

    /// REQUEST SENSE: what the drive has to report that no command has
    /// carried yet (a pending unit attention or deferred error). The drive
    /// clears it by reporting it. `None` when it has nothing (no sense, or
    /// NO SENSE without additional sense code).
    pub fn request_sense(&self) -> SgResult<Option<Sense>> {
        let cmd = "REQUEST SENSE";
        let cdb = [OP_REQUEST_SENSE, 0, 0, 0, REQUEST_SENSE_LEN, 0];
        let b = self.data_in(cmd, &cdb, REQUEST_SENSE_LEN as usize)?;
        parse_request_sense(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// Standard INQUIRY data.
    pub fn inquiry(&self) -> SgResult<Inquiry> {
        const LEN: u16 = 96;
        let [hi, lo] = LEN.to_be_bytes();
        let cmd = "INQUIRY";
        let b = self.data_in(cmd, &[OP_INQUIRY, 0, 0, hi, lo, 0], LEN as usize)?;
        parse_inquiry(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// The unit serial number (INQUIRY VPD page 0x80).
    pub fn unit_serial_number(&self) -> SgResult<String> {
        const LEN: u16 = 255;
        let [hi, lo] = LEN.to_be_bytes();
        let cmd = "INQUIRY (unit serial number page)";
        let b = self.data_in(cmd, &[OP_INQUIRY, 0x01, 0x80, hi, lo, 0], LEN as usize)?;
        parse_unit_serial(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// READ BLOCK LIMITS.
    pub fn read_block_limits(&self) -> SgResult<BlockLimits> {
        let cmd = "READ BLOCK LIMITS";
        let b = self.data_in(cmd, &[OP_READ_BLOCK_LIMITS, 0, 0, 0, 0, 0], 6)?;
        parse_block_limits(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// READ POSITION, short form (logical object identifiers).
    pub fn read_position_short(&self) -> SgResult<ShortPosition> {
        let cmd = "READ POSITION (short form)";
        let cdb = [OP_READ_POSITION, RP_SHORT, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = self.data_in(cmd, &cdb, RP_SHORT_LEN)?;
        parse_position_short(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// READ POSITION, long form (logical object and file numbers).
    pub fn read_position_long(&self) -> SgResult<LongPosition> {
        let cmd = "READ POSITION (long form)";
        let [hi, lo] = (RP_LONG_LEN as u16).to_be_bytes();
        let cdb = [OP_READ_POSITION, RP_LONG, 0, 0, 0, 0, 0, hi, lo, 0];
        let b = self.data_in(cmd, &cdb, RP_LONG_LEN)?;
        parse_position_long(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// MODE SENSE (10), current values, falling back to MODE SENSE (6) on
    /// drives without the 10-byte command. `page` 0x3F returns every page.
    pub fn mode_sense(&self, page: u8) -> SgResult<ModeData> {
        const LEN: u16 = 4096;
        let [hi, lo] = LEN.to_be_bytes();
        let cmd = format!("MODE SENSE (page {page:#04x})");
        let cdb10 = [OP_MODE_SENSE_10, 0, page & 0x3F, 0, 0, 0, 0, hi, lo, 0];
        match self.data_in(&cmd, &cdb10, LEN as usize) {
            Ok(b) => parse_mode_sense_10(&b).map_err(|d| self.malformed(&cmd, d)),
            Err(SgError::NotSupported { what, .. }) if what.contains("operation code") => {
                let cdb6 = [OP_MODE_SENSE_6, 0, page & 0x3F, 0, 255, 0];
                let b = self.data_in(&cmd, &cdb6, 255)?;
                parse_mode_sense_6(&b).map_err(|d| self.malformed(&cmd, d))
            }
            Err(e) => Err(e),
        }
    }

    /// The data compression mode page (0x0F).
    pub fn compression(&self) -> SgResult<CompressionPage> {
        let data = self.mode_sense(PAGE_DATA_COMPRESSION)?;
        let page = data
            .page(PAGE_DATA_COMPRESSION)
            .ok_or_else(|| SgError::NotSupported {
                device: self.device.to_string(),
                what: "the data compression mode page".into(),
            })?;
        parse_compression_page(page).map_err(|d| self.malformed("MODE SENSE (compression)", d))
    }

    /// The medium configuration mode page (0x1D): WORM.
    pub fn medium_configuration(&self) -> SgResult<MediumConfiguration> {
        let data = self.mode_sense(PAGE_MEDIUM_CONFIGURATION)?;
        let page = data
            .page(PAGE_MEDIUM_CONFIGURATION)
            .ok_or_else(|| SgError::NotSupported {
                device: self.device.to_string(),
                what: "the medium configuration mode page".into(),
            })?;
        parse_medium_configuration(page)
            .map_err(|d| self.malformed("MODE SENSE (medium configuration)", d))
    }

    /// LOG SENSE of `page`, cumulative values.
    pub fn log_sense(&self, page: u8) -> SgResult<LogPage> {
        const LEN: u16 = 0x8000;
        let [hi, lo] = LEN.to_be_bytes();
        let cmd = format!("LOG SENSE (page {page:#04x})");
        // PC = 01b: current cumulative values.
        let cdb = [OP_LOG_SENSE, 0, 0x40 | (page & 0x3F), 0, 0, 0, 0, hi, lo, 0];
        let b = self.data_in(&cmd, &cdb, LEN as usize)?;
        let log = parse_log_page(&b).map_err(|d| self.malformed(&cmd, d))?;
        if log.page != page & 0x3F {
            return Err(SgError::NotSupported {
                device: self.device.to_string(),
                what: format!(
                    "log page {page:#04x} (the drive returned page {:#04x})",
                    log.page
                ),
            });
        }
        Ok(log)
    }

    /// TapeAlert flags (log page 0x2E).
    pub fn tape_alert(&self) -> SgResult<TapeAlerts> {
        Ok(TapeAlerts::from_log(&self.log_sense(LOG_TAPE_ALERT)?))
    }

    /// Remaining and maximum capacity of the partitions (log page 0x31).
    pub fn tape_capacity(&self) -> SgResult<TapeCapacity> {
        Ok(TapeCapacity::from_log(&self.log_sense(LOG_TAPE_CAPACITY)?))
    }

    /// Volume statistics (log page 0x17).
    pub fn volume_statistics(&self) -> SgResult<VolumeStatistics> {
        Ok(VolumeStatistics::from_log(
            &self.log_sense(LOG_VOLUME_STATISTICS)?,
        ))
    }

    /// READ ATTRIBUTE (cartridge memory, MAM): every attribute of partition 0.
    pub fn read_attributes(&self) -> SgResult<Attributes> {
        const LEN: u32 = 0x4000;
        let l = LEN.to_be_bytes();
        let cmd = "READ ATTRIBUTE";
        // Service action 00h: attribute values, from attribute 0 on.
        let cdb = [
            OP_READ_ATTRIBUTE,
            0x00,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            l[0],
            l[1],
            l[2],
            l[3],
            0,
            0,
        ];
        let b = self.data_in(cmd, &cdb, LEN as usize)?;
        parse_attributes(&b).map_err(|d| self.malformed(cmd, d))
    }

    /// WRITE ATTRIBUTE (cartridge memory, MAM) of partition 0, written
    /// through to the medium's memory before the command completes.
    pub fn write_attributes(&self, attributes: &[Attribute]) -> SgResult<()> {
        let cmd = "WRITE ATTRIBUTE";
        let list = encode_attribute_list(attributes).map_err(|d| SgError::Malformed {
            device: self.device.to_string(),
            command: cmd.to_string(),
            detail: d,
        })?;
        let cdb = write_attribute_cdb(0, list.len() as u32);
        self.execute(cmd, &cdb, Data::Out(&list)).map(|_| ())
    }

    /// REPORT DENSITY SUPPORT; `current_medium` limits it to the loaded cartridge.
    pub fn report_density_support(&self, current_medium: bool) -> SgResult<Vec<Density>> {
        const LEN: u16 = 0x2000;
        let [hi, lo] = LEN.to_be_bytes();
        let cmd = "REPORT DENSITY SUPPORT";
        let cdb = [
            OP_REPORT_DENSITY_SUPPORT,
            current_medium as u8,
            0,
            0,
            0,
            0,
            0,
            hi,
            lo,
            0,
        ];
        let b = self.data_in(cmd, &cdb, LEN as usize)?;
        parse_density_support(&b).map_err(|d| self.malformed(cmd, d))
    }
}

// ---- response structures and parsers ----

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |v, &x| (v << 8) | x as u64)
}

/// Printable ASCII of a fixed-width field, trimmed (anything else is a space).
pub(crate) fn ascii(b: &[u8]) -> String {
    let s: String = b
        .iter()
        .map(|&c| {
            if (0x20..0x7F).contains(&c) {
                c as char
            } else {
                ' '
            }
        })
        .collect();
    s.trim().to_string()
}

/// `b` holds at least `n` bytes, or an error naming `what`.
pub(crate) fn need(b: &[u8], n: usize, what: &str) -> Result<(), String> {
    if b.len() < n {
        Err(format!("{what}: {} bytes, at least {n} expected", b.len()))
    } else {
        Ok(())
    }
}

/// Standard INQUIRY data (SPC-4 §6.6.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Inquiry {
    /// 0x01 is a sequential-access (tape) device.
    pub peripheral_type: u8,
    pub removable: bool,
    pub version: u8,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

/// Peripheral device type of tape drives.
pub const PERIPHERAL_SEQUENTIAL: u8 = 0x01;

pub fn parse_inquiry(b: &[u8]) -> Result<Inquiry, String> {
    need(b, 36, "INQUIRY data")?;
    Ok(Inquiry {
        peripheral_type: b[0] & 0x1F,
        removable: b[1] & 0x80 != 0,
        version: b[2],
        vendor: ascii(&b[8..16]),
        product: ascii(&b[16..32]),
        revision: ascii(&b[32..36]),
    })
}

pub fn parse_unit_serial(b: &[u8]) -> Result<String, String> {
    need(b, 4, "unit serial number page")?;
    if b[1] != 0x80 {
        return Err(format!("page code {:#04x} instead of 0x80", b[1]));
    }
    let len = be(&b[2..4]) as usize;
    let end = (4 + len).min(b.len());
    Ok(ascii(&b[4..end]))
}

/// READ BLOCK LIMITS data (SSC-3 §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockLimits {
    /// Block lengths must be multiples of 2^granularity.
    pub granularity: u8,
    /// Largest block in bytes; 0 means no limit is given.
    pub max: u32,
    pub min: u16,
}

pub fn parse_block_limits(b: &[u8]) -> Result<BlockLimits, String> {
    need(b, 6, "READ BLOCK LIMITS data")?;
    Ok(BlockLimits {
        granularity: b[0] & 0x1F,
        max: be(&b[1..4]) as u32,
        min: be(&b[4..6]) as u16,
    })
}

/// READ POSITION short form data (SSC-3 §7.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ShortPosition {
    pub beginning_of_partition: bool,
    pub end_of_partition: bool,
    /// Between early warning and the end of the partition.
    pub beyond_early_warning: bool,
    /// The block position is not known (the numbers below are not valid).
    pub position_unknown: bool,
    pub partition: u8,
    /// The logical object (block or filemark) at the current position,
    /// counted from the beginning of the partition.
    pub first_object: u32,
    /// The next object to be written to the medium from the drive's buffer.
    pub last_object: u32,
    /// Blocks and bytes in the drive's buffer, when reported.
    pub objects_in_buffer: Option<u32>,
    pub bytes_in_buffer: Option<u32>,
}

pub fn parse_position_short(b: &[u8]) -> Result<ShortPosition, String> {
    need(b, RP_SHORT_LEN, "READ POSITION short form data")?;
    let f = b[0];
    let counts_unknown = f & 0x10 != 0 || f & 0x20 != 0; // BYCU, LOCU
    Ok(ShortPosition {
        beginning_of_partition: f & 0x80 != 0,
        end_of_partition: f & 0x40 != 0,
        beyond_early_warning: f & 0x01 != 0,
        position_unknown: f & 0x04 != 0,
        partition: b[1],
        first_object: be(&b[4..8]) as u32,
        last_object: be(&b[8..12]) as u32,
        objects_in_buffer: (!counts_unknown).then(|| be(&b[13..16]) as u32),
        bytes_in_buffer: (!counts_unknown).then(|| be(&b[16..20]) as u32),
    })
}

/// READ POSITION long form data (SSC-3 §7.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LongPosition {
    pub beginning_of_partition: bool,
    pub end_of_partition: bool,
    pub beyond_early_warning: bool,
    /// Logical object number unknown (LONU).
    pub object_unknown: bool,
    /// Mark (file and set) position unknown (MPU).
    pub mark_unknown: bool,
    pub partition: u32,
    pub logical_object: u64,
    /// Filemarks between the beginning of the partition and here.
    pub logical_file: u64,
    pub logical_set: u64,
}

pub fn parse_position_long(b: &[u8]) -> Result<LongPosition, String> {
    need(b, RP_LONG_LEN, "READ POSITION long form data")?;
    let f = b[0];
    Ok(LongPosition {
        beginning_of_partition: f & 0x80 != 0,
        end_of_partition: f & 0x40 != 0,
        beyond_early_warning: f & 0x01 != 0,
        object_unknown: f & 0x04 != 0,
        mark_unknown: f & 0x08 != 0,
        partition: be(&b[4..8]) as u32,
        logical_object: be(&b[8..16]),
        logical_file: be(&b[16..24]),
        logical_set: be(&b[24..32]),
    })
}

/// A mode parameter block descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockDescriptor {
    pub density_code: u8,
    pub blocks: u64,
    /// 0 means variable-length blocks.
    pub block_length: u32,
}

/// A MODE SENSE response: header, block descriptors and the raw pages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModeData {
    pub medium_type: u8,
    /// WP bit of the device-specific parameter: the cartridge is write-protected.
    pub write_protected: bool,
    /// Buffered mode (0: unbuffered; 1: buffered).
    pub buffered_mode: u8,
    pub speed: u8,
    pub block_descriptors: Vec<BlockDescriptor>,
    /// Pages as returned, each starting with its page code byte.
    pub pages: Vec<Vec<u8>>,
}

impl ModeData {
    /// The page with this code (subpage 0), if returned.
    pub fn page(&self, code: u8) -> Option<&[u8]> {
        self.pages
            .iter()
            .find(|p| p[0] & 0x3F == code && p[0] & 0x40 == 0)
            .map(|p| p.as_slice())
    }
}

fn split_pages(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    while b.len() >= 2 {
        let spf = b[0] & 0x40 != 0;
        let (hdr, len) = if spf {
            if b.len() < 4 {
                break;
            }
            (4, be(&b[2..4]) as usize)
        } else {
            (2, b[1] as usize)
        };
        let end = (hdr + len).min(b.len());
        pages.push(b[..end].to_vec());
        b = &b[end..];
    }
    pages
}

fn block_descriptors(b: &[u8], long: bool) -> Vec<BlockDescriptor> {
    let size = if long { 16 } else { 8 };
    b.chunks_exact(size)
        .map(|d| {
            if long {
                BlockDescriptor {
                    density_code: d[0],
                    blocks: be(&d[0..8]) & 0x00FF_FFFF_FFFF_FFFF,
                    block_length: be(&d[12..16]) as u32,
                }
            } else {
                BlockDescriptor {
                    density_code: d[0],
                    blocks: be(&d[1..4]),
                    block_length: be(&d[5..8]) as u32,
                }
            }
        })
        .collect()
}

fn device_specific(m: u8) -> (bool, u8, u8) {
    (m & 0x80 != 0, (m >> 4) & 0x07, m & 0x0F)
}

pub fn parse_mode_sense_10(b: &[u8]) -> Result<ModeData, String> {
    need(b, 8, "MODE SENSE (10) header")?;
    let total = (be(&b[0..2]) as usize + 2).min(b.len());
    let bd_len = be(&b[6..8]) as usize;
    let long = b[4] & 0x01 != 0;
    if 8 + bd_len > total {
        return Err(format!(
            "block descriptor length {bd_len} exceeds the {total} bytes returned"
        ));
    }
    let (wp, buffered, speed) = device_specific(b[3]);
    Ok(ModeData {
        medium_type: b[2],
        write_protected: wp,
        buffered_mode: buffered,
        speed,
        block_descriptors: block_descriptors(&b[8..8 + bd_len], long),
        pages: split_pages(&b[8 + bd_len..total]),
    })
}

pub fn parse_mode_sense_6(b: &[u8]) -> Result<ModeData, String> {
    need(b, 4, "MODE SENSE (6) header")?;
    let total = (b[0] as usize + 1).min(b.len());
    let bd_len = b[3] as usize;
    if 4 + bd_len > total {
        return Err(format!(
            "block descriptor length {bd_len} exceeds the {total} bytes returned"
        ));
    }
    let (wp, buffered, speed) = device_specific(b[2]);
    Ok(ModeData {
        medium_type: b[1],
        write_protected: wp,
        buffered_mode: buffered,
        speed,
        block_descriptors: block_descriptors(&b[4..4 + bd_len], false),
        pages: split_pages(&b[4 + bd_len..total]),
    })
}

/// The data compression mode page (SSC-3 §8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompressionPage {
    /// Data compression enabled for writing (DCE).
    pub enabled: bool,
    /// The drive can compress (DCC).
    pub capable: bool,
    /// Decompression enabled for reading (DDE).
    pub decompression_enabled: bool,
    pub compression_algorithm: u32,
    pub decompression_algorithm: u32,
}

pub fn parse_compression_page(p: &[u8]) -> Result<CompressionPage, String> {
    need(p, 12, "data compression page")?;
    Ok(CompressionPage {
        enabled: p[2] & 0x80 != 0,
        capable: p[2] & 0x40 != 0,
        decompression_enabled: p[3] & 0x80 != 0,
        compression_algorithm: be(&p[4..8]) as u32,
        decompression_algorithm: be(&p[8..12]) as u32,
    })
}

/// The medium configuration mode page (SSC-3 §8.3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MediumConfiguration {
    /// WORMM: the loaded cartridge is write-once (WORM).
    pub worm: bool,
    pub worm_label_restrictions: u8,
    pub worm_filemark_restrictions: u8,
}

pub fn parse_medium_configuration(p: &[u8]) -> Result<MediumConfiguration, String> {
    need(p, 6, "medium configuration page")?;
    Ok(MediumConfiguration {
        worm: p[2] & 0x01 != 0,
        worm_label_restrictions: p[4],
        worm_filemark_restrictions: p[5],
    })
}

/// One log parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogParameter {
    pub code: u16,
    pub control: u8,
    pub value: Vec<u8>,
}

impl LogParameter {
    /// The value as a big-endian counter (up to 8 bytes).
    pub fn counter(&self) -> Option<u64> {
        (!self.value.is_empty() && self.value.len() <= 8).then(|| be(&self.value))
    }
}

/// A LOG SENSE page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogPage {
    pub page: u8,
    pub subpage: u8,
    pub parameters: Vec<LogParameter>,
}

impl LogPage {
    pub fn parameter(&self, code: u16) -> Option<&LogParameter> {
        self.parameters.iter().find(|p| p.code == code)
    }
}

pub fn parse_log_page(b: &[u8]) -> Result<LogPage, String> {
    need(b, 4, "log page header")?;
    // Some drives report the allocation length instead of the page length:
    // never read past what was returned.
    let end = (4 + be(&b[2..4]) as usize).min(b.len());
    let mut parameters = Vec::new();
    let mut at = 4;
    while at + 4 <= end {
        let len = b[at + 3] as usize;
        let v_end = at + 4 + len;
        if v_end > end {
            return Err(format!(
                "log parameter {:#06x} runs past the end of the page",
                be(&b[at..at + 2])
            ));
        }
        parameters.push(LogParameter {
            code: be(&b[at..at + 2]) as u16,
            control: b[at + 2],
            value: b[at + 4..v_end].to_vec(),
        });
        at = v_end;
    }
    Ok(LogPage {
        page: b[0] & 0x3F,
        subpage: b[1],
        parameters,
    })
}

/// TapeAlert flags that are set (log page 0x2E, parameters 1 to 64).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TapeAlerts {
    /// Flag numbers (1..=64) that are set, ascending.
    pub set: Vec<u16>,
}

impl TapeAlerts {
    pub fn from_log(page: &LogPage) -> TapeAlerts {
        let mut set: Vec<u16> = page
            .parameters
            .iter()
            .filter(|p| (1..=64).contains(&p.code))
            .filter(|p| p.value.first().is_some_and(|v| v & 0x01 != 0))
            .map(|p| p.code)
            .collect();
        set.sort_unstable();
        set.dedup();
        TapeAlerts { set }
    }

    /// Names of the flags that are set.
    pub fn describe(&self) -> Vec<String> {
        self.set
            .iter()
            .map(|&f| format!("{f}: {}", tape_alert_name(f)))
            .collect()
    }
}

/// The name of TapeAlert flag `flag` (SSC-3 Annex, TapeAlert flags).
pub fn tape_alert_name(flag: u16) -> &'static str {
    match flag {
        1 => "read warning",
        2 => "write warning",
        3 => "hard error",
        4 => "media",
        5 => "read failure",
        6 => "write failure",
        7 => "media life",
        8 => "not data grade",
        9 => "write protect",
        10 => "no removal",
        11 => "cleaning media",
        12 => "unsupported format",
        13 => "recoverable mechanical cartridge failure",
        14 => "unrecoverable mechanical cartridge failure",
        15 => "memory chip in cartridge failure",
        16 => "forced eject",
        17 => "read only format",
        18 => "tape directory corrupted on load",
        19 => "nearing media life",
        20 => "clean now",
        21 => "clean periodic",
        22 => "expired cleaning media",
        23 => "invalid cleaning tape",
        24 => "retension requested",
        25 => "dual-port interface error",
        26 => "cooling fan failure",
        27 => "power supply failure",
        28 => "power consumption",
        29 => "drive maintenance",
        30 => "hardware A",
        31 => "hardware B",
        32 => "interface",
        33 => "eject media",
        34 => "microcode update fail",
        35 => "drive humidity",
        36 => "drive temperature",
        37 => "drive voltage",
        38 => "predictive failure",
        39 => "diagnostics required",
        50 => "lost statistics",
        51 => "tape directory invalid at unload",
        52 => "tape system area write failure",
        53 => "tape system area read failure",
        54 => "no start of data",
        55 => "loading failure",
        56 => "unrecoverable unload failure",
        57 => "automation interface failure",
        58 => "microcode failure",
        59 => "WORM medium - integrity check failed",
        60 => "WORM medium - overwrite attempted",
        _ => "(no name in this tapir)",
    }
}

/// REQUEST SENSE data: `None` when there is nothing to report.
pub fn parse_request_sense(b: &[u8]) -> Result<Option<Sense>, String> {
    if b.is_empty() {
        return Ok(None);
    }
    let s = Sense::decode(b).map_err(|e| e.to_string())?;
    let nothing =
        s.key == SenseKey::NoSense && s.condition() == Condition::NoAdditionalSense && !s.deferred;
    Ok((!nothing).then_some(s))
}

/// The tape capacity log page (0x31): per partition, the remaining and the
/// maximum native capacity in MiB (1,048,576 bytes), without compression.
/// Parameters 1 and 3 are partition 0; 2 and 4 partition 1; then, on
/// drives with more partitions, two pairs per two partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TapeCapacity {
    /// (partition, remaining MiB, maximum MiB) for each partition reported.
    pub partitions: Vec<(u8, Option<u64>, Option<u64>)>,
}

impl TapeCapacity {
    pub fn from_log(page: &LogPage) -> TapeCapacity {
        let c = |code: u16| page.parameter(code).and_then(LogParameter::counter);
        // Partitions 2g and 2g+1 are in parameters 4g+1 and 4g+2
        // (remaining) and 4g+3 and 4g+4 (maximum).
        let partitions = (0u8..64)
            .filter_map(|p| {
                let first = 4 * (p as u16 / 2) + 1 + (p as u16 % 2);
                let (remaining, maximum) = (c(first), c(first + 2));
                (remaining.is_some() || maximum.is_some()).then_some((p, remaining, maximum))
            })
            .collect();
        TapeCapacity { partitions }
    }

    /// Remaining native capacity of `partition`, in MiB. A partition the
    /// drive reports with no maximum (an unpartitioned tape's partition 1)
    /// does not exist.
    pub fn remaining_mib(&self, partition: u8) -> Option<u64> {
        self.partitions
            .iter()
            .find(|(p, _, max)| *p == partition && *max != Some(0))
            .and_then(|(_, remaining, _)| *remaining)
    }
}

/// Volume statistics (log page 0x17), the parameters tapir reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VolumeStatistics {
    pub volume_mounts: Option<u64>,
    pub datasets_written: Option<u64>,
    pub recovered_write_errors: Option<u64>,
    pub unrecovered_write_errors: Option<u64>,
    pub datasets_read: Option<u64>,
    pub recovered_read_errors: Option<u64>,
    pub unrecovered_read_errors: Option<u64>,
    pub last_mount_megabytes_written: Option<u64>,
    pub last_mount_megabytes_read: Option<u64>,
    pub lifetime_megabytes_written: Option<u64>,
    pub lifetime_megabytes_read: Option<u64>,
    pub native_capacity_megabytes: Option<u64>,
    pub used_native_capacity_megabytes: Option<u64>,
    pub volume_serial: Option<String>,
    pub write_protected: Option<bool>,
    pub worm: Option<bool>,
}

impl VolumeStatistics {
    pub fn from_log(page: &LogPage) -> VolumeStatistics {
        let c = |code| page.parameter(code).and_then(LogParameter::counter);
        VolumeStatistics {
            volume_mounts: c(0x0001),
            datasets_written: c(0x0002),
            recovered_write_errors: c(0x0003),
            unrecovered_write_errors: c(0x0004),
            datasets_read: c(0x0007),
            recovered_read_errors: c(0x0008),
            unrecovered_read_errors: c(0x0009),
            last_mount_megabytes_written: c(0x000E),
            last_mount_megabytes_read: c(0x000F),
            lifetime_megabytes_written: c(0x0010),
            lifetime_megabytes_read: c(0x0011),
            native_capacity_megabytes: c(0x0016),
            used_native_capacity_megabytes: c(0x0017),
            volume_serial: page.parameter(0x0040).map(|p| ascii(&p.value)),
            write_protected: c(0x0080).map(|v| v != 0),
            worm: c(0x0081).map(|v| v != 0),
        }
    }
}

/// One cartridge-memory (MAM) attribute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attribute {
    pub id: u16,
    pub read_only: bool,
    /// 0 binary, 1 ASCII, 2 text (UTF-8), 3 reserved.
    pub format: u8,
    pub value: Vec<u8>,
}

// MAM attribute identifiers (SPC-4 §7.4.2).
pub const ATTR_REMAINING_CAPACITY: u16 = 0x0000;
pub const ATTR_MAXIMUM_CAPACITY: u16 = 0x0001;
pub const ATTR_LOAD_COUNT: u16 = 0x0003;
pub const ATTR_MEDIUM_MANUFACTURER: u16 = 0x0400;
pub const ATTR_MEDIUM_SERIAL: u16 = 0x0401;
pub const ATTR_MEDIUM_MANUFACTURE_DATE: u16 = 0x0406;
pub const ATTR_APPLICATION_VENDOR: u16 = 0x0800;
pub const ATTR_APPLICATION_NAME: u16 = 0x0801;
pub const ATTR_APPLICATION_VERSION: u16 = 0x0802;
pub const ATTR_USER_MEDIUM_TEXT_LABEL: u16 = 0x0803;
pub const ATTR_BARCODE: u16 = 0x0806;
pub const ATTR_OWNING_HOST_TEXTUAL_NAME: u16 = 0x0807;
pub const ATTR_MEDIA_POOL: u16 = 0x0808;

/// Attribute value formats (SPC-4 §7.4.1, the FORMAT field).
pub const ATTR_FORMAT_BINARY: u8 = 0x00;
pub const ATTR_FORMAT_ASCII: u8 = 0x01;
pub const ATTR_FORMAT_TEXT: u8 = 0x02;

/// A host type attribute an application writes, with the format and fixed
/// length the standard gives it (SPC-4 §7.4.2.4, table "Host type
/// attributes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAttribute {
    pub id: u16,
    pub name: &'static str,
    pub format: u8,
    pub length: usize,
}

pub const APPLICATION_VENDOR: HostAttribute = HostAttribute {
    id: ATTR_APPLICATION_VENDOR,
    name: "application vendor",
    format: ATTR_FORMAT_ASCII,
    length: 8,
};
pub const APPLICATION_NAME: HostAttribute = HostAttribute {
    id: ATTR_APPLICATION_NAME,
    name: "application name",
    format: ATTR_FORMAT_ASCII,
    length: 32,
};
pub const APPLICATION_VERSION: HostAttribute = HostAttribute {
    id: ATTR_APPLICATION_VERSION,
    name: "application version",
    format: ATTR_FORMAT_ASCII,
    length: 8,
};
pub const USER_MEDIUM_TEXT_LABEL: HostAttribute = HostAttribute {
    id: ATTR_USER_MEDIUM_TEXT_LABEL,
    name: "user medium text label",
    format: ATTR_FORMAT_TEXT,
    length: 160,
};
pub const BARCODE: HostAttribute = HostAttribute {
    id: ATTR_BARCODE,
    name: "barcode",
    format: ATTR_FORMAT_ASCII,
    length: 32,
};
pub const OWNING_HOST_TEXTUAL_NAME: HostAttribute = HostAttribute {
    id: ATTR_OWNING_HOST_TEXTUAL_NAME,
    name: "owning host textual name",
    format: ATTR_FORMAT_TEXT,
    length: 80,
};
pub const MEDIA_POOL: HostAttribute = HostAttribute {
    id: ATTR_MEDIA_POOL,
    name: "media pool",
    format: ATTR_FORMAT_TEXT,
    length: 160,
};

impl HostAttribute {
    /// The attribute holding `value`, laid out as the standard requires:
    /// ASCII left-aligned and padded with spaces (20h), TEXT padded with
    /// NULs (00h), both to the attribute's fixed length. Only printable
    /// ASCII is accepted (TEXT is then valid whatever the cartridge's text
    /// localization identifier says); a longer value is an error, never cut.
    pub fn with_text(self, value: &str) -> Result<Attribute, String> {
        if !value.bytes().all(|b| (0x20..0x7F).contains(&b)) {
            return Err(format!(
                "{} {value:?}: only printable ASCII is written to cartridge memory",
                self.name
            ));
        }
        if value.len() > self.length {
            return Err(format!(
                "{} {value:?} is longer than the attribute's {} bytes",
                self.name, self.length
            ));
        }
        let pad = if self.format == ATTR_FORMAT_ASCII {
            b' '
        } else {
            0
        };
        let mut bytes = value.as_bytes().to_vec();
        bytes.resize(self.length, pad);
        Ok(Attribute {
            id: self.id,
            read_only: false,
            format: self.format,
            value: bytes,
        })
    }
}

/// The WRITE ATTRIBUTE CDB (SPC-4 §6.38): operation code 8Dh; byte 1 bit 0
/// WTC (write through the device's cache to the medium's memory); byte 5
/// logical volume 0; byte 7 the partition; bytes 10-13 the parameter list
/// length, big-endian. The command has no service action.
pub fn write_attribute_cdb(partition: u8, parameter_list_length: u32) -> [u8; 16] {
    let l = parameter_list_length.to_be_bytes();
    [
        OP_WRITE_ATTRIBUTE,
        0x01,
        0,
        0,
        0,
        0,
        0,
        partition,
        0,
        0,
        l[0],
        l[1],
        l[2],
        l[3],
        0,
        0,
    ]
}

/// The WRITE ATTRIBUTE parameter list (SPC-4 §6.38.2): a 4-byte parameter
/// data length (the bytes that follow it), then each attribute as READ
/// ATTRIBUTE returns it: identifier (2 bytes), a byte with the format in
/// bits 1-0 (the READ ONLY bit is reserved here and sent as 0), length (2
/// bytes), value. All big-endian.
pub fn encode_attribute_list(attributes: &[Attribute]) -> Result<Vec<u8>, String> {
    let mut list = vec![0u8; 4];
    for a in attributes {
        let len = u16::try_from(a.value.len())
            .map_err(|_| format!("attribute {:#06x} is longer than 65535 bytes", a.id))?;
        list.extend_from_slice(&a.id.to_be_bytes());
        list.push(a.format & 0x03);
        list.extend_from_slice(&len.to_be_bytes());
        list.extend_from_slice(&a.value);
    }
    let data_len = (list.len() - 4) as u32;
    list[..4].copy_from_slice(&data_len.to_be_bytes());
    Ok(list)
}

/// The standard's name of an attribute, for listings.
pub fn attribute_name(id: u16) -> &'static str {
    match id {
        0x0000 => "remaining capacity in partition (MiB)",
        0x0001 => "maximum capacity in partition (MiB)",
        0x0002 => "TapeAlert flags",
        0x0003 => "load count",
        0x0004 => "MAM space remaining",
        0x0005 => "assigning organization",
        0x0006 => "format density code",
        0x0007 => "initialization count",
        0x0008 => "volume identifier",
        0x0009 => "volume change reference",
        0x020A => "device vendor/serial at last load",
        0x020B => "device vendor/serial at load -1",
        0x020C => "device vendor/serial at load -2",
        0x020D => "device vendor/serial at load -3",
        0x0220 => "total MiB written in medium life",
        0x0221 => "total MiB read in medium life",
        0x0222 => "total MiB written in current/last load",
        0x0223 => "total MiB read in current/last load",
        0x0224 => "logical position of first encrypted block",
        0x0225 => "logical position of first unencrypted block after the first encrypted block",
        0x0340 => "medium usage history",
        0x0341 => "partition usage history",
        0x0400 => "medium manufacturer",
        0x0401 => "medium serial number",
        0x0402 => "medium length (m)",
        0x0403 => "medium width (0.1 mm)",
        0x0404 => "assigning organization",
        0x0405 => "medium density code",
        0x0406 => "medium manufacture date",
        0x0407 => "MAM capacity",
        0x0408 => "medium type",
        0x0409 => "medium type information",
        0x040A => "numeric medium serial number",
        0x0800 => "application vendor",
        0x0801 => "application name",
        0x0802 => "application version",
        0x0803 => "user medium text label",
        0x0804 => "date and time last written",
        0x0805 => "text localization identifier",
        0x0806 => "barcode",
        0x0807 => "owning host textual name",
        0x0808 => "media pool",
        0x080B => "application format version",
        0x080C => "volume coherency information",
        0x0820 => "medium globally unique identifier",
        0x0821 => "media pool globally unique identifier",
        _ => "vendor or unknown attribute",
    }
}

impl Attribute {
    /// The value for people: the text of an ASCII or TEXT attribute, the
    /// number of a binary one of up to 8 bytes, hex otherwise.
    pub fn display_value(&self) -> String {
        match self.format {
            ATTR_FORMAT_ASCII | ATTR_FORMAT_TEXT => ascii(&self.value),
            _ if !self.value.is_empty() && self.value.len() <= 8 => be(&self.value).to_string(),
            _ => self.value.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// READ ATTRIBUTE values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attributes {
    pub attributes: Vec<Attribute>,
}

impl Attributes {
    pub fn get(&self, id: u16) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.id == id)
    }

    fn number(&self, id: u16) -> Option<u64> {
        self.get(id)
            .filter(|a| a.value.len() <= 8 && !a.value.is_empty())
            .map(|a| be(&a.value))
    }

    fn text(&self, id: u16) -> Option<String> {
        self.get(id)
            .map(|a| ascii(&a.value))
            .filter(|s| !s.is_empty())
    }

    /// Remaining capacity of the partition, in MiB.
    pub fn remaining_capacity_mib(&self) -> Option<u64> {
        self.number(ATTR_REMAINING_CAPACITY)
    }
    pub fn maximum_capacity_mib(&self) -> Option<u64> {
        self.number(ATTR_MAXIMUM_CAPACITY)
    }
    pub fn load_count(&self) -> Option<u64> {
        self.number(ATTR_LOAD_COUNT)
    }
    pub fn manufacturer(&self) -> Option<String> {
        self.text(ATTR_MEDIUM_MANUFACTURER)
    }
    pub fn serial(&self) -> Option<String> {
        self.text(ATTR_MEDIUM_SERIAL)
    }
    pub fn manufacture_date(&self) -> Option<String> {
        self.text(ATTR_MEDIUM_MANUFACTURE_DATE)
    }
    pub fn application_name(&self) -> Option<String> {
        self.text(ATTR_APPLICATION_NAME)
    }
    pub fn user_label(&self) -> Option<String> {
        self.text(ATTR_USER_MEDIUM_TEXT_LABEL)
    }
    pub fn barcode(&self) -> Option<String> {
        self.text(ATTR_BARCODE)
    }
    pub fn application_vendor(&self) -> Option<String> {
        self.text(ATTR_APPLICATION_VENDOR)
    }
    pub fn application_version(&self) -> Option<String> {
        self.text(ATTR_APPLICATION_VERSION)
    }
    pub fn media_pool(&self) -> Option<String> {
        self.text(ATTR_MEDIA_POOL)
    }
}

pub fn parse_attributes(b: &[u8]) -> Result<Attributes, String> {
    need(b, 4, "READ ATTRIBUTE header")?;
    // A truncated last attribute (allocation too small) is left out.
    let end = (4 + be(&b[0..4]) as usize).min(b.len());
    let mut attributes = Vec::new();
    let mut at = 4;
    while at + 5 <= end {
        let len = be(&b[at + 3..at + 5]) as usize;
        let v_end = at + 5 + len;
        if v_end > end {
            break;
        }
        attributes.push(Attribute {
            id: be(&b[at..at + 2]) as u16,
            read_only: b[at + 2] & 0x80 != 0,
            format: b[at + 2] & 0x03,
            value: b[at + 5..v_end].to_vec(),
        });
        at = v_end;
    }
    Ok(Attributes { attributes })
}

/// A density support descriptor (SSC-3 §7.7).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Density {
    pub primary_code: u8,
    pub secondary_code: u8,
    /// The drive can write this density (WRTOK).
    pub writable: bool,
    pub default: bool,
    pub bits_per_mm: u32,
    /// Media width in tenths of a millimetre.
    pub media_width: u16,
    pub tracks: u16,
    /// Capacity in megabytes (10^6 bytes).
    pub capacity_mb: u32,
    pub organization: String,
    pub name: String,
    pub description: String,
}

pub fn parse_density_support(b: &[u8]) -> Result<Vec<Density>, String> {
    need(b, 4, "REPORT DENSITY SUPPORT header")?;
    let end = (2 + be(&b[0..2]) as usize).min(b.len());
    let d = b.get(4..end).unwrap_or_default();
    Ok(d.chunks_exact(52)
        .map(|d| Density {
            primary_code: d[0],
            secondary_code: d[1],
            writable: d[2] & 0x80 != 0,
            default: d[2] & 0x20 != 0,
            bits_per_mm: be(&d[5..8]) as u32,
            media_width: be(&d[8..10]) as u16,
            tracks: be(&d[10..12]) as u16,
            capacity_mb: be(&d[12..16]) as u32,
            organization: ascii(&d[16..24]),
            name: ascii(&d[24..32]),
            description: ascii(&d[32..52]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn sg_io_hdr_layout_matches_the_kernel() {
        assert_eq!(SG_IO, 0x2285);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(size_of::<SgIoHdr>(), 88);
            assert_eq!(offset_of!(SgIoHdr, dxfer_len), 12);
            assert_eq!(offset_of!(SgIoHdr, dxferp), 16);
            assert_eq!(offset_of!(SgIoHdr, cmdp), 24);
            assert_eq!(offset_of!(SgIoHdr, sbp), 32);
            assert_eq!(offset_of!(SgIoHdr, timeout), 40);
            assert_eq!(offset_of!(SgIoHdr, pack_id), 48);
            assert_eq!(offset_of!(SgIoHdr, usr_ptr), 56);
            assert_eq!(offset_of!(SgIoHdr, status), 64);
            assert_eq!(offset_of!(SgIoHdr, sb_len_wr), 67);
            assert_eq!(offset_of!(SgIoHdr, host_status), 68);
            assert_eq!(offset_of!(SgIoHdr, driver_status), 70);
            assert_eq!(offset_of!(SgIoHdr, resid), 72);
            assert_eq!(offset_of!(SgIoHdr, duration), 76);
            assert_eq!(offset_of!(SgIoHdr, info), 80);
        }
    }

    fn inquiry_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 96];
        b[0] = 0x01;
        b[1] = 0x80;
        b[2] = 0x06;
        b[4] = 91;
        b[8..16].copy_from_slice(b"IBM     ");
        b[16..32].copy_from_slice(b"ULT3580-TD9     ");
        b[32..36].copy_from_slice(b"Q3F5");
        b
    }

    #[test]
    fn inquiry() {
        let i = parse_inquiry(&inquiry_bytes()).unwrap();
        assert_eq!(i.peripheral_type, PERIPHERAL_SEQUENTIAL);
        assert!(i.removable);
        assert_eq!(
            (i.vendor.as_str(), i.product.as_str(), i.revision.as_str()),
            ("IBM", "ULT3580-TD9", "Q3F5")
        );
        assert!(parse_inquiry(&inquiry_bytes()[..20]).is_err());
    }

    #[test]
    fn unit_serial() {
        let mut b = vec![0x01, 0x80, 0x00, 0x0A];
        b.extend_from_slice(b"1013000123");
        assert_eq!(parse_unit_serial(&b).unwrap(), "1013000123");
        // Length beyond the data: what is there.
        b[3] = 0x20;
        assert_eq!(parse_unit_serial(&b).unwrap(), "1013000123");
        b[1] = 0x83;
        assert!(parse_unit_serial(&b).is_err());
    }

    #[test]
    fn block_limits() {
        let l = parse_block_limits(&[0x00, 0x80, 0x00, 0x00, 0x00, 0x01]).unwrap();
        assert_eq!(
            l,
            BlockLimits {
                granularity: 0,
                max: 8 << 20,
                min: 1
            }
        );
        let l = parse_block_limits(&[0x02, 0x10, 0x00, 0x00, 0x02, 0x00]).unwrap();
        assert_eq!((l.granularity, l.max, l.min), (2, 1 << 20, 512));
    }

    #[test]
    fn position_short() {
        let mut b = [0u8; 20];
        b[0] = 0x80; // BOP
        b[5..8].copy_from_slice(&[0, 0, 0]);
        let p = parse_position_short(&b).unwrap();
        assert!(p.beginning_of_partition && !p.end_of_partition && !p.position_unknown);
        assert_eq!(p.first_object, 0);
        b[0] = 0x01; // BPEW
        b[1] = 1;
        b[4..8].copy_from_slice(&9981u32.to_be_bytes());
        b[8..12].copy_from_slice(&9975u32.to_be_bytes());
        b[13..16].copy_from_slice(&[0, 0, 6]);
        b[16..20].copy_from_slice(&6_291_456u32.to_be_bytes());
        let p = parse_position_short(&b).unwrap();
        assert!(p.beyond_early_warning);
        assert_eq!(
            (p.partition, p.first_object, p.last_object),
            (1, 9981, 9975)
        );
        assert_eq!(p.objects_in_buffer, Some(6));
        assert_eq!(p.bytes_in_buffer, Some(6_291_456));
        b[0] = 0x34; // LOCU, BYCU, BPU
        let p = parse_position_short(&b).unwrap();
        assert!(p.position_unknown);
        assert_eq!((p.objects_in_buffer, p.bytes_in_buffer), (None, None));
        assert!(parse_position_short(&b[..12]).is_err());
    }

    #[test]
    fn position_long() {
        let mut b = [0u8; 32];
        b[0] = 0x01;
        b[4..8].copy_from_slice(&0u32.to_be_bytes());
        b[8..16].copy_from_slice(&123_456_789u64.to_be_bytes());
        b[16..24].copy_from_slice(&42u64.to_be_bytes());
        let p = parse_position_long(&b).unwrap();
        assert!(p.beyond_early_warning && !p.mark_unknown && !p.object_unknown);
        assert_eq!(
            (p.logical_object, p.logical_file, p.logical_set),
            (123_456_789, 42, 0)
        );
        b[0] = 0x0C;
        let p = parse_position_long(&b).unwrap();
        assert!(p.mark_unknown && p.object_unknown);
    }

    fn mode10(medium_type: u8, dev: u8, bd: &[u8], pages: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[2] = medium_type;
        b[3] = dev;
        b[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        b.extend_from_slice(bd);
        for p in pages {
            b.extend_from_slice(p);
        }
        let len = (b.len() - 2) as u16;
        b[0..2].copy_from_slice(&len.to_be_bytes());
        b
    }

    fn compression_page(dce: bool) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[0] = PAGE_DATA_COMPRESSION;
        p[1] = 14;
        p[2] = 0x40 | if dce { 0x80 } else { 0 };
        p[3] = 0x80;
        p[4..8].copy_from_slice(&0xFFu32.to_be_bytes());
        p[8..12].copy_from_slice(&0xFFu32.to_be_bytes());
        p
    }

    #[test]
    fn mode_sense_10_with_descriptor_and_pages() {
        // Write-protected, buffered mode 1, one block descriptor (LTO-9
        // density 0x60, variable blocks), then the compression page and the
        // medium configuration page of a WORM cartridge.
        let bd = [0x60, 0, 0, 0, 0, 0, 0, 0];
        let mut mc = vec![0u8; 32];
        mc[0] = PAGE_MEDIUM_CONFIGURATION;
        mc[1] = 30;
        mc[2] = 0x01;
        mc[4] = 0x01;
        mc[5] = 0x02;
        let b = mode10(0x00, 0x90, &bd, &[&compression_page(true), &mc]);
        let m = parse_mode_sense_10(&b).unwrap();
        assert!(m.write_protected);
        assert_eq!(m.buffered_mode, 1);
        assert_eq!(
            m.block_descriptors,
            vec![BlockDescriptor {
                density_code: 0x60,
                blocks: 0,
                block_length: 0
            }]
        );
        let c = parse_compression_page(m.page(PAGE_DATA_COMPRESSION).unwrap()).unwrap();
        assert!(c.enabled && c.capable && c.decompression_enabled);
        assert_eq!(c.compression_algorithm, 0xFF);
        let w = parse_medium_configuration(m.page(PAGE_MEDIUM_CONFIGURATION).unwrap()).unwrap();
        assert!(w.worm);
        assert_eq!(
            (w.worm_label_restrictions, w.worm_filemark_restrictions),
            (1, 2)
        );
        assert!(m.page(0x10).is_none());
        // Not protected, compression off.
        let m = parse_mode_sense_10(&mode10(0, 0x10, &[], &[&compression_page(false)])).unwrap();
        assert!(!m.write_protected);
        assert!(
            !parse_compression_page(m.page(PAGE_DATA_COMPRESSION).unwrap())
                .unwrap()
                .enabled
        );
        // A block descriptor length larger than the data is malformed.
        let mut bad = mode10(0, 0, &bd, &[]);
        bad[7] = 40;
        assert!(parse_mode_sense_10(&bad).is_err());
    }

    #[test]
    fn mode_sense_6() {
        let mut b = vec![0u8, 0x00, 0x80, 8, 0x5A, 0, 0, 0, 0, 0, 0x04, 0x00];
        b.extend_from_slice(&compression_page(true));
        b[0] = (b.len() - 1) as u8;
        let m = parse_mode_sense_6(&b).unwrap();
        assert!(m.write_protected);
        assert_eq!(m.block_descriptors[0].density_code, 0x5A);
        assert_eq!(m.block_descriptors[0].block_length, 1024);
        assert!(m.page(PAGE_DATA_COMPRESSION).is_some());
    }

    fn log_page(page: u8, params: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![page, 0, 0, 0];
        for (code, value) in params {
            b.extend_from_slice(&code.to_be_bytes());
            b.push(0x03);
            b.push(value.len() as u8);
            b.extend_from_slice(value);
        }
        let len = (b.len() - 4) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn tape_alert_page() {
        let mut params: Vec<(u16, Vec<u8>)> = (1..=64u16).map(|c| (c, vec![0u8])).collect();
        params[2].1[0] = 1; // flag 3: hard error
        params[19].1[0] = 1; // flag 20: clean now
        let refs: Vec<(u16, &[u8])> = params.iter().map(|(c, v)| (*c, v.as_slice())).collect();
        let page = parse_log_page(&log_page(LOG_TAPE_ALERT, &refs)).unwrap();
        assert_eq!(page.page, LOG_TAPE_ALERT);
        assert_eq!(page.parameters.len(), 64);
        let alerts = TapeAlerts::from_log(&page);
        assert_eq!(alerts.set, vec![3, 20]);
        assert_eq!(alerts.describe(), vec!["3: hard error", "20: clean now"]);
    }

    #[test]
    fn volume_statistics_page() {
        let b = log_page(
            LOG_VOLUME_STATISTICS,
            &[
                (0x0000, &[1]),
                (0x0001, &[0, 0, 0, 17]),
                (0x0002, &[0, 0, 0x10, 0]),
                (0x0004, &[0, 0, 0, 0]),
                (0x0010, &[0, 0, 0, 0, 0, 0x98, 0x96, 0x80]),
                (0x0016, &[0, 0, 0x44, 0xAA, 0x20, 0x00]),
                (0x0040, b"VOL001L9 "),
                (0x0081, &[1]),
            ],
        );
        let s = VolumeStatistics::from_log(&parse_log_page(&b).unwrap());
        assert_eq!(s.volume_mounts, Some(17));
        assert_eq!(s.datasets_written, Some(4096));
        assert_eq!(s.unrecovered_write_errors, Some(0));
        assert_eq!(s.lifetime_megabytes_written, Some(10_000_000));
        assert_eq!(s.native_capacity_megabytes, Some(0x44AA_2000));
        assert_eq!(s.volume_serial.as_deref(), Some("VOL001L9"));
        assert_eq!(s.worm, Some(true));
        assert_eq!(s.write_protected, None);
        assert_eq!(s.datasets_read, None);
    }

    #[test]
    fn log_page_bounds() {
        // Page length larger than the data (some drives): no panic, parameters kept.
        let mut b = log_page(LOG_TAPE_ALERT, &[(1, &[1])]);
        b[2..4].copy_from_slice(&0x7FFFu16.to_be_bytes());
        assert_eq!(parse_log_page(&b).unwrap().parameters.len(), 1);
        // A parameter running past the page is malformed.
        let mut b = log_page(LOG_TAPE_ALERT, &[(1, &[1])]);
        b[7] = 9;
        assert!(parse_log_page(&b).is_err());
    }

    fn attribute(id: u16, format: u8, value: &[u8]) -> Vec<u8> {
        let mut a = id.to_be_bytes().to_vec();
        a.push(format);
        a.extend_from_slice(&(value.len() as u16).to_be_bytes());
        a.extend_from_slice(value);
        a
    }

    #[test]
    fn cartridge_memory() {
        let mut body = Vec::new();
        body.extend(attribute(
            ATTR_REMAINING_CAPACITY,
            0x80,
            &[0, 0, 0, 0, 0, 0x10, 0x83, 0x8D],
        ));
        body.extend(attribute(
            ATTR_MAXIMUM_CAPACITY,
            0x80,
            &[0, 0, 0, 0, 0, 0x10, 0xC8, 0xE0],
        ));
        body.extend(attribute(ATTR_LOAD_COUNT, 0x80, &[0, 0, 0, 0, 0, 0, 0, 12]));
        body.extend(attribute(ATTR_MEDIUM_MANUFACTURER, 0x81, b"FUJIFILM"));
        body.extend(attribute(
            ATTR_MEDIUM_SERIAL,
            0x81,
            b"C1234567                        ",
        ));
        body.extend(attribute(
            ATTR_BARCODE,
            0x01,
            b"VOL001L9                        ",
        ));
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend(&body);
        let a = parse_attributes(&b).unwrap();
        assert_eq!(a.remaining_capacity_mib(), Some(0x0010_838D));
        assert_eq!(a.maximum_capacity_mib(), Some(0x0010_C8E0));
        assert_eq!(a.load_count(), Some(12));
        assert_eq!(a.manufacturer().as_deref(), Some("FUJIFILM"));
        assert_eq!(a.serial().as_deref(), Some("C1234567"));
        assert_eq!(a.barcode().as_deref(), Some("VOL001L9"));
        assert!(a.get(ATTR_MEDIUM_SERIAL).unwrap().read_only);
        assert!(!a.get(ATTR_BARCODE).unwrap().read_only);
        assert_eq!(a.application_name(), None);
        // Truncated by a small allocation length: complete attributes only.
        let cut = &b[..b.len() - 10];
        assert_eq!(parse_attributes(cut).unwrap().attributes.len(), 5);
    }

    #[test]
    fn write_attribute_cdb_layout() {
        let cdb = write_attribute_cdb(1, 0x0001_0203);
        assert_eq!(
            cdb,
            [0x8D, 0x01, 0, 0, 0, 0, 0, 0x01, 0, 0, 0x00, 0x01, 0x02, 0x03, 0, 0]
        );
    }

    #[test]
    fn host_attributes_are_padded_per_format() {
        let a = APPLICATION_VENDOR.with_text("TAPIR").unwrap();
        assert_eq!(
            (a.id, a.format, a.value.as_slice()),
            (0x0800, 0x01, b"TAPIR   ".as_slice())
        );
        let a = APPLICATION_NAME.with_text("tapir").unwrap();
        assert_eq!(a.value.len(), 32);
        assert_eq!(&a.value[..6], b"tapir ");
        let a = USER_MEDIUM_TEXT_LABEL.with_text("TAP001L9").unwrap();
        assert_eq!((a.id, a.format, a.value.len()), (0x0803, 0x02, 160));
        assert_eq!(&a.value[..8], b"TAP001L9");
        assert!(a.value[8..].iter().all(|&b| b == 0));
        assert_eq!(MEDIA_POOL.with_text("p").unwrap().id, 0x0808);
        assert_eq!(BARCODE.with_text("X").unwrap().value.len(), 32);
        // Too long or not printable ASCII: refused, never cut.
        assert!(APPLICATION_VERSION.with_text("0.1.0-alpha").is_err());
        assert!(USER_MEDIUM_TEXT_LABEL.with_text("caf\u{e9}").is_err());
        assert!(USER_MEDIUM_TEXT_LABEL.with_text("a\nb").is_err());
    }

    #[test]
    fn write_attribute_parameter_list_layout() {
        let attrs = [
            APPLICATION_VENDOR.with_text("TAPIR").unwrap(),
            Attribute {
                id: 0x0805,
                read_only: true,
                format: ATTR_FORMAT_BINARY,
                value: vec![0x00],
            },
        ];
        let list = encode_attribute_list(&attrs).unwrap();
        let mut want = vec![0, 0, 0, 5 + 8 + 5 + 1];
        want.extend_from_slice(&[0x08, 0x00, 0x01, 0x00, 0x08]);
        want.extend_from_slice(b"TAPIR   ");
        // READ ONLY is reserved in WRITE ATTRIBUTE: sent as 0.
        want.extend_from_slice(&[0x08, 0x05, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(list, want);
        // What READ ATTRIBUTE would return for the same attributes decodes
        // to the same values.
        let back = parse_attributes(&list).unwrap();
        assert_eq!(back.application_vendor().as_deref(), Some("TAPIR"));
        assert_eq!(back.get(0x0805).unwrap().value, vec![0]);
        assert_eq!(encode_attribute_list(&[]).unwrap(), vec![0, 0, 0, 0]);
    }

    #[test]
    fn attribute_values_for_people() {
        let text = USER_MEDIUM_TEXT_LABEL.with_text("TAP001L9").unwrap();
        assert_eq!(text.display_value(), "TAP001L9");
        let n = Attribute {
            id: ATTR_LOAD_COUNT,
            read_only: true,
            format: ATTR_FORMAT_BINARY,
            value: vec![0, 0, 0, 0, 0, 0, 1, 2],
        };
        assert_eq!(n.display_value(), "258");
        let long = Attribute {
            value: vec![0xAB; 10],
            ..n
        };
        assert_eq!(long.display_value(), "ab".repeat(10));
        assert_eq!(attribute_name(0x0803), "user medium text label");
    }

    #[test]
    fn density_support() {
        let mut d = vec![0u8; 52];
        d[0] = 0x60;
        d[1] = 0x60;
        d[2] = 0xA0; // WRTOK, DEFLT
        d[5..8].copy_from_slice(&[0x00, 0x3F, 0x2A]);
        d[8..10].copy_from_slice(&127u16.to_be_bytes());
        d[10..12].copy_from_slice(&8960u16.to_be_bytes());
        d[12..16].copy_from_slice(&18_000_000u32.to_be_bytes());
        d[16..24].copy_from_slice(b"LTO-CVE ");
        d[24..32].copy_from_slice(b"U-932   ");
        d[32..52].copy_from_slice(b"Ultrium 9/16T       ");
        let mut b = vec![0, 0, 0, 0];
        b.extend(&d);
        let mut d2 = d.clone();
        d2[0] = 0x5E;
        d2[2] = 0x00;
        b.extend(&d2);
        let len = (b.len() - 2) as u16;
        b[0..2].copy_from_slice(&len.to_be_bytes());
        let list = parse_density_support(&b).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].primary_code, 0x60);
        assert!(list[0].writable && list[0].default);
        assert_eq!(list[0].capacity_mb, 18_000_000);
        assert_eq!(list[0].name, "U-932");
        assert_eq!(list[0].description, "Ultrium 9/16T");
        assert_eq!(list[0].tracks, 8960);
        assert!(!list[1].writable);
    }

    /// Fixed-format sense: response code, key, ASC, ASCQ.
    fn fixed_sense(code: u8, key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = code;
        b[2] = key;
        b[7] = 10;
        b[12] = asc;
        b[13] = ascq;
        b
    }

    fn check_condition(raw: &[u8]) -> SgError {
        SgError::CheckCondition {
            device: "/dev/nst0".into(),
            command: "READ POSITION (short form)".into(),
            sense: Sense::decode(raw).unwrap(),
        }
    }

    #[test]
    fn deferred_errors_and_unit_attentions_become_named_device_errors() {
        let e = DeviceError::from(check_condition(&fixed_sense(0x71, 0x03, 0x0C, 0x00)));
        match e {
            DeviceError::DeferredError { device, detail } => {
                assert_eq!(device, "/dev/nst0");
                assert_eq!(detail, "medium error: write error");
            }
            other => panic!("{other:?}"),
        }
        let e = DeviceError::from(check_condition(&fixed_sense(0x70, 0x06, 0x29, 0x02)));
        assert!(
            matches!(
                e,
                DeviceError::UnitAttention {
                    reason: crate::device::sense::UnitAttention::PowerOnOrReset,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = DeviceError::from(check_condition(&fixed_sense(0x70, 0x06, 0x28, 0x00)));
        assert!(
            matches!(
                e,
                DeviceError::UnitAttention {
                    reason: crate::device::sense::UnitAttention::MediumChanged,
                    ..
                }
            ),
            "{e:?}"
        );
        // A unit attention that keeps the position is no such error.
        let e = DeviceError::from(check_condition(&fixed_sense(0x70, 0x06, 0x2A, 0x01)));
        assert!(matches!(e, DeviceError::InvalidRequest { .. }), "{e:?}");
        // A current medium error neither.
        let e = DeviceError::from(check_condition(&fixed_sense(0x70, 0x03, 0x11, 0x00)));
        assert!(matches!(e, DeviceError::InvalidRequest { .. }), "{e:?}");
    }

    #[test]
    fn request_sense_data() {
        assert_eq!(parse_request_sense(&[]).unwrap(), None);
        // Nothing to report.
        assert_eq!(
            parse_request_sense(&fixed_sense(0x70, 0x00, 0, 0)).unwrap(),
            None
        );
        // A pending unit attention, returned as data.
        let s = parse_request_sense(&fixed_sense(0x70, 0x06, 0x29, 0x00))
            .unwrap()
            .unwrap();
        assert!(s.lost_position());
        // A deferred error.
        let s = parse_request_sense(&fixed_sense(0x71, 0x03, 0x0C, 0x00))
            .unwrap()
            .unwrap();
        assert!(s.disruption().is_some());
        // Current state some drives report (NO SENSE with early warning).
        let mut b = fixed_sense(0x70, 0x40, 0x00, 0x02);
        b[2] = 0x40;
        let s = parse_request_sense(&b).unwrap().unwrap();
        assert!(s.eom && s.disruption().is_none());
        assert!(parse_request_sense(&[0x7E, 0, 0, 0]).is_err());
    }

    #[test]
    fn tape_capacity_page() {
        // HP LTO: partition 0 only; parameters 2 and 4 are zero.
        let b = log_page(
            LOG_TAPE_CAPACITY,
            &[
                (0x0001, &1_000_000u32.to_be_bytes()),
                (0x0002, &0u32.to_be_bytes()),
                (0x0003, &17_166_336u32.to_be_bytes()),
                (0x0004, &0u32.to_be_bytes()),
            ],
        );
        let c = TapeCapacity::from_log(&parse_log_page(&b).unwrap());
        assert_eq!(c.remaining_mib(0), Some(1_000_000));
        assert_eq!(c.remaining_mib(1), None, "no partition 1");
        assert_eq!(c.partitions[0], (0, Some(1_000_000), Some(17_166_336)));
        // Four partitions (T10000 numbering: 5 to 8 are partitions 2 and 3).
        let b = log_page(
            LOG_TAPE_CAPACITY,
            &[
                (0x0001, &100u32.to_be_bytes()),
                (0x0002, &200u32.to_be_bytes()),
                (0x0003, &1000u32.to_be_bytes()),
                (0x0004, &2000u32.to_be_bytes()),
                (0x0005, &300u32.to_be_bytes()),
                (0x0006, &400u32.to_be_bytes()),
                (0x0007, &3000u32.to_be_bytes()),
                (0x0008, &4000u32.to_be_bytes()),
            ],
        );
        let c = TapeCapacity::from_log(&parse_log_page(&b).unwrap());
        assert_eq!(
            (0..5).map(|p| c.remaining_mib(p)).collect::<Vec<_>>(),
            vec![Some(100), Some(200), Some(300), Some(400), None]
        );
        assert_eq!(c.partitions[3], (3, Some(400), Some(4000)));
        // An empty page: nothing known.
        let c = TapeCapacity::from_log(&parse_log_page(&log_page(LOG_TAPE_CAPACITY, &[])).unwrap());
        assert_eq!(c.remaining_mib(0), None);
    }

    #[test]
    fn not_supported_maps_to_unsupported_device_error() {
        let e = SgError::NotSupported {
            device: "/dev/nst0".into(),
            what: "LOG SENSE (page 0x2e)".into(),
        };
        assert!(e.is_not_supported());
        assert!(matches!(
            DeviceError::from(e),
            DeviceError::Unsupported { .. }
        ));
        let mut raw = [0u8; 18];
        raw[0] = 0x70;
        raw[2] = 0x02;
        raw[7] = 10;
        raw[12] = 0x3A;
        let e = SgError::CheckCondition {
            device: "/dev/nst0".into(),
            command: "TEST UNIT READY".into(),
            sense: Sense::decode(&raw).unwrap(),
        };
        assert!(matches!(DeviceError::from(e), DeviceError::NoMedium { .. }));
    }
}
