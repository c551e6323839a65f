//! `wraith submit`, `wraith migrations` and `wraith serve`: schema changes
//! as requests in the server's registry (`wraith_engine::registry`), and the
//! service that runs them. This module parses arguments and prints; the
//! registry and the runner live in the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use wraith_engine::registry::serve::{ServeEvent, ServeOptions};
use wraith_engine::registry::{
    Migration, Registry, RegistryError, Request, RequestOptions, RequestTable, ServerConfig, Status,
};

use crate::{print_json, Failure, Outcome};

#[derive(Args)]
pub struct SubmitArgs {
    /// The server's TOML config: a job config without [[table]].
    server_config: PathBuf,
    /// The table to change (with --alter).
    #[arg(long, required_unless_present = "job", requires = "alter")]
    table: Option<String>,
    /// The clause after `ALTER TABLE t`, e.g. "ADD COLUMN note TEXT".
    #[arg(long, requires = "table")]
    alter: Option<String>,
    /// The table's schema, when it is not [source] database.
    #[arg(long, requires = "table")]
    schema: Option<String>,
    /// A job config whose [[table]]s (and [copy], [local], [cutover],
    /// [throttle], [changes]) make the request; its [source] must be the server's.
    #[arg(long, conflicts_with_all = ["table", "alter", "schema"])]
    job: Option<PathBuf>,
    /// The copy backend for this request.
    #[arg(long, value_parser = ["auto", "sql", "local"])]
    backend: Option<String>,
    /// Wait at `ready` (shadow in sync) until `wraith migrations complete UUID`.
    #[arg(long)]
    postpone_completion: bool,
    /// Cut over only after every request submitted before it has ended.
    #[arg(long)]
    in_order_completion: bool,
    /// Keep the old table in step after the cut-over for DURATION (`wraith revert`).
    #[arg(long, value_name = "DURATION")]
    revert_window: Option<String>,
    /// Consent to an ALTER that changes values, as the server's ALTER would.
    #[arg(long)]
    allow_lossy: bool,
    /// Print `{"uuid": ..., "status": ...}` on stdout instead of the UUID.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MigrationsArgs {
    /// The server's TOML config: a job config without [[table]].
    server_config: PathBuf,
    #[command(subcommand)]
    action: MigrationsAction,
}

#[derive(Subcommand)]
enum MigrationsAction {
    /// Every request, oldest first.
    List {
        #[arg(long)]
        json: bool,
        /// Only requests in this status.
        #[arg(long)]
        status: Option<String>,
    },
    /// One request and the history of its status.
    Show {
        uuid: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancels a request: at once when not running yet; a running one is
    /// stopped by `serve`, which drops its shadow (the source is untouched).
    Cancel { uuid: String },
    /// Queues a failed or cancelled request again.
    Retry { uuid: String },
    /// Lets a postponed request cut over.
    Complete { uuid: String },
    /// Holds a request at `ready` before its cut-over, until `complete`.
    Postpone { uuid: String },
}

#[derive(Args)]
pub struct ServeArgs {
    /// The server's TOML config: a job config without [[table]].
    server_config: PathBuf,
    /// Requests run at once, on different tables.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    concurrency: u16,
    /// How often the registry is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll: Duration,
    /// Serve the page, /api/migrations and /metrics on ADDR (default 127.0.0.1:7117).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:7117")]
    http: Option<SocketAddr>,
    /// Exit once no request is queued, running or ready.
    #[arg(long)]
    once: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_millis(50) => Ok(d),
        _ => Err(format!("{s:?} is not a duration of at least 50ms, like 1s")),
    }
}

fn load(path: &std::path::Path) -> Result<ServerConfig, Failure> {
    ServerConfig::load(path).map_err(|e| Failure::Config(e.to_string()))
}

/// Registry errors: the operator's mistakes exit 2, the rest 1.
fn registry_failure(e: RegistryError) -> Failure {
    match e {
        RegistryError::NotFound(_) | RegistryError::WrongStatus { .. } => {
            Failure::Config(e.to_string())
        }
        e => Failure::Runtime(anyhow::Error::new(e)),
    }
}

async fn open(server: &ServerConfig) -> Result<Registry, Failure> {
    Registry::open(server.settings())
        .await
        .map_err(registry_failure)
}

/// Who asks, for `cancelled_by`.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

