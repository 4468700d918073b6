//! `VirtualTape`: a tape cartridge kept in one ordinary file, behaving like a
//! Linux st drive on a non-rewinding device (`/dev/nstN`) in variable-block
//! mode.
//!
//! The image layout is specified byte by byte in docs/FORMAT.md, section
//! "Virtual tape image". In short: a 512-byte header (magic, layout version,
//! flags, capacity, early-warning zone, media id, barcode, CRC-32), then a
//! sequence of records. A data record is `len:u32le, data, crc32(data):u32le,
//! len:u32le`; a filemark is the 8 bytes `0x80000000:u32le, 0x80000000:u32le`.
//! Records can be walked both ways, and a record torn by a crash at the end of
//! the file is end of data (the next write cuts it off).
//!
//! Behaviour that mirrors st and that callers must know:
//! - Opening starts at the beginning of tape (logical record 0).
//! - Any write (block or filemark) truncates everything after the position.
//! - After a data write, `rewind`, `locate`, backward `space_filemarks` and
//!   closing (drop or [`VirtualTape::close`]) first write one filemark, as st
//!   does when the last operation was a write. Reads, `flush`, forward
//!   spacing, block spacing, `seek_end_of_data` and `write_filemarks` clear
//!   that state without writing anything (st's `MTWEOF 0` is a flush).
//! - Capacity counts data bytes only (framing and filemarks are free).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use super::{
    BlockRead, BlockWrite, DeviceError, DeviceResult, DriveStatus, ReadOutcome, TapeDrive,
    TapePosition, WriteOutcome,
};

/// First 16 bytes of every image.
pub const MAGIC: [u8; 16] = *b"TAPIRVTAPE\r\n\x1a\n\0\0";
/// Layout version this code writes and reads.
pub const LAYOUT_VERSION: u16 = 1;
/// Size of the version-1 header; records start right after it.
pub const HEADER_LEN: usize = 512;
/// Header flag bit 0: the cartridge is write-protected.
pub const FLAG_WRITE_PROTECTED: u32 = 1;
/// Leading and trailing word of a filemark record.
pub const FILEMARK_WORD: u32 = 0x8000_0000;
/// Largest data length the record framing can express.
pub const MAX_RECORD_LEN: u32 = 0x7FFF_FFFF;
/// Largest block this drive writes or reads: 1 MiB.
pub const MAX_BLOCK_SIZE: usize = 1 << 20;
/// Longest barcode the header holds.
pub const BARCODE_MAX: usize = 32;

/// Framing bytes around a data record's payload: leading length, CRC, trailing length.
const DATA_OVERHEAD: u64 = 12;
/// Size of a filemark record.
const FILEMARK_LEN: u64 = 8;
/// Filemarks written per `write` call when several are requested.
const FILEMARK_CHUNK: usize = 64;
const FILEMARK_BYTES: [u8; 8] = [0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x80];
/// `FILEMARK_CHUNK` filemark records back to back.
const FILEMARK_RUN: [u8; FILEMARK_CHUNK * 8] = {
    let mut run = [0u8; FILEMARK_CHUNK * 8];
    let mut i = 0;
    while i < run.len() {
        run[i] = FILEMARK_BYTES[i % 8];
        i += 1;
    }
    run
};
/// Window used to walk record framing at open.
const INDEX_WINDOW: usize = 32 * 1024;

// Header field offsets (version 1).
const OFF_VERSION: usize = 16;
const OFF_HEADER_LEN: usize = 18;
const OFF_FLAGS: usize = 20;
const OFF_CAPACITY: usize = 24;
const OFF_EW_ZONE: usize = 32;
const OFF_MEDIA_ID: usize = 40;
const OFF_BARCODE: usize = 56;
const OFF_CRC: usize = HEADER_LEN - 4;

/// Faults a test can inject into a virtual tape, from `<image>.faults.json`
/// at open or via [`VirtualTape::set_faults`]. Block numbers are logical
/// record indexes from the beginning of tape (blocks and filemarks counted),
/// except for `kill_after_blocks`, which counts writes since the open.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// A data-block write at this logical record fails with `MediumError`;
    /// nothing is written and the position does not move. Filemark writes
    /// are not affected.
    pub fail_write_at_block: Option<u64>,
    /// Reads of this logical record fail with `MediumError`; the position
    /// moves past it, like a drive that gives up on a block.
    pub fail_read_at_block: Option<u64>,
    /// Reads of this data block succeed but the byte in the middle of the
    /// returned data is inverted. The image is not changed.
    pub corrupt_read_at_block: Option<u64>,
    /// Writes of this logical record and every later one report early warning.
    pub early_warning_at_block: Option<u64>,
    /// How many times the read fault fires before reads of that record
    /// succeed (for retry tests); `None`: it always fires.
    pub read_fail_count: Option<u32>,
    /// A crash: once this drive has written this many data blocks since it
    /// was opened, the next block or filemark write does not happen; the
    /// process kills itself with SIGKILL instead (0: the first write). No
    /// destructor runs and nothing else is flushed, written or closed.
    pub kill_after_blocks: Option<u64>,
    /// With `kill_after_blocks`: the dying write leaves a torn record, the
    /// first half of its bytes (a block's record as framed, or 4 bytes of
    /// a filemark), written where the record would have gone.
    pub kill_torn: bool,
    /// With `kill_after_blocks`: power loss rather than a process crash.
    /// The image is first cut back to what the last fsync made durable, so
    /// every record written since is lost (any torn record then follows
    /// what is left).
    pub kill_lose_unsynced: bool,
    /// Once this drive has written this many data blocks since it was
    /// opened, the next block, filemark or flush fails the way a drive
    /// reports trouble with data it had already accepted: everything
    /// written since the last sync is cut from the image (it never left
    /// the drive's buffer) and the call fails with a deferred error, or
    /// with a reset's unit attention when `lose_buffer_as_reset` is set.
    /// It fires once per open.
    pub lose_buffer_after_blocks: Option<u64>,
    /// The same, at the n-th flush or synchronous filemark since the open
    /// (1: the first).
    pub lose_buffer_at_sync: Option<u64>,
    pub lose_buffer_as_reset: bool,
}

/// Where the fault sidecar of an image lives: `<image>.faults.json`.
pub fn faults_path(image: &Path) -> PathBuf {
    let mut s: OsString = image.as_os_str().to_owned();
    s.push(".faults.json");
    PathBuf::from(s)
}

/// Whether `barcode` is acceptable: 1 to 32 characters of `A-Z a-z 0-9 _ -`.
pub fn valid_barcode(barcode: &str) -> bool {
    !barcode.is_empty()
        && barcode.len() <= BARCODE_MAX
        && barcode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The decoded fixed header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    flags: u32,
    capacity: u64,
    early_warning_zone: u64,
    media_id: [u8; 16],
    barcode: String,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..16].copy_from_slice(&MAGIC);
        h[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        h[OFF_HEADER_LEN..OFF_HEADER_LEN + 2].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        h[OFF_CAPACITY..OFF_CAPACITY + 8].copy_from_slice(&self.capacity.to_le_bytes());
        h[OFF_EW_ZONE..OFF_EW_ZONE + 8].copy_from_slice(&self.early_warning_zone.to_le_bytes());
        h[OFF_MEDIA_ID..OFF_MEDIA_ID + 16].copy_from_slice(&self.media_id);
        let b = self.barcode.as_bytes();
        h[OFF_BARCODE..OFF_BARCODE + b.len()].copy_from_slice(b);
        let crc = crc32fast::hash(&h[..OFF_CRC]);
        h[OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN], device: &str) -> DeviceResult<Header> {
        let invalid = |detail: String| DeviceError::InvalidRequest {
            device: device.to_string(),
            detail,
        };
        if h[..16] != MAGIC {
            return Err(invalid(
                "not a tapir virtual tape image (the magic bytes TAPIRVTAPE are missing)".into(),
            ));
        }
        let version = u16::from_le_bytes([h[OFF_VERSION], h[OFF_VERSION + 1]]);
        let header_len = u16::from_le_bytes([h[OFF_HEADER_LEN], h[OFF_HEADER_LEN + 1]]);
        let stored_crc = u32::from_le_bytes(h[OFF_CRC..].try_into().expect("4 bytes"));
        // The CRC is checked first when the header is of this version's
        // size, so a damaged version field reads as damage, not as a
        // version from the future.
        if header_len as usize == HEADER_LEN && crc32fast::hash(&h[..OFF_CRC]) != stored_crc {
            return Err(DeviceError::MediumError {
                device: device.to_string(),
                file: 0,
                block: 0,
                detail: "the cartridge header is damaged (its CRC-32 does not match)".into(),
            });
        }
        if version != LAYOUT_VERSION {
            return Err(DeviceError::Unsupported {
                device: device.to_string(),
                what: format!(
                    "virtual tape layout version {version} (this tapir reads version {LAYOUT_VERSION}; use a newer tapir)"
                ),
            });
        }
        if header_len as usize != HEADER_LEN {
            return Err(invalid(format!(
                "virtual tape header length is {header_len}, version {LAYOUT_VERSION} requires {HEADER_LEN}"
            )));
        }
        let le64 = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        let flags = u32::from_le_bytes(h[OFF_FLAGS..OFF_FLAGS + 4].try_into().expect("4 bytes"));
        let capacity = le64(OFF_CAPACITY);
        let early_warning_zone = le64(OFF_EW_ZONE);
        if capacity == 0 || early_warning_zone > capacity {
            return Err(invalid(format!(
                "virtual tape header has capacity {capacity} and early-warning zone {early_warning_zone}; the zone must not exceed a non-zero capacity"
            )));
        }
        let mut media_id = [0u8; 16];
        media_id.copy_from_slice(&h[OFF_MEDIA_ID..OFF_MEDIA_ID + 16]);
        let field = &h[OFF_BARCODE..OFF_BARCODE + BARCODE_MAX];
        let end = field.iter().position(|&b| b == 0).unwrap_or(BARCODE_MAX);
        let barcode = std::str::from_utf8(&field[..end])
            .ok()
            .filter(|b| valid_barcode(b) && field[end..].iter().all(|&b| b == 0))
            .ok_or_else(|| invalid("virtual tape header has an invalid barcode field".into()))?
            .to_string();
        Ok(Header {
            flags,
            capacity,
            early_warning_zone,
            media_id,
            barcode,
        })
    }

    /// Write-protected if the flag says so or if any flag unknown to this
    /// version is set (a newer writer's image is only read, never altered).
    fn write_protected(&self) -> bool {
        self.flags != 0
    }
}

