//! The `local` backend: rows are sorted by the new key in a RocksDB engine on
//! local disk, then loaded into the shadow table in key order.
//!
//! (Over 800 lines: the engine, its writers and its import share the RocksDB
//! handle's private state; moving the writers into `local/writer.rs` is next.)
//!
//! **For:** copies where the target's key differs from the source's (rows
//! arrive in source order but should land in target-key order, so InnoDB
//! appends instead of splitting pages), where duplicates of a new key must be
//! found before anything reaches the target, and where writers should not
//! wait on the server.
//!
//! **Leaves to others:** reading (the engine crate), engine sizing and
//! checkpoints (the engine crate), verification after import.
//!
//! **Layout:** one RocksDB per engine in `sort_dir/<uuid>/db`, and
//! `sort_dir/<uuid>/meta.json` (written atomically: temp file, fsync,
//! rename, fsync of the directory) holding the [`TargetTable`], the engine's
//! column list and the format version. A restarted process can close and
//! import an engine from these alone.
//!
//! **Keys and duplicates:** the RocksDB key is [`crate::key::encode_key`] of
//! the target key columns followed by 16 bytes of SHA-256 of the encoded row.
//! The same row written twice (a chunk redone after a resume) lands on the
//! same RocksDB key and simply overwrites itself; two *different* rows with
//! the same target key land on adjacent RocksDB keys with the same prefix,
//! and the import's ordered scan reports them as
//! [`BackendError::DuplicateDetected`] before loading that range. This needs
//! no read-before-write and no lock between writers (the alternative,
//! get-before-put, races between concurrent writers and costs a random read
//! per row). A consequence worth knowing: if a chunk is redone after the
//! source row *changed*, the old and the new image are two different rows
//! under one key; the caller should reset an engine that was not closed
//! when the run died, or redo only chunks whose rows cannot have changed.
//! Keys compare by bytes, so two strings equal only under a case-insensitive
//! collation are caught by the server at import (as a duplicate too).
//!
//! **Values:** the row in the engine's column order in a compact tagged
//! encoding, zstd-compressed (level 1) when `compression` is on and it pays.
//!
//! **Writing:** unsorted writers put each `append_rows` call into one
//! `WriteBatch` with the WAL on (not fsynced); [`Backend::flush_engine`] syncs
//! the WAL, after which everything written survives kill -9. Sorted writers
//! (`is_kv_sorted`) buffer rows, sort them and build SST files that are
//! ingested (ingestion fsyncs the file and the MANIFEST), at a buffer limit
//! and on close.
//!
//! **Import:** one ordered scan of the engine cuts the key space into ranges
//! of at most `region_split_size` bytes of load text and `region_split_keys`
//! rows (and never more than the memory budget allows), and
//! `import_threads` connections load ranges in parallel, each range in key
//! order as one `LOAD DATA LOCAL INFILE` fed from memory inside a
//! transaction. `LOAD DATA LOCAL` turns errors (duplicate keys, truncation)
//! into warnings, so a range whose affected-row count differs from the rows
//! sent, or that raised any warning, is rolled back and reported
//! ([`BackendError::DuplicateDetected`] for error 1062, else
//! [`BackendError::LoadWarning`]). Text columns whose charset differs from
//! the target column's are loaded through `CONVERT(@v USING <charset>)` so the
//! server converts them as its ALTER would; BIT through `CAST(@v AS
//! UNSIGNED)`. `LOAD DATA` was chosen over large multi-row INSERTs because it
//! is faster on the same server (see the crate's benchmark numbers) and,
//! with the checks above, equally exact.
//!
//! An import is not idempotent: a range that committed stays in the target,
//! and importing the engine again reports its rows as duplicates. The caller
//! records an engine as imported only after `import` returns, and redoes a
//! failed import into a target where the engine's rows are not present.
//!
//! **Memory:** a quarter of `memory_limit` per open engine for memtables
//! (two write buffers of an eighth), an eighth shared as block cache, and at
//! most a quarter for import ranges in flight.
//!
//! **Configuration:** [`LocalBackendConfig`].

