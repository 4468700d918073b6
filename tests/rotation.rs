//! Scheduled jobs: `tapir run` on a virtual library, night after night
//! with an injected clock (`--now`), choosing, reusing and exporting
//! cartridges by the pools' rules.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A configuration for the lab's library: GFS tiers (Sunday weekly, first
/// Sunday monthly), dailies kept 3 days.
fn configure(lab: &Lab, src: &Path, daily_retention: &str) -> PathBuf {
    let text = format!(
        r#"
[changer.lib]
device = "{dev}"

[drive.vt]
device = "{dev}"
changer = "lib"

[pool.daily]
retention = "{daily_retention}"
block_size = "64K"

[pool.weekly]
retention = "5w"
block_size = "64K"

[pool.monthly]
retention = "1y"
block_size = "64K"

[job.nightly]
sources = ["{src}"]
gfs = {{ daily = "daily", weekly = "weekly", monthly = "monthly", weekly_on = "sunday" }}
verify = true
export = "vault:offsite"
export_tiers = ["weekly", "monthly"]
"#,
        dev = lab.device(),
        src = src.display()
    );
    let path = lab.path("tapir.toml");
    fs::write(&path, text).unwrap();
    path
}

/// A library of `slots` cartridges, a source holding one small file, and
/// the GFS configuration with dailies kept `daily_retention`.
fn lab_with_one_file(slots: usize, daily_retention: &str) -> (Lab, PathBuf) {
    let lab = Lab::new(slots, "20M");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let config = configure(&lab, &src, daily_retention);
    (lab, config)
}

fn run_night(lab: &Lab, config: &Path, day: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let now = format!("{day}T01:00:00Z");
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "run",
        "nightly",
        "--now",
        &now,
    ];
    args.extend_from_slice(extra);
    lab.json(args)
}

/// A night that is expected to fail: no waiting for an operator, and the
/// plain output (errors print no JSON).
fn run_refused(lab: &Lab, config: &Path, now: &str) -> std::process::Output {
    lab.tapir([
        "--config",
        config.to_str().unwrap(),
        "run",
        "nightly",
        "--now",
        now,
        "--insert-timeout",
        "0",
    ])
}

/// `restore --at DAY`T12:00Z of job nightly into the lab's `to`: the exit
/// status, the summary, and the tree restored under the source's path.
fn restore_night(
    lab: &Lab,
    src: &Path,
    day: &str,
    to: &str,
) -> (
    i32,
    serde_json::Value,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    let to = lab.path(to);
    let (code, r) = lab.json([
        "restore",
        "--at",
        &format!("{day}T12:00:00Z"),
        "--job",
        "nightly",
        "--to",
        to.to_str().unwrap(),
    ]);
    let tree = files_under(&to.join(src.strip_prefix("/").unwrap()));
    (code, r, tree)
}

#[derive(Debug)]
struct Night {
    day: String,
    tier: String,
    pool: String,
    cartridge: String,
    action: String,
}