fn read_header(file: &File, device: &str) -> DeviceResult<Header> {
    let mut h = [0u8; HEADER_LEN];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => Header::decode(&h, device),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(DeviceError::InvalidRequest {
            device: device.to_string(),
            detail: format!(
                "not a tapir virtual tape image (shorter than its {HEADER_LEN}-byte header)"
            ),
        }),
        Err(e) => Err(DeviceError::io(device, "reading the cartridge header", e)),
    }
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Reads 4-byte words at arbitrary offsets through a small window, so
/// walking the framing of many small records costs few system calls.
struct WordReader<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
    len: usize,
}

impl WordReader<'_> {
    /// The little-endian word at `off`, which must satisfy `off + 4 <= file_len`.
    fn word(&mut self, off: u64) -> io::Result<u32> {
        let in_window = off >= self.start && off + 4 <= self.start + self.len as u64;
        if !in_window {
            let want = (self.file_len - off).min(INDEX_WINDOW as u64) as usize;
            self.file.read_exact_at(&mut self.buf[..want], off)?;
            self.start = off;
            self.len = want;
        }
        let at = (off - self.start) as usize;
        Ok(u32::from_le_bytes(
            self.buf[at..at + 4].try_into().expect("4 bytes"),
        ))
    }
}

/// The record index of an image: start offsets of every record plus the end
/// of recorded data, and the logical indexes of filemarks.
struct Index {
    offsets: Vec<u64>,
    filemarks: Vec<usize>,
}

/// Walk the framing from the header to the first violation or end of file.
fn build_index(file: &File, file_len: u64) -> io::Result<Index> {
    let mut r = WordReader {
        file,
        file_len,
        buf: vec![0u8; INDEX_WINDOW],
        start: 0,
        len: 0,
    };
    let mut offsets = Vec::new();
    let mut filemarks = Vec::new();
    let mut off = HEADER_LEN as u64;
    while off + 4 <= file_len {
        let lead = r.word(off)?;
        let size = match lead {
            FILEMARK_WORD => FILEMARK_LEN,
            1..=MAX_RECORD_LEN => lead as u64 + DATA_OVERHEAD,
            _ => break,
        };
        if off + size > file_len || r.word(off + size - 4)? != lead {
            break;
        }
        if lead == FILEMARK_WORD {
            filemarks.push(offsets.len());
        }
        offsets.push(off);
        off += size;
    }
    offsets.push(off);
    Ok(Index { offsets, filemarks })
}

/// Write all of `bufs` with `writev` on an `O_APPEND` file.
fn append_all(mut file: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the image file accepted no more bytes",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A file-backed tape cartridge in a virtual drive. See the module docs.
pub struct VirtualTape {
    name: String,
    path: PathBuf,
    /// Opened read + append (or read-only when the file or its filesystem is).
    file: File,
    header: Header,
    write_protected: bool,
    /// `offsets[i]` is where record `i` starts; the last entry is the end of
    /// recorded data. Kind and length follow from the distance to the next
    /// entry: 8 bytes is a filemark, anything else a data record.
    offsets: Vec<u64>,
    /// Logical indexes of filemark records, ascending.
    filemarks: Vec<usize>,
    /// Current logical position: the index of the next record.
    pos: usize,
    /// Length of the image file (may exceed the end of data by a torn tail).
    file_len: u64,
    faults: Faults,
    read_faults_fired: u32,
    /// Data blocks written since the open (for `kill_after_blocks`).
    blocks_written: u64,
    /// The `lose_buffer_*` fault has fired.
    lost_buffer: bool,
    /// Flushes and synchronous filemarks asked for since the open.
    syncs_asked: u64,
    /// Length of the image that the last fsync made durable: the file as
    /// it was at open or at the last sync, cut to the shortest length it
    /// has had since (for `kill_lose_unsynced`).
    durable_len: u64,
    /// The last operation was a data write (st: `rw == ST_WRITING`).
    pending_write: bool,
    /// Capacity and early-warning zone in force when lower than the
    /// header's (an image on a removable disk: the free space decides).
    limit: Option<(u64, u64)>,
    /// Speed model of a real drive, when the library asks for one.
    sim: Option<super::drivesim::DriveSim>,
    /// Held while the drive is open through a library; released on drop.
    /// Declared last so it is released after the image file is closed.
    lock: Option<Flock<File>>,
}

impl std::fmt::Debug for VirtualTape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualTape")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("barcode", &self.header.barcode)
            .field("records", &self.records())
            .field("pos", &self.pos)
            .finish()
    }
}

impl VirtualTape {
    /// Create a blank cartridge image at `path` (which must not exist).
    /// `capacity` counts data bytes; the last `early_warning_zone` bytes of
    /// it are the early-warning zone.
    pub fn create(
        path: impl AsRef<Path>,
        barcode: &str,
        capacity: u64,
        early_warning_zone: u64,
    ) -> DeviceResult<()> {
        let path = path.as_ref();
        let device = path.display().to_string();
        let invalid = |detail: String| DeviceError::InvalidRequest {
            device: device.clone(),
            detail,
        };
        if !valid_barcode(barcode) {
            return Err(invalid(format!(
                "barcode {barcode:?} is invalid: use 1 to {BARCODE_MAX} characters of A-Z, a-z, 0-9, '_' and '-'"
            )));
        }
        if capacity == 0 || early_warning_zone > capacity {
            return Err(invalid(format!(
                "capacity {capacity} with early-warning zone {early_warning_zone}: capacity must be at least 1 byte and the zone no larger than it"
            )));
        }
        let header = Header {
            flags: 0,
            capacity,
            early_warning_zone,
            media_id: uuid::Uuid::new_v4().into_bytes(),
            barcode: barcode.to_string(),
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| DeviceError::io(&device, "creating the cartridge image", e))?;
        let result = file
            .write_all_at(&header.encode(), 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_parent_dir(path));
        if let Err(e) = result {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(DeviceError::io(&device, "writing the cartridge header", e));
        }
        Ok(())
    }

