//! The import job as explicit stages ([`Stage`]), each one small function
//! run in order by [`run`]. A stage reads what the stages before it
//! produced ([`Planned`], [`Opened`], [`Loaded`]) and leaves its own work
//! durable in the checkpoint before the next begins, so a rerun after a kill
//! finds every finished stage done and picks up the unfinished one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use wraith_backend::{Backend, LocalBackend, LocalBackendConfig};
use wraith_checkpoints::{ChunkStatus, FileStore, TableStore, TaskCheckpoint};

use super::config::ImportJobConfig;
use super::files::{self, DumpListing};
use super::plan::{self, TablePlan};
use super::report::{ImportProgress, ImportReport, TableImportReport};
use super::{conn, finish, indexes, job_key, load, markers, ImportError, REGIONS_TABLE};
use crate::config::{BackendKind, CheckpointStore as StoreKind, Compression};
use crate::progress::StageTiming;
use crate::resume::Checkpointer;
use crate::server::{quote_ident, Context};

/// The stages of an import, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Files found, missing tables created from their schema files, targets
    /// inspected, backend chosen.
    Plan,
    /// The checkpoint resumed, or written with every region pending; the sql
    /// path's committed regions adopted.
    Checkpoint,
    /// Secondary indexes deferred, then every pending region loaded.
    Load,
    /// Per table: the engine imported (local), indexes restored, rows
    /// verified.
    Finish,
    /// The checkpoint, this job's markers and wraith's empty tables removed.
    Cleanup,
}

impl Stage {
    /// The stage's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Checkpoint => "checkpoint",
            Stage::Load => "load",
            Stage::Finish => "finish",
            Stage::Cleanup => "cleanup",
        }
    }

    /// The [`ImportProgress::phase`] shown from this stage on (`None`: the
    /// phase stays; verification moves it on per table).
    fn phase(self) -> Option<usize> {
        match self {
            Stage::Plan => Some(0),
            Stage::Checkpoint | Stage::Cleanup => None,
            Stage::Load => Some(1),
            Stage::Finish => Some(2),
        }
    }
}

/// One import run: its settings and what every stage shares.
pub(super) struct Job<'a> {
    pub cfg: &'a ImportJobConfig,
    /// The target database.
    pub db: &'a str,
    pub pool: &'a Pool,
    pub progress: Arc<ImportProgress>,
    /// Turns true to stop at the next region boundary (resumable).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The stages finished so far, with their times.
    pub stages: tokio::sync::Mutex<Vec<StageTiming>>,
}

impl Job<'_> {
    /// Runs `body` as `stage`: shows its phase, and records its time once
    /// it succeeded (as the rebuild's stages do).
    async fn stage<T>(
        &self,
        stage: Stage,
        body: impl std::future::Future<Output = Result<T, ImportError>>,
    ) -> Result<T, ImportError> {
        tracing::debug!(stage = stage.name(), "import stage");
        if let Some(phase) = stage.phase() {
            self.progress.phase.store(phase, Ordering::Relaxed);
        }
        let started = Instant::now();
        let out = body.await?;
        self.stages.lock().await.push(StageTiming {
            stage: stage.name(),
            secs: started.elapsed().as_secs_f64(),
        });
        Ok(out)
    }

    /// Whether the operator asked to stop.
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// What [`Stage::Plan`] found.
pub(super) struct Planned {
    pub listing: DumpListing,
    pub tables: Vec<TablePlan>,
    pub backend: BackendKind,
}

/// What [`Stage::Checkpoint`] opened.
pub(super) struct Opened {
    pub checkpointer: Arc<Checkpointer>,
    /// An earlier run's checkpoint was found.
    pub resumed: bool,
    /// Regions an earlier run finished, per table.
    pub resumed_regions: HashMap<String, usize>,
}

/// What [`Stage::Load`] used.
pub(super) struct Loaded {
    /// The local backend (`None`: the sql path).
    pub backend: Option<Arc<dyn Backend>>,
    pub max_concurrent: usize,
    /// The sql path sent rows by `LOAD DATA LOCAL`.
    pub load_data: bool,
}

/// Runs every stage in order.
pub(super) async fn run(job: &Job<'_>, started: Instant) -> Result<ImportReport, ImportError> {
    let planned = job.stage(Stage::Plan, plan(job)).await?;
    let opened = job
        .stage(Stage::Checkpoint, open_checkpoint(job, &planned))
        .await?;
    let loaded = job.stage(Stage::Load, load(job, &planned, &opened)).await?;
    let tables = job
        .stage(Stage::Finish, finish(job, &planned, &opened, &loaded))
        .await?;
    job.stage(Stage::Cleanup, clean_up(job, &planned, &opened))
        .await?;
    let mut report = ImportReport::new(
        job.cfg,
        &planned.listing,
        planned.backend,
        tables,
        loaded.max_concurrent,
        loaded.load_data,
        opened.resumed,
        started,
    );
    report.stages = job.stages.lock().await.clone();
    Ok(report)
}

