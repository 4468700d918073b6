//! Every CBOR structure of meta.rs and label.rs decoded from arbitrary bytes.
//! The first byte picks the structure; the rest is the CBOR. Whatever
//! decodes must re-encode and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapir::format::label::{RescueKit, SetMembership, VolumeLabel};
use tapir::format::meta::{
    from_cbor, to_cbor, CatalogEnd, CatalogEntry, CatalogHeader, Checkpoint, DeviceNumbers, Entry,
    EntryEnd, Extent, SessionEnd, SessionLink, SessionStart, StreamPosition, Timestamp, Xattr,
};
use tapir::format::setcat::{
    PageIndex, PageRef, SessionInfo, SetCatalogEnd, SetCatalogEntry, SetCatalogHeader, VolumeInfo,
};

/// Decode `$bytes` as `$t`; whatever decodes must re-encode to an equal value.
/// (A macro rather than a generic function, so this crate needs no direct
/// minicbor dependency for the trait bounds.)
macro_rules! round {
    ($t:ty, $bytes:expr) => {
        if let Ok(v) = from_cbor::<$t>($bytes) {
            let again = to_cbor(&v);
            let back: $t = from_cbor(&again).expect("re-encoded value decodes");
            assert_eq!(back, v);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 25 {
        0 => round!(Entry, rest),
        1 => round!(EntryEnd, rest),
        2 => round!(SessionStart, rest),
        3 => round!(Checkpoint, rest),
        4 => round!(SessionEnd, rest),
        5 => round!(CatalogHeader, rest),
        6 => round!(CatalogEntry, rest),
        7 => round!(CatalogEnd, rest),
        8 => round!(VolumeLabel, rest),
        9 => round!(SetMembership, rest),
        10 => round!(RescueKit, rest),
        11 => round!(Timestamp, rest),
        12 => round!(StreamPosition, rest),
        13 => round!(Xattr, rest),
        14 => round!(Extent, rest),
        15 => round!(DeviceNumbers, rest),
        16 => round!(SessionLink, rest),
        17 => round!(SetCatalogHeader, rest),
        18 => round!(VolumeInfo, rest),
        19 => round!(SessionInfo, rest),
        20 => round!(PageIndex, rest),
        21 => round!(PageRef, rest),
        22 => round!(SetCatalogEntry, rest),
        23 => round!(SetCatalogEnd, rest),
        _ => {
            if let Ok(e) = from_cbor::<Entry>(rest) {
                let _ = e.kind();
            }
        }
    }
});
