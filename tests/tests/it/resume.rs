//! Resume: `wraith run` killed with SIGKILL at random moments under a write
//! load, rerun until it finishes, ends with exact content; checkpoints that no
//! longer fit are refused with their reason, and `--fresh` starts over.

use std::collections::BTreeMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};
use wraith_engine::testkit::workload::{Load, LoadConfig};
use wraith_tests::{
    assert_matches_mirror, mirrored_load, sysbench_with_mirror, wraith_with_config, PostponeFlag,
    Schema, WraithChild,
};

fn config(s: &Schema, backend: &str, alter: &str, extra_cutover: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    s.config(
        "sbtest",
        alter,
        &format!(
            "[copy]\nbackend = \"{backend}\"\nthreads = 2\ninitial_chunk_rows = 100\nchunk_target = \"20ms\"\n\n\
             [local]\nsort_dir = {:?}\nengine_size = \"2MiB\"\n\n[checkpoint]\ninterval = \"200ms\"\n\n\
             [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n{extra_cutover}\n",
            sort_dir.display().to_string()
        ),
    )
}

fn recopied(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.split("; ").nth(1))
        .filter_map(|l| l.strip_suffix(" rows above it are copied again"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// Engines a resumed run imported by UUID instead of copying their rows again.
fn reopened_engines(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.split(": imported ").nth(1))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// Keeps every run's log of a job in the temp dir, for replaying a failure.
fn log_run(s: &Schema, attempt: u32, how: &str, stderr: &str) {
    use std::io::Write as _;
    let path = std::env::temp_dir().join(format!("wraith-kill-{}.log", s.name));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "===== attempt {attempt} ({how})\n{stderr}");
    }
}

/// Whether the job completed: swapped, and its checkpoint removed.
async fn job_finished(s: &Schema) -> bool {
    let mut c = s.conn().await;
    let left: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM _wraith_checkpoint")
        .await
        .unwrap_or(Some(0));
    left.unwrap_or(0) == 0
        && s.table_exists("_sbtest_old").await
        && !s.table_exists("_sbtest_new").await
}

