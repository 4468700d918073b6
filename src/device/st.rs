//! `StDrive`: a tape drive through the Linux SCSI tape driver (st), on a
//! non-rewinding device node (`/dev/nstN`), in variable-block mode.
//!
//! The driver's behaviour (Documentation/scsi/st.rst and what drivers/scsi/st.c
//! does) and how this module turns it into the [`TapeDrive`] semantics:
//!
//! - Each `read()`/`write()` is one tape block (`MTSETBLK 0` at open).
//! - `read()` returning 0 is a filemark, or end of data when it is reached
//!   right after a filemark; MTIOCGET's `GMT_EOD` tells which. End of data
//!   anywhere else (a blank tape, or after data with no filemark) fails the
//!   read with EIO and leaves no trace in the driver's state, as a medium
//!   error does: the two are told apart by whether the position moved
//!   (MTIOCPOS) and by spacing one block forward, which at end of data fails
//!   with BLANK CHECK and sets `GMT_EOD`.
//! - A block larger than the read buffer fails with ENOMEM and the tape has
//!   moved past it ([`DeviceError::BlockTooLarge`]).
//! - Early warning: in variable-block mode the write that crosses it returns
//!   its full count (the driver then reports `GMT_EOT`), the next write fails
//!   with ENOSPC *without being written*, the one after that is written, and
//!   so on until the physical end. Some devices (the kernel's scsi_debug) make
//!   the crossing write itself fail with ENOSPC although it was written. So
//!   after any ENOSPC this module asks the drive where it is (MTIOCPOS, or
//!   the driver's block counter where READ POSITION is missing) and retries a
//!   write that did not happen once; a second refusal is the physical end
//!   ([`DeviceError::EndOfMedium`]). No block is silently lost.
//! - The driver writes a filemark on close, rewind and backward file spacing
//!   when the last operation was a write, as the virtual tape does.
//!
//! Drives without READ POSITION (tgt's tape emulation, some old drives) get
//! extra care, because the one such device tested misreports end of data:
//! it answers BLANK CHECK *with the EOM bit* and no residue, which st takes
//! for early warning and turns into a "block" of stale buffer bytes. On
//! these drives a read that returns exactly the largest block is checked
//! (MTIOCGET, then a second, shorter read), a known end of data is answered
//! without reading, forward file spacing goes one filemark at a time, a
//! failed single-filemark space is end of data, and MTEOM is replaced by
//! spacing file by file. Model-specific misbehaviour found by INQUIRY is in
//! [`Quirks`].
//!
//! The driver's own file/block counters become unknown (-1) after some
//! operations (spacing into end of data, MTEOM into an unterminated file,
//! read errors, any LOCATE but to 0, a reset) and miss blocks in the
//! scsi_debug early-warning case, so this module keeps its own position,
//! taken from the driver after absolute operations and advanced by its own
//! reads, writes and spacing. When the block within a file is unknown it is
//! recovered on demand from READ POSITION and the file's start, or by going
//! to the start of the file and spacing forward (see [`StDrive::position`]).
//!
//! ## Locating
//!
//! A logical object number (READ POSITION, LOCATE) counts blocks and
//! filemarks from the beginning of the partition; (file, block) is not one.
//! This module keeps a table of where tape files start: the logical object
//! read at every point known to be the start of a file (after crossing a
//! filemark by reading or spacing, after writing filemarks, at end of data),
//! tape file 0 at 0. A write truncates the tape, so entries past it are
//! dropped; load, unload and a reset drop them all. On a drive with READ
//! POSITION and LOCATE, `locate(file, block)`:
//!
//! 1. takes the file's start from the table, or finds it by spacing over
//!    filemarks (MTFSF) from the nearest file before it whose start is known
//!    (LOCATE there first) or from the current position, then READ POSITION;
//! 2. for a block past 0, checks that the file has it: up to the filemark
//!    that ends it (the next file's start, from the table or found by
//!    spacing one filemark) or to end of data in an unterminated last file;
//! 3. LOCATEs (MTSEEK) to start + block and checks the result with READ
//!    POSITION. Drives disagree by one on LOCATE to a filemark (some stop
//!    after it): one object off is corrected by spacing one block, which
//!    stops at a filemark on the side it comes from; further off, LOCATE
//!    again once, then fail.
//!
//! With the table filled (reading a cartridge's label file by file fills
//! it) that is one LOCATE and one READ POSITION. After MTSEEK the driver no
//! longer counts files: this module spaces over several filemarks one at a
//! time, and rewinds before MTEOM (the driver counts the files MTEOM passes
//! only from a known file number). Drives without READ POSITION or LOCATE
//! (tgt's emulation answers both with EIO), and logical objects beyond
//! MTSEEK's signed 32-bit count, are positioned by spacing: over filemarks
//! from where the tape is (rewinding first when that is unknown), then over
//! blocks.
//!
//! ## Resets, medium changes and deferred errors
//!
//! The st driver turns every failed command into EIO and keeps the sense
//! data to itself; MTIOCGET's `mt_erreg` carries only a count of recovered
//! errors. What it does say: after a power-on or reset unit attention (29h)
//! it refuses reads, writes, relative spacing and even SG_IO with EIO until
//! the tape is positioned absolutely (rewind, LOCATE, MTEOM, load), and
//! recent kernels (7.3 in the test VM) say so in sysfs
//! (`position_lost_in_reset`). A reset can also make a command *succeed*
//! from wherever the reset left the tape (the unit attention went to
//! another command, or st notices it only from the SCSI layer's counters,
//! or it lets an asynchronous write fail behind MTIOCGET), so the attribute
//! is read again (one pread on a descriptor kept open) after every read,
//! write and MTIOCTOP. Any of these is [`DeviceError::UnitAttention`]; the
//! position and the table of file starts are forgotten, and `locate`,
//! `rewind` or `seek_end_of_data` re-establish the position. Opening a
//! drive whose position was lost in a reset rewinds it.
//!
//! After any other EIO this module asks the drive (REQUEST SENSE) for a unit
//! attention or deferred error it still holds, and after a failed write it
//! compares the drive's position with what the drive had accepted: short of
//! it, blocks that write() (or an immediate filemark) had accepted did not
//! reach the medium, which is [`DeviceError::DeferredError`]. A medium
//! change (28h) or deferred error (sense 71h/73h) that came with the failed
//! command itself cannot be seen through st; SCSI commands this module
//! sends itself (SG_IO) name them from their sense data, and one sent by a
//! method that returns no error (`room_before_early_warning`) keeps the
//! condition for the next operation to report.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::sense::UnitAttention;
use super::sg::{Attributes, BlockLimits, Scsi, SgError, TapeCapacity};
use super::{
    BlockRead, BlockWrite, DeviceError, DeviceResult, DriveStatus, ReadOutcome, TapeDrive,
    TapePosition, WriteOutcome,
};

// ---- Kernel ABI: include/uapi/linux/mtio.h ----

/// `struct mtop`: the argument of MTIOCTOP.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtOp {
    pub mt_op: libc::c_short,
    pub mt_count: libc::c_int,
}

/// `struct mtget`: the result of MTIOCGET.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtGet {
    pub mt_type: libc::c_long,
    pub mt_resid: libc::c_long,
    pub mt_dsreg: libc::c_long,
    pub mt_gstat: libc::c_long,
    pub mt_erreg: libc::c_long,
    /// `__kernel_daddr_t`: an int. -1 when unknown.
    pub mt_fileno: libc::c_int,
    pub mt_blkno: libc::c_int,
}

/// `struct mtpos`: the result of MTIOCPOS.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtPos {
    pub mt_blkno: libc::c_long,
}

/// `_IOW('m', 1, struct mtop)`.
pub const MTIOCTOP: u32 = 0x4008_6d01;
/// `_IOR('m', 2, struct mtget)`.
pub const MTIOCGET: u32 = 0x8030_6d02;
/// `_IOR('m', 3, struct mtpos)`.
pub const MTIOCPOS: u32 = 0x8008_6d03;

nix::ioctl_write_ptr_bad!(mtioctop, MTIOCTOP, MtOp);
nix::ioctl_read_bad!(mtiocget, MTIOCGET, MtGet);
nix::ioctl_read_bad!(mtiocpos, MTIOCPOS, MtPos);

/// `mt_op` codes tapir issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum MtOpCode {
    /// Forward space over filemarks.
    Fsf = 1,
    /// Backward space over filemarks (stops on the BOT side).
    Bsf = 2,
    /// Forward space over records (blocks).
    Fsr = 3,
    /// Backward space over records.
    Bsr = 4,
    /// Write filemarks (synchronous); a count of 0 flushes the drive buffer.
    Weof = 5,
    Rewind = 6,
    /// Rewind and put the drive offline (eject).
    Offline = 7,
    /// Go to end of recorded data.
    Eom = 12,
    Erase = 13,
    SetBlockSize = 20,
    /// Locate a logical block (SCSI LOCATE).
    Seek = 22,
    Lock = 28,
    Unlock = 29,
    Load = 30,
    Unload = 31,
    Compression = 32,
    /// Write filemarks without waiting for the buffer to reach the medium.
    WeofImmediate = 35,
}

// mt_gstat bits.
pub const GMT_EOF: u64 = 0x8000_0000;
pub const GMT_BOT: u64 = 0x4000_0000;
pub const GMT_EOT: u64 = 0x2000_0000;
pub const GMT_SM: u64 = 0x1000_0000;
pub const GMT_EOD: u64 = 0x0800_0000;
pub const GMT_WR_PROT: u64 = 0x0400_0000;
pub const GMT_ONLINE: u64 = 0x0100_0000;
pub const GMT_DR_OPEN: u64 = 0x0004_0000;
pub const GMT_IM_REP_EN: u64 = 0x0001_0000;
pub const GMT_CLN: u64 = 0x0000_8000;

/// Largest count SPACE takes (a 24-bit signed field).
const SPACE_MAX: i32 = 0x7F_FFFF;
/// MODE SENSE page code for "all pages" (the header carries the WP bit).
const MODE_PAGE_ALL: u8 = 0x3F;
/// Block size assumed when the drive's limits cannot be read.
const DEFAULT_MAX_BLOCK: usize = 1 << 20;
/// `TapePosition::logical` when the drive cannot report it (no READ POSITION).
pub const LOGICAL_UNKNOWN: u64 = u64::MAX;
/// LOCATE attempts before giving up on a drive that lands elsewhere.
const LOCATE_ATTEMPTS: usize = 2;
/// The st driver's sysfs attribute (recent kernels) that says reads,
/// writes and relative spacing are refused because the drive was reset.
const SYSFS_POSITION_LOST: &str = "position_lost_in_reset";
const MIB: u64 = 1 << 20;

/// What MTIOCGET says, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StStatus {
    pub gstat: u64,
    /// File number, when the driver knows it.
    pub file: Option<u32>,
    /// Block within the file, when the driver knows it.
    pub block: Option<u64>,
    /// Current block size (0: variable).
    pub block_size: u32,
    pub density: u8,
    /// MTIOCGET's mt_type (drive type code).
    pub drive_type: libc::c_long,
    /// The current partition (st reports it in mt_resid).
    pub partition: u8,
}

impl StStatus {
    pub fn decode(g: &MtGet) -> StStatus {
        let dsreg = g.mt_dsreg as u64;
        StStatus {
            gstat: g.mt_gstat as u64 & 0xFFFF_FFFF,
            file: u32::try_from(g.mt_fileno).ok(),
            block: u64::try_from(g.mt_blkno).ok(),
            block_size: (dsreg & 0x00FF_FFFF) as u32,
            density: ((dsreg >> 24) & 0xFF) as u8,
            drive_type: g.mt_type,
            partition: u8::try_from(g.mt_resid).unwrap_or(0),
        }
    }

