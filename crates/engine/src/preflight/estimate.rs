//! # The plan's prediction: how long the run takes and what disk it needs
//!
//! `wraith check` answers "can this run?"; an operator planning a
//! maintenance window also asks "for how long, and will the disk hold?"
//! (gh-ost and Spirit users ask after filling a disk). A constant rate would
//! be wrong on every machine but one, so the time comes from a short sample
//! measured on this server, through the path the run takes:
//!
//! - **copy**: a throwaway table with the new definition (`_t_chk`, the
//!   name the ALTER check uses, marked so a killed check's leftover is
//!   dropped by the next one) is filled for about [`SAMPLE_BUDGET`] by
//!   `threads` workers taking chunks from the run's own [`Chunker`] (same
//!   chunk target and first chunk size) and copying each with the run's
//!   `INSERT … SELECT`. Deferred indexes are left out, as on the shadow.
//!   The `local` backend's sort and import are not sampled: its rate is
//!   taken as half the server-side one (the plan's own measurement) and the
//!   report says so.
//! - **index build**: the deferred indexes are added to the sample (one
//!   ALTER, as the run does), and the same ALTER on the empty table first
//!   gives its fixed cost; the rest is per row, with the sort's `log n`.
//! - **checksum**: the run's checksum query (CRC32 aggregate of every copied
//!   column) on the sampled range of the source and on the sample, at once
//!   as the run does.
//! - **cut-over and the other DDL**: a few times the measured cost of making
//!   the throwaway (CREATE LIKE + ALTER).
//!
//! The row count is `TABLE_ROWS` unless a single integer key lets the sample's
//! key density times the key span do better. The sample starts at the
//! table's first key (where the copy starts); a table whose rows differ much
//! along the key is estimated from its first part.
//!
//! The disk: the shadow is the source's data scaled by the sample's row
//! bytes new/old (a rebuilt table is never less full than its source, so
//! this leans to the safe side), plus its secondary indexes; the `local`
//! backend's sort directory holds at most two engines at a time; the binlog
//! the copy writes is the new row image per row. They are set against the
//! free space seen: `information_schema.DISKS` when the server has the
//! plugin, else `statvfs(@@datadir)` when the server runs on this host,
//! else "unknown"; the sort directory's file system by `statvfs`.
//!
//! Gentle: the sample stops at its budget, stops at once when the throttle
//! would pause the copy (flag file, `max_load`), writes its rows with
//! `sql_log_bin = 0` when the user may (else the report says the replicas
//! apply them), and drops the throwaway whatever happens.
//!
//! Errors: a failed query ends the estimate with a warning; the check's
//! verdict never depends on the estimate except for the disk (a run that
//! cannot fit fails, one within 20% of the free space warns).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;
use tokio::sync::Mutex;
use wraith_backend::write::{prepare_session_with, SessionOptions};

use super::{check_table_name, Report, CHECK_TABLE_MARK};
use crate::chunker::{int_span, Chunker, KeySql};
use crate::config::{BackendKind, ByteSize, Config};
use crate::plan::TablePlan;
use crate::server::inspect::{inspect_table, table_exists, ColumnInfo, TableInfo};
use crate::server::{quote_ident, quote_str, Context, DbError};

/// How long the copy sample runs at most.
pub const SAMPLE_BUDGET: Duration = Duration::from_millis(1500);

/// Sample rows from which the throwaway's own size per row is taken for the shadow.
const MEASURED_SIZE_ROWS: u64 = 20_000;

/// What the sample measured on this server.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Rows copied into the throwaway table.
    pub rows: u64,
    pub secs: f64,
    pub rows_per_sec: f64,
    pub workers: usize,
    /// Seconds of the deferred indexes' ALTER on the empty table and on the sample.
    pub index_fixed_secs: f64,
    pub index_sample_secs: f64,
    pub checksum_rows_per_sec: f64,
    /// Average row image in bytes (values as the binlog writes them), source and new.
    pub old_row_bytes: f64,
    pub new_row_bytes: f64,
    /// Seconds to make the throwaway (CREATE LIKE + ALTER): the DDL's cost here.
    pub ddl_secs: f64,
    /// Whether the sample's rows went to the binlog (no privilege for `sql_log_bin`).
    pub binlogged: bool,
    /// Why the sample stopped before its budget, if it did.
    pub cut_short: Option<String>,
}

/// The prediction for one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableEstimate {
    pub table: String,
    pub backend: BackendKind,
    pub rows: u64,
    /// Where `rows` comes from.
    pub rows_basis: String,
    pub sample: Sample,
    pub copy_secs: f64,
    pub index_secs: f64,
    pub checksum_secs: f64,
    /// Creating the shadow, analyzing it, the cut-over and the cleanup.
    pub cutover_secs: f64,
    pub total_secs: f64,
    /// The shadow table when copied and indexed (data + indexes).
    pub shadow_bytes: u64,
    /// Peak size of the `local` backend's engines (0 for `sql`).
    pub sort_dir_bytes: u64,
    /// Binlog the copy writes (row images of the copied rows).
    pub binlog_bytes: u64,
}

/// Space needed on one file system, and what is free there.
#[derive(Debug, Clone, Serialize)]
pub struct Space {
    pub what: String,
    pub path: String,
    pub needed: u64,
    /// `None`: not visible from here.
    pub free: Option<u64>,
    /// How `free` was read.
    pub seen_by: String,
}

/// The prediction for the job (filled by [`estimate`]).
#[derive(Debug, Clone, Serialize, Default)]
pub struct JobEstimate {
    pub tables: Vec<TableEstimate>,
    /// Tables run one after another's copy share the threads: the sum.
    pub total_secs: f64,
    pub binlog_bytes: u64,
    pub spaces: Vec<Space>,
    /// `binlog_expire_logs_seconds` (or `expire_logs_days`); `None` or 0: kept for ever.
    pub binlog_retention_secs: Option<u64>,
    /// Why a table was not estimated.
    pub skipped: Vec<String>,
}