/// [`Stage::Finish`]: each table's engine imported, indexes restored, rows
/// verified.
async fn finish(
    job: &Job<'_>,
    planned: &Planned,
    opened: &Opened,
    loaded: &Loaded,
) -> Result<Vec<TableImportReport>, ImportError> {
    let mut tables = Vec::new();
    for t in &planned.tables {
        if job.stopped() {
            return Err(ImportError::Interrupted);
        }
        let resumed = opened.resumed_regions.get(&t.name).copied().unwrap_or(0);
        let report = finish::finish_table(
            job,
            t,
            loaded.backend.clone(),
            &opened.checkpointer,
            resumed,
        )
        .await?;
        tables.push(report);
    }
    if let Some(b) = &loaded.backend {
        b.close().await;
    }
    Ok(tables)
}

/// [`Stage::Plan`]: the files, the tables (created from schema files when
/// missing), their shapes and readers, and the backend.
async fn plan(job: &Job<'_>) -> Result<Planned, ImportError> {
    let icfg = &job.cfg.import;
    let listing = files::discover(icfg)?;
    if listing.data.is_empty() {
        return Err(ImportError::Plan(format!(
            "no data files in {} (looked for *.sql, *.csv, *.tsv, *.txt, optionally .gz/.zst, and [[import.mapping]] patterns; skipped: {})",
            icfg.dir.display(),
            if listing.skipped.is_empty() { "none".to_string() } else { listing.skipped.join(", ") }
        )));
    }
    let mut c = conn(job.pool).await?;
    let created = plan::create_tables(job.cfg, job.db, job.pool, &listing, &mut c).await?;
    let tables = plan::plan_tables(job.cfg, job.db, &listing, &mut c, &created).await?;
    let total_bytes: u64 = listing.data.iter().map(|f| f.size).sum();
    let backend = plan::resolve_backend(job.cfg, &tables, total_bytes);
    tracing::info!(backend = %backend, tables = tables.len(), files = listing.data.len(), bytes = total_bytes, "import planned");
    job.progress
        .bytes_total
        .store(total_bytes, Ordering::Relaxed);
    Ok(Planned {
        listing,
        tables,
        backend,
    })
}

/// [`Stage::Checkpoint`]: resumes the job's checkpoint (refusing one made
/// for other files or settings), or refuses tables with rows and writes a
/// fresh one; adopts the sql path's committed regions; counts finished
/// regions as progress.
async fn open_checkpoint(job: &Job<'_>, planned: &Planned) -> Result<Opened, ImportError> {
    let (cfg, db) = (job.cfg, job.db);
    let fingerprint = plan::import_fingerprint(cfg, &planned.listing, planned.backend);
    let store: Arc<dyn wraith_checkpoints::CheckpointStore> =
        match (cfg.checkpoint.store, &cfg.checkpoint.path) {
            (StoreKind::File, Some(path)) => Arc::new(FileStore::new(path.clone())),
            _ => Arc::new(TableStore::new(job.pool.clone(), db.to_string())),
        };
    let key = job_key(cfg);
    let existing = store.load(&key).await?;
    let resumed = existing.is_some();
    let task = match existing {
        Some(task) => {
            if task.config_fingerprint != fingerprint {
                return Err(ImportError::Refused(format!(
                    "the checkpoint of this import ({}) was made for other files or settings \
                     (the dump's file names and sizes, the backend, on_duplicate, format and CSV options \
                     are fingerprinted); restore them, or remove the checkpoint and empty the tables to start over",
                    store.describe()
                )));
            }
            tracing::info!(store = %store.describe(), "resuming the import from its checkpoint");
            task
        }
        None => {
            let task = fresh_task(job, planned, &fingerprint).await?;
            store.save(&key, &task).await?;
            task
        }
    };
    let checkpointer = Arc::new(Checkpointer::new(store, key, task));
    if planned.backend == BackendKind::Sql {
        markers::ensure_regions_table(job.pool, db).await?;
        markers::adopt_committed_regions(job.pool, &checkpointer, &job_key(cfg)).await?;
    }
    let resumed_regions = count_resumed(job, &checkpointer).await;
    Ok(Opened {
        checkpointer,
        resumed,
        resumed_regions,
    })
}

