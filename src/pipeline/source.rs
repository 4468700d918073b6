//! Walking source trees into archive entries.
//!
//! The walk streams: directories are read one at a time (sorted by file name
//! so archives are deterministic) and only files with more than one link are
//! remembered, for hard-link detection. Nothing is ever followed: symlinks
//! are archived as symlinks, even when given as a source.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User, Whence};

use crate::device::inode_flags;
use crate::device::statx::FileStat;
use crate::format::meta::{DeviceNumbers, Entry, EntryKind, Extent, Timestamp, Xattr};

/// How to walk.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Glob patterns (`*`, `?`, `[...]`, `\` escapes; `*` also matches `/`)
    /// over path bytes. A pattern excludes an entry when it matches its
    /// archive path or any trailing part of it that starts at a component
    /// (so also its final component), as `tar --exclude` does. An excluded
    /// directory is not descended into.
    pub excludes: Vec<String>,
    /// Do not descend into directories on another filesystem than their
    /// source root (the mount-point directory itself is still archived).
    pub one_file_system: bool,
    /// Absolute paths of directories whose contents are left out when the
    /// walk meets them below a source root; the directories themselves are
    /// archived (with their modes), so a restored root has its mount
    /// points. Naming one as a source archives it whole.
    pub contents_excluded: Vec<PathBuf>,
}

/// What a whole-root write leaves out by default: kernel and runtime
/// filesystems, and scratch space.
pub const DEFAULT_CONTENTS_EXCLUDED: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];

impl WalkOptions {
    /// No patterns, every filesystem, and the default contents excluded.
    pub fn with_default_excludes() -> Self {
        WalkOptions {
            contents_excluded: DEFAULT_CONTENTS_EXCLUDED
                .iter()
                .map(PathBuf::from)
                .collect(),
            ..Default::default()
        }
    }
}

/// Why an object was not archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Sockets cannot be archived (tar skips them too).
    Socket,
    /// A file type this system has but tapir does not know.
    UnknownType,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::Socket => "socket ignored",
            SkipReason::UnknownType => "unknown file type ignored",
        })
    }
}

/// An object to archive: where to read it and its archive entry.
#[derive(Debug)]
pub struct SourceEntry {
    /// Where the object is on this system (absolute).
    pub abs_path: PathBuf,
    pub entry: Entry,
    /// A regular file, already opened for its content (saves a second open).
    pub file: Option<File>,
    /// A regular file's (st_dev, st_ino) as walked; None for what was not
    /// walked here (the system manifest, an entry written again).
    pub inode: Option<(u64, u64)>,
}

/// What the walk found.
// Nearly every item is an entry, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WalkItem {
    Entry(SourceEntry),
    /// Not archived, but counted (sockets, as tar does).
    Skipped {
        path: PathBuf,
        reason: SkipReason,
    },
    /// Something could not be read; the walk goes on.
    Warning {
        path: PathBuf,
        message: String,
    },
}

/// The archive path of a source as given: leading `/` and `.` components
/// removed, `/`-separated. `.` or `/` give an empty path (the source's
/// contents are archived without a prefix). `..` components are refused.
pub fn archive_path_of(source: &Path) -> Result<Vec<u8>, String> {
    let bytes = source.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for comp in bytes.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." {
            continue;
        }
        if comp == b".." {
            return Err(format!(
                "source path {} contains a `..` component; refused (give a path without `..`)",
                source.display()
            ));
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    Ok(out)
}

/// Open a regular source file for reading its content: never through a
/// symlink, without updating its atime where permitted, and never blocking
/// (a file swapped for a FIFO since the walk is refused, not waited on).
pub fn open_source_file(abs: &Path) -> io::Result<File> {
    open_source_file_with_stat(abs).map(|(f, _)| f)
}

