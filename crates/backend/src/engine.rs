//! The backend contract and the typed engine lifecycle (`EngineManager`,
//! `OpenedEngine`, `ClosedEngine`), after TiDB Lightning's `backend` package.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::BackendError;
use crate::value::{ColumnSpec, Row};

/// One target (shadow) table that an engine writes into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetTable {
    /// Schema (database) of the target.
    pub schema: String,
    /// Table name of the target, e.g. `_t_new`.
    pub table: String,
    /// The target's columns. Each spec describes the *values written* into
    /// that column (the kind and charset the reader produces, usually the
    /// source column's); the server converts them into the target column's
    /// own type as its ALTER would.
    pub columns: Vec<ColumnSpec>,
    /// Positions in `columns` of the target's PRIMARY KEY (or NOT NULL unique
    /// key), in key order. The local backend sorts and detects duplicates by
    /// these.
    pub key_columns: Vec<usize>,
    /// Unique secondary indexes on which a duplicate during an online copy is
    /// transient, not an error: the source has the same unique index, so the
    /// clash is a row that moved while the copy read (the change stream
    /// delivers its final state, and the checksum verifies). Rows that clash
    /// on them are skipped, and counted. Duplicates on the key, or on any
    /// other unique index, stay errors.
    #[serde(default)]
    pub transient_unique_indexes: Vec<String>,
}

impl TargetTable {
    /// Whether a duplicate named by the server on `index` is transient here.
    pub fn is_transient_duplicate(&self, index: &str) -> bool {
        self.transient_unique_indexes
            .iter()
            .any(|i| i.eq_ignore_ascii_case(index))
    }

    /// The clause that makes an INSERT skip a row clashing on a unique key
    /// (a no-op update of the row already there), strict mode intact.
    pub fn skip_duplicates_clause(&self) -> String {
        let key = self
            .key_columns
            .first()
            .and_then(|&i| self.columns.get(i))
            .map(|c| format!("{}.{}", self.quoted_name(), quote_ident(&c.name)))
            .unwrap_or_default();
        format!(" ON DUPLICATE KEY UPDATE {key} = {key}")
    }

    /// `` `schema`.`table` `` quoted for SQL.
    pub fn quoted_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// `schema.table` for messages.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Position of a column by name (exact match).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key's column names, for messages: `(a, b)`.
    pub fn key_description(&self) -> String {
        let names: Vec<&str> = self
            .key_columns
            .iter()
            .filter_map(|&i| self.columns.get(i).map(|c| c.name.as_str()))
            .collect();
        format!("key ({})", names.join(", "))
    }

    /// Maps a writer's column names to positions in `columns`, checking that
    /// each exists once.
    pub(crate) fn resolve_columns(&self, names: &[String]) -> Result<Vec<usize>, BackendError> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let i = self
                .column_index(n)
                .ok_or_else(|| BackendError::InvalidInput {
                    message: format!(
                        "column `{n}` is not a column of the target {}; pass target column names",
                        self.display_name()
                    ),
                })?;
            if out.contains(&i) {
                return Err(BackendError::InvalidInput {
                    message: format!("column `{n}` is given twice for {}", self.display_name()),
                });
            }
            out.push(i);
        }
        Ok(out)
    }
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Options of the local backend that belong to one engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEngineConfig {
    /// Compact the engine's RocksDB when it is closed (faster import scans).
    pub compact: bool,
    /// Compact only when the engine holds at least this many bytes.
    pub compact_threshold: u64,
    /// Parallelism of that compaction.
    pub compact_concurrency: usize,
    /// Keep the engine's directory after cleanup (for debugging).
    pub keep_sort_dir: bool,
}

impl Default for LocalEngineConfig {
    fn default() -> Self {
        LocalEngineConfig {
            compact: false,
            compact_threshold: 1 << 30,
            compact_concurrency: 2,
            keep_sort_dir: false,
        }
    }
}

/// Everything a backend needs to know to open (or close) an engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// The table the engine is imported into.
    pub target: TargetTable,
    /// Local-backend options (ignored by the sql backend).
    pub local: LocalEngineConfig,
}

/// How a writer will be fed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalWriterConfig {
    /// The rows come sorted by the target key (the local backend then builds
    /// SST files and ingests them instead of using write batches).
    pub is_kv_sorted: bool,
    /// The source table's name, for logs.
    pub table_name: String,
}

