//! Label → write → list → restore → verify on a virtual library, with every
//! entry type and metadata compared field by field.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::snapshot::snapshot;
use common::*;

fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("plain.txt"), b"hello tape\n").unwrap();
    fs::write(
        root.join("dir/sub/deep.bin"),
        (0..200_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("name with\nnewline"), b"odd name").unwrap();
    fs::write(
        root.join(OsStr::from_bytes(b"bad-utf8-\xff\xfe")),
        b"latin-1 name",
    )
    .unwrap();
    symlink("plain.txt", root.join("link-to-plain")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::write(root.join("hard-a"), b"shared inode").unwrap();
    fs::hard_link(root.join("hard-a"), root.join("dir/hard-b")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let exe = root.join("setuid-prog");
    fs::write(&exe, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o1770)).unwrap();
    // A 1 GiB sparse file with one byte of data in the middle.
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"X", 512 << 20).unwrap();
    drop(sparse);
    xattr::set(root.join("plain.txt"), "user.origin", b"field test").unwrap();
    xattr::set(root.join("dir"), "user.dirnote", b"on a directory").unwrap();
    let acl = Command::new("setfacl")
        .args(["-m", "u:12345:r--"])
        .arg(root.join("plain.txt"))
        .status()
        .expect("setfacl is needed (scripts/test installs the acl package)");
    assert!(acl.success());
    if is_root() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            &root.join("null-dev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("loop-dev"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 200),
        )
        .unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &root.join("plain.txt"),
            Some(nix::unistd::Uid::from_raw(4321)),
            Some(nix::unistd::Gid::from_raw(8765)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    // A socket is skipped and counted, as tar does.
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // Fixed times with nanoseconds on everything, directories last.
    let when = nix::sys::time::TimeSpec::new(1_700_000_000, 123_456_789);
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .contents_first(true)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    paths.retain(|p| p != &root.join("sock"));
    for (i, p) in paths.iter().enumerate() {
        let t = nix::sys::time::TimeSpec::new(when.tv_sec() + i as i64, when.tv_nsec());
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &when,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    // Inode flags last: append-only forbids setting times. nodump, and
    // append-only where root may set it.
    let st = Command::new("chattr")
        .arg(inode_flags())
        .arg(root.join("dir/sub/deep.bin"))
        .status()
        .unwrap();
    assert!(st.success());
}

fn inode_flags() -> &'static str {
    if is_root() {
        "+da"
    } else {
        "+d"
    }
}

/// Clear append-only so the temporary directory can be removed.
fn clear_flags(paths: &[PathBuf]) {
    for p in paths {
        let _ = Command::new("chattr").arg("-a").arg(p).status();
    }
}

#[test]
fn every_entry_type_round_trips_field_by_field() {
    let lab = Lab::new(2, "2G");
    let src = lab.path("src");
    build_tree(&src.join("tree"));
    lab.label("TAP001L9");
    // Metadata before the write: reading a symlink or a file may move its atime.
    let before = snapshot(&src.join("tree"), false);

    let w = lab.tapir_in(&src, ["--json", "write", "--set", "roundtrip", "tree"]);
    assert_ok(&w);
    let summary: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(summary["skipped_sockets"], 1, "the socket is counted");
    assert_eq!(summary["session"], 1);
    // The sparse file's holes are not written: far less than 1 GiB went to tape.
    assert!(
        summary["bytes_written"].as_u64().unwrap() < 16 << 20,
        "{summary}"
    );

    let list = lab.tapir(["list"]);
    assert_ok(&list);
    let listing = text(&list.stdout);
    assert!(listing.contains("tree/name with\\nnewline"), "{listing}");
    assert!(listing.contains("tree/bad-utf8-\\xff\\xfe"), "{listing}");
    assert!(
        listing.contains("tree/link-to-plain -> plain.txt"),
        "{listing}"
    );
    assert!(listing.contains("-rwsr-xr-x"), "{listing}");

    let out = lab.path("out");
    let r = lab.tapir(["--json", "restore", "--to", out.to_str().unwrap()]);
    assert_ok(&r);
    let rs: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        rs["restored"], rs["selected"],
        "every selected entry counted as restored: {rs}"
    );
    let mut after = snapshot(&out.join("tree"), true);
    let contents: BTreeMap<_, _> = after
        .iter_mut()
        .map(|(p, m)| (p.clone(), m.content.take()))
        .collect();
    let mut expected = before;
    expected.remove(b"sock".as_slice());
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, want) in &expected {
        assert_eq!(
            Some(want),
            after.get(path),
            "metadata of {}",
            String::from_utf8_lossy(path)
        );
    }
    let source_contents = snapshot(&src.join("tree"), true);
    for (path, hash) in &contents {
        assert_eq!(
            &source_contents[path].content,
            hash,
            "content of {}",
            String::from_utf8_lossy(path)
        );
    }
    let a = fs::metadata(out.join("tree/hard-a")).unwrap();
    let b = fs::metadata(out.join("tree/dir/hard-b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link restored as a link");
    let flags_of = |p: &Path| tapir::device::inode_flags::get(fs::File::open(p).unwrap()).unwrap();
    let src_flags = flags_of(&src.join("tree/dir/sub/deep.bin"));
    assert_ne!(src_flags, 0);
    assert_eq!(
        flags_of(&out.join("tree/dir/sub/deep.bin")),
        src_flags,
        "inode flags restored"
    );
    let sparse = fs::metadata(out.join("tree/sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "sparse file restored sparse: {} blocks",
        sparse.blocks()
    );
    assert!(
        after[b"plain.txt".as_slice()]
            .xattrs
            .contains_key(b"system.posix_acl_access".as_slice()),
        "POSIX ACL restored"
    );

    let v = lab.tapir(["verify"]);
    clear_flags(&[
        src.join("tree/dir/sub/deep.bin"),
        out.join("tree/dir/sub/deep.bin"),
    ]);
    assert_ok(&v);
    assert!(text(&v.stdout).contains("all data verified"));
}

#[test]
fn compressed_sessions_append_and_restore_the_latest_version_by_default() {
    let lab = Lab::new(1, "1G");
    let src = lab.path("src");
    fs::create_dir_all(src.join("data")).unwrap();
    let text_data: Vec<u8> = (0..300_000)
        .flat_map(|i| format!("log line {i} ok\n").into_bytes())
        .collect();
    fs::write(src.join("data/log.txt"), &text_data).unwrap();
    fs::write(src.join("data/version"), b"one").unwrap();
    lab.label("TAP001L9");
    let w1 = lab.tapir_in(&src, ["--json", "write", "--compress", "zstd", "data"]);
    assert_ok(&w1);
    let s1: serde_json::Value = serde_json::from_slice(&w1.stdout).unwrap();
    assert!(s1["compression_ratio"].as_f64().unwrap() > 3.0, "{s1}");
    fs::write(src.join("data/version"), b"two").unwrap();
    assert_ok(&lab.tapir_in(&src, ["write", "data/version"]));

    let (code, listing) = lab.json(["list"]);
    assert_eq!(code, 0);
    let sessions = listing["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        sessions[1]["data_tape_file"], 5,
        "second session after the first's data, catalog and set catalog copy"
    );

    let out = lab.path("latest");
    assert_ok(&lab.tapir(["restore", "--to", out.to_str().unwrap()]));
    assert_eq!(fs::read(out.join("data/version")).unwrap(), b"two");
    assert_eq!(fs::read(out.join("data/log.txt")).unwrap(), text_data);

    let old = lab.path("old");
    assert_ok(&lab.tapir([
        "restore",
        "--session",
        "1",
        "--to",
        old.to_str().unwrap(),
        "data/version",
    ]));
    assert_eq!(fs::read(old.join("data/version")).unwrap(), b"one");
    assert!(
        !old.join("data/log.txt").exists(),
        "pattern limits the restore"
    );

    // Restoring again does not overwrite without --overwrite, and says so.
    fs::write(out.join("data/version"), b"local edit").unwrap();
    let again = lab.tapir(["restore", "--to", out.to_str().unwrap(), "data/version"]);
    assert_code(&again, 1);
    assert!(text(&again.stdout).contains("skipped (exists"));
    assert_eq!(fs::read(out.join("data/version")).unwrap(), b"local edit");
    assert_ok(&lab.tapir([
        "restore",
        "--overwrite",
        "--to",
        out.to_str().unwrap(),
        "data/version",
    ]));
    assert_eq!(fs::read(out.join("data/version")).unwrap(), b"two");
}

#[test]
fn restoring_one_file_seeks_to_it_and_reads_only_its_blocks() {
    let lab = Lab::new(1, "1G");
    let src = lab.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("d/big{i}")), vec![i as u8; 4 << 20]).unwrap();
    }
    fs::write(src.join("d/big4-needle"), b"the one we want").unwrap();
    lab.label("TAP001L9");
    assert_ok(&lab.tapir_in(&src, ["write", "d"]));
    let out = lab.path("out");
    let r = lab.tapir([
        "--json",
        "restore",
        "--to",
        out.to_str().unwrap(),
        "d/big4-needle",
    ]);
    assert_ok(&r);
    let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(s["restored"], 1, "{s}");
    assert_eq!(s["seeks"], 1, "{s}");
    // 32 MiB of data precede it; a couple of blocks are all that is read.
    assert!(s["blocks_read"].as_u64().unwrap() <= 2, "{s}");
    assert_eq!(
        fs::read(out.join("d/big4-needle")).unwrap(),
        b"the one we want"
    );

    // Two far-apart files: one seek each, still no reading through the rest.
    let out2 = lab.path("out2");
    let r = lab.tapir([
        "--json",
        "restore",
        "--to",
        out2.to_str().unwrap(),
        "d/big0",
        "d/big7",
    ]);
    assert_ok(&r);
    let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(s["seeks"], 2, "{s}");
    assert!(s["blocks_read"].as_u64().unwrap() <= 2 * 18, "{s}");
    assert_eq!(fs::read(out2.join("d/big7")).unwrap(), vec![7u8; 4 << 20]);
}

