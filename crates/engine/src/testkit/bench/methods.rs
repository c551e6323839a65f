//! Each method's rebuild: the part of a run that is timed.
//!
//! - **native-inplace / native-copy**: one `ALTER TABLE … FORCE` on a
//!   connection of this process.
//! - **wraith-sql / wraith-local**: a child `wraith run --json` of the
//!   benchmark's binary with a generated job config (the backend, a control
//!   socket the blocker and the apply measurement watch, a file checkpoint,
//!   and with `--replica` its replica-lag throttle pointed at the replica:
//!   `[throttle] max_lag`, `heartbeat_interval = "100ms"`,
//!   `[[throttle.replica]]`). **wraith-paced** adds `[throttle]
//!   max_checkpoint_age_pct`, **wraith-deferred** `[copy]
//!   defer_secondary_indexes = true` ([`WraithTuning`]).
//! - **pt-osc**: pt-online-schema-change 3.2.1, `--recursion-method=none`
//!   (it cannot discover a replica on 127.0.0.1 by itself) and, with a
//!   replica, `--check-slave-lag` naming it and `--max-lag`; pt-osc then
//!   checks only that server, which is what `--check-slave-lag` does even with
//!   `--recursion-method=none`.
//! - **gh-ost** (one method per chunk size): gh-ost v1.1.5 on the primary
//!   (`--allow-on-master --assume-rbr`), atomic cut-over, its socket in the
//!   work directory, and with a replica `--throttle-control-replicas` and
//!   `--max-lag-millis`.
//! - **floor**: the server's own floor for the same work, binlog on:
//!   `CREATE TABLE new LIKE t`, its secondary indexes dropped, one `INSERT
//!   INTO new SELECT * FROM t`, one `ALTER TABLE new ADD …` of the dropped
//!   indexes, `RENAME TABLE t TO old, new TO t`, `DROP TABLE old`. It is not
//!   online: under the write load a second session holds `LOCK TABLES t READ`
//!   from before the copy until the RENAME is queued, so the writers wait
//!   (as under native COPY) and none of their changes is lost; the queued
//!   RENAME goes before them when the lock is let go (a pending exclusive
//!   lock goes before pending writes), so they continue on the new table.
//!
//! Command lines are built by plain functions ([`ptosc_args`],
//! [`ghost_args`], [`throttle_toml`]) so they are tested without the tools.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::sync::Notify;

use super::child::{run_child, WraithJob};
use super::harness::{Bench, BENCH_SCHEMA};
use super::pristine::Pristine;
use super::results::{phases_of, Method, MethodRun};
use super::server::ToolConnection;
use super::{BenchError, StepContext};
use crate::server::quote_ident;

/// The floor's way to open the blocker right before its RENAME, and to know
/// it is open.
pub(super) struct BlockerHandshake {
    pub(super) open: Arc<Notify>,
    pub(super) opened: Arc<Notify>,
}

/// With `--replica`: where the replica is and the lag the tools throttle at.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplicaThrottle {
    pub(super) port: u16,
    pub(super) max_lag: Duration,
}

impl Bench {
    /// Runs `run.method` on `pristine`'s restored table; `name` names its
    /// files (output, socket, config) in the work directory.
    pub(super) async fn execute(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut MethodRun,
        name: &str,
        handshake: Option<&BlockerHandshake>,
    ) -> Result<(), BenchError> {
        let qt = format!(
            "{}.{}",
            quote_ident(BENCH_SCHEMA),
            quote_ident(&pristine.table)
        );
        match run.method {
            Method::NativeInplace => conn
                .query_drop(format!(
                    "ALTER TABLE {qt} FORCE, ALGORITHM=INPLACE, LOCK=NONE"
                ))
                .await
                .step("ALTER TABLE ... ALGORITHM=INPLACE"),
            Method::NativeCopy => conn
                .query_drop(format!("ALTER TABLE {qt} FORCE, ALGORITHM=COPY"))
                .await
                .step("ALTER TABLE ... ALGORITHM=COPY"),
            Method::WraithSql
            | Method::WraithLocal
            | Method::WraithPaced
            | Method::WraithDeferred => self.run_wraith(pristine, run, name).await,
            Method::PtOsc => self.run_ptosc(pristine, run, name).await,
            Method::Ghost { chunk } => self.run_ghost(pristine, run, name, chunk).await,
            Method::Floor => {
                self.run_floor(conn, pristine, run.condition.loaded(), handshake)
                    .await
            }
        }
    }

