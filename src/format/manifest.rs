//! The system manifest (FORMAT.md §7.6): what a bare-metal restore needs to
//! rebuild the machine before restoring its files. It travels as the
//! content of an ordinary `File` entry at [`SYSTEM_MANIFEST_PATH`], as
//! UTF-8 JSON, so any version-1 reader lists and restores it.
//!
//! Structured fields are for programs; every command's output and every
//! file read is also kept verbatim, because the runbook feeds some of them
//! straight back to the tools (`sfdisk < dump`, `vgcfgrestore -f`).

use serde::{Deserialize, Serialize};

/// Archive path of the manifest entry; `.tapir/` at the top of a session
/// is reserved for tapir's own entries.
pub const SYSTEM_MANIFEST_PATH: &[u8] = b".tapir/system-manifest.json";

/// Value of [`SystemManifest::tapir_system_manifest`] this code writes;
/// readers accept any version and ignore fields they do not know.
pub const SYSTEM_MANIFEST_VERSION: u32 = 1;

/// Largest manifest a reader loads (FORMAT.md §10.1 spirit: bounded
/// before allocating); real ones are tens of KiB.
pub const SYSTEM_MANIFEST_MAX_BYTES: u64 = 64 << 20;

/// Everything recorded about the machine that wrote a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemManifest {
    /// Identifies the JSON as a tapir system manifest, and its version.
    pub tapir_system_manifest: u32,
    /// When it was gathered, RFC 3339 UTC.
    pub created: String,
    /// `tapir <version>` that gathered it.
    pub written_by: String,
    pub hostname: String,
    pub kernel: Kernel,
    pub boot: Boot,
    /// Whole disks from /sys/block (loop, ram, zram, dm, md and optical
    /// devices left out), each with its partition table.
    pub disks: Vec<Disk>,
    /// Every block device `blkid` knows (or udev's /dev/disk links name,
    /// without blkid), with its identifiers.
    pub block_devices: BlockDevices,
    /// Mounted filesystems backed by block devices, from
    /// /proc/self/mountinfo, with UUID and label where known.
    pub filesystems: Vec<Filesystem>,
    pub fstab: FileCapture,
    pub crypttab: FileCapture,
    /// /proc/swaps: active swap areas.
    pub swaps: FileCapture,
    pub lvm: Lvm,
    pub raid: Raid,
    /// LUKS headers of every `crypto_LUKS` device.
    pub luks: Vec<Luks>,
}

impl SystemManifest {
    /// Decode a manifest, checking that it is one.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("tapir_system_manifest").is_none() {
            return Err(
                "JSON without the `tapir_system_manifest` key: not a system manifest".into(),
            );
        }
        serde_json::from_value(value).map_err(|e| format!("not a system manifest: {e}"))
    }

    /// Encode as pretty JSON (what is stored on the medium).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    /// `uname -m`.
    pub machine: String,
    /// /proc/cmdline: the root= and other boot parameters.
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// Booted through UEFI (/sys/firmware/efi exists).
    Uefi,
    /// Booted through a legacy BIOS (or firmware Linux does not report).
    Bios,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    pub firmware: Firmware,
    /// Boot loaders whose files were found: `grub`, `systemd-boot`,
    /// `syslinux`, `efistub` (kernels on the EFI system partition).
    pub loaders: Vec<String>,
    /// Directories under the EFI system partition's `EFI/` (vendor names).
    pub efi_directories: Vec<String>,
    /// `efibootmgr -v` on UEFI machines: the firmware's boot entries.
    pub efibootmgr: Option<Captured>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    /// Device path, e.g. `/dev/sda`.
    pub path: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    /// `sfdisk --dump`: feed it back to `sfdisk` to recreate the table.
    pub partition_table: Captured,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevices {
    /// `blkid -o export`.
    pub blkid: Captured,
    pub devices: Vec<BlockDevice>,
}

/// One device as `blkid -o export` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    pub devname: String,
    /// Filesystem, swap or container type (`ext4`, `swap`, `crypto_LUKS`,
    /// `LVM2_member`, `linux_raid_member`, ...).
    pub fstype: Option<String>,
    pub uuid: Option<String>,
    pub uuid_sub: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    pub partlabel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    pub mount_point: String,
    /// What was mounted, e.g. `/dev/sda2` or `/dev/mapper/vg-root`.
    pub source: String,
    pub fstype: String,
    /// Per-mount options (mountinfo field 6).
    pub mount_options: String,
    /// Superblock options (mountinfo's last field).
    pub super_options: String,
    /// `major:minor` of the device (mountinfo field 3).
    pub device_number: String,
    /// Root of the mount within its filesystem (a btrfs subvolume, a bind mount).
    pub root: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lvm {
    /// `lvm fullreport --reportformat json`.
    pub fullreport: Captured,
    /// `vgcfgbackup` of each volume group: input for `vgcfgrestore -f`.
    pub vg_backups: Vec<NamedText>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raid {
    pub mdstat: FileCapture,
    /// `mdadm --detail --scan`: ARRAY lines for mdadm.conf.
    pub mdadm_scan: Captured,
    pub mdadm_conf: FileCapture,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Luks {
    pub device: String,
    pub uuid: Option<String>,
    /// `cryptsetup luksDump`: the header's layout (no key material).
    pub dump: Captured,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedText {
    pub name: String,
    pub text: String,
}

/// How running a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureStatus {
    /// It ran and exited 0.
    Ok,
    /// The program is not installed: nothing to record, not an error.
    NotAvailable,
    /// It ran and failed (non-zero exit, timeout, signal); see `stderr`.
    Failed,
}

/// One command and its output, verbatim (bytes that are not UTF-8 are
/// replaced by U+FFFD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    pub command: Vec<String>,
    pub status: CaptureStatus,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    /// A command that was not run because its program is missing.
    pub fn not_available(command: Vec<String>) -> Self {
        Captured {
            command,
            status: CaptureStatus::NotAvailable,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// A file read verbatim, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCapture {
    pub path: String,
    /// None when the file does not exist or could not be read.
    pub content: Option<String>,
    /// Why it could not be read (absent: it does not exist, or it was read).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_json_is_not_taken_for_a_manifest() {
        assert!(SystemManifest::from_json(b"{\"hostname\": \"x\"}")
            .unwrap_err()
            .contains("not a system manifest"));
        assert!(SystemManifest::from_json(b"\x00\x01").is_err());
    }
}
