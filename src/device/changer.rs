//! SCSI media changers (SMC-3) through SG_IO on `/dev/sgN` (or `/dev/schN`).
//!
//! The library's elements come from READ ELEMENT STATUS, one element type at
//! a time, with volume tags (barcodes) and, for drives, device identifiers
//! (their serial numbers); MODE SENSE page 1Dh says where each type's
//! addresses start. Moves are MOVE MEDIUM through the first medium
//! transport. The parsers are plain functions over response bytes, laid out
//! as SMC-3 §6.10 (element status) and §7.3.4 (element address assignment)
//! specify, unit-tested on such bytes, including truncated and hostile ones.
//!
//! Numbers the user sees: slots and mail slots count from 1, drives from 0
//! (as mtx does), each in element-address order.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;

use super::sense::{Condition, SenseKey};
use super::sg::{self, ascii, need, Data, Inquiry, Scsi, SgError};
use super::{Changer, ChangerInventory, DeviceError, DeviceResult};

const OP_INITIALIZE_ELEMENT_STATUS: u8 = 0x07;
const OP_MOVE_MEDIUM: u8 = 0xA5;
const OP_READ_ELEMENT_STATUS: u8 = 0xB8;
/// The element address assignment mode page (SMC-3 §7.3.4).
pub const PAGE_ELEMENT_ADDRESS_ASSIGNMENT: u8 = 0x1D;
/// Peripheral device type of media changers (SPC-4 table 83).
pub const PERIPHERAL_MEDIUM_CHANGER: u8 = 0x08;

/// Allocation length of each READ ELEMENT STATUS: tgt refuses more than a
/// memory page, and libraries cut a report at the allocation length
/// anyway, so large libraries are read in several requests.
const STATUS_ALLOCATION: usize = 4096;
/// Enough requests for any library (each returns at least one element).
const MAX_STATUS_REQUESTS: usize = 4096;
/// Every element descriptor has at least these bytes (SMC-3 table 61).
const DESCRIPTOR_MIN: usize = 12;
/// A volume tag: 32 bytes of identifier, 2 reserved, 2 of sequence number.
const VOLUME_TAG_LEN: usize = 36;
const VOLUME_IDENTIFIER_LEN: usize = 32;
/// Identifier type 1: T10 vendor identification (vendor, product, serial).
const IDENTIFIER_T10_VENDOR: u8 = 1;

/// A move can take minutes on a big library.
const MOVE_TIMEOUT_MS: u32 = 15 * 60 * 1000;
/// A full barcode scan of a big library takes long.
const INITIALIZE_TIMEOUT_MS: u32 = 60 * 60 * 1000;
const STATUS_TIMEOUT_MS: u32 = 5 * 60 * 1000;
/// How often a command is sent again after a unit attention (the library
/// was reset, its door opened, its mail slot used): it was not run.
const UA_ATTEMPTS: u32 = 4;

/// The four kinds of element (SMC-3 table 60).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElementType {
    /// The robot's hand.
    MediumTransport,
    /// A slot.
    Storage,
    /// A mail slot: where an operator puts cartridges in and takes them out.
    ImportExport,
    /// A drive.
    DataTransfer,
}

impl ElementType {
    pub fn code(self) -> u8 {
        match self {
            ElementType::MediumTransport => 1,
            ElementType::Storage => 2,
            ElementType::ImportExport => 3,
            ElementType::DataTransfer => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<ElementType> {
        match code {
            1 => Some(ElementType::MediumTransport),
            2 => Some(ElementType::Storage),
            3 => Some(ElementType::ImportExport),
            4 => Some(ElementType::DataTransfer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ElementType::MediumTransport => "medium transport",
            ElementType::Storage => "slot",
            ElementType::ImportExport => "mail slot",
            ElementType::DataTransfer => "drive",
        }
    }
}

/// What kind of cartridge an element holds, as the library tells
/// (SMC-3 medium type field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediumType {
    Unspecified,
    Data,
    Cleaning,
    Diagnostic,
    Worm,
    Reserved(u8),
}

impl MediumType {
    fn from_bits(b: u8) -> MediumType {
        match b & 0x07 {
            0 => MediumType::Unspecified,
            1 => MediumType::Data,
            2 => MediumType::Cleaning,
            3 => MediumType::Diagnostic,
            4 => MediumType::Worm,
            other => MediumType::Reserved(other),
        }
    }
}

/// First address and number of the elements of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ElementRange {
    pub first: u16,
    pub count: u16,
}

/// The element address assignment page (SMC-3 §7.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ElementAddresses {
    pub transports: ElementRange,
    pub slots: ElementRange,
    pub mail_slots: ElementRange,
    pub drives: ElementRange,
}

impl ElementAddresses {
    pub fn range(&self, ty: ElementType) -> ElementRange {
        match ty {
            ElementType::MediumTransport => self.transports,
            ElementType::Storage => self.slots,
            ElementType::ImportExport => self.mail_slots,
            ElementType::DataTransfer => self.drives,
        }
    }
}

/// Parse page 1Dh as a mode page (code, length, then the fields).
pub fn parse_element_addresses(page: &[u8]) -> Result<ElementAddresses, String> {
    if page.len() < 18 {
        return Err(format!(
            "element address assignment page: {} bytes, at least 18 expected",
            page.len()
        ));
    }
    if page[0] & 0x3F != PAGE_ELEMENT_ADDRESS_ASSIGNMENT {
        return Err(format!(
            "page code {:#04x} instead of {PAGE_ELEMENT_ADDRESS_ASSIGNMENT:#04x}",
            page[0] & 0x3F
        ));
    }
    let range = |at: usize| ElementRange {
        first: be16(&page[at..at + 2]),
        count: be16(&page[at + 2..at + 4]),
    };
    Ok(ElementAddresses {
        transports: range(2),
        slots: range(6),
        mail_slots: range(10),
        drives: range(14),
    })
}

/// How a drive identifies itself in its element descriptor (DVCID).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriveIdentifier {
    /// The identifier as text (ASCII code sets) or hex (binary).
    pub text: String,
    pub vendor: Option<String>,
    pub product: Option<String>,
    /// The drive's serial number: the last field of a T10 vendor
    /// identification, or the whole identifier otherwise (as libraries
    /// that report a bare serial number do).
    pub serial: Option<String>,
}

