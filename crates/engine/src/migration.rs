//! The run: the state machine that takes a table from preflight to cut-over.
//!
//! Initial (preflight, shadow table, binlog position, change stream) →
//! CopyRows (chunker, readers, engines, import; changes applied below the low
//! watermark all along) → RestoreSecondaryIndexes → AnalyzeTable → Checksum
//! (source briefly locked, shadow caught up, both sides compared in snapshots
//! of that one point) → PostChecksum (catch-up) → WaitingOnSentinelTable (while
//! a postpone flag file or the sentinel table exists) → CutOver → Close.
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
use crate::cutover::{
    self, cut_over, CutoverError, CutoverSettings, CutoverState, Drain, DrainError, DrainTarget,
};
use crate::db::{self, quote_ident, Context, DbError, Flavor};
use crate::events::RunEvent;
use crate::hooks::{HookError, HookEvent};
use crate::inspect::{inspect_table, TableInfo};
use crate::online::{self, ChangesError, OnlineDrain, OnlineState, RowMapping, CHANGELOG_TABLE};
use crate::plan::TablePlan;
use crate::preflight::{self, Report};
use crate::progress::{ProgressHandle, State};
use crate::resume::{self, Checkpointer};
use crate::shadow::{self, CopyLayout, ShadowError};
use crate::verify::{RowVerifier, VerifyError};
use std::time::SystemTime;
use wraith_checkpoints::{
    validate, EngineCheckpoint, EngineStatus, KeyRange, TableCheckpoint, TableStage, TaskCheckpoint,
};

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

/// Name of the table whose existence postpones the cut-over (Spirit's sentinel).
pub const SENTINEL_TABLE: &str = "_wraith_sentinel";

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
    /// A failure that cannot be resumed, after wraith dropped what it had
    /// created for the table.
    #[error("{error}\nthis run cannot be resumed, so wraith dropped what it had created: {dropped}; the source table is untouched")]
    Abandoned {
        error: Box<RunError>,
        /// What was dropped (and what could not be, with the statement to do it by hand).
        dropped: String,
    },
}

/// What a run did, per table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub shadow: String,
    pub backend: BackendKind,
    pub rows_copied: u64,
    pub chunks: u64,
    pub engines: u64,
    pub copy_secs: f64,
    pub copy_rows_per_sec: f64,
    pub index_restore_secs: f64,
    pub checksum_rows: u64,
    pub checksum_secs: f64,
    /// Row changes read from the binlog for the table.
    pub changes_received: u64,
    /// Changes applied to the shadow table (after deduplication).
    pub changes_applied: u64,
    pub apply_changes_per_sec: f64,
    /// Times the change buffer went over `[changes] memory_limit` and spilled to disk.
    pub change_buffer_spills: u64,
    /// How long the checksum held the source's lock (drain to a consistent point).
    pub checksum_lock_ms: f64,
    /// Rows changed after the checksum and verified again before the rename.
    pub rows_reverified: u64,
    pub cut_over: bool,
    /// Writes to the table blocked by the cut-over, over all its attempts.
    pub cutover_blocked_ms: Option<f64>,
    /// Lock requests the cut-over made that queued or were granted.
    pub cutover_attempts: Option<u32>,
    /// The cut-over in detail: each lock attempt, the blockers waited for, the AUTO_INCREMENT carried over.
    pub cutover: Option<crate::cutover::CutoverReport>,
    pub total_secs: f64,
}

