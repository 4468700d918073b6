//! Reading one tape file as a stream of records, surviving bad blocks.
//!
//! Bad or unreadable blocks are retried a bounded number of times, then
//! reported as lost with their position; reading resumes at the next block
//! where a record starts. Nothing read from tape is trusted before its CRC.

use std::collections::VecDeque;

use crate::device::{DeviceError, ReadOutcome, TapeDrive};
use crate::format::block::BlockHeader;
use crate::format::meta::StreamPosition;
use crate::format::stream::{BlockContinuity, Record, StreamDeframer};
use crate::format::{BlockKind, FormatError, MAX_BLOCK_SIZE};

use super::Result;

/// How many times a bad block is read before it is given up.
pub const READ_ATTEMPTS: u32 = 3;

/// What a stream must be, so a misplaced block is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamExpect {
    pub kind: BlockKind,
    pub set_uuid: [u8; 16],
    pub tape_file: u32,
    pub session: u32,
}

/// Blocks that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostBlocks {
    pub tape_file: u32,
    pub first_block: u64,
    pub last_block: u64,
    pub reason: String,
}

#[derive(Debug)]
pub enum StreamEvent {
    Record(Record),
    Lost(LostBlocks),
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamEnd {
    /// The last block carried the LAST_IN_FILE flag.
    pub saw_last_block: bool,
    /// A filemark closed the tape file (otherwise end of data did).
    pub filemark: bool,
    /// Reading stopped early on something this reader cannot go past.
    pub stopped: bool,
}

pub struct StreamReader<'d> {
    drive: &'d mut dyn TapeDrive,
    expect: StreamExpect,
    buf: Vec<u8>,
    deframer: StreamDeframer,
    pending: VecDeque<StreamEvent>,
    end: Option<StreamEnd>,
    saw_last: bool,
    pub blocks_read: u64,
    pub bytes_read: u64,
    pub retries: u64,
}

impl<'d> StreamReader<'d> {
    /// Start reading at the current position, which must be block 0 of the tape file.
    pub fn new(drive: &'d mut dyn TapeDrive, expect: StreamExpect) -> Self {
        Self::with_deframer(drive, expect, StreamDeframer::new())
    }

    /// Start reading at the record at `at`; the drive must be positioned at its block.
    pub fn starting_at(
        drive: &'d mut dyn TapeDrive,
        expect: StreamExpect,
        at: StreamPosition,
    ) -> Self {
        Self::with_deframer(
            drive,
            expect,
            StreamDeframer::starting_at(at.block, at.offset),
        )
    }

    fn with_deframer(
        drive: &'d mut dyn TapeDrive,
        expect: StreamExpect,
        deframer: StreamDeframer,
    ) -> Self {
        let buf_len = drive.max_block_size().min(MAX_BLOCK_SIZE as usize);
        StreamReader {
            drive,
            expect,
            buf: vec![0u8; buf_len],
            deframer,
            pending: VecDeque::new(),
            end: None,
            saw_last: false,
            blocks_read: 0,
            bytes_read: 0,
            retries: 0,
        }
    }

    /// How the stream ended, once `next_event` has returned `None`.
    pub fn end(&self) -> StreamEnd {
        self.end.unwrap_or_default()
    }

    pub fn device_name(&self) -> String {
        self.drive.name().to_string()
    }

    fn lose(&mut self, reason: String) {
        let block = self.deframer.next_block();
        self.deframer.lose_block();
        self.push_lost(block, block, reason);
    }

    fn push_lost(&mut self, first: u64, last: u64, reason: String) {
        // Merge with the previous loss when contiguous and for the same reason.
        if let Some(StreamEvent::Lost(prev)) = self.pending.back_mut() {
            if prev.last_block + 1 == first && prev.reason == reason {
                prev.last_block = last;
                return;
            }
        }
        self.pending.push_back(StreamEvent::Lost(LostBlocks {
            tape_file: self.expect.tape_file,
            first_block: first,
            last_block: last,
            reason,
        }));
    }

    fn finish(&mut self, filemark: bool, stopped: bool) {
        if self.deframer.in_record() {
            let block = self.deframer.next_block();
            self.push_lost(
                block,
                block,
                "the tape file ends inside a record (interrupted write)".into(),
            );
        }
        self.end = Some(StreamEnd {
            saw_last_block: self.saw_last,
            filemark,
            stopped,
        });
    }

