//! # Bulk import of dump files (`wraith import`)
//!
//! **For:** loading a directory of dump files (mydumper, mysqldump /
//! mariadb-dump, CSV, TSV; plain, `.gz` or `.zst`) into a database through
//! the same engines and checkpoints as the rebuild, resumable after kill -9.
//!
//! **Leaves to others:** parsing to [`csv`] and [`sql`], splitting and typing
//! to [`region`], file naming to [`files`], writing to the backends
//! (`wraith-backend`) and to [`writer`] for the sql path, storing
//! checkpoints to `wraith-checkpoints`.
//!
//! **Stages** ([`job::Stage`], one small function each in [`job`], in
//! this order): plan (files, tables created, targets inspected, backend
//! chosen) ─► checkpoint (resumed, or every region planned) ─► load
//! (indexes deferred, regions loaded: [`load`]) ─► finish (per table:
//! engine imported, indexes restored, rows verified: [`finish`]) ─►
//! cleanup (checkpoint, markers and wraith's empty tables removed).
//!
//! **Flow:**
//!
//! ```text
//! [import] dir ─► preflight (dir, files, database, tables, charsets: refuse before loading)
//!   ─► files (table per file) ─► create_tables (*-schema.sql) ─► inspect targets
//!   ─► plan regions (one skip-mode scan per file, in parallel) ─► checkpoint: one chunk per region
//!   ─► `threads` workers: region ─► rayon parse ─► batches of typed rows ─► writer
//!        · local: engine per table (RocksDB, sorted by the key), writer per region,
//!                 flush, chunk flushed; then close ─► import in key order ─► cleanup
//!        · sql:   one transaction per region: INSERT/REPLACE batches + a row in
//!                 `_wraith_import_regions`, committed together; chunk flushed
//!        (both: non-unique secondary indexes dropped first, added back after)
//!   ─► verify: rows in each table against rows parsed ─► checkpoint removed
//!   ─► wraith's tables dropped when no other job has rows in them
//! ```
//!
//! **Refused values.** A value the server refuses is reported at its file,
//! byte offset and line: every batch carries its rows' offsets, the sql
//! path maps the server's "at row N" back through them, and the local
//! backend, whose engine loads rows in key order, writes the table's
//! regions again into a TEMPORARY copy to find the row.
//!
//! **Resume.** Every region is a chunk (file, byte range, status, rows) of its
//! table's engine in the checkpoint. A rerun with the same config (same
//! files and sizes, same settings: the fingerprint) skips flushed regions and
//! redoes the others:
//! - local: rows are keyed by the table key plus a hash of the row, so a
//!   redone region rewrites the same engine keys: no duplicates. An engine
//!   whose import had begun (status `closed`) may have loaded some ranges;
//!   since an import requires empty tables, the table is emptied and the
//!   engine imported again.
//! - sql: a region's rows and its marker row in `_wraith_import_regions`
//!   (which carries the region's sums under `verify = "checksum"`) commit
//!   in one transaction, so after a kill a region is either entirely in the
//!   table with its marker and sums, or not at all. The rerun marks regions
//!   with markers as flushed, takes their sums from the markers, and redoes
//!   the rest; nothing is written twice.
//! - both: a region's status and its sums reach the checkpoint in one save,
//!   never one without the other.
//!
//! **Duplicates** (`on_duplicate`): `error` stops naming the key and index
//! (both backends). `replace` and `ignore` use the sql backend with `REPLACE`
//! and `INSERT … ON DUPLICATE KEY UPDATE k = k` (not `INSERT IGNORE`, which
//! would also turn bad values into warnings); regions of one table are then
//! written one after another in file-name and offset order (parsing still
//! runs ahead in parallel), so "later" is well defined.
//!
//! **Requirements:** target tables must be empty when an import starts
//! (a checkpoint of the same job is the only exception); values are typed by
//! the target's columns; timestamps in dumps are UTC (mydumper and
//! mariadb-dump write `SET TIME_ZONE='+00:00'`).

pub mod config;
pub mod csv;
mod error;
pub mod files;
mod finish;
mod indexes;
mod job;
mod load;
mod markers;
mod plan;
pub mod preflight;
mod probe;
pub mod region;
mod report;
pub mod sql;
pub mod verify;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

use crate::server::{connection_opts, quote_ident, Context};

use self::config::ImportJobConfig;

pub use self::error::ImportError;
pub use self::job::Stage;
pub use self::probe::PROBE_TABLE;
pub use self::report::{ImportProgress, ImportReport, TableImportReport};

/// One value as a dump file spells it, before the target column types it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Null,
    /// A string (CSV field, quoted SQL string), unescaped.
    Text(Vec<u8>),
    /// An unquoted SQL number, as written.
    Number(Vec<u8>),
    /// `0x…` or `X'…'`.
    Hex(Vec<u8>),
    /// `b'…'`.
    Bits(u64),
}

/// A parse failure at a byte offset of the parsed data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

impl SyntaxError {
    pub fn new(offset: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            offset,
            message: message.into(),
        }
    }
}

pub use crate::names::REGIONS_TABLE;

/// The checkpoint key of an import job.
pub fn job_key(cfg: &ImportJobConfig) -> String {
    let dir = cfg.import.dir.display().to_string();
    let dir = if dir.len() > 200 {
        dir[dir.len() - 200..].to_string()
    } else {
        dir
    };
    format!("import:{}:{}", cfg.target.database, dir)
}

/// The name engines and their UUIDs are derived from.
fn engine_table_name(db: &str, table: &str) -> String {
    format!("import:{db}.{table}")
}

/// The job's pool: a connection per worker and its parser's writer, and two spare.
fn pool_of(cfg: &ImportJobConfig) -> Result<Pool, ImportError> {
    let opts = connection_opts(&cfg.target).map_err(ImportError::Plan)?;
    Ok(crate::server::pool(opts, cfg.import.threads * 2 + 2))
}

/// A connection of the pool with the exact-value session.
async fn conn(pool: &Pool) -> Result<Conn, ImportError> {
    let mut c = pool
        .get_conn()
        .await
        .context(|| "connecting to the target".into())?;
    wraith_backend::write::prepare_session(&mut c)
        .await
        .context(|| "setting up a session".into())?;
    Ok(c)
}

/// Runs the import described by `cfg`. `stop` turning true stops it at the
/// next region boundary (resumable).
pub async fn run_import(
    cfg: &ImportJobConfig,
    progress: Arc<ImportProgress>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let db = cfg.target.database.clone();
    // Everything that can be judged before a row is loaded.
    let checked = preflight::check(cfg).await;
    if !checked.passed() {
        return Err(ImportError::Refused(checked.failure_message()));
    }
    if checked.creates_database {
        let mut c = preflight::connect(cfg).await.map_err(ImportError::Plan)?;
        c.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_ident(&db)
        ))
        .await
        .context(|| format!("creating database {db}"))?;
        let _ = c.disconnect().await;
        tracing::info!(database = %db, "database created");
    }
    let pool = pool_of(cfg)?;
    let job = job::Job {
        cfg,
        db: &db,
        pool: &pool,
        progress,
        stop,
        stages: Default::default(),
    };
    let result = job::run(&job, started).await;
    pool.disconnect().await.ok();
    result
}

/// How long to wait between progress lines when stderr is not a terminal.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
