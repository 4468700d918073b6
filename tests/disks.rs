//! Removable disks as cartridges (`disk:LABEL=...`), on ext4 filesystems
//! in loop devices the tests create: a set spanning disks, restoring from
//! one disk alone, a rotation job that asks for its disk and refuses the
//! wrong one, and a disk pulled mid-write.
//!
//! They need root (losetup, mount); without root or losetup they say so
//! and pass.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Why the disk tests cannot run here, if they cannot: only without root
/// or without losetup (scripts/test installs mount, util-linux and
/// e2fsprogs, so everything else they need is there).
fn cannot_run() -> Option<String> {
    if !is_root() {
        return Some("loop devices and mounts need root".into());
    }
    if Command::new("losetup").arg("--version").output().is_err() {
        return Some("losetup is not installed (Debian package mount)".into());
    }
    None
}

macro_rules! need_disks {
    () => {
        if let Some(why) = cannot_run() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

/// One removable disk: an ext4 filesystem in a file, plugged in as a loop
/// device when asked.
struct Disk {
    label: String,
    file: PathBuf,
    /// The loop device while plugged in.
    dev: Option<String>,
}

/// A few disks and a scratch directory. `finish` unplugs them and checks
/// that went well; dropping the bay unplugs whatever is still plugged in,
/// best effort (a failing test must not leave loop devices behind).
struct Bay {
    dir: tempfile::TempDir,
    disks: Vec<Disk>,
}

impl Bay {
    /// `n` disks of `mib` MiB, labelled `t<pid><tag>-A`, `-B`, ...
    fn new(tag: &str, n: usize, mib: u64) -> Bay {
        let dir = tempfile::Builder::new()
            .prefix("tapir-disks-")
            .tempdir()
            .unwrap();
        let disks = (0..n)
            .map(|i| {
                let label = format!(
                    "t{:04x}{tag}-{}",
                    std::process::id() & 0xffff,
                    (b'A' + i as u8) as char
                );
                let file = dir.path().join(format!("{label}.img"));
                fs::File::create(&file).unwrap().set_len(mib << 20).unwrap();
                sh(Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-L", &label])
                    .arg(&file));
                Disk {
                    label,
                    file,
                    dev: None,
                }
            })
            .collect();
        Bay { dir, disks }
    }

    fn label(&self, i: usize) -> &str {
        &self.disks[i].label
    }

    fn device(&self, i: usize) -> String {
        format!("disk:LABEL={}", self.disks[i].label)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn catalog(&self) -> PathBuf {
        self.path("catalog.db")
    }

    fn plug(&mut self, i: usize) {
        let d = &mut self.disks[i];
        assert!(d.dev.is_none(), "{} is plugged in already", d.label);
        d.dev = Some(sh(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&d.file)));
    }

    /// `major:minor` of the loop device of disk `i`.
    fn dev_number(&self, i: usize) -> String {
        let dev = self.disks[i].dev.as_ref().expect("plugged in");
        let name = Path::new(dev).file_name().unwrap().to_str().unwrap();
        fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Where disk `i` is mounted now.
    fn mounts(&self, i: usize) -> Vec<String> {
        let mm = self.dev_number(i);
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[2] == mm).then(|| f[4].to_string())
            })
            .collect()
    }

    /// Unplug disk `i`: it must not be mounted (tapir unmounted it).
    fn unplug(&mut self, i: usize) {
        assert!(
            self.mounts(i).is_empty(),
            "{} is still mounted at {:?}",
            self.disks[i].label,
            self.mounts(i)
        );
        let dev = self.disks[i].dev.take().unwrap();
        sh(Command::new("losetup").args(["-d", &dev]));
        // A loop device still open elsewhere (a blkid probe finishing) is
        // only marked for detaching; until it lets go, tapir would still
        // see the disk as plugged in. Wait for the detach itself.
        let backing = format!(
            "/sys/class/block/{}/loop/backing_file",
            Path::new(&dev).file_name().unwrap().to_str().unwrap()
        );
        let since = std::time::Instant::now();
        while Path::new(&backing).exists() {
            assert!(
                since.elapsed() < std::time::Duration::from_secs(30),
                "{dev} did not detach from {}",
                self.disks[i].label
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Run tapir with this bay's catalog, in `cwd`.
    fn tapir_in<I, S>(&self, cwd: &Path, args: I) -> std::process::Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(TAPIR)
            .current_dir(cwd)
            .args(args)
            .env_remove("TAPE")
            .env("TAPIR_CATALOG", self.catalog())
            .output()
            .unwrap()
    }

    fn tapir<I, S>(&self, args: I) -> std::process::Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.tapir_in(self.dir.path(), args)
    }

    fn json<I, S>(&self, cwd: &Path, args: I) -> (i32, serde_json::Value)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        json_of(|all| self.tapir_in(cwd, all), args)
    }

    /// Unmount what tapir left mounted and unplug every disk.
    fn finish(mut self) {
        for i in 0..self.disks.len() {
            if self.disks[i].dev.is_some() {
                for m in self.mounts(i) {
                    sh(Command::new("umount").arg(&m));
                }
                self.unplug(i);
            }
        }
    }
}

