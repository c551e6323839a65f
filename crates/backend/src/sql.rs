//! The `sql` backend: the engine is the shadow table itself.
//!
//! **For:** copying rows straight into the target with batched multi-row
//! `INSERT INTO ... VALUES (...),(...)`, on any MySQL-protocol server (MySQL,
//! MariaDB, TiDB). Simple, no local disk, durable as soon as a statement
//! commits.
//!
//! **Leaves to others:** which rows to write and when (the engine crate);
//! verification afterwards (the engine crate's checksum); the session,
//! statement and duplicate handling it shares with every SQL writer
//! ([`crate::write`]).
//!
//! **Algorithm:** each writer takes its own connection from the pool and sets
//! the session up for exactness ([`crate::write::prepare_session`]): `SET NAMES binary`
//! (strings are sent as `_charset X'..'` literals, see
//! [`crate::Value::write_sql_literal`]), `time_zone = '+00:00'` (TIMESTAMPs
//! are not shifted; readers must use the same; a column the server's own
//! ALTER converts in its time zone carries a [`crate::ZoneShift`] and each
//! value is converted explicitly), a strict `sql_mode` without
//! `NO_ZERO_DATE`/`NO_ZERO_IN_DATE` (so `0000-00-00` is stored as is) and with
//! `NO_AUTO_VALUE_ON_ZERO` (an id 0 stays 0). Rows are appended to one
//! statement until it reaches `max_batch_bytes` (capped below the server's
//! `max_allowed_packet`, read once), then sent; every `append_rows` call
//! sends what it was given before returning, so a returned call is durable.
//!
//! The statement is a plain `INSERT`, never `INSERT IGNORE` or `REPLACE`: a
//! duplicate key (error 1062) fails the batch and becomes
//! [`BackendError::DuplicateDetected`] with the key and index the server
//! names. Prepared `exec_batch` was the other candidate; multi-row text
//! statements need no statement cache per column list and carry the exact
//! literal conversions, and the server's bulk path for them is the same.
//!
//! `import`, `cleanup` and `flush` are no-ops; `reset` is refused (the shadow
//! table holds other engines' rows and applied changes, so it cannot be
//! emptied for one engine).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::engine::{
    Backend, ChunkFlushStatus, EngineConfig, EngineWriter, ImportStats, LocalWriterConfig,
    TargetTable,
};
use crate::error::BackendError;
use crate::value::{ColumnSpec, Row};
use crate::write::{self, BatchStatement};

/// Settings of the sql backend.
#[derive(Clone, Debug)]
pub struct SqlBackendConfig {
    /// Largest INSERT statement to send; always capped below the server's
    /// `max_allowed_packet`. Default 1 MiB.
    pub max_batch_bytes: usize,
}

impl Default for SqlBackendConfig {
    fn default() -> Self {
        SqlBackendConfig {
            max_batch_bytes: 1 << 20,
        }
    }
}

pub use crate::write::{prepare_session, SESSION_SETUP};

/// Reads `@@max_allowed_packet` once per backend.
pub(crate) async fn read_max_packet(
    cell: &OnceCell<usize>,
    conn: &mut Conn,
    table: &str,
) -> Result<usize, BackendError> {
    cell.get_or_try_init(|| async {
        let v: Option<u64> = conn
            .query_first("SELECT @@max_allowed_packet")
            .await
            .map_err(|e| BackendError::sql("reading max_allowed_packet", table, e))?;
        Ok::<usize, BackendError>(v.unwrap_or(4 << 20) as usize)
    })
    .await
    .copied()
}

/// The sql backend.
pub struct SqlBackend {
    pool: Pool,
    cfg: SqlBackendConfig,
    max_packet: OnceCell<usize>,
    engines: Mutex<HashMap<Uuid, Arc<TargetTable>>>,
}

impl SqlBackend {
    /// A backend writing through `pool`.
    pub fn new(pool: Pool, cfg: SqlBackendConfig) -> SqlBackend {
        SqlBackend {
            pool,
            cfg,
            max_packet: OnceCell::new(),
            engines: Mutex::new(HashMap::new()),
        }
    }

    fn target(&self, engine: Uuid) -> Result<Arc<TargetTable>, BackendError> {
        self.engines
            .lock()
            .map_err(|_| BackendError::EngineState {
                engine,
                message: "engine registry poisoned".into(),
            })?
            .get(&engine)
            .cloned()
            .ok_or(BackendError::EngineNotFound { engine, dir: None })
    }
}

