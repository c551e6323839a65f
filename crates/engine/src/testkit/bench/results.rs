//! What a benchmark measured: one record per run (a method's rebuild, a
//! change-apply measurement, a dump load), the summary per method over the
//! rounds (median, min, max, ratios, the load's latency) and the whole
//! [`BenchResults`] that `wraith bench --json` writes.
//!
//! What it leaves to others: measuring (the [`harness`](super::harness)) and
//! drawing (the CLI's markdown table, run lines and SVG plot). Everything here
//! is plain data with `Serialize`, so the JSON shape is this module's types.

use serde::Serialize;

use super::load::LoadWindow;
use super::pristine::Comparison;
use super::tables::TableKind;
use super::BenchError;

/// A way to rebuild a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    WraithSql,
    WraithLocal,
    NativeInplace,
    NativeCopy,
    PtOsc,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::WraithSql,
        Method::WraithLocal,
        Method::NativeInplace,
        Method::NativeCopy,
        Method::PtOsc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::WraithSql => "wraith-sql",
            Method::WraithLocal => "wraith-local",
            Method::NativeInplace => "native-inplace",
            Method::NativeCopy => "native-copy",
            Method::PtOsc => "pt-osc",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "unknown method {s:?}; use wraith-sql, wraith-local, native-inplace, native-copy or pt-osc"
                ))
            })
    }
}

/// Idle, or under the write load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Idle,
    Load,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::Idle => "idle",
            Condition::Load => "load",
        }
    }
}

/// One method's run on one restored table.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRun {
    pub table: TableKind,
    pub method: Method,
    pub condition: Condition,
    pub round: u32,
    /// The method finished and its result matched what the table must hold.
    pub correct: bool,
    /// How the result compared (absent when the method failed).
    pub comparison: Option<Comparison>,
    pub error: Option<String>,
    pub wall_secs: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    /// How long wraith's cut-over blocked writes (from its run report).
    pub cutover_blocked_ms: Option<f64>,
    /// The server's CPU time (user + system) during the method.
    pub server_cpu_secs: Option<f64>,
    /// Peak resident memory of the tool's process (wraith, pt-osc).
    pub peak_rss_mib: Option<f64>,
    /// wraith's own report of the table (phases: copy, indexes, checksum, cut-over).
    pub wraith_report: Option<serde_json::Value>,
    /// The load right before the method (its baseline) and during it.
    pub load_before: Option<LoadWindow>,
    pub load_during: Option<LoadWindow>,
    /// Wall time divided by native INPLACE's in the same round and condition.
    pub ratio_to_native_inplace: Option<f64>,
}

impl MethodRun {
    /// A run not yet measured: incorrect until its result is checked.
    pub fn new(table: TableKind, method: Method, condition: Condition, round: u32) -> MethodRun {
        MethodRun {
            table,
            method,
            condition,
            round,
            correct: false,
            comparison: None,
            error: None,
            wall_secs: 0.0,
            rows_per_sec: 0.0,
            mb_per_sec: 0.0,
            cutover_blocked_ms: None,
            server_cpu_secs: None,
            peak_rss_mib: None,
            wraith_report: None,
            load_before: None,
            load_during: None,
            ratio_to_native_inplace: None,
        }
    }
}

/// The change apply rate measured with bursts of updates.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyRun {
    pub table: TableKind,
    pub round: u32,
    /// Changes (updated rows) in all bursts.
    pub changes: u64,
    /// From each burst's commit until wraith had applied it, summed.
    pub apply_secs: f64,
    pub changes_per_sec: f64,
    /// The table equalled the pristine copy after the bursts and the cut-over.
    pub correct: bool,
    pub error: Option<String>,
}

/// One load of a dump into an empty schema.
#[derive(Debug, Clone, Serialize)]
pub struct ImportRun {
    pub table: TableKind,
    /// `myloader`, `wraith-import-sql` or `wraith-import-local`.
    pub loader: &'static str,
    pub round: u32,
    pub correct: bool,
    pub error: Option<String>,
    pub wall_secs: f64,
    pub rows_per_sec: f64,
    /// myloader's wall time over this loader's, in the same round (> 1: faster).
    pub speedup_over_myloader: Option<f64>,
    pub server_cpu_secs: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// What else happened (a retried first attempt).
    pub note: Option<String>,
}

/// The loaders `--import` compares, in the order they run each round.
pub const LOADERS: [&str; 3] = ["myloader", "wraith-import-sql", "wraith-import-local"];

/// A method left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub method: Method,
    pub reason: String,
}

/// A generated table.
#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub kind: TableKind,
    pub table: String,
    pub rows: u64,
    pub table_bytes: u64,
    pub generate_secs: f64,
    pub restore: &'static str,
}

/// The knobs a result was measured with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub repeat: u32,
    pub load_rate: u32,
    pub load_connections: usize,
    pub baseline_secs: f64,
    pub scratch_server: bool,
}

/// One method under one condition on one table, over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct MethodSummary {
    pub table: TableKind,
    pub method: Method,
    pub condition: Condition,
    pub runs: usize,
    /// Every run finished with the right content.
    pub all_correct: bool,
    pub wall_secs_median: f64,
    pub wall_secs_min: f64,
    pub wall_secs_max: f64,
    /// Rows and table bytes over the median time.
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub ratio_to_native_inplace: Option<f64>,
    pub cutover_blocked_ms: Option<f64>,
    pub server_cpu_secs: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Medians over the rounds of the load's p95 before and during the method.
    pub load_p95_before_ms: Option<f64>,
    pub load_p95_during_ms: Option<f64>,
    /// During minus before.
    pub load_p95_change_ms: Option<f64>,
    pub load_p99_during_ms: Option<f64>,
    pub load_tps_during: Option<f64>,
    /// Failed load transactions during the method, over all rounds.
    pub load_errors_during: Option<u64>,
}

