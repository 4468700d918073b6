//! `tapir run JOB`: gather what the catalog and the library know, let the
//! pure planner (media::plan) choose the cartridge, then carry the plan
//! out: load, label if needed, write, verify, record, export.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::catalog::location::Location;
use crate::catalog::query::{MediaFilter, MediaInfo};
use crate::catalog::Catalog;
use crate::config::{Compression, Config, Job};
use crate::device::{DeviceError, TapeDrive};
use crate::exit::ExitStatus;
use crate::format::label::uuid_text;
use crate::media::plan::{
    self, Action, Cartridge, Known, Pick, Plan, SetFacts, Sources, State, Tier,
};

use super::history::{Base, Decisions, History, SeenLog};
use super::joblib::JobLibrary;
use super::rescue::KitChoice;
use super::source::WalkOptions;
use super::volume::{label_cartridge, read_label, LabelState};
use super::writer::{write_session_spanning, Baseline, WriteOptions, WriteProgress, WriteSummary};
use super::{Error, Result};
use crate::config::Level;
use crate::format::meta::{JobRun, LEVEL_DIFFERENTIAL, LEVEL_FULL, LEVEL_INCREMENTAL};

/// What a run would do, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub job: String,
    /// The day the run counts as (UTC), for its GFS tier.
    pub day: String,
    pub tier: Option<Tier>,
    pub level: &'static str,
    /// Which of the pool's copies of the run this plan writes, of how many.
    pub copy: u8,
    pub copies: u8,
    pub sources: Vec<String>,
    pub verify: bool,
    /// Where the written cartridges go afterwards, if anywhere.
    pub export: Option<String>,
    pub plan: Plan,
}

fn state_of(s: &str) -> State {
    match s {
        "full" => State::Full,
        "damaged" => State::Damaged,
        "retired" => State::Retired,
        _ => State::Writable,
    }
}

/// What the planner is told.
pub struct Inventory {
    pub cartridges: Vec<Cartridge>,
    /// Each set with the pool its cartridges belong to.
    pub sets: Vec<(String, SetFacts)>,
}

/// The catalog's cartridges and sets, as the planner sees them, with the
/// library's barcodes marking what is present (and adding what the
/// catalog has never seen).
pub fn inventory(cat: Option<&Catalog>, present: &[String]) -> Result<Inventory> {
    let media: Vec<MediaInfo> = match cat {
        Some(c) => c.media_list(&MediaFilter::default())?,
        None => Vec::new(),
    };
    // One row per label: a live cartridge over a retired one (a reused
    // cartridge's old volume is retired).
    let mut by_label: HashMap<&str, &MediaInfo> = HashMap::new();
    for m in &media {
        match by_label.get(m.brief.label.as_str()) {
            Some(old) if old.brief.state != "retired" => {}
            _ => {
                by_label.insert(&m.brief.label, m);
            }
        }
    }
    let mut cartridges: Vec<Cartridge> = by_label
        .values()
        .map(|m| Cartridge {
            label: m.brief.label.clone(),
            present: present.contains(&m.brief.label),
            location: m.brief.location.as_ref().map(|l| {
                format!(
                    "{} since {}",
                    l.location,
                    crate::catalog::when::ts_text(l.at)
                )
            }),
            worm: m.worm,
            known: Some(Known {
                pool: m.pool.clone(),
                state: state_of(&m.brief.state),
                set: m.set_uuid.clone(),
                holds_data: m.sessions > 0,
                retention_until: m.retention_until,
            }),
        })
        .collect();
    for b in present {
        if !by_label.contains_key(b.as_str()) {
            cartridges.push(Cartridge {
                label: b.clone(),
                present: true,
                location: None,
                worm: false,
                known: None,
            });
        }
    }
    cartridges.sort_by(|a, b| a.label.cmp(&b.label));
    let mut sets = Vec::new();
    if let Some(c) = cat {
        let copies = c.set_copies()?;
        for s in c.sets(None)? {
            let Some(pool) = s
                .cartridges
                .iter()
                .find_map(|x| by_label.get(x.label.as_str()).map(|m| m.pool.clone()))
            else {
                continue;
            };
            let verified = !s.cartridges.is_empty()
                && s.cartridges.iter().all(|x| {
                    media
                        .iter()
                        .any(|m| m.brief.label == x.label && m.verify_ok == Some(true))
                });
            sets.push((
                pool,
                SetFacts {
                    uuid: s.uuid.clone(),
                    name: s.name.clone(),
                    started: s.first_started.unwrap_or(s.created),
                    last_written: s.last_started.unwrap_or(s.created),
                    verified,
                    full: true,
                    copy: copies.get(&s.uuid).copied().unwrap_or(1),
                },
            ));
        }
    }
    Ok(Inventory { cartridges, sets })
}

