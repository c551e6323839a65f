//! Implicit values: a column the ALTER adds NOT NULL without a DEFAULT.
//!
//! The server's own ALTER gives every existing row of such a column the
//! type's implicit value (0, `''`, the zero date, the first ENUM label,
//! `::`, …), and so does wraith, the same way on every path:
//!
//! - **Planning asks the server** ([`probe`]). A TEMPORARY table of one row
//!   gets the column by the same `ADD COLUMN`; what that row then holds is
//!   the implicit value under this session's `sql_mode`. The table then gets
//!   that value as its DEFAULT and a second row, which must hold the same
//!   bytes: the default wraith will use writes exactly what the ALTER
//!   writes. When the server's ADD COLUMN itself fails (the zero date under
//!   `NO_ZERO_DATE`) or the second row is refused (an empty JSON value
//!   fails its check), the plan is refused with the server's reason.
//! - **The shadow holds the value as the column's DEFAULT** ([`hold`]) from
//!   its creation, again on resume and after a cut-over attempt that failed,
//!   so the copy and the change stream (which name only copied columns)
//!   write it.
//! - **The cut-over takes the DEFAULT off** ([`release`]) in its locked
//!   phase, once the shadow equals the frozen table: the live table's
//!   definition is then exactly the server's ALTER's. `ALGORITHM=INSTANT`,
//!   no wait on a lock.
//! - **The checksum compares the column against the value's bytes**, so it
//!   proves the value, not only the copied columns.
//!
//! **Leaves to others:** the plan's mapping (`plan`), refusals (`preflight`),
//! when the cut-over runs its steps (`cutover`).

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::Serialize;

use crate::server::inspect::{ColumnInfo, TableInfo};
use crate::server::{quote_ident, Context, DbError};

/// The value every row of an added NOT NULL column without a DEFAULT gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImplicitValue {
    pub column: String,
    /// The value as the server shows it, for the plan.
    pub shown: String,
    /// The SQL literal the shadow holds as the column's DEFAULT.
    pub literal: String,
    /// The value's bytes (`CAST(col AS BINARY)`), in hex.
    pub bytes_hex: String,
}

impl ImplicitValue {
    /// The value's bytes as a SQL expression, for the checksum's source side.
    pub fn bytes_expr(&self) -> String {
        format!("X'{}'", self.bytes_hex)
    }
}

/// Types whose values are bytes: their DEFAULT is written as a hex string.
fn is_binary_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit"
    )
}

/// A name the server reported, checked before it goes into a statement.
fn plain_word(s: &str) -> Option<&str> {
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(s)
}

/// The column's definition as the server shows it in `create_statement`
/// (its line of `SHOW CREATE TABLE`, with any CHECK the type brings, as
/// JSON's `json_valid`), else built from its type.
fn definition(create_statement: &str, nc: &ColumnInfo) -> String {
    let head = format!("{} ", quote_ident(&nc.name));
    create_statement
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&head))
        .map(|l| l.trim_end_matches(',').to_string())
        .unwrap_or_else(|| built_definition(nc))
}

/// The column's definition as `ADD COLUMN` takes it, NOT NULL, no DEFAULT.
fn built_definition(nc: &ColumnInfo) -> String {
    let mut def = format!("{} {}", quote_ident(&nc.name), nc.column_type);
    if let (Some(cs), Some(coll)) = (
        nc.charset.as_deref().and_then(plain_word),
        nc.collation.as_deref().and_then(plain_word),
    ) {
        def.push_str(&format!(" CHARACTER SET {cs} COLLATE {coll}"));
    }
    def.push_str(" NOT NULL");
    def
}

