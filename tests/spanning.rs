//! Archive sets across cartridges: a session continues on the next
//! cartridge of a library when one fills; every cartridge restores alone
//! (what is wholly on it), and the parts of a file join back into it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;

/// `files` incompressible files of 1.5 to 2 MB (several data chunks each,
/// so they can be cut between cartridges) plus small ones.
fn make_tree(root: &Path, files: usize) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for i in 0..files {
        let rel = format!("big/f{i:02}");
        all.insert(rel, noise(i as u64, 1_500_000 + i * 60_000));
    }
    for i in 0..40 {
        all.insert(
            format!("small/s{i:02}.txt"),
            format!("small file {i}\n").into_bytes(),
        );
    }
    for (rel, data) in &all {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    all
}

/// Write `tree` (in `lab/src`) as one session; returns the summary.
fn write_tree(lab: &Lab, set: &str) -> (i32, serde_json::Value) {
    lab.json_in(&lab.path("src"), ["write", "--set", set, "."])
}

fn cartridges_of(summary: &serde_json::Value) -> Vec<String> {
    summary["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cartridge"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_set_spans_five_cartridges_and_restores_alone_and_whole() {
    let lab = Lab::new(12, "5M");
    // Small blocks: less rounding at each cartridge's end.
    assert_ok(&lab.tapir(["label", "--label", "TAP001L9", "--block-size", "64K"]));
    let tree = make_tree(&lab.path("src"), 8);
    let (code, w) = write_tree(&lab, "big");
    assert_eq!(code, 0, "{w}");
    let parts = w["parts"].as_array().unwrap().clone();
    assert!(
        parts.len() >= 5,
        "spans only {} cartridges: {w}",
        parts.len()
    );
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["volume_seq"], (i + 1) as u64, "{p}");
        assert_eq!(p["continues"], i + 1 < parts.len(), "{p}");
    }
    let cartridges = cartridges_of(&w);
    // The host catalog knows every part, and that the filled ones are full.
    for (i, c) in cartridges.iter().enumerate() {
        let (code, m) = lab.json(["media", "show", c]);
        assert_eq!(code, 0, "{m}");
        let want = if i + 1 < cartridges.len() {
            "full"
        } else {
            "writable"
        };
        assert_eq!(m["state"], want, "{c}: {m}");
    }

    // Each cartridge alone: what is wholly on it comes back byte-exact, and
    // the files that span are named, never restored half.
    let mut seen_whole = BTreeMap::new();
    let mut spanning = 0;
    for (i, c) in cartridges.iter().enumerate() {
        assert_ok(&lab.tapir(["changer", "load", c]));
        let to = lab.path(&format!("alone{i}"));
        let (code, r) = lab.json(["restore", "--to", to.to_str().unwrap()]);
        let listed = r["spanning"].as_array().unwrap().len();
        assert_eq!(code, if listed > 0 { 1 } else { 0 }, "{r}");
        spanning += listed;
        for (rel, data) in files_under(&to) {
            let rel = rel.trim_start_matches("./").to_string();
            assert!(!rel.ends_with(".partial"), "{rel} kept without --partials");
            assert_eq!(tree.get(&rel), Some(&data), "{rel} from {c}");
            assert!(
                seen_whole.insert(rel.clone(), c.clone()).is_none(),
                "{rel} twice"
            );
        }
    }
    // A cut falls inside a file unless it falls between two.
    assert!(spanning >= 2, "{spanning} spanning parts");
    assert!(
        seen_whole.len() < tree.len(),
        "some files must span cartridges"
    );

    // The whole set: every cartridge in order into one directory joins the
    // parts, checked against each file's BLAKE3.
    let whole = lab.path("whole");
    let mut joined = 0u64;
    for (i, c) in cartridges.iter().enumerate() {
        assert_ok(&lab.tapir(["changer", "load", c]));
        let (code, r) = lab.json(["restore", "--partials", "--to", whole.to_str().unwrap()]);
        joined += r["joined"].as_u64().unwrap();
        let incomplete = r["spanning"].as_array().unwrap().len();
        assert_eq!(code, if incomplete > 0 { 1 } else { 0 }, "{c}: {r}");
        if i + 1 == cartridges.len() {
            assert_eq!(
                incomplete, 0,
                "the last cartridge completes everything: {r}"
            );
        }
    }
    assert!(
        joined >= 1 && spanning as u64 >= 2 * joined,
        "{joined} joined"
    );
    let restored: BTreeMap<String, Vec<u8>> = files_under(&whole)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("./").to_string(), v))
        .collect();
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        tree.keys().collect::<Vec<_>>()
    );
    assert!(restored == tree, "content differs after joining parts");
}

