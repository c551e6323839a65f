//! The applier: writes buffered changes into the shadow table.
//!
//! Changes are written **by primary key only**: every key of a batch is
//! first deleted (`DELETE FROM _t_new WHERE <key> = ..`), then the rows of
//! the upserts are inserted with plain `INSERT`. Never `REPLACE` nor `ON
//! DUPLICATE KEY UPDATE`: over a unique secondary index of the new table
//! either would let the server delete or overwrite a *different* row (one
//! the change does not name), silently.
//!
//! A batch taken from the [`crate::changes::ChangeBuffer`] holds each key
//! once, so its keys are disjoint and it is split into shards applied in
//! parallel on separate connections, in two phases: the deletes of every
//! shard are committed before any shard inserts, so a row that moves a
//! unique value from one key to another finds it free whichever shard holds
//! which key. The next batch starts only when the previous one has finished,
//! so two changes of one key are never applied out of order.
//!
//! An insert that meets a duplicate (error 1062) on a unique index may be
//! transient: the row holding the value may have a change still pending, or
//! be a stale image the copy wrote. The statement is then replayed row by
//! row and the clashing rows are returned as [`Clash`]es: the caller keeps
//! them pending and retries them, and judges at a consistent point (source
//! locked, stream drained) whether a clash is real.
//!
//! Values are written as exact SQL literals (`Value::write_sql_literal`) on a
//! session with the backends' settings (binary strings, UTC), with the
//! statement builder and duplicate reading every writer shares
//! (`wraith_backend::write`), so an applied row is byte-for-byte what the
//! copy would have written. The applier leaves
//! deciding *what* may be applied (watermarks) to the buffer.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use wraith_backend::write::{self, BatchStatement, SessionOptions, MAX_STATEMENT_BYTES};
use wraith_backend::{ColumnSpec, Row, TargetTable, Value};

use crate::changes::Pending;
use crate::server::{quote_ident, Context, DbError, RetryPolicy};

/// A row of a batch that could not be inserted because another row holds
/// its values of a unique index.
#[derive(Debug, Clone, PartialEq)]
pub struct Clash {
    /// Position of the change in the batch.
    pub pos: usize,
    /// The index the server named.
    pub index: String,
}

/// Applies changes to one shadow table.
pub struct Applier {
    pool: Pool,
    target: TargetTable,
    shards: usize,
    /// Connections with the exact-value session, kept across batches.
    conns: Vec<mysql_async::Conn>,
    /// Changes applied so far (after deduplication).
    pub applied: u64,
    /// Time spent applying.
    pub busy: Duration,
}

impl Applier {
    pub fn new(pool: Pool, target: TargetTable, shards: usize) -> Applier {
        Applier {
            pool,
            target,
            shards: shards.max(1),
            conns: Vec::new(),
            applied: 0,
            busy: Duration::ZERO,
        }
    }

    /// The shadow table written.
    pub fn target(&self) -> &TargetTable {
        &self.target
    }

    /// The pool of the server holding the shadow table.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applied changes per second of applying.
    pub fn rate(&self) -> f64 {
        self.applied as f64 / self.busy.as_secs_f64().max(1e-6)
    }

    /// Applies a batch on `conn` alone: under MySQL's one-session cut-over the
    /// locking session is the only one that may write the shadow table.
    /// Returns the rows that clash on a unique index (not applied).
    pub async fn apply_on(
        &mut self,
        conn: &mut mysql_async::Conn,
        batch: &[(Vec<u8>, Pending)],
    ) -> Result<Vec<Clash>, DbError> {
        let started = Instant::now();
        write::prepare_session(conn)
            .await
            .context(|| "setting up the locked session for applying".into())?;
        let keys: Vec<Vec<Value>> = batch.iter().map(|(_, c)| self.key_of(c)).collect();
        delete_keys(conn, &self.target, &keys).await?;
        let rows = upserts(batch);
        let clashes = insert_rows(conn, &self.target, &rows).await?;
        self.applied += (batch.len() - clashes.len()) as u64;
        self.busy += started.elapsed();
        Ok(clashes)
    }

