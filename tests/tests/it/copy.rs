//! `wraith run` with cut-over disabled: the copy into the shadow table, on both
//! backends, compared with the source by queries of the tests' own.

use mysql_async::prelude::Queryable;
use wraith_engine::config::Config;
use wraith_engine::server::inspect::inspect_table;
use wraith_engine::testkit::workload::create_sysbench_table;
use wraith_engine::{checksum_table, ChecksumError};
use wraith_tests::{wraith_with_config, Schema};

/// Each way rows can travel: the sql backend server-side (`INSERT ... SELECT`),
/// the sql backend through wraith (batched INSERTs), and the local backend.
const BACKENDS: [&str; 3] = ["sql", "sql-client", "local"];

fn backend_settings(backend: &str) -> String {
    match backend {
        "sql-client" => "backend = \"sql\"\nserver_side_copy = false".into(),
        other => format!("backend = \"{other}\""),
    }
}

fn run_config(s: &Schema, table: &str, alter: &str, backend: &str, extra: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    s.config(
        table,
        alter,
        &format!(
            "[copy]\n{}\nthreads = 3\n{extra}\n\n[local]\nsort_dir = {:?}\n\n[cutover]\nenabled = false\nkeep_in_sync = false\n",
            backend_settings(backend),
            sort_dir.display().to_string()
        ),
    )
}

async fn run_ok(config: &str) -> String {
    let run = wraith_with_config(&["run"], config).await;
    assert_eq!(run.code, 0, "wraith run failed:\n{}", run.output());
    run.stderr
}

pub const TYPES_TABLE: &str = "CREATE TABLE types (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, iu INT UNSIGNED,
  bi BIGINT, biu BIGINT UNSIGNED,
  f FLOAT, d DOUBLE, dec1 DECIMAL(65,30), dec2 DECIMAL(10,2),
  c CHAR(10), vc VARCHAR(100), t TEXT, lc VARCHAR(20) CHARACTER SET latin1,
  b BINARY(8), vb VARBINARY(20), bl BLOB,
  dt DATE, tm TIME(6), dtt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
  e ENUM('a','b','ö'), s SET('x','y','z'), bt BIT(64), bt1 BIT(1), j JSON
) DEFAULT CHARSET=utf8mb4";

