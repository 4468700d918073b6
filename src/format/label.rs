//! The volume label: tape file 0, one block (FORMAT.md §4).
//!
//! The block starts with plain UTF-8 text for a human with `dd`, padded with
//! NUL bytes to `LABEL_TEXT_AREA`; a framed block (header + CBOR label) follows.

use minicbor::{Decode, Encode};

use super::block::{BlockHeader, BlockKind, BLOCK_HEADER_LEN, NO_RECORD_START};
use super::meta::{from_cbor, to_cbor, Timestamp};
use super::{FormatError, FORMAT_VERSION};

/// Bytes reserved for the human-readable text at the start of the label block.
pub const LABEL_TEXT_AREA: usize = 16 * 1024;
/// The first line of every tapir label; identifies a tapir volume by eye and by code.
pub const LABEL_TEXT_MAGIC: &str = "TAPIR VOLUME LABEL";
/// Largest CBOR label a v1 reader accepts.
pub const MAX_LABEL_CBOR: usize = 32 * 1024;

/// Membership of a cartridge in an archive set.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SetMembership {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub set_uuid: [u8; 16],
    #[n(1)]
    pub set_name: String,
    /// 1 for the first cartridge of the set.
    #[n(2)]
    pub volume_seq: u32,
    #[cbor(n(3), with = "minicbor::bytes")]
    pub previous_volume: Option<[u8; 16]>,
    #[n(4)]
    pub joined: Timestamp,
    #[n(5)]
    pub host: String,
}

/// Largest rescue kit binary a reader extracts (FORMAT.md §10.1).
pub const MAX_RESCUE_BINARY: u64 = 512 << 20;
/// Longest `binary_version` a writer records (FORMAT.md §4.3).
pub const MAX_BINARY_VERSION: usize = 256;

/// What tape file 1 (the rescue kit) holds on this cartridge (FORMAT.md §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RescueKit {
    /// Tape file 1 starts with the text of FORMAT.md.
    #[n(0)]
    pub format_spec: bool,
    /// A static tapir binary follows it.
    #[n(1)]
    pub binary: bool,
    /// The first line the binary prints for `--version`.
    #[n(2)]
    pub binary_version: Option<String>,
    #[cbor(n(3), with = "minicbor::bytes")]
    pub binary_blake3: Option<[u8; 32]>,
    #[n(4)]
    pub binary_size: Option<u64>,
    /// Its first block in tape file 1 (the number of blocks of FORMAT.md).
    #[n(5)]
    pub binary_first_block: Option<u32>,
}

/// A rescue kit binary as the label describes it, when the description is
/// complete and within bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitBinary {
    pub version: String,
    pub blake3: [u8; 32],
    pub size: u64,
    pub first_block: u32,
}

impl RescueKit {
    /// What tapir writes when the kit is left out: one block of text.
    pub fn left_out() -> RescueKit {
        RescueKit {
            format_spec: false,
            binary: false,
            binary_version: None,
            binary_blake3: None,
            binary_size: None,
            binary_first_block: None,
        }
    }

    /// FORMAT.md alone.
    pub fn spec_only() -> RescueKit {
        RescueKit {
            format_spec: true,
            ..RescueKit::left_out()
        }
    }

    /// FORMAT.md, then a binary starting at block `first_block`.
    pub fn with_binary(first_block: u32, binary: &KitBinary) -> RescueKit {
        RescueKit {
            format_spec: true,
            binary: true,
            binary_version: Some(binary.version.clone()),
            binary_blake3: Some(binary.blake3),
            binary_size: Some(binary.size),
            binary_first_block: Some(first_block),
        }
    }

    /// The binary, when `binary` is true and fully described (FORMAT.md
    /// §2.2: an incomplete description describes no usable binary).
    pub fn kit_binary(&self) -> Option<KitBinary> {
        if !self.binary {
            return None;
        }
        let size = self
            .binary_size
            .filter(|&s| s > 0 && s <= MAX_RESCUE_BINARY)?;
        Some(KitBinary {
            version: self.binary_version.clone()?,
            blake3: self.binary_blake3?,
            size,
            first_block: self.binary_first_block?,
        })
    }
}

