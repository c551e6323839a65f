//! The throttler: decides when the copy pauses, and says why.
//!
//! **What it is for.** A rebuild must never become the reason production is
//! slow. The throttler looks at its sources every `[throttle] interval`
//! (default 1s) and publishes one reason, or none:
//! - `commanded by user`: the control socket's `throttle` / `pause`;
//! - `flag-file`: one of `[throttle] flag_file` exists (gh-ost's
//!   `--throttle-flag-file`);
//! - `Threads_running=57 > 50`: a global status variable of `[throttle]
//!   max_load` is above its threshold (gh-ost's `--max-load`);
//! - `replica 10.0.0.2:3306 lag=3.1s > 2s`: a `[[throttle.replica]]` lags more
//!   than `max_lag`. Lag is measured as gh-ost does, with a heartbeat: every
//!   `heartbeat_interval` the source's `_wraith_heartbeat` row is set to the
//!   source's `NOW(6)`; a replica's lag is its own `NOW(6)` minus the row it
//!   has applied (so it assumes clocks in sync, and measures what was applied,
//!   not what was received). A replica that cannot be read, or has no
//!   heartbeat yet, throttles too: not knowing is not a reason to go on.
//!
//! - `write debt: checkpoint age 61% of the redo log > 50%`: the server has
//!   more to write back than it absorbs quietly (`[throttle]
//!   max_checkpoint_age_pct`, `max_dirty_pages_pct`, `max_purge_backlog`;
//!   off by default). Checkpoint age is the debt that matters: above
//!   `innodb_adaptive_flushing_lwm` (10% by default) InnoDB flushes faster
//!   the older it grows, so a pause on it ends once the server's other
//!   writers leave it room. Off by default because a server whose own
//!   writers keep the age above the limit would hold the copy as long as
//!   they do (a busy server measured 86% for minutes), and a quiet MariaDB
//!   flushes in proportion to the redo written, so its age can stay put:
//!   a pause lasts only while the debt keeps reaching new lows, and after
//!   10 s without one the copy goes on until the figure is under its limit
//!   again ([`DebtHold`]; the purge backlog, which waits on the oldest
//!   transaction rather than on flushing, holds until it falls). A copy that writes faster than InnoDB flushes leaves the
//!   difference behind as dirty pages and uncheckpointed redo; the server pays
//!   it later, with every writer of the application waiting on its flushes
//!   (the "aftermath" of a fast copy). Pausing while the debt is high keeps
//!   the copy to the pace the server flushes at, so little is left when it
//!   ends. Variables a server lacks (MySQL has no `Innodb_checkpoint_age`)
//!   are not watched.
//!
//! The first source that holds, in that order, is the reason. `critical_load`
//! is not a throttle: a variable above it stops the run cleanly with a
//! resumable error (the caller's `on_critical`).
//!
//! **What it leaves to others.** The copier waits between chunks while a
//! reason stands (through [`crate::control::Operations::wait_turn`]); a chunk
//! already running finishes. The change applier never waits: the shadow table stays in step
//! while the copy pauses, so a pause never grows the backlog the cut-over must
//! drain. The heartbeat table is dropped at the end of the run.
//!
//! **Visibility.** Every start, change and end of throttling is printed
//! (`throttled: flag-file`, `throttling ended`), logged, and kept in the
//! progress snapshot (status line, `status` on the socket).
//!
//! **Reload.** [`Throttler::reload`] swaps the settings (SIGHUP).
//!
//! **Errors.** A failed status query is logged and the last load verdict kept:
//! the throttler never stops a run because it could not look.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ThrottleConfig;
use crate::events::RunEvent;
use crate::progress::{plain, ProgressHandle};
use crate::server::{self, quote_ident, Context, DbError};

pub use crate::names::HEARTBEAT_TABLE;

/// Shared throttle state; cheap to clone.
#[derive(Clone)]
pub struct Throttler {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Mutex<ThrottleConfig>,
    commanded: AtomicBool,
    /// The verdict of the last status query.
    load_reason: Mutex<Option<String>>,
    reason: watch::Sender<Option<String>>,
    progress: ProgressHandle,
    /// Printed before each message (the table, once known).
    label: Mutex<String>,
}

