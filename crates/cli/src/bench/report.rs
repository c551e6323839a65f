//! The benchmark's results: per-run lines, the summary per method (median,
//! min, max, ratios), the markdown table, the JSON shape and the SVG plot.

use std::path::Path;

use serde::Serialize;
use wraith_engine::bench::tables::TableKind;

use super::{ApplyRun, Condition, ImportRun, Method, MethodRun, Skipped, TableInfo};

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

impl BenchResults {
    pub fn new(
        server_version: String,
        settings: &Settings,
        tables: Vec<TableInfo>,
        skipped: Vec<Skipped>,
        runs: Vec<MethodRun>,
        apply: Vec<ApplyRun>,
        import: Vec<ImportRun>,
    ) -> BenchResults {
        let mut summary = Vec::new();
        for table in &tables {
            for condition in [Condition::Idle, Condition::Load] {
                for method in Method::ALL {
                    let group: Vec<&MethodRun> = runs
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
            tables,
            skipped,
            summary,
            runs,
            apply,
            import,
        }
    }

    /// The summary as markdown tables, one per table and condition.
    pub fn render_markdown(&self) -> String {
        let mut out = String::new();
        for table in &self.tables {
            for condition in [Condition::Idle, Condition::Load] {
                let rows: Vec<&MethodSummary> = self
                    .summary
                    .iter()
                    .filter(|s| s.table == table.kind && s.condition == condition)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                out += &format!(
                    "\n{} ({} rows, {:.0} MiB), {}, {} round(s), server {}:\n\n",
                    table.table,
                    table.rows,
                    table.table_bytes as f64 / 1048576.0,
                    match condition {
                        Condition::Idle => "idle".to_string(),
                        Condition::Load => format!(
                            "under {} tx/s of writes on {} connections",
                            self.settings.load_rate, self.settings.load_connections
                        ),
                    },
                    self.settings.repeat,
                    self.server_version
                );
                out += "| method | median s | min s | max s | rows/s | MiB/s | × INPLACE | cut-over ms | server CPU s | peak RSS MiB |";
                if condition == Condition::Load {
                    out += " load p95 before → during ms | load p99 during ms | load tx/s | load errors |";
                }
                out += " result |\n";
                out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";
                if condition == Condition::Load {
                    out += " ---: | ---: | ---: | ---: |";
                }
                out += " --- |\n";
                for s in rows {
                    out += &format!(
                        "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {} | {} | {} | {} |",
                        s.method.name(),
                        s.wall_secs_median,
                        s.wall_secs_min,
                        s.wall_secs_max,
                        s.rows_per_sec,
                        s.mb_per_sec,
                        opt(s.ratio_to_native_inplace, |v| format!("{v:.2}×")),
                        opt(s.cutover_blocked_ms, |v| format!("{v:.1}")),
                        opt(s.server_cpu_secs, |v| format!("{v:.1}")),
                        opt(s.peak_rss_mib, |v| format!("{v:.0}")),
                    );
                    if condition == Condition::Load {
                        out += &format!(
                            " {} → {} | {} | {} | {} |",
                            opt(s.load_p95_before_ms, |v| format!("{v:.1}")),
                            opt(s.load_p95_during_ms, |v| format!("{v:.1}")),
                            opt(s.load_p99_during_ms, |v| format!("{v:.1}")),
                            opt(s.load_tps_during, |v| format!("{v:.0}")),
                            opt(s.load_errors_during, |v| v.to_string()),
                        );
                    }
                    out += &format!(" {} |\n", if s.all_correct { "correct" } else { "WRONG" });
                }
            }
        }
        if !self.apply.is_empty() {
            out += "\nchange apply (wraith-sql, bursts of single-statement updates while the cut-over is held):\n\n";
            out += "| table | round | changes | apply s | changes/s | result |\n| --- | ---: | ---: | ---: | ---: | --- |\n";
            for a in &self.apply {
                out += &format!(
                    "| {} | {} | {} | {:.2} | {:.0} | {} |\n",
                    a.table.as_str(),
                    a.round,
                    a.changes,
                    a.apply_secs,
                    a.changes_per_sec,
                    if a.correct { "correct" } else { "WRONG" }
                );
            }
        }
        for table in &self.tables {
            let loads: Vec<&ImportRun> = self
                .import
                .iter()
                .filter(|r| r.table == table.kind)
                .collect();
            if loads.is_empty() {
                continue;
            }
            out += &format!(
                "\nimport of a mydumper dump of {} ({} rows) into an empty schema, binlog on, 2 threads each, {} round(s), server {}:\n\n",
                table.table, table.rows, self.settings.repeat, self.server_version
            );
            out += "| loader | median s | min s | max s | rows/s | × myloader speed | server CPU s | peak RSS MiB | result |\n";
            out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
            for loader in ["myloader", "wraith-import-sql", "wraith-import-local"] {
                let group: Vec<&&ImportRun> = loads.iter().filter(|r| r.loader == loader).collect();
                if group.is_empty() {
                    continue;
                }
                let walls: Vec<f64> = group.iter().map(|r| r.wall_secs).collect();
                let wall = median(walls.clone()).unwrap_or(0.0);
                let min = walls.iter().copied().fold(f64::INFINITY, f64::min);
                let max = walls.iter().copied().fold(0.0, f64::max);
                out += &format!(
                    "| {loader} | {wall:.2} | {min:.2} | {max:.2} | {:.0} | {} | {} | {} | {} |\n",
                    table.rows as f64 / wall.max(1e-9),
                    opt(
                        median(
                            group
                                .iter()
                                .filter_map(|r| r.speedup_over_myloader)
                                .collect()
                        ),
                        |v| format!("{v:.2}×")
                    ),
                    opt(
                        median(group.iter().filter_map(|r| r.server_cpu_secs).collect()),
                        |v| format!("{v:.1}")
                    ),
                    opt(
                        median(group.iter().filter_map(|r| r.peak_rss_mib).collect()),
                        |v| format!("{v:.0}")
                    ),
                    if group.iter().all(|r| r.correct) {
                        "correct"
                    } else {
                        "WRONG"
                    }
                );
            }
        }
        for s in &self.skipped {
            out += &format!("\nskipped {}: {}\n", s.method.name(), s.reason);
        }
        out
    }
}

/// The method name under a whole x position of a plot, nothing between.
fn method_label(names: &[&str], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 0.01 && i >= 0.0 {
        names
            .get(i as usize)
            .map(|n| n.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    }
}

fn opt<T: Copy>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map(show).unwrap_or_else(|| "—".into())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
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

/// One line per run, as it finishes.
/// One line per dump load, printed as it finishes.
pub fn import_line(r: &ImportRun) -> String {
    match &r.error {
        Some(e) => format!(
            "{:<8} import round {} {:<20} FAILED: {e}",
            r.table.as_str(),
            r.round,
            r.loader
        ),
        None => format!(
            "{:<8} import round {} {:<20} {:>7.2}s {:>8.0} rows/s{}{}  correct",
            r.table.as_str(),
            r.round,
            r.loader,
            r.wall_secs,
            r.rows_per_sec,
            r.server_cpu_secs
                .map(|c| format!("  server CPU {c:.1}s"))
                .unwrap_or_default(),
            r.peak_rss_mib
                .map(|m| format!("  peak RSS {m:.0} MiB"))
                .unwrap_or_default()
        ),
    }
}

/// One line per apply measurement, printed as it finishes.
pub fn apply_line(a: &ApplyRun) -> String {
    match &a.error {
        Some(e) => format!(
            "{:<8} apply round {}: FAILED: {e}",
            a.table.as_str(),
            a.round
        ),
        None => format!(
            "{:<8} apply round {}: {} changes applied in {:.2}s: {:.0} changes/s{}",
            a.table.as_str(),
            a.round,
            a.changes,
            a.apply_secs,
            a.changes_per_sec,
            if a.correct { "" } else { " (WRONG result)" }
        ),
    }
}

pub fn run_line(r: &MethodRun) -> String {
    let mut line = format!(
        "{:<8} {:<4} round {} {:<14} {:>7.2}s {:>8.0} rows/s {:>6.1} MiB/s",
        r.table.as_str(),
        r.condition.name(),
        r.round,
        r.method.name(),
        r.wall_secs,
        r.rows_per_sec,
        r.mb_per_sec
    );
    if let Some(ms) = r.cutover_blocked_ms {
        line += &format!("  cut-over {ms:.1} ms");
    }
    if let Some(report) = &r.wraith_report {
        let secs = |key: &str| report[key].as_f64().unwrap_or(0.0);
        line += &format!(
            " (copy {:.2}s, indexes {:.2}s, checksum {:.2}s)",
            secs("copy_secs"),
            secs("index_restore_secs"),
            secs("checksum_secs")
        );
    }
    if let Some(cpu) = r.server_cpu_secs {
        line += &format!("  server CPU {cpu:.1}s");
    }
    if let Some(rss) = r.peak_rss_mib {
        line += &format!("  peak RSS {rss:.0} MiB");
    }
    if let (Some(b), Some(d)) = (&r.load_before, &r.load_during) {
        line += &format!(
            "  load p95 {:.1} → {:.1} ms, p99 {:.1} ms, {:.0} tx/s, {} errors",
            b.p95_ms,
            d.p95_ms,
            d.p99_ms,
            d.transactions_per_sec,
            d.error_count()
        );
    }
    line += if r.correct { "  correct" } else { "  WRONG" };
    if let Some(e) = &r.error {
        line += &format!(": {e}");
    }
    line
}

/// Bars of the median time per method, idle and under load, with min–max
/// whiskers; one panel per table.
pub fn plot(results: &BenchResults, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let panels = results.tables.len().max(1);
    let with_load = results
        .summary
        .iter()
        .any(|s| s.condition == Condition::Load && s.load_p95_during_ms.is_some());
    let rows = if with_load { 2 } else { 1 };
    let root = SVGBackend::new(path, (560 * panels as u32, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, panels));
    for (i, table) in results.tables.iter().enumerate() {
        let Some(area) = areas.get(i) else {
            continue;
        };
        let methods: Vec<Method> = Method::ALL
            .into_iter()
            .filter(|m| {
                results
                    .summary
                    .iter()
                    .any(|s| s.table == table.kind && s.method == *m)
            })
            .collect();
        let top = results
            .summary
            .iter()
            .filter(|s| s.table == table.kind)
            .map(|s| s.wall_secs_max)
            .fold(0.0, f64::max)
            .max(0.001)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} ({} rows): rebuild time", table.table, table.rows),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5f64..(methods.len() as f64 - 0.5), 0f64..top)?;
        let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(methods.len().max(1))
            .x_label_formatter(&|x| method_label(&names, *x))
            .y_desc("seconds (median; whiskers min–max)")
            .draw()?;
        for (condition, offset, color) in [
            (Condition::Idle, -0.2, RGBColor(70, 110, 180)),
            (Condition::Load, 0.2, RGBColor(220, 120, 50)),
        ] {
            let bars: Vec<(f64, &MethodSummary)> = methods
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    results
                        .summary
                        .iter()
                        .find(|s| {
                            s.table == table.kind && s.method == *m && s.condition == condition
                        })
                        .map(|s| (i as f64 + offset, s))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            chart
                .draw_series(bars.iter().map(|(x, s)| {
                    Rectangle::new(
                        [(x - 0.18, 0.0), (x + 0.18, s.wall_secs_median)],
                        color.filled(),
                    )
                }))?
                .label(condition.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            chart.draw_series(bars.iter().map(|(x, s)| {
                PathElement::new(
                    vec![(*x, s.wall_secs_min), (*x, s.wall_secs_max)],
                    BLACK.stroke_width(1),
                )
            }))?;
            chart.draw_series(bars.iter().filter(|(_, s)| !s.all_correct).map(|(x, s)| {
                Text::new(
                    "WRONG",
                    (*x - 0.15, s.wall_secs_median),
                    ("sans-serif", 12).into_font().color(&RED),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        if let Some(area) = areas.get(panels + i).filter(|_| with_load) {
            plot_latency(area, results, table, &methods)?;
        }
    }
    root.present()?;
    Ok(())
}

/// The writers' p95 during each method (bars, log scale) and right before it
/// (black ticks), medians over the rounds.
fn plot_latency(
    area: &plotters::drawing::DrawingArea<
        plotters::prelude::SVGBackend<'_>,
        plotters::coord::Shift,
    >,
    results: &BenchResults,
    table: &TableInfo,
    methods: &[Method],
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let load: Vec<(f64, &MethodSummary)> = methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            results
                .summary
                .iter()
                .find(|s| s.table == table.kind && s.method == *m && s.condition == Condition::Load)
                .map(|s| (i as f64, s))
        })
        .collect();
    let top = load
        .iter()
        .flat_map(|(_, s)| [s.load_p95_during_ms, s.load_p95_before_ms])
        .flatten()
        .fold(1.0, f64::max)
        * 3.0;
    let floor = 0.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: writers' p95 under {} tx/s (bar: during, tick: before)",
                table.table, results.settings.load_rate
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(
            -0.5f64..(methods.len() as f64 - 0.5),
            (floor..top).log_scale(),
        )?;
    let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(methods.len().max(1))
        .x_label_formatter(&|x| method_label(&names, *x))
        .y_desc("ms (log scale)")
        .draw()?;
    let color = RGBColor(220, 120, 50);
    chart.draw_series(load.iter().filter_map(|(x, s)| {
        let during = s.load_p95_during_ms?.max(floor);
        Some(Rectangle::new(
            [(x - 0.25, floor), (x + 0.25, during)],
            color.filled(),
        ))
    }))?;
    chart.draw_series(load.iter().filter_map(|(x, s)| {
        let before = s.load_p95_before_ms?.max(floor);
        Some(PathElement::new(
            vec![(x - 0.35, before), (x + 0.35, before)],
            BLACK.stroke_width(2),
        ))
    }))?;
    chart.draw_series(load.iter().filter_map(|(x, s)| {
        let during = s.load_p95_during_ms?;
        Some(Text::new(
            format!("{during:.1}"),
            (x - 0.2, (during * 1.3).max(floor)),
            ("sans-serif", 12).into_font(),
        ))
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(super::median(vec![]), None);
    }
}
