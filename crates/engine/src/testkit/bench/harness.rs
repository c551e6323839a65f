//! The order of a benchmark's runs and one measured run.
//!
//! **Order.** For each generated table: a pristine copy is made once; then,
//! for each round, the change-apply measurement (`--apply-burst`), then each
//! condition (idle, load, blocker) and each method in turn (A B C A B C …).
//! Interleaving the methods (rather than all rounds of one, then the next)
//! spreads slow drifts of the machine (page cache, other tenants, thermal)
//! over all of them instead of charging them to one.
//!
//! **One run** ([`Bench::measure`]):
//! 1. *Fresh start*: with a replica, it first catches up (the previous
//!    run's tail); the table is restored from the pristine copy (on the
//!    replica too, binlog off on both, each checked against the pristine
//!    fingerprint, so both start equal); old binlogs go (`RESET MASTER`, or
//!    with a replica a purge up to a new binlog: a reset would pull the
//!    positions from under it); dirty pages are flushed.
//! 2. Under `load` and `blocker`, the write load starts and runs
//!    `--baseline-secs`: its latency then is the baseline. With a replica,
//!    the heartbeat starts and the replica's lag is sampled (`replica`). The
//!    write debt is read (`debt`); under `blocker`, the blocker's session
//!    connects and is armed with the method's moment (`blocker`).
//! 3. The method runs (`methods`): what is timed. wraith runs as a child
//!    `wraith run` of the binary named in [`BenchSettings::wraith_exe`] (its
//!    wall time includes preflight and cut-over; its peak RSS comes from
//!    `wait4`), pt-online-schema-change and gh-ost as children too, native
//!    ALTER and the floor on connections of this process. The server's CPU
//!    time comes from `/proc/<pid>/stat`.
//! 4. *Aftermath*, all at once: the write debt is read; the load runs on for
//!    `--aftermath-secs` (its `load_after` window); the dirty pages are
//!    followed every 500 ms until they are back within 10% of before (an
//!    idle run waits at most as long); the replica is waited for until it
//!    has applied everything the primary had at the method's end
//!    (`MASTER_GTID_WAIT`), which ends its lag series.
//! 5. *Verification*: the load stops and the blocker commits; the result is
//!    compared (row count, `CHECKSUM TABLE`, definition) with the pristine
//!    copy, or under load with the pristine copy with the load's committed
//!    transactions replayed (binlog off: the replica never sees it); with a
//!    replica, once it has caught up again, its table with the primary's. A
//!    wrong result is reported as wrong, never as fast.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::Notify;

