//! `tapir run JOB`: gather what the catalog and the library know, let the
//! pure planner (media::plan) choose the cartridge, then carry the plan
//! out: load, label if needed, write, verify, record, export.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;

use crate::catalog::location::Location;
use crate::catalog::query::{MediaFilter, MediaInfo};
use crate::catalog::Catalog;
use crate::config::{Compression, Config, Job};
use crate::device::library::VirtualLibrary;
use crate::device::{Changer, TapeDrive};
use crate::exit::ExitStatus;
use crate::format::label::uuid_text;
use crate::media::plan::{
    self, Action, Cartridge, Known, Pick, Plan, SetFacts, Sources, State, Tier,
};

use super::rescue::KitChoice;
use super::source::WalkOptions;
use super::span::LibrarySupply;
use super::volume::{label_cartridge, read_label, LabelState};
use super::writer::{write_session_spanning, WriteOptions, WriteProgress, WriteSummary};
use super::{Error, Result};

/// What a run would do, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub job: String,
    /// The day the run counts as (UTC), for its GFS tier.
    pub day: String,
    pub tier: Option<Tier>,
    pub level: &'static str,
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
                worm: false,
                known: None,
            });
        }
    }
    cartridges.sort_by(|a, b| a.label.cmp(&b.label));
    let mut sets = Vec::new();
    if let Some(c) = cat {
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
                },
            ));
        }
    }
    Ok(Inventory { cartridges, sets })
}

/// Barcodes in the library now (slots and drive).
pub fn present_in(lib: &VirtualLibrary) -> Result<Vec<String>> {
    let inv = lib.inventory()?;
    Ok(inv
        .slots
        .into_iter()
        .filter_map(|(_, b)| b)
        .chain(inv.drive.map(|(b, _)| b))
        .collect())
}

/// Plan a run of `job` at `now`.
pub fn plan_run(
    cfg: &Config,
    job: &Job,
    cat: Option<&Catalog>,
    present: &[String],
    drive_generation: Option<u8>,
    now: i64,
    trust_clock: bool,
) -> Result<RunPlan> {
    let day = jiff::Timestamp::from_second(now)
        .map_err(|e| Error::Usage(format!("time {now}: {e}")))?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
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
    };
    let plan = plan::plan_job(&pool.policy, &pool_sets, &cartridges, &sources, now);
    let exported = job.export.is_some()
        && (job.export_tiers.is_empty() || tier.is_some_and(|t| job.export_tiers.contains(&t)));
    Ok(RunPlan {
        job: job.name.clone(),
        day: day.to_string(),
        tier,
        level: match job.level {
            crate::config::Level::Full => "full",
            crate::config::Level::Incremental => "incremental",
            crate::config::Level::Differential => "differential",
        },
        sources: job
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        verify: job.verify,
        export: exported.then(|| job.export.clone()).flatten(),
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
    /// Each cartridge written, verified (when the job verifies).
    pub verified: Vec<Verified>,
    /// Cartridges recorded as exported, and where to.
    pub exported: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Verified {
    pub cartridge: String,
    pub ok: bool,
    pub detail: String,
}

impl RunOutcome {
    /// Success only if everything was written and verified.
    pub fn exit_status(&self) -> ExitStatus {
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
    /// The virtual library the job's drive belongs to.
    pub library: &'a Path,
    pub catalog: PathBuf,
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The rescue kit for cartridges the run labels.
    pub rescue_kit: KitChoice,
}

/// How a run labels the cartridges it takes.
struct Labelling<'a> {
    pool: &'a str,
    block_size: u64,
    job: &'a str,
    day: &'a str,
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
        kit,
    } = *how;
    let state = read_label(drive)?;
    let new_set = Some(format!("{job}-{day}"));
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
            let known = cat
                .media_list(&MediaFilter::default())?
                .into_iter()
                .find(|m| m.brief.label == pick.label && m.brief.state != "retired");
            match known {
                Some(m) if m.brief.uuid == on_tape => {
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
    plan: RunPlan,
    progress: &WriteProgress,
) -> Result<RunOutcome> {
    let pool = &ctx.cfg.pools[&plan.plan.pool];
    let block_size = pool.block_size.map_or(256 << 10, u64::from);
    let mut cat = Catalog::open(&ctx.catalog)?;
    let mut lib = VirtualLibrary::open(ctx.library)?;
    let mut passed_over = Vec::new();
    let mut chosen = None;
    for pick in plan.plan.candidates.iter().filter(|c| c.present) {
        // A cartridge the changer cannot move is passed over like one that
        // does not check out; nothing was written to it.
        if let Err(e) = lib.load_barcode(&pick.label) {
            tracing::warn!("{}: passed over: {e}", pick.label);
            passed_over.push(format!("{}: {e}", pick.label));
            continue;
        }
        let mut drive = lib.open_drive()?;
        match prepare(
            &mut drive,
            pick,
            &Labelling {
                pool: &plan.plan.pool,
                block_size,
                job: &ctx.job.name,
                day: &plan.day,
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
    let Some((pick, set_name, forgotten, drive)) = chosen else {
        let absent: Vec<&str> = plan
            .plan
            .candidates
            .iter()
            .filter(|c| !c.present)
            .map(|c| c.label.as_str())
            .collect();
        return Err(Error::Refused(format!(
            "job {}: no cartridge in the library can take it (pool {}){}{}",
            ctx.job.name,
            plan.plan.pool,
            if passed_over.is_empty() {
                String::new()
            } else {
                format!("; passed over: {}", passed_over.join("; "))
            },
            if absent.is_empty() {
                String::new()
            } else {
                format!("; insert one of: {}", absent.join(", "))
            }
        )));
    };
    drop(cat);
    let opts = WriteOptions {
        interrupt: ctx.interrupt.clone(),
        catalog: Some(ctx.catalog.clone()),
        sources: ctx.job.sources.clone(),
        set_name,
        walk: WalkOptions {
            excludes: ctx.job.exclude.clone(),
            one_file_system: false,
        },
        compress: pool.compression == Compression::Zstd,
        rescue_kit: ctx.rescue_kit.clone(),
        ..Default::default()
    };
    let mut supply = LibrarySupply::new(VirtualLibrary::open(ctx.library)?)?;
    let write = write_session_spanning(Box::new(drive), &mut supply, &opts, progress)?;
    drop(supply);

    let mut cat = Catalog::open(&ctx.catalog)?;
    let mut verified = Vec::new();
    if ctx.job.verify && !write.interrupted {
        for part in &write.parts {
            lib.load_barcode(&part.cartridge)?;
            let mut drive = lib.open_drive()?;
            let v = super::verify::verify(&mut drive, Some(part.session))?;
            let ok = v.exit_status() == ExitStatus::Success;
            let detail = format!(
                "{} of {} entries intact, {} bad block run(s)",
                v.entries_ok,
                v.entries,
                v.bad_blocks.len()
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
    Ok(RunOutcome {
        cartridge: pick.label.clone(),
        action: pick.action.clone(),
        plan,
        passed_over,
        forgotten_entries: forgotten,
        write,
        verified,
        exported,
    })
}