fn run_done() -> wraith_tests::Run {
    wraith_tests::Run {
        code: 0,
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// States a kill may be aimed at: it lands right after wraith enters one
/// (the local backend imports engines during CopyRows).
const KILL_STATES: [&str; 6] = [
    "CopyRows",
    "RestoreSecondaryIndexes",
    "AnalyzeTable",
    "Checksum",
    "PostChecksum",
    "CutOver",
];

#[tokio::test]
async fn kill_nine_in_every_state_then_resume_exact() {
    let seed = wraith_tests::kill_seed();
    eprintln!("kill -9 harness seed: {seed} (replay with WRAITH_KILL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut states: BTreeMap<String, u32> = BTreeMap::new();
    let mut total_kills = 0;
    let mut total_recopied = 0;
    let mut total_reopened = 0;
    let per_backend = 11;
    for backend in ["sql", "local"] {
        let mut kills = 0;
        let mut job = 0;
        while kills < per_backend {
            job += 1;
            assert!(job <= 30, "{backend}: {kills} kills after {job} jobs");
            let s = Schema::new(&format!("rs_kill_{backend}_{job}")).await;
            let rows = 60_000;
            sysbench_with_mirror(&s, rows).await;
            let load = Load::start(s.pool.clone(), mirrored_load(&s, rows, seed + job));
            // Small chunks on one thread: a run lasts a few seconds, so kills land
            // in every state.
            let cfg = config(
                &s,
                backend,
                "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
                "",
            )
            .replace("threads = 2", "threads = 1")
            .replace("chunk_target = \"20ms\"", "chunk_target = \"1ms\"")
            .replace("initial_chunk_rows = 100", "initial_chunk_rows = 50");
            let mut attempts = 0u32;
            let _ = std::fs::remove_file(
                std::env::temp_dir().join(format!("wraith-kill-{}.log", s.name)),
            );
            let finished = loop {
                attempts += 1;
                assert!(attempts < 30, "{backend}: no end after {attempts} runs");
                let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
                if kills >= per_backend {
                    break child.finish(Duration::from_secs(300)).await;
                }
                // Half the kills at a random moment early on (preflight, start),
                // half at a random moment of the copy.
                let aimed = rng
                    .random_bool(0.5)
                    .then(|| KILL_STATES[rng.random_range(0..KILL_STATES.len())]);
                let delay = Duration::from_millis(rng.random_range(0..300));
                let started = std::time::Instant::now();
                loop {
                    if child.try_finished() {
                        break;
                    }
                    let due = match aimed {
                        Some(state) => child.stderr().contains(&format!("to={state}")),
                        None => started.elapsed() >= delay,
                    };
                    if due {
                        if aimed.is_some() {
                            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40)))
                                .await;
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if child.try_finished() {
                    break child.finish(Duration::from_secs(10)).await;
                }
                child.signal(libc::SIGKILL);
                let run = child.finish(Duration::from_secs(10)).await;
                log_run(&s, attempts, "killed", &run.stderr);
                *states
                    .entry(wraith_tests::last_state(&run.stderr))
                    .or_default() += 1;
                total_recopied += recopied(&run.stderr);
                total_reopened += reopened_engines(&run.stderr);
                kills += 1;
                // Killed after the job had finished and removed its checkpoint:
                // there is nothing left to resume.
                if job_finished(&s).await {
                    break run_done();
                }
            };
            log_run(&s, attempts, "finished", &finished.stderr);
            tokio::time::sleep(Duration::from_millis(200)).await;
            load.stop().await;
            assert_eq!(
                finished.code,
                0,
                "{backend} (seed {seed}): {}",
                finished.output()
            );
            total_recopied += recopied(&finished.stderr);
            total_reopened += reopened_engines(&finished.stderr);
            assert_matches_mirror(&s).await;
            assert!(
                s.table_exists("_sbtest_old").await,
                "{backend}: no cut-over"
            );
            assert!(!s.table_exists("_sbtest_new").await);
            for marker in ["sbtest_wraith_sentry", "sbtest_wraith_swap", "_sbtest_chk"] {
                assert!(
                    !s.table_exists(marker).await,
                    "{backend}: {marker} left behind"
                );
            }
            let mut c = s.conn().await;
            let left: Option<u64> = c
                .query_first("SELECT COUNT(*) FROM _wraith_checkpoint")
                .await
                .unwrap_or(Some(0));
            assert_eq!(
                left.unwrap_or(0),
                0,
                "{backend}: checkpoint left after the finished run"
            );
        }
        total_kills += kills;
    }
    eprintln!(
        "kill -9 harness (seed {seed}): {total_kills} kills, states at kill: {states:?}, rows copied again after resumes: {total_recopied} ({:.0} per kill), closed engines imported by UUID on resume: {total_reopened}",
        total_recopied as f64 / total_kills.max(1) as f64
    );
    assert!(total_kills >= 20, "only {total_kills} kills");
}

/// Starts a run that stops at the postponed cut-over, and kills it there.
async fn killed_run(s: &Schema, cfg: &str) {
    let mut child = WraithChild::spawn(&["run"], cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    child.signal(libc::SIGKILL);
    child.finish(Duration::from_secs(10)).await;
    assert!(s.table_exists("_sbtest_new").await);
}

#[tokio::test]
async fn invalid_checkpoints_are_refused_and_fresh_recovers() {
    let s = Schema::new("rs_invalid").await;
    sysbench_with_mirror(&s, 3_000).await;
    let flag = PostponeFlag::new();
    let postpone = flag.setting();
    let alter = "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'";
    let cfg = config(&s, "sql", alter, &postpone);
    killed_run(&s, &cfg).await;

    // wraith status shows the resumable run.
    let status = wraith_with_config(&["status"], &cfg).await;
    assert_eq!(status.code, 0, "{}", status.output());
    assert!(status.stderr.contains("resumable"), "{}", status.output());
    assert!(status.stderr.contains("checksummed"), "{}", status.output());
    let json = wraith_with_config(&["status", "--json"], &cfg).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("status json");
    assert!(
        v["checkpoint"]["migration_id"].is_string(),
        "{}",
        json.stdout
    );

    // A changed ALTER.
    let other = config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(30) NOT NULL DEFAULT 'n'",
        &postpone,
    );
    let run = wraith_with_config(&["run"], &other).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(run.stderr.contains("MismatchedAlter"), "{}", run.output());
    assert!(run.stderr.contains("--fresh"), "{}", run.output());

    // An old checkpoint.
    s.exec("UPDATE _wraith_checkpoint SET body = JSON_SET(body, '$.updated_at', 1000)")
        .await;
    let run = wraith_with_config(&["run"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(run.stderr.contains("CheckpointTooOld"), "{}", run.output());

    // --fresh starts over and finishes.
    drop(flag);
    let run = wraith_with_config(&["run", "--fresh"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stderr.contains("--fresh: dropped _sbtest_new"),
        "{}",
        run.output()
    );
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn a_recreated_source_table_collides_with_the_checkpoint() {
    let s = Schema::new("rs_collide").await;
    sysbench_with_mirror(&s, 2_000).await;
    let flag = PostponeFlag::new();
    let postpone = flag.setting();
    let cfg = config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &postpone,
    );
    killed_run(&s, &cfg).await;
    s.exec("CREATE TABLE sb2 LIKE sbtest; INSERT INTO sb2 SELECT * FROM sbtest; DROP TABLE sbtest; RENAME TABLE sb2 TO sbtest")
        .await;
    let run = wraith_with_config(&["run"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(
        run.stderr.contains("CheckpointCollision"),
        "{}",
        run.output()
    );
    drop(flag);
    let run = wraith_with_config(&["run", "--fresh"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn a_purged_binlog_position_is_refused() {
    // Purging binlogs would break the other tests' streams: its own server.
    let server = wraith_engine::testkit::scratch::ScratchServer::start(
        wraith_engine::testkit::scratch::ScratchOptions {
            buffer_pool: "64M".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let s = Schema::on(&server, "rs_purged").await;
    sysbench_with_mirror(&s, 2_000).await;
    let flag = PostponeFlag::new();
    let postpone = flag.setting();
    let cfg = config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        &postpone,
    );
    killed_run(&s, &cfg).await;
    let mut c = s.conn().await;
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let logs: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap();
    let first: String = logs.first().and_then(|r| r.get(0)).unwrap();
    let last: String = logs.last().and_then(|r| r.get(0)).unwrap();
    // The killed run's dump thread may hold the old file open for a moment.
    let mut purged = false;
    for _ in 0..100 {
        c.query_drop(format!("PURGE BINARY LOGS TO '{last}'"))
            .await
            .unwrap();
        let logs: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap();
        if logs.first().and_then(|r| r.get::<String, _>(0)).as_deref() != Some(first.as_str()) {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged, "{first} could not be purged");
    let run = wraith_with_config(&["run"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(run.stderr.contains("BinlogNotFound"), "{}", run.output());
    drop(flag);
    let run = wraith_with_config(&["run", "--fresh"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn a_checkpoint_path_that_cannot_be_written_is_refused_before_the_run() {
    let s = Schema::new("rs_cpfail").await;
    sysbench_with_mirror(&s, 2_000).await;
    let before = s.rows("sbtest").await;
    // A directory that does not exist: nothing to load, and no save can succeed.
    let path = std::path::Path::new("/nonexistent-wraith-dir/checkpoint.json");
    let cfg = config(
        &s,
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        "",
    )
    .replace(
        "[checkpoint]\n",
        &format!(
            "[checkpoint]\nstore = \"file\"\npath = {:?}\n",
            path.display().to_string()
        ),
    );
    // Found before anything is created (a checkpoint write failing later,
    // with the path fine at the start, is crates/checkpoints' read-only table test).
    let run = wraith_with_config(&["run"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(
        run.stderr.contains("[checkpoint] path") && run.stderr.contains("/nonexistent-wraith-dir"),
        "{}",
        run.output()
    );
    assert_eq!(before, s.rows("sbtest").await, "the source changed");
    assert!(!s.table_exists("_sbtest_old").await);
    assert!(!s.table_exists("_sbtest_new").await);
}

/// The server is stopped cleanly and started again on the same datadir while
/// `wraith run` copies under a write load. wraith either rides it out or
/// stops with an error that says the source is untouched and how to resume;
/// reruns then finish, and the content is exact. Both backends.
#[tokio::test]
async fn a_server_restart_mid_run_then_rerun_is_exact() {
    let mut server = tokio::task::spawn_blocking(|| {
        ScratchServer::start(ScratchOptions {
            buffer_pool: "128M".into(),
            ..ScratchOptions::default()
        })
    })
    .await
    .unwrap()
    .expect("a server of its own to restart");
    for backend in ["sql", "local"] {
        let s = Schema::on(&server, &format!("rs_restart_{backend}")).await;
        let rows = 60_000;
        sysbench_with_mirror(&s, rows).await;
        let load = Load::start(
            s.pool.clone(),
            LoadConfig {
                rate: 100,
                ..mirrored_load(&s, rows, 7)
            },
        );
        let cfg = config(
            &s,
            backend,
            "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
            "",
        )
        .replace("threads = 2", "threads = 1")
        .replace("chunk_target = \"20ms\"", "chunk_target = \"1ms\"")
        .replace("initial_chunk_rows = 100", "initial_chunk_rows = 50");
        let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
        child.wait_for("to=CopyRows", Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server = tokio::task::spawn_blocking(move || {
            server
                .restart(Duration::from_secs(2))
                .expect("restart the scratch server");
            server
        })
        .await
        .unwrap();
        let mut run = child.finish(Duration::from_secs(300)).await;
        let mut reruns = 0;
        while run.code != 0 {
            assert_eq!(run.code, 1, "{backend}: {}", run.output());
            assert!(
                run.stderr.contains("untouched") || run.stderr.contains("resume"),
                "{backend}: the error does not say the source is safe or how to go on:\n{}",
                run.output()
            );
            reruns += 1;
            assert!(reruns <= 3, "{backend}: no end after {reruns} reruns");
            run = wraith_with_config(&["run"], &cfg).await;
        }
        eprintln!("{backend}: finished after {reruns} reruns");
        tokio::time::sleep(Duration::from_millis(200)).await;
        load.stop().await;
        assert_matches_mirror(&s).await;
        assert!(
            s.table_exists("_sbtest_old").await,
            "{backend}: no cut-over"
        );
    }
}

/// A local-backend run killed while a closed engine waits for its import:
/// the rerun reopens that engine by UUID (`unsafe_close_engine`) and imports
/// it instead of copying its rows again, and the content is exact.
#[tokio::test]
async fn a_closed_engine_is_reopened_and_imported_on_resume() {
    let mut reopened = 0;
    for job in 1..=4 {
        let s = Schema::new(&format!("rs_reopen_{job}")).await;
        let rows = 120_000;
        sysbench_with_mirror(&s, rows).await;
        let load = Load::start(
            s.pool.clone(),
            LoadConfig {
                rate: 100,
                connections: 1,
                ..mirrored_load(&s, rows, job)
            },
        );
        let cfg = config(
            &s,
            "local",
            "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
            "",
        );
        let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
        child
            .wait_for(
                "engine closed; recorded for resume",
                Duration::from_secs(120),
            )
            .await;
        child.signal(libc::SIGKILL);
        let killed = child.finish(Duration::from_secs(10)).await;
        assert_ne!(killed.code, 0, "the run ended before the kill");
        let run = wraith_with_config(&["run", "-v"], &cfg).await;
        assert_eq!(run.code, 0, "{}", run.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
        load.stop().await;
        assert_matches_mirror(&s).await;
        reopened += reopened_engines(&run.stderr);
        if reopened > 0 {
            break;
        }
        // The engine's import finished before the kill landed: try again.
    }
    assert!(reopened > 0, "no resumed run imported a closed engine");
}
