//! Secondary indexes during an import: non-unique ones are dropped before
//! the load (recorded in the checkpoint first) and added back after it, in
//! one `ALTER TABLE` each way: one sorted build is far cheaper for the
//! server than keeping an index up to date row by row.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_checkpoints::{TableCheckpoint, TableStage};

use super::job::Job;
use super::plan::TablePlan;
use super::{conn, ImportError};
use crate::resume::Checkpointer;
use crate::server::inspect::inspect_table;
use crate::server::{quote_ident, Context};

/// Drops non-unique secondary indexes (recorded first in the checkpoint, so
/// a resumed run restores them).
pub(super) async fn defer_indexes(
    job: &Job<'_>,
    checkpointer: &Checkpointer,
    tables: &[TablePlan],
) -> Result<(), ImportError> {
    let db = job.db;
    let mut c = conn(job.pool).await?;
    for t in tables {
        let snapshot = checkpointer.snapshot().await;
        let Some(tc) = snapshot.table(db, &t.name) else {
            continue;
        };
        if tc.stage() >= TableStage::Copying {
            continue;
        }
        let mut defs = tc.deferred_indexes.clone();
        if defs.is_empty() {
            defs = t
                .info
                .indexes
                .iter()
                .filter(|i| {
                    !i.primary && !i.unique && i.kind == "BTREE" && !i.definition.is_empty()
                })
                .map(|i| i.definition.clone())
                .collect();
            if !defs.is_empty() {
                let recorded = defs.clone();
                checkpointer
                    .update(|task| {
                        if let Some(tc) = task.table_mut(db, &t.name) {
                            tc.deferred_indexes = recorded;
                        }
                    })
                    .await?;
            }
        }
        let current = inspect_table(&mut c, db, &t.name).await?;
        let drops: Vec<String> = current
            .indexes
            .iter()
            .filter(|i| defs.contains(&i.definition))
            .map(|i| format!("DROP INDEX {}", quote_ident(&i.name)))
            .collect();
        alter_table(
            &mut c,
            db,
            &t.name,
            &drops,
            "deferring secondary indexes of",
        )
        .await?;
        checkpointer
            .update(|task| {
                if let Some(tc) = task.table_mut(db, &t.name) {
                    let _ = tc.advance(TableStage::Copying);
                }
            })
            .await?;
    }
    Ok(())
}

/// `ALTER TABLE db.table` with `clauses` in one statement (none: nothing to do).
pub(super) async fn alter_table(
    c: &mut Conn,
    db: &str,
    table: &str,
    clauses: &[String],
    doing: &str,
) -> Result<(), ImportError> {
    if clauses.is_empty() {
        return Ok(());
    }
    c.query_drop(format!(
        "ALTER TABLE {}.{} {}",
        quote_ident(db),
        quote_ident(table),
        clauses.join(", ")
    ))
    .await
    .context(|| format!("{doing} {table}"))?;
    Ok(())
}

/// Adds back the indexes deferred for `t` that the table lacks, and records
/// the table's indexes as restored.
pub(super) async fn restore_indexes(
    c: &mut Conn,
    db: &str,
    t: &TablePlan,
    tc: &TableCheckpoint,
    checkpointer: &Checkpointer,
) -> Result<(), ImportError> {
    if !tc.deferred_indexes.is_empty() && tc.stage() < TableStage::IndexesRestored {
        let current = inspect_table(c, db, &t.name).await?;
        let adds: Vec<String> = tc
            .deferred_indexes
            .iter()
            .filter(|d| !current.indexes.iter().any(|i| &i.definition == *d))
            .map(|d| format!("ADD {d}"))
            .collect();
        // A parallel replica builds them with this server, not after it.
        crate::server::log_alter_in_two_phases(c).await?;
        alter_table(c, db, &t.name, &adds, "restoring the secondary indexes of").await?;
    }
    checkpointer
        .update(|task| {
            if let Some(tc) = task.table_mut(db, &t.name) {
                let _ = tc.advance(TableStage::IndexesRestored);
            }
        })
        .await?;
    Ok(())
}
