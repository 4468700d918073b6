//! Restore: choose the version of each path to bring back, then read each
//! session's data once and recreate the chosen entries under the target.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::device::TapeDrive;
use crate::format::meta::{CatalogEntry, Entry, EntryKind, StreamPosition};

use super::assemble::{read_session_data_from, EntryOutcome, EntryVisitor};
use super::list::{list_cartridge, ListSource, SessionEntries};
use super::reader::LostBlocks;
use super::target::{finish_file, Created, OwnershipPolicy, RestoreTarget, TargetError};
use super::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Glob patterns over archive paths; a match on a directory selects its contents.
    pub patterns: Vec<String>,
    pub session: Option<u32>,
    pub overwrite: bool,
    pub numeric_owner: bool,
    /// Keep the part of an entry that spans cartridges as `PATH.partial`
    /// (and complete such a file when the cartridge holding the rest is
    /// restored into the same target).
    pub partials: bool,
    /// Restore exactly these paths of these sessions (by session number on
    /// the cartridge) instead of choosing versions by `patterns`: a restore
    /// of a whole set has chosen them from the set catalog.
    pub selection: Option<HashMap<u32, HashSet<Vec<u8>>>>,
    /// Paths restored more than once in one job (an older version a hard
    /// link needs, then the newest): a later one replaces what this job
    /// restored there earlier, never a file that was there before.
    pub replace_own: HashSet<Vec<u8>>,
}

/// Suffix of a file holding some parts of an entry that spans cartridges.
pub const PARTIAL_SUFFIX: &[u8] = b".partial";

/// Which part of a spanning entry a cartridge holds, in words.
pub fn describe_part(continued_from: Option<u64>, continues: bool) -> String {
    match (continued_from, continues) {
        (None, _) => "its first part; the rest is on the next cartridge of the set".into(),
        (Some(o), true) => format!(
            "a middle part from byte {o}; the parts before and after are on the previous and next cartridges"
        ),
        (Some(o), false) => format!(
            "its last part, from byte {o}; the part before is on the previous cartridge"
        ),
    }
}

/// An entry that was not restored, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotRestored {
    pub path: String,
    pub session: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub cartridge: String,
    /// The cartridge's volume UUID, for the host catalog.
    #[serde(skip)]
    pub volume_uuid: [u8; 16],
    pub target: String,
    pub selected: u64,
    pub restored: u64,
    pub bytes: u64,
    /// Existing files left alone (no --overwrite).
    pub skipped_existing: Vec<String>,
    /// Entries whose data was damaged or missing on tape.
    pub damaged: Vec<NotRestored>,
    /// Entries refused for safety (unsafe paths, links leaving the target).
    pub refused: Vec<NotRestored>,
    /// Entries that could not be created or given their metadata.
    pub failed: Vec<NotRestored>,
    pub warnings: Vec<String>,
    pub lost_blocks: Vec<LostBlocks>,
    pub patterns_without_match: Vec<String>,
    /// Entries that span cartridges and could not be completed from this one.
    pub spanning: Vec<NotRestored>,
    /// Spanning entries completed by joining their parts (whole hash checked).
    pub joined: u64,
    /// Files of an incremental or differential session that were unchanged
    /// since its base: their content is in an earlier session (`restore
    /// --at` gathers it through the host catalog).
    pub unchanged: Vec<String>,
    /// The raw paths of `spanning` and of the joined entries, for a restore
    /// across cartridges to follow them (names need not be UTF-8).
    #[serde(skip)]
    pub spanning_paths: Vec<Vec<u8>>,
    #[serde(skip)]
    pub joined_paths: Vec<Vec<u8>>,
    pub ownership_left_as_user: bool,
    /// Catalog read to find the entries: from the set catalog copy's index
    /// and pages when the patterns name paths (0: not counted, the
    /// sessions' own catalogs were read whole).
    pub catalog_blocks_read: u64,
    pub catalog_bytes_read: u64,
    /// Reading done: blocks and bytes read, positioning operations, time.
    pub blocks_read: u64,
    pub bytes_read: u64,
    pub seeks: u64,
    pub seconds: f64,
}

