//! Import of a closed local engine: one ordered scan cut into ranges, ranges
//! loaded in parallel with `LOAD DATA LOCAL INFILE` fed from memory.

use std::sync::Arc;

use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::{mpsc, Mutex};

use super::{codec, EngineMeta, ImportPace, LocalEngine, HASH_LEN};
use crate::engine::ImportStats;
use crate::error::BackendError;
use crate::key::{decode_key, format_key};
use crate::load_data::{write_load_field, LoadData};
use crate::write::prepare_session;

/// One key range, as load text.
struct Range {
    index: usize,
    data: Vec<u8>,
    rows: u64,
}

pub(super) async fn import(
    pool: &Pool,
    engine: Arc<LocalEngine>,
    pace: Option<ImportPace>,
    threads: usize,
    split_bytes: u64,
    split_keys: u64,
) -> Result<ImportStats, BackendError> {
    let meta = engine.meta()?;
    let Some(columns) = meta.columns.clone() else {
        return Ok(ImportStats::default());
    };
    let target = meta.target.clone();
    let name = target.display_name();
    let mut conn = connect(pool, &name).await?;
    let load = Arc::new(LoadData::prepare(&mut conn, &target, &columns).await?);
    tracing::debug!(statement = %load.statement(), "import statement");

    let (tx, rx) = mpsc::channel::<Range>(threads);
    let scan_engine = engine.clone();
    let scan_meta = meta.clone();
    let producer = tokio::task::spawn_blocking(move || {
        scan(&scan_engine, &scan_meta, &tx, split_bytes, split_keys)
    });

    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(threads);
    let mut first = Some(conn);
    for _ in 0..threads {
        let conn = first.take();
        let rx = rx.clone();
        let load = load.clone();
        let target = target.clone();
        let pool = pool.clone();
        let pace = pace.clone();
        workers.push(async move {
            let mut conn = match conn {
                Some(c) => c,
                None => connect(&pool, &target.display_name()).await?,
            };
            loop {
                let next = rx.lock().await.recv().await;
                let Some(range) = next else { break };
                let Range { index, data, rows } = range;
                if let Some(pace) = &pace {
                    pace.0.ready().await;
                }
                let data = Bytes::from(data);
                let policy = crate::retry::RetryPolicy::LOCK_CONFLICT;
                let mut failures = 0;
                loop {
                    match load_range(&mut conn, &load, index, rows, data.clone()).await {
                        // A deadlock with the change applier rolled the range back.
                        Err(BackendError::Sql { source, .. })
                            if policy.retries(&source, failures + 1) =>
                        {
                            failures += 1;
                            tracing::debug!(
                                attempt = failures,
                                range = index,
                                error = %source,
                                "retrying a range after a lock conflict"
                            );
                            policy.pause(failures).await;
                        }
                        other => break other?,
                    }
                }
            }
            Ok::<(), BackendError>(())
        });
    }
    let workers_res = futures_util::future::try_join_all(workers).await;
    // Stop the scan if the loaders stopped.
    drop(rx);
    let scan_res = producer
        .await
        .map_err(|e| BackendError::task("scanning the engine", e))?;
    match (scan_res, workers_res) {
        (Err(e @ BackendError::DuplicateDetected { .. }), _) => Err(e),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Ok(stats), Ok(_)) => Ok(stats),
    }
}

async fn connect(pool: &Pool, table: &str) -> Result<Conn, BackendError> {
    let mut conn = pool
        .get_conn()
        .await
        .map_err(|e| BackendError::sql("connecting", table, e))?;
    prepare_session(&mut conn)
        .await
        .map_err(|e| BackendError::sql("setting up the session", table, e))?;
    // A load must raise no warning to count as exact; a Note is a value the
    // ALTER changes by the server's own rules (DECIMAL rounding, allowed by
    // `allow_lossy`), as an INSERT … SELECT would silently.
    conn.query_drop("SET sql_notes = 0")
        .await
        .map_err(|e| BackendError::sql("setting up the session", table, e))?;
    Ok(conn)
}