impl Throttler {
    pub fn new(settings: ThrottleConfig, progress: ProgressHandle) -> Throttler {
        Throttler {
            inner: Arc::new(Inner {
                settings: Mutex::new(settings),
                commanded: AtomicBool::new(false),
                load_reason: Mutex::new(None),
                reason: watch::Sender::new(None),
                progress,
                label: Mutex::new(String::new()),
            }),
        }
    }

    /// Why the copy is paused now, or `None`.
    pub fn reason(&self) -> Option<String> {
        self.inner.reason.borrow().clone()
    }

    /// Prefixes messages with `label: ` (the table being copied).
    pub fn set_label(&self, label: &str) {
        *plain(&self.inner.label) = label.to_string();
    }

    /// The operator's `throttle` (`true`) or `no-throttle` (`false`).
    pub fn set_commanded(&self, on: bool) {
        self.inner.commanded.store(on, Ordering::Relaxed);
        self.refresh();
    }

    /// Replaces the settings (SIGHUP); takes effect at once for flag files,
    /// at the next check for load.
    pub fn reload(&self, settings: ThrottleConfig) {
        if settings.load_limits().is_empty() {
            *plain(&self.inner.load_reason) = None;
        }
        *plain(&self.inner.settings) = settings;
        self.refresh();
    }

    fn settings(&self) -> ThrottleConfig {
        plain(&self.inner.settings).clone()
    }

    /// Recomputes the reason from the commanded flag, the flag files and the
    /// last load verdict, and publishes a change.
    fn refresh(&self) {
        let settings = self.settings();
        let reason = if self.inner.commanded.load(Ordering::Relaxed) {
            Some("commanded by user".to_string())
        } else if settings.flag_file.0.iter().any(|f| f.exists()) {
            Some("flag-file".to_string())
        } else {
            plain(&self.inner.load_reason).clone()
        };
        let label = plain(&self.inner.label).clone();
        let progress = &self.inner.progress;
        self.inner.reason.send_if_modified(|current| {
            if *current == reason {
                return false;
            }
            match (&*current, &reason) {
                (_, Some(now)) => {
                    tracing::info!(reason = %now, "throttled");
                    progress.emit(RunEvent::Throttled {
                        label: label.clone(),
                        reason: now.clone(),
                    });
                }
                (Some(was), None) => {
                    tracing::info!(was = %was, "throttling ended");
                    progress.emit(RunEvent::ThrottleEnded {
                        label: label.clone(),
                        was: was.clone(),
                    });
                }
                (None, None) => {}
            }
            *current = reason.clone();
            true
        });
        self.inner.progress.set_throttled(reason);
    }

    /// Checks every `[throttle] interval` (load and replicas on `pool`, the
    /// source; write debt on `target`, where the copy writes; and writes the
    /// heartbeat into `database` every `heartbeat_interval` while replicas are
    /// watched) until
    /// the returned task is aborted. `on_critical` is called when a
    /// `critical_load` threshold is passed.
    pub fn spawn_checker(
        &self,
        pool: Pool,
        target: Pool,
        database: String,
        on_critical: impl Fn(String) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let throttler = self.clone();
        tokio::spawn(async move {
            let mut replicas = HashMap::new();
            let mut next_check = Instant::now();
            let mut next_beat = Instant::now();
            let mut heartbeat_ready = false;
            let mut load_verdict = None;
            let mut lag_verdict = None;
            let mut debt_hold = DebtHold::default();
            loop {
                let settings = throttler.settings();
                let watching = !settings.replicas.is_empty();
                let mut changed = false;
                // The lag is read at every beat, not every `interval`: a
                // chunk applied on a replica grows its lag by its whole
                // length, and a check a second late lets the lag overshoot
                // `max_lag` by that second.
                if watching && Instant::now() >= next_beat {
                    if let Err(e) = heartbeat(&pool, &database, &mut heartbeat_ready).await {
                        tracing::warn!(error = %e, "throttler: cannot write the heartbeat");
                    }
                    lag_verdict = replica_lag(&settings, &database, &mut replicas).await;
                    next_beat = Instant::now() + settings.heartbeat_interval.0;
                    changed = true;
                } else if !watching {
                    lag_verdict = None;
                }
                if Instant::now() >= next_check {
                    let load = throttler
                        .check_load(&pool, &settings, &on_critical, &load_verdict)
                        .await;
                    load_verdict = match load {
                        Some(reason) => Some(reason),
                        None => {
                            let excess = write_debt_excess(&target, &settings).await;
                            debt_hold.judge(excess, Instant::now())
                        }
                    };
                    next_check = Instant::now() + settings.interval.0;
                    changed = true;
                }
                if changed {
                    *plain(&throttler.inner.load_reason) =
                        load_verdict.clone().or_else(|| lag_verdict.clone());
                    throttler.refresh();
                }
                let wake = if watching {
                    next_check.min(next_beat)
                } else {
                    next_check
                };
                tokio::time::sleep_until(wake.into()).await;
            }
        })
    }

