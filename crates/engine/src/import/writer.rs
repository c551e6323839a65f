//! The sql path's region writer: one transaction per region.
//!
//! With `on_duplicate = "error"` and a server that allows `LOAD DATA LOCAL`,
//! rows go as load text ([`wraith_backend::LoadData`]): the server parses
//! plain fields instead of SQL, which measured here at about two thirds of
//! the server's work per row. A load is accepted only when every row was
//! stored and no warning was raised (a duplicate names its key), so it is
//! as exact as the INSERTs below, which the other modes use.
//!
//! The sql backend's own writer (`wraith_backend::SqlBackend`) commits each
//! batch on its own, which is right for the rebuild (the copy redoes
//! everything above its low watermark) but would let a region redone after a
//! kill insert its committed rows a second time. Here a region's rows and a
//! marker row in [`super::REGIONS_TABLE`] are committed in one transaction,
//! so a region is in the table entirely, with its marker, or not at all.
//! Rows are written with the same exact literals as the sql backend
//! ([`wraith_backend::Value::write_sql_literal`] on a `SET NAMES binary`,
//! UTC, strict session), as multi-row statements of at most 1 MiB:
//! `INSERT` (`on_duplicate = "error"`: error 1062 names the key), `REPLACE`,
//! or `INSERT … ON DUPLICATE KEY UPDATE c = c` for `ignore` (unlike `INSERT
//! IGNORE` it leaves strict mode's errors errors).

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_backend::{parse_duplicate_message, BackendError, LoadData, TargetTable};

use super::config::OnDuplicate;
use super::region::{Batch, TableShape};
use super::{conn, ImportError, REGIONS_TABLE};
use crate::db::{quote_ident, DbError};

const MAX_STATEMENT: usize = 1 << 20;
/// Load text gathered before one `LOAD DATA` statement.
const LOAD_BYTES: usize = 16 << 20;

pub(super) struct RegionWriter {
    conn: Option<Conn>,
    target: TargetTable,
    shape: Arc<TableShape>,
    mode: OnDuplicate,
    file: String,
    stmt: Vec<u8>,
    row: Vec<u8>,
    /// Rows go by `LOAD DATA LOCAL` (see the module comment).
    use_load: bool,
    /// The load for the current column list, with its text not yet sent.
    load: Option<PendingLoad>,
}

struct PendingLoad {
    columns: Arc<Vec<String>>,
    load: LoadData,
    text: Vec<u8>,
    rows: u64,
}

impl RegionWriter {
    pub(super) async fn begin(
        pool: &Pool,
        target: &TargetTable,
        shape: Arc<TableShape>,
        mode: OnDuplicate,
        file: &str,
        load_data: bool,
    ) -> Result<RegionWriter, ImportError> {
        let mut c = conn(pool).await?;
        c.query_drop("START TRANSACTION")
            .await
            .map_err(|e| db_err(e, "starting a region's transaction"))?;
        Ok(RegionWriter {
            conn: Some(c),
            target: target.clone(),
            shape,
            mode,
            file: file.to_string(),
            stmt: Vec::new(),
            row: Vec::with_capacity(1024),
            use_load: load_data && mode == OnDuplicate::Error,
            load: None,
        })
    }

