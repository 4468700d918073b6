//! The host catalog through the real binary: write sessions to a virtual
//! cartridge, import it into a scratch catalog, and ask `find`, `media`,
//! `recall` and `sets`; a damaged catalog file is reported (exit 6) and
//! left untouched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A lab with one labelled cartridge holding two sessions of set "nightly":
/// etc/ssh/sshd_config changes between them.
fn two_nights() -> (Lab, PathBuf) {
    let lab = Lab::new(2, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(src.join("etc/ssh")).unwrap();
    fs::write(src.join("etc/ssh/sshd_config"), b"PermitRootLogin no\n").unwrap();
    fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "nightly", "etc"]));
    fs::write(
        src.join("etc/ssh/sshd_config"),
        b"PermitRootLogin no\nPasswordAuthentication no\n",
    )
    .unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "etc"]));
    // Not the lab's own catalog (which `tapir write` may record into):
    // these tests build theirs from the cartridge alone.
    let catalog = lab.path("imported.db");
    (lab, catalog)
}

/// `tapir --catalog CAT --json ARGS`, parsed.
fn cjson(lab: &Lab, catalog: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--catalog", catalog.to_str().unwrap()];
    all.extend_from_slice(args);
    lab.json(all)
}

fn ctapir(lab: &Lab, catalog: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--catalog", catalog.to_str().unwrap()];
    all.extend_from_slice(args);
    lab.tapir(all)
}

fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

