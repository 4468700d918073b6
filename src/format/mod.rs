//! The on-media format, version 1, as specified in `docs/FORMAT.md`.
//!
//! This layer knows nothing about devices or catalogs: it turns structures
//! into bytes and back, through `Read`/`Write` and byte slices only. Every
//! length read from media is bounded before anything is allocated.

pub mod block;
pub mod label;
pub mod manifest;
pub mod meta;
pub mod record;
pub mod setcat;
pub mod stream;

pub use block::{BlockHeader, BlockKind, BLOCK_HEADER_LEN};

pub use label::{LabelBlock, VolumeLabel};
pub use record::{RecordHeader, RecordType};

/// The format version this code writes and fully understands.
pub const FORMAT_VERSION: u16 = 1;

/// Default size of a tape block, header included.
pub const DEFAULT_BLOCK_SIZE: u32 = 256 * 1024;
/// Smallest block size tapir writes (the label block must fit).
pub const MIN_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest block size tapir writes: what the Linux st driver and most drives accept.
pub const MAX_BLOCK_SIZE: u32 = 1024 * 1024;

/// Errors found while decoding bytes read from media.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a tapir block (bad magic)")]
    BadMagic,
    #[error("block written by format version {0}, newer than this tapir understands (1); use a newer tapir")]
    UnsupportedVersion(u16),
    #[error("block checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("truncated: needed {needed} bytes, found {found}")]
    Truncated { needed: usize, found: usize },
    #[error("{what} length {len} exceeds the limit {limit}")]
    TooLong {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("block carries flags {0:#06x} that this tapir does not understand; use a newer tapir")]
    UnknownCriticalFlags(u32),
    #[error("record type {0:#06x} is unknown and not marked skippable; use a newer tapir")]
    UnknownRecordType(u16),
    #[error("unknown block kind {0}")]
    UnknownBlockKind(u16),
    #[error("metadata does not decode: {0}")]
    Cbor(String),
    #[error("invalid field: {0}")]
    Invalid(String),
}

impl From<minicbor::decode::Error> for FormatError {
    fn from(e: minicbor::decode::Error) -> Self {
        FormatError::Cbor(e.to_string())
    }
}

/// Little-endian field readers over a slice whose length the caller checked.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
