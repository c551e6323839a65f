//! The shadow table: `_<t>_new`, created with the new schema, filled by the
//! copy, verified, and (after the online issue) renamed to `t` at cut-over.
//!
//! It is created as `CREATE TABLE _t_new LIKE t` plus the ALTER, so it gets
//! exactly what the server's own ALTER would give. With deferred secondary
//! indexes, non-unique secondary indexes are dropped right after and added
//! back in one ALTER after the copy (Spirit's RestoreSecondaryIndexes): the
//! server builds a sorted index once instead of maintaining it per row.
//! Unique indexes are never deferred: they are what refuses duplicates.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_backend::{ColumnSpec, TargetTable};

use crate::plan::TablePlan;
use crate::server::inspect::{inspect_table, table_exists, TableInfo};
use crate::server::{quote_ident, Context, DbError};

pub use crate::names::{old_name, shadow_name};

/// What the copy reads from the source and writes to the shadow.
#[derive(Debug, Clone)]
pub struct CopyLayout {
    /// SELECT expressions over the source, one per copied column.
    pub select: Vec<String>,
    /// How to decode each selected value (source kind, named with the *new* name).
    pub read_specs: Vec<ColumnSpec>,
    /// The source's chunk key (old names and kinds).
    pub chunk_key: Vec<ColumnSpec>,
    /// The shadow table as the backends see it.
    pub target: TargetTable,
    /// Target column names, in `select` order.
    pub target_columns: Vec<String>,
    /// Source column names, in `select` order.
    pub source_columns: Vec<String>,
    /// SELECT expressions of a server-side copy (`INSERT … SELECT`), in
    /// `select` order: the column, converted in the server's time zone where
    /// the server's own ALTER would (see `wraith_backend::ZoneShift`).
    pub server_select: Vec<String>,
}

/// Plans what is read and written, from the source table and the plan.
pub fn layout(
    old: &TableInfo,
    plan: &TablePlan,
    target_schema: &str,
) -> Result<CopyLayout, String> {
    let mut select = Vec::new();
    let mut read_specs = Vec::new();
    let mut target_columns = Vec::new();
    let mut source_columns = Vec::new();
    let mut server_select = Vec::new();
    for (from, to) in plan.copied_columns() {
        let col = old
            .column(from)
            .ok_or_else(|| format!("column {from} vanished from {}", old.name))?;
        let mut spec = col.spec(to).ok_or_else(|| {
            format!(
                "column {from} of {} has type {}, which wraith cannot copy",
                old.name, col.column_type
            )
        })?;
        // FLOAT widened to DOUBLE (the text protocol prints 6 digits),
        // INET4/INET6/UUID as their binary form (what a row event holds).
        select.push(spec.kind.read_expr(&quote_ident(&col.name)));
        spec.zone_shift = plan.zone_shift(to);
        server_select.push(match &spec.zone_shift {
            Some(shift) => shift.wrap_expr(&quote_ident(&col.name)),
            None => quote_ident(&col.name),
        });
        read_specs.push(spec);
        target_columns.push(to.to_string());
        source_columns.push(col.name.clone());
    }
    let chunk_key = plan
        .chunk_key
        .iter()
        .map(|k| {
            old.column(k)
                .and_then(|c| c.spec(&c.name))
                .ok_or_else(|| format!("key column {k} of {} cannot be read", old.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let key_columns = plan
        .new_key
        .iter()
        .map(|k| {
            target_columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(k))
                .ok_or_else(|| format!("new key column {k} is not copied"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CopyLayout {
        select,
        target: TargetTable {
            schema: target_schema.to_string(),
            table: shadow_name(&old.name),
            columns: read_specs.clone(),
            key_columns,
            transient_unique_indexes: plan.transient_unique_indexes.clone(),
        },
        read_specs,
        chunk_key,
        target_columns,
        source_columns,
        server_select,
    })
}

/// Why the shadow table could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("{schema}.{name} already exists (left by an earlier run?); drop it with DROP TABLE `{schema}`.`{name}` and run again")]
    Exists { schema: String, name: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Creates `_t_new` in `target_schema` with the ALTER applied and deferred
/// indexes left out. Refuses if it exists.
pub async fn create(
    conn: &mut Conn,
    source_schema: &str,
    target_schema: &str,
    table: &str,
    alter: &str,
    plan: &TablePlan,
) -> Result<TableInfo, ShadowError> {
    let shadow = shadow_name(table);
    if table_exists(conn, target_schema, &shadow).await? {
        return Err(ShadowError::Exists {
            schema: target_schema.to_string(),
            name: shadow,
        });
    }
    let qshadow = format!("{}.{}", quote_ident(target_schema), quote_ident(&shadow));
    conn.query_drop(format!(
        "CREATE TABLE {qshadow} LIKE {}.{}",
        quote_ident(source_schema),
        quote_ident(table)
    ))
    .await
    .context(|| format!("creating {shadow}"))?;
    conn.query_drop(format!("ALTER TABLE {qshadow} {alter}"))
        .await
        .context(|| format!("applying the ALTER to {shadow}"))?;
    crate::implicit::hold(conn, target_schema, &shadow, &plan.implicit_values).await?;
    if !plan.deferred_indexes.is_empty() {
        let drops: Vec<String> = plan
            .deferred_indexes
            .iter()
            .map(|i| format!("DROP INDEX {}", quote_ident(&i.name)))
            .collect();
        conn.query_drop(format!("ALTER TABLE {qshadow} {}", drops.join(", ")))
            .await
            .context(|| format!("deferring secondary indexes of {shadow}"))?;
    }
    Ok(inspect_table(conn, target_schema, &shadow).await?)
}

/// Adds the deferred indexes back, in one ALTER (one pass over the table).
pub async fn restore_indexes(
    conn: &mut Conn,
    target_schema: &str,
    table: &str,
    plan: &TablePlan,
) -> Result<(), DbError> {
    if plan.deferrable_indexes.is_empty() {
        return Ok(());
    }
    let shadow = shadow_name(table);
    // A resumed run may find some already built (the ALTER is atomic, the
    // checkpoint after it may not have been written).
    let existing = inspect_table(conn, target_schema, &shadow).await?;
    let adds: Vec<String> = plan
        .deferrable_indexes
        .iter()
        .filter(|i| !existing.indexes.iter().any(|e| e.name == i.name))
        .map(|i| format!("ADD {}", i.definition))
        .collect();
    if adds.is_empty() {
        return Ok(());
    }
    conn.query_drop(format!(
        "ALTER TABLE {}.{} {}",
        quote_ident(target_schema),
        quote_ident(&shadow),
        adds.join(", ")
    ))
    .await
    .context(|| format!("restoring secondary indexes of {shadow}"))
}

/// Drops the shadow table (after a failed run that cannot be resumed).
pub async fn drop_shadow(conn: &mut Conn, target_schema: &str, table: &str) -> Result<(), DbError> {
    let shadow = shadow_name(table);
    conn.query_drop(format!(
        "DROP TABLE IF EXISTS {}.{}",
        quote_ident(target_schema),
        quote_ident(&shadow)
    ))
    .await
    .context(|| format!("dropping {shadow}"))
}
