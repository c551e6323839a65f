//! The revert window (issue 16): with `[cutover] revert_window`, `wraith run`
//! cuts over and then keeps `_sbtest_old` in step with the live table, so
//! that `wraith revert` swaps back in one atomic step with every row written
//! since the cut-over, and `wraith finish` drops the old table without
//! stalling the application.
//!
//! Checked from the outside, under the mirrored write load (every statement
//! also written to `mirror` in the same transaction): after a revert `sbtest`
//! has its original definition and equals the mirror row for row, including
//! a column the ALTER had renamed; a kill -9 during the window loses nothing;
//! a value that cannot go back stops the window with its key named, never
//! truncated; the application's worst write during a revert or a finish
//! stays within the cut-over's bounds.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use wraith_engine::testkit::workload::{Load, LoadStats};
use wraith_tests::{
    assert_matches_mirror, last_state, mirrored_load, note_column_exists, sysbench_with_mirror,
    wraith_with_config, Run, Schema, WraithChild,
};

/// Changes `k`'s type and renames `note2` (a column the load does not write,
/// added by [`with_note2`]); the added column is dropped again by a revert.
const ALTER: &str = "MODIFY k BIGINT UNSIGNED NOT NULL DEFAULT 0, \
    CHANGE note2 remark VARCHAR(80) NULL, ADD COLUMN extra INT NOT NULL DEFAULT 7";
/// `lock_attempt_timeout` and `lock_hold_budget` as these tests set them.
const ATTEMPT_MS: f64 = 100.0;
const HOLD_MS: f64 = 150.0;
/// The load's own latency on two shared cores while the suite runs (as in
/// `cutover`).
const LOAD_SLACK_MS: f64 = 100.0;
/// Rows of `sbtest`: small, so a run reaches its window in seconds.
const ROWS: u64 = 20_000;
/// The test's own rows (see [`NoteWriter`]) take ids from here, far above
/// the load's.
const NOTE_IDS: u64 = 50_000_000;
/// Up to the window's opening: the copy, the checksum and the cut-over of
/// 20k rows under the load, on a busy machine.
const WINDOW_OPENS: Duration = Duration::from_secs(180);

/// A job on `sbtest` with the window on: the cut-over's bounds as the
/// cut-over tests set them, a control socket and the sort dir in `dir`, and
/// `cutover` appended to `[cutover]`.
fn config(s: &Schema, dir: &Path, backend: &str, alter: &str, cutover: &str) -> String {
    s.config(
        "sbtest",
        alter,
        &format!(
            "[copy]\nbackend = \"{backend}\"\nthreads = 2\ninitial_chunk_rows = 200\nchunk_target = \"20ms\"\n\n\
             [local]\nsort_dir = {:?}\nengine_size = \"2MiB\"\n\n[checkpoint]\ninterval = \"200ms\"\n\n\
             [cutover]\nlock_attempt_timeout = \"{ATTEMPT_MS}ms\"\nlock_hold_budget = \"{HOLD_MS}ms\"\n\
             revert_window = \"10m\"\nrevert_max_lag = \"30s\"\n{cutover}\n\n\
             [control]\nsocket = {:?}\n",
            dir.join("sort").display().to_string(),
            dir.join("ctl.sock").display().to_string(),
        ),
    )
}

/// `sbtest` and `mirror` ([`sysbench_with_mirror`]) with a column `note2`
/// the load never writes, set on every seventh row.
async fn with_note2(s: &Schema) {
    sysbench_with_mirror(s, ROWS).await;
    s.exec(
        "ALTER TABLE sbtest ADD COLUMN note2 VARCHAR(40) NULL; \
         ALTER TABLE mirror ADD COLUMN note2 VARCHAR(40) NULL; \
         UPDATE sbtest SET note2 = CONCAT('before-', id) WHERE id % 7 = 0; \
         UPDATE mirror SET note2 = CONCAT('before-', id) WHERE id % 7 = 0",
    )
    .await;
}

/// A table's columns and indexes.
use wraith_tests::Definition;

/// `table` holds exactly `mirror`'s rows, every column compared (both have
/// the same columns in the same order).
async fn assert_rows_equal(s: &Schema, table: &str, mirror: &str, what: &str) {
    let rows = s.rows(table).await;
    let expected = s.rows(mirror).await;
    if rows != expected {
        let a: BTreeSet<&String> = rows.iter().collect();
        let b: BTreeSet<&String> = expected.iter().collect();
        let only: Vec<_> = a.difference(&b).take(5).collect();
        let missing: Vec<_> = b.difference(&a).take(5).collect();
        panic!(
            "{what}: {table} differs from {mirror} ({} rows vs {}): only in {table}: {only:?}; missing: {missing:?}",
            rows.len(),
            expected.len(),
        );
    }
    assert!(
        rows.len() as u64 >= ROWS / 2,
        "{what}: {table} lost its rows"
    );
}

/// What `sbtest` becomes by `alter`, as the server's own ALTER makes it.
async fn altered_definition(s: &Schema, alter: &str) -> Definition {
    altered_definition_of(s, "sbtest", alter).await
}

/// What `table` becomes by `alter`, as the server's own ALTER makes it.
async fn altered_definition_of(s: &Schema, table: &str, alter: &str) -> Definition {
    s.exec(&format!(
        "CREATE TABLE expected_new LIKE {table}; ALTER TABLE expected_new {alter}"
    ))
    .await;
    let def = s.definition("expected_new").await;
    s.exec("DROP TABLE expected_new").await;
    def
}

/// The tables of the schema.
async fn tables(s: &Schema) -> Vec<String> {
    let mut c = s.conn().await;
    let mut names: Vec<String> = c
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
            (&s.name,),
        )
        .await
        .expect("tables");
    // By bytes: the server's collation sorts `_` after letters.
    names.sort();
    names
}

