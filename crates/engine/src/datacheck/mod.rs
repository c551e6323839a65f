//! Data checks: what the ALTER does to the values in the table, judged
//! before anything is created.
//!
//! **For:** preflight's look at the data (called from `preflight`, which
//! turns the findings into refusals and prints them with the plan):
//!
//! - **Time zone conversions.** wraith's sessions run in UTC so TIMESTAMPs
//!   travel exactly; the server's own ALTER converts a column that is
//!   TIMESTAMP on one side only in the server's `time_zone`
//!   (`@@global.time_zone`; `SYSTEM` is the server's system zone). Such
//!   columns get a [`ZoneShift`] in the plan, which the copy, the applier and
//!   the checksum apply. A conversion into TIMESTAMP from anything but a
//!   DATE or DATETIME cannot be reproduced exactly and is refused (with the
//!   two-step fix) unless the zone is UTC.
//! - **Values the new definition cannot hold** (refused, exit 3): NULLs in a
//!   column made NOT NULL, strings longer than the new type (characters, or
//!   bytes for TEXT/BLOB types), characters the new charset lacks, integers
//!   and DECIMALs outside the new range, DATETIMEs outside the TIMESTAMP
//!   range (or in a daylight-saving gap), and duplicates under a unique key
//!   the ALTER adds or whose columns change type or collation.
//! - **Values that will change** (refused unless `allow_lossy = true`):
//!   DECIMAL scale rounding, a fractional number into an integer, dropped
//!   fractional seconds, a DATETIME's time dropped by DATE.
//!
//! **Bounded:** each check is one query over the source with a time budget
//! (MariaDB `SET STATEMENT max_statement_time`, MySQL `MAX_EXECUTION_TIME`)
//! that stops at the first offending row (`LIMIT 1`). All row checks of a
//! kind run in one scan; each unique key is one `GROUP BY … HAVING`. A check
//! that runs out of time is reported as cut short in the plan; the copy and
//! the change applier still refuse what it did not reach (the server errors
//! out on the same values, and duplicates stop the run with the index named).
//!
//! **Leaves to others:** the column mapping (`plan`), what a refusal looks
//! like (`preflight`), stopping a run that meets bad data later (`copy`,
//! `applier`, `migration`).

use std::collections::BTreeMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::Serialize;
use wraith_backend::ZoneShift;

use crate::checksum::cast_to_new;
use crate::plan::{ColumnChange, TablePlan};
use crate::server::inspect::{ColumnInfo, TableInfo};
use crate::server::{quote_ident, Context, DbError, Flavor};

mod column;

use self::column::column_checks;

/// How long one data check may run before it is cut short.
pub const CHECK_BUDGET: Duration = Duration::from_secs(5);

/// One thing found in the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The column or index concerned.
    pub subject: String,
    /// What was seen, with an example key.
    pub detail: String,
    /// What to do about it.
    pub fix: String,
}

/// What the bounded look at the data found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataFindings {
    /// The server's time zone the conversions use, when any column needs one.
    pub time_zone: Option<String>,
    /// Values the new definition cannot hold: the run is refused.
    pub refusals: Vec<Finding>,
    /// Conversions that change values rather than refuse them, one per
    /// column (whether or not a changed value was found).
    pub lossy: Vec<Finding>,
    /// Whether a value that changes was found (or the search was cut short).
    pub lossy_found: bool,
    /// Checks stopped by their time budget, for the plan.
    pub cut_short: Vec<String>,
}