#[async_trait]
impl Backend for SqlBackend {
    fn name(&self) -> &'static str {
        "sql"
    }

    async fn open_engine(&self, cfg: &EngineConfig, engine_uuid: Uuid) -> Result<(), BackendError> {
        let mut map = self.engines.lock().map_err(|_| BackendError::EngineState {
            engine: engine_uuid,
            message: "engine registry poisoned".into(),
        })?;
        map.insert(engine_uuid, Arc::new(cfg.target.clone()));
        Ok(())
    }

    async fn close_engine(
        &self,
        _cfg: &EngineConfig,
        engine_uuid: Uuid,
    ) -> Result<(), BackendError> {
        if let Ok(mut map) = self.engines.lock() {
            map.remove(&engine_uuid);
        }
        Ok(())
    }

    async fn import_engine(
        &self,
        _engine_uuid: Uuid,
        _region_split_size: u64,
        _region_split_keys: u64,
    ) -> Result<ImportStats, BackendError> {
        Ok(ImportStats::default())
    }

    async fn cleanup_engine(&self, _engine_uuid: Uuid) -> Result<(), BackendError> {
        Ok(())
    }

    async fn flush_engine(&self, _engine_uuid: Uuid) -> Result<(), BackendError> {
        Ok(())
    }

    async fn flush_all_engines(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn reset_engine(&self, _engine_uuid: Uuid) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: "sql",
            operation: "reset an engine",
            hint: "its rows are already in the shadow table among other engines' rows; \
                   recreate the shadow table and restart the copy",
        })
    }

    async fn local_writer(
        &self,
        _cfg: &LocalWriterConfig,
        engine_uuid: Uuid,
    ) -> Result<Box<dyn EngineWriter>, BackendError> {
        let target = self.target(engine_uuid)?;
        let name = target.display_name();
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| BackendError::sql("connecting", &name, e))?;
        prepare_session(&mut conn)
            .await
            .map_err(|e| BackendError::sql("setting up the session", &name, e))?;
        let max_packet = read_max_packet(&self.max_packet, &mut conn, &name).await?;
        // Leave room for the packet header and the statement's tail.
        let limit = self
            .cfg
            .max_batch_bytes
            .min(max_packet.saturating_sub(64 << 10).max(4 << 10));
        Ok(Box::new(SqlWriter {
            conn,
            target,
            limit,
        }))
    }

    async fn close(&self) {
        if let Ok(mut map) = self.engines.lock() {
            map.clear();
        }
    }
}

struct SqlWriter {
    conn: Conn,
    target: Arc<TargetTable>,
    limit: usize,
}

impl SqlWriter {
    /// A deadlock with the change applier rolled the statement back: it is
    /// sent again; a row that moved while the copy read it is skipped.
    async fn send(&mut self, stmt: &BatchStatement) -> Result<(), BackendError> {
        write::send_insert(&mut self.conn, &stmt.sql(), &self.target, "inserting rows").await
    }
}

#[async_trait]
impl EngineWriter for SqlWriter {
    async fn append_rows(
        &mut self,
        columns: &[String],
        rows: Vec<Row>,
    ) -> Result<(), BackendError> {
        if rows.is_empty() {
            return Ok(());
        }
        // The statement borrows the target while `send` borrows the writer.
        let target = self.target.clone();
        let positions = target.resolve_columns(columns)?;
        let specs: Vec<&ColumnSpec> = positions.iter().map(|&p| &target.columns[p]).collect();
        let head = write::insert_head("INSERT", &target, specs.iter().map(|c| c.name.as_str()));
        let mut stmt = BatchStatement::values(&head, "", self.limit);
        let mut tuple = Vec::with_capacity(256);
        for row in &rows {
            if row.len() != positions.len() {
                return Err(BackendError::InvalidInput {
                    message: format!(
                        "a row for {} has {} values for {} columns",
                        self.target.display_name(),
                        row.len(),
                        positions.len()
                    ),
                });
            }
            tuple.clear();
            write::write_tuple(row.iter().zip(specs.iter().copied()), &mut tuple);
            if !stmt.fits(tuple.len()) {
                self.send(&stmt).await?;
                stmt.clear();
            }
            stmt.push(&tuple);
        }
        if !stmt.is_empty() {
            self.send(&stmt).await?;
        }
        Ok(())
    }

    fn is_synced(&self) -> bool {
        true
    }

    async fn close(self: Box<Self>) -> Result<ChunkFlushStatus, BackendError> {
        Ok(ChunkFlushStatus::done())
    }
}