/// Everything `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    pub wraith_version: &'static str,
    pub server_version: String,
    pub settings: Settings,
    pub tables: Vec<TableInfo>,
    pub skipped: Vec<Skipped>,
    pub summary: Vec<MethodSummary>,
    pub runs: Vec<MethodRun>,
    /// The change apply rate, per table and round.
    pub apply: Vec<ApplyRun>,
    /// `--import`: dump loads, per table, round and loader.
    pub import: Vec<ImportRun>,
}

/// The runs of a benchmark, gathered as they finish.
#[derive(Debug, Default)]
pub struct Runs {
    pub tables: Vec<TableInfo>,
    pub skipped: Vec<Skipped>,
    pub runs: Vec<MethodRun>,
    pub apply: Vec<ApplyRun>,
    pub import: Vec<ImportRun>,
}

impl BenchResults {
    /// The results of `runs`, with the summary per table, condition and method.
    pub fn new(server_version: String, settings: &Settings, runs: Runs) -> BenchResults {
        let mut summary = Vec::new();
        for table in &runs.tables {
            for condition in [Condition::Idle, Condition::Load] {
                for method in Method::ALL {
                    let group: Vec<&MethodRun> = runs
                        .runs
                        .iter()
                        .filter(|r| {
                            r.table == table.kind && r.condition == condition && r.method == method
                        })
                        .collect();
                    if !group.is_empty() {
                        summary.push(summarise(table, &group));
                    }
                }
            }
        }
        BenchResults {
            wraith_version: env!("CARGO_PKG_VERSION"),
            server_version,
            settings: settings.clone(),
            tables: runs.tables,
            skipped: runs.skipped,
            summary,
            runs: runs.runs,
            apply: runs.apply,
            import: runs.import,
        }
    }

    /// Runs that failed or gave a result other than what the table must hold.
    pub fn wrong(&self) -> usize {
        self.runs.iter().filter(|r| !r.correct).count()
            + self.apply.iter().filter(|r| !r.correct).count()
            + self.import.iter().filter(|r| !r.correct).count()
    }
}

/// The median of `values`; `None` when there are none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn summarise(table: &TableInfo, group: &[&MethodRun]) -> MethodSummary {
    let first = group[0];
    let walls: Vec<f64> = group.iter().map(|r| r.wall_secs).collect();
    let wall = median(walls.clone()).unwrap_or(0.0);
    let collect = |f: &dyn Fn(&MethodRun) -> Option<f64>| -> Option<f64> {
        median(group.iter().filter_map(|r| f(r)).collect())
    };
    let before = collect(&|r| r.load_before.as_ref().map(|w| w.p95_ms));
    let during = collect(&|r| r.load_during.as_ref().map(|w| w.p95_ms));
    let changes =
        collect(&|r| Some(r.load_during.as_ref()?.p95_ms - r.load_before.as_ref()?.p95_ms));
    let errors: Vec<u64> = group
        .iter()
        .filter_map(|r| r.load_during.as_ref().map(|w| w.error_count()))
        .collect();
    MethodSummary {
        table: first.table,
        method: first.method,
        condition: first.condition,
        runs: group.len(),
        all_correct: group.iter().all(|r| r.correct),
        wall_secs_median: wall,
        wall_secs_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        wall_secs_max: walls.iter().copied().fold(0.0, f64::max),
        rows_per_sec: if wall > 0.0 {
            table.rows as f64 / wall
        } else {
            0.0
        },
        mb_per_sec: if wall > 0.0 {
            table.table_bytes as f64 / 1048576.0 / wall
        } else {
            0.0
        },
        ratio_to_native_inplace: collect(&|r| r.ratio_to_native_inplace),
        cutover_blocked_ms: collect(&|r| r.cutover_blocked_ms),
        server_cpu_secs: collect(&|r| r.server_cpu_secs),
        peak_rss_mib: group.iter().filter_map(|r| r.peak_rss_mib).reduce(f64::max),
        load_p95_before_ms: before,
        load_p95_during_ms: during,
        load_p95_change_ms: changes,
        load_p99_during_ms: collect(&|r| r.load_during.as_ref().map(|w| w.p99_ms)),
        load_tps_during: collect(&|r| r.load_during.as_ref().map(|w| w.transactions_per_sec)),
        load_errors_during: (!errors.is_empty()).then(|| errors.iter().sum()),
    }
}

/// Each run's time over native INPLACE's in the same round and condition
/// (`runs` holds one round of one condition).
pub fn set_ratios(runs: &mut [MethodRun]) {
    let native = runs
        .iter()
        .find(|r| r.method == Method::NativeInplace && r.correct && r.wall_secs > 0.0)
        .map(|r| r.wall_secs);
    if let Some(native) = native {
        for r in runs.iter_mut().filter(|r| r.correct) {
            r.ratio_to_native_inplace = Some(r.wall_secs / native);
        }
    }
}

/// Each correct load's speed over myloader's in the same round (`runs`
/// holds one round).
pub fn set_speedups(runs: &mut [ImportRun]) {
    let base = runs
        .iter()
        .find(|r| r.loader == "myloader" && r.correct)
        .map(|r| r.wall_secs);
    for r in runs {
        r.speedup_over_myloader = base.filter(|_| r.correct).map(|b| b / r.wall_secs);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(super::median(vec![]), None);
    }

    #[test]
    fn methods_parse_by_name() {
        assert_eq!(
            "pt-osc".parse::<super::Method>().ok(),
            Some(super::Method::PtOsc)
        );
        assert!("inplace".parse::<super::Method>().is_err());
    }
}
