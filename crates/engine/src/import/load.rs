//! [`super::job::Stage::Load`]: every pending region parsed and written.
//!
//! `threads` workers take regions off one queue; each region is parsed on
//! the rayon pool (batches of typed rows through a small channel, so
//! parsing runs ahead of writing by a few batches) and written either into
//! its table's engine (local backend: a writer per region, then a flush, so
//! the region is durable before the checkpoint says so) or in one
//! transaction with its marker row ([`super::writer`], sql path). Under
//! `on_duplicate = "replace"`/`"ignore"` a table's regions are written in
//! file order (each waits its [`Turn`]); parsing still runs ahead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use tokio::sync::{mpsc, Notify};
use wraith_backend::{
    Backend, EngineConfig, EngineManager, LocalEngineConfig, LocalWriterConfig, OpenedEngine,
    TargetTable,
};
use wraith_checkpoints::{ChunkStatus, EngineStatus, RowsChecksum, TableStage};

use super::config::{ImportVerify, OnDuplicate};
use super::job::Job;
use super::plan::TablePlan;
use super::region::{self, Batch, FileReader, TableShape};
use super::report::ImportProgress;
use super::{conn, engine_table_name, job_key, verify, writer, ImportError};
use crate::resume::Checkpointer;
use crate::server::Context;

/// One region to load.
struct Work {
    table: usize,
    chunk_id: u64,
    reader: Arc<FileReader>,
    start: u64,
    end: u64,
    /// Position among the table's pending regions (ordered writes).
    order: u64,
}

/// Per-table write order for `replace`/`ignore`.
struct Turn {
    next: std::sync::Mutex<u64>,
    notify: Notify,
}

/// What a region's parser sends.
pub(super) enum Parsed {
    Batch(Batch),
    Done(u64),
    Failed(ImportError),
}

/// Everything the load workers share (owned: they are spawned tasks).
struct LoadShared {
    queue: std::sync::Mutex<VecDeque<Work>>,
    turns: Vec<Turn>,
    /// Per table: its target and the shape its rows are typed by.
    targets: Vec<(TargetTable, Arc<TableShape>)>,
    /// Per table: its open engine (local backend).
    engines: Vec<Option<Arc<OpenedEngine>>>,
    parse_pool: rayon::ThreadPool,
    parsing: AtomicUsize,
    max_parsing: AtomicUsize,
    /// The sql path sends rows by `LOAD DATA LOCAL` (the server allows it).
    load_data: bool,
    pool: Pool,
    checkpointer: Arc<Checkpointer>,
    progress: Arc<ImportProgress>,
    stop: tokio::sync::watch::Receiver<bool>,
    mode: OnDuplicate,
    /// `verify = "checksum"`: regions' rows are summed as they are parsed.
    verify: bool,
    /// The job's key (the sql path's markers carry it).
    job: String,
    db: String,
}

impl LoadShared {
    /// Regions of a table are written in file order (`replace`/`ignore`).
    fn ordered(&self) -> bool {
        self.mode != OnDuplicate::Error
    }
}