/// The plans of every copy the pool keeps of a run, first to last, each
/// kept off the cartridges the copies before it would take (what a dry
/// run shows).
pub fn plan_copies(
    cfg: &Config,
    job: &Job,
    cat: Option<&Catalog>,
    inputs: &PlanInputs<'_>,
) -> Result<Vec<RunPlan>> {
    let first = plan_run(cfg, job, cat, &PlanInputs { copy: 1, ..*inputs })?;
    let copies = first.copies;
    let mut plans = vec![first];
    let mut taken: Vec<String> = inputs.taken.to_vec();
    for copy in 2..=copies {
        taken.extend(
            plans
                .last()
                .and_then(|p| p.plan.first())
                .map(|c| c.label.clone()),
        );
        let inputs = PlanInputs {
            copy,
            taken: &taken,
            ..*inputs
        };
        plans.push(plan_run(cfg, job, cat, &inputs)?);
    }
    Ok(plans)
}

/// Carry out `plan` (the first copy), then write the pool's further
/// copies, each planned once the catalog knows what the copies before it
/// took. A copy that cannot be written ends the run with its error in
/// the outcome: the earlier copies stand, and the run does not succeed.
pub fn execute_copies(
    ctx: &RunContext<'_>,
    lib: &mut dyn JobLibrary,
    plan: RunPlan,
    inputs: &PlanInputs<'_>,
    progress: &WriteProgress,
) -> Result<RunOutcome> {
    let copies = plan.copies;
    let mut first = execute(ctx, lib, plan, progress)?;
    for copy in 2..=copies {
        let cat = Catalog::open_existing(&ctx.catalog)?;
        let present = lib.inside()?;
        let inputs = PlanInputs {
            present: &present,
            copy,
            taken: &[],
            ..*inputs
        };
        let plan = plan_run(ctx.cfg, ctx.job, Some(&cat), &inputs)?;
        drop(cat);
        match execute(ctx, lib, plan, progress) {
            Ok(o) => first.further_copies.push(o),
            Err(e) => {
                first.copy_failed = Some(format!("copy {copy} of {copies} was not written: {e}"));
                first.copy_failed_status = Some(e.exit_status());
                break;
            }
        }
    }
    Ok(first)
}

/// The day (UTC) a run at `now` counts as, for its GFS tier.
pub fn day_of(now: i64) -> Result<jiff::civil::Date> {
    Ok(jiff::Timestamp::from_second(now)
        .map_err(|e| Error::Usage(format!("time {now}: {e}")))?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date())
}

/// What a run is planned from besides the configuration and the catalog.
#[derive(Debug, Clone, Copy)]
pub struct PlanInputs<'a> {
    /// Barcodes in the library now.
    pub present: &'a [String],
    pub drive_generation: Option<u8>,
    pub now: i64,
    pub trust_clock: bool,
    /// Which of the pool's copies of the run (1 for the first).
    pub copy: u8,
    /// Cartridges planned for the run's earlier copies.
    pub taken: &'a [String],
}

