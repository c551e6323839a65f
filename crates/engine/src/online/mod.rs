//! Keeping the shadow tables in step with their sources while the copy runs.
//!
//! Each rebuilt table has its [`OnlineState`]. One change stream follows
//! every table of the job, and [`spawn_shared`] starts the tasks around it:
//! - one *consumer* reads the [`crate::binlog::ChangeStream`] and routes each
//!   row change to its table's state (by [`RowChange::table`]), turning it
//!   into shadow operations (a key-changing update is a delete of the old key
//!   plus an upsert of the new one) buffered there; every commit and
//!   heartbeat moves the position and lag of every state, always after the
//!   transaction's rows are in their buffers ([`OnlineState::persist`]
//!   relies on it); tokens go to every state, each keeping its own;
//! - one *apply loop* per state takes what its watermarks allow from its
//!   buffer and applies it ([`crate::applier`]), continuously during the copy;
//! - the copier reports chunks dispatched and durable ([`Watermarks`]).
//!
//! [`OnlineState::drain`] (in `drain.rs`, with the cut-over's view of the
//! state, [`OnlineDrain`]) is the synchronisation point used by the checksum
//! and the cut-over: it writes a token row to wraith's changelog table (after
//! the caller has locked the source), waits until the stream has delivered
//! it — so every change committed before it has been read — and applies the
//! whole buffer.
//!
//! A change whose row clashes on a unique index of the new table (see
//! [`crate::applier`]) goes back into the buffer and is retried by every
//! later pass: the clash may be transient. At a drain nothing else can
//! change, so a clash that remains after the buffer is otherwise empty is
//! real, and the drain stops with [`VerifyError::UniqueClash`](crate::verify::VerifyError::UniqueClash).
//!
//! After the checksum's consistent point ([`OnlineState::track_changes`]),
//! the key of every row written is recorded, so that the rows changed after
//! the checksum can be verified again ([`crate::verify`]).
//!
//! **Errors.** The consumer's or the apply loop's first failure is kept as
//! the state's error ([`OnlineState::error`], a [`ChangesError`]); a failure
//! of the stream is every state's. Every later check and drain reports it.
//! [`ChangesError::resumable`] decides by variant whether a rerun can
//! continue: a DDL on the source or a value the server refuses would fail
//! again, a lost connection would not. A poisoned
//! lock (a task panicked while holding it) is recorded the same way, so the
//! run stops at its next check instead of going on with half-written state.
//! Making the buffer durable ([`OnlineState::persist`]) fsyncs RocksDB: it
//! runs on a blocking thread, not on an async worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wraith_backend::{Row, Value};

use crate::applier::Applier;
#[cfg(doc)]
use crate::binlog::RowChange;
use crate::binlog::{BinlogPosition, ChangeKind, ChangeStream, ChangeStreamError, StreamEvent};
use crate::changes::{encode_row_key, ChangeBuffer, ChangeStoreError, Pending, Watermarks};
use crate::server::{quote_ident, Context, DbError};

mod drain;
#[cfg(all(test, feature = "testkit"))]
mod tests;

pub(crate) use self::drain::read_in_zone_of;
pub use self::drain::OnlineDrain;

pub use crate::names::CHANGELOG_TABLE;

/// Creates the changelog table if needed.
pub async fn ensure_changelog(conn: &mut Conn, schema: &str) -> Result<(), DbError> {
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         token VARCHAR(100) NOT NULL, created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) \
         COMMENT 'wraith: tokens and heartbeats of running rebuilds'",
        quote_ident(schema),
        quote_ident(CHANGELOG_TABLE)
    ))
    .await
    .context(|| format!("creating {schema}.{CHANGELOG_TABLE}"))
}

