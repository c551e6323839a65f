//! Checkpoints of a run and resuming from them.
//!
//! The engine decides what is saved and when; `wraith-checkpoints` stores and
//! validates. A run saves at every state change and every `[checkpoint]
//! interval`:
//! - the table's stage (shadow created, copying, copy done, indexes restored,
//!   checksummed, cutting over, cut over);
//! - the low watermark of the copy: every key at or below it is durable in the
//!   shadow table; the high watermark: no key above it was read;
//! - the binlog position up to which every change is applied to the shadow
//!   table or durably stored in the local change store (the buffer is made
//!   durable first, then its position is saved);
//! - the engines of the local backend (to clean up those not imported).
//!
//! Resuming: the same config finds the checkpoint under its job key, it is
//! validated (same ALTER, same source table, not too old, binlog still there),
//! rows of the shadow table above the low watermark are deleted (only the copy
//! put rows there, and the copy redoes them), engines that were not imported
//! are dropped, the change stream restarts from the saved position and
//! replays idempotently (the last image of a key wins, so replaying older
//! changes before newer ones ends in the same rows), and the state machine
//! continues where it stopped. An interrupted cut-over is resolved by looking
//! at which tables exist (see `cutover::resolve_interrupted`).
//!
//! Trade-off: redoing everything above the low watermark (rather than
//! Lightning's per-chunk flushed states) redoes at most the chunks that were
//! in flight and the local engine not yet imported, and keeps resume a single
//! rule that holds for both backends and the server-side copy.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;
use tokio::sync::Mutex;
use wraith_checkpoints::{
    config_fingerprint, BinlogCoverage, CheckpointError, CheckpointStore, CurrentState,
    CurrentTable, FileStore, SourceIdentity, TableStage, TableStore, TaskCheckpoint,
};

use crate::config::{CheckpointStore as StoreKind, Config};
use crate::progress::State;
use crate::server::inspect::TableInfo;
use crate::server::{quote_ident, Context, DbError};

/// The job's key in the checkpoint store.
pub fn job_key(config: &Config) -> String {
    // A table of another schema is named with it; the rest as before.
    let tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| match &t.schema {
            Some(schema) if *schema != config.source.database => format!("{schema}.{}", t.name),
            _ => t.name.clone(),
        })
        .collect();
    format!("{}.{}", config.source.database, tables.join(","))
}

/// The settings whose change makes a checkpoint unusable.
pub fn fingerprint(config: &Config) -> String {
    config_fingerprint([
        ("source", config.source.describe()),
        ("target", config.target().describe()),
        ("backend", config.copy.backend.to_string()),
    ])
}

/// Opens the configured store.
pub fn open_store(config: &Config, target_pool: &Pool) -> Arc<dyn CheckpointStore> {
    match (config.checkpoint.store, &config.checkpoint.path) {
        (StoreKind::File, Some(path)) => Arc::new(FileStore::new(path.clone())),
        _ => Arc::new(TableStore::new(
            target_pool.clone(),
            config.target().database.clone(),
        )),
    }
}

/// The live checkpoint of a run: changed in memory, saved atomically.
pub struct Checkpointer {
    store: Arc<dyn CheckpointStore>,
    key: String,
    task: Mutex<TaskCheckpoint>,
}

impl Checkpointer {
    pub fn new(store: Arc<dyn CheckpointStore>, key: String, task: TaskCheckpoint) -> Checkpointer {
        Checkpointer {
            store,
            key,
            task: Mutex::new(task),
        }
    }

    /// Changes the checkpoint with `f`, then saves it.
    pub async fn update<R>(
        &self,
        f: impl FnOnce(&mut TaskCheckpoint) -> R,
    ) -> Result<R, CheckpointError> {
        let mut task = self.task.lock().await;
        let r = f(&mut task);
        task.touch(SystemTime::now());
        self.store.save(&self.key, &task).await?;
        Ok(r)
    }

    /// A copy of the current checkpoint.
    pub async fn snapshot(&self) -> TaskCheckpoint {
        self.task.lock().await.clone()
    }

    /// Removes the checkpoint (the job is done).
    pub async fn remove(&self) -> Result<(), CheckpointError> {
        self.store.remove(&self.key).await
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }
}

