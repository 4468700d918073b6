//! Dates on the command line (`--at`, `--entries-older-than`), pure: the
//! time zone and "now" are parameters.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

/// Which end of a day a bare date (or `today`, `yesterday`) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayEdge {
    /// The last second of the day: "as of Tuesday" includes Tuesday.
    End,
    /// The first second: "older than Tuesday" excludes Tuesday.
    Start,
}

/// Parse a point in time to seconds since the epoch.
///
/// Accepted: `2025-06-03T14:00:00Z` or with an offset (exact);
/// `2025-06-03 14:00[:SS]` or with `T` (local time in `tz`);
/// `2025-06-03` (the end of that day in `tz` with [`DayEdge::End`], so "as
/// of Tuesday" includes Tuesday's sessions, or its start with
/// [`DayEdge::Start`]); `today`, `yesterday` (likewise);
/// `now`; `@SECONDS`; a span followed by `ago` (`3 days ago`, `36h ago`, `2w ago`).
pub fn parse_when(s: &str, edge: DayEdge, tz: &TimeZone, now: Timestamp) -> Result<i64, String> {
    let t = s.trim();
    let bad = |why: &str| {
        format!(
            "{s:?} is not a date ({why}); use 2025-06-03, \"2025-06-03 14:00\", 2025-06-03T14:00:00Z, yesterday, \"3 days ago\" or @SECONDS"
        )
    };
    let now_z = now.to_zoned(tz.clone());
    let end_of = |z: Zoned| -> Result<i64, String> {
        match edge {
            DayEdge::End => z.end_of_day(),
            DayEdge::Start => z.start_of_day(),
        }
        .map(|e| e.timestamp().as_second())
        .map_err(|e| bad(&e.to_string()))
    };
    match t {
        "" => return Err(bad("empty")),
        "now" => return Ok(now.as_second()),
        "today" => return end_of(now_z),
        "yesterday" => return end_of(now_z.yesterday().map_err(|e| bad(&e.to_string()))?),
        _ => {}
    }
    if let Some(secs) = t.strip_prefix('@') {
        return secs
            .parse::<i64>()
            .map_err(|_| bad("@ takes whole seconds since 1970"));
    }
    if let Some(span) = t.strip_suffix("ago") {
        let span: Span = span
            .trim()
            .parse()
            .map_err(|e: jiff::Error| bad(&e.to_string()))?;
        return now_z
            .checked_sub(span)
            .map(|z| z.timestamp().as_second())
            .map_err(|e| bad(&e.to_string()));
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts.as_second());
    }
    if t.len() > 10 {
        if let Ok(dt) = t.parse::<DateTime>() {
            return tz
                .to_zoned(dt)
                .map(|z| z.timestamp().as_second())
                .map_err(|e| bad(&e.to_string()));
        }
    }
    if let Ok(d) = t.parse::<Date>() {
        return end_of(d.to_zoned(tz.clone()).map_err(|e| bad(&e.to_string()))?);
    }
    Err(bad("not recognised"))
}

/// `parse_when` in the system time zone, now.
pub fn parse_when_local(s: &str, edge: DayEdge) -> Result<i64, String> {
    parse_when(s, edge, &TimeZone::system(), Timestamp::now())
}

/// RFC 3339 UTC text of seconds since the epoch.
pub fn ts_text(sec: i64) -> String {
    crate::format::label::ts_text(crate::format::meta::Timestamp { sec, nsec: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Result<i64, String> {
        let tz = TimeZone::fixed(jiff::tz::offset(2)); // UTC+2
        let now: Timestamp = "2025-06-10T12:00:00Z".parse().unwrap();
        parse_when(s, DayEdge::End, &tz, now)
    }

    fn utc(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn dates_parse() {
        assert_eq!(
            at("2025-06-03T14:00:00Z").unwrap(),
            utc("2025-06-03T14:00:00Z")
        );
        assert_eq!(
            at("2025-06-03T14:00:00+02:00").unwrap(),
            utc("2025-06-03T12:00:00Z")
        );
        // Local times are in the given zone (UTC+2).
        assert_eq!(at("2025-06-03 14:00").unwrap(), utc("2025-06-03T12:00:00Z"));
        assert_eq!(
            at("2025-06-03T14:00:30").unwrap(),
            utc("2025-06-03T12:00:30Z")
        );
        // A bare date is the end of that local day.
        assert_eq!(at("2025-06-03").unwrap(), utc("2025-06-03T21:59:59Z"));
        assert_eq!(at("today").unwrap(), utc("2025-06-10T21:59:59Z"));
        assert_eq!(at("yesterday").unwrap(), utc("2025-06-09T21:59:59Z"));
        assert_eq!(at("now").unwrap(), utc("2025-06-10T12:00:00Z"));
        assert_eq!(at("@1700000000").unwrap(), 1_700_000_000);
        assert_eq!(at("3 days ago").unwrap(), utc("2025-06-07T12:00:00Z"));
        assert_eq!(at("36h ago").unwrap(), utc("2025-06-09T00:00:00Z"));
        assert_eq!(at("2w ago").unwrap(), utc("2025-05-27T12:00:00Z"));
        let tz = TimeZone::fixed(jiff::tz::offset(2));
        let now: Timestamp = "2025-06-10T12:00:00Z".parse().unwrap();
        let start = |s| parse_when(s, DayEdge::Start, &tz, now).unwrap();
        assert_eq!(start("2025-06-03"), utc("2025-06-02T22:00:00Z"));
        assert_eq!(start("yesterday"), utc("2025-06-08T22:00:00Z"));
        assert_eq!(start("2025-06-03 14:00"), utc("2025-06-03T12:00:00Z"));
        for bad in [
            "",
            "last tuesday",
            "2025-13-01",
            "@x",
            "soon ago",
            "06/03/2025",
        ] {
            assert!(at(bad).is_err(), "{bad:?} accepted");
        }
    }
}
