//! # The registry: schema changes as requests, kept in a table on the server
//!
//! **For:** `wraith submit`, `wraith migrations` and `wraith serve`. A team
//! files a schema change as a request; a service applies the requests of a
//! server one after another, as Vitess's Online DDL executor does with
//! `_vt.schema_migrations`. Every request is one row of
//! `` `<schema>`.`_wraith_migrations` `` (`[registry] schema`, default
//! `_wraith`, created on first use) with a UUID, its tables and ALTERs, its
//! options, a [`Status`], timestamps, progress and a message; every status
//! change is also a row of `_wraith_migrations_log`, so the history of a
//! request can be read with any SQL client.
//!
//! ```text
//! submit ─► requested ─(check passed)─► queued ─(serve picks it)─► running ─► complete
//!                    └─(check refused)─► failed            │ ▲        └──► failed ─(retry)─► queued
//!                                                          ▼ │(complete)
//!                                                         ready (postponed: shadow in sync)
//! cancel: queued ─► cancelled at once; running/ready ─► cancel_requested ─(serve)─► cancelled
//! ```
//!
//! **The rules:**
//! - A status changes only by a conditional `UPDATE … WHERE status IN
//!   (…)`, in one transaction with its log row: two actors (an operator's
//!   `cancel` and `serve` finishing the run) can never both win.
//! - The operator's wishes (`cancel_requested`, `postpone_completion`) are
//!   columns the commands set and `serve` reads on every poll, so a command
//!   works from any host and whether or not `serve` is up; `serve` carries
//!   them out at its next safe point.
//! - A request holds data, never a statement: its tables and ALTERs are
//!   validated as a job config ([`request`]) and quoted by the engine like
//!   any config, and the registry's own statements bind every value.
//! - The definition is versioned (the table comment `wraith registry vN`):
//!   a registry written by a newer wraith is refused, not misread.
//!
//! **Leaves to others:** running a request ([`serve`], through the same
//! engine as `wraith run`), the page and metrics (the CLI).

pub mod request;
pub mod serve;

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Row};
use serde::Serialize;

use crate::config::Config;
use crate::server::{self, quote_ident, Context, DbError};

pub use request::{Request, RequestOptions, RequestTable, ServerConfig};

/// The requests' table, in the registry schema.
pub const MIGRATIONS_TABLE: &str = "_wraith_migrations";
/// One row per status change.
pub const LOG_TABLE: &str = "_wraith_migrations_log";
/// The definition this wraith writes and reads.
const VERSION: u32 = 1;

/// What a registry operation ran into.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Connection(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no request {0} in the registry; `wraith migrations SERVER_CONFIG list` shows them")]
    NotFound(String),
    /// The request is in a status the operation does not apply to.
    #[error("{what}: request {uuid} is {status}; {hint}")]
    WrongStatus {
        uuid: String,
        status: Status,
        what: String,
        hint: String,
    },
    #[error("{0}")]
    Version(String),
    #[error(
        "another wraith serve holds this registry ({lock}, connection {holder}); \
         one serve per server: stop it first, or give this one its own [registry] schema"
    )]
    AnotherServe { lock: String, holder: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded; its check has not passed yet.
    Requested,
    /// Checked; waits for `serve`.
    Queued,
    /// `serve` runs it.
    Running,
    /// Copied and checked; the shadow is kept in sync until `complete`.
    Ready,
    Complete,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Requested,
        Status::Queued,
        Status::Running,
        Status::Ready,
        Status::Complete,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Ready => "ready",
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing more happens to the request (short of `retry`).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Complete | Status::Failed | Status::Cancelled)
    }

    /// Whether `serve` has (or had, before a crash) a run of it.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Ready)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One request, as the registry holds it (`list`, `show`, the page's JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    #[serde(skip)]
    pub id: u64,
    pub uuid: String,
    pub status: Status,
    #[serde(rename = "schema")]
    pub schema_name: String,
    pub tables: Vec<String>,
    /// Readable: `ALTER TABLE `t` …`, one per table.
    pub alter: String,
    /// The engine's state while it runs (`CopyRows`, `WaitingOnSentinelTable`, …).
    pub stage: String,
    pub progress_pct: f64,
    pub eta_seconds: Option<u64>,
    pub rows_copied: u64,
    pub rows_total: u64,
    pub rows_per_sec: f64,
    pub message: String,
    pub added_at: Option<String>,
    pub started_at: Option<String>,
    pub ready_at: Option<String>,
    pub completed_at: Option<String>,
    /// `added_at` as `YYYYMMDDhhmmss`, for names.
    pub added_timestamp: String,
    pub retries: u32,
    pub postpone_completion: bool,
    pub in_order_completion: bool,
    pub cancel_requested: bool,
    pub cancelled_by: Option<String>,
    pub options: String,
    pub checkpoint_key: String,
    pub migration_uuid: Option<String>,
    pub served_by: Option<String>,
    /// The request itself (tables and options), as submitted.
    #[serde(skip)]
    pub request: String,
}