#[test]
fn cartridges_that_must_not_be_written_are_skipped_untouched() {
    let lab = Lab::new(6, "5M");
    // Slot 2: volume 1 of another set. Slot 3: write-protected.
    assert_ok(&lab.tapir(["changer", "load", "TAP002L9"]));
    lab.label("TAP002L9");
    let other = lab.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("x"), b"another set").unwrap();
    assert_ok(&lab.tapir_in(&other, ["write", "--set", "other", "x"]));
    let lib = lab.lib();
    assert_ok(&lab.tapir(["vtape", "protect", lib.to_str().unwrap(), "TAP003L9"]));
    let before: Vec<Vec<u8>> = ["TAP002L9", "TAP003L9"]
        .iter()
        .map(|b| fs::read(lab.image(b)).unwrap())
        .collect();

    assert_ok(&lab.tapir(["changer", "load", "TAP001L9"]));
    assert_ok(&lab.tapir(["label", "--label", "TAP001L9", "--block-size", "64K"]));
    make_tree(&lab.path("src"), 3);
    let (code, w) = write_tree(&lab, "main");
    assert_eq!(
        code, 1,
        "written with warnings about the refused cartridges: {w}"
    );
    let cartridges = cartridges_of(&w);
    assert_eq!(cartridges[0], "TAP001L9");
    assert_eq!(cartridges[1], "TAP004L9", "{w}");
    let warnings = w["warnings"].to_string();
    assert!(
        warnings.contains("TAP002L9") && warnings.contains("set \\\"other\\\""),
        "{warnings}"
    );
    assert!(
        warnings.contains("TAP003L9") && warnings.contains("write-protected"),
        "{warnings}"
    );
    let after: Vec<Vec<u8>> = ["TAP002L9", "TAP003L9"]
        .iter()
        .map(|b| fs::read(lab.image(b)).unwrap())
        .collect();
    assert!(before == after, "a refused cartridge was modified");
}

#[test]
fn running_out_of_cartridges_stops_cleanly_and_keeps_what_was_written() {
    let lab = Lab::new(2, "5M");
    lab.label("TAP001L9");
    let tree = make_tree(&lab.path("src"), 8);
    let out = lab.tapir_in(&lab.path("src"), ["write", "--set", "big", "."]);
    assert_code(&out, 3);
    let err = text(&out.stderr);
    assert!(
        err.contains("needs volume 3") && err.contains("restorable"),
        "{err}"
    );
    // Both cartridges are complete and restorable on their own.
    for c in ["TAP001L9", "TAP002L9"] {
        assert_ok(&lab.tapir(["changer", "load", c]));
        // Parts of files that span cannot be verified whole (exit 1).
        let v = lab.tapir(["verify"]);
        assert!([0, 1].contains(&code(&v)), "{}", text(&v.stdout));
        assert!(!text(&v.stdout).contains("DAMAGED"), "{}", text(&v.stdout));
        let to = lab.path(&format!("r-{c}"));
        let r = lab.tapir(["restore", "--to", to.to_str().unwrap()]);
        assert!([0, 1].contains(&code(&r)), "{}", text(&r.stdout));
        let got = files_under(&to);
        assert!(!got.is_empty());
        for (rel, data) in got {
            assert_eq!(tree.get(rel.trim_start_matches("./")), Some(&data), "{rel}");
        }
    }
}