/// Plan a run of copy `copy` of `job` at `now`, keeping off `taken`.
pub fn plan_run(
    cfg: &Config,
    job: &Job,
    cat: Option<&Catalog>,
    inputs: &PlanInputs<'_>,
) -> Result<RunPlan> {
    let PlanInputs {
        present,
        drive_generation,
        now,
        trust_clock,
        copy,
        taken,
    } = *inputs;
    let day = day_of(now)?;
    let (pool_name, tier) = job.target.pool_on(day);
    let pool = &cfg.pools[pool_name];
    let Inventory { cartridges, sets } = inventory(cat, present)?;
    let of_pool = |name: &str| -> Vec<SetFacts> {
        sets.iter()
            .filter(|(p, _)| p == name)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let pool_sets = of_pool(pool_name);
    let scratch = pool
        .scratch
        .as_ref()
        .map(|s| (&cfg.pools[s].policy, of_pool(s)));
    let sources = Sources {
        scratch: scratch.as_ref().map(|(p, s)| (*p, s.as_slice())),
        drive_generation,
        trust_clock,
        copy,
        taken,
    };
    let plan = plan::plan_job(&pool.policy, &pool_sets, &cartridges, &sources, now);
    // A pool that names where each copy goes decides; else the job does.
    let export = match pool.locations.get(usize::from(copy) - 1) {
        Some(to) => to.clone(),
        None => {
            let by_tier =
                job.export_tiers.is_empty() || tier.is_some_and(|t| job.export_tiers.contains(&t));
            by_tier.then(|| job.export.clone()).flatten()
        }
    };
    Ok(RunPlan {
        job: job.name.clone(),
        day: day.to_string(),
        tier,
        level: match job.level {
            crate::config::Level::Full => "full",
            crate::config::Level::Incremental => "incremental",
            crate::config::Level::Differential => "differential",
        },
        copy,
        copies: pool.copies,
        sources: job
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        verify: job.verify,
        export,
        plan,
    })
}

/// What a run did.
#[derive(Debug, Serialize)]
pub struct RunOutcome {
    #[serde(flatten)]
    pub plan: RunPlan,
    /// The cartridge the job wrote to first, and what it did with it.
    pub cartridge: String,
    #[serde(flatten)]
    pub action: Action,
    /// Candidates passed over when loaded, with the reason.
    pub passed_over: Vec<String>,
    /// Entries the catalog forgot for a reused cartridge.
    pub forgotten_entries: u64,
    pub write: WriteSummary,
    /// How files were found unchanged since the base (incrementals).
    pub unchanged: UnchangedFiles,
    /// Each cartridge written, verified (when the job verifies).
    pub verified: Vec<Verified>,
    /// Cartridges recorded as exported, and where to.
    pub exported: Vec<String>,
    /// 0 full, 1 incremental, 2 differential: what was written (an
    /// incremental with no full before it is written as a full).
    pub level_written: u8,
    /// The pool's further copies of this run, written after this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub further_copies: Vec<RunOutcome>,
    /// A further copy that could not be written, and why: the run then
    /// holds fewer copies than its pool expects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_failed: Option<String>,
    #[serde(skip)]
    pub copy_failed_status: Option<ExitStatus>,
}

/// The job's level for this run: its `JobRun`, the unchanged-file check
/// against the base run (which also notes what this run sees of its
/// files), and a note when an incremental or differential has no base yet
/// and is written full.
fn levels(ctx: &RunContext<'_>, copy: u8) -> Result<(JobRun, History, Option<String>)> {
    let name = ctx.job.name.clone();
    let copy_field = (copy > 1).then_some(copy);
    let history = |base| -> Result<History> {
        Ok(History {
            base,
            seen: Arc::new(Mutex::new(SeenLog::new().map_err(|e| {
                Error::io("creating a temporary list of the files the job sees", e)
            })?)),
            decisions: Arc::new(Decisions::default()),
        })
    };
    let full = |name: String, note: Option<String>| -> Result<(JobRun, History, Option<String>)> {
        let run = JobRun {
            name,
            level: LEVEL_FULL,
            base: None,
            copy: copy_field,
        };
        Ok((run, history(None)?, note))
    };
    let wanted = match ctx.job.level {
        Level::Full => return full(name, None),
        Level::Incremental => LEVEL_INCREMENTAL,
        Level::Differential => LEVEL_DIFFERENTIAL,
    };
    let cat = Catalog::open(&ctx.catalog)?;
    let Some(base) = cat.job_base(&name, wanted == LEVEL_DIFFERENTIAL, copy)? else {
        let which = if copy > 1 {
            format!(" (copy {copy})")
        } else {
            String::new()
        };
        let note = format!(
            "job {name}: no earlier full backup of this job{which} in the catalog; this run is a full one"
        );
        return full(name, Some(note));
    };
    let parts = cat.run_parts(&base)?;
    Ok((
        JobRun {
            name,
            level: wanted,
            base: Some(base.uuid),
            copy: copy_field,
        },
        history(Some(Base {
            catalog: cat,
            parts,
        }))?,
        None,
    ))
}

/// Keep what a complete run saw of its files for the job's next run,
/// and count how it found files unchanged. An interrupted run keeps
/// nothing: the next one compares with the base before it.
fn keep_what_was_seen(
    cat: &mut Catalog,
    ctx: &RunContext<'_>,
    copy: u8,
    write: &WriteSummary,
    seen: &Mutex<SeenLog>,
    decisions: &Decisions,
) -> Result<UnchangedFiles> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = UnchangedFiles {
        by_metadata: decisions.by_metadata.load(Relaxed),
        hashed: decisions.hashed.load(Relaxed),
        changed_by_hash: decisions.changed_by_hash.load(Relaxed),
        facts_kept: 0,
    };
    let log = std::mem::replace(
        &mut *seen.lock().unwrap_or_else(|p| p.into_inner()),
        SeenLog::empty(),
    );
    let Some(last) = write.parts.last() else {
        return Ok(out);
    };
    if write.interrupted {
        return Ok(out);
    }
    let Some(run) = cat.job_base(&ctx.job.name, false, copy)? else {
        return Ok(out);
    };
    if run.cartridge != last.cartridge || run.number != last.session {
        return Ok(out);
    }
    match log.finish() {
        Ok(states) => out.facts_kept = cat.keep_file_states(&run, states)?,
        Err(e) => tracing::warn!(
            "job {}: {e}; its next incremental reads every file it cannot decide by metadata",
            ctx.job.name
        ),
    }
    Ok(out)
}

