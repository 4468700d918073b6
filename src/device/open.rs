//! Turning the user's `--device` string into a drive.
//!
//! Accepted forms:
//! - `vtape:DIR`: the drive of the virtual tape library in directory DIR.
//! - `/dev/nstN` (optionally with a mode suffix `l`, `m` or `a`), or any path
//!   whose symbolic links resolve to such a name, e.g.
//!   `/dev/tape/by-id/scsi-...-nst`: a non-rewinding Linux SCSI tape.
//! - `disk:LABEL=NAME`, `disk:LABEL=PREFIX*`, `disk:UUID=UUID` (or
//!   `disk:NAME`): a removable disk found by its filesystem label or UUID,
//!   holding one cartridge image (see [`super::disk`]).
//!
//! A path resolving to a rewinding device (`/dev/stN`) is refused: closing it
//! rewinds the tape, and the next write would then start at the beginning of
//! the tape and destroy everything on it.

use std::path::{Component, Path, PathBuf};

use super::disk::{DiskDrive, DiskSelector};
use super::library::VirtualLibrary;
use super::{DeviceError, DeviceResult, TapeDrive};

/// Symbolic links followed before giving up (as the kernel's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

const ACCEPTED: &str = "accepted devices: vtape:DIR (a virtual tape library), \
/dev/nstN (a non-rewinding SCSI tape), or a link to one such as /dev/tape/by-id/...-nst, \
or disk:LABEL=NAME (a removable disk, by its filesystem label or disk:UUID=UUID)";

/// A parsed device specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `vtape:DIR`: the drive of the virtual library in DIR.
    VirtualLibrary(PathBuf),
    /// A non-rewinding Linux st device, as the user named it (a by-id link is
    /// kept as given: it survives device renumbering).
    St(PathBuf),
    /// `disk:LABEL=NAME` or `disk:UUID=UUID`: a removable disk.
    Disk(DiskSelector),
}

/// Kinds of st device node names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StName {
    NonRewinding,
    Rewinding,
}

/// `nst0`, `nst12l` → non-rewinding; `st0`, `st3a` → rewinding; else none.
fn classify_st_name(name: &str) -> Option<StName> {
    let (kind, rest) = if let Some(rest) = name.strip_prefix("nst") {
        (StName::NonRewinding, rest)
    } else if let Some(rest) = name.strip_prefix("st") {
        (StName::Rewinding, rest)
    } else {
        return None;
    };
    let digits = rest.strip_suffix(['l', 'm', 'a']).unwrap_or(rest);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(kind)
}

/// Remove `.` and resolve `..` lexically (for names and messages only).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Follow symbolic links at the end of `path` (the target need not exist).
fn resolve_links(path: &Path, spec: &str) -> DeviceResult<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&current).map_err(|e| {
                    DeviceError::io(spec, format!("reading link {}", current.display()), e)
                })?;
                current = if target.is_absolute() {
                    target
                } else {
                    current.parent().unwrap_or(Path::new("/")).join(target)
                };
            }
            _ => return Ok(normalize(&current)),
        }
    }
    Err(DeviceError::InvalidRequest {
        device: spec.to_string(),
        detail: format!("too many levels of symbolic links (more than {MAX_LINKS})"),
    })
}

