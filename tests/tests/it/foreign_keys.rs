//! Foreign keys: a child rebuilt under a load that writes children and
//! parents (its constraint moves with it and points at the parent), a
//! parent rebuilt under load with `children = "rebuild"` (its children's
//! constraints follow it), a parent refused by default with its children and
//! the cost named, and a cascading child constraint refused with the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};
use rand::{Rng, SeedableRng};
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};
use wraith_tests::{wraith_with_config, PostponeFlag, Schema, WraithChild};

const PARENT_CHILD: &str = "CREATE TABLE p (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL); \
    CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, pid INT, v INT NOT NULL, \
      CONSTRAINT fk_t_p FOREIGN KEY (pid) REFERENCES p (id) ON DELETE RESTRICT ON UPDATE NO ACTION); \
    CREATE TABLE t_mirror (id INT PRIMARY KEY, pid INT, v INT NOT NULL); \
    INSERT INTO p SELECT seq, CONCAT('p', seq) FROM seq_1_to_200; \
    INSERT INTO t (pid, v) SELECT 1 + seq % 200, seq FROM seq_1_to_20000; \
    INSERT INTO t_mirror SELECT id, pid, v FROM t";

/// Every constraint of `table` in the schema: (name, referenced table).
async fn constraints(s: &Schema, table: &str) -> Vec<(String, String)> {
    let mut c = s.conn().await;
    c.exec(
        "SELECT CONSTRAINT_NAME, REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? ORDER BY CONSTRAINT_NAME",
        (&s.name, table),
    )
    .await
    .expect("constraints")
}

type ChildRow = (i64, Option<i64>, i64, String);

async fn rows_of(s: &Schema, sql: &str) -> Vec<ChildRow> {
    let mut c = s.conn().await;
    c.query(sql).await.expect("rows")
}

/// Children rows whose parent is missing.
async fn orphans(s: &Schema) -> u64 {
    let mut c = s.conn().await;
    c.query_first(
        "SELECT COUNT(*) FROM t WHERE pid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM p WHERE p.id = t.pid)",
    )
    .await
    .expect("orphans")
    .unwrap_or(0)
}