    /// Open the cartridge image at `path` as a drive called `device_name`
    /// (used in every message), positioned at the beginning of tape. Faults
    /// are loaded from `<image>.faults.json` if that file exists.
    pub fn open(path: impl AsRef<Path>, device_name: &str) -> DeviceResult<VirtualTape> {
        let path = path.as_ref().to_path_buf();
        let device = device_name.to_string();
        let mut read_only = false;
        let file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                read_only = true;
                File::open(&path).map_err(|e| {
                    DeviceError::io(&device, format!("opening {}", path.display()), e)
                })?
            }
            Err(e) => {
                return Err(DeviceError::io(
                    &device,
                    format!("opening {}", path.display()),
                    e,
                ))
            }
        };
        let header = read_header(&file, &device)?;
        let file_len = file
            .metadata()
            .map_err(|e| DeviceError::io(&device, "reading the image size", e))?
            .len();
        let index = build_index(&file, file_len)
            .map_err(|e| DeviceError::io(&device, "indexing the cartridge's records", e))?;
        let end = *index.offsets.last().expect("end offset");
        if end < file_len {
            tracing::warn!(
                device = %device,
                torn_bytes = file_len - end,
                "cartridge image ends with an incomplete record (interrupted write); \
                 treating it as end of data, the next write removes it"
            );
        }
        let faults = Self::load_faults(&path, &device)?;
        Ok(VirtualTape {
            name: device,
            write_protected: read_only || header.write_protected(),
            path,
            file,
            header,
            offsets: index.offsets,
            filemarks: index.filemarks,
            pos: 0,
            file_len,
            faults,
            read_faults_fired: 0,
            blocks_written: 0,
            lost_buffer: false,
            syncs_asked: 0,
            durable_len: file_len,
            pending_write: false,
            limit: None,
            sim: None,
            lock: None,
        })
    }

    fn load_faults(path: &Path, device: &str) -> DeviceResult<Faults> {
        let fpath = faults_path(path);
        match std::fs::read(&fpath) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DeviceError::InvalidRequest {
                device: device.to_string(),
                detail: format!("fault file {} is invalid: {e}", fpath.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Faults::default()),
            Err(e) => Err(DeviceError::io(
                device,
                format!("reading fault file {}", fpath.display()),
                e,
            )),
        }
    }

    /// Set or clear the write-protect flag in the header of the image at
    /// `path` (one 512-byte write at offset 0, then fsync). A drive already
    /// open on the image keeps the state it read at open.
    pub fn set_write_protected(path: impl AsRef<Path>, protected: bool) -> DeviceResult<()> {
        let path = path.as_ref();
        let device = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| DeviceError::io(&device, "opening the cartridge image", e))?;
        let mut header = read_header(&file, &device)?;
        if header.flags & !FLAG_WRITE_PROTECTED != 0 {
            return Err(DeviceError::Unsupported {
                device,
                what: format!(
                    "changing the write protection of an image with header flags {:#x} (written by a newer tapir)",
                    header.flags
                ),
            });
        }
        if protected {
            header.flags |= FLAG_WRITE_PROTECTED;
        } else {
            header.flags &= !FLAG_WRITE_PROTECTED;
        }
        file.write_all_at(&header.encode(), 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| DeviceError::io(&device, "rewriting the cartridge header", e))
    }

    /// Replace the injected faults (and restart the read-fault counter).
    /// Emulate a real drive's speed, buffer and backhitches.
    pub fn set_speed_model(&mut self, cfg: super::drivesim::DriveSimConfig) {
        self.sim = Some(super::drivesim::DriveSim::new(cfg));
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.read_faults_fired = 0;
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn barcode(&self) -> &str {
        &self.header.barcode
    }

    /// Capacity in data bytes (the header's, or a lower limit in force).
    pub fn capacity(&self) -> u64 {
        self.limit.map_or(self.header.capacity, |(c, _)| c)
    }

    /// Size of the early-warning zone at the end of the capacity, in bytes.
    pub fn early_warning_zone(&self) -> u64 {
        self.limit
            .map_or(self.header.early_warning_zone, |(_, z)| z)
    }

    /// Limit the capacity to `capacity` data bytes with an early-warning
    /// zone of `early_warning_zone`, for as long as this drive is open (the
    /// header is not changed). A limit above the header's is ignored: an
    /// image on a removable disk can hold what the disk's free space allows.
    pub fn limit_capacity(&mut self, capacity: u64, early_warning_zone: u64) {
        if capacity < self.header.capacity {
            self.limit = Some((capacity, early_warning_zone.min(capacity)));
        } else {
            self.limit = None;
        }
    }

    /// The current position (as [`TapeDrive::position`], without `&mut`).
    pub fn position_now(&self) -> TapePosition {
        self.position_at(self.pos)
    }

    /// Data bytes written before early warning is reported.
    fn threshold(&self) -> u64 {
        self.capacity() - self.early_warning_zone()
    }

    /// The cartridge's media id (random, set at creation).
    pub fn media_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.header.media_id)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_write_protected(&self) -> bool {
        self.write_protected
    }

    /// Whether the image's header says write-protected (whatever the file's
    /// own permissions or its filesystem).
    pub fn header_write_protected(&self) -> bool {
        self.header.write_protected()
    }

    /// Records (blocks and filemarks) between beginning of tape and end of data.
    pub fn records(&self) -> u64 {
        (self.offsets.len() - 1) as u64
    }

    /// Data bytes recorded on the whole cartridge.
    pub fn used_bytes(&self) -> u64 {
        self.used_at(self.offsets.len() - 1)
    }

    /// Close the drive as st closes a non-rewinding device: if the last
    /// operation was a data write, write one filemark (durably). Unlike drop,
    /// this reports errors.
    pub fn close(mut self) -> DeviceResult<()> {
        if self.pending_write {
            self.write_filemarks(1, false)?;
        }
        Ok(())
    }

    /// Close the drive without the closing filemark: the medium is gone
    /// (a removable disk pulled), so nothing more may be written to it.
    pub fn abandon(mut self) {
        self.pending_write = false;
    }

    /// Keep a library's drive lock for as long as this drive is open.
    pub(crate) fn attach_lock(&mut self, lock: Flock<File>) {
        self.lock = Some(lock);
    }

    // ---- index arithmetic ----

    fn end(&self) -> usize {
        self.offsets.len() - 1
    }

    fn is_filemark(&self, i: usize) -> bool {
        self.offsets[i + 1] - self.offsets[i] == FILEMARK_LEN
    }

    /// Filemarks strictly before logical position `p`: the tape file number at `p`.
    fn filemarks_before(&self, p: usize) -> usize {
        self.filemarks.partition_point(|&f| f < p)
    }

    fn file_start(&self, file: usize) -> usize {
        if file == 0 {
            0
        } else {
            self.filemarks[file - 1] + 1
        }
    }

    /// Data bytes in the records before logical position `p`.
    fn used_at(&self, p: usize) -> u64 {
        let fms = self.filemarks_before(p) as u64;
        let blocks = p as u64 - fms;
        self.offsets[p] - HEADER_LEN as u64 - fms * FILEMARK_LEN - blocks * DATA_OVERHEAD
    }

    fn position_at(&self, p: usize) -> TapePosition {
        let file = self.filemarks_before(p);
        TapePosition {
            file: u32::try_from(file).unwrap_or(u32::MAX),
            block: (p - self.file_start(file)) as u64,
            logical: p as u64,
        }
    }

    fn early_warning_at(&self, p: usize) -> bool {
        let threshold = self.threshold();
        self.used_at(p) > threshold
            || self
                .faults
                .early_warning_at_block
                .is_some_and(|k| p as u64 > k)
    }

    // ---- error helpers ----

    fn medium_error(&self, p: usize, detail: impl Into<String>) -> DeviceError {
        let at = self.position_at(p);
        DeviceError::MediumError {
            device: self.name.clone(),
            file: at.file,
            block: at.block,
            detail: detail.into(),
        }
    }

    /// Forward spacing ran into end of data (the position is there now).
    fn end_of_data_error(&self) -> DeviceError {
        let at = self.position_at(self.pos);
        DeviceError::EndOfData {
            device: self.name.clone(),
            file: at.file,
            block: at.block,
        }
    }

    fn io_error(&self, context: &str, e: io::Error) -> DeviceError {
        let at = self.position_at(self.pos);
        DeviceError::io(
            &self.name,
            format!("{context} at tape file {}, block {}", at.file, at.block),
            e,
        )
    }

    fn check_writable(&self) -> DeviceResult<()> {
        if self.write_protected {
            Err(DeviceError::WriteProtected {
                device: self.name.clone(),
            })
        } else {
            Ok(())
        }
    }

    // ---- writing ----

    /// Forget everything from logical position `p` on, in the index and in
    /// the file (including any torn tail).
    fn truncate_at(&mut self, p: usize) -> DeviceResult<()> {
        if p < self.end() {
            self.offsets.truncate(p + 1);
            let keep = self.filemarks_before(p);
            self.filemarks.truncate(keep);
        }
        let end = self.offsets[p];
        if self.file_len != end {
            self.durable_len = self.durable_len.min(end);
            self.file
                .set_len(end)
                .map_err(|e| self.io_error("truncating the image", e))?;
            self.file_len = end;
        }
        Ok(())
    }

    /// Append the slices; on failure, try to cut the partial record off again.
    fn append(&mut self, bufs: &mut [IoSlice<'_>], context: &str) -> DeviceResult<()> {
        let start = self.file_len;
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        match append_all(&self.file, bufs) {
            Ok(()) => {
                self.file_len = start + total;
                Ok(())
            }
            Err(e) => {
                // Leave no partial record behind; if even that fails, make
                // the next write truncate (file_len no longer equals the end).
                self.durable_len = self.durable_len.min(start);
                self.file_len = match self.file.set_len(start) {
                    Ok(()) => start,
                    Err(_) => u64::MAX,
                };
                Err(self.io_error(context, e))
            }
        }
    }

    fn sync(&mut self) -> DeviceResult<()> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("syncing the image to disk", e))?;
        self.durable_len = self.file_len;
        Ok(())
    }

    /// The `kill_after_blocks` fault fires at this write.
    fn kill_fault_fires(&self) -> bool {
        self.faults
            .kill_after_blocks
            .is_some_and(|n| self.blocks_written >= n)
    }

    /// The `lose_buffer_*` faults: drop what was not synced (it was only
    /// in the drive's buffer) and report it as a drive would. `sync`: this
    /// is a flush or a synchronous filemark.
    fn lose_buffer_fault(&mut self, sync: bool) -> DeviceResult<()> {
        self.syncs_asked += u64::from(sync);
        let fires = !self.lost_buffer
            && (self
                .faults
                .lose_buffer_after_blocks
                .is_some_and(|n| self.blocks_written >= n)
                || (sync && self.faults.lose_buffer_at_sync == Some(self.syncs_asked)));
        if !fires {
            return Ok(());
        }
        self.lost_buffer = true;
        self.pending_write = false;
        // Records start at offsets; keep the whole ones the last sync made durable.
        let keep = self.offsets.partition_point(|&o| o <= self.durable_len);
        let p = keep.saturating_sub(1);
        self.truncate_at(p)?;
        self.pos = p;
        let at = self.position_at(p);
        tracing::debug!(device = %self.name, file = at.file, block = at.block, "lose-buffer fault");
        Err(if self.faults.lose_buffer_as_reset {
            DeviceError::UnitAttention {
                device: self.name.clone(),
                reason: super::sense::UnitAttention::PowerOnOrReset,
            }
        } else {
            DeviceError::DeferredError {
                device: self.name.clone(),
                detail: "medium error: write error (injected fault; buffered blocks lost)".into(),
            }
        })
    }

    /// Leave the image as the crash the kill fault asks for would: cut back
    /// to the durable length (`kill_lose_unsynced`), then the first half of
    /// `record`, the record being written at the position (`kill_torn`).
    /// Errors are ignored: the process is about to die.
    fn leave_image_as_crash_would(&mut self, record: &[u8]) {
        let mut cut = None;
        if self.faults.kill_torn {
            // The write would first have cut everything after the position.
            cut = Some(self.offsets[self.pos]);
        }
        if self.faults.kill_lose_unsynced {
            cut = Some(cut.map_or(self.durable_len, |c| c.min(self.durable_len)));
        }
        if let Some(c) = cut.filter(|&c| c < self.file_len) {
            let _ = self.file.set_len(c);
            self.file_len = c;
        }
        if self.faults.kill_torn {
            // O_APPEND: the torn part lands at the end of what is left.
            let half = &record[..record.len() / 2];
            let _ = append_all(&self.file, &mut [IoSlice::new(half)]);
        }
    }

    /// The `kill_after_blocks` fault: die now, mid-write, like a crash or a
    /// power loss. SIGKILL runs no destructor, flushes no buffer and writes
    /// no closing filemark.
    fn die_for_kill_fault(&mut self, record: &[u8]) -> ! {
        let blocks = self.blocks_written;
        tracing::debug!(device = %self.name, blocks, "kill fault: SIGKILL");
        self.leave_image_as_crash_would(record);
        // SAFETY: raise has no memory-safety preconditions; SIGKILL cannot
        // be caught, so the process ends here.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
        std::process::abort()
    }

    /// The implicit filemark st writes before rewind, locate, backward file
    /// spacing and close when the last operation was a data write.
    fn finish_pending_write(&mut self) -> DeviceResult<bool> {
        if self.pending_write {
            self.write_filemarks(1, false)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn read_fault_fires(&mut self, p: usize) -> bool {
        if self.faults.fail_read_at_block != Some(p as u64) {
            return false;
        }
        match self.faults.read_fail_count {
            Some(limit) if self.read_faults_fired >= limit => false,
            _ => {
                self.read_faults_fired = self.read_faults_fired.saturating_add(1);
                true
            }
        }
    }
}

impl BlockRead for VirtualTape {
    /// Reads the next record. Bytes of `buf` past the block are left as they were.
    fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<ReadOutcome> {
        self.pending_write = false;
        let p = self.pos;
        if p == self.end() {
            return Ok(ReadOutcome::EndOfData);
        }
        if self.read_fault_fires(p) {
            self.pos = p + 1;
            return Err(self.medium_error(p, "unrecoverable read error (injected fault)"));
        }
        if self.is_filemark(p) {
            self.pos = p + 1;
            return Ok(ReadOutcome::Filemark);
        }
        let n = (self.offsets[p + 1] - self.offsets[p] - DATA_OVERHEAD) as usize;
        if n > buf.len() {
            self.pos = p + 1;
            let at = self.position_at(p);
            return Err(DeviceError::BlockTooLarge {
                device: self.name.clone(),
                needed: n,
                buffer: buf.len(),
                file: at.file,
                block: at.block,
            });
        }
        let data_off = self.offsets[p] + 4;
        let stored_crc = if buf.len() >= n + 4 {
            // One pread for data and CRC; keep the caller's 4 bytes after the block.
            let mut saved = [0u8; 4];
            saved.copy_from_slice(&buf[n..n + 4]);
            let r = self.file.read_exact_at(&mut buf[..n + 4], data_off);
            let mut crc = [0u8; 4];
            crc.copy_from_slice(&buf[n..n + 4]);
            buf[n..n + 4].copy_from_slice(&saved);
            r.map_err(|e| self.io_error("reading a block", e))?;
            u32::from_le_bytes(crc)
        } else {
            let mut crc = [0u8; 4];
            self.file
                .read_exact_at(&mut buf[..n], data_off)
                .and_then(|()| self.file.read_exact_at(&mut crc, data_off + n as u64))
                .map_err(|e| self.io_error("reading a block", e))?;
            u32::from_le_bytes(crc)
        };
        self.pos = p + 1;
        if crc32fast::hash(&buf[..n]) != stored_crc {
            return Err(self.medium_error(
                p,
                "block data does not match its CRC-32 (the image file is damaged)",
            ));
        }
        if self.faults.corrupt_read_at_block == Some(p as u64) {
            buf[n / 2] ^= 0xFF;
        }
        Ok(ReadOutcome::Block(n))
    }
}

impl BlockWrite for VirtualTape {
    fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome> {
        self.check_writable()?;
        let n = block.len();
        if n == 0 || n > MAX_BLOCK_SIZE {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!(
                    "cannot write a block of {n} bytes: block sizes must be 1 to {MAX_BLOCK_SIZE} bytes"
                ),
            });
        }
        self.lose_buffer_fault(false)?;
        let p = self.pos;
        if self.faults.fail_write_at_block == Some(p as u64) {
            return Err(self.medium_error(p, "write error (injected fault)"));
        }
        let used = self.used_at(p);
        let after = used.saturating_add(n as u64);
        if after > self.capacity() {
            let at = self.position_at(p);
            return Err(DeviceError::EndOfMedium {
                device: self.name.clone(),
                file: at.file,
                block: at.block,
            });
        }
        let word = (n as u32).to_le_bytes();
        let crc = crc32fast::hash(block).to_le_bytes();
        if self.kill_fault_fires() {
            let record = [&word[..], block, &crc[..], &word[..]].concat();
            self.die_for_kill_fault(&record);
        }
        self.truncate_at(p)?;
        let mut bufs = [
            IoSlice::new(&word),
            IoSlice::new(block),
            IoSlice::new(&crc),
            IoSlice::new(&word),
        ];
        self.append(&mut bufs, "writing a block")?;
        let end = self.file_len;
        self.offsets.push(end);
        self.pos = p + 1;
        self.pending_write = true;
        self.blocks_written += 1;
        if let Some(sim) = self.sim.as_mut() {
            sim.write(n);
        }
        let threshold = self.threshold();
        let forced = self
            .faults
            .early_warning_at_block
            .is_some_and(|k| p as u64 >= k);
        if after > threshold || forced {
            Ok(WriteOutcome::EarlyWarning)
        } else {
            Ok(WriteOutcome::Written)
        }
    }

    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DeviceResult<()> {
        self.check_writable()?;
        self.lose_buffer_fault(count > 0 && !immediate)?;
        self.pending_write = false;
        if count > 0 {
            if self.kill_fault_fires() {
                self.die_for_kill_fault(&FILEMARK_BYTES);
            }
            let p = self.pos;
            self.truncate_at(p)?;
            let mut left = count as usize;
            while left > 0 {
                let now = left.min(FILEMARK_CHUNK);
                let mut bufs = [IoSlice::new(&FILEMARK_RUN[..now * FILEMARK_LEN as usize])];
                let start = self.file_len;
                self.append(&mut bufs, "writing filemarks")?;
                for i in 0..now {
                    self.filemarks.push(self.offsets.len() - 1);
                    self.offsets.push(start + (i as u64 + 1) * FILEMARK_LEN);
                }
                left -= now;
            }
            self.pos = self.end();
        }
        if !immediate {
            self.sync()?;
            if let Some(sim) = self.sim.as_mut() {
                sim.flush();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> DeviceResult<()> {
        if self.write_protected {
            self.pending_write = false;
            return Ok(());
        }
        self.lose_buffer_fault(true)?;
        self.pending_write = false;
        if let Some(sim) = self.sim.as_mut() {
            sim.flush();
        }
        self.sync()
    }
}

impl TapeDrive for VirtualTape {
    fn name(&self) -> &str {
        &self.name
    }

    /// A virtual drive is named by its library: the serial is derived from
    /// the device name, so each library's drive is told apart.
    fn identity(&mut self) -> Option<super::DriveIdentity> {
        let hash = blake3::hash(self.name.as_bytes());
        Some(super::DriveIdentity {
            vendor: Some("tapir".into()),
            model: Some("VIRTUAL-TAPE".into()),
            serial: Some(format!("VT{}", &hash.to_hex()[..10])),
            firmware: Some(env!("CARGO_PKG_VERSION").into()),
        })
    }

    fn streaming_stats(&self) -> Option<super::drivesim::StreamingStats> {
        self.sim.as_ref().map(|s| s.stats())
    }

    /// A file streams only when it simulates a drive.
    fn streams(&self) -> bool {
        self.sim.is_some()
    }

    fn room_before_early_warning(&mut self) -> Option<u64> {
        let threshold = self.threshold();
        Some(threshold.saturating_sub(self.used_at(self.pos)))
    }

    fn rewind(&mut self) -> DeviceResult<()> {
        self.finish_pending_write()?;
        self.pos = 0;
        Ok(())
    }

    fn space_filemarks(&mut self, count: i64) -> DeviceResult<()> {
        if count >= 0 {
            self.pending_write = false;
            if count == 0 {
                return Ok(());
            }
            let n = count as u64;
            let before = self.filemarks_before(self.pos);
            let available = (self.filemarks.len() - before) as u64;
            if n <= available {
                self.pos = self.filemarks[before + n as usize - 1] + 1;
                Ok(())
            } else {
                self.pos = self.end();
                Err(self.end_of_data_error())
            }
        } else {
            let mut n = count.unsigned_abs();
            if self.finish_pending_write()? {
                // st counts the filemark it just wrote (MTBSF count + 1).
                n += 1;
            }
            let before = self.filemarks_before(self.pos) as u64;
            if n <= before {
                self.pos = self.filemarks[(before - n) as usize];
                Ok(())
            } else {
                self.pos = 0;
                Err(self.medium_error(
                    0,
                    format!(
                        "beginning of tape reached after spacing back over {before} of {n} filemarks"
                    ),
                ))
            }
        }
    }

    fn space_blocks(&mut self, count: i64) -> DeviceResult<()> {
        self.pending_write = false;
        let p = self.pos;
        let file = self.filemarks_before(p);
        if count >= 0 {
            let limit = self.filemarks.get(file).copied().unwrap_or(self.end());
            let room = (limit - p) as u64;
            let n = count as u64;
            if n <= room {
                self.pos = p + n as usize;
                Ok(())
            } else {
                self.pos = limit;
                if limit == self.end() {
                    return Err(self.end_of_data_error());
                }
                Err(self.medium_error(
                    limit,
                    format!("a filemark reached after spacing forward over {room} of {n} blocks"),
                ))
            }
        } else {
            let start = self.file_start(file);
            let room = (p - start) as u64;
            let n = count.unsigned_abs();
            if n <= room {
                self.pos = p - n as usize;
                Ok(())
            } else {
                self.pos = start;
                let what = if start == 0 {
                    "beginning of tape"
                } else {
                    "a filemark"
                };
                Err(self.medium_error(
                    start,
                    format!("{what} reached after spacing back over {room} of {n} blocks"),
                ))
            }
        }
    }

    fn seek_end_of_data(&mut self) -> DeviceResult<()> {
        self.pending_write = false;
        self.pos = self.end();
        Ok(())
    }

    fn position(&mut self) -> DeviceResult<TapePosition> {
        Ok(self.position_at(self.pos))
    }

    fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()> {
        self.finish_pending_write()?;
        let f = file as usize;
        let files = self.filemarks.len() + 1;
        if f >= files {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!(
                    "cannot locate tape file {file}, block {block}: the cartridge has tape files 0 to {}",
                    files - 1
                ),
            });
        }
        let start = self.file_start(f);
        let end = self.filemarks.get(f).copied().unwrap_or(self.end());
        let blocks = (end - start) as u64;
        if block > blocks {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!(
                    "cannot locate tape file {file}, block {block}: that file has {blocks} blocks"
                ),
            });
        }
        self.pos = start + block as usize;
        Ok(())
    }

    fn status(&mut self) -> DeviceResult<DriveStatus> {
        Ok(DriveStatus {
            online: true,
            write_protected: self.write_protected,
            at_bot: self.pos == 0,
            at_eod: self.pos == self.end(),
            early_warning: self.early_warning_at(self.pos),
            position: self.position_at(self.pos),
            barcode: Some(self.header.barcode.clone()),
        })
    }

    fn max_block_size(&self) -> usize {
        MAX_BLOCK_SIZE
    }

    /// Everything from the position on is cut off; short and long erase
    /// are the same here.
    fn erase(&mut self, _long: bool) -> DeviceResult<()> {
        self.check_writable()?;
        self.pending_write = false;
        self.truncate_at(self.pos)
    }

    /// The image has exact positions and locates exactly.
    fn positioning(&self) -> Option<super::PositioningReport> {
        Some(super::PositioningReport {
            read_position: Some(true),
            locate: Some(true),
            ..Default::default()
        })
    }
}