/// [`open_source_file`], also returning the opened file's metadata (and
/// inode flags, where statx reports them): one `statx` serves both the
/// regular-file check and the archive entry.
fn open_source_file_with_stat(abs: &Path) -> io::Result<(File, FileStat)> {
    let open = |noatime: bool| {
        let extra = if noatime { libc::O_NOATIME } else { 0 };
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | extra)
            .open(abs)
    };
    // O_NOATIME is allowed only to the file's owner (or CAP_FOWNER).
    let file = match open(true) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(false)?,
        other => other?,
    };
    still_regular(file, abs)
}

/// The opened file with its metadata, if it is still a regular file (it
/// may have been swapped since the walk saw it).
fn still_regular(file: File, abs: &Path) -> io::Result<(File, FileStat)> {
    let st = crate::device::statx::fstat(&file)?;
    if !st.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is no longer a regular file", abs.display()),
        ));
    }
    Ok((file, st))
}

/// A directory held open (`O_PATH`) while its regular files are opened by
/// name relative to it: one path walk per directory, not one per file.
struct OpenDir {
    path: PathBuf,
    fd: std::os::fd::OwnedFd,
}

/// [`open_source_file_with_stat`] for `abs`, opened relative to its
/// directory, which is kept open in `dir` for the next file in it. The same
/// flags and checks; falls back to opening by the whole path.
fn open_source_file_in_dir(dir: &mut Option<OpenDir>, abs: &Path) -> io::Result<(File, FileStat)> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    // Split at the last `/` (walkdir's paths are a directory joined with a
    // name): cheaper than Path::parent, which parses every component.
    let bytes = abs.as_os_str().as_bytes();
    let (parent, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) if i + 1 < bytes.len() => (
            Path::new(std::ffi::OsStr::from_bytes(&bytes[..i.max(1)])),
            std::ffi::OsStr::from_bytes(&bytes[i + 1..]),
        ),
        _ => return open_source_file_with_stat(abs),
    };
    if dir.as_ref().is_none_or(|d| d.path != parent) {
        *dir = None;
        match nix::fcntl::open(
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                *dir = Some(OpenDir {
                    path: parent.to_path_buf(),
                    fd,
                })
            }
            Err(_) => return open_source_file_with_stat(abs),
        }
    }
    let d = dir.as_ref().expect("just opened");
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    // O_NOATIME is allowed only to the file's owner (or CAP_FOWNER).
    let fd = match nix::fcntl::openat(&d.fd, name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => nix::fcntl::openat(&d.fd, name, flags, Mode::empty()),
        other => other,
    }
    .map_err(io::Error::from)?;
    still_regular(File::from(fd), abs)
}

/// The bytes after a path's last `/` (walkdir's entries are a directory
/// joined with a name, so this is the name).
fn last_name(p: &Path) -> &[u8] {
    let b = p.as_os_str().as_bytes();
    b.iter()
        .rposition(|&c| c == b'/')
        .map_or(b, |i| &b[i + 1..])
}

fn excluded(patterns: &[Vec<u8>], archive_path: &[u8]) -> bool {
    if archive_path.is_empty() {
        return false;
    }
    let tails = std::iter::once(archive_path).chain(
        archive_path
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| &archive_path[i + 1..]),
    );
    tails
        .into_iter()
        .any(|tail| patterns.iter().any(|p| super::glob::glob_match(p, tail)))
}

