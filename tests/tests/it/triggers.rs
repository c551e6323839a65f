//! Triggers follow the table: a table with audit triggers rebuilt under a
//! seeded random write load ends with the same rows and the same audit rows
//! as a *mirror* (the same schema in another database, given exactly the same
//! statements in the same order, never rebuilt); the triggers fire on the
//! new table, none are left on the old table or a shadow. Also under kill -9
//! during the copy and during the cut-over, and the refusals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use wraith_tests::{wraith_with_config, Schema, WraithChild};

const TABLES: &str = "CREATE TABLE t (id INT PRIMARY KEY, a INT NOT NULL DEFAULT 0, \
    b VARCHAR(40) NOT NULL DEFAULT '', tag VARCHAR(40) NOT NULL DEFAULT ''); \
    CREATE TABLE audit (seq INT AUTO_INCREMENT PRIMARY KEY, op CHAR(1) NOT NULL, id INT NOT NULL, \
    old_a INT NULL, new_a INT NULL, old_b VARCHAR(40) NULL, new_b VARCHAR(40) NULL)";

/// One statement each: the multi-statement text would be split by the server.
const TRIGGERS: [&str; 4] = [
    "CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.tag = CONCAT('ins-', NEW.a)",
    "CREATE TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW \
     INSERT INTO audit (op, id, new_a, new_b) VALUES ('I', NEW.id, NEW.a, NEW.b)",
    "CREATE TRIGGER t_au AFTER UPDATE ON t FOR EACH ROW BEGIN \
     INSERT INTO audit (op, id, old_a, new_a, old_b, new_b) VALUES ('U', NEW.id, OLD.a, NEW.a, OLD.b, NEW.b); \
     END",
    "CREATE TRIGGER t_ad AFTER DELETE ON t FOR EACH ROW \
     INSERT INTO audit (op, id, old_a, old_b) VALUES ('D', OLD.id, OLD.a, OLD.b)",
];

const ROWS: i64 = 20_000;

/// The live schema and its mirror, both with `t`, `audit` and the triggers.
async fn setup(name: &str) -> (Schema, Schema) {
    let live = Schema::new(name).await;
    let mirror = Schema::new(&format!("{name}_m")).await;
    for s in [&live, &mirror] {
        s.exec(TABLES).await;
        s.exec(&format!(
            "INSERT INTO t (id, a, b) SELECT seq, seq % 97, CONCAT('row-', seq) FROM seq_1_to_{ROWS}"
        ))
        .await;
        for trigger in TRIGGERS {
            s.exec(trigger).await;
        }
    }
    (live, mirror)
}