fn parse_identifier(code_set: u8, kind: u8, raw: &[u8]) -> Option<DriveIdentifier> {
    let ascii_code_set = matches!(code_set, 2 | 3);
    let text = if ascii_code_set {
        ascii(raw)
    } else {
        raw.iter().map(|b| format!("{b:02x}")).collect()
    };
    if text.is_empty() {
        return None;
    }
    let field = |r: std::ops::Range<usize>| {
        raw.get(r)
            .map(ascii)
            .filter(|s: &String| !s.is_empty() && ascii_code_set)
    };
    let t10 = kind == IDENTIFIER_T10_VENDOR && raw.len() > 24;
    Some(DriveIdentifier {
        vendor: if t10 { field(0..8) } else { None },
        product: if t10 { field(8..24) } else { None },
        serial: if t10 {
            field(24..raw.len())
        } else {
            Some(text.clone())
        },
        text,
    })
}

/// One element as READ ELEMENT STATUS reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ElementStatus {
    #[serde(rename = "type")]
    pub element_type: ElementType,
    pub address: u16,
    /// It holds a cartridge.
    pub full: bool,
    /// The robot can reach it (slots, mail slots, drives).
    pub accessible: bool,
    /// The element is in an abnormal state, described by `condition`.
    pub exception: bool,
    pub condition: Option<Condition>,
    /// Mail slots: the cartridge was put there by an operator (rather than
    /// by the robot, for export).
    pub imported: bool,
    /// Mail slots: the library lets cartridges in / out through it.
    pub import_enabled: bool,
    pub export_enabled: bool,
    /// The element the cartridge came from, when the library knows.
    pub source: Option<u16>,
    pub medium_type: MediumType,
    /// The cartridge's barcode (primary volume tag), when readable.
    pub barcode: Option<String>,
    /// Drives: who they are (when asked for with DVCID and supported).
    pub identifier: Option<DriveIdentifier>,
}

/// A READ ELEMENT STATUS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementReport {
    /// Elements the library says it has from the requested address on.
    pub available: u16,
    pub elements: Vec<ElementStatus>,
    /// The data ended inside the last element's descriptor: it holds only
    /// the fields that were complete (tgt sends every report 8 bytes short
    /// of its own byte count; a library cuts at the allocation length).
    pub last_cut: bool,
}

impl ElementReport {
    /// The report was cut short (allocation length) and more elements follow.
    pub fn truncated(&self) -> bool {
        self.elements.len() < self.available as usize
    }
}

/// Parse READ ELEMENT STATUS data (SMC-3 §6.10): the element status
/// header, then element status pages, each with its header and fixed-length
/// descriptors. `dvcid`: device identifiers were asked for. Declared
/// lengths beyond the bytes returned are ignored, so nothing is allocated
/// from a length field; a descriptor the data ends inside counts if its
/// first 12 bytes are there (see [`ElementReport::last_cut`]).
pub fn parse_element_status(b: &[u8], dvcid: bool) -> Result<ElementReport, String> {
    need(b, 8, "element status header")?;
    let available = be16(&b[2..4]);
    let declared_end = 8 + be24(&b[5..8]);
    let end = declared_end.min(b.len());
    let mut elements = Vec::new();
    let mut last_cut = false;
    let mut at = 8;
    while at + 8 <= end {
        let page = &b[at..at + 8];
        let ty = ElementType::from_code(page[0] & 0x0F);
        let primary_tag = page[1] & 0x80 != 0;
        let alternate_tag = page[1] & 0x40 != 0;
        let descriptor_len = be16(&page[2..4]) as usize;
        let page_declared_end = (at + 8 + be24(&page[5..8])).min(declared_end);
        let page_end = page_declared_end.min(end);
        at += 8;
        if descriptor_len < DESCRIPTOR_MIN {
            return Err(format!(
                "element descriptor length {descriptor_len} is below the {DESCRIPTOR_MIN} bytes of every descriptor"
            ));
        }
        let layout = Layout {
            primary_tag,
            alternate_tag,
            dvcid,
        };
        while at + descriptor_len <= page_end {
            if let Some(ty) = ty {
                elements.push(parse_descriptor(ty, &b[at..at + descriptor_len], layout));
            }
            at += descriptor_len;
        }
        // The report is shorter than its header says, and ends inside a
        // descriptor the page declares.
        if b.len() < declared_end
            && page_end == b.len()
            && at + DESCRIPTOR_MIN <= page_end
            && at < page_declared_end
        {
            if let Some(ty) = ty {
                elements.push(parse_descriptor(ty, &b[at..page_end], layout));
                last_cut = true;
            }
            break;
        }
        at = page_end;
    }
    Ok(ElementReport {
        available,
        elements,
        last_cut,
    })
}

/// What an element status page's descriptors hold after the first 12 bytes.
#[derive(Debug, Clone, Copy)]
struct Layout {
    primary_tag: bool,
    alternate_tag: bool,
    dvcid: bool,
}

fn parse_descriptor(ty: ElementType, d: &[u8], layout: Layout) -> ElementStatus {
    let flags = d[2];
    let mail = ty == ElementType::ImportExport;
    let exception = flags & 0x04 != 0;
    let mut at = DESCRIPTOR_MIN;
    let mut barcode = None;
    if layout.primary_tag {
        if let Some(tag) = d.get(at..at + VOLUME_IDENTIFIER_LEN) {
            barcode = Some(ascii(tag)).filter(|s| !s.is_empty());
        }
        at += VOLUME_TAG_LEN;
    }
    if layout.alternate_tag {
        at += VOLUME_TAG_LEN;
    }
    let mut identifier = None;
    if layout.dvcid {
        // Only a whole identifier: a cut one would name another drive.
        if let Some(h) = d.get(at..at + 4) {
            if let Some(raw) = d.get(at + 4..at + 4 + h[3] as usize) {
                identifier = parse_identifier(h[0] & 0x0F, h[1] & 0x0F, raw);
            }
        }
    }
    ElementStatus {
        element_type: ty,
        address: be16(&d[0..2]),
        full: flags & 0x01 != 0,
        accessible: ty != ElementType::MediumTransport && flags & 0x08 != 0,
        exception,
        condition: exception.then(|| Condition::from_codes(d[4], d[5])),
        imported: mail && flags & 0x02 != 0,
        import_enabled: mail && flags & 0x20 != 0,
        export_enabled: mail && flags & 0x10 != 0,
        source: (d[9] & 0x80 != 0).then(|| be16(&d[10..12])),
        medium_type: MediumType::from_bits(d[9]),
        barcode,
        identifier,
    }
}

