//! The host catalog's commands: `find`, `media`, `recall`, `sets` and
//! `catalog import|prune|check`. Parsing and printing only; the work is in
//! `tapir::catalog`.
//!
//! Exit statuses: 0 done; 1 `find`/`recall` matched nothing, or `catalog
//! check` found inconsistencies, or an import met interrupted sessions;
//! 2 usage or configuration (unknown cartridge, bad date or location, no
//! catalog file, a foreign or newer-schema file); 3 refused; 4 an import
//! read damaged data; 6 a damaged catalog file (with a hint on rebuilding
//! it) or another system error.

use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use tapir::catalog::location::LocationEvent;
use tapir::catalog::prune::PruneRule;
use tapir::catalog::query::{
    CartridgeBrief, FindQuery, MediaFilter, MediaInfo, MediaState, RecallTarget, Version,
};
use tapir::catalog::when::{parse_when_local, ts_text, DayEdge};
use tapir::catalog::{self, Catalog, ImportOptions, Location};
use tapir::device::open::open_drive;
use tapir::exit::ExitStatus;
use tapir::format::meta::{EntryKind, END_COMPLETE};
use tapir::pipeline::{self, Error as PipelineError};

use super::output::display_path;

/// The catalog commands, flattened into the top-level command list.
#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Find a file's versions, the cartridges holding them, and where those are now.
    Find(FindArgs),
    /// The media inventory: list, show, move, retire, damaged, retain.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
    /// The cartridges to bring back to restore a set or paths, and where each one is.
    Recall(RecallArgs),
    /// Archive sets the catalog knows.
    Sets(SetsArgs),
    /// Look after the catalog: import a cartridge, prune file records, check the file.
    Catalog {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// An archive path (/etc/ssh/sshd_config) or a glob (etc/ssh/*; `*` also matches `/`).
    pub pattern: String,
    /// Only the version as of this date: 2025-06-03 (end of that day), "2025-06-03 14:00",
    /// 2025-06-03T14:00:00Z, yesterday, "3 days ago".
    #[arg(long, value_name = "DATE")]
    pub at: Option<String>,
    /// Only versions written from this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Stop after this many paths (0: no limit).
    #[arg(long, default_value_t = 10_000)]
    pub limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum MediaCommand {
    /// List cartridges with their state and where they are.
    List {
        #[arg(long)]
        pool: Option<String>,
        /// writable, full, damaged or retired.
        #[arg(long)]
        state: Option<String>,
        /// A set name or UUID.
        #[arg(long)]
        set: Option<String>,
        /// A location kind (vault) or place (vault:ironmountain).
        #[arg(long, value_name = "LOCATION")]
        location: Option<String>,
    },
    /// Everything about one cartridge: state, counters, sessions, location history.
    Show {
        /// Label (barcode) or volume UUID.
        label: String,
    },
    /// Record that a cartridge was moved.
    Move {
        /// Label (barcode) or volume UUID.
        label: String,
        /// vault:NAME, shelf[:NAME], library[:NAME], slot:N, drive[:NAME] or transit[:NOTE].
        #[arg(long, value_name = "LOCATION")]
        to: String,
        /// Who moved it (default: the invoking user).
        #[arg(long, value_name = "WHO")]
        by: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Mark a cartridge retired: never written again.
    Retire {
        label: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Mark a cartridge damaged: never written again, and recall warns about it.
    Damaged {
        label: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show what a cartridge holds and, with --yes, destroy it: an empty
    /// label of POOL replaces everything (the deliberate act that makes a
    /// foreign or unknown cartridge usable). Loads it from a library.
    Scratch {
        label: String,
        #[arg(long, default_value = "scratch")]
        pool: String,
        #[arg(long, default_value = "256K", value_parser = tapir::config::parse_size)]
        block_size: u64,
        /// Destroy what it holds (without it, only show).
        #[arg(long)]
        yes: bool,
    },
    /// Set or clear a cartridge's retention date.
    Retain {
        label: String,
        /// Keep its data until this date.
        #[arg(
            long,
            value_name = "DATE",
            conflicts_with = "clear",
            required_unless_present = "clear"
        )]
        until: Option<String>,
        /// Remove the retention date.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Args, Debug)]
pub struct RecallArgs {
    /// A set (name or UUID), or an archive path or glob.
    pub target: String,
    /// As of this date (see `find --at`).
    #[arg(long, value_name = "DATE")]
    pub at: Option<String>,
    /// Only sessions written from this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct SetsArgs {
    /// Only sets created on, or written from, this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Read the loaded cartridge and merge what it holds (importing twice changes nothing).
    Import {
        /// Scan the data of every session instead of reading its catalog (slow; for
        /// cartridges whose catalogs are damaged).
        #[arg(long)]
        scan: bool,
    },
    /// Delete file records on their own schedule (sessions, cartridges and sets stay).
    Prune {
        /// Sessions started before this date (a bare date means its start).
        #[arg(
            long,
            value_name = "DATE",
            conflicts_with = "keep_sessions",
            required_unless_present = "keep_sessions"
        )]
        entries_older_than: Option<String>,
        /// Keep the file records of the newest N sessions of each set name.
        #[arg(long, value_name = "N")]
        keep_sessions: Option<usize>,
        /// Show what would be pruned, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the catalog file (quick_check; --full: integrity_check) and its consistency.
    Check {
        #[arg(long)]
        full: bool,
    },
}

/// What the catalog commands need from the global options.
#[derive(Debug, Clone, Copy)]
pub struct Globals<'a> {
    /// `--catalog` / `$TAPIR_CATALOG`, if given.
    pub catalog: Option<&'a Path>,
    /// `--device` / `$TAPE`, if given.
    pub device: Option<&'a str>,
    pub json: bool,
}

/// Run a catalog command. A catalog error is reported here with its own
/// exit status (a damaged file: 6, with the rebuild hint).
pub fn run(cmd: &CatalogCommand, g: &Globals<'_>) -> anyhow::Result<ExitStatus> {
    match dispatch(cmd, g) {
        Err(e) => match e.downcast_ref::<catalog::Error>() {
            Some(ce) => {
                eprintln!("tapir: error: {ce}");
                Ok(ce.exit_status())
            }
            None => Err(e),
        },
        ok => ok,
    }
}

fn dispatch(cmd: &CatalogCommand, g: &Globals<'_>) -> anyhow::Result<ExitStatus> {
    let path = catalog::resolve_path(g.catalog);
    match cmd {
        CatalogCommand::Find(a) => find(&path, a, g.json),
        CatalogCommand::Media {
            command:
                MediaCommand::Scratch {
                    label,
                    pool,
                    block_size,
                    yes,
                },
        } => scratch(&path, g, label, pool, *block_size, *yes),
        CatalogCommand::Media { command } => media(&path, command, g.json),
        CatalogCommand::Recall(a) => recall(&path, a, g.json),
        CatalogCommand::Sets(a) => sets(&path, a, g.json),
        CatalogCommand::Catalog { command } => match command {
            AdminCommand::Import { scan } => import(&path, g, *scan),
            AdminCommand::Prune {
                entries_older_than,
                keep_sessions,
                dry_run,
            } => prune(
                &path,
                entries_older_than.as_deref(),
                *keep_sessions,
                *dry_run,
                g.json,
            ),
            AdminCommand::Check { full } => check(&path, *full, g.json),
        },
    }
}

fn usage(msg: String) -> anyhow::Error {
    catalog::Error::Invalid(msg).into()
}

fn when(s: Option<&str>, edge: DayEdge) -> anyhow::Result<Option<i64>> {
    s.map(|s| parse_when_local(s, edge).map_err(usage))
        .transpose()
}

fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("values serialise")
    );
}

