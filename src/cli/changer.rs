//! `tapir changer ...` and `tapir label --barcodes`, on a virtual library
//! (`vtape:DIR`) or a SCSI media changer (`/dev/sgN`).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use tapir::catalog::location::{Location, LocationKind};
use tapir::device::changer::{ElementStatus, LibraryStatus, MediumType, ScsiChanger};
use tapir::device::library::VirtualLibrary;
use tapir::device::{Changer, ChangerInventory, TapeDrive};
use tapir::exit::ExitStatus;
use tapir::pipeline::rescue::KitChoice;
use tapir::pipeline::volume::{self, LabelState, Labelled};
use tapir::pipeline::Error;

use super::Cli;

#[derive(clap::Args, Debug)]
pub struct ChangerArgs {
    /// The changer: /dev/sgN (a SCSI media changer) or vtape:DIR. Default:
    /// the configuration's changer of --device, else --device itself when
    /// it is vtape:DIR.
    #[arg(long, global = true, env = "TAPIR_CHANGER", value_name = "DEV")]
    pub changer: Option<String>,
    #[command(subcommand)]
    pub command: ChangerCommand,
}

#[derive(Subcommand, Debug)]
pub enum ChangerCommand {
    /// Show slots, drives and mail slots.
    Status,
    /// Have the library check every element and read every barcode
    /// (INITIALIZE ELEMENT STATUS), then show them.
    Inventory,
    /// Load a cartridge by slot number or barcode.
    Load {
        slot_or_barcode: String,
        /// SCSI changer: the drive, counted from 0.
        #[arg(long)]
        drive: Option<usize>,
    },
    /// Return the drive's cartridge to its slot.
    Unload {
        /// SCSI changer: the drive, counted from 0.
        #[arg(long)]
        drive: Option<usize>,
    },
    /// Move a cartridge from one slot to another.
    Transfer { from: usize, to: usize },
    /// Take a cartridge out through the mail slot (for offsite); the host
    /// catalog records where it goes.
    Export {
        barcode: String,
        /// Where it goes: vault:NAME, shelf[:NAME] or transit.
        #[arg(long, default_value = "transit")]
        to: String,
    },
    /// Put a cartridge from the mail slot into the first empty slot (a
    /// virtual library: an exported cartridge, by barcode).
    Import { barcode: Option<String> },
}

/// `tapir label --barcodes` and what goes with it.
#[derive(clap::Args, Debug)]
pub struct BarcodeLabelArgs {
    /// Label every blank cartridge of the library with its barcode (a
    /// labelled or foreign cartridge, and a cleaning cartridge, is left
    /// alone and named).
    #[arg(long, conflicts_with_all = ["label", "force"])]
    pub barcodes: bool,
    /// With --barcodes: the library's changer (/dev/sgN or vtape:DIR; see
    /// tapir changer).
    #[arg(long, requires = "barcodes", value_name = "DEV")]
    pub changer: Option<String>,
    /// With --barcodes and a SCSI changer: the drive --device is, counted
    /// from 0 (default: found by serial number).
    #[arg(long, requires = "barcodes")]
    pub drive: Option<usize>,
}

/// Where a changer is.
enum Library {
    Virtual(PathBuf),
    Scsi(String),
}

/// The changer to use: `--changer`; else `--device` when it is vtape:DIR
/// (a virtual library is its own changer); else the configuration's changer
/// of `--device`, or its only changer.
fn resolve(cli: &Cli, given: Option<&str>) -> anyhow::Result<Library> {
    let device_library = cli.device.as_deref().filter(|d| d.starts_with("vtape:"));
    let spec = match (given, device_library) {
        (Some(s), _) | (None, Some(s)) => s.to_string(),
        (None, None) => configured_changer(cli)?.ok_or_else(|| {
            Error::Usage(
                "no changer given: use --changer /dev/sgN (or vtape:DIR), declare one in the configuration, or give --device vtape:DIR".into(),
            )
        })?,
    };
    Ok(match spec.strip_prefix("vtape:") {
        Some(dir) if !dir.is_empty() => Library::Virtual(PathBuf::from(dir)),
        Some(_) => return Err(Error::Usage("vtape: needs the library directory".into()).into()),
        None => Library::Scsi(spec),
    })
}