impl Migration {
    /// The request as submitted.
    pub fn request(&self) -> Result<Request, RegistryError> {
        serde_json::from_str(&self.request).map_err(|e| {
            RegistryError::Invalid(format!(
                "request {} in the registry cannot be read ({e}); was it edited by hand?",
                self.uuid
            ))
        })
    }
}

/// One status change of a request.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub at: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub message: String,
}

/// Progress figures `serve` writes while a request runs.
#[derive(Debug, Clone, Default)]
pub struct ProgressRow {
    pub stage: String,
    pub progress_pct: f64,
    pub eta_seconds: Option<u64>,
    pub rows_copied: u64,
    pub rows_total: u64,
    pub rows_per_sec: f64,
    pub migration_uuid: Option<String>,
}

/// A registry on one server.
pub struct Registry {
    pool: Pool,
    schema: String,
    server: String,
}

const COLUMNS: &str = "id, uuid, schema_name, table_names, alter_statement, request, options, \
    status, postpone_completion, in_order_completion, cancel_requested, cancelled_by, \
    DATE_FORMAT(added_at, '%Y-%m-%d %H:%i:%s') AS added_at, \
    DATE_FORMAT(started_at, '%Y-%m-%d %H:%i:%s') AS started_at, \
    DATE_FORMAT(ready_at, '%Y-%m-%d %H:%i:%s') AS ready_at, \
    DATE_FORMAT(completed_at, '%Y-%m-%d %H:%i:%s') AS completed_at, \
    added_timestamp, stage, progress_pct, eta_seconds, rows_copied, rows_total, rows_per_sec, \
    message, retries, checkpoint_key, migration_uuid, served_by";

impl Registry {
    /// Connects to `config`'s source server and creates the registry on
    /// first use; a registry of another definition version is refused.
    pub async fn open(config: &Config) -> Result<Registry, RegistryError> {
        let opts = server::connection_opts(&config.source).map_err(RegistryError::Connection)?;
        let pool = server::pool(opts, 8);
        let registry = Registry {
            pool,
            schema: config.registry.schema.clone(),
            server: config.source.describe(),
        };
        registry.ensure().await?;
        Ok(registry)
    }