/// `YYYY-MM-DD HH:MM` UTC, for tables.
fn short(sec: i64) -> String {
    jiff::Timestamp::from_second(sec)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| sec.to_string())
}

fn opt_ts(sec: Option<i64>) -> Value {
    sec.map(|s| Value::from(ts_text(s))).unwrap_or(Value::Null)
}

/// Who is running this, for the location history.
fn invoking_user() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return u;
            }
        }
    }
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn location_json(l: &LocationEvent) -> Value {
    json!({
        "where": l.location.to_string(),
        "kind": l.location.kind,
        "name": l.location.name,
        "since": ts_text(l.at),
        "by": l.by,
        "note": l.note,
    })
}

fn location_text(l: Option<&LocationEvent>) -> String {
    match l {
        Some(l) => format!("{} (since {}, {})", l.location, short(l.at), l.by),
        None => "location unknown".into(),
    }
}

fn cartridge_json(c: &CartridgeBrief) -> Value {
    json!({
        "label": c.label,
        "uuid": c.uuid,
        "state": c.state,
        "location": c.location.as_ref().map(location_json),
    })
}

fn hex(h: &[u8]) -> String {
    catalog::hex(h)
}

fn kind_name(k: u8) -> String {
    EntryKind::from_code(k)
        .map(|k| format!("{k:?}").to_lowercase())
        .unwrap_or_else(|_| k.to_string())
}

