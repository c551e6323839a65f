//! Dropping what wraith made: after `--fresh`, after a run killed during or
//! after its cut-over, and after the cut-over itself.

use super::*;

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
            let Some(tc) = task.table(&config.source.database, &t.name) else {
                return Ok(None);
            };
            let done = match tc.stage() {
                TableStage::CuttingOver => {
                    cutover::resolve_interrupted(&pool, &config.source.database, &t.name).await?
                        == CutoverState::Done
                }
                stage => stage >= TableStage::CutOver,
            };
            if !done {
                return Ok(None);
            }
            reports.push(t.name.clone());
        }
        let mut conn = pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let qs = quote_ident(&config.source.database);
        for t in &config.tables {
            if config.cutover.drop_old_table {
                conn.query_drop(format!(
                    "DROP TABLE IF EXISTS {qs}.{}",
                    quote_ident(&shadow::old_name(&t.name))
                ))
                .await
                .context(|| "dropping the old table".into())?;
            }
            let _ = std::fs::remove_dir_all(changes_dir(config, t));
            let _ = std::fs::remove_dir_all(engines_dir(config, t));
            progress.emit(RunEvent::InterruptedRunFinished {
                table: t.name.clone(),
            });
        }
        conn.query_drop(format!(
            "DROP TABLE IF EXISTS {qs}.{}",
            quote_ident(CHANGELOG_TABLE)
        ))
        .await
        .context(|| "dropping the changelog table".into())?;
        store.remove(&key).await.map_err(RunError::Checkpoint)?;
        Ok(Some(
            reports
                .into_iter()
                .map(|table| TableReport::already_done(&table, config.copy.backend, true))
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
            if let Some(tc) = task.table(&config.source.database, &t.name) {
                if tc.stage() >= TableStage::CutOver {
                    continue;
                }
            }
        }
        shadow::drop_shadow(conn, &config.target().database, &t.name).await?;
        cutover::drop_markers(conn, &config.source.database, &t.name).await?;
        let _ = std::fs::remove_dir_all(changes_dir(config, t));
        let _ = std::fs::remove_dir_all(engines_dir(config, t));
        progress.emit(RunEvent::FreshDropped {
            table: t.name.clone(),
            shadow: shadow::shadow_name(&t.name),
        });
    }
    Ok(())
}

impl TableRun<'_> {
    pub(super) async fn cleanup_after_cutover(&self, conn: &mut Conn) {
        let qs = quote_ident(self.source_schema());
        if self.config.cutover.drop_old_table {
            let old = shadow::old_name(&self.table.name);
            if let Err(e) = conn
                .query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&old)))
                .await
            {
                tracing::warn!(error = %e, "could not drop {old}; drop it by hand");
            }
        }
        if let Err(e) = conn
            .query_drop(format!(
                "DROP TABLE IF EXISTS {qs}.{}",
                quote_ident(CHANGELOG_TABLE)
            ))
            .await
        {
            tracing::warn!(error = %e, "could not drop {CHANGELOG_TABLE}");
        }
    }

    /// A failure that cannot be resumed: drops what this run created for the
    /// table (shadow, changelog table, checkpoint, local state) so a rerun
    /// starts clean, and says what was dropped.
    pub(super) async fn abandon(&self, e: RunError, tconn: &mut Conn) -> RunError {
        // This cannot be resumed: drop what this run created so a
        // rerun starts clean, and say what was dropped.
        let mut dropped = Vec::new();
        let shadow_name = format!(
            "{}.{}",
            quote_ident(self.target_schema()),
            quote_ident(&shadow::shadow_name(&self.table.name))
        );
        match shadow::drop_shadow(tconn, self.target_schema(), &self.table.name).await {
            Ok(()) => dropped.push(format!("the shadow table {shadow_name}")),
            Err(drop_err) => {
                tracing::error!(error = %drop_err, "could not drop the shadow table after a failure");
                dropped.push(format!(
                    "NOT the shadow table ({drop_err}: run DROP TABLE {shadow_name})"
                ));
            }
        }
        let changelog = format!(
            "{}.{}",
            quote_ident(self.source_schema()),
            quote_ident(CHANGELOG_TABLE)
        );
        match tconn
            .query_drop(format!("DROP TABLE IF EXISTS {changelog}"))
            .await
        {
            Ok(()) => dropped.push(format!("the changelog table {changelog}")),
            Err(drop_err) => dropped.push(format!(
                "NOT the changelog table ({drop_err}: run DROP TABLE {changelog})"
            )),
        }
        match self.checkpoint.remove().await {
            Ok(()) => dropped.push(format!("its checkpoint in {}", self.checkpoint.describe())),
            Err(cp_err) => {
                tracing::error!(error = %cp_err, "could not remove the checkpoint after a failure");
                dropped.push(format!("NOT its checkpoint ({cp_err})"));
            }
        }
        let _ = std::fs::remove_dir_all(changes_dir(self.config, self.table));
        let _ = std::fs::remove_dir_all(engines_dir(self.config, self.table));
        dropped.push("its local change store and engines".into());
        RunError::Abandoned {
            error: Box::new(e),
            dropped: dropped.join(", "),
        }
    }
}