/// Rows left in the checkpoint table (none when it does not exist).
async fn checkpoints(s: &Schema) -> u64 {
    let mut c = s.conn().await;
    c.query_first::<u64, _>("SELECT COUNT(*) FROM _wraith_checkpoint")
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// The highest id the load may have handed out, for a load started after
/// another one stopped (the test's own rows are far above).
async fn load_max_id(s: &Schema) -> u64 {
    let mut c = s.conn().await;
    let max: Option<Option<u64>> = c
        .query_first(format!("SELECT MAX(id) FROM mirror WHERE id < {NOTE_IDS}"))
        .await
        .expect("max id");
    max.flatten().unwrap_or(ROWS).max(ROWS)
}

/// The milliseconds printed as `PREFIX N ms` (the first such place).
fn ms_after(text: &str, prefix: &str) -> Option<f64> {
    text.match_indices(prefix).find_map(|(i, _)| {
        let rest = &text[i + prefix.len()..];
        let (number, tail) = rest.split_once(' ')?;
        if tail.starts_with("ms") {
            number.parse().ok()
        } else {
            None
        }
    })
}

/// Everything a command printed, stdout and stderr.
fn printed(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// Waits until the run's stderr satisfies `done`; panics after `timeout` or
/// if the run exits first.
async fn wait_until(
    child: &mut WraithChild,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let err = child.stderr();
        if done(&err) {
            return;
        }
        assert!(
            !child.try_finished(),
            "wraith exited before {what}:\n{}",
            child.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "not {what} within {timeout:?}:\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the run's window: `revert window open` printed and
/// `RevertWindow` its last state.
async fn wait_for_window(child: &mut WraithChild, timeout: Duration) {
    child.wait_for("revert window open", timeout).await;
    wait_until(
        child,
        "in state RevertWindow",
        Duration::from_secs(30),
        |err| last_state(err) == "RevertWindow",
    )
    .await;
}

/// What the test's own writer did.
#[derive(Debug, Default)]
struct NoteFigures {
    /// Transactions committed while `sbtest` had `remark` (the new schema).
    as_remark: u64,
    /// Transactions committed once `sbtest` had `note2` again (reverted).
    as_note2: u64,
    errors: u64,
}

/// Writes the column the ALTER renamed, which the load does not: `remark` on
/// `sbtest` and `note2` on `mirror`, in the same transactions, on existing
/// rows and on rows of its own (inserted, updated, deleted). Once `sbtest`
/// has no `remark` (reverted), it writes `note2` there too. Values fit the
/// old column (40 characters), so every one of them can go back.
struct NoteWriter {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<NoteFigures>,
}

impl NoteWriter {
    fn start(s: &Schema, seed: u64) -> NoteWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (pool, flag) = (s.pool.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut figures = NoteFigures::default();
            let mut conn = pool.get_conn().await.expect("note writer connection");
            let mut column = "remark";
            let mut next = NOTE_IDS;
            while !flag.load(Ordering::Relaxed) {
                let v = format!("note-{}", rng.random::<u32>());
                let id = rng.random_range(1..=ROWS);
                let own = NOTE_IDS + rng.random_range(0..=next - NOTE_IDS);
                let (on_mirror, on_table) = match rng.random_range(0..10) {
                    0..=4 => (
                        format!("UPDATE mirror SET note2 = '{v}' WHERE id = {id}"),
                        format!("UPDATE sbtest SET {column} = '{v}' WHERE id = {id}"),
                    ),
                    5 => (
                        format!("UPDATE mirror SET note2 = NULL WHERE id = {id}"),
                        format!("UPDATE sbtest SET {column} = NULL WHERE id = {id}"),
                    ),
                    6 | 7 => {
                        next += 1;
                        (
                            format!("INSERT INTO mirror (id, k, c, pad, note2) VALUES ({next}, 7, 'own', 'row', '{v}')"),
                            format!("INSERT INTO sbtest (id, k, c, pad, {column}) VALUES ({next}, 7, 'own', 'row', '{v}')"),
                        )
                    }
                    8 => (
                        format!("UPDATE mirror SET note2 = '{v}', k = k + 1 WHERE id = {own}"),
                        format!("UPDATE sbtest SET {column} = '{v}', k = k + 1 WHERE id = {own}"),
                    ),
                    _ => (
                        format!("DELETE FROM mirror WHERE id = {own}"),
                        format!("DELETE FROM sbtest WHERE id = {own}"),
                    ),
                };
                // The load's order (mirror first), so the two seldom deadlock.
                let sql = format!("START TRANSACTION; {on_mirror}; {on_table}; COMMIT");
                match conn.query_drop(sql).await {
                    Ok(()) if column == "remark" => figures.as_remark += 1,
                    Ok(()) => figures.as_note2 += 1,
                    Err(e) => {
                        let _ = conn.query_drop("ROLLBACK").await;
                        // 1054: unknown column: `sbtest` is the old table again.
                        if matches!(&e, mysql_async::Error::Server(se) if se.code == 1054) {
                            column = "note2";
                        } else {
                            figures.errors += 1;
                            if !matches!(e, mysql_async::Error::Server(_)) {
                                if let Ok(c) = pool.get_conn().await {
                                    conn = c;
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            figures
        });
        NoteWriter { stop, task }
    }

    async fn stop(self) -> NoteFigures {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the note writer did not stop within 30s")
            .expect("note writer")
    }
}

/// The application's worst write while a revert or a finish ran, against a
/// bound; prints the load's figures.
fn assert_worst_write(stats: &LoadStats, bound_ms: f64, what: &str) {
    let worst = stats.max_ms();
    eprintln!(
        "{what}: worst write {worst:.1} ms, p99 {:.1} ms over {} transactions (bound {bound_ms:.1} ms)",
        stats.quantile_ms(0.99),
        stats.transactions
    );
    assert!(
        stats.transactions > 50,
        "{what}: the load barely ran: {stats:?}"
    );
    assert!(
        worst <= bound_ms,
        "{what}: a write waited {worst:.1} ms (p99 {:.1} ms), over the bound of {bound_ms:.1} ms: the application was stalled",
        stats.quantile_ms(0.99)
    );
}

/// The schema after a finished revert: `sbtest` is the original table with
/// every row the load and the note writer wrote, `_sbtest_new` the new
/// schema kept aside (`new`; `None` after `--drop-new`: gone), nothing else
/// of wraith's left.
async fn assert_reverted(s: &Schema, original: &Definition, new: Option<&Definition>, what: &str) {
    assert_eq!(
        &s.definition("sbtest").await,
        original,
        "{what}: sbtest is not the original table"
    );
    assert_rows_equal(s, "sbtest", "mirror", what).await;
    if let Some(new) = new {
        assert!(
            s.table_exists("_sbtest_new").await,
            "{what}: the new-schema table was not kept as _sbtest_new"
        );
        assert_eq!(
            &s.definition("_sbtest_new").await,
            new,
            "{what}: _sbtest_new is not the new schema"
        );
    }
    let left: Vec<String> = tables(s)
        .await
        .into_iter()
        .filter(|t| t != "_wraith_checkpoint")
        .collect();
    let expected: &[&str] = if new.is_some() {
        &["_sbtest_new", "mirror", "sbtest"]
    } else {
        &["mirror", "sbtest"]
    };
    assert_eq!(left, expected, "{what}: wraith left tables behind");
    assert_eq!(
        checkpoints(s).await,
        0,
        "{what}: the reverted job left its checkpoint"
    );
}

/// Issue 16's first test, on one backend: the rebuild (a type change and a
/// rename) under the load with the window on, writes for a few seconds after
/// the cut-over (the renamed column too), `wraith revert` under the load.
async fn revert_under_load(backend: &str) {
    let _alone = crate::LATENCY_JUDGED.write().await;
    let what = format!("rv_load_{backend}");
    let s = Schema::new(&what).await;
    with_note2(&s).await;
    let original = s.definition("sbtest").await;
    let new = altered_definition(&s, ALTER).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&s, dir.path(), backend, ALTER, "");
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 21));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    assert!(
        s.table_exists("_sbtest_old").await,
        "{what}: no _sbtest_old in the window"
    );
    assert_eq!(
        s.definition("sbtest").await,
        new,
        "{what}: sbtest is not the new table in the window"
    );
    // A few seconds of writes after the cut-over, the renamed column too.
    let notes = NoteWriter::start(&s, 5);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = load.stop().await;
    assert!(
        before.transactions > 300,
        "{what}: the load barely ran: {before:?}"
    );
    // A load of its own for the revert, so its worst write is the revert's.
    let load = Load::start(s.pool.clone(), mirrored_load(&s, load_max_id(&s).await, 22));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revert = wraith_with_config(&["revert"], &cfg).await;
    // Writes after the revert land in the old table.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = load.stop().await;
    let noted = notes.stop().await;
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(revert.code, 0, "{what}: revert: {}", revert.output());
    let said = printed(&revert);
    assert!(said.contains("reverted"), "{what}: {}", revert.output());
    let blocked = ms_after(&said, "writes were blocked for ").unwrap_or_else(|| {
        panic!(
            "{what}: revert did not say how long writes were blocked: {}",
            revert.output()
        )
    });
    assert_eq!(run.code, 0, "{what}: run: {}", run.output());
    assert!(
        run.stderr.contains("handed the revert window over"),
        "{what}: {}",
        run.output()
    );
    eprintln!("{what}: revert blocked writes {blocked:.1} ms; note writer {noted:?}");
    assert!(
        noted.as_remark > 20,
        "{what}: the renamed column was barely written: {noted:?}"
    );
    assert!(
        noted.as_note2 > 0,
        "{what}: no write found sbtest with its old column after the revert: {noted:?}"
    );
    // As the cut-over tests: no write waited longer than the revert's
    // reported block (plus the load's own noise), and never a whole
    // lock_wait_timeout.
    assert_worst_write(&during, (blocked + LOAD_SLACK_MS).min(1_000.0), &what);
    assert_reverted(&s, &original, Some(&new), &what).await;
}

#[tokio::test]
async fn revert_under_load_is_exact_sql() {
    revert_under_load("sql").await;
}

#[tokio::test]
async fn revert_under_load_is_exact_local() {
    revert_under_load("local").await;
}

/// kill -9 of the run in its window; the rerun resumes the window from its
/// checkpoint (no copy again), and a later revert (`--drop-new`) is exact.
#[tokio::test]
async fn a_killed_window_resumes_and_reverts_exactly() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let seed = wraith_tests::kill_seed();
    eprintln!("rv_kill seed: {seed} (replay with WRAITH_KILL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let what = format!("rv_kill (seed {seed})");
    let s = Schema::new("rv_kill").await;
    with_note2(&s).await;
    let original = s.definition("sbtest").await;
    let new = altered_definition(&s, ALTER).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&s, dir.path(), "sql", ALTER, "window_end = \"keep\"");
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, seed));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    let notes = NoteWriter::start(&s, seed);
    tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
    child.signal(libc::SIGKILL);
    let killed = child.finish(Duration::from_secs(10)).await;
    assert_eq!(
        last_state(&killed.stderr),
        "RevertWindow",
        "{what}: killed outside the window: {}",
        killed.output()
    );
    // Writes while no wraith runs: the rerun must find them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rerun = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_until(
        &mut rerun,
        "back in the window",
        Duration::from_secs(60),
        |err| err.contains("revert window open") || err.contains("to=RevertWindow"),
    )
    .await;
    wait_until(
        &mut rerun,
        "in state RevertWindow",
        Duration::from_secs(30),
        |err| last_state(err) == "RevertWindow",
    )
    .await;
    assert_eq!(
        s.definition("sbtest").await,
        new,
        "{what}: sbtest is not the new table in the resumed window"
    );
    let resumed = rerun.stderr();
    assert!(
        !resumed.contains("to=CopyRows") && !resumed.contains("to=Checksum"),
        "{what}: the rerun did the job again instead of resuming the window:\n{resumed}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let revert = wraith_with_config(&["revert", "--drop-new"], &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = load.stop().await;
    let noted = notes.stop().await;
    let run = rerun.finish(Duration::from_secs(60)).await;
    assert_eq!(revert.code, 0, "{what}: revert: {}", revert.output());
    assert!(
        printed(&revert).contains("reverted"),
        "{what}: {}",
        revert.output()
    );
    assert_eq!(run.code, 0, "{what}: rerun: {}", run.output());
    assert!(
        run.stderr.contains("handed the revert window over"),
        "{what}: {}",
        run.output()
    );
    eprintln!("{what}: load {stats:?}; note writer {noted:?}");
    assert!(stats.transactions > 300, "{what}: {stats:?}");
    assert!(noted.as_remark > 20, "{what}: {noted:?}");
    assert_reverted(&s, &original, None, &what).await;
}

/// A value longer than the old column, written after the cut-over, stops
/// the window with the key named; the old table never holds it truncated,
/// the live table goes on untouched, and no revert is possible afterwards.
#[tokio::test]
async fn a_value_that_cannot_go_back_stops_the_window() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "rv_unmappable";
    let s = Schema::new(what).await;
    sysbench_with_mirror(&s, ROWS).await;
    const ID: u64 = 900_000;
    // The mirror has the new schema from the start: it takes the long value
    // as the live table does.
    s.exec(&format!(
        "ALTER TABLE mirror MODIFY c VARCHAR(200) NOT NULL DEFAULT ''; \
         INSERT INTO sbtest (id, k, c, pad) VALUES ({ID}, 1, 'short', 'row'); \
         INSERT INTO mirror (id, k, c, pad) VALUES ({ID}, 1, 'short', 'row')"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &s,
        dir.path(),
        "sql",
        "MODIFY c VARCHAR(200) NOT NULL DEFAULT ''",
        "",
    );
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 31));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 164 characters: fits the live VARCHAR(200), not the old CHAR(120).
    let long = format!("{}tail-of-it", "unmappable-".repeat(14));
    assert!(long.len() > 120 && long.len() <= 200, "{}", long.len());
    s.exec(&format!(
        "START TRANSACTION; UPDATE mirror SET c = '{long}' WHERE id = {ID}; \
         UPDATE sbtest SET c = '{long}' WHERE id = {ID}; COMMIT"
    ))
    .await;
    let run = child.finish(Duration::from_secs(120)).await;
    // The application goes on writing the live table.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    assert!(
        run.code > 0,
        "{what}: the run did not fail: {}",
        run.output()
    );
    assert!(
        run.stderr.contains("revert window stopped"),
        "{what}: {}",
        run.output()
    );
    assert!(
        run.stderr.contains(&format!("`id` = {ID}")),
        "{what}: the key is not named: {}",
        run.output()
    );
    assert!(stats.transactions > 100, "{what}: {stats:?}");
    // Never a silent truncation: the old table holds no prefix of the value.
    if s.table_exists("_sbtest_old").await {
        let mut c = s.conn().await;
        let truncated: Option<u64> = c
            .query_first("SELECT COUNT(*) FROM _sbtest_old WHERE c LIKE 'unmappable-%'")
            .await
            .expect("read _sbtest_old");
        assert_eq!(
            truncated,
            Some(0),
            "{what}: the value went into the old table truncated"
        );
    }
    // The live table is the new schema, untouched: it equals the mirror.
    let live = s.definition("sbtest").await;
    assert_eq!(
        live,
        s.definition("mirror").await,
        "{what}: sbtest is not the new table"
    );
    assert_rows_equal(&s, "sbtest", "mirror", what).await;
    let rows = s.rows("sbtest").await;
    let old_exists = s.table_exists("_sbtest_old").await;

    let revert = wraith_with_config(&["revert"], &cfg).await;
    assert!(
        revert.code > 0,
        "{what}: a revert after a failed window: {}",
        revert.output()
    );
    let said = printed(&revert).to_lowercase();
    assert!(
        said.contains("window") && (said.contains("failed") || said.contains("stopped")),
        "{what}: the revert does not say the window failed: {}",
        revert.output()
    );
    assert_eq!(
        s.definition("sbtest").await,
        live,
        "{what}: the failed revert changed sbtest"
    );
    assert_eq!(
        s.rows("sbtest").await,
        rows,
        "{what}: the failed revert changed sbtest's rows"
    );
    assert!(
        !s.table_exists("_sbtest_new").await,
        "{what}: the failed revert renamed sbtest"
    );
    assert_eq!(
        s.table_exists("_sbtest_old").await,
        old_exists,
        "{what}: the failed revert renamed _sbtest_old"
    );
}

