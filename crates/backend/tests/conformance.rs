//! The backend conformance suite: written once against the `Backend` trait
//! and run for every backend (TiKV `engine_traits` style), against a real
//! scratch MariaDB. A new backend gets these tests by joining `KINDS`.

mod common;

use std::sync::Arc;

use common::{count, fresh_db, make_backend, read_rows, specs, Kind, KINDS};
use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use wraith_backend::{
    Backend, BackendError, EngineConfig, EngineManager, LocalEngineConfig, LocalWriterConfig, Row,
    TargetTable, Value,
};

const ALL_TYPES: &str = "CREATE TABLE src (
    id INT NOT NULL PRIMARY KEY,
    ti TINYINT, ti_u TINYINT UNSIGNED, bi BIGINT, bi_u BIGINT UNSIGNED,
    f FLOAT, d DOUBLE, dc DECIMAL(65,30), dc2 DECIMAL(10,4),
    c CHAR(10), vc VARCHAR(40), txt TEXT, lat VARCHAR(20) CHARACTER SET latin1,
    b BINARY(4), vb VARBINARY(10), bl BLOB, j JSON,
    e ENUM('a','b','ü'), s SET('x','y','z'),
    dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
    bt BIT(64), bt5 BIT(5)
) DEFAULT CHARSET = utf8mb4";

const ROWS: &str = "INSERT INTO src VALUES
 (1, 127, 255, 9223372036854775807, 18446744073709551615,
  3.4028234663852886e38, 1.7976931348623157e308,
  99999999999999999999999999999999999.999999999999999999999999999999, 999999.9999,
  'ab  ', 'ab  ', _utf8mb4 X'F09F9880206279746573', _latin1 X'636166E9',
  'a', X'00FF00', '', _utf8mb4 '{\"k\": \"\\u00fc\", \"e\": \"ü😀\"}',
  'ü', 'x,z', '9999-12-31', '838:59:59.000000', '9999-12-31 23:59:59.999999',
  '2038-01-19 03:14:07.999999', 2155, b'1111111111111111111111111111111111111111111111111111111111111111', b'10101'),
 (2, -128, 0, -9223372036854775808, 0,
  -3.4028234663852886e38, -1.7976931348623157e308,
  -99999999999999999999999999999999999.999999999999999999999999999999, -999999.9999,
  '', '', '', '',
  X'00000000', '', X'00', '[]',
  'a', '', '0000-00-00', '-838:59:59.000000', '0000-00-00 00:00:00',
  '0000-00-00 00:00:00', 0, 0, 0),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 1, -1, 9223372036854775808,
  0.1, -0e0, 0.000000000000000000000000000001, -0.5,
  'x', 'tab\\there\\nnl\\\\bs \\\\N', _utf8mb4 X'6100620A63', _latin1 X'FF',
  X'61000000', X'5C4E', X'000102', '{\"a\": [1, 2.5, null]}',
  'b', 'x,y,z', '1000-01-01', '00:00:00.000001', '1970-01-01 00:00:01.000001',
  '1970-01-01 00:00:01.000000', 1901, 1, 31),
 (5, 1, 2, 3, 4,
  1.1754943508222875e-38, 5e-324, 12.5, 0.0001,
  'z ', ' lead', 'NULL', 'A',
  X'FFFFFFFF', X'FF', X'5C', '\"\"',
  NULL, NULL, '2024-02-29', '-00:00:00.500000', '2024-02-29 12:00:00',
  '2024-02-29 12:00:00.5', 2000, 9223372036854775808, 1)";

fn engine_config(target: TargetTable) -> EngineConfig {
    EngineConfig {
        target,
        local: LocalEngineConfig::default(),
    }
}

/// Writes `rows` into `target` through the backend's full lifecycle.
async fn copy_through(
    backend: Arc<dyn Backend>,
    cfg: &EngineConfig,
    columns: &[String],
    chunks: Vec<Vec<Row>>,
    sorted: bool,
) -> Result<(), BackendError> {
    let mgr = EngineManager::new(backend);
    let opened = mgr.open_engine(cfg, "db.src", 1).await?;
    let mut statuses = Vec::new();
    for chunk in chunks {
        let mut w = opened
            .local_writer(&LocalWriterConfig {
                is_kv_sorted: sorted,
                table_name: "db.src".into(),
            })
            .await?;
        w.append_rows(columns, chunk).await?;
        statuses.push(w.close().await?);
    }
    opened.flush().await?;
    assert!(
        statuses.iter().all(|s| s.flushed()),
        "flush makes chunks durable"
    );
    let closed = opened.close().await?;
    closed.import(1 << 20, 2).await?;
    closed.cleanup().await?;
    Ok(())
}

