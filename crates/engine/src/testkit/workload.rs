//! Generated tables and write loads, for `wraith demo`, `wraith bench` and tests.
//!
//! The sysbench-like table matches `sysbench oltp_*`'s `sbtest` layout (`id`
//! auto-increment primary key, `k` int with a secondary index, `c` char(120),
//! `pad` char(60)) so figures compare with the peers measured in
//! `shared/bench/peers`.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::server::{quote_ident, Context, DbError};

/// Creates `schema.table` as a sysbench-like table holding `rows` rows.
/// Rows are generated server-side, in batches, so this is fast for millions.
pub async fn create_sysbench_table(
    conn: &mut Conn,
    schema: &str,
    table: &str,
    rows: u64,
) -> Result<(), DbError> {
    let qt = format!("{}.{}", quote_ident(schema), quote_ident(table));
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {}",
        quote_ident(schema)
    ))
    .await
    .context(|| format!("creating database {schema}"))?;
    conn.query_drop(format!(
        "CREATE TABLE {qt} (\
           id INT UNSIGNED NOT NULL AUTO_INCREMENT, \
           k INT UNSIGNED NOT NULL DEFAULT 0, \
           c CHAR(120) NOT NULL DEFAULT '', \
           pad CHAR(60) NOT NULL DEFAULT '', \
           PRIMARY KEY (id), KEY k_1 (k)) ENGINE=InnoDB"
    ))
    .await
    .context(|| format!("creating {schema}.{table}"))?;
    const BATCH: u64 = 100_000;
    let mut done = 0;
    while done < rows {
        let n = BATCH.min(rows - done);
        // A cross join of digits works on MariaDB and MySQL alike (no sequence
        // engine, no recursion limit).
        conn.query_drop(format!(
            "INSERT INTO {qt} (id, k, c, pad) \
             WITH d (n) AS (SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
               UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
               UNION ALL SELECT 8 UNION ALL SELECT 9), \
             seq (n) AS (SELECT 1 + a.n + 10 * b.n + 100 * c.n + 1000 * e.n + 10000 * f.n \
               FROM d a, d b, d c, d e, d f) \
             SELECT {done} + n, FLOOR(1 + RAND({done} + n) * {rows}), \
               CONCAT_WS('-', LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0'), \
                 LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0'), \
                 LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0'), \
                 LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0'), \
                 LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0')), \
               CONCAT_WS('-', LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0'), \
                 LPAD(FLOOR(RAND() * 1e11), 11, '0'), LPAD(FLOOR(RAND() * 1e11), 11, '0'), \
                 LPAD(FLOOR(RAND() * 1e11), 11, '0')) \
             FROM seq WHERE n <= {n}"
        ))
        .await
        .context(|| format!("filling {schema}.{table}"))?;
        done += n;
    }
    conn.query_drop(format!("ANALYZE TABLE {qt}"))
        .await
        .context(|| format!("analyzing {schema}.{table}"))?;
    Ok(())
}

/// A write load on a sysbench-like table: what `wraith demo` and `wraith bench`
/// run against the table they rebuild, and what the online tests run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub schema: String,
    pub table: String,
    /// Transactions per second over all connections (0 = as fast as possible).
    pub rate: u32,
    pub connections: usize,
    pub seed: u64,
    /// Largest `id` at the start; new rows get ids above it.
    pub max_id: u64,
    /// Whether transactions may change primary keys.
    pub change_keys: bool,
    /// A table of the same shape that receives every statement too, in the
    /// same transaction: an oracle the tests compare the rebuilt table with.
    pub mirror: Option<String>,
    /// Restrict updates and deletes to ids `1..=hot_keys` (0 = all ids).
    pub hot_keys: u64,
}

/// What a load did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStats {
    pub transactions: u64,
    pub rollbacks: u64,
    pub errors: u64,
    /// Transaction latencies in microseconds, in completion order.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

impl LoadStats {
    /// The latency at quantile `q` (0..1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }

    /// The longest a transaction took, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latencies_us.iter().copied().max().unwrap_or(0) as f64 / 1000.0
    }

    fn merge(&mut self, other: LoadStats) {
        self.transactions += other.transactions;
        self.rollbacks += other.rollbacks;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// A running load; [`Load::stop`] ends it and returns what it did.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadStats>>,
}

