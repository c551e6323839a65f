//! One retry policy: how many tries, how long between them, and which
//! errors are worth another try.

use std::time::Duration;

/// Which failures a retry loop tries again after: decided by the error's
/// kind and server code, never by its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// A lost, killed or refused connection ([`reconnect_may_help`]): a
    /// fresh connection may get past it (the change stream's reconnects).
    LostConnection,
    /// A deadlock or lock wait timeout ([`is_lock_conflict`]): the server
    /// rolled the statement back and it may be sent again.
    LockConflict,
    /// The loop's own outcome says, not a driver error (the cut-over: a lock
    /// not granted within its bound, a drain past the hold budget).
    Outcome,
}

/// How a loop retries: `attempts` tries in all; after the n-th failure it
/// pauses `initial × 2^(n-1)`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least one is made).
    pub attempts: u32,
    /// The pause after the first failure.
    pub initial: Duration,
    /// The longest pause: doubling stops here.
    pub cap: Duration,
    pub retry_on: RetryOn,
}

impl RetryPolicy {
    /// Whether another try may follow `failures` failed ones.
    pub fn allows(&self, failures: u32) -> bool {
        failures < self.attempts.max(1)
    }

    /// The pause before the next try after `failures` failed ones (none
    /// before the first try).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        self.initial
            .saturating_mul(1u32 << (failures - 1).min(31))
            .min(self.cap)
    }

    /// Sleeps [`RetryPolicy::delay`].
    pub async fn pause(&self, failures: u32) {
        let d = self.delay(failures);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Whether `e` is a failure this policy tries again after.
    pub fn is_transient(&self, e: &mysql_async::Error) -> bool {
        match self.retry_on {
            RetryOn::LostConnection => reconnect_may_help(e),
            RetryOn::LockConflict => is_lock_conflict(e),
            RetryOn::Outcome => false,
        }
    }
}

/// Whether a fresh connection may get past `e`: an I/O or driver error, or
/// a server code that says the connection went away, was killed or refused
/// for now.
pub fn reconnect_may_help(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
        mysql_async::Error::Server(s) => matches!(
            s.code,
            // too many connections, net errors, server shutdown, killed,
            // interrupted, aborted, MariaDB's connection killed
            1040 | 1053 | 1152 | 1153 | 1158..=1161 | 1184 | 1205 | 1317 | 1927 | 2006 | 2013
        ),
        _ => false,
    }
}

/// A deadlock (1213) or lock wait timeout (1205): the backend's rule, shared
/// by every writer of the shadow table.
pub use wraith_backend::is_lock_conflict;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 11,
            initial: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            retry_on: RetryOn::LostConnection,
        };
        let ms: Vec<u128> = (0..9).map(|f| p.delay(f).as_millis()).collect();
        assert_eq!(ms, [0, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(p.allows(10));
        assert!(!p.allows(11));
        assert_eq!(p.delay(400), Duration::from_secs(5));
    }

    #[test]
    fn at_least_one_try() {
        let p = RetryPolicy {
            attempts: 0,
            initial: Duration::from_millis(1),
            cap: Duration::from_millis(1),
            retry_on: RetryOn::Outcome,
        };
        assert!(p.allows(0));
        assert!(!p.allows(1));
    }
}