/// Why keeping the shadow table in step with the source failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// The change stream stopped (a DDL on the source table is one cause).
    #[error("change stream: {0}")]
    Stream(#[source] ChangeStreamError),
    /// The apply loop stopped.
    #[error("applying changes: {0}")]
    ApplyLoop(#[source] Box<ChangesError>),
    /// A statement of the applier failed (a value the server refuses, a
    /// lost connection, ...).
    #[error(transparent)]
    Apply(DbError),
    /// Any other statement failed.
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] ChangeStoreError),
    /// A task panicked while holding this lock: what it guards may be half
    /// written.
    #[error("{0} poisoned")]
    Poisoned(&'static str),
    #[error("a row image has fewer columns than the table")]
    ShortRowImage,
    #[error("a {0:?} event without the row image it needs")]
    MissingImage(ChangeKind),
    #[error("connecting to write a token: {0}")]
    TokenConnection(mysql_async::Error),
    #[error("writing the drain token: {0}")]
    TokenWrite(mysql_async::Error),
    #[error("the change stream did not deliver the token within {0:?}")]
    TokenTimeout(Duration),
    #[error("{0} changes were still to apply when the hold budget ran out")]
    HoldBudget(usize),
    #[error("the backlog stayed above 1000 changes for 10 minutes ({0} now): the applier cannot keep up")]
    Backlog(usize),
    /// A resumed run could not import an engine the killed run had closed.
    #[error("importing a reopened engine: {0}")]
    ImportEngine(#[source] wraith_backend::BackendError),
    /// Starting the change stream failed.
    #[error(transparent)]
    Start(ChangeStreamError),
    /// Verifying the changed rows outside the cut-over's lock failed.
    #[error(transparent)]
    Verifying(Box<crate::migration::RunError>),
    /// The state's first error, reported again.
    #[error(transparent)]
    Failed(Arc<ChangesError>),
    /// The run could not set up or record what following the changes needs
    /// (a checkpoint transition, a key a resumed copy cannot place, ...).
    #[error("{0}")]
    Setup(String),
    #[error("stopped")]
    Stopped,
}

impl ChangesError {
    /// Whether a rerun can resume after this: not after a DDL on the source
    /// nor a value the server refuses (both would fail again).
    pub fn resumable(&self) -> bool {
        match self {
            ChangesError::Stream(ChangeStreamError::DdlOnSource { .. })
            | ChangesError::Start(ChangeStreamError::DdlOnSource { .. }) => false,
            ChangesError::Stream(ChangeStreamError::Db(e))
            | ChangesError::Start(ChangeStreamError::Db(e))
            | ChangesError::Apply(e)
            | ChangesError::Db(e) => !refuses_a_value(&e.error),
            ChangesError::TokenConnection(e) | ChangesError::TokenWrite(e) => !refuses_a_value(e),
            ChangesError::ImportEngine(e) => !e.is_data_error(),
            ChangesError::ApplyLoop(e) => e.resumable(),
            ChangesError::Failed(e) => e.resumable(),
            ChangesError::Verifying(e) => e.is_resumable(),
            _ => true,
        }
    }
}

/// Whether the server refused a value (the statement would be refused again).
fn refuses_a_value(e: &mysql_async::Error) -> bool {
    crate::server::server_error_code(e).is_some_and(wraith_backend::is_data_error_code)
}

/// Locks `m`; a poisoned lock is [`ChangesError::Poisoned`].
fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, ChangesError> {
    m.lock().map_err(|_| ChangesError::Poisoned(what))
}

/// How a source row image becomes a shadow row.
#[derive(Debug, Clone)]
pub struct RowMapping {
    /// For each shadow column (in the target's order), its position in the source row image.
    pub source_positions: Vec<usize>,
    /// Positions of the shadow key within a shadow row.
    pub key_positions: Vec<usize>,
}

impl RowMapping {
    fn shadow_row(&self, source: &Row) -> Option<Row> {
        self.source_positions
            .iter()
            .map(|&p| source.get(p).cloned())
            .collect()
    }

    fn key_values(&self, shadow: &Row) -> Vec<Value> {
        self.key_positions
            .iter()
            .filter_map(|&p| shadow.get(p).cloned())
            .collect()
    }
}

/// State shared by the consumer, the apply loop, the copier and the cut-over.
pub struct OnlineState {
    buffer: Mutex<ChangeBuffer>,
    marks: Mutex<Watermarks>,
    use_watermarks: bool,
    mapping: RowMapping,
    applier: tokio::sync::Mutex<Applier>,
    position: Mutex<Option<BinlogPosition>>,
    last_token: Mutex<String>,
    token_seen: Notify,
    /// The first error of the consumer or the apply loop.
    error: OnceLock<Arc<ChangesError>>,
    stop: AtomicBool,
    /// Set while the cut-over runs: wraith's own RENAME then ends the stream.
    cutting_over: AtomicBool,
    token_seq: AtomicU64,
    /// Changes applied so far, for progress (readable without the applier's lock).
    pub applied_total: AtomicU64,
    /// How far behind the server the stream reads, in ms (server clock).
    pub lag_ms: AtomicU64,
    pool: Pool,
    changelog_schema: String,
    run_id: String,
    /// Row events read from the binlog for the source table.
    pub events: AtomicU64,
    /// The source table's name, for messages.
    table: String,
    /// Keys (shadow key values by encoded key) written since tracking began
    /// at the checksum's consistent point and not verified since.
    touched: Mutex<Option<BTreeMap<Vec<u8>, Vec<Value>>>>,
    /// Rows verified again after the checksum.
    pub reverified: AtomicU64,
    /// See [`OnlineState::renamed`].
    past_rename: AtomicBool,
}

/// What one pass of the applier did.
struct Pass {
    applied: usize,
    /// Rows not written because they clash on a unique index, with the index.
    clashes: Vec<(Row, String)>,
}

impl std::fmt::Debug for OnlineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineState")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl crate::progress::StreamFigures for OnlineState {
    fn figures(&self) -> crate::progress::StreamProgress {
        crate::progress::StreamProgress {
            changes_received: self.received(),
            changes_applied: self.applied_total.load(Ordering::Relaxed),
            // A poisoned buffer is the state's error; the figure shows 0.
            changes_backlog: self.backlog().unwrap_or(0) as u64,
            binlog_position: self.position().map(|p| p.to_string()),
            lag_secs: self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// Tells this state's tokens from another's in the changelog table: another
/// run's, or another state's fed by the same stream (two tables of one job
/// may share a name in different schemas, hence the counter). Tokens go
/// through the changelog table (the schema's default charset) and come back
/// from the binlog as bytes: keep them short ASCII, so a table named in other
/// letters still gets its token back (it did not).
fn run_id(table: &str) -> String {
    static STATES: AtomicU64 = AtomicU64::new(0);
    let name = if table.is_ascii() {
        table.to_string()
    } else {
        format!("t{:016x}", xxhash_rust::xxh3::xxh3_64(table.as_bytes()))
    };
    let n = STATES.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

impl OnlineState {
    pub fn new(
        buffer: ChangeBuffer,
        mapping: RowMapping,
        applier: Applier,
        use_watermarks: bool,
        pool: Pool,
        changelog_schema: &str,
        table: &str,
    ) -> Arc<OnlineState> {
        Arc::new(OnlineState {
            buffer: Mutex::new(buffer),
            marks: Mutex::new(Watermarks::default()),
            use_watermarks,
            mapping,
            applier: tokio::sync::Mutex::new(applier),
            position: Mutex::new(None),
            last_token: Mutex::new(String::new()),
            token_seen: Notify::new(),
            error: OnceLock::new(),
            stop: AtomicBool::new(false),
            cutting_over: AtomicBool::new(false),
            token_seq: AtomicU64::new(0),
            applied_total: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            pool,
            changelog_schema: changelog_schema.to_string(),
            // Tells this run's tokens from another's in the changelog table.
            run_id: run_id(table),
            events: AtomicU64::new(0),
            table: table.to_string(),
            touched: Mutex::new(None),
            reverified: AtomicU64::new(0),
            past_rename: AtomicBool::new(false),
        })
    }

    /// From now on, records the key of every row written; returns the keys
    /// recorded since the last call (none on the first). Called with the
    /// source locked and the stream drained: a consistent point.
    pub fn track_changes(&self) -> Result<Vec<Vec<Value>>, ChangesError> {
        Ok(self
            .guard(&self.touched, "verification keys")?
            .replace(BTreeMap::new())
            .map(|m| m.into_values().collect())
            .unwrap_or_default())
    }

    /// The keys recorded since the last [`OnlineState::track_changes`]
    /// (kept: a failed verification verifies them again).
    pub fn touched_keys(&self) -> Result<Vec<Vec<Value>>, ChangesError> {
        Ok(self
            .guard(&self.touched, "verification keys")?
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    /// Records `keys` as written since the last comparison (a resumed
    /// window's keys that were not compared before it stopped).
    pub fn add_touched(&self, keys: Vec<Vec<Value>>) -> Result<(), ChangesError> {
        let mut touched = self.guard(&self.touched, "verification keys")?;
        let map = touched.get_or_insert_with(BTreeMap::new);
        for key in keys {
            let mut bytes = Vec::new();
            wraith_backend::encode_key(&key.iter().collect::<Vec<_>>(), &mut bytes);
            map.insert(bytes, key);
        }
        Ok(())
    }

    /// After the apply loop stopped on a value the server refuses: the
    /// pending row it refuses (its key values and the server's words),
    /// found by writing each pending row alone in a rolled-back
    /// transaction. Everything pending stays pending.
    pub async fn find_refused_row(&self) -> Result<Option<(Vec<Value>, String)>, ChangesError> {
        let mut applier = self.applier.lock().await;
        let batch = {
            let marks = lock(&self.marks, "watermarks")?;
            let mut buffer = lock(&self.buffer, "change buffer")?;
            buffer.take_ready(&marks, self.use_watermarks, 100_000)?
        };
        let mut found = None;
        for (_, _, change) in &batch {
            if let Pending::Upsert(row) = change {
                if let Err(e) = applier.probe_row(row).await {
                    if crate::server::server_error_code(&e.error)
                        .is_some_and(wraith_backend::is_data_error_code)
                    {
                        found = Some((self.mapping.key_values(row), e.error.to_string()));
                        break;
                    }
                }
            }
        }
        let mut buffer = lock(&self.buffer, "change buffer")?;
        for (key, seq, change) in batch {
            buffer.requeue(key, seq, change)?;
        }
        Ok(found)
    }

    /// Keys written since the last [`OnlineState::track_changes`].
    pub fn changed_since_verified(&self) -> Result<usize, ChangesError> {
        Ok(self
            .guard(&self.touched, "verification keys")?
            .as_ref()
            .map(BTreeMap::len)
            .unwrap_or(0))
    }

    /// Locks `m`. A poisoned lock also becomes the state's error, so the run
    /// stops at its next check whoever asked.
    fn guard<'a, T>(
        &self,
        m: &'a Mutex<T>,
        what: &'static str,
    ) -> Result<MutexGuard<'a, T>, ChangesError> {
        lock(m, what).inspect_err(|_| self.fail(ChangesError::Poisoned(what)))
    }

    /// The copy's watermarks (the copier reports chunks through them).
    pub fn marks(&self) -> Result<MutexGuard<'_, Watermarks>, ChangesError> {
        self.guard(&self.marks, "watermarks")
    }

    /// Records the first failure: every later check reports it.
    pub(crate) fn fail(&self, e: ChangesError) {
        self.fail_shared(Arc::new(e));
    }

    /// [`OnlineState::fail`] with an error several states share (the
    /// stream's, which feeds them all).
    fn fail_shared(&self, e: Arc<ChangesError>) {
        if self.error.set(e.clone()).is_ok() {
            tracing::error!(error = %e, "change stream or applier failed");
        }
        self.token_seen.notify_waiters();
    }

    /// The first error of the consumer or the apply loop.
    pub fn error(&self) -> Option<ChangesError> {
        self.error.get().cloned().map(ChangesError::Failed)
    }

    /// Fails with the state's error, if there is one.
    pub fn check(&self) -> Result<(), ChangesError> {
        self.error().map_or(Ok(()), Err)
    }

    /// Changes waiting, after deduplication.
    pub fn backlog(&self) -> Result<usize, ChangesError> {
        Ok(self.guard(&self.buffer, "change buffer")?.len())
    }

    /// Changes received from the stream (before deduplication); 0 once the
    /// buffer's lock is poisoned (which is the state's error then).
    pub fn received(&self) -> u64 {
        self.guard(&self.buffer, "change buffer")
            .map(|b| b.received)
            .unwrap_or(0)
    }

    /// Times the change buffer spilled to disk (0 as for `received`).
    pub fn spills(&self) -> u64 {
        self.guard(&self.buffer, "change buffer")
            .map(|b| b.spills)
            .unwrap_or(0)
    }

    /// Where the stream starts (before any commit was seen).
    pub fn set_position(&self, position: BinlogPosition) -> Result<(), ChangesError> {
        *self.guard(&self.position, "stream position")? = Some(position);
        Ok(())
    }

    /// The statement that renamed the table into place passed (a stream
    /// following it [`crate::binlog::WatchedTable::from_rename`]): its
    /// changes follow from `position`. Set with the position, under its
    /// lock, so that [`OnlineState::persist_from_rename`] never pairs a
    /// position before the RENAME with "past it".
    pub fn renamed(&self, position: BinlogPosition) -> Result<(), ChangesError> {
        let mut p = self.guard(&self.position, "stream position")?;
        self.past_rename.store(true, Ordering::SeqCst);
        *p = Some(position);
        Ok(())
    }

    /// Whether the stream passed the statement that renamed the table into place.
    pub fn past_rename(&self) -> bool {
        self.past_rename.load(Ordering::SeqCst)
    }

    /// The stream's position (`None` too once its lock is poisoned, which is
    /// the state's error then).
    pub fn position(&self) -> Option<BinlogPosition> {
        self.guard(&self.position, "stream position")
            .ok()
            .and_then(|p| p.clone())
    }

    /// `(applied changes, changes per second of applying)`.
    pub async fn applied(&self) -> (u64, f64) {
        let a = self.applier.lock().await;
        (a.applied, a.rate())
    }

    /// A token came through the stream: kept when it is one of this state's
    /// own (another state's or another run's would hide it from a waiting drain).
    fn token_arrived(&self, token: &str) {
        let ours = token
            .strip_prefix(self.run_id.as_str())
            .is_some_and(|rest| rest.starts_with(':'));
        if !ours {
            return;
        }
        match self.guard(&self.last_token, "last token") {
            Ok(mut t) => *t = token.to_string(),
            Err(_) => return, // the state's error now
        }
        self.token_seen.notify_waiters();
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.token_seen.notify_waiters();
    }

    fn buffer_change(
        &self,
        kind: ChangeKind,
        before: Option<Row>,
        after: Option<Row>,
    ) -> Result<(), ChangesError> {
        let map = |r: Option<Row>| -> Result<Option<Row>, ChangesError> {
            match r {
                None => Ok(None),
                Some(r) => self
                    .mapping
                    .shadow_row(&r)
                    .map(Some)
                    .ok_or(ChangesError::ShortRowImage),
            }
        };
        let before = map(before)?;
        let after = map(after)?;
        let mut buffer = lock(&self.buffer, "change buffer")?;
        let kp = &self.mapping.key_positions;
        match (kind, before, after) {
            (ChangeKind::Insert, _, Some(row)) => {
                buffer.push(encode_row_key(&row, kp), Pending::Upsert(row))?;
            }
            (ChangeKind::Delete, Some(row), _) => {
                let key = self.mapping.key_values(&row);
                buffer.push(encode_row_key(&row, kp), Pending::Delete(key))?;
            }
            (ChangeKind::Update, Some(old), Some(new)) => {
                let old_key = encode_row_key(&old, kp);
                let new_key = encode_row_key(&new, kp);
                if old_key != new_key {
                    buffer.push(old_key, Pending::Delete(self.mapping.key_values(&old)))?;
                }
                buffer.push(new_key, Pending::Upsert(new))?;
            }
            (kind, _, _) => return Err(ChangesError::MissingImage(kind)),
        }
        Ok(())
    }

    /// Applies what may be applied now. With `on`, on that session only.
    /// Rows that clash on a unique index go back into the buffer.
    async fn apply_ready_on(
        &self,
        max: usize,
        on: Option<&mut Conn>,
    ) -> Result<Pass, ChangesError> {
        let mut applier = self.applier.lock().await;
        let batch = {
            let marks = lock(&self.marks, "watermarks")?;
            let mut buffer = lock(&self.buffer, "change buffer")?;
            buffer.take_ready(&marks, self.use_watermarks, max)?
        };
        let changes: Vec<(Vec<u8>, Pending)> = batch
            .iter()
            .map(|(k, _, c)| (k.clone(), c.clone()))
            .collect();
        let applied = match on {
            Some(conn) => applier.apply_on(conn, &changes).await,
            None => applier.apply(&changes).await,
        };
        drop(changes);
        let clashes = match applied {
            Ok(clashes) => clashes,
            Err(e) => {
                // The batch left the buffer and its deletes may be committed:
                // put it back, so that a retried drain (the cut-over's next
                // attempt) applies it again instead of finding nothing to do.
                // Delete-then-insert by key is safe to repeat.
                let mut buffer = lock(&self.buffer, "change buffer")?;
                for (key, seq, change) in batch {
                    buffer.requeue(key, seq, change)?;
                }
                return Err(ChangesError::Apply(e));
            }
        };
        let mut clashed = vec![None; batch.len()];
        for c in clashes {
            if let Some(slot) = clashed.get_mut(c.pos) {
                *slot = Some(c.index);
            }
        }
        let mut pass = Pass {
            applied: 0,
            clashes: Vec::new(),
        };
        let mut done = Vec::with_capacity(batch.len());
        let mut buffer = lock(&self.buffer, "change buffer")?;
        let mut touched = lock(&self.touched, "verification keys")?;
        for ((key, seq, change), clash) in batch.into_iter().zip(clashed) {
            match clash {
                Some(index) => {
                    if let Pending::Upsert(row) = &change {
                        pass.clashes.push((row.clone(), index));
                    }
                    buffer.requeue(key, seq, change)?;
                }
                None => {
                    if let Some(t) = touched.as_mut() {
                        let values = match &change {
                            Pending::Upsert(row) => self.mapping.key_values(row),
                            Pending::Delete(k) => k.clone(),
                        };
                        t.insert(key.clone(), values);
                    }
                    done.push((key, seq));
                }
            }
        }
        drop(touched);
        pass.applied = done.len();
        self.applied_total
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        buffer.applied(&done)?;
        Ok(pass)
    }

    /// Makes the buffer durable and returns the stream position it covers:
    /// every change before it is applied or stored on disk. For checkpoints.
    /// The write fsyncs: it runs on a blocking thread.
    pub async fn persist(self: &Arc<Self>) -> Result<Option<BinlogPosition>, ChangesError> {
        // No batch may be in flight: its changes have left memory but are not
        // yet in the shadow table.
        let _applying = self.applier.lock().await;
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buffer = state.guard(&state.buffer, "change buffer")?;
            // Read under the buffer lock: the consumer moves the position only
            // after the transaction's rows are in the buffer.
            let position = state.guard(&state.position, "stream position")?.clone();
            buffer.persist()?;
            Ok(position)
        })
        .await
        .map_err(|_| ChangesError::Poisoned("change buffer (its persist panicked)"))?
    }

    /// [`OnlineState::persist`], with whether the position covered lies
    /// past the RENAME a stream [`crate::binlog::WatchedTable::from_rename`]
    /// waits for (both read under the position's lock).
    pub async fn persist_from_rename(
        self: &Arc<Self>,
    ) -> Result<Option<(BinlogPosition, bool)>, ChangesError> {
        let _applying = self.applier.lock().await;
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buffer = state.guard(&state.buffer, "change buffer")?;
            let at = {
                let position = state.guard(&state.position, "stream position")?;
                position
                    .clone()
                    .map(|p| (p, state.past_rename.load(Ordering::SeqCst)))
            };
            buffer.persist()?;
            Ok(at)
        })
        .await
        .map_err(|_| ChangesError::Poisoned("change buffer (its persist panicked)"))?
    }

    async fn apply_ready(&self, max: usize) -> Result<usize, ChangesError> {
        Ok(self.apply_ready_on(max, None).await?.applied)
    }
}

