//! `tapir drive ...`: the drive itself, mt-like where mt has the same
//! operation. What a drive lacks (a page, a command) is reported as "not
//! supported" for that field; the command still succeeds.

use std::collections::BTreeMap;

use clap::Subcommand;

use tapir::device::library::VirtualLibrary;
use tapir::device::open::DeviceSpec;
use tapir::device::sg::{SgError, SgResult};
use tapir::device::st::StDrive;
use tapir::device::{Changer, DeviceError, TapeDrive};
use tapir::exit::ExitStatus;
use tapir::media::{CartridgeNames, IdentityMismatch};
use tapir::pipeline::qualify::{QualifyOptions, QualifyReport};
use tapir::pipeline::volume::{self, LabelState};
use tapir::pipeline::Error;

#[derive(Subcommand, Debug)]
pub enum DriveCommand {
    /// List the tape drives on this system (st devices, from sysfs).
    List,
    /// Drive and cartridge status, like `mt status`: position, flags,
    /// density, block size, compression, and who the drive is.
    Status,
    /// Rewind the cartridge.
    Rewind,
    /// Rewind and eject the cartridge (a virtual library returns it to its slot).
    Eject,
    /// Load the cartridge in the drive. A virtual library needs to be told
    /// which one (slot number or barcode).
    Load { cartridge: Option<String> },
    /// Erase the cartridge from the beginning. A short erase (the default)
    /// writes end of data at the beginning; --long overwrites the whole tape
    /// (hours). A cartridge with a label or any data is refused unless --force.
    Erase {
        #[arg(long)]
        long: bool,
        #[arg(long)]
        force: bool,
    },
    /// The drive's TapeAlert flags (LOG SENSE page 0x2E).
    Tapealert,
    /// The cartridge memory (MAM) attributes, and whether the barcode,
    /// on-tape label and cartridge-memory label agree (rewinds to read the label).
    CartridgeMemory,
    /// Check the drive, its HBA and the kernel path on a scratch cartridge
    /// (like Bacula's btape test and fill) and recommend settings.
    Qualify {
        /// Use a cartridge that holds a label or data, destroying it.
        #[arg(long)]
        force: bool,
        /// Also write until early warning (a whole cartridge: hours on a real drive).
        #[arg(long)]
        fill: bool,
        /// Bytes written and read back to measure sustained throughput (0: skip).
        #[arg(long, default_value = "64M", value_parser = super::parse_size)]
        bytes: u64,
        /// The largest block size to recommend (a rescue system's HBA may
        /// not read larger blocks).
        #[arg(long, default_value = "1M", value_parser = super::parse_size)]
        max_block_size: u64,
    },
}

pub struct Globals<'a> {
    pub device: Option<&'a str>,
    pub json: bool,
    pub wait_ready: u64,
}

fn print_json(v: &impl serde::Serialize) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("reports serialise")
    );
}

/// The drive named by `--device`, opened for a drive command.
enum Opened {
    St(Box<StDrive>),
    /// The tape in a virtual library's drive, if any, or a removable disk.
    Virtual(Option<Box<dyn TapeDrive>>),
}

fn spec(g: &Globals<'_>) -> anyhow::Result<DeviceSpec> {
    let spec = super::require_device(g.device)?;
    Ok(DeviceSpec::parse(spec).map_err(Error::from)?)
}

/// Open the drive whether or not a cartridge is loaded.
fn open_any(g: &Globals<'_>) -> anyhow::Result<Opened> {
    let name = super::require_device(g.device)?;
    Ok(match spec(g)? {
        DeviceSpec::St(path) => Opened::St(Box::new(
            StDrive::open_drive_only(&path, name).map_err(Error::from)?,
        )),
        DeviceSpec::VirtualLibrary(dir) => {
            let lib = VirtualLibrary::open(dir).map_err(Error::from)?;
            let tape = match lib.open_drive() {
                Ok(t) => Some(Box::new(t) as Box<dyn TapeDrive>),
                Err(DeviceError::NoMedium { .. }) => None,
                Err(e) => return Err(Error::from(e).into()),
            };
            Opened::Virtual(tape)
        }
        DeviceSpec::Disk(_) => Opened::Virtual(Some(super::open_device(g.device, g.wait_ready)?)),
    })
}

