//! Dropping what wraith made, in one place: [`clean_up`] is called after
//! `--fresh`, after a failure that cannot be resumed, after the cut-over
//! (also of a run killed during it), when a job ends, and by [`discard`]
//! when an operator gives a job up (a cancelled request). The moment
//! ([`Moment`]) decides which of wraith's objects go; the source table is
//! never among them. Each object is dropped on its own, so one that cannot
//! be dropped does not keep the others, and the result says which were
//! left with the statement to drop them by hand.

use super::*;

/// What wraith makes for a table, as cleanup sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owned {
    /// `_t_new`, the shadow table.
    Shadow,
    /// The cut-over's sentry and swap marker tables.
    Markers,
    /// `_t_old`, the source table renamed away by the cut-over.
    OldTable,
    /// The triggers `_t_old` took along in the RENAME (the live table has
    /// their copies): they must never fire on the old table.
    OldTriggers,
    /// The changelog table the stream's tokens are written to.
    Changelog,
    /// The local change store and the local backend's engines.
    LocalState,
}

/// When a cleanup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Moment {
    /// `--fresh`: what an earlier run left before its cut-over.
    Fresh,
    /// A failure no rerun can resume from, before the cut-over.
    Abandoned,
    /// The tables are swapped (by this run, or by a run killed during it).
    AfterCutover,
    /// The job ended without a cut-over (it is disabled): the shadow stays.
    Finished,
    /// The job is given up by its operator (a cancelled request): every
    /// trace of it goes, as if it had never run.
    Discarded,
}

impl Moment {
    fn drops(self, config: &Config) -> Vec<Owned> {
        match self {
            Moment::Fresh => vec![Owned::Shadow, Owned::Markers, Owned::LocalState],
            Moment::Abandoned => vec![Owned::Shadow, Owned::Changelog, Owned::LocalState],
            Moment::AfterCutover if config.cutover.drop_old_table => {
                vec![
                    Owned::OldTriggers,
                    Owned::OldTable,
                    Owned::Changelog,
                    Owned::LocalState,
                ]
            }
            // The revert window follows the live table through the changelog.
            Moment::AfterCutover if config.cutover.revert_window.is_some() => {
                vec![Owned::OldTriggers, Owned::LocalState]
            }
            Moment::AfterCutover => vec![Owned::OldTriggers, Owned::Changelog, Owned::LocalState],
            Moment::Finished => vec![Owned::LocalState],
            Moment::Discarded => vec![
                Owned::Shadow,
                Owned::Markers,
                Owned::Changelog,
                Owned::LocalState,
            ],
        }
    }
}

/// What one cleanup did.
#[derive(Debug, Default)]
pub(super) struct Cleaned {
    /// What was dropped, in words.
    pub dropped: Vec<String>,
    /// What could not be dropped, with the statement to do it by hand.
    pub left: Vec<(String, RunError)>,
}

