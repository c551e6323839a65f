//! Preflight: can this job run here, and what would it do?
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

use std::collections::BTreeSet;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;

use crate::config::{Config, TableConfig};
use crate::plan::{plan_table, TablePlan};
use crate::server::inspect::{inspect_table, table_exists, TableInfo};
use crate::server::{self, quote_ident, Context, DbError, Flavor};

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

/// Name of the throwaway table preflight applies the ALTER to.
pub fn check_table_name(table: &str) -> String {
    format!("_{table}_chk")
}

/// Runs every check: the config's paths, then the configured servers. Fails
/// only when it could not run at all; refusals are in the report.
pub async fn run(config: &Config) -> Report {
    let mut report = Report {
        server: config.source.describe(),
        flavor: None,
        checks: Vec::new(),
        plans: Vec::new(),
    };
    report.checks.extend(crate::paths::check(config));
    let opts = match server::connection_opts(&config.source) {
        Ok(o) => o,
        Err(e) => {
            report.fail("connect", e, "fix password_env / password_file in [source]");
            return report;
        }
    };
    let pool = server::pool(opts, 2);
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
    check_privileges(
        &mut conn,
        flavor,
        &config.source.user,
        &config.source.database,
        report,
    )
    .await?;
    for table in &config.tables {
        check_table(&mut conn, config, table, report).await?;
    }
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

/// One `GRANT` line of `SHOW GRANTS`.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub privileges: BTreeSet<String>,
    /// `None` for `*.*`, else the database pattern.
    pub database: Option<String>,
    /// `Some` for table-level grants.
    pub table: Option<String>,
}

/// Parses one line of `SHOW GRANTS`; role grants and proxies give `None`.
pub fn parse_grant(line: &str) -> Option<Grant> {
    let rest = line.strip_prefix("GRANT ")?;
    let on = rest.find(" ON ")?;
    let privs = &rest[..on];
    let after = &rest[on + 4..];
    let scope = after.split(" TO ").next()?.trim();
    let scope = scope.strip_prefix("TABLE ").unwrap_or(scope);
    let mut privileges = BTreeSet::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in privs.chars() {
        match c {
            '(' => {
                depth += 1;
                // Column-level privileges do not cover the table.
                current.push_str("(COLUMNS");
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                privileges.insert(current.trim().to_ascii_uppercase());
                current.clear();
            }
            c if depth == 0 => current.push(c),
            _ => {}
        }
    }
    if !current.trim().is_empty() {
        privileges.insert(current.trim().to_ascii_uppercase());
    }
    let (db_part, table_part) = split_scope(scope)?;
    Some(Grant {
        privileges,
        database: (db_part != "*").then_some(db_part),
        table: (table_part != "*").then_some(table_part),
    })
}

fn split_scope(scope: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = scope.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                chars.next();
                cur.push('`');
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    match parts.as_slice() {
        [d, t] => Some((d.clone(), t.clone())),
        _ => None,
    }
}

/// SQL `LIKE` match as used by database names in grants (`\_` escapes).
fn like_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('%') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('_') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

