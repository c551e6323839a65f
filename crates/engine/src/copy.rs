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
//! and cleaned up in the background once its last writer is done (each
//! dispatched chunk holds a claim on its engine, and closing waits for the
//! claims: `wraith_backend::EngineClaim`), so the
//! import of engine N overlaps the copy into engine N+1 (as Lightning does).
//! With the `sql` backend import is a no-op and one engine suffices.
//!
//! Operating (`CopyJob::ops`): before each chunk a worker waits its turn
//! ([`crate::control::Operations::wait_turn`]) while the copy is throttled or
//! while its index is beyond the live `threads=N`, then for a share of the
//! job's thread budget ([`crate::control::Operations::copy_slot`]: tables
//! copied together never run more than `threads` chunks at once), and the
//! chunker is handed the operator's chunk size or target.
//!
//! Reads use the same session settings as the writers
//! (`wraith_backend::write::SESSION_SETUP`: binary strings, UTC time zone), so
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
use wraith_backend::write::{prepare_session_with, SessionOptions};
use wraith_backend::{
    Backend, BackendError, EngineClaim, EngineConfig, EngineManager, ImportStats,
    LocalEngineConfig, LocalWriterConfig, OpenedEngine, Row, Value, ValueError,
};

use crate::chunker::{int_span, Chunk, Chunker, KeySql};
use crate::control::Operations;
use crate::online::OnlineState;
use crate::progress::TableHandle;
use crate::server::{quote_ident, Context, DbError};
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
            CopyError::Db(e) => wraith_backend::refuses_value(&e.error),
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
    session_conn(pool, SessionOptions::default()).await
}

