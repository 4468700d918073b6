//! A tree's metadata and content, path by path, for comparing a restore
//! with its source.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything restore can set, per path (ctime excluded: nobody can set it).
#[derive(Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub atime: Option<(i64, i64)>,
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Number of hard links.
    pub nlink: u64,
    pub content: Option<[u8; 32]>,
}

/// Metadata of every object under `root` (not `root` itself), by path
/// relative to it; with `with_content`, the BLAKE3 of each regular file.
pub fn snapshot(root: &Path, with_content: bool) -> BTreeMap<Vec<u8>, Meta> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let p = e.path();
        let md = fs::symlink_metadata(p).unwrap();
        let is_dir = md.is_dir();
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(p) {
            for n in names {
                if let Ok(Some(v)) = xattr::get(p, &n) {
                    xattrs.insert(n.as_bytes().to_vec(), v);
                }
            }
        }
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        out.insert(
            rel,
            Meta {
                kind: md.mode() & 0o170000,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if is_dir { 0 } else { md.size() },
                mtime: (md.mtime(), md.mtime_nsec()),
                // Listing a directory or reading a link (this snapshot does)
                // moves its atime; files are compared before their content is read.
                atime: (!is_dir && !md.file_type().is_symlink())
                    .then(|| (md.atime(), md.atime_nsec())),
                rdev: md.rdev(),
                link: md
                    .file_type()
                    .is_symlink()
                    .then(|| fs::read_link(p).unwrap()),
                xattrs,
                nlink: md.nlink(),
                content: None,
            },
        );
    }
    // Content after metadata, so reading does not disturb atimes compared above.
    for (rel, m) in out.iter_mut() {
        if with_content && m.kind == 0o100000 {
            let p = root.join(OsStr::from_bytes(rel));
            let data = fs::read(&p).unwrap();
            m.content = Some(*blake3::hash(&data).as_bytes());
        }
    }
    out
}
