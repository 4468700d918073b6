//! Records: the units of a session's data and catalog streams (FORMAT.md §5).
//! A record is an 8-byte header followed by its body; records are packed
//! back to back into block payloads and may cross block boundaries.

use super::{le_u16, le_u32, le_u64, FormatError};

pub const RECORD_HEADER_LEN: usize = 8;
/// Largest record body a v1 reader accepts; checked before allocating.
pub const MAX_RECORD_BODY: u32 = 64 * 1024 * 1024;
/// Flag: a reader that does not know this record type may skip it.
pub const RECORD_FLAG_SKIPPABLE: u16 = 1 << 0;
/// Largest uncompressed content carried by one `Data` record.
pub const DATA_CHUNK_LEN: usize = 1024 * 1024;
/// Fixed prefix of a `Data` record body, before the content bytes.
pub const DATA_PREFIX_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    SessionStart,
    Entry,
    Data,
    EntryEnd,
    Checkpoint,
    SessionEnd,
    CatalogHeader,
    CatalogEntry,
    CatalogEnd,
    SetCatalogHeader,
    VolumeInfo,
    SessionInfo,
    PageIndex,
    SetCatalogEntry,
    SetCatalogEnd,
    /// A type this reader does not know, but which is marked skippable.
    Unknown(u16),
}

impl RecordType {
    pub fn code(self) -> u16 {
        match self {
            RecordType::SessionStart => 0x0001,
            RecordType::Entry => 0x0002,
            RecordType::Data => 0x0003,
            RecordType::EntryEnd => 0x0004,
            RecordType::Checkpoint => 0x0005,
            RecordType::SessionEnd => 0x0006,
            RecordType::CatalogHeader => 0x0010,
            RecordType::CatalogEntry => 0x0011,
            RecordType::CatalogEnd => 0x0012,
            RecordType::SetCatalogHeader => 0x0020,
            RecordType::VolumeInfo => 0x0021,
            RecordType::SessionInfo => 0x0022,
            RecordType::PageIndex => 0x0023,
            RecordType::SetCatalogEntry => 0x0024,
            RecordType::SetCatalogEnd => 0x0025,
            RecordType::Unknown(c) => c,
        }
    }
    fn from_code(code: u16, flags: u16) -> Result<Self, FormatError> {
        Ok(match code {
            0x0001 => RecordType::SessionStart,
            0x0002 => RecordType::Entry,
            0x0003 => RecordType::Data,
            0x0004 => RecordType::EntryEnd,
            0x0005 => RecordType::Checkpoint,
            0x0006 => RecordType::SessionEnd,
            0x0010 => RecordType::CatalogHeader,
            0x0011 => RecordType::CatalogEntry,
            0x0012 => RecordType::CatalogEnd,
            0x0020 => RecordType::SetCatalogHeader,
            0x0021 => RecordType::VolumeInfo,
            0x0022 => RecordType::SessionInfo,
            0x0023 => RecordType::PageIndex,
            0x0024 => RecordType::SetCatalogEntry,
            0x0025 => RecordType::SetCatalogEnd,
            other if flags & RECORD_FLAG_SKIPPABLE != 0 => RecordType::Unknown(other),
            other => return Err(FormatError::UnknownRecordType(other)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub rtype: RecordType,
    pub flags: u16,
    pub body_len: u32,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..2].copy_from_slice(&self.rtype.code().to_le_bytes());
        h[2..4].copy_from_slice(&self.flags.to_le_bytes());
        h[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        h
    }
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Result<Self, FormatError> {
        let flags = le_u16(b, 2);
        let rtype = RecordType::from_code(le_u16(b, 0), flags)?;
        let body_len = le_u32(b, 4);
        if body_len > MAX_RECORD_BODY {
            return Err(FormatError::TooLong {
                what: "record body",
                len: body_len as u64,
                limit: MAX_RECORD_BODY as u64,
            });
        }
        Ok(RecordHeader {
            rtype,
            flags,
            body_len,
        })
    }
}

/// How a `Data` record's content is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Stored,
    Zstd,
}

impl Codec {
    pub fn code(self) -> u8 {
        match self {
            Codec::Stored => 0,
            Codec::Zstd => 1,
        }
    }
    pub fn from_code(c: u8) -> Result<Self, FormatError> {
        match c {
            0 => Ok(Codec::Stored),
            1 => Ok(Codec::Zstd),
            other => Err(FormatError::Invalid(format!("unknown codec {other}"))),
        }
    }
}

/// The fixed prefix of a `Data` record: where this content goes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPrefix {
    /// Byte offset of this content within the file.
    pub offset: u64,
    /// Length of the content once decoded.
    pub raw_len: u32,
    pub codec: Codec,
}

impl DataPrefix {
    pub fn encode(&self) -> [u8; DATA_PREFIX_LEN] {
        let mut p = [0u8; DATA_PREFIX_LEN];
        p[0..8].copy_from_slice(&self.offset.to_le_bytes());
        p[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        p[12] = self.codec.code();
        p
    }
    /// Split a `Data` body into its prefix and stored content, bounding sizes.
    pub fn decode(body: &[u8]) -> Result<(DataPrefix, &[u8]), FormatError> {
        if body.len() < DATA_PREFIX_LEN {
            return Err(FormatError::Truncated {
                needed: DATA_PREFIX_LEN,
                found: body.len(),
            });
        }
        let raw_len = le_u32(body, 8);
        if raw_len as usize > DATA_CHUNK_LEN {
            return Err(FormatError::TooLong {
                what: "data chunk",
                len: raw_len as u64,
                limit: DATA_CHUNK_LEN as u64,
            });
        }
        let codec = Codec::from_code(body[12])?;
        let content = &body[DATA_PREFIX_LEN..];
        if codec == Codec::Stored && content.len() != raw_len as usize {
            return Err(FormatError::Invalid(format!(
                "stored chunk holds {} bytes but says {raw_len}",
                content.len()
            )));
        }
        Ok((
            DataPrefix {
                offset: le_u64(body, 0),
                raw_len,
                codec,
            },
            content,
        ))
    }

    /// Decode the content into `out` (cleared first), never growing past `raw_len`.
    pub fn decode_content(&self, content: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        out.clear();
        match self.codec {
            Codec::Stored => out.extend_from_slice(content),
            Codec::Zstd => {
                out.resize(self.raw_len as usize, 0);
                let n = zstd::bulk::decompress_to_buffer(content, &mut out[..]).map_err(|e| {
                    FormatError::Invalid(format!("zstd chunk does not decode: {e}"))
                })?;
                if n != self.raw_len as usize {
                    return Err(FormatError::Invalid(format!(
                        "zstd chunk decodes to {n} bytes, expected {}",
                        self.raw_len
                    )));
                }
            }
        }
        Ok(())
    }
}
