//! Table inspection: columns, keys and indexes, from information_schema and
//! `SHOW CREATE TABLE`.
//!
//! Inspection only reads. Planning (which key to chunk by, how columns map,
//! which indexes to defer) lives in `plan`; this module just describes a table
//! as the server sees it.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::Serialize;

use crate::server::{quote_ident, Context, DbError};

/// One column as information_schema describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    /// Lower-case `DATA_TYPE`, e.g. `int`, `varchar`.
    pub data_type: String,
    /// Full `COLUMN_TYPE`, e.g. `int(10) unsigned`, `enum('a','b')`.
    pub column_type: String,
    pub nullable: bool,
    /// `COLUMN_DEFAULT` as the server reports it (`NULL` text on MariaDB means a NULL default).
    pub default: Option<String>,
    pub charset: Option<String>,
    pub collation: Option<String>,
    /// `EXTRA`, e.g. `auto_increment`, `VIRTUAL GENERATED`.
    pub extra: String,
}

impl ColumnInfo {
    /// Generated columns are computed by the server and never copied.
    pub fn is_generated(&self) -> bool {
        let e = self.extra.to_ascii_uppercase();
        e.contains("GENERATED") || e.contains("PERSISTENT") || e.contains("STORED")
    }

    pub fn is_unsigned(&self) -> bool {
        self.column_type.to_ascii_lowercase().contains("unsigned")
    }

    /// The backend's description of this column's values, named `name`.
    /// `None` for types wraith cannot carry (spatial types).
    pub fn spec(&self, name: &str) -> Option<wraith_backend::ColumnSpec> {
        let kind = wraith_backend::ColumnKind::from_data_type(&self.data_type)?;
        let fsp = if matches!(self.data_type.as_str(), "datetime" | "timestamp" | "time") {
            self.column_type
                .split_once('(')
                .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
                .unwrap_or(0)
        } else {
            0
        };
        Some(wraith_backend::ColumnSpec {
            name: name.to_string(),
            kind,
            unsigned: self.is_unsigned(),
            charset: self.charset.clone(),
            fsp,
            zone_shift: None,
        })
    }

    /// Whether a row inserted without this column gets a value without error.
    pub fn has_default(&self) -> bool {
        self.nullable
            || self.is_generated()
            || self.extra.to_ascii_lowercase().contains("auto_increment")
            || self.default.is_some()
    }
}

/// One index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexInfo {
    pub name: String,
    pub unique: bool,
    pub primary: bool,
    pub columns: Vec<String>,
    /// `BTREE`, `FULLTEXT`, `SPATIAL`, `HASH`.
    pub kind: String,
    /// Whether a column of the index has a prefix length (`name(10)`).
    pub has_prefix: bool,
    /// The index's line of `SHOW CREATE TABLE`, e.g. ``KEY `k_1` (`k`)``, used to add it back.
    pub definition: String,
}

/// A table as the server sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub engine: String,
    pub columns: Vec<ColumnInfo>,
    pub indexes: Vec<IndexInfo>,
    pub estimated_rows: u64,
    pub estimated_bytes: u64,
    pub create_time: Option<String>,
    pub create_statement: String,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn primary_key(&self) -> Option<&IndexInfo> {
        self.indexes.iter().find(|i| i.primary)
    }

    /// The key rows are identified by: the PRIMARY KEY, else the first UNIQUE key
    /// whose columns are all NOT NULL and without prefix (as InnoDB itself picks).
    pub fn identity_key(&self) -> Option<&IndexInfo> {
        self.primary_key().or_else(|| {
            self.indexes.iter().find(|i| {
                i.unique
                    && !i.has_prefix
                    && i.kind == "BTREE"
                    && i.columns
                        .iter()
                        .all(|c| self.column(c).is_some_and(|c| !c.nullable))
            })
        })
    }
}

/// Whether `schema.table` exists (as a base table).
pub async fn table_exists(conn: &mut Conn, schema: &str, table: &str) -> Result<bool, DbError> {
    let n: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await
        .context(|| format!("looking up table {schema}.{table}"))?;
    Ok(n.unwrap_or(0) > 0)
}

