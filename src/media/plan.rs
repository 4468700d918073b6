//! Which cartridge a job writes to, and why: a pure function of the
//! inventory, the pool's policy and `now`. `tapir run --dry-run` prints
//! exactly what the job would do, because the job does what this says.

use serde::Serialize;

/// A day, in seconds.
pub const DAY: i64 = 86_400;

/// A cartridge's state as the host catalog records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Writable,
    Full,
    Damaged,
    Retired,
}

/// One cartridge, as the catalog and the library know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cartridge {
    /// Barcode (or label).
    pub label: String,
    /// In the library now (loadable without an operator).
    pub present: bool,
    /// Where the catalog last knew it to be, in words.
    pub location: Option<String>,
    pub worm: bool,
    /// None: the catalog has never seen it (blank, or foreign until
    /// someone scratches it).
    pub known: Option<Known>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub pool: String,
    pub state: State,
    /// UUID of the set it belongs to.
    pub set: Option<String>,
    /// It holds sessions.
    pub holds_data: bool,
    /// Explicit retention (`tapir media retain`), Unix seconds.
    pub retention_until: Option<i64>,
}

/// One archive set of the pool, from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFacts {
    pub uuid: String,
    pub name: String,
    pub started: i64,
    /// The end of its newest session.
    pub last_written: i64,
    /// Every cartridge of it verified without error.
    pub verified: bool,
    /// A full backup (not an incremental or differential).
    pub full: bool,
    /// Which of the pool's copies of its runs it holds (1 for most).
    pub copy: u8,
}

/// When a pool starts a new set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    /// Keep appending to the current set.
    Append,
    /// Every job starts a set.
    NewSetPerJob,
    /// A new set each calendar day, week or month (UTC).
    NewSetEvery(Period),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

/// What a pool promises about its cartridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    pub name: String,
    /// How long a set is kept after it was last written, in seconds.
    pub retention: i64,
    pub allocation: Allocation,
    /// The newest this many verified full sets are kept whatever their age.
    pub keep_sets: u32,
}

/// What the job may take from outside its pool, and which copy it plans.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    /// A shared scratch pool's policy and sets, if the pool may draw on it.
    pub scratch: Option<(&'a PoolPolicy, &'a [SetFacts])>,
    /// LTO generation of the drive (None: any, e.g. a virtual drive).
    pub drive_generation: Option<u8>,
    /// Expire even if the clock looks wrong.
    pub trust_clock: bool,
    /// Which of the pool's copies of the run this plan is for: it appends
    /// only to a set of the same copy.
    pub copy: u8,
    /// Cartridges planned for the run's earlier copies (never the same
    /// cartridge for two copies).
    pub taken: &'a [String],
}

impl Default for Sources<'_> {
    fn default() -> Self {
        Sources {
            scratch: None,
            drive_generation: None,
            trust_clock: false,
            copy: 1,
            taken: &[],
        }
    }
}

/// What the job does with the cartridge it picks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Append a session to the set it holds.
    Append { set: String },
    /// Start a new set on it (blank, or labelled and empty).
    NewSet,
    /// Its retention has expired: read its label, check it matches the
    /// catalog, then label it again for a new set.
    Reuse,
    /// The catalog does not know it: read its label first; it is used
    /// only if it turns out to be blank.
    ReadLabelFirst,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pick {
    pub label: String,
    pub pool: String,
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
    pub present: bool,
    /// Where the catalog last knew it to be (for an operator to fetch it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Considered {
    pub label: String,
    pub usable: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub pool: String,
    /// Candidates in the order the job would try them.
    pub candidates: Vec<Pick>,
    /// Every cartridge looked at that may not be used, with the reason.
    pub refused: Vec<Considered>,
    /// Sets whose retention has expired (their cartridges may be reused).
    pub expired_sets: Vec<String>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// The cartridge the job writes to first.
    pub fn first(&self) -> Option<&Pick> {
        self.candidates.first()
    }
}

/// LTO generation from a barcode's media suffix (`L9`, `L8`, `M8` for an
/// LTO-7 cartridge formatted type M), if it has one.
pub fn barcode_generation(label: &str) -> Option<(u8, bool)> {
    let b = label.as_bytes();
    if b.len() < 2 {
        return None;
    }
    let (kind, digit) = (b[b.len() - 2], b[b.len() - 1]);
    let n = (digit as char).to_digit(10)? as u8;
    match kind {
        b'L' if n >= 1 => Some((n, false)),
        b'M' if n == 8 => Some((7, true)),
        _ => None,
    }
}