/// `wraith finish` under the load: the window ends, `_sbtest_old` is
/// dropped, and no write of the application waits longer than the
/// cut-over's block budget while it drops.
#[tokio::test]
async fn finish_drops_the_old_table_without_stalling_the_writes() {
    let _alone = crate::LATENCY_JUDGED.write().await;
    let what = "rv_finish";
    let s = Schema::new(what).await;
    sysbench_with_mirror(&s, ROWS).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &s,
        dir.path(),
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        "",
    );
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 41));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    assert!(note_column_exists(&s).await, "{what}: not cut over");
    assert!(
        s.table_exists("_sbtest_old").await,
        "{what}: no _sbtest_old"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;
    let live = s.definition("sbtest").await;
    let load = Load::start(s.pool.clone(), mirrored_load(&s, load_max_id(&s).await, 42));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let finish = wraith_with_config(&["finish"], &cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = load.stop().await;
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(finish.code, 0, "{what}: finish: {}", finish.output());
    let said = printed(&finish);
    assert!(said.contains("dropped"), "{what}: {}", finish.output());
    let took = ms_after(&said, "in ").unwrap_or_else(|| {
        panic!(
            "{what}: finish did not say how long the drop took: {}",
            finish.output()
        )
    });
    eprintln!("{what}: the drop took {took:.1} ms by wraith's report");
    assert_eq!(run.code, 0, "{what}: run: {}", run.output());
    assert!(
        run.stderr.contains("handed the revert window over"),
        "{what}: {}",
        run.output()
    );
    // The cut-over's budget: a lock request's bound and the granted lock's
    // hold, plus the load's own noise, as the cut-over tests allow.
    assert_worst_write(&during, ATTEMPT_MS + HOLD_MS + LOAD_SLACK_MS, what);
    assert!(
        !s.table_exists("_sbtest_old").await,
        "{what}: _sbtest_old is still there"
    );
    assert_eq!(
        s.definition("sbtest").await,
        live,
        "{what}: finish changed sbtest"
    );
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;
    let left: Vec<String> = tables(&s)
        .await
        .into_iter()
        .filter(|t| !["sbtest", "mirror", "_wraith_checkpoint"].contains(&t.as_str()))
        .collect();
    assert!(left.is_empty(), "{what}: left behind: {left:?}");
    assert_eq!(
        checkpoints(&s).await,
        0,
        "{what}: the finished job left its checkpoint"
    );
}

/// A window cannot take back a dropped column (its values are gone) or a
/// changed primary key: `check` and `run` refuse such a job before anything
/// is created, naming the reason; the same ALTER without a window passes.
#[tokio::test]
async fn a_window_with_a_dropped_column_or_a_new_key_is_refused() {
    let s = Schema::new("rv_refused").await;
    sysbench_with_mirror(&s, 2_000).await;
    let before = s.snapshot("sbtest").await;
    let tables_before = tables(&s).await;
    let dir = tempfile::tempdir().unwrap();
    for (alter, needles) in [
        ("DROP COLUMN pad", &["pad"][..]),
        (
            "DROP PRIMARY KEY, ADD PRIMARY KEY (id, k)",
            &["primary key"][..],
        ),
    ] {
        // Without a window the ALTER is fine.
        let plain = s.config(
            "sbtest",
            alter,
            &format!(
                "[local]\nsort_dir = {:?}\n",
                dir.path().join("sort").display().to_string()
            ),
        );
        let check = wraith_with_config(&["check"], &plain).await;
        assert_eq!(check.code, 0, "{alter}: {}", check.output());
        let cfg = config(&s, dir.path(), "sql", alter, "");
        for cmd in ["check", "run"] {
            let run = wraith_with_config(&[cmd], &cfg).await;
            assert_eq!(
                run.code,
                3,
                "{alter}: {cmd}: expected a refusal:\n{}",
                run.output()
            );
            // The failed check names the window and the reason on one line.
            let failed: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.contains("FAIL") && l.to_lowercase().contains("revert"))
                .collect();
            assert!(
                failed.iter().any(|l| needles
                    .iter()
                    .all(|n| l.to_lowercase().contains(&n.to_lowercase()))),
                "{alter}: {cmd}: no failed check naming the window and {needles:?}:\n{}",
                run.output()
            );
            assert!(
                run.stderr.contains("fix:"),
                "{alter}: {cmd}: no fix:\n{}",
                run.output()
            );
            assert_eq!(
                before,
                s.snapshot("sbtest").await,
                "{alter}: {cmd}: the source changed"
            );
            assert_eq!(
                tables_before,
                tables(&s).await,
                "{alter}: {cmd}: wraith left an object behind"
            );
        }
    }
}

