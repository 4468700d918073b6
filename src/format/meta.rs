//! Variable metadata: CBOR maps with integer keys (FORMAT.md §6, CDDL there).
//! Unknown keys are ignored on decode, so later versions can add fields.

use minicbor::{Decode, Encode};

use super::FormatError;

/// Seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Encode, Decode)]
#[cbor(array)]
pub struct Timestamp {
    #[n(0)]
    pub sec: i64,
    #[n(1)]
    pub nsec: u32,
}

/// Seconds added to the system clock for every timestamp tapir takes.
static CLOCK_SHIFT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Run the whole process `secs` seconds off the system clock: `tapir run
/// --now` simulates a night whose labels, sessions and catalog records all
/// carry the simulated time.
pub fn shift_clock(secs: i64) {
    CLOCK_SHIFT.store(secs, std::sync::atomic::Ordering::Relaxed);
}

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64 + CLOCK_SHIFT.load(std::sync::atomic::Ordering::Relaxed),
            nsec: d.subsec_nanos(),
        }
    }
}

/// The type of an archived filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
    CharDevice,
    BlockDevice,
    /// A regular file of an incremental or differential session whose
    /// content is that of the same path in the session's base chain.
    Unchanged,
}

impl EntryKind {
    pub fn code(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
            EntryKind::HardLink => 4,
            EntryKind::Fifo => 5,
            EntryKind::CharDevice => 6,
            EntryKind::BlockDevice => 7,
            EntryKind::Unchanged => 8,
        }
    }
    pub fn from_code(c: u8) -> Result<Self, FormatError> {
        Ok(match c {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink,
            4 => EntryKind::HardLink,
            5 => EntryKind::Fifo,
            6 => EntryKind::CharDevice,
            7 => EntryKind::BlockDevice,
            8 => EntryKind::Unchanged,
            other => return Err(FormatError::Invalid(format!("unknown entry kind {other}"))),
        })
    }
    /// The `ls -l` type character.
    pub fn type_char(self) -> char {
        match self {
            EntryKind::File | EntryKind::HardLink | EntryKind::Unchanged => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Fifo => 'p',
            EntryKind::CharDevice => 'c',
            EntryKind::BlockDevice => 'b',
        }
    }
}

/// Inode flags, in tapir's own bit numbering (not the kernel's).
pub const INODE_IMMUTABLE: u32 = 1 << 0;
pub const INODE_APPEND_ONLY: u32 = 1 << 1;
pub const INODE_NODUMP: u32 = 1 << 2;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(array)]
pub struct Xattr {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub name: Vec<u8>,
    #[cbor(n(1), with = "minicbor::bytes")]
    pub value: Vec<u8>,
}

/// One run of data in a sparse file; everything between extents is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(array)]
pub struct Extent {
    #[n(0)]
    pub offset: u64,
    #[n(1)]
    pub len: u64,
}

/// Device numbers of a character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(array)]
pub struct DeviceNumbers {
    #[n(0)]
    pub major: u32,
    #[n(1)]
    pub minor: u32,
}

/// Everything about one filesystem object except its content.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Entry {
    /// Relative path inside the archive, as raw bytes, `/`-separated.
    #[cbor(n(0), with = "minicbor::bytes")]
    pub path: Vec<u8>,
    /// `EntryKind` code.
    #[n(1)]
    pub kind: u8,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    #[n(2)]
    pub mode: u32,
    #[n(3)]
    pub uid: u32,
    #[n(4)]
    pub gid: u32,
    #[n(5)]
    pub user: Option<String>,
    #[n(6)]
    pub group: Option<String>,
    #[n(7)]
    pub mtime: Timestamp,
    #[n(8)]
    pub atime: Timestamp,
    #[n(9)]
    pub ctime: Timestamp,
    /// Logical size in bytes (files only).
    #[n(10)]
    pub size: u64,
    /// Symlink target, or for a hard link the archive path it links to.
    #[cbor(n(11), with = "minicbor::bytes")]
    pub link_target: Option<Vec<u8>>,
    #[n(12)]
    pub device: Option<DeviceNumbers>,
    #[n(13)]
    pub xattrs: Vec<Xattr>,
    /// Data extents of a sparse file; absent for a dense file.
    #[n(14)]
    pub sparse: Option<Vec<Extent>>,
    #[n(15)]
    pub inode_flags: u32,
    /// On a later cartridge of a set: this entry's content continues here
    /// from this logical offset (the part before is on the previous cartridge).
    #[n(16)]
    pub continued_from: Option<u64>,
}

