//! `wraith bench`: wraith's backends against the server's own `ALTER TABLE`
//! and pt-online-schema-change, in one run on one server, idle and under a
//! write load.
//!
//! This module only turns the arguments into
//! [`BenchSettings`](wraith_engine::testkit::bench::BenchSettings), prints the
//! harness's events as they come and writes the results; what runs, what is
//! measured and how results are checked is `wraith_engine::testkit::bench`
//! (its harness page says how a benchmark is fair). The markdown table, the
//! run lines and the SVG plot are in [`report`].

mod report;

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::Args;
use wraith_engine::config::Config;
use wraith_engine::testkit::bench::{
    self, BenchError, BenchEvent, BenchSettings, Condition, Method, ServerChoice,
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
    /// Methods (comma-separated): wraith-sql, wraith-local, native-inplace, native-copy, pt-osc.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wraith-sql,wraith-local,native-inplace,native-copy,pt-osc"
    )]
    methods: Vec<String>,
    /// Write load in transactions per second for the `load` condition (0: idle only).
    #[arg(long, default_value_t = 200)]
    load_rate: u32,
    /// Connections of the write load.
    #[arg(long, default_value_t = 2)]
    load_connections: usize,
    /// Seconds the load runs before each method; its latency then is the baseline.
    #[arg(long, default_value_t = 5.0)]
    baseline_secs: f64,
    /// Conditions (comma-separated): idle, load.
    #[arg(long, value_delimiter = ',', default_value = "idle,load")]
    conditions: Vec<String>,
    /// Write the runs and the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the median time per method, idle and under load, as SVG to FILE.
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
    let methods = args
        .methods
        .iter()
        .map(|m| m.parse::<Method>().map_err(usage))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conditions = Vec::new();
    for c in &args.conditions {
        match c.trim() {
            "idle" => conditions.push(Condition::Idle),
            "load" => conditions.push(Condition::Load),
            other => {
                return Err(Failure::Config(format!(
                    "unknown condition {other:?}; use idle or load"
                )))
            }
        }
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
    })
}