    async fn run_wraith(
        &self,
        pristine: &Pristine,
        run: &mut MethodRun,
        name: &str,
    ) -> Result<(), BenchError> {
        let backend = if run.method == Method::WraithLocal {
            "local"
        } else {
            "sql"
        };
        let tuning = WraithTuning {
            pace: (run.method == Method::WraithPaced)
                .then_some(self.settings.paced_checkpoint_age_pct),
            defer_indexes: run.method == Method::WraithDeferred,
        };
        let job = self.wraith_job(pristine, backend, name, "", tuning)?;
        let child = job.run().await?;
        run.peak_rss_mib = child.peak_rss_mib;
        let report = child.report()?;
        run.cutover_blocked_ms = report["cutover_blocked_ms"].as_f64();
        run.phases = phases_of(&report);
        run.wraith_report = Some(report);
        Ok(())
    }

    /// The replica the tools throttle on (with `--replica`).
    pub(super) fn replica_throttle(&self) -> Option<ReplicaThrottle> {
        self.replica.as_ref().map(|r| ReplicaThrottle {
            port: r.port(),
            max_lag: self.settings.max_lag,
        })
    }

    /// A `wraith run` of `pristine`'s table in [`BENCH_SCHEMA`] with `backend`;
    /// `cutover_toml` goes under `[cutover]`.
    pub(super) fn wraith_job(
        &self,
        pristine: &Pristine,
        backend: &str,
        name: &str,
        cutover_toml: &str,
        tuning: WraithTuning,
    ) -> Result<WraithJob, BenchError> {
        let dir = self.work_dir.path();
        // A sort directory of its own: a failed run's engines are never found by the next.
        let sort_dir = dir.join(format!("sort-{name}"));
        let socket = self.socket_path(name);
        let toml = format!(
            "{source}\n[[table]]\nname = {table:?}\nalter = \"FORCE\"\n\n[copy]\nbackend = {backend:?}\n{defer}\n\
             [local]\nsort_dir = {sort:?}\n\n[cutover]\ndrop_old_table = true\n{cutover_toml}\n\
             [control]\nsocket = {socket:?}\n\n\
             [checkpoint]\nstore = \"file\"\npath = {checkpoint:?}\n\n{throttle}",
            source = self.server.source_toml()?,
            table = pristine.table,
            sort = sort_dir.display().to_string(),
            socket = socket.display().to_string(),
            checkpoint = dir.join(format!("{name}.checkpoint")).display().to_string(),
            defer = if tuning.defer_indexes {
                "defer_secondary_indexes = true\n"
            } else {
                ""
            },
            throttle = throttle_toml(self.replica_throttle(), tuning.pace),
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml).step("writing the run's config")?;
        let mut command = Command::new(&self.settings.wraith_exe);
        command.arg("run").arg("--json").arg(&config_path);
        Ok(WraithJob {
            command,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            sort_dir,
            socket,
        })
    }

    /// The control socket of a run named `name` (wraith's, gh-ost's).
    pub(super) fn socket_path(&self, name: &str) -> PathBuf {
        self.work_dir.path().join(format!("{name}.sock"))
    }

    /// The files a child named `name` writes its output to.
    pub(super) fn output_files(&self, name: &str) -> Vec<PathBuf> {
        ["out", "err"]
            .iter()
            .map(|ext| self.work_dir.path().join(format!("{name}.{ext}")))
            .collect()
    }

    async fn run_ptosc(
        &self,
        pristine: &Pristine,
        run: &mut MethodRun,
        name: &str,
    ) -> Result<(), BenchError> {
        let tool = self
            .ptosc
            .as_ref()
            .ok_or_else(|| BenchError::Failed("pt-online-schema-change is not installed".into()))?;
        let mut cmd = Command::new(tool);
        cmd.args(ptosc_args(
            &self.server.ptosc_dsn(&pristine.table)?,
            self.replica_throttle(),
        ));
        let child = run_child(cmd, self.work_dir.path(), name).await?;
        run.peak_rss_mib = child.peak_rss_mib;
        child.succeeded("pt-online-schema-change")?;
        Ok(())
    }

    async fn run_ghost(
        &self,
        pristine: &Pristine,
        run: &mut MethodRun,
        name: &str,
        chunk: u64,
    ) -> Result<(), BenchError> {
        let tool = self.ghost.as_ref().ok_or_else(|| {
            BenchError::Failed("gh-ost is not installed (give --ghost-bin PATH)".into())
        })?;
        let mut cmd = Command::new(tool);
        cmd.args(ghost_args(
            &self.server.tool_connection()?,
            &pristine.table,
            chunk,
            &self.socket_path(name),
            self.replica_throttle(),
        ));
        let child = run_child(cmd, self.work_dir.path(), name).await?;
        run.peak_rss_mib = child.peak_rss_mib;
        child.succeeded("gh-ost")?;
        Ok(())
    }

