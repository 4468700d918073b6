//! Command-line parsing and dispatch. Each command parses, calls the
//! library, and prints; `anyhow` is used only here, at the edge.

/// `println!` for tapir's output: when the reader has gone (`tapir list |
/// head`), tapir stops quietly with 141, the status of a process killed by
/// SIGPIPE, instead of panicking. Other write errors still panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output_line(format_args!($($arg)*), true)
    };
}

/// `print!` for tapir's output, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output_line(format_args!($($arg)*), false)
    };
}

pub(crate) fn output_line(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}

mod catalog;
mod changer;
mod drive;
mod jobs;
mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use tapir::device::library::VirtualLibrary;
use tapir::device::open::open_drive_waiting;
use tapir::device::{Changer, TapeDrive};
use tapir::exit::ExitStatus;
use tapir::pipeline::{self, Error};

#[derive(Parser, Debug)]
#[command(
    name = "tapir",
    version,
    about = "Tape and removable-media archiver: self-describing cartridges, restore from one cartridge"
)]
struct Cli {
    /// Tape device: /dev/nstN, a /dev/tape/by-id link, or vtape:DIR (a virtual library).
    #[arg(long, global = true, env = "TAPE")]
    device: Option<String>,
    /// The host catalog (default /var/lib/tapir/catalog.db).
    #[arg(long, global = true, env = "TAPIR_CATALOG", value_name = "PATH")]
    catalog: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Wait up to SECONDS for a drive that is becoming ready (loading; a new
    /// LTO-9 cartridge's first-load calibration takes 40 minutes to 2 hours).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 0)]
    wait_ready: u64,
    /// The configuration file (default /etc/tapir/tapir.toml).
    #[arg(long, global = true, env = "TAPIR_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the tape drives on this system (st devices, from sysfs); the
    /// same as `drive list`.
    Drives,
    /// The drive: status, rewind, eject, load, erase, TapeAlert, cartridge
    /// memory, and qualifying it.
    Drive {
        #[command(subcommand)]
        command: drive::DriveCommand,
    },
    /// Virtual tape libraries (file-backed cartridges).
    Vtape {
        #[command(subcommand)]
        command: VtapeCommand,
    },
    /// Move cartridges between slots, drives and mail slots of a library
    /// (a SCSI media changer or a virtual library).
    Changer(changer::ChangerArgs),
    /// Write a label to the loaded cartridge.
    Label {
        /// The cartridge's label or barcode, e.g. TAP001L9.
        #[arg(long, required_unless_present = "barcodes")]
        label: Option<String>,
        #[arg(long, default_value = "default")]
        pool: String,
        /// Size of every block written after the label (64K to 1M).
        #[arg(long, default_value = "256K", value_parser = parse_size)]
        block_size: u64,
        /// Relabel a cartridge that already holds data, destroying it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        library: changer::BarcodeLabelArgs,
        #[command(flatten)]
        kit: RescueKitArgs,
    },
    /// Write a directory tree (or files) as a new session on the loaded cartridge.
    Write {
        /// Name of the archive set (a blank labelled cartridge starts it).
        #[arg(long)]
        set: Option<String>,
        /// Leave out paths matching this glob (repeatable).
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Do not cross into other filesystems.
        #[arg(long)]
        one_file_system: bool,
        /// Archive the contents of /proc, /sys, /dev, /run and /tmp too
        /// (by default a walk that meets them keeps only the directories).
        #[arg(long)]
        no_default_excludes: bool,
        /// Keep directory DIR but leave out its contents (repeatable), as
        /// the defaults do for /proc, /sys, /dev, /run and /tmp; e.g. the
        /// tmp of a snapshot mounted elsewhere.
        #[arg(long, value_name = "DIR")]
        exclude_contents: Vec<PathBuf>,
        /// Also store the system manifest (partitions, filesystems, LVM,
        /// RAID, LUKS, boot loader, kernel, hostname) for a bare-metal
        /// restore; see docs/BARE-METAL.md.
        #[arg(long)]
        system: bool,
        /// Software compression of file content.
        #[arg(long, value_enum, default_value = "none")]
        compress: Compress,
        /// Size of the buffer between the reader and the drive.
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        buffer: u64,
        /// Start the drive when the buffer is this full (percent), like mbuffer -P
        /// (a medium that does not stream is written from the first block).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
        start_at: u8,
        /// Stage the stream on disk in DIR and despool it at full speed
        /// (for sources slower than the drive's streaming floor).
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// With --spool: spool only once the source delivers less than RATE
        /// (e.g. 150M), measured over --spool-window seconds.
        #[arg(long, value_name = "RATE", value_parser = parse_rate, requires = "spool")]
        spool_below: Option<f64>,
        #[arg(long, default_value_t = 5.0, requires = "spool")]
        spool_window: f64,
        /// Size of each spool file (two exist at most).
        #[arg(long, default_value = "1G", value_parser = parse_size, requires = "spool")]
        spool_size: u64,
        /// Do not record this session in the host catalog.
        #[arg(long)]
        no_catalog: bool,
        /// When a cartridge fills, ask an operator for the next one and wait
        /// (the default for a single drive) instead of using the library's
        /// changer.
        #[arg(long)]
        ask_operator: bool,
        /// How long to wait for the operator to insert the next cartridge.
        #[arg(long, value_name = "SECONDS", default_value_t = 8 * 3600)]
        operator_timeout: u64,
        /// Make data durable at least every SIZE of content.
        #[arg(long, default_value = "8G", value_parser = parse_size)]
        checkpoint_every: u64,
        #[command(flatten)]
        kit: RescueKitArgs,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List every session on the loaded cartridge, like tar -tv.
    List {
        #[arg(long)]
        session: Option<u32>,
    },
    /// Restore entries from the loaded cartridge (the latest version of each path).
    Restore {
        /// Directory to restore into (created if missing).
        #[arg(long)]
        to: PathBuf,
        /// Restore ownership by number, ignoring names.
        #[arg(long)]
        numeric_owner: bool,
        /// Replace existing files in the target.
        #[arg(long)]
        overwrite: bool,
        /// Restore from this session instead of the latest version of each path.
        #[arg(long)]
        session: Option<u32>,
        /// Keep the part of a file that spans cartridges as PATH.partial;
        /// restoring the cartridge with the rest into the same directory
        /// completes it (checked against the file's BLAKE3).
        #[arg(long)]
        partials: bool,
        /// Restore from the whole set the loaded cartridge belongs to: the
        /// newest version of each path, from the set catalog copy on this
        /// cartridge, loading each cartridge it needs from the library.
        #[arg(long, conflicts_with = "session")]
        whole_set: bool,
        /// With --whole-set: ask an operator for each cartridge (the
        /// default for a single drive) instead of using the library.
        #[arg(long, requires = "whole_set")]
        ask_operator: bool,
        /// How long to wait for the operator to insert each cartridge.
        #[arg(long, value_name = "SECONDS", default_value_t = 8 * 3600)]
        operator_timeout: u64,
        /// Restore a job's tree as it was at this time (YYYY-MM-DD or RFC
        /// 3339), from the host catalog: its newest session by then, each
        /// file from the full or incremental that holds it.
        #[arg(long, value_name = "TIME", requires = "job", conflicts_with_all = ["session", "whole_set"])]
        at: Option<String>,
        /// With --at: the job (as named in the configuration).
        #[arg(long, requires = "at")]
        job: Option<String>,
        /// With --at, when the job's pool keeps copies: restore this copy
        /// (default: the copy needing the fewest cartridges from outside
        /// the library).
        #[arg(long, requires = "at", value_parser = clap::value_parser!(u8).range(1..=4))]
        copy: Option<u8>,
        /// Glob patterns over archive paths; a directory selects its contents.
        patterns: Vec<String>,
    },
    /// Read everything back and check every block's CRC and every file's BLAKE3.
    Verify {
        #[arg(long)]
        session: Option<u32>,
        /// Refuse to verify in a drive that wrote any session of this
        /// cartridge (per the host catalog): a drive reads back what it wrote
        /// even when its heads are out of line.
        #[arg(long)]
        other_drive: bool,
    },
    /// The system manifest stored by `write --system`.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    #[command(flatten)]
    Catalog(catalog::CatalogCommand),
    /// Run a job of the configuration: choose the cartridge (with the
    /// reason), then load, write, verify and export.
    Run(jobs::RunArgs),
    /// systemd units for the configuration's scheduled jobs.
    Systemd {
        #[command(subcommand)]
        command: jobs::SystemdCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// Print the newest system manifest on the loaded cartridge (no host
    /// catalog needed).
    Show {
        /// The manifest of this session instead of the newest.
        #[arg(long)]
        session: Option<u32>,
        /// Print only this disk's partition table, as `sfdisk --dump` wrote
        /// it (to pipe into `sfdisk /dev/DISK`).
        #[arg(long, value_name = "DISK", conflicts_with = "vgcfg")]
        sfdisk: Option<String>,
        /// Print only this LVM volume group's metadata backup (a file for
        /// `vgcfgrestore -f`).
        #[arg(long, value_name = "VG")]
        vgcfg: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum VtapeCommand {
    /// Create a virtual library with blank cartridges, the first loaded.
    Create {
        dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// Capacity of each cartridge.
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        capacity: u64,
    },
    /// Make the library's drive emulate a real drive's speed and count its backhitches.
    Simulate {
        dir: PathBuf,
        #[command(flatten)]
        model: SpeedModel,
        /// Remove the model: the drive runs as fast as the disk.
        #[arg(long)]
        off: bool,
    },
    /// Act as a simulated drive at the end of a pipe: read stdin into FILE
    /// and report backhitches as JSON (to measure other tools the same way).
    Sink {
        file: PathBuf,
        #[command(flatten)]
        model: SpeedModel,
        /// Size of each read from stdin.
        #[arg(long, default_value = "256K", value_parser = parse_size)]
        block: u64,
    },
    /// Set or clear a cartridge's write-protect tab.
    Protect {
        dir: PathBuf,
        barcode: String,
        /// Clear the tab instead of setting it.
        #[arg(long)]
        off: bool,
    },
}

/// What goes into the rescue kit (tape file 1) of a cartridge this command
/// labels. Without either option: FORMAT.md and a static tapir, the running
/// one when it is statically linked or else `tapir-static` beside it.
#[derive(clap::Args, Debug, Clone)]
struct RescueKitArgs {
    /// Put this statically linked tapir into the rescue kit (build one with
    /// scripts/build-static).
    #[arg(long, value_name = "PATH", env = "TAPIR_RESCUE_BINARY")]
    rescue_binary: Option<PathBuf>,
    /// Leave the rescue kit out (tiny cartridges); the label says so.
    /// Overrides --rescue-binary (and $TAPIR_RESCUE_BINARY).
    #[arg(long)]
    no_rescue_kit: bool,
}

impl RescueKitArgs {
    fn choose(&self) -> Result<pipeline::rescue::KitChoice, Error> {
        pipeline::rescue::choose(self.rescue_binary.as_deref(), self.no_rescue_kit)
    }
}

/// A drive's speed: defaults are an LTO-9.
#[derive(clap::Args, Debug, Clone)]
struct SpeedModel {
    /// Native (on-tape) speed in bytes/s (decimal units: 400M = 400,000,000).
    #[arg(long, default_value = "400M", value_parser = parse_rate)]
    rate: f64,
    /// Slowest speed the drive can match before it stops and backhitches.
    #[arg(long, default_value = "120M", value_parser = parse_rate)]
    floor: f64,
    /// The drive's own buffer.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    drive_buffer: u64,
    /// The drive's compression ratio on this data (host bytes per tape byte).
    #[arg(long, default_value_t = 1.0)]
    compression: f64,
}

impl SpeedModel {
    fn config(&self) -> tapir::device::drivesim::DriveSimConfig {
        tapir::device::drivesim::DriveSimConfig {
            rate: self.rate,
            floor: self.floor,
            buffer: self.drive_buffer,
            compression: self.compression,
            backhitch_seconds: 2.0,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Compress {
    None,
    Zstd,
}

/// Parse sizes like 4096, 256K, 1M, 4G, 2T (powers of 1024).
use tapir::config::parse_size;

/// Parse rates like 400M or 1.5G (decimal units, bytes per second).
fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1e3),
        Some('M' | 'm') => (&t[..t.len() - 1], 1e6),
        Some('G' | 'g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (examples: 400M, 1.2G)"))?;
    if n <= 0.0 || !n.is_finite() {
        return Err(format!("{s:?}: a rate must be positive"));
    }
    Ok(n * mult)
}

/// Run the command line and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => ExitStatus::Usage.code(),
            };
        }
    };
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(status) => status.code(),
        Err(e) => {
            // Library errors carry their exit status; anything else is a system error.
            let status = e
                .downcast_ref::<Error>()
                .map(|e| e.exit_status())
                .unwrap_or(ExitStatus::DeviceError);
            let priority = if std::env::var_os("JOURNAL_STREAM").is_some() {
                "<3>"
            } else {
                ""
            };
            eprintln!("{priority}tapir: error: {e:#}");
            status.code()
        }
    }
}

/// Ctrl-C or SIGTERM raise the returned flag, so a write closes its
/// session cleanly; a second signal ends tapir at once.
fn interrupt_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            ExitStatus::Interrupted.code(),
            interrupt.clone(),
        )?;
        signal_hook::flag::register(sig, interrupt.clone())?;
    }
    Ok(interrupt)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    // Under systemd (a scheduled job), the journal stamps the time; each
    // line carries its syslog priority as `<N>` so `journalctl -p` works.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .event_format(JournalLine)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// One log line for the journal: `<priority>message fields`.
