//! The checksum: is the shadow table the source under the column mapping?
//!
//! Both sides compute, per key range and on the server, `COUNT(*)`,
//! `BIT_XOR(h)` and `SUM(h)` where `h = CRC32(CONCAT_WS('#', cols..., ISNULL
//! flags...))` over the copied columns. The NULL flags keep `NULL` and `''`
//! apart (only for columns that may be NULL on either side, or whose type
//! changed); XOR and SUM together catch what either alone misses (a row counted
//! twice cancels in XOR, not in SUM). Every value is compared as bytes
//! (`CAST(.. AS BINARY)`), and a column whose type the ALTER changed is first
//! converted on the source side to the new type (`CAST(old AS DECIMAL(12,4))`,
//! `CONVERT(old USING utf8mb4)`, ...), so the server's own conversion is what
//! is compared. A column the server's own ALTER converts in its time zone
//! (TIMESTAMP on one side only) is converted the same way first
//! (`wraith_backend::ZoneShift`): both sides read in UTC, and the source
//! side computes what the server's ALTER would have stored. The source and shadow queries of a range run concurrently.
//!
//! Ranges follow the source's chunk key when the new table is keyed on the
//! same columns (the common case; both sides scan their primary key). When
//! the key changed, the shadow has no index on the old key, so the whole table
//! is compared in one pass (XOR and SUM do not depend on order).
//!
//! The shadow is read only through its key index (`FORCE INDEX`), which it
//! had from its creation: the checksum runs while the deferred secondary
//! indexes are being added to the shadow, and its snapshot may be older
//! than that ALTER's commit. InnoDB refuses such a snapshot an index built
//! after it (error 1412, "Table definition has changed"), and the optimizer
//! would pick a new index that covers the query (a `COUNT(*)`, a table
//! whose columns are all in one index); the clustered index is always there.
//!
//! On a mismatch, the differing rows are found by streaming `(key, h)` of the
//! range from both sides in key order and merging, and the first keys are
//! named in the error as SQL (`` `id` = 5 ``, `` (`a`, `b`) = (1, 'x') ``).
//!
//! [`crate::verify`] compares chosen rows with the same per-row expressions
//! (`sides`), for the rows changed after the checksum.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_backend::ColumnSpec;

use crate::chunker::{Chunk, Chunker, KeySql};
use crate::copy::read_conn;
use crate::plan::{ColumnChange, TablePlan};
use crate::server::inspect::{ColumnInfo, TableInfo};
use crate::server::{quote_ident, Context, DbError};
use crate::verify::{key_text, literal_expr, readable_literal};

/// Why the checksum could not run or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("checksum mismatch between {source_table} and {shadow}: {detail}; the shadow table is not a copy of the source, so wraith stops before cut-over")]
    Mismatch {
        source_table: String,
        shadow: String,
        detail: String,
        /// The first keys that differ, as text.
        keys: Vec<String>,
    },
    #[error("checksum setup: {0}")]
    Setup(String),
}

/// What the checksum compared.
#[derive(Debug, Clone, Default)]
pub struct ChecksumReport {
    pub rows: u64,
    pub ranges: u64,
    pub elapsed: Duration,
}

/// One side of the comparison.
#[derive(Debug)]
pub(crate) struct Side {
    schema: String,
    pub(crate) table: String,
    /// Value expressions, one per copied column, as bytes.
    exprs: Vec<String>,
    /// Per column: whether it needs a NULL flag (it may be NULL on either
    /// side, or its type changed, where a failed conversion gives NULL).
    flagged: Vec<bool>,
    /// Key column specs with this side's names (for ranges and ordering),
    /// in the new key's order.
    pub(crate) key: Vec<ColumnSpec>,
    /// The index every read goes through (the shadow's key index; see the
    /// module's doc), if any.
    index: Option<String>,
}

impl Side {
    fn hash_expr(&self) -> String {
        // Flags only where a NULL can occur: on a wide NOT NULL table they
        // would double the server's work per row for nothing.
        let flags: Vec<String> = self
            .exprs
            .iter()
            .zip(&self.flagged)
            .filter(|(_, f)| **f)
            .map(|(e, _)| format!("ISNULL({e})"))
            .collect();
        let mut parts = self.exprs.clone();
        parts.extend(flags);
        format!("CRC32(CONCAT_WS('#', {}))", parts.join(", "))
    }