#[test]
fn ten_nights_rotate_dailies_reuse_expired_ones_and_export_weeklies_and_monthlies() {
    let lab = Lab::new(8, "20M");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    let config = configure(&lab, &src, "3d");
    let days = [
        "2026-11-28",
        "2026-11-29",
        "2026-11-30",
        "2026-12-01",
        "2026-12-02",
        "2026-12-03",
        "2026-12-04",
        "2026-12-05",
        "2026-12-06",
        "2026-12-07",
    ];
    let mut nights: Vec<Night> = Vec::new();
    for (i, day) in days.iter().enumerate() {
        // Something changes every night.
        fs::write(
            src.join(format!("night-{i}.txt")),
            format!("written before {day}\n"),
        )
        .unwrap();
        fs::write(src.join("log"), format!("last night: {day}\n")).unwrap();
        let (code, out) = run_night(&lab, &config, day, &[]);
        assert_eq!(code, 0, "{day}: {out}");
        assert!(
            out["verified"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["ok"] == true),
            "{out}"
        );
        nights.push(Night {
            day: day.to_string(),
            tier: out["tier"].as_str().unwrap().into(),
            pool: out["plan"]["pool"].as_str().unwrap().into(),
            cartridge: out["cartridge"].as_str().unwrap().into(),
            action: out["action"].as_str().unwrap().into(),
        });
    }
    let tiers: Vec<&str> = nights.iter().map(|n| n.tier.as_str()).collect();
    assert_eq!(
        tiers,
        [
            "daily", "weekly", "daily", "daily", "daily", "daily", "daily", "daily", "monthly",
            "daily"
        ]
    );
    for n in &nights {
        assert_eq!(n.pool, n.tier, "{n:?}");
    }
    // A daily cartridge is reused only once its 3 days are over, and only
    // the dailies' own.
    let day_no = |d: &str| days.iter().position(|x| *x == d).unwrap() as i64;
    let mut reused = 0;
    for (i, n) in nights.iter().enumerate() {
        let before = nights[..i]
            .iter()
            .rev()
            .find(|p| p.cartridge == n.cartridge);
        match n.action.as_str() {
            "reuse" => {
                reused += 1;
                let p = before.expect("a reused cartridge was written before");
                assert_eq!(p.pool, "daily", "{n:?} reuses {p:?}");
                assert!(
                    day_no(&n.day) - day_no(&p.day) >= 3,
                    "{n:?} reuses {p:?} too early"
                );
            }
            _ => assert!(before.is_none(), "{n:?} wrote over {before:?}"),
        }
    }
    assert!(reused >= 2, "{nights:?}");

    // The weekly and the monthly went offsite: out of the library, and the
    // catalog says where.
    let (_, status) = lab.json(["changer", "status"]);
    let inside = status.to_string();
    for n in nights.iter().filter(|n| n.tier != "daily") {
        assert!(
            !inside.contains(&n.cartridge),
            "{} still inside: {status}",
            n.cartridge
        );
        let (_, m) = lab.json(["media", "show", &n.cartridge]);
        assert!(m.to_string().contains("offsite"), "{m}");
    }
    // The last night's daily restores the tree as it was.
    let last = nights.last().unwrap();
    assert_ok(&lab.tapir(["changer", "load", &last.cartridge]));
    let out = lab.path("restored");
    assert_ok(&lab.tapir(["restore", "--to", out.to_str().unwrap()]));
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(
        fs::read_to_string(out.join(rel).join("log")).unwrap(),
        "last night: 2026-12-07\n"
    );
    // The catalog finds the first night's file only in sets that still
    // exist: never on a cartridge since reused.
    let path = rel.join("night-0.txt");
    let (code, f) = lab.json(["find", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{f}");
    let versions = f["results"][0]["versions"].as_array().unwrap();
    assert!(!versions.is_empty(), "{f}");
    for v in versions {
        let label = v["cartridge"]["label"].as_str().unwrap();
        let last = nights.iter().rev().find(|n| n.cartridge == label).unwrap();
        assert_eq!(v["set"], format!("nightly-{}", last.day), "{label}: {f}");
    }
}

#[test]
fn unexpired_cartridges_are_never_reused_and_the_run_says_why() {
    let (lab, config) = lab_with_one_file(2, "7d");
    for day in ["2026-11-30", "2026-12-01"] {
        let (code, out) = run_night(&lab, &config, day, &[]);
        assert_eq!(code, 0, "{out}");
    }
    let images: Vec<Vec<u8>> = ["TAP001L9", "TAP002L9"]
        .iter()
        .map(|b| fs::read(lab.image(b)).unwrap())
        .collect();
    // A third night: both cartridges hold unexpired dailies.
    let (code, plan) = run_night(&lab, &config, "2026-12-02", &["--dry-run"]);
    assert_eq!(code, 5, "{plan}");
    let refused = plan["plan"]["refused"].to_string();
    assert!(refused.contains("kept until 2026-12-07"), "{plan}");
    let err = run_refused(&lab, &config, "2026-12-02T01:00:00Z");
    assert_code(&err, 3);
    assert!(
        text(&err.stderr).contains("no cartridge in the library can take it"),
        "{}",
        text(&err.stderr)
    );
    for (b, before) in ["TAP001L9", "TAP002L9"].iter().zip(&images) {
        assert!(
            &fs::read(lab.image(b)).unwrap() == before,
            "{b} was touched"
        );
    }
    // A clock far in the future expires nothing; --trust-clock does.
    let (code, plan) = run_night(&lab, &config, "2028-01-01", &["--dry-run"]);
    assert_eq!(code, 5, "{plan}");
    assert!(
        plan["plan"]["warnings"].to_string().contains("clock"),
        "{plan}"
    );
    let (code, plan) = run_night(&lab, &config, "2028-01-01", &["--dry-run", "--trust-clock"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["plan"]["candidates"][0]["action"], "reuse", "{plan}");
}

#[test]
fn a_bad_configuration_names_the_file_the_line_and_the_key() {
    let lab = Lab::new(1, "20M");
    let config = lab.path("tapir.toml");
    fs::write(
        &config,
        "[pool.daily]\nretention = \"3d\"\n\n[job.j]\nsources = [\"/etc\"]\npool = \"dialy\"\n",
    )
    .unwrap();
    let out = lab.tapir([
        "--config",
        config.to_str().unwrap(),
        "run",
        "j",
        "--dry-run",
    ]);
    assert_code(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6: job.j.pool: no [pool.dialy]",
            config.display()
        )),
        "{err}"
    );
}

#[test]
fn a_foreign_cartridge_is_passed_over_until_scratched_and_then_used() {
    use tapir::device::{vtape::VirtualTape, BlockWrite};
    let lab = Lab::new(3, "20M");
    // Slot 2 holds another program's data.
    {
        let mut t = VirtualTape::open(lab.image("TAP002L9"), "t").unwrap();
        t.write_block(b"ANOTHER BACKUP PROGRAM'S HEADER").unwrap();
        t.write_filemarks(1, false).unwrap();
    }
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let config = configure(&lab, &src, "7d");
    // Take the first cartridge out of the way: it holds a night already.
    let (code, _) = run_night(&lab, &config, "2026-11-30", &[]);
    assert_eq!(code, 0);
    let foreign = fs::read(lab.image("TAP002L9")).unwrap();
    let (code, out) = run_night(&lab, &config, "2026-12-01", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["cartridge"], "TAP003L9", "{out}");
    assert!(
        out["passed_over"]
            .to_string()
            .contains("TAP002L9: it holds"),
        "{out}"
    );
    assert!(
        fs::read(lab.image("TAP002L9")).unwrap() == foreign,
        "untouched"
    );

    // Scratching shows first, and destroys only when told.
    let shown = lab.tapir(["media", "scratch", "TAP002L9", "--pool", "daily"]);
    assert_code(&shown, 3);
    assert!(
        text(&shown.stdout).contains("TAP002L9 holds"),
        "{}",
        text(&shown.stdout)
    );
    assert!(fs::read(lab.image("TAP002L9")).unwrap() == foreign);
    assert_ok(&lab.tapir([
        "media",
        "scratch",
        "TAP002L9",
        "--pool",
        "daily",
        "--block-size",
        "64K",
        "--yes",
    ]));
    let (code, out) = run_night(&lab, &config, "2026-12-02", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["cartridge"], "TAP002L9", "{out}");
    assert_eq!(out["action"], "new-set", "{out}");
}

#[test]
fn a_changer_that_fails_a_move_costs_that_cartridge_only_and_the_catalog_stays_true() {
    let (lab, config) = lab_with_one_file(3, "7d");
    let (code, _) = run_night(&lab, &config, "2026-11-30", &[]);
    assert_eq!(code, 0);
    fs::write(
        lab.lib().join("faults.json"),
        r#"{"fail_move_of": ["TAP002L9"]}"#,
    )
    .unwrap();
    let before = fs::read(lab.image("TAP002L9")).unwrap();
    let (code, out) = run_night(&lab, &config, "2026-12-01", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["cartridge"], "TAP003L9", "{out}");
    assert!(
        out["passed_over"]
            .to_string()
            .contains("failed to move TAP002L9"),
        "{out}"
    );
    assert!(fs::read(lab.image("TAP002L9")).unwrap() == before);
    let (_, status) = lab.json(["changer", "status"]);
    assert!(
        status.to_string().contains("TAP002L9"),
        "still in its slot: {status}"
    );
    // The catalog knows nothing written to it.
    let shown = lab.tapir(["media", "show", "TAP002L9"]);
    assert!(text(&shown.stderr).contains("no cartridge TAP002L9 in the catalog"));
    // With every candidate failing, the job stops and says why.
    fs::write(
        lab.lib().join("faults.json"),
        r#"{"fail_move_of": ["TAP001L9", "TAP002L9"]}"#,
    )
    .unwrap();
    let out = run_refused(&lab, &config, "2026-12-09T01:00:00Z");
    assert_code(&out, 3);
    let err = text(&out.stderr);
    assert!(err.contains("failed to move TAP002L9"), "{err}");
}

#[test]
fn scheduled_jobs_get_systemd_units() {
    let lab = Lab::new(1, "20M");
    let src = lab.path("src");
    let config = configure(&lab, &src, "7d");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("schedule = \"Mon..Fri 01:00\"\n");
    fs::write(&config, text).unwrap();
    let units = lab.path("units");
    fs::create_dir_all(&units).unwrap();
    assert_ok(&lab.tapir([
        "--config",
        config.to_str().unwrap(),
        "systemd",
        "generate",
        "--dir",
        units.to_str().unwrap(),
        "--tapir",
        "/usr/bin/tapir",
    ]));
    let service = fs::read_to_string(units.join("tapir-nightly.service")).unwrap();
    let timer = fs::read_to_string(units.join("tapir-nightly.timer")).unwrap();
    assert!(
        service.contains(&format!(
            "ExecStart=/usr/bin/tapir --config {} run nightly\n",
            config.canonicalize().unwrap().display()
        )),
        "{service}"
    );
    assert!(timer.contains("OnCalendar=Mon..Fri 01:00\n"), "{timer}");
    // Run by systemd, its lines carry their syslog priority for the journal.
    let out = std::process::Command::new(TAPIR)
        .args(["--config", config.to_str().unwrap(), "run", "weekly-nope"])
        .env("JOURNAL_STREAM", "8:12345")
        .env("TAPIR_CATALOG", lab.catalog())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.starts_with("<3>tapir: error: "), "{said}");
}