/// Judges the data of `old` under the plan (new table `new`), fills
/// `plan.zone_shifts` and `plan.data`. Reads only; every query is bounded.
pub async fn check(
    conn: &mut Conn,
    flavor: Flavor,
    old: &TableInfo,
    new: &TableInfo,
    plan: &mut TablePlan,
) -> Result<(), DbError> {
    let zone = server_zone(conn).await?;
    let mut findings = DataFindings::default();
    let mut shifts = BTreeMap::new();
    let mut pairs: Vec<(ColumnInfo, ColumnInfo, bool)> = Vec::new();
    for change in &plan.columns {
        let Some((from, to)) = change.copied() else {
            continue;
        };
        let (Some(oc), Some(nc)) = (old.column(from), new.column(to)) else {
            continue;
        };
        let changed = matches!(
            change,
            ColumnChange::TypeChanged { .. } | ColumnChange::RenamedTypeChanged { .. }
        );
        if changed {
            if let Some(shift) = zone_shift(oc, nc, &zone, &mut findings) {
                shifts.insert(nc.name.to_ascii_lowercase(), shift);
            }
        }
        pairs.push((oc.clone(), nc.clone(), changed));
    }
    if !shifts.is_empty() {
        findings.time_zone = Some(zone.name.clone());
    }
    plan.zone_shifts = shifts;
    let key = example_key(&plan.chunk_key);
    let table = format!("{}.{}", quote_ident(&old.schema), quote_ident(&old.name));
    let checker = Checker {
        flavor,
        table: &table,
        key: &key,
        name: &old.name,
    };

    // Values that cannot be stored: one scan for all of them.
    let mut refusals: Vec<RowCheck> = Vec::new();
    let mut lossy: Vec<RowCheck> = Vec::new();
    for (oc, nc, changed) in &pairs {
        let shift = plan.zone_shift(&nc.name);
        column_checks(oc, nc, *changed, shift.as_ref(), &mut refusals, &mut lossy);
    }
    checker
        .row_checks(
            conn,
            &refusals,
            "values the new definition cannot hold",
            &mut findings,
            false,
        )
        .await?;
    findings.lossy = lossy
        .iter()
        .map(|c| Finding {
            subject: c.subject.clone(),
            detail: c.detail.clone(),
            fix: c.fix.clone(),
        })
        .collect();
    checker
        .row_checks(conn, &lossy, "values that will change", &mut findings, true)
        .await?;

    // Unique keys over values that become duplicates.
    for index in new.indexes.iter().filter(|i| i.unique) {
        if let Some(sql) = duplicate_query(old, new, plan, index, &key) {
            checker
                .duplicates(conn, &sql, &index.name, &mut findings)
                .await?;
        }
    }
    plan.data = findings;
    Ok(())
}

/// The server's time zone for conversions.
pub struct ServerZone {
    /// What `CONVERT_TZ` is given: `@@global.time_zone` (`SYSTEM` included).
    pub name: String,
    /// Whether it is UTC, so no conversion is needed.
    pub utc: bool,
}

/// Reads `@@global.time_zone` (and `@@system_time_zone` for `SYSTEM`).
pub async fn server_zone(conn: &mut Conn) -> Result<ServerZone, DbError> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .query_first("SELECT @@global.time_zone, @@system_time_zone")
        .await
        .context(|| "reading the server's time zone".into())?;
    let (global, system) = row.unwrap_or_default();
    let name = global.unwrap_or_else(|| "SYSTEM".into());
    let utc = is_utc(&name, system.as_deref());
    Ok(ServerZone { name, utc })
}

fn is_utc(zone: &str, system: Option<&str>) -> bool {
    let utc_name = |z: &str| {
        matches!(
            z.to_ascii_uppercase().as_str(),
            "UTC"
                | "ETC/UTC"
                | "GMT"
                | "ETC/GMT"
                | "UNIVERSAL"
                | "ZULU"
                | "COORDINATED UNIVERSAL TIME"
        )
    };
    if zone.eq_ignore_ascii_case("SYSTEM") {
        return system.is_some_and(utc_name);
    }
    if utc_name(zone) {
        return true;
    }
    // `+00:00`, `-0:00`, ...
    let body = zone.trim_start_matches(['+', '-']);
    !body.is_empty() && body.chars().all(|c| c == '0' || c == ':') && body.contains(':')
}

/// The conversion a type change needs in the server's zone; a conversion
/// that cannot be reproduced exactly is a refusal.
fn zone_shift(
    oc: &ColumnInfo,
    nc: &ColumnInfo,
    zone: &ServerZone,
    findings: &mut DataFindings,
) -> Option<ZoneShift> {
    let from_ts = oc.data_type == "timestamp";
    let to_ts = nc.data_type == "timestamp";
    if from_ts == to_ts || zone.utc {
        return None;
    }
    if from_ts {
        return Some(ZoneShift::ToLocal(zone.name.clone()));
    }
    if matches!(oc.data_type.as_str(), "date" | "datetime") {
        return Some(ZoneShift::ToUtc(zone.name.clone()));
    }
    findings.refusals.push(Finding {
        subject: format!("column {}", nc.name),
        detail: format!(
            "{} {} becomes TIMESTAMP on a server whose time_zone is {}: the server's own ALTER \
             reads each value as a local time of that zone, which wraith cannot reproduce exactly \
             from a {}",
            oc.name, oc.column_type, zone.name, oc.data_type
        ),
        fix: format!(
            "convert in two steps: first `MODIFY {} DATETIME(6)` (no time zone involved), then \
             `MODIFY {} TIMESTAMP…` (converted in the server's zone), or set the server's \
             time_zone to '+00:00'",
            quote_ident(&nc.name),
            quote_ident(&nc.name)
        ),
    });
    None
}

/// One predicate over a source row.
struct RowCheck {
    subject: String,
    /// SQL condition, true for an offending row.
    predicate: String,
    detail: String,
    fix: String,
}

fn int_range(data_type: &str, unsigned: bool) -> Option<(i128, i128)> {
    let bits = match data_type {
        "tinyint" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" | "integer" => 32,
        "bigint" => 64,
        _ => return None,
    };
    Some(if unsigned {
        (0, (1i128 << bits) - 1)
    } else {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    })
}

