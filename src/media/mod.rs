//! Media policy: pure decisions about cartridges, taking what is known and
//! returning a verdict with its reason. No I/O here, so every rule is
//! testable and a dry run costs nothing.

pub mod plan;

/// What is on a cartridge offered to continue a set, as read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Nothing recorded at all.
    Blank { barcode: Option<String> },
    /// Data that is not a tapir label.
    Foreign { what: String },
    Tapir {
        label: String,
        pool: String,
        /// Set name and volume sequence number, if it belongs to a set.
        set: Option<(String, u32)>,
        /// Tape files after the label and rescue kit.
        holds_data: bool,
        block_size: u32,
    },
}

/// The cartridge a spanning job needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinuationNeed {
    pub pool: String,
    pub set_name: String,
    pub volume_seq: u32,
    /// The set's block size: every cartridge of a set uses the same.
    pub block_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Use it as it is (a labelled, empty cartridge of the pool).
    Use,
    /// Blank: label it with this name in the needed pool, then use it.
    LabelThenUse { label: String },
    /// Do not touch it.
    Refuse { reason: String },
}

/// May `offered` become volume `need.volume_seq` of the set? Only empty
/// cartridges qualify: a cartridge holding anything (another set's data, an
/// unexpired volume, foreign data) is never overwritten by a continuation.
pub fn accept_for_continuation(
    offered: &Offered,
    write_protected: bool,
    need: &ContinuationNeed,
) -> Verdict {
    if write_protected {
        return Verdict::Refuse {
            reason: "it is write-protected".into(),
        };
    }
    match offered {
        Offered::Blank { barcode: Some(b) } => Verdict::LabelThenUse { label: b.clone() },
        Offered::Blank { barcode: None } => Verdict::Refuse {
            reason:
                "it is blank and has no barcode to label it with; label it first (`tapir label`)"
                    .into(),
        },
        Offered::Foreign { what } => Verdict::Refuse {
            reason: format!("it holds data that is not tapir's ({what})"),
        },
        Offered::Tapir {
            label,
            set: Some((set, seq)),
            ..
        } => Verdict::Refuse {
            reason: format!("{label} is volume {seq} of set \"{set}\""),
        },
        Offered::Tapir {
            label,
            holds_data: true,
            ..
        } => Verdict::Refuse {
            reason: format!("{label} holds data"),
        },
        Offered::Tapir { label, pool, .. } if *pool != need.pool => Verdict::Refuse {
            reason: format!(
                "{label} is in pool \"{pool}\", the set needs pool \"{}\"",
                need.pool
            ),
        },
        Offered::Tapir {
            label, block_size, ..
        } if *block_size != need.block_size => Verdict::Refuse {
            reason: format!(
                "{label} was labelled with {block_size}-byte blocks, the set uses {}",
                need.block_size
            ),
        },
        Offered::Tapir { .. } => Verdict::Use,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need() -> ContinuationNeed {
        ContinuationNeed {
            pool: "daily".into(),
            set_name: "web".into(),
            volume_seq: 2,
            block_size: 262144,
        }
    }

    fn tapir(pool: &str, set: Option<(&str, u32)>, holds_data: bool) -> Offered {
        Offered::Tapir {
            label: "T2".into(),
            pool: pool.into(),
            set: set.map(|(s, n)| (s.into(), n)),
            holds_data,
            block_size: 262144,
        }
    }

    #[test]
    fn an_empty_labelled_cartridge_of_the_pool_is_used() {
        assert_eq!(
            accept_for_continuation(&tapir("daily", None, false), false, &need()),
            Verdict::Use
        );
    }

    #[test]
    fn anything_holding_data_or_elsewhere_is_refused() {
        for (offered, wp, why) in [
            (tapir("daily", None, false), true, "write-protected"),
            (tapir("weekly", None, false), false, "pool \"weekly\""),
            (tapir("daily", Some(("web", 1)), false), false, "volume 1"),
            (
                tapir("daily", Some(("other", 3)), true),
                false,
                "set \"other\"",
            ),
            (tapir("daily", None, true), false, "holds data"),
            (
                Offered::Foreign {
                    what: "a tar archive".into(),
                },
                false,
                "tar archive",
            ),
            (Offered::Blank { barcode: None }, false, "label it first"),
        ] {
            match accept_for_continuation(&offered, wp, &need()) {
                Verdict::Refuse { reason } => assert!(reason.contains(why), "{reason}"),
                other => panic!("{offered:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_blank_cartridge_with_a_barcode_is_labelled() {
        assert_eq!(
            accept_for_continuation(
                &Offered::Blank {
                    barcode: Some("TAP009L9".into())
                },
                false,
                &need()
            ),
            Verdict::LabelThenUse {
                label: "TAP009L9".into()
            }
        );
    }
}
