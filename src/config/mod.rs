//! The configuration file (`/etc/tapir/tapir.toml`): drives, changers,
//! pools and jobs. Parsed and validated here, with errors that name the
//! file, the line and the key; nothing else reads TOML.
//!
//! ```toml
//! [drive.lto9]
//! device = "/dev/nst0"
//! changer = "lib"
//! generation = 9
//!
//! [changer.lib]
//! device = "/dev/sg3"
//!
//! [pool.daily]
//! retention = "14d"
//! allocation = "new-set-per-job"
//!
//! [job.nightly]
//! sources = ["/etc", "/home"]
//! gfs = { daily = "daily", weekly = "weekly", monthly = "monthly", weekly_on = "sunday" }
//! schedule = "Mon..Sun 01:00"
//!
//! [job.system]
//! sources = ["/"]
//! pool = "daily"
//! system = true        # also store the system manifest (docs/BARE-METAL.md)
//! ```

pub mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::media::plan::{Allocation, Period, PoolPolicy, Tier, DAY};

/// Where the configuration is read from unless `--config` or
/// `$TAPIR_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/tapir/tapir.toml";

/// A configuration problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// Not TOML, or not the shape tapir expects (the message names the key).
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// A size with a unit: 4096, 256K, 4G (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..]
                .trim_end_matches(['B', 'b', 'i'])
                .to_ascii_uppercase();
            let m = match unit.as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}; use K, M, G or T")),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 4096, 256K, 4G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration in whole days, weeks, months (30 days) or years (365
/// days): `14d`, `5w`, `6m`, `7y`. Returns seconds.
pub fn parse_retention(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; use d, w, m or y (e.g. 14d)"))?;
    let n: i64 = t[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 14d, 5w, 6m, 7y)"))?;
    let days = match &t[split..] {
        "d" => 1,
        "w" => 7,
        "m" => 30,
        "y" => 365,
        u => return Err(format!("unknown unit {u:?} in {s:?}; use d, w, m or y")),
    };
    n.checked_mul(days * DAY)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} must be positive and reasonable"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    catalog: Option<RawCatalog>,
    #[serde(default)]
    drive: BTreeMap<String, RawDrive>,
    #[serde(default)]
    changer: BTreeMap<String, RawChanger>,
    #[serde(default)]
    pool: BTreeMap<String, RawPool>,
    #[serde(default)]
    job: BTreeMap<String, RawJob>,
    notify: Option<RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    command: Spanned<Vec<String>>,
    user: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrive {
    device: String,
    changer: Option<Spanned<String>>,
    generation: Option<Spanned<u8>>,
    element: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChanger {
    device: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    retention: Spanned<String>,
    allocation: Option<Spanned<String>>,
    block_size: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
    copies: Option<Spanned<u32>>,
    /// Where each copy goes once written: "library", "shelf" or "vault:NAME".
    locations: Option<Spanned<Vec<String>>>,
    keep_sets: Option<u32>,
    scratch: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    sources: Spanned<Vec<PathBuf>>,
    #[serde(default)]
    exclude: Vec<String>,
    pool: Option<Spanned<String>>,
    gfs: Option<Spanned<RawGfs>>,
    level: Option<Spanned<String>>,
    #[serde(default)]
    verify: bool,
    drive: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    /// Where this job's cartridges go once written: `vault:NAME` or `shelf`.
    export: Option<Spanned<String>>,
    /// Which tiers are exported (default: all).
    export_tiers: Option<Vec<Spanned<String>>>,
    /// Store the system manifest for a bare-metal restore (`write --system`).
    #[serde(default)]
    system: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGfs {
    daily: Spanned<String>,
    weekly: Spanned<String>,
    monthly: Spanned<String>,
    weekly_on: Option<Spanned<String>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub catalog: Option<PathBuf>,
    pub drives: BTreeMap<String, Drive>,
    pub changers: BTreeMap<String, Changer>,
    pub pools: BTreeMap<String, Pool>,
    pub jobs: BTreeMap<String, Job>,
    pub notify: Option<Notify>,
}

/// A command told about what needs a person: a cartridge to insert, a
/// job that failed or ended with warnings. It runs as `user` (never as
/// root; `nobody` when tapir runs as root and none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub device: String,
    pub changer: Option<String>,
    pub generation: Option<u8>,
    /// Which of the changer's drives this is, counted from 0 (None: the
    /// only one, or found by serial number).
    pub element: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changer {
    pub device: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The drive's own (tape) — nothing in software.
    Drive,
    Zstd,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub policy: PoolPolicy,
    pub block_size: Option<u32>,
    pub compression: Compression,
    /// How many copies of each run the pool keeps, each a set of its own
    /// on other cartridges (written one after the other).
    pub copies: u8,
    /// Where copy k goes once written (`locations[k-1]`); None: it stays
    /// in the library. Empty: the job's `export` decides for every copy.
    pub locations: Vec<Option<String>>,
    /// A pool whose empty and expired cartridges this one may take.
    pub scratch: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Full,
    Incremental,
    Differential,
}

/// Which pool a job writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pool(String),
    Gfs {
        daily: String,
        weekly: String,
        monthly: String,
        weekly_on: jiff::civil::Weekday,
    },
}

impl Target {
    /// The pool for a run on `day`, and its GFS tier if any.
    pub fn pool_on(&self, day: jiff::civil::Date) -> (&str, Option<Tier>) {
        match self {
            Target::Pool(p) => (p, None),
            Target::Gfs {
                daily,
                weekly,
                monthly,
                weekly_on,
            } => {
                let tier = crate::media::plan::gfs_tier(day, *weekly_on);
                let pool = match tier {
                    Tier::Daily => daily,
                    Tier::Weekly => weekly,
                    Tier::Monthly => monthly,
                };
                (pool, Some(tier))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub sources: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub target: Target,
    pub level: Level,
    pub verify: bool,
    pub drive: Option<String>,
    pub schedule: Option<String>,
    pub export: Option<String>,
    /// Tiers whose cartridges are exported (empty: every run's).
    pub export_tiers: Vec<Tier>,
    /// Store the system manifest (FORMAT.md §7.6), as `write --system` does.
    pub system: bool,
}

/// Resolves byte offsets in the file to line numbers for messages.
struct Located<'a> {
    file: String,
    text: &'a str,
}

impl Located<'_> {
    fn line(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line(span.start),
            key: key.to_string(),
            message: message.into(),
        })
    }
}

