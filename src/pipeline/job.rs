//! `tapir run JOB`: gather what the catalog and the library know, let the
//! pure planner (media::plan) choose the cartridge, then carry the plan
//! out: load, label if needed, write, verify, record, export.

use std::collections::HashMap;

use serde::Serialize;

use crate::catalog::query::{MediaFilter, MediaInfo};
use crate::catalog::Catalog;
use crate::config::{Config, Job};
use crate::device::library::VirtualLibrary;
use crate::device::Changer;
use crate::media::plan::{self, Cartridge, Known, Plan, SetFacts, Sources, State, Tier};

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