/// Asks the server what the ALTER gives every row of `nc` (added NOT NULL
/// without a DEFAULT), in a TEMPORARY table in `schema`. `Ok(Err(reason))`
/// when the server's own ADD COLUMN fails or the value cannot be written
/// back as a DEFAULT.
pub async fn probe(
    conn: &mut Conn,
    schema: &str,
    new: &TableInfo,
    nc: &ColumnInfo,
) -> Result<Result<ImplicitValue, String>, DbError> {
    let q = format!(
        "{}.{}",
        quote_ident(schema),
        quote_ident(crate::names::IMPLICIT_PROBE_TABLE)
    );
    let col = quote_ident(&nc.name);
    conn.query_drop(format!("DROP TEMPORARY TABLE IF EXISTS {q}"))
        .await
        .context(|| "dropping the implicit-value probe table".into())?;
    // The server's own ALTER runs in a session of the server's sql_mode
    // (NO_ZERO_DATE, for one, decides whether a zero date is given).
    let session_mode: Option<String> = conn
        .query_first("SELECT @@SESSION.sql_mode")
        .await
        .context(|| "reading sql_mode".into())?;
    conn.query_drop("SET SESSION sql_mode = @@GLOBAL.sql_mode")
        .await
        .context(|| "taking the server's sql_mode".into())?;
    let outcome = probe_in(conn, &q, &col, &definition(&new.create_statement, nc), nc).await;
    let dropped = conn
        .query_drop(format!("DROP TEMPORARY TABLE IF EXISTS {q}"))
        .await
        .context(|| "dropping the implicit-value probe table".into());
    let restored = conn
        .exec_drop(
            "SET SESSION sql_mode = ?",
            (session_mode.unwrap_or_default(),),
        )
        .await
        .context(|| "restoring sql_mode".into());
    let outcome = outcome?;
    dropped?;
    restored?;
    Ok(outcome)
}

/// Runs `sql` for the probe: a server error is an answer (`Some(reason)`,
/// prefixed by `what`), any other error stops the check.
async fn refused(conn: &mut Conn, sql: String, what: &str) -> Result<Option<String>, DbError> {
    match conn.query_drop(&sql).await {
        Ok(()) => Ok(None),
        Err(mysql_async::Error::Server(e)) => Ok(Some(format!("{what}: {}", e.message))),
        Err(error) => Err(DbError {
            context: what.to_string(),
            error,
        }),
    }
}

async fn probe_in(
    conn: &mut Conn,
    q: &str,
    col: &str,
    definition: &str,
    nc: &ColumnInfo,
) -> Result<Result<ImplicitValue, String>, DbError> {
    if let Some(reason) = refused(
        conn,
        format!("CREATE TEMPORARY TABLE {q} (k INT PRIMARY KEY) ENGINE=InnoDB"),
        "creating a TEMPORARY table to ask the server for the value (wraith's user needs CREATE TEMPORARY TABLES)",
    )
    .await?
    {
        return Ok(Err(reason));
    }
    conn.query_drop(format!("INSERT INTO {q} (k) VALUES (1)"))
        .await
        .context(|| "writing the implicit-value probe's row".into())?;
    if let Some(reason) = refused(
        conn,
        format!("ALTER TABLE {q} ADD COLUMN {definition}"),
        "on a table with rows, the server's ADD COLUMN (copying the rows) refuses it",
    )
    .await?
    {
        return Ok(Err(reason));
    }
    // The text as bytes: only shown, never trusted to be UTF-8.
    let row: Option<(String, String, Vec<u8>)> = conn
        .query_first(format!(
            "SELECT HEX(CAST({col} AS BINARY)), HEX(CAST({col} AS CHAR CHARACTER SET utf8mb4)), \
             CAST({col} AS CHAR CHARACTER SET utf8mb4) FROM {q} WHERE k = 1"
        ))
        .await
        .context(|| "reading the implicit value".into())?;
    let Some((bytes_hex, text_hex, text)) = row else {
        return Ok(Err("the probe's row vanished".into()));
    };
    let (literal, shown) = if is_binary_type(&nc.data_type) {
        (format!("X'{bytes_hex}'"), format!("X'{bytes_hex}'"))
    } else {
        (
            format!("_utf8mb4 X'{text_hex}'"),
            format!("'{}'", String::from_utf8_lossy(&text)),
        )
    };
    // The DEFAULT must write the very bytes the ALTER wrote.
    if let Some(reason) = refused(
        conn,
        format!("ALTER TABLE {q} ALTER COLUMN {col} SET DEFAULT {literal}"),
        "the value cannot be the column's DEFAULT",
    )
    .await?
    {
        return Ok(Err(reason));
    }
    if let Some(reason) = refused(
        conn,
        format!("INSERT INTO {q} (k) VALUES (2)"),
        "the server's ALTER gives every row a value that a row written afterwards may not hold",
    )
    .await?
    {
        return Ok(Err(reason));
    }
    let again: Option<String> = conn
        .query_first(format!(
            "SELECT HEX(CAST({col} AS BINARY)) FROM {q} WHERE k = 2"
        ))
        .await
        .context(|| "reading the implicit value back".into())?;
    if again.as_deref() != Some(bytes_hex.as_str()) {
        return Ok(Err(format!(
            "the value written through a DEFAULT ({}) differs from the one the ALTER gives ({bytes_hex})",
            again.unwrap_or_default()
        )));
    }
    Ok(Ok(ImplicitValue {
        column: nc.name.clone(),
        shown,
        literal,
        bytes_hex,
    }))
}

