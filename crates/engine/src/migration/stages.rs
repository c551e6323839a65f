//! A table's stages after its shadow exists: copy, restore indexes, analyze,
//! keep in sync.
//!
//! The index build ([`TableRun::index_phase`]) runs beside the group's
//! checksum: its ALTER is `ALGORITHM=INPLACE, LOCK=NONE`, so the change
//! applier keeps writing the shadow while it builds, and it says on a
//! *gate* when it is past its exclusive start (the metadata lock it takes
//! for a moment to begin): the checksum reads the shadow only after that,
//! since its snapshot's shared lock would otherwise hold the ALTER's start
//! (and every write queued behind it) for the whole comparison. The ALTER
//! still needs the exclusive lock for a moment at its end, and waits for the
//! checksum's snapshot to commit; the applier waits behind it meanwhile,
//! which is safe because nothing the comparison does waits for the applier.
//! An ALTER the server cannot run with `LOCK=NONE` (one that blocks writes
//! while it builds) runs as before, and its gate opens only when it is done:
//! the checksum then follows it as it used to.

use super::*;

/// The states `information_schema.PROCESSLIST` shows for an in-place ALTER
/// past its exclusive start (MariaDB and MySQL alike): it holds only the
/// shared upgradable lock from the first until its commit asks for the
/// exclusive one.
const ALTER_UNDER_WAY: [&str; 2] = ["altering table", "committing alter table to storage engine"];

/// The least `lock_wait_timeout` the index build's session gets (MariaDB's
/// default): its last step waits for the checksum's snapshot, and a short
/// server-wide setting must not throw the built index away.
const INDEX_BUILD_LOCK_WAIT_SECS: u64 = 86_400;