    /// Read one block, retrying bad ones. Returns the outcome and, for a
    /// block, whether it verified (`Err` holds why it did not).
    fn read_verified(&mut self) -> Result<Option<std::result::Result<usize, String>>> {
        let (blocks, bytes) = (&mut self.blocks_read, &mut self.bytes_read);
        let read = read_block_retrying(&mut *self.drive, &mut self.buf, &mut self.retries, |n| {
            *blocks += 1;
            *bytes += n as u64;
        })?;
        Ok(match read {
            BlockRead::Block(n) => Some(Ok(n)),
            BlockRead::Bad(why) => Some(Err(why)),
            BlockRead::End { filemark } => {
                self.finish(filemark, false);
                None
            }
        })
    }

    /// The next record or loss in the stream; `None` at its end.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if self.end.is_some() {
                return Ok(None);
            }
            let n = match self.read_verified()? {
                None => continue,
                Some(Err(reason)) => {
                    self.lose(reason);
                    continue;
                }
                Some(Ok(n)) => n,
            };
            let (header, payload) =
                BlockHeader::decode(&self.buf[..n]).expect("block verified just now");
            let e = &self.expect;
            if header.kind != e.kind
                || header.tape_file != e.tape_file
                || header.session != e.session
                || header.set_uuid != e.set_uuid
            {
                let reason = format!(
                    "misplaced block: it says {:?}, tape file {}, session {}, block {}",
                    header.kind, header.tape_file, header.session, header.block_seq
                );
                self.lose(reason);
                continue;
            }
            let mut records = Vec::new();
            let pushed = self.deframer.push_block(&header, payload, &mut records);
            let last = header.is_last_in_file();
            match pushed {
                Ok(BlockContinuity::InOrder) => {}
                Ok(BlockContinuity::Duplicate) => continue,
                Ok(BlockContinuity::Gap {
                    missing_from,
                    missing_to,
                }) => self.push_lost(
                    missing_from,
                    missing_to,
                    "blocks missing from the tape file".into(),
                ),
                Err(e) => {
                    // Records after this point cannot be trusted: stop here.
                    let block = header.block_seq;
                    for r in records.drain(..) {
                        self.pending.push_back(StreamEvent::Record(r));
                    }
                    self.push_lost(block, block, format!("unreadable record: {e}"));
                    self.end = Some(StreamEnd {
                        saw_last_block: false,
                        filemark: false,
                        stopped: true,
                    });
                    continue;
                }
            }
            for r in records {
                self.pending.push_back(StreamEvent::Record(r));
            }
            if last {
                self.saw_last = true;
            }
        }
    }
}

/// Position helper for messages.
pub fn describe_position(p: StreamPosition) -> String {
    format!(
        "tape file {}, block {}, offset {}",
        p.tape_file, p.block, p.offset
    )
}

/// One block read from tape, after bounded retries.
pub(super) enum BlockRead {
    /// A block of this many bytes whose header and CRC verify.
    Block(usize),
    /// A block that could not be used, and why.
    Bad(String),
    /// The tape file ended: at a filemark, or at end of data.
    End { filemark: bool },
}

/// Read the next block into `buf` and verify it; a bad one is read again
/// (spacing back over it) up to `READ_ATTEMPTS` times. `counted` is told
/// the size of every block read; `retries` counts the re-reads.
pub(super) fn read_block_retrying(
    drive: &mut dyn TapeDrive,
    buf: &mut [u8],
    retries: &mut u64,
    mut counted: impl FnMut(usize),
) -> Result<BlockRead> {
    let mut last_problem = String::new();
    for attempt in 0..READ_ATTEMPTS {
        if attempt > 0 {
            *retries += 1;
            // Go back over the block just read to read it again.
            drive.space_blocks(-1)?;
        }
        match drive.read_block(buf) {
            Ok(ReadOutcome::Block(n)) => {
                counted(n);
                match BlockHeader::decode(&buf[..n]) {
                    Ok(_) => return Ok(BlockRead::Block(n)),
                    // Re-reading will not help: a newer format.
                    Err(
                        e @ (FormatError::UnsupportedVersion(_)
                        | FormatError::UnknownCriticalFlags(_)),
                    ) => return Ok(BlockRead::Bad(e.to_string())),
                    Err(e) => last_problem = e.to_string(),
                }
            }
            Ok(ReadOutcome::Filemark) => return Ok(BlockRead::End { filemark: true }),
            Ok(ReadOutcome::EndOfData) => return Ok(BlockRead::End { filemark: false }),
            Err(DeviceError::MediumError { detail, .. }) => {
                last_problem = format!("medium error: {detail}")
            }
            Err(DeviceError::BlockTooLarge { needed, .. }) => {
                return Ok(BlockRead::Bad(format!(
                    "block of {needed} bytes is larger than any tapir block"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(BlockRead::Bad(format!(
        "{last_problem} (after {READ_ATTEMPTS} attempts)"
    )))
}
