//! [`TableStore`]: checkpoints in a table of the target schema.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};
use tokio::sync::Mutex;

use crate::error::{CheckpointError, StoreFailure};
use crate::model::TaskCheckpoint;
use crate::store::{self, check_key, CheckpointStore};

/// The checkpoint table's name, in the target schema.
pub const CHECKPOINT_TABLE: &str = "_wraith_checkpoint";

/// The columns of [`CHECKPOINT_TABLE`], in order.
pub const CHECKPOINT_COLUMNS: &[&str] = &[
    "job",
    "format_version",
    "tool_version",
    "migration_id",
    "status",
    "body",
    "updated_at",
];

const ER_NO_SUCH_TABLE: u16 = 1146;

/// Checkpoints in `` `schema`.`_wraith_checkpoint` ``, one row per job: the
/// default store, so a checkpoint lives and dies with the data it describes.
///
/// ```sql
/// CREATE TABLE `_wraith_checkpoint` (
///   job            VARCHAR(255) NOT NULL PRIMARY KEY, -- the key
///   format_version INT UNSIGNED NOT NULL,
///   tool_version   VARCHAR(64)  NOT NULL,
///   migration_id   CHAR(36)     NOT NULL,
///   status         VARCHAR(64)  NOT NULL,             -- TaskCheckpoint::summary_status
///   body           LONGTEXT     NOT NULL,             -- the checkpoint, JSON
///   updated_at     TIMESTAMP(6) NOT NULL              -- when the row was written
/// )
/// ```
///
/// `body` is authoritative; the other columns repeat parts of it so that a
/// `SELECT` shows the state, and `format_version` is checked before the body
/// is parsed. The age [`crate::validate`] uses is the body's `updated_at`
/// (edit it with `JSON_SET(body, '$.updated_at', ...)`).
///
/// The table is created by the first save if it is missing (loads and
/// removes never create it: a missing table is no checkpoint). A save is one
/// `INSERT ... ON DUPLICATE KEY UPDATE` in a transaction. A table of that name
/// without these columns is refused ([`StoreFailure::UnexpectedTable`]), not
/// altered.
pub struct TableStore {
    pool: Pool,
    schema: String,
    /// Whether this store has seen the table with the right columns.
    checked: Mutex<bool>,
}

impl TableStore {
    pub fn new(pool: Pool, schema: impl Into<String>) -> TableStore {
        TableStore {
            pool,
            schema: schema.into(),
            checked: Mutex::new(false),
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `` `schema`.`_wraith_checkpoint` ``.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(CHECKPOINT_TABLE))
    }

