//! `tapir drive ...` on a virtual library: the subset of drive commands a
//! virtual drive supports, "not supported" for the rest, and `qualify`.

mod common;

use common::*;

#[test]
fn status_is_mt_like_and_says_what_is_not_supported() {
    let lab = Lab::new(2, "16M");
    let (code, s) = lab.json(["drive", "status"]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["loaded"], true);
    assert_eq!(s["barcode"], "TAP001L9");
    assert_eq!(
        (s["bot"].as_bool(), s["eod"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(
        (s["file"].as_u64(), s["block"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["block_size"], 0, "variable-block mode");
    assert_eq!(s["vendor"], "tapir");
    assert!(
        s["serial"].as_str().is_some_and(|x| x.starts_with("VT")),
        "{s}"
    );
    for field in ["compression", "density_code", "worm", "cartridge_memory"] {
        assert!(
            s["unavailable"][field]
                .as_str()
                .is_some_and(|w| w.contains("not supported")),
            "{field}: {s}"
        );
    }
    assert!(s["compression"].is_null());

    lab.label("TAP001L9");
    let out = lab.tapir(["drive", "status"]);
    assert_ok(&out);
    let text = text(&out.stdout);
    assert!(text.contains("file number 0, block number 0"), "{text}");
    assert!(text.contains("BOT") && text.contains("ONLINE"), "{text}");
    assert!(text.contains("compression:  not supported"), "{text}");
    assert!(text.contains("block size:   variable"), "{text}");
}

#[test]
fn eject_and_load_go_through_the_library() {
    let lab = Lab::new(2, "16M");
    let out = lab.tapir(["drive", "eject"]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).contains("TAP001L9 returned to slot 1"),
        "{}",
        text(&out.stdout)
    );
    let (code, s) = lab.json(["drive", "status"]);
    assert_eq!(code, 0);
    assert_eq!(s["loaded"], false);
    // Reading commands now find no cartridge (exit 5).
    assert_code(&lab.tapir(["drive", "rewind"]), 5);
    // A library needs to be told which cartridge.
    let out = lab.tapir(["drive", "load"]);
    assert_code(&out, 2);
    assert!(text(&out.stderr).contains("slot number or a barcode"));
    assert_ok(&lab.tapir(["drive", "load", "TAP002L9"]));
    let (_, s) = lab.json(["drive", "status"]);
    assert_eq!(s["barcode"], "TAP002L9");
    let (code, r) = lab.json(["drive", "rewind"]);
    assert_eq!((code, r["operation"].as_str()), (0, Some("rewind")));
}

#[test]
fn erase_refuses_what_it_would_destroy_unless_forced() {
    let lab = Lab::new(1, "16M");
    // A blank cartridge: nothing to protect.
    assert_ok(&lab.tapir(["drive", "erase"]));
    lab.label("TAP001L9");
    let out = lab.tapir(["drive", "erase"]);
    assert_code(&out, 3);
    let msg = text(&out.stderr);
    assert!(
        msg.contains("tapir label TAP001L9") && msg.contains("--force"),
        "{msg}"
    );
    // Still labelled.
    assert_code(&lab.tapir(["label", "--label", "TAP001L9"]), 3);

    let (code, r) = lab.json(["drive", "erase", "--force"]);
    assert_eq!(code, 0, "{r}");
    assert!(
        r["destroyed"]
            .as_str()
            .is_some_and(|d| d.contains("TAP001L9")),
        "{r}"
    );
    assert_eq!(r["long"], false);
    // Blank again: labelling needs no --force.
    lab.label("TAP001L9");

    assert_ok(&lab.tapir(["vtape", "protect", lab.lib().to_str().unwrap(), "TAP001L9"]));
    assert_code(&lab.tapir(["drive", "erase", "--force", "--long"]), 3);
}

#[test]
fn tapealert_and_cartridge_memory_are_not_supported_but_do_not_fail() {
    let lab = Lab::new(1, "16M");
    let (code, a) = lab.json(["drive", "tapealert"]);
    assert_eq!(code, 0);
    assert_eq!(a["supported"], false);
    assert!(a["reason"].as_str().unwrap().contains("not supported"));

    let (code, l) = lab.json(["label", "--label", "TAP001L9"]);
    assert_eq!(code, 0);
    assert_eq!(l["cartridge_memory"], "not_supported");
    let (code, m) = lab.json(["drive", "cartridge-memory"]);
    assert_eq!(code, 0, "{m}");
    assert_eq!(m["supported"], false);
    assert_eq!(m["names"]["barcode"], "TAP001L9");
    assert_eq!(m["names"]["tape_label"], "TAP001L9");
    assert!(m["identity_mismatch"].is_null());
}

#[test]
fn a_label_that_is_not_the_barcode_is_reported_never_resolved() {
    let lab = Lab::new(1, "16M");
    lab.label("OTHER1L9");
    let out = lab.tapir(["drive", "cartridge-memory"]);
    assert_code(&out, 1);
    let warning = text(&out.stderr);
    assert!(
        warning.contains("barcode \"TAP001L9\"")
            && warning.contains("on-tape label \"OTHER1L9\"")
            && warning.contains("cartridge memory label unknown"),
        "{warning}"
    );
    // Reading the cartridge warns the same way and carries on.
    let out = lab.tapir(["list"]);
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("names disagree"),
        "{}",
        text(&out.stderr)
    );
    let (_, l) = lab.json(["list"]);
    assert_eq!(l["label"], "OTHER1L9");
}

#[test]
fn drives_is_drive_list() {
    let lab = Lab::new(1, "16M");
    let a = lab.tapir(["drives", "--json"]);
    let b = lab.tapir(["drive", "list", "--json"]);
    assert_ok(&a);
    assert_eq!(a.stdout, b.stdout);
    assert!(serde_json::from_slice::<serde_json::Value>(&a.stdout)
        .unwrap()
        .is_array());
}

#[test]
fn qualify_checks_a_scratch_cartridge_and_recommends_settings() {
    let lab = Lab::new(1, "48M");
    lab.label("TAP001L9");
    let out = lab.tapir(["drive", "qualify"]);
    assert_code(&out, 3);
    assert!(
        text(&out.stderr).contains("tapir label TAP001L9"),
        "{}",
        text(&out.stderr)
    );

    let (code, q) = lab.json(["drive", "qualify", "--force", "--bytes", "2M"]);
    assert_eq!(code, 0, "{q:#}");
    assert_eq!(q["passed"], true);
    assert_eq!(q["data_intact"], true);
    assert_eq!(q["max_block_reported"], 1 << 20);
    assert_eq!(q["largest_block_verified"], 1 << 20);
    assert_eq!(q["block_sizes"].as_array().unwrap().len(), 9, "4K to 1M");
    assert_eq!(q["test_block_size"], 1 << 20);
    let checks = q["checks"].as_array().unwrap();
    assert!(checks.len() >= 20, "{q:#}");
    assert!(checks.iter().all(|c| c["passed"] == true));
    for name in [
        "read back tape file 3",
        "backward space 1 file stops before the filemark",
        "locate tape file 1, block 16",
    ] {
        assert!(checks.iter().any(|c| c["name"] == name), "{name}");
    }
    assert_eq!(
        (
            q["locate"]["landed_right"].as_u64(),
            q["locate"]["landed_wrong"].as_u64()
        ),
        (Some(6), Some(0))
    );
    assert_eq!(q["throughput"]["bytes"], 2 << 20);
    assert!(q["early_warning"].is_null());
    assert_eq!(q["recommendation"]["block_size"], 1 << 20);
    assert_eq!(q["recommendation"]["locate_trusted"], true);
    assert_eq!(q["erased"], true);
    // Blank again afterwards.
    lab.label("TAP001L9");
}

#[test]
fn qualify_fill_reaches_early_warning_and_writes_past_it() {
    let lab = Lab::new(1, "8M");
    let out = lab.tapir([
        "drive",
        "qualify",
        "--fill",
        "--bytes",
        "1M",
        "--max-block-size",
        "64K",
    ]);
    assert_ok(&out);
    let human = text(&out.stdout);
    assert!(human.contains("result:         PASSED"), "{human}");
    assert!(human.contains("block size 64 KiB"), "{human}");
    let (code, q) = lab.json([
        "drive",
        "qualify",
        "--fill",
        "--bytes",
        "0",
        "--max-block-size",
        "64K",
    ]);
    assert_eq!(code, 0, "{q:#}");
    let ew = &q["early_warning"];
    assert_eq!(ew["reached"], true, "{q:#}");
    assert_eq!(ew["filemark_after"], true);
    // 8M less the 2 MiB early-warning zone, less what the earlier runs wrote.
    assert!(ew["bytes_before"].as_u64().unwrap() > 1 << 20, "{ew}");
    assert!(q["throughput"].is_null());
    let notes = q["recommendation"]["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("1024 KiB work on this path")),
        "{notes:?}"
    );
}