/// What a closed writer has made durable. See [`ChunkFlushStatus::flushed`].
#[derive(Clone, Debug)]
pub struct ChunkFlushStatus {
    seq: u64,
    flushed_seq: Arc<AtomicU64>,
}

impl ChunkFlushStatus {
    /// A status that is already flushed.
    pub fn done() -> ChunkFlushStatus {
        ChunkFlushStatus {
            seq: 0,
            flushed_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A status that becomes flushed once `flushed_seq` reaches `seq`.
    pub(crate) fn pending(seq: u64, flushed_seq: Arc<AtomicU64>) -> ChunkFlushStatus {
        ChunkFlushStatus { seq, flushed_seq }
    }

    /// Whether everything the writer wrote now survives kill -9. When false,
    /// call [`OpenedEngine::flush`] (or [`Backend::flush_engine`]) and ask
    /// again: a chunk may be checkpointed as done only once this is true.
    pub fn flushed(&self) -> bool {
        self.flushed_seq.load(Ordering::Acquire) >= self.seq
    }
}

/// What an import loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Rows loaded into the target.
    pub rows: u64,
    /// Bytes sent to the server.
    pub bytes: u64,
    /// Key ranges loaded.
    pub ranges: usize,
}

/// A way of getting rows into a target table: TiDB Lightning's backend.
///
/// # Workflow
///
/// 1. [`open_engine`](Backend::open_engine): an engine is a batch of chunks
///    written together, named by a UUID ([`engine_uuid`] of table and engine
///    id, so a rerun finds the same engine). Reopening an engine that exists
///    (a resumed run) keeps what it holds.
/// 2. [`local_writer`](Backend::local_writer): any number of writers, on any
///    tasks, each fed by one reader with
///    [`EngineWriter::append_rows`]; [`EngineWriter::close`] gives a
///    [`ChunkFlushStatus`]. Through [`OpenedEngine`], writers (and the
///    [`EngineClaim`]s handed to tasks before they write) are tied to their
///    engine: [`OpenedEngine::close`] waits until every one is gone.
/// 3. [`flush_engine`](Backend::flush_engine): after it returns `Ok`, every
///    row of every writer closed before the call survives kill -9 (and a
///    machine crash: the write-ahead log is fsynced), and so does every row
///    an unsorted writer's `append_rows` returned for; a sorted writer keeps
///    up to its sort buffer in memory until it is closed
///    ([`EngineWriter::is_synced`] says whether it holds any). The
///    [`ChunkFlushStatus`]es of writers closed before the call become
///    `flushed()`. Only then may the caller checkpoint those chunks as done.
/// 4. [`close_engine`](Backend::close_engine): no more writers; the engine is
///    made durable and ready for import. A resumed run may close an engine
///    that only exists on disk (Lightning's `UnsafeCloseEngine`).
/// 5. [`import_engine`](Backend::import_engine): loads what the engine holds
///    into the target table (a no-op where writes went straight in).
/// 6. [`cleanup_engine`](Backend::cleanup_engine): frees the engine's
///    resources (a no-op where there are none).
///
/// [`EngineManager`], [`OpenedEngine`] and [`ClosedEngine`] enforce this
/// order in types; use them rather than the raw methods.
///
/// Every SQL write into a target, by a backend or by the engine crate's own
/// writers (server-side copy, change applier, import regions), goes through
/// [`crate::write`]: one session setup, one statement builder under a byte
/// cap, one reading of duplicates and lock conflicts by error code.
///
/// # Guarantees
///
/// - **Shared:** a backend is `Send + Sync`; one `Arc<dyn Backend>` serves
///   every task, and different engines proceed independently.
/// - **Exact:** every [`crate::Value`] lands in the target as the value the
///   server would store for its literal; nothing is truncated or converted
///   silently (strict SQL mode; bulk-load warnings are failures).
/// - **Duplicates:** a duplicate is two *different* rows with the same target
///   key (primary key or any unique key of the target). It is never skipped
///   or overwritten: the operation fails with
///   [`BackendError::DuplicateDetected`] naming the key and the index. The
///   same row written twice under the same key (a chunk redone after a
///   resume) is not a duplicate for the local backend; the sql backend
///   inserts, so a row already in the target is reported as a duplicate and
///   the caller must not redo chunks whose rows are already in the table.
/// - **Durability:** see `flush_engine` above; a backend that writes straight
///   into the target is durable on each `append_rows` return.
/// - **Cancel safety:** dropping a future of this trait leaves the engine
///   usable; rows of the interrupted call may or may not be in it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Short name: `sql`, `local`.
    fn name(&self) -> &'static str;

