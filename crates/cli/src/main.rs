//! The `wraith` command. It parses arguments, loads the config, draws progress
//! and maps errors to exit codes; everything else lives in `wraith-engine`.
//!
//! Exit codes: 0 done, 1 runtime failure, 2 usage or config error, 3 preflight refusal.
//!
//! Feature `demo` (on by default) adds `wraith demo` and `wraith bench`, which
//! start scratch servers through `wraith-engine`'s test kit; a build with
//! `--no-default-features` has only the operator's commands.

#[cfg(feature = "demo")]
mod bench;
#[cfg(feature = "demo")]
mod demo;
mod import_cmd;
mod metrics;
mod progress_display;
mod queue_cmd;
mod serve_http;
mod window_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wraith_engine::config::Config;
use wraith_engine::{Operations, ProgressHandle, RunControl, RunError, RunOptions};

/// wraith: online table rebuilds and bulk imports for MySQL-family databases.
#[derive(Parser)]
#[command(name = "wraith", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Preflight and plan: checks the servers, the table and the ALTER (or,
    /// for an import config, the dump, the database and the charset); changes nothing.
    Check(CheckArgs),
    /// Runs the rebuild described by CONFIG (preflight first).
    Run(RunArgs),
    /// Starts a scratch MariaDB, creates a sysbench-like table and rebuilds it.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Shows the checkpoint of CONFIG's job: state, progress, position, age.
    Status(StatusArgs),
    /// Swaps the old table of CONFIG's revert window back in ([cutover] revert_window).
    Revert(window_cmd::RevertArgs),
    /// Ends CONFIG's revert window: drops the old table.
    Finish(window_cmd::FinishArgs),
    /// Queues a schema change in the server's registry (after `check`); prints its UUID.
    Submit(queue_cmd::SubmitArgs),
    /// Lists, shows, cancels, retries, completes or postpones queued schema changes.
    Migrations(queue_cmd::MigrationsArgs),
    /// Runs the registry's queued schema changes one after another (one serve per server).
    Serve(queue_cmd::ServeArgs),
    /// Loads dump files (mydumper, mysqldump, CSV, TSV) described by CONFIG's [import].
    Import(ImportArgs),
    /// Benchmarks wraith's backends against native ALTER TABLE and pt-online-schema-change.
    #[cfg(feature = "demo")]
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// The import job's TOML config ([target], [import]).
    config: PathBuf,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Only the preflight: checks the dump dir, the server, the database,
    /// the tables and the charset; loads nothing (exit 3 on a failed check).
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// The job's TOML config.
    config: PathBuf,
    /// Print the status as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// The job's TOML config.
    config: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The job's TOML config.
    config: PathBuf,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Drop the shadow table, engines, change store and checkpoint of an
    /// earlier run of this job, and start over.
    #[arg(long)]
    fresh: bool,
    /// Serve Prometheus text metrics of the run on ADDR (e.g. 127.0.0.1:9100), at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// How a command ended, mapped to the process exit code.
pub enum Outcome {
    Done,
    Refused,
}

