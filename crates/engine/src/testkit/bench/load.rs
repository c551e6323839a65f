//! The benchmark's write load: sysbench `oltp_write_only`-like transactions at
//! a fixed rate, with latency histograms and a replayable log.
//!
//! Each transaction is `BEGIN; UPDATE … SET k = k + 1 (an indexed column);
//! UPDATE … SET c = … (a plain column); DELETE one row; INSERT it again with
//! new values; COMMIT`, each statement a round trip, like sysbench. The rows a
//! transaction touches are picked at random among the row numbers its
//! connection owns (row number modulo the connection count), so two
//! connections never touch the same row: the committed transactions of each
//! connection, replayed in order onto the pristine table, give exactly what
//! the table must hold afterwards whatever the interleaving.
//!
//! Latency is measured from when a transaction was due by the schedule, not
//! from when it could start: a writer stuck behind a locked table keeps its
//! schedule, and every transaction it is late for counts the wait (open loop,
//! no coordinated omission). Histograms are read in windows
//! ([`WriteLoad::end_window`]): one before a method (its baseline), one
//! while it runs and one after it (the aftermath). A transaction belongs to
//! the window it was due in, and a window is closed only once every
//! transaction due in it has finished, so a writer blocked until the method's
//! end counts its whole wait in the method's window. Each window also keeps
//! its p95 per second (by when transactions were due), which shows how long
//! a method's effect on the writers lasts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use rand::{Rng, SeedableRng};

use super::tables::{self, TableKind};
use super::BenchError;
use crate::server::{quote_ident, server_error_code, Context};

/// What load to run.
#[derive(Debug, Clone)]
pub struct WriteLoadConfig {
    pub schema: String,
    pub kind: TableKind,
    /// Row numbers run from 1 to this.
    pub rows: u64,
    /// Transactions per second over all connections (at least 1).
    pub rate: u32,
    pub connections: usize,
    pub seed: u64,
}

/// The load's figures over one window of time.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadWindow {
    pub secs: f64,
    pub transactions: u64,
    pub transactions_per_sec: f64,
    /// Failed transactions (rolled back), by server error code (0: connection errors).
    pub errors: BTreeMap<u16, u64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The worst latency in the window.
    pub max_ms: f64,
    /// The p95 of the transactions due in each second of the window (0 for
    /// a second without a committed one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_second_p95_ms: Vec<f64>,
}

impl LoadWindow {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

struct WindowState {
    started: Instant,
    latencies_us: Histogram<u64>,
    transactions: u64,
    errors: BTreeMap<u16, u64>,
    /// Latencies (µs) by the second of the window they were due in.
    per_second_us: Vec<Vec<u64>>,
}

impl WindowState {
    fn new(started: Instant) -> WindowState {
        WindowState {
            started,
            // 1 µs to 1 hour at 3 significant digits; values above are clamped.
            latencies_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            transactions: 0,
            errors: BTreeMap::new(),
            per_second_us: Vec::new(),
        }
    }

    fn record(&mut self, due: Instant, latency_us: u64) {
        self.transactions += 1;
        self.latencies_us.saturating_record(latency_us.max(1));
        let second = due.saturating_duration_since(self.started).as_secs() as usize;
        if self.per_second_us.len() <= second {
            self.per_second_us.resize_with(second + 1, Vec::new);
        }
        self.per_second_us[second].push(latency_us);
    }

    fn into_window(self, ended: Instant) -> LoadWindow {
        let secs = ended.saturating_duration_since(self.started).as_secs_f64();
        let ms = |q: f64| {
            if self.latencies_us.is_empty() {
                0.0
            } else {
                self.latencies_us.value_at_quantile(q) as f64 / 1000.0
            }
        };
        LoadWindow {
            secs,
            transactions: self.transactions,
            transactions_per_sec: if secs > 0.0 {
                self.transactions as f64 / secs
            } else {
                0.0
            },
            errors: self.errors,
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: self.latencies_us.max() as f64 / 1000.0,
            per_second_p95_ms: self
                .per_second_us
                .into_iter()
                .map(|mut second| {
                    if second.is_empty() {
                        return 0.0;
                    }
                    second.sort_unstable();
                    let at = ((second.len() as f64 * 0.95).ceil() as usize).clamp(1, second.len());
                    second[at - 1] as f64 / 1000.0
                })
                .collect(),
        }
    }
}

/// The open window, and the next one once a boundary is set.
struct Windows {
    current: WindowState,
    /// Transactions due at or after the boundary go to the next window.
    next: Option<(Instant, WindowState)>,
}

impl Windows {
    fn for_due(&mut self, due: Instant) -> &mut WindowState {
        match &mut self.next {
            Some((boundary, next)) if due >= *boundary => next,
            _ => &mut self.current,
        }
    }
}

/// What the writers and the load share.
struct Shared {
    windows: Mutex<Windows>,
    /// The load's start: the origin of `pending_due_ns`.
    epoch: Instant,
    /// Per writer, when its oldest unfinished transaction was due (ns after
    /// `epoch`); `u64::MAX` once it has stopped.
    pending_due_ns: Vec<AtomicU64>,
}

impl Shared {
    fn set_pending(&self, writer: usize, due: Instant) {
        if let Some(p) = self.pending_due_ns.get(writer) {
            let ns = due.saturating_duration_since(self.epoch).as_nanos() as u64;
            p.store(ns, Ordering::Release);
        }
    }