    fn has(&self, bit: u64) -> bool {
        self.gstat & bit != 0
    }
    pub fn at_filemark(&self) -> bool {
        self.has(GMT_EOF)
    }
    pub fn at_bot(&self) -> bool {
        self.has(GMT_BOT)
    }
    /// Early warning (logical end of medium) reached.
    pub fn at_eot(&self) -> bool {
        self.has(GMT_EOT)
    }
    /// End of recorded data. Also set for a moment during the early-warning
    /// ENOSPC alternation (right after a refused write).
    pub fn at_eod(&self) -> bool {
        self.has(GMT_EOD)
    }
    pub fn write_protected(&self) -> bool {
        self.has(GMT_WR_PROT)
    }
    pub fn online(&self) -> bool {
        self.has(GMT_ONLINE)
    }
    /// No cartridge in the drive.
    pub fn door_open(&self) -> bool {
        self.has(GMT_DR_OPEN)
    }
    pub fn cleaning_requested(&self) -> bool {
        self.has(GMT_CLN)
    }
}

/// Where this module believes the tape is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Pos {
    file: Option<u32>,
    block: Option<u64>,
    /// Logical object number from BOT (blocks and filemarks).
    lba: Option<u64>,
}

impl Pos {
    fn bot() -> Pos {
        Pos {
            file: Some(0),
            block: Some(0),
            lba: Some(0),
        }
    }
    /// After one more block.
    fn next_block(self) -> Pos {
        Pos {
            file: self.file,
            block: self.block.map(|b| b + 1),
            lba: self.lba.map(|l| l + 1),
        }
    }
    /// After `n` filemarks (written or crossed forward).
    fn next_files(self, n: u32) -> Pos {
        Pos {
            file: self.file.map(|f| f + n),
            block: Some(0),
            lba: self.lba.map(|l| l + n as u64),
        }
    }
}

/// A Linux st tape drive opened on its non-rewinding node.
pub struct StDrive {
    file: File,
    name: String,
    path: PathBuf,
    /// Opened read-only because the cartridge is write-protected.
    read_only: bool,
    /// The drive refused a write as write-protected since the open.
    write_protect_seen: bool,
    limits: Option<BlockLimits>,
    max_block: usize,
    min_block: usize,
    pos: Pos,
    /// Whether MTIOCPOS (READ POSITION) works; `None` until tried.
    lba_support: Option<bool>,
    /// The last operation was a data write (the driver writes a filemark
    /// before rewind, backward file spacing and close).
    writing: bool,
    /// Early warning seen since the last positioning.
    early_warning: bool,
    /// The position is known to be the end of recorded data (after a write,
    /// MTEOM, or a read or space that ran into it).
    eod: bool,
    /// MTIOCGET taken after the last operation, if nothing happened since.
    last_status: Option<StStatus>,
    /// Known misbehaviour of this drive model.
    quirks: Quirks,
    /// Where each tape file starts (the logical object after its filemark),
    /// as seen while reading, writing and spacing on this drive. Tape file 0
    /// starts at 0. Entries past a write are dropped (the write truncated
    /// the tape there); all are dropped when the cartridge or the drive's
    /// state may have changed. [`TapeDrive::locate`] turns (file, block)
    /// into a logical object with it.
    file_starts: BTreeMap<u32, u64>,
    /// Whether MTSEEK (SCSI LOCATE) works; `None` until tried.
    locate_support: Option<bool>,
    /// The st driver's `position_lost_in_reset` attribute of this node,
    /// kept open: re-read at offset 0 after every operation (one pread).
    lost_in_reset: Option<File>,
    /// A deferred error or unit attention that a SCSI command of a method
    /// that returns no error met (room_before_early_warning): the next
    /// operation reports it.
    pending: Option<DeviceError>,
    /// Where LOCATEs landed, for `tapir drive qualify`.
    landings: super::PositioningReport,
}

/// What to do after a LOCATE to `target` ended at `actual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocateCorrection {
    Done,
    /// One object too far (the drive went past a filemark it was sent to,
    /// as some drives do): space back one.
    BackOne,
    /// One object short: space forward one.
    ForwardOne,
    /// Anywhere else: LOCATE again.
    Again,
}

fn locate_correction(target: u64, actual: u64) -> LocateCorrection {
    match actual.cmp(&target) {
        std::cmp::Ordering::Equal => LocateCorrection::Done,
        std::cmp::Ordering::Greater if actual - target == 1 => LocateCorrection::BackOne,
        std::cmp::Ordering::Less if target - actual == 1 => LocateCorrection::ForwardOne,
        _ => LocateCorrection::Again,
    }
}

/// Why positioning by LOCATE did not work.
enum LocateFailure {
    /// The drive cannot LOCATE (or not that far through MTSEEK): space.
    Unsupported,
    Device(DeviceError),
}

impl From<DeviceError> for LocateFailure {
    fn from(e: DeviceError) -> Self {
        LocateFailure::Device(e)
    }
}

/// Where a tape file ends, as a logical object.
enum FileEnd {
    /// The next tape file starts at this object (the filemark is just before).
    NextFileAt(u64),
    /// End of data is at this object, with no filemark before it.
    EndOfDataAt(u64),
}

/// Bytes that fit before early warning, from what the drive reports: the
/// tape capacity log page's remaining capacity of `partition`, else the
/// cartridge memory's remaining capacity (partition 0 only). Both are the
/// drive's native (uncompressed) estimate in MiB.
fn room_from(
    capacity: Option<&TapeCapacity>,
    mam: Option<&Attributes>,
    partition: u8,
) -> Option<u64> {
    let mib = capacity
        .and_then(|c| c.remaining_mib(partition))
        .or_else(|| {
            mam.filter(|_| partition == 0)
                .and_then(Attributes::remaining_capacity_mib)
        })?;
    mib.checked_mul(MIB)
}

/// Misbehaviour of particular drive models, worked around here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Backward filemark spacing stops one block too far back, before the
    /// last block of the file instead of just before the filemark, and
    /// counts a filemark right ahead of the position as one crossed (tgt's
    /// tape emulation).
    pub bsf_one_block_early: bool,
}

impl Quirks {
    /// The quirks of a drive, from its INQUIRY vendor and product.
    pub fn for_drive(vendor: &str, product: &str) -> Quirks {
        let tgt = vendor == "IET" && product.starts_with("VIRTUAL-TAPE");
        Quirks {
            bsf_one_block_early: tgt,
        }
    }
}

impl std::fmt::Debug for StDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StDrive")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error()
        .map(Errno::from_raw)
        .unwrap_or(Errno::UnknownErrno)
}

