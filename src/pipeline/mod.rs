//! Walking sources, writing sessions through the double-buffered writer,
//! reading sessions back (list, restore, verify).

pub mod assemble;
pub mod disks;
pub mod glob;
pub mod history;
pub mod job;
pub mod joblib;
pub mod list;
pub mod manifest;
pub mod pool;
pub mod qualify;
pub mod reader;
mod replay;
pub mod rescue;
pub mod restore;
pub mod setcat;
pub mod setrestore;
pub mod source;
pub mod span;
pub mod spool;
pub mod target;
pub mod verify;
pub mod volume;
pub mod writer;

use crate::device::DeviceError;
use crate::exit::ExitStatus;
use crate::format::FormatError;

/// Errors that end a job, with the context an administrator needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{device}: tape file {tape_file}, block {block}: {source}")]
    Format {
        device: String,
        tape_file: u32,
        block: u64,
        #[source]
        source: FormatError,
    },
    /// The job refused to act, to protect data already on the cartridge.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a pipeline thread panicked: {0}")]
    Panic(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit status this error maps to.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Device(DeviceError::WriteProtected { .. }) => ExitStatus::Refused,
            Error::Device(
                DeviceError::NoMedium { .. }
                | DeviceError::Busy { .. }
                | DeviceError::Absent { .. },
            ) => ExitStatus::Unavailable,
            Error::Device(DeviceError::InvalidRequest { .. }) => ExitStatus::Usage,
            Error::Device(_) => ExitStatus::DeviceError,
            Error::Format { .. } => ExitStatus::DataDamage,
            Error::Refused(_) => ExitStatus::Refused,
            Error::Usage(_) | Error::Config(_) => ExitStatus::Usage,
            Error::Catalog(_) => ExitStatus::DeviceError,
            Error::Target(_) | Error::Io { .. } | Error::Panic(_) => ExitStatus::DeviceError,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Feed `n` zero bytes to a hasher: the holes of a sparse file.
/// BLAKE3 over many small pieces (catalog records), fed to the hasher in
/// large slices: BLAKE3 hashes several 1 KiB chunks at once (SIMD) only
/// when it is given them at once; small updates go one 64-byte block at a
/// time, several times slower. The digest is the same either way.
pub(crate) struct PieceHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

impl PieceHasher {
    const FLUSH_AT: usize = 64 << 10;

    pub(crate) fn new() -> Self {
        PieceHasher {
            hasher: blake3::Hasher::new(),
            pending: Vec::with_capacity(Self::FLUSH_AT),
        }
    }

    pub(crate) fn update(&mut self, piece: &[u8]) {
        if self.pending.len() + piece.len() > Self::FLUSH_AT {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        if piece.len() >= Self::FLUSH_AT {
            self.hasher.update(piece);
        } else {
            self.pending.extend_from_slice(piece);
        }
    }

    pub(crate) fn finalize(mut self) -> blake3::Hash {
        self.hasher.update(&self.pending);
        self.hasher.finalize()
    }
}

pub(crate) fn hash_zeros(h: &mut blake3::Hasher, mut n: u64) {
    static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::PieceHasher;

    #[test]
    fn piece_hasher_digest_is_blake3_of_the_pieces_joined() {
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| {
                let len = if i % 997 == 0 {
                    70_000
                } else {
                    (i % 300) as usize
                };
                (0..len).map(|k| (k as u32 ^ i) as u8).collect()
            })
            .collect();
        let mut h = PieceHasher::new();
        for p in &pieces {
            h.update(p);
        }
        assert_eq!(h.finalize(), blake3::hash(&pieces.concat()));
        assert_eq!(PieceHasher::new().finalize(), blake3::hash(b""));
    }
}