/// Gives the shadow's columns their implicit values as DEFAULTs (again:
/// it is idempotent).
pub async fn hold(
    conn: &mut Conn,
    schema: &str,
    shadow: &str,
    values: &[ImplicitValue],
) -> Result<(), DbError> {
    if values.is_empty() {
        return Ok(());
    }
    let sets: Vec<String> = values
        .iter()
        .map(|v| {
            format!(
                "ALTER COLUMN {} SET DEFAULT {}",
                quote_ident(&v.column),
                v.literal
            )
        })
        .collect();
    conn.query_drop(format!(
        "ALTER TABLE {}.{} {}",
        quote_ident(schema),
        quote_ident(shadow),
        sets.join(", ")
    ))
    .await
    .context(|| format!("giving {shadow} the implicit values as defaults"))
}

/// Takes the DEFAULTs [`hold`] gave off again, in place and, with
/// `no_wait` (MariaDB's `SET STATEMENT`), refused at once rather than
/// waiting on a lock (the cut-over's locked phase).
pub async fn release(
    conn: &mut Conn,
    schema: &str,
    shadow: &str,
    values: &[ImplicitValue],
    no_wait: bool,
) -> Result<(), DbError> {
    if values.is_empty() {
        return Ok(());
    }
    let drops: Vec<String> = values
        .iter()
        .map(|v| format!("ALTER COLUMN {} DROP DEFAULT", quote_ident(&v.column)))
        .collect();
    let prefix = if no_wait {
        "SET STATEMENT lock_wait_timeout = 0 FOR "
    } else {
        ""
    };
    conn.query_drop(format!(
        "{prefix}ALTER TABLE {}.{} {}, ALGORITHM=INSTANT",
        quote_ident(schema),
        quote_ident(shadow),
        drops.join(", ")
    ))
    .await
    .context(|| format!("taking the implicit values' defaults off {shadow}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, data_type: &str, column_type: &str, cs: Option<&str>) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: false,
            default: None,
            charset: cs.map(str::to_string),
            collation: cs.map(|c| format!("{c}_bin")),
            extra: String::new(),
        }
    }

    #[test]
    fn the_definition_is_the_servers_line_with_its_check() {
        let create = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  \
                      `j` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (json_valid(`j`)),\n  \
                      `jj` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
        assert_eq!(
            definition(create, &column("j", "longtext", "longtext", Some("utf8mb4"))),
            "`j` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (json_valid(`j`))"
        );
        assert_eq!(
            definition(create, &column("jj", "int", "int(11)", None)),
            "`jj` int(11) NOT NULL"
        );
    }

    #[test]
    fn a_built_definition_keeps_the_type_and_charset_and_quotes_the_name() {
        assert_eq!(
            definition(
                "",
                &column("we`ird", "varchar", "varchar(5)", Some("latin1"))
            ),
            "`we``ird` varchar(5) CHARACTER SET latin1 COLLATE latin1_bin NOT NULL"
        );
        assert_eq!(
            built_definition(&column("e", "enum", "enum('b','a')", None)),
            "`e` enum('b','a') NOT NULL"
        );
        // A charset name that is not a plain word never reaches the statement.
        assert_eq!(
            built_definition(&column("v", "varchar", "varchar(5)", Some("x; DROP"))),
            "`v` varchar(5) NOT NULL"
        );
    }

    #[test]
    fn bytes_are_written_as_hex_and_text_through_utf8mb4() {
        assert!(is_binary_type("binary"));
        assert!(is_binary_type("bit"));
        assert!(!is_binary_type("varchar"));
        assert!(!is_binary_type("inet6"));
    }
}
