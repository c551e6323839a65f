//! Verification after the checksum, and the errors that stop a run before
//! the rename when the shadow table cannot be the source under the new schema.
//!
//! The checksum compares the whole table at one consistent point; changes
//! keep being applied after it (while the cut-over waits, and in the final
//! catch-up under the cut-over's lock). The online state records the key of
//! every row the applier writes after that point; [`RowVerifier`] compares
//! those rows again, source row against shadow row with the checksum's own
//! per-row expressions, at a later consistent point (source locked, stream
//! drained, snapshots opened) and finally under the cut-over's lock, before
//! the rename is released. A row that differs stops the run.
//!
//! A change whose row cannot be written because another row already holds
//! its value of a unique index of the new table is kept pending and retried
//! (the other row may be about to change); at a consistent point a clash
//! that remains is a real duplicate: [`VerifyError::UniqueClash`] names the
//! index and the values.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_backend::{ColumnKind, ColumnSpec, Row, TargetTable, Value};

use crate::checksum::{sides, ChecksumError, Side};
use crate::plan::TablePlan;
use crate::server::inspect::TableInfo;
use crate::server::{quote_ident, quote_str, Context, DbError};

/// Keys compared per query.
const KEYS_PER_QUERY: usize = 500;

/// Why the shadow table cannot become the table.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    UniqueClash(Box<UniqueClash>),
    #[error(
        "{table}: rows changed after the checksum differ between the source and {shadow} \
         ({point}): {detail}. The shadow table is not a copy of the source, so wraith stops \
         before the cut-over: nothing was renamed and the source is untouched. Run `wraith run \
         --fresh` with the same config to rebuild"
    )]
    Mismatch {
        table: String,
        shadow: String,
        point: String,
        detail: String,
        /// The keys that differ, in SQL-literal form.
        keys: Vec<String>,
    },
    #[error("preparing the verification of {table}: {message}")]
    Setup { table: String, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A change that cannot be written: another row holds its values of a
/// unique index of the new table, at a point where nothing else can change.
#[derive(Debug, thiserror::Error)]
#[error(
    "{table}: the unique index {index} of the new table would hold {key} twice: the row \
     {row} of {table} has it, and so does the row {other} ({point}). wraith stops before \
     the cut-over: nothing was renamed, the source is untouched, and the row that holds \
     the value was left as it is (the clashing change is kept and applied on resume). Remove or change the duplicate in {table} (or take the unique \
     key out of the ALTER), then run `wraith run` with the same config again to resume"
)]
pub struct UniqueClash {
    pub table: String,
    /// The index of the new table, as the server names it.
    pub index: String,
    /// The index's values, e.g. `` `email` = 'a@x' ``.
    pub key: String,
    /// The row whose change could not be written, by its key.
    pub row: String,
    /// The row that holds the values, by its key (or "another row").
    pub other: String,
    /// Where the clash was judged to be real.
    pub point: String,
}

impl VerifyError {
    /// Whether a rerun can resume: a duplicate can be fixed in the source
    /// and the shadow is right; a mismatch means the shadow is wrong.
    pub fn is_resumable(&self) -> bool {
        !matches!(
            self,
            VerifyError::Mismatch { .. } | VerifyError::Setup { .. }
        )
    }
}

/// A value as an SQL literal an operator can read and paste: numbers bare,
/// text quoted, bytes that are not printable text as `X'..'`.
pub fn readable_literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_string(),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) if !s.chars().any(char::is_control) => quote_str(s),
            _ => {
                let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
                format!("X'{hex}'")
            }
        },
        Value::Date { .. } | Value::Time { .. } | Value::DateTime { .. } => {
            let mut out = Vec::new();
            v.write_plain_text(&mut out);
            quote_str(&String::from_utf8_lossy(&out))
        }
        _ => {
            let mut out = Vec::new();
            v.write_plain_text(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    }
}

/// `` `id` = 5 `` or `` (`a`, `b`) = (1, 'x') ``.
pub fn readable_key(names: &[&str], values: &[Value]) -> String {
    let lits: Vec<String> = values.iter().map(readable_literal).collect();
    key_text(names, &lits.join(", "))
}