struct JournalLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// sd-daemon(3) priorities: err, warning, info, debug.
fn syslog_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

fn device_spec(cli: &Cli) -> anyhow::Result<&str> {
    require_device(cli.device.as_deref())
}

fn require_device(device: Option<&str>) -> anyhow::Result<&str> {
    device.ok_or_else(|| {
        Error::Usage("no device given: use --device DEV or set $TAPE (e.g. --device vtape:/srv/vtl or /dev/nst0)".into())
            .into()
    })
}

fn open(cli: &Cli) -> anyhow::Result<Box<dyn TapeDrive>> {
    open_device(cli.device.as_deref(), cli.wait_ready)
}

/// Open the drive with its cartridge, waiting up to `wait_ready` seconds
/// for one that is becoming ready.
fn open_device(device: Option<&str>, wait_ready: u64) -> anyhow::Result<Box<dyn TapeDrive>> {
    let spec = require_device(device)?;
    let timeout = std::time::Duration::from_secs(wait_ready);
    let mut said = String::new();
    let mut on_wait = |what: &str| {
        if what != said {
            eprintln!("tapir: waiting for the drive: {what}");
            said = what.to_string();
        }
    };
    Ok(open_drive_waiting(spec, timeout, &mut on_wait).map_err(Error::from)?)
}