/// Everything in a library, each kind in address order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LibraryStatus {
    pub changer: String,
    pub vendor: String,
    pub product: String,
    pub transports: Vec<ElementStatus>,
    pub slots: Vec<ElementStatus>,
    pub mail_slots: Vec<ElementStatus>,
    pub drives: Vec<ElementStatus>,
}

impl LibraryStatus {
    fn list(&self, ty: ElementType) -> &[ElementStatus] {
        match ty {
            ElementType::MediumTransport => &self.transports,
            ElementType::Storage => &self.slots,
            ElementType::ImportExport => &self.mail_slots,
            ElementType::DataTransfer => &self.drives,
        }
    }

    /// Where an element address is, as the user counts: "slot 3",
    /// "drive 0", "mail slot 1".
    pub fn describe(&self, address: u16) -> String {
        for ty in [
            ElementType::Storage,
            ElementType::DataTransfer,
            ElementType::ImportExport,
            ElementType::MediumTransport,
        ] {
            if let Some(i) = self.list(ty).iter().position(|e| e.address == address) {
                let n = if ty == ElementType::DataTransfer {
                    i
                } else {
                    i + 1
                };
                return format!("{} {n}", ty.name());
            }
        }
        format!("element {address}")
    }

    /// The 1-based slot of a storage element address.
    pub fn slot_number(&self, address: u16) -> Option<usize> {
        self.slots
            .iter()
            .position(|e| e.address == address)
            .map(|i| i + 1)
    }

    /// Where the cartridge with this barcode is.
    pub fn find(&self, barcode: &str) -> Option<&ElementStatus> {
        [&self.slots, &self.drives, &self.mail_slots]
            .into_iter()
            .flatten()
            .find(|e| e.full && e.barcode.as_deref() == Some(barcode))
    }

    /// The drive whose serial number is `serial` (from DVCID).
    pub fn drive_with_serial(&self, serial: &str) -> Option<usize> {
        self.drives.iter().position(|d| {
            d.identifier
                .as_ref()
                .and_then(|i| i.serial.as_deref())
                .is_some_and(|s| s == serial)
        })
    }

    /// As the [`Changer`] trait sees a library: its slots and one drive.
    pub fn inventory(&self, drive: usize) -> ChangerInventory {
        ChangerInventory {
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, e)| (i + 1, e.full.then(|| e.barcode.clone().unwrap_or_default())))
                .collect(),
            drive: self.drives.get(drive).filter(|d| d.full).map(|d| {
                let home = d.source.and_then(|s| self.slot_number(s)).unwrap_or(0);
                (d.barcode.clone().unwrap_or_default(), home)
            }),
        }
    }
}

/// A SCSI media changer, open on its SCSI generic device.
#[derive(Debug)]
pub struct ScsiChanger {
    file: File,
    name: String,
    inquiry: Inquiry,
    addresses: Option<ElementAddresses>,
    /// The drive the [`Changer`] trait loads and unloads.
    drive: usize,
}