/// Who the source table is: a recreated table with the same name is another.
pub async fn source_identity(
    conn: &mut Conn,
    table: &TableInfo,
) -> Result<SourceIdentity, DbError> {
    let mut id = SourceIdentity::named(&table.schema, &table.name);
    id.create_time = table.create_time.clone();
    let domain: Option<Option<String>> = conn
        .query_first("SELECT CAST(@@GLOBAL.gtid_domain_id AS CHAR)")
        .await
        .ok();
    id.gtid_domain = domain.flatten();
    let uuid: Option<Option<String>> = conn.query_first("SELECT @@GLOBAL.server_uuid").await.ok();
    id.server_uuid = uuid.flatten();
    // InnoDB's table id changes when a table is dropped and recreated, even
    // within the same second (CREATE_TIME has one-second resolution).
    let table_id: Option<u64> = conn
        .exec_first(
            "SELECT TABLE_ID FROM information_schema.INNODB_SYS_TABLES WHERE NAME = ?",
            (format!("{}/{}", table.schema, table.name),),
        )
        .await
        .ok()
        .flatten();
    id.table_id = table_id;
    Ok(id)
}

/// A fingerprint of the shadow table's columns (indexes come and go during a
/// run; columns do not).
pub fn shadow_fingerprint(shadow: &TableInfo) -> String {
    shadow
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.column_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The oldest binlog file the server still has.
pub async fn oldest_binlog(conn: &mut Conn) -> Result<Option<String>, DbError> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .context(|| "listing the binary logs".into())?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|mut r| r.take::<String, _>(0)))
}

/// What the server looks like now, for validating a saved checkpoint.
pub async fn current_state(
    conn: &mut Conn,
    config: &Config,
    tables: &[(TableInfo, Option<TableInfo>)],
) -> Result<CurrentState, DbError> {
    let mut current = Vec::new();
    for ((old, shadow), table) in tables.iter().zip(&config.tables) {
        current.push(CurrentTable {
            source: source_identity(conn, old).await?,
            alter: table.alter.clone(),
            shadow_fingerprint: shadow.as_ref().map(shadow_fingerprint),
        });
    }
    Ok(CurrentState {
        config_fingerprint: fingerprint(config),
        tables: current,
        binlog: BinlogCoverage {
            oldest_file: oldest_binlog(conn).await?,
            local_store_covers: false,
        },
    })
}

/// How long the server keeps binlogs, for `wraith status`: `None` when they
/// are kept until purged by hand.
pub async fn binlog_retention(conn: &mut Conn) -> Result<Option<Duration>, DbError> {
    let secs: Option<Option<u64>> = conn
        .query_first("SELECT @@GLOBAL.binlog_expire_logs_seconds")
        .await
        .ok();
    if let Some(Some(s)) = secs {
        if s > 0 {
            return Ok(Some(Duration::from_secs(s)));
        }
    }
    let days: Option<Option<f64>> = conn
        .query_first("SELECT @@GLOBAL.expire_logs_days")
        .await
        .ok();
    Ok(match days.flatten() {
        Some(d) if d > 0.0 => Some(Duration::from_secs_f64(d * 86_400.0)),
        _ => None,
    })
}

/// A killed run's last statements on the shadow table may still be running
/// on the server (a statement fully sent runs even after its client died).
/// Waits until none does, then passes a table-lock barrier, so nothing of the
/// old run lands after the resumed run has cleaned up.
pub async fn wait_out_killed_writers(
    conn: &mut Conn,
    schema: &str,
    shadow: &str,
) -> Result<(), DbError> {
    let pattern = format!("%{shadow}%");
    for _ in 0..300 {
        let busy: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND INFO LIKE ? AND COMMAND <> 'Sleep'",
                (&pattern,),
            )
            .await
            .context(|| "looking for statements of a killed run".into())?;
        if busy.unwrap_or(0) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let qt = format!("{}.{}", quote_ident(schema), quote_ident(shadow));
    conn.query_drop(format!("LOCK TABLES {qt} WRITE"))
        .await
        .context(|| format!("waiting for statements on {shadow} to finish"))?;
    conn.query_drop("UNLOCK TABLES")
        .await
        .context(|| "UNLOCK TABLES".into())
}

