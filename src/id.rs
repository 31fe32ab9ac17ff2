//! Snapshot ids, and the clock and randomness they are made from.
//!
//! An id looks like `20261125T115859123Z-3f9a1c0e8b7d6a51`: the UTC creation time to the
//! millisecond, then 64 random bits in hex. Ids therefore sort as plain strings in creation
//! order (so a prefix listing is already in time order) and two processes or machines creating
//! a snapshot in the same millisecond still get different ids. One generator also never
//! hands out a time at or before the previous one, so ids from one manager are strictly
//! increasing even when the wall clock stalls or steps back.

use crate::error::{Error, Result};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest snapshot id accepted.
pub const MAX_ID_LEN: usize = 128;

/// A validated snapshot id: 1 to 128 ASCII letters, digits, `-` or `_`.
///
/// Ids this crate generates have the sortable time-plus-random shape described in the
/// module docs; ids read back from a repository or given by a user only need to be safe.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Validates `s` as a snapshot id.
    pub fn parse(s: &str) -> Result<SnapshotId> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            // Echo at most the start of a long value: errors end up in logs and terminals.
            let shown: String = s.chars().take(48).collect();
            let more = if shown.len() < s.len() { "..." } else { "" };
            return Err(Error::invalid(
                "snapshot id",
                format!(
                    "{shown:?}{more} ({} bytes): must be 1 to {MAX_ID_LEN} characters",
                    s.len()
                ),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(Error::invalid(
                "snapshot id",
                format!("{s:?}: character {c:?} is not allowed (letters, digits, '-', '_')"),
            ));
        }
        Ok(SnapshotId(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The creation time encoded in a generated id, in unix milliseconds, if it has one.
    pub fn timestamp_ms(&self) -> Option<u64> {
        let stamp = self.0.split('-').next()?;
        if stamp.len() != 19 {
            return None;
        }
        let b = stamp.as_bytes();
        let rfc = format!(
            "{}-{}-{}T{}:{}:{}.{}Z",
            &stamp[0..4],
            &stamp[4..6],
            &stamp[6..8],
            &stamp[9..11],
            &stamp[11..13],
            &stamp[13..15],
            &stamp[15..18]
        );
        if b[8] != b'T' || b[18] != b'Z' {
            return None;
        }
        let t = humantime::parse_rfc3339(&rfc).ok()?;
        Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
    }
}

impl<'de> serde::Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SnapshotId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

impl std::str::FromStr for SnapshotId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SnapshotId::parse(s)
    }
}

/// A source of the current time, injectable so retention and ids are testable.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;

    /// Seconds since the unix epoch.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `ms` unix milliseconds.
    pub fn new(ms: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(ms)))
    }

    /// Sets the time.
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A source of random 64-bit numbers, injectable so ids are reproducible in tests.
pub trait RandomSource: Send + Sync + fmt::Debug + 'static {
    /// The next random number.
    fn next_u64(&self) -> u64;
}

/// The operating system's random number generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn next_u64(&self) -> u64 {
        // getrandom only fails when the OS has no entropy source at all; fall back to the
        // clock and address-space noise rather than refusing to make a snapshot.
        getrandom::u64().unwrap_or_else(|_| {
            let t = SystemClock.now_ms();
            let local = 0u8;
            t.rotate_left(17) ^ (&local as *const u8 as u64) ^ u64::from(std::process::id())
        })
    }
}

/// A deterministic generator (splitmix64) for tests (feature `test-util`).
#[derive(Debug)]
#[cfg(any(test, feature = "test-util"))]
pub struct SeededRandom(Mutex<u64>);

#[cfg(any(test, feature = "test-util"))]
impl SeededRandom {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(SeededRandom(Mutex::new(seed)))
    }
}

#[cfg(any(test, feature = "test-util"))]
impl RandomSource for SeededRandom {
    fn next_u64(&self) -> u64 {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Makes snapshot ids: strictly increasing within one generator, unique across processes.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    last_ms: Mutex<u64>,
}

impl IdGenerator {
    /// A generator over the given clock and randomness.
    pub fn new(clock: Arc<dyn Clock>, random: Arc<dyn RandomSource>) -> Self {
        IdGenerator {
            clock,
            random,
            last_ms: Mutex::new(0),
        }
    }

    /// The next id, and the unix-millisecond time it encodes.
    pub fn next_id(&self) -> (SnapshotId, u64) {
        let ms = {
            let mut last = self.last_ms.lock().unwrap_or_else(|p| p.into_inner());
            let ms = self.clock.now_ms().max(*last + 1);
            *last = ms;
            ms
        };
        let id = format_id(ms, self.random.next_u64());
        (id, ms)
    }
}

fn format_id(ms: u64, random: u64) -> SnapshotId {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    // "2026-11-25T11:58:59.123Z" -> "20261125T115859123Z"
    let stamp: String = humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | '.'))
        .collect();
    SnapshotId(format!("{stamp}-{random:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_sort_by_time_and_encode_it() {
        let clock = ManualClock::new(1_764_071_939_123);
        let ids = IdGenerator::new(clock.clone(), SeededRandom::new(7));
        let (a, ms) = ids.next_id();
        assert_eq!(a.as_str().len(), 36);
        assert!(a.as_str().starts_with("20251125T115859123Z-"), "{a}");
        assert_eq!(a.timestamp_ms(), Some(ms));
        // same millisecond, clock standing still, clock stepping back: still increasing
        let (b, _) = ids.next_id();
        clock.set_ms(1_000);
        let (c, _) = ids.next_id();
        clock.advance(Duration::from_secs(100 * 365 * 86_400));
        let (d, _) = ids.next_id();
        let v = [a, b, c, d];
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
    }

    #[test]
    fn generators_in_different_processes_do_not_collide() {
        let clock = ManualClock::new(5_000);
        let a = IdGenerator::new(clock.clone(), Arc::new(OsRandom));
        let b = IdGenerator::new(clock, Arc::new(OsRandom));
        assert_ne!(a.next_id().0, b.next_id().0);
    }

    #[test]
    fn id_validation() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a.b",
            "a b",
            "x\0",
            &"a".repeat(129),
            "%2e%2e",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["snap_1700000000000_1", "A-b_9"] {
            let id = SnapshotId::parse(good).unwrap();
            assert_eq!(id.timestamp_ms(), None);
        }
        let err: std::result::Result<SnapshotId, _> = serde_json::from_str("\"../../etc\"");
        assert!(err.is_err());
    }
}
