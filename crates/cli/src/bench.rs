//! `wraith bench`: wraith's backends against the server's own `ALTER TABLE`
//! and pt-online-schema-change, in one run on one server, idle and under a
//! write load.
//!
//! For each generated table: a pristine copy is made once; then, for each
//! round, each condition (idle, load) and each method in turn (A B C A B C …),
//! the table is restored from the pristine copy, the method rebuilds it, and the
//! result is checked (row count, `CHECKSUM TABLE`, definition) against the
//! pristine copy, or under load against the pristine copy with the load's
//! committed transactions replayed: a wrong result is reported as wrong, never
//! as fast. wraith runs as a child `wraith run` of this same binary (its wall
//! time includes preflight and cut-over; its peak RSS comes from `wait4`);
//! pt-online-schema-change runs as a child too; native ALTERs run on a
//! connection of this process. The server's CPU time per method comes from
//! `/proc/<pid>/stat`.
//!
//! The pieces that touch the database (tables, restores, fingerprints, the
//! load) live in `wraith_engine::bench`; the statistics, the table, the JSON
//! and the plot in [`report`].

mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use clap::Args;
use serde::Serialize;
use wraith_engine::bench::load::{LoadWindow, WriteLoad, WriteLoadConfig};
use wraith_engine::bench::pristine::{self, Comparison, Pristine};
use wraith_engine::bench::process_cpu_secs;
use wraith_engine::bench::tables::TableKind;
use wraith_engine::config::{Config, ConnectionConfig};
use wraith_engine::mysql_async::prelude::Queryable;
use wraith_engine::mysql_async::{Conn, Opts, OptsBuilder, Pool};
use wraith_engine::scratch::{ScratchError, ScratchOptions, ScratchServer};

use crate::{Failure, Outcome};

