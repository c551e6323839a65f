//! Online rebuilds: `wraith run` while a random write load runs, with the
//! cut-over. The load writes every statement to a mirror table in the same
//! transaction; wraith never touches the mirror, so after the run the rebuilt
//! table must equal the mirror under the column mapping, row by row.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use wraith_engine::workload::{create_sysbench_table, Load, LoadConfig};
use wraith_tests::{Schema, WraithChild};

const SEEDS: [u64; 2] = [7, 1234];

async fn sysbench_with_mirror(s: &Schema, rows: u64) {
    let mut c = s.conn().await;
    create_sysbench_table(&mut c, &s.name, "sbtest", rows)
        .await
        .unwrap();
    c.query_drop("CREATE TABLE mirror LIKE sbtest; INSERT INTO mirror SELECT * FROM sbtest")
        .await
        .unwrap();
}

fn load(s: &Schema, rows: u64, seed: u64, rate: u32) -> Load {
    Load::start(
        s.pool.clone(),
        LoadConfig {
            schema: s.name.clone(),
            table: "sbtest".into(),
            rate,
            connections: 4,
            seed,
            max_id: rows,
            change_keys: true,
            mirror: Some("mirror".into()),
            hot_keys: 0,
        },
    )
}

fn online_config(s: &Schema, backend: &str, alter: &str, extra: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    s.config(
        "sbtest",
        alter,
        &format!(
            "[copy]\nbackend = \"{backend}\"\nthreads = 3\ninitial_chunk_rows = 200\nchunk_target = \"10ms\"\n\n\
             [local]\nsort_dir = {:?}\nengine_size = \"4MiB\"\n\n[cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n{extra}\n",
            sort_dir.display().to_string()
        ),
    )
}

/// `sbtest` (rebuilt, with `note` added) equals `mirror` on the old columns.
async fn assert_matches_mirror(s: &Schema) {
    let mut c = s.conn().await;
    let diff: Vec<(u64, String)> = c
        .query(
            "SELECT m.id, 'missing or different in sbtest' FROM mirror m LEFT JOIN sbtest t ON t.id = m.id \
               WHERE t.id IS NULL OR NOT (t.k <=> m.k AND BINARY t.c <=> BINARY m.c AND BINARY t.pad <=> BINARY m.pad) \
             UNION ALL \
             SELECT t.id, 'only in sbtest' FROM sbtest t LEFT JOIN mirror m ON m.id = t.id WHERE m.id IS NULL \
             LIMIT 20",
        )
        .await
        .unwrap();
    assert!(
        diff.is_empty(),
        "rebuilt table differs from the mirror: {diff:?}"
    );
    let counts: Option<(u64, u64)> = c
        .query_first("SELECT (SELECT COUNT(*) FROM sbtest), (SELECT COUNT(*) FROM mirror)")
        .await
        .unwrap();
    let (a, b) = counts.unwrap();
    assert_eq!(a, b);
    assert!(a > 0);
}

async fn note_column_exists(s: &Schema) -> bool {
    let mut c = s.conn().await;
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sbtest' AND COLUMN_NAME = 'note'")
        .await
        .unwrap();
    n == Some(1)
}

#[tokio::test]
async fn rebuild_under_random_load_is_exact_on_both_backends() {
    for backend in ["sql", "local"] {
        for seed in SEEDS {
            let s = Schema::new(&format!("on_load_{backend}_{seed}")).await;
            let rows = 30_000;
            sysbench_with_mirror(&s, rows).await;
            let load = load(&s, rows, seed, 300);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // The local run also squeezes the change buffer so that it spills to disk.
            let mut cfg = online_config(
                &s,
                backend,
                "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
                "",
            );
            if backend == "local" {
                cfg.push_str("\n[changes]\nmemory_limit = \"4KiB\"\n");
            }
            let child = WraithChild::spawn(&["run", "--json"], &cfg);
            let run = child.finish(Duration::from_secs(240)).await;
            // Keep writing a little after the cut-over: those writes must land in the new table.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stats = load.stop().await;
            assert_eq!(run.code, 0, "{backend}/{seed}: {}", run.output());
            assert!(run.stderr.contains("cut over in"), "{}", run.output());
            assert!(stats.transactions > 50, "the load barely ran: {stats:?}");
            let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
            assert!(report["tables"][0]["changes_applied"].as_u64().unwrap() > 20, "{}", run.stdout);
            if backend == "local" {
                assert!(report["tables"][0]["change_buffer_spills"].as_u64().unwrap() > 0, "{}", run.stdout);
            }
            assert!(
                note_column_exists(&s).await,
                "{backend}/{seed}: sbtest is not the rebuilt table"
            );
            assert!(s.table_exists("_sbtest_old").await);
            assert_matches_mirror(&s).await;
        }
    }
}