impl ScsiChanger {
    /// Open the changer at `path` (/dev/sgN, /dev/schN or a link to one)
    /// and learn its element addresses.
    pub fn open(path: impl AsRef<Path>) -> DeviceResult<ScsiChanger> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| DeviceError::io(&name, "opening the changer", e))?;
        let inquiry = Scsi::new(file.as_fd(), &name)
            .inquiry()
            .map_err(DeviceError::from)?;
        if inquiry.peripheral_type != PERIPHERAL_MEDIUM_CHANGER {
            return Err(DeviceError::InvalidRequest {
                device: name,
                detail: format!(
                    "{} {} is not a media changer (SCSI peripheral type {:#04x}; a changer is {PERIPHERAL_MEDIUM_CHANGER:#04x}); give its /dev/sgN",
                    inquiry.vendor, inquiry.product, inquiry.peripheral_type
                ),
            });
        }
        let mut changer = ScsiChanger {
            file,
            name,
            inquiry,
            addresses: None,
            drive: 0,
        };
        changer.addresses = changer.element_addresses()?;
        Ok(changer)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inquiry(&self) -> &Inquiry {
        &self.inquiry
    }

    /// Make `drive` (0-based) the one [`Changer::load_slot`] and
    /// [`Changer::unload`] use.
    pub fn set_drive(&mut self, drive: usize) {
        self.drive = drive;
    }

    pub fn drive(&self) -> usize {
        self.drive
    }

    fn scsi(&self, timeout_ms: u32) -> Scsi<'_> {
        Scsi::new(self.file.as_fd(), &self.name).with_timeout_ms(timeout_ms)
    }

    /// Send a command, again after unit attentions: for a changer they
    /// only say that its inventory may have changed.
    fn execute(
        &self,
        command: &str,
        cdb: &[u8],
        mut buf: Option<&mut [u8]>,
        timeout_ms: u32,
    ) -> sg::SgResult<usize> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let data = match buf.as_deref_mut() {
                Some(b) => Data::In(b),
                None => Data::None,
            };
            match self.scsi(timeout_ms).execute(command, cdb, data) {
                Err(SgError::CheckCondition { sense, .. })
                    if sense.key == SenseKey::UnitAttention && attempts < UA_ATTEMPTS =>
                {
                    tracing::debug!(changer = %self.name, %command, %sense, "unit attention; sending the command again");
                }
                r => return r,
            }
        }
    }

    fn refused(&self, action: String, e: SgError) -> DeviceError {
        refused(&self.name, action, e)
    }

    /// MODE SENSE page 1Dh; `None` when the library does not have it.
    fn element_addresses(&self) -> DeviceResult<Option<ElementAddresses>> {
        let data = match self
            .scsi(STATUS_TIMEOUT_MS)
            .mode_sense(PAGE_ELEMENT_ADDRESS_ASSIGNMENT)
        {
            Ok(d) => d,
            Err(e) if e.is_not_supported() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(page) = data.page(PAGE_ELEMENT_ADDRESS_ASSIGNMENT) else {
            return Ok(None);
        };
        parse_element_addresses(page)
            .map(Some)
            .map_err(|detail| DeviceError::InvalidRequest {
                device: self.name.clone(),
                detail: format!("MODE SENSE returned a malformed page: {detail}"),
            })
    }

    /// INITIALIZE ELEMENT STATUS: the library checks every element (and
    /// scans barcodes). `Ok(false)` when it does not have the command.
    pub fn initialize_element_status(&self) -> DeviceResult<bool> {
        let cdb = [OP_INITIALIZE_ELEMENT_STATUS, 0, 0, 0, 0, 0];
        match self.execute(
            "INITIALIZE ELEMENT STATUS",
            &cdb,
            None,
            INITIALIZE_TIMEOUT_MS,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_supported() => Ok(false),
            Err(e) => Err(self.refused("initializing the element status".into(), e)),
        }
    }

    fn read_element_status_once(
        &self,
        ty: ElementType,
        start: u16,
        count: u16,
        volume_tags: bool,
        dvcid: bool,
    ) -> sg::SgResult<ElementReport> {
        let [s_hi, s_lo] = start.to_be_bytes();
        let [n_hi, n_lo] = count.to_be_bytes();
        let alloc = (STATUS_ALLOCATION as u32).to_be_bytes();
        let cdb = [
            OP_READ_ELEMENT_STATUS,
            (u8::from(volume_tags) << 4) | ty.code(),
            s_hi,
            s_lo,
            n_hi,
            n_lo,
            u8::from(dvcid),
            alloc[1],
            alloc[2],
            alloc[3],
            0,
            0,
        ];
        let command = "READ ELEMENT STATUS";
        let mut buf = vec![0u8; STATUS_ALLOCATION];
        let n = self.execute(command, &cdb, Some(&mut buf), STATUS_TIMEOUT_MS)?;
        buf.truncate(n);
        parse_element_status(&buf, dvcid).map_err(|detail| SgError::Malformed {
            device: self.name.clone(),
            command: command.to_string(),
            detail,
        })
    }

    /// Every element of one type, read in as many requests as it takes.
    pub fn read_elements(&self, ty: ElementType) -> DeviceResult<Vec<ElementStatus>> {
        let range = self.addresses.map(|a| a.range(ty));
        if range.is_some_and(|r| r.count == 0) {
            return Ok(Vec::new());
        }
        let want = range.map_or(usize::from(u16::MAX), |r| r.count as usize);
        let mut start = range.map_or(0, |r| r.first);
        // Ask for what the library may lack only once: barcodes always,
        // device identifiers for drives.
        let mut volume_tags = true;
        let mut dvcid = ty == ElementType::DataTransfer;
        let mut out: Vec<ElementStatus> = Vec::new();
        for _ in 0..MAX_STATUS_REQUESTS {
            let remaining = u16::try_from(want - out.len()).unwrap_or(u16::MAX);
            let report =
                match self.read_element_status_once(ty, start, remaining, volume_tags, dvcid) {
                    Ok(r) => r,
                    Err(e) if e.is_not_supported() && dvcid => {
                        dvcid = false;
                        continue;
                    }
                    Err(e) if e.is_not_supported() && volume_tags => {
                        volume_tags = false;
                        continue;
                    }
                    Err(e) => {
                        return Err(
                            self.refused(format!("reading the status of the {}s", ty.name()), e)
                        )
                    }
                };
            let mut truncated = report.truncated();
            let mut elements = report.elements;
            // A cut descriptor is read again whole from its own address,
            // unless it came first (no request can return it whole: tgt).
            if report.last_cut && elements.len() > 1 {
                elements.pop();
                truncated = true;
            }
            // Only elements of this type at or past `start`: a report that
            // goes backwards or repeats itself cannot loop.
            let fresh: Vec<ElementStatus> = elements
                .into_iter()
                .filter(|e| e.element_type == ty && e.address >= start)
                .collect();
            let Some(last) = fresh.iter().map(|e| e.address).max() else {
                break;
            };
            out.extend(fresh);
            if !truncated || out.len() >= want {
                break;
            }
            match last.checked_add(1) {
                Some(next) => start = next,
                None => break,
            }
        }
        out.sort_by_key(|e| e.address);
        out.dedup_by_key(|e| e.address);
        Ok(out)
    }

    /// Everything in the library.
    pub fn status(&self) -> DeviceResult<LibraryStatus> {
        Ok(LibraryStatus {
            changer: self.name.clone(),
            vendor: self.inquiry.vendor.clone(),
            product: self.inquiry.product.clone(),
            transports: self.read_elements(ElementType::MediumTransport)?,
            slots: self.read_elements(ElementType::Storage)?,
            mail_slots: self.read_elements(ElementType::ImportExport)?,
            drives: self.read_elements(ElementType::DataTransfer)?,
        })
    }

    /// MOVE MEDIUM from one element address to another; `status` names
    /// them in errors.
    pub fn move_medium(&self, status: &LibraryStatus, from: u16, to: u16) -> DeviceResult<()> {
        let transport = status.transports.first().map_or(0, |t| t.address);
        let [t_hi, t_lo] = transport.to_be_bytes();
        let [f_hi, f_lo] = from.to_be_bytes();
        let [d_hi, d_lo] = to.to_be_bytes();
        let cdb = [
            OP_MOVE_MEDIUM,
            0,
            t_hi,
            t_lo,
            f_hi,
            f_lo,
            d_hi,
            d_lo,
            0,
            0,
            0,
            0,
        ];
        let action = format!(
            "moving the cartridge from {} to {}",
            status.describe(from),
            status.describe(to)
        );
        tracing::info!(changer = %self.name, "{action}");
        self.execute("MOVE MEDIUM", &cdb, None, MOVE_TIMEOUT_MS)
            .map(|_| ())
            .map_err(|e| self.refused(action, e))
    }

    fn invalid(&self, detail: impl Into<String>) -> DeviceError {
        DeviceError::InvalidRequest {
            device: self.name.clone(),
            detail: detail.into(),
        }
    }

    fn drive_element<'s>(
        &self,
        status: &'s LibraryStatus,
        drive: usize,
    ) -> DeviceResult<&'s ElementStatus> {
        status.drives.get(drive).ok_or_else(|| {
            self.invalid(format!(
                "there is no drive {drive}; this library has {} (numbered from 0)",
                status.drives.len()
            ))
        })
    }

    fn slot_element<'s>(
        &self,
        status: &'s LibraryStatus,
        slot: usize,
    ) -> DeviceResult<&'s ElementStatus> {
        slot.checked_sub(1)
            .and_then(|i| status.slots.get(i))
            .ok_or_else(|| {
                self.invalid(format!(
                    "there is no slot {slot}; this library has slots 1 to {}",
                    status.slots.len()
                ))
            })
    }

    /// An empty slot for a cartridge coming back from `source`: the slot
    /// it came from when that is an empty slot, else the first empty one.
    fn home_for(&self, status: &LibraryStatus, source: Option<u16>) -> DeviceResult<u16> {
        let empty = |e: &&ElementStatus| !e.full;
        source
            .and_then(|s| status.slots.iter().find(|e| e.address == s))
            .filter(empty)
            .or_else(|| status.slots.iter().find(empty))
            .map(|e| e.address)
            .ok_or_else(|| self.invalid("every slot is full; export a cartridge first"))
    }

    /// Load the cartridge in `slot` (1-based) into `drive` (0-based),
    /// unloading what the drive holds first. Loading the cartridge the
    /// drive already holds from that slot does nothing.
    pub fn load(&self, slot: usize, drive: usize) -> DeviceResult<LibraryStatus> {
        let status = self.status()?;
        let from = self.slot_element(&status, slot)?.clone();
        let d = self.drive_element(&status, drive)?.clone();
        if !from.full {
            if d.full && d.source == Some(from.address) {
                return Ok(status);
            }
            return Err(self.invalid(format!("slot {slot} is empty; nothing to load")));
        }
        let status = if d.full {
            self.unload_drive(drive)?
        } else {
            status
        };
        self.move_medium(&status, from.address, d.address)?;
        self.status()
    }

    /// Load the cartridge with `barcode` into `drive`.
    pub fn load_barcode(&self, barcode: &str, drive: usize) -> DeviceResult<LibraryStatus> {
        let status = self.status()?;
        let d = self.drive_element(&status, drive)?;
        if d.full && d.barcode.as_deref() == Some(barcode) {
            return Ok(status);
        }
        match status.find(barcode) {
            Some(e) if e.element_type == ElementType::Storage => {
                let slot = status.slot_number(e.address).expect("a storage element");
                self.load(slot, drive)
            }
            Some(e) => Err(self.invalid(format!(
                "{barcode} is in {}, not in a slot; unload or import it first",
                status.describe(e.address)
            ))),
            None => Err(self.invalid(format!(
                "no cartridge with barcode {barcode:?} in this library"
            ))),
        }
    }

    /// Return the cartridge in `drive` to the slot it came from (or the
    /// first empty slot).
    pub fn unload_drive(&self, drive: usize) -> DeviceResult<LibraryStatus> {
        let status = self.status()?;
        let d = self.drive_element(&status, drive)?;
        if !d.full {
            return Err(self.invalid(format!("drive {drive} is empty; nothing to unload")));
        }
        let to = self.home_for(&status, d.source)?;
        self.move_medium(&status, d.address, to)?;
        self.status()
    }

    /// Move a cartridge from one slot to another (both 1-based).
    pub fn transfer(&self, from: usize, to: usize) -> DeviceResult<LibraryStatus> {
        let status = self.status()?;
        let f = self.slot_element(&status, from)?;
        let t = self.slot_element(&status, to)?;
        self.move_medium(&status, f.address, t.address)?;
        self.status()
    }

    /// Put the cartridge with `barcode` into an empty mail slot (from a
    /// drive, it goes straight there). Returns the mail slot (1-based).
    pub fn export(&self, barcode: &str) -> DeviceResult<(usize, LibraryStatus)> {
        let status = self.status()?;
        if status.mail_slots.is_empty() {
            return Err(DeviceError::Unsupported {
                device: self.name.clone(),
                what: "export (the library has no mail slot)".into(),
            });
        }
        let from = match status.find(barcode) {
            Some(e) if e.element_type == ElementType::ImportExport => {
                return Err(self.invalid(format!(
                    "{barcode} is already in {}",
                    status.describe(e.address)
                )))
            }
            Some(e) => e.address,
            None => {
                return Err(self.invalid(format!(
                    "no cartridge with barcode {barcode:?} in this library to export"
                )))
            }
        };
        let (i, mail) = status
            .mail_slots
            .iter()
            .enumerate()
            .find(|(_, e)| !e.full)
            .ok_or_else(|| self.invalid("every mail slot is full; empty it first"))?;
        self.move_medium(&status, from, mail.address)?;
        Ok((i + 1, self.status()?))
    }

    /// Move a cartridge an operator put into a mail slot (the one with
    /// `barcode`, or the first full one) into the first empty slot.
    /// Returns its barcode (if readable) and the slot (1-based).
    pub fn import(
        &self,
        barcode: Option<&str>,
    ) -> DeviceResult<(Option<String>, usize, LibraryStatus)> {
        let status = self.status()?;
        if status.mail_slots.is_empty() {
            return Err(DeviceError::Unsupported {
                device: self.name.clone(),
                what: "import (the library has no mail slot)".into(),
            });
        }
        let mail = status
            .mail_slots
            .iter()
            .find(|e| e.full && barcode.is_none_or(|b| e.barcode.as_deref() == Some(b)))
            .ok_or_else(|| match barcode {
                Some(b) => self.invalid(format!("no mail slot holds {b:?}")),
                None => self.invalid("every mail slot is empty; nothing to import"),
            })?;
        let to = self.home_for(&status, None)?;
        self.move_medium(&status, mail.address, to)?;
        let after = self.status()?;
        let slot = after.slot_number(to).expect("a storage element");
        Ok((mail.barcode.clone(), slot, after))
    }
}