    /// The load verdict (`None`: under every limit, or not known).
    async fn check_load(
        &self,
        pool: &Pool,
        settings: &ThrottleConfig,
        on_critical: &(impl Fn(String) + Send + Sync),
        last: &Option<String>,
    ) -> Option<String> {
        let limits = settings.load_limits();
        if limits.is_empty() && settings.critical_load.is_empty() {
            return None;
        }
        match read_status(pool, &limits, &settings.critical_load).await {
            Ok(values) => {
                if let Some(critical) = over(&values, &settings.critical_load) {
                    let interval = settings.critical_load_interval.0;
                    let confirmed = if interval.is_zero() {
                        Some(critical)
                    } else {
                        // A spike is not a reason to stop: look again.
                        tracing::warn!(%critical, ?interval, "critical load; looking again before stopping");
                        tokio::time::sleep(interval).await;
                        match read_status(pool, &limits, &settings.critical_load).await {
                            Ok(again) => over(&again, &settings.critical_load),
                            Err(_) => Some(critical),
                        }
                    };
                    if let Some(critical) = confirmed {
                        on_critical(format!("critical load: {critical}"));
                    }
                }
                over(&values, &limits)
            }
            Err(e) => {
                tracing::warn!(error = %e, "throttler: cannot read the server's status; keeping the last verdict");
                last.clone()
            }
        }
    }
}

/// Sets the heartbeat row to the source's clock (creating the table once).
async fn heartbeat(pool: &Pool, database: &str, ready: &mut bool) -> Result<(), DbError> {
    let table = format!("{}.{}", quote_ident(database), quote_ident(HEARTBEAT_TABLE));
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting to write the heartbeat".into())?;
    if !*ready {
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {table} (id TINYINT UNSIGNED NOT NULL PRIMARY KEY, \
             beat TIMESTAMP(6) NOT NULL) COMMENT 'wraith: heartbeat for measuring replica lag'"
        ))
        .await
        .context(|| format!("creating {database}.{HEARTBEAT_TABLE}"))?;
        *ready = true;
    }
    conn.query_drop(format!(
        "REPLACE INTO {table} (id, beat) VALUES (1, NOW(6))"
    ))
    .await
    .context(|| "writing the heartbeat".into())
}

/// Drops the heartbeat table (the end of a run that watched replicas).
pub async fn drop_heartbeat(pool: &Pool, database: &str) {
    let sql = format!(
        "DROP TABLE IF EXISTS {}.{}",
        quote_ident(database),
        quote_ident(HEARTBEAT_TABLE)
    );
    let result = match pool.get_conn().await {
        Ok(mut conn) => conn.query_drop(sql).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not drop {HEARTBEAT_TABLE}; drop it by hand");
    }
}