fn timestamp(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// The source being walked.
struct Current {
    iter: walkdir::IntoIter,
    root: PathBuf,
    archive_root: Vec<u8>,
}

/// Streams the entries of a list of source paths, in order.
pub struct Walker {
    sources: std::vec::IntoIter<PathBuf>,
    current: Option<Current>,
    pending: VecDeque<WalkItem>,
    excludes: Vec<Vec<u8>>,
    one_file_system: bool,
    contents_excluded: Vec<PathBuf>,
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    /// (dev, ino) of regular files with several links → first archive path.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// The directory whose files are being opened.
    dir: Option<OpenDir>,
}

impl Walker {
    pub fn new<I, P>(sources: I, options: WalkOptions) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        Walker {
            sources: sources
                .into_iter()
                .map(Into::into)
                .collect::<Vec<_>>()
                .into_iter(),
            current: None,
            pending: VecDeque::new(),
            excludes: options
                .excludes
                .iter()
                .map(|p| super::glob::normalise_pattern(p))
                .collect(),
            one_file_system: options.one_file_system,
            contents_excluded: options.contents_excluded,
            users: HashMap::new(),
            groups: HashMap::new(),
            links: HashMap::new(),
            dir: None,
        }
    }

    fn start(&mut self, source: PathBuf) {
        let archive_root = match archive_path_of(&source) {
            Ok(a) => a,
            Err(message) => {
                self.pending.push_back(WalkItem::Warning {
                    path: source,
                    message,
                });
                return;
            }
        };
        let root = std::path::absolute(&source).unwrap_or(source);
        let iter = walkdir::WalkDir::new(&root)
            .follow_links(false)
            .follow_root_links(false)
            .same_file_system(self.one_file_system)
            // By name, compared as bytes: DirEntry::file_name parses the
            // path's components for every comparison.
            .sort_by(|a, b| last_name(a.path()).cmp(last_name(b.path())))
            .into_iter();
        self.current = Some(Current {
            iter,
            root,
            archive_root,
        });
    }

    /// Archive path of `path`, which lies under the current source's root.
    fn archive_path(cur: &Current, path: &Path) -> Vec<u8> {
        // walkdir joins names to the root, so its bytes start the path: a
        // byte comparison, not one component by component (every entry).
        let root = cur.root.as_os_str().as_bytes();
        let fast = path
            .as_os_str()
            .as_bytes()
            .strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest[0] == b'/' || root.ends_with(b"/"));
        let rel = match fast {
            Some(rest) => {
                let skip = rest.iter().take_while(|&&b| b == b'/').count();
                &rest[skip..]
            }
            None => match path.strip_prefix(&cur.root) {
                Ok(rel) => rel.as_os_str().as_bytes(),
                // walkdir's paths all start with the root; never emit an absolute path.
                Err(_) => return archive_path_of(path).unwrap_or_default(),
            },
        };
        let mut out = cur.archive_root.clone();
        if !rel.is_empty() {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(rel);
        }
        out
    }

    fn user_name(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group_name(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                Group::from_gid(Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }

    /// Queue the items for one object: its entry (or skip), then warnings.
    fn describe(&mut self, abs: PathBuf, archive: Vec<u8>, md: &FileStat, opened: Option<File>) {
        let kind = match md.file_type() {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFCHR => EntryKind::CharDevice,
            libc::S_IFBLK => EntryKind::BlockDevice,
            other => {
                let reason = if other == libc::S_IFSOCK {
                    SkipReason::Socket
                } else {
                    SkipReason::UnknownType
                };
                self.pending
                    .push_back(WalkItem::Skipped { path: abs, reason });
                return;
            }
        };

        let mut entry = Entry::new(archive, kind);
        entry.mode = md.mode & 0o7777;
        entry.uid = md.uid;
        entry.gid = md.gid;
        entry.user = self.user_name(md.uid);
        entry.group = self.group_name(md.gid);
        entry.mtime = timestamp(md.mtime.0, md.mtime.1);
        entry.atime = timestamp(md.atime.0, md.atime.1);
        entry.ctime = timestamp(md.ctime.0, md.ctime.1);
        let mut warnings = Vec::new();

        if kind == EntryKind::File && md.nlink > 1 {
            match self.links.get(&(md.dev, md.ino)) {
                Some(first) => {
                    // Content and inode metadata travel with the first path.
                    entry.kind = EntryKind::HardLink.code();
                    entry.link_target = Some(first.clone());
                    self.pending.push_back(WalkItem::Entry(SourceEntry {
                        abs_path: abs,
                        entry,
                        file: None,
                        inode: None,
                    }));
                    return;
                }
                None => {
                    self.links.insert((md.dev, md.ino), entry.path.clone());
                }
            }
        }

        match kind {
            EntryKind::File => entry.size = md.size,
            EntryKind::Symlink => match std::fs::read_link(&abs) {
                Ok(t) => entry.link_target = Some(t.into_os_string().into_vec()),
                Err(e) => {
                    self.pending.push_back(WalkItem::Warning {
                        path: abs,
                        message: format!("cannot read symlink: {e}; not archived"),
                    });
                    return;
                }
            },
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let rdev = md.rdev;
                entry.device = Some(DeviceNumbers {
                    major: nix::sys::stat::major(rdev) as u32,
                    minor: nix::sys::stat::minor(rdev) as u32,
                });
            }
            _ => {}
        }

        let mut content = None;
        let mut xattrs_read = false;
        if kind == EntryKind::File || kind == EntryKind::Dir {
            // Only regular files and directories are opened: opening a FIFO
            // or device could block or act on hardware. A file stays open
            // for its content to be read through the same descriptor.
            let opened = if kind == EntryKind::File {
                opened.map_or_else(|| open_source_file(&abs), Ok)
            } else {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&abs)
            };
            if let Ok(f) = &opened {
                xattrs_read = true;
                match read_xattrs(&abs, Some(f)) {
                    Ok(x) => entry.xattrs = x,
                    Err(e) => warnings.push(format!("cannot read extended attributes: {e}")),
                }
            }
            if let Ok(f) = opened {
                // statx gave the flags already where the filesystem reports them.
                match md.inode_flags.map_or_else(|| inode_flags::get(&f), Ok) {
                    Ok(flags) => entry.inode_flags = flags,
                    Err(e) => warnings.push(format!("cannot read inode flags: {e}")),
                }
                if kind == EntryKind::File && md.blocks.saturating_mul(512) < md.size {
                    match data_extents(&f, md.size) {
                        Ok(ext) => entry.sparse = ext,
                        Err(e) => warnings.push(format!("cannot map holes: {e}")),
                    }
                }
                if kind == EntryKind::File {
                    content = Some(f);
                }
            }
            // An unopenable file is reported when its content is read.
        }
        if !xattrs_read {
            // Links, FIFOs, devices: by path, never following a symlink.
            match read_xattrs(&abs, None) {
                Ok(x) => entry.xattrs = x,
                Err(e) => warnings.push(format!("cannot read extended attributes: {e}")),
            }
        }

        let warned: Vec<WalkItem> = warnings
            .into_iter()
            .map(|message| WalkItem::Warning {
                path: abs.clone(),
                message,
            })
            .collect();
        self.pending.push_back(WalkItem::Entry(SourceEntry {
            abs_path: abs,
            entry,
            file: content,
            inode: (kind == EntryKind::File).then_some((md.dev, md.ino)),
        }));
        self.pending.extend(warned);
    }
}