impl JobEstimate {
    /// The human lines of the estimate.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let s = &t.sample;
            out.push_str(&format!(
                "\nestimate for {}:\n  estimated time: copy ~{}, indexes ~{}, checksum ~{}, cut-over ~{}, total ~{} \
                 (measured sample: {} rows at {:.0} rows/s on {} thread(s); {} rows by {})\n",
                t.table,
                secs(t.copy_secs),
                secs(t.index_secs),
                secs(t.checksum_secs),
                secs(t.cutover_secs),
                secs(t.total_secs),
                s.rows,
                s.rows_per_sec,
                s.workers,
                t.rows,
                t.rows_basis
            ));
            out.push_str(&format!(
                "  estimated disk: shadow table {}, binlog {}{} (rows of {:.0} bytes, {:.0} before the ALTER)\n",
                ByteSize(t.shadow_bytes),
                ByteSize(t.binlog_bytes),
                if t.sort_dir_bytes > 0 {
                    format!(", sort directory {}", ByteSize(t.sort_dir_bytes))
                } else {
                    String::new()
                },
                s.new_row_bytes,
                s.old_row_bytes
            ));
            if t.backend == BackendKind::Local {
                out.push_str("  the local backend's sort and import were not sampled: its copy is estimated at half the measured server-side rate\n");
            }
            if s.binlogged {
                out.push_str("  the sample's rows were written to the binlog (no privilege to SET sql_log_bin = 0); replicas applied and dropped them\n");
            }
            if let Some(why) = &s.cut_short {
                out.push_str(&format!("  sample cut short: {why}\n"));
            }
        }
        for skipped in &self.skipped {
            out.push_str(&format!("\nno estimate: {skipped}\n"));
        }
        if self.tables.len() > 1 {
            out.push_str(&format!("\nestimated total: ~{}\n", secs(self.total_secs)));
        }
        for s in &self.spaces {
            out.push_str(&format!(
                "  disk {}: needs {} on {} ({})\n",
                s.what,
                ByteSize(s.needed),
                s.path,
                match s.free {
                    Some(free) => format!("{} free, seen by {}", ByteSize(free), s.seen_by),
                    None => format!("free space on the server: unknown ({})", s.seen_by),
                }
            ));
        }
        out
    }
}

/// `~12s`, `~3m 20s`, `~2h 5m`.
pub fn secs(s: f64) -> String {
    let s = s.max(0.0);
    if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{}m {}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h {}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// The stage times of one table from the sample's rates (pure arithmetic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageTimes {
    pub copy: f64,
    pub index: f64,
    pub checksum: f64,
    pub cutover: f64,
}

impl StageTimes {
    pub fn total(&self) -> f64 {
        self.copy + self.index + self.checksum + self.cutover
    }
}

/// Extrapolates the sample to `rows`. The index build's per-row cost grows
/// with the sort's `log n`; the DDL stages (create, analyze, cut-over,
/// cleanup) cost a few throwaway DDLs.
pub fn stage_times(rows: u64, s: &Sample, backend: BackendKind, deferred: bool) -> StageTimes {
    let rows_f = rows as f64;
    let mut copy_rate = s.rows_per_sec.max(1.0);
    if backend == BackendKind::Local {
        copy_rate /= 2.0;
    }
    let copy = rows_f / copy_rate;
    let index = if deferred && s.rows > 0 {
        let per_row = (s.index_sample_secs - s.index_fixed_secs).max(0.0) / s.rows as f64;
        let sort_growth = if rows > s.rows && s.rows > 1 {
            rows_f.log2() / (s.rows as f64).log2()
        } else {
            1.0
        };
        s.index_fixed_secs + per_row * rows_f * sort_growth
    } else {
        0.0
    };
    let checksum = rows_f / s.checksum_rows_per_sec.max(1.0);
    // create + ALTER of the shadow, ANALYZE, the RENAME and the drops after it.
    let cutover = 4.0 * s.ddl_secs + 0.5;
    StageTimes {
        copy,
        index,
        checksum,
        cutover,
    }
}

/// Disk of one table from the source's sizes and the sample (pure arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskNeeds {
    pub shadow: u64,
    pub sort_dir: u64,
    pub binlog: u64,
}

/// Source data and index lengths, the row counts and the sample's row
/// bytes. The shadow: the sample's own bytes per row (data, indexes) when
/// it is large enough to measure (`sample_per_row`: built as the shadow is,
/// rows in key order then the deferred indexes by one ALTER); else the
/// source's data scaled by new/old row bytes with its secondary indexes in
/// proportion (`sample_index_per_row` when the source had none). The binlog is the new row image per row plus the
/// event's per-row bytes; the local engines hold at most two of
/// `engine_size` (one filling, one importing).
#[allow(clippy::too_many_arguments)]
pub fn disk_needs(
    rows: u64,
    data_length: u64,
    index_length: u64,
    old_secondary: usize,
    new_secondary: usize,
    sample_index_per_row: f64,
    sample_per_row: Option<(f64, f64)>,
    s: &Sample,
    backend: BackendKind,
    engine_size: u64,
) -> DiskNeeds {
    let ratio = if s.old_row_bytes > 0.0 {
        (s.new_row_bytes / s.old_row_bytes).max(0.05)
    } else {
        1.0
    };
    let data = data_length as f64 * ratio;
    let index = if old_secondary > 0 {
        index_length as f64 * new_secondary as f64 / old_secondary as f64
    } else {
        sample_index_per_row * rows as f64
    };
    let (data, index) = match sample_per_row {
        Some((d, i)) => (d * rows as f64, i * rows as f64),
        None => (data, index),
    };
    // ROW events: the row image and ~2 bytes of per-row framing; the events'
    // headers are ~1% at 8 KiB per event.
    let binlog = rows as f64 * (s.new_row_bytes + 2.0) * 1.01;
    let sort_dir = if backend == BackendKind::Local {
        // RocksDB: key + row (no credit taken for compression), 20% for its files.
        let total = rows as f64 * (s.new_row_bytes + 24.0) * 1.2;
        total.min(2.0 * engine_size as f64)
    } else {
        0.0
    };
    DiskNeeds {
        shadow: (data + index) as u64,
        sort_dir: sort_dir as u64,
        binlog: binlog as u64,
    }
}

