//! How `wraith bench` shows its results: a line per event and per run as it
//! finishes, the markdown tables of the summary, and the SVG plot. The data
//! (runs, summary, the JSON shape) is `wraith_engine::testkit::bench::results`.
//!
//! The markdown has two tables per table and condition, so neither is too
//! wide to read: the time each method took (with its ratios to the floor,
//! to the best wraith and to native INPLACE), then what it did around it
//! (the replica's lag and completion, the blocker, the writers' latency
//! before, during and after, the write debt it left); then wraith's phases.

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
        BenchEvent::StartingReplica => "starting its replica (a second scratch MariaDB) ...".into(),
        BenchEvent::ReplicaStarted { port } => {
            format!("replica on 127.0.0.1:{port}, replicating by GTID")
        }
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

/// The summary as markdown tables: per table and condition, the times and
/// the effects; then wraith's phases, the apply rate, the imports and what
/// was skipped.
pub fn render_markdown(results: &BenchResults) -> String {
    let mut out = String::new();
    method_tables(results, &mut out);
    phase_table(results, &mut out);
    apply_table(results, &mut out);
    import_tables(results, &mut out);
    for s in &results.skipped {
        out += &format!("\nskipped {}: {}\n", s.method, s.reason);
    }
    out
}

/// What a condition means, for a table's heading.
fn condition_text(results: &BenchResults, condition: Condition) -> String {
    let load = format!(
        "under {} tx/s of writes on {} connections",
        results.settings.load_rate, results.settings.load_connections
    );
    match condition {
        Condition::Idle => "idle".into(),
        Condition::Load => load,
        Condition::Blocker => format!(
            "{load}, and a transaction reading the table held {:.0}s from shortly before the final lock",
            results.settings.blocker_secs
        ),
    }
}

/// Two tables per generated table and condition: the time each method
/// took, then what it did to the writers, the replica and the server.
fn method_tables(results: &BenchResults, out: &mut String) {
    let replica = results.settings.replica;
    for table in &results.tables {
        for condition in Condition::ALL {
            let rows: Vec<&MethodSummary> = results
                .summary
                .iter()
                .filter(|s| s.table == table.kind && s.condition == condition)
                .collect();
            if rows.is_empty() {
                continue;
            }
            *out += &format!(
                "\n{} ({} rows, {:.0} MiB), {}, {} round(s), server {}{}:\n\n",
                table.table,
                table.rows,
                table.table_bytes as f64 / 1048576.0,
                condition_text(results, condition),
                results.settings.repeat,
                results.server_version,
                if replica { ", with a replica" } else { "" }
            );
            *out += "| method | median s | min–max s | rows/s | × floor | × wraith | × INPLACE | cut-over ms | server CPU s | peak RSS MiB | result |\n";
            *out +=
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
            for s in &rows {
                *out += &format!(
                    "| {} | {:.2} | {:.2}–{:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
                    s.method,
                    s.wall_secs_median,
                    s.wall_secs_min,
                    s.wall_secs_max,
                    s.rows_per_sec,
                    ratio(s.ratio_to_floor),
                    ratio(s.ratio_to_wraith),
                    ratio(s.ratio_to_native_inplace),
                    opt(s.cutover_blocked_ms, |v| format!("{v:.1}")),
                    opt(s.server_cpu_secs, |v| format!("{v:.1}")),
                    opt(s.peak_rss_mib, |v| format!("{v:.0}")),
                    if s.all_correct { "correct" } else { "WRONG" }
                );
            }
            effects_table(results, condition, &rows, out);
        }
    }
}

