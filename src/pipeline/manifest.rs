//! Gathering the system manifest (FORMAT.md §7.6) from the running system,
//! and reading it back from a cartridge.
//!
//! Gathering runs the system's own tools (sfdisk, blkid, lvm, mdadm,
//! cryptsetup, efibootmgr). A tool that is missing is recorded as not
//! available and one that fails is recorded with its error output: the
//! manifest is best effort and never fails the write it belongs to.

use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::device::TapeDrive;
use crate::format::manifest::{
    BlockDevice, BlockDevices, Boot, CaptureStatus, Captured, Disk, FileCapture, Filesystem,
    Firmware, Kernel, Luks, Lvm, NamedText, Raid, SystemManifest, SYSTEM_MANIFEST_MAX_BYTES,
    SYSTEM_MANIFEST_PATH, SYSTEM_MANIFEST_VERSION,
};
use crate::format::meta::{Entry, EntryKind, StreamPosition, Timestamp};

use super::assemble::{read_session_data_from, EntryOutcome, EntryVisitor};
use super::list::list_cartridge;
use super::source::{SourceEntry, WalkItem};
use super::{Error, Result};

/// A command that has not finished by then is killed and recorded as failed
/// (an LVM lock or a hung device must not hold up the backup).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where tools live, besides `PATH` (a non-root `PATH` often lacks sbin).
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Block devices that are not disks to partition: loop and RAM disks,
/// device-mapper and md devices (rebuilt from the LVM, LUKS and RAID
/// sections), optical drives.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"];

/// Gather the manifest of the running system.
pub fn gather() -> SystemManifest {
    let blkid = run(&["blkid", "-o", "export"]);
    let devices = if blkid.status == CaptureStatus::NotAvailable {
        devices_from_dev_disk(Path::new("/dev/disk"))
    } else {
        parse_blkid_export(&blkid.stdout)
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let filesystems = filesystems(&mountinfo, &devices);
    let disks = disks_in(Path::new("/sys/block"))
        .into_iter()
        .map(|(name, size_bytes, model)| {
            let path = format!("/dev/{name}");
            Disk {
                partition_table: run(&["sfdisk", "--dump", &path]),
                name,
                path,
                size_bytes,
                model,
            }
        })
        .collect();
    let luks = devices
        .iter()
        .filter(|d| d.fstype.as_deref() == Some("crypto_LUKS"))
        .map(|d| Luks {
            device: d.devname.clone(),
            uuid: d.uuid.clone(),
            dump: run(&["cryptsetup", "luksDump", &d.devname]),
        })
        .collect();
    let boot = detect_boot(Path::new("/"));
    let boot = Boot {
        efibootmgr: (boot.firmware == Firmware::Uefi).then(|| run(&["efibootmgr", "-v"])),
        ..boot
    };
    SystemManifest {
        tapir_system_manifest: SYSTEM_MANIFEST_VERSION,
        created: jiff::Timestamp::now().to_string(),
        written_by: format!("tapir {}", env!("CARGO_PKG_VERSION")),
        hostname: super::volume::hostname(),
        kernel: Kernel {
            release: proc_text("/proc/sys/kernel/osrelease"),
            version: proc_text("/proc/sys/kernel/version"),
            machine: std::env::consts::ARCH.to_string(),
            cmdline: std::fs::read_to_string("/proc/cmdline")
                .ok()
                .map(|s| s.trim_end().to_string()),
        },
        boot,
        disks,
        block_devices: BlockDevices { blkid, devices },
        filesystems,
        fstab: read_file("/etc/fstab"),
        crypttab: read_file("/etc/crypttab"),
        swaps: read_file("/proc/swaps"),
        lvm: Lvm {
            fullreport: run(&["lvm", "fullreport", "--reportformat", "json"]),
            vg_backups: vg_backups(),
        },
        raid: Raid {
            mdstat: read_file("/proc/mdstat"),
            mdadm_scan: run(&["mdadm", "--detail", "--scan"]),
            mdadm_conf: read_file("/etc/mdadm/mdadm.conf"),
        },
        luks,
    }
}

/// Gather the manifest and make it the session's first entry, at the
/// reserved path, its content in an unnamed temporary file.
pub fn manifest_entry() -> Result<SourceEntry> {
    let json = gather().to_json();
    let mut file = tempfile::tempfile().map_err(|e| Error::io("system manifest", e))?;
    file.write_all(&json)
        .and_then(|()| file.rewind())
        .map_err(|e| Error::io("system manifest", e))?;
    let now = Timestamp::now();
    let mut entry = Entry::new(SYSTEM_MANIFEST_PATH, EntryKind::File);
    // It names disks, devices and mount options: root's to read.
    entry.mode = 0o600;
    entry.user = Some("root".into());
    entry.group = Some("root".into());
    entry.mtime = now;
    entry.atime = now;
    entry.ctime = now;
    entry.size = json.len() as u64;
    Ok(SourceEntry {
        abs_path: PathBuf::from("(system manifest)"),
        entry,
        file: Some(file),
        inode: None,
    })
}

/// The walk with the manifest (when there is one) first. An object of
/// the walk at the reserved path is left out, with a warning: the path
/// names tapir's manifest in this session.
pub fn manifest_first(
    manifest: Option<SourceEntry>,
    walk: impl Iterator<Item = WalkItem>,
) -> impl Iterator<Item = WalkItem> {
    let reserved = manifest.is_some();
    manifest
        .map(WalkItem::Entry)
        .into_iter()
        .chain(walk.map(move |item| match item {
            WalkItem::Entry(e) if reserved && e.entry.path == SYSTEM_MANIFEST_PATH => {
                WalkItem::Warning {
                    path: e.abs_path,
                    message: format!(
                        "not archived: {} is reserved for the system manifest in a session written with it",
                        String::from_utf8_lossy(SYSTEM_MANIFEST_PATH)
                    ),
                }
            }
            other => other,
        }))
}

fn proc_text(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

fn read_file(path: &str) -> FileCapture {
    match std::fs::read(path) {
        Ok(bytes) => FileCapture {
            path: path.into(),
            content: Some(String::from_utf8_lossy(&bytes).into_owned()),
            error: None,
        },
        Err(e) => FileCapture {
            path: path.into(),
            content: None,
            error: (e.kind() != io::ErrorKind::NotFound).then(|| e.to_string()),
        },
    }
}

/// The program's path, from `PATH` and the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run a command with the timeout, capturing its output verbatim.
fn run(argv: &[&str]) -> Captured {
    run_within(argv, COMMAND_TIMEOUT)
}

fn run_within(argv: &[&str], timeout: Duration) -> Captured {
    let command: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let Some(program) = find_program(argv[0]) else {
        return Captured::not_available(command);
    };
    let failed = |stderr: String| Captured {
        command: command.clone(),
        status: CaptureStatus::Failed,
        exit_code: None,
        stdout: String::new(),
        stderr,
    };
    let child = Command::new(program)
        .args(&argv[1..])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run: {e}")),
    };
    // Both pipes are drained while the command runs, so a chatty command
    // never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("killed after {} ms", timeout.as_millis()));
            }
            // Polling is the timeout itself: std has no wait with a deadline.
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    match status {
        Ok(s) => Captured {
            command,
            status: if s.success() {
                CaptureStatus::Ok
            } else {
                CaptureStatus::Failed
            },
            exit_code: s.code(),
            stdout: text(out),
            stderr: text(err),
        },
        // The readers are left behind: something the command started may
        // still hold its pipes open.
        Err(why) => failed(why),
    }
}