pub const TYPES_ROWS: &str = "INSERT INTO types VALUES
 (1, -128, 0, -32768, -8388608, -2147483648, 0, -9223372036854775808, 0,
  -3.40282e38, -1.7976931348623157e308,
  '-99999999999999999999999999999999999.999999999999999999999999999999', -99999999.99,
  '', '', '', '', x'0000', x'', x'', '1000-01-01', '-838:59:59.000000',
  '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 1901, 'a', '', b'0', b'0', '{}'),
 (2, 127, 255, 32767, 8388607, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
  3.40282e38, 1.7976931348623157e308,
  '99999999999999999999999999999999999.999999999999999999999999999999', 99999999.99,
  'abc  ', 'trailing  ', 'emoji 😀 and ü', x'E9E8', x'0100000000000000', x'00FF00', x'00000000',
  '9999-12-31', '838:59:59.000000', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
  'ö', 'x,y,z', b'1111111111111111111111111111111111111111111111111111111111111111', b'1',
  '{\"k\": \"ünïcødé 😀\", \"n\": [1, 2.5, null]}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 1, 0, 0, 0, 1, 0, 1, -0.0, -0.0, '0.000000000000000000000000000001', 0.01,
  ' lead', ' ', 'x', 'ÿ', x'61', x'61', x'61', '0000-00-00', '-00:00:00.000001',
  '0000-00-00 00:00:00.000000', '2016-12-31 23:59:59.999999', 0, 'b', 'y', b'1000', b'0', '[]'),
 (5, 1, 2, 3, 4, 5, 6, 7, 8, 1.17549435e-38, 4.9406564584124654e-324, '-0.5', -0.5,
  'ab\\'c\"d', 'back\\\\slash\\nnewline\\ttab', REPEAT('long text ', 2000), 'Ä', x'DEADBEEF', x'00', x'FF',
  '2000-02-29', '00:00:00', '2000-02-29 12:34:56.5', '1999-12-31 23:59:59.000001', 2000, NULL, 'x,z',
  b'10101', b'1', '{\"a\": {\"b\": [true, false]}}')";

#[tokio::test]
async fn every_type_round_trips_through_both_backends() {
    for backend in BACKENDS {
        let s = Schema::new(&format!("cp_types_{}", backend.replace('-', "_"))).await;
        s.exec(&format!(
            "SET SESSION sql_mode = ''; {TYPES_TABLE}; {TYPES_ROWS}"
        ))
        .await;
        let before = s.snapshot("types").await;
        assert_eq!(before.rows.len(), 5);
        run_ok(&run_config(
            &s,
            "types",
            "FORCE",
            backend,
            "initial_chunk_rows = 2",
        ))
        .await;
        assert_eq!(
            before,
            s.snapshot("types").await,
            "{backend}: the source changed"
        );
        assert_eq!(
            before.rows,
            s.rows("_types_new").await,
            "{backend}: shadow differs from source"
        );
    }
}

#[tokio::test]
async fn composite_string_and_sparse_keys() {
    for backend in BACKENDS {
        let s = Schema::new(&format!("cp_keys_{}", backend.replace('-', "_"))).await;
        s.exec(
            "CREATE TABLE comp (id INT NOT NULL, tag BINARY(4) NOT NULL, v VARCHAR(20), PRIMARY KEY (id, tag)); \
             INSERT INTO comp WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
               SELECT i DIV 5, UNHEX(LPAD(HEX(i * 7919 % 256), 8, '0')), CONCAT('v', i) FROM n; \
             CREATE TABLE strkey (name VARCHAR(50) COLLATE utf8mb4_general_ci NOT NULL PRIMARY KEY, n INT); \
             INSERT INTO strkey VALUES ('a', 1), ('B', 2), ('c', 3), ('Ö', 4), ('Z', 5), ('zz', 6), ('', 7), \
               (' x', 8), ('😀', 9), ('ß', 10), ('a b', 11), ('A-', 12); \
             CREATE TABLE sparse (id BIGINT NOT NULL PRIMARY KEY, v INT); \
             INSERT INTO sparse WITH RECURSIVE n (i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999) \
               SELECT i * 7000003 - 3000000000, i FROM n",
        )
        .await;
        for table in ["comp", "strkey", "sparse"] {
            let before = s.rows(table).await;
            run_ok(&run_config(
                &s,
                table,
                "ADD COLUMN extra INT NOT NULL DEFAULT 5",
                backend,
                "initial_chunk_rows = 3\nchunk_target = \"1ms\"",
            ))
            .await;
            let shadow: Vec<String> = s.rows(&format!("_{table}_new")).await;
            // The added column is last: every shadow row is the source row plus ",35" (hex of "5").
            let expected: Vec<String> = before.iter().map(|r| format!("{r},35")).collect();
            let mut shadow_sorted = shadow.clone();
            shadow_sorted.sort();
            let mut expected_sorted = expected.clone();
            expected_sorted.sort();
            assert_eq!(expected_sorted, shadow_sorted, "{backend}/{table}");
        }
    }
}

#[tokio::test]
async fn primary_key_change_through_local_backend() {
    let s = Schema::new("cp_pkchange").await;
    s.exec(
        "SET SESSION max_recursive_iterations = 100000; CREATE TABLE t (a INT NOT NULL, b VARCHAR(20) NOT NULL, v DOUBLE, PRIMARY KEY (a, b)); \
         INSERT INTO t WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
           SELECT i % 97, CONCAT('k', 5000 - i), i / 3 FROM n",
    )
    .await;
    let before = s.rows("t").await;
    let stderr = run_ok(&run_config(
        &s,
        "t",
        "DROP PRIMARY KEY, ADD PRIMARY KEY (b, a)",
        "local",
        "initial_chunk_rows = 100",
    ))
    .await;
    assert!(stderr.contains("local backend"), "{stderr}");
    assert_eq!(before, s.rows("_t_new").await);
    let mut c = s.conn().await;
    let pk: Vec<String> = c
        .query("SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_t_new' AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION")
        .await
        .unwrap();
    assert_eq!(pk, vec!["b", "a"]);
}

#[tokio::test]
async fn unique_key_on_duplicate_data_stops_with_keys_named() {
    for backend in BACKENDS {
        let s = Schema::new(&format!("cp_dup_{}", backend.replace('-', "_"))).await;
        s.exec(
            "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, email VARCHAR(50)); \
             INSERT INTO t VALUES (1, 'a@x'), (2, 'b@x'), (3, 'dup@x'), (4, 'c@x'), (5, 'dup@x'), (6, 'd@x')",
        )
        .await;
        let before = s.snapshot("t").await;
        let run = wraith_with_config(
            &["run"],
            &run_config(&s, "t", "ADD UNIQUE KEY uk_email (email)", backend, ""),
        )
        .await;
        // Found by preflight's bounded look at the data, before anything is made.
        assert_eq!(run.code, 3, "{backend}: {}", run.output());
        assert!(
            run.stderr.contains("dup@x"),
            "{backend}: the duplicate key is not named:\n{}",
            run.output()
        );
        assert!(
            run.stderr.contains("uk_email"),
            "{backend}: the index is not named:\n{}",
            run.output()
        );
        assert_eq!(
            before,
            s.snapshot("t").await,
            "{backend}: the source changed"
        );
        assert!(
            !s.table_exists("_t_new").await,
            "{backend}: shadow left after a failed run"
        );
    }
}

#[tokio::test]
async fn million_rows_both_backends_and_checksum_catches_corruption() {
    let _bulk = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("cp_million").await;
    {
        let mut c = s.conn().await;
        create_sysbench_table(&mut c, &s.name, "sbtest", 1_000_000)
            .await
            .unwrap();
    }
    let before = s.snapshot("sbtest").await;
    for backend in BACKENDS {
        let cfg = run_config(
            &s,
            "sbtest",
            "ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'x'",
            backend,
            "",
        );
        let stderr = run_ok(&cfg).await;
        assert!(stderr.contains("copied 1000000 rows"), "{stderr}");
        assert!(
            stderr.contains("checksum of 1000000 rows passed"),
            "{stderr}"
        );

        // Change one shadow row behind wraith's back: the checksum must name it.
        s.exec("UPDATE _sbtest_new SET c = 'tampered' WHERE id = 654321")
            .await;
        let config = Config::parse(&cfg, "test").unwrap();
        let report = wraith_engine::preflight(&config).await;
        let plan = &report.plans[0];
        let mut c = s.conn().await;
        let old = inspect_table(&mut c, &s.name, "sbtest").await.unwrap();
        let new = inspect_table(&mut c, &s.name, "_sbtest_new").await.unwrap();
        let err = checksum_table(
            &s.pool,
            &s.pool,
            &old,
            &new,
            plan,
            std::time::Duration::from_millis(200),
        )
        .await
        .expect_err("a tampered shadow row must fail the checksum");
        match &err {
            ChecksumError::Mismatch { keys, .. } => {
                assert_eq!(keys, &vec!["`id` = 654321 differs".to_string()], "{err}")
            }
            other => panic!("expected a mismatch, got {other}"),
        }
        // A deleted row is named as missing.
        s.exec("DELETE FROM _sbtest_new WHERE id = 77; UPDATE _sbtest_new SET c = (SELECT c FROM sbtest WHERE id = 654321) WHERE id = 654321").await;
        let err = checksum_table(
            &s.pool,
            &s.pool,
            &old,
            &new,
            plan,
            std::time::Duration::from_millis(200),
        )
        .await
        .expect_err("a missing shadow row must fail the checksum");
        assert!(
            err.to_string()
                .contains("`id` = 77 missing from the shadow"),
            "{err}"
        );
        s.exec("DROP TABLE _sbtest_new").await;
    }
    assert_eq!(before, s.snapshot("sbtest").await, "the source changed");
}