/// `` `id` = 5 `` or `` (`a`, `b`) = (1, 'x') `` from the literals' text.
pub fn key_text(names: &[&str], literals: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
    if names.len() == 1 {
        format!("{} = {literals}", quoted.join(", "))
    } else {
        format!("({}) = ({literals})", quoted.join(", "))
    }
}

/// SQL that renders a key column's value as an SQL literal (as
/// [`readable_literal`] does), in bytes, so both sides render alike.
pub fn literal_expr(spec: &ColumnSpec) -> String {
    let col = quote_ident(&spec.name);
    let e = match spec.kind {
        ColumnKind::Int
        | ColumnKind::Float
        | ColumnKind::Double
        | ColumnKind::Decimal
        | ColumnKind::Year
        | ColumnKind::Bit => format!("CAST({col} + 0 AS CHAR)"),
        ColumnKind::Binary | ColumnKind::Geometry => format!("CONCAT('X''', HEX({col}), '''')"),
        _ => format!("QUOTE({col})"),
    };
    format!("CAST(COALESCE({e}, 'NULL') AS BINARY)")
}

/// The SQL condition selecting the rows with `keys` (values in `specs` order).
fn keys_condition(specs: &[ColumnSpec], keys: &[&Vec<Value>]) -> String {
    let mut out = Vec::new();
    for key in keys {
        let mut parts = Vec::new();
        for (spec, v) in specs.iter().zip(key.iter()) {
            let mut lit = Vec::new();
            v.write_sql_literal(spec, &mut lit);
            parts.push(format!(
                "{} = {}",
                quote_ident(&spec.name),
                String::from_utf8_lossy(&lit)
            ));
        }
        out.push(format!("({})", parts.join(" AND ")));
    }
    if out.is_empty() {
        "1=0".to_string()
    } else {
        out.join(" OR ")
    }
}

/// Compares chosen rows of the source and the shadow under the column mapping.
#[derive(Debug)]
pub struct RowVerifier {
    source: Side,
    shadow: Side,
}

impl RowVerifier {
    pub fn new(old: &TableInfo, new: &TableInfo, plan: &TablePlan) -> Result<Self, VerifyError> {
        let (source, shadow, _) = sides(old, new, plan).map_err(|e| VerifyError::Setup {
            table: old.name.clone(),
            message: match e {
                ChecksumError::Setup(m) => m,
                e => e.to_string(),
            },
        })?;
        Ok(RowVerifier { source, shadow })
    }

    /// Compares the rows with `keys` (shadow key values, in the new key's
    /// order) on `sconn` (source) and `tconn` (shadow; `None`: `sconn` reads
    /// both), which must see one consistent point. Returns how many keys
    /// were compared.
    pub async fn verify(
        &self,
        sconn: &mut Conn,
        mut tconn: Option<&mut Conn>,
        keys: &[Vec<Value>],
        point: &str,
    ) -> Result<u64, VerifyError> {
        let mut differ = Vec::new();
        let refs: Vec<&Vec<Value>> = keys.iter().collect();
        for part in refs.chunks(KEYS_PER_QUERY) {
            let s = self.rows(sconn, &self.source, part).await?;
            let t = match tconn.as_deref_mut() {
                Some(tconn) => self.rows(tconn, &self.shadow, part).await?,
                None => self.rows(sconn, &self.shadow, part).await?,
            };
            for (k, h) in &s {
                match t.get(k) {
                    None => differ.push(format!("{k} missing from the shadow")),
                    Some(th) if th != h => differ.push(format!("{k} differs")),
                    _ => {}
                }
            }
            for k in t.keys().filter(|k| !s.contains_key(*k)) {
                differ.push(format!("{k} only in the shadow"));
            }
        }
        if differ.is_empty() {
            return Ok(keys.len() as u64);
        }
        let shown: Vec<String> = differ.iter().take(10).cloned().collect();
        Err(VerifyError::Mismatch {
            table: self.source.table.clone(),
            shadow: self.shadow.table.clone(),
            point: point.to_string(),
            detail: format!("{} rows, first: {}", differ.len(), shown.join("; ")),
            keys: differ,
        })
    }

