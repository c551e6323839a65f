//! The integration-test harness: one private MariaDB per test run, a fresh
//! schema per test, and helpers to run the real `wraith` binary against it.
//!
//! Nothing here mocks the database. The server is started on first use and
//! dies with the test process (see `wraith_engine::testkit::scratch`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};

/// The server shared by every test of this run.
/// A table's columns and its indexes' columns, one line each ([`Schema::definition`]).
pub type Definition = (Vec<String>, Vec<String>);

pub fn server() -> &'static ScratchServer {
    static SERVER: OnceLock<ScratchServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ScratchServer::start(ScratchOptions::default())
            .unwrap_or_else(|e| panic!("cannot start the scratch server: {e}"))
    })
}

/// A second server with the binlog settings wraith refuses
/// (`STATEMENT` format, `MINIMAL` row image and metadata).
pub fn misconfigured_server() -> &'static ScratchServer {
    static SERVER: OnceLock<ScratchServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ScratchServer::start(ScratchOptions {
            buffer_pool: "64M".into(),
            binlog_format: "STATEMENT".into(),
            binlog_row_image: "MINIMAL".into(),
            extra_args: vec!["--binlog-row-metadata=MINIMAL".into()],
            ..ScratchOptions::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the misconfigured scratch server: {e}"))
    })
}

/// A server whose `time_zone` is `+05:00`, not UTC: the server's own ALTER
/// converts TIMESTAMPs in that zone.
pub fn tz_server() -> &'static ScratchServer {
    static SERVER: OnceLock<ScratchServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ScratchServer::start(ScratchOptions {
            buffer_pool: "64M".into(),
            extra_args: vec!["--default-time-zone=+05:00".into()],
            ..ScratchOptions::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the +05:00 scratch server: {e}"))
    })
}

/// A fresh, empty schema on a server, with a pool connected to it (a clone
/// shares the pool, for a load running beside the test).
#[derive(Clone)]
pub struct Schema {
    pub name: String,
    pub port: u16,
    pub pool: Pool,
}

impl Schema {
    /// Drops and recreates schema `name` on the shared server.
    pub async fn new(name: &str) -> Schema {
        Schema::on(server(), name).await
    }

    pub async fn on(server: &ScratchServer, name: &str) -> Schema {
        let admin = Pool::new(server.opts(None));
        let mut conn = admin.get_conn().await.expect("connect to scratch server");
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .expect("drop schema");
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create schema");
        drop(conn);
        admin.disconnect().await.ok();
        Schema {
            name: name.to_string(),
            port: server.port(),
            pool: Pool::new(server.opts(Some(name))),
        }
    }

    pub async fn conn(&self) -> Conn {
        self.pool.get_conn().await.expect("connect to schema")
    }

    /// Runs statements separated by `;` at line ends.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Where the server's binlog ends now: its file and position.
    pub async fn binlog_now(&self) -> (String, u64) {
        let mut c = self.conn().await;
        let row: mysql_async::Row = c
            .query_first("SHOW MASTER STATUS")
            .await
            .expect("SHOW MASTER STATUS")
            .expect("the scratch server writes a binlog");
        (
            row.get::<String, _>(0).expect("File"),
            row.get::<u64, _>(1).expect("Position"),
        )
    }

    /// Every binlog event of the server from `from` (as [`Schema::binlog_now`]
    /// gave it) to the end, across files: whatever other tests wrote too.
    pub async fn binlog_events_since(&self, from: &(String, u64)) -> Vec<BinlogEvent> {
        let mut c = self.conn().await;
        let logs: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.expect("SHOW BINARY LOGS");
        let mut events = Vec::new();
        for (file, _) in logs.iter().filter(|(f, _)| *f >= from.0) {
            let start = if *file == from.0 { from.1 } else { 4 };
            let rows: Vec<mysql_async::Row> = c
                .query(format!("SHOW BINLOG EVENTS IN '{file}' FROM {start}"))
                .await
                .expect("SHOW BINLOG EVENTS");
            events.extend(rows.into_iter().map(|mut e| {
                BinlogEvent {
                    kind: e.take("Event_type").unwrap_or_default(),
                    pos: e.take("Pos").unwrap_or_default(),
                    end: e.take("End_log_pos").unwrap_or_default(),
                    info: e
                        .take::<Option<String>, _>("Info")
                        .flatten()
                        .unwrap_or_default(),
                }
            }));
        }
        events
    }

