//! `--replica`: a second scratch server replicating from the first, and the
//! replica's lag while a method runs.
//!
//! Why: native `ALTER … ALGORITHM=INPLACE` is fast on the primary, but a
//! replica applies it as one statement after it finished and lags by its
//! whole duration; the online tools copy in chunks and throttle on replica
//! lag. Only a real replica shows that.
//!
//! The replica is a scratch server of its own (`--server-id=2`, binlog ROW,
//! `--log-slave-updates`, four parallel replication workers as production
//! replicas run: an ALTER the source logs in two phases starts there with
//! the source; the server's own ALTER is logged the usual way, its default,
//! and starts there once it has finished), replicating by GTID (`MASTER_USE_GTID =
//! slave_pos`) from the first, which is reset before replication starts, so
//! the replica receives everything the benchmark writes with the binlog on:
//! the generated pristine table, and each method's work. What the benchmark
//! does only to prepare (restores, the expected result) is written with
//! `sql_log_bin = 0`, on each server that needs it.
//!
//! - [`Replica::wait_for`]: the replica has applied everything up to a GTID
//!   position of the primary (`MASTER_GTID_WAIT`); before each method, and
//!   for the time until a method's change is complete on the replica.
//! - [`LagWatch`]: while a method runs, the benchmark writes its own
//!   heartbeat on the primary every 100 ms (`REPLACE … VALUES (1, NOW(6))`
//!   into [`HEARTBEAT_SCHEMA`]) and reads its age on the replica every 100 ms
//!   (`TIMESTAMPDIFF(MICROSECOND, beat, NOW(6))`): the replica's lag, as
//!   gh-ost and wraith measure it (both servers share this machine's clock).
//!
//! What it leaves to others: when to wait and what to compare (the harness),
//! the servers' process (`testkit::scratch`).
//!
//! Errors: a replica that stopped (its I/O or SQL thread) or does not catch
//! up in time is a [`BenchError::Failed`] naming the replica's own error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Row};

use super::server::start_scratch;
use super::{BenchError, StepContext};
use crate::server::quote_ident;
use crate::testkit::scratch::{ScratchOptions, ScratchServer};

/// The schema of the benchmark's own heartbeat table (`beat`).
pub const HEARTBEAT_SCHEMA: &str = "wraith_bench_heartbeat";

/// The replica's parallel replication workers (optimistic mode, the
/// server's default), as production replicas run.
const REPLICA_PARALLEL_THREADS: u32 = 4;

/// How often the heartbeat is written and the lag sampled.
const BEAT_EVERY: Duration = Duration::from_millis(100);

/// The replica server and its connections.
pub(super) struct Replica {
    server: ScratchServer,
    pub(super) pool: Pool,
}

