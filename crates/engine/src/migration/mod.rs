//! The run: the state machine that takes a table from preflight to cut-over.
//!
//! Initial (preflight, shadow table, binlog position, change stream) →
//! CopyRows (chunker, readers, engines, import; changes applied below the low
//! watermark all along) → Checksum (source briefly locked, shadow caught up,
//! both sides compared in snapshots of that one point) *beside*
//! RestoreSecondaryIndexes → AnalyzeTable (an online ALTER on the shadow
//! started right after the point; the comparison reads through the key index
//! only, once the ALTER is past its exclusive start; see `group.rs`) →
//! PostChecksum (catch-up) → WaitingOnSentinelTable (while a postpone flag
//! file or the sentinel table exists) → CutOver → Close. The checkpoint
//! says `Checksummed` only once the indexes are restored as well.
//!
//! A failure before the cut-over that a rerun can resume from keeps the
//! shadow table, engines and change store. One that cannot be resumed (a
//! duplicate, a value the server refuses, a checksum mismatch, ...) cleans up
//! (ErrCleanup): the shadow and changelog tables, the checkpoint and the
//! local state are dropped, and the error says so ([`RunError::Abandoned`]);
//! the source was never written.
//!
//! Operating a run: [`run_with`] opens the control socket ([`crate::control`]),
//! starts the throttler ([`crate::throttle`]) and runs the hooks
//! ([`crate::hooks`]) around the state machine. `panic` on the socket and a
//! `critical_load` stop the run like Ctrl-C does, as [`RunError::Aborted`]; a
//! failing `on-before-cut-over` hook stops it before the cut-over as
//! [`RunError::Hook`]. Both leave a checkpoint a rerun resumes from.
//!
//! Errors: [`RunError`] says why a run stopped; [`RunError::is_resumable`]
//! decides by variant (a change-pipeline failure by its
//! [`crate::online::ChangesError`]). The run never prints: what the operator
//! should hear of goes to the caller's sink as [`crate::events::RunEvent`]s.
//!
//! Stages: [`stage::Stage`] names each step of a table's run; every step
//! runs through `TableRun::stage`, which shows its progress state, saves
//! the checkpoint stage it completes and records its time (the report's
//! `stages`), so the three never disagree. What wraith made is dropped by
//! one function, `cleanup::clean_up`, whose `Moment` (fresh, abandoned,
//! after the cut-over, finished) decides what goes.
//!
//! Several tables: the job's tables are rebuilt together as one *group*
//! (`[cutover] together`, the default): each runs its own stages at once
//! with the others up to its copied shadow (one done early builds its
//! indexes while the others copy), then the group takes one checksum point
//! (beside the index builds left), waits once and swaps every table in one
//! RENAME (`group.rs`). With `together = false` each table is a group of
//! its own, one after another.
//!
//! Layout: this file holds the job (control socket, hooks, preflight,
//! checkpoint, one [`TableRun`] per table, the groups); `group.rs` a group's
//! run from the checksum (and the index builds beside it) to the cleanup;
//! `stage.rs` the stages and their tracker; `table.rs` a table's start and
//! its checkpoint updates, `stages.rs` its stages from the copy to the
//! analysis, `points.rs` the consistent points (checksum,
//! re-verification), `cleanup.rs` what is dropped and when, `report.rs` the
//! report, `window.rs` the revert window after the cut-over (`[cutover]
//! revert_window`) and its two ends, [`revert`] and [`finish`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool};
use serde::Serialize;
use tokio::sync::watch;
use wraith_backend::{Backend, LocalBackend, LocalBackendConfig, SqlBackend, SqlBackendConfig};

