//! `tapir run JOB`: scheduled jobs from the configuration file.

use std::path::PathBuf;

use tapir::config::Config;
use tapir::exit::ExitStatus;
use tapir::media::plan::Action;
use tapir::pipeline::job::{self, RunPlan};
use tapir::pipeline::joblib::JobLibrary;
use tapir::pipeline::Error;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The job's name in the configuration.
    job: String,
    /// Print the plan (which cartridge, and why) and do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Plan as if it were this time (YYYY-MM-DD, or RFC 3339): what-ifs
    /// and tests. Expiry follows it.
    #[arg(long, value_name = "TIME")]
    now: Option<String>,
    /// Let retention expire sets even when the clock looks wrong (behind
    /// the newest write, or far past it).
    #[arg(long)]
    trust_clock: bool,
    /// How long to wait for an operator to insert a cartridge the job
    /// needs (0: do not wait).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    insert_timeout: u64,
}

/// The global options a job command uses.
#[derive(Clone, Copy)]
pub struct Globals<'a> {
    pub catalog: Option<&'a std::path::Path>,
    pub config: Option<&'a std::path::Path>,
    pub device: &'a str,
    pub json: bool,
}

/// The library a job's drive belongs to: a virtual library (`vtape:DIR`),
/// or the SCSI changer the configuration gives the st drive.
fn open_library(
    cfg: &Config,
    drive: &tapir::config::Drive,
    insert_timeout: std::time::Duration,
) -> anyhow::Result<Box<dyn JobLibrary>> {
    if drive.device.starts_with("disk:") {
        // A pool of removable disks: an operator plugs them in.
        let notify = cfg.notify.clone();
        let tell = move |what: &str| {
            eprintln!("tapir: OPERATOR: {what}");
            if let Some(n) = &notify {
                if let Err(e) = job::notify(n, "insert", "", what) {
                    eprintln!("tapir: warning: {e}");
                }
            }
        };
        return Ok(Box::new(tapir::pipeline::disks::DiskLibrary::new(
            &drive.device,
            insert_timeout,
            std::sync::Arc::new(tell),
        )?));
    }
    if let Some(dir) = drive.device.strip_prefix("vtape:") {
        return Ok(Box::new(
            tapir::device::library::VirtualLibrary::open(std::path::Path::new(dir))
                .map_err(Error::from)?,
        ));
    }
    let changer = drive
        .changer
        .as_ref()
        .and_then(|c| cfg.changers.get(c))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: a job's drive needs a library: give it `changer = NAME` and a [changer.NAME] with its device (/dev/sgN)",
                drive.device
            ))
        })?;
    let mut scsi =
        tapir::device::changer::ScsiChanger::open(&changer.device).map_err(Error::from)?;
    // A library with several drives: load the one this job's drive is.
    let status = scsi.status().map_err(Error::from)?;
    scsi.set_drive(tapir::pipeline::joblib::which_drive(
        drive.element,
        &status,
        &drive.device,
    )?);
    Ok(Box::new(tapir::pipeline::joblib::ScsiLibrary {
        changer: scsi,
        device: drive.device.clone(),
        // A cartridge just loaded takes a while; an LTO-9's first load up to 2 hours.
        wait_ready: std::time::Duration::from_secs(2 * 3600),
    }))
}

/// The configuration file: `--config`, `$TAPIR_CONFIG`, or the default.
pub fn config_path(given: Option<&std::path::Path>) -> PathBuf {
    given.map_or_else(
        || PathBuf::from(tapir::config::DEFAULT_PATH),
        |p| p.to_path_buf(),
    )
}

fn parse_now(s: &str) -> Result<i64, Error> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts.as_second());
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_second())
        .ok_or_else(|| Error::Usage(format!("--now {s:?}: use YYYY-MM-DD or an RFC 3339 time")))
}

