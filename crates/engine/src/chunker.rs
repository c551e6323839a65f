//! The chunker: splits the source table into key ranges for the copy.
//!
//! A chunk is a half-open key range `(lower, upper]` of the source's identity
//! key (`None` = unbounded); chunks are handed out in key order, and each row
//! belongs to exactly one. The chunker decides sizes; it does not read rows
//! (the copier does), throttle, or write.
//!
//! Two strategies:
//! - **integer fast path** (a single integer key): ranges are computed by
//!   arithmetic, no query per chunk. The span adapts to the key density seen
//!   in finished chunks, so a sparse key (gaps of millions) does not produce
//!   millions of empty chunks: empty chunks double the span.
//! - **keyset** (composite, string, binary or decimal keys): the upper bound of
//!   the next chunk is found with `ORDER BY key LIMIT 1 OFFSET n-1` after the
//!   previous upper bound, so every chunk holds about `n` rows whatever the key
//!   distribution. Composite comparisons are expanded into `a > x OR (a = x
//!   AND b > y)`, which every MySQL-family optimizer turns into a range scan.
//!
//! Sizing (both strategies): the target is the number of rows that takes
//! `chunk_target` to copy, from the measured rate of finished chunks. It grows
//! by at most 2x per step and shrinks at once, so a slow patch of the table
//! never produces a chunk many times the target (Spirit's rule).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_backend::{ColumnKind, ColumnSpec, Value};

use crate::server::{quote_ident, Context, DbError};

/// A key range `(lower, upper]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub id: u64,
    pub lower: Option<Vec<Value>>,
    pub upper: Option<Vec<Value>>,
}

/// SQL text of key predicates over `key` (the column specs carry the names).
pub struct KeySql<'a> {
    pub key: &'a [ColumnSpec],
}