/// The machine-readable identity of a cartridge.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct VolumeLabel {
    #[n(0)]
    pub format_version: u16,
    #[cbor(n(1), with = "minicbor::bytes")]
    pub volume_uuid: [u8; 16],
    /// The label or barcode, e.g. `TPR001L9`.
    #[n(2)]
    pub label: String,
    #[n(3)]
    pub pool: String,
    #[n(4)]
    pub labelled: Timestamp,
    #[n(5)]
    pub host: String,
    /// Size of every block tapir writes after the label, header included.
    #[n(6)]
    pub block_size: u32,
    #[n(7)]
    pub set: Option<SetMembership>,
    #[n(8)]
    pub rescue_kit: RescueKit,
    #[n(9)]
    pub worm: bool,
    #[n(10)]
    pub tapir_version: String,
}

impl VolumeLabel {
    /// The set identity every block of this cartridge carries: zeros for a
    /// blank labelled cartridge that has joined no set yet.
    pub fn set_uuid(&self) -> [u8; 16] {
        self.set.as_ref().map(|s| s.set_uuid).unwrap_or([0; 16])
    }
}

/// Encoding and decoding of the whole label block.
pub struct LabelBlock;

impl LabelBlock {
    /// The text a stranger sees with `dd if=/dev/nst0 bs=1M count=1 | head -c 4096`.
    pub fn text(label: &VolumeLabel) -> String {
        let uuid = uuid_text(&label.volume_uuid);
        let (set_line, vol_line) = match &label.set {
            Some(s) => (
                format!("Set:          {} ({})", s.set_name, uuid_text(&s.set_uuid)),
                format!(
                    "Volume:       {} of the set (joined {} on {})",
                    s.volume_seq,
                    ts_text(s.joined),
                    s.host
                ),
            ),
            None => (
                "Set:          none yet (blank labelled cartridge)".to_string(),
                "Volume:       -".to_string(),
            ),
        };
        let bs = label.block_size;
        let binary = label.rescue_kit.kit_binary();
        let kit = match (label.rescue_kit.format_spec, &binary) {
            (true, Some(_)) => "the format specification (FORMAT.md) and a static tapir binary",
            (true, None) => {
                "the format specification (FORMAT.md); no tapir binary on this cartridge"
            }
            (false, _) => "left out on this cartridge (one block of text says so)",
        };
        let how = match (label.rescue_kit.format_spec, &binary) {
            (true, Some(b)) => kit_binary_text(bs, b),
            (true, None) => format!(
                "\x20 the spec:       mt -f /dev/nst0 rewind; mt -f /dev/nst0 fsf 1; dd if=/dev/nst0 bs={bs} > FORMAT.md\n"
            ),
            (false, _) => String::new(),
        };
        format!(
            "{LABEL_TEXT_MAGIC} (format v{ver})\n\
             This cartridge was written by tapir, a tape archiver. It is self-describing.\n\
             \n\
             Label:        {lab}\n\
             Volume UUID:  {uuid}\n\
             Pool:         {pool}\n\
             {set_line}\n\
             {vol_line}\n\
             Labelled:     {when} on host {host}\n\
             Block size:   {bs} bytes (read with a buffer at least this large)\n\
             Written by:   tapir {tv}\n\
             \n\
             Layout: tape file 0 is this label. Tape file 1 is the rescue kit: {kit}.\n\
             Then each write session is three tape files: its data, its catalog, and a catalog of\n\
             the whole set so far.\n\
             \n\
             To restore without tapir's host catalog:\n\
             \x20 with tapir:     tapir --device /dev/nst0 list ; tapir --device /dev/nst0 restore --to /restore\n\
             {how}\
             \x20 every block of a session starts with a 64-byte header (magic TAPIRBLK, CRC-32)\n\
             \x20 and the spec describes every byte, so a new reader can be written from it.\n\
             \n\
             The machine-readable label follows at byte offset {off} of this block.\n",
            ver = label.format_version,
            lab = label.label,
            pool = label.pool,
            when = ts_text(label.labelled),
            host = label.host,
            tv = label.tapir_version,
            off = LABEL_TEXT_AREA,
        )
    }

