//! `wraith bench`: wraith's backends against the server's own `ALTER TABLE`,
//! its floor for the same work, pt-online-schema-change and gh-ost, in one
//! run on one server, idle, under a write load, and under the write load
//! with a long transaction at the final lock; with `--replica`, on a real
//! replica too.
//!
//! This module only turns the arguments into
//! [`BenchSettings`](wraith_engine::testkit::bench::BenchSettings), prints the
//! harness's events as they come and writes the results; what runs, what is
//! measured and how results are checked is `wraith_engine::testkit::bench`
//! (its harness page says how a benchmark is fair). The markdown table, the
//! run lines and the SVG plot are in [`report`].

mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use wraith_engine::config::Config;
use wraith_engine::testkit::bench::results::parse_methods;
use wraith_engine::testkit::bench::{
    self, BenchError, BenchEvent, BenchSettings, Condition, ServerChoice,
};

use crate::{Failure, Outcome};

#[derive(Args)]
pub struct BenchArgs {
    /// Tables to generate and rebuild: sysbench, wide, uuid (comma-separated).
    #[arg(long = "table", value_delimiter = ',', default_value = "sysbench")]
    tables: Vec<String>,
    /// Rows per table [default: sysbench 2000000, wide 500000, uuid 1000000].
    #[arg(long)]
    rows: Option<u64>,
    /// Rounds; each round runs every method once per condition, interleaved.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Methods (comma-separated): wraith-sql, wraith-local, wraith-paced
    /// (wraith-sql with --paced-checkpoint-age), wraith-deferred (wraith-sql
    /// building the indexes after the copy even with --replica), native-inplace,
    /// native-copy, pt-osc, ghost (one run per --ghost-chunk; ghost-N for
    /// one chunk size), floor (one INSERT … SELECT plus the index build). A
    /// peer that is not installed is reported as skipped.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wraith-sql,wraith-local,wraith-paced,native-inplace,native-copy,pt-osc,ghost,floor"
    )]
    methods: Vec<String>,
    /// The gh-ost binary [default: gh-ost in PATH; without one, gh-ost is skipped].
    #[arg(long, value_name = "PATH")]
    ghost_bin: Option<PathBuf>,
    /// gh-ost's --chunk-size values (comma-separated); each is a method of its own.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    ghost_chunk: Vec<u64>,
    /// Write load in transactions per second for the `load` condition (0: idle only).
    #[arg(long, default_value_t = 200)]
    load_rate: u32,
    /// Connections of the write load.
    #[arg(long, default_value_t = 2)]
    load_connections: usize,
    /// Seconds the load runs before each method; its latency then is the baseline.
    #[arg(long, default_value_t = 5.0)]
    baseline_secs: f64,
    /// Conditions (comma-separated): idle; load (the write load);
    /// blocker (the write load, and a transaction that reads the table
    /// shortly before each method's final lock and stays open --blocker-secs).
    #[arg(long, value_delimiter = ',', default_value = "idle,load,blocker")]
    conditions: Vec<String>,
    /// Seconds the blocker holds its transaction open.
    #[arg(long, default_value_t = 10.0)]
    blocker_secs: f64,
    /// Seconds the load runs on after each method (its aftermath is
    /// measured); also the longest an idle run waits for the dirty pages.
    #[arg(long, default_value_t = 60.0)]
    aftermath_secs: f64,
    /// Start a second scratch server replicating from the first and measure
    /// each method's replica lag and the time until it is complete there
    /// (not with --config).
    #[arg(long)]
    replica: bool,
    /// With --replica: the lag (seconds) wraith, pt-osc and gh-ost throttle at.
    #[arg(long, default_value_t = 1.0)]
    max_lag: f64,
    /// wraith-paced's `[throttle] max_checkpoint_age_pct`: the share of the
    /// redo log not yet checkpointed above which its copy waits.
    #[arg(long, default_value_t = 50)]
    paced_checkpoint_age: u64,
    /// Write the runs and the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the median time per method and condition, the writers' p95
    /// before, during and after, and the replica's lag, as SVG to FILE.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Benchmark on the server of this job config's [source] instead of a
    /// scratch server (in schemas wraith_bench, wraith_bench_pristine and
    /// wraith_bench_expected, which are dropped and recreated).
    #[arg(long, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// The scratch server's InnoDB buffer pool.
    #[arg(long, default_value = "2G")]
    buffer_pool: String,
    /// Rows each change burst updates when measuring the change apply rate
    /// (once per table and round, with wraith-sql; 0: not measured).
    #[arg(long, default_value_t = 500_000)]
    apply_burst: u64,
    /// Benchmark bulk import instead of rebuilds: each table is dumped by
    /// mydumper, then loaded by myloader (2 threads, binlog on) and by
    /// `wraith import` with each backend, alternating.
    #[arg(long)]
    import: bool,
}

