//! Packing records into blocks and unpacking them again (FORMAT.md §5).
//!
//! A stream (one tape file) is a sequence of records laid end to end and cut
//! into block payloads. Each block header says where the first record that
//! starts in it begins, so a reader can resynchronise after a lost block.

use super::block::{BlockHeader, BlockKind, BLOCK_HEADER_LEN, FLAG_LAST_IN_FILE, NO_RECORD_START};
use super::meta::StreamPosition;
use super::record::{RecordHeader, RecordType, RECORD_HEADER_LEN};
use super::{FormatError, FORMAT_VERSION};

/// Identity stamped on every block of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIdentity {
    pub kind: BlockKind,
    pub set_uuid: [u8; 16],
    pub volume_seq: u32,
    pub tape_file: u32,
    pub session: u32,
}

/// Turns records into sealed blocks, writing straight into block buffers.
pub struct StreamFramer {
    id: StreamIdentity,
    block_size: usize,
    block_seq: u64,
    /// Current block: header space followed by the payload so far.
    buf: Vec<u8>,
    first_record: u32,
}

impl StreamFramer {
    pub fn new(id: StreamIdentity, block_size: u32, buffer: Vec<u8>) -> Self {
        assert!(
            block_size as usize > BLOCK_HEADER_LEN,
            "block size {block_size} leaves no room for records"
        );
        let mut f = StreamFramer {
            id,
            block_size: block_size as usize,
            block_seq: 0,
            buf: buffer,
            first_record: NO_RECORD_START,
        };
        f.reset_buffer();
        f
    }

    fn reset_buffer(&mut self) {
        self.buf.clear();
        self.buf.resize(BLOCK_HEADER_LEN, 0);
        self.first_record = NO_RECORD_START;
    }

    fn payload_len(&self) -> usize {
        self.buf.len() - BLOCK_HEADER_LEN
    }

    fn room(&self) -> usize {
        self.block_size - self.buf.len()
    }

    /// Where the next record will start.
    pub fn position(&self) -> StreamPosition {
        if self.room() == 0 {
            StreamPosition {
                tape_file: self.id.tape_file,
                block: self.block_seq + 1,
                offset: 0,
            }
        } else {
            StreamPosition {
                tape_file: self.id.tape_file,
                block: self.block_seq,
                offset: self.payload_len() as u32,
            }
        }
    }

    pub fn identity(&self) -> StreamIdentity {
        self.id
    }

    /// Blocks sealed so far.
    pub fn blocks_sealed(&self) -> u64 {
        self.block_seq
    }

    fn seal(&mut self, last: bool, next: Vec<u8>) -> Vec<u8> {
        let payload_len = self.payload_len() as u32;
        let header = BlockHeader {
            version: FORMAT_VERSION,
            kind: self.id.kind,
            flags: if last { FLAG_LAST_IN_FILE } else { 0 },
            set_uuid: self.id.set_uuid,
            volume_seq: self.id.volume_seq,
            tape_file: self.id.tape_file,
            block_seq: self.block_seq,
            payload_len,
            first_record: self.first_record,
            session: self.id.session,
        };
        let h = header.encode(&self.buf[BLOCK_HEADER_LEN..]);
        self.buf[..BLOCK_HEADER_LEN].copy_from_slice(&h);
        self.block_seq += 1;
        let sealed = std::mem::replace(&mut self.buf, next);
        self.reset_buffer();
        sealed
    }

    /// Append one record made of `parts` (concatenated as its body).
    /// `emit` receives each sealed block and returns an empty buffer to reuse.
    pub fn push_record<E>(
        &mut self,
        rtype: RecordType,
        flags: u16,
        parts: &[&[u8]],
        emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
    ) -> Result<StreamPosition, E> {
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        let header = RecordHeader {
            rtype,
            flags,
            body_len: body_len as u32,
        };
        if self.room() == 0 {
            let fresh = emit_sealed(self, emit)?;
            self.buf = fresh;
            self.reset_buffer();
        }
        let pos = self.position();
        if self.first_record == NO_RECORD_START {
            self.first_record = self.payload_len() as u32;
        }
        self.write_bytes(&header.encode(), emit)?;
        for p in parts {
            self.write_bytes(p, emit)?;
        }
        Ok(pos)
    }

    fn write_bytes<E>(
        &mut self,
        mut bytes: &[u8],
        emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.room() == 0 {
                let fresh = emit_sealed(self, emit)?;
                self.buf = fresh;
                self.reset_buffer();
            }
            let n = self.room().min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Seal the current block early, even if not full, so a checkpoint can
    /// flush it to the medium. Does nothing when the block is empty.
    pub fn seal_early<E>(
        &mut self,
        emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        if self.payload_len() == 0 {
            return Ok(());
        }
        let fresh = emit_sealed(self, emit)?;
        self.buf = fresh;
        self.reset_buffer();
        Ok(())
    }

    /// Seal the final block (flagged last in file) and hand it out.
    pub fn finish(mut self) -> Vec<u8> {
        self.seal(true, Vec::new())
    }
}

fn emit_sealed<E>(
    f: &mut StreamFramer,
    emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let sealed = f.seal(false, Vec::new());
    emit(sealed)
}

/// A whole record recovered from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: RecordHeader,
    pub position: StreamPosition,
    pub body: Vec<u8>,
}