impl Entry {
    pub fn kind(&self) -> Result<EntryKind, FormatError> {
        EntryKind::from_code(self.kind)
    }
    /// A minimal entry of `kind` at `path`, for building and tests.
    pub fn new(path: impl Into<Vec<u8>>, kind: EntryKind) -> Self {
        Entry {
            path: path.into(),
            kind: kind.code(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            size: 0,
            link_target: None,
            device: None,
            xattrs: Vec::new(),
            sparse: None,
            inode_flags: 0,
            continued_from: None,
        }
    }
}

/// Why an entry's content may be incomplete.
pub const END_COMPLETE: u8 = 0;
/// The source could not be read to the end; content is truncated.
pub const END_SOURCE_READ_ERROR: u8 = 1;
/// The source changed size while it was read; content is what was read.
pub const END_SOURCE_CHANGED: u8 = 2;
/// The job was interrupted (Ctrl-C, SIGTERM) while this entry's content
/// was being written; content is what was written before.
pub const END_INTERRUPTED: u8 = 3;
/// The cartridge filled while this entry's content was being written: the
/// rest is on the next cartridge of the set (FORMAT.md §12).
pub const END_CONTINUES: u8 = 4;

/// Closes an entry's content: its hash and whether it is complete.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct EntryEnd {
    /// BLAKE3 of the logical content (holes read as zeros); files only.
    #[cbor(n(0), with = "minicbor::bytes")]
    pub blake3: Option<[u8; 32]>,
    /// Logical content bytes stored (data extents only).
    #[n(1)]
    pub stored_bytes: u64,
    #[n(2)]
    pub status: u8,
}

/// Opens a session's data stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SessionStart {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub session_uuid: [u8; 16],
    #[n(1)]
    pub session: u32,
    #[cbor(n(2), with = "minicbor::bytes")]
    pub set_uuid: [u8; 16],
    #[n(3)]
    pub set_name: String,
    #[n(4)]
    pub host: String,
    #[n(5)]
    pub started: Timestamp,
    #[n(6)]
    pub tapir_version: String,
    /// Source paths as given on the command line.
    #[n(7)]
    pub sources: Vec<minicbor::bytes::ByteVec>,
    #[n(8)]
    pub volume_seq: u32,
    #[n(9)]
    pub block_size: u32,
    /// Present when this session continues one cut at the end of the
    /// previous cartridge (spanning).
    #[n(10)]
    pub continues: Option<SessionLink>,
    /// Exclude patterns the walk was given, as given.
    #[n(11)]
    pub excludes: Option<Vec<minicbor::bytes::ByteVec>>,
    /// Directories whose contents were left out (the default excludes of a
    /// whole-root write); the directories themselves are archived.
    #[n(12)]
    pub contents_excluded: Option<Vec<minicbor::bytes::ByteVec>>,
    /// The scheduled job that wrote the session, and what it is relative to.
    #[n(13)]
    pub job: Option<JobRun>,
}

/// A session written by a job of the configuration (FORMAT.md §7.7).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct JobRun {
    #[n(0)]
    pub name: String,
    /// LEVEL_FULL, LEVEL_INCREMENTAL or LEVEL_DIFFERENTIAL.
    #[n(1)]
    pub level: u8,
    /// The session an incremental or differential is relative to: files
    /// unchanged since then are `Unchanged` entries here.
    #[cbor(n(2), with = "minicbor::bytes")]
    pub base: Option<[u8; 16]>,
    /// Which of the pool's copies of the run this is (None: the first).
    #[n(3)]
    pub copy: Option<u8>,
}

pub const LEVEL_FULL: u8 = 0;
pub const LEVEL_INCREMENTAL: u8 = 1;
pub const LEVEL_DIFFERENTIAL: u8 = 2;