/// Deletes shadow rows above the low watermark (`low` = `None`: all rows):
/// only the copy wrote there, and the resumed copy writes them again.
pub async fn delete_above(
    conn: &mut Conn,
    schema: &str,
    shadow: &str,
    key: &[wraith_backend::ColumnSpec],
    low: Option<&[u8]>,
) -> Result<u64, DbError> {
    let qt = format!("{}.{}", quote_ident(schema), quote_ident(shadow));
    let cond = match low {
        None => "1=1".to_string(),
        Some(bytes) => {
            let values = wraith_backend::decode_key(bytes).map_err(|e| DbError {
                context: format!("decoding the saved low watermark of {shadow}"),
                error: mysql_async::Error::Other(e.to_string().into()),
            })?;
            crate::chunker::KeySql { key }.greater(&values, true)
        }
    };
    conn.query_drop(format!("DELETE FROM {qt} WHERE {cond}"))
        .await
        .context(|| format!("deleting rows of {shadow} above the resumed copy's low watermark"))?;
    Ok(conn.affected_rows())
}

/// What `wraith status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub job: String,
    pub store: String,
    pub checkpoint: Option<TaskCheckpoint>,
    pub age_secs: Option<u64>,
    pub binlog_retention_secs: Option<u64>,
    pub oldest_binlog: Option<String>,
    /// Per table: whether the saved position's binlog is still on the server.
    pub resumable: Vec<(String, bool)>,
    /// Spirit's `Progress` shape: from the running process when one answers
    /// on the control socket, else from the checkpoint.
    pub current_state: String,
    pub summary: String,
    pub tables: Vec<crate::progress::TableProgress>,
    /// The running process's `status-json`, when one answers.
    pub live: Option<serde_json::Value>,
}

impl StatusReport {
    pub fn render(&self) -> String {
        let Some(cp) = &self.checkpoint else {
            return format!(
                "no checkpoint for {} in {}: nothing to resume\n",
                self.job, self.store
            );
        };
        let mut out = format!(
            "job {} (migration {}, started {}), checkpoint in {}\n",
            self.job, cp.migration_id, cp.started_at, self.store
        );
        if let Some(age) = self.age_secs {
            out.push_str(&format!("  saved {age}s ago, tool {}\n", cp.tool_version));
        }
        match &self.live {
            Some(_) => {
                out.push_str(&format!(
                    "  running now ({}): {}\n",
                    self.current_state, self.summary
                ));
                for t in &self.tables {
                    out.push_str(&format!("    {}\n", t.line()));
                }
            }
            None => out.push_str("  no wraith process answers on its control socket\n"),
        }
        for t in &cp.tables {
            out.push_str(&format!(
                "  {}: {}, {} of ~{} rows copied\n",
                t.source.qualified_name(),
                t.status(),
                t.rows_copied,
                t.rows_total
            ));
            if let Some(p) = &t.change_stream.position {
                out.push_str(&format!("    binlog position {p}\n"));
            }
            for e in &t.engines {
                out.push_str(&format!(
                    "    engine {} ({}): {}\n",
                    e.engine_id,
                    e.uuid,
                    e.status()
                ));
            }
        }
        if let Some(w) = &cp.revert_window {
            match w.stage {
                wraith_checkpoints::WindowStage::Pending => {
                    out.push_str("  revert window: opens after the cut-over\n")
                }
                _ => out.push_str(&format!("  revert window: {}\n", self.summary)),
            }
            for t in &w.tables {
                out.push_str(&format!(
                    "    {}.{}: applied back up to {}{}, compared up to {}\n",
                    t.schema,
                    t.table,
                    t.position,
                    if t.past_rename {
                        ""
                    } else {
                        " (before the cut-over's RENAME)"
                    },
                    t.verified
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |v| v.to_string())
                ));
            }
        }
        for (table, ok) in &self.resumable {
            out.push_str(&format!(
                "  {table}: {}\n",
                if *ok {
                    "resumable: `wraith run CONFIG` continues it"
                } else {
                    "NOT resumable: the server purged the saved binlog position; `wraith run --fresh CONFIG` starts over"
                }
            ));
        }
        match (self.binlog_retention_secs, &self.oldest_binlog) {
            (Some(r), _) => out.push_str(&format!(
                "  the server keeps binlogs for {}; a paused run stays resumable until its saved position's file is purged (oldest kept now: {})\n",
                humantime::format_duration(Duration::from_secs(r)),
                self.oldest_binlog.as_deref().unwrap_or("none")
            )),
            (None, _) => out.push_str("  the server keeps binlogs until they are purged by hand\n"),
        }
        out
    }
}

