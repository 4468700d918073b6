//! Removable disks (USB, RDX) as cartridges: `disk:LABEL=NAME` or
//! `disk:UUID=UUID`.
//!
//! A disk is a filesystem found by its label or UUID (never by `/dev/sdX`,
//! which changes from one plug-in to the next), probed with `blkid` (these
//! machines may run no udev, so `/dev/disk/by-label` may be absent). tapir
//! mounts it under [`MOUNT_ROOT`] when it is not mounted yet, and the
//! cartridge is one virtual tape image at the root of the filesystem,
//! [`IMAGE_NAME`], in the layout of docs/FORMAT.md ("Virtual tape image").
//! The image's barcode is the filesystem label.
//!
//! What differs from a virtual library's cartridge:
//! - Capacity and early warning come from the free space: at open, the
//!   capacity in force is what the image holds plus what the filesystem
//!   has free, less a reserve ([`capacity_from_free_space`]).
//! - Every filemark is synchronous (the image is fsynced at each filemark
//!   and at every flush), so what a session wrote up to its last filemark
//!   or checkpoint survives the disk being pulled.
//! - Before each write tapir checks that the disk is still there (the
//!   block device still has a size, the image path still leads to the open
//!   file): a disk pulled or unmounted mid-write fails with
//!   [`DeviceError::Removed`] naming the disk, never with data written
//!   somewhere else.
//! - A disk without an image reads as a blank cartridge; the image is
//!   created by the first write (labelling), so reading a disk changes
//!   nothing on it.
//! - [`TapeDrive::eject`] syncs, closes the image, unmounts the filesystem
//!   and powers the disk off where the hardware allows (a SCSI/USB disk
//!   through `/sys/block/X/device/delete`; never a loop device).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::vtape::{valid_barcode, VirtualTape, BARCODE_MAX};
use super::{
    BlockRead, BlockWrite, DeviceError, DeviceResult, DriveStatus, ReadOutcome, TapeDrive,
    TapePosition, WriteOutcome,
};

/// The cartridge image at the root of a disk's filesystem.
pub const IMAGE_NAME: &str = "tapir-cartridge.vtape";
/// Where tapir mounts a disk that is not mounted yet: `MOUNT_ROOT/LABEL`.
pub const MOUNT_ROOT: &str = "/run/tapir/disks";
/// How often to look for a disk while waiting for it.
pub const POLL: Duration = Duration::from_millis(250);
/// Bytes of the free space never used: filesystem metadata for the image's
/// growth and the record framing (12 bytes a block) come out of it.
const RESERVE_MIN: u64 = 2 << 20;

/// Which disk (or disks) a `disk:` device means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSelector {
    /// Filesystem label; a trailing `*` matches every label with that prefix.
    Label(String),
    /// Filesystem UUID (compared without regard to case).
    Uuid(String),
}

impl DiskSelector {
    /// Parse what follows `disk:`: `LABEL=NAME`, `LABEL=PREFIX*`, `UUID=U`,
    /// or a bare NAME (a label).
    pub fn parse(s: &str) -> Option<DiskSelector> {
        let sel = if let Some(l) = s.strip_prefix("LABEL=") {
            DiskSelector::Label(l.to_string())
        } else if let Some(u) = s.strip_prefix("UUID=") {
            DiskSelector::Uuid(u.to_string())
        } else {
            DiskSelector::Label(s.to_string())
        };
        match &sel {
            // A bare `*` would match every labelled filesystem, the
            // system's own among them.
            DiskSelector::Label(l) => {
                let stem = l.strip_suffix('*').unwrap_or(l);
                (!stem.is_empty() && !stem.contains('*')).then_some(sel)
            }
            DiskSelector::Uuid(u) => (!u.is_empty()).then_some(sel),
        }
    }

    /// Whether `disk` is one this selector means.
    pub fn matches(&self, disk: &FoundDisk) -> bool {
        match self {
            DiskSelector::Label(pattern) => {
                disk.label
                    .as_deref()
                    .is_some_and(|l| match pattern.strip_suffix('*') {
                        Some(prefix) => l.starts_with(prefix),
                        None => l == pattern,
                    })
            }
            DiskSelector::Uuid(u) => disk
                .uuid
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(u)),
        }
    }

    /// The device name for this selector: `disk:LABEL=...`.
    pub fn spec(&self) -> String {
        match self {
            DiskSelector::Label(l) => format!("disk:LABEL={l}"),
            DiskSelector::Uuid(u) => format!("disk:UUID={u}"),
        }
    }
}

/// A filesystem `blkid` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDisk {
    /// The block device now (e.g. /dev/sdb1); it changes between plug-ins.
    pub devname: PathBuf,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub fstype: Option<String>,
}

