//! Where a cartridge is: parsing and printing locations (pure), and the
//! location history (every move is a new row; the newest is where it is).

use std::fmt;
use std::str::FromStr;

use rusqlite::{params, Connection, OptionalExtension};

use super::now_sec;

/// The kinds of place a cartridge can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocationKind {
    /// Loaded in a drive (name: the device).
    Drive,
    /// In a numbered library slot (name: the slot number).
    Slot,
    /// Somewhere in the library (name: optional library name).
    Library,
    /// On a shelf on site (name: optional shelf).
    Shelf,
    /// On its way somewhere (name: optional destination or courier).
    Transit,
    /// In a named vault, usually off site.
    Vault,
}

impl LocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LocationKind::Drive => "drive",
            LocationKind::Slot => "slot",
            LocationKind::Library => "library",
            LocationKind::Shelf => "shelf",
            LocationKind::Transit => "transit",
            LocationKind::Vault => "vault",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "drive" => LocationKind::Drive,
            "slot" => LocationKind::Slot,
            "library" => LocationKind::Library,
            "shelf" => LocationKind::Shelf,
            "transit" => LocationKind::Transit,
            "vault" => LocationKind::Vault,
            _ => return None,
        })
    }

    /// On site and reachable without a courier.
    pub fn on_site(self) -> bool {
        matches!(
            self,
            LocationKind::Drive | LocationKind::Slot | LocationKind::Library | LocationKind::Shelf
        )
    }
}

/// A place: `vault:NAME`, `shelf[:NAME]`, `library[:NAME]`, `slot:N`,
/// `drive[:NAME]`, `transit[:NOTE]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub kind: LocationKind,
    /// Empty when the kind needs no name.
    pub name: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str(self.kind.as_str())
        } else {
            write!(f, "{}:{}", self.kind.as_str(), self.name)
        }
    }
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (k, name) = match s.split_once(':') {
            Some((k, n)) => (k, n.trim()),
            None => (s, ""),
        };
        let kind = LocationKind::parse(k.trim()).ok_or_else(|| {
            format!(
                "{s:?} is not a location; use vault:NAME, shelf[:NAME], library[:NAME], slot:N, drive[:NAME] or transit[:NOTE]"
            )
        })?;
        if name.chars().any(|c| c.is_control()) {
            return Err(format!("location {s:?} contains control characters"));
        }
        match kind {
            LocationKind::Vault if name.is_empty() => {
                return Err("a vault needs a name: vault:NAME (e.g. vault:ironmountain)".into())
            }
            LocationKind::Slot if !matches!(name.parse::<u32>(), Ok(n) if n > 0) => {
                return Err(format!(
                    "slot:{name}: a slot is a number from 1 (e.g. slot:4)"
                ));
            }
            _ => {}
        }
        Ok(Location {
            kind,
            name: name.to_string(),
        })
    }
}

/// One row of a cartridge's location history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationEvent {
    pub location: Location,
    pub at: i64,
    pub by: String,
    pub note: Option<String>,
}

/// The newest location of a cartridge.
pub(crate) fn current(
    conn: &Connection,
    cartridge_id: i64,
) -> rusqlite::Result<Option<LocationEvent>> {
    let mut st = conn.prepare_cached(
        "SELECT kind, name, at, by, note FROM locations WHERE cartridge_id = ?1
         ORDER BY id DESC LIMIT 1",
    )?;
    st.query_row([cartridge_id], event_of).optional()
}

/// Every location of a cartridge, oldest first.
pub(crate) fn history(
    conn: &Connection,
    cartridge_id: i64,
) -> rusqlite::Result<Vec<LocationEvent>> {
    let mut st = conn.prepare_cached(
        "SELECT kind, name, at, by, note FROM locations WHERE cartridge_id = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([cartridge_id], event_of)?;
    rows.collect()
}

fn event_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<LocationEvent> {
    let kind: String = r.get(0)?;
    Ok(LocationEvent {
        location: Location {
            // The CHECK constraint admits only known kinds.
            kind: LocationKind::parse(&kind).unwrap_or(LocationKind::Shelf),
            name: r.get(1)?,
        },
        at: r.get(2)?,
        by: r.get(3)?,
        note: r.get(4)?,
    })
}

/// Append a move to the history.
pub(crate) fn append(
    conn: &Connection,
    cartridge_id: i64,
    loc: &Location,
    at: i64,
    by: &str,
    note: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO locations (cartridge_id, kind, name, at, by, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![cartridge_id, loc.kind.as_str(), loc.name, at, by, note],
    )?;
    Ok(())
}

/// tapir itself saw the cartridge at `loc` (it read or wrote it there):
/// recorded only when that is not already its current location, so seeing
/// it twice changes nothing.
pub(crate) fn note_seen_tx(
    conn: &Connection,
    cartridge_id: i64,
    loc: &Location,
    by: &str,
    why: &str,
) -> rusqlite::Result<bool> {
    if current(conn, cartridge_id)?.is_some_and(|c| &c.location == loc) {
        return Ok(false);
    }
    append(conn, cartridge_id, loc, now_sec(), by, Some(why))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print() {
        for (text, kind, name) in [
            ("vault:ironmountain", LocationKind::Vault, "ironmountain"),
            ("shelf", LocationKind::Shelf, ""),
            ("shelf:B2", LocationKind::Shelf, "B2"),
            ("library", LocationKind::Library, ""),
            ("slot:4", LocationKind::Slot, "4"),
            ("drive", LocationKind::Drive, ""),
            ("drive:/dev/nst0", LocationKind::Drive, "/dev/nst0"),
            (
                "transit:courier to vault",
                LocationKind::Transit,
                "courier to vault",
            ),
        ] {
            let l: Location = text.parse().unwrap();
            assert_eq!((l.kind, l.name.as_str()), (kind, name), "{text}");
            assert_eq!(l.to_string(), text);
        }
        for bad in [
            "vault",
            "vault:",
            "slot:x",
            "slot:0",
            "attic",
            "",
            "shelf:a\nb",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad:?} accepted");
        }
        assert!(LocationKind::Library.on_site());
        assert!(!LocationKind::Vault.on_site());
        assert!(!LocationKind::Transit.on_site());
    }
}
