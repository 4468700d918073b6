//! The set catalog copy (FORMAT.md §13): every entry of a whole archive set
//! so far, the sessions they belong to and the cartridges of the set, sorted
//! by path and cut into pages so one path is found by reading the index and
//! one page.

use minicbor::{Decode, Encode};

use super::meta::{CatalogEntry, Timestamp};
use super::FormatError;

/// `SessionInfo.status` of a session that has no `SessionEnd` (a crash).
pub const SESSION_NO_END: u8 = 0xff;

/// Opens a set catalog stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SetCatalogHeader {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub set_uuid: [u8; 16],
    #[n(1)]
    pub set_name: String,
    /// `volume_seq` of the cartridge this copy is written on.
    #[n(2)]
    pub volume_seq: u32,
    #[n(3)]
    pub written: Timestamp,
    /// Number of `VolumeInfo`, `SessionInfo` and `SetCatalogEntry` records,
    /// and of pages, that follow.
    #[n(4)]
    pub volumes: u32,
    #[n(5)]
    pub sessions: u32,
    #[n(6)]
    pub entries: u64,
    #[n(7)]
    pub pages: u32,
    /// Present on a delta copy: it holds only the entries of the sessions
    /// after its base copy (the inventory is always whole).
    #[n(8)]
    pub base: Option<CopyBase>,
}

/// The copy a delta copy extends, on the same cartridge.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct CopyBase {
    #[n(0)]
    pub tape_file: u32,
    /// Session number whose blocks the base copy carries.
    #[n(1)]
    pub session: u32,
    /// The base copy's `SetCatalogEnd.digest`.
    #[cbor(n(2), with = "minicbor::bytes")]
    pub digest: [u8; 32],
    /// Deltas between this copy and a whole one (1: the base is whole).
    #[n(3)]
    pub depth: u32,
}

/// One cartridge of the set: the media inventory.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct VolumeInfo {
    #[n(0)]
    pub volume_seq: u32,
    #[cbor(n(1), with = "minicbor::bytes")]
    pub volume_uuid: [u8; 16],
    /// Label (barcode).
    #[n(2)]
    pub label: String,
    #[n(3)]
    pub pool: String,
    /// Where the cartridge was last known to be, in words
    /// ("library vtape:/srv/lib slot 4", "shelf B3", "vault Iron Mountain").
    #[n(4)]
    pub location: Option<String>,
    #[n(5)]
    pub location_at: Option<Timestamp>,
    /// The cartridge was filled (the set continues on the next one).
    #[n(6)]
    pub full: bool,
    /// From its label, so a host catalog rebuilt from this copy knows the
    /// cartridge as well as if it had read it.
    #[n(7)]
    pub labelled: Option<Timestamp>,
    #[n(8)]
    pub block_size: Option<u32>,
    #[cbor(n(9), with = "minicbor::bytes")]
    pub previous_volume: Option<[u8; 16]>,
    #[n(10)]
    pub host: Option<String>,
    /// Writing stopped on this cartridge after this drive error
    /// (FORMAT.md §12.5): only entries up to its last durable checkpoint
    /// are listed for it.
    #[n(11)]
    pub write_error: Option<String>,
}

impl VolumeInfo {
    /// What a copy says of the cartridge labelled `label`.
    pub fn of_label(label: &super::label::VolumeLabel) -> Self {
        let set = label.set.as_ref();
        VolumeInfo {
            volume_seq: set.map_or(0, |m| m.volume_seq),
            volume_uuid: label.volume_uuid,
            label: label.label.clone(),
            pool: label.pool.clone(),
            location: None,
            location_at: None,
            full: false,
            labelled: Some(label.labelled),
            block_size: Some(label.block_size),
            previous_volume: set.and_then(|m| m.previous_volume),
            host: Some(label.host.clone()),
            write_error: None,
        }
    }
}