pub fn run(cmd: &DriveCommand, g: &Globals<'_>) -> anyhow::Result<ExitStatus> {
    match cmd {
        DriveCommand::List => {
            super::output::drives(g.json, &tapir::device::discover::discover());
            Ok(ExitStatus::Success)
        }
        DriveCommand::Status => status(g),
        DriveCommand::Rewind => {
            let mut drive = super::open_device(g.device, g.wait_ready)?;
            drive.rewind().map_err(Error::from)?;
            done(
                g,
                drive.name(),
                "rewind",
                "rewound to the beginning of tape",
            );
            Ok(ExitStatus::Success)
        }
        DriveCommand::Eject => {
            let name = super::require_device(g.device)?.to_string();
            match spec(g)? {
                DeviceSpec::St(path) => {
                    let mut d = StDrive::open_drive_only(&path, &name).map_err(Error::from)?;
                    d.unload().map_err(Error::from)?;
                    done(g, &name, "eject", "cartridge rewound and ejected");
                }
                DeviceSpec::VirtualLibrary(dir) => {
                    let mut lib = VirtualLibrary::open(dir).map_err(Error::from)?;
                    let barcode = lib.inventory().map_err(Error::from)?.drive;
                    lib.unload().map_err(Error::from)?;
                    let what = match barcode {
                        Some((b, slot)) => format!("{b} returned to slot {slot}"),
                        None => "the drive was empty".into(),
                    };
                    done(g, &name, "eject", &what);
                }
                DeviceSpec::Disk(sel) => {
                    let mut d = tapir::device::disk::DiskDrive::open(
                        &sel,
                        &Default::default(),
                        std::time::Duration::from_secs(g.wait_ready),
                        &mut |_| {},
                    )
                    .map_err(Error::from)?;
                    let note = d.take_out().map_err(Error::from)?;
                    done(
                        g,
                        &name,
                        "eject",
                        &format!("image synced and closed; {note}"),
                    );
                }
            }
            Ok(ExitStatus::Success)
        }
        DriveCommand::Load { cartridge } => {
            let name = super::require_device(g.device)?.to_string();
            match (spec(g)?, cartridge) {
                (DeviceSpec::St(path), None) => {
                    let mut d = StDrive::open_drive_only(&path, &name).map_err(Error::from)?;
                    d.load().map_err(Error::from)?;
                    done(g, &name, "load", "cartridge loaded");
                }
                (DeviceSpec::St(_), Some(_)) => {
                    return Err(Error::Usage(format!(
                        "{name}: a tape drive loads the cartridge inserted in it; \
                         give no cartridge (a changer loads one: tapir changer --changer /dev/sgN load BARCODE)"
                    ))
                    .into())
                }
                (DeviceSpec::Disk(_), _) => {
                    return Err(Error::Usage(format!(
                        "{name}: a removable disk is loaded by plugging it in; tapir finds it by its filesystem label"
                    ))
                    .into())
                }
                (DeviceSpec::VirtualLibrary(_), None) => {
                    return Err(Error::Usage(format!(
                        "{name}: name the cartridge to load: a slot number or a barcode \
                         (tapir changer status lists them)"
                    ))
                    .into())
                }
                (DeviceSpec::VirtualLibrary(dir), Some(c)) => {
                    let mut lib = VirtualLibrary::open(dir).map_err(Error::from)?;
                    match c.parse::<usize>() {
                        Ok(slot) => lib.load_slot(slot),
                        Err(_) => lib.load_barcode(c),
                    }
                    .map_err(Error::from)?;
                    let loaded = lib.inventory().map_err(Error::from)?.drive;
                    let what = match loaded {
                        Some((b, slot)) => format!("{b} loaded from slot {slot}"),
                        None => "nothing loaded".into(),
                    };
                    done(g, &name, "load", &what);
                }
            }
            Ok(ExitStatus::Success)
        }
        DriveCommand::Erase { long, force } => erase(g, *long, *force),
        DriveCommand::Tapealert => tapealert(g),
        DriveCommand::CartridgeMemory => cartridge_memory(g),
        DriveCommand::Qualify {
            force,
            fill,
            bytes,
            max_block_size,
        } => {
            let mut drive = super::open_device(g.device, g.wait_ready)?;
            let opts = QualifyOptions {
                force: *force,
                fill: *fill,
                throughput_bytes: *bytes,
                max_recommended_block: *max_block_size as usize,
            };
            let report = tapir::pipeline::qualify::qualify(drive.as_mut(), &opts)?;
            if g.json {
                print_json(&report);
            } else {
                print_qualify(&report);
            }
            Ok(if report.passed {
                ExitStatus::Success
            } else {
                ExitStatus::Warnings
            })
        }
    }
}