impl Load {
    /// Starts `config.connections` writers on `pool`.
    pub fn start(pool: mysql_async::Pool, config: LoadConfig) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let next_id = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(config.max_id + 1));
        let tasks = (0..config.connections.max(1))
            .map(|i| {
                let pool = pool.clone();
                let config = config.clone();
                let stop = stop.clone();
                let next_id = next_id.clone();
                tokio::spawn(async move { writer(pool, config, i as u64, stop, next_id).await })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the writers (each finishes its transaction) and sums their figures.
    pub async fn stop(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = LoadStats::default();
        for t in self.tasks {
            if let Ok(stats) = t.await {
                total.merge(stats);
            }
        }
        total
    }
}

async fn writer(
    pool: mysql_async::Pool,
    config: LoadConfig,
    index: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> LoadStats {
    use rand::{Rng, SeedableRng};
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(index));
    let mut stats = LoadStats::default();
    let qt = format!(
        "{}.{}",
        quote_ident(&config.schema),
        quote_ident(&config.table)
    );
    let interval = if config.rate == 0 {
        None
    } else {
        Some(std::time::Duration::from_secs_f64(
            config.connections.max(1) as f64 / config.rate as f64,
        ))
    };
    let mut conn = match pool.get_conn().await {
        Ok(c) => c,
        Err(_) => {
            stats.errors += 1;
            return stats;
        }
    };
    let mut next_at = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(i) = interval {
            next_at += i;
            let now = std::time::Instant::now();
            if next_at > now {
                tokio::time::sleep(next_at - now).await;
            } else {
                next_at = now;
            }
        }
        let started = std::time::Instant::now();
        let max_id = next_id.load(std::sync::atomic::Ordering::Relaxed).max(2);
        let statements = rng.random_range(1..=4);
        let rollback = rng.random_bool(0.05);
        let mut sql = vec!["START TRANSACTION".to_string()];
        for _ in 0..statements {
            let id = if config.hot_keys > 0 {
                rng.random_range(1..=config.hot_keys)
            } else {
                rng.random_range(1..max_id)
            };
            let stmt = match rng.random_range(0..100) {
                0..=29 if config.hot_keys == 0 => {
                    let new = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    format!(
                        "INSERT INTO {qt} (id, k, c, pad) VALUES ({new}, {}, 'load-{}', {})",
                        rng.random_range(0..1_000_000),
                        rng.random::<u32>(),
                        if rng.random_bool(0.1) {
                            "''".to_string()
                        } else {
                            format!("'p{}'", rng.random::<u16>())
                        }
                    )
                }
                30..=59 => format!("UPDATE {qt} SET k = k + 1 WHERE id = {id}"),
                60..=79 => format!(
                    "UPDATE {qt} SET c = 'upd-{}' WHERE id = {id}",
                    rng.random::<u32>()
                ),
                80..=91 if config.hot_keys == 0 => format!("DELETE FROM {qt} WHERE id = {id}"),
                92.. if config.change_keys && config.hot_keys == 0 => {
                    let new = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    format!("UPDATE {qt} SET id = {new} WHERE id = {id}")
                }
                _ => format!(
                    "UPDATE {qt} SET pad = 'pad-{}' WHERE id = {id}",
                    rng.random::<u16>()
                ),
            };
            if let Some(mirror) = &config.mirror {
                let qm = format!("{}.{}", quote_ident(&config.schema), quote_ident(mirror));
                sql.push(stmt.replace(&qt, &qm));
            }
            sql.push(stmt);
        }
        sql.push(if rollback { "ROLLBACK" } else { "COMMIT" }.to_string());
        match conn.query_drop(sql.join("; ")).await {
            Ok(()) => {
                stats.transactions += 1;
                if rollback {
                    stats.rollbacks += 1;
                }
                stats
                    .latencies_us
                    .push(started.elapsed().as_micros() as u64);
            }
            Err(e) => {
                stats.errors += 1;
                tracing::debug!(error = %e, "load transaction failed");
                let _ = conn.query_drop("ROLLBACK").await;
                if !matches!(e, mysql_async::Error::Server(_)) {
                    match pool.get_conn().await {
                        Ok(c) => conn = c,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    }
                }
            }
        }
    }
    stats
}
