//! Helper for `scripts/bench-catalog`: builds a synthetic host catalog
//! through the library's ingest API and times queries against it.
//!
//! ```text
//! catalog_bench ingest  --db PATH --entries N [--sessions S]
//! catalog_bench listing --entries N [--sessions S] --out FILE
//! catalog_bench find    --db PATH [--at SECONDS] [--repeat K] PATTERN
//! catalog_bench sample  --entries N [--sessions S]
//! ```
//!
//! The synthetic data: S nightly sessions of the same tree of N/S files,
//! 100 files per directory, 100 directories per group, one cartridge per
//! session, all in one set. Every command prints one JSON object.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use tapir::catalog::ingest::{CartridgeRecord, Origin, SessionRecord};
use tapir::catalog::query::FindQuery;
use tapir::catalog::Catalog;
use tapir::format::label::SetMembership;
use tapir::format::meta::{CatalogEntry, SessionEnd, StreamPosition, Timestamp};

const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;
const FILES_PER_DIR: u64 = 100;
const DIRS_PER_GROUP: u64 = 100;

struct Args {
    cmd: String,
    db: Option<PathBuf>,
    out: Option<PathBuf>,
    entries: u64,
    sessions: u64,
    at: Option<i64>,
    repeat: u32,
    pattern: Option<String>,
}

fn usage() -> ! {
    eprintln!("usage: catalog_bench ingest|listing|find|sample [--db PATH] [--out FILE] [--entries N] [--sessions S] [--at SECS] [--repeat K] [PATTERN]");
    std::process::exit(2)
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        cmd,
        db: None,
        out: None,
        entries: 10_000_000,
        sessions: 4,
        at: None,
        repeat: 1,
        pattern: None,
    };
    while let Some(x) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match x.as_str() {
            "--db" => a.db = Some(val().into()),
            "--out" => a.out = Some(val().into()),
            "--entries" => a.entries = val().parse().unwrap_or_else(|_| usage()),
            "--sessions" => a.sessions = val().parse().unwrap_or_else(|_| usage()),
            "--at" => a.at = Some(val().parse().unwrap_or_else(|_| usage())),
            "--repeat" => a.repeat = val().parse().unwrap_or_else(|_| usage()),
            p if !p.starts_with("--") => a.pattern = Some(p.to_string()),
            _ => usage(),
        }
    }
    a
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn path_of(i: u64) -> String {
    let dir = i / FILES_PER_DIR;
    format!(
        "srv/data/g{:04}/d{:06}/file{:03}.dat",
        dir / DIRS_PER_GROUP,
        dir,
        i % FILES_PER_DIR
    )
}

fn dir_of(i: u64) -> String {
    let dir = i / FILES_PER_DIR;
    format!("srv/data/g{:04}/d{:06}", dir / DIRS_PER_GROUP, dir)
}

/// Entry `i` of session `s`: one file in ten changes each night.
fn entry(i: u64, s: u64) -> CatalogEntry {
    let changed = if splitmix(i).is_multiple_of(10) { s } else { 0 };
    let r = splitmix(i ^ (changed << 40));
    let mut hash = [0u8; 32];
    for (k, chunk) in hash.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix(r.wrapping_add(k as u64)).to_le_bytes());
    }
    CatalogEntry {
        path: path_of(i).into_bytes(),
        kind: 1,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: None,
        group: None,
        mtime: Timestamp {
            sec: T0 - 1_000_000 + (r % 1_000_000) as i64 + changed as i64 * DAY,
            nsec: (r >> 32) as u32 % 1_000_000_000,
        },
        size: r % 4_000_000,
        link_target: None,
        position: StreamPosition {
            tape_file: 2,
            block: i / 8,
            offset: ((i % 8) * 30_000) as u32,
        },
        blake3: Some(hash),
        status: 0,
        device: None,
        continued_from: None,
    }
}

fn label_of(s: u64) -> String {
    format!("BEN{s:03}L9")
}

