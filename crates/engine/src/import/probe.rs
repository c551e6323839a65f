//! Finding a refused value's row in the files. The local engine loads rows
//! in key order, far from their files, so when the server refuses a value
//! there the table's regions are written again, in file order, into a
//! TEMPORARY copy of the table until the server refuses the row again.

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use tokio::sync::mpsc;
use wraith_backend::BackendError;
use wraith_checkpoints::TableCheckpoint;

use super::config::OnDuplicate;
use super::load::Parsed;
use super::plan::TablePlan;
use super::{conn, region, writer, ImportError};
use crate::server::{quote_ident, Context};

pub use crate::names::PROBE_TABLE;

/// The local engine loads rows in key order, far from their files: when
/// the server refuses a value there, the table's regions are written once
/// more, in file order, as INSERTs into a TEMPORARY copy of the table
/// (visible to that session only, gone with it), each region rolled back,
/// until the server refuses the row again, now with its file and line. If
/// no row is refused that way, the engine's own error is returned.
pub(super) async fn locate_rejected_value(
    pool: &Pool,
    db: &str,
    t: &TablePlan,
    tc: &TableCheckpoint,
    original: BackendError,
) -> ImportError {
    tracing::info!(table = %t.name, error = %original, "a value was refused: finding its row in the files");
    match probe_regions(pool, db, t, tc).await {
        // The server named its temporary copy: name the table.
        Ok(Some(ImportError::Parse {
            file,
            offset,
            line,
            message,
        })) => ImportError::Parse {
            file,
            offset,
            line,
            message: message.replace(&quote_ident(PROBE_TABLE), &quote_ident(&t.name)),
        },
        Ok(Some(found)) => found,
        Ok(None) => ImportError::Backend(original),
        Err(e) => {
            tracing::warn!(table = %t.name, error = %e, "could not find the refused row in the files");
            ImportError::Backend(original)
        }
    }
}

async fn probe_regions(
    pool: &Pool,
    db: &str,
    t: &TablePlan,
    tc: &TableCheckpoint,
) -> Result<Option<ImportError>, ImportError> {
    let mut c = conn(pool).await?;
    c.query_drop(format!(
        "CREATE TEMPORARY TABLE {}.{} LIKE {}.{}",
        quote_ident(db),
        quote_ident(PROBE_TABLE),
        quote_ident(db),
        quote_ident(&t.name)
    ))
    .await
    .context(|| {
        format!(
            "creating a temporary copy of {} to find a refused value",
            t.name
        )
    })?;
    let mut target = t.target.clone();
    target.table = PROBE_TABLE.to_string();
    let chunks = tc
        .engines
        .first()
        .map(|e| e.chunks.as_slice())
        .unwrap_or(&[]);
    for ch in chunks {
        let (Some(name), Some((start, end))) = (&ch.file, ch.offset_range) else {
            continue;
        };
        let Some(reader) = t.readers.iter().find(|r| &r.file.name == name).cloned() else {
            continue;
        };
        let mut w = writer::RegionWriter::on(
            c,
            &target,
            t.shape.clone(),
            OnDuplicate::Error,
            &reader.file,
            // INSERTs: a load reads the columns from information_schema,
            // which does not list temporary tables.
            false,
        )
        .await?;
        let (tx, mut rx) = mpsc::channel::<Parsed>(4);
        let parser = tokio::task::spawn_blocking(move || {
            let result = region::read_region(&reader, start, end, &mut |b| {
                tx.blocking_send(Parsed::Batch(b)).is_ok()
            });
            let _ = tx.blocking_send(match result {
                Ok(n) => Parsed::Done(n),
                Err(e) => Parsed::Failed(e),
            });
        });
        while let Some(p) = rx.recv().await {
            match p {
                Parsed::Batch(b) => match w.write(&b).await {
                    Ok(()) => {}
                    Err(e @ ImportError::Parse { .. }) => return Ok(Some(e)),
                    Err(e) => return Err(e),
                },
                Parsed::Done(_) => break,
                Parsed::Failed(e) => return Err(e),
            }
        }
        drop(rx);
        let _ = parser.await;
        // The rows of a load still in its buffer go now.
        match w.flush().await {
            Ok(()) => {}
            Err(e @ ImportError::Parse { .. }) => return Ok(Some(e)),
            Err(e) => return Err(e),
        }
        c = w.roll_back().await?;
    }
    let _ = c.disconnect().await;
    Ok(None)
}
