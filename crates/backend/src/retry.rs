//! One retry policy for the whole workspace: how many tries, how long
//! between them, and which errors are worth another try.
//!
//! It lives here, in the crate every other one depends on, so that the
//! backend's writers (a statement or an imported range sent again after a
//! lock conflict) and the engine's loops (the change applier's shards, the
//! binlog reconnects, the cut-over's lock attempts; the engine re-exports
//! this module as `server::RetryPolicy`) share one type and one backoff
//! shape. Decisions are made on an error's kind and server code, never on
//! its text.

use std::time::Duration;

pub use crate::error::is_lock_conflict;

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
    /// Which failures are worth another try.
    pub retry_on: RetryOn,
}

impl RetryPolicy {
    /// Writers of the shadow table (the copy's INSERTs, the local import's
    /// ranges, the change applier's shards) meeting on unique secondary
    /// indexes and their gaps: 20 tries, 10 ms doubling to 100 ms (about
    /// 1.7 s of pauses in all).
    pub const LOCK_CONFLICT: RetryPolicy = RetryPolicy {
        attempts: 20,
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        retry_on: RetryOn::LockConflict,
    };

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

    /// Whether `e`, after `failures` failed tries (this one included), is
    /// worth another try: transient, and tries are left.
    pub fn retries(&self, e: &mysql_async::Error, failures: u32) -> bool {
        self.is_transient(e) && self.allows(failures)
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

/// Runs one autocommit statement, again after a lock conflict as
/// [`RetryPolicy::LOCK_CONFLICT`] says; any other outcome is returned as is.
pub async fn query_retrying_lock_conflicts(
    conn: &mut mysql_async::Conn,
    sql: &str,
) -> Result<(), mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let policy = RetryPolicy::LOCK_CONFLICT;
    let mut failures = 0;
    loop {
        match conn.query_drop(sql).await {
            Err(e) if policy.retries(&e, failures + 1) => {
                failures += 1;
                tracing::debug!(attempt = failures, error = %e, "statement sent again after a lock conflict");
                policy.pause(failures).await;
            }
            other => return other,
        }
    }
}

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

    #[test]
    fn lock_conflicts_get_twenty_tries() {
        let p = RetryPolicy::LOCK_CONFLICT;
        // Sent 20 times: another try after the 19th failure, none after the 20th.
        assert!(p.allows(19));
        assert!(!p.allows(20));
        let total: Duration = (1..20).map(|f| p.delay(f)).sum();
        assert_eq!(total, Duration::from_millis(10 + 20 + 40 + 80 + 15 * 100));
    }
}
