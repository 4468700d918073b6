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

/// The names a cartridge goes by, from each source that has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CartridgeNames {
    /// The barcode, from the library or the cartridge memory.
    pub barcode: Option<String>,
    /// The label in the cartridge's label block (tape file 0).
    pub tape_label: Option<String>,
    /// The user medium text label in cartridge memory (MAM).
    pub mam_label: Option<String>,
}

/// The names of one cartridge disagree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentityMismatch {
    pub names: CartridgeNames,
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| match v {
            Some(s) => format!("\"{s}\""),
            None => "unknown".to_string(),
        };
        write!(
            f,
            "the cartridge's names disagree: barcode {}, on-tape label {}, cartridge memory label {}; \
             find out which is right before writing to it (tapir leaves all three as they are)",
            show(&self.names.barcode),
            show(&self.names.tape_label),
            show(&self.names.mam_label)
        )
    }
}

/// Do the names a cartridge goes by agree? Each name that is known must
/// equal every other known one (surrounding spaces ignored, as cartridge
/// memory pads its values); with fewer than two known there is nothing to
/// compare. Which one is right is never decided here.
pub fn compare_identity(names: &CartridgeNames) -> Option<IdentityMismatch> {
    let known: Vec<&str> = [&names.barcode, &names.tape_label, &names.mam_label]
        .into_iter()
        .filter_map(|n| n.as_deref().map(str::trim))
        .filter(|n| !n.is_empty())
        .collect();
    let agree = known.windows(2).all(|w| w[0] == w[1]);
    (!agree).then(|| IdentityMismatch {
        names: names.clone(),
    })
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

    fn names(barcode: Option<&str>, tape: Option<&str>, mam: Option<&str>) -> CartridgeNames {
        CartridgeNames {
            barcode: barcode.map(Into::into),
            tape_label: tape.map(Into::into),
            mam_label: mam.map(Into::into),
        }
    }

    #[test]
    fn agreeing_or_single_names_are_no_mismatch() {
        for n in [
            names(None, None, None),
            names(Some("TAP001L9"), None, None),
            names(None, Some("TAP001L9"), Some("TAP001L9  ")),
            names(Some("TAP001L9"), Some("TAP001L9"), Some("TAP001L9")),
            names(Some(""), Some("A"), None),
        ] {
            assert_eq!(compare_identity(&n), None, "{n:?}");
        }
    }

    #[test]
    fn any_disagreement_is_reported_naming_all_three() {
        for (n, missing) in [
            (names(Some("TAP001L9"), Some("TAP002L9"), None), true),
            (names(None, Some("TAP001L9"), Some("OLD001L9")), true),
            (
                names(Some("TAP001L9"), Some("TAP001L9"), Some("OLD001L9")),
                false,
            ),
        ] {
            let m = compare_identity(&n).expect("a mismatch");
            assert_eq!(m.names, n);
            let msg = m.to_string();
            assert!(
                msg.contains("barcode")
                    && msg.contains("on-tape label")
                    && msg.contains("cartridge memory"),
                "{msg}"
            );
            for name in [&n.barcode, &n.tape_label, &n.mam_label]
                .into_iter()
                .flatten()
            {
                assert!(msg.contains(&format!("\"{name}\"")), "{msg}");
            }
            assert_eq!(msg.contains("unknown"), missing, "{msg}");
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
