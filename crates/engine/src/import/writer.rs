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
//! marker row in [`super::REGIONS_TABLE`] (with the region's sums under
//! `verify = "checksum"`) are committed in one transaction, so a region is
//! in the table entirely, with its marker and sums, or not at all.
//! Rows are written with the session, statement builder and duplicate
//! reading every writer shares ([`wraith_backend::write`]: exact literals
//! on a `SET NAMES binary`, UTC, strict session), as multi-row statements
//! of at most 1 MiB:
//! `INSERT` (`on_duplicate = "error"`: error 1062 names the key), `REPLACE`,
//! or `INSERT … ON DUPLICATE KEY UPDATE c = c` for `ignore` (unlike `INSERT
//! IGNORE` it leaves strict mode's errors errors).

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_backend::write::{self, BatchStatement, MAX_STATEMENT_BYTES};
use wraith_backend::{is_data_error_code, BackendError, LoadData, TargetTable};
use wraith_checkpoints::RowsChecksum;

use super::config::OnDuplicate;
use super::files::DataFile;
use super::region::{line_of, Batch, TableShape};
use super::{conn, ImportError, REGIONS_TABLE};
use crate::server::{quote_ident, DbError};

/// Load text gathered before one `LOAD DATA` statement.
const LOAD_BYTES: usize = 16 << 20;

pub(super) struct RegionWriter {
    conn: Option<Conn>,
    target: TargetTable,
    shape: Arc<TableShape>,
    mode: OnDuplicate,
    /// The file's name (for messages).
    file: String,
    data_file: DataFile,
    /// Where each row of the statement being written starts in the file.
    stmt_offsets: Vec<u64>,
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
    /// Where each row of `text` starts in the file.
    offsets: Vec<u64>,
}

impl RegionWriter {
    pub(super) async fn begin(
        pool: &Pool,
        target: &TargetTable,
        shape: Arc<TableShape>,
        mode: OnDuplicate,
        file: &DataFile,
        load_data: bool,
    ) -> Result<RegionWriter, ImportError> {
        let c = conn(pool).await?;
        RegionWriter::on(c, target, shape, mode, file, load_data).await
    }