impl Drop for VirtualTape {
    fn drop(&mut self) {
        if self.pending_write {
            if let Err(e) = self.write_filemarks(1, false) {
                tracing::warn!(device = %self.name, error = %e, "could not write the closing filemark");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn new_tape(dir: &tempfile::TempDir, capacity: u64, ew: u64) -> (PathBuf, VirtualTape) {
        let path = dir.path().join("TAP001L9.vtape");
        VirtualTape::create(&path, "TAP001L9", capacity, ew).unwrap();
        let tape = VirtualTape::open(&path, "vtape:test").unwrap();
        (path, tape)
    }

    fn block(tag: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| tag.wrapping_add((i % 251) as u8))
            .collect()
    }

    /// Read everything from the current position to end of data.
    fn read_all(tape: &mut VirtualTape) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_BLOCK_SIZE];
        loop {
            match tape.read_block(&mut buf).unwrap() {
                ReadOutcome::Block(n) => out.push(Ok(buf[..n].to_vec())),
                ReadOutcome::Filemark => out.push(Err("FM")),
                ReadOutcome::EndOfData => return out,
            }
        }
    }

    fn pos(tape: &mut VirtualTape) -> (u32, u64, u64) {
        let p = tape.position().unwrap();
        (p.file, p.block, p.logical)
    }