/// A connection with the exact-value session and `options`.
async fn session_conn(pool: &Pool, options: SessionOptions) -> Result<Conn, DbError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting to the source".into())?;
    prepare_session_with(&mut conn, options)
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
    engine: OpenedEngine,
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
            engine,
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
    let mut closers = std::mem::take(&mut *shared.closers.lock().await);
    while let Some(joined) = closers.join_next().await {
        joined.map_err(|e| CopyError::Worker(e.to_string()))??;
    }

    Ok(CopyStats {
        rows: shared.progress.rows_copied(),
        chunks: shared.chunks.load(Ordering::Relaxed),
        engines: shared.engines.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Closes `engine` once no chunk dispatched to it is still being written
/// (its claims are gone), then imports and cleans it up.
async fn spawn_closer(shared: &Arc<Shared>, current: CurrentEngine) {
    let online = shared.job.online.clone();
    let closed_engines = shared.job.closed_engines.clone();
    let mut closers = shared.closers.lock().await;
    closers.spawn(async move {
        let CurrentEngine {
            engine: opened,
            id,
            dispatched,
            written,
            lower,
            upper,
        } = current;
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

/// The statements a worker sends, built once.
struct Statements {
    /// `SELECT cols FROM source WHERE ` (a chunk's range and the order follow).
    select: String,
    /// ` ORDER BY key`.
    order: String,
    /// `INSERT INTO shadow (cols) SELECT exprs FROM source WHERE ` (server side).
    insert_select: String,
}

impl Statements {
    fn new(job: &CopyJob) -> Statements {
        let source = format!(
            "{}.{}",
            quote_ident(&job.source_schema),
            quote_ident(&job.table)
        );
        let columns: Vec<String> = job
            .layout
            .target_columns
            .iter()
            .map(|c| quote_ident(c))
            .collect();
        Statements {
            select: format!(
                "SELECT {} FROM {source} WHERE ",
                job.layout.select.join(", ")
            ),
            order: format!(
                " ORDER BY {}",
                KeySql {
                    key: &job.layout.chunk_key
                }
                .order_by()
            ),
            insert_select: format!(
                "INSERT INTO {} ({}) SELECT {} FROM {source} WHERE ",
                job.layout.target.quoted_name(),
                columns.join(", "),
                job.layout.server_select.join(", "),
            ),
        }
    }
}

async fn worker(shared: Arc<Shared>, pool: Pool, index: usize) -> Result<(), CopyError> {
    wait_turn(&shared, index).await;
    if shared.finished.load(Ordering::Relaxed) {
        return Ok(());
    }
    // READ COMMITTED on the server side: the SELECT half is then a
    // consistent read that takes no locks on the source (with ROW
    // binlogging, which preflight requires).
    let options = SessionOptions {
        read_committed: shared.job.server_side,
        ..SessionOptions::default()
    };
    let mut conn = session_conn(&pool, options).await?;
    let statements = Statements::new(&shared.job);
    let keysql = KeySql {
        key: &shared.job.layout.chunk_key,
    };
    loop {
        wait_turn(&shared, index).await;
        // Tables copied together share the job's thread budget, chunk by chunk.
        let _slot = match &shared.job.ops {
            Some(ops) => Some(ops.copy_slot().await),
            None => None,
        };
        let Some((chunk, engine)) = next_chunk(&shared, &mut conn).await? else {
            return Ok(());
        };
        let started = Instant::now();
        let range = keysql.range(&chunk);
        let n = match engine {
            None => {
                let sql = format!("{}{range}", statements.insert_select);
                copy_server_side(&shared, &mut conn, &chunk, &sql).await?
            }
            Some((claim, written)) => {
                let sql = format!("{}{range}{}", statements.select, statements.order);
                let rows = read_chunk(&mut conn, &shared, &sql).await?;
                let n = write_through_engine(&shared, claim, rows).await?;
                if let Ok(mut w) = written.lock() {
                    w.push(chunk.id);
                }
                n
            }
        };
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

/// The next chunk and, unless the copy is server side, the engine it goes
/// to; `None` when the chunker is exhausted.
async fn next_chunk(
    shared: &Arc<Shared>,
    conn: &mut Conn,
) -> Result<Option<(Chunk, Option<EngineTicket>)>, CopyError> {
    let mut chunker = shared.chunker.lock().await;
    if let Some(ops) = &shared.job.ops {
        ops.tune(&mut chunker);
    }
    let Some(c) = chunker.next(conn).await? else {
        shared.finished.store(true, Ordering::Relaxed);
        return Ok(None);
    };
    if let Some(online) = &shared.job.online {
        if let Ok(mut marks) = online.marks() {
            marks.dispatched(c.id, encoded(c.upper.as_ref()));
        }
    }
    // Under the chunker's lock, so engines get chunks in order.
    let engine = if shared.job.server_side {
        None
    } else {
        Some(engine_for(shared, &c).await?)
    };
    Ok(Some((c, engine)))
}

/// Copies a chunk with one `INSERT … SELECT` on the server; returns its rows.
async fn copy_server_side(
    shared: &Shared,
    conn: &mut Conn,
    chunk: &Chunk,
    sql: &str,
) -> Result<u64, CopyError> {
    let target = &shared.job.layout.target;
    // A lock conflict is sent again; a row that moved while the copy read
    // it is skipped (the change stream delivers its final state).
    match wraith_backend::write::send_insert(conn, sql, target, "copying a chunk").await {
        Ok(()) => {}
        Err(BackendError::Sql { source, .. }) => {
            return Err(CopyError::Db(DbError {
                context: format!("copying a chunk of {}", shared.job.table),
                error: source,
            }))
        }
        Err(e) => return Err(CopyError::Backend(e)),
    }
    mark_durable(shared, chunk.id);
    Ok(conn.affected_rows())
}

/// Appends a chunk's rows through a writer of its engine; returns its rows.
async fn write_through_engine(
    shared: &Shared,
    claim: EngineClaim,
    rows: Vec<Row>,
) -> Result<u64, CopyError> {
    let n = rows.len() as u64;
    if n > 0 {
        let mut writer = claim
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
    Ok(n)
}

/// Waits while the copy is throttled or `index` is beyond the live thread count.
async fn wait_turn(shared: &Shared, index: usize) {
    if let Some(ops) = &shared.job.ops {
        ops.wait_turn(index, &shared.finished).await;
    }
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

/// A chunk's claim on its engine (closing waits for it) and the list the
/// chunk goes on once written.
type EngineTicket = (EngineClaim, Arc<std::sync::Mutex<Vec<u64>>>);

/// The engine `chunk` goes to, and the list its written chunks go on;
/// rotates a full engine out first.
async fn engine_for(shared: &Arc<Shared>, chunk: &Chunk) -> Result<EngineTicket, CopyError> {
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
    Ok((current.engine.claim(), current.written.clone()))
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
