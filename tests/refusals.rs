//! Refusals that protect data: labelled, foreign, blank, write-protected
//! and wrong-set cartridges, and rewinding devices. Exit code 3 for each.

mod common;

use std::fs;

use common::*;

#[test]
fn label_refuses_a_labelled_cartridge_unless_forced_and_says_what_it_destroys() {
    let lab = Lab::new(1, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"x").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "keep", "d"]));

    let again = lab.tapir(["label", "--label", "NEW001L9"]);
    assert_code(&again, 3);
    let msg = text(&again.stderr);
    assert!(
        msg.contains("TAP001L9") && msg.contains("keep") && msg.contains("--force"),
        "{msg}"
    );
    // Still the old cartridge, data intact.
    assert_ok(&lab.tapir(["verify"]));

    let forced = lab.tapir(["label", "--label", "NEW001L9", "--force"]);
    assert_ok(&forced);
    let out = text(&forced.stdout);
    assert!(
        out.contains("destroyed") && out.contains("1 session"),
        "{out}"
    );
    let (_, json) = lab.json(["list"]);
    assert_eq!(json["label"], "NEW001L9");
    assert_eq!(json["sessions"].as_array().unwrap().len(), 0);
}

#[test]
fn label_refuses_foreign_data() {
    let lab = Lab::new(1, "64M");
    // Put a tar-like block on the cartridge with the device layer.
    {
        use tapir::device::BlockWrite;
        let mut t = tapir::device::vtape::VirtualTape::open(lab.image("TAP001L9"), "t").unwrap();
        let mut block = vec![0u8; 10240];
        block[257..262].copy_from_slice(b"ustar");
        t.write_block(&block).unwrap();
        t.write_filemarks(1, false).unwrap();
    }
    let r = lab.tapir(["label", "--label", "X"]);
    assert_code(&r, 3);
    assert!(
        text(&r.stderr).contains("tar archive"),
        "{}",
        text(&r.stderr)
    );
    let w = lab.tapir(["write", "/etc/hostname"]);
    assert_code(&w, 3);
    assert!(text(&w.stderr).contains("not a tapir cartridge"));
}

#[test]
fn a_blank_cartridge_is_not_written_without_a_label() {
    let lab = Lab::new(1, "64M");
    let w = lab.tapir(["write", "/etc/hostname"]);
    assert_code(&w, 3);
    assert!(
        text(&w.stderr).contains("label it first"),
        "{}",
        text(&w.stderr)
    );
}

#[test]
fn write_protected_and_wrong_set_cartridges_are_refused() {
    let lab = Lab::new(2, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "alpha", "f"]));

    let wrong = lab.tapir_in(&src, ["write", "--set", "beta", "f"]);
    assert_code(&wrong, 3);
    assert!(text(&wrong.stderr).contains("belongs to set \"alpha\""));

    let lib = lab.lib();
    assert_ok(&lab.tapir(["vtape", "protect", lib.to_str().unwrap(), "TAP001L9"]));
    let before = fs::read(lab.image("TAP001L9")).unwrap();
    let w = lab.tapir_in(&src, ["write", "--set", "alpha", "f"]);
    assert_code(&w, 3);
    assert!(
        text(&w.stderr).contains("write-protected"),
        "{}",
        text(&w.stderr)
    );
    let l = lab.tapir(["label", "--label", "X", "--force"]);
    assert_code(&l, 3);
    assert_eq!(
        fs::read(lab.image("TAP001L9")).unwrap(),
        before,
        "nothing written"
    );
    // Reading still works.
    assert_ok(&lab.tapir(["verify"]));
}

#[test]
fn rewinding_devices_are_refused_with_the_reason() {
    let out = std::process::Command::new(TAPIR)
        .args(["--device", "/dev/st0", "list"])
        .output()
        .unwrap();
    assert_code(&out, 2);
    let msg = text(&out.stderr);
    assert!(msg.contains("rewind") && msg.contains("/dev/nst0"), "{msg}");
}

#[test]
fn no_device_is_a_usage_error() {
    let out = std::process::Command::new(TAPIR)
        .args(["list"])
        .env_remove("TAPE")
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(text(&out.stderr).contains("--device"));
}

