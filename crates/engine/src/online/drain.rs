//! Draining the change stream: the one loop that reads the stream up to a
//! token and applies the buffer, used by the consistent points, by the
//! cut-over under its lock, and by the catch-up before each lock attempt.
//!
//! What differs between them is a switch, not a second loop ([`Clashes`]):
//! under a lock a row that still clashes once nothing else applies is a
//! real duplicate and stops the run; without one (the catch-up) it stays
//! buffered for a later pass. The cut-over also gives a deadline (its hold
//! budget), past which the drain gives up between batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_backend::Value;

use super::{ChangesError, OnlineState, CHANGELOG_TABLE};
use crate::binlog::BinlogPosition;
use crate::copy::read_conn;
use crate::cutover::DrainError;
use crate::server::{quote_ident, Context, DbError};
use crate::verify::{describe_clash, RowVerifier, VerifyError};

/// The server's "table doesn't exist".
const ER_NO_SUCH_TABLE: u16 = 1146;

/// Rows applied per pass while rows keep applying.
const PASS_ROWS: usize = 20_000;

/// What a drain does with a row that still clashes on a unique index once
/// nothing else applies.
#[derive(Debug, Clone, Copy)]
enum Clashes<'a> {
    /// The source is locked, so nothing else can change: after one more
    /// pass over every pending row, the clash is real and the drain stops
    /// with [`VerifyError::UniqueClash`]; the text says where it was found.
    Judge(&'a str),
    /// No lock: the clash may be transient; it stays buffered and the drain
    /// ends.
    Keep,
}

impl OnlineState {
    /// Writes a token to the changelog table, waits until the stream delivers
    /// it, then applies everything buffered. The copy must be done, and the
    /// source locked: a row that still clashes on a unique index then is a
    /// real duplicate (`point` says where, for the message).
    pub async fn drain(&self, timeout: Duration, point: &str) -> Result<(), DrainError> {
        self.drain_on(timeout, None, point, None).await
    }

    /// [`OnlineState::drain`], applying on `locked` when given. With a
    /// `deadline` (the cut-over's hold budget) the drain gives up between
    /// batches once it is past: what was applied stays applied, the rest
    /// stays buffered, and the caller lets go of its lock.
    pub async fn drain_on(
        &self,
        timeout: Duration,
        locked: Option<&mut Conn>,
        point: &str,
        deadline: Option<Instant>,
    ) -> Result<(), DrainError> {
        self.drain_loop(timeout, locked, Clashes::Judge(point), deadline)
            .await
    }

    /// The one drain: reads the stream up to a token (within `timeout`, and
    /// before `deadline` when there is one), then applies passes until one
    /// applies nothing; see [`Clashes`] for what happens to a clash then.
    async fn drain_loop(
        &self,
        timeout: Duration,
        mut locked: Option<&mut Conn>,
        clashes: Clashes<'_>,
        deadline: Option<Instant>,
    ) -> Result<(), DrainError> {
        let wait = match deadline {
            Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
            None => timeout,
        };
        self.read_to_token(wait).await.map_err(DrainError::Retry)?;
        let mut max = PASS_ROWS;
        loop {
            if let Some(d) = deadline {
                if Instant::now() > d {
                    let backlog = self.backlog().map_err(DrainError::Retry)?;
                    return Err(DrainError::Retry(ChangesError::HoldBudget(backlog)));
                }
            }
            let pass = self
                .apply_ready_on(max, locked.as_deref_mut())
                .await
                .map_err(DrainError::Retry)?;
            if pass.applied > 0 {
                max = PASS_ROWS;
                continue;
            }
            let Clashes::Judge(point) = clashes else {
                return Ok(());
            };
            let Some((row, index)) = pass.clashes.into_iter().next() else {
                return Ok(());
            };
            if max != usize::MAX {
                // Retry every pending row at once before judging.
                max = usize::MAX;
                continue;
            }
            // Nothing else can change: the clash is real.
            let (target, pool) = {
                let applier = self.applier.lock().await;
                (applier.target().clone(), applier.pool().clone())
            };
            let error = match locked.as_deref_mut() {
                Some(conn) => describe_clash(conn, &target, &self.table, &row, &index, point).await,
                None => {
                    let mut conn = read_conn(&pool)
                        .await
                        .map_err(|e| DrainError::Retry(e.into()))?;
                    describe_clash(&mut conn, &target, &self.table, &row, &index, point).await
                }
            };
            return Err(DrainError::Stop(Box::new(error)));
        }
    }