mod codec;
pub use codec::{decode_row, encode_row};
mod import;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mysql_async::Pool;
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::engine::{
    Backend, ChunkFlushStatus, EngineConfig, EngineWriter, ImportStats, LocalEngineConfig,
    LocalWriterConfig, TargetTable,
};
use crate::error::BackendError;
use crate::key::encode_key;
use crate::value::{Row, Value};

/// Bytes of row hash after the encoded key.
const HASH_LEN: usize = 16;
/// Version of the engine directory format.
const FORMAT: u32 = 1;
const META_FILE: &str = "meta.json";
const DB_DIR: &str = "db";
const SST_DIR: &str = "sst";

/// Settings of the local backend.
#[derive(Clone, Debug)]
pub struct LocalBackendConfig {
    /// Where engines live (`sort_dir/<uuid>`).
    pub sort_dir: PathBuf,
    /// Memory budget of the backend in bytes (memtables, block cache, sort
    /// buffers, import ranges in flight).
    pub memory_limit: u64,
    /// Compress stored rows with zstd.
    pub compression: bool,
    /// Connections that load ranges in parallel during import.
    pub import_threads: usize,
    /// Asked before each range is loaded: the caller's throttle holds the
    /// import as it holds the copy (`None`: never held).
    pub pace: Option<ImportPace>,
}

/// What holds an import between two ranges: the engine's throttle, so a
/// paused copy (replica lag, the server's write debt, the operator) pauses
/// the import's writes too.
#[async_trait]
pub trait Pace: Send + Sync {
    /// Returns when the next range may load.
    async fn ready(&self);
}

/// A shared [`Pace`].
#[derive(Clone)]
pub struct ImportPace(pub Arc<dyn Pace>);

impl std::fmt::Debug for ImportPace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImportPace")
    }
}

impl LocalBackendConfig {
    fn write_buffer_size(&self) -> usize {
        (self.memory_limit / 8).clamp(4 << 20, 256 << 20) as usize
    }

    fn sort_buffer_size(&self) -> usize {
        (self.memory_limit / 8).clamp(1 << 20, 256 << 20) as usize
    }

    fn max_range_bytes(&self) -> u64 {
        let threads = self.import_threads.max(1) as u64;
        (self.memory_limit / 4 / (2 * threads + 1)).max(256 << 10)
    }
}

/// What `meta.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EngineMeta {
    format: u32,
    engine: Uuid,
    target: TargetTable,
    local: LocalEngineConfig,
    /// Positions in `target.columns` of the stored row's values, fixed by the
    /// first write.
    columns: Option<Vec<usize>>,
}

pub(crate) struct LocalEngine {
    uuid: Uuid,
    dir: PathBuf,
    db: DB,
    opts: Options,
    meta: Mutex<EngineMeta>,
    closed: AtomicBool,
    write_seq: AtomicU64,
    flushed_seq: Arc<AtomicU64>,
    sst_seq: AtomicU64,
}

impl LocalEngine {
    fn meta(&self) -> Result<EngineMeta, BackendError> {
        self.meta
            .lock()
            .map(|m| m.clone())
            .map_err(|_| self.state_err("engine meta lock poisoned"))
    }

    fn state_err(&self, message: &str) -> BackendError {
        BackendError::EngineState {
            engine: self.uuid,
            message: message.to_string(),
        }
    }

    /// Fixes the engine's column list on the first write and maps a writer's
    /// column list onto it.
    fn layout(&self, names: &[String]) -> Result<Layout, BackendError> {
        let mut meta = self
            .meta
            .lock()
            .map_err(|_| self.state_err("engine meta lock poisoned"))?;
        let positions = meta.target.resolve_columns(names)?;
        let table = meta.target.display_name();
        if meta.columns.is_none() {
            for &k in &meta.target.key_columns {
                if !positions.contains(&k) {
                    let name = meta
                        .target
                        .columns
                        .get(k)
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| format!("#{k}"));
                    return Err(BackendError::InvalidInput {
                        message: format!(
                            "key column `{name}` of {table} is not among the written columns; \
                             the local backend sorts by the target key and needs its values"
                        ),
                    });
                }
            }
            if meta.target.key_columns.is_empty() {
                return Err(BackendError::InvalidInput {
                    message: format!(
                        "{table} has no key columns; the local backend needs the target's \
                         primary key (or a NOT NULL unique key)"
                    ),
                });
            }
            meta.columns = Some(positions.clone());
            write_meta(&self.dir, &meta)?;
        }
        let canonical = meta.columns.as_deref().unwrap_or_default();
        if canonical.len() != positions.len() {
            return Err(BackendError::InvalidInput {
                message: format!(
                    "writers of one local engine must write the same columns of {table}: got {} \
                     columns, the engine holds {}",
                    positions.len(),
                    canonical.len()
                ),
            });
        }
        let mut perm = Vec::with_capacity(canonical.len());
        for p in canonical {
            let i = positions.iter().position(|x| x == p).ok_or_else(|| {
                BackendError::InvalidInput {
                    message: format!(
                        "writers of one local engine must write the same columns of {table}: \
                         `{}` is missing",
                        meta.target.columns[*p].name
                    ),
                }
            })?;
            perm.push(i);
        }
        let key_idx = meta
            .target
            .key_columns
            .iter()
            .map(|k| canonical.iter().position(|p| p == k).unwrap_or(0))
            .collect();
        Ok(Layout {
            names: names.to_vec(),
            perm,
            key_idx,
            table,
        })
    }
}