impl TableReport {
    /// The report of a table a resumed run found already finished.
    fn already_done(table: &str, backend: BackendKind, cut_over: bool) -> TableReport {
        TableReport {
            table: table.to_string(),
            shadow: shadow::shadow_name(table),
            backend,
            rows_copied: 0,
            chunks: 0,
            engines: 0,
            copy_secs: 0.0,
            copy_rows_per_sec: 0.0,
            index_restore_secs: 0.0,
            checksum_rows: 0,
            checksum_secs: 0.0,
            changes_received: 0,
            changes_applied: 0,
            apply_changes_per_sec: 0.0,
            change_buffer_spills: 0,
            checksum_lock_ms: 0.0,
            rows_reverified: 0,
            cut_over,
            cutover_blocked_ms: None,
            cutover_attempts: None,
            cutover: None,
            total_secs: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tables: Vec<TableReport>,
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
        if let Some(tables) = finish_interrupted_cutover(config, progress).await? {
            progress.set_state(State::Close);
            return Ok(RunReport { tables });
        }
    }
    let report = preflight::run(config).await;
    if !report.passed() {
        return Err(RunError::Refused(Box::new(report)));
    }
    let flavor = report
        .flavor
        .ok_or_else(|| RunError::Connection("preflight did not learn the server flavor".into()))?;
    if config.target.is_some() && !same_server(config) {
        return Err(RunError::Unsupported(
            "a [target] on another server is not supported for online rebuilds yet (the cut-over renames \
             tables within one server); remove [target]"
                .into(),
        ));
    }
    let source_opts = db::connection_opts(&config.source).map_err(RunError::Connection)?;
    let target_opts = db::connection_opts(config.target()).map_err(RunError::Connection)?;
    let pool_size = ops.max_threads() + config.copy.threads * 2 + 8;
    let source_pool = db::pool(source_opts.clone(), pool_size);
    let target_pool = db::pool(target_opts, pool_size);
    let throttle_checker =
        ops.throttler
            .spawn_checker(source_pool.clone(), config.source.database.clone(), {
                let ops = ops.clone();
                move |reason| ops.abort(reason)
            });
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
    let tables = result?;
    progress.set_state(State::Close);
    Ok(RunReport { tables })
}

/// A run killed during or after its cut-over: the source may already be the
/// rebuilt table, so preflight's ALTER check would fail. Look at the tables
/// first; when every table's swap has happened, finish the job here.
async fn finish_interrupted_cutover(
    config: &Config,
    progress: &ProgressHandle,
) -> Result<Option<Vec<TableReport>>, RunError> {
    let target_opts = db::connection_opts(config.target()).map_err(RunError::Connection)?;
    let pool = db::pool(target_opts, 2);
    let result = async {
        let store = resume::open_store(config, &pool);
        let key = resume::job_key(config);
        let Some(task) = store.load(&key).await.map_err(RunError::Checkpoint)? else {
            return Ok(None);
        };
        let mut reports = Vec::new();
        for t in &config.tables {
            let Some(tc) = task.table(&config.source.database, &t.name) else {
                return Ok(None);
            };
            let done = match tc.stage() {
                TableStage::CuttingOver => {
                    cutover::resolve_interrupted(&pool, &config.source.database, &t.name).await?
                        == CutoverState::Done
                }
                stage => stage >= TableStage::CutOver,
            };
            if !done {
                return Ok(None);
            }
            reports.push(t.name.clone());
        }
        let mut conn = pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let qs = quote_ident(&config.source.database);
        for t in &config.tables {
            if config.cutover.drop_old_table {
                conn.query_drop(format!(
                    "DROP TABLE IF EXISTS {qs}.{}",
                    quote_ident(&shadow::old_name(&t.name))
                ))
                .await
                .context(|| "dropping the old table".into())?;
            }
            let _ = std::fs::remove_dir_all(changes_dir(config, t));
            let _ = std::fs::remove_dir_all(engines_dir(config, t));
            progress.emit(RunEvent::InterruptedRunFinished {
                table: t.name.clone(),
            });
        }
        conn.query_drop(format!(
            "DROP TABLE IF EXISTS {qs}.{}",
            quote_ident(CHANGELOG_TABLE)
        ))
        .await
        .context(|| "dropping the changelog table".into())?;
        store.remove(&key).await.map_err(RunError::Checkpoint)?;
        Ok(Some(
            reports
                .into_iter()
                .map(|table| TableReport::already_done(&table, config.copy.backend, true))
                .collect(),
        ))
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
) -> Result<Vec<TableReport>, RunError> {
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
                let old = inspect_table(&mut sconn, &config.source.database, &t.name).await?;
                let shadow_name = shadow::shadow_name(&t.name);
                let shadow = if crate::inspect::table_exists(
                    &mut sconn,
                    &config.target().database,
                    &shadow_name,
                )
                .await?
                {
                    Some(inspect_table(&mut sconn, &config.target().database, &shadow_name).await?)
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
    let mut tables = Vec::new();
    for (table, plan) in config.tables.iter().zip(&report.plans) {
        let ctx = TableRun {
            config,
            table,
            plan,
            flavor,
            source_opts,
            source_pool,
            target_pool,
            progress,
            control,
            checkpoint: &checkpointer,
            ops,
        };
        tables.push(ctx.run().await?);
    }
    checkpointer.remove().await.map_err(RunError::Checkpoint)?;
    for t in &config.tables {
        let _ = std::fs::remove_dir_all(changes_dir(config, t));
        let _ = std::fs::remove_dir_all(engines_dir(config, t));
    }
    Ok(tables)
}

/// `--fresh`: drops what an earlier run left (shadow, sentry, engines,
/// change store). The source table is never touched.
async fn start_over(
    config: &Config,
    conn: &mut Conn,
    saved: Option<&TaskCheckpoint>,
    progress: &ProgressHandle,
) -> Result<(), RunError> {
    for t in &config.tables {
        if let Some(task) = saved {
            if let Some(tc) = task.table(&config.source.database, &t.name) {
                if tc.stage() >= TableStage::CutOver {
                    continue;
                }
            }
        }
        shadow::drop_shadow(conn, &config.target().database, &t.name).await?;
        cutover::drop_markers(conn, &config.source.database, &t.name).await?;
        let _ = std::fs::remove_dir_all(changes_dir(config, t));
        let _ = std::fs::remove_dir_all(engines_dir(config, t));
        progress.emit(RunEvent::FreshDropped {
            table: t.name.clone(),
            shadow: shadow::shadow_name(&t.name),
        });
    }
    Ok(())
}

/// Where a table's spilled changes live.
fn changes_dir(config: &Config, table: &TableConfig) -> std::path::PathBuf {
    config.changes.dir.clone().unwrap_or_else(|| {
        config
            .local
            .sort_dir
            .join(format!("changes-{}-{}", config.source.database, table.name))
    })
}

/// Where a table's local-backend engines live.
fn engines_dir(config: &Config, table: &TableConfig) -> std::path::PathBuf {
    config
        .local
        .sort_dir
        .join(format!("engines-{}-{}", config.source.database, table.name))
}

fn make_backend(
    config: &Config,
    table: &TableConfig,
    kind: BackendKind,
    target: &Pool,
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
                },
            )
            .map_err(|e| RunError::Backend {
                backend: "local".into(),
                message: e.to_string(),
            })?,
        ),
    })
}