impl FoundDisk {
    /// The disk in words: `disk OFFSITE-1 (/dev/sdb1)`.
    pub fn describe(&self) -> String {
        let who = self
            .label
            .clone()
            .or_else(|| self.uuid.as_ref().map(|u| format!("UUID={u}")))
            .unwrap_or_else(|| "without label".into());
        format!("disk {who} ({})", self.devname.display())
    }

    /// The kernel's name of the block device (`sdb1`, `loop3`).
    fn kernel_name(&self) -> String {
        self.devname
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `/sys/class/block/NAME`.
    fn sysfs(&self) -> PathBuf {
        Path::new("/sys/class/block").join(self.kernel_name())
    }

    /// Whether the block device is still there with a medium: its sysfs
    /// node exists and reports a non-zero size (a detached loop device and
    /// a card reader without a card report 0).
    pub fn present(&self) -> bool {
        size_nonzero(&self.sysfs().join("size"))
    }
}

/// Whether a sysfs `size` file exists and holds a non-zero number.
fn size_nonzero(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Parse `blkid -o export` output: blank-line separated blocks of KEY=VALUE.
pub fn parse_blkid_export(text: &str) -> Vec<FoundDisk> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut d = FoundDisk {
            devname: PathBuf::new(),
            label: None,
            uuid: None,
            fstype: None,
        };
        for line in block.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            // In export mode blkid puts a backslash before every character
            // a shell would treat specially.
            let mut v2 = String::with_capacity(v.len());
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => v2.extend(chars.next()),
                    c => v2.push(c),
                }
            }
            let v = v2;
            match k {
                "DEVNAME" => d.devname = PathBuf::from(v),
                "LABEL" => d.label = Some(v),
                "UUID" => d.uuid = Some(v),
                "TYPE" => d.fstype = Some(v),
                _ => {}
            }
        }
        if !d.devname.as_os_str().is_empty() && d.fstype.is_some() {
            out.push(d);
        }
    }
    out
}