/// Read on rather than seek when the next wanted entry is this close.
const SEEK_GAP_BLOCKS: u64 = 8;

impl RestoreSummary {
    pub fn exit_status(&self) -> crate::exit::ExitStatus {
        use crate::exit::ExitStatus;
        if !self.damaged.is_empty()
            || !self.lost_blocks.is_empty()
            || !self.refused.is_empty()
            || !self.failed.is_empty()
        {
            ExitStatus::DataDamage
        } else if !self.skipped_existing.is_empty()
            || !self.spanning.is_empty()
            || !self.unchanged.is_empty()
            || !self.warnings.is_empty()
            || !self.patterns_without_match.is_empty()
        {
            ExitStatus::Warnings
        } else {
            ExitStatus::Success
        }
    }
}

/// Does `pattern` select `path`: a glob match on the path or on one of its
/// parent directories (so naming a directory restores what is under it).
pub fn pattern_selects(pattern: &[u8], path: &[u8]) -> bool {
    if super::glob::glob_match(pattern, path) {
        return true;
    }
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .any(|(i, _)| super::glob::glob_match(pattern, &path[..i]))
}

/// Restore from the loaded cartridge.
pub fn restore(drive: &mut dyn TapeDrive, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let mut into = RestoreInto::open(opts)?;
    let mut summary = into.cartridge(drive, opts)?;
    into.finish(&mut summary)?;
    Ok(summary)
}

/// A restore target kept open across cartridges (a whole set is restored
/// into one target; directory metadata is applied once, at the end).
pub struct RestoreInto {
    target: RestoreTarget,
    policy: OwnershipPolicy,
    /// Files of `RestoreOptions::replace_own` this job has created.
    own: HashSet<Vec<u8>>,
}

impl RestoreInto {
    pub fn open(opts: &RestoreOptions) -> Result<Self> {
        let policy = if opts.numeric_owner && super::target::is_root() {
            OwnershipPolicy::Preserve { numeric_only: true }
        } else {
            OwnershipPolicy::for_current_user()
        };
        Ok(RestoreInto {
            target: RestoreTarget::open(&opts.target)?,
            policy,
            own: HashSet::new(),
        })
    }

    /// Apply what waits until the end (directory metadata, inode flags);
    /// its warnings go to `summary`.
    pub fn finish(self, summary: &mut RestoreSummary) -> Result<()> {
        summary.warnings.extend(self.target.finish(&self.policy)?);
        if summary.ownership_left_as_user {
            summary.warnings.push(
                "not running as root: ownership left as the restoring user's (as tar does)".into(),
            );
        }
        Ok(())
    }

    /// Restore from the loaded cartridge into the open target.
    pub fn cartridge(
        &mut self,
        drive: &mut dyn TapeDrive,
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        restore_cartridge(drive, opts, &mut self.target, &self.policy, &mut self.own)
    }
}