impl Replica {
    /// Starts the replica's server with `options` (its own server id and
    /// `log_slave_updates` are added) and makes it replicate from the
    /// primary on 127.0.0.1:`primary_port`, which is reset first.
    pub(super) async fn start(
        mut options: ScratchOptions,
        primary: &mut Conn,
        primary_port: u16,
    ) -> Result<Replica, BenchError> {
        // Later options win: these override the scratch server's --server-id=1.
        options
            .extra_args
            .extend(["--server-id=2".into(), "--log-slave-updates".into()]);
        options.extra_args.push(format!(
            "--slave-parallel-threads={REPLICA_PARALLEL_THREADS}"
        ));
        let server = tokio::task::spawn_blocking(move || start_scratch(options))
            .await
            .step("replica server thread")?
            .map_err(BenchError::Scratch)?;
        let pool = Pool::new(server.opts(None));
        let replica = Replica { server, pool };
        let mut conn = replica.conn().await?;
        // The replica starts from the primary's first event, with nothing of
        // its own in the way.
        primary
            .query_drop("RESET MASTER")
            .await
            .step("RESET MASTER on the primary")?;
        for statement in [
            "STOP SLAVE".to_string(),
            "RESET SLAVE ALL".to_string(),
            "RESET MASTER".to_string(),
            "SET GLOBAL gtid_slave_pos = ''".to_string(),
            format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {primary_port}, \
                 MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos"
            ),
            "START SLAVE".to_string(),
        ] {
            conn.query_drop(&statement)
                .await
                .with_step(|| format!("setting up the replica: {statement}"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = replica.slave_status(&mut conn).await?;
            if status.io_running == "Yes" && status.sql_running == "Yes" {
                break;
            }
            if Instant::now() > deadline || !status.error.is_empty() {
                return Err(BenchError::Failed(format!(
                    "the replica did not start replicating (I/O thread {}, SQL thread {}): {}",
                    status.io_running, status.sql_running, status.error
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        primary
            .query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                quote_ident(HEARTBEAT_SCHEMA)
            ))
            .await
            .step("creating the heartbeat schema")?;
        primary
            .query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {}.beat (id TINYINT NOT NULL PRIMARY KEY, \
                 beat TIMESTAMP(6) NOT NULL) COMMENT 'wraith bench: replica lag heartbeat'",
                quote_ident(HEARTBEAT_SCHEMA)
            ))
            .await
            .step("creating the heartbeat table")?;
        tracing::info!(port = replica.port(), "replica replicating");
        Ok(replica)
    }

    pub(super) fn port(&self) -> u16 {
        self.server.port()
    }

    pub(super) async fn conn(&self) -> Result<Conn, BenchError> {
        self.pool.get_conn().await.step("connecting to the replica")
    }

    /// Waits until the replica has applied everything the primary has
    /// written so far; returns how long that took.
    pub(super) async fn catch_up(
        &self,
        primary: &mut Conn,
        timeout: Duration,
    ) -> Result<Duration, BenchError> {
        let position = primary_position(primary).await?;
        let started = Instant::now();
        self.wait_for(&position, timeout).await?;
        Ok(started.elapsed())
    }

    /// Waits until the replica has applied the primary's GTID `position`;
    /// a replica whose replication stopped with an error fails at once
    /// rather than at the timeout.
    pub(super) async fn wait_for(
        &self,
        position: &str,
        timeout: Duration,
    ) -> Result<(), BenchError> {
        let mut conn = self.conn().await?;
        let started = Instant::now();
        loop {
            // Short waits, so a stopped replica is noticed between them.
            let reached: Option<i64> = conn
                .exec_first("SELECT MASTER_GTID_WAIT(?, 1)", (position,))
                .await
                .step("MASTER_GTID_WAIT on the replica")?;
            if reached == Some(0) {
                return Ok(());
            }
            let status = self.slave_status(&mut conn).await?;
            let stopped = status.io_running == "No" || status.sql_running != "Yes";
            if stopped || started.elapsed() > timeout {
                return Err(BenchError::Failed(format!(
                    "the replica did not reach the primary's position {position} {} (I/O thread {}, SQL thread {}{})",
                    if stopped { "because it stopped replicating".to_string() } else { format!("within {}s", timeout.as_secs()) },
                    status.io_running,
                    status.sql_running,
                    if status.error.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", status.error)
                    }
                )));
            }
        }
    }

    async fn slave_status(&self, conn: &mut Conn) -> Result<SlaveStatus, BenchError> {
        let row: Option<Row> = conn
            .query_first("SHOW SLAVE STATUS")
            .await
            .step("SHOW SLAVE STATUS")?;
        let text = |row: &Row, name: &str| -> String {
            row.get_opt::<Option<String>, _>(name)
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_default()
        };
        Ok(match row {
            None => SlaveStatus {
                io_running: "No".into(),
                sql_running: "No".into(),
                error: "the replica is not configured".into(),
            },
            Some(row) => SlaveStatus {
                io_running: text(&row, "Slave_IO_Running"),
                sql_running: text(&row, "Slave_SQL_Running"),
                error: [text(&row, "Last_IO_Error"), text(&row, "Last_SQL_Error")]
                    .into_iter()
                    .filter(|e| !e.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        })
    }
}

struct SlaveStatus {
    io_running: String,
    sql_running: String,
    error: String,
}

/// The primary's `@@gtid_binlog_pos`: everything it has written so far.
pub(super) async fn primary_position(primary: &mut Conn) -> Result<String, BenchError> {
    let position: Option<String> = primary
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .step("SELECT @@gtid_binlog_pos")?;
    Ok(position.unwrap_or_default())
}

/// Drops binlogs the servers no longer need without `RESET MASTER` (which
/// would pull the positions from under a connected replica): a new binlog,
/// and everything before it purged. A purge refused because a reader is
/// still on an old file only leaves that file for the next time.
pub(super) async fn purge_binlogs(conn: &mut Conn) {
    if conn
        .query_drop("FLUSH NO_WRITE_TO_BINLOG BINARY LOGS")
        .await
        .is_err()
    {
        return;
    }
    let current: Option<Row> = conn.query_first("SHOW MASTER STATUS").await.ok().flatten();
    let file = current.and_then(|row| row.get_opt::<String, _>(0).and_then(Result::ok));
    if let Some(file) = file {
        if let Err(e) = conn
            .exec_drop("PURGE BINARY LOGS TO ?", (file.as_str(),))
            .await
        {
            tracing::debug!(error = %e, "purging binlogs");
        }
    }
}

/// The heartbeat and the replica's lag, while a method runs.
pub(super) struct LagWatch {
    stop: Arc<AtomicBool>,
    /// The heartbeat's and the sampler's tasks (taken by [`LagWatch::stop`]).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// (when, lag in ms) of each sample.
    samples: Arc<Mutex<Vec<(Instant, f64)>>>,
}

impl LagWatch {
    /// Starts the heartbeat on `primary` and the sampling on `replica`, once
    /// the first beat has reached the replica (so the first samples are not
    /// the age of the previous method's last beat).
    pub(super) async fn start(primary: &Pool, replica: &Replica) -> Result<LagWatch, BenchError> {
        let table = format!("{}.beat", quote_ident(HEARTBEAT_SCHEMA));
        let beat_sql = format!("REPLACE INTO {table} (id, beat) VALUES (1, NOW(6))");
        let mut beat_conn = primary
            .get_conn()
            .await
            .step("connecting for the heartbeat")?;
        beat_conn
            .query_drop(&beat_sql)
            .await
            .step("writing the heartbeat")?;
        replica
            .catch_up(&mut beat_conn, Duration::from_secs(600))
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let beat = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(BEAT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Err(e) = beat_conn.query_drop(&beat_sql).await {
                        tracing::debug!(error = %e, "heartbeat");
                    }
                }
            })
        };
        let mut sample_conn = replica.conn().await?;
        let sample_sql =
            format!("SELECT TIMESTAMPDIFF(MICROSECOND, beat, NOW(6)) FROM {table} WHERE id = 1");
        let sampler = {
            let stop = stop.clone();
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(BEAT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    match sample_conn.query_first::<i64, _>(&sample_sql).await {
                        Ok(Some(us)) => {
                            if let Ok(mut s) = samples.lock() {
                                s.push((Instant::now(), us.max(0) as f64 / 1000.0));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "sampling the replica's lag"),
                    }
                }
            })
        };
        Ok(LagWatch {
            stop,
            tasks: vec![beat, sampler],
            samples,
        })
    }

    /// Stops the heartbeat and the sampling; returns the largest lag of each
    /// second from `origin` on (ms), and the largest overall.
    pub(super) async fn stop(mut self, origin: Instant) -> (Vec<f64>, Option<f64>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        per_second_max(origin, &samples)
    }
}

