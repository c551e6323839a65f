//! A `LOCK TABLES` held on one session, released on every path.
//!
//! **For:** the short table locks wraith takes on the source (the consistent
//! point of the checksum and re-verification, the one-session cut-over):
//! whoever took the lock hands the session to a [`TablesLock`], works under
//! it, and calls [`TablesLock::unlock`], which says how long the
//! application's writes waited (the requests' queueing plus the time held).
//! A path that never reaches `unlock` (an early return, a cancelled future)
//! still releases the lock: dropping a `TablesLock` still locked sends
//! `UNLOCK TABLES` from a task of its own.
//!
//! **Leaves to others:** how the lock is asked for without stalling the
//! application (the cut-over's bounded requests), and what is done under it.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{Context, DbError};

/// A session holding a `LOCK TABLES`; see the module comment.
#[derive(Debug)]
pub struct TablesLock {
    /// `None` once unlocked.
    conn: Option<Conn>,
    granted: Instant,
    queued: Duration,
}

/// What releasing a [`TablesLock`] gives back.
#[derive(Debug)]
pub struct Unlocked {
    /// The session, unlocked when `result` is `Ok`.
    pub conn: Conn,
    /// How long writes to the locked tables waited: the time the requests
    /// stood queued plus the time the lock was held, to the end of the
    /// `UNLOCK TABLES`.
    pub blocked: Duration,
    /// The `UNLOCK TABLES` statement's own result.
    pub result: Result<(), DbError>,
}

impl TablesLock {
    /// `conn` was granted its `LOCK TABLES` just now, after its requests
    /// stood queued for `queued` in all.
    pub fn granted(conn: Conn, queued: Duration) -> TablesLock {
        TablesLock {
            conn: Some(conn),
            granted: Instant::now(),
            queued,
        }
    }

    /// When the lock was granted.
    pub fn granted_at(&self) -> Instant {
        self.granted
    }

    /// The session that holds the lock, for work that must run on it.
    pub fn conn(&mut self) -> &mut Conn {
        // Only `unlock` (which consumes self) and `drop` take it out.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a TablesLock keeps its session until unlocked"))
    }

    /// Sends `UNLOCK TABLES`, whatever the work under the lock returned.
    pub async fn unlock(mut self) -> Unlocked {
        let mut conn = self
            .conn
            .take()
            .unwrap_or_else(|| unreachable!("a TablesLock keeps its session until unlocked"));
        let result = conn
            .query_drop("UNLOCK TABLES")
            .await
            .context(|| "UNLOCK TABLES".into());
        Unlocked {
            conn,
            blocked: self.queued + self.granted.elapsed(),
            result,
        }
    }
}

impl Drop for TablesLock {
    fn drop(&mut self) {
        // Not unlocked: an early return or a cancelled future. Release the
        // lock from a task of its own; without a runtime (shutting down) the
        // connection closes, which releases it too.
        if let Some(mut conn) = self.conn.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                tracing::debug!("a table lock was dropped without UNLOCK TABLES: releasing it");
                rt.spawn(async move {
                    if let Err(e) = conn.query_drop("UNLOCK TABLES").await {
                        tracing::warn!(error = %e, "UNLOCK TABLES after an interrupted locked step failed; closing the session");
                        let _ = conn.disconnect().await;
                    }
                });
            }
        }
    }
}