/// An operation done: a line for people, or `{device, operation, result}`.
fn done(g: &Globals<'_>, device: &str, operation: &str, result: &str) {
    if g.json {
        print_json(&serde_json::json!({
            "device": device,
            "operation": operation,
            "result": result,
        }));
    } else {
        outln!("{device}: {result}");
    }
}

/// Why a field has no value.
fn why_missing(e: &SgError) -> String {
    if e.is_not_supported() {
        "not supported by this drive".into()
    } else {
        e.to_string()
    }
}

/// Drive and cartridge status, as `mt status` shows it and more.
#[derive(Debug, Default, serde::Serialize)]
struct StatusReport {
    device: String,
    vendor: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    firmware: Option<String>,
    /// A cartridge is in the drive.
    loaded: bool,
    online: bool,
    barcode: Option<String>,
    write_protected: bool,
    bot: bool,
    /// Just past a filemark.
    eof: bool,
    eod: bool,
    /// Past early warning, near the end of the tape.
    early_warning: bool,
    door_open: bool,
    file: Option<u32>,
    block: Option<u64>,
    /// The drive's logical object (READ POSITION).
    logical: Option<u64>,
    density_code: Option<u8>,
    /// 0: variable-block mode.
    block_size: Option<u32>,
    compression: Option<bool>,
    worm: Option<bool>,
    cartridge_memory_label: Option<String>,
    /// The barcode and the cartridge-memory label disagree.
    identity_mismatch: Option<IdentityMismatch>,
    /// Fields without a value, and why (e.g. "not supported by this drive").
    unavailable: BTreeMap<&'static str, String>,
}

impl StatusReport {
    fn value_or_reason<T>(&mut self, field: &'static str, r: SgResult<T>) -> Option<T> {
        r.map_err(|e| self.unavailable.insert(field, why_missing(&e)))
            .ok()
    }

    fn missing(&mut self, field: &'static str, why: impl Into<String>) {
        self.unavailable.insert(field, why.into());
    }

    /// Identity, cartridge memory and the barcode comparison, from any drive.
    fn fill_from_drive(&mut self, drive: &mut dyn TapeDrive) -> anyhow::Result<()> {
        match drive.identity() {
            Some(id) => {
                self.vendor = id.vendor;
                self.model = id.model;
                self.serial = id.serial;
                self.firmware = id.firmware;
            }
            None => self.missing("identity", "the drive did not answer INQUIRY"),
        }
        if !self.loaded {
            return Ok(());
        }
        let mam = match drive.cartridge_memory() {
            Ok(m) => Some(m),
            Err(e) if e.position_lost() => return Err(Error::from(e).into()),
            Err(DeviceError::Unsupported { .. }) => {
                self.missing("cartridge_memory", "not supported by this drive");
                None
            }
            Err(e) => {
                self.missing("cartridge_memory", e.to_string());
                None
            }
        };
        let names = volume::cartridge_names(drive, None, mam.as_ref())?;
        self.cartridge_memory_label = names.mam_label.clone();
        self.barcode = names.barcode.clone();
        self.identity_mismatch = tapir::media::compare_identity(&names);
        Ok(())
    }
}