    /// A minimal config for this schema; `rest` is appended verbatim.
    pub fn config(&self, table: &str, alter: &str, rest: &str) -> String {
        format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
             [[table]]\nname = \"{table}\"\nalter = {alter:?}\n\n{rest}\n",
            self.port, self.name
        )
    }

    /// What a table is: its definition and every row, in key order, as text
    /// computed by the server. Two equal snapshots mean an untouched table.
    pub async fn snapshot(&self, table: &str) -> TableSnapshot {
        let mut c = self.conn().await;
        let create: Option<(String, String)> = c
            .query_first(format!("SHOW CREATE TABLE `{table}`"))
            .await
            .expect("show create table");
        let cols: Vec<(String, String)> = c
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&self.name, table),
            )
            .await
            .expect("columns");
        // Every value as the hex of its bytes or exact text; FLOAT widened to
        // DOUBLE because the text protocol prints FLOAT with 6 digits only.
        let hexed: Vec<String> = cols
            .iter()
            .map(|(c, t)| {
                let v = if t == "float" {
                    format!("CAST(`{c}` AS DOUBLE)")
                } else {
                    format!("`{c}`")
                };
                format!("IFNULL(HEX(CAST({v} AS BINARY)), 'NULL')")
            })
            .collect();
        let rows: Vec<String> = c
            .query(format!(
                "SELECT CONCAT_WS(',', {}) FROM `{table}` ORDER BY 1",
                hexed.join(", ")
            ))
            .await
            .expect("rows");
        TableSnapshot {
            create: create.map(|(_, s)| s).unwrap_or_default(),
            rows,
        }
    }

    /// The rows of a table as [`Schema::snapshot`] computes them, without the definition.
    pub async fn rows(&self, table: &str) -> Vec<String> {
        self.snapshot(table).await.rows
    }

    /// `SELECT COUNT(*)` of a table.
    pub async fn count(&self, table: &str) -> u64 {
        let mut c = self.conn().await;
        let n: Option<u64> = c
            .query_first(format!("SELECT COUNT(*) FROM `{table}`"))
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        n.unwrap_or(0)
    }

    /// A table's columns and indexes as the server describes them.
    pub async fn definition(&self, table: &str) -> Definition {
        let mut c = self.conn().await;
        let columns: Vec<String> = c
            .exec(
                "SELECT CONCAT_WS(' ', COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, IFNULL(COLUMN_DEFAULT, '-')) \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&self.name, table),
            )
            .await
            .expect("columns");
        let indexes: Vec<String> = c
            .exec(
                "SELECT CONCAT_WS(' ', INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME) \
                 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (&self.name, table),
            )
            .await
            .expect("indexes");
        (columns, indexes)
    }

    pub async fn table_exists(&self, table: &str) -> bool {
        let mut c = self.conn().await;
        let n: Option<u64> = c
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.name, table),
            )
            .await
            .expect("information_schema");
        n.unwrap_or(0) > 0
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct TableSnapshot {
    pub create: String,
    pub rows: Vec<String>,
}

/// One row of `SHOW BINLOG EVENTS`.
#[derive(Debug, Clone)]
pub struct BinlogEvent {
    /// `Event_type`: `Gtid`, `Query`, `Table_map`, `Write_rows_v1`, ...
    pub kind: String,
    pub pos: u64,
    pub end: u64,
    pub info: String,
}

/// The `wraith` binary built by this `cargo test` run.
pub fn wraith_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/it-<hash> -> target/<profile>/wraith
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = dir.join("wraith");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// Result of one `wraith` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Everything it printed, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Writes `config` to a temp file and runs `wraith <args...> <file>`.
pub async fn wraith_with_config(args: &[&str], config: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wraith.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = tokio::process::Command::new(wraith_bin());
    cmd.args(args).arg(&path).kill_on_drop(true);
    // No test may hang CI: a run that takes this long has failed.
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("wraith {args:?} did not finish within 300s"))
        .expect("run wraith");
    Run::from(out)
}

