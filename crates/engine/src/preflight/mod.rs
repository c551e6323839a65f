//! # Preflight: can this job run here, and what would it do?
//!
//! Preflight reads server settings, privileges and the table, applies the
//! ALTER to a throwaway copy of the table's *definition* (`_<t>_chk`, created
//! empty with `CREATE TABLE ... LIKE`, dropped at once) and builds the plan.
//! It never touches the source table's rows or definition.
//!
//! The `alter` clause is judged by [`crate::alter`] before any of it is sent,
//! and a name that is not a base table (a view, a sequence) is refused.
//!
//! Every failed check says what it saw, why that is a problem, and the exact
//! statement or my.cnf line that fixes it (gh-ost's habit).
//!
//! Once the plan stands, [`crate::datacheck`] looks at the data with bounded
//! queries: values the new definition cannot hold fail the check, values
//! that will change fail it unless the table's `allow_lossy` is set, and the
//! plan lists them under "values that will change".
//!
//! The parts: this page holds the [`Report`], [`run`] and the binlog
//! settings; `grants` reads `SHOW GRANTS` and judges the privileges; `table`
//! checks each table, applies the ALTER to the throwaway copy and turns the
//! data check into checks; `replicas` asks each watched replica whether it
//! builds deferred indexes with the source. What it leaves to others: the mapping of columns
//! and keys ([`crate::plan`]), the import's own preflight
//! ([`crate::import`]), and acting on the report (the caller).
//!
//! Errors: every problem ends as a failed [`Check`] in the [`Report`]; [`run`]
//! itself never fails. A [`DbError`] from the parts (a server that cannot be
//! reached, a query that fails) becomes the `connect` or `server` check.

mod column_types;
mod estimate;
mod foreign_keys;
mod grants;
mod replicas;
mod table;
mod triggers;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;

use crate::config::Config;
use crate::plan::TablePlan;
use crate::server::{self, Context, DbError, Flavor};

pub use estimate::{JobEstimate, TableEstimate};
use grants::check_privileges;
use table::check_table;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// Appends one line per check (and its fix), as `wraith check` prints them.
pub(crate) fn render_checks(checks: &[Check], out: &mut String) {
    for c in checks {
        let mark = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("[{mark}] {}: {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("       fix: {fix}\n"));
        }
    }
}

/// One line of the preflight report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// How to fix it, for a failed or warned check.
    pub fix: Option<String>,
}

/// Everything preflight found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub server: String,
    pub flavor: Option<Flavor>,
    pub checks: Vec<Check>,
    pub plans: Vec<TablePlan>,
    /// The predicted time and disk ([`run_predicting`] only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<JobEstimate>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    fn push(&mut self, name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            status,
            detail: detail.into(),
            fix,
        });
    }
    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail, None);
    }
    fn fail(&mut self, name: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Fail, detail, Some(fix.into()));
    }
    fn warn(&mut self, name: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Warn, detail, Some(fix.into()));
    }

    /// The human report: one line per check, then the plan.
    pub fn render(&self) -> String {
        let mut out = format!("server: {}\n", self.server);
        render_checks(&self.checks, &mut out);
        for p in &self.plans {
            out.push_str(&render_plan(p));
        }
        if let Some(e) = &self.estimate {
            out.push_str(&e.render());
        }
        out
    }
}

/// The plan of one table, for people.
pub fn render_plan(p: &TablePlan) -> String {
    let mut out = format!("\nplan for {}:\n", p.table);
    out.push_str(&format!(
        "  chunk key:   {} ({})\n",
        p.chunk_key.join(", "),
        p.chunk_key_name
    ));
    out.push_str(&format!("  new key:     {}\n", p.new_key.join(", ")));
    out.push_str("  columns:\n");
    for c in &p.columns {
        out.push_str(&format!("    {}\n", c.describe()));
    }
    if let Some(zone) = &p.data.time_zone {
        let cols: Vec<&str> = p
            .copied_columns()
            .into_iter()
            .map(|(_, to)| to)
            .filter(|to| p.zone_shift(to).is_some())
            .collect();
        out.push_str(&format!(
            "  time zone:   {} converted in the server's time_zone {zone}, as its own ALTER does\n",
            cols.join(", ")
        ));
    }
    if !p.data.lossy.is_empty() {
        out.push_str("  values that will change:\n");
        for f in &p.data.lossy {
            out.push_str(&format!("    {}: {}\n", f.subject, f.detail));
        }
    }
    for cut in &p.data.cut_short {
        out.push_str(&format!("  data check cut short: {cut}\n"));
    }
    if p.deferred_indexes.is_empty() {
        out.push_str("  deferred indexes: none\n");
    } else {
        out.push_str("  deferred indexes (built after the copy):\n");
        for i in &p.deferred_indexes {
            out.push_str(&format!("    {}\n", i.definition));
        }
    }
    out.push_str(&format!(
        "  backend:     {} ({})\n",
        p.backend, p.backend_reason
    ));
    out.push_str(&format!(
        "  estimated:   {} rows, {}\n",
        p.estimated_rows,
        crate::config::ByteSize(p.estimated_bytes)
    ));
    out
}

