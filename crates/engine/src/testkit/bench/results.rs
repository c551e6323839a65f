//! What a benchmark measured: one record per run (a method's rebuild, a
//! change-apply measurement, a dump load), the summary per method over the
//! rounds (median, min, max, ratios, the load's latency, the replica, the
//! blocker, the debt left) and the whole [`BenchResults`] that `wraith bench
//! --json` writes.
//!
//! What it leaves to others: measuring (the [`harness`](super::harness)) and
//! drawing (the CLI's markdown table, run lines and SVG plot). Everything here
//! is plain data with `Serialize`, so the JSON shape is this module's types.
//!
//! Ratios: each run's time is divided by native INPLACE's, the floor's and
//! the best wraith's (the faster correct wraith backend) *of the same round
//! and condition*, so a slow drift of the machine cancels out.

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::LoadWindow;
use super::pristine::Comparison;
use super::tables::TableKind;
use super::BenchError;

/// A way to rebuild a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    WraithSql,
    WraithLocal,
    /// wraith-sql paced by the server's write debt: `[throttle]
    /// max_checkpoint_age_pct` set to the bench's `--paced-checkpoint-age`.
    WraithPaced,
    /// wraith-sql with `[copy] defer_secondary_indexes = true`: the index
    /// build after the copy even with a replica watched (the default then
    /// keeps the indexes in the shadow), to show what that choice gains and
    /// what the writers and the replica pay for it.
    WraithDeferred,
    NativeInplace,
    NativeCopy,
    PtOsc,
    /// gh-ost with this `--chunk-size`; named `ghost-<chunk>`.
    Ghost {
        chunk: u64,
    },
    /// The server's own floor for the same work: one `INSERT … SELECT` into
    /// the key-only new table, one `ALTER TABLE … ADD INDEX` of the secondary
    /// indexes, a `RENAME` (see the harness).
    Floor,
}

/// gh-ost's chunk size when `--ghost-chunk` is not given (gh-ost's own default).
pub const DEFAULT_GHOST_CHUNK: u64 = 1000;

impl Method {
    /// The methods with a fixed name, in their usual order (gh-ost's are
    /// one per chunk size: [`parse_methods`]).
    pub const FIXED: [Method; 8] = [
        Method::WraithSql,
        Method::WraithLocal,
        Method::WraithPaced,
        Method::WraithDeferred,
        Method::NativeInplace,
        Method::NativeCopy,
        Method::PtOsc,
        Method::Floor,
    ];

    /// The name on the command line, in reports and in the JSON.
    pub fn name(self) -> String {
        match self {
            Method::Ghost { chunk } => format!("ghost-{chunk}"),
            fixed => fixed.fixed_name().to_string(),
        }
    }

    fn fixed_name(self) -> &'static str {
        match self {
            Method::WraithSql => "wraith-sql",
            Method::WraithLocal => "wraith-local",
            Method::WraithPaced => "wraith-paced",
            Method::WraithDeferred => "wraith-deferred",
            Method::NativeInplace => "native-inplace",
            Method::NativeCopy => "native-copy",
            Method::PtOsc => "pt-osc",
            Method::Ghost { .. } => "ghost",
            Method::Floor => "floor",
        }
    }

    pub fn is_wraith(self) -> bool {
        matches!(
            self,
            Method::WraithSql | Method::WraithLocal | Method::WraithPaced | Method::WraithDeferred
        )
    }

    pub fn is_ghost(self) -> bool {
        matches!(self, Method::Ghost { .. })
    }

    /// gh-ost's chunk size (`None` for the other methods).
    pub fn chunk_size(self) -> Option<u64> {
        match self {
            Method::Ghost { chunk } => Some(chunk),
            _ => None,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Method {
    type Err = BenchError;
    /// A fixed name, or `ghost-<chunk>`; a bare `ghost` needs the chunk
    /// list ([`parse_methods`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(found) = Method::FIXED.into_iter().find(|m| m.fixed_name() == s) {
            return Ok(found);
        }
        if let Some(chunk) = s.strip_prefix("ghost-") {
            return match chunk.parse::<u64>() {
                Ok(chunk) if chunk > 0 => Ok(Method::Ghost { chunk }),
                _ => Err(BenchError::Usage(format!(
                    "method {s:?}: gh-ost's chunk size must be a whole number above 0, e.g. ghost-1000"
                ))),
            };
        }
        Err(BenchError::Usage(format!(
            "unknown method {s:?}; use wraith-sql, wraith-local, wraith-paced, wraith-deferred, native-inplace, native-copy, pt-osc, ghost (or ghost-<chunk>) or floor"
        )))
    }
}

