//! The stream deframer and every record-body decoder, fed pseudo-blocks.
//!
//! The input is a sequence of chunks: `ctl: u8, len: u16 LE, bytes[len]`.
//! A chunk that decodes as a block is fed as it is. Otherwise `ctl` decides:
//! lose a block, wrap the bytes as the payload of a valid block (in order,
//! duplicated, or after a gap), or read them as records and frame them with
//! the real StreamFramer. Each record recovered is decoded by its type.
#![no_main]

use std::convert::Infallible;

use libfuzzer_sys::fuzz_target;
use tapir::format::block::{BlockHeader, BlockKind, BLOCK_HEADER_LEN, NO_RECORD_START};
use tapir::format::label::VolumeLabel;
use tapir::format::meta::{
    from_cbor, CatalogEnd, CatalogEntry, CatalogHeader, Checkpoint, Entry, EntryEnd, SessionEnd,
    SessionStart,
};
use tapir::format::record::{DataPrefix, RecordType, DATA_CHUNK_LEN, RECORD_FLAG_SKIPPABLE};
use tapir::format::setcat::{
    decode_page_index, SessionInfo, SetCatalogEnd, SetCatalogEntry, SetCatalogHeader, VolumeInfo,
    PAGE_INDEX_MAX_REFS,
};
use tapir::format::stream::{Record, StreamDeframer, StreamFramer, StreamIdentity};
use tapir::format::FORMAT_VERSION;

const TYPES: [RecordType; 15] = [
    RecordType::SessionStart,
    RecordType::Entry,
    RecordType::Data,
    RecordType::EntryEnd,
    RecordType::Checkpoint,
    RecordType::SessionEnd,
    RecordType::CatalogHeader,
    RecordType::CatalogEntry,
    RecordType::CatalogEnd,
    RecordType::SetCatalogHeader,
    RecordType::VolumeInfo,
    RecordType::SessionInfo,
    RecordType::PageIndex,
    RecordType::SetCatalogEntry,
    RecordType::SetCatalogEnd,
];

struct Feeder {
    deframer: StreamDeframer,
    out: Vec<Record>,
    /// Sequence number the next synthesised block gets.
    seq: u64,
    content: Vec<u8>,
}

impl Feeder {
    fn feed(&mut self, header: &BlockHeader, payload: &[u8]) {
        let _ = self.deframer.push_block(header, payload, &mut self.out);
        self.seq = self.deframer.next_block();
        for r in self.out.drain(..) {
            assert_eq!(r.body.len(), r.header.body_len as usize);
            decode_body(&r, &mut self.content);
        }
    }

    fn wrap(&mut self, seq: u64, first_record: u32, payload: &[u8]) {
        let header = BlockHeader {
            version: FORMAT_VERSION,
            kind: BlockKind::SessionData,
            flags: 0,
            set_uuid: [0; 16],
            volume_seq: 1,
            tape_file: 2,
            block_seq: seq,
            payload_len: payload.len() as u32,
            first_record,
            session: 1,
        };
        let mut block = Vec::with_capacity(BLOCK_HEADER_LEN + payload.len());
        header.encode_block(payload, &mut block);
        let (h, p) = BlockHeader::decode(&block).expect("freshly encoded block decodes");
        self.feed(&h, p);
    }
}