use crate::applier::Applier;
use crate::binlog::{self, ChangeStream, ChangeStreamConfig};
use crate::changes::{key_orders_by_bytes, ChangeBuffer};
use crate::checksum::{checksum_on, ChecksumError};
use crate::config::{BackendKind, Compression, Config, TableConfig};
use crate::control::{ControlPort, ControlSocket, Operations};
use crate::copy::{copy_table, read_conn, ClosedEngineRecord, CopyError, CopyJob, CopyStats};
use crate::cutover::{self, CutoverError, CutoverSettings, CutoverState, Drain, DrainError};
use crate::events::RunEvent;
use crate::hooks::{HookError, HookEvent};
use crate::online::{self, ChangesError, OnlineDrain, OnlineState, RowMapping, CHANGELOG_TABLE};
use crate::plan::TablePlan;
use crate::preflight::{self, Report};
use crate::progress::{ProgressHandle, State};
use crate::resume::{self, Checkpointer};
use crate::server::inspect::{inspect_table, TableInfo};
use crate::server::{self, quote_ident, Context, DbError, Flavor};
use crate::shadow::{self, CopyLayout, ShadowError};
use crate::verify::{RowVerifier, VerifyError};
use std::time::SystemTime;
use wraith_checkpoints::{
    validate, EngineCheckpoint, EngineStatus, KeyRange, TableCheckpoint, TableStage, TaskCheckpoint,
};

mod cleanup;
mod group;
mod points;
mod report;
mod stage;
mod stages;
mod table;
mod window;

pub use cleanup::discard;
use cleanup::{abandon_all, clean_up, finish_interrupted_cutover, start_over, Moment};
use group::{Copied, Group, Shadowed, Started};
use points::wait_for_error;
pub use report::{RunReport, TableReport};
use stage::{Stage, StageLog};
pub(crate) use window::refusal as revert_window_refusal;
pub use window::{FinishReport, RevertReport, WindowEnding};

/// How often the rows changed after the checksum are verified while the
/// cut-over waits (each time the source is locked for a moment, as for the
/// checksum).
const REVERIFY_INTERVAL: Duration = Duration::from_secs(2);

/// The sessions of a consistent point (see `consistent_point`).
struct ConsistentPoint {
    /// A snapshot of the source at the point.
    source: Conn,
    /// A snapshot of the shadow at the point.
    shadow: Conn,
    /// How long the source was locked.
    held: Duration,
    /// Keys written between the previous point and this one.
    changed: Vec<Vec<wraith_backend::Value>>,
}

pub use crate::names::SENTINEL_TABLE;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preflight refused: {}", .0.failures().map(|c| format!("{}: {}", c.name, c.detail)).collect::<Vec<_>>().join("; "))]
    Refused(Box<Report>),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Connection(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error("copying {table}: {source}")]
    Copy {
        table: String,
        #[source]
        source: Box<CopyError>,
    },
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error(transparent)]
    Verify(Box<VerifyError>),
    #[error(transparent)]
    Cutover(#[from] CutoverError),
    #[error("setting up the {backend} backend: {message}")]
    Backend { backend: String, message: String },
    #[error("planning {table}: {message}")]
    Layout { table: String, message: String },
    #[error("following changes to {table}: {source}; the source is untouched")]
    Changes {
        table: String,
        #[source]
        source: Box<ChangesError>,
    },
    #[error("interrupted; the source {table} is untouched, and `wraith run` with the same config resumes")]
    Interrupted { table: String },
    #[error("{table}: aborted ({reason}); the source is untouched, and `wraith run` with the same config resumes")]
    Aborted { table: String, reason: String },
    #[error("{table}: the cut-over was not attempted because a hook failed: {source}; the source is untouched, and `wraith run` with the same config resumes and runs the hook again")]
    Hook {
        table: String,
        #[source]
        source: HookError,
    },
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Checkpoint(wraith_checkpoints::CheckpointError),
    #[error(transparent)]
    InvalidCheckpoint(Box<wraith_checkpoints::InvalidCheckpoint>),
    /// The revert window cannot go on, or a revert or finish is refused.
    #[error("{0}")]
    Window(String),
    #[error("{tables}: the revert window was interrupted; `wraith run` with the same config holds it again, `wraith revert` swaps back, `wraith finish` ends it")]
    WindowInterrupted { tables: String },
    /// A failure that cannot be resumed, after wraith dropped what it had
    /// created for the table.
    #[error("{error}\nthis run cannot be resumed, so wraith dropped what it had created: {dropped}; the source table is untouched")]
    Abandoned {
        error: Box<RunError>,
        /// What was dropped (and what could not be, with the statement to do it by hand).
        dropped: String,
    },
}