/// A `wraith` child process whose stderr is collected line by line.
pub struct WraithChild {
    child: tokio::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl WraithChild {
    /// Starts `wraith <args...> <config file>`.
    pub fn spawn(args: &[&str], config: &str) -> WraithChild {
        WraithChild::spawn_with_env(args, config, &[])
    }

    /// Starts `wraith <args...> <config file>` with extra environment
    /// variables (test hooks such as `WRAITH_TEST_REGION_PAUSE_MS`).
    pub fn spawn_with_env(args: &[&str], config: &str, env: &[(&str, &str)]) -> WraithChild {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wraith.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = tokio::process::Command::new(wraith_bin())
            .args(args)
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wraith");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        let err_reader = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut out = child.stdout.take().expect("stdout");
        let sink = stdout.clone();
        let out_reader = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            sink.lock().expect("stdout").push_str(&s);
        });
        WraithChild {
            child,
            lines,
            stdout,
            readers: vec![err_reader, out_reader],
            _dir: dir,
        }
    }

    /// The config file it runs with (rewrite it and send SIGHUP to reload).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("wraith.toml")
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits until a stderr line contains `needle`; panics after `timeout`
    /// or if wraith exits first.
    pub async fn wait_for(&mut self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                panic!(
                    "wraith exited ({status}) before printing {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wraith did not print {needle:?} within {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits for the exit and returns what it printed.
    pub async fn finish(mut self, timeout: std::time::Duration) -> Run {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "wraith did not finish within {timeout:?}:\n{}",
                    self.stderr()
                )
            })
            .expect("wait");
        for r in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), r).await;
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout.lock().expect("stdout").clone(),
            stderr: self.stderr(),
        }
    }
}