impl KeySql<'_> {
    fn literal(&self, i: usize, v: &Value) -> String {
        let mut out = Vec::new();
        v.write_sql_literal(&self.key[i], &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `key > bound` (strict) or `key >= bound`, expanded for tuples.
    pub fn greater(&self, bound: &[Value], strict: bool) -> String {
        self.compare(bound, if strict { ">" } else { ">=" }, ">")
    }

    /// `key <= bound` or `key < bound`.
    pub fn less(&self, bound: &[Value], strict: bool) -> String {
        self.compare(bound, if strict { "<" } else { "<=" }, "<")
    }

    fn compare(&self, bound: &[Value], last_op: &str, op: &str) -> String {
        // (a op x) OR (a = x AND (b op y)) ... with the last column using last_op.
        let n = bound.len().min(self.key.len());
        let mut parts = Vec::new();
        for i in 0..n {
            let mut conj: Vec<String> = (0..i)
                .map(|j| {
                    format!(
                        "{} = {}",
                        quote_ident(&self.key[j].name),
                        self.literal(j, &bound[j])
                    )
                })
                .collect();
            let this_op = if i + 1 == n { last_op } else { op };
            conj.push(format!(
                "{} {this_op} {}",
                quote_ident(&self.key[i].name),
                self.literal(i, &bound[i])
            ));
            parts.push(format!("({})", conj.join(" AND ")));
        }
        format!("({})", parts.join(" OR "))
    }

    /// The WHERE condition of a chunk.
    pub fn range(&self, chunk: &Chunk) -> String {
        let mut conds = Vec::new();
        if let Some(l) = &chunk.lower {
            conds.push(self.greater(l, true));
        }
        if let Some(u) = &chunk.upper {
            conds.push(self.less(u, false));
        }
        if conds.is_empty() {
            "1=1".into()
        } else {
            conds.join(" AND ")
        }
    }

    pub fn order_by(&self) -> String {
        self.key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

enum Strategy {
    Int {
        /// Next lower bound, inclusive.
        next: i128,
        /// Largest key at the start; the last chunk is unbounded above.
        max: i128,
        unsigned: bool,
        /// Keys per chunk.
        span: i128,
    },
    Keyset {
        last: Option<Vec<Value>>,
    },
    Done,
}

/// Hands out chunks in key order and sizes them from feedback.
pub struct Chunker {
    schema: String,
    table: String,
    key: Vec<ColumnSpec>,
    strategy: Strategy,
    next_id: u64,
    target: Duration,
    /// Rows per chunk wanted now.
    target_rows: u64,
    /// Rows per second seen (EWMA).
    rate: Option<f64>,
    /// Rows per key unit (integer path, EWMA).
    density: Option<f64>,
    /// Rows per chunk set by the operator; sizing does not adapt while set.
    fixed_rows: Option<u64>,
}

const MAX_CHUNK_ROWS: u64 = 1_000_000;

impl Chunker {
    /// Prepares a chunker over `schema.table` by `key` (source names and kinds).
    pub async fn new(
        conn: &mut Conn,
        schema: &str,
        table: &str,
        key: Vec<ColumnSpec>,
        target: Duration,
        initial_rows: u64,
    ) -> Result<Chunker, DbError> {
        Chunker::resume(conn, schema, table, key, target, initial_rows, None).await
    }

    /// A chunker whose first chunk starts after `start_after` (a resumed
    /// copy: every key up to it is copied already).
    pub async fn resume(
        conn: &mut Conn,
        schema: &str,
        table: &str,
        key: Vec<ColumnSpec>,
        target: Duration,
        initial_rows: u64,
        start_after: Option<Vec<Value>>,
    ) -> Result<Chunker, DbError> {
        let qt = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let strategy = match key.as_slice() {
            [k] if k.kind == ColumnKind::Int => {
                let col = quote_ident(&k.name);
                let row: Option<(Option<String>, Option<String>)> = conn
                    .query_first(format!(
                        "SELECT CAST(MIN({col}) AS CHAR), CAST(MAX({col}) AS CHAR) FROM {qt}"
                    ))
                    .await
                    .context(|| format!("reading the key range of {table}"))?;
                let after: Option<i128> = start_after.as_ref().and_then(|v| match v.first() {
                    Some(Value::Int(i)) => Some(*i as i128),
                    Some(Value::UInt(u)) => Some(*u as i128),
                    _ => None,
                });
                match row {
                    Some((Some(min), Some(max))) => {
                        let min: i128 = min.parse().unwrap_or(0);
                        Strategy::Int {
                            next: after.map(|a| (a + 1).max(min)).unwrap_or(min),
                            max: max.parse().unwrap_or(0),
                            unsigned: k.unsigned,
                            span: initial_rows.max(1) as i128,
                        }
                    }
                    _ => Strategy::Keyset {
                        last: start_after.clone(),
                    },
                }
            }
            _ => Strategy::Keyset { last: start_after },
        };
        Ok(Chunker {
            schema: schema.to_string(),
            table: table.to_string(),
            key,
            strategy,
            next_id: 0,
            target,
            target_rows: initial_rows.max(1),
            rate: None,
            density: None,
            fixed_rows: None,
        })
    }

    fn int_value(v: i128, unsigned: bool) -> Value {
        if unsigned {
            Value::UInt(v.clamp(0, u64::MAX as i128) as u64)
        } else {
            Value::Int(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        }
    }

    /// The next chunk, or `None` when the table is covered.
    pub async fn next(&mut self, conn: &mut Conn) -> Result<Option<Chunk>, DbError> {
        let id = self.next_id;
        let chunk = match &mut self.strategy {
            Strategy::Done => return Ok(None),
            Strategy::Int {
                next,
                max,
                unsigned,
                span,
            } => {
                let lower = if *next <= i64::MIN as i128 || (*unsigned && *next <= 0) {
                    None
                } else {
                    Some(vec![Self::int_value(*next - 1, *unsigned)])
                };
                let wanted = match self.density {
                    Some(d) if d > 0.0 => (self.target_rows as f64 / d).max(1.0) as i128,
                    _ => *span,
                };
                // Bounded growth: at most double the previous span.
                let s = wanted.min(span.saturating_mul(2)).max(1);
                *span = s;
                let hi = *next + s - 1;
                if hi >= *max {
                    let c = Chunk {
                        id,
                        lower,
                        upper: None,
                    };
                    self.strategy = Strategy::Done;
                    c
                } else {
                    let c = Chunk {
                        id,
                        lower,
                        upper: Some(vec![Self::int_value(hi, *unsigned)]),
                    };
                    *next = hi + 1;
                    c
                }
            }
            Strategy::Keyset { last } => {
                let keysql = KeySql { key: &self.key };
                let cond = last
                    .as_ref()
                    .map(|l| keysql.greater(l, true))
                    .unwrap_or_else(|| "1=1".into());
                let cols: Vec<String> = self
                    .key
                    .iter()
                    .map(|c| c.kind.read_expr(&quote_ident(&c.name)))
                    .collect();
                let n = self.target_rows.max(1);
                let sql = format!(
                    "SELECT {} FROM {}.{} WHERE {cond} ORDER BY {} LIMIT 1 OFFSET {}",
                    cols.join(", "),
                    quote_ident(&self.schema),
                    quote_ident(&self.table),
                    keysql.order_by(),
                    n - 1
                );
                let row: Option<mysql_async::Row> = conn
                    .query_first(sql)
                    .await
                    .context(|| format!("finding the next chunk boundary of {}", self.table))?;
                let lower = last.clone();
                match row {
                    None => {
                        self.strategy = Strategy::Done;
                        Chunk {
                            id,
                            lower,
                            upper: None,
                        }
                    }
                    Some(row) => {
                        let values = row.unwrap();
                        let upper: Vec<Value> = values
                            .into_iter()
                            .zip(&self.key)
                            .map(|(raw, spec)| Value::from_text(raw, spec))
                            .collect::<Result<_, _>>()
                            .map_err(|e| DbError {
                                context: format!("reading a chunk boundary of {}: {e}", self.table),
                                error: mysql_async::Error::Other(e.to_string().into()),
                            })?;
                        *last = Some(upper.clone());
                        Chunk {
                            id,
                            lower,
                            upper: Some(upper),
                        }
                    }
                }
            }
        };
        self.next_id += 1;
        Ok(Some(chunk))
    }

    /// Feedback from a finished chunk: `rows` copied in `elapsed`, covering
    /// `span` key units when known (integer path).
    pub fn feedback(&mut self, rows: u64, elapsed: Duration, span: Option<i128>) {
        let secs = elapsed.as_secs_f64().max(1e-4);
        if rows > 0 {
            let r = rows as f64 / secs;
            self.rate = Some(match self.rate {
                Some(old) => old * 0.7 + r * 0.3,
                None => r,
            });
        }
        if let Some(span) = span.filter(|s| *s > 0) {
            let d = rows as f64 / span as f64;
            self.density = Some(match self.density {
                Some(old) => old * 0.7 + d * 0.3,
                None => d,
            });
            if rows == 0 {
                // An empty range says little about density: let the span grow.
                self.density = self.density.map(|d| d / 2.0);
            }
        }
        if let Some(fixed) = self.fixed_rows {
            self.target_rows = fixed;
        } else if let Some(rate) = self.rate {
            let wanted = (rate * self.target.as_secs_f64()).max(1.0) as u64;
            // Grow at most 2x, shrink at once.
            self.target_rows = wanted
                .min(self.target_rows.saturating_mul(2))
                .clamp(1, MAX_CHUNK_ROWS);
        }
    }

    /// Rows per chunk wanted now.
    pub fn target_rows(&self) -> u64 {
        self.target_rows
    }

    /// Fixes the rows per chunk (`None`: adapt to the target again), e.g.
    /// from the control socket. On the integer path the key span still grows
    /// by at most 2x per chunk towards it.
    pub fn set_fixed_rows(&mut self, rows: Option<u64>) {
        if let Some(n) = rows {
            self.target_rows = n.clamp(1, MAX_CHUNK_ROWS);
        }
        self.fixed_rows = rows.map(|n| n.clamp(1, MAX_CHUNK_ROWS));
    }

    /// Sets the target duration (e.g. from the control socket).
    pub fn set_target(&mut self, target: Duration) {
        self.target = target;
    }
}

/// Key units a chunk covers on the integer path (for density feedback).
pub fn int_span(chunk: &Chunk) -> Option<i128> {
    let as_int = |v: &Value| match v {
        Value::Int(i) => Some(*i as i128),
        Value::UInt(u) => Some(*u as i128),
        _ => None,
    };
    let lo = as_int(chunk.lower.as_ref()?.first()?)?;
    let hi = as_int(chunk.upper.as_ref()?.first()?)?;
    Some(hi - lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_predicates_expand() {
        let key = vec![
            ColumnSpec::new("a", ColumnKind::Int),
            ColumnSpec::new("b", ColumnKind::Int),
        ];
        let k = KeySql { key: &key };
        assert_eq!(
            k.greater(&[Value::Int(1), Value::Int(2)], true),
            "((`a` > 1) OR (`a` = 1 AND `b` > 2))"
        );
        assert_eq!(
            k.less(&[Value::Int(1), Value::Int(2)], false),
            "((`a` < 1) OR (`a` = 1 AND `b` <= 2))"
        );
    }
}
