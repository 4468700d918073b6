//! The restore target: a directory that archive entries are created in, safely.
//!
//! Archive paths come from media and are untrusted. Every path is validated
//! (no absolute paths, no `..`), and every object is created by walking its
//! parent directories one component at a time from the target's directory fd
//! with `O_NOFOLLOW`, so a symlink (from the archive or planted in the target)
//! can never redirect a write outside the target. Metadata is applied with
//! `*at` calls that do not follow symlinks, or on an fd opened `O_NOFOLLOW`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{
    fchown, fchownat, linkat, mkfifoat, symlinkat, unlinkat, Gid, Group, Uid, UnlinkatFlags, User,
};

use crate::device::inode_flags;
use crate::format::meta::{Entry, EntryKind, Timestamp, INODE_APPEND_ONLY, INODE_IMMUTABLE};

/// An archive path that must not be restored, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe archive path {path:?} refused: {reason}")]
pub struct UnsafePath {
    /// The path as found in the archive (lossy UTF-8).
    pub path: String,
    pub reason: &'static str,
}

/// Why an entry could not be created or its metadata applied.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error("{path}: symlinked parent directory {parent:?} refused; tapir never restores through a symbolic link")]
    SymlinkedParent { path: String, parent: String },
    #[error("{path}: parent {parent:?} exists and is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("{path}: exists as a directory; not replaced")]
    IsDirectory { path: String },
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl TargetError {
    fn io(path: &[u8], op: &'static str, source: impl Into<io::Error>) -> Self {
        TargetError::Io {
            path: show(path),
            op,
            source: source.into(),
        }
    }
}

/// Whether a creation made a new object or found one in the way.
#[derive(Debug)]
pub enum Created<T> {
    New(T),
    /// Something already exists at the path and overwriting was not asked
    /// for (for `create_dir`: a directory already exists, which is fine).
    Exists,
}

impl<T> Created<T> {
    pub fn is_new(&self) -> bool {
        matches!(self, Created::New(_))
    }
}

/// Whose ownership restored objects get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnershipPolicy {
    /// Restore the archived owner (root only): by name when the name exists
    /// here, else by number; `numeric_only` always uses the numbers.
    Preserve { numeric_only: bool },
    /// Leave objects owned by the restoring user.
    LeaveAsUser,
}

impl OwnershipPolicy {
    /// `Preserve` (by name) when running as root, else `LeaveAsUser`.
    pub fn for_current_user() -> Self {
        if is_root() {
            OwnershipPolicy::Preserve {
                numeric_only: false,
            }
        } else {
            OwnershipPolicy::LeaveAsUser
        }
    }
}

/// Whether the process runs with root's effective uid.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Check an archive path and split it into components. Empty and `.`
/// components are dropped (so `a//b/./c` is `a/b/c`).
pub fn validate_archive_path(path: &[u8]) -> Result<Vec<&[u8]>, UnsafePath> {
    let refuse = |reason| UnsafePath {
        path: show(path),
        reason,
    };
    if path.is_empty() {
        return Err(refuse("empty path"));
    }
    if path.contains(&0) {
        return Err(refuse("contains a NUL byte"));
    }
    if path[0] == b'/' {
        return Err(refuse("absolute path"));
    }
    // FORMAT.md §7.5: writers never produce empty or `.` components, so a
    // path with one is malformed rather than something to tidy up.
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err(refuse("contains a `..` component"));
    }
    if comps.iter().any(|c| c.is_empty()) {
        return Err(refuse(
            "contains an empty component (`//` or a trailing `/`)",
        ));
    }
    if comps.iter().any(|c| *c == b".") {
        return Err(refuse("contains a `.` component"));
    }
    Ok(comps)
}

/// Give a sparse or truncated file its full logical size, so trailing holes
/// (never written) are kept.
pub fn finish_file(path: &[u8], file: &File, size: u64) -> Result<(), TargetError> {
    file.set_len(size)
        .map_err(|e| TargetError::io(path, "set file size", e))
}

/// A parent directory: the target itself or one opened below it.
enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }
}

/// What was found at a path, from `fstatat` without following symlinks.
fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.sec, i64::from(t.nsec))
}

/// A directory being restored into.
pub struct RestoreTarget {
    /// `O_PATH` fd of the target directory: every creation starts here.
    root: OwnedFd,
    /// The target's path, only for the few calls that need one (xattrs on
    /// symlinks and special files), always after the parents were checked.
    root_path: PathBuf,
    /// Directories whose metadata waits until their contents are restored.
    deferred_dirs: Vec<(usize, Vec<u8>, Entry)>,
    /// Files whose immutable/append-only flags wait until the end, since
    /// they would refuse later hard links to them.
    deferred_flags: Vec<(Vec<u8>, u32)>,
    users: HashMap<String, Option<Uid>>,
    groups: HashMap<String, Option<Gid>>,
}