/// What happened to the block sequence when a block was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockContinuity {
    /// The block followed its predecessor.
    InOrder,
    /// The block repeats one already seen; it was ignored.
    Duplicate,
    /// Blocks are missing before this one; the partial record, if any, was dropped.
    Gap { missing_from: u64, missing_to: u64 },
}

struct Partial {
    header: RecordHeader,
    position: StreamPosition,
    body: Vec<u8>,
}

/// Reassembles records from blocks, resynchronising after lost blocks.
pub struct StreamDeframer {
    next_block: u64,
    /// Bytes of a record header split across blocks.
    header_bytes: Vec<u8>,
    header_pos: Option<StreamPosition>,
    partial: Option<Partial>,
    /// After a loss, skip bytes until a block's `first_record`.
    resync: bool,
    /// Starting mid-stream: where in the first block a record starts.
    start_offset: Option<u32>,
}

impl Default for StreamDeframer {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDeframer {
    pub fn new() -> Self {
        StreamDeframer {
            next_block: 0,
            header_bytes: Vec::with_capacity(RECORD_HEADER_LEN),
            header_pos: None,
            partial: None,
            resync: false,
            start_offset: None,
        }
    }

    /// Start mid-stream at `block`, parsing from byte `offset` of its
    /// payload: a record start known from a catalog.
    pub fn starting_at(block: u64, offset: u32) -> Self {
        let mut d = Self::new();
        d.next_block = block;
        d.resync = true;
        d.start_offset = Some(offset);
        d
    }

    /// The block sequence number expected next.
    pub fn next_block(&self) -> u64 {
        self.next_block
    }

    /// A block could not be read: drop any record in progress and resync.
    /// Returns the position of the record that was dropped, if any.
    pub fn lose_block(&mut self) -> Option<StreamPosition> {
        self.next_block += 1;
        self.drop_partial()
    }

    fn drop_partial(&mut self) -> Option<StreamPosition> {
        self.resync = true;
        self.start_offset = None;
        self.header_bytes.clear();
        let hp = self.header_pos.take();
        self.partial.take().map(|p| p.position).or(hp)
    }

    /// Is a record split across the end of the last block fed?
    pub fn in_record(&self) -> bool {
        self.partial.is_some() || !self.header_bytes.is_empty()
    }

