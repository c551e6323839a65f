//! [`super::job::Stage::Finish`], per table: the engine imported (local
//! backend), the deferred indexes restored, the rows verified (count, and
//! under `verify = "checksum"` the parsed rows' sums against the table).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_backend::{Backend, BackendError, EngineManager};
use wraith_checkpoints::{
    EngineCheckpoint, EngineStatus, RowsChecksum, TableCheckpoint, TableStage,
};

use super::config::{ImportVerify, OnDuplicate};
use super::job::Job;
use super::plan::TablePlan;
use super::report::TableImportReport;
use super::{conn, engine_table_name, indexes, load, probe, verify, ImportError};
use crate::resume::Checkpointer;
use crate::server::{quote_ident, Context};

/// After the regions: import the engine (local), restore indexes, verify.
pub(super) async fn finish_table(
    job: &Job<'_>,
    t: &TablePlan,
    backend: Option<Arc<dyn Backend>>,
    checkpointer: &Checkpointer,
    regions_resumed: usize,
) -> Result<TableImportReport, ImportError> {
    let db = job.db;
    let snapshot = checkpointer.snapshot().await;
    let tc = snapshot
        .table(db, &t.name)
        .ok_or_else(|| ImportError::Worker(format!("no checkpoint for {}", t.name)))?
        .clone();
    let engine_cp = tc.engines.first().cloned();
    match (&backend, &engine_cp) {
        (Some(backend), Some(e)) => {
            if e.status() < EngineStatus::Imported {
                import_engine(job, t, &tc, e, backend, checkpointer).await?;
            }
        }
        _ => {
            checkpointer
                .update(|task| {
                    if let Some(tc) = task.table_mut(db, &t.name) {
                        let _ = tc.advance(TableStage::CopyDone);
                    }
                })
                .await?;
        }
    }
    let mut c = conn(job.pool).await?;
    indexes::restore_indexes(&mut c, db, t, &tc, checkpointer).await?;
    job.progress.phase.store(3, Ordering::Relaxed);
    let (parsed, in_table) = verify_count(job, &mut c, t, engine_cp.as_ref(), checkpointer).await?;
    let checksum_verified = if job.cfg.import.verify == ImportVerify::Checksum {
        verify_checksum(&mut c, db, t, engine_cp.as_ref()).await?;
        true
    } else {
        false
    };
    checkpointer
        .update(|task| {
            if let Some(tc) = task.table_mut(db, &t.name) {
                let _ = tc.advance(TableStage::Done);
            }
        })
        .await?;
    Ok(TableImportReport {
        table: t.name.clone(),
        files: t.readers.len(),
        regions: engine_cp.map(|e| e.chunks.len()).unwrap_or(0),
        regions_resumed,
        rows_parsed: parsed,
        rows_in_table: in_table,
        checksum_verified,
        duplicates_resolved: parsed.saturating_sub(in_table),
        created: t.created,
        deferred_indexes: tc.deferred_indexes.len(),
    })
}

/// The local path: closes the table's engine (which a resumed run never
/// opened), imports it in key order and cleans it up, each step recorded.
async fn import_engine(
    job: &Job<'_>,
    t: &TablePlan,
    tc: &TableCheckpoint,
    e: &EngineCheckpoint,
    backend: &Arc<dyn Backend>,
    checkpointer: &Checkpointer,
) -> Result<(), ImportError> {
    let db = job.db;
    let name = t.name.as_str();
    let manager = EngineManager::new(backend.clone());
    let tag = engine_table_name(db, name);
    if e.status() >= EngineStatus::Closed {
        // An import was under way when the run stopped: some ranges
        // may be in the table. It was empty before; start it over.
        let mut c = conn(job.pool).await?;
        c.query_drop(format!(
            "TRUNCATE TABLE {}.{}",
            quote_ident(db),
            quote_ident(name)
        ))
        .await
        .context(|| format!("emptying {name} to redo its interrupted engine import"))?;
        tracing::warn!(table = %name, "redoing an interrupted engine import");
    }
    let closed = manager
        .unsafe_close_engine(&load::engine_config(t), &tag, 0)
        .await?;
    let advance_engine = |status: EngineStatus| {
        move |task: &mut wraith_checkpoints::TaskCheckpoint| {
            if let Some(e) = task.table_mut(db, name).and_then(|tc| tc.engine_mut(0)) {
                let _ = e.advance(status);
            }
        }
    };
    checkpointer
        .update(advance_engine(EngineStatus::Closed))
        .await?;
    let stats = match closed.import(96 << 20, 1 << 20).await {
        Ok(stats) => stats,
        Err(BackendError::DuplicateDetected { table, key, index }) => {
            return Err(ImportError::Duplicate {
                table,
                key,
                index,
                file: "the sorted engine of all its files".into(),
            })
        }
        Err(e) if e.refused_value().is_some() => {
            return Err(probe::locate_rejected_value(job.pool, db, t, tc, e).await)
        }
        Err(other) => return Err(ImportError::Backend(other)),
    };
    tracing::info!(table = %name, rows = stats.rows, ranges = stats.ranges, "engine imported");
    checkpointer
        .update(advance_engine(EngineStatus::Imported))
        .await?;
    closed.cleanup().await?;
    checkpointer
        .update(|task| {
            if let Some(tc) = task.table_mut(db, name) {
                if let Some(e) = tc.engine_mut(0) {
                    let _ = e.advance(EngineStatus::Cleaned);
                }
                let _ = tc.advance(TableStage::CopyDone);
            }
        })
        .await?;
    Ok(())
}

