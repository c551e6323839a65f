//! The copier: reads chunks of the source and writes them through engines.
//!
//! `threads` workers each take the next chunk from the [`Chunker`], read it
//! with a plain consistent read (`SELECT ... WHERE <range> ORDER BY key`, no
//! locks on the source), and append the rows through a writer of the current
//! engine. The copier leaves chunk sizing to the chunker and writing to the
//! backend; it decides only which engine a chunk goes to.
//!
//! Engines are bounded (`engine_rows`): when the current engine has been given
//! that many rows, a new one is opened and the full one is closed, imported
//! and cleaned up in the background once its last writer is done, so the
//! import of engine N overlaps the copy into engine N+1 (as Lightning does).
//! With the `sql` backend import is a no-op and one engine suffices.
//!
//! Operating (`CopyJob::ops`): before each chunk a worker waits its turn
//! ([`crate::control::Operations::wait_turn`]) while the copy is throttled or
//! while its index is beyond the live `threads=N`, and the chunker is handed
//! the operator's chunk size or target.
//!
//! Reads use the same session settings as the writers
//! (`wraith_backend::sql::SESSION_SETUP`: binary strings, UTC time zone), so
//! every value travels as the exact bytes the server stored. A column the
//! server's own ALTER converts in its time zone is converted explicitly, by
//! the server, in the `INSERT … SELECT` expression or in the written literal
//! (`wraith_backend::ZoneShift`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use wraith_backend::{
    Backend, BackendError, EngineConfig, EngineManager, ImportStats, LocalEngineConfig,
    LocalWriterConfig, OpenedEngine, Row, Value, ValueError,
};

use crate::chunker::{int_span, Chunk, Chunker, KeySql};
use crate::control::Operations;
use crate::db::{quote_ident, Context, DbError};
use crate::online::OnlineState;
use crate::progress::TableHandle;
use crate::shadow::CopyLayout;

/// Why the copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("reading {table}: {source}")]
    Value {
        table: String,
        #[source]
        source: ValueError,
    },
    #[error("a copy worker failed: {0}")]
    Worker(String),
}

impl CopyError {
    /// Whether the server refused a value (NULL into NOT NULL, out of range,
    /// too long, ...): copying the same rows again would fail the same way.
    pub fn is_data_error(&self) -> bool {
        match self {
            CopyError::Db(DbError {
                error: mysql_async::Error::Server(e),
                ..
            }) => wraith_backend::is_data_error_code(e.code),
            CopyError::Backend(b) => b.is_data_error(),
            _ => false,
        }
    }
}

/// What the copy did.
#[derive(Debug, Clone, Default)]
pub struct CopyStats {
    pub rows: u64,
    pub chunks: u64,
    pub engines: u64,
    pub imported: ImportStats,
    pub elapsed: Duration,
}

/// How to copy one table.
pub struct CopyJob {
    pub source_schema: String,
    pub table: String,
    pub layout: CopyLayout,
    pub threads: usize,
    pub chunk_target: Duration,
    pub initial_chunk_rows: u64,
    /// Rows per engine before it is closed and imported.
    pub engine_rows: u64,
    /// Source and shadow are on one server and the backend is `sql`: copy
    /// each chunk with one `INSERT ... SELECT`, so no row travels to wraith.
    pub server_side: bool,
    /// The online state whose watermarks the copy advances, if changes are followed.
    pub online: Option<Arc<OnlineState>>,
    /// A resumed copy starts after this key (every key up to it is copied).
    pub start_after: Option<Vec<Value>>,
    /// Told of every engine that is closed with all its chunks written, so
    /// the checkpoint can record it and a resumed run import it instead of
    /// copying its rows again.
    pub closed_engines: Option<tokio::sync::mpsc::UnboundedSender<ClosedEngineRecord>>,
    /// Live settings (throttle, chunk size, threads): workers wait their turn
    /// between chunks. `None`: `threads` workers, never paused.
    pub ops: Option<Arc<Operations>>,
}

/// An engine closed with every chunk dispatched to it written: its rows are
/// exactly the source's keys in `(lower, upper]` (encoded keys; `None` is the
/// start or the end of the table) as read by the copy.
#[derive(Debug, Clone)]
pub struct ClosedEngineRecord {
    pub engine_id: i32,
    pub uuid: uuid::Uuid,
    pub lower: Option<Vec<u8>>,
    pub upper: Option<Vec<u8>>,
}

/// Opens connections for reading the source, with the exact-value session.
pub async fn read_conn(pool: &Pool) -> Result<Conn, DbError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting to the source".into())?;
    conn.query_drop(wraith_backend::sql::SESSION_SETUP)
        .await
        .context(|| "setting up a read session".into())?;
    Ok(conn)
}