    /// Feed one verified block; complete records are appended to `out`.
    pub fn push_block(
        &mut self,
        header: &BlockHeader,
        payload: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<BlockContinuity, FormatError> {
        let continuity = if header.block_seq < self.next_block {
            return Ok(BlockContinuity::Duplicate);
        } else if header.block_seq > self.next_block {
            let c = BlockContinuity::Gap {
                missing_from: self.next_block,
                missing_to: header.block_seq - 1,
            };
            self.drop_partial();
            c
        } else {
            BlockContinuity::InOrder
        };
        self.next_block = header.block_seq + 1;
        let mut at = 0usize;
        if self.resync {
            let start = match self.start_offset.take() {
                Some(o) if (o as usize) < payload.len() => o as usize,
                _ if header.first_record == NO_RECORD_START => return Ok(continuity),
                _ => header.first_record as usize,
            };
            at = start;
            self.resync = false;
        }
        while at < payload.len() {
            if let Some(p) = &mut self.partial {
                let want = p.header.body_len as usize - p.body.len();
                let n = want.min(payload.len() - at);
                p.body.extend_from_slice(&payload[at..at + n]);
                at += n;
                if p.body.len() == p.header.body_len as usize {
                    let p = self.partial.take().expect("partial present");
                    out.push(Record {
                        header: p.header,
                        position: p.position,
                        body: p.body,
                    });
                }
                continue;
            }
            if self.header_bytes.is_empty() {
                self.header_pos = Some(StreamPosition {
                    tape_file: header.tape_file,
                    block: header.block_seq,
                    offset: at as u32,
                });
            }
            let n = (RECORD_HEADER_LEN - self.header_bytes.len()).min(payload.len() - at);
            self.header_bytes.extend_from_slice(&payload[at..at + n]);
            at += n;
            if self.header_bytes.len() == RECORD_HEADER_LEN {
                let mut hb = [0u8; RECORD_HEADER_LEN];
                hb.copy_from_slice(&self.header_bytes);
                self.header_bytes.clear();
                let position = self.header_pos.take().expect("header position recorded");
                let rh = match RecordHeader::decode(&hb) {
                    Ok(rh) => rh,
                    Err(e) => {
                        self.resync = true;
                        return Err(e);
                    }
                };
                // Grow with the data rather than trusting the length up front.
                let cap = (rh.body_len as usize).min(1 << 20);
                let p = Partial {
                    header: rh,
                    position,
                    body: Vec::with_capacity(cap),
                };
                if rh.body_len == 0 {
                    out.push(Record {
                        header: rh,
                        position,
                        body: Vec::new(),
                    });
                } else {
                    self.partial = Some(p);
                }
            }
        }
        Ok(continuity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn id() -> StreamIdentity {
        StreamIdentity {
            kind: BlockKind::SessionData,
            set_uuid: [9; 16],
            volume_seq: 1,
            tape_file: 2,
            session: 1,
        }
    }

    fn frame(records: &[Vec<u8>], block_size: u32) -> (Vec<Vec<u8>>, Vec<StreamPosition>) {
        let mut blocks = Vec::new();
        let mut f = StreamFramer::new(id(), block_size, Vec::new());
        let mut positions = Vec::new();
        for r in records {
            let pos = f
                .push_record::<Infallible>(RecordType::Data, 0, &[r], &mut |b| {
                    blocks.push(b);
                    Ok(Vec::new())
                })
                .unwrap();
            positions.push(pos);
        }
        blocks.push(f.finish());
        (blocks, positions)
    }

    fn deframe(blocks: &[Vec<u8>], lose: &[usize]) -> Vec<Record> {
        let mut d = StreamDeframer::new();
        let mut out = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            if lose.contains(&i) {
                d.lose_block();
                continue;
            }
            let (h, p) = BlockHeader::decode(b).unwrap();
            d.push_block(&h, p, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn records_cross_blocks_and_come_back_with_positions() {
        let records: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 37 + 1]).collect();
        let (blocks, positions) = frame(&records, 200);
        assert!(blocks.len() > 10);
        for b in &blocks[..blocks.len() - 1] {
            assert_eq!(b.len(), 200, "every block but the last is full");
        }
        let out = deframe(&blocks, &[]);
        assert_eq!(out.len(), records.len());
        for ((r, want), pos) in out.iter().zip(&records).zip(&positions) {
            assert_eq!(&r.body, want);
            assert_eq!(r.position, *pos);
        }
    }

    #[test]
    fn a_lost_block_costs_only_the_records_it_touches() {
        let records: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 30]).collect();
        let (blocks, positions) = frame(&records, 160);
        let lost = 3usize;
        let out = deframe(&blocks, &[lost]);
        let recovered: Vec<_> = out.iter().map(|r| r.position).collect();
        for (i, pos) in positions.iter().enumerate() {
            let end_block = if i + 1 < positions.len() {
                positions[i + 1].block
            } else {
                blocks.len() as u64 - 1
            };
            let touches = pos.block <= lost as u64 && end_block >= lost as u64;
            if !touches {
                assert!(
                    recovered.contains(pos),
                    "record {i} at {pos:?} should survive"
                );
            }
        }
        assert!(out.len() < records.len());
        assert!(out.len() >= records.len() - 7);
    }

    #[test]
    fn reading_can_start_at_a_record_in_the_middle_of_the_stream() {
        let records: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 45]).collect();
        let (blocks, positions) = frame(&records, 160);
        let k = 23;
        let p = positions[k];
        let mut d = StreamDeframer::starting_at(p.block, p.offset);
        let mut out = Vec::new();
        for b in &blocks[p.block as usize..] {
            let (h, pl) = BlockHeader::decode(b).unwrap();
            d.push_block(&h, pl, &mut out).unwrap();
        }
        assert_eq!(out.len(), records.len() - k);
        assert_eq!(out[0].position, p);
        assert_eq!(out[0].body, records[k]);
    }

    #[test]
    fn duplicate_and_missing_blocks_are_reported() {
        let records: Vec<Vec<u8>> = (0..20).map(|_| vec![1u8; 100]).collect();
        let (blocks, _) = frame(&records, 256);
        let mut d = StreamDeframer::new();
        let mut out = Vec::new();
        let dec = |i: usize| BlockHeader::decode(&blocks[i]).unwrap();
        let (h, p) = dec(0);
        assert_eq!(
            d.push_block(&h, p, &mut out).unwrap(),
            BlockContinuity::InOrder
        );
        assert_eq!(
            d.push_block(&h, p, &mut out).unwrap(),
            BlockContinuity::Duplicate
        );
        let (h, p) = dec(3);
        assert_eq!(
            d.push_block(&h, p, &mut out).unwrap(),
            BlockContinuity::Gap {
                missing_from: 1,
                missing_to: 2
            }
        );
    }
}
