//! The revert window: after the cut-over, the old table kept in step with
//! the live one, so that undoing the change is one more atomic swap.
//!
//! With `[cutover] revert_window`, the group records the window *before*
//! its cut-over ([`record_pending`]): for each table, the binlog position
//! just before it and the column pairs of the change. After the swap, the
//! run does not end: it follows the live table `t` (new schema) and applies
//! every change back to `_t_old` (old schema) through the inverse of the
//! column mapping — columns the ALTER added are left out, renamed columns
//! go back to their old names, changed types are written back into the old
//! type. It is the forward machinery turned around: one change stream per
//! table, an [`OnlineState`] with its buffer (durable under
//! `revert-<schema>-<table>`), applier and tokens, the checkpoint's
//! position.
//!
//! **Where the live table's changes start.** The stream starts at the
//! position recorded before the cut-over and follows `t` only from the
//! statement that renames the new table into place
//! ([`crate::binlog::WatchedTable::from_rename`]): before it, `t` is the old
//! table, whose rows are skipped. The checkpoint says whether its position
//! lies past that RENAME (set together with the position, see
//! [`OnlineState::renamed`]), so a resumed window never waits for a RENAME
//! it has passed, nor decodes the old table's rows as the new one's.
//!
//! **Exactness.** A value the old column refuses (a string longer than it,
//! a number out of its range: the session is strict) stops the window: the
//! refused row is found by writing each pending row alone in a rolled-back
//! transaction, and its key is named; the window is recorded as failed, so
//! no revert can swap in a table that is not in step. The live table is
//! never written. A value the old type keeps only approximately (a decimal
//! rounded to fewer places) is caught by the revert: every row written in
//! the window is compared, old table against live table through the
//! forward plan's own expressions (the checksum's), first at a consistent
//! point and then under the swap's lock; a difference refuses the revert,
//! naming the keys, and nothing is renamed.
//!
//! **Ending it.** `wraith revert` swaps back with the cut-over's own
//! algorithm ([`crate::cutover::cut_over`] with [`SwapTable::back`]): `t`
//! becomes the old schema with every row written since the cut-over, and
//! the new-schema table is kept as `_t_new` (or dropped). `wraith finish`
//! renames `_t_old` out of the way and drops it. A run holding the window
//! hands it over to either command first (`release-window` on its control
//! socket) and exits; the commands then resume the window from its
//! checkpoint themselves, so there is one way to do each, whether the
//! window's run is alive, was killed, or never restarted. The window's end
//! finishes by itself unless `window_end = "keep"`; `extend-window=D` on the
//! control socket moves it.
//!
//! Limits (refused by preflight with the reason): an ALTER that drops a
//! column (its values could not be given back to rows written in the
//! window), one that changes the key rows are identified by, and a type
//! change the server converts through its time zone.

use std::time::{SystemTime, UNIX_EPOCH};

use wraith_checkpoints::{RevertWindow, WindowStage, WindowTable};

use super::points::cutover_settings_of;
use super::*;
use crate::config::WindowEnd;
use crate::cutover::SwapTable;
use crate::names::{dropping_name, revert_dir};
use crate::plan::ColumnChange;
use crate::server::inspect::table_exists;
use crate::shadow::{old_name, shadow_name};

/// How often the window saves its position.
const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// How often the rows written in the window are compared, old table
/// against live, at a consistent point (a moment's READ lock, as the
/// checksum's): a value the old type keeps only approximately stops the
/// window within this, and the keys to compare stay few.
const VERIFY_INTERVAL: Duration = Duration::from_secs(60);

/// Keys written since the last comparison that bring the next one forward
/// (they are held in memory until compared).
const VERIFY_BACKLOG: usize = 100_000;

/// What preflight refuses for a revert window, given the change's plan and
/// the old table; `None` when the window can follow the change.
pub fn refusal(plan: &TablePlan, old: &TableInfo) -> Option<String> {
    for change in &plan.columns {
        if let ColumnChange::AddedImplicit { name, .. } = change {
            return Some(format!(
                "the ALTER adds column `{name}` NOT NULL without a DEFAULT, so after a revert, \
                 rows written to the old table could not be given a value for it in the new one; \
                 give the column a DEFAULT, or remove [cutover] revert_window"
            ));
        }
        if let ColumnChange::Dropped { name } = change {
            if old.column(name).is_some_and(|c| !c.is_generated()) {
                return Some(format!(
                    "the ALTER drops column `{name}`, so rows written during the revert window \
                     could not be given its values back; drop the column in a change of its own \
                     after this one has finished, or remove [cutover] revert_window"
                ));
            }
        }
    }
    let renamed: Vec<Option<&str>> = plan
        .chunk_key
        .iter()
        .map(|k| {
            plan.copied_columns()
                .into_iter()
                .find(|(from, _)| from.eq_ignore_ascii_case(k))
                .map(|(_, to)| to)
        })
        .collect();
    let aligned = renamed.len() == plan.new_key.len()
        && renamed
            .iter()
            .zip(&plan.new_key)
            .all(|(a, b)| a.is_some_and(|a| a.eq_ignore_ascii_case(b)));
    if !aligned {
        return Some(format!(
            "the ALTER changes the primary key (the key rows are identified by: ({}) to ({})), \
             so a row of the live table could not be matched with its row of the old one; \
             change the key without a revert window",
            plan.chunk_key.join(", "),
            plan.new_key.join(", ")
        ));
    }
    if let Some(column) = plan.zone_shifts.keys().next() {
        return Some(format!(
            "column `{column}` changes between TIMESTAMP and DATETIME, which the server converts \
             through its time zone; wraith cannot convert it back exactly; make that change \
             without a revert window"
        ));
    }
    None
}