/// An error with the exit code it maps to.
pub enum Failure {
    Config(String),
    Runtime(anyhow::Error),
    /// A runtime failure whose message was printed already.
    Reported,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(3),
        Err(Failure::Config(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Reported) => ExitCode::from(1),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn dispatch(command: Command) -> Result<Outcome, Failure> {
    match command {
        Command::Check(args) if import_cmd::is_import_config(&args.config) => {
            import_cmd::check(&args.config, args.json).await
        }
        Command::Check(args) => {
            let config = load_config(&args.config)?;
            check(&config, args.json).await
        }
        Command::Run(args) => {
            let config = load_config(&args.config)?;
            run_reloadable(
                &config,
                Some(&args.config),
                args.json,
                RunOptions { fresh: args.fresh },
                args.metrics_addr,
            )
            .await
        }
        Command::Status(args) => {
            let config = load_config(&args.config)?;
            status(&config, args.json).await
        }
        Command::Revert(args) => {
            let config = load_config(&args.config)?;
            window_cmd::revert(&config, &args).await
        }
        Command::Finish(args) => {
            let config = load_config(&args.config)?;
            window_cmd::finish(&config, &args).await
        }
        Command::Submit(args) => queue_cmd::submit(args).await,
        Command::Migrations(args) => queue_cmd::migrations(args).await,
        Command::Serve(args) => queue_cmd::serve(args).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::demo(args).await,
        Command::Import(args) if args.check => import_cmd::check(&args.config, args.json).await,
        Command::Import(args) => import_cmd::import(&args.config, args.json).await,
        #[cfg(feature = "demo")]
        Command::Bench(args) => bench::bench(args).await,
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Config(e.to_string()))
}

/// Prints a report for programs (`--json`) on stdout.
pub(crate) fn print_json(report: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(report).map_err(|e| Failure::Runtime(e.into()))?;
    println!("{text}");
    Ok(())
}

async fn check(config: &Config, json: bool) -> Result<Outcome, Failure> {
    eprintln!("checking; the estimate copies a short sample into a throwaway table ...");
    let report = wraith_engine::preflight_predicting(config).await;
    if json {
        print_json(&report)?;
    } else {
        eprint!("{}", report.render());
    }
    if report.passed() {
        eprintln!("\npreflight passed");
        Ok(Outcome::Done)
    } else {
        let n = report.failures().count();
        eprintln!("\npreflight refused: {n} check(s) failed; nothing was changed");
        Ok(Outcome::Refused)
    }
}

async fn status(config: &Config, json: bool) -> Result<Outcome, Failure> {
    let report = wraith_engine::status(config)
        .await
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
    if json {
        print_json(&report)?;
    } else {
        eprint!("{}", report.render());
    }
    Ok(Outcome::Done)
}

/// The cut-over's attempts, blockers and AUTO_INCREMENT, after its summary line.
pub(crate) fn print_cutover_details(table: &str, c: &wraith_engine::CutoverReport) {
    if c.lock_attempts.len() > 1 {
        let each: Vec<String> = c
            .lock_attempts
            .iter()
            .map(|a| format!("{:.1} ms ({})", a.queued_ms + a.held_ms, a.outcome))
            .collect();
        eprintln!("{table}: writes blocked per attempt: {}", each.join(", "));
    }
    if !c.blockers.is_empty() {
        let ids: Vec<String> = c.blockers.iter().map(|b| b.id.to_string()).collect();
        eprintln!(
            "{table}: waited {:.1} s for {} blocking session(s) ({}) without asking for the lock{}",
            c.blocker_wait_ms / 1000.0,
            c.blockers.len(),
            ids.join(", "),
            if c.blockers_killed.is_empty() {
                String::new()
            } else {
                let killed: Vec<String> =
                    c.blockers_killed.iter().map(|id| id.to_string()).collect();
                format!("; killed {}", killed.join(", "))
            }
        );
    }
    if let Some(n) = c.auto_increment {
        eprintln!("{table}: AUTO_INCREMENT of the new table set to the old table's {n}");
    }
}

/// Reloads `[throttle]` from the config file on every SIGHUP.
fn reload_throttle_on_hangup(path: PathBuf, ops: std::sync::Arc<Operations>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        eprintln!("warning: cannot listen for SIGHUP; [throttle] cannot be reloaded");
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match Config::load(&path) {
                Ok(config) => {
                    ops.throttler.reload(config.throttle);
                    eprintln!("SIGHUP: reloaded [throttle] from {}", path.display());
                }
                Err(e) => eprintln!(
                    "SIGHUP: kept the current [throttle] settings; the config does not load: {e}"
                ),
            }
        }
    });
}

/// A run without SIGHUP reloads or metrics (`wraith demo`'s).
#[cfg(feature = "demo")]
async fn run(config: &Config, json: bool, options: RunOptions) -> Result<Outcome, Failure> {
    run_reloadable(config, None, json, options, None).await
}

