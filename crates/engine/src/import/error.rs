//! Why an import stops, and whether a rerun gets further
//! ([`ImportError::resumable`], decided by variant and server code).

use std::path::{Path, PathBuf};

use wraith_backend::BackendError;
use wraith_checkpoints::CheckpointError;

use crate::server::DbError;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Malformed input: never skipped.
    #[error("{file}: byte offset {offset}, line {line}: {message}")]
    Parse {
        file: String,
        offset: u64,
        line: u64,
        message: String,
    },
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The dump and the database do not fit together.
    #[error("{0}")]
    Plan(String),
    /// Refused before anything was written (non-empty table, changed checkpoint).
    #[error("{0}")]
    Refused(String),
    #[error("duplicate key {key} for index {index} in {table} (rows of {file}); set [import] on_duplicate = \"replace\" or \"ignore\" to keep one of them")]
    Duplicate {
        table: String,
        key: String,
        index: String,
        file: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("an import worker failed: {0}")]
    Worker(String),
    #[error("interrupted")]
    Interrupted,
}

impl ImportError {
    pub(super) fn io(context: &str, path: &Path, source: std::io::Error) -> ImportError {
        ImportError::Io {
            context: context.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether nothing was changed because the job was refused.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ImportError::Refused(_))
    }

    /// Whether a rerun with the same config resumes from the checkpoint and
    /// can get further: decided by the variant (and the server's error code),
    /// never by the message. Bad input (a malformed or refused value, a
    /// duplicate key), a dump that does not fit the database, a refusal and
    /// a failed verification meet the same wall again; a lost connection, a
    /// file or checkpoint store that failed, or a stop do not.
    pub fn resumable(&self) -> bool {
        match self {
            ImportError::Parse { .. }
            | ImportError::Plan(_)
            | ImportError::Refused(_)
            | ImportError::Duplicate { .. }
            | ImportError::Verify(_) => false,
            ImportError::Db(e) => !wraith_backend::refuses_value(&e.error),
            ImportError::Backend(e) => !e.is_duplicate() && !e.is_data_error(),
            ImportError::Io { .. }
            | ImportError::Checkpoint(_)
            | ImportError::Worker(_)
            | ImportError::Interrupted => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "any text: the decision does not read it".into(),
            state: "HY000".into(),
        })
    }

    fn db(code: u16) -> ImportError {
        ImportError::Db(DbError {
            context: "writing".into(),
            error: server(code),
        })
    }

    #[test]
    fn resumability_follows_the_variant_and_the_code() {
        assert!(db(2013).resumable());
        assert!(db(1213).resumable());
        assert!(!db(1406).resumable());
        assert!(!ImportError::Refused("no".into()).resumable());
        assert!(!ImportError::Verify("differs".into()).resumable());
        assert!(ImportError::Interrupted.resumable());
        let duplicate = BackendError::DuplicateDetected {
            table: "d.t".into(),
            key: "'1'".into(),
            index: "PRIMARY".into(),
        };
        assert!(!ImportError::Backend(duplicate).resumable());
        let lost = BackendError::Sql {
            context: "loading".into(),
            table: "d.t".into(),
            source: server(2013),
        };
        assert!(ImportError::Backend(lost).resumable());
        let parse = ImportError::Parse {
            file: "t.csv".into(),
            offset: 3,
            line: 1,
            message: "bad".into(),
        };
        assert!(!parse.resumable());
    }
}
