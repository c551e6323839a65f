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
//! **Several tables at once** (a group, see `crate::migration`): one RENAME
//! swaps them all, so every table is swapped or none is. Each table has its
//! own sentry and swap marker, and the RENAME starts with every marker pair.
//! A takes `LOCK TABLES t1 WRITE, t2 WRITE, …, t1_wraith_sentry WRITE, …` in
//! one statement, drains every table's stream and verifies each. The server
//! gives B the tables one at a time in lock order, and when A lets go, a
//! queued write to a table B is not yet waiting on would be served before B
//! reaches it (a write to the old table after the drain: lost). So each
//! table after the first gets a *hand-off* session, queued behind A with
//! `LOCK TABLES t WRITE, t_wraith_sentry WRITE` before A lets go: a waiting
//! lock request of that strength is served before the application's waiting
//! writes. A confirms B waits on the first table and every hand-off session
//! waits, then drops the first sentry and unlocks; B takes the first table
//! and queues on the next, which its hand-off session now holds; that session
//! waits until B queues on its table (the same check as step 4), drops its
//! sentry and lets go; and so on. A sentry is dropped only while its table is
//! held for B, so if anything fails (or wraith dies) mid-way, the sentries
//! left make the RENAME fail at its marker pairs: nothing is renamed, and B's
//! statement is killed so it does not stay queued ahead of the application.
//! The block time covers the whole hand-off, to the end of the RENAME.
//!
//! If anything fails before step 5, A unlocks with the sentry still in place:
//! B's RENAME (if issued) fails because the sentry exists, and nothing was
//! renamed. A session that dies releases its locks the same way. Then the
//! markers are dropped and the attempt retried with backoff.
//!
//! **A revert** (the revert window's `wraith revert`) is the same swap the
//! other way: [`SwapTable::back`] renames `t` to `_t_new` and `_t_old` to
//! `t`, with the same locks, sentries, drain and verification.
//!
//! **MySQL 8.0.13+** allows RENAME under LOCK TABLES in one session:
//! `LOCK TABLES t WRITE, _t_new WRITE` (every table of the group and its
//! shadow), drain, carry the AUTO_INCREMENT counters over, one `RENAME
//! TABLE` of every pair, `UNLOCK TABLES`.
//!
//! Files: `lock` takes a lock without stalling the application (the rules
//! above), `attempt` is one attempt per flavor and what it does under the
//! lock, `markers` the names a swap touches and what an interrupted
//! cut-over left, `report` the figures of the report. Attempts follow the
//! server module's `RetryPolicy` ([`CutoverSettings::retry_policy`]).

use std::future::Future;
use std::time::{Duration, Instant};

use mysql_async::{Conn, Pool};
use serde::Serialize;

use crate::blockers::{self, Blocker, Detection};
use crate::progress::ProgressHandle;
use crate::server::{BinlogPosition, Context, DbError, Flavor, RetryOn, RetryPolicy};
use crate::shadow::{old_name, shadow_name};
use crate::verify::VerifyError;

mod attempt;
mod lock;
mod markers;
mod report;
pub mod triggers;

use self::attempt::{attempt_one_session, attempt_two_sessions};
pub use self::lock::lock_bounded;
pub use self::markers::{drop_markers, resolve_interrupted, sentry_name, swap_name, CutoverState};
use self::report::Ledger;

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
        target: BinlogPosition,
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
    /// Of `held_ms`, the time after the RENAME was let through (the sentry's
    /// drop and the RENAME itself): the rest is what `lock_hold_budget` bounds.
    pub rename_ms: f64,
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
    pub drained_to: Option<BinlogPosition>,
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

impl CutoverSettings {
    /// Lock attempts: `retries` in all, `retry_backoff` after the first
    /// failure, doubling up to 16×; what is worth another attempt is the
    /// attempt's own outcome.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.retries.max(1),
            initial: self.retry_backoff,
            cap: self.retry_backoff.saturating_mul(16),
            retry_on: RetryOn::Outcome,
        }
    }
}

