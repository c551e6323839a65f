//! One change stream feeding two states, against a real scratch MariaDB:
//! each shadow table equals its source after a drain, a third table written
//! in the same transactions lands nowhere, the cut-over's RENAME ends the
//! consumer quietly, and a DDL on one table fails every state.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool};
use tokio::task::JoinHandle;
use wraith_backend::TargetTable;

use super::*;
use crate::applier::Applier;
use crate::binlog::{current_position, ChangeStream, ChangeStreamConfig};
use crate::changes::ChangeBuffer;
use crate::server::inspect::inspect_table;
use crate::testkit::scratch::{ScratchOptions, ScratchServer};

static SERVER: OnceLock<ScratchServer> = OnceLock::new();

fn opts(db: Option<&str>) -> Opts {
    SERVER
        .get_or_init(|| ScratchServer::start(ScratchOptions::default()).expect("scratch server"))
        .opts(db)
        .into()
}

async fn conn(db: Option<&str>) -> Conn {
    Conn::new(opts(db)).await.expect("connect")
}

const TABLES: [&str; 2] = ["a", "b"];

/// Schema `db` with `a` and `b` (followed, each with a shadow copied from
/// it) and `c` (not followed); one stream for `a` and `b` feeding a state
/// each. Returns a connection in `db`, the states, and the tasks (the
/// consumer first).
async fn setup(db: &str) -> (Conn, Vec<Arc<OnlineState>>, Vec<JoinHandle<()>>) {
    conn(None)
        .await
        .query_drop(format!(
            "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`"
        ))
        .await
        .expect("schema");
    let mut c = conn(Some(db)).await;
    let rows = |f: &dyn Fn(u32) -> String| (1..=40).map(f).collect::<Vec<_>>().join(", ");
    c.query_drop(format!(
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(20), n BIGINT); \
         CREATE TABLE b (id INT PRIMARY KEY, d DATE, w VARCHAR(20)); \
         CREATE TABLE c (id INT PRIMARY KEY, v VARCHAR(20), n BIGINT); \
         INSERT INTO a VALUES {}; INSERT INTO b VALUES {}; INSERT INTO c VALUES {}; \
         CREATE TABLE _a_new LIKE a; INSERT INTO _a_new SELECT * FROM a; \
         CREATE TABLE _b_new LIKE b; INSERT INTO _b_new SELECT * FROM b",
        rows(&|i| format!("({i}, 'a{i}', {i})")),
        rows(&|i| format!("({i}, '2024-01-{:02}', 'b{i}')", i % 28 + 1)),
        rows(&|i| format!("({i}, 'c{i}', {i})")),
    ))
    .await
    .expect("tables");
    ensure_changelog(&mut c, db).await.expect("changelog");
    let flavor = crate::server::flavor(&mut c).await.expect("flavor");
    let from = current_position(&mut c, flavor).await.expect("position");
    let mut infos = Vec::new();
    for t in TABLES {
        infos.push(inspect_table(&mut c, db, t).await.expect("inspect"));
    }
    let mut cfg =
        ChangeStreamConfig::for_tables(&infos.iter().collect::<Vec<_>>()).expect("config");
    cfg.token_table = Some((db.to_string(), CHANGELOG_TABLE.to_string()));
    cfg.heartbeat = Duration::from_millis(200);
    let stream = ChangeStream::start(opts(None), flavor, from.clone(), cfg)
        .await
        .expect("stream");
    let pool = Pool::new(opts(Some(db)));
    let states: Vec<Arc<OnlineState>> = infos
        .iter()
        .map(|info| {
            let columns: Vec<_> = info
                .columns
                .iter()
                .map(|c| c.spec(&c.name).expect("carried"))
                .collect();
            let mapping = RowMapping {
                source_positions: (0..columns.len()).collect(),
                key_positions: vec![0],
            };
            let target = TargetTable {
                schema: db.to_string(),
                table: format!("_{}_new", info.name),
                columns,
                key_columns: vec![0],
                transient_unique_indexes: Vec::new(),
            };
            let applier = Applier::new(pool.clone(), target, 2);
            let state = OnlineState::new(
                ChangeBuffer::new(),
                mapping,
                applier,
                false,
                pool.clone(),
                db,
                &info.name,
            );
            state.set_position(from.clone()).expect("position");
            state.marks().expect("marks").copy_done();
            state
        })
        .collect();
    let tasks = spawn_shared(states.clone(), stream);
    assert_eq!(tasks.len(), 3, "the consumer and one apply loop per state");
    (c, states, tasks)
}

async fn rows(c: &mut Conn, table: &str) -> Vec<Vec<mysql_async::Value>> {
    let rows: Vec<mysql_async::Row> = c
        .query(format!("SELECT * FROM `{table}` ORDER BY id"))
        .await
        .expect("select");
    rows.into_iter().map(|r| r.unwrap()).collect()
}