    /// The floor (see the module's page). `locked`: hold the writers off
    /// while the copy runs (under the write load).
    async fn run_floor(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        locked: bool,
        handshake: Option<&BlockerHandshake>,
    ) -> Result<(), BenchError> {
        let qs = quote_ident(BENCH_SCHEMA);
        let qt = format!("{qs}.{}", quote_ident(&pristine.table));
        let new = format!(
            "{qs}.{}",
            quote_ident(&format!("_{}_floor", pristine.table))
        );
        let old = format!(
            "{qs}.{}",
            quote_ident(&format!("_{}_floor_old", pristine.table))
        );
        conn.query_drop(format!("DROP TABLE IF EXISTS {new}, {old}"))
            .await
            .step("dropping the floor's leftovers")?;
        conn.query_drop(format!("CREATE TABLE {new} LIKE {qt}"))
            .await
            .step("CREATE TABLE … LIKE for the floor")?;
        let create: Option<(String, String)> = conn
            .query_first(format!("SHOW CREATE TABLE {new}"))
            .await
            .step("SHOW CREATE TABLE of the floor's table")?;
        let indexes = secondary_indexes(&create.map(|(_, sql)| sql).unwrap_or_default());
        if !indexes.is_empty() {
            let drops: Vec<String> = indexes
                .iter()
                .map(|(name, _)| format!("DROP INDEX {}", quote_ident(name)))
                .collect();
            conn.query_drop(format!("ALTER TABLE {new} {}", drops.join(", ")))
                .await
                .step("dropping the floor table's secondary indexes")?;
        }
        let mut holder = None;
        if locked {
            let mut h = self
                .pool
                .get_conn()
                .await
                .step("connecting the lock holder")?;
            h.query_drop(format!("LOCK TABLES {qt} READ"))
                .await
                .step("LOCK TABLES … READ (the floor under load)")?;
            holder = Some(h);
        }
        let built = self
            .copy_and_index(conn, &qt, &new, &indexes, handshake)
            .await;
        let rename = format!("RENAME TABLE {qt} TO {old}, {new} TO {qt}");
        match holder {
            None => {
                built?;
                conn.query_drop(&rename).await.step("the floor's RENAME")?;
            }
            Some(mut holder) => {
                let renamed = match built {
                    Ok(()) => self.rename_behind(conn, &mut holder, rename).await,
                    Err(e) => Err(e),
                };
                // Whatever happened, the writers are let go (a pooled
                // connection is reset too, but not before it is reused).
                let _ = holder.query_drop("UNLOCK TABLES").await;
                renamed?;
            }
        }
        conn.query_drop(format!("DROP TABLE {old}"))
            .await
            .step("dropping the floor's old table")?;
        Ok(())
    }

    /// The floor's copy and index build, and the blocker opened right
    /// before the RENAME.
    async fn copy_and_index(
        &self,
        conn: &mut Conn,
        qt: &str,
        new: &str,
        indexes: &[(String, String)],
        handshake: Option<&BlockerHandshake>,
    ) -> Result<(), BenchError> {
        conn.query_drop(format!("INSERT INTO {new} SELECT * FROM {qt}"))
            .await
            .step("the floor's INSERT … SELECT")?;
        if !indexes.is_empty() {
            let adds: Vec<String> = indexes
                .iter()
                .map(|(_, definition)| format!("ADD {definition}"))
                .collect();
            conn.query_drop(format!("ALTER TABLE {new} {}", adds.join(", ")))
                .await
                .step("the floor's index build")?;
        }
        if let Some(hs) = handshake {
            hs.open.notify_one();
            // Shortly before the RENAME: once the blocker holds its lock, or soon.
            let _ = tokio::time::timeout(Duration::from_secs(5), hs.opened.notified()).await;
        }
        Ok(())
    }

    /// Under the load: `rename` queued from a session of its own while
    /// `holder` keeps the writers off, then the lock let go, so the RENAME
    /// goes before the queued writers.
    async fn rename_behind(
        &self,
        conn: &mut Conn,
        holder: &mut Conn,
        rename: String,
    ) -> Result<(), BenchError> {
        let mut renamer = self.pool.get_conn().await.step("connecting the renamer")?;
        let renamer_id: Option<u64> = renamer
            .query_first("SELECT CONNECTION_ID()")
            .await
            .step("SELECT CONNECTION_ID()")?;
        let renaming =
            tokio::spawn(
                async move { renamer.query_drop(rename).await.step("the floor's RENAME") },
            );
        let queued = wait_until_queued(conn, renamer_id, &renaming).await;
        holder
            .query_drop("UNLOCK TABLES")
            .await
            .step("UNLOCK TABLES (the floor under load)")?;
        // The RENAME is awaited either way: it goes on once the lock is let go.
        let renamed = renaming.await.step("waiting for the floor's RENAME")?;
        queued?;
        renamed
    }
}