/// Can an LTO-`drive` drive write a cartridge of generation `media`?
/// Each writes its own and the previous generation; LTO-9 writes 9 and 8;
/// a type M cartridge (M8) only in an LTO-8 drive.
pub fn drive_writes(drive: u8, media: (u8, bool)) -> bool {
    match media {
        (7, true) => drive == 8,
        (g, _) => g == drive || g + 1 == drive,
    }
}

/// A cleaning cartridge: by convention its barcode starts with CLN.
pub fn is_cleaning(label: &str) -> bool {
    label.starts_with("CLN")
}

fn period_start(t: i64, p: Period) -> i64 {
    let day = t.div_euclid(DAY);
    match p {
        Period::Day => day * DAY,
        // 1970-01-01 was a Thursday; weeks start on Monday.
        Period::Week => (day - (day + 3).rem_euclid(7)) * DAY,
        Period::Month => {
            let d = jiff::Timestamp::from_second(t)
                .map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC).date())
                .unwrap_or_default();
            let first = d.first_of_month();
            first
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map(|z| z.timestamp().as_second())
                .unwrap_or(day * DAY)
        }
    }
}

fn date(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|ts| ts.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// Which sets of a pool have expired at `now`, and why any did not.
/// Retention never consumes the last good copies: the newest
/// `keep_sets` verified full sets stay whatever their age. A clock behind
/// the newest write, or far beyond anything the retention explains,
/// expires nothing.
pub fn expired_sets(
    policy: &PoolPolicy,
    sets: &[SetFacts],
    now: i64,
    trust_clock: bool,
) -> (Vec<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let Some(newest) = sets.iter().map(|s| s.last_written).max() else {
        return (Vec::new(), warnings);
    };
    if !trust_clock {
        if now < newest {
            warnings.push(format!(
                "pool {}: the clock ({}) is behind the newest write ({}); nothing expires until it is right (or pass --trust-clock)",
                policy.name,
                date(now),
                date(newest)
            ));
            return (Vec::new(), warnings);
        }
        let plausible = 2 * policy.retention + 31 * DAY;
        if now - newest > plausible {
            warnings.push(format!(
                "pool {}: the clock ({}) is {} days past the newest write ({}), more than twice the retention; nothing expires in case the clock jumped (pass --trust-clock if it is right)",
                policy.name,
                date(now),
                (now - newest) / DAY,
                date(newest)
            ));
            return (Vec::new(), warnings);
        }
    }
    // Per copy: a pool that keeps copies keeps the newest sets of each.
    let mut protected: Vec<&SetFacts> = Vec::new();
    let mut copies: Vec<u8> = sets.iter().map(|s| s.copy).collect();
    copies.sort_unstable();
    copies.dedup();
    for copy in copies {
        let mut newest: Vec<&SetFacts> = sets
            .iter()
            .filter(|s| s.full && s.verified && s.copy == copy)
            .collect();
        newest.sort_by_key(|s| std::cmp::Reverse(s.last_written));
        newest.truncate(policy.keep_sets as usize);
        protected.extend(newest);
    }
    let expired = sets
        .iter()
        .filter(|s| s.last_written + policy.retention <= now)
        .filter(|s| !protected.iter().any(|p| p.uuid == s.uuid))
        .map(|s| s.uuid.clone())
        .collect();
    (expired, warnings)
}

/// Plan which cartridge a job of `policy`'s pool writes to. Candidates, in
/// order: the current set's writable cartridge (when the pool appends),
/// the pool's empty cartridges, its expired ones (oldest first), then the
/// scratch pool's empty and expired ones, then cartridges the catalog does
/// not know (used only if their label shows them blank). Never planned:
/// unexpired, damaged, retired, cleaning, written WORM cartridges, and
/// cartridges the drive's generation cannot write.
pub fn plan_job(
    policy: &PoolPolicy,
    sets: &[SetFacts],
    cartridges: &[Cartridge],
    sources: &Sources<'_>,
    now: i64,
) -> Plan {
    let (expired, mut warnings) = expired_sets(policy, sets, now, sources.trust_clock);
    let mut plan = Plan {
        pool: policy.name.clone(),
        candidates: Vec::new(),
        refused: Vec::new(),
        expired_sets: expired.clone(),
        warnings: Vec::new(),
    };
    let scratch_expired = match sources.scratch {
        Some((p, s)) => {
            let (e, w) = expired_sets(p, s, now, sources.trust_clock);
            warnings.extend(w);
            e
        }
        None => Vec::new(),
    };
    plan.warnings = warnings;

    // The set a job appends to: the pool's newest, if the allocation says so.
    let current = sets
        .iter()
        .filter(|s| s.copy == sources.copy)
        .max_by_key(|s| s.last_written)
        .filter(|s| match policy.allocation {
            Allocation::Append => true,
            Allocation::NewSetPerJob => false,
            Allocation::NewSetEvery(p) => period_start(s.started, p) == period_start(now, p),
        });

    let refuse = |plan: &mut Plan, c: &Cartridge, reason: String| {
        plan.refused.push(Considered {
            label: c.label.clone(),
            usable: false,
            reason,
        })
    };
    let mut appends = Vec::new();
    let mut empties = Vec::new();
    let mut reusable = Vec::new();
    let mut scratch_empties = Vec::new();
    let mut scratch_reusable = Vec::new();
    let mut unknown = Vec::new();
    for c in cartridges {
        if is_cleaning(&c.label) {
            refuse(&mut plan, c, "a cleaning cartridge".into());
            continue;
        }
        if sources.taken.contains(&c.label) {
            refuse(
                &mut plan,
                c,
                "planned for an earlier copy of this run".into(),
            );
            continue;
        }
        if let (Some(drive), Some(media)) = (sources.drive_generation, barcode_generation(&c.label))
        {
            if !drive_writes(drive, media) {
                refuse(
                    &mut plan,
                    c,
                    format!(
                        "an LTO-{} cartridge, which an LTO-{drive} drive cannot write",
                        media.0
                    ),
                );
                continue;
            }
        }
        let Some(k) = &c.known else {
            unknown.push(c);
            continue;
        };
        let in_scratch = sources.scratch.is_some_and(|(p, _)| p.name == k.pool);
        if k.pool != policy.name && !in_scratch {
            continue; // another pool's: not this job's business
        }
        match k.state {
            State::Damaged => {
                refuse(&mut plan, c, "marked damaged".into());
                continue;
            }
            State::Retired => {
                refuse(&mut plan, c, "retired".into());
                continue;
            }
            _ => {}
        }
        let in_current = current.is_some_and(|s| k.set.as_deref() == Some(s.uuid.as_str()));
        if in_current && !in_scratch {
            match k.state {
                State::Writable => appends.push(c),
                _ => refuse(
                    &mut plan,
                    c,
                    "full: its set continues on another cartridge".into(),
                ),
            }
            continue;
        }
        if !k.holds_data && k.set.is_none() {
            if in_scratch {
                scratch_empties.push(c);
            } else {
                empties.push(c);
            }
            continue;
        }
        if c.worm {
            refuse(
                &mut plan,
                c,
                "a WORM cartridge that holds data: it is never reused".into(),
            );
            continue;
        }
        if let Some(until) = k.retention_until.filter(|&u| u > now) {
            refuse(&mut plan, c, format!("retained until {}", date(until)));
            continue;
        }
        let expired_list = if in_scratch {
            &scratch_expired
        } else {
            &expired
        };
        let set_expired = k.set.as_ref().is_some_and(|s| expired_list.contains(s));
        if !set_expired {
            let why = match k.set.as_ref().and_then(|u| sets.iter().find(|s| &s.uuid == u)) {
                Some(s) => format!(
                    "set \"{}\" is kept until {}",
                    s.name,
                    date(s.last_written + policy.retention)
                ),
                None => "holds data of a set the catalog does not describe; it is foreign until scratched (`tapir media scratch`)".into(),
            };
            refuse(&mut plan, c, why);
            continue;
        }
        let last = k
            .set
            .as_ref()
            .and_then(|u| sets.iter().find(|s| &s.uuid == u))
            .map_or(0, |s| s.last_written);
        if in_scratch {
            scratch_reusable.push((last, c));
        } else {
            reusable.push((last, c));
        }
    }
    let pick = |c: &Cartridge, pool: &str, action: Action, reason: String| Pick {
        label: c.label.clone(),
        pool: pool.to_string(),
        action,
        reason,
        present: c.present,
        location: c.location.clone(),
    };
    // Within a group: cartridges in the library first, then by label.
    let order = |v: &mut Vec<&Cartridge>| {
        v.sort_by(|a, b| (!a.present, &a.label).cmp(&(!b.present, &b.label)))
    };
    order(&mut appends);
    order(&mut empties);
    order(&mut scratch_empties);
    order(&mut unknown);
    reusable.sort_by(|a, b| (a.0, !a.1.present, &a.1.label).cmp(&(b.0, !b.1.present, &b.1.label)));
    scratch_reusable
        .sort_by(|a, b| (a.0, !a.1.present, &a.1.label).cmp(&(b.0, !b.1.present, &b.1.label)));
    let scratch_name = sources.scratch.map_or("", |(p, _)| p.name.as_str());
    if let Some(set) = current {
        for c in appends {
            plan.candidates.push(pick(
                c,
                &policy.name,
                Action::Append {
                    set: set.name.clone(),
                },
                format!(
                    "the writable cartridge of the pool's current set \"{}\"",
                    set.name
                ),
            ));
        }
    }
    for c in empties {
        plan.candidates.push(pick(
            c,
            &policy.name,
            Action::NewSet,
            "an empty cartridge of the pool".into(),
        ));
    }
    for (last, c) in reusable {
        plan.candidates.push(pick(
            c,
            &policy.name,
            Action::Reuse,
            format!(
                "its set, last written {}, expired after the pool's retention of {} days",
                date(last),
                policy.retention / DAY
            ),
        ));
    }
    for c in scratch_empties {
        plan.candidates.push(pick(
            c,
            scratch_name,
            Action::NewSet,
            format!("an empty cartridge of the scratch pool \"{scratch_name}\""),
        ));
    }
    for (last, c) in scratch_reusable {
        plan.candidates.push(pick(
            c,
            scratch_name,
            Action::Reuse,
            format!(
                "an expired cartridge of the scratch pool \"{scratch_name}\" (last written {})",
                date(last)
            ),
        ));
    }
    for c in unknown {
        plan.candidates.push(pick(
            c,
            &policy.name,
            Action::ReadLabelFirst,
            "not in the catalog: used only if its label shows it blank".into(),
        ));
    }
    plan
}

/// Grandfather-father-son tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Daily,
    Weekly,
    Monthly,
}