    /// Writes `row` alone in a transaction that is rolled back: `Err` is
    /// what the server says of it (a value the target's column refuses, say).
    /// Finds which row of a refused batch is at fault, changing nothing.
    pub async fn probe_row(&mut self, row: &Row) -> Result<(), DbError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .context(|| "connecting to probe a refused row".into())?;
        write::prepare_session(&mut conn)
            .await
            .context(|| "setting up the probing session".into())?;
        conn.query_drop("START TRANSACTION")
            .await
            .context(|| "opening the probe's transaction".into())?;
        let key = self.key_of(&Pending::Upsert(row.clone()));
        let tried = async {
            delete_keys(&mut conn, &self.target, &[key]).await?;
            insert_rows(&mut conn, &self.target, &[(0, row.clone())]).await
        }
        .await;
        let _ = conn.query_drop("ROLLBACK").await;
        tried.map(|_| ())
    }

    /// The shadow key values a change names.
    fn key_of(&self, change: &Pending) -> Vec<Value> {
        match change {
            Pending::Upsert(row) => self
                .target
                .key_columns
                .iter()
                .filter_map(|&i| row.get(i).cloned())
                .collect(),
            Pending::Delete(key) => key.clone(),
        }
    }

    /// Applies a batch of changes with distinct keys; returns the rows that
    /// clash on a unique index (not applied).
    pub async fn apply(&mut self, batch: &[(Vec<u8>, Pending)]) -> Result<Vec<Clash>, DbError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let n = batch.len();
        let per_shard = n.div_ceil(self.shards).max(256);
        let keys: Vec<Vec<Value>> = batch.iter().map(|(_, c)| self.key_of(c)).collect();
        let deletes: Vec<Work> = keys
            .chunks(per_shard)
            .map(|k| Work::Delete(k.to_vec()))
            .collect();
        let rows = upserts(batch);
        let inserts: Vec<Work> = rows
            .chunks(per_shard)
            .map(|r| Work::Insert(r.to_vec()))
            .collect();
        while self.conns.len() < deletes.len().max(inserts.len()) {
            let mut conn = self
                .pool
                .get_conn()
                .await
                .context(|| "connecting to apply changes".into())?;
            // Each shard commits with a COMMIT of its own: a statement that a
            // killed wraith left in flight then rolls back with its connection
            // instead of landing after a resumed run has moved on.
            let options = SessionOptions {
                manual_commit: true,
                ..SessionOptions::default()
            };
            write::prepare_session_with(&mut conn, options)
                .await
                .context(|| "setting up an apply session".into())?;
            self.conns.push(conn);
        }
        // Every delete is committed before any insert: an insert then finds
        // the unique values the batch frees, whichever shard freed them.
        let mut clashes = Vec::new();
        for phase in [deletes, inserts] {
            let target = &self.target;
            let result = try_join_all(
                phase
                    .into_iter()
                    .zip(self.conns.iter_mut())
                    .map(|(work, conn)| run_shard(conn, target, work)),
            )
            .await;
            match result {
                Ok(found) => clashes.extend(found.into_iter().flatten()),
                Err(e) => {
                    // A failed session may be mid-transaction or gone: start afresh next time.
                    self.conns.clear();
                    return Err(e);
                }
            }
        }
        self.applied += (n - clashes.len()) as u64;
        self.busy += started.elapsed();
        Ok(clashes)
    }
}

/// One shard's part of a phase.
enum Work {
    Delete(Vec<Vec<Value>>),
    Insert(Vec<(usize, Row)>),
}

/// `(position in the batch, row)` of the batch's upserts.
fn upserts(batch: &[(Vec<u8>, Pending)]) -> Vec<(usize, Row)> {
    batch
        .iter()
        .enumerate()
        .filter_map(|(i, (_, c))| match c {
            Pending::Upsert(row) => Some((i, row.clone())),
            Pending::Delete(_) => None,
        })
        .collect()
}

/// Runs a shard's work and commits it; a deadlock or lock wait (shards
/// touch disjoint keys but may meet on unique secondary indexes and their
/// gaps) rolls the shard back and runs it again.
async fn run_shard(
    conn: &mut mysql_async::Conn,
    target: &TargetTable,
    work: Work,
) -> Result<Vec<Clash>, DbError> {
    let policy = RetryPolicy::LOCK_CONFLICT;
    let mut failures = 0;
    loop {
        let applied = async {
            let clashes = match &work {
                Work::Delete(keys) => {
                    delete_keys(conn, target, keys).await?;
                    Vec::new()
                }
                Work::Insert(rows) => insert_rows(conn, target, rows).await?,
            };
            conn.query_drop("COMMIT")
                .await
                .context(|| format!("committing changes to {}", target.display_name()))?;
            Ok::<_, DbError>(clashes)
        }
        .await;
        match applied {
            Err(e) if policy.retries(&e.error, failures + 1) => {
                failures += 1;
                tracing::debug!(attempt = failures, error = %e, "retrying a shard after a lock conflict");
                conn.query_drop("ROLLBACK")
                    .await
                    .context(|| format!("rolling back changes to {}", target.display_name()))?;
                policy.pause(failures).await;
            }
            other => return other,
        }
    }
}