/// How a session part on one cartridge follows the part before it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SessionLink {
    /// `session_uuid` of the part on the previous cartridge.
    #[cbor(n(0), with = "minicbor::bytes")]
    pub previous_session_uuid: [u8; 16],
    /// `volume_uuid` of the previous cartridge.
    #[cbor(n(1), with = "minicbor::bytes")]
    pub previous_volume_uuid: [u8; 16],
    /// Part number of this session part: 2 for the first continuation.
    #[n(2)]
    pub part: u32,
    /// `session_uuid` of part 1: the same for every part of one job.
    #[cbor(n(3), with = "minicbor::bytes")]
    pub first_session_uuid: [u8; 16],
}

/// A durability point: everything before it was flushed to the medium.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Checkpoint {
    #[n(0)]
    pub entries: u64,
    #[n(1)]
    pub bytes: u64,
    #[n(2)]
    pub at: Timestamp,
}

/// Session outcome flags.
pub const SESSION_OK: u8 = 0;
pub const SESSION_WITH_WARNINGS: u8 = 1;
/// The job was interrupted and closed early: the session holds what was
/// written until then, complete and with its catalog.
pub const SESSION_INTERRUPTED: u8 = 2;
/// The cartridge filled: the session continues on the next cartridge of
/// the set, in a session whose `SessionStart.continues` points here.
pub const SESSION_CONTINUES: u8 = 3;

/// Closes a session's data stream; repeated at the end of its catalog.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SessionEnd {
    #[n(0)]
    pub entries: u64,
    #[n(1)]
    pub stored_bytes: u64,
    #[n(2)]
    pub ended: Timestamp,
    #[n(3)]
    pub warnings: u64,
    #[n(4)]
    pub status: u8,
    /// Sockets and other objects not archived.
    #[n(5)]
    pub skipped: u64,
}

/// Where a record starts: tape file, block within it, byte offset in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cbor(array)]
pub struct StreamPosition {
    #[n(0)]
    pub tape_file: u32,
    #[n(1)]
    pub block: u64,
    #[n(2)]
    pub offset: u32,
}

/// Opens a session's catalog stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct CatalogHeader {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub session_uuid: [u8; 16],
    #[n(1)]
    pub session: u32,
    /// Tape file holding the session's data stream.
    #[n(2)]
    pub data_tape_file: u32,
    #[n(3)]
    pub entries: u64,
}

/// One entry as the catalog lists it, with where its records start.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct CatalogEntry {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub path: Vec<u8>,
    #[n(1)]
    pub kind: u8,
    #[n(2)]
    pub mode: u32,
    #[n(3)]
    pub uid: u32,
    #[n(4)]
    pub gid: u32,
    #[n(5)]
    pub user: Option<String>,
    #[n(6)]
    pub group: Option<String>,
    #[n(7)]
    pub mtime: Timestamp,
    #[n(8)]
    pub size: u64,
    #[cbor(n(9), with = "minicbor::bytes")]
    pub link_target: Option<Vec<u8>>,
    /// Position of the entry's `Entry` record.
    #[n(10)]
    pub position: StreamPosition,
    #[cbor(n(11), with = "minicbor::bytes")]
    pub blake3: Option<[u8; 32]>,
    /// `EntryEnd` status.
    #[n(12)]
    pub status: u8,
    #[n(13)]
    pub device: Option<DeviceNumbers>,
    /// As `Entry.continued_from`.
    #[n(14)]
    pub continued_from: Option<u64>,
}

/// Closes a session's catalog stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct CatalogEnd {
    #[n(0)]
    pub entries: u64,
    /// BLAKE3 over the bodies of all `CatalogEntry` records, in order.
    #[cbor(n(1), with = "minicbor::bytes")]
    pub digest: [u8; 32],
    #[n(2)]
    pub summary: SessionEnd,
}

/// Encode any metadata structure to CBOR bytes.
pub fn to_cbor<T: Encode<()>>(value: &T) -> Vec<u8> {
    minicbor::to_vec(value).expect("encoding to a Vec cannot fail")
}

/// Encode into `out` (cleared first): a buffer reused per entry saves the
/// allocations of a fresh one on the write path.
pub fn to_cbor_into<T: Encode<()>>(value: &T, out: &mut Vec<u8>) {
    out.clear();
    minicbor::encode(value, &mut *out).expect("encoding to a Vec cannot fail");
}

/// Decode a metadata structure from CBOR bytes.
pub fn from_cbor<'b, T: Decode<'b, ()>>(bytes: &'b [u8]) -> Result<T, FormatError> {
    Ok(minicbor::decode(bytes)?)
}
