//! Cut-over: swap `t` → `_t_old` and `_t_new` → `t` atomically.
//!
//! One contract, one algorithm per flavor:
//!
//! **MariaDB** cannot RENAME a table the same session holds under LOCK
//! TABLES (error 1192), so wraith uses gh-ost's two-session algorithm, with
//! the sentry moved to a name that sorts after `t`:
//! 1. session A creates a *sentry* `t_wraith_sentry` and a *swap marker*
//!    `t_wraith_swap`, and runs `LOCK TABLES t WRITE, t_wraith_sentry WRITE`
//!    (bounded by `lock_wait_timeout`); from here the application's writes
//!    to `t` wait;
//! 2. wraith reads the binlog position after the lock was granted: every change
//!    to `t` is before it. It drains the change stream up to that position and
//!    applies everything to `_t_new` (the [`Drain`] callback), then
//!    re-verifies the rows changed since the last verification, reading `t`
//!    on A (see [`crate::verify`]); a mismatch or a duplicate stops the run
//!    with nothing renamed;
//! 3. session B issues `RENAME TABLE t_wraith_swap TO t_wraith_sentry,
//!    t TO _t_old, _t_new TO t`, which fails at its first pair as long as the
//!    sentry exists. The server takes a statement's metadata locks one by one in
//!    name order, so B first takes the names before `t` and then queues on
//!    `t`. wraith confirms that: B waits on a metadata lock (processlist) and
//!    holds the last name before `t` (a probe with `lock_wait_timeout = 0`);
//! 4. A drops the sentry and unlocks; B's exclusive request on `t` is served
//!    before the queued writes, which then go to the new `t`.
//!
//! Why the sentry is not `_t_old` as in gh-ost: `_t_old` sorts before `t`, so
//! B would queue on the sentry, not on `t`. Between A's DROP of the sentry
//! and its UNLOCK, B must then move on to queue on `t`; if it has not, the
//! queued writes win `t` at the UNLOCK and commit to the old table just
//! before the RENAME, after the drain: lost changes. The kill -9 harness
//! found exactly that.
//!
//! If anything fails before step 4, A unlocks with the sentry still in place:
//! B's RENAME (if issued) fails because the sentry exists, and nothing was
//! renamed. A session that dies releases its locks the same way. Then the
//! markers are dropped and the attempt retried with backoff.
//!
//! **MySQL 8.0.13+** allows RENAME under LOCK TABLES in one session:
//! `LOCK TABLES t WRITE, _t_new WRITE`, drain, `RENAME TABLE`, `UNLOCK TABLES`.
//!
//! The time writes were blocked (lock granted → unlock/rename done) is
//! measured and reported.

use std::future::Future;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;

use crate::db::{quote_ident, Context, DbError, Flavor};
use crate::shadow::{old_name, shadow_name};
use crate::verify::VerifyError;

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
    fn drain_to(
        &mut self,
        target: DrainTarget,
        locked: Option<&mut Conn>,
    ) -> impl Future<Output = Result<(), DrainError>> + Send;

    /// Re-verifies the rows the drains applied since the last verification,
    /// before the rename may happen. `session` holds the lock on the table
    /// (only it may read it); with `shadow_locked` it holds the shadow too.
    fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> impl Future<Output = Result<(), DrainError>> + Send;
}

/// Why a drain or its verification failed.
#[derive(Debug)]
pub enum DrainError {
    /// Worth another attempt (the stream was slow, a connection failed).
    Retry(String),
    /// The shadow cannot become the table: stop, rename nothing.
    Stop(Box<VerifyError>),
}

impl std::fmt::Display for DrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainError::Retry(m) => f.write_str(m),
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
}

/// What the cut-over did.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    pub attempts: u32,
    /// How long writes to the table were blocked in the successful attempt.
    pub blocked_ms: f64,
    pub drained_to: Option<DrainTarget>,
}

/// Settings of the cut-over.
#[derive(Debug, Clone)]
pub struct CutoverSettings {
    pub lock_wait_timeout: Duration,
    pub retries: u32,
}

