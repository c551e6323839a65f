//! Import of a closed local engine: one ordered scan cut into ranges, ranges
//! loaded in parallel with `LOAD DATA LOCAL INFILE` fed from memory.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::{mpsc, Mutex};

use super::{codec, EngineMeta, LocalEngine, HASH_LEN};
use crate::engine::{quote_ident, ImportStats, TargetTable};
use crate::error::{parse_duplicate_message, BackendError};
use crate::key::{decode_key, format_key};
use crate::sql::{map_insert_error, prepare_session};
use crate::value::charset_of;

/// Size of one infile packet sent to the server.
const PACKET: usize = 1 << 20;

/// One key range, as load text.
struct Range {
    index: usize,
    data: Vec<u8>,
    rows: u64,
}

/// What the server says about one target column.
struct TargetColumn {
    charset: Option<String>,
    data_type: String,
}

pub(super) async fn import(
    pool: &Pool,
    engine: Arc<LocalEngine>,
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
    let info = target_columns(&mut conn, &target).await?;
    let stmt = Arc::new(load_statement(&target, &columns, &info)?);
    tracing::debug!(statement = %stmt, "import statement");

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
        let stmt = stmt.clone();
        let target = target.clone();
        let pool = pool.clone();
        workers.push(async move {
            let mut conn = match conn {
                Some(c) => c,
                None => connect(&pool, &target.display_name()).await?,
            };
            loop {
                let next = rx.lock().await.recv().await;
                let Some(range) = next else { break };
                let Range { index, data, rows } = range;
                let data = Bytes::from(data);
                let mut attempt = 0u64;
                loop {
                    attempt += 1;
                    match load_range(&mut conn, &stmt, &target, index, rows, data.clone()).await {
                        // A deadlock with the change applier rolled the range back.
                        Err(e)
                            if e.is_lock_conflict()
                                && attempt < crate::error::LOCK_CONFLICT_ATTEMPTS =>
                        {
                            tracing::debug!(
                                attempt,
                                range = index,
                                "retrying a range after a lock conflict"
                            );
                            tokio::time::sleep(std::time::Duration::from_millis(10 * attempt))
                                .await;
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
    Ok(conn)
}

async fn target_columns(
    conn: &mut Conn,
    target: &TargetTable,
) -> Result<HashMap<String, TargetColumn>, BackendError> {
    type ColumnRow = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, CHARACTER_SET_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (target.schema.as_bytes(), target.table.as_bytes()),
        )
        .await
        .map_err(|e| {
            BackendError::sql("reading the target's columns", &target.display_name(), e)
        })?;
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(rows
        .into_iter()
        .map(|(n, cs, dt)| {
            (
                lossy(&n).to_lowercase(),
                TargetColumn {
                    charset: cs.map(|c| lossy(&c).to_lowercase()),
                    data_type: lossy(&dt).to_lowercase(),
                },
            )
        })
        .collect())
}

/// `LOAD DATA LOCAL INFILE ... (cols) SET ...` for the engine's columns.
fn load_statement(
    target: &TargetTable,
    columns: &[usize],
    info: &HashMap<String, TargetColumn>,
) -> Result<String, BackendError> {
    let mut list = Vec::with_capacity(columns.len());
    let mut sets = Vec::new();
    for (j, &p) in columns.iter().enumerate() {
        let spec = &target.columns[p];
        let tc = info
            .get(&spec.name.to_lowercase())
            .ok_or_else(|| BackendError::InvalidInput {
                message: format!(
                    "column `{}` is not in the target table {} on the server; was the shadow \
                     table changed after the engine was written?",
                    spec.name,
                    target.display_name()
                ),
            })?;
        let col = quote_ident(&spec.name);
        let var = format!("@v{j}");
        let value_cs = if spec.kind.is_textual() {
            charset_of(spec)
        } else {
            "utf8mb4"
        };
        let convert_charset = tc.data_type == "json"
            || (spec.kind.is_textual()
                && matches!(&tc.charset, Some(t) if t != "binary" && t != value_cs));
        // Binary bytes into a text column are stored as is, as an INSERT of
        // X'..' would; same-charset text needs no conversion.
        let expr = if tc.data_type == "bit" {
            Some(format!("CAST({var} AS UNSIGNED)"))
        } else if convert_charset {
            Some(format!("CONVERT({var} USING {value_cs})"))
        } else {
            None
        };
        match expr {
            Some(e) => {
                list.push(var);
                sets.push(format!("{col} = {e}"));
            }
            None => list.push(col),
        }
    }
    let mut s = format!(
        "LOAD DATA LOCAL INFILE 'wraith-engine' INTO TABLE {} CHARACTER SET binary \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        target.quoted_name(),
        list.join(", ")
    );
    if !sets.is_empty() {
        s.push_str(" SET ");
        s.push_str(&sets.join(", "));
    }
    Ok(s)
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
            codec::write_load_field(v, &mut cur.data);
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

/// Loads one range in a transaction; any shortfall or warning rolls it back.
async fn load_range(
    conn: &mut Conn,
    stmt: &str,
    target: &TargetTable,
    index: usize,
    rows: u64,
    data: Bytes,
) -> Result<(), BackendError> {
    let name = target.display_name();
    conn.query_drop("START TRANSACTION")
        .await
        .map_err(|e| BackendError::sql("starting a transaction", &name, e))?;
    let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
        .step_by(PACKET)
        .map(|s| Ok(data.slice(s..(s + PACKET).min(data.len()))))
        .collect();
    conn.set_infile_handler(async move { Ok(stream::iter(chunks).boxed()) });
    if let Err(e) = conn.query_drop(stmt).await {
        let _ = conn.query_drop("ROLLBACK").await;
        if let mysql_async::Error::Server(s) = &e {
            if matches!(s.code, 1148 | 3948 | 4166) {
                return Err(BackendError::InvalidInput {
                    message: format!(
                        "the server refuses LOAD DATA LOCAL into {name} ({}): set \
                         `local_infile = ON` on the server, or use the sql backend",
                        s.message
                    ),
                });
            }
        }
        return Err(map_insert_error(e, "loading a range", target));
    }
    let affected = conn.affected_rows();
    let warnings = conn.get_warnings();
    if warnings > 0 || affected != rows {
        let shown: Vec<(Vec<u8>, u32, Vec<u8>)> = conn
            .query("SHOW WARNINGS LIMIT 64")
            .await
            .map_err(|e| BackendError::sql("reading load warnings", &name, e))?;
        let msgs: Vec<(u32, String)> = shown
            .into_iter()
            .map(|(_, code, m)| (code, String::from_utf8_lossy(&m).into_owned()))
            .collect();
        // Every shortfall a clash with a moved row on a transient unique
        // index (each skipped row left one warning): keep the load.
        let transient = |(code, m): &(u32, String)| {
            *code == 1062
                && parse_duplicate_message(m)
                    .is_some_and(|(_, i)| target.is_transient_duplicate(&i))
        };
        if affected + warnings as u64 == rows
            && msgs.len() == warnings as usize
            && msgs.iter().all(transient)
        {
            conn.query_drop("COMMIT")
                .await
                .map_err(|e| BackendError::sql("committing a range", &name, e))?;
            tracing::debug!(table = %name, range = index, rows, skipped = warnings, "loaded range; rows that moved during the copy were skipped");
            return Ok(());
        }
        let _ = conn.query_drop("ROLLBACK").await;
        tracing::warn!(table = %name, range = index, rows, affected, warnings, "range load was not exact; rolled back");
        if let Some((_, m)) = msgs.iter().find(|(c, _)| *c == 1062) {
            if let Some((key, index)) = parse_duplicate_message(m) {
                return Err(BackendError::DuplicateDetected {
                    table: name,
                    key,
                    index,
                });
            }
        }
        return Err(match msgs.into_iter().next() {
            Some((code, message)) => BackendError::LoadWarning {
                table: name,
                code,
                message,
            },
            None => BackendError::LoadWarning {
                table: name,
                code: 0,
                message: format!("{affected} rows stored of {rows} sent"),
            },
        });
    }
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| BackendError::sql("committing a range", &name, e))?;
    tracing::debug!(table = %name, range = index, rows, "loaded range");
    Ok(())
}