/// Loads every pending region; returns the most regions parsed at once and
/// whether the sql path sent rows by `LOAD DATA LOCAL`.
pub(super) async fn load_regions(
    job: &Job<'_>,
    tables: &[TablePlan],
    backend: Option<Arc<dyn Backend>>,
    checkpointer: &Arc<Checkpointer>,
) -> Result<(usize, bool), ImportError> {
    let cfg = job.cfg;
    let (queue, engines) = queue_regions(job, tables, backend.as_ref(), checkpointer).await?;
    let load_data = backend.is_none()
        && cfg.import.load_data
        && cfg.import.on_duplicate == OnDuplicate::Error
        && local_infile(job.pool).await?;
    let threads = cfg.import.threads;
    let parse_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("wraith-parse-{i}"))
        .build()
        .map_err(|e| ImportError::Worker(e.to_string()))?;
    let shared = Arc::new(LoadShared {
        queue: std::sync::Mutex::new(queue),
        turns: tables
            .iter()
            .map(|_| Turn {
                next: std::sync::Mutex::new(0),
                notify: Notify::new(),
            })
            .collect(),
        targets: tables
            .iter()
            .map(|t| (t.target.clone(), t.shape.clone()))
            .collect(),
        engines,
        parse_pool,
        parsing: AtomicUsize::new(0),
        max_parsing: AtomicUsize::new(0),
        load_data,
        pool: job.pool.clone(),
        checkpointer: checkpointer.clone(),
        progress: job.progress.clone(),
        stop: job.stop.clone(),
        mode: cfg.import.on_duplicate,
        verify: cfg.import.verify == ImportVerify::Checksum,
        job: job_key(cfg),
        db: job.db.to_string(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..threads {
        workers.spawn(worker(shared.clone()));
    }
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let r = joined
            .map_err(|e| ImportError::Worker(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = r {
            if first_error.is_none() {
                workers.abort_all();
                first_error = Some(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok((shared.max_parsing.load(Ordering::Relaxed), shared.load_data))
}

/// The regions the checkpoint has pending, in file order, and per table the
/// engine they go to (local backend; opened when the table has work left).
async fn queue_regions(
    job: &Job<'_>,
    tables: &[TablePlan],
    backend: Option<&Arc<dyn Backend>>,
    checkpointer: &Checkpointer,
) -> Result<(VecDeque<Work>, Vec<Option<Arc<OpenedEngine>>>), ImportError> {
    let db = job.db;
    let snapshot = checkpointer.snapshot().await;
    let mut queue = VecDeque::new();
    let mut engines = Vec::new();
    let manager = backend.cloned().map(EngineManager::new);
    for (ti, t) in tables.iter().enumerate() {
        let tc = snapshot.table(db, &t.name).ok_or_else(|| {
            ImportError::Refused(format!(
                "the checkpoint does not know table {}; remove it and start over",
                t.name
            ))
        })?;
        let engine_cp = tc.engines.first();
        let mut order = 0;
        if tc.stage() < TableStage::CopyDone {
            for ch in engine_cp.map(|e| e.chunks.as_slice()).unwrap_or(&[]) {
                if ch.status() == ChunkStatus::Flushed {
                    continue;
                }
                let (Some(file), Some((start, end))) = (&ch.file, ch.offset_range) else {
                    continue;
                };
                let reader = t
                    .readers
                    .iter()
                    .find(|r| &r.file.name == file)
                    .cloned()
                    .ok_or_else(|| {
                        ImportError::Refused(format!(
                            "the checkpoint names file {file}, which is gone"
                        ))
                    })?;
                queue.push_back(Work {
                    table: ti,
                    chunk_id: ch.id,
                    reader,
                    start,
                    end,
                    order,
                });
                order += 1;
            }
        }
        let pending = order > 0;
        let needs_engine = engine_cp.is_some_and(|e| e.status() < EngineStatus::Closed)
            && tc.stage() < TableStage::CopyDone;
        engines.push(match (&manager, needs_engine || pending) {
            (Some(m), true) => Some(Arc::new(
                m.open_engine(&engine_config(t), &engine_table_name(db, &t.name), 0)
                    .await?,
            )),
            _ => None,
        });
    }
    Ok((queue, engines))
}

/// One worker: regions off the queue until it is empty or the job stops.
async fn worker(shared: Arc<LoadShared>) -> Result<(), ImportError> {
    loop {
        if *shared.stop.borrow() {
            return Err(ImportError::Interrupted);
        }
        let next = shared
            .queue
            .lock()
            .map_err(|_| ImportError::Worker("queue poisoned".into()))?
            .pop_front();
        let Some(work) = next else { return Ok(()) };
        let (rows, checksum) = load_one(&shared, &work).await?;
        let table = &shared.targets[work.table].0.table;
        shared
            .checkpointer
            .update(|task| {
                if let Some(tc) = task.table_mut(&shared.db, table) {
                    tc.rows_copied += rows;
                    if let Some(ch) = tc
                        .engines
                        .first_mut()
                        .and_then(|e| e.chunk_mut(work.chunk_id))
                    {
                        ch.rows = rows;
                        ch.checksum = checksum.clone();
                        let _ = ch.advance(ChunkStatus::Flushed);
                    }
                }
            })
            .await?;
        tracing::debug!(file = %work.reader.file.name, start = work.start, end = work.end, rows, "region loaded");
        if shared.ordered() {
            let turn = &shared.turns[work.table];
            if let Ok(mut n) = turn.next.lock() {
                *n = work.order + 1;
            }
            turn.notify.notify_waiters();
        }
    }
}

/// Whether the server takes `LOAD DATA LOCAL` (else the sql path sends INSERTs).
async fn local_infile(pool: &Pool) -> Result<bool, ImportError> {
    let mut c = conn(pool).await?;
    let on: Option<i64> = c
        .query_first("SELECT @@GLOBAL.local_infile")
        .await
        .context(|| "reading local_infile".into())?;
    let on = on == Some(1);
    if !on {
        tracing::info!("the server has local_infile = OFF: rows go as INSERT statements (LOAD DATA LOCAL is faster)");
    }
    Ok(on)
}

/// The engine of table `t` (the local backend).
pub(super) fn engine_config(t: &TablePlan) -> EngineConfig {
    EngineConfig {
        target: t.target.clone(),
        local: LocalEngineConfig::default(),
    }
}

/// Parses one region on the rayon pool and writes its batches; returns its
/// rows and (under `verify = "checksum"`) their sums.
async fn load_one(
    shared: &Arc<LoadShared>,
    work: &Work,
) -> Result<(u64, Option<RowsChecksum>), ImportError> {
    let mut feed = RegionFeed {
        rx: spawn_parser(shared, work),
        progress: &shared.progress,
        sums: shared
            .verify
            .then(|| RegionSums::new(&work.reader.file.name)),
        reported: 0,
    };
    if shared.ordered() {
        wait_turn(&shared.turns[work.table], work.order).await;
    }
    let (rows, sums) = match &shared.engines[work.table] {
        Some(engine) => {
            let rows = into_engine(engine, &mut feed, &shared.targets[work.table].0).await?;
            (rows, feed.sums.take().map(RegionSums::finish))
        }
        None => in_transaction(shared, work, &mut feed).await?,
    };
    tracing::debug!(file = %work.reader.file.name, start = work.start, end = work.end, rows, "region durable");
    commit_pause().await;
    shared.progress.bytes_done.fetch_add(
        (work.end - work.start).saturating_sub(feed.reported),
        Ordering::Relaxed,
    );
    Ok((rows, sums))
}

/// Starts parsing `work` on the rayon pool; its batches come on the channel.
fn spawn_parser(shared: &Arc<LoadShared>, work: &Work) -> mpsc::Receiver<Parsed> {
    let (tx, rx) = mpsc::channel::<Parsed>(4);
    let reader = work.reader.clone();
    let (start, end) = (work.start, work.end);
    let counters = shared.clone();
    shared.parse_pool.spawn(move || {
        let now = counters.parsing.fetch_add(1, Ordering::AcqRel) + 1;
        counters.max_parsing.fetch_max(now, Ordering::AcqRel);
        let result = region::read_region(&reader, start, end, &mut |b| {
            tx.blocking_send(Parsed::Batch(b)).is_ok()
        });
        counters.parsing.fetch_sub(1, Ordering::AcqRel);
        let _ = tx.blocking_send(match result {
            Ok(n) => Parsed::Done(n),
            Err(e) => Parsed::Failed(e),
        });
    });
    rx
}

/// Waits until the regions of the table before position `order` are written.
async fn wait_turn(turn: &Turn, order: u64) {
    loop {
        let notified = turn.notify.notified();
        let next = turn.next.lock().map(|n| *n).unwrap_or(u64::MAX);
        if next >= order {
            return;
        }
        notified.await;
    }
}

/// The local path: the region's rows into the table's engine through one
/// writer, then a flush (the region is durable before it is recorded).
async fn into_engine(
    engine: &OpenedEngine,
    feed: &mut RegionFeed<'_>,
    target: &TargetTable,
) -> Result<u64, ImportError> {
    let mut w = engine
        .local_writer(&LocalWriterConfig {
            is_kv_sorted: false,
            table_name: target.table.clone(),
        })
        .await?;
    let rows = loop {
        match feed.next().await? {
            Fed::Batch(b) => {
                if !b.rows.is_empty() {
                    w.append_rows(&b.columns, b.rows).await?;
                }
            }
            Fed::Done(n) => break n,
        }
    };
    w.close().await?;
    engine.flush().await?;
    Ok(rows)
}

/// The sql path: the region's rows and its marker (with its sums) in one
/// transaction.
async fn in_transaction(
    shared: &LoadShared,
    work: &Work,
    feed: &mut RegionFeed<'_>,
) -> Result<(u64, Option<RowsChecksum>), ImportError> {
    let (target, shape) = &shared.targets[work.table];
    let mut w = writer::RegionWriter::begin(
        &shared.pool,
        target,
        shape.clone(),
        shared.mode,
        &work.reader.file,
        shared.load_data,
    )
    .await?;
    let rows = loop {
        match feed.next().await {
            Ok(Fed::Batch(b)) => w.write(&b).await?,
            Ok(Fed::Done(n)) => break n,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        }
    };
    let sums = feed.sums.take().map(RegionSums::finish);
    w.commit(
        &shared.job,
        work.chunk_id,
        (work.start, work.end),
        rows,
        sums.as_ref(),
    )
    .await?;
    Ok((rows, sums))
}

/// The batches of one region as its parser sends them, each counted into
/// the progress and summed (under `verify = "checksum"`) as it is taken.
struct RegionFeed<'a> {
    rx: mpsc::Receiver<Parsed>,
    progress: &'a ImportProgress,
    sums: Option<RegionSums>,
    /// Bytes counted into the progress so far.
    reported: u64,
}

/// What [`RegionFeed::next`] gives.
enum Fed {
    Batch(Batch),
    /// The region is parsed: this many rows.
    Done(u64),
}

impl RegionFeed<'_> {
    async fn next(&mut self) -> Result<Fed, ImportError> {
        match self.rx.recv().await {
            Some(Parsed::Batch(b)) => {
                self.reported += b.bytes;
                self.progress
                    .bytes_done
                    .fetch_add(b.bytes, Ordering::Relaxed);
                self.progress
                    .rows
                    .fetch_add(b.rows.len() as u64, Ordering::Relaxed);
                if let Some(sums) = self.sums.as_mut() {
                    sums.add(&b)?;
                }
                Ok(Fed::Batch(b))
            }
            Some(Parsed::Done(n)) => Ok(Fed::Done(n)),
            Some(Parsed::Failed(e)) => Err(e),
            None => Err(ImportError::Worker(
                "a parser stopped without a result".into(),
            )),
        }
    }
}

/// Test hook: `WRAITH_TEST_REGION_PAUSE_MS` holds each region between the
/// moment its rows are durable (committed, or flushed into the engine) and
/// the moment the checkpoint records it, so the suite can aim a kill -9 at
/// that window. Unset (always, outside the suite): no pause.
async fn commit_pause() {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("WRAITH_TEST_REGION_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    });
    if let Some(p) = pause {
        tokio::time::sleep(*p).await;
    }
}

/// The parsed rows of one region, summed for `verify = "checksum"`.
struct RegionSums {
    file: String,
    columns: Option<Arc<Vec<String>>>,
    hasher: Option<verify::RowHasher>,
    sum: RowsChecksum,
}

impl RegionSums {
    fn new(file: &str) -> RegionSums {
        RegionSums {
            file: file.to_string(),
            columns: None,
            hasher: None,
            sum: RowsChecksum::default(),
        }
    }

    fn add(&mut self, batch: &region::Batch) -> Result<(), ImportError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        match &self.columns {
            None => {
                let hasher = verify::RowHasher::new(&batch.columns);
                self.sum = hasher.empty();
                self.hasher = Some(hasher);
                self.columns = Some(batch.columns.clone());
            }
            Some(c) if c != &batch.columns => {
                return Err(ImportError::Plan(format!(
                    "{}: verify = \"checksum\" needs one column list per table, but this file's \
                     rows name different columns ({} then {}); use verify = \"count\"",
                    self.file,
                    c.join(", "),
                    batch.columns.join(", ")
                )))
            }
            Some(_) => {}
        }
        if let Some(hasher) = self.hasher.as_mut() {
            for row in &batch.rows {
                self.sum.add(hasher.hash(row));
            }
        }
        Ok(())
    }

    fn finish(self) -> RowsChecksum {
        self.sum
    }
}