fn restore_cartridge(
    drive: &mut dyn TapeDrive,
    opts: &RestoreOptions,
    target: &mut RestoreTarget,
    policy: &OwnershipPolicy,
    own: &mut HashSet<Vec<u8>>,
) -> Result<RestoreSummary> {
    let mut catalog_read = (0u64, 0u64);
    let listing = match listing_from_set_catalog(drive, opts, &mut catalog_read)? {
        Some(l) => l,
        None => list_cartridge(drive, opts.session)?,
    };
    let label = listing.map.label.clone();
    let set_uuid = label.set_uuid();
    let patterns: Vec<Vec<u8>> = opts
        .patterns
        .iter()
        .map(|p| super::glob::normalise_pattern(p))
        .collect();
    let mut summary = RestoreSummary {
        catalog_blocks_read: catalog_read.0,
        catalog_bytes_read: catalog_read.1,
        cartridge: label.label.clone(),
        volume_uuid: label.volume_uuid,
        target: opts.target.display().to_string(),
        ..Default::default()
    };

    let chosen = match &opts.selection {
        Some(sel) => sel.clone(),
        None => choose_versions(&listing.sessions, &patterns, &mut summary),
    };
    summary.selected = chosen.values().map(|v| v.len() as u64).sum();
    for s in &listing.sessions {
        for (path, reason) in &s.incomplete {
            let selected = match &opts.selection {
                Some(sel) => sel
                    .get(&s.session.number)
                    .is_some_and(|paths| paths.contains(path)),
                None => patterns.is_empty() || patterns.iter().any(|p| pattern_selects(p, path)),
            };
            if selected {
                summary.damaged.push(NotRestored {
                    path: show(path),
                    session: s.session.number,
                    reason: reason.clone(),
                });
            }
        }
    }

    summary.ownership_left_as_user = !super::target::is_root();
    let started = std::time::Instant::now();
    for s in &listing.sessions {
        let Some(paths) = chosen.get(&s.session.number) else {
            continue;
        };
        // With an intact catalog, seek to each wanted entry (in tape order)
        // instead of reading the whole session.
        let starts: Vec<StreamPosition> = if s.source == ListSource::Catalog {
            s.entries
                .iter()
                .filter(|e| paths.contains(&e.path))
                .map(|e| e.position)
                .collect()
        } else {
            Vec::new()
        };
        // Entries whose content goes on on the next cartridge: their part
        // here never takes the entry's own name.
        let continues: HashSet<Vec<u8>> = s
            .entries
            .iter()
            .filter(|e| e.status == crate::format::meta::END_CONTINUES && paths.contains(&e.path))
            .map(|e| e.path.clone())
            .collect();
        let mut v = Restorer {
            target: &mut *target,
            policy,
            overwrite: opts.overwrite,
            partials: opts.partials,
            continues: &continues,
            replace_own: &opts.replace_own,
            own: &mut *own,
            wanted: paths,
            session: s.session.number,
            current: None,
            seen: HashSet::new(),
            starts: &starts,
            tried: HashSet::new(),
            last_start: None,
            summary: &mut summary,
        };
        let mut lost = Vec::new();
        let mut read = |v: &mut Restorer, at: Option<StreamPosition>| -> Result<()> {
            drive.locate(s.session.data_file, at.map_or(0, |p| p.block))?;
            let report = read_session_data_from(
                drive,
                set_uuid,
                s.session.data_file,
                s.session.number,
                at,
                v,
            )?;
            v.summary.seeks += 1;
            v.summary.blocks_read += report.blocks_read;
            v.summary.bytes_read += report.bytes_read;
            lost.extend(report.lost);
            Ok(())
        };
        if starts.is_empty() {
            read(&mut v, None)?;
        } else {
            while let Some(&next) = starts.iter().find(|p| !v.tried.contains(*p)) {
                // Marked first: an entry whose blocks are lost is tried once.
                v.tried.insert(next);
                read(&mut v, Some(next))?;
            }
        }
        let seen = std::mem::take(&mut v.seen);
        // Entries chosen from the catalog whose start record was never read.
        let by_path: HashMap<&[u8], &CatalogEntry> =
            s.entries.iter().map(|e| (e.path.as_slice(), e)).collect();
        for p in paths.difference(&seen) {
            let reason = by_path
                .get(p.as_slice())
                .and_then(|e| lost_covering(&lost, e.position))
                .unwrap_or_else(|| "its records were not found in the session data".into());
            summary.damaged.push(NotRestored {
                path: show(p),
                session: s.session.number,
                reason,
            });
        }
        summary.lost_blocks.extend(lost);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The newest version of each selected path, grouped by session number.
fn choose_versions(
    sessions: &[SessionEntries],
    patterns: &[Vec<u8>],
    summary: &mut RestoreSummary,
) -> HashMap<u32, HashSet<Vec<u8>>> {
    let mut taken: HashSet<&[u8]> = HashSet::new();
    let mut chosen: HashMap<u32, HashSet<Vec<u8>>> = HashMap::new();
    let mut matched = vec![false; patterns.len()];
    for s in sessions.iter().rev() {
        let set = chosen.entry(s.session.number).or_default();
        let mut links = Vec::new();
        for e in &s.entries {
            let hit: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| pattern_selects(p, &e.path))
                .map(|(i, _)| i)
                .collect();
            if !patterns.is_empty() && hit.is_empty() {
                continue;
            }
            for i in hit {
                matched[i] = true;
            }
            if taken.insert(&e.path) {
                set.insert(e.path.clone());
                if e.kind == EntryKind::HardLink.code() {
                    if let Some(t) = &e.link_target {
                        links.push(t.clone());
                    }
                }
            }
        }
        // A hard link needs the file it links to, from the same session.
        for t in links {
            if !taken.contains(t.as_slice()) {
                if let Some(e) = s.entries.iter().find(|e| e.path == t) {
                    taken.insert(&e.path);
                    set.insert(t);
                }
            }
        }
    }
    chosen.retain(|_, v| !v.is_empty());
    for (i, m) in matched.iter().enumerate() {
        if !m {
            summary
                .patterns_without_match
                .push(String::from_utf8_lossy(&patterns[i]).into_owned());
        }
    }
    chosen
}

fn lost_covering(lost: &[LostBlocks], pos: StreamPosition) -> Option<String> {
    // The entry starts in or after a lost run that reaches its start block.
    lost.iter()
        .find(|l| {
            l.tape_file == pos.tape_file && l.first_block <= pos.block && pos.block <= l.last_block
        })
        .map(|l| {
            format!(
                "tape file {}, blocks {}..={} unreadable: {}",
                l.tape_file, l.first_block, l.last_block, l.reason
            )
        })
}

/// Errors after which no further entry can be restored into the target.
fn target_unusable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EROFS | libc::EDQUOT | libc::EIO)
    )
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