    /// Opens (creates, or reopens with its data) the engine.
    async fn open_engine(&self, cfg: &EngineConfig, engine_uuid: Uuid) -> Result<(), BackendError>;

    /// Closes the engine for writing and makes it durable. Works on an engine
    /// this process never opened if the backend can find it (resume).
    async fn close_engine(&self, cfg: &EngineConfig, engine_uuid: Uuid)
        -> Result<(), BackendError>;

    /// Loads a closed engine into the target table. The hints say how large a
    /// key range loaded as one unit may be (bytes, keys).
    async fn import_engine(
        &self,
        engine_uuid: Uuid,
        region_split_size: u64,
        region_split_keys: u64,
    ) -> Result<ImportStats, BackendError>;

    /// Frees the engine (removes its files).
    async fn cleanup_engine(&self, engine_uuid: Uuid) -> Result<(), BackendError>;

    /// Makes every row appended so far to the engine survive kill -9.
    async fn flush_engine(&self, engine_uuid: Uuid) -> Result<(), BackendError>;

    /// [`flush_engine`](Backend::flush_engine) for every open engine.
    async fn flush_all_engines(&self) -> Result<(), BackendError>;

    /// Drops everything written to the engine (redo it from scratch); the
    /// engine stays open.
    async fn reset_engine(&self, engine_uuid: Uuid) -> Result<(), BackendError>;

    /// A new writer into an open engine.
    async fn local_writer(
        &self,
        cfg: &LocalWriterConfig,
        engine_uuid: Uuid,
    ) -> Result<Box<dyn EngineWriter>, BackendError>;

    /// Flushes and releases everything; the backend is not used afterwards.
    async fn close(&self);
}

/// Writes rows into one engine. One writer per reader; not shared.
#[async_trait]
pub trait EngineWriter: Send {
    /// Appends rows. `columns` are target column names in the order the row
    /// values come: a subset or permutation of [`TargetTable::columns`];
    /// columns not given take their default. The local backend requires the
    /// same set of columns for every write to one engine, including all key
    /// columns. When this returns `Ok`, the rows are in the engine (durable
    /// per [`EngineWriter::is_synced`]).
    async fn append_rows(&mut self, columns: &[String], rows: Vec<Row>)
        -> Result<(), BackendError>;

    /// Whether everything appended so far already survives kill -9.
    fn is_synced(&self) -> bool;

    /// Finishes the writer.
    async fn close(self: Box<Self>) -> Result<ChunkFlushStatus, BackendError>;
}

/// The fixed namespace of engine UUIDs (UUID v5 of "wraith-engine" in the URL
/// namespace), so they are stable across runs and versions.
fn engine_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://wraith/engine")
}

/// UUID v5 of (table, engine id): a rerun gets the same engine.
pub fn engine_uuid(table_name: &str, engine_id: i32) -> Uuid {
    let name = format!("{table_name}:{engine_id}");
    Uuid::new_v5(&engine_namespace(), name.as_bytes())
}

/// Hands out engines with their lifecycle in types.
#[derive(Clone)]
pub struct EngineManager {
    backend: Arc<dyn Backend>,
}

