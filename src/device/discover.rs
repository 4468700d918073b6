//! Finding the tape drives of this machine from sysfs, without opening them.
//!
//! Every st drive appears as `/sys/class/scsi_tape/nstN` (next to `stN` and
//! the mode variants); its `device` link leads to the SCSI device with
//! `vendor`, `model`, `rev`, the unit serial number page `vpd_pg80` and the
//! matching SCSI generic node under `scsi_generic/`. udev adds stable names
//! under `/dev/tape/by-id/` (those ending in `-nst` are non-rewinding).

use std::path::{Path, PathBuf};

/// One tape drive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriveInfo {
    /// Kernel name of the non-rewinding node, e.g. `nst0`.
    pub name: String,
    /// The device node, e.g. `/dev/nst0`.
    pub device: PathBuf,
    pub vendor: String,
    pub model: String,
    pub revision: String,
    /// Unit serial number (VPD page 0x80), when sysfs has it.
    pub serial: Option<String>,
    /// SCSI address host:channel:target:lun.
    pub hctl: Option<String>,
    /// The SCSI generic node of the same drive, e.g. `/dev/sg1`.
    pub sg: Option<PathBuf>,
    /// Links under /dev/tape/by-id that lead to this non-rewinding node.
    pub by_id: Vec<PathBuf>,
}

impl DriveInfo {
    /// The name to give `--device`: the first stable by-id link, else the node.
    pub fn preferred_path(&self) -> &Path {
        self.by_id.first().unwrap_or(&self.device)
    }
}

/// The tape drives of this machine, ordered by number.
pub fn discover() -> Vec<DriveInfo> {
    discover_in(Path::new("/sys"), Path::new("/dev"))
}

/// [`discover`] with other roots for sysfs and /dev (for tests).
pub fn discover_in(sys: &Path, dev: &Path) -> Vec<DriveInfo> {
    let class = sys.join("class/scsi_tape");
    let Ok(entries) = std::fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut drives: Vec<(u32, DriveInfo)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let number: u32 = name.strip_prefix("nst")?.parse().ok()?;
            Some((number, describe(&class.join(&name), &name, dev)))
        })
        .collect();
    drives.sort_by_key(|(n, _)| *n);
    let links = by_id_links(dev);
    drives
        .into_iter()
        .map(|(_, mut d)| {
            d.by_id = links
                .iter()
                .filter(|(_, target)| target == &d.name)
                .map(|(link, _)| link.clone())
                .collect();
            d
        })
        .collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read(path).ok()?;
    let s = String::from_utf8_lossy(&s).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The serial from a binary VPD page 0x80 (4-byte header, then ASCII).