async fn check_privileges(
    conn: &mut Conn,
    flavor: Flavor,
    user: &str,
    database: &str,
    report: &mut Report,
) -> Result<(), DbError> {
    let lines: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .context(|| "reading the grants of the current user".into())?;
    let grants: Vec<Grant> = lines.iter().filter_map(|l| parse_grant(l)).collect();
    let global: BTreeSet<&str> = grants
        .iter()
        .filter(|g| g.database.is_none())
        .flat_map(|g| g.privileges.iter().map(String::as_str))
        .collect();
    let on_db: BTreeSet<&str> = grants
        .iter()
        .filter(|g| {
            g.table.is_none()
                && g.database
                    .as_deref()
                    .is_none_or(|d| like_match(d, database))
        })
        .flat_map(|g| g.privileges.iter().map(String::as_str))
        .collect();
    let all_global = global.contains("ALL PRIVILEGES") || global.contains("ALL");
    let all_db = all_global || on_db.contains("ALL PRIVILEGES") || on_db.contains("ALL");

    let table_privs = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "DROP",
        "ALTER",
        "LOCK TABLES",
    ];
    let missing_db: Vec<&str> = table_privs
        .iter()
        .copied()
        .filter(|p| !all_db && !on_db.contains(p))
        .collect();
    let client_priv = if flavor.is_mariadb() && flavor.version() >= (10, 5, 2) {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    };
    let mut missing_global: Vec<&str> = Vec::new();
    if !all_global && !global.contains("REPLICATION SLAVE") {
        missing_global.push("REPLICATION SLAVE");
    }
    if !all_global && !global.contains("REPLICATION CLIENT") && !global.contains("BINLOG MONITOR") {
        missing_global.push(client_priv);
    }
    if missing_db.is_empty() && missing_global.is_empty() {
        report.ok(
            "privileges",
            format!("{user} has what wraith needs on {database}"),
        );
        return Ok(());
    }
    let mut fixes = Vec::new();
    if !missing_db.is_empty() {
        fixes.push(format!(
            "GRANT {} ON {}.* TO '{user}'@'<host>';",
            missing_db.join(", "),
            quote_ident(database)
        ));
    }
    if !missing_global.is_empty() {
        fixes.push(format!(
            "GRANT {} ON *.* TO '{user}'@'<host>';",
            missing_global.join(", ")
        ));
    }
    let missing: Vec<&str> = missing_db
        .iter()
        .chain(missing_global.iter())
        .copied()
        .collect();
    report.fail(
        "privileges",
        format!(
            "{user} lacks {} (needed to copy, to stream the binlog and to swap tables)",
            missing.join(", ")
        ),
        fixes.join(" "),
    );
    Ok(())
}

async fn check_table(
    conn: &mut Conn,
    config: &Config,
    table: &TableConfig,
    report: &mut Report,
) -> Result<(), DbError> {
    let schema = &config.source.database;
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
    check_triggers_and_foreign_keys(conn, &old, report).await?;

    match apply_alter_to_copy(conn, &old, &table.alter).await? {
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
                &old,
                &new,
                &table.alter,
                &table.rename_columns,
                config.copy.backend,
                config.copy.defer_secondary_indexes,
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
                    if let Some(flavor) = report.flavor {
                        crate::datacheck::check(conn, flavor, &old, &new, &mut plan).await?;
                        judge_data(report, table, &plan);
                    }
                    report.plans.push(plan);
                }
                Err(e) => report.fail(&format!("plan {}", table.name), e.problem, e.fix),
            }
        }
    }
    Ok(())
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

async fn check_triggers_and_foreign_keys(
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

/// Whether an existing `check` table is what a killed check leaves: empty,
/// and either marked as wraith's or still a bare copy of the source's
/// definition (killed between `CREATE … LIKE` and the mark). Dropping such a
/// table loses nothing, whoever made it.
async fn leftover_check_table(
    conn: &mut Conn,
    old: &TableInfo,
    check: &str,
) -> Result<bool, DbError> {
    let qs = quote_ident(&old.schema);
    let qcheck = format!("{qs}.{}", quote_ident(check));
    let has_rows: Option<u8> = conn
        .query_first(format!("SELECT 1 FROM {qcheck} LIMIT 1"))
        .await
        .context(|| format!("reading {check}"))?;
    if has_rows.is_some() {
        return Ok(false);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grants() {
        let g =
            parse_grant("GRANT SELECT, INSERT, UPDATE (a, b), LOCK TABLES ON `app`.* TO `u`@`%`")
                .unwrap();
        assert!(g.privileges.contains("SELECT"));
        assert!(g.privileges.contains("LOCK TABLES"));
        assert!(!g.privileges.contains("UPDATE"));
        assert_eq!(g.database.as_deref(), Some("app"));
        assert_eq!(g.table, None);
        let g = parse_grant(
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*x'",
        )
        .unwrap();
        assert!(g.privileges.contains("BINLOG MONITOR"));
        assert_eq!(g.database, None);
        let g = parse_grant("GRANT ALL PRIVILEGES ON `a.b`.`t` TO `u`@`h`").unwrap();
        assert_eq!(g.database.as_deref(), Some("a.b"));
        assert_eq!(g.table.as_deref(), Some("t"));
        assert!(parse_grant("GRANT `role` TO `u`@`%`").is_none());
    }

    #[test]
    fn like_patterns() {
        assert!(like_match("app\\_%", "app_1"));
        assert!(!like_match("app\\_%", "appx1"));
        assert!(like_match("a_c", "abc"));
    }
}
