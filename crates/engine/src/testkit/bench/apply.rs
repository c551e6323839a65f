//! The change apply rate (`--apply-burst`): wraith-sql copies the table and
//! holds its cut-over (postpone flag); then one statement updates
//! `apply_burst` rows (`k = k + 1`) and, once that is applied, another undoes
//! it. The time counted runs from each statement's commit (when its changes
//! reach the binlog at once) until wraith has received them all and its
//! backlog is empty. The table must then equal the pristine copy.

use std::path::Path;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::child::stream_figure;
use super::harness::{Bench, BENCH_SCHEMA};
use super::pristine::{self, Pristine};
use super::results::ApplyRun;
use super::{error_chain, BenchError, StepContext};
use crate::server::quote_ident;

impl Bench {
    /// The change apply rate: wraith-sql copies the table and holds its
    /// cut-over (postpone flag); then one statement updates `apply_burst`
    /// rows (`k = k + 1`) and, once that is applied, another undoes it. The
    /// time counted runs from each statement's commit (when its changes reach
    /// the binlog at once) until wraith has received them all and its backlog
    /// is empty. The table must then equal the pristine copy.
    pub(super) async fn measure_apply(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        round: u32,
    ) -> ApplyRun {
        let mut run = ApplyRun {
            table: pristine.kind,
            round,
            changes: 0,
            apply_secs: 0.0,
            changes_per_sec: 0.0,
            correct: false,
            error: None,
        };
        if let Err(e) = self.apply_bursts(conn, pristine, &mut run).await {
            run.correct = false;
            run.error = Some(error_chain(&e));
        }
        run
    }

    async fn apply_bursts(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        run: &mut ApplyRun,
    ) -> Result<(), BenchError> {
        self.fresh_start(conn, Some(pristine)).await?;
        let name = format!("{}-apply-{}", pristine.kind, run.round);
        let flag = self.work_dir.path().join(format!("{name}.postpone"));
        std::fs::write(&flag, b"").step("creating the postpone flag file")?;
        let job = self.wraith_job(
            pristine,
            "sql",
            &name,
            &format!("postpone_flag_file = {:?}\n", flag.display().to_string()),
            Default::default(),
        )?;
        let socket = job.socket.clone();
        let child = tokio::spawn(job.run());
        let bursts = self.run_bursts(conn, pristine, &socket, run).await;
        // The run ends whatever the bursts did: without the flag it cuts over.
        let _ = std::fs::remove_file(&flag);
        let child = child.await.step("waiting for wraith run")??;
        bursts?;
        child.report()?;
        let result = pristine::fingerprint(conn, BENCH_SCHEMA, &pristine.table).await?;
        let comparison = result.compare(&pristine.fingerprint);
        run.correct = comparison.all_match();
        if !run.correct {
            run.error = Some(format!(
                "result differs from the pristine table: {} rows (expected {}), checksum {:?} (expected {:?})",
                result.rows, pristine.fingerprint.rows, result.checksum, pristine.fingerprint.checksum
            ));
        }
        Ok(())
    }

    async fn run_bursts(
        &self,
        conn: &mut Conn,
        pristine: &Pristine,
        socket: &Path,
        run: &mut ApplyRun,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        // Wait until the copy, indexes and checksum are done and wraith only
        // follows changes, held by the flag.
        loop {
            let status = crate::control::query_status(socket, Duration::from_secs(2)).await;
            if status.as_ref().and_then(|s| s["state"].as_str()) == Some("WaitingOnSentinelTable") {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(
                    "wraith did not reach the postponed cut-over in 30 minutes".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let qt = format!(
            "{}.{}",
            quote_ident(BENCH_SCHEMA),
            quote_ident(&pristine.table)
        );
        let rows = self.settings.apply_burst.min(pristine.rows);
        let row_number = pristine.kind.row_number_column();
        for change in ["k + 1", "k - 1"] {
            let received_before = stream_figure(socket, "changes_received").await?;
            conn.query_drop(format!(
                "UPDATE {qt} SET k = {change} WHERE {row_number} <= {rows}"
            ))
            .await
            .step("the burst's UPDATE")?;
            let committed = Instant::now();
            let updated = conn.affected_rows();
            loop {
                let received = stream_figure(socket, "changes_received").await?;
                let backlog = stream_figure(socket, "changes_backlog").await?;
                if received >= received_before + updated && backlog == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::Failed(format!("wraith did not apply the burst's {updated} changes in time ({} received, {backlog} waiting)", received - received_before)));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            run.apply_secs += committed.elapsed().as_secs_f64();
            run.changes += updated;
        }
        run.changes_per_sec = run.changes as f64 / run.apply_secs.max(1e-9);
        Ok(())
    }
}