pub async fn bench(args: BenchArgs) -> Result<Outcome, Failure> {
    let json = args.json.clone();
    let plot = args.plot.clone();
    let settings = settings(args)?;
    let mut on_event = |event: BenchEvent<'_>| eprintln!("{}", report::event_line(&event));
    let results = bench::run(settings, &mut on_event)
        .await
        .map_err(|e| match e {
            BenchError::Usage(msg) => Failure::Config(msg),
            e => Failure::Runtime(e.into()),
        })?;
    println!("{}", report::render_markdown(&results));
    if let Some(path) = &json {
        let json = serde_json::to_string_pretty(&results).context("serialising the results")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = &plot {
        report::plot(&results, path).with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    let wrong = results.wrong();
    if wrong > 0 {
        return Err(Failure::Runtime(anyhow!(
            "{wrong} run(s) failed or gave a result that differs from what the table must hold (marked WRONG above)"
        )));
    }
    Ok(Outcome::Done)
}

/// The harness's settings from the arguments (exit 2 on a bad one).
fn settings(args: BenchArgs) -> Result<BenchSettings, Failure> {
    let usage = |e: BenchError| Failure::Config(e.to_string());
    let tables = args
        .tables
        .iter()
        .map(|t| t.parse().map_err(usage))
        .collect::<Result<Vec<_>, _>>()?;
    let methods = parse_methods(&args.methods, &args.ghost_chunk).map_err(usage)?;
    let mut conditions = Vec::new();
    for c in &args.conditions {
        let condition = c.parse::<Condition>().map_err(usage)?;
        if !conditions.contains(&condition) {
            conditions.push(condition);
        }
    }
    for (flag, value) in [
        ("--blocker-secs", args.blocker_secs),
        ("--aftermath-secs", args.aftermath_secs),
        ("--baseline-secs", args.baseline_secs),
    ] {
        if !(0.0..=86_400.0).contains(&value) {
            return Err(Failure::Config(format!(
                "{flag} {value} is out of range; give 0 to 86400 seconds"
            )));
        }
    }
    if !(0.01..=3600.0).contains(&args.max_lag) {
        return Err(Failure::Config(format!(
            "--max-lag {} is out of range; give 0.01 to 3600 seconds, e.g. 1",
            args.max_lag
        )));
    }
    if !(1..=99).contains(&args.paced_checkpoint_age) {
        return Err(Failure::Config(format!(
            "--paced-checkpoint-age {} is out of range; give a share of the redo log from 1 to 99, e.g. 50",
            args.paced_checkpoint_age
        )));
    }
    if args.replica && args.config.is_some() {
        return Err(Failure::Config(
            "--replica starts a second scratch server replicating from the benchmark's own scratch \
             server; it cannot be used with --config (an operator's server): drop one of them"
                .into(),
        ));
    }
    let server = match &args.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| Failure::Config(e.to_string()))?;
            ServerChoice::External(Box::new(config.source))
        }
        None => ServerChoice::Scratch {
            buffer_pool: args.buffer_pool,
        },
    };
    Ok(BenchSettings {
        tables,
        rows: args.rows,
        repeat: args.repeat,
        methods,
        conditions,
        load_rate: args.load_rate,
        load_connections: args.load_connections,
        baseline_secs: args.baseline_secs,
        server,
        apply_burst: args.apply_burst,
        import: args.import,
        wraith_exe: std::env::current_exe().context("finding the wraith binary")?,
        ghost_bin: args.ghost_bin,
        replica: args.replica,
        max_lag: Duration::from_secs_f64(args.max_lag),
        paced_checkpoint_age_pct: args.paced_checkpoint_age,
        blocker_secs: args.blocker_secs,
        aftermath_secs: args.aftermath_secs,
    })
}
