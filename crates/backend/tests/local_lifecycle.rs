//! Local backend lifecycle against a real scratch server: durability across a
//! dropped process state, key order of the import, cleanup, reset.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{count, fresh_db, read_rows, specs};
use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use wraith_backend::{
    engine_uuid, Backend, ColumnKind, ColumnSpec, EngineConfig, EngineManager, LocalBackend,
    LocalBackendConfig, LocalEngineConfig, LocalWriterConfig, Row, SqlBackend, SqlBackendConfig,
    TargetTable, Value,
};

fn local(pool: &Pool, dir: &std::path::Path, threads: usize) -> Arc<dyn Backend> {
    Arc::new(
        LocalBackend::new(
            pool.clone(),
            LocalBackendConfig {
                sort_dir: dir.to_path_buf(),
                memory_limit: 128 << 20,
                compression: true,
                import_threads: threads,
            },
        )
        .unwrap(),
    )
}

fn writer_cfg(sorted: bool) -> LocalWriterConfig {
    LocalWriterConfig {
        is_kv_sorted: sorted,
        table_name: "t".into(),
    }
}

/// Rows keyed by (k2 DESC-ish pseudo-random, k1) so source order is not key order.
fn rows(n: i64) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let k = (i * 7919) % n; // a permutation of 0..n when gcd(7919, n) = 1
            vec![
                Value::Int(i),
                Value::Bytes(format!("k{:06}", k).into_bytes()),
                Value::Bytes(vec![b'x'; (i % 50) as usize]),
            ]
        })
        .collect()
}