impl Cleaned {
    /// The first failure, as the caller's error.
    pub(super) fn into_result(self) -> Result<(), RunError> {
        match self.left.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Logs what could not be dropped (when nothing waits on it).
    fn warn(&self) {
        for (what, e) in &self.left {
            tracing::warn!(error = %e, "could not drop {what}; drop it by hand");
        }
    }

    /// In words, for an error message.
    fn describe(&self) -> String {
        let mut parts = self.dropped.clone();
        for (what, e) in &self.left {
            parts.push(format!("NOT {what} ({e})"));
        }
        parts.join(", ")
    }
}

/// Drops what `moment` says of wraith's objects for `table`.
pub(super) async fn clean_up(
    conn: &mut Conn,
    config: &Config,
    table: &TableConfig,
    moment: Moment,
) -> Cleaned {
    let mut cleaned = Cleaned::default();
    let (source, target) = (config.schema_of(table), config.target_schema_of(table));
    for owned in moment.drops(config) {
        let (what, result): (String, Result<(), RunError>) = match owned {
            Owned::Shadow => {
                let shadow = shadow::shadow_name(&table.name);
                drop_table(conn, target, &shadow, "the shadow table").await
            }
            Owned::Markers => (
                "the cut-over's marker tables".to_string(),
                cutover::drop_markers(conn, source, &table.name)
                    .await
                    .map_err(RunError::from),
            ),
            Owned::OldTriggers => {
                let old = shadow::old_name(&table.name);
                let result = cutover::triggers::drop_all_on(conn, source, &old)
                    .await
                    .map(|_| ())
                    .map_err(RunError::from);
                (format!("the triggers of {source}.{old}"), result)
            }
            Owned::OldTable => {
                let old = shadow::old_name(&table.name);
                drop_table(conn, source, &old, "the old table").await
            }
            Owned::Changelog if changelog_shared(conn, config).await => {
                cleaned
                    .dropped
                    .push("nothing of the changelog table (kept: other wraith jobs of this server have checkpoints)".into());
                continue;
            }
            Owned::Changelog => {
                drop_table(conn, source, CHANGELOG_TABLE, "the changelog table").await
            }
            Owned::LocalState => {
                // Gone already is as good as removed.
                let _ = std::fs::remove_dir_all(changes_dir(config, table));
                let _ = std::fs::remove_dir_all(engines_dir(config, table));
                ("its local change store and engines".to_string(), Ok(()))
            }
        };
        match result {
            Ok(()) => cleaned.dropped.push(what),
            Err(e) => cleaned.left.push((what, e)),
        }
    }
    cleaned
}

/// Whether another job may be using the changelog table (one per schema,
/// shared by every job writing tokens there): any other job with a
/// checkpoint in the table store is taken as running (`wraith serve` runs
/// several at once). Keeping the small table is harmless; dropping it under
/// a running job fails that job's cut-over.
pub(super) async fn changelog_shared(conn: &mut Conn, config: &Config) -> bool {
    if config.checkpoint.store != crate::config::CheckpointStore::Table {
        return false;
    }
    let others: Result<Option<u64>, _> = conn
        .exec_first(
            format!(
                "SELECT COUNT(*) FROM {}.{} WHERE job <> ?",
                quote_ident(&config.target().database),
                quote_ident(wraith_checkpoints::CHECKPOINT_TABLE)
            ),
            (resume::job_key(config),),
        )
        .await;
    matches!(others, Ok(Some(n)) if n > 0)
}

/// `DROP TABLE IF EXISTS schema.name`, said as `label schema.name`.
async fn drop_table(
    conn: &mut Conn,
    schema: &str,
    name: &str,
    label: &str,
) -> (String, Result<(), RunError>) {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let result = conn
        .query_drop(format!("DROP TABLE IF EXISTS {qualified}"))
        .await
        .context(|| format!("dropping {qualified}; run DROP TABLE {qualified}"))
        .map_err(RunError::from);
    (format!("{label} {qualified}"), result)
}

/// A run killed during or after its cut-over: the source may already be the
/// rebuilt table, so preflight's ALTER check would fail. Look at the tables
/// first; when every table's swap has happened, finish the job here.
pub(super) async fn finish_interrupted_cutover(
    config: &Config,
    progress: &ProgressHandle,
) -> Result<Option<Vec<TableReport>>, RunError> {
    let target_opts = server::connection_opts(config.target()).map_err(RunError::Connection)?;
    let pool = server::pool(target_opts, 2);
    let result = async {
        let store = resume::open_store(config, &pool);
        let key = resume::job_key(config);
        let Some(task) = store.load(&key).await.map_err(RunError::Checkpoint)? else {
            return Ok(None);
        };
        let mut reports = Vec::new();
        for t in &config.tables {
            let Some(tc) = task.table(config.schema_of(t), &t.name) else {
                return Ok(None);
            };
            let done = match tc.stage() {
                TableStage::CuttingOver => {
                    cutover::resolve_interrupted(&pool, config.schema_of(t), &t.name).await?
                        == CutoverState::Done
                }
                stage => stage >= TableStage::CutOver,
            };
            if !done {
                return Ok(None);
            }
            reports.push(t);
        }
        let mut conn = pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        for t in &config.tables {
            clean_up(&mut conn, config, t, Moment::AfterCutover)
                .await
                .into_result()?;
            progress.emit(RunEvent::InterruptedRunFinished {
                table: t.name.clone(),
            });
        }
        store.remove(&key).await.map_err(RunError::Checkpoint)?;
        Ok(Some(
            reports
                .into_iter()
                .map(|table| {
                    let mut report = TableReport::new(table, config.copy.backend);
                    report.cut_over = true;
                    report
                })
                .collect(),
        ))
    }
    .await;
    let _ = pool.disconnect().await;
    result
}

/// `--fresh`: drops what an earlier run left (shadow, sentry, engines,
/// change store). The source table is never touched.
pub(super) async fn start_over(
    config: &Config,
    conn: &mut Conn,
    saved: Option<&TaskCheckpoint>,
    progress: &ProgressHandle,
) -> Result<(), RunError> {
    for t in &config.tables {
        if let Some(task) = saved {
            if let Some(tc) = task.table(config.schema_of(t), &t.name) {
                if tc.stage() >= TableStage::CutOver {
                    continue;
                }
            }
        }
        clean_up(conn, config, t, Moment::Fresh)
            .await
            .into_result()?;
        progress.emit(RunEvent::FreshDropped {
            table: t.name.clone(),
            shadow: shadow::shadow_name(&t.name),
        });
    }
    Ok(())
}

/// Drops everything a job that has not cut over made (shadow, markers,
/// changelog, local state) and its checkpoint; the source tables are never
/// touched. A job past its cut-over is refused: its tables are swapped, and
/// `wraith revert` is the way back. Returns what was dropped, in words.
pub async fn discard(config: &Config) -> Result<String, RunError> {
    let target_opts = server::connection_opts(config.target()).map_err(RunError::Connection)?;
    let pool = server::pool(target_opts, 2);
    let result = async {
        let store = resume::open_store(config, &pool);
        let key = resume::job_key(config);
        if let Some(task) = store.load(&key).await.map_err(RunError::Checkpoint)? {
            for t in &config.tables {
                let stage = task
                    .table(config.schema_of(t), &t.name)
                    .map(|tc| tc.stage());
                if stage.is_some_and(|s| s >= TableStage::CuttingOver) {
                    return Err(RunError::Window(format!(
                        "{}.{} is cut over (or cutting over), so the job cannot be discarded; \
                         `wraith revert` swaps the old table back while a revert window is open",
                        config.schema_of(t),
                        t.name
                    )));
                }
            }
        }
        let mut conn = pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let mut cleaned = Cleaned::default();
        for t in &config.tables {
            let one = clean_up(&mut conn, config, t, Moment::Discarded).await;
            cleaned.dropped.extend(one.dropped);
            cleaned.left.extend(one.left);
        }
        let words = cleaned.describe();
        cleaned.into_result()?;
        store.remove(&key).await.map_err(RunError::Checkpoint)?;
        Ok(words)
    }
    .await;
    let _ = pool.disconnect().await;
    result
}

impl TableRun<'_> {
    /// [`Stage::Cleanup`]: what the swap left behind; a table that cannot
    /// be dropped is logged, since the swap itself is done.
    pub(super) async fn cleanup_after_cutover(&self, conn: &mut Conn) -> Result<(), RunError> {
        clean_up(conn, self.config, self.table, Moment::AfterCutover)
            .await
            .warn();
        Ok(())
    }
}