fn configured_changer(cli: &Cli) -> anyhow::Result<Option<String>> {
    let path = super::jobs::config_path(cli.config.as_deref());
    if cli.config.is_none() && !path.exists() {
        return Ok(None);
    }
    let cfg = tapir::config::Config::load(&path).map_err(Error::from)?;
    let of_device = cli.device.as_deref().and_then(|dev| {
        cfg.drives
            .values()
            .find(|d| d.device == dev)
            .and_then(|d| d.changer.as_ref())
    });
    let name = match of_device {
        Some(n) => Some(n),
        None if cfg.changers.len() == 1 => cfg.changers.keys().next(),
        None => None,
    };
    Ok(name.map(|n| cfg.changers[n].device.clone()))
}

pub(super) fn run(cli: &Cli, args: &ChangerArgs) -> anyhow::Result<ExitStatus> {
    match resolve(cli, args.changer.as_deref())? {
        Library::Virtual(dir) => run_virtual(cli, &dir, &args.command),
        Library::Scsi(dev) => run_scsi(cli, &dev, &args.command),
    }
}

fn run_virtual(cli: &Cli, dir: &Path, command: &ChangerCommand) -> anyhow::Result<ExitStatus> {
    let mut lib = VirtualLibrary::open(dir).map_err(Error::from)?;
    let library = tapir::device::describe(dir);
    match command {
        ChangerCommand::Status | ChangerCommand::Inventory => {}
        ChangerCommand::Load {
            slot_or_barcode, ..
        } => match slot_or_barcode.parse::<usize>() {
            Ok(slot) => lib.load_slot(slot).map_err(Error::from)?,
            Err(_) => lib.load_barcode(slot_or_barcode).map_err(Error::from)?,
        },
        ChangerCommand::Unload { .. } => lib.unload().map_err(Error::from)?,
        ChangerCommand::Transfer { from, to } => lib.transfer(*from, *to).map_err(Error::from)?,
        ChangerCommand::Export { barcode, to } => {
            let to = parse_location(to)?;
            lib.export(barcode).map_err(Error::from)?;
            note_exported(cli, barcode, &to);
        }
        ChangerCommand::Import { barcode } => {
            let barcode = barcode.as_deref().ok_or_else(|| {
                Error::Usage("a virtual library imports an exported cartridge by barcode: tapir changer import BARCODE".into())
            })?;
            lib.import(barcode).map_err(Error::from)?;
        }
    }
    let inv = lib.inventory().map_err(Error::from)?;
    note_changer_moves(cli, &library, command, &inv);
    super::output::changer_status(cli.json, &inv);
    Ok(ExitStatus::Success)
}

