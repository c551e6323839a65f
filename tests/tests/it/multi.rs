//! Several tables in one job (issue 15): a config with three `[[table]]`
//! entries is one run with one atomic cut-over (`[cutover] together`, the
//! default with more than one table). Checked from the outside: the binlog
//! holds one `RENAME TABLE` naming every table, a join running through the
//! cut-over never sees one table new and another old, a run killed anywhere
//! leaves all tables swapped or none, and `status-json` shows each table.
//!
//! The three tables have different keys (an auto-increment id, a two-column
//! key, a string key) and each ALTER adds `tenant_id` and changes something
//! else (a type, an index). Every table has a mirror (`m_<name>`) created
//! with the same ALTER applied by the server itself; the load writes every
//! statement to the table and to its mirror in the same transaction, and
//! never names `tenant_id`, so after the run each table must equal its
//! mirror exactly, definition and rows, `tenant_id` at its default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wraith_tests::{Schema, WraithChild};

/// One table of the job.
struct Table {
    name: &'static str,
    definition: &'static str,
    /// The columns the load and the fill write (never `tenant_id`).
    columns: &'static str,
    alter: &'static str,
}

const TABLES: [Table; 3] = [
    Table {
        name: "orders",
        definition: "id INT UNSIGNED NOT NULL AUTO_INCREMENT, customer INT UNSIGNED NOT NULL, \
                     amount DECIMAL(10,2) NOT NULL DEFAULT 0, status VARCHAR(16) NOT NULL DEFAULT 'new', \
                     PRIMARY KEY (id), KEY customer (customer)",
        columns: "id, customer, amount, status",
        alter: "ADD COLUMN tenant_id INT UNSIGNED NOT NULL DEFAULT 7, MODIFY amount DECIMAL(14,2) NOT NULL DEFAULT 0",
    },
    Table {
        name: "items",
        definition: "order_id INT UNSIGNED NOT NULL, line SMALLINT UNSIGNED NOT NULL, \
                     sku VARCHAR(32) NOT NULL, qty INT NOT NULL, price DECIMAL(8,2) NOT NULL, \
                     PRIMARY KEY (order_id, line)",
        columns: "order_id, line, sku, qty, price",
        alter: "ADD COLUMN tenant_id INT UNSIGNED NOT NULL DEFAULT 7, ADD INDEX sku_qty (sku, qty)",
    },
    Table {
        name: "notes",
        definition: "note_key VARCHAR(48) NOT NULL, order_id INT UNSIGNED NOT NULL, \
                     body VARCHAR(200) NOT NULL DEFAULT '', PRIMARY KEY (note_key), KEY order_id (order_id)",
        columns: "note_key, order_id, body",
        alter: "ADD COLUMN tenant_id INT UNSIGNED NOT NULL DEFAULT 7, MODIFY body VARCHAR(400) NOT NULL DEFAULT ''",
    },
];

/// The column every ALTER adds: which version of a table a session sees.
const ADDED: &str = "tenant_id";

/// Creates the three tables with `orders` orders (about 1.7 items and 0.5
/// notes each) and their mirrors.
async fn three_tables(s: &Schema, orders: u64) {
    assert!(orders <= 100_000);
    let defs: Vec<String> = TABLES
        .iter()
        .map(|t| format!("CREATE TABLE {} ({}) ENGINE=InnoDB", t.name, t.definition))
        .collect();
    s.exec(&defs.join("; ")).await;
    // Rows made server-side from a cross join of digits.
    s.exec(&format!(
        "INSERT INTO orders (id, customer, amount, status) \
         WITH d (n) AS (SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
           UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
           UNION ALL SELECT 8 UNION ALL SELECT 9), \
         seq (n) AS (SELECT 1 + a.n + 10 * b.n + 100 * c.n + 1000 * e.n + 10000 * f.n \
           FROM d a, d b, d c, d e, d f) \
         SELECT n, n % 997, (n * 37 % 100000) / 100, ELT(1 + n % 4, 'new', 'paid', 'sent', 'done') \
         FROM seq WHERE n <= {orders}; \
         INSERT INTO items (order_id, line, sku, qty, price) \
           SELECT id, 1, CONCAT('sku-', id % 5000), 1 + id % 5, (id % 9000) / 100 FROM orders; \
         INSERT INTO items (order_id, line, sku, qty, price) \
           SELECT id, 2, CONCAT('sku-', id % 4000), 1 + id % 3, (id % 7000) / 100 FROM orders WHERE id % 3 <> 0; \
         INSERT INTO notes (note_key, order_id, body) \
           SELECT CONCAT('note-', id, '-1'), id, CONCAT('first note of ', id) FROM orders WHERE id % 2 = 0"
    ))
    .await;
    for t in &TABLES {
        s.exec(&format!(
            "CREATE TABLE m_{n} LIKE {n}; ALTER TABLE m_{n} {alter}; \
             INSERT INTO m_{n} ({c}) SELECT {c} FROM {n}; ANALYZE TABLE {n}",
            n = t.name,
            alter = t.alter,
            c = t.columns
        ))
        .await;
    }
}

