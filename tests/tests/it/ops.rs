//! Operating a run: throttling (flag file, server load, commanded, SIGHUP
//! reload), the control socket, hooks. Every test drives a real `wraith run`
//! against the scratch server and watches it through its control socket and
//! its stderr. Copies are made slow (small chunks, one thread) so that pauses
//! can be seen: while throttled, the rows copied must stop increasing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use wraith_engine::testkit::workload::{Load, LoadConfig};
use wraith_tests::{
    assert_matches_mirror, mirrored_load, note_column_exists, sysbench_with_mirror, Schema,
    WraithChild,
};

const ALTER: &str = "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n'";

/// A slow copy: one thread, tiny chunks.
fn slow_config(s: &Schema, dir: &Path, extra: &str) -> String {
    s.config(
        "sbtest",
        ALTER,
        &format!(
            "[copy]\nbackend = \"sql\"\nthreads = 1\ninitial_chunk_rows = 50\nchunk_target = \"1ms\"\n\n\
             [local]\nsort_dir = {:?}\n\n[cutover]\nlock_wait_timeout = \"1s\"\n\n\
             [control]\nsocket = {:?}\n\n{extra}\n",
            dir.join("sort").display().to_string(),
            socket_path(dir).display().to_string(),
        ),
    )
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("ctl.sock")
}

