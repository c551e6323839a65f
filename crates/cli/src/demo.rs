//! `wraith demo`: the whole job on a scratch server, no setup needed beyond
//! an installed MariaDB.

use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use wraith_engine::config::Config;
use wraith_engine::mysql_async::prelude::Queryable;
use wraith_engine::scratch::{ScratchOptions, ScratchServer};
use wraith_engine::workload;

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
    let pool = wraith_engine::mysql_async::Pool::new(server.opts(None));
    let mut conn = pool
        .get_conn()
        .await
        .context("connecting to the scratch server")?;
    let started = Instant::now();
    workload::create_sysbench_table(&mut conn, "demo", "sbtest1", args.rows)
        .await
        .context("creating the demo table")?;
    eprintln!(
        "created demo.sbtest1 with {} rows in {:.1?}",
        args.rows,
        started.elapsed()
    );
    drop(conn);

    let toml = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"demo\"\n\n\
         [[table]]\nname = \"sbtest1\"\nalter = {:?}\n\n[copy]\nbackend = {:?}\n\n[cutover]\nenabled = false\n",
        server.port(),
        args.alter,
        args.backend
    );
    let config = Config::parse(&toml, "demo config").map_err(|e| Failure::Config(e.to_string()))?;
    eprintln!("\nconfig:\n{toml}");
    let started = Instant::now();
    let outcome = crate::run(&config, false).await;
    let wraith_secs = started.elapsed().as_secs_f64();
    if matches!(outcome, Ok(Outcome::Done)) && !args.no_baseline {
        // The same rebuild by the server itself, on the same server, right after:
        // the baseline wraith's figures are read against.
        let mut conn = pool
            .get_conn()
            .await
            .context("connecting to the scratch server")?;
        let t0 = Instant::now();
        conn.query_drop("ALTER TABLE demo.sbtest1 FORCE, ALGORITHM=INPLACE")
            .await
            .context("native ALTER baseline")?;
        let native = t0.elapsed().as_secs_f64();
        eprintln!(
            "baseline: native ALTER TABLE ... FORCE, ALGORITHM=INPLACE took {native:.2}s ({:.0} rows/s); \
             wraith's whole run took {wraith_secs:.2}s = {:.2}x native",
            args.rows as f64 / native,
            wraith_secs / native
        );
    }
    pool.disconnect().await.ok();
    outcome
}