/// Extended attributes, sorted by name (POSIX ACLs come along as
/// `system.posix_acl_*`). Filesystems without xattrs have none.
fn read_xattrs(path: &Path, file: Option<&File>) -> io::Result<Vec<Xattr>> {
    use xattr::FileExt;
    let listed = match file {
        Some(f) => f.list_xattr(),
        None => xattr::list(path),
    };
    let names = match listed {
        Ok(n) => n,
        Err(e)
            if matches!(
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                Errno::EOPNOTSUPP
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        // An attribute removed since listing is simply gone.
        let value = match file {
            Some(f) => f.get_xattr(&name)?,
            None => xattr::get(path, &name)?,
        };
        if let Some(value) = value {
            out.push(Xattr {
                name: name.into_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Data extents of a file with fewer allocated blocks than its size, from
/// SEEK_DATA/SEEK_HOLE. `None` when it turns out dense (compressed or
/// inline data) or the filesystem cannot tell.
fn data_extents(f: &File, size: u64) -> io::Result<Option<Vec<Extent>>> {
    let fd = f.as_fd();
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    while pos < end {
        let data = match nix::unistd::lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = nix::unistd::lseek(fd, data, Whence::SeekHole)?.min(end);
        extents.push(Extent {
            offset: data as u64,
            len: (hole - data) as u64,
        });
        pos = hole;
    }
    if extents.len() == 1 && extents[0].offset == 0 && extents[0].len == size {
        return Ok(None);
    }
    Ok(Some(extents))
}

impl Iterator for Walker {
    type Item = WalkItem;

    fn next(&mut self) -> Option<WalkItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let Some(cur) = self.current.as_mut() else {
                let source = self.sources.next()?;
                self.start(source);
                continue;
            };
            match cur.iter.next() {
                None => self.current = None,
                Some(Ok(dent)) => {
                    let archive = Self::archive_path(cur, dent.path());
                    if excluded(&self.excludes, &archive) {
                        if dent.file_type().is_dir() {
                            cur.iter.skip_current_dir();
                        }
                        continue;
                    }
                    // The source root itself has no archive path when given
                    // as `.` or `/`; only its contents are archived.
                    if archive.is_empty() {
                        continue;
                    }
                    let (depth, file_type) = (dent.depth(), dent.file_type());
                    let abs = dent.into_path();
                    if depth > 0 && file_type.is_dir() && self.contents_excluded.contains(&abs) {
                        cur.iter.skip_current_dir();
                    }
                    // A regular file (by its directory entry) is opened first and
                    // described from its descriptor: one stat instead of two.
                    if file_type.is_file() {
                        if let Ok((f, md)) = open_source_file_in_dir(&mut self.dir, &abs) {
                            self.describe(abs, archive, &md, Some(f));
                            continue;
                        }
                    }
                    match std::fs::symlink_metadata(&abs) {
                        Ok(md) => self.describe(abs, archive, &FileStat::from(&md), None),
                        Err(e) => self.pending.push_back(WalkItem::Warning {
                            path: abs,
                            message: format!("cannot read metadata: {e}"),
                        }),
                    }
                }
                Some(Err(err)) => {
                    let message = match err.io_error() {
                        Some(e) => format!("cannot read: {e}"),
                        None => err.to_string(),
                    };
                    let Some(path) = err.path().map(Path::to_path_buf) else {
                        let path = cur.root.clone();
                        self.pending.push_back(WalkItem::Warning { path, message });
                        continue;
                    };
                    // A directory that cannot be listed was already yielded
                    // (walkdir reports the failure as its first child).
                    if !excluded(&self.excludes, &Self::archive_path(cur, &path)) {
                        self.pending.push_back(WalkItem::Warning { path, message });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn entries(items: &[WalkItem]) -> Vec<&Entry> {
        items
            .iter()
            .filter_map(|i| match i {
                WalkItem::Entry(e) => Some(&e.entry),
                _ => None,
            })
            .collect()
    }

    /// Archive paths relative to `prefix` (the temp root's archive path).
    fn rel_paths(items: &[WalkItem], prefix: &[u8]) -> Vec<Vec<u8>> {
        entries(items)
            .iter()
            .map(|e| {
                let p = e.path.strip_prefix(prefix).expect("under prefix");
                p.strip_prefix(b"/").unwrap_or(p).to_vec()
            })
            .collect()
    }

    fn find<'a>(items: &'a [WalkItem], prefix: &[u8], rel: &[u8]) -> &'a Entry {
        let mut want = prefix.to_vec();
        want.push(b'/');
        want.extend_from_slice(rel);
        entries(items)
            .into_iter()
            .find(|e| e.path == want)
            .unwrap_or_else(|| panic!("no entry {}", String::from_utf8_lossy(&want)))
    }

    #[test]
    fn archive_paths_are_normalised() {
        let ap = |s: &str| archive_path_of(Path::new(s));
        assert_eq!(ap("/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(ap("./a/./b/").unwrap(), b"a/b");
        assert_eq!(ap("//x//y").unwrap(), b"x/y");
        assert_eq!(ap(".").unwrap(), b"");
        assert_eq!(ap("/").unwrap(), b"");
        assert!(ap("../etc").unwrap_err().contains(".."));
        assert!(ap("a/../b").is_err());
        assert_eq!(ap("a..b/..c").unwrap(), b"a..b/..c");
    }

    #[test]
    fn glob_patterns() {
        assert!(crate::pipeline::glob::glob_match(b"*.o", b"main.o"));
        assert!(crate::pipeline::glob::glob_match(b"*.o", b"dir/main.o"));
        assert!(!crate::pipeline::glob::glob_match(b"*.o", b"main.c"));
        assert!(crate::pipeline::glob::glob_match(b"a?c", b"abc"));
        assert!(!crate::pipeline::glob::glob_match(b"a?c", b"ac"));
        assert!(crate::pipeline::glob::glob_match(b"[a-c]x", b"bx"));
        assert!(!crate::pipeline::glob::glob_match(b"[!a-c]x", b"bx"));
        assert!(crate::pipeline::glob::glob_match(b"[^a-c]x", b"dx"));
        assert!(crate::pipeline::glob::glob_match(b"[]]", b"]"));
        assert!(crate::pipeline::glob::glob_match(b"[", b"["));
        assert!(crate::pipeline::glob::glob_match(b"\\*", b"*"));
        assert!(!crate::pipeline::glob::glob_match(b"\\*", b"x"));
        assert!(crate::pipeline::glob::glob_match(b"*", b""));
        assert!(crate::pipeline::glob::glob_match(b"a*b*c", b"aXXbYYbc"));
        assert!(!crate::pipeline::glob::glob_match(b"a*b*c", b"aXXbYYb"));
        assert!(crate::pipeline::glob::glob_match(
            b"caf\xe9*",
            b"caf\xe9-latin1"
        ));
    }

    #[test]
    fn exclusion_matches_path_and_trailing_components() {
        let pats: Vec<Vec<u8>> = ["*.tmp", "cache", "/abs/only", "x/y/"]
            .iter()
            .map(|p| crate::pipeline::glob::normalise_pattern(p))
            .collect();
        assert!(excluded(&pats, b"a/b/file.tmp"));
        assert!(excluded(&pats, b"home/u/cache"));
        assert!(!excluded(&pats, b"home/u/cached"));
        assert!(excluded(&pats, b"abs/only"));
        assert!(excluded(&pats, b"top/x/y"));
        assert!(!excluded(&pats, b"top/x/yz"));
    }

    #[test]
    fn walks_every_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("dir/file"), b"hello").unwrap();
        std::fs::write(root.join("a-first"), b"linked").unwrap();
        std::fs::hard_link(root.join("a-first"), root.join("z-second")).unwrap();
        std::os::unix::fs::symlink("dir/file", root.join("link")).unwrap();
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let sparse = File::create(root.join("sparse")).unwrap();
        sparse.set_len(8 * 1024 * 1024).unwrap();
        sparse.write_at(b"x", 4 * 1024 * 1024).unwrap();
        drop(sparse);
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        std::fs::write(root.join("new\nline"), b"nl").unwrap();
        let bad = root.join(OsStr::from_bytes(b"bad-\xff-utf8"));
        std::fs::write(&bad, b"bad").unwrap();
        let xattrs_ok = xattr::set(root.join("dir/file"), "user.test", b"v").is_ok();
        std::fs::set_permissions(
            root.join("dir"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1755),
        )
        .unwrap();

        let items: Vec<WalkItem> = Walker::new([&root], WalkOptions::default()).collect();
        let prefix = archive_path_of(&root).unwrap();

        let warnings: Vec<_> = items
            .iter()
            .filter(|i| matches!(i, WalkItem::Warning { .. }))
            .collect();
        assert!(warnings.is_empty(), "{warnings:?}");

        // Pre-order, sorted by file name; the socket is skipped, not listed.
        assert_eq!(
            rel_paths(&items, &prefix),
            vec![
                b"".to_vec(),
                b"a-first".to_vec(),
                b"bad-\xff-utf8".to_vec(),
                b"dir".to_vec(),
                b"dir/file".to_vec(),
                b"fifo".to_vec(),
                b"link".to_vec(),
                b"new\nline".to_vec(),
                b"sparse".to_vec(),
                b"z-second".to_vec(),
            ]
        );
        let skipped: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                WalkItem::Skipped { path, reason } => Some((path.clone(), *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(skipped, vec![(root.join("sock"), SkipReason::Socket)]);

        let top = &entries(&items)[0];
        assert_eq!(top.path, prefix);
        assert_eq!(top.kind().unwrap(), EntryKind::Dir);

        let dir = find(&items, &prefix, b"dir");
        assert_eq!(dir.kind().unwrap(), EntryKind::Dir);
        assert_eq!(dir.mode, 0o1755);

        let file = find(&items, &prefix, b"dir/file");
        let md = std::fs::metadata(root.join("dir/file")).unwrap();
        assert_eq!(file.kind().unwrap(), EntryKind::File);
        assert_eq!(file.size, 5);
        assert_eq!(file.uid, md.uid());
        assert_eq!(
            file.mtime,
            Timestamp {
                sec: md.mtime(),
                nsec: md.mtime_nsec() as u32
            }
        );
        assert_eq!(file.sparse, None);
        assert_eq!(
            file.user,
            nix::unistd::User::from_uid(md.uid().into())
                .unwrap()
                .map(|u| u.name)
        );
        if xattrs_ok {
            assert_eq!(
                file.xattrs,
                vec![Xattr {
                    name: b"user.test".to_vec(),
                    value: b"v".to_vec()
                }]
            );
        }

        let link = find(&items, &prefix, b"link");
        assert_eq!(link.kind().unwrap(), EntryKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some(&b"dir/file"[..]));
        assert_eq!(link.size, 0);

        let fifo = find(&items, &prefix, b"fifo");
        assert_eq!(fifo.kind().unwrap(), EntryKind::Fifo);
        assert_eq!(fifo.mode, 0o640);

        let first = find(&items, &prefix, b"a-first");
        assert_eq!(first.kind().unwrap(), EntryKind::File);
        assert_eq!(first.size, 6);
        let second = find(&items, &prefix, b"z-second");
        assert_eq!(second.kind().unwrap(), EntryKind::HardLink);
        assert_eq!(second.link_target.as_deref(), Some(&first.path[..]));
        assert_eq!(second.size, 0);

        let sparse = find(&items, &prefix, b"sparse");
        assert_eq!(sparse.size, 8 * 1024 * 1024);
        let extents = sparse.sparse.as_ref().expect("sparse map");
        assert!(!extents.is_empty() && extents.len() <= 2, "{extents:?}");
        let data: u64 = extents.iter().map(|e| e.len).sum();
        assert!(data < 1024 * 1024, "{extents:?}");
        let e = extents[0];
        assert!(e.offset <= 4 * 1024 * 1024 && 4 * 1024 * 1024 < e.offset + e.len);

        // Nothing here is on another filesystem: same walk.
        let options = WalkOptions {
            one_file_system: true,
            ..WalkOptions::default()
        };
        let same: Vec<WalkItem> = Walker::new([&root], options).collect();
        assert_eq!(rel_paths(&same, &prefix), rel_paths(&items, &prefix));

        assert_eq!(find(&items, &prefix, b"new\nline").size, 2);
        assert_eq!(find(&items, &prefix, b"bad-\xff-utf8").size, 3);
    }

    #[test]
    fn contents_excluded_keep_the_directory_below_a_source_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        for d in ["proc/1", "tmp/x", "home/proc", "srv"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("tmp/x/f"), b"").unwrap();
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        let options = WalkOptions {
            contents_excluded: vec![root.join("proc"), root.join("tmp")],
            ..WalkOptions::default()
        };
        let items: Vec<WalkItem> = Walker::new([&root], options.clone()).collect();
        let prefix = archive_path_of(&root).unwrap();
        assert_eq!(
            rel_paths(&items, &prefix),
            [&b""[..], b"home", b"home/proc", b"proc", b"srv", b"tmp"]
        );
        assert_eq!(find(&items, &prefix, b"tmp").mode, 0o1777);
        // Named as a source, such a directory is archived whole.
        let tmp_dir = root.join("tmp");
        let items: Vec<WalkItem> = Walker::new([&tmp_dir], options).collect();
        let prefix = archive_path_of(&tmp_dir).unwrap();
        assert_eq!(rel_paths(&items, &prefix), [&b""[..], b"x", b"x/f"]);
    }

    #[test]
    fn excludes_prune_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        std::fs::create_dir_all(root.join("keep/cache/deep")).unwrap();
        std::fs::write(root.join("keep/cache/deep/f"), b"").unwrap();
        std::fs::write(root.join("keep/a.o"), b"").unwrap();
        std::fs::write(root.join("keep/a.c"), b"").unwrap();
        let options = WalkOptions {
            excludes: vec!["cache".into(), "*.o".into()],
            ..WalkOptions::default()
        };
        let items: Vec<WalkItem> = Walker::new([&root], options).collect();
        let prefix = archive_path_of(&root).unwrap();
        assert_eq!(
            rel_paths(&items, &prefix),
            vec![b"".to_vec(), b"keep".to_vec(), b"keep/a.c".to_vec()]
        );
    }

    #[test]
    fn dot_dot_sources_are_refused_and_walk_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        std::fs::create_dir(&root).unwrap();
        let bad = root.join("../src");
        let items: Vec<WalkItem> =
            Walker::new([bad.clone(), root.clone()], WalkOptions::default()).collect();
        assert!(matches!(&items[0], WalkItem::Warning { path, .. } if *path == bad));
        assert_eq!(entries(&items).len(), 1);

        let missing = tmp.path().join("missing");
        let items: Vec<WalkItem> = Walker::new([&missing], WalkOptions::default()).collect();
        assert!(matches!(&items[..], [WalkItem::Warning { path, .. }] if *path == missing));
    }

    #[test]
    fn symlink_source_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::fs::write(tmp.path().join("real/f"), b"").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let items: Vec<WalkItem> = Walker::new([&link], WalkOptions::default()).collect();
        let es = entries(&items);
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].kind().unwrap(), EntryKind::Symlink);
    }

    #[test]
    fn unreadable_directory_is_archived_with_a_warning() {
        if crate::pipeline::target::is_root() {
            return; // root reads everything
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        std::fs::create_dir_all(root.join("locked")).unwrap();
        std::fs::write(root.join("locked/f"), b"").unwrap();
        let perm = |m| std::os::unix::fs::PermissionsExt::from_mode(m);
        std::fs::set_permissions(root.join("locked"), perm(0o000)).unwrap();
        let items: Vec<WalkItem> = Walker::new([&root], WalkOptions::default()).collect();
        std::fs::set_permissions(root.join("locked"), perm(0o755)).unwrap();
        let prefix = archive_path_of(&root).unwrap();
        assert_eq!(
            rel_paths(&items, &prefix),
            vec![b"".to_vec(), b"locked".to_vec()]
        );
        assert!(items
            .iter()
            .any(|i| matches!(i, WalkItem::Warning { path, .. } if *path == root.join("locked"))));
    }

    #[test]
    fn open_source_file_refuses_symlinks_and_fifos() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"data").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let mut s = String::new();
        io::Read::read_to_string(
            &mut open_source_file(&tmp.path().join("f")).unwrap(),
            &mut s,
        )
        .unwrap();
        assert_eq!(s, "data");
        assert!(open_source_file(&tmp.path().join("l")).is_err());
        // Returns at once instead of blocking on a writer.
        assert!(open_source_file(&tmp.path().join("p")).is_err());
    }
}
