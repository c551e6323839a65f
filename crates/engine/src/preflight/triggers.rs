//! The triggers of a rebuilt table: listed in the plan with what happens to
//! each, and judged. They follow the table to the new one at the cut-over
//! ([`crate::cutover::triggers`] says how and why then); refused, before
//! anything is made, is what would make them wrong or the swap unsafe:
//! - a trigger body that uses `NEW.col` / `OLD.col` of a column the ALTER
//!   drops or renames (on the new table it would fail every write);
//! - a copy's name over 64 characters, or taken by another trigger;
//! - the revert window (its swap back would carry triggers the wrong way);
//! - a shadow in another schema than the table (a RENAME cannot move
//!   triggers across schemas).
//!
//! A body that names the table itself is fine: after the cut-over the name
//! is the new table's, which is what it meant.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::Report;
use crate::config::{Config, TableConfig};
use crate::cutover::triggers::{carried_name, names_table, read_triggers, row_columns, TriggerDef};
use crate::plan::{ColumnChange, TablePlan};
use crate::server::inspect::TableInfo;
use crate::server::{Context, DbError};

/// Lists `t`'s triggers in the report and refuses what cannot be carried;
/// returns them for [`check_trigger_columns`] once the plan is known.
pub(super) async fn check_triggers(
    conn: &mut Conn,
    config: &Config,
    table: &TableConfig,
    t: &TableInfo,
    report: &mut Report,
) -> Result<Vec<TriggerDef>, DbError> {
    let name = format!("triggers {}", t.name);
    let triggers = read_triggers(conn, &t.schema, &t.name).await?;
    if triggers.is_empty() {
        report.ok(&name, "none");
        return Ok(triggers);
    }
    let listed = triggers
        .iter()
        .map(|d| format!("{} ({})", d.name, d.when()))
        .collect::<Vec<_>>()
        .join(", ");
    if !config.cutover.enabled {
        report.ok(
            &name,
            format!(
                "{listed}: they stay on {} (no cut-over; the shadow gets none)",
                t.name
            ),
        );
        return Ok(triggers);
    }
    if config.cutover.revert_window.is_some() {
        report.fail(
            &name,
            format!(
                "{} has triggers ({listed}); the revert window is not yet supported with triggers \
                 (the swap back would move them the wrong way)",
                t.name
            ),
            "remove [cutover] revert_window for this table, or drop the triggers for the rebuild and recreate them after",
        );
        return Ok(triggers);
    }
    let target = config.target_schema_of(table);
    if target != t.schema {
        report.fail(
            &name,
            format!(
                "{} has triggers ({listed}) and its shadow would be in {target}, not {}: \
                 a RENAME cannot move triggers across schemas",
                t.name, t.schema
            ),
            "rebuild the table with its shadow in its own schema ([[table]] schema, or the same [target] database)",
        );
        return Ok(triggers);
    }
    let shadow = crate::shadow::shadow_name(&t.name);
    let mut fine = true;
    for d in &triggers {
        let new = carried_name(&d.name);
        if new.chars().count() > 64 {
            fine = false;
            report.fail(
                &format!("trigger {}", d.name),
                format!(
                    "its copy on the new table would be named {new}, longer than 64 characters"
                ),
                format!(
                    "rename the trigger to at most {} characters (DROP and CREATE it again) before the rebuild",
                    64 - crate::cutover::triggers::CARRIED_SUFFIX.len()
                ),
            );
            continue;
        }
        // A trigger on the shadow is wraith's (a killed run's copy): dropped
        // before the cut-over, so its name is not taken.
        let holder: Option<String> = conn
            .exec_first(
                "SELECT EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = ? AND TRIGGER_NAME = ?",
                (&t.schema, &new),
            )
            .await
            .context(|| format!("looking for a trigger named {new}"))?;
        if let Some(holder) = holder.filter(|h| *h != shadow) {
            fine = false;
            report.fail(
                &format!("trigger {}", d.name),
                format!(
                    "its copy on the new table would be named {new}, but a trigger of {holder} has that name"
                ),
                format!("rename or drop trigger {new} before the rebuild"),
            );
            continue;
        }
        let own_name = if names_table(&d.body, &t.name) {
            format!(
                "; its body names {} itself, which after the cut-over is the new table",
                t.name
            )
        } else {
            String::new()
        };
        report.ok(
            &format!("trigger {}", d.name),
            format!(
                "({}): created on the new table as {new} at the cut-over; the old table's is dropped{own_name}",
                d.when()
            ),
        );
    }
    if fine {
        report.ok(
            &name,
            format!(
                "{listed}: none on the shadow during the copy and the apply (they would fire twice)"
            ),
        );
    }
    Ok(triggers)
}

/// Refuses a trigger that uses `NEW.col` / `OLD.col` of a column the ALTER
/// drops or renames: on the new table every write would fail.
pub(super) fn check_trigger_columns(
    report: &mut Report,
    table: &TableConfig,
    triggers: &[TriggerDef],
    plan: &TablePlan,
) {
    let gone: Vec<(String, &str)> = plan
        .columns
        .iter()
        .filter_map(|c| match c {
            ColumnChange::Dropped { name } => Some((name.to_lowercase(), "drops")),
            ColumnChange::Renamed { from, .. } | ColumnChange::RenamedTypeChanged { from, .. } => {
                Some((from.to_lowercase(), "renames"))
            }
            _ => None,
        })
        .collect();
    for d in triggers {
        let used = row_columns(&d.body);
        for (column, what) in &gone {
            if used.contains(column) {
                report.fail(
                    &format!("trigger {}", d.name),
                    format!(
                        "trigger {} ({}) of {} uses NEW.{column} or OLD.{column}, and the ALTER {what} \
                         column {column}: after the cut-over every {} would fail",
                        d.name,
                        d.when(),
                        table.name,
                        d.event.to_lowercase()
                    ),
                    format!(
                        "change trigger {} so it no longer uses {column} (DROP TRIGGER and CREATE it again) \
                         before the rebuild, or keep column {column} in the ALTER",
                        d.name
                    ),
                );
            }
        }
    }
}