/// Asks the run listening in `dir` for `status-json`.
async fn status_json(dir: &Path) -> Option<serde_json::Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(dir.join("ctl.sock"))
        .await
        .ok()?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"status-json\n").await.ok()?;
    let line = BufReader::new(read).lines().next_line().await.ok()??;
    serde_json::from_str(&line).ok()
}

/// Sends one control command to the run listening in `dir`; its reply.
async fn command(dir: &Path, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(dir.join("ctl.sock"))
        .await
        .expect("control socket");
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("send");
    BufReader::new(read)
        .lines()
        .next_line()
        .await
        .expect("reply")
        .unwrap_or_default()
}

/// The window as an operator watches it: `status-json` says `RevertWindow`
/// with the time left and the reverse stream's figures, `extend-window`
/// moves the end, the hooks of its start and its end run once each, and the
/// window's end finishes by itself: the old table is dropped, the live
/// table keeps every row.
#[tokio::test]
async fn the_window_shows_in_status_runs_its_hooks_and_ends_by_itself() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    use std::os::unix::fs::PermissionsExt;
    let what = "rv_status";
    let s = Schema::new(what).await;
    sysbench_with_mirror(&s, ROWS).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    let out = dir.path().join("hooks.log");
    std::fs::create_dir_all(&hooks).unwrap();
    for hook in ["on-revert-window-start", "on-finish", "on-success"] {
        let path = hooks.join(hook);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"$WRAITH_EVENT\" >> {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = config(
        &s,
        dir.path(),
        "sql",
        "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'",
        "",
    )
    .replace("revert_window = \"10m\"", "revert_window = \"5s\"")
        + &format!("\n[hooks]\ndir = {:?}\n", hooks.display().to_string());
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 51));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    let status = status_json(dir.path()).await.expect("status-json");
    assert_eq!(status["state"], "RevertWindow", "{what}: {status}");
    assert_eq!(
        status["tables"][0]["state"], "RevertWindow",
        "{what}: {status}"
    );
    let left = status["revert_window"]["seconds_left"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no seconds_left: {status}"));
    assert!(left <= 5, "{what}: {status}");
    assert_eq!(
        status["revert_window"]["at_end"], "finish",
        "{what}: {status}"
    );
    // The reverse stream's figures: the load's changes come through it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = status_json(dir.path()).await.expect("status-json");
    assert!(
        status["tables"][0]["changes_applied"].as_u64().unwrap_or(0) > 0,
        "{what}: no change applied back: {status}"
    );
    let reply = command(dir.path(), "extend-window=20s").await;
    assert!(reply.starts_with("ok"), "{what}: {reply}");
    // The window's loop takes the extension at its next turn (every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = status_json(dir.path()).await.expect("status-json");
        let extended = status["revert_window"]["seconds_left"]
            .as_u64()
            .unwrap_or(0);
        if extended > 15 {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: not extended: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ends by itself, about 20 s later.
    let run = child.finish(Duration::from_secs(90)).await;
    let stats = load.stop().await;
    assert_eq!(run.code, 0, "{what}: {}", run.output());
    assert!(
        run.stderr.contains("the revert window now ends"),
        "{what}: {}",
        run.output()
    );
    assert!(
        run.stderr.contains("revert window finished: dropped"),
        "{what}: {}",
        run.output()
    );
    assert!(
        !s.table_exists("_sbtest_old").await,
        "{what}: _sbtest_old kept"
    );
    assert!(note_column_exists(&s).await, "{what}: not the new table");
    assert!(stats.transactions > 100, "{what}: {stats:?}");
    assert_matches_mirror(&s).await;
    assert_eq!(checkpoints(&s).await, 0, "{what}: checkpoint left");
    let hooks_ran = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        hooks_ran.lines().collect::<Vec<_>>(),
        ["on-revert-window-start", "on-finish", "on-success"],
        "{what}: hooks"
    );
}