    /// The `CREATE TABLE` statement the store runs when the table is missing.
    pub fn create_statement(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n\
             \x20 job VARCHAR(255) NOT NULL COMMENT 'the job key, e.g. schema.table',\n\
             \x20 format_version INT UNSIGNED NOT NULL,\n\
             \x20 tool_version VARCHAR(64) NOT NULL,\n\
             \x20 migration_id CHAR(36) NOT NULL,\n\
             \x20 status VARCHAR(64) NOT NULL,\n\
             \x20 body LONGTEXT NOT NULL COMMENT 'the checkpoint as JSON; authoritative',\n\
             \x20 updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n\
             \x20 PRIMARY KEY (job)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin \
             COMMENT='wraith checkpoints, one row per job'",
            self.qualified_table()
        )
    }

    /// Makes sure the table exists with the expected columns (once per store,
    /// again after the table went missing).
    async fn ensure_table(&self) -> Result<(), CheckpointError> {
        let mut checked = self.checked.lock().await;
        if *checked {
            return Ok(());
        }
        let write = |source: mysql_async::Error| CheckpointError::CouldNotWriteCheckpoint {
            store: self.describe(),
            source: source.into(),
        };
        let mut conn = self.pool.get_conn().await.map_err(write)?;
        let present: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.schema, CHECKPOINT_TABLE),
            )
            .await
            .map_err(write)?;
        if present.is_empty() {
            conn.query_drop(self.create_statement())
                .await
                .map_err(write)?;
            tracing::info!(store = %self.describe(), "checkpoint table created");
        } else {
            let missing: Vec<String> = CHECKPOINT_COLUMNS
                .iter()
                .filter(|c| !present.iter().any(|p| p.eq_ignore_ascii_case(c)))
                .map(|c| c.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(CheckpointError::CouldNotWriteCheckpoint {
                    store: self.describe(),
                    source: StoreFailure::UnexpectedTable {
                        table: self.qualified_table(),
                        missing,
                    },
                });
            }
        }
        *checked = true;
        Ok(())
    }

    async fn upsert(&self, key: &str, cp: &TaskCheckpoint, body: &str) -> Result<(), StoreFailure> {
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        tx.exec_drop(
            format!(
                "INSERT INTO {} (job, format_version, tool_version, migration_id, status, body, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, NOW(6)) \
                 ON DUPLICATE KEY UPDATE format_version = VALUES(format_version), \
                 tool_version = VALUES(tool_version), migration_id = VALUES(migration_id), \
                 status = VALUES(status), body = VALUES(body), updated_at = VALUES(updated_at)",
                self.qualified_table()
            ),
            (
                key,
                cp.format_version,
                &cp.tool_version,
                cp.migration_id.to_string(),
                cp.summary_status(),
                body,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

fn is_no_such_table(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == ER_NO_SUCH_TABLE)
}

#[async_trait]
impl CheckpointStore for TableStore {
    async fn load(&self, key: &str) -> Result<Option<TaskCheckpoint>, CheckpointError> {
        check_key(self, key)?;
        let read = |source: mysql_async::Error| CheckpointError::CouldNotReadCheckpoint {
            store: self.describe(),
            source: source.into(),
        };
        let mut conn = self.pool.get_conn().await.map_err(read)?;
        let row: Option<(u64, Option<String>, String)> = match conn
            .exec_first(
                format!(
                    "SELECT format_version, tool_version, body FROM {} WHERE job = ?",
                    self.qualified_table()
                ),
                (key,),
            )
            .await
        {
            Ok(row) => row,
            Err(e) if is_no_such_table(&e) => None,
            Err(e) => return Err(read(e)),
        };
        let Some((format_version, tool_version, body)) = row else {
            tracing::debug!(store = %self.describe(), key, "no checkpoint");
            return Ok(None);
        };
        store::check_format(&self.describe(), key, format_version, || tool_version)?;
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|source| CheckpointError::Corrupt {
                store: self.describe(),
                key: key.to_string(),
                source,
            })?;
        let cp = store::decode(&self.describe(), key, value)?;
        tracing::debug!(store = %self.describe(), key, updated_at = cp.updated_at, "checkpoint loaded");
        Ok(Some(cp))
    }

    async fn save(&self, key: &str, cp: &TaskCheckpoint) -> Result<(), CheckpointError> {
        check_key(self, key)?;
        let write = |source: StoreFailure| {
            tracing::warn!(store = %self.describe(), key, error = %source, "checkpoint not written");
            CheckpointError::CouldNotWriteCheckpoint {
                store: self.describe(),
                source,
            }
        };
        let body = store::encode(cp)
            .and_then(|v| serde_json::to_string(&v).map_err(StoreFailure::Encode))
            .map_err(write)?;
        self.ensure_table().await?;
        match self.upsert(key, cp, &body).await {
            Ok(()) => {}
            Err(StoreFailure::Sql(e)) if is_no_such_table(&e) => {
                // Dropped since we checked (say, by `--fresh` of another run): once more.
                *self.checked.lock().await = false;
                self.ensure_table().await?;
                self.upsert(key, cp, &body).await.map_err(write)?;
            }
            Err(e) => return Err(write(e)),
        }
        tracing::debug!(store = %self.describe(), key, status = %cp.summary_status(), "checkpoint saved");
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), CheckpointError> {
        check_key(self, key)?;
        let remove = |source: mysql_async::Error| CheckpointError::CouldNotRemoveCheckpoint {
            store: self.describe(),
            key: key.to_string(),
            source: source.into(),
        };
        let mut conn = self.pool.get_conn().await.map_err(remove)?;
        match conn
            .exec_drop(
                format!("DELETE FROM {} WHERE job = ?", self.qualified_table()),
                (key,),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_no_such_table(&e) => {}
            Err(e) => return Err(remove(e)),
        }
        tracing::debug!(store = %self.describe(), key, "checkpoint removed");
        Ok(())
    }

    fn describe(&self) -> String {
        format!("table {}", self.qualified_table())
    }
}