fn decode_body(r: &Record, content: &mut Vec<u8>) {
    let b = &r.body[..];
    match r.header.rtype {
        RecordType::SessionStart => drop(from_cbor::<SessionStart>(b)),
        RecordType::Entry => {
            if let Ok(e) = from_cbor::<Entry>(b) {
                let _ = e.kind();
            }
        }
        RecordType::Data => {
            if let Ok((prefix, stored)) = DataPrefix::decode(b) {
                if prefix.decode_content(stored, content).is_ok() {
                    assert_eq!(content.len(), prefix.raw_len as usize);
                }
                assert!(content.len() <= DATA_CHUNK_LEN);
            }
        }
        RecordType::EntryEnd => drop(from_cbor::<EntryEnd>(b)),
        RecordType::Checkpoint => drop(from_cbor::<Checkpoint>(b)),
        RecordType::SessionEnd => drop(from_cbor::<SessionEnd>(b)),
        RecordType::CatalogHeader => drop(from_cbor::<CatalogHeader>(b)),
        RecordType::CatalogEntry => drop(from_cbor::<CatalogEntry>(b)),
        RecordType::CatalogEnd => drop(from_cbor::<CatalogEnd>(b)),
        RecordType::SetCatalogHeader => drop(from_cbor::<SetCatalogHeader>(b)),
        RecordType::VolumeInfo => drop(from_cbor::<VolumeInfo>(b)),
        RecordType::SessionInfo => drop(from_cbor::<SessionInfo>(b)),
        RecordType::PageIndex => drop(decode_page_index(b, PAGE_INDEX_MAX_REFS)),
        RecordType::SetCatalogEntry => drop(from_cbor::<SetCatalogEntry>(b)),
        RecordType::SetCatalogEnd => drop(from_cbor::<SetCatalogEnd>(b)),
        RecordType::Unknown(_) => drop(from_cbor::<VolumeLabel>(b)),
    }
}

/// Read `bytes` as records (`type: u8, len: u8 [, len_hi: u8], body`) and
/// frame them with the real framer into blocks of `block_size`.
fn frame_records(bytes: &[u8], block_size: u32) -> Vec<Vec<u8>> {
    let id = StreamIdentity {
        kind: BlockKind::SessionData,
        set_uuid: [0; 16],
        volume_seq: 1,
        tape_file: 2,
        session: 1,
    };
    let mut framer = StreamFramer::new(id, block_size, Vec::new());
    let mut blocks = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let t = rest[0];
        let mut len = rest[1] as usize;
        rest = &rest[2..];
        if t & 0x80 != 0 && !rest.is_empty() {
            len |= (rest[0] as usize) << 8;
            rest = &rest[1..];
        }
        let (body, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        let (rtype, flags) = match (t & 0x7f) as usize {
            i if i < TYPES.len() => (TYPES[i], 0),
            i => (
                RecordType::Unknown(0x0100 + i as u16),
                RECORD_FLAG_SKIPPABLE,
            ),
        };
        // Split the body in two parts to exercise multi-part records.
        let (a, b) = body.split_at(body.len() / 2);
        let _ = framer.push_record::<Infallible>(rtype, flags, &[a, b], &mut |blk| {
            blocks.push(blk);
            Ok(Vec::new())
        });
    }
    blocks.push(framer.finish());
    blocks
}

fuzz_target!(|data: &[u8]| {
    let mut f = Feeder {
        deframer: StreamDeframer::new(),
        out: Vec::new(),
        seq: 0,
        content: Vec::new(),
    };
    let mut rest = data;
    while rest.len() >= 3 {
        let ctl = rest[0];
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize % 4096;
        rest = &rest[3..];
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;

        if let Ok((h, p)) = BlockHeader::decode(chunk) {
            f.feed(&h, p);
            continue;
        }
        match ctl & 3 {
            0 => {
                f.deframer.lose_block();
                f.seq = f.deframer.next_block();
            }
            1 => {
                let seq = match ctl >> 5 {
                    0 => f.seq.saturating_sub(1),           // duplicate
                    1 => f.seq + 1 + (ctl as u64 >> 2 & 7), // gap
                    _ => f.seq,
                };
                let first_record = match chunk.first() {
                    Some(&b) if b != 0 && !chunk.is_empty() => b as u32 % chunk.len() as u32,
                    _ => NO_RECORD_START,
                };
                let payload = chunk.get(1..).unwrap_or(&[]);
                let first_record = if first_record as usize >= payload.len() {
                    NO_RECORD_START
                } else {
                    first_record
                };
                f.wrap(seq, first_record, payload);
            }
            _ => {
                let block_size = BLOCK_HEADER_LEN as u32 + 1 + (ctl as u32 >> 2) * 8;
                for block in frame_records(chunk, block_size) {
                    let (h, p) = BlockHeader::decode(&block).expect("framer output decodes");
                    // Renumber so the framed blocks continue the stream.
                    let seq = f.seq;
                    f.wrap(seq, h.first_record, p);
                }
            }
        }
    }
});