/// The first replica lagging over `max_lag` (or unreadable), as a reason.
async fn replica_lag(
    settings: &ThrottleConfig,
    database: &str,
    pools: &mut HashMap<String, Pool>,
) -> Option<String> {
    let max_lag = settings.max_lag?.0;
    for replica in &settings.replicas {
        let connection = replica.connection(database);
        let name = match &replica.socket {
            Some(s) => s.display().to_string(),
            None => format!("{}:{}", replica.host, replica.port),
        };
        let pool = match pools.get(&name) {
            Some(p) => p.clone(),
            None => match server::connection_opts(&connection) {
                Ok(opts) => {
                    let p = server::pool(opts, 1);
                    pools.insert(name.clone(), p.clone());
                    p
                }
                Err(e) => return Some(format!("replica {name}: {e}")),
            },
        };
        let lag: Result<Option<Option<i64>>, mysql_async::Error> = async {
            let mut conn = pool.get_conn().await?;
            conn.query_first(format!(
                "SELECT TIMESTAMPDIFF(MICROSECOND, beat, NOW(6)) FROM {}.{} WHERE id = 1",
                quote_ident(database),
                quote_ident(HEARTBEAT_TABLE)
            ))
            .await
        }
        .await;
        match lag {
            Ok(Some(Some(us))) => {
                let lag = Duration::from_micros(us.max(0) as u64);
                if lag > max_lag {
                    return Some(format!(
                        "replica {name} lag={:.1}s > {}",
                        lag.as_secs_f64(),
                        humantime::format_duration(max_lag)
                    ));
                }
            }
            Ok(_) => return Some(format!("replica {name}: no heartbeat yet")),
            Err(e) => return Some(format!("replica {name}: cannot read its lag ({e})")),
        }
    }
    None
}

/// The global status values of `names`, keyed by lowercase name; a value
/// that is not a number is left out (and logged).
async fn global_status(
    conn: &mut mysql_async::Conn,
    names: &[&str],
) -> Result<BTreeMap<String, u64>, mysql_async::Error> {
    // Names are checked by config (letters, digits, _) or constants here, so
    // they quote safely.
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    let rows: Vec<(String, String)> = conn
        .query(format!(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ({})",
            quoted.join(", ")
        ))
        .await?;
    let mut values = BTreeMap::new();
    for (name, value) in rows {
        match value.trim().parse::<f64>() {
            Ok(v) => {
                values.insert(name.to_ascii_lowercase(), v.max(0.0) as u64);
            }
            Err(_) => tracing::warn!(variable = %name, value = %value, "throttler: not a number"),
        }
    }
    Ok(values)
}

/// What the server still has to write back of what was written to it: the
/// InnoDB status a flush storm follows from. `None`: the server does not
/// have the variable.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriteDebt {
    /// Redo bytes written since the last checkpoint (`Innodb_checkpoint_age`).
    pub checkpoint_age: Option<u64>,
    /// What the redo log holds before InnoDB must checkpoint at once
    /// (`Innodb_checkpoint_max_age`).
    pub checkpoint_max_age: Option<u64>,
    /// `Innodb_buffer_pool_pages_dirty`.
    pub dirty_pages: Option<u64>,
    /// `Innodb_buffer_pool_pages_total`.
    pub total_pages: Option<u64>,
    /// Undo not yet purged (`Innodb_history_list_length`).
    pub history_list_length: Option<u64>,
}

impl WriteDebt {
    const VARIABLES: [&'static str; 5] = [
        "Innodb_checkpoint_age",
        "Innodb_checkpoint_max_age",
        "Innodb_buffer_pool_pages_dirty",
        "Innodb_buffer_pool_pages_total",
        "Innodb_history_list_length",
    ];

    /// Reads the server's write debt.
    pub async fn read(pool: &Pool) -> Result<WriteDebt, mysql_async::Error> {
        let mut conn = pool.get_conn().await?;
        Self::read_on(&mut conn).await
    }

    /// Reads the server's write debt on `conn`.
    pub async fn read_on(conn: &mut mysql_async::Conn) -> Result<WriteDebt, mysql_async::Error> {
        let values = global_status(conn, &Self::VARIABLES).await?;
        Ok(Self::from_status(&values))
    }