/// Deletes the rows with `keys` (shadow key values).
async fn delete_keys(
    conn: &mut mysql_async::Conn,
    target: &TargetTable,
    keys: &[Vec<Value>],
) -> Result<(), DbError> {
    let key_specs: Vec<&ColumnSpec> = target
        .key_columns
        .iter()
        .filter_map(|&i| target.columns.get(i))
        .collect();
    let head = format!("DELETE FROM {} WHERE ", target.quoted_name());
    let mut stmt = BatchStatement::new(&head, b" OR ", "", MAX_STATEMENT_BYTES);
    for key in keys {
        let cond = key_condition(&key_specs, key);
        if !stmt.fits(cond.len()) {
            send(conn, &stmt.sql(), target).await?;
            stmt.clear();
        }
        stmt.push(&cond);
    }
    if !stmt.is_empty() {
        send(conn, &stmt.sql(), target).await?;
    }
    Ok(())
}

/// Inserts `rows` (their keys are free: deleted before). A statement that
/// meets a duplicate is rolled back by the server alone (the transaction
/// goes on) and replayed row by row; the rows that clash are returned.
async fn insert_rows(
    conn: &mut mysql_async::Conn,
    target: &TargetTable,
    rows: &[(usize, Row)],
) -> Result<Vec<Clash>, DbError> {
    let head = write::insert_head(
        "INSERT",
        target,
        target.columns.iter().map(|c| c.name.as_str()),
    );
    let tuple_of = |row: &Row| {
        let mut tuple = Vec::new();
        write::write_tuple(row.iter().zip(&target.columns), &mut tuple);
        tuple
    };
    let mut clashes = Vec::new();
    let mut stmt = BatchStatement::values(&head, "", MAX_STATEMENT_BYTES);
    let mut in_stmt: Vec<&(usize, Row)> = Vec::new();
    for entry in rows {
        let tuple = tuple_of(&entry.1);
        if !stmt.fits(tuple.len()) {
            insert_or_split(conn, target, &stmt, &in_stmt, &tuple_of, &mut clashes).await?;
            stmt.clear();
            in_stmt.clear();
        }
        stmt.push(&tuple);
        in_stmt.push(entry);
    }
    if !stmt.is_empty() {
        insert_or_split(conn, target, &stmt, &in_stmt, &tuple_of, &mut clashes).await?;
    }
    Ok(clashes)
}

async fn insert_or_split(
    conn: &mut mysql_async::Conn,
    target: &TargetTable,
    stmt: &BatchStatement,
    rows: &[&(usize, Row)],
    tuple_of: &impl Fn(&Row) -> Vec<u8>,
    clashes: &mut Vec<Clash>,
) -> Result<(), DbError> {
    match send(conn, &stmt.sql(), target).await {
        Err(e) if duplicate_index(&e).is_some() => {}
        other => return other,
    }
    let mut one = stmt.clone();
    for (pos, row) in rows {
        one.clear();
        one.push(&tuple_of(row));
        match send(conn, &one.sql(), target).await {
            Ok(()) => {}
            Err(e) => match duplicate_index(&e) {
                Some(index) => clashes.push(Clash { pos: *pos, index }),
                None => return Err(e),
            },
        }
    }
    Ok(())
}

/// The index a duplicate-key error (1062) names.
fn duplicate_index(e: &DbError) -> Option<String> {
    write::duplicate_of(&e.error).map(|(_, index)| index)
}

fn key_condition(specs: &[&ColumnSpec], key: &[Value]) -> Vec<u8> {
    let mut out = b"(".to_vec();
    for (i, (spec, v)) in specs.iter().zip(key).enumerate() {
        if i > 0 {
            out.extend_from_slice(b" AND ");
        }
        out.extend_from_slice(quote_ident(&spec.name).as_bytes());
        out.extend_from_slice(b" = ");
        v.write_sql_literal(spec, &mut out);
    }
    out.push(b')');
    out
}

async fn send(
    conn: &mut mysql_async::Conn,
    stmt: &str,
    target: &TargetTable,
) -> Result<(), DbError> {
    conn.query_drop(stmt)
        .await
        .context(|| format!("applying changes to {}", target.display_name()))
}