impl Drop for LagWatch {
    /// A watch dropped without [`LagWatch::stop`] (a run that failed) stops
    /// its tasks all the same.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The largest sample of each second from `origin` on (samples before it
/// are left out), rounded to 0.1 ms, and the largest of all.
fn per_second_max(origin: Instant, samples: &[(Instant, f64)]) -> (Vec<f64>, Option<f64>) {
    let mut series: Vec<f64> = Vec::new();
    let mut max: Option<f64> = None;
    for &(at, lag) in samples {
        let Some(offset) = at.checked_duration_since(origin) else {
            continue;
        };
        let second = offset.as_secs() as usize;
        if series.len() <= second {
            series.resize(second + 1, 0.0);
        }
        let lag = (lag * 10.0).round() / 10.0;
        series[second] = series[second].max(lag);
        max = Some(max.map_or(lag, |m: f64| m.max(lag)));
    }
    (series, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_kept_as_the_worst_sample_per_second() {
        let origin = Instant::now();
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let samples = [
            (at(100), 5.0),
            (at(900), 120.04),
            (at(1100), 30.0),
            (at(3200), 7.0),
        ];
        let (series, max) = per_second_max(origin, &samples);
        assert_eq!(series, vec![120.0, 30.0, 0.0, 7.0]);
        assert_eq!(max, Some(120.0));
        let (series, max) = per_second_max(at(5000), &samples);
        assert!(series.is_empty() && max.is_none());
    }
}
