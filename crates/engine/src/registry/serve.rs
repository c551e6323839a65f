//! `wraith serve`: the registry's requests run one after another.
//!
//! One `serve` per registry (a server-wide `GET_LOCK` held on its own
//! connection for the life of the process). Every poll it reads the
//! requests that have not ended, oldest first, and:
//! - **reaps** runs that ended: `complete`, `failed` (with the error, and
//!   whether `retry` resumes), or `cancelled` (after [`crate::discard`]
//!   dropped the shadow, changelog, engines and checkpoint);
//! - **steers** runs: a cancel becomes [`Operations::abort`]; postponed
//!   completion (the request's flag, or in-order completion while an
//!   earlier request is not finished) becomes the engine's commanded
//!   postponement, and a run held there is `ready` (its shadow follows the
//!   source through the binlog); progress is written every few seconds;
//! - **fails** a request left `requested` for 10 minutes (its `submit`
//!   died before the check ended), so it does not block its tables;
//! - **starts** requests: first those a killed `serve` left `running` or
//!   `ready` (they resume from their checkpoints), then `queued` ones, up
//!   to `concurrency` at once and never two touching the same table: a
//!   table of an earlier request that has not ended blocks every later
//!   request naming it, so requests on one table run in submission order.
//!
//! A completed request's old table (kept unless `[cutover] drop_old_table`)
//! is renamed to `_t_old_<uuid prefix>`, so the next request on the table
//! finds the name `_t_old` free; wraith drops nothing it was not asked to.
//!
//! Runs are the engine's own ([`crate::run_with`]) in this process: a kill
//! of `serve` kills them at any instant, and each resumes from its
//! checkpoint like a killed `wraith run`. SIGTERM stops them at a safe
//! point and leaves them `running` for the next `serve`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Migration, ProgressRow, Registry, RegistryError, ServerConfig, Status};
use crate::config::Config;
use crate::migration::{RunControl, RunError, RunOptions, RunReport};
use crate::progress::{ProgressHandle, State};
use crate::server::quote_ident;
use crate::Operations;

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Requests run at once (on different tables).
    pub concurrency: usize,
    /// How often the registry is read.
    pub poll: Duration,
    /// Return once no request is queued, running or ready.
    pub once: bool,
}

/// What `serve` did, for the caller to show.
#[derive(Debug, Clone)]
pub enum ServeEvent {
    Started {
        uuid: String,
        tables: Vec<String>,
        resumed: bool,
    },
    Ready {
        uuid: String,
    },
    Ended {
        uuid: String,
        status: Status,
        message: String,
    },
    /// Something went wrong that does not stop `serve`.
    Warning(String),
}

pub type ServeEvents = Arc<dyn Fn(ServeEvent) + Send + Sync>;

/// How often a running request's figures are written.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How long a request may stay `requested` (its check running) before
/// `serve` takes its `submit` for dead.
const STALE_REQUESTED: Duration = Duration::from_secs(600);

/// A request this `serve` runs.
struct Active {
    uuid: String,
    tables: Vec<(String, String)>,
    config: Config,
    ops: Arc<Operations>,
    progress: ProgressHandle,
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<RunReport, RunError>>,
    status: Status,
    cancelled_by: Option<String>,
    progress_written: Option<Instant>,
}

/// Runs the registry's requests until `shutdown` (or, with `once`, until
/// none is left to run).
pub async fn serve(
    server: &ServerConfig,
    registry: Arc<Registry>,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
    events: ServeEvents,
) -> Result<(), RegistryError> {
    let mut lock_conn = registry.conn().await?;
    registry.lock_serve(&mut lock_conn).await?;
    let served_by = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id()
    );
    let mut active: Vec<Active> = Vec::new();
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        // The lock lives with its connection: keep it, and stop if it is gone.
        if let Err(e) = mysql_async::prelude::Queryable::query_drop(&mut lock_conn, "DO 1").await {
            break Err(RegistryError::Connection(format!(
                "lost the connection holding the serve lock ({e}); stopping so that no second \
                 serve runs beside this one; start serve again"
            )));
        }
        match poll_once(
            server,
            &registry,
            &options,
            &served_by,
            &mut active,
            &events,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => events(ServeEvent::Warning(format!(
                "reading the registry failed: {e}; trying again"
            ))),
        }
        tokio::select! {
            _ = tokio::time::sleep(options.poll) => {}
            _ = shutdown.changed() => {}
        }
    };
    // Stopping: every run stops at its next safe point; a restart resumes it.
    for a in &active {
        let _ = a.stop.send(true);
    }
    for a in active {
        let uuid = a.uuid.clone();
        match a.handle.await {
            Ok(Err(RunError::Interrupted { .. } | RunError::WindowInterrupted { .. })) | Err(_) => {
                let message =
                    "serve stopped; the run is at a safe point, and the next serve resumes it";
                if let Err(e) = registry.set_message(&uuid, message).await {
                    events(ServeEvent::Warning(format!("request {uuid}: {e}")));
                }
            }
            Ok(outcome) => {
                let a_done = Ended {
                    uuid: a.uuid,
                    config: a.config,
                    cancelled_by: a.cancelled_by,
                };
                end(&registry, a_done, outcome, &events).await;
            }
        }
    }
    let _ =
        mysql_async::prelude::Queryable::query_drop(&mut lock_conn, "DO RELEASE_ALL_LOCKS()").await;
    result
}