/// Whether the shadow table lives on the source server.
fn same_server(config: &Config) -> bool {
    match &config.target {
        None => true,
        Some(t) => {
            let s = &config.source;
            t.host == s.host && t.port == s.port && t.socket == s.socket
        }
    }
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

impl TableRun<'_> {
    fn source_schema(&self) -> &str {
        &self.config.source.database
    }

    fn target_schema(&self) -> &str {
        &self.config.target().database
    }

    async fn run(&self) -> Result<TableReport, RunError> {
        let started = Instant::now();
        self.ops.set_table(&self.table.name);
        let mut sconn = self
            .source_pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        let old = inspect_table(&mut sconn, self.source_schema(), &self.table.name).await?;
        let mut tconn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let saved = self
            .checkpoint
            .snapshot()
            .await
            .table(self.source_schema(), &self.table.name)
            .cloned();
        let stage = saved
            .as_ref()
            .map(|t| t.stage())
            .unwrap_or(TableStage::Pending);
        if stage == TableStage::CuttingOver {
            match cutover::resolve_interrupted(
                self.source_pool,
                self.source_schema(),
                &self.table.name,
            )
            .await?
            {
                CutoverState::Done => {
                    self.progress.emit(RunEvent::InterruptedCutoverDone {
                        table: self.table.name.clone(),
                    });
                    self.advance(TableStage::CutOver).await?;
                    self.cleanup_after_cutover(&mut tconn).await;
                    return Ok(self.finished_report(&old, stage));
                }
                CutoverState::NotDone => self.progress.emit(RunEvent::InterruptedCutoverUndone {
                    table: self.table.name.clone(),
                }),
            }
        }
        if stage >= TableStage::CutOver {
            self.cleanup_after_cutover(&mut tconn).await;
            return Ok(self.finished_report(&old, stage));
        }
        if stage == TableStage::Pending {
            if saved.is_some() {
                // Killed before the shadow table was recorded: it may be half made.
                shadow::drop_shadow(&mut tconn, self.target_schema(), &self.table.name).await?;
            }
            // Record the table before making anything, so that a kill from here
            // on finds a checkpoint that owns what it left.
            let identity = resume::source_identity(&mut sconn, &old).await?;
            let mut tc = TableCheckpoint::new(identity, String::new(), &self.table.alter);
            tc.rows_total = old.estimated_rows;
            self.checkpoint
                .update(|task| {
                    task.tables.retain(|t| {
                        t.source.table != tc.source.table || t.source.schema != tc.source.schema
                    });
                    task.tables.push(tc);
                })
                .await
                .map_err(RunError::Checkpoint)?;
            let shadow = shadow::create(
                &mut tconn,
                self.source_schema(),
                self.target_schema(),
                &self.table.name,
                &self.table.alter,
                self.plan,
            )
            .await?;
            tracing::info!(table = %self.table.name, shadow = %shadow.name, "shadow table created");
            let fingerprint = resume::shadow_fingerprint(&shadow);
            let (schema, name) = (self.source_schema().to_string(), self.table.name.clone());
            self.checkpoint
                .update(|task| {
                    if let Some(t) = task.table_mut(&schema, &name) {
                        t.shadow_fingerprint = fingerprint;
                    }
                })
                .await
                .map_err(RunError::Checkpoint)?;
            self.advance(TableStage::ShadowCreated).await?;
        } else {
            self.progress.emit(RunEvent::ResumingAtStage {
                table: self.table.name.clone(),
                stage,
            });
            // Whatever the killed run still had running must end before this
            // run writes anything, or a late statement could undo newer work.
            resume::wait_out_killed_writers(
                &mut tconn,
                self.target_schema(),
                &shadow::shadow_name(&self.table.name),
            )
            .await?;
        }

        let outcome = self.online(&old, &mut sconn, saved.as_ref()).await;
        match outcome {
            Ok(mut report) => {
                report.total_secs = started.elapsed().as_secs_f64();
                Ok(report)
            }
            Err(e) if is_resumable(&e) => {
                // Keep the shadow table, engines and change store: a rerun resumes.
                self.progress.set_state(State::ErrCleanup);
                Err(e)
            }
            Err(e) => {
                self.progress.set_state(State::ErrCleanup);
                // This cannot be resumed: drop what this run created so a
                // rerun starts clean, and say what was dropped.
                let mut dropped = Vec::new();
                let shadow_name = format!(
                    "{}.{}",
                    quote_ident(self.target_schema()),
                    quote_ident(&shadow::shadow_name(&self.table.name))
                );
                match shadow::drop_shadow(&mut tconn, self.target_schema(), &self.table.name).await
                {
                    Ok(()) => dropped.push(format!("the shadow table {shadow_name}")),
                    Err(drop_err) => {
                        tracing::error!(error = %drop_err, "could not drop the shadow table after a failure");
                        dropped.push(format!(
                            "NOT the shadow table ({drop_err}: run DROP TABLE {shadow_name})"
                        ));
                    }
                }
                let changelog = format!(
                    "{}.{}",
                    quote_ident(self.source_schema()),
                    quote_ident(CHANGELOG_TABLE)
                );
                match tconn
                    .query_drop(format!("DROP TABLE IF EXISTS {changelog}"))
                    .await
                {
                    Ok(()) => dropped.push(format!("the changelog table {changelog}")),
                    Err(drop_err) => dropped.push(format!(
                        "NOT the changelog table ({drop_err}: run DROP TABLE {changelog})"
                    )),
                }
                match self.checkpoint.remove().await {
                    Ok(()) => {
                        dropped.push(format!("its checkpoint in {}", self.checkpoint.describe()))
                    }
                    Err(cp_err) => {
                        tracing::error!(error = %cp_err, "could not remove the checkpoint after a failure");
                        dropped.push(format!("NOT its checkpoint ({cp_err})"));
                    }
                }
                let _ = std::fs::remove_dir_all(changes_dir(self.config, self.table));
                let _ = std::fs::remove_dir_all(engines_dir(self.config, self.table));
                dropped.push("its local change store and engines".into());
                Err(RunError::Abandoned {
                    error: Box::new(e),
                    dropped: dropped.join(", "),
                })
            }
        }
    }

    /// Moves the table's checkpoint to `stage` and saves it.
    async fn advance(&self, stage: TableStage) -> Result<(), RunError> {
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                match task.table_mut(&schema, &table) {
                    // A resumed run walks through stages it has passed already.
                    Some(t) if t.stage() < stage => t.advance(stage).map_err(|e| e.to_string()),
                    _ => Ok(()),
                }
            })
            .await
            .map_err(RunError::Checkpoint)?
            .map_err(|e| self.setup_error(format!("checkpoint: {e}")))
    }

    /// Records an engine closed with all its chunks: a resumed run imports
    /// it rather than copying its rows again.
    async fn record_closed_engine(&self, closed: ClosedEngineRecord) -> Result<(), RunError> {
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                let Some(t) = task.table_mut(&schema, &table) else {
                    return Ok(());
                };
                let mut engine = EngineCheckpoint::new(closed.uuid, closed.engine_id);
                engine.key_range = KeyRange {
                    lower: closed.lower,
                    upper: closed.upper,
                };
                engine.advance(EngineStatus::AllWritten)?;
                engine.advance(EngineStatus::Closed)?;
                t.engines.retain(|e| e.engine_id != closed.engine_id);
                t.engines.push(engine);
                Ok(())
            })
            .await
            .map_err(RunError::Checkpoint)?
            .map_err(|e: wraith_checkpoints::TransitionError| {
                self.setup_error(format!("checkpoint: {e}"))
            })?;
        tracing::info!(table = %self.table.name, engine = closed.engine_id, "engine closed; recorded for resume");
        Ok(())
    }

    /// Resume of the local backend: imports the engines the killed run had
    /// closed (reopened by UUID with `unsafe_close_engine`) that continue the
    /// durable prefix, and returns the new low watermark. An engine that
    /// cannot be reopened is left: its rows are copied again.
    async fn import_closed_engines(
        &self,
        saved: Option<&TableCheckpoint>,
        mut low: Option<Vec<u8>>,
        layout: &CopyLayout,
    ) -> Result<Option<Vec<u8>>, RunError> {
        let mut engines: Vec<EngineCheckpoint> = saved
            .map(|t| {
                t.engines
                    .iter()
                    .filter(|e| e.status() == EngineStatus::Closed)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if self.plan.backend != BackendKind::Local || engines.is_empty() {
            return Ok(low);
        }
        engines.sort_by_key(|e| e.engine_id);
        let backend = make_backend(self.config, self.table, self.plan.backend, self.target_pool)?;
        let manager = wraith_backend::EngineManager::new(backend.clone());
        let cfg = wraith_backend::EngineConfig {
            target: layout.target.clone(),
            local: wraith_backend::LocalEngineConfig::default(),
        };
        let mut imported = 0;
        let mut rows = 0;
        // Engine 0 of a run that started with nothing copied begins at the
        // table's start, whatever its first chunk's lower bound says.
        let continues = |e: &EngineCheckpoint, low: &Option<Vec<u8>>| {
            e.key_range.lower == *low || (low.is_none() && e.engine_id == 0)
        };
        while let Some(next) = engines.iter().find(|e| continues(e, &low)) {
            let closed = match manager
                .unsafe_close_engine(&cfg, &self.table.name, next.engine_id)
                .await
            {
                Ok(c) if c.uuid() == next.uuid => c,
                Ok(_) | Err(_) => {
                    tracing::info!(
                        engine = next.engine_id,
                        "a closed engine could not be reopened; its rows are copied again"
                    );
                    break;
                }
            };
            let stats = closed
                .import(96 << 20, 1 << 20)
                .await
                .map_err(|e| self.changes_error(ChangesError::ImportEngine(e)))?;
            let _ = closed.cleanup().await;
            imported += 1;
            rows += stats.rows;
            // The engine reached the table's end: everything is copied.
            low = Some(next.key_range.upper.clone().unwrap_or_else(|| vec![0xFF]));
            if next.key_range.upper.is_none() {
                break;
            }
        }
        backend.close().await;
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        let saved_low = low.clone();
        self.checkpoint
            .update(|task| {
                if let Some(t) = task.table_mut(&schema, &table) {
                    t.engines.clear();
                    if imported > 0 {
                        t.change_stream.low_watermark = saved_low;
                    }
                }
            })
            .await
            .map_err(RunError::Checkpoint)?;
        if imported > 0 {
            self.progress.emit(RunEvent::EnginesImported {
                table: self.table.name.clone(),
                engines: imported,
                rows,
            });
        }
        Ok(low)
    }

    /// Saves the copy's frontier. The binlog position saved is where the
    /// change stream started: a resumed run replays every change since then.
    /// Replaying from the start is idempotent (the last image of a key wins)
    /// and does not depend on which buffered changes were durable when the
    /// process died; it costs re-reading the binlog since the start, which the
    /// server must still have (else `BinlogNotFound`).
    async fn save_progress(&self, following: &Following, rows_copied: u64) -> Result<(), RunError> {
        let start = following.start.clone();
        following
            .state
            .persist()
            .await
            .map_err(|e| self.changes_error(e))?;
        let (low, high) = {
            let m = following.state.marks().map_err(|e| self.changes_error(e))?;
            (m.low(), m.high())
        };
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                if let Some(t) = task.table_mut(&schema, &table) {
                    t.change_stream.position = Some(wraith_checkpoints::BinlogPosition {
                        file: start.file,
                        pos: start.pos,
                        gtid: start.gtid,
                    });
                    t.change_stream.low_watermark = match low {
                        Some(Some(k)) => Some(k),
                        Some(None) => Some(vec![0xFF]),
                        None => None,
                    };
                    t.change_stream.high_watermark = high.or(t.change_stream.low_watermark.clone());
                    // Rows count as copied only with a frontier that says which.
                    t.rows_copied = if t.change_stream.high_watermark.is_some() {
                        rows_copied
                    } else {
                        0
                    };
                }
            })
            .await
            .map_err(RunError::Checkpoint)
    }

    fn finished_report(&self, _old: &TableInfo, stage: TableStage) -> TableReport {
        TableReport::already_done(
            &self.table.name,
            self.plan.backend,
            stage >= TableStage::CuttingOver,
        )
    }

    async fn start_following(
        &self,
        old: &TableInfo,
        layout: &CopyLayout,
        sconn: &mut Conn,
        saved: Option<&TableCheckpoint>,
    ) -> Result<Following, RunError> {
        online::ensure_changelog(sconn, self.source_schema()).await?;
        let from = match saved.and_then(|t| t.change_stream.position.clone()) {
            Some(p) => binlog::BinlogPosition {
                file: p.file,
                pos: p.pos,
                gtid: p.gtid,
            },
            None => binlog::current_position(sconn, self.flavor)
                .await
                .map_err(|e| self.changes_error(ChangesError::Start(e)))?,
        };
        tracing::info!(position = %from, "following the binlog from here");
        let mut stream_config = ChangeStreamConfig::for_table(old)
            .map_err(|e| self.changes_error(ChangesError::Start(e)))?;
        stream_config.token_table = Some((
            self.source_schema().to_string(),
            CHANGELOG_TABLE.to_string(),
        ));
        let stream = ChangeStream::start(
            self.source_opts.clone(),
            self.flavor,
            from.clone(),
            stream_config,
        )
        .await
        .map_err(|e| self.changes_error(ChangesError::Start(e)))?;

        let source_positions = layout
            .source_columns
            .iter()
            .map(|name| {
                old.columns
                    .iter()
                    .position(|c| &c.name == name)
                    .ok_or_else(|| self.setup_error(format!("column {name} vanished")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mapping = RowMapping {
            source_positions,
            key_positions: layout.target.key_columns.clone(),
        };
        let collations: Vec<Option<String>> = self
            .plan
            .chunk_key
            .iter()
            .map(|k| old.column(k).and_then(|c| c.collation.clone()))
            .collect();
        let aligned = self.plan.chunk_key.len() == self.plan.new_key.len()
            && layout
                .target
                .key_columns
                .iter()
                .zip(&self.plan.chunk_key)
                .all(|(&i, k)| {
                    layout
                        .source_columns
                        .get(i)
                        .is_some_and(|s| s.eq_ignore_ascii_case(k))
                });
        let use_watermarks = aligned && key_orders_by_bytes(&layout.chunk_key, &collations);
        if !use_watermarks {
            tracing::info!("changes wait until the whole copy is durable (changed key or non-binary collation)");
        }
        let applier = Applier::new(
            self.target_pool.clone(),
            layout.target.clone(),
            self.config.copy.threads,
        );
        let spill_dir = self.config.changes.dir.clone().unwrap_or_else(|| {
            self.config.local.sort_dir.join(format!(
                "changes-{}-{}",
                self.source_schema(),
                self.table.name
            ))
        });
        // A fresh run starts with an empty store (resume comes with checkpoints).
        let _ = std::fs::remove_dir_all(&spill_dir);
        let buffer =
            ChangeBuffer::with_spill(self.config.changes.memory_limit.0 as usize, spill_dir)
                .map_err(|e| self.changes_error(e.into()))?;
        let state = OnlineState::new(
            buffer,
            mapping,
            applier,
            use_watermarks,
            self.source_pool.clone(),
            self.source_schema(),
            &self.table.name,
        );
        state
            .set_position(from.clone())
            .map_err(|e| self.changes_error(e))?;
        let (consumer, apply_loop) = online::spawn(state.clone(), stream);
        Ok(Following {
            start: from,
            state,
            tasks: vec![consumer, apply_loop],
        })
    }

    fn changes_error(&self, source: ChangesError) -> RunError {
        RunError::Changes {
            table: self.table.name.clone(),
            source: Box::new(source),
        }
    }

    /// A failure to set up or record the following of changes, in words.
    fn setup_error(&self, message: String) -> RunError {
        self.changes_error(ChangesError::Setup(message))
    }

    fn interrupted(&self) -> Result<(), RunError> {
        if self.control.stopping() {
            if let Some(reason) = self.ops.abort_reason() {
                return Err(RunError::Aborted {
                    table: self.table.name.clone(),
                    reason,
                });
            }
            return Err(RunError::Interrupted {
                table: self.table.name.clone(),
            });
        }
        Ok(())
    }

    async fn online(
        &self,
        old: &TableInfo,
        sconn: &mut Conn,
        saved: Option<&TableCheckpoint>,
    ) -> Result<TableReport, RunError> {
        let stage = saved
            .map(|t| t.stage())
            .unwrap_or(TableStage::ShadowCreated);
        let config = self.config;
        let table = self.table;
        let plan = self.plan;
        let target_schema = self.target_schema().to_string();
        let layout =
            shadow::layout(old, plan, &target_schema).map_err(|message| RunError::Layout {
                table: table.name.clone(),
                message,
            })?;
        let following = self.start_following(old, &layout, sconn, saved).await?;
        self.progress.attach_stream(following.state.clone());
        let mut tconn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let shadow_name = shadow::shadow_name(&table.name);

        // Where the copy starts: after the saved low watermark of a resumed run.
        let all_copied =
            saved.is_some_and(|t| t.change_stream.low_watermark.as_deref() == Some(&[0xFF][..]));
        let mut copy_needed = stage < TableStage::CopyDone && !all_copied;
        let mut start_after = None;
        if copy_needed {
            let low = saved
                .filter(|t| t.change_stream.position.is_some())
                .and_then(|t| t.change_stream.low_watermark.clone());
            if saved.is_some_and(|t| t.change_stream.position.is_some()) {
                let shadow_key = self.shadow_chunk_key(old)?;
                let deleted = resume::delete_above(
                    &mut tconn,
                    &target_schema,
                    &shadow_name,
                    &shadow_key,
                    low.as_deref(),
                )
                .await?;
                let low = self.import_closed_engines(saved, low, &layout).await?;
                let _ = std::fs::remove_dir_all(engines_dir(config, table));
                self.progress.emit(RunEvent::CopyResumed {
                    table: table.name.clone(),
                    recopied: deleted,
                });
                let everything = low.as_deref() == Some(&[0xFF][..]);
                match &low {
                    // The reopened engines reached the table's end.
                    Some(_) if everything => copy_needed = false,
                    Some(low) => {
                        start_after =
                            Some(wraith_backend::decode_key(low).map_err(|e| {
                                self.setup_error(format!("saved low watermark: {e}"))
                            })?)
                    }
                    None => {}
                }
                {
                    let mut marks = following.state.marks().map_err(|e| self.changes_error(e))?;
                    *marks = if everything {
                        crate::changes::Watermarks::resumed(None)
                    } else {
                        crate::changes::Watermarks::resumed(low.clone())
                    };
                    if everything {
                        marks.copy_done();
                    }
                }
            }
            self.save_progress(&following, 0).await?;
            self.advance(TableStage::Copying).await?;
        }

        let backend = make_backend(config, table, plan.backend, self.target_pool)?;
        let avg_row = (old.estimated_bytes / old.estimated_rows.max(1)).max(64);
        let engine_rows = (config.local.engine_size.0 / avg_row).max(10_000);
        let handle = self.progress.add_table(&table.name, old.estimated_rows);
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        self.progress.set_state(State::CopyRows);
        self.ops
            .hook_logged(HookEvent::OnRowcountComplete, None)
            .await;
        let copy = self.copy_or_skip(
            copy_needed,
            copy_table(
                CopyJob {
                    source_schema: config.source.database.clone(),
                    table: table.name.clone(),
                    layout: layout.clone(),
                    threads: config.copy.threads,
                    chunk_target: config.copy.chunk_target.0,
                    initial_chunk_rows: config.copy.initial_chunk_rows,
                    engine_rows,
                    server_side: config.copy.server_side_copy
                        && plan.backend != BackendKind::Local
                        && same_server(config),
                    online: Some(following.state.clone()),
                    start_after,
                    closed_engines: Some(closed_tx),
                    ops: Some(self.ops.clone()),
                },
                self.source_pool,
                backend.clone(),
                handle.clone(),
            ),
        );
        tokio::pin!(copy);
        let mut shutdown = self.control.shutdown.clone();
        let stats = loop {
            tokio::select! {
                r = &mut copy => break r.map_err(|source| RunError::Copy { table: table.name.clone(), source: Box::new(source) })?,
                _ = wait_for_error(&following) => return Err(following.check(&table.name).err().unwrap_or_else(|| self.changes_error(ChangesError::Stopped))),
                Some(closed) = closed_rx.recv() => self.record_closed_engine(closed).await?,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        self.save_progress(&following, handle.rows_copied()).await?;
                        self.interrupted()?;
                    }
                }
                _ = tokio::time::sleep(config.checkpoint.interval.0) => {
                    self.save_progress(&following, handle.rows_copied()).await?;
                }
            }
        };
        backend.close().await;
        following.check(&table.name)?;
        following
            .state
            .marks()
            .map_err(|e| self.changes_error(e))?
            .copy_done();
        handle.set_total(stats.rows);
        self.ops
            .hook_logged(HookEvent::OnRowCopyComplete, None)
            .await;
        tracing::info!(table = %table.name, rows = stats.rows, chunks = stats.chunks, engines = stats.engines,
            secs = stats.elapsed.as_secs_f64(), "copy done");
        self.save_progress(&following, stats.rows).await?;
        self.advance(TableStage::CopyDone).await?;
        self.interrupted()?;

        self.progress.set_state(State::RestoreSecondaryIndexes);
        let t0 = Instant::now();
        if stage < TableStage::IndexesRestored {
            shadow::restore_indexes(&mut tconn, &target_schema, &table.name, plan).await?;
            self.save_progress(&following, stats.rows).await?;
            self.advance(TableStage::IndexesRestored).await?;
        }
        let index_restore = t0.elapsed();
        following.check(&table.name)?;

        self.progress.set_state(State::AnalyzeTable);
        tconn
            .query_drop(format!(
                "ANALYZE TABLE {}.{}",
                quote_ident(&target_schema),
                quote_ident(&shadow_name)
            ))
            .await
            .context(|| format!("analyzing {shadow_name}"))?;
        self.interrupted()?;

        self.progress.set_state(State::Checksum);
        let new = inspect_table(&mut tconn, &target_schema, &shadow_name).await?;
        let (checksum, checksum_lock) = self.consistent_checksum(old, &new, &following).await?;
        self.save_progress(&following, stats.rows).await?;
        self.advance(TableStage::Checksummed).await?;
        self.progress.set_state(State::PostChecksum);
        handle.complete();
        following.check(&table.name)?;

        let mut report = TableReport {
            table: table.name.clone(),
            shadow: shadow_name.clone(),
            backend: plan.backend,
            rows_copied: stats.rows,
            chunks: stats.chunks,
            engines: stats.engines,
            copy_secs: stats.elapsed.as_secs_f64(),
            copy_rows_per_sec: stats.rows as f64 / stats.elapsed.as_secs_f64().max(1e-6),
            index_restore_secs: index_restore.as_secs_f64(),
            checksum_rows: checksum.rows,
            checksum_secs: checksum.elapsed.as_secs_f64(),
            changes_received: 0,
            changes_applied: 0,
            apply_changes_per_sec: 0.0,
            change_buffer_spills: 0,
            checksum_lock_ms: checksum_lock.as_secs_f64() * 1000.0,
            rows_reverified: 0,
            cut_over: false,
            cutover_blocked_ms: None,
            cutover_attempts: None,
            cutover: None,
            total_secs: 0.0,
        };

        if !config.cutover.enabled {
            if config.cutover.keep_in_sync {
                self.progress.emit(RunEvent::KeptInSync {
                    table: table.name.clone(),
                    shadow: shadow_name.clone(),
                });
                let mut shutdown = self.control.shutdown.clone();
                let verifier =
                    RowVerifier::new(old, &new, plan).map_err(|e| RunError::Verify(Box::new(e)))?;
                let mut verified = Instant::now();
                loop {
                    following.check(&table.name)?;
                    // Kept in sync is kept verified: what changed is compared again.
                    if verified.elapsed() >= REVERIFY_INTERVAL {
                        self.reverify(&following, &verifier).await?;
                        verified = Instant::now();
                    }
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    if *shutdown.borrow() {
                        break;
                    }
                }
                // Leave the shadow exactly in step as of this moment.
                following
                    .state
                    .drain(Duration::from_secs(30), "when the run was stopped")
                    .await
                    .map_err(|e| self.drain_error(e))?;
            }
            self.fill_change_figures(&mut report, &following).await;
            return Ok(report);
        }

        let verifier =
            Arc::new(RowVerifier::new(old, &new, plan).map_err(|e| RunError::Verify(Box::new(e)))?);
        self.wait_for_catch_up(&following).await?;
        self.wait_while_postponed(&following, &verifier).await?;
        self.ops
            .hook(HookEvent::OnBeforeCutOver)
            .await
            .map_err(|source| RunError::Hook {
                table: table.name.clone(),
                source,
            })?;
        // What changed while the cut-over waited is verified outside the
        // cut-over's lock; under it only the last moments remain.
        self.reverify(&following, &verifier).await?;
        self.progress.set_state(State::CutOver);
        self.save_progress(&following, stats.rows).await?;
        self.advance(TableStage::CuttingOver).await?;
        let mut drain = RunDrain {
            online: OnlineDrain {
                state: following.state.clone(),
                timeout: config.cutover.lock_wait_timeout.0,
                verifier: Some(verifier.clone()),
                target_pool: self.target_pool.clone(),
            },
            run: self,
            following: &following,
            verifier,
        };
        let stop = || {
            self.interrupted()
                .and_then(|()| following.check(&table.name))
                .err()
                .map(|e| e.to_string())
        };
        let cut = cut_over(
            self.source_pool,
            self.flavor,
            self.source_schema(),
            &table.name,
            &self.cutover_settings(),
            &mut drain,
            &cutover::Observer {
                progress: self.progress,
                stop: &stop,
            },
        )
        .await;
        let cut = match cut {
            Err(CutoverError::Stopped { .. }) => {
                // Say why in the run's own terms (Ctrl-C, `panic`, the stream).
                self.interrupted()?;
                following.check(&table.name)?;
                cut.map_err(RunError::Cutover)?
            }
            Err(CutoverError::Verify(v)) => return Err(RunError::Verify(v)),
            cut => cut.map_err(RunError::Cutover)?,
        };
        tracing::info!(table = %table.name, blocked_ms = cut.blocked_ms, attempts = cut.attempts, "cut-over done");
        self.advance(TableStage::CutOver).await?;
        self.fill_change_figures(&mut report, &following).await;
        drop(following);
        report.cut_over = true;
        report.cutover_blocked_ms = Some(cut.blocked_ms);
        report.cutover_attempts = Some(cut.attempts);
        report.cutover = Some(cut);
        self.cleanup_after_cutover(&mut tconn).await;
        Ok(report)
    }

    /// The copy, or nothing when a resumed run is past it.
    async fn copy_or_skip(
        &self,
        needed: bool,
        copy: impl std::future::Future<Output = Result<CopyStats, CopyError>>,
    ) -> Result<CopyStats, CopyError> {
        if needed {
            copy.await
        } else {
            Ok(CopyStats::default())
        }
    }

    /// The source's chunk key as named in the shadow table (to delete above a watermark).
    fn shadow_chunk_key(
        &self,
        old: &TableInfo,
    ) -> Result<Vec<wraith_backend::ColumnSpec>, RunError> {
        let copied = self.plan.copied_columns();
        self.plan
            .chunk_key
            .iter()
            .map(|k| {
                let to = copied
                    .iter()
                    .find(|(from, _)| from.eq_ignore_ascii_case(k))
                    .map(|(_, to)| to.to_string());
                match (to, old.column(k)) {
                    (Some(to), Some(c)) => c
                        .spec(&to)
                        .map(|mut s| {
                            s.zone_shift = self.plan.zone_shift(&to);
                            s
                        })
                        .ok_or_else(|| self.setup_error(format!("key column {k}"))),
                    _ => Err(self.setup_error(format!(
                        "the chunk key column {k} is not in the new table, so a resumed copy cannot find its place; run `wraith run --fresh CONFIG`"
                    ))),
                }
            })
            .collect()
    }

    async fn fill_change_figures(&self, report: &mut TableReport, following: &Following) {
        let (applied, rate) = following.state.applied().await;
        report.changes_received = following.state.received();
        report.changes_applied = applied;
        report.apply_changes_per_sec = rate;
        report.change_buffer_spills = following.state.spills();
        report.rows_reverified = following
            .state
            .reverified
            .load(std::sync::atomic::Ordering::Relaxed);
    }

    /// A drain's failure as the run's error.
    fn drain_error(&self, e: DrainError) -> RunError {
        match e {
            DrainError::Retry(e) => self.changes_error(e),
            DrainError::Stop(v) => RunError::Verify(v),
        }
    }

    async fn cleanup_after_cutover(&self, conn: &mut Conn) {
        let qs = quote_ident(self.source_schema());
        if self.config.cutover.drop_old_table {
            let old = shadow::old_name(&self.table.name);
            if let Err(e) = conn
                .query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&old)))
                .await
            {
                tracing::warn!(error = %e, "could not drop {old}; drop it by hand");
            }
        }
        if let Err(e) = conn
            .query_drop(format!(
                "DROP TABLE IF EXISTS {qs}.{}",
                quote_ident(CHANGELOG_TABLE)
            ))
            .await
        {
            tracing::warn!(error = %e, "could not drop {CHANGELOG_TABLE}");
        }
    }

    /// Locks the source for a moment, drains the stream into the shadow, and
    /// opens a consistent snapshot on each side before unlocking; the
    /// comparison then runs on those snapshots while writes go on.
    async fn consistent_checksum(
        &self,
        old: &TableInfo,
        new: &TableInfo,
        following: &Following,
    ) -> Result<(crate::checksum::ChecksumReport, Duration), RunError> {
        let point = self
            .consistent_point(following, "found at the checksum's consistent point")
            .await?;
        let (mut sconn, mut tconn) = (point.source, point.shadow);
        let report = checksum_on(
            &mut sconn,
            &mut tconn,
            old,
            new,
            self.plan,
            Duration::from_millis(500),
        )
        .await?;
        let _ = sconn.query_drop("COMMIT").await;
        let _ = tconn.query_drop("COMMIT").await;
        Ok((report, point.held))
    }

    /// Verifies again the rows changed since the last consistent point
    /// (checksum or verification), at a new one.
    async fn reverify(
        &self,
        following: &Following,
        verifier: &RowVerifier,
    ) -> Result<(), RunError> {
        if following
            .state
            .changed_since_verified()
            .map_err(|e| self.changes_error(e))?
            == 0
        {
            return Ok(());
        }
        let what = "found while the cut-over waited";
        let point = match self.consistent_point(following, what).await {
            // A session holding the table kept the lock from being granted:
            // the keys stay tracked (nothing was taken) and are verified at
            // the next point, or under the cut-over's lock. Waiting is what
            // a postponed run does anyway; it must not end the run.
            Err(RunError::Cutover(e @ CutoverError::GaveUp { .. })) => {
                tracing::warn!(error = %e, "re-verification postponed: the source could not be locked for a moment");
                return Ok(());
            }
            point => point?,
        };
        let (mut sconn, mut tconn) = (point.source, point.shadow);
        let n = verifier
            .verify(&mut sconn, Some(&mut tconn), &point.changed, what)
            .await
            .map_err(|e| match e {
                VerifyError::Db(e) => RunError::Db(e),
                e => RunError::Verify(Box::new(e)),
            })?;
        let _ = sconn.query_drop("COMMIT").await;
        let _ = tconn.query_drop("COMMIT").await;
        following
            .state
            .reverified
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(rows = n, "rows changed after the checksum verified");
        Ok(())
    }

    /// A consistent point: the source locked for a moment, the stream
    /// drained into the shadow (a unique clash left then is real: `what`
    /// says where it was found), a snapshot opened on each side, the keys
    /// written since the last consistent point taken, then unlocked.
    async fn consistent_point(
        &self,
        following: &Following,
        what: &str,
    ) -> Result<ConsistentPoint, RunError> {
        // The drain runs under the lock: start it with a small backlog only.
        self.wait_for_catch_up(following).await?;
        let mut lock = self
            .source_pool
            .get_conn()
            .await
            .context(|| "connecting to lock for a consistent point".into())?;
        let mut sconn = read_conn(self.source_pool).await?;
        let mut tconn = read_conn(self.target_pool).await?;
        let timeout = self.config.cutover.lock_wait_timeout.0.as_secs().max(1);
        lock.query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
            .await
            .context(|| "setting lock_wait_timeout".into())?;
        let qt = format!(
            "{}.{}",
            quote_ident(self.source_schema()),
            quote_ident(&self.table.name)
        );
        // Bounded like the cut-over's lock: a long transaction that wrote the
        // table must not queue the application behind this request.
        let stop = || {
            self.interrupted()
                .and_then(|()| following.check(&self.table.name))
                .err()
                .map(|e| e.to_string())
        };
        let queued = cutover::lock_bounded(
            self.source_pool,
            self.flavor,
            &mut lock,
            &self.table.name,
            &format!("LOCK TABLES {qt} READ"),
            &self.cutover_settings(),
            &stop,
        )
        .await
        .map_err(RunError::Cutover)?;
        let locked = Instant::now();
        let result = async {
            following
                .state
                .drain(self.config.cutover.lock_wait_timeout.0 * 10, what)
                .await
                .map_err(|e| self.drain_error(e))?;
            sconn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .context(|| "opening the source snapshot".into())?;
            tconn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .context(|| "opening the shadow snapshot".into())?;
            // Rows written from here on are verified at a later point.
            following
                .state
                .track_changes()
                .map_err(|e| self.changes_error(e))
        }
        .await;
        let unlocked = lock.query_drop("UNLOCK TABLES").await;
        // Writes waited while the requests queued and while the lock was held.
        let held = locked.elapsed() + queued;
        let changed = result?;
        unlocked.context(|| "UNLOCK TABLES".into())?;
        Ok(ConsistentPoint {
            source: sconn,
            shadow: tconn,
            held,
            changed,
        })
    }

    fn cutover_settings(&self) -> CutoverSettings {
        let c = &self.config.cutover;
        CutoverSettings {
            lock_wait_timeout: c.lock_wait_timeout.0,
            lock_attempt_timeout: c.lock_attempt_timeout.0,
            lock_hold_budget: c.lock_hold_budget.0,
            retries: c.retries,
            retry_backoff: c.retry_backoff.0,
            kill_blockers: c.kill_blockers,
            blocker_grace: c.blocker_grace.map(|g| g.0),
        }
    }

    async fn wait_for_catch_up(&self, following: &Following) -> Result<(), RunError> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let backlog = || following.state.backlog().map_err(|e| self.changes_error(e));
        while backlog()? > 1000 {
            following.check(&self.table.name)?;
            self.interrupted()?;
            if Instant::now() > deadline {
                return Err(self.changes_error(ChangesError::Backlog(backlog()?)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn wait_while_postponed(
        &self,
        following: &Following,
        verifier: &RowVerifier,
    ) -> Result<(), RunError> {
        let mut announced = false;
        let mut verified = Instant::now();
        loop {
            following.check(&self.table.name)?;
            self.interrupted()?;
            if verified.elapsed() >= REVERIFY_INTERVAL {
                self.reverify(following, verifier).await?;
                verified = Instant::now();
            }
            let flag = self
                .config
                .cutover
                .postpone_flag_file
                .as_ref()
                .filter(|f| f.exists());
            let mut conn = self
                .source_pool
                .get_conn()
                .await
                .context(|| "connecting to look for the sentinel table".into())?;
            let sentinel =
                crate::inspect::table_exists(&mut conn, self.source_schema(), SENTINEL_TABLE)
                    .await?;
            drop(conn);
            let commanded = self.ops.cutover_postponed();
            if flag.is_none() && !sentinel && !commanded {
                if announced {
                    tracing::info!("cut-over no longer postponed");
                }
                return Ok(());
            }
            if !announced {
                self.progress.set_state(State::WaitingOnSentinelTable);
                let why = match flag {
                    Some(f) => format!("the postpone flag file {} exists", f.display()),
                    None if commanded => {
                        "commanded (`unpostpone` on the control socket releases it)".to_string()
                    }
                    None => format!("the sentinel table {SENTINEL_TABLE} exists"),
                };
                self.progress.emit(RunEvent::CutoverPostponed {
                    table: self.table.name.clone(),
                    why,
                });
                announced = true;
                self.ops
                    .hook_logged(HookEvent::OnBeginPostponed, None)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
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

impl Drain for RunDrain<'_, '_> {
    async fn drain_to(
        &mut self,
        target: DrainTarget,
        locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> Result<(), DrainError> {
        self.online.drain_to(target, locked, deadline).await
    }

    async fn catch_up(&mut self) -> Result<(), DrainError> {
        self.online.catch_up().await
    }

    async fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> Result<(), DrainError> {
        self.online.verify_locked(session, shadow_locked).await
    }

    fn verification_backlog(&self) -> usize {
        // A poisoned lock is the state's error: the drain fails on it.
        self.following.state.changed_since_verified().unwrap_or(0)
    }

    async fn verify_unlocked(&mut self) -> Result<(), DrainError> {
        match self.run.reverify(self.following, &self.verifier).await {
            Ok(()) => Ok(()),
            Err(RunError::Verify(v)) => Err(DrainError::Stop(v)),
            Err(RunError::Changes { source, .. }) => Err(DrainError::Retry(*source)),
            Err(e) => Err(DrainError::Retry(ChangesError::Verifying(Box::new(e)))),
        }
    }
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
        | RunError::InvalidCheckpoint(_) => false,
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

async fn wait_for_error(following: &Following) {
    while following.state.check().is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
