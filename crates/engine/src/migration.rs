//! The run: the state machine that takes a table from preflight to a verified
//! shadow table.
//!
//! Initial (preflight, shadow table) → CopyRows (chunker, readers, engines,
//! import) → RestoreSecondaryIndexes → AnalyzeTable → Checksum → Close.
//! A failure before the copy is verified cleans up (ErrCleanup: the shadow
//! table is dropped; the source was never written). The change stream and
//! cut-over come next; until then a run with `[cutover] enabled = false` is
//! only correct on a table nobody writes, and says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use serde::Serialize;
use wraith_backend::{Backend, LocalBackend, LocalBackendConfig, SqlBackend, SqlBackendConfig};

use crate::checksum::{checksum_table, ChecksumError};
use crate::config::{BackendKind, Compression, Config, TableConfig};
use crate::copy::{copy_table, CopyError, CopyJob};
use crate::db::{self, quote_ident, Context, DbError};
use crate::inspect::inspect_table;
use crate::plan::TablePlan;
use crate::preflight::{self, Report};
use crate::progress::{ProgressHandle, State};
use crate::shadow::{self, ShadowError};

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
    #[error("setting up the {backend} backend: {message}")]
    Backend { backend: String, message: String },
    #[error("planning {table}: {message}")]
    Layout { table: String, message: String },
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
    pub total_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tables: Vec<TableReport>,
    pub cut_over: bool,
}