pub fn run(
    args: &RunArgs,
    config: Option<&std::path::Path>,
    catalog: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let cfg = Config::load(&config_path(config)).map_err(Error::from)?;
    let job = cfg.job(&args.job).map_err(Error::from)?;
    let now = match &args.now {
        Some(s) => {
            let now = parse_now(s)?;
            // Everything this run records carries the simulated time.
            tapir::format::meta::shift_clock(now - tapir::format::meta::Timestamp::now().sec);
            now
        }
        None => tapir::format::meta::Timestamp::now().sec,
    };
    let drive = job
        .drive
        .as_ref()
        .map(|d| &cfg.drives[d])
        .or_else(|| cfg.drives.values().next())
        .ok_or_else(|| Error::Usage(format!("{}: no [drive] is declared", cfg.path.display())))?;
    let mut lib = open_library(
        &cfg,
        drive,
        std::time::Duration::from_secs(args.insert_timeout),
    )?;
    let present = lib.inside()?;
    let catalog_path = catalog
        .map(|p| p.to_path_buf())
        .or_else(|| cfg.catalog.clone())
        .unwrap_or_else(|| tapir::catalog::resolve_path(None));
    let cat = if catalog_path.exists() {
        Some(tapir::catalog::Catalog::open_existing(&catalog_path).map_err(Error::from)?)
    } else {
        None
    };
    let inputs = job::PlanInputs {
        present: &present,
        drive_generation: drive.generation,
        now,
        trust_clock: args.trust_clock,
        copy: 1,
        taken: &[],
    };
    if args.dry_run {
        let plans = job::plan_copies(&cfg, job, cat.as_ref(), &inputs)?;
        print_plans(json, &plans);
        return Ok(if plans.iter().all(|p| p.plan.first().is_some()) {
            ExitStatus::Success
        } else {
            ExitStatus::Unavailable
        });
    }
    let plan = job::plan_run(&cfg, job, cat.as_ref(), &inputs)?;
    drop(cat);
    let interrupt = super::interrupt_on_signals()?;
    let notify = cfg.notify.clone();
    let job_name = job.name.clone();
    let tell = move |what: &str| {
        eprintln!("tapir: OPERATOR: {what}");
        if let Some(n) = &notify {
            if let Err(e) = job::notify(n, "insert", &job_name, what) {
                eprintln!("tapir: warning: {e}");
            }
        }
    };
    // The drive (and its library) is this job's until the run ends.
    let _drive_lock = tapir::pipeline::joblib::DriveLock::acquire(
        &drive.device,
        &job.name,
        std::time::Duration::from_secs(args.insert_timeout),
        &tell,
    )?;
    let ctx = job::RunContext {
        cfg: &cfg,
        job,
        catalog: catalog_path,
        interrupt: Some(interrupt),
        rescue_kit: tapir::pipeline::rescue::choose(
            std::env::var_os("TAPIR_RESCUE_BINARY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .as_deref(),
            false,
        )?,
        operator: job::Operator {
            timeout: std::time::Duration::from_secs(args.insert_timeout),
            tell: &tell,
        },
    };
    let outcome = super::output::with_write_progress(json, |progress| {
        job::execute_copies(&ctx, lib.as_mut(), plan, &inputs, progress)
    });
    // Removable disks are unmounted and powered off, whatever happened.
    match lib.release() {
        Ok(notes) => {
            for n in notes {
                eprintln!("tapir: {n}");
            }
        }
        Err(e) => eprintln!("tapir: warning: {e}"),
    }
    // Whoever watches the jobs hears of a failure or warnings.
    let said = match &outcome {
        Err(e) => Some(("failed", e.to_string())),
        Ok(o) if o.exit_status() != ExitStatus::Success => {
            Some(("warnings", o.all_warnings().join("; ")))
        }
        Ok(_) => None,
    };
    if let (Some(n), Some((event, message))) = (&cfg.notify, said) {
        if let Err(e) = job::notify(n, event, &job.name, &message) {
            eprintln!("tapir: warning: {e}");
        }
    }
    let outcome = outcome?;
    print_outcome(json, &outcome);
    Ok(outcome.exit_status())
}

fn print_outcome(json: bool, o: &job::RunOutcome) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(o).expect("outcomes serialise")
        );
        return;
    }
    print_copy(o);
    for c in &o.further_copies {
        outln!("copy {} of {}:", c.plan.copy, c.plan.copies);
        print_copy(c);
    }
    if let Some(why) = &o.copy_failed {
        outln!("error: {why}");
    }
}