/// A value the old type keeps only approximately (a decimal rounded to
/// fewer places, which the server does without an error) is never swapped
/// in: the revert compares every row written in the window, finds the
/// rounded one, names its key and renames nothing.
#[tokio::test]
async fn a_rounded_value_refuses_the_revert() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "rv_rounded";
    let s = Schema::new(what).await;
    sysbench_with_mirror(&s, ROWS).await;
    // A row the load never touches (its ids stay below ROWS).
    const ID: u64 = 900_000;
    // The mirror has the new definition: it takes the value as the live table does.
    s.exec(
        "ALTER TABLE sbtest ADD COLUMN price DECIMAL(10,2) NULL; \
         ALTER TABLE mirror ADD COLUMN price DECIMAL(12,4) NULL",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&s, dir.path(), "sql", "MODIFY price DECIMAL(12,4) NULL", "");
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 61));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    s.exec(&format!(
        "START TRANSACTION; \
         INSERT INTO sbtest (id, k, c, pad, price) VALUES ({ID}, 1, 'rounded', 'row', 1.2345); \
         INSERT INTO mirror (id, k, c, pad, price) VALUES ({ID}, 1, 'rounded', 'row', 1.2345); \
         COMMIT"
    ))
    .await;
    let live = s.definition("sbtest").await;
    let revert = wraith_with_config(&["revert"], &cfg).await;
    let run = child.finish(Duration::from_secs(60)).await;
    load.stop().await;
    assert_ne!(
        revert.code,
        0,
        "{what}: the revert went ahead: {}",
        revert.output()
    );
    let said = printed(&revert);
    assert!(said.contains("revert window stopped"), "{what}: {said}");
    assert!(
        said.contains(&format!("`id` = {ID}")),
        "{what}: the key is not named: {said}"
    );
    assert_eq!(run.code, 0, "{what}: {}", run.output());
    // Nothing renamed: the live table is the new one, with every row.
    assert_eq!(s.definition("sbtest").await, live, "{what}: sbtest changed");
    assert!(!s.table_exists("_sbtest_new").await, "{what}: renamed");
    assert_rows_equal(&s, "sbtest", "mirror", what).await;
    // And the window is over for good: a second revert refuses too.
    let again = wraith_with_config(&["revert"], &cfg).await;
    assert_ne!(again.code, 0, "{what}: {}", again.output());
    assert!(
        printed(&again).contains("cannot revert"),
        "{what}: {}",
        again.output()
    );
}