/// Comment of the throwaway check table, so a leftover of a killed check is
/// known to be wraith's.
const CHECK_TABLE_MARK: &str = "wraith: throwaway preflight check table";

pub use crate::names::check_table_name;

/// Runs every check: the config's paths, then the configured servers. Fails
/// only when it could not run at all; refusals are in the report.
pub async fn run(config: &Config) -> Report {
    run_with(config, false).await
}

/// [`run`], then, when every check passed, the prediction of the run's time
/// and disk from a short sample on the server (`wraith check`; see
/// `estimate`). The disk it needs beyond the free space fails the check.
pub async fn run_predicting(config: &Config) -> Report {
    run_with(config, true).await
}

async fn run_with(config: &Config, predict: bool) -> Report {
    let mut report = Report {
        server: config.source.describe(),
        flavor: None,
        checks: Vec::new(),
        plans: Vec::new(),
        estimate: None,
    };
    report.checks.extend(crate::paths::check(config));
    let opts = match server::connection_opts(&config.source) {
        Ok(o) => o,
        Err(e) => {
            report.fail("connect", e, "fix password_env / password_file in [source]");
            return report;
        }
    };
    // The estimate's sample copies with the run's threads, beside one session of its own.
    let connections = if predict { config.copy.threads + 2 } else { 2 };
    let pool = server::pool(opts, connections);
    let result = run_on(&pool, config, &mut report).await;
    if let Err(e) = result {
        if report.flavor.is_none() {
            report.fail(
                "connect",
                format!("cannot talk to {}: {e}", config.source.describe()),
                "check [source] host/port/socket, user and password, and that the server is running",
            );
        } else {
            report.fail(
                "server",
                format!("a preflight query failed: {e}"),
                "see the server's message; the source table was not changed",
            );
        }
    } else if predict && report.passed() {
        estimate::estimate(&pool, config, &mut report).await;
    }
    let _ = pool.disconnect().await;
    report
}

async fn run_on(pool: &Pool, config: &Config, report: &mut Report) -> Result<(), DbError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| format!("connecting to {}", config.source.describe()))?;
    let flavor = server::flavor(&mut conn).await?;
    report.flavor = Some(flavor);
    report.ok("server", flavor.to_string());
    check_binlog(&mut conn, flavor, report).await?;
    // Every schema the job's tables live in.
    let mut schemas: Vec<&str> = vec![&config.source.database];
    for t in &config.tables {
        if !schemas.contains(&config.schema_of(t)) {
            schemas.push(config.schema_of(t));
        }
    }
    for schema in schemas {
        check_privileges(&mut conn, flavor, &config.source.user, schema, report).await?;
    }
    for table in &config.tables {
        check_table(&mut conn, config, table, report).await?;
    }
    if report.plans.iter().any(|p| !p.deferred_indexes.is_empty()) {
        replicas::check_build_with_replicas(&mut conn, config, report).await?;
    }
    check_together(&mut conn, config, report).await
}

/// Least time under the cut-over's lock per table swapped together (its
/// drain to the token, its verification, its AUTO_INCREMENT counter).
const HOLD_PER_TABLE: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether the job's tables can be swapped in one RENAME: one server, no
/// name twice as the server compares names, and a lock budget that covers
/// every table.
async fn check_together(
    conn: &mut Conn,
    config: &Config,
    report: &mut Report,
) -> Result<(), DbError> {
    let n = config.tables.len();
    if n < 2 || !config.together() {
        return Ok(());
    }
    if !config.same_server() {
        report.fail(
            "cutover_together",
            "the shadow tables would live on [target], another server: one RENAME cannot swap tables across servers",
            "remove [target] (wraith rebuilds within one server), or set [cutover] together = false",
        );
        return Ok(());
    }
    let lower: Option<u8> = conn
        .query_first("SELECT @@lower_case_table_names")
        .await
        .context(|| "reading lower_case_table_names".into())?;
    if lower.unwrap_or(0) != 0 {
        let mut seen = std::collections::BTreeSet::new();
        for t in &config.tables {
            if !seen.insert((config.schema_of(t).to_lowercase(), t.name.to_lowercase())) {
                report.fail(
                    "cutover_together",
                    format!(
                        "table {:?} is listed twice: the server has lower_case_table_names = {}, so names differing only in case are one table",
                        t.name,
                        lower.unwrap_or(0)
                    ),
                    "list each table once in [[table]]",
                );
                return Ok(());
            }
        }
    }
    let budget = config.cutover.lock_hold_budget.0;
    let needed = HOLD_PER_TABLE * n as u32;
    if budget < needed {
        report.fail(
            "cutover_together",
            format!(
                "[cutover] lock_hold_budget = \"{}\" cannot cover {n} tables swapped together: \
                 draining and verifying each under the one lock takes about {} ms",
                config.cutover.lock_hold_budget,
                HOLD_PER_TABLE.as_millis()
            ),
            format!(
                "give lock_hold_budget = \"{}ms\" or more (and lock_wait_timeout above it), or set [cutover] together = false",
                needed.as_millis()
            ),
        );
        return Ok(());
    }
    let names: Vec<&str> = config.tables.iter().map(|t| t.name.as_str()).collect();
    report.ok(
        "cutover_together",
        format!("{} swapped in one RENAME at one cut-over", names.join(", ")),
    );
    Ok(())
}

