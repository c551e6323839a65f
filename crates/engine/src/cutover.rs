//! Cut-over: swap `t` → `_t_old` and `_t_new` → `t` atomically.
//!
//! One contract, one algorithm per flavor:
//!
//! **Taking the lock without stalling the application.** A lock request
//! that waits is queued, and the server serves the application's writes to
//! `t` only after it: a request that waits 3 s stalls every writer for 3 s.
//! So, before each request:
//! - on MariaDB, a request that may not wait at all (`lock_wait_timeout = 0`
//!   for that statement: the server refuses it at once instead of queueing
//!   it); when `t` is free this is the lock, with no wait for anyone;
//! - otherwise wraith looks for *blockers* ([`crate::blockers`]: sessions
//!   that have held `t`, or a transaction, for a while) and, while there are
//!   any, does not ask: it waits, shows them in the status and the log, and
//!   after `blocker_grace` kills them when `kill_blockers` is set;
//! - with none left, one request bounded by `lock_attempt_timeout` (100 ms by
//!   default): MariaDB aborts it by itself (`SET STATEMENT
//!   max_statement_time = 0.1 FOR LOCK TABLES ...`, measured to work on
//!   10.11 where `lock_wait_timeout` counts whole seconds); on MySQL a second
//!   session `KILL QUERY`s it. A withdrawn request is a failed attempt: the
//!   writes behind it go on, and the next attempt follows after
//!   `retry_backoff`, doubling.
//!
//! Every request that queued or was granted is an entry of the report's
//! `lock_attempts`, with the time it stood queued and the time the lock was
//! held (to the UNLOCK, or to the end of the RENAME); `blocked_ms`, what
//! the run prints as "writes were blocked", is their sum over all attempts.
//!
//! **MariaDB** cannot RENAME a table the same session holds under LOCK
//! TABLES (error 1192), so wraith uses gh-ost's two-session algorithm, with
//! the sentry moved to a name that sorts after `t`:
//! 1. session A creates a *sentry* `t_wraith_sentry` and a *swap marker*
//!    `t_wraith_swap`, and takes `LOCK TABLES t WRITE, t_wraith_sentry WRITE`
//!    as above; from here the application's writes to `t` wait;
//! 2. wraith reads the binlog position after the lock was granted: every change
//!    to `t` is before it. It drains the change stream up to that position and
//!    applies everything to `_t_new` (the [`Drain`] callback), then
//!    re-verifies the rows changed since the last verification, reading `t`
//!    on A (see [`crate::verify`]); a mismatch or a duplicate stops the run
//!    with nothing renamed;
//! 3. session B carries the AUTO_INCREMENT counter over: when `t`'s counter
//!    (read under the lock, so no insert can move it) is ahead of `_t_new`'s,
//!    B runs `ALTER TABLE _t_new AUTO_INCREMENT = n`, an instant change of
//!    the shadow alone, before it holds any name (so it cannot wait on the
//!    RENAME's locks); otherwise ids of rows deleted at the end of `t` would
//!    be handed out again (gh-ost does the same);
//! 4. session B issues `RENAME TABLE t_wraith_swap TO t_wraith_sentry,
//!    t TO _t_old, _t_new TO t`, which fails at its first pair as long as the
//!    sentry exists. The server takes a statement's metadata locks one by one in
//!    name order, so B first takes the names before `t` and then queues on
//!    `t`. wraith confirms that: B waits on a metadata lock (processlist) and
//!    holds the last name before `t` (a probe with `lock_wait_timeout = 0`);
//! 5. A drops the sentry and unlocks; B's exclusive request on `t` is served
//!    before the queued writes, which then go to the new `t`.
//!
//! Why the sentry is not `_t_old` as in gh-ost: `_t_old` sorts before `t`, so
//! B would queue on the sentry, not on `t`. Between A's DROP of the sentry
//! and its UNLOCK, B must then move on to queue on `t`; if it has not, the
//! queued writes win `t` at the UNLOCK and commit to the old table just
//! before the RENAME, after the drain: lost changes. The kill -9 harness
//! found exactly that.
//!
//! If anything fails before step 5, A unlocks with the sentry still in place:
//! B's RENAME (if issued) fails because the sentry exists, and nothing was
//! renamed. A session that dies releases its locks the same way. Then the
//! markers are dropped and the attempt retried with backoff.
//!
//! **MySQL 8.0.13+** allows RENAME under LOCK TABLES in one session:
//! `LOCK TABLES t WRITE, _t_new WRITE`, drain, carry the AUTO_INCREMENT
//! counter over, `RENAME TABLE`, `UNLOCK TABLES`.

use std::future::Future;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;

use crate::blockers::{self, Blocker, Detection, Killed, Watchlist};
use crate::db::{quote_ident, server_error_code, Context, DbError, Flavor};
use crate::progress::ProgressHandle;
use crate::shadow::{old_name, shadow_name};
use crate::verify::VerifyError;

/// How often blockers are looked at again while the cut-over waits for them.
const BLOCKER_POLL: Duration = Duration::from_millis(100);
/// How often a wait for the same blockers is logged again.
const BLOCKER_LOG_EVERY: Duration = Duration::from_secs(30);

/// A binlog position to drain to, as `SHOW MASTER STATUS` gives it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DrainTarget {
    pub file: String,
    pub pos: u64,
}

/// Drains the change stream up to a target and applies every change.
///
/// `locked` is the session holding the table locks when the shadow table is
/// among them (MySQL's one-session algorithm): changes must then be applied
/// on that session, as no other may write the shadow table.
pub trait Drain {
    /// Gives up with [`DrainError::Retry`] once `deadline` (the end of the
    /// hold budget) is past, between batches: nothing applied is lost.
    fn drain_to(
        &mut self,
        target: DrainTarget,
        locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), DrainError>> + Send;

