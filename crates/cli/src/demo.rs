//! `wraith demo`: the whole job on a scratch server, no setup needed beyond
//! an installed MariaDB. It creates a sysbench-like table, runs a write load
//! against it (inserts, updates, key changes, deletes, rollbacks), rebuilds it
//! online with a cut-over, and proves the result equal to a mirror table the
//! load wrote in the same transactions.

use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use wraith_engine::config::Config;
use wraith_engine::mysql_async::prelude::Queryable;
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};
use wraith_engine::testkit::workload::{self, Load, LoadConfig};

use crate::{Failure, Outcome};

#[derive(Args)]
pub struct DemoArgs {
    /// Rows in the generated sysbench-like table.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// The ALTER to run.
    #[arg(
        long,
        default_value = "ADD COLUMN note VARCHAR(32) NOT NULL DEFAULT 'rebuilt'"
    )]
    alter: String,
    /// Backend: auto, sql or local.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Write load in transactions per second during the rebuild (0 = none).
    #[arg(long, default_value_t = 200)]
    load_rate: u32,
    /// Skip timing the server's own `ALTER TABLE ... FORCE, ALGORITHM=INPLACE` afterwards.
    #[arg(long)]
    no_baseline: bool,
}

pub async fn demo(args: DemoArgs) -> Result<Outcome, Failure> {
    eprintln!("starting a scratch MariaDB ...");
    let server = tokio::task::spawn_blocking(|| ScratchServer::start(ScratchOptions::default()))
        .await
        .context("scratch server thread")?
        .context("starting the scratch server")?;
    eprintln!(
        "scratch server on 127.0.0.1:{} (datadir {})",
        server.port(),
        server.datadir().display()
    );
    let pool = wraith_engine::mysql_async::Pool::new(server.opts(Some("mysql")));
    let mut conn = pool
        .get_conn()
        .await
        .context("connecting to the scratch server")?;
    let started = Instant::now();
    workload::create_sysbench_table(&mut conn, "demo", "sbtest1", args.rows)
        .await
        .context("creating the demo table")?;
    conn.query_drop(
        "CREATE TABLE demo.mirror LIKE demo.sbtest1; INSERT INTO demo.mirror SELECT * FROM demo.sbtest1",
    )
    .await
    .context("creating the mirror table")?;
    eprintln!(
        "created demo.sbtest1 with {} rows in {:.1?}",
        args.rows,
        started.elapsed()
    );

    let load = (args.load_rate > 0).then(|| {
        eprintln!(
            "write load: {} transactions/s on 4 connections (inserts, updates, key changes, deletes, rollbacks), \
             each also applied to demo.mirror in the same transaction",
            args.load_rate
        );
        Load::start(
            wraith_engine::mysql_async::Pool::new(server.opts(Some("demo"))),
            LoadConfig {
                schema: "demo".into(),
                table: "sbtest1".into(),
                rate: args.load_rate,
                connections: 4,
                seed: 42,
                max_id: args.rows,
                change_keys: true,
                mirror: Some("mirror".into()),
                hot_keys: 0,
            },
        )
    });

    let toml = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"demo\"\n\n\
         [[table]]\nname = \"sbtest1\"\nalter = {:?}\n\n[copy]\nbackend = {:?}\n",
        server.port(),
        args.alter,
        args.backend
    );
    let config = Config::parse(&toml, "demo config").map_err(|e| Failure::Config(e.to_string()))?;
    eprintln!("\nconfig:\n{toml}");
    let started = Instant::now();
    let outcome = crate::run(&config, false, Default::default()).await;
    let wraith_secs = started.elapsed().as_secs_f64();
    if let Some(load) = load {
        let stats = load.stop().await;
        eprintln!(
            "write load: {} transactions ({} rolled back, {} failed), p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            stats.transactions,
            stats.rollbacks,
            stats.errors,
            stats.quantile_ms(0.5),
            stats.quantile_ms(0.95),
            stats.quantile_ms(0.99),
            stats.max_ms()
        );
    }
    if matches!(outcome, Ok(Outcome::Done)) {
        let differing: Option<(u64, u64, u64)> = conn
            .query_first(
                "SELECT (SELECT COUNT(*) FROM demo.sbtest1), (SELECT COUNT(*) FROM demo.mirror), \
                 (SELECT COUNT(*) FROM demo.mirror m LEFT JOIN demo.sbtest1 t ON t.id = m.id \
                  WHERE t.id IS NULL OR NOT (t.k <=> m.k AND BINARY t.c <=> BINARY m.c AND BINARY t.pad <=> BINARY m.pad))",
            )
            .await
            .context("comparing with the mirror")?;
        let (rows, mirror_rows, bad) = differing.unwrap_or_default();
        if rows == mirror_rows && bad == 0 {
            eprintln!(
                "result: demo.sbtest1 ({rows} rows) equals the mirror the load wrote, row by row"
            );
        } else {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "demo.sbtest1 ({rows} rows) differs from the mirror ({mirror_rows} rows, {bad} rows differ)"
            )));
        }
    }
    if matches!(outcome, Ok(Outcome::Done)) && !args.no_baseline {
        // The same rebuild by the server itself, on the same server, right after:
        // the baseline wraith's figures are read against.
        let t0 = Instant::now();
        conn.query_drop("ALTER TABLE demo.mirror FORCE, ALGORITHM=INPLACE")
            .await
            .context("native ALTER baseline")?;
        let native = t0.elapsed().as_secs_f64();
        eprintln!(
            "baseline: native ALTER TABLE ... FORCE, ALGORITHM=INPLACE of the same rows took {native:.2}s ({:.0} rows/s); \
             wraith's whole run took {wraith_secs:.2}s = {:.2}x native",
            args.rows as f64 / native,
            wraith_secs / native
        );
    }
    drop(conn);
    pool.disconnect().await.ok();
    outcome
}
