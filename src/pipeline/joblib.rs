//! The library a scheduled job works with: a virtual library, or a SCSI
//! media changer with its st drive. `tapir run` and `restore --at` see
//! only this.

use std::collections::HashSet;
use std::time::Duration;

use crate::device::changer::{LibraryStatus, ScsiChanger};
use crate::device::library::VirtualLibrary;
use crate::device::{Changer, DeviceError, TapeDrive};

use super::span::{Candidate, CartridgeSupply, LibrarySupply};
use super::Result;

/// What a job needs of a library.
pub trait JobLibrary {
    fn name(&self) -> String;
    /// Barcodes of the cartridges inside (slots and drive).
    fn inside(&self) -> Result<Vec<String>>;
    /// Put the cartridge `barcode` into the drive.
    fn load(&mut self, barcode: &str) -> Result<()>;
    /// The drive, with the loaded cartridge.
    fn open_drive(&mut self) -> Result<Box<dyn TapeDrive>>;
    /// Take `barcode` out through the mail slot.
    fn export(&mut self, barcode: &str) -> Result<()>;
    /// The cartridges a session may continue on when one fills.
    fn supply(&mut self) -> Result<Box<dyn CartridgeSupply + '_>>;
    /// What to tell an operator to bring `what` ("cartridge L (last known
    /// at ...)", or "one of ..."), whose label is `label` when one.
    fn insert_words(&self, what: &str, label: Option<&str>) -> String {
        format!(
            "insert {what} into the library (`tapir changer import {}`)",
            label.unwrap_or("LABEL")
        )
    }
    /// Whether the operator is told about media present that the job
    /// cannot use (a removable disk plugged in by mistake).
    fn names_strangers(&self) -> bool {
        false
    }
    /// Let go of the media at the end of a job (unmount and power off
    /// removable disks); what was done, in words.
    fn release(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

impl JobLibrary for VirtualLibrary {
    fn name(&self) -> String {
        VirtualLibrary::name(self).to_string()
    }
    fn inside(&self) -> Result<Vec<String>> {
        let inv = self.inventory()?;
        Ok(inv
            .slots
            .into_iter()
            .filter_map(|(_, b)| b)
            .chain(inv.drive.map(|(b, _)| b))
            .collect())
    }
    fn load(&mut self, barcode: &str) -> Result<()> {
        Ok(self.load_barcode(barcode)?)
    }
    fn open_drive(&mut self) -> Result<Box<dyn TapeDrive>> {
        Ok(Box::new(VirtualLibrary::open_drive(self)?))
    }
    fn export(&mut self, barcode: &str) -> Result<()> {
        VirtualLibrary::export(self, barcode)?;
        Ok(())
    }
    fn supply(&mut self) -> Result<Box<dyn CartridgeSupply + '_>> {
        Ok(Box::new(LibrarySupply::new(VirtualLibrary::open(
            self.dir(),
        )?)?))
    }
}

/// A job's hold on its drive for the whole run (every copy, verify and
/// export), so two jobs never interleave on one drive or library: an
/// exclusive lock on a file named after the drive's device, which says
/// who holds it. The kernel drops the lock when the holder exits, however
/// it exits.
pub struct DriveLock {
    _file: std::fs::File,
}

/// Where the lock of the drive `device` lives: /run/lock/tapir (or the
/// temporary directory where that cannot be made).
pub fn drive_lock_path(device: &str) -> std::path::PathBuf {
    // One drive, however it is spelt: a library's directory or a device
    // node by its real path.
    let canonical = |p: &str| {
        std::fs::canonicalize(p).map_or_else(|_| p.to_string(), |c| c.display().to_string())
    };
    let device = match device.strip_prefix("vtape:") {
        Some(dir) => format!("vtape:{}", canonical(dir)),
        None if device.starts_with('/') => canonical(device),
        None => device.to_string(),
    };
    let name: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = blake3::hash(device.as_bytes()).to_hex();
    let file = format!("drive-{}-{}.lock", name.trim_matches('_'), &hash[..12]);
    let run = std::path::Path::new("/run/lock/tapir");
    if std::fs::create_dir_all(run).is_ok() {
        run.join(file)
    } else {
        std::env::temp_dir().join(file)
    }
}

impl DriveLock {
    /// Take the lock of `device` for `job`, waiting up to `wait` while
    /// another job holds it (`tell` says so once). Still held then:
    /// [`DeviceError::Busy`], naming the holder.
    pub fn acquire(
        device: &str,
        job: &str,
        wait: Duration,
        tell: &dyn Fn(&str),
    ) -> Result<DriveLock> {
        use std::io::{Read, Seek, Write};
        let path = drive_lock_path(device);
        let io = |e| super::Error::io(format!("locking drive {device} ({})", path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let since = std::time::Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let _ = file.rewind();
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another tapir job".to_string()
            } else {
                holder.to_string()
            };
            if since.elapsed() >= wait {
                return Err(DeviceError::Busy {
                    device: device.to_string(),
                    detail: format!(
                        "the drive is in use by another process ({holder}); wait for it to finish, or run the job later"
                    ),
                }
                .into());
            }
            if !told {
                tell(&format!(
                    "drive {device} is in use by {holder}; job {job} waits up to {} s for it",
                    wait.saturating_sub(since.elapsed()).as_secs()
                ));
                told = true;
            }
            // Waiting for another job to end: polling is all flock offers
            // with a deadline.
            std::thread::sleep(LOCK_POLL);
        }
        let who = format!(
            "job {job}, pid {}, since {}",
            std::process::id(),
            jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S UTC")
        );
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(who.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(io)?;
        Ok(DriveLock { _file: file })
    }
}

/// How often a job waiting for a drive looks again.
const LOCK_POLL: Duration = Duration::from_millis(250);

/// Which of the library's drives (counted from 0) the st device `device`
/// is: `given`, the only one, or the one whose serial number (sysfs) the
/// library reports for its drive (DVCID).
pub fn which_drive(given: Option<usize>, status: &LibraryStatus, device: &str) -> Result<usize> {
    if let Some(d) = given {
        if d >= status.drives.len() {
            return Err(super::Error::Usage(format!(
                "drive {d}: the library has {} drive(s), counted from 0",
                status.drives.len()
            )));
        }
        return Ok(d);
    }
    if status.drives.len() == 1 {
        return Ok(0);
    }
    let wanted = std::fs::canonicalize(device).ok();
    let serial = crate::device::discover::discover()
        .into_iter()
        .find(|d| std::fs::canonicalize(&d.device).ok() == wanted && wanted.is_some())
        .and_then(|d| d.serial);
    serial
        .and_then(|s| status.drive_with_serial(&s))
        .ok_or_else(|| {
            super::Error::Usage(format!(
                "{device}: cannot tell which of the library's {} drives it is (no matching serial number); give the drive's element (counted from 0): --drive N, or `element = N` in its [drive] table",
                status.drives.len()
            ))
        })
}

/// A SCSI media changer and the st drive it loads (its element `drive`).
pub struct ScsiLibrary {
    pub changer: ScsiChanger,
    /// The st device of the drive, e.g. /dev/nst0.
    pub device: String,
    /// How long to wait for a cartridge just loaded to become ready.
    pub wait_ready: Duration,
}

impl ScsiLibrary {
    /// Empty the drive: a real drive must unload its cartridge before the
    /// robot can take it.
    fn empty_drive(&mut self) -> Result<()> {
        if self.changer.inventory()?.drive.is_none() {
            return Ok(());
        }
        if let Ok(mut d) = crate::device::open::open_drive(&self.device) {
            if let Err(e) = d.eject() {
                tracing::info!("{}: eject before the move: {e}", self.device);
            }
        }
        Ok(self.changer.unload()?)
    }
}

impl JobLibrary for ScsiLibrary {
    fn name(&self) -> String {
        self.changer.name().to_string()
    }
    fn inside(&self) -> Result<Vec<String>> {
        let inv = self.changer.inventory()?;
        Ok(inv
            .slots
            .into_iter()
            .filter_map(|(_, b)| b.filter(|b| !b.is_empty()))
            .chain(inv.drive.map(|(b, _)| b).filter(|b| !b.is_empty()))
            .collect())
    }
    fn load(&mut self, barcode: &str) -> Result<()> {
        if self
            .changer
            .inventory()?
            .drive
            .is_some_and(|(b, _)| b == barcode)
        {
            return Ok(());
        }
        self.empty_drive()?;
        let drive = self.changer.drive();
        self.changer.load_barcode(barcode, drive)?;
        Ok(())
    }
    fn open_drive(&mut self) -> Result<Box<dyn TapeDrive>> {
        let mut quiet = |_: &str| {};
        Ok(crate::device::open::open_drive_waiting(
            &self.device,
            self.wait_ready,
            &mut quiet,
        )?)
    }
    fn export(&mut self, barcode: &str) -> Result<()> {
        if self
            .changer
            .inventory()?
            .drive
            .is_some_and(|(b, _)| b == barcode)
        {
            self.empty_drive()?;
        }
        self.changer.export(barcode)?;
        Ok(())
    }
    fn supply(&mut self) -> Result<Box<dyn CartridgeSupply + '_>> {
        let loaded = self.changer.inventory()?.drive.map(|(b, _)| b);
        Ok(Box::new(ScsiSupply {
            lib: self,
            tried: loaded.into_iter().collect(),
        }))
    }
}

/// The slots of a SCSI library, in slot order, for a session that spans.
struct ScsiSupply<'a> {
    lib: &'a mut ScsiLibrary,
    tried: HashSet<String>,
}