    /// Build the label block: text, NUL padding, framed CBOR label.
    pub fn encode(label: &VolumeLabel) -> Vec<u8> {
        let mut text = Self::text(label).into_bytes();
        // The text area is fixed; a label text never legitimately exceeds it.
        text.truncate(LABEL_TEXT_AREA);
        text.resize(LABEL_TEXT_AREA, 0);
        let cbor = to_cbor(label);
        let header = BlockHeader {
            version: FORMAT_VERSION,
            kind: BlockKind::Label,
            flags: super::block::FLAG_LAST_IN_FILE,
            set_uuid: label.set_uuid(),
            volume_seq: label.set.as_ref().map(|s| s.volume_seq).unwrap_or(0),
            tape_file: 0,
            block_seq: 0,
            payload_len: cbor.len() as u32,
            first_record: NO_RECORD_START,
            session: 0,
        };
        let mut framed = Vec::with_capacity(BLOCK_HEADER_LEN + cbor.len());
        header.encode_block(&cbor, &mut framed);
        text.extend_from_slice(&framed);
        text
    }

    /// Does this block look like a tapir label (by its text magic)?
    pub fn looks_like_label(block: &[u8]) -> bool {
        block.starts_with(LABEL_TEXT_MAGIC.as_bytes())
    }

    /// Parse a label block read from tape file 0.
    pub fn decode(block: &[u8]) -> Result<VolumeLabel, FormatError> {
        if !Self::looks_like_label(block) {
            return Err(FormatError::BadMagic);
        }
        if block.len() <= LABEL_TEXT_AREA {
            return Err(FormatError::Truncated {
                needed: LABEL_TEXT_AREA + BLOCK_HEADER_LEN,
                found: block.len(),
            });
        }
        let (header, payload) = BlockHeader::decode(&block[LABEL_TEXT_AREA..])?;
        if header.kind != BlockKind::Label {
            return Err(FormatError::Invalid(format!(
                "label block has kind {:?}",
                header.kind
            )));
        }
        if payload.len() > MAX_LABEL_CBOR {
            return Err(FormatError::TooLong {
                what: "label",
                len: payload.len() as u64,
                limit: MAX_LABEL_CBOR as u64,
            });
        }
        let label: VolumeLabel = from_cbor(payload)?;
        if label.block_size < super::MIN_BLOCK_SIZE || label.block_size > super::MAX_BLOCK_SIZE {
            return Err(FormatError::Invalid(format!(
                "label block size {} outside {}..={}",
                label.block_size,
                super::MIN_BLOCK_SIZE,
                super::MAX_BLOCK_SIZE
            )));
        }
        Ok(label)
    }
}

/// The kit's layout, checksum and the `mt`/`dd` command lines that get it
/// off the tape (FORMAT.md §2.2), for the label text.
fn kit_binary_text(bs: u32, b: &KitBinary) -> String {
    let first = b.first_block;
    let blocks = b.size.div_ceil(u64::from(bs));
    let last = u64::from(first) + blocks - 1;
    let spec = match first {
        0 => String::new(),
        n => format!("\x20                 FORMAT.md  blocks 0 to {}\n", n - 1),
    };
    format!(
        "\x20 the kit:        tape file 1, in blocks of {bs} bytes (read them with dd bs={bs}):\n\
         {spec}\
         \x20                 tapir      blocks {first} to {last}: {version}, {size} bytes,\n\
         \x20                            BLAKE3 {hash}\n\
         \x20 get the kit with mt and dd alone:\n\
         \x20   mt -f /dev/nst0 rewind; mt -f /dev/nst0 setblk 0; mt -f /dev/nst0 fsf 1\n\
         \x20   dd if=/dev/nst0 bs={bs} count={first} > FORMAT.md\n\
         \x20   mt -f /dev/nst0 rewind; mt -f /dev/nst0 fsf 1; mt -f /dev/nst0 fsr {first}\n\
         \x20   dd if=/dev/nst0 bs={bs} | head -c {size} > tapir; chmod +x tapir\n\
         \x20   ./tapir --version; b3sum tapir    (compare with the lines above)\n\
         \x20   ./tapir --device /dev/nst0 restore --to /restore\n",
        version = b.version,
        size = b.size,
        hash = blake3::Hash::from_bytes(b.blake3).to_hex(),
    )
}