    /// A region writer on a connection of the caller's (set up with
    /// `SESSION_SETUP`), for instance one holding a temporary table.
    pub(super) async fn on(
        mut c: Conn,
        target: &TargetTable,
        shape: Arc<TableShape>,
        mode: OnDuplicate,
        file: &DataFile,
        load_data: bool,
    ) -> Result<RegionWriter, ImportError> {
        c.query_drop("START TRANSACTION")
            .await
            .map_err(|e| db_err(e, "starting a region's transaction"))?;
        Ok(RegionWriter {
            conn: Some(c),
            target: target.clone(),
            shape,
            mode,
            file: file.name.clone(),
            data_file: file.clone(),
            stmt_offsets: Vec::new(),
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
                offsets: Vec::new(),
            });
        }
        let Some(pending) = self.load.as_mut() else {
            return Ok(());
        };
        for r in &batch.rows {
            LoadData::write_row(r.iter(), &mut pending.text);
        }
        pending.rows += batch.rows.len() as u64;
        pending.offsets.extend_from_slice(&batch.offsets);
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
        let offsets = std::mem::take(&mut pending.offsets);
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
            // The server refused a value: report it at its row.
            Err(e) => match e.refused_value() {
                Some((code, message)) => {
                    Err(rejected(&self.data_file, &offsets, code, message).await)
                }
                None => Err(ImportError::Backend(e)),
            },
        }
    }

    fn head(&self, columns: &[String]) -> String {
        let verb = match self.mode {
            OnDuplicate::Replace => "REPLACE",
            _ => "INSERT",
        };
        write::insert_head(verb, &self.target, columns.iter().map(String::as_str))
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

    /// Sends one statement of the region (inside its transaction): a value
    /// the server refuses is reported at its row.
    async fn send(&mut self, stmt: &BatchStatement) -> Result<(), ImportError> {
        let Some(c) = self.conn.as_mut() else {
            return Err(ImportError::Worker(
                "the region's connection is gone".into(),
            ));
        };
        match c.query_drop(stmt.sql().as_ref()).await {
            Ok(()) => {
                self.stmt_offsets.clear();
                Ok(())
            }
            Err(mysql_async::Error::Server(s)) if is_data_error_code(s.code) => Err(rejected(
                &self.data_file,
                &self.stmt_offsets,
                u32::from(s.code),
                &s.message,
            )
            .await),
            Err(e) => Err(self.map_error(e)),
        }
    }

    fn map_error(&self, e: mysql_async::Error) -> ImportError {
        if let Some((key, index)) = write::duplicate_of(&e) {
            return ImportError::Duplicate {
                table: self.target.display_name(),
                key,
                index,
                file: self.file.clone(),
            };
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
        let mut stmt = BatchStatement::values(&head, &tail, MAX_STATEMENT_BYTES);
        self.stmt_offsets.clear();
        for (r, &at) in batch.rows.iter().zip(&batch.offsets) {
            self.row.clear();
            write::write_tuple(r.iter().zip(&specs), &mut self.row);
            if !stmt.fits(self.row.len()) {
                self.send(&stmt).await?;
                stmt.clear();
            }
            stmt.push(&self.row);
            self.stmt_offsets.push(at);
        }
        if !stmt.is_empty() {
            self.send(&stmt).await?;
        }
        Ok(())
    }

    /// Sends what is buffered (the pending load text), without committing.
    pub(super) async fn flush(&mut self) -> Result<(), ImportError> {
        self.send_load().await
    }

    /// Records the region (with its sums under `verify = "checksum"`) and
    /// commits its rows with the record: a region is never committed
    /// without the sums a resumed run needs to verify it.
    pub(super) async fn commit(
        mut self,
        job: &str,
        chunk: u64,
        (start, end): (u64, u64),
        rows: u64,
        sums: Option<&RowsChecksum>,
    ) -> Result<(), ImportError> {
        let sums = sums
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ImportError::Worker(format!("encoding a region's sums: {e}")))?;
        self.send_load().await?;
        let Some(mut c) = self.conn.take() else {
            return Err(ImportError::Worker(
                "the region's connection is gone".into(),
            ));
        };
        c.exec_drop(
            format!(
                "INSERT INTO {}.{} (job, chunk, file, start_offset, end_offset, rows_written, sums) VALUES (?, ?, ?, ?, ?, ?, ?)",
                quote_ident(&self.target.schema),
                quote_ident(REGIONS_TABLE)
            ),
            (job.as_bytes(), chunk, self.file.as_bytes(), start, end, rows, sums),
        )
        .await
        .map_err(|e| db_err(e, "recording a committed region"))?;
        c.query_drop("COMMIT")
            .await
            .map_err(|e| db_err(e, "committing a region"))
    }

    /// Rolls the region back and hands the connection back (with its
    /// session: a temporary table stays).
    pub(super) async fn roll_back(mut self) -> Result<Conn, ImportError> {
        let Some(mut c) = self.conn.take() else {
            return Err(ImportError::Worker(
                "the region's connection is gone".into(),
            ));
        };
        c.query_drop("ROLLBACK")
            .await
            .map_err(|e| db_err(e, "rolling a region back"))?;
        Ok(c)
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

/// A value the server refused, at its row: the server's "at row N" counts
/// the rows of the failed statement (or load), whose starts are `offsets`.
/// Without a row number (a foreign key, a CHECK constraint) the error
/// names the statement's first row and says the value is among its rows.
pub(super) async fn rejected(
    file: &DataFile,
    offsets: &[u64],
    code: u32,
    message: &str,
) -> ImportError {
    let (text, row) = split_at_row(message);
    let (offset, among) = match row.and_then(|n| offsets.get(n.saturating_sub(1))) {
        Some(&at) => (at, 0),
        None => (offsets.first().copied().unwrap_or(0), offsets.len()),
    };
    let f = file.clone();
    let line = tokio::task::spawn_blocking(move || line_of(&f, offset))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let mut message = format!("the server refuses a value of this row: {text} (error {code})");
    if among > 1 {
        message.push_str(&format!(
            "; the value is in this row or one of the {} rows after it",
            among - 1
        ));
    }
    message.push_str("; correct the value in the file, or change the column so it can hold it");
    ImportError::Parse {
        file: file.name.clone(),
        offset,
        line,
        message,
    }
}

/// `"Data too long for column 'v' at row 3"` → (`"Data too long for column 'v'"`, 3).
fn split_at_row(message: &str) -> (&str, Option<usize>) {
    if let Some(i) = message.rfind(" at row ") {
        if let Ok(n) = message[i + 8..].trim().parse::<usize>() {
            return (&message[..i], Some(n));
        }
    }
    (message, None)
}

fn db_err(error: mysql_async::Error, context: &str) -> ImportError {
    ImportError::Db(DbError {
        context: context.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::split_at_row;

    #[test]
    fn the_row_number_comes_off_the_message() {
        assert_eq!(
            split_at_row("Data too long for column 'v' at row 3"),
            ("Data too long for column 'v'", Some(3))
        );
        assert_eq!(
            split_at_row("CONSTRAINT `c` failed for `d`.`t`"),
            ("CONSTRAINT `c` failed for `d`.`t`", None)
        );
    }
}