/// `verify --other-drive`: the loaded drive must not be one that wrote this
/// cartridge, as the host catalog records them.
fn check_other_drive(cli: &Cli, drive: &mut dyn TapeDrive) -> anyhow::Result<()> {
    let serial = drive.identity().and_then(|d| d.serial).ok_or_else(|| {
        Error::Usage(format!(
            "{}: the drive does not report a serial number; --other-drive cannot tell drives apart",
            drive.name()
        ))
    })?;
    let label = match pipeline::volume::read_label(drive)? {
        pipeline::volume::LabelState::Tapir(l) => l,
        _ => return Err(Error::Refused(format!("{}: not a tapir cartridge", drive.name())).into()),
    };
    let path = tapir::catalog::resolve_path(cli.catalog.as_deref());
    let known = |e: tapir::catalog::Error| {
        Error::Usage(format!("--other-drive needs the host catalog: {e}"))
    };
    let catalog = tapir::catalog::Catalog::open_existing(&path).map_err(known)?;
    let detail = catalog.media_show(&label.label).map_err(known)?;
    let writers: Vec<String> = detail
        .sessions
        .iter()
        .filter_map(|s| s.drive_serial.clone())
        .collect();
    if writers.is_empty() {
        return Err(Error::Usage(format!(
            "the host catalog does not record which drive wrote {}; --other-drive cannot be checked",
            label.label
        ))
        .into());
    }
    if writers.contains(&serial) {
        return Err(Error::Refused(format!(
            "{}: this drive (serial {serial}) wrote cartridge {}; load it in another drive to check that it reads elsewhere",
            drive.name(),
            label.label
        ))
        .into());
    }
    Ok(())
}