fn weekday(s: &str) -> Option<jiff::civil::Weekday> {
    use jiff::civil::Weekday::*;
    Some(match s.to_ascii_lowercase().as_str() {
        "monday" | "mon" => Monday,
        "tuesday" | "tue" => Tuesday,
        "wednesday" | "wed" => Wednesday,
        "thursday" | "thu" => Thursday,
        "friday" | "fri" => Friday,
        "saturday" | "sat" => Saturday,
        "sunday" | "sun" => Sunday,
        _ => return None,
    })
}

fn tier(s: &str) -> Option<Tier> {
    Some(match s {
        "daily" => Tier::Daily,
        "weekly" => Tier::Weekly,
        "monthly" => Tier::Monthly,
        _ => return None,
    })
}

/// Most copies a pool can ask for.
pub const MAX_COPIES: u8 = 4;

/// A location a cartridge can be exported to.
fn valid_export(s: &str) -> bool {
    s == "shelf" || s.strip_prefix("vault:").is_some_and(|n| !n.is_empty())
}

impl Config {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validate `text`, read from `path` (for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = Located {
            file: path.display().to_string(),
            text,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| at.line(s.start));
            ConfigError::Syntax {
                file: at.file.clone(),
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut cfg = Config {
            path: path.to_path_buf(),
            catalog: raw.catalog.map(|c| c.path),
            drives: BTreeMap::new(),
            changers: raw
                .changer
                .into_iter()
                .map(|(n, c)| (n, Changer { device: c.device }))
                .collect(),
            pools: BTreeMap::new(),
            jobs: BTreeMap::new(),
            notify: None,
        };
        if let Some(n) = raw.notify {
            if n.command.get_ref().is_empty() || n.command.get_ref()[0].is_empty() {
                return at.err(n.command.span(), "notify.command", "give the program and its arguments, e.g. [\"/usr/local/bin/page\", \"backup\"]");
            }
            if let Some(u) = &n.user {
                if u.get_ref() == "root" || u.get_ref().is_empty() {
                    return at.err(
                        u.span(),
                        "notify.user",
                        "the notify command never runs as root; name an unprivileged user",
                    );
                }
            }
            cfg.notify = Some(Notify {
                command: n.command.into_inner(),
                user: n.user.map(Spanned::into_inner),
            });
        }
        for (name, d) in raw.drive {
            if let Some(c) = &d.changer {
                if !cfg.changers.contains_key(c.get_ref()) {
                    return at.err(
                        c.span(),
                        &format!("drive.{name}.changer"),
                        format!("no [changer.{}] is declared", c.get_ref()),
                    );
                }
            }
            if let Some(g) = &d.generation {
                if !(1..=12).contains(g.get_ref()) {
                    return at.err(
                        g.span(),
                        &format!("drive.{name}.generation"),
                        "an LTO generation is 1 to 12",
                    );
                }
            }
            cfg.drives.insert(
                name,
                Drive {
                    device: d.device,
                    changer: d.changer.map(Spanned::into_inner),
                    generation: d.generation.map(Spanned::into_inner),
                    element: d.element,
                },
            );
        }
        for (name, p) in &raw.pool {
            let key = |k: &str| format!("pool.{name}.{k}");
            let retention = parse_retention(p.retention.get_ref())
                .or_else(|m| at.err(p.retention.span(), &key("retention"), m))?;
            let allocation = match p.allocation.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("new-set-per-job", _)) => Allocation::NewSetPerJob,
                Some(("append", _)) => Allocation::Append,
                Some(("new-set-daily", _)) => Allocation::NewSetEvery(Period::Day),
                Some(("new-set-weekly", _)) => Allocation::NewSetEvery(Period::Week),
                Some(("new-set-monthly", _)) => Allocation::NewSetEvery(Period::Month),
                Some((other, span)) => {
                    return at.err(
                        span,
                        &key("allocation"),
                        format!("{other:?}: use append, new-set-per-job, new-set-daily, new-set-weekly or new-set-monthly"),
                    )
                }
            };
            let block_size = match &p.block_size {
                None => None,
                Some(b) => {
                    let n = parse_size(b.get_ref())
                        .or_else(|m| at.err(b.span(), &key("block_size"), m))?;
                    if !(512..=(8 << 20)).contains(&n) {
                        return at.err(b.span(), &key("block_size"), "a block is 512 bytes to 8M");
                    }
                    Some(n as u32)
                }
            };
            let compression = match p
                .compression
                .as_ref()
                .map(|c| (c.get_ref().as_str(), c.span()))
            {
                None | Some(("drive", _)) => Compression::Drive,
                Some(("zstd", _)) => Compression::Zstd,
                Some(("none", _)) => Compression::None,
                Some((other, span)) => {
                    return at.err(
                        span,
                        &key("compression"),
                        format!("{other:?}: use drive, zstd or none"),
                    )
                }
            };
            if let Some(s) = &p.scratch {
                if !raw.pool.contains_key(s.get_ref()) || s.get_ref() == name {
                    return at.err(
                        s.span(),
                        &key("scratch"),
                        format!("{:?} is not another declared pool", s.get_ref()),
                    );
                }
            }
            let copies = match &p.copies {
                None => 1,
                Some(c) if (1..=MAX_COPIES as u32).contains(c.get_ref()) => *c.get_ref() as u8,
                Some(c) => {
                    return at.err(
                        c.span(),
                        &key("copies"),
                        format!("{}: a pool keeps 1 to {MAX_COPIES} copies", c.get_ref()),
                    )
                }
            };
            let mut locations = Vec::new();
            if let Some(l) = &p.locations {
                if l.get_ref().len() != copies as usize {
                    return at.err(
                        l.span(),
                        &key("locations"),
                        format!(
                            "{} location(s) for {copies} copies: name one per copy",
                            l.get_ref().len()
                        ),
                    );
                }
                for where_to in l.get_ref() {
                    if where_to == "library" {
                        locations.push(None);
                    } else if valid_export(where_to) {
                        locations.push(Some(where_to.clone()));
                    } else {
                        return at.err(
                            l.span(),
                            &key("locations"),
                            format!("{where_to:?}: use library, shelf or vault:NAME"),
                        );
                    }
                }
            }
            cfg.pools.insert(
                name.clone(),
                Pool {
                    policy: PoolPolicy {
                        name: name.clone(),
                        retention,
                        allocation,
                        keep_sets: p.keep_sets.unwrap_or(1),
                    },
                    block_size,
                    compression,
                    copies,
                    locations,
                    scratch: p.scratch.as_ref().map(|s| s.get_ref().clone()),
                },
            );
        }
        for (name, j) in raw.job {
            let key = |k: &str| format!("job.{name}.{k}");
            // The name becomes a systemd unit name and a set name.
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                let at_line = text.find(&format!("[job.{name}")).unwrap_or(0);
                return at.err(
                    at_line..at_line,
                    &format!("job.{name}"),
                    "a job name is letters, digits, - and _",
                );
            }
            let pool_ref = |p: &Spanned<String>, k: &str| -> Result<String, ConfigError> {
                if cfg.pools.contains_key(p.get_ref()) {
                    Ok(p.get_ref().clone())
                } else {
                    at.err(
                        p.span(),
                        &key(k),
                        format!("no [pool.{}] is declared", p.get_ref()),
                    )
                }
            };
            let target = match (&j.pool, &j.gfs) {
                (Some(p), None) => Target::Pool(pool_ref(p, "pool")?),
                (None, Some(g)) => {
                    let gr = g.get_ref();
                    let weekly_on = match &gr.weekly_on {
                        None => jiff::civil::Weekday::Sunday,
                        Some(w) => weekday(w.get_ref()).map_or_else(
                            || {
                                at.err(
                                    w.span(),
                                    &key("gfs.weekly_on"),
                                    format!("{:?} is not a day of the week", w.get_ref()),
                                )
                            },
                            Ok,
                        )?,
                    };
                    Target::Gfs {
                        daily: pool_ref(&gr.daily, "gfs.daily")?,
                        weekly: pool_ref(&gr.weekly, "gfs.weekly")?,
                        monthly: pool_ref(&gr.monthly, "gfs.monthly")?,
                        weekly_on,
                    }
                }
                (Some(p), Some(_)) => {
                    return at.err(p.span(), &key("pool"), "give either pool or gfs, not both")
                }
                (None, None) => {
                    return at.err(j.sources.span(), &name, "a job needs a pool (or gfs tiers)")
                }
            };
            if j.sources.get_ref().is_empty() {
                return at.err(
                    j.sources.span(),
                    &key("sources"),
                    "a job needs at least one source",
                );
            }
            let level = match j.level.as_ref().map(|l| (l.get_ref().as_str(), l.span())) {
                None | Some(("full", _)) => Level::Full,
                Some(("incremental", _)) => Level::Incremental,
                Some(("differential", _)) => Level::Differential,
                Some((other, span)) => {
                    return at.err(
                        span,
                        &key("level"),
                        format!("{other:?}: use full, incremental or differential"),
                    )
                }
            };
            if let Some(d) = &j.drive {
                if !cfg.drives.contains_key(d.get_ref()) {
                    return at.err(
                        d.span(),
                        &key("drive"),
                        format!("no [drive.{}] is declared", d.get_ref()),
                    );
                }
            }
            if let Some(s) = &j.schedule {
                if s.get_ref().trim().is_empty() {
                    return at.err(
                        s.span(),
                        &key("schedule"),
                        "empty; use systemd calendar syntax, e.g. \"Mon..Fri 01:00\"",
                    );
                }
            }
            if let Some(e) = &j.export {
                if !valid_export(e.get_ref()) {
                    return at.err(
                        e.span(),
                        &key("export"),
                        format!("{:?}: use vault:NAME or shelf", e.get_ref()),
                    );
                }
            }
            let mut export_tiers = Vec::new();
            for t in j.export_tiers.iter().flatten() {
                match tier(t.get_ref()) {
                    Some(x) => export_tiers.push(x),
                    None => {
                        return at.err(
                            t.span(),
                            &key("export_tiers"),
                            format!("{:?}: use daily, weekly or monthly", t.get_ref()),
                        )
                    }
                }
            }
            cfg.jobs.insert(
                name.clone(),
                Job {
                    name,
                    sources: j.sources.into_inner(),
                    exclude: j.exclude,
                    target,
                    level,
                    verify: j.verify,
                    drive: j.drive.map(Spanned::into_inner),
                    schedule: j.schedule.map(Spanned::into_inner),
                    export: j.export.map(Spanned::into_inner),
                    export_tiers,
                    system: j.system,
                },
            );
        }
        Ok(cfg)
    }

    /// The job named `name`, or an error listing the jobs there are.
    pub fn job(&self, name: &str) -> Result<&Job, ConfigError> {
        self.jobs.get(name).ok_or_else(|| ConfigError::Invalid {
            file: self.path.display().to_string(),
            line: 1,
            key: format!("job.{name}"),
            message: format!(
                "no such job; the file declares: {}",
                if self.jobs.is_empty() {
                    "none".to_string()
                } else {
                    self.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[catalog]
path = "/srv/tapir/catalog.db"

[changer.lib]
device = "vtape:/srv/lib"

[drive.vt]
device = "vtape:/srv/lib"
changer = "lib"

[pool.daily]
retention = "14d"

[pool.weekly]
retention = "5w"
allocation = "append"
keep_sets = 2

[pool.monthly]
retention = "1y"
allocation = "new-set-monthly"
scratch = "scratch"
block_size = "256K"
compression = "zstd"

[pool.scratch]
retention = "1d"

[job.nightly]
sources = ["/etc", "/home"]
exclude = ["*.tmp"]
gfs = { daily = "daily", weekly = "weekly", monthly = "monthly", weekly_on = "fri" }
verify = true
schedule = "Mon..Sun 01:00"
export = "vault:ironmountain"
export_tiers = ["monthly"]
system = true
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/tapir/tapir.toml"), text)
    }

    #[test]
    fn a_full_configuration_is_understood() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.catalog.as_deref(),
            Some(Path::new("/srv/tapir/catalog.db"))
        );
        assert_eq!(c.pools["weekly"].policy.retention, 35 * DAY);
        assert_eq!(c.pools["weekly"].policy.keep_sets, 2);
        assert_eq!(c.pools["monthly"].block_size, Some(256 << 10));
        assert_eq!(c.pools["monthly"].compression, Compression::Zstd);
        assert_eq!(c.pools["monthly"].scratch.as_deref(), Some("scratch"));
        assert_eq!(
            c.pools["monthly"].policy.allocation,
            Allocation::NewSetEvery(Period::Month)
        );
        let j = c.job("nightly").unwrap();
        assert!(j.verify);
        assert!(j.system);
        assert_eq!(j.export_tiers, vec![Tier::Monthly]);
        // The first Friday of the month is monthly, other Fridays weekly.
        let d = jiff::civil::date;
        assert_eq!(
            j.target.pool_on(d(2026, 11, 6)),
            ("monthly", Some(Tier::Monthly))
        );
        assert_eq!(
            j.target.pool_on(d(2026, 11, 13)),
            ("weekly", Some(Tier::Weekly))
        );
        assert_eq!(
            j.target.pool_on(d(2026, 11, 14)),
            ("daily", Some(Tier::Daily))
        );
        assert!(c
            .job("weekly")
            .unwrap_err()
            .to_string()
            .contains("declares: nightly"));
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        for (text, line, key, says) in [
            ("[pool.a]\nretention = \"14x\"\n", 2, "pool.a.retention", "unknown unit"),
            ("[pool.a]\nretention = \"14d\"\nallocation = \"sometimes\"\n", 3, "pool.a.allocation", "use append"),
            (
                "[pool.a]\nretention = \"1d\"\n[job.j]\nsources = [\"/\"]\npool = \"b\"\n",
                5,
                "job.j.pool",
                "no [pool.b]",
            ),
            ("[pool.a]\nretention = \"1d\"\ncolour = \"red\"\n", 3, "", "unknown field `colour`"),
            ("[pool.a]\nretention = 14\n", 2, "", "invalid type"),
            (
                "[pool.a]\nretention = \"1d\"\n[job.j]\nsources = [\"/\"]\npool = \"a\"\nexport = \"cellar\"\n",
                6,
                "job.j.export",
                "vault:NAME",
            ),
            ("[drive.d]\ndevice = \"/dev/nst0\"\nchanger = \"nope\"\n", 3, "drive.d.changer", "no [changer.nope]"),
            ("[notify]\ncommand = [\"/bin/page\"]\nuser = \"root\"\n", 3, "notify.user", "never runs as root"),
            ("[notify]\ncommand = []\n", 2, "notify.command", "give the program"),
            ("[pool.a]\nretention = \"1d\"\ncopies = 5\n", 3, "pool.a.copies", "1 to 4 copies"),
            (
                "[pool.a]\nretention = \"1d\"\ncopies = 2\nlocations = [\"library\"]\n",
                4,
                "pool.a.locations",
                "name one per copy",
            ),
            (
                "[pool.a]\nretention = \"1d\"\ncopies = 2\nlocations = [\"library\", \"attic\"]\n",
                4,
                "pool.a.locations",
                "use library, shelf or vault:NAME",
            ),
            (
                "[pool.a]\nretention = \"1d\"\n\n[job.j]\nsources = [\"/\"]\ngfs = { daily = \"a\", weekly = \"a\", monthly = \"a\", weekly_on = \"funday\" }\n",
                6,
                "job.j.gfs.weekly_on",
                "not a day",
            ),
        ] {
            let e = parse(text).unwrap_err();
            let (file, l, k) = match &e {
                ConfigError::Invalid { file, line, key, .. } => (file, *line, key.as_str()),
                ConfigError::Syntax { file, line, .. } => (file, *line, ""),
                ConfigError::Read { .. } => panic!("{e}"),
            };
            assert_eq!(file, "/etc/tapir/tapir.toml");
            assert_eq!((l, k), (line, key), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn sizes_and_retentions() {
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert!(parse_size("4X").is_err());
        assert_eq!(parse_retention("2w"), Ok(14 * DAY));
        assert_eq!(parse_retention("6m"), Ok(180 * DAY));
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("14").is_err());
    }
}