/// One poll; `Ok(false)` when `once` and nothing is left to run.
async fn poll_once(
    server: &ServerConfig,
    registry: &Arc<Registry>,
    options: &ServeOptions,
    served_by: &str,
    active: &mut Vec<Active>,
    events: &ServeEvents,
) -> Result<bool, RegistryError> {
    // Reap runs that ended.
    let mut i = 0;
    while i < active.len() {
        if active[i].handle.is_finished() {
            let a = active.swap_remove(i);
            // The last figures, so a finished request shows what it copied.
            let _ = registry
                .progress(&a.uuid, &progress_row(&a.progress, &a.ops))
                .await;
            let outcome = match a.handle.await {
                Ok(outcome) => outcome,
                Err(e) => Err(RunError::Unsupported(format!("the run panicked: {e}"))),
            };
            let done = Ended {
                uuid: a.uuid,
                config: a.config,
                cancelled_by: a.cancelled_by,
            };
            end(registry, done, outcome, events).await;
        } else {
            i += 1;
        }
    }
    // A request whose `submit` died before its check ended would block its
    // tables for ever.
    for uuid in registry.stale_requested(STALE_REQUESTED.as_secs()).await? {
        let message = "its check never ended (the submit was interrupted); \
                       `wraith migrations retry` queues it (serve checks it again before running)";
        if registry
            .transition(&uuid, &[Status::Requested], Status::Failed, message)
            .await?
        {
            events(ServeEvent::Ended {
                uuid,
                status: Status::Failed,
                message: message.to_string(),
            });
        }
    }
    let rows = registry
        .list(&[
            Status::Requested,
            Status::Queued,
            Status::Running,
            Status::Ready,
        ])
        .await?;
    let by_uuid: BTreeMap<&str, &Migration> = rows.iter().map(|m| (m.uuid.as_str(), m)).collect();
    // Steer the runs.
    for a in active.iter_mut() {
        let Some(row) = by_uuid.get(a.uuid.as_str()) else {
            // Ended by hand in the registry: stop the run where it is.
            a.ops
                .abort("the request is no longer active in the registry".into());
            continue;
        };
        steer(registry, a, row, &rows, events).await;
    }
    // Start what may start.
    let mut blocked: HashSet<(String, String)> =
        active.iter().flat_map(|a| a.tables.clone()).collect();
    for row in &rows {
        if active.iter().any(|a| a.uuid == row.uuid) {
            continue;
        }
        let request = match row.request() {
            Ok(r) => r,
            Err(e) => {
                fail(registry, row, &e.to_string(), events).await;
                continue;
            }
        };
        let tables = request.qualified_tables();
        let free = tables.iter().all(|t| !blocked.contains(t));
        blocked.extend(tables.iter().cloned());
        let start = match row.status {
            // Left by a serve that died: resume first, whatever the capacity.
            Status::Running | Status::Ready => free,
            Status::Queued => free && active.len() < options.concurrency,
            _ => false,
        };
        if !start {
            continue;
        }
        let config = match server.job(&request) {
            Ok(c) => c,
            Err(e) => {
                fail(
                    registry,
                    row,
                    &format!("its job does not load: {e}"),
                    events,
                )
                .await;
                continue;
            }
        };
        let resumed = row.status.is_active();
        if row.cancel_requested {
            // Cancelled while no serve ran it.
            let done = Ended {
                uuid: row.uuid.clone(),
                config,
                cancelled_by: row.cancelled_by.clone().or(Some("an operator".into())),
            };
            let outcome = Err(RunError::Aborted {
                table: row.tables.join(","),
                reason: "cancelled".into(),
            });
            end(registry, done, outcome, events).await;
            continue;
        }
        let message = if resumed {
            format!("resumed by serve {served_by} from its checkpoint")
        } else {
            format!("started by serve {served_by}")
        };
        let moved = registry
            .transition(
                &row.uuid,
                &[Status::Queued, Status::Running, Status::Ready],
                Status::Running,
                &message,
            )
            .await?;
        if !moved {
            continue;
        }
        registry
            .claim(&row.uuid, served_by, &crate::resume::job_key(&config))
            .await?;
        let progress = ProgressHandle::with_events(log_events(row.uuid.clone()));
        let ops = Operations::new(&config, progress.clone());
        if row.postpone_completion || (row.in_order_completion && earlier_open(row, &rows)) {
            ops.command("postpone-cutover");
        }
        let (stop, stop_rx) = watch::channel(false);
        let handle = {
            let (config, progress, ops) = (config.clone(), progress.clone(), ops.clone());
            tokio::spawn(async move {
                let control = RunControl { shutdown: stop_rx };
                crate::run_with(&config, &progress, &control, RunOptions::default(), ops).await
            })
        };
        events(ServeEvent::Started {
            uuid: row.uuid.clone(),
            tables: row.tables.clone(),
            resumed,
        });
        active.push(Active {
            uuid: row.uuid.clone(),
            tables,
            config,
            ops,
            progress,
            stop,
            handle,
            status: Status::Running,
            cancelled_by: None,
            progress_written: None,
        });
    }
    let waiting = rows
        .iter()
        .any(|m| matches!(m.status, Status::Queued | Status::Running | Status::Ready));
    Ok(!(options.once && active.is_empty() && !waiting))
}