/// How one writer's rows map onto the engine's stored rows.
#[derive(Clone)]
struct Layout {
    names: Vec<String>,
    /// For each stored column: the index in the writer's row.
    perm: Vec<usize>,
    /// For each key column: the index in the stored row.
    key_idx: Vec<usize>,
    table: String,
}

/// Turns rows into RocksDB key/value pairs.
struct RowEncoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    raw: Vec<u8>,
}

impl RowEncoder {
    fn new(compression: bool) -> Result<RowEncoder, BackendError> {
        let compressor = if compression {
            Some(
                zstd::bulk::Compressor::new(1)
                    .map_err(|e| BackendError::io("creating a zstd compressor", "", e))?,
            )
        } else {
            None
        };
        Ok(RowEncoder {
            compressor,
            raw: Vec::with_capacity(256),
        })
    }

    fn encode(&mut self, layout: &Layout, row: &Row) -> Result<(Vec<u8>, Vec<u8>), BackendError> {
        if row.len() != layout.perm.len() {
            return Err(BackendError::InvalidInput {
                message: format!(
                    "a row for {} has {} values for {} columns",
                    layout.table,
                    row.len(),
                    layout.perm.len()
                ),
            });
        }
        self.raw.clear();
        codec::encode_row(layout.perm.iter().map(|&i| &row[i]), &mut self.raw);
        let key_vals: Vec<&Value> = layout
            .key_idx
            .iter()
            .map(|&k| &row[layout.perm[k]])
            .collect();
        let mut key = Vec::with_capacity(32 + HASH_LEN);
        encode_key(&key_vals, &mut key);
        let digest = Sha256::digest(&self.raw);
        key.extend_from_slice(&digest[..HASH_LEN]);
        let mut value = Vec::with_capacity(self.raw.len() + 1);
        codec::seal(&self.raw, self.compressor.as_mut(), &mut value)
            .map_err(|e| BackendError::io("compressing a row", "", e))?;
        Ok((key, value))
    }
}

fn write_meta(dir: &Path, meta: &EngineMeta) -> Result<(), BackendError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(meta).map_err(|e| BackendError::InvalidInput {
        message: format!("cannot serialise engine meta: {e}"),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| BackendError::io("writing engine meta", &path, e))
}