/// Drains both states at once (their tokens pass through the one stream
/// together) and checks every shadow against its source.
async fn drain_and_compare(c: &mut Conn, states: &[Arc<OnlineState>]) {
    let t = Duration::from_secs(30);
    let (ra, rb) = tokio::join!(states[0].drain(t, "test"), states[1].drain(t, "test"));
    ra.expect("drain a");
    rb.expect("drain b");
    for t in TABLES {
        let (source, shadow) = (rows(c, t).await, rows(c, &format!("_{t}_new")).await);
        assert!(!source.is_empty());
        assert_eq!(source, shadow, "{t} and its shadow differ");
    }
}

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Transactions touching all three tables: inserts, updates, key changes,
/// deletes; one in six rolled back.
async fn write(c: &mut Conn, rng: &mut Lcg, next_id: &mut u64, transactions: usize) {
    for _ in 0..transactions {
        let mut sql = vec!["BEGIN".to_string()];
        for _ in 0..1 + rng.below(5) {
            let table = ["a", "b", "c"][rng.below(3) as usize];
            let k = 1 + rng.below(*next_id);
            let v = rng.below(1_000_000);
            let op = rng.below(5);
            // New ids only where one is used, so that most keys hit a row.
            if op == 0 || op == 2 {
                *next_id += 1;
            }
            let id = *next_id;
            sql.push(match (table, op) {
                ("b", 0) => format!(
                    "INSERT INTO b VALUES ({id}, '2023-12-{:02}', 'n{v}')",
                    v % 28 + 1
                ),
                ("b", 1) => format!("UPDATE b SET w = 'u{v}', d = NULL WHERE id = {k}"),
                ("b", 2) => format!("UPDATE b SET id = {id} WHERE id = {k}"),
                ("b", 3) => format!("DELETE FROM b WHERE id = {k}"),
                ("b", _) => {
                    format!("UPDATE b SET w = CONCAT(w, 'x') WHERE id BETWEEN {k} AND {k} + 3")
                }
                (t, 0) => format!("INSERT INTO {t} VALUES ({id}, 'n{v}', {v})"),
                (t, 1) => format!("UPDATE {t} SET v = 'u{v}', n = -{v} WHERE id = {k}"),
                (t, 2) => format!("UPDATE {t} SET id = {id} WHERE id = {k}"),
                (t, 3) => format!("DELETE FROM {t} WHERE id = {k}"),
                (t, _) => format!("UPDATE {t} SET n = n + 1 WHERE id BETWEEN {k} AND {k} + 3"),
            });
        }
        sql.push(
            if rng.below(6) == 0 {
                "ROLLBACK"
            } else {
                "COMMIT"
            }
            .to_string(),
        );
        c.query_drop(sql.join("; ")).await.expect("transaction");
    }
}

async fn finished(task: &mut JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the consumer did not end")
        .expect("the consumer panicked");
}

#[tokio::test]
async fn one_stream_feeds_a_state_per_table() {
    let (mut c, states, mut tasks) = setup("online_shared").await;
    let mut rng = Lcg(7);
    let mut next_id = 40;
    write(&mut c, &mut rng, &mut next_id, 150).await;
    drain_and_compare(&mut c, &states).await;
    write(&mut c, &mut rng, &mut next_id, 150).await;
    drain_and_compare(&mut c, &states).await;
    for s in &states {
        assert!(s.error().is_none());
        let events = s.events.load(Ordering::Relaxed);
        assert!(events > 100, "{s:?} got {events} changes");
        assert!(s.applied_total.load(Ordering::Relaxed) > 0);
    }
    // Every state saw every commit: the same position.
    assert_eq!(states[0].position(), states[1].position());

    // The cut-over: both drained under "the lock", then one RENAME of both.
    let pool = Pool::new(opts(Some("online_shared")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let here = states[0].position().expect("position");
    for s in &states {
        let mut drain = OnlineDrain {
            state: s.clone(),
            timeout: Duration::from_secs(30),
            verifier: None,
            target_pool: pool.clone(),
        };
        drain
            .drain_to(here.clone(), None, deadline)
            .await
            .expect("drain_to");
    }
    c.query_drop(
        "RENAME TABLE `online_shared`.`a` TO `online_shared`.`_a_old`, \
         `online_shared`.`_a_new` TO `online_shared`.`a`, \
         `online_shared`.`b` TO `online_shared`.`_b_old`, \
         `online_shared`.`_b_new` TO `online_shared`.`b`",
    )
    .await
    .expect("rename");
    finished(&mut tasks[0]).await;
    for s in &states {
        assert!(s.error().is_none(), "{:?}", s.error());
        s.stop();
    }
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn ddl_on_one_followed_table_fails_every_state() {
    let (mut c, states, mut tasks) = setup("online_shared_ddl").await;
    let mut rng = Lcg(11);
    let mut next_id = 40;
    write(&mut c, &mut rng, &mut next_id, 20).await;
    drain_and_compare(&mut c, &states).await;
    c.query_drop("ALTER TABLE c ADD COLUMN z INT; ALTER TABLE b ADD COLUMN x INT")
        .await
        .expect("alter");
    finished(&mut tasks[0]).await;
    for s in &states {
        let e = s.error().expect("every state failed");
        assert!(e.to_string().contains("online_shared_ddl.b"), "{e}");
        assert!(!e.resumable(), "{e}");
        s.stop();
    }
    for t in tasks {
        t.abort();
    }
}