/// The schema the methods run in (every table in it is dropped before each method).
const BENCH_SCHEMA: &str = "wraith_bench";
/// The schema of the pristine copies.
const PRISTINE_SCHEMA: &str = "wraith_bench_pristine";
/// The schema where the expected result of a run under load is rebuilt.
const EXPECTED_SCHEMA: &str = "wraith_bench_expected";
/// The schema dumps are loaded into by `--import`.
const IMPORT_SCHEMA: &str = "wraith_bench_import";

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
    const ALL: [Method; 5] = [
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

    fn parse(s: &str) -> Result<Method, Failure> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| {
                Failure::Config(format!(
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

/// Where the benchmark runs.
enum BenchServer {
    Scratch(ScratchServer),
    External(Box<ConnectionConfig>),
}

impl BenchServer {
    fn opts(&self) -> Result<Opts, Failure> {
        match self {
            BenchServer::Scratch(s) => Ok(s.opts(None).into()),
            BenchServer::External(c) => {
                let opts = wraith_engine::server::connection_opts(c).map_err(Failure::Config)?;
                Ok(OptsBuilder::from_opts(opts).db_name(None::<String>).into())
            }
        }
    }

    fn owned(&self) -> bool {
        matches!(self, BenchServer::Scratch(_))
    }

    /// The `[source]` section of a job config for this server.
    fn source_toml(&self) -> Result<String, Failure> {
        self.connection_toml("source", BENCH_SCHEMA)
    }

    /// mydumper's and myloader's connection options for this server.
    fn dump_tool_args(&self) -> Result<Vec<String>, Failure> {
        let mut args = Vec::new();
        match self {
            BenchServer::Scratch(s) => {
                args.extend([
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-P".into(),
                    s.port().to_string(),
                ]);
                args.extend(["-u".into(), "root".into()]);
            }
            BenchServer::External(c) => {
                match &c.socket {
                    Some(socket) => args.extend(["-S".into(), socket.display().to_string()]),
                    None => {
                        args.extend(["-h".into(), c.host.clone(), "-P".into(), c.port.to_string()])
                    }
                }
                args.extend(["-u".into(), c.user.clone()]);
                if let Some(password) = c.resolve_password().map_err(Failure::Config)? {
                    args.extend(["-p".into(), password.expose().to_string()]);
                }
            }
        }
        Ok(args)
    }

    /// A `[section]` of a job config that connects to this server's `database`.
    fn connection_toml(&self, section: &str, database: &str) -> Result<String, Failure> {
        let mut toml = format!("[{section}]\n");
        match self {
            BenchServer::Scratch(s) => {
                toml += &format!(
                    "host = \"127.0.0.1\"\nport = {}\nuser = \"root\"\n",
                    s.port()
                );
            }
            BenchServer::External(c) => {
                toml += &format!(
                    "host = {:?}\nport = {}\nuser = {:?}\n",
                    c.host, c.port, c.user
                );
                if let Some(socket) = &c.socket {
                    toml += &format!("socket = {:?}\n", socket.display().to_string());
                }
                if let Some(password) = c.resolve_password().map_err(Failure::Config)? {
                    toml += &format!("password = {:?}\n", password.expose());
                }
            }
        }
        toml += &format!("database = {database:?}\n");
        Ok(toml)
    }

    /// The DSN pt-online-schema-change connects with.
    fn ptosc_dsn(&self, table: &str) -> Result<String, Failure> {
        let mut dsn = format!("D={BENCH_SCHEMA},t={table}");
        match self {
            BenchServer::Scratch(s) => dsn += &format!(",h=127.0.0.1,P={},u=root", s.port()),
            BenchServer::External(c) => {
                match &c.socket {
                    Some(socket) => dsn += &format!(",S={}", socket.display()),
                    None => dsn += &format!(",h={},P={}", c.host, c.port),
                }
                dsn += &format!(",u={}", c.user);
                if let Some(password) = c.resolve_password().map_err(Failure::Config)? {
                    dsn += &format!(",p={}", password.expose());
                }
            }
        }
        Ok(dsn)
    }
}

/// Everything a run needs.
struct Bench {
    server: BenchServer,
    pool: Pool,
    server_pid: Option<u32>,
    work_dir: tempfile::TempDir,
    args: BenchArgs,
    ptosc: Option<PathBuf>,
    /// mydumper and myloader, for `--import`.
    dump_tools: Option<(PathBuf, PathBuf)>,
}

pub async fn bench(args: BenchArgs) -> Result<Outcome, Failure> {
    let kinds = args
        .tables
        .iter()
        .map(|t| {
            t.parse::<TableKind>()
                .map_err(|e| Failure::Config(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut methods = args
        .methods
        .iter()
        .map(|m| Method::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conditions = Vec::new();
    for c in &args.conditions {
        match c.trim() {
            "idle" => conditions.push(Condition::Idle),
            "load" if args.load_rate > 0 => conditions.push(Condition::Load),
            "load" => {}
            other => {
                return Err(Failure::Config(format!(
                    "unknown condition {other:?}; use idle or load"
                )))
            }
        }
    }
    if conditions.is_empty() || kinds.is_empty() || methods.is_empty() || args.repeat == 0 {
        return Err(Failure::Config(
            "nothing to run: give at least one table, method and condition, and --repeat 1 or more (--load-rate 0 leaves only idle)".into(),
        ));
    }
    let mut skipped = Vec::new();
    let dump_tools = if args.import {
        let mydumper = find_in_path("mydumper");
        let myloader = find_in_path("myloader");
        match (mydumper, myloader) {
            (Some(d), Some(l)) => Some((d, l)),
            _ => {
                return Err(Failure::Config(
                    "--import needs mydumper and myloader in PATH (Debian package mydumper; scripts/setup installs it)".into(),
                ))
            }
        }
    } else {
        None
    };
    let ptosc = find_in_path("pt-online-schema-change");
    if methods.contains(&Method::PtOsc) && ptosc.is_none() {
        eprintln!("note: pt-online-schema-change is not installed (Debian: apt-get install percona-toolkit); skipping it");
        skipped.push(Skipped {
            method: Method::PtOsc,
            reason: "pt-online-schema-change not found in PATH (Debian package percona-toolkit)"
                .into(),
        });
        methods.retain(|m| *m != Method::PtOsc);
    }

    let server = match &args.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| Failure::Config(e.to_string()))?;
            eprintln!(
                "benchmarking on {} (schemas {BENCH_SCHEMA}, {PRISTINE_SCHEMA}, {EXPECTED_SCHEMA})",
                config.source.describe()
            );
            BenchServer::External(Box::new(config.source))
        }
        None => {
            eprintln!(
                "starting a scratch MariaDB (buffer pool {}) ...",
                args.buffer_pool
            );
            let options = ScratchOptions {
                buffer_pool: args.buffer_pool.clone(),
                // The peers were measured with a 512M redo log; a small one
                // would slow every method with checkpoints.
                extra_args: vec!["--innodb-log-file-size=512M".into()],
                ..ScratchOptions::default()
            };
            let server = tokio::task::spawn_blocking(move || start_scratch(options))
                .await
                .context("scratch server thread")?
                .context("starting the scratch server")?;
            eprintln!("scratch server on 127.0.0.1:{}", server.port());
            BenchServer::Scratch(server)
        }
    };
    let pool = Pool::new(server.opts()?);
    let mut conn = pool.get_conn().await.context("connecting to the server")?;
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .context("SELECT VERSION()")?;
    let server_pid = server_pid(&mut conn).await;
    if server_pid.is_none() {
        eprintln!(
            "note: the server's process is not on this machine; its CPU time is not reported"
        );
    }
    let work_dir = tempfile::Builder::new()
        .prefix("wraith-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let bench = Bench {
        server,
        pool: pool.clone(),
        server_pid,
        work_dir,
        args,
        ptosc,
        dump_tools,
    };

    let mut tables = Vec::new();
    let mut runs = Vec::new();
    let mut apply_runs = Vec::new();
    let mut import_runs = Vec::new();
    for kind in kinds {
        let rows = bench.args.rows.unwrap_or(kind.default_rows());
        eprintln!(
            "\ngenerating {kind} table {} with {rows} rows ...",
            kind.table_name()
        );
        let started = Instant::now();
        let files = bench.work_dir.path().join("pristine").join(kind.as_str());
        let pristine = Pristine::create(&mut conn, PRISTINE_SCHEMA, kind, rows, &files)
            .await
            .context("generating the table")?;
        let info = TableInfo {
            kind,
            table: pristine.table.clone(),
            rows: pristine.rows,
            table_bytes: pristine.table_bytes,
            generate_secs: started.elapsed().as_secs_f64(),
            restore: pristine.restore_method(),
        };
        eprintln!(
            "generated {} rows ({:.1} MiB of data and indexes) in {:.1}s; restores by {}",
            info.rows,
            info.table_bytes as f64 / 1048576.0,
            info.generate_secs,
            info.restore
        );
        tables.push(info);
        if bench.args.import {
            import_runs.extend(bench.import_rounds(&mut conn, &pristine).await?);
        }
        // `--import` benchmarks loads only.
        let rebuild_rounds = if bench.args.import {
            0
        } else {
            bench.args.repeat
        };
        for round in 1..=rebuild_rounds {
            if bench.args.apply_burst > 0 {
                let run = bench.measure_apply(&mut conn, &pristine, round).await;
                eprintln!("{}", report::apply_line(&run));
                apply_runs.push(run);
            }
            for &condition in &conditions {
                let mut round_runs = Vec::new();
                for &method in &methods {
                    let run = bench
                        .run_method(&mut conn, &pristine, method, condition, round)
                        .await;
                    eprintln!("{}", report::run_line(&run));
                    round_runs.push(run);
                }
                report::set_ratios(&mut round_runs);
                runs.extend(round_runs);
            }
        }
        let qp = wraith_engine::server::quote_ident(PRISTINE_SCHEMA);
        let _ = conn
            .query_drop(format!(
                "DROP TABLE IF EXISTS {qp}.{}",
                wraith_engine::server::quote_ident(&pristine.table)
            ))
            .await;
    }
    for schema in [
        BENCH_SCHEMA,
        PRISTINE_SCHEMA,
        EXPECTED_SCHEMA,
        IMPORT_SCHEMA,
    ] {
        let _ = conn
            .query_drop(format!(
                "DROP DATABASE IF EXISTS {}",
                wraith_engine::server::quote_ident(schema)
            ))
            .await;
    }
    drop(conn);
    pool.disconnect().await.ok();

    let results = report::BenchResults::new(
        version.unwrap_or_default(),
        &bench.args_summary(),
        tables,
        skipped,
        runs,
        apply_runs,
        import_runs,
    );
    println!("{}", results.render_markdown());
    if let Some(path) = &bench.args.json {
        let json = serde_json::to_string_pretty(&results).context("serialising the results")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = &bench.args.plot {
        report::plot(&results, path).with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    let wrong = results.runs.iter().filter(|r| !r.correct).count()
        + results.apply.iter().filter(|r| !r.correct).count()
        + results.import.iter().filter(|r| !r.correct).count();
    if wrong > 0 {
        return Err(Failure::Runtime(anyhow!(
            "{wrong} run(s) failed or gave a result that differs from what the table must hold (marked WRONG above)"
        )));
    }
    Ok(Outcome::Done)
}

impl Bench {
    fn args_summary(&self) -> report::Settings {
        report::Settings {
            repeat: self.args.repeat,
            load_rate: self.args.load_rate,
            load_connections: self.args.load_connections,
            baseline_secs: self.args.baseline_secs,
            scratch_server: self.server.owned(),
        }
    }

    fn load_config(&self, pristine: &Pristine) -> WriteLoadConfig {
        WriteLoadConfig {
            schema: BENCH_SCHEMA.into(),
            kind: pristine.kind,
            rows: pristine.rows,
            rate: self.args.load_rate,
            connections: self.args.load_connections,
            seed: 42,
        }
    }

    async fn run_method(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        method: Method,
        condition: Condition,
        round: u32,
    ) -> MethodRun {
        let mut run = MethodRun {
            table: pristine.kind,
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
        };
        if let Err(e) = self.measure(conn, pristine, &mut run).await {
            run.correct = false;
            run.error = Some(format!("{e:#}"));
        }
        run
    }

    /// The same start for every timed run: `pristine` restored into
    /// [`BENCH_SCHEMA`] (when given), the scratch server's earlier binlogs
    /// dropped, dirty pages flushed.
    async fn fresh_start(
        &self,
        conn: &mut Conn,
        pristine: Option<&Pristine>,
    ) -> anyhow::Result<()> {
        if let Some(pristine) = pristine {
            pristine
                .restore(conn, BENCH_SCHEMA)
                .await
                .context("restoring the table")?;
        }
        if self.server.owned() {
            // Earlier runs' binlogs are of no use; the scratch server is ours.
            conn.query_drop("RESET MASTER")
                .await
                .context("RESET MASTER")?;
        }
        pristine::flush_dirty_pages(conn, Duration::from_secs(120)).await;
        Ok(())
    }

    async fn measure(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut MethodRun,
    ) -> anyhow::Result<()> {
        self.fresh_start(conn, Some(pristine)).await?;
        let load_config = self.load_config(pristine);
        let load = match run.condition {
            Condition::Idle => None,
            Condition::Load => {
                let load = WriteLoad::start(self.pool.clone(), load_config.clone());
                tokio::time::sleep(Duration::from_secs_f64(self.args.baseline_secs.max(0.5))).await;
                run.load_before = Some(load.end_window().await);
                Some(load)
            }
        };
        let cpu_before = self.server_pid.and_then(process_cpu_secs);
        let started = Instant::now();
        let outcome = self.execute(conn, pristine, run).await;
        run.wall_secs = started.elapsed().as_secs_f64();
        let cpu_after = self.server_pid.and_then(process_cpu_secs);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            run.server_cpu_secs = Some(b - a);
        }
        let log = match load {
            Some(load) => {
                run.load_during = Some(load.end_window().await);
                Some(load.stop().await)
            }
            None => None,
        };
        outcome?;
        run.rows_per_sec = pristine.rows as f64 / run.wall_secs;
        run.mb_per_sec = pristine.table_bytes as f64 / 1048576.0 / run.wall_secs;
        let expected = match &log {
            None => pristine.fingerprint.clone(),
            Some(log) => {
                if log.uncertain > 0 {
                    anyhow::bail!(
                        "{} load transaction(s) lost their connection at COMMIT; the expected content is unknown",
                        log.uncertain
                    );
                }
                pristine
                    .restore(conn, EXPECTED_SCHEMA)
                    .await
                    .context("restoring the expected table")?;
                log.replay(conn, &load_config, EXPECTED_SCHEMA).await?;
                pristine::fingerprint(conn, EXPECTED_SCHEMA, &pristine.table).await?
            }
        };
        let result = pristine::fingerprint(conn, BENCH_SCHEMA, &pristine.table).await?;
        let comparison = result.compare(&expected);
        run.comparison = Some(comparison);
        run.correct = comparison.all_match();
        if !run.correct {
            run.error = Some(format!(
                "result differs: {} rows (expected {}), checksum {:?} (expected {:?}), definition {}",
                result.rows,
                expected.rows,
                result.checksum,
                expected.checksum,
                if comparison.definition_match { "equal" } else { "differs" }
            ));
        }
        Ok(())
    }

    /// Runs the method itself: what is timed.
    async fn execute(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut MethodRun,
    ) -> anyhow::Result<()> {
        let qt = format!(
            "{}.{}",
            wraith_engine::server::quote_ident(BENCH_SCHEMA),
            wraith_engine::server::quote_ident(&pristine.table)
        );
        match run.method {
            Method::NativeInplace => conn
                .query_drop(format!(
                    "ALTER TABLE {qt} FORCE, ALGORITHM=INPLACE, LOCK=NONE"
                ))
                .await
                .context("ALTER TABLE ... ALGORITHM=INPLACE"),
            Method::NativeCopy => conn
                .query_drop(format!("ALTER TABLE {qt} FORCE, ALGORITHM=COPY"))
                .await
                .context("ALTER TABLE ... ALGORITHM=COPY"),
            Method::WraithSql | Method::WraithLocal => self.run_wraith(pristine, run).await,
            Method::PtOsc => self.run_ptosc(pristine, run).await,
        }
    }

    async fn run_wraith(&self, pristine: &Pristine, run: &mut MethodRun) -> anyhow::Result<()> {
        let backend = if run.method == Method::WraithLocal {
            "local"
        } else {
            "sql"
        };
        let name = format!(
            "{}-{}-{}-{}",
            pristine.kind,
            run.method.name(),
            run.condition.name(),
            run.round
        );
        let job = self.wraith_job(pristine, backend, &name, "")?;
        let child = job.run().await;
        let child = child?;
        run.peak_rss_mib = child.peak_rss_mib;
        let report = child.report()?;
        run.cutover_blocked_ms = report["cutover_blocked_ms"].as_f64();
        run.wraith_report = Some(report);
        Ok(())
    }

    /// A `wraith run` of `pristine`'s table in [`BENCH_SCHEMA`] with `backend`;
    /// `cutover_toml` goes under `[cutover]`.
    fn wraith_job(
        &self,
        pristine: &Pristine,
        backend: &str,
        name: &str,
        cutover_toml: &str,
    ) -> anyhow::Result<WraithJob> {
        let dir = self.work_dir.path();
        // A sort directory of its own: a failed run's engines are never found by the next.
        let sort_dir = dir.join(format!("sort-{name}"));
        let socket = dir.join(format!("{name}.sock"));
        let toml = format!(
            "{source}\n[[table]]\nname = {table:?}\nalter = \"FORCE\"\n\n[copy]\nbackend = {backend:?}\n\n\
             [local]\nsort_dir = {sort:?}\n\n[cutover]\ndrop_old_table = true\n{cutover_toml}\n\
             [control]\nsocket = {socket:?}\n\n\
             [checkpoint]\nstore = \"file\"\npath = {checkpoint:?}\n",
            source = self.server.source_toml().map_err(failure_to_anyhow)?,
            table = pristine.table,
            sort = sort_dir.display().to_string(),
            socket = socket.display().to_string(),
            checkpoint = dir.join(format!("{name}.checkpoint")).display().to_string(),
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml).context("writing the run's config")?;
        let exe = std::env::current_exe().context("finding the wraith binary")?;
        let mut command = Command::new(exe);
        command.arg("run").arg("--json").arg(&config_path);
        Ok(WraithJob {
            command,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            sort_dir,
            socket,
        })
    }

    /// The change apply rate: wraith-sql copies the table and holds its
    /// cut-over (postpone flag); then one statement updates `apply_burst`
    /// rows (`k = k + 1`) and, once that is applied, another undoes it. The
    /// time counted runs from each statement's commit (when its changes reach
    /// the binlog at once) until wraith has received them all and its backlog
    /// is empty. The table must then equal the pristine copy.
    async fn measure_apply(&self, conn: &mut Conn, pristine: &Pristine, round: u32) -> ApplyRun {
        let mut run = ApplyRun {
            table: pristine.kind,
            round,
            changes: 0,
            apply_secs: 0.0,
            changes_per_sec: 0.0,
            correct: false,
            error: None,
        };
        if let Err(e) = self.apply_bursts(conn, pristine, &mut run).await {
            run.correct = false;
            run.error = Some(format!("{e:#}"));
        }
        run
    }

    async fn apply_bursts(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut ApplyRun,
    ) -> anyhow::Result<()> {
        self.fresh_start(conn, Some(pristine)).await?;
        let name = format!("{}-apply-{}", pristine.kind, run.round);
        let flag = self.work_dir.path().join(format!("{name}.postpone"));
        std::fs::write(&flag, b"").context("creating the postpone flag file")?;
        let job = self.wraith_job(
            pristine,
            "sql",
            &name,
            &format!("postpone_flag_file = {:?}\n", flag.display().to_string()),
        )?;
        let socket = job.socket.clone();
        let child = tokio::spawn(job.run());
        let bursts = self.run_bursts(conn, pristine, &socket, run).await;
        // The run ends whatever the bursts did: without the flag it cuts over.
        let _ = std::fs::remove_file(&flag);
        let child = child.await.context("waiting for wraith run")??;
        bursts?;
        child.report()?;
        let result = pristine::fingerprint(conn, BENCH_SCHEMA, &pristine.table).await?;
        let comparison = result.compare(&pristine.fingerprint);
        run.correct = comparison.all_match();
        if !run.correct {
            run.error = Some(format!(
                "result differs from the pristine table: {} rows (expected {}), checksum {:?} (expected {:?})",
                result.rows, pristine.fingerprint.rows, result.checksum, pristine.fingerprint.checksum
            ));
        }
        Ok(())
    }

    async fn run_bursts(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        socket: &Path,
        run: &mut ApplyRun,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        // Wait until the copy, indexes and checksum are done and wraith only
        // follows changes, held by the flag.
        loop {
            let status = wraith_engine::control::query_status(socket, Duration::from_secs(2)).await;
            if status.as_ref().and_then(|s| s["state"].as_str()) == Some("WaitingOnSentinelTable") {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("wraith did not reach the postponed cut-over in 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let qt = format!(
            "{}.{}",
            wraith_engine::server::quote_ident(BENCH_SCHEMA),
            wraith_engine::server::quote_ident(&pristine.table)
        );
        let rows = self.args.apply_burst.min(pristine.rows);
        let row_number = pristine.kind.row_number_column();
        for change in ["k + 1", "k - 1"] {
            let received_before = stream_figure(socket, "changes_received").await?;
            conn.query_drop(format!(
                "UPDATE {qt} SET k = {change} WHERE {row_number} <= {rows}"
            ))
            .await
            .context("the burst's UPDATE")?;
            let committed = Instant::now();
            let updated = conn.affected_rows();
            loop {
                let received = stream_figure(socket, "changes_received").await?;
                let backlog = stream_figure(socket, "changes_backlog").await?;
                if received >= received_before + updated && backlog == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!("wraith did not apply the burst's {updated} changes in time ({} received, {backlog} waiting)", received - received_before);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            run.apply_secs += committed.elapsed().as_secs_f64();
            run.changes += updated;
        }
        run.changes_per_sec = run.changes as f64 / run.apply_secs.max(1e-9);
        Ok(())
    }

    /// `--import`: dumps the table with mydumper once, then loads the dump
    /// with each loader in turn, `--repeat` rounds, into an empty
    /// [`IMPORT_SCHEMA`], checking every load against the pristine table.
    async fn import_rounds(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
    ) -> Result<Vec<ImportRun>, Failure> {
        let (mydumper, _) = self
            .dump_tools
            .as_ref()
            .ok_or_else(|| Failure::Config("mydumper is not installed".into()))?;
        pristine
            .restore(conn, BENCH_SCHEMA)
            .await
            .context("restoring the table to dump")?;
        let dump_dir = self.work_dir.path().join(format!("dump-{}", pristine.kind));
        let _ = std::fs::remove_dir_all(&dump_dir);
        let started = Instant::now();
        let mut cmd = Command::new(mydumper);
        cmd.args(self.server.dump_tool_args().map_err(failure_to_anyhow)?)
            .arg("-B")
            .arg(BENCH_SCHEMA)
            .arg("-T")
            .arg(&pristine.table)
            .args(["-t", "2", "-r", "100000", "-o"])
            .arg(&dump_dir);
        let child = run_child(cmd, self.work_dir.path(), "mydumper").await?;
        if !child.success {
            return Err(Failure::Runtime(anyhow!(
                "mydumper failed ({}): {}",
                child.status,
                child.stderr_tail
            )));
        }
        let dump_bytes: u64 = std::fs::read_dir(&dump_dir)
            .context("reading the dump directory")?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        eprintln!(
            "mydumper wrote {:.1} MiB in {:.1}s",
            dump_bytes as f64 / 1048576.0,
            started.elapsed().as_secs_f64()
        );
        let mut runs = Vec::new();
        for round in 1..=self.args.repeat {
            let mut round_runs = Vec::new();
            for loader in ["myloader", "wraith-import-sql", "wraith-import-local"] {
                let mut run = ImportRun {
                    table: pristine.kind,
                    loader,
                    round,
                    correct: false,
                    error: None,
                    wall_secs: 0.0,
                    rows_per_sec: 0.0,
                    speedup_over_myloader: None,
                    server_cpu_secs: None,
                    peak_rss_mib: None,
                    note: None,
                };
                if let Err(e) = self.import_once(conn, pristine, &dump_dir, &mut run).await {
                    run.error = Some(format!("{e:#}"));
                }
                // myloader's threads deadlock on each other now and then
                // (seen here on 2M rows); one more try gives the baseline.
                if loader == "myloader"
                    && run.error.as_deref().is_some_and(|e| e.contains("Deadlock"))
                {
                    eprintln!(
                        "myloader failed with a deadlock between its threads; running it again"
                    );
                    run.note = Some(
                        "the first attempt failed with a deadlock between myloader's threads"
                            .into(),
                    );
                    run.error = None;
                    if let Err(e) = self.import_once(conn, pristine, &dump_dir, &mut run).await {
                        run.error = Some(format!("{e:#}"));
                    }
                }
                eprintln!("{}", report::import_line(&run));
                round_runs.push(run);
            }
            let base = round_runs
                .iter()
                .find(|r| r.loader == "myloader" && r.correct)
                .map(|r| r.wall_secs);
            for r in &mut round_runs {
                r.speedup_over_myloader = base.filter(|_| r.correct).map(|b| b / r.wall_secs);
            }
            runs.extend(round_runs);
        }
        let _ = std::fs::remove_dir_all(&dump_dir);
        Ok(runs)
    }

    async fn import_once(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        dump_dir: &Path,
        run: &mut ImportRun,
    ) -> anyhow::Result<()> {
        let schema = wraith_engine::server::quote_ident(IMPORT_SCHEMA);
        // Two statements: wraith's connections have multi-statements off.
        conn.query_drop(format!("DROP DATABASE IF EXISTS {schema}"))
            .await
            .context("dropping the import schema")?;
        conn.query_drop(format!("CREATE DATABASE {schema}"))
            .await
            .context("recreating the import schema")?;
        self.fresh_start(conn, None).await?;
        let dir = self.work_dir.path();
        let name = format!("{}-{}-{}", pristine.kind, run.loader, run.round);
        let cmd = match run.loader {
            "myloader" => {
                let (_, myloader) = self
                    .dump_tools
                    .as_ref()
                    .ok_or_else(|| anyhow!("myloader is not installed"))?;
                let mut cmd = Command::new(myloader);
                // -e: binlog the load, as wraith does.
                cmd.args(self.server.dump_tool_args().map_err(failure_to_anyhow)?)
                    .arg("-d")
                    .arg(dump_dir)
                    .arg("-B")
                    .arg(IMPORT_SCHEMA)
                    .args(["-t", "2", "-e"]);
                cmd
            }
            loader => {
                let backend = loader.trim_start_matches("wraith-import-");
                let sort_dir = dir.join(format!("sort-{name}"));
                let toml = format!(
                    "{target}\n[import]\ndir = {dump:?}\nformat = \"sql\"\nbackend = {backend:?}\n\
                     threads = 2\ncreate_tables = true\n\n[local]\nsort_dir = {sort:?}\n\n\
                     [checkpoint]\nstore = \"file\"\npath = {checkpoint:?}\n",
                    target = self
                        .server
                        .connection_toml("target", IMPORT_SCHEMA)
                        .map_err(failure_to_anyhow)?,
                    dump = dump_dir.display().to_string(),
                    sort = sort_dir.display().to_string(),
                    checkpoint = dir.join(format!("{name}.checkpoint")).display().to_string(),
                );
                let config_path = dir.join(format!("{name}.toml"));
                std::fs::write(&config_path, toml).context("writing the import's config")?;
                let exe = std::env::current_exe().context("finding the wraith binary")?;
                let mut cmd = Command::new(exe);
                cmd.arg("import").arg(&config_path);
                cmd
            }
        };
        let cpu_before = self.server_pid.and_then(process_cpu_secs);
        let started = Instant::now();
        let child = run_child(cmd, dir, &name).await;
        run.wall_secs = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(dir.join(format!("sort-{name}")));
        let cpu_after = self.server_pid.and_then(process_cpu_secs);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            run.server_cpu_secs = Some(b - a);
        }
        let child = child?;
        run.peak_rss_mib = child.peak_rss_mib;
        if !child.success {
            anyhow::bail!(
                "{} failed ({}): {}",
                run.loader,
                child.status,
                child.stderr_tail
            );
        }
        run.rows_per_sec = pristine.rows as f64 / run.wall_secs;
        let result = pristine::fingerprint(conn, IMPORT_SCHEMA, &pristine.table).await?;
        let comparison = result.compare(&pristine.fingerprint);
        run.correct = comparison.all_match();
        if !run.correct {
            anyhow::bail!(
                "the loaded table differs: {} rows (expected {}), checksum {:?} (expected {:?}), definition {}",
                result.rows,
                pristine.fingerprint.rows,
                result.checksum,
                pristine.fingerprint.checksum,
                if comparison.definition_match { "equal" } else { "differs" }
            );
        }
        Ok(())
    }

    async fn run_ptosc(&self, pristine: &Pristine, run: &mut MethodRun) -> anyhow::Result<()> {
        let tool = self
            .ptosc
            .as_ref()
            .ok_or_else(|| anyhow!("pt-online-schema-change is not installed"))?;
        let name = format!(
            "{}-pt-osc-{}-{}",
            pristine.kind,
            run.condition.name(),
            run.round
        );
        let mut cmd = Command::new(tool);
        cmd.arg("--alter")
            .arg("ENGINE=InnoDB")
            .arg(
                self.server
                    .ptosc_dsn(&pristine.table)
                    .map_err(failure_to_anyhow)?,
            )
            .arg("--recursion-method=none")
            .arg("--no-check-replication-filters")
            .arg("--execute");
        let child = run_child(cmd, self.work_dir.path(), &name).await?;
        run.peak_rss_mib = child.peak_rss_mib;
        if !child.success {
            anyhow::bail!(
                "pt-online-schema-change failed ({}): {}",
                child.status,
                child.stderr_tail
            );
        }
        Ok(())
    }
}

fn failure_to_anyhow(f: Failure) -> anyhow::Error {
    match f {
        Failure::Config(msg) => anyhow!(msg),
        Failure::Runtime(e) => e,
        Failure::Reported => anyhow!("the run failed (its error is printed above)"),
    }
}

/// A `wraith run` to start.
struct WraithJob {
    command: Command,
    dir: PathBuf,
    name: String,
    sort_dir: PathBuf,
    socket: PathBuf,
}

impl WraithJob {
    /// Runs it to its end; a failed run is an error with its last lines.
    async fn run(self) -> anyhow::Result<ChildRun> {
        let child = run_child(self.command, &self.dir, &self.name).await;
        let _ = std::fs::remove_dir_all(&self.sort_dir);
        let child = child?;
        if !child.success {
            anyhow::bail!(
                "wraith run failed ({}): {}",
                child.status,
                child.stderr_tail
            );
        }
        Ok(child)
    }
}

/// A figure of the change stream from a running wraith's `status-json`.
async fn stream_figure(socket: &Path, field: &str) -> anyhow::Result<u64> {
    let status = wraith_engine::control::query_status(socket, Duration::from_secs(2))
        .await
        .ok_or_else(|| {
            anyhow!(
                "wraith's control socket {} did not answer",
                socket.display()
            )
        })?;
    status["stream"][field]
        .as_u64()
        .ok_or_else(|| anyhow!("status-json has no stream.{field}"))
}

/// A finished child process.
struct ChildRun {
    success: bool,
    status: String,
    stdout: String,
    /// The last lines of its stderr (and stdout, for tools that report there).
    stderr_tail: String,
    peak_rss_mib: Option<f64>,
}

impl ChildRun {
    /// The table's report from `wraith run --json`.
    fn report(&self) -> anyhow::Result<serde_json::Value> {
        let report: serde_json::Value =
            serde_json::from_str(&self.stdout).context("reading wraith run's JSON report")?;
        Ok(report["tables"][0].clone())
    }
}

/// Runs `cmd` to its end with output in files under `dir`, and reads its peak
/// RSS from `wait4`.
async fn run_child(mut cmd: Command, dir: &Path, name: &str) -> anyhow::Result<ChildRun> {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).context("creating the child's output file")?)
        .stderr(std::fs::File::create(&err_path).context("creating the child's error file")?);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let (status, usage) = tokio::task::spawn_blocking(move || wait_with_usage(pid))
        .await
        .context("waiting for the child")??;
    drop(child);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let status_text = if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    };
    Ok(ChildRun {
        success,
        status: status_text,
        stderr_tail: format!("{}\n{}", tail(&stderr), tail(&stdout))
            .trim()
            .to_string(),
        stdout,
        // Linux reports ru_maxrss in KiB.
        peak_rss_mib: (usage.ru_maxrss > 0).then(|| usage.ru_maxrss as f64 / 1024.0),
    })
}

fn wait_with_usage(pid: libc::pid_t) -> anyhow::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(anyhow!("wait4 for pid {pid}: {err}"));
        }
    }
}

/// Starts a scratch server, retrying a failed datadir installation: it
/// sometimes fails when other scratch servers are being installed at the same
/// moment (a shared machine, tests running beside the benchmark).
fn start_scratch(options: ScratchOptions) -> Result<ScratchServer, ScratchError> {
    let mut attempt = 1;
    loop {
        match ScratchServer::start(options.clone()) {
            Err(ScratchError::InstallDb { tool, output }) if attempt < 3 => {
                tracing::warn!(%tool, attempt, output = %output.lines().last().unwrap_or(""), "installing the scratch datadir failed; retrying");
                std::thread::sleep(Duration::from_millis(500 * attempt));
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The server's pid, when it runs on this machine (from `@@pid_file`).
async fn server_pid(conn: &mut Conn) -> Option<u32> {
    let (pid_file, datadir): (String, String) = conn
        .query_first("SELECT @@pid_file, @@datadir")
        .await
        .ok()
        .flatten()?;
    let path = Path::new(&datadir).join(pid_file);
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.contains("mariadbd") || comm.contains("mysqld")).then_some(pid)
}
