//! Cut-over: swap `t` → `_t_old` and `_t_new` → `t` atomically.
//!
//! One contract, one algorithm per flavor:
//!
//! **MariaDB** cannot RENAME a table the same session holds under LOCK
//! TABLES (error 1192), so wraith uses gh-ost's two-session algorithm:
//! 1. session A creates a *sentry* table under the name `_t_old` will take and
//!    runs `LOCK TABLES t WRITE, _t_old WRITE` (bounded by `lock_wait_timeout`);
//!    from here the application's writes to `t` wait;
//! 2. wraith reads the binlog position after the lock was granted: every change
//!    to `t` is before it. It drains the change stream up to that position and
//!    applies everything to `_t_new` (the [`Drain`] callback);
//! 3. session B issues `RENAME TABLE t TO _t_old, _t_new TO t`, which waits on
//!    A's lock; wraith confirms in the processlist that it is waiting;
//! 4. A drops the sentry and unlocks; B's RENAME, an exclusive metadata lock
//!    request, runs before the queued writes, which then go to the new `t`.
//!
//! If anything fails before step 4, A unlocks with the sentry still in place:
//! B's RENAME (if issued) fails because `_t_old` exists, and nothing was
//! renamed. A session that dies releases its locks the same way. Then the
//! sentry is dropped and the attempt retried with backoff.
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
    ) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{schema}.{name} already exists; wraith renames the old table to that name. Drop or rename it, then run again")]
    OldTableExists { schema: String, name: String },
    #[error("cut-over of {table} failed after {attempts} attempts; last error: {last}. Nothing was renamed: {table} is still the original table and {shadow} is kept")]
    GaveUp {
        table: String,
        shadow: String,
        attempts: u32,
        last: String,
    },
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
    let qt = format!("{qs}.{}", quote_ident(table));
    let qold = format!("{qs}.{}", quote_ident(&old_name(table)));
    let qnew = format!("{qs}.{}", quote_ident(&shadow_name(table)));
    let timeout = lock_timeout_secs(settings);

    let mut a = pool
        .get_conn()
        .await
        .context(|| "connecting session A".into())?;
    a.query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
        .await
        .context(|| "setting lock_wait_timeout".into())?;
    a.query_drop(format!(
        "CREATE TABLE {qold} (id INT PRIMARY KEY) COMMENT '{SENTRY_COMMENT}: drop it if no wraith runs'"
    ))
    .await
    .context(|| "creating the cut-over sentry table".into())?;

    let outcome = locked_phase(pool, &mut a, &qt, &qold, &qnew, timeout, drain).await;
    match outcome {
        Ok(report) => Ok(report),
        Err(e) => {
            // Unlock with the sentry in place: a queued RENAME fails harmlessly.
            let _ = a.query_drop("UNLOCK TABLES").await;
            let _ = a.query_drop(format!("DROP TABLE IF EXISTS {qold}")).await;
            Err(e)
        }
    }
}

async fn locked_phase<D: Drain>(
    pool: &Pool,
    a: &mut Conn,
    qt: &str,
    qold: &str,
    qnew: &str,
    timeout: u64,
    drain: &mut D,
) -> Result<CutoverReport, Attempt> {
    a.query_drop(format!("LOCK TABLES {qt} WRITE, {qold} WRITE"))
        .await
        .context(|| format!("LOCK TABLES {qt} WRITE (waited up to {timeout}s)"))?;
    let locked_at = Instant::now();
    let target = master_position(a).await?;
    drain
        .drain_to(target.clone(), None)
        .await
        .map_err(|e| Attempt::Retry(format!("draining the change stream under the lock: {e}")))?;

    let mut b = pool
        .get_conn()
        .await
        .context(|| "connecting session B".into())?;
    b.query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
        .await
        .context(|| "setting lock_wait_timeout on session B".into())?;
    let b_id = b.id();
    let rename_sql = format!("RENAME TABLE {qt} TO {qold}, {qnew} TO {qt}");
    let rename = tokio::spawn(async move {
        let r = b.query_drop(rename_sql).await;
        (b, r)
    });

    // Confirm B is waiting on our lock before letting go of it.
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let waiting: Option<u64> = a
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND STATE LIKE '%metadata lock%'",
                (b_id,),
            )
            .await
            .context(|| "looking for the waiting RENAME".into())?;
        if waiting.unwrap_or(0) > 0 {
            break;
        }
        if rename.is_finished() || Instant::now() > deadline {
            return Err(Attempt::Retry(
                "the RENAME did not queue behind the lock".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.query_drop(format!("DROP TABLE {qold}"))
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
            let state = describe_tables(pool, qt, qold, qnew).await;
            Err(Attempt::Fatal(CutoverError::Unknown {
                table: qt.to_string(),
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
            .map_err(|e| Attempt::Retry(format!("draining under the lock: {e}")))?;
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

/// The comment the sentry table carries, to tell it from a real `_t_old`.
const SENTRY_COMMENT: &str = "wraith cut-over sentry";

/// Looks at which tables exist after an interrupted cut-over, drops a
/// leftover sentry, and says whether the swap happened. The swap is one
/// RENAME statement, so it either happened or not: `t` is never missing.
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
    match comment {
        Some(c) if c.starts_with(SENTRY_COMMENT) => {
            conn.query_drop(format!(
                "DROP TABLE IF EXISTS {}.{}",
                quote_ident(schema),
                quote_ident(&old)
            ))
            .await
            .context(|| "dropping a leftover cut-over sentry".into())?;
            tracing::info!(
                table,
                "dropped the sentry of an interrupted cut-over; nothing was renamed"
            );
            Ok(CutoverState::NotDone)
        }
        Some(_) if !shadow_exists => Ok(CutoverState::Done),
        _ => Ok(CutoverState::NotDone),
    }
}