    fn from_status(values: &BTreeMap<String, u64>) -> WriteDebt {
        let get = |name: &str| values.get(&name.to_ascii_lowercase()).copied();
        WriteDebt {
            checkpoint_age: get("Innodb_checkpoint_age"),
            checkpoint_max_age: get("Innodb_checkpoint_max_age"),
            dirty_pages: get("Innodb_buffer_pool_pages_dirty"),
            total_pages: get("Innodb_buffer_pool_pages_total"),
            history_list_length: get("Innodb_history_list_length"),
        }
    }

    /// The checkpoint age as a share (%) of what the redo log can hold.
    pub fn checkpoint_age_pct(&self) -> Option<f64> {
        let (age, max) = (self.checkpoint_age?, self.checkpoint_max_age?);
        (max > 0).then(|| age as f64 * 100.0 / max as f64)
    }

    /// Dirty pages as a share (%) of the buffer pool.
    pub fn dirty_pages_pct(&self) -> Option<f64> {
        let (dirty, total) = (self.dirty_pages?, self.total_pages?);
        (total > 0).then(|| dirty as f64 * 100.0 / total as f64)
    }

    /// The first of `settings`' write-debt limits this is over, as a reason.
    pub fn over(&self, settings: &ThrottleConfig) -> Option<String> {
        self.excess(settings).map(|e| e.reason)
    }

    fn excess(&self, settings: &ThrottleConfig) -> Option<DebtExcess> {
        let limit = settings.max_checkpoint_age_pct;
        if let Some(pct) = self.checkpoint_age_pct() {
            if limit > 0 && pct > limit as f64 {
                return Some(DebtExcess {
                    metric: "checkpoint age",
                    value: pct,
                    flushed: true,
                    reason: format!(
                        "write debt: checkpoint age {pct:.0}% of the redo log > {limit}%"
                    ),
                });
            }
        }
        let limit = settings.max_dirty_pages_pct;
        if let Some(pct) = self.dirty_pages_pct() {
            if limit > 0 && pct > limit as f64 {
                return Some(DebtExcess {
                    metric: "dirty pages",
                    value: pct,
                    flushed: true,
                    reason: format!("write debt: {pct:.0}% of the buffer pool dirty > {limit}%"),
                });
            }
        }
        let limit = settings.max_purge_backlog;
        match self.history_list_length {
            Some(n) if limit > 0 && n > limit => Some(DebtExcess {
                metric: "purge backlog",
                value: n as f64,
                flushed: false,
                reason: format!(
                    "write debt: purge backlog {n} (Innodb_history_list_length) > {limit}"
                ),
            }),
            _ => None,
        }
    }
}

/// A write-debt limit passed: which figure, its value, the reason to show.
#[derive(Debug, Clone)]
struct DebtExcess {
    metric: &'static str,
    value: f64,
    reason: String,
    /// Paid down by flushing (checkpoint age, dirty pages), so subject to
    /// [`DebtHold`]'s stall rule; the purge backlog is not.
    flushed: bool,
}

/// How long a write-debt pause lasts without the debt reaching a new low
/// before the copy goes on.
const DEBT_STALL: Duration = Duration::from_secs(10);

/// Holds the copy on write debt only while waiting helps. A server pays its
/// debt down only while it flushes and purges, and MariaDB's page cleaner
/// flushes in proportion to the redo being written: on a quiet server the
/// checkpoint age can stay above the limit for ever, and a pause on it would
/// never end. So a pause lasts while the debt keeps reaching new lows; once
/// it has not for [`DEBT_STALL`], the copy goes on (logged) until the figure
/// has been under its limit again.
#[derive(Debug, Default)]
enum DebtHold {
    #[default]
    Clear,
    Holding {
        metric: &'static str,
        lowest: f64,
        lowered_at: Instant,
    },
    Released {
        metric: &'static str,
    },
}