#[test]
fn an_operator_is_told_which_cartridge_to_insert_and_where_it_is_and_the_notify_command_hears_it() {
    use std::io::BufReader;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let (lab, config) = lab_with_one_file(2, "1d");
    // The notify command writes who it ran as and what it heard, into a
    // directory anyone may write (it runs as nobody under root).
    let heard = tempfile::Builder::new()
        .prefix("tapir-notify-")
        .tempdir()
        .unwrap();
    fs::set_permissions(heard.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let out_file = heard.path().join("heard");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[notify]\ncommand = [\"/bin/sh\", \"-c\", \"echo $(id -u) $TAPIR_EVENT $TAPIR_JOB \\\"$1\\\" >> $0\", \"{}\"]\n",
        out_file.display()
    ));
    fs::write(&config, text).unwrap();
    for day in ["2026-11-30", "2026-12-01"] {
        let (code, out) = run_night(&lab, &config, day, &[]);
        assert_eq!(code, 0, "{out}");
    }
    // The older daily goes to a shelf; when it expires it is the one to use.
    assert_ok(&lab.tapir(["changer", "export", "TAP001L9", "--to", "shelf:B3"]));
    let mut child = Command::new(TAPIR)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--json",
            "run",
            "nightly",
        ])
        .args(["--now", "2026-12-02T01:00:00Z", "--insert-timeout", "600"])
        .env("TAPIR_CATALOG", lab.catalog())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let asked = read_until_operator(&mut stderr);
    assert!(
        asked.contains("TAP001L9 (last known at shelf:B3"),
        "{asked}"
    );
    assert_ok(&lab.tapir(["changer", "import", "TAP001L9"]));
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(out.status.code(), Some(0), "{asked}{rest}");
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["cartridge"], "TAP001L9", "{done}");
    assert_eq!(done["action"], "reuse", "{done}");
    let heard = fs::read_to_string(&out_file).unwrap();
    assert!(heard.contains("insert nightly"), "{heard}");
    assert!(heard.contains("TAP001L9"), "{heard}");
    if is_root() {
        assert!(
            !heard.starts_with("0 "),
            "the notify command ran as root: {heard}"
        );
    }
}

