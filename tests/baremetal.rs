//! Bare-metal restore (issue 8): a minimal Debian root, with every kind of
//! metadata a system relies on added, is written with `--system` to a
//! virtual cartridge, restored from that cartridge alone (no host catalog)
//! into an empty directory, compared field by field, and then used: dpkg
//! runs in a chroot, and a program whose file capability was restored
//! exercises it.
//!
//! Needs root (ownership, device nodes, capabilities, chroot). The root
//! comes from `scripts/debian-root` (debootstrap, cached outside the
//! checkout; scripts/test installs debootstrap).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::snapshot::snapshot;
use common::*;

/// Where the fidelity objects go inside the root.
const FIDELITY: &str = "srv/fidelity";
/// A copy of the root's own cat, given CAP_DAC_READ_SEARCH.
const CAPABLE_CAT: &str = "usr/local/bin/capcat";
/// Readable by root alone.
const SECRET: &str = "srv/fidelity/root-only";
const SECRET_TEXT: &str = "only root, or a program with CAP_DAC_READ_SEARCH, reads this\n";
/// An SELinux label, as a file on an SELinux system carries it.
const SELINUX_LABEL: &[u8] = b"system_u:object_r:etc_t:s0\0";

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The cached Debian root tarball, built on first use.
fn debian_root_tarball() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-root");
    let out = run(&mut Command::new(script));
    PathBuf::from(text(&out.stdout).trim())
}

