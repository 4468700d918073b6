//! Linux inode flags (`chattr`/`lsattr`): immutable, append-only, nodump.
//!
//! Lives under `device/` only because every ioctl does. The rest of tapir sees
//! safe functions that speak tapir's own bits from [`crate::format::meta`].

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

use crate::format::meta::{INODE_APPEND_ONLY, INODE_IMMUTABLE, INODE_NODUMP};

/// Kernel bits from `linux/fs.h`.
const FS_IMMUTABLE_FL: u32 = 0x10;
const FS_APPEND_FL: u32 = 0x20;
const FS_NODUMP_FL: u32 = 0x40;

/// (kernel bit, tapir bit) pairs: the only flags tapir reads or changes.
const MAPPING: [(u32, u32); 3] = [
    (FS_IMMUTABLE_FL, INODE_IMMUTABLE),
    (FS_APPEND_FL, INODE_APPEND_ONLY),
    (FS_NODUMP_FL, INODE_NODUMP),
];

// The request numbers are declared with `long` but the kernel copies an
// `int` (as chattr does), so the data type here is `c_int`.
nix::ioctl_read_bad!(fs_ioc_getflags, libc::FS_IOC_GETFLAGS, libc::c_int);
nix::ioctl_write_ptr_bad!(fs_ioc_setflags, libc::FS_IOC_SETFLAGS, libc::c_int);

/// Kernel flag word to tapir bits (unknown kernel bits dropped).
pub fn from_kernel(kernel: u32) -> u32 {
    MAPPING
        .iter()
        .filter(|(k, _)| kernel & k != 0)
        .fold(0, |acc, (_, t)| acc | t)
}

/// Tapir bits to kernel bits (unknown tapir bits dropped).
pub fn to_kernel(tapir: u32) -> u32 {
    MAPPING
        .iter()
        .filter(|(_, t)| tapir & t != 0)
        .fold(0, |acc, (k, _)| acc | k)
}

/// All kernel bits tapir manages.
const MANAGED_KERNEL: u32 = FS_IMMUTABLE_FL | FS_APPEND_FL | FS_NODUMP_FL;

fn unsupported(e: Errno) -> bool {
    matches!(e, Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL)
}

fn get_kernel(fd: impl AsFd) -> Result<u32, Errno> {
    let mut raw: libc::c_int = 0;
    // SAFETY: the fd is borrowed and open for the whole call; `raw` is a valid,
    // writable c_int, which is exactly what FS_IOC_GETFLAGS writes.
    unsafe { fs_ioc_getflags(fd.as_fd().as_raw_fd(), &mut raw) }?;
    Ok(raw as u32)
}

/// The object's inode flags in tapir bits. Filesystems without inode flags
/// (and objects that do not support the ioctl) report none.
pub fn get(fd: impl AsFd) -> io::Result<u32> {
    match get_kernel(fd) {
        Ok(k) => Ok(from_kernel(k)),
        Err(e) if unsupported(e) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Set the three tapir-managed flags to `tapir_bits`, leaving every other
/// kernel flag (extents, compression, ...) as it is. Skips the ioctl when
/// nothing changes, so unsupported filesystems succeed for "no flags".
pub fn set(fd: impl AsFd, tapir_bits: u32) -> io::Result<()> {
    let fd = fd.as_fd();
    let current = match get_kernel(fd) {
        Ok(k) => k,
        Err(e) if unsupported(e) && to_kernel(tapir_bits) == 0 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let wanted = (current & !MANAGED_KERNEL) | to_kernel(tapir_bits);
    if wanted == current {
        return Ok(());
    }
    let raw = wanted as libc::c_int;
    // SAFETY: the fd is borrowed and open for the whole call; `raw` is a valid
    // c_int that FS_IOC_SETFLAGS only reads.
    unsafe { fs_ioc_setflags(fd.as_raw_fd(), &raw) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_round_trips() {
        for bits in 0..8u32 {
            assert_eq!(from_kernel(to_kernel(bits)), bits);
        }
        assert_eq!(to_kernel(INODE_IMMUTABLE), 0x10);
        assert_eq!(to_kernel(INODE_APPEND_ONLY), 0x20);
        assert_eq!(to_kernel(INODE_NODUMP), 0x40);
        // Kernel bits tapir does not manage (here FS_EXTENT_FL) are dropped.
        assert_eq!(from_kernel(0x0008_0000 | 0x40), INODE_NODUMP);
    }

    #[test]
    fn nodump_round_trip_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = std::fs::File::create(&path).unwrap();
        let before = get(&f).unwrap();
        assert_eq!(before & INODE_NODUMP, 0);
        // Setting nodump needs only ownership; a filesystem without flags
        // support reports an error here, which is not what we test.
        if set(&f, INODE_NODUMP).is_err() {
            return;
        }
        assert_eq!(get(&f).unwrap(), INODE_NODUMP);
        set(&f, 0).unwrap();
        assert_eq!(get(&f).unwrap(), 0);
    }

    #[test]
    fn unsupported_objects_report_no_flags() {
        // A pipe does not support the ioctl: no flags, no error.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(get(&r).unwrap(), 0);
        set(&r, 0).unwrap();
    }
}
