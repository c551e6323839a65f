//! How `wraith bench` shows its results: a line per event and per run as it
//! finishes, the markdown tables of the summary, and the SVG plot. The data
//! (runs, summary, the JSON shape) is `wraith_engine::testkit::bench::results`.

use std::path::Path;

use wraith_engine::testkit::bench::harness::{
    BenchEvent, BENCH_SCHEMA, EXPECTED_SCHEMA, PRISTINE_SCHEMA,
};
use wraith_engine::testkit::bench::results::{
    median, ApplyRun, BenchResults, Condition, ImportRun, Method, MethodRun, MethodSummary,
    TableInfo, LOADERS,
};

/// The line an event prints on stderr.
pub fn event_line(event: &BenchEvent<'_>) -> String {
    match event {
        BenchEvent::Skipped(s) => format!("note: {}; skipping {}", s.reason, s.method.name()),
        BenchEvent::OnServer(server) => format!(
            "benchmarking on {server} (schemas {BENCH_SCHEMA}, {PRISTINE_SCHEMA}, {EXPECTED_SCHEMA})"
        ),
        BenchEvent::StartingScratch { buffer_pool } => {
            format!("starting a scratch MariaDB (buffer pool {buffer_pool}) ...")
        }
        BenchEvent::ScratchStarted { port } => format!("scratch server on 127.0.0.1:{port}"),
        BenchEvent::NoServerCpu => {
            "note: the server's process is not on this machine; its CPU time is not reported".into()
        }
        BenchEvent::Generating { kind, table, rows } => {
            format!("\ngenerating {kind} table {table} with {rows} rows ...")
        }
        BenchEvent::Generated(info) => format!(
            "generated {} rows ({:.1} MiB of data and indexes) in {:.1}s; restores by {}",
            info.rows,
            info.table_bytes as f64 / 1048576.0,
            info.generate_secs,
            info.restore
        ),
        BenchEvent::Dumped { bytes, secs } => format!(
            "mydumper wrote {:.1} MiB in {secs:.1}s",
            *bytes as f64 / 1048576.0
        ),
        BenchEvent::LoaderRetry { loader, reason } => {
            format!("{loader}: {reason}; running it again")
        }
        BenchEvent::Run(run) => run_line(run),
        BenchEvent::Apply(run) => apply_line(run),
        BenchEvent::Import(run) => import_line(run),
    }
}

/// The summary as markdown tables, one per table and condition.
pub fn render_markdown(results: &BenchResults) -> String {
    let mut out = String::new();
    method_tables(results, &mut out);
    apply_table(results, &mut out);
    import_tables(results, &mut out);
    for s in &results.skipped {
        out += &format!("\nskipped {}: {}\n", s.method.name(), s.reason);
    }
    out
}

/// One table per generated table and condition: the methods' summaries.
fn method_tables(results: &BenchResults, out: &mut String) {
    for table in &results.tables {
        for condition in [Condition::Idle, Condition::Load] {
            let rows: Vec<&MethodSummary> = results
                .summary
                .iter()
                .filter(|s| s.table == table.kind && s.condition == condition)
                .collect();
            if rows.is_empty() {
                continue;
            }
            *out += &format!(
                "\n{} ({} rows, {:.0} MiB), {}, {} round(s), server {}:\n\n",
                table.table,
                table.rows,
                table.table_bytes as f64 / 1048576.0,
                match condition {
                    Condition::Idle => "idle".to_string(),
                    Condition::Load => format!(
                        "under {} tx/s of writes on {} connections",
                        results.settings.load_rate, results.settings.load_connections
                    ),
                },
                results.settings.repeat,
                results.server_version
            );
            *out += "| method | median s | min s | max s | rows/s | MiB/s | × INPLACE | cut-over ms | server CPU s | peak RSS MiB |";
            if condition == Condition::Load {
                *out +=
                    " load p95 before → during ms | load p99 during ms | load tx/s | load errors |";
            }
            *out += " result |\n";
            *out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";
            if condition == Condition::Load {
                *out += " ---: | ---: | ---: | ---: |";
            }
            *out += " --- |\n";
            for s in rows {
                *out += &format!(
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
                    *out += &format!(
                        " {} → {} | {} | {} | {} |",
                        opt(s.load_p95_before_ms, |v| format!("{v:.1}")),
                        opt(s.load_p95_during_ms, |v| format!("{v:.1}")),
                        opt(s.load_p99_during_ms, |v| format!("{v:.1}")),
                        opt(s.load_tps_during, |v| format!("{v:.0}")),
                        opt(s.load_errors_during, |v| v.to_string()),
                    );
                }
                *out += &format!(" {} |\n", if s.all_correct { "correct" } else { "WRONG" });
            }
        }
    }
}

/// The change apply measurements.
fn apply_table(results: &BenchResults, out: &mut String) {
    if !results.apply.is_empty() {
        *out += "\nchange apply (wraith-sql, bursts of single-statement updates while the cut-over is held):\n\n";
        *out += "| table | round | changes | apply s | changes/s | result |\n| --- | ---: | ---: | ---: | ---: | --- |\n";
        for a in &results.apply {
            *out += &format!(
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
}

/// `--import`: one table per generated table, a row per loader.
fn import_tables(results: &BenchResults, out: &mut String) {
    for table in &results.tables {
        let loads: Vec<&ImportRun> = results
            .import
            .iter()
            .filter(|r| r.table == table.kind)
            .collect();
        if loads.is_empty() {
            continue;
        }
        *out += &format!(
            "\nimport of a mydumper dump of {} ({} rows) into an empty schema, binlog on, 2 threads each, {} round(s), server {}:\n\n",
            table.table, table.rows, results.settings.repeat, results.server_version
        );
        *out += "| loader | median s | min s | max s | rows/s | × myloader speed | server CPU s | peak RSS MiB | result |\n";
        *out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
        for loader in LOADERS {
            let group: Vec<&&ImportRun> = loads.iter().filter(|r| r.loader == loader).collect();
            if group.is_empty() {
                continue;
            }
            let walls: Vec<f64> = group.iter().map(|r| r.wall_secs).collect();
            let wall = median(walls.clone()).unwrap_or(0.0);
            let min = walls.iter().copied().fold(f64::INFINITY, f64::min);
            let max = walls.iter().copied().fold(0.0, f64::max);
            *out += &format!(
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

/// One line per run, as it finishes.
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
