//! PostgreSQL's wire timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch (1970-01-01) to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A point in time as the replication protocol sends it: microseconds since
/// 2000-01-01 00:00:00 UTC (negative before it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The current time of this machine's clock.
    pub fn now() -> PgTimestamp {
        PgTimestamp::from(SystemTime::now())
    }

    /// This timestamp as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let micros = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch + micros
        } else {
            epoch - micros
        }
    }
}

impl From<SystemTime> for PgTimestamp {
    fn from(time: SystemTime) -> Self {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        match time.duration_since(epoch) {
            Ok(after) => PgTimestamp(micros(after)),
            Err(before) => PgTimestamp(-micros(before.duration())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_2000() {
        let t = PgTimestamp(0).to_system_time();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            PG_EPOCH_UNIX_SECS
        );
        assert_eq!(PgTimestamp::from(t), PgTimestamp(0));
        let before = PgTimestamp(-1_500_000);
        assert_eq!(PgTimestamp::from(before.to_system_time()), before);
    }
}