impl Drop for Bay {
    fn drop(&mut self) {
        for d in &mut self.disks {
            if let Some(dev) = d.dev.take() {
                let _ = Command::new("umount").args(["-l", &dev]).status();
                let _ = Command::new("losetup").args(["-d", &dev]).status();
            }
            let _ = fs::remove_dir(Path::new("/run/tapir/disks").join(&d.label));
        }
    }
}

/// `files` incompressible files of about 2 MB plus a few small ones.
fn make_tree(root: &Path, files: usize) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for i in 0..files {
        all.insert(
            format!("big/f{i:02}"),
            noise(i as u64, 2_000_000 + i * 50_000),
        );
    }
    for i in 0..10 {
        all.insert(
            format!("small/s{i}.txt"),
            format!("small {i}\n").into_bytes(),
        );
    }
    for (rel, data) in &all {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    all
}

fn restored(to: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(to)
        .into_iter()
        .map(|(rel, data)| (rel.trim_start_matches("./").to_string(), data))
        .collect()
}

#[test]
fn a_set_spans_three_disks_passes_over_a_wrong_one_and_each_restores_alone() {
    need_disks!();
    let mut bay = Bay::new("sp", 4, 16);
    for i in 0..4 {
        bay.plug(i);
    }
    let src = bay.path("src");
    let tree = make_tree(&src, 11);
    let label = |i: usize, pool: &str| {
        assert_ok(&bay.tapir([
            "--device",
            &bay.device(i),
            "label",
            "--label",
            bay.label(i),
            "--pool",
            pool,
            "--block-size",
            "64K",
            "--no-rescue-kit",
        ]));
        let out = bay.tapir(["--device", &bay.device(i), "drive", "eject"]);
        assert_ok(&out);
        assert!(
            text(&out.stdout).contains("unmounted; a loop device: nothing to power off"),
            "{}",
            text(&out.stdout)
        );
        assert!(bay.mounts(i).is_empty(), "eject unmounts");
    };
    label(0, "default");
    // Disk B belongs to another pool: the wrong disk to continue on.
    label(1, "other");
    let b_before = fs::read(&bay.disks[1].file).unwrap();
    // The disks of the pattern, in label order; the next one when one fills.
    let pattern = format!("disk:LABEL={}", bay.label(0).replace("-A", "-*"));
    let out = bay.tapir_in(
        &src,
        [
            "--json",
            "--device",
            &pattern,
            "write",
            "--no-rescue-kit",
            "--operator-timeout",
            "0",
            "--set",
            "offsite",
            ".",
        ],
    );
    // Written, with a warning naming the wrong disk.
    assert_code(&out, 1);
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts: Vec<String> = w["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cartridge"].as_str().unwrap().to_string())
        .collect();
    let used = [0, 2, 3];
    let labels: Vec<String> = used.iter().map(|&i| bay.label(i).to_string()).collect();
    assert_eq!(parts, labels, "{w}");
    let warned = w["warnings"].to_string();
    assert!(
        warned.contains(&format!("{} is in pool \\\"other\\\"", bay.label(1))),
        "{warned}"
    );
    // The full disks were unmounted when the next one was needed, and the
    // wrong one is as it was, to the byte.
    for i in 0..3 {
        assert!(bay.mounts(i).is_empty(), "{} left mounted", bay.label(i));
    }
    bay.unplug(1);
    assert!(
        fs::read(&bay.disks[1].file).unwrap() == b_before,
        "the wrong disk was written to"
    );

    // One disk alone, without the host catalog: what is wholly on it.
    let mut whole_somewhere = BTreeMap::new();
    for i in used {
        let to = bay.path(&format!("alone{i}"));
        let out = Command::new(TAPIR)
            .args(["--json", "--device", &bay.device(i), "restore", "--to"])
            .arg(&to)
            .env("TAPIR_CATALOG", bay.path("no-catalog.db"))
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
        let spanning = r["spanning"].as_array().unwrap().len();
        assert_eq!(code(&out), if spanning > 0 { 1 } else { 0 }, "{r}");
        let got = restored(&to);
        assert!(!got.is_empty(), "nothing wholly on {}: {r}", bay.label(i));
        for (rel, data) in got {
            assert_eq!(tree.get(&rel), Some(&data), "{rel} from {}", bay.label(i));
            whole_somewhere.insert(rel, i);
        }
    }
    assert!(whole_somewhere.len() < tree.len(), "some files span disks");

    // All three in order, joining the parts: the whole tree.
    let whole = bay.path("whole");
    for (n, i) in used.into_iter().enumerate() {
        let (code, r) = restore_from(&bay, i, &whole, &["--partials"]);
        assert!(code == 0 || (code == 1 && n < 2), "{}: {r}", bay.label(i));
    }
    assert!(restored(&whole) == tree, "the joined tree differs");

    // The whole set from its last disk: each disk found by its label.
    let set = bay.path("set");
    let (code, r) = bay.json(
        bay.dir.path(),
        [
            "--device",
            &bay.device(3),
            "restore",
            "--whole-set",
            "--operator-timeout",
            "0",
            "--to",
            set.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert!(restored(&set) == tree, "the set's tree differs: {r}");
    bay.finish();
}

/// The rotation job of a pool of two disks, kept one day, exported to a
/// vault after each night.
fn disk_job(bay: &Bay, src: &Path) -> PathBuf {
    let pattern = bay.label(0).replace("-A", "-*");
    let text = format!(
        r#"
[drive.usb]
device = "disk:LABEL={pattern}"

[pool.daily]
retention = "1d"
block_size = "64K"

[job.nightly]
sources = ["{src}"]
pool = "daily"
verify = true
export = "vault:offsite"
"#,
        src = src.display()
    );
    let path = bay.path("tapir.toml");
    fs::write(&path, text).unwrap();
    path
}

fn night(bay: &Bay, config: &Path, day: &str, extra: &[&str]) -> std::process::Output {
    let now = format!("{day}T01:00:00Z");
    let mut args = vec![
        "--json",
        "--config",
        config.to_str().unwrap(),
        "run",
        "nightly",
        "--now",
        &now,
    ];
    args.extend_from_slice(extra);
    bay.tapir(args)
}

#[test]
fn a_rotation_job_asks_for_its_disk_by_label_and_place_and_never_writes_to_the_wrong_one() {
    use std::io::BufReader;
    use std::process::Stdio;
    need_disks!();
    let mut bay = Bay::new("rj", 2, 16);
    let src = bay.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"night data").unwrap();
    let config = disk_job(&bay, &src);
    let (a, b) = (bay.label(0).to_string(), bay.label(1).to_string());

    // Night 1: only disk A is plugged in. It is labelled, written,
    // verified, unmounted and recorded as gone to the vault.
    bay.plug(0);
    let out = night(&bay, &config, "2026-11-30", &["--insert-timeout", "0"]);
    assert_ok(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["cartridge"], a.as_str(), "{r}");
    assert_eq!(r["verified"][0]["ok"], true, "{r}");
    assert!(bay.mounts(0).is_empty(), "disk A left mounted");
    assert!(
        text(&out.stderr).contains("a loop device: nothing to power off"),
        "{}",
        text(&out.stderr)
    );
    bay.unplug(0);

    // Night 2: disk B.
    bay.plug(1);
    let out = night(&bay, &config, "2026-12-01", &["--insert-timeout", "0"]);
    assert_ok(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["cartridge"], b.as_str(), "{r}");
    bay.unplug(1);

    // Night 3 wants A again (its set expired) but B is plugged in: B is
    // named as not usable and not a byte of it changes.
    let b_before = fs::read(&bay.disks[1].file).unwrap();
    bay.plug(1);
    let out = night(&bay, &config, "2026-12-02", &["--insert-timeout", "0"]);
    assert_code(&out, 3);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{a} (last known at vault:offsite")),
        "{err}"
    );
    assert!(err.contains(&format!("left untouched: {b} (")), "{err}");

    // Waiting for A: the operator is told which disk and where it is. The
    // wrong disk plugged in meanwhile is named at once, and plugging A in
    // lets the job go on.
    bay.unplug(1);
    let now = "2026-12-02T01:00:00Z";
    let mut child = Command::new(TAPIR)
        .args([
            "--json",
            "--config",
            config.to_str().unwrap(),
            "run",
            "nightly",
        ])
        .args(["--now", now, "--insert-timeout", "600"])
        .env("TAPIR_CATALOG", bay.catalog())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let asked = read_until_operator(&mut stderr);
    assert!(
        asked.contains(&format!("plug in one of {a} (last known at vault:offsite")),
        "{asked}"
    );
    bay.plug(1);
    let wrong = read_until_operator(&mut stderr);
    assert!(
        wrong.contains(&format!(
            "{b} is not the one needed here: expected {a}; unplug {b}"
        )),
        "{wrong}"
    );
    bay.plug(0);
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(out.status.code(), Some(0), "{asked}{rest}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["cartridge"], a.as_str(), "{r}");
    assert_eq!(r["action"], "reuse", "{r}");
    assert!(bay.mounts(0).is_empty(), "disk A left mounted");
    assert!(bay.mounts(1).is_empty(), "disk B was mounted");
    bay.unplug(1);
    assert!(
        fs::read(&bay.disks[1].file).unwrap() == b_before,
        "the wrong disk was written to"
    );
    bay.finish();
}

/// Restore everything on disk `i` into `to`; the exit code and summary.
fn restore_all(bay: &Bay, i: usize, to: &Path) -> (i32, serde_json::Value) {
    restore_from(bay, i, to, &[])
}

/// `tapir restore` from disk `i` into `to`, with `extra` options.
fn restore_from(bay: &Bay, i: usize, to: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let device = bay.device(i);
    let mut args = vec!["--device", device.as_str(), "restore"];
    args.extend_from_slice(extra);
    args.extend(["--to", to.to_str().unwrap()]);
    bay.json(bay.dir.path(), args)
}

#[test]
fn a_disk_pulled_mid_write_fails_cleanly_keeps_what_was_complete_and_takes_the_next_session() {
    need_disks!();
    let mut bay = Bay::new("pl", 1, 32);
    bay.plug(0);
    assert_ok(&bay.tapir([
        "--device",
        &bay.device(0),
        "label",
        "--label",
        bay.label(0),
        "--block-size",
        "64K",
        "--no-rescue-kit",
    ]));
    let src = bay.path("src");
    let first = make_tree(&src.join("first"), 6);

    // The session is written by this process, so that the disk can be
    // pulled at a known block: the 80th of the session, inside the third
    // big file. A lazy unmount is what pulling a mounted disk looks like
    // to the writer's path: the image is no longer where it was.
    let sel = tapir::device::disk::DiskSelector::Label(bay.label(0).to_string());
    let drive = tapir::device::disk::DiskDrive::open(
        &sel,
        &Default::default(),
        std::time::Duration::ZERO,
        &mut |_| {},
    )
    .unwrap();
    let mount = drive.mount_point().to_path_buf();
    let drive = common::before_block::BeforeBlock::new(Box::new(drive), 80, move || {
        sh(Command::new("umount").arg("-l").arg(&mount));
    });
    struct NoMore;
    impl tapir::pipeline::span::CartridgeSupply for NoMore {
        fn next(
            &mut self,
            _current: Box<dyn tapir::device::TapeDrive>,
        ) -> tapir::pipeline::Result<Option<tapir::pipeline::span::Candidate>> {
            Ok(None)
        }
        fn whereabouts(&self, _barcode: &str) -> Option<String> {
            None
        }
    }
    let opts = tapir::pipeline::writer::WriteOptions {
        sources: vec![src.join("first")],
        set_name: Some("pulled".into()),
        buffer_bytes: 4 << 20,
        ..Default::default()
    };
    let progress = tapir::pipeline::writer::WriteProgress::default();
    let err = tapir::pipeline::writer::write_session_spanning(
        Box::new(drive),
        &mut NoMore,
        &opts,
        &progress,
    )
    .expect_err("the disk was pulled");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            tapir::pipeline::Error::Device(tapir::device::DeviceError::Removed { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains(bay.label(0)) && msg.contains("removed or unmounted"),
        "{msg}"
    );
    assert!(msg.contains("plug the disk in again"), "{msg}");
    assert!(bay.mounts(0).is_empty(), "the lazy unmount completed");

    // Plugged in again: what the session completed restores byte-exact.
    let to = bay.path("after-pull");
    let (_, r) = restore_all(&bay, 0, &to);
    let got = restored(&to);
    assert!(got.len() >= 2, "too little survived: {r}");
    assert!(
        got.len() < first.len(),
        "the whole session cannot be there: {r}"
    );
    for (rel, data) in &got {
        let rel = rel
            .strip_prefix(&format!(
                "{}/",
                src.join("first")
                    .display()
                    .to_string()
                    .trim_start_matches('/')
            ))
            .unwrap_or(rel);
        assert_eq!(first.get(rel), Some(data), "{rel}");
    }

    // Appending a new session works, and both restore.
    let second = make_tree(&src.join("second"), 2);
    let (code, w) = bay.json(
        &src,
        [
            "--device",
            &bay.device(0),
            "write",
            "--set",
            "pulled",
            "second",
        ],
    );
    assert_eq!(code, 0, "{w}");
    let to = bay.path("after-append");
    let (_, r) = restore_all(&bay, 0, &to);
    let all = restored(&to);
    for (rel, data) in &second {
        assert_eq!(all.get(&format!("second/{rel}")), Some(data), "{rel}: {r}");
    }
    assert!(all.len() >= got.len() + second.len(), "{r}");
    bay.finish();
}

#[test]
fn a_job_spans_two_disks_of_its_pool_verifies_both_and_unmounts_both() {
    need_disks!();
    let mut bay = Bay::new("js", 2, 16);
    bay.plug(0);
    bay.plug(1);
    let src = bay.path("src");
    let tree = make_tree(&src, 7);
    let config = disk_job(&bay, &src);
    let out = night(&bay, &config, "2026-11-30", &["--insert-timeout", "0"]);
    assert_ok(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts: Vec<&str> = r["write"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cartridge"].as_str().unwrap())
        .collect();
    assert_eq!(parts, [bay.label(0), bay.label(1)], "{r}");
    let verified = r["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 2, "{r}");
    assert!(verified.iter().all(|v| v["ok"] == true), "{r}");
    assert!(bay.mounts(0).is_empty() && bay.mounts(1).is_empty());
    // Both in order give the whole tree back.
    let whole = bay.path("whole");
    for i in 0..2 {
        let (code, r) = restore_from(&bay, i, &whole, &["--partials"]);
        assert!(code == 0 || (code == 1 && i == 0), "{r}");
    }
    let got: BTreeMap<String, Vec<u8>> = restored(&whole)
        .into_iter()
        .map(|(rel, data)| {
            let rel = rel
                .strip_prefix(src.to_str().unwrap().trim_start_matches('/'))
                .unwrap_or(&rel)
                .trim_start_matches('/')
                .to_string();
            (rel, data)
        })
        .collect();
    assert!(got == tree, "the joined tree differs");
    bay.finish();
}