fn print_copy(o: &job::RunOutcome) {
    for p in &o.passed_over {
        outln!("passed over {p}");
    }
    outln!(
        "job {} ({}): wrote {} entries ({} bytes) to {} ({})",
        o.plan.job,
        o.plan.plan.pool,
        o.write.entries,
        o.write.bytes_written,
        o.write
            .parts
            .iter()
            .map(|p| p.cartridge.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        what(&o.action)
    );
    if o.forgotten_entries > 0 {
        outln!(
            "the catalog forgot the {} entries of the expired set on {}",
            o.forgotten_entries,
            o.cartridge
        );
    }
    for v in &o.verified {
        outln!(
            "verified {}: {} ({})",
            v.cartridge,
            if v.ok { "ok" } else { "FAILED" },
            v.detail
        );
    }
    for e in &o.exported {
        outln!("exported {e}");
    }
    for w in o.plan.plan.warnings.iter().chain(&o.write.warnings) {
        outln!("warning: {w}");
    }
}

/// The plans of a run's copies: the first as it is, later ones under
/// `further_copies` (JSON) or a heading.
fn print_plans(json: bool, plans: &[RunPlan]) {
    if json {
        let mut v = serde_json::to_value(&plans[0]).expect("plans serialise");
        if plans.len() > 1 {
            v["further_copies"] = serde_json::to_value(&plans[1..]).expect("plans serialise");
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&v).expect("plans serialise")
        );
        return;
    }
    for p in plans {
        if p.copies > 1 {
            outln!("copy {} of {}:", p.copy, p.copies);
        }
        print_plan(p);
    }
}

fn print_plan(p: &RunPlan) {
    let tier = p
        .tier
        .map(|t| format!(" ({t:?} tier)").to_lowercase())
        .unwrap_or_default();
    outln!(
        "job {} on {}{tier}: {} backup of {}",
        p.job,
        p.day,
        p.level,
        p.sources.join(", ")
    );
    match p.plan.first() {
        Some(first) => {
            outln!(
                "pool {}: write to {} ({})",
                p.plan.pool,
                first.label,
                what(&first.action)
            );
            outln!("  because: {}", first.reason);
            if !first.present {
                outln!("  it is not in the library: an operator must insert it");
            }
            for c in p.plan.candidates.iter().skip(1) {
                outln!("  else {} ({}): {}", c.label, what(&c.action), c.reason);
            }
        }
        None => outln!("pool {}: no usable cartridge", p.plan.pool),
    }
    if p.verify {
        outln!("then verify what was written");
    }
    if let Some(to) = &p.export {
        outln!("then export the cartridges written to {to}");
    }
    if !p.plan.refused.is_empty() {
        outln!("not usable:");
        for r in &p.plan.refused {
            outln!("  {}: {}", r.label, r.reason);
        }
    }
    for w in &p.plan.warnings {
        outln!("warning: {w}");
    }
}