fn version_json(v: &Version) -> Value {
    json!({
        "written": opt_ts(v.session.started),
        "host": v.session.host,
        "set": v.session.set_name,
        "set_uuid": v.session.set_uuid,
        "session": v.session.number,
        "session_uuid": v.session.uuid,
        "session_complete": v.session.complete,
        "kind": kind_name(v.kind),
        "size": v.size,
        "mtime": tapir::format::label::ts_text(v.mtime),
        "mode": format!("{:o}", v.mode),
        "uid": v.uid,
        "gid": v.gid,
        "blake3": v.blake3.map(|h| hex(&h)),
        "complete_at_source": v.status == END_COMPLETE,
        "link_target": v.link_target.as_deref().map(display_path),
        "position": {"tape_file": v.position.tape_file, "block": v.position.block, "offset": v.position.offset},
        "cartridge": cartridge_json(&v.cartridge),
    })
}

fn find(path: &Path, a: &FindArgs, json_out: bool) -> anyhow::Result<ExitStatus> {
    let at = when(a.at.as_deref(), DayEdge::End)?;
    let cat = Catalog::open_existing(path)?;
    let q = FindQuery {
        pattern: a.pattern.clone(),
        at,
        host: a.host.clone(),
        limit: (a.limit > 0).then_some(a.limit),
    };
    let r = cat.find(&q)?;
    // Group versions by path (they come grouped, in path order).
    let mut groups: Vec<(&[u8], Vec<&Version>)> = Vec::new();
    for v in &r.versions {
        match groups.last_mut() {
            Some((p, vs)) if *p == v.path.as_slice() => vs.push(v),
            _ => groups.push((&v.path, vec![v])),
        }
    }
    if json_out {
        print_json(&json!({
            "pattern": a.pattern,
            "at": opt_ts(q.at),
            "host": a.host,
            "paths": r.paths,
            "truncated": r.truncated,
            "results": groups.iter().map(|(p, vs)| json!({
                "path": display_path(p),
                "versions": vs.iter().map(|v| version_json(v)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
    } else {
        for (p, vs) in &groups {
            outln!(
                "{}  ({} version{})",
                display_path(p),
                vs.len(),
                if vs.len() == 1 { "" } else { "s" }
            );
            for v in vs {
                let hash = v
                    .blake3
                    .map(|h| hex(&h[..6]))
                    .unwrap_or_else(|| "-".repeat(12));
                outln!(
                    "  {}  {:<12} {:>14}  mtime {}  blake3 {}  {} session {}{}  {}",
                    v.session
                        .started
                        .map(short)
                        .unwrap_or_else(|| "????-??-?? ??:??".into()),
                    v.session.host.as_deref().unwrap_or("?"),
                    if v.kind == EntryKind::File.code() || v.kind == EntryKind::HardLink.code() {
                        v.size.to_string()
                    } else {
                        kind_name(v.kind)
                    },
                    short(v.mtime.sec),
                    hash,
                    v.cartridge.label,
                    v.session.number,
                    if v.session.complete {
                        ""
                    } else {
                        " (interrupted)"
                    },
                    location_text(v.cartridge.location.as_ref()),
                );
            }
        }
        if r.truncated {
            outln!("... stopped after {} paths; use --limit 0 for all", r.paths);
        }
    }
    if r.paths == 0 {
        eprintln!(
            "tapir: no version of {} in the catalog{}",
            a.pattern,
            if q.at.is_some() {
                " as of that date"
            } else {
                ""
            }
        );
        return Ok(ExitStatus::Warnings);
    }
    Ok(ExitStatus::Success)
}

fn media_json(m: &MediaInfo) -> Value {
    json!({
        "label": m.brief.label,
        "uuid": m.brief.uuid,
        "state": m.brief.state,
        "state_note": m.state_note,
        "state_changed": opt_ts(m.state_changed),
        "location": m.brief.location.as_ref().map(location_json),
        "pool": m.pool,
        "set": m.set_name,
        "set_uuid": m.set_uuid,
        "volume_seq": m.volume_seq,
        "labelled": ts_text(m.labelled),
        "host": m.host,
        "block_size": m.block_size,
        "worm": m.worm,
        "bytes_written": m.bytes_written,
        "stored_bytes": m.stored_bytes,
        "sessions": m.sessions,
        "write_count": m.write_count,
        "read_count": m.read_count,
        "error_count": m.error_count,
        "verified": opt_ts(m.verified),
        "verify_ok": m.verify_ok,
        "verify_detail": m.verify_detail,
        "retention_until": opt_ts(m.retention_until),
        "first_seen": ts_text(m.first_seen),
    })
}

fn media(path: &Path, cmd: &MediaCommand, json_out: bool) -> anyhow::Result<ExitStatus> {
    match cmd {
        MediaCommand::List {
            pool,
            state,
            set,
            location,
        } => {
            let cat = Catalog::open_existing(path)?;
            let list = cat.media_list(&MediaFilter {
                pool: pool.clone(),
                state: state.clone(),
                set: set.clone(),
                location: location.clone(),
            })?;
            if json_out {
                print_json(&json!(list.iter().map(media_json).collect::<Vec<_>>()));
            } else if list.is_empty() {
                outln!("no cartridges");
            } else {
                outln!(
                    "{:<10} {:<9} {:<10} {:<16} {:>4} {:>8}  where",
                    "label",
                    "state",
                    "pool",
                    "set",
                    "vol",
                    "sessions"
                );
                for m in &list {
                    outln!(
                        "{:<10} {:<9} {:<10} {:<16} {:>4} {:>8}  {}",
                        m.brief.label,
                        m.brief.state,
                        m.pool,
                        m.set_name.as_deref().unwrap_or("-"),
                        m.volume_seq
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        m.sessions,
                        location_text(m.brief.location.as_ref())
                    );
                }
            }
            Ok(ExitStatus::Success)
        }
        MediaCommand::Show { label } => {
            let cat = Catalog::open_existing(path)?;
            let d = cat.media_show(label)?;
            if json_out {
                let mut v = media_json(&d.media);
                v["history"] = json!(d.history.iter().map(location_json).collect::<Vec<_>>());
                v["session_list"] = json!(d
                    .sessions
                    .iter()
                    .map(|s| json!({
                        "session": s.number,
                        "uuid": s.uuid,
                        "status": s.status,
                        "origin": s.origin,
                        "host": s.host,
                        "started": opt_ts(s.started),
                        "ended": opt_ts(s.ended),
                        "sources": s.sources.iter().map(|p| display_path(p)).collect::<Vec<_>>(),
                        "entries": s.entries,
                        "entries_pruned": s.entries_pruned,
                        "stored_bytes": s.stored_bytes,
                        "warnings": s.warnings,
                        "data_tape_file": s.data_file,
                        "catalog_tape_file": s.catalog_file,
                        "lost_blocks": s.lost_blocks,
                        "drive": {"name": s.drive_name, "serial": s.drive_serial, "firmware": s.drive_firmware},
                    }))
                    .collect::<Vec<_>>());
                print_json(&v);
                return Ok(ExitStatus::Success);
            }
            let m = &d.media;
            outln!(
                "cartridge {} ({}), pool {}, {}",
                m.brief.label,
                m.brief.uuid,
                m.pool,
                match (&m.set_name, m.volume_seq) {
                    (Some(s), Some(v)) => format!("set \"{s}\" volume {v}"),
                    _ => "no set".into(),
                }
            );
            outln!(
                "  state {}{}{}",
                m.brief.state,
                m.state_note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                if m.worm { ", WORM" } else { "" }
            );
            outln!("  now: {}", location_text(m.brief.location.as_ref()));
            outln!(
                "  labelled {} on {}, block size {}, first catalogued {}",
                short(m.labelled),
                m.host,
                m.block_size,
                short(m.first_seen)
            );
            outln!(
                "  {} session(s), {} bytes stored; written {} time(s) ({} bytes), read {} time(s), {} error(s)",
                m.sessions, m.stored_bytes, m.write_count, m.bytes_written, m.read_count, m.error_count
            );
            match (m.verified, m.verify_ok) {
                (Some(t), Some(ok)) => outln!(
                    "  last verified {}: {}{}",
                    short(t),
                    if ok { "ok" } else { "FAILED" },
                    m.verify_detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                _ => outln!("  never verified"),
            }
            if let Some(t) = m.retention_until {
                outln!("  retained until {}", short(t));
            }
            for s in &d.sessions {
                outln!(
                    "  session {} ({}): {} on {}, {} entries{}, tape files {}{}{}",
                    s.number,
                    s.status,
                    s.started.map(short).unwrap_or_else(|| "?".into()),
                    s.host.as_deref().unwrap_or("?"),
                    s.entries,
                    if s.entries_pruned {
                        " (file records pruned)"
                    } else {
                        ""
                    },
                    s.data_file,
                    s.catalog_file
                        .map(|c| format!(" and {c}"))
                        .unwrap_or_default(),
                    match (&s.drive_serial, &s.drive_name) {
                        (Some(sn), _) => format!(", drive serial {sn}"),
                        (None, Some(n)) => format!(", drive {n}"),
                        _ => String::new(),
                    }
                );
            }
            if !d.history.is_empty() {
                outln!("  location history:");
                for e in &d.history {
                    outln!(
                        "    {}  {:<24} by {}{}",
                        short(e.at),
                        e.location.to_string(),
                        e.by,
                        e.note
                            .as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitStatus::Success)
        }
        MediaCommand::Move {
            label,
            to,
            by,
            note,
        } => {
            let to: Location = to.parse().map_err(usage)?;
            let mut cat = Catalog::open_existing(path)?;
            let who = by.clone().unwrap_or_else(invoking_user);
            let m = cat.move_media(label, &to, &who, note.as_deref())?;
            if json_out {
                print_json(&json!({
                    "label": m.label,
                    "uuid": m.uuid,
                    "from": m.from.as_ref().map(location_json),
                    "to": location_json(&m.to),
                }));
            } else {
                outln!(
                    "{}: {} -> {} (by {})",
                    m.label,
                    m.from
                        .as_ref()
                        .map(|f| f.location.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    m.to.location,
                    m.to.by
                );
            }
            Ok(ExitStatus::Success)
        }
        MediaCommand::Retire { label, reason } | MediaCommand::Damaged { label, reason } => {
            let state = if matches!(cmd, MediaCommand::Retire { .. }) {
                MediaState::Retired
            } else {
                MediaState::Damaged
            };
            let mut cat = Catalog::open_existing(path)?;
            let (name, old) = cat.set_media_state(label, state, reason.as_deref())?;
            if json_out {
                print_json(&json!({"label": name, "state": state, "previous_state": old}));
            } else if old == state.as_str() {
                outln!("{name}: already {old}");
            } else {
                outln!("{name}: {old} -> {}", state.as_str());
            }
            Ok(ExitStatus::Success)
        }
        MediaCommand::Scratch { .. } => unreachable!("dispatched with the device"),
        MediaCommand::Retain {
            label,
            until,
            clear,
        } => {
            let until = if *clear {
                None
            } else {
                when(until.as_deref(), DayEdge::End)?
            };
            let mut cat = Catalog::open_existing(path)?;
            let name = cat.set_retention(label, until)?;
            if json_out {
                print_json(&json!({"label": name, "retention_until": opt_ts(until)}));
            } else {
                match until {
                    Some(t) => outln!("{name}: retained until {}", ts_text(t)),
                    None => outln!("{name}: no retention date"),
                }
            }
            Ok(ExitStatus::Success)
        }
    }
}

fn recall(path: &Path, a: &RecallArgs, json_out: bool) -> anyhow::Result<ExitStatus> {
    let at = when(a.at.as_deref(), DayEdge::End)?;
    let cat = Catalog::open_existing(path)?;
    let r = cat.recall(&a.target, at, a.host.as_deref())?;
    if json_out {
        let target = match &r.target {
            RecallTarget::Sets(s) => {
                json!({"sets": s.iter().map(|(n, u)| json!({"name": n, "uuid": u})).collect::<Vec<_>>()})
            }
            RecallTarget::Paths { pattern, paths } => json!({"pattern": pattern, "paths": paths}),
        };
        print_json(&json!({
            "target": target,
            "at": opt_ts(at),
            "cartridges": r.cartridges.iter().map(|c| {
                let mut v = cartridge_json(&c.cartridge);
                v["set"] = json!(c.set_name);
                v["volume_seq"] = json!(c.volume_seq);
                v["sessions"] = json!(c.sessions);
                v["versions"] = json!(c.versions);
                v["warning"] = json!(c.warning);
                v
            }).collect::<Vec<_>>(),
        }));
    } else {
        match &r.target {
            RecallTarget::Sets(s) => {
                let names: Vec<String> = s.iter().map(|(n, u)| format!("{n} ({u})")).collect();
                outln!("to restore set {}:", names.join(", "));
            }
            RecallTarget::Paths { pattern, paths } => {
                outln!("to restore {pattern} ({paths} path(s)):");
            }
        }
        if r.cartridges.is_empty() {
            outln!(
                "  no sessions{}",
                if at.is_some() { " as of that date" } else { "" }
            );
        }
        for c in &r.cartridges {
            outln!(
                "  {:<10} {:<28} sessions {}{}{}",
                c.cartridge.label,
                location_text(c.cartridge.location.as_ref()),
                c.sessions
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                if c.versions > 0 {
                    format!(", {} version(s)", c.versions)
                } else {
                    String::new()
                },
                c.warning
                    .as_deref()
                    .map(|w| format!("  WARNING: {w}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(if r.cartridges.is_empty() {
        ExitStatus::Warnings
    } else {
        ExitStatus::Success
    })
}

fn sets(path: &Path, a: &SetsArgs, json_out: bool) -> anyhow::Result<ExitStatus> {
    let cat = Catalog::open_existing(path)?;
    let sets = cat.sets(a.host.as_deref())?;
    if json_out {
        print_json(&json!(sets
            .iter()
            .map(|s| json!({
                "name": s.name,
                "uuid": s.uuid,
                "host": s.host,
                "created": ts_text(s.created),
                "sessions": s.sessions,
                "interrupted_sessions": s.interrupted,
                "first_session": opt_ts(s.first_started),
                "last_session": opt_ts(s.last_started),
                "entries": s.entries,
                "stored_bytes": s.stored_bytes,
                "pruned_sessions": s.pruned_sessions,
                "cartridges": s.cartridges.iter().map(|c| json!({
                    "label": c.label,
                    "volume_seq": c.volume_seq,
                    "state": c.state,
                    "location": c.location.as_ref().map(|l| l.to_string()),
                })).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()));
        return Ok(ExitStatus::Success);
    }
    if sets.is_empty() {
        outln!("no sets");
    }
    for s in &sets {
        outln!(
            "{} ({}) from {}, created {}: {} session(s){}, {} entries, {} bytes stored",
            s.name,
            s.uuid,
            s.host,
            short(s.created),
            s.sessions,
            match (s.first_started, s.last_started) {
                (Some(a), Some(b)) => format!(" {} .. {}", short(a), short(b)),
                _ => String::new(),
            },
            s.entries,
            s.stored_bytes
        );
        for c in &s.cartridges {
            outln!(
                "  volume {:>3}  {:<10} {:<9} {}",
                c.volume_seq
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.label,
                c.state,
                c.location
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "location unknown".into())
            );
        }
    }
    Ok(ExitStatus::Success)
}

fn scratch(
    path: &Path,
    g: &Globals<'_>,
    label: &str,
    pool: &str,
    block_size: u64,
    yes: bool,
) -> anyhow::Result<ExitStatus> {
    let spec = g.device.ok_or_else(|| {
        PipelineError::Usage("no device given: use --device DEV or set $TAPE".into())
    })?;
    if let Some(dir) = spec.strip_prefix("vtape:") {
        tapir::device::library::VirtualLibrary::open(dir)
            .and_then(|mut lib| lib.load_barcode(label))
            .map_err(PipelineError::from)?;
    }
    let mut drive = open_drive(spec).map_err(PipelineError::from)?;
    let kit = pipeline::rescue::choose(None, false)?;
    let done =
        pipeline::volume::scratch_cartridge(drive.as_mut(), label, pool, block_size, yes, &kit)?;
    let mut forgotten = 0;
    if done.destroyed {
        // The catalog knows it from now on: an empty cartridge of the pool.
        let mut cat = Catalog::open(path)?;
        if let Some(l) = &done.new_label {
            cat.merge_cartridge(&tapir::catalog::ingest::CartridgeRecord::from_label(l))?;
        }
        if let Some(old) = &done.old_volume {
            match cat.forget_for_reuse(old, &format!("scratched into pool {pool}")) {
                Ok(n) => forgotten = n,
                Err(catalog::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if g.json {
        print_json(&json!({"scratched": done, "catalog_entries_forgotten": forgotten}));
    } else if done.destroyed {
        outln!(
            "{label}: destroyed {}; now an empty cartridge of pool {pool}",
            done.held
        );
        if forgotten > 0 {
            outln!("the catalog forgot its {forgotten} entries");
        }
    } else {
        outln!("{label} holds {}", done.held);
        outln!("scratching destroys that; run again with --yes to do it");
    }
    Ok(if done.destroyed {
        ExitStatus::Success
    } else {
        ExitStatus::Refused
    })
}

fn import(path: &Path, g: &Globals<'_>, scan: bool) -> anyhow::Result<ExitStatus> {
    let spec = g.device.ok_or_else(|| {
        PipelineError::Usage(
            "no device given: use --device DEV or set $TAPE to the drive holding the cartridge"
                .into(),
        )
    })?;
    // Open the catalog first: a damaged one is reported before the tape is read.
    let mut cat = Catalog::open(path)?;
    let mut drive = open_drive(spec).map_err(PipelineError::from)?;
    let listing = if scan {
        let map = pipeline::volume::map_tape(drive.as_mut())?;
        let mut sessions = Vec::new();
        for s in &map.sessions {
            sessions.push(pipeline::list::scan_session(drive.as_mut(), &map.label, s)?);
        }
        pipeline::list::Listing { map, sessions }
    } else {
        pipeline::list::list_cartridge(drive.as_mut(), None)?
    };
    let report = cat.import_listing(
        &listing,
        &ImportOptions {
            // The drive's own name, as `tapir write` records it.
            drive_name: Some(drive.name().to_string()),
            who: invoking_user(),
        },
    )?;
    // The last set catalog copy on the cartridge describes the rest of its
    // set: one cartridge rebuilds the catalog for all of it.
    let mut set_copy = None;
    let mut set_copy_problem = None;
    if listing.map.label.set.is_some() {
        if let Some(mut newest) =
            pipeline::setcat::newest_set_catalog(drive.as_mut(), &listing.map)?
        {
            if !newest.intact {
                set_copy_problem = Some(
                    "no intact set catalog copy on the cartridge; imported what the newest one holds"
                        .to_string(),
                );
            }
            set_copy = Some(
                cat.import_set_copy(&mut newest.copy.builder, &listing.map.label.volume_uuid)?,
            );
        }
    }
    let damaged = set_copy_problem.is_some()
        || listing
            .sessions
            .iter()
            .any(|s| !s.incomplete.is_empty() || !s.lost.is_empty());
    let interrupted = listing.sessions.iter().any(|s| !s.closed);
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["catalog"] = json!(path.display().to_string());
        v["unchanged"] =
            json!(report.unchanged() && set_copy.as_ref().is_none_or(|c| c.added == 0));
        v["set_copy"] = json!(set_copy);
        v["set_copy_problem"] = json!(set_copy_problem);
        print_json(&v);
    } else {
        outln!(
            "imported {} ({}){} into {}{}",
            report.cartridge,
            report.volume_uuid,
            match (&report.set, report.volume_seq) {
                (Some(s), Some(v)) => format!(", set \"{s}\" volume {v}"),
                _ => ", no set".into(),
            },
            path.display(),
            if report.unchanged() {
                ": nothing new"
            } else {
                ""
            }
        );
        for s in &report.sessions {
            outln!(
                "  session {}: {:?}, {} entries from its {}{}{}",
                s.number,
                s.action,
                s.entries,
                match s.source {
                    catalog::ingest::Origin::Catalog => "catalog",
                    catalog::ingest::Origin::Scan => "data (scanned)",
                    catalog::ingest::Origin::SetCopy => "set catalog copy",
                },
                if s.complete { "" } else { ", INTERRUPTED" },
                if s.lost_blocks > 0 {
                    format!(", {} unreadable block(s)", s.lost_blocks)
                } else {
                    String::new()
                }
            );
        }
        for s in &report.superseded {
            outln!("  retired the earlier cartridge labelled {s}: it was relabelled");
        }
        if let Some(l) = &report.location_recorded {
            outln!("  location: {l}");
        }
        if let Some(c) = &set_copy {
            outln!(
                "  from its set catalog copy: {} other cartridge(s), {} session(s) ({} new), {} entries",
                c.cartridges, c.sessions, c.added, c.entries
            );
        }
        if let Some(p) = &set_copy_problem {
            outln!("  warning: {p}");
        }
    }
    Ok(if damaged {
        ExitStatus::DataDamage
    } else if interrupted {
        ExitStatus::Warnings
    } else {
        ExitStatus::Success
    })
}

fn prune(
    path: &Path,
    older: Option<&str>,
    keep: Option<usize>,
    dry_run: bool,
    json_out: bool,
) -> anyhow::Result<ExitStatus> {
    let rule = match (when(older, DayEdge::Start)?, keep) {
        (Some(t), None) => PruneRule::OlderThan(t),
        (None, Some(n)) => PruneRule::KeepSessions(n),
        _ => {
            return Err(usage(
                "give --entries-older-than DATE or --keep-sessions N".into(),
            ))
        }
    };
    let mut cat = Catalog::open_existing(path)?;
    let r = cat.prune(rule, dry_run)?;
    if json_out {
        print_json(&serde_json::to_value(&r)?);
    } else {
        for s in &r.sessions {
            outln!(
                "{} {} session {} ({}, set {}): {} entries",
                if dry_run { "would prune" } else { "pruned" },
                s.cartridge,
                s.number,
                s.started.map(short).unwrap_or_else(|| "?".into()),
                s.set.as_deref().unwrap_or("-"),
                s.entries
            );
        }
        outln!(
            "{} {} entries of {} session(s){}",
            if dry_run { "would delete" } else { "deleted" },
            r.entries_deleted,
            r.sessions.len(),
            if dry_run {
                String::new()
            } else {
                format!(" and {} unused paths", r.paths_deleted)
            }
        );
    }
    Ok(ExitStatus::Success)
}

fn check(path: &Path, full: bool, json_out: bool) -> anyhow::Result<ExitStatus> {
    let cat = Catalog::open_existing(path)?;
    let r = cat.check(full)?;
    if json_out {
        print_json(&serde_json::to_value(&r)?);
    } else {
        outln!(
            "catalog {}: schema version {}, {} bytes, {} ok",
            r.path,
            r.schema_version,
            r.file_bytes,
            r.check
        );
        outln!(
            "  {} cartridges, {} sets, {} sessions, {} entries, {} paths{}",
            r.cartridges,
            r.sets,
            r.sessions,
            r.entries,
            r.paths,
            r.bytes_per_entry
                .map(|b| format!(", {b:.0} bytes per entry"))
                .unwrap_or_default()
        );
        for p in &r.pending {
            outln!("  pending: {p}");
        }
        for p in &r.problems {
            outln!("  PROBLEM: {p}");
        }
    }
    Ok(if r.problems.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Warnings
    })
}
