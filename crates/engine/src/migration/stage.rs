//! A table run's stages as a type, and the one place that moves through
//! them (Spirit's `status.Tracker.Do` is the model).
//!
//! Three things describe where a table is: the progress [`State`] the
//! operator sees (status, metrics, hooks), the checkpoint's [`TableStage`]
//! a resumed run starts from, and how long each step took. Entering a
//! [`Stage`] through [`TableRun::stage`] sets the state; finishing it saves
//! the checkpoint stage it completes and records its time, in that order. A
//! stage's body never advances either by hand, so the three cannot disagree.
//!
//! A stage the checkpoint says is done still runs its body on resume: each
//! body knows what to skip (the copy starts at the saved watermark, the
//! indexes are not restored twice), and the checkpoint only moves forward.
//!
//! Stages that run at once: a group's [`Stage::Checksum`] runs beside its
//! tables' [`Stage::RestoreIndexes`] and [`Stage::Analyze`] (see
//! [`super::group`]). Its body is timed by [`timed_all`] and recorded by
//! [`record_all`] only once every index build is done too, so the
//! checkpoint never says `Checksummed` of a table whose indexes are not
//! restored (a resumed run skips what the checkpoint says is done). Each
//! stage keeps its own time and when it started ([`StageLog::span`]), so
//! the report shows each one's duration and how they overlapped.
//!
//! Errors: a stage that fails records nothing; its error goes to the
//! caller unchanged, and the checkpoint stays at the last finished stage.

use std::time::{Duration, Instant};

use wraith_checkpoints::TableStage;

use super::{RunError, TableRun};
use crate::progress::{StageTiming, State};

/// The stages of one table's rebuild, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Stage {
    /// The shadow table is created with the new schema (or, on resume, the
    /// killed run's writers are waited out).
    CreateShadow,
    /// The change stream starts; a resumed copy finds its place (rows above
    /// the saved watermark deleted, closed engines imported).
    PrepareCopy,
    /// The rows are copied while changes are applied below the watermark.
    Copy,
    /// The secondary indexes the copy left out are added (while the
    /// group's checksum runs).
    RestoreIndexes,
    /// `ANALYZE TABLE` on the shadow, so its plans are right from the swap.
    Analyze,
    /// Source and shadow compared at one consistent point, beside the index
    /// builds.
    Checksum,
    /// The cut-over is disabled: the shadow kept in step and verified until
    /// the run is stopped.
    KeepInSync,
    /// Catch-up, postponement, the `on-before-cut-over` hook and the last
    /// verification outside the lock.
    AwaitCutover,
    /// The atomic swap.
    CutOver,
    /// wraith's own objects dropped after the swap.
    Cleanup,
}

impl Stage {
    /// The stage's name in reports and logs.
    pub(super) fn name(self) -> &'static str {
        match self {
            Stage::CreateShadow => "create_shadow",
            Stage::PrepareCopy => "prepare_copy",
            Stage::Copy => "copy",
            Stage::RestoreIndexes => "restore_indexes",
            Stage::Analyze => "analyze",
            Stage::Checksum => "checksum",
            Stage::KeepInSync => "keep_in_sync",
            Stage::AwaitCutover => "await_cutover",
            Stage::CutOver => "cut_over",
            Stage::Cleanup => "cleanup",
        }
    }

    /// The progress state shown while the stage runs.
    fn state(self) -> State {
        match self {
            Stage::CreateShadow | Stage::PrepareCopy => State::Initial,
            Stage::Copy => State::CopyRows,
            Stage::RestoreIndexes => State::RestoreSecondaryIndexes,
            Stage::Analyze => State::AnalyzeTable,
            Stage::Checksum => State::Checksum,
            Stage::KeepInSync | Stage::AwaitCutover => State::PostChecksum,
            Stage::CutOver => State::CutOver,
            Stage::Cleanup => State::Close,
        }
    }

    /// The checkpoint stage saved when the stage finishes (`None`: nothing
    /// a resumed run could skip).
    fn completes(self) -> Option<TableStage> {
        match self {
            Stage::CreateShadow => Some(TableStage::ShadowCreated),
            Stage::PrepareCopy => Some(TableStage::Copying),
            Stage::Copy => Some(TableStage::CopyDone),
            Stage::RestoreIndexes => Some(TableStage::IndexesRestored),
            Stage::Analyze | Stage::KeepInSync => None,
            Stage::Checksum => Some(TableStage::Checksummed),
            Stage::AwaitCutover => Some(TableStage::CuttingOver),
            Stage::CutOver => Some(TableStage::CutOver),
            Stage::Cleanup => Some(TableStage::Done),
        }
    }
}