#[test]
fn one_path_is_found_in_the_set_catalog_pages_not_the_whole_catalog() {
    let lab = Lab::new(1, "1G");
    let src = lab.path("src");
    // 30,000 entries: their catalogs take several MB; one path needs a few pages.
    for d in 0..30 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            fs::write(dir.join(format!("file-with-a-longish-name-{f:04}")), b"").unwrap();
        }
    }
    fs::write(src.join("d17/needle"), b"found").unwrap();
    lab.label("TAP001L9");
    assert_ok(&lab.tapir_in(&src, ["write", "."]));
    let out = lab.path("out");
    let (code, s) = lab.json(["restore", "--to", out.to_str().unwrap(), "d17/needle"]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["restored"], 1, "{s}");
    assert_eq!(fs::read(out.join("d17/needle")).unwrap(), b"found");
    let catalog = s["catalog_bytes_read"].as_u64().unwrap();
    assert!(catalog > 0, "the set catalog copy was not used: {s}");
    // The index and at most two pages of 1 MiB (the whole catalog is larger).
    assert!(catalog <= 3 << 20, "{catalog} catalog bytes read: {s}");
    assert!(s["blocks_read"].as_u64().unwrap() <= 2, "{s}");

    // A pattern with a wildcard lists the sessions' catalogs instead.
    let (code, s) = lab.json([
        "restore",
        "--to",
        lab.path("out2").to_str().unwrap(),
        "d17/need*",
    ]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["restored"], 1, "{s}");
    assert_eq!(s["catalog_bytes_read"], 0, "{s}");
}
