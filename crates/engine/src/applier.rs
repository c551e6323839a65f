//! The applier: writes buffered changes into the shadow table.
//!
//! Upserts become batched `REPLACE INTO _t_new (...) VALUES ...`, deletes
//! batched `DELETE FROM _t_new WHERE <key> IN ...`. A batch taken from the
//! [`crate::changes::ChangeBuffer`] holds each key once, so its keys are
//! disjoint and it is split into shards applied in parallel on separate
//! connections; the next batch starts only when the previous one has finished,
//! so two changes of one key are never applied out of order.
//!
//! Values are written as exact SQL literals (`Value::write_sql_literal`) on a
//! session with the backends' settings (binary strings, UTC), so an applied
//! row is byte-for-byte what the copy would have written. The applier leaves
//! deciding *what* may be applied (watermarks) to the buffer.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use wraith_backend::{ColumnSpec, TargetTable, Value};

use crate::changes::Pending;
use crate::db::{quote_ident, Context, DbError};

/// Largest statement the applier sends.
const MAX_STATEMENT_BYTES: usize = 1 << 20;

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

    /// Applied changes per second of applying.
    pub fn rate(&self) -> f64 {
        self.applied as f64 / self.busy.as_secs_f64().max(1e-6)
    }

    /// Applies a batch on `conn` alone: under MySQL's one-session cut-over the
    /// locking session is the only one that may write the shadow table.
    pub async fn apply_on(
        &mut self,
        conn: &mut mysql_async::Conn,
        batch: Vec<(Vec<u8>, Pending)>,
    ) -> Result<(), DbError> {
        let started = Instant::now();
        let n = batch.len() as u64;
        conn.query_drop(wraith_backend::sql::SESSION_SETUP)
            .await
            .context(|| "setting up the locked session for applying".into())?;
        let changes: Vec<Pending> = batch.into_iter().map(|(_, c)| c).collect();
        apply_shard(conn, &self.target, &changes).await?;
        self.applied += n;
        self.busy += started.elapsed();
        Ok(())
    }

    /// Applies a batch of changes with distinct keys.
    pub async fn apply(&mut self, batch: Vec<(Vec<u8>, Pending)>) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let n = batch.len();
        let per_shard = n.div_ceil(self.shards).max(256);
        let mut shards: Vec<Vec<Pending>> = Vec::new();
        for (i, (_, change)) in batch.into_iter().enumerate() {
            if i % per_shard == 0 {
                shards.push(Vec::with_capacity(per_shard));
            }
            if let Some(last) = shards.last_mut() {
                last.push(change);
            }
        }
        while self.conns.len() < shards.len() {
            let mut conn = self
                .pool
                .get_conn()
                .await
                .context(|| "connecting to apply changes".into())?;
            conn.query_drop(wraith_backend::sql::SESSION_SETUP)
                .await
                .context(|| "setting up an apply session".into())?;
            // Each shard commits with a COMMIT of its own: a statement that a
            // killed wraith left in flight then rolls back with its connection
            // instead of landing after a resumed run has moved on.
            conn.query_drop("SET autocommit = 0")
                .await
                .context(|| "setting up an apply session".into())?;
            self.conns.push(conn);
        }
        let target = &self.target;
        let result = try_join_all(shards.into_iter().zip(self.conns.iter_mut()).map(
            |(shard, conn)| async move {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let applied = async {
                        apply_shard(conn, target, &shard).await?;
                        conn.query_drop("COMMIT").await.context(|| {
                            format!("committing changes to {}", target.display_name())
                        })
                    }
                    .await;
                    match applied {
                        // Shards touch disjoint keys but may meet on unique
                        // secondary indexes and their gaps: a deadlock or lock
                        // wait is a reason to try the shard again, not to stop.
                        Err(e)
                            if wraith_backend::is_lock_conflict(&e.error)
                                && attempt < wraith_backend::LOCK_CONFLICT_ATTEMPTS =>
                        {
                            tracing::debug!(attempt, error = %e, "retrying a shard after a lock conflict");
                            conn.query_drop("ROLLBACK").await.context(|| {
                                format!("rolling back changes to {}", target.display_name())
                            })?;
                            tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                        }
                        other => return other,
                    }
                }
            },
        ))
        .await;
        if result.is_err() {
            // A failed session may be mid-transaction or gone: start afresh next time.
            self.conns.clear();
        }
        result?;
        self.applied += n as u64;
        self.busy += started.elapsed();
        Ok(())
    }
}

async fn apply_shard(
    conn: &mut mysql_async::Conn,
    target: &TargetTable,
    changes: &[Pending],
) -> Result<(), DbError> {
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for c in changes {
        match c {
            Pending::Upsert(row) => upserts.push(row),
            Pending::Delete(key) => deletes.push(key),
        }
    }
    let table = target.quoted_name();
    let columns: Vec<String> = target
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let head = format!("REPLACE INTO {table} ({}) VALUES ", columns.join(", "));
    let mut stmt = Vec::with_capacity(MAX_STATEMENT_BYTES);
    for row in &upserts {
        let mut tuple = vec![b'('];
        for (i, (v, spec)) in row.iter().zip(&target.columns).enumerate() {
            if i > 0 {
                tuple.push(b',');
            }
            v.write_sql_literal(spec, &mut tuple);
        }
        tuple.push(b')');
        if !stmt.is_empty() && stmt.len() + tuple.len() + 1 > MAX_STATEMENT_BYTES {
            send(conn, &stmt, target).await?;
            stmt.clear();
        }
        if stmt.is_empty() {
            stmt.extend_from_slice(head.as_bytes());
        } else {
            stmt.push(b',');
        }
        stmt.extend_from_slice(&tuple);
    }
    if !stmt.is_empty() {
        send(conn, &stmt, target).await?;
        stmt.clear();
    }

    let key_specs: Vec<&ColumnSpec> = target
        .key_columns
        .iter()
        .filter_map(|&i| target.columns.get(i))
        .collect();
    let head = format!("DELETE FROM {table} WHERE ");
    for key in &deletes {
        let cond = key_condition(&key_specs, key);
        if !stmt.is_empty() && stmt.len() + cond.len() + 4 > MAX_STATEMENT_BYTES {
            send(conn, &stmt, target).await?;
            stmt.clear();
        }
        if stmt.is_empty() {
            stmt.extend_from_slice(head.as_bytes());
        } else {
            stmt.extend_from_slice(b" OR ");
        }
        stmt.extend_from_slice(&cond);
    }
    if !stmt.is_empty() {
        send(conn, &stmt, target).await?;
    }
    Ok(())
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
    stmt: &[u8],
    target: &TargetTable,
) -> Result<(), DbError> {
    // Literals are ASCII or hex; the statement is valid UTF-8.
    let text = String::from_utf8_lossy(stmt);
    conn.query_drop(text.as_ref())
        .await
        .context(|| format!("applying changes to {}", target.display_name()))
}