/// How the run decided which files were unchanged since its base.
#[derive(Debug, Default, Serialize)]
pub struct UnchangedFiles {
    /// Unchanged by metadata, inode and ctime alone: not read.
    pub by_metadata: u64,
    /// Read and hashed because those facts could not decide (no host
    /// facts for the base, or the base saw the file mid-change).
    pub hashed: u64,
    /// Of the hashed ones, those found changed.
    pub changed_by_hash: u64,
    /// Files whose host facts were kept for the next run.
    pub facts_kept: u64,
}

#[derive(Debug, Serialize)]
pub struct Verified {
    pub cartridge: String,
    pub ok: bool,
    pub detail: String,
}

impl RunOutcome {
    /// Success only if everything was written and verified, every copy.
    pub fn exit_status(&self) -> ExitStatus {
        self.further_copies
            .iter()
            .map(RunOutcome::exit_status)
            .chain(self.copy_failed_status)
            .fold(self.own_exit_status(), ExitStatus::max)
    }

    /// Every warning of the run and its copies.
    pub fn all_warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .plan
            .plan
            .warnings
            .iter()
            .chain(&self.write.warnings)
            .cloned()
            .collect();
        for c in &self.further_copies {
            out.extend(
                c.all_warnings()
                    .into_iter()
                    .map(|w| format!("copy {}: {w}", c.plan.copy)),
            );
        }
        out.extend(self.copy_failed.clone());
        out
    }

    fn own_exit_status(&self) -> ExitStatus {
        if self.verified.iter().any(|v| !v.ok) {
            ExitStatus::DataDamage
        } else if self.write.interrupted {
            ExitStatus::Interrupted
        } else if !self.write.warnings.is_empty() || !self.plan.plan.warnings.is_empty() {
            ExitStatus::Warnings
        } else {
            ExitStatus::Success
        }
    }
}

/// Where and how a run writes.
pub struct RunContext<'a> {
    pub cfg: &'a Config,
    pub job: &'a Job,
    pub catalog: PathBuf,
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The rescue kit for cartridges the run labels.
    pub rescue_kit: KitChoice,
    /// Who inserts a cartridge the library lacks, and how long to wait.
    pub operator: Operator<'a>,
}

/// How often the library is looked at while an operator is asked for a cartridge.
const INSERT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// How a run labels the cartridges it takes.
struct Labelling<'a> {
    pool: &'a str,
    block_size: u64,
    job: &'a str,
    day: &'a str,
    copy: u8,
    kit: &'a KitChoice,
}

/// Get the loaded cartridge ready for `pick`, or say why it is passed over.
fn prepare(
    drive: &mut dyn TapeDrive,
    pick: &Pick,
    how: &Labelling<'_>,
    cat: &mut Catalog,
) -> Result<std::result::Result<(Option<String>, u64), String>> {
    let Labelling {
        pool,
        block_size,
        job,
        day,
        copy,
        kit,
    } = *how;
    let state = read_label(drive)?;
    let new_set = Some(match copy {
        1 => format!("{job}-{day}"),
        k => format!("{job}-{day}-copy{k}"),
    });
    match (&pick.action, &state) {
        (Action::Append { set }, LabelState::Tapir(l))
            if l.set.as_ref().is_some_and(|m| &m.set_name == set) =>
        {
            Ok(Ok((Some(set.clone()), 0)))
        }
        (Action::Append { set }, _) => Ok(Err(format!(
            "its label is not that of set \"{set}\" as the catalog says"
        ))),
        (Action::NewSet | Action::ReadLabelFirst, LabelState::Blank) => {
            label_cartridge(drive, &pick.label, pool, block_size, false, kit)?;
            Ok(Ok((new_set, 0)))
        }
        (Action::NewSet | Action::ReadLabelFirst, LabelState::Tapir(l))
            if l.set.is_none() && l.pool == pool =>
        {
            Ok(Ok((new_set, 0)))
        }
        (Action::NewSet, LabelState::Tapir(l)) if l.set.is_none() => {
            // An empty cartridge of the scratch pool joins the job's pool.
            let map = super::volume::map_tape(drive)?;
            if !map.sessions.is_empty() || !map.unknown_files.is_empty() {
                return Ok(Err("it holds data the catalog did not know of".into()));
            }
            label_cartridge(drive, &pick.label, pool, block_size, true, kit)?;
            Ok(Ok((new_set, 0)))
        }
        (Action::Reuse, LabelState::Tapir(l)) => {
            let on_tape = uuid_text(&l.volume_uuid);
            // The live cartridge of that label, as the catalog expired it.
            match cat.media_info(&pick.label).ok() {
                Some(m) if m.brief.state != "retired" && m.brief.uuid == on_tape => {
                    let forgotten = cat.forget_for_reuse(
                        &on_tape,
                        &format!("expired and labelled again for job {job} on {day}"),
                    )?;
                    label_cartridge(drive, &pick.label, pool, block_size, true, kit)?;
                    Ok(Ok((new_set, forgotten)))
                }
                _ => Ok(Err(format!(
                    "its label on tape (volume {on_tape}) is not the one the catalog expired; \
                     not reusing it (scratch it explicitly if it may be destroyed)"
                ))),
            }
        }
        (_, LabelState::Foreign(what)) => Ok(Err(format!(
            "it holds {what}: foreign until someone scratches it"
        ))),
        (_, LabelState::Tapir(l)) => Ok(Err(format!(
            "its label shows {} of pool {}: not what the plan expected",
            l.set
                .as_ref()
                .map_or("no set".to_string(), |m| format!("set \"{}\"", m.set_name)),
            l.pool
        ))),
        (Action::Reuse, LabelState::Blank) => Ok(Err(
            "it is blank, though the catalog says it holds an expired set".into(),
        )),
    }
}

