//! The set catalog copy (FORMAT.md §13): every entry of a whole archive set
//! so far, the sessions they belong to and the cartridges of the set, sorted
//! by path and cut into pages so one path is found by reading the index and
//! one page.

use minicbor::{Decode, Encode};

use super::meta::{CatalogEntry, Timestamp};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_order_puts_children_before_siblings_with_longer_names() {
        let mut v: Vec<&[u8]> = vec![b"a.txt", b"a/b", b"a", b"a/b/c", b"a-b", b"b"];
        v.sort_by(|x, y| path_order(x, y));
        assert_eq!(v, vec![&b"a"[..], b"a/b", b"a/b/c", b"a-b", b"a.txt", b"b"]);
    }
}