/// Swaps the tables. On success `table` is the new table and `_table_old` the old one.
pub async fn cut_over<D: Drain>(
    pool: &Pool,
    flavor: Flavor,
    schema: &str,
    table: &str,
    settings: &CutoverSettings,
    drain: &mut D,
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
    drop(conn);
    let attempts = settings.retries.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let result = if flavor.is_mariadb() {
            attempt_two_sessions(pool, schema, table, settings, drain).await
        } else {
            attempt_one_session(pool, schema, table, settings, drain).await
        };
        match result {
            Ok(mut report) => {
                report.attempts = attempt;
                return Ok(report);
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => {
                tracing::warn!(attempt, error = %why, "cut-over attempt failed; nothing was renamed");
                last = why;
                let backoff = Duration::from_millis(500 * 2u64.pow(attempt.min(5)));
                tokio::time::sleep(backoff).await;
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

async fn attempt_two_sessions<D: Drain>(
    pool: &Pool,
    schema: &str,
    table: &str,
    settings: &CutoverSettings,
    drain: &mut D,
) -> Result<CutoverReport, Attempt> {
    let qs = quote_ident(schema);
    let names = SwapNames::new(schema, table);
    let timeout = lock_timeout_secs(settings);

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

    let outcome = locked_phase(
        pool,
        &mut a,
        &names,
        passed_before_table(table, lower_case.unwrap_or(0) != 0)
            .map(|n| format!("{qs}.{}", quote_ident(&n))),
        timeout,
        drain,
    )
    .await;
    match outcome {
        Ok(report) => {
            // The marker took the sentry's name in the RENAME: it is litter now.
            let _ = a
                .query_drop(format!("DROP TABLE IF EXISTS {}", names.sentry))
                .await;
            Ok(report)
        }
        Err(e) => {
            // Unlock with the sentry in place: a queued RENAME fails harmlessly.
            let _ = a.query_drop("UNLOCK TABLES").await;
            let _ = drop_markers(&mut a, schema, table).await;
            Err(e)
        }
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

async fn locked_phase<D: Drain>(
    pool: &Pool,
    a: &mut Conn,
    names: &SwapNames,
    passed_before_table: Option<String>,
    timeout: u64,
    drain: &mut D,
) -> Result<CutoverReport, Attempt> {
    a.query_drop(format!(
        "LOCK TABLES {} WRITE, {} WRITE",
        names.table, names.sentry
    ))
    .await
    .context(|| {
        format!(
            "LOCK TABLES {} WRITE (waited up to {timeout}s)",
            names.table
        )
    })?;
    let locked_at = Instant::now();
    let target = master_position(a).await?;
    drain
        .drain_to(target.clone(), None)
        .await
        .map_err(|e| e.into_attempt("draining the change stream under the lock"))?;
    drain
        .verify_locked(a, false)
        .await
        .map_err(|e| e.into_attempt("re-verifying the last changes under the lock"))?;

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
    let b_id = b.id();
    let rename_sql = names.rename();
    let rename = tokio::spawn(async move {
        let r = b.query_drop(rename_sql).await;
        (b, r)
    });

    // Confirm B is queued on `t` itself before letting go of it: it waits on
    // a metadata lock, and holds every name that sorts before `t`. Only then
    // does its exclusive request take `t` ahead of the application's writes.
    let deadline = Instant::now() + Duration::from_secs(timeout);
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
        if rename.is_finished() || Instant::now() > deadline {
            return Err(Attempt::Retry(
                "the RENAME did not queue behind the lock".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(probe);
    a.query_drop(format!("DROP TABLE {}", names.sentry))
        .await
        .context(|| "dropping the sentry".into())?;
    a.query_drop("UNLOCK TABLES")
        .await
        .context(|| "UNLOCK TABLES".into())?;
    let (_b, result) = rename
        .await
        .map_err(|e| Attempt::Retry(format!("the RENAME task failed: {e}")))?;
    let blocked = locked_at.elapsed();
    match result {
        Ok(()) => Ok(CutoverReport {
            attempts: 0,
            blocked_ms: blocked.as_secs_f64() * 1000.0,
            drained_to: Some(target),
        }),
        Err(e) => {
            // The sentry is gone now, so the state needs looking at.
            let state = describe_tables(pool, &names.table, &names.old, &names.new).await;
            Err(Attempt::Fatal(CutoverError::Unknown {
                table: names.table.clone(),
                state: format!("{state} (RENAME error: {e})"),
            }))
        }
    }
}

async fn attempt_one_session<D: Drain>(
    pool: &Pool,
    schema: &str,
    table: &str,
    settings: &CutoverSettings,
    drain: &mut D,
) -> Result<CutoverReport, Attempt> {
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
    a.query_drop(format!("LOCK TABLES {qt} WRITE, {qnew} WRITE"))
        .await
        .context(|| "LOCK TABLES".into())?;
    let locked_at = Instant::now();
    let result = async {
        let target = master_position(&mut a).await?;
        drain
            .drain_to(target.clone(), Some(&mut a))
            .await
            .map_err(|e| e.into_attempt("draining under the lock"))?;
        drain
            .verify_locked(&mut a, true)
            .await
            .map_err(|e| e.into_attempt("re-verifying the last changes under the lock"))?;
        a.query_drop(format!("RENAME TABLE {qt} TO {qold}, {qnew} TO {qt}"))
            .await
            .context(|| "RENAME TABLE".into())?;
        Ok::<_, Attempt>(target)
    }
    .await;
    let _ = a.query_drop("UNLOCK TABLES").await;
    let target = result?;
    Ok(CutoverReport {
        attempts: 0,
        blocked_ms: locked_at.elapsed().as_secs_f64() * 1000.0,
        drained_to: Some(target),
    })
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