    /// Adds a batch to the pending load text, sending it when it is big.
    async fn write_load(&mut self, batch: &Batch) -> Result<(), ImportError> {
        if self
            .load
            .as_ref()
            .is_some_and(|l| l.columns != batch.columns)
        {
            self.send_load().await?;
            self.load = None;
        }
        if self.load.is_none() {
            let positions = batch
                .columns
                .iter()
                .map(|name| {
                    self.target
                        .columns
                        .iter()
                        .position(|c| c.name.eq_ignore_ascii_case(name))
                        .ok_or_else(|| {
                            ImportError::Plan(format!(
                                "{}: column `{name}` is not in {}",
                                self.file,
                                self.target.display_name()
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| ImportError::Worker("the region's connection is gone".into()))?;
            let load = LoadData::prepare(conn, &self.target, &positions).await?;
            self.load = Some(PendingLoad {
                columns: batch.columns.clone(),
                load,
                text: Vec::with_capacity(LOAD_BYTES + (1 << 20)),
                rows: 0,
            });
        }
        let Some(pending) = self.load.as_mut() else {
            return Ok(());
        };
        for r in &batch.rows {
            LoadData::write_row(r.iter(), &mut pending.text);
        }
        pending.rows += batch.rows.len() as u64;
        if pending.text.len() >= LOAD_BYTES {
            self.send_load().await?;
        }
        Ok(())
    }

    /// Sends the pending load text (inside the region's transaction).
    async fn send_load(&mut self) -> Result<(), ImportError> {
        let Some(pending) = self.load.as_mut() else {
            return Ok(());
        };
        if pending.rows == 0 {
            return Ok(());
        }
        let rows = std::mem::take(&mut pending.rows);
        let text = bytes::Bytes::from(std::mem::take(&mut pending.text));
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ImportError::Worker("the region's connection is gone".into()))?;
        match pending.load.load(conn, rows, text).await {
            Ok(_) => Ok(()),
            Err(BackendError::DuplicateDetected { key, index, .. }) => {
                Err(ImportError::Duplicate {
                    table: self.target.display_name(),
                    key,
                    index,
                    file: self.file.clone(),
                })
            }
            Err(e) => Err(ImportError::Backend(e)),
        }
    }

    fn head(&self, columns: &[String]) -> Vec<u8> {
        let verb = match self.mode {
            OnDuplicate::Replace => "REPLACE INTO ",
            _ => "INSERT INTO ",
        };
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "{verb}{} ({}) VALUES ",
            self.target.quoted_name(),
            cols.join(",")
        )
        .into_bytes()
    }

    fn tail(&self, columns: &[String]) -> String {
        match (self.mode, columns.first()) {
            (OnDuplicate::Ignore, Some(c)) => {
                let c = quote_ident(c);
                format!(" ON DUPLICATE KEY UPDATE {c} = {c}")
            }
            _ => String::new(),
        }
    }

    async fn send(&mut self, tail: &str) -> Result<(), ImportError> {
        self.stmt.extend_from_slice(tail.as_bytes());
        // ASCII outside X'..' literals, which are hex: valid UTF-8.
        let text = String::from_utf8(std::mem::take(&mut self.stmt)).map_err(|_| {
            ImportError::Worker("internal: an INSERT statement is not UTF-8".into())
        })?;
        let Some(c) = self.conn.as_mut() else {
            return Err(ImportError::Worker(
                "the region's connection is gone".into(),
            ));
        };
        let r = c.query_drop(&text).await;
        self.stmt = text.into_bytes();
        self.stmt.clear();
        r.map_err(|e| self.map_error(e))
    }

    fn map_error(&self, e: mysql_async::Error) -> ImportError {
        if let mysql_async::Error::Server(s) = &e {
            if s.code == 1062 {
                let (key, index) = parse_duplicate_message(&s.message)
                    .unwrap_or_else(|| (s.message.clone(), String::new()));
                return ImportError::Duplicate {
                    table: self.target.display_name(),
                    key,
                    index,
                    file: self.file.clone(),
                };
            }
        }
        db_err(
            e,
            &format!(
                "writing rows of {} into {}",
                self.file,
                self.target.display_name()
            ),
        )
    }

    /// Writes a batch (not yet committed).
    pub(super) async fn write(&mut self, batch: &Batch) -> Result<(), ImportError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        if self.use_load {
            return self.write_load(batch).await;
        }
        let specs = self
            .shape
            .specs_of(&batch.columns)
            .map_err(ImportError::Plan)?;
        let head = self.head(&batch.columns);
        let tail = self.tail(&batch.columns);
        self.stmt.clear();
        self.stmt.extend_from_slice(&head);
        let mut in_stmt = 0usize;
        for r in &batch.rows {
            self.row.clear();
            self.row.push(b'(');
            for (i, (v, spec)) in r.iter().zip(&specs).enumerate() {
                if i > 0 {
                    self.row.push(b',');
                }
                v.write_sql_literal(spec, &mut self.row);
            }
            self.row.push(b')');
            if in_stmt > 0 && self.stmt.len() + self.row.len() + tail.len() + 1 > MAX_STATEMENT {
                self.send(&tail).await?;
                self.stmt.extend_from_slice(&head);
                in_stmt = 0;
            }
            if in_stmt > 0 {
                self.stmt.push(b',');
            }
            let row = std::mem::take(&mut self.row);
            self.stmt.extend_from_slice(&row);
            self.row = row;
            in_stmt += 1;
        }
        if in_stmt > 0 {
            self.send(&tail).await?;
        }
        Ok(())
    }

    /// Records the region and commits its rows with the record.
    pub(super) async fn commit(
        mut self,
        job: &str,
        chunk: u64,
        start: u64,
        end: u64,
        rows: u64,
    ) -> Result<(), ImportError> {
        self.send_load().await?;
        let Some(mut c) = self.conn.take() else {
            return Err(ImportError::Worker(
                "the region's connection is gone".into(),
            ));
        };
        c.exec_drop(
            format!(
                "INSERT INTO {}.{} (job, chunk, file, start_offset, end_offset, rows_written) VALUES (?, ?, ?, ?, ?, ?)",
                quote_ident(&self.target.schema),
                quote_ident(REGIONS_TABLE)
            ),
            (job.as_bytes(), chunk, self.file.as_bytes(), start, end, rows),
        )
        .await
        .map_err(|e| db_err(e, "recording a committed region"))?;
        c.query_drop("COMMIT")
            .await
            .map_err(|e| db_err(e, "committing a region"))
    }

    /// Rolls the region back.
    pub(super) async fn abort(mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.query_drop("ROLLBACK").await;
        }
    }
}

impl Drop for RegionWriter {
    fn drop(&mut self) {
        // A connection dropped mid-transaction must not go back to the pool
        // with it open: close it (the server rolls back).
        if let Some(c) = self.conn.take() {
            tokio::spawn(async move {
                let _ = c.disconnect().await;
            });
        }
    }
}

fn db_err(error: mysql_async::Error, context: &str) -> ImportError {
    ImportError::Db(DbError {
        context: context.to_string(),
        error,
    })
}