#[test]
fn changer_loads_and_unloads_by_slot_and_barcode() {
    let lab = Lab::new(3, "64M");
    let (_, inv) = lab.json(["changer", "status"]);
    assert_eq!(inv["drive"][0], "TAP001L9");
    let (code, inv) = lab.json(["changer", "load", "TAP003L9"]);
    assert_eq!(code, 0);
    assert_eq!(inv["drive"][0], "TAP003L9");
    lab.label("TAP003L9");
    let (code, inv) = lab.json(["changer", "unload"]);
    assert_eq!(code, 0);
    assert!(inv["drive"].is_null());
    let none = lab.tapir(["list"]);
    assert_code(&none, 5);
    let (code, _) = lab.json(["changer", "load", "3"]);
    assert_eq!(code, 0);
    let (_, json) = lab.json(["list"]);
    assert_eq!(json["label"], "TAP003L9");
}

/// As an unprivileged user: an unreadable source is a warning (exit 1), the
/// rest is written, and a restore says ownership was left as the user's.
#[test]
fn unreadable_sources_are_warnings_not_failures() {
    if !is_root() {
        eprintln!("needs root to switch to an unprivileged user; CI runs as root");
        return;
    }
    let lab = Lab::new(1, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/readable"), b"yes").unwrap();
    fs::write(src.join("d/secret"), b"no").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.join("d/secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(lab.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                TAPIR,
                "--device",
            ])
            .arg(lab.device())
            .args(args)
            .current_dir(&src)
            .env("TAPIR_CATALOG", lab.catalog())
            .output()
            .unwrap()
    };
    let w = as_nobody(&["write", "d"]);
    assert_code(&w, 1);
    let out = text(&w.stdout);
    assert!(
        out.contains("d/secret") && out.contains("completed with 1 warning"),
        "{out}"
    );
    let target = lab.path("restored");
    let r = as_nobody(&["restore", "--to", target.to_str().unwrap()]);
    assert_code(&r, 1);
    assert!(text(&r.stdout).contains("ownership left as the restoring user's"));
    assert_eq!(fs::read(target.join("d/readable")).unwrap(), b"yes");
}

