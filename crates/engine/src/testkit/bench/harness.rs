//! The order of a benchmark's runs and one measured run.
//!
//! For each generated table: a pristine copy is made once; then, for each
//! round, each condition (idle, load) and each method in turn (A B C A B C …),
//! the table is restored from the pristine copy, the method rebuilds it, and the
//! result is checked (row count, `CHECKSUM TABLE`, definition) against the
//! pristine copy, or under load against the pristine copy with the load's
//! committed transactions replayed: a wrong result is reported as wrong, never
//! as fast. wraith runs as a child `wraith run` of the binary named in
//! [`BenchSettings::wraith_exe`] (its wall time includes preflight and
//! cut-over; its peak RSS comes from `wait4`); pt-online-schema-change runs as
//! a child too; native ALTERs run on a connection of this process. The
//! server's CPU time per method comes from `/proc/<pid>/stat`.
//!
//! Interleaving the methods (rather than all rounds of one, then the next)
//! spreads slow drifts of the machine (page cache, other tenants, thermal)
//! over all of them instead of charging them to one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

use super::child::{find_in_path, run_child, stream_figure, WraithJob};
use super::load::{WriteLoad, WriteLoadConfig};
use super::pristine::{self, Pristine};
use super::results::{
    set_ratios, ApplyRun, BenchResults, Condition, Method, MethodRun, Runs, Settings, Skipped,
    TableInfo,
};
use super::server::{server_pid, start_scratch, BenchServer};
use super::tables::TableKind;
use super::{error_chain, process_cpu_secs, BenchError, StepContext};
use crate::config::ConnectionConfig;
use crate::server::quote_ident;
use crate::testkit::scratch::ScratchOptions;

/// The schema the methods run in (every table in it is dropped before each method).
pub const BENCH_SCHEMA: &str = "wraith_bench";
/// The schema of the pristine copies.
pub const PRISTINE_SCHEMA: &str = "wraith_bench_pristine";
/// The schema where the expected result of a run under load is rebuilt.
pub const EXPECTED_SCHEMA: &str = "wraith_bench_expected";
/// The schema dumps are loaded into by `--import`.
pub const IMPORT_SCHEMA: &str = "wraith_bench_import";

/// Where to run.
pub enum ServerChoice {
    /// A scratch server of the benchmark's own, with this InnoDB buffer pool.
    Scratch { buffer_pool: String },
    /// An operator's server (a job config's `[source]`); the benchmark's
    /// schemas on it are dropped and recreated.
    External(Box<ConnectionConfig>),
}

/// What to run: `wraith bench`'s arguments, parsed.
pub struct BenchSettings {
    pub tables: Vec<TableKind>,
    /// Rows per table; `None`: each kind's default.
    pub rows: Option<u64>,
    /// Rounds; each round runs every method once per condition, interleaved.
    pub repeat: u32,
    pub methods: Vec<Method>,
    pub conditions: Vec<Condition>,
    /// Write load in transactions per second for the `load` condition.
    pub load_rate: u32,
    pub load_connections: usize,
    /// Seconds the load runs before each method (its baseline window).
    pub baseline_secs: f64,
    pub server: ServerChoice,
    /// Rows each change burst updates (0: the apply rate is not measured).
    pub apply_burst: u64,
    /// Benchmark dump loads (mydumper, then myloader and `wraith import`)
    /// instead of rebuilds.
    pub import: bool,
    /// The `wraith` binary run as a child for each wraith method.
    pub wraith_exe: PathBuf,
}