struct CurrentFile {
    entry: Entry,
    file: Option<File>,
    /// The content goes to `PATH.partial`; true when an earlier part was
    /// already there (restored from the previous cartridge).
    partial: Option<bool>,
}

struct Restorer<'a> {
    target: &'a mut RestoreTarget,
    /// Where the wanted entries start, in tape order (empty: read it all).
    starts: &'a [StreamPosition],
    /// Starts already read or attempted.
    tried: HashSet<StreamPosition>,
    /// Start of the last entry met in the stream.
    last_start: Option<StreamPosition>,
    policy: &'a OwnershipPolicy,
    overwrite: bool,
    partials: bool,
    /// Paths whose part on this cartridge is not their last.
    continues: &'a HashSet<Vec<u8>>,
    replace_own: &'a HashSet<Vec<u8>>,
    own: &'a mut HashSet<Vec<u8>>,
    wanted: &'a HashSet<Vec<u8>>,
    session: u32,
    current: Option<CurrentFile>,
    seen: HashSet<Vec<u8>>,
    summary: &'a mut RestoreSummary,
}

impl Restorer<'_> {
    /// Record why an entry could not be restored, and go on with the rest,
    /// unless the target itself is unusable (full, read-only).
    fn refuse(&mut self, path: &[u8], e: TargetError) -> Result<bool> {
        let not = |reason: String| NotRestored {
            path: show(path),
            session: self.session,
            reason,
        };
        match e {
            TargetError::Io { ref source, .. } if target_unusable(source) => Err(Error::Target(e)),
            TargetError::Io { .. } => {
                self.summary.failed.push(not(e.to_string()));
                Ok(false)
            }
            other => {
                self.summary.refused.push(not(other.to_string()));
                Ok(false)
            }
        }
    }

    fn metadata(&mut self, entry: &Entry) -> Result<()> {
        match self.target.apply_metadata(&entry.path, entry, self.policy) {
            Ok(warnings) => self.summary.warnings.extend(warnings),
            Err(e) => {
                self.refuse(&entry.path, e)?;
            }
        }
        Ok(())
    }

    /// Create the object; returns whether content should follow.
    fn create(&mut self, entry: &Entry, kind: EntryKind) -> Result<bool, TargetError> {
        let path = entry.path.as_slice();
        let existed = match kind {
            EntryKind::Dir => {
                self.target.create_dir(path, self.overwrite)?;
                // Applied at the end, after the directory's contents.
                self.target.defer_dir_metadata(path, entry.clone())?;
                self.summary.restored += 1;
                return Ok(false);
            }
            EntryKind::File if entry.continued_from.is_none() && self.continues.contains(path) => {
                // A first part: kept as PATH.partial, or not written at all.
                let file = if self.partials {
                    match self.target.create_file(&partial_path(path), true)? {
                        Created::New(f) => Some(f),
                        Created::Exists => None,
                    }
                } else {
                    None
                };
                let content = file.is_some();
                self.current = Some(CurrentFile {
                    entry: entry.clone(),
                    file,
                    partial: Some(false),
                });
                return Ok(content);
            }
            EntryKind::File if entry.continued_from.is_some() => {
                // A later part: join the earlier parts if they are here.
                let partial = partial_path(path);
                let file = if self.partials {
                    self.target.open_existing_file(&partial)?
                } else {
                    None
                };
                let joined = file.is_some();
                let file = match file {
                    Some(f) => Some(f),
                    None if self.partials => match self.target.create_file(&partial, true)? {
                        Created::New(f) => Some(f),
                        Created::Exists => None,
                    },
                    None => None,
                };
                let content = file.is_some();
                self.current = Some(CurrentFile {
                    entry: entry.clone(),
                    file,
                    partial: Some(joined),
                });
                return Ok(content);
            }
            EntryKind::File => match self
                .target
                .create_file(path, self.overwrite || self.own.contains(path))?
            {
                Created::New(f) => {
                    if self.replace_own.contains(path) {
                        self.own.insert(path.to_vec());
                    }
                    self.current = Some(CurrentFile {
                        entry: entry.clone(),
                        file: Some(f),
                        partial: None,
                    });
                    return Ok(true);
                }
                Created::Exists => true,
            },
            EntryKind::Symlink => {
                let t = entry.link_target.as_deref().unwrap_or_default();
                !self
                    .target
                    .create_symlink(path, t, self.overwrite)?
                    .is_new()
            }
            EntryKind::HardLink => {
                let t = entry.link_target.as_deref().unwrap_or_default();
                !self
                    .target
                    .create_hardlink(path, t, self.overwrite)?
                    .is_new()
            }
            EntryKind::Unchanged => {
                self.summary.unchanged.push(show(path));
                return Ok(false);
            }
            EntryKind::Fifo => !self.target.create_fifo(path, self.overwrite)?.is_new(),
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let d = entry
                    .device
                    .unwrap_or(crate::format::meta::DeviceNumbers { major: 0, minor: 0 });
                !self
                    .target
                    .create_device(path, kind, d.major, d.minor, self.overwrite)?
                    .is_new()
            }
        };
        if existed {
            self.summary.skipped_existing.push(show(path));
        } else {
            self.current = Some(CurrentFile {
                entry: entry.clone(),
                file: None,
                partial: None,
            });
        }
        Ok(false)
    }
}

