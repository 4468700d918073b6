//! A drive that does something once at a known point of a session: a
//! signal arriving, a disk pulled out.

use tapir::device::{
    BlockRead, BlockWrite, DeviceResult, DriveStatus, ReadOutcome, TapeDrive, TapePosition,
    WriteOutcome,
};

/// Wraps a drive; when `written` blocks have been written, runs `action`
/// once, just before the next block is written.
pub struct BeforeBlock {
    inner: Box<dyn TapeDrive>,
    when_written: u64,
    written: u64,
    action: Option<Box<dyn FnOnce() + Send>>,
}

impl BeforeBlock {
    pub fn new(
        inner: Box<dyn TapeDrive>,
        when_written: u64,
        action: impl FnOnce() + Send + 'static,
    ) -> Self {
        BeforeBlock {
            inner,
            when_written,
            written: 0,
            action: Some(Box::new(action)),
        }
    }
}

impl BlockRead for BeforeBlock {
    fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<ReadOutcome> {
        self.inner.read_block(buf)
    }
}

impl BlockWrite for BeforeBlock {
    fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome> {
        if self.written == self.when_written {
            if let Some(action) = self.action.take() {
                action();
            }
        }
        self.written += 1;
        self.inner.write_block(block)
    }
    fn write_filemarks(&mut self, count: u32, immediate: bool) -> DeviceResult<()> {
        self.inner.write_filemarks(count, immediate)
    }
    fn flush(&mut self) -> DeviceResult<()> {
        self.inner.flush()
    }
}

impl TapeDrive for BeforeBlock {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn rewind(&mut self) -> DeviceResult<()> {
        self.inner.rewind()
    }
    fn space_filemarks(&mut self, count: i64) -> DeviceResult<()> {
        self.inner.space_filemarks(count)
    }
    fn space_blocks(&mut self, count: i64) -> DeviceResult<()> {
        self.inner.space_blocks(count)
    }
    fn seek_end_of_data(&mut self) -> DeviceResult<()> {
        self.inner.seek_end_of_data()
    }
    fn position(&mut self) -> DeviceResult<TapePosition> {
        self.inner.position()
    }
    fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()> {
        self.inner.locate(file, block)
    }
    fn status(&mut self) -> DeviceResult<DriveStatus> {
        self.inner.status()
    }
    fn max_block_size(&self) -> usize {
        self.inner.max_block_size()
    }
    fn room_before_early_warning(&mut self) -> Option<u64> {
        self.inner.room_before_early_warning()
    }
    fn streams(&self) -> bool {
        self.inner.streams()
    }
}
