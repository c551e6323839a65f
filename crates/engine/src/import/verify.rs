//! `verify = "checksum"`: every parsed row against the table.
//!
//! Each row parsed from the files is typed ([`Value`]) and hashed over its
//! columns in name order, so the order of a file's columns does not matter;
//! a region's rows are summed into a [`RowsChecksum`] (count, XOR, sum)
//! kept in its chunk checkpoint, so a resumed import verifies without
//! parsing finished regions again. After the load the table is read back on
//! one connection with the exact-value session (FLOAT widened to DOUBLE, text
//! in the files' charset), typed by the same specs and hashed the same way.
//!
//! What it catches: rows changed on the way in (a trigger, a lossy
//! conversion, a row lost or doubled) that the row count misses. What it
//! cannot tell apart from a change: the server's normal forms of values the
//! files spell differently (DECIMAL `1.5` stored as `1.50` is handled;
//! trailing spaces of CHAR, or out-of-range dates clipped, are not). Dumps
//! written by mydumper or mysqldump use the server's forms already.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_backend::{ColumnKind, ColumnSpec, Row, Value};
use wraith_checkpoints::RowsChecksum;

use super::region::TableShape;
use super::ImportError;
use crate::server::inspect::TableInfo;
use crate::server::{quote_ident, Context};

/// Hashes rows of one column list.
pub struct RowHasher {
    /// Positions of the columns in name order.
    order: Vec<usize>,
    /// The column names in that order (lower case).
    names: Vec<String>,
    buf: Vec<u8>,
}

impl RowHasher {
    pub fn new(columns: &[String]) -> RowHasher {
        let mut order: Vec<usize> = (0..columns.len()).collect();
        order.sort_by_key(|&i| columns[i].to_lowercase());
        let names = order.iter().map(|&i| columns[i].to_lowercase()).collect();
        RowHasher {
            order,
            names,
            buf: Vec::with_capacity(512),
        }
    }

    /// A checksum of no rows over these columns.
    pub fn empty(&self) -> RowsChecksum {
        RowsChecksum::new(self.names.clone())
    }

    pub fn hash(&mut self, row: &Row) -> u64 {
        self.buf.clear();
        for &i in &self.order {
            canonical(row.get(i).unwrap_or(&Value::Null), &mut self.buf);
        }
        xxhash_rust::xxh3::xxh3_64(&self.buf)
    }
}

/// One value as tagged, length-prefixed bytes: NULL apart from every value,
/// no two value sequences with the same bytes.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    if matches!(v, Value::Null) {
        out.push(0);
        return;
    }
    out.push(1);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    match v {
        Value::Decimal(s) => normalize_decimal(s, out),
        other => other.write_plain_text(out),
    }
    let len = u32::try_from(out.len() - len_at - 4).unwrap_or(u32::MAX);
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

/// `-0012.3400` → `-12.34`, `0.000` → `0`: the value, not its spelling.
fn normalize_decimal(s: &str, out: &mut Vec<u8>) {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() {
        out.push(b'0');
        return;
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(if int.is_empty() { b"0" } else { int.as_bytes() });
    if !frac.is_empty() {
        out.push(b'.');
        out.extend_from_slice(frac.as_bytes());
    }
}

/// Reads `db.table`'s `columns` back and sums them as the parser did.
pub async fn table_checksum(
    conn: &mut Conn,
    db: &str,
    info: &TableInfo,
    shape: &TableShape,
    columns: &[String],
) -> Result<RowsChecksum, ImportError> {
    let specs: Vec<ColumnSpec> = shape.specs_of(columns).map_err(ImportError::Plan)?;
    let mut exprs = Vec::with_capacity(specs.len());
    for spec in &specs {
        let col = info.column(&spec.name).ok_or_else(|| {
            ImportError::Plan(format!("column `{}` is not in {}", spec.name, info.name))
        })?;
        let q = quote_ident(&col.name);
        exprs.push(match (spec.kind, &spec.charset, &col.charset) {
            // The text protocol prints FLOAT with 6 digits; DOUBLE is exact.
            (ColumnKind::Float, _, _) => format!("CAST({q} AS DOUBLE)"),
            // Text as the files spelled it, when the column stores another charset.
            (_, Some(file_cs), Some(col_cs))
                if spec.kind.is_textual() && !file_cs.eq_ignore_ascii_case(col_cs) =>
            {
                format!("CONVERT({q} USING {file_cs})")
            }
            _ => q,
        });
    }
    let sql = format!(
        "SELECT {} FROM {}.{}",
        exprs.join(", "),
        quote_ident(db),
        quote_ident(&info.name)
    );
    let mut hasher = RowHasher::new(columns);
    let mut sum = hasher.empty();
    let mut result = conn
        .query_iter(&sql)
        .await
        .context(|| format!("reading {} back for the checksum", info.name))?;
    while let Some(row) = result
        .next()
        .await
        .context(|| format!("reading {} back for the checksum", info.name))?
    {
        let typed: Row = row
            .unwrap()
            .into_iter()
            .zip(&specs)
            .map(|(v, spec)| Value::from_text(v, spec))
            .collect::<Result<_, _>>()
            .map_err(|e| ImportError::Plan(format!("reading {} back: {e}", info.name)))?;
        sum.add(hasher.hash(&typed));
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut out = Vec::new();
        normalize_decimal(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(norm("1.50"), "1.5");
        assert_eq!(norm("-0012.3400"), "-12.34");
        assert_eq!(norm("0.000"), "0");
        assert_eq!(norm("-0.0"), "0");
        assert_eq!(norm("+7"), "7");
        assert_eq!(norm("-0.25"), "-0.25");
        assert_eq!(norm("100"), "100");
    }

    #[test]
    fn column_order_does_not_change_the_hash_and_values_do() {
        let mut ab = RowHasher::new(&["a".into(), "B".into()]);
        let mut ba = RowHasher::new(&["b".into(), "a".into()]);
        let row_ab: Row = vec![Value::Int(1), Value::Bytes(b"x".to_vec())];
        let row_ba: Row = vec![Value::Bytes(b"x".to_vec()), Value::Int(1)];
        assert_eq!(ab.hash(&row_ab), ba.hash(&row_ba));
        assert_eq!(ab.empty().columns, vec!["a".to_string(), "b".to_string()]);
        // NULL, the empty string and a shifted value all differ.
        let null: Row = vec![Value::Int(1), Value::Null];
        let empty: Row = vec![Value::Int(1), Value::Bytes(Vec::new())];
        let other: Row = vec![Value::Int(1), Value::Bytes(b"y".to_vec())];
        let hashes = [
            ab.hash(&row_ab),
            ab.hash(&null),
            ab.hash(&empty),
            ab.hash(&other),
        ];
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{i} vs {j}");
            }
        }
        let split: Row = vec![Value::Bytes(b"ab".to_vec()), Value::Bytes(b"c".to_vec())];
        let joined: Row = vec![Value::Bytes(b"a".to_vec()), Value::Bytes(b"bc".to_vec())];
        assert_ne!(ab.hash(&split), ab.hash(&joined));
    }
}