/// A run; with `config_path`, SIGHUP reloads `[throttle]` from that file.
async fn run_reloadable(
    config: &Config,
    config_path: Option<&std::path::Path>,
    json: bool,
    options: RunOptions,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<Outcome, Failure> {
    let progress = ProgressHandle::with_events(progress_display::stderr_events());
    if let Some(addr) = metrics_addr {
        let bound = metrics::serve(addr, progress.clone())
            .await
            .map_err(|e| Failure::Config(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
        eprintln!("metrics: http://{bound}/metrics");
    }
    let ops = Operations::new(config, progress.clone());
    if let Some(path) = config_path {
        reload_throttle_on_hangup(path.to_path_buf(), ops.clone());
    }
    let display = progress_display::spawn(progress.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("\nstopping at the next safe point (the source table is never touched)...");
        let _ = stop_tx.send(true);
    });
    let control = RunControl { shutdown: stop_rx };
    let result = wraith_engine::run_with(config, &progress, &control, options, ops).await;
    display.finish().await;
    match result {
        Ok(report) => {
            for t in &report.tables {
                if t.cut_over {
                    eprintln!(
                        "{}: cut over in {} attempt(s); writes were blocked for {:.1} ms in all; the old table is {}",
                        t.table,
                        t.cutover_attempts.unwrap_or(0),
                        t.cutover_blocked_ms.unwrap_or(0.0),
                        if config.cutover.drop_old_table { "dropped".to_string() } else { format!("kept as {}", t.old_table) }
                    );
                    if let Some(c) = &t.cutover {
                        print_cutover_details(&t.table, c);
                    }
                }
                eprintln!(
                    "{}: {} changes read from the binlog, {} applied ({:.0} changes/s); checksum lock held {:.1} ms; \
                     {} rows changed after the checksum verified again",
                    t.table, t.changes_received, t.changes_applied, t.apply_changes_per_sec, t.checksum_lock_ms,
                    t.rows_reverified
                );
                eprintln!(
                    "{}: copied {} rows in {:.2}s ({:.0} rows/s, {} backend, {} chunks, {} engines), \
                     indexes restored in {:.2}s, checksum of {} rows passed in {:.2}s; total {:.2}s",
                    t.table,
                    t.rows_copied,
                    t.copy_secs,
                    t.copy_rows_per_sec,
                    t.backend,
                    t.chunks,
                    t.engines,
                    t.index_restore_secs,
                    t.checksum_rows,
                    t.checksum_secs,
                    t.total_secs
                );
                if !t.stages.is_empty() {
                    let stages: Vec<String> = t
                        .stages
                        .iter()
                        .map(|s| format!("{} {:.2}s", s.stage, s.secs))
                        .collect();
                    eprintln!("{}: stages: {}", t.table, stages.join(", "));
                }
                if !t.cut_over {
                    eprintln!(
                        "{}: the verified shadow table {} stands beside the untouched source (cut-over disabled)",
                        t.table, t.shadow
                    );
                }
            }
            if let Some(wraith_engine::WindowEnding::Finished(f)) = &report.window {
                window_cmd::print_finished(f);
            }
            if json {
                print_json(&report)?;
            }
            Ok(Outcome::Done)
        }
        Err(RunError::Refused(report)) => {
            eprint!("{}", report.render());
            eprintln!("\npreflight refused; nothing was changed");
            Ok(Outcome::Refused)
        }
        Err(e @ (RunError::Window(_) | RunError::WindowInterrupted { .. })) => {
            eprintln!("error: {e}");
            Err(Failure::Reported)
        }
        Err(RunError::Unsupported(msg)) => Err(Failure::Config(msg)),
        // The control socket could not be opened: nothing was started.
        Err(RunError::Control(e)) => Err(Failure::Config(e.to_string())),
        Err(RunError::InvalidCheckpoint(e)) => {
            eprintln!("error: {}: {e}", e.kind());
            Ok(Outcome::Refused)
        }
        Err(e) => {
            // Run errors carry their causes in their messages.
            eprintln!("error: {e}");
            if matches!(
                e,
                RunError::Interrupted { .. }
                    | RunError::Aborted { .. }
                    | RunError::Abandoned { .. }
            ) {
            } else if e.is_resumable() {
                eprintln!(
                    "the source table is untouched; the shadow table and the checkpoint are kept: \
                     fix the cause, then run `wraith run CONFIG` again to resume (`wraith status CONFIG` shows where)"
                );
            } else {
                eprintln!("the source table is untouched; this run cannot be resumed");
            }
            Err(Failure::Reported)
        }
    }
}