/// Carry out `plan`: load the first candidate that checks out, write the
/// job's sources, verify, and record the export.
pub fn execute(
    ctx: &RunContext<'_>,
    lib: &mut dyn JobLibrary,
    plan: RunPlan,
    progress: &WriteProgress,
) -> Result<RunOutcome> {
    let pool = &ctx.cfg.pools[&plan.plan.pool];
    let block_size = pool.block_size.map_or(256 << 10, u64::from);
    let mut cat = Catalog::open(&ctx.catalog)?;
    let mut passed_over = Vec::new();
    let mut tried: Vec<String> = Vec::new();
    let waiting_since = std::time::Instant::now();
    let (pick, set_name, forgotten, drive) = loop {
        // Candidates in the library now (an operator may have put one in).
        let inside = lib.inside()?;
        let mut chosen = None;
        let mut busy = false;
        let untried: Vec<&Pick> = plan
            .plan
            .candidates
            .iter()
            .filter(|c| inside.contains(&c.label) && !tried.contains(&c.label))
            .collect();
        for pick in untried {
            // A cartridge the changer cannot move is passed over like one
            // that does not check out; nothing was written to it. A busy
            // library (another process finishing a move) is tried again.
            match lib.load(&pick.label) {
                Ok(()) => {}
                // Another job has the drive: wait for it while there is
                // time, or say so (two jobs never share a drive).
                Err(e @ Error::Device(DeviceError::Busy { .. })) => {
                    if waiting_since.elapsed() >= ctx.operator.timeout {
                        return Err(e);
                    }
                    tracing::info!("{e}");
                    busy = true;
                    break;
                }
                Err(e) => {
                    tried.push(pick.label.clone());
                    tracing::warn!("{}: passed over: {e}", pick.label);
                    passed_over.push(format!("{}: {e}", pick.label));
                    continue;
                }
            }
            tried.push(pick.label.clone());
            let mut drive = lib.open_drive()?;
            match prepare(
                drive.as_mut(),
                pick,
                &Labelling {
                    pool: &plan.plan.pool,
                    block_size,
                    job: &ctx.job.name,
                    day: &plan.day,
                    copy: plan.copy,
                    kit: &ctx.rescue_kit,
                },
                &mut cat,
            )? {
                Ok((set, forgotten)) => {
                    chosen = Some((pick.clone(), set, forgotten, drive));
                    break;
                }
                Err(why) => {
                    tracing::warn!("{}: passed over: {why}", pick.label);
                    passed_over.push(format!("{}: {why}", pick.label));
                }
            }
        }
        if let Some(c) = chosen {
            break c;
        }
        if busy {
            std::thread::sleep(INSERT_POLL);
            continue;
        }
        let wanted: Vec<String> = plan
            .plan
            .candidates
            .iter()
            .filter(|c| !tried.contains(&c.label))
            .map(|c| match &c.location {
                Some(at) => format!("{} (last known at {at})", c.label),
                None => c.label.clone(),
            })
            .collect();
        let out_of_time = waiting_since.elapsed() >= ctx.operator.timeout;
        // Media present that the plan does not want, and why (a removable
        // disk plugged in by mistake): nothing is written to them.
        let strangers = if lib.names_strangers() {
            strangers_note(&plan.plan, &inside)
        } else {
            String::new()
        };
        if wanted.is_empty() || out_of_time {
            return Err(Error::Refused(format!(
                "job {}: no cartridge in the library can take it (pool {}){}{strangers}{}",
                ctx.job.name,
                plan.plan.pool,
                if passed_over.is_empty() {
                    String::new()
                } else {
                    format!("; passed over: {}", passed_over.join("; "))
                },
                if wanted.is_empty() {
                    String::new()
                } else {
                    format!("; insert one of: {}", wanted.join(", "))
                }
            )));
        }
        let single = plan
            .plan
            .candidates
            .iter()
            .filter(|c| !tried.contains(&c.label))
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>();
        let ask = format!(
            "job {} needs a cartridge of pool {}: {}{strangers}; waiting up to {} s",
            ctx.job.name,
            plan.plan.pool,
            lib.insert_words(
                &format!("one of {}", wanted.join(", ")),
                (single.len() == 1).then(|| single[0])
            ),
            ctx.operator
                .timeout
                .saturating_sub(waiting_since.elapsed())
                .as_secs()
        );
        (ctx.operator.tell)(&ask);
        let untried: Vec<&str> = plan
            .plan
            .candidates
            .iter()
            .filter(|c| !tried.contains(&c.label))
            .map(|c| c.label.as_str())
            .collect();
        ctx.operator
            .until_inside_noting(lib, &untried, waiting_since, Some(inside))?;
    };
    drop(cat);
    let (job_run, history, level_note) = levels(ctx, plan.copy)?;
    let seen = history.seen.clone();
    let decisions = history.decisions.clone();
    let mut history = history;
    let opts = WriteOptions {
        job: Some(job_run),
        baseline: Some(Baseline::new(Box::new(move |src| history.check(src)))),
        interrupt: ctx.interrupt.clone(),
        catalog: Some(ctx.catalog.clone()),
        sources: ctx.job.sources.clone(),
        set_name,
        walk: WalkOptions {
            excludes: ctx.job.exclude.clone(),
            ..WalkOptions::with_default_excludes()
        },
        system_manifest: ctx.job.system,
        compress: pool.compression == Compression::Zstd,
        rescue_kit: ctx.rescue_kit.clone(),
        ..Default::default()
    };
    let write = {
        let mut supply = lib.supply()?;
        write_session_spanning(drive, supply.as_mut(), &opts, progress)?
    };

    let mut cat = Catalog::open(&ctx.catalog)?;
    let unchanged = keep_what_was_seen(&mut cat, ctx, plan.copy, &write, &seen, &decisions)?;
    let mut verified = Vec::new();
    if ctx.job.verify && !write.interrupted {
        for part in &write.parts {
            lib.load(&part.cartridge)?;
            let mut drive = lib.open_drive()?;
            let v = super::verify::verify(drive.as_mut(), Some(part.session))?;
            // A part of a file that continues on the set's next cartridge
            // is not damage (verify's warning status says only that).
            let ok = v.exit_status() != ExitStatus::DataDamage;
            let detail = format!(
                "{} of {} entries intact, {} bad block run(s){}",
                v.entries_ok,
                v.entries,
                v.bad_blocks.len(),
                match v.spanning_parts.len() {
                    0 => String::new(),
                    n => format!(", {n} part(s) of files that span cartridges"),
                }
            );
            cat.record_verify(&v.volume_uuid, ok, Some(&detail))?;
            verified.push(Verified {
                cartridge: part.cartridge.clone(),
                ok,
                detail,
            });
        }
    }
    let mut exported = Vec::new();
    if let Some(to) = &plan.export {
        let loc: Location = to
            .parse()
            .map_err(|e| Error::Usage(format!("export location {to:?}: {e}")))?;
        for part in &write.parts {
            lib.export(&part.cartridge)?;
            cat.move_media(
                &part.cartridge,
                &loc,
                "tapir run",
                Some(&format!("exported after job {}", ctx.job.name)),
            )?;
            exported.push(format!("{} to {loc}", part.cartridge));
        }
    }
    let mut plan = plan;
    plan.plan.warnings.extend(level_note);
    Ok(RunOutcome {
        level_written: opts.job.as_ref().map_or(0, |j| j.level),
        cartridge: pick.label.clone(),
        action: pick.action.clone(),
        plan,
        passed_over,
        forgotten_entries: forgotten,
        write,
        unchanged,
        further_copies: Vec::new(),
        copy_failed: None,
        copy_failed_status: None,
        verified,
        exported,
    })
}

