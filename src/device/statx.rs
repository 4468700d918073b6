//! `statx(2)` on an open file: its metadata and, in the same call, the
//! inode flags tapir keeps (immutable, append-only, nodump) where the
//! filesystem reports them as statx attributes (ext4, xfs, btrfs and
//! others do). The walker then needs no `FS_IOC_GETFLAGS` ioctl per file.
//!
//! Lives under `device/` only because the system call is `unsafe` to make.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use crate::format::meta::{INODE_APPEND_ONLY, INODE_IMMUTABLE, INODE_NODUMP};

/// (statx attribute, tapir bit): the attributes that are inode flags.
const ATTRIBUTES: [(u64, u32); 3] = [
    (libc::STATX_ATTR_IMMUTABLE as u64, INODE_IMMUTABLE),
    (libc::STATX_ATTR_APPEND as u64, INODE_APPEND_ONLY),
    (libc::STATX_ATTR_NODUMP as u64, INODE_NODUMP),
];

/// A file's metadata as the walker uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// Tapir's inode-flag bits, when statx reported all three; None: ask
    /// with [`super::inode_flags::get`].
    pub inode_flags: Option<u32>,
}

impl FileStat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
}

impl From<&std::fs::Metadata> for FileStat {
    fn from(md: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            blocks: md.blocks(),
            nlink: md.nlink(),
            dev: md.dev(),
            ino: md.ino(),
            rdev: md.rdev(),
            atime: (md.atime(), md.atime_nsec()),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            inode_flags: None,
        }
    }
}

/// Tapir bits from statx attributes, if the mask covers all three.
fn flags_of(attributes: u64, mask: u64) -> Option<u32> {
    ATTRIBUTES.iter().all(|(a, _)| mask & a != 0).then(|| {
        ATTRIBUTES
            .iter()
            .filter(|(a, _)| attributes & a != 0)
            .fold(0, |acc, (_, t)| acc | t)
    })
}

/// The metadata of the open file `fd`, with its inode flags when statx has them.
pub fn fstat(fd: impl AsFd) -> io::Result<FileStat> {
    let fd = fd.as_fd();
    // SAFETY: all-zero bytes are a valid `statx` (plain integers).
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is borrowed and open for the call; the path is a valid
    // NUL-terminated empty string, which AT_EMPTY_PATH makes refer to the
    // fd itself; `sx` is a valid, writable statx the kernel fills.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            &mut sx,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        // No statx (a kernel before 4.11, or a seccomp filter that refuses
        // it): plain fstat, and the flags from the ioctl, as std does.
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM) => fstat_plain(fd),
            _ => Err(e),
        };
    }
    let dev = |major: u32, minor: u32| libc::makedev(major, minor);
    let time = |t: libc::statx_timestamp| (t.tv_sec, t.tv_nsec as i64);
    Ok(FileStat {
        mode: sx.stx_mode as u32,
        uid: sx.stx_uid,
        gid: sx.stx_gid,
        size: sx.stx_size,
        blocks: sx.stx_blocks,
        nlink: sx.stx_nlink as u64,
        dev: dev(sx.stx_dev_major, sx.stx_dev_minor),
        ino: sx.stx_ino,
        rdev: dev(sx.stx_rdev_major, sx.stx_rdev_minor),
        atime: time(sx.stx_atime),
        mtime: time(sx.stx_mtime),
        ctime: time(sx.stx_ctime),
        inode_flags: flags_of(sx.stx_attributes, sx.stx_attributes_mask),
    })
}

/// [`fstat`] by `fstat(2)`: no inode flags.
fn fstat_plain(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<FileStat> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok(FileStat {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        nlink: st.st_nlink,
        dev: st.st_dev,
        ino: st.st_ino,
        rdev: st.st_rdev,
        atime: (st.st_atime, st.st_atime_nsec),
        mtime: (st.st_mtime, st.st_mtime_nsec),
        ctime: (st.st_ctime, st.st_ctime_nsec),
        inode_flags: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_give_flags_only_when_all_three_are_reported() {
        let all =
            (libc::STATX_ATTR_IMMUTABLE | libc::STATX_ATTR_APPEND | libc::STATX_ATTR_NODUMP) as u64;
        assert_eq!(flags_of(0, all), Some(0));
        assert_eq!(
            flags_of(
                libc::STATX_ATTR_NODUMP as u64,
                all | libc::STATX_ATTR_COMPRESSED as u64
            ),
            Some(INODE_NODUMP)
        );
        assert_eq!(
            flags_of(all, all),
            Some(INODE_IMMUTABLE | INODE_APPEND_ONLY | INODE_NODUMP)
        );
        assert_eq!(flags_of(0, libc::STATX_ATTR_IMMUTABLE as u64), None);
    }

    #[test]
    fn fstat_agrees_with_std_and_with_the_ioctl() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let ours = fstat(&f).unwrap();
        let std_md = FileStat::from(&f.metadata().unwrap());
        assert_eq!(
            FileStat {
                inode_flags: None,
                ..ours
            },
            std_md
        );
        assert!(ours.is_file());
        assert_eq!(
            fstat_plain(std::os::fd::AsFd::as_fd(&f)).unwrap(),
            std_md,
            "the fallback without statx"
        );
        if let Some(bits) = ours.inode_flags {
            assert_eq!(bits, super::super::inode_flags::get(&f).unwrap());
        }
    }
}