#[test]
fn two_jobs_never_share_a_drive() {
    let (lab, config) = lab_with_one_file(2, "7d");
    // Another job has the drive open (and so the library's lock).
    let lib = tapir::device::library::VirtualLibrary::open(lab.lib()).unwrap();
    let held = lib.open_drive().unwrap();
    let out = run_refused(&lab, &config, "2026-12-02T01:00:00Z");
    assert_code(&out, 5);
    assert!(
        text(&out.stderr).contains("in use by another process"),
        "{}",
        text(&out.stderr)
    );
    drop(held);
    // Another job holds the drive for its whole run (between its moves
    // too): this one waits for it, and at its deadline says who has it.
    let lock_path =
        tapir::pipeline::joblib::drive_lock_path(&format!("vtape:{}/", lab.lib().display()));
    let mut other = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&lock_path)
        .unwrap();
    other.lock().unwrap();
    std::io::Write::write_all(&mut other, b"job weekly, pid 4242").unwrap();
    let out = run_refused(&lab, &config, "2026-12-02T01:00:00Z");
    assert_code(&out, 5);
    assert!(
        text(&out.stderr).contains("in use by another process (job weekly, pid 4242)"),
        "{}",
        text(&out.stderr)
    );
    drop(other);
    let (code, done) = run_night(&lab, &config, "2026-12-02", &[]);
    assert_eq!(code, 0, "{done}");
}