    /// Files: [A0 A1] FM [B0] FM [C0 C1 C2], positioned at EOD, no pending write.
    fn three_files(tape: &mut VirtualTape) {
        tape.write_block(&block(0xA0, 100)).unwrap();
        tape.write_block(&block(0xA1, 200)).unwrap();
        tape.write_filemarks(1, true).unwrap();
        tape.write_block(&block(0xB0, 300)).unwrap();
        tape.write_filemarks(1, true).unwrap();
        tape.write_block(&block(0xC0, 400)).unwrap();
        tape.write_block(&block(0xC1, 500)).unwrap();
        tape.write_block(&block(0xC2, 600)).unwrap();
        tape.flush().unwrap();
    }

    #[test]
    fn header_round_trip_and_fresh_tape() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, 10 * MIB, MIB);
        assert_eq!(tape.barcode(), "TAP001L9");
        assert_eq!(tape.capacity(), 10 * MIB);
        assert_eq!(tape.early_warning_zone(), MIB);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN as u64);
        let st = tape.status().unwrap();
        assert!(st.online && st.at_bot && st.at_eod && !st.early_warning && !st.write_protected);
        assert_eq!(st.barcode.as_deref(), Some("TAP001L9"));
        let mut buf = [0u8; 16];
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
        // Creating over an existing image fails.
        assert!(VirtualTape::create(&path, "TAP001L9", MIB, 0).is_err());
        // Invalid barcodes and capacities are refused.
        let other = dir.path().join("x.vtape");
        assert!(VirtualTape::create(&other, "../evil", MIB, 0).is_err());
        assert!(VirtualTape::create(&other, "TAP", 0, 0).is_err());
        assert!(VirtualTape::create(&other, "TAP", MIB, MIB + 1).is_err());
    }

    #[test]
    fn header_bytes_match_spec() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _tape) = new_tape(&dir, 0x0102_0304_0506_0708, 0x1000);
        let h = std::fs::read(&path).unwrap();
        assert_eq!(&h[..16], b"TAPIRVTAPE\r\n\x1a\n\0\0");
        assert_eq!(&h[16..18], &[1, 0]);
        assert_eq!(&h[18..20], &[0x00, 0x02]);
        assert_eq!(&h[20..24], &[0, 0, 0, 0]);
        assert_eq!(&h[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&h[32..40], &[0, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h[40 + 6] >> 4, 4, "media id is a version-4 UUID");
        assert_eq!(&h[56..64], b"TAP001L9");
        assert!(h[64..508].iter().all(|&b| b == 0));
        let crc = crc32fast::hash(&h[..508]).to_le_bytes();
        assert_eq!(&h[508..512], &crc);
    }

    #[test]
    fn damaged_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tape) = new_tape(&dir, MIB, 0);
        drop(tape);
        let mut h = std::fs::read(&path).unwrap();
        h[60] ^= 1;
        std::fs::write(&path, &h).unwrap();
        assert!(matches!(
            VirtualTape::open(&path, "t"),
            Err(DeviceError::MediumError { .. })
        ));
        std::fs::write(&path, b"not a tape at all").unwrap();
        assert!(matches!(
            VirtualTape::open(&path, "t"),
            Err(DeviceError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn record_framing_matches_spec() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"abc").unwrap();
        tape.write_filemarks(1, false).unwrap();
        let img = std::fs::read(&path).unwrap();
        let r = &img[HEADER_LEN..];
        assert_eq!(r.len(), 3 + 12 + 8);
        assert_eq!(&r[0..4], &3u32.to_le_bytes());
        assert_eq!(&r[4..7], b"abc");
        assert_eq!(&r[7..11], &crc32fast::hash(b"abc").to_le_bytes());
        assert_eq!(&r[11..15], &3u32.to_le_bytes());
        assert_eq!(&r[15..23], &[0, 0, 0, 0x80, 0, 0, 0, 0x80]);
    }

    #[test]
    fn only_a_simulated_drive_streams() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut tape) = new_tape(&dir, 100 * MIB, MIB);
        // A plain image is written from the first block, no buffer fill.
        assert!(!tape.streams());
        tape.set_speed_model(super::super::drivesim::DriveSimConfig::lto9(2.5));
        assert!(tape.streams());
    }

    #[test]
    fn write_read_round_trip_with_filemarks() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, 100 * MIB, MIB);
        assert_eq!(
            tape.write_block(&block(1, 1)).unwrap(),
            WriteOutcome::Written
        );
        tape.write_block(&block(2, MAX_BLOCK_SIZE)).unwrap();
        tape.write_filemarks(2, false).unwrap();
        tape.write_block(&block(3, 4096)).unwrap();
        tape.write_filemarks(1, true).unwrap();
        assert_eq!(pos(&mut tape), (3, 0, 6));
        tape.rewind().unwrap();
        let expected: Vec<Result<Vec<u8>, &str>> = vec![
            Ok(block(1, 1)),
            Ok(block(2, MAX_BLOCK_SIZE)),
            Err("FM"),
            Err("FM"),
            Ok(block(3, 4096)),
            Err("FM"),
        ];
        assert_eq!(read_all(&mut tape), expected);
        // Reading at EOD stays at EOD.
        let mut buf = [0u8; 8];
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
        assert!(tape.status().unwrap().at_eod);
        drop(tape);
        // Reopen: the index is rebuilt from the framing, position is BOT.
        let mut tape = VirtualTape::open(&path, "vtape:test").unwrap();
        assert_eq!(pos(&mut tape), (0, 0, 0));
        assert_eq!(tape.records(), 6);
        assert_eq!(tape.used_bytes(), 1 + MAX_BLOCK_SIZE as u64 + 4096);
        assert_eq!(read_all(&mut tape), expected);
    }

    #[test]
    fn read_leaves_bytes_after_the_block_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"hello").unwrap();
        tape.seek_end_of_data().unwrap();
        tape.rewind().unwrap();
        let mut buf = [0xEEu8; 16];
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(5));
        assert_eq!(&buf[..5], b"hello");
        assert!(buf[5..].iter().all(|&b| b == 0xEE));
        // Exact-size buffer (two-read path) works too.
        tape.rewind().unwrap();
        let mut exact = [0u8; 5];
        assert_eq!(tape.read_block(&mut exact).unwrap(), ReadOutcome::Block(5));
        assert_eq!(&exact, b"hello");
    }

    #[test]
    fn invalid_block_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, 10 * MIB, 0);
        assert!(matches!(
            tape.write_block(&[]),
            Err(DeviceError::InvalidRequest { .. })
        ));
        assert!(matches!(
            tape.write_block(&vec![0u8; MAX_BLOCK_SIZE + 1]),
            Err(DeviceError::InvalidRequest { .. })
        ));
        assert_eq!(tape.records(), 0);
        assert_eq!(tape.max_block_size(), MAX_BLOCK_SIZE);
    }

    #[test]
    fn write_in_the_middle_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, 10 * MIB, 0);
        three_files(&mut tape);
        let full_len = std::fs::metadata(&path).unwrap().len();
        tape.locate(1, 0).unwrap();
        tape.write_block(&block(0xDD, 10)).unwrap();
        assert_eq!(tape.records(), 4);
        assert!(std::fs::metadata(&path).unwrap().len() < full_len);
        assert!(tape.status().unwrap().at_eod);
        tape.seek_end_of_data().unwrap();
        tape.rewind().unwrap();
        assert_eq!(
            read_all(&mut tape),
            vec![
                Ok(block(0xA0, 100)),
                Ok(block(0xA1, 200)),
                Err("FM"),
                Ok(block(0xDD, 10)),
            ]
        );
        // A filemark in the middle truncates as well.
        tape.locate(0, 1).unwrap();
        tape.write_filemarks(1, false).unwrap();
        tape.rewind().unwrap();
        assert_eq!(read_all(&mut tape), vec![Ok(block(0xA0, 100)), Err("FM")]);
        drop(tape);
        let tape = VirtualTape::open(&path, "t").unwrap();
        assert_eq!(tape.records(), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_LEN as u64 + 112 + 8
        );
    }

    #[test]
    fn space_filemarks_forward_and_backward() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, 10 * MIB, 0);
        three_files(&mut tape);
        tape.rewind().unwrap();
        let mut buf = vec![0u8; 4096];
        tape.space_filemarks(1).unwrap();
        assert_eq!(pos(&mut tape), (1, 0, 3));
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(300));
        tape.space_filemarks(1).unwrap();
        assert_eq!(pos(&mut tape), (2, 0, 5));
        // Backward 1 from the start of file 2: just before the filemark
        // that ends file 1 (BOT side), so the next read sees that filemark.
        tape.space_filemarks(-1).unwrap();
        assert_eq!(pos(&mut tape), (1, 1, 4));
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
        // From the middle of file 2, back 2: before the filemark ending file 0.
        tape.space_blocks(2).unwrap();
        assert_eq!(pos(&mut tape), (2, 2, 7));
        tape.space_filemarks(-2).unwrap();
        assert_eq!(pos(&mut tape), (0, 2, 2));
        // Forward 2 from there lands at the start of file 2.
        tape.space_filemarks(2).unwrap();
        assert_eq!(pos(&mut tape), (2, 0, 5));
        // Forward past the last filemark: error at EOD.
        let e = tape.space_filemarks(1).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::EndOfData {
                    file: 2,
                    block: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(tape.status().unwrap().at_eod);
        // Backward past BOT: error, at BOT.
        tape.space_filemarks(-3).unwrap_err();
        assert!(tape.status().unwrap().at_bot);
        tape.space_filemarks(0).unwrap();
        assert_eq!(pos(&mut tape), (0, 0, 0));
    }

    #[test]
    fn space_blocks_stays_in_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, 10 * MIB, 0);
        three_files(&mut tape);
        tape.locate(2, 1).unwrap();
        tape.space_blocks(1).unwrap();
        assert_eq!(pos(&mut tape), (2, 2, 7));
        tape.space_blocks(-2).unwrap();
        assert_eq!(pos(&mut tape), (2, 0, 5));
        // Backward past the filemark stops after it, with an error.
        let e = tape.space_blocks(-1).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::MediumError {
                    file: 2,
                    block: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(pos(&mut tape), (2, 0, 5));
        // Forward beyond the end of file 0 stops before its filemark.
        tape.rewind().unwrap();
        let e = tape.space_blocks(5).unwrap_err();
        assert!(e.to_string().contains("filemark"), "{e}");
        assert_eq!(pos(&mut tape), (0, 2, 2));
        let mut buf = [0u8; 8];
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
        // Forward beyond EOD in the last file.
        tape.locate(2, 0).unwrap();
        let e = tape.space_blocks(4).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::EndOfData {
                    file: 2,
                    block: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(tape.status().unwrap().at_eod);
        // Backward from block 1 of file 0 to BOT, then one more: error at BOT.
        tape.locate(0, 1).unwrap();
        tape.space_blocks(-2).unwrap_err();
        assert!(tape.status().unwrap().at_bot);
    }

    #[test]
    fn locate_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, 10 * MIB, 0);
        three_files(&mut tape);
        let mut buf = vec![0u8; 4096];
        tape.locate(2, 2).unwrap();
        assert_eq!(pos(&mut tape), (2, 2, 7));
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(600));
        assert_eq!(buf[..600], block(0xC2, 600)[..]);
        tape.locate(0, 0).unwrap();
        assert!(tape.status().unwrap().at_bot);
        tape.locate(1, 0).unwrap();
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(300));
        // The end of a file (before its filemark) is a valid target.
        tape.locate(0, 2).unwrap();
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
        assert_eq!(pos(&mut tape), (1, 0, 3));
        // EOD of the last file too.
        tape.locate(2, 3).unwrap();
        assert!(tape.status().unwrap().at_eod);
        // Out of range: error, position unchanged.
        tape.locate(1, 0).unwrap();
        assert!(tape.locate(3, 0).is_err());
        assert!(tape.locate(1, 2).is_err());
        assert_eq!(pos(&mut tape), (1, 0, 3));
    }

    #[test]
    fn st_writes_a_filemark_after_data_on_rewind_locate_bsf_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, 10 * MIB, 0);
        tape.write_block(b"one").unwrap();
        tape.rewind().unwrap();
        assert_eq!(tape.records(), 2, "rewind after a write adds a filemark");
        tape.rewind().unwrap();
        assert_eq!(tape.records(), 2, "only once");
        // No filemark after read, seek_end_of_data, forward spacing or flush.
        tape.seek_end_of_data().unwrap();
        tape.write_block(b"two").unwrap();
        tape.flush().unwrap();
        tape.rewind().unwrap();
        assert_eq!(tape.records(), 3);
        // Backward file spacing after a write: filemark, and the count grows
        // by one, so MTBSF 1 lands before the filemark that precedes the data.
        tape.seek_end_of_data().unwrap();
        tape.write_block(b"three").unwrap();
        tape.space_filemarks(-1).unwrap();
        assert_eq!(tape.records(), 5);
        assert_eq!(pos(&mut tape), (0, 1, 1));
        // Close after a write: filemark.
        tape.seek_end_of_data().unwrap();
        tape.write_block(b"four").unwrap();
        drop(tape);
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        assert_eq!(
            read_all(&mut tape),
            vec![
                Ok(b"one".to_vec()),
                Err("FM"),
                Ok(b"two".to_vec()),
                Ok(b"three".to_vec()),
                Err("FM"),
                Ok(b"four".to_vec()),
                Err("FM"),
            ]
        );
        // Explicit filemark then close: nothing more.
        tape.write_block(b"five").unwrap();
        tape.write_filemarks(1, false).unwrap();
        tape.close().unwrap();
        let tape = VirtualTape::open(&path, "t").unwrap();
        assert_eq!(tape.records(), 9);
    }

    #[test]
    fn early_warning_then_end_of_medium() {
        let dir = tempfile::tempdir().unwrap();
        // 10 KiB capacity, early warning in the last 3 KiB (from 7 KiB on).
        let (path, mut tape) = new_tape(&dir, 10 * 1024, 3 * 1024);
        let b = block(7, 1024);
        for i in 0..7 {
            assert_eq!(
                tape.write_block(&b).unwrap(),
                WriteOutcome::Written,
                "block {i}"
            );
        }
        assert!(!tape.status().unwrap().early_warning);
        // The 8th KiB crosses into the zone: written, with early warning.
        assert_eq!(tape.write_block(&b).unwrap(), WriteOutcome::EarlyWarning);
        assert!(tape.status().unwrap().early_warning);
        // Filemarks always succeed in the zone.
        tape.write_filemarks(1, true).unwrap();
        assert_eq!(tape.write_block(&b).unwrap(), WriteOutcome::EarlyWarning);
        // 9 KiB used; 1 KiB + 1 byte does not fit.
        let e = tape.write_block(&block(8, 1025)).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::EndOfMedium {
                    file: 1,
                    block: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(tape.records(), 10, "nothing written");
        assert_eq!(tape.write_block(&b).unwrap(), WriteOutcome::EarlyWarning);
        assert_eq!(tape.used_bytes(), 10 * 1024);
        assert!(matches!(
            tape.write_block(&[1]),
            Err(DeviceError::EndOfMedium { .. })
        ));
        tape.write_filemarks(2, false).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, HEADER_LEN as u64 + 10 * (1024 + 12) + 3 * 8);
        // Overwriting earlier frees capacity again.
        tape.locate(0, 2).unwrap();
        assert_eq!(tape.write_block(&b).unwrap(), WriteOutcome::Written);
        assert!(!tape.status().unwrap().early_warning);
    }

    #[test]
    fn write_protected_image() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"data").unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        VirtualTape::set_write_protected(&path, true).unwrap();
        let before = std::fs::read(&path).unwrap();
        let mut tape = VirtualTape::open(&path, "vtape:wp").unwrap();
        assert!(tape.status().unwrap().write_protected);
        assert!(matches!(
            tape.write_block(b"x"),
            Err(DeviceError::WriteProtected { .. })
        ));
        assert!(matches!(
            tape.write_filemarks(1, false),
            Err(DeviceError::WriteProtected { .. })
        ));
        tape.flush().unwrap();
        assert_eq!(read_all(&mut tape), vec![Ok(b"data".to_vec()), Err("FM")]);
        drop(tape);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        VirtualTape::set_write_protected(&path, false).unwrap();
        let mut tape = VirtualTape::open(&path, "vtape:wp").unwrap();
        assert!(!tape.status().unwrap().write_protected);
        tape.seek_end_of_data().unwrap();
        tape.write_block(b"more").unwrap();
    }

    #[test]
    fn unknown_header_flags_mean_write_protected() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tape) = new_tape(&dir, MIB, 0);
        drop(tape);
        let mut h = std::fs::read(&path).unwrap();
        h[OFF_FLAGS] = 0x02;
        let crc = crc32fast::hash(&h[..OFF_CRC]).to_le_bytes();
        h[OFF_CRC..HEADER_LEN].copy_from_slice(&crc);
        std::fs::write(&path, &h).unwrap();
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        assert!(tape.is_write_protected());
        assert!(tape.write_block(b"x").is_err());
        drop(tape);
        assert!(matches!(
            VirtualTape::set_write_protected(&path, false),
            Err(DeviceError::Unsupported { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), h, "left alone");
    }

    #[test]
    fn fault_fail_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.set_faults(Faults {
            fail_write_at_block: Some(2),
            ..Faults::default()
        });
        tape.write_block(b"0").unwrap();
        tape.write_filemarks(1, true).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let e = tape.write_block(b"2").unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::MediumError {
                    file: 1,
                    block: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(pos(&mut tape), (1, 0, 2));
        // Filemarks are not affected.
        tape.write_filemarks(1, true).unwrap();
        assert_eq!(tape.write_block(b"3").unwrap(), WriteOutcome::Written);
    }

    #[test]
    fn fault_fail_read_moves_past_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, MIB, 0);
        for i in 0..3u8 {
            tape.write_block(&[i; 10]).unwrap();
        }
        tape.write_filemarks(1, false).unwrap();
        tape.set_faults(Faults {
            fail_read_at_block: Some(1),
            read_fail_count: Some(2),
            ..Faults::default()
        });
        let mut buf = [0u8; 64];
        tape.rewind().unwrap();
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(10));
        for attempt in 0..2 {
            let e = tape.read_block(&mut buf).unwrap_err();
            assert!(
                matches!(
                    e,
                    DeviceError::MediumError {
                        file: 0,
                        block: 1,
                        ..
                    }
                ),
                "attempt {attempt}: {e}"
            );
            assert_eq!(pos(&mut tape), (0, 2, 2), "position moved past the block");
            tape.space_blocks(-1).unwrap();
        }
        // The third attempt succeeds.
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(10));
        assert_eq!(buf[..10], [1u8; 10]);
        // None: always fails.
        tape.set_faults(Faults {
            fail_read_at_block: Some(1),
            ..Faults::default()
        });
        for _ in 0..5 {
            tape.locate(0, 1).unwrap();
            assert!(tape.read_block(&mut buf).is_err());
        }
    }

    #[test]
    fn fault_corrupt_read() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(&[0x11; 100]).unwrap();
        tape.write_block(&[0x22; 100]).unwrap();
        tape.write_filemarks(1, false).unwrap();
        let image = std::fs::read(&path).unwrap();
        tape.set_faults(Faults {
            corrupt_read_at_block: Some(1),
            ..Faults::default()
        });
        tape.rewind().unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(100));
        assert_eq!(buf, [0x11; 100]);
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(100));
        let differing: Vec<usize> = (0..100).filter(|&i| buf[i] != 0x22).collect();
        assert_eq!(differing, vec![50]);
        assert_eq!(buf[50], 0x22 ^ 0xFF);
        assert_eq!(std::fs::read(&path).unwrap(), image, "image unchanged");
    }

    #[test]
    fn fault_early_warning_at_block() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, 100 * MIB, 0);
        tape.set_faults(Faults {
            early_warning_at_block: Some(3),
            ..Faults::default()
        });
        for _ in 0..3 {
            assert_eq!(tape.write_block(b"x").unwrap(), WriteOutcome::Written);
        }
        assert!(!tape.status().unwrap().early_warning);
        assert_eq!(tape.write_block(b"x").unwrap(), WriteOutcome::EarlyWarning);
        assert!(tape.status().unwrap().early_warning);
        assert_eq!(tape.write_block(b"x").unwrap(), WriteOutcome::EarlyWarning);
    }

    #[test]
    fn kill_fault_counts_blocks_written_since_open() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"before").unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        tape.set_faults(Faults {
            kill_after_blocks: Some(2),
            ..Faults::default()
        });
        tape.seek_end_of_data().unwrap();
        assert!(!tape.kill_fault_fires());
        tape.write_block(b"one").unwrap();
        // Filemarks are not counted.
        tape.write_filemarks(1, true).unwrap();
        assert!(!tape.kill_fault_fires());
        tape.write_block(b"two").unwrap();
        assert!(tape.kill_fault_fires(), "the third write dies");
        tape.set_faults(Faults {
            kill_after_blocks: Some(0),
            ..Faults::default()
        });
        assert!(tape.kill_fault_fires());
        // Dropping would write st's closing filemark, and die.
        tape.set_faults(Faults::default());
    }

    /// The records of the image at `path`, read from a fresh open.
    fn records_of(path: &Path) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut tape = VirtualTape::open(path, "t").unwrap();
        read_all(&mut tape)
    }

    #[test]
    fn kill_fault_leaves_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"kept").unwrap();
        tape.write_block(b"also kept").unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        tape.set_faults(Faults {
            kill_after_blocks: Some(2),
            kill_torn: true,
            ..Faults::default()
        });
        let record = [&10u32.to_le_bytes()[..], b"0123456789", &[0; 8]].concat();
        tape.leave_image_as_crash_would(&record);
        std::mem::forget(tape); // a killed process writes no closing filemark
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len + 11);
        assert_eq!(
            records_of(&path),
            vec![Ok(b"kept".to_vec()), Ok(b"also kept".to_vec())]
        );

        // Torn in the middle of the tape: what followed the position is cut first.
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        tape.set_faults(Faults {
            kill_torn: true,
            ..Faults::default()
        });
        tape.space_blocks(1).unwrap();
        tape.leave_image_as_crash_would(&FILEMARK_BYTES);
        drop(tape);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_LEN as u64 + 16 + 4
        );
        assert_eq!(records_of(&path), vec![Ok(b"kept".to_vec())]);
    }

    #[test]
    fn lose_buffer_fault_drops_what_was_not_synced_and_fires_once() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"synced").unwrap();
        tape.flush().unwrap();
        tape.write_block(b"buffered").unwrap();
        tape.set_faults(Faults {
            lose_buffer_after_blocks: Some(3),
            ..Faults::default()
        });
        tape.write_block(b"accepted").unwrap();
        let e = tape.write_block(b"refused").unwrap_err();
        assert!(matches!(e, DeviceError::DeferredError { .. }), "{e}");
        assert_eq!(tape.position().unwrap().block, 1);
        // Once only: the drive is usable again, at the end of what is durable.
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        assert_eq!(records_of(&path), vec![Ok(b"synced".to_vec()), Err("FM")]);

        let mut tape = VirtualTape::open(&path, "t").unwrap();
        tape.seek_end_of_data().unwrap();
        tape.write_block(b"x").unwrap();
        tape.set_faults(Faults {
            lose_buffer_at_sync: Some(2),
            lose_buffer_as_reset: true,
            ..Faults::default()
        });
        tape.flush().unwrap();
        tape.write_block(b"y").unwrap();
        let e = tape.write_filemarks(1, false).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::UnitAttention {
                    reason: crate::device::sense::UnitAttention::PowerOnOrReset,
                    ..
                }
            ),
            "{e}"
        );
        drop(tape);
        assert_eq!(
            records_of(&path),
            vec![Ok(b"synced".to_vec()), Err("FM"), Ok(b"x".to_vec())]
        );
    }

    #[test]
    fn kill_fault_can_lose_what_was_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"synced").unwrap();
        tape.write_filemarks(1, false).unwrap();
        tape.write_block(b"written").unwrap();
        tape.write_filemarks(1, true).unwrap();
        tape.set_faults(Faults {
            kill_lose_unsynced: true,
            ..Faults::default()
        });
        tape.leave_image_as_crash_would(b"ignored");
        std::mem::forget(tape);
        assert_eq!(records_of(&path), vec![Ok(b"synced".to_vec()), Err("FM")]);

        // A flush makes everything durable; a truncation since is not undone.
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        tape.seek_end_of_data().unwrap();
        tape.write_block(b"second").unwrap();
        tape.flush().unwrap();
        tape.rewind().unwrap();
        tape.write_block(b"rewritten").unwrap();
        tape.write_block(b"lost").unwrap();
        tape.set_faults(Faults {
            kill_lose_unsynced: true,
            kill_torn: true,
            ..Faults::default()
        });
        tape.leave_image_as_crash_would(&[1, 2, 3, 4, 5, 6]);
        std::mem::forget(tape);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_LEN as u64 + 3,
            "cut at the rewrite, then half a record"
        );
        assert!(records_of(&path).is_empty());
    }

    #[test]
    fn faults_load_from_sidecar_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"a").unwrap();
        tape.write_block(b"b").unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        let sidecar = faults_path(&path);
        assert_eq!(
            sidecar.file_name().unwrap().to_str().unwrap(),
            "TAP001L9.vtape.faults.json"
        );
        std::fs::write(&sidecar, r#"{"fail_read_at_block": 1}"#).unwrap();
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        assert_eq!(tape.faults().fail_read_at_block, Some(1));
        let mut buf = [0u8; 8];
        tape.read_block(&mut buf).unwrap();
        assert!(matches!(
            tape.read_block(&mut buf),
            Err(DeviceError::MediumError { .. })
        ));
        drop(tape);
        std::fs::write(&sidecar, r#"{"kill_after_blocks": 7, "kill_torn": true}"#).unwrap();
        let tape = VirtualTape::open(&path, "t").unwrap();
        assert_eq!(
            tape.faults(),
            &Faults {
                kill_after_blocks: Some(7),
                kill_torn: true,
                ..Faults::default()
            }
        );
        drop(tape);
        std::fs::write(&sidecar, r#"{"fail_reed_at_block": 1}"#).unwrap();
        assert!(matches!(
            VirtualTape::open(&path, "t"),
            Err(DeviceError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn damaged_block_data_is_a_medium_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(&[5u8; 64]).unwrap();
        tape.write_block(&[6u8; 64]).unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        let mut img = std::fs::read(&path).unwrap();
        img[HEADER_LEN + 4 + 10] ^= 0x40;
        std::fs::write(&path, &img).unwrap();
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        let mut buf = [0u8; 64];
        let e = tape.read_block(&mut buf).unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(64));
        assert_eq!(buf, [6u8; 64]);
    }

    #[test]
    fn block_too_large_moves_past_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(&[1u8; 1000]).unwrap();
        tape.write_block(&[2u8; 10]).unwrap();
        tape.write_filemarks(1, false).unwrap();
        tape.rewind().unwrap();
        let mut small = [0u8; 999];
        let e = tape.read_block(&mut small).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::BlockTooLarge {
                    needed: 1000,
                    buffer: 999,
                    file: 0,
                    block: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(pos(&mut tape), (0, 1, 1));
        assert_eq!(tape.read_block(&mut small).unwrap(), ReadOutcome::Block(10));
        assert_eq!(small[..10], [2u8; 10]);
    }

    #[test]
    fn torn_tail_is_end_of_data_and_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"good one").unwrap();
        tape.write_block(b"good two").unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        let clean = std::fs::read(&path).unwrap();
        let tails: Vec<Vec<u8>> = vec![
            // Leading length, partial data.
            [100u32.to_le_bytes().as_slice(), b"partial"].concat(),
            // Whole data and CRC, trailing length missing.
            [
                3u32.to_le_bytes().as_slice(),
                b"abc",
                &crc32fast::hash(b"abc").to_le_bytes(),
            ]
            .concat(),
            // Trailing length that does not match.
            [
                3u32.to_le_bytes().as_slice(),
                b"abc",
                &crc32fast::hash(b"abc").to_le_bytes(),
                &4u32.to_le_bytes(),
            ]
            .concat(),
            // Half a filemark, zeros, garbage.
            FILEMARK_BYTES[..4].to_vec(),
            vec![0u8; 4096],
            vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3],
            vec![7u8; 2],
        ];
        for (i, tail) in tails.iter().enumerate() {
            std::fs::write(&path, [clean.as_slice(), tail].concat()).unwrap();
            let mut tape = VirtualTape::open(&path, "t").unwrap();
            assert_eq!(tape.records(), 3, "tail {i}");
            tape.seek_end_of_data().unwrap();
            assert_eq!(pos(&mut tape), (1, 0, 3));
            tape.write_block(b"after crash").unwrap();
            tape.write_filemarks(1, false).unwrap();
            drop(tape);
            let mut tape = VirtualTape::open(&path, "t").unwrap();
            assert_eq!(
                read_all(&mut tape),
                vec![
                    Ok(b"good one".to_vec()),
                    Ok(b"good two".to_vec()),
                    Err("FM"),
                    Ok(b"after crash".to_vec()),
                    Err("FM"),
                ],
                "tail {i}"
            );
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                clean.len() as u64 + 11 + 12 + 8,
                "tail {i} was cut off"
            );
        }
    }

    #[test]
    fn many_filemarks_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, MIB, 0);
        tape.write_block(b"x").unwrap();
        tape.write_filemarks(130, false).unwrap();
        assert_eq!(pos(&mut tape), (130, 0, 131));
        tape.write_block(b"y").unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_LEN as u64 + 2 * 13 + 131 * 8
        );
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        tape.locate(130, 0).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(1));
        assert_eq!(buf[0], b'y');
        tape.space_filemarks(-130).unwrap();
        assert_eq!(pos(&mut tape), (0, 1, 1));
    }

    #[test]
    fn damaged_version_field_reads_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tape) = new_tape(&dir, MIB, 0);
        drop(tape);
        let mut h = std::fs::read(&path).unwrap();
        h[OFF_VERSION] = 7;
        std::fs::write(&path, &h).unwrap();
        assert!(matches!(
            VirtualTape::open(&path, "t"),
            Err(DeviceError::MediumError { .. })
        ));
        // A consistent header from a future version is "unsupported".
        let crc = crc32fast::hash(&h[..OFF_CRC]).to_le_bytes();
        h[OFF_CRC..HEADER_LEN].copy_from_slice(&crc);
        std::fs::write(&path, &h).unwrap();
        assert!(matches!(
            VirtualTape::open(&path, "t"),
            Err(DeviceError::Unsupported { .. })
        ));
    }

    #[test]
    fn many_small_records_index_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut tape) = new_tape(&dir, 100 * MIB, 0);
        for i in 0..5000u32 {
            let len = 1 + (i as usize * 7) % 3000;
            tape.write_block(&vec![(i % 256) as u8; len]).unwrap();
            if i % 1000 == 999 {
                tape.write_filemarks(1, true).unwrap();
            }
        }
        tape.flush().unwrap();
        let records = tape.records();
        let used = tape.used_bytes();
        drop(tape);
        let mut tape = VirtualTape::open(&path, "t").unwrap();
        assert_eq!(tape.records(), records);
        assert_eq!(tape.used_bytes(), used);
        tape.locate(3, 17).unwrap();
        let mut buf = vec![0u8; 4096];
        let i = 3 * 1000 + 17;
        let len = 1 + (i * 7) % 3000;
        assert_eq!(tape.read_block(&mut buf).unwrap(), ReadOutcome::Block(len));
        assert!(buf[..len].iter().all(|&b| b == (i % 256) as u8));
        assert_eq!(pos(&mut tape), (3, 18, i as u64 + 3 + 1));
    }
}