/// How the caller steers a run.
#[derive(Clone)]
pub struct RunControl {
    /// Becomes `true` when the run should stop (Ctrl-C, SIGTERM).
    pub shutdown: watch::Receiver<bool>,
}

impl RunControl {
    /// A control that never asks to stop.
    pub fn none() -> RunControl {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        RunControl { shutdown: rx }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// How a run starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Drop the old shadow table, engines, change store and checkpoint, and start over.
    pub fresh: bool,
}

/// Runs the job, resuming from its checkpoint when there is a valid one.
/// Progress is published through `progress`.
pub async fn run(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
    options: RunOptions,
) -> Result<RunReport, RunError> {
    let ops = Operations::new(config, progress.clone());
    run_with(config, progress, control, options, ops).await
}

/// [`run`] with the caller's live [`Operations`] (to reload its throttle
/// settings on SIGHUP, say): opens the control socket, runs the hooks.
pub async fn run_with(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
    options: RunOptions,
    ops: Arc<Operations>,
) -> Result<RunReport, RunError> {
    // The config's paths are judged before the socket or anything else is created.
    let checks = crate::paths::check(config);
    if checks.iter().any(|c| c.status == preflight::Status::Fail) {
        return Err(RunError::Refused(Box::new(Report {
            server: config.source.describe(),
            checks,
            ..Report::default()
        })));
    }
    let socket_path = config
        .control
        .socket
        .clone()
        .unwrap_or_else(|| crate::control::default_socket_path(config));
    let socket = ControlSocket::bind(&socket_path, ops.clone())?;
    ops.set_socket_path(socket.path());
    progress.emit(RunEvent::ControlSocket {
        path: socket.path().to_path_buf(),
    });
    let port = match config.control.tcp_port {
        Some(port) => {
            let bound = ControlPort::bind(port, ops.clone()).await?;
            progress.emit(RunEvent::ControlPort { addr: bound.addr() });
            Some(bound)
        }
        None => None,
    };
    // Ctrl-C, SIGTERM, `panic` and critical load all stop the run the same way.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forwarder = {
        let outer = control.shutdown.clone();
        let abort = ops.subscribe_abort();
        tokio::spawn(async move {
            while !*outer.borrow() && abort.borrow().is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stop_tx.send(true);
        })
    };
    let status_hooks = {
        let ops = ops.clone();
        let every = config.hooks.status_interval.0;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                ops.hook_logged(HookEvent::OnStatus, None).await;
            }
        })
    };
    ops.hook_logged(HookEvent::OnStartup, None).await;
    let control = RunControl { shutdown: stop_rx };
    let result = run_inner(config, progress, &control, options, &ops).await;
    status_hooks.abort();
    forwarder.abort();
    match &result {
        Ok(_) => ops.hook_logged(HookEvent::OnSuccess, None).await,
        Err(e) => {
            ops.hook_logged(HookEvent::OnFailure, Some(&e.to_string()))
                .await
        }
    }
    drop(socket);
    drop(port);
    result
}

async fn run_inner(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
    options: RunOptions,
    ops: &Arc<Operations>,
) -> Result<RunReport, RunError> {
    progress.set_state(State::Initial);
    if !options.fresh {
        if let Some(ending) = hold_open_window(config, progress, control, ops).await? {
            progress.set_state(State::Close);
            return Ok(RunReport {
                tables: Vec::new(),
                window: Some(ending),
            });
        }
        if let Some(tables) = finish_interrupted_cutover(config, progress).await? {
            progress.set_state(State::Close);
            return Ok(RunReport {
                tables,
                window: None,
            });
        }
    }
    let report = preflight::run(config).await;
    if !report.passed() {
        return Err(RunError::Refused(Box::new(report)));
    }
    let flavor = report
        .flavor
        .ok_or_else(|| RunError::Connection("preflight did not learn the server flavor".into()))?;
    repair_foreign_keys(config).await?;
    if config.target.is_some() && !config.same_server() {
        return Err(RunError::Unsupported(
            "a [target] on another server is not supported for online rebuilds yet (the cut-over renames \
             tables within one server); remove [target]"
                .into(),
        ));
    }
    let source_opts = server::connection_opts(&config.source).map_err(RunError::Connection)?;
    let target_opts = server::connection_opts(config.target()).map_err(RunError::Connection)?;
    // Every table of a group copies and applies at once.
    let tables = config.tables.len().max(1);
    let pool_size = (ops.max_threads() + config.copy.threads * 2 + 4) * tables + 8;
    let source_pool = server::pool(source_opts.clone(), pool_size);
    let target_pool = server::pool(target_opts, pool_size);
    let throttle_checker = ops.throttler.spawn_checker(
        source_pool.clone(),
        target_pool.clone(),
        config.source.database.clone(),
        {
            let ops = ops.clone();
            move |reason| ops.abort(reason)
        },
    );
    let result = run_job(
        config,
        &report,
        flavor,
        &source_opts,
        &source_pool,
        &target_pool,
        progress,
        control,
        options,
        ops,
    )
    .await;
    throttle_checker.abort();
    if !config.throttle.replicas.is_empty() {
        crate::throttle::drop_heartbeat(&source_pool, &config.source.database).await;
    }
    let _ = source_pool.disconnect().await;
    let _ = target_pool.disconnect().await;
    let (tables, window) = result?;
    progress.set_state(State::Close);
    Ok(RunReport { tables, window })
}