/// The engine chunks are dispatched to now. Chunks are given their engine
/// when the chunker hands them out, so an engine holds a contiguous run of
/// chunks: a key range.
struct EngineSlot {
    /// `None` once the copy is finished.
    current: Option<CurrentEngine>,
    id: i32,
    rows_assigned: u64,
}

struct CurrentEngine {
    engine: Arc<OpenedEngine>,
    id: i32,
    /// Chunks dispatched to this engine, in order.
    dispatched: Vec<u64>,
    /// Chunks whose rows are written: durable once the engine is imported.
    written: Arc<std::sync::Mutex<Vec<u64>>>,
    /// Encoded lower bound of the first chunk (`None`: the table's start).
    lower: Option<Vec<u8>>,
    /// Encoded upper bound of the last chunk (`None`: the table's end).
    upper: Option<Vec<u8>>,
}

impl CurrentEngine {
    fn new(engine: OpenedEngine, id: i32) -> CurrentEngine {
        CurrentEngine {
            engine: Arc::new(engine),
            id,
            dispatched: Vec::new(),
            written: Arc::new(std::sync::Mutex::new(Vec::new())),
            lower: None,
            upper: None,
        }
    }
}

fn encoded(key: Option<&Vec<Value>>) -> Option<Vec<u8>> {
    key.map(|k| {
        let values: Vec<&Value> = k.iter().collect();
        let mut out = Vec::new();
        wraith_backend::encode_key(&values, &mut out);
        out
    })
}

struct Shared {
    job: CopyJob,
    chunker: Mutex<Chunker>,
    slot: Mutex<EngineSlot>,
    manager: EngineManager,
    engine_cfg: EngineConfig,
    progress: TableHandle,
    closers: Mutex<JoinSet<Result<ImportStats, BackendError>>>,
    chunks: AtomicU64,
    engines: AtomicU64,
    /// The chunker is exhausted: idle workers need not wait their turn.
    finished: AtomicBool,
}