/// `TABLE_TYPE` of `schema.table` (`BASE TABLE`, `VIEW`, `SEQUENCE`,
/// `SYSTEM VERSIONED`, ...), `None` when there is no such name.
pub async fn table_type(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Option<String>, DbError> {
    conn.exec_first(
        "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
        (schema, table),
    )
    .await
    .context(|| format!("looking up table {schema}.{table}"))
}

/// The statement of `SHOW CREATE TABLE schema.table`. Read by position, so a
/// view's four columns give its definition instead of a driver panic.
pub async fn show_create(conn: &mut Conn, schema: &str, table: &str) -> Result<String, DbError> {
    let row: Option<mysql_async::Row> = conn
        .query_first(format!(
            "SHOW CREATE TABLE {}.{}",
            quote_ident(schema),
            quote_ident(table)
        ))
        .await
        .context(|| format!("reading the definition of {schema}.{table}"))?;
    Ok(row
        .and_then(|r| r.get_opt::<String, usize>(1).and_then(Result::ok))
        .unwrap_or_default())
}

/// Describes `schema.table`. The table must exist.
pub async fn inspect_table(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<TableInfo, DbError> {
    let what = || format!("inspecting {schema}.{table}");
    type ColRow = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
    );
    let cols: Vec<ColRow> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, \
             CHARACTER_SET_NAME, COLLATION_NAME, EXTRA \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        .await
        .context(what)?;
    let columns = cols
        .into_iter()
        .map(
            |(name, data_type, column_type, nullable, default, charset, collation, extra)| {
                // MariaDB reports a NULL default as the text `NULL`.
                let default = default.filter(|d| !(nullable == "YES" && d == "NULL"));
                ColumnInfo {
                    name,
                    data_type,
                    column_type,
                    nullable: nullable == "YES",
                    default,
                    charset,
                    collation,
                    extra,
                }
            },
        )
        .collect();

    // COLUMN_NAME is NULL for MySQL's functional key parts.
    type StatRow = (String, i64, Option<String>, Option<i64>, String);
    let stats: Vec<StatRow> = conn
        .exec(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART, INDEX_TYPE \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
            (schema, table),
        )
        .await
        .context(what)?;

    let create_statement = show_create(conn, schema, table).await?;

    let mut indexes: Vec<IndexInfo> = Vec::new();
    for (name, non_unique, column, sub_part, kind) in stats {
        let column = column.unwrap_or_default();
        match indexes.iter_mut().find(|i| i.name == name) {
            Some(i) => {
                i.columns.push(column);
                i.has_prefix |= sub_part.is_some();
            }
            None => indexes.push(IndexInfo {
                primary: name == "PRIMARY",
                unique: non_unique == 0,
                definition: index_definition(&create_statement, &name),
                name,
                columns: vec![column],
                kind,
                has_prefix: sub_part.is_some(),
            }),
        }
    }

    type MetaRow = (
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
    );
    let meta: Option<MetaRow> = conn
        .exec_first(
            "SELECT ENGINE, TABLE_ROWS, DATA_LENGTH, INDEX_LENGTH, CAST(CREATE_TIME AS CHAR) \
             FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await
        .context(what)?;
    let (engine, rows, data, index, create_time) = meta.unwrap_or_default();
    Ok(TableInfo {
        schema: schema.to_string(),
        name: table.to_string(),
        engine: engine.unwrap_or_default(),
        columns,
        indexes,
        estimated_rows: rows.unwrap_or(0),
        estimated_bytes: data.unwrap_or(0) + index.unwrap_or(0),
        create_time,
        create_statement,
    })
}

/// The line of a `SHOW CREATE TABLE` statement that defines index `name`.
fn index_definition(create: &str, name: &str) -> String {
    let quoted = quote_ident(name);
    create
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .find(|l| {
            (name == "PRIMARY" && l.starts_with("PRIMARY KEY"))
                || (l.contains("KEY ") && l.contains(&format!("KEY {quoted} ")))
        })
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_index_lines() {
        let create = "CREATE TABLE `t` (\n  `id` int NOT NULL,\n  `k` int,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `u` (`k`),\n  KEY `k_1` (`k`),\n  FULLTEXT KEY `ft` (`c`)\n) ENGINE=InnoDB";
        assert_eq!(index_definition(create, "PRIMARY"), "PRIMARY KEY (`id`)");
        assert_eq!(index_definition(create, "k_1"), "KEY `k_1` (`k`)");
        assert_eq!(index_definition(create, "u"), "UNIQUE KEY `u` (`k`)");
        assert_eq!(index_definition(create, "ft"), "FULLTEXT KEY `ft` (`c`)");
    }
}