/// Add what a real root has and a fresh debootstrap lacks.
/// Returns whether the kernel let us set `security.selinux` (it may refuse
/// without an SELinux policy loaded); if it did, the label must survive.
fn add_fidelity_objects(root: &Path) -> bool {
    let f = root.join(FIDELITY);
    fs::create_dir_all(&f).unwrap();

    // A capability on a copy of the root's own cat, and a file it can read
    // only through that capability.
    fs::copy(root.join("usr/bin/cat"), root.join(CAPABLE_CAT)).unwrap();
    run(Command::new("setcap")
        .arg("cap_dac_read_search+ep")
        .arg(root.join(CAPABLE_CAT)));
    fs::write(root.join(SECRET), SECRET_TEXT).unwrap();
    fs::set_permissions(root.join(SECRET), fs::Permissions::from_mode(0o400)).unwrap();

    // POSIX ACLs: access ACL with named entries, and a default ACL.
    fs::write(f.join("acl-file"), b"acl\n").unwrap();
    run(Command::new("setfacl")
        .args(["-m", "u:1234:rwx,g:2345:r-x,m::rwx"])
        .arg(f.join("acl-file")));
    fs::create_dir(f.join("acl-dir")).unwrap();
    run(Command::new("setfacl")
        .args(["-d", "-m", "u:1234:r-x,g::r-x,o::---"])
        .arg(f.join("acl-dir")));

    // xattrs: user namespace, and an SELinux label if the kernel takes one.
    fs::write(f.join("xattr-file"), b"xattrs\n").unwrap();
    xattr::set(
        f.join("xattr-file"),
        "user.tapir.note",
        b"kept \x00 binary \xff",
    )
    .unwrap();
    let selinux = xattr::set(f.join("xattr-file"), "security.selinux", SELINUX_LABEL).is_ok();

    // Sparse: 64 MiB with two small data runs.
    let sparse = fs::File::create(f.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"head", 4096).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; 10000], 40 << 20).unwrap();
    drop(sparse);

    // Special files.
    nix::unistd::mkfifo(
        &f.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            &f.join("char-dev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o660),
            makedev(4, 64),
        )
        .unwrap();
        mknod(
            &f.join("block-dev"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o640),
            makedev(7, 200),
        )
        .unwrap();
    }

    // Modes: setuid, setgid, sticky.
    fs::write(f.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(f.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(f.join("setgid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(f.join("setgid"), fs::Permissions::from_mode(0o2711)).unwrap();
    fs::create_dir(f.join("shared")).unwrap();
    fs::set_permissions(f.join("shared"), fs::Permissions::from_mode(0o3777)).unwrap();

    // Owners by number only: no name exists for them in either passwd.
    fs::write(f.join("numeric-owner"), b"whose?\n").unwrap();
    std::os::unix::fs::lchown(f.join("numeric-owner"), Some(4321), Some(8765)).unwrap();
    symlink("numeric-owner", f.join("numeric-link")).unwrap();
    std::os::unix::fs::lchown(f.join("numeric-link"), Some(4322), Some(8766)).unwrap();

    // Hard links, three names for one inode, across directories.
    fs::write(f.join("linked"), b"one inode\n").unwrap();
    fs::hard_link(f.join("linked"), f.join("shared/linked-2")).unwrap();
    fs::hard_link(f.join("linked"), root.join("usr/local/linked-3")).unwrap();

    // Immutable: a file, and a directory with contents (restore must fill
    // it before freezing it).
    fs::write(f.join("immutable"), b"cannot change\n").unwrap();
    fs::create_dir(f.join("frozen")).unwrap();
    fs::write(f.join("frozen/inside"), b"in a frozen directory\n").unwrap();
    for p in [f.join("immutable"), f.join("frozen")] {
        run(Command::new("chattr").arg("+i").arg(p));
    }

    // Scratch contents the write leaves out; the directories stay.
    fs::write(root.join("tmp/scratch"), b"left out\n").unwrap();
    fs::create_dir_all(root.join("run/lock/left-out")).unwrap();

    // Nanosecond times, set last (adding entries changes a directory's mtime).
    for (rel, ns) in [
        ("srv/fidelity/sparse.img", 123_456_789),
        ("srv/fidelity", 987_654_321),
        ("srv/fidelity/shared", 1),
    ] {
        let t = nix::sys::time::TimeSpec::new(1_000_000_000, ns);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &root.join(rel),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    selinux
}

fn clear_immutable(paths: &[PathBuf]) {
    for p in paths {
        let _ = Command::new("chattr").arg("-i").arg(p).status();
    }
}

#[test]
fn a_debian_root_restores_exactly_from_one_cartridge_and_runs() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the bare-metal test needs root (ownership, device nodes, capabilities, chroot)"
        );
        return;
    }
    let tarball = debian_root_tarball();
    let lab = Lab::new(1, "1G");
    let src = lab.path("src");
    fs::create_dir(&src).unwrap();
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-xpf",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(&src));
    let selinux = add_fidelity_objects(&src);
    let out = lab.path("out");
    let immutables: Vec<PathBuf> = [&src, &out]
        .iter()
        .flat_map(|root| ["immutable", "frozen"].map(|p| root.join(FIDELITY).join(p)))
        .collect();
    // Whatever happens below, the lab directory must stay removable.
    struct Cleanup<'a>(&'a [PathBuf]);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            clear_immutable(self.0);
        }
    }
    let _cleanup = Cleanup(&immutables);

    // Metadata before the write (reading content could move atimes).
    let mut before = snapshot(&src, false);

    lab.label("TAP001L9");
    let w = lab.tapir_in(
        &src,
        [
            "--json",
            "write",
            "--set",
            "baremetal",
            "--system",
            "--no-catalog",
            "--exclude-contents",
            "tmp",
            "--exclude-contents",
            "run",
            ".",
        ],
    );
    assert_ok(&w);
    let summary: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(summary["warnings"], serde_json::json!([]), "{summary}");
    assert!(!lab.catalog().exists(), "no host catalog was written");

    // The manifest, from the cartridge alone.
    let (code, found) = lab.json(["manifest", "show"]);
    assert_eq!(code, 0, "{found}");
    assert_eq!(found["session"], 1);
    let manifest = &found["manifest"];
    assert_eq!(manifest["tapir_system_manifest"], 1);
    assert_eq!(
        manifest["hostname"],
        text(&run(&mut Command::new("hostname")).stdout).trim()
    );
    assert_eq!(
        manifest["kernel"]["release"],
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );

    // Restore from the cartridge alone: no catalog exists.
    let r = lab.tapir([
        "--json",
        "restore",
        "--numeric-owner",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_ok(&r);
    let rs: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rs["restored"], rs["selected"], "{rs}");
    assert!(!lab.catalog().exists(), "restore needed no host catalog");

    let mut after = snapshot(&out, true);
    let source_contents = snapshot(&src, true);
    // The manifest comes back at the reserved path; the rest is the root.
    let stored = fs::read(out.join(".tapir/system-manifest.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(&stored, manifest);
    assert_eq!(after[&b".tapir/system-manifest.json"[..]].mode, 0o600);
    after.remove(&b".tapir/system-manifest.json"[..]);
    after.remove(&b".tapir"[..]);

    // Contents of tmp and run were left out; the directories kept their modes.
    let left_out: Vec<Vec<u8>> = before
        .keys()
        .filter(|p| p.starts_with(b"tmp/") || p.starts_with(b"run/"))
        .cloned()
        .collect();
    assert!(left_out.contains(&b"tmp/scratch".to_vec()), "{left_out:?}");
    assert!(
        left_out.contains(&b"run/lock/left-out".to_vec()),
        "{left_out:?}"
    );
    for p in &left_out {
        before.remove(p);
    }
    assert!(fs::read_dir(out.join("tmp")).unwrap().next().is_none());
    assert!(fs::read_dir(out.join("run")).unwrap().next().is_none());
    // Their link counts and times changed with their contents.
    for dir in ["tmp", "run"] {
        let (b, a) = (
            before.remove(dir.as_bytes()).unwrap(),
            after.remove(dir.as_bytes()).unwrap(),
        );
        assert_eq!((a.mode, a.uid, a.gid), (b.mode, b.uid, b.gid), "{dir}");
    }

    // Every field of every other object.
    let contents: BTreeMap<_, _> = after
        .iter_mut()
        .map(|(p, m)| (p.clone(), m.content.take()))
        .collect();
    let only_in = |a: &BTreeMap<Vec<u8>, _>, b: &BTreeMap<Vec<u8>, _>| -> Vec<String> {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| text(k))
            .collect()
    };
    assert_eq!(
        only_in(&before, &after),
        Vec::<String>::new(),
        "not restored"
    );
    assert_eq!(
        only_in(&after, &before),
        Vec::<String>::new(),
        "restored, not in the source"
    );
    for (path, want) in &before {
        assert_eq!(Some(want), after.get(path), "metadata of {}", text(path));
    }
    for (path, hash) in &contents {
        assert_eq!(
            &source_contents[path].content,
            hash,
            "content of {}",
            text(path)
        );
    }
    assert!(
        before.len() > 3000,
        "a whole root: {} objects",
        before.len()
    );

    // What the comparison above covers, checked by name so a weaker
    // snapshot could not pass it silently.
    let f = |rel: &str| &after[format!("{FIDELITY}/{rel}").as_bytes()];
    assert!(after[CAPABLE_CAT.as_bytes()]
        .xattrs
        .contains_key(&b"security.capability"[..]));
    assert!(f("acl-file")
        .xattrs
        .contains_key(&b"system.posix_acl_access"[..]));
    assert!(f("acl-dir")
        .xattrs
        .contains_key(&b"system.posix_acl_default"[..]));
    assert_eq!(
        f("xattr-file")
            .xattrs
            .get(&b"security.selinux"[..])
            .map(Vec::as_slice),
        selinux.then_some(SELINUX_LABEL)
    );
    assert_eq!(f("setuid").mode, 0o4755);
    assert_eq!(f("setgid").mode, 0o2711);
    assert_eq!(f("shared").mode, 0o3777);
    assert_eq!(
        (f("numeric-owner").uid, f("numeric-owner").gid),
        (4321, 8765)
    );
    assert_eq!(f("linked").nlink, 3);
    assert_eq!(f("sparse.img").mtime, (1_000_000_000, 123_456_789));
    assert_eq!(
        after[FIDELITY.as_bytes()].mtime,
        (1_000_000_000, 987_654_321)
    );
    let sparse = fs::metadata(out.join(FIDELITY).join("sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "the sparse file came back sparse: {} blocks",
        sparse.blocks()
    );
    let flags_of = |p: &Path| tapir::device::inode_flags::get(fs::File::open(p).unwrap()).unwrap();
    for p in &immutables {
        assert_eq!(
            flags_of(p),
            tapir::format::meta::INODE_IMMUTABLE,
            "{} is immutable",
            p.display()
        );
    }

    // The restored root works: dpkg in a chroot...
    let audit = run(Command::new("chroot").arg(&out).args(["dpkg", "--audit"]));
    assert_eq!(text(&audit.stdout), "", "dpkg --audit finds nothing to fix");
    let listed = run(Command::new("chroot")
        .arg(&out)
        .args(["dpkg", "-l", "dpkg"]));
    assert!(
        text(&listed.stdout).contains("ii  dpkg"),
        "{}",
        text(&listed.stdout)
    );
    // ...and the restored capability grants what it should: an
    // unprivileged user reads the root-only file through capcat, but not
    // through plain cat.
    let as_nobody = |program: &str| {
        Command::new("chroot")
            .arg("--userspec=65534:65534")
            .arg(&out)
            .arg(program)
            .arg(format!("/{SECRET}"))
            .output()
            .unwrap()
    };
    let denied = as_nobody("/usr/bin/cat");
    assert!(
        !denied.status.success(),
        "plain cat must not read the secret: {}",
        text(&denied.stdout)
    );
    let read = as_nobody(&format!("/{CAPABLE_CAT}"));
    assert_eq!(
        (read.status.success(), text(&read.stdout)),
        (true, SECRET_TEXT.to_string()),
        "stderr: {}",
        text(&read.stderr)
    );
}

#[test]
fn only_tapir_writes_the_manifest_path_and_a_reader_checks_what_it_finds_there() {
    let lab = Lab::new(1, "256M");
    lab.label("TAP001L9");
    let src = lab.path("src");
    fs::create_dir_all(src.join(".tapir")).unwrap();
    fs::write(
        src.join(".tapir/system-manifest.json"),
        b"{\"hostname\": \"impostor\"}\n",
    )
    .unwrap();
    fs::write(src.join("data"), b"data\n").unwrap();

    let none = lab.tapir(["manifest", "show"]);
    assert_ne!(code(&none), 0);

    // Without --system the path is an ordinary file, which is not taken
    // for a manifest.
    assert_ok(&lab.tapir_in(&src, ["write", "--set", "s", "--no-catalog", "."]));
    let fake = lab.tapir(["manifest", "show"]);
    assert_ne!(code(&fake), 0);
    assert!(
        text(&fake.stderr).contains("not a system manifest"),
        "{}",
        text(&fake.stderr)
    );

    // With --system, the source's file is left out with a warning and the
    // manifest takes the path.
    let w = lab.tapir_in(&src, ["--json", "write", "--system", "--no-catalog", "."]);
    let summary: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    let warnings = summary["warnings"].to_string();
    assert!(
        warnings.contains("reserved for the system manifest"),
        "{warnings}"
    );
    let (code, found) = lab.json(["manifest", "show"]);
    assert_eq!(code, 0, "{found}");
    assert_eq!(found["session"], 2);
    assert_ne!(found["manifest"]["hostname"], "impostor");
    let listing = text(&lab.tapir(["list", "--session", "2"]).stdout);
    assert_eq!(
        listing.matches(".tapir/system-manifest.json").count(),
        1,
        "{listing}"
    );
    // The newest manifest is shown; asked for session 1, the impostor is refused.
    let older = lab.tapir(["manifest", "show", "--session", "1"]);
    assert_ne!(common::code(&older), 0);
    assert!(text(&older.stderr).contains("not a system manifest"));
}
