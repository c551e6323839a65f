//! `wraith bench --import`: a table dumped once by mydumper, then loaded into
//! an empty schema by myloader and by `wraith import` with each backend, in
//! turn, every round; each load is checked against the pristine table.
//!
//! myloader's threads deadlock on each other now and then (seen on 2M rows);
//! a load that failed that way gets one more try so that the baseline exists,
//! and the run says so in its `note`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::child::run_child;
use super::harness::{Bench, BenchEvent, OnEvent, BENCH_SCHEMA, IMPORT_SCHEMA};
use super::pristine::{self, Pristine};
use super::results::{set_speedups, ImportRun, LOADERS};
use super::{error_chain, process_cpu_secs, BenchError, StepContext};
use crate::server::quote_ident;

impl Bench {
    /// `--import`: dumps the table with mydumper once, then loads the dump
    /// with each loader in turn, `repeat` rounds, into an empty
    /// [`IMPORT_SCHEMA`], checking every load against the pristine table.
    pub(super) async fn import_rounds(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Vec<ImportRun>, BenchError> {
        let (mydumper, _) = self
            .dump_tools
            .as_ref()
            .ok_or_else(|| BenchError::Usage("mydumper is not installed".into()))?;
        pristine
            .restore(conn, BENCH_SCHEMA)
            .await
            .step("restoring the table to dump")?;
        let dump_dir = self.work_dir.path().join(format!("dump-{}", pristine.kind));
        let _ = std::fs::remove_dir_all(&dump_dir);
        let started = Instant::now();
        let mut cmd = Command::new(mydumper);
        cmd.args(self.server.dump_tool_args()?)
            .arg("-B")
            .arg(BENCH_SCHEMA)
            .arg("-T")
            .arg(&pristine.table)
            .args(["-t", "2", "-r", "100000", "-o"])
            .arg(&dump_dir);
        run_child(cmd, self.work_dir.path(), "mydumper")
            .await?
            .succeeded("mydumper")?;
        let bytes: u64 = std::fs::read_dir(&dump_dir)
            .step("reading the dump directory")?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        on_event(BenchEvent::Dumped {
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let mut runs = Vec::new();
        for round in 1..=self.settings.repeat {
            let mut round_runs = Vec::new();
            for loader in LOADERS {
                let run = self
                    .import_with_retry(conn, pristine, &dump_dir, loader, round, on_event)
                    .await;
                on_event(BenchEvent::Import(&run));
                round_runs.push(run);
            }
            set_speedups(&mut round_runs);
            runs.extend(round_runs);
        }
        let _ = std::fs::remove_dir_all(&dump_dir);
        Ok(runs)
    }

    /// One load; myloader once more when its threads deadlocked.
    async fn import_with_retry(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        dump_dir: &Path,
        loader: &'static str,
        round: u32,
        on_event: &mut OnEvent<'_>,
    ) -> ImportRun {
        let mut run = ImportRun {
            table: pristine.kind,
            loader,
            round,
            correct: false,
            error: None,
            wall_secs: 0.0,
            rows_per_sec: 0.0,
            speedup_over_myloader: None,
            server_cpu_secs: None,
            peak_rss_mib: None,
            note: None,
        };
        let first = self.import_once(conn, pristine, dump_dir, &mut run).await;
        let Err(e) = first else {
            return run;
        };
        if !(loader == "myloader" && is_thread_deadlock(&e)) {
            run.error = Some(error_chain(&e));
            return run;
        }
        let reason = "the first attempt failed with a deadlock between myloader's threads";
        on_event(BenchEvent::LoaderRetry { loader, reason });
        run.note = Some(reason.into());
        if let Err(e) = self.import_once(conn, pristine, dump_dir, &mut run).await {
            run.error = Some(error_chain(&e));
        }
        run
    }

    async fn import_once(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        dump_dir: &Path,
        run: &mut ImportRun,
    ) -> Result<(), BenchError> {
        let schema = quote_ident(IMPORT_SCHEMA);
        // Two statements: wraith's connections have multi-statements off.
        conn.query_drop(format!("DROP DATABASE IF EXISTS {schema}"))
            .await
            .step("dropping the import schema")?;
        conn.query_drop(format!("CREATE DATABASE {schema}"))
            .await
            .step("recreating the import schema")?;
        self.fresh_start(conn, None).await?;
        let dir = self.work_dir.path();
        let name = format!("{}-{}-{}", pristine.kind, run.loader, run.round);
        let cmd = self.loader_command(run.loader, dump_dir, &name)?;
        let cpu_before = self.server_pid.and_then(process_cpu_secs);
        let started = Instant::now();
        let child = run_child(cmd, dir, &name).await;
        run.wall_secs = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(dir.join(format!("sort-{name}")));
        let cpu_after = self.server_pid.and_then(process_cpu_secs);
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            run.server_cpu_secs = Some(b - a);
        }
        let child = child?;
        run.peak_rss_mib = child.peak_rss_mib;
        child.succeeded(run.loader)?;
        run.rows_per_sec = pristine.rows as f64 / run.wall_secs;
        let result = pristine::fingerprint(conn, IMPORT_SCHEMA, &pristine.table).await?;
        let comparison = result.compare(&pristine.fingerprint);
        run.correct = comparison.all_match();
        if !run.correct {
            return Err(BenchError::Failed(format!(
                "the loaded table differs: {} rows (expected {}), checksum {:?} (expected {:?}), definition {}",
                result.rows,
                pristine.fingerprint.rows,
                result.checksum,
                pristine.fingerprint.checksum,
                if comparison.definition_match { "equal" } else { "differs" }
            )));
        }
        Ok(())
    }

    /// The command that loads `dump_dir` into [`IMPORT_SCHEMA`] with `loader`.
    fn loader_command(
        &self,
        loader: &str,
        dump_dir: &Path,
        name: &str,
    ) -> Result<Command, BenchError> {
        if loader == "myloader" {
            let (_, myloader) = self
                .dump_tools
                .as_ref()
                .ok_or_else(|| BenchError::Failed("myloader is not installed".into()))?;
            let mut cmd = Command::new(myloader);
            // -e: binlog the load, as wraith does.
            cmd.args(self.server.dump_tool_args()?)
                .arg("-d")
                .arg(dump_dir)
                .arg("-B")
                .arg(IMPORT_SCHEMA)
                .args(["-t", "2", "-e"]);
            return Ok(cmd);
        }
        let dir = self.work_dir.path();
        let backend = loader.trim_start_matches("wraith-import-");
        let sort_dir = dir.join(format!("sort-{name}"));
        let toml = format!(
            "{target}\n[import]\ndir = {dump:?}\nformat = \"sql\"\nbackend = {backend:?}\n\
             threads = 2\ncreate_tables = true\n\n[local]\nsort_dir = {sort:?}\n\n\
             [checkpoint]\nstore = \"file\"\npath = {checkpoint:?}\n",
            target = self.server.connection_toml("target", IMPORT_SCHEMA)?,
            dump = dump_dir.display().to_string(),
            sort = sort_dir.display().to_string(),
            checkpoint = dir.join(format!("{name}.checkpoint")).display().to_string(),
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml).step("writing the import's config")?;
        let mut cmd = Command::new(&self.settings.wraith_exe);
        cmd.arg("import").arg(&config_path);
        Ok(cmd)
    }
}

/// myloader's threads deadlocked on each other: its output (the only thing a
/// child tool gives us) names the server's deadlock error.
fn is_thread_deadlock(error: &BenchError) -> bool {
    matches!(error, BenchError::ChildFailed { tail, .. } if tail.contains("Deadlock"))
}