impl Changer for ScsiChanger {
    fn inventory(&self) -> DeviceResult<ChangerInventory> {
        Ok(self.status()?.inventory(self.drive))
    }

    fn load_slot(&mut self, slot: usize) -> DeviceResult<()> {
        self.load(slot, self.drive).map(|_| ())
    }

    fn unload(&mut self) -> DeviceResult<()> {
        self.unload_drive(self.drive).map(|_| ())
    }
}

/// A failed command as a typed error: a refusal with its named
/// condition, or what the SG layer makes of it.
fn refused(device: &str, action: String, e: SgError) -> DeviceError {
    match e {
        SgError::CheckCondition { sense, .. } if !sense.deferred => DeviceError::ChangerRefused {
            device: device.to_string(),
            action,
            condition: sense.condition(),
        },
        other => other.into(),
    }
}

// ---- byte helpers ----

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be24(b: &[u8]) -> usize {
    (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An element status page (SMC-3 table 59): header, then descriptors
    /// of `len` bytes each.
    fn page(ty: u8, flags: u8, len: usize, descriptors: &[Vec<u8>]) -> Vec<u8> {
        let bytes = len * descriptors.len();
        let mut p = vec![ty, flags, (len >> 8) as u8, len as u8, 0];
        p.extend_from_slice(&(bytes as u32).to_be_bytes()[1..]);
        for d in descriptors {
            assert_eq!(d.len(), len, "descriptor laid out at the page's length");
            p.extend_from_slice(d);
        }
        p
    }

    /// The element status header (SMC-3 table 58) before `pages`.
    fn report(first: u16, available: u16, pages: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = pages.concat();
        let mut r = Vec::new();
        r.extend_from_slice(&first.to_be_bytes());
        r.extend_from_slice(&available.to_be_bytes());
        r.push(0);
        r.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        r.extend_from_slice(&body);
        r
    }

    /// The first 12 bytes of a descriptor: address, flags, ASC/ASCQ,
    /// medium type and source.
    fn base(address: u16, flags: u8, asc: (u8, u8), medium: u8, source: Option<u16>) -> Vec<u8> {
        let mut d = vec![0u8; 12];
        d[0..2].copy_from_slice(&address.to_be_bytes());
        d[2] = flags;
        d[4] = asc.0;
        d[5] = asc.1;
        d[9] = medium;
        if let Some(s) = source {
            d[9] |= 0x80;
            d[10..12].copy_from_slice(&s.to_be_bytes());
        }
        d
    }

    /// A primary volume tag: 32 bytes of space-padded identifier, 2
    /// reserved, 2 of volume sequence number.
    fn tag(barcode: &str) -> Vec<u8> {
        let mut t = format!("{barcode:<32}").into_bytes();
        t.extend_from_slice(&[0, 0, 0, 1]);
        t
    }

    /// A device identification descriptor (DVCID): code set, identifier
    /// type, reserved, length, identifier.
    fn ident(code_set: u8, kind: u8, id: &[u8]) -> Vec<u8> {
        let mut v = vec![code_set, kind, 0, id.len() as u8];
        v.extend_from_slice(id);
        v
    }

    fn t10_id(vendor: &str, product: &str, serial: &str) -> Vec<u8> {
        format!("{vendor:<8}{product:<16}{serial}").into_bytes()
    }

    #[test]
    fn element_address_assignment_page() {
        let mut p = vec![0x1D, 0x12];
        for v in [1u16, 1, 1000, 24, 10, 2, 500, 2] {
            p.extend_from_slice(&v.to_be_bytes());
        }
        p.extend_from_slice(&[0, 0]);
        let a = parse_element_addresses(&p).unwrap();
        assert_eq!(a.transports, ElementRange { first: 1, count: 1 });
        assert_eq!(
            a.slots,
            ElementRange {
                first: 1000,
                count: 24
            }
        );
        assert_eq!(
            a.mail_slots,
            ElementRange {
                first: 10,
                count: 2
            }
        );
        assert_eq!(
            a.drives,
            ElementRange {
                first: 500,
                count: 2
            }
        );
        assert_eq!(a.range(ElementType::DataTransfer).first, 500);
        assert!(parse_element_addresses(&p[..17]).is_err());
        let mut wrong = p.clone();
        wrong[0] = 0x1E;
        assert!(parse_element_addresses(&wrong)
            .unwrap_err()
            .contains("0x1e"));
    }

    #[test]
    fn storage_elements_with_volume_tags() {
        let len = 12 + 36 + 4;
        let full = [
            base(1000, 0x09, (0, 0), 1, Some(1000)),
            tag("TAP001L9"),
            vec![0; 4],
        ]
        .concat();
        let empty = [
            base(1001, 0x08, (0, 0), 0, None),
            vec![b' '; 32],
            vec![0; 8],
        ]
        .concat();
        let cleaning = [
            base(1002, 0x09, (0, 0), 2, None),
            tag("CLN001L1"),
            vec![0; 4],
        ]
        .concat();
        let b = report(1000, 3, &[page(2, 0x80, len, &[full, empty, cleaning])]);
        let r = parse_element_status(&b, false).unwrap();
        assert!(!r.truncated());
        let [a, e, c] = r.elements.as_slice() else {
            panic!("{:?}", r.elements)
        };
        assert_eq!(a.element_type, ElementType::Storage);
        assert_eq!((a.address, a.full, a.accessible), (1000, true, true));
        assert_eq!(a.barcode.as_deref(), Some("TAP001L9"));
        assert_eq!(a.source, Some(1000));
        assert_eq!(a.medium_type, MediumType::Data);
        assert!(!a.exception && a.condition.is_none());
        assert_eq!(
            (e.address, e.full, e.barcode.as_deref()),
            (1001, false, None)
        );
        assert_eq!(e.source, None);
        assert_eq!(c.medium_type, MediumType::Cleaning);
        assert_eq!(c.barcode.as_deref(), Some("CLN001L1"));
    }

    #[test]
    fn elements_without_volume_tags() {
        let b = report(
            1,
            2,
            &[page(
                2,
                0,
                12,
                &[base(1, 0x01, (0, 0), 0, None), base(2, 0, (0, 0), 0, None)],
            )],
        );
        let r = parse_element_status(&b, false).unwrap();
        assert_eq!(r.elements.len(), 2);
        assert!(r.elements.iter().all(|e| e.barcode.is_none()));
        assert!(r.elements[0].full && !r.elements[1].full);
    }

    #[test]
    fn drives_with_device_identifiers() {
        // Volume tag and DVCID: 12 + 36 + 4 + 34 = 86 bytes, as tgt lays out.
        let id = t10_id("IBM", "ULT3580-TD9", "1068000123");
        let loaded = [
            base(500, 0x09, (0, 0), 1, Some(1003)),
            tag("TAP004L9"),
            ident(2, 1, &id),
        ]
        .concat();
        let id2 = t10_id("IBM", "ULT3580-TD9", "1068000456");
        let empty = [
            base(501, 0x08, (0, 0), 0, None),
            vec![b' '; 32],
            vec![0; 4],
            ident(2, 1, &id2),
        ]
        .concat();
        let b = report(500, 2, &[page(4, 0x80, 86, &[loaded, empty])]);
        let r = parse_element_status(&b, true).unwrap();
        let [d0, d1] = r.elements.as_slice() else {
            panic!()
        };
        assert_eq!(d0.element_type, ElementType::DataTransfer);
        assert_eq!(d0.barcode.as_deref(), Some("TAP004L9"));
        assert_eq!(d0.source, Some(1003));
        let i0 = d0.identifier.as_ref().unwrap();
        assert_eq!(i0.vendor.as_deref(), Some("IBM"));
        assert_eq!(i0.product.as_deref(), Some("ULT3580-TD9"));
        assert_eq!(i0.serial.as_deref(), Some("1068000123"));
        assert!(!d1.full);
        assert_eq!(
            d1.identifier.as_ref().unwrap().serial.as_deref(),
            Some("1068000456")
        );
        // The same descriptors, parsed as if DVCID had not been asked for,
        // carry no identifier.
        assert!(parse_element_status(&b, false).unwrap().elements[0]
            .identifier
            .is_none());
    }

    #[test]
    fn device_identifier_without_volume_tags_and_bare_serials() {
        // DVCID only: the identifier follows the first 12 bytes.
        let d = [base(500, 0x08, (0, 0), 0, None), ident(2, 0, b"SERIAL-7  ")].concat();
        let b = report(500, 1, &[page(4, 0, d.len(), &[d])]);
        let e = &parse_element_status(&b, true).unwrap().elements[0];
        let i = e.identifier.as_ref().unwrap();
        assert_eq!(
            (i.serial.as_deref(), i.vendor.as_deref()),
            (Some("SERIAL-7"), None)
        );
        // Binary identifiers are shown in hex.
        let d = [
            base(500, 0, (0, 0), 0, None),
            ident(1, 3, &[0x50, 0x01, 0xAB]),
        ]
        .concat();
        let b = report(500, 1, &[page(4, 0, d.len(), &[d])]);
        let e = &parse_element_status(&b, true).unwrap().elements[0];
        assert_eq!(e.identifier.as_ref().unwrap().text, "5001ab");
        // An empty identifier is none.
        let d = [base(500, 0, (0, 0), 0, None), ident(2, 0, b"")].concat();
        let b = report(500, 1, &[page(4, 0, d.len(), &[d])]);
        assert!(parse_element_status(&b, true).unwrap().elements[0]
            .identifier
            .is_none());
    }

    #[test]
    fn mail_slots_transport_and_exceptions() {
        // Import/export: full, placed by an operator, in and out enabled.
        let imported = [
            base(10, 0x01 | 0x02 | 0x08 | 0x10 | 0x20, (0, 0), 1, None),
            tag("NEW001L9"),
        ]
        .concat();
        // Exported by the robot (IMPEXP clear), with an exception.
        let exported = [
            base(11, 0x01 | 0x04, (0x3B, 0x12), 1, Some(1000)),
            tag("TAP001L9"),
        ]
        .concat();
        let transport = [base(1, 0x00, (0, 0), 0, None), vec![b' '; 36]].concat();
        let b = report(
            1,
            3,
            &[
                page(1, 0x80, 48, &[transport]),
                page(3, 0x80, 48, &[imported, exported]),
            ],
        );
        let r = parse_element_status(&b, false).unwrap();
        let [t, i, x] = r.elements.as_slice() else {
            panic!()
        };
        assert_eq!(t.element_type, ElementType::MediumTransport);
        assert!(!t.full && !t.accessible);
        assert_eq!(i.element_type, ElementType::ImportExport);
        assert!(i.imported && i.import_enabled && i.export_enabled && i.accessible);
        assert_eq!(i.barcode.as_deref(), Some("NEW001L9"));
        assert!(!x.imported && x.exception);
        assert_eq!(x.condition, Some(Condition::MediumMagazineRemoved));
        assert_eq!(x.source, Some(1000));
    }

    #[test]
    fn alternate_volume_tags_are_skipped() {
        let d = [
            base(500, 0x01, (0, 0), 1, None),
            tag("PRIMARY1"),
            tag("ALTERNAT"),
            ident(2, 0, b"SN1"),
        ]
        .concat();
        let b = report(500, 1, &[page(4, 0xC0, d.len(), &[d])]);
        let e = &parse_element_status(&b, true).unwrap().elements[0];
        assert_eq!(e.barcode.as_deref(), Some("PRIMARY1"));
        assert_eq!(e.identifier.as_ref().unwrap().text, "SN1");
    }

    #[test]
    fn cut_reports_keep_only_whole_fields() {
        let ds: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                [
                    base(1000 + i, 1, (0, 0), 1, None),
                    tag(&format!("TAP{i:03}L9")),
                    vec![0; 4],
                ]
                .concat()
            })
            .collect();
        let b = report(1000, 5, &[page(2, 0x80, 52, &ds)]);
        // Cut 20 bytes into the third descriptor, as an allocation length
        // would: its first 12 bytes count, its cut volume tag does not.
        let cut = 8 + 8 + 52 * 2 + 20;
        let r = parse_element_status(&b[..cut], false).unwrap();
        assert_eq!(r.elements.len(), 3);
        assert!(r.truncated() && r.last_cut);
        assert_eq!(r.elements[1].barcode.as_deref(), Some("TAP001L9"));
        assert_eq!((r.elements[2].address, r.elements[2].full), (1002, true));
        assert_eq!(r.elements[2].barcode, None);
        // Fewer than 12 bytes of it: not an element.
        let r = parse_element_status(&b[..8 + 8 + 52 * 2 + 11], false).unwrap();
        assert_eq!(r.elements.len(), 2);
        assert!(r.truncated() && !r.last_cut);
        // tgt's way: 8 bytes short of its own byte count. The volume tag's
        // identifier is whole, so the barcode counts.
        let r = parse_element_status(&b[..b.len() - 8], false).unwrap();
        assert_eq!(r.elements.len(), 5);
        assert!(r.last_cut && !r.truncated());
        assert_eq!(r.elements[4].barcode.as_deref(), Some("TAP004L9"));
        // A drive's descriptor cut so: barcode kept, the cut identifier
        // dropped (a partial serial number would name another drive).
        let id = t10_id("IET", "VIRTUAL-TAPE", "beaf11    ");
        let d = [
            base(500, 1, (0, 0), 1, Some(1000)),
            tag("VM0002L9"),
            ident(2, 1, &id),
        ]
        .concat();
        let b = report(500, 1, &[page(4, 0x80, 86, &[d])]);
        let r = parse_element_status(&b[..b.len() - 8], true).unwrap();
        assert!(r.last_cut);
        assert_eq!(r.elements[0].barcode.as_deref(), Some("VM0002L9"));
        assert_eq!(r.elements[0].identifier, None);
        let whole = parse_element_status(&b, true).unwrap();
        assert_eq!(
            whole.elements[0]
                .identifier
                .as_ref()
                .unwrap()
                .serial
                .as_deref(),
            Some("beaf11")
        );
        // Headers alone.
        assert!(parse_element_status(&b[..7], false).is_err());
        assert!(parse_element_status(&b[..8], false)
            .unwrap()
            .elements
            .is_empty());
        assert!(parse_element_status(&b[..12], false)
            .unwrap()
            .elements
            .is_empty());
    }

    #[test]
    fn hostile_lengths_neither_panic_nor_allocate() {
        // Byte counts of 16 MiB over a few bytes: only what is there counts.
        let mut b = report(
            0,
            u16::MAX,
            &[page(
                2,
                0x80,
                52,
                &[[base(1, 1, (0, 0), 1, None), tag("A"), vec![0; 4]].concat()],
            )],
        );
        b[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        b[8 + 5..8 + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        let r = parse_element_status(&b, true).unwrap();
        assert_eq!(r.elements.len(), 1);
        assert!(r.truncated());
        // A descriptor length below 12 bytes is refused (no endless loop
        // over zero-length descriptors).
        for len in [0usize, 1, 11] {
            let mut p = page(2, 0, 12, &[base(1, 0, (0, 0), 0, None)]);
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            assert!(parse_element_status(&report(1, 1, &[p]), false).is_err());
        }
        // A descriptor length of 65535 with a few bytes: no element.
        let mut p = page(2, 0x80, 12, &[base(1, 1, (0, 0), 0, None)]);
        p[2..4].copy_from_slice(&[0xFF, 0xFF]);
        assert!(parse_element_status(&report(1, 1, &[p]), true)
            .unwrap()
            .elements
            .is_empty());
        // Volume tag and identifier flags on descriptors too short to hold
        // them: parsed without them.
        let p = page(4, 0xC0, 12, &[base(7, 1, (0, 0), 0, None)]);
        let e = &parse_element_status(&report(7, 1, &[p]), true)
            .unwrap()
            .elements[0];
        assert_eq!(
            (e.address, e.barcode.as_ref(), e.identifier.as_ref()),
            (7, None, None)
        );
        // An identifier length past the descriptor's end: no identifier.
        let d = [
            base(500, 0, (0, 0), 0, None),
            vec![2, 0, 0, 200],
            b"SN".to_vec(),
        ]
        .concat();
        let b = report(500, 1, &[page(4, 0, d.len(), &[d])]);
        let e = &parse_element_status(&b, true).unwrap().elements[0];
        assert_eq!((e.address, e.identifier.as_ref()), (500, None));
        // An unknown element type's page is skipped, the next one read.
        let bad = page(9, 0, 12, &[base(1, 1, (0, 0), 0, None)]);
        let good = page(2, 0, 12, &[base(2, 1, (0, 0), 0, None)]);
        let r = parse_element_status(&report(1, 2, &[bad, good]), false).unwrap();
        assert_eq!(r.elements.len(), 1);
        assert_eq!(r.elements[0].address, 2);
        // Garbage of every length up to a few hundred bytes never panics.
        let mut seed = 0x1234_5678u32;
        for n in 0..400 {
            let junk: Vec<u8> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = parse_element_status(&junk, true);
            let _ = parse_element_addresses(&junk);
        }
    }

    fn element(
        ty: ElementType,
        address: u16,
        barcode: Option<&str>,
        source: Option<u16>,
    ) -> ElementStatus {
        ElementStatus {
            element_type: ty,
            address,
            full: barcode.is_some(),
            accessible: true,
            exception: false,
            condition: None,
            imported: false,
            import_enabled: false,
            export_enabled: false,
            source,
            medium_type: MediumType::Data,
            barcode: barcode.map(str::to_string),
            identifier: None,
        }
    }

    #[test]
    fn library_status_names_elements_as_the_user_counts_them() {
        let mut drive = element(ElementType::DataTransfer, 500, Some("TAP002L9"), Some(1001));
        drive.identifier = parse_identifier(2, 1, &t10_id("HP", "Ultrium 9", "HU123"));
        let s = LibraryStatus {
            changer: "/dev/sg3".into(),
            vendor: "X".into(),
            product: "Y".into(),
            transports: vec![element(ElementType::MediumTransport, 1, None, None)],
            slots: vec![
                element(ElementType::Storage, 1000, Some("TAP001L9"), None),
                element(ElementType::Storage, 1001, None, None),
                element(ElementType::Storage, 1002, Some(""), None),
            ],
            mail_slots: vec![element(ElementType::ImportExport, 10, None, None)],
            drives: vec![drive],
        };
        assert_eq!(s.describe(1001), "slot 2");
        assert_eq!(s.describe(500), "drive 0");
        assert_eq!(s.describe(10), "mail slot 1");
        assert_eq!(s.describe(77), "element 77");
        assert_eq!(s.find("TAP002L9").unwrap().address, 500);
        assert_eq!(s.drive_with_serial("HU123"), Some(0));
        assert_eq!(s.drive_with_serial("nope"), None);
        let inv = s.inventory(0);
        assert_eq!(
            inv.slots,
            vec![
                (1, Some("TAP001L9".into())),
                (2, None),
                (3, Some(String::new()))
            ]
        );
        assert_eq!(inv.drive, Some(("TAP002L9".into(), 2)));
        assert_eq!(s.inventory(1).drive, None);
    }
}