/// Copies every row of the source into the shadow table through `backend`.
pub async fn copy_table(
    job: CopyJob,
    source: &Pool,
    backend: Arc<dyn Backend>,
    progress: TableHandle,
) -> Result<CopyStats, CopyError> {
    let started = Instant::now();
    let mut conn = read_conn(source).await?;
    let chunker = Chunker::resume(
        &mut conn,
        &job.source_schema,
        &job.table,
        job.layout.chunk_key.clone(),
        job.chunk_target,
        job.initial_chunk_rows,
        job.start_after.clone(),
    )
    .await?;
    drop(conn);
    let manager = EngineManager::new(backend);
    let engine_cfg = EngineConfig {
        target: job.layout.target.clone(),
        local: LocalEngineConfig::default(),
    };
    let first = manager.open_engine(&engine_cfg, &job.table, 0).await?;
    let threads = match &job.ops {
        Some(ops) => ops.max_threads(),
        None => job.threads.max(1),
    };
    let shared = Arc::new(Shared {
        job,
        chunker: Mutex::new(chunker),
        slot: Mutex::new(EngineSlot {
            current: Some(CurrentEngine::new(first, 0)),
            id: 0,
            rows_assigned: 0,
        }),
        manager,
        engine_cfg,
        progress,
        closers: Mutex::new(JoinSet::new()),
        chunks: AtomicU64::new(0),
        engines: AtomicU64::new(1),
        finished: AtomicBool::new(false),
    });

    let mut workers = JoinSet::new();
    for index in 0..threads {
        let shared = shared.clone();
        let pool = source.clone();
        workers.spawn(async move { worker(shared, pool, index).await });
    }
    let mut first_error: Option<CopyError> = None;
    while let Some(joined) = workers.join_next().await {
        let result = joined
            .map_err(|e| CopyError::Worker(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = result {
            if first_error.is_none() {
                // Stop the others: their chunks are not needed any more.
                workers.abort_all();
                first_error = Some(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    // Close and import the last engine, then wait for every import.
    let last = shared.slot.lock().await.current.take();
    if let Some(last) = last {
        spawn_closer(&shared, last).await;
    }
    let mut imported = ImportStats::default();
    let mut closers = std::mem::take(&mut *shared.closers.lock().await);
    while let Some(joined) = closers.join_next().await {
        let stats = joined.map_err(|e| CopyError::Worker(e.to_string()))??;
        imported.rows += stats.rows;
        imported.bytes += stats.bytes;
        imported.ranges += stats.ranges;
    }

    Ok(CopyStats {
        rows: shared.progress.rows_copied(),
        chunks: shared.chunks.load(Ordering::Relaxed),
        engines: shared.engines.load(Ordering::Relaxed),
        imported,
        elapsed: started.elapsed(),
    })
}

/// Waits until no writer holds `engine`, then closes, imports and cleans it up.
async fn spawn_closer(shared: &Arc<Shared>, current: CurrentEngine) {
    let online = shared.job.online.clone();
    let closed_engines = shared.job.closed_engines.clone();
    let mut closers = shared.closers.lock().await;
    closers.spawn(async move {
        let CurrentEngine {
            mut engine,
            id,
            dispatched,
            written,
            lower,
            upper,
        } = current;
        let opened = loop {
            match Arc::try_unwrap(engine) {
                Ok(e) => break e,
                Err(still_shared) => {
                    engine = still_shared;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let uuid = opened.uuid();
        let closed = opened.close().await?;
        // Only chunks whose rows were written count: a writer that failed
        // left its chunk out, and it must be copied again.
        let written: Vec<u64> = written.lock().map(|w| w.clone()).unwrap_or_default();
        let complete = written.len() == dispatched.len();
        if complete && !dispatched.is_empty() {
            if let Some(tx) = &closed_engines {
                let _ = tx.send(ClosedEngineRecord {
                    engine_id: id,
                    uuid,
                    lower,
                    upper,
                });
            }
        }
        let stats = closed.import(96 << 20, 1 << 20).await?;
        tracing::info!(engine = %uuid, rows = stats.rows, ranges = stats.ranges, "engine imported");
        closed.cleanup().await?;
        if let Some(online) = online {
            if let Ok(mut marks) = online.marks() {
                for id in written {
                    marks.durable(id);
                }
            }
        }
        Ok(stats)
    });
}

async fn worker(shared: Arc<Shared>, pool: Pool, index: usize) -> Result<(), CopyError> {
    wait_turn(&shared, index).await;
    if shared.finished.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut conn = read_conn(&pool).await?;
    let keysql_key = shared.job.layout.chunk_key.clone();
    let keysql = KeySql { key: &keysql_key };
    let select = format!(
        "SELECT {} FROM {}.{} WHERE ",
        shared.job.layout.select.join(", "),
        quote_ident(&shared.job.source_schema),
        quote_ident(&shared.job.table)
    );
    let order = format!(" ORDER BY {}", keysql.order_by());
    let target = &shared.job.layout.target;
    let insert_select = format!(
        "INSERT INTO {} ({}) SELECT {} FROM {}.{} WHERE ",
        target.quoted_name(),
        shared
            .job
            .layout
            .target_columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        shared.job.layout.server_select.join(", "),
        quote_ident(&shared.job.source_schema),
        quote_ident(&shared.job.table)
    );
    if shared.job.server_side {
        // READ COMMITTED: the SELECT half is then a consistent read that takes no
        // locks on the source (with ROW binlogging, which preflight requires).
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .context(|| "setting up a copy session".into())?;
    }
    loop {
        wait_turn(&shared, index).await;
        let chunk = {
            let mut chunker = shared.chunker.lock().await;
            if let Some(ops) = &shared.job.ops {
                ops.tune(&mut chunker);
            }
            match chunker.next(&mut conn).await? {
                Some(c) => {
                    if let Some(online) = &shared.job.online {
                        if let Ok(mut marks) = online.marks() {
                            marks.dispatched(c.id, encoded(c.upper.as_ref()));
                        }
                    }
                    // Under the chunker's lock, so engines get chunks in order.
                    let engine = if shared.job.server_side {
                        None
                    } else {
                        Some(engine_for(&shared, &c).await?)
                    };
                    (c, engine)
                }
                None => {
                    shared.finished.store(true, Ordering::Relaxed);
                    return Ok(());
                }
            }
        };
        let (chunk, engine) = chunk;
        let started = Instant::now();
        if shared.job.server_side {
            let sql = format!("{insert_select}{}", keysql.range(&chunk));
            match wraith_backend::query_retrying_lock_conflicts(&mut conn, &sql)
                .await
                .map_err(|e| server_side_error(&shared, e))
            {
                Ok(()) => {}
                // A row that moved while the copy read: the statement was
                // rolled back; copy the chunk again skipping such clashes.
                Err(CopyError::Backend(BackendError::DuplicateDetected { index, .. }))
                    if shared.job.layout.target.is_transient_duplicate(&index) =>
                {
                    tracing::debug!(chunk = chunk.id, %index, "a chunk met a moved row; copied again skipping the clash");
                    let again =
                        format!("{sql}{}", shared.job.layout.target.skip_duplicates_clause());
                    wraith_backend::query_retrying_lock_conflicts(&mut conn, &again)
                        .await
                        .map_err(|e| server_side_error(&shared, e))?;
                }
                Err(e) => return Err(e),
            }
            let n = conn.affected_rows();
            mark_durable(&shared, chunk.id);
            shared.progress.add_rows(n);
            shared.chunks.fetch_add(1, Ordering::Relaxed);
            shared
                .chunker
                .lock()
                .await
                .feedback(n, started.elapsed(), int_span(&chunk));
            log_chunk(&shared, index, &chunk, n, started.elapsed());
            continue;
        }
        let rows = read_chunk(
            &mut conn,
            &shared,
            &format!("{select}{}{order}", keysql.range(&chunk)),
        )
        .await?;
        let n = rows.len() as u64;
        let (engine, written) =
            engine.ok_or_else(|| CopyError::Worker("a chunk without an engine".into()))?;
        if n > 0 {
            let mut writer = engine
                .local_writer(&LocalWriterConfig {
                    is_kv_sorted: false,
                    table_name: shared.job.layout.target.table.clone(),
                })
                .await?;
            writer
                .append_rows(&shared.job.layout.target_columns, rows)
                .await?;
            let _status = writer.close().await?;
            shared.slot.lock().await.rows_assigned += n;
        }
        drop(engine);
        if let Ok(mut w) = written.lock() {
            w.push(chunk.id);
        }
        shared.progress.add_rows(n);
        shared.chunks.fetch_add(1, Ordering::Relaxed);
        shared
            .chunker
            .lock()
            .await
            .feedback(n, started.elapsed(), int_span(&chunk));
        log_chunk(&shared, index, &chunk, n, started.elapsed());
    }
}

/// Waits while the copy is throttled or `index` is beyond the live thread count.
async fn wait_turn(shared: &Shared, index: usize) {
    if let Some(ops) = &shared.job.ops {
        ops.wait_turn(index, &shared.finished).await;
    }
}

/// A failed `INSERT ... SELECT`: a duplicate becomes the backend's
/// `DuplicateDetected`, naming the key and index as the server did.
fn server_side_error(shared: &Shared, e: mysql_async::Error) -> CopyError {
    if let mysql_async::Error::Server(se) = &e {
        if se.code == 1062 {
            let (key, index) = wraith_backend::parse_duplicate_message(&se.message)
                .unwrap_or_else(|| (se.message.clone(), String::new()));
            return CopyError::Backend(BackendError::DuplicateDetected {
                table: shared.job.layout.target.display_name(),
                key,
                index,
            });
        }
    }
    CopyError::Db(DbError {
        context: format!("copying a chunk of {}", shared.job.table),
        error: e,
    })
}

fn log_chunk(shared: &Shared, index: usize, chunk: &Chunk, rows: u64, elapsed: Duration) {
    if let Some(ops) = &shared.job.ops {
        ops.chunk_done(index, rows);
    }
    tracing::debug!(
        chunk = chunk.id,
        rows,
        ms = elapsed.as_millis() as u64,
        "chunk copied"
    );
}

fn mark_durable(shared: &Shared, chunk_id: u64) {
    if let Some(online) = &shared.job.online {
        if let Ok(mut marks) = online.marks() {
            marks.durable(chunk_id);
        }
    }
}

/// The engine `chunk` goes to, and the list its written chunks go on;
/// rotates a full engine out first.
async fn engine_for(
    shared: &Arc<Shared>,
    chunk: &Chunk,
) -> Result<(Arc<OpenedEngine>, Arc<std::sync::Mutex<Vec<u64>>>), CopyError> {
    let mut slot = shared.slot.lock().await;
    if slot.rows_assigned >= shared.job.engine_rows {
        let next_id = slot.id + 1;
        let fresh = shared
            .manager
            .open_engine(&shared.engine_cfg, &shared.job.table, next_id)
            .await?;
        let full = slot.current.replace(CurrentEngine::new(fresh, next_id));
        slot.id = next_id;
        slot.rows_assigned = 0;
        shared.engines.fetch_add(1, Ordering::Relaxed);
        if let Some(full) = full {
            spawn_closer(shared, full).await;
        }
    }
    let current = slot
        .current
        .as_mut()
        .ok_or_else(|| CopyError::Worker("the copy is already finished".into()))?;
    if current.dispatched.is_empty() {
        current.lower = encoded(chunk.lower.as_ref());
    }
    current.upper = encoded(chunk.upper.as_ref());
    current.dispatched.push(chunk.id);
    Ok((current.engine.clone(), current.written.clone()))
}

async fn read_chunk(conn: &mut Conn, shared: &Shared, sql: &str) -> Result<Vec<Row>, CopyError> {
    let specs = &shared.job.layout.read_specs;
    let raw: Vec<mysql_async::Row> = conn
        .query(sql)
        .await
        .context(|| format!("reading a chunk of {}", shared.job.table))?;
    let mut rows = Vec::with_capacity(raw.len());
    for r in raw {
        let values = r.unwrap();
        let row: Row = values
            .into_iter()
            .zip(specs)
            .map(|(v, spec)| Value::from_text(v, spec))
            .collect::<Result<_, _>>()
            .map_err(|source| CopyError::Value {
                table: shared.job.table.clone(),
                source,
            })?;
        rows.push(row);
    }
    Ok(rows)
}