/// Waits until the session `id` waits for a metadata lock (its RENAME is
/// queued) or its task has ended.
async fn wait_until_queued(
    conn: &mut Conn,
    id: Option<u64>,
    task: &tokio::task::JoinHandle<Result<(), BenchError>>,
) -> Result<(), BenchError> {
    let Some(id) = id else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !task.is_finished() && Instant::now() < deadline {
        let state: Option<Option<String>> = conn
            .exec_first(
                "SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .await
            .step("reading the renamer's state")?;
        if state.flatten().is_some_and(|s| s.contains("metadata lock")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The secondary indexes in a `SHOW CREATE TABLE`: (name, definition as
/// `ALTER TABLE … ADD` takes it).
fn secondary_indexes(create: &str) -> Vec<(String, String)> {
    create
        .lines()
        .map(|line| line.trim().trim_end_matches(','))
        .filter(|line| {
            [
                "KEY ",
                "UNIQUE KEY ",
                "FULLTEXT KEY ",
                "SPATIAL KEY ",
                "VECTOR KEY ",
            ]
            .iter()
            .any(|p| line.starts_with(p))
        })
        .filter_map(|line| {
            let start = line.find('`')? + 1;
            let end = start + line[start..].find('`')?;
            Some((line[start..end].replace("``", "`"), line.to_string()))
        })
        .collect()
}

/// pt-online-schema-change's arguments after the DSN: the rebuild, and with
/// a replica, its lag check on it.
pub(super) fn ptosc_args(dsn: &str, replica: Option<ReplicaThrottle>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--alter",
        "ENGINE=InnoDB",
        dsn,
        "--recursion-method=none",
        "--no-check-replication-filters",
    ]
    .map(String::from)
    .to_vec();
    if let Some(r) = replica {
        // --check-slave-lag is used even with --recursion-method=none (3.2.1);
        // --max-lag takes whole seconds.
        args.push(format!("--check-slave-lag=h=127.0.0.1,P={},u=root", r.port));
        args.push(format!(
            "--max-lag={}",
            r.max_lag.as_secs_f64().ceil().max(1.0) as u64
        ));
    }
    args.push("--execute".into());
    args
}

/// gh-ost's arguments (v1.1.5 on MariaDB 10.11).
pub(super) fn ghost_args(
    server: &ToolConnection,
    table: &str,
    chunk: u64,
    socket: &Path,
    replica: Option<ReplicaThrottle>,
) -> Vec<String> {
    let mut args = vec![
        format!("--host={}", server.host),
        format!("--port={}", server.port),
        format!("--user={}", server.user),
        format!("--password={}", server.password.as_deref().unwrap_or("")),
        format!("--database={BENCH_SCHEMA}"),
        format!("--table={table}"),
        "--alter=ENGINE=InnoDB".into(),
        "--allow-on-master".into(),
        "--assume-rbr".into(),
        "--initially-drop-ghost-table".into(),
        "--initially-drop-old-table".into(),
        "--ok-to-drop-table".into(),
        format!("--chunk-size={chunk}"),
        format!("--serve-socket-file={}", socket.display()),
        "--initially-drop-socket-file".into(),
        "--verbose".into(),
    ];
    if let Some(r) = replica {
        args.push(format!("--throttle-control-replicas=127.0.0.1:{}", r.port));
        args.push(format!(
            "--max-lag-millis={}",
            r.max_lag.as_millis().max(100)
        ));
    }
    args.push("--execute".into());
    args
}

/// What a wraith method changes in its job config.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WraithTuning {
    /// `[throttle] max_checkpoint_age_pct` (`wraith-paced`).
    pub(super) pace: Option<u64>,
    /// `[copy] defer_secondary_indexes = true` (`wraith-deferred`).
    pub(super) defer_indexes: bool,
}

/// The `[throttle]` section of wraith's job config: with a replica, its lag
/// throttle pointed at it with a 100 ms heartbeat; with `pace`, the write
/// debt's `max_checkpoint_age_pct`; nothing otherwise.
pub(super) fn throttle_toml(replica: Option<ReplicaThrottle>, pace: Option<u64>) -> String {
    if replica.is_none() && pace.is_none() {
        return String::new();
    }
    let mut toml = String::from("[throttle]\n");
    if let Some(pct) = pace {
        toml.push_str(&format!("max_checkpoint_age_pct = {pct}\n"));
    }
    if let Some(r) = replica {
        toml.push_str(&format!(
            "max_lag = \"{}ms\"\nheartbeat_interval = \"100ms\"\n\n\
             [[throttle.replica]]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\n",
            r.max_lag.as_millis().max(10),
            r.port
        ));
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> Option<ReplicaThrottle> {
        Some(ReplicaThrottle {
            port: 4407,
            max_lag: Duration::from_millis(1500),
        })
    }

    #[test]
    fn ghost_gets_the_documented_flags() {
        let server = ToolConnection {
            host: "127.0.0.1".into(),
            port: 4406,
            user: "root".into(),
            password: None,
        };
        let socket = Path::new("/tmp/w/x.sock");
        let args = ghost_args(&server, "sbtest1", 10000, socket, None);
        for expected in [
            "--host=127.0.0.1",
            "--port=4406",
            "--user=root",
            "--password=",
            "--database=wraith_bench",
            "--table=sbtest1",
            "--alter=ENGINE=InnoDB",
            "--allow-on-master",
            "--assume-rbr",
            "--initially-drop-ghost-table",
            "--initially-drop-old-table",
            "--ok-to-drop-table",
            "--chunk-size=10000",
            "--serve-socket-file=/tmp/w/x.sock",
            "--initially-drop-socket-file",
            "--verbose",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected}: {args:?}");
        }
        assert_eq!(args.last().map(String::as_str), Some("--execute"));
        assert!(!args.iter().any(|a| a.contains("replicas")));
        let args = ghost_args(&server, "sbtest1", 1000, socket, replica());
        assert!(args.contains(&"--throttle-control-replicas=127.0.0.1:4407".to_string()));
        assert!(args.contains(&"--max-lag-millis=1500".to_string()));
        assert_eq!(args.last().map(String::as_str), Some("--execute"));
    }

    #[test]
    fn ptosc_checks_the_replica_it_is_given() {
        let dsn = "D=wraith_bench,t=sbtest1,h=127.0.0.1,P=4406,u=root";
        let args = ptosc_args(dsn, None);
        assert_eq!(args[2], dsn);
        assert!(args.contains(&"--recursion-method=none".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--check-slave-lag")));
        let args = ptosc_args(dsn, replica());
        assert!(args.contains(&"--check-slave-lag=h=127.0.0.1,P=4407,u=root".to_string()));
        assert!(args.contains(&"--max-lag=2".to_string()));
        assert_eq!(args.last().map(String::as_str), Some("--execute"));
    }

    #[test]
    fn wraith_throttles_on_the_replica_with_a_valid_config() {
        assert_eq!(throttle_toml(None, None), "");
        let paced = crate::config::Config::parse(
            &format!(
                "[source]\nuser = \"root\"\ndatabase = \"d\"\n\n[[table]]\nname = \"t\"\nalter = \"FORCE\"\n\n{}",
                throttle_toml(replica(), Some(40))
            ),
            "bench",
        )
        .expect("a valid config");
        assert_eq!(paced.throttle.max_checkpoint_age_pct, 40);
        assert_eq!(paced.throttle.replicas.len(), 1);
        let toml = format!(
            "[source]\nhost = \"127.0.0.1\"\nport = 4406\nuser = \"root\"\ndatabase = \"wraith_bench\"\n\n\
             [[table]]\nname = \"sbtest1\"\nalter = \"FORCE\"\n\n{}",
            throttle_toml(replica(), None)
        );
        let config = crate::config::Config::parse(&toml, "bench").expect("a valid config");
        assert_eq!(
            config.throttle.max_lag.map(|l| l.0),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            config.throttle.heartbeat_interval.0,
            Duration::from_millis(100)
        );
        assert_eq!(config.throttle.replicas.len(), 1);
        assert_eq!(config.throttle.replicas[0].port, 4407);
    }

    #[test]
    fn the_floor_finds_the_secondary_indexes() {
        let create = "CREATE TABLE `uuid1` (\n  `id` binary(16) NOT NULL,\n  `n` int(10) unsigned NOT NULL,\n  `k` int(10) unsigned NOT NULL DEFAULT 0,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `n_1` (`n`),\n  KEY `k_1` (`k`)\n) ENGINE=InnoDB";
        assert_eq!(
            secondary_indexes(create),
            vec![
                ("n_1".to_string(), "UNIQUE KEY `n_1` (`n`)".to_string()),
                ("k_1".to_string(), "KEY `k_1` (`k`)".to_string()),
            ]
        );
    }
}