fn run_scsi(cli: &Cli, dev: &str, command: &ChangerCommand) -> anyhow::Result<ExitStatus> {
    let changer = ScsiChanger::open(dev).map_err(Error::from)?;
    let drive_of = |d: &Option<usize>| d.unwrap_or(0);
    let mut said = None;
    let status = match command {
        ChangerCommand::Status => changer.status(),
        ChangerCommand::Inventory => {
            if !changer.initialize_element_status().map_err(Error::from)? {
                said = Some(
                    "the changer has no INITIALIZE ELEMENT STATUS; showing what it knows"
                        .to_string(),
                );
            }
            changer.status()
        }
        ChangerCommand::Load {
            slot_or_barcode,
            drive,
        } => {
            let slot = slot_or_barcode.parse::<usize>().ok();
            // The drive gives up another cartridge only once ejected.
            let before = changer.status().map_err(Error::from)?;
            let holds_another = before.drives.get(drive_of(drive)).is_some_and(|d| {
                let wanted = match slot {
                    Some(n) => before.slots.get(n.wrapping_sub(1)).map(|e| e.address) == d.source,
                    None => d.barcode.as_deref() == Some(slot_or_barcode.as_str()),
                };
                d.full && !wanted
            });
            if holds_another {
                eject_before_unload(cli);
            }
            match slot {
                Some(slot) => changer.load(slot, drive_of(drive)),
                None => changer.load_barcode(slot_or_barcode, drive_of(drive)),
            }
        }
        ChangerCommand::Unload { drive } => {
            eject_before_unload(cli);
            changer.unload_drive(drive_of(drive))
        }
        ChangerCommand::Transfer { from, to } => changer.transfer(*from, *to),
        ChangerCommand::Export { barcode, to } => {
            let to = parse_location(to)?;
            let before = changer.status().map_err(Error::from)?;
            if before.find(barcode).is_some_and(|e| {
                e.element_type == tapir::device::changer::ElementType::DataTransfer
            }) {
                eject_before_unload(cli);
            }
            let (mail, after) = changer.export(barcode).map_err(Error::from)?;
            note_exported(cli, barcode, &to);
            said = Some(format!("{barcode} is in mail slot {mail}; take it out"));
            Ok(after)
        }
        ChangerCommand::Import { barcode } => {
            let (got, slot, after) = changer.import(barcode.as_deref()).map_err(Error::from)?;
            said = Some(format!(
                "{} is now in slot {slot}",
                got.as_deref().unwrap_or("the cartridge (no barcode)")
            ));
            Ok(after)
        }
    }
    .map_err(Error::from)?;
    let drive = match command {
        ChangerCommand::Load { drive, .. } | ChangerCommand::Unload { drive } => drive_of(drive),
        _ => 0,
    };
    note_changer_moves(cli, dev, command, &status.inventory(drive));
    if let Some(s) = &said {
        if !cli.json {
            outln!("{s}");
        }
    }
    library_status(cli.json, &status);
    Ok(ExitStatus::Success)
}