/// One session part of the set (one per cartridge a session touches).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SessionInfo {
    /// Index of this session in the copy (0, 1, ...); entries refer to it.
    #[n(0)]
    pub index: u32,
    #[cbor(n(1), with = "minicbor::bytes")]
    pub session_uuid: [u8; 16],
    #[n(2)]
    pub volume_seq: u32,
    /// Session number on that cartridge.
    #[n(3)]
    pub session: u32,
    #[n(4)]
    pub data_tape_file: u32,
    #[n(5)]
    pub started: Timestamp,
    #[n(6)]
    pub ended: Option<Timestamp>,
    /// `SessionEnd.status`, or `SESSION_NO_END`.
    #[n(7)]
    pub status: u8,
    #[n(8)]
    pub entries: u64,
    /// Index of the session part this one continues (spanning).
    #[n(9)]
    pub continues: Option<u32>,
    #[n(10)]
    pub host: String,
    /// The job that wrote the session, as in its `SessionStart`.
    #[n(11)]
    pub job: Option<crate::format::meta::JobRun>,
}

/// Where one page starts and the first path on it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(array)]
pub struct PageRef {
    #[cbor(n(0), with = "minicbor::bytes")]
    pub first_path: Vec<u8>,
    /// `block_seq` of the page's first block in this tape file.
    #[n(1)]
    pub block: u64,
    #[n(2)]
    pub entries: u32,
}

/// Part of the page index (a long index is split over several records).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PageIndex {
    #[n(0)]
    pub pages: Vec<PageRef>,
}

/// One entry of the set: which session part it is in, and its catalog
/// record (its `position` is within that session's cartridge).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SetCatalogEntry {
    #[n(0)]
    pub session: u32,
    #[n(1)]
    pub entry: CatalogEntry,
}

/// Closes a set catalog stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SetCatalogEnd {
    #[n(0)]
    pub entries: u64,
    /// BLAKE3 over the bodies of all `SetCatalogEntry` records, in order.
    #[cbor(n(1), with = "minicbor::bytes")]
    pub digest: [u8; 32],
}

/// The order of a set catalog: paths compared component by component
/// (`a/b` before `a.txt`), which is the order of a sorted tree walk.
/// Equal to byte order once `/` counts as the lowest byte.
pub fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}

/// Most `PageRef`s one `PageIndex` record holds; a longer index is split
/// over several records.
pub const PAGE_INDEX_MAX_REFS: usize = 4096;