/// The tier a job run on `day` belongs to: monthly on the first
/// `weekly_on` of the month, weekly on every other `weekly_on`, daily
/// otherwise.
pub fn gfs_tier(day: jiff::civil::Date, weekly_on: jiff::civil::Weekday) -> Tier {
    if day.weekday() != weekly_on {
        Tier::Daily
    } else if day.day() <= 7 {
        Tier::Monthly
    } else {
        Tier::Weekly
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{date as d, Weekday};

    /// 2026-11-27 00:00 UTC.
    const NOW: i64 = 1_795_737_600;

    fn policy(allocation: Allocation) -> PoolPolicy {
        PoolPolicy {
            name: "daily".into(),
            retention: 14 * DAY,
            allocation,
            keep_sets: 1,
        }
    }

    fn set(uuid: &str, days_ago: i64, verified: bool) -> SetFacts {
        SetFacts {
            uuid: uuid.into(),
            name: format!("set-{uuid}"),
            started: NOW - days_ago * DAY - 3600,
            last_written: NOW - days_ago * DAY,
            verified,
            full: true,
            copy: 1,
        }
    }

    fn cart(label: &str, pool: &str, state: State, set: Option<&str>) -> Cartridge {
        Cartridge {
            label: label.into(),
            present: true,
            location: None,
            worm: false,
            known: Some(Known {
                pool: pool.into(),
                state,
                set: set.map(str::to_string),
                holds_data: set.is_some(),
                retention_until: None,
            }),
        }
    }

    fn labels(p: &Plan) -> Vec<(&str, &Action)> {
        p.candidates
            .iter()
            .map(|c| (c.label.as_str(), &c.action))
            .collect()
    }

    fn refused<'p>(p: &'p Plan, label: &str) -> &'p str {
        &p.refused
            .iter()
            .find(|c| c.label == label)
            .unwrap_or_else(|| panic!("{label} not refused: {p:#?}"))
            .reason
    }

    #[test]
    fn candidates_come_in_the_documented_order() {
        let sets = [
            set("cur", 1, true),
            set("old", 30, true),
            set("older", 40, true),
        ];
        let carts = [
            cart("U0001L9", "daily", State::Writable, Some("old")),
            cart("E0001L9", "daily", State::Writable, None),
            cart("C0001L9", "daily", State::Writable, Some("cur")),
            cart("U0002L9", "daily", State::Full, Some("older")),
            Cartridge {
                label: "NEW001L9".into(),
                present: true,
                location: None,
                worm: false,
                known: None,
            },
            cart("S0001L9", "scratch", State::Writable, None),
        ];
        let scratch = PoolPolicy {
            name: "scratch".into(),
            ..policy(Allocation::Append)
        };
        let sources = Sources {
            scratch: Some((&scratch, &[])),
            ..Sources::default()
        };
        let p = plan_job(&policy(Allocation::Append), &sets, &carts, &sources, NOW);
        assert_eq!(
            labels(&p),
            vec![
                (
                    "C0001L9",
                    &Action::Append {
                        set: "set-cur".into()
                    }
                ),
                ("E0001L9", &Action::NewSet),
                ("U0002L9", &Action::Reuse), // older first
                ("U0001L9", &Action::Reuse),
                ("S0001L9", &Action::NewSet),
                ("NEW001L9", &Action::ReadLabelFirst),
            ]
        );
        assert_eq!(p.candidates[4].pool, "scratch");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn what_may_never_be_planned_is_refused_with_its_reason() {
        let sets = [
            set("cur", 1, true),
            set("young", 5, true),
            set("old", 30, true),
        ];
        let mut worm = cart("W0001L9", "daily", State::Full, Some("old"));
        worm.worm = true;
        let mut retained = cart("R0001L9", "daily", State::Full, Some("old"));
        retained.known.as_mut().unwrap().retention_until = Some(NOW + 10 * DAY);
        let carts = [
            cart("D0001L9", "daily", State::Damaged, None),
            cart("X0001L9", "daily", State::Retired, Some("old")),
            cart("CLN001L1", "daily", State::Writable, None),
            cart("Y0001L9", "daily", State::Full, Some("young")),
            cart("F0001L9", "daily", State::Full, Some("unknown-set")),
            cart("G0001L7", "daily", State::Writable, None),
            cart("O0001L9", "weekly", State::Writable, None),
            worm,
            retained,
        ];
        let sources = Sources {
            drive_generation: Some(9),
            ..Sources::default()
        };
        let p = plan_job(
            &policy(Allocation::NewSetPerJob),
            &sets,
            &carts,
            &sources,
            NOW,
        );
        assert!(p.candidates.is_empty(), "{p:#?}");
        assert_eq!(refused(&p, "D0001L9"), "marked damaged");
        assert_eq!(refused(&p, "X0001L9"), "retired");
        assert_eq!(refused(&p, "CLN001L1"), "a cleaning cartridge");
        assert!(refused(&p, "Y0001L9").contains("kept until"));
        assert!(refused(&p, "F0001L9").contains("foreign until scratched"));
        assert!(refused(&p, "G0001L7").contains("LTO-9 drive cannot write"));
        assert!(refused(&p, "W0001L9").contains("WORM"));
        assert!(refused(&p, "R0001L9").contains("retained until"));
        // Another pool's cartridges are not even considered.
        assert!(p.refused.iter().all(|c| c.label != "O0001L9"));
    }

    #[test]
    fn retention_never_consumes_the_newest_verified_full_sets() {
        // Every set is past retention; the newest verified one stays.
        let sets = [
            set("a", 60, true),
            set("b", 50, false), // newer but never verified: not protected
            set("c", 40, true),
        ];
        let mut policy = policy(Allocation::NewSetPerJob);
        policy.retention = 30 * DAY;
        let (expired, w) = expired_sets(&policy, &sets, NOW, false);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(expired, vec!["a".to_string(), "b".to_string()]);
        policy.keep_sets = 2;
        let (expired, _) = expired_sets(&policy, &sets, NOW, false);
        assert_eq!(expired, vec!["b".to_string()]);
    }

    #[test]
    fn a_pool_of_copies_keeps_the_newest_sets_of_each_copy_and_appends_per_copy() {
        let copy2 = |uuid: &str, days_ago: i64| SetFacts {
            copy: 2,
            ..set(uuid, days_ago, true)
        };
        let sets = [set("a1", 60, true), copy2("a2", 60), copy2("b2", 40)];
        let mut pol = policy(Allocation::Append);
        pol.retention = 30 * DAY;
        // b2 is copy 2's newest; a1 is copy 1's newest and stays too.
        let (expired, _) = expired_sets(&pol, &sets, NOW, false);
        assert_eq!(expired, vec!["a2".to_string()]);
        // Copy 2 appends to its own newest set, never to copy 1's, and
        // never to a cartridge planned for copy 1.
        pol.retention = 90 * DAY;
        let carts = [
            cart("A0001L9", "daily", State::Writable, Some("a1")),
            cart("B0002L9", "daily", State::Writable, Some("b2")),
            cart("E0001L9", "daily", State::Writable, None),
            cart("E0002L9", "daily", State::Writable, None),
        ];
        let taken = ["E0001L9".to_string()];
        let sources = Sources {
            copy: 2,
            taken: &taken,
            ..Sources::default()
        };
        let p = plan_job(&pol, &sets, &carts, &sources, NOW);
        let labels: Vec<&str> = p.candidates.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["B0002L9", "E0002L9"], "{p:#?}");
        assert_eq!(
            refused(&p, "E0001L9"),
            "planned for an earlier copy of this run"
        );
    }

    #[test]
    fn a_clock_that_jumps_stops_expiry_with_a_message() {
        let sets = [set("a", 60, true), set("b", 40, true), set("c", 1, true)];
        let policy = policy(Allocation::NewSetPerJob);
        for (now, says) in [
            (NOW - 10 * DAY, "is behind the newest write"),
            (NOW + 400 * DAY, "past the newest write"),
        ] {
            let (expired, w) = expired_sets(&policy, &sets, now, false);
            assert!(expired.is_empty(), "{now}");
            assert!(w[0].contains(says), "{w:?}");
            // Told the clock is right, expiry goes ahead.
            let (trusted, _) = expired_sets(&policy, &sets, now, true);
            assert!(!trusted.is_empty(), "{now}");
        }
        let (expired, w) = expired_sets(&policy, &sets, NOW, false);
        assert!(w.is_empty());
        assert_eq!(expired, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_new_set_each_period_appends_within_it_only() {
        let carts = [cart("C0001L9", "daily", State::Writable, Some("cur"))];
        // Started Wednesday 2026-11-25; now is Friday 2026-11-27.
        let sets = [set("cur", 2, true)];
        for (alloc, appends) in [
            (Allocation::NewSetEvery(Period::Week), true),
            (Allocation::NewSetEvery(Period::Month), true),
            (Allocation::NewSetEvery(Period::Day), false),
            (Allocation::NewSetPerJob, false),
            (Allocation::Append, true),
        ] {
            let p = plan_job(&policy(alloc), &sets, &carts, &Sources::default(), NOW);
            assert_eq!(
                matches!(p.first().map(|c| &c.action), Some(Action::Append { .. })),
                appends,
                "{alloc:?}: {p:#?}"
            );
        }
    }

    #[test]
    fn generations_and_tiers() {
        assert_eq!(barcode_generation("TAP001L9"), Some((9, false)));
        assert_eq!(barcode_generation("TAP001M8"), Some((7, true)));
        assert_eq!(barcode_generation("TAPE"), None);
        assert!(drive_writes(9, (8, false)) && drive_writes(9, (9, false)));
        assert!(!drive_writes(9, (7, false)) && !drive_writes(9, (7, true)));
        assert!(drive_writes(8, (7, true)) && drive_writes(8, (7, false)));
        let sun = Weekday::Sunday;
        for (day, tier) in [
            (d(2026, 11, 1), Tier::Monthly), // first Sunday
            (d(2026, 11, 8), Tier::Weekly),
            (d(2026, 11, 29), Tier::Weekly),
            (d(2026, 11, 27), Tier::Daily),
            (d(2026, 12, 6), Tier::Monthly),
        ] {
            assert_eq!(gfs_tier(day, sun), tier, "{day}");
        }
    }
}