    /// The table as the FROM clause names it, with its index hint.
    fn qualified(&self) -> String {
        let table = format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table));
        match &self.index {
            Some(index) => format!("{table} FORCE INDEX ({})", quote_ident(index)),
            None => table,
        }
    }

    pub(crate) fn aggregate_sql(&self, cond: &str) -> String {
        let h = self.hash_expr();
        format!(
            "SELECT COUNT(*), CAST(COALESCE(BIT_XOR({h}), 0) AS CHAR), CAST(COALESCE(SUM({h}), 0) AS CHAR) FROM {} WHERE {cond}",
            self.qualified()
        )
    }

    /// `(key as SQL literals, h)` of the rows matching `cond`, in key order.
    pub(crate) fn rows_sql(&self, cond: &str) -> String {
        let keys: Vec<String> = self.key.iter().map(literal_expr).collect();
        let order = KeySql { key: &self.key }.order_by();
        format!(
            "SELECT CONCAT_WS(', ', {}), {} FROM {} WHERE {cond} ORDER BY {order}",
            keys.join(", "),
            self.hash_expr(),
            self.qualified()
        )
    }

    /// A key as `rows_sql` renders it, for messages: `` `id` = 5 ``.
    pub(crate) fn key_display(&self, literals: &str) -> String {
        let names: Vec<&str> = self.key.iter().map(|k| k.name.as_str()).collect();
        key_text(&names, literals)
    }
}

/// The CAST a source value needs to compare as the new column's type; with
/// a time zone conversion, the server's conversion comes first (what the
/// copy wrote), so the checksum compares against the correctly converted
/// source, not against wraith's UTC reading of it.
pub(crate) fn cast_to_new(
    old: &ColumnInfo,
    new: &ColumnInfo,
    shift: Option<&wraith_backend::ZoneShift>,
) -> String {
    let col = match shift {
        Some(shift) => shift.wrap_expr(&quote_ident(&old.name)),
        None => quote_ident(&old.name),
    };
    let t = new.column_type.to_ascii_lowercase();
    let paren = t
        .find('(')
        .map(|i| &t[i..])
        .and_then(|p| p.split(')').next().map(|s| format!("{s})")));
    match new.data_type.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
            if new.is_unsigned() {
                format!("CAST({col} AS UNSIGNED)")
            } else {
                format!("CAST({col} AS SIGNED)")
            }
        }
        "decimal" | "numeric" => format!("CAST({col} AS DECIMAL{})", paren.unwrap_or_default()),
        "double" | "real" => format!("CAST({col} AS DOUBLE)"),
        "float" => format!("CAST({col} AS FLOAT)"),
        "date" => format!("CAST({col} AS DATE)"),
        "datetime" | "timestamp" => format!("CAST({col} AS DATETIME{})", paren.unwrap_or_default()),
        "time" => format!("CAST({col} AS TIME{})", paren.unwrap_or_default()),
        // Text into INET4/INET6/UUID is parsed by the server (the copy's
        // path too); the binary form is what the shadow holds.
        "inet4" => format!("CAST({col} AS INET4)"),
        "inet6" => format!("CAST({col} AS INET6)"),
        "uuid" => format!("CAST({col} AS UUID)"),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            match &new.charset {
                Some(cs) if old.charset.as_deref() != Some(cs.as_str()) => {
                    format!("CONVERT({col} USING {cs})")
                }
                _ => col,
            }
        }
        _ => col,
    }
}

fn as_bytes(expr: String) -> String {
    format!("CAST({expr} AS BINARY)")
}

/// Compares the source and the shadow table under the plan's mapping, on
/// fresh connections (for a table nobody writes).
pub async fn checksum_table(
    source_pool: &Pool,
    target_pool: &Pool,
    old: &TableInfo,
    new: &TableInfo,
    plan: &TablePlan,
    target: Duration,
) -> Result<ChecksumReport, ChecksumError> {
    let mut sconn = read_conn(source_pool).await?;
    let mut tconn = read_conn(target_pool).await?;
    checksum_on(&mut sconn, &mut tconn, old, new, plan, target).await
}