/// A seeded random load: every statement on the live table, then the same on
/// the mirror, one at a time (so both audit tables get the same sequence).
struct MirroredLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl MirroredLoad {
    fn start(live: &Schema, mirror: &Schema, seed: u64) -> MirroredLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (lp, mp) = (live.pool.clone(), mirror.pool.clone());
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut l = lp.get_conn().await.expect("live conn");
            let mut m = mp.get_conn().await.expect("mirror conn");
            let mut next_id = ROWS + 1;
            let mut done = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let id = rng.random_range(1..next_id);
                let sql = match rng.random_range(0..10) {
                    0..=4 => format!(
                        "UPDATE t SET a = a + {}, b = 'u{}' WHERE id = {id}",
                        rng.random_range(1..50),
                        rng.random_range(0..1000)
                    ),
                    5..=7 => {
                        next_id += 1;
                        format!(
                            "INSERT INTO t (id, a, b) VALUES ({}, {}, 'i{}')",
                            next_id - 1,
                            rng.random_range(0..1000),
                            rng.random_range(0..1000)
                        )
                    }
                    _ => format!("DELETE FROM t WHERE id = {id}"),
                };
                // The live table is written first; a statement it refused is
                // not given to the mirror either.
                if let Err(e) = l.query_drop(&sql).await {
                    eprintln!("load: {sql}: {e}");
                    continue;
                }
                m.query_drop(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("mirror: {sql}: {e}"));
                done += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            done
        });
        MirroredLoad { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

fn config(s: &Schema) -> String {
    s.config(
        "t",
        "ADD COLUMN c INT DEFAULT 7",
        "[copy]\nbackend = \"sql\"\nthreads = 1\ninitial_chunk_rows = 100\nchunk_target = \"2ms\"\n\n\
         [checkpoint]\ninterval = \"200ms\"\n\n[cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n",
    )
}

type Row = (i64, i64, String, String);
type AuditRow = (
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

async fn rows(s: &Schema) -> Vec<Row> {
    let mut c = s.conn().await;
    c.query("SELECT id, a, b, tag FROM t ORDER BY id")
        .await
        .expect("rows of t")
}

async fn audit(s: &Schema) -> Vec<AuditRow> {
    let mut c = s.conn().await;
    c.query("SELECT op, id, old_a, new_a, old_b, new_b FROM audit ORDER BY seq")
        .await
        .expect("audit rows")
}

/// (trigger, table) of every trigger of the schema.
async fn triggers_of(s: &Schema) -> Vec<(String, String)> {
    let mut c = s.conn().await;
    c.exec(
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS \
         WHERE TRIGGER_SCHEMA = ? ORDER BY TRIGGER_NAME",
        (&s.name,),
    )
    .await
    .expect("triggers")
}

/// After the run and some more writes: rows and audit equal the mirror's,
/// the triggers are on `t` (the copies' names) and nowhere else, and the
/// new column holds its default.
async fn assert_follows_mirror(live: &Schema, mirror: &Schema) {
    let (lr, mr) = (rows(live).await, rows(mirror).await);
    assert_eq!(lr.len(), mr.len(), "row counts differ");
    assert!(lr == mr, "the rows of t differ from the mirror's");
    let (la, ma) = (audit(live).await, audit(mirror).await);
    assert_eq!(
        la.len(),
        ma.len(),
        "audit row counts differ (a trigger fired twice or not at all)"
    );
    if let Some(k) = (0..la.len()).find(|&k| la[k] != ma[k]) {
        panic!(
            "audit differs from the mirror's at row {k}: {:?} vs {:?}",
            la[k], ma[k]
        );
    }
    let expected: Vec<(String, String)> = ["t_ad", "t_ai", "t_au", "t_bi"]
        .iter()
        .map(|n| (format!("{n}_wraith"), "t".to_string()))
        .collect();
    assert_eq!(triggers_of(live).await, expected);
    assert!(live.table_exists("_t_old").await, "no cut-over");
    assert!(!live.table_exists("_t_new").await);
    let mut c = live.conn().await;
    let not_default: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM t WHERE c IS NULL OR c <> 7")
        .await
        .expect("new column");
    assert_eq!(not_default, Some(0));
}

#[tokio::test]
async fn triggers_follow_the_table_under_load() {
    let _own_load = crate::LATENCY_JUDGED.read().await;
    let (live, mirror) = setup("trg_follow").await;
    let seed = wraith_tests::kill_seed();
    eprintln!("load seed {seed}");
    let load = MirroredLoad::start(&live, &mirror, seed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let run = wraith_with_config(&["run", "-v"], &config(&live)).await;
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.output());
    // Writes after the cut-over go through the copies on the new table.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let statements = load.stop().await;
    eprintln!("run took {took:?}; {statements} statements on each side");
    assert!(statements > 100, "only {statements} statements");
    assert_follows_mirror(&live, &mirror).await;
    if let Some(line) = run
        .stderr
        .lines()
        .find(|l| l.contains("triggers made on the shadows"))
    {
        eprintln!("{line}");
    }
}

#[tokio::test]
async fn triggers_survive_kills_in_the_copy_and_the_cutover() {
    let _own_load = crate::LATENCY_JUDGED.read().await;
    let (live, mirror) = setup("trg_kill").await;
    let seed = wraith_tests::kill_seed();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let load = MirroredLoad::start(&live, &mirror, seed);
    let cfg = config(&live);
    // First killed while it copies, then right after the triggers were made
    // under the lock (before or after the RENAME), then run to the end.
    let aims = ["to=CopyRows", "triggers made on the shadows"];
    let mut kills = 0;
    let mut finished = None;
    for attempt in 0..8 {
        let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
        let Some(aim) = aims.get(attempt) else {
            finished = Some(child.finish(Duration::from_secs(300)).await);
            break;
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !child.try_finished() && !child.stderr().contains(aim) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if child.try_finished() {
            finished = Some(child.finish(Duration::from_secs(10)).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        child.signal(libc::SIGKILL);
        let run = child.finish(Duration::from_secs(10)).await;
        eprintln!(
            "killed at {:?} (aimed at {aim:?})",
            wraith_tests::last_state(&run.stderr)
        );
        kills += 1;
        // Killed after the swap finished and its checkpoint was removed.
        if live.table_exists("_t_old").await && !live.table_exists("_t_new").await {
            let mut c = live.conn().await;
            let left: Option<u64> = c
                .query_first("SELECT COUNT(*) FROM _wraith_checkpoint")
                .await
                .unwrap_or(Some(0));
            if left.unwrap_or(0) == 0 {
                break;
            }
        }
    }
    if let Some(run) = &finished {
        assert_eq!(run.code, 0, "{}", run.output());
    } else if live.table_exists("_t_new").await || !live.table_exists("_t_old").await {
        panic!("no finished run after {kills} kills");
    }
    // Writes after the cut-over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop().await;
    assert!(kills >= 1, "no kill landed");
    assert_follows_mirror(&live, &mirror).await;
}

#[tokio::test]
async fn triggers_that_cannot_follow_are_refused() {
    let s = Schema::new("trg_refuse").await;
    s.exec(TABLES).await;
    s.exec("INSERT INTO t (id, a, b) VALUES (1, 1, 'x'), (2, 2, 'y')")
        .await;
    for trigger in TRIGGERS {
        s.exec(trigger).await;
    }
    let refused = |cfg: String, needles: &'static [&'static str]| {
        let s = &s;
        async move {
            let before = rows(s).await;
            let run = wraith_with_config(&["check"], &cfg).await;
            assert_eq!(run.code, 3, "expected a refusal:\n{}", run.output());
            for n in needles {
                assert!(
                    run.stderr.contains(n),
                    "missing {n:?} in:\n{}",
                    run.output()
                );
            }
            assert!(run.stderr.contains("fix:"), "{}", run.output());
            assert_eq!(rows(s).await, before);
            for made in ["_t_new", "_t_old", "_t_chk"] {
                assert!(!s.table_exists(made).await, "{made} was created");
            }
            assert_eq!(triggers_of(s).await.len(), 4);
        }
    };
    // NEW.b / OLD.b of a column the ALTER drops.
    refused(
        s.config("t", "DROP COLUMN b", ""),
        &["trigger t_ai", "uses NEW.b or OLD.b", "drops column b"],
    )
    .await;
    // ... or renames (with backquotes in the ALTER, any case in the body).
    refused(
        s.config("t", "CHANGE COLUMN `a` `a2` INT NOT NULL DEFAULT 0", ""),
        &["trigger t_au", "renames column a"],
    )
    .await;
    // The revert window would move triggers the wrong way.
    refused(
        s.config(
            "t",
            "ADD COLUMN c INT",
            "[cutover]\nrevert_window = \"1h\"\n",
        ),
        &["not yet supported with triggers"],
    )
    .await;
    // The plan says what happens to each trigger.
    let run = wraith_with_config(&["check"], &s.config("t", "ADD COLUMN c INT", "")).await;
    assert_eq!(run.code, 0, "{}", run.output());
    let out = run.output();
    for line in [
        "t_bi",
        "(BEFORE INSERT): created on the new table as t_bi_wraith at the cut-over; the old table's is dropped",
        "(AFTER DELETE): created on the new table as t_ad_wraith",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}