/// The numbers in `type(a,b)`.
fn type_args(column_type: &str) -> Vec<u64> {
    column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(args, _)| {
            args.split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_numeric(data_type: &str) -> bool {
    matches!(
        data_type,
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "integer"
            | "bigint"
            | "decimal"
            | "numeric"
            | "float"
            | "double"
            | "real"
            | "bit"
            | "year"
    )
}

fn is_exact_int(data_type: &str) -> bool {
    int_range(data_type, false).is_some() || matches!(data_type, "bit" | "year")
}

fn is_text(data_type: &str) -> bool {
    matches!(
        data_type,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
    )
}

fn is_binary(data_type: &str) -> bool {
    matches!(
        data_type,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
    )
}

fn fsp_of(c: &ColumnInfo) -> u32 {
    if matches!(c.data_type.as_str(), "datetime" | "timestamp" | "time") {
        type_args(&c.column_type).first().copied().unwrap_or(0) as u32
    } else {
        0
    }
}

/// `CONCAT_WS(', ', key…)` over the source's chunk key, as text.
fn example_key(key: &[String]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|k| format!("IFNULL(CAST({} AS CHAR), 'NULL')", quote_ident(k)))
        .collect();
    format!("CONCAT_WS(', ', {})", parts.join(", "))
}

/// The `GROUP BY … HAVING COUNT(*) > 1` query for a unique key of the new
/// table, or `None` when the source guarantees it already (or it cannot be
/// judged here: a prefix, or a column the copy does not fill).
fn duplicate_query(
    old: &TableInfo,
    new: &TableInfo,
    plan: &TablePlan,
    index: &crate::server::inspect::IndexInfo,
    key: &str,
) -> Option<String> {
    if index.has_prefix {
        return None;
    }
    let mut exprs = Vec::new();
    let mut conds = Vec::new();
    let mut old_cols = Vec::new();
    let mut any_changed = false;
    for c in &index.columns {
        let change = plan.columns.iter().find(|ch| {
            ch.copied()
                .is_some_and(|(_, to)| to.eq_ignore_ascii_case(c))
        })?;
        let (from, to) = change.copied()?;
        let (oc, nc) = (old.column(from)?, new.column(to)?);
        let changed = matches!(
            change,
            ColumnChange::TypeChanged { .. } | ColumnChange::RenamedTypeChanged { .. }
        );
        any_changed |= changed;
        let value = if changed {
            cast_to_new(oc, nc, plan.zone_shift(to).as_ref())
        } else {
            quote_ident(&oc.name)
        };
        // Grouped as the new index compares: in the new collation.
        let value = match (&nc.collation, &nc.charset) {
            (Some(coll), Some(cs)) if is_text(&nc.data_type) => {
                format!("CONVERT({value} USING {cs}) COLLATE {coll}")
            }
            _ => value,
        };
        conds.push(format!("{value} IS NOT NULL"));
        exprs.push(value);
        old_cols.push(oc.name.to_ascii_lowercase());
    }
    let guaranteed = !any_changed
        && old.indexes.iter().any(|o| {
            o.unique
                && !o.has_prefix
                && o.columns.len() == old_cols.len()
                && o.columns
                    .iter()
                    .all(|c| old_cols.contains(&c.to_ascii_lowercase()))
        });
    if guaranteed {
        return None;
    }
    let shown: Vec<String> = exprs
        .iter()
        .map(|e| format!("IFNULL(CAST({e} AS CHAR), 'NULL')"))
        .collect();
    Some(format!(
        "SELECT CONCAT_WS(', ', {}), COUNT(*), \
         SUBSTRING_INDEX(GROUP_CONCAT(CONCAT('(', {key}, ')') SEPARATOR ' and '), ' and ', 2) \
         FROM {}.{} WHERE {} GROUP BY {} HAVING COUNT(*) > 1 LIMIT 1",
        shown.join(", "),
        quote_ident(&old.schema),
        quote_ident(&old.name),
        conds.join(" AND "),
        exprs.join(", ")
    ))
}

struct Checker<'a> {
    flavor: Flavor,
    table: &'a str,
    key: &'a str,
    name: &'a str,
}

/// A bounded query's rows, or `None` when its time budget ran out.
type Bounded = Option<Vec<Vec<Option<Vec<u8>>>>>;