async fn make_target(pool: &Pool, db: &str) -> TargetTable {
    let mut c = pool.get_conn().await.unwrap();
    // `seq` records the order rows were inserted in.
    c.query_drop(
        "CREATE TABLE dst (id BIGINT NOT NULL, k VARBINARY(20) NOT NULL, pad VARCHAR(60) NOT NULL,
           seq BIGINT NOT NULL AUTO_INCREMENT, PRIMARY KEY (k), UNIQUE KEY (seq))",
    )
    .await
    .unwrap();
    let s = specs(&mut c, db, "dst").await;
    TargetTable {
        schema: db.into(),
        table: "dst".into(),
        columns: s,
        key_columns: vec![1],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dropped_process_state_and_imports_in_key_order() {
    let db = "life_resume";
    let pool = fresh_db(db).await;
    let target = make_target(&pool, db).await;
    let cfg = EngineConfig {
        target,
        local: LocalEngineConfig::default(),
    };
    let names = vec!["id".to_string(), "k".into(), "pad".into()];
    let all = rows(1009);
    let dir = tempfile::tempdir().unwrap();
    let uuid = engine_uuid("life.t", 7);
    {
        let mgr = EngineManager::new(local(&pool, dir.path(), 1));
        let opened = mgr.open_engine(&cfg, "life.t", 7).await.unwrap();
        assert_eq!(opened.uuid(), uuid);
        // Unsorted and sorted writers into the same engine.
        let mut w1 = opened.local_writer(&writer_cfg(false)).await.unwrap();
        w1.append_rows(&names, all[..500].to_vec()).await.unwrap();
        assert!(!w1.is_synced());
        let s1 = w1.close().await.unwrap();
        let mut sorted_part = all[500..].to_vec();
        sorted_part.sort_by(|a, b| format!("{:?}", a[1]).cmp(&format!("{:?}", b[1])));
        let mut w2 = opened.local_writer(&writer_cfg(true)).await.unwrap();
        // Column order differs from the first writer's: reordered by name.
        let names2 = vec!["pad".to_string(), "id".into(), "k".into()];
        let permuted: Vec<Row> = sorted_part
            .into_iter()
            .map(|r| vec![r[2].clone(), r[0].clone(), r[1].clone()])
            .collect();
        w2.append_rows(&names2, permuted).await.unwrap();
        let s2 = w2.close().await.unwrap();
        assert!(s2.flushed());
        assert!(!s1.flushed());
        opened.flush().await.unwrap();
        assert!(s1.flushed());
        // Drop everything without closing: as if the process died.
        drop(opened);
    }
    assert!(dir
        .path()
        .join(uuid.to_string())
        .join("meta.json")
        .is_file());

    // A new process: a fresh backend finds the engine by its UUID.
    let backend = local(&pool, dir.path(), 1);
    let mgr = EngineManager::new(backend.clone());
    let closed = mgr
        .unsafe_close_engine_with_uuid(&cfg, "life.t:7", uuid)
        .await
        .unwrap();
    let stats = closed.import(16 << 10, 0).await.unwrap();
    assert_eq!(stats.rows, 1009);
    assert!(stats.ranges > 1, "{stats:?}");
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM dst").await, 1009);
    // One loader: insertion order (seq) is key order.
    let mut c = pool.get_conn().await.unwrap();
    let ks: Vec<Vec<u8>> = c.query("SELECT k FROM dst ORDER BY seq").await.unwrap();
    let mut sorted = ks.clone();
    sorted.sort();
    assert_eq!(ks, sorted, "rows land in key order");
    // Content equal to what was written.
    let got: Vec<(i64, Vec<u8>, Vec<u8>)> = c
        .query("SELECT id, k, pad FROM dst ORDER BY id")
        .await
        .unwrap();
    for (g, r) in got.iter().zip(&all) {
        assert_eq!(Value::Int(g.0), r[0]);
        assert_eq!(Value::Bytes(g.1.clone()), r[1]);
        assert_eq!(Value::Bytes(g.2.clone()), r[2]);
    }
    drop(c);
    closed.cleanup().await.unwrap();
    assert!(
        !dir.path().join(uuid.to_string()).exists(),
        "cleanup removes the dir"
    );
    backend.close().await;
    pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_engine_is_an_error_and_reset_empties() {
    let db = "life_reset";
    let pool = fresh_db(db).await;
    let target = make_target(&pool, db).await;
    let cfg = EngineConfig {
        target,
        local: LocalEngineConfig {
            keep_sort_dir: true,
            ..LocalEngineConfig::default()
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = local(&pool, dir.path(), 2);
    let mgr = EngineManager::new(backend.clone());
    let err = match mgr.unsafe_close_engine(&cfg, "nope", 1).await {
        Err(e) => e,
        Ok(_) => panic!("closing an engine that never existed must fail"),
    };
    assert!(err.to_string().contains("not found"), "{err}");

    let names = vec!["id".to_string(), "k".into(), "pad".into()];
    let opened = mgr.open_engine(&cfg, "t", 1).await.unwrap();
    let mut w = opened.local_writer(&writer_cfg(false)).await.unwrap();
    w.append_rows(&names, rows(100)).await.unwrap();
    w.close().await.unwrap();
    opened.reset().await.unwrap();
    let mut w = opened.local_writer(&writer_cfg(false)).await.unwrap();
    w.append_rows(&names, rows(10)).await.unwrap();
    w.close().await.unwrap();
    let uuid = opened.uuid();
    let closed = opened.close().await.unwrap();
    let stats = closed.import(0, 0).await.unwrap();
    assert_eq!(stats.rows, 10);
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM dst").await, 10);
    closed.cleanup().await.unwrap();
    assert!(
        dir.path().join(uuid.to_string()).exists(),
        "keep_sort_dir keeps it"
    );
    pool.disconnect().await.unwrap();
}

/// Not a timed test: prints the rows/s of each write path for the report.
/// Run with `cargo test -p wraith-backend --test local_lifecycle -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn write_path_throughput() {
    let n: i64 = std::env::var("WRAITH_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let db = "bench_paths";
    let pool = fresh_db(db).await;
    let mut c = pool.get_conn().await.unwrap();
    let ddl = "(id INT NOT NULL PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL, KEY k (k))";
    for t in ["sql_t", "local_t"] {
        c.query_drop(format!("CREATE TABLE {t} {ddl}"))
            .await
            .unwrap();
    }
    let columns = vec![
        ColumnSpec::new("id", ColumnKind::Int),
        ColumnSpec::new("k", ColumnKind::Int),
        ColumnSpec {
            charset: Some("utf8mb4".into()),
            ..ColumnSpec::new("c", ColumnKind::Text)
        },
        ColumnSpec {
            charset: Some("utf8mb4".into()),
            ..ColumnSpec::new("pad", ColumnKind::Text)
        },
    ];
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let data: Vec<Row> = (0..n)
        .map(|i| {
            vec![
                Value::Int(i),
                Value::Int((i * 7919) % 100_000),
                Value::Bytes(format!("{:0>119}", i * 31).into_bytes()),
                Value::Bytes(format!("{:0>59}", i * 17).into_bytes()),
            ]
        })
        .collect();
    let chunks: Vec<Vec<Row>> = data.chunks(10_000).map(|c| c.to_vec()).collect();

    for (name, table) in [("sql", "sql_t"), ("local", "local_t")] {
        let cfg = EngineConfig {
            target: TargetTable {
                schema: db.into(),
                table: table.into(),
                columns: columns.clone(),
                key_columns: vec![0],
            },
            local: LocalEngineConfig::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = if name == "sql" {
            Arc::new(SqlBackend::new(pool.clone(), SqlBackendConfig::default()))
        } else {
            local(&pool, dir.path(), 2)
        };
        let mgr = EngineManager::new(backend);
        let start = Instant::now();
        let opened = mgr.open_engine(&cfg, table, 1).await.unwrap();
        // Two writers in parallel, as two readers would.
        let mut handles = Vec::new();
        for part in 0..2 {
            let mine: Vec<Vec<Row>> = chunks.iter().skip(part).step_by(2).cloned().collect();
            let mut w = opened.local_writer(&writer_cfg(false)).await.unwrap();
            let names = names.clone();
            handles.push(tokio::spawn(async move {
                for ch in mine {
                    w.append_rows(&names, ch).await.unwrap();
                }
                w.close().await.unwrap()
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        opened.flush().await.unwrap();
        let written = start.elapsed();
        let closed = opened.close().await.unwrap();
        let t_import = Instant::now();
        closed.import(96 << 20, 0).await.unwrap();
        let imported = t_import.elapsed();
        closed.cleanup().await.unwrap();
        let total = start.elapsed();
        println!(
            "{name}: {n} rows; write {:.2}s ({:.0} rows/s), import {:.2}s ({:.0} rows/s), total {:.2}s ({:.0} rows/s)",
            written.as_secs_f64(),
            n as f64 / written.as_secs_f64(),
            imported.as_secs_f64(),
            n as f64 / imported.as_secs_f64().max(1e-9),
            total.as_secs_f64(),
            n as f64 / total.as_secs_f64()
        );
        assert_eq!(
            count(&pool, &format!("SELECT COUNT(*) FROM {table}")).await,
            n as u64
        );
    }
    let _ = read_rows; // shared helper used by other tests
    pool.disconnect().await.unwrap();
}