fn read_meta(dir: &Path) -> Result<Option<EngineMeta>, BackendError> {
    let path = dir.join(META_FILE);
    let body = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BackendError::io("reading engine meta", &path, e)),
    };
    let meta: EngineMeta = serde_json::from_slice(&body).map_err(|e| BackendError::Io {
        context: "parsing engine meta".into(),
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    if meta.format != FORMAT {
        return Err(BackendError::InvalidInput {
            message: format!(
                "engine directory {} has format {} but this wraith reads format {FORMAT}; \
                 reset the engine and redo its chunks",
                dir.display(),
                meta.format
            ),
        });
    }
    Ok(Some(meta))
}

/// The local backend.
pub struct LocalBackend {
    pool: Pool,
    cfg: LocalBackendConfig,
    cache: Cache,
    engines: Mutex<HashMap<Uuid, Arc<LocalEngine>>>,
}

impl LocalBackend {
    /// A backend keeping engines under `cfg.sort_dir` and importing through
    /// `pool` (which must allow `LOAD DATA LOCAL`; the server needs
    /// `local_infile=ON`).
    pub fn new(pool: Pool, cfg: LocalBackendConfig) -> Result<LocalBackend, BackendError> {
        std::fs::create_dir_all(&cfg.sort_dir)
            .map_err(|e| BackendError::io("creating the sort directory", &cfg.sort_dir, e))?;
        let cache_size = (cfg.memory_limit / 8).clamp(8 << 20, 1 << 30) as usize;
        let cache = Cache::new_lru_cache(cache_size).map_err(|e| BackendError::Storage {
            engine: Uuid::nil(),
            context: "creating the block cache".into(),
            source: e,
        })?;
        Ok(LocalBackend {
            pool,
            cfg,
            cache,
            engines: Mutex::new(HashMap::new()),
        })
    }

    /// The directory of an engine.
    pub fn engine_dir(&self, engine_uuid: Uuid) -> PathBuf {
        self.cfg.sort_dir.join(engine_uuid.to_string())
    }

    fn db_options(&self) -> Options {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.set_write_buffer_size(self.cfg.write_buffer_size());
        o.set_max_write_buffer_number(2);
        o.set_max_open_files(512);
        o.set_max_background_jobs(2);
        o.set_compression_type(DBCompressionType::None);
        o.set_target_file_size_base(64 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_block_size(32 << 10);
        o.set_block_based_table_factory(&table);
        o
    }

    fn registry(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<Uuid, Arc<LocalEngine>>>, BackendError> {
        self.engines.lock().map_err(|_| BackendError::EngineState {
            engine: Uuid::nil(),
            message: "engine registry poisoned".into(),
        })
    }

    fn loaded(&self, uuid: Uuid) -> Result<Option<Arc<LocalEngine>>, BackendError> {
        Ok(self.registry()?.get(&uuid).cloned())
    }

    /// Opens an engine's RocksDB from its directory; `cfg` creates it when
    /// there is none yet.
    async fn load(
        &self,
        uuid: Uuid,
        cfg: Option<&EngineConfig>,
    ) -> Result<Arc<LocalEngine>, BackendError> {
        let dir = self.engine_dir(uuid);
        let opts = self.db_options();
        let cfg = cfg.cloned();
        let dir2 = dir.clone();
        let engine = tokio::task::spawn_blocking(move || -> Result<LocalEngine, BackendError> {
            let meta = match (read_meta(&dir2)?, cfg) {
                (Some(mut m), Some(c)) => {
                    if m.target != c.target {
                        return Err(BackendError::InvalidInput {
                            message: format!(
                                "engine {uuid} at {} was made for {} with other columns or key; \
                                 reset the engine (or remove the directory) to rebuild it",
                                dir2.display(),
                                m.target.display_name()
                            ),
                        });
                    }
                    m.local = c.local;
                    m
                }
                (Some(m), None) => m,
                (None, Some(c)) => {
                    std::fs::create_dir_all(&dir2)
                        .map_err(|e| BackendError::io("creating the engine directory", &dir2, e))?;
                    let m = EngineMeta {
                        format: FORMAT,
                        engine: uuid,
                        target: c.target,
                        local: c.local,
                        columns: None,
                    };
                    write_meta(&dir2, &m)?;
                    m
                }
                (None, None) => {
                    return Err(BackendError::EngineNotFound {
                        engine: uuid,
                        dir: Some(dir2),
                    })
                }
            };
            let db = DB::open(&opts, dir2.join(DB_DIR))
                .map_err(|e| BackendError::storage(uuid, "opening the engine", e))?;
            Ok(LocalEngine {
                uuid,
                dir: dir2,
                db,
                opts,
                meta: Mutex::new(meta),
                closed: AtomicBool::new(false),
                write_seq: AtomicU64::new(0),
                flushed_seq: Arc::new(AtomicU64::new(0)),
                sst_seq: AtomicU64::new(0),
            })
        })
        .await
        .map_err(|e| BackendError::task("opening an engine", e))??;
        let engine = Arc::new(engine);
        let mut reg = self.registry()?;
        // Another task may have loaded it meanwhile: keep the first.
        Ok(reg.entry(uuid).or_insert(engine).clone())
    }

    async fn flush(engine: Arc<LocalEngine>) -> Result<(), BackendError> {
        let seq = engine.write_seq.load(Ordering::Acquire);
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.db.flush_wal(true))
            .await
            .map_err(|e| BackendError::task("flushing an engine", e))?
            .map_err(|e| BackendError::storage(engine.uuid, "syncing the WAL", e))?;
        engine.flushed_seq.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn open_engine(&self, cfg: &EngineConfig, engine_uuid: Uuid) -> Result<(), BackendError> {
        if let Some(e) = self.loaded(engine_uuid)? {
            if e.closed.load(Ordering::Acquire) {
                return Err(e.state_err("cannot reopen an engine closed in this process"));
            }
            return Ok(());
        }
        let engine = self.load(engine_uuid, Some(cfg)).await?;
        tracing::info!(engine = %engine_uuid, dir = %engine.dir.display(), table = %cfg.target.display_name(), "opened local engine");
        Ok(())
    }

    async fn close_engine(
        &self,
        cfg: &EngineConfig,
        engine_uuid: Uuid,
    ) -> Result<(), BackendError> {
        let engine = match self.loaded(engine_uuid)? {
            Some(e) => e,
            None => self.load(engine_uuid, None).await?,
        };
        {
            let meta = engine.meta()?;
            if meta.target != cfg.target {
                return Err(BackendError::InvalidInput {
                    message: format!(
                        "engine {engine_uuid} holds rows for {} with other columns or key than \
                         the config being closed with",
                        meta.target.display_name()
                    ),
                });
            }
        }
        engine.closed.store(true, Ordering::Release);
        let local = cfg.local.clone();
        let e = engine.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BackendError> {
            e.db.flush()
                .map_err(|err| BackendError::storage(e.uuid, "flushing memtables", err))?;
            if local.compact {
                let size =
                    e.db.property_int_value("rocksdb.total-sst-files-size")
                        .ok()
                        .flatten()
                        .unwrap_or(0);
                if size >= local.compact_threshold {
                    tracing::info!(engine = %e.uuid, size, "compacting local engine");
                    e.db.compact_range::<&[u8], &[u8]>(None, None);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| BackendError::task("closing an engine", e))??;
        let seq = engine.write_seq.load(Ordering::Acquire);
        engine.flushed_seq.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }

    async fn import_engine(
        &self,
        engine_uuid: Uuid,
        region_split_size: u64,
        region_split_keys: u64,
    ) -> Result<ImportStats, BackendError> {
        let engine = self
            .loaded(engine_uuid)?
            .ok_or(BackendError::EngineNotFound {
                engine: engine_uuid,
                dir: Some(self.engine_dir(engine_uuid)),
            })?;
        if !engine.closed.load(Ordering::Acquire) {
            return Err(engine.state_err("import needs a closed engine"));
        }
        let split_bytes = if region_split_size == 0 {
            96 << 20
        } else {
            region_split_size
        }
        .min(self.cfg.max_range_bytes());
        let split_keys = if region_split_keys == 0 {
            u64::MAX
        } else {
            region_split_keys
        };
        let started = std::time::Instant::now();
        let stats = import::import(
            &self.pool,
            engine,
            self.cfg.pace.clone(),
            self.cfg.import_threads.max(1),
            split_bytes,
            split_keys,
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            engine = %engine_uuid,
            rows = stats.rows,
            bytes = stats.bytes,
            ranges = stats.ranges,
            secs,
            rows_per_sec = (stats.rows as f64 / secs.max(1e-9)) as u64,
            "imported local engine"
        );
        Ok(stats)
    }

    async fn cleanup_engine(&self, engine_uuid: Uuid) -> Result<(), BackendError> {
        let removed = self.registry()?.remove(&engine_uuid);
        let keep = match &removed {
            Some(e) => e.meta()?.local.keep_sort_dir,
            None => read_meta(&self.engine_dir(engine_uuid))?
                .map(|m| m.local.keep_sort_dir)
                .unwrap_or(false),
        };
        // Close RocksDB before removing its files.
        drop(removed);
        if keep {
            tracing::info!(engine = %engine_uuid, "keeping the engine's sort directory");
            return Ok(());
        }
        let dir = self.engine_dir(engine_uuid);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io("removing the engine directory", &dir, e)),
        })
        .await
        .map_err(|e| BackendError::task("cleaning up an engine", e))?
    }

    async fn flush_engine(&self, engine_uuid: Uuid) -> Result<(), BackendError> {
        let engine = self
            .loaded(engine_uuid)?
            .ok_or(BackendError::EngineNotFound {
                engine: engine_uuid,
                dir: None,
            })?;
        Self::flush(engine).await
    }

    async fn flush_all_engines(&self) -> Result<(), BackendError> {
        let all: Vec<Arc<LocalEngine>> = self.registry()?.values().cloned().collect();
        for e in all {
            Self::flush(e).await?;
        }
        Ok(())
    }

    async fn reset_engine(&self, engine_uuid: Uuid) -> Result<(), BackendError> {
        let engine = self
            .loaded(engine_uuid)?
            .ok_or(BackendError::EngineNotFound {
                engine: engine_uuid,
                dir: None,
            })?;
        let e = engine.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BackendError> {
            let mut batch = WriteBatch::default();
            // Every key starts with a flag byte below 0xFF.
            batch.delete_range(&[][..], &[0xFFu8; 16][..]);
            e.db.write(batch)
                .map_err(|err| BackendError::storage(e.uuid, "resetting the engine", err))?;
            e.db.flush_wal(true)
                .map_err(|err| BackendError::storage(e.uuid, "syncing the WAL", err))?;
            e.db.compact_range::<&[u8], &[u8]>(None, None);
            Ok(())
        })
        .await
        .map_err(|e| BackendError::task("resetting an engine", e))??;
        tracing::info!(engine = %engine_uuid, "reset local engine");
        Ok(())
    }

    async fn local_writer(
        &self,
        cfg: &LocalWriterConfig,
        engine_uuid: Uuid,
    ) -> Result<Box<dyn EngineWriter>, BackendError> {
        let engine = self
            .loaded(engine_uuid)?
            .ok_or(BackendError::EngineNotFound {
                engine: engine_uuid,
                dir: None,
            })?;
        if engine.closed.load(Ordering::Acquire) {
            return Err(engine.state_err("cannot write to a closed engine"));
        }
        let encoder = RowEncoder::new(self.cfg.compression)?;
        let inner = WriterInner {
            engine,
            encoder,
            layout: None,
        };
        Ok(if cfg.is_kv_sorted {
            Box::new(SortedWriter {
                inner: Some(inner),
                buf: Vec::new(),
                buf_bytes: 0,
                limit: self.cfg.sort_buffer_size(),
            })
        } else {
            Box::new(BatchWriter {
                inner: Some(inner),
                last_seq: 0,
            })
        })
    }

    async fn close(&self) {
        if let Err(e) = self.flush_all_engines().await {
            tracing::warn!(error = %e, "flushing engines on close");
        }
        if let Ok(mut reg) = self.engines.lock() {
            reg.clear();
        }
    }
}

/// State a writer moves onto a blocking thread and back.
struct WriterInner {
    engine: Arc<LocalEngine>,
    encoder: RowEncoder,
    layout: Option<Layout>,
}

impl WriterInner {
    fn check_open(&self) -> Result<(), BackendError> {
        if self.engine.closed.load(Ordering::Acquire) {
            return Err(self.engine.state_err("cannot write to a closed engine"));
        }
        Ok(())
    }

    fn layout_for(&mut self, columns: &[String]) -> Result<Layout, BackendError> {
        match &self.layout {
            Some(l) if l.names == columns => Ok(l.clone()),
            _ => {
                let l = self.engine.layout(columns)?;
                self.layout = Some(l.clone());
                Ok(l)
            }
        }
    }
}

fn writer_gone() -> BackendError {
    BackendError::InvalidInput {
        message: "a local writer was used after a failed call was cancelled".into(),
    }
}

/// Unsorted input: one WriteBatch per `append_rows`.
struct BatchWriter {
    inner: Option<WriterInner>,
    last_seq: u64,
}

#[async_trait]
impl EngineWriter for BatchWriter {
    async fn append_rows(
        &mut self,
        columns: &[String],
        rows: Vec<Row>,
    ) -> Result<(), BackendError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.take().ok_or_else(writer_gone)?;
        inner.check_open()?;
        let layout = inner.layout_for(columns)?;
        let (inner, res) = tokio::task::spawn_blocking(move || {
            let res = (|| -> Result<u64, BackendError> {
                let mut batch = WriteBatch::default();
                for row in &rows {
                    let (k, v) = inner.encoder.encode(&layout, row)?;
                    batch.put(k, v);
                }
                inner
                    .engine
                    .db
                    .write(batch)
                    .map_err(|e| BackendError::storage(inner.engine.uuid, "writing rows", e))?;
                Ok(inner.engine.write_seq.fetch_add(1, Ordering::AcqRel) + 1)
            })();
            (inner, res)
        })
        .await
        .map_err(|e| BackendError::task("writing rows", e))?;
        self.inner = Some(inner);
        self.last_seq = res?;
        Ok(())
    }

    fn is_synced(&self) -> bool {
        match &self.inner {
            Some(i) => i.engine.flushed_seq.load(Ordering::Acquire) >= self.last_seq,
            None => false,
        }
    }

    async fn close(self: Box<Self>) -> Result<ChunkFlushStatus, BackendError> {
        let inner = self.inner.ok_or_else(writer_gone)?;
        Ok(ChunkFlushStatus::pending(
            self.last_seq,
            inner.engine.flushed_seq.clone(),
        ))
    }
}