fn ingest(a: &Args) {
    let db = a.db.clone().unwrap_or_else(|| usage());
    let per = a.entries / a.sessions;
    let mut cat = Catalog::open(&db).unwrap_or_else(|e| fail(e));
    let set = SetMembership {
        set_uuid: [0xbe; 16],
        set_name: "bench".into(),
        volume_seq: 1,
        previous_volume: None,
        joined: Timestamp { sec: T0, nsec: 0 },
        host: "bench".into(),
    };
    let mut per_session = Vec::new();
    let started = Instant::now();
    for s in 0..a.sessions {
        let mut m = set.clone();
        m.volume_seq = s as u32 + 1;
        let mut vol = [0u8; 16];
        vol[..8].copy_from_slice(&(s + 1).to_le_bytes());
        cat.merge_cartridge(&CartridgeRecord {
            uuid: vol,
            label: label_of(s),
            pool: "bench".into(),
            set: Some(m),
            labelled: Timestamp { sec: T0, nsec: 0 },
            host: "bench".into(),
            block_size: 256 * 1024,
            worm: false,
        })
        .unwrap_or_else(|e| fail(e));
        let mut suuid = [0u8; 16];
        suuid[8..].copy_from_slice(&(s + 1).to_le_bytes());
        let rec = SessionRecord {
            uuid: suuid,
            number: 1,
            data_tape_file: 2,
            catalog_tape_file: Some(3),
            host: Some("bench".into()),
            started: Some(Timestamp {
                sec: T0 + s as i64 * DAY,
                nsec: 0,
            }),
            sources: vec![b"/srv".to_vec()],
            tapir_version: Some("bench".into()),
            end: Some(SessionEnd {
                entries: per,
                stored_bytes: 0,
                ended: Timestamp {
                    sec: T0 + s as i64 * DAY + 3600,
                    nsec: 0,
                },
                warnings: 0,
                status: 0,
                skipped: 0,
            }),
            complete: true,
            origin: Origin::Catalog,
            lost_blocks: 0,
            job: None,
            continues: None,
        };
        let t = Instant::now();
        cat.merge_session_stream(&vol, &rec, per, (0..per).map(|i| entry(i, s)))
            .unwrap_or_else(|e| fail(e));
        let secs = t.elapsed().as_secs_f64();
        per_session.push(serde_json::json!({"session": s, "entries": per, "seconds": secs, "rate": per as f64 / secs}));
        eprintln!(
            "session {s}: {per} entries in {secs:.1} s ({:.0}/s)",
            per as f64 / secs
        );
    }
    // The last session's checkpoint is part of the ingest.
    cat.wait_for_checkpoint();
    let secs = started.elapsed().as_secs_f64();
    drop(cat);
    let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let total = per * a.sessions;
    println!(
        "{}",
        serde_json::json!({
            "entries": total,
            "seconds": secs,
            "rate": total as f64 / secs,
            "db_bytes": bytes,
            "bytes_per_entry": bytes as f64 / total as f64,
            "sessions": per_session,
        })
    );
}

fn listing(a: &Args) {
    let out = a.out.clone().unwrap_or_else(|| usage());
    let per = a.entries / a.sessions;
    let f = std::fs::File::create(&out).unwrap_or_else(|e| fail(e));
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    for s in 0..a.sessions {
        for i in 0..per {
            let e = entry(i, s);
            let h: String = e
                .blake3
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            writeln!(
                w,
                "{}\t{}\t{}\t{}\t{}\t1\t{}:{}",
                String::from_utf8_lossy(&e.path),
                e.size,
                e.mtime.sec,
                h,
                label_of(s),
                e.position.tape_file,
                e.position.block
            )
            .unwrap_or_else(|e| fail(e));
        }
    }
    w.flush().unwrap_or_else(|e| fail(e));
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("{}", serde_json::json!({"listing": out, "bytes": bytes}));
}

fn find(a: &Args) {
    let t = Instant::now();
    let db = a.db.clone().unwrap_or_else(|| usage());
    let cat = Catalog::open_existing(&db).unwrap_or_else(|e| fail(e));
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let q = FindQuery {
        pattern: a.pattern.clone().unwrap_or_else(|| usage()),
        at: a.at,
        host: None,
        limit: None,
    };
    let mut best = f64::MAX;
    let mut r = None;
    for _ in 0..a.repeat.max(1) {
        let t = Instant::now();
        r = Some(cat.find(&q).unwrap_or_else(|e| fail(e)));
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    let r = r.unwrap();
    println!(
        "{}",
        serde_json::json!({"pattern": q.pattern, "paths": r.paths, "versions": r.versions.len(),
            "open_ms": open_ms, "query_ms": best})
    );
}

fn sample(a: &Args) {
    let per = a.entries / a.sessions;
    let i = per / 2 + 37;
    println!(
        "{}",
        serde_json::json!({"path": path_of(i), "dir": dir_of(i), "dir_glob": format!("{}/*", dir_of(i)),
            "versions": a.sessions, "dir_files": FILES_PER_DIR})
    );
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("catalog_bench: {e}");
    std::process::exit(1)
}

fn main() {
    let a = parse();
    if a.sessions == 0 {
        usage();
    }
    match a.cmd.as_str() {
        "ingest" => ingest(&a),
        "listing" => listing(&a),
        "find" => find(&a),
        "sample" => sample(&a),
        _ => usage(),
    }
}