/// Media present that `plan` does not want, with the planner's reason.
fn strangers_note(plan: &Plan, inside: &[String]) -> String {
    let strangers: Vec<String> = inside
        .iter()
        .filter(|b| !plan.candidates.iter().any(|c| &c.label == *b))
        .map(|b| match plan.refused.iter().find(|r| &r.label == b) {
            Some(r) => format!("{b} ({})", r.reason),
            None => b.clone(),
        })
        .collect();
    if strangers.is_empty() {
        String::new()
    } else {
        format!(
            "; present but not usable for this job, and left untouched: {}",
            strangers.join(", ")
        )
    }
}

/// Run the configured notify command for `event` ("insert", "failed",
/// "warnings"), with `TAPIR_EVENT`, `TAPIR_JOB` and `TAPIR_MESSAGE` in its
/// environment and the message as its last argument. As root, it runs as
/// the configured user (default `nobody`) with that user's group only,
/// never as root.
pub fn notify(n: &crate::config::Notify, event: &str, job: &str, message: &str) -> Result<()> {
    let mut argv: Vec<String> = Vec::new();
    if nix::unistd::geteuid().is_root() {
        let name = n.user.as_deref().unwrap_or("nobody");
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .filter(|u| !u.uid.is_root())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "notify: no unprivileged user {name:?} to run {} as",
                    n.command[0]
                ))
            })?;
        // util-linux's setpriv drops root's supplementary groups as well,
        // which std cannot do without unsafe code.
        argv.extend([
            "setpriv".to_string(),
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--clear-groups".to_string(),
            "--".to_string(),
        ]);
    }
    argv.extend(n.command.iter().cloned());
    argv.push(message.to_string());
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("TAPIR_EVENT", event)
        .env("TAPIR_JOB", job)
        .env("TAPIR_MESSAGE", message)
        .stdin(std::process::Stdio::null())
        .current_dir("/")
        .status()
        .map_err(|e| Error::io(format!("running the notify command {}", n.command[0]), e))?;
    if !status.success() {
        return Err(Error::Usage(format!(
            "the notify command {} failed ({status})",
            n.command[0]
        )));
    }
    Ok(())
}