/// Starts one consumer that feeds every state from `stream` — `states[i]`
/// gets the changes of the stream's `i`-th table ([`RowChange::table`]) —
/// and one apply loop per state. Returns the consumer's handle first, then
/// the apply loops' in the order of `states`.
///
/// Every state gets every commit and heartbeat position (after the
/// transaction's rows are in its buffer, which [`OnlineState::persist`]
/// relies on), the lag, and the tokens of its own drains. A stream error
/// fails every state. A stopped or failed state is fed nothing more, so its
/// position stays where its buffer is complete; the consumer ends when
/// every state is stopped or failed. At a DDL on a followed table, the
/// states that are cutting over end quietly (their RENAME; everything before
/// it was drained) and the others fail with it.
pub fn spawn_shared(states: Vec<Arc<OnlineState>>, stream: ChangeStream) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(states.len() + 1);
    tasks.push(tokio::spawn(consume(states.clone(), stream)));
    for state in states {
        tasks.push(tokio::spawn(async move {
            while !state.stop.load(Ordering::Relaxed) {
                match state.apply_ready(5_000).await {
                    Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(_) => {}
                    Err(e) => {
                        state.fail(ChangesError::ApplyLoop(Box::new(e)));
                        return;
                    }
                }
            }
        }));
    }
    tasks
}