fn status(g: &Globals<'_>) -> anyhow::Result<ExitStatus> {
    let mut r = StatusReport {
        device: super::require_device(g.device)?.to_string(),
        ..Default::default()
    };
    match open_any(g)? {
        Opened::St(mut d) => {
            let st = d.st_status().map_err(Error::from)?;
            r.loaded = st.online() && !st.door_open();
            r.online = st.online();
            r.door_open = st.door_open();
            r.write_protected = st.write_protected() || d.is_write_protected();
            r.bot = st.at_bot();
            r.eof = st.at_filemark();
            r.eod = st.at_eod();
            r.early_warning = st.at_eot();
            r.file = st.file;
            r.block = st.block;
            r.density_code = Some(st.density);
            r.block_size = Some(st.block_size);
            if r.loaded {
                match d.tell() {
                    Ok(lba) => r.logical = Some(lba),
                    Err(e) => r.missing(
                        "logical",
                        format!("the drive did not report it (READ POSITION: {e})"),
                    ),
                }
                let compression = d.scsi().compression();
                r.compression = r
                    .value_or_reason("compression", compression)
                    .map(|c| c.enabled);
                let worm = d.scsi().medium_configuration();
                r.worm = r.value_or_reason("worm", worm).map(|m| m.worm);
            }
            r.fill_from_drive(d.as_mut())?;
        }
        Opened::Virtual(tape) => {
            let virtual_drive = "not supported by a virtual drive";
            for field in ["density_code", "compression", "worm"] {
                r.missing(field, virtual_drive);
            }
            r.block_size = Some(0);
            if let Some(mut t) = tape {
                let s = t.status().map_err(Error::from)?;
                r.loaded = true;
                r.online = s.online;
                r.write_protected = s.write_protected;
                r.bot = s.at_bot;
                r.eod = s.at_eod;
                r.early_warning = s.early_warning;
                r.file = Some(s.position.file);
                r.block = Some(s.position.block);
                r.logical = Some(s.position.logical);
                r.fill_from_drive(t.as_mut())?;
            } else {
                r.fill_from_drive_without_tape();
            }
        }
    }
    if let Some(m) = &r.identity_mismatch {
        eprintln!("tapir: warning: {}: {m}", r.device);
    }
    if g.json {
        print_json(&r);
    } else {
        print_status(&r);
    }
    Ok(if r.identity_mismatch.is_some() {
        ExitStatus::Warnings
    } else {
        ExitStatus::Success
    })
}

impl StatusReport {
    /// An empty virtual drive: who it is comes from the library's name.
    fn fill_from_drive_without_tape(&mut self) {
        self.vendor = Some("tapir".into());
        self.model = Some("VIRTUAL-TAPE".into());
        self.firmware = Some(env!("CARGO_PKG_VERSION").into());
        self.missing("serial", "reported only with a cartridge loaded");
    }
}

