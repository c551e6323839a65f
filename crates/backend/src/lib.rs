//! # wraith-backend: Lightning-style engines into a shadow table
//!
//! **For:** getting rows copied from a source table into the shadow table,
//! exactly and resumably. It owns the [`Backend`] trait (the contract every
//! way of writing obeys), the typed engine lifecycle ([`EngineManager`] →
//! [`OpenedEngine`] → [`ClosedEngine`]), the exact row model ([`Value`],
//! [`ColumnSpec`]), the memcomparable key encoding ([`key`]), and two
//! backends:
//!
//! - [`sql::SqlBackend`]: the engine *is* the shadow table; writers send
//!   batched multi-row INSERTs on their own connections. No local state.
//! - [`local::LocalBackend`]: one RocksDB per engine under `sort_dir`, keyed
//!   by the new table's key; import loads key ranges in parallel with
//!   `LOAD DATA LOCAL INFILE` fed from memory, in key order.
//!
//! **Leaves to others:** which rows to copy, chunking, reading the source,
//! checkpoints, the change stream and verification all belong to the engine
//! crate. This crate knows nothing of binlogs or chunks; it writes what it is
//! given, refuses duplicates, and says what is durable.
//!
//! **Workflow** (see [`Backend`] for every guarantee):
//!
//! ```text
//! EngineManager::open_engine(cfg, table, id) ─► OpenedEngine
//!     OpenedEngine::local_writer() × N ─► append_rows ... ─► close ─► ChunkFlushStatus
//!     OpenedEngine::flush()            (now every closed chunk is durable: checkpoint it)
//! OpenedEngine::close() ─► ClosedEngine ─► import(split size, split keys) ─► cleanup()
//! resume:  EngineManager::unsafe_close_engine(cfg, table, id) ─► ClosedEngine
//! ```
//!
//! **Writing SQL:** every SQL write into a target, by a backend or by the
//! engine crate's own writers (server-side copy, change applier, import
//! regions), goes through [`write`]: one session setup, one statement
//! builder under a byte cap, one reading of duplicates by error code.
//!
//! **Sessions:** every connection this crate writes on runs
//! [`write::SESSION_SETUP`] (binary strings, `time_zone = '+00:00'`, strict
//! mode allowing zero dates, `NO_AUTO_VALUE_ON_ZERO`). Readers feeding it
//! must read with the same `SET NAMES binary` and time zone, and read FLOAT
//! columns as `CAST(col AS DOUBLE)` to keep them bit-exact (see [`value`]).
//! UTC keeps TIMESTAMPs exact; where the server's own ALTER would convert in
//! its time zone (TIMESTAMP on one side only), the column's spec carries a
//! [`ZoneShift`] and the server converts each value explicitly.
//!
//! **Errors:** one [`BackendError`]; duplicates are
//! [`BackendError::DuplicateDetected`] with the key and index named.

mod engine;
mod error;
pub mod key;
pub mod load_data;
pub mod local;
pub mod retry;
pub mod sql;
pub mod value;
pub mod write;

pub use engine::{
    engine_uuid, quote_ident, Backend, ChunkFlushStatus, ClosedEngine, EngineClaim, EngineConfig,
    EngineManager, EngineWriter, ImportStats, LocalEngineConfig, LocalWriterConfig, OpenedEngine,
    TargetTable,
};
pub use error::{
    is_data_error_code, is_lock_conflict, parse_duplicate_message, refuses_value, BackendError,
};
pub use key::{decode_key, encode_key, KeyError};
pub use load_data::LoadData;
pub use local::{decode_row, encode_row, ImportPace, LocalBackend, LocalBackendConfig, Pace};
pub use retry::{query_retrying_lock_conflicts, RetryOn, RetryPolicy};
pub use sql::{SqlBackend, SqlBackendConfig};
pub use value::{quote_str, ColumnKind, ColumnSpec, Row, Value, ValueError, ZoneShift};

/// Re-exported so implementors of [`Backend`] and [`EngineWriter`] outside
/// this crate use the same macro.
pub use async_trait::async_trait;
