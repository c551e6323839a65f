//! Verified to the end: a duplicate on a unique key of the new table, made
//! after the checksum (while the cut-over waits, or by a primary-key move at
//! the very end) or by the ALTER's own collation change, stops the run before
//! any rename, naming the index and the values; no row of the shadow table is
//! removed to make room, and the source stays what the application wrote.
//!
//! The checksum runs beside the deferred index build, and a run killed while
//! they overlap resumes to the same content, with every index.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use wraith_engine::testkit::workload::{Load, LoadConfig};
use wraith_tests::{
    assert_matches_mirror, mirrored_load, sysbench_with_mirror, PostponeFlag, Schema, WraithChild,
};

fn config(s: &Schema, backend: &str, table: &str, alter: &str, extra: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    s.config(
        table,
        alter,
        &format!(
            "[copy]\nbackend = \"{backend}\"\nthreads = 2\ninitial_chunk_rows = 200\nchunk_target = \"10ms\"\n\n\
             [local]\nsort_dir = {:?}\n\n[cutover]\nlock_wait_timeout = \"1s\"\nretries = 3\n{extra}\n",
            sort_dir.display().to_string()
        ),
    )
}

/// How a test makes the duplicate.
#[derive(Clone, Copy, Debug)]
enum Duplicate {
    /// Insert a row with another row's `c` while the cut-over is postponed.
    InsertWhilePostponed,
    /// Move a row's primary key and give it another row's `c`, right as the
    /// cut-over is let go (so it lands in the last catch-up).
    KeyMoveAtTheEnd,
}

