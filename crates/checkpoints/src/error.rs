//! The errors of the stores and of the model's transitions. The errors of
//! validation are [`crate::InvalidCheckpoint`].

/// What went wrong underneath a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sql(#[from] mysql_async::Error),
    #[error("encoding the checkpoint as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The store holds something that is not a checkpoint file; it is left
    /// as it is rather than overwritten.
    #[error("{context}: {source}")]
    Corrupt {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the store's worker task failed: {0}")]
    Task(String),
    /// A table of the checkpoint table's name that is not one; it is left
    /// as it is rather than altered.
    #[error(
        "{table} exists but is not a wraith checkpoint table (it lacks the columns {}); rename \
         or drop it, the name is wraith's",
        missing.join(", ")
    )]
    UnexpectedTable { table: String, missing: Vec<String> },
}

impl StoreFailure {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> StoreFailure {
        StoreFailure::Io {
            context: context.into(),
            source,
        }
    }
}

/// Errors of [`crate::CheckpointStore`] operations.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Saving failed: the engine stops the run (Spirit's
    /// `ErrCouldNotWriteCheckpoint`), since going on would do work a kill
    /// could lose without the operator knowing.
    #[error(
        "could not write the checkpoint to {store}: {source}; the run stops here so that no \
         progress goes unrecorded. Make the checkpoint store writable (privileges INSERT and \
         UPDATE on the checkpoint table, or a writable directory for a file) and rerun: the run \
         resumes from the last checkpoint written"
    )]
    CouldNotWriteCheckpoint {
        store: String,
        #[source]
        source: StoreFailure,
    },
    #[error("could not read the checkpoint from {store}: {source}")]
    CouldNotReadCheckpoint {
        store: String,
        #[source]
        source: StoreFailure,
    },
    #[error("could not remove the checkpoint {key:?} from {store}: {source}")]
    CouldNotRemoveCheckpoint {
        store: String,
        key: String,
        #[source]
        source: StoreFailure,
    },
    #[error(
        "the checkpoint {key:?} in {store} cannot be read: {source}. Fix or remove it, or run \
         `wraith run --fresh CONFIG` to drop the old shadow table, engines and checkpoint and \
         start over"
    )]
    Corrupt {
        store: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the checkpoint {key:?} in {store} has format version {found}{}, and this wraith reads \
         versions {min} to {supported}. Resume it with the wraith that wrote it, or run \
         `wraith run --fresh CONFIG` to drop the old shadow table, engines and checkpoint and \
         start over",
        tool_version.as_ref().map(|v| format!(" (written by wraith {v})")).unwrap_or_default()
    )]
    UnsupportedFormat {
        store: String,
        key: String,
        found: u64,
        min: u32,
        supported: u32,
        tool_version: Option<String>,
    },
    #[error("{key:?} is not a valid checkpoint key for {store}: {reason}")]
    InvalidKey {
        store: String,
        key: String,
        reason: String,
    },
}

/// A status change the model refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{what} cannot move back from {from} to {to}: statuses only move forward")]
    Backward {
        what: String,
        from: String,
        to: String,
    },
    #[error("{what} failed while {stage} ({message}); retry() it before advancing")]
    Failed {
        what: String,
        stage: String,
        message: String,
    },
    #[error("{what} is not failed (it is {status}): there is nothing to retry")]
    NotFailed { what: String, status: String },
    #[error("{what} is done: it cannot fail any more")]
    Finished { what: String },
}
