//! Removable disks as the cartridges of a session and of a job: the next
//! disk when one fills (an operator plugs it in), and a pool of disks as
//! the "library" a rotation job works with.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::device::disk::{self, DiskDrive, DiskSelector, FoundDisk};
use crate::device::{DeviceError, TapeDrive};

use super::joblib::JobLibrary;
use super::span::{Candidate, CartridgeSupply};
use super::{Error, Result};

/// Tells an operator what to do.
pub type Tell = Arc<dyn Fn(&str) + Send + Sync>;

/// The next disk of a session: the full one is synced, unmounted and
/// powered off, and the operator is asked to plug in another disk the
/// selector means; a disk already used by this session is never offered
/// again.
pub struct DiskSupply {
    pub selector: DiskSelector,
    /// How long to wait for the operator.
    pub timeout: Duration,
    pub tell: Tell,
    /// Labels of the disks used so far.
    used: HashSet<String>,
}

impl DiskSupply {
    pub fn new(selector: DiskSelector, timeout: Duration, tell: Tell) -> DiskSupply {
        DiskSupply {
            selector,
            timeout,
            tell,
            used: HashSet::new(),
        }
    }
}

impl CartridgeSupply for DiskSupply {
    fn next(&mut self, mut current: Box<dyn TapeDrive>) -> Result<Option<Candidate>> {
        let done = current.status().ok().and_then(|s| s.barcode);
        if let Some(l) = &done {
            self.used.insert(l.clone());
        }
        current.eject()?;
        drop(current);
        let mut used: Vec<&String> = self.used.iter().collect();
        used.sort();
        let wanted = match &self.selector {
            DiskSelector::Label(l) if l.ends_with('*') => format!("another disk labelled {l}"),
            // The device names one disk: there is no other to go on with.
            other => {
                (self.tell)(&format!(
                    "disk {} is done and unmounted; {} names that disk only, so the set cannot \
                     continue on another: name the pool's disks with a pattern \
                     (--device disk:LABEL=PREFIX*) to let it",
                    done.as_deref().unwrap_or("?"),
                    other.spec()
                ));
                return Ok(None);
            }
        };
        (self.tell)(&format!(
            "unplug disk {} (unmounted) and plug in {wanted}, an empty one not used yet (used: {}); waiting up to {} s",
            done.as_deref().unwrap_or("?"),
            used.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.timeout.as_secs()
        ));
        match DiskDrive::open(&self.selector, &self.used, self.timeout, &mut |_| {}) {
            Ok(d) => {
                let label = d.disk().label.clone();
                if let Some(l) = &label {
                    self.used.insert(l.clone());
                }
                Ok(Some((Box::new(d), label)))
            }
            Err(DeviceError::Absent { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn whereabouts(&self, _barcode: &str) -> Option<String> {
        Some("unplugged by the operator".into())
    }
}

/// A pool of removable disks, the disks a job's drive
/// `disk:LABEL=PREFIX*` means: a disk is "inside" while it is plugged in,
/// "loading" one finds it by its filesystem label, and "exporting" one
/// unmounts it and powers it off.
pub struct DiskLibrary {
    pub spec: String,
    pub selector: DiskSelector,
    /// How long to wait for an operator to plug in the next disk when a
    /// session spans.
    pub timeout: Duration,
    pub tell: Tell,
    /// The disk "loaded" (the one open_drive opens).
    loaded: Option<String>,
    /// Disks this job opened, to unmount and power off at the end.
    touched: Vec<String>,
}

impl DiskLibrary {
    pub fn new(spec: &str, timeout: Duration, tell: Tell) -> Result<DiskLibrary> {
        let selector = match crate::device::open::DeviceSpec::parse(spec)? {
            crate::device::open::DeviceSpec::Disk(sel) => sel,
            _ => {
                return Err(Error::Usage(format!(
                    "{spec}: not a disk: device (disk:LABEL=PREFIX*)"
                )))
            }
        };
        Ok(DiskLibrary {
            spec: spec.to_string(),
            selector,
            timeout,
            tell,
            loaded: None,
            touched: Vec::new(),
        })
    }

    fn attached(&self) -> Result<Vec<FoundDisk>> {
        Ok(disk::find(&self.selector)?)
    }

    fn by_label(&self, label: &str) -> Result<Option<FoundDisk>> {
        Ok(self
            .attached()?
            .into_iter()
            .find(|d| d.label.as_deref() == Some(label)))
    }
}

impl JobLibrary for DiskLibrary {
    fn name(&self) -> String {
        self.spec.clone()
    }

    fn inside(&self) -> Result<Vec<String>> {
        Ok(self
            .attached()?
            .into_iter()
            .filter_map(|d| d.label)
            .collect())
    }

    fn load(&mut self, barcode: &str) -> Result<()> {
        if self.by_label(barcode)?.is_none() {
            return Err(DeviceError::Absent {
                device: self.spec.clone(),
                detail: format!("disk {barcode} is not plugged in; plug it in and retry"),
            }
            .into());
        }
        self.loaded = Some(barcode.to_string());
        if !self.touched.iter().any(|t| t == barcode) {
            self.touched.push(barcode.to_string());
        }
        Ok(())
    }

    fn open_drive(&mut self) -> Result<Box<dyn TapeDrive>> {
        let Some(label) = self.loaded.clone() else {
            return Err(DeviceError::NoMedium {
                device: self.spec.clone(),
            }
            .into());
        };
        let Some(found) = self.by_label(&label)? else {
            return Err(DeviceError::Absent {
                device: self.spec.clone(),
                detail: format!("disk {label} is not plugged in any more; plug it in and retry"),
            }
            .into());
        };
        let spec = DiskSelector::Label(label).spec();
        Ok(Box::new(DiskDrive::open_found(&spec, found)?))
    }

    fn export(&mut self, barcode: &str) -> Result<()> {
        if let Some(found) = self.by_label(barcode)? {
            let note = disk::remove(&found)?;
            (self.tell)(&format!("{note}; take it to where the job sends it"));
        }
        self.touched.retain(|t| t != barcode);
        if self.loaded.as_deref() == Some(barcode) {
            self.loaded = None;
        }
        Ok(())
    }

    fn supply(&mut self) -> Result<Box<dyn CartridgeSupply + '_>> {
        Ok(Box::new(DiskSupply::new(
            self.selector.clone(),
            self.timeout,
            self.tell.clone(),
        )))
    }

    fn insert_words(&self, what: &str, label: Option<&str>) -> String {
        format!(
            "plug in {} (tapir finds it by its filesystem label{})",
            what.replacen("cartridge ", "disk ", 1),
            label.map_or(String::new(), |l| format!(" {l}"))
        )
    }

    fn names_strangers(&self) -> bool {
        true
    }

    fn release(&mut self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for label in std::mem::take(&mut self.touched) {
            if let Some(found) = self.by_label(&label)? {
                notes.push(disk::remove(&found)?);
            }
        }
        self.loaded = None;
        Ok(notes)
    }
}

/// The disks of a set, one after another, for `restore --whole-set`: the
/// disk in use is unmounted and the operator asked to plug in the next
/// one by its label (and where the set last saw it); tapir waits for it
/// and checks it is that volume.
pub struct DiskLoader {
    /// How long to wait for each disk.
    pub timeout: Duration,
    pub tell: Tell,
}

impl super::setrestore::VolumeLoader for DiskLoader {
    fn load(
        &mut self,
        mut current: Box<dyn TapeDrive>,
        want: &crate::format::setcat::VolumeInfo,
    ) -> Result<Box<dyn TapeDrive>> {
        current.eject()?;
        drop(current);
        let sel = DiskSelector::Label(want.label.clone());
        if disk::find(&sel)?.is_empty() {
            (self.tell)(&format!(
                "plug in disk {} (volume {} of the set{}); waiting up to {} s",
                want.label,
                want.volume_seq,
                want.location
                    .as_deref()
                    .map(|l| format!(", last known to be: {l}"))
                    .unwrap_or_default(),
                self.timeout.as_secs()
            ));
        }
        let mut drive = DiskDrive::open(&sel, &HashSet::new(), self.timeout, &mut |_| {})?;
        // The same label on another disk (a disk relabelled, or a copy) is
        // not this volume.
        match super::volume::read_label(&mut drive)? {
            super::volume::LabelState::Tapir(l) if l.volume_uuid == want.volume_uuid => {
                Ok(Box::new(drive))
            }
            other => {
                let what = match other {
                    super::volume::LabelState::Tapir(l) => format!(
                        "volume {} of pool {}",
                        crate::format::label::uuid_text(&l.volume_uuid),
                        l.pool
                    ),
                    super::volume::LabelState::Blank => "no cartridge image".into(),
                    super::volume::LabelState::Foreign(w) => w,
                };
                Err(Error::Refused(format!(
                    "{}: disk {} holds {what}, not volume {} ({}) of the set; plug in the set's own disk {}",
                    drive.name(),
                    want.label,
                    want.volume_seq,
                    crate::format::label::uuid_text(&want.volume_uuid),
                    want.label
                )))
            }
        }
    }
}
