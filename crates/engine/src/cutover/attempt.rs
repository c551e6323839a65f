//! One attempt of the swap: MariaDB's two sessions, MySQL's one, and what
//! both do under the lock (steps 1 to 5 of the module page).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

use super::lock::acquire;
use super::markers::{drop_markers, passed_before_table, SwapNames, SENTRY_COMMENT, SWAP_COMMENT};
use super::report::{ms, Ledger};
use super::{attempt_outcome, Attempt, Attempting, CutoverError, CutoverSettings, Drain};
use crate::server::{
    self, quote_ident, set_lock_wait_timeout, BinlogPosition, Context, DbError, Flavor, TablesLock,
};
use crate::shadow::{old_name, shadow_name};

/// The binlog position under the lock: every change to the table is before it.
/// (The GTID state is not read: the drain needs only file:pos.)
pub(super) async fn locked_position(
    conn: &mut Conn,
    flavor: Flavor,
) -> Result<BinlogPosition, DbError> {
    Ok(server::binlog_status(conn, flavor)
        .await?
        .unwrap_or_default())
}

pub(super) fn lock_timeout_secs(settings: &CutoverSettings) -> u64 {
    settings.lock_wait_timeout.as_secs().max(1)
}

pub(super) async fn attempt_two_sessions<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<BinlogPosition, Attempt> {
    let (pool, schema, table) = (ctx.pool, ctx.schema, ctx.table);
    let qs = quote_ident(schema);
    let names = SwapNames::new(schema, table);
    let timeout = lock_timeout_secs(ctx.settings);

    let mut a = pool
        .get_conn()
        .await
        .context(|| "connecting session A".into())?;
    set_lock_wait_timeout(&mut a, timeout).await?;
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

/// Steps 2 to 5 of the module comment, with the lock held.
#[allow(clippy::too_many_arguments)]
pub(super) async fn locked_phase<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    helpers: Helpers,
    names: &SwapNames,
    passed_before_table: Option<String>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<BinlogPosition, Attempt> {
    let Helpers { mut b, mut probe } = helpers;
    let locked = Instant::now();
    let budget = HoldBudget::new(locked, ctx.settings.lock_hold_budget);
    let target = locked_position(a, ctx.flavor).await?;
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
    ledger.let_through = Some(Instant::now());
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

pub(super) async fn attempt_one_session<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<BinlogPosition, Attempt> {
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
    set_lock_wait_timeout(&mut a, timeout).await?;
    let granted = acquire(
        ctx,
        &mut a,
        &format!("LOCK TABLES {qt} WRITE, {qnew} WRITE"),
        ledger,
        &|| drain.verification_backlog(),
    )
    .await?;
    // Held from the grant (the request's queueing is in the ledger already).
    let mut lock = TablesLock::granted(a, Duration::ZERO);
    let budget = HoldBudget::new(granted, settings.lock_hold_budget);
    let result = async {
        let a = lock.conn();
        let target = locked_position(a, ctx.flavor).await?;
        drain
            .drain_to(target.clone(), Some(&mut *a), budget.deadline)
            .await
            .map_err(|e| e.into_attempt("draining under the lock"))?;
        budget.check("draining the change stream")?;
        drain
            .verify_locked(a, true)
            .await
            .map_err(|e| e.into_attempt("re-verifying the last changes under the lock"))?;
        budget.check("re-verifying the last changes")?;
        ledger.auto_increment = carry_auto_increment(a, ctx.flavor, schema, table).await?;
        budget.check("carrying the AUTO_INCREMENT counter")?;
        ledger.let_through = Some(Instant::now());
        a.query_drop(format!("RENAME TABLE {qt} TO {qold}, {qnew} TO {qt}"))
            .await
            .context(|| "RENAME TABLE".into())?;
        Ok::<_, Attempt>(target)
    }
    .await;
    // Its own result is of no use: the session goes back to the pool either way.
    let _ = lock.unlock().await;
    match &result {
        Ok(_) => ledger.released(granted, "renamed"),
        Err(e) => ledger.released(granted, &attempt_outcome(e)),
    }
    result
}

/// The sessions the locked phase needs besides A, connected before the lock
/// is taken so that connecting does not add to the time writes wait.
pub(super) struct Helpers {
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
        set_lock_wait_timeout(&mut b, timeout).await?;
        let mut probe = pool
            .get_conn()
            .await
            .context(|| "connecting the lock probe".into())?;
        set_lock_wait_timeout(&mut probe, 0).await?;
        Ok(Helpers { b, probe })
    }
}

/// Whether another session holds a metadata lock on `name` (probed without
/// waiting: `lock_wait_timeout = 0` fails at once with error 1205).
pub(super) async fn locked_by_other(probe: &mut Conn, name: &str) -> Result<bool, DbError> {
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

/// The end of the time the application may wait on a granted lock
/// (`lock_hold_budget`): past it, before the RENAME is let through, the
/// attempt lets go and the next one starts from a catch-up.
pub(super) struct HoldBudget {
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

/// Raises `_t_new`'s AUTO_INCREMENT counter to `t`'s when it is behind, so
/// that ids of rows deleted at the end of `t` are not handed out again. Runs
/// on a session that holds no lock, while `t` is locked (its counter cannot
/// move). Returns the counter set, if any.
pub(super) async fn carry_auto_increment(
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

/// Which of the three names exist, for an operator after a lost connection.
pub(super) async fn describe_tables(pool: &Pool, qt: &str, qold: &str, qnew: &str) -> String {
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