use super::blocker::{Blocker, Trigger};
use super::child::find_in_path;
use super::debt;
use super::load::{WriteLoad, WriteLoadConfig};
use super::methods::BlockerHandshake;
use super::pristine::{self, Fingerprint, Pristine};
use super::replica::{self, LagWatch, Replica, HEARTBEAT_SCHEMA};
use super::results::{
    set_ratios, ApplyRun, BenchResults, Condition, Method, MethodRun, ReplicaRun, Runs, Settings,
    Skipped, TableInfo,
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

/// Why gh-ost is left out when it is not found.
pub const GHOST_MISSING: &str = "gh-ost not found in PATH; give --ghost-bin PATH (gh-ost v1.1.5 runs on MariaDB 10.11; shared/bench/peers/README.md says how to build it)";

/// The longest the benchmark waits for the replica to catch up.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(1800);

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
    /// Write load in transactions per second for the `load` and `blocker` conditions.
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
    /// gh-ost's binary (`None`: `gh-ost` in PATH, or gh-ost is skipped).
    pub ghost_bin: Option<PathBuf>,
    /// Start a replica of the scratch server and measure it.
    pub replica: bool,
    /// The replica lag wraith, pt-osc and gh-ost throttle at.
    pub max_lag: Duration,
    /// `wraith-paced`'s `[throttle] max_checkpoint_age_pct`.
    pub paced_checkpoint_age_pct: u64,
    /// How long the blocker holds its transaction.
    pub blocker_secs: f64,
    /// How long the load runs on after each method; the longest an idle
    /// run waits for the dirty pages to come back.
    pub aftermath_secs: f64,
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
    StartingReplica,
    ReplicaStarted {
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
    pub(super) ghost: Option<PathBuf>,
    /// mydumper and myloader, for `--import`.
    pub(super) dump_tools: Option<(PathBuf, PathBuf)>,
    /// `--replica`: the second scratch server.
    pub(super) replica: Option<Replica>,
}

/// Runs the benchmark `settings` describe and returns what it measured.
/// Failed and wrong runs are results marked incorrect (see
/// [`BenchResults::wrong`]); an error means the benchmark could not run.
pub async fn run(
    mut settings: BenchSettings,
    on_event: &mut OnEvent<'_>,
) -> Result<BenchResults, BenchError> {
    if settings.load_rate == 0 {
        // The blocker condition runs under the load too.
        settings.conditions.retain(|c| !c.loaded());
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
    if settings.replica && matches!(settings.server, ServerChoice::External(_)) {
        return Err(BenchError::Usage(
            "--replica starts a second scratch server replicating from the benchmark's own scratch server; it cannot be used with --config (an operator's server): drop one of them".into(),
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
        HEARTBEAT_SCHEMA,
    ] {
        let _ = conn
            .query_drop(format!("DROP DATABASE IF EXISTS {}", quote_ident(schema)))
            .await;
    }
    drop(conn);
    bench.pool.clone().disconnect().await.ok();
    if let Some(replica) = &bench.replica {
        replica.pool.clone().disconnect().await.ok();
    }
    Ok(BenchResults::new(
        version.unwrap_or_default(),
        &bench.summary_settings(),
        runs,
    ))
}

/// gh-ost's binary: the one `--ghost-bin` names (it must exist), else the
/// one found in PATH (`in_path`); `None` when there is none.
pub fn locate_ghost(
    explicit: Option<&Path>,
    in_path: Option<PathBuf>,
) -> Result<Option<PathBuf>, BenchError> {
    match explicit {
        Some(path) if path.is_file() => Ok(Some(path.to_path_buf())),
        Some(path) => Err(BenchError::Usage(format!(
            "--ghost-bin {}: no such file; give the path of a gh-ost binary (v1.1.5 runs on MariaDB 10.11), or leave --ghost-bin out to skip gh-ost when it is not in PATH",
            path.display()
        ))),
        None => Ok(in_path),
    }
}

/// Leaves out the methods `matches` picks, each reported skipped with `reason`.
fn skip_methods(
    settings: &mut BenchSettings,
    matches: impl Fn(Method) -> bool,
    reason: &str,
    skipped: &mut Vec<Skipped>,
    on_event: &mut OnEvent<'_>,
) {
    for &method in settings.methods.iter().filter(|m| matches(**m)) {
        let skip = Skipped {
            method,
            reason: reason.to_string(),
        };
        on_event(BenchEvent::Skipped(&skip));
        skipped.push(skip);
    }
    settings.methods.retain(|m| !matches(*m));
}

impl Bench {
    /// Finds the tools, starts or connects to the server (and the replica)
    /// and makes the work directory; returns a connection and the server's
    /// version.
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
        if ptosc.is_none() {
            skip_methods(
                &mut settings,
                |m| m == Method::PtOsc,
                "pt-online-schema-change not found in PATH (Debian package percona-toolkit)",
                skipped,
                on_event,
            );
        }
        let ghost = locate_ghost(settings.ghost_bin.as_deref(), find_in_path("gh-ost"))?;
        if ghost.is_none() {
            skip_methods(
                &mut settings,
                Method::is_ghost,
                GHOST_MISSING,
                skipped,
                on_event,
            );
        }
        if settings.methods.is_empty() {
            return Err(BenchError::Usage(
                "nothing to run: every method given was skipped (see the notes above)".into(),
            ));
        }
        let mut scratch_options = None;
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
                scratch_options = Some(options.clone());
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
        let replica = match (settings.replica, scratch_options, server.scratch_port()) {
            (true, Some(options), Some(port)) => {
                on_event(BenchEvent::StartingReplica);
                let replica = Replica::start(options, &mut conn, port).await?;
                on_event(BenchEvent::ReplicaStarted {
                    port: replica.port(),
                });
                Some(replica)
            }
            _ => None,
        };
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
            ghost,
            dump_tools,
            replica,
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
            replica: self.replica.is_some(),
            max_lag_secs: self.settings.max_lag.as_secs_f64(),
            paced_checkpoint_age_pct: self.settings.paced_checkpoint_age_pct,
            blocker_secs: self.settings.blocker_secs,
            aftermath_secs: self.settings.aftermath_secs,
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

    /// The same start for every timed run: the replica caught up,
    /// `pristine` restored into [`BENCH_SCHEMA`] (when given; on the replica
    /// too), the scratch server's earlier binlogs dropped, dirty pages
    /// flushed.
    pub(super) async fn fresh_start(
        &self,
        conn: &mut Conn,
        pristine: Option<&Pristine>,
    ) -> Result<(), BenchError> {
        let mut replica_conn = None;
        if let Some(replica) = &self.replica {
            // The previous run's tail is applied before the table is replaced under it.
            replica.catch_up(conn, REPLICA_TIMEOUT).await?;
            replica_conn = Some(replica.conn().await?);
        }
        if let Some(pristine) = pristine {
            pristine
                .restore(conn, BENCH_SCHEMA)
                .await
                .step("restoring the table")?;
            if let Some(rc) = replica_conn.as_mut() {
                // Checked against the pristine fingerprint, as the primary's is:
                // both servers start from equal tables.
                pristine
                    .restore(rc, BENCH_SCHEMA)
                    .await
                    .step("restoring the table on the replica")?;
            }
        }
        if self.server.owned() {
            match replica_conn.as_mut() {
                // Earlier runs' binlogs are of no use; the scratch server is ours.
                None => conn.query_drop("RESET MASTER").await.step("RESET MASTER")?,
                Some(rc) => {
                    replica::purge_binlogs(conn).await;
                    replica::purge_binlogs(rc).await;
                }
            }
        }
        pristine::flush_dirty_pages(conn, Duration::from_secs(120)).await;
        if let Some(rc) = replica_conn.as_mut() {
            pristine::flush_dirty_pages(rc, Duration::from_secs(120)).await;
        }
        Ok(())
    }

    /// One measured run (see the module's page).
    async fn measure(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut MethodRun,
    ) -> Result<(), BenchError> {
        self.fresh_start(conn, Some(pristine)).await?;
        let name = format!(
            "{}-{}-{}-{}",
            pristine.kind,
            run.method,
            run.condition.name(),
            run.round
        );
        // The heartbeat and the blocker's session come first: nothing may
        // fail between the load's start and its stop.
        let lag_watch = match &self.replica {
            Some(replica) => Some(LagWatch::start(&self.pool, replica).await?),
            None => None,
        };
        let blocker = match run.condition {
            Condition::Blocker => Some(
                Blocker::connect(
                    &self.pool,
                    format!(
                        "{}.{}",
                        quote_ident(BENCH_SCHEMA),
                        quote_ident(&pristine.table)
                    ),
                    Duration::from_secs_f64(self.settings.blocker_secs.max(0.0)),
                )
                .await?,
            ),
            _ => None,
        };
        let load_config = self.load_config(pristine);
        let load = if run.condition.loaded() {
            let load = WriteLoad::start(self.pool.clone(), load_config.clone());
            let baseline = Duration::from_secs_f64(self.settings.baseline_secs.max(0.5));
            tokio::time::sleep(baseline).await;
            run.load_before = Some(load.end_window().await);
            Some(load)
        } else {
            None
        };
        let debt_before = debt::read(conn).await;
        let cpu_before = self.server_pid.and_then(process_cpu_secs);
        let started = Instant::now();
        let mut handshake = None;
        let blocker = blocker.map(|blocker| {
            let opened = Arc::new(Notify::new());
            let trigger = match run.method {
                Method::NativeInplace | Method::NativeCopy => {
                    Trigger::After(Duration::from_millis(500))
                }
                Method::WraithSql
                | Method::WraithLocal
                | Method::WraithPaced
                | Method::WraithDeferred => Trigger::WraithChecksum(self.socket_path(&name)),
                Method::PtOsc => Trigger::Output {
                    files: self.output_files(&name),
                    needle: "Copied rows OK.",
                },
                Method::Ghost { .. } => Trigger::Output {
                    files: self.output_files(&name),
                    needle: "Row copy complete",
                },
                Method::Floor => {
                    let open = Arc::new(Notify::new());
                    handshake = Some(BlockerHandshake {
                        open: open.clone(),
                        opened: opened.clone(),
                    });
                    Trigger::Notified(open)
                }
            };
            blocker.arm(trigger, started, Some(opened))
        });
        let outcome = self
            .execute(conn, pristine, run, &name, handshake.as_ref())
            .await;
        run.wall_secs = started.elapsed().as_secs_f64();
        let ended = Instant::now();
        let cpu_after = self.server_pid.and_then(process_cpu_secs);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            run.server_cpu_secs = Some(b - a);
        }
        run.debt_after = Some(debt::read(conn).await);
        if let Some(blocker) = &blocker {
            blocker.method_ended();
        }
        let position_at_end = match &self.replica {
            Some(_) => replica::primary_position(conn).await.ok(),
            None => None,
        };
        if let Some(load) = &load {
            run.load_during = Some(load.end_window().await);
        }

        // The aftermath: the load, the dirty pages and the replica, at once.
        let aftermath = Duration::from_secs_f64(self.settings.aftermath_secs.max(0.0));
        let replica_done = async {
            let (Some(replica), Some(position), Some(watch)) =
                (&self.replica, &position_at_end, lag_watch)
            else {
                return None;
            };
            let reached = replica.wait_for(position, REPLICA_TIMEOUT).await;
            let complete_secs = started.elapsed().as_secs_f64();
            let (lag_series_ms, max_lag_ms) = watch.stop(started).await;
            Some(ReplicaRun {
                lag_series_ms,
                max_lag_ms,
                complete_secs: reached.is_ok().then_some(complete_secs),
                error: reached.err().map(|e| error_chain(&e)),
                ..ReplicaRun::default()
            })
        };
        let dirty_recovery = async {
            if outcome.is_err() {
                return None;
            }
            let mut c = self.pool.get_conn().await.ok()?;
            debt::dirty_recovery(&mut c, &debt_before, ended, aftermath).await
        };
        let load_after = async {
            let load = load.as_ref().filter(|_| outcome.is_ok())?;
            tokio::time::sleep_until((ended + aftermath).into()).await;
            Some(load.end_window().await)
        };
        let (replica_run, dirty_recovery_secs, load_after) =
            tokio::join!(replica_done, dirty_recovery, load_after);
        run.debt_before = Some(debt_before);
        run.dirty_recovery_secs = dirty_recovery_secs;
        run.load_after = load_after;
        run.replica = replica_run;
        if let Some(blocker) = blocker {
            run.blocker = Some(blocker.finish().await);
        }
        let log = match load {
            Some(load) => Some(load.stop().await),
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
                // The expected table is the benchmark's own business: never replicated.
                let _ = conn.query_drop("SET SESSION sql_log_bin = 0").await;
                let replayed = log.replay(conn, &load_config, EXPECTED_SCHEMA).await;
                let _ = conn.query_drop("SET SESSION sql_log_bin = 1").await;
                replayed?;
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
        if let Some(replica_run) = run.replica.as_mut() {
            self.verify_replica(conn, pristine, &result, replica_run)
                .await;
            if !replica_run.verified && run.correct {
                run.correct = false;
                run.error = Some(format!(
                    "the replica's table differs from the primary's: {}",
                    replica_run
                        .error
                        .as_deref()
                        .unwrap_or("see replica.comparison")
                ));
            }
        }
        Ok(())
    }

    /// Once the replica has caught up with everything (the aftermath's load
    /// included), compares its table with the primary's `result`.
    async fn verify_replica(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        result: &Fingerprint,
        replica_run: &mut ReplicaRun,
    ) {
        let Some(replica) = &self.replica else {
            return;
        };
        let compared = async {
            replica.catch_up(conn, REPLICA_TIMEOUT).await?;
            let mut rc = replica.conn().await?;
            pristine::fingerprint(&mut rc, BENCH_SCHEMA, &pristine.table).await
        }
        .await;
        match compared {
            Ok(on_replica) => {
                let comparison = on_replica.compare(result);
                replica_run.verified = comparison.all_match();
                replica_run.comparison = Some(comparison);
                if !replica_run.verified {
                    replica_run.error = Some(format!(
                        "{} rows (primary {}), checksum {:?} (primary {:?}), definition {}",
                        on_replica.rows,
                        result.rows,
                        on_replica.checksum,
                        result.checksum,
                        if comparison.definition_match {
                            "equal"
                        } else {
                            "differs"
                        }
                    ));
                }
            }
            Err(e) => {
                replica_run.verified = false;
                replica_run.error = Some(error_chain(&e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_is_found_where_it_is_named_or_skipped() {
        assert!(matches!(locate_ghost(None, None), Ok(None)));
        let dir = tempfile::tempdir().expect("temp dir");
        let binary = dir.path().join("gh-ost");
        std::fs::write(&binary, b"#!/bin/sh\n").expect("write");
        assert_eq!(
            locate_ghost(Some(&binary), None).ok().flatten(),
            Some(binary.clone())
        );
        assert_eq!(
            locate_ghost(None, Some(binary.clone())).ok().flatten(),
            Some(binary)
        );
        let missing = dir.path().join("nowhere/gh-ost");
        assert!(matches!(
            locate_ghost(Some(&missing), None),
            Err(BenchError::Usage(m)) if m.contains("--ghost-bin")
        ));
    }

    #[test]
    fn missing_tools_skip_their_methods_with_the_reason() {
        let mut settings = BenchSettings {
            tables: vec![TableKind::Sysbench],
            rows: None,
            repeat: 1,
            methods: vec![
                Method::WraithSql,
                Method::Ghost { chunk: 1000 },
                Method::Ghost { chunk: 10000 },
            ],
            conditions: vec![Condition::Idle],
            load_rate: 0,
            load_connections: 1,
            baseline_secs: 1.0,
            server: ServerChoice::Scratch {
                buffer_pool: "128M".into(),
            },
            apply_burst: 0,
            import: false,
            wraith_exe: PathBuf::from("wraith"),
            ghost_bin: None,
            replica: false,
            max_lag: Duration::from_secs(1),
            paced_checkpoint_age_pct: 50,
            blocker_secs: 10.0,
            aftermath_secs: 60.0,
        };
        let mut skipped = Vec::new();
        let mut lines = Vec::new();
        let mut on_event = |e: BenchEvent<'_>| {
            if let BenchEvent::Skipped(s) = e {
                lines.push(s.method.name());
            }
        };
        skip_methods(
            &mut settings,
            Method::is_ghost,
            GHOST_MISSING,
            &mut skipped,
            &mut on_event,
        );
        assert_eq!(settings.methods, vec![Method::WraithSql]);
        assert_eq!(lines, vec!["ghost-1000", "ghost-10000"]);
        assert!(skipped.iter().all(|s| s.reason.contains("--ghost-bin")));
    }
}