impl DebtHold {
    /// The reason to hold the copy now, given the latest excess (if any).
    fn judge(&mut self, excess: Option<DebtExcess>, now: Instant) -> Option<String> {
        let Some(excess) = excess else {
            *self = DebtHold::Clear;
            return None;
        };
        if !excess.flushed {
            // Purge waits for the oldest transaction, not for a flush: the
            // pause lasts until that transaction ends (as documented).
            *self = DebtHold::Clear;
            return Some(excess.reason);
        }
        match self {
            DebtHold::Holding {
                metric,
                lowest,
                lowered_at,
            } if *metric == excess.metric => {
                if excess.value < *lowest {
                    *lowest = excess.value;
                    *lowered_at = now;
                } else if now.duration_since(*lowered_at) >= DEBT_STALL {
                    tracing::warn!(
                        reason = %excess.reason,
                        stalled = ?DEBT_STALL,
                        "write debt is not falling: the server is not paying it down, \
                         so waiting does not help; the copy goes on until it is under the limit again"
                    );
                    *self = DebtHold::Released {
                        metric: excess.metric,
                    };
                    return None;
                }
                Some(excess.reason)
            }
            DebtHold::Released { metric } if *metric == excess.metric => None,
            _ => {
                *self = DebtHold::Holding {
                    metric: excess.metric,
                    lowest: excess.value,
                    lowered_at: now,
                };
                Some(excess.reason)
            }
        }
    }
}

/// The write-debt limit passed, if any; a server that cannot be read is
/// logged and not throttled on (the other sources still stand).
async fn write_debt_excess(target: &Pool, settings: &ThrottleConfig) -> Option<DebtExcess> {
    if settings.max_checkpoint_age_pct == 0
        && settings.max_dirty_pages_pct == 0
        && settings.max_purge_backlog == 0
    {
        return None;
    }
    match WriteDebt::read(target).await {
        Ok(debt) => debt.excess(settings),
        Err(e) => {
            tracing::warn!(error = %e, "throttler: cannot read the server's write debt");
            None
        }
    }
}

/// The first variable above its limit, as `Name=value > limit`.
fn over(values: &BTreeMap<String, u64>, limits: &BTreeMap<String, u64>) -> Option<String> {
    limits.iter().find_map(|(name, &limit)| {
        let value = values.get(&name.to_ascii_lowercase())?;
        (*value > limit).then(|| format!("{name}={value} > {limit}"))
    })
}