impl WraithChild {
    /// Whether the process has exited already.
    pub fn try_finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// Creates a sysbench-like `sbtest` with `rows` rows and an identical `mirror`:
/// a load that writes both in the same transactions makes `mirror` the oracle
/// of what `sbtest` must contain after a rebuild.
pub async fn sysbench_with_mirror(s: &Schema, rows: u64) {
    let mut c = s.conn().await;
    wraith_engine::testkit::workload::create_sysbench_table(&mut c, &s.name, "sbtest", rows)
        .await
        .expect("create sbtest");
    c.query_drop("CREATE TABLE mirror LIKE sbtest; INSERT INTO mirror SELECT * FROM sbtest")
        .await
        .expect("create mirror");
}

/// The write load most tests run on `sbtest` (made by [`sysbench_with_mirror`]):
/// every statement also written to `mirror` in the same transaction, primary
/// keys changed too, 200 tx/s on 2 connections over ids up to `rows`. Tests
/// adjust fields with struct update syntax.
pub fn mirrored_load(
    s: &Schema,
    rows: u64,
    seed: u64,
) -> wraith_engine::testkit::workload::LoadConfig {
    wraith_engine::testkit::workload::LoadConfig {
        schema: s.name.clone(),
        table: "sbtest".into(),
        rate: 200,
        connections: 2,
        seed,
        max_id: rows,
        change_keys: true,
        mirror: Some("mirror".into()),
        hot_keys: 0,
    }
}

/// Whether `sbtest` has the `note` column the tests' ALTERs add (it is the
/// rebuilt table, so the cut-over happened).
pub async fn note_column_exists(s: &Schema) -> bool {
    let mut c = s.conn().await;
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'sbtest' AND COLUMN_NAME = 'note'")
        .await
        .unwrap();
    n == Some(1)
}

/// `sbtest` (rebuilt, with `note` added) equals `mirror` on the old columns.
pub async fn assert_matches_mirror(s: &Schema) {
    assert_table_matches_mirror(s, "sbtest").await
}

pub async fn assert_table_matches_mirror(s: &Schema, table: &str) {
    let mut c = s.conn().await;
    let diff: Vec<(u64, String)> = c
        .query(
            format!("SELECT m.id, 'missing or different in {table}' FROM mirror m LEFT JOIN {table} t ON t.id = m.id \
               WHERE t.id IS NULL OR NOT (t.k <=> m.k AND BINARY t.c <=> BINARY m.c AND BINARY t.pad <=> BINARY m.pad) \
             UNION ALL \
             SELECT t.id, 'only in {table}' FROM {table} t LEFT JOIN mirror m ON m.id = t.id WHERE m.id IS NULL \
             LIMIT 20"),
        )
        .await
        .unwrap();
    // For debugging a divergence: keep the scratch server (and its binlog) up.
    if !diff.is_empty() && std::env::var_os("WRAITH_TEST_HOLD").is_some() {
        eprintln!("HOLD: port {} schema {} diff {diff:?}", s.port, s.name);
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    assert!(
        diff.is_empty(),
        "rebuilt table differs from the mirror: {diff:?}"
    );
    let counts: Option<(u64, u64)> = c
        .query_first(format!(
            "SELECT (SELECT COUNT(*) FROM {table}), (SELECT COUNT(*) FROM mirror)"
        ))
        .await
        .unwrap();
    let (a, b) = counts.unwrap();
    assert_eq!(a, b);
    assert!(a > 0);
}

/// A file that holds a run before its cut-over while it exists, through
/// `[cutover] postpone_flag_file`; dropping it lets the cut-over go.
pub struct PostponeFlag(tempfile::NamedTempFile);

impl PostponeFlag {
    pub fn new() -> PostponeFlag {
        PostponeFlag(tempfile::NamedTempFile::new().expect("flag file"))
    }

    /// The `[cutover]` line that names this flag file.
    pub fn setting(&self) -> String {
        format!(
            "postpone_flag_file = {:?}",
            self.0.path().display().to_string()
        )
    }
}

impl Default for PostponeFlag {
    fn default() -> Self {
        PostponeFlag::new()
    }
}

/// The seed of a test's random kills: `WRAITH_KILL_SEED` to replay a run,
/// else the clock. Printed by the caller, so a failure can be replayed.
pub fn kill_seed() -> u64 {
    std::env::var("WRAITH_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        })
}

/// The state wraith was in when killed: the last `to=...` of its state log.
pub fn last_state(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.split("to=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| "Initial".into())
}

/// Headless Chromium (Debian's `chromium` package, installed by
/// `scripts/setup`) for the tests that judge a page as a browser renders it.
/// The tests install nothing: a missing browser is a clear failure.
pub mod browser {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// The Chromium binary on PATH (`chromium`, or `chromium-browser` as some
    /// distributions name it).
    pub fn chromium() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for name in ["chromium", "chromium-browser"] {
            for dir in std::env::split_paths(&path) {
                let bin = dir.join(name);
                if bin.is_file() {
                    return bin;
                }
            }
        }
        panic!(
            "no `chromium` or `chromium-browser` on PATH: the page tests render in headless \
             Chromium; run scripts/setup (it installs Debian's chromium package)"
        )
    }

    /// Where tests keep what people look at afterwards (screenshots):
    /// `<target>/test-artifacts/`, created on first use. The target dir is
    /// `CARGO_TARGET_DIR` when set, else the workspace's `target/`.
    pub fn artifacts_dir() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let dir = target.join("test-artifacts");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }

    /// Loads `url`, lets its scripts run for 5 s of virtual time (timers
    /// fire at once; fetches are waited for) and returns the DOM serialized.
    pub async fn dump_dom(url: &str) -> String {
        let out = run(&["--dump-dom".to_string(), url.to_string()]).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Loads `url` like [`dump_dom`] in a 1280x800 window and saves a PNG at `path`.
    pub async fn screenshot(url: &str, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        run(&[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,800".to_string(),
            url.to_string(),
        ])
        .await;
        assert!(
            path.is_file(),
            "chromium wrote no screenshot at {}",
            path.display()
        );
    }

    /// Runs headless Chromium with a fresh profile; returns its stdout.
    async fn run(args: &[String]) -> Vec<u8> {
        let profile = tempfile::tempdir().expect("tempdir");
        let bin = chromium();
        let mut cmd = tokio::process::Command::new(&bin);
        // --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{} {args:?} did not finish within 120 s", bin.display()))
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{} {args:?} failed ({}):\n{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}