/// Sorted input: buffered, sorted, written as SST files and ingested.
struct SortedWriter {
    inner: Option<WriterInner>,
    buf: Vec<(Vec<u8>, Vec<u8>)>,
    buf_bytes: usize,
    limit: usize,
}

impl SortedWriter {
    async fn ingest(&mut self) -> Result<(), BackendError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        self.buf_bytes = 0;
        let engine = self.inner.as_ref().ok_or_else(writer_gone)?.engine.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BackendError> {
            buf.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            // Equal keys carry equal rows (the key ends with the row's hash).
            buf.dedup_by(|a, b| a.0 == b.0);
            let dir = engine.dir.join(SST_DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|e| BackendError::io("creating the SST directory", &dir, e))?;
            let n = engine.sst_seq.fetch_add(1, Ordering::AcqRel);
            let path = dir.join(format!("{}-{n}.sst", std::process::id()));
            let mut w = rocksdb::SstFileWriter::create(&engine.opts);
            let st = |e| BackendError::storage(engine.uuid, "building an SST file", e);
            w.open(&path).map_err(st)?;
            for (k, v) in &buf {
                w.put(k, v).map_err(st)?;
            }
            w.finish().map_err(st)?;
            let mut io = rocksdb::IngestExternalFileOptions::default();
            io.set_move_files(true);
            engine
                .db
                .ingest_external_file_opts(&io, vec![&path])
                .map_err(|e| BackendError::storage(engine.uuid, "ingesting an SST file", e))?;
            let _ = std::fs::remove_file(&path);
            Ok(())
        })
        .await
        .map_err(|e| BackendError::task("ingesting sorted rows", e))?
    }
}

#[async_trait]
impl EngineWriter for SortedWriter {
    async fn append_rows(
        &mut self,
        columns: &[String],
        rows: Vec<Row>,
    ) -> Result<(), BackendError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.take().ok_or_else(writer_gone)?;
        inner.check_open()?;
        let layout = inner.layout_for(columns)?;
        let (inner, res) = tokio::task::spawn_blocking(move || {
            let res = rows
                .iter()
                .map(|row| inner.encoder.encode(&layout, row))
                .collect::<Result<Vec<_>, _>>();
            (inner, res)
        })
        .await
        .map_err(|e| BackendError::task("encoding rows", e))?;
        self.inner = Some(inner);
        let kvs = res?;
        self.buf_bytes += kvs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>();
        self.buf.extend(kvs);
        if self.buf_bytes >= self.limit {
            self.ingest().await?;
        }
        Ok(())
    }

    fn is_synced(&self) -> bool {
        self.buf.is_empty()
    }

    async fn close(mut self: Box<Self>) -> Result<ChunkFlushStatus, BackendError> {
        if let Some(inner) = &self.inner {
            inner.check_open()?;
        }
        self.ingest().await?;
        Ok(ChunkFlushStatus::done())
    }
}