/// What `restore --at` did: the job's session it restored as of the date,
/// and one restore per cartridge it read.
#[derive(Debug, Serialize)]
pub struct RestoredAt {
    pub job: String,
    /// Which of the pool's copies was restored.
    pub copy: u8,
    pub at: String,
    /// The session the tree is as of: when it started, and where it is.
    pub session_started: String,
    pub session_cartridge: String,
    pub cartridges: Vec<super::restore::RestoreSummary>,
    /// Paths whose content no session of the catalog holds any more.
    pub missing: Vec<String>,
}

impl RestoredAt {
    pub fn exit_status(&self) -> ExitStatus {
        let worst = self
            .cartridges
            .iter()
            .map(|c| c.exit_status())
            .max()
            .unwrap_or(ExitStatus::Success);
        if self.missing.is_empty() {
            worst
        } else {
            worst.max(ExitStatus::DataDamage)
        }
    }
}

/// Restore `job`'s tree as it was at `at`: its newest session by then, each
/// file from the session that holds its content (following incrementals
/// back to their full), reading each cartridge once, oldest first, so the
/// newest session's directories get their times last. Of a pool's copies,
/// `copy`, or else the one needing the fewest cartridges from outside the
/// library (the first copy on a tie).
pub fn restore_at(
    catalog: &Path,
    lib: &mut dyn JobLibrary,
    job: &str,
    at: i64,
    copy: Option<u8>,
    opts: &super::restore::RestoreOptions,
    operator: &Operator<'_>,
) -> Result<RestoredAt> {
    use std::collections::{BTreeMap, HashSet};
    let cat = Catalog::open_existing(catalog)?;
    let inside = lib.inside()?;
    let mut best: Option<(usize, u8, JobSessionContents)> = None;
    let wanted: Vec<u8> = match copy {
        Some(k) => vec![k],
        None => (1..=crate::config::MAX_COPIES).collect(),
    };
    for k in wanted {
        let Some(session) = cat.job_session_at(job, at, k)? else {
            continue;
        };
        let (contents, missing) = cat.contents_at(&session)?;
        let outside: HashSet<&str> = contents
            .iter()
            .map(|c| c.cartridge.as_str())
            .filter(|c| !inside.iter().any(|i| i == c))
            .collect();
        let outside = outside.len();
        if best.as_ref().is_none_or(|(n, _, _)| outside < *n) {
            best = Some((outside, k, (session, contents, missing)));
        }
    }
    let Some((_, copy, (session, contents, missing))) = best else {
        let which = copy.map_or(String::new(), |k| format!(" (copy {k})"));
        return Err(Error::Refused(format!(
            "the catalog holds no complete session of job {job}{which} from before {}",
            crate::catalog::when::ts_text(at)
        )));
    };
    let whereabouts: HashMap<String, String> = cat
        .media_list(&MediaFilter::default())?
        .into_iter()
        .filter_map(|m| {
            let at = m.brief.location?;
            Some((m.brief.label, at.location.to_string()))
        })
        .collect();
    drop(cat);
    // Per cartridge: the newest session read from it, and what to restore.
    // Oldest first, and a run's parts in the order written (a file cut at
    // a cartridge's end is joined when its next part is restored).
    type Selection = HashMap<u32, HashSet<Vec<u8>>>;
    let mut by_cartridge: BTreeMap<String, ((i64, usize), Selection)> = BTreeMap::new();
    for c in contents {
        let e = by_cartridge.entry(c.cartridge).or_default();
        e.0 = e.0.max(c.order);
        e.1.entry(c.number).or_default().insert(c.path);
    }
    let mut order: Vec<(String, (i64, usize), Selection)> = by_cartridge
        .into_iter()
        .map(|(c, (t, sel))| (c, t, sel))
        .collect();
    order.sort_by_key(|(_, t, _)| *t);
    let mut cartridges = Vec::new();
    for (cartridge, _, selection) in order {
        if !lib.inside()?.contains(&cartridge) {
            operator.wait_for(&*lib, &cartridge, whereabouts.get(&cartridge))?;
        }
        operator.load(lib, &cartridge)?;
        let mut drive = lib.open_drive()?;
        let o = super::restore::RestoreOptions {
            selection: Some(selection),
            patterns: Vec::new(),
            session: None,
            ..opts.clone()
        };
        cartridges.push(super::restore::restore(drive.as_mut(), &o)?);
    }
    Ok(RestoredAt {
        job: job.to_string(),
        copy,
        at: crate::catalog::when::ts_text(at),
        session_started: crate::catalog::when::ts_text(session.started),
        session_cartridge: session.cartridge,
        cartridges,
        missing: missing
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
    })
}