/// Runs the job. Progress is published through `progress`.
pub async fn run(config: &Config, progress: &ProgressHandle) -> Result<RunReport, RunError> {
    if config.cutover.enabled {
        return Err(RunError::Unsupported(
            "cut-over needs the binlog change stream, which this version of wraith does not have yet; \
             set `[cutover] enabled = false` to build and verify the shadow table beside the untouched source"
                .into(),
        ));
    }
    progress.set_state(State::Initial);
    let report = preflight::run(config).await;
    if !report.passed() {
        return Err(RunError::Refused(Box::new(report)));
    }
    tracing::warn!(
        "cut-over is disabled and there is no change stream yet: the shadow table is exact only if nobody writes the source during the run"
    );
    let source_opts = db::connection_opts(&config.source).map_err(RunError::Connection)?;
    let target_opts = db::connection_opts(config.target()).map_err(RunError::Connection)?;
    let pool_size = config.copy.threads * 2 + 4;
    let source_pool = db::pool(source_opts, pool_size);
    let target_pool = db::pool(target_opts, pool_size);
    let mut tables = Vec::new();
    let mut result = Ok(());
    for (table, plan) in config.tables.iter().zip(&report.plans) {
        match run_table(config, table, plan, &source_pool, &target_pool, progress).await {
            Ok(r) => tables.push(r),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = source_pool.disconnect().await;
    let _ = target_pool.disconnect().await;
    result?;
    progress.set_state(State::Close);
    Ok(RunReport {
        tables,
        cut_over: false,
    })
}

fn make_backend(
    config: &Config,
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
                    sort_dir: config.local.sort_dir.clone(),
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

async fn run_table(
    config: &Config,
    table: &TableConfig,
    plan: &TablePlan,
    source_pool: &Pool,
    target_pool: &Pool,
    progress: &ProgressHandle,
) -> Result<TableReport, RunError> {
    let started = Instant::now();
    let source_schema = &config.source.database;
    let target_schema = &config.target().database;
    let mut sconn = source_pool
        .get_conn()
        .await
        .context(|| "connecting to the source".into())?;
    let mut tconn = target_pool
        .get_conn()
        .await
        .context(|| "connecting to the target".into())?;
    let old = inspect_table(&mut sconn, source_schema, &table.name).await?;
    shadow::create(
        &mut tconn,
        source_schema,
        target_schema,
        &table.name,
        &table.alter,
        plan,
    )
    .await?;
    tracing::info!(table = %table.name, shadow = %shadow::shadow_name(&table.name), "shadow table created");

    let outcome = copy_and_verify(
        config,
        table,
        plan,
        &old,
        source_pool,
        target_pool,
        progress,
    )
    .await;
    match outcome {
        Ok(mut report) => {
            report.total_secs = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            progress.set_state(State::ErrCleanup);
            // Nothing is resumable yet: drop the shadow so a rerun starts clean.
            if let Err(drop_err) = shadow::drop_shadow(&mut tconn, target_schema, &table.name).await
            {
                tracing::error!(error = %drop_err, "could not drop the shadow table after a failure");
            }
            Err(e)
        }
    }
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

async fn copy_and_verify(
    config: &Config,
    table: &TableConfig,
    plan: &TablePlan,
    old: &crate::inspect::TableInfo,
    source_pool: &Pool,
    target_pool: &Pool,
    progress: &ProgressHandle,
) -> Result<TableReport, RunError> {
    let target_schema = &config.target().database;
    let layout = shadow::layout(old, plan, target_schema).map_err(|message| RunError::Layout {
        table: table.name.clone(),
        message,
    })?;
    let backend = make_backend(config, plan.backend, target_pool)?;
    let avg_row = (old.estimated_bytes / old.estimated_rows.max(1)).max(64);
    let engine_rows = (config.local.engine_size.0 / avg_row).max(10_000);
    let handle = progress.add_table(&table.name, old.estimated_rows);
    progress.set_state(State::CopyRows);
    let stats = copy_table(
        CopyJob {
            source_schema: config.source.database.clone(),
            table: table.name.clone(),
            layout,
            threads: config.copy.threads,
            chunk_target: config.copy.chunk_target.0,
            initial_chunk_rows: config.copy.initial_chunk_rows,
            engine_rows,
            server_side: config.copy.server_side_copy
                && plan.backend != BackendKind::Local
                && same_server(config),
        },
        source_pool,
        backend.clone(),
        handle.clone(),
    )
    .await
    .map_err(|source| RunError::Copy {
        table: table.name.clone(),
        source: Box::new(source),
    })?;
    backend.close().await;
    handle.set_total(stats.rows);
    tracing::info!(
        table = %table.name,
        rows = stats.rows,
        chunks = stats.chunks,
        engines = stats.engines,
        secs = stats.elapsed.as_secs_f64(),
        "copy done"
    );

    let mut tconn = target_pool
        .get_conn()
        .await
        .context(|| "connecting to the target".into())?;
    progress.set_state(State::RestoreSecondaryIndexes);
    let t0 = Instant::now();
    shadow::restore_indexes(&mut tconn, target_schema, &table.name, plan).await?;
    let index_restore = t0.elapsed();

    progress.set_state(State::AnalyzeTable);
    let shadow_name = shadow::shadow_name(&table.name);
    tconn
        .query_drop(format!(
            "ANALYZE TABLE {}.{}",
            quote_ident(target_schema),
            quote_ident(&shadow_name)
        ))
        .await
        .context(|| format!("analyzing {shadow_name}"))?;

    progress.set_state(State::Checksum);
    let new = inspect_table(&mut tconn, target_schema, &shadow_name).await?;
    let checksum = checksum_table(
        source_pool,
        target_pool,
        old,
        &new,
        plan,
        Duration::from_millis(500),
    )
    .await?;
    progress.set_state(State::PostChecksum);
    handle.complete();
    let copy_secs = stats.elapsed.as_secs_f64();
    Ok(TableReport {
        table: table.name.clone(),
        shadow: shadow_name,
        backend: plan.backend,
        rows_copied: stats.rows,
        chunks: stats.chunks,
        engines: stats.engines,
        copy_secs,
        copy_rows_per_sec: stats.rows as f64 / copy_secs.max(1e-6),
        index_restore_secs: index_restore.as_secs_f64(),
        checksum_rows: checksum.rows,
        checksum_secs: checksum.elapsed.as_secs_f64(),
        total_secs: 0.0,
    })
}