#[test]
fn the_last_cartridge_restores_the_whole_set_loading_the_others() {
    let lab = Lab::new(12, "5M");
    label_small_blocks(&lab);
    let tree = make_tree(&lab.path("src"), 8);
    let (code, w) = write_tree(&lab, "big");
    assert_eq!(code, 0, "{w}");
    let cartridges = cartridges_of(&w);
    assert!(cartridges.len() >= 4, "{w}");

    // From the last cartridge: everything, each other cartridge loaded in turn.
    assert_ok(&lab.tapir(["changer", "load", cartridges.last().unwrap()]));
    let whole = lab.path("whole");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", whole.to_str().unwrap()]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        r["cartridges"].as_array().unwrap().len(),
        cartridges.len(),
        "{r}"
    );
    assert!(r["joined"].as_u64().unwrap() >= 1, "{r}");
    let got: BTreeMap<String, Vec<u8>> = files_under(&whole)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("./").to_string(), v))
        .collect();
    assert!(got == tree, "whole-set restore differs from the source");

    // From a middle cartridge: everything up to it; what continues beyond
    // it is named, and nothing wrong is restored.
    let middle = &cartridges[cartridges.len() / 2];
    assert_ok(&lab.tapir(["changer", "load", middle]));
    let part = lab.path("part");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", part.to_str().unwrap()]);
    assert!([0, 1].contains(&code), "{r}");
    for (rel, data) in files_under(&part) {
        let rel = rel.trim_start_matches("./").to_string();
        if let Some(orig) = rel.strip_suffix(".partial") {
            assert!(
                r["incomplete"].to_string().contains(orig),
                "{orig} not reported: {r}"
            );
            continue;
        }
        assert_eq!(tree.get(&rel), Some(&data), "{rel}");
    }
}

#[test]
fn one_cartridge_rebuilds_the_host_catalog_for_its_whole_set() {
    let lab = Lab::new(12, "5M");
    label_small_blocks(&lab);
    make_tree(&lab.path("src"), 6);
    let (code, w) = lab.json_in(
        &lab.path("src"),
        ["write", "--no-catalog", "--set", "big", "."],
    );
    assert_eq!(code, 0, "{w}");
    let cartridges = cartridges_of(&w);
    assert!(cartridges.len() >= 3, "{w}");

    // A new host, an empty catalog, the last cartridge only.
    assert_ok(&lab.tapir(["changer", "load", cartridges.last().unwrap()]));
    let fresh = lab.path("fresh.db");
    let fresh = fresh.to_str().unwrap();
    let (code, imp) = lab.json(["--catalog", fresh, "catalog", "import"]);
    assert_eq!(code, 0, "{imp}");
    assert_eq!(
        imp["set_copy"]["cartridges"],
        (cartridges.len() - 1) as u64,
        "{imp}"
    );
    // Every file of the set is found, on the cartridge that holds its start.
    let (code, found) = lab.json(["--catalog", fresh, "find", "big/f00"]);
    assert_eq!(code, 0, "{found}");
    assert_eq!(
        found["results"][0]["versions"][0]["cartridge"]["label"],
        cartridges[0]
    );
    let (code, recall) = lab.json(["--catalog", fresh, "recall", "big"]);
    assert_eq!(code, 0, "{recall}");
    let labels: Vec<&str> = recall["cartridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    for c in &cartridges {
        assert!(labels.contains(&c.as_str()), "{c} not in {labels:?}");
    }
    // Importing again changes nothing.
    let (_, again) = lab.json(["--catalog", fresh, "catalog", "import"]);
    assert_eq!(again["set_copy"]["added"], 0, "{again}");
}

#[test]
fn a_single_drive_asks_the_operator_for_the_next_cartridge_and_waits() {
    use std::io::BufReader;
    use std::process::{Command, Stdio};
    let lab = Lab::new(3, "5M");
    // Without a changer there is no barcode to label a blank one with: the
    // operator's cartridges are labelled beforehand.
    for c in ["TAP002L9", "TAP001L9"] {
        assert_ok(&lab.tapir(["changer", "load", c]));
        assert_ok(&lab.tapir(["label", "--label", c, "--block-size", "64K"]));
    }
    let tree = make_tree(&lab.path("src"), 3);
    let mut child = Command::new(TAPIR)
        .current_dir(lab.path("src"))
        .args([
            "--device",
            &lab.device(),
            "--json",
            "write",
            "--ask-operator",
        ])
        .args(["--operator-timeout", "600", "--set", "manual", "."])
        .env("TAPIR_CATALOG", lab.catalog())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the request, as an operator would.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let asked = read_until_operator(&mut stderr);
    assert!(
        asked.contains("TAP001L9") && asked.contains("insert the next cartridge"),
        "{asked}"
    );
    // The operator puts in the next cartridge (the drive is looked at now
    // and then, so the changer may find it busy for a moment).
    let loaded = (0..100).any(|_| code(&lab.tapir(["changer", "load", "TAP002L9"])) == 0);
    assert!(loaded, "the operator could not load the cartridge");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cartridges = cartridges_of(&w);
    assert_eq!(&cartridges[..2], ["TAP001L9", "TAP002L9"], "{w}");
    assert_eq!(cartridges.len(), 2, "{w}");

    // And the two restore as one set.
    let whole = lab.path("whole");
    for c in &cartridges {
        assert_ok(&lab.tapir(["changer", "load", c]));
        let r = lab.tapir(["restore", "--partials", "--to", whole.to_str().unwrap()]);
        assert!([0, 1].contains(&code(&r)), "{}", text(&r.stdout));
    }
    let got: BTreeMap<String, Vec<u8>> = files_under(&whole)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("./").to_string(), v))
        .collect();
    assert!(got == tree, "restored set differs from the source");
}

