//! BlockHeader::decode on arbitrary bytes: must never panic, and whatever it
//! accepts must re-encode to the same bytes.
//!
//! Each input is tried twice: as it is, and with a correct CRC-32 patched in
//! (bytes 60..64), so the checks behind the CRC (version, flags, kind, first
//! record offset) see fuzzer-chosen values too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapir::format::block::{BlockHeader, BLOCK_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= BLOCK_HEADER_LEN {
        let mut fixed = data.to_vec();
        let crc = crc32(&[&fixed[..60], &fixed[BLOCK_HEADER_LEN..]]);
        fixed[60..64].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});

fn check(block: &[u8]) {
    if let Ok((header, payload)) = BlockHeader::decode(block) {
        assert_eq!(header.payload_len as usize, payload.len());
        let mut again = Vec::new();
        header.encode_block(payload, &mut again);
        assert_eq!(again.len(), BLOCK_HEADER_LEN + payload.len());
        assert_eq!(&again[..], &block[..again.len()]);
    }
}

/// CRC-32 (IEEE 802.3, as zlib), bit by bit: the spec's checksum, written out
/// here so the fuzz crate depends on tapir alone.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}