/// The consumer of [`spawn_shared`].
async fn consume(states: Vec<Arc<OnlineState>>, mut stream: ChangeStream) {
    if stream.tables().len() != states.len() {
        let e = Arc::new(ChangesError::Setup(format!(
            "the change stream follows {} tables ({}) but {} change buffers were given",
            stream.tables().len(),
            stream
                .tables()
                .iter()
                .map(|t| format!("{}.{}", t.schema, t.table))
                .collect::<Vec<_>>()
                .join(", "),
            states.len()
        )));
        states.iter().for_each(|s| s.fail_shared(e.clone()));
        return;
    }
    let fed = |s: &OnlineState| !s.stop.load(Ordering::Relaxed) && s.error.get().is_none();
    // `next()` is not cancelled mid-event (the stream keeps partial state):
    // heartbeats make it return regularly, and `stop` aborts the task.
    while states.iter().any(|s| fed(s)) {
        match stream.next().await {
            Ok(StreamEvent::Rows(changes)) => {
                for c in changes {
                    let Some(state) = states.get(c.table).filter(|s| fed(s)) else {
                        continue;
                    };
                    state.events.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = state.buffer_change(c.kind, c.before, c.after) {
                        state.fail(e);
                    }
                }
            }
            Ok(StreamEvent::Commit { position }) | Ok(StreamEvent::Heartbeat { position }) => {
                let lag = stream.lag().as_millis() as u64;
                for state in states.iter().filter(|s| fed(s)) {
                    if let Err(e) = state.set_position(position.clone()) {
                        state.fail(e);
                        continue;
                    }
                    state.lag_ms.store(lag, Ordering::Relaxed);
                }
            }
            Ok(StreamEvent::Renamed { tables, position }) => {
                for state in tables
                    .iter()
                    .filter_map(|&i| states.get(i))
                    .filter(|s| fed(s))
                {
                    if let Err(e) = state.renamed(position.clone()) {
                        state.fail(e);
                    }
                }
            }
            Ok(StreamEvent::Token(token)) => {
                for state in states.iter().filter(|s| fed(s)) {
                    state.token_arrived(&token);
                }
            }
            Err(e) => {
                let cutting_over = |s: &OnlineState| s.cutting_over.load(Ordering::Relaxed);
                let ours = matches!(e, ChangeStreamError::DdlOnSource { .. })
                    && states.iter().any(|s| cutting_over(s));
                if ours {
                    // Our own RENAME: everything before it was drained already.
                    tracing::debug!("the change stream reached the cut-over's RENAME");
                }
                let e = Arc::new(ChangesError::Stream(e));
                for state in states.iter().filter(|s| fed(s)) {
                    if !(ours && cutting_over(state)) {
                        state.fail_shared(e.clone());
                    }
                }
                return;
            }
        }
    }
}
