//! The foreign keys a rebuilt table takes part in, as child or parent: listed, and judged.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::Report;
use crate::server::inspect::TableInfo;
use crate::server::{Context, DbError};

pub(super) async fn check_foreign_keys(
    conn: &mut Conn,
    t: &TableInfo,
    report: &mut Report,
) -> Result<(), DbError> {
    let fks: Vec<(String, String, String)> = conn
        .exec(
            "SELECT CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND (TABLE_NAME = ? OR REFERENCED_TABLE_NAME = ?)",
            (&t.schema, &t.name, &t.name),
        )
        .await
        .context(|| format!("reading foreign keys of {}", t.name))?;
    if fks.is_empty() {
        report.ok(&format!("foreign keys {}", t.name), "none");
    } else {
        let list: Vec<String> = fks
            .iter()
            .map(|(c, from, to)| format!("{c} ({from} -> {to})"))
            .collect();
        report.fail(
            &format!("foreign keys {}", t.name),
            format!(
                "{} takes part in foreign keys ({}); a renamed table would keep or lose them in ways that break referential integrity",
                t.name,
                list.join(", ")
            ),
            "drop the foreign keys for the rebuild (and add them back after), or use the server's own ALTER",
        );
    }
    Ok(())
}
