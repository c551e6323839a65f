//! One attempt of the swap: MariaDB's two sessions, MySQL's one, and what
//! both do under the lock (steps 1 to 5 of the module page).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

use super::lock::acquire;
use super::markers::{drop_markers, SwapNames, TableNames, SENTRY_COMMENT, SWAP_COMMENT};
use super::report::{ms, Ledger};
use super::{attempt_outcome, Attempt, Attempting, CutoverError, CutoverSettings, Drain};
use crate::server::{
    self, quote_ident, set_lock_wait_timeout, BinlogPosition, Context, DbError, Flavor, TablesLock,
};

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
    let pool = ctx.pool;
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
    let names = SwapNames::new(ctx.tables, lower_case.unwrap_or(0) != 0);
    // Children whose constraints follow the table (crate::foreign_keys):
    // locked with it, re-pointed at the shadow under the lock.
    let children = crate::foreign_keys::MovingChildren::read(&mut a, ctx.tables)
        .await
        .map_err(|e| Attempt::Retry(format!("reading the children's constraints: {e}")))?;
    drop_all_markers(&mut a, ctx).await?;
    for t in &names.tables {
        a.query_drop(format!(
            "CREATE TABLE {} (id INT PRIMARY KEY) COMMENT '{SWAP_COMMENT}: drop it if no wraith runs'",
            t.swap
        ))
        .await
        .context(|| "creating the cut-over swap marker".into())?;
        a.query_drop(format!(
            "CREATE TABLE {} (id INT PRIMARY KEY) COMMENT '{SENTRY_COMMENT}: drop it if no wraith runs'",
            t.sentry
        ))
        .await
        .context(|| "creating the cut-over sentry table".into())?;
    }

    let helpers = match Helpers::connect(pool, timeout, names.tables.len() - 1).await {
        Ok(h) => h,
        Err(e) => {
            let _ = drop_all_markers(&mut a, ctx).await;
            return Err(e.into());
        }
    };
    let lock = format!("{}{}", names.lock_all(), children.lock_items());
    let granted = match acquire(
        ctx,
        &mut a,
        &lock,
        &children.locked_tables(),
        ledger,
        &|| drain.verification_backlog(),
    )
    .await
    {
        Ok(granted) => granted,
        Err(e) => {
            let _ = drop_all_markers(&mut a, ctx).await;
            return Err(e);
        }
    };
    let outcome = locked_phase(ctx, &mut a, helpers, &names, &children, drain, ledger).await;
    match outcome {
        Ok(target) => {
            ledger.released(granted, "renamed");
            super::triggers::drop_from_retired(&mut a, &names).await;
            // The markers took the sentries' names in the RENAME: litter now.
            for t in &names.tables {
                let _ = a
                    .query_drop(format!("DROP TABLE IF EXISTS {}", t.sentry))
                    .await;
            }
            Ok(target)
        }
        Err(e) => {
            // The locked phase let go of everything it took; the sentries
            // left in place make a RENAME still queued fail harmlessly.
            // Children re-pointed at a shadow that did not become the table
            // go back before the lock does.
            let undone = children.back(&mut a, true).await;
            let _ = a.query_drop("UNLOCK TABLES").await;
            if let Err(e) = undone {
                tracing::warn!(error = %e, "re-pointing children back under the lock failed; retrying without it");
                if let Err(e) = children.back(&mut a, false).await {
                    tracing::error!(error = %e, "children's constraints may reference the shadow; the next attempt or run re-points them first");
                }
            }
            for t in names.tables.iter().filter(|t| t.carry_triggers) {
                if let Err(e) =
                    crate::foreign_keys::drop_from_shadow(&mut a, &t.schema, &t.name).await
                {
                    tracing::error!(error = %e, table = %t.name, "the shadow keeps constraints; the next attempt or run takes them off");
                }
            }
            // The change stream goes on: the shadows need their implicit
            // values as DEFAULTs again (a resumed run puts them back too).
            for t in &names.tables {
                if let Err(e) =
                    crate::implicit::hold(&mut a, &t.schema, &t.incoming, &t.implicit_values).await
                {
                    tracing::error!(error = %e, table = %t.name, "the shadow lacks the implicit values' defaults; the change stream stops at the next insert, and a resumed run puts them back");
                }
            }
            ledger.released(granted, &attempt_outcome(&e));
            let _ = drop_all_markers(&mut a, ctx).await;
            Err(e)
        }
    }
}

/// Drops the markers of every table of the swap.
async fn drop_all_markers(a: &mut Conn, ctx: &Attempting<'_>) -> Result<(), Attempt> {
    for t in ctx.tables {
        drop_markers(a, &t.schema, &t.name)
            .await
            .map_err(|e| match e {
                CutoverError::Db(e) => Attempt::Retry(e.to_string()),
                e => Attempt::Fatal(e),
            })?;
    }
    Ok(())
}