pub async fn submit(args: SubmitArgs) -> Result<Outcome, Failure> {
    let server = load(&args.server_config)?;
    let options = RequestOptions {
        backend: args.backend.clone(),
        revert_window: args.revert_window.clone(),
        postpone_completion: args.postpone_completion,
        in_order_completion: args.in_order_completion,
        sections: String::new(),
    };
    let request = match (&args.job, &args.table, &args.alter) {
        (Some(job), _, _) => {
            Request::from_job(&server, job, options).map_err(|e| Failure::Config(e.to_string()))?
        }
        (None, Some(table), Some(alter)) => Request {
            tables: vec![RequestTable {
                schema: args
                    .schema
                    .clone()
                    .unwrap_or_else(|| server.database().to_string()),
                name: table.clone(),
                alter: alter.clone(),
                rename_columns: Default::default(),
                allow_lossy: args.allow_lossy,
            }],
            options,
        },
        _ => {
            return Err(Failure::Config(
                "give --table T --alter \"CLAUSE\", or --job JOB.toml".into(),
            ))
        }
    };
    // The request must make a valid job before anything is recorded.
    let job = server
        .job(&request)
        .map_err(|e| Failure::Config(format!("the request is not a valid job: {e}")))?;
    let registry = open(&server).await?;
    let schema = request
        .tables
        .first()
        .map(|t| t.schema.clone())
        .unwrap_or_default();
    let uuid = registry
        .insert(&schema, &request)
        .await
        .map_err(registry_failure)?;
    let report = wraith_engine::preflight(&job).await;
    if report.passed() {
        registry
            .transition(&uuid, &[Status::Requested], Status::Queued, "check passed")
            .await
            .map_err(registry_failure)?;
        if args.json {
            print_json(&serde_json::json!({"uuid": uuid, "status": "queued"}))?;
        } else {
            println!("{uuid}");
            eprintln!(
                "queued {uuid}: {}; `wraith serve` runs it",
                request.alter_statement().replace('\n', " ")
            );
        }
        return Ok(Outcome::Done);
    }
    let failures: Vec<String> = report
        .failures()
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let message = format!("check refused: {}", failures.join("; "));
    registry
        .transition(&uuid, &[Status::Requested], Status::Failed, &message)
        .await
        .map_err(registry_failure)?;
    eprint!("{}", report.render());
    eprintln!(
        "\npreflight refused: {} check(s) failed; request {uuid} is recorded as failed, nothing was changed",
        failures.len()
    );
    if args.json {
        print_json(&serde_json::json!({"uuid": uuid, "status": "failed", "message": message}))?;
    }
    Ok(Outcome::Refused)
}

pub async fn migrations(args: MigrationsArgs) -> Result<Outcome, Failure> {
    let server = load(&args.server_config)?;
    let registry = open(&server).await?;
    match args.action {
        MigrationsAction::List { json, status } => {
            let statuses = match status.as_deref() {
                None => vec![],
                Some(s) => vec![Status::parse(s).ok_or_else(|| {
                    Failure::Config(format!(
                        "--status {s:?} is not a status; use one of {}",
                        Status::ALL.map(Status::as_str).join(", ")
                    ))
                })?],
            };
            let list = registry.list(&statuses).await.map_err(registry_failure)?;
            if json {
                print_json(&serde_json::json!({ "migrations": list }))?;
            } else {
                print_list(&list);
            }
        }
        MigrationsAction::Show { uuid, json } => {
            let m = registry.get(&uuid).await.map_err(registry_failure)?;
            let log = registry.history(&uuid).await.map_err(registry_failure)?;
            if json {
                let mut value = serde_json::to_value(&m).map_err(|e| Failure::Runtime(e.into()))?;
                value["log"] =
                    serde_json::to_value(&log).map_err(|e| Failure::Runtime(e.into()))?;
                print_json(&value)?;
            } else {
                print_one(&m);
                println!("history:");
                for entry in log {
                    println!(
                        "  {}  {} -> {}  {}",
                        entry.at,
                        entry.from_status.as_deref().unwrap_or("-"),
                        entry.to_status,
                        entry.message
                    );
                }
            }
        }
        MigrationsAction::Cancel { uuid } => {
            let was = registry
                .cancel(&uuid, &operator())
                .await
                .map_err(registry_failure)?;
            if was == Status::Cancelled {
                eprintln!("{uuid}: cancelled (it had not started)");
            } else {
                eprintln!(
                    "{uuid}: cancel requested ({was}); serve stops it at its next safe point and drops its shadow"
                );
            }
        }
        MigrationsAction::Retry { uuid } => {
            registry.retry(&uuid).await.map_err(registry_failure)?;
            eprintln!("{uuid}: queued again");
        }
        MigrationsAction::Complete { uuid } => {
            let status = registry
                .set_postponed(&uuid, false)
                .await
                .map_err(registry_failure)?;
            eprintln!("{uuid}: may complete ({status}); serve cuts it over when it is ready");
        }
        MigrationsAction::Postpone { uuid } => {
            let status = registry
                .set_postponed(&uuid, true)
                .await
                .map_err(registry_failure)?;
            eprintln!(
                "{uuid}: completion postponed ({status}); it waits at ready until `wraith migrations complete {uuid}`"
            );
        }
    }
    Ok(Outcome::Done)
}