/// The second table of a condition: replica, blocker, writers, write debt.
fn effects_table(
    results: &BenchResults,
    condition: Condition,
    rows: &[&MethodSummary],
    out: &mut String,
) {
    let replica = results.settings.replica;
    let loaded = condition.loaded();
    let mut head = vec!["method"];
    if replica {
        head.extend(["replica max lag s", "complete on replica s"]);
    }
    if condition == Condition::Blocker {
        head.push("blocker opened s");
    }
    if loaded {
        head.extend([
            "worst write ms",
            "load p95 before → during → after ms",
            "p95 × before during / after",
            "tail s",
            "load errors",
        ]);
    }
    head.extend([
        "dirty % before → after",
        "ckpt age %",
        "history",
        "dirty back s",
    ]);
    *out += &format!("\n| {} |\n", head.join(" | "));
    *out += &format!(
        "| --- |{}\n",
        " ---: |".repeat(head.len().saturating_sub(1))
    );
    for s in rows {
        let mut cells = vec![s.method.to_string()];
        if replica {
            cells.push(opt(s.replica_max_lag_ms, |v| format!("{:.2}", v / 1000.0)));
            cells.push(opt(s.replica_complete_secs, |v| format!("{v:.2}")));
        }
        if condition == Condition::Blocker {
            cells.push(opt(s.blocker_opened_secs, |v| format!("{v:.2}")));
        }
        if loaded {
            cells.push(opt(s.load_max_during_ms, |v| format!("{v:.0}")));
            cells.push(format!(
                "{} → {} → {}",
                opt(s.load_p95_before_ms, |v| format!("{v:.1}")),
                opt(s.load_p95_during_ms, |v| format!("{v:.1}")),
                opt(s.load_p95_after_ms, |v| format!("{v:.1}")),
            ));
            cells.push(format!(
                "{} / {}",
                ratio(s.load_p95_during_ratio),
                ratio(s.load_p95_after_ratio)
            ));
            cells.push(opt(s.load_tail_secs, |v| format!("{v:.0}")));
            cells.push(opt(s.load_errors_during, |v| v.to_string()));
        }
        cells.push(format!(
            "{} → {}",
            opt(s.debt_before_dirty_pct, |v| format!("{v:.1}")),
            opt(s.debt_after_dirty_pct, |v| format!("{v:.1}"))
        ));
        cells.push(opt(s.debt_after_checkpoint_age_pct, |v| format!("{v:.1}")));
        cells.push(opt(s.debt_after_history_list_length, |v| format!("{v:.0}")));
        cells.push(opt(s.dirty_recovery_secs, |v| format!("{v:.1}")));
        *out += &format!("| {} |\n", cells.join(" | "));
    }
}

/// The order phases are shown in (wraith's stages, then the rest by name).
const PHASE_ORDER: [&str; 13] = [
    "create_shadow",
    "prepare_copy",
    "copy",
    "restore_indexes",
    "index_build",
    "analyze",
    "checksum",
    "overlap_saved_secs",
    "keep_in_sync",
    "await_cutover",
    "cut_over",
    "cleanup",
    "total",
];

/// wraith's time per phase, per method and condition (medians).
fn phase_table(results: &BenchResults, out: &mut String) {
    let with: Vec<&MethodSummary> = results
        .summary
        .iter()
        .filter(|s| s.phases.is_some())
        .collect();
    if with.is_empty() {
        return;
    }
    let mut names: Vec<String> = Vec::new();
    for s in &with {
        for name in s.phases.iter().flat_map(|p| p.keys()) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let rank = |n: &str| {
        PHASE_ORDER
            .iter()
            .position(|p| *p == n)
            .unwrap_or(usize::MAX)
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    *out += "\nwraith's phases (median s):\n\n";
    *out += &format!("| table | method | condition | {} |\n", names.join(" | "));
    *out += &format!("| --- | --- | --- |{}\n", " ---: |".repeat(names.len()));
    for s in with {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                opt(s.phases.as_ref().and_then(|p| p.get(n)).copied(), |v| {
                    format!("{v:.2}")
                })
            })
            .collect();
        *out += &format!(
            "| {} | {} | {} | {} |\n",
            s.table.as_str(),
            s.method,
            s.condition.name(),
            cells.join(" | ")
        );
    }
}

fn ratio(value: Option<f64>) -> String {
    opt(value, |v| format!("{v:.2}×"))
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
fn method_label(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 0.01 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
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
        "{:<8} {:<7} round {} {:<14} {:>7.2}s {:>8.0} rows/s {:>6.1} MiB/s",
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
    if let Some(phases) = &r.phases {
        let secs = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| phases.get(*k).copied())
                .unwrap_or(0.0)
        };
        line += &format!(
            " (copy {:.2}s, indexes {:.2}s, checksum {:.2}s)",
            secs(&["copy"]),
            secs(&["index_build", "restore_indexes"]),
            secs(&["checksum"])
        );
    }
    if let Some(cpu) = r.server_cpu_secs {
        line += &format!("  server CPU {cpu:.1}s");
    }
    if let Some(rss) = r.peak_rss_mib {
        line += &format!("  peak RSS {rss:.0} MiB");
    }
    if let Some(b) = &r.blocker {
        line += &match (b.fired_secs, b.opened_secs) {
            // Its read waited for the method's own lock: the method won the race.
            (Some(fired), Some(at)) if at - fired > 0.05 => {
                format!("  blocker at {fired:.2}s (its read queued until {at:.2}s)")
            }
            (_, Some(at)) => format!("  blocker at {at:.2}s"),
            _ => "  blocker not opened (the method ended first)".into(),
        };
    }
    if let (Some(b), Some(d)) = (&r.load_before, &r.load_during) {
        line += &format!(
            "  load p95 {:.1} → {:.1} ms, p99 {:.1} ms, worst {:.0} ms, {:.0} tx/s, {} errors",
            b.p95_ms,
            d.p95_ms,
            d.p99_ms,
            d.max_ms,
            d.transactions_per_sec,
            d.error_count()
        );
    }
    if let Some(a) = &r.load_after {
        line += &format!("; after: p95 {:.1} ms, worst {:.0} ms", a.p95_ms, a.max_ms);
    }
    if let Some(replica) = &r.replica {
        line += &format!(
            "  replica: max lag {}, complete at {}{}",
            opt(replica.max_lag_ms, |v| format!("{:.2}s", v / 1000.0)),
            opt(replica.complete_secs, |v| format!("{v:.2}s")),
            if replica.verified {
                ", equal"
            } else {
                ", NOT equal"
            }
        );
    }
    if let Some(debt) = &r.debt_after {
        line += &format!(
            "  left: {} dirty, ckpt age {}, history {}",
            opt(debt.dirty_pages_pct(), |v| format!("{v:.1}%")),
            opt(debt.checkpoint_age_pct(), |v| format!("{v:.1}%")),
            opt(debt.history_list_length, |v| v.to_string())
        );
    }
    line += if r.correct { "  correct" } else { "  WRONG" };
    if let Some(e) = &r.error {
        line += &format!(": {e}");
    }
    line
}

