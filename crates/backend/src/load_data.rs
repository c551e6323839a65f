//! `LOAD DATA LOCAL INFILE` fed from memory: the cheapest way to hand rows
//! to the server (it parses plain tab-separated text, no SQL), used by the
//! local backend's import and by `wraith import`'s sql path.
//!
//! Values travel as [`write_load_field`] text on a `CHARACTER SET binary`
//! load, so every byte arrives as the exact bytes the reader produced, and a
//! column whose charset differs from the values' is converted by the server
//! with `CONVERT(@v USING cs)`, as an INSERT of `_cs X'..'` would. A column
//! with a [`ZoneShift`] is converted in the server's time zone the same way.
//!
//! **Exactness:** `LOAD DATA LOCAL` turns errors (duplicates, bad values)
//! into warnings, since the server cannot stop the client's stream. A load
//! is therefore accepted only when the server stored exactly the rows sent
//! and raised no warning; the one exception is a clash on one of the
//! target's transient unique indexes ([`TargetTable::is_transient_duplicate`]),
//! which is skipped and counted. Anything else is an error, and the caller
//! rolls its transaction back.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::engine::{quote_ident, TargetTable};
use crate::error::{parse_duplicate_message, BackendError};
use crate::value::{charset_of, ColumnKind, Value, ZoneShift};
use crate::write::insert_error;

/// Size of one infile packet sent to the server.
const PACKET: usize = 1 << 20;

/// What the server says about one target column.
struct TargetColumn {
    charset: Option<String>,
    data_type: String,
}

/// A prepared `LOAD DATA LOCAL` statement for some columns of a target.
#[derive(Debug, Clone)]
pub struct LoadData {
    statement: String,
    target: TargetTable,
}

impl LoadData {
    /// The statement loading `columns` (positions in `target.columns`, in
    /// the order each row's fields are written) into `target`, with the
    /// conversions its column types need (read from the server on `conn`).
    pub async fn prepare(
        conn: &mut Conn,
        target: &TargetTable,
        columns: &[usize],
    ) -> Result<LoadData, BackendError> {
        let info = target_columns(conn, target).await?;
        Ok(LoadData {
            statement: load_statement(target, columns, &info)?,
            target: target.clone(),
        })
    }

    pub fn statement(&self) -> &str {
        &self.statement
    }

    pub fn target(&self) -> &TargetTable {
        &self.target
    }

    /// Appends one row as load text (tab-separated fields, `\n` at the end).
    pub fn write_row<'a>(row: impl IntoIterator<Item = &'a Value>, out: &mut Vec<u8>) {
        for (i, v) in row.into_iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            write_load_field(v, out);
        }
        out.push(b'\n');
    }

    /// Loads `data` (`rows` rows of load text) on `conn`, inside the caller's
    /// transaction. Returns the rows skipped as transient duplicates. On an
    /// error the rows may be partly written: the caller rolls back.
    pub async fn load(&self, conn: &mut Conn, rows: u64, data: Bytes) -> Result<u64, BackendError> {
        let target = &self.target;
        let name = target.display_name();
        let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
            .step_by(PACKET)
            .map(|s| Ok(data.slice(s..(s + PACKET).min(data.len()))))
            .collect();
        // Every skipped row leaves a warning and each must be seen to judge
        // the load (the server keeps 64 by default).
        conn.query_drop("SET SESSION max_error_count = 65535")
            .await
            .map_err(|e| BackendError::sql("setting max_error_count", &name, e))?;
        conn.set_infile_handler(async move { Ok(stream::iter(chunks).boxed()) });
        if let Err(e) = conn.query_drop(&self.statement).await {
            if let mysql_async::Error::Server(s) = &e {
                if matches!(s.code, 1148 | 3948 | 4166) {
                    return Err(BackendError::InvalidInput {
                        message: format!(
                            "the server refuses LOAD DATA LOCAL into {name} ({}): set \
                             `local_infile = ON` on the server",
                            s.message
                        ),
                    });
                }
            }
            return Err(insert_error(e, "loading rows", target));
        }
        let affected = conn.affected_rows();
        let warnings = conn.get_warnings();
        if warnings == 0 && affected == rows {
            return Ok(0);
        }
        let shown: Vec<(Vec<u8>, u32, Vec<u8>)> = conn
            .query("SHOW WARNINGS LIMIT 65535")
            .await
            .map_err(|e| BackendError::sql("reading load warnings", &name, e))?;
        let msgs: Vec<(u32, String)> = shown
            .into_iter()
            .map(|(_, code, m)| (code, String::from_utf8_lossy(&m).into_owned()))
            .collect();
        // Every shortfall a clash with a moved row on a transient unique
        // index (each skipped row left one warning): keep the load.
        let transient = |(code, m): &(u32, String)| {
            *code == 1062
                && parse_duplicate_message(m)
                    .is_some_and(|(_, i)| target.is_transient_duplicate(&i))
        };
        if affected + u64::from(warnings) == rows
            && msgs.len() == warnings as usize
            && msgs.iter().all(transient)
        {
            return Ok(u64::from(warnings));
        }
        tracing::debug!(table = %name, rows, affected, warnings, "load was not exact");
        if let Some((_, m)) = msgs.iter().find(|(c, _)| *c == 1062) {
            if let Some((key, index)) = parse_duplicate_message(m) {
                return Err(BackendError::DuplicateDetected {
                    table: name,
                    key,
                    index,
                });
            }
        }
        Err(match msgs.into_iter().next() {
            Some((code, message)) => BackendError::LoadWarning {
                table: name,
                code,
                message,
            },
            None => BackendError::LoadWarning {
                table: name,
                code: 0,
                message: format!("{affected} rows stored of {rows} sent"),
            },
        })
    }
}

