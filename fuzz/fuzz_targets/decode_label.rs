//! LabelBlock::decode on arbitrary bytes: must never panic; an accepted label
//! must survive its own round trip.
//!
//! Each input is tried three ways: as a whole label block; as the framed part
//! behind a valid text area; and as the CBOR payload of a correctly framed
//! label block, so the CBOR label decoder and the checks after it are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapir::format::block::{BlockHeader, BlockKind, FLAG_LAST_IN_FILE, NO_RECORD_START};
use tapir::format::label::{LabelBlock, LABEL_TEXT_AREA, LABEL_TEXT_MAGIC};
use tapir::format::FORMAT_VERSION;

fuzz_target!(|data: &[u8]| {
    check(data);

    let mut block = Vec::with_capacity(LABEL_TEXT_AREA + 64 + data.len());
    block.extend_from_slice(LABEL_TEXT_MAGIC.as_bytes());
    block.resize(LABEL_TEXT_AREA, 0);
    block.extend_from_slice(data);
    check(&block);

    if data.len() <= 1 << 20 {
        let header = BlockHeader {
            version: FORMAT_VERSION,
            kind: BlockKind::Label,
            flags: FLAG_LAST_IN_FILE,
            set_uuid: [0; 16],
            volume_seq: 0,
            tape_file: 0,
            block_seq: 0,
            payload_len: data.len() as u32,
            first_record: NO_RECORD_START,
            session: 0,
        };
        let mut framed = Vec::new();
        header.encode_block(data, &mut framed);
        block.truncate(LABEL_TEXT_AREA);
        block.extend_from_slice(&framed);
        check(&block);
    }
});

fn check(block: &[u8]) {
    if let Ok(label) = LabelBlock::decode(block) {
        let _ = LabelBlock::text(&label);
        let again = LabelBlock::encode(&label);
        if let Ok(back) = LabelBlock::decode(&again) {
            assert_eq!(back, label);
        }
    }
}