/// `vgcfgbackup` of every volume group, into a private temporary directory.
fn vg_backups() -> Vec<NamedText> {
    if find_program("vgcfgbackup").is_none() {
        return Vec::new();
    }
    let Ok(dir) = tempfile::tempdir() else {
        return Vec::new();
    };
    let pattern = dir.path().join("%s");
    let captured = run(&["vgcfgbackup", "-f", &pattern.to_string_lossy()]);
    if captured.status != CaptureStatus::Ok {
        return Vec::new();
    }
    let mut out: Vec<NamedText> = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            let text = std::fs::read_to_string(d.path()).ok()?;
            Some(NamedText {
                name: d.file_name().to_string_lossy().into_owned(),
                text,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Devices from `blkid -o export`: `KEY=value` lines, a blank line between devices.
pub fn parse_blkid_export(text: &str) -> Vec<BlockDevice> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let fields: HashMap<&str, &str> = block.lines().filter_map(|l| l.split_once('=')).collect();
        let Some(devname) = fields.get("DEVNAME") else {
            continue;
        };
        let get = |k: &str| fields.get(k).map(|v| v.to_string());
        out.push(BlockDevice {
            devname: devname.to_string(),
            fstype: get("TYPE"),
            uuid: get("UUID"),
            uuid_sub: get("UUID_SUB"),
            label: get("LABEL"),
            partuuid: get("PARTUUID"),
            partlabel: get("PARTLABEL"),
        });
    }
    out
}

/// Without blkid: UUIDs, labels and partition UUIDs from udev's symlinks
/// under `dev_disk` (normally /dev/disk/by-uuid, by-label, ...). udev
/// escapes some bytes in link names (`\x20` for a space); they are kept
/// as they are.
pub fn devices_from_dev_disk(dev_disk: &Path) -> Vec<BlockDevice> {
    let mut by_dev: std::collections::BTreeMap<String, BlockDevice> = Default::default();
    for (dir, field) in [
        ("by-uuid", 0),
        ("by-label", 1),
        ("by-partuuid", 2),
        ("by-partlabel", 3),
    ] {
        for link in std::fs::read_dir(dev_disk.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = std::fs::canonicalize(link.path()) else {
                continue;
            };
            let devname = target.to_string_lossy().into_owned();
            let value = Some(link.file_name().to_string_lossy().into_owned());
            let d = by_dev
                .entry(devname.clone())
                .or_insert_with(|| BlockDevice {
                    devname,
                    fstype: None,
                    uuid: None,
                    uuid_sub: None,
                    label: None,
                    partuuid: None,
                    partlabel: None,
                });
            match field {
                0 => d.uuid = value,
                1 => d.label = value,
                2 => d.partuuid = value,
                _ => d.partlabel = value,
            }
        }
    }
    by_dev.into_values().collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts of block-device filesystems from /proc/self/mountinfo, with the
/// UUID and label of their device when `blkid` described it.
pub fn filesystems(mountinfo: &str, devices: &[BlockDevice]) -> Vec<Filesystem> {
    let by_number: HashMap<String, &BlockDevice> = devices
        .iter()
        .filter_map(|d| {
            let rdev = std::fs::metadata(&d.devname).ok()?.rdev();
            let number = format!(
                "{}:{}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            );
            Some((number, d))
        })
        .collect();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = before.split(' ').collect();
        let a: Vec<&str> = after.split(' ').collect();
        if f.len() < 6 || a.len() < 3 {
            continue;
        }
        let source = unescape_mountinfo(a[1]);
        // Only filesystems on block devices need rebuilding; btrfs
        // subvolumes and ZFS datasets report other sources.
        if !source.starts_with("/dev/") && !matches!(a[0], "btrfs" | "zfs") {
            continue;
        }
        let dev = by_number
            .get(f[2])
            .copied()
            .or_else(|| devices.iter().find(|d| d.devname == source));
        out.push(Filesystem {
            mount_point: unescape_mountinfo(f[4]),
            source,
            fstype: a[0].to_string(),
            mount_options: f[5].to_string(),
            super_options: a[2].to_string(),
            device_number: f[2].to_string(),
            root: unescape_mountinfo(f[3]),
            uuid: dev.and_then(|d| d.uuid.clone()),
            label: dev.and_then(|d| d.label.clone()),
        });
    }
    out
}

/// Whole disks under `sys_block` (normally /sys/block): name, size in
/// bytes, model.
pub fn disks_in(sys_block: &Path) -> Vec<(String, u64, Option<String>)> {
    let mut out: Vec<_> = std::fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            let name = d.file_name().to_string_lossy().into_owned();
            if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let dir = d.path();
            // /sys/block/*/size counts 512-byte sectors whatever the disk's own.
            let sectors: u64 = std::fs::read_to_string(dir.join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let model = std::fs::read_to_string(dir.join("device/model"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            Some((name, sectors * 512, model))
        })
        .collect();
    out.sort();
    out
}

/// Firmware and boot loaders, from the files under `root`.
pub fn detect_boot(root: &Path) -> Boot {
    let has = |p: &str| root.join(p).exists();
    let firmware = if has("sys/firmware/efi") {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    // EFI system partitions mount at /boot/efi, /efi or /boot.
    let esp_efi = ["boot/efi/EFI", "efi/EFI", "boot/EFI"]
        .into_iter()
        .map(|p| root.join(p))
        .find(|p| p.is_dir());
    let mut efi_directories: Vec<String> = esp_efi
        .as_ref()
        .and_then(|p| std::fs::read_dir(p).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.path().is_dir())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    efi_directories.sort();
    let efi_has = |name: &str| efi_directories.iter().any(|d| d.eq_ignore_ascii_case(name));
    let mut loaders = Vec::new();
    if has("boot/grub")
        || has("boot/grub2")
        || efi_has("debian") && has("boot/efi/EFI/debian/grubx64.efi")
    {
        loaders.push("grub".to_string());
    }
    if efi_has("systemd") || has("boot/loader/entries") || has("efi/loader/entries") {
        loaders.push("systemd-boot".to_string());
    }
    if has("boot/extlinux") || has("boot/syslinux") {
        loaders.push("syslinux".to_string());
    }
    if efi_has("Linux") {
        loaders.push("efistub".to_string());
    }
    Boot {
        firmware,
        loaders,
        efi_directories,
        efibootmgr: None,
    }
}

/// Where the manifest was found on a cartridge.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundManifest {
    pub cartridge: String,
    pub session: u32,
    pub manifest: SystemManifest,
}

/// The newest system manifest on the loaded cartridge (or the one of
/// session `only`), read through the cartridge's own catalogs.
pub fn read_from_cartridge(drive: &mut dyn TapeDrive, only: Option<u32>) -> Result<FoundManifest> {
    let listing = list_cartridge(drive, only)?;
    let set_uuid = listing.map.label.set_uuid();
    let cartridge = listing.map.label.label.clone();
    let newest = listing.sessions.iter().rev().find_map(|s| {
        s.entries
            .iter()
            .find(|e| e.path == SYSTEM_MANIFEST_PATH)
            .map(|e| (s, e.position, e.size))
    });
    let Some((s, position, size)) = newest else {
        return Err(Error::Usage(format!(
            "{}: cartridge {cartridge} holds no system manifest{} (write one with `tapir write --system`)",
            drive.name(),
            only.map(|n| format!(" in session {n}")).unwrap_or_default()
        )));
    };
    if size > SYSTEM_MANIFEST_MAX_BYTES {
        return Err(Error::Refused(format!(
            "session {}: the system manifest claims {size} bytes, more than the {SYSTEM_MANIFEST_MAX_BYTES} a manifest may have",
            s.session.number
        )));
    }

    struct Collect {
        content: Vec<u8>,
        outcome: Option<EntryOutcome>,
    }
    impl EntryVisitor for Collect {
        fn entry(&mut self, e: &Entry, _: StreamPosition) -> Result<bool> {
            Ok(e.path == SYSTEM_MANIFEST_PATH)
        }
        fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
            // The Entry record's size is not the catalog's, which was checked.
            let end = offset.saturating_add(bytes.len() as u64);
            if end > SYSTEM_MANIFEST_MAX_BYTES {
                return Err(Error::Refused(format!(
                    "the system manifest's content goes past {SYSTEM_MANIFEST_MAX_BYTES} bytes"
                )));
            }
            let end = end as usize;
            if self.content.len() < end {
                self.content.resize(end, 0);
            }
            self.content[offset as usize..end].copy_from_slice(bytes);
            Ok(())
        }
        fn entry_end(&mut self, outcome: EntryOutcome) -> Result<()> {
            self.outcome = Some(outcome);
            Ok(())
        }
        fn keep_reading(&self) -> bool {
            self.outcome.is_none()
        }
    }
    let mut collect = Collect {
        content: Vec::new(),
        outcome: None,
    };
    let data_file = s.session.data_file;
    // A scanned session has positions too: seek straight to the entry.
    drive.locate(data_file, position.block)?;
    read_session_data_from(
        drive,
        set_uuid,
        data_file,
        s.session.number,
        Some(position),
        &mut collect,
    )?;
    let what = format!(
        "{}: session {}, system manifest",
        drive.name(),
        s.session.number
    );
    match collect.outcome {
        Some(EntryOutcome::Complete { .. }) => {}
        Some(other) => return Err(Error::Refused(format!("{what}: not intact: {other:?}"))),
        None => {
            return Err(Error::Refused(format!(
                "{what}: its records were not found"
            )))
        }
    }
    collect.content.resize(size as usize, 0);
    let manifest = SystemManifest::from_json(&collect.content)
        .map_err(|e| Error::Refused(format!("{what}: {e}")))?;
    Ok(FoundManifest {
        cartridge,
        session: s.session.number,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_is_parsed_per_device() {
        let text =
            "DEVNAME=/dev/vda1\nUUID=1111-2222\nBLOCK_SIZE=512\nTYPE=vfat\nPARTUUID=aa-01\n\n\
                    DEVNAME=/dev/vda2\nLABEL=root fs\nUUID=3333\nTYPE=ext4\n\n\
                    UUID=orphan\n";
        let d = parse_blkid_export(text);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].fstype.as_deref(), Some("vfat"));
        assert_eq!(d[0].partuuid.as_deref(), Some("aa-01"));
        assert_eq!(d[1].label.as_deref(), Some("root fs"));
        assert_eq!(d[1].uuid.as_deref(), Some("3333"));
    }

    #[test]
    fn without_blkid_udev_links_give_uuids_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sda2");
        std::fs::write(&dev, b"").unwrap();
        for (sub, name) in [
            ("by-uuid", "3333-aaaa"),
            ("by-label", "root"),
            ("by-partuuid", "aa-02"),
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::os::unix::fs::symlink(&dev, dir.path().join(sub).join(name)).unwrap();
        }
        let d = devices_from_dev_disk(dir.path());
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].devname,
            std::fs::canonicalize(&dev).unwrap().to_string_lossy()
        );
        assert_eq!(
            (
                d[0].uuid.as_deref(),
                d[0].label.as_deref(),
                d[0].partuuid.as_deref()
            ),
            (Some("3333-aaaa"), Some("root"), Some("aa-02"))
        );
        assert!(devices_from_dev_disk(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn mountinfo_keeps_block_filesystems_and_unescapes() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda2 rw,errors=remount-ro\n\
                    30 27 254:3 /home /srv/my\\040data rw,nosuid master:2 - btrfs /dev/vdb rw,space_cache\n\
                    31 27 0:40 / /tmp rw - tmpfs tmpfs rw\n";
        let devices = vec![BlockDevice {
            devname: "/dev/vda2".into(),
            fstype: Some("ext4".into()),
            uuid: Some("3333".into()),
            uuid_sub: None,
            label: Some("root".into()),
            partuuid: None,
            partlabel: None,
        }];
        let fs = filesystems(info, &devices);
        assert_eq!(fs.len(), 2);
        assert_eq!(fs[0].mount_point, "/");
        assert_eq!(fs[0].uuid.as_deref(), Some("3333"));
        assert_eq!(fs[0].super_options, "rw,errors=remount-ro");
        assert_eq!(fs[1].mount_point, "/srv/my data");
        assert_eq!(fs[1].root, "/home");
        assert_eq!(fs[1].mount_options, "rw,nosuid");
        assert_eq!(fs[1].uuid, None);
    }

    #[test]
    fn disks_skip_loop_ram_and_mapper_devices() {
        let dir = tempfile::tempdir().unwrap();
        for (name, sectors) in [
            ("sda", "2048"),
            ("loop0", "8"),
            ("zram0", "8"),
            ("dm-0", "8"),
            ("nvme0n1", "4"),
        ] {
            std::fs::create_dir_all(dir.path().join(name).join("device")).unwrap();
            std::fs::write(dir.path().join(name).join("size"), format!("{sectors}\n")).unwrap();
        }
        std::fs::write(dir.path().join("sda/device/model"), "QEMU HARDDISK   \n").unwrap();
        let disks = disks_in(dir.path());
        assert_eq!(
            disks,
            vec![
                ("nvme0n1".to_string(), 2048, None),
                (
                    "sda".to_string(),
                    1024 * 1024,
                    Some("QEMU HARDDISK".to_string())
                ),
            ]
        );
    }

    #[test]
    fn boot_loaders_are_told_by_their_files() {
        let root = tempfile::tempdir().unwrap();
        let bios = detect_boot(root.path());
        assert_eq!(bios.firmware, Firmware::Bios);
        assert!(bios.loaders.is_empty());
        for d in [
            "sys/firmware/efi",
            "boot/grub",
            "boot/efi/EFI/debian",
            "boot/efi/EFI/systemd",
        ] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let uefi = detect_boot(root.path());
        assert_eq!(uefi.firmware, Firmware::Uefi);
        assert_eq!(uefi.loaders, ["grub", "systemd-boot"]);
        assert_eq!(uefi.efi_directories, ["debian", "systemd"]);
    }

    #[test]
    fn missing_tools_are_recorded_not_fatal() {
        let c = run(&["tapir-no-such-tool-here", "--dump"]);
        assert_eq!(c.status, CaptureStatus::NotAvailable);
        let c = run(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(c.status, CaptureStatus::Failed);
        assert_eq!(c.exit_code, Some(3));
        assert_eq!((c.stdout.as_str(), c.stderr.as_str()), ("out\n", "err\n"));
        let started = Instant::now();
        let c = run_within(&["sleep", "30"], Duration::from_millis(100));
        assert_eq!(c.status, CaptureStatus::Failed);
        assert!(c.stderr.contains("killed after 100 ms"), "{}", c.stderr);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn gathered_manifest_round_trips_through_json() {
        let m = gather();
        assert_eq!(m.tapir_system_manifest, SYSTEM_MANIFEST_VERSION);
        assert_eq!(m.hostname, super::super::volume::hostname());
        assert!(!m.kernel.release.is_empty());
        assert_eq!(SystemManifest::from_json(&m.to_json()).unwrap(), m);
    }
}