fn what(a: &Action) -> String {
    match a {
        Action::Append { set } => format!("append to set \"{set}\""),
        Action::NewSet => "start a new set".into(),
        Action::Reuse => "reuse: check its label, then start a new set on it".into(),
        Action::ReadLabelFirst => "read its label; use it only if blank".into(),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SystemdCommand {
    /// Write a service and a timer for every job with a schedule: into
    /// DIR (e.g. /etc/systemd/system), or to standard output.
    Generate {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The tapir binary the services run (default: this one).
        #[arg(long, value_name = "PATH")]
        tapir: Option<PathBuf>,
    },
}

pub fn systemd(
    cmd: &SystemdCommand,
    config: Option<&std::path::Path>,
) -> anyhow::Result<ExitStatus> {
    let SystemdCommand::Generate { dir, tapir } = cmd;
    let mut cfg = Config::load(&config_path(config)).map_err(Error::from)?;
    // The services run from anywhere: name the file absolutely.
    if let Ok(abs) = std::fs::canonicalize(&cfg.path) {
        cfg.path = abs;
    }
    let tapir = match tapir {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let units = tapir::config::systemd::units(&cfg, &tapir);
    if units.is_empty() {
        eprintln!("tapir: no job in {} has a schedule", cfg.path.display());
        return Ok(ExitStatus::Warnings);
    }
    for u in &units {
        match dir {
            Some(d) => {
                let path = d.join(&u.name);
                std::fs::write(&path, &u.text)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                outln!("wrote {}", path.display());
            }
            None => out!("# {}\n{}\n", u.name, u.text),
        }
    }
    if dir.is_some() {
        outln!(
            "then: systemctl daemon-reload && systemctl enable --now {}",
            units
                .iter()
                .filter(|u| u.name.ends_with(".timer"))
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(ExitStatus::Success)
}

/// `restore --at TIME --job JOB`: the job's tree as of a time, gathered
/// from its full and incremental sessions through the host catalog.
pub fn restore_at(
    g: &Globals<'_>,
    job: &str,
    at: &str,
    copy: Option<u8>,
    opts: tapir::pipeline::restore::RestoreOptions,
    operator_timeout: u64,
) -> anyhow::Result<ExitStatus> {
    let Globals {
        catalog,
        config,
        device,
        json,
    } = *g;
    let at = parse_now(at)?;
    // The device's library: a virtual one, or the configuration's changer
    // for the st drive named.
    let mut lib: Box<dyn JobLibrary> = match device.strip_prefix("vtape:") {
        Some(dir) => Box::new(
            tapir::device::library::VirtualLibrary::open(std::path::Path::new(dir))
                .map_err(Error::from)?,
        ),
        None => {
            let cfg = Config::load(&config_path(config)).map_err(Error::from)?;
            let drive = cfg
                .drives
                .values()
                .find(|d| d.device == device)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{device}: restore --at loads cartridges itself: name a library (vtape:DIR) or a drive of {} that has a changer",
                        cfg.path.display()
                    ))
                })?
                .clone();
            open_library(
                &cfg,
                &drive,
                std::time::Duration::from_secs(operator_timeout),
            )?
        }
    };
    let catalog = tapir::catalog::resolve_path(catalog);
    let tell = |what: &str| eprintln!("tapir: OPERATOR: {what}");
    let _drive_lock = tapir::pipeline::joblib::DriveLock::acquire(
        device,
        &format!("restore --at of {job}"),
        std::time::Duration::from_secs(operator_timeout),
        &tell,
    )?;
    let operator = job::Operator {
        timeout: std::time::Duration::from_secs(operator_timeout),
        tell: &tell,
    };
    let done = job::restore_at(&catalog, lib.as_mut(), job, at, copy, &opts, &operator);
    if let Ok(notes) = lib.release() {
        for n in notes {
            eprintln!("tapir: {n}");
        }
    }
    let done = done?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&done).expect("summaries serialise")
        );
    } else {
        outln!(
            "job {} as of {}: its session of {} on {} (copy {})",
            done.job,
            done.at,
            done.session_started,
            done.session_cartridge,
            done.copy
        );
        for c in &done.cartridges {
            outln!(
                "  {}: {} entries restored, {} bytes",
                c.cartridge,
                c.restored,
                c.bytes
            );
            for d in c.damaged.iter().chain(&c.failed).chain(&c.refused) {
                outln!("    not restored: {} ({})", d.path, d.reason);
            }
        }
        for m in &done.missing {
            outln!("  missing: {m}: no session in the catalog holds its content any more");
        }
    }
    Ok(done.exit_status())
}
