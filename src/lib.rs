//! tapir: a tape and removable-media archiver.
//!
//! Layers, bottom up: [`device`] (drives, the only `unsafe`), [`format`](mod@format) (the
//! on-media format, pure), [`pipeline`] (walk, write, read, restore, verify),
//! and the thin `cli` in the binary's `src/cli/`.

pub mod catalog;
pub mod config;
pub mod device;
pub mod exit;
pub mod format;
pub mod media;
pub mod pipeline;
