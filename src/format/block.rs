//! The fixed 64-byte header that starts every framed block (FORMAT.md §3).

use super::{le_u16, le_u32, le_u64, FormatError, FORMAT_VERSION, MAX_BLOCK_SIZE};

pub const BLOCK_MAGIC: [u8; 8] = *b"TAPIRBLK";
pub const BLOCK_HEADER_LEN: usize = 64;
/// `first_record` value meaning no record starts in this block.
pub const NO_RECORD_START: u32 = u32::MAX;
/// Flag: the last block tapir wrote in this tape file.
pub const FLAG_LAST_IN_FILE: u32 = 1 << 0;
/// Flags a v1 reader must understand (low 16 bits); unknown ones make it stop.
pub const CRITICAL_FLAGS_MASK: u32 = 0x0000_FFFF;
const KNOWN_CRITICAL_FLAGS: u32 = FLAG_LAST_IN_FILE;

/// What a block's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// The machine-readable volume label (payload is one CBOR `VolumeLabel`).
    Label,
    /// A session's data stream (records).
    SessionData,
    /// A session's catalog stream (records).
    SessionCatalog,
    /// A catalog copy of the whole set so far (records, FORMAT.md §13).
    SetCatalog,
}

impl BlockKind {
    pub fn code(self) -> u16 {
        match self {
            BlockKind::Label => 1,
            BlockKind::SessionData => 2,
            BlockKind::SessionCatalog => 3,
            BlockKind::SetCatalog => 4,
        }
    }
    pub fn from_code(code: u16) -> Result<Self, FormatError> {
        Ok(match code {
            1 => BlockKind::Label,
            2 => BlockKind::SessionData,
            3 => BlockKind::SessionCatalog,
            4 => BlockKind::SetCatalog,
            other => return Err(FormatError::UnknownBlockKind(other)),
        })
    }
}

/// Identity and integrity of one block. Field order matches the byte layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub version: u16,
    pub kind: BlockKind,
    pub flags: u32,
    pub set_uuid: [u8; 16],
    pub volume_seq: u32,
    pub tape_file: u32,
    pub block_seq: u64,
    pub payload_len: u32,
    pub first_record: u32,
    pub session: u32,
}

impl BlockHeader {
    /// Serialise the header for `payload`, computing the CRC over both.
    pub fn encode(&self, payload: &[u8]) -> [u8; BLOCK_HEADER_LEN] {
        debug_assert_eq!(self.payload_len as usize, payload.len());
        let mut h = [0u8; BLOCK_HEADER_LEN];
        h[0..8].copy_from_slice(&BLOCK_MAGIC);
        h[8..10].copy_from_slice(&self.version.to_le_bytes());
        h[10..12].copy_from_slice(&self.kind.code().to_le_bytes());
        h[12..16].copy_from_slice(&self.flags.to_le_bytes());
        h[16..32].copy_from_slice(&self.set_uuid);
        h[32..36].copy_from_slice(&self.volume_seq.to_le_bytes());
        h[36..40].copy_from_slice(&self.tape_file.to_le_bytes());
        h[40..48].copy_from_slice(&self.block_seq.to_le_bytes());
        h[48..52].copy_from_slice(&self.payload_len.to_le_bytes());
        h[52..56].copy_from_slice(&self.first_record.to_le_bytes());
        h[56..60].copy_from_slice(&self.session.to_le_bytes());
        let crc = block_crc(&h[..60], payload);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Encode header and payload into one block buffer (cleared first).
    pub fn encode_block(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.encode(payload));
        out.extend_from_slice(payload);
    }

    /// Parse and check a whole block as read from media: magic, version,
    /// flags, length and CRC. Returns the header and the payload slice.
    pub fn decode(block: &[u8]) -> Result<(BlockHeader, &[u8]), FormatError> {
        if block.len() < BLOCK_HEADER_LEN {
            return Err(FormatError::Truncated {
                needed: BLOCK_HEADER_LEN,
                found: block.len(),
            });
        }
        if block[0..8] != BLOCK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let payload_len = le_u32(block, 48);
        let limit = MAX_BLOCK_SIZE as u64 - BLOCK_HEADER_LEN as u64;
        if payload_len as u64 > limit {
            return Err(FormatError::TooLong {
                what: "block payload",
                len: payload_len as u64,
                limit,
            });
        }
        let end = BLOCK_HEADER_LEN + payload_len as usize;
        if block.len() != end {
            // Bytes the CRC does not cover, or a block cut short.
            return Err(FormatError::Truncated {
                needed: end,
                found: block.len(),
            });
        }
        let payload = &block[BLOCK_HEADER_LEN..end];
        let stored = le_u32(block, 60);
        let computed = block_crc(&block[..60], payload);
        if stored != computed {
            return Err(FormatError::CrcMismatch { stored, computed });
        }
        // Only a block that verified can speak for its version.
        let version = le_u16(block, 8);
        if version == 0 {
            return Err(FormatError::Invalid("format version 0".into()));
        }
        if version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = le_u32(block, 12);
        let unknown = flags & CRITICAL_FLAGS_MASK & !KNOWN_CRITICAL_FLAGS;
        if unknown != 0 {
            return Err(FormatError::UnknownCriticalFlags(unknown));
        }
        let kind = BlockKind::from_code(le_u16(block, 10))?;
        let mut set_uuid = [0u8; 16];
        set_uuid.copy_from_slice(&block[16..32]);
        let first_record = le_u32(block, 52);
        if first_record != NO_RECORD_START && first_record >= payload_len {
            return Err(FormatError::Invalid(format!(
                "first record offset {first_record} outside payload of {payload_len} bytes"
            )));
        }
        let header = BlockHeader {
            version,
            kind,
            flags,
            set_uuid,
            volume_seq: le_u32(block, 32),
            tape_file: le_u32(block, 36),
            block_seq: le_u64(block, 40),
            payload_len,
            first_record,
            session: le_u32(block, 56),
        };
        Ok((header, payload))
    }

    pub fn is_last_in_file(&self) -> bool {
        self.flags & FLAG_LAST_IN_FILE != 0
    }
}

fn block_crc(header_without_crc: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_without_crc);
    h.update(payload);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: &[u8]) -> BlockHeader {
        BlockHeader {
            version: 1,
            kind: BlockKind::SessionData,
            flags: FLAG_LAST_IN_FILE,
            set_uuid: [7; 16],
            volume_seq: 3,
            tape_file: 4,
            block_seq: 99,
            payload_len: payload.len() as u32,
            first_record: 0,
            session: 2,
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let payload = b"hello tape";
        let mut buf = Vec::new();
        sample(payload).encode_block(payload, &mut buf);
        assert!(BlockHeader::decode(&buf).is_ok());
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    BlockHeader::decode(&b).is_err(),
                    "flip at {byte}.{bit} undetected"
                );
            }
        }
    }

    #[test]
    fn unknown_informational_flags_are_accepted_but_critical_ones_are_not() {
        let payload = b"x";
        let mut h = sample(payload);
        h.flags = 1 << 20;
        let mut buf = Vec::new();
        h.encode_block(payload, &mut buf);
        assert!(BlockHeader::decode(&buf).is_ok());
        h.flags = 1 << 5;
        h.encode_block(payload, &mut buf);
        assert_eq!(
            BlockHeader::decode(&buf).unwrap_err(),
            FormatError::UnknownCriticalFlags(1 << 5)
        );
    }

    #[test]
    fn crc_matches_zlib_crc32_of_known_input() {
        // zlib's crc32("123456789") is the standard check value.
        assert_eq!(block_crc(b"12345", b"6789"), 0xCBF4_3926);
    }
}