/// The second table of the two-table job: sysbench-like, with `mirror2`.
const TWO: &str = "sbtwo";
/// Each table's ALTER changes a type and adds a column.
const ONE_ALTER: &str =
    "MODIFY k BIGINT UNSIGNED NOT NULL DEFAULT 0, ADD COLUMN extra INT NOT NULL DEFAULT 7";
const TWO_ALTER: &str =
    "MODIFY pad VARCHAR(100) NOT NULL DEFAULT '', ADD COLUMN tenant_id INT UNSIGNED NOT NULL DEFAULT 3";

/// Two tables in one job with one window (`[cutover] together`, the
/// default): `wraith revert` under a load on both swaps both back in one
/// RENAME, each with its original definition and every row written since
/// the cut-over, and keeps both new-schema tables.
#[tokio::test]
async fn several_tables_revert_together() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "rv_two";
    let s = Schema::new(what).await;
    sysbench_with_mirror(&s, ROWS).await;
    {
        let mut c = s.conn().await;
        wraith_engine::testkit::workload::create_sysbench_table(&mut c, &s.name, TWO, ROWS)
            .await
            .expect("create sbtwo");
    }
    s.exec(&format!(
        "CREATE TABLE mirror2 LIKE {TWO}; INSERT INTO mirror2 SELECT * FROM {TWO}"
    ))
    .await;
    let originals = [s.definition("sbtest").await, s.definition(TWO).await];
    let news = [
        altered_definition_of(&s, "sbtest", ONE_ALTER).await,
        altered_definition_of(&s, TWO, TWO_ALTER).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&s, dir.path(), "sql", ONE_ALTER, "").replacen(
        "[copy]",
        &format!("[[table]]\nname = \"{TWO}\"\nalter = {TWO_ALTER:?}\n\n[copy]"),
        1,
    );
    let load_two = |seed| wraith_engine::testkit::workload::LoadConfig {
        table: TWO.into(),
        mirror: Some("mirror2".into()),
        rate: 100,
        ..mirrored_load(&s, ROWS, seed)
    };
    let one = |seed| wraith_engine::testkit::workload::LoadConfig {
        rate: 100,
        ..mirrored_load(&s, ROWS, seed)
    };
    let loads = [
        Load::start(s.pool.clone(), one(71)),
        Load::start(s.pool.clone(), load_two(72)),
    ];
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    for (table, new) in [("sbtest", &news[0]), (TWO, &news[1])] {
        assert!(
            s.table_exists(&old_name_of(table)).await,
            "{what}: no {} in the window",
            old_name_of(table)
        );
        assert_eq!(
            &s.definition(table).await,
            new,
            "{what}: {table} is not the new table in the window"
        );
    }
    // Writes on both tables in the window, then the revert under them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = s.binlog_now().await;
    let revert = wraith_with_config(&["revert"], &cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [a, b] = loads;
    let stats = [a.stop().await, b.stop().await];
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(revert.code, 0, "{what}: revert: {}", revert.output());
    assert_eq!(run.code, 0, "{what}: run: {}", run.output());
    assert!(
        run.stderr.contains("handed the revert window over"),
        "{what}: {}",
        run.output()
    );
    for st in &stats {
        assert!(st.transactions > 300, "{what}: the load barely ran: {st:?}");
    }
    // One swap: one report line naming both tables.
    let said = printed(&revert);
    let reports: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("reverted in") || l.contains("reverted ("))
        .collect();
    let both = |l: &str| {
        l.contains(&format!("{}.sbtest", s.name)) && l.contains(&format!("{}.{TWO}", s.name))
    };
    assert!(
        reports.len() == 1 && both(reports[0]),
        "{what}: not one revert naming both tables: {}",
        revert.output()
    );
    let blocked = ms_after(&said, "writes were blocked for ").unwrap_or_else(|| {
        panic!(
            "{what}: revert did not say how long writes were blocked: {}",
            revert.output()
        )
    });
    eprintln!(
        "{what}: revert blocked writes {blocked:.1} ms; loads: {} and {} transactions, worst {:.1} and {:.1} ms",
        stats[0].transactions,
        stats[1].transactions,
        stats[0].max_ms(),
        stats[1].max_ms()
    );
    // And one RENAME in the binlog, swapping both back.
    let renames = crate::multi::renames_since(&s, &from).await;
    assert_eq!(
        renames.len(),
        1,
        "{what}: not one RENAME TABLE for both tables: {renames:#?}"
    );
    let names = crate::multi::renamed_names(&s.name, &renames[0]);
    for n in [
        "sbtest",
        "_sbtest_old",
        "_sbtest_new",
        TWO,
        "_sbtwo_old",
        "_sbtwo_new",
    ] {
        assert!(
            names.contains(n),
            "{what}: the revert's RENAME does not name {n}: {}",
            renames[0]
        );
    }
    for ((table, mirror), (original, new)) in [("sbtest", "mirror"), (TWO, "mirror2")]
        .into_iter()
        .zip(originals.iter().zip(&news))
    {
        assert_eq!(
            &s.definition(table).await,
            original,
            "{what}: {table} is not the original table"
        );
        assert_rows_equal(&s, table, mirror, what).await;
        let kept = format!("_{table}_new");
        assert!(
            s.table_exists(&kept).await,
            "{what}: the new-schema table was not kept as {kept}"
        );
        assert_eq!(
            &s.definition(&kept).await,
            new,
            "{what}: {kept} is not the new schema"
        );
    }
    let left: Vec<String> = tables(&s)
        .await
        .into_iter()
        .filter(|t| t != "_wraith_checkpoint")
        .collect();
    assert_eq!(
        left,
        [
            "_sbtest_new",
            "_sbtwo_new",
            "mirror",
            "mirror2",
            "sbtest",
            "sbtwo"
        ],
        "{what}: wraith left tables behind"
    );
    assert_eq!(
        checkpoints(&s).await,
        0,
        "{what}: the reverted job left its checkpoint"
    );
}