/// The job's config: the three tables, then `[copy]` with `copy` appended,
/// `[cutover]` with `cutover` appended, a control socket in `dir`.
fn job_config(s: &Schema, dir: &Path, backend: &str, copy: &str, cutover: &str) -> String {
    let mut cfg = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n",
        s.port, s.name
    );
    for t in &TABLES {
        cfg.push_str(&format!(
            "[[table]]\nname = \"{}\"\nalter = {:?}\n\n",
            t.name, t.alter
        ));
    }
    cfg.push_str(&format!(
        "[copy]\nbackend = \"{backend}\"\n{copy}\n\n[local]\nsort_dir = {:?}\nengine_size = \"2MiB\"\n\n\
         [checkpoint]\ninterval = \"200ms\"\n\n\
         [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n{cutover}\n\n[control]\nsocket = {:?}\n",
        dir.join("sort").display().to_string(),
        socket(dir).display().to_string(),
    ));
    cfg
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("ctl.sock")
}

/// What the application's transactions did.
#[derive(Default)]
struct LoadFigures {
    committed: u64,
    rolled_back: u64,
    errors: u64,
    /// The longest a transaction took, as the application saw it.
    worst_ms: f64,
    /// Every transaction's time (ms), for the load's own quantiles.
    took_ms: Vec<f64>,
}

impl std::fmt::Debug for LoadFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "committed {}, rolled back {}, errors {}, worst {:.1} ms, p99 {:.1} ms",
            self.committed,
            self.rolled_back,
            self.errors,
            self.worst_ms,
            self.quantile_ms(0.99)
        )
    }
}