#[test]
fn incrementals_write_only_what_changed_and_restore_at_a_date_rebuilds_the_tree_of_that_night() {
    let lab = Lab::new(8, "20M");
    let src = lab.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let config = configure_incremental(&lab, &src);
    let night = |day: &str| -> serde_json::Value {
        let now = format!("{day}T01:00:00Z");
        let (code, out) = lab.json([
            "--config",
            config.to_str().unwrap(),
            "run",
            "nightly",
            "--now",
            &now,
        ]);
        assert!(code <= 1, "{day}: {out}");
        out
    };
    let big = vec![7u8; 300_000];
    fs::write(src.join("big"), &big).unwrap();
    fs::write(src.join("d/a"), b"a, first").unwrap();
    fs::write(src.join("d/b"), b"b, first").unwrap();
    let first = night("2026-12-01");
    assert_eq!(
        first["level_written"], 0,
        "no base yet: a full one: {first}"
    );
    assert!(first["plan"]["warnings"]
        .to_string()
        .contains("this run is a full one"));
    let mut states = vec![files_under(&src)];

    // Night 2: b changes, c appears; big stays.
    fs::write(src.join("d/b"), b"b, second and longer").unwrap();
    fs::write(src.join("d/c"), b"c, new").unwrap();
    let second = night("2026-12-02");
    assert_eq!(second["level_written"], 1, "{second}");
    // Only the changed and new files were read.
    assert_eq!(
        second["write"]["bytes_read"],
        (b"b, second and longer".len() + b"c, new".len()) as u64,
        "{second}"
    );
    states.push(files_under(&src));

    // Night 3: a is deleted, big changes.
    fs::remove_file(src.join("d/a")).unwrap();
    fs::write(src.join("big"), vec![9u8; 200_000]).unwrap();
    let third = night("2026-12-03");
    assert_eq!(third["level_written"], 1, "{third}");
    states.push(files_under(&src));

    // Night 4: nothing changes at all.
    let fourth = night("2026-12-04");
    assert_eq!(fourth["write"]["bytes_read"], 0, "{fourth}");
    states.push(files_under(&src));

    let rel = src.strip_prefix("/").unwrap();
    for (i, (day, want)) in ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
        .iter()
        .zip(&states)
        .enumerate()
    {
        let (code, r, tree) = restore_night(&lab, &src, day, &format!("as-of-{i}"));
        assert_eq!(code, 0, "{day}: {r}");
        assert!(tree == *want, "{day}: the tree differs: {r}");
    }
    // With the full backup's cartridge in a vault, the restore asks for it.
    let full = first["cartridge"].as_str().unwrap();
    assert_ok(&lab.tapir(["changer", "export", full, "--to", "vault:offsite"]));
    let to = lab.path("asked");
    let mut child = std::process::Command::new(TAPIR)
        .args([
            "--device",
            &lab.device(),
            "--json",
            "restore",
            "--at",
            "2026-12-02T12:00:00Z",
        ])
        .args([
            "--job",
            "nightly",
            "--operator-timeout",
            "600",
            "--to",
            to.to_str().unwrap(),
        ])
        .env("TAPIR_CATALOG", lab.catalog())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let asked = read_until_operator(&mut stderr);
    assert!(
        asked.contains(&format!(
            "insert cartridge {full} (last known at vault:offsite"
        )),
        "{asked}"
    );
    assert_ok(&lab.tapir(["changer", "import", full]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{asked}");
    assert!(files_under(&to.join(rel)) == states[1]);

    // The last night's cartridge alone names what it does not hold.
    let last = fourth["cartridge"].as_str().unwrap();
    assert_ok(&lab.tapir(["changer", "load", last]));
    let alone = lab.path("alone");
    let (code, r) = lab.json(["restore", "--to", alone.to_str().unwrap()]);
    assert_eq!(code, 1, "{r}");
    assert!(r["unchanged"].to_string().contains("big"), "{r}");
}

/// A configuration with one incremental job `nightly` of `src` into pool
/// `inc` on the lab's library.
fn configure_incremental(lab: &Lab, src: &Path) -> PathBuf {
    configure_incremental_with(lab, src, "", "")
}

/// [`configure_incremental`] with more lines for the pool and the job.
fn configure_incremental_with(lab: &Lab, src: &Path, pool: &str, job: &str) -> PathBuf {
    let config = lab.path("tapir.toml");
    fs::write(
        &config,
        format!(
            r#"
[drive.vt]
device = "{dev}"
[pool.inc]
retention = "30d"
block_size = "64K"
{pool}
[job.nightly]
sources = ["{src}"]
pool = "inc"
level = "incremental"
{job}
"#,
            dev = lab.device(),
            src = src.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn an_incremental_after_a_full_that_spans_cartridges_reads_only_what_changed() {
    let lab = Lab::new(8, "5M");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    // 12 files of 1 MB: the full backup needs three 5 MB cartridges.
    for i in 0..12u8 {
        let data: Vec<u8> = (0..1_000_000u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
            .collect();
        fs::write(src.join(format!("f{i:02}")), data).unwrap();
    }
    let config = configure_incremental(&lab, &src);
    let (code, full) = run_night(&lab, &config, "2026-12-01", &[]);
    assert!(code <= 1, "{full}");
    assert_eq!(full["level_written"], 0, "{full}");
    fs::write(src.join("new"), b"only this is new").unwrap();
    let (code, inc) = run_night(&lab, &config, "2026-12-02", &[]);
    assert!(code <= 1, "{inc}");
    assert_eq!(inc["level_written"], 1, "{inc}");
    assert_eq!(
        inc["write"]["bytes_read"],
        b"only this is new".len() as u64,
        "files on every cartridge of the full set are known unchanged: {inc}"
    );
    let unchanged = &inc["unchanged"];
    assert_eq!(
        unchanged["by_metadata"].as_u64().unwrap() + unchanged["hashed"].as_u64().unwrap(),
        12,
        "{inc}"
    );
    assert_eq!(unchanged["changed_by_hash"], 0, "{inc}");
    assert_eq!(full["unchanged"]["facts_kept"], 12, "{full}");
    assert_eq!(unchanged["facts_kept"], 13, "{inc}");
    let mut states = vec![files_under(&src)];

    // Night 3: f00 gets other bytes of the same length and its old mtime
    // back (only its ctime tells), and six files change whole, so this
    // incremental spans cartridges too.
    let f00 = src.join("f00");
    let mtime = fs::metadata(&f00).unwrap().modified().unwrap();
    let mut other = fs::read(&f00).unwrap();
    other.reverse();
    fs::write(&f00, &other).unwrap();
    fs::File::options()
        .write(true)
        .open(&f00)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(fs::metadata(&f00).unwrap().modified().unwrap(), mtime);
    for i in 1..7 {
        fs::write(src.join(format!("f{i:02}")), vec![i as u8; 1_000_000]).unwrap();
    }
    let (code, third) = run_night(&lab, &config, "2026-12-03", &[]);
    assert!(code <= 1, "{third}");
    assert_eq!(third["write"]["bytes_read"], 7_000_000, "{third}");
    assert!(
        third["write"]["parts"].as_array().unwrap().len() >= 2,
        "{third}"
    );
    states.push(files_under(&src));

    let restore_each_night = |tag: &str| {
        for (day, want) in ["2026-12-02", "2026-12-03"].iter().zip(&states) {
            let (code, r, tree) = restore_night(&lab, &src, day, &format!("{tag}-as-of-{day}"));
            assert_eq!(code, 0, "{tag} {day}: {r}");
            assert!(tree == *want, "{tag} {day}: {r}");
        }
    };
    restore_each_night("kept");

    // With the host catalog lost, the last cartridge of each night's set
    // brings back its whole set, with the job's runs and their parts.
    fs::remove_file(lab.catalog()).unwrap();
    for run in [&full, &inc, &third] {
        let last = run["write"]["parts"].as_array().unwrap().last().unwrap();
        assert_ok(&lab.tapir(["changer", "load", last["cartridge"].as_str().unwrap()]));
        assert_ok(&lab.tapir(["catalog", "import"]));
    }
    restore_each_night("rebuilt");
}

#[test]
fn a_pool_of_two_copies_writes_each_run_twice_sends_one_offsite_and_restores_from_either() {
    let lab = Lab::new(5, "20M");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"first night").unwrap();
    let config = configure_incremental_with(
        &lab,
        &src,
        "copies = 2\nlocations = [\"library\", \"vault:offsite\"]",
        "verify = true",
    );
    // The dry run plans both copies, on two cartridges.
    let (code, plan) = run_night(&lab, &config, "2026-12-01", &["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    let first = plan["plan"]["candidates"][0]["label"].as_str().unwrap();
    let second = plan["further_copies"][0]["plan"]["candidates"][0]["label"]
        .as_str()
        .unwrap();
    assert_ne!(first, second, "{plan}");
    assert_eq!(plan["further_copies"][0]["export"], "vault:offsite");

    // The first night has no base: both copies are full ones, and say so.
    let (code, one) = run_night(&lab, &config, "2026-12-01", &[]);
    assert_eq!(code, 1, "{one}");
    let copy2 = &one["further_copies"][0];
    assert_eq!(copy2["copy"], 2, "{one}");
    assert_ne!(one["cartridge"], copy2["cartridge"], "{one}");
    assert_eq!(one["exported"].as_array().unwrap().len(), 0, "{one}");
    assert!(copy2["exported"][0]
        .as_str()
        .unwrap()
        .ends_with("to vault:offsite"));
    assert!(copy2["verified"][0]["ok"].as_bool().unwrap(), "{one}");
    assert!(copy2["write"]["set_name"]
        .as_str()
        .unwrap()
        .ends_with("-copy2"));

    // Night 2: each copy is an incremental of its own copy.
    fs::write(src.join("b"), b"second night").unwrap();
    let (code, two) = run_night(&lab, &config, "2026-12-02", &[]);
    assert_eq!(code, 0, "{two}");
    for run in [&two, &two["further_copies"][0]] {
        assert_eq!(run["level_written"], 1, "{two}");
        assert_eq!(
            run["write"]["bytes_read"],
            b"second night".len() as u64,
            "{two}"
        );
    }
    let want = files_under(&src);
    let rel = src.strip_prefix("/").unwrap();
    let restore = |to: &str, copy: Option<&str>| {
        let to = lab.path(to);
        let mut args = vec![
            "restore",
            "--at",
            "2026-12-02T12:00:00Z",
            "--job",
            "nightly",
            "--operator-timeout",
            "0",
            "--to",
            to.to_str().unwrap(),
        ];
        if let Some(c) = copy {
            args.extend(["--copy", c]);
        }
        let (code, r) = lab.json(args);
        (code, r, files_under(&to.join(rel)))
    };
    // Copy 1 is in the library: chosen without asking for anything.
    let (code, r, got) = restore("copy-1", None);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["copy"], 1);
    assert!(got == want);
    // Copy 2 is in the vault: asked for by name, refused without an operator.
    let out = lab.tapir([
        "restore",
        "--at",
        "2026-12-02T12:00:00Z",
        "--job",
        "nightly",
        "--copy",
        "2",
        "--operator-timeout",
        "0",
        "--to",
        lab.path("refused").to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(said.contains("vault:offsite"), "{said}");
    // With copy 1's cartridges gone offsite and copy 2's back, copy 2 is
    // the one restored.
    for run in [&one, &two] {
        let c1 = run["cartridge"].as_str().unwrap();
        assert_ok(&lab.tapir(["changer", "export", c1, "--to", "vault:other"]));
        let c2 = run["further_copies"][0]["cartridge"].as_str().unwrap();
        assert_ok(&lab.tapir(["changer", "import", c2]));
    }
    let (code, r, got) = restore("copy-2", None);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["copy"], 2);
    assert!(got == want);

    // Night 3 with one cartridge left: copy 1 is written, copy 2 cannot
    // be, and the run says so instead of succeeding.
    fs::write(src.join("c"), b"third night").unwrap();
    let out = run_refused(&lab, &config, "2026-12-03T01:00:00Z");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("copy 2 of 2 was not written"), "{said}");
}

#[test]
fn after_the_catalog_is_rebuilt_from_the_cartridges_an_incremental_hashes_what_metadata_cannot_decide(
) {
    let lab = Lab::new(6, "20M");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    for (name, body) in [("a", "alpha"), ("b", "bravo"), ("c", "charlie")] {
        fs::write(src.join(name), body).unwrap();
    }
    let config = configure_incremental(&lab, &src);
    let (code, one) = run_night(&lab, &config, "2026-12-01", &[]);
    assert!(code <= 1, "{one}");
    fs::write(src.join("b"), "bravo, changed").unwrap();
    let (code, two) = run_night(&lab, &config, "2026-12-02", &[]);
    assert_eq!(code, 0, "{two}");

    // The host catalog is lost; the cartridges bring it back, without
    // what the jobs saw of their files on this host.
    fs::remove_file(lab.catalog()).unwrap();
    for run in [&one, &two] {
        let cartridge = run["cartridge"].as_str().unwrap();
        assert_ok(&lab.tapir(["changer", "load", cartridge]));
        assert_ok(&lab.tapir(["catalog", "import"]));
    }
    // c keeps its size and mtime but not its content: only its hash tells.
    let c = src.join("c");
    let mtime = fs::metadata(&c).unwrap().modified().unwrap();
    fs::write(&c, "CHARLIE").unwrap();
    fs::File::options()
        .write(true)
        .open(&c)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (code, three) = run_night(&lab, &config, "2026-12-03", &[]);
    assert_eq!(code, 0, "{three}");
    assert_eq!(three["level_written"], 1, "{three}");
    let unchanged = &three["unchanged"];
    assert_eq!(unchanged["by_metadata"], 0, "no host facts: {three}");
    assert_eq!(unchanged["hashed"], 3, "{three}");
    assert_eq!(unchanged["changed_by_hash"], 1, "{three}");
    assert_eq!(
        three["write"]["bytes_read"], 7,
        "only c is read whole: {three}"
    );
    let (code, r, tree) = restore_night(&lab, &src, "2026-12-03", "as-of");
    assert_eq!(code, 0, "{r}");
    assert!(tree == files_under(&src));
}

#[test]
fn files_settled_long_before_the_last_run_are_trusted_by_inode_and_ctime_without_reading() {
    // Files whose ctime is older than this test: Debian's licence texts
    // (base-files), untouched since the system was installed.
    let settled = Path::new("/usr/share/common-licenses");
    let files = fs::read_dir(settled)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_file()))
            })
            .count()
        })
        .unwrap_or(0);
    if files == 0 {
        eprintln!("skipped: {} is not here to read", settled.display());
        return;
    }
    let lab = Lab::new(4, "20M");
    let config = configure_incremental(&lab, settled);
    let (code, one) = run_night(&lab, &config, "2026-12-01", &[]);
    assert!(code <= 1, "{one}");
    assert_eq!(one["unchanged"]["facts_kept"], files as u64, "{one}");
    let (code, two) = run_night(&lab, &config, "2026-12-02", &[]);
    assert_eq!(code, 0, "{two}");
    assert_eq!(two["unchanged"]["by_metadata"], files as u64, "{two}");
    assert_eq!(two["unchanged"]["hashed"], 0, "{two}");
    assert_eq!(two["write"]["bytes_read"], 0, "{two}");
}
