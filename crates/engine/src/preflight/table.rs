//! The table checks: the table exists and is a base table, its helper names
//! fit and the old table's name is free, the ALTER parses and applies to a throwaway copy of the definition,
//! the triggers can follow the table and foreign keys are allowed, the plan stands, and what
//! [`crate::datacheck`] found in the data is judged (refused, or allowed by
//! `allow_lossy`). A copy left behind by a killed preflight is recognised by
//! its table comment and dropped; any other table of that name is refused.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{check_table_name, Report, CHECK_TABLE_MARK};
use crate::config::{Config, TableConfig};
use crate::plan::{plan_table, TablePlan};
use crate::server::inspect::{inspect_table, table_exists, TableInfo};
use crate::server::{quote_ident, Context, DbError};

pub(super) async fn check_table(
    conn: &mut Conn,
    config: &Config,
    table: &TableConfig,
    report: &mut Report,
) -> Result<(), DbError> {
    let schema = config.schema_of(table);
    let name = format!("table {}", table.name);
    match crate::server::inspect::table_type(conn, schema, &table.name).await? {
        None => {
            report.fail(
                &name,
                format!("{schema}.{} does not exist", table.name),
                "fix [[table]] name or [source] database",
            );
            return Ok(());
        }
        Some(kind) if kind != "BASE TABLE" => {
            report.fail(
                &name,
                format!(
                    "{schema}.{} is a {kind}, not a base table: wraith rebuilds tables that hold rows \
                     (a system-versioned table's history would not be carried)",
                    table.name
                ),
                "name a base table in [[table]] name (for a view, the table it reads from)",
            );
            return Ok(());
        }
        Some(_) => {}
    }
    // The clause is data: judged before anything is sent to the server.
    if let Err(e) = crate::alter::parse(&table.alter, &table.name) {
        report.fail(&format!("alter {}", table.name), e.problem, e.fix);
        return Ok(());
    }
    // The names wraith gives its tables must fit the server's 64 characters.
    let helper_names = [
        crate::shadow::shadow_name(&table.name),
        crate::shadow::old_name(&table.name),
        crate::cutover::sentry_name(&table.name),
        crate::cutover::swap_name(&table.name),
    ];
    if let Some(long) = helper_names.iter().find(|n| n.chars().count() > 64) {
        report.fail(
            &name,
            format!(
                "the name {long} that wraith needs for {} is longer than 64 characters",
                table.name
            ),
            "rename the table to a shorter name first (at most 49 characters)",
        );
        return Ok(());
    }
    // The cut-over renames the source to `_t_old`: a table of that name
    // (the old table an earlier rebuild kept) would fail it after the whole
    // copy, so it is refused now.
    let old_name = crate::shadow::old_name(&table.name);
    if config.cutover.enabled && table_exists(conn, schema, &old_name).await? {
        report.fail(
            &format!("old table {}", table.name),
            format!(
                "{schema}.{old_name} exists (an earlier rebuild kept it); the cut-over renames {} to that name",
                table.name
            ),
            format!(
                "drop it when it is no longer needed (DROP TABLE {}.{}), or rename it away; \
                 [cutover] drop_old_table = true drops the old table at each cut-over",
                quote_ident(schema),
                quote_ident(&old_name)
            ),
        );
        return Ok(());
    }
    let old = inspect_table(conn, schema, &table.name).await?;
    report.ok(
        &name,
        format!(
            "{} columns, {} indexes, ~{} rows, engine {}",
            old.columns.len(),
            old.indexes.len(),
            old.estimated_rows,
            old.engine
        ),
    );
    if !old.engine.eq_ignore_ascii_case("InnoDB") {
        report.warn(
            &name,
            format!(
                "engine is {}, not InnoDB: reads are not consistent snapshots",
                old.engine
            ),
            "convert the table to InnoDB first",
        );
    }
    let triggers = super::triggers::check_triggers(conn, config, table, &old, report).await?;
    super::foreign_keys::check_foreign_keys(conn, config, table, &old, report).await?;
    check_alter_and_plan(conn, config, table, &old, &triggers, report).await
}