/// `--methods` with `ghost` expanded to one method per gh-ost chunk size
/// (`--ghost-chunk`), duplicates dropped, order kept.
pub fn parse_methods(names: &[String], ghost_chunks: &[u64]) -> Result<Vec<Method>, BenchError> {
    if ghost_chunks.contains(&0) {
        return Err(BenchError::Usage(
            "--ghost-chunk: gh-ost's chunk size must be above 0, e.g. 1000".into(),
        ));
    }
    let mut methods = Vec::new();
    for name in names {
        let expanded = if name.trim() == "ghost" {
            let chunks = if ghost_chunks.is_empty() {
                &[DEFAULT_GHOST_CHUNK][..]
            } else {
                ghost_chunks
            };
            chunks
                .iter()
                .map(|&chunk| Method::Ghost { chunk })
                .collect()
        } else {
            vec![name.parse::<Method>()?]
        };
        for m in expanded {
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
    }
    Ok(methods)
}

/// Idle, under the write load, or under the write load with a blocker at
/// the final lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Idle,
    Load,
    /// The write load, and a session that opens a transaction reading the
    /// table shortly before the method's final lock and holds it.
    Blocker,
}

impl Condition {
    pub const ALL: [Condition; 3] = [Condition::Idle, Condition::Load, Condition::Blocker];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Idle => "idle",
            Condition::Load => "load",
            Condition::Blocker => "blocker",
        }
    }

    /// Whether the write load runs.
    pub fn loaded(self) -> bool {
        self != Condition::Idle
    }
}

impl std::str::FromStr for Condition {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::ALL
            .into_iter()
            .find(|c| c.name() == s.trim())
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "unknown condition {s:?}; use idle, load or blocker"
                ))
            })
    }
}

/// The server's write debt, read right before a method and right after it:
/// the throttle's own reading ([`crate::throttle::WriteDebt`]).
pub use crate::throttle::WriteDebt;

/// The replica during one method (`--replica`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaRun {
    /// The replica's lag, per second from the method's start until the
    /// replica had applied everything (the largest of that second's samples
    /// taken every 100 ms), in ms.
    pub lag_series_ms: Vec<f64>,
    pub max_lag_ms: Option<f64>,
    /// From the method's start until the replica had applied everything the
    /// primary had written when the method ended.
    pub complete_secs: Option<f64>,
    /// The replica's table equalled the primary's after the method (rows,
    /// `CHECKSUM TABLE`, definition).
    pub verified: bool,
    pub comparison: Option<Comparison>,
    pub error: Option<String>,
}

/// The blocker during one method (`blocker` condition).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockerRun {
    /// What opened it: the moment chosen for this method.
    pub trigger: String,
    /// When its moment came, after the method's start (`None`: the method
    /// ended before that moment came).
    pub fired_secs: Option<f64>,
    /// When its transaction had read the table. Much later than
    /// `fired_secs` means its read queued behind the method's own final
    /// lock (the method won the race and the blocker did not block it).
    pub opened_secs: Option<f64>,
    /// How long it held the transaction open.
    pub held_secs: Option<f64>,
    pub error: Option<String>,
}

