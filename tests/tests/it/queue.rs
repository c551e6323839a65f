//! The migration registry and queue (issue 17): requests filed with
//! `wraith submit`, run by `wraith serve`, steered with `wraith migrations`.
//!
//! Checked from the outside, through the CLI and the registry's tables as any
//! SQL client reads them, under mirrored write loads (every statement also
//! written to a mirror table in the same transaction): the requests on one
//! table run one after another, every status change is logged, a cancelled
//! request leaves its source untouched and no shadow, a postponed one waits at
//! `ready` with its shadow in step, a `serve` killed with SIGKILL resumes its
//! request from the checkpoint, and every table changed ends equal to its
//! mirror. Each test has its own registry schema, so tests running side by
//! side on the shared server never see each other's requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use wraith_engine::testkit::workload::{Load, LoadConfig};
use wraith_tests::{mirrored_load, sysbench_with_mirror, wraith_bin, Run, Schema, WraithChild};

/// The ALTER most requests here make: a column the load never writes.
const ADD_NOTE: &str = "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'";
/// Longest a `serve --once` may take for the requests of one test (a few
/// seconds each on an idle machine; the whole suite shares two cores).
const SERVE_ENDS: Duration = Duration::from_secs(120);

/// A SERVER_CONFIG in a file of its own (the job's TOML without `[[table]]`),
/// with the test's registry schema and small chunks.
struct ServerConfig {
    text: String,
    path: PathBuf,
    registry: String,
    dir: tempfile::TempDir,
}

impl ServerConfig {
    /// `rest` is appended (e.g. a `[throttle]` section), with `{DIR}`
    /// standing for the config's own directory.
    fn new(s: &Schema, registry: &str, rest: &str) -> ServerConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let rest = rest.replace("{DIR}", &dir.path().display().to_string());
        let text = format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
             [registry]\nschema = \"{registry}\"\n\n\
             [copy]\nthreads = 2\ninitial_chunk_rows = 200\nchunk_target = \"20ms\"\n\n\
             [local]\nsort_dir = {:?}\nengine_size = \"2MiB\"\n\n\
             [checkpoint]\ninterval = \"200ms\"\n\n{rest}\n",
            s.port,
            s.name,
            dir.path().join("sort").display().to_string(),
        );
        let path = dir.path().join("server.toml");
        std::fs::write(&path, &text).expect("write server config");
        ServerConfig {
            text,
            path,
            registry: registry.to_string(),
            dir,
        }
    }

    /// Runs `wraith ARGS`, where the argument `CFG` stands for this config's path.
    async fn wraith(&self, args: &[&str]) -> Run {
        let path = self.path.display().to_string();
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "CFG" { path.as_str() } else { a })
            .collect();
        let mut cmd = tokio::process::Command::new(wraith_bin());
        cmd.args(&args).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("wraith {args:?} did not finish within 120s"))
            .expect("run wraith");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `wraith submit CFG --table TABLE --alter ALTER EXTRA...`, which must
    /// queue the request; returns its UUID.
    async fn submit(&self, table: &str, alter: &str, extra: &[&str]) -> String {
        let mut args = vec!["submit", "CFG", "--table", table, "--alter", alter];
        args.extend_from_slice(extra);
        let run = self.wraith(&args).await;
        assert_eq!(run.code, 0, "submit {table} {alter:?}: {}", run.output());
        let uuid = run.stdout.trim().to_string();
        assert!(
            uuid.len() == 36 && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "submit prints the UUID alone: {}",
            run.output()
        );
        uuid
    }

    /// `wraith migrations CFG ACTION UUID`, which must succeed.
    async fn migrations(&self, action: &str, uuid: &str) {
        let run = self.wraith(&["migrations", "CFG", action, uuid]).await;
        assert_eq!(run.code, 0, "migrations {action} {uuid}: {}", run.output());
    }

    /// `wraith serve ARGS CFG` in the background, logging at info.
    fn serve(&self, args: &[&str]) -> WraithChild {
        let mut all = vec!["serve", "-v"];
        all.extend_from_slice(args);
        WraithChild::spawn(&all, &self.text)
    }

    /// The same config with `[copy] threads = N`.
    fn with_threads(self, n: u32) -> ServerConfig {
        let text = self.text.replace("threads = 2", &format!("threads = {n}"));
        std::fs::write(&self.path, &text).expect("write server config");
        ServerConfig { text, ..self }
    }

    /// A path in this config's directory (flag files).
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Drops a registry schema a previous run may have left on the server.
async fn fresh_registry(s: &Schema, registry: &str) {
    s.exec(&format!("DROP DATABASE IF EXISTS `{registry}`"))
        .await;
}

/// A request's row of the registry, as an SQL client reads it.
#[derive(Debug)]
struct Request {
    status: String,
    stage: String,
    rows_copied: i64,
    progress_pct: f64,
    retries: i64,
    migration_uuid: String,
    checkpoint_key: String,
    cancel_requested: i64,
}

async fn request(s: &Schema, registry: &str, uuid: &str) -> Request {
    let mut c = s.conn().await;
    let row: Option<mysql_async::Row> = c
        .exec_first(
            format!(
                "SELECT CAST(status AS CHAR), IFNULL(stage, ''), IFNULL(rows_copied, 0), \
                 IFNULL(progress_pct, -1), IFNULL(retries, 0), \
                 IFNULL(migration_uuid, ''), IFNULL(checkpoint_key, ''), IFNULL(cancel_requested, 0) \
                 FROM `{registry}`.`_wraith_migrations` WHERE uuid = ?"
            ),
            (uuid,),
        )
        .await
        .unwrap_or_else(|e| panic!("reading request {uuid} from {registry}: {e}"));
    let row = row.unwrap_or_else(|| panic!("no request {uuid} in {registry}._wraith_migrations"));
    Request {
        status: row.get(0).expect("status"),
        stage: row.get(1).expect("stage"),
        rows_copied: row.get(2).expect("rows_copied"),
        progress_pct: row.get(3).expect("progress_pct"),
        retries: row.get(4).expect("retries"),
        migration_uuid: row.get(5).expect("migration_uuid"),
        checkpoint_key: row.get(6).expect("checkpoint_key"),
        cancel_requested: row.get(7).expect("cancel_requested"),
    }
}