#[test]
fn import_then_find_move_and_recall() {
    let (lab, cat) = two_nights();

    let (code, imp) = cjson(&lab, &cat, &["catalog", "import"]);
    assert_eq!(code, 0, "{imp}");
    assert_eq!(imp["cartridge"], "TAP001L9");
    assert_eq!(imp["set"], "nightly");
    let actions: Vec<&str> = imp["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["added", "added"]);
    assert_eq!(imp["unchanged"], false);

    // Every version, newest first, with the cartridge and where it is.
    let (code, found) = cjson(&lab, &cat, &["find", "/etc/ssh/sshd_config"]);
    assert_eq!(code, 0, "{found}");
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["path"], "etc/ssh/sshd_config");
    let versions = results[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["session"], 2);
    assert_eq!(versions[1]["session"], 1);
    assert_eq!(
        versions[0]["blake3"],
        hash_hex(b"PermitRootLogin no\nPasswordAuthentication no\n")
    );
    assert_eq!(versions[1]["blake3"], hash_hex(b"PermitRootLogin no\n"));
    assert_eq!(versions[0]["size"], 45);
    assert_eq!(versions[0]["cartridge"]["label"], "TAP001L9");
    let seen = versions[0]["cartridge"]["location"]["where"]
        .as_str()
        .unwrap();
    assert!(seen.starts_with("drive:vtape:"), "{seen}");

    // As of now: one version, the newest; before anything was written: none.
    let (code, now) = cjson(&lab, &cat, &["find", "etc/ssh/sshd_config", "--at", "now"]);
    assert_eq!(code, 0);
    let v = &now["results"][0]["versions"];
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["session"], 2);
    let (code, before) = cjson(&lab, &cat, &["find", "etc/ssh/sshd_config", "--at", "@0"]);
    assert_eq!(code, 1, "{before}");
    assert_eq!(before["paths"], 0);

    // A glob over one directory.
    let (_, glob) = cjson(&lab, &cat, &["find", "etc/*", "--at", "now"]);
    let paths: Vec<&str> = glob["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["etc/hosts", "etc/ssh", "etc/ssh/sshd_config"]);

    // Off to the vault; the catalog follows it.
    let (code, moved) = cjson(
        &lab,
        &cat,
        &[
            "media",
            "move",
            "TAP001L9",
            "--to",
            "vault:ironmountain",
            "--by",
            "alice",
        ],
    );
    assert_eq!(code, 0, "{moved}");
    assert_eq!(moved["to"]["where"], "vault:ironmountain");
    assert_eq!(moved["from"]["where"], seen);

    let (code, recall) = cjson(&lab, &cat, &["recall", "nightly"]);
    assert_eq!(code, 0, "{recall}");
    let carts = recall["cartridges"].as_array().unwrap();
    assert_eq!(carts.len(), 1);
    assert_eq!(carts[0]["label"], "TAP001L9");
    assert_eq!(carts[0]["location"]["where"], "vault:ironmountain");
    assert_eq!(carts[0]["location"]["by"], "alice");
    assert_eq!(carts[0]["sessions"], serde_json::json!([1, 2]));

    let (code, recall) = cjson(&lab, &cat, &["recall", "/etc/hosts"]);
    assert_eq!(code, 0);
    assert_eq!(recall["target"]["paths"], 1);
    assert_eq!(recall["cartridges"][0]["sessions"], serde_json::json!([2]));

    let (_, show) = cjson(&lab, &cat, &["media", "show", "TAP001L9"]);
    let history: Vec<&str> = show["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["where"].as_str().unwrap())
        .collect();
    assert_eq!(history, vec![seen, "vault:ironmountain"]);
    assert_eq!(show["sessions"], 2);

    let (_, sets) = cjson(&lab, &cat, &["sets"]);
    assert_eq!(sets.as_array().unwrap().len(), 1);
    assert_eq!(sets[0]["name"], "nightly");
    assert_eq!(sets[0]["sessions"], 2);

    // Human output names the cartridge and the vault.
    let out = ctapir(&lab, &cat, &["find", "etc/hosts"]);
    assert_ok(&out);
    let t = text(&out.stdout);
    assert!(
        t.contains("TAP001L9") && t.contains("vault:ironmountain"),
        "{t}"
    );

    // Marking it damaged shows in media list and in recall.
    assert_ok(&ctapir(&lab, &cat, &["media", "damaged", "TAP001L9"]));
    let (_, list) = cjson(&lab, &cat, &["media", "list", "--state", "damaged"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, recall) = cjson(&lab, &cat, &["recall", "nightly"]);
    assert!(recall["cartridges"][0]["warning"].is_string(), "{recall}");

    // Unknown cartridge or bad location: usage errors.
    assert_code(
        &ctapir(&lab, &cat, &["media", "move", "NOPE01L9", "--to", "shelf"]),
        2,
    );
    assert_code(
        &ctapir(&lab, &cat, &["media", "move", "TAP001L9", "--to", "attic"]),
        2,
    );
}

#[test]
fn importing_twice_changes_nothing_and_a_scan_agrees_with_the_catalog() {
    let (lab, cat) = two_nights();
    assert_ok(&ctapir(&lab, &cat, &["catalog", "import"]));
    let (_, before) = cjson(&lab, &cat, &["find", "etc/*"]);
    let (code, again) = cjson(&lab, &cat, &["catalog", "import"]);
    assert_eq!(code, 0);
    assert_eq!(again["unchanged"], true, "{again}");
    let (_, after) = cjson(&lab, &cat, &["find", "etc/*"]);
    assert_eq!(before, after);

    // A catalog rebuilt by scanning the data knows the same versions.
    let scanned = lab.path("scanned.db");
    let (code, imp) = cjson(&lab, &scanned, &["catalog", "import", "--scan"]);
    assert_eq!(code, 0, "{imp}");
    assert_eq!(imp["sessions"][0]["source"], "scan");
    let (_, from_scan) = cjson(&lab, &scanned, &["find", "etc/*"]);
    let strip = |v: &serde_json::Value| -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for r in v["results"].as_array().unwrap() {
            for ver in r["versions"].as_array().unwrap() {
                out.push((
                    r["path"].as_str().unwrap().to_string(),
                    ver["blake3"].to_string(),
                    ver["session"].as_u64().unwrap(),
                ));
            }
        }
        out
    };
    assert_eq!(strip(&from_scan), strip(&before));
}

#[test]
fn a_damaged_catalog_is_reported_with_a_hint_and_never_recreated() {
    let (lab, cat) = two_nights();
    fs::write(&cat, vec![0x42u8; 8192]).unwrap();
    for args in [
        &["find", "etc/hosts"][..],
        &["catalog", "import"][..],
        &["media", "list"][..],
    ] {
        let out = ctapir(&lab, &cat, args);
        assert_code(&out, 6);
        let err = text(&out.stderr);
        assert!(
            err.contains("damaged") && err.contains("tapir catalog import"),
            "{args:?}: {err}"
        );
        assert_eq!(fs::read(&cat).unwrap(), vec![0x42u8; 8192], "{args:?}");
    }

    // A real catalog cut short.
    let real = lab.path("real.db");
    assert_ok(&ctapir(&lab, &real, &["catalog", "import"]));
    let len = fs::metadata(&real).unwrap().len();
    let head = fs::read(&real).unwrap();
    let page = u16::from_be_bytes([head[16], head[17]]) as u64;
    let f = fs::OpenOptions::new().write(true).open(&real).unwrap();
    f.set_len(len / 2 / page * page).unwrap();
    drop(f);
    let out = ctapir(&lab, &real, &["find", "etc/hosts"]);
    assert_code(&out, 6);
    assert!(
        text(&out.stderr).contains("truncated"),
        "{}",
        text(&out.stderr)
    );

    // No catalog at all: a usage error, and no file appears.
    let none = lab.path("none/catalog.db");
    assert_code(&ctapir(&lab, &none, &["find", "etc/hosts"]), 2);
    assert!(!none.exists());
}

#[test]
fn prune_and_check_through_the_cli() {
    let (lab, cat) = two_nights();
    assert_ok(&ctapir(&lab, &cat, &["catalog", "import"]));
    let (code, dry) = cjson(
        &lab,
        &cat,
        &["catalog", "prune", "--keep-sessions", "1", "--dry-run"],
    );
    assert_eq!(code, 0, "{dry}");
    assert_eq!(dry["sessions"].as_array().unwrap().len(), 1);
    let (_, still) = cjson(&lab, &cat, &["find", "etc/hosts"]);
    assert_eq!(still["results"][0]["versions"].as_array().unwrap().len(), 2);

    let (code, pruned) = cjson(&lab, &cat, &["catalog", "prune", "--keep-sessions", "1"]);
    assert_eq!(code, 0, "{pruned}");
    assert_eq!(pruned["entries_deleted"], 4);
    let (_, now) = cjson(&lab, &cat, &["find", "etc/hosts"]);
    let v = now["results"][0]["versions"].as_array().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["session"], 2);
    // The set still knows both sessions.
    let (_, recall) = cjson(&lab, &cat, &["recall", "nightly"]);
    assert_eq!(
        recall["cartridges"][0]["sessions"],
        serde_json::json!([1, 2])
    );

    let (code, check) = cjson(&lab, &cat, &["catalog", "check", "--full"]);
    assert_eq!(code, 0, "{check}");
    assert_eq!(check["entries"], 4);
    assert_eq!(check["problems"], serde_json::json!([]));
}

