//! `VirtualLibrary`: a directory of virtual tape cartridges with one drive and
//! N slots, driven like a media changer.
//!
//! Layout (normative text in docs/FORMAT.md, "Virtual tape image"):
//!
//! ```text
//! DIR/library.json              state: slots, what is in the drive
//! DIR/lock                      flock(2) target while the drive is open
//! DIR/cartridges/<BARCODE>.vtape
//! ```
//!
//! The drive is open (and `DIR/lock` held with an exclusive flock) from
//! [`VirtualLibrary::open_drive`] until the returned [`VirtualTape`] is
//! dropped. Loads and unloads take the same lock for their duration, so a
//! cartridge cannot be moved while any process, this one included, has the
//! drive open.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::drivesim::DriveSimConfig;
use super::vtape::{valid_barcode, VirtualTape, MAX_BLOCK_SIZE};
use super::{describe, Changer, ChangerInventory, DeviceError, DeviceResult};

/// Name of the state file in a library directory.
pub const LIBRARY_FILE: &str = "library.json";
/// Name of the lock file in a library directory.
pub const LOCK_FILE: &str = "lock";
/// Test faults of the changer (see `VirtualLibrary::move_fails`).
pub const LIBRARY_FAULTS_FILE: &str = "faults.json";
/// Optional speed model of the drive (see `drivesim`); absent: as fast as the disk.
pub const SPEED_MODEL_FILE: &str = "drive-sim.json";
/// Directory holding the cartridge images.
pub const CARTRIDGE_DIR: &str = "cartridges";
/// Extension of cartridge images.
pub const CARTRIDGE_EXT: &str = "vtape";
/// Value of the `format` member of library.json.
pub const LIBRARY_FORMAT: &str = "tapir-virtual-library";
/// Version of library.json this code reads and writes.
pub const LIBRARY_VERSION: u32 = 1;
/// Most slots a library can have (barcodes carry three digits).
pub const MAX_SLOTS: usize = 999;

/// Barcode of the cartridge created for 1-based `slot`: `TAP001L9`, `TAP002L9`, ...
pub fn slot_barcode(slot: usize) -> String {
    format!("TAP{slot:03}L9")
}

