//! The rescue kit's tapir binary (FORMAT.md §2.2): which executable goes
//! into tape file 1, and whether an executable is statically linked.
//!
//! The binary is the one given (`--rescue-binary`, `$TAPIR_RESCUE_BINARY`),
//! else the running tapir when it is itself static, else a `tapir-static`
//! beside the running executable (looked for when a label is first
//! written), else none (the label then says there is none). The value
//! `none` looks for nothing: a rewritten label keeps the binary already on
//! its cartridge, and a new one gets FORMAT.md alone.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::format::label::{KitBinary, MAX_BINARY_VERSION, MAX_RESCUE_BINARY};

use super::{Error, Result};

/// Name of the static build looked for beside the running executable.
pub const STATIC_BESIDE: &str = "tapir-static";

/// Where the binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOrigin {
    /// Given by the user: refused rather than dropped when it cannot be written.
    Given,
    /// The running tapir, which is statically linked.
    RunningExecutable,
    /// `tapir-static` beside the running executable.
    Beside,
    /// Read back from the rescue kit of the cartridge being relabelled.
    Cartridge,
}

/// An executable to write into the rescue kit, read into memory once so
/// that what is hashed is what is written.
#[derive(Clone)]
pub struct RescueBinary {
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
    /// The first line it prints for `--version`.
    pub version: String,
    pub blake3: [u8; 32],
    pub origin: BinaryOrigin,
}

impl fmt::Debug for RescueBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RescueBinary")
            .field("path", &self.path)
            .field("size", &self.bytes.len())
            .field("version", &self.version)
            .field("origin", &self.origin)
            .finish()
    }
}

impl RescueBinary {
    pub fn new(path: PathBuf, bytes: Vec<u8>, version: String, origin: BinaryOrigin) -> Self {
        RescueBinary {
            path,
            blake3: *blake3::hash(&bytes).as_bytes(),
            bytes: bytes.into(),
            version,
            origin,
        }
    }

    /// How the label describes it, starting at `first_block` of tape file 1.
    pub fn describe(&self, first_block: u32) -> KitBinary {
        KitBinary {
            version: self.version.clone(),
            blake3: self.blake3,
            size: self.bytes.len() as u64,
            first_block,
        }
    }
}

/// What a command wants in the rescue kit of the cartridges it labels.
#[derive(Debug, Clone, Default)]
pub struct KitChoice {
    /// Leave the whole kit out (tiny cartridges): one block of text says so.
    pub leave_out: bool,
    /// The binary given (`--rescue-binary`).
    pub binary: Option<RescueBinary>,
    /// `--no-rescue-kit` or `--rescue-binary` was given. Otherwise a label
    /// that is rewritten keeps its own choice: a kit left out stays out,
    /// and the binary on the cartridge is kept when none was found here.
    pub explicit: bool,
    /// Look for a static tapir (the running one, or `tapir-static` beside
    /// it) when a label is first written, not before: most writes write
    /// no label, and reading and hashing the binary costs them time and
    /// memory.
    pub find: bool,
    found: std::sync::OnceLock<Option<RescueBinary>>,
}

impl KitChoice {
    /// A choice of `binary` (or none), `explicit` or not, that looks for
    /// nothing more.
    pub fn of(binary: Option<RescueBinary>, explicit: bool) -> KitChoice {
        KitChoice {
            binary,
            explicit,
            ..KitChoice::default()
        }
    }

    /// The binary for the kit: the one given, else (when asked to look)
    /// the one found, looked for once.
    pub fn binary(&self) -> Option<&RescueBinary> {
        self.binary.as_ref().or_else(|| {
            self.find
                .then(|| self.found.get_or_init(found_binary).as_ref())
                .flatten()
        })
    }
}

/// How an ELF executable is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// No program interpreter (`PT_INTERP`): static, or static-pie.
    Static,
    /// Needs a dynamic loader, which a rescue system may not have.
    Dynamic,
    /// Not an ELF executable this parser understands.
    NotElf,
}