fn vpd_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let body = &page[4..(4 + len).min(page.len())];
    let s: String = body
        .iter()
        .filter(|c| c.is_ascii_graphic() || **c == b' ')
        .map(|&c| c as char)
        .collect();
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn describe(class_entry: &Path, name: &str, dev: &Path) -> DriveInfo {
    let device = class_entry.join("device");
    let hctl = std::fs::canonicalize(&device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.split(':').count() == 4);
    let serial = std::fs::read(device.join("vpd_pg80"))
        .ok()
        .and_then(|p| vpd_serial(&p));
    let sg = std::fs::read_dir(device.join("scsi_generic"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| dev.join(e.file_name()));
    DriveInfo {
        name: name.to_string(),
        device: dev.join(name),
        vendor: read_trimmed(&device.join("vendor")).unwrap_or_default(),
        model: read_trimmed(&device.join("model")).unwrap_or_default(),
        revision: read_trimmed(&device.join("rev")).unwrap_or_default(),
        serial,
        hctl,
        sg,
        by_id: Vec::new(),
    }
}

/// (link, kernel name it resolves to) for every link in /dev/tape/by-id.
fn by_id_links(dev: &Path) -> Vec<(PathBuf, String)> {
    let dir = dev.join("tape/by-id");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut links: Vec<(PathBuf, String)> = entries
        .flatten()
        .filter_map(|e| {
            let link = e.path();
            let target = std::fs::read_link(&link).ok()?;
            let name = target.file_name()?.to_str()?.to_string();
            Some((link, name))
        })
        .collect();
    links.sort();
    links
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs and /dev tree with two drives as the kernel lays them out.
    fn fake_tree(root: &Path) -> (PathBuf, PathBuf) {
        let sys = root.join("sys");
        let dev = root.join("dev");
        let class = sys.join("class/scsi_tape");
        std::fs::create_dir_all(&class).unwrap();
        for (n, hctl, vendor, model, serial) in [
            (
                0,
                "2:0:0:0",
                "IBM     ",
                "ULT3580-TD9     ",
                Some("1013000123"),
            ),
            (1, "3:0:1:0", "Linux   ", "scsi_debug      ", None),
        ] {
            let sdev = sys.join(format!("devices/pci0000:00/host/target/{hctl}"));
            std::fs::create_dir_all(sdev.join(format!("scsi_generic/sg{}", n + 4))).unwrap();
            std::fs::write(sdev.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(sdev.join("model"), format!("{model}\n")).unwrap();
            std::fs::write(sdev.join("rev"), "Q3F5\n").unwrap();
            if let Some(s) = serial {
                let mut page = vec![0x01, 0x80, 0, s.len() as u8];
                page.extend_from_slice(s.as_bytes());
                std::fs::write(sdev.join("vpd_pg80"), page).unwrap();
            }
            for node in [
                format!("st{n}"),
                format!("nst{n}"),
                format!("nst{n}l"),
                format!("st{n}a"),
            ] {
                let entry = class.join(&node);
                std::fs::create_dir_all(&entry).unwrap();
                symlink(&sdev, entry.join("device")).unwrap();
            }
        }
        let by_id = dev.join("tape/by-id");
        std::fs::create_dir_all(&by_id).unwrap();
        symlink("../../st0", by_id.join("scsi-35000e111-0")).unwrap();
        symlink("../../nst0", by_id.join("scsi-35000e111-0-nst")).unwrap();
        symlink("../../nst1", by_id.join("scsi-Linux_scsi_debug-nst")).unwrap();
        (sys, dev)
    }

    #[test]
    fn finds_non_rewinding_drives_with_identity_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev) = fake_tree(tmp.path());
        let drives = discover_in(&sys, &dev);
        assert_eq!(drives.len(), 2);
        let d = &drives[0];
        assert_eq!(d.name, "nst0");
        assert_eq!(d.device, dev.join("nst0"));
        assert_eq!(
            (d.vendor.as_str(), d.model.as_str()),
            ("IBM", "ULT3580-TD9")
        );
        assert_eq!(d.revision, "Q3F5");
        assert_eq!(d.serial.as_deref(), Some("1013000123"));
        assert_eq!(d.hctl.as_deref(), Some("2:0:0:0"));
        assert_eq!(d.sg, Some(dev.join("sg4")));
        assert_eq!(d.by_id, vec![dev.join("tape/by-id/scsi-35000e111-0-nst")]);
        assert_eq!(
            d.preferred_path(),
            dev.join("tape/by-id/scsi-35000e111-0-nst")
        );
        let d = &drives[1];
        assert_eq!((d.name.as_str(), d.model.as_str()), ("nst1", "scsi_debug"));
        assert_eq!(d.serial, None);
        assert_eq!(d.by_id.len(), 1);
    }

    #[test]
    fn no_tape_class_means_no_drives() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(discover_in(tmp.path(), tmp.path()).is_empty());
    }

    #[test]
    fn vpd_serial_parsing() {
        assert_eq!(
            vpd_serial(&[0, 0x80, 0, 4, b'A', b'B', b' ', 0]).as_deref(),
            Some("AB")
        );
        assert_eq!(vpd_serial(&[0, 0x83, 0, 1, b'A']), None);
        assert_eq!(vpd_serial(&[0, 0x80]), None);
        assert_eq!(vpd_serial(&[0, 0x80, 0, 0]), None);
    }
}