impl DeviceSpec {
    /// Parse a device specification; see the module docs for the forms.
    pub fn parse(spec: &str) -> DeviceResult<DeviceSpec> {
        let invalid = |detail: String| DeviceError::InvalidRequest {
            device: spec.to_string(),
            detail,
        };
        if let Some(dir) = spec.strip_prefix("vtape:") {
            if dir.is_empty() {
                return Err(invalid(format!(
                    "vtape: needs the library directory, as in vtape:/srv/tapes; {ACCEPTED}"
                )));
            }
            return Ok(DeviceSpec::VirtualLibrary(PathBuf::from(dir)));
        }
        if let Some(sel) = spec.strip_prefix("disk:") {
            return DiskSelector::parse(sel)
                .map(DeviceSpec::Disk)
                .ok_or_else(|| {
                    invalid(format!(
                    "disk: needs the disk's filesystem label or UUID, as in disk:LABEL=OFFSITE-1, \
                     disk:LABEL=OFFSITE-* or disk:UUID=...; {ACCEPTED}"
                ))
                });
        }
        if spec.is_empty() {
            return Err(invalid(format!("no device given; {ACCEPTED}")));
        }
        if !spec.contains('/') {
            let hint = match classify_st_name(spec) {
                Some(StName::NonRewinding) => format!(" (did you mean /dev/{spec}?)"),
                Some(StName::Rewinding) => format!(" (did you mean /dev/n{spec}?)"),
                None => String::new(),
            };
            return Err(invalid(format!("unknown device{hint}; {ACCEPTED}")));
        }
        let given = PathBuf::from(spec);
        let resolved = resolve_links(&given, spec)?;
        let name = resolved
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match classify_st_name(name) {
            Some(StName::NonRewinding) => Ok(DeviceSpec::St(given)),
            Some(StName::Rewinding) => {
                let suggestion = resolved.with_file_name(format!("n{name}"));
                let via = if resolved == normalize(&given) {
                    String::new()
                } else {
                    format!(" (it resolves to {})", resolved.display())
                };
                Err(invalid(format!(
                    "refusing the rewinding tape device{via}: closing it rewinds the tape, and the next \
                     write would then start at the beginning and destroy what is on the tape; use the \
                     non-rewinding device {} instead",
                    suggestion.display()
                )))
            }
            None => {
                let via = if resolved == normalize(&given) {
                    String::new()
                } else {
                    format!(" (it resolves to {})", resolved.display())
                };
                let disk = if name.starts_with("sd") || name.starts_with("loop") {
                    " (a removable disk is named by its filesystem label, which survives \
                     replugging: disk:LABEL=NAME)"
                } else {
                    ""
                };
                Err(invalid(format!(
                    "not a tape device this tapir can use{via}{disk}; {ACCEPTED}"
                )))
            }
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceSpec::parse(s)
    }
}

/// Open the drive named by `spec` (see [`DeviceSpec::parse`]).
pub fn open_drive(spec: &str) -> Result<Box<dyn TapeDrive>, DeviceError> {
    open_drive_waiting(spec, std::time::Duration::ZERO, &mut |_| {})
}

/// Open the drive named by `spec`, waiting up to `timeout` for a drive that
/// is becoming ready (loading, or an LTO-9 cartridge's first-load
/// calibration); `on_wait` is told what it is waiting for.
pub fn open_drive_waiting(
    spec: &str,
    timeout: std::time::Duration,
    on_wait: &mut dyn FnMut(&str),
) -> Result<Box<dyn TapeDrive>, DeviceError> {
    match DeviceSpec::parse(spec)? {
        DeviceSpec::VirtualLibrary(dir) => Ok(Box::new(VirtualLibrary::open(dir)?.open_drive()?)),
        DeviceSpec::St(path) if timeout.is_zero() => {
            Ok(Box::new(super::st::StDrive::open(&path, spec)?))
        }
        DeviceSpec::St(path) => Ok(Box::new(super::st::StDrive::open_when_ready(
            &path, spec, timeout, on_wait,
        )?)),
        DeviceSpec::Disk(sel) => Ok(Box::new(DiskDrive::open(
            &sel,
            &Default::default(),
            timeout,
            on_wait,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn detail(e: DeviceError) -> String {
        match e {
            DeviceError::InvalidRequest { detail, .. } => detail,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn vtape_spec() {
        assert_eq!(
            DeviceSpec::parse("vtape:/srv/tapes").unwrap(),
            DeviceSpec::VirtualLibrary(PathBuf::from("/srv/tapes"))
        );
        assert_eq!(
            "vtape:rel/dir".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::VirtualLibrary(PathBuf::from("rel/dir"))
        );
        assert!(detail(DeviceSpec::parse("vtape:").unwrap_err()).contains("library directory"));
    }

    #[test]
    fn nst_paths() {
        for p in [
            "/dev/nst0",
            "/dev/nst12",
            "/dev/nst0l",
            "/dev/nst1a",
            "/dev/nst3m",
        ] {
            assert_eq!(
                DeviceSpec::parse(p).unwrap(),
                DeviceSpec::St(PathBuf::from(p)),
                "{p}"
            );
        }
    }

    #[test]
    fn rewinding_device_is_refused_with_explanation() {
        for (p, suggestion) in [("/dev/st0", "/dev/nst0"), ("/dev/st2l", "/dev/nst2l")] {
            let e = DeviceSpec::parse(p).unwrap_err();
            assert!(e.to_string().starts_with(p), "names the device: {e}");
            let d = detail(e);
            assert!(d.contains("rewind"), "{d}");
            assert!(d.contains("destroy"), "{d}");
            assert!(d.contains(suggestion), "{d}");
        }
    }

    #[test]
    fn symlinks_are_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let by_id = tmp.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        // Absolute target that does not exist here.
        let good = by_id.join("scsi-HP_Ultrium-nst");
        symlink("/dev/nst7", &good).unwrap();
        assert_eq!(
            DeviceSpec::parse(good.to_str().unwrap()).unwrap(),
            DeviceSpec::St(good.clone())
        );
        // Relative target, through a chain of two links.
        let chain = by_id.join("chain");
        symlink("scsi-HP_Ultrium-nst", &chain).unwrap();
        assert!(matches!(
            DeviceSpec::parse(chain.to_str().unwrap()).unwrap(),
            DeviceSpec::St(_)
        ));
        let rel = by_id.join("rel-nst");
        symlink("../../dev/nst3", &rel).unwrap();
        assert!(matches!(
            DeviceSpec::parse(rel.to_str().unwrap()).unwrap(),
            DeviceSpec::St(_)
        ));
        // A link to a rewinding device is refused, naming where it resolves.
        let bad = by_id.join("scsi-HP_Ultrium");
        symlink("/dev/st7", &bad).unwrap();
        let d = detail(DeviceSpec::parse(bad.to_str().unwrap()).unwrap_err());
        assert!(d.contains("resolves to /dev/st7"), "{d}");
        assert!(d.contains("/dev/nst7"), "{d}");
        // A link loop is an error, not a hang.
        let a = by_id.join("a");
        let b = by_id.join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        assert!(DeviceSpec::parse(a.to_str().unwrap()).is_err());
    }

    #[test]
    fn disk_specs() {
        assert_eq!(
            DeviceSpec::parse("disk:LABEL=OFF-1").unwrap(),
            DeviceSpec::Disk(DiskSelector::Label("OFF-1".into()))
        );
        assert_eq!(
            DeviceSpec::parse("disk:UUID=1234").unwrap(),
            DeviceSpec::Disk(DiskSelector::Uuid("1234".into()))
        );
        assert!(detail(DeviceSpec::parse("disk:").unwrap_err()).contains("disk:LABEL="));
        assert!(detail(DeviceSpec::parse("/dev/sdb1").unwrap_err()).contains("disk:LABEL=NAME"));
    }

    #[test]
    fn other_specs_are_refused_with_accepted_forms() {
        for spec in [
            "/dev/sda",
            "/dev/sg3",
            "/tmp/file",
            "",
            "tape0",
            "file:/x",
            "/dev/nst",
            "/dev/nstx",
        ] {
            let d = detail(DeviceSpec::parse(spec).unwrap_err());
            assert!(
                d.contains("vtape:DIR") && d.contains("/dev/nstN"),
                "{spec}: {d}"
            );
        }
        assert!(detail(DeviceSpec::parse("nst0").unwrap_err()).contains("did you mean /dev/nst0"));
        assert!(detail(DeviceSpec::parse("st0").unwrap_err()).contains("did you mean /dev/nst0"));
    }

    #[test]
    fn open_drive_dispatches() {
        let tmp = tempfile::tempdir().unwrap();
        VirtualLibrary::create(tmp.path(), 2, 1 << 20).unwrap();
        let spec = format!("vtape:{}", tmp.path().display());
        let mut drive = open_drive(&spec).unwrap();
        assert_eq!(drive.name(), spec);
        assert_eq!(drive.status().unwrap().barcode.as_deref(), Some("TAP001L9"));
        drop(drive);
        // A non-rewinding node is opened as an st drive (none exists here).
        let missing_nst = tmp.path().join("nst9");
        assert!(matches!(
            open_drive(missing_nst.to_str().unwrap()),
            Err(DeviceError::Io { .. })
        ));
        assert!(matches!(
            open_drive("/dev/st0"),
            Err(DeviceError::InvalidRequest { .. })
        ));
        let missing = tmp.path().join("nope");
        assert!(open_drive(&format!("vtape:{}", missing.display())).is_err());
    }
}