/// Canonical 8-4-4-4-12 hex form of a UUID.
pub fn uuid_text(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

/// RFC 3339 UTC text of a timestamp.
pub fn ts_text(t: Timestamp) -> String {
    match jiff::Timestamp::new(t.sec, t.nsec as i32) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => format!("{}s", t.sec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> VolumeLabel {
        VolumeLabel {
            format_version: 1,
            volume_uuid: [1; 16],
            label: "TPR001L9".into(),
            pool: "default".into(),
            labelled: Timestamp {
                sec: 1_790_000_000,
                nsec: 5,
            },
            host: "backup01".into(),
            block_size: 256 * 1024,
            set: None,
            rescue_kit: RescueKit::spec_only(),
            worm: false,
            tapir_version: "0.1.0".into(),
        }
    }

    fn sample_binary() -> KitBinary {
        KitBinary {
            version: "tapir 0.1.0".into(),
            blake3: *blake3::hash(b"tapir").as_bytes(),
            size: 13_009_112,
            first_block: 1,
        }
    }

    #[test]
    fn label_text_tells_how_to_get_the_binary_off_the_tape() {
        let mut l = sample();
        l.rescue_kit = RescueKit::with_binary(1, &sample_binary());
        let block = LabelBlock::encode(&l);
        assert_eq!(LabelBlock::decode(&block).unwrap(), l);
        let text = LabelBlock::text(&l);
        assert!(text.len() < 4096, "text is {} bytes", text.len());
        // 13009112 bytes in 262144-byte blocks: 50 blocks, 1 to 50.
        assert!(text.contains("tapir      blocks 1 to 50: tapir 0.1.0, 13009112 bytes"));
        assert!(text.contains(&blake3::hash(b"tapir").to_hex().to_string()));
        assert!(text.contains("mt -f /dev/nst0 fsr 1\n"));
        assert!(text.contains("dd if=/dev/nst0 bs=262144 count=1 > FORMAT.md"));
        assert!(text.contains("dd if=/dev/nst0 bs=262144 | head -c 13009112 > tapir"));
    }

    #[test]
    fn label_text_says_when_there_is_no_binary_or_no_kit() {
        let mut l = sample();
        assert!(LabelBlock::text(&l).contains("no tapir binary on this cartridge"));
        l.rescue_kit = RescueKit::left_out();
        let text = LabelBlock::text(&l);
        assert!(text.contains("Tape file 1 is the rescue kit: left out on this cartridge"));
        assert!(!text.contains("FORMAT.md >") && !text.contains("> FORMAT.md"));
    }

    #[test]
    fn an_incomplete_binary_description_describes_no_binary() {
        let mut kit = RescueKit::with_binary(1, &sample_binary());
        assert_eq!(kit.kit_binary(), Some(sample_binary()));
        kit.binary_size = None;
        assert_eq!(kit.kit_binary(), None);
        let mut huge = RescueKit::with_binary(1, &sample_binary());
        huge.binary_size = Some(MAX_RESCUE_BINARY + 1);
        assert_eq!(huge.kit_binary(), None);
        // A label of an older tapir (keys 0 to 3 only) still decodes.
        let old = to_cbor(&RescueKit::spec_only());
        assert_eq!(
            from_cbor::<RescueKit>(&old).unwrap(),
            RescueKit::spec_only()
        );
    }

    #[test]
    fn label_round_trips_and_text_fits_what_head_shows() {
        let l = sample();
        let block = LabelBlock::encode(&l);
        assert_eq!(LabelBlock::decode(&block).unwrap(), l);
        let text = LabelBlock::text(&l);
        assert!(text.len() < 4096, "text is {} bytes", text.len());
        assert!(text.contains("TPR001L9") && text.contains("backup01"));
    }

    #[test]
    fn corrupt_label_is_rejected() {
        let mut block = LabelBlock::encode(&sample());
        let last = block.len() - 1;
        block[last] ^= 0x40;
        assert!(matches!(
            LabelBlock::decode(&block),
            Err(FormatError::CrcMismatch { .. })
        ));
    }
}