fn eta(m: &Migration) -> String {
    match m.eta_seconds {
        Some(s) if m.status == Status::Running => format!("{s}s"),
        _ => "-".into(),
    }
}

fn print_list(list: &[Migration]) {
    println!(
        "{:<36}  {:<9}  {:<20}  {:>6}  {:>6}  {:<19}  MESSAGE",
        "UUID", "STATUS", "TABLES", "DONE", "ETA", "ADDED (UTC)"
    );
    for m in list {
        let mut message = m.message.replace('\n', " ");
        if message.chars().count() > 80 {
            message = message.chars().take(77).collect::<String>() + "...";
        }
        println!(
            "{:<36}  {:<9}  {:<20}  {:>5.1}%  {:>6}  {:<19}  {}",
            m.uuid,
            m.status,
            m.tables.join(","),
            m.progress_pct,
            eta(m),
            m.added_at.as_deref().unwrap_or("-"),
            message
        );
    }
}

fn print_one(m: &Migration) {
    let time = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
    println!("uuid:         {}", m.uuid);
    println!(
        "status:       {}{}",
        m.status,
        if m.cancel_requested {
            " (cancel requested)"
        } else {
            ""
        }
    );
    println!("tables:       {}.{}", m.schema_name, m.tables.join(","));
    println!("alter:        {}", m.alter.replace('\n', " "));
    println!(
        "options:      {}",
        if m.options.is_empty() {
            "-"
        } else {
            &m.options
        }
    );
    println!(
        "stage:        {}",
        if m.stage.is_empty() { "-" } else { &m.stage }
    );
    println!(
        "progress:     {:.1}% ({} of {} rows, {:.0} rows/s, ETA {})",
        m.progress_pct,
        m.rows_copied,
        m.rows_total,
        m.rows_per_sec,
        eta(m)
    );
    println!(
        "added:        {} ({})",
        time(&m.added_at),
        m.added_timestamp
    );
    println!("started:      {}", time(&m.started_at));
    println!("ready:        {}", time(&m.ready_at));
    println!("completed:    {}", time(&m.completed_at));
    println!("retries:      {}", m.retries);
    println!("postponed:    {}", m.postpone_completion);
    println!("message:      {}", m.message);
}

/// The page's and `/api/migrations`' JSON: the registry, newest first.
async fn snapshot(
    registry: &Registry,
    concurrency: u16,
    started_at: &str,
) -> Result<serde_json::Value, String> {
    let mut list = registry.list(&[]).await.map_err(|e| e.to_string())?;
    list.reverse();
    Ok(serde_json::json!({
        "server": registry.server(),
        "registry": registry.name(),
        "serve": {
            "pid": std::process::id(),
            "concurrency": concurrency,
            "started_at": started_at,
        },
        "migrations": list,
    }))
}

pub async fn serve(args: ServeArgs) -> Result<Outcome, Failure> {
    let server = load(&args.server_config)?;
    let registry = Arc::new(open(&server).await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::wait_for_signal().await;
        eprintln!("\nstopping: runs stop at their next safe point; the next serve resumes them");
        let _ = stop_tx.send(true);
    });
    if let Some(addr) = args.http {
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: --http {addr} is not a loopback address; the page has no login, so \
                 anyone who can reach it reads the registry"
            );
        }
        let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string();
        let concurrency = args.concurrency;
        let source = registry.clone();
        let snapshot: crate::serve_http::Snapshot = Arc::new(move || {
            let (registry, started_at) = (source.clone(), started_at.clone());
            Box::pin(async move { snapshot(&registry, concurrency, &started_at).await })
        });
        let bound = crate::serve_http::serve(addr, snapshot)
            .await
            .map_err(|e| Failure::Config(format!("--http {addr}: cannot listen: {e}")))?;
        eprintln!("http: http://{bound}/");
    }
    eprintln!(
        "serving {} on {} (concurrency {})",
        registry.name(),
        registry.server(),
        args.concurrency
    );
    let events: wraith_engine::registry::serve::ServeEvents = Arc::new(|event| match event {
        ServeEvent::Started {
            uuid,
            tables,
            resumed,
        } => eprintln!(
            "{uuid}: {} {}",
            if resumed { "resumed" } else { "started" },
            tables.join(",")
        ),
        ServeEvent::Ready { uuid } => {
            eprintln!("{uuid}: ready; waits for `wraith migrations complete {uuid}`")
        }
        ServeEvent::Ended {
            uuid,
            status,
            message,
        } => eprintln!("{uuid}: {status}: {message}"),
        ServeEvent::Warning(w) => eprintln!("warning: {w}"),
    });
    let options = ServeOptions {
        concurrency: usize::from(args.concurrency),
        poll: args.poll,
        once: args.once,
    };
    wraith_engine::registry::serve::serve(&server, registry, options, stop_rx, events)
        .await
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
    Ok(Outcome::Done)
}