/// The global status values of the limits' variables, keyed by lowercase name.
async fn read_status(
    pool: &Pool,
    limits: &BTreeMap<String, u64>,
    critical: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>, mysql_async::Error> {
    let names: Vec<&str> = limits
        .keys()
        .chain(critical.keys())
        .map(String::as_str)
        .collect();
    let mut conn = pool.get_conn().await?;
    let values = global_status(&mut conn, &names).await?;
    for name in limits.keys().chain(critical.keys()) {
        if !values.contains_key(&name.to_ascii_lowercase()) {
            tracing::warn!(variable = %name, "throttler: no such global status variable");
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_names_the_first_variable_above_its_limit() {
        let values = BTreeMap::from([
            ("threads_running".to_string(), 57),
            ("threads_connected".to_string(), 3),
        ]);
        let limits = BTreeMap::from([
            ("Threads_connected".to_string(), 10),
            ("Threads_running".to_string(), 50),
        ]);
        assert_eq!(
            over(&values, &limits).as_deref(),
            Some("Threads_running=57 > 50")
        );
        let limits = BTreeMap::from([("Threads_running".to_string(), 57)]);
        assert_eq!(over(&values, &limits), None);
    }

    #[test]
    fn write_debt_names_the_first_limit_it_is_over() {
        let status = |age: u64, dirty: u64, history: u64| {
            BTreeMap::from([
                ("innodb_checkpoint_age".to_string(), age),
                ("innodb_checkpoint_max_age".to_string(), 400),
                ("innodb_buffer_pool_pages_dirty".to_string(), dirty),
                ("innodb_buffer_pool_pages_total".to_string(), 1000),
                ("innodb_history_list_length".to_string(), history),
            ])
        };
        let settings = ThrottleConfig {
            max_checkpoint_age_pct: 50,
            max_dirty_pages_pct: 50,
            max_purge_backlog: 1_000_000,
            ..ThrottleConfig::default()
        };
        assert_eq!(
            WriteDebt::from_status(&status(390, 990, 5_000_000)).over(&ThrottleConfig::default()),
            None,
            "off by default"
        );
        let calm = WriteDebt::from_status(&status(100, 100, 10));
        assert_eq!(calm.over(&settings), None);
        assert_eq!(calm.checkpoint_age_pct(), Some(25.0));
        let redo = WriteDebt::from_status(&status(244, 900, 10));
        assert_eq!(
            redo.over(&settings).as_deref(),
            Some("write debt: checkpoint age 61% of the redo log > 50%")
        );
        let dirty = WriteDebt::from_status(&status(100, 600, 10));
        assert_eq!(
            dirty.over(&settings).as_deref(),
            Some("write debt: 60% of the buffer pool dirty > 50%")
        );
        let purge = WriteDebt::from_status(&status(100, 100, 2_000_000));
        assert!(purge
            .over(&settings)
            .is_some_and(|r| r.contains("purge backlog 2000000")));
        // 0 turns a limit off; a server without the variables is never over.
        let off = ThrottleConfig {
            max_checkpoint_age_pct: 0,
            ..settings.clone()
        };
        assert_eq!(
            redo.over(&off).as_deref(),
            Some("write debt: 90% of the buffer pool dirty > 50%")
        );
        assert_eq!(
            WriteDebt::from_status(&BTreeMap::new()).over(&settings),
            None
        );
    }

    #[test]
    fn a_debt_pause_lasts_while_the_debt_falls() {
        let excess = |value: f64| {
            Some(DebtExcess {
                metric: "checkpoint age",
                value,
                flushed: true,
                reason: format!("write debt: checkpoint age {value}%"),
            })
        };
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut hold = DebtHold::default();
        assert!(hold.judge(excess(80.0), at(0)).is_some());
        // Falling: held, however long it takes.
        for (i, v) in [78.0, 75.0, 70.0].into_iter().enumerate() {
            assert!(hold.judge(excess(v), at(8 * (i as u64 + 1))).is_some());
        }
        // Stuck at its low for less than the stall: still held.
        assert!(hold.judge(excess(71.0), at(30)).is_some());
        // For the stall: let go, and it stays let go while over the limit.
        assert_eq!(hold.judge(excess(70.5), at(34)), None);
        assert_eq!(hold.judge(excess(90.0), at(35)), None);
        // Under the limit once: the next excess holds again.
        assert_eq!(hold.judge(None, at(40)), None);
        assert!(hold.judge(excess(60.0), at(41)).is_some());
        // The purge backlog holds while a transaction keeps purge waiting,
        // however long, falling or not.
        hold = DebtHold::Released {
            metric: "checkpoint age",
        };
        let purge = || {
            Some(DebtExcess {
                metric: "purge backlog",
                value: 2e6,
                flushed: false,
                reason: "write debt: purge backlog".into(),
            })
        };
        assert!(hold.judge(purge(), at(50)).is_some());
        assert!(hold.judge(purge(), at(500)).is_some());
    }

    #[test]
    fn commanded_and_flag_file_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        let settings = ThrottleConfig {
            flag_file: crate::config::PathList(vec![flag.clone()]),
            ..ThrottleConfig::default()
        };
        let t = Throttler::new(settings, ProgressHandle::new());
        t.refresh();
        assert_eq!(t.reason(), None);
        std::fs::write(&flag, "").unwrap();
        t.refresh();
        assert_eq!(t.reason().as_deref(), Some("flag-file"));
        t.set_commanded(true);
        assert_eq!(t.reason().as_deref(), Some("commanded by user"));
        t.set_commanded(false);
        std::fs::remove_file(&flag).unwrap();
        t.refresh();
        assert_eq!(t.reason(), None);
    }
}