async fn setup_all_types(db: &str) -> Pool {
    let pool = fresh_db(db).await;
    let mut c = pool.get_conn().await.unwrap();
    c.query_drop("SET time_zone = '+00:00'").await.unwrap();
    c.query_drop(ALL_TYPES).await.unwrap();
    c.query_drop(ROWS).await.unwrap();
    c.query_drop("CREATE TABLE dst LIKE src").await.unwrap();
    // A changed column type: latin1 -> utf8mb4 must convert as ALTER would.
    c.query_drop("ALTER TABLE dst MODIFY lat VARCHAR(20) CHARACTER SET utf8mb4")
        .await
        .unwrap();
    pool
}

/// The columns where some row of `src` and `dst` differ, checked by SQL
/// alone (never through wraith's own code).
async fn mismatched_columns(pool: &Pool, specs: &[wraith_backend::ColumnSpec]) -> Vec<String> {
    let mut bad_cols = Vec::new();
    if count(pool, "SELECT COUNT(*) FROM src").await
        != count(pool, "SELECT COUNT(*) FROM dst").await
    {
        bad_cols.push("(row count)".to_string());
    }
    for s in specs {
        let c = &s.name;
        let cond = match c.as_str() {
            "lat" => "NOT (HEX(CONVERT(a.lat USING utf8mb4)) <=> HEX(b.lat))".to_string(),
            // Bit-exact: <=> compares the stored values exactly; CAST(f AS
            // DOUBLE) is the exact widening, printed in shortest round-trip form.
            "f" | "d" => format!(
                "NOT (a.{c} <=> b.{c}) OR NOT (CAST(CAST(a.{c} AS DOUBLE) AS CHAR) <=> CAST(CAST(b.{c} AS DOUBLE) AS CHAR))"
            ),
            _ => format!("NOT (a.{c} <=> b.{c}) OR NOT (HEX(a.{c}) <=> HEX(b.{c}))"),
        };
        let bad = count(
            pool,
            &format!("SELECT COUNT(*) FROM src a LEFT JOIN dst b USING (id) WHERE b.id IS NULL OR {cond}"),
        )
        .await;
        if bad > 0 {
            bad_cols.push(c.clone());
        }
    }
    bad_cols
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_exactly() {
    for kind in KINDS {
        for sorted in [false, true] {
            if kind == Kind::Sql && sorted {
                continue;
            }
            let db = format!("types_{kind:?}_{sorted}").to_lowercase();
            let pool = setup_all_types(&db).await;
            let mut conn = pool.get_conn().await.unwrap();
            let src_specs = specs(&mut conn, &db, "src").await;
            drop(conn);
            let rows = read_rows(&pool, "src", &src_specs, "id DESC").await;
            assert_eq!(rows.len(), 5);
            // The decoder sees the server's own bytes.
            assert_eq!(rows[4][1], Value::Int(127));
            assert_eq!(rows[4][4], Value::UInt(u64::MAX));
            assert_eq!(rows[4][5], Value::Float(f32::MAX));
            assert_eq!(rows[4][24], Value::Bit(u64::MAX));
            assert_eq!(rows[4][12], Value::Bytes(vec![b'c', b'a', b'f', 0xE9]));

            let target = TargetTable {
                schema: db.clone(),
                table: "dst".into(),
                columns: src_specs.clone(),
                key_columns: vec![0],
                transient_unique_indexes: Vec::new(),
            };
            let names: Vec<String> = src_specs.iter().map(|s| s.name.clone()).collect();
            let dir = tempfile::tempdir().unwrap();
            let backend = make_backend(kind, &pool, dir.path());
            let chunks = vec![rows[..2].to_vec(), rows[2..].to_vec()];
            copy_through(backend, &engine_config(target), &names, chunks, sorted)
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(
                mismatched_columns(&pool, &src_specs).await,
                Vec::<String>::new(),
                "{kind:?}"
            );
            // Negative control: the comparison sees a dropped trailing zero
            // byte and a one-ulp float change.
            let mut c = pool.get_conn().await.unwrap();
            c.query_drop("UPDATE dst SET vb = IF(id = 1, X'00FF', vb), f = IF(id = 4, 0.10000000894069672e0, f)")
                .await
                .unwrap();
            drop(c);
            assert_eq!(mismatched_columns(&pool, &src_specs).await, vec!["f", "vb"]);
            pool.disconnect().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_in_another_order_and_defaults() {
    for kind in KINDS {
        let db = format!("perm_{kind:?}").to_lowercase();
        let pool = fresh_db(&db).await;
        let mut c = pool.get_conn().await.unwrap();
        c.query_drop(
            "CREATE TABLE src (id INT PRIMARY KEY, a VARCHAR(10), b INT);
             INSERT INTO src VALUES (1, 'x', 10), (2, NULL, 20), (3, 'z', NULL);
             CREATE TABLE dst (b INT, id INT PRIMARY KEY, extra VARCHAR(5) DEFAULT 'dflt', a VARCHAR(10))",
        )
        .await
        .unwrap();
        let src_specs = specs(&mut c, &db, "src").await;
        let dst_specs = specs(&mut c, &db, "dst").await;
        drop(c);
        let rows = read_rows(&pool, "src", &src_specs, "id").await;
        let target = TargetTable {
            schema: db.clone(),
            table: "dst".into(),
            columns: dst_specs,
            key_columns: vec![1],
            transient_unique_indexes: Vec::new(),
        };
        let names = vec!["id".to_string(), "a".into(), "b".into()];
        let dir = tempfile::tempdir().unwrap();
        copy_through(
            make_backend(kind, &pool, dir.path()),
            &engine_config(target),
            &names,
            vec![rows],
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            count(
                &pool,
                "SELECT COUNT(*) FROM src JOIN dst USING (id) \
                 WHERE src.a <=> dst.a AND src.b <=> dst.b AND dst.extra = 'dflt'"
            )
            .await,
            3,
            "{kind:?}"
        );
        pool.disconnect().await.unwrap();
    }
}

/// Duplicates of the new key, and of another unique key of the target, are
/// refused with the key named, on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_refused_with_the_key_named() {
    for kind in KINDS {
        for (case, ddl, key_columns) in [
            ("pk", "CREATE TABLE dst (id INT NOT NULL, v VARCHAR(10) NOT NULL, PRIMARY KEY (v))", vec![1]),
            ("uk", "CREATE TABLE dst (id INT NOT NULL PRIMARY KEY, v VARCHAR(10) NOT NULL, UNIQUE KEY uk_v (v))", vec![0]),
        ] {
            let db = format!("dup_{kind:?}_{case}").to_lowercase();
            let pool = fresh_db(&db).await;
            let mut c = pool.get_conn().await.unwrap();
            c.query_drop(
                "CREATE TABLE src (id INT NOT NULL PRIMARY KEY, v VARCHAR(10) NOT NULL);
                 INSERT INTO src VALUES (1, 'a'), (2, 'dupe'), (3, 'b'), (4, 'dupe'), (5, 'c')",
            )
            .await
            .unwrap();
            c.query_drop(ddl).await.unwrap();
            let src_specs = specs(&mut c, &db, "src").await;
            drop(c);
            let rows = read_rows(&pool, "src", &src_specs, "id").await;
            let target = TargetTable {
                schema: db.clone(),
                table: "dst".into(),
                columns: src_specs.clone(),
                key_columns,
                transient_unique_indexes: Vec::new(),
            };
            let names = vec!["id".to_string(), "v".into()];
            let dir = tempfile::tempdir().unwrap();
            let err = copy_through(
                make_backend(kind, &pool, dir.path()),
                &engine_config(target),
                &names,
                vec![rows[..3].to_vec(), rows[3..].to_vec()],
                false,
            )
            .await
            .expect_err("duplicate must be refused");
            match &err {
                BackendError::DuplicateDetected { table, key, index } => {
                    assert!(key.contains("dupe"), "{kind:?}/{case}: key {key}");
                    assert!(table.contains("dst"), "{table}");
                    assert!(!index.is_empty());
                }
                other => panic!("{kind:?}/{case}: expected a duplicate, got {other}"),
            }
            assert!(err.to_string().contains("dupe"));
            // The source is untouched.
            assert_eq!(count(&pool, "SELECT COUNT(*) FROM src").await, 5);
            pool.disconnect().await.unwrap();
        }
    }
}

/// A chunk written twice (redone after a resume) is not a duplicate for the
/// local backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redone_chunk_is_not_a_duplicate_locally() {
    let db = "redo_local";
    let pool = fresh_db(db).await;
    let mut c = pool.get_conn().await.unwrap();
    c.query_drop(
        "CREATE TABLE src (id INT PRIMARY KEY, v VARCHAR(10));
         INSERT INTO src VALUES (1, 'a'), (2, 'b'), (3, NULL);
         CREATE TABLE dst LIKE src",
    )
    .await
    .unwrap();
    let src_specs = specs(&mut c, db, "src").await;
    drop(c);
    let rows = read_rows(&pool, "src", &src_specs, "id").await;
    let target = TargetTable {
        schema: db.into(),
        table: "dst".into(),
        columns: src_specs,
        key_columns: vec![0],
        transient_unique_indexes: Vec::new(),
    };
    let names = vec!["id".to_string(), "v".into()];
    let dir = tempfile::tempdir().unwrap();
    copy_through(
        make_backend(Kind::Local, &pool, dir.path()),
        &engine_config(target),
        &names,
        vec![rows.clone(), rows[1..].to_vec(), rows],
        false,
    )
    .await
    .unwrap();
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM dst").await, 3);
    pool.disconnect().await.unwrap();
}

/// Many rows with a composite (integer + binary) key with gaps of millions,
/// written in source order that is not the target's key order: batches and
/// ranges split, everything lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rows_composite_sparse_key() {
    for kind in KINDS {
        let db = format!("many_{kind:?}").to_lowercase();
        let pool = fresh_db(&db).await;
        let mut c = pool.get_conn().await.unwrap();
        c.query_drop(
            "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, k2 VARBINARY(16) NOT NULL,
               v VARCHAR(100) CHARACTER SET latin1);
             INSERT INTO src
               SELECT seq * 3000017, UNHEX(LPAD(HEX(seq % 97), 6, '0')),
                      IF(seq % 11 = 0, NULL, REPEAT(CHAR(65 + seq % 26), seq % 90))
               FROM seq_1_to_20000;
             CREATE TABLE dst (id BIGINT NOT NULL, k2 VARBINARY(16) NOT NULL,
               v VARCHAR(100) CHARACTER SET utf8mb4, PRIMARY KEY (k2, id))",
        )
        .await
        .unwrap();
        let src_specs = specs(&mut c, &db, "src").await;
        drop(c);
        let rows = read_rows(&pool, "src", &src_specs, "id").await;
        let target = TargetTable {
            schema: db.clone(),
            table: "dst".into(),
            columns: src_specs.clone(),
            key_columns: vec![1, 0],
            transient_unique_indexes: Vec::new(),
        };
        let names: Vec<String> = src_specs.iter().map(|s| s.name.clone()).collect();
        let chunks: Vec<Vec<Row>> = rows.chunks(3000).map(|c| c.to_vec()).collect();
        let dir = tempfile::tempdir().unwrap();
        let backend = make_backend(kind, &pool, dir.path());
        let mgr = EngineManager::new(backend);
        let opened = mgr
            .open_engine(&engine_config(target), "db.src", 1)
            .await
            .unwrap();
        let mut w = opened
            .local_writer(&LocalWriterConfig::default())
            .await
            .unwrap();
        for ch in chunks {
            w.append_rows(&names, ch).await.unwrap();
        }
        w.close().await.unwrap();
        let closed = opened.close().await.unwrap();
        let stats = closed.import(64 << 10, 5000).await.unwrap();
        if kind == Kind::Local {
            assert_eq!(stats.rows, 20000);
            assert!(stats.ranges >= 4, "{stats:?}");
        }
        closed.cleanup().await.unwrap();
        assert_eq!(
            count(
                &pool,
                "SELECT COUNT(*) FROM src a JOIN dst b USING (id) WHERE a.k2 = b.k2 \
                 AND HEX(CONVERT(a.v USING utf8mb4)) <=> HEX(b.v)"
            )
            .await,
            20000,
            "{kind:?}"
        );
        pool.disconnect().await.unwrap();
    }
}