/// Is `path` the directory `dir` itself or something under it? The empty
/// `dir` (the archive root) holds everything. Such paths are one contiguous
/// range in `path_order`, starting at `dir`.
pub fn path_in_subtree(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || (path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/'))
}

/// Append the CBOR body of a `SetCatalogEntry { session, entry }` to `out`
/// without copying the entry: the same bytes as `to_cbor` of the struct.
pub fn encode_set_catalog_entry(session: u32, entry: &CatalogEntry, out: &mut Vec<u8>) {
    let mut enc = minicbor::Encoder::new(out);
    enc.map(2)
        .and_then(|e| e.u8(0))
        .and_then(|e| e.u32(session))
        .and_then(|e| e.u8(1))
        .and_then(|e| e.encode(entry))
        .expect("encoding to a Vec cannot fail");
}

/// Decode a `PageIndex` body, refusing more than `max_refs` page references
/// before decoding them (a hostile record cannot make the reader allocate
/// more than that).
pub fn decode_page_index(body: &[u8], max_refs: usize) -> Result<Vec<PageRef>, FormatError> {
    use minicbor::data::Type;
    let mut d = minicbor::Decoder::new(body);
    let mut pages: Option<Vec<PageRef>> = None;
    let len = d.map()?;
    let mut i = 0u64;
    loop {
        match len {
            Some(n) if i >= n => break,
            None if d.datatype()? == Type::Break => {
                d.skip()?;
                break;
            }
            _ => {}
        }
        i += 1;
        if d.i64()? != 0 {
            d.skip()?;
            continue;
        }
        if pages.is_some() {
            return Err(FormatError::Invalid("PageIndex has key 0 twice".into()));
        }
        let too_many = |n: u64| FormatError::TooLong {
            what: "PageIndex page references",
            len: n,
            limit: max_refs as u64,
        };
        let n = d.array()?;
        if let Some(n) = n {
            if n > max_refs as u64 {
                return Err(too_many(n));
            }
        }
        let mut v = Vec::new();
        loop {
            match n {
                Some(n) if v.len() as u64 >= n => break,
                None if d.datatype()? == Type::Break => {
                    d.skip()?;
                    break;
                }
                _ => {}
            }
            if v.len() >= max_refs {
                return Err(too_many(v.len() as u64 + 1));
            }
            v.push(d.decode::<PageRef>()?);
        }
        pages = Some(v);
    }
    pages.ok_or_else(|| FormatError::Invalid("PageIndex without its pages (key 0)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_order_puts_children_before_siblings_with_longer_names() {
        let mut v: Vec<&[u8]> = vec![b"a.txt", b"a/b", b"a", b"a/b/c", b"a-b", b"b"];
        v.sort_by(|x, y| path_order(x, y));
        assert_eq!(v, vec![&b"a"[..], b"a/b", b"a/b/c", b"a-b", b"a.txt", b"b"]);
    }

    fn entry(path: &[u8]) -> CatalogEntry {
        CatalogEntry {
            path: path.to_vec(),
            kind: 1,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            user: Some("u".into()),
            group: None,
            mtime: Timestamp { sec: 5, nsec: 6 },
            size: 42,
            link_target: None,
            position: crate::format::meta::StreamPosition {
                tape_file: 2,
                block: 7,
                offset: 9,
            },
            blake3: Some([3; 32]),
            status: 0,
            device: None,
            continued_from: Some(4),
        }
    }

    #[test]
    fn entry_encoder_matches_the_derived_encoding() {
        let e = entry(b"a/b");
        let mut out = vec![0xAA];
        encode_set_catalog_entry(70000, &e, &mut out);
        let want = crate::format::meta::to_cbor(&SetCatalogEntry {
            session: 70000,
            entry: e,
        });
        assert_eq!(out[0], 0xAA);
        assert_eq!(&out[1..], &want[..]);
    }

    #[test]
    fn page_index_decoding_is_bounded() {
        let r = |p: &[u8], b: u64| PageRef {
            first_path: p.to_vec(),
            block: b,
            entries: 3,
        };
        let idx = PageIndex {
            pages: vec![r(b"a", 1), r(b"b", 5), r(b"c", 9)],
        };
        let body = crate::format::meta::to_cbor(&idx);
        assert_eq!(decode_page_index(&body, 3).unwrap(), idx.pages);
        assert!(matches!(
            decode_page_index(&body, 2),
            Err(FormatError::TooLong { len: 3, .. })
        ));
        // Indefinite lengths, and an unknown key, are accepted up to the bound.
        let mut indef = vec![0xBF, 0x05, 0x01, 0x00, 0x9F];
        for p in &idx.pages {
            indef.extend_from_slice(&crate::format::meta::to_cbor(p));
        }
        indef.extend_from_slice(&[0xFF, 0xFF]);
        assert_eq!(decode_page_index(&indef, 3).unwrap(), idx.pages);
        assert!(decode_page_index(&indef, 2).is_err());
        // A claimed length far beyond the body is refused before allocating.
        let huge = [0xA1, 0x00, 0x9B, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(decode_page_index(&huge, 4096).is_err());
    }

    #[test]
    fn subtree_membership() {
        assert!(path_in_subtree(b"a", b"a"));
        assert!(path_in_subtree(b"a/b", b"a"));
        assert!(!path_in_subtree(b"ab", b"a"));
        assert!(!path_in_subtree(b"a.txt", b"a"));
        assert!(!path_in_subtree(b"b", b"a"));
        assert!(path_in_subtree(b"anything", b""));
    }
}