type Area<'a> =
    plotters::drawing::DrawingArea<plotters::prelude::SVGBackend<'a>, plotters::coord::Shift>;

/// The conditions' colours and bar offsets in the plots.
const CONDITION_BARS: [(Condition, f64, (u8, u8, u8)); 3] = [
    (Condition::Idle, -0.27, (70, 110, 180)),
    (Condition::Load, 0.0, (220, 120, 50)),
    (Condition::Blocker, 0.27, (150, 60, 150)),
];

/// One column of panels per table: the median time per method and
/// condition (min–max whiskers); the writers' p95 before, during and after
/// (with a load); the replica's maximum lag and the time until the change
/// was complete on it (with a replica).
pub fn plot(results: &BenchResults, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let panels = results.tables.len().max(1);
    let with_load = results
        .summary
        .iter()
        .any(|s| s.condition.loaded() && s.load_p95_during_ms.is_some());
    let with_replica = results
        .summary
        .iter()
        .any(|s| s.replica_complete_secs.is_some());
    let rows = 1 + usize::from(with_load) + usize::from(with_replica);
    let methods = results.methods();
    let width = (110 * methods.len() as u32).max(560);
    let root =
        SVGBackend::new(path, (width * panels as u32, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, panels));
    for (i, table) in results.tables.iter().enumerate() {
        let mut row = 0;
        if let Some(area) = areas.get(i) {
            plot_times(area, results, table, &methods)?;
        }
        if with_load {
            row += 1;
            if let Some(area) = areas.get(row * panels + i) {
                plot_latency(area, results, table, &methods)?;
            }
        }
        if with_replica {
            row += 1;
            if let Some(area) = areas.get(row * panels + i) {
                plot_replica(area, results, table, &methods)?;
            }
        }
    }
    root.present()?;
    Ok(())
}