impl StDrive {
    /// The ioctl count for spacing over `count` filemarks or blocks.
    fn space_count(&self, count: i64, what: &str) -> DeviceResult<i32> {
        i32::try_from(count.unsigned_abs())
            .ok()
            .filter(|&n| n <= SPACE_MAX)
            .ok_or_else(|| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("cannot space over {count} {what} at once"),
            })
    }

    /// Open the drive at `path` (named `name` in messages) with a cartridge
    /// loaded; no cartridge is [`DeviceError::NoMedium`].
    pub fn open(path: impl AsRef<Path>, name: &str) -> DeviceResult<StDrive> {
        let drive = Self::open_drive_only(path, name)?;
        if !drive.has_medium()? {
            return Err(DeviceError::NoMedium {
                device: drive.name.clone(),
            });
        }
        Ok(drive)
    }

    /// Open the drive, waiting up to `timeout` for it to become ready: a
    /// cartridge being loaded, or a new LTO cartridge's first-load
    /// calibration (40 minutes to 2 hours). `on_wait` is told, about once a
    /// minute and at the start, what the drive is doing. An empty drive is
    /// [`DeviceError::NoMedium`] at once; still not ready at the deadline is
    /// an error that says what the drive reported.
    pub fn open_when_ready(
        path: impl AsRef<Path>,
        name: &str,
        timeout: std::time::Duration,
        on_wait: &mut dyn FnMut(&str),
    ) -> DeviceResult<StDrive> {
        use super::sense::{Condition, SenseKey};
        use super::sg::SgError;
        let path = path.as_ref();
        let start = std::time::Instant::now();
        let mut last_report: Option<std::time::Instant> = None;
        loop {
            // The driver decides readiness when the node is opened.
            let drive = Self::open_drive_only(path, name)?;
            let st = drive.st_status()?;
            if st.online() && !st.door_open() {
                return Ok(drive);
            }
            let state = match drive.scsi().test_unit_ready() {
                Ok(()) => "ready".to_string(),
                Err(SgError::CheckCondition { sense, .. }) => {
                    if sense.condition() == Condition::MediumNotPresent {
                        return Err(DeviceError::NoMedium {
                            device: name.to_string(),
                        });
                    }
                    if sense.key == SenseKey::NotReady
                        && sense.condition() == Condition::InitializingCommandRequired
                    {
                        return Err(DeviceError::InvalidRequest {
                            device: name.to_string(),
                            detail: "the cartridge is not loaded into the drive                                      (it needs a load command: tapir drive load)"
                                .into(),
                        });
                    }
                    sense.condition().describe()
                }
                Err(e) => e.to_string(),
            };
            if st.door_open() && state != "ready" {
                return Err(DeviceError::NoMedium {
                    device: name.to_string(),
                });
            }
            drop(drive);
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(DeviceError::InvalidRequest {
                    device: name.to_string(),
                    detail: format!(
                        "the drive is still not ready after {} s: {state}",
                        waited.as_secs()
                    ),
                });
            }
            if last_report.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                on_wait(&format!(
                    "waiting for {name} to become ready ({state}; {} s so far, giving up after {} s)",
                    waited.as_secs(),
                    timeout.as_secs()
                ));
                last_report = Some(std::time::Instant::now());
            }
            std::thread::sleep(std::time::Duration::from_secs(2).min(timeout - waited));
        }
    }

    /// Open the drive whether or not a cartridge is loaded (for load,
    /// unload and status).
    pub fn open_drive_only(path: impl AsRef<Path>, name: &str) -> DeviceResult<StDrive> {
        let path = path.as_ref();
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
        };
        let (file, read_only) = match open(true) {
            Ok(f) => (f, false),
            // st refuses a read-write open of a write-protected cartridge.
            Err(e) if errno_of(&e) == Errno::EROFS => match open(false) {
                Ok(f) => (f, true),
                Err(e) => return Err(Self::open_error(name, e)),
            },
            Err(e) => return Err(Self::open_error(name, e)),
        };
        // O_NONBLOCK only keeps an empty drive from failing the open.
        let flags = fcntl(&file, FcntlArg::F_GETFL)
            .map_err(|e| DeviceError::io(name, "reading the file status flags", e.into()))?;
        let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
        fcntl(&file, FcntlArg::F_SETFL(flags))
            .map_err(|e| DeviceError::io(name, "clearing O_NONBLOCK", e.into()))?;
        let mut drive = StDrive {
            file,
            name: name.to_string(),
            path: path.to_path_buf(),
            read_only,
            write_protect_seen: false,
            limits: None,
            max_block: DEFAULT_MAX_BLOCK,
            min_block: 1,
            pos: Pos::default(),
            lba_support: None,
            writing: false,
            early_warning: false,
            eod: false,
            last_status: None,
            quirks: Quirks::default(),
            file_starts: BTreeMap::new(),
            locate_support: None,
            lost_in_reset: None,
            pending: None,
            landings: Default::default(),
        };
        drive.lost_in_reset =
            sysfs_dir(&drive.file).and_then(|d| File::open(d.join(SYSFS_POSITION_LOST)).ok());
        let st = drive.st_status()?;
        if !st.door_open() && st.online() {
            drive.prepare()?;
        }
        Ok(drive)
    }

    fn open_error(name: &str, e: io::Error) -> DeviceError {
        let errno = errno_of(&e);
        let context = match errno {
            Errno::ENOMEDIUM => {
                return DeviceError::NoMedium {
                    device: name.to_string(),
                }
            }
            Errno::EBUSY => "opening the drive (it is in use by another process)",
            Errno::ENOENT | Errno::ENXIO | Errno::ENODEV => {
                "opening the drive (no such tape drive; `tapir drives` lists them)"
            }
            Errno::EACCES | Errno::EPERM => {
                "opening the drive (permission denied; tape devices usually need the `tape` group)"
            }
            _ => "opening the drive",
        };
        DeviceError::io(name, context, e)
    }

    /// Variable-block mode, block limits and the starting position.
    fn prepare(&mut self) -> DeviceResult<()> {
        if self.position_lost_in_reset() == Some(true) {
            // The driver refuses everything but absolute positioning until
            // the tape is positioned; nothing is known about the position
            // at open anyway.
            tracing::warn!(device = %self.name, "the drive was reset since it was last used and lost its position; rewinding");
            self.mt(MtOpCode::Rewind, 1)
                .map_err(|e| self.errno_error(e, "rewinding after a reset"))?;
        }
        self.mt(MtOpCode::SetBlockSize, 0)
            .map_err(|e| self.errno_error(e, "setting variable-block mode (MTSETBLK 0)"))?;
        if let Ok(limits) = self.scsi().read_block_limits() {
            if limits.max > 0 {
                self.max_block = limits.max as usize;
            }
            self.min_block = (limits.min as usize).max(1);
            self.limits = Some(limits);
        }
        if let Ok(inq) = self.scsi().inquiry() {
            self.quirks = Quirks::for_drive(&inq.vendor, &inq.product);
            if self.quirks != Quirks::default() {
                tracing::debug!(device = %self.name, vendor = %inq.vendor, product = %inq.product, quirks = ?self.quirks, "working around known misbehaviour");
            }
        }
        let st = self.st_status()?;
        self.pos = Pos {
            file: st.file,
            block: st.file.and(st.block),
            lba: None,
        };
        // Whether the drive has READ POSITION decides how end of data is found.
        self.pos.lba = self.read_lba();
        Ok(())
    }

    /// The drive cannot report its position (no READ POSITION; tgt's tape
    /// emulation is one). Such drives are also the ones seen to misreport
    /// end of data, so this module double-checks it there: see
    /// [`Self::confirm_phantom`] and [`TapeDrive::seek_end_of_data`].
    fn no_read_position(&self) -> bool {
        self.lba_support == Some(false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Known misbehaviour of this drive that is being worked around.
    pub fn quirks(&self) -> Quirks {
        self.quirks
    }

    /// The drive's block limits (READ BLOCK LIMITS), when it could be asked.
    pub fn block_limits(&self) -> Option<BlockLimits> {
        self.limits
    }

    /// Smallest block the drive accepts.
    pub fn min_block_size(&self) -> usize {
        self.min_block
    }

    /// Opened read-only because the cartridge is write-protected.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The cartridge is known to be write-protected (opened read-only, or a
    /// write was refused as protected).
    pub fn is_write_protected(&self) -> bool {
        self.read_only || self.write_protect_seen
    }

    /// SCSI commands on this drive's descriptor.
    pub fn scsi(&self) -> Scsi<'_> {
        Scsi::new(self.file.as_fd(), &self.name)
    }

    /// A cartridge is loaded (the driver is online and the door is not open).
    pub fn has_medium(&self) -> DeviceResult<bool> {
        let st = self.st_status()?;
        Ok(st.online() && !st.door_open())
    }

    // ---- raw ioctls ----

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// One MTIOCTOP.
    fn mt(&mut self, op: MtOpCode, count: i32) -> Result<(), Errno> {
        self.last_status = None;
        self.eod = false;
        let arg = MtOp {
            mt_op: op as libc::c_short,
            mt_count: count,
        };
        loop {
            // SAFETY: the fd is open for the duration of the call and `arg`
            // is a valid `struct mtop` that MTIOCTOP only reads.
            match unsafe { mtioctop(self.fd().as_raw_fd(), &arg) } {
                Err(Errno::EINTR) => continue,
                // Done, but from a position a reset made up: as the driver
                // will answer from now on.
                Ok(_) if self.reset_noticed() => return Err(Errno::EIO),
                r => return r.map(|_| ()),
            }
        }
    }

    /// MTIOCGET, decoded.
    pub fn st_status(&self) -> DeviceResult<StStatus> {
        let mut g = MtGet::default();
        // SAFETY: the fd is open for the duration of the call and `g` is a
        // valid, writable `struct mtget`, which MTIOCGET fills.
        let r = unsafe { mtiocget(self.fd().as_raw_fd(), &mut g) };
        match r {
            Ok(_) => Ok(StStatus::decode(&g)),
            Err(e) => Err(DeviceError::io(
                &self.name,
                "reading the drive status (MTIOCGET)",
                e.into(),
            )),
        }
    }

    fn status_now(&mut self) -> DeviceResult<StStatus> {
        let st = self.st_status()?;
        self.last_status = Some(st);
        Ok(st)
    }

    /// MTIOCPOS: the drive's logical block (READ POSITION), without caching.
    pub fn tell(&self) -> Result<u64, Errno> {
        let mut p = MtPos::default();
        // SAFETY: the fd is open for the duration of the call and `p` is a
        // valid, writable `struct mtpos`, which MTIOCPOS fills.
        unsafe { mtiocpos(self.fd().as_raw_fd(), &mut p) }?;
        u64::try_from(p.mt_blkno).map_err(|_| Errno::EIO)
    }

    /// The logical block, if the drive reports it.
    fn read_lba(&mut self) -> Option<u64> {
        if self.lba_support == Some(false) {
            return None;
        }
        match self.tell() {
            Ok(v) => {
                self.lba_support = Some(true);
                Some(v)
            }
            Err(_) => {
                if self.lba_support.is_none() && self.position_lost_in_reset() != Some(true) {
                    tracing::debug!(device = %self.name, "MTIOCPOS fails: the drive has no READ POSITION");
                    self.lba_support = Some(false);
                }
                None
            }
        }
    }

    // ---- errors ----

    fn at(&self) -> (u32, u64) {
        (self.pos.file.unwrap_or(0), self.pos.block.unwrap_or(0))
    }

    fn medium_error(&self, at: Pos, detail: impl Into<String>) -> DeviceError {
        DeviceError::MediumError {
            device: self.name.clone(),
            file: at.file.unwrap_or(0),
            block: at.block.unwrap_or(0),
            detail: detail.into(),
        }
    }

    fn end_of_data(&self) -> DeviceError {
        let (file, block) = self.at();
        DeviceError::EndOfData {
            device: self.name.clone(),
            file,
            block,
        }
    }

    fn end_of_medium(&self) -> DeviceError {
        let (file, block) = self.at();
        DeviceError::EndOfMedium {
            device: self.name.clone(),
            file,
            block,
        }
    }

    /// Whether the st driver refuses this drive's reads, writes and
    /// relative spacing because the drive was reset (the sysfs attribute
    /// `position_lost_in_reset`); `None` on kernels without it.
    pub fn position_lost_in_reset(&self) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        let f = self.lost_in_reset.as_ref()?;
        let mut b = [0u8; 8];
        let n = f.read_at(&mut b, 0).ok()?;
        Some(b[..n].trim_ascii() == b"1")
    }

    /// The driver noticed a reset during the last command, which may have
    /// succeeded anyway: the drive answered from wherever the reset left it
    /// (a unit attention taken by another command, or by the SCSI layer's
    /// counters), or st let an asynchronous write fail behind MTIOCGET.
    fn reset_noticed(&self) -> bool {
        self.position_lost_in_reset() == Some(true)
    }

    /// After an EIO from the driver: a reset or medium change, or a
    /// deferred error, when the drive or the driver tells of one.
    ///
    /// The st driver keeps the sense data of a failed command to itself. It
    /// does say when a reset lost the position (sysfs, and on older kernels
    /// by refusing even SG_IO with EIO); anything the drive still holds (a
    /// unit attention or deferred error not yet reported with a command)
    /// REQUEST SENSE returns. A medium-change unit attention or a deferred
    /// error that came with the failed command itself cannot be seen here.
    fn disruption_after_eio(&mut self) -> Option<DeviceError> {
        let lost = self.position_lost_in_reset();
        if lost == Some(true) {
            return Some(self.disrupted(DeviceError::UnitAttention {
                device: self.name.clone(),
                reason: UnitAttention::PowerOnOrReset,
            }));
        }
        let probe = self.scsi().request_sense();
        let found = match probe {
            Ok(Some(sense)) => match sense.disruption() {
                Some(d) => Some(DeviceError::from_disruption(&self.name, d)),
                None => {
                    tracing::debug!(device = %self.name, %sense, "REQUEST SENSE after EIO");
                    None
                }
            },
            // Without the sysfs attribute: st refuses SG_IO too while the
            // position is lost in a reset.
            Err(SgError::Io { source, .. })
                if lost.is_none() && source.raw_os_error() == Some(libc::EIO) =>
            {
                Some(DeviceError::UnitAttention {
                    device: self.name.clone(),
                    reason: UnitAttention::PowerOnOrReset,
                })
            }
            _ => None,
        };
        found.map(|e| self.disrupted(e))
    }

    /// Keep a disruption an SG command met for the next operation.
    fn keep_disruption(&mut self, e: &SgError) {
        if let Some(d) = e.sense().and_then(|s| s.disruption()) {
            let e = DeviceError::from_disruption(&self.name, d);
            self.pending = Some(self.disrupted(e));
        }
    }

    /// The device error for a failed SCSI command of this module's own; a
    /// reset, medium change or deferred error also forgets the position.
    fn sg_error(&mut self, e: SgError) -> DeviceError {
        let lost = e.sense().and_then(|s| s.disruption()).is_some();
        let e = DeviceError::from(e);
        if lost {
            self.disrupted(e)
        } else {
            e
        }
    }

    /// Report a kept disruption.
    fn take_pending(&mut self) -> DeviceResult<()> {
        match self.pending.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Self::disruption_after_eio`] when `e` is EIO.
    fn eio_disruption(&mut self, e: Errno) -> Option<DeviceError> {
        if e == Errno::EIO {
            self.disruption_after_eio()
        } else {
            None
        }
    }

    /// Forget what a reset, medium change or deferred error invalidated.
    fn disrupted(&mut self, e: DeviceError) -> DeviceError {
        tracing::debug!(device = %self.name, error = %e, "position lost");
        self.pos = Pos::default();
        self.writing = false;
        self.eod = false;
        self.early_warning = false;
        self.last_status = None;
        self.file_starts.clear();
        e
    }

    /// A deferred error found from the drive's position: it is at `now`,
    /// before `accepted`, the object after the last one the drive accepted.
    fn lost_accepted_data(&mut self, accepted: u64, now: u64, context: &str) -> DeviceError {
        let n = accepted - now;
        let e = DeviceError::DeferredError {
            device: self.name.clone(),
            detail: format!(
                "{context} failed, and the drive is at logical object {now} although it had \
                 accepted {n} more block(s) or filemark(s) up to object {accepted}"
            ),
        };
        self.disrupted(e)
    }

    /// Map an errno from `context` to the device layer's conditions.
    fn errno_error(&mut self, e: Errno, context: &str) -> DeviceError {
        if e == Errno::EIO {
            if let Some(d) = self.disruption_after_eio() {
                return d;
            }
        }
        self.plain_errno_error(e, context)
    }

    /// [`Self::errno_error`] without asking the drive about disruptions.
    fn plain_errno_error(&self, e: Errno, context: &str) -> DeviceError {
        let (file, block) = self.at();
        match e {
            Errno::ENOMEDIUM => DeviceError::NoMedium {
                device: self.name.clone(),
            },
            Errno::EACCES | Errno::EROFS => DeviceError::WriteProtected {
                device: self.name.clone(),
            },
            Errno::EIO => {
                if let Ok(st) = self.st_status() {
                    if st.door_open() {
                        return DeviceError::NoMedium {
                            device: self.name.clone(),
                        };
                    }
                }
                DeviceError::MediumError {
                    device: self.name.clone(),
                    file,
                    block,
                    detail: format!("{context}: input/output error"),
                }
            }
            other => DeviceError::io(
                &self.name,
                format!("{context} at tape file {file}, block {block}"),
                other.into(),
            ),
        }
    }

    /// Like [`Self::errno_error`] for writes. `accepted` is the position
    /// after everything the drive had accepted before: a drive now short of
    /// it lost accepted data (a deferred error, or st's write-behind failing
    /// after write() returned). The driver reports a write to a cartridge
    /// that became write-protected after it was opened as EIO (it checks
    /// protection only when a cartridge is loaded), so ask the drive (MODE
    /// SENSE) before calling it a medium error.
    fn write_errno_error(&mut self, e: Errno, context: &str, accepted: Pos) -> DeviceError {
        if e == Errno::EIO {
            if let Some(d) = self.write_disruption(context, accepted) {
                return d;
            }
            if let Ok(mode) = self.scsi().mode_sense(MODE_PAGE_ALL) {
                if mode.write_protected {
                    self.write_protect_seen = true;
                    return DeviceError::WriteProtected {
                        device: self.name.clone(),
                    };
                }
            }
        }
        self.plain_errno_error(e, context)
    }

    /// After an EIO on a write: a reset or deferred error the drive tells
    /// of, or a position short of `accepted`.
    fn write_disruption(&mut self, context: &str, accepted: Pos) -> Option<DeviceError> {
        if let Some(d) = self.disruption_after_eio() {
            return Some(d);
        }
        match (accepted.lba, self.read_lba()) {
            (Some(a), Some(now)) if now < a => Some(self.lost_accepted_data(a, now, context)),
            _ => None,
        }
    }

    // ---- position bookkeeping ----

    /// Where tape file `f` starts, when known.
    fn file_start(&self, f: u32) -> Option<u64> {
        if f == 0 {
            return Some(0);
        }
        self.file_starts.get(&f).copied()
    }

    /// Tape file `f` starts at logical object `lba`.
    fn note_file_start(&mut self, f: u32, lba: u64) {
        if f > 0 {
            if let Some(old) = self.file_starts.insert(f, lba) {
                if old != lba {
                    tracing::warn!(device = %self.name, file = f, old, new = lba, "start of a tape file moved");
                }
            }
        }
    }

    /// A write in tape file `f` truncated the tape: later files are gone.
    fn truncate_file_starts(&mut self, f: u32) {
        self.file_starts.split_off(&(f.saturating_add(1)));
    }

    /// A write in tape file `f`, or somewhere unknown, truncates the tape.
    fn truncate_after(&mut self, f: Option<u32>) {
        match f {
            Some(f) => self.truncate_file_starts(f),
            None => self.file_starts.clear(),
        }
    }

    /// Record the start of the current file if the position is the start of
    /// a file and its logical object is known.
    fn note_position_as_file_start(&mut self) {
        if let Pos {
            file: Some(f),
            block: Some(0),
            lba: Some(l),
        } = self.pos
        {
            self.note_file_start(f, l);
        }
    }

    /// The st driver lost its file and block counters (after MTSEEK, or a
    /// reset); relative operations then cannot be counted by the driver.
    fn driver_counters_unknown(&mut self) -> DeviceResult<bool> {
        Ok(self.status_now()?.file.is_none())
    }

    /// Take the driver's file and block after an absolute operation.
    fn sync_from_driver(&mut self) -> DeviceResult<StStatus> {
        let st = self.status_now()?;
        self.pos = Pos {
            file: st.file,
            block: st.file.and(st.block),
            lba: None,
        };
        Ok(st)
    }

    /// Go to the start of tape file `f` (the driver then knows block 0).
    fn goto_file_start(&mut self, f: u32) -> DeviceResult<()> {
        if f == 0 {
            self.mt(MtOpCode::Rewind, 1)
                .map_err(|e| self.errno_error(e, "rewinding"))?;
            self.pos = Pos::bot();
            return Ok(());
        }
        // Back over the filemark that starts file f, then forward over it
        // (this also absorbs emulators whose MTBSF stops a block early).
        self.mt(MtOpCode::Bsf, 1)
            .map_err(|e| self.errno_error(e, "spacing back to the start of the file"))?;
        self.mt(MtOpCode::Fsf, 1)
            .map_err(|e| self.errno_error(e, "spacing to the start of the file"))?;
        let st = self.status_now()?;
        self.pos = Pos {
            file: Some(f),
            block: Some(0),
            lba: None,
        };
        if st.file.is_some_and(|sf| sf != f) {
            tracing::warn!(device = %self.name, expected = f, driver = ?st.file, "file number disagrees with the st driver");
        }
        Ok(())
    }

    /// Establish the block number within file `f` of the current position:
    /// from READ POSITION when the drive has it (go to the start of the file,
    /// then space forward the difference), else, at end of data only, by
    /// spacing forward from the file start until end of data.
    fn recover_block(&mut self, f: u32, at_eod: bool) -> DeviceResult<()> {
        let device = self.name.clone();
        let unknown = || DeviceError::InvalidRequest {
            device: device.clone(),
            detail: format!(
                "the block position within tape file {f} is unknown and this drive cannot report \
                 it (no READ POSITION); rewind or locate a tape file first"
            ),
        };
        if let Some(target) = self.read_lba() {
            if let Some(start) = self.file_start(f).filter(|&s| s <= target) {
                // Known from earlier: no need to move.
                self.pos = Pos {
                    file: Some(f),
                    block: Some(target - start),
                    lba: Some(target),
                };
                return Ok(());
            }
            self.goto_file_start(f)?;
            let start = self.read_lba().ok_or_else(unknown)?;
            self.note_file_start(f, start);
            let n = target.checked_sub(start).ok_or_else(|| {
                self.medium_error(
                    self.pos,
                    format!("position {target} lies before the start of tape file {f} ({start})"),
                )
            })?;
            self.space_forward_exact(n)?;
            self.pos = Pos {
                file: Some(f),
                block: Some(n),
                lba: Some(target),
            };
            return Ok(());
        }
        if !at_eod {
            return Err(unknown());
        }
        self.goto_file_start(f)?;
        // Spacing into end of data fails; the driver computes its block
        // counter from the residue the drive reports.
        let _ = self.mt(MtOpCode::Fsr, SPACE_MAX);
        let st = self.status_now()?;
        match st.block {
            Some(b) if st.at_eod() && b < SPACE_MAX as u64 && st.file == Some(f) => {
                self.pos = Pos {
                    file: Some(f),
                    block: Some(b),
                    lba: None,
                };
                Ok(())
            }
            _ => Err(unknown()),
        }
    }

    /// MTFSR over exactly `n` blocks (in SPACE-sized steps).
    fn space_forward_exact(&mut self, mut n: u64) -> DeviceResult<()> {
        while n > 0 {
            let step = n.min(SPACE_MAX as u64) as i32;
            self.mt(MtOpCode::Fsr, step)
                .map_err(|e| self.errno_error(e, "spacing forward over blocks"))?;
            n -= step as u64;
        }
        Ok(())
    }

    /// Make sure the logical block is known before a write, so ENOSPC can be
    /// checked against it.
    fn ensure_lba(&mut self) {
        if self.pos.lba.is_none() && self.lba_support != Some(false) {
            self.pos.lba = self.read_lba();
        }
    }

    // ---- reading ----

    /// Block size of the block just skipped by ENOMEM: back up over it and
    /// read it with the largest buffer the drive allows. The position ends
    /// past the block either way. `None` if it cannot be measured.
    fn measure_skipped_block(&mut self, tried: usize) -> Option<usize> {
        if self.max_block <= tried {
            return None;
        }
        self.mt(MtOpCode::Bsr, 1).ok()?;
        let mut big = vec![0u8; self.max_block];
        match read_once(&self.file, &mut big) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                // Not where we expected; trust the driver's view again.
                let _ = self.sync_from_driver();
                None
            }
        }
    }

    /// A read failed with EIO: end of data, or a medium error.
    fn read_eio(&mut self, before: Pos) -> DeviceResult<ReadOutcome> {
        if let Some(d) = self.disruption_after_eio() {
            return Err(d);
        }
        let st = self.status_now()?;
        if st.door_open() || !st.online() {
            return Err(DeviceError::NoMedium {
                device: self.name.clone(),
            });
        }
        if st.at_eod() {
            self.pos = before;
            self.eod = true;
            return Ok(ReadOutcome::EndOfData);
        }
        let moved = match (before.lba, self.read_lba()) {
            (Some(b), Some(a)) if a == b + 1 => Some(true),
            (Some(b), Some(a)) if a == b => Some(false),
            _ => None,
        };
        if moved == Some(true) {
            // The drive gave up on the block and moved past it.
            self.pos = before.next_block();
            return Err(self.medium_error(before, "unrecoverable read error"));
        }
        // Not moved, or unknown: space one block forward. At end of data
        // that fails with BLANK CHECK, which the driver reports as EOD.
        let spaced = self.mt(MtOpCode::Fsr, 1);
        let st = self.status_now()?;
        if spaced.is_err() && st.at_eod() {
            self.pos = before;
            self.eod = true;
            return Ok(ReadOutcome::EndOfData);
        }
        let crossed_filemark = spaced.is_err() && st.at_filemark();
        if crossed_filemark {
            let _ = self.mt(MtOpCode::Bsf, 1);
        }
        match (moved, spaced.is_ok()) {
            // The read did not move; the space went over the bad block.
            (Some(false), true) => self.pos = before.next_block(),
            // Assume the read moved past the bad block (as SSC drives do)
            // and undo the probe.
            (None, true) => {
                self.pos = match self.mt(MtOpCode::Bsr, 1) {
                    Ok(()) => before.next_block(),
                    Err(_) => Pos {
                        file: before.file,
                        block: None,
                        lba: None,
                    },
                }
            }
            (None, false) if crossed_filemark => self.pos = before.next_block(),
            _ => {
                self.pos = Pos {
                    file: before.file,
                    block: None,
                    lba: None,
                }
            }
        }
        Err(self.medium_error(before, "unrecoverable read error"))
    }

    /// A read on a drive without READ POSITION returned exactly the
    /// largest block. At end of data tgt's emulation answers BLANK CHECK with
    /// the EOM bit set and no residue; st then takes the EOM bit for early
    /// warning (or end of data after a filemark) and returns its whole buffer
    /// of stale bytes as a block, without the tape moving. MTIOCGET shows
    /// that state; failing that, a second read with one byte less tells: a
    /// made-up block again has exactly the size asked for. Otherwise the
    /// first block was real and the second read is undone.
    fn confirm_phantom(&mut self, before: Pos, len: usize) -> DeviceResult<ReadOutcome> {
        let real = Ok(ReadOutcome::Block(len));
        // The drive reported BLANK CHECK with the EOM bit; st took the EOM
        // bit for early warning (or, after a filemark, for end of data) and
        // handed out its whole buffer.
        let st = self.status_now()?;
        if st.at_eod() || st.at_eot() {
            return self.phantom_end_of_data(before);
        }
        let mut probe = vec![0u8; len - 1];
        match read_once(&self.file, &mut probe) {
            Ok(m) if m == len - 1 => self.phantom_end_of_data(before),
            Ok(0) => {
                // The first block was real and the probe crossed the
                // filemark after it: back over that filemark.
                self.mt(MtOpCode::Bsf, 1)
                    .map_err(|e| self.errno_error(e, "spacing back over a probed filemark"))?;
                if self.quirks.bsf_one_block_early {
                    self.mt(MtOpCode::Fsr, 1)
                        .map_err(|e| self.errno_error(e, "spacing to just before the filemark"))?;
                }
                self.pos = before.next_block();
                self.pos.lba = None;
                real
            }
            Ok(_) => {
                self.mt(MtOpCode::Bsr, 1)
                    .map_err(|e| self.errno_error(e, "spacing back over a probed block"))?;
                self.pos = before.next_block();
                real
            }
            Err(e) if errno_of(&e) == Errno::ENOMEM => {
                self.mt(MtOpCode::Bsr, 1)
                    .map_err(|e| self.errno_error(e, "spacing back over a probed block"))?;
                self.pos = before.next_block();
                real
            }
            // End of data (or an error) right after a real block: no motion.
            Err(_) => {
                self.pos = before.next_block();
                real
            }
        }
    }

    /// A made-up block was read at end of data: the tape did not move. The
    /// driver's end-of-medium state from it would turn the next write into
    /// an early-warning refusal; a zero-count space clears it.
    fn phantom_end_of_data(&mut self, before: Pos) -> DeviceResult<ReadOutcome> {
        tracing::debug!(device = %self.name, "a read at end of data returned a made-up block; end of data");
        self.mt(MtOpCode::Fsr, 0)
            .map_err(|e| self.errno_error(e, "clearing the driver's end-of-medium state"))?;
        self.pos = before;
        self.eod = true;
        Ok(ReadOutcome::EndOfData)
    }

    /// End of data on a drive without READ POSITION: space file by file,
    /// looking at the first block of each (with the phantom check), until a
    /// file turns out to be empty at end of data or spacing runs into it.
    fn seek_end_of_data_by_files(&mut self) -> DeviceResult<()> {
        if self.pos.file.is_none() {
            self.rewind()?;
        }
        if self.pos.block != Some(0) {
            match self.space_filemarks(1) {
                Ok(()) => {}
                Err(DeviceError::EndOfData { .. }) => return self.unterminated_end(),
                Err(e) => return Err(e),
            }
        }
        let mut buf = vec![0u8; self.max_block];
        loop {
            match self.read_block(&mut buf)? {
                ReadOutcome::EndOfData => return Ok(()),
                ReadOutcome::Filemark => continue,
                ReadOutcome::Block(_) => match self.space_filemarks(1) {
                    Ok(()) => continue,
                    Err(DeviceError::EndOfData { .. }) => return self.unterminated_end(),
                    Err(e) => return Err(e),
                },
            }
        }
    }

    /// End of data inside a file that has no filemark, on a drive that
    /// cannot say where: the file is known, the block is not.
    fn unterminated_end(&mut self) -> DeviceResult<()> {
        self.pos.block = None;
        self.pos.lba = None;
        self.eod = true;
        Ok(())
    }

    // ---- writing ----

    /// After ENOSPC: was the block written? `None` if it cannot be told.
    fn was_written(&mut self, before: Pos, st_before: Option<StStatus>) -> Option<bool> {
        if let (Some(b), Some(a)) = (before.lba, self.read_lba()) {
            return Some(a == b + 1);
        }
        // No READ POSITION: such drives report early warning the way real
        // drives do, and the driver counts exactly the blocks written.
        let after = self.status_now().ok()?;
        match (st_before.and_then(|s| s.block), after.block) {
            (Some(b), Some(a)) if a == b + 1 => Some(true),
            (Some(b), Some(a)) if a == b => Some(false),
            _ => None,
        }
    }

    /// MTBSR over `n` blocks from `start` (within the file if all goes well).
    fn bsr(&mut self, start: Pos, n: i32) -> DeviceResult<()> {
        match self.mt(MtOpCode::Bsr, n) {
            Ok(()) => {
                self.pos = Pos {
                    file: start.file,
                    block: start.block.and_then(|b| b.checked_sub(n as u64)),
                    lba: start.lba.and_then(|l| l.checked_sub(n as u64)),
                };
                Ok(())
            }
            Err(e) => {
                if let Some(d) = self.eio_disruption(e) {
                    return Err(d);
                }
                let st = self.status_now()?;
                // Without the driver's counters (after LOCATE), the drive's
                // position tells.
                let lba = if st.file.is_none() {
                    self.read_lba()
                } else {
                    None
                };
                if st.at_bot() || lba == Some(0) {
                    self.pos = Pos::bot();
                    return Err(self.medium_error(
                        Pos::bot(),
                        format!("beginning of tape reached while spacing back over {n} blocks"),
                    ));
                }
                let crossed = match (start.file, st.file) {
                    (Some(s), Some(now)) => now + 1 == s,
                    // Before the start of the file means over its filemark.
                    (Some(s), None) => match (self.file_start(s), lba) {
                        (Some(first), Some(now)) => now < first,
                        _ => false,
                    },
                    _ => false,
                };
                if crossed {
                    // Back over the filemark to the start of this file.
                    self.mt(MtOpCode::Fsf, 1)
                        .map_err(|e| self.errno_error(e, "spacing back to the file start"))?;
                    self.pos = Pos {
                        file: start.file,
                        block: Some(0),
                        lba: None,
                    };
                    return Err(self.medium_error(
                        self.pos,
                        format!("a filemark reached while spacing back over {n} blocks"),
                    ));
                }
                self.pos = Pos {
                    file: st.file,
                    block: None,
                    lba: None,
                };
                Err(self.errno_error(e, "spacing back over blocks"))
            }
        }
    }

    /// The medium is full: no filemark fits any more, so neither this module
    /// nor the driver may try to write one on rewind or close (the driver
    /// would fail those too). A zero-count space makes the driver forget that
    /// the last operation was a write, without moving the tape.
    fn medium_full(&mut self) {
        self.writing = false;
        if let Err(e) = self.mt(MtOpCode::Fsr, 0) {
            tracing::debug!(device = %self.name, error = %e, "clearing the driver's write state");
        }
        self.eod = true;
    }

    /// Write the filemark st would write on close, reporting its errors.
    pub fn close(mut self) -> DeviceResult<()> {
        if self.writing {
            self.write_filemarks(1, false)?;
        }
        Ok(())
    }

    // ---- drive and cartridge operations (not in the trait) ----

    fn simple(&mut self, op: MtOpCode, count: i32, what: &str) -> DeviceResult<()> {
        self.mt(op, count).map_err(|e| self.errno_error(e, what))
    }

    /// Load the cartridge in the drive (MTLOAD).
    pub fn load(&mut self) -> DeviceResult<()> {
        self.simple(MtOpCode::Load, 1, "loading the cartridge")?;
        self.file_starts.clear();
        self.pos = Pos::bot();
        Ok(())
    }

    /// Rewind and unload (eject) the cartridge (MTUNLOAD).
    pub fn unload(&mut self) -> DeviceResult<()> {
        self.writing = false;
        self.simple(MtOpCode::Unload, 1, "unloading the cartridge")?;
        self.file_starts.clear();
        self.pos = Pos::default();
        Ok(())
    }

    /// Rewind and take the drive offline (MTOFFL); most drives eject.
    pub fn offline(&mut self) -> DeviceResult<()> {
        self.writing = false;
        self.simple(MtOpCode::Offline, 1, "taking the drive offline")?;
        self.file_starts.clear();
        self.pos = Pos::default();
        Ok(())
    }

    /// Prevent medium removal (MTLOCK).
    pub fn lock(&mut self) -> DeviceResult<()> {
        self.simple(MtOpCode::Lock, 1, "locking the drive door")
    }

    /// Allow medium removal (MTUNLOCK).
    pub fn unlock(&mut self) -> DeviceResult<()> {
        self.simple(MtOpCode::Unlock, 1, "unlocking the drive door")
    }

    /// Turn the drive's compression on or off (MTCOMPRESSION).
    pub fn set_compression(&mut self, on: bool) -> DeviceResult<()> {
        self.simple(MtOpCode::Compression, on as i32, "setting compression")
    }

    /// Locate logical block `lba` with SCSI LOCATE (MTSEEK). The driver
    /// loses its file number afterwards; this module recomputes nothing and
    /// reports the position as unknown until an absolute operation.
    pub fn seek_logical(&mut self, lba: u64) -> DeviceResult<()> {
        let target = i32::try_from(lba).map_err(|_| DeviceError::InvalidRequest {
            device: self.name.clone(),
            detail: format!("logical block {lba} is beyond what MTSEEK can address"),
        })?;
        if self.writing {
            self.write_filemarks(1, false)?;
        }
        self.simple(MtOpCode::Seek, target, "locating a logical block (MTSEEK)")?;
        self.pos = if lba == 0 {
            Pos::bot()
        } else {
            Pos {
                file: None,
                block: None,
                lba: Some(lba),
            }
        };
        self.early_warning = false;
        Ok(())
    }

    /// Go to (file, block) by spacing: over filemarks from where the tape
    /// is (or from BOT when that is unknown), then over blocks.
    fn locate_by_spacing(&mut self, file: u32, block: u64) -> DeviceResult<()> {
        let cur = self.pos;
        let files = |r: DeviceResult<()>, this: &Self| match r {
            Err(DeviceError::EndOfData { file: last, .. }) => Err(this.refuse_locate(
                file,
                block,
                format!("the cartridge has tape files 0 to {last}"),
            )),
            r => r,
        };
        if file == 0 {
            self.rewind()?;
        } else if cur.file == Some(file) && cur.block.is_some() {
            // Same file: space by blocks below.
        } else if let Some(cf) = cur.file.filter(|&cf| cf < file) {
            let r = self.space_filemarks((file - cf) as i64);
            files(r, self)?;
        } else if let Some(cf) = cur.file {
            self.space_filemarks(-((cf - file) as i64 + 1))?;
            let r = self.space_filemarks(1);
            files(r, self)?;
        } else {
            self.rewind()?;
            let r = self.space_filemarks(file as i64);
            files(r, self)?;
        }
        let here = self.pos.block.unwrap_or(0);
        let delta = block as i64 - here as i64;
        match self.space_blocks(delta) {
            Ok(()) => Ok(()),
            Err(DeviceError::EndOfData { .. }) | Err(DeviceError::MediumError { .. })
                if delta > 0 =>
            {
                Err(self.refuse_locate(file, block, format!("tape file {file} has fewer blocks")))
            }
            Err(e) => Err(e),
        }
    }

    fn refuse_locate(&self, file: u32, block: u64, why: impl std::fmt::Display) -> DeviceError {
        DeviceError::InvalidRequest {
            device: self.name.clone(),
            detail: format!("cannot locate tape file {file}, block {block}: {why}"),
        }
    }

    /// LOCATE to (file, block): the logical object is where the file starts
    /// plus `block`, once `block` is known to lie within the file (up to
    /// the filemark that ends it, or end of data).
    fn locate_by_address(&mut self, file: u32, block: u64) -> Result<(), LocateFailure> {
        let start = self.find_file_start(file, block)?;
        let target = start.checked_add(block).ok_or(LocateFailure::Unsupported)?;
        if block > 0 {
            let last = match self.file_end(file, start)? {
                // Block n of an n-block file is its filemark.
                FileEnd::NextFileAt(next) => next - 1,
                FileEnd::EndOfDataAt(end) => end,
            };
            if target > last {
                let n = last - start;
                return Err(self
                    .refuse_locate(file, block, format!("tape file {file} has {n} blocks"))
                    .into());
            }
        }
        self.seek_verified(target)?;
        self.pos = Pos {
            file: Some(file),
            block: Some(block),
            lba: Some(target),
        };
        Ok(())
    }

    /// The logical object where tape file `file` starts: remembered, or
    /// found by spacing over filemarks from the nearest file before it
    /// whose start is known (LOCATE there first) or from here.
    fn find_file_start(&mut self, file: u32, block: u64) -> Result<u64, LocateFailure> {
        if let Some(s) = self.file_start(file) {
            return Ok(s);
        }
        let (known, known_start) = self
            .file_starts
            .range(..file)
            .next_back()
            .map(|(&f, &l)| (f, l))
            .unwrap_or((0, 0));
        let from = match self.pos.file {
            Some(here) if here >= known && here < file => here,
            _ => {
                self.seek_verified(known_start)?;
                self.pos = Pos {
                    file: Some(known),
                    block: Some(0),
                    lba: Some(known_start),
                };
                known
            }
        };
        match self.space_filemarks((file - from) as i64) {
            Ok(()) => {}
            Err(DeviceError::EndOfData { file: last, .. }) => {
                return Err(self
                    .refuse_locate(
                        file,
                        block,
                        format!("the cartridge has tape files 0 to {last}"),
                    )
                    .into())
            }
            Err(e) => return Err(e.into()),
        }
        match self.file_start(file) {
            Some(s) => Ok(s),
            None => Err(self.position_unreadable().into()),
        }
    }

    /// Where tape file `file` (starting at `start`) ends: remembered, or
    /// found by spacing over its filemark.
    fn file_end(&mut self, file: u32, start: u64) -> Result<FileEnd, LocateFailure> {
        let next = file.checked_add(1).ok_or(LocateFailure::Unsupported)?;
        if let Some(n) = self.file_start(next) {
            return Ok(FileEnd::NextFileAt(n));
        }
        if self.pos.file != Some(file) {
            self.seek_verified(start)?;
            self.pos = Pos {
                file: Some(file),
                block: Some(0),
                lba: Some(start),
            };
        }
        match self.space_filemarks(1) {
            Ok(()) => match self.file_start(next) {
                Some(n) => Ok(FileEnd::NextFileAt(n)),
                None => Err(self.position_unreadable().into()),
            },
            Err(DeviceError::EndOfData { .. }) => match self.read_lba() {
                Some(end) => Ok(FileEnd::EndOfDataAt(end)),
                None => Err(self.position_unreadable().into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    fn position_unreadable(&self) -> DeviceError {
        DeviceError::InvalidRequest {
            device: self.name.clone(),
            detail: "the drive did not report its position (READ POSITION) after spacing".into(),
        }
    }

    /// MTSEEK to logical object `target`, checked with READ POSITION. Drives
    /// disagree by one on LOCATE to a filemark (some stop after it): one
    /// object off is corrected by spacing one block, which stops at a
    /// filemark on the side it comes from; further off, LOCATE again.
    fn seek_verified(&mut self, target: u64) -> Result<(), LocateFailure> {
        let Ok(count) = i32::try_from(target) else {
            // MTSEEK takes an int.
            return Err(LocateFailure::Unsupported);
        };
        let mut landed = Vec::new();
        for _ in 0..LOCATE_ATTEMPTS {
            self.pos = Pos::default();
            if let Err(e) = self.mt(MtOpCode::Seek, count) {
                if let Some(d) = self.eio_disruption(e) {
                    return Err(d.into());
                }
                if self.locate_support.is_none() {
                    tracing::debug!(device = %self.name, error = %e, "MTSEEK fails: the drive cannot LOCATE");
                    self.locate_support = Some(false);
                    return Err(LocateFailure::Unsupported);
                }
                let context = format!("locating logical object {target} (MTSEEK)");
                return Err(self.plain_errno_error(e, &context).into());
            }
            self.locate_support = Some(true);
            let mut now = self.tell_after_locate()?;
            let fix = locate_correction(target, now);
            let landed_at = match fix {
                LocateCorrection::Done => &mut self.landings.locate_exact,
                LocateCorrection::BackOne => &mut self.landings.locate_one_past,
                LocateCorrection::ForwardOne => &mut self.landings.locate_one_short,
                LocateCorrection::Again => &mut self.landings.locate_elsewhere,
            };
            *landed_at += 1;
            match fix {
                LocateCorrection::Done | LocateCorrection::Again => {}
                LocateCorrection::BackOne => {
                    let _ = self.mt(MtOpCode::Bsr, 1);
                    now = self.tell_after_locate()?;
                }
                LocateCorrection::ForwardOne => {
                    let _ = self.mt(MtOpCode::Fsr, 1);
                    now = self.tell_after_locate()?;
                }
            }
            if now == target {
                if fix != LocateCorrection::Done {
                    tracing::debug!(device = %self.name, target, ?fix, "LOCATE landed one object off; corrected");
                }
                self.pos.lba = Some(target);
                return Ok(());
            }
            tracing::warn!(device = %self.name, target, now, "LOCATE ended elsewhere");
            landed.push(now);
        }
        Err(DeviceError::MediumError {
            device: self.name.clone(),
            file: 0,
            block: 0,
            detail: format!(
                "LOCATE to logical object {target} ended at {landed:?} ({LOCATE_ATTEMPTS} attempts)"
            ),
        }
        .into())
    }

    fn tell_after_locate(&mut self) -> DeviceResult<u64> {
        self.tell()
            .map_err(|e| self.errno_error(e, "reading the position after LOCATE (MTIOCPOS)"))
    }
}

/// The st driver's sysfs directory of the node open as `file`
/// (/sys/dev/char/MAJOR:MINOR leads there, whatever the node's name).
fn sysfs_dir(file: &File) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let rdev = file.metadata().ok()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    std::fs::canonicalize(format!("/sys/dev/char/{major}:{minor}")).ok()
}

/// One read(2), retried on EINTR.
fn read_once(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// One write(2), retried on EINTR.
fn write_once(mut file: &File, buf: &[u8]) -> io::Result<usize> {
    loop {
        match file.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

impl BlockRead for StDrive {
    fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<ReadOutcome> {
        self.take_pending()?;
        self.writing = false;
        self.last_status = None;
        // st refuses reads larger than the drive's maximum block (EINVAL).
        let len = buf.len().min(self.max_block);
        let before = self.pos;
        if std::mem::take(&mut self.eod) && self.no_read_position() {
            // Known to be at end of data; such drives may invent a block here.
            self.eod = true;
            return Ok(ReadOutcome::EndOfData);
        }
        match read_once(&self.file, &mut buf[..len]) {
            // Read, but from wherever a reset left the tape.
            Ok(_) if self.reset_noticed() => self.read_eio(before),
            Ok(n) if n == len && len == self.max_block && self.no_read_position() => {
                self.confirm_phantom(before, len)
            }
            Ok(0) => {
                let st = self.status_now()?;
                if st.at_eod() {
                    self.pos = before;
                    self.eod = true;
                    Ok(ReadOutcome::EndOfData)
                } else {
                    self.pos = before.next_files(1);
                    self.note_position_as_file_start();
                    Ok(ReadOutcome::Filemark)
                }
            }
            Ok(n) => {
                self.pos = before.next_block();
                Ok(ReadOutcome::Block(n))
            }
            Err(e) => match errno_of(&e) {
                Errno::ENOMEM => {
                    self.pos = before.next_block();
                    let needed = self.measure_skipped_block(len).unwrap_or(len + 1);
                    self.pos = before.next_block();
                    Err(DeviceError::BlockTooLarge {
                        device: self.name.clone(),
                        needed,
                        buffer: len,
                        file: before.file.unwrap_or(0),
                        block: before.block.unwrap_or(0),
                    })
                }
                Errno::EIO => self.read_eio(before),
                Errno::EINVAL => Err(DeviceError::InvalidRequest {
                    device: self.name.clone(),
                    detail: format!(
                        "a read of {len} bytes is outside the drive's block limits ({} to {} bytes)",
                        self.min_block, self.max_block
                    ),
                }),
                errno => Err(self.errno_error(errno, "reading a block")),
            },
        }
    }
}

impl BlockWrite for StDrive {
    fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome> {
        self.take_pending()?;
        if self.read_only {
            return Err(DeviceError::WriteProtected {
                device: self.name.clone(),
            });
        }
        let n = block.len();
        if n == 0 || n > self.max_block || n < self.min_block {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!(
                    "cannot write a block of {n} bytes: this drive takes {} to {} bytes",
                    self.min_block.max(1),
                    self.max_block
                ),
            });
        }
        self.ensure_lba();
        let before = self.pos;
        if !self.writing {
            // Writing here truncates what follows, whether or not it works.
            self.truncate_after(before.file);
        }
        // The driver's counters before the write, for drives without READ
        // POSITION (cheap: MTIOCGET issues no SCSI command).
        let st_before = match self.last_status {
            Some(s) => Some(s),
            None if self.pos.lba.is_none() => self.status_now().ok(),
            None => None,
        };
        self.last_status = None;
        // Two attempts: the first may be the driver's early-warning refusal
        // (nothing written); the second then reaches the drive.
        for _attempt in 0..2 {
            match write_once(&self.file, block) {
                Ok(w) if w == n => {
                    self.pos = before.next_block();
                    self.writing = true;
                    self.eod = true;
                    // MTIOCGET also waits for a write st let return early
                    // (its write-behind) and reports how that ended.
                    let st = match self.status_now() {
                        Ok(st) => st,
                        Err(DeviceError::Io { source, .. })
                            if source.raw_os_error() == Some(libc::EIO) =>
                        {
                            self.pos = before;
                            let context = "writing a block (failed after write() returned)";
                            return Err(self.write_errno_error(Errno::EIO, context, before));
                        }
                        Err(e) => return Err(e),
                    };
                    if self.reset_noticed() {
                        // The write never happened: a reset intervened.
                        self.pos = before;
                        return Err(self.write_errno_error(Errno::EIO, "writing a block", before));
                    }
                    if st.at_eot() || self.early_warning {
                        if !self.early_warning {
                            tracing::debug!(device = %self.name, status = ?st, "early warning reported by the driver");
                        }
                        self.early_warning = true;
                        return Ok(WriteOutcome::EarlyWarning);
                    }
                    return Ok(WriteOutcome::Written);
                }
                Ok(w) => {
                    let _ = self.sync_from_driver();
                    return Err(self.medium_error(
                        before,
                        format!("the drive accepted only {w} of {n} bytes of a block"),
                    ));
                }
                Err(e) => match errno_of(&e) {
                    Errno::ENOSPC => {
                        tracing::debug!(device = %self.name, "write returned ENOSPC");
                        self.early_warning = true;
                        match self.was_written(before, st_before) {
                            Some(true) => {
                                self.pos = before.next_block();
                                self.writing = true;
                                self.eod = true;
                                return Ok(WriteOutcome::EarlyWarning);
                            }
                            Some(false) => continue,
                            None => {
                                self.pos = Pos {
                                    file: before.file,
                                    block: None,
                                    lba: None,
                                };
                                return Err(self.medium_error(
                                    before,
                                    "the drive reported the end of the medium and cannot say \
                                     where it is, so it is unknown whether this block was written",
                                ));
                            }
                        }
                    }
                    Errno::EINVAL => {
                        return Err(DeviceError::InvalidRequest {
                            device: self.name.clone(),
                            detail: format!(
                                "the drive refused a block of {n} bytes (outside its block limits \
                                 of {} to {} bytes)",
                                self.min_block, self.max_block
                            ),
                        })
                    }
                    Errno::EIO => {
                        if let Some(d) = self.write_disruption("writing a block", before) {
                            return Err(d);
                        }
                        let st = self.status_now().unwrap_or_default();
                        self.pos = before;
                        if st.at_eot() || self.early_warning {
                            self.medium_full();
                            return Err(self.end_of_medium());
                        }
                        if let Ok(mode) = self.scsi().mode_sense(MODE_PAGE_ALL) {
                            if mode.write_protected {
                                self.write_protect_seen = true;
                                return Err(DeviceError::WriteProtected {
                                    device: self.name.clone(),
                                });
                            }
                        }
                        return Err(self.plain_errno_error(Errno::EIO, "writing a block"));
                    }
                    errno => return Err(self.write_errno_error(errno, "writing a block", before)),
                },
            }
        }
        self.pos = before;
        self.medium_full();
        Err(self.end_of_medium())
    }

    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DeviceResult<()> {
        self.take_pending()?;
        if self.read_only {
            return Err(DeviceError::WriteProtected {
                device: self.name.clone(),
            });
        }
        if count == 0 {
            return if immediate { Ok(()) } else { self.flush() };
        }
        let c = i32::try_from(count).map_err(|_| DeviceError::InvalidRequest {
            device: self.name.clone(),
            detail: format!("cannot write {count} filemarks at once"),
        })?;
        let before = self.pos;
        self.truncate_after(before.file);
        let op = if immediate {
            MtOpCode::WeofImmediate
        } else {
            MtOpCode::Weof
        };
        let r = match self.mt(op, c) {
            // Kernels before MTWEOFI: write them synchronously.
            Err(Errno::ENOSYS | Errno::EINVAL) if immediate => self.mt(MtOpCode::Weof, c),
            r => r,
        };
        r.map_err(|e| self.write_errno_error(e, "writing filemarks", before))?;
        self.writing = false;
        self.eod = true;
        self.pos = before.next_files(count);
        // The filemarks start new tape files.
        if let (Some(f), Some(l)) = (before.file, before.lba) {
            for i in 1..=count {
                self.note_file_start(f + i, l + i as u64);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> DeviceResult<()> {
        self.take_pending()?;
        self.writing = false;
        if self.read_only {
            return Ok(());
        }
        // WRITE FILEMARKS with a count of 0: empty the drive's buffer.
        let accepted = self.pos;
        self.mt(MtOpCode::Weof, 0)
            .map_err(|e| self.write_errno_error(e, "flushing the drive buffer", accepted))
    }
}

impl TapeDrive for StDrive {
    fn identity(&mut self) -> Option<super::DriveIdentity> {
        let scsi = self.scsi();
        let inq = scsi.inquiry().ok()?;
        Some(super::DriveIdentity {
            vendor: Some(inq.vendor.trim().to_string()),
            model: Some(inq.product.trim().to_string()),
            serial: scsi.unit_serial_number().ok().map(|s| s.trim().to_string()),
            firmware: Some(inq.revision.trim().to_string()),
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn rewind(&mut self) -> DeviceResult<()> {
        self.take_pending()?;
        // The driver writes the filemark a pending write needs.
        self.mt(MtOpCode::Rewind, 1)
            .map_err(|e| self.errno_error(e, "rewinding"))?;
        self.writing = false;
        self.early_warning = false;
        self.pos = Pos::bot();
        Ok(())
    }

    fn space_filemarks(&mut self, count: i64) -> DeviceResult<()> {
        self.take_pending()?;
        let was_writing = std::mem::replace(&mut self.writing, false);
        let was_eod = self.eod;
        self.early_warning = false;
        if count == 0 {
            return Ok(());
        }
        let start = self.pos;
        let n = self.space_count(count, "filemarks")?;
        if count > 1 && (self.no_read_position() || self.driver_counters_unknown()?) {
            // Drives without READ POSITION give no residue, and after LOCATE
            // the driver cannot count: space one at a time to know where
            // spacing stopped.
            for _ in 0..count {
                self.space_filemarks(1)?;
            }
            return Ok(());
        }
        if count > 0 {
            match self.mt(MtOpCode::Fsf, n) {
                Ok(()) => {
                    self.pos = Pos {
                        file: start.file.map(|f| f + n as u32),
                        block: Some(0),
                        lba: None,
                    };
                    if self.lba_support == Some(true) {
                        // Remember where the file starts, for LOCATE.
                        self.pos.lba = self.read_lba();
                        self.note_position_as_file_start();
                    }
                    Ok(())
                }
                Err(Errno::EIO) => {
                    if let Some(d) = self.disruption_after_eio() {
                        return Err(d);
                    }
                    let st = self.status_now()?;
                    if !st.at_eod() && n == 1 && self.no_read_position() {
                        // tgt reports end of data on spacing as NO SENSE with
                        // "end of data" and no residue, which st does not
                        // flag; spacing only stops there.
                        self.pos = Pos {
                            file: start.file,
                            // Known to be at end of data already: no motion.
                            block: if was_eod { start.block } else { None },
                            lba: None,
                        };
                        self.eod = true;
                        return Err(self.end_of_data());
                    }
                    if !st.at_eod() {
                        return Err(
                            self.plain_errno_error(Errno::EIO, "spacing forward over filemarks")
                        );
                    }
                    // The driver counts the filemarks passed from the residue.
                    let file = match (start.file, st.file) {
                        (Some(s), Some(f)) if f >= s && f - s <= n as u32 => Some(f),
                        (None, Some(f)) if f < SPACE_MAX as u32 => Some(f),
                        // Not counted (after LOCATE), but one filemark asked
                        // for and not found: still in the same file.
                        (Some(s), None) if n == 1 => Some(s),
                        _ => None,
                    };
                    self.pos = Pos {
                        file,
                        block: None,
                        lba: None,
                    };
                    if let Some(f) = file {
                        if let Err(e) = self.recover_block(f, true) {
                            tracing::debug!(device = %self.name, error = %e, "block within the last file unknown");
                        }
                    }
                    {
                        self.eod = true;
                        Err(self.end_of_data())
                    }
                }
                Err(e) => Err(self.errno_error(e, "spacing forward over filemarks")),
            }
        } else {
            if self.quirks.bsf_one_block_early && !was_writing && start.block.is_some_and(|b| b > 0)
            {
                // Such a drive also counts a filemark right ahead of the
                // position as one crossed (after reading a file's last
                // block): step back off it first, onto a block that the
                // backward spacing crosses anyway.
                self.mt(MtOpCode::Bsr, 1).map_err(|e| {
                    self.errno_error(e, "spacing back one block before spacing over filemarks")
                })?;
            }
            match self.mt(MtOpCode::Bsf, n) {
                Ok(()) if self.quirks.bsf_one_block_early => {
                    // Forward over the block it stopped before, to just
                    // before the filemark.
                    self.mt(MtOpCode::Fsr, 1)
                        .map_err(|e| self.errno_error(e, "spacing to just before the filemark"))?;
                    let expected = start
                        .file
                        .map(|f| f + was_writing as u32)
                        .and_then(|f| f.checked_sub(n as u32));
                    self.pos = Pos {
                        file: expected,
                        block: None,
                        lba: None,
                    };
                    Ok(())
                }
                Ok(()) => {
                    let st = self.status_now()?;
                    // The driver wrote a filemark first if the last operation
                    // was a write, and counted it.
                    let expected = start
                        .file
                        .map(|f| f + was_writing as u32)
                        .and_then(|f| f.checked_sub(n as u32));
                    self.pos = Pos {
                        file: st.file.or(expected),
                        block: None,
                        lba: None,
                    };
                    Ok(())
                }
                Err(e) => {
                    if let Some(d) = self.eio_disruption(e) {
                        return Err(d);
                    }
                    let st = self.status_now()?;
                    let at_bot = st.at_bot()
                        || st.file == Some(0) && st.block == Some(0)
                        || st.file.is_none() && self.read_lba() == Some(0);
                    if at_bot {
                        self.pos = Pos::bot();
                        return Err(self.medium_error(
                            Pos::bot(),
                            format!(
                                "beginning of tape reached while spacing back over {n} filemarks"
                            ),
                        ));
                    }
                    self.pos = Pos {
                        file: st.file,
                        block: None,
                        lba: None,
                    };
                    Err(self.plain_errno_error(e, "spacing back over filemarks"))
                }
            }
        }
    }

    fn space_blocks(&mut self, count: i64) -> DeviceResult<()> {
        self.take_pending()?;
        self.writing = false;
        self.early_warning = false;
        if count == 0 {
            return Ok(());
        }
        let start = self.pos;
        let n = self.space_count(count, "blocks")?;
        if count > 0 {
            match self.mt(MtOpCode::Fsr, n) {
                Ok(()) => {
                    self.pos = Pos {
                        file: start.file,
                        block: start.block.map(|b| b + n as u64),
                        lba: start.lba.map(|l| l + n as u64),
                    };
                    Ok(())
                }
                Err(e) => {
                    if let Some(d) = self.eio_disruption(e) {
                        return Err(d);
                    }
                    let st = self.status_now()?;
                    let f = start.file.or(st.file);
                    if st.at_eod() {
                        self.pos = Pos {
                            file: f,
                            block: None,
                            lba: None,
                        };
                        if let Some(f) = f {
                            let _ = self.recover_block(f, true);
                        }
                        return {
                            self.eod = true;
                            Err(self.end_of_data())
                        };
                    }
                    let crossed = match (start.file, st.file) {
                        (Some(s), Some(now)) => now == s + 1,
                        _ => st.at_filemark(),
                    };
                    if crossed {
                        // Stop before the filemark, as the trait says.
                        let _ = self.mt(MtOpCode::Bsf, 1);
                        self.pos = Pos {
                            file: f,
                            block: None,
                            lba: None,
                        };
                        if let Some(f) = f {
                            let _ = self.recover_block(f, false);
                        }
                        return Err(self.medium_error(
                            self.pos,
                            format!("a filemark reached while spacing forward over {n} blocks"),
                        ));
                    }
                    self.pos = Pos {
                        file: f,
                        block: None,
                        lba: None,
                    };
                    Err(self.plain_errno_error(e, "spacing forward over blocks"))
                }
            }
        } else if let (Some(f), Some(b)) = (start.file, start.block) {
            if (n as u64) <= b {
                self.bsr(start, n)
            } else {
                // The file has only `b` blocks before here: go to its start
                // and report what the drive would (emulators differ on
                // spacing back past BOT).
                if b > 0 {
                    self.bsr(start, b as i32)?;
                }
                let what = if f == 0 {
                    "beginning of tape"
                } else {
                    "a filemark"
                };
                Err(self.medium_error(
                    self.pos,
                    format!("{what} reached after spacing back over {b} of {n} blocks"),
                ))
            }
        } else {
            self.bsr(start, n)
        }
    }

    fn seek_end_of_data(&mut self) -> DeviceResult<()> {
        self.take_pending()?;
        self.writing = false;
        self.early_warning = false;
        if self.no_read_position() {
            return self.seek_end_of_data_by_files();
        }
        if self.driver_counters_unknown()? {
            // MTEOM spaces over filemarks and the driver counts them only
            // from a known file number (lost after LOCATE or a reset).
            self.rewind()?;
        }
        self.mt(MtOpCode::Eom, 1)
            .map_err(|e| self.errno_error(e, "going to end of data (MTEOM)"))?;
        let st = self.sync_from_driver()?;
        match (st.file, st.block) {
            // Absurd counts come from drives that report no residue.
            (Some(f), _) if f >= SPACE_MAX as u32 => {
                self.pos = Pos::default();
                Err(DeviceError::InvalidRequest {
                    device: self.name.clone(),
                    detail: "after MTEOM the st driver reports an impossible file number; the \
                             drive reports no residue when spacing"
                        .into(),
                })
            }
            (Some(_), Some(b)) => {
                if b == 0 && self.lba_support == Some(true) {
                    self.pos.lba = self.read_lba();
                    self.note_position_as_file_start();
                }
                self.eod = true;
                Ok(())
            }
            // The last file has no filemark: count its blocks.
            (Some(f), None) => {
                self.recover_block(f, true)?;
                self.eod = true;
                Ok(())
            }
            (None, _) => Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: "after MTEOM the st driver does not know the file number".into(),
            }),
        }
    }

    /// File and block from this module's bookkeeping; a block number lost by
    /// an operation is recovered here (which moves the tape). `logical` is
    /// the drive's READ POSITION, or [`LOGICAL_UNKNOWN`] without one.
    fn position(&mut self) -> DeviceResult<TapePosition> {
        if self.pos.file.is_none() {
            let st = self.st_status()?;
            match (st.file, st.block) {
                (Some(f), Some(b)) => {
                    self.pos.file = Some(f);
                    self.pos.block = Some(b);
                }
                _ => {
                    return Err(DeviceError::InvalidRequest {
                        device: self.name.clone(),
                        detail: "the tape position is unknown (the st driver lost the file \
                                 number); rewind or locate a tape file first"
                            .into(),
                    })
                }
            }
        }
        let f = self.pos.file.expect("set above");
        if self.pos.block.is_none() {
            let at_eod = self.st_status()?.at_eod();
            self.recover_block(f, at_eod)?;
        }
        if self.pos.lba.is_none() {
            self.pos.lba = self.read_lba();
        }
        Ok(TapePosition {
            file: f,
            block: self.pos.block.expect("recovered above"),
            logical: self.pos.lba.unwrap_or(LOGICAL_UNKNOWN),
        })
    }

    /// Go to (file, block) with SCSI LOCATE where the drive has READ
    /// POSITION and LOCATE, else by spacing.
    fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()> {
        self.take_pending()?;
        if self.writing {
            // As st does before repositioning after a write.
            self.write_filemarks(1, false)?;
        }
        self.early_warning = false;
        if self.lba_support.is_none() {
            let _ = self.read_lba();
        }
        if self.lba_support == Some(true) && self.locate_support != Some(false) {
            match self.locate_by_address(file, block) {
                Ok(()) => return Ok(()),
                Err(LocateFailure::Device(e)) => return Err(e),
                Err(LocateFailure::Unsupported) => {
                    tracing::debug!(device = %self.name, file, block, "locating by spacing");
                }
            }
        }
        self.locate_by_spacing(file, block)
    }

    fn status(&mut self) -> DeviceResult<DriveStatus> {
        let st = self.st_status()?;
        let position = match self.pos {
            Pos {
                file: Some(file),
                block: Some(block),
                lba,
            } => TapePosition {
                file,
                block,
                logical: lba.unwrap_or(LOGICAL_UNKNOWN),
            },
            _ => TapePosition {
                file: st.file.unwrap_or(0),
                block: st.block.unwrap_or(0),
                logical: LOGICAL_UNKNOWN,
            },
        };
        Ok(DriveStatus {
            online: st.online() && !st.door_open(),
            write_protected: st.write_protected() || self.read_only || self.write_protect_seen,
            at_bot: self.pos.file == Some(0) && self.pos.block == Some(0),
            // After a write the position is always the end of data.
            at_eod: self.eod || (st.at_eod() && !st.at_eot()),
            early_warning: st.at_eot() || self.early_warning,
            position,
            barcode: None,
        })
    }

    fn max_block_size(&self) -> usize {
        self.max_block
    }

    /// From the tape capacity log page (0x31) or, failing that, cartridge
    /// memory (MAM attribute 0000h): the drive's estimate of the native
    /// capacity left in the current partition, in MiB, counted from what it
    /// has written to the medium. An estimate: the drive's own compression
    /// makes more fit, data still in its buffer is not counted, and early
    /// warning comes somewhat before the end it measures to. `None` when
    /// the drive reports neither (scsi_debug and tgt do not).
    fn eject(&mut self) -> DeviceResult<()> {
        self.unload()
    }

    /// MTERASE from the current position (st sends ERASE with the LONG bit
    /// for a long erase).
    fn erase(&mut self, long: bool) -> DeviceResult<()> {
        self.take_pending()?;
        if self.read_only {
            return Err(DeviceError::WriteProtected {
                device: self.name.clone(),
            });
        }
        self.writing = false;
        self.truncate_after(self.pos.file);
        self.simple(MtOpCode::Erase, long as i32, "erasing")?;
        self.eod = true;
        Ok(())
    }

    fn cartridge_memory(&mut self) -> DeviceResult<Attributes> {
        self.take_pending()?;
        self.scsi().read_attributes().map_err(|e| self.sg_error(e))
    }

    fn write_cartridge_memory(&mut self, attributes: &[super::sg::Attribute]) -> DeviceResult<()> {
        self.take_pending()?;
        if self.read_only {
            return Err(DeviceError::WriteProtected {
                device: self.name.clone(),
            });
        }
        self.scsi()
            .write_attributes(attributes)
            .map_err(|e| self.sg_error(e))
    }

    fn positioning(&self) -> Option<super::PositioningReport> {
        Some(super::PositioningReport {
            read_position: self.lba_support,
            locate: self.locate_support,
            ..self.landings.clone()
        })
    }

    fn room_before_early_warning(&mut self) -> Option<u64> {
        let partition = self.st_status().ok()?.partition;
        let capacity = match self.scsi().tape_capacity() {
            Ok(c) => Some(c),
            Err(e) => {
                self.keep_disruption(&e);
                None
            }
        };
        let mam = match capacity.as_ref().and_then(|c| c.remaining_mib(partition)) {
            Some(_) => None,
            None if self.pending.is_some() => None,
            None => match self.scsi().read_attributes() {
                Ok(a) => Some(a),
                Err(e) => {
                    self.keep_disruption(&e);
                    None
                }
            },
        };
        room_from(capacity.as_ref(), mam.as_ref(), partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// `_IOC(dir, type, nr, size)` as include/uapi/asm-generic/ioctl.h
    /// encodes it (x86_64: 8 bits nr, 8 bits type, 14 bits size, 2 bits dir).
    const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
    }
    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    #[test]
    fn structs_match_the_kernel_layout() {
        assert_eq!(size_of::<MtOp>(), 8);
        assert_eq!(offset_of!(MtOp, mt_count), 4);
        assert_eq!(size_of::<MtPos>(), size_of::<libc::c_long>());
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(size_of::<MtGet>(), 48);
            assert_eq!(offset_of!(MtGet, mt_gstat), 24);
            assert_eq!(offset_of!(MtGet, mt_fileno), 40);
            assert_eq!(offset_of!(MtGet, mt_blkno), 44);
        }
    }

    #[test]
    fn request_numbers_are_the_ioc_encodings() {
        assert_eq!(MTIOCTOP, ioc(IOC_WRITE, b'm', 1, size_of::<MtOp>()));
        assert_eq!(MTIOCGET, ioc(IOC_READ, b'm', 2, size_of::<MtGet>()));
        assert_eq!(MTIOCPOS, ioc(IOC_READ, b'm', 3, size_of::<MtPos>()));
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(MTIOCTOP, 0x40086d01);
            assert_eq!(MTIOCGET, 0x80306d02);
            assert_eq!(MTIOCPOS, 0x80086d03);
        }
    }

    #[test]
    fn op_codes_match_mtio_h() {
        use MtOpCode::*;
        let codes = [
            (Fsf, 1),
            (Bsf, 2),
            (Fsr, 3),
            (Bsr, 4),
            (Weof, 5),
            (Rewind, 6),
            (Offline, 7),
            (Eom, 12),
            (Erase, 13),
            (SetBlockSize, 20),
            (Seek, 22),
            (Lock, 28),
            (Unlock, 29),
            (Load, 30),
            (Unload, 31),
            (Compression, 32),
            (WeofImmediate, 35),
        ];
        for (op, n) in codes {
            assert_eq!(op as i16, n, "{op:?}");
        }
    }

    #[test]
    fn status_decoding() {
        let g = MtGet {
            mt_type: 0x72,
            mt_resid: 0,
            mt_dsreg: 0x58 << 24,
            mt_gstat: (GMT_BOT | GMT_ONLINE | GMT_WR_PROT | GMT_IM_REP_EN) as libc::c_long,
            mt_erreg: 0,
            mt_fileno: 0,
            mt_blkno: 0,
        };
        let s = StStatus::decode(&g);
        assert!(s.at_bot() && s.online() && s.write_protected());
        assert!(!s.at_eod() && !s.at_eot() && !s.door_open() && !s.at_filemark());
        assert_eq!(
            (s.file, s.block, s.block_size, s.density),
            (Some(0), Some(0), 0, 0x58)
        );
        let g = MtGet {
            mt_gstat: (GMT_EOD | GMT_ONLINE) as libc::c_long,
            mt_fileno: 3,
            mt_blkno: -1,
            mt_dsreg: 512,
            ..MtGet::default()
        };
        let s = StStatus::decode(&g);
        assert!(s.at_eod());
        assert_eq!((s.file, s.block, s.block_size), (Some(3), None, 512));
        let g = MtGet {
            mt_gstat: GMT_DR_OPEN as libc::c_long,
            mt_fileno: -1,
            mt_blkno: -1,
            ..MtGet::default()
        };
        let s = StStatus::decode(&g);
        assert!(s.door_open() && !s.online());
        assert_eq!((s.file, s.block), (None, None));
        // EOF and EOT bits in the upper half of a 32-bit word survive a
        // sign-extended long.
        let g = MtGet {
            mt_gstat: (GMT_EOF | GMT_EOT) as u32 as i32 as libc::c_long,
            ..MtGet::default()
        };
        let s = StStatus::decode(&g);
        assert!(s.at_filemark() && s.at_eot());
    }

    #[test]
    fn position_arithmetic() {
        let p = Pos::bot().next_block().next_block();
        assert_eq!(
            p,
            Pos {
                file: Some(0),
                block: Some(2),
                lba: Some(2)
            }
        );
        let p = p.next_files(2);
        assert_eq!(
            p,
            Pos {
                file: Some(2),
                block: Some(0),
                lba: Some(4)
            }
        );
        let unknown = Pos {
            file: Some(1),
            block: None,
            lba: None,
        };
        assert_eq!(unknown.next_block(), unknown);
        assert_eq!(unknown.next_files(1).block, Some(0));
    }

    #[test]
    fn locate_corrections() {
        use LocateCorrection::*;
        assert_eq!(locate_correction(7, 7), Done);
        // Past the filemark it was sent to (object 6 is a filemark).
        assert_eq!(locate_correction(6, 7), BackOne);
        // Stopped before it, on the other side.
        assert_eq!(locate_correction(7, 6), ForwardOne);
        assert_eq!(locate_correction(0, 1), BackOne);
        assert_eq!(locate_correction(1, 0), ForwardOne);
        for (target, actual) in [(7, 9), (9, 7), (0, 100), (100, 0), (5, u64::MAX)] {
            assert_eq!(
                locate_correction(target, actual),
                Again,
                "{target} {actual}"
            );
        }
    }

    fn log_page(page: u8, params: &[(u16, u32)]) -> Vec<u8> {
        let mut b = vec![page, 0, 0, 0];
        for (code, value) in params {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&[0x03, 4]);
            b.extend_from_slice(&value.to_be_bytes());
        }
        let len = (b.len() - 4) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// READ ATTRIBUTE data with the remaining and maximum capacity.
    fn mam(remaining_mib: u64) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, v) in [(0x0000u16, remaining_mib), (0x0001, 17_166_336)] {
            body.extend_from_slice(&id.to_be_bytes());
            body.push(0x80);
            body.extend_from_slice(&8u16.to_be_bytes());
            body.extend_from_slice(&v.to_be_bytes());
        }
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend(body);
        b
    }

    #[test]
    fn room_before_early_warning_from_drive_reports() {
        use crate::device::sg::{parse_attributes, parse_log_page};
        let capacity = |params: &[(u16, u32)]| {
            TapeCapacity::from_log(&parse_log_page(&log_page(0x31, params)).unwrap())
        };
        let lto = capacity(&[(1, 12_000), (2, 0), (3, 17_166_336), (4, 0)]);
        let attrs = parse_attributes(&mam(9_000)).unwrap();
        // The log page first (current while mounted), in MiB.
        assert_eq!(
            room_from(Some(&lto), Some(&attrs), 0),
            Some(12_000 * 1_048_576)
        );
        // Cartridge memory when the page is missing or lacks the partition.
        assert_eq!(room_from(None, Some(&attrs), 0), Some(9_000 * 1_048_576));
        let empty = capacity(&[]);
        assert_eq!(
            room_from(Some(&empty), Some(&attrs), 0),
            Some(9_000 * 1_048_576)
        );
        // Cartridge memory is read for partition 0 only.
        assert_eq!(room_from(Some(&lto), Some(&attrs), 1), None);
        // A two-partition tape: partition 1 from the page.
        let two = capacity(&[(1, 100), (2, 200), (3, 1000), (4, 2000)]);
        assert_eq!(room_from(Some(&two), None, 1), Some(200 * 1_048_576));
        // Neither (scsi_debug, tgt).
        assert_eq!(room_from(None, None, 0), None);
        let no_capacity = parse_attributes(&[0, 0, 0, 0]).unwrap();
        assert_eq!(room_from(None, Some(&no_capacity), 0), None);
    }

    #[test]
    fn status_reports_the_partition() {
        let g = MtGet {
            mt_resid: 1,
            mt_gstat: GMT_ONLINE as libc::c_long,
            ..MtGet::default()
        };
        assert_eq!(StStatus::decode(&g).partition, 1);
        let g = MtGet {
            mt_resid: -1,
            ..MtGet::default()
        };
        assert_eq!(StStatus::decode(&g).partition, 0);
    }

    #[test]
    fn opening_a_missing_node_names_it() {
        let e = StDrive::open("/nonexistent/nst9", "/nonexistent/nst9").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/nonexistent/nst9"), "{msg}");
        assert!(msg.contains("no such tape drive"), "{msg}");
    }
}
