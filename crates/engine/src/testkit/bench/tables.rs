//! The benchmark's generated tables.
//!
//! - `sysbench`: sysbench's `sbtest` layout ([`crate::testkit::workload::create_sysbench_table`]),
//!   so figures compare with the peers measured in `shared/bench/peers`.
//! - `wide`: 30 columns of mixed types (integers, floats, decimals, temporal
//!   types, strings, binaries, TEXT, BLOB, JSON, ENUM, SET, BIT), an integer
//!   primary key and one secondary index: rows of about 700 bytes.
//! - `uuid`: a random `BINARY(16)` primary key (inserts land all over the
//!   clustered index), a unique integer `n` that the load addresses rows by, and
//!   a secondary index on `k`.
//!
//! Rows are generated server-side from a cross join of digits, in batches.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::BenchError;
use crate::server::{quote_ident, Context};
use crate::testkit::workload;

/// Which table to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Sysbench,
    Wide,
    Uuid,
}

impl TableKind {
    pub const ALL: [TableKind; 3] = [TableKind::Sysbench, TableKind::Wide, TableKind::Uuid];

    /// The table's name in the benchmark schema.
    pub fn table_name(self) -> &'static str {
        match self {
            TableKind::Sysbench => "sbtest1",
            TableKind::Wide => "wide1",
            TableKind::Uuid => "uuid1",
        }
    }

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Sysbench => "sysbench",
            TableKind::Wide => "wide",
            TableKind::Uuid => "uuid",
        }
    }

    /// Rows when `--rows` is not given.
    pub fn default_rows(self) -> u64 {
        match self {
            TableKind::Sysbench => 2_000_000,
            TableKind::Wide => 500_000,
            TableKind::Uuid => 1_000_000,
        }
    }

    /// The column the load finds rows by (an integer from 1 to the row count).
    pub fn row_number_column(self) -> &'static str {
        match self {
            TableKind::Sysbench | TableKind::Wide => "id",
            TableKind::Uuid => "n",
        }
    }

    /// The plain (not indexed) string column the load updates.
    pub fn plain_column(self) -> &'static str {
        match self {
            TableKind::Sysbench | TableKind::Uuid => "c",
            TableKind::Wide => "vc",
        }
    }
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TableKind {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TableKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| BenchError::UnknownTableKind(s.to_string()))
    }
}

