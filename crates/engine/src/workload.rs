//! Generated tables and write loads, for `wraith demo`, `wraith bench` and tests.
//!
//! The sysbench-like table matches `sysbench oltp_*`'s `sbtest` layout (`id`
//! auto-increment primary key, `k` int with a secondary index, `c` char(120),
//! `pad` char(60)) so figures compare with the peers measured in
//! `shared/bench/peers`.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::db::{quote_ident, Context, DbError};

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