#[test]
fn a_whole_set_restore_at_a_single_drive_asks_for_each_cartridge_in_order() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let lab = Lab::new(8, "5M");
    label_small_blocks(&lab);
    let tree = make_tree(&lab.path("src"), 5);
    let (written, w) = write_tree(&lab, "big");
    assert_eq!(written, 0, "{w}");
    let cartridges = cartridges_of(&w);
    assert!(cartridges.len() >= 3, "{w}");

    // The last cartridge is in the drive; the operator brings the others.
    let whole = lab.path("whole");
    let mut child = Command::new(TAPIR)
        .args([
            "--device",
            &lab.device(),
            "--json",
            "restore",
            "--whole-set",
        ])
        .args(["--ask-operator", "--operator-timeout", "600", "--to"])
        .arg(&whole)
        .env("TAPIR_CATALOG", lab.catalog())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut asked_for = Vec::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break; // tapir finished
        }
        let Some(rest) = line.split("insert cartridge ").nth(1) else {
            continue;
        };
        let label = rest.split_whitespace().next().unwrap().to_string();
        let loaded = (0..100).any(|_| code(&lab.tapir(["changer", "load", &label])) == 0);
        assert!(loaded, "could not load {label}");
        asked_for.push(label);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Asked for in set order (parts join in order, so the last cartridge,
    // in the drive at the start, comes back at the end).
    assert_eq!(asked_for, cartridges, "{asked_for:?}");
    let got: BTreeMap<String, Vec<u8>> = files_under(&whole)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("./").to_string(), v))
        .collect();
    assert!(got == tree, "restored set differs from the source");
}

/// Label the loaded cartridge TAP001L9 with 64 KiB blocks.
fn label_small_blocks(lab: &Lab) {
    assert_ok(&lab.tapir(["label", "--label", "TAP001L9", "--block-size", "64K"]));
}

/// A library of `slots` cartridges of `capacity`, the first labelled with
/// small blocks, and an empty source directory `src`.
fn lab_with_sources(slots: usize, capacity: &str) -> (Lab, std::path::PathBuf) {
    let lab = Lab::new(slots, capacity);
    label_small_blocks(&lab);
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    (lab, src)
}

#[test]
fn one_file_over_several_cartridges_comes_back_whole_both_ways() {
    let (lab, src) = lab_with_sources(8, "5M");
    let data = noise(7, 13_000_000);
    fs::write(src.join("huge"), &data).unwrap();
    let (code, w) = lab.json_in(&src, ["write", "--set", "big", "."]);
    assert_eq!(code, 0, "{w}");
    let carts = cartridges_of(&w);
    assert!(carts.len() >= 4, "13 MB on 5 MB cartridges: {w}");

    assert_ok(&lab.tapir(["changer", "load", carts.last().unwrap()]));
    let whole = lab.path("whole");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", whole.to_str().unwrap()]);
    assert_eq!(code, 0, "{r}");
    assert!(fs::read(whole.join("huge")).unwrap() == data);

    let by_hand = lab.path("by-hand");
    for c in &carts {
        assert_ok(&lab.tapir(["changer", "load", c]));
        let r = lab.tapir(["restore", "--partials", "--to", by_hand.to_str().unwrap()]);
        assert!([0, 1].contains(&common::code(&r)), "{}", text(&r.stdout));
    }
    assert!(fs::read(by_hand.join("huge")).unwrap() == data);
    assert!(!by_hand.join("huge.partial").exists());
}

