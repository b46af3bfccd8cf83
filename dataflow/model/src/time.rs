//! Wall-clock times of deltas (SPEC S1 `created_at`), parsed from RFC 3339 and written
//! back as RFC 3339 UTC.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// An instant in UTC, as carried by deltas and blob state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Parses an RFC 3339 time with any offset, normalised to UTC.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp(t.with_timezone(&Utc)))
    }

    /// The time `millis` milliseconds after the Unix epoch.
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        DateTime::from_timestamp_millis(millis).map(Timestamp)
    }

    /// RFC 3339 in UTC with a `Z`, and only as many fractional digits as needed
    /// (`2026-01-01T00:00:00Z`, `2026-01-01T00:00:00.250Z`).
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_normalise_to_utc() {
        let t = Timestamp::parse_rfc3339("2026-03-01T10:00:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T08:00:00Z");
        let t = Timestamp::parse_rfc3339("2026-03-01T10:00:00.5Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T10:00:00.500Z");
        assert!(Timestamp::parse_rfc3339("2026-03-01 10:00").is_none());
    }
}