    /// `user@host:port/db`, for reports.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `schema._wraith_migrations`, for reports.
    pub fn name(&self) -> String {
        format!("{}.{MIGRATIONS_TABLE}", self.schema)
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub async fn conn(&self) -> Result<Conn, RegistryError> {
        Ok(self
            .pool
            .get_conn()
            .await
            .context(|| format!("connecting to {} for the registry", self.server))?)
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    async fn ensure(&self) -> Result<(), RegistryError> {
        let mut conn = self.conn().await?;
        let comment: Option<String> = conn
            .exec_first(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.schema, MIGRATIONS_TABLE),
            )
            .await
            .context(|| "reading the registry's version".into())?;
        if let Some(comment) = comment {
            let version = comment
                .strip_prefix("wraith registry v")
                .and_then(|v| v.parse::<u32>().ok());
            return match version {
                Some(VERSION) => Ok(()),
                Some(v) if v > VERSION => Err(RegistryError::Version(format!(
                    "{} was written by a newer wraith (definition v{v}; this one knows v{VERSION}); \
                     use that wraith, or another [registry] schema",
                    self.name()
                ))),
                _ => Err(RegistryError::Version(format!(
                    "{} exists but is not a wraith registry (its comment is {comment:?}); \
                     give [registry] schema another name",
                    self.name()
                ))),
            };
        }
        let schema = quote_ident(&self.schema);
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {schema} DEFAULT CHARACTER SET utf8mb4"
        ))
        .await
        .context(|| format!("creating the registry schema {schema}"))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                uuid CHAR(36) NOT NULL,
                strategy VARCHAR(16) NOT NULL DEFAULT 'wraith',
                schema_name VARCHAR(64) NOT NULL,
                table_names VARCHAR(2048) NOT NULL,
                alter_statement MEDIUMTEXT NOT NULL,
                request MEDIUMTEXT NOT NULL,
                options TEXT NOT NULL,
                status ENUM('requested','queued','running','ready','complete','failed','cancelled') NOT NULL,
                postpone_completion TINYINT NOT NULL DEFAULT 0,
                in_order_completion TINYINT NOT NULL DEFAULT 0,
                cancel_requested TINYINT NOT NULL DEFAULT 0,
                cancelled_by VARCHAR(255) NULL,
                added_at DATETIME(6) NOT NULL,
                started_at DATETIME(6) NULL,
                ready_at DATETIME(6) NULL,
                completed_at DATETIME(6) NULL,
                added_timestamp CHAR(14) NOT NULL,
                stage VARCHAR(64) NOT NULL DEFAULT '',
                progress_pct DOUBLE NOT NULL DEFAULT 0,
                eta_seconds BIGINT UNSIGNED NULL,
                rows_copied BIGINT UNSIGNED NOT NULL DEFAULT 0,
                rows_total BIGINT UNSIGNED NOT NULL DEFAULT 0,
                rows_per_sec DOUBLE NOT NULL DEFAULT 0,
                message TEXT NOT NULL,
                retries INT UNSIGNED NOT NULL DEFAULT 0,
                checkpoint_key VARCHAR(2048) NOT NULL DEFAULT '',
                migration_uuid CHAR(36) NULL,
                served_by VARCHAR(255) NULL,
                updated_at DATETIME(6) NOT NULL,
                UNIQUE KEY uuid (uuid),
                KEY status (status, id)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='wraith registry v{VERSION}'",
            self.table(MIGRATIONS_TABLE)
        ))
        .await
        .context(|| format!("creating {}", self.name()))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                uuid CHAR(36) NOT NULL,
                at DATETIME(6) NOT NULL,
                from_status VARCHAR(16) NULL,
                to_status VARCHAR(16) NOT NULL,
                message TEXT NOT NULL,
                KEY uuid (uuid, id)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='wraith registry v{VERSION}'",
            self.table(LOG_TABLE)
        ))
        .await
        .context(|| format!("creating {}.{LOG_TABLE}", self.schema))?;
        Ok(())
    }

    /// Records a request as `requested`; returns its UUID.
    pub async fn insert(
        &self,
        schema_name: &str,
        request: &Request,
    ) -> Result<String, RegistryError> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let json = serde_json::to_string(request)
            .map_err(|e| RegistryError::Invalid(format!("encoding the request: {e}")))?;
        let mut conn = self.conn().await?;
        let mut tx = begin(&mut conn).await?;
        tx.exec_drop(
            format!(
                "INSERT INTO {} (uuid, schema_name, table_names, alter_statement, request, options, \
                 status, postpone_completion, in_order_completion, added_at, added_timestamp, \
                 message, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 'requested', ?, ?, UTC_TIMESTAMP(6), \
                 DATE_FORMAT(UTC_TIMESTAMP(), '%Y%m%d%H%i%s'), '', UTC_TIMESTAMP(6))",
                self.table(MIGRATIONS_TABLE)
            ),
            (
                &uuid,
                schema_name,
                request.table_names().join(","),
                request.alter_statement(),
                json,
                request.options.describe(),
                request.options.postpone_completion,
                request.options.in_order_completion,
            ),
        )
        .await
        .context(|| format!("recording the request in {}", self.name()))?;
        self.log(&mut tx, &uuid, None, Status::Requested, "submitted")
            .await?;
        tx.commit()
            .await
            .context(|| "committing the request".into())?;
        Ok(uuid)
    }

    async fn log(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        uuid: &str,
        from: Option<Status>,
        to: Status,
        message: &str,
    ) -> Result<(), RegistryError> {
        tx.exec_drop(
            format!(
                "INSERT INTO {} (uuid, at, from_status, to_status, message) \
                 VALUES (?, UTC_TIMESTAMP(6), ?, ?, ?)",
                self.table(LOG_TABLE)
            ),
            (uuid, from.map(Status::as_str), to.as_str(), message),
        )
        .await
        .context(|| format!("logging a status change in {}.{LOG_TABLE}", self.schema))?;
        Ok(())
    }

    /// Moves `uuid` to `to` if it is in one of `from`, with `message` (and
    /// the timestamp `to` stands for); `Ok(false)` when it was not.
    pub async fn transition(
        &self,
        uuid: &str,
        from: &[Status],
        to: Status,
        message: &str,
    ) -> Result<bool, RegistryError> {
        let mut conn = self.conn().await?;
        let mut tx = begin(&mut conn).await?;
        let current: Option<String> = tx
            .exec_first(
                format!(
                    "SELECT status FROM {} WHERE uuid = ? FOR UPDATE",
                    self.table(MIGRATIONS_TABLE)
                ),
                (uuid,),
            )
            .await
            .context(|| format!("reading request {uuid}"))?;
        let Some(current) = current.as_deref().and_then(Status::parse) else {
            return Err(RegistryError::NotFound(uuid.to_string()));
        };
        if !from.contains(&current) {
            return Ok(false);
        }
        let stamp = match to {
            Status::Running => ", started_at = COALESCE(started_at, UTC_TIMESTAMP(6))",
            Status::Ready => ", ready_at = UTC_TIMESTAMP(6)",
            Status::Complete => {
                ", completed_at = UTC_TIMESTAMP(6), progress_pct = 100, eta_seconds = 0"
            }
            Status::Failed | Status::Cancelled => ", completed_at = UTC_TIMESTAMP(6)",
            Status::Queued => ", started_at = NULL, ready_at = NULL, completed_at = NULL",
            Status::Requested => "",
        };
        tx.exec_drop(
            format!(
                "UPDATE {} SET status = ?, message = ?, updated_at = UTC_TIMESTAMP(6){stamp} \
                 WHERE uuid = ?",
                self.table(MIGRATIONS_TABLE)
            ),
            (to.as_str(), message, uuid),
        )
        .await
        .context(|| format!("moving request {uuid} to {to}"))?;
        self.log(&mut tx, uuid, Some(current), to, message).await?;
        tx.commit()
            .await
            .context(|| "committing a status change".into())?;
        Ok(true)
    }

    /// Sets `message` without a status change.
    pub async fn set_message(&self, uuid: &str, message: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE {} SET message = ?, updated_at = UTC_TIMESTAMP(6) WHERE uuid = ?",
                self.table(MIGRATIONS_TABLE)
            ),
            (message, uuid),
        )
        .await
        .context(|| format!("updating request {uuid}"))?;
        Ok(())
    }

    /// Writes a running request's figures.
    pub async fn progress(&self, uuid: &str, p: &ProgressRow) -> Result<(), RegistryError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE {} SET stage = ?, progress_pct = ?, eta_seconds = ?, rows_copied = ?, \
                 rows_total = ?, rows_per_sec = ?, \
                 migration_uuid = COALESCE(?, migration_uuid), updated_at = UTC_TIMESTAMP(6) \
                 WHERE uuid = ?",
                self.table(MIGRATIONS_TABLE)
            ),
            (
                &p.stage,
                p.progress_pct,
                p.eta_seconds,
                p.rows_copied,
                p.rows_total,
                p.rows_per_sec,
                p.migration_uuid.as_deref(),
                uuid,
            ),
        )
        .await
        .context(|| format!("writing the progress of request {uuid}"))?;
        Ok(())
    }

    /// Records which `serve` runs the request and under which checkpoint.
    pub async fn claim(
        &self,
        uuid: &str,
        served_by: &str,
        checkpoint_key: &str,
    ) -> Result<(), RegistryError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE {} SET served_by = ?, checkpoint_key = ?, updated_at = UTC_TIMESTAMP(6) \
                 WHERE uuid = ?",
                self.table(MIGRATIONS_TABLE)
            ),
            (served_by, checkpoint_key, uuid),
        )
        .await
        .context(|| format!("claiming request {uuid}"))?;
        Ok(())
    }

    /// Requests, oldest first; only those in `statuses` when given.
    pub async fn list(&self, statuses: &[Status]) -> Result<Vec<Migration>, RegistryError> {
        let mut conn = self.conn().await?;
        let filter = if statuses.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = statuses
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            format!(" WHERE status IN ({})", list.join(","))
        };
        let rows: Vec<Row> = conn
            .query(format!(
                "SELECT {COLUMNS} FROM {}{filter} ORDER BY id",
                self.table(MIGRATIONS_TABLE)
            ))
            .await
            .context(|| format!("reading {}", self.name()))?;
        rows.into_iter().map(migration_from_row).collect()
    }

    /// Requests left `requested` longer than `secs`: their `submit` died
    /// before its check ended.
    pub async fn stale_requested(&self, secs: u64) -> Result<Vec<String>, RegistryError> {
        let mut conn = self.conn().await?;
        Ok(conn
            .exec(
                format!(
                    "SELECT uuid FROM {} WHERE status = 'requested' \
                     AND added_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND ORDER BY id",
                    self.table(MIGRATIONS_TABLE)
                ),
                (secs,),
            )
            .await
            .context(|| format!("reading {}", self.name()))?)
    }

    /// One request.
    pub async fn get(&self, uuid: &str) -> Result<Migration, RegistryError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(
                format!(
                    "SELECT {COLUMNS} FROM {} WHERE uuid = ?",
                    self.table(MIGRATIONS_TABLE)
                ),
                (uuid,),
            )
            .await
            .context(|| format!("reading request {uuid}"))?;
        match row {
            Some(row) => migration_from_row(row),
            None => Err(RegistryError::NotFound(uuid.to_string())),
        }
    }

    /// A request's status changes, in order.
    pub async fn history(&self, uuid: &str) -> Result<Vec<LogEntry>, RegistryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(String, Option<String>, String, String)> = conn
            .exec(
                format!(
                    "SELECT DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f'), from_status, to_status, message \
                     FROM {} WHERE uuid = ? ORDER BY id",
                    self.table(LOG_TABLE)
                ),
                (uuid,),
            )
            .await
            .context(|| format!("reading the history of request {uuid}"))?;
        Ok(rows
            .into_iter()
            .map(|(at, from_status, to_status, message)| LogEntry {
                at,
                from_status,
                to_status,
                message,
            })
            .collect())
    }

    /// `wraith migrations cancel`: a request not yet running is cancelled
    /// at once; a running one is marked for `serve` to stop.
    pub async fn cancel(&self, uuid: &str, by: &str) -> Result<Status, RegistryError> {
        let message = format!("cancelled by {by}");
        if self
            .transition(
                uuid,
                &[Status::Requested, Status::Queued],
                Status::Cancelled,
                &message,
            )
            .await?
        {
            self.set_cancelled_by(uuid, by).await?;
            return Ok(Status::Cancelled);
        }
        let m = self.get(uuid).await?;
        if !m.status.is_active() {
            return Err(self.wrong(
                &m,
                "cancel",
                "only a queued, running or ready request can be cancelled",
            ));
        }
        let mut conn = self.conn().await?;
        let marked = conn
            .exec_iter(
                format!(
                    "UPDATE {} SET cancel_requested = 1, cancelled_by = ?, message = ?, \
                 updated_at = UTC_TIMESTAMP(6) WHERE uuid = ? AND status IN ('running','ready')",
                    self.table(MIGRATIONS_TABLE)
                ),
                (
                    by,
                    format!("cancel requested by {by}; serve stops it at its next safe point"),
                    uuid,
                ),
            )
            .await
            .context(|| format!("cancelling request {uuid}"))?
            .affected_rows();
        if marked == 0 {
            // It ended between the read and the mark.
            let m = self.get(uuid).await?;
            return Err(self.wrong(&m, "cancel", "it ended before the cancel reached it"));
        }
        Ok(m.status)
    }

    async fn set_cancelled_by(&self, uuid: &str, by: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE {} SET cancelled_by = ? WHERE uuid = ?",
                self.table(MIGRATIONS_TABLE)
            ),
            (by, uuid),
        )
        .await
        .context(|| format!("updating request {uuid}"))?;
        Ok(())
    }

    /// `wraith migrations retry`: a failed or cancelled request is queued again.
    pub async fn retry(&self, uuid: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn().await?;
        let changed = conn
            .exec_iter(
                format!(
                    "UPDATE {} SET retries = retries + 1, cancel_requested = 0, cancelled_by = NULL, \
                     progress_pct = 0, eta_seconds = NULL, rows_copied = 0, rows_per_sec = 0, \
                     stage = '' WHERE uuid = ? AND status IN ('failed','cancelled')",
                    self.table(MIGRATIONS_TABLE)
                ),
                (uuid,),
            )
            .await
            .context(|| format!("retrying request {uuid}"))?
            .affected_rows();
        drop(conn);
        let m = self.get(uuid).await?;
        if changed == 0 {
            return Err(self.wrong(
                &m,
                "retry",
                "only a failed or cancelled request can be retried",
            ));
        }
        let message = format!("retry {}", m.retries);
        if !self
            .transition(
                uuid,
                &[Status::Failed, Status::Cancelled],
                Status::Queued,
                &message,
            )
            .await?
        {
            let m = self.get(uuid).await?;
            return Err(self.wrong(&m, "retry", "it changed while being retried"));
        }
        Ok(())
    }

    /// `complete` (false) or `postpone` (true): whether the request waits at
    /// `ready` for `wraith migrations complete`.
    pub async fn set_postponed(
        &self,
        uuid: &str,
        postponed: bool,
    ) -> Result<Status, RegistryError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE {} SET postpone_completion = ?, updated_at = UTC_TIMESTAMP(6) \
                 WHERE uuid = ? AND status IN ('requested','queued','running','ready')",
                self.table(MIGRATIONS_TABLE)
            ),
            (postponed, uuid),
        )
        .await
        .context(|| format!("updating request {uuid}"))?;
        drop(conn);
        let m = self.get(uuid).await?;
        if m.status.is_terminal() || m.postpone_completion != postponed {
            let what = if postponed { "postpone" } else { "complete" };
            return Err(self.wrong(
                &m,
                what,
                "it has ended; `wraith migrations retry` queues a failed or cancelled one again",
            ));
        }
        Ok(m.status)
    }

    fn wrong(&self, m: &Migration, what: &str, hint: &str) -> RegistryError {
        RegistryError::WrongStatus {
            uuid: m.uuid.clone(),
            status: m.status,
            what: what.to_string(),
            hint: hint.to_string(),
        }
    }

    /// Takes the registry's `serve` lock on `conn` (held as long as the
    /// connection lives); a second `serve` is refused with the holder.
    pub async fn lock_serve(&self, conn: &mut Conn) -> Result<(), RegistryError> {
        let lock = format!("{}.serve", self.schema);
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, 0)", (&lock,))
            .await
            .context(|| format!("taking the lock {lock}"))?;
        if got.flatten() == Some(1) {
            return Ok(());
        }
        let holder: Option<Option<u64>> = conn
            .exec_first("SELECT IS_USED_LOCK(?)", (&lock,))
            .await
            .context(|| format!("reading who holds the lock {lock}"))?;
        Err(RegistryError::AnotherServe {
            lock,
            holder: holder.flatten().unwrap_or(0),
        })
    }
}