/// A run as of a date: its last part, where each path's content is, and
/// the paths whose content no session holds any more.
type JobSessionContents = (
    crate::catalog::levels::JobSession,
    Vec<crate::catalog::levels::ContentAt>,
    Vec<Vec<u8>>,
);

/// Someone who can put cartridges into the library.
pub struct Operator<'a> {
    pub timeout: std::time::Duration,
    /// Tells the operator what is needed.
    pub tell: &'a dyn Fn(&str),
}

impl Operator<'_> {
    /// Ask for `label` (last known at `whereabouts`) and wait until it is
    /// in the library.
    pub fn wait_for(
        &self,
        lib: &dyn JobLibrary,
        label: &str,
        whereabouts: Option<&String>,
    ) -> Result<()> {
        let at = whereabouts.map_or(String::new(), |w| format!(" (last known at {w})"));
        let insert = lib.insert_words(&format!("cartridge {label}{at}"), Some(label));
        let known = lib.names_strangers().then(|| lib.inside()).transpose()?;
        if self.timeout.is_zero() {
            return Err(Error::Refused(format!(
                "cartridge {label}{at} is not in the library; {insert} and retry"
            )));
        }
        (self.tell)(&format!(
            "{insert}; waiting up to {} s",
            self.timeout.as_secs()
        ));
        if self.until_inside_noting(lib, &[label], std::time::Instant::now(), known)? {
            return Ok(());
        }
        Err(Error::Device(DeviceError::NoMedium {
            device: format!("{} (waiting for {label})", lib.name()),
        }))
    }

    /// Wait, while `since` is within the timeout, until one of `labels` is
    /// in the library; whether one is.
    pub fn until_inside(
        &self,
        lib: &dyn JobLibrary,
        labels: &[&str],
        since: std::time::Instant,
    ) -> Result<bool> {
        self.until_inside_noting(lib, labels, since, None)
    }

    /// [`Operator::until_inside`], telling the operator at once about
    /// media that arrive and are not among `labels`, when the library
    /// names them ([`JobLibrary::names_strangers`]); `known` is what was
    /// present when the operator was asked (None: what is present at the
    /// first look).
    pub fn until_inside_noting(
        &self,
        lib: &dyn JobLibrary,
        labels: &[&str],
        since: std::time::Instant,
        known: Option<Vec<String>>,
    ) -> Result<bool> {
        let mut seen = known;
        while since.elapsed() < self.timeout {
            let inside = lib.inside()?;
            if inside.iter().any(|b| labels.contains(&b.as_str())) {
                return Ok(true);
            }
            // A removable disk plugged in that is not one asked for: say so
            // at once (it is never written to).
            if lib.names_strangers() {
                if let Some(before) = &seen {
                    for b in inside.iter().filter(|b| !before.contains(b)) {
                        (self.tell)(&format!(
                            "{b} is not the one needed here: expected {}; unplug {b} and {}",
                            labels.join(" or "),
                            lib.insert_words(
                                &labels.join(" or "),
                                (labels.len() == 1).then(|| labels[0])
                            )
                        ));
                    }
                }
                seen = Some(inside);
            }
            std::thread::sleep(INSERT_POLL);
        }
        Ok(false)
    }

    /// Load `label`, waiting while the library is busy with someone
    /// else's move (the operator's import may still hold it).
    pub fn load(&self, lib: &mut dyn JobLibrary, label: &str) -> Result<()> {
        let since = std::time::Instant::now();
        loop {
            match lib.load(label) {
                Err(Error::Device(DeviceError::Busy { .. })) if since.elapsed() < self.timeout => {
                    std::thread::sleep(INSERT_POLL)
                }
                r => return r,
            }
        }
    }
}