impl RestoreTarget {
    /// Open (creating it and its parents if missing) the target directory.
    pub fn open(dir: &Path) -> Result<Self, TargetError> {
        let shown = dir.as_os_str().as_bytes();
        std::fs::create_dir_all(dir)
            .map_err(|e| TargetError::io(shown, "create target directory", e))?;
        // The target itself is the user's choice, so a symlink here is followed.
        let root = openat(
            nix::fcntl::AT_FDCWD,
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TargetError::io(shown, "open target directory", e))?;
        let root_path = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(RestoreTarget {
            root,
            root_path,
            deferred_dirs: Vec::new(),
            deferred_flags: Vec::new(),
            users: HashMap::new(),
            groups: HashMap::new(),
        })
    }

    /// The target directory as given (made absolute).
    pub fn path(&self) -> &Path {
        &self.root_path
    }

    /// Validate `path`, open its parent directory (creating missing ones when
    /// `create`), and return it with the final component.
    fn resolve<'p>(
        &self,
        path: &'p [u8],
        create: bool,
    ) -> Result<(DirFd<'_>, &'p [u8]), TargetError> {
        let comps = validate_archive_path(path)?;
        let (name, parents) = comps.split_last().expect("validated paths are non-empty");
        let mut dir = DirFd::Root(self.root.as_fd());
        for (i, comp) in parents.iter().enumerate() {
            let open = |d: &DirFd| {
                openat(
                    d,
                    *comp,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            };
            let mut res = open(&dir);
            if create && matches!(res, Err(Errno::ENOENT)) {
                // Real metadata comes later, if the directory is an entry too.
                match mkdirat(&dir, *comp, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(TargetError::io(path, "create parent directory", e)),
                }
                res = open(&dir);
            }
            let parent_bytes = || show(&comps[..=i].join(&b'/'));
            dir = match res {
                Ok(fd) => DirFd::Owned(fd),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let is_link = fstatat(&dir, *comp, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map(|st| file_type(&st) == SFlag::S_IFLNK)
                        .unwrap_or(false);
                    return Err(if is_link {
                        TargetError::SymlinkedParent {
                            path: show(path),
                            parent: parent_bytes(),
                        }
                    } else {
                        TargetError::ParentNotDirectory {
                            path: show(path),
                            parent: parent_bytes(),
                        }
                    });
                }
                Err(e) => return Err(TargetError::io(path, "open parent directory", e)),
            };
        }
        Ok((dir, name))
    }

    /// Remove a non-directory in the way of a new object.
    fn remove_existing(dir: &DirFd, name: &[u8], path: &[u8]) -> Result<(), TargetError> {
        let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| TargetError::io(path, "inspect existing object", e))?;
        if file_type(&st) == SFlag::S_IFDIR {
            return Err(TargetError::IsDirectory { path: show(path) });
        }
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| TargetError::io(path, "remove existing object", e))
    }

    /// Remove a file this restore created (its content turned out damaged).
    pub fn remove_file(&self, path: &[u8]) -> Result<(), TargetError> {
        let (dir, name) = self.resolve(path, false)?;
        Self::remove_existing(&dir, name, path)
    }

    /// Run `make` (which creates the object and fails with EEXIST when
    /// something is in the way); with `overwrite`, replace a non-directory.
    fn create_with<T>(
        &self,
        path: &[u8],
        overwrite: bool,
        op: &'static str,
        make: impl Fn(&DirFd, &[u8]) -> nix::Result<T>,
    ) -> Result<Created<T>, TargetError> {
        let (dir, name) = self.resolve(path, true)?;
        match make(&dir, name) {
            Ok(v) => Ok(Created::New(v)),
            Err(Errno::EEXIST) if !overwrite => Ok(Created::Exists),
            Err(Errno::EEXIST) => {
                Self::remove_existing(&dir, name, path)?;
                make(&dir, name)
                    .map(Created::New)
                    .map_err(|e| TargetError::io(path, op, e))
            }
            Err(e) => Err(TargetError::io(path, op, e)),
        }
    }

    /// Create a regular file for writing (mode 0600 until metadata is applied).
    pub fn create_file(&self, path: &[u8], overwrite: bool) -> Result<Created<File>, TargetError> {
        self.create_with(path, overwrite, "create file", |dir, name| {
            openat(
                dir,
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map(File::from)
        })
    }

    /// Open an existing regular file for reading and writing without
    /// truncating it (a `.partial` file a previous cartridge began);
    /// `None` if there is none.
    pub fn open_existing_file(&self, path: &[u8]) -> Result<Option<File>, TargetError> {
        let (dir, name) = self.resolve(path, false)?;
        let f = match openat(
            &dir,
            name,
            OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(TargetError::io(path, "open partial file", e)),
        };
        let st = fstat(&f).map_err(|e| TargetError::io(path, "inspect partial file", e))?;
        if file_type(&st) != SFlag::S_IFREG {
            return Err(TargetError::io(path, "open partial file", Errno::EINVAL));
        }
        Ok(Some(f))
    }

    /// Rename `from` to `to` (both archive paths in the same directory);
    /// an object already at `to` is kept unless `overwrite`.
    pub fn rename_file(
        &self,
        from: &[u8],
        to: &[u8],
        overwrite: bool,
    ) -> Result<Created<()>, TargetError> {
        let (dir, from_name) = self.resolve(from, false)?;
        let (to_dir, to_name) = self.resolve(to, false)?;
        if !overwrite && fstatat(&to_dir, to_name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
            return Ok(Created::Exists);
        }
        nix::fcntl::renameat(&dir, from_name, &to_dir, to_name)
            .map_err(|e| TargetError::io(to, "rename partial file into place", e))?;
        Ok(Created::New(()))
    }

    /// Create a directory (mode 0700 until its metadata is applied).
    /// `Created::Exists` means a directory is already there, which callers
    /// treat as success; a non-directory in the way is replaced with
    /// `overwrite`, else refused with an `AlreadyExists` I/O error.
    pub fn create_dir(&self, path: &[u8], overwrite: bool) -> Result<Created<()>, TargetError> {
        let (dir, name) = self.resolve(path, true)?;
        let mkdir = || mkdirat(&dir, name, Mode::from_bits_truncate(0o700));
        match mkdir() {
            Ok(()) => Ok(Created::New(())),
            Err(Errno::EEXIST) => {
                let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| TargetError::io(path, "inspect existing object", e))?;
                if file_type(&st) == SFlag::S_IFDIR {
                    return Ok(Created::Exists);
                }
                if !overwrite {
                    return Err(TargetError::io(
                        path,
                        "create directory",
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "a non-directory is in the way (use overwrite to replace it)",
                        ),
                    ));
                }
                Self::remove_existing(&dir, name, path)?;
                mkdir()
                    .map(Created::New)
                    .map_err(|e| TargetError::io(path, "create directory", e))
            }
            Err(e) => Err(TargetError::io(path, "create directory", e)),
        }
    }

    /// Create a symlink. Its target is stored as is and never followed by us.
    pub fn create_symlink(
        &self,
        path: &[u8],
        target: &[u8],
        overwrite: bool,
    ) -> Result<Created<()>, TargetError> {
        self.create_with(path, overwrite, "create symlink", |dir, name| {
            symlinkat(target, dir, name)
        })
    }

    /// Hard-link `path` to the already restored `existing` (an archive path,
    /// validated and resolved the same way, so it cannot leave the target).
    pub fn create_hardlink(
        &self,
        path: &[u8],
        existing: &[u8],
        overwrite: bool,
    ) -> Result<Created<()>, TargetError> {
        if validate_archive_path(path)? == validate_archive_path(existing)? {
            return Ok(Created::Exists);
        }
        let (old_dir, old_name) = self.resolve(existing, false)?;
        // No AT_SYMLINK_FOLLOW: a symlink at `existing` is linked, not followed.
        self.create_with(path, overwrite, "create hard link", |dir, name| {
            linkat(&old_dir, old_name, dir, name, AtFlags::empty())
        })
    }

    /// Create a FIFO (mode 0600 until metadata is applied).
    pub fn create_fifo(&self, path: &[u8], overwrite: bool) -> Result<Created<()>, TargetError> {
        self.create_with(path, overwrite, "create fifo", |dir, name| {
            mkfifoat(dir, name, Mode::from_bits_truncate(0o600))
        })
    }

    /// Create a character or block device node (needs root).
    pub fn create_device(
        &self,
        path: &[u8],
        kind: EntryKind,
        major: u32,
        minor: u32,
        overwrite: bool,
    ) -> Result<Created<()>, TargetError> {
        let sflag = match kind {
            EntryKind::CharDevice => SFlag::S_IFCHR,
            EntryKind::BlockDevice => SFlag::S_IFBLK,
            other => {
                return Err(TargetError::io(
                    path,
                    "create device",
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{other:?} is not a device kind"),
                    ),
                ))
            }
        };
        let dev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
        self.create_with(path, overwrite, "create device", |dir, name| {
            mknodat(dir, name, sflag, Mode::from_bits_truncate(0o600), dev)
        })
    }

    fn lookup_user(&mut self, name: &str) -> Option<Uid> {
        *self
            .users
            .entry(name.to_string())
            .or_insert_with(|| User::from_name(name).ok().flatten().map(|u| u.uid))
    }

    fn lookup_group(&mut self, name: &str) -> Option<Gid> {
        *self
            .groups
            .entry(name.to_string())
            .or_insert_with(|| Group::from_name(name).ok().flatten().map(|g| g.gid))
    }

    /// Apply an entry's metadata to the object restored at `path`: ownership,
    /// xattrs, mode, times, inode flags, in that order (chown clears setuid
    /// bits and security.capability; flags last since immutable blocks the
    /// rest). Returns warnings for what could not be kept (ownership, xattrs,
    /// inode flags); a failure to set mode or times is an error. Hard-link
    /// entries share their first occurrence's inode, so nothing is done.
    /// Immutable/append-only flags of regular files are deferred to
    /// [`finish`](Self::finish), since they refuse later hard links.
    pub fn apply_metadata(
        &mut self,
        path: &[u8],
        entry: &Entry,
        policy: &OwnershipPolicy,
    ) -> Result<Vec<String>, TargetError> {
        self.apply(path, entry, policy, true)
    }

    fn apply(
        &mut self,
        path: &[u8],
        entry: &Entry,
        policy: &OwnershipPolicy,
        defer_file_flags: bool,
    ) -> Result<Vec<String>, TargetError> {
        let kind = entry.kind().map_err(|e| {
            TargetError::io(path, "read entry kind", io::Error::other(e.to_string()))
        })?;
        if kind == EntryKind::HardLink {
            return Ok(Vec::new());
        }
        let owner = match *policy {
            OwnershipPolicy::LeaveAsUser => None,
            OwnershipPolicy::Preserve { numeric_only } => {
                let user = entry.user.as_deref().filter(|_| !numeric_only);
                let group = entry.group.as_deref().filter(|_| !numeric_only);
                let uid = user
                    .and_then(|n| self.lookup_user(n))
                    .unwrap_or(Uid::from_raw(entry.uid));
                let gid = group
                    .and_then(|n| self.lookup_group(n))
                    .unwrap_or(Gid::from_raw(entry.gid));
                Some((uid, gid))
            }
        };
        let shown = show(path);
        let mut warnings = Vec::new();
        let (dir, name) = self.resolve(path, false)?;
        let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| TargetError::io(path, "inspect restored object", e))?;
        let ftype = file_type(&st);

        // Files and directories are opened once: the fd serves every step and
        // keeps working after a restrictive mode is set. Never FIFOs or
        // devices, where opening can block or have side effects.
        let opened = if ftype == SFlag::S_IFREG || ftype == SFlag::S_IFDIR {
            let opened = openat(
                &dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(File::from)
            .map_err(io::Error::from)
            .and_then(|f| {
                // Same object as inspected, not one swapped in meanwhile.
                let st2 = fstat(&f)?;
                if (st2.st_dev, st2.st_ino) == (st.st_dev, st.st_ino) {
                    Ok(f)
                } else {
                    Err(io::Error::other("object replaced while restoring"))
                }
            });
            Some(opened)
        } else {
            None
        };
        // Without the fd everything but inode flags falls back to `*at` calls.
        let (object, open_error) = match opened {
            Some(Ok(f)) => (Some(f), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };

        if let Some((uid, gid)) = owner {
            let res = match &object {
                Some(f) => fchown(f, Some(uid), Some(gid)),
                None => fchownat(
                    &dir,
                    name,
                    Some(uid),
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ),
            };
            if let Err(e) = res {
                warnings.push(format!(
                    "{shown}: cannot set owner {}:{}: {e}",
                    uid.as_raw(),
                    gid.as_raw()
                ));
            }
        }

        if !entry.xattrs.is_empty() {
            // Parents were opened O_NOFOLLOW above, so the full path cannot
            // leave the target except through a race we do not defend against.
            let full = self.root_path.join(OsStr::from_bytes(path));
            for x in &entry.xattrs {
                let xname = OsStr::from_bytes(&x.name);
                let res = match &object {
                    Some(f) => xattr::FileExt::set_xattr(f, xname, &x.value),
                    None => xattr::set(&full, xname, &x.value),
                };
                if let Err(e) = res {
                    warnings.push(format!(
                        "{shown}: cannot set xattr {}: {e}",
                        String::from_utf8_lossy(&x.name)
                    ));
                }
            }
        }

        if ftype != SFlag::S_IFLNK {
            let mode = Mode::from_bits_truncate(entry.mode & 0o7777);
            let res = match &object {
                Some(f) => fchmod(f, mode),
                None => match fchmodat(&dir, name, mode, FchmodatFlags::NoFollowSymlink) {
                    // Older C libraries cannot do NOFOLLOW without /proc; the
                    // object was just seen not to be a symlink.
                    Err(Errno::EOPNOTSUPP) => {
                        fchmodat(&dir, name, mode, FchmodatFlags::FollowSymlink)
                    }
                    other => other,
                },
            };
            res.map_err(|e| TargetError::io(path, "set mode", e))?;
        }

        let (atime, mtime) = (timespec(entry.atime), timespec(entry.mtime));
        match &object {
            Some(f) => futimens(f, &atime, &mtime),
            None => utimensat(&dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink),
        }
        .map_err(|e| TargetError::io(path, "set times", e))?;

        if let Some(f) = &object {
            let blocking = entry.inode_flags & (INODE_IMMUTABLE | INODE_APPEND_ONLY);
            if defer_file_flags && ftype == SFlag::S_IFREG && blocking != 0 {
                self.deferred_flags.push((path.to_vec(), entry.inode_flags));
            } else if let Err(e) = inode_flags::set(f, entry.inode_flags) {
                warnings.push(format!("{shown}: cannot set inode flags: {e}"));
            }
        } else if let Some(e) = open_error.filter(|_| entry.inode_flags != 0) {
            warnings.push(format!("{shown}: cannot open to set inode flags: {e}"));
        }
        Ok(warnings)
    }

    /// Remember a directory's metadata to apply once its contents are
    /// restored (creating children changes its mtime; a restrictive mode or
    /// the immutable flag would block them).
    pub fn defer_dir_metadata(&mut self, path: &[u8], entry: Entry) -> Result<(), TargetError> {
        let depth = validate_archive_path(path)?.len();
        self.deferred_dirs.push((depth, path.to_vec(), entry));
        Ok(())
    }

    /// Apply deferred metadata: file inode flags, then directories deepest
    /// first. Every failure becomes a warning naming the path and operation,
    /// so one bad directory does not stop the others.
    pub fn finish(mut self, policy: &OwnershipPolicy) -> Result<Vec<String>, TargetError> {
        let mut warnings = Vec::new();
        for (path, flags) in std::mem::take(&mut self.deferred_flags) {
            if let Err(e) = self.set_file_flags(&path, flags) {
                warnings.push(e.to_string());
            }
        }
        let mut dirs = std::mem::take(&mut self.deferred_dirs);
        // Stable: equal depths keep archive order.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (_, path, entry) in dirs {
            match self.apply(&path, &entry, policy, false) {
                Ok(w) => warnings.extend(w),
                Err(e) => warnings.push(e.to_string()),
            }
        }
        Ok(warnings)
    }

    fn set_file_flags(&self, path: &[u8], flags: u32) -> Result<(), TargetError> {
        let (dir, name) = self.resolve(path, false)?;
        let f = openat(
            &dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TargetError::io(path, "open to set inode flags", e))?;
        inode_flags::set(&f, flags).map_err(|e| TargetError::io(path, "set inode flags", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::meta::Xattr;
    use std::io::Write;
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

    fn target() -> (tempfile::TempDir, RestoreTarget) {
        let dir = tempfile::tempdir().unwrap();
        let t = RestoreTarget::open(&dir.path().join("restore")).unwrap();
        (dir, t)
    }

    fn new_file(t: &RestoreTarget, path: &[u8]) -> File {
        match t.create_file(path, false).unwrap() {
            Created::New(f) => f,
            Created::Exists => panic!("{} exists", show(path)),
        }
    }

    fn user_xattrs_supported(dir: &Path) -> bool {
        let probe = dir.join("xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
        std::fs::remove_file(&probe).unwrap();
        ok
    }

    #[test]
    fn validation_refuses_unsafe_paths() {
        for (p, why) in [
            (&b""[..], "empty"),
            (b"/etc/passwd", "absolute"),
            (b"a/../../b", ".."),
            (b"..", ".."),
            (b"a/b\0c", "NUL"),
            (b".", "`.` component"),
            (b"a/./b", "`.` component"),
            (b"a//b", "empty component"),
            (b"a/b/", "empty component"),
        ] {
            let err = validate_archive_path(p).unwrap_err();
            assert!(err.to_string().contains(why), "{err} for {p:?}");
        }
        assert_eq!(
            validate_archive_path(b"a/b/c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        // `..` as part of a name is just a name.
        assert_eq!(validate_archive_path(b"a..b").unwrap(), vec![&b"a..b"[..]]);
    }

    #[test]
    fn creation_refuses_unsafe_paths() {
        let (_d, t) = target();
        assert!(matches!(
            t.create_file(b"/abs", false),
            Err(TargetError::Unsafe(_))
        ));
        assert!(matches!(
            t.create_dir(b"a/../../up", false),
            Err(TargetError::Unsafe(_))
        ));
        assert!(matches!(
            t.create_symlink(b"../s", b"x", false),
            Err(TargetError::Unsafe(_))
        ));
    }

    #[test]
    fn symlinked_parent_is_refused_and_nothing_escapes() {
        let (d, t) = target();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, t.path().join("evil")).unwrap();

        let err = t.create_file(b"evil/x", false).unwrap_err();
        assert!(matches!(err, TargetError::SymlinkedParent { .. }), "{err}");
        assert!(err.to_string().contains("symlinked parent directory"));
        assert!(t.create_dir(b"evil/sub/deeper", false).is_err());
        assert!(t.create_symlink(b"evil/l", b"/etc", false).is_err());
        assert!(t.create_fifo(b"evil/p", false).is_err());
        assert!(t.create_hardlink(b"evil/h", b"evil", false).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // An archive symlink followed by a path through it: same refusal.
        t.create_symlink(b"link", outside.as_os_str().as_bytes(), false)
            .unwrap();
        assert!(matches!(
            t.create_file(b"link/y", true),
            Err(TargetError::SymlinkedParent { .. })
        ));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn file_as_parent_is_refused() {
        let (_d, t) = target();
        new_file(&t, b"f");
        assert!(matches!(
            t.create_file(b"f/x", false),
            Err(TargetError::ParentNotDirectory { .. })
        ));
    }

    #[test]
    fn hardlink_outside_is_refused() {
        let (d, t) = target();
        std::fs::write(d.path().join("x"), b"secret").unwrap();
        assert!(matches!(
            t.create_hardlink(b"h", b"../x", false),
            Err(TargetError::Unsafe(_))
        ));
        assert!(matches!(
            t.create_hardlink(b"h", b"/etc/passwd", false),
            Err(TargetError::Unsafe(_))
        ));
        assert!(!t.path().join("h").exists());
    }

    #[test]
    fn hardlink_inside_works_and_does_not_follow_symlinks() {
        let (d, t) = target();
        let mut f = new_file(&t, b"dir/a");
        f.write_all(b"data").unwrap();
        assert!(t.create_hardlink(b"b", b"dir/a", false).unwrap().is_new());
        let (ma, mb) = (
            std::fs::metadata(t.path().join("dir/a")).unwrap(),
            std::fs::metadata(t.path().join("b")).unwrap(),
        );
        assert_eq!(ma.ino(), mb.ino());
        // Linking a symlink links the symlink itself, never its target.
        std::fs::write(d.path().join("outside"), b"o").unwrap();
        t.create_symlink(b"s", d.path().join("outside").as_os_str().as_bytes(), false)
            .unwrap();
        t.create_hardlink(b"s2", b"s", false).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("s2")).unwrap();
        assert!(m.file_type().is_symlink());
    }

    #[test]
    fn exists_without_overwrite_and_replace_with_overwrite() {
        let (_d, t) = target();
        new_file(&t, b"f").write_all(b"old").unwrap();
        assert!(matches!(
            t.create_file(b"f", false).unwrap(),
            Created::Exists
        ));
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"old");
        match t.create_file(b"f", true).unwrap() {
            Created::New(mut f) => f.write_all(b"new").unwrap(),
            Created::Exists => panic!("overwrite must replace"),
        }
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"new");

        // A symlink in the way is replaced, not written through.
        t.create_symlink(b"s", b"f", false).unwrap();
        assert!(matches!(
            t.create_symlink(b"s", b"g", false).unwrap(),
            Created::Exists
        ));
        new_file_over(&t, b"s").write_all(b"s-data").unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"new");
        assert_eq!(std::fs::read(t.path().join("s")).unwrap(), b"s-data");

        // Directories are never removed to make room.
        t.create_dir(b"d", false).unwrap();
        assert!(matches!(
            t.create_dir(b"d", false).unwrap(),
            Created::Exists
        ));
        assert!(matches!(
            t.create_file(b"d", true),
            Err(TargetError::IsDirectory { .. })
        ));
        assert!(t.create_dir(b"f", false).is_err());
        assert!(t.create_dir(b"f", true).unwrap().is_new());
    }

    fn new_file_over(t: &RestoreTarget, path: &[u8]) -> File {
        match t.create_file(path, true).unwrap() {
            Created::New(f) => f,
            Created::Exists => panic!("overwrite must replace"),
        }
    }

    #[test]
    fn sparse_finish_keeps_size_and_holes() {
        let (_d, t) = target();
        let size = 64 * 1024 * 1024;
        let f = new_file(&t, b"sparse");
        f.write_at(b"start", 0).unwrap();
        f.write_at(b"middle", 32 * 1024 * 1024).unwrap();
        finish_file(b"sparse", &f, size).unwrap();
        drop(f);
        let m = std::fs::metadata(t.path().join("sparse")).unwrap();
        assert_eq!(m.len(), size);
        assert!(m.blocks() * 512 < 1024 * 1024, "{} blocks", m.blocks());
    }

    #[test]
    fn special_files_are_created() {
        let (_d, t) = target();
        t.create_fifo(b"p", false).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("p")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        // Metadata on a FIFO must not open (and block on) it.
        let mut e = Entry::new("p", EntryKind::Fifo);
        e.mode = 0o640;
        e.mtime = Timestamp {
            sec: 1_000_000,
            nsec: 5,
        };
        let mut t = t;
        t.apply_metadata(b"p", &e, &OwnershipPolicy::LeaveAsUser)
            .unwrap();
        let m = std::fs::symlink_metadata(t.path().join("p")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000, 5));

        assert!(t.create_device(b"x", EntryKind::File, 1, 3, false).is_err());
        if is_root() {
            // Containers may refuse mknod even to root; only check when allowed.
            if let Ok(c) = t.create_device(b"null", EntryKind::CharDevice, 1, 3, false) {
                assert!(c.is_new());
                let m = std::fs::symlink_metadata(t.path().join("null")).unwrap();
                let rdev = m.rdev();
                assert_eq!(
                    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)),
                    (1, 3)
                );
            }
        }
    }

    #[test]
    fn metadata_round_trip_for_file_symlink_and_deferred_dir() {
        let (d, mut t) = target();
        let xattrs_ok = user_xattrs_supported(d.path());
        let policy = OwnershipPolicy::for_current_user();

        t.create_dir(b"dir", false).unwrap();
        let mut dir_entry = Entry::new("dir", EntryKind::Dir);
        dir_entry.mode = 0o750;
        dir_entry.mtime = Timestamp {
            sec: 1_234_567_890,
            nsec: 123_456_789,
        };
        dir_entry.atime = Timestamp {
            sec: 1_234_567_000,
            nsec: 1,
        };
        dir_entry.uid = nix::unistd::geteuid().as_raw();
        dir_entry.gid = nix::unistd::getegid().as_raw();
        if xattrs_ok {
            dir_entry.xattrs.push(Xattr {
                name: b"user.dir".to_vec(),
                value: b"dv".to_vec(),
            });
        }
        t.defer_dir_metadata(b"dir", dir_entry.clone()).unwrap();

        // Children created after the directory's entry was seen.
        let mut f = new_file(&t, b"dir/file");
        f.write_all(b"hello").unwrap();
        drop(f);
        let mut fe = Entry::new("dir/file", EntryKind::File);
        fe.mode = 0o4755;
        fe.uid = dir_entry.uid;
        fe.gid = dir_entry.gid;
        fe.mtime = Timestamp {
            sec: 987_654_321,
            nsec: 999_999_999,
        };
        fe.atime = Timestamp {
            sec: 987_654_000,
            nsec: 42,
        };
        if xattrs_ok {
            fe.xattrs.push(Xattr {
                name: b"user.test".to_vec(),
                value: b"value\0bin".to_vec(),
            });
        }
        let w = t.apply_metadata(b"dir/file", &fe, &policy).unwrap();
        assert!(w.is_empty(), "{w:?}");

        t.create_symlink(b"dir/link", b"file", false).unwrap();
        let mut le = Entry::new("dir/link", EntryKind::Symlink);
        le.mtime = Timestamp { sec: 555, nsec: 7 };
        le.uid = dir_entry.uid;
        le.gid = dir_entry.gid;
        t.apply_metadata(b"dir/link", &le, &policy).unwrap();

        // A child created late still must not disturb the directory's times.
        t.create_dir(b"dir/sub", false).unwrap();

        let w = t.finish(&policy).unwrap();
        assert!(w.is_empty(), "{w:?}");

        let root = d.path().join("restore");
        let fm = std::fs::metadata(root.join("dir/file")).unwrap();
        assert_eq!(fm.mode() & 0o7777, 0o4755);
        assert_eq!((fm.mtime(), fm.mtime_nsec()), (987_654_321, 999_999_999));
        assert_eq!((fm.atime(), fm.atime_nsec()), (987_654_000, 42));
        let lm = std::fs::symlink_metadata(root.join("dir/link")).unwrap();
        assert_eq!((lm.mtime(), lm.mtime_nsec()), (555, 7));
        // The symlink's target file kept its own times.
        assert_eq!(fm.mtime(), 987_654_321);
        let dm = std::fs::metadata(root.join("dir")).unwrap();
        assert_eq!(dm.permissions().mode() & 0o7777, 0o750);
        assert_eq!((dm.mtime(), dm.mtime_nsec()), (1_234_567_890, 123_456_789));
        if xattrs_ok {
            assert_eq!(
                xattr::get(root.join("dir/file"), "user.test").unwrap(),
                Some(b"value\0bin".to_vec())
            );
            assert_eq!(
                xattr::get(root.join("dir"), "user.dir").unwrap(),
                Some(b"dv".to_vec())
            );
        }
    }

    #[test]
    fn deferred_dirs_apply_deepest_first_with_restrictive_modes() {
        let (d, mut t) = target();
        let policy = OwnershipPolicy::LeaveAsUser;
        for p in [&b"a"[..], b"a/b", b"a/b/c"] {
            t.create_dir(p, false).unwrap();
            let mut e = Entry::new(p, EntryKind::Dir);
            e.mode = 0o500; // read-only: would block children and deeper metadata
            e.mtime = Timestamp { sec: 100, nsec: 0 };
            t.defer_dir_metadata(p, e).unwrap();
        }
        new_file(&t, b"a/b/c/f");
        let w = t.finish(&policy).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let root = d.path().join("restore");
        for p in ["a", "a/b", "a/b/c"] {
            let m = std::fs::metadata(root.join(p)).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o500, "{p}");
            assert_eq!(m.mtime(), 100, "{p}");
        }
        // Let the temp dir be cleaned up.
        for p in ["a", "a/b", "a/b/c"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }

    #[test]
    fn ownership_preserved_as_root() {
        if !is_root() {
            return;
        }
        let (d, mut t) = target();
        new_file(&t, b"owned");
        let mut e = Entry::new("owned", EntryKind::File);
        e.uid = 12345;
        e.gid = 23456;
        e.user = Some("tapir-no-such-user".into());
        e.mode = 0o2755;
        let w = t
            .apply_metadata(
                b"owned",
                &e,
                &OwnershipPolicy::Preserve {
                    numeric_only: false,
                },
            )
            .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let m = std::fs::metadata(d.path().join("restore/owned")).unwrap();
        assert_eq!((m.uid(), m.gid()), (12345, 23456));
        // Mode after chown, so setgid survives.
        assert_eq!(m.mode() & 0o7777, 0o2755);

        // By name when the name exists here: root is 0 everywhere.
        new_file(&t, b"named");
        let mut e = Entry::new("named", EntryKind::File);
        e.uid = 999;
        e.gid = 999;
        e.user = Some("root".into());
        t.apply_metadata(
            b"named",
            &e,
            &OwnershipPolicy::Preserve {
                numeric_only: false,
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("restore/named"))
                .unwrap()
                .uid(),
            0
        );
        t.apply_metadata(
            b"named",
            &e,
            &OwnershipPolicy::Preserve { numeric_only: true },
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("restore/named"))
                .unwrap()
                .uid(),
            999
        );
    }

    #[test]
    fn xattrs_on_symlinks_and_fifos_never_fail_the_entry() {
        let (d, mut t) = target();
        t.create_symlink(b"l", b"/nonexistent", false).unwrap();
        t.create_fifo(b"p", false).unwrap();
        let mut le = Entry::new("l", EntryKind::Symlink);
        let mut pe = Entry::new("p", EntryKind::Fifo);
        // user.* is refused on symlinks and FIFOs by Linux: a warning only.
        for e in [&mut le, &mut pe] {
            e.xattrs.push(Xattr {
                name: b"user.t".to_vec(),
                value: b"v".to_vec(),
            });
        }
        let policy = OwnershipPolicy::LeaveAsUser;
        assert_eq!(t.apply_metadata(b"l", &le, &policy).unwrap().len(), 1);
        assert_eq!(t.apply_metadata(b"p", &pe, &policy).unwrap().len(), 1);
        if is_root() {
            // trusted.* works on a symlink itself, set without following it.
            le.xattrs[0].name = b"trusted.t".to_vec();
            let w = t.apply_metadata(b"l", &le, &policy).unwrap();
            if w.is_empty() {
                let link = d.path().join("restore/l");
                assert_eq!(xattr::get(&link, "trusted.t").unwrap(), Some(b"v".to_vec()));
            }
        }
    }

    #[test]
    fn immutable_file_flag_is_deferred_so_hard_links_still_work() {
        if !is_root() {
            return;
        }
        let (d, mut t) = target();
        new_file(&t, b"imm");
        let mut e = Entry::new("imm", EntryKind::File);
        e.inode_flags = INODE_IMMUTABLE;
        let w = t
            .apply_metadata(b"imm", &e, &OwnershipPolicy::LeaveAsUser)
            .unwrap();
        assert!(w.is_empty(), "{w:?}");
        t.create_hardlink(b"imm2", b"imm", false).unwrap();
        let w = t.finish(&OwnershipPolicy::LeaveAsUser).unwrap();
        let path = d.path().join("restore/imm");
        let f = File::open(&path).unwrap();
        let flags = inode_flags::get(&f).unwrap();
        if w.is_empty() {
            assert_eq!(flags, INODE_IMMUTABLE);
            // Clear it so the temp dir can be removed.
            inode_flags::set(&f, 0).unwrap();
        }
    }
}
