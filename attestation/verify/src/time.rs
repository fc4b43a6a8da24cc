//! The verifier's clock: a point in time the caller chooses.
//!
//! The verifier never reads the system clock. Certificate validity is checked against the
//! [`Timestamp`] the caller passes in, which makes verification reproducible (tests pin it where
//! AMD certificates have expired) and lets an auditor ask "was this evidence valid at T?".

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_cert::der::DateTime;

use crate::error::TimeError;

/// A UTC instant with one-second resolution, between 1970-01-01 and 9999-12-31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_seconds: u64,
}

impl Timestamp {
    /// The instant `unix_seconds` seconds after 1970-01-01T00:00:00Z.
    ///
    /// Fails past the year 9999 (what X.509 can express).
    pub fn from_unix_seconds(unix_seconds: u64) -> Result<Self, TimeError> {
        DateTime::from_unix_duration(Duration::from_secs(unix_seconds))
            .map_err(|_| TimeError::OutOfRange { unix_seconds })?;
        Ok(Self { unix_seconds })
    }

    /// The current system time: the one place this crate reads a clock, and only when asked.
    pub fn now() -> Result<Self, TimeError> {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TimeError::BeforeEpoch)?;
        Self::from_unix_seconds(since.as_secs())
    }

    /// Parses an RFC 3339 date-time, e.g. `2025-06-01T12:00:00Z` or
    /// `2025-06-01T14:00:00.5+02:00` (fractions of a second are dropped).
    pub fn parse_rfc3339(input: &str) -> Result<Self, TimeError> {
        let bad = |reason: &'static str| TimeError::Rfc3339 {
            input: input.to_owned(),
            reason,
        };
        let b = input.as_bytes();
        // YYYY-MM-DDTHH:MM:SS is 19 bytes, then optional fraction, then the offset.
        if b.len() < 20 {
            return Err(bad("too short for YYYY-MM-DDTHH:MM:SSZ"));
        }
        let year = digits(b, 0, 4).ok_or_else(|| bad("year is not 4 digits"))?;
        let month = digits(b, 5, 2).ok_or_else(|| bad("month is not 2 digits"))?;
        let day = digits(b, 8, 2).ok_or_else(|| bad("day is not 2 digits"))?;
        let hour = digits(b, 11, 2).ok_or_else(|| bad("hour is not 2 digits"))?;
        let minute = digits(b, 14, 2).ok_or_else(|| bad("minute is not 2 digits"))?;
        let second = digits(b, 17, 2).ok_or_else(|| bad("second is not 2 digits"))?;
        if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
            return Err(bad("date separators must be '-'"));
        }
        if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
            return Err(bad("date and time must be separated by 'T'"));
        }
        if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
            return Err(bad("time separators must be ':'"));
        }
        let mut rest = &b[19..];
        if let Some((b'.', fraction)) = rest.split_first() {
            let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return Err(bad("empty fraction of a second"));
            }
            rest = &fraction[n..];
        }
        let offset_seconds: i64 = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let oh = digits(rest, 1, 2).ok_or_else(|| bad("offset hour is not 2 digits"))?;
                let om = digits(rest, 4, 2).ok_or_else(|| bad("offset minute is not 2 digits"))?;
                if oh > 23 || om > 59 {
                    return Err(bad("offset out of range"));
                }
                let magnitude = i64::from(oh) * 3600 + i64::from(om) * 60;
                if *sign == b'-' {
                    -magnitude
                } else {
                    magnitude
                }
            }
            _ => return Err(bad("must end with 'Z' or an offset such as +02:00")),
        };
        // RFC 3339 allows a leap second (:60); X.509 time cannot express one: clamp to :59.
        let second = second.min(59);
        let local = DateTime::new(
            year,
            u8::try_from(month).map_err(|_| bad("month out of range"))?,
            u8::try_from(day).map_err(|_| bad("day out of range"))?,
            u8::try_from(hour).map_err(|_| bad("hour out of range"))?,
            u8::try_from(minute).map_err(|_| bad("minute out of range"))?,
            u8::try_from(second).map_err(|_| bad("second out of range"))?,
        )
        .map_err(|_| bad("not a valid calendar date and time (1970..9999)"))?;
        let local_seconds =
            i64::try_from(local.unix_duration().as_secs()).map_err(|_| bad("out of range"))?;
        let utc = local_seconds
            .checked_sub(offset_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| bad("before 1970-01-01T00:00:00Z"))?;
        Self::from_unix_seconds(utc).map_err(|_| bad("after 9999-12-31"))
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix_seconds(self) -> u64 {
        self.unix_seconds
    }

    /// From an X.509 time (always in range by construction of [`der::DateTime`]).
    pub(crate) fn from_der(time: DateTime) -> Self {
        Self {
            unix_seconds: time.unix_duration().as_secs(),
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, e.g. `2025-12-10T22:14:21Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::from_unix_duration(Duration::from_secs(self.unix_seconds)) {
            Ok(dt) => write!(f, "{dt}"),
            // Unreachable: every constructor checks the range. Still print something true.
            Err(_) => write!(f, "@{}", self.unix_seconds),
        }
    }
}

/// `len` ASCII digits at `at`, as a number.
fn digits(b: &[u8], at: usize, len: usize) -> Option<u16> {
    let slice = b.get(at..at.checked_add(len)?)?;
    slice.iter().try_fold(0u16, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets_to_the_same_instant() {
        let z = Timestamp::parse_rfc3339("2025-12-10T22:14:21Z").unwrap();
        assert_eq!(z.unix_seconds(), 1_765_404_861);
        assert_eq!(z.to_string(), "2025-12-10T22:14:21Z");
        let plus = Timestamp::parse_rfc3339("2025-12-11T00:14:21.999+02:00").unwrap();
        assert_eq!(plus, z);
        let minus = Timestamp::parse_rfc3339("2025-12-10t17:14:21-05:00").unwrap();
        assert_eq!(minus, z);
    }

    #[test]
    fn refuses_malformed_dates_by_reason() {
        for bad in [
            "",
            "2025-12-10",
            "2025-12-10T22:14:21",
            "2025-13-10T22:14:21Z",
            "2025-02-30T22:14:21Z",
            "2025-12-10T25:14:21Z",
            "2025/12/10T22:14:21Z",
            "2025-12-10T22:14:21.Z",
            "2025-12-10T22:14:21+2:00",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+01:00",
            "２０２５-12-10T22:14:21Z",
        ] {
            assert!(
                Timestamp::parse_rfc3339(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn the_range_is_that_of_x509() {
        assert!(Timestamp::from_unix_seconds(0).is_ok());
        assert!(Timestamp::from_unix_seconds(253_402_300_799).is_ok());
        assert!(Timestamp::from_unix_seconds(253_402_300_800).is_err());
        assert!(Timestamp::from_unix_seconds(u64::MAX).is_err());
        assert!(Timestamp::now().is_ok());
    }
}