/// One run of a stage's body: when it began and how long it took.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ran {
    pub(super) started: Instant,
    pub(super) took: Duration,
}

impl Ran {
    pub(super) fn ended(&self) -> Instant {
        self.started + self.took
    }
}

/// The stages a table run finished, in order, with their times.
#[derive(Debug, Default)]
pub(super) struct StageLog {
    finished: tokio::sync::Mutex<Vec<(Stage, Ran)>>,
}

impl StageLog {
    /// Every finished stage's time, in the order they were recorded.
    pub(super) async fn timings(&self) -> Vec<StageTiming> {
        self.finished
            .lock()
            .await
            .iter()
            .map(|(stage, ran)| StageTiming {
                stage: stage.name(),
                secs: ran.took.as_secs_f64(),
            })
            .collect()
    }

    /// How long `stage` took (zero when it did not run).
    pub(super) async fn took(&self, stage: Stage) -> Duration {
        self.finished
            .lock()
            .await
            .iter()
            .filter(|(s, _)| *s == stage)
            .map(|(_, ran)| ran.took)
            .sum()
    }

    /// From the first start of any of `stages` to the last end of one
    /// (`None` when none of them ran).
    pub(super) async fn span(&self, stages: &[Stage]) -> Option<(Instant, Instant)> {
        let finished = self.finished.lock().await;
        let runs = finished.iter().filter(|(s, _)| stages.contains(s));
        let start = runs.clone().map(|(_, ran)| ran.started).min()?;
        let end = runs.map(|(_, ran)| ran.ended()).max()?;
        Some((start, end))
    }
}

impl TableRun<'_> {
    /// Runs `body` as `stage`: shows the stage's state, and once the body
    /// succeeded saves the checkpoint stage it completes and records its
    /// time.
    pub(super) async fn stage<T>(
        &self,
        stage: Stage,
        body: impl std::future::Future<Output = Result<T, RunError>>,
    ) -> Result<T, RunError> {
        stage_all(&[self], stage, body).await
    }

    /// Shows that the table entered `stage`.
    fn enter(&self, stage: Stage) {
        self.show_state(stage.state());
        tracing::debug!(table = %self.table.name, stage = stage.name(), "stage begins");
    }

    /// Saves the checkpoint stage `stage` completes and records its time.
    async fn finish(&self, stage: Stage, ran: Ran) -> Result<(), RunError> {
        if let Some(done) = stage.completes() {
            self.advance(done).await?;
        }
        tracing::info!(table = %self.table.name, stage = stage.name(), secs = ran.took.as_secs_f64(), "stage done");
        self.stages.finished.lock().await.push((stage, ran));
        Ok(())
    }
}

/// Runs `body` as `stage` of every table of `runs` at once (a group's
/// checksum, its wait and its one cut-over): each table shows the stage,
/// and once the body succeeded each saves the checkpoint stage and the time.
pub(super) async fn stage_all<T>(
    runs: &[&TableRun<'_>],
    stage: Stage,
    body: impl std::future::Future<Output = Result<T, RunError>>,
) -> Result<T, RunError> {
    let (out, ran) = timed_all(runs, stage, body).await?;
    record_all(runs, stage, ran).await?;
    Ok(out)
}

/// The first half of [`stage_all`]: each table of `runs` shows `stage`,
/// and `body` runs and is timed; nothing is recorded ([`record_all`] does
/// it when the caller may).
pub(super) async fn timed_all<T>(
    runs: &[&TableRun<'_>],
    stage: Stage,
    body: impl std::future::Future<Output = Result<T, RunError>>,
) -> Result<(T, Ran), RunError> {
    for run in runs {
        run.enter(stage);
    }
    let started = Instant::now();
    let out = body.await?;
    Ok((
        out,
        Ran {
            started,
            took: started.elapsed(),
        },
    ))
}

/// The second half of [`stage_all`]: each table of `runs` saves the
/// checkpoint stage `stage` completes and records `ran` as its time.
pub(super) async fn record_all(
    runs: &[&TableRun<'_>],
    stage: Stage,
    ran: Ran,
) -> Result<(), RunError> {
    for run in runs {
        run.finish(stage, ran).await?;
    }
    Ok(())
}