impl EntryVisitor for Restorer<'_> {
    fn entry(&mut self, entry: &Entry, position: StreamPosition) -> Result<bool> {
        self.last_start = Some(position);
        if !self.wanted.contains(&entry.path) {
            return Ok(false);
        }
        self.tried.insert(position);
        self.seen.insert(entry.path.clone());
        let kind = entry.kind().expect("assembler passes known kinds only");
        match self.create(entry, kind) {
            Ok(content) => Ok(content),
            Err(e) => self.refuse(&entry.path, e),
        }
    }

    /// Between entries: go on reading only while the next wanted entry is
    /// close; past the last one, stop (the rest of the session is not needed).
    fn keep_reading(&self) -> bool {
        if self.starts.is_empty() {
            return true;
        }
        let Some(here) = self.last_start else {
            return true;
        };
        let next = self.starts.partition_point(|p| *p <= here);
        match self.starts.get(next) {
            Some(p) => p.block <= here.block + SEEK_GAP_BLOCKS,
            None => false,
        }
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if let Some(CurrentFile {
            entry,
            file: Some(f),
            ..
        }) = &self.current
        {
            f.write_all_at(bytes, offset).map_err(|e| {
                Error::io(format!("writing {} in the target", show(&entry.path)), e)
            })?;
            self.summary.bytes += bytes.len() as u64;
        }
        Ok(())
    }

    fn entry_end(&mut self, outcome: EntryOutcome) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let path = cur.entry.path.clone();
        match outcome {
            EntryOutcome::Damaged { reason } => {
                if let Some(f) = cur.file {
                    drop(f);
                    // Never leave a file with wrong content looking restored.
                    let _ = self.target.remove_file(&path);
                }
                self.summary.damaged.push(NotRestored {
                    path: show(&path),
                    session: self.session,
                    reason,
                });
                return Ok(());
            }
            EntryOutcome::IncompleteAtSource { status } => self.summary.warnings.push(format!(
                "{}: restored as archived, but the archived content was incomplete at the source (status {status})",
                show(&path)
            )),
            EntryOutcome::Complete { .. } => {}
            EntryOutcome::Partial {
                continued_from,
                continues,
                whole_blake3,
            } => return self.partial_end(cur, continued_from, continues, whole_blake3),
        }
        if let Some(f) = &cur.file {
            if let Err(e) = finish_file(&path, f, cur.entry.size) {
                self.refuse(&path, e)?;
                return Ok(());
            }
        }
        if cur.entry.kind != EntryKind::HardLink.code() {
            self.metadata(&cur.entry)?;
        }
        self.summary.restored += 1;
        Ok(())
    }
}