/// A table entering a window: schema, name, `(old, new)` column pairs.
pub(super) type PendingTable = (String, String, Vec<(String, String)>);

/// Records the window of `tables` (`(schema, name, column pairs)`) before
/// their cut-over: each table's live changes will be followed from
/// `position`, from the RENAME on.
pub(super) async fn record_pending(
    config: &Config,
    checkpoint: &Checkpointer,
    tables: Vec<PendingTable>,
    position: binlog::BinlogPosition,
) -> Result<(), RunError> {
    // A store an earlier job left (killed, or dropped with `--fresh`) holds
    // another window's changes: this window starts with none.
    for (schema, table, _) in &tables {
        let _ = std::fs::remove_dir_all(revert_dir(config, schema, table));
        let _ = std::fs::remove_file(keys_path(config, schema, table));
    }
    checkpoint
        .update(|task| {
            let window = task.revert_window.get_or_insert(RevertWindow {
                stage: WindowStage::Pending,
                opened_at: 0,
                ends_at: 0,
                failed: None,
                tables: Vec::new(),
            });
            for (schema, table, columns) in tables {
                window
                    .tables
                    .retain(|t| !(t.schema == schema && t.table == table));
                window.tables.push(WindowTable {
                    schema,
                    table,
                    columns,
                    position: position.clone().into(),
                    past_rename: false,
                    verified: Some(position.clone().into()),
                    verified_past_rename: false,
                });
            }
        })
        .await
        .map_err(RunError::Checkpoint)
}

/// Where a table's keys written since the last comparison are kept while
/// the window does not run (beside its change store).
fn keys_path(config: &Config, schema: &str, table: &str) -> std::path::PathBuf {
    let mut path = revert_dir(config, schema, table).into_os_string();
    path.push(".keys");
    std::path::PathBuf::from(path)
}

/// Writes `keys` to `path` atomically (length-prefixed memcomparable keys).
fn write_keys(path: &std::path::Path, keys: &[Vec<wraith_backend::Value>]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("keys.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for key in keys {
        let mut bytes = Vec::new();
        wraith_backend::encode_key(&key.iter().collect::<Vec<_>>(), &mut bytes);
        out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        out.write_all(&bytes)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The keys [`write_keys`] wrote; `None` when there is no file.
fn read_keys(path: &std::path::Path) -> Result<Option<Vec<Vec<wraith_backend::Value>>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mut keys = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("{} is cut short", path.display()))?;
        let len = u32::from_le_bytes(*len) as usize;
        let key = tail
            .get(..len)
            .ok_or_else(|| format!("{} is cut short", path.display()))?;
        keys.push(
            wraith_backend::decode_key(key)
                .map_err(|e| format!("{}: a key does not decode: {e}", path.display()))?,
        );
        rest = &tail[len..];
    }
    Ok(Some(keys))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn readable_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// What ended a window's run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum WindowEnding {
    /// Handed over to `wraith revert` or `wraith finish`.
    Released,
    /// The window's end came and the old tables were dropped.
    Finished(FinishReport),
}

/// What `wraith finish` did.
#[derive(Debug, Clone, Serialize)]
pub struct FinishReport {
    /// The old tables dropped.
    pub dropped: Vec<String>,
    /// How long the drops took, in all.
    pub drop_ms: f64,
}

/// What `wraith revert` did.
#[derive(Debug, Clone, Serialize)]
pub struct RevertReport {
    pub tables: Vec<String>,
    /// How long writes to the live tables waited on the revert, in all: the
    /// swap's lock requests and the comparison's consistent points.
    pub blocked_ms: f64,
    /// Of `blocked_ms`, the consistent points' READ locks.
    pub point_lock_ms: f64,
    /// The swap (none when an earlier, killed revert had done it).
    pub cutover: Option<crate::cutover::CutoverReport>,
    /// Rows written during the window, compared between the old and the live table before the swap.
    pub rows_verified: u64,
    /// Where the new-schema tables were kept (empty with `--drop-new`).
    pub kept: Vec<String>,
}

/// Everything the window's commands work with.
pub(super) struct WindowJob<'a> {
    pub(super) config: &'a Config,
    pub(super) flavor: Flavor,
    pub(super) source_opts: &'a Opts,
    pub(super) pool: &'a Pool,
    pub(super) progress: &'a ProgressHandle,
    pub(super) control: &'a RunControl,
    pub(super) ops: &'a Arc<Operations>,
    pub(super) checkpoint: &'a Checkpointer,
}