    /// Reads and applies the stream up to the server's present without any
    /// lock, so that the drain under the lock has only the last instants left.
    fn catch_up(&mut self) -> impl Future<Output = Result<(), DrainError>> + Send;

    /// Re-verifies the rows the drains applied since the last verification,
    /// before the rename may happen. `session` holds the lock on the table
    /// (only it may read it); with `shadow_locked` it holds the shadow too.
    fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> impl Future<Output = Result<(), DrainError>> + Send;

    /// Rows changed since the last verification: what [`Drain::verify_locked`]
    /// would compare under the lock.
    fn verification_backlog(&self) -> usize;

    /// Verifies the changed rows outside the lock (at a consistent point of
    /// its own), so that what is left for the lock is small.
    fn verify_unlocked(&mut self) -> impl Future<Output = Result<(), DrainError>> + Send;
}

/// Most rows re-verified under the cut-over's lock: more would keep the
/// application's writes waiting for the comparison, so they are verified
/// outside the lock first (after a long wait for blockers, say).
pub const VERIFY_UNDER_LOCK_MAX: usize = 2_000;

/// Why a drain or its verification failed.
#[derive(Debug)]
pub enum DrainError {
    /// Worth another attempt (the stream was slow, a connection failed).
    Retry(crate::online::ChangesError),
    /// The shadow cannot become the table: stop, rename nothing.
    Stop(Box<VerifyError>),
}

impl std::fmt::Display for DrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainError::Retry(m) => m.fmt(f),
            DrainError::Stop(e) => e.fmt(f),
        }
    }
}

impl DrainError {
    fn into_attempt(self, what: &str) -> Attempt {
        match self {
            DrainError::Retry(m) => Attempt::Retry(format!("{what}: {m}")),
            DrainError::Stop(e) => Attempt::Fatal(CutoverError::Verify(e)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{schema}.{name} already exists; wraith renames the old table to that name. Drop or rename it, then run again")]
    OldTableExists { schema: String, name: String },
    #[error("{schema}.{name} exists and is not wraith's; wraith's cut-over uses that name. Rename it, then run again")]
    NameTaken { schema: String, name: String },
    #[error("cut-over of {table} failed after {attempts} attempts; last error: {last}. Nothing was renamed: {table} is still the original table and {shadow} is kept")]
    GaveUp {
        table: String,
        shadow: String,
        attempts: u32,
        last: String,
    },
    #[error(transparent)]
    Verify(Box<VerifyError>),
    #[error("the connection was lost during the RENAME of {table}; tables now: {state}")]
    Unknown { table: String, state: String },
    #[error("the cut-over of {table} stopped while it waited for sessions that block it ({reason}); nothing was renamed: {table} is still the original table, and `wraith run` with the same config resumes")]
    Stopped { table: String, reason: String },
}

/// One lock request that queued or was granted.
#[derive(Debug, Clone, Serialize)]
pub struct LockAttempt {
    /// `renamed`, `timed out`, or what ended the attempt after the lock was granted.
    pub outcome: String,
    /// How long the request stood queued (the application's writes to the
    /// table queued behind it).
    pub queued_ms: f64,
    /// How long the lock was held (to the UNLOCK, or to the end of the RENAME).
    pub held_ms: f64,
}

/// What the cut-over did.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    /// Lock requests that queued or were granted (`lock_attempts.len()`).
    pub attempts: u32,
    /// How long writes to the table were blocked, over every attempt, failed
    /// ones included: the time wraith's lock requests stood queued or held.
    pub blocked_ms: f64,
    pub lock_attempts: Vec<LockAttempt>,
    /// Requests that may not wait, refused at once because the table was in use (they queue nothing).
    pub busy_probes: u32,
    /// How blockers were found.
    pub blocker_detection: Detection,
    /// How long the cut-over waited for blockers without asking for the lock.
    pub blocker_wait_ms: f64,
    /// Every session it waited for (as last seen).
    pub blockers: Vec<Blocker>,
    /// Sessions it killed (`kill_blockers`).
    pub blockers_killed: Vec<u64>,
    /// The new table's AUTO_INCREMENT counter, when it was raised to the source's.
    pub auto_increment: Option<u64>,
    pub drained_to: Option<DrainTarget>,
}

/// Settings of the cut-over (`[cutover]` in the config).
#[derive(Debug, Clone)]
pub struct CutoverSettings {
    /// The sessions' `lock_wait_timeout`: the RENAME's wait and other backstops.
    pub lock_wait_timeout: Duration,
    /// Longest one lock request may stand queued.
    pub lock_attempt_timeout: Duration,
    /// Longest the cut-over holds the lock before the RENAME is let through;
    /// past it the attempt lets go and is retried after a catch-up.
    pub lock_hold_budget: Duration,
    /// Lock attempts that may fail before giving up.
    pub retries: u32,
    /// Pause after the first failed attempt; doubles after each, up to 16×.
    pub retry_backoff: Duration,
    pub kill_blockers: bool,
    pub blocker_grace: Option<Duration>,
}

/// What the cut-over tells the run, and asks of it, while it waits.
pub struct Observer<'a> {
    /// Receives the blockers waited for (status, `status-json`).
    pub progress: &'a ProgressHandle,
    /// `Some(reason)` ends a wait for blockers: Ctrl-C, `panic`, a failed change stream.
    pub stop: &'a (dyn Fn() -> Option<String> + Sync),
}

/// The figures of a cut-over as it goes.
struct Ledger {
    detection: Detection,
    attempts: Vec<LockAttempt>,
    busy_probes: u32,
    blocker_wait: Duration,
    blockers: std::collections::BTreeMap<u64, Blocker>,
    killed: Vec<u64>,
    auto_increment: Option<u64>,
}

impl Ledger {
    fn new(detection: Detection) -> Ledger {
        Ledger {
            detection,
            attempts: Vec::new(),
            busy_probes: 0,
            blocker_wait: Duration::ZERO,
            blockers: Default::default(),
            killed: Vec::new(),
            auto_increment: None,
        }
    }

