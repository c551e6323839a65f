//! A group: the tables that are cut over together. With `[cutover]
//! together` (the default with several tables) every table of the job is
//! one group; otherwise each table is a group of its own, run one after
//! another.
//!
//! Each table runs its own stages concurrently with the others' up to its
//! copied shadow ([`TableRun::start`], [`TableRun::copy_phase`]): its copy
//! takes chunks from the job's shared thread budget, so a big table does
//! not wait behind a small one, and a table done early keeps following its
//! changes and builds its secondary indexes while the others copy. Then the
//! group goes on as one:
//! - the checksum of every table at **one** consistent point (one short
//!   `LOCK TABLES … READ` over all of them, every stream drained once),
//!   beside the index builds still to do ([`TableRun::index_phase`]). The
//!   point comes first, then the builds start, and the comparison reads
//!   each shadow once its build is past the exclusive lock it takes to
//!   begin: so the drain under the source's lock never waits for an ALTER,
//!   and an ALTER never waits to begin behind the comparison's snapshot
//!   (see `stages.rs`). `Checksummed` is saved only once every build and
//!   analysis is done too; a failure of either stops the other, and the
//!   group's error is the real one;
//! - the wait for the cut-over (catch-up, postponement, the
//!   `on-before-cut-over` hook once, the last verification);
//! - **one** cut-over that swaps every table in one `RENAME TABLE`
//!   ([`crate::cutover`]): either every table is swapped or none is;
//! - each table's cleanup.
//!
//! A table that fails stops the others (they stop as on Ctrl-C, saving
//! their checkpoints); the group's error is the first real one. A failure
//! no rerun can resume from drops what the group made ([`abandon_all`]),
//! since its tables only ever go live together.

use futures_util::future::join_all;

use super::points::consistent_point;
use super::report::Phases;
use super::stage::{record_all, stage_all, timed_all};
use super::*;
use crate::checksum::ChecksumReport;
use crate::progress::TableHandle;

/// Where a table's start ([`TableRun::start`]) left it.
pub(super) enum Started {
    /// An earlier run swapped the table; its cleanup is done.
    Swapped(Box<TableReport>),
    /// The shadow exists; the change stream and the copy are next.
    Shadowed(Box<Shadowed>),
}

/// A table whose shadow exists, before its changes are followed.
pub(super) struct Shadowed {
    pub(super) old: TableInfo,
    pub(super) layout: CopyLayout,
    pub(super) saved: Option<TableCheckpoint>,
    /// When the table's run started, for its report's total.
    pub(super) started: Instant,
}

/// The group's one change stream (its consumer task), stopped on drop.
struct SharedStream {
    consumer: tokio::task::JoinHandle<()>,
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        self.consumer.abort();
    }
}

/// A table past its copy, with what the group's stages need of it.
pub(super) struct Copied {
    pub(super) old: TableInfo,
    pub(super) tconn: Conn,
    pub(super) stats: CopyStats,
    pub(super) handle: TableHandle,
    /// When the table's run started, for its report's total.
    pub(super) started: Instant,
    /// The checkpoint stage the run started from.
    pub(super) stage: TableStage,
    /// Its indexes were built and the shadow analyzed while other tables
    /// of the group still copied.
    pub(super) indexes_built: bool,
}

/// A table of the group past its copy.
struct Member<'r, 'a> {
    run: &'r TableRun<'a>,
    copied: Copied,
    following: Following,
}

/// The tables cut over together.
pub(super) struct Group<'r, 'a> {
    pub(super) runs: Vec<&'r TableRun<'a>>,
    /// Stops every table of the job (their `RunControl`) when one fails.
    pub(super) stop: &'r watch::Sender<bool>,
}