const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// How the ELF executable whose first bytes are `head` is linked: it is
/// static when no program header is `PT_INTERP`. `head` must reach past
/// the program header table (it follows the ELF header in practice).
pub fn elf_linkage(head: &[u8]) -> Linkage {
    if head.len() < 52 || head[..4] != *b"\x7fELF" {
        return Linkage::NotElf;
    }
    let le = match head[5] {
        1 => true,
        2 => false,
        _ => return Linkage::NotElf,
    };
    let u16_at = |o: usize| {
        let b = [head[o], head[o + 1]];
        if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |o: usize| {
        let b = [head[o], head[o + 1], head[o + 2], head[o + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    // e_phoff, e_phentsize and e_phnum sit at different offsets in the
    // 32-bit and 64-bit headers.
    let (phoff, phentsize, phnum) = match head[4] {
        1 => (u64::from(u32_at(0x1C)), u16_at(0x2A), u16_at(0x2C)),
        2 if head.len() >= 64 => {
            let lo = u64::from(u32_at(0x20));
            let hi = u64::from(u32_at(0x24));
            let phoff = if le { lo | hi << 32 } else { hi | lo << 32 };
            (phoff, u16_at(0x36), u16_at(0x38))
        }
        _ => return Linkage::NotElf,
    };
    if !matches!(u16_at(0x10), ET_EXEC | ET_DYN) || phentsize < 4 {
        return Linkage::NotElf;
    }
    let table_end = phoff.saturating_add(u64::from(phentsize) * u64::from(phnum));
    if table_end > head.len() as u64 {
        return Linkage::NotElf;
    }
    let interp = (0..usize::from(phnum))
        .map(|i| phoff as usize + i * usize::from(phentsize))
        .any(|o| u32_at(o) == PT_INTERP);
    if interp {
        Linkage::Dynamic
    } else {
        Linkage::Static
    }
}

/// Bytes read to find the program headers of an executable.
const ELF_HEAD: u64 = 64 * 1024;

/// How the executable at `path` is linked (reading only its start).
pub fn file_linkage(path: &Path) -> Result<Linkage> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(ELF_HEAD).read_to_end(&mut head))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(elf_linkage(&head))
}

/// `--rescue-binary none`: look for no binary.
pub const LOOK_FOR_NONE: &str = "none";

/// Decide the rescue kit for a command: `leave_out` (`--no-rescue-kit`),
/// else the binary `given`, else one found automatically.
pub fn choose(given: Option<&Path>, leave_out: bool) -> Result<KitChoice> {
    if leave_out {
        return Ok(KitChoice {
            leave_out: true,
            ..KitChoice::of(None, true)
        });
    }
    if let Some(path) = given {
        if path == Path::new(LOOK_FOR_NONE) {
            return Ok(KitChoice::of(None, false));
        }
        return Ok(KitChoice::of(Some(given_binary(path)?), true));
    }
    Ok(KitChoice {
        find: true,
        ..KitChoice::of(None, false)
    })
}

/// The binary the user gave: it must be readable, not empty, within the
/// bound, and run here to say its version.
fn given_binary(path: &Path) -> Result<RescueBinary> {
    let bytes = read_bounded(path)?;
    if elf_linkage(&bytes) != Linkage::Static {
        tracing::warn!(
            "{} is not a statically linked executable; it may not run on a rescue system",
            path.display()
        );
    }
    let version = version_of(path).map_err(|why| {
        Error::Usage(format!(
            "rescue binary {}: {why}; give a tapir that runs on this machine (see scripts/build-static)",
            path.display()
        ))
    })?;
    Ok(RescueBinary::new(
        path.to_path_buf(),
        bytes,
        version,
        BinaryOrigin::Given,
    ))
}

/// The running tapir when static, else `tapir-static` beside it; problems
/// with a candidate are warnings, and the kit then has no binary.
fn found_binary() -> Option<RescueBinary> {
    let exe = std::env::current_exe().ok()?;
    // /proc/self/exe is the running image even when the file was replaced.
    let running = Path::new("/proc/self/exe");
    if matches!(file_linkage(running), Ok(Linkage::Static)) {
        match read_bounded(running) {
            Ok(bytes) => {
                return Some(RescueBinary::new(
                    exe,
                    bytes,
                    format!("tapir {}", env!("CARGO_PKG_VERSION")),
                    BinaryOrigin::RunningExecutable,
                ))
            }
            Err(e) => tracing::warn!("the running tapir is static but cannot be read: {e}"),
        }
    }
    let beside = exe.with_file_name(STATIC_BESIDE);
    if !beside.exists() {
        return None;
    }
    let checked = match file_linkage(&beside) {
        Ok(Linkage::Static) => version_of(&beside).and_then(|version| {
            read_bounded(&beside)
                .map(|bytes| (bytes, version))
                .map_err(|e| e.to_string())
        }),
        Ok(_) => Err("it is not a statically linked executable".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok((bytes, version)) => Some(RescueBinary::new(
            beside,
            bytes,
            version,
            BinaryOrigin::Beside,
        )),
        Err(why) => {
            tracing::warn!("not putting {} in the rescue kit: {why}", beside.display());
            None
        }
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let context = || format!("reading rescue binary {}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RESCUE_BINARY + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io(context(), e))?;
    if bytes.is_empty() || bytes.len() as u64 > MAX_RESCUE_BINARY {
        return Err(Error::Usage(format!(
            "rescue binary {}: {} bytes; it must be 1 byte to {MAX_RESCUE_BINARY} bytes",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The first line `path --version` prints, or why there is none.
fn version_of(path: &Path) -> std::result::Result<String, String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if !out.status.success() {
        return Err(format!("`--version` failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err("`--version` printed nothing".into());
    }
    let mut end = line.len().min(MAX_BINARY_VERSION);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Ok(line[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header with program headers of these types.
    fn elf64(e_type: u16, types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x10..0x12].copy_from_slice(&e_type.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3A].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&ph);
        }
        b
    }

    /// A 32-bit big-endian one.
    fn elf32_be(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 52];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[5] = 2;
        b[0x10..0x12].copy_from_slice(&ET_EXEC.to_be_bytes());
        b[0x1C..0x20].copy_from_slice(&52u32.to_be_bytes());
        b[0x2A..0x2C].copy_from_slice(&32u16.to_be_bytes());
        b[0x2C..0x2E].copy_from_slice(&(types.len() as u16).to_be_bytes());
        for t in types {
            let mut ph = vec![0u8; 32];
            ph[..4].copy_from_slice(&t.to_be_bytes());
            b.extend_from_slice(&ph);
        }
        b
    }

    #[test]
    fn an_interpreter_header_means_dynamic() {
        // PT_PHDR, PT_INTERP, PT_LOAD: a dynamically linked executable.
        assert_eq!(elf_linkage(&elf64(ET_DYN, &[6, 3, 1])), Linkage::Dynamic);
        // static-pie: PT_LOAD and PT_DYNAMIC but no interpreter.
        assert_eq!(elf_linkage(&elf64(ET_DYN, &[1, 2])), Linkage::Static);
        assert_eq!(elf_linkage(&elf64(ET_EXEC, &[1])), Linkage::Static);
        assert_eq!(elf_linkage(&elf32_be(&[1, 3])), Linkage::Dynamic);
        assert_eq!(elf_linkage(&elf32_be(&[1])), Linkage::Static);
    }

    #[test]
    fn what_is_not_an_executable_elf_is_not_elf() {
        assert_eq!(
            elf_linkage(b"#!/bin/sh\necho tapir 0.1.0\n"),
            Linkage::NotElf
        );
        // A relocatable object (ET_REL) is no executable.
        assert_eq!(elf_linkage(&elf64(1, &[1])), Linkage::NotElf);
        // Program headers past the bytes given.
        let mut cut = elf64(ET_EXEC, &[1, 3]);
        cut.truncate(100);
        assert_eq!(elf_linkage(&cut), Linkage::NotElf);
    }

    #[test]
    fn the_test_binary_itself_is_classified_like_ldd_would() {
        // Cargo test binaries are dynamically linked unless built with
        // crt-static (as scripts/vm/run-tests does).
        let me = file_linkage(Path::new("/proc/self/exe")).unwrap();
        let want = if cfg!(target_feature = "crt-static") {
            Linkage::Static
        } else {
            Linkage::Dynamic
        };
        assert_eq!(me, want);
    }

    #[test]
    fn a_given_binary_is_hashed_and_asked_its_version() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("tapir-rescue");
        std::fs::write(&script, "#!/bin/sh\necho 'tapir 9.8.7'\necho more\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kit = choose(Some(&script), false).unwrap();
        let b = kit.binary.unwrap();
        assert!(kit.explicit && !kit.leave_out);
        assert_eq!(b.version, "tapir 9.8.7");
        assert_eq!(
            b.blake3,
            *blake3::hash(&std::fs::read(&script).unwrap()).as_bytes()
        );
        assert_eq!(b.origin, BinaryOrigin::Given);

        let failing = dir.path().join("broken");
        std::fs::write(&failing, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            choose(Some(&failing), false),
            Err(Error::Usage(_))
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(choose(Some(&empty), false), Err(Error::Usage(_))));
    }
}