/// One method's run on one restored table.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRun {
    pub table: TableKind,
    pub method: Method,
    /// gh-ost's `--chunk-size` (gh-ost runs only).
    pub chunk_size: Option<u64>,
    pub condition: Condition,
    pub round: u32,
    /// The method finished and its result matched what the table must hold
    /// (on the replica too, with `--replica`).
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
    /// Peak resident memory of the tool's process (wraith, pt-osc, gh-ost).
    pub peak_rss_mib: Option<f64>,
    /// wraith's own report of the table.
    pub wraith_report: Option<serde_json::Value>,
    /// wraith's time per phase (stage name → seconds, with `copy`,
    /// `checksum`, `index_restore` and `total` from its report).
    pub phases: Option<BTreeMap<String, f64>>,
    /// The load right before the method (its baseline), during it, and in
    /// the aftermath window after it (`--aftermath-secs`).
    pub load_before: Option<LoadWindow>,
    pub load_during: Option<LoadWindow>,
    pub load_after: Option<LoadWindow>,
    /// The server's write debt right before and right after the method.
    pub debt_before: Option<WriteDebt>,
    pub debt_after: Option<WriteDebt>,
    /// After the method's end, until the dirty pages were back within 10%
    /// of `debt_before`'s (`None`: not within the aftermath window).
    pub dirty_recovery_secs: Option<f64>,
    pub replica: Option<ReplicaRun>,
    pub blocker: Option<BlockerRun>,
    /// Wall time divided by native INPLACE's, the floor's and the best
    /// wraith's in the same round and condition.
    pub ratio_to_native_inplace: Option<f64>,
    pub ratio_to_floor: Option<f64>,
    pub ratio_to_wraith: Option<f64>,
}

impl MethodRun {
    /// A run not yet measured: incorrect until its result is checked.
    pub fn new(table: TableKind, method: Method, condition: Condition, round: u32) -> MethodRun {
        MethodRun {
            table,
            method,
            chunk_size: method.chunk_size(),
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
            phases: None,
            load_before: None,
            load_during: None,
            load_after: None,
            debt_before: None,
            debt_after: None,
            dirty_recovery_secs: None,
            replica: None,
            blocker: None,
            ratio_to_native_inplace: None,
            ratio_to_floor: None,
            ratio_to_wraith: None,
        }
    }

    /// The load's p95 during (or after) the method over its p95 before.
    pub fn load_p95_ratio(&self, window: &Option<LoadWindow>) -> Option<f64> {
        let before = self.load_before.as_ref()?.p95_ms;
        let w = window.as_ref()?;
        (before > 0.0).then(|| w.p95_ms / before)
    }
}

/// wraith's phases from its table report, as name → seconds: its `phases`
/// object when it has one (each phase a number, or a span whose `secs` is
/// taken; the spans themselves stay in `wraith_report`), otherwise built
/// from `stages` (each stage's seconds, summed by name, e.g. `copy`,
/// `restore_indexes`, `checksum`, `cut_over`); either way with `total_secs`
/// as `total`.
pub fn phases_of(report: &serde_json::Value) -> Option<BTreeMap<String, f64>> {
    let total = report["total_secs"].as_f64();
    if let Some(phases) = report["phases"].as_object() {
        let mut map: BTreeMap<String, f64> = phases
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64().or_else(|| v["secs"].as_f64())?)))
            .collect();
        if !map.is_empty() {
            if let Some(total) = total {
                map.entry("total".into()).or_insert(total);
            }
            return Some(map);
        }
    }
    let mut map = BTreeMap::new();
    for stage in report["stages"].as_array().into_iter().flatten() {
        if let (Some(name), Some(secs)) = (stage["stage"].as_str(), stage["secs"].as_f64()) {
            *map.entry(name.to_string()).or_insert(0.0) += secs;
        }
    }
    // Older reports without a stage list still have these.
    for (key, name) in [
        ("copy_secs", "copy"),
        ("index_restore_secs", "restore_indexes"),
        ("checksum_secs", "checksum"),
        ("total_secs", "total"),
    ] {
        if let Some(secs) = report[key].as_f64() {
            map.entry(name.to_string()).or_insert(secs);
        }
    }
    (!map.is_empty()).then_some(map)
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
    /// A replica of the scratch server was measured (`--replica`).
    pub replica: bool,
    /// The lag wraith, pt-osc and gh-ost throttle at (with a replica).
    pub max_lag_secs: f64,
    /// `wraith-paced`'s `[throttle] max_checkpoint_age_pct`.
    pub paced_checkpoint_age_pct: u64,
    /// How long the blocker holds its transaction (`blocker` condition).
    pub blocker_secs: f64,
    /// How long the load runs on after each method (`load`, `blocker`), and
    /// the longest an idle run waits for the dirty pages to come back.
    pub aftermath_secs: f64,
}