impl Checker<'_> {
    /// Runs `select` (a SELECT) in a UTC session with the time budget.
    async fn bounded(&self, conn: &mut Conn, select: &str) -> Result<Bounded, DbError> {
        let secs = CHECK_BUDGET.as_secs().max(1);
        let sql = if self.flavor.is_mariadb() {
            format!("SET STATEMENT max_statement_time = {secs}, time_zone = '+00:00' FOR {select}")
        } else {
            let rest = select.strip_prefix("SELECT ").unwrap_or(select);
            format!(
                "SELECT /*+ MAX_EXECUTION_TIME({}) SET_VAR(time_zone = '+00:00') */ {rest}",
                secs * 1000
            )
        };
        match conn.query::<mysql_async::Row, _>(sql).await {
            Ok(rows) => Ok(Some(
                rows.into_iter()
                    .map(|mut r| {
                        (0..r.len())
                            .map(|i| {
                                r.take_opt::<Option<Vec<u8>>, _>(i)
                                    .and_then(Result::ok)
                                    .flatten()
                            })
                            .collect()
                    })
                    .collect(),
            )),
            // max_statement_time (MariaDB), MAX_EXECUTION_TIME (MySQL).
            Err(mysql_async::Error::Server(e)) if matches!(e.code, 1969 | 3024 | 1317) => Ok(None),
            Err(e) => Err(DbError {
                context: format!("checking the data of {}", self.name),
                error: e,
            }),
        }
    }

    /// One scan for all `checks`: the first offending row names every check
    /// it fails, with its key.
    async fn row_checks(
        &self,
        conn: &mut Conn,
        checks: &[RowCheck],
        what: &str,
        findings: &mut DataFindings,
        lossy: bool,
    ) -> Result<(), DbError> {
        if checks.is_empty() {
            return Ok(());
        }
        let flags: Vec<String> = checks
            .iter()
            .map(|c| format!("IFNULL(({}), 0)", c.predicate))
            .collect();
        let any: Vec<String> = checks
            .iter()
            .map(|c| format!("({})", c.predicate))
            .collect();
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} LIMIT 1",
            self.key,
            flags.join(", "),
            self.table,
            any.join(" OR ")
        );
        let Some(rows) = self.bounded(conn, &sql).await? else {
            findings.cut_short.push(format!(
                "the search for {what} in {} was cut short after {}s; the copy refuses what it did not reach",
                self.name,
                CHECK_BUDGET.as_secs()
            ));
            if lossy {
                findings.lossy_found = true;
            }
            return Ok(());
        };
        let Some(row) = rows.into_iter().next() else {
            return Ok(());
        };
        let key = text(row.first().cloned().flatten());
        for (c, flag) in checks.iter().zip(row.iter().skip(1)) {
            if text(flag.clone()) != "1" {
                continue;
            }
            let found = Finding {
                subject: c.subject.clone(),
                detail: format!("{}, e.g. the row with key ({key})", c.detail),
                fix: c.fix.clone(),
            };
            if lossy {
                findings.lossy_found = true;
                if let Some(f) = findings.lossy.iter_mut().find(|f| f.detail == c.detail) {
                    *f = found;
                }
            } else {
                findings.refusals.push(found);
            }
        }
        Ok(())
    }

    async fn duplicates(
        &self,
        conn: &mut Conn,
        sql: &str,
        index: &str,
        findings: &mut DataFindings,
    ) -> Result<(), DbError> {
        let Some(rows) = self.bounded(conn, sql).await? else {
            findings.cut_short.push(format!(
                "the search for duplicates under the unique key {index} of {} was cut short after {}s; \
                 the copy stops at the first duplicate it meets",
                self.name,
                CHECK_BUDGET.as_secs()
            ));
            return Ok(());
        };
        if let Some(row) = rows.into_iter().next() {
            let value = text(row.first().cloned().flatten());
            let count = text(row.get(1).cloned().flatten());
            let keys = text(row.get(2).cloned().flatten());
            findings.refusals.push(Finding {
                subject: format!("unique key {index}"),
                detail: format!(
                    "after the ALTER, {count} rows share the value ({value}) of the unique key {index}, e.g. the rows with keys {keys}"
                ),
                fix: format!(
                    "remove the duplicates first, or make {} non-unique in the ALTER",
                    quote_ident(index)
                ),
            });
        }
        Ok(())
    }
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| "NULL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_zones() {
        assert!(is_utc("+00:00", None));
        assert!(is_utc("-0:00", None));
        assert!(is_utc("UTC", None));
        assert!(is_utc("SYSTEM", Some("UTC")));
        assert!(!is_utc("SYSTEM", Some("CET")));
        assert!(!is_utc("+05:00", None));
        assert!(!is_utc("Europe/Paris", None));
        assert!(!is_utc("+00:30", None));
    }

    #[test]
    fn reads_type_arguments() {
        assert_eq!(type_args("decimal(10,2)"), vec![10, 2]);
        assert_eq!(type_args("varchar(30)"), vec![30]);
        assert_eq!(type_args("int unsigned"), Vec::<u64>::new());
        assert_eq!(int_range("tinyint", true), Some((0, 255)));
        assert_eq!(int_range("smallint", false), Some((-32768, 32767)));
    }
}