fn print_status(r: &StatusReport) {
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let unavailable = |field: &str| {
        r.unavailable
            .get(field)
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    };
    outln!(
        "drive:        {} ({} {}, serial {}, firmware {})",
        r.device,
        or_unknown(&r.vendor),
        or_unknown(&r.model),
        or_unknown(&r.serial),
        or_unknown(&r.firmware)
    );
    if !r.loaded {
        outln!(
            "cartridge:    none loaded{}",
            if r.door_open { " (door open)" } else { "" }
        );
        return;
    }
    outln!(
        "cartridge:    {}{}",
        r.barcode.as_deref().unwrap_or("barcode unknown"),
        if r.write_protected {
            " (write-protected)"
        } else {
            ""
        }
    );
    let num = |v: Option<u64>| v.map_or("unknown".to_string(), |n| n.to_string());
    outln!(
        "position:     file number {}, block number {}, logical object {}",
        num(r.file.map(u64::from)),
        num(r.block),
        r.logical
            .map_or_else(|| unavailable("logical"), |l| l.to_string())
    );
    let flags: Vec<&str> = [
        (r.bot, "BOT"),
        (r.eof, "EOF"),
        (r.eod, "EOD"),
        (r.early_warning, "EOT"),
        (r.write_protected, "WR_PROT"),
        (r.online, "ONLINE"),
        (r.door_open, "DR_OPEN"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    outln!("flags:        {}", flags.join(" "));
    outln!(
        "density:      {}",
        r.density_code
            .map_or_else(|| unavailable("density_code"), |d| format!("{d:#04x}"))
    );
    outln!(
        "block size:   {}",
        match r.block_size {
            Some(0) => "variable".to_string(),
            Some(n) => n.to_string(),
            None => unavailable("block_size"),
        }
    );
    let on_off = |v: Option<bool>, field: &str, on: &str, off: &str| match v {
        Some(true) => on.to_string(),
        Some(false) => off.to_string(),
        None => unavailable(field),
    };
    outln!(
        "compression:  {}",
        on_off(r.compression, "compression", "on", "off")
    );
    outln!("WORM:         {}", on_off(r.worm, "worm", "yes", "no"));
    outln!(
        "MAM label:    {}",
        match &r.cartridge_memory_label {
            Some(l) => l.clone(),
            None if r.unavailable.contains_key("cartridge_memory") => {
                unavailable("cartridge_memory")
            }
            None => "none".into(),
        }
    );
}

fn erase(g: &Globals<'_>, long: bool, force: bool) -> anyhow::Result<ExitStatus> {
    let mut drive = super::open_device(g.device, g.wait_ready)?;
    let held = match volume::read_label(drive.as_mut())? {
        LabelState::Blank => None,
        LabelState::Tapir(l) => Some(match &l.set {
            Some(s) => format!(
                "tapir label {} (pool {}, volume {} of set \"{}\")",
                l.label, l.pool, s.volume_seq, s.set_name
            ),
            None => format!("tapir label {} (pool {})", l.label, l.pool),
        }),
        LabelState::Foreign(what) => Some(what),
    };
    if let Some(what) = &held {
        if !force {
            return Err(Error::Refused(format!(
                "{}: the cartridge holds {what}. Erasing destroys it; give --force if that is \
                 what you want",
                drive.name()
            ))
            .into());
        }
    }
    if long && !g.json {
        eprintln!(
            "tapir: a long erase overwrites the whole tape; on a real cartridge it takes hours"
        );
    }
    drive.rewind().map_err(Error::from)?;
    drive.erase(long).map_err(Error::from)?;
    let kind = if long { "long" } else { "short" };
    if g.json {
        print_json(&serde_json::json!({
            "device": drive.name(),
            "operation": "erase",
            "long": long,
            "destroyed": held,
        }));
    } else {
        match &held {
            Some(what) => outln!("{}: erased ({kind}); it held {what}", drive.name()),
            None => outln!("{}: erased ({kind}); it was blank", drive.name()),
        }
    }
    Ok(ExitStatus::Success)
}

#[derive(serde::Serialize)]
struct AlertReport {
    device: String,
    supported: bool,
    /// Why not, when not supported.
    reason: Option<String>,
    flags: Vec<Alert>,
}

#[derive(serde::Serialize)]
struct Alert {
    flag: u16,
    name: &'static str,
}

fn tapealert(g: &Globals<'_>) -> anyhow::Result<ExitStatus> {
    let device = super::require_device(g.device)?.to_string();
    let result = match open_any(g)? {
        Opened::St(d) => d.scsi().tape_alert().map_err(|e| why_missing(&e)),
        Opened::Virtual(_) => Err("not supported by a virtual drive".to_string()),
    };
    let report = match result {
        Ok(alerts) => AlertReport {
            device,
            supported: true,
            reason: None,
            flags: alerts
                .set
                .iter()
                .map(|&flag| Alert {
                    flag,
                    name: tapir::device::sg::tape_alert_name(flag),
                })
                .collect(),
        },
        Err(reason) => AlertReport {
            device,
            supported: false,
            reason: Some(reason),
            flags: Vec::new(),
        },
    };
    if g.json {
        print_json(&report);
    } else if let Some(reason) = &report.reason {
        outln!("{}: TapeAlert: {reason}", report.device);
    } else if report.flags.is_empty() {
        outln!("{}: TapeAlert: no flags set", report.device);
    } else {
        for a in &report.flags {
            outln!("{}: TapeAlert flag {}: {}", report.device, a.flag, a.name);
        }
    }
    Ok(ExitStatus::Success)
}

#[derive(serde::Serialize)]
struct MamAttribute {
    id: String,
    name: &'static str,
    read_only: bool,
    value: String,
}

#[derive(serde::Serialize)]
struct MamReport {
    device: String,
    supported: bool,
    reason: Option<String>,
    attributes: Vec<MamAttribute>,
    names: CartridgeNames,
    identity_mismatch: Option<IdentityMismatch>,
}

fn cartridge_memory(g: &Globals<'_>) -> anyhow::Result<ExitStatus> {
    let mut drive = super::open_device(g.device, g.wait_ready)?;
    let (mam, reason) = match drive.cartridge_memory() {
        Ok(m) => (Some(m), None),
        Err(e) if e.position_lost() => return Err(Error::from(e).into()),
        Err(DeviceError::Unsupported { .. }) => (None, Some("not supported by this drive".into())),
        Err(e) => (None, Some(e.to_string())),
    };
    let tape_label = match volume::read_label(drive.as_mut())? {
        LabelState::Tapir(l) => Some(l.label),
        _ => None,
    };
    let names = volume::cartridge_names(drive.as_mut(), tape_label.as_deref(), mam.as_ref())?;
    let mismatch = tapir::media::compare_identity(&names);
    let report = MamReport {
        device: drive.name().to_string(),
        supported: mam.is_some(),
        reason,
        attributes: mam
            .iter()
            .flat_map(|m| &m.attributes)
            .map(|a| MamAttribute {
                id: format!("{:04X}h", a.id),
                name: tapir::device::sg::attribute_name(a.id),
                read_only: a.read_only,
                value: a.display_value(),
            })
            .collect(),
        names,
        identity_mismatch: mismatch,
    };
    if let Some(m) = &report.identity_mismatch {
        eprintln!("tapir: warning: {}: {m}", report.device);
    }
    if g.json {
        print_json(&report);
    } else {
        match &report.reason {
            Some(why) => outln!("{}: cartridge memory: {why}", report.device),
            None => {
                for a in &report.attributes {
                    outln!(
                        "{} {:<40} {}{}",
                        a.id,
                        a.name,
                        a.value,
                        if a.read_only { "  (read-only)" } else { "" }
                    );
                }
            }
        }
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        outln!(
            "identity: barcode {}, on-tape label {}, cartridge memory label {}: {}",
            show(&report.names.barcode),
            show(&report.names.tape_label),
            show(&report.names.mam_label),
            if report.identity_mismatch.is_some() {
                "MISMATCH"
            } else {
                "agree"
            }
        );
    }
    Ok(if report.identity_mismatch.is_some() {
        ExitStatus::Warnings
    } else {
        ExitStatus::Success
    })
}

fn print_qualify(r: &QualifyReport) {
    let id = r.identity.clone().unwrap_or_default();
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    outln!(
        "drive:          {} ({} {}, serial {}, firmware {})",
        r.device,
        or_unknown(id.vendor),
        or_unknown(id.model),
        or_unknown(id.serial),
        or_unknown(id.firmware)
    );
    let sizes: Vec<String> = r
        .block_sizes
        .iter()
        .map(|t| {
            let what = match (&t.write_error, &t.read_back) {
                (Some(e), _) => format!("write failed: {e}"),
                (None, Some(r)) => r.clone(),
                (None, None) => "not read".into(),
            };
            format!("{} KiB {what}", t.size >> 10)
        })
        .collect();
    outln!(
        "block sizes:    up to {} KiB reported; {}",
        r.max_block_reported >> 10,
        sizes.join(", ")
    );
    let kib = |v: Option<usize>| v.map_or("none".to_string(), |b| format!("{} KiB", b >> 10));
    outln!(
        "largest block:  written {}, read back intact {}",
        kib(r.largest_block_written),
        kib(r.largest_block_verified)
    );
    let passed = r.checks.iter().filter(|c| c.passed).count();
    outln!(
        "checks:         {passed} of {} passed ({} KiB blocks)",
        r.checks.len(),
        r.test_block_size >> 10
    );
    for c in r.checks.iter().filter(|c| !c.passed) {
        outln!("  FAILED {}: {}", c.name, c.detail);
    }
    let yes_no = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not tried",
    };
    let d = r.locate.drive.clone().unwrap_or_default();
    outln!(
        "locate:         {} of {} landed right; READ POSITION {}, LOCATE {}; raw landings: {} exact, {} one past, {} one short, {} elsewhere",
        r.locate.landed_right,
        r.locate.landed_right + r.locate.landed_wrong,
        yes_no(d.read_position),
        yes_no(d.locate),
        d.locate_exact,
        d.locate_one_past,
        d.locate_one_short,
        d.locate_elsewhere
    );
    if let Some(t) = &r.throughput {
        outln!(
            "throughput:     {} MiB in {} KiB blocks: write {} MB/s, read {} MB/s",
            t.bytes >> 20,
            t.block_size >> 10,
            t.write_mb_per_s,
            t.read_mb_per_s
        );
    }
    if let Some(e) = &r.early_warning {
        outln!(
            "early warning:  {} after {} MiB; {} more blocks accepted; end of medium {}; filemark after early warning {}",
            if e.reached { "reported" } else { "NOT reported" },
            e.bytes_before >> 20,
            e.blocks_after,
            if e.end_of_medium { "reached" } else { "not reached" },
            if e.filemark_after { "accepted" } else { "refused" }
        );
    }
    let rec = &r.recommendation;
    match rec.block_size {
        Some(b) => outln!(
            "recommended:    block size {} KiB (tapir label --block-size {}K)",
            b >> 10,
            b >> 10
        ),
        None => outln!("recommended:    no block size tapir can use"),
    }
    outln!("                LOCATE: {}", rec.locate);
    for n in &rec.notes {
        outln!("                note: {n}");
    }
    outln!(
        "cartridge:      {}",
        if r.erased {
            "erased (blank again)"
        } else {
            "holds the test data (the drive could not erase it; label it with --force)"
        }
    );
    outln!(
        "result:         {}",
        if r.passed { "PASSED" } else { "FAILED" }
    );
}
