//! Helpers shared by the integration tests: a scratch virtual library and a
//! way to run the real `tapir` binary against it.
#![allow(dead_code)]

pub mod before_block;
pub mod snapshot;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");

/// A lab's tapir looks for no rescue binary of its own (a `tapir-static`
/// that `scripts/demo` left beside the test build would otherwise change
/// every cartridge's layout); a test gives one with `--rescue-binary`.
pub const NO_FOUND_BINARY: &str = "none";

/// A temporary directory with a virtual library in `lib/`.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A library of `slots` cartridges of `capacity` bytes each.
    pub fn new(slots: usize, capacity: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("tapir-test-")
            .tempdir()
            .unwrap();
        let lab = Lab { dir };
        let out = lab.run_plain(
            ["vtape", "create"],
            [lab.lib().as_os_str()],
            &["--slots", &slots.to_string(), "--capacity", capacity],
        );
        assert_ok(&out);
        lab
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The lab's own host catalog (every tapir run here uses it).
    pub fn catalog(&self) -> PathBuf {
        self.dir.path().join("catalog.db")
    }

    pub fn lib(&self) -> PathBuf {
        self.dir.path().join("lib")
    }

    pub fn device(&self) -> String {
        format!("vtape:{}", self.lib().display())
    }

    pub fn image(&self, barcode: &str) -> PathBuf {
        self.lib()
            .join("cartridges")
            .join(format!("{barcode}.vtape"))
    }

    fn run_plain<'a>(
        &self,
        cmd: impl IntoIterator<Item = &'a str>,
        paths: impl IntoIterator<Item = &'a OsStr>,
        rest: &[&str],
    ) -> Output {
        let mut c = Command::new(TAPIR);
        c.args(cmd)
            .args(paths)
            .args(rest)
            .env_remove("TAPE")
            .env("TAPIR_RESCUE_BINARY", NO_FOUND_BINARY)
            .env("TAPIR_CATALOG", self.catalog());
        c.output().unwrap()
    }

    /// Run tapir with `--device` set to this library.
    pub fn tapir<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.tapir_in(self.dir.path(), args)
    }

    /// Run tapir in `cwd` (archive paths are the sources as given).
    pub fn tapir_in<I, S>(&self, cwd: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(TAPIR)
            .current_dir(cwd)
            .arg("--device")
            .arg(self.device())
            .args(args)
            .env_remove("TAPE")
            .env("TAPIR_RESCUE_BINARY", NO_FOUND_BINARY)
            .env("TAPIR_CATALOG", self.catalog())
            .output()
            .unwrap()
    }

    /// Label the loaded cartridge.
    pub fn label(&self, name: &str) {
        assert_ok(&self.tapir(["label", "--label", name]));
    }

    /// `tapir --json ARGS`, parsed.
    pub fn json<I, S>(&self, args: I) -> (i32, serde_json::Value)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.json_in(self.dir.path(), args)
    }

    /// `tapir --json ARGS` run in `cwd`, parsed.
    pub fn json_in<I, S>(&self, cwd: &Path, args: I) -> (i32, serde_json::Value)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        json_of(|all| self.tapir_in(cwd, all), args)
    }
}

/// Run `tapir --json ARGS` through `run` and parse what it printed.
pub fn json_of<I, S>(
    run: impl FnOnce(Vec<std::ffi::OsString>) -> Output,
    args: I,
) -> (i32, serde_json::Value)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = vec!["--json".into()];
    all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    let out = run(all);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (code(&out), v)
}

/// Deterministic bytes (xorshift): incompressible, and a failure is
/// reproducible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("tapir exited by signal")
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert_eq!(
        code(out),
        0,
        "tapir failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[track_caller]
pub fn assert_code(out: &Output, want: i32) {
    assert_eq!(
        code(out),
        want,
        "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Flip one bit of the byte at `offset` of a file.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).unwrap();
}

/// Offsets of every occurrence of `needle` in the file.
pub fn find_all(path: &Path, needle: &[u8]) -> Vec<u64> {
    let data = std::fs::read(path).unwrap();
    data.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i as u64)
        .collect()
}

/// Read a child's standard error up to the first line addressed to the
/// operator (`tapir: OPERATOR:`); returns everything read. Fails if the
/// child ends without asking.
pub fn read_until_operator(stderr: &mut impl std::io::BufRead) -> String {
    let mut asked = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tapir ended without asking: {asked}"
        );
        asked.push_str(&line);
        if line.contains("OPERATOR:") {
            return asked;
        }
    }
}

/// Regular files under `dir`, relative path → content.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}