#[test]
fn write_records_each_session_and_an_import_agrees() {
    // `tapir write` records into the lab's catalog ($TAPIR_CATALOG).
    let (lab, _) = two_nights();
    // The lab's own catalog (tests/common sets $TAPIR_CATALOG to it).
    let cat = lab.path("catalog.db");
    let (code, found) = cjson(&lab, &cat, &["find", "etc/ssh/sshd_config"]);
    assert_eq!(code, 0, "{found}");
    let versions = found["results"][0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        versions[0]["blake3"],
        hash_hex(b"PermitRootLogin no\nPasswordAuthentication no\n")
    );
    let (_, show) = cjson(&lab, &cat, &["media", "show", "TAP001L9"]);
    assert_eq!(show["write_count"], 2);
    assert_eq!(show["sessions"], 2);
    let drive = show["session_list"][0]["drive"]["name"].as_str().unwrap();
    assert!(drive.starts_with("vtape:"), "{show}");

    // The cartridge says the same: importing it changes nothing.
    let (code, imp) = cjson(&lab, &cat, &["catalog", "import"]);
    assert_eq!(code, 0, "{imp}");
    assert_eq!(imp["unchanged"], true, "{imp}");
    let (_, again) = cjson(&lab, &cat, &["find", "etc/ssh/sshd_config"]);
    assert_eq!(again, found);

    // --no-catalog writes without recording (session 3).
    assert_ok(&lab.tapir_in(&lab.path("src"), ["write", "--no-catalog", "etc"]));
    let (_, show) = cjson(&lab, &cat, &["media", "show", "TAP001L9"]);
    assert_eq!(show["sessions"], 2);

    // A write that fails leaves nothing in the catalog: a file bigger than
    // the cartridge ends the job at the end of the medium.
    let big = lab.path("src/etc/big");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = fs::File::create(&big).unwrap();
    for i in 0..80u8 {
        let mut c = chunk.clone();
        c[0] = i;
        std::io::Write::write_all(&mut f, &c).unwrap();
    }
    drop(f);
    // The other cartridge is write-protected, so the set cannot continue.
    let lib = lab.lib();
    assert_ok(&lab.tapir(["vtape", "protect", lib.to_str().unwrap(), "TAP002L9"]));
    let failed = lab.tapir_in(&lab.path("src"), ["write", "etc"]);
    assert_ne!(code_of(&failed), 0, "{}", text(&failed.stdout));
    let (_, after) = cjson(&lab, &cat, &["find", "etc/*"]);
    let sessions: std::collections::BTreeSet<u64> = after["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["versions"].as_array().unwrap().iter())
        .map(|v| v["session"].as_u64().unwrap())
        .collect();
    assert_eq!(sessions, [1, 2].into_iter().collect());
    let (code, check) = cjson(&lab, &cat, &["catalog", "check"]);
    assert_eq!(code, 0, "{check}");
    assert_eq!(check["pending"], serde_json::json!([]));
}

fn code_of(out: &std::process::Output) -> i32 {
    code(out)
}

/// `verify` and `restore` leave their mark on the cartridge's record.
#[test]
fn verify_and_restore_are_noted_on_the_cartridge() {
    let lab = Lab::new(1, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "f"]));
    assert_ok(&lab.tapir(["verify"]));
    let out = lab.path("out");
    assert_ok(&lab.tapir(["restore", "--to", out.to_str().unwrap()]));
    let show = lab.tapir(["media", "show", "TAP001L9"]);
    assert_ok(&show);
    let text = text(&show.stdout);
    assert!(text.contains("read 2 time(s)"), "{text}");
    assert!(
        text.contains("last verified") && text.contains(": ok"),
        "{text}"
    );
}