/// One table of an open window.
struct Side {
    entry: WindowTable,
    /// The live table's key columns (for messages).
    key_names: Vec<String>,
    state: Arc<OnlineState>,
    /// Compares a row of `_t_old` with the live row (the forward plan's expressions).
    verifier: Arc<RowVerifier>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Side {
    fn drop(&mut self) {
        self.state.stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Side {
    /// This table's entry in `window`.
    fn entry_in<'w>(&self, window: &'w mut RevertWindow) -> Option<&'w mut WindowTable> {
        window
            .tables
            .iter_mut()
            .find(|t| t.schema == self.entry.schema && t.table == self.entry.table)
    }

    fn label(&self) -> String {
        format!("{}.{}", self.entry.schema, self.entry.table)
    }

    fn changes_error(&self, e: ChangesError) -> RunError {
        RunError::Changes {
            table: self.entry.table.clone(),
            source: Box::new(e),
        }
    }
}

/// The old and live tables of `entry`, and both plans (forward: old → live,
/// as the checksum compares; reverse: live → old, as the window applies).
async fn plans(
    conn: &mut Conn,
    entry: &WindowTable,
) -> Result<(TableInfo, TableInfo, TablePlan, TablePlan), RunError> {
    let old = inspect_table(conn, &entry.schema, &old_name(&entry.table)).await?;
    let live = inspect_table(conn, &entry.schema, &entry.table).await?;
    let setup = |m: String| RunError::Window(format!("{}.{}: {m}", entry.schema, entry.table));
    let mut forward = Vec::new();
    let mut reverse = Vec::new();
    for oc in &old.columns {
        let Some((_, new_name)) = entry
            .columns
            .iter()
            .find(|(o, _)| o.eq_ignore_ascii_case(&oc.name))
        else {
            if oc.is_generated() {
                continue;
            }
            return Err(setup(format!(
                "column `{}` of the old table has no counterpart in the live table",
                oc.name
            )));
        };
        let nc = live.column(new_name).ok_or_else(|| {
            setup(format!(
                "column `{new_name}` is missing from the live table; was it changed after the cut-over?"
            ))
        })?;
        let same_type = oc.column_type.eq_ignore_ascii_case(&nc.column_type)
            && oc.charset == nc.charset
            && oc.collation == nc.collation;
        let renamed = oc.name != nc.name;
        let (f, r) = match (renamed, same_type) {
            (false, true) => (
                ColumnChange::Kept {
                    name: oc.name.clone(),
                },
                ColumnChange::Kept {
                    name: oc.name.clone(),
                },
            ),
            (true, true) => (
                ColumnChange::Renamed {
                    from: oc.name.clone(),
                    to: nc.name.clone(),
                },
                ColumnChange::Renamed {
                    from: nc.name.clone(),
                    to: oc.name.clone(),
                },
            ),
            (false, false) => (
                ColumnChange::TypeChanged {
                    name: oc.name.clone(),
                    from_type: oc.column_type.clone(),
                    to_type: nc.column_type.clone(),
                },
                ColumnChange::TypeChanged {
                    name: oc.name.clone(),
                    from_type: nc.column_type.clone(),
                    to_type: oc.column_type.clone(),
                },
            ),
            (true, false) => (
                ColumnChange::RenamedTypeChanged {
                    from: oc.name.clone(),
                    to: nc.name.clone(),
                    from_type: oc.column_type.clone(),
                    to_type: nc.column_type.clone(),
                },
                ColumnChange::RenamedTypeChanged {
                    from: nc.name.clone(),
                    to: oc.name.clone(),
                    from_type: nc.column_type.clone(),
                    to_type: oc.column_type.clone(),
                },
            ),
        };
        forward.push(f);
        reverse.push(r);
    }
    let old_key: Vec<String> = old
        .identity_key()
        .map(|k| k.columns.clone())
        .ok_or_else(|| setup("the old table has no key rows are identified by".into()))?;
    let live_key: Vec<String> = old_key
        .iter()
        .map(|k| {
            entry
                .columns
                .iter()
                .find(|(o, _)| o.eq_ignore_ascii_case(k))
                .map(|(_, n)| n.clone())
                .ok_or_else(|| setup(format!("key column `{k}` is not carried")))
        })
        .collect::<Result<_, _>>()?;
    let plan = |table: &TableInfo,
                chunk_key: Vec<String>,
                new_key: Vec<String>,
                columns: Vec<ColumnChange>| TablePlan {
        table: table.name.clone(),
        chunk_key_name: "PRIMARY".into(),
        chunk_key,
        new_key,
        columns,
        deferred_indexes: Vec::new(),
        deferrable_indexes: Vec::new(),
        backend: crate::config::BackendKind::Sql,
        backend_reason: "the revert window applies changes only".into(),
        estimated_rows: table.estimated_rows,
        estimated_bytes: table.estimated_bytes,
        transient_unique_indexes: Vec::new(),
        zone_shifts: Default::default(),
        data: Default::default(),
        implicit_values: Vec::new(),
    };
    let forward = plan(&old, old_key.clone(), live_key.clone(), forward);
    let reverse = plan(&live, live_key, old_key, reverse);
    Ok((old, live, forward, reverse))
}

impl WindowJob<'_> {
    /// Starts following every table of `window` from its checkpoint.
    async fn open_sides(&self, window: &RevertWindow) -> Result<Vec<Side>, RunError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        let mut sides = Vec::new();
        for entry in &window.tables {
            online::ensure_changelog(&mut conn, &entry.schema).await?;
            let (old, live, forward, reverse) = plans(&mut conn, entry).await?;
            let layout = shadow::layout(&live, &reverse, &entry.schema)
                .map_err(|m| RunError::Window(format!("{}.{}: {m}", entry.schema, entry.table)))?;
            let mut target = layout.target.clone();
            target.table = old_name(&entry.table);
            let source_positions = layout
                .source_columns
                .iter()
                .map(|name| {
                    live.columns
                        .iter()
                        .position(|c| &c.name == name)
                        .ok_or_else(|| RunError::Window(format!("column {name} vanished")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mapping = RowMapping {
                source_positions,
                key_positions: target.key_columns.clone(),
            };
            let applier = Applier::new(self.pool.clone(), target, self.config.copy.threads);
            let buffer = ChangeBuffer::with_spill(
                self.config.changes.memory_limit.0 as usize,
                revert_dir(self.config, &entry.schema, &entry.table),
            )
            .map_err(|e| RunError::Changes {
                table: entry.table.clone(),
                source: Box::new(e.into()),
            })?;
            let state = OnlineState::new(
                buffer,
                mapping,
                applier,
                false,
                self.pool.clone(),
                &entry.schema,
                &entry.table,
            );
            // From the saved position, with the keys written since the last
            // comparison as saved with it (the store holds what was not yet
            // applied). Without them, from the last comparison: the rows
            // changed since are applied again (the last image of a key wins)
            // and compared again.
            let saved_keys = read_keys(&keys_path(self.config, &entry.schema, &entry.table))
                .map_err(|m| RunError::Window(format!("{}.{}: {m}", entry.schema, entry.table)))?;
            let (from, past_rename) = match (&saved_keys, &entry.verified) {
                (None, Some(v)) => (v.clone(), entry.verified_past_rename),
                _ => (entry.position.clone(), entry.past_rename),
            };
            let from = binlog::BinlogPosition::from(from);
            let changes = |e| RunError::Changes {
                table: entry.table.clone(),
                source: Box::new(e),
            };
            state.set_position(from.clone()).map_err(changes)?;
            if past_rename {
                state.renamed(from.clone()).map_err(changes)?;
            }
            state.marks().map_err(changes)?.copy_done();
            // Every key written from here on is compared before a revert.
            state.track_changes().map_err(changes)?;
            if let Some(keys) = saved_keys {
                state.add_touched(keys).map_err(changes)?;
            }
            let mut stream_config = ChangeStreamConfig::for_tables(&[&live])
                .map_err(|e| changes(ChangesError::Start(e)))?;
            if let Some(t) = stream_config.tables.first_mut() {
                t.from_rename = !past_rename;
            }
            stream_config.token_table = Some((entry.schema.clone(), CHANGELOG_TABLE.to_string()));
            tracing::info!(table = %entry.table, position = %from, past_rename, "the revert window follows the live table");
            let stream =
                ChangeStream::start(self.source_opts.clone(), self.flavor, from, stream_config)
                    .await
                    .map_err(|e| changes(ChangesError::Start(e)))?;
            let tasks = online::spawn_shared(vec![state.clone()], stream);
            let verifier = RowVerifier::new(&old, &live, &forward)
                .map_err(|e| RunError::Verify(Box::new(e)))?;
            self.progress
                .table(&entry.table, 0)
                .attach_stream(state.clone());
            sides.push(Side {
                entry: entry.clone(),
                key_names: forward.new_key.clone(),
                state,
                verifier: Arc::new(verifier),
                tasks,
            });
        }
        Ok(sides)
    }

    /// Saves every table's position (after making its buffer durable).
    async fn save(&self, sides: &[Side]) -> Result<(), RunError> {
        let mut at = Vec::with_capacity(sides.len());
        for side in sides {
            let p = side
                .state
                .persist_from_rename()
                .await
                .map_err(|e| side.changes_error(e))?;
            // After the persist: every key applied before its position is
            // among them (a few later ones too, compared all the same).
            let keys = side
                .state
                .touched_keys()
                .map_err(|e| side.changes_error(e))?;
            let path = keys_path(self.config, &side.entry.schema, &side.entry.table);
            tokio::task::spawn_blocking(move || write_keys(&path, &keys))
                .await
                .map_err(|_| RunError::Window("saving the window's keys panicked".into()))?
                .map_err(|e| RunError::Window(format!("saving the window's keys: {e}")))?;
            at.push(p);
        }
        self.checkpoint
            .update(|task| {
                if let Some(w) = task.revert_window.as_mut() {
                    for (side, p) in sides.iter().zip(at) {
                        let Some((position, past)) = p else { continue };
                        if let Some(t) = side.entry_in(w) {
                            t.position = position.into();
                            t.past_rename = past;
                        }
                    }
                }
            })
            .await
            .map_err(RunError::Checkpoint)
    }

    /// A table's stream or applier failed: a value the old table refuses
    /// fails the window for good (naming the key); anything else is
    /// returned as is (a rerun resumes the window).
    async fn failed(&self, side: &Side, e: ChangesError) -> RunError {
        if e.resumable() {
            return side.changes_error(e);
        }
        let refused = side.state.find_refused_row().await.ok().flatten();
        let names: Vec<&str> = side.key_names.iter().map(String::as_str).collect();
        let message = match refused {
            Some((key, why)) => format!(
                "revert window stopped: {}: the change of the row with {} cannot be written back \
                 into {} exactly ({why}). The live table is untouched; {} is no longer in step \
                 with it, so no revert is possible: `wraith finish CONFIG` drops it",
                side.label(),
                crate::verify::readable_key(&names, &key),
                old_name(&side.entry.table),
                old_name(&side.entry.table),
            ),
            None => format!(
                "revert window stopped: {}: {e}. The live table is untouched; {} is no longer in \
                 step with it, so no revert is possible: `wraith finish CONFIG` drops it",
                side.label(),
                old_name(&side.entry.table),
            ),
        };
        self.record_failure(message).await
    }

    /// The first table whose stream or applier failed, with its error.
    fn check(sides: &[Side]) -> Option<(usize, ChangesError)> {
        sides
            .iter()
            .enumerate()
            .find_map(|(i, side)| side.state.check().err().map(|e| (i, e)))
    }

    /// Holds the window open: applies the live tables' changes back until
    /// it is handed over, ends, or the run is stopped.
    pub(super) async fn hold(&self) -> Result<WindowEnding, RunError> {
        let mut window = self
            .checkpoint
            .snapshot()
            .await
            .revert_window
            .ok_or_else(|| RunError::Window("no revert window is recorded".into()))?;
        if window.stage == WindowStage::Failed {
            return Err(RunError::Window(window.failed.clone().unwrap_or_else(
                || {
                    "the revert window failed earlier; `wraith finish CONFIG` drops the old table"
                        .into()
                },
            )));
        }
        let Some(length) = self.config.cutover.revert_window.map(|w| w.0) else {
            return Err(RunError::Window(
                "a revert window is open but the config has no [cutover] revert_window; put it \
                 back, or end the window with `wraith finish CONFIG` or `wraith revert CONFIG`"
                    .into(),
            ));
        };
        if window.stage == WindowStage::Pending {
            let opened = now_secs();
            window.stage = WindowStage::Open;
            window.opened_at = opened;
            window.ends_at = opened + length.as_secs();
            let (stage, ends_at) = (window.stage, window.ends_at);
            self.checkpoint
                .update(|task| {
                    if let Some(w) = task.revert_window.as_mut() {
                        w.stage = stage;
                        w.opened_at = opened;
                        w.ends_at = ends_at;
                    }
                })
                .await
                .map_err(RunError::Checkpoint)?;
            self.ops
                .hook_logged(HookEvent::OnRevertWindowStart, None)
                .await;
        }
        let sides = self.open_sides(&window).await?;
        let tables = label(&sides);
        let at_end = match self.config.cutover.window_end {
            WindowEnd::Finish => "finish",
            WindowEnd::Keep => "keep",
        };
        let mut ends_at = window.ends_at;
        self.progress.set_state(State::RevertWindow);
        for side in &sides {
            self.progress
                .table(&side.entry.table, 0)
                .set_state(State::RevertWindow);
        }
        self.progress.set_window(Some((ends_at, at_end.into())));
        self.progress.emit(RunEvent::RevertWindowOpen {
            tables: tables.clone(),
            ends: readable_time(ends_at),
            at_end: at_end.into(),
        });
        let mut saved = Instant::now();
        let mut verified = Instant::now();
        let mut expired_said = false;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some((i, e)) = Self::check(&sides) {
                let side = &sides[i];
                return Err(self.failed(side, e).await);
            }
            if self.control.stopping() {
                self.save(&sides).await?;
                self.progress.set_window(None);
                return Err(RunError::WindowInterrupted { tables });
            }
            if self.ops.window_released() {
                self.save(&sides).await?;
                self.progress.set_window(None);
                self.progress
                    .emit(RunEvent::RevertWindowReleased { tables });
                return Ok(WindowEnding::Released);
            }
            let more = self.ops.take_window_extension();
            if !more.is_zero() {
                ends_at = ends_at.max(now_secs()) + more.as_secs();
                self.checkpoint
                    .update(|task| {
                        if let Some(w) = task.revert_window.as_mut() {
                            w.ends_at = ends_at;
                        }
                    })
                    .await
                    .map_err(RunError::Checkpoint)?;
                self.progress.set_window(Some((ends_at, at_end.into())));
                self.progress.emit(RunEvent::RevertWindowExtended {
                    tables: tables.clone(),
                    ends: readable_time(ends_at),
                });
                expired_said = false;
            }
            if now_secs() >= ends_at {
                match self.config.cutover.window_end {
                    WindowEnd::Finish => {
                        drop(sides);
                        self.progress.set_window(None);
                        let report = self.drop_old_tables(&window).await?;
                        return Ok(WindowEnding::Finished(report));
                    }
                    WindowEnd::Keep if !expired_said => {
                        expired_said = true;
                        self.progress.emit(RunEvent::RevertWindowExpired {
                            tables: tables.clone(),
                        });
                    }
                    WindowEnd::Keep => {}
                }
            }
            if saved.elapsed() >= SAVE_INTERVAL {
                self.save(&sides).await?;
                saved = Instant::now();
            }
            let backlog: usize = sides
                .iter()
                .map(|s| s.state.changed_since_verified().unwrap_or(0))
                .sum();
            if backlog > 0 && (verified.elapsed() >= VERIFY_INTERVAL || backlog >= VERIFY_BACKLOG) {
                let mut drain = WindowDrain {
                    sides: &sides,
                    job: self,
                    verified: 0,
                    point_blocked: Duration::ZERO,
                };
                match drain.verify_at_point().await {
                    Ok(points) => self.save_verified(&sides, points).await?,
                    Err(DrainError::Stop(v)) => return Err(self.mismatch(&sides, *v).await),
                    // A lost connection or a busy table: compared next time.
                    Err(DrainError::Retry(e)) => {
                        tracing::info!(error = %e, "comparing the window's rows: trying again later")
                    }
                }
                verified = Instant::now();
            }
        }
    }

    /// The window failed for good: recorded, so that no revert swaps in an
    /// old table that is not in step.
    async fn record_failure(&self, message: String) -> RunError {
        let recorded = self
            .checkpoint
            .update(|task| {
                if let Some(w) = task.revert_window.as_mut() {
                    w.stage = WindowStage::Failed;
                    w.failed = Some(message.clone());
                }
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "recording the failed revert window");
        }
        RunError::Window(message)
    }

    /// Records where each table's comparison got to.
    async fn save_verified(&self, sides: &[Side], points: Vec<Verified>) -> Result<(), RunError> {
        self.checkpoint
            .update(|task| {
                if let Some(w) = task.revert_window.as_mut() {
                    for (side, point) in sides.iter().zip(points) {
                        let Some((position, past)) = point else {
                            continue;
                        };
                        if let Some(t) = side.entry_in(w) {
                            t.verified = Some(position.into());
                            t.verified_past_rename = past;
                        }
                    }
                }
            })
            .await
            .map_err(RunError::Checkpoint)
    }

    /// Rows of the old table that differ from the live ones: the window
    /// failed (recorded, so no revert swaps them in).
    async fn mismatch(&self, sides: &[Side], e: VerifyError) -> RunError {
        let detail = match &e {
            VerifyError::Mismatch { detail, .. } => format!(
                "rows written during the window differ between the old table and the live one \
                 ({detail}): the old column type holds their values only approximately"
            ),
            e => e.to_string(),
        };
        let message = format!(
            "revert window stopped: {}: {detail}. Nothing was renamed and the live table is \
             untouched; the old table does not hold those rows exactly, so no revert is \
             possible: `wraith finish CONFIG` drops it",
            label(sides)
        );
        self.record_failure(message).await
    }

    /// `wraith finish`: each old table renamed out of the way at once, then
    /// dropped; the window's store, changelog and checkpoint removed.
    pub(super) async fn drop_old_tables(
        &self,
        window: &RevertWindow,
    ) -> Result<FinishReport, RunError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        server::set_lock_wait_timeout(
            &mut conn,
            self.config.cutover.lock_wait_timeout.0.as_secs().max(1),
        )
        .await?;
        let mut dropped = Vec::new();
        let started = Instant::now();
        for t in &window.tables {
            let qs = quote_ident(&t.schema);
            let old = old_name(&t.table);
            let out = dropping_name(&t.table);
            if table_exists(&mut conn, &t.schema, &old).await? {
                // Renamed first: the name is free at once, and nothing
                // references the table while it is dropped.
                conn.query_drop(format!(
                    "RENAME TABLE {qs}.{} TO {qs}.{}",
                    quote_ident(&old),
                    quote_ident(&out)
                ))
                .await
                .context(|| format!("renaming {}.{old} out of the way", t.schema))?;
            }
            conn.query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&out)))
                .await
                .context(|| {
                    format!(
                        "dropping {}.{out}; run DROP TABLE {qs}.{}",
                        t.schema,
                        quote_ident(&out)
                    )
                })?;
            dropped.push(format!("{}.{old}", t.schema));
        }
        let drop_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.end_window(&mut conn, window).await?;
        self.ops.hook_logged(HookEvent::OnFinish, None).await;
        Ok(FinishReport { dropped, drop_ms })
    }

    /// What the window leaves once it is over: its stores, the changelog
    /// table, the checkpoint.
    async fn end_window(&self, conn: &mut Conn, window: &RevertWindow) -> Result<(), RunError> {
        for t in &window.tables {
            let _ = std::fs::remove_dir_all(revert_dir(self.config, &t.schema, &t.table));
            let _ = std::fs::remove_file(keys_path(self.config, &t.schema, &t.table));
            // Shared by every job of the schema: kept while others run.
            if super::cleanup::changelog_shared(conn, self.config).await {
                continue;
            }
            conn.query_drop(format!(
                "DROP TABLE IF EXISTS {}.{}",
                quote_ident(&t.schema),
                quote_ident(CHANGELOG_TABLE)
            ))
            .await
            .context(|| "dropping the changelog table".into())?;
        }
        self.checkpoint.remove().await.map_err(RunError::Checkpoint)
    }

    /// `wraith revert`: catch up, compare every row written in the window,
    /// then swap the old tables back in with the cut-over's algorithm.
    pub(super) async fn revert(
        &self,
        window: &RevertWindow,
        drop_new: bool,
    ) -> Result<RevertReport, RunError> {
        let sides = self.open_sides(window).await?;
        let tables = label(&sides);
        self.progress.set_state(State::Revert);
        // Caught up within the bound, or refused.
        let bound = self.config.cutover.revert_max_lag.0;
        let deadline = Instant::now() + (bound * 3).max(Duration::from_secs(30));
        loop {
            if let Some((i, e)) = Self::check(&sides) {
                return Err(self.failed(&sides[i], e).await);
            }
            let behind = sides.iter().any(|s| {
                s.state.position().is_none()
                    || !s.state.past_rename()
                    || s.state.lag_ms.load(std::sync::atomic::Ordering::Relaxed) as u128
                        > bound.as_millis()
                    || s.state.backlog().unwrap_or(usize::MAX) > 10_000
            });
            if !behind {
                break;
            }
            if self.control.stopping() {
                return Err(RunError::WindowInterrupted { tables });
            }
            if Instant::now() > deadline {
                return Err(RunError::Window(format!(
                    "{tables}: the revert window's stream is further behind the live table than \
                     revert_max_lag ({}); nothing was renamed. Let it catch up (`wraith run \
                     CONFIG` holds the window) and revert again",
                    humantime::format_duration(bound)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.ops
            .hook(HookEvent::OnBeforeRevert)
            .await
            .map_err(|source| RunError::Hook {
                table: tables.clone(),
                source,
            })?;
        let mut drain = WindowDrain {
            sides: &sides,
            job: self,
            verified: 0,
            point_blocked: Duration::ZERO,
        };
        // Every row written in the window, compared before anything is locked for long.
        match drain.verify_at_point().await {
            Ok(_) => {}
            Err(DrainError::Stop(v)) => return Err(self.mismatch(&sides, *v).await),
            Err(DrainError::Retry(c)) => {
                return Err(RunError::Changes {
                    table: tables.clone(),
                    source: Box::new(c),
                })
            }
        }
        let swap: Vec<SwapTable> = sides
            .iter()
            .map(|s| SwapTable::back(&s.entry.schema, &s.entry.table))
            .collect();
        let stop = || self.control.stopping().then(|| "interrupted".to_string());
        let cut = cutover::cut_over(
            self.pool,
            self.flavor,
            &swap,
            &cutover_settings_of(self.config),
            &mut drain,
            &cutover::Observer {
                progress: self.progress,
                stop: &stop,
            },
        )
        .await;
        let verified = drain.verified;
        let point_ms = drain.point_blocked.as_secs_f64() * 1000.0;
        let cut = match cut {
            Err(CutoverError::Verify(v)) => return Err(self.mismatch(&sides, *v).await),
            cut => cut.map_err(RunError::Cutover)?,
        };
        drop(sides);
        let mut conn = self
            .pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        let kept = self.after_revert(&mut conn, window, drop_new).await?;
        self.ops.hook_logged(HookEvent::OnRevert, None).await;
        Ok(RevertReport {
            tables: window
                .tables
                .iter()
                .map(|t| format!("{}.{}", t.schema, t.table))
                .collect(),
            blocked_ms: cut.blocked_ms + point_ms,
            point_lock_ms: point_ms,
            cutover: Some(cut),
            rows_verified: verified,
            kept,
        })
    }

    /// A revert killed after its RENAME: its cleanup.
    pub(super) async fn finish_revert(
        &self,
        window: &RevertWindow,
        drop_new: bool,
    ) -> Result<RevertReport, RunError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .context(|| "connecting to the source".into())?;
        let kept = self.after_revert(&mut conn, window, drop_new).await?;
        self.ops.hook_logged(HookEvent::OnRevert, None).await;
        Ok(RevertReport {
            tables: window
                .tables
                .iter()
                .map(|t| format!("{}.{}", t.schema, t.table))
                .collect(),
            blocked_ms: 0.0,
            point_lock_ms: 0.0,
            cutover: None,
            rows_verified: 0,
            kept,
        })
    }

    /// After the swap back: the new-schema tables kept (or dropped), the
    /// window's leftovers removed.
    async fn after_revert(
        &self,
        conn: &mut Conn,
        window: &RevertWindow,
        drop_new: bool,
    ) -> Result<Vec<String>, RunError> {
        let mut kept = Vec::new();
        for t in &window.tables {
            // A revert killed right after its RENAME left its markers.
            cutover::drop_markers(conn, &t.schema, &t.table).await?;
            let new = shadow_name(&t.table);
            if drop_new {
                conn.query_drop(format!(
                    "DROP TABLE IF EXISTS {}.{}",
                    quote_ident(&t.schema),
                    quote_ident(&new)
                ))
                .await
                .context(|| format!("dropping {}.{new}", t.schema))?;
            } else {
                kept.push(format!("{}.{new}", t.schema));
            }
        }
        self.end_window(conn, window).await?;
        Ok(kept)
    }
}

fn label(sides: &[Side]) -> String {
    sides
        .iter()
        .map(|s| s.entry.table.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The revert's drain: each window table's stream drained into its old
/// table, and the rows written since the last comparison compared, old
/// against live.
struct WindowDrain<'s, 'a> {
    sides: &'s [Side],
    job: &'s WindowJob<'a>,
    verified: u64,
    /// How long the consistent points' locks kept writes waiting.
    point_blocked: Duration,
}

impl WindowDrain<'_, '_> {
    fn online(&self, side: &Side) -> OnlineDrain {
        OnlineDrain {
            state: side.state.clone(),
            timeout: self.job.config.cutover.lock_wait_timeout.0,
            verifier: None,
            target_pool: self.job.pool.clone(),
        }
    }

    /// A consistent point of every live table (locked for a moment, as the
    /// checksum's), then every row written since the last comparison
    /// compared in snapshots of that point.
    async fn verify_at_point(&mut self) -> Result<Vec<Verified>, DrainError> {
        let retry = |e: DbError| DrainError::Retry(e.into());
        let pool = self.job.pool;
        let mut lock = pool
            .get_conn()
            .await
            .context(|| "connecting to lock for a consistent point".into())
            .map_err(retry)?;
        let mut sessions = Vec::new();
        for _ in self.sides {
            sessions.push((
                read_conn(pool).await.map_err(retry)?,
                read_conn(pool).await.map_err(retry)?,
            ));
        }
        let timeout = self.job.config.cutover.lock_wait_timeout.0;
        server::set_lock_wait_timeout(&mut lock, timeout.as_secs().max(1))
            .await
            .map_err(retry)?;
        let tables: Vec<String> = self
            .sides
            .iter()
            .map(|s| {
                format!(
                    "{}.{} READ",
                    quote_ident(&s.entry.schema),
                    quote_ident(&s.entry.table)
                )
            })
            .collect();
        // A window handed over does not wait on for a busy table.
        let stop = || {
            (self.job.control.stopping() || self.job.ops.window_released())
                .then(|| "interrupted".to_string())
        };
        let queued = cutover::lock_bounded(
            pool,
            self.job.flavor,
            &mut lock,
            &label(self.sides),
            &format!("LOCK TABLES {}", tables.join(", ")),
            &cutover_settings_of(self.job.config),
            &stop,
        )
        .await
        .map_err(|e| DrainError::Retry(ChangesError::Setup(e.to_string())))?;
        let locked = server::TablesLock::granted(lock, queued);
        let taken = async {
            let mut keys = Vec::new();
            let mut points = Vec::new();
            for (side, (old_side, live_side)) in self.sides.iter().zip(sessions.iter_mut()) {
                side.state
                    .drain(timeout * 10, "at the revert's consistent point")
                    .await?;
                // Under the lock, nothing of the live table commits: every
                // change before this position is applied now.
                points.push(side.state.position().map(|p| (p, side.state.past_rename())));
                for c in [&mut *old_side, &mut *live_side] {
                    c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                        .await
                        .context(|| "opening a snapshot".into())
                        .map_err(retry)?;
                }
                keys.push(side.state.track_changes().map_err(DrainError::Retry)?);
            }
            Ok::<_, DrainError>((keys, points))
        }
        .await;
        let unlocked = locked.unlock().await;
        self.point_blocked += unlocked.blocked;
        let (keys, points) = taken?;
        unlocked.result.map_err(retry)?;
        for ((side, (old_side, live_side)), keys) in
            self.sides.iter().zip(sessions.iter_mut()).zip(keys)
        {
            let n = side
                .verifier
                .verify(
                    old_side,
                    Some(live_side),
                    &keys,
                    "rows written during the revert window, at the revert's consistent point",
                )
                .await
                .map_err(stop_on)?;
            self.verified += n;
        }
        Ok(points)
    }
}

/// Where a table's comparison got to: every change before the position is
/// compared (with whether it lies past the cut-over's RENAME).
type Verified = Option<(binlog::BinlogPosition, bool)>;

/// A comparison that failed: a difference stops the revert; a lost
/// connection is worth another attempt.
fn stop_on(e: VerifyError) -> DrainError {
    match e {
        VerifyError::Db(e) => DrainError::Retry(e.into()),
        e => DrainError::Stop(Box::new(e)),
    }
}

impl Drain for WindowDrain<'_, '_> {
    async fn drain_to(
        &mut self,
        target: binlog::BinlogPosition,
        mut locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> Result<(), DrainError> {
        for side in self.sides {
            self.online(side)
                .drain_to(target.clone(), locked.as_deref_mut(), deadline)
                .await?;
        }
        Ok(())
    }

    async fn catch_up(&mut self) -> Result<(), DrainError> {
        for side in self.sides {
            self.online(side).catch_up().await?;
        }
        Ok(())
    }

    async fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> Result<(), DrainError> {
        let retry = |e: DbError| DrainError::Retry(e.into());
        if self.verification_backlog() == 0 {
            return Ok(());
        }
        // The session holds the live table; the old one is read beside it
        // (only wraith writes it, and its applier is drained), in one time
        // zone with it, or on the session itself when it holds both (MySQL).
        let mut old_side = read_conn(self.job.pool).await.map_err(retry)?;
        online::read_in_zone_of(session, &mut old_side)
            .await
            .map_err(retry)?;
        for side in self.sides {
            let keys = side.state.touched_keys().map_err(DrainError::Retry)?;
            if keys.is_empty() {
                continue;
            }
            const POINT: &str = "under the revert's lock, after the final catch-up";
            let n = if shadow_locked {
                side.verifier.verify(session, None, &keys, POINT).await
            } else {
                side.verifier
                    .verify(&mut old_side, Some(session), &keys, POINT)
                    .await
            }
            .map_err(stop_on)?;
            side.state.track_changes().map_err(DrainError::Retry)?;
            self.verified += n;
        }
        Ok(())
    }

    fn verification_backlog(&self) -> usize {
        self.sides
            .iter()
            .map(|s| s.state.changed_since_verified().unwrap_or(0))
            .sum()
    }

    async fn verify_unlocked(&mut self) -> Result<(), DrainError> {
        self.verify_at_point().await.map(|_| ())
    }
}

/// The window of `config`'s job as its checkpoint records it, if any.
pub(super) async fn load(
    config: &Config,
    pool: &Pool,
) -> Result<Option<(Checkpointer, RevertWindow)>, RunError> {
    let store = resume::open_store(config, pool);
    let key = resume::job_key(config);
    let Some(task) = store.load(&key).await.map_err(RunError::Checkpoint)? else {
        return Ok(None);
    };
    let Some(window) = task.revert_window.clone() else {
        return Ok(None);
    };
    Ok(Some((Checkpointer::new(store, key, task), window)))
}

/// Whether every table of `window` has been swapped (`t` new, `_t_old` the
/// old one): a pending window whose cut-over did not happen is not a window.
pub(super) async fn swapped(pool: &Pool, window: &RevertWindow) -> Result<bool, RunError> {
    for t in &window.tables {
        let state = cutover::resolve_interrupted(pool, &t.schema, &t.table).await?;
        if state != CutoverState::Done {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a revert of `window` already swapped the tables back (`_t_old`
/// gone, `_t_new` there): only its cleanup is left.
pub(super) async fn reverted(conn: &mut Conn, window: &RevertWindow) -> Result<bool, RunError> {
    for t in &window.tables {
        let old = table_exists(conn, &t.schema, &old_name(&t.table)).await?;
        let new = table_exists(conn, &t.schema, &shadow_name(&t.table)).await?;
        if old || !new {
            return Ok(false);
        }
    }
    Ok(true)
}