impl EngineManager {
    /// A manager over one backend.
    pub fn new(backend: Arc<dyn Backend>) -> EngineManager {
        EngineManager { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Opens engine `engine_id` of `table_name` (reopening keeps its data).
    pub async fn open_engine(
        &self,
        cfg: &EngineConfig,
        table_name: &str,
        engine_id: i32,
    ) -> Result<OpenedEngine, BackendError> {
        let uuid = engine_uuid(table_name, engine_id);
        tracing::debug!(backend = self.backend.name(), table_name, engine_id, %uuid, "open engine");
        self.backend.open_engine(cfg, uuid).await?;
        let (tie, released) = mpsc::channel(1);
        Ok(OpenedEngine {
            backend: self.backend.clone(),
            cfg: cfg.clone(),
            uuid,
            tag: format!("{table_name}:{engine_id}"),
            tie,
            released,
        })
    }

    /// Resume path: closes engine `engine_id` of `table_name` without having
    /// opened it in this process.
    pub async fn unsafe_close_engine(
        &self,
        cfg: &EngineConfig,
        table_name: &str,
        engine_id: i32,
    ) -> Result<ClosedEngine, BackendError> {
        let tag = format!("{table_name}:{engine_id}");
        self.unsafe_close_engine_with_uuid(cfg, &tag, engine_uuid(table_name, engine_id))
            .await
    }

    /// Resume path by UUID; `tag` names the engine in logs.
    pub async fn unsafe_close_engine_with_uuid(
        &self,
        cfg: &EngineConfig,
        tag: &str,
        engine_uuid: Uuid,
    ) -> Result<ClosedEngine, BackendError> {
        tracing::debug!(backend = self.backend.name(), tag, %engine_uuid, "unsafe close engine");
        self.backend.close_engine(cfg, engine_uuid).await?;
        Ok(ClosedEngine {
            backend: self.backend.clone(),
            uuid: engine_uuid,
            tag: tag.to_string(),
        })
    }
}

/// An engine open for writing.
pub struct OpenedEngine {
    backend: Arc<dyn Backend>,
    cfg: EngineConfig,
    uuid: Uuid,
    tag: String,
    /// Cloned into every claim and writer; nothing is ever sent. When the
    /// last clone is dropped, `released` yields `None`: close may go on.
    tie: mpsc::Sender<()>,
    released: mpsc::Receiver<()>,
}

impl OpenedEngine {
    /// The engine's UUID.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// `table:engine_id`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A new writer, tied to the engine: [`close`](Self::close) waits for it.
    pub async fn local_writer(
        &self,
        cfg: &LocalWriterConfig,
    ) -> Result<Box<dyn EngineWriter>, BackendError> {
        self.claim().local_writer(cfg).await
    }

    /// A claim on the engine for a task that will write to it later (a
    /// chunk dispatched to the engine before it is read): the engine is not
    /// closed while a claim, or a writer made from it, is alive.
    pub fn claim(&self) -> EngineClaim {
        EngineClaim {
            backend: self.backend.clone(),
            uuid: self.uuid,
            tie: self.tie.clone(),
        }
    }

    /// Makes everything written so far survive kill -9.
    pub async fn flush(&self) -> Result<(), BackendError> {
        self.backend.flush_engine(self.uuid).await
    }

    /// Drops everything written so far.
    pub async fn reset(&self) -> Result<(), BackendError> {
        self.backend.reset_engine(self.uuid).await
    }

    /// Closes for writing, once every claim and writer of the engine is gone
    /// (closed, dropped, or its task ended).
    pub async fn close(self) -> Result<ClosedEngine, BackendError> {
        let OpenedEngine {
            backend,
            cfg,
            uuid,
            tag,
            tie,
            mut released,
        } = self;
        drop(tie);
        // `None` once the last claim or writer is dropped (nothing is sent).
        let _ = released.recv().await;
        backend.close_engine(&cfg, uuid).await?;
        Ok(ClosedEngine { backend, uuid, tag })
    }
}

/// A task's hold on an [`OpenedEngine`] (see [`OpenedEngine::claim`]).
pub struct EngineClaim {
    backend: Arc<dyn Backend>,
    uuid: Uuid,
    tie: mpsc::Sender<()>,
}

impl EngineClaim {
    /// A new writer into the claimed engine, tied to it like the claim.
    pub async fn local_writer(
        &self,
        cfg: &LocalWriterConfig,
    ) -> Result<Box<dyn EngineWriter>, BackendError> {
        let inner = self.backend.local_writer(cfg, self.uuid).await?;
        Ok(Box::new(TiedWriter {
            inner,
            _tie: self.tie.clone(),
        }))
    }
}

/// A writer that keeps its engine open until it is closed or dropped.
struct TiedWriter {
    inner: Box<dyn EngineWriter>,
    _tie: mpsc::Sender<()>,
}

#[async_trait]
impl EngineWriter for TiedWriter {
    async fn append_rows(
        &mut self,
        columns: &[String],
        rows: Vec<Row>,
    ) -> Result<(), BackendError> {
        self.inner.append_rows(columns, rows).await
    }

    fn is_synced(&self) -> bool {
        self.inner.is_synced()
    }

    async fn close(self: Box<Self>) -> Result<ChunkFlushStatus, BackendError> {
        self.inner.close().await
    }
}

/// An engine closed for writing, ready to import.
pub struct ClosedEngine {
    backend: Arc<dyn Backend>,
    uuid: Uuid,
    tag: String,
}

impl ClosedEngine {
    /// The engine's UUID.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// `table:engine_id` (or the tag given on resume).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Loads the engine into the target table.
    pub async fn import(
        &self,
        region_split_size: u64,
        region_split_keys: u64,
    ) -> Result<ImportStats, BackendError> {
        tracing::debug!(backend = self.backend.name(), tag = %self.tag, uuid = %self.uuid, "import engine");
        self.backend
            .import_engine(self.uuid, region_split_size, region_split_keys)
            .await
    }

    /// Frees the engine.
    pub async fn cleanup(self) -> Result<(), BackendError> {
        self.backend.cleanup_engine(self.uuid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_uuids_are_stable_and_distinct() {
        let a = engine_uuid("db.t", 1);
        assert_eq!(a, engine_uuid("db.t", 1));
        assert_ne!(a, engine_uuid("db.t", 2));
        assert_ne!(a, engine_uuid("db.u", 1));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn flush_status_follows_sequence() {
        let seq = Arc::new(AtomicU64::new(3));
        let s = ChunkFlushStatus::pending(5, seq.clone());
        assert!(!s.flushed());
        seq.store(5, Ordering::Release);
        assert!(s.flushed());
        assert!(ChunkFlushStatus::done().flushed());
    }

    /// A backend that keeps nothing: enough to drive the lifecycle types.
    struct Nothing;

    struct NothingWriter;

    #[async_trait]
    impl EngineWriter for NothingWriter {
        async fn append_rows(&mut self, _: &[String], _: Vec<Row>) -> Result<(), BackendError> {
            Ok(())
        }

        fn is_synced(&self) -> bool {
            true
        }

        async fn close(self: Box<Self>) -> Result<ChunkFlushStatus, BackendError> {
            Ok(ChunkFlushStatus::done())
        }
    }

    #[async_trait]
    impl Backend for Nothing {
        fn name(&self) -> &'static str {
            "nothing"
        }
        async fn open_engine(&self, _: &EngineConfig, _: Uuid) -> Result<(), BackendError> {
            Ok(())
        }
        async fn close_engine(&self, _: &EngineConfig, _: Uuid) -> Result<(), BackendError> {
            Ok(())
        }
        async fn import_engine(
            &self,
            _: Uuid,
            _: u64,
            _: u64,
        ) -> Result<ImportStats, BackendError> {
            Ok(ImportStats::default())
        }
        async fn cleanup_engine(&self, _: Uuid) -> Result<(), BackendError> {
            Ok(())
        }
        async fn flush_engine(&self, _: Uuid) -> Result<(), BackendError> {
            Ok(())
        }
        async fn flush_all_engines(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn reset_engine(&self, _: Uuid) -> Result<(), BackendError> {
            Ok(())
        }
        async fn local_writer(
            &self,
            _: &LocalWriterConfig,
            _: Uuid,
        ) -> Result<Box<dyn EngineWriter>, BackendError> {
            Ok(Box::new(NothingWriter))
        }
        async fn close(&self) {}
    }

    #[tokio::test]
    async fn close_waits_for_claims_and_writers() {
        let manager = EngineManager::new(Arc::new(Nothing));
        let cfg = EngineConfig {
            target: TargetTable {
                schema: "d".into(),
                table: "t".into(),
                columns: Vec::new(),
                key_columns: Vec::new(),
                transient_unique_indexes: Vec::new(),
            },
            local: LocalEngineConfig::default(),
        };
        let opened = manager.open_engine(&cfg, "d.t", 0).await.unwrap();
        let claim = opened.claim();
        let writer = claim
            .local_writer(&LocalWriterConfig::default())
            .await
            .unwrap();
        let later = opened.claim();
        drop(claim);
        let closing = tokio::spawn(opened.close());
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!closing.is_finished(), "a writer and a claim are alive");
        writer.close().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!closing.is_finished(), "a claim is alive");
        drop(later);
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), closing)
            .await
            .expect("close goes on once every claim is gone")
            .unwrap()
            .unwrap();
        assert_eq!(closed.uuid(), engine_uuid("d.t", 0));
    }
}
