//! Local backend lifecycle against a real scratch server: durability across a
//! dropped process state, key order of the import, cleanup, reset.

mod common;

use std::sync::Arc;

use common::{count, fresh_db, specs};
use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use wraith_backend::{
    engine_uuid, Backend, EngineConfig, EngineManager, ImportPace, LocalBackend,
    LocalBackendConfig, LocalEngineConfig, LocalWriterConfig, Pace, Row, TargetTable, Value,
};

fn local(pool: &Pool, dir: &std::path::Path, threads: usize) -> Arc<dyn Backend> {
    paced(pool, dir, threads, None)
}

fn paced(
    pool: &Pool,
    dir: &std::path::Path,
    threads: usize,
    pace: Option<ImportPace>,
) -> Arc<dyn Backend> {
    Arc::new(
        LocalBackend::new(
            pool.clone(),
            LocalBackendConfig {
                sort_dir: dir.to_path_buf(),
                memory_limit: 128 << 20,
                compression: true,
                import_threads: threads,
                pace,
            },
        )
        .unwrap(),
    )
}

/// A pace held shut until opened, counting the ranges it let through.
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    passed: std::sync::atomic::AtomicU64,
}

#[wraith_backend::async_trait]
impl Pace for Gate {
    async fn ready(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        self.passed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The import asks its pace before every range: held, it writes nothing;
/// let go, it loads every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_pace_holds_the_import_between_ranges() {
    let db = "life_pace";
    let pool = fresh_db(db).await;
    let target = make_target(&pool, db).await;
    let cfg = EngineConfig {
        target,
        local: LocalEngineConfig::default(),
    };
    let names = vec!["id".to_string(), "k".into(), "pad".into()];
    let all = rows(1009);
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate {
        open: tokio::sync::watch::Sender::new(false),
        passed: std::sync::atomic::AtomicU64::new(0),
    });
    let mgr = EngineManager::new(paced(&pool, dir.path(), 2, Some(ImportPace(gate.clone()))));
    let opened = mgr.open_engine(&cfg, "life.p", 1).await.unwrap();
    let mut w = opened.local_writer(&writer_cfg(false)).await.unwrap();
    w.append_rows(&names, all.clone()).await.unwrap();
    w.close().await.unwrap();
    let closed = opened.close().await.unwrap();
    let import = tokio::spawn(async move { closed.import(16 << 10, 0).await });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(!import.is_finished());
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM dst").await, 0);
    gate.open.send_replace(true);
    let stats = import.await.unwrap().unwrap();
    assert_eq!(stats.rows, 1009);
    assert!(stats.ranges > 1, "{stats:?}");
    assert_eq!(
        gate.passed.load(std::sync::atomic::Ordering::SeqCst),
        stats.ranges as u64
    );
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM dst").await, 1009);
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
        transient_unique_indexes: Vec::new(),
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

/// kill -9 after `flush`: a new process closes the engine by UUID and
/// imports every flushed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_rows_survive_kill_9() {
    use std::io::BufRead as _;
    let db = "life_kill9";
    let pool = fresh_db(db).await;
    let target = make_target(&pool, db).await;
    let dir = tempfile::tempdir().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/kill9_child
    let child_bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("kill9_child");
    assert!(
        child_bin.exists(),
        "{} missing: run through `cargo test`, which builds examples",
        child_bin.display()
    );
    let mut child = std::process::Command::new(child_bin)
        .env("WRAITH_KILL9_DIR", dir.path())
        .env(
            "WRAITH_KILL9_TARGET",
            serde_json::to_string(&target).unwrap(),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let saw_flushed = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("FLUSHED"))
    })
    .await
    .unwrap();
    assert!(saw_flushed, "the child did not get to flush");
    // Let it write some unflushed rows, then SIGKILL.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let cfg = EngineConfig {
        target,
        local: LocalEngineConfig::default(),
    };
    let backend = local(&pool, dir.path(), 2);
    let mgr = EngineManager::new(backend);
    let closed = mgr.unsafe_close_engine(&cfg, "kill.t", 1).await.unwrap();
    let stats = closed.import(0, 0).await.unwrap();
    assert!(stats.rows >= 2000, "{stats:?}");
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM dst WHERE id < 2000").await,
        2000,
        "every flushed row is there"
    );
    closed.cleanup().await.unwrap();
    pool.disconnect().await.unwrap();
}