/// Scans the engine in key order, finds duplicates and cuts load ranges.
fn scan(
    engine: &LocalEngine,
    meta: &EngineMeta,
    tx: &mpsc::Sender<Range>,
    split_bytes: u64,
    split_keys: u64,
) -> Result<ImportStats, BackendError> {
    let corrupt = |reason: String| BackendError::CorruptRow {
        engine: engine.uuid,
        reason,
    };
    let ncols = meta.columns.as_ref().map(Vec::len).unwrap_or(0);
    let mut decompressor = zstd::bulk::Decompressor::new()
        .map_err(|e| BackendError::io("creating a zstd decompressor", "", e))?;
    let mut scratch = Vec::new();
    let mut ro = rocksdb::ReadOptions::default();
    ro.fill_cache(false);
    ro.set_readahead_size(2 << 20);
    let mut it = engine.db.raw_iterator_opt(ro);
    it.seek_to_first();
    let mut stats = ImportStats::default();
    let mut prev_key: Vec<u8> = Vec::new();
    let mut have_prev = false;
    let mut cur = Range {
        index: 0,
        data: Vec::with_capacity(split_bytes.min(16 << 20) as usize),
        rows: 0,
    };
    while it.valid() {
        let (Some(key), Some(value)) = (it.key(), it.value()) else {
            break;
        };
        if key.len() < HASH_LEN {
            return Err(corrupt("key shorter than its hash".into()));
        }
        let pk = &key[..key.len() - HASH_LEN];
        if have_prev && prev_key == pk {
            let values = decode_key(pk).map_err(|source| BackendError::Key {
                engine: engine.uuid,
                source,
            })?;
            return Err(BackendError::DuplicateDetected {
                table: meta.target.display_name(),
                key: format_key(&values),
                index: meta.target.key_description(),
            });
        }
        prev_key.clear();
        prev_key.extend_from_slice(pk);
        have_prev = true;
        let raw = codec::open_sealed(value, &mut decompressor, &mut scratch).map_err(corrupt)?;
        let row = codec::decode_row(raw).map_err(corrupt)?;
        if row.len() != ncols {
            return Err(corrupt(format!(
                "row has {} values, the engine {ncols} columns",
                row.len()
            )));
        }
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                cur.data.push(b'\t');
            }
            write_load_field(v, &mut cur.data);
        }
        cur.data.push(b'\n');
        cur.rows += 1;
        if cur.rows >= split_keys || cur.data.len() as u64 >= split_bytes {
            let next = Range {
                index: cur.index + 1,
                data: Vec::with_capacity(cur.data.capacity()),
                rows: 0,
            };
            let full = std::mem::replace(&mut cur, next);
            stats.rows += full.rows;
            stats.bytes += full.data.len() as u64;
            stats.ranges += 1;
            if tx.blocking_send(full).is_err() {
                return Err(BackendError::Task {
                    context: "importing".into(),
                    message: "the loaders stopped".into(),
                });
            }
        }
        it.next();
    }
    it.status()
        .map_err(|e| BackendError::storage(engine.uuid, "scanning the engine", e))?;
    if cur.rows > 0 {
        stats.rows += cur.rows;
        stats.bytes += cur.data.len() as u64;
        stats.ranges += 1;
        if tx.blocking_send(cur).is_err() {
            return Err(BackendError::Task {
                context: "importing".into(),
                message: "the loaders stopped".into(),
            });
        }
    }
    Ok(stats)
}

/// Loads one range in its own transaction; any shortfall or warning rolls
/// it back.
async fn load_range(
    conn: &mut Conn,
    load: &LoadData,
    index: usize,
    rows: u64,
    data: Bytes,
) -> Result<(), BackendError> {
    let name = load.target().display_name();
    conn.query_drop("START TRANSACTION")
        .await
        .map_err(|e| BackendError::sql("starting a transaction", &name, e))?;
    let skipped = match load.load(conn, rows, data).await {
        Ok(skipped) => skipped,
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            if matches!(e, BackendError::LoadWarning { .. }) {
                tracing::warn!(table = %name, range = index, rows, "range load was not exact; rolled back");
            }
            return Err(e);
        }
    };
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| BackendError::sql("committing a range", &name, e))?;
    if skipped > 0 {
        tracing::debug!(table = %name, range = index, rows, skipped, "loaded range; rows that moved during the copy were skipped");
    } else {
        tracing::debug!(table = %name, range = index, rows, "loaded range");
    }
    Ok(())
}