    /// Writes a token and waits until the stream has delivered it.
    async fn read_to_token(&self, timeout: Duration) -> Result<(), ChangesError> {
        let token = format!(
            "{}:{}",
            self.run_id,
            self.token_seq.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(ChangesError::TokenConnection)?;
        let insert = format!(
            "INSERT INTO {}.{} (token) VALUES (?)",
            quote_ident(&self.changelog_schema),
            quote_ident(CHANGELOG_TABLE)
        );
        let written = match conn.exec_drop(&insert, (token.as_str(),)).await {
            // The changelog is shared by every run in the schema, and each
            // drops it at its end: a neighbour that finished first (another
            // request of `wraith serve --concurrency`, another `wraith run`)
            // took it away. The stream finds tokens by the table's name, so
            // a new one serves as well.
            Err(mysql_async::Error::Server(e)) if e.code == ER_NO_SUCH_TABLE => {
                tracing::info!(
                    schema = %self.changelog_schema,
                    "the changelog table was dropped by another run; creating it again"
                );
                super::ensure_changelog(&mut conn, &self.changelog_schema).await?;
                conn.exec_drop(&insert, (token.as_str(),)).await
            }
            other => other,
        };
        written.map_err(ChangesError::TokenWrite)?;
        drop(conn);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.token_seen.notified();
            if let Some(e) = self.error() {
                return Err(e);
            }
            if *self.guard(&self.last_token, "last token")? == token {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChangesError::TokenTimeout(timeout));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
        Ok(())
    }
}

/// Sets the time zone of `session` (the one holding the cut-over's lock) to
/// `reader`'s, so that both sides of a verification read TIMESTAMPs alike.
pub(crate) async fn read_in_zone_of(session: &mut Conn, reader: &mut Conn) -> Result<(), DbError> {
    let tz: Option<String> = reader
        .query_first("SELECT @@session.time_zone")
        .await
        .context(|| "reading the session time zone".into())?;
    if let Some(tz) = tz {
        session
            .exec_drop("SET time_zone = ?", (tz,))
            .await
            .context(|| "setting the locked session's time zone".into())?;
    }
    Ok(())
}

/// The cut-over's view of the online state.
pub struct OnlineDrain {
    pub state: Arc<OnlineState>,
    pub timeout: Duration,
    /// Verifies the rows changed since the last verification; `None` when
    /// there is nothing to verify against (no checksum ran).
    pub verifier: Option<Arc<RowVerifier>>,
    /// Where the shadow table is read when the locking session cannot.
    pub target_pool: Pool,
}

const UNDER_THE_LOCK: &str = "found under the cut-over's lock, after the final catch-up";

/// The cut-over's steps on the online state; the run wraps them in a
/// [`Drain`] that can also verify outside the lock (it owns the consistent
/// points).
impl OnlineDrain {
    pub async fn drain_to(
        &mut self,
        target: BinlogPosition,
        locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> Result<(), DrainError> {
        tracing::debug!(file = %target.file, pos = target.pos, "draining under the lock");
        self.state.cutting_over.store(true, Ordering::Relaxed);
        self.state
            .drain_on(self.timeout, locked, UNDER_THE_LOCK, Some(deadline))
            .await
    }

    /// Reads the stream up to the server's present and applies what is
    /// ready, without any lock: what is left for the lock is then only what
    /// the application writes in the next instants. A clash here is not
    /// judged (nothing is consistent yet); the drain under the lock does.
    pub async fn catch_up(&mut self) -> Result<(), DrainError> {
        self.state
            .drain_loop(self.timeout, None, Clashes::Keep, None)
            .await
    }

    pub async fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> Result<(), DrainError> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        // A failed attempt keeps its keys: they are verified by the next one.
        let keys: Vec<Vec<Value>> = self
            .state
            .guard(&self.state.touched, "verification keys")
            .map_err(DrainError::Retry)?
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if keys.is_empty() {
            return Ok(());
        }
        let retry = |e: DbError| DrainError::Retry(e.into());
        let stop = |e: VerifyError| match e {
            VerifyError::Db(e) => DrainError::Retry(e.into()),
            e => DrainError::Stop(Box::new(e)),
        };
        // Both sides read in one time zone, the one the shadow's readers use.
        let mut tconn = read_conn(&self.target_pool).await.map_err(retry)?;
        read_in_zone_of(session, &mut tconn).await.map_err(retry)?;
        // MySQL's one session holds both tables: only it may read them.
        let shadow_side = if shadow_locked {
            None
        } else {
            Some(&mut tconn)
        };
        let n = verifier
            .verify(session, shadow_side, &keys, UNDER_THE_LOCK)
            .await
            .map_err(stop)?;
        self.state.track_changes().map_err(DrainError::Retry)?;
        self.state.reverified.fetch_add(n, Ordering::Relaxed);
        tracing::info!(
            rows = n,
            "rows changed since the last verification verified under the lock"
        );
        Ok(())
    }
}