/// The verdict on one file system: fail when the need exceeds the free
/// space, warn within 20% of it.
pub fn judge_space(needed: u64, free: Option<u64>) -> Option<bool> {
    let free = free?;
    if needed > free {
        Some(false)
    } else if needed as f64 > free as f64 * 0.8 {
        Some(true)
    } else {
        None
    }
}

/// SQL for the bytes one column's value takes in a ROW event (NULL: 0).
pub fn value_bytes_sql(c: &ColumnInfo) -> String {
    let q = quote_ident(&c.name);
    let t = c.column_type.to_ascii_lowercase();
    let fsp = || -> u64 {
        t.split_once('(')
            .and_then(|(_, r)| r.split(')').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .map(|n| n.div_ceil(2))
            .unwrap_or(0)
    };
    let fixed: Option<u64> = match c.data_type.as_str() {
        "tinyint" | "year" => Some(1),
        "smallint" => Some(2),
        "mediumint" | "date" => Some(3),
        "int" | "integer" | "float" => Some(4),
        "bigint" | "double" | "real" => Some(8),
        "time" => Some(3 + fsp()),
        "datetime" => Some(5 + fsp()),
        "timestamp" => Some(4 + fsp()),
        "enum" => Some(2),
        "set" | "bit" => Some(8),
        "decimal" | "numeric" => {
            let (p, s) = t
                .split_once('(')
                .and_then(|(_, r)| r.split(')').next())
                .map(|inner| {
                    let mut it = inner
                        .split(',')
                        .map(|x| x.trim().parse::<u64>().unwrap_or(0));
                    (it.next().unwrap_or(10), it.next().unwrap_or(0))
                })
                .unwrap_or((10, 0));
            Some(decimal_bytes(p.saturating_sub(s)) + decimal_bytes(s))
        }
        _ => None,
    };
    match fixed {
        Some(n) => format!("IF({q} IS NULL, 0, {n})"),
        // Strings, blobs, JSON, spatial and the rest: the bytes and their length.
        None => format!("IFNULL(OCTET_LENGTH({q}) + IF(OCTET_LENGTH({q}) < 256, 1, 2), 0)"),
    }
}

/// Bytes of a packed DECIMAL part of `digits` digits (9 digits in 4 bytes).
fn decimal_bytes(digits: u64) -> u64 {
    const REST: [u64; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    (digits / 9) * 4 + REST[(digits % 9) as usize]
}

/// The average row image of `columns` over `from WHERE cond`, in bytes.
async fn row_bytes(
    conn: &mut Conn,
    columns: &[&ColumnInfo],
    from: &str,
    cond: &str,
) -> Result<f64, DbError> {
    if columns.is_empty() {
        return Ok(0.0);
    }
    let sum: Vec<String> = columns.iter().map(|c| value_bytes_sql(c)).collect();
    let bitmap = columns.len().div_ceil(8);
    let avg: Option<Option<f64>> = conn
        .query_first(format!(
            "SELECT CAST(AVG({}) AS DOUBLE) FROM {from} WHERE {cond}",
            sum.join(" + ")
        ))
        .await
        .context(|| format!("measuring the row size of {from}"))?;
    Ok(avg.flatten().unwrap_or(0.0) + bitmap as f64)
}

/// Estimates every planned table and the job, and judges the disk. Runs
/// after the checks passed; writes into `report.estimate`.
pub(super) async fn estimate(pool: &Pool, config: &Config, report: &mut Report) {
    let mut job = JobEstimate::default();
    let plans = report.plans.clone();
    for plan in &plans {
        let Some(table) = config.tables.iter().find(|t| t.name == plan.table) else {
            continue;
        };
        let schema = config.schema_of(table);
        match estimate_table(pool, config, schema, plan).await {
            Ok(Ok(t)) => job.tables.push(t),
            Ok(Err(why)) => job.skipped.push(format!("{}: {why}", plan.table)),
            Err(e) => {
                report.warn(
                    &format!("estimate {}", plan.table),
                    format!("the sample could not be measured: {e}"),
                    "nothing to do for the run; the estimate is missing",
                );
            }
        }
    }
    job.total_secs = job.tables.iter().map(|t| t.total_secs).sum();
    job.binlog_bytes = job.tables.iter().map(|t| t.binlog_bytes).sum();
    if let Err(e) = spaces_and_retention(pool, config, &mut job).await {
        tracing::info!(error = %e, "free space or binlog retention not readable");
    }
    judge(&job, report);
    report.estimate = Some(job);
}

/// The failed and warned checks of the estimate: disk and retention.
fn judge(job: &JobEstimate, report: &mut Report) {
    for s in &job.spaces {
        let name = format!("disk {}", s.what);
        match (judge_space(s.needed, s.free), s.free) {
            (Some(false), Some(free)) => report.fail(
                &name,
                format!(
                    "the run needs about {} on {} and {} is free",
                    ByteSize(s.needed),
                    s.path,
                    ByteSize(free)
                ),
                format!(
                    "free at least {} there (or move it: [local] sort_dir for the sort directory)",
                    ByteSize(s.needed.saturating_sub(free))
                ),
            ),
            (Some(true), Some(free)) => report.warn(
                &name,
                format!(
                    "the run needs about {} on {}; {} is free, within 20% of it",
                    ByteSize(s.needed),
                    s.path,
                    ByteSize(free)
                ),
                "free space there before the run, or watch it",
            ),
            (_, Some(free)) => report.ok(
                &name,
                format!(
                    "needs ~{} on {}, {} free",
                    ByteSize(s.needed),
                    s.path,
                    ByteSize(free)
                ),
            ),
            (_, None) => report.ok(
                &name,
                format!(
                    "needs ~{} on {}; free space: unknown ({})",
                    ByteSize(s.needed),
                    s.path,
                    s.seen_by
                ),
            ),
        }
    }
    if let Some(retention) = job.binlog_retention_secs.filter(|r| *r > 0) {
        if job.total_secs > retention as f64 * 0.5 {
            report.warn(
                "binlog retention",
                format!(
                    "the run is estimated at ~{} and the server keeps binlogs {}: a run stopped (or killed) \
                     after its first binlog is purged cannot resume from its checkpoint, which replays the \
                     change stream from the run's start (the local change store holds only the buffered changes), \
                     and must start over with --fresh",
                    secs(job.total_secs),
                    secs(retention as f64)
                ),
                format!(
                    "SET GLOBAL binlog_expire_logs_seconds = {} (and the same in my.cnf) for the run",
                    (job.total_secs * 3.0).ceil() as u64 + 3600
                ),
            );
        } else {
            report.ok(
                "binlog retention",
                format!(
                    "binlogs kept {}, the run ~{}",
                    secs(retention as f64),
                    secs(job.total_secs)
                ),
            );
        }
    }
}

/// The throttle's verdict now: a flag file, or a `max_load` variable over
/// its limit (replica lag needs the run's heartbeat and is not looked at).
async fn throttled(conn: &mut Conn, config: &Config) -> Result<Option<String>, DbError> {
    if let Some(f) = config.throttle.flag_file.0.iter().find(|f| f.exists()) {
        return Ok(Some(format!("throttle flag file {} exists", f.display())));
    }
    for (name, limit) in config.throttle.load_limits() {
        let row: Option<(String, String)> = conn
            .query_first(format!("SHOW GLOBAL STATUS LIKE {}", quote_str(&name)))
            .await
            .context(|| format!("reading {name}"))?;
        if let Some(v) = row.and_then(|(_, v)| v.trim().parse::<f64>().ok()) {
            if v > limit as f64 {
                return Ok(Some(format!("{name}={v} > {limit} ([throttle] max_load)")));
            }
        }
    }
    Ok(None)
}

/// One table: the throwaway made, sampled, measured and dropped.
async fn estimate_table(
    pool: &Pool,
    config: &Config,
    schema: &str,
    plan: &TablePlan,
) -> Result<Result<TableEstimate, String>, DbError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting for the estimate".into())?;
    let old = inspect_table(&mut conn, schema, &plan.table).await?;
    let Some(table) = config.tables.iter().find(|t| t.name == plan.table) else {
        return Ok(Err("not in the config".into()));
    };
    let check = check_table_name(&old.name);
    let qcheck = format!("{}.{}", quote_ident(schema), quote_ident(&check));
    if table_exists(&mut conn, schema, &check).await?
        && !super::table::leftover_check_table(&mut conn, &old, &check).await?
    {
        return Ok(Err(format!(
            "a table {check} exists and is not wraith's throwaway; drop or rename it"
        )));
    }
    conn.query_drop(format!("DROP TABLE IF EXISTS {qcheck}"))
        .await
        .context(|| format!("dropping {check}"))?;
    let made = Instant::now();
    let result = async {
        conn.query_drop(format!(
            "CREATE TABLE {qcheck} LIKE {}.{}",
            quote_ident(schema),
            quote_ident(&old.name)
        ))
        .await
        .context(|| format!("creating the sample table {check}"))?;
        let mark = format!("ALTER TABLE {qcheck} COMMENT = '{CHECK_TABLE_MARK}'");
        conn.query_drop(&mark)
            .await
            .context(|| format!("marking {check}"))?;
        conn.query_drop(format!("ALTER TABLE {qcheck} {}", table.alter))
            .await
            .context(|| format!("applying the ALTER to {check}"))?;
        // As on the shadow: the sample's rows get the implicit values.
        crate::implicit::hold(&mut conn, schema, &check, &plan.implicit_values).await?;
        // The ALTER may set a comment of its own: mark it again.
        conn.query_drop(&mark)
            .await
            .context(|| format!("marking {check}"))?;
        let ddl_secs = made.elapsed().as_secs_f64() / 2.0;
        sample_table(
            pool, &mut conn, config, schema, &old, plan, &check, ddl_secs,
        )
        .await
    }
    .await;
    let dropped = conn
        .query_drop(format!("DROP TABLE IF EXISTS {qcheck}"))
        .await
        .context(|| format!("dropping the sample table {check}"));
    let estimate = result?;
    dropped?;
    Ok(Ok(estimate))
}

/// The measurements on the throwaway `check` (which has the new definition).
#[allow(clippy::too_many_arguments)]
async fn sample_table(
    pool: &Pool,
    conn: &mut Conn,
    config: &Config,
    schema: &str,
    old: &TableInfo,
    plan: &TablePlan,
    check: &str,
    ddl_secs: f64,
) -> Result<TableEstimate, DbError> {
    let qcheck = format!("{}.{}", quote_ident(schema), quote_ident(check));
    let qsource = format!("{}.{}", quote_ident(schema), quote_ident(&old.name));
    // The deferred indexes: their ALTER on the empty table is its fixed cost.
    let deferred = !plan.deferred_indexes.is_empty();
    let drop_deferred = format!(
        "ALTER TABLE {qcheck} {}",
        plan.deferred_indexes
            .iter()
            .map(|i| format!("DROP INDEX {}", quote_ident(&i.name)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let add_deferred = format!(
        "ALTER TABLE {qcheck} {}",
        plan.deferred_indexes
            .iter()
            .map(|i| format!("ADD {}", i.definition))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut index_fixed_secs = 0.0;
    if deferred {
        conn.query_drop(&drop_deferred)
            .await
            .context(|| format!("deferring the indexes of {check}"))?;
        let t = Instant::now();
        conn.query_drop(&add_deferred)
            .await
            .context(|| format!("adding the indexes to {check}"))?;
        index_fixed_secs = t.elapsed().as_secs_f64();
        conn.query_drop(&drop_deferred)
            .await
            .context(|| format!("deferring the indexes of {check}"))?;
    }

    let mut layout = crate::shadow::layout(old, plan, schema).map_err(|message| DbError {
        context: message,
        error: mysql_async::Error::Other("layout".into()),
    })?;
    layout.target.table = check.to_string();
    let columns: Vec<String> = layout
        .target_columns
        .iter()
        .map(|c| quote_ident(c))
        .collect();
    let insert = Arc::new(format!(
        "INSERT INTO {qcheck} ({}) SELECT {} FROM {qsource} WHERE ",
        columns.join(", "),
        layout.server_select.join(", ")
    ));
    let key = layout.chunk_key.clone();
    let chunker = Chunker::new(
        conn,
        schema,
        &old.name,
        key.clone(),
        config.copy.chunk_target.0,
        config.copy.initial_chunk_rows,
    )
    .await?;
    let shared = Arc::new(SampleShared {
        chunker: Mutex::new(chunker),
        first_lower: Mutex::new(None),
        last_upper: Mutex::new(None),
        stop: Mutex::new(None),
    });
    let workers = config.copy.threads.max(1);
    let started = Instant::now();
    let deadline = started + SAMPLE_BUDGET;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (pool, shared, insert, key, target) = (
            pool.clone(),
            shared.clone(),
            insert.clone(),
            key.clone(),
            layout.target.clone(),
        );
        let config = config.clone();
        tasks.spawn(async move {
            sample_worker(&pool, &shared, &insert, &key, &target, &config, deadline).await
        });
    }
    let mut rows = 0u64;
    let mut binlogged = false;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((n, logged))) => {
                rows += n;
                binlogged |= logged;
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => {
                first_error = first_error.or(Some(DbError {
                    context: "a sample worker failed".into(),
                    error: mysql_async::Error::Other(e.to_string().into()),
                }))
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let copy_secs = started.elapsed().as_secs_f64().max(0.001);
    let cut_short = shared.stop.lock().await.clone();
    let exhausted = matches!(*shared.last_upper.lock().await, Some(None));

    // The range of the source the sample covered, for the checksum and row sizes.
    let keysql = KeySql { key: &key };
    let upper = shared.last_upper.lock().await.clone().flatten();
    let range = match &upper {
        Some(u) => keysql.less(u, false),
        None => "1=1".into(),
    };

    // Row sizes: source (old columns) over the range, new over the sample.
    let old_cols: Vec<&ColumnInfo> = old.columns.iter().filter(|c| !c.is_generated()).collect();
    let new = inspect_table(conn, schema, check).await?;
    let new_cols: Vec<&ColumnInfo> = new.columns.iter().filter(|c| !c.is_generated()).collect();
    let old_row_bytes = row_bytes(conn, &old_cols, &qsource, &range).await?;
    let new_row_bytes = row_bytes(conn, &new_cols, &qcheck, "1=1").await?;

    // The checksum's query on both sides at once.
    let mut new_named = new.clone();
    new_named.name = check.to_string();
    let checksum_secs = match crate::checksum::sides(old, &new_named, plan) {
        Ok((source, shadow, _)) => {
            let mut sconn = crate::copy::read_conn(pool).await?;
            let mut tconn = crate::copy::read_conn(pool).await?;
            let t = Instant::now();
            let (a, b) = tokio::join!(
                sconn.query_drop(source.aggregate_sql(&range)),
                tconn.query_drop(shadow.aggregate_sql("1=1"))
            );
            a.context(|| "the checksum's query on the source".into())?;
            b.context(|| "the checksum's query on the sample".into())?;
            t.elapsed().as_secs_f64()
        }
        Err(_) => copy_secs,
    };

    // The deferred indexes built on the sample.
    let mut index_sample_secs = index_fixed_secs;
    if deferred && rows > 0 {
        let t = Instant::now();
        conn.query_drop(&add_deferred)
            .await
            .context(|| format!("adding the indexes to {check}"))?;
        index_sample_secs = t.elapsed().as_secs_f64();
    }
    // The sample's own size, as built like the shadow (fresh statistics).
    let (sample_data, sample_index) = if rows > 0 {
        conn.query_drop(format!("ANALYZE TABLE {qcheck}"))
            .await
            .context(|| format!("analyzing {check}"))?;
        table_lengths(conn, schema, check).await?
    } else {
        (0, 0)
    };
    let sample_index_per_row = if rows > 0 {
        sample_index as f64 / rows as f64
    } else {
        0.0
    };
    // Below this many rows the pages a small table reserves outweigh its rows.
    let sample_per_row = (rows >= MEASURED_SIZE_ROWS).then(|| {
        (
            sample_data as f64 / rows as f64,
            sample_index as f64 / rows as f64,
        )
    });

    let sample = Sample {
        rows,
        secs: copy_secs,
        rows_per_sec: rows as f64 / copy_secs,
        workers,
        index_fixed_secs,
        index_sample_secs,
        checksum_rows_per_sec: rows as f64 / checksum_secs.max(0.0001),
        old_row_bytes,
        new_row_bytes,
        ddl_secs,
        binlogged,
        cut_short,
    };
    let (est_rows, rows_basis) = if exhausted {
        (rows, "the sample, which read the whole table".to_string())
    } else {
        match key_span_rows(conn, &qsource, &key, rows, &shared).await? {
            Some(n) => (
                n,
                "the sample's key density over the key's span".to_string(),
            ),
            None => (
                old.estimated_rows,
                "information_schema TABLE_ROWS (approximate)".to_string(),
            ),
        }
    };
    let times = stage_times(est_rows, &sample, plan.backend, deferred);
    let old_secondary = old.indexes.iter().filter(|i| !i.primary).count();
    // Inspected while the deferred indexes were left out.
    let new_secondary =
        new.indexes.iter().filter(|i| !i.primary).count() + plan.deferred_indexes.len();
    let (data_length, index_length) = table_lengths(conn, schema, &old.name).await?;
    let disk = disk_needs(
        est_rows,
        data_length,
        index_length,
        old_secondary,
        new_secondary,
        sample_index_per_row,
        sample_per_row,
        &sample,
        plan.backend,
        config.local.engine_size.0,
    );
    Ok(TableEstimate {
        table: old.name.clone(),
        backend: plan.backend,
        rows: est_rows,
        rows_basis,
        copy_secs: times.copy,
        index_secs: times.index,
        checksum_secs: times.checksum,
        cutover_secs: times.cutover,
        total_secs: times.total(),
        shadow_bytes: disk.shadow,
        sort_dir_bytes: disk.sort_dir,
        binlog_bytes: disk.binlog,
        sample,
    })
}

struct SampleShared {
    chunker: Mutex<Chunker>,
    /// Lower bound of the first chunk (None: the table's start).
    first_lower: Mutex<Option<Option<Vec<wraith_backend::Value>>>>,
    /// Upper bound of the last chunk handed out (`Some(None)`: the table's end).
    last_upper: Mutex<Option<Option<Vec<wraith_backend::Value>>>>,
    /// Why the sample stopped early.
    stop: Mutex<Option<String>>,
}

/// One worker of the sample: chunks from the shared chunker, each copied
/// with the run's `INSERT … SELECT`, until the deadline or the throttle.
/// Returns its rows and whether they were binlogged.
async fn sample_worker(
    pool: &Pool,
    shared: &SampleShared,
    insert: &str,
    key: &[wraith_backend::ColumnSpec],
    target: &wraith_backend::TargetTable,
    config: &Config,
    deadline: Instant,
) -> Result<(u64, bool), DbError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting a sample worker".into())?;
    prepare_session_with(
        &mut conn,
        SessionOptions {
            read_committed: true,
            ..SessionOptions::default()
        },
    )
    .await
    .context(|| "setting up a sample session".into())?;
    // Replicas need not apply the throwaway's rows, when the user may say so.
    let binlogged = conn
        .query_drop("SET SESSION sql_log_bin = 0")
        .await
        .is_err();
    let keysql = KeySql { key };
    let mut rows = 0;
    let result = async {
        loop {
            if Instant::now() >= deadline || shared.stop.lock().await.is_some() {
                return Ok(());
            }
            if let Some(why) = throttled(&mut conn, config).await? {
                *shared.stop.lock().await = Some(why);
                return Ok(());
            }
            let chunk = {
                let mut chunker = shared.chunker.lock().await;
                let Some(c) = chunker.next(&mut conn).await? else {
                    return Ok(());
                };
                let mut first = shared.first_lower.lock().await;
                if first.is_none() {
                    *first = Some(c.lower.clone());
                }
                *shared.last_upper.lock().await = Some(c.upper.clone());
                c
            };
            let t = Instant::now();
            let sql = format!("{insert}{}", keysql.range(&chunk));
            wraith_backend::write::send_insert(&mut conn, &sql, target, "sampling the copy")
                .await
                .map_err(|e| DbError {
                    context: "sampling the copy".into(),
                    error: mysql_async::Error::Other(e.to_string().into()),
                })?;
            let n = conn.affected_rows();
            rows += n;
            shared
                .chunker
                .lock()
                .await
                .feedback(n, t.elapsed(), int_span(&chunk));
        }
    }
    .await;
    if !binlogged {
        let _ = conn.query_drop("SET SESSION sql_log_bin = 1").await;
    }
    result.map(|()| (rows, binlogged))
}

/// For a single integer key: rows ≈ the sample's rows per key unit times
/// the key's span. `None` for other keys, or when the sample saw no span.
async fn key_span_rows(
    conn: &mut Conn,
    qsource: &str,
    key: &[wraith_backend::ColumnSpec],
    sample_rows: u64,
    shared: &SampleShared,
) -> Result<Option<u64>, DbError> {
    if key.len() != 1 || sample_rows == 0 {
        return Ok(None);
    }
    let Some(Some(upper)) = shared.last_upper.lock().await.clone() else {
        return Ok(None);
    };
    let Some(upper) = upper.first().and_then(int_value) else {
        return Ok(None);
    };
    let k = quote_ident(&key[0].name);
    let bounds: Option<(Option<String>, Option<String>)> = conn
        .query_first(format!(
            "SELECT CAST(MIN({k}) AS CHAR), CAST(MAX({k}) AS CHAR) FROM {qsource}"
        ))
        .await
        .context(|| "reading the key's span".into())?;
    let parse = |v: Option<String>| v.and_then(|s| s.parse::<i128>().ok());
    let Some((Some(min), Some(max))) = bounds.map(|(a, b)| (parse(a), parse(b))) else {
        return Ok(None);
    };
    let covered = upper - min + 1;
    if covered <= 0 || max < min {
        return Ok(None);
    }
    Ok(Some(rows_from_density(sample_rows, covered, max - min + 1)))
}

/// Rows of a key span from the rows seen in a covered part of it.
pub fn rows_from_density(sample_rows: u64, covered: i128, span: i128) -> u64 {
    if covered <= 0 {
        return sample_rows;
    }
    let density = sample_rows as f64 / covered as f64;
    ((density * span as f64).round() as u64).max(sample_rows)
}

fn int_value(v: &wraith_backend::Value) -> Option<i128> {
    match v {
        wraith_backend::Value::Int(i) => Some(*i as i128),
        wraith_backend::Value::UInt(u) => Some(*u as i128),
        _ => None,
    }
}

async fn table_lengths(conn: &mut Conn, schema: &str, table: &str) -> Result<(u64, u64), DbError> {
    let row: Option<(Option<u64>, Option<u64>)> = conn
        .exec_first(
            "SELECT DATA_LENGTH, INDEX_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await
        .context(|| format!("reading the size of {table}"))?;
    let (d, i) = row.unwrap_or((None, None));
    Ok((d.unwrap_or(0), i.unwrap_or(0)))
}

/// Free space by `statvfs`, for a path on this host.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct we own.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The file system id of a path on this host, to tell two paths on one disk.
fn fs_id(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as in free_space.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_fsid as u64)
}

/// The spaces the job needs and what is free there, and the binlog's retention.
async fn spaces_and_retention(
    pool: &Pool,
    config: &Config,
    job: &mut JobEstimate,
) -> Result<(), DbError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting for the free space".into())?;
    let (datadir, log_base): (Option<String>, Option<String>) = conn
        .query_first("SELECT @@datadir, @@log_bin_basename")
        .await
        .context(|| "reading @@datadir".into())?
        .unwrap_or((None, None));
    let datadir = datadir.unwrap_or_default();
    let shadow: u64 = job.tables.iter().map(|t| t.shadow_bytes).sum();
    let binlog_dir = log_base
        .as_deref()
        .and_then(|b| {
            Path::new(b)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| datadir.clone());
    let local_server = config.source.socket.is_some()
        || matches!(
            config.source.host.as_str(),
            "127.0.0.1" | "localhost" | "::1"
        );
    let (free, seen_by) = server_free_space(&mut conn, &datadir, local_server).await;
    let same_disk = local_server
        && fs_id(Path::new(&datadir)).is_some()
        && fs_id(Path::new(&datadir)) == fs_id(Path::new(&binlog_dir));
    if same_disk || binlog_dir.starts_with(&datadir) {
        job.spaces.push(Space {
            what: "datadir (shadow table and binlog)".into(),
            path: datadir.clone(),
            needed: shadow + job.binlog_bytes,
            free,
            seen_by,
        });
    } else {
        job.spaces.push(Space {
            what: "datadir (shadow table)".into(),
            path: datadir.clone(),
            needed: shadow,
            free,
            seen_by,
        });
        let (free, seen_by) = if local_server {
            match free_space(Path::new(&binlog_dir)) {
                Some(f) => (Some(f), "statvfs on this host".to_string()),
                None => (None, "not readable from this host".to_string()),
            }
        } else {
            (None, "the server is on another host".to_string())
        };
        job.spaces.push(Space {
            what: "binlog directory".into(),
            path: binlog_dir,
            needed: job.binlog_bytes,
            free,
            seen_by,
        });
    }
    let sort: u64 = job.tables.iter().map(|t| t.sort_dir_bytes).sum();
    if sort > 0 {
        let dir = &config.local.sort_dir;
        let probe = if dir.exists() {
            dir.clone()
        } else {
            dir.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.clone())
        };
        job.spaces.push(Space {
            what: "sort directory".into(),
            path: dir.display().to_string(),
            needed: sort,
            free: free_space(&probe),
            seen_by: "statvfs".into(),
        });
    }
    let seconds = super::global_var(&mut conn, "binlog_expire_logs_seconds").await?;
    let days = super::global_var(&mut conn, "expire_logs_days").await?;
    job.binlog_retention_secs = retention_secs(seconds.as_deref(), days.as_deref());
    Ok(())
}

/// Free space of the server's datadir: `information_schema.DISKS` (the
/// `disks` plugin) when installed, else `statvfs` when the server is on this
/// host and its datadir is readable here.
async fn server_free_space(
    conn: &mut Conn,
    datadir: &str,
    local_server: bool,
) -> (Option<u64>, String) {
    let disks: Result<Vec<(String, u64)>, _> = conn
        .query("SELECT Path, Available FROM information_schema.DISKS")
        .await;
    if let Ok(disks) = disks {
        // The longest mount point the datadir is under; Available is in KiB.
        if let Some((_, kib)) = disks
            .iter()
            .filter(|(p, _)| datadir.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
        {
            return (Some(kib * 1024), "information_schema.DISKS".into());
        }
    }
    if local_server {
        if let Some(f) = free_space(Path::new(datadir)) {
            return (Some(f), "statvfs of @@datadir on this host".into());
        }
    }
    (
        None,
        "no information_schema.DISKS and the datadir is not on this host".into(),
    )
}

/// Seconds binlogs are kept: `binlog_expire_logs_seconds` when set (10.6+),
/// else `expire_logs_days`; `None` when neither is readable; 0: for ever.
pub fn retention_secs(seconds: Option<&str>, days: Option<&str>) -> Option<u64> {
    let secs = seconds.and_then(|s| s.trim().parse::<u64>().ok());
    let days = days
        .and_then(|d| d.trim().parse::<f64>().ok())
        .map(|d| (d * 86400.0) as u64);
    match (secs, days) {
        (Some(s), _) if s > 0 => Some(s),
        (_, Some(d)) => Some(d),
        (s, None) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            rows: 50_000,
            secs: 1.0,
            rows_per_sec: 50_000.0,
            workers: 4,
            index_fixed_secs: 0.05,
            index_sample_secs: 0.30,
            checksum_rows_per_sec: 200_000.0,
            old_row_bytes: 100.0,
            new_row_bytes: 110.0,
            ddl_secs: 0.05,
            binlogged: false,
            cut_short: None,
        }
    }

    #[test]
    fn stage_times_extrapolate_the_sample() {
        let t = stage_times(1_000_000, &sample(), BackendKind::Sql, true);
        assert!((t.copy - 20.0).abs() < 1e-9);
        // 0.25 s for 50k rows → 5 s per million, times log2(1M)/log2(50k).
        let growth = (1_000_000f64).log2() / (50_000f64).log2();
        assert!((t.index - (0.05 + 5.0 * growth)).abs() < 1e-9);
        assert!((t.checksum - 5.0).abs() < 1e-9);
        assert!((t.cutover - 0.7).abs() < 1e-9);
        assert!((t.total() - (t.copy + t.index + t.checksum + t.cutover)).abs() < 1e-9);
        // No deferred index: no index stage; local: half the copy rate.
        let t = stage_times(1_000_000, &sample(), BackendKind::Local, false);
        assert_eq!(t.index, 0.0);
        assert!((t.copy - 40.0).abs() < 1e-9);
    }

    #[test]
    fn disk_scales_the_source_by_the_row_bytes() {
        let d = disk_needs(
            1_000_000,
            160_000_000,
            20_000_000,
            1,
            1,
            0.0,
            None,
            &sample(),
            BackendKind::Sql,
            1 << 30,
        );
        assert_eq!(d.shadow, 176_000_000 + 20_000_000);
        assert_eq!(d.binlog, (1_000_000.0 * 112.0 * 1.01) as u64);
        assert_eq!(d.sort_dir, 0);
        // A new secondary index where the source had none: the sample's bytes per row.
        let d = disk_needs(
            1_000_000,
            160_000_000,
            0,
            0,
            1,
            16.0,
            None,
            &sample(),
            BackendKind::Local,
            1 << 30,
        );
        assert_eq!(d.shadow, 176_000_000 + 16_000_000);
        // Measured on a large enough sample: its bytes per row, whatever the source's stats say.
        let d = disk_needs(
            1_000_000,
            1,
            0,
            0,
            1,
            16.0,
            Some((170.0, 15.0)),
            &sample(),
            BackendKind::Sql,
            1 << 30,
        );
        assert_eq!(d.shadow, 185_000_000);
        // The sql backend writes the shadow directly: no sort directory.
        assert_eq!(d.sort_dir, 0);
        // The local engines: at most two of engine_size at once.
        let d = disk_needs(
            100_000_000,
            1,
            0,
            0,
            0,
            0.0,
            None,
            &sample(),
            BackendKind::Local,
            1 << 30,
        );
        assert_eq!(d.sort_dir, 2 << 30);
    }

    #[test]
    fn space_fails_over_and_warns_within_a_fifth() {
        assert_eq!(judge_space(100, Some(99)), Some(false));
        assert_eq!(judge_space(90, Some(100)), Some(true));
        assert_eq!(judge_space(50, Some(100)), None);
        assert_eq!(judge_space(50, None), None);
    }

    #[test]
    fn retention_prefers_seconds_then_days() {
        assert_eq!(retention_secs(Some("3600"), Some("10")), Some(3600));
        assert_eq!(retention_secs(Some("0"), Some("1.5")), Some(129_600));
        assert_eq!(retention_secs(Some("0"), Some("0.000000")), Some(0));
        assert_eq!(retention_secs(None, None), None);
    }

    #[test]
    fn density_extrapolates_over_the_span() {
        assert_eq!(rows_from_density(10_000, 10_000, 1_000_000), 1_000_000);
        // A sparse key: half the keys used.
        assert_eq!(rows_from_density(5_000, 10_000, 1_000_000), 500_000);
        assert_eq!(rows_from_density(5_000, 0, 10), 5_000);
    }

    #[test]
    fn value_sizes_follow_the_row_format() {
        let col = |data_type: &str, column_type: &str| ColumnInfo {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: true,
            default: None,
            charset: None,
            collation: None,
            extra: String::new(),
        };
        assert_eq!(
            value_bytes_sql(&col("int", "int(11)")),
            "IF(`c` IS NULL, 0, 4)"
        );
        assert_eq!(
            value_bytes_sql(&col("datetime", "datetime(6)")),
            "IF(`c` IS NULL, 0, 8)"
        );
        assert_eq!(
            value_bytes_sql(&col("decimal", "decimal(12,4)")),
            "IF(`c` IS NULL, 0, 6)"
        );
        assert!(value_bytes_sql(&col("varchar", "varchar(10)")).contains("OCTET_LENGTH(`c`)"));
        assert_eq!(decimal_bytes(18), 8);
        assert_eq!(decimal_bytes(10), 5);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(secs(3.24), "3.2s");
        assert_eq!(secs(42.4), "42s");
        assert_eq!(secs(200.0), "3m 20s");
        assert_eq!(secs(7500.0), "2h 5m");
    }
}