async fn begin(conn: &mut Conn) -> Result<mysql_async::Transaction<'_>, RegistryError> {
    Ok(conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .context(|| "starting a registry transaction".into())?)
}

fn migration_from_row(row: Row) -> Result<Migration, RegistryError> {
    fn get<T: mysql_async::prelude::FromValue>(row: &Row, name: &str) -> Result<T, RegistryError> {
        match row.get_opt::<T, _>(name) {
            Some(Ok(v)) => Ok(v),
            _ => Err(RegistryError::Invalid(format!(
                "the registry's column {name} has an unexpected value; was it edited by hand?"
            ))),
        }
    }
    let status: String = get(&row, "status")?;
    let table_names: String = get(&row, "table_names")?;
    Ok(Migration {
        id: get(&row, "id")?,
        uuid: get(&row, "uuid")?,
        status: Status::parse(&status).ok_or_else(|| {
            RegistryError::Invalid(format!("unknown status {status:?} in the registry"))
        })?,
        schema_name: get(&row, "schema_name")?,
        tables: table_names
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        alter: get(&row, "alter_statement")?,
        stage: get(&row, "stage")?,
        progress_pct: get(&row, "progress_pct")?,
        eta_seconds: get(&row, "eta_seconds")?,
        rows_copied: get(&row, "rows_copied")?,
        rows_total: get(&row, "rows_total")?,
        rows_per_sec: get(&row, "rows_per_sec")?,
        message: get(&row, "message")?,
        added_at: get(&row, "added_at")?,
        started_at: get(&row, "started_at")?,
        ready_at: get(&row, "ready_at")?,
        completed_at: get(&row, "completed_at")?,
        added_timestamp: get(&row, "added_timestamp")?,
        retries: get(&row, "retries")?,
        postpone_completion: get::<i8>(&row, "postpone_completion")? != 0,
        in_order_completion: get::<i8>(&row, "in_order_completion")? != 0,
        cancel_requested: get::<i8>(&row, "cancel_requested")? != 0,
        cancelled_by: get(&row, "cancelled_by")?,
        options: get(&row, "options")?,
        checkpoint_key: get(&row, "checkpoint_key")?,
        migration_uuid: get(&row, "migration_uuid")?,
        served_by: get(&row, "served_by")?,
        request: get(&row, "request")?,
    })
}
