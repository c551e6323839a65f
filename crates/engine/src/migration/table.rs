//! One table's run: where it starts (fresh or from its checkpoint), its
//! checkpoint updates, and the change stream it follows.

use super::*;

impl TableRun<'_> {
    pub(super) fn source_schema(&self) -> &str {
        self.config.schema_of(self.table)
    }

    pub(super) fn target_schema(&self) -> &str {
        self.config.target_schema_of(self.table)
    }

    /// The table's own part of its group's run, from where its checkpoint
    /// says it is: the shadow made, through [`TableRun::stage`]; or the
    /// report of a table an earlier run swapped already. The group goes on
    /// from there ([`super::group`]): the copy, the index build, the checksum.
    pub(super) async fn start(&self) -> Result<Started, RunError> {
        let started = Instant::now();
        self.ops.set_table(&self.table.name);
        let mut sconn = self
            .source_pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        let old = inspect_table(&mut sconn, self.source_schema(), &self.table.name).await?;
        let mut tconn = self
            .target_pool
            .get_conn()
            .await
            .context(|| "connecting to the target".into())?;
        let saved = self
            .checkpoint
            .snapshot()
            .await
            .table(self.source_schema(), &self.table.name)
            .cloned();
        let stage = saved
            .as_ref()
            .map(|t| t.stage())
            .unwrap_or(TableStage::Pending);
        if self.swapped_before(stage).await? {
            self.stage(Stage::Cleanup, self.cleanup_after_cutover(&mut tconn))
                .await?;
            let mut report = TableReport::new(self.table, self.plan.backend);
            report.cut_over = true;
            report.stages = self.stages.timings().await;
            return Ok(Started::Swapped(Box::new(report)));
        }
        self.stage(
            Stage::CreateShadow,
            self.create_shadow(&old, &mut sconn, &mut tconn, saved.is_some(), stage),
        )
        .await?;
        // From here on the shadow is this job's: a failure no rerun can
        // resume from drops it.
        self.made_shadow
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let layout = shadow::layout(&old, self.plan, self.target_schema()).map_err(|message| {
            RunError::Layout {
                table: self.table.name.clone(),
                message,
            }
        })?;
        Ok(Started::Shadowed(Box::new(Shadowed {
            old,
            layout,
            saved,
            started,
        })))
    }

    /// Shows the table's progress state, and the job's: the tables of a
    /// group share their stages from the checksum on, and before it the
    /// job shows the table that moved last.
    pub(super) fn show_state(&self, state: State) {
        self.progress.table(&self.table.name, 0).set_state(state);
        self.progress.set_state(state);
    }

    /// Whether an earlier run already swapped the tables: its checkpoint is
    /// past the cut-over, or it was killed during the cut-over and the
    /// tables say the RENAME happened (recorded here). A cut-over that did
    /// not happen is said, and the run goes on.
    async fn swapped_before(&self, stage: TableStage) -> Result<bool, RunError> {
        if stage != TableStage::CuttingOver {
            return Ok(stage >= TableStage::CutOver);
        }
        let table = self.table.name.clone();
        match cutover::resolve_interrupted(self.source_pool, self.source_schema(), &table).await? {
            CutoverState::Done => {
                self.progress
                    .emit(RunEvent::InterruptedCutoverDone { table });
                self.stage(Stage::CutOver, async { Ok(()) }).await?;
                Ok(true)
            }
            CutoverState::NotDone => {
                self.progress
                    .emit(RunEvent::InterruptedCutoverUndone { table });
                Ok(false)
            }
        }
    }

    /// [`Stage::CreateShadow`]: records the table in the checkpoint, then
    /// creates the shadow table. On resume (the shadow exists) waits out
    /// whatever the killed run still had running instead.
    async fn create_shadow(
        &self,
        old: &TableInfo,
        sconn: &mut Conn,
        tconn: &mut Conn,
        recorded: bool,
        stage: TableStage,
    ) -> Result<(), RunError> {
        if stage != TableStage::Pending {
            self.progress.emit(RunEvent::ResumingAtStage {
                table: self.table.name.clone(),
                stage,
            });
            // Whatever the killed run still had running must end before this
            // run writes anything, or a late statement could undo newer work.
            resume::wait_out_killed_writers(
                tconn,
                self.target_schema(),
                &shadow::shadow_name(&self.table.name),
            )
            .await?;
            // A run killed in its cut-over may have left the triggers it
            // made on the shadow: none may fire while changes are applied.
            crate::cutover::triggers::drop_all_on(
                tconn,
                self.target_schema(),
                &shadow::shadow_name(&self.table.name),
            )
            .await?;
            // Nor may a cut-over that took the implicit values' defaults off
            // leave the change stream without them.
            crate::implicit::hold(
                tconn,
                self.target_schema(),
                &shadow::shadow_name(&self.table.name),
                &self.plan.implicit_values,
            )
            .await?;
            return Ok(());
        }
        if recorded {
            // Killed before the shadow table was recorded: it may be half made.
            shadow::drop_shadow(tconn, self.target_schema(), &self.table.name).await?;
        }
        // Record the table before making anything, so that a kill from here
        // on finds a checkpoint that owns what it left.
        let identity = resume::source_identity(sconn, old).await?;
        let mut tc = TableCheckpoint::new(identity, String::new(), &self.table.alter);
        tc.rows_total = old.estimated_rows;
        self.checkpoint
            .update(|task| {
                task.tables.retain(|t| {
                    t.source.table != tc.source.table || t.source.schema != tc.source.schema
                });
                task.tables.push(tc);
            })
            .await
            .map_err(RunError::Checkpoint)?;
        let shadow = shadow::create(
            tconn,
            self.source_schema(),
            self.target_schema(),
            &self.table.name,
            &self.table.alter,
            self.plan,
        )
        .await?;
        tracing::info!(table = %self.table.name, shadow = %shadow.name, "shadow table created");
        let fingerprint = resume::shadow_fingerprint(&shadow);
        let (schema, name) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                if let Some(t) = task.table_mut(&schema, &name) {
                    t.shadow_fingerprint = fingerprint;
                }
            })
            .await
            .map_err(RunError::Checkpoint)
    }

    /// Moves the table's checkpoint to `stage` and saves it; only
    /// [`TableRun::stage`] calls it.
    pub(super) async fn advance(&self, stage: TableStage) -> Result<(), RunError> {
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                match task.table_mut(&schema, &table) {
                    // A resumed run walks through stages it has passed already.
                    Some(t) if t.stage() < stage => t.advance(stage).map_err(|e| e.to_string()),
                    _ => Ok(()),
                }
            })
            .await
            .map_err(RunError::Checkpoint)?
            .map_err(|e| self.setup_error(format!("checkpoint: {e}")))
    }

    /// Records an engine closed with all its chunks: a resumed run imports
    /// it rather than copying its rows again.
    pub(super) async fn record_closed_engine(
        &self,
        closed: ClosedEngineRecord,
    ) -> Result<(), RunError> {
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                let Some(t) = task.table_mut(&schema, &table) else {
                    return Ok(());
                };
                let mut engine = EngineCheckpoint::new(closed.uuid, closed.engine_id);
                engine.key_range = KeyRange {
                    lower: closed.lower,
                    upper: closed.upper,
                };
                engine.advance(EngineStatus::AllWritten)?;
                engine.advance(EngineStatus::Closed)?;
                t.engines.retain(|e| e.engine_id != closed.engine_id);
                t.engines.push(engine);
                Ok(())
            })
            .await
            .map_err(RunError::Checkpoint)?
            .map_err(|e: wraith_checkpoints::TransitionError| {
                self.setup_error(format!("checkpoint: {e}"))
            })?;
        tracing::info!(table = %self.table.name, engine = closed.engine_id, "engine closed; recorded for resume");
        Ok(())
    }

    /// Resume of the local backend: imports the engines the killed run had
    /// closed (reopened by UUID with `unsafe_close_engine`) that continue the
    /// durable prefix, and returns the new low watermark. An engine that
    /// cannot be reopened is left: its rows are copied again.
    pub(super) async fn import_closed_engines(
        &self,
        saved: Option<&TableCheckpoint>,
        mut low: Option<Vec<u8>>,
        layout: &CopyLayout,
    ) -> Result<Option<Vec<u8>>, RunError> {
        let mut engines: Vec<EngineCheckpoint> = saved
            .map(|t| {
                t.engines
                    .iter()
                    .filter(|e| e.status() == EngineStatus::Closed)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if self.plan.backend != BackendKind::Local || engines.is_empty() {
            return Ok(low);
        }
        engines.sort_by_key(|e| e.engine_id);
        let backend = make_backend(
            self.config,
            self.table,
            self.plan.backend,
            self.target_pool,
            self.ops,
        )?;
        let manager = wraith_backend::EngineManager::new(backend.clone());
        let cfg = wraith_backend::EngineConfig {
            target: layout.target.clone(),
            local: wraith_backend::LocalEngineConfig::default(),
        };
        let mut imported = 0;
        let mut rows = 0;
        // Engine 0 of a run that started with nothing copied begins at the
        // table's start, whatever its first chunk's lower bound says.
        let continues = |e: &EngineCheckpoint, low: &Option<Vec<u8>>| {
            e.key_range.lower == *low || (low.is_none() && e.engine_id == 0)
        };
        while let Some(next) = engines.iter().find(|e| continues(e, &low)) {
            let closed = match manager
                .unsafe_close_engine(&cfg, &self.table.name, next.engine_id)
                .await
            {
                Ok(c) if c.uuid() == next.uuid => c,
                Ok(_) | Err(_) => {
                    tracing::info!(
                        engine = next.engine_id,
                        "a closed engine could not be reopened; its rows are copied again"
                    );
                    break;
                }
            };
            let stats = closed
                .import(96 << 20, 1 << 20)
                .await
                .map_err(|e| self.changes_error(ChangesError::ImportEngine(e)))?;
            let _ = closed.cleanup().await;
            imported += 1;
            rows += stats.rows;
            // The engine reached the table's end: everything is copied.
            low = Some(next.key_range.upper.clone().unwrap_or_else(|| vec![0xFF]));
            if next.key_range.upper.is_none() {
                break;
            }
        }
        backend.close().await;
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        let saved_low = low.clone();
        self.checkpoint
            .update(|task| {
                if let Some(t) = task.table_mut(&schema, &table) {
                    t.engines.clear();
                    if imported > 0 {
                        t.change_stream.low_watermark = saved_low;
                    }
                }
            })
            .await
            .map_err(RunError::Checkpoint)?;
        if imported > 0 {
            self.progress.emit(RunEvent::EnginesImported {
                table: self.table.name.clone(),
                engines: imported,
                rows,
            });
        }
        Ok(low)
    }

    /// Saves the copy's frontier. The binlog position saved is where the
    /// change stream started: a resumed run replays every change since then.
    /// Replaying from the start is idempotent (the last image of a key wins)
    /// and does not depend on which buffered changes were durable when the
    /// process died; it costs re-reading the binlog since the start, which the
    /// server must still have (else `BinlogNotFound`).
    pub(super) async fn save_progress(
        &self,
        following: &Following,
        rows_copied: u64,
    ) -> Result<(), RunError> {
        let start = following.start.clone();
        following
            .state
            .persist()
            .await
            .map_err(|e| self.changes_error(e))?;
        let (low, high) = {
            let m = following.state.marks().map_err(|e| self.changes_error(e))?;
            (m.low(), m.high())
        };
        let (schema, table) = (self.source_schema().to_string(), self.table.name.clone());
        self.checkpoint
            .update(|task| {
                if let Some(t) = task.table_mut(&schema, &table) {
                    t.change_stream.position = Some(start.into());
                    t.change_stream.low_watermark = match low {
                        Some(Some(k)) => Some(k),
                        Some(None) => Some(vec![0xFF]),
                        None => None,
                    };
                    t.change_stream.high_watermark = high.or(t.change_stream.low_watermark.clone());
                    // Rows count as copied only with a frontier that says which.
                    t.rows_copied = if t.change_stream.high_watermark.is_some() {
                        rows_copied
                    } else {
                        0
                    };
                }
            })
            .await
            .map_err(RunError::Checkpoint)
    }

    /// The table's online state (row mapping, applier, change buffer), at
    /// `from`, where the group's change stream starts; its drains' tokens
    /// go through the changelog table of `changelog_schema`.
    pub(super) fn online_state(
        &self,
        old: &TableInfo,
        layout: &CopyLayout,
        from: &binlog::BinlogPosition,
        changelog_schema: &str,
    ) -> Result<Arc<OnlineState>, RunError> {
        let source_positions = layout
            .source_columns
            .iter()
            .map(|name| {
                old.columns
                    .iter()
                    .position(|c| &c.name == name)
                    .ok_or_else(|| self.setup_error(format!("column {name} vanished")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mapping = RowMapping {
            source_positions,
            key_positions: layout.target.key_columns.clone(),
        };
        let collations: Vec<Option<String>> = self
            .plan
            .chunk_key
            .iter()
            .map(|k| old.column(k).and_then(|c| c.collation.clone()))
            .collect();
        let aligned = self.plan.chunk_key.len() == self.plan.new_key.len()
            && layout
                .target
                .key_columns
                .iter()
                .zip(&self.plan.chunk_key)
                .all(|(&i, k)| {
                    layout
                        .source_columns
                        .get(i)
                        .is_some_and(|s| s.eq_ignore_ascii_case(k))
                });
        let use_watermarks = aligned && key_orders_by_bytes(&layout.chunk_key, &collations);
        if !use_watermarks {
            tracing::info!("changes wait until the whole copy is durable (changed key or non-binary collation)");
        }
        let applier = Applier::new(
            self.target_pool.clone(),
            layout.target.clone(),
            self.config.copy.threads,
        );
        let spill_dir = changes_dir(self.config, self.table);
        // A fresh run starts with an empty store (resume comes with checkpoints).
        let _ = std::fs::remove_dir_all(&spill_dir);
        let buffer =
            ChangeBuffer::with_spill(self.config.changes.memory_limit.0 as usize, spill_dir)
                .map_err(|e| self.changes_error(e.into()))?;
        let state = OnlineState::new(
            buffer,
            mapping,
            applier,
            use_watermarks,
            self.source_pool.clone(),
            changelog_schema,
            &self.table.name,
        );
        state
            .set_position(from.clone())
            .map_err(|e| self.changes_error(e))?;
        Ok(state)
    }

    pub(super) fn changes_error(&self, source: ChangesError) -> RunError {
        RunError::Changes {
            table: self.table.name.clone(),
            source: Box::new(source),
        }
    }

    /// A failure to set up or record the following of changes, in words.
    pub(super) fn setup_error(&self, message: String) -> RunError {
        self.changes_error(ChangesError::Setup(message))
    }

    /// Why the table must stop now: Ctrl-C, `panic`, or its failed stream.
    pub(super) fn must_stop(&self, following: &Following) -> Result<(), RunError> {
        self.interrupted()
            .and_then(|()| following.check(&self.table.name))
    }

    pub(super) fn interrupted(&self) -> Result<(), RunError> {
        if self.control.stopping() {
            if let Some(reason) = self.ops.abort_reason() {
                return Err(RunError::Aborted {
                    table: self.table.name.clone(),
                    reason,
                });
            }
            return Err(RunError::Interrupted {
                table: self.table.name.clone(),
            });
        }
        Ok(())
    }
}
