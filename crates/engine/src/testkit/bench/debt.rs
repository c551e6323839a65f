//! The server's write debt: what a method leaves for InnoDB to do after it
//! has returned.
//!
//! A fast copy can end with much of the buffer pool dirty, the redo log near
//! its checkpoint limit and a long purge backlog; the application then pays
//! while InnoDB flushes and purges (seen as the load's aftermath). The
//! harness reads these right before and right after each method, from
//! `SHOW GLOBAL STATUS` ([`read`]), and follows the dirty pages after the
//! method until they are back near where they were ([`dirty_recovery`]).

use std::time::{Duration, Instant};

use mysql_async::Conn;

use super::results::WriteDebt;

/// How often the dirty pages are looked at after a method.
const POLL: Duration = Duration::from_millis(500);

/// The write debt now; figures the server does not have (or a failed
/// query) are `None`.
pub(super) async fn read(conn: &mut Conn) -> WriteDebt {
    WriteDebt::read_on(conn).await.unwrap_or_default()
}

/// The dirty pages that count as "back": within 10% of `before`, and at
/// least 64 pages over it, so that a method started from a clean pool is not
/// asked to reach zero while the load dirties pages of its own.
fn recovered_at(before: u64) -> u64 {
    before + (before / 10).max(64)
}

/// Polls the dirty pages every 500 ms from now until they are back within
/// 10% of `before` or `limit` has passed; returns the time from `since` (the
/// method's end) until they were, `None` if they were not.
pub(super) async fn dirty_recovery(
    conn: &mut Conn,
    before: &WriteDebt,
    since: Instant,
    limit: Duration,
) -> Option<f64> {
    let threshold = recovered_at(before.dirty_pages?);
    loop {
        let dirty = read(conn).await.dirty_pages?;
        if dirty <= threshold {
            return Some(since.elapsed().as_secs_f64());
        }
        if since.elapsed() + POLL > limit {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn back_means_within_ten_percent_with_some_slack() {
        assert_eq!(super::recovered_at(0), 64);
        assert_eq!(super::recovered_at(10_000), 11_000);
    }
}