/// Every filesystem attached now, probed afresh (`blkid -c /dev/null`:
/// no cache, since a disk plugged in a moment ago must be seen).
pub fn attached() -> DeviceResult<Vec<FoundDisk>> {
    let out = Command::new("blkid")
        .args(["-c", "/dev/null", "-o", "export"])
        .output()
        .map_err(|e| {
            DeviceError::io(
                "disk:",
                "running blkid to find the disks (install util-linux)",
                e,
            )
        })?;
    // blkid exits 2 when it finds nothing.
    if !out.status.success() && out.status.code() != Some(2) {
        return Err(DeviceError::InvalidRequest {
            device: "disk:".into(),
            detail: format!(
                "blkid failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(parse_blkid_export(&String::from_utf8_lossy(&out.stdout)))
}

/// The attached disks `sel` means, in label order.
pub fn find(sel: &DiskSelector) -> DeviceResult<Vec<FoundDisk>> {
    let mut found: Vec<FoundDisk> = attached()?.into_iter().filter(|d| sel.matches(d)).collect();
    found.sort_by(|a, b| a.label.cmp(&b.label).then(a.devname.cmp(&b.devname)));
    Ok(found)
}

/// Decode the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points of the filesystem on block device `major:minor`, from
/// mountinfo text, outermost first, each with whether it is read-only.
/// Only whole-filesystem mounts (root `/`) count: a bind mount of a
/// subdirectory does not show the image.
pub fn mounts_in(mountinfo: &str, major_minor: &str) -> Vec<(PathBuf, bool)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (f.len() > 5 && f[2] == major_minor && f[3] == "/").then(|| {
                let ro = f[5].split(',').any(|o| o == "ro");
                (unescape_mountinfo(f[4]), ro)
            })
        })
        .collect()
}

/// The mount points alone (see [`mounts_in`]).
pub fn mount_points_in(mountinfo: &str, major_minor: &str) -> Vec<PathBuf> {
    mounts_in(mountinfo, major_minor)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

fn mounts(disk: &FoundDisk) -> DeviceResult<Vec<(PathBuf, bool)>> {
    let name = disk.describe();
    let mm = std::fs::read_to_string(disk.sysfs().join("dev"))
        .map_err(|e| DeviceError::io(&name, "reading its device number from sysfs", e))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| DeviceError::io(&name, "reading /proc/self/mountinfo", e))?;
    Ok(mounts_in(&info, mm.trim()))
}

fn mount_points(disk: &FoundDisk) -> DeviceResult<Vec<PathBuf>> {
    Ok(mounts(disk)?.into_iter().map(|(p, _)| p).collect())
}

fn run(cmd: &mut Command, device: &str, what: &str) -> DeviceResult<()> {
    let out = cmd
        .output()
        .map_err(|e| DeviceError::io(device, what.to_string(), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DeviceError::InvalidRequest {
            device: device.to_string(),
            detail: format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Where the disk is mounted, mounting it read-only under [`MOUNT_ROOT`]
/// first if it is not mounted yet (so that looking at a disk changes
/// nothing on it, not even its superblock; [`remount_writable`] before the
/// first write). The flag says whether it is a read-only mount of tapir's,
/// to be remounted for writing (someone else's read-only mount is left
/// alone: the cartridge is then write-protected).
pub fn ensure_mounted(disk: &FoundDisk) -> DeviceResult<(PathBuf, bool)> {
    let found = mounts(disk)?;
    // A writable mount if there is one; else tapir's own read-only one.
    if let Some((p, _)) = found.iter().find(|(_, ro)| !ro) {
        return Ok((p.clone(), false));
    }
    if let Some((p, ro)) = found.iter().find(|(p, _)| p.starts_with(MOUNT_ROOT)) {
        return Ok((p.clone(), *ro));
    }
    if let Some((p, _)) = found.into_iter().next() {
        return Ok((p, false));
    }
    let name = disk.describe();
    let leaf = disk
        .label
        .clone()
        .filter(|l| valid_barcode(l))
        .or_else(|| disk.uuid.clone())
        .unwrap_or_else(|| disk.kernel_name());
    let dir = Path::new(MOUNT_ROOT).join(leaf);
    std::fs::create_dir_all(&dir).map_err(|e| {
        DeviceError::io(&name, format!("creating mount point {}", dir.display()), e)
    })?;
    let mut cmd = Command::new("mount");
    if let Some(t) = &disk.fstype {
        cmd.args(["-t", t]);
    }
    cmd.args(["-o", "ro,noatime"]).arg(&disk.devname).arg(&dir);
    run(
        &mut cmd,
        &name,
        &format!(
            "mounting it on {} (tapir mounts disks as root)",
            dir.display()
        ),
    )?;
    Ok((dir, true))
}

/// Remount a disk tapir mounted read-only for writing.
pub fn remount_writable(disk: &FoundDisk, at: &Path) -> DeviceResult<()> {
    run(
        Command::new("mount").args(["-o", "remount,rw"]).arg(at),
        &disk.describe(),
        &format!("remounting {} for writing", at.display()),
    )
}

/// Unmount every mount of the disk's filesystem, then power the disk off
/// where the hardware allows. Returns what was done, in words.
pub fn remove(disk: &FoundDisk) -> DeviceResult<String> {
    let name = disk.describe();
    let points = if disk.present() {
        mount_points(disk)?
    } else {
        Vec::new()
    };
    for p in points.iter().rev() {
        run(
            Command::new("umount").arg(p),
            &name,
            &format!(
                "unmounting {} (close what has files open there, then try again)",
                p.display()
            ),
        )?;
        if p.starts_with(MOUNT_ROOT) {
            let _ = std::fs::remove_dir(p);
        }
    }
    let unmounted = if points.is_empty() {
        "not mounted".to_string()
    } else {
        "unmounted".to_string()
    };
    Ok(format!("{name}: {unmounted}; {}", power_off(disk)))
}

/// Power the disk off for removal (`/sys/block/X/device/delete`, as
/// `udisksctl power-off` does for a SCSI or USB disk), when it is that
/// kind of disk and none of its partitions is mounted.
fn power_off(disk: &FoundDisk) -> String {
    let kname = disk.kernel_name();
    if kname.starts_with("loop") {
        return "a loop device: nothing to power off".into();
    }
    if !disk.present() {
        return "it is gone already".into();
    }
    // A partition's sysfs node sits inside its disk's.
    let sys = disk.sysfs();
    let whole = if sys.join("partition").exists() {
        std::fs::canonicalize(&sys)
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|q| q.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or(kname)
    } else {
        kname
    };
    let delete = Path::new("/sys/block").join(&whole).join("device/delete");
    if !delete.exists() {
        return format!("{whole} cannot be powered off by tapir; it can be unplugged now");
    }
    // No other partition of the disk may still be in use.
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let busy = std::fs::read_dir(Path::new("/sys/block").join(&whole))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
            .any(|mm| !mount_points_in(&info, mm.trim()).is_empty());
        if busy {
            return format!("another partition of {whole} is mounted: not powered off");
        }
    }
    match std::fs::write(&delete, "1") {
        Ok(()) => format!("{whole} powered off: unplug it now"),
        Err(e) => {
            format!("powering {whole} off failed ({e}); it is unmounted and can be unplugged")
        }
    }
}

/// Capacity and early-warning zone of an image holding `used` data bytes
/// on a filesystem with `free` bytes available: what is written plus the
/// free space, less a reserve of 2 MiB or 1% of the free space; the
/// early-warning zone is 2% of that, at least 1 MiB, at most a quarter.
pub fn capacity_from_free_space(used: u64, free: u64) -> (u64, u64) {
    let reserve = RESERVE_MIN.max(free / 100);
    let capacity = (used + free.saturating_sub(reserve)).max(1);
    let zone = (capacity / 50).max((1 << 20).min(capacity / 4));
    (capacity, zone)
}

fn free_bytes(dir: &Path, device: &str) -> DeviceResult<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| DeviceError::io(device, format!("statvfs {}", dir.display()), e.into()))?;
    let frsize = s.fragment_size();
    Ok((s.blocks_available() * frsize, s.blocks() * frsize))
}

/// A removable disk holding one cartridge image. See the module docs.
pub struct DiskDrive {
    name: String,
    disk: FoundDisk,
    mount: PathBuf,
    image: PathBuf,
    /// None while the disk holds no image yet (a blank cartridge) and
    /// after eject.
    tape: Option<VirtualTape>,
    /// (st_dev, st_ino) of the open image, to notice an unmount.
    identity: Option<(u64, u64)>,
    ejected: bool,
    /// Set once the disk was found gone: why.
    removed: Option<String>,
    /// tapir mounted it read-only, to be remounted at the first write.
    read_only_mount: bool,
    /// The block device's sysfs `size`: 0 or gone once the disk is pulled.
    size_file: PathBuf,
}

impl std::fmt::Debug for DiskDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskDrive")
            .field("name", &self.name)
            .field("disk", &self.disk)
            .field("image", &self.image)
            .finish()
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl DiskDrive {
    /// Open the first attached disk `sel` means (label order), skipping
    /// disks whose label is in `skip`; waits up to `timeout` for one to be
    /// plugged in, telling `on_wait` once.
    pub fn open(
        sel: &DiskSelector,
        skip: &HashSet<String>,
        timeout: Duration,
        on_wait: &mut dyn FnMut(&str),
    ) -> DeviceResult<DiskDrive> {
        let spec = sel.spec();
        let started = Instant::now();
        let mut told = false;
        loop {
            let found = find(sel)?;
            if let Some(disk) = found
                .iter()
                .find(|d| d.label.as_ref().is_none_or(|l| !skip.contains(l)))
            {
                // Two disks with one label (a cloned disk): which one is
                // meant cannot be told, so neither is used.
                let twins: Vec<String> = found
                    .iter()
                    .filter(|d| d.label.is_some() && d.label == disk.label)
                    .map(|d| d.devname.display().to_string())
                    .collect();
                if twins.len() > 1 {
                    return Err(DeviceError::InvalidRequest {
                        device: spec,
                        detail: format!(
                            "{} disks carry the filesystem label {} ({}); unplug all but the one meant, \
                             or give each its own label (e2label)",
                            twins.len(),
                            disk.label.as_deref().unwrap_or_default(),
                            twins.join(", ")
                        ),
                    });
                }
                return DiskDrive::open_found(&spec, disk.clone());
            }
            if started.elapsed() >= timeout {
                return Err(absent(&spec, sel, skip));
            }
            if !told {
                on_wait(&format!(
                    "waiting up to {} s for {} to be plugged in",
                    timeout.as_secs(),
                    what_is_wanted(sel)
                ));
                told = true;
            }
            // Waiting for a person to plug a disk in: polling is all there is.
            std::thread::sleep(POLL);
        }
    }

    /// Open `disk`, mounting it if needed.
    pub fn open_found(spec: &str, disk: FoundDisk) -> DeviceResult<DiskDrive> {
        let name = format!("{spec} ({})", disk.devname.display());
        let (mount, read_only_mount) = ensure_mounted(&disk)?;
        let size_file = disk.sysfs().join("size");
        let image = mount.join(IMAGE_NAME);
        let mut d = DiskDrive {
            name,
            disk,
            mount,
            image,
            tape: None,
            identity: None,
            ejected: false,
            removed: None,
            read_only_mount,
            size_file,
        };
        if d.image.exists() {
            d.open_image()?;
        }
        Ok(d)
    }

    /// The disk this drive has.
    pub fn disk(&self) -> &FoundDisk {
        &self.disk
    }

    /// Where its filesystem is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// The cartridge image on it.
    pub fn image(&self) -> &Path {
        &self.image
    }

    fn open_image(&mut self) -> DeviceResult<()> {
        let mut tape = VirtualTape::open(&self.image, &self.name)?;
        if let Some(label) = &self.disk.label {
            if tape.barcode() != label {
                return Err(DeviceError::InvalidRequest {
                    device: self.name.clone(),
                    detail: format!(
                        "the cartridge image on this disk has barcode {}, but the filesystem label is {label}; \
                         relabel the filesystem {} (e2label {} {})",
                        tape.barcode(),
                        tape.barcode(),
                        self.disk.devname.display(),
                        tape.barcode()
                    ),
                });
            }
        }
        let (free, _) = free_bytes(&self.mount, &self.name)?;
        let (cap, zone) = capacity_from_free_space(tape.used_bytes(), free);
        tape.limit_capacity(cap, zone);
        self.identity = file_identity(&self.image);
        self.tape = Some(tape);
        Ok(())
    }

    /// Create the image for a blank disk (at the first write).
    fn create_image(&mut self) -> DeviceResult<()> {
        let label = self
            .disk
            .label
            .clone()
            .filter(|l| valid_barcode(l))
            .ok_or_else(|| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!(
                    "a disk's filesystem label is its cartridge label, and this one's ({}) is not usable: \
                     give it 1 to {BARCODE_MAX} characters of A-Z, a-z, 0-9, '_' and '-' (e2label {} NAME)",
                    self.disk.label.as_deref().unwrap_or("none"),
                    self.disk.devname.display()
                ),
            })?;
        let (free, total) = free_bytes(&self.mount, &self.name)?;
        let (cap, zone) = capacity_from_free_space(0, total.max(free));
        VirtualTape::create(&self.image, &label, cap, zone)?;
        self.open_image()
    }

    /// Sync and close the image, unmount the disk and power it off where
    /// the hardware allows; what was done, in words.
    pub fn take_out(&mut self) -> DeviceResult<String> {
        if self.ejected {
            return Ok(format!("{}: taken out already", self.disk.describe()));
        }
        if let Some(t) = self.tape.take() {
            t.close()?;
        }
        self.ejected = true;
        remove(&self.disk)
    }

    /// Fail if the disk was pulled or unmounted since it was opened; from
    /// then on nothing more is written to it, not even a closing filemark.
    fn check_present(&mut self) -> DeviceResult<()> {
        if let Some(detail) = &self.removed {
            return Err(DeviceError::Removed {
                device: self.name.clone(),
                detail: detail.clone(),
            });
        }
        if self.ejected {
            return Err(DeviceError::NoMedium {
                device: self.name.clone(),
            });
        }
        let gone = !size_nonzero(&self.size_file)
            || (self.tape.is_some() && file_identity(&self.image) != self.identity);
        if !gone {
            return Ok(());
        }
        let at = self
            .tape
            .as_ref()
            .map(|t| {
                let p = t.position_now();
                format!(" (at tape file {}, block {})", p.file, p.block)
            })
            .unwrap_or_default();
        let detail = format!(
            "{} was removed or unmounted while tapir was writing to it{at}; nothing more was written. \
             The session on it stays restorable up to its last completed entry: plug the disk in again, \
             then append (tapir write) or restore from it",
            self.disk.describe()
        );
        if let Some(t) = self.tape.take() {
            t.abandon();
        }
        self.removed = Some(detail.clone());
        Err(DeviceError::Removed {
            device: self.name.clone(),
            detail,
        })
    }

    /// A write error that means the disk went away is reported as such;
    /// a full filesystem is the end of the medium.
    fn translate(&mut self, e: DeviceError) -> DeviceError {
        // Read-only because of someone else's read-only mount, not the
        // image's write-protect flag.
        if let (DeviceError::WriteProtected { .. }, Some(t)) = (&e, &self.tape) {
            if !t.header_write_protected() {
                return DeviceError::InvalidRequest {
                    device: self.name.clone(),
                    detail: format!(
                        "{} is mounted read-only at {}; remount it read-write \
                         (mount -o remount,rw {}) or unmount it and let tapir mount it",
                        self.disk.describe(),
                        self.mount.display(),
                        self.mount.display()
                    ),
                };
            }
        }
        if let DeviceError::Io { source, .. } = &e {
            match source.raw_os_error() {
                Some(libc::ENOSPC) => {
                    let p = self
                        .tape
                        .as_ref()
                        .map(|t| t.position_now())
                        .unwrap_or_default();
                    return DeviceError::EndOfMedium {
                        device: self.name.clone(),
                        file: p.file,
                        block: p.block,
                    };
                }
                Some(libc::EIO | libc::ENODEV | libc::ENXIO | libc::EROFS) => {
                    if let Err(gone) = self.check_present() {
                        return gone;
                    }
                }
                _ => {}
            }
        }
        e
    }

    fn tape(&mut self) -> DeviceResult<Option<&mut VirtualTape>> {
        if self.ejected {
            return Err(DeviceError::NoMedium {
                device: self.name.clone(),
            });
        }
        Ok(self.tape.as_mut())
    }

    fn writable_tape(&mut self) -> DeviceResult<&mut VirtualTape> {
        self.check_present()?;
        if self.read_only_mount {
            // Reopen the image on the writable mount, where it was.
            remount_writable(&self.disk, &self.mount)?;
            self.read_only_mount = false;
            if let Some(t) = self.tape.take() {
                let at = t.position_now();
                drop(t);
                self.open_image()?;
                if at.logical != 0 {
                    self.tape
                        .as_mut()
                        .expect("image reopened")
                        .locate(at.file, at.block)?;
                }
            }
        }
        if self.tape.is_none() {
            self.create_image()?;
        }
        Ok(self.tape.as_mut().expect("image opened"))
    }
}

fn what_is_wanted(sel: &DiskSelector) -> String {
    match sel {
        DiskSelector::Label(l) if l.ends_with('*') => format!("a disk labelled {l}"),
        DiskSelector::Label(l) => format!("disk {l}"),
        DiskSelector::Uuid(u) => format!("the disk with filesystem UUID {u}"),
    }
}

/// The error for a disk that is not attached, naming what is.
fn absent(spec: &str, sel: &DiskSelector, skip: &HashSet<String>) -> DeviceError {
    let others: Vec<String> = attached()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.label.is_some() && !d.devname.starts_with("/dev/zram"))
        .map(|d| d.describe())
        .collect();
    let used = if skip.is_empty() {
        String::new()
    } else {
        let mut s: Vec<&String> = skip.iter().collect();
        s.sort();
        format!(
            " (besides {}, already used)",
            s.into_iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    DeviceError::Absent {
        device: spec.to_string(),
        detail: format!(
            "{} is not plugged in{used}; plug it in and retry{}",
            what_is_wanted(sel),
            if others.is_empty() {
                String::new()
            } else {
                format!(" (attached now: {})", others.join(", "))
            }
        ),
    }
}

impl BlockRead for DiskDrive {
    fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<ReadOutcome> {
        match self.tape()? {
            Some(t) => t.read_block(buf),
            None => Ok(ReadOutcome::EndOfData),
        }
    }
}

impl BlockWrite for DiskDrive {
    fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome> {
        let r = self.writable_tape()?.write_block(block);
        r.map_err(|e| self.translate(e))
    }

    /// Always synchronous: the image is fsynced at every filemark.
    fn write_filemarks(&mut self, count: u32, _immediate: bool) -> DeviceResult<()> {
        let r = self.writable_tape()?.write_filemarks(count, false);
        r.map_err(|e| self.translate(e))
    }

    fn flush(&mut self) -> DeviceResult<()> {
        if self.tape.is_none() {
            return self.check_present();
        }
        self.check_present()?;
        let r = self.tape.as_mut().expect("open").flush();
        r.map_err(|e| self.translate(e))
    }
}

impl TapeDrive for DiskDrive {
    fn name(&self) -> &str {
        &self.name
    }

    fn rewind(&mut self) -> DeviceResult<()> {
        match self.tape()? {
            Some(t) => t.rewind(),
            None => Ok(()),
        }
    }

    fn space_filemarks(&mut self, count: i64) -> DeviceResult<()> {
        let name = self.name.clone();
        match self.tape()? {
            Some(t) => t.space_filemarks(count),
            None if count == 0 => Ok(()),
            None => Err(DeviceError::EndOfData {
                device: name,
                file: 0,
                block: 0,
            }),
        }
    }

    fn space_blocks(&mut self, count: i64) -> DeviceResult<()> {
        let name = self.name.clone();
        match self.tape()? {
            Some(t) => t.space_blocks(count),
            None if count == 0 => Ok(()),
            None => Err(DeviceError::EndOfData {
                device: name,
                file: 0,
                block: 0,
            }),
        }
    }

    fn seek_end_of_data(&mut self) -> DeviceResult<()> {
        match self.tape()? {
            Some(t) => t.seek_end_of_data(),
            None => Ok(()),
        }
    }

    fn position(&mut self) -> DeviceResult<TapePosition> {
        match self.tape()? {
            Some(t) => t.position(),
            None => Ok(TapePosition::default()),
        }
    }

    fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()> {
        let name = self.name.clone();
        match self.tape()? {
            Some(t) => t.locate(file, block),
            None if file == 0 && block == 0 => Ok(()),
            None => Err(DeviceError::EndOfData {
                device: name,
                file: 0,
                block: 0,
            }),
        }
    }

    fn status(&mut self) -> DeviceResult<DriveStatus> {
        let label = self.disk.label.clone();
        match self.tape()? {
            // The image's own flag says whether it is write-protected (a
            // read-only mount is tapir's until the first write, or someone
            // else's, which the first write reports as such).
            Some(t) => {
                let mut s = t.status()?;
                s.write_protected = t.header_write_protected();
                Ok(s)
            }
            None => Ok(DriveStatus {
                online: true,
                at_bot: true,
                at_eod: true,
                barcode: label,
                ..Default::default()
            }),
        }
    }

    fn max_block_size(&self) -> usize {
        super::vtape::MAX_BLOCK_SIZE
    }

    /// A disk is a file: nothing to keep streaming, so writing starts at
    /// the first block.
    fn streams(&self) -> bool {
        false
    }

    fn identity(&mut self) -> Option<super::DriveIdentity> {
        let serial = self
            .disk
            .uuid
            .clone()
            .unwrap_or_else(|| self.disk.kernel_name());
        Some(super::DriveIdentity {
            vendor: Some("tapir".into()),
            model: Some("REMOVABLE-DISK".into()),
            serial: Some(serial),
            firmware: Some(env!("CARGO_PKG_VERSION").into()),
        })
    }

    fn room_before_early_warning(&mut self) -> Option<u64> {
        match self.tape.as_mut() {
            Some(t) => t.room_before_early_warning(),
            None => free_bytes(&self.mount, &self.name).ok().map(|(free, _)| {
                let (cap, zone) = capacity_from_free_space(0, free);
                cap - zone
            }),
        }
    }

    /// Sync and close the image, unmount the disk and power it off where
    /// the hardware allows.
    fn eject(&mut self) -> DeviceResult<()> {
        let note = self.take_out()?;
        tracing::info!("{note}");
        Ok(())
    }

    fn erase(&mut self, long: bool) -> DeviceResult<()> {
        if self.tape()?.is_none() {
            return Ok(());
        }
        self.writable_tape()?.erase(long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            DiskSelector::parse("LABEL=OFF-1"),
            Some(DiskSelector::Label("OFF-1".into()))
        );
        assert_eq!(
            DiskSelector::parse("OFF-1"),
            Some(DiskSelector::Label("OFF-1".into()))
        );
        assert_eq!(
            DiskSelector::parse("UUID=abc"),
            Some(DiskSelector::Uuid("abc".into()))
        );
        assert_eq!(DiskSelector::parse(""), None);
        assert_eq!(DiskSelector::parse("LABEL="), None);
        assert_eq!(DiskSelector::parse("LABEL=a*b"), None);
        assert_eq!(DiskSelector::parse("LABEL=*"), None);
        assert_eq!(DiskSelector::parse("*"), None);
        let d = |label: &str, uuid: &str| FoundDisk {
            devname: "/dev/sdb1".into(),
            label: Some(label.into()),
            uuid: Some(uuid.into()),
            fstype: Some("ext4".into()),
        };
        let sel = DiskSelector::parse("LABEL=OFF-*").unwrap();
        assert!(sel.matches(&d("OFF-1", "u")));
        assert!(!sel.matches(&d("ON-1", "u")));
        let exact = DiskSelector::parse("OFF-1").unwrap();
        assert!(exact.matches(&d("OFF-1", "u")));
        assert!(!exact.matches(&d("OFF-12", "u")));
        assert!(DiskSelector::parse("UUID=ABC")
            .unwrap()
            .matches(&d("x", "abc")));
    }

    #[test]
    fn blkid_export_is_parsed() {
        let text =
            "DEVNAME=/dev/loop0\nLABEL=tz A\\ b\\$\nUUID=6868\nBLOCK_SIZE=1024\nTYPE=ext4\n\n\
                    DEVNAME=/dev/vda\nPTTYPE=gpt\n\nDEVNAME=/dev/sdb1\nUUID=12\nTYPE=vfat\n";
        let found = parse_blkid_export(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].label.as_deref(), Some("tz A b$"));
        assert_eq!(found[0].fstype.as_deref(), Some("ext4"));
        assert_eq!(found[1].devname, PathBuf::from("/dev/sdb1"));
        assert_eq!(found[1].label, None);
    }

    #[test]
    fn mountinfo_is_parsed() {
        let info = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 7:3 / /run/tapir/disks/my\\040disk rw - ext4 /dev/loop3 rw\n\
                    38 35 7:3 /sub /elsewhere rw - ext4 /dev/loop3 rw\n";
        assert_eq!(
            mount_points_in(info, "7:3"),
            vec![PathBuf::from("/run/tapir/disks/my disk")]
        );
        assert!(mount_points_in(info, "7:4").is_empty());
        let ro = "40 35 7:5 / /run/tapir/disks/x ro,noatime - ext4 /dev/loop5 ro\n";
        assert_eq!(
            mounts_in(ro, "7:5"),
            vec![(PathBuf::from("/run/tapir/disks/x"), true)]
        );
        assert_eq!(
            mounts_in(info, "98:0"),
            vec![(PathBuf::from("/mnt1"), false)]
        );
    }

    /// A drive on a "disk" that is a directory, with a fake sysfs size.
    fn fake_drive(dir: &Path, label: &str) -> DiskDrive {
        let size_file = dir.join("size");
        std::fs::write(&size_file, "65536\n").unwrap();
        let mount = dir.join("fs");
        std::fs::create_dir_all(&mount).unwrap();
        let disk = FoundDisk {
            devname: "/dev/fake".into(),
            label: Some(label.into()),
            uuid: Some("0000".into()),
            fstype: Some("ext4".into()),
        };
        let mut d = DiskDrive {
            name: format!("disk:LABEL={label} (/dev/fake)"),
            disk,
            image: mount.join(IMAGE_NAME),
            mount,
            tape: None,
            identity: None,
            ejected: false,
            removed: None,
            read_only_mount: false,
            size_file,
        };
        if d.image.exists() {
            d.open_image().unwrap();
        }
        d
    }

    #[test]
    fn a_blank_disk_reads_blank_and_gets_its_image_at_the_first_write() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = fake_drive(tmp.path(), "OFF-1");
        let mut buf = vec![0u8; 1024];
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
        let s = d.status().unwrap();
        assert!(s.at_bot && !s.write_protected);
        assert_eq!(s.barcode.as_deref(), Some("OFF-1"));
        assert!(!d.image.exists(), "reading created nothing");
        d.write_block(b"hello").unwrap();
        d.write_filemarks(1, true).unwrap();
        drop(d);
        let t = VirtualTape::open(tmp.path().join("fs").join(IMAGE_NAME), "x").unwrap();
        assert_eq!(t.barcode(), "OFF-1");
        assert_eq!(t.records(), 2);
        // Reopened, the capacity in force follows the free space.
        let d = fake_drive(tmp.path(), "OFF-1");
        let t = d.tape.as_ref().unwrap();
        let (free, _) = free_bytes(&d.mount, "x").unwrap();
        assert!(t.capacity() <= t.used_bytes() + free, "{}", t.capacity());
    }

    #[test]
    fn a_pulled_disk_fails_as_removed_and_nothing_more_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = fake_drive(tmp.path(), "OFF-2");
        d.write_block(&[7u8; 100]).unwrap();
        d.write_filemarks(1, true).unwrap();
        d.write_block(&[8u8; 100]).unwrap();
        // The device goes away (its sysfs size drops to 0).
        std::fs::write(tmp.path().join("size"), "0\n").unwrap();
        let e = d.write_block(&[9u8; 100]).unwrap_err();
        assert!(matches!(e, DeviceError::Removed { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("disk OFF-2 (/dev/fake) was removed"), "{msg}");
        assert!(msg.contains("at tape file 1, block 1"), "{msg}");
        assert!(msg.contains("plug the disk in again"), "{msg}");
        // Every later call says so too; dropping writes no closing filemark.
        assert!(matches!(
            d.write_filemarks(1, false),
            Err(DeviceError::Removed { .. })
        ));
        assert!(matches!(d.flush(), Err(DeviceError::Removed { .. })));
        drop(d);
        let t = VirtualTape::open(tmp.path().join("fs").join(IMAGE_NAME), "x").unwrap();
        assert_eq!(t.records(), 3, "block, filemark, block: nothing after");
    }

    #[test]
    fn an_image_moved_away_under_the_drive_is_a_removed_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = fake_drive(tmp.path(), "OFF-3");
        d.write_block(&[1u8; 10]).unwrap();
        d.write_filemarks(1, true).unwrap();
        drop(d);
        let mut d = fake_drive(tmp.path(), "OFF-3");
        // What a lazy unmount does to the path: it leads elsewhere.
        std::fs::rename(&d.image, tmp.path().join("elsewhere")).unwrap();
        assert!(matches!(
            d.write_block(&[2u8; 10]),
            Err(DeviceError::Removed { .. })
        ));
    }

    #[test]
    fn a_filesystem_label_that_is_not_a_barcode_is_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = fake_drive(tmp.path(), "my disk");
        let e = d.write_block(b"x").unwrap_err();
        assert!(e.to_string().contains("e2label /dev/fake NAME"), "{e}");
        assert!(!d.image.exists());
    }

    #[test]
    fn capacity_follows_free_space() {
        let (cap, zone) = capacity_from_free_space(0, 100 << 20);
        assert_eq!(cap, (100 << 20) - (2 << 20));
        assert_eq!(zone, (cap / 50).max(1 << 20));
        let (cap2, _) = capacity_from_free_space(50 << 20, 100 << 20);
        assert_eq!(cap2, cap + (50 << 20));
        // A full disk still has a non-zero capacity (everything written).
        assert_eq!(capacity_from_free_space(7, 0).0, 7);
        let (c, z) = capacity_from_free_space(0, 0);
        assert!(c >= 1 && z <= c);
    }
}