/// What happens, as it happens, for the caller to show.
pub enum BenchEvent<'a> {
    /// A method is left out (its tool is not installed).
    Skipped(&'a Skipped),
    /// The benchmark runs on an operator's server, described.
    OnServer(String),
    StartingScratch {
        buffer_pool: &'a str,
    },
    ScratchStarted {
        port: u16,
    },
    /// The server's process is not on this machine: no CPU times.
    NoServerCpu,
    Generating {
        kind: TableKind,
        table: &'a str,
        rows: u64,
    },
    Generated(&'a TableInfo),
    /// `--import`: mydumper wrote the dump.
    Dumped {
        bytes: u64,
        secs: f64,
    },
    /// A loader failed in a way worth one more try.
    LoaderRetry {
        loader: &'a str,
        reason: &'a str,
    },
    Run(&'a MethodRun),
    Apply(&'a ApplyRun),
    Import(&'a crate::testkit::bench::results::ImportRun),
}

/// Receives the events of a run.
pub type OnEvent<'e> = dyn FnMut(BenchEvent<'_>) + Send + 'e;

/// Everything a run needs.
pub(super) struct Bench {
    pub(super) server: BenchServer,
    pub(super) pool: Pool,
    pub(super) server_pid: Option<u32>,
    pub(super) work_dir: tempfile::TempDir,
    pub(super) settings: BenchSettings,
    pub(super) ptosc: Option<PathBuf>,
    /// mydumper and myloader, for `--import`.
    pub(super) dump_tools: Option<(PathBuf, PathBuf)>,
}

/// Runs the benchmark `settings` describe and returns what it measured.
/// Failed and wrong runs are results marked incorrect (see
/// [`BenchResults::wrong`]); an error means the benchmark could not run.
pub async fn run(
    mut settings: BenchSettings,
    on_event: &mut OnEvent<'_>,
) -> Result<BenchResults, BenchError> {
    if settings.load_rate == 0 {
        settings.conditions.retain(|c| *c != Condition::Load);
    }
    if settings.conditions.is_empty()
        || settings.tables.is_empty()
        || settings.methods.is_empty()
        || settings.repeat == 0
    {
        return Err(BenchError::Usage(
            "nothing to run: give at least one table, method and condition, and --repeat 1 or more (--load-rate 0 leaves only idle)".into(),
        ));
    }
    let mut runs = Runs::default();
    let (bench, mut conn, version) = Bench::prepare(settings, &mut runs.skipped, on_event).await?;
    for &kind in &bench.settings.tables {
        bench
            .bench_table(&mut conn, kind, &mut runs, on_event)
            .await?;
    }
    for schema in [
        BENCH_SCHEMA,
        PRISTINE_SCHEMA,
        EXPECTED_SCHEMA,
        IMPORT_SCHEMA,
    ] {
        let _ = conn
            .query_drop(format!("DROP DATABASE IF EXISTS {}", quote_ident(schema)))
            .await;
    }
    drop(conn);
    bench.pool.clone().disconnect().await.ok();
    Ok(BenchResults::new(
        version.unwrap_or_default(),
        &bench.summary_settings(),
        runs,
    ))
}

impl Bench {
    /// Finds the tools, starts or connects to the server and makes the work
    /// directory; returns a connection and the server's version.
    async fn prepare(
        mut settings: BenchSettings,
        skipped: &mut Vec<Skipped>,
        on_event: &mut OnEvent<'_>,
    ) -> Result<(Bench, Conn, Option<String>), BenchError> {
        let dump_tools = if settings.import {
            match (find_in_path("mydumper"), find_in_path("myloader")) {
                (Some(d), Some(l)) => Some((d, l)),
                _ => return Err(BenchError::Usage(
                    "--import needs mydumper and myloader in PATH (Debian package mydumper; scripts/setup installs it)".into(),
                )),
            }
        } else {
            None
        };
        let ptosc = find_in_path("pt-online-schema-change");
        if settings.methods.contains(&Method::PtOsc) && ptosc.is_none() {
            let skip = Skipped {
                method: Method::PtOsc,
                reason:
                    "pt-online-schema-change not found in PATH (Debian package percona-toolkit)"
                        .into(),
            };
            on_event(BenchEvent::Skipped(&skip));
            skipped.push(skip);
            settings.methods.retain(|m| *m != Method::PtOsc);
        }
        let server = match &settings.server {
            ServerChoice::External(config) => {
                on_event(BenchEvent::OnServer(config.describe()));
                BenchServer::External(config.clone())
            }
            ServerChoice::Scratch { buffer_pool } => {
                on_event(BenchEvent::StartingScratch { buffer_pool });
                let options = ScratchOptions {
                    buffer_pool: buffer_pool.clone(),
                    // The peers were measured with a 512M redo log; a small one
                    // would slow every method with checkpoints.
                    extra_args: vec!["--innodb-log-file-size=512M".into()],
                    ..ScratchOptions::default()
                };
                let server = tokio::task::spawn_blocking(move || start_scratch(options))
                    .await
                    .step("scratch server thread")?
                    .map_err(BenchError::Scratch)?;
                on_event(BenchEvent::ScratchStarted {
                    port: server.port(),
                });
                BenchServer::Scratch(server)
            }
        };
        let pool = Pool::new(server.opts()?);
        let mut conn = pool.get_conn().await.step("connecting to the server")?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .step("SELECT VERSION()")?;
        let server_pid = server_pid(&mut conn).await;
        if server_pid.is_none() {
            on_event(BenchEvent::NoServerCpu);
        }
        let work_dir = tempfile::Builder::new()
            .prefix("wraith-bench-")
            .tempdir()
            .step("creating a work directory")?;
        let bench = Bench {
            server,
            pool,
            server_pid,
            work_dir,
            settings,
            ptosc,
            dump_tools,
        };
        Ok((bench, conn, version))
    }

    /// One table: its pristine copy, then its imports or its rounds of rebuilds.
    async fn bench_table(
        &self,
        conn: &mut Conn,
        kind: TableKind,
        runs: &mut Runs,
        on_event: &mut OnEvent<'_>,
    ) -> Result<(), BenchError> {
        let rows = self.settings.rows.unwrap_or(kind.default_rows());
        on_event(BenchEvent::Generating {
            kind,
            table: kind.table_name(),
            rows,
        });
        let started = Instant::now();
        let files = self.work_dir.path().join("pristine").join(kind.as_str());
        let pristine = Pristine::create(conn, PRISTINE_SCHEMA, kind, rows, &files)
            .await
            .step("generating the table")?;
        let info = TableInfo {
            kind,
            table: pristine.table.clone(),
            rows: pristine.rows,
            table_bytes: pristine.table_bytes,
            generate_secs: started.elapsed().as_secs_f64(),
            restore: pristine.restore_method(),
        };
        on_event(BenchEvent::Generated(&info));
        runs.tables.push(info);
        if self.settings.import {
            runs.import
                .extend(self.import_rounds(conn, &pristine, on_event).await?);
        }
        // `--import` benchmarks loads only.
        let rebuild_rounds = if self.settings.import {
            0
        } else {
            self.settings.repeat
        };
        for round in 1..=rebuild_rounds {
            if self.settings.apply_burst > 0 {
                let run = self.measure_apply(conn, &pristine, round).await;
                on_event(BenchEvent::Apply(&run));
                runs.apply.push(run);
            }
            for &condition in &self.settings.conditions {
                let mut round_runs = Vec::new();
                for &method in &self.settings.methods {
                    let run = self
                        .run_method(conn, &pristine, method, condition, round)
                        .await;
                    on_event(BenchEvent::Run(&run));
                    round_runs.push(run);
                }
                set_ratios(&mut round_runs);
                runs.runs.extend(round_runs);
            }
        }
        let _ = conn
            .query_drop(format!(
                "DROP TABLE IF EXISTS {}.{}",
                quote_ident(PRISTINE_SCHEMA),
                quote_ident(&pristine.table)
            ))
            .await;
        Ok(())
    }

    fn summary_settings(&self) -> Settings {
        Settings {
            repeat: self.settings.repeat,
            load_rate: self.settings.load_rate,
            load_connections: self.settings.load_connections,
            baseline_secs: self.settings.baseline_secs,
            scratch_server: self.server.owned(),
        }
    }

    fn load_config(&self, pristine: &Pristine) -> WriteLoadConfig {
        WriteLoadConfig {
            schema: BENCH_SCHEMA.into(),
            kind: pristine.kind,
            rows: pristine.rows,
            rate: self.settings.load_rate,
            connections: self.settings.load_connections,
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
        let mut run = MethodRun::new(pristine.kind, method, condition, round);
        if let Err(e) = self.measure(conn, pristine, &mut run).await {
            run.correct = false;
            run.error = Some(error_chain(&e));
        }
        run
    }

    /// The same start for every timed run: `pristine` restored into
    /// [`BENCH_SCHEMA`] (when given), the scratch server's earlier binlogs
    /// dropped, dirty pages flushed.
    pub(super) async fn fresh_start(
        &self,
        conn: &mut Conn,
        pristine: Option<&Pristine>,
    ) -> Result<(), BenchError> {
        if let Some(pristine) = pristine {
            pristine
                .restore(conn, BENCH_SCHEMA)
                .await
                .step("restoring the table")?;
        }
        if self.server.owned() {
            // Earlier runs' binlogs are of no use; the scratch server is ours.
            conn.query_drop("RESET MASTER").await.step("RESET MASTER")?;
        }
        pristine::flush_dirty_pages(conn, Duration::from_secs(120)).await;
        Ok(())
    }

    async fn measure(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut MethodRun,
    ) -> Result<(), BenchError> {
        self.fresh_start(conn, Some(pristine)).await?;
        let load_config = self.load_config(pristine);
        let load = match run.condition {
            Condition::Idle => None,
            Condition::Load => {
                let load = WriteLoad::start(self.pool.clone(), load_config.clone());
                let baseline = Duration::from_secs_f64(self.settings.baseline_secs.max(0.5));
                tokio::time::sleep(baseline).await;
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
                    return Err(BenchError::Failed(format!(
                        "{} load transaction(s) lost their connection at COMMIT; the expected content is unknown",
                        log.uncertain
                    )));
                }
                pristine
                    .restore(conn, EXPECTED_SCHEMA)
                    .await
                    .step("restoring the expected table")?;
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
    ) -> Result<(), BenchError> {
        let qt = format!(
            "{}.{}",
            quote_ident(BENCH_SCHEMA),
            quote_ident(&pristine.table)
        );
        match run.method {
            Method::NativeInplace => conn
                .query_drop(format!(
                    "ALTER TABLE {qt} FORCE, ALGORITHM=INPLACE, LOCK=NONE"
                ))
                .await
                .step("ALTER TABLE ... ALGORITHM=INPLACE"),
            Method::NativeCopy => conn
                .query_drop(format!("ALTER TABLE {qt} FORCE, ALGORITHM=COPY"))
                .await
                .step("ALTER TABLE ... ALGORITHM=COPY"),
            Method::WraithSql | Method::WraithLocal => self.run_wraith(pristine, run).await,
            Method::PtOsc => self.run_ptosc(pristine, run).await,
        }
    }

    async fn run_wraith(&self, pristine: &Pristine, run: &mut MethodRun) -> Result<(), BenchError> {
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
        let child = job.run().await?;
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
    ) -> Result<WraithJob, BenchError> {
        let dir = self.work_dir.path();
        // A sort directory of its own: a failed run's engines are never found by the next.
        let sort_dir = dir.join(format!("sort-{name}"));
        let socket = dir.join(format!("{name}.sock"));
        let toml = format!(
            "{source}\n[[table]]\nname = {table:?}\nalter = \"FORCE\"\n\n[copy]\nbackend = {backend:?}\n\n\
             [local]\nsort_dir = {sort:?}\n\n[cutover]\ndrop_old_table = true\n{cutover_toml}\n\
             [control]\nsocket = {socket:?}\n\n\
             [checkpoint]\nstore = \"file\"\npath = {checkpoint:?}\n",
            source = self.server.source_toml()?,
            table = pristine.table,
            sort = sort_dir.display().to_string(),
            socket = socket.display().to_string(),
            checkpoint = dir.join(format!("{name}.checkpoint")).display().to_string(),
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml).step("writing the run's config")?;
        let mut command = Command::new(&self.settings.wraith_exe);
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
            run.error = Some(error_chain(&e));
        }
        run
    }

    async fn apply_bursts(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut ApplyRun,
    ) -> Result<(), BenchError> {
        self.fresh_start(conn, Some(pristine)).await?;
        let name = format!("{}-apply-{}", pristine.kind, run.round);
        let flag = self.work_dir.path().join(format!("{name}.postpone"));
        std::fs::write(&flag, b"").step("creating the postpone flag file")?;
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
        let child = child.await.step("waiting for wraith run")??;
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
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        // Wait until the copy, indexes and checksum are done and wraith only
        // follows changes, held by the flag.
        loop {
            let status = crate::control::query_status(socket, Duration::from_secs(2)).await;
            if status.as_ref().and_then(|s| s["state"].as_str()) == Some("WaitingOnSentinelTable") {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(
                    "wraith did not reach the postponed cut-over in 30 minutes".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let qt = format!(
            "{}.{}",
            quote_ident(BENCH_SCHEMA),
            quote_ident(&pristine.table)
        );
        let rows = self.settings.apply_burst.min(pristine.rows);
        let row_number = pristine.kind.row_number_column();
        for change in ["k + 1", "k - 1"] {
            let received_before = stream_figure(socket, "changes_received").await?;
            conn.query_drop(format!(
                "UPDATE {qt} SET k = {change} WHERE {row_number} <= {rows}"
            ))
            .await
            .step("the burst's UPDATE")?;
            let committed = Instant::now();
            let updated = conn.affected_rows();
            loop {
                let received = stream_figure(socket, "changes_received").await?;
                let backlog = stream_figure(socket, "changes_backlog").await?;
                if received >= received_before + updated && backlog == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::Failed(format!("wraith did not apply the burst's {updated} changes in time ({} received, {backlog} waiting)", received - received_before)));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            run.apply_secs += committed.elapsed().as_secs_f64();
            run.changes += updated;
        }
        run.changes_per_sec = run.changes as f64 / run.apply_secs.max(1e-9);
        Ok(())
    }

    async fn run_ptosc(&self, pristine: &Pristine, run: &mut MethodRun) -> Result<(), BenchError> {
        let tool = self
            .ptosc
            .as_ref()
            .ok_or_else(|| BenchError::Failed("pt-online-schema-change is not installed".into()))?;
        let name = format!(
            "{}-pt-osc-{}-{}",
            pristine.kind,
            run.condition.name(),
            run.round
        );
        let mut cmd = Command::new(tool);
        cmd.arg("--alter")
            .arg("ENGINE=InnoDB")
            .arg(self.server.ptosc_dsn(&pristine.table)?)
            .arg("--recursion-method=none")
            .arg("--no-check-replication-filters")
            .arg("--execute");
        let child = run_child(cmd, self.work_dir.path(), &name).await?;
        run.peak_rss_mib = child.peak_rss_mib;
        child.succeeded("pt-online-schema-change")?;
        Ok(())
    }
}