#[test]
fn a_first_part_never_replaces_an_existing_file() {
    let (lab, src) = lab_with_sources(8, "5M");
    fs::write(src.join("f"), noise(3, 7_000_000)).unwrap();
    let (code, w) = lab.json_in(&src, ["write", "--set", "big", "."]);
    assert_eq!(code, 0, "{w}");
    assert_ok(&lab.tapir(["changer", "load", "TAP001L9"]));
    let to = lab.path("out");
    fs::create_dir_all(&to).unwrap();
    fs::write(to.join("f"), b"precious").unwrap();
    for partials in [false, true] {
        let mut args = vec!["restore", "--overwrite", "--to", to.to_str().unwrap(), "f"];
        if partials {
            args.insert(1, "--partials");
        }
        let (code, r) = lab.json(args);
        assert_eq!(code, 1, "{r}");
        assert_eq!(r["spanning"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(fs::read(to.join("f")).unwrap(), b"precious", "{r}");
        assert_eq!(to.join("f.partial").exists(), partials);
    }
}

#[test]
fn whole_set_restores_hard_links_from_the_right_version_and_part() {
    // A link whose target was written on an earlier cartridge.
    let lab = Lab::new(8, "5M");
    label_small_blocks(&lab);
    let src = lab.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a_target"), b"hello target").unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("d/big{i}")), noise(i, 1_800_000)).unwrap();
    }
    fs::hard_link(src.join("a_target"), src.join("zz_link")).unwrap();
    let (code, w) = lab.json_in(&src, ["write", "--set", "big", "."]);
    assert_eq!(code, 0, "{w}");
    let carts = cartridges_of(&w);
    assert!(carts.len() >= 2, "{w}");
    assert_ok(&lab.tapir(["changer", "load", carts.last().unwrap()]));
    let to = lab.path("whole");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", to.to_str().unwrap()]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(fs::read(to.join("zz_link")).unwrap(), b"hello target");

    // A link to an older version of a path that a later session replaced:
    // the newest version wins.
    let lab = Lab::new(2, "50M");
    label_small_blocks(&lab);
    let s1 = lab.path("s1");
    fs::create_dir_all(&s1).unwrap();
    fs::write(s1.join("A"), b"old version").unwrap();
    fs::hard_link(s1.join("A"), s1.join("Z")).unwrap();
    assert_ok(&lab.tapir_in(&s1, ["write", "--set", "x", "."]));
    fs::remove_file(s1.join("Z")).unwrap();
    fs::remove_file(s1.join("A")).unwrap();
    fs::write(s1.join("A"), b"NEW version").unwrap();
    assert_ok(&lab.tapir_in(&s1, ["write", "--set", "x", "."]));
    let to = lab.path("whole");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", to.to_str().unwrap()]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(fs::read(to.join("A")).unwrap(), b"NEW version", "{r}");
    // The link keeps the content it had: the older version's inode.
    assert_eq!(fs::read(to.join("Z")).unwrap(), b"old version", "{r}");

    // Restoring a link by its name brings its target along.
    let out = lab.path("by-name");
    let (code, r) = lab.json([
        "restore",
        "--session",
        "1",
        "--to",
        out.to_str().unwrap(),
        "Z",
    ]);
    assert_eq!(code, 0, "{r}");
    let out = lab.path("by-name-latest");
    let (code, r) = lab.json(["restore", "--to", out.to_str().unwrap(), "A"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(fs::read(out.join("A")).unwrap(), b"NEW version");
}

#[test]
fn a_literal_hard_link_restores_with_its_target() {
    let (lab, src) = lab_with_sources(1, "50M");
    fs::write(src.join("a"), b"content").unwrap();
    fs::hard_link(src.join("a"), src.join("z")).unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "x", "."]));
    let to = lab.path("out");
    let (code, r) = lab.json(["restore", "--to", to.to_str().unwrap(), "z"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(fs::read(to.join("z")).unwrap(), b"content");
}

#[test]
fn a_full_cartridge_takes_no_further_session() {
    let (lab, src) = lab_with_sources(4, "5M");
    fs::write(src.join("a"), noise(7, 6_000_000)).unwrap();
    let (code, w) = lab.json_in(&src, ["write", "--set", "big", "."]);
    assert_eq!(code, 0, "{w}");
    assert_eq!(cartridges_of(&w).len(), 2, "{w}");
    assert_ok(&lab.tapir(["changer", "load", "TAP001L9"]));
    let before: Vec<Vec<u8>> = ["TAP001L9", "TAP003L9"]
        .iter()
        .map(|b| fs::read(lab.image(b)).unwrap())
        .collect();
    fs::write(src.join("b"), b"later").unwrap();
    let out = lab.tapir_in(&src, ["write", "--set", "big", "b"]);
    assert_code(&out, 3);
    let err = text(&out.stderr);
    assert!(
        err.contains("is full") && err.contains("last cartridge"),
        "{err}"
    );
    let after: Vec<Vec<u8>> = ["TAP001L9", "TAP003L9"]
        .iter()
        .map(|b| fs::read(lab.image(b)).unwrap())
        .collect();
    assert!(before == after, "a refused append wrote something");
    // The set's last cartridge takes it.
    assert_ok(&lab.tapir(["changer", "load", "TAP002L9"]));
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "big", "b"]));
}