/// The statuses a request went through, from `_wraith_migrations_log`, in
/// order; each change must start from the status the previous one reached.
async fn transitions(s: &Schema, registry: &str, uuid: &str) -> Vec<String> {
    let mut c = s.conn().await;
    let log: Vec<(Option<String>, String)> = c
        .exec(
            format!(
                "SELECT from_status, to_status FROM `{registry}`.`_wraith_migrations_log` \
                 WHERE uuid = ? ORDER BY id"
            ),
            (uuid,),
        )
        .await
        .unwrap_or_else(|e| panic!("reading the log of {uuid}: {e}"));
    let mut previous: Option<String> = None;
    for (from, to) in &log {
        assert_eq!(
            from, &previous,
            "{uuid}: the change to {to} does not start where the last one ended: {log:?}"
        );
        previous = Some(to.clone());
    }
    log.into_iter().map(|(_, to)| to).collect()
}

/// The messages of a request's status changes, in order.
async fn log_messages(s: &Schema, registry: &str, uuid: &str) -> Vec<String> {
    let mut c = s.conn().await;
    c.exec(
        format!(
            "SELECT IFNULL(message, '') FROM `{registry}`.`_wraith_migrations_log` \
             WHERE uuid = ? ORDER BY id"
        ),
        (uuid,),
    )
    .await
    .unwrap_or_else(|e| panic!("reading the log of {uuid}: {e}"))
}