impl Group<'_, '_> {
    /// Runs the group's tables to their cut-over (or to the kept-in-sync
    /// shadow when the cut-over is disabled). Reports in the group's order.
    pub(super) async fn run(&self) -> Result<Vec<TableReport>, RunError> {
        let started = join_all(
            self.runs
                .iter()
                .map(|run| self.stopping_others(run.start())),
        )
        .await;
        let mut reports = Vec::new();
        let mut shadowed = Vec::new();
        let mut failure = None;
        for (run, result) in self.runs.iter().zip(started) {
            match result {
                Ok(Started::Swapped(report)) => reports.push(*report),
                Ok(Started::Shadowed(s)) => shadowed.push((*run, *s)),
                Err(e) => failure = Some(first_real(failure, e)),
            }
        }
        if let Some(e) = failure {
            return Err(self.fail(e).await);
        }
        if shadowed.is_empty() {
            return Ok(reports);
        }
        // Kept to the end of the group: every table's changes come through it.
        let (followings, _stream) = match follow(&shadowed).await {
            Ok(f) => f,
            Err(e) => return Err(self.fail(e).await),
        };
        // A table whose copy ends while another still copies builds its
        // indexes now; the last ones build theirs beside the checksum.
        let copying = std::sync::atomic::AtomicUsize::new(shadowed.len());
        let copying = &copying;
        let copied = join_all(shadowed.into_iter().zip(&followings).map(
            |((run, s), following)| async move {
                let copied = self.stopping_others(async {
                    let mut copied = run.copy_phase(s, following).await?;
                    if copying.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) > 1 {
                        let (gate, _) = watch::channel(false);
                        run.index_phase(&copied, following, &gate).await?;
                        copied.indexes_built = true;
                    }
                    Ok(copied)
                });
                (run, copied.await)
            },
        ))
        .await;
        let mut members = Vec::new();
        for ((run, result), following) in copied.into_iter().zip(followings) {
            match result {
                Ok(copied) => members.push(Member {
                    run,
                    copied,
                    following,
                }),
                Err(e) => failure = Some(first_real(failure, e)),
            }
        }
        if let Some(e) = failure {
            drop(members);
            return Err(self.fail(e).await);
        }
        match self.finish(members).await {
            Ok(done) => {
                reports.extend(done);
                let order =
                    |r: &TableReport| self.runs.iter().position(|run| run.table.name == r.table);
                reports.sort_by_key(order);
                Ok(reports)
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Runs a table's part; if it fails, the group's other tables stop.
    async fn stopping_others<T>(
        &self,
        part: impl std::future::Future<Output = Result<T, RunError>>,
    ) -> Result<T, RunError> {
        let result = part.await;
        if result.is_err() {
            let _ = self.stop.send(true);
        }
        result
    }

    /// A failed group: what a rerun resumes from is kept; otherwise what
    /// the group made is dropped.
    async fn fail(&self, e: RunError) -> RunError {
        for run in &self.runs {
            run.show_state(State::ErrCleanup);
        }
        if is_resumable(&e) {
            // Keep the shadow tables, engines and change stores: a rerun resumes.
            return e;
        }
        abandon_all(&self.runs, e).await
    }

    /// The group's stages from the checksum (and the index builds beside
    /// it) on.
    async fn finish(&self, mut members: Vec<Member<'_, '_>>) -> Result<Vec<TableReport>, RunError> {
        let runs: Vec<&TableRun<'_>> = members.iter().map(|m| m.run).collect();
        let (checksums, lock) = self.checksum_beside_indexes(&mut members).await?;
        let mut reports = Vec::with_capacity(members.len());
        let mut news = Vec::with_capacity(members.len());
        for (m, (new, sum)) in members.iter().zip(checksums) {
            m.copied.handle.complete();
            m.following.check(&m.run.table.name)?;
            let mut report = copy_report(m, &sum, lock);
            report.index_restore_secs =
                m.run.stages.took(Stage::RestoreIndexes).await.as_secs_f64();
            reports.push(report);
            news.push(new);
        }
        let Some(first) = runs.first() else {
            return Ok(reports);
        };
        if !first.config.cutover.enabled {
            if first.config.cutover.keep_in_sync {
                let kept = join_all(members.iter().zip(&news).map(|(m, new)| {
                    m.run.stage(
                        Stage::KeepInSync,
                        m.run.keep_in_sync(&m.copied.old, new, &m.following),
                    )
                }))
                .await;
                kept.into_iter().collect::<Result<Vec<()>, _>>()?;
            }
            for (m, report) in members.iter().zip(reports.iter_mut()) {
                m.run.fill_change_figures(report, &m.following).await;
                report.stages = m.run.stages.timings().await;
                report.phases = Some(Phases::of(&m.run.stages, m.copied.started).await);
                report.total_secs = m.copied.started.elapsed().as_secs_f64();
            }
            return Ok(reports);
        }
        let verifiers = members
            .iter()
            .zip(&news)
            .map(|(m, new)| {
                RowVerifier::new(&m.copied.old, new, m.run.plan)
                    .map(Arc::new)
                    .map_err(|e| RunError::Verify(Box::new(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        stage_all(
            &runs,
            Stage::AwaitCutover,
            await_cutover(&members, &verifiers),
        )
        .await?;
        if first.config.cutover.revert_window.is_some() {
            record_window(&members).await?;
        }
        let cut = stage_all(&runs, Stage::CutOver, cut_over(&members, &verifiers)).await?;
        for (m, report) in members.into_iter().zip(reports.iter_mut()) {
            m.run.fill_change_figures(report, &m.following).await;
            let Member {
                run,
                copied,
                following,
            } = m;
            let Copied {
                mut tconn, started, ..
            } = copied;
            drop(following);
            report.cut_over = true;
            report.cutover_blocked_ms = Some(cut.blocked_ms);
            report.cutover_attempts = Some(cut.attempts);
            report.cutover = Some(cut.clone());
            // The swap is done: what is wrong with the constraints now is
            // reported (and logged as an error), not undone.
            match crate::foreign_keys::after_cutover(
                &mut tconn,
                run.target_schema(),
                &run.table.name,
            )
            .await
            {
                Ok(after)
                    if after.constraints.is_empty()
                        && after.dropped_from_old.is_empty()
                        && after.children.is_empty() => {}
                Ok(after) => report.foreign_keys = Some(after),
                Err(e) => {
                    tracing::error!(table = %run.table.name, error = %e, "foreign keys after the cut-over");
                    report.foreign_keys_problem = Some(e.to_string());
                }
            }
            run.stage(Stage::Cleanup, run.cleanup_after_cutover(&mut tconn))
                .await?;
            report.stages = run.stages.timings().await;
            report.phases = Some(Phases::of(&run.stages, started).await);
            report.total_secs = started.elapsed().as_secs_f64();
        }
        Ok(reports)
    }
}

impl Group<'_, '_> {
    /// [`Stage::Checksum`] of every table at one consistent point, beside
    /// each table's [`TableRun::index_phase`] still to do: the point is
    /// taken first, then the builds start, and each shadow is compared once
    /// its build is under way (see the module's doc). Records the checksum
    /// (`Checksummed`) only once every build is done too. Returns each
    /// shadow as inspected with its checksum, and how long the sources were
    /// locked.
    async fn checksum_beside_indexes(
        &self,
        members: &mut [Member<'_, '_>],
    ) -> Result<(Vec<(TableInfo, ChecksumReport)>, Duration), RunError> {
        let runs: Vec<&TableRun<'_>> = members.iter().map(|m| m.run).collect();
        let Some(first) = runs.first().copied() else {
            return Ok((Vec::new(), Duration::ZERO));
        };
        // The columns are all the checksum needs of the shadow: they are
        // final, whatever the index builds do.
        let mut news = Vec::with_capacity(members.len());
        for m in members.iter_mut() {
            let shadow_name = shadow::shadow_name(&m.run.table.name);
            news.push(
                inspect_table(&mut m.copied.tconn, m.run.target_schema(), &shadow_name).await?,
            );
        }
        let members: &[Member<'_, '_>] = members;
        let (point_taken, point) = watch::channel(false);
        let (gates, gated): (Vec<_>, Vec<_>) =
            members.iter().map(|_| watch::channel(false)).unzip();
        let builds = join_all(members.iter().zip(&gates).map(|(m, gate)| {
            let mut point = point.clone();
            self.stopping_others(async move {
                // The point's drain runs under the sources' lock: no ALTER
                // may take its exclusive moments meanwhile.
                if point.wait_for(|taken| *taken).await.is_err() {
                    return Err(stopped(m.run));
                }
                if m.copied.indexes_built {
                    gate.send_replace(true);
                    return Ok(());
                }
                m.run.index_phase(&m.copied, &m.following, gate).await
            })
        }));
        let checksum = self.stopping_others(timed_all(
            &runs,
            Stage::Checksum,
            compare(members, &news, point_taken, gated),
        ));
        let (built, checksum) = tokio::join!(builds, checksum);
        let mut failure = None;
        for e in built.into_iter().filter_map(Result::err) {
            failure = Some(first_real(failure, e));
        }
        let checksum = match checksum {
            Ok(c) => Some(c),
            Err(e) => {
                failure = Some(first_real(failure, e));
                None
            }
        };
        let ((sums, held), ran) = match (failure, checksum) {
            (None, Some(c)) => c,
            (Some(e), _) => return Err(e),
            (None, None) => return Err(stopped(first)),
        };
        // Every table's indexes are restored: the checksum may be saved.
        record_all(&runs, Stage::Checksum, ran).await?;
        for m in members {
            m.run
                .save_progress(&m.following, m.copied.stats.rows)
                .await?;
        }
        Ok((news.into_iter().zip(sums).collect(), held))
    }
}

/// Of two errors of a group, the one to report: a table stopped because
/// another failed says only "interrupted".
fn first_real(kept: Option<RunError>, new: RunError) -> RunError {
    match kept {
        None => new,
        Some(RunError::Interrupted { .. }) if !matches!(new, RunError::Interrupted { .. }) => new,
        Some(kept) => kept,
    }
}

/// A table's report from its copy and its checksum.
fn copy_report(m: &Member<'_, '_>, sum: &ChecksumReport, lock: Duration) -> TableReport {
    let stats = &m.copied.stats;
    let mut report = TableReport::new(m.run.table, m.run.plan.backend);
    report.rows_copied = stats.rows;
    report.chunks = stats.chunks;
    report.engines = stats.engines;
    report.copy_secs = stats.elapsed.as_secs_f64();
    report.copy_rows_per_sec = stats.rows as f64 / stats.elapsed.as_secs_f64().max(1e-6);
    report.checksum_rows = sum.rows;
    report.checksum_secs = sum.elapsed.as_secs_f64();
    report.checksum_lock_ms = lock.as_secs_f64() * 1000.0;
    report
}

/// The body of [`Stage::Checksum`]: the consistent point of every table
/// (said on `point_taken`), then each table compared at it, its shadow read
/// once its `gates` is open. The comparison stops as soon as the job is
/// asked to (a failed index build, Ctrl-C). Returns each table's checksum
/// and how long the sources were locked.
async fn compare(
    members: &[Member<'_, '_>],
    news: &[TableInfo],
    point_taken: watch::Sender<bool>,
    gates: Vec<watch::Receiver<bool>>,
) -> Result<(Vec<ChecksumReport>, Duration), RunError> {
    let pairs: Vec<(&TableRun<'_>, &Following)> =
        members.iter().map(|m| (m.run, &m.following)).collect();
    let points = consistent_point(&pairs, "found at the checksum's consistent point").await?;
    let held = points.first().map(|p| p.held).unwrap_or_default();
    point_taken.send_replace(true);
    let Some(first) = members.first() else {
        return Ok((Vec::new(), held));
    };
    let sums = or_stopped(first.run, compare_at(members, news, points, gates)).await?;
    Ok((sums, held))
}

/// Compares each table on its own snapshots of the one point, all at once,
/// each shadow once its gate is open.
async fn compare_at(
    members: &[Member<'_, '_>],
    news: &[TableInfo],
    points: Vec<ConsistentPoint>,
    gates: Vec<watch::Receiver<bool>>,
) -> Result<Vec<ChecksumReport>, RunError> {
    // The snapshots hold no lock yet: each ALTER begins before the first read.
    for (m, mut gate) in members.iter().zip(gates) {
        if gate.wait_for(|open| *open).await.is_err() {
            return Err(stopped(m.run));
        }
    }
    let sums = join_all(
        members
            .iter()
            .zip(points)
            .zip(news)
            .map(|((m, point), new)| async move {
                let (mut sconn, mut tconn) = (point.source, point.shadow);
                let sum = checksum_on(
                    &mut sconn,
                    &mut tconn,
                    &m.copied.old,
                    new,
                    m.run.plan,
                    Duration::from_millis(500),
                )
                .await;
                // The shadow's ALTER waits for this snapshot to end.
                let _ = sconn.query_drop("COMMIT").await;
                let _ = tconn.query_drop("COMMIT").await;
                sum
            }),
    )
    .await;
    Ok(sums.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// The error of a part of the group that stopped because another failed
/// (or the run was asked to stop).
fn stopped(run: &TableRun<'_>) -> RunError {
    run.interrupted()
        .err()
        .unwrap_or_else(|| RunError::Interrupted {
            table: run.table.name.clone(),
        })
}

/// `body`, or [`stopped`] as soon as the job is asked to stop (Ctrl-C, or
/// another part of the group failed): dropping `body` drops its sessions,
/// and their snapshots with them (so a waiting ALTER can end).
async fn or_stopped<T>(
    run: &TableRun<'_>,
    body: impl std::future::Future<Output = Result<T, RunError>>,
) -> Result<T, RunError> {
    let mut stop = run.control.shutdown.clone();
    tokio::select! {
        r = body => r,
        Ok(_) = stop.wait_for(|stop| *stop) => Err(stopped(run)),
    }
}

/// [`Stage::AwaitCutover`]: waits until the cut-over may go: every stream
/// caught up, no postponement, the `on-before-cut-over` hook passed, the
/// rows changed meanwhile verified.
async fn await_cutover(
    members: &[Member<'_, '_>],
    verifiers: &[Arc<RowVerifier>],
) -> Result<(), RunError> {
    let Some(first) = members.first().map(|m| m.run) else {
        return Ok(());
    };
    for m in members {
        m.run.wait_for_catch_up(&m.following).await?;
    }
    wait_while_postponed(members, verifiers).await?;
    first
        .ops
        .hook(HookEvent::OnBeforeCutOver)
        .await
        .map_err(|source| RunError::Hook {
            table: label(members),
            source,
        })?;
    // What changed while the cut-over waited is verified outside the
    // cut-over's lock; under it only the last moments remain.
    for (m, verifier) in members.iter().zip(verifiers) {
        m.run.reverify(&m.following, verifier).await?;
        m.run
            .save_progress(&m.following, m.copied.stats.rows)
            .await?;
    }
    Ok(())
}

/// The group's tables, for messages.
fn label(members: &[Member<'_, '_>]) -> String {
    members
        .iter()
        .map(|m| m.run.table.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the group must stop now (Ctrl-C, `panic`, a failed stream), if it must.
fn stop_reason(members: &[Member<'_, '_>]) -> Result<(), RunError> {
    members
        .iter()
        .try_for_each(|m| m.run.must_stop(&m.following))
}

/// Waits while the cut-over is postponed (flag file, sentinel table, or the
/// `postpone` command), verifying the changed rows every few seconds.
async fn wait_while_postponed(
    members: &[Member<'_, '_>],
    verifiers: &[Arc<RowVerifier>],
) -> Result<(), RunError> {
    let Some(first) = members.first().map(|m| m.run) else {
        return Ok(());
    };
    let mut announced = false;
    let mut verified = Instant::now();
    loop {
        stop_reason(members)?;
        if verified.elapsed() >= REVERIFY_INTERVAL {
            for (m, verifier) in members.iter().zip(verifiers) {
                m.run.reverify(&m.following, verifier).await?;
            }
            verified = Instant::now();
        }
        let flag = first
            .config
            .cutover
            .postpone_flag_file
            .as_ref()
            .filter(|f| f.exists());
        let mut conn = first
            .source_pool
            .get_conn()
            .await
            .context(|| "connecting to look for the sentinel table".into())?;
        let sentinel =
            crate::server::inspect::table_exists(&mut conn, first.source_schema(), SENTINEL_TABLE)
                .await?;
        drop(conn);
        let commanded = first.ops.cutover_postponed();
        if flag.is_none() && !sentinel && !commanded {
            if announced {
                tracing::info!("cut-over no longer postponed");
            }
            return Ok(());
        }
        if !announced {
            for m in members {
                m.run.show_state(State::WaitingOnSentinelTable);
            }
            let why = match flag {
                Some(f) => format!("the postpone flag file {} exists", f.display()),
                None if commanded => {
                    "commanded (`unpostpone` on the control socket releases it)".to_string()
                }
                None => format!("the sentinel table {SENTINEL_TABLE} exists"),
            };
            first.progress.emit(RunEvent::CutoverPostponed {
                table: label(members),
                why,
            });
            announced = true;
            first
                .ops
                .hook_logged(HookEvent::OnBeginPostponed, None)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Records the revert window of the group's tables before their cut-over:
/// the live tables' changes are followed from here, from the RENAME on.
async fn record_window(members: &[Member<'_, '_>]) -> Result<(), RunError> {
    let Some(first) = members.first().map(|m| m.run) else {
        return Ok(());
    };
    let mut conn = first
        .source_pool
        .get_conn()
        .await
        .context(|| "connecting to the source".into())?;
    let position = binlog::current_position(&mut conn, first.flavor)
        .await
        .map_err(|e| first.changes_error(ChangesError::Start(e)))?;
    let tables = members
        .iter()
        .map(|m| {
            let pairs = m
                .run
                .plan
                .copied_columns()
                .into_iter()
                .map(|(o, n)| (o.to_string(), n.to_string()))
                .collect();
            (
                m.run.source_schema().to_string(),
                m.run.table.name.clone(),
                pairs,
            )
        })
        .collect();
    super::window::record_pending(first.config, first.checkpoint, tables, position).await
}

/// [`Stage::CutOver`]: the one swap of every table of the group.
async fn cut_over(
    members: &[Member<'_, '_>],
    verifiers: &[Arc<RowVerifier>],
) -> Result<crate::cutover::CutoverReport, RunError> {
    let Some(first) = members.first().map(|m| m.run) else {
        return Err(RunError::Unsupported("a cut-over of no table".into()));
    };
    let mut drain = GroupDrain {
        members: members
            .iter()
            .zip(verifiers)
            .map(|(m, verifier)| RunDrain {
                online: OnlineDrain {
                    state: m.following.state.clone(),
                    timeout: first.config.cutover.lock_wait_timeout.0,
                    verifier: Some(verifier.clone()),
                    target_pool: first.target_pool.clone(),
                },
                run: m.run,
                following: &m.following,
                verifier: verifier.clone(),
            })
            .collect(),
    };
    let stop = || stop_reason(members).err().map(|e| e.to_string());
    let tables: Vec<cutover::SwapTable> = members
        .iter()
        .map(|m| {
            cutover::SwapTable::forward(m.run.source_schema(), &m.run.table.name)
                .with_implicit_values(m.run.plan.implicit_values.clone())
        })
        .collect();
    let cut = crate::cutover::cut_over(
        first.source_pool,
        first.flavor,
        &tables,
        &first.cutover_settings(),
        &mut drain,
        &cutover::Observer {
            progress: first.progress,
            stop: &stop,
        },
    )
    .await;
    let cut = match cut {
        Err(CutoverError::Stopped { .. }) => {
            // Say why in the run's own terms (Ctrl-C, `panic`, the stream).
            stop_reason(members)?;
            cut.map_err(RunError::Cutover)?
        }
        Err(CutoverError::Verify(v)) => return Err(RunError::Verify(v)),
        cut => cut.map_err(RunError::Cutover)?,
    };
    tracing::info!(tables = %label(members), blocked_ms = cut.blocked_ms, attempts = cut.attempts, "cut-over done");
    Ok(cut)
}

/// The cut-over's drain over every table of the group: each table's
/// stream drained and verified in turn (at once where no lock session must
/// be shared).
struct GroupDrain<'r, 'a> {
    members: Vec<RunDrain<'r, 'a>>,
}

impl Drain for GroupDrain<'_, '_> {
    async fn drain_to(
        &mut self,
        target: binlog::BinlogPosition,
        mut locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> Result<(), DrainError> {
        if locked.is_none() {
            let drains = self
                .members
                .iter_mut()
                .map(|m| m.drain_to(target.clone(), None, deadline));
            return join_all(drains).await.into_iter().collect();
        }
        for m in &mut self.members {
            m.drain_to(target.clone(), locked.as_deref_mut(), deadline)
                .await?;
        }
        Ok(())
    }

    async fn catch_up(&mut self) -> Result<(), DrainError> {
        let catch_ups = self.members.iter_mut().map(|m| m.catch_up());
        join_all(catch_ups).await.into_iter().collect()
    }

    async fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> Result<(), DrainError> {
        for m in &mut self.members {
            m.verify_locked(session, shadow_locked).await?;
        }
        Ok(())
    }

    fn verification_backlog(&self) -> usize {
        self.members.iter().map(|m| m.verification_backlog()).sum()
    }

    async fn verify_unlocked(&mut self) -> Result<(), DrainError> {
        for m in &mut self.members {
            if m.verification_backlog() > 0 {
                m.verify_unlocked().await?;
            }
        }
        Ok(())
    }
}

/// Starts the group's one change stream: every table's changes, decoded
/// only for the group's tables, each fed to the table's own online state.
/// Its tokens go through the changelog table of the first table's schema.
/// It starts at the oldest position a table must replay from (a resumed
/// table's saved start; the server's present for a new one): replaying
/// from earlier is harmless, as the last image of a key wins.
async fn follow(
    shadowed: &[(&TableRun<'_>, Shadowed)],
) -> Result<(Vec<Following>, SharedStream), RunError> {
    let Some((first, _)) = shadowed.first() else {
        return Err(RunError::Unsupported("a change stream for no table".into()));
    };
    let mut sconn = first
        .source_pool
        .get_conn()
        .await
        .context(|| "connecting to the source".into())?;
    online::ensure_changelog(&mut sconn, first.source_schema()).await?;
    let saved = shadowed
        .iter()
        .filter_map(|(_, s)| s.saved.as_ref()?.change_stream.position.clone())
        .map(binlog::BinlogPosition::from)
        .min_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
    let from = match saved {
        Some(p) => p,
        None => binlog::current_position(&mut sconn, first.flavor)
            .await
            .map_err(|e| first.changes_error(ChangesError::Start(e)))?,
    };
    drop(sconn);
    let names: Vec<&str> = shadowed
        .iter()
        .map(|(r, _)| r.table.name.as_str())
        .collect();
    tracing::info!(position = %from, tables = %names.join(", "), "following the binlog from here");
    let olds: Vec<&TableInfo> = shadowed.iter().map(|(_, s)| &s.old).collect();
    let mut stream_config = ChangeStreamConfig::for_tables(&olds)
        .map_err(|e| first.changes_error(ChangesError::Start(e)))?;
    stream_config.token_table = Some((
        first.source_schema().to_string(),
        CHANGELOG_TABLE.to_string(),
    ));
    let stream = ChangeStream::start(
        first.source_opts.clone(),
        first.flavor,
        from.clone(),
        stream_config,
    )
    .await
    .map_err(|e| first.changes_error(ChangesError::Start(e)))?;
    let states = shadowed
        .iter()
        .map(|(run, s)| run.online_state(&s.old, &s.layout, &from, first.source_schema()))
        .collect::<Result<Vec<_>, _>>()?;
    // The consumer first, then one apply loop per state, in their order.
    let mut tasks = online::spawn_shared(states.clone(), stream).into_iter();
    let Some(consumer) = tasks.next() else {
        return Err(first.setup_error("the change stream did not start".into()));
    };
    let followings = states
        .into_iter()
        .zip(tasks)
        .map(|(state, apply_loop)| Following {
            state,
            start: from.clone(),
            tasks: vec![apply_loop],
        })
        .collect();
    Ok((followings, SharedStream { consumer }))
}