/// A string key with a case-insensitive collation: `'a'` and `'A'` are one
/// key to the server, so both backends refuse them as duplicates (the local
/// backend through the server at import, as its keys compare bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_key_duplicates() {
    for kind in KINDS {
        let db = format!("ci_{kind:?}").to_lowercase();
        let pool = fresh_db(&db).await;
        let mut c = pool.get_conn().await.unwrap();
        c.query_drop(
            "CREATE TABLE src (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) COLLATE utf8mb4_bin NOT NULL);
             INSERT INTO src VALUES (1, 'Straße'), (2, 'alpha'), (3, 'ALPHA');
             CREATE TABLE dst (id INT NOT NULL, name VARCHAR(20) COLLATE utf8mb4_general_ci NOT NULL,
               PRIMARY KEY (name))",
        )
        .await
        .unwrap();
        let src_specs = specs(&mut c, &db, "src").await;
        drop(c);
        let rows = read_rows(&pool, "src", &src_specs, "id").await;
        let target = TargetTable {
            schema: db.clone(),
            table: "dst".into(),
            columns: src_specs.clone(),
            key_columns: vec![1],
            transient_unique_indexes: Vec::new(),
        };
        let names: Vec<String> = src_specs.iter().map(|s| s.name.clone()).collect();
        let dir = tempfile::tempdir().unwrap();
        let err = copy_through(
            make_backend(kind, &pool, dir.path()),
            &engine_config(target),
            &names,
            vec![rows],
            false,
        )
        .await
        .expect_err("case-insensitive duplicate");
        match err {
            BackendError::DuplicateDetected { key, .. } => {
                assert!(key.to_lowercase().contains("alpha"), "{kind:?}: {key}")
            }
            other => panic!("{kind:?}: {other}"),
        }
        pool.disconnect().await.unwrap();
    }
}