/// Early-warning zone given to cartridges of `capacity` bytes: 2% of the
/// capacity, but at least four maximum-size blocks (4 MiB), and never more
/// than a quarter of the capacity.
pub fn early_warning_zone_for(capacity: u64) -> u64 {
    let floor = (4 * MAX_BLOCK_SIZE as u64).min(capacity / 4);
    (capacity / 50).max(floor)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotEntry {
    slot: usize,
    barcode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveEntry {
    barcode: String,
    home_slot: usize,
}

/// The contents of library.json.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LibraryState {
    format: String,
    version: u32,
    capacity: u64,
    early_warning_zone: u64,
    slots: Vec<SlotEntry>,
    drive: Option<DriveEntry>,
    /// Cartridges taken out through the mail slot (their images stay in
    /// the directory, out of reach of the changer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exported: Vec<String>,
}

impl LibraryState {
    fn validate(&self, device: &str) -> DeviceResult<()> {
        let bad = |detail: String| DeviceError::InvalidRequest {
            device: device.to_string(),
            detail: format!("{LIBRARY_FILE} is invalid: {detail}"),
        };
        if self.format != LIBRARY_FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {LIBRARY_FORMAT:?}",
                self.format
            )));
        }
        if self.version != LIBRARY_VERSION {
            return Err(DeviceError::Unsupported {
                device: device.to_string(),
                what: format!(
                    "virtual library version {} (this tapir reads version {LIBRARY_VERSION}; use a newer tapir)",
                    self.version
                ),
            });
        }
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return Err(bad(format!(
                "it lists {} slots; a library has 1 to {MAX_SLOTS}",
                self.slots.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.slot != i + 1 {
                return Err(bad(format!(
                    "entry {} is slot {}; slots must be listed as 1, 2, 3, ...",
                    i + 1,
                    s.slot
                )));
            }
            if let Some(b) = &s.barcode {
                if !valid_barcode(b) || !seen.insert(b.clone()) {
                    return Err(bad(format!(
                        "slot {} holds an invalid or duplicate barcode {b:?}",
                        s.slot
                    )));
                }
            }
        }
        for b in &self.exported {
            if !valid_barcode(b) || !seen.insert(b.clone()) {
                return Err(bad(format!(
                    "exported cartridge {b:?} is invalid or also inside"
                )));
            }
        }
        if let Some(d) = &self.drive {
            if !valid_barcode(&d.barcode) || !seen.insert(d.barcode.clone()) {
                return Err(bad(format!(
                    "the drive holds an invalid or duplicate barcode {:?}",
                    d.barcode
                )));
            }
            match self.slots.get(d.home_slot.wrapping_sub(1)) {
                Some(s) if s.barcode.is_none() => {}
                _ => {
                    return Err(bad(format!(
                        "the drive's cartridge {} has home slot {}, which is not an empty slot",
                        d.barcode, d.home_slot
                    )))
                }
            }
        }
        Ok(())
    }

    fn inventory(&self) -> ChangerInventory {
        ChangerInventory {
            slots: self
                .slots
                .iter()
                .map(|s| (s.slot, s.barcode.clone()))
                .collect(),
            drive: self
                .drive
                .as_ref()
                .map(|d| (d.barcode.clone(), d.home_slot)),
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A virtual tape library in a directory. See the module docs.
#[derive(Debug)]
pub struct VirtualLibrary {
    dir: PathBuf,
    name: String,
    state: LibraryState,
}

impl VirtualLibrary {
    /// Create a library in `dir` (created if missing; if it exists it must be
    /// an empty directory) with `slots` cartridges of `capacity` data bytes
    /// each. The first cartridge starts loaded in the drive.
    pub fn create(
        dir: impl AsRef<Path>,
        slots: usize,
        capacity: u64,
    ) -> DeviceResult<VirtualLibrary> {
        let dir = dir.as_ref().to_path_buf();
        let name = describe(&dir);
        let invalid = |detail: String| DeviceError::InvalidRequest {
            device: name.clone(),
            detail,
        };
        if slots == 0 || slots > MAX_SLOTS {
            return Err(invalid(format!(
                "a virtual library has 1 to {MAX_SLOTS} slots, not {slots}"
            )));
        }
        if capacity == 0 {
            return Err(invalid("cartridge capacity must be at least 1 byte".into()));
        }
        match std::fs::read_dir(&dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(invalid(format!(
                        "{} exists and is not empty; create a library in a new or empty directory",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| DeviceError::io(&name, "creating the library directory", e))?;
            }
            Err(e) => return Err(DeviceError::io(&name, "reading the library directory", e)),
        }
        let cart_dir = dir.join(CARTRIDGE_DIR);
        std::fs::create_dir(&cart_dir)
            .map_err(|e| DeviceError::io(&name, "creating the cartridges directory", e))?;
        let ew = early_warning_zone_for(capacity);
        for slot in 1..=slots {
            let barcode = slot_barcode(slot);
            VirtualTape::create(
                cart_dir.join(format!("{barcode}.{CARTRIDGE_EXT}")),
                &barcode,
                capacity,
                ew,
            )?;
        }
        sync_dir(&cart_dir)
            .map_err(|e| DeviceError::io(&name, "syncing the cartridges directory", e))?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| DeviceError::io(&name, "creating the lock file", e))?;
        let state = LibraryState {
            format: LIBRARY_FORMAT.to_string(),
            version: LIBRARY_VERSION,
            capacity,
            early_warning_zone: ew,
            slots: (1..=slots)
                .map(|slot| SlotEntry {
                    slot,
                    barcode: (slot != 1).then(|| slot_barcode(slot)),
                })
                .collect(),
            drive: Some(DriveEntry {
                barcode: slot_barcode(1),
                home_slot: 1,
            }),
            exported: Vec::new(),
        };
        let lib = VirtualLibrary { dir, name, state };
        lib.save(&lib.state)?;
        Ok(lib)
    }

    /// Open the library in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> DeviceResult<VirtualLibrary> {
        let dir = dir.as_ref().to_path_buf();
        let name = describe(&dir);
        let state = Self::load(&dir, &name)?;
        Ok(VirtualLibrary { dir, name, state })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `vtape:DIR`, the name the drive reports in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn slot_count(&self) -> usize {
        self.state.slots.len()
    }

    /// Where the image of the cartridge with this barcode lives.
    pub fn cartridge_path(&self, barcode: &str) -> PathBuf {
        self.dir
            .join(CARTRIDGE_DIR)
            .join(format!("{barcode}.{CARTRIDGE_EXT}"))
    }

    /// Load the cartridge with `barcode` (unloading the drive first if it
    /// holds another one). Loading the cartridge already in the drive is a no-op.
    pub fn load_barcode(&mut self, barcode: &str) -> DeviceResult<()> {
        let _lock = self.lock()?;
        let mut state = Self::load(&self.dir, &self.name)?;
        if state.drive.as_ref().is_some_and(|d| d.barcode == barcode) {
            self.state = state;
            return Ok(());
        }
        let slot = state
            .slots
            .iter()
            .find(|s| s.barcode.as_deref() == Some(barcode))
            .map(|s| s.slot)
            .ok_or_else(|| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("no cartridge with barcode {barcode:?} in this library"),
            })?;
        self.move_to_drive(&mut state, slot)?;
        self.save(&state)?;
        self.state = state;
        Ok(())
    }

    /// Take the cartridge `barcode` out of the library through the mail
    /// slot (from the drive, it is unloaded first). Returns the slot it
    /// left empty.
    pub fn export(&mut self, barcode: &str) -> DeviceResult<usize> {
        if self.inventory()?.drive.is_some_and(|(b, _)| b == barcode) {
            self.unload()?;
        }
        let _lock = self.lock()?;
        let mut state = Self::load(&self.dir, &self.name)?;
        let slot = state
            .slots
            .iter_mut()
            .find(|s| s.barcode.as_deref() == Some(barcode))
            .ok_or_else(|| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("no cartridge with barcode {barcode:?} in this library to export"),
            })?;
        slot.barcode = None;
        let n = slot.slot;
        state.exported.push(barcode.to_string());
        self.save(&state)?;
        self.state = state;
        Ok(n)
    }

    /// Put an exported cartridge back, into the first empty slot.
    pub fn import(&mut self, barcode: &str) -> DeviceResult<usize> {
        let _lock = self.lock()?;
        let mut state = Self::load(&self.dir, &self.name)?;
        let Some(i) = state.exported.iter().position(|b| b == barcode) else {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("{barcode:?} is not a cartridge exported from this library"),
            });
        };
        let drive_home = state.drive.as_ref().map(|d| d.home_slot);
        let slot = state
            .slots
            .iter_mut()
            .find(|s| s.barcode.is_none() && Some(s.slot) != drive_home)
            .ok_or_else(|| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: "every slot is full; export a cartridge first".into(),
            })?;
        slot.barcode = Some(state.exported.remove(i));
        let n = slot.slot;
        self.save(&state)?;
        self.state = state;
        Ok(n)
    }

    /// Move the cartridge in slot `from` to the empty slot `to`.
    pub fn transfer(&mut self, from: usize, to: usize) -> DeviceResult<()> {
        let _lock = self.lock()?;
        let mut state = Self::load(&self.dir, &self.name)?;
        let count = state.slots.len();
        let invalid = |detail: String| DeviceError::InvalidRequest {
            device: self.name.clone(),
            detail,
        };
        for slot in [from, to] {
            if slot == 0 || slot > count {
                return Err(invalid(format!(
                    "there is no slot {slot}; this library has slots 1 to {count}"
                )));
            }
        }
        let Some(barcode) = state.slots[from - 1].barcode.take() else {
            return Err(invalid(format!("slot {from} is empty; nothing to move")));
        };
        let home_of_drive = state.drive.as_ref().is_some_and(|d| d.home_slot == to);
        if state.slots[to - 1].barcode.is_some() || home_of_drive {
            return Err(invalid(format!(
                "slot {to} is taken (by a cartridge, or as the home of the drive's); choose an empty slot"
            )));
        }
        state.slots[to - 1].barcode = Some(barcode);
        self.save(&state)?;
        self.state = state;
        Ok(())
    }

    /// Cartridges exported from the library, in the order they left.
    pub fn exported(&self) -> DeviceResult<Vec<String>> {
        Ok(Self::load(&self.dir, &self.name)?.exported)
    }

    /// Open the drive with its cartridge. Fails with `NoMedium` if the drive
    /// is empty, and with `InvalidRequest` if another process (or another
    /// handle in this one) has the drive open. The drive stays reserved
    /// until the returned tape is dropped.
    pub fn open_drive(&self) -> DeviceResult<VirtualTape> {
        let lock = self.lock()?;
        let state = Self::load(&self.dir, &self.name)?;
        let drive = state.drive.ok_or_else(|| DeviceError::NoMedium {
            device: self.name.clone(),
        })?;
        let mut tape = VirtualTape::open(self.cartridge_path(&drive.barcode), &self.name)?;
        if tape.barcode() != drive.barcode {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!(
                    "cartridge image {} has barcode {} in its header, the library expects {}",
                    self.cartridge_path(&drive.barcode).display(),
                    tape.barcode(),
                    drive.barcode
                ),
            });
        }
        if let Some(cfg) = self.speed_model()? {
            tape.set_speed_model(cfg);
        }
        tape.attach_lock(lock);
        Ok(tape)
    }

    /// The drive's speed model (`drive-sim.json`), if one is set.
    pub fn speed_model(&self) -> DeviceResult<Option<DriveSimConfig>> {
        let path = self.dir.join(SPEED_MODEL_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| DeviceError::InvalidRequest {
                        device: self.name.clone(),
                        detail: format!("{}: {e}", path.display()),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DeviceError::io(
                &self.name,
                format!("reading {}", path.display()),
                e,
            )),
        }
    }

    /// Make the drive emulate a real drive's speed (`None`: as fast as the disk).
    pub fn set_speed_model(&self, cfg: Option<DriveSimConfig>) -> DeviceResult<()> {
        let path = self.dir.join(SPEED_MODEL_FILE);
        let io = |e| DeviceError::io(&self.name, format!("writing {}", path.display()), e);
        match cfg {
            Some(c) => std::fs::write(&path, serde_json::to_vec_pretty(&c).expect("serialises"))
                .map_err(io),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            },
        }
    }

    // ---- internals ----

    fn lock(&self) -> DeviceResult<Flock<File>> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DeviceError::io(&self.name, format!("opening {}", path.display()), e))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                DeviceError::Busy {
                    device: self.name.clone(),
                    detail: format!(
                        "the drive is in use by another process (it holds the lock on {}); wait for it to finish and retry",
                        path.display()
                    ),
                }
            } else {
                DeviceError::io(
                    &self.name,
                    format!("locking {}", path.display()),
                    io::Error::from(errno),
                )
            }
        })
    }

    fn load(dir: &Path, name: &str) -> DeviceResult<LibraryState> {
        let path = dir.join(LIBRARY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DeviceError::InvalidRequest {
                    device: name.to_string(),
                    detail: format!(
                        "{} is not a virtual tape library ({} is missing); create one first",
                        dir.display(),
                        path.display()
                    ),
                })
            }
            Err(e) => {
                return Err(DeviceError::io(
                    name,
                    format!("reading {}", path.display()),
                    e,
                ))
            }
        };
        let state: LibraryState =
            serde_json::from_slice(&bytes).map_err(|e| DeviceError::InvalidRequest {
                device: name.to_string(),
                detail: format!("{} is invalid: {e}", path.display()),
            })?;
        state.validate(name)?;
        Ok(state)
    }

    /// Write library.json atomically: temp file, fsync, rename, fsync dir.
    fn save(&self, state: &LibraryState) -> DeviceResult<()> {
        let path = self.dir.join(LIBRARY_FILE);
        let tmp = self.dir.join(format!("{LIBRARY_FILE}.tmp"));
        let mut text = serde_json::to_vec_pretty(state).expect("library state serializes");
        text.push(b'\n');
        let result = (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        })();
        result.map_err(|e| DeviceError::io(&self.name, format!("writing {}", path.display()), e))
    }

    /// Move the cartridge in `slot` into the drive, returning the drive's
    /// current cartridge to its home slot first.
    /// Test fault: `faults.json` in the library's directory may list
    /// barcodes whose moves fail (`{"fail_move_of": ["TAP002L9"]}`).
    fn move_fails(&self, barcode: &str) -> DeviceResult<bool> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct LibraryFaults {
            fail_move_of: Vec<String>,
        }
        let path = self.dir.join(LIBRARY_FAULTS_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(DeviceError::io(
                    &self.name,
                    "reading the library's faults",
                    e,
                ))
            }
        };
        let f: LibraryFaults =
            serde_json::from_slice(&text).map_err(|e| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("{}: {e}", path.display()),
            })?;
        Ok(f.fail_move_of.iter().any(|b| b == barcode))
    }

    fn move_to_drive(&self, state: &mut LibraryState, slot: usize) -> DeviceResult<()> {
        let count = state.slots.len();
        if slot == 0 || slot > count {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("there is no slot {slot}; this library has slots 1 to {count}"),
            });
        }
        let Some(barcode) = state.slots[slot - 1].barcode.clone() else {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("slot {slot} is empty; nothing to load"),
            });
        };
        if self.move_fails(&barcode)? {
            return Err(DeviceError::MoveFailed {
                device: self.name.clone(),
                barcode,
                from: format!("slot {slot}"),
                detail: "the picker jammed (injected fault)".into(),
            });
        }
        if let Some(current) = state.drive.take() {
            state.slots[current.home_slot - 1].barcode = Some(current.barcode);
        }
        state.slots[slot - 1].barcode = None;
        state.drive = Some(DriveEntry {
            barcode,
            home_slot: slot,
        });
        Ok(())
    }
}