/// Whether a request submitted before `row` has not ended yet.
fn earlier_open(row: &Migration, open: &[Migration]) -> bool {
    open.iter().any(|m| m.id < row.id)
}

/// Carries the operator's wishes to a run and its figures to the registry.
async fn steer(
    registry: &Registry,
    a: &mut Active,
    row: &Migration,
    open: &[Migration],
    events: &ServeEvents,
) {
    if row.cancel_requested && a.cancelled_by.is_none() {
        let by = row
            .cancelled_by
            .clone()
            .unwrap_or_else(|| "an operator".into());
        a.ops.abort(format!("cancelled by {by}"));
        a.cancelled_by = Some(by);
    }
    let hold = row.postpone_completion || (row.in_order_completion && earlier_open(row, open));
    if hold != a.ops.cutover_postponed() {
        a.ops.command(if hold {
            "postpone-cutover"
        } else {
            "unpostpone"
        });
    }
    let waiting = a.progress.state() == State::WaitingOnSentinelTable && a.ops.cutover_postponed();
    let uuid = a.uuid.clone();
    let warn = |e: RegistryError| events(ServeEvent::Warning(format!("request {uuid}: {e}")));
    if hold && waiting && a.status == Status::Running {
        // The figures first: a request seen at ready names its run.
        a.progress_written = Some(Instant::now());
        if let Err(e) = registry
            .progress(&a.uuid, &progress_row(&a.progress, &a.ops))
            .await
        {
            warn(e);
        }
        let message = if row.postpone_completion {
            "copied and verified; the shadow follows the source until `wraith migrations complete`"
        } else {
            "copied and verified; waits for the requests submitted before it (in-order completion)"
        };
        match registry
            .transition(&uuid, &[Status::Running], Status::Ready, message)
            .await
        {
            Ok(_) => {
                a.status = Status::Ready;
                events(ServeEvent::Ready { uuid: uuid.clone() });
            }
            Err(e) => warn(e),
        }
    } else if !hold && a.status == Status::Ready {
        // Released: the run cuts over now.
        match registry
            .transition(
                &uuid,
                &[Status::Ready],
                Status::Running,
                "completing: cutting over",
            )
            .await
        {
            Ok(_) => a.status = Status::Running,
            Err(e) => warn(e),
        }
    }
    if a.progress_written
        .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
    {
        a.progress_written = Some(Instant::now());
        if let Err(e) = registry
            .progress(&a.uuid, &progress_row(&a.progress, &a.ops))
            .await
        {
            warn(e);
        }
    }
}

/// A run's figures for the registry.
fn progress_row(progress: &ProgressHandle, ops: &Operations) -> ProgressRow {
    let p = progress.snapshot();
    let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
    let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
    let copy_done = !p.tables.is_empty() && p.tables.iter().all(|t| t.is_complete);
    let pct = if copy_done {
        100.0
    } else if total > 0 {
        (copied as f64 * 100.0 / total as f64).min(99.9)
    } else {
        0.0
    };
    let eta_seconds = if copy_done {
        Some(0)
    } else if p.rows_per_sec > 0.0 && total > copied {
        Some(((total - copied) as f64 / p.rows_per_sec).ceil() as u64)
    } else {
        None
    };
    let migration_uuid = Some(ops.migration_id()).filter(|id| !id.is_empty());
    ProgressRow {
        stage: p.current_state.to_string(),
        progress_pct: (pct * 10.0).round() / 10.0,
        eta_seconds,
        rows_copied: copied,
        rows_total: total,
        rows_per_sec: p.rows_per_sec.round(),
        migration_uuid,
    }
}