/// Creates `schema.<kind's table>` holding `rows` rows (the schema is created if needed).
pub async fn create_table(
    conn: &mut Conn,
    schema: &str,
    kind: TableKind,
    rows: u64,
) -> Result<(), BenchError> {
    let table = kind.table_name();
    if kind == TableKind::Sysbench {
        workload::create_sysbench_table(conn, schema, table, rows).await?;
        return Ok(());
    }
    let qt = format!("{}.{}", quote_ident(schema), quote_ident(table));
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {}",
        quote_ident(schema)
    ))
    .await
    .context(|| format!("creating database {schema}"))?;
    conn.query_drop(format!(
        "CREATE TABLE {qt} ({}) ENGINE=InnoDB",
        definition(kind)
    ))
    .await
    .context(|| format!("creating {schema}.{table}"))?;
    const BATCH: u64 = 50_000;
    let mut done = 0;
    while done < rows {
        let n = BATCH.min(rows - done);
        conn.query_drop(format!(
            "INSERT INTO {qt} ({cols}) \
             WITH d (n) AS (SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
               UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
               UNION ALL SELECT 8 UNION ALL SELECT 9), \
             seq (n) AS (SELECT 1 + a.n + 10 * b.n + 100 * c.n + 1000 * e.n + 10000 * f.n \
               FROM d a, d b, d c, d e, d f), \
             g (n, r) AS (SELECT {done} + n, FLOOR(RAND({done} + n) * 4294967295) FROM seq WHERE n <= {n}) \
             SELECT {values} FROM g",
            cols = columns(kind),
            values = values(kind),
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

/// One new row for `kind`'s table, as an `INSERT`: row number `row_number`, and
/// every other value derived from `seed`. The load's delete+insert uses it, so a
/// replay of the load's log inserts exactly the same row.
pub fn insert_row_sql(
    kind: TableKind,
    qualified_table: &str,
    row_number: u64,
    seed: u64,
) -> String {
    match kind {
        TableKind::Sysbench => format!(
            "INSERT INTO {qualified_table} (id, k, c, pad) VALUES ({row_number}, {}, '{}', '{}')",
            seed % 1_000_000,
            sysbench_string(seed, 10),
            sysbench_string(seed.rotate_left(17), 5)
        ),
        TableKind::Wide | TableKind::Uuid => format!(
            "INSERT INTO {qualified_table} ({}) SELECT {} FROM (SELECT {row_number} AS n, {} AS r) g",
            columns(kind),
            values(kind),
            seed % 4_294_967_295
        ),
    }
}

/// Groups of 11 digits joined by '-', like sysbench's `c` and `pad` values.
pub fn sysbench_string(seed: u64, groups: usize) -> String {
    let mut x = seed | 1;
    (0..groups)
        .map(|_| {
            // xorshift: cheap, deterministic, good enough for filler text.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:011}", x % 100_000_000_000)
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn definition(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Sysbench => "",
        TableKind::Wide => {
            "id INT UNSIGNED NOT NULL AUTO_INCREMENT, \
             k INT UNSIGNED NOT NULL DEFAULT 0, \
             tiny TINYINT NOT NULL, small SMALLINT NOT NULL, medium MEDIUMINT NOT NULL, \
             big BIGINT NOT NULL, ubig BIGINT UNSIGNED NOT NULL, uint INT UNSIGNED NULL, \
             flt FLOAT NOT NULL, dbl DOUBLE NOT NULL, \
             dec_small DECIMAL(12,2) NOT NULL, dec_big DECIMAL(30,10) NULL, \
             d DATE NOT NULL, dt DATETIME(6) NOT NULL, ts TIMESTAMP(3) NULL, tm TIME NOT NULL, yr YEAR NOT NULL, \
             ch CHAR(20) NOT NULL, vc VARCHAR(100) NOT NULL, vc_null VARCHAR(255) NULL, \
             bin BINARY(8) NOT NULL, vbin VARBINARY(64) NOT NULL, \
             txt TEXT NOT NULL, blb BLOB NULL, js JSON NOT NULL, \
             en ENUM('red','green','blue') NOT NULL, st SET('x','y','z') NOT NULL, \
             bits BIT(12) NOT NULL, flag TINYINT(1) NOT NULL, note VARCHAR(32) NULL, \
             PRIMARY KEY (id), KEY k_1 (k)"
        }
        TableKind::Uuid => {
            "id BINARY(16) NOT NULL, n INT UNSIGNED NOT NULL, k INT UNSIGNED NOT NULL DEFAULT 0, \
             c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', \
             PRIMARY KEY (id), UNIQUE KEY n_1 (n), KEY k_1 (k)"
        }
    }
}

fn columns(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Sysbench => "id, k, c, pad",
        TableKind::Wide => {
            "id, k, tiny, small, medium, big, ubig, uint, flt, dbl, dec_small, dec_big, d, dt, ts, tm, yr, \
             ch, vc, vc_null, bin, vbin, txt, blb, js, en, st, bits, flag, note"
        }
        TableKind::Uuid => "id, n, k, c, pad",
    }
}

/// Values of one row from `n` (row number) and `r` (a random 32-bit integer).
fn values(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Sysbench => "",
        TableKind::Wide => {
            "n, r % 1000000, r % 256 - 128, r % 65536 - 32768, r % 16777216 - 8388608, \
             r * 2147483 - 4611686018427387904, r * 4294967, IF(r % 10 = 0, NULL, r), \
             (r % 100000) / 7.0, r / 3.0, (r % 100000000) / 100, IF(r % 7 = 0, NULL, r / 1000.0), \
             DATE '2000-01-01' + INTERVAL (r % 9000) DAY, \
             TIMESTAMP '2001-01-01 00:00:00' + INTERVAL (r % 700000000) SECOND + INTERVAL (r % 1000000) MICROSECOND, \
             IF(r % 5 = 0, NULL, TIMESTAMP '2005-01-01 00:00:00' + INTERVAL (r % 500000000) SECOND), \
             SEC_TO_TIME(r % 86400), 1901 + r % 254, \
             LPAD(r, 20, 'c'), CONCAT('vc-', MD5(r)), IF(r % 3 = 0, NULL, REPEAT(CHAR(97 + r % 26 USING ascii), r % 200)), \
             UNHEX(LPAD(HEX(r), 16, '0')), UNHEX(SHA1(r)), \
             REPEAT(CONCAT(MD5(r), ' '), 1 + r % 8), IF(r % 4 = 0, NULL, UNHEX(SHA2(r, 256))), \
             JSON_OBJECT('n', n, 'r', r, 'tags', JSON_ARRAY(r % 7, CONCAT('t', r % 13)), 'ok', r % 2 = 0), \
             1 + r % 3, r % 8, r % 4096, r % 2, IF(r % 2 = 0, NULL, CONCAT('note ', r % 1000))"
        }
        TableKind::Uuid => {
            "UNHEX(MD5(CONCAT(n, '/', r))), n, r % 1000000, \
             CONCAT_WS('-', LPAD(r % 100000000000, 11, '0'), LPAD(MD5(r), 32, '0'), SHA2(n, 256)), \
             LPAD(CONCAT(n, '-', r), 60, '0')"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_wide_has_thirty_columns() {
        assert_eq!("Wide".parse::<TableKind>().ok(), Some(TableKind::Wide));
        assert!("narrow".parse::<TableKind>().is_err());
        assert_eq!(columns(TableKind::Wide).split(',').count(), 30);
    }

    #[test]
    fn generated_rows_are_deterministic() {
        let a = insert_row_sql(TableKind::Sysbench, "t", 5, 99);
        assert_eq!(a, insert_row_sql(TableKind::Sysbench, "t", 5, 99));
        assert_ne!(a, insert_row_sql(TableKind::Sysbench, "t", 5, 98));
        assert_eq!(sysbench_string(1, 10).len(), 10 * 11 + 9);
    }
}