impl Changer for VirtualLibrary {
    /// The library's state as it is on disk now.
    fn inventory(&self) -> DeviceResult<ChangerInventory> {
        Ok(Self::load(&self.dir, &self.name)?.inventory())
    }

    /// Load the cartridge in `slot`. If the drive holds the cartridge whose
    /// home is `slot`, it is already loaded: nothing happens.
    fn load_slot(&mut self, slot: usize) -> DeviceResult<()> {
        let _lock = self.lock()?;
        let mut state = Self::load(&self.dir, &self.name)?;
        if state.drive.as_ref().is_some_and(|d| d.home_slot == slot) {
            self.state = state;
            return Ok(());
        }
        self.move_to_drive(&mut state, slot)?;
        self.save(&state)?;
        self.state = state;
        Ok(())
    }

    fn unload(&mut self) -> DeviceResult<()> {
        let _lock = self.lock()?;
        let mut state = Self::load(&self.dir, &self.name)?;
        let Some(current) = state.drive.take() else {
            return Err(DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: "the drive is empty; nothing to unload".into(),
            });
        };
        state.slots[current.home_slot - 1].barcode = Some(current.barcode);
        self.save(&state)?;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{BlockRead, BlockWrite, ReadOutcome, TapeDrive};

    const MIB: u64 = 1 << 20;