/// A new job's checkpoint, after checking that its tables are empty.
async fn fresh_task(
    job: &Job<'_>,
    planned: &Planned,
    fingerprint: &str,
) -> Result<TaskCheckpoint, ImportError> {
    let db = job.db;
    let mut c = conn(job.pool).await?;
    for t in &planned.tables {
        if plan::table_has_rows(&mut c, db, &t.name).await? {
            return Err(ImportError::Refused(format!(
                "table {db}.{} already has rows; wraith import loads into empty tables \
                 (empty it with TRUNCATE TABLE, or import into another database)",
                t.name
            )));
        }
    }
    drop(c);
    plan::new_task(job.cfg, db, &planned.tables, fingerprint).await
}

/// Regions already done count as progress; returns them per table.
async fn count_resumed(job: &Job<'_>, checkpointer: &Checkpointer) -> HashMap<String, usize> {
    let snapshot = checkpointer.snapshot().await;
    let mut done_bytes = 0;
    let mut resumed_regions: HashMap<String, usize> = HashMap::new();
    for t in &snapshot.tables {
        for ch in t.engines.iter().flat_map(|e| &e.chunks) {
            if ch.status() == ChunkStatus::Flushed {
                if let Some((s, e)) = ch.offset_range {
                    done_bytes += e - s;
                }
                job.progress.rows.fetch_add(ch.rows, Ordering::Relaxed);
                *resumed_regions.entry(t.source.table.clone()).or_default() += 1;
            }
        }
    }
    job.progress.bytes_done.store(done_bytes, Ordering::Relaxed);
    resumed_regions
}

/// [`Stage::Load`]: opens the local backend if chosen, defers secondary
/// indexes, and loads every pending region.
async fn load(job: &Job<'_>, planned: &Planned, opened: &Opened) -> Result<Loaded, ImportError> {
    let cfg = job.cfg;
    let backend: Option<Arc<dyn Backend>> = match planned.backend {
        BackendKind::Local => Some(Arc::new(
            LocalBackend::new(
                job.pool.clone(),
                LocalBackendConfig {
                    sort_dir: crate::names::import_engines_dir(&cfg.local.sort_dir, job.db),
                    memory_limit: cfg.local.memory_limit.0,
                    compression: cfg.local.compression == Compression::Zstd,
                    import_threads: cfg.import.threads.min(4),
                    pace: None,
                },
            )
            .map_err(ImportError::Backend)?,
        )),
        _ => None,
    };
    // Both backends: one sorted index build after the load is far cheaper
    // for the server than keeping a secondary index up to date row by row.
    indexes::defer_indexes(job, &opened.checkpointer, &planned.tables).await?;
    let (max_concurrent, load_data) =
        load::load_regions(job, &planned.tables, backend.clone(), &opened.checkpointer).await?;
    Ok(Loaded {
        backend,
        max_concurrent,
        load_data,
    })
}

/// [`Stage::Cleanup`]: the checkpoint and the markers have served; wraith's
/// own tables go when no other job needs them. The import is done either
/// way: a table that cannot be dropped is only reported.
async fn clean_up(job: &Job<'_>, planned: &Planned, opened: &Opened) -> Result<(), ImportError> {
    let (cfg, db) = (job.cfg, job.db);
    opened.checkpointer.remove().await?;
    let mut c = conn(job.pool).await?;
    if planned.backend == BackendKind::Sql {
        c.exec_drop(
            format!(
                "DELETE FROM {}.{} WHERE job = ?",
                quote_ident(db),
                quote_ident(REGIONS_TABLE)
            ),
            (job_key(cfg),),
        )
        .await
        .context(|| format!("removing this job's rows from {REGIONS_TABLE}"))?;
    }
    let mut helpers = vec![REGIONS_TABLE];
    if planned.backend == BackendKind::Local {
        // The engines are cleaned up; their directory goes too when empty.
        let _ = std::fs::remove_dir(crate::names::import_engines_dir(&cfg.local.sort_dir, db));
    }
    if !matches!(
        (cfg.checkpoint.store, &cfg.checkpoint.path),
        (StoreKind::File, Some(_))
    ) {
        helpers.push(crate::names::CHECKPOINT_TABLE);
    }
    for table in helpers {
        if let Err(e) = markers::drop_if_empty(&mut c, db, table).await {
            tracing::warn!(table, error = %e, "wraith's empty table was left in place; drop it when no wraith job runs");
        }
    }
    Ok(())
}