#[test]
fn parts_left_waiting_are_reported_whatever_their_names() {
    use std::os::unix::ffi::OsStrExt;
    let (lab, src) = lab_with_sources(8, "5M");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    fs::write(src.join(name), noise(7, 7_000_000)).unwrap();
    let (code, w) = lab.json_in(&src, ["write", "--set", "big", "."]);
    assert_eq!(code, 0, "{w}");
    // The first cartridge's copy knows only the first part.
    assert_ok(&lab.tapir(["changer", "load", "TAP001L9"]));
    let to = lab.path("whole");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", to.to_str().unwrap()]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["incomplete"].as_array().unwrap().len(), 1, "{r}");
    assert!(!to.join(name).exists());
}

#[test]
fn appended_sessions_write_delta_copies_that_chain_to_the_whole_one() {
    let lab = Lab::new(2, "200M");
    label_small_blocks(&lab);
    let src = lab.path("src");
    let mut expect = BTreeMap::new();
    for n in 0..11u64 {
        let dir = src.join(format!("s{n:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50u64 {
            let data = noise(n * 100 + f, 1000);
            fs::write(dir.join(format!("f{f:02}")), &data).unwrap();
            expect.insert(format!("s{n:02}/f{f:02}"), data);
        }
        let (code, w) = lab.json_in(&src, ["write", "--set", "daily", &format!("s{n:02}")]);
        assert_eq!(code, 0, "{w}");
        let part = &w["parts"][0];
        // The first copy is whole; then deltas holding only their session
        // (50 files and the directory), eight in a row; then whole again.
        let whole = n == 0 || n == 9;
        assert_eq!(part["set_catalog_delta"], !whole, "session {n}: {w}");
        let want = if whole { 51 * (n + 1) } else { 51 };
        assert_eq!(part["set_catalog_entries"], want, "session {n}: {w}");
    }
    // Everything comes back through the chain of copies.
    let whole = lab.path("whole");
    let (code, r) = lab.json(["restore", "--whole-set", "--to", whole.to_str().unwrap()]);
    assert_eq!(code, 0, "{r}");
    let got: BTreeMap<String, Vec<u8>> = files_under(&whole)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("./").to_string(), v))
        .collect();
    assert!(
        got == expect,
        "whole-set restore through delta copies differs"
    );
    // One path of the first session, found through the chain.
    let one = lab.path("one");
    let (code, r) = lab.json(["restore", "--to", one.to_str().unwrap(), "s00/f07"]);
    assert_eq!(code, 0, "{r}");
    assert!(r["catalog_bytes_read"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(fs::read(one.join("s00/f07")).unwrap(), expect["s00/f07"]);
    // A new host catalog learns every session from the chain.
    let fresh = lab.path("fresh.db");
    let (code, imp) = lab.json(["--catalog", fresh.to_str().unwrap(), "catalog", "import"]);
    assert_eq!(code, 0, "{imp}");
    let (code, found) = lab.json(["--catalog", fresh.to_str().unwrap(), "find", "s00/f07"]);
    assert_eq!(code, 0, "{found}");
    // Verify reads every copy and finds them intact.
    let (code, v) = lab.json(["verify"]);
    assert_eq!(code, 0, "{v}");
}

/// Put a fault sidecar beside cartridge `barcode`'s image.
fn inject(lab: &Lab, barcode: &str, faults: &str) {
    fs::write(
        tapir::device::vtape::faults_path(&lab.image(barcode)),
        faults,
    )
    .unwrap();
}

/// Restore the whole set from its last cartridge into `to`.
fn restore_whole_set(lab: &Lab, last: &str, to: &Path) -> serde_json::Value {
    assert_ok(&lab.tapir(["changer", "load", last]));
    let (code, r) = lab.json(["restore", "--whole-set", "--to", to.to_str().unwrap()]);
    assert_eq!(code, 0, "{r}");
    r
}

/// Restore the loaded cartridge alone into `to`: whatever it restores must
/// be byte-exact to `tree` (nothing it claims may be a lost copy).
fn restores_only_true_copies(
    lab: &Lab,
    cartridge: &str,
    to: &Path,
    tree: &BTreeMap<String, Vec<u8>>,
) -> usize {
    assert_ok(&lab.tapir(["changer", "load", cartridge]));
    let r = lab.tapir(["restore", "--to", to.to_str().unwrap()]);
    assert!(common::code(&r) <= 4, "{}", text(&r.stderr));
    let restored = files_under(to);
    for (rel, data) in &restored {
        let rel = rel.trim_start_matches("./");
        assert!(
            tree.get(rel) == Some(data),
            "{cartridge}: {rel} restored wrong"
        );
    }
    restored.len()
}

#[test]
fn a_deferred_error_mid_cartridge_rewrites_what_was_not_durable_on_the_next() {
    let lab = Lab::new(8, "5M");
    label_small_blocks(&lab);
    let tree = make_tree(&lab.path("src"), 8);
    // About 2.5 MB into the second cartridge the drive reports a deferred
    // error: what it had buffered since the last checkpoint never arrived.
    inject(&lab, "TAP002L9", r#"{"lose_buffer_after_blocks": 40}"#);
    let (code, w) = lab.json_in(
        &lab.path("src"),
        ["write", "--set", "s", "--checkpoint-every", "1M", "."],
    );
    // Everything is written, but a cartridge failed: not a plain success.
    assert_eq!(code, 1, "{w}");
    let parts = w["parts"].as_array().unwrap();
    assert_eq!(parts[1]["cartridge"], "TAP002L9", "{w}");
    let error = parts[1]["write_error"]
        .as_str()
        .expect("the failed part says why");
    assert!(error.contains("deferred error"), "{error}");
    assert!(
        parts
            .iter()
            .filter(|p| p["write_error"].is_string())
            .count()
            == 1,
        "{w}"
    );
    assert!(parts.len() >= 4, "{w}");
    let warned = w["warnings"].as_array().unwrap();
    assert!(
        warned
            .iter()
            .any(|x| x.as_str().unwrap().contains("written again")),
        "{w}"
    );
    // Some of the part was durable at a checkpoint and is kept for it.
    let kept = parts[1]["entries"].as_u64().unwrap();
    assert!(kept > 0, "{w}");

    let carts = cartridges_of(&w);
    let whole = lab.path("whole");
    restore_whole_set(&lab, carts.last().unwrap(), &whole);
    assert!(
        files_under(&whole) == tree,
        "the whole set comes back byte-exact"
    );

    // The failed cartridge alone gives back only true copies.
    restores_only_true_copies(&lab, "TAP002L9", &lab.path("alone"), &tree);

    // The host catalog knows it is damaged and why.
    let (code, m) = lab.json(["media", "show", "TAP002L9"]);
    assert_eq!(code, 0, "{m}");
    assert_eq!(m["state"], "damaged", "{m}");

    // A later session appends to the set's last cartridge, never to the failed one.
    assert_ok(&lab.tapir(["changer", "load", "TAP002L9"]));
    fs::remove_file(tapir::device::vtape::faults_path(&lab.image("TAP002L9"))).unwrap();
    let again = lab.tapir_in(&lab.path("src"), ["write", "--set", "s", "small"]);
    assert_code(&again, 3);
    assert!(text(&again.stderr).contains("damaged in the host catalog"));
}

#[test]
fn a_reset_at_the_final_flush_writes_the_whole_part_again_on_the_next_cartridge() {
    let (lab, src) = lab_with_sources(4, "5M");
    let mut tree = BTreeMap::new();
    for i in 0..30 {
        tree.insert(
            format!("f{i:02}"),
            noise(100 + i, 20_000 + i as usize * 999),
        );
    }
    tree.insert("mid".to_string(), noise(99, 1_500_000));
    for (rel, data) in &tree {
        fs::write(src.join(rel), data).unwrap();
    }
    // No checkpoint before the end: the reset at the final synchronous
    // filemark loses the whole part.
    inject(
        &lab,
        "TAP001L9",
        r#"{"lose_buffer_at_sync": 1, "lose_buffer_as_reset": true}"#,
    );
    let (code, w) = lab.json_in(&src, ["write", "--set", "s", "."]);
    assert_eq!(code, 1, "{w}");
    let parts = w["parts"].as_array().unwrap();
    assert_eq!(cartridges_of(&w), ["TAP001L9", "TAP002L9"], "{w}");
    assert!(
        parts[0]["write_error"].as_str().unwrap().contains("reset"),
        "{w}"
    );
    assert_eq!(parts[0]["entries"], 0, "nothing on it was durable: {w}");
    assert_eq!(w["entries"], parts[1]["entries"], "{w}");

    let whole = lab.path("whole");
    restore_whole_set(&lab, "TAP002L9", &whole);
    assert!(files_under(&whole) == tree);
    // The new cartridge alone holds everything.
    assert_eq!(
        restores_only_true_copies(&lab, "TAP002L9", &lab.path("alone"), &tree),
        tree.len()
    );
    // The catalog, rebuilt from the last cartridge alone, claims nothing on the failed one.
    let (code, f) = lab.json(["find", "mid"]);
    assert_eq!(code, 0, "{f}");
    let text = f.to_string();
    assert!(
        text.contains("TAP002L9") && !text.contains("TAP001L9"),
        "{f}"
    );

    // A host catalog rebuilt from the last cartridge alone knows the failed one is damaged.
    let rebuilt = lab.path("rebuilt.db");
    let with = |args: &[&str]| {
        let mut v = vec!["--catalog", rebuilt.to_str().unwrap()];
        v.extend_from_slice(args);
        lab.json(v)
    };
    assert_ok(&lab.tapir(["changer", "load", "TAP002L9"]));
    let (code, imported) = with(&["catalog", "import"]);
    assert_eq!(code, 0, "{imported}");
    let (_, m) = with(&["media", "show", "TAP001L9"]);
    assert_eq!(m["state"], "damaged", "{m}");
    let (_, f) = with(&["find", "mid"]);
    assert!(!f.to_string().contains("TAP001L9"), "{f}");
}

#[test]
fn a_continuation_lost_with_its_cartridge_resumes_from_the_same_offset() {
    let (lab, src) = lab_with_sources(8, "5M");
    let data = noise(7, 13_000_000);
    fs::write(src.join("huge"), &data).unwrap();
    // The second cartridge fails early, before any checkpoint: the
    // continuation of "huge" that began it is written again on the third.
    inject(&lab, "TAP002L9", r#"{"lose_buffer_after_blocks": 12}"#);
    let (code, w) = lab.json_in(&src, ["write", "--set", "big", "."]);
    assert_eq!(code, 1, "{w}");
    let parts = w["parts"].as_array().unwrap();
    assert!(parts[1]["write_error"].is_string(), "{w}");
    assert_eq!(parts[1]["entries"], 0, "{w}");

    let carts = cartridges_of(&w);
    let whole = lab.path("whole");
    restore_whole_set(&lab, carts.last().unwrap(), &whole);
    assert!(fs::read(whole.join("huge")).unwrap() == data);

    // By hand, cartridge by cartridge, skipping the failed one.
    let by_hand = lab.path("by-hand");
    for c in carts.iter().filter(|c| *c != "TAP002L9") {
        assert_ok(&lab.tapir(["changer", "load", c]));
        let r = lab.tapir(["restore", "--partials", "--to", by_hand.to_str().unwrap()]);
        assert!([0, 1].contains(&common::code(&r)), "{}", text(&r.stdout));
    }
    assert!(fs::read(by_hand.join("huge")).unwrap() == data);
}