/// `_t_old`, as the tests spell it.
fn old_name_of(table: &str) -> String {
    format!("_{table}_old")
}

/// A kill step: the revert's RENAME done on the server.
const SWAPPED: &str = "_sbtest_new exists";

/// kill -9 of `wraith revert` at a random moment (before it asked the run
/// to hand over, while it catches up or compares, under the swap's lock,
/// after the RENAME), under the load; `wraith revert` again finishes the
/// job exactly: the original table with every row, `_sbtest_new` kept,
/// no sentry or marker table, no checkpoint.
#[tokio::test]
async fn a_revert_killed_anywhere_reruns_to_exact() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let seed = wraith_tests::kill_seed();
    eprintln!("rv_revert_kill seed: {seed} (replay with WRAITH_KILL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let what = format!("rv_revert_kill (seed {seed})");
    let s = Schema::new("rv_revert_kill").await;
    with_note2(&s).await;
    let original = s.definition("sbtest").await;
    let new = altered_definition(&s, ALTER).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&s, dir.path(), "sql", ALTER, "");
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, seed));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    let notes = NoteWriter::start(&s, seed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The moment of the kill: a random time from the start, or a random
    // time after one of the revert's steps is logged (the window followed
    // again, the swap's first lock request seen coming, its own RENAME read
    // back from the binlog, which comes after the swap), or at once when the
    // server shows the swap done (`_sbtest_new` there), before the revert's
    // own cleanup.
    let steps = ["to=Revert", "metadata_lock_info", "DDL on", SWAPPED];
    let (step, delay) = match rng.random_range(0..2) {
        0 => (None, rng.random_range(0..800)),
        _ => match steps[rng.random_range(0..steps.len())] {
            SWAPPED => (Some(SWAPPED), 0),
            step => (Some(step), rng.random_range(0..100)),
        },
    };
    eprintln!("{what}: kill after {step:?} + {delay} ms");
    let started = Instant::now();
    let mut first = WraithChild::spawn(&["revert", "-v"], &cfg);
    if let Some(step) = step {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reached = if step == SWAPPED {
                s.table_exists("_sbtest_new").await
            } else {
                first.stderr().contains(step)
            };
            if reached || first.try_finished() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the revert did not log {step:?} within 60s:\n{}",
                first.stderr()
            );
            // The swap's cleanup follows its RENAME within milliseconds.
            if step != SWAPPED {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    first.signal(libc::SIGKILL);
    let killed = first.finish(Duration::from_secs(10)).await;
    eprintln!(
        "{what}: revert killed after {:?} (exit {}):\n{}",
        started.elapsed(),
        killed.code,
        killed.stderr
    );
    // The revert may have ended before the kill: then there is nothing
    // left to rerun, and the second one says so.
    let completed = killed.code == 0;
    if !completed {
        assert_eq!(
            killed.code,
            -1,
            "{what}: the revert failed by itself: {}",
            killed.output()
        );
    }
    // Writes while no revert runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rerun = wraith_with_config(&["revert"], &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = load.stop().await;
    let noted = notes.stop().await;
    let run = child.finish(Duration::from_secs(60)).await;
    // A kill that lands after the revert's last step (its checkpoint
    // removed) but before the process exits leaves nothing to rerun: the
    // final state below is what proves it whole.
    let completed =
        completed || (rerun.code > 0 && printed(&rerun).contains("no revert window open"));
    if completed {
        eprintln!("{what}: the revert had finished before the kill");
        assert!(
            rerun.code > 0 && printed(&rerun).contains("no revert window open"),
            "{what}: a revert after a finished one: {}",
            rerun.output()
        );
    } else {
        assert_eq!(rerun.code, 0, "{what}: rerun: {}", rerun.output());
        let said = printed(&rerun);
        assert!(said.contains("reverted"), "{what}: {}", rerun.output());
        match ms_after(&said, "writes were blocked for ") {
            Some(ms) => eprintln!("{what}: the rerun swapped; writes were blocked {ms:.1} ms"),
            None => {
                assert!(
                    said.contains("an earlier revert had swapped the tables"),
                    "{what}: the rerun neither swapped nor found an earlier swap: {}",
                    rerun.output()
                );
                eprintln!("{what}: the killed revert had swapped; the rerun cleaned up");
            }
        }
    }
    assert_eq!(run.code, 0, "{what}: run: {}", run.output());
    assert!(
        run.stderr.contains("handed the revert window over"),
        "{what}: {}",
        run.output()
    );
    eprintln!(
        "{what}: load {} transactions, worst {:.1} ms; note writer {noted:?}",
        stats.transactions,
        stats.max_ms()
    );
    assert!(stats.transactions > 300, "{what}: {stats:?}");
    assert!(noted.as_remark > 20, "{what}: {noted:?}");
    assert_reverted(&s, &original, Some(&new), &what).await;
}

/// On a server whose time zone is not UTC, with a TIMESTAMP column: the
/// rows compared under the revert's lock read the live table on the locked
/// session and the old table beside it, both in one time zone, so a revert
/// under writes is not refused for a difference that is only the zone.
#[tokio::test]
async fn a_revert_on_a_server_not_in_utc_compares_timestamps_alike() {
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "rv_tz";
    let s = Schema::on(wraith_tests::tz_server(), what).await;
    sysbench_with_mirror(&s, ROWS).await;
    s.exec(
        "ALTER TABLE sbtest ADD COLUMN ts TIMESTAMP NULL; \
         ALTER TABLE mirror ADD COLUMN ts TIMESTAMP NULL; \
         UPDATE sbtest SET ts = '2024-06-01 12:00:00'; \
         UPDATE mirror SET ts = '2024-06-01 12:00:00'",
    )
    .await;
    let original = s.definition("sbtest").await;
    let dir = tempfile::tempdir().unwrap();
    let alter = "MODIFY k BIGINT UNSIGNED NOT NULL DEFAULT 0";
    let cfg = config(&s, dir.path(), "sql", alter, "");
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 71));
    let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
    wait_for_window(&mut child, WINDOW_OPENS).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The load goes on through the revert: rows change up to its lock.
    let revert = wraith_with_config(&["revert", "--drop-new"], &cfg).await;
    let stats = load.stop().await;
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(revert.code, 0, "{what}: revert: {}", revert.output());
    assert_eq!(run.code, 0, "{what}: run: {}", run.output());
    assert!(stats.transactions > 100, "{what}: {stats:?}");
    assert_eq!(
        s.definition("sbtest").await,
        original,
        "{what}: not reverted"
    );
    assert_rows_equal(&s, "sbtest", "mirror", what).await;
}