/// Something other than tapir appended after the last session: tapir
/// reads the last block back before writing and refuses to append.
#[test]
fn appending_after_a_block_that_is_not_ours_is_refused() {
    let lab = Lab::new(1, "64M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "f"]));
    {
        use tapir::device::{BlockWrite, TapeDrive};
        let mut t = tapir::device::vtape::VirtualTape::open(lab.image("TAP001L9"), "t").unwrap();
        t.seek_end_of_data().unwrap();
        t.write_block(&vec![0x55u8; 4096]).unwrap();
        t.write_filemarks(1, false).unwrap();
    }
    let before = fs::read(lab.image("TAP001L9")).unwrap();
    let w = lab.tapir_in(&src, ["write", "f"]);
    assert_code(&w, 3);
    assert!(
        text(&w.stderr).contains("not appending"),
        "{}",
        text(&w.stderr)
    );
    assert_eq!(
        fs::read(lab.image("TAP001L9")).unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn changer_transfer_and_inventory_on_a_virtual_library() {
    let lab = Lab::new(3, "64M");
    let (code, inv) = lab.json(["changer", "inventory"]);
    assert_eq!(code, 0);
    assert_eq!(inv["slots"][1][1], "TAP002L9");
    assert_ok(&lab.tapir(["changer", "export", "TAP003L9"]));
    let (code, inv) = lab.json(["changer", "transfer", "2", "3"]);
    assert_eq!(code, 0);
    assert!(inv["slots"][1][1].is_null(), "{inv}");
    assert_eq!(inv["slots"][2][1], "TAP002L9");
    // Into a taken slot: refused, nothing moves.
    let refused = lab.tapir(["changer", "transfer", "3", "1"]);
    assert_code(&refused, 2);
    assert!(
        text(&refused.stderr).contains("slot 1 is taken"),
        "{}",
        text(&refused.stderr)
    );
    let (_, inv) = lab.json(["changer", "status"]);
    assert_eq!(inv["slots"][2][1], "TAP002L9");
    // A virtual library imports by barcode.
    assert_code(&lab.tapir(["changer", "import"]), 2);
    let (code, inv) = lab.json(["changer", "import", "TAP003L9"]);
    assert_eq!(code, 0);
    assert_eq!(inv["slots"][1][1], "TAP003L9");
}

#[test]
fn label_barcodes_labels_only_blank_cartridges_and_names_the_others() {
    use tapir::device::{vtape::VirtualTape, BlockWrite};
    let lab = Lab::new(4, "64M");
    // TAP002L9 is labelled already, under another name; TAP003L9 holds
    // another program's data.
    assert_ok(&lab.tapir(["changer", "load", "TAP002L9"]));
    lab.label("OLD002");
    {
        let mut t = VirtualTape::open(lab.image("TAP003L9"), "t").unwrap();
        t.write_block(b"ANOTHER BACKUP PROGRAM'S HEADER").unwrap();
        t.write_filemarks(1, false).unwrap();
    }
    let foreign = std::fs::read(lab.image("TAP003L9")).unwrap();
    let (code, done) = lab.json(["label", "--barcodes", "--pool", "weekly"]);
    assert_eq!(code, 0, "{done}");
    let by_barcode = |b: &str| {
        done.as_array()
            .unwrap()
            .iter()
            .find(|d| d["barcode"] == b)
            .unwrap_or_else(|| panic!("{b} missing from {done}"))
            .clone()
    };
    for b in ["TAP001L9", "TAP004L9"] {
        let d = by_barcode(b);
        assert_eq!(d["labelled"]["label"], b, "{d}");
        assert_eq!(d["labelled"]["pool"], "weekly", "{d}");
    }
    let d = by_barcode("TAP002L9");
    assert!(d["labelled"].is_null());
    assert!(
        d["skipped"]
            .as_str()
            .unwrap()
            .contains("already labelled OLD002"),
        "{d}"
    );
    let d = by_barcode("TAP003L9");
    assert!(d["skipped"].as_str().unwrap().contains("not blank"), "{d}");
    assert!(std::fs::read(lab.image("TAP003L9")).unwrap() == foreign);
    // What is in the drive now reads back as labelled with its barcode.
    let (_, inv) = lab.json(["changer", "load", "TAP004L9"]);
    assert_eq!(inv["drive"][0], "TAP004L9");
    let (_, list) = lab.json(["list"]);
    assert_eq!(list["label"], "TAP004L9");
    assert_eq!(list["pool"], "weekly");
    // Again: nothing left to label.
    let again = lab.tapir(["label", "--barcodes", "--pool", "weekly"]);
    assert_ok(&again);
    assert!(
        text(&again.stdout).contains("0 of 4 cartridges labelled"),
        "{}",
        text(&again.stdout)
    );
    // --barcodes and --label exclude each other.
    assert_code(&lab.tapir(["label", "--barcodes", "--label", "X"]), 2);
}

#[test]
fn the_changer_comes_from_the_option_the_device_or_the_configuration() {
    let lab = Lab::new(2, "64M");
    let run = |args: &[&str]| {
        std::process::Command::new(TAPIR)
            .args(args)
            .env_remove("TAPE")
            .env_remove("TAPIR_CHANGER")
            .env_remove("TAPIR_CONFIG")
            .env("TAPIR_CATALOG", lab.catalog())
            .output()
            .unwrap()
    };
    let config = lab.path("tapir.toml");
    std::fs::write(
        &config,
        format!("[changer.lib]\ndevice = \"{}\"\n", lab.device()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // From the configuration's only changer.
    let out = run(&["--config", config, "changer", "status", "--json"]);
    assert_ok(&out);
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["drive"][0], "TAP001L9");
    // --changer names it directly.
    let dev = lab.device();
    assert_ok(&run(&["changer", "--changer", &dev, "status"]));
    // Nothing names one: a usage error that says how.
    let none = run(&["--device", "/dev/nst0", "changer", "status"]);
    assert_code(&none, 2);
    assert!(
        text(&none.stderr).contains("--changer"),
        "{}",
        text(&none.stderr)
    );
    // A device that is not a changer: the open fails and names it.
    let missing = run(&["changer", "--changer", "/nonexistent/sg9", "status"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("/nonexistent/sg9"),
        "{}",
        text(&missing.stderr)
    );
}