fn partial_path(path: &[u8]) -> Vec<u8> {
    [path, PARTIAL_SUFFIX].concat()
}

/// BLAKE3 of a whole file, read from the start.
fn hash_file(f: &File) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
}

impl Restorer<'_> {
    /// The end of one part of an entry that spans cartridges.
    fn partial_end(
        &mut self,
        cur: CurrentFile,
        continued_from: Option<u64>,
        continues: bool,
        whole_blake3: Option<[u8; 32]>,
    ) -> Result<()> {
        let path = cur.entry.path.clone();
        let spanning = |why: String| NotRestored {
            path: show(&path),
            session: self.session,
            reason: why,
        };
        let Some(f) = cur.file else {
            // The first part, not kept: say what is missing.
            self.summary.spanning_paths.push(path.clone());
            self.summary.spanning.push(spanning(format!(
                "spans cartridges: this cartridge holds {}{}",
                describe_part(continued_from, continues),
                if self.partials {
                    ""
                } else {
                    " (give --partials to keep it as PATH.partial)"
                }
            )));
            return Ok(());
        };
        let partial = partial_path(&path);
        if cur.partial.is_none() {
            // A first part, written at the entry's own path: it may only
            // stay as PATH.partial, never look restored.
            let kept = self.partials && finish_file(&path, &f, cur.entry.size).is_ok() && {
                drop(f);
                self.target.rename_file(&path, &partial, true).is_ok()
            };
            if !kept {
                let _ = self.target.remove_file(&path);
            }
            self.summary.spanning_paths.push(path.clone());
            self.summary.spanning.push(spanning(if kept {
                format!(
                    "spans cartridges: kept as {} with {}",
                    show(&partial),
                    describe_part(continued_from, continues)
                )
            } else {
                format!(
                    "spans cartridges: this cartridge holds {} (give --partials to keep it as PATH.partial)",
                    describe_part(continued_from, continues)
                )
            }));
            return Ok(());
        }
        if let Err(e) = finish_file(&partial, &f, cur.entry.size) {
            self.refuse(&path, e)?;
            return Ok(());
        }
        let joined_earlier = cur.partial == Some(true);
        if continues || !joined_earlier {
            self.summary.spanning_paths.push(path.clone());
            self.summary.spanning.push(spanning(format!(
                "spans cartridges: kept as {} with {}",
                show(&partial),
                describe_part(continued_from, continues)
            )));
            return Ok(());
        }
        // The last part joined the earlier ones: the whole hash decides.
        let got =
            hash_file(&f).map_err(|e| Error::io(format!("reading back {}", show(&partial)), e))?;
        if whole_blake3 != Some(got) {
            self.summary.damaged.push(spanning(format!(
                "its parts joined in {} do not match the entry's BLAKE3 hash (a part is missing or from another version)",
                show(&partial)
            )));
            return Ok(());
        }
        drop(f);
        match self.target.rename_file(&partial, &path, self.overwrite) {
            Ok(Created::New(())) => {}
            Ok(Created::Exists) => {
                self.summary.skipped_existing.push(show(&path));
                return Ok(());
            }
            Err(e) => {
                self.refuse(&path, e)?;
                return Ok(());
            }
        }
        self.metadata(&cur.entry)?;
        self.summary.restored += 1;
        self.summary.joined += 1;
        self.summary.joined_paths.push(path);
        Ok(())
    }
}