impl TableRun<'_> {
    /// The table's stages after the shadow exists up to its copy, each its
    /// own function run through [`TableRun::stage`]: prepare the copy,
    /// copy. The index build ([`TableRun::index_phase`]) follows, beside
    /// the group's checksum ([`super::group`]).
    pub(super) async fn copy_phase(
        &self,
        shadowed: Shadowed,
        following: &Following,
    ) -> Result<Copied, RunError> {
        let Shadowed {
            old,
            layout,
            saved,
            started,
        } = shadowed;
        let saved = saved.as_ref();
        let stage = saved
            .map(|t| t.stage())
            .unwrap_or(TableStage::ShadowCreated);
        let mut tconn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let (copy_needed, start_after) = self
            .stage(
                Stage::PrepareCopy,
                self.prepare_copy(&old, &layout, following, &mut tconn, saved, stage),
            )
            .await?;
        let (stats, handle) = self
            .stage(
                Stage::Copy,
                self.copy(&old, &layout, following, copy_needed, start_after),
            )
            .await?;
        self.interrupted()?;
        Ok(Copied {
            old,
            tconn,
            stats,
            handle,
            started,
            stage,
            indexes_built: false,
        })
    }

    /// [`Stage::RestoreIndexes`] then [`Stage::Analyze`] (the optimizer
    /// must know the new indexes). `gate` is set once the checksum may read
    /// the shadow (see the module's doc); on every path that returns, it is
    /// set or dropped.
    pub(super) async fn index_phase(
        &self,
        copied: &Copied,
        following: &Following,
        gate: &watch::Sender<bool>,
    ) -> Result<(), RunError> {
        self.stage(
            Stage::RestoreIndexes,
            self.restore_indexes(copied.stage, following, copied.stats.rows, gate),
        )
        .await?;
        gate.send_replace(true);
        self.stage(Stage::Analyze, self.analyze()).await
    }

    /// Starts following the changes, and finds where the copy starts: after
    /// the saved low watermark of a resumed run (rows above it deleted,
    /// closed engines imported). Returns the following, whether a copy is
    /// needed and the key it starts after.
    async fn prepare_copy(
        &self,
        old: &TableInfo,
        layout: &CopyLayout,
        following: &Following,
        tconn: &mut Conn,
        saved: Option<&TableCheckpoint>,
        stage: TableStage,
    ) -> Result<(bool, Option<Vec<wraith_backend::Value>>), RunError> {
        self.progress
            .table(&self.table.name, 0)
            .attach_stream(following.state.clone());
        let (config, table) = (self.config, self.table);
        let target_schema = self.target_schema().to_string();
        let shadow_name = shadow::shadow_name(&table.name);
        // Where the copy starts: after the saved low watermark of a resumed run.
        let all_copied =
            saved.is_some_and(|t| t.change_stream.low_watermark.as_deref() == Some(&[0xFF][..]));
        let mut copy_needed = stage < TableStage::CopyDone && !all_copied;
        let mut start_after = None;
        if copy_needed {
            let low = saved
                .filter(|t| t.change_stream.position.is_some())
                .and_then(|t| t.change_stream.low_watermark.clone());
            if saved.is_some_and(|t| t.change_stream.position.is_some()) {
                let shadow_key = self.shadow_chunk_key(old)?;
                let deleted = resume::delete_above(
                    tconn,
                    &target_schema,
                    &shadow_name,
                    &shadow_key,
                    low.as_deref(),
                )
                .await?;
                let low = self.import_closed_engines(saved, low, layout).await?;
                let _ = std::fs::remove_dir_all(engines_dir(config, table));
                self.progress.emit(RunEvent::CopyResumed {
                    table: table.name.clone(),
                    recopied: deleted,
                });
                let everything = low.as_deref() == Some(&[0xFF][..]);
                match &low {
                    // The reopened engines reached the table's end.
                    Some(_) if everything => copy_needed = false,
                    Some(low) => {
                        start_after =
                            Some(wraith_backend::decode_key(low).map_err(|e| {
                                self.setup_error(format!("saved low watermark: {e}"))
                            })?)
                    }
                    None => {}
                }
                {
                    let mut marks = following.state.marks().map_err(|e| self.changes_error(e))?;
                    *marks = if everything {
                        crate::changes::Watermarks::resumed(None)
                    } else {
                        crate::changes::Watermarks::resumed(low.clone())
                    };
                    if everything {
                        marks.copy_done();
                    }
                }
            }
            self.save_progress(following, 0).await?;
        }
        Ok((copy_needed, start_after))
    }

    /// Copies the rows (or nothing when a resumed run is past the copy),
    /// saving progress on the way.
    async fn copy(
        &self,
        old: &TableInfo,
        layout: &CopyLayout,
        following: &Following,
        copy_needed: bool,
        start_after: Option<Vec<wraith_backend::Value>>,
    ) -> Result<(CopyStats, crate::progress::TableHandle), RunError> {
        let (config, table, plan) = (self.config, self.table, self.plan);
        let backend = make_backend(config, table, plan.backend, self.target_pool, self.ops)?;
        let avg_row = (old.estimated_bytes / old.estimated_rows.max(1)).max(64);
        let engine_rows = (config.local.engine_size.0 / avg_row).max(10_000);
        let handle = self.progress.table(&table.name, old.estimated_rows);
        handle.set_total(old.estimated_rows);
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        self.ops
            .hook_logged(HookEvent::OnRowcountComplete, None)
            .await;
        let copy = self.copy_or_skip(
            copy_needed,
            copy_table(
                CopyJob {
                    source_schema: self.source_schema().to_string(),
                    table: table.name.clone(),
                    layout: layout.clone(),
                    threads: config.copy.threads,
                    chunk_target: config
                        .throttle
                        .chunk_target(config.copy.chunk_target.0, config.copy.threads),
                    initial_chunk_rows: config.copy.initial_chunk_rows,
                    engine_rows,
                    server_side: config.copy.server_side_copy
                        && plan.backend != BackendKind::Local
                        && config.same_server(),
                    online: Some(following.state.clone()),
                    start_after,
                    closed_engines: Some(closed_tx),
                    ops: Some(self.ops.clone()),
                },
                self.source_pool,
                backend.clone(),
                handle.clone(),
            ),
        );
        tokio::pin!(copy);
        let mut shutdown = self.control.shutdown.clone();
        let stats = loop {
            tokio::select! {
                r = &mut copy => break r.map_err(|source| RunError::Copy { table: table.name.clone(), source: Box::new(source) })?,
                _ = wait_for_error(following) => return Err(following.check(&table.name).err().unwrap_or_else(|| self.changes_error(ChangesError::Stopped))),
                Some(closed) = closed_rx.recv() => self.record_closed_engine(closed).await?,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        self.save_progress(following, handle.rows_copied()).await?;
                        self.interrupted()?;
                    }
                }
                _ = tokio::time::sleep(config.checkpoint.interval.0) => {
                    self.save_progress(following, handle.rows_copied()).await?;
                }
            }
        };
        backend.close().await;
        following.check(&table.name)?;
        following
            .state
            .marks()
            .map_err(|e| self.changes_error(e))?
            .copy_done();
        handle.set_total(stats.rows);
        self.ops
            .hook_logged(HookEvent::OnRowCopyComplete, None)
            .await;
        tracing::info!(table = %table.name, rows = stats.rows, chunks = stats.chunks, engines = stats.engines,
            secs = stats.elapsed.as_secs_f64(), "copy done");
        self.save_progress(following, stats.rows).await?;
        Ok((stats, handle))
    }

    /// Restores the secondary indexes the copy left out (unless a resumed
    /// run is past them), setting `gate` once the checksum may read the
    /// shadow.
    async fn restore_indexes(
        &self,
        stage: TableStage,
        following: &Following,
        rows: u64,
        gate: &watch::Sender<bool>,
    ) -> Result<(), RunError> {
        let mut tconn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        // The shadow gets the source's constraints only in the cut-over's
        // locked phase (see `foreign_keys::drop_from_shadow`): a run resumed
        // after an attempt that could not take them off does it now, first,
        // as its bounded wait for the shadow would fail behind the
        // checksum's snapshot.
        crate::foreign_keys::drop_from_shadow(&mut tconn, self.target_schema(), &self.table.name)
            .await
            .map_err(|e| match e {
                crate::foreign_keys::ForeignKeyError::Db(e) => RunError::Db(e),
                e => RunError::Unsupported(format!(
                    "taking the foreign keys off the shadow of {}: {e}",
                    self.table.name
                )),
            })?;
        drop(tconn);
        if stage < TableStage::IndexesRestored {
            self.build_indexes(gate).await?;
            self.save_progress(following, rows).await?;
        }
        following.check(&self.table.name)
    }

    /// Adds the deferred indexes the shadow lacks (a resumed run may find
    /// some built: the ALTER is atomic, the checkpoint after it may not have
    /// been written) in one online ALTER on a session of its own, opening
    /// `gate` once it is under way. One the server refuses to run online
    /// runs as [`shadow::restore_indexes`] does, and `gate` waits for its end.
    async fn build_indexes(&self, gate: &watch::Sender<bool>) -> Result<(), RunError> {
        if self.plan.deferrable_indexes.is_empty() {
            return Ok(());
        }
        let shadow_name = shadow::shadow_name(&self.table.name);
        let mut conn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        conn.query_drop(format!(
            "SET SESSION lock_wait_timeout = GREATEST(@@GLOBAL.lock_wait_timeout, {INDEX_BUILD_LOCK_WAIT_SECS})"
        ))
        .await
        .context(|| "setting the index build's lock_wait_timeout".into())?;
        // Replicas running parallel replication then build with the source,
        // instead of lagging by the whole build once it has finished.
        server::log_alter_in_two_phases(&mut conn).await?;
        let existing = inspect_table(&mut conn, self.target_schema(), &shadow_name).await?;
        let adds: Vec<String> = self
            .plan
            .deferrable_indexes
            .iter()
            .filter(|i| !existing.indexes.iter().any(|e| e.name == i.name))
            .map(|i| format!("ADD {}", i.definition))
            .collect();
        if adds.is_empty() {
            return Ok(());
        }
        let online = format!(
            "ALTER TABLE {}.{} {}, ALGORITHM=INPLACE, LOCK=NONE",
            quote_ident(self.target_schema()),
            quote_ident(&shadow_name),
            adds.join(", ")
        );
        let id = conn.id();
        let built = {
            let build = conn.query_drop(online);
            tokio::pin!(build);
            tokio::select! {
                built = &mut build => built,
                () = open_when_under_way(self.target_pool, id, gate) => build.await,
            }
        };
        match built {
            Ok(()) => Ok(()),
            // ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON): not online; the
            // writes wait for it as they did before, and so does the checksum.
            Err(e) if matches!(server::server_error_code(&e), Some(1845 | 1846)) => {
                tracing::info!(table = %self.table.name, error = %e, "the indexes cannot be built online; the checksum waits for them");
                shadow::restore_indexes(
                    &mut conn,
                    self.target_schema(),
                    &self.table.name,
                    self.plan,
                )
                .await
                .map_err(RunError::Db)
            }
            Err(error) => Err(RunError::Db(DbError {
                context: format!("restoring secondary indexes of {shadow_name}"),
                error,
            })),
        }
    }

    /// Analyzes the shadow, so the optimizer knows it from the swap on.
    async fn analyze(&self) -> Result<(), RunError> {
        let shadow_name = shadow::shadow_name(&self.table.name);
        let mut tconn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        tconn
            .query_drop(format!(
                "ANALYZE TABLE {}.{}",
                quote_ident(self.target_schema()),
                quote_ident(&shadow_name)
            ))
            .await
            .context(|| format!("analyzing {shadow_name}"))?;
        self.interrupted()
    }

    /// The cut-over is disabled: keeps the shadow in step and verified until
    /// the run is interrupted.
    pub(super) async fn keep_in_sync(
        &self,
        old: &TableInfo,
        new: &TableInfo,
        following: &Following,
    ) -> Result<(), RunError> {
        let (table, plan) = (self.table, self.plan);
        self.progress.emit(RunEvent::KeptInSync {
            table: table.name.clone(),
            shadow: shadow::shadow_name(&table.name),
        });
        let mut shutdown = self.control.shutdown.clone();
        let verifier =
            RowVerifier::new(old, new, plan).map_err(|e| RunError::Verify(Box::new(e)))?;
        let mut verified = Instant::now();
        loop {
            following.check(&table.name)?;
            // Kept in sync is kept verified: what changed is compared again.
            if verified.elapsed() >= REVERIFY_INTERVAL {
                self.reverify(following, &verifier).await?;
                verified = Instant::now();
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        // Leave the shadow exactly in step as of this moment.
        following
            .state
            .drain(Duration::from_secs(30), "when the run was stopped")
            .await
            .map_err(|e| self.drain_error(e))?;
        Ok(())
    }

    /// The copy, or nothing when a resumed run is past it.
    pub(super) async fn copy_or_skip(
        &self,
        needed: bool,
        copy: impl std::future::Future<Output = Result<CopyStats, CopyError>>,
    ) -> Result<CopyStats, CopyError> {
        if needed {
            copy.await
        } else {
            Ok(CopyStats::default())
        }
    }

    /// The source's chunk key as named in the shadow table (to delete above a watermark).
    pub(super) fn shadow_chunk_key(
        &self,
        old: &TableInfo,
    ) -> Result<Vec<wraith_backend::ColumnSpec>, RunError> {
        let copied = self.plan.copied_columns();
        self.plan
            .chunk_key
            .iter()
            .map(|k| {
                let to = copied
                    .iter()
                    .find(|(from, _)| from.eq_ignore_ascii_case(k))
                    .map(|(_, to)| to.to_string());
                match (to, old.column(k)) {
                    (Some(to), Some(c)) => c
                        .spec(&to)
                        .map(|mut s| {
                            s.zone_shift = self.plan.zone_shift(&to);
                            s
                        })
                        .ok_or_else(|| self.setup_error(format!("key column {k}"))),
                    _ => Err(self.setup_error(format!(
                        "the chunk key column {k} is not in the new table, so a resumed copy cannot find its place; run `wraith run --fresh CONFIG`"
                    ))),
                }
            })
            .collect()
    }

    pub(super) async fn fill_change_figures(
        &self,
        report: &mut TableReport,
        following: &Following,
    ) {
        let (applied, rate) = following.state.applied().await;
        report.changes_received = following.state.received();
        report.changes_applied = applied;
        report.apply_changes_per_sec = rate;
        report.change_buffer_spills = following.state.spills();
        report.rows_reverified = following
            .state
            .reverified
            .load(std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sets `gate` once session `id`'s ALTER is past its exclusive start
/// ([`ALTER_UNDER_WAY`]), watching the processlist; returns only then. When
/// it cannot tell (a failed query), it never returns, and the gate waits for
/// the ALTER's end.
async fn open_when_under_way(pool: &Pool, id: u32, gate: &watch::Sender<bool>) {
    let watched = async {
        let mut conn = pool.get_conn().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let state: Option<Option<String>> = conn
                .exec_first(
                    "SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = ?",
                    (id,),
                )
                .await?;
            if state
                .flatten()
                .is_some_and(|s| ALTER_UNDER_WAY.iter().any(|u| s.eq_ignore_ascii_case(u)))
            {
                return Ok::<_, mysql_async::Error>(());
            }
        }
    };
    match watched.await {
        Ok(()) => {
            gate.send_replace(true);
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot watch the index build; the checksum waits for its end");
            std::future::pending::<()>().await;
        }
    }
}