    fn inv(lib: &VirtualLibrary) -> ChangerInventory {
        lib.inventory().unwrap()
    }

    #[test]
    fn create_lays_out_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lib");
        let lib = VirtualLibrary::create(&dir, 3, 64 * MIB).unwrap();
        assert_eq!(lib.name(), format!("vtape:{}", dir.display()));
        assert_eq!(lib.slot_count(), 3);
        for b in ["TAP001L9", "TAP002L9", "TAP003L9"] {
            let p = dir.join("cartridges").join(format!("{b}.vtape"));
            assert_eq!(lib.cartridge_path(b), p);
            let t = VirtualTape::open(&p, "t").unwrap();
            assert_eq!(t.barcode(), b);
            assert_eq!(t.capacity(), 64 * MIB);
            assert_eq!(t.early_warning_zone(), 4 * MIB);
        }
        assert!(dir.join("lock").is_file());
        assert!(!dir.join("library.json.tmp").exists());
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("library.json")).unwrap()).unwrap();
        assert_eq!(json["format"], "tapir-virtual-library");
        assert_eq!(json["version"], 1);
        assert_eq!(json["capacity"], 64 * MIB);
        assert_eq!(json["slots"][0]["barcode"], serde_json::Value::Null);
        assert_eq!(json["slots"][1]["barcode"], "TAP002L9");
        assert_eq!(json["drive"]["barcode"], "TAP001L9");
        assert_eq!(json["drive"]["home_slot"], 1);
        assert_eq!(
            inv(&lib),
            ChangerInventory {
                slots: vec![
                    (1, None),
                    (2, Some("TAP002L9".into())),
                    (3, Some("TAP003L9".into()))
                ],
                drive: Some(("TAP001L9".into(), 1)),
            }
        );
    }

    #[test]
    fn export_takes_a_cartridge_out_and_import_puts_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lib = VirtualLibrary::create(tmp.path().join("l"), 3, 64 * MIB).unwrap();
        // From the drive: unloaded first, its home slot left empty.
        assert_eq!(lib.export("TAP001L9").unwrap(), 1);
        assert_eq!(lib.export("TAP003L9").unwrap(), 3);
        assert_eq!(lib.exported().unwrap(), vec!["TAP001L9", "TAP003L9"]);
        assert_eq!(
            inv(&lib),
            ChangerInventory {
                slots: vec![(1, None), (2, Some("TAP002L9".into())), (3, None)],
                drive: None,
            }
        );
        assert!(
            lib.load_barcode("TAP003L9").is_err(),
            "out of the changer's reach"
        );
        assert!(lib.export("TAP003L9").is_err());
        assert_eq!(lib.import("TAP003L9").unwrap(), 1);
        assert!(lib.import("TAP003L9").is_err());
        lib.load_barcode("TAP003L9").unwrap();
        // The slot the loaded cartridge came from stays its own.
        assert_eq!(lib.import("TAP001L9").unwrap(), 3);
        let again = VirtualLibrary::open(tmp.path().join("l")).unwrap();
        assert!(again.exported().unwrap().is_empty());
    }

    #[test]
    fn transfer_moves_between_slots_only_into_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lib = VirtualLibrary::create(tmp.path().join("l"), 3, 64 * MIB).unwrap();
        lib.export("TAP003L9").unwrap();
        lib.transfer(2, 3).unwrap();
        assert_eq!(
            inv(&lib),
            ChangerInventory {
                slots: vec![(1, None), (2, None), (3, Some("TAP002L9".into()))],
                drive: Some(("TAP001L9".into(), 1)),
            }
        );
        let err = lib.transfer(3, 1).unwrap_err().to_string();
        assert!(err.contains("slot 1 is taken"), "{err}");
        assert!(lib
            .transfer(2, 3)
            .unwrap_err()
            .to_string()
            .contains("slot 2 is empty"));
        assert!(lib
            .transfer(3, 4)
            .unwrap_err()
            .to_string()
            .contains("no slot 4"));
        // A refused move changes nothing.
        assert_eq!(inv(&lib).slots[2], (3, Some("TAP002L9".into())));
    }

    #[test]
    fn create_refuses_non_empty_dir_and_bad_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("x"), b"x").unwrap();
        assert!(matches!(
            VirtualLibrary::create(tmp.path(), 2, MIB),
            Err(DeviceError::InvalidRequest { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(VirtualLibrary::create(empty.path(), 0, MIB).is_err());
        assert!(VirtualLibrary::create(empty.path(), 1000, MIB).is_err());
        assert!(VirtualLibrary::create(empty.path(), 1, 0).is_err());
        // An existing empty directory is fine.
        VirtualLibrary::create(empty.path(), 1, MIB).unwrap();
        assert!(VirtualLibrary::open(tmp.path()).is_err(), "not a library");
    }

    #[test]
    fn early_warning_zone_rule() {
        assert_eq!(early_warning_zone_for(1000 * MIB), 20 * MIB);
        assert_eq!(early_warning_zone_for(64 * MIB), 4 * MIB);
        assert_eq!(early_warning_zone_for(8 * MIB), 2 * MIB);
        assert_eq!(early_warning_zone_for(100), 25);
        assert_eq!(early_warning_zone_for(1), 0);
    }

    #[test]
    fn load_and_unload_by_slot_and_barcode() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lib = VirtualLibrary::create(tmp.path(), 3, MIB).unwrap();
        lib.load_slot(3).unwrap();
        assert_eq!(
            inv(&lib),
            ChangerInventory {
                slots: vec![
                    (1, Some("TAP001L9".into())),
                    (2, Some("TAP002L9".into())),
                    (3, None)
                ],
                drive: Some(("TAP003L9".into(), 3)),
            }
        );
        // Loading the slot whose cartridge is in the drive is a no-op.
        lib.load_slot(3).unwrap();
        assert_eq!(inv(&lib).drive, Some(("TAP003L9".into(), 3)));
        lib.load_barcode("TAP002L9").unwrap();
        assert_eq!(inv(&lib).drive, Some(("TAP002L9".into(), 2)));
        assert_eq!(inv(&lib).slots[2], (3, Some("TAP003L9".into())));
        lib.load_barcode("TAP002L9").unwrap();
        assert!(matches!(
            lib.load_barcode("TAP009L9"),
            Err(DeviceError::InvalidRequest { .. })
        ));
        lib.unload().unwrap();
        let i = inv(&lib);
        assert_eq!(i.drive, None);
        assert!(i.slots.iter().all(|(_, b)| b.is_some()));
        let e = lib.unload().unwrap_err();
        assert!(e.to_string().contains("drive is empty"), "{e}");
        // State survives reopening.
        lib.load_slot(1).unwrap();
        let reopened = VirtualLibrary::open(tmp.path()).unwrap();
        assert_eq!(inv(&reopened).drive, Some(("TAP001L9".into(), 1)));
        // The drive opens the right cartridge.
        let tape = reopened.open_drive().unwrap();
        assert_eq!(tape.barcode(), "TAP001L9");
        assert_eq!(tape.name(), reopened.name());
    }

    #[test]
    fn empty_and_missing_slots() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lib = VirtualLibrary::create(tmp.path(), 3, MIB).unwrap();
        let e = lib.load_slot(4).unwrap_err();
        assert!(e.to_string().contains("no slot 4"), "{e}");
        let e = lib.load_slot(0).unwrap_err();
        assert!(e.to_string().contains("no slot 0"), "{e}");
        // A slot with no cartridge (one taken out of the library by hand):
        // only the drive cartridge's home slot is empty after create, so
        // remove the cartridge of slot 2 from library.json.
        let path = tmp.path().join(LIBRARY_FILE);
        let mut state: LibraryState =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state.slots[1].barcode = None;
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        let e = lib.load_slot(2).unwrap_err();
        assert!(
            matches!(&e, DeviceError::InvalidRequest { detail, .. } if detail.contains("slot 2 is empty")),
            "{e}"
        );
        assert_eq!(inv(&lib).drive, Some(("TAP001L9".into(), 1)), "unchanged");
        lib.load_slot(3).unwrap();
        assert_eq!(
            inv(&lib).slots,
            vec![(1, Some("TAP001L9".into())), (2, None), (3, None)]
        );
    }

    #[test]
    fn open_drive_without_cartridge_is_no_medium() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lib = VirtualLibrary::create(tmp.path(), 1, MIB).unwrap();
        lib.unload().unwrap();
        assert!(matches!(
            lib.open_drive(),
            Err(DeviceError::NoMedium { .. })
        ));
        lib.load_slot(1).unwrap();
        lib.open_drive().unwrap();
    }

    #[test]
    fn drive_lock_conflicts_until_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lib = VirtualLibrary::create(tmp.path(), 2, MIB).unwrap();
        let other = VirtualLibrary::open(tmp.path()).unwrap();
        let mut tape = lib.open_drive().unwrap();
        let e = other.open_drive().unwrap_err();
        assert!(
            matches!(&e, DeviceError::Busy { detail, .. } if detail.contains("in use by another process")),
            "{e}"
        );
        // Cartridges cannot be moved while the drive is open.
        let e = lib.load_slot(2).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(lib.unload().is_err());
        assert_eq!(inv(&lib).drive, Some(("TAP001L9".into(), 1)));
        tape.write_block(b"hello").unwrap();
        tape.write_filemarks(1, false).unwrap();
        drop(tape);
        // Released on drop.
        let mut again = other.open_drive().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(again.read_block(&mut buf).unwrap(), ReadOutcome::Block(5));
        drop(again);
        lib.load_slot(2).unwrap();
    }

    #[test]
    fn damaged_library_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        VirtualLibrary::create(tmp.path(), 2, MIB).unwrap();
        let path = tmp.path().join(LIBRARY_FILE);
        let good = std::fs::read_to_string(&path).unwrap();
        // Duplicate barcode.
        std::fs::write(&path, good.replace("TAP002L9", "TAP001L9")).unwrap();
        assert!(VirtualLibrary::open(tmp.path()).is_err());
        // Unknown version.
        std::fs::write(&path, good.replace("\"version\": 1", "\"version\": 2")).unwrap();
        assert!(matches!(
            VirtualLibrary::open(tmp.path()),
            Err(DeviceError::Unsupported { .. })
        ));
        // Path-like barcode.
        std::fs::write(&path, good.replace("TAP002L9", "../../x")).unwrap();
        assert!(VirtualLibrary::open(tmp.path()).is_err());
        std::fs::write(&path, &good).unwrap();
        VirtualLibrary::open(tmp.path()).unwrap();
    }
}