    fn all_done_before(&self, at: Instant) -> bool {
        let at_ns = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.pending_due_ns
            .iter()
            .all(|p| p.load(Ordering::Acquire) >= at_ns)
    }
}

/// A running load. [`WriteLoad::stop`] ends it.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    writers: Vec<tokio::task::JoinHandle<WriterLog>>,
}

/// What a stopped load leaves: its last window and its committed transactions.
pub struct LoadLog {
    pub last_window: LoadWindow,
    /// Committed transactions (their statements), grouped by connection, in commit order.
    pub committed: Vec<Vec<Vec<String>>>,
    /// Transactions whose COMMIT failed without a server answer: their outcome is unknown.
    pub uncertain: u64,
}

#[derive(Default)]
struct WriterLog {
    committed: Vec<Vec<String>>,
    uncertain: u64,
}

impl WriteLoad {
    /// Starts the writers on `pool` (one connection each).
    pub fn start(pool: Pool, config: WriteLoadConfig) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = config.connections.max(1);
        let epoch = Instant::now();
        let shared = Arc::new(Shared {
            windows: Mutex::new(Windows {
                current: WindowState::new(epoch),
                next: None,
            }),
            epoch,
            pending_due_ns: (0..connections).map(|_| AtomicU64::new(0)).collect(),
        });
        let writers = (0..connections)
            .map(|index| {
                let writer = Writer {
                    pool: pool.clone(),
                    config: config.clone(),
                    index: index as u64,
                    connections: connections as u64,
                    stop: stop.clone(),
                    shared: shared.clone(),
                };
                tokio::spawn(writer.run())
            })
            .collect();
        WriteLoad {
            stop,
            shared,
            writers,
        }
    }

    /// Ends the current window now and returns its figures once every
    /// transaction due in it has finished (at most `WINDOW_GRACE` later); the
    /// next window starts now.
    pub async fn end_window(&self) -> LoadWindow {
        const WINDOW_GRACE: Duration = Duration::from_secs(600);
        let at = Instant::now();
        if let Ok(mut w) = self.shared.windows.lock() {
            w.next = Some((at, WindowState::new(at)));
        }
        while !self.shared.all_done_before(at) && at.elapsed() < WINDOW_GRACE {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Ok(mut w) = self.shared.windows.lock() else {
            return LoadWindow::default();
        };
        let next = w
            .next
            .take()
            .map(|(_, next)| next)
            .unwrap_or_else(|| WindowState::new(at));
        std::mem::replace(&mut w.current, next).into_window(at)
    }

    /// Stops the writers (each finishes its transaction) and returns the log.
    pub async fn stop(mut self) -> LoadLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut committed = Vec::new();
        let mut uncertain = 0;
        for w in std::mem::take(&mut self.writers) {
            match w.await {
                Ok(log) => {
                    committed.push(log.committed);
                    uncertain += log.uncertain;
                }
                // A writer that panicked leaves its log unknown.
                Err(_) => uncertain += 1,
            }
        }
        LoadLog {
            last_window: self.end_window().await,
            committed,
            uncertain,
        }
    }
}

impl Drop for WriteLoad {
    /// A load dropped without [`WriteLoad::stop`] (a run that failed) stops
    /// its writers all the same.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LoadLog {
    pub fn transactions(&self) -> usize {
        self.committed.iter().map(Vec::len).sum()
    }

    /// Applies the committed transactions to `schema`'s copy of the table
    /// (statements rewritten from the load's table to it), connection by
    /// connection in commit order.
    pub async fn replay(
        &self,
        conn: &mut Conn,
        config: &WriteLoadConfig,
        schema: &str,
    ) -> Result<(), BenchError> {
        let from = qualified(&config.schema, config.kind);
        let to = qualified(schema, config.kind);
        for transactions in &self.committed {
            for batch in transactions.chunks(200) {
                // One statement per query: wraith's connections have multi-statements off.
                let what = || format!("replaying the load's transactions onto {schema}");
                conn.query_drop("START TRANSACTION").await.context(what)?;
                for statement in batch.iter().flatten() {
                    conn.query_drop(statement.replace(&from, &to))
                        .await
                        .context(what)?;
                }
                conn.query_drop("COMMIT").await.context(what)?;
            }
        }
        Ok(())
    }
}

fn qualified(schema: &str, kind: TableKind) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(kind.table_name()))
}

/// A random row number (1..=rows) that writer `index` of `connections` owns.
fn owned_row_number(rng: &mut impl Rng, rows: u64, connections: u64, index: u64) -> u64 {
    let per_writer = (rows / connections).max(1);
    let n = rng.random_range(0..per_writer) * connections + index + 1;
    n.min(rows.max(1))
}