/// A job whose revert window is recorded and whose tables are swapped
/// (a run killed during the window, or during its cut-over): hold the
/// window again from its checkpoint.
async fn hold_open_window(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
    ops: &Arc<Operations>,
) -> Result<Option<WindowEnding>, RunError> {
    let opts = server::connection_opts(&config.source).map_err(RunError::Connection)?;
    let pool = server::pool(opts.clone(), 8);
    let result = async {
        let Some((checkpoint, window)) = window::load(config, &pool).await? else {
            return Ok(None);
        };
        if window.stage == wraith_checkpoints::WindowStage::Pending
            && !window::swapped(&pool, &window).await?
        {
            return Ok(None);
        }
        let mut conn = pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        if window::reverted(&mut conn, &window).await? {
            return Err(RunError::Window(
                "a revert of this job's window was interrupted after it had swapped the tables \
                 back; run `wraith revert CONFIG` to finish it"
                    .into(),
            ));
        }
        let flavor = server::flavor(&mut conn).await?;
        drop(conn);
        let job = window::WindowJob {
            config,
            flavor,
            source_opts: &opts,
            pool: &pool,
            progress,
            control,
            ops,
            checkpoint: &checkpoint,
        };
        job.hold().await.map(Some)
    }
    .await;
    let _ = pool.disconnect().await;
    result
}

/// Which end of a revert window a command asks for.
#[derive(Debug, Clone, Copy)]
enum WindowCommand {
    Revert { drop_new: bool },
    Finish,
}

/// What a window command did.
enum WindowDone {
    Reverted(Box<RevertReport>),
    Finished(FinishReport),
}

/// `wraith revert`: swaps the old tables of the job's revert window back
/// in (see `window.rs`). A run holding the window hands it over first.
pub async fn revert(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
    drop_new: bool,
) -> Result<RevertReport, RunError> {
    match end_window(
        config,
        progress,
        control,
        WindowCommand::Revert { drop_new },
    )
    .await?
    {
        WindowDone::Reverted(r) => Ok(*r),
        WindowDone::Finished(_) => Err(RunError::Window(
            "the window was finished, not reverted".into(),
        )),
    }
}

/// `wraith finish`: ends the job's revert window, dropping the old tables.
pub async fn finish(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
) -> Result<FinishReport, RunError> {
    match end_window(config, progress, control, WindowCommand::Finish).await? {
        WindowDone::Finished(r) => Ok(r),
        WindowDone::Reverted(_) => Err(RunError::Window(
            "the window was reverted, not finished".into(),
        )),
    }
}

/// How long a run holding the window may take to hand it over.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(60);