/// A drive must let go of its cartridge before the robot can take it: eject
/// through st when --device names the drive. A drive that is already empty,
/// or absent, is no reason to stop; the move then reports what is wrong.
fn eject_before_unload(cli: &Cli) {
    let Some(dev) = cli.device.as_deref().filter(|d| !d.starts_with("vtape:")) else {
        return;
    };
    match tapir::pipeline::span::drive_if_loaded(dev) {
        Ok(Some(mut d)) => {
            if let Err(e) = d.eject() {
                eprintln!("tapir: warning: {dev}: ejecting before the unload: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("tapir: warning: {dev}: {e}"),
    }
}

fn parse_location(to: &str) -> anyhow::Result<Location> {
    Ok(to
        .parse()
        .map_err(|e| Error::Usage(format!("--to {to:?}: {e}")))?)
}

fn note_exported(cli: &Cli, barcode: &str, to: &Location) {
    super::note_in_catalog(cli, |c| {
        match c.note_seen(barcode, to, "tapir changer", "exported") {
            Ok(_) | Err(tapir::catalog::Error::NotFound(_)) => Ok(true),
            Err(e) => Err(e),
        }
    });
}

/// Tell the host catalog where a changer command put a cartridge (a
/// cartridge the catalog does not know is left alone).
fn note_changer_moves(cli: &Cli, library: &str, command: &ChangerCommand, inv: &ChangerInventory) {
    let moved: Vec<(String, Location)> = match command {
        ChangerCommand::Status | ChangerCommand::Inventory | ChangerCommand::Export { .. } => {
            return
        }
        ChangerCommand::Load { .. } => inv
            .drive
            .iter()
            .filter(|(b, _)| !b.is_empty())
            .map(|(b, _)| {
                let loc = Location {
                    kind: LocationKind::Drive,
                    name: library.to_string(),
                };
                (b.clone(), loc)
            })
            .collect(),
        ChangerCommand::Unload { .. }
        | ChangerCommand::Import { .. }
        | ChangerCommand::Transfer { .. } => inv
            .slots
            .iter()
            .filter_map(|(slot, b)| {
                let loc = Location {
                    kind: LocationKind::Slot,
                    name: format!("{slot} in {library}"),
                };
                b.clone().filter(|b| !b.is_empty()).map(|b| (b, loc))
            })
            .collect(),
    };
    super::note_in_catalog(cli, |c| {
        for (barcode, loc) in &moved {
            match c.note_seen(barcode, loc, "tapir changer", "moved by the changer") {
                Ok(_) | Err(tapir::catalog::Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    });
}

fn library_status(json: bool, s: &LibraryStatus) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(s).expect("library status serialises")
        );
        return;
    }
    outln!("changer {}: {} {}", s.changer, s.vendor, s.product);
    let what = |e: &ElementStatus| -> String {
        if !e.full {
            return "empty".into();
        }
        let mut t = e.barcode.clone().unwrap_or_else(|| "(no barcode)".into());
        if e.medium_type == MediumType::Cleaning {
            t.push_str(" (cleaning)");
        }
        t
    };
    for (i, d) in s.drives.iter().enumerate() {
        let mut line = format!("drive {i}:       {}", what(d));
        if let Some(from) = d.full.then_some(d.source).flatten() {
            line.push_str(&format!(" (from {})", s.describe(from)));
        }
        if let Some(serial) = d.identifier.as_ref().and_then(|i| i.serial.as_deref()) {
            line.push_str(&format!(" [drive serial {serial}]"));
        }
        outln!("{line}{}", exception(d));
    }
    for (i, e) in s.slots.iter().enumerate() {
        outln!("slot {:>3}:     {}{}", i + 1, what(e), exception(e));
    }
    for (i, e) in s.mail_slots.iter().enumerate() {
        let by = if e.full && e.imported {
            " (put in by an operator)"
        } else {
            ""
        };
        outln!("mail slot {:>2}: {}{by}{}", i + 1, what(e), exception(e));
    }
}

fn exception(e: &ElementStatus) -> String {
    e.condition
        .map(|c| format!(" [exception: {c}]"))
        .unwrap_or_default()
}

// ---- label --barcodes ----

/// What `label --barcodes` did with one cartridge.
#[derive(Debug, serde::Serialize)]
struct BarcodeLabel {
    barcode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    labelled: Option<Labelled>,
    /// Why it was left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

fn is_cleaning(barcode: &str) -> bool {
    barcode.starts_with("CLN")
}

/// Label the cartridge in `drive` with `barcode` if it is blank; say why not otherwise.
fn label_one(
    drive: &mut dyn TapeDrive,
    barcode: &str,
    pool: &str,
    block_size: u64,
    kit: &KitChoice,
) -> anyhow::Result<BarcodeLabel> {
    let skipped = match volume::read_label(drive)? {
        LabelState::Blank => None,
        LabelState::Tapir(l) => Some(format!(
            "already labelled {} (pool {})",
            l.label, l.pool
        )),
        LabelState::Foreign(what) => Some(format!(
            "not blank, holds data tapir did not write ({what}); scratch it or use tapir label --force"
        )),
    };
    let labelled = match skipped {
        None => Some(volume::label_cartridge(
            drive, barcode, pool, block_size, false, kit,
        )?),
        Some(_) => None,
    };
    Ok(BarcodeLabel {
        barcode: barcode.to_string(),
        labelled,
        skipped,
    })
}

fn skip(barcode: &str, why: &str) -> BarcodeLabel {
    BarcodeLabel {
        barcode: barcode.to_string(),
        labelled: None,
        skipped: Some(why.to_string()),
    }
}

fn open_loaded(cli: &Cli, device: &str) -> anyhow::Result<Box<dyn TapeDrive>> {
    // A drive takes a while to thread a cartridge the robot just put in.
    let timeout = std::time::Duration::from_secs(cli.wait_ready.max(600));
    Ok(
        tapir::device::open::open_drive_waiting(device, timeout, &mut |_| {})
            .map_err(Error::from)?,
    )
}

pub(super) fn label_barcodes(
    cli: &Cli,
    args: &BarcodeLabelArgs,
    pool: &str,
    block_size: u64,
    kit: &KitChoice,
) -> anyhow::Result<ExitStatus> {
    let done = match resolve(cli, args.changer.as_deref())? {
        Library::Virtual(dir) => label_virtual(cli, &dir, pool, block_size, kit)?,
        Library::Scsi(dev) => label_scsi(cli, &dev, args.drive, pool, block_size, kit)?,
    };
    if cli.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&done).expect("results serialise")
        );
    } else {
        for d in &done {
            match (&d.labelled, &d.skipped) {
                (Some(l), _) => outln!(
                    "{}: labelled (pool {}, volume {})",
                    d.barcode,
                    l.pool,
                    l.volume_uuid
                ),
                (None, Some(why)) => outln!("{}: skipped: {why}", d.barcode),
                (None, None) => {}
            }
        }
        let n = done.iter().filter(|d| d.labelled.is_some()).count();
        outln!("{n} of {} cartridges labelled", done.len());
    }
    Ok(ExitStatus::Success)
}

fn label_virtual(
    cli: &Cli,
    dir: &Path,
    pool: &str,
    block_size: u64,
    kit: &KitChoice,
) -> anyhow::Result<Vec<BarcodeLabel>> {
    let mut lib = VirtualLibrary::open(dir).map_err(Error::from)?;
    let inv = lib.inventory().map_err(Error::from)?;
    let barcodes: Vec<String> = inv
        .drive
        .iter()
        .map(|(b, _)| b.clone())
        .chain(inv.slots.iter().filter_map(|(_, b)| b.clone()))
        .collect();
    let device = tapir::device::describe(dir);
    let mut done = Vec::new();
    for barcode in barcodes {
        if is_cleaning(&barcode) {
            done.push(skip(&barcode, "a cleaning cartridge"));
            continue;
        }
        lib.load_barcode(&barcode).map_err(Error::from)?;
        let mut drive = open_loaded(cli, &device)?;
        done.push(label_one(drive.as_mut(), &barcode, pool, block_size, kit)?);
    }
    Ok(done)
}

fn label_scsi(
    cli: &Cli,
    dev: &str,
    drive: Option<usize>,
    pool: &str,
    block_size: u64,
    kit: &KitChoice,
) -> anyhow::Result<Vec<BarcodeLabel>> {
    let device = super::device_spec(cli)?;
    let changer = ScsiChanger::open(dev).map_err(Error::from)?;
    let status = changer.status().map_err(Error::from)?;
    let drive = tapir::pipeline::joblib::which_drive(drive, &status, device)?;
    let in_drive = status.drives.get(drive).filter(|d| d.full);
    let cartridges: Vec<&ElementStatus> = in_drive
        .into_iter()
        .chain(status.slots.iter().filter(|e| e.full))
        .collect();
    let mut done = Vec::new();
    for e in cartridges {
        let Some(barcode) = e.barcode.as_deref() else {
            done.push(skip(
                &format!("({})", status.describe(e.address)),
                "no barcode",
            ));
            continue;
        };
        if is_cleaning(barcode) || e.medium_type == MediumType::Cleaning {
            done.push(skip(barcode, "a cleaning cartridge"));
            continue;
        }
        changer.load_barcode(barcode, drive).map_err(Error::from)?;
        let mut d = open_loaded(cli, device)?;
        done.push(label_one(d.as_mut(), barcode, pool, block_size, kit)?);
        if let Err(e) = d.eject() {
            eprintln!("tapir: warning: {device}: ejecting {barcode}: {e}");
        }
        drop(d);
        changer.unload_drive(drive).map_err(Error::from)?;
    }
    Ok(done)
}
