//! # wraith-checkpoints: what a resumed run needs, stored atomically
//!
//! **For:** a run killed at any instant (kill -9, lost server, full disk)
//! resumes where it was instead of starting over. This crate owns the
//! checkpoint model, the two stores that keep it, and the validation that
//! decides whether a saved checkpoint still fits.
//!
//! **Leaves to others:** the engine decides *policy*: when to checkpoint
//! (every `[checkpoint] interval` and at every state change), what a chunk
//! or an engine is, which settings go into the config fingerprint, what to
//! redo on resume, and what to do with an invalid checkpoint. This crate
//! *stores and validates*: it knows nothing of chunking, binlogs or backends
//! beyond the values the engine hands it (encoded keys are opaque bytes,
//! engine UUIDs are the backend's).
//!
//! ## The model
//!
//! Lightning's hierarchy with Spirit's change-stream state:
//!
//! ```text
//! TaskCheckpoint      tool & format version, config fingerprint, migration id, started/updated
//! └─ TableCheckpoint  source identity, shadow fingerprint, normalized ALTER, TableStatus, rows
//!    ├─ ChangeStreamCheckpoint  binlog position (file:pos + GTID), low/high watermarks
//!    └─ EngineCheckpoint        backend UUID, engine id, EngineStatus, key range
//!       └─ ChunkCheckpoint      key range (or file + byte range), ChunkStatus, rows
//! ```
//!
//! Every status only moves forward ([`TableStage`]: pending → shadow_created
//! → copying → copy_done → indexes_restored → checksummed → cutting_over →
//! cut_over → done; [`EngineStatus`]: open → all_written → closed → imported
//! → cleaned; [`ChunkStatus`]: pending → written → flushed). The status
//! fields are private; `advance` refuses a backward move with a
//! [`TransitionError`]. A table can also be [`TableStatus::Failed`], which
//! remembers the stage it failed in; [`TableCheckpoint::retry`] returns it
//! there explicitly. Keys are memcomparable bytes, hex in JSON. Chunk ranges
//! are `(lower, upper]`, as the engine's chunker makes them.
//!
//! The change stream's `position` is the binlog position up to which every
//! change is durably applied to the shadow table or durably buffered in the
//! local change store: a resumed run streams from it and replays
//! idempotently.
//!
//! Checkpoints are JSON carrying [`FORMAT_VERSION`]; a store refuses a
//! checkpoint of a newer format ([`CheckpointError::UnsupportedFormat`])
//! rather than misread it.
//!
//! ## The stores
//!
//! One trait, [`CheckpointStore`] (`load` / `save` / `remove` by job key,
//! `describe` for messages), two stores:
//!
//! - [`TableStore`]: the default. A table [`CHECKPOINT_TABLE`]
//!   (`_wraith_checkpoint`) in the target schema with explicit columns (job,
//!   format and tool version, migration id, status, the JSON body, time of
//!   write), created on the first save. A save is one `INSERT ... ON
//!   DUPLICATE KEY UPDATE` in a transaction.
//! - [`FileStore`]: a local JSON file mapping keys to checkpoints, for a run
//!   whose target is read-only to wraith, and for tests. A save writes a
//!   temp file in the same directory, fsyncs it, renames it over the file and
//!   fsyncs the directory, under an `flock` so concurrent saves of different
//!   keys do not lose each other.
//!
//! ## Atomicity
//!
//! A save either happens entirely or not at all: after a crash at any
//! instant a load returns the previous checkpoint or the new one. The engine
//! must save only what is durable (a chunk is `flushed` after its engine was
//! flushed; the position only covers changes applied or durably buffered),
//! so a checkpoint never claims more than a kill -9 keeps.
//!
//! ## Validation
//!
//! [`validate`] compares a loaded checkpoint with a [`CurrentState`] the
//! engine observed (source identity, ALTER, config fingerprint, shadow table,
//! binlog retention, clock) and returns the first [`InvalidCheckpoint`]:
//! Spirit's `MismatchedAlter`, `BinlogNotFound`, `CheckpointTooOld`,
//! `CheckpointCollision`, `WatermarkNotReady`, plus `ConfigChanged` and
//! `ShadowChanged`. An invalid checkpoint is never half-used: the engine
//! refuses, and every message names the fix, ending with `wraith run --fresh
//! CONFIG` (drop the old shadow table, engines and checkpoint; start over).
//! [`normalize_alter`] makes reformatting an ALTER harmless;
//! [`config_fingerprint`] documents which settings matter.
//!
//! ## Errors
//!
//! - [`CheckpointError`] for store operations. Any failure to save is
//!   [`CheckpointError::CouldNotWriteCheckpoint`] (Spirit's
//!   `ErrCouldNotWriteCheckpoint`): the engine stops the run on it, since
//!   going on would do work a kill could silently lose. The previous
//!   checkpoint stays intact.
//! - [`TransitionError`] for a status change the model refuses.
//! - [`InvalidCheckpoint`] for a checkpoint that no longer fits.
//!
//! Neighbours: `wraith-engine` writes and resumes from checkpoints;
//! `wraith-backend` owns the engines whose UUIDs and states are recorded here.

mod error;
mod file;
mod hex;
mod model;
mod store;
mod table;
mod validate;

pub use error::{CheckpointError, StoreFailure, TransitionError};
pub use file::FileStore;
pub use model::{
    BinlogPosition, ChangeStreamCheckpoint, ChunkCheckpoint, ChunkStatus, EngineCheckpoint,
    EngineStatus, KeyRange, RevertWindow, RowsChecksum, SourceIdentity, TableCheckpoint,
    TableStage, TableStatus, TaskCheckpoint, WindowStage, WindowTable, FORMAT_VERSION,
    MIN_FORMAT_VERSION,
};
pub use store::{CheckpointStore, MAX_KEY_LEN};
pub use table::{TableStore, CHECKPOINT_COLUMNS, CHECKPOINT_TABLE};
pub use validate::{
    compare_binlog_files, config_fingerprint, fingerprint_changes, normalize_alter, validate,
    BinlogCoverage, CurrentState, CurrentTable, InvalidCheckpoint, DEFAULT_MAX_AGE,
};

/// Re-exported so implementors of [`CheckpointStore`] use the same macro.
pub use async_trait::async_trait;