async fn global_var(conn: &mut Conn, name: &str) -> Result<Option<String>, DbError> {
    let row: Option<(String, String)> = conn
        .query_first(format!(
            "SHOW GLOBAL VARIABLES LIKE {}",
            server::quote_str(name)
        ))
        .await
        .context(|| format!("reading @@GLOBAL.{name}"))?;
    Ok(row.map(|(_, v)| v))
}

async fn check_binlog(conn: &mut Conn, flavor: Flavor, report: &mut Report) -> Result<(), DbError> {
    let log_bin = global_var(conn, "log_bin").await?.unwrap_or_default();
    if log_bin.eq_ignore_ascii_case("ON") || log_bin == "1" {
        report.ok("log_bin", "ON");
    } else {
        report.fail(
            "log_bin",
            format!("log_bin is {log_bin}: wraith follows changes through the binary log"),
            "add `log_bin = binlog` (and a non-zero `server_id`) under [mysqld] in my.cnf and restart the server",
        );
    }

    let expect =
        |report: &mut Report, name: &str, value: Option<String>, wanted: &[&str], fix: String| {
            let value = value.unwrap_or_else(|| "(not set)".into());
            if wanted.iter().any(|w| value.eq_ignore_ascii_case(w)) {
                report.ok(name, value);
            } else {
                report.fail(
                    name,
                    format!("{name} is {value}; wraith needs {}", wanted.join(" or ")),
                    fix,
                );
            }
        };
    let v = global_var(conn, "binlog_format").await?;
    expect(
        report,
        "binlog_format",
        v,
        &["ROW"],
        "SET GLOBAL binlog_format = 'ROW'; and `binlog_format = ROW` under [mysqld] in my.cnf \
         (sessions already open keep their old format: reconnect the application or wait for it to reconnect)"
            .into(),
    );
    let v = global_var(conn, "binlog_row_image").await?;
    expect(
        report,
        "binlog_row_image",
        v,
        &["FULL"],
        "SET GLOBAL binlog_row_image = 'FULL'; and `binlog_row_image = FULL` under [mysqld] in my.cnf".into(),
    );
    if flavor.has_binlog_row_metadata() {
        let v = global_var(conn, "binlog_row_metadata").await?;
        if flavor.is_mariadb() {
            expect(
                report,
                "binlog_row_metadata",
                v,
                &["FULL"],
                "SET GLOBAL binlog_row_metadata = 'FULL'; and `binlog_row_metadata = FULL` under [mysqld] in my.cnf \
                 (without it MariaDB does not log signedness, so unsigned values would decode wrongly)"
                    .into(),
            );
        } else {
            expect(
                report,
                "binlog_row_metadata",
                v,
                &["MINIMAL", "FULL"],
                "SET GLOBAL binlog_row_metadata = 'MINIMAL'; and the same under [mysqld] in my.cnf"
                    .into(),
            );
        }
    }
    if flavor.is_mariadb() {
        let v = global_var(conn, "log_bin_compress")
            .await?
            .unwrap_or_else(|| "OFF".into());
        if v.eq_ignore_ascii_case("OFF") || v == "0" {
            report.ok("log_bin_compress", "OFF");
        } else {
            report.fail(
                "log_bin_compress",
                "log_bin_compress is ON: compressed row events cannot be decoded by wraith",
                "SET GLOBAL log_bin_compress = OFF; and `log_bin_compress = OFF` in my.cnf",
            );
        }
    }
    let server_id = global_var(conn, "server_id").await?.unwrap_or_default();
    if server_id.is_empty() || server_id == "0" {
        report.fail(
            "server_id",
            "server_id is 0: the binary log cannot be streamed",
            "SET GLOBAL server_id = 1; (any non-zero id unique in the topology) and `server_id = 1` in my.cnf",
        );
    } else {
        report.ok("server_id", server_id);
    }
    Ok(())
}