/// When every pattern names a path (no wildcards), find the entries in the
/// last set catalog copy's index and pages instead of reading every
/// session's catalog: a few blocks, however full the cartridge. None when
/// that does not apply (then the sessions' catalogs are listed).
fn listing_from_set_catalog(
    drive: &mut dyn TapeDrive,
    opts: &RestoreOptions,
    read: &mut (u64, u64),
) -> Result<Option<super::list::Listing>> {
    let literal = |p: &String| !p.bytes().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'));
    if opts.patterns.is_empty()
        || opts.session.is_some()
        || opts.selection.is_some()
        || !opts.patterns.iter().all(literal)
    {
        return Ok(None);
    }
    let map = super::volume::map_tape(drive)?;
    let Some(set) = map.label.set.clone() else {
        return Ok(None);
    };
    let Some((number, file)) = map
        .sessions
        .iter()
        .rev()
        .find_map(|s| s.set_catalog_file.map(|f| (s.number, f)))
    else {
        return Ok(None);
    };
    // Sessions written after the copy are not in it.
    if map.sessions.iter().any(|s| s.number > number) {
        return Ok(None);
    }
    let mut by_session: HashMap<u32, Vec<CatalogEntry>> = HashMap::new();
    for p in &opts.patterns {
        let path = super::glob::normalise_pattern(p);
        // A delta copy holds only its own sessions' entries: the copies it
        // extends are looked in too.
        let mut at = Some((file, number));
        let mut depth = 0;
        while let Some((at_file, at_session)) = at {
            depth += 1;
            if depth > super::setcat::MAX_DELTA_DEPTH + 1 {
                return Ok(None);
            }
            let found = super::setcat::find_in_set_catalog(
                drive,
                set.set_uuid,
                at_file,
                at_session,
                &path,
                true,
            )?;
            read.0 += found.blocks_read;
            read.1 += found.bytes_read;
            if !found.lost.is_empty() {
                return Ok(None); // a damaged copy: the sessions' catalogs decide
            }
            // A hard link needs its target too, which the lookup did not
            // name: the sessions' catalogs decide then.
            if found
                .entries
                .iter()
                .any(|e| e.entry.kind == EntryKind::HardLink.code())
            {
                return Ok(None);
            }
            for e in found.entries {
                let Some(info) = found.sessions.iter().find(|s| s.index == e.session) else {
                    continue;
                };
                if info.volume_seq == set.volume_seq {
                    by_session.entry(info.session).or_default().push(e.entry);
                }
            }
            at = found.header.base.map(|b| (b.tape_file, b.session));
        }
    }
    let sessions = map
        .sessions
        .iter()
        .map(|s| {
            let mut entries = by_session.remove(&s.number).unwrap_or_default();
            entries.sort_by_key(|e| e.position);
            entries.dedup_by_key(|e| e.position);
            SessionEntries {
                session: s.clone(),
                source: ListSource::Catalog,
                entries,
                incomplete: Vec::new(),
                summary: None,
                lost: Vec::new(),
                closed: s.catalog_file.is_some(),
            }
        })
        .collect();
    Ok(Some(super::list::Listing { map, sessions }))
}