    /// A request asked at `asked` ended now (granted when `outcome` is `None`).
    fn requested(&mut self, asked: Instant, outcome: Option<String>) {
        self.attempts.push(LockAttempt {
            outcome: outcome.unwrap_or_else(|| "granted".into()),
            queued_ms: ms(asked.elapsed()),
            held_ms: 0.0,
        });
    }

    /// The lock granted at `granted` is released now.
    fn released(&mut self, granted: Instant, outcome: &str) {
        if let Some(a) = self.attempts.last_mut() {
            a.held_ms = ms(granted.elapsed());
            a.outcome = outcome.to_string();
        }
    }

    fn report(self, drained_to: Option<DrainTarget>) -> CutoverReport {
        CutoverReport {
            attempts: self.attempts.len() as u32,
            blocked_ms: self.attempts.iter().map(|a| a.queued_ms + a.held_ms).sum(),
            lock_attempts: self.attempts,
            busy_probes: self.busy_probes,
            blocker_detection: self.detection,
            blocker_wait_ms: ms(self.blocker_wait),
            blockers: self.blockers.into_values().collect(),
            blockers_killed: self.killed,
            auto_increment: self.auto_increment,
            drained_to,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Swaps the tables. On success `table` is the new table and `_table_old` the old one.
pub async fn cut_over<D: Drain + Sync>(
    pool: &Pool,
    flavor: Flavor,
    schema: &str,
    table: &str,
    settings: &CutoverSettings,
    drain: &mut D,
    observer: &Observer<'_>,
) -> Result<CutoverReport, CutoverError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting for the cut-over".into())?;
    if crate::inspect::table_exists(&mut conn, schema, &old_name(table)).await? {
        return Err(CutoverError::OldTableExists {
            schema: schema.to_string(),
            name: old_name(table),
        });
    }
    let detection = blockers::detection(&mut conn, flavor).await?;
    if !detection.is_exact() && flavor.is_mariadb() {
        tracing::info!(
            "the metadata_lock_info plugin is not loaded: every transaction open for {:?} counts \
             as a blocker of the cut-over (INSTALL SONAME 'metadata_lock_info' makes it exact)",
            blockers::MIN_AGE
        );
    }
    drop(conn);
    let mut ledger = Ledger::new(detection);
    let attempts = settings.retries.max(1);
    let mut failed = 0;
    let mut last = String::new();
    while failed < attempts {
        let ctx = Attempting {
            pool,
            flavor,
            schema,
            table,
            settings,
            observer,
        };
        if drain.verification_backlog() > VERIFY_UNDER_LOCK_MAX {
            match drain.verify_unlocked().await {
                Ok(()) => {}
                Err(DrainError::Stop(e)) => return Err(CutoverError::Verify(e)),
                Err(DrainError::Retry(why)) => {
                    tracing::warn!(error = %why, "verifying changed rows before the cut-over's lock failed; the lock will verify them");
                }
            }
        }
        // A big transaction committed since the last apply is read now, not
        // while the application waits on the lock.
        match drain.catch_up().await {
            Ok(()) => {}
            Err(DrainError::Stop(e)) => return Err(CutoverError::Verify(e)),
            Err(DrainError::Retry(why)) => {
                tracing::warn!(error = %why, "catching up before the cut-over's lock failed; the lock will drain it");
            }
        }
        let result = if flavor.is_mariadb() {
            attempt_two_sessions(&ctx, drain, &mut ledger).await
        } else {
            attempt_one_session(&ctx, drain, &mut ledger).await
        };
        observer.progress.set_blockers(Vec::new());
        match result {
            Ok(target) => return Ok(ledger.report(Some(target))),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => {
                failed += 1;
                tracing::warn!(attempt = failed, error = %why, "cut-over attempt failed; nothing was renamed");
                last = why;
                if failed < attempts {
                    let backoff = settings.retry_backoff * 2u32.pow((failed - 1).min(4));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
    Err(CutoverError::GaveUp {
        table: table.to_string(),
        shadow: shadow_name(table),
        attempts,
        last,
    })
}

enum Attempt {
    Retry(String),
    Fatal(CutoverError),
}

/// What every attempt works with.
struct Attempting<'a> {
    pool: &'a Pool,
    flavor: Flavor,
    schema: &'a str,
    table: &'a str,
    settings: &'a CutoverSettings,
    observer: &'a Observer<'a>,
}

/// Takes the table lock with `lock_sql` on `a`: never asks while a blocker
/// holds the table, and never lets one request stand queued for longer than
/// `lock_attempt_timeout` (see the module comment). Returns when the lock was
/// granted; every request that queued is in `ledger`.
async fn acquire(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    lock_sql: &str,
    ledger: &mut Ledger,
    verification_backlog: &(dyn Fn() -> usize + Sync),
) -> Result<Instant, Attempt> {
    let table = ctx.table;
    let own = [a.id()];
    let mut watch = Watchlist::default();
    let mut waiting_since: Option<Instant> = None;
    let mut logged_at: Option<Instant> = None;
    let mut kill_warned = false;
    loop {
        if ctx.flavor.is_mariadb() {
            // Refused at once when anyone holds the table: never queued.
            let asked = Instant::now();
            match a
                .query_drop(format!(
                    "SET STATEMENT lock_wait_timeout = 0 FOR {lock_sql}"
                ))
                .await
            {
                Ok(()) => {
                    ledger.requested(asked, None);
                    end_wait(ctx, ledger, &mut waiting_since);
                    return Ok(Instant::now());
                }
                Err(e) if server_error_code(&e) == Some(1205) => ledger.busy_probes += 1,
                Err(e) => {
                    return Err(Attempt::Retry(format!(
                        "asking for the lock on {table}: {e}"
                    )))
                }
            }
        }
        let found =
            blockers::find(a, ctx.flavor, ledger.detection, ctx.schema, table, &own).await?;
        if found.is_empty() {
            let waited = waiting_since.is_some();
            end_wait(ctx, ledger, &mut waiting_since);
            // Rows kept changing while wraith waited: verify them before
            // asking, not under the lock (the next attempt does).
            if waited && verification_backlog() > VERIFY_UNDER_LOCK_MAX {
                return Err(Attempt::Retry(format!(
                    "{} rows changed while the cut-over waited; they are verified outside the lock first",
                    verification_backlog()
                )));
            }
            break;
        }
        if let Some(reason) = (ctx.observer.stop)() {
            end_wait(ctx, ledger, &mut waiting_since);
            return Err(Attempt::Fatal(CutoverError::Stopped {
                table: table.to_string(),
                reason,
            }));
        }
        let before = watch.ids();
        watch.update(&found);
        if watch.ids() != before || logged_at.is_none_or(|t| t.elapsed() >= BLOCKER_LOG_EVERY) {
            let list: Vec<String> = found.iter().map(|b| b.to_string()).collect();
            tracing::warn!(
                "cut-over of {table} waits without asking for the lock: {} session(s) would block it: {}",
                found.len(),
                list.join("; ")
            );
            logged_at = Some(Instant::now());
        }
        waiting_since.get_or_insert_with(Instant::now);
        for b in &found {
            ledger.blockers.insert(b.id, b.clone());
        }
        ctx.observer.progress.set_blockers(found.clone());
        if let (true, Some(grace)) = (ctx.settings.kill_blockers, ctx.settings.blocker_grace) {
            let overdue = watch.overdue(&found, grace);
            if !overdue.is_empty() && !ledger.detection.is_exact() {
                if !kill_warned {
                    tracing::warn!(
                        "kill_blockers is set, but without the metadata_lock_info plugin wraith cannot \
                         tell which sessions hold {table}, so it kills none; load the plugin \
                         (INSTALL SONAME 'metadata_lock_info') or end the sessions by hand"
                    );
                    kill_warned = true;
                }
            } else {
                for b in overdue {
                    match blockers::kill(a, b.id).await? {
                        Killed::Yes => {
                            tracing::warn!(blocker = %b, "killed a session that blocked the cut-over for longer than blocker_grace");
                            ledger.killed.push(b.id);
                        }
                        Killed::Gone => {}
                        Killed::Refused(e) if !kill_warned => {
                            tracing::warn!(
                                "cannot kill session {} that blocks the cut-over ({e}); grant wraith's user \
                                 CONNECTION ADMIN (or SUPER), or end the session by hand",
                                b.id
                            );
                            kill_warned = true;
                        }
                        Killed::Refused(_) => {}
                    }
                }
            }
        }
        tokio::time::sleep(BLOCKER_POLL).await;
    }
    // Nobody holds the table for long: one request, withdrawn after the bound.
    let bound = ctx.settings.lock_attempt_timeout;
    let asked = Instant::now();
    match bounded_request(ctx.pool, ctx.flavor, a, lock_sql, bound).await {
        Ok(true) => {
            ledger.requested(asked, None);
            Ok(Instant::now())
        }
        Ok(false) => {
            ledger.requested(asked, Some("timed out".into()));
            Err(Attempt::Retry(format!(
                "the lock on {table} was not granted within {} (lock_attempt_timeout); the request was \
                 withdrawn so that the application's writes go on",
                humantime::format_duration(bound)
            )))
        }
        Err(e) => {
            ledger.requested(asked, Some(e.to_string()));
            Err(e.into())
        }
    }
}

/// Takes a short lock other than the cut-over's (the `LOCK TABLES t READ` of
/// a consistent point) by the cut-over's rules for the application: a
/// request that cannot wait first, then one bounded by
/// `lock_attempt_timeout`, with the cut-over's backoff between attempts, so
/// a session holding the table (a long transaction that wrote it) never
/// queues the application's writes for longer than one bounded request.
/// Returns how long requests stood queued in all; `stop` ends the wait.
pub async fn lock_bounded(
    pool: &Pool,
    flavor: Flavor,
    conn: &mut Conn,
    table: &str,
    lock_sql: &str,
    settings: &CutoverSettings,
    stop: &(dyn Fn() -> Option<String> + Sync),
) -> Result<Duration, CutoverError> {
    let mut queued = Duration::ZERO;
    let attempts = settings.retries.max(1);
    let mut last = String::new();
    for failed in 0..attempts {
        if failed > 0 {
            tokio::time::sleep(settings.retry_backoff * 2u32.pow((failed - 1).min(4))).await;
        }
        if let Some(reason) = stop() {
            return Err(CutoverError::Stopped {
                table: table.to_string(),
                reason,
            });
        }
        if flavor.is_mariadb() {
            let asked = Instant::now();
            let probe = conn
                .query_drop(format!(
                    "SET STATEMENT lock_wait_timeout = 0 FOR {lock_sql}"
                ))
                .await;
            queued += asked.elapsed();
            match probe {
                Ok(()) => return Ok(queued),
                Err(e) if server_error_code(&e) == Some(1205) => {}
                Err(e) => {
                    return Err(DbError {
                        context: format!("asking for {lock_sql}"),
                        error: e,
                    }
                    .into())
                }
            }
        }
        let asked = Instant::now();
        let granted =
            bounded_request(pool, flavor, conn, lock_sql, settings.lock_attempt_timeout).await;
        queued += asked.elapsed();
        match granted {
            Ok(true) => return Ok(queued),
            Ok(false) => {
                last = format!(
                    "not granted within {} (lock_attempt_timeout)",
                    humantime::format_duration(settings.lock_attempt_timeout)
                );
                tracing::info!(
                    table,
                    attempt = failed + 1,
                    "{lock_sql}: {last}; trying again after a pause"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CutoverError::GaveUp {
        table: table.to_string(),
        shadow: shadow_name(table),
        attempts,
        last,
    })
}

/// Closes a wait for blockers, if one was open.
fn end_wait(ctx: &Attempting<'_>, ledger: &mut Ledger, waiting_since: &mut Option<Instant>) {
    if let Some(since) = waiting_since.take() {
        ledger.blocker_wait += since.elapsed();
        ctx.observer.progress.set_blockers(Vec::new());
        tracing::info!(
            table = ctx.table,
            waited_ms = ms(since.elapsed()),
            "the sessions that blocked the cut-over are gone"
        );
    }
}

/// Asks for the lock and withdraws the request after `bound`: `true` when
/// it was granted, `false` when it was withdrawn.
async fn bounded_request(
    pool: &Pool,
    flavor: Flavor,
    a: &mut Conn,
    lock_sql: &str,
    bound: Duration,
) -> Result<bool, DbError> {
    let context = || format!("{lock_sql} (bounded by {bound:?})");
    if flavor.is_mariadb() {
        // The server aborts the statement itself, waiting or not (1969).
        let sql = format!(
            "SET STATEMENT max_statement_time = {:.3} FOR {lock_sql}",
            bound.as_secs_f64()
        );
        return match a.query_drop(sql).await {
            Ok(()) => Ok(true),
            Err(e) if matches!(server_error_code(&e), Some(1969 | 1205)) => Ok(false),
            Err(e) => Err(e).context(context),
        };
    }
    // MySQL has no statement timeout for LOCK TABLES: a second session,
    // connected beforehand so that it is not late, kills the request.
    let id = a.id();
    let mut killer = pool
        .get_conn()
        .await
        .context(|| "connecting the session that bounds the lock request".into())?;
    let request = a.query_drop(lock_sql);
    tokio::pin!(request);
    let result = tokio::select! {
        r = &mut request => r,
        _ = tokio::time::sleep(bound) => {
            let _ = killer.query_drop(format!("KILL QUERY {id}")).await;
            request.await
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if matches!(server_error_code(&e), Some(1317 | 1205)) => Ok(false),
        Err(e) => Err(e).context(context),
    }
}

/// Raises `_t_new`'s AUTO_INCREMENT counter to `t`'s when it is behind, so
/// that ids of rows deleted at the end of `t` are not handed out again. Runs
/// on a session that holds no lock, while `t` is locked (its counter cannot
/// move). Returns the counter set, if any.
async fn carry_auto_increment(
    conn: &mut Conn,
    flavor: Flavor,
    schema: &str,
    table: &str,
) -> Result<Option<u64>, DbError> {
    if !flavor.is_mariadb() {
        // MySQL 8 caches information_schema.TABLES figures.
        conn.query_drop("SET SESSION information_schema_stats_expiry = 0")
            .await
            .context(|| "reading AUTO_INCREMENT counters uncached".into())?;
    }
    let shadow = shadow_name(table);
    let counters: Vec<(String, Option<u64>)> = conn
        .exec(
            "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?, ?)",
            (schema, table, &shadow),
        )
        .await
        .context(|| format!("reading the AUTO_INCREMENT counters of {table} and {shadow}"))?;
    let of = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| *c)
    };
    // No counter on either side: no AUTO_INCREMENT column to carry.
    let (Some(source), Some(new)) = (of(table), of(&shadow)) else {
        return Ok(None);
    };
    if source <= new {
        return Ok(None);
    }
    // MariaDB runs this on session B while A holds `t`: it must not wait on
    // a session holding the shadow's metadata lock (the application's writes
    // wait with it). Refused at once instead, the attempt is retried.
    // MySQL's one session holds the shadow under LOCK TABLES already.
    let no_wait = if flavor.is_mariadb() {
        "SET STATEMENT lock_wait_timeout = 0 FOR "
    } else {
        ""
    };
    conn.query_drop(format!(
        "{no_wait}ALTER TABLE {}.{} AUTO_INCREMENT = {source}",
        quote_ident(schema),
        quote_ident(&shadow)
    ))
    .await
    .context(|| format!("setting the AUTO_INCREMENT counter of {shadow} to {source}"))?;
    tracing::info!(
        table,
        counter = source,
        "AUTO_INCREMENT counter carried over to {shadow}"
    );
    Ok(Some(source))
}

impl From<DbError> for Attempt {
    fn from(e: DbError) -> Self {
        Attempt::Retry(e.to_string())
    }
}

async fn master_position(conn: &mut Conn) -> Result<DrainTarget, DbError> {
    let row: Option<mysql_async::Row> = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .context(|| "reading the binlog position under the lock".into())?;
    let (file, pos) = row
        .and_then(|r| {
            let file: Option<String> = r.get(0);
            let pos: Option<u64> = r.get(1);
            file.zip(pos)
        })
        .unwrap_or_default();
    Ok(DrainTarget { file, pos })
}

fn lock_timeout_secs(settings: &CutoverSettings) -> u64 {
    settings.lock_wait_timeout.as_secs().max(1)
}

async fn attempt_two_sessions<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<DrainTarget, Attempt> {
    let (pool, schema, table) = (ctx.pool, ctx.schema, ctx.table);
    let qs = quote_ident(schema);
    let names = SwapNames::new(schema, table);
    let timeout = lock_timeout_secs(ctx.settings);

    let mut a = pool
        .get_conn()
        .await
        .context(|| "connecting session A".into())?;
    a.query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
        .await
        .context(|| "setting lock_wait_timeout".into())?;
    let lower_case: Option<u8> = a
        .query_first("SELECT @@lower_case_table_names")
        .await
        .context(|| "reading lower_case_table_names".into())?;
    drop_markers(&mut a, schema, table)
        .await
        .map_err(|e| match e {
            CutoverError::Db(e) => Attempt::Retry(e.to_string()),
            e => Attempt::Fatal(e),
        })?;
    a.query_drop(format!(
        "CREATE TABLE {} (id INT PRIMARY KEY) COMMENT '{SWAP_COMMENT}: drop it if no wraith runs'",
        names.swap
    ))
    .await
    .context(|| "creating the cut-over swap marker".into())?;
    a.query_drop(format!(
        "CREATE TABLE {} (id INT PRIMARY KEY) COMMENT '{SENTRY_COMMENT}: drop it if no wraith runs'",
        names.sentry
    ))
    .await
    .context(|| "creating the cut-over sentry table".into())?;

    let lock_sql = format!("LOCK TABLES {} WRITE, {} WRITE", names.table, names.sentry);
    let helpers = match Helpers::connect(pool, timeout).await {
        Ok(h) => h,
        Err(e) => {
            let _ = drop_markers(&mut a, schema, table).await;
            return Err(e.into());
        }
    };
    let granted = match acquire(ctx, &mut a, &lock_sql, ledger, &|| {
        drain.verification_backlog()
    })
    .await
    {
        Ok(granted) => granted,
        Err(e) => {
            let _ = drop_markers(&mut a, schema, table).await;
            return Err(e);
        }
    };
    let outcome = locked_phase(
        ctx,
        &mut a,
        helpers,
        &names,
        passed_before_table(table, lower_case.unwrap_or(0) != 0)
            .map(|n| format!("{qs}.{}", quote_ident(&n))),
        drain,
        ledger,
    )
    .await;
    match outcome {
        Ok(target) => {
            ledger.released(granted, "renamed");
            // The marker took the sentry's name in the RENAME: it is litter now.
            let _ = a
                .query_drop(format!("DROP TABLE IF EXISTS {}", names.sentry))
                .await;
            Ok(target)
        }
        Err(e) => {
            // Unlock with the sentry in place: a queued RENAME fails harmlessly.
            let _ = a.query_drop("UNLOCK TABLES").await;
            ledger.released(granted, &attempt_outcome(&e));
            let _ = drop_markers(&mut a, schema, table).await;
            Err(e)
        }
    }
}

/// What ended an attempt, for its entry in the report.
fn attempt_outcome(e: &Attempt) -> String {
    match e {
        Attempt::Retry(why) => why.clone(),
        Attempt::Fatal(e) => e.to_string(),
    }
}

/// The quoted names one two-session swap touches.
struct SwapNames {
    table: String,
    old: String,
    new: String,
    /// Exists while A holds the lock; the RENAME's last pair renames `swap`
    /// onto it, so the RENAME fails as long as it exists.
    sentry: String,
    swap: String,
}

impl SwapNames {
    fn new(schema: &str, table: &str) -> SwapNames {
        let qs = quote_ident(schema);
        let q = |name: &str| format!("{qs}.{}", quote_ident(name));
        SwapNames {
            table: q(table),
            old: q(&old_name(table)),
            new: q(&shadow_name(table)),
            sentry: q(&sentry_name(table)),
            swap: q(&swap_name(table)),
        }
    }

    fn rename(&self) -> String {
        // The marker pair first: while the sentry exists the statement fails
        // at its first pair, before renaming anything.
        format!(
            "RENAME TABLE {} TO {}, {} TO {}, {} TO {}",
            self.swap, self.sentry, self.table, self.old, self.new, self.table
        )
    }
}

/// The sentry's name: `t` followed by more, so it sorts after `t`. The
/// server takes a statement's metadata locks in name order; a RENAME must
/// queue on `t` itself while A still holds it (see the module comment).
pub fn sentry_name(table: &str) -> String {
    format!("{table}_wraith_sentry")
}

/// The marker table the RENAME moves onto the sentry's name.
pub fn swap_name(table: &str) -> String {
    format!("{table}_wraith_swap")
}

/// Of `_t_new` and `_t_old`, the last that sorts before `t` in the server's
/// lock order, if any: once the RENAME holds it, it is waiting on `t`.
fn passed_before_table(table: &str, lower_case: bool) -> Option<String> {
    let key = |n: &str| {
        if lower_case {
            n.to_lowercase()
        } else {
            n.to_string()
        }
    };
    [old_name(table), shadow_name(table)]
        .into_iter()
        .find(|n| key(n).as_bytes() < key(table).as_bytes())
}

/// Drops the sentry and swap marker an earlier attempt or run left; a table
/// of that name without wraith's comment is someone else's and stops the
/// cut-over.
pub async fn drop_markers(conn: &mut Conn, schema: &str, table: &str) -> Result<(), CutoverError> {
    let qs = quote_ident(schema);
    for name in [sentry_name(table), swap_name(table)] {
        let comment: Option<String> = conn
            .exec_first(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (schema, &name),
            )
            .await
            .context(|| format!("looking for {name}"))?;
        match comment {
            None => {}
            Some(c) if c.starts_with(MARKER_COMMENT) => {
                conn.query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&name)))
                    .await
                    .context(|| format!("dropping the cut-over marker {name}"))?;
            }
            Some(_) => {
                return Err(CutoverError::NameTaken {
                    schema: schema.to_string(),
                    name,
                })
            }
        }
    }
    Ok(())
}

/// Whether another session holds a metadata lock on `name` (probed without
/// waiting: `lock_wait_timeout = 0` fails at once with error 1205).
async fn locked_by_other(probe: &mut Conn, name: &str) -> Result<bool, DbError> {
    match probe
        .query_drop(format!("SELECT 1 FROM {name} LIMIT 0"))
        .await
    {
        Err(mysql_async::Error::Server(e)) if e.code == 1205 => Ok(true),
        Err(mysql_async::Error::Server(_)) | Ok(()) => Ok(false),
        Err(e) => Err(DbError {
            context: format!("probing the lock on {name}"),
            error: e,
        }),
    }
}

/// The sessions the locked phase needs besides A, connected before the lock
/// is taken so that connecting does not add to the time writes wait.
struct Helpers {
    /// Session B, which issues the RENAME.
    b: Conn,
    /// Looks, without waiting, at which names B holds.
    probe: Conn,
}

impl Helpers {
    async fn connect(pool: &Pool, timeout: u64) -> Result<Helpers, DbError> {
        let mut b = pool
            .get_conn()
            .await
            .context(|| "connecting session B".into())?;
        b.query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
            .await
            .context(|| "setting lock_wait_timeout on session B".into())?;
        let mut probe = pool
            .get_conn()
            .await
            .context(|| "connecting the lock probe".into())?;
        probe
            .query_drop("SET SESSION lock_wait_timeout = 0")
            .await
            .context(|| "setting lock_wait_timeout on the probe".into())?;
        Ok(Helpers { b, probe })
    }
}

/// Steps 2 to 5 of the module comment, with the lock held.
#[allow(clippy::too_many_arguments)]
async fn locked_phase<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    helpers: Helpers,
    names: &SwapNames,
    passed_before_table: Option<String>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<DrainTarget, Attempt> {
    let Helpers { mut b, mut probe } = helpers;
    let locked = Instant::now();
    let budget = HoldBudget::new(locked, ctx.settings.lock_hold_budget);
    let target = master_position(a).await?;
    drain
        .drain_to(target.clone(), None, budget.deadline)
        .await
        .map_err(|e| e.into_attempt("draining the change stream under the lock"))?;
    budget.check("draining the change stream")?;
    drain
        .verify_locked(a, false)
        .await
        .map_err(|e| e.into_attempt("re-verifying the last changes under the lock"))?;
    budget.check("re-verifying the last changes")?;
    let drained = locked.elapsed();

    // Before B holds any name: the shadow's ALTER cannot wait on the RENAME.
    ledger.auto_increment = carry_auto_increment(&mut b, ctx.flavor, ctx.schema, ctx.table).await?;
    budget.check("carrying the AUTO_INCREMENT counter")?;
    let b_id = b.id();
    let rename_sql = names.rename();
    let rename = tokio::spawn(async move {
        let r = b.query_drop(rename_sql).await;
        (b, r)
    });

    // Confirm B is queued on `t` itself before letting go of it: it waits on
    // a metadata lock, and holds every name that sorts before `t`. Only then
    // does its exclusive request take `t` ahead of the application's writes.
    loop {
        let waiting: Option<u64> = a
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND STATE LIKE '%metadata lock%'",
                (b_id,),
            )
            .await
            .context(|| "looking for the waiting RENAME".into())?;
        let on_table = match &passed_before_table {
            Some(name) if waiting.unwrap_or(0) > 0 => locked_by_other(&mut probe, name).await?,
            _ => waiting.unwrap_or(0) > 0,
        };
        if on_table {
            break;
        }
        if rename.is_finished() {
            return Err(Attempt::Retry(
                "the RENAME did not queue behind the lock".into(),
            ));
        }
        budget.check("waiting for the RENAME to queue")?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(probe);
    tracing::debug!(
        drained_ms = ms(drained),
        rename_queued_ms = ms(locked.elapsed()),
        "cut-over: under the lock"
    );
    a.query_drop(format!("DROP TABLE {}", names.sentry))
        .await
        .context(|| "dropping the sentry".into())?;
    a.query_drop("UNLOCK TABLES")
        .await
        .context(|| "UNLOCK TABLES".into())?;
    let (_b, result) = rename
        .await
        .map_err(|e| Attempt::Retry(format!("the RENAME task failed: {e}")))?;
    match result {
        Ok(()) => Ok(target),
        Err(e) => {
            // The sentry is gone now, so the state needs looking at.
            let state = describe_tables(ctx.pool, &names.table, &names.old, &names.new).await;
            Err(Attempt::Fatal(CutoverError::Unknown {
                table: names.table.clone(),
                state: format!("{state} (RENAME error: {e})"),
            }))
        }
    }
}

async fn attempt_one_session<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<DrainTarget, Attempt> {
    let (pool, schema, table, settings) = (ctx.pool, ctx.schema, ctx.table, ctx.settings);
    let qs = quote_ident(schema);
    let qt = format!("{qs}.{}", quote_ident(table));
    let qold = format!("{qs}.{}", quote_ident(&old_name(table)));
    let qnew = format!("{qs}.{}", quote_ident(&shadow_name(table)));
    let timeout = lock_timeout_secs(settings);
    let mut a = pool
        .get_conn()
        .await
        .context(|| "connecting for the cut-over".into())?;
    a.query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
        .await
        .context(|| "setting lock_wait_timeout".into())?;
    let granted = acquire(
        ctx,
        &mut a,
        &format!("LOCK TABLES {qt} WRITE, {qnew} WRITE"),
        ledger,
        &|| drain.verification_backlog(),
    )
    .await?;
    let budget = HoldBudget::new(granted, settings.lock_hold_budget);
    let result = async {
        let target = master_position(&mut a).await?;
        drain
            .drain_to(target.clone(), Some(&mut a), budget.deadline)
            .await
            .map_err(|e| e.into_attempt("draining under the lock"))?;
        budget.check("draining the change stream")?;
        drain
            .verify_locked(&mut a, true)
            .await
            .map_err(|e| e.into_attempt("re-verifying the last changes under the lock"))?;
        budget.check("re-verifying the last changes")?;
        ledger.auto_increment = carry_auto_increment(&mut a, ctx.flavor, schema, table).await?;
        budget.check("carrying the AUTO_INCREMENT counter")?;
        a.query_drop(format!("RENAME TABLE {qt} TO {qold}, {qnew} TO {qt}"))
            .await
            .context(|| "RENAME TABLE".into())?;
        Ok::<_, Attempt>(target)
    }
    .await;
    let _ = a.query_drop("UNLOCK TABLES").await;
    match &result {
        Ok(_) => ledger.released(granted, "renamed"),
        Err(e) => ledger.released(granted, &attempt_outcome(e)),
    }
    result
}

/// The end of the time the application may wait on a granted lock
/// (`lock_hold_budget`): past it, before the RENAME is let through, the
/// attempt lets go and the next one starts from a catch-up.
struct HoldBudget {
    granted: Instant,
    deadline: Instant,
    budget: Duration,
}

impl HoldBudget {
    fn new(granted: Instant, budget: Duration) -> HoldBudget {
        HoldBudget {
            granted,
            deadline: granted + budget,
            budget,
        }
    }

    fn check(&self, step: &str) -> Result<(), Attempt> {
        if Instant::now() <= self.deadline {
            return Ok(());
        }
        Err(Attempt::Retry(format!(
            "{step} held the lock for {:.0} ms, past lock_hold_budget ({}); let go before the RENAME",
            ms(self.granted.elapsed()),
            humantime::format_duration(self.budget)
        )))
    }
}

/// Which of the three names exist, for an operator after a lost connection.
async fn describe_tables(pool: &Pool, qt: &str, qold: &str, qnew: &str) -> String {
    let Ok(mut conn) = pool.get_conn().await else {
        return "unknown (cannot reconnect)".into();
    };
    let mut parts = Vec::new();
    for name in [qt, qold, qnew] {
        let exists = conn
            .query_drop(format!("SELECT 1 FROM {name} LIMIT 0"))
            .await
            .is_ok();
        parts.push(format!(
            "{name} {}",
            if exists { "exists" } else { "missing" }
        ));
    }
    parts.join(", ")
}

/// Where a cut-over that was interrupted (kill -9 of wraith) left the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CutoverState {
    /// Nothing was renamed: `t` is the original, `_t_new` the shadow.
    NotDone,
    /// The RENAME ran: `t` is the rebuilt table and `_t_old` the original.
    Done,
}

/// Every cut-over marker table's comment starts with this.
const MARKER_COMMENT: &str = "wraith cut-over";
/// The comment of the sentry table.
const SENTRY_COMMENT: &str = "wraith cut-over sentry";
/// The comment of the table the RENAME moves onto the sentry's name.
const SWAP_COMMENT: &str = "wraith cut-over swap marker";

/// Looks at which tables exist after an interrupted cut-over, drops leftover
/// markers, and says whether the swap happened. The swap is one RENAME
/// statement, so it either happened or not: `t` is never missing.
pub async fn resolve_interrupted(
    pool: &Pool,
    schema: &str,
    table: &str,
) -> Result<CutoverState, CutoverError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting to look at the tables".into())?;
    let old = old_name(table);
    let new = shadow_name(table);
    let comment: Option<String> = conn
        .exec_first(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, &old),
        )
        .await
        .context(|| format!("looking for {old}"))?;
    let shadow_exists = crate::inspect::table_exists(&mut conn, schema, &new).await?;
    drop_markers(&mut conn, schema, table).await?;
    let state = match comment {
        // A sentry under `_t_old`, as earlier versions of wraith made it.
        Some(c) if c.starts_with(SENTRY_COMMENT) => {
            conn.query_drop(format!(
                "DROP TABLE IF EXISTS {}.{}",
                quote_ident(schema),
                quote_ident(&old)
            ))
            .await
            .context(|| "dropping a leftover cut-over sentry".into())?;
            CutoverState::NotDone
        }
        Some(_) if !shadow_exists => CutoverState::Done,
        _ => CutoverState::NotDone,
    };
    if state == CutoverState::NotDone {
        tracing::info!(table, "an interrupted cut-over renamed nothing");
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_names_sort_after_the_table() {
        for t in ["sbtest", "Users", "t", "_x", "Ä"] {
            assert!(sentry_name(t).as_bytes() > t.as_bytes());
            assert!(swap_name(t).as_bytes() > t.as_bytes());
        }
    }

    #[test]
    fn the_last_name_before_the_table_is_probed() {
        // `_sbtest_new` < `_sbtest_old` < `sbtest`: holding `_sbtest_old` means
        // the RENAME queues on `sbtest`.
        assert_eq!(
            passed_before_table("sbtest", false).as_deref(),
            Some("_sbtest_old")
        );
        // `Users` < `_Users_new`: the RENAME queues on `Users` first.
        assert_eq!(passed_before_table("Users", false), None);
        // With lower_case_table_names the server compares `users`.
        assert_eq!(
            passed_before_table("Users", true).as_deref(),
            Some("_Users_old")
        );
    }
}