/// A failure that cannot be resumed: drops what this run created for the
/// group's tables (shadow, changelog table, local state; a table that
/// failed before its shadow was this job's keeps it) and the checkpoint,
/// so a rerun starts clean, and says what was dropped.
pub(super) async fn abandon_all(runs: &[&TableRun<'_>], e: RunError) -> RunError {
    let Some(first) = runs.first() else {
        return e;
    };
    let mut cleaned = Cleaned::default();
    match first.target_pool.get_conn().await {
        Ok(mut conn) => {
            for run in runs
                .iter()
                .filter(|r| r.made_shadow.load(std::sync::atomic::Ordering::Relaxed))
            {
                let c = clean_up(&mut conn, run.config, run.table, Moment::Abandoned).await;
                cleaned.dropped.extend(c.dropped);
                cleaned.left.extend(c.left);
            }
        }
        Err(conn_err) => cleaned.left.push((
            "anything (no connection to the target)".into(),
            RunError::Connection(conn_err.to_string()),
        )),
    }
    match first.checkpoint.remove().await {
        Ok(()) => cleaned
            .dropped
            .push(format!("its checkpoint in {}", first.checkpoint.describe())),
        Err(cp_err) => cleaned
            .left
            .push(("its checkpoint".into(), RunError::Checkpoint(cp_err))),
    }
    for (what, e) in &cleaned.left {
        tracing::error!(error = %e, "could not drop {what} after a failure");
    }
    RunError::Abandoned {
        error: Box::new(e),
        dropped: cleaned.describe(),
    }
}