/// The catalog records which drive wrote a cartridge, and
/// `verify --other-drive` refuses that drive and accepts another.
#[test]
fn verify_on_another_drive_than_the_writer() {
    let lab = Lab::new(1, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "f"]));
    let same = lab.tapir(["verify", "--other-drive"]);
    assert_code(&same, 3);
    assert!(
        text(&same.stderr).contains("wrote cartridge TAP001L9"),
        "{}",
        text(&same.stderr)
    );

    // The same cartridge in a second library's drive.
    let other = lab.path("other");
    let created = std::process::Command::new(TAPIR)
        .args(["vtape", "create"])
        .arg(&other)
        .args(["--slots", "1", "--capacity", "64M"])
        .output()
        .unwrap();
    assert_ok(&created);
    std::fs::copy(
        lab.image("TAP001L9"),
        other.join("cartridges/TAP001L9.vtape"),
    )
    .unwrap();
    let elsewhere = std::process::Command::new(TAPIR)
        .arg("--device")
        .arg(format!("vtape:{}", other.display()))
        .args(["verify", "--other-drive"])
        .env("TAPIR_CATALOG", lab.catalog())
        .output()
        .unwrap();
    assert_ok(&elsewhere);
}

#[test]
fn changer_moves_are_recorded_as_locations() {
    let lab = Lab::new(2, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "moves", "f"]));
    let cat = lab.catalog();
    let place = |lab: &Lab| {
        let (code, r) = cjson(lab, &cat, &["recall", "moves"]);
        assert_eq!(code, 0, "{r}");
        r["cartridges"][0]["location"]["where"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(place(&lab).starts_with("drive:vtape:"), "{}", place(&lab));
    assert_ok(&lab.tapir(["changer", "unload"]));
    let in_slot = place(&lab);
    assert!(in_slot.starts_with("slot:1 in vtape:"), "{in_slot}");
    assert_ok(&lab.tapir(["changer", "load", "TAP001L9"]));
    assert!(place(&lab).starts_with("drive:vtape:"), "{}", place(&lab));
}

#[test]
fn a_reader_that_goes_away_ends_a_listing_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let lab = Lab::new(1, "64M");
    lab.label("TAP001L9");
    let src = lab.path("many");
    fs::create_dir_all(&src).unwrap();
    // Far more listing than a pipe holds, so tapir is still writing when
    // the reader leaves.
    for i in 0..5000 {
        fs::write(src.join(format!("file-with-a-longish-name-{i:05}")), b"").unwrap();
    }
    assert_ok(&lab.tapir_in(&lab.path(""), ["write", "many"]));
    let mut child = Command::new(TAPIR)
        .args(["--device", &lab.device(), "list"])
        .env("TAPIR_CATALOG", lab.catalog())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    // The reader is gone (`tapir list | head -1`).
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}
