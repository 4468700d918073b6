//! The cartridge as a whole: its label, its rescue kit, and the sessions on it.

use crate::device::{DeviceError, ReadOutcome, TapeDrive};
use crate::format::block::BlockHeader;
use crate::format::label::{LabelBlock, RescueKit, VolumeLabel};
use crate::format::meta::{
    from_cbor, CatalogEnd, CatalogEntry, CatalogHeader, SessionStart, Timestamp,
};
use crate::format::record::RecordType;
use crate::format::stream::StreamDeframer;
use crate::format::{BlockKind, FORMAT_VERSION, MAX_BLOCK_SIZE};

use super::reader::{LostBlocks, StreamEvent, StreamExpect, StreamReader};
use super::{Error, Result};

/// The text of the format specification, written as the rescue kit.
pub const FORMAT_SPEC: &str = include_str!("../../docs/FORMAT.md");
/// First tape file that holds a session.
pub const FIRST_SESSION_FILE: u32 = 2;

/// What is at the beginning of the loaded cartridge.
#[derive(Debug)]
pub enum LabelState {
    /// Nothing written: end of data at the beginning of tape.
    Blank,
    Tapir(Box<VolumeLabel>),
    /// Something that is not a tapir label, with a short description.
    Foreign(String),
}

/// Rewind and read the label block.
pub fn read_label(drive: &mut dyn TapeDrive) -> Result<LabelState> {
    drive.rewind()?;
    let mut buf = vec![0u8; MAX_BLOCK_SIZE as usize];
    match drive.read_block(&mut buf) {
        Ok(ReadOutcome::EndOfData) => Ok(LabelState::Blank),
        Ok(ReadOutcome::Filemark) => Ok(LabelState::Foreign(
            "the tape starts with a filemark (an empty first file)".into(),
        )),
        Ok(ReadOutcome::Block(n)) => {
            let block = &buf[..n];
            if LabelBlock::looks_like_label(block) {
                LabelBlock::decode(block)
                    .map(|l| LabelState::Tapir(Box::new(l)))
                    .map_err(|source| Error::Format {
                        device: drive.name().to_string(),
                        tape_file: 0,
                        block: 0,
                        source,
                    })
            } else {
                Ok(LabelState::Foreign(describe_foreign(block)))
            }
        }
        Err(DeviceError::BlockTooLarge { needed, .. }) => Ok(LabelState::Foreign(format!(
            "its first block is {needed} bytes, larger than any tapir block"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn describe_foreign(block: &[u8]) -> String {
    let printable: String = block
        .iter()
        .take(48)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    if block.len() >= 262 && &block[257..262] == b"ustar" {
        return format!("a tar archive ({} byte first block)", block.len());
    }
    format!(
        "unknown data: first block of {} bytes starting \"{printable}\"",
        block.len()
    )
}

/// Write tape files 0 (label) and 1 (rescue kit) from the beginning of tape.
/// Everything after them on the cartridge is gone afterwards. `durable`
/// makes the closing filemark synchronous; a session that follows at once
/// leaves it immediate and makes everything durable at its own end.
/// Where the drive has cartridge memory, tapir's identity for the
/// cartridge is recorded there too (see [`record_identity`]).
pub fn write_label(
    drive: &mut dyn TapeDrive,
    label: &VolumeLabel,
    durable: bool,
) -> Result<MamRecord> {
    drive.rewind()?;
    drive.write_block(&LabelBlock::encode(label))?;
    drive.write_filemarks(1, true)?;
    let bs = label.block_size as usize;
    if label.rescue_kit.format_spec {
        for chunk in FORMAT_SPEC.as_bytes().chunks(bs) {
            drive.write_block(chunk)?;
        }
    } else {
        drive.write_block(b"TAPIR RESCUE KIT: left out on this cartridge.\n")?;
    }
    drive.write_filemarks(1, !durable)?;
    record_identity(drive, label)
}

/// Whether tapir's identity for a cartridge went into its cartridge memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MamRecord {
    Recorded,
    /// The drive has no WRITE ATTRIBUTE (or no cartridge memory).
    NotSupported,
    /// The drive refused it; the on-tape label stands alone.
    Failed,
}

/// The cartridge-memory (MAM) attributes that identify a cartridge as
/// tapir's: application vendor, name and version, the label as user medium
/// text label, the pool (and set, once it has one) as media pool, and the
/// host that labelled it. A value the attribute cannot hold is left out.
pub fn identity_attributes(label: &VolumeLabel) -> Vec<crate::device::sg::Attribute> {
    use crate::device::sg;
    let pool = match &label.set {
        Some(set) => format!("{}/{}", label.pool, set.set_name),
        None => label.pool.clone(),
    };
    [
        (sg::APPLICATION_VENDOR, "TAPIR".to_string()),
        (sg::APPLICATION_NAME, "tapir".to_string()),
        (sg::APPLICATION_VERSION, label.tapir_version.clone()),
        (sg::USER_MEDIUM_TEXT_LABEL, label.label.clone()),
        (sg::MEDIA_POOL, pool),
        (sg::OWNING_HOST_TEXTUAL_NAME, label.host.clone()),
    ]
    .into_iter()
    .filter_map(|(attr, value)| match attr.with_text(&value) {
        Ok(a) => Some(a),
        Err(why) => {
            tracing::debug!("not recorded in cartridge memory: {why}");
            None
        }
    })
    .collect()
}

/// Record the label's identity in cartridge memory, so a cartridge whose
/// label block cannot be read is still identified. A drive without WRITE
/// ATTRIBUTE is told at info level and the job carries on; so does one that
/// refuses it (a warning). Only a reset or medium change fails the job.
pub fn record_identity(drive: &mut dyn TapeDrive, label: &VolumeLabel) -> Result<MamRecord> {
    match drive.write_cartridge_memory(&identity_attributes(label)) {
        Ok(()) => {
            tracing::info!(
                "{}: label {} recorded in cartridge memory",
                drive.name(),
                label.label
            );
            Ok(MamRecord::Recorded)
        }
        Err(DeviceError::Unsupported { what, .. }) => {
            tracing::info!(
                "{}: {what} is not supported; the label is on the tape only",
                drive.name()
            );
            Ok(MamRecord::NotSupported)
        }
        Err(e) if e.position_lost() => Err(e.into()),
        Err(e) => {
            tracing::warn!("the label was not recorded in cartridge memory: {e}");
            Ok(MamRecord::Failed)
        }
    }
}

/// The cartridge memory, or `None` where the drive has none to read (or
/// refuses; said at debug level). A reset or medium change is an error.
pub fn read_cartridge_memory(
    drive: &mut dyn TapeDrive,
) -> Result<Option<crate::device::sg::Attributes>> {
    match drive.cartridge_memory() {
        Ok(a) => Ok(Some(a)),
        Err(e) if e.position_lost() => Err(e.into()),
        Err(e) => {
            tracing::debug!("no cartridge memory: {e}");
            Ok(None)
        }
    }
}

/// The names the loaded cartridge goes by: its barcode (from the library,
/// else from cartridge memory), the given on-tape label, and the label in
/// cartridge memory.
pub fn cartridge_names(
    drive: &mut dyn TapeDrive,
    tape_label: Option<&str>,
    mam: Option<&crate::device::sg::Attributes>,
) -> Result<crate::media::CartridgeNames> {
    let barcode = drive
        .status()?
        .barcode
        .or_else(|| mam.and_then(|m| m.barcode()));
    Ok(crate::media::CartridgeNames {
        barcode,
        tape_label: tape_label.map(str::to_string),
        mam_label: mam.and_then(|m| m.user_label()),
    })
}

/// Compare the cartridge's barcode, on-tape label and cartridge-memory
/// label, and warn when they disagree; nothing is changed either way.
pub fn check_identity(
    drive: &mut dyn TapeDrive,
    tape_label: &str,
) -> Result<Option<crate::media::IdentityMismatch>> {
    let mam = read_cartridge_memory(drive)?;
    let names = cartridge_names(drive, Some(tape_label), mam.as_ref())?;
    let mismatch = crate::media::compare_identity(&names);
    if let Some(m) = &mismatch {
        tracing::warn!("{}: {m}", drive.name());
    }
    Ok(mismatch)
}

/// The rescue kit tapir writes by default.
pub fn default_rescue_kit() -> RescueKit {
    RescueKit {
        format_spec: true,
        binary: false,
        binary_version: None,
        binary_blake3: None,
    }
}

/// A new label for a blank or forcibly relabelled cartridge.
pub fn new_label(name: &str, pool: &str, block_size: u32) -> VolumeLabel {
    VolumeLabel {
        format_version: FORMAT_VERSION,
        volume_uuid: *uuid::Uuid::new_v4().as_bytes(),
        label: name.to_string(),
        pool: pool.to_string(),
        labelled: Timestamp::now(),
        host: hostname(),
        block_size,
        set: None,
        rescue_kit: default_rescue_kit(),
        worm: false,
        tapir_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// One session found on the cartridge.
#[derive(Debug, Clone)]
pub struct SessionOnTape {
    pub number: u32,
    pub data_file: u32,
    /// None when SessionStart could not be read.
    pub start: Option<SessionStart>,
    /// The catalog's tape file, when the session was closed properly.
    pub catalog_file: Option<u32>,
    /// The tape file of the set catalog copy written after the session.
    pub set_catalog_file: Option<u32>,
}

/// The map of a cartridge: its label and sessions, and where to append.
#[derive(Debug, Clone)]
pub struct TapeMap {
    pub label: VolumeLabel,
    pub sessions: Vec<SessionOnTape>,
    /// Tape files whose first block is not a session block, with why.
    pub unknown_files: Vec<(u32, String)>,
    /// Number of tape files closed by a filemark.
    pub closed_files: u32,
    /// The last tape file has data but no closing filemark (interrupted write).
    pub open_last_file: bool,
}

impl TapeMap {
    /// Tape file number the next session's data goes to (after closing an
    /// interrupted file). Never one of the label's tape files, even when a
    /// crash cut them short: a session written there would not be found.
    pub fn next_file(&self) -> u32 {
        (self.closed_files + u32::from(self.open_last_file)).max(FIRST_SESSION_FILE)
    }
    pub fn next_session(&self) -> u32 {
        self.sessions.iter().map(|s| s.number).max().unwrap_or(0) + 1
    }
    pub fn session(&self, n: u32) -> Option<&SessionOnTape> {
        self.sessions.iter().find(|s| s.number == n)
    }
}

/// Read the label, then the first block of every tape file, to map sessions.
pub fn map_tape(drive: &mut dyn TapeDrive) -> Result<TapeMap> {
    let label = match read_label(drive)? {
        LabelState::Tapir(l) => *l,
        LabelState::Blank => {
            return Err(Error::Refused(format!(
                "{}: the cartridge is blank; label it first with `tapir label --label NAME`",
                drive.name()
            )))
        }
        LabelState::Foreign(what) => {
            return Err(Error::Refused(format!(
                "{}: not a tapir cartridge: {what}",
                drive.name()
            )))
        }
    };
    check_identity(drive, &label.label)?;
    let mut map = TapeMap {
        label,
        sessions: Vec::new(),
        unknown_files: Vec::new(),
        closed_files: 0,
        open_last_file: false,
    };
    // From inside the label file: space to each next file, skip the rescue
    // kit, and read the first block of every later file.
    let mut buf = vec![0u8; MAX_BLOCK_SIZE as usize];
    let mut file: u32 = 0;
    'files: loop {
        match drive.space_filemarks(1) {
            Ok(()) => {
                file += 1;
                map.closed_files = file;
            }
            Err(DeviceError::EndOfData { .. }) => {
                map.open_last_file = true;
                break;
            }
            Err(e) => return Err(e.into()),
        }
        if file < FIRST_SESSION_FILE {
            continue;
        }
        // At the start of `file`; empty files are stepped over right here.
        loop {
            match drive.read_block(&mut buf) {
                Ok(ReadOutcome::EndOfData) => break 'files,
                Ok(ReadOutcome::Filemark) => {
                    map.unknown_files.push((file, "empty tape file".into()));
                    file += 1;
                    map.closed_files = file;
                }
                Ok(ReadOutcome::Block(n)) => {
                    classify_first_block(&mut map, file, &buf[..n]);
                    break;
                }
                Err(DeviceError::MediumError { detail, .. }) => {
                    map.unknown_files
                        .push((file, format!("first block unreadable: {detail}")));
                    break;
                }
                Err(DeviceError::BlockTooLarge { needed, .. }) => {
                    map.unknown_files.push((
                        file,
                        format!("first block of {needed} bytes is not tapir's"),
                    ));
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(map)
}

fn classify_first_block(map: &mut TapeMap, file: u32, block: &[u8]) {
    let (header, payload) = match BlockHeader::decode(block) {
        Ok(hp) => hp,
        Err(e) => {
            map.unknown_files
                .push((file, format!("first block does not verify: {e}")));
            return;
        }
    };
    match header.kind {
        BlockKind::SessionData => {
            let mut d = StreamDeframer::new();
            let mut recs = Vec::new();
            let start = d
                .push_block(&header, payload, &mut recs)
                .ok()
                .and_then(|_| recs.first().cloned())
                .filter(|r| r.header.rtype == RecordType::SessionStart)
                .and_then(|r| from_cbor::<SessionStart>(&r.body).ok());
            map.sessions.push(SessionOnTape {
                number: header.session,
                data_file: file,
                start,
                catalog_file: None,
                set_catalog_file: None,
            });
        }
        BlockKind::SessionCatalog => {
            if let Some(s) = map
                .sessions
                .iter_mut()
                .rev()
                .find(|s| s.number == header.session)
            {
                s.catalog_file = Some(file);
            } else {
                map.unknown_files.push((
                    file,
                    format!("catalog of unknown session {}", header.session),
                ));
            }
        }
        BlockKind::SetCatalog => {
            if let Some(s) = map
                .sessions
                .iter_mut()
                .rev()
                .find(|s| s.number == header.session)
            {
                s.set_catalog_file = Some(file);
            } else {
                map.unknown_files.push((
                    file,
                    format!("set catalog of unknown session {}", header.session),
                ));
            }
        }
        BlockKind::Label => map
            .unknown_files
            .push((file, "a label block outside tape file 0".into())),
    }
}

/// A session's catalog as read from its catalog tape file.
#[derive(Debug, Clone)]
pub struct SessionCatalog {
    pub header: CatalogHeader,
    pub entries: Vec<CatalogEntry>,
    pub end: Option<CatalogEnd>,
    pub lost: Vec<LostBlocks>,
    /// The digest in CatalogEnd matches the entries read.
    pub digest_ok: bool,
}

/// Read the catalog tape file of `session`.
pub fn read_catalog(
    drive: &mut dyn TapeDrive,
    label: &VolumeLabel,
    session: &SessionOnTape,
) -> Result<Option<SessionCatalog>> {
    let Some(cat_file) = session.catalog_file else {
        return Ok(None);
    };
    drive.locate(cat_file, 0)?;
    let set_uuid = label.set_uuid();
    let mut reader = StreamReader::new(
        drive,
        StreamExpect {
            kind: BlockKind::SessionCatalog,
            set_uuid,
            tape_file: cat_file,
            session: session.number,
        },
    );
    let mut header = None;
    let mut entries = Vec::new();
    let mut end = None;
    let mut lost = Vec::new();
    let mut digest = blake3::Hasher::new();
    while let Some(ev) = reader.next_event()? {
        match ev {
            StreamEvent::Lost(l) => lost.push(l),
            StreamEvent::Record(r) => match r.header.rtype {
                RecordType::CatalogHeader => header = from_cbor::<CatalogHeader>(&r.body).ok(),
                RecordType::CatalogEntry => {
                    digest.update(&r.body);
                    if let Ok(e) = from_cbor::<CatalogEntry>(&r.body) {
                        entries.push(e);
                    }
                }
                RecordType::CatalogEnd => end = from_cbor::<CatalogEnd>(&r.body).ok(),
                _ => {}
            },
        }
    }
    let Some(header) = header else {
        return Ok(None);
    };
    let digest_ok = end.as_ref().is_some_and(|e| {
        e.digest == *digest.finalize().as_bytes() && e.entries == entries.len() as u64
    });
    Ok(Some(SessionCatalog {
        header,
        entries,
        end,
        lost,
        digest_ok,
    }))
}

/// What `label_cartridge` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Labelled {
    pub label: String,
    pub pool: String,
    pub volume_uuid: String,
    pub block_size: u32,
    /// What was on the cartridge before, when `--force` destroyed it.
    pub destroyed: Option<String>,
    /// Whether the label went into cartridge memory too.
    pub cartridge_memory: MamRecord,
}

/// Label the loaded cartridge. A cartridge that holds anything (a tapir
/// label or foreign data) is refused unless `force`.
pub fn label_cartridge(
    drive: &mut dyn TapeDrive,
    name: &str,
    pool: &str,
    block_size: u64,
    force: bool,
) -> Result<Labelled> {
    let min = crate::format::MIN_BLOCK_SIZE as u64;
    let max = (MAX_BLOCK_SIZE as usize).min(drive.max_block_size()) as u64;
    if block_size < min || block_size > max {
        return Err(Error::Usage(format!(
            "block size {block_size} is outside {min}..={max} bytes"
        )));
    }
    if name.is_empty() || name.len() > 32 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Usage(format!(
            "label {name:?} must be 1 to 32 printable ASCII characters without spaces"
        )));
    }
    if pool.is_empty() || pool.len() > 64 || !pool.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Usage(format!(
            "pool {pool:?} must be 1 to 64 printable ASCII characters without spaces"
        )));
    }
    if drive.status()?.write_protected {
        return Err(DeviceError::WriteProtected {
            device: drive.name().to_string(),
        }
        .into());
    }
    let existing = match read_label(drive)? {
        LabelState::Blank => None,
        LabelState::Foreign(what) => Some(what),
        LabelState::Tapir(l) => Some(describe_labelled(drive, *l)?),
    };
    if let Some(what) = &existing {
        if !force {
            return Err(Error::Refused(format!(
                "{}: the cartridge is not blank: it holds {what}. Labelling destroys that; \
                 give --force if that is what you want",
                drive.name()
            )));
        }
        tracing::warn!("{}: --force: destroying {what}", drive.name());
    }
    let label = new_label(name, pool, block_size as u32);
    // Synchronous: the label must be on the medium before anything relies on it.
    let cartridge_memory = write_label(drive, &label, true)?;
    Ok(Labelled {
        cartridge_memory,
        label: label.label.clone(),
        pool: label.pool.clone(),
        volume_uuid: crate::format::label::uuid_text(&label.volume_uuid),
        block_size: label.block_size,
        destroyed: existing,
    })
}

fn describe_labelled(drive: &mut dyn TapeDrive, l: VolumeLabel) -> Result<String> {
    let set = match &l.set {
        Some(s) => format!("volume {} of set \"{}\"", s.volume_seq, s.set_name),
        None => "no set".to_string(),
    };
    let sessions = map_tape(drive).map(|m| m.sessions.len()).unwrap_or(0);
    Ok(format!(
        "tapir label {} (pool {}, {set}) with {sessions} session(s)",
        l.label, l.pool
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sg::{Attribute, Attributes};
    use crate::device::vtape::VirtualTape;
    use crate::device::{BlockRead, BlockWrite, DeviceResult, DriveStatus, TapePosition};
    use crate::device::{ReadOutcome as Outcome, WriteOutcome};

    /// A virtual tape with cartridge memory, as a drive with WRITE
    /// ATTRIBUTE would have.
    struct MamTape {
        tape: VirtualTape,
        mam: Vec<Attribute>,
    }

    impl BlockRead for MamTape {
        fn read_block(&mut self, buf: &mut [u8]) -> DeviceResult<Outcome> {
            self.tape.read_block(buf)
        }
    }

    impl BlockWrite for MamTape {
        fn write_block(&mut self, block: &[u8]) -> DeviceResult<WriteOutcome> {
            self.tape.write_block(block)
        }
        fn write_filemarks(&mut self, count: u32, immediate: bool) -> DeviceResult<()> {
            self.tape.write_filemarks(count, immediate)
        }
        fn flush(&mut self) -> DeviceResult<()> {
            self.tape.flush()
        }
    }

    impl TapeDrive for MamTape {
        fn name(&self) -> &str {
            self.tape.name()
        }
        fn rewind(&mut self) -> DeviceResult<()> {
            self.tape.rewind()
        }
        fn space_filemarks(&mut self, count: i64) -> DeviceResult<()> {
            self.tape.space_filemarks(count)
        }
        fn space_blocks(&mut self, count: i64) -> DeviceResult<()> {
            self.tape.space_blocks(count)
        }
        fn seek_end_of_data(&mut self) -> DeviceResult<()> {
            self.tape.seek_end_of_data()
        }
        fn position(&mut self) -> DeviceResult<TapePosition> {
            self.tape.position()
        }
        fn locate(&mut self, file: u32, block: u64) -> DeviceResult<()> {
            self.tape.locate(file, block)
        }
        fn status(&mut self) -> DeviceResult<DriveStatus> {
            self.tape.status()
        }
        fn max_block_size(&self) -> usize {
            self.tape.max_block_size()
        }
        fn cartridge_memory(&mut self) -> DeviceResult<Attributes> {
            Ok(Attributes {
                attributes: self.mam.clone(),
            })
        }
        fn write_cartridge_memory(&mut self, attributes: &[Attribute]) -> DeviceResult<()> {
            for a in attributes {
                self.mam.retain(|m| m.id != a.id);
                self.mam.push(a.clone());
            }
            Ok(())
        }
    }

    fn tape(dir: &tempfile::TempDir, barcode: &str) -> VirtualTape {
        let path = dir.path().join(format!("{barcode}.vtape"));
        VirtualTape::create(&path, barcode, 64 << 20, 4 << 20).unwrap();
        VirtualTape::open(&path, "test").unwrap()
    }

    #[test]
    fn labelling_records_tapirs_identity_in_cartridge_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut drive = MamTape {
            tape: tape(&dir, "TAP001L9"),
            mam: Vec::new(),
        };
        let done = label_cartridge(&mut drive, "TAP001L9", "weekly", 256 << 10, false).unwrap();
        assert_eq!(done.cartridge_memory, MamRecord::Recorded);
        let mam = drive.cartridge_memory().unwrap();
        assert_eq!(mam.user_label().as_deref(), Some("TAP001L9"));
        assert_eq!(mam.application_name().as_deref(), Some("tapir"));
        assert_eq!(mam.application_vendor().as_deref(), Some("TAPIR"));
        assert_eq!(
            mam.application_version().as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(mam.media_pool().as_deref(), Some("weekly"));
        // Names agree: no mismatch when the label is read.
        assert_eq!(check_identity(&mut drive, "TAP001L9").unwrap(), None);
        assert!(map_tape(&mut drive).is_ok());
    }

    #[test]
    fn a_set_joins_the_pool_in_cartridge_memory() {
        let mut label = new_label("TAP001L9", "weekly", 256 << 10);
        label.set = Some(crate::format::label::SetMembership {
            set_uuid: [7; 16],
            set_name: "web".into(),
            volume_seq: 1,
            previous_volume: None,
            joined: Timestamp::now(),
            host: "h".into(),
        });
        let attrs = Attributes {
            attributes: identity_attributes(&label),
        };
        assert_eq!(attrs.media_pool().as_deref(), Some("weekly/web"));
        // A value the attribute cannot hold is left out, not cut.
        label.host = "h".repeat(81);
        let ids: Vec<u16> = identity_attributes(&label).iter().map(|a| a.id).collect();
        assert!(!ids.contains(&crate::device::sg::ATTR_OWNING_HOST_TEXTUAL_NAME));
        assert!(ids.contains(&crate::device::sg::ATTR_USER_MEDIUM_TEXT_LABEL));
    }

    #[test]
    fn a_drive_without_cartridge_memory_labels_on_tape_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut drive = tape(&dir, "TAP001L9");
        let done = label_cartridge(&mut drive, "TAP001L9", "p", 256 << 10, false).unwrap();
        assert_eq!(done.cartridge_memory, MamRecord::NotSupported);
        assert_eq!(read_cartridge_memory(&mut drive).unwrap(), None);
    }

    #[test]
    fn disagreeing_names_are_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut drive = MamTape {
            tape: tape(&dir, "TAP001L9"),
            mam: Vec::new(),
        };
        label_cartridge(&mut drive, "TAP001L9", "p", 256 << 10, false).unwrap();
        // Another application (or an earlier label) left its own name in MAM.
        drive
            .write_cartridge_memory(&[crate::device::sg::USER_MEDIUM_TEXT_LABEL
                .with_text("OLD042L9")
                .unwrap()])
            .unwrap();
        let m = check_identity(&mut drive, "TAP001L9")
            .unwrap()
            .expect("a mismatch");
        assert_eq!(m.names.barcode.as_deref(), Some("TAP001L9"));
        assert_eq!(m.names.tape_label.as_deref(), Some("TAP001L9"));
        assert_eq!(m.names.mam_label.as_deref(), Some("OLD042L9"));
        // Reading the cartridge still works, and changes nothing.
        let map = map_tape(&mut drive).unwrap();
        assert_eq!(map.label.label, "TAP001L9");
        let mam = drive.cartridge_memory().unwrap();
        assert_eq!(mam.user_label().as_deref(), Some("OLD042L9"));
    }
}