/// A line-protocol client of a run's control socket.
struct Control {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Control {
    /// Connects once the run has opened its socket.
    async fn connect(dir: &Path) -> Control {
        let path = socket_path(dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stream) = UnixStream::connect(&path).await {
                let (read, write) = stream.into_split();
                return Control {
                    lines: BufReader::new(read).lines(),
                    write,
                };
            }
            assert!(Instant::now() < deadline, "no control socket at {path:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one command and reads `n` reply lines.
    async fn send_lines(&mut self, command: &str, n: usize) -> String {
        self.write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to the control socket");
        let mut out = Vec::new();
        for _ in 0..n {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no reply to {command:?}"))
                .expect("read the control socket")
                .unwrap_or_else(|| panic!("socket closed while replying to {command:?}"));
            out.push(line);
        }
        out.join("\n")
    }

    async fn send(&mut self, command: &str) -> String {
        self.send_lines(command, 1).await
    }

    async fn status(&mut self) -> serde_json::Value {
        let line = self.send("status-json").await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("status-json {line:?}: {e}"))
    }

    async fn rows_copied(&mut self) -> u64 {
        self.status().await["rows_copied"]
            .as_u64()
            .expect("rows_copied")
    }

    /// Polls `status-json` until `check` holds; panics after `timeout`.
    async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last status {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts the copy makes no progress for a while (it is paused).
    async fn assert_paused(&mut self, s: &Schema) {
        // A chunk that was running when the pause began still finishes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = self.rows_copied().await;
        let shadow_before = s.count("_sbtest_new").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let status = self.status().await;
        assert_eq!(
            status["rows_copied"].as_u64(),
            Some(before),
            "rows copied while throttled: {status}"
        );
        assert_eq!(s.count("_sbtest_new").await, shadow_before);
        assert_eq!(
            status["state"], "CopyRows",
            "the copy finished before it could be paused: {status}"
        );
    }

    /// Waits until the copy moves again.
    async fn wait_progress(&mut self) {
        let from = self.rows_copied().await;
        self.wait_until("the copy resumes", Duration::from_secs(10), |st| {
            st["rows_copied"].as_u64().unwrap_or(0) > from && st["throttled"].is_null()
        })
        .await;
    }
}

async fn table_of(rows: u64, name: &str) -> (Schema, tempfile::TempDir) {
    let s = Schema::new(name).await;
    sysbench_with_mirror(&s, rows).await;
    (s, tempfile::tempdir().expect("tempdir"))
}

#[tokio::test]
async fn flag_file_throttles_the_copy_until_removed() {
    let (s, dir) = table_of(60_000, "ops_flag").await;
    let flag = dir.path().join("throttle.flag");
    std::fs::write(&flag, "").unwrap();
    let cfg = slow_config(
        &s,
        dir.path(),
        &format!(
            "[throttle]\nflag_file = [{:?}, \"/nonexistent/other.flag\"]\n",
            flag.display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    ctl.wait_until(
        "throttled by the flag file",
        Duration::from_secs(60),
        |st| st["throttled"] == "flag-file" && st["state"] == "CopyRows",
    )
    .await;
    child
        .wait_for("sbtest: throttled: flag-file", Duration::from_secs(5))
        .await;
    ctl.assert_paused(&s).await;
    assert!(ctl.send("status").await.contains("throttled=flag-file"));
    std::fs::remove_file(&flag).unwrap();
    ctl.wait_progress().await;
    child
        .wait_for("throttling ended (was: flag-file)", Duration::from_secs(5))
        .await;
    let run = child.finish(Duration::from_secs(180)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;
}

/// Connections that keep `Threads_running` up while they sleep.
async fn sleepers(s: &Schema, n: usize, secs: u64) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = s.conn().await;
        out.push(tokio::spawn(async move {
            let _: Option<u64> = c
                .query_first(format!("SELECT SLEEP({secs})"))
                .await
                .unwrap_or(None);
        }));
    }
    out
}

#[tokio::test]
async fn server_load_throttles_and_critical_load_aborts_resumably() {
    let (s, dir) = table_of(60_000, "ops_load").await;
    let cfg = slow_config(
        &s,
        dir.path(),
        "[throttle]\nmax_load = { Threads_running = 30 }\ncritical_load = { Threads_running = 60 }\n",
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    // Held by the operator until the load is up, so the copy cannot end first.
    assert!(ctl.send("pause").await.starts_with("ok"));
    ctl.wait_until("copying", Duration::from_secs(60), |st| {
        st["state"] == "CopyRows"
    })
    .await;
    // Over max_load, under critical_load: a pause, with the reason.
    let busy = sleepers(&s, 40, 6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ctl.send("resume").await.starts_with("ok"));
    let st = ctl
        .wait_until("throttled by load", Duration::from_secs(5), |st| {
            st["throttled"]
                .as_str()
                .is_some_and(|r| r.starts_with("Threads_running=") && r.ends_with(" > 30"))
        })
        .await;
    child
        .wait_for("throttled: Threads_running=", Duration::from_secs(5))
        .await;
    assert!(st["summary"]
        .as_str()
        .unwrap()
        .contains("throttled: Threads_running="));
    ctl.assert_paused(&s).await;
    for b in busy {
        b.await.unwrap();
    }
    ctl.wait_progress().await;
    assert!(ctl.send("pause").await.starts_with("ok"));
    // While the copy is paused, changes to copied rows still reach the shadow.
    s.exec("UPDATE sbtest SET k = 4242 WHERE id = 1; UPDATE mirror SET k = 4242 WHERE id = 1")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = s.conn().await;
        let k: Option<i64> = c
            .query_first("SELECT k FROM _sbtest_new WHERE id = 1")
            .await
            .unwrap();
        if k == Some(4242) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change was not applied while throttled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ctl.status().await["throttled"], "commanded by user");
    // Over critical_load: the run stops, resumably, with the source untouched.
    let _busy = sleepers(&s, 70, 4).await;
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("aborted (critical load: Threads_running="),
        "{}",
        run.output()
    );
    assert!(!note_column_exists(&s).await);
    assert!(s.table_exists("_sbtest_new").await);
    assert_eq!(s.rows("sbtest").await, s.rows("mirror").await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rerun = WraithChild::spawn(&["run"], &cfg)
        .finish(Duration::from_secs(180))
        .await;
    assert_eq!(rerun.code, 0, "{}", rerun.output());
    assert!(rerun.stderr.contains("resuming"), "{}", rerun.output());
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn socket_commands_steer_a_running_copy() {
    let (s, dir) = table_of(100_000, "ops_socket").await;
    let cfg = slow_config(&s, dir.path(), "");
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    child
        .wait_for(
            &format!("control socket: {}", socket_path(dir.path()).display()),
            Duration::from_secs(5),
        )
        .await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Hold the cut-over and the copy first, so each step can be watched.
    assert!(ctl.send("postpone-cutover").await.starts_with("ok"));
    assert_eq!(ctl.send("pause").await, "ok: throttled: commanded by user");
    let help = ctl.send_lines("help", 14).await;
    for command in [
        "status-json",
        "chunk-size=N",
        "threads=N",
        "panic",
        "unpostpone",
    ] {
        assert!(help.contains(command), "{help}");
    }
    for bad in [
        "bogus",
        "threads=0",
        "threads=x",
        "chunk-size=",
        "chunk-target=soon",
        "pause=1",
    ] {
        let reply = ctl.send(bad).await;
        assert!(reply.starts_with("error: "), "{bad}: {reply}");
    }
    assert!(ctl.send("bogus").await.contains("unknown command"));
    ctl.wait_until("state CopyRows", Duration::from_secs(60), |st| {
        st["state"] == "CopyRows" && st["throttled"] == "commanded by user"
    })
    .await;
    child
        .wait_for("throttled: commanded by user", Duration::from_secs(5))
        .await;
    ctl.assert_paused(&s).await;
    assert!(ctl
        .send("status")
        .await
        .contains("throttled=commanded by user"));

    // threads=3: three workers copy; threads=1: one does.
    assert_eq!(ctl.send("chunk-size=2").await, "ok: chunk-size=2");
    assert_eq!(ctl.send("threads=3").await, "ok: threads=3");
    assert_eq!(ctl.send("resume").await, "ok: not throttled");
    ctl.wait_until("three workers copy", Duration::from_secs(10), |st| {
        st["active_workers"] == 3
    })
    .await;
    assert_eq!(ctl.send("threads=1").await, "ok: threads=1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        let st = ctl.status().await;
        assert_eq!(st["active_workers"], 1, "{st}");
        assert_eq!(st["state"], "CopyRows", "the copy ended too soon: {st}");
        assert_eq!(st["last_chunk_rows"], 2, "{st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // chunk-size=N: chunks of N rows (the key is dense).
    assert_eq!(ctl.send("chunk-size=1500").await, "ok: chunk-size=1500");
    ctl.wait_until("chunks of 1500 rows", Duration::from_secs(10), |st| {
        st["last_chunk_rows"] == 1500 && st["chunk_size"] == 1500
    })
    .await;
    assert!(ctl
        .send("chunk-target=20ms")
        .await
        .starts_with("ok: chunk-target=20ms"));
    // The gh-ost spellings of pause and resume.
    assert_eq!(
        ctl.send("throttle").await,
        "ok: throttled: commanded by user"
    );
    assert_eq!(ctl.status().await["throttled"], "commanded by user");
    assert_eq!(ctl.send("no-throttle").await, "ok: not throttled");

    // The copy ends; the cut-over waits for `unpostpone`.
    ctl.wait_until("postponed", Duration::from_secs(120), |st| {
        st["state"] == "WaitingOnSentinelTable" && st["cutover_postponed"] == true
    })
    .await;
    child
        .wait_for("cut-over postponed while commanded", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!note_column_exists(&s).await, "cut over while postponed");
    assert!(ctl.send("unpostpone").await.starts_with("ok"));
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(note_column_exists(&s).await);
    assert!(!socket_path(dir.path()).exists(), "socket left behind");
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn panic_stops_with_the_source_untouched_and_a_rerun_resumes() {
    let (s, dir) = table_of(60_000, "ops_panic").await;
    let cfg = slow_config(&s, dir.path(), "");
    let before = s.snapshot("sbtest").await;
    let child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    ctl.wait_until("copying", Duration::from_secs(60), |st| {
        st["rows_copied"].as_u64().unwrap_or(0) > 500
    })
    .await;
    assert!(ctl.send("panic").await.starts_with("ok: aborting"));
    let run = child.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("aborted (`panic` on the control socket); the source is untouched"),
        "{}",
        run.output()
    );
    assert_eq!(s.snapshot("sbtest").await, before, "the source changed");
    assert!(s.table_exists("_sbtest_new").await);
    let copied = s.count("_sbtest_new").await;
    assert!(copied > 0 && copied < 60_000, "{copied} rows in the shadow");

    let rerun = WraithChild::spawn(&["run"], &cfg)
        .finish(Duration::from_secs(180))
        .await;
    assert_eq!(rerun.code, 0, "{}", rerun.output());
    assert!(
        rerun
            .stderr
            .contains("resuming the copy after its durable prefix"),
        "{}",
        rerun.output()
    );
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn sighup_reloads_the_throttle_settings() {
    let (s, dir) = table_of(60_000, "ops_sighup").await;
    let flag = dir.path().join("throttle.flag");
    std::fs::write(&flag, "").unwrap();
    let cfg = slow_config(
        &s,
        dir.path(),
        &format!("[throttle]\nflag_file = {:?}\n", flag.display().to_string()),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    ctl.wait_until("throttled", Duration::from_secs(60), |st| {
        st["throttled"] == "flag-file" && st["state"] == "CopyRows"
    })
    .await;
    ctl.assert_paused(&s).await;
    // A config that does not load keeps the settings.
    std::fs::write(child.config_path(), "[source]\nnope = 1\n").unwrap();
    child.signal(libc::SIGHUP);
    child
        .wait_for(
            "SIGHUP: kept the current [throttle] settings",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(ctl.status().await["throttled"], "flag-file");
    // The same config without the flag file: the copy goes on, the flag still there.
    let without = slow_config(&s, dir.path(), "");
    std::fs::write(child.config_path(), without).unwrap();
    child.signal(libc::SIGHUP);
    child
        .wait_for("SIGHUP: reloaded [throttle]", Duration::from_secs(5))
        .await;
    ctl.wait_progress().await;
    assert!(flag.exists());
    let run = child.finish(Duration::from_secs(180)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_matches_mirror(&s).await;
}

const HOOKS: [&str; 9] = [
    "on-startup",
    "on-validated",
    "on-rowcount-complete",
    "on-row-copy-complete",
    "on-begin-postponed",
    "on-before-cut-over",
    "on-success",
    "on-failure",
    "on-status",
];

/// Writes every hook into `dir/hooks`; each appends its WRAITH_ variables to
/// `dir/out/<hook>`. `on-before-cut-over` exits with `before_cutover_exit`.
fn write_hooks(dir: &Path, before_cutover_exit: i32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let hooks = dir.join("hooks");
    let out = dir.join("out");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    for hook in HOOKS {
        let exit = if hook == "on-before-cut-over" {
            before_cutover_exit
        } else {
            0
        };
        let path = hooks.join(hook);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nenv | grep '^WRAITH_' | sort > {out}/{hook}.tmp\nmv {out}/{hook}.tmp {out}/{hook}\nexit {exit}\n",
                out = out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    hooks
}

/// The variables one hook saw, or `None` if it did not run.
fn hook_env(dir: &Path, hook: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("out").join(hook)).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[tokio::test]
async fn hooks_run_with_their_environment() {
    let (s, dir) = table_of(5_000, "ops_hooks").await;
    let hooks = write_hooks(dir.path(), 0);
    let flag = dir.path().join("postpone.flag");
    std::fs::write(&flag, "").unwrap();
    let cfg = slow_config(
        &s,
        dir.path(),
        &format!(
            "[hooks]\ndir = {:?}\nstatus_interval = \"1s\"\n",
            hooks.display().to_string()
        ),
    )
    .replace(
        "[cutover]\n",
        &format!(
            "[cutover]\npostpone_flag_file = {:?}\n",
            flag.display().to_string()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    child
        .wait_for("cut-over postponed", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::remove_file(&flag).unwrap();
    let run = child.finish(Duration::from_secs(120)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    for hook in HOOKS {
        if hook == "on-failure" {
            assert!(hook_env(dir.path(), hook).is_none(), "on-failure ran");
            continue;
        }
        let env = hook_env(dir.path(), hook).unwrap_or_else(|| panic!("{hook} did not run"));
        assert_eq!(env["WRAITH_DATABASE"], s.name, "{hook}: {env:?}");
        assert_eq!(env["WRAITH_TABLE"], "sbtest", "{hook}: {env:?}");
        assert_eq!(env["WRAITH_EVENT"], hook, "{hook}: {env:?}");
        for var in [
            "WRAITH_STATE",
            "WRAITH_ROWS_COPIED",
            "WRAITH_ELAPSED_SECONDS",
        ] {
            assert!(env.contains_key(var), "{hook} lacks {var}: {env:?}");
        }
        assert!(!env.contains_key("WRAITH_ERROR"), "{hook}: {env:?}");
        if hook != "on-startup" {
            assert_eq!(env["WRAITH_MIGRATION_UUID"].len(), 36, "{hook}: {env:?}");
            // The run identity's timestamp, `YYYYMMDDhhmmss`.
            let started = &env["WRAITH_STARTED_AT"];
            assert!(
                started.len() == 14
                    && started.starts_with("20")
                    && started.chars().all(|c| c.is_ascii_digit()),
                "{hook}: {env:?}"
            );
        }
    }
    let copied = hook_env(dir.path(), "on-row-copy-complete").unwrap();
    assert_eq!(copied["WRAITH_ROWS_COPIED"], "5000", "{copied:?}");
    let before = hook_env(dir.path(), "on-before-cut-over").unwrap();
    assert_eq!(
        before["WRAITH_STATE"], "WaitingOnSentinelTable",
        "{before:?}"
    );
    assert_eq!(
        before["WRAITH_MIGRATION_UUID"],
        hook_env(dir.path(), "on-success").unwrap()["WRAITH_MIGRATION_UUID"]
    );
    assert_eq!(
        hook_env(dir.path(), "on-success").unwrap()["WRAITH_STATE"],
        "Close"
    );
    assert_matches_mirror(&s).await;
}

#[tokio::test]
async fn a_failing_before_cut_over_hook_blocks_the_cut_over() {
    let (s, dir) = table_of(5_000, "ops_hook_fail").await;
    let hooks = write_hooks(dir.path(), 7);
    let cfg = slow_config(
        &s,
        dir.path(),
        &format!("[hooks]\ndir = {:?}\n", hooks.display().to_string()),
    );
    let run = WraithChild::spawn(&["run"], &cfg)
        .finish(Duration::from_secs(120))
        .await;
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("the cut-over was not attempted because a hook failed"),
        "{}",
        run.output()
    );
    assert!(
        run.stderr.contains("on-before-cut-over"),
        "{}",
        run.output()
    );
    assert!(!note_column_exists(&s).await, "cut over despite the hook");
    assert!(!s.table_exists("_sbtest_old").await);
    assert!(hook_env(dir.path(), "on-success").is_none());
    let failure = hook_env(dir.path(), "on-failure").expect("on-failure ran");
    assert!(
        failure["WRAITH_ERROR"].contains("on-before-cut-over"),
        "{failure:?}"
    );
    // Once the hook agrees, a rerun resumes and cuts over.
    write_hooks(dir.path(), 0);
    let rerun = WraithChild::spawn(&["run"], &cfg)
        .finish(Duration::from_secs(120))
        .await;
    assert_eq!(rerun.code, 0, "{}", rerun.output());
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;
}

/// A replica of the shared server that applies only `schema`'s heartbeat
/// table, from the source's current position on.
async fn heartbeat_replica(s: &Schema) -> wraith_engine::testkit::scratch::ScratchServer {
    use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};
    let replica = ScratchServer::start(ScratchOptions {
        buffer_pool: "64M".into(),
        extra_args: vec![
            "--server-id=2".into(),
            format!("--replicate-wild-do-table={}._wraith_heartbeat", s.name),
        ],
        ..ScratchOptions::default()
    })
    .expect("start the replica");
    let mut source = s.conn().await;
    let gtid: Option<String> = source
        .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .unwrap();
    let pool = mysql_async::Pool::new(replica.opts(None));
    let mut c = pool.get_conn().await.expect("connect to the replica");
    c.query_drop(format!(
        "CREATE DATABASE `{}`; SET GLOBAL gtid_slave_pos = '{}'; \
         CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
         MASTER_USE_GTID = slave_pos; START SLAVE",
        s.name,
        gtid.unwrap_or_default(),
        s.port
    ))
    .await
    .expect("start replicating");
    drop(c);
    pool.disconnect().await.ok();
    replica
}

async fn on_replica(replica: &wraith_engine::testkit::scratch::ScratchServer, sql: &str) {
    let pool = mysql_async::Pool::new(replica.opts(None));
    let mut c = pool.get_conn().await.expect("connect to the replica");
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(c);
    pool.disconnect().await.ok();
}

#[tokio::test]
async fn replica_lag_throttles_the_copy() {
    let (s, dir) = table_of(60_000, "ops_lag").await;
    let replica = heartbeat_replica(&s).await;
    let cfg = slow_config(
        &s,
        dir.path(),
        &format!(
            "[throttle]\nmax_lag = \"1s\"\nheartbeat_interval = \"100ms\"\ninterval = \"200ms\"\n\n\
             [[throttle.replica]]\nport = {}\nuser = \"root\"\n",
            replica.port()
        ),
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    assert!(ctl.send("pause").await.starts_with("ok"));
    assert!(ctl.send("chunk-size=5").await.starts_with("ok"));
    ctl.wait_until("copying", Duration::from_secs(60), |st| {
        st["state"] == "CopyRows"
    })
    .await;
    // The replica keeps up: the copy runs.
    assert!(ctl.send("resume").await.starts_with("ok"));
    ctl.wait_progress().await;
    // It stops applying: the lag grows past max_lag and the copy pauses.
    on_replica(&replica, "STOP SLAVE SQL_THREAD").await;
    let st = ctl
        .wait_until("throttled by lag", Duration::from_secs(10), |st| {
            st["throttled"].as_str().is_some_and(|r| {
                r.starts_with(&format!("replica 127.0.0.1:{} lag=", replica.port()))
                    && r.ends_with(" > 1s")
            })
        })
        .await;
    assert!(st["state"] == "CopyRows", "{st}");
    child
        .wait_for("throttled: replica 127.0.0.1:", Duration::from_secs(5))
        .await;
    ctl.assert_paused(&s).await;
    on_replica(&replica, "START SLAVE SQL_THREAD").await;
    ctl.wait_progress().await;
    assert!(ctl.send("chunk-size=auto").await.starts_with("ok"));
    let run = child.finish(Duration::from_secs(180)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!s.table_exists("_wraith_heartbeat").await);
    assert_matches_mirror(&s).await;
}

/// A replica of the shared server that applies only `s`'s schema, from the
/// source's current position on, with `threads` parallel workers.
async fn schema_replica(
    s: &Schema,
    threads: u32,
) -> (wraith_engine::testkit::scratch::ScratchServer, Schema) {
    use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};
    let replica = ScratchServer::start(ScratchOptions {
        buffer_pool: "64M".into(),
        extra_args: vec![
            "--server-id=2".into(),
            format!("--replicate-wild-do-table={}.%", s.name),
            format!("--slave-parallel-threads={threads}"),
        ],
        ..ScratchOptions::default()
    })
    .expect("start the replica");
    let on_replica = Schema::on(&replica, &s.name).await;
    let gtid = gtid_binlog_pos(s).await;
    on_replica
        .exec(&format!(
            "SET GLOBAL gtid_slave_pos = '{}'; \
             CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
             MASTER_USE_GTID = slave_pos; START SLAVE",
            gtid, s.port
        ))
        .await;
    (replica, on_replica)
}

/// The shared server's GTID position: everything it has written so far.
async fn gtid_binlog_pos(s: &Schema) -> String {
    let gtid: Option<String> = s
        .conn()
        .await
        .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .expect("gtid_binlog_pos");
    gtid.unwrap_or_default()
}

/// Waits until `replica` has applied everything the shared server has
/// written so far.
async fn replica_caught_up(s: &Schema, replica: &Schema) {
    let gtid = gtid_binlog_pos(s).await;
    let waited: Option<i64> = replica
        .conn()
        .await
        .exec_first("SELECT MASTER_GTID_WAIT(?, 120)", (gtid,))
        .await
        .expect("MASTER_GTID_WAIT");
    assert_eq!(waited, Some(0), "the replica did not catch up within 120 s");
}

/// The ALTERs the shared server logged in two phases (`START ALTER`) since
/// `from`, as their statements.
async fn two_phase_alters_since(s: &Schema, from: &(String, u64)) -> Vec<String> {
    s.binlog_events_since(from)
        .await
        .windows(2)
        .filter(|pair| {
            pair[0].kind == "Gtid"
                && pair[0].info.ends_with("START ALTER")
                && pair[1].kind == "Query"
        })
        .map(|pair| pair[1].info.clone())
        .collect()
}

/// With replicas watched the secondary indexes stay in the shadow during
/// the copy unless `defer_secondary_indexes = true`; then the build is
/// logged in two phases (`START ALTER`), which a replica running parallel
/// replication starts with the source. Preflight warns about a replica
/// without parallel workers (it would apply the build only after the source,
/// lagging by its length) and not about one with four. Under a mirrored
/// load, both servers end with the same table, rows and indexes, equal to
/// the mirror.
#[tokio::test]
async fn a_deferred_index_build_starts_on_parallel_replicas_with_the_source() {
    // A load and a second server of its own: not while a latency-judged test runs.
    let _shared = crate::LATENCY_JUDGED.read().await;
    let s = Schema::new("ops_two_phase").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_replica_server, replica) = schema_replica(&s, 0).await;
    sysbench_with_mirror(&s, 20_000).await;
    replica_caught_up(&s, &replica).await;
    let config = |copy: &str| {
        s.config(
            "sbtest",
            ALTER,
            &format!(
                "[copy]\nbackend = \"sql\"\n{copy}\n[cutover]\nlock_wait_timeout = \"1s\"\n\n\
                 [control]\nsocket = {:?}\n\n\
                 [throttle]\nmax_lag = \"5s\"\nheartbeat_interval = \"100ms\"\n\n\
                 [[throttle.replica]]\nport = {}\nuser = \"root\"\n",
                socket_path(dir.path()).display().to_string(),
                replica.port
            ),
        )
    };
    let kept = wraith_tests::wraith_with_config(&["check"], &config("")).await;
    assert_eq!(kept.code, 0, "{}", kept.output());
    assert!(
        kept.stderr.contains("deferred indexes: none"),
        "{}",
        kept.output()
    );
    let cfg = config("defer_secondary_indexes = true\n");
    let lagging = wraith_tests::wraith_with_config(&["check"], &cfg).await;
    assert_eq!(lagging.code, 0, "{}", lagging.output());
    assert!(
        lagging.stderr.contains("[warn] indexes:")
            && lagging.stderr.contains("slave_parallel_threads = 0")
            && lagging.stderr.contains("lagging by its whole length"),
        "{}",
        lagging.output()
    );

    replica
        .exec("STOP SLAVE; SET GLOBAL slave_parallel_threads = 4; START SLAVE")
        .await;
    let deferred = wraith_tests::wraith_with_config(&["check"], &cfg).await;
    assert_eq!(deferred.code, 0, "{}", deferred.output());
    assert!(
        deferred
            .stderr
            .contains("[ok  ] indexes: built after the copy, logged in two phases")
            && !deferred.stderr.contains("[warn] indexes:"),
        "{}",
        deferred.output()
    );
    assert!(
        deferred
            .stderr
            .contains("deferred indexes (built after the copy):"),
        "{}",
        deferred.output()
    );

    let from = s.binlog_now().await;
    let load = Load::start(s.pool.clone(), mirrored_load(&s, 20_000, 11));
    let run = WraithChild::spawn(&["run"], &cfg)
        .finish(Duration::from_secs(240))
        .await;
    load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(note_column_exists(&s).await);
    assert_matches_mirror(&s).await;

    let alters = two_phase_alters_since(&s, &from).await;
    assert!(
        alters
            .iter()
            .any(|a| a.contains("_sbtest_new") && a.contains("ADD KEY `k_1`")),
        "no index build of the shadow was logged in two phases: {alters:?}"
    );
    replica_caught_up(&s, &replica).await;
    let on_source = s.snapshot("sbtest").await;
    let on_replica = replica.snapshot("sbtest").await;
    // Row-based replication moves a replica's AUTO_INCREMENT counter by the
    // rows it applies, not by what the source reserved: the one part of the
    // definition that may differ.
    let counter_free = |create: &str| {
        create
            .split(' ')
            .filter(|word| !word.starts_with("AUTO_INCREMENT="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        counter_free(&on_source.create),
        counter_free(&on_replica.create)
    );
    assert!(
        on_source.rows == on_replica.rows,
        "the replica's sbtest rows differ from the source's"
    );
    assert!(
        on_source.create.contains("KEY `k_1`"),
        "{}",
        on_source.create
    );
}

/// Innodb_history_list_length of `conn`'s server.
async fn purge_backlog(conn: &mut mysql_async::Conn) -> u64 {
    let row: Option<(String, u64)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'")
        .await
        .expect("read the purge backlog");
    row.map(|(_, n)| n).unwrap_or(0)
}

/// The server's write debt holds the copy: a report keeps its snapshot open
/// while the application commits, so purge falls behind past
/// `max_purge_backlog`; the copy waits (and says why) until the report ends
/// and purge has caught up, then finishes equal to the mirror. On a server of
/// its own, so no other test's transactions move the backlog.
#[tokio::test]
async fn write_debt_holds_the_copy_until_the_server_has_caught_up() {
    use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};
    let server = ScratchServer::start(ScratchOptions {
        buffer_pool: "128M".into(),
        ..ScratchOptions::default()
    })
    .expect("start a server of the test's own");
    let s = Schema::on(&server, "ops_debt").await;
    sysbench_with_mirror(&s, 60_000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    s.exec("CREATE TABLE app (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO app VALUES (1, 0)")
        .await;
    let mut report = s.conn().await;
    report
        .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await
        .unwrap();
    let _: Option<u64> = report
        .query_first("SELECT COUNT(*) FROM app")
        .await
        .unwrap();
    // Each commit leaves an undo log the report may still need.
    let mut app = s.conn().await;
    for _ in 0..1500 {
        app.query_drop("UPDATE app SET v = v + 1 WHERE id = 1")
            .await
            .unwrap();
    }
    let backlog = purge_backlog(&mut app).await;
    assert!(backlog >= 1500, "purge backlog {backlog}");
    let cfg = slow_config(
        &s,
        dir.path(),
        "[throttle]\nmax_purge_backlog = 1000\ninterval = \"200ms\"\n",
    );
    let mut child = WraithChild::spawn(&["run"], &cfg);
    let mut ctl = Control::connect(dir.path()).await;
    let st = ctl
        .wait_until(
            "throttled by the purge backlog",
            Duration::from_secs(60),
            |st| {
                st["throttled"].as_str().is_some_and(|r| {
                    r.starts_with("write debt: purge backlog ") && r.ends_with(" > 1000")
                })
            },
        )
        .await;
    assert_eq!(st["rows_copied"].as_u64(), Some(0), "{st}");
    child
        .wait_for(
            "throttled: write debt: purge backlog",
            Duration::from_secs(5),
        )
        .await;
    ctl.assert_paused(&s).await;
    // The report ends: purge frees the undo, the backlog drops, the copy goes on.
    report.query_drop("COMMIT").await.unwrap();
    ctl.wait_progress().await;
    assert!(purge_backlog(&mut app).await <= 1000);
    let run = child.finish(Duration::from_secs(180)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.output().contains("throttling ended"),
        "{}",
        run.output()
    );
    assert_matches_mirror(&s).await;
    drop((report, app));
}

#[tokio::test]
async fn default_socket_is_named_after_the_table_and_a_second_run_is_refused() {
    let (s, dir) = table_of(5_000, "ops_default_socket").await;
    let flag = dir.path().join("postpone.flag");
    std::fs::write(&flag, "").unwrap();
    let sort_dir = dir.path().join("sort");
    let cfg = s.config(
        "sbtest",
        ALTER,
        &format!(
            "[copy]\nbackend = \"sql\"\nthreads = 1\n\n[local]\nsort_dir = {:?}\n\n\
             [cutover]\npostpone_flag_file = {:?}\n",
            sort_dir.display().to_string(),
            flag.display().to_string()
        ),
    );
    let socket = sort_dir.join("wraith-ops_default_socket-sbtest.sock");
    let mut first = WraithChild::spawn(&["run"], &cfg);
    first
        .wait_for(
            &format!("control socket: {}", socket.display()),
            Duration::from_secs(60),
        )
        .await;
    first
        .wait_for("cut-over postponed", Duration::from_secs(60))
        .await;
    let second = WraithChild::spawn(&["run"], &cfg)
        .finish(Duration::from_secs(60))
        .await;
    assert_eq!(second.code, 2, "{}", second.output());
    assert!(
        second
            .stderr
            .contains("another wraith run is listening on it"),
        "{}",
        second.output()
    );
    // The first run is unharmed and answers on its socket.
    let stream = UnixStream::connect(&socket).await.expect("connect");
    let (read, mut write) = stream.into_split();
    write.write_all(b"status\n").await.unwrap();
    let line = BufReader::new(read).lines().next_line().await.unwrap();
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("state=WaitingOnSentinelTable")),
        "{line:?}"
    );
    std::fs::remove_file(&flag).unwrap();
    let run = first.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!socket.exists());
    assert_matches_mirror(&s).await;
}

/// Reads `GET /metrics` from a run's `--metrics-addr`.
async fn scrape(addr: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics endpoint");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: wraith\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    text
}

/// The per-table fields of a status: the table's state, `pct` that agrees with
/// its rows, and its change figures (the job's stream, the only table's).
fn assert_table_figures(status: &serde_json::Value, state: &str) {
    let t = &status["tables"][0];
    assert_eq!(t["state"], state, "{status}");
    let copied = t["rows_copied"].as_f64().expect("rows_copied");
    let total = t["rows_total"].as_f64().expect("rows_total");
    let pct = t["pct"].as_f64().expect("pct");
    assert!(
        total > 0.0 && (pct - (copied * 100.0 / total).min(100.0)).abs() < 1e-6,
        "pct {pct} against {copied}/{total}: {status}"
    );
    for field in ["changes_received", "changes_applied", "changes_backlog"] {
        assert!(t[field].as_u64().is_some(), "{field}: {status}");
    }
    assert!(t["lag_secs"].as_f64().is_some(), "lag_secs: {status}");
    if status["live"].is_null() {
        // From the run itself: the same figures as the job's stream.
        assert_eq!(
            t["changes_applied"], status["stream"]["changes_applied"],
            "{status}"
        );
        assert_eq!(
            t["changes_backlog"], status["stream"]["changes_backlog"],
            "{status}"
        );
    }
}

/// Status for programs: `status-json` has Spirit's `Progress` shape plus the
/// change stream's figures and the ETA (`due` once the copy is done), each
/// table with its own state, percentage and change figures (also in `status`
/// and `wraith status --json`), and `--metrics-addr` serves the same as
/// Prometheus text, per table too.
#[tokio::test]
async fn status_json_and_metrics_show_progress_stream_and_eta() {
    let (s, dir) = table_of(60_000, "ops_status").await;
    let load = Load::start(
        s.pool.clone(),
        LoadConfig {
            rate: 100,
            connections: 1,
            change_keys: false,
            ..mirrored_load(&s, 60_000, 3)
        },
    );
    // `tcp_port` lands in `[control]`, right after `socket`.
    let cfg = slow_config(&s, dir.path(), "tcp_port = 0\n");
    let mut child = WraithChild::spawn(&["run", "--metrics-addr", "127.0.0.1:0"], &cfg);
    child
        .wait_for("metrics: http://", Duration::from_secs(30))
        .await;
    let addr = child
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix("metrics: http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .expect("the metrics address")
        .to_string();
    let mut ctl = Control::connect(dir.path()).await;
    assert!(ctl.send("postpone-cutover").await.starts_with("ok"));
    let copying = ctl
        .wait_until(
            "the copy and the stream show",
            Duration::from_secs(60),
            |st| {
                st["current_state"] == "CopyRows"
                    && st["tables"][0]["rows_copied"].as_u64().unwrap_or(0) > 0
                    && st["stream"]["binlog_position"].is_string()
            },
        )
        .await;
    assert_eq!(copying["tables"][0]["table_name"], "sbtest", "{copying}");
    // The same commands on the optional TCP port of 127.0.0.1.
    child
        .wait_for("control port: 127.0.0.1:", Duration::from_secs(10))
        .await;
    let port_addr = child
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix("control port: "))
        .expect("the control port")
        .to_string();
    {
        let tcp = tokio::net::TcpStream::connect(&port_addr)
            .await
            .expect("control port");
        let (read, mut write) = tcp.into_split();
        write.write_all(b"status-json\nbogus\n").await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let json: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(json["database"], "ops_status", "{json}");
        assert_eq!(
            json["migration_uuid"].as_str().map(str::len),
            Some(36),
            "{json}"
        );
        assert_eq!(
            json["started_at"].as_str().map(str::len),
            Some(14),
            "{json}"
        );
        assert!(lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .starts_with("error: "));
    }
    assert!(
        copying["tables"][0]["rows_total"].as_u64().unwrap_or(0) > 50_000,
        "{copying}"
    );
    assert_eq!(copying["tables"][0]["is_complete"], false, "{copying}");
    assert_table_figures(&copying, "CopyRows");
    assert!(
        copying["summary"]
            .as_str()
            .unwrap_or("")
            .contains("backlog"),
        "{copying}"
    );
    let metrics = scrape(&addr).await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    for name in [
        "wraith_rows_copied ",
        "wraith_rows_total ",
        "wraith_changes_applied ",
        "wraith_changes_backlog ",
        "wraith_binlog_lag_seconds ",
        "wraith_state{state=\"CopyRows\"} 1",
        "wraith_table_rows_copied{table=\"sbtest\"} ",
        "wraith_table_rows_total{table=\"sbtest\"} ",
        "wraith_table_changes_applied{table=\"sbtest\"} ",
        "wraith_table_changes_backlog{table=\"sbtest\"} ",
        "wraith_table_state{table=\"sbtest\",state=\"CopyRows\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // Held before the cut-over: the copy is done, the ETA says so, and the
    // load's changes have been applied.
    let held = ctl
        .wait_until("the copy is done", Duration::from_secs(180), |st| {
            st["cutover_postponed"] == true
                && st["eta"] == "due"
                && st["tables"][0]["is_complete"] == true
        })
        .await;
    assert!(
        held["stream"]["changes_applied"].as_u64().unwrap_or(0) > 0,
        "{held}"
    );
    let held_state = held["current_state"].as_str().unwrap_or_default();
    assert_table_figures(&held, held_state);
    assert_eq!(held["tables"][0]["pct"], 100.0, "{held}");
    assert!(
        held["tables"][0]["changes_applied"].as_u64().unwrap_or(0) > 0,
        "{held}"
    );
    let line = ctl.send("status").await;
    assert!(line.contains("eta=due"), "{line}");
    // The text lists the table: state, rows, %, applied, backlog.
    let listed = line
        .split_once(" tables=[sbtest ")
        .and_then(|(_, rest)| rest.split_once("] blockers="))
        .map(|(table, _)| table.to_string())
        .unwrap_or_else(|| panic!("no table in {line}"));
    let words: Vec<&str> = listed.split(' ').collect();
    assert!(
        words.len() == 7
            && words[2] == "100.0%"
            && words[3] == "applied"
            && words[4].parse::<u64>().is_ok_and(|n| n > 0)
            && words[5] == "backlog"
            && words[6].parse::<u64>().is_ok(),
        "{line}"
    );
    // `wraith status` finds the running process through the checkpoint.
    let status = wraith_tests::wraith_with_config(&["status", "--json"], &cfg).await;
    assert_eq!(status.code, 0, "{}", status.output());
    let report: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert_eq!(
        report["current_state"], "WaitingOnSentinelTable",
        "{report}"
    );
    assert_eq!(report["tables"][0]["table_name"], "sbtest", "{report}");
    assert_eq!(report["tables"][0]["is_complete"], true, "{report}");
    assert_table_figures(&report, "WaitingOnSentinelTable");
    assert!(
        report["live"]["stream"]["changes_applied"]
            .as_u64()
            .is_some(),
        "{report}"
    );
    assert!(
        report["checkpoint"]["control_socket"]
            .as_str()
            .is_some_and(|p| p.ends_with("ctl.sock")),
        "{report}"
    );
    assert!(ctl.send("unpostpone").await.starts_with("ok"));
    let run = child.finish(Duration::from_secs(120)).await;
    load.stop().await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_matches_mirror(&s).await;
}