#[tokio::test]
async fn hot_keys_are_deduplicated() {
    let s = Schema::new("on_hot").await;
    sysbench_with_mirror(&s, 20_000).await;
    let load = Load::start(
        s.pool.clone(),
        LoadConfig {
            schema: s.name.clone(),
            table: "sbtest".into(),
            rate: 0,
            connections: 4,
            seed: 3,
            max_id: 20_000,
            change_keys: false,
            mirror: Some("mirror".into()),
            hot_keys: 5,
        },
    );
    let flag = tempfile::NamedTempFile::new().unwrap();
    let cfg = online_config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &format!(
            "postpone_flag_file = {:?}",
            flag.path().display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run", "--json"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = load.stop().await;
    drop(flag);
    let run = child.finish(Duration::from_secs(120)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    let received = report["tables"][0]["changes_received"].as_u64().unwrap();
    let applied = report["tables"][0]["changes_applied"].as_u64().unwrap();
    assert!(stats.transactions > 100, "{stats:?}");
    assert!(received > 200, "few changes received: {received}");
    assert!(
        applied * 3 < received,
        "deduplication did not work: {applied} applied of {received}"
    );
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn postpone_flag_holds_the_cut_over() {
    let s = Schema::new("on_postpone").await;
    sysbench_with_mirror(&s, 5_000).await;
    let flag = tempfile::NamedTempFile::new().unwrap();
    let cfg = online_config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &format!(
            "postpone_flag_file = {:?}",
            flag.path().display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !note_column_exists(&s).await,
        "cut over while the flag file exists"
    );
    assert!(!s.table_exists("_sbtest_old").await);
    let removed = std::time::Instant::now();
    drop(flag);
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        removed.elapsed() < Duration::from_secs(10),
        "cut-over took long after the flag was removed"
    );
    assert!(note_column_exists(&s).await);
}

#[tokio::test]
async fn cut_over_waits_out_a_long_transaction_then_succeeds() {
    let s = Schema::new("on_longtx").await;
    sysbench_with_mirror(&s, 5_000).await;
    let flag = tempfile::NamedTempFile::new().unwrap();
    let cfg = online_config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &format!(
            "postpone_flag_file = {:?}",
            flag.path().display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run", "--json"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    // A transaction that holds a metadata lock on sbtest.
    let mut holder = s.conn().await;
    holder
        .query_drop("START TRANSACTION; UPDATE sbtest SET k = k WHERE id = 1")
        .await
        .unwrap();
    drop(flag);
    child
        .wait_for("cut-over attempt failed", Duration::from_secs(30))
        .await;
    // Nothing was renamed while the attempt failed.
    assert!(!note_column_exists(&s).await);
    assert!(
        !s.table_exists("_sbtest_old").await,
        "the sentry or a rename was left behind"
    );
    holder.query_drop("COMMIT").await.unwrap();
    let run = child.finish(Duration::from_secs(120)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    assert!(report["tables"][0]["cutover_attempts"].as_u64().unwrap() >= 2);
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn ddl_on_the_source_stops_the_run() {
    let s = Schema::new("on_ddl").await;
    sysbench_with_mirror(&s, 5_000).await;
    let flag = tempfile::NamedTempFile::new().unwrap();
    let cfg = online_config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &format!(
            "postpone_flag_file = {:?}",
            flag.path().display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    let before = s.rows("sbtest").await;
    s.exec("ALTER TABLE sbtest ADD COLUMN other INT").await;
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("ALTER TABLE sbtest ADD COLUMN other INT"),
        "{}",
        run.output()
    );
    assert!(
        !s.table_exists("_sbtest_new").await,
        "shadow left after the stop"
    );
    assert!(!s.table_exists("_sbtest_old").await);
    // The rows are as they were (the DDL only added a NULL column).
    let after: Vec<String> = s
        .rows("sbtest")
        .await
        .into_iter()
        .map(|r| r.trim_end_matches(",NULL").to_string())
        .collect();
    assert_eq!(before, after);
}

#[tokio::test]
async fn killed_binlog_connection_is_reconnected_and_exact() {
    let s = Schema::new("on_kill").await;
    let rows = 20_000;
    sysbench_with_mirror(&s, rows).await;
    let load = load(&s, rows, 99, 300);
    let flag = tempfile::NamedTempFile::new().unwrap();
    let cfg = online_config(
        &s,
        "local",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &format!(
            "postpone_flag_file = {:?}",
            flag.path().display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    let mut c = s.conn().await;
    let dumps: Vec<u64> = c
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
        .await
        .unwrap();
    assert!(!dumps.is_empty(), "no binlog dump thread found");
    for id in dumps {
        c.query_drop(format!("KILL {id}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(flag);
    let run = child.finish(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_matches_mirror(&s).await;
}