/// Runs `ADD UNIQUE KEY uk_c (c)` on `sbtest` under the mirrored load, makes
/// a duplicate of `c` after the checksum (in `sbtest` and the mirror, in one
/// transaction), and checks that the run stopped as it must.
async fn duplicate_after_the_checksum(backend: &str, how: Duplicate) {
    let s = Schema::new(&format!("ver_{backend}_{how:?}").to_lowercase()).await;
    let rows = 5_000;
    sysbench_with_mirror(&s, rows).await;
    let load = Load::start(
        s.pool.clone(),
        LoadConfig {
            rate: 100,
            // A row whose key moves while the copy reads can be copied twice
            // (old and new key) and clash on the index the ALTER adds, which
            // the copy stops on; the duplicates under test come after it.
            change_keys: false,
            ..mirrored_load(&s, rows, 11)
        },
    );
    let flag = PostponeFlag::new();
    let cfg = config(
        &s,
        backend,
        "sbtest",
        "ADD UNIQUE KEY uk_c (c)",
        &flag.setting(),
    );
    let mut child = WraithChild::spawn(&["run", "--json"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    // Let some changes be applied (and verified) after the checksum.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The row whose value is duplicated: one the load never touches (the
    // load writes ids below its own counter; this one is moved out of reach).
    let mut c = s.conn().await;
    loop {
        let id: u64 = c
            .query_first("SELECT MIN(id) FROM sbtest")
            .await
            .unwrap()
            .unwrap();
        c.query_drop("START TRANSACTION").await.unwrap();
        let mut moved = 0;
        for t in ["sbtest", "mirror"] {
            c.query_drop(format!("UPDATE {t} SET id = 9000001 WHERE id = {id}"))
                .await
                .unwrap();
            moved += c.affected_rows();
        }
        if moved == 2 {
            c.query_drop("COMMIT").await.unwrap();
            break;
        }
        // The load moved or deleted it meanwhile: try another.
        c.query_drop("ROLLBACK").await.unwrap();
    }
    let value: String = c
        .query_first("SELECT c FROM sbtest WHERE id = 9000001")
        .await
        .unwrap()
        .unwrap();
    let dup = match how {
        Duplicate::InsertWhilePostponed => {
            c.query_drop(format!(
                "START TRANSACTION; \
                 INSERT INTO sbtest (id, k, c, pad) VALUES (9000002, 1, '{value}', 'dup'); \
                 INSERT INTO mirror (id, k, c, pad) VALUES (9000002, 1, '{value}', 'dup'); COMMIT"
            ))
            .await
            .unwrap();
            drop(flag);
            "`id` = 9000002"
        }
        Duplicate::KeyMoveAtTheEnd => {
            c.query_drop(
                "INSERT INTO sbtest (id, k, c, pad) VALUES (9000003, 1, 'unique-one', 'x'); \
                 INSERT INTO mirror (id, k, c, pad) VALUES (9000003, 1, 'unique-one', 'x')",
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(flag);
            c.query_drop(format!(
                "START TRANSACTION; \
                 UPDATE sbtest SET id = 9000004, c = '{value}' WHERE id = 9000003; \
                 UPDATE mirror SET id = 9000004, c = '{value}' WHERE id = 9000003; COMMIT"
            ))
            .await
            .unwrap();
            "`id` = 9000004"
        }
    };
    let run = child.finish(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = load.stop().await;
    assert!(stats.transactions > 50, "the load barely ran: {stats:?}");

    let out = run.output();
    assert_ne!(run.code, 0, "{backend}/{how:?}: the run must stop: {out}");
    assert!(
        out.contains("uk_c"),
        "{backend}/{how:?}: index not named: {out}"
    );
    assert!(
        out.contains(&format!("`c` = '{value}'")),
        "{backend}/{how:?}: key values not named as SQL: {out}"
    );
    assert!(
        out.contains(dup) && out.contains("`id` = 9000001"),
        "{backend}/{how:?}: both rows must be named: {out}"
    );
    assert!(!out.contains("cut over in"), "{out}");
    // Nothing renamed: sbtest is the source, without the new index, and it
    // holds exactly what the application wrote.
    assert!(!s.table_exists("_sbtest_old").await);
    let mut c = s.conn().await;
    let idx: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sbtest' AND INDEX_NAME = 'uk_c'")
        .await
        .unwrap();
    assert_eq!(idx, Some(0), "sbtest has the new index: it was renamed");
    assert_matches_mirror(&s).await;
    // The row holding the value was not removed from the shadow to make room
    // (the shadow is kept: a rerun resumes once the data is fixed).
    let kept: Option<String> = c
        .query_first("SELECT c FROM _sbtest_new WHERE id = 9000001")
        .await
        .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some(value.as_str()),
        "{backend}/{how:?}: the other row left the shadow"
    );
}

#[tokio::test]
async fn a_duplicate_inserted_while_the_cut_over_waits_stops_the_run() {
    for backend in ["sql", "local"] {
        duplicate_after_the_checksum(backend, Duplicate::InsertWhilePostponed).await;
    }
}

#[tokio::test]
async fn a_duplicate_made_by_a_key_move_at_the_end_stops_the_run() {
    for backend in ["sql", "local"] {
        duplicate_after_the_checksum(backend, Duplicate::KeyMoveAtTheEnd).await;
    }
}

/// Changes after the checksum are verified again, and counted in the report.
#[tokio::test]
async fn rows_changed_after_the_checksum_are_verified_again() {
    let s = Schema::new("ver_counted").await;
    let rows = 5_000;
    sysbench_with_mirror(&s, rows).await;
    let load = Load::start(
        s.pool.clone(),
        LoadConfig {
            rate: 100,
            ..mirrored_load(&s, rows, 5)
        },
    );
    let flag = PostponeFlag::new();
    let cfg = config(
        &s,
        "sql",
        "sbtest",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &flag.setting(),
    );
    let mut child = WraithChild::spawn(&["run", "--json"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(flag);
    let run = child.finish(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    let reverified = report["tables"][0]["rows_reverified"].as_u64().unwrap();
    // 5 s of 100 tx/s, 1 to 4 statements each: hundreds of rows changed.
    assert!(reverified > 100, "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "{reverified} rows changed after the checksum verified again"
        )),
        "{}",
        run.output()
    );
    assert_matches_mirror(&s).await;
}

/// A collation change on a unique index the table already has makes `'a'`
/// and `'A'` one value: the run is refused (preflight) or stopped (copy),
/// naming the index, and the source is untouched.
#[tokio::test]
async fn a_collation_change_that_makes_a_duplicate_is_named() {
    for backend in ["sql", "local"] {
        let s = Schema::new(&format!("ver_coll_{backend}")).await;
        s.exec(
            "CREATE TABLE w (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) COLLATE utf8mb4_bin NOT NULL, \
             UNIQUE KEY uk_name (name)); \
             INSERT INTO w SELECT seq, CONCAT('n', seq) FROM seq_1_to_3000; \
             INSERT INTO w VALUES (5001, 'a'), (5002, 'A')",
        )
        .await;
        let before = s.snapshot("w").await;
        let cfg = config(
            &s,
            backend,
            "w",
            "MODIFY name VARCHAR(20) COLLATE utf8mb4_general_ci NOT NULL",
            "",
        );
        let run = wraith_tests::wraith_with_config(&["run"], &cfg).await;
        let out = run.output();
        assert_ne!(run.code, 0, "{backend}: {out}");
        assert!(out.contains("uk_name"), "{backend}: index not named: {out}");
        // Preflight's data check (exit 3) names the value as `(a)`, the copy
        // (exit 1) as the server's `'A'`.
        assert!(
            ["'a'", "'A'", "(a)", "(A)"].iter().any(|k| out.contains(k)),
            "{backend}: key not named: {out}"
        );
        assert!(matches!(run.code, 1 | 3), "{backend}: {out}");
        assert_eq!(
            s.snapshot("w").await,
            before,
            "{backend}: the source changed"
        );
        assert!(!s.table_exists("_w_old").await);
    }
}

/// The secondary indexes of `table` (name, column), sorted.
async fn secondary_indexes(s: &Schema, table: &str) -> Vec<(String, String)> {
    let mut c = s.conn().await;
    c.exec(
        "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME <> 'PRIMARY' \
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (table,),
    )
    .await
    .unwrap()
}

/// A run killed in its copy, with the secondary indexes left out of the
/// shadow, and resumed under a config that keeps them (a replica added,
/// `defer_secondary_indexes = false`): the resumed run builds the indexes
/// the first one left out, and the rebuilt table has every index and the
/// application's rows.
#[tokio::test]
async fn a_run_resumed_under_the_other_index_choice_keeps_every_index() {
    let s = Schema::new("ver_defer_flip").await;
    let load = mirrored_sysbench_under_load(&s, 23).await;
    // The flag file holds the copy, so the kill lands in it.
    let hold = std::env::temp_dir().join(format!("wraith-test-hold-{}", s.name));
    std::fs::write(&hold, b"").unwrap();
    let held = format!(
        "\n[throttle]\nflag_file = {:?}\ninterval = \"100ms\"\n",
        hold.display().to_string()
    );
    let cfg = config(&s, "sql", "sbtest", "ADD INDEX k_c (c)", &held);
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    child
        .wait_for("throttled: flag-file", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.signal(libc::SIGKILL);
    let killed = child.finish(Duration::from_secs(10)).await;
    assert!(
        !killed.stderr.contains("to=RestoreSecondaryIndexes"),
        "killed too late: {}",
        killed.stderr
    );
    assert_eq!(
        secondary_indexes(&s, "_sbtest_new").await,
        [],
        "the first run's shadow defers the indexes"
    );
    let kept = cfg.replacen(
        "threads = 2\n",
        "threads = 2\ndefer_secondary_indexes = false\n",
        1,
    );
    assert_ne!(kept, cfg);
    std::fs::remove_file(&hold).unwrap();
    resume_to_the_mirror_with_indexes(&s, &kept, load).await;
}

/// `sbtest` of 60,000 rows and its mirror, with a mirrored load of 150
/// tx/s running (`seed` picks its rows).
async fn mirrored_sysbench_under_load(s: &Schema, seed: u64) -> Load {
    let rows = 60_000;
    sysbench_with_mirror(s, rows).await;
    Load::start(
        s.pool.clone(),
        LoadConfig {
            rate: 150,
            ..mirrored_load(s, rows, seed)
        },
    )
}

/// Resumes the killed run with `cfg` to its end, stops `load`, and checks
/// that it resumed, that `sbtest` equals the mirror and has `k_1` and
/// `k_c`, and that no shadow is left.
async fn resume_to_the_mirror_with_indexes(s: &Schema, cfg: &str, load: Load) {
    let run = WraithChild::spawn(&["run", "-v"], cfg)
        .finish(Duration::from_secs(300))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("resum"), "{}", run.stderr);
    assert_matches_mirror(s).await;
    assert_eq!(
        secondary_indexes(s, "sbtest").await,
        [("k_1", "k"), ("k_c", "c")].map(|(i, c)| (i.to_string(), c.to_string())),
    );
    assert!(!s.table_exists("_sbtest_new").await);
}

/// A phase of the JSON report: (start, end) in seconds from the table's start.
fn phase(report: &serde_json::Value, name: &str) -> (f64, f64) {
    let p = &report["phases"][name];
    match (p["start_secs"].as_f64(), p["end_secs"].as_f64()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("no phase {name} in {report}"),
    }
}

/// The checksum runs beside the deferred index build (the online ALTER on
/// the shadow) under a write load: the report shows both, each with its own
/// time, overlapping; the rebuilt table holds what the application wrote
/// and has its secondary indexes.
#[tokio::test]
async fn the_checksum_runs_beside_the_index_build_under_writes() {
    let s = Schema::new("ver_overlap").await;
    let rows = 60_000;
    sysbench_with_mirror(&s, rows).await;
    let load = Load::start(
        s.pool.clone(),
        LoadConfig {
            rate: 150,
            ..mirrored_load(&s, rows, 21)
        },
    );
    let cfg = config(
        &s,
        "sql",
        "sbtest",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n', ADD INDEX k_c (c)",
        "",
    );
    let run = WraithChild::spawn(&["run", "--json", "-v"], &cfg)
        .finish(Duration::from_secs(300))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(stats.transactions > 50, "the load barely ran: {stats:?}");
    assert!(
        !run.stderr.contains("cannot be built online"),
        "{}",
        run.stderr
    );
    assert_matches_mirror(&s).await;
    assert_eq!(
        secondary_indexes(&s, "sbtest").await,
        [("k_1", "k"), ("k_c", "c")].map(|(i, c)| (i.to_string(), c.to_string())),
    );

    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    let t = &report["tables"][0];
    // Each stage keeps its own time, and the fields others read are there.
    let took = |stage: &str| {
        t["stages"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["stage"] == stage))
            .and_then(|x| x["secs"].as_f64())
            .unwrap_or_else(|| panic!("no stage {stage}: {t}"))
    };
    assert!(
        took("restore_indexes") > 0.0 && took("checksum") > 0.0,
        "{t}"
    );
    assert!(t["index_restore_secs"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["checksum_secs"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["checksum_rows"].as_u64().unwrap() > rows / 2, "{t}");
    // The checksum began before the index build ended, and the build
    // before the checksum ended: they ran at once.
    let (build_start, build_end) = phase(t, "index_build");
    let (sum_start, sum_end) = phase(t, "checksum");
    assert!(
        sum_start < build_end && build_start < sum_end,
        "no overlap: {t}"
    );
    assert!(
        t["phases"]["overlap_saved_secs"].as_f64().unwrap() > 0.0,
        "{t}"
    );
    let (copy_start, copy_end) = phase(t, "copy");
    let (cut_start, _) = phase(t, "cut_over");
    assert!(copy_start < copy_end && copy_end <= sum_start, "{t}");
    assert!(build_end <= cut_start && sum_end <= cut_start, "{t}");
}

/// A run killed while its checksum and index build overlap resumes: the
/// rerun builds what is missing and ends with the rows the application
/// wrote and every secondary index.
#[tokio::test]
async fn a_run_killed_while_the_checksum_and_index_build_overlap_resumes_exact() {
    let s = Schema::new("ver_overlap_kill").await;
    let load = mirrored_sysbench_under_load(&s, 22).await;
    let cfg = config(
        &s,
        "sql",
        "sbtest",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n', ADD INDEX k_c (c)",
        "",
    );
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    // The build starts once the checksum's point is taken.
    child
        .wait_for("to=RestoreSecondaryIndexes", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    child.signal(libc::SIGKILL);
    let killed = child.finish(Duration::from_secs(10)).await;
    assert!(killed.stderr.contains("to=Checksum"), "{}", killed.stderr);
    // Where it landed, for the log: in the build, or just after it.
    let built = killed
        .stderr
        .lines()
        .any(|l| l.contains("stage done") && l.contains("restore_indexes"));
    eprintln!("killed after the index build finished: {built}");
    resume_to_the_mirror_with_indexes(&s, &cfg, load).await;
}