struct Writer {
    pool: Pool,
    config: WriteLoadConfig,
    index: u64,
    connections: u64,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

enum Outcome {
    Committed,
    Failed(u16),
    Uncertain,
}

impl Writer {
    async fn run(self) -> WriterLog {
        let mut log = WriterLog::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.config
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.index),
        );
        let interval =
            Duration::from_secs_f64(self.connections as f64 / self.config.rate.max(1) as f64);
        // Writers start spread over one interval, not all at once.
        let mut due =
            Instant::now() + interval.mul_f64(self.index as f64 / self.connections as f64);
        let mut conn: Option<Conn> = None;
        let writer = self.index as usize;
        while !self.stop.load(Ordering::Relaxed) {
            self.shared.set_pending(writer, due);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
            let statements = self.transaction(&mut rng);
            let outcome = self.execute(&mut conn, &statements).await;
            let latency_us = due.elapsed().as_micros() as u64;
            let Ok(mut windows) = self.shared.windows.lock() else {
                break;
            };
            let w = windows.for_due(due);
            due += interval;
            match outcome {
                Outcome::Committed => {
                    w.record(due, latency_us);
                    log.committed.push(statements);
                }
                Outcome::Failed(code) => *w.errors.entry(code).or_default() += 1,
                Outcome::Uncertain => {
                    *w.errors.entry(0).or_default() += 1;
                    log.uncertain += 1;
                }
            }
            drop(windows);
            self.shared.set_pending(writer, due);
        }
        if let Some(p) = self.shared.pending_due_ns.get(writer) {
            p.store(u64::MAX, Ordering::Release);
        }
        log
    }

    fn row_number(&self, rng: &mut impl Rng) -> u64 {
        owned_row_number(rng, self.config.rows, self.connections, self.index)
    }

    fn transaction(&self, rng: &mut impl Rng) -> Vec<String> {
        let kind = self.config.kind;
        let qt = qualified(&self.config.schema, kind);
        let by = kind.row_number_column();
        let plain = kind.plain_column();
        let (a, b, c) = (
            self.row_number(rng),
            self.row_number(rng),
            self.row_number(rng),
        );
        let text = tables::sysbench_string(rng.random(), 10);
        vec![
            format!("UPDATE {qt} SET k = k + 1 WHERE {by} = {a}"),
            format!(
                "UPDATE {qt} SET {plain} = '{}' WHERE {by} = {b}",
                if kind == TableKind::Wide {
                    &text[..95]
                } else {
                    &text
                }
            ),
            format!("DELETE FROM {qt} WHERE {by} = {c}"),
            tables::insert_row_sql(kind, &qt, c, rng.random()),
        ]
    }

    async fn execute(&self, conn: &mut Option<Conn>, statements: &[String]) -> Outcome {
        if conn.is_none() {
            match self.pool.get_conn().await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "load: cannot connect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Outcome::Failed(0);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            return Outcome::Failed(0);
        };
        let body = async {
            c.query_drop("START TRANSACTION").await?;
            for s in statements {
                c.query_drop(s.as_str()).await?;
            }
            Ok::<(), mysql_async::Error>(())
        }
        .await;
        if let Err(e) = body {
            tracing::debug!(error = %e, "load transaction failed");
            let code = server_error_code(&e);
            if code.is_none() || c.query_drop("ROLLBACK").await.is_err() {
                *conn = None;
            }
            return Outcome::Failed(code.unwrap_or(0));
        }
        match c.query_drop("COMMIT").await {
            Ok(()) => Outcome::Committed,
            Err(e) => {
                tracing::debug!(error = %e, "load COMMIT failed");
                match server_error_code(&e) {
                    // The server answered: the transaction was rolled back.
                    Some(code) => {
                        let _ = c.query_drop("ROLLBACK").await;
                        Outcome::Failed(code)
                    }
                    None => {
                        *conn = None;
                        Outcome::Uncertain
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_own_disjoint_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for index in 0..3 {
            for _ in 0..1000 {
                let n = owned_row_number(&mut rng, 1000, 3, index);
                assert!((1..=1000).contains(&n));
                assert_eq!((n - 1) % 3, index);
            }
        }
    }

    #[test]
    fn windows_report_quantiles() {
        let start = Instant::now();
        let mut w = WindowState::new(start);
        for us in 1..=1000u64 {
            // Due in the window's second us / 100.
            let due = start + Duration::from_millis(us * 10);
            w.record(due, us * 1000);
        }
        let window = w.into_window(start + Duration::from_secs(10));
        assert!((window.transactions_per_sec - 100.0).abs() < 0.01);
        assert_eq!(window.transactions, 1000);
        assert!((window.p95_ms - 950.0).abs() < 5.0, "{}", window.p95_ms);
        assert!((window.max_ms - 1000.0).abs() < 5.0);
        assert_eq!(window.per_second_p95_ms.len(), 11);
        // Second 0 holds 1..=99 ms.
        assert!((window.per_second_p95_ms[0] - 95.0).abs() < 1.0);
    }
}