impl LoadFigures {
    /// The `q` quantile of the transactions' times (ms).
    fn quantile_ms(&self, q: f64) -> f64 {
        let mut t = self.took_ms.clone();
        t.sort_by(f64::total_cmp);
        t.get(((t.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// A write load whose every transaction touches all three tables (and their
/// mirrors, statement for statement): new orders with their items and a
/// note, updates, key changes (of all three keys), deletes, rollbacks.
struct MultiLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadFigures>>,
}

impl MultiLoad {
    /// `rate` transactions per second over two connections; orders
    /// `1..=orders` exist at the start.
    fn start(pool: Pool, orders: u64, rate: u32, seed: u64) -> MultiLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicU64::new(orders + 1));
        let tasks = (0..2u64)
            .map(|i| {
                let (pool, stop, next_id) = (pool.clone(), stop.clone(), next_id.clone());
                let interval = Duration::from_secs_f64(2.0 / rate as f64);
                tokio::spawn(async move {
                    load_writer(pool, seed * 31 + i, interval, stop, next_id).await
                })
            })
            .collect();
        MultiLoad { stop, tasks }
    }

    async fn stop(self) -> LoadFigures {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadFigures::default();
        for t in self.tasks {
            let f = t.await.expect("load writer");
            total.committed += f.committed;
            total.rolled_back += f.rolled_back;
            total.errors += f.errors;
            total.worst_ms = total.worst_ms.max(f.worst_ms);
            total.took_ms.extend(f.took_ms);
        }
        total
    }
}

/// The statements of one operation, with `@T@` where the table name gets
/// its prefix (`` for the table, `m_` for its mirror).
fn operation(rng: &mut rand::rngs::StdRng, next_id: &AtomicU64) -> Vec<String> {
    let top = next_id.load(Ordering::Relaxed).max(2);
    let id = rng.random_range(1..top);
    let r: u32 = rng.random();
    match rng.random_range(0..100) {
        // A new order with its items and a note.
        0..=29 => {
            let new = next_id.fetch_add(1, Ordering::Relaxed);
            let mut v = vec![format!(
                "INSERT INTO @T@orders (id, customer, amount, status) VALUES ({new}, {}, {}.{:02}, 'new')",
                r % 997,
                r % 5000,
                r % 100
            )];
            for line in 1..=rng.random_range(1..=3) {
                v.push(format!(
                    "INSERT INTO @T@items (order_id, line, sku, qty, price) VALUES ({new}, {line}, 'sku-{}', {}, {}.{:02})",
                    r % 3000 + line,
                    1 + r % 7,
                    r % 900,
                    line * 7
                ));
            }
            v.push(format!(
                "INSERT INTO @T@notes (note_key, order_id, body) VALUES ('note-{new}-1', {new}, 'new order {r}')"
            ));
            v
        }
        // The order, its items and notes change.
        30..=59 => vec![
            format!("UPDATE @T@orders SET amount = amount + 1.25, status = 's{}' WHERE id = {id}", r % 50),
            format!("UPDATE @T@items SET qty = qty + 1, price = price + 0.01 WHERE order_id = {id}"),
            format!("UPDATE @T@notes SET body = CONCAT('upd-{r} ', LEFT(body, 100)) WHERE order_id = {id}"),
        ],
        // A second note, and an item's sku.
        60..=69 => vec![
            format!("UPDATE @T@orders SET customer = {} WHERE id = {id}", r % 997),
            format!("UPDATE @T@items SET sku = 'sku-r{}' WHERE order_id = {id} AND line = 1", r % 100),
            format!(
                "INSERT INTO @T@notes (note_key, order_id, body) VALUES ('note-{id}-{}', {id}, 'more {r}')",
                2 + r % 1_000_000
            ),
        ],
        // Every key of the order changes: the order's id, its items' key
        // (order_id, line), its notes' string key.
        70..=84 => {
            let new = next_id.fetch_add(1, Ordering::Relaxed);
            vec![
                format!("UPDATE @T@orders SET id = {new} WHERE id = {id}"),
                format!("UPDATE @T@items SET order_id = {new} WHERE order_id = {id}"),
                format!(
                    "UPDATE @T@notes SET note_key = CONCAT('note-{new}-', SUBSTRING_INDEX(note_key, '-', -1)), \
                     order_id = {new} WHERE order_id = {id}"
                ),
            ]
        }
        // The order goes, with its items and notes.
        _ => vec![
            format!("DELETE FROM @T@orders WHERE id = {id}"),
            format!("DELETE FROM @T@items WHERE order_id = {id}"),
            format!("DELETE FROM @T@notes WHERE order_id = {id}"),
        ],
    }
}

async fn load_writer(
    pool: Pool,
    seed: u64,
    interval: Duration,
    stop: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
) -> LoadFigures {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut figures = LoadFigures::default();
    let mut conn = pool.get_conn().await.expect("load connection");
    let mut next_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next_at += interval;
        let now = Instant::now();
        if next_at > now {
            tokio::time::sleep(next_at - now).await;
        } else {
            next_at = now;
        }
        let rollback = rng.random_bool(0.08);
        let mut sql = vec!["START TRANSACTION".to_string()];
        for _ in 0..rng.random_range(1..=3) {
            for stmt in operation(&mut rng, &next_id) {
                sql.push(stmt.replace("@T@", ""));
                sql.push(stmt.replace("@T@", "m_"));
            }
        }
        sql.push(if rollback { "ROLLBACK" } else { "COMMIT" }.to_string());
        let asked = Instant::now();
        let result = conn.query_drop(sql.join("; ")).await;
        let took = asked.elapsed().as_secs_f64() * 1000.0;
        figures.worst_ms = figures.worst_ms.max(took);
        figures.took_ms.push(took);
        match result {
            Ok(()) if rollback => figures.rolled_back += 1,
            Ok(()) => figures.committed += 1,
            Err(e) => {
                // A duplicate note key or a deadlock: the whole transaction
                // goes, on the table and its mirror alike.
                figures.errors += 1;
                let _ = conn.query_drop("ROLLBACK").await;
                if !matches!(e, mysql_async::Error::Server(_)) {
                    match pool.get_conn().await {
                        Ok(c) => conn = c,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }
    }
    figures
}

/// Which of the three tables one statement sees with the added column:
/// `SELECT *` over a join opens all three at once, and the result's column
/// list says which version of each it opened.
async fn versions_seen(conn: &mut Conn, id: u64) -> Result<[bool; 3], mysql_async::Error> {
    let result = conn
        .query_iter(format!(
            "SELECT * FROM orders o JOIN items i ON i.order_id = o.id \
             LEFT JOIN notes n ON n.order_id = o.id WHERE o.id = {id}"
        ))
        .await?;
    let columns = result.columns().unwrap_or_else(|| Vec::new().into());
    result.drop_result().await?;
    let has = |alias: &str| {
        columns
            .iter()
            .any(|c| c.table_str() == alias && c.name_str() == ADDED)
    };
    Ok([has("o"), has("i"), has("n")])
}

/// All three tables new or all three old, as one statement sees them (twice,
/// a moment apart: a RENAME a dead run left queued may end in between);
/// `true` when new.
async fn assert_all_or_none(s: &Schema, what: &str) -> bool {
    let mut c = s.conn().await;
    for t in &TABLES {
        assert!(
            s.table_exists(t.name).await,
            "{what}: {} is missing",
            t.name
        );
    }
    let mut seen = [false; 3];
    for _ in 0..2 {
        seen = versions_seen(&mut c, 1)
            .await
            .expect("join the three tables");
        assert!(
            seen == [true; 3] || seen == [false; 3],
            "{what}: orders, items, notes new = {seen:?}: some tables were swapped and others not"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen[0]
}

/// Each table is its mirror: the same columns and indexes (the server's own
/// ALTER made the mirror's) and the same rows, `tenant_id` at its default.
async fn assert_tables_equal_mirrors(s: &Schema, what: &str) {
    for t in &TABLES {
        let mirror = format!("m_{}", t.name);
        assert_eq!(
            s.definition(t.name).await,
            s.definition(&mirror).await,
            "{what}: {} is not defined as the ALTER makes it",
            t.name
        );
        let rows = s.rows(t.name).await;
        let expected = s.rows(&mirror).await;
        if rows != expected {
            let a: BTreeSet<&String> = rows.iter().collect();
            let b: BTreeSet<&String> = expected.iter().collect();
            let only: Vec<_> = a.difference(&b).take(5).collect();
            let missing: Vec<_> = b.difference(&a).take(5).collect();
            panic!(
                "{what}: {} differs from its mirror ({} rows vs {}): only in {}: {only:?}; missing: {missing:?}",
                t.name,
                rows.len(),
                expected.len(),
                t.name
            );
        }
        assert!(!rows.is_empty(), "{what}: {} is empty", t.name);
        let mut c = s.conn().await;
        let other: Option<u64> = c
            .query_first(format!(
                "SELECT COUNT(*) FROM {} WHERE {ADDED} <> 7",
                t.name
            ))
            .await
            .expect("tenant_id");
        assert_eq!(
            other,
            Some(0),
            "{what}: {} has {ADDED} off its default",
            t.name
        );
    }
}

/// The finished job left the old tables and nothing else of its own.
async fn assert_job_finished(s: &Schema, what: &str) {
    for t in &TABLES {
        let n = t.name;
        assert!(
            s.table_exists(&format!("_{n}_old")).await,
            "{what}: no _{n}_old"
        );
        for left in [
            format!("_{n}_new"),
            format!("{n}_wraith_sentry"),
            format!("{n}_wraith_swap"),
            format!("_{n}_chk"),
        ] {
            assert!(!s.table_exists(&left).await, "{what}: {left} left behind");
        }
    }
    assert_eq!(checkpoints(s).await, 0, "{what}: checkpoint left behind");
}

async fn checkpoints(s: &Schema) -> u64 {
    let mut c = s.conn().await;
    c.query_first::<u64, _>("SELECT COUNT(*) FROM _wraith_checkpoint")
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// The `RENAME TABLE` statements on schema `s` written to the binlog since
/// `from` (the text of each Query event, without its `use` prefix).
pub(crate) async fn renames_since(s: &Schema, from: &(String, u64)) -> Vec<String> {
    let mut c = s.conn().await;
    let logs: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.expect("binary logs");
    let mut found = Vec::new();
    let quoted = format!("`{}`", s.name);
    for log in logs {
        let name: String = log.get(0).expect("Log_name");
        // Same basename, zero-padded numbers: names sort as the files follow.
        if name < from.0 {
            continue;
        }
        let sql = if name == from.0 {
            format!("SHOW BINLOG EVENTS IN '{name}' FROM {}", from.1)
        } else {
            format!("SHOW BINLOG EVENTS IN '{name}'")
        };
        let events: Vec<mysql_async::Row> = c.query(sql.as_str()).await.expect("binlog events");
        for e in events {
            let kind: String = e.get("Event_type").unwrap_or_default();
            let info: Option<String> = e.get("Info").unwrap_or_default();
            let Some(info) = info else { continue };
            if kind != "Query" || !info.contains(&quoted) {
                continue;
            }
            let text = match info.strip_prefix("use ") {
                Some(rest) => rest.split_once("; ").map_or(rest, |(_, t)| t),
                None => info.as_str(),
            };
            if text.trim_start().to_uppercase().starts_with("RENAME TABLE") {
                found.push(text.to_string());
            }
        }
    }
    found
}

/// The table names a RENAME statement of schema `schema` mentions.
pub(crate) fn renamed_names(schema: &str, statement: &str) -> BTreeSet<String> {
    statement
        .replace('`', "")
        .replace(&format!("{schema}."), "")
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Sends one command to the run's control socket and reads its one line.
async fn status_json(dir: &Path) -> Option<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket(dir)).await.ok()?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"status-json\n").await.ok()?;
    let line = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(read).lines().next_line(),
    )
    .await
    .ok()?
    .ok()??;
    serde_json::from_str(&line).ok()
}

/// The three tables, written by transactions that each touch all three,
/// end equal to their mirrors after one run, and the binlog holds exactly one
/// `RENAME TABLE` of the schema: the one that swapped all three together.
#[tokio::test]
async fn three_tables_one_swap_under_load() {
    // The application's worst write is judged against the cut-over.
    let _judged = crate::LATENCY_JUDGED.write().await;
    for backend in ["local", "sql"] {
        let s = Schema::new(&format!("multi_swap_{backend}")).await;
        let orders = 20_000;
        three_tables(&s, orders).await;
        let dir = tempfile::tempdir().unwrap();
        let from = s.binlog_now().await;
        let load = MultiLoad::start(s.pool.clone(), orders, 100, 7);
        // The load is under way before the run starts: a run that takes
        // under a second on a quiet machine still meets a load of 100+
        // transactions (the assertion below).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cfg = job_config(&s, dir.path(), backend, "threads = 2", "");
        let child = WraithChild::spawn(&["run", "--json"], &cfg);
        let run = child.finish(Duration::from_secs(240)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let figures = load.stop().await;
        assert_eq!(run.code, 0, "{backend}: {}", run.output());
        eprintln!("multi_swap_{backend}: load {figures:?}");
        assert!(figures.committed > 100, "{backend}: load {figures:?}");
        assert!(figures.rolled_back > 0, "{backend}: load {figures:?}");

        let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json report");
        let reported: BTreeSet<&str> = report["tables"]
            .as_array()
            .expect("report tables")
            .iter()
            .filter_map(|t| t["table"].as_str())
            .collect();
        assert_eq!(
            reported,
            BTreeSet::from(["items", "notes", "orders"]),
            "{backend}: one report entry per table: {report}"
        );
        assert_eq!(
            report["tables"].as_array().map(Vec::len),
            Some(3),
            "{report}"
        );
        for t in report["tables"].as_array().unwrap() {
            assert_eq!(t["cut_over"], true, "{backend}: {t}");
        }
        // One cut-over for all three: no write of the application waited
        // longer than wraith's longest lock (a cut-over attempt, or the
        // checksum's READ lock), plus the load's own noise on this shared
        // machine (its p99) and a fixed slack.
        let cut = &report["tables"][0]["cutover"];
        let longest_attempt = cut["lock_attempts"]
            .as_array()
            .expect("lock attempts")
            .iter()
            .map(|a| a["queued_ms"].as_f64().unwrap_or(0.0) + a["held_ms"].as_f64().unwrap_or(0.0))
            .fold(0.0, f64::max);
        let checksum_lock = report["tables"][0]["checksum_lock_ms"]
            .as_f64()
            .unwrap_or(0.0);
        let longest = longest_attempt.max(checksum_lock);
        let p99 = figures.quantile_ms(0.99);
        eprintln!(
            "multi_swap_{backend}: cut-over blocked writes {:.1} ms in {} attempt(s), longest {longest_attempt:.1} ms; \
             checksum lock {checksum_lock:.1} ms; the load's worst transaction {:.1} ms, p99 {p99:.1} ms",
            cut["blocked_ms"].as_f64().unwrap_or(-1.0),
            cut["attempts"],
            figures.worst_ms
        );
        assert!(
            figures.worst_ms <= longest + p99 + 100.0 && figures.worst_ms < 1_000.0,
            "{backend}: a transaction waited {:.1} ms (p99 {p99:.1} ms), but wraith's longest lock was {longest:.1} ms: {cut}",
            figures.worst_ms
        );
        for t in report["tables"].as_array().unwrap() {
            assert_eq!(
                &t["cutover"], cut,
                "{backend}: one cut-over for every table"
            );
        }
        assert_tables_equal_mirrors(&s, backend).await;
        assert_job_finished(&s, backend).await;

        let renames = renames_since(&s, &from).await;
        assert_eq!(
            renames.len(),
            1,
            "{backend}: the binlog holds {} RENAME TABLE statements of the job, not one for all tables: {renames:#?}",
            renames.len()
        );
        let names = renamed_names(&s.name, &renames[0]);
        for t in &TABLES {
            let n = t.name;
            for name in [n.to_string(), format!("_{n}_old"), format!("_{n}_new")] {
                assert!(
                    names.contains(&name),
                    "{backend}: the RENAME does not name {name}: {}",
                    renames[0]
                );
            }
        }
    }
}

/// A reader joins the three tables in a loop through the whole run; each
/// statement opens all three at once, and none sees one table with the added
/// column and another without. It saw both the old and the new tables, so a
/// swap of one table at a time would have been seen.
#[tokio::test]
async fn joins_never_see_a_mix() {
    // A heavy load of its own: not beside the test that judges the worst write.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("multi_join").await;
    let orders = 20_000;
    three_tables(&s, orders).await;
    let dir = tempfile::tempdir().unwrap();
    let load = MultiLoad::start(s.pool.clone(), orders, 100, 11);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pool, stop) = (s.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let mut conn = pool.get_conn().await.expect("reader connection");
            let mut seen: BTreeMap<[bool; 3], u64> = BTreeMap::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = rng.random_range(1..=orders);
                match versions_seen(&mut conn, id).await {
                    Ok(v) => *seen.entry(v).or_default() += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (seen, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = job_config(&s, dir.path(), "sql", "threads = 2", "");
    let run = WraithChild::spawn(&["run", "--json"], &cfg)
        .finish(Duration::from_secs(240))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (seen, errors) = reader.await.expect("reader");
    let figures = load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    eprintln!("multi_join: statements by (orders, items, notes) new: {seen:?}; load {figures:?}");
    assert!(errors.is_empty(), "the join failed: {errors:?}");
    let mixed: Vec<_> = seen
        .iter()
        .filter(|(v, _)| **v != [true; 3] && **v != [false; 3])
        .collect();
    assert!(
        mixed.is_empty(),
        "joins saw some tables new and others old ((orders, items, notes) new: statements): {mixed:?}"
    );
    assert!(
        seen.get(&[false; 3]).copied().unwrap_or(0) > 0,
        "the reader never saw the old tables: {seen:?}"
    );
    assert!(
        seen.get(&[true; 3]).copied().unwrap_or(0) > 0,
        "the reader never saw the new tables: {seen:?}"
    );
    assert_tables_equal_mirrors(&s, "multi_join").await;
}

/// How a round's runs are killed. Every run starts with the postpone flag
/// file in place, so that none runs to its end by itself: a kill aimed at a
/// point the run does not reach lands where it waits for the flag.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// At a random moment after the start.
    Timed,
    /// Right after the run enters a state (a random one of [`AIMED_STATES`]).
    InState,
    /// In the cut-over: once the run waits at the flag, the flag goes, and
    /// the kill follows its entry into CutOver by a few milliseconds.
    AtCutover,
}

const AIMED_STATES: [&str; 4] = [
    "CopyRows",
    "RestoreSecondaryIndexes",
    "Checksum",
    "PostChecksum",
];

/// Runs killed with SIGKILL at random points, the cut-over among them,
/// under the three-table load: after every kill the three tables are all
/// new or all old; rerun to the end, each equals its mirror.
#[tokio::test]
async fn killed_anywhere_all_or_none() {
    // A heavy load of its own: not beside the test that judges the worst write.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let seed = wraith_tests::kill_seed();
    eprintln!("multi kill seed: {seed} (replay with WRAITH_KILL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut states: BTreeMap<String, u32> = BTreeMap::new();
    let mut kills = 0;
    let mut swapped_at_kill = 0;
    for round in 0..4u64 {
        let backend = if round % 2 == 0 { "sql" } else { "local" };
        let s = Schema::new(&format!("multi_kill_{round}")).await;
        let orders = 6_000;
        three_tables(&s, orders).await;
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("postpone");
        let load = MultiLoad::start(s.pool.clone(), orders, 80, seed + round);
        let cfg = job_config(
            &s,
            dir.path(),
            backend,
            "threads = 1\ninitial_chunk_rows = 300\nchunk_target = \"30ms\"",
            &format!("postpone_flag_file = {:?}", flag.display().to_string()),
        );
        let plan = [
            Kill::Timed,
            Kill::InState,
            Kill::AtCutover,
            Kill::AtCutover,
            Kill::AtCutover,
        ];
        let mut done = false;
        let mut landed_in_cutover = false;
        for (attempt, how) in plan.into_iter().enumerate() {
            if done || (attempt > 2 && landed_in_cutover) {
                break;
            }
            std::fs::write(&flag, b"").expect("postpone flag");
            let mut child = WraithChild::spawn(&["run", "-v"], &cfg);
            let started = Instant::now();
            let delay = Duration::from_millis(rng.random_range(100..2000));
            let aimed = AIMED_STATES[rng.random_range(0..AIMED_STATES.len())];
            let mut released: Option<Instant> = None;
            loop {
                if child.try_finished() {
                    break;
                }
                let err = child.stderr();
                let waiting = err.contains("cut-over postponed");
                let due = match how {
                    Kill::Timed => started.elapsed() >= delay || waiting,
                    Kill::InState => err.contains(&format!("to={aimed}")) || waiting,
                    Kill::AtCutover => {
                        if released.is_none() && waiting {
                            std::fs::remove_file(&flag).expect("remove the flag");
                            released = Some(Instant::now());
                        }
                        // The state log is the aim; should it not come, a
                        // moment after the release is in the cut-over too.
                        released.is_some_and(|at| {
                            err.contains("to=CutOver") || at.elapsed() > Duration::from_millis(600)
                        })
                    }
                };
                if due {
                    if !matches!(how, Kill::Timed) {
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
                    }
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(150),
                    "round {round} ({backend}): no {how:?} point within 150s:\n{err}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let ended_itself = child.try_finished();
            if !ended_itself {
                child.signal(libc::SIGKILL);
            }
            let _ = std::fs::remove_file(&flag);
            let run = child.finish(Duration::from_secs(10)).await;
            let what = format!("round {round} ({backend}, seed {seed}), attempt {attempt} {how:?}");
            if ended_itself {
                // Only a run with nothing left but the swap's end may finish.
                assert_eq!(run.code, 0, "{what}: {}", run.output());
                done = true;
                continue;
            }
            kills += 1;
            let state = wraith_tests::last_state(&run.stderr);
            landed_in_cutover |= state == "CutOver";
            *states.entry(state.clone()).or_default() += 1;
            // Let the server end what the dead sessions left running.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let new = assert_all_or_none(&s, &format!("{what}, killed in {state}")).await;
            if new {
                swapped_at_kill += 1;
            }
            // Killed after the job had finished: nothing is left to resume.
            done = new && checkpoints(&s).await == 0;
        }
        if !done {
            let run = WraithChild::spawn(&["run", "-v"], &cfg)
                .finish(Duration::from_secs(240))
                .await;
            assert_eq!(run.code, 0, "round {round} ({backend}): {}", run.output());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let figures = load.stop().await;
        let what = format!("round {round} ({backend}, seed {seed})");
        assert!(figures.committed > 20, "{what}: load {figures:?}");
        assert!(assert_all_or_none(&s, &what).await, "{what}: not swapped");
        assert_tables_equal_mirrors(&s, &what).await;
        assert_job_finished(&s, &what).await;
    }
    eprintln!(
        "multi kill (seed {seed}): {kills} kills, states at kill: {states:?}, all swapped at {swapped_at_kill} of them"
    );
    assert!(kills >= 8, "only {kills} kills");
    assert!(
        states.get("CutOver").copied().unwrap_or(0) > 0,
        "no kill landed in the cut-over: {states:?}"
    );
}

/// `status-json` during the run has one entry per table, each with its
/// own rows, state and change figures; the tables move at their own pace.
#[tokio::test]
async fn status_shows_each_table() {
    // A heavy load of its own: not beside the test that judges the worst write.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("multi_status").await;
    let orders = 20_000;
    three_tables(&s, orders).await;
    let mut actual = BTreeMap::new();
    for t in &TABLES {
        actual.insert(t.name.to_string(), s.count(t.name).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("postpone");
    std::fs::write(&flag, b"").unwrap();
    let load = MultiLoad::start(s.pool.clone(), orders, 60, 3);
    let cfg = job_config(
        &s,
        dir.path(),
        "sql",
        "threads = 2\ninitial_chunk_rows = 500\nchunk_target = \"50ms\"",
        &format!("postpone_flag_file = {:?}", flag.display().to_string()),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_copied: BTreeMap<String, u64> = BTreeMap::new();
    let mut polls_with_three = 0;
    let mut seen_copying = 0;
    let mut short_since: Option<Instant> = None;
    let mut differed = None;
    let held = loop {
        assert!(
            !child.try_finished(),
            "the run ended before the cut-over was released:\n{}",
            child.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "no postponed cut-over within 180s; last status {:?}",
            status_json(dir.path()).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(st) = status_json(dir.path()).await else {
            continue;
        };
        let tables = st["tables"].as_array().cloned().unwrap_or_default();
        // The tables may be listed as the job sets them up; once all three
        // are, they stay.
        if polls_with_three == 0 && tables.len() < 3 {
            if !tables.is_empty() {
                let since = *short_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(15),
                    "only {} of the three tables listed for 15 s: {st}",
                    tables.len()
                );
            }
            continue;
        }
        assert_eq!(tables.len(), 3, "one entry per table: {st}");
        polls_with_three += 1;
        if st["current_state"] == "CopyRows" && !tables.iter().all(|t| t["is_complete"] == true) {
            seen_copying += 1;
        }
        let mut pcts = Vec::new();
        for t in &tables {
            let name = t["table_name"]
                .as_str()
                .unwrap_or_else(|| panic!("table_name: {t}"));
            assert!(actual.contains_key(name), "unknown table {name}: {st}");
            let copied = t["rows_copied"]
                .as_u64()
                .unwrap_or_else(|| panic!("rows_copied: {t}"));
            assert!(t["rows_total"].as_u64().is_some(), "rows_total: {t}");
            assert!(t["is_complete"].is_boolean(), "is_complete: {t}");
            assert!(
                t["state"].as_str().is_some_and(|s| !s.is_empty()),
                "state: {t}"
            );
            let pct = t["pct"].as_f64().unwrap_or_else(|| panic!("pct: {t}"));
            assert!((0.0..=100.0).contains(&pct), "pct: {t}");
            for key in ["changes_applied", "changes_backlog", "changes_received"] {
                assert!(t[key].as_u64().is_some(), "{key}: {t}");
            }
            assert!(t["lag_secs"].as_f64().is_some(), "lag_secs: {t}");
            let before = last_copied.insert(name.to_string(), copied).unwrap_or(0);
            assert!(
                copied >= before,
                "{name}: rows_copied went back from {before}: {st}"
            );
            pcts.push((
                name.to_string(),
                pct,
                t["is_complete"] == true,
                t["state"].clone(),
            ));
        }
        let names: BTreeSet<&str> = pcts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names.len(), 3, "a table listed twice: {st}");
        if differed.is_none()
            && pcts.iter().any(|a| {
                pcts.iter()
                    .any(|b| (a.1 - b.1).abs() >= 1.0 || a.2 != b.2 || a.3 != b.3)
            })
        {
            differed = Some(st.clone());
        }
        let all_done = tables.iter().all(|t| t["is_complete"] == true);
        let all_applied = tables
            .iter()
            .all(|t| t["changes_applied"].as_u64().unwrap_or(0) > 0);
        // Held at the flag file: every table copied and following its changes.
        if st["current_state"] == "WaitingOnSentinelTable" && all_done && all_applied {
            break st;
        }
    };
    // Each table's own figures: its own row count, not the job's.
    for t in held["tables"].as_array().unwrap() {
        let name = t["table_name"].as_str().unwrap();
        let rows = actual[name];
        let copied = t["rows_copied"].as_u64().unwrap();
        let total = t["rows_total"].as_u64().unwrap();
        assert!(
            copied * 10 >= rows * 9 && copied * 10 <= rows * 12,
            "{name}: {copied} rows copied of {rows}: {held}"
        );
        assert!(
            total * 2 >= rows && total <= rows * 2,
            "{name}: rows_total {total} for {rows} rows: {held}"
        );
    }
    assert!(
        seen_copying > 0,
        "the three tables were never listed while the copy ran; at the end {held}"
    );
    let differed = differed.unwrap_or_else(|| {
        panic!("over {polls_with_three} polls, every table showed the same progress; last {held}")
    });
    eprintln!(
        "multi_status: {polls_with_three} polls with three tables; tables apart: {}",
        differed["tables"]
    );
    std::fs::remove_file(&flag).unwrap();
    let run = child.finish(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_tables_equal_mirrors(&s, "multi_status").await;
}