/// The ALTER applied to a throwaway copy of `old`'s definition, then the
/// plan from the old definition to the new one, and the data check.
async fn check_alter_and_plan(
    conn: &mut Conn,
    config: &Config,
    table: &TableConfig,
    old: &TableInfo,
    triggers: &[crate::cutover::triggers::TriggerDef],
    report: &mut Report,
) -> Result<(), DbError> {
    match apply_alter_to_copy(conn, old, &table.alter).await? {
        Err(server_message) => report.fail(
            &format!("alter {}", table.name),
            format!(
                "the ALTER does not apply to {}: {server_message}",
                table.name
            ),
            format!(
                "fix [[table]] alter for {} (it is the clause after `ALTER TABLE {}`)",
                table.name, table.name
            ),
        ),
        Ok(new) => {
            report.ok(
                &format!("alter {}", table.name),
                "applies cleanly to a copy of the definition",
            );
            match plan_table(
                old,
                &new,
                &table.alter,
                &table.rename_columns,
                config.copy.backend,
                config.defers_secondary_indexes(),
            ) {
                Ok(mut plan) => {
                    report.ok(
                        &format!("key {}", table.name),
                        format!(
                            "copy by ({}), new key ({})",
                            plan.chunk_key.join(", "),
                            plan.new_key.join(", ")
                        ),
                    );
                    super::triggers::check_trigger_columns(report, table, triggers, &plan);
                    let types_name = format!("types {}", table.name);
                    let mut refusals = super::column_types::type_refusals(old, &new, &plan);
                    if refusals.is_empty() {
                        refusals =
                            super::column_types::spatial_misfits(conn, old, &new, &plan).await?;
                    }
                    if !refusals.is_empty() {
                        for r in refusals {
                            report.fail(&types_name, r.problem, r.fix);
                        }
                        return Ok(());
                    }
                    report.ok(&types_name, "every copied column's type is carried exactly");
                    if !fill_implicit_values(conn, report, table, old, &new, &mut plan).await? {
                        return Ok(());
                    }
                    if let Some(flavor) = report.flavor {
                        crate::datacheck::check(conn, flavor, old, &new, &mut plan).await?;
                        judge_data(report, table, &plan);
                    }
                    if config.cutover.revert_window.is_some() {
                        let name = format!("revert window {}", table.name);
                        match crate::migration::revert_window_refusal(&plan, old) {
                            Some(problem) => report.fail(
                                &name,
                                problem,
                                "see [cutover] revert_window in config/README.md",
                            ),
                            None => report.ok(
                                &name,
                                "every change of the live table can be applied back to the old one",
                            ),
                        }
                    }
                    report.plans.push(plan);
                }
                Err(e) => report.fail(&format!("plan {}", table.name), e.problem, e.fix),
            }
        }
    }
    Ok(())
}

/// Asks the server for the value of every column the ALTER adds NOT NULL
/// without a DEFAULT (see [`crate::implicit`]) and puts it in the plan;
/// `false` (with the refusal reported) when the server cannot give one.
async fn fill_implicit_values(
    conn: &mut Conn,
    report: &mut Report,
    table: &TableConfig,
    old: &TableInfo,
    new: &TableInfo,
    plan: &mut TablePlan,
) -> Result<bool, DbError> {
    let name = format!("implicit values {}", table.name);
    let mut filled = true;
    for change in plan.columns.iter_mut() {
        let crate::plan::ColumnChange::AddedImplicit {
            name: column,
            value,
        } = change
        else {
            continue;
        };
        let Some(nc) = new.column(column) else {
            continue;
        };
        match crate::implicit::probe(conn, &old.schema, new, nc).await? {
            Ok(v) => {
                *value = v.shown.clone();
                report.ok(
                    &name,
                    format!(
                        "column `{column}` is added NOT NULL without a DEFAULT: every row gets {}, as the server's own ALTER gives it",
                        v.shown
                    ),
                );
                plan.implicit_values.push(v);
            }
            Err(reason) => {
                filled = false;
                report.fail(
                    &name,
                    format!(
                        "column `{column}` of {} is added NOT NULL without a DEFAULT, and the type's implicit value cannot be carried: {reason}",
                        table.name
                    ),
                    format!(
                        "give the ADD COLUMN an explicit default (`ADD COLUMN {column} {} NOT NULL DEFAULT …`), or make it NULL and tighten it in a later run",
                        nc.column_type
                    ),
                );
            }
        }
    }
    Ok(filled)
}

/// Turns what [`crate::datacheck`] found into checks: values the new
/// definition cannot hold fail; values that will change fail unless the
/// table's `allow_lossy` says so.
fn judge_data(report: &mut Report, table: &TableConfig, plan: &TablePlan) {
    let name = format!("data {}", table.name);
    for f in &plan.data.refusals {
        report.fail(
            &name,
            format!(
                "{}: {}; the ALTER cannot hold this data, so nothing was started",
                f.subject, f.detail
            ),
            f.fix.clone(),
        );
    }
    if plan.data.refusals.is_empty() {
        report.ok(&name, "the data fits the new definition");
    }
    if plan.data.lossy.is_empty() {
        return;
    }
    let name = format!("values {}", table.name);
    let columns: Vec<&str> = plan.data.lossy.iter().map(|f| f.subject.as_str()).collect();
    if !plan.data.lossy_found {
        report.ok(
            &name,
            format!(
                "no current value of {} changes (see \"values that will change\")",
                columns.join(", ")
            ),
        );
    } else if table.allow_lossy {
        report.warn(
            &name,
            format!(
                "values of {} will change as the server's own ALTER changes them (see \"values that will change\"); accepted by allow_lossy = true",
                columns.join(", ")
            ),
            "nothing to do; remove allow_lossy to be asked again",
        );
    } else {
        report.fail(
            &name,
            format!(
                "the ALTER changes values of {} rather than refusing them (see \"values that will change\")",
                columns.join(", ")
            ),
            format!(
                "set `allow_lossy = true` under the [[table]] of {} to accept the changes, or change the ALTER so that values keep their precision",
                table.name
            ),
        );
    }
}

