//! wraith's own tables in the target database: the sql path's marker
//! table [`REGIONS_TABLE`] (one row per committed region, with its sums),
//! and dropping wraith's tables once no job has rows in them.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_checkpoints::{ChunkStatus, RowsChecksum};

use super::{conn, indexes, ImportError, REGIONS_TABLE};
use crate::resume::Checkpointer;
use crate::server::{quote_ident, Context};

/// Creates the sql path's marker table (adding the sums column to one an
/// older wraith left).
pub(super) async fn ensure_regions_table(pool: &Pool, db: &str) -> Result<(), ImportError> {
    let mut c = conn(pool).await?;
    c.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (\
           job VARBINARY(255) NOT NULL, chunk BIGINT UNSIGNED NOT NULL, \
           file VARBINARY(1024) NOT NULL, start_offset BIGINT UNSIGNED NOT NULL, \
           end_offset BIGINT UNSIGNED NOT NULL, rows_written BIGINT UNSIGNED NOT NULL, \
           sums MEDIUMBLOB NULL COMMENT 'verify = checksum: the sums of the rows parsed (JSON)', \
           committed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
           PRIMARY KEY (job, chunk)) ENGINE=InnoDB COMMENT='wraith import: regions committed by the sql backend'",
        quote_ident(db),
        quote_ident(REGIONS_TABLE)
    ))
    .await
    .context(|| format!("creating {REGIONS_TABLE}"))?;
    // A table left by a wraith that kept no sums there.
    let has_sums: Option<u8> = c
        .exec_first(
            "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = 'sums'",
            (db, REGIONS_TABLE),
        )
        .await
        .context(|| format!("reading the columns of {REGIONS_TABLE}"))?;
    if has_sums.is_none() {
        indexes::alter_table(
            &mut c,
            db,
            REGIONS_TABLE,
            &["ADD COLUMN sums MEDIUMBLOB NULL AFTER rows_written".to_string()],
            "adding the sums column to",
        )
        .await?;
    }
    Ok(())
}

/// Drops wraith's table `db.table` if it holds no row (no other job uses
/// it). The check and the drop happen under `LOCK TABLES … WRITE`, so no
/// row another job writes meanwhile is lost: it waits, then finds the table
/// gone (the checkpoint store creates it again; another import's region
/// commit fails, and its rerun resumes). A lock not granted within 5 s
/// leaves the table (it is in use).
pub(super) async fn drop_if_empty(c: &mut Conn, db: &str, table: &str) -> Result<(), ImportError> {
    let q = format!("{}.{}", quote_ident(db), quote_ident(table));
    c.query_drop("SET SESSION lock_wait_timeout = 5")
        .await
        .context(|| "bounding the lock wait".into())?;
    let locked = c.query_drop(format!("LOCK TABLES {q} WRITE")).await;
    let result = match locked {
        // Missing: nothing to drop. Busy: another job's.
        Err(mysql_async::Error::Server(e)) if matches!(e.code, 1146 | 1205) => Ok(()),
        Err(e) => Err(e).context(|| format!("locking {table} to drop it")),
        Ok(()) => {
            let any: Result<Option<u8>, _> =
                c.query_first(format!("SELECT 1 FROM {q} LIMIT 1")).await;
            match any {
                Ok(None) => c
                    .query_drop(format!("DROP TABLE {q}"))
                    .await
                    .context(|| format!("dropping {table}")),
                Ok(Some(_)) => Ok(()),
                Err(e) => Err(e).context(|| format!("reading {table}")),
            }
        }
    };
    let unlocked = c.query_drop("UNLOCK TABLES").await;
    let restored = c
        .query_drop("SET SESSION lock_wait_timeout = @@GLOBAL.lock_wait_timeout")
        .await;
    result?;
    unlocked.context(|| "unlocking tables".into())?;
    restored.context(|| "restoring lock_wait_timeout".into())?;
    Ok(())
}

/// Regions whose transaction committed before a kill but whose checkpoint
/// was not saved: they are done.
pub(super) async fn adopt_committed_regions(
    pool: &Pool,
    checkpointer: &Checkpointer,
    job: &str,
) -> Result<(), ImportError> {
    let mut c = conn(pool).await?;
    let rows: Vec<(u64, u64, Option<Vec<u8>>)> = c
        .exec(
            format!(
                "SELECT chunk, rows_written, sums FROM {} WHERE job = ?",
                quote_ident(REGIONS_TABLE)
            ),
            (job.as_bytes(),),
        )
        .await
        .context(|| format!("reading {REGIONS_TABLE}"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut committed: HashMap<u64, (u64, Option<RowsChecksum>)> = HashMap::new();
    for (chunk, n, sums) in rows {
        let sums = sums
            .map(|b| serde_json::from_slice::<RowsChecksum>(&b))
            .transpose()
            .map_err(|e| {
                ImportError::Refused(format!(
                    "the sums of region {chunk} in {REGIONS_TABLE} cannot be read ({e}); \
                     empty the tables, delete this job's rows from {REGIONS_TABLE} and its \
                     checkpoint, and start over"
                ))
            })?;
        committed.insert(chunk, (n, sums));
    }
    checkpointer
        .update(|task| {
            for t in &mut task.tables {
                for e in &mut t.engines {
                    for ch in &mut e.chunks {
                        if let Some((n, sums)) = committed.get(&ch.id) {
                            if ch.status() != ChunkStatus::Flushed {
                                ch.rows = *n;
                                ch.checksum = sums.clone();
                                let _ = ch.advance(ChunkStatus::Flushed);
                                t.rows_copied += n;
                            }
                        }
                    }
                }
            }
        })
        .await?;
    Ok(())
}
