//! The triggers of a rebuilt table: listed, and judged.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::Report;
use crate::server::inspect::TableInfo;
use crate::server::{Context, DbError};

pub(super) async fn check_triggers(
    conn: &mut Conn,
    t: &TableInfo,
    report: &mut Report,
) -> Result<(), DbError> {
    let triggers: Vec<String> = conn
        .exec(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?",
            (&t.schema, &t.name),
        )
        .await
        .context(|| format!("reading triggers of {}", t.name))?;
    if triggers.is_empty() {
        report.ok(&format!("triggers {}", t.name), "none");
    } else {
        report.fail(
            &format!("triggers {}", t.name),
            format!(
                "{} has triggers ({}); they would not follow the rows to the new table",
                t.name,
                triggers.join(", ")
            ),
            "drop the triggers for the rebuild and recreate them after the cut-over",
        );
    }
    Ok(())
}