    async fn rows(
        &self,
        conn: &mut Conn,
        side: &Side,
        keys: &[&Vec<Value>],
    ) -> Result<BTreeMap<String, u64>, VerifyError> {
        let cond = keys_condition(&side.key, keys);
        let rows: Vec<(Vec<u8>, u64)> = conn
            .query(side.rows_sql(&cond))
            .await
            .context(|| format!("re-verifying changed rows of {}", side.table))?;
        Ok(rows
            .into_iter()
            .map(|(k, h)| (side.key_display(&String::from_utf8_lossy(&k)), h))
            .collect())
    }
}

/// Describes a clash the server reported on `index` for `row` of the shadow
/// table: the index's values, the row's key, and the key of the row that
/// holds the values (read on `conn`, a session that may read the shadow).
pub async fn describe_clash(
    conn: &mut Conn,
    target: &TargetTable,
    table: &str,
    row: &Row,
    index: &str,
    point: &str,
) -> VerifyError {
    let key_names: Vec<&str> = target
        .key_columns
        .iter()
        .filter_map(|&i| target.columns.get(i).map(|c| c.name.as_str()))
        .collect();
    let key_values: Vec<Value> = target
        .key_columns
        .iter()
        .filter_map(|&i| row.get(i).cloned())
        .collect();
    let row_text = readable_key(&key_names, &key_values);
    // MySQL 8 names the index `table.index`.
    let index = index
        .strip_prefix(&format!("{}.", target.table))
        .unwrap_or(index)
        .to_string();
    let columns: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = ? ORDER BY SEQ_IN_INDEX",
            (&target.schema, &target.table, &index),
        )
        .await
        .unwrap_or_default();
    let positions: Vec<usize> = columns
        .iter()
        .filter_map(|c| target.columns.iter().position(|t| t.name == *c))
        .collect();
    let (key, other) = if positions.is_empty() || positions.len() != columns.len() {
        (
            format!("the values of {row_text}"),
            "another row".to_string(),
        )
    } else {
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let values: Vec<Value> = positions
            .iter()
            .filter_map(|&p| row.get(p).cloned())
            .collect();
        let specs: Vec<ColumnSpec> = positions
            .iter()
            .filter_map(|&p| target.columns.get(p).cloned())
            .collect();
        let key = readable_key(&names, &values);
        let key_specs: Vec<ColumnSpec> = target
            .key_columns
            .iter()
            .filter_map(|&i| target.columns.get(i).cloned())
            .collect();
        let select: Vec<String> = key_specs.iter().map(literal_expr).collect();
        let sql = format!(
            "SELECT CONCAT_WS(', ', {}) FROM {} WHERE {} LIMIT 1",
            select.join(", "),
            target.quoted_name(),
            keys_condition(&specs, &[&values])
        );
        let other = match conn.query_first::<Vec<u8>, _>(sql).await {
            Ok(Some(k)) => key_text(&key_names, &String::from_utf8_lossy(&k)),
            _ => "another row".to_string(),
        };
        (key, other)
    };
    VerifyError::UniqueClash(Box::new(UniqueClash {
        table: table.to_string(),
        index,
        key,
        row: row_text,
        other,
        point: point.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_readable_sql() {
        assert_eq!(readable_literal(&Value::Int(-5)), "-5");
        assert_eq!(readable_literal(&Value::Bytes(b"it's".to_vec())), "'it''s'");
        assert_eq!(readable_literal(&Value::Bytes(vec![0, 255])), "X'00FF'");
        assert_eq!(readable_literal(&Value::Null), "NULL");
        assert_eq!(
            readable_literal(&Value::Date {
                year: 2024,
                month: 2,
                day: 29
            }),
            "'2024-02-29'"
        );
        assert_eq!(
            readable_key(&["id"], &[Value::Int(7)]),
            "`id` = 7".to_string()
        );
        assert_eq!(
            readable_key(&["a", "b"], &[Value::Int(1), Value::Bytes(b"x".to_vec())]),
            "(`a`, `b`) = (1, 'x')".to_string()
        );
    }
}