/// Applies the ALTER to an empty copy of the definition and describes the
/// result. The copy is dropped whatever happens. `Ok(Err(msg))` is the
/// server's refusal of the ALTER.
pub async fn apply_alter_to_copy(
    conn: &mut Conn,
    old: &TableInfo,
    alter: &str,
) -> Result<Result<TableInfo, String>, DbError> {
    let check = check_table_name(&old.name);
    let qs = quote_ident(&old.schema);
    let qcheck = format!("{qs}.{}", quote_ident(&check));
    if table_exists(conn, &old.schema, &check).await? {
        if !leftover_check_table(conn, old, &check).await? {
            return Ok(Err(format!(
                "a table {check} already exists and is not an empty leftover of wraith's check; rename or drop it (DROP TABLE {qcheck})"
            )));
        }
        tracing::info!(table = %check, "dropping the empty check table an interrupted run left");
        conn.query_drop(format!("DROP TABLE IF EXISTS {qcheck}"))
            .await
            .context(|| format!("dropping the leftover {check}"))?;
    }
    conn.query_drop(format!(
        "CREATE TABLE {qcheck} LIKE {qs}.{}",
        quote_ident(&old.name)
    ))
    .await
    .context(|| format!("creating the throwaway copy {check}"))?;
    // The mark lets a later check know a leftover is wraith's to drop.
    conn.query_drop(format!(
        "ALTER TABLE {qcheck} COMMENT = '{CHECK_TABLE_MARK}'"
    ))
    .await
    .context(|| format!("marking the throwaway copy {check}"))?;
    let altered = conn
        .query_drop(format!("ALTER TABLE {qcheck} {alter}"))
        .await;
    let result = match altered {
        Ok(()) => Ok(inspect_table(conn, &old.schema, &check).await),
        Err(e @ mysql_async::Error::Server(_)) => Err(e.to_string()),
        Err(e) => {
            let _ = conn
                .query_drop(format!("DROP TABLE IF EXISTS {qcheck}"))
                .await;
            return Err(DbError {
                context: format!("applying the ALTER to {check}"),
                error: e,
            });
        }
    };
    conn.query_drop(format!("DROP TABLE IF EXISTS {qcheck}"))
        .await
        .context(|| format!("dropping the throwaway copy {check}"))?;
    match result {
        Ok(inspected) => {
            let mut new = inspected?;
            new.name = old.name.clone();
            Ok(Ok(new))
        }
        Err(msg) => Ok(Err(msg)),
    }
}

/// Whether an existing `check` table is what a killed check leaves: marked
/// as wraith's (empty, or holding the rows of a killed estimate's sample),
/// or an empty bare copy of the source's definition (killed between
/// `CREATE … LIKE` and the mark). Dropping such a table loses nothing,
/// whoever made it.
pub(super) async fn leftover_check_table(
    conn: &mut Conn,
    old: &TableInfo,
    check: &str,
) -> Result<bool, DbError> {
    let qs = quote_ident(&old.schema);
    let qcheck = format!("{qs}.{}", quote_ident(check));
    let comment: Option<String> = conn
        .exec_first(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&old.schema, check),
        )
        .await
        .context(|| format!("reading the comment of {check}"))?;
    if comment.as_deref() == Some(CHECK_TABLE_MARK) {
        return Ok(true);
    }
    let has_rows: Option<u8> = conn
        .query_first(format!("SELECT 1 FROM {qcheck} LIMIT 1"))
        .await
        .context(|| format!("reading {check}"))?;
    if has_rows.is_some() {
        return Ok(false);
    }
    let leftover = crate::server::inspect::show_create(conn, &old.schema, check).await?;
    let source = crate::server::inspect::show_create(conn, &old.schema, &old.name).await?;
    // The definition after the name, without the AUTO_INCREMENT counter
    // (a copy made by LIKE starts it afresh).
    let body = |sql: String| {
        sql.split_once('(').map(|(_, rest)| {
            rest.split(' ')
                .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    Ok(matches!((body(leftover), body(source)), (Some(a), Some(b)) if a == b))
}