/// Compares on the given sessions. For a table under writes, the caller opens
/// both in consistent snapshots taken at one logical point (source locked,
/// shadow caught up), so the two sides are compared as of that point.
pub async fn checksum_on(
    sconn: &mut Conn,
    tconn: &mut Conn,
    old: &TableInfo,
    new: &TableInfo,
    plan: &TablePlan,
    target: Duration,
) -> Result<ChecksumReport, ChecksumError> {
    let started = std::time::Instant::now();
    let (source, shadow, aligned) = sides(old, new, plan)?;

    let mut report = ChecksumReport::default();
    if aligned {
        let mut chunker = Chunker::new(
            sconn,
            &old.schema,
            &old.name,
            source.key.clone(),
            target,
            10_000,
        )
        .await?;
        while let Some(chunk) = chunker.next(sconn).await? {
            let t0 = std::time::Instant::now();
            let rows = compare_range(sconn, tconn, &source, &shadow, Some(&chunk)).await?;
            chunker.feedback(rows, t0.elapsed(), crate::chunker::int_span(&chunk));
            report.rows += rows;
            report.ranges += 1;
        }
    } else {
        report.rows = compare_range(sconn, tconn, &source, &shadow, None).await?;
        report.ranges = 1;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Both sides of the comparison under the plan's mapping, and whether
/// ranges of the source's chunk key work on both (the new key is the same
/// columns). Each side's key is in the new key's order.
pub(crate) fn sides(
    old: &TableInfo,
    new: &TableInfo,
    plan: &TablePlan,
) -> Result<(Side, Side, bool), ChecksumError> {
    let mut source_exprs = Vec::new();
    let mut shadow_exprs = Vec::new();
    let mut flagged = Vec::new();
    for change in &plan.columns {
        let Some((from, to)) = change.copied() else {
            continue;
        };
        let oc = old
            .column(from)
            .ok_or_else(|| ChecksumError::Setup(format!("column {from} missing")))?;
        let nc = new
            .column(to)
            .ok_or_else(|| ChecksumError::Setup(format!("column {to} missing in the shadow")))?;
        let (src, converted) = match change {
            ColumnChange::TypeChanged { .. } | ColumnChange::RenamedTypeChanged { .. } => {
                (cast_to_new(oc, nc, plan.zone_shift(to).as_ref()), true)
            }
            _ => (quote_ident(&oc.name), false),
        };
        flagged.push(oc.nullable || nc.nullable || converted);
        source_exprs.push(as_bytes(src));
        shadow_exprs.push(as_bytes(quote_ident(&nc.name)));
    }
    // Columns the ALTER adds NOT NULL without a DEFAULT hold one value in
    // every row (see `crate::implicit`): compared against its bytes.
    for v in &plan.implicit_values {
        let nc = new.column(&v.column).ok_or_else(|| {
            ChecksumError::Setup(format!("column {} missing in the shadow", v.column))
        })?;
        flagged.push(false);
        source_exprs.push(as_bytes(v.bytes_expr()));
        shadow_exprs.push(as_bytes(quote_ident(&nc.name)));
    }
    let renamed = |old_name: &str| -> Option<String> {
        plan.copied_columns()
            .into_iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(old_name))
            .map(|(_, t)| t.to_string())
    };
    let spec_of =
        |table: &TableInfo, name: &str, as_name: &str| -> Result<ColumnSpec, ChecksumError> {
            table
                .column(name)
                .and_then(|c| c.spec(as_name))
                .ok_or_else(|| ChecksumError::Setup(format!("key column {name} cannot be read")))
        };
    // Shadow-side key bounds are source values: converted as the copy did.
    let shadow_spec_of = |name: &str, as_name: &str| -> Result<ColumnSpec, ChecksumError> {
        let mut spec = spec_of(old, name, as_name)?;
        spec.zone_shift = plan.zone_shift(as_name);
        Ok(spec)
    };
    // Ranges by the old key work on both sides when the new key is the same columns.
    let chunk_key_new: Vec<Option<String>> = plan.chunk_key.iter().map(|k| renamed(k)).collect();
    let aligned = chunk_key_new.len() == plan.new_key.len()
        && chunk_key_new
            .iter()
            .zip(&plan.new_key)
            .all(|(a, b)| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b)));
    let (source_key, shadow_key) = if aligned {
        let s = plan
            .chunk_key
            .iter()
            .map(|k| spec_of(old, k, k))
            .collect::<Result<Vec<_>, _>>()?;
        let t = plan
            .chunk_key
            .iter()
            .zip(&plan.new_key)
            .map(|(k, nk)| shadow_spec_of(k, nk))
            .collect::<Result<Vec<_>, _>>()?;
        (s, t)
    } else {
        // Order by the new key on both sides (source: its old names).
        let mut s = Vec::new();
        let mut t = Vec::new();
        for nk in &plan.new_key {
            let from = plan
                .copied_columns()
                .into_iter()
                .find(|(_, to)| to.eq_ignore_ascii_case(nk))
                .map(|(f, _)| f.to_string())
                .ok_or_else(|| {
                    ChecksumError::Setup(format!("new key column {nk} is not copied"))
                })?;
            s.push(spec_of(old, &from, &from)?);
            t.push(shadow_spec_of(&from, nk)?);
        }
        (s, t)
    };
    let source = Side {
        schema: old.schema.clone(),
        table: old.name.clone(),
        exprs: source_exprs,
        flagged: flagged.clone(),
        key: source_key,
        index: None,
    };
    let shadow = Side {
        schema: new.schema.clone(),
        table: new.name.clone(),
        exprs: shadow_exprs,
        flagged,
        key: shadow_key,
        index: key_index(new, &plan.new_key),
    };

    Ok((source, shadow, aligned))
}