fn plot_times(
    area: &Area<'_>,
    results: &BenchResults,
    table: &TableInfo,
    methods: &[Method],
) -> anyhow::Result<()> {
    use plotters::prelude::*;

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
    let names: Vec<String> = methods.iter().map(|m| m.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(methods.len().max(1))
        .x_label_formatter(&|x| method_label(&names, *x))
        .y_desc("seconds (median; whiskers min–max)")
        .draw()?;
    for (condition, offset, (r, g, b)) in CONDITION_BARS {
        let color = RGBColor(r, g, b);
        let bars: Vec<(f64, &MethodSummary)> = methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                find(results, table, *m, condition).map(|s| (i as f64 + offset, s))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                Rectangle::new(
                    [(x - 0.12, 0.0), (x + 0.12, s.wall_secs_median)],
                    color.filled(),
                )
            }))?
            .label(condition.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(bars.iter().map(|(x, s)| {
            PathElement::new(
                vec![(*x, s.wall_secs_min), (*x, s.wall_secs_max)],
                BLACK.stroke_width(1),
            )
        }))?;
        chart.draw_series(bars.iter().filter(|(_, s)| !s.all_correct).map(|(x, s)| {
            Text::new(
                "WRONG",
                (*x - 0.12, s.wall_secs_median),
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
    Ok(())
}

fn find<'r>(
    results: &'r BenchResults,
    table: &TableInfo,
    method: Method,
    condition: Condition,
) -> Option<&'r MethodSummary> {
    results
        .summary
        .iter()
        .find(|s| s.table == table.kind && s.method == method && s.condition == condition)
}

/// Under the load (`load`, else `blocker`): the writers' p95 during each
/// method and in its aftermath (bars, log scale) and right before it (black
/// ticks), medians over the rounds.
fn plot_latency(
    area: &Area<'_>,
    results: &BenchResults,
    table: &TableInfo,
    methods: &[Method],
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let condition = if results
        .summary
        .iter()
        .any(|s| s.table == table.kind && s.condition == Condition::Load)
    {
        Condition::Load
    } else {
        Condition::Blocker
    };
    let load: Vec<(f64, &MethodSummary)> = methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| find(results, table, *m, condition).map(|s| (i as f64, s)))
        .collect();
    let top = load
        .iter()
        .flat_map(|(_, s)| {
            [
                s.load_p95_during_ms,
                s.load_p95_before_ms,
                s.load_p95_after_ms,
            ]
        })
        .flatten()
        .fold(1.0, f64::max)
        * 3.0;
    let floor = 0.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: writers' p95 under {} tx/s ({}; tick: before)",
                table.table,
                results.settings.load_rate,
                condition.name()
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
    let names: Vec<String> = methods.iter().map(|m| m.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(methods.len().max(1))
        .x_label_formatter(&|x| method_label(&names, *x))
        .y_desc("ms (log scale)")
        .draw()?;
    let during_color = RGBColor(220, 120, 50);
    let after_color = RGBColor(120, 160, 90);
    chart
        .draw_series(load.iter().filter_map(|(x, s)| {
            let during = s.load_p95_during_ms?.max(floor);
            Some(Rectangle::new(
                [(x - 0.3, floor), (x - 0.02, during)],
                during_color.filled(),
            ))
        }))?
        .label("during")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], during_color.filled()));
    chart
        .draw_series(load.iter().filter_map(|(x, s)| {
            let after = s.load_p95_after_ms?.max(floor);
            Some(Rectangle::new(
                [(x + 0.02, floor), (x + 0.3, after)],
                after_color.filled(),
            ))
        }))?
        .label("after")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], after_color.filled()));
    chart.draw_series(load.iter().filter_map(|(x, s)| {
        let before = s.load_p95_before_ms?.max(floor);
        Some(PathElement::new(
            vec![(x - 0.38, before), (x + 0.38, before)],
            BLACK.stroke_width(2),
        ))
    }))?;
    chart.draw_series(load.iter().filter_map(|(x, s)| {
        let during = s.load_p95_during_ms?;
        Some(Text::new(
            format!("{during:.1}"),
            (x - 0.3, (during * 1.3).max(floor)),
            ("sans-serif", 12).into_font(),
        ))
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

/// The replica, idle (else the first condition measured): each method's
/// maximum lag and the time until its change was complete on the replica.
fn plot_replica(
    area: &Area<'_>,
    results: &BenchResults,
    table: &TableInfo,
    methods: &[Method],
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let pick = |m: Method| {
        Condition::ALL
            .into_iter()
            .find_map(|c| find(results, table, m, c).filter(|s| s.replica_complete_secs.is_some()))
    };
    let bars: Vec<(f64, &MethodSummary)> = methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| pick(*m).map(|s| (i as f64, s)))
        .collect();
    let top = bars
        .iter()
        .flat_map(|(_, s)| {
            [
                s.replica_complete_secs,
                s.replica_max_lag_ms.map(|v| v / 1000.0),
            ]
        })
        .flatten()
        .fold(0.001, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: replica (max lag; complete on the replica)",
                table.table
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(-0.5f64..(methods.len() as f64 - 0.5), 0f64..top)?;
    let names: Vec<String> = methods.iter().map(|m| m.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(methods.len().max(1))
        .x_label_formatter(&|x| method_label(&names, *x))
        .y_desc("seconds from the method's start")
        .draw()?;
    let lag_color = RGBColor(200, 60, 60);
    let complete_color = RGBColor(90, 90, 90);
    chart
        .draw_series(bars.iter().filter_map(|(x, s)| {
            let lag = s.replica_max_lag_ms? / 1000.0;
            Some(Rectangle::new(
                [(x - 0.3, 0.0), (x - 0.02, lag)],
                lag_color.filled(),
            ))
        }))?
        .label("max lag")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], lag_color.filled()));
    chart
        .draw_series(bars.iter().filter_map(|(x, s)| {
            Some(Rectangle::new(
                [(x + 0.02, 0.0), (x + 0.3, s.replica_complete_secs?)],
                complete_color.filled(),
            ))
        }))?
        .label("complete on the replica")
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 10, y + 5)], complete_color.filled())
        });
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