/// A session queued for one table's lock behind session A (the hand-off
/// of the tables after the first, see the module page).
struct HandOff {
    /// Index of the table in the swap's lock order.
    table: usize,
    id: u32,
    task: tokio::task::JoinHandle<(Conn, Result<(), mysql_async::Error>)>,
}

/// Steps 2 to 5 of the module comment, with the lock held. On an error,
/// everything the phase took is let go except A's lock (the caller's), and
/// the RENAME, if issued, is stopped.
pub(super) async fn locked_phase<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    helpers: Helpers,
    names: &SwapNames,
    children: &crate::foreign_keys::MovingChildren,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<BinlogPosition, Attempt> {
    let Helpers {
        mut b,
        mut probe,
        hand_off,
    } = helpers;
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

    // Before B holds any name: the shadows' ALTERs cannot wait on the RENAME.
    for t in &names.tables {
        if let Some(n) = carry_auto_increment(&mut b, ctx.flavor, t).await? {
            ledger.auto_increment = Some(n);
        }
    }
    budget.check("carrying the AUTO_INCREMENT counters")?;
    // The shadows equal the frozen tables: the implicit values' DEFAULTs
    // come off, so the new table's definition is the server's ALTER's
    // (instant, no wait; a failed attempt puts them back).
    for t in &names.tables {
        crate::implicit::release(
            &mut b,
            &t.schema,
            &t.incoming,
            &t.implicit_values,
            ctx.flavor.is_mariadb(),
        )
        .await?;
    }
    budget.check("taking the implicit values' defaults off the shadows")?;
    // The children now reference the shadows, equal to the frozen tables
    // (an ALTER or CREATE TRIGGER of a shadow does not wait on the children
    // A holds: measured). Not held to the budget: preflight named its cost.
    children
        .to_shadows(a)
        .await
        .map_err(|e| Attempt::Retry(format!("re-pointing the children's constraints: {e}")))?;
    // The shadows get their own tables' constraints now, equal to the frozen
    // tables: earlier, a lagging shadow's row would refuse the application's
    // delete of its parent. In place, no wait; a failed attempt takes them off.
    // (A cut-over only: a revert's incoming table is the old one.)
    for t in names.tables.iter().filter(|t| t.carry_triggers) {
        crate::foreign_keys::add_to_shadow(&mut b, &t.schema, &t.name, true)
            .await
            .map_err(|e| Attempt::Retry(format!("adding the constraints to the shadow: {e}")))?;
    }
    budget.check("adding the constraints to the shadows")?;
    // The last step before the RENAME queues: the shadows get the tables'
    // triggers (see `triggers`); a failure from here on drops them again.
    let carried = Instant::now();
    let made = super::triggers::carry_all(&mut b, names)
        .await
        .map_err(Attempt::from)
        .and_then(|made| {
            budget
                .check("creating the triggers on the shadows")
                .map(|()| made)
        });
    let made = match made {
        Ok(made) => made,
        Err(e) => {
            super::triggers::undo_carry(&mut probe, names, lock_timeout_secs(ctx.settings)).await;
            return Err(e);
        }
    };
    if made > 0 {
        tracing::info!(
            triggers = made,
            ms = ms(carried.elapsed()),
            "triggers made on the shadows under the lock"
        );
    }
    // Every table after the first is handed to the RENAME by a session of
    // its own, queued now behind A: its request is served before the
    // application's writes when A lets go.
    let mut queued = Vec::new();
    for (k, mut conn) in (1..names.tables.len()).zip(hand_off) {
        let t = &names.tables[k];
        let sql = format!("LOCK TABLES {} WRITE, {} WRITE", t.table, t.sentry);
        queued.push(HandOff {
            table: k,
            id: conn.id(),
            task: tokio::spawn(async move {
                let r = conn.query_drop(sql).await;
                (conn, r)
            }),
        });
    }
    let b_id = b.id();
    let rename_sql = names.rename();
    let rename = tokio::spawn(async move {
        let r = b.query_drop(rename_sql).await;
        (b, r)
    });
    let queued_up = async {
        // B queued on the first table itself, and every hand-off session
        // queued behind A, before A lets go.
        loop {
            let mut ready = queued_on(a, &mut probe, b_id, names.passed_before(0)).await?;
            for h in &queued {
                ready = ready && waiting_on_lock(a, h.id).await?;
            }
            if ready {
                return Ok(());
            }
            if rename.is_finished() || queued.iter().any(|h| h.task.is_finished()) {
                return Err(Attempt::Retry(
                    "the RENAME or a hand-off lock did not queue behind the lock".into(),
                ));
            }
            budget.check("waiting for the RENAME to queue")?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    .await;
    if let Err(e) = queued_up {
        stop_rename(a, b_id, &rename).await;
        if made > 0 {
            // Before A lets go: no write may reach a shadow with triggers.
            super::triggers::undo_carry(&mut probe, names, lock_timeout_secs(ctx.settings)).await;
        }
        // A still holds every table: the hand-off sessions get theirs once
        // A lets go (the caller), and give them back at once.
        for h in queued {
            tokio::spawn(async move {
                if let Ok((mut conn, _)) = h.task.await {
                    let _ = conn.query_drop("UNLOCK TABLES").await;
                }
            });
        }
        return Err(e);
    }
    tracing::debug!(
        drained_ms = ms(drained),
        rename_queued_ms = ms(locked.elapsed()),
        "cut-over: under the lock"
    );
    ledger.let_through = Some(Instant::now());
    let first = names
        .tables
        .first()
        .map(|t| t.sentry.clone())
        .unwrap_or_default();
    a.query_drop(format!("DROP TABLE {first}"))
        .await
        .context(|| "dropping the sentry".into())?;
    a.query_drop("UNLOCK TABLES")
        .await
        .context(|| "UNLOCK TABLES".into())?;
    if let Err(e) = hand_over(ctx, a, &mut probe, names, b_id, &rename, queued).await {
        if made > 0 {
            super::triggers::undo_carry(&mut probe, names, lock_timeout_secs(ctx.settings)).await;
        }
        return Err(e);
    }
    let (_b, result) = rename
        .await
        .map_err(|e| Attempt::Retry(format!("the RENAME task failed: {e}")))?;
    match result {
        Ok(()) => Ok(target),
        Err(e) => {
            // The sentries are gone now, so the state needs looking at.
            let state = describe_all(ctx.pool, names).await;
            Err(Attempt::Fatal(CutoverError::Unknown {
                table: names
                    .tables
                    .iter()
                    .map(|t| t.table.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                state: format!("{state} (RENAME error: {e})"),
            }))
        }
    }
}

/// Hands the tables after the first to the RENAME, in lock order: a table's
/// session, once granted (ahead of the application's writes), waits until
/// the RENAME queues on its table, drops its sentry and lets go, so the
/// RENAME's request is served first again. A step that fails stops the
/// RENAME and lets every table go: the sentries not yet dropped make a
/// RENAME that still runs fail, so nothing is renamed.
async fn hand_over(
    ctx: &Attempting<'_>,
    a: &mut Conn,
    probe: &mut Conn,
    names: &SwapNames,
    b_id: u32,
    rename: &tokio::task::JoinHandle<(Conn, Result<(), mysql_async::Error>)>,
    queued: Vec<HandOff>,
) -> Result<(), Attempt> {
    let mut queued = queued.into_iter();
    let deadline = Instant::now() + ctx.settings.lock_wait_timeout;
    let mut failure = None;
    for h in queued.by_ref() {
        let step = async {
            let table = &names.tables[h.table];
            let (mut conn, granted) = h
                .task
                .await
                .map_err(|e| Attempt::Retry(format!("a hand-off session failed: {e}")))?;
            if let Err(e) = granted {
                return Err(Attempt::Retry(format!(
                    "the hand-off lock on {} failed: {e}",
                    table.table
                )));
            }
            let result = async {
                loop {
                    if queued_on(a, probe, b_id, names.passed_before(h.table)).await? {
                        break;
                    }
                    if rename.is_finished() || Instant::now() > deadline {
                        return Err(Attempt::Retry(format!(
                            "the RENAME did not queue on {} within lock_wait_timeout",
                            table.table
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                conn.query_drop(format!("DROP TABLE {}", table.sentry))
                    .await
                    .context(|| "dropping a sentry".into())?;
                Ok(())
            }
            .await;
            let _ = conn.query_drop("UNLOCK TABLES").await;
            result
        }
        .await;
        if let Err(e) = step {
            failure = Some(e);
            break;
        }
    }
    let Some(e) = failure else {
        return Ok(());
    };
    stop_rename(a, b_id, rename).await;
    for h in queued {
        if let Ok((mut conn, _)) = h.task.await {
            let _ = conn.query_drop("UNLOCK TABLES").await;
        }
    }
    Err(e)
}

/// Whether session `b_id` waits on a metadata lock and holds `passed` (the
/// name before the one it should wait on), so it queues on that one.
async fn queued_on(
    a: &mut Conn,
    probe: &mut Conn,
    b_id: u32,
    passed: Option<String>,
) -> Result<bool, Attempt> {
    if !waiting_on_lock(a, b_id).await? {
        return Ok(false);
    }
    Ok(match passed {
        Some(name) => locked_by_other(probe, &name).await?,
        None => true,
    })
}

/// Whether session `id` waits on a metadata lock.
async fn waiting_on_lock(conn: &mut Conn, id: u32) -> Result<bool, Attempt> {
    let waiting: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND STATE LIKE '%metadata lock%'",
            (id,),
        )
        .await
        .context(|| "looking for the waiting RENAME".into())?;
    Ok(waiting.unwrap_or(0) > 0)
}

/// Stops a RENAME that must not run (a failed attempt): it has renamed
/// nothing while it waits, and must not stay queued ahead of the
/// application's writes. Its own end is awaited by no one.
async fn stop_rename(
    conn: &mut Conn,
    b_id: u32,
    rename: &tokio::task::JoinHandle<(Conn, Result<(), mysql_async::Error>)>,
) {
    if !rename.is_finished() {
        let _ = conn.query_drop(format!("KILL QUERY {b_id}")).await;
    }
}

pub(super) async fn attempt_one_session<D: Drain + Sync>(
    ctx: &Attempting<'_>,
    drain: &mut D,
    ledger: &mut Ledger,
) -> Result<BinlogPosition, Attempt> {
    let (pool, settings) = (ctx.pool, ctx.settings);
    let names = SwapNames::new(ctx.tables, false);
    let timeout = lock_timeout_secs(settings);
    let mut a = pool
        .get_conn()
        .await
        .context(|| "connecting for the cut-over".into())?;
    set_lock_wait_timeout(&mut a, timeout).await?;
    let locks: Vec<String> = names
        .tables
        .iter()
        .map(|t| format!("{} WRITE, {} WRITE", t.table, t.new))
        .collect();
    let granted = acquire(
        ctx,
        &mut a,
        &format!("LOCK TABLES {}", locks.join(", ")),
        &[],
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
        for t in &names.tables {
            if let Some(n) = carry_auto_increment(a, ctx.flavor, t).await? {
                ledger.auto_increment = Some(n);
            }
        }
        budget.check("carrying the AUTO_INCREMENT counters")?;
        for t in &names.tables {
            crate::implicit::release(a, &t.schema, &t.incoming, &t.implicit_values, false).await?;
        }
        budget.check("taking the implicit values' defaults off the shadows")?;
        super::triggers::carry_all(a, &names).await?;
        budget.check("creating the triggers on the shadows")?;
        ledger.let_through = Some(Instant::now());
        let pairs: Vec<String> = names
            .tables
            .iter()
            .map(|t| format!("{} TO {}, {} TO {}", t.table, t.old, t.new, t.table))
            .collect();
        a.query_drop(format!("RENAME TABLE {}", pairs.join(", ")))
            .await
            .context(|| "RENAME TABLE".into())?;
        Ok::<_, Attempt>(target)
    }
    .await;
    if result.is_err() {
        // The shadows are still held: no write reaches them before this.
        super::triggers::undo_carry(lock.conn(), &names, timeout).await;
        for t in &names.tables {
            if let Err(e) =
                crate::implicit::hold(lock.conn(), &t.schema, &t.incoming, &t.implicit_values).await
            {
                tracing::error!(error = %e, table = %t.name, "the shadow lacks the implicit values' defaults; a resumed run puts them back");
            }
        }
    }
    // Its own result is of no use: the session goes back to the pool either way.
    let mut unlocked = lock.unlock().await;
    if result.is_ok() {
        super::triggers::drop_from_retired(&mut unlocked.conn, &names).await;
    }
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
    /// One per table after the first: hands it to the RENAME.
    hand_off: Vec<Conn>,
}

impl Helpers {
    async fn connect(pool: &Pool, timeout: u64, hand_offs: usize) -> Result<Helpers, DbError> {
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
        let mut hand_off = Vec::with_capacity(hand_offs);
        for _ in 0..hand_offs {
            let mut conn = pool
                .get_conn()
                .await
                .context(|| "connecting a hand-off session".into())?;
            set_lock_wait_timeout(&mut conn, timeout).await?;
            hand_off.push(conn);
        }
        Ok(Helpers { b, probe, hand_off })
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
    names: &TableNames,
) -> Result<Option<u64>, DbError> {
    if !flavor.is_mariadb() {
        // MySQL 8 caches information_schema.TABLES figures.
        conn.query_drop("SET SESSION information_schema_stats_expiry = 0")
            .await
            .context(|| "reading AUTO_INCREMENT counters uncached".into())?;
    }
    let (schema, table) = (names.schema.as_str(), names.name.as_str());
    let shadow = names.incoming.clone();
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

/// Which of every table's three names exist, for an operator.
async fn describe_all(pool: &Pool, names: &SwapNames) -> String {
    let mut parts = Vec::new();
    for t in &names.tables {
        parts.push(describe_tables(pool, &t.table, &t.old, &t.new).await);
    }
    parts.join("; ")
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
