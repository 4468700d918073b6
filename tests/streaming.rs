//! The write path against a simulated drive: throughput is limited by the
//! drive, flushes cost backhitches, and the summary says so.

mod common;

use std::fs;

use common::*;

fn source(lab: &Lab, mib: usize) -> std::path::PathBuf {
    let src = lab.path("src");
    fs::create_dir_all(src.join("big")).unwrap();
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    fs::write(src.join("big/file.bin"), data).unwrap();
    src
}

#[test]
fn a_fast_source_keeps_a_slow_drive_streaming() {
    let lab = Lab::new(1, "1G");
    let src = source(&lab, 24);
    lab.label("TAP001L9");
    let lib = lab.lib();
    // A drive far slower than any host: 16 MB/s, matching down to 2 MB/s.
    let sim = lab.tapir([
        "vtape",
        "simulate",
        lib.to_str().unwrap(),
        "--rate",
        "16M",
        "--floor",
        "2M",
        "--drive-buffer",
        "4M",
    ]);
    assert_ok(&sim);
    let w = lab.tapir_in(&src, ["--json", "write", "--buffer", "16M", "big"]);
    assert_ok(&w);
    let s: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    let d = &s["drive_streaming"];
    assert_eq!(d["backhitches"], 0, "{s}");
    // The drive, not tapir, set the pace: the host waited for it.
    assert!(d["host_wait_seconds"].as_f64().unwrap() > 0.3, "{s}");
    assert!(s["throughput_mb_s"].as_f64().unwrap() < 20.0, "{s}");
}

#[test]
fn every_checkpoint_flush_costs_the_drive_a_backhitch() {
    let lab = Lab::new(1, "1G");
    let src = source(&lab, 24);
    lab.label("TAP001L9");
    let lib = lab.lib();
    assert_ok(&lab.tapir([
        "vtape",
        "simulate",
        lib.to_str().unwrap(),
        "--rate",
        "2G",
        "--floor",
        "1M",
        "--drive-buffer",
        "4M",
    ]));
    // Three files of 8 MiB each: checkpoints after each file but the last.
    for i in 0..3 {
        fs::write(src.join(format!("big/part{i}")), vec![i as u8 + 1; 8 << 20]).unwrap();
    }
    fs::remove_file(src.join("big/file.bin")).unwrap();
    let w = lab.tapir_in(&src, ["--json", "write", "--checkpoint-every", "8M", "big"]);
    assert_ok(&w);
    let s: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    let checkpoints = s["checkpoints"].as_u64().unwrap();
    assert!(checkpoints >= 2, "{s}");
    // Each checkpoint stops the tape; it backhitches when data follows
    // (after the last one, too little may follow to restart it).
    let flush_stops = s["drive_streaming"]["flush_backhitches"].as_u64().unwrap();
    assert!(flush_stops >= 2 && flush_stops <= checkpoints, "{s}");
    // Without checkpoints, no flush stops the tape mid-session.
    let w = lab.tapir_in(&src, ["--json", "write", "big"]);
    let s: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(s["checkpoints"], 0);
    assert_eq!(s["drive_streaming"]["flush_backhitches"], 0, "{s}");
}

#[test]
fn a_spooled_session_reaches_the_cartridge_intact_and_leaves_no_spool_files() {
    let lab = Lab::new(1, "1G");
    let src = source(&lab, 20);
    lab.label("TAP001L9");
    let spool = lab.path("spool");
    let w = lab.tapir_in(
        &src,
        [
            "--json",
            "write",
            "--spool",
            spool.to_str().unwrap(),
            "--spool-size",
            "4M",
            "big",
        ],
    );
    assert_ok(&w);
    let s: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(s["spool"]["used"], true, "{s}");
    assert!(s["spool"]["spool_files"].as_u64().unwrap() >= 5, "{s}");
    assert!(
        s["spool"]["spooled_bytes"].as_u64().unwrap() >= 20 << 20,
        "{s}"
    );
    assert_eq!(
        fs::read_dir(&spool).unwrap().count(),
        0,
        "spool files removed"
    );
    let (code, v) = lab.json(["verify"]);
    assert_eq!(code, 0, "{v}");
    let out = lab.path("out");
    assert_ok(&lab.tapir(["restore", "--to", out.to_str().unwrap()]));
    assert_eq!(
        fs::read(out.join("big/file.bin")).unwrap(),
        fs::read(src.join("big/file.bin")).unwrap()
    );
}

#[test]
fn the_spool_switches_itself_on_only_for_a_slow_source() {
    let lab = Lab::new(1, "1G");
    let src = source(&lab, 8);
    lab.label("TAP001L9");
    let spool = lab.path("spool");
    let sp = spool.to_str().unwrap();
    // No source reaches 1 TB/s: the spool switches on after the window.
    let w = lab.tapir_in(
        &src,
        [
            "--json",
            "write",
            "--spool",
            sp,
            "--spool-below",
            "1000G",
            "--spool-window",
            "0",
            "big",
        ],
    );
    assert_ok(&w);
    let s: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(s["spool"]["used"], true, "{s}");
    assert!(s["spool"]["measured_source_mb_s"].as_f64().is_some(), "{s}");
    // Every source beats 1 byte/s: no spooling.
    let w = lab.tapir_in(
        &src,
        [
            "--json",
            "write",
            "--spool",
            sp,
            "--spool-below",
            "1",
            "--spool-window",
            "0",
            "big",
        ],
    );
    assert_ok(&w);
    let s: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(s["spool"]["used"], false, "{s}");
    let (code, v) = lab.json(["verify"]);
    assert_eq!(code, 0, "{v}");
}