/// Note a read or verify in the host catalog, if there is one. Reading
/// commands never create a catalog, and a catalog problem never fails them.
fn note_in_catalog(
    cli: &Cli,
    note: impl FnOnce(&mut tapir::catalog::Catalog) -> tapir::catalog::Result<bool>,
) {
    let path = tapir::catalog::resolve_path(cli.catalog.as_deref());
    if !path.exists() {
        return;
    }
    if let Err(e) = tapir::catalog::Catalog::open_existing(&path).and_then(|mut c| note(&mut c)) {
        eprintln!("tapir: warning: the host catalog was not updated: {e}");
    }
}

/// The operator at a single drive: told on standard error, lines starting
/// `tapir: OPERATOR:`.
fn operator(device: &str, timeout_seconds: u64) -> pipeline::span::Operator {
    pipeline::span::Operator {
        device: device.to_string(),
        timeout: std::time::Duration::from_secs(timeout_seconds),
        poll: std::time::Duration::from_millis(500),
        tell: Box::new(|what: &str| eprintln!("tapir: OPERATOR: {what}")),
    }
}

fn drive_globals(cli: &Cli) -> drive::Globals<'_> {
    drive::Globals {
        device: cli.device.as_deref(),
        json: cli.json,
        wait_ready: cli.wait_ready,
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitStatus> {
    match &cli.command {
        Command::Drives => drive::run(&drive::DriveCommand::List, &drive_globals(cli)),
        Command::Drive { command } => drive::run(command, &drive_globals(cli)),
        Command::Vtape { command } => match command {
            VtapeCommand::Create {
                dir,
                slots,
                capacity,
            } => {
                let lib = VirtualLibrary::create(dir, *slots, *capacity).map_err(Error::from)?;
                let inv = lib.inventory().map_err(Error::from)?;
                output::library_created(cli.json, dir, &inv, *capacity);
                Ok(ExitStatus::Success)
            }
            VtapeCommand::Simulate { dir, model, off } => {
                let lib = VirtualLibrary::open(dir).map_err(Error::from)?;
                let cfg = (!off).then(|| model.config());
                lib.set_speed_model(cfg).map_err(Error::from)?;
                if !cli.json {
                    match cfg {
                        Some(c) => outln!(
                            "drive of {} now emulates {:.0} MB/s native (floor {:.0} MB/s), {} byte buffer, {:.1}:1 compression",
                            dir.display(),
                            c.rate / 1e6,
                            c.floor / 1e6,
                            c.buffer,
                            c.compression
                        ),
                        None => outln!("drive of {} runs at disk speed", dir.display()),
                    }
                }
                Ok(ExitStatus::Success)
            }
            VtapeCommand::Sink { file, model, block } => {
                let stats = output::sink(file, model.config(), *block as usize)?;
                outln!("{}", serde_json::to_string_pretty(&stats)?);
                Ok(ExitStatus::Success)
            }
            VtapeCommand::Protect { dir, barcode, off } => {
                let lib = VirtualLibrary::open(dir).map_err(Error::from)?;
                tapir::device::vtape::VirtualTape::set_write_protected(
                    lib.cartridge_path(barcode),
                    !off,
                )
                .map_err(Error::from)?;
                if !cli.json {
                    outln!(
                        "{barcode}: write protection {}",
                        if *off { "off" } else { "on" }
                    );
                }
                Ok(ExitStatus::Success)
            }
        },
        Command::Changer(args) => changer::run(cli, args),
        Command::Label {
            label,
            pool,
            block_size,
            force,
            library,
            kit,
        } => {
            let kit = kit.choose()?;
            if library.barcodes {
                return changer::label_barcodes(cli, library, pool, *block_size, &kit);
            }
            let label = label
                .as_deref()
                .expect("clap requires --label without --barcodes");
            let mut drive = open(cli)?;
            let done = pipeline::volume::label_cartridge(
                drive.as_mut(),
                label,
                pool,
                *block_size,
                *force,
                &kit,
            )?;
            output::labelled(cli.json, &done);
            Ok(ExitStatus::Success)
        }
        Command::Write {
            set,
            exclude,
            one_file_system,
            no_default_excludes,
            exclude_contents,
            system,
            compress,
            buffer,
            checkpoint_every,
            start_at,
            spool,
            spool_below,
            spool_window,
            spool_size,
            no_catalog,
            ask_operator,
            operator_timeout,
            kit,
            paths,
        } => {
            let rescue_kit = kit.choose()?;
            let drive = open(cli)?;
            let interrupt = interrupt_on_signals()?;
            let mut walk = if *no_default_excludes {
                pipeline::source::WalkOptions::default()
            } else {
                pipeline::source::WalkOptions::with_default_excludes()
            };
            walk.excludes = exclude.clone();
            walk.one_file_system = *one_file_system;
            for dir in exclude_contents {
                // The walk compares absolute paths.
                walk.contents_excluded.push(std::path::absolute(dir)?);
            }
            let opts = pipeline::writer::WriteOptions {
                interrupt: Some(interrupt),
                catalog: (!no_catalog)
                    .then(|| tapir::catalog::resolve_path(cli.catalog.as_deref())),
                sources: paths.clone(),
                set_name: set.clone(),
                walk,
                system_manifest: *system,
                compress: *compress == Compress::Zstd,
                buffer_bytes: *buffer as usize,
                checkpoint_bytes: *checkpoint_every,
                start_fill_percent: *start_at,
                spool: spool.as_ref().map(|dir| pipeline::spool::SpoolOptions {
                    dir: dir.clone(),
                    chunk_bytes: *spool_size,
                    below_rate: *spool_below,
                    window: std::time::Duration::from_secs_f64(spool_window.max(0.0)),
                }),
                rescue_kit,
                ..Default::default()
            };
            // When a cartridge fills: a library loads the next one; with a
            // single drive (or when asked) an operator does.
            let spec = device_spec(cli)?;
            let mut supply: Box<dyn pipeline::span::CartridgeSupply> =
                match tapir::device::open::DeviceSpec::parse(spec) {
                    Ok(tapir::device::open::DeviceSpec::VirtualLibrary(dir)) if !*ask_operator => {
                        Box::new(pipeline::span::LibrarySupply::new(
                            VirtualLibrary::open(dir).map_err(Error::from)?,
                        )?)
                    }
                    // A removable disk: the operator plugs in the next one.
                    Ok(tapir::device::open::DeviceSpec::Disk(sel)) => {
                        Box::new(pipeline::disks::DiskSupply::new(
                            sel,
                            std::time::Duration::from_secs(*operator_timeout),
                            std::sync::Arc::new(|what: &str| eprintln!("tapir: OPERATOR: {what}")),
                        ))
                    }
                    _ => Box::new(pipeline::span::OperatorSupply(operator(
                        spec,
                        *operator_timeout,
                    ))),
                };
            let summary = output::with_write_progress(cli.json, |progress| {
                pipeline::writer::write_session_spanning(drive, supply.as_mut(), &opts, progress)
            })?;
            output::written(cli.json, &summary);
            Ok(if summary.interrupted {
                ExitStatus::Interrupted
            } else if summary.warnings.is_empty() {
                ExitStatus::Success
            } else {
                ExitStatus::Warnings
            })
        }
        Command::Manifest {
            command:
                ManifestCommand::Show {
                    session,
                    sfdisk,
                    vgcfg,
                },
        } => {
            let mut drive = open(cli)?;
            let found = pipeline::manifest::read_from_cartridge(drive.as_mut(), *session)?;
            let m = &found.manifest;
            if let Some(disk) = sfdisk {
                let name = disk.trim_start_matches("/dev/");
                let Some(d) = m.disks.iter().find(|d| d.name == name) else {
                    return Err(Error::Usage(format!(
                        "the manifest has no disk {name} (it has: {})",
                        m.disks
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .into());
                };
                if d.partition_table.status != tapir::format::manifest::CaptureStatus::Ok {
                    return Err(Error::Refused(format!(
                        "the partition table of {} was not recorded: {:?} ({})",
                        d.path,
                        d.partition_table.status,
                        d.partition_table.stderr.trim()
                    ))
                    .into());
                }
                out!("{}", d.partition_table.stdout);
            } else if let Some(vg) = vgcfg {
                let Some(b) = m.lvm.vg_backups.iter().find(|b| b.name == *vg) else {
                    return Err(
                        Error::Usage(format!("the manifest has no volume group {vg}")).into(),
                    );
                };
                out!("{}", b.text);
            } else {
                output::manifest(cli.json, &found);
            }
            Ok(ExitStatus::Success)
        }
        Command::List { session } => {
            let mut drive = open(cli)?;
            let listing = pipeline::list::list_cartridge(drive.as_mut(), *session)?;
            output::listing(cli.json, &listing);
            let damaged = listing
                .sessions
                .iter()
                .any(|s| !s.incomplete.is_empty() || !s.lost.is_empty());
            let interrupted = listing.sessions.iter().any(|s| !s.closed);
            Ok(if damaged {
                ExitStatus::DataDamage
            } else if interrupted || !listing.map.unknown_files.is_empty() {
                ExitStatus::Warnings
            } else {
                ExitStatus::Success
            })
        }
        Command::Restore {
            to,
            numeric_owner,
            overwrite,
            session,
            partials,
            whole_set,
            ask_operator,
            operator_timeout,
            at,
            job,
            copy,
            patterns,
        } => {
            if let (Some(at), Some(job)) = (at, job) {
                return jobs::restore_at(
                    &jobs::Globals {
                        catalog: cli.catalog.as_deref(),
                        config: cli.config.as_deref(),
                        device: device_spec(cli)?,
                        json: cli.json,
                    },
                    job,
                    at,
                    *copy,
                    pipeline::restore::RestoreOptions {
                        target: to.clone(),
                        overwrite: *overwrite,
                        numeric_owner: *numeric_owner,
                        ..Default::default()
                    },
                    *operator_timeout,
                );
            }
            let mut drive = open(cli)?;
            let opts = pipeline::restore::RestoreOptions {
                partials: *partials,
                selection: None,
                replace_own: Default::default(),
                target: to.clone(),
                patterns: patterns.clone(),
                session: *session,
                overwrite: *overwrite,
                numeric_owner: *numeric_owner,
            };
            if *whole_set {
                let spec = device_spec(cli)?;
                let mut loader: Box<dyn pipeline::setrestore::VolumeLoader> =
                    match tapir::device::open::DeviceSpec::parse(spec) {
                        Ok(tapir::device::open::DeviceSpec::VirtualLibrary(dir))
                            if !*ask_operator =>
                        {
                            Box::new(pipeline::setrestore::LibraryLoader {
                                lib: VirtualLibrary::open(dir).map_err(Error::from)?,
                            })
                        }
                        // Removable disks: each found by its label when plugged in.
                        Ok(tapir::device::open::DeviceSpec::Disk(_)) => {
                            Box::new(pipeline::disks::DiskLoader {
                                timeout: std::time::Duration::from_secs(*operator_timeout),
                                tell: std::sync::Arc::new(|what: &str| {
                                    eprintln!("tapir: OPERATOR: {what}")
                                }),
                            })
                        }
                        _ => Box::new(pipeline::setrestore::OperatorLoader(operator(
                            spec,
                            *operator_timeout,
                        ))),
                    };
                let summary = pipeline::setrestore::restore_set(drive, loader.as_mut(), &opts)?;
                for c in &summary.cartridges {
                    let errors = (c.damaged.len() + c.lost_blocks.len()) as u64;
                    note_in_catalog(cli, |cat| cat.record_read(&c.volume_uuid, errors));
                }
                output::set_restored(cli.json, &summary);
                return Ok(summary.exit_status());
            }
            let summary = pipeline::restore::restore(drive.as_mut(), &opts)?;
            let errors = (summary.damaged.len() + summary.lost_blocks.len()) as u64;
            note_in_catalog(cli, |c| c.record_read(&summary.volume_uuid, errors));
            output::restored(cli.json, &summary);
            Ok(summary.exit_status())
        }
        Command::Run(args) => jobs::run(
            args,
            cli.config.as_deref(),
            cli.catalog.as_deref(),
            cli.json,
        ),
        Command::Systemd { command } => jobs::systemd(command, cli.config.as_deref()),
        Command::Catalog(c) => catalog::run(
            c,
            &catalog::Globals {
                catalog: cli.catalog.as_deref(),
                device: cli.device.as_deref(),
                json: cli.json,
            },
        ),
        Command::Verify {
            session,
            other_drive,
        } => {
            let mut drive = open(cli)?;
            if *other_drive {
                check_other_drive(cli, drive.as_mut())?;
            }
            let summary = pipeline::verify::verify(drive.as_mut(), *session)?;
            let ok = summary.exit_status() == ExitStatus::Success;
            let detail = format!(
                "{} of {} entries intact, {} bad block run(s)",
                summary.entries_ok,
                summary.entries,
                summary.bad_blocks.len()
            );
            // A verify counts as one read of the cartridge.
            note_in_catalog(cli, |c| {
                c.record_verify(&summary.volume_uuid, ok, Some(&detail))
            });
            output::verified(cli.json, &summary);
            Ok(summary.exit_status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
    }
}