/// The rows in the table against the rows parsed from its files (fewer in
/// the table only where `on_duplicate` resolves duplicates); returns both.
async fn verify_count(
    job: &Job<'_>,
    c: &mut Conn,
    t: &TablePlan,
    engine_cp: Option<&EngineCheckpoint>,
    checkpointer: &Checkpointer,
) -> Result<(u64, u64), ImportError> {
    let db = job.db;
    let parsed: u64 = engine_cp.map(|e| e.flushed_rows()).unwrap_or(0);
    let parsed = parsed.max(
        checkpointer
            .snapshot()
            .await
            .table(db, &t.name)
            .and_then(|tc| tc.engines.first())
            .map(|e| e.flushed_rows())
            .unwrap_or(0),
    );
    let in_table: Option<u64> = c
        .query_first(format!(
            "SELECT COUNT(*) FROM {}.{}",
            quote_ident(db),
            quote_ident(&t.name)
        ))
        .await
        .context(|| format!("counting the rows of {}", t.name))?;
    let in_table = in_table.unwrap_or(0);
    let ok = match job.cfg.import.on_duplicate {
        OnDuplicate::Error => in_table == parsed,
        _ => in_table <= parsed,
    };
    if !ok {
        return Err(ImportError::Verify(format!(
            "{db}.{} holds {in_table} rows but {parsed} rows were parsed from its files",
            t.name
        )));
    }
    Ok((parsed, in_table))
}

/// `verify = "checksum"`: the regions' sums of parsed rows against the table
/// read back.
async fn verify_checksum(
    c: &mut Conn,
    db: &str,
    t: &TablePlan,
    engine: Option<&EngineCheckpoint>,
) -> Result<(), ImportError> {
    let mut parsed: Option<RowsChecksum> = None;
    for ch in engine.map(|e| e.chunks.as_slice()).unwrap_or(&[]) {
        let Some(sum) = &ch.checksum else {
            if ch.rows == 0 {
                continue;
            }
            return Err(ImportError::Verify(format!(
                "region {} of {} was loaded by a run without verify = \"checksum\", so its \
                 rows were never summed; use verify = \"count\" for this job, or empty the \
                 tables and remove its checkpoint to import and verify everything",
                ch.id, t.name
            )));
        };
        if sum.rows == 0 {
            continue;
        }
        match &mut parsed {
            None => parsed = Some(sum.clone()),
            Some(p) if p.columns == sum.columns => p.merge(sum),
            Some(p) => {
                return Err(ImportError::Plan(format!(
                    "{}: verify = \"checksum\" needs one column list per table, but its files \
                     name different columns ({} and {}); use verify = \"count\"",
                    t.name,
                    p.columns.join(", "),
                    sum.columns.join(", ")
                )))
            }
        }
    }
    let Some(parsed) = parsed else {
        return Ok(());
    };
    let table = verify::table_checksum(c, db, &t.info, &t.shape, &parsed.columns).await?;
    if table != parsed {
        return Err(ImportError::Verify(format!(
            "the rows of {db}.{} differ from the rows parsed from its files ({} rows read \
             back, {} parsed; checksums {:016x}/{:016x} against {:016x}/{:016x}): something \
             changed them on the way in (a trigger, a lossy conversion, a value the server \
             stores in another form); the rows are loaded, compare them with the files",
            t.name, table.rows, parsed.rows, table.xor, table.sum, parsed.xor, parsed.sum
        )));
    }
    tracing::info!(table = %t.name, rows = parsed.rows, "checksum of the parsed rows matches the table");
    Ok(())
}