/// A load on the child and its parent: inserts parents; inserts, updates
/// (re-pointing at another parent too) and deletes children; tries to
/// delete parents (RESTRICT refuses those with children). Each write to
/// `t` is repeated on `t_mirror` in the same transaction. Returns the
/// committed transactions.
fn start_load(pool: Pool, seed: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut conn = pool.get_conn().await.expect("load conn");
        let mut committed = 0u64;
        let mut next_parent = 1_000_000 + (seed as i64 % 1000) * 10_000;
        while !stop.load(Ordering::Relaxed) {
            let op = rng.random_range(0..6);
            let mut tx = conn
                .start_transaction(TxOpts::default())
                .await
                .expect("begin");
            let r: Result<(), mysql_async::Error> = async {
                match op {
                    0 => {
                        next_parent += 1;
                        tx.exec_drop(
                            "INSERT INTO p VALUES (?, 'new')",
                            (next_parent,),
                        )
                        .await?;
                        // A child of the parent just made.
                        tx.exec_drop("INSERT INTO t (pid, v) VALUES (?, 0)", (next_parent,))
                            .await?;
                        tx.query_drop("INSERT INTO t_mirror SELECT id, pid, v FROM t WHERE id = LAST_INSERT_ID()")
                            .await?;
                    }
                    1 => {
                        let pid: i64 = rng.random_range(1..=200);
                        tx.exec_drop("INSERT INTO t (pid, v) VALUES (?, ?)", (pid, rng.random_range(0..1000)))
                            .await?;
                        tx.query_drop("INSERT INTO t_mirror SELECT id, pid, v FROM t WHERE id = LAST_INSERT_ID()")
                            .await?;
                    }
                    2 => {
                        let id: i64 = rng.random_range(1..=20_000);
                        let v: i64 = rng.random_range(0..1000);
                        tx.exec_drop("UPDATE t SET v = ? WHERE id = ?", (v, id)).await?;
                        tx.exec_drop("UPDATE t_mirror SET v = ? WHERE id = ?", (v, id)).await?;
                    }
                    3 => {
                        let id: i64 = rng.random_range(1..=20_000);
                        let pid: i64 = rng.random_range(1..=200);
                        tx.exec_drop("UPDATE t SET pid = ? WHERE id = ?", (pid, id)).await?;
                        tx.exec_drop("UPDATE t_mirror SET pid = ? WHERE id = ?", (pid, id)).await?;
                    }
                    4 => {
                        let id: i64 = rng.random_range(1..=20_000);
                        tx.exec_drop("DELETE FROM t WHERE id = ?", (id,)).await?;
                        tx.exec_drop("DELETE FROM t_mirror WHERE id = ?", (id,)).await?;
                    }
                    _ => {
                        // Refused (RESTRICT) while the parent has children.
                        let pid: i64 = rng.random_range(1..=200);
                        tx.exec_drop("DELETE FROM p WHERE id = ?", (pid,)).await?;
                    }
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => {
                    tx.commit().await.expect("commit");
                    committed += 1;
                }
                Err(_) => {
                    let _ = tx.rollback().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        committed
    })
}

fn child_config(s: &Schema, alter: &str) -> String {
    s.config(
        "t",
        alter,
        "[copy]\nbackend = \"sql\"\nthreads = 2\ninitial_chunk_rows = 500\n\n\
         [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n",
    )
}

/// The usual way to delete under RESTRICT (the children, then their parent,
/// in one transaction) works while a child table is rebuilt: the shadow
/// carries no constraint before the cut-over's lock, so a child row it has
/// not yet lost cannot refuse the parent's delete.
#[tokio::test]
async fn a_parent_deleted_after_its_children_during_the_run() {
    let _shared = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("fk_child_parent_delete").await;
    s.exec(PARENT_CHILD).await;
    let flag = PostponeFlag::new();
    let cfg = s.config(
        "t",
        "ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'n'",
        &format!(
            "[copy]\nbackend = \"sql\"\nthreads = 2\ninitial_chunk_rows = 500\n\n\
             [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n{}\n",
            flag.setting()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    // Copied, checksummed and waiting: the shadow equals the source.
    child
        .wait_for("cut-over postponed", Duration::from_secs(180))
        .await;
    let mut conn = s.conn().await;
    for parent in 1..=20i64 {
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .expect("begin");
        tx.exec_drop("DELETE FROM t WHERE pid = ?", (parent,))
            .await
            .expect("delete the children");
        tx.exec_drop("DELETE FROM p WHERE id = ?", (parent,))
            .await
            .unwrap_or_else(|e| panic!("deleting parent {parent} after its children: {e}"));
        tx.commit().await.expect("commit");
    }
    drop(conn);
    drop(flag);
    let run = child.finish(Duration::from_secs(180)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    let gone: Option<(u64, u64)> = s
        .conn()
        .await
        .query_first(
            "SELECT (SELECT COUNT(*) FROM t WHERE pid <= 20), (SELECT COUNT(*) FROM p WHERE id <= 20)",
        )
        .await
        .expect("counts");
    assert_eq!(gone, Some((0, 0)), "the deleted children and parents");
    let left: Option<u64> = s
        .conn()
        .await
        .query_first("SELECT COUNT(*) FROM t")
        .await
        .expect("rows");
    assert_eq!(left, Some(20000 - 20 * 100), "the other children stay");
    assert_eq!(
        constraints(&s, "t").await,
        vec![("fk_t_p".to_string(), "p".to_string())]
    );
    assert_eq!(orphans(&s).await, 0);
}

#[tokio::test]
async fn child_rebuilt_under_load_keeps_its_constraint_on_the_parent() {
    let _shared = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("fk_child").await;
    s.exec(PARENT_CHILD).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..3)
        .map(|k| start_load(s.pool.clone(), 11 + k, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let cfg = child_config(&s, "ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'n'");
    let run = WraithChild::spawn(&["run", "--json"], &cfg)
        .finish(Duration::from_secs(240))
        .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for l in loads {
        committed += l.await.expect("load");
    }
    assert_eq!(run.code, 0, "{}", run.output());
    eprintln!("fk child: run {took:?}, {committed} transactions");
    assert!(committed > 100, "load committed {committed}");

    // Content: what the load wrote, row by row.
    let live = rows_of(&s, "SELECT id, pid, v, note FROM t ORDER BY id").await;
    let mirror = rows_of(&s, "SELECT id, pid, v, 'n' FROM t_mirror ORDER BY id").await;
    assert_eq!(live.len(), mirror.len());
    assert!(live == mirror, "t differs from what the load wrote");

    // The constraint moved with the table (under its alternate name, given
    // back after the swap) and references p; the old table keeps none.
    assert_eq!(
        constraints(&s, "t").await,
        vec![("fk_t_p".to_string(), "p".to_string())]
    );
    assert!(constraints(&s, "_t_old").await.is_empty());
    assert!(constraints(&s, "_t_new").await.is_empty());
    assert_eq!(orphans(&s).await, 0);
    // The index the server made for the constraint kept its name.
    let (_, indexes) = s.definition("t").await;
    assert!(
        indexes.iter().any(|i| i.starts_with("fk_t_p ")),
        "index of the constraint: {indexes:?}"
    );

    // The report says what was checked.
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    let fk = &report["tables"][0]["foreign_keys"];
    assert_eq!(fk["orphans"], 0, "{report}");
    assert_eq!(
        fk["dropped_from_old"],
        serde_json::json!(["fk_t_p"]),
        "{report}"
    );
    assert_eq!(
        fk["names_restored"],
        serde_json::json!(["fk_t_p"]),
        "{report}"
    );
    assert!(
        report["tables"][0]["foreign_keys_problem"].is_null(),
        "{report}"
    );

    // The constraint works on the live table: a missing parent is refused,
    // a parent with children cannot go.
    let mut c = s.conn().await;
    assert!(c
        .query_drop("INSERT INTO t (pid, v) VALUES (99999999, 1)")
        .await
        .is_err());
    assert!(c.query_drop("DELETE FROM p WHERE id = 1").await.is_err());

    // A second run ends with the same name.
    s.exec("DROP TABLE _t_old").await;
    let run = wraith_with_config(&["run"], &child_config(&s, "FORCE")).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(
        constraints(&s, "t").await,
        vec![("fk_t_p".to_string(), "p".to_string())]
    );
}

#[tokio::test]
async fn parent_is_refused_naming_its_children_and_the_cost() {
    let s = Schema::new("fk_parent_refused").await;
    s.exec(PARENT_CHILD).await;
    s.exec("CREATE TABLE c2 (id INT PRIMARY KEY, pid INT, CONSTRAINT fk_c2 FOREIGN KEY (pid) REFERENCES p (id))")
        .await;
    let before = s.snapshot("p").await;
    let run = wraith_with_config(&["check"], &s.config("p", "FORCE", "")).await;
    assert_eq!(run.code, 3, "{}", run.output());
    for needle in [
        "is referenced by other tables' foreign keys",
        "fk_t_p (pid) -> p (id)",
        "fk_c2 (pid) -> p (id)",
        "rows",
        "ms per child",
        "children = \"rebuild\"",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            run.output()
        );
    }
    assert_eq!(before, s.snapshot("p").await);
    assert!(!s.table_exists("_p_new").await);
    assert!(!s.table_exists("_wraith_fk_probe_p").await);
    assert!(!s.table_exists("_wraith_fk_probe_c").await);
}

#[tokio::test]
async fn cascading_child_is_refused_with_the_reason() {
    let s = Schema::new("fk_cascade").await;
    s.exec(
        "CREATE TABLE p (id INT PRIMARY KEY); \
            CREATE TABLE t (id INT PRIMARY KEY, pid INT, \
              CONSTRAINT fk_casc FOREIGN KEY (pid) REFERENCES p (id) ON DELETE CASCADE)",
    )
    .await;
    let run = wraith_with_config(&["check"], &s.config("t", "FORCE", "")).await;
    assert_eq!(run.code, 3, "{}", run.output());
    for needle in [
        "fk_casc",
        "ON DELETE CASCADE",
        "does not write those changes to the binlog",
        "ON DELETE RESTRICT",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            run.output()
        );
    }
    assert!(!s.table_exists("_t_new").await);

    // An ALTER that adds a constraint is refused too: it would not be validated.
    let s = Schema::new("fk_alter").await;
    s.exec("CREATE TABLE p (id INT PRIMARY KEY); CREATE TABLE t (id INT PRIMARY KEY, pid INT)")
        .await;
    let cfg = s.config(
        "t",
        "ADD CONSTRAINT f FOREIGN KEY (pid) REFERENCES p (id)",
        "",
    );
    let run = wraith_with_config(&["check"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(
        run.stderr.contains("adds or drops a foreign key"),
        "{}",
        run.output()
    );
}

const PARENT_CHILDREN: &str = "CREATE TABLE p (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL); \
    CREATE TABLE p_mirror (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL); \
    CREATE TABLE c1 (id INT PRIMARY KEY AUTO_INCREMENT, pid INT NOT NULL, \
      CONSTRAINT fk_c1 FOREIGN KEY (pid) REFERENCES p (id)); \
    CREATE TABLE c2 (id INT PRIMARY KEY AUTO_INCREMENT, pid INT, \
      CONSTRAINT fk_c2 FOREIGN KEY (pid) REFERENCES p (id) ON DELETE CASCADE); \
    INSERT INTO p SELECT seq, CONCAT('p', seq) FROM seq_1_to_5000; \
    INSERT INTO p_mirror SELECT * FROM p; \
    INSERT INTO c1 (pid) SELECT 1 + seq % 2500 FROM seq_1_to_5000; \
    INSERT INTO c2 (pid) SELECT 1 + seq % 5000 FROM seq_1_to_5000";

/// A load on the parent and its children: inserts parents (with a child of
/// each), renames parents, inserts children of random parents, deletes
/// parents (refused while c1 references them; c2's rows cascade). Each
/// write to `p` is repeated on `p_mirror` in the same transaction.
fn start_parent_load(pool: Pool, seed: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut conn = pool.get_conn().await.expect("load conn");
        let mut committed = 0u64;
        let mut next_parent = 1_000_000 + (seed as i64 % 1000) * 10_000;
        while !stop.load(Ordering::Relaxed) {
            let op = rng.random_range(0..5);
            let mut tx = conn
                .start_transaction(TxOpts::default())
                .await
                .expect("begin");
            let r: Result<(), mysql_async::Error> = async {
                match op {
                    0 => {
                        next_parent += 1;
                        tx.exec_drop("INSERT INTO p VALUES (?, 'new')", (next_parent,))
                            .await?;
                        tx.exec_drop("INSERT INTO p_mirror VALUES (?, 'new')", (next_parent,))
                            .await?;
                        tx.exec_drop("INSERT INTO c2 (pid) VALUES (?)", (next_parent,))
                            .await?;
                    }
                    1 => {
                        let id: i64 = rng.random_range(1..=5000);
                        let name = format!("r{}", rng.random_range(0..1000));
                        tx.exec_drop("UPDATE p SET name = ? WHERE id = ?", (&name, id))
                            .await?;
                        tx.exec_drop("UPDATE p_mirror SET name = ? WHERE id = ?", (&name, id))
                            .await?;
                    }
                    2 => {
                        let pid: i64 = rng.random_range(1..=5000);
                        tx.exec_drop("INSERT INTO c1 (pid) VALUES (?)", (pid,))
                            .await?;
                    }
                    _ => {
                        // Parents above 2500 have no c1 child: deleted, c2's cascade.
                        let id: i64 = rng.random_range(1..=5000);
                        tx.exec_drop("DELETE FROM p WHERE id = ?", (id,)).await?;
                        tx.exec_drop("DELETE FROM p_mirror WHERE id = ?", (id,))
                            .await?;
                    }
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => {
                    tx.commit().await.expect("commit");
                    committed += 1;
                }
                Err(_) => {
                    let _ = tx.rollback().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        committed
    })
}

#[tokio::test]
async fn parent_rebuilt_under_load_takes_its_children_along() {
    let _shared = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("fk_parent").await;
    s.exec(PARENT_CHILDREN).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..3)
        .map(|k| start_parent_load(s.pool.clone(), 21 + k, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cfg = s.config(
        "p",
        "ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'n'",
        "[copy]\nbackend = \"sql\"\nthreads = 2\ninitial_chunk_rows = 500\n\n\
         [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n\n[foreign_keys]\nchildren = \"rebuild\"\n",
    );
    let started = std::time::Instant::now();
    let run = WraithChild::spawn(&["run", "--json"], &cfg)
        .finish(Duration::from_secs(240))
        .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for l in loads {
        committed += l.await.expect("load");
    }
    assert_eq!(run.code, 0, "{}", run.output());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    eprintln!(
        "fk parent: run {took:?}, {committed} transactions, cut-over {}",
        report["tables"][0]["cutover"]
    );
    assert!(committed > 100, "load committed {committed}");

    // Content: what the load wrote.
    let mut c = s.conn().await;
    let live: Vec<(i64, String, String)> = c
        .query("SELECT id, name, note FROM p ORDER BY id")
        .await
        .expect("p");
    let mirror: Vec<(i64, String, String)> = c
        .query("SELECT id, name, 'n' FROM p_mirror ORDER BY id")
        .await
        .expect("mirror");
    assert_eq!(live.len(), mirror.len());
    assert!(live == mirror, "p differs from what the load wrote");

    // Every child constraint references the live p; nothing references the old one.
    assert_eq!(
        constraints(&s, "c1").await,
        vec![("fk_c1".to_string(), "p".to_string())]
    );
    assert_eq!(
        constraints(&s, "c2").await,
        vec![("fk_c2".to_string(), "p".to_string())]
    );
    let to_old: Option<u64> = c
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME IN ('_p_old', '_p_new')",
            (&s.name,),
        )
        .await
        .expect("constraints to old");
    assert_eq!(to_old, Some(0));
    for child in ["c1", "c2"] {
        let n: Option<u64> = c
            .query_first(format!(
                "SELECT COUNT(*) FROM {child} WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.id = {child}.pid)"
            ))
            .await
            .expect("orphans");
        assert_eq!(n, Some(0), "orphans in {child}");
    }
    let fk = &report["tables"][0]["foreign_keys"];
    assert_eq!(fk["orphans"], 0, "{report}");
    assert_eq!(fk["children"].as_array().map(Vec::len), Some(2), "{report}");

    // The constraints work against the new p: a child of a parent inserted
    // during the run is accepted, a missing parent refused, a delete cascades.
    let newest: Option<i64> = c
        .query_first("SELECT MAX(id) FROM p WHERE id >= 1000000")
        .await
        .expect("newest parent");
    let newest = newest.expect("the load inserted parents");
    c.exec_drop("INSERT INTO c1 (pid) VALUES (?)", (newest,))
        .await
        .expect("child of a parent inserted during the run");
    assert!(c
        .query_drop("INSERT INTO c1 (pid) VALUES (99999999)")
        .await
        .is_err());
    c.query_drop("INSERT INTO p VALUES (77777777, 'x', 'n'); INSERT INTO c2 (pid) VALUES (77777777); DELETE FROM p WHERE id = 77777777")
        .await
        .expect("delete with cascade");
    let left: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM c2 WHERE pid = 77777777")
        .await
        .expect("cascaded");
    assert_eq!(left, Some(0), "the delete cascaded into c2");
}

/// A long transaction that has read a *child* of the parent being rebuilt:
/// the cut-over's lock takes the children too, so that session would stall
/// it exactly as one holding the parent would. The cut-over must see it,
/// wait without asking for the lock, and go on once it ends; the
/// application's writes to the parent and the child never wait behind it.
#[tokio::test]
async fn a_long_transaction_on_a_child_does_not_stall_the_parents_cut_over() {
    let _alone = crate::LATENCY_JUDGED.write().await;
    // The plugin names exactly who holds which table: without it every
    // open transaction counts, and the child would be found by accident.
    let server = ScratchServer::start(ScratchOptions {
        buffer_pool: "128M".into(),
        extra_args: vec!["--plugin-load-add=metadata_lock_info".into()],
        ..ScratchOptions::default()
    })
    .expect("start a server with metadata_lock_info");
    let s = Schema::on(&server, "fk_child_blocker").await;
    s.exec(PARENT_CHILDREN).await;
    let flag = PostponeFlag::new();
    let cfg = s.config(
        "p",
        "ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'n'",
        &format!(
            "[copy]\nbackend = \"sql\"\nthreads = 2\n\n\
             [cutover]\nlock_wait_timeout = \"1s\"\nlock_attempt_timeout = \"100ms\"\n\
             lock_hold_budget = \"500ms\"\nretries = 10\n{}\n\n\
             [foreign_keys]\nchildren = \"rebuild\"\n",
            flag.setting()
        ),
    );
    let mut child = WraithChild::spawn(&["run", "--json"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;

    // The application: each transaction renames a parent (and its mirror)
    // and adds a child; its slowest one is what the cut-over cost it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (pool, stop) = (s.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = pool.get_conn().await.expect("load conn");
            let (mut worst, mut committed, mut k) = (Duration::ZERO, 0u64, 0i64);
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let (id, name) = (1 + (k * 7919) % 5000, format!("w{k}"));
                let began = std::time::Instant::now();
                let mut tx = conn
                    .start_transaction(TxOpts::default())
                    .await
                    .expect("begin");
                tx.exec_drop("UPDATE p SET name = ? WHERE id = ?", (&name, id))
                    .await
                    .expect("update p");
                tx.exec_drop("UPDATE p_mirror SET name = ? WHERE id = ?", (&name, id))
                    .await
                    .expect("update p_mirror");
                tx.exec_drop("INSERT INTO c1 (pid) VALUES (?)", (id,))
                    .await
                    .expect("insert c1");
                tx.commit().await.expect("commit");
                worst = worst.max(began.elapsed());
                committed += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (worst, committed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A report that read the child and keeps its transaction open.
    let mut reader = s.conn().await;
    reader.query_drop("START TRANSACTION").await.expect("begin");
    let _: Option<u64> = reader
        .query_first("SELECT COUNT(*) FROM c1")
        .await
        .expect("read c1");
    let reader_id = u64::from(reader.id());
    // Older than the blockers' minimum age (0.5 s) by the time the cut-over
    // looks: a younger transaction is let end by itself (one bounded request).
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(flag);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !s.definition("p").await.0.iter().any(|c| c.contains("note")),
        "cut over while a session held the child"
    );
    reader.query_drop("COMMIT").await.expect("commit");
    let run = child.finish(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (worst, committed) = load.await.expect("load");
    assert_eq!(run.code, 0, "{}", run.output());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
    let cut = &report["tables"][0]["cutover"];
    eprintln!(
        "fk child blocker: worst write {worst:?} over {committed} transactions; cut-over {cut}"
    );
    assert!(committed > 100, "the load barely ran: {committed}");
    assert!(
        cut["blockers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["id"].as_u64() == Some(reader_id))),
        "the session holding the child was not seen as a blocker: {cut}"
    );
    // Held 3 s after the cut-over was let go (less the flag's poll and the
    // drain on a busy machine).
    assert!(
        cut["blocker_wait_ms"].as_f64().unwrap_or(0.0) >= 1500.0,
        "{cut}"
    );
    assert!(
        worst < Duration::from_millis(1000),
        "a write waited {worst:?}: the cut-over stalled the application: {cut}"
    );
    // And the change itself: constraints on the live p, content exact.
    assert_eq!(
        constraints(&s, "c1").await,
        vec![("fk_c1".to_string(), "p".to_string())]
    );
    let mut c = s.conn().await;
    let differing: Option<u64> = c
        .query_first(
            "SELECT COUNT(*) FROM p LEFT JOIN p_mirror m USING (id) \
             WHERE m.id IS NULL OR m.name <> p.name OR p.note <> 'n'",
        )
        .await
        .expect("compare");
    assert_eq!(differing, Some(0), "p differs from its mirror");
}