async fn end_window(
    config: &Config,
    progress: &ProgressHandle,
    control: &RunControl,
    command: WindowCommand,
) -> Result<WindowDone, RunError> {
    let opts = server::connection_opts(&config.source).map_err(RunError::Connection)?;
    let pool = server::pool(opts.clone(), 16);
    let ops = Operations::new(config, progress.clone());
    let result = async {
        let none = || {
            RunError::Window(
                "this job has no revert window open (no checkpoint records one): nothing to \
                 revert or finish; `wraith status CONFIG` shows what the checkpoint holds"
                    .into(),
            )
        };
        window::load(config, &pool).await?.ok_or_else(none)?;
        // A run holding the window saves it and exits first.
        let socket = resume::open_store(config, &pool)
            .load(&resume::job_key(config))
            .await
            .map_err(RunError::Checkpoint)?
            .and_then(|t| t.control_socket);
        if let Some(path) = socket {
            let path = std::path::PathBuf::from(path);
            let reply =
                crate::control::send_command(&path, "release-window", Duration::from_secs(5)).await;
            if let Some(reply) = reply.as_deref().filter(|r| !r.starts_with("ok")) {
                return Err(RunError::Window(format!(
                    "a wraith run of this job is running (control socket {}) and does not hold \
                     a revert window: {reply}; nothing was done",
                    path.display()
                )));
            }
            if reply.is_some() {
                let deadline = Instant::now() + HAND_OVER_TIMEOUT;
                while crate::control::query_status(&path, Duration::from_secs(1))
                    .await
                    .is_some()
                {
                    if Instant::now() > deadline {
                        return Err(RunError::Window(format!(
                            "the run holding the revert window (control socket {}) did not hand \
                             it over within {}s; stop it (Ctrl-C) and try again",
                            path.display(),
                            HAND_OVER_TIMEOUT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // Read again: the run that held the window saved its last position.
        let (checkpoint, window) = window::load(config, &pool).await?.ok_or_else(none)?;
        let mut conn = pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        let flavor = server::flavor(&mut conn).await?;
        let job = window::WindowJob {
            config,
            flavor,
            source_opts: &opts,
            pool: &pool,
            progress,
            control,
            ops: &ops,
            checkpoint: &checkpoint,
        };
        let reverted = window::reverted(&mut conn, &window).await?;
        drop(conn);
        match command {
            WindowCommand::Revert { .. }
                if window.stage == wraith_checkpoints::WindowStage::Failed =>
            {
                Err(RunError::Window(format!(
                    "cannot revert: {}",
                    window
                        .failed
                        .clone()
                        .unwrap_or_else(|| "the revert window failed".into())
                )))
            }
            WindowCommand::Revert { drop_new } if reverted => {
                // A revert killed after its RENAME: only its cleanup is left.
                job.finish_revert(&window, drop_new)
                    .await
                    .map(|r| WindowDone::Reverted(Box::new(r)))
            }
            WindowCommand::Revert { drop_new } if window::swapped(&pool, &window).await? => job
                .revert(&window, drop_new)
                .await
                .map(|r| WindowDone::Reverted(Box::new(r))),
            WindowCommand::Finish if window::swapped(&pool, &window).await? => {
                job.drop_old_tables(&window).await.map(WindowDone::Finished)
            }
            _ => Err(RunError::Window(
                "the job's tables are not in the state a revert window leaves (the live table \
                 new, _t_old the old one): the cut-over has not happened, or the tables were \
                 changed by hand; nothing was done"
                    .into(),
            )),
        }
    }
    .await;
    let _ = pool.disconnect().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_job(
    config: &Config,
    report: &Report,
    flavor: Flavor,
    source_opts: &Opts,
    source_pool: &Pool,
    target_pool: &Pool,
    progress: &ProgressHandle,
    control: &RunControl,
    options: RunOptions,
    ops: &Arc<Operations>,
) -> Result<(Vec<TableReport>, Option<WindowEnding>), RunError> {
    let store = resume::open_store(config, target_pool);
    let key = resume::job_key(config);
    let saved = store.load(&key).await.map_err(RunError::Checkpoint)?;
    let mut sconn = source_pool
        .get_conn()
        .await
        .context(|| "connecting to the source".into())?;
    if options.fresh {
        start_over(config, &mut sconn, saved.as_ref(), progress).await?;
        store.remove(&key).await.map_err(RunError::Checkpoint)?;
    }
    let saved = if options.fresh { None } else { saved };
    let task = match saved {
        Some(task) => {
            let mut tables = Vec::new();
            for t in &config.tables {
                let old = inspect_table(&mut sconn, config.schema_of(t), &t.name).await?;
                let shadow_name = shadow::shadow_name(&t.name);
                let shadow = if crate::server::inspect::table_exists(
                    &mut sconn,
                    config.target_schema_of(t),
                    &shadow_name,
                )
                .await?
                {
                    Some(inspect_table(&mut sconn, config.target_schema_of(t), &shadow_name).await?)
                } else {
                    None
                };
                tables.push((old, shadow));
            }
            let current = resume::current_state(&mut sconn, config, &tables).await?;
            validate(
                &task,
                &current,
                SystemTime::now(),
                config.checkpoint.max_age.0,
            )
            .map_err(|e| RunError::InvalidCheckpoint(Box::new(e)))?;
            progress.emit(RunEvent::Resuming {
                migration_id: task.migration_id.to_string(),
                started_at: task.started_at.to_string(),
                store: store.describe(),
                status: task.summary_status(),
            });
            task
        }
        None => TaskCheckpoint::new(
            env!("CARGO_PKG_VERSION"),
            resume::fingerprint(config),
            SystemTime::now(),
        ),
    };
    drop(sconn);
    let mut task = task;
    task.control_socket = ops.socket_path();
    ops.set_migration_id(&task.migration_id.to_string());
    ops.set_started_at(&task.started_at);
    tracing::info!(migration = %task.migration_id, started_at = %task.started_at, "run identity");
    ops.hook_logged(HookEvent::OnValidated, None).await;
    let checkpointer = Checkpointer::new(store, key, task);
    // One table that fails stops the others of its group as Ctrl-C would.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forward = {
        let mut outer = control.shutdown.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            while !*outer.borrow_and_update() {
                if outer.changed().await.is_err() {
                    return;
                }
            }
            let _ = stop_tx.send(true);
        })
    };
    let job_control = RunControl { shutdown: stop_rx };
    // Every table is in the status from the start, in the config's order.
    for table in &config.tables {
        progress.table(&table.name, 0);
    }
    let runs: Vec<TableRun<'_>> = config
        .tables
        .iter()
        .zip(&report.plans)
        .map(|(table, plan)| TableRun {
            config,
            table,
            plan,
            flavor,
            source_opts,
            source_pool,
            target_pool,
            progress,
            control: &job_control,
            checkpoint: &checkpointer,
            ops,
            stages: StageLog::default(),
            made_shadow: std::sync::atomic::AtomicBool::new(false),
        })
        .collect();
    let groups: Vec<Vec<&TableRun<'_>>> = if config.together() {
        vec![runs.iter().collect()]
    } else {
        runs.iter().map(|r| vec![r]).collect()
    };
    let mut tables = Vec::new();
    for runs in groups {
        let group = Group {
            runs,
            stop: &stop_tx,
        };
        match group.run().await {
            Ok(reports) => tables.extend(reports),
            Err(e) => {
                forward.abort();
                return Err(e);
            }
        }
    }
    forward.abort();
    let mut conn = target_pool
        .get_conn()
        .await
        .context(|| "connecting to the target".into())?;
    for t in &config.tables {
        clean_up(&mut conn, config, t, Moment::Finished)
            .await
            .into_result()?;
    }
    drop(conn);
    let window_open =
        checkpointer.snapshot().await.revert_window.is_some() && tables.iter().all(|t| t.cut_over);
    if !window_open {
        checkpointer.remove().await.map_err(RunError::Checkpoint)?;
        return Ok((tables, None));
    }
    let job = window::WindowJob {
        config,
        flavor,
        source_opts,
        pool: source_pool,
        progress,
        control,
        ops,
        checkpoint: &checkpointer,
    };
    let ending = job.hold().await?;
    Ok((tables, Some(ending)))
}

use crate::names::{changes_dir, engines_dir};

fn make_backend(
    config: &Config,
    table: &TableConfig,
    kind: BackendKind,
    target: &Pool,
    ops: &Arc<Operations>,
) -> Result<Arc<dyn Backend>, RunError> {
    Ok(match kind {
        BackendKind::Sql | BackendKind::Auto => {
            Arc::new(SqlBackend::new(target.clone(), SqlBackendConfig::default()))
        }
        BackendKind::Local => Arc::new(
            LocalBackend::new(
                target.clone(),
                LocalBackendConfig {
                    sort_dir: engines_dir(config, table),
                    memory_limit: config.local.memory_limit.0,
                    compression: config.local.compression == Compression::Zstd,
                    import_threads: config.copy.threads,
                    // The import writes what the copy read: the throttle
                    // (replica lag, write debt, the operator) holds both.
                    pace: Some(wraith_backend::ImportPace(ops.clone())),
                },
            )
            .map_err(|e| RunError::Backend {
                backend: "local".into(),
                message: e.to_string(),
            })?,
        ),
    })
}

struct TableRun<'a> {
    config: &'a Config,
    table: &'a TableConfig,
    plan: &'a TablePlan,
    flavor: Flavor,
    source_opts: &'a Opts,
    source_pool: &'a Pool,
    target_pool: &'a Pool,
    progress: &'a ProgressHandle,
    control: &'a RunControl,
    checkpoint: &'a Checkpointer,
    ops: &'a Arc<Operations>,
    /// The stages finished so far, with their times.
    stages: StageLog,
    /// The shadow is this job's (made or resumed): a failure no rerun can
    /// resume from drops it.
    made_shadow: std::sync::atomic::AtomicBool,
}

/// The online machinery of one table, stopped on drop.
struct Following {
    state: Arc<OnlineState>,
    /// Where the change stream started (kept across resumes).
    start: binlog::BinlogPosition,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Following {
    fn check(&self, table: &str) -> Result<(), RunError> {
        self.state.check().map_err(|source| RunError::Changes {
            table: table.to_string(),
            source: Box::new(source),
        })
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.state.stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The cut-over's drain: the online state's steps under the lock, and the
/// run's own consistent points to verify outside it.
struct RunDrain<'r, 'a> {
    online: OnlineDrain,
    run: &'r TableRun<'a>,
    following: &'r Following,
    verifier: Arc<RowVerifier>,
}

/// Whether a rerun can continue from the checkpoint after `e` (else the
/// shadow table and checkpoint are dropped, since nothing good can come of them).
impl RunError {
    /// Whether a rerun with the same config resumes from the checkpoint (the
    /// shadow table, engines and change store were kept).
    pub fn is_resumable(&self) -> bool {
        is_resumable(self)
    }
}

fn is_resumable(e: &RunError) -> bool {
    match e {
        RunError::Refused(_)
        | RunError::Unsupported(_)
        | RunError::Shadow(ShadowError::Exists { .. })
        | RunError::Layout { .. }
        | RunError::InvalidCheckpoint(_)
        | RunError::Window(_) => false,
        RunError::Copy { source, .. } => {
            !matches!(
                source.as_ref(),
                CopyError::Backend(b) if b.is_duplicate()
            ) && !matches!(source.as_ref(), CopyError::Value { .. })
                // The server refused a value: a rerun copies it again and fails again.
                && !source.is_data_error()
        }
        // A lost connection during the checksum is worth resuming; a
        // mismatch is not: the shadow is wrong, so it is rebuilt from scratch.
        RunError::Checksum(c) => matches!(c, ChecksumError::Db(_)),
        RunError::Verify(v) => v.is_resumable(),
        RunError::Changes { source, .. } => source.resumable(),
        RunError::Abandoned { .. } => false,
        _ => true,
    }
}

/// First thing after preflight: child constraints that an interrupted
/// cut-over left on a table's shadow or old table are re-pointed at the
/// live table (see [`crate::foreign_keys::repair_children`]).
async fn repair_foreign_keys(config: &Config) -> Result<(), RunError> {
    let opts = server::connection_opts(&config.source).map_err(RunError::Connection)?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| RunError::Connection(e.to_string()))?;
    for t in &config.tables {
        crate::foreign_keys::repair_children(&mut conn, config.schema_of(t), &t.name)
            .await
            .map_err(|e| match e {
                crate::foreign_keys::ForeignKeyError::Db(e) => RunError::Db(e),
                e => RunError::Unsupported(e.to_string()),
            })?;
    }
    let _ = conn.disconnect().await;
    Ok(())
}
