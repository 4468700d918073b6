//! Exit codes shared by every command (README and man page list them).

/// How a command ended, from the administrator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// Everything asked for was done and checked.
    Success = 0,
    /// Done, but with warnings (unreadable sources, skipped files).
    Warnings = 1,
    /// Bad usage or configuration.
    Usage = 2,
    /// Refused to protect data: labelled, foreign, unexpired, wrong or write-protected cartridge.
    Refused = 3,
    /// Data damage: entries not restored or not verified.
    DataDamage = 4,
    /// A needed cartridge or drive was not available in time.
    Unavailable = 5,
    /// Device or system error.
    DeviceError = 6,
    /// Interrupted (Ctrl-C, SIGTERM): the session was closed early with its
    /// catalog, and what it holds is restorable; not every source was written.
    Interrupted = 7,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        self as i32
    }
}