impl CartridgeSupply for ScsiSupply<'_> {
    fn next(&mut self, mut current: Box<dyn TapeDrive>) -> Result<Option<Candidate>> {
        if let Err(e) = current.eject() {
            tracing::info!("{}: eject before the move: {e}", self.lib.device);
        }
        drop(current);
        if self.lib.changer.inventory()?.drive.is_some() {
            self.lib.changer.unload()?;
        }
        let inv = self.lib.changer.inventory()?;
        for (slot, barcode) in inv.slots {
            let Some(barcode) = barcode.filter(|b| !b.is_empty()) else {
                continue;
            };
            if crate::media::plan::is_cleaning(&barcode) || !self.tried.insert(barcode.clone()) {
                continue;
            }
            self.lib.changer.load_slot(slot)?;
            let drive = self.lib.open_drive()?;
            return Ok(Some((drive, Some(barcode))));
        }
        Ok(None)
    }

    fn whereabouts(&self, barcode: &str) -> Option<String> {
        let inv = self.lib.changer.inventory().ok()?;
        super::span::whereabouts_in(&inv, self.lib.changer.name(), barcode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::changer::{ElementStatus, ElementType, MediumType};

    fn drive(address: u16) -> ElementStatus {
        ElementStatus {
            element_type: ElementType::DataTransfer,
            address,
            full: false,
            accessible: true,
            exception: false,
            condition: None,
            imported: false,
            import_enabled: false,
            export_enabled: false,
            source: None,
            medium_type: MediumType::Unspecified,
            barcode: None,
            identifier: None,
        }
    }

    fn library(drives: usize) -> LibraryStatus {
        LibraryStatus {
            changer: "/dev/sg9".into(),
            vendor: "TEST".into(),
            product: "LIB".into(),
            transports: Vec::new(),
            slots: Vec::new(),
            mail_slots: Vec::new(),
            drives: (0..drives as u16).map(|i| drive(0x100 + i)).collect(),
        }
    }

    #[test]
    fn the_drive_element_is_given_the_only_one_or_found_by_serial_else_asked_for() {
        assert_eq!(which_drive(None, &library(1), "/dev/nst0").unwrap(), 0);
        assert_eq!(which_drive(Some(1), &library(2), "/dev/nst0").unwrap(), 1);
        let too_far = which_drive(Some(2), &library(2), "/dev/nst0").unwrap_err();
        assert!(too_far.to_string().contains("has 2 drive(s)"), "{too_far}");
        // No serial number to match in a test machine's sysfs: ask.
        let unknown = which_drive(None, &library(2), "/dev/nst-none").unwrap_err();
        assert!(unknown.to_string().contains("element = N"), "{unknown}");
    }
}