/// Waits until the request is `status` (and `also` holds for its row);
/// panics after `timeout` or when `serve` exits first.
async fn wait_for_request(
    s: &Schema,
    cfg: &ServerConfig,
    uuid: &str,
    serve: &mut WraithChild,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Request) -> bool,
) -> Request {
    let deadline = Instant::now() + timeout;
    loop {
        let r = request(s, &cfg.registry, uuid).await;
        if done(&r) {
            return r;
        }
        assert!(
            !serve.try_finished(),
            "serve exited before {what} (request {r:?}):\n{}",
            serve.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "not {what} within {timeout:?} (request {r:?}):\n{}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `table` becomes by `alter`, as the server's own ALTER makes it.
async fn altered_definition(s: &Schema, table: &str, alter: &str) -> (Vec<String>, Vec<String>) {
    s.exec(&format!(
        "CREATE TABLE expected_new LIKE `{table}`; ALTER TABLE expected_new {alter}"
    ))
    .await;
    let def = s.definition("expected_new").await;
    s.exec("DROP TABLE expected_new").await;
    def
}

/// `table` holds exactly `mirror`'s rows on the sysbench columns (the
/// columns the requests add are not in the mirror).
async fn assert_equals_mirror(s: &Schema, table: &str, mirror: &str, what: &str) {
    let mut c = s.conn().await;
    let diff: Vec<(u64, String)> = c
        .query(format!(
            "SELECT m.id, 'missing or different in {table}' FROM `{mirror}` m LEFT JOIN `{table}` t ON t.id = m.id \
               WHERE t.id IS NULL OR NOT (t.k <=> m.k AND BINARY t.c <=> BINARY m.c AND BINARY t.pad <=> BINARY m.pad) \
             UNION ALL \
             SELECT t.id, 'only in {table}' FROM `{table}` t LEFT JOIN `{mirror}` m ON m.id = t.id WHERE m.id IS NULL \
             LIMIT 20"
        ))
        .await
        .expect("compare with the mirror");
    assert!(
        diff.is_empty(),
        "{what}: {table} differs from {mirror}: {diff:?}"
    );
    let counts: Option<(u64, u64)> = c
        .query_first(format!(
            "SELECT (SELECT COUNT(*) FROM `{table}`), (SELECT COUNT(*) FROM `{mirror}`)"
        ))
        .await
        .expect("counts");
    let (a, b) = counts.expect("counts");
    assert_eq!(a, b, "{what}: {table} and {mirror} row counts");
    assert!(a > 0, "{what}: {table} is empty");
}

/// Whether the schema holds `table`'s shadow or a changelog.
async fn leftovers(s: &Schema, table: &str) -> Vec<String> {
    let mut names = Vec::new();
    for t in [format!("_{table}_new"), "_wraith_changelog".to_string()] {
        if s.table_exists(&t).await {
            names.push(t);
        }
    }
    names
}

/// The checkpoint row of `key`: its run identity, if there is one.
async fn checkpoint_of(s: &Schema, key: &str) -> Option<String> {
    if !s.table_exists("_wraith_checkpoint").await {
        return None;
    }
    let mut c = s.conn().await;
    c.exec_first(
        "SELECT migration_id FROM _wraith_checkpoint WHERE job = ?",
        (key,),
    )
    .await
    .expect("read the checkpoint")
}

/// A sysbench-like table `table` with `rows` rows and a copy `mirror`.
async fn table_with_mirror(s: &Schema, table: &str, mirror: &str, rows: u64) {
    let mut c = s.conn().await;
    wraith_engine::testkit::workload::create_sysbench_table(&mut c, &s.name, table, rows)
        .await
        .expect("create table");
    c.query_drop(format!(
        "CREATE TABLE `{mirror}` LIKE `{table}`; INSERT INTO `{mirror}` SELECT * FROM `{table}`"
    ))
    .await
    .expect("create mirror");
}

/// The mirrored load on `table`, 100 tx/s.
fn load_on(s: &Schema, table: &str, mirror: &str, rows: u64, seed: u64) -> LoadConfig {
    LoadConfig {
        table: table.into(),
        mirror: Some(mirror.into()),
        rate: 100,
        ..mirrored_load(s, rows, seed)
    }
}

/// The highest id in `mirror`: where a load started after another one
/// stopped must begin handing out new ids.
async fn max_id(s: &Schema, mirror: &str) -> u64 {
    let mut c = s.conn().await;
    let max: Option<Option<u64>> = c
        .query_first(format!("SELECT MAX(id) FROM `{mirror}`"))
        .await
        .expect("max id");
    max.flatten().unwrap_or(0)
}

/// `migrations list --json`: each request's status by UUID.
async fn listed(cfg: &ServerConfig) -> BTreeMap<String, String> {
    let run = cfg.wraith(&["migrations", "CFG", "list", "--json"]).await;
    assert_eq!(run.code, 0, "migrations list: {}", run.output());
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {}", run.output()));
    json["migrations"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"migrations\" array: {}", run.stdout))
        .iter()
        .map(|m| {
            (
                m["uuid"].as_str().unwrap_or_default().to_string(),
                m["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// While `throttle.flag` exists in the config's directory the copy pauses:
/// a request stays in its copy for as long as a test needs.
const THROTTLE_FLAG: &str =
    "[throttle]\nflag_file = \"{DIR}/throttle.flag\"\ninterval = \"100ms\"\n";

const PLAIN_RUN: [&str; 4] = ["requested", "queued", "running", "complete"];

/// Three requests on two tables, two of them on `a`: `serve --concurrency 2`
/// runs them under writes on both tables, `a`'s in the order they were
/// filed, and both tables end with every column added and equal to their
/// mirrors.
#[tokio::test]
async fn serve_runs_the_queue_in_order_per_table() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "q_order";
    const ROWS: u64 = 20_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_order";
    fresh_registry(&s, registry).await;
    table_with_mirror(&s, "a", "mirror_a", ROWS).await;
    table_with_mirror(&s, "b", "mirror_b", ROWS).await;
    let a1_alter = ADD_NOTE;
    let a2_alter = "ADD COLUMN n2 INT NOT NULL DEFAULT 7, ADD KEY n2_k (n2, k)";
    let b_alter = "MODIFY k BIGINT UNSIGNED NOT NULL DEFAULT 0, ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'b'";
    let expected_a = altered_definition(&s, "a", &format!("{a1_alter}, {a2_alter}")).await;
    let expected_b = altered_definition(&s, "b", b_alter).await;
    let cfg = ServerConfig::new(&s, registry, "");
    let a1 = cfg.submit("a", a1_alter, &[]).await;
    let a2 = cfg.submit("a", a2_alter, &[]).await;
    let b1 = cfg.submit("b", b_alter, &[]).await;
    for uuid in [&a1, &a2, &b1] {
        let r = request(&s, registry, uuid).await;
        assert_eq!(r.status, "queued", "{what}: {uuid} after submit: {r:?}");
    }
    let loads = [
        Load::start(s.pool.clone(), load_on(&s, "a", "mirror_a", ROWS, 171)),
        Load::start(s.pool.clone(), load_on(&s, "b", "mirror_b", ROWS, 172)),
    ];
    // Writes before the first copy starts, too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let serve = cfg.serve(&["--concurrency", "2", "--once"]);
    let run = serve.finish(SERVE_ENDS).await;
    // Writes on the changed tables after the last cut-over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [la, lb] = loads;
    let stats = [la.stop().await, lb.stop().await];
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    for st in &stats {
        assert!(st.transactions > 100, "{what}: the load barely ran: {st:?}");
    }
    for uuid in [&a1, &a2, &b1] {
        let r = request(&s, registry, uuid).await;
        assert_eq!(
            r.status, "complete",
            "{what}: {uuid}: {r:?}\n{}",
            run.stderr
        );
        assert!(r.rows_copied > 0, "{what}: {uuid} copied no rows: {r:?}");
        assert_eq!(r.progress_pct, 100.0, "{what}: {uuid}: {r:?}");
        assert_eq!(
            transitions(&s, registry, uuid).await,
            PLAIN_RUN,
            "{what}: {uuid}'s status changes"
        );
    }
    // The second request on `a` started after the first one completed.
    let mut c = s.conn().await;
    let order: Option<(String, String, u8)> = c
        .exec_first(
            format!(
                "SELECT CAST(a1.completed_at AS CHAR), CAST(a2.started_at AS CHAR), a1.completed_at <= a2.started_at \
                 FROM `{registry}`.`_wraith_migrations` a1, `{registry}`.`_wraith_migrations` a2 \
                 WHERE a1.uuid = ? AND a2.uuid = ?"
            ),
            (&a1, &a2),
        )
        .await
        .expect("read the times");
    let (done, next, in_order) = order.expect("both requests");
    assert_eq!(
        in_order, 1,
        "{what}: a's second request started at {next}, before its first completed at {done}"
    );
    assert_eq!(
        s.definition("a").await,
        expected_a,
        "{what}: a's definition"
    );
    assert_eq!(
        s.definition("b").await,
        expected_b,
        "{what}: b's definition"
    );
    assert_equals_mirror(&s, "a", "mirror_a", what).await;
    assert_equals_mirror(&s, "b", "mirror_b", what).await;
    // The added columns hold their defaults on every row, the load's included.
    let odd: Option<(u64, u64)> = c
        .query_first(
            "SELECT (SELECT COUNT(*) FROM a WHERE NOT (note = 'n' AND n2 = 7)), \
                    (SELECT COUNT(*) FROM b WHERE note <> 'b')",
        )
        .await
        .expect("added columns");
    assert_eq!(
        odd,
        Some((0, 0)),
        "{what}: added columns off their defaults"
    );
    for t in ["a", "b"] {
        assert_eq!(leftovers(&s, t).await, Vec::<String>::new(), "{what}");
    }
    let list = listed(&cfg).await;
    assert_eq!(list.len(), 3, "{what}: {list:?}");
    for uuid in [&a1, &a2, &b1] {
        assert_eq!(
            list.get(uuid.as_str()).map(String::as_str),
            Some("complete"),
            "{what}: {list:?}"
        );
    }
}

/// A running request is cancelled: the run stops, its shadow, changelog and
/// checkpoint are dropped and the source keeps its definition and every
/// write; retried, it completes.
#[tokio::test]
async fn a_cancelled_request_leaves_the_source_untouched_and_retries() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "q_cancel";
    const ROWS: u64 = 20_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_cancel";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, ROWS).await;
    let before = s.definition("sbtest").await;
    let expected = altered_definition(&s, "sbtest", ADD_NOTE).await;
    // While the flag file exists the copy pauses: the request is running
    // for as long as the test needs.
    let cfg = ServerConfig::new(&s, registry, THROTTLE_FLAG);
    let flag = cfg.file("throttle.flag");
    std::fs::write(&flag, "hold").expect("flag file");
    let uuid = cfg.submit("sbtest", ADD_NOTE, &[]).await;
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 181));
    let mut serve = cfg.serve(&["--once"]);
    let r = wait_for_request(
        &s,
        &cfg,
        &uuid,
        &mut serve,
        Duration::from_secs(60),
        "copying",
        |r| r.status == "running" && r.stage == "CopyRows",
    )
    .await;
    assert!(
        s.table_exists("_sbtest_new").await,
        "{what}: no shadow while copying: {r:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cfg.migrations("cancel", &uuid).await;
    let run = serve.finish(Duration::from_secs(60)).await;
    // The application goes on writing the source.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    assert!(stats.transactions > 100, "{what}: {stats:?}");
    let r = request(&s, registry, &uuid).await;
    assert_eq!(r.status, "cancelled", "{what}: {r:?}\n{}", run.stderr);
    assert_eq!(
        transitions(&s, registry, &uuid).await,
        ["requested", "queued", "running", "cancelled"],
        "{what}"
    );
    assert_eq!(
        s.definition("sbtest").await,
        before,
        "{what}: the source changed"
    );
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    assert_eq!(
        leftovers(&s, "sbtest").await,
        Vec::<String>::new(),
        "{what}: left behind"
    );
    assert!(
        !r.checkpoint_key.is_empty(),
        "{what}: no checkpoint key: {r:?}"
    );
    assert_eq!(
        checkpoint_of(&s, &r.checkpoint_key).await,
        None,
        "{what}: the cancelled run's checkpoint is kept"
    );

    // Retried, it runs again from the start and completes under writes.
    cfg.migrations("retry", &uuid).await;
    let r = request(&s, registry, &uuid).await;
    assert_eq!(
        (r.status.as_str(), r.retries),
        ("queued", 1),
        "{what}: {r:?}"
    );
    std::fs::remove_file(&flag).expect("remove the flag");
    let load = Load::start(
        s.pool.clone(),
        mirrored_load(&s, max_id(&s, "mirror").await, 182),
    );
    let run = cfg.serve(&["--once"]).finish(SERVE_ENDS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    assert_eq!(
        run.code,
        0,
        "{what}: serve --once after the retry: {}",
        run.output()
    );
    assert!(stats.transactions > 100, "{what}: {stats:?}");
    let r = request(&s, registry, &uuid).await;
    assert_eq!(
        (r.status.as_str(), r.retries),
        ("complete", 1),
        "{what}: {r:?}"
    );
    assert_eq!(
        transitions(&s, registry, &uuid).await,
        [
            "requested",
            "queued",
            "running",
            "cancelled",
            "queued",
            "running",
            "complete"
        ],
        "{what}"
    );
    assert_eq!(
        s.definition("sbtest").await,
        expected,
        "{what}: not altered"
    );
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    assert_eq!(
        leftovers(&s, "sbtest").await,
        Vec::<String>::new(),
        "{what}"
    );
}

/// A request filed with `--postpone-completion` waits at `ready` with its
/// shadow in step with the source, the source keeping its old definition,
/// until `migrations complete`; then it cuts over.
#[tokio::test]
async fn a_postponed_request_waits_at_ready_until_completed() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "q_postpone";
    const ROWS: u64 = 20_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_postpone";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, ROWS).await;
    let before = s.definition("sbtest").await;
    let expected = altered_definition(&s, "sbtest", ADD_NOTE).await;
    let cfg = ServerConfig::new(&s, registry, "");
    let uuid = cfg
        .submit("sbtest", ADD_NOTE, &["--postpone-completion"])
        .await;
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 191));
    let mut serve = cfg.serve(&["--once"]);
    wait_for_request(
        &s,
        &cfg,
        &uuid,
        &mut serve,
        Duration::from_secs(90),
        "ready",
        |r| r.status == "ready",
    )
    .await;
    // It stays there while the application writes.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = request(&s, registry, &uuid).await;
        assert_eq!(
            r.status,
            "ready",
            "{what}: left ready by itself: {r:?}\n{}",
            serve.stderr()
        );
        assert_eq!(
            s.definition("sbtest").await,
            before,
            "{what}: cut over while postponed"
        );
        assert!(
            s.table_exists("_sbtest_new").await,
            "{what}: no shadow at ready"
        );
    }
    // The shadow follows: with the writes paused it catches up with them.
    let stats = load.stop().await;
    assert!(stats.transactions > 200, "{what}: {stats:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = s.conn().await;
        let apart: Option<u64> = c
            .query_first(
                "SELECT COUNT(*) FROM mirror m LEFT JOIN _sbtest_new t ON t.id = m.id \
                 WHERE t.id IS NULL OR NOT (t.k <=> m.k AND BINARY t.c <=> BINARY m.c AND BINARY t.pad <=> BINARY m.pad)",
            )
            .await
            .expect("compare the shadow");
        if apart == Some(0) && s.count("_sbtest_new").await == s.count("mirror").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the shadow at ready did not catch up with the writes ({apart:?} rows apart)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_equals_mirror(&s, "_sbtest_new", "mirror", what).await;
    let load = Load::start(
        s.pool.clone(),
        mirrored_load(&s, max_id(&s, "mirror").await, 192),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cfg.migrations("complete", &uuid).await;
    let run = serve.finish(SERVE_ENDS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    assert!(stats.transactions > 100, "{what}: {stats:?}");
    let r = request(&s, registry, &uuid).await;
    assert_eq!(r.status, "complete", "{what}: {r:?}\n{}", run.stderr);
    assert_eq!(
        transitions(&s, registry, &uuid).await,
        [
            "requested",
            "queued",
            "running",
            "ready",
            "running",
            "complete"
        ],
        "{what}"
    );
    let mut c = s.conn().await;
    let ready_first: Option<Option<u8>> = c
        .exec_first(
            format!(
                "SELECT ready_at <= completed_at FROM `{registry}`.`_wraith_migrations` WHERE uuid = ?"
            ),
            (&uuid,),
        )
        .await
        .expect("ready_at");
    assert_eq!(
        ready_first,
        Some(Some(1)),
        "{what}: ready_at is not before completed_at"
    );
    assert_eq!(
        s.definition("sbtest").await,
        expected,
        "{what}: not altered"
    );
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    assert_eq!(
        leftovers(&s, "sbtest").await,
        Vec::<String>::new(),
        "{what}"
    );
}

/// `serve` killed with SIGKILL in the copy: the request stays `running`, and
/// the next `serve` resumes it from its checkpoint (the same run identity)
/// and completes it exactly.
#[tokio::test]
async fn a_killed_serve_resumes_its_request_from_the_checkpoint() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "q_kill";
    const ROWS: u64 = 100_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_kill";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, ROWS).await;
    let expected = altered_definition(&s, "sbtest", ADD_NOTE).await;
    // One copy thread: the copy stops within a chunk of the flag's return.
    let cfg = ServerConfig::new(&s, registry, THROTTLE_FLAG).with_threads(1);
    let flag = cfg.file("throttle.flag");
    std::fs::write(&flag, "hold").expect("flag file");
    let uuid = cfg.submit("sbtest", ADD_NOTE, &[]).await;
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 201));
    let mut serve = cfg.serve(&[]);
    wait_for_request(
        &s,
        &cfg,
        &uuid,
        &mut serve,
        Duration::from_secs(60),
        "copying",
        |r| r.status == "running" && r.stage == "CopyRows",
    )
    .await;
    // Let the copy go until the shadow has rows, then hold it again: the
    // kill lands in the copy with rows copied and checkpointed, however fast
    // the machine copies.
    std::fs::remove_file(&flag).expect("remove the flag");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.count("_sbtest_new").await == 0 {
        assert!(
            Instant::now() < deadline,
            "{what}: the copy did not start:\n{}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&flag, "hold").expect("flag file");
    let r = wait_for_request(
        &s,
        &cfg,
        &uuid,
        &mut serve,
        Duration::from_secs(20),
        "rows copied in the registry",
        |r| r.rows_copied > 0,
    )
    .await;
    assert_eq!(
        r.stage, "CopyRows",
        "{what}: the copy ended before the kill: {r:?}"
    );
    assert!(
        r.rows_copied < ROWS as i64,
        "{what}: the copy ended before the kill: {r:?}"
    );
    serve.signal(libc::SIGKILL);
    let killed = serve.finish(Duration::from_secs(10)).await;
    assert_eq!(killed.code, -1, "{what}: not killed: {}", killed.output());
    let r = request(&s, registry, &uuid).await;
    assert_eq!(r.status, "running", "{what}: after the kill: {r:?}");
    let saved = checkpoint_of(&s, &r.checkpoint_key)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{what}: no checkpoint {:?} after the kill",
                r.checkpoint_key
            )
        });
    // Writes while no serve runs: the resumed run must find them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&flag).expect("remove the flag");
    let run = cfg.serve(&["--once"]).finish(SERVE_ENDS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    assert_eq!(
        run.code,
        0,
        "{what}: serve --once after the kill: {}",
        run.output()
    );
    assert!(stats.transactions > 200, "{what}: {stats:?}");
    let r = request(&s, registry, &uuid).await;
    assert_eq!(r.status, "complete", "{what}: {r:?}\n{}", run.stderr);
    assert_eq!(
        r.migration_uuid, saved,
        "{what}: the request did not resume the checkpointed run"
    );
    assert_eq!(r.retries, 0, "{what}: a resume is not a retry: {r:?}");
    // Resumed (running again, from its checkpoint), not failed and queued again.
    assert_eq!(
        transitions(&s, registry, &uuid).await,
        ["requested", "queued", "running", "running", "complete"],
        "{what}"
    );
    let messages = log_messages(&s, registry, &uuid).await;
    assert!(messages[3].contains("resumed"), "{what}: {messages:?}");
    assert_eq!(
        s.definition("sbtest").await,
        expected,
        "{what}: not altered"
    );
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    assert_eq!(
        leftovers(&s, "sbtest").await,
        Vec::<String>::new(),
        "{what}"
    );
    assert_eq!(
        checkpoint_of(&s, &r.checkpoint_key).await,
        None,
        "{what}: checkpoint kept"
    );
}

/// One `serve` per registry: a second one is refused at once, naming the
/// first; once the first has stopped, another may start.
#[tokio::test]
async fn a_second_serve_on_the_registry_is_refused() {
    let what = "q_lock";
    let s = Schema::new(what).await;
    let registry = "_wraith_q_lock";
    fresh_registry(&s, registry).await;
    let cfg = ServerConfig::new(&s, registry, "");
    let mut first = cfg.serve(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = s.conn().await;
        let holder: Option<Option<u64>> = c
            .query_first(format!("SELECT IS_USED_LOCK('{registry}.serve')"))
            .await
            .expect("IS_USED_LOCK");
        if holder.flatten().is_some() {
            break;
        }
        assert!(
            !first.try_finished(),
            "{what}: serve exited:\n{}",
            first.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "{what}: serve took no lock:\n{}",
            first.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let second = cfg.wraith(&["serve", "--once", "CFG"]).await;
    assert_eq!(second.code, 1, "{what}: second serve: {}", second.output());
    assert!(
        second.stderr.contains("another wraith serve"),
        "{what}: {}",
        second.output()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what}: the refusal waited {:?}",
        started.elapsed()
    );
    assert!(
        !first.try_finished(),
        "{what}: the first serve stopped:\n{}",
        first.stderr()
    );
    first.signal(libc::SIGTERM);
    let run = first.finish(Duration::from_secs(30)).await;
    assert_eq!(run.code, 0, "{what}: SIGTERM: {}", run.output());
    let third = cfg.wraith(&["serve", "--once", "CFG"]).await;
    assert_eq!(
        third.code,
        0,
        "{what}: serve after the first stopped: {}",
        third.output()
    );
}

/// Bad input is refused with its exit code and changes nothing: an unknown
/// UUID, a transition the status does not allow, an ALTER preflight
/// refuses (recorded `failed` with the reason), a hostile table name.
#[tokio::test]
async fn bad_requests_are_refused() {
    let what = "q_bad";
    let s = Schema::new(what).await;
    let registry = "_wraith_q_bad";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, 1_000).await;
    s.exec("CREATE TABLE x (id INT PRIMARY KEY); INSERT INTO x VALUES (1)")
        .await;
    let cfg = ServerConfig::new(&s, registry, "");

    let unknown = "4f1c2d3e-0000-4000-8000-00000000beef";
    for action in ["show", "cancel", "retry", "complete", "postpone"] {
        let run = cfg.wraith(&["migrations", "CFG", action, unknown]).await;
        assert_eq!(
            run.code,
            2,
            "{what}: {action} of an unknown UUID: {}",
            run.output()
        );
        assert!(
            run.stderr.contains(unknown),
            "{what}: {action}: {}",
            run.output()
        );
    }

    // A complete request cannot be retried, cancelled or postponed.
    let done = cfg.submit("sbtest", ADD_NOTE, &[]).await;
    let run = cfg.serve(&["--once"]).finish(SERVE_ENDS).await;
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    assert_eq!(
        request(&s, registry, &done).await.status,
        "complete",
        "{what}"
    );
    for action in ["retry", "cancel", "postpone"] {
        let run = cfg.wraith(&["migrations", "CFG", action, &done]).await;
        assert_eq!(
            run.code,
            2,
            "{what}: {action} of a complete request: {}",
            run.output()
        );
        assert!(
            run.stderr.contains("complete"),
            "{what}: {action}: the refusal does not name the status: {}",
            run.output()
        );
    }
    let r = request(&s, registry, &done).await;
    assert_eq!(
        (r.status.as_str(), r.retries, r.cancel_requested),
        ("complete", 0, 0),
        "{what}: {r:?}"
    );
    let shown = cfg
        .wraith(&["migrations", "CFG", "show", &done, "--json"])
        .await;
    assert_eq!(shown.code, 0, "{what}: show: {}", shown.output());
    let json: serde_json::Value = serde_json::from_str(shown.stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: show --json is not JSON ({e}): {}", shown.output()));
    assert_eq!(json["uuid"], done.as_str(), "{what}: {json}");
    assert_eq!(json["status"], "complete", "{what}: {json}");
    let shown_log: Vec<&str> = json["log"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no log: {json}"))
        .iter()
        .map(|e| e["to_status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(shown_log, PLAIN_RUN, "{what}: {json}");

    // An ALTER preflight refuses: recorded failed, with the reason.
    let before = s.snapshot("sbtest").await;
    let run = cfg
        .wraith(&[
            "submit",
            "CFG",
            "--table",
            "sbtest",
            "--alter",
            "DROP COLUMN nope",
        ])
        .await;
    assert_eq!(
        run.code,
        3,
        "{what}: submit of a refused ALTER: {}",
        run.output()
    );
    assert!(
        run.stderr.contains("nope"),
        "{what}: the check is not shown: {}",
        run.output()
    );
    let mut c = s.conn().await;
    let failed: Vec<(String, String, String)> = c
        .query(format!(
            "SELECT uuid, CAST(status AS CHAR), IFNULL(message, '') FROM `{registry}`.`_wraith_migrations` \
             WHERE alter_statement LIKE '%nope%'"
        ))
        .await
        .expect("the refused request");
    assert_eq!(failed.len(), 1, "{what}: {failed:?}");
    let (failed_uuid, status, message) = &failed[0];
    assert_eq!(status, "failed", "{what}: {failed:?}");
    assert!(
        message.contains("nope"),
        "{what}: the message does not say why: {message:?}"
    );
    assert_eq!(
        transitions(&s, registry, failed_uuid)
            .await
            .last()
            .map(String::as_str),
        Some("failed"),
        "{what}"
    );
    assert_eq!(s.snapshot("sbtest").await, before, "{what}: sbtest changed");

    // A hostile table name: refused as bad input, nothing created or dropped.
    let tables = |s: &Schema| {
        let name = s.name.clone();
        let pool = s.pool.clone();
        async move {
            let mut c = pool.get_conn().await.expect("connect");
            let mut names: Vec<String> = c
                .exec(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                    (&name,),
                )
                .await
                .expect("tables");
            names.sort();
            names
        }
    };
    let before_tables = tables(&s).await;
    let requests_before: Option<u64> = c
        .query_first(format!(
            "SELECT COUNT(*) FROM `{registry}`.`_wraith_migrations`"
        ))
        .await
        .expect("requests");
    let hostile = "t`; DROP TABLE x; --";
    let run = cfg
        .wraith(&["submit", "CFG", "--table", hostile, "--alter", ADD_NOTE])
        .await;
    assert_eq!(
        run.code,
        2,
        "{what}: submit of a hostile name: {}",
        run.output()
    );
    assert_eq!(
        tables(&s).await,
        before_tables,
        "{what}: tables created or dropped"
    );
    assert_eq!(s.count("x").await, 1, "{what}: x was touched");
    let requests_after: Option<u64> = c
        .query_first(format!(
            "SELECT COUNT(*) FROM `{registry}`.`_wraith_migrations`"
        ))
        .await
        .expect("requests");
    assert_eq!(
        requests_after, requests_before,
        "{what}: the hostile request was recorded"
    );
    // And nothing runs: serve finds no request to run.
    let run = cfg.serve(&["--once"]).finish(SERVE_ENDS).await;
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    assert_eq!(
        tables(&s).await,
        before_tables,
        "{what}: serve changed tables"
    );
}

/// Steering before a request runs: `postpone` on a queued request holds it
/// at `ready` when it runs, `cancel` on a queued one ends it at once (serve
/// never touches its table), and `list --status` shows only that status.
#[tokio::test]
async fn queued_requests_can_be_postponed_or_cancelled_before_they_run() {
    let what = "q_steer";
    const ROWS: u64 = 5_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_steer";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, ROWS).await;
    table_with_mirror(&s, "other", "mirror_other", ROWS).await;
    let expected = altered_definition(&s, "sbtest", ADD_NOTE).await;
    let other_before = s.snapshot("other").await;
    let cfg = ServerConfig::new(&s, registry, "");
    let held = cfg.submit("sbtest", ADD_NOTE, &[]).await;
    let dropped = cfg.submit("other", ADD_NOTE, &[]).await;
    cfg.migrations("postpone", &held).await;
    cfg.migrations("cancel", &dropped).await;
    let r = request(&s, registry, &dropped).await;
    assert_eq!(
        r.status, "cancelled",
        "{what}: a queued request is cancelled at once: {r:?}"
    );
    assert_eq!(
        transitions(&s, registry, &dropped).await,
        ["requested", "queued", "cancelled"],
        "{what}"
    );
    let run = cfg
        .wraith(&[
            "migrations",
            "CFG",
            "list",
            "--json",
            "--status",
            "cancelled",
        ])
        .await;
    assert_eq!(run.code, 0, "{what}: list --status: {}", run.output());
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: list --json is not JSON ({e}): {}", run.output()));
    let uuids: Vec<&str> = json["migrations"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {json}"))
        .iter()
        .map(|m| m["uuid"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(uuids, [dropped.as_str()], "{what}: {json}");

    let mut serve = cfg.serve(&["--once"]);
    wait_for_request(
        &s,
        &cfg,
        &held,
        &mut serve,
        Duration::from_secs(90),
        "ready",
        |r| r.status == "ready",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(request(&s, registry, &held).await.status, "ready", "{what}");
    assert!(
        !note_added(&s, "sbtest").await,
        "{what}: cut over while postponed"
    );
    cfg.migrations("complete", &held).await;
    let run = serve.finish(SERVE_ENDS).await;
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    let r = request(&s, registry, &held).await;
    assert_eq!(r.status, "complete", "{what}: {r:?}\n{}", run.stderr);
    assert_eq!(
        transitions(&s, registry, &held).await,
        [
            "requested",
            "queued",
            "running",
            "ready",
            "running",
            "complete"
        ],
        "{what}"
    );
    assert_eq!(
        s.definition("sbtest").await,
        expected,
        "{what}: not altered"
    );
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    // The cancelled request's table was never touched.
    assert_eq!(
        s.snapshot("other").await,
        other_before,
        "{what}: other changed"
    );
    assert_eq!(leftovers(&s, "other").await, Vec::<String>::new(), "{what}");
    assert!(
        !s.table_exists("_other_old").await,
        "{what}: other was swapped"
    );
    assert_eq!(
        request(&s, registry, &dropped).await.status,
        "cancelled",
        "{what}"
    );
}

/// Whether `table` has the `note` column [`ADD_NOTE`] adds.
async fn note_added(s: &Schema, table: &str) -> bool {
    s.definition(table)
        .await
        .0
        .iter()
        .any(|c| c.starts_with("note "))
}

/// `serve` killed with SIGKILL while a postponed request waits at `ready`:
/// the next `serve` takes it up again at `ready` (the same run, its shadow
/// caught up with the writes made meanwhile) and it cuts over exactly on
/// `complete`.
#[tokio::test]
async fn a_killed_serve_resumes_a_request_waiting_at_ready() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "q_kill_ready";
    const ROWS: u64 = 20_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_kill_ready";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, ROWS).await;
    let before = s.definition("sbtest").await;
    let expected = altered_definition(&s, "sbtest", ADD_NOTE).await;
    let cfg = ServerConfig::new(&s, registry, "");
    let uuid = cfg
        .submit("sbtest", ADD_NOTE, &["--postpone-completion"])
        .await;
    let load = Load::start(s.pool.clone(), mirrored_load(&s, ROWS, 211));
    let mut serve = cfg.serve(&[]);
    let r = wait_for_request(
        &s,
        &cfg,
        &uuid,
        &mut serve,
        Duration::from_secs(90),
        "ready",
        |r| r.status == "ready",
    )
    .await;
    let run_id = r.migration_uuid.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    serve.signal(libc::SIGKILL);
    let killed = serve.finish(Duration::from_secs(10)).await;
    assert_eq!(killed.code, -1, "{what}: not killed: {}", killed.output());
    // Writes while no serve runs: the resumed run must bring them over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.definition("sbtest").await,
        before,
        "{what}: cut over by the kill"
    );
    let mut serve = cfg.serve(&["--once"]);
    // Back at ready: resumed (running), caught up, ready again.
    let deadline = Instant::now() + Duration::from_secs(90);
    while transitions(&s, registry, &uuid).await.len() < 6 {
        assert!(
            !serve.try_finished(),
            "{what}: serve exited:\n{}",
            serve.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "{what}: not ready again:\n{}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = request(&s, registry, &uuid).await;
    assert_eq!(r.status, "ready", "{what}: {r:?}");
    assert_eq!(
        r.migration_uuid, run_id,
        "{what}: the restart began a new run: {r:?}"
    );
    assert_eq!(
        s.definition("sbtest").await,
        before,
        "{what}: cut over without complete"
    );
    cfg.migrations("complete", &uuid).await;
    let run = serve.finish(SERVE_ENDS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    assert_eq!(
        run.code,
        0,
        "{what}: serve --once after the kill: {}",
        run.output()
    );
    assert!(stats.transactions > 300, "{what}: {stats:?}");
    let r = request(&s, registry, &uuid).await;
    assert_eq!(r.status, "complete", "{what}: {r:?}\n{}", run.stderr);
    assert_eq!(r.migration_uuid, run_id, "{what}: {r:?}");
    assert_eq!(
        transitions(&s, registry, &uuid).await,
        [
            "requested",
            "queued",
            "running",
            "ready",
            "running",
            "ready",
            "running",
            "complete"
        ],
        "{what}"
    );
    let messages = log_messages(&s, registry, &uuid).await;
    assert!(messages[4].contains("resumed"), "{what}: {messages:?}");
    assert_eq!(
        s.definition("sbtest").await,
        expected,
        "{what}: not altered"
    );
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    assert_eq!(
        leftovers(&s, "sbtest").await,
        Vec::<String>::new(),
        "{what}"
    );
}

/// Two requests side by side in one schema, one held at `ready` while the
/// other completes: the run that ends first must not pull the schema's
/// shared objects (the changelog) from under the one still running, which
/// then cuts over exactly on `complete`.
#[tokio::test]
async fn a_request_outlives_its_neighbour_in_the_schema() {
    // A load of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let what = "q_neighbours";
    const ROWS: u64 = 10_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_neighbours";
    fresh_registry(&s, registry).await;
    table_with_mirror(&s, "a", "mirror_a", ROWS).await;
    table_with_mirror(&s, "b", "mirror_b", ROWS).await;
    let expected = altered_definition(&s, "a", ADD_NOTE).await;
    let cfg = ServerConfig::new(&s, registry, "");
    let held = cfg.submit("b", ADD_NOTE, &["--postpone-completion"]).await;
    let quick = cfg.submit("a", ADD_NOTE, &[]).await;
    let loads = [
        Load::start(s.pool.clone(), load_on(&s, "a", "mirror_a", ROWS, 221)),
        Load::start(s.pool.clone(), load_on(&s, "b", "mirror_b", ROWS, 222)),
    ];
    let mut serve = cfg.serve(&["--concurrency", "2", "--once"]);
    wait_for_request(
        &s,
        &cfg,
        &quick,
        &mut serve,
        Duration::from_secs(90),
        "a complete",
        |r| r.status == "complete",
    )
    .await;
    wait_for_request(
        &s,
        &cfg,
        &held,
        &mut serve,
        Duration::from_secs(90),
        "b ready",
        |r| r.status == "ready",
    )
    .await;
    // b follows the writes at ready for a while after a's run ended.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = request(&s, registry, &held).await;
    assert_eq!(
        r.status,
        "ready",
        "{what}: b left ready: {r:?}\n{}",
        serve.stderr()
    );
    cfg.migrations("complete", &held).await;
    let run = serve.finish(SERVE_ENDS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [la, lb] = loads;
    let stats = [la.stop().await, lb.stop().await];
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    for st in &stats {
        assert!(st.transactions > 100, "{what}: the load barely ran: {st:?}");
    }
    let r = request(&s, registry, &held).await;
    assert_eq!(r.status, "complete", "{what}: b: {r:?}\n{}", run.stderr);
    assert_eq!(
        transitions(&s, registry, &held).await,
        [
            "requested",
            "queued",
            "running",
            "ready",
            "running",
            "complete"
        ],
        "{what}"
    );
    assert_eq!(transitions(&s, registry, &quick).await, PLAIN_RUN, "{what}");
    for (t, m) in [("a", "mirror_a"), ("b", "mirror_b")] {
        assert_eq!(s.definition(t).await, expected, "{what}: {t} not altered");
        assert_equals_mirror(&s, t, m, what).await;
        assert_eq!(leftovers(&s, t).await, Vec::<String>::new(), "{what}");
    }
}

/// A request submitted from a job file (`--job`, its own `[copy]` backend)
/// with `--in-order-completion`: it copies beside an earlier, postponed
/// request on another table, then waits at `ready` until that one has
/// ended, and cuts over by itself right after it.
#[tokio::test]
async fn in_order_completion_waits_for_the_earlier_request() {
    let what = "q_inorder";
    const ROWS: u64 = 4_000;
    let s = Schema::new(what).await;
    let registry = "_wraith_q_inorder";
    fresh_registry(&s, registry).await;
    sysbench_with_mirror(&s, ROWS).await;
    table_with_mirror(&s, "other", "mirror_other", ROWS).await;
    let expected_sbtest = altered_definition(&s, "sbtest", ADD_NOTE).await;
    let expected_other = altered_definition(&s, "other", ADD_NOTE).await;
    let cfg = ServerConfig::new(&s, registry, "");
    let first = cfg
        .submit("sbtest", ADD_NOTE, &["--postpone-completion"])
        .await;
    let job = cfg.file("job.toml");
    std::fs::write(
        &job,
        format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
             [[table]]\nname = \"other\"\nalter = \"{ADD_NOTE}\"\n\n[copy]\nbackend = \"sql\"\n",
            s.port, s.name
        ),
    )
    .expect("write job");
    let job_path = job.display().to_string();
    let run = cfg
        .wraith(&["submit", "CFG", "--job", &job_path, "--in-order-completion"])
        .await;
    assert_eq!(run.code, 0, "{what}: submit --job: {}", run.output());
    let second = run.stdout.trim().to_string();
    let mut c = s.conn().await;
    let options: Option<String> = c
        .exec_first(
            format!("SELECT options FROM `{registry}`._wraith_migrations WHERE uuid = ?"),
            (&second,),
        )
        .await
        .expect("options");
    let options = options.unwrap_or_default();
    assert!(
        options.contains("in_order_completion") && options.contains("backend = \"sql\""),
        "{what}: the job's [copy] and the flag are the request's options: {options:?}"
    );

    let mut serve = cfg.serve(&["--once", "--concurrency", "2"]);
    for uuid in [&first, &second] {
        wait_for_request(
            &s,
            &cfg,
            uuid,
            &mut serve,
            Duration::from_secs(90),
            "ready",
            |r| r.status == "ready",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(request(&s, registry, &second).await.status, "ready");
    assert!(
        !note_added(&s, "other").await,
        "{what}: the in-order request cut over before the earlier one ended"
    );
    let messages = log_messages(&s, registry, &second).await;
    assert!(
        messages.iter().any(|m| m.contains("in-order")),
        "{what}: the wait is explained: {messages:?}"
    );
    cfg.migrations("complete", &first).await;
    let run = serve.finish(SERVE_ENDS).await;
    assert_eq!(run.code, 0, "{what}: serve --once: {}", run.output());
    for uuid in [&first, &second] {
        assert_eq!(
            transitions(&s, registry, uuid).await,
            [
                "requested",
                "queued",
                "running",
                "ready",
                "running",
                "complete"
            ],
            "{what}: {uuid}\n{}",
            run.stderr
        );
    }
    let order: Vec<String> = c
        .exec(
            format!("SELECT uuid FROM `{registry}`._wraith_migrations ORDER BY completed_at, id"),
            (),
        )
        .await
        .expect("order");
    assert_eq!(
        order,
        [first.clone(), second.clone()],
        "{what}: completion order"
    );
    assert_eq!(s.definition("sbtest").await, expected_sbtest, "{what}");
    assert_eq!(s.definition("other").await, expected_other, "{what}");
    assert_equals_mirror(&s, "sbtest", "mirror", what).await;
    assert_equals_mirror(&s, "other", "mirror_other", what).await;
}