/// What the cut-over tells the run, and asks of it, while it waits.
pub struct Observer<'a> {
    /// Receives the blockers waited for (status, `status-json`).
    pub progress: &'a ProgressHandle,
    /// `Some(reason)` ends a wait for blockers: Ctrl-C, `panic`, a failed change stream.
    pub stop: &'a (dyn Fn() -> Option<String> + Sync),
}

/// A table the cut-over swaps: `name` goes to `retired` and `incoming`
/// becomes `name` (same schema).
#[derive(Debug, Clone)]
pub struct SwapTable {
    pub schema: String,
    pub name: String,
    /// The name the live table goes to.
    pub retired: String,
    /// The table that becomes the live one.
    pub incoming: String,
    /// Whether the live table's triggers are made on `incoming` in the
    /// locked phase and dropped from `retired` after the RENAME (see
    /// [`triggers`]): a cut-over does, a revert does not (refused with triggers).
    pub carry_triggers: bool,
    /// Columns whose implicit values `incoming` holds as DEFAULTs until its
    /// locked phase takes them off (see [`crate::implicit`]).
    pub implicit_values: Vec<crate::implicit::ImplicitValue>,
}

impl SwapTable {
    /// With the shadow's implicit values, which the locked phase takes off.
    pub fn with_implicit_values(mut self, values: Vec<crate::implicit::ImplicitValue>) -> Self {
        self.implicit_values = values;
        self
    }

    /// The cut-over: `t` → `_t_old`, `_t_new` → `t`.
    pub fn forward(schema: &str, name: &str) -> SwapTable {
        SwapTable {
            schema: schema.to_string(),
            name: name.to_string(),
            retired: old_name(name),
            incoming: shadow_name(name),
            carry_triggers: true,
            implicit_values: Vec::new(),
        }
    }

    /// A revert: `t` → `_t_new`, `_t_old` → `t`.
    pub fn back(schema: &str, name: &str) -> SwapTable {
        SwapTable {
            schema: schema.to_string(),
            name: name.to_string(),
            retired: shadow_name(name),
            incoming: old_name(name),
            carry_triggers: false,
            implicit_values: Vec::new(),
        }
    }
}

/// Swaps every table of `tables` with its shadow in one RENAME. On success
/// each `t` is the new table and `_t_old` the old one; on failure none is.
pub async fn cut_over<D: Drain + Sync>(
    pool: &Pool,
    flavor: Flavor,
    tables: &[SwapTable],
    settings: &CutoverSettings,
    drain: &mut D,
    observer: &Observer<'_>,
) -> Result<CutoverReport, CutoverError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting for the cut-over".into())?;
    for t in tables {
        if crate::server::inspect::table_exists(&mut conn, &t.schema, &t.retired).await? {
            return Err(CutoverError::OldTableExists {
                schema: t.schema.clone(),
                name: t.retired.clone(),
            });
        }
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
    let policy = settings.retry_policy();
    let mut failed = 0;
    let mut last = String::new();
    while policy.allows(failed) {
        let ctx = Attempting {
            pool,
            flavor,
            tables,
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
        // No trigger may fire on the shadow while changes are applied to it
        // (a failed attempt drops what it made; this makes sure).
        triggers::drop_from_incoming(pool, tables).await?;
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
                if policy.allows(failed) {
                    policy.pause(failed).await;
                }
            }
        }
    }
    Err(CutoverError::GaveUp {
        table: tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        shadow: tables
            .iter()
            .map(|t| t.incoming.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        attempts: failed,
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
    /// The tables swapped together.
    tables: &'a [SwapTable],
    settings: &'a CutoverSettings,
    observer: &'a Observer<'a>,
}

impl Attempting<'_> {
    /// The tables, for messages.
    fn label(&self) -> String {
        self.tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl From<DbError> for Attempt {
    fn from(e: DbError) -> Self {
        Attempt::Retry(e.to_string())
    }
}

/// What ended an attempt, for its entry in the report.
fn attempt_outcome(e: &Attempt) -> String {
    match e {
        Attempt::Retry(why) => why.clone(),
        Attempt::Fatal(e) => e.to_string(),
    }
}