/// The index of `table` on exactly the `key` columns that is its PRIMARY
/// KEY or a unique key (never one of the deferred secondary indexes, which
/// are neither), the PRIMARY KEY first.
fn key_index(table: &TableInfo, key: &[String]) -> Option<String> {
    let on_key = |i: &&crate::server::inspect::IndexInfo| {
        (i.primary || i.unique)
            && !i.has_prefix
            && i.columns.len() == key.len()
            && i.columns
                .iter()
                .zip(key)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    };
    table
        .indexes
        .iter()
        .filter(on_key)
        .min_by_key(|i| !i.primary)
        .map(|i| i.name.clone())
}

async fn compare_range(
    sconn: &mut Conn,
    tconn: &mut Conn,
    source: &Side,
    shadow: &Side,
    chunk: Option<&Chunk>,
) -> Result<u64, ChecksumError> {
    let (scond, tcond) = match chunk {
        Some(c) => (
            KeySql { key: &source.key }.range(c),
            KeySql { key: &shadow.key }.range(c),
        ),
        None => ("1=1".to_string(), "1=1".to_string()),
    };
    type Agg = Option<(u64, String, String)>;
    let ssql = source.aggregate_sql(&scond);
    let tsql = shadow.aggregate_sql(&tcond);
    let (s, t): (Agg, Agg) = tokio::try_join!(
        async {
            sconn
                .query_first(ssql)
                .await
                .context(|| format!("checksumming {}", source.table))
        },
        async {
            tconn
                .query_first(tsql)
                .await
                .context(|| format!("checksumming {}", shadow.table))
        },
    )?;
    if s == t {
        return Ok(s.map(|(n, _, _)| n).unwrap_or(0));
    }
    let keys = differing_keys(sconn, tconn, source, shadow, &scond, &tcond).await?;
    let fmt = |a: &Agg| match a {
        Some((n, x, sum)) => format!("{n} rows, xor {x}, sum {sum}"),
        None => "nothing".into(),
    };
    let range = match chunk {
        Some(c) => {
            let bound = |b: &Option<Vec<wraith_backend::Value>>, none: &str| match b {
                Some(v) => source.key_display(
                    &v.iter()
                        .map(readable_literal)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                None => none.to_string(),
            };
            format!(
                "the keys after {} up to {}",
                bound(&c.lower, "the start"),
                bound(&c.upper, "the end")
            )
        }
        None => "the whole table".into(),
    };
    Err(ChecksumError::Mismatch {
        source_table: source.table.clone(),
        shadow: shadow.table.clone(),
        detail: format!(
            "in {range}: source has {}, shadow has {}; first differing keys: {}",
            fmt(&s),
            fmt(&t),
            if keys.is_empty() {
                "(none found)".to_string()
            } else {
                keys.join("; ")
            }
        ),
        keys,
    })
}

/// Merges `(key, hash)` streams of both sides and names up to 10 keys that differ.
async fn differing_keys(
    sconn: &mut Conn,
    tconn: &mut Conn,
    source: &Side,
    shadow: &Side,
    scond: &str,
    tcond: &str,
) -> Result<Vec<String>, ChecksumError> {
    let s: Vec<(Option<Vec<u8>>, u64)> = sconn
        .query(source.rows_sql(scond))
        .await
        .context(|| format!("locating differences in {}", source.table))?;
    let t: Vec<(Option<Vec<u8>>, u64)> = tconn
        .query(shadow.rows_sql(tcond))
        .await
        .context(|| format!("locating differences in {}", shadow.table))?;
    let text = |k: &Option<Vec<u8>>| {
        source.key_display(&String::from_utf8_lossy(k.as_deref().unwrap_or_default()))
    };
    let smap: std::collections::BTreeMap<String, u64> =
        s.iter().map(|(k, h)| (text(k), *h)).collect();
    let tmap: std::collections::BTreeMap<String, u64> =
        t.iter().map(|(k, h)| (text(k), *h)).collect();
    let mut out = Vec::new();
    for (k, h) in &smap {
        match tmap.get(k) {
            None => out.push(format!("{k} missing from the shadow")),
            Some(th) if th != h => out.push(format!("{k} differs")),
            _ => {}
        }
        if out.len() >= 10 {
            return Ok(out);
        }
    }
    for k in tmap.keys() {
        if !smap.contains_key(k) {
            out.push(format!("{k} only in the shadow"));
            if out.len() >= 10 {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::inspect::IndexInfo;

    fn index(name: &str, primary: bool, unique: bool, columns: &[&str]) -> IndexInfo {
        IndexInfo {
            name: name.into(),
            unique,
            primary,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            kind: "BTREE".into(),
            has_prefix: false,
            definition: String::new(),
        }
    }

    fn table(indexes: Vec<IndexInfo>) -> TableInfo {
        TableInfo {
            schema: "db".into(),
            name: "_t_new".into(),
            engine: "InnoDB".into(),
            columns: Vec::new(),
            indexes,
            estimated_rows: 0,
            estimated_bytes: 0,
            create_time: None,
            create_statement: String::new(),
        }
    }

    #[test]
    fn the_shadow_is_read_through_its_key_index_only() {
        let key = vec!["id".to_string()];
        // A secondary index that covers the key (InnoDB appends it) is not the key index.
        let t = table(vec![
            index("k_1", false, false, &["k"]),
            index("uk_id", false, true, &["ID"]),
            index("PRIMARY", true, true, &["id"]),
        ]);
        assert_eq!(key_index(&t, &key).as_deref(), Some("PRIMARY"));
        let t = table(vec![
            index("k_1", false, false, &["id"]),
            index("uk_id", false, true, &["id"]),
        ]);
        assert_eq!(key_index(&t, &key).as_deref(), Some("uk_id"));
        assert_eq!(
            key_index(&table(vec![index("k_1", false, false, &["id"])]), &key),
            None
        );
        let side = Side {
            schema: "db".into(),
            table: "_t_new".into(),
            exprs: vec!["CAST(`c` AS BINARY)".into()],
            flagged: vec![false],
            key: Vec::new(),
            index: Some("PRIMARY".into()),
        };
        assert!(
            side.aggregate_sql("1=1")
                .contains("FROM `db`.`_t_new` FORCE INDEX (`PRIMARY`) WHERE 1=1"),
            "{}",
            side.aggregate_sql("1=1")
        );
    }
}