/// One method under one condition on one table, over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct MethodSummary {
    pub table: TableKind,
    pub method: Method,
    pub chunk_size: Option<u64>,
    pub condition: Condition,
    pub runs: usize,
    /// Every run finished with the right content (on the replica too).
    pub all_correct: bool,
    pub wall_secs_median: f64,
    pub wall_secs_min: f64,
    pub wall_secs_max: f64,
    /// Rows and table bytes over the median time.
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub ratio_to_native_inplace: Option<f64>,
    pub ratio_to_floor: Option<f64>,
    pub ratio_to_wraith: Option<f64>,
    pub cutover_blocked_ms: Option<f64>,
    pub server_cpu_secs: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// wraith's phases, each the median over the rounds.
    pub phases: Option<BTreeMap<String, f64>>,
    /// Medians over the rounds of the load's p95 before, during and after the method.
    pub load_p95_before_ms: Option<f64>,
    pub load_p95_during_ms: Option<f64>,
    /// During minus before.
    pub load_p95_change_ms: Option<f64>,
    /// During over before, and after over before.
    pub load_p95_during_ratio: Option<f64>,
    pub load_p95_after_ratio: Option<f64>,
    pub load_p99_during_ms: Option<f64>,
    /// The worst write latency during the method, over all rounds.
    pub load_max_during_ms: Option<f64>,
    pub load_tps_during: Option<f64>,
    /// Failed load transactions during the method, over all rounds.
    pub load_errors_during: Option<u64>,
    pub load_p95_after_ms: Option<f64>,
    pub load_p99_after_ms: Option<f64>,
    /// The worst write latency in the aftermath, over all rounds.
    pub load_max_after_ms: Option<f64>,
    /// Seconds into the aftermath until the load's per-second p95 stayed
    /// within 2× its p95 before the method (median).
    pub load_tail_secs: Option<f64>,
    /// Medians of the replica's maximum lag and of the time until the
    /// change was complete on it.
    pub replica_max_lag_ms: Option<f64>,
    pub replica_complete_secs: Option<f64>,
    /// Every run's replica table equalled the primary's (`None`: no replica).
    pub replica_all_verified: Option<bool>,
    /// Median of when the blocker opened after the method's start.
    pub blocker_opened_secs: Option<f64>,
    /// Medians of the write debt right before and right after the method.
    pub debt_before_dirty_pct: Option<f64>,
    pub debt_after_dirty_pct: Option<f64>,
    pub debt_after_checkpoint_age_pct: Option<f64>,
    pub debt_after_history_list_length: Option<f64>,
    /// Median time after the method until the dirty pages were back within
    /// 10% of before.
    pub dirty_recovery_secs: Option<f64>,
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
    /// The results of `runs`, with the summary per table, condition and
    /// method (methods in the order they ran).
    pub fn new(server_version: String, settings: &Settings, runs: Runs) -> BenchResults {
        let mut methods: Vec<Method> = Vec::new();
        for r in &runs.runs {
            if !methods.contains(&r.method) {
                methods.push(r.method);
            }
        }
        let mut summary = Vec::new();
        for table in &runs.tables {
            for condition in Condition::ALL {
                for &method in &methods {
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

    /// The methods that ran, in their order.
    pub fn methods(&self) -> Vec<Method> {
        let mut methods = Vec::new();
        for s in &self.summary {
            if !methods.contains(&s.method) {
                methods.push(s.method);
            }
        }
        methods
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

/// Seconds into `run`'s aftermath until its per-second p95 stayed within 2×
/// the p95 before the method (0: it never left it).
pub fn load_tail_secs(run: &MethodRun) -> Option<f64> {
    let before = run.load_before.as_ref()?.p95_ms;
    let after = run.load_after.as_ref()?;
    let limit = 2.0 * before.max(0.001);
    let last_over = after.per_second_p95_ms.iter().rposition(|&p95| p95 > limit);
    Some(last_over.map_or(0.0, |i| (i + 1) as f64))
}

fn summarise(table: &TableInfo, group: &[&MethodRun]) -> MethodSummary {
    let first = group[0];
    let walls: Vec<f64> = group.iter().map(|r| r.wall_secs).collect();
    let wall = median(walls.clone()).unwrap_or(0.0);
    let collect = |f: &dyn Fn(&MethodRun) -> Option<f64>| -> Option<f64> {
        median(group.iter().filter_map(|r| f(r)).collect())
    };
    let worst = |f: &dyn Fn(&MethodRun) -> Option<f64>| -> Option<f64> {
        group.iter().filter_map(|r| f(r)).reduce(f64::max)
    };
    let before = collect(&|r| r.load_before.as_ref().map(|w| w.p95_ms));
    let during = collect(&|r| r.load_during.as_ref().map(|w| w.p95_ms));
    let changes =
        collect(&|r| Some(r.load_during.as_ref()?.p95_ms - r.load_before.as_ref()?.p95_ms));
    let errors: Vec<u64> = group
        .iter()
        .filter_map(|r| r.load_during.as_ref().map(|w| w.error_count()))
        .collect();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in group {
        for (name, secs) in r.phases.iter().flatten() {
            phases.entry(name.clone()).or_default().push(*secs);
        }
    }
    let phases: BTreeMap<String, f64> = phases
        .into_iter()
        .filter_map(|(name, secs)| Some((name, median(secs)?)))
        .collect();
    let replicas: Vec<&ReplicaRun> = group.iter().filter_map(|r| r.replica.as_ref()).collect();
    MethodSummary {
        table: first.table,
        method: first.method,
        chunk_size: first.chunk_size,
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
        ratio_to_floor: collect(&|r| r.ratio_to_floor),
        ratio_to_wraith: collect(&|r| r.ratio_to_wraith),
        cutover_blocked_ms: collect(&|r| r.cutover_blocked_ms),
        server_cpu_secs: collect(&|r| r.server_cpu_secs),
        peak_rss_mib: worst(&|r| r.peak_rss_mib),
        phases: (!phases.is_empty()).then_some(phases),
        load_p95_before_ms: before,
        load_p95_during_ms: during,
        load_p95_change_ms: changes,
        load_p95_during_ratio: collect(&|r| r.load_p95_ratio(&r.load_during)),
        load_p95_after_ratio: collect(&|r| r.load_p95_ratio(&r.load_after)),
        load_p99_during_ms: collect(&|r| r.load_during.as_ref().map(|w| w.p99_ms)),
        load_max_during_ms: worst(&|r| r.load_during.as_ref().map(|w| w.max_ms)),
        load_tps_during: collect(&|r| r.load_during.as_ref().map(|w| w.transactions_per_sec)),
        load_errors_during: (!errors.is_empty()).then(|| errors.iter().sum()),
        load_p95_after_ms: collect(&|r| r.load_after.as_ref().map(|w| w.p95_ms)),
        load_p99_after_ms: collect(&|r| r.load_after.as_ref().map(|w| w.p99_ms)),
        load_max_after_ms: worst(&|r| r.load_after.as_ref().map(|w| w.max_ms)),
        load_tail_secs: collect(&load_tail_secs),
        replica_max_lag_ms: collect(&|r| r.replica.as_ref()?.max_lag_ms),
        replica_complete_secs: collect(&|r| r.replica.as_ref()?.complete_secs),
        replica_all_verified: (!replicas.is_empty())
            .then(|| replicas.len() == group.len() && replicas.iter().all(|r| r.verified)),
        blocker_opened_secs: collect(&|r| r.blocker.as_ref()?.opened_secs),
        debt_before_dirty_pct: collect(&|r| r.debt_before.as_ref()?.dirty_pages_pct()),
        debt_after_dirty_pct: collect(&|r| r.debt_after.as_ref()?.dirty_pages_pct()),
        debt_after_checkpoint_age_pct: collect(&|r| r.debt_after.as_ref()?.checkpoint_age_pct()),
        debt_after_history_list_length: collect(&|r| {
            r.debt_after.as_ref()?.history_list_length.map(|h| h as f64)
        }),
        dirty_recovery_secs: collect(&|r| r.dirty_recovery_secs),
    }
}

/// Each correct run's time over native INPLACE's, the floor's and the best
/// wraith's in the same round and condition (`runs` holds one round of one
/// condition).
pub fn set_ratios(runs: &mut [MethodRun]) {
    let wall_of = |pick: &dyn Fn(Method) -> bool| {
        runs.iter()
            .filter(|r| pick(r.method) && r.correct && r.wall_secs > 0.0)
            .map(|r| r.wall_secs)
            .reduce(f64::min)
    };
    let native = wall_of(&|m| m == Method::NativeInplace);
    let floor = wall_of(&|m| m == Method::Floor);
    let wraith = wall_of(&|m| m.is_wraith());
    for r in runs.iter_mut().filter(|r| r.correct) {
        r.ratio_to_native_inplace = native.map(|n| r.wall_secs / n);
        r.ratio_to_floor = floor.map(|f| r.wall_secs / f);
        r.ratio_to_wraith = wraith.map(|w| r.wall_secs / w);
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
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn methods_parse_by_name() {
        assert_eq!("pt-osc".parse::<Method>().ok(), Some(Method::PtOsc));
        assert_eq!("floor".parse::<Method>().ok(), Some(Method::Floor));
        assert_eq!(
            "ghost-5000".parse::<Method>().ok(),
            Some(Method::Ghost { chunk: 5000 })
        );
        assert!("inplace".parse::<Method>().is_err());
        assert!("ghost-0".parse::<Method>().is_err());
        assert!("ghost-x".parse::<Method>().is_err());
    }

    #[test]
    fn ghost_expands_to_one_method_per_chunk_size() {
        let names: Vec<String> = ["wraith-sql", "ghost", "ghost-1000", "floor"]
            .map(String::from)
            .to_vec();
        let methods = parse_methods(&names, &[1000, 10000]).expect("valid");
        assert_eq!(
            methods,
            vec![
                Method::WraithSql,
                Method::Ghost { chunk: 1000 },
                Method::Ghost { chunk: 10000 },
                Method::Floor
            ]
        );
        let default = parse_methods(&["ghost".to_string()], &[]).expect("valid");
        assert_eq!(default, vec![Method::Ghost { chunk: 1000 }]);
        assert!(parse_methods(&["ghost".to_string()], &[0]).is_err());
    }

    #[test]
    fn methods_serialize_by_name_with_the_chunk() {
        let json = serde_json::to_value(MethodRun::new(
            TableKind::Sysbench,
            Method::Ghost { chunk: 10000 },
            Condition::Blocker,
            1,
        ))
        .expect("serialises");
        assert_eq!(json["method"], "ghost-10000");
        assert_eq!(json["chunk_size"], 10000);
        assert_eq!(json["condition"], "blocker");
    }

    #[test]
    fn ratios_are_to_the_same_rounds_floor_and_best_wraith() {
        let run = |method, wall| {
            let mut r = MethodRun::new(TableKind::Sysbench, method, Condition::Idle, 1);
            r.correct = true;
            r.wall_secs = wall;
            r
        };
        let mut runs = vec![
            run(Method::WraithSql, 12.0),
            run(Method::WraithLocal, 10.0),
            run(Method::Floor, 8.0),
            run(Method::Ghost { chunk: 1000 }, 25.0),
        ];
        set_ratios(&mut runs);
        assert_eq!(runs[3].ratio_to_wraith, Some(2.5));
        assert_eq!(runs[1].ratio_to_floor, Some(1.25));
        assert_eq!(runs[0].ratio_to_native_inplace, None);
    }

    #[test]
    fn phases_come_from_the_report_or_its_stages() {
        let given = serde_json::json!({ "phases": { "copy": 1.5 }, "stages": [] });
        assert_eq!(
            phases_of(&given).and_then(|p| p.get("copy").copied()),
            Some(1.5)
        );
        let staged = serde_json::json!({
            "stages": [{ "stage": "copy", "secs": 2.0 }, { "stage": "checksum", "secs": 0.5 }],
            "copy_secs": 1.9, "index_restore_secs": 0.3, "total_secs": 3.0
        });
        let phases = phases_of(&staged).expect("phases");
        assert_eq!(phases.get("copy"), Some(&2.0));
        assert_eq!(phases.get("restore_indexes"), Some(&0.3));
        assert_eq!(phases.get("total"), Some(&3.0));
        assert_eq!(phases_of(&serde_json::json!({})), None);
    }

    #[test]
    fn the_tail_ends_at_the_last_second_over_twice_the_baseline() {
        let mut r = MethodRun::new(TableKind::Sysbench, Method::WraithSql, Condition::Load, 1);
        r.load_before = Some(LoadWindow {
            p95_ms: 2.0,
            ..LoadWindow::default()
        });
        r.load_after = Some(LoadWindow {
            per_second_p95_ms: vec![50.0, 3.0, 9.0, 2.0, 1.0],
            ..LoadWindow::default()
        });
        assert_eq!(load_tail_secs(&r), Some(3.0));
    }
}