/// The state a rerun takes a table up in, after its saved stage (a stopped
/// run's tables show it in `wraith status`).
fn resumes_in(stage: TableStage) -> State {
    match stage {
        TableStage::Pending | TableStage::ShadowCreated => State::Initial,
        TableStage::Copying => State::CopyRows,
        TableStage::CopyDone => State::RestoreSecondaryIndexes,
        TableStage::IndexesRestored => State::AnalyzeTable,
        TableStage::Checksummed => State::PostChecksum,
        TableStage::CuttingOver => State::CutOver,
        TableStage::CutOver | TableStage::Done => State::Close,
    }
}

/// Errors of `wraith status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Connection(String),
}

/// Reads the job's checkpoint and what the server says about resuming it.
pub async fn status(config: &Config) -> Result<StatusReport, StatusError> {
    let opts = crate::server::connection_opts(config.target()).map_err(StatusError::Connection)?;
    let pool = crate::server::pool(opts, 2);
    let store = open_store(config, &pool);
    let key = job_key(config);
    let checkpoint = store.load(&key).await?;
    let mut conn = pool
        .get_conn()
        .await
        .context(|| format!("connecting to {}", config.target().describe()))?;
    let oldest = oldest_binlog(&mut conn).await?;
    let retention = binlog_retention(&mut conn).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let resumable = checkpoint
        .iter()
        .flat_map(|cp| cp.tables.iter())
        .map(|t| {
            let ok = match (&t.change_stream.position, &oldest) {
                (Some(p), Some(o)) => wraith_checkpoints::compare_binlog_files(&p.file, o).is_ge(),
                (Some(_), None) => false,
                (None, _) => true,
            };
            (t.source.qualified_name(), ok)
        })
        .collect();
    drop(conn);
    let _ = pool.disconnect().await;
    let socket = checkpoint
        .as_ref()
        .and_then(|c| c.control_socket.clone())
        .map(std::path::PathBuf::from)
        .or_else(|| config.control.socket.clone())
        .unwrap_or_else(|| crate::control::default_socket_path(config));
    let live = crate::control::query_status(&socket, std::time::Duration::from_secs(2)).await;
    let (current_state, summary, tables) = match (&live, &checkpoint) {
        (Some(l), _) => (
            l["current_state"].as_str().unwrap_or("").to_string(),
            l["summary"].as_str().unwrap_or("").to_string(),
            serde_json::from_value(l["tables"].clone()).unwrap_or_default(),
        ),
        (None, Some(cp)) => {
            let tables: Vec<crate::progress::TableProgress> = cp
                .tables
                .iter()
                .map(|t| {
                    let copy_done = t.stage() >= TableStage::CopyDone;
                    crate::progress::TableProgress {
                        table_name: t.source.table.clone(),
                        rows_copied: t.rows_copied,
                        rows_total: t.rows_total,
                        is_complete: copy_done,
                        state: resumes_in(t.stage()),
                        pct: crate::progress::percent(t.rows_copied, t.rows_total, copy_done),
                        // Nothing streams while no process runs.
                        changes_received: 0,
                        changes_applied: 0,
                        changes_backlog: 0,
                        lag_secs: 0.0,
                        eta: None,
                    }
                })
                .collect();
            let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
            let total: u64 = tables.iter().map(|t| t.rows_total).sum();
            let window = cp
                .revert_window
                .as_ref()
                .filter(|w| w.stage != wraith_checkpoints::WindowStage::Pending);
            if let Some(w) = window {
                let summary = match &w.failed {
                    Some(why) => format!("revert window failed: {why}"),
                    None => format!(
                        "revert window open until {} (no process holds it: `wraith run` holds it \
                         again, `wraith revert` swaps back, `wraith finish` ends it)",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_secs(w.ends_at)
                        )
                    ),
                };
                (State::RevertWindow.to_string(), summary, tables)
            } else {
                (
                    "Stopped".to_string(),
                    format!(
                        "{copied}/{total} rows; stopped at {}; `wraith run` resumes",
                        cp.summary_status()
                    ),
                    tables,
                )
            }
        }
        (None, None) => ("None".to_string(), "no checkpoint".to_string(), Vec::new()),
    };
    Ok(StatusReport {
        current_state,
        summary,
        tables,
        live,
        job: key,
        store: store.describe(),
        age_secs: checkpoint
            .as_ref()
            .map(|c| now.saturating_sub(c.updated_at)),
        checkpoint,
        binlog_retention_secs: retention.map(|d| d.as_secs()),
        oldest_binlog: oldest,
        resumable,
    })
}