/// What `end` needs of a run that ended.
struct Ended {
    uuid: String,
    config: Config,
    cancelled_by: Option<String>,
}

/// Records how a run ended.
async fn end(
    registry: &Registry,
    run: Ended,
    outcome: Result<RunReport, RunError>,
    events: &ServeEvents,
) {
    let from = [Status::Running, Status::Ready];
    let (status, message) = match outcome {
        Ok(report) => {
            let blocked: f64 = report
                .tables
                .iter()
                .filter_map(|t| t.cutover_blocked_ms)
                .fold(0.0, f64::max);
            let mut message = format!("cut over; writes blocked at most {blocked:.1} ms");
            if let Some(kept) = hold_old_tables(registry, &run).await {
                message.push_str(&kept);
            }
            if let Some(by) = &run.cancelled_by {
                message.push_str(&format!(
                    " (the cancel by {by} came after the cut-over had begun)"
                ));
            }
            (Status::Complete, message)
        }
        // Whatever stopped a cancelled run, the operator gave it up.
        Err(_) if run.cancelled_by.is_some() => {
            let by = run.cancelled_by.as_deref().unwrap_or("an operator");
            match crate::discard(&run.config).await {
                Ok(dropped) => (
                    Status::Cancelled,
                    format!("cancelled by {by}; dropped {dropped}; the source table is untouched"),
                ),
                Err(e) => (
                    Status::Failed,
                    format!("cancelled by {by}, but cleaning up failed: {e}"),
                ),
            }
        }
        Err(e) => {
            let hint = if e.is_resumable() {
                "; the shadow and checkpoint are kept: `wraith migrations retry` resumes it"
            } else {
                ""
            };
            (Status::Failed, format!("{e}{hint}"))
        }
    };
    match registry
        .transition(&run.uuid, &from, status, &message)
        .await
    {
        Ok(true) => events(ServeEvent::Ended {
            uuid: run.uuid,
            status,
            message,
        }),
        Ok(false) => events(ServeEvent::Warning(format!(
            "request {} ended ({status}: {message}) but the registry no longer shows it running",
            run.uuid
        ))),
        Err(e) => events(ServeEvent::Warning(format!(
            "request {} ended ({status}: {message}) and could not be recorded: {e}",
            run.uuid
        ))),
    }
}

/// A completed request's old tables (`_t_old`, kept when `[cutover]
/// drop_old_table` is off) are renamed to names of their own, so the next
/// request on the table can cut over; nothing is dropped. Returns the
/// words for the request's message.
async fn hold_old_tables(registry: &Registry, run: &Ended) -> Option<String> {
    let config = &run.config;
    if !config.cutover.enabled
        || config.cutover.drop_old_table
        || config.cutover.revert_window.is_some()
    {
        return None;
    }
    let short = run.uuid.get(..8).unwrap_or(&run.uuid);
    let mut kept = Vec::new();
    let mut conn = registry.conn().await.ok()?;
    for (i, t) in config.tables.iter().enumerate() {
        let schema = config.schema_of(t);
        let old = crate::shadow::old_name(&t.name);
        let mut held = format!("{old}_{short}");
        if held.chars().count() > 64 {
            held = format!("_wraith_old_{short}_{i}");
        }
        let statement = format!(
            "RENAME TABLE {s}.{} TO {s}.{}",
            quote_ident(&old),
            quote_ident(&held),
            s = quote_ident(schema)
        );
        if let Ok(true) = crate::server::inspect::table_exists(&mut conn, schema, &old).await {
            match mysql_async::prelude::Queryable::query_drop(&mut conn, &statement).await {
                Ok(()) => kept.push(format!("{schema}.{held}")),
                Err(e) => kept.push(format!(
                    "{schema}.{old} (renaming it failed: {e}; the next request on {} needs it gone)",
                    t.name
                )),
            }
        }
    }
    (!kept.is_empty()).then(|| format!("; the old table is kept as {}", kept.join(", ")))
}

/// Marks a request that cannot be run as failed.
async fn fail(registry: &Registry, row: &Migration, why: &str, events: &ServeEvents) {
    let from = [
        Status::Requested,
        Status::Queued,
        Status::Running,
        Status::Ready,
    ];
    match registry
        .transition(&row.uuid, &from, Status::Failed, why)
        .await
    {
        Ok(_) => events(ServeEvent::Ended {
            uuid: row.uuid.clone(),
            status: Status::Failed,
            message: why.to_string(),
        }),
        Err(e) => events(ServeEvent::Warning(format!("request {}: {e}", row.uuid))),
    }
}

/// A run's events, logged with its request.
fn log_events(uuid: String) -> crate::EventSink {
    Arc::new(move |event| tracing::info!(request = %uuid, ?event, "run event"))
}
