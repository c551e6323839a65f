//! Taking a table lock without stalling the application: no request while
//! blockers hold the table, and every request bounded (see the module page).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

use super::report::{ms, Ledger};
use super::{Attempt, Attempting, CutoverError, CutoverSettings, VERIFY_UNDER_LOCK_MAX};
use crate::blockers::{self, Blocker, Killed, Watchlist};
use crate::server::{server_error_code, Context, DbError, Flavor};
use crate::shadow::shadow_name;

/// How often blockers are looked at again while the cut-over waits for them.
pub(super) const BLOCKER_POLL: Duration = Duration::from_millis(100);
/// How often a wait for the same blockers is logged again.
pub(super) const BLOCKER_LOG_EVERY: Duration = Duration::from_secs(30);

/// Takes the table lock with `lock_sql` on `a`: never asks while a blocker
/// holds the table, and never lets one request stand queued for longer than
/// `lock_attempt_timeout` (see the module comment). Returns when the lock was
/// granted; every request that queued is in `ledger`.
pub(super) async fn acquire(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    lock_sql: &str,
    also_locked: &[(String, String)],
    ledger: &mut Ledger,
    verification_backlog: &(dyn Fn() -> usize + Sync),
) -> Result<Instant, Attempt> {
    let table = ctx.label();
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
        let mut found: Vec<Blocker> = Vec::new();
        // The swapped tables and whatever else the lock takes (the children
        // of a parent): a session holding any of them would stall it.
        let locked = ctx
            .tables
            .iter()
            .map(|t| (t.schema.as_str(), t.name.as_str()))
            .chain(also_locked.iter().map(|(s, t)| (s.as_str(), t.as_str())));
        for (schema, name) in locked {
            for b in blockers::find(a, ctx.flavor, ledger.detection, schema, name, &own).await? {
                if !found.iter().any(|f| f.id == b.id) {
                    found.push(b);
                }
            }
        }
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
                table: table.clone(),
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
        kill_overdue(ctx, a, &watch, &found, ledger, &mut kill_warned).await?;
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

/// Kills the blockers seen for longer than `blocker_grace` when
/// `kill_blockers` is set and the detection says who holds the table; warns
/// once when it cannot.
async fn kill_overdue(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    watch: &Watchlist,
    found: &[Blocker],
    ledger: &mut Ledger,
    kill_warned: &mut bool,
) -> Result<(), DbError> {
    let (true, Some(grace)) = (ctx.settings.kill_blockers, ctx.settings.blocker_grace) else {
        return Ok(());
    };
    let table = ctx.label();
    let overdue = watch.overdue(found, grace);
    if !overdue.is_empty() && !ledger.detection.is_exact() {
        if !*kill_warned {
            tracing::warn!(
                "kill_blockers is set, but without the metadata_lock_info plugin wraith cannot \
                     tell which sessions hold {table}, so it kills none; load the plugin \
                     (INSTALL SONAME 'metadata_lock_info') or end the sessions by hand"
            );
            *kill_warned = true;
        }
    } else {
        for b in overdue {
            match blockers::kill(a, b.id).await? {
                Killed::Yes => {
                    tracing::warn!(blocker = %b, "killed a session that blocked the cut-over for longer than blocker_grace");
                    ledger.killed.push(b.id);
                }
                Killed::Gone => {}
                Killed::Refused(e) if !*kill_warned => {
                    tracing::warn!(
                            "cannot kill session {} that blocks the cut-over ({e}); grant wraith's user \
                             CONNECTION ADMIN (or SUPER), or end the session by hand",
                            b.id
                        );
                    *kill_warned = true;
                }
                Killed::Refused(_) => {}
            }
        }
    }
    Ok(())
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
    let policy = settings.retry_policy();
    let mut last = String::new();
    let mut failed = 0;
    while policy.allows(failed) {
        policy.pause(failed).await;
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
        failed += 1;
    }
    Err(CutoverError::GaveUp {
        table: table.to_string(),
        shadow: shadow_name(table),
        attempts: failed,
        last,
    })
}

/// Closes a wait for blockers, if one was open.
pub(super) fn end_wait(
    ctx: &Attempting<'_>,
    ledger: &mut Ledger,
    waiting_since: &mut Option<Instant>,
) {
    if let Some(since) = waiting_since.take() {
        ledger.blocker_wait += since.elapsed();
        ctx.observer.progress.set_blockers(Vec::new());
        tracing::info!(
            table = ctx.label(),
            waited_ms = ms(since.elapsed()),
            "the sessions that blocked the cut-over are gone"
        );
    }
}

/// Asks for the lock and withdraws the request after `bound`: `true` when
/// it was granted, `false` when it was withdrawn.
pub(super) async fn bounded_request(
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
