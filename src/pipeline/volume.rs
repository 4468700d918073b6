//! The cartridge as a whole: its label, its rescue kit, and the sessions on it.

use crate::device::{DeviceError, ReadOutcome, TapeDrive};
use crate::format::block::BlockHeader;
use crate::format::label::{KitBinary, LabelBlock, RescueKit, VolumeLabel};
use crate::format::meta::{
    from_cbor, CatalogEnd, CatalogEntry, CatalogHeader, SessionStart, Timestamp,
};
use crate::format::record::RecordType;
use crate::format::stream::StreamDeframer;
use crate::format::{BlockKind, FORMAT_VERSION, MAX_BLOCK_SIZE};

use super::reader::{LostBlocks, StreamEvent, StreamExpect, StreamReader};
use super::rescue::{BinaryOrigin, KitChoice, RescueBinary};
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

/// Write tape files 0 (label) and 1 (rescue kit, as `kit` asks) from the
/// beginning of tape, and set the label's `rescue_kit` to what was written.
/// Everything after them on the cartridge is gone afterwards. `durable`
/// makes the closing filemark synchronous; a session that follows at once
/// leaves it immediate and makes everything durable at its own end.
/// Where the drive has cartridge memory, tapir's identity for the
/// cartridge is recorded there too (see [`record_identity`]).
pub fn write_label(
    drive: &mut dyn TapeDrive,
    label: &mut VolumeLabel,
    kit: &KitChoice,
    durable: bool,
) -> Result<MamRecord> {
    let kept = if kit.explicit || kit.binary().is_some() {
        None
    } else {
        keep_kit_binary(drive, label)
    };
    drive.rewind()?;
    let room = drive.room_before_early_warning();
    let binary = plan_kit(drive.name(), label, kit, kept, room)?;
    drive.write_block(&LabelBlock::encode(label))?;
    drive.write_filemarks(1, true)?;
    let bs = label.block_size as usize;
    if label.rescue_kit.format_spec {
        for chunk in FORMAT_SPEC.as_bytes().chunks(bs) {
            drive.write_block(chunk)?;
        }
        if let Some(b) = &binary {
            // Full blocks only (FORMAT.md §2.2): the last one is padded.
            let mut block = Vec::with_capacity(bs);
            for chunk in b.bytes.chunks(bs) {
                block.clear();
                block.extend_from_slice(chunk);
                block.resize(bs, 0);
                drive.write_block(&block)?;
            }
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

/// Decide what tape file 1 gets and describe it in `label`; the binary to
/// write after FORMAT.md, if any. The kit may take at most half of the
/// room before early warning, so that a small cartridge still holds data:
/// a binary the user gave that does not fit is refused, one found
/// automatically is left out with a warning.
fn plan_kit(
    device: &str,
    label: &mut VolumeLabel,
    kit: &KitChoice,
    kept: Option<RescueBinary>,
    room: Option<u64>,
) -> Result<Option<RescueBinary>> {
    // A rewritten label keeps a kit left out unless told otherwise.
    if kit.leave_out || (!kit.explicit && !label.rescue_kit.format_spec) {
        label.rescue_kit = RescueKit::left_out();
        return Ok(None);
    }
    let bs = u64::from(label.block_size);
    let spec_blocks = (FORMAT_SPEC.len() as u64).div_ceil(bs);
    let spec_bytes = LABEL_BLOCK_MAX + FORMAT_SPEC.len() as u64;
    let budget = room.map(|r| r / 2);
    let too_big = |bytes: u64| budget.is_some_and(|b| bytes > b);
    let room_text = |bytes: u64| {
        format!(
            "the rescue kit ({bytes} bytes) would take more than half of cartridge {} ({} bytes before early warning)",
            label.label,
            room.unwrap_or(0)
        )
    };
    let mut binary = kit.binary().cloned().or(kept);
    if let Some(b) = &binary {
        let total = spec_bytes + (b.bytes.len() as u64).div_ceil(bs) * bs;
        if too_big(total) {
            if b.origin == BinaryOrigin::Given {
                return Err(Error::Refused(format!(
                    "{device}: {} with the binary {}; give --no-rescue-kit to leave the kit out, or use a larger cartridge",
                    room_text(total),
                    b.path.display()
                )));
            }
            tracing::warn!(
                "{device}: leaving the tapir binary {} out of the rescue kit: {}",
                b.path.display(),
                room_text(total)
            );
            binary = None;
        }
    }
    if too_big(spec_bytes) {
        return Err(Error::Refused(format!(
            "{device}: {} even without a binary; give --no-rescue-kit to leave the kit out",
            room_text(spec_bytes)
        )));
    }
    label.rescue_kit = match &binary {
        Some(b) => RescueKit::with_binary(spec_blocks as u32, &b.describe(spec_blocks as u32)),
        None => RescueKit::spec_only(),
    };
    Ok(binary)
}

/// Largest label block (FORMAT.md §4.1).
const LABEL_BLOCK_MAX: u64 = (crate::format::label::LABEL_TEXT_AREA
    + crate::format::BLOCK_HEADER_LEN) as u64
    + crate::format::label::MAX_LABEL_CBOR as u64;

/// The binary in the rescue kit of the cartridge whose label is about to
/// be rewritten, read back so that the rewrite keeps it (when this command
/// found none of its own). None, with a warning, when it does not read
/// back whole and matching its BLAKE3.
fn keep_kit_binary(drive: &mut dyn TapeDrive, label: &VolumeLabel) -> Option<RescueBinary> {
    let kit = label.rescue_kit.kit_binary()?;
    match read_kit_binary(drive, &kit) {
        Ok(bytes) => Some(RescueBinary::new(
            format!("the rescue kit of cartridge {}", label.label).into(),
            bytes,
            kit.version,
            BinaryOrigin::Cartridge,
        )),
        Err(why) => {
            tracing::warn!(
                "{}: the tapir binary in the rescue kit of cartridge {} is not kept: {why}",
                drive.name(),
                label.label
            );
            None
        }
    }
}

/// Read the rescue kit binary the label describes from tape file 1 and
/// check its length and BLAKE3.
pub fn read_kit_binary(
    drive: &mut dyn TapeDrive,
    kit: &KitBinary,
) -> std::result::Result<Vec<u8>, String> {
    drive
        .locate(1, u64::from(kit.first_block))
        .map_err(|e| e.to_string())?;
    // kit_binary() bounded the size; the buffer grows as blocks arrive.
    let size = kit.size as usize;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; MAX_BLOCK_SIZE as usize];
    while bytes.len() < size {
        match drive.read_block(&mut buf).map_err(|e| e.to_string())? {
            ReadOutcome::Block(n) => bytes.extend_from_slice(&buf[..n.min(size - bytes.len())]),
            ReadOutcome::Filemark | ReadOutcome::EndOfData => break,
        }
    }
    if bytes.len() != size {
        return Err(format!(
            "tape file 1 holds {} of its {size} bytes",
            bytes.len()
        ));
    }
    if *blake3::hash(&bytes).as_bytes() != kit.blake3 {
        return Err("its BLAKE3 differs from the label's".into());
    }
    Ok(bytes)
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
        // write_label decides the kit.
        rescue_kit: RescueKit::spec_only(),
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
    let mut digest = super::PieceHasher::new();
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
    pub rescue_kit: KitSummary,
    /// Whether the label went into cartridge memory too.
    pub cartridge_memory: MamRecord,
}

/// What a cartridge's rescue kit holds, for people and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KitSummary {
    /// FORMAT.md is in tape file 1 (false: the kit was left out).
    pub format_spec: bool,
    pub binary: Option<KitBinarySummary>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KitBinarySummary {
    pub version: String,
    pub size: u64,
    pub blake3: String,
    pub first_block: u32,
}

impl KitSummary {
    pub fn of(kit: &RescueKit) -> KitSummary {
        KitSummary {
            format_spec: kit.format_spec,
            binary: kit.kit_binary().map(|b| KitBinarySummary {
                version: b.version,
                size: b.size,
                blake3: blake3::Hash::from_bytes(b.blake3).to_hex().to_string(),
                first_block: b.first_block,
            }),
        }
    }
}

/// Label the loaded cartridge. A cartridge that holds anything (a tapir
/// label or foreign data) is refused unless `force`.
pub fn label_cartridge(
    drive: &mut dyn TapeDrive,
    name: &str,
    pool: &str,
    block_size: u64,
    force: bool,
    kit: &KitChoice,
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
    let mut label = new_label(name, pool, block_size as u32);
    // Synchronous: the label must be on the medium before anything relies on it.
    let cartridge_memory = write_label(drive, &mut label, kit, true)?;
    Ok(Labelled {
        cartridge_memory,
        label: label.label.clone(),
        pool: label.pool.clone(),
        volume_uuid: crate::format::label::uuid_text(&label.volume_uuid),
        block_size: label.block_size,
        destroyed: existing,
        rescue_kit: KitSummary::of(&label.rescue_kit),
    })
}

/// What `media scratch` found on a cartridge, and whether it destroyed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scratched {
    pub label: String,
    /// What the cartridge held (what scratching destroys).
    pub held: String,
    /// The volume UUID of the tapir label that was there, if any.
    pub old_volume: Option<String>,
    /// Done, rather than only shown.
    pub destroyed: bool,
    /// The new, empty label's volume UUID.
    pub new_volume: Option<String>,
    /// The new label, for the host catalog.
    #[serde(skip)]
    pub new_label: Option<VolumeLabel>,
}

/// Show what the loaded cartridge `label` holds and, with `confirm`,
/// destroy it: an empty tapir label of `pool` replaces everything. This
/// is the one deliberate act that makes a foreign or unknown cartridge
/// usable. A tapir label naming another cartridge is refused.
pub fn scratch_cartridge(
    drive: &mut dyn TapeDrive,
    label: &str,
    pool: &str,
    block_size: u64,
    confirm: bool,
    kit: &KitChoice,
) -> Result<Scratched> {
    let (held, old_volume) = match read_label(drive)? {
        LabelState::Blank => ("nothing: it is blank".to_string(), None),
        LabelState::Foreign(what) => (what, None),
        LabelState::Tapir(l) => {
            if l.label != label {
                return Err(Error::Refused(format!(
                    "{}: the loaded cartridge is labelled {}, not {label}; load {label} first",
                    drive.name(),
                    l.label
                )));
            }
            let uuid = crate::format::label::uuid_text(&l.volume_uuid);
            (describe_labelled(drive, *l)?, Some(uuid))
        }
    };
    if !confirm {
        return Ok(Scratched {
            label: label.to_string(),
            held,
            old_volume,
            destroyed: false,
            new_volume: None,
            new_label: None,
        });
    }
    let done = label_cartridge(drive, label, pool, block_size, true, kit)?;
    let new_label = match read_label(drive)? {
        LabelState::Tapir(l) => Some(*l),
        _ => None,
    };
    Ok(Scratched {
        label: label.to_string(),
        held,
        old_volume,
        destroyed: true,
        new_volume: Some(done.volume_uuid),
        new_label,
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

    fn binary(len: usize, origin: BinaryOrigin) -> RescueBinary {
        RescueBinary::new(
            "tapir-static".into(),
            vec![7; len],
            "tapir 0.1.0".into(),
            origin,
        )
    }

    fn choice(binary: Option<RescueBinary>, explicit: bool) -> KitChoice {
        KitChoice::of(binary, explicit)
    }

    #[test]
    fn a_binary_found_by_itself_that_does_not_fit_is_left_out_and_a_given_one_refused() {
        let mut label = new_label("TAP001L9", "default", 256 * 1024);
        let room = Some(4 << 20);
        let found = choice(
            Some(binary(3 << 20, BinaryOrigin::RunningExecutable)),
            false,
        );
        assert!(plan_kit("d", &mut label, &found, None, room)
            .unwrap()
            .is_none());
        assert_eq!(label.rescue_kit, RescueKit::spec_only());
        // The same binary read back from the cartridge being relabelled.
        let kept = Some(binary(3 << 20, BinaryOrigin::Cartridge));
        assert!(plan_kit("d", &mut label, &choice(None, false), kept, room)
            .unwrap()
            .is_none());
        let given = choice(Some(binary(3 << 20, BinaryOrigin::Given)), true);
        match plan_kit("d", &mut label, &given, None, room) {
            Err(Error::Refused(why)) => assert!(why.contains("--no-rescue-kit"), "{why}"),
            other => panic!("not refused: {other:?}"),
        }
        // Room enough, or a drive that cannot tell: the binary goes in.
        for room in [Some(64 << 20), None] {
            let b = plan_kit("d", &mut label, &given, None, room)
                .unwrap()
                .unwrap();
            let kit = label.rescue_kit.kit_binary().unwrap();
            assert_eq!(kit.size, b.bytes.len() as u64);
            assert_eq!(
                kit.first_block as usize,
                FORMAT_SPEC.len().div_ceil(256 * 1024)
            );
        }
    }

    #[test]
    fn a_kit_left_out_stays_out_unless_the_command_chose_otherwise() {
        let mut label = new_label("TAP001L9", "default", 256 * 1024);
        label.rescue_kit = RescueKit::left_out();
        let found = choice(Some(binary(1000, BinaryOrigin::Beside)), false);
        assert!(plan_kit("d", &mut label, &found, None, None)
            .unwrap()
            .is_none());
        assert_eq!(label.rescue_kit, RescueKit::left_out());
        let given = choice(Some(binary(1000, BinaryOrigin::Given)), true);
        assert!(plan_kit("d", &mut label, &given, None, None)
            .unwrap()
            .is_some());
        assert!(label.rescue_kit.binary);
        let mut leave_out = KitChoice::of(None, true);
        leave_out.leave_out = true;
        assert!(plan_kit("d", &mut label, &leave_out, None, None)
            .unwrap()
            .is_none());
        assert_eq!(label.rescue_kit, RescueKit::left_out());
    }

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
        let done = label_cartridge(
            &mut drive,
            "TAP001L9",
            "weekly",
            256 << 10,
            false,
            &KitChoice::default(),
        )
        .unwrap();
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
        let done = label_cartridge(
            &mut drive,
            "TAP001L9",
            "p",
            256 << 10,
            false,
            &KitChoice::default(),
        )
        .unwrap();
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
        label_cartridge(
            &mut drive,
            "TAP001L9",
            "p",
            256 << 10,
            false,
            &KitChoice::default(),
        )
        .unwrap();
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