/// Appends one value as a `LOAD DATA` field (`\N` for NULL; `\\`, tab,
/// newline and NUL escaped in bytes).
pub fn write_load_field(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Bytes(b) => {
            out.reserve(b.len() + 8);
            for &c in b {
                match c {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    0 => out.extend_from_slice(b"\\0"),
                    _ => out.push(c),
                }
            }
        }
        other => other.write_plain_text(out),
    }
}

async fn target_columns(
    conn: &mut Conn,
    target: &TargetTable,
) -> Result<HashMap<String, TargetColumn>, BackendError> {
    type ColumnRow = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, CHARACTER_SET_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (target.schema.as_bytes(), target.table.as_bytes()),
        )
        .await
        .map_err(|e| {
            BackendError::sql("reading the target's columns", &target.display_name(), e)
        })?;
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(rows
        .into_iter()
        .map(|(n, cs, dt)| {
            (
                lossy(&n).to_lowercase(),
                TargetColumn {
                    charset: cs.map(|c| lossy(&c).to_lowercase()),
                    data_type: lossy(&dt).to_lowercase(),
                },
            )
        })
        .collect())
}

/// `LOAD DATA LOCAL INFILE ... (cols) SET ...` for the given columns.
fn load_statement(
    target: &TargetTable,
    columns: &[usize],
    info: &HashMap<String, TargetColumn>,
) -> Result<String, BackendError> {
    let mut list = Vec::with_capacity(columns.len());
    let mut sets = Vec::new();
    for (j, &p) in columns.iter().enumerate() {
        let spec = target
            .columns
            .get(p)
            .ok_or_else(|| BackendError::InvalidInput {
                message: format!(
                    "internal: column position {p} is outside {}'s {} columns",
                    target.display_name(),
                    target.columns.len()
                ),
            })?;
        let tc = info
            .get(&spec.name.to_lowercase())
            .ok_or_else(|| BackendError::InvalidInput {
                message: format!(
                    "column `{}` is not in the target table {} on the server; was the table \
                     changed while wraith wrote it?",
                    spec.name,
                    target.display_name()
                ),
            })?;
        let col = quote_ident(&spec.name);
        let var = format!("@v{j}");
        let value_cs = if spec.kind.is_textual() {
            charset_of(spec)
        } else {
            "utf8mb4"
        };
        let convert_charset = tc.data_type == "json"
            || (spec.kind.is_textual()
                && matches!(&tc.charset, Some(t) if t != "binary" && t != value_cs));
        // Binary bytes into a text column are stored as is, as an INSERT of
        // X'..' would; same-charset text needs no conversion.
        let expr = if let Some(shift) = &spec.zone_shift {
            // The server's time zone conversion (see `ZoneShift`); the text
            // is cast to a temporal value first so the target converts it as
            // the server's own ALTER would.
            let x = format!("CAST({var} AS DATETIME({}))", spec.fsp.min(6));
            let zero = format!("{var} LIKE '0000-%'");
            let zero_value = match shift {
                ZoneShift::ToLocal(_) => "TIMESTAMP'0000-00-00 00:00:00'".to_string(),
                ZoneShift::ToUtc(_) => var.clone(),
            };
            Some(shift.wrap(&x, &zero, &zero_value))
        } else if matches!(spec.kind, ColumnKind::Float | ColumnKind::Double)
            && !matches!(tc.data_type.as_str(), "float" | "double")
        {
            // A number into another numeric type converts as a number (the
            // ALTER's path), not as text.
            Some(format!("CAST({var} AS DOUBLE)"))
        } else if spec.kind == ColumnKind::Decimal
            && !matches!(tc.data_type.as_str(), "decimal" | "numeric")
        {
            Some(format!("CAST({var} AS DECIMAL(65,30))"))
        } else if let Some(ty) = spec.kind.fixed_binary_type() {
            // INET4/INET6/UUID travel as their binary form, which only the
            // typed cast reads as such (as text it would be parsed, and fail).
            Some(format!("CAST({var} AS {ty})"))
        } else if tc.data_type == "bit" {
            Some(format!("CAST({var} AS UNSIGNED)"))
        } else if convert_charset {
            Some(format!("CONVERT({var} USING {value_cs})"))
        } else {
            None
        };
        match expr {
            Some(e) => {
                list.push(var);
                sets.push(format!("{col} = {e}"));
            }
            None => list.push(col),
        }
    }
    let mut s = format!(
        "LOAD DATA LOCAL INFILE 'wraith-load' INTO TABLE {} CHARACTER SET binary \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        target.quoted_name(),
        list.join(", ")
    );
    if !sets.is_empty() {
        s.push_str(" SET ");
        s.push_str(&sets.join(", "));
    }
    Ok(s)
}
