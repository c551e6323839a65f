//! The one error type of the backends. Every variant says what was being done
//! and on which table or engine, so the engine crate can report it as is.

use std::path::PathBuf;

use uuid::Uuid;

use crate::key::KeyError;
use crate::value::ValueError;

/// What a backend operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Two different rows have the same key in the target. Never skipped:
    /// the run must stop and name the key.
    #[error(
        "duplicate key {key} for index {index} of {table}: two different source rows map to the \
         same key of the new table; fix the data or the new key, then rerun"
    )]
    DuplicateDetected {
        /// `schema`.`table` of the target.
        table: String,
        /// The key, human-readable, e.g. `(5, 'abc')` or the server's `'5-abc'`.
        key: String,
        /// The index (or key columns) it violates.
        index: String,
    },
    /// The server refused a statement or the connection failed.
    #[error("{context} on {table}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// `schema`.`table` concerned.
        table: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// A bulk load stored something other than what was sent (the server
    /// turned an error into a warning); the load was rolled back.
    #[error(
        "loading {table} would not be exact: the server warned `{message}` (code {code}); the \
         range was rolled back"
    )]
    LoadWarning {
        /// `schema`.`table` concerned.
        table: String,
        /// The server's warning code.
        code: u32,
        /// The server's warning text.
        message: String,
    },
    /// A value could not be decoded.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A stored key could not be decoded.
    #[error("engine {engine}: {source}")]
    Key {
        /// The engine.
        engine: Uuid,
        /// What was wrong.
        #[source]
        source: KeyError,
    },
    /// A stored row could not be decoded (the engine directory is damaged or
    /// was written by an incompatible version).
    #[error("engine {engine}: corrupt row: {reason}; reset the engine and redo its chunks")]
    CorruptRow {
        /// The engine.
        engine: Uuid,
        /// What was wrong.
        reason: String,
    },
    /// RocksDB failed.
    #[error("engine {engine}: {context}: {source}")]
    Storage {
        /// The engine.
        engine: Uuid,
        /// What was being done.
        context: String,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A file operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The engine is not known to this backend, or its directory is gone.
    #[error(
        "engine {engine} not found{}: it was never opened, or its sort directory was removed; \
         reset the engine's checkpoint and redo its chunks",
        dir.as_ref().map(|d| format!(" at {}", d.display())).unwrap_or_default()
    )]
    EngineNotFound {
        /// The engine.
        engine: Uuid,
        /// Where it was looked for.
        dir: Option<PathBuf>,
    },
    /// The engine is in the wrong state for the operation (for example a
    /// writer asked for after close).
    #[error("engine {engine}: {message}")]
    EngineState {
        /// The engine.
        engine: Uuid,
        /// What was wrong.
        message: String,
    },
    /// The caller passed something that cannot work.
    #[error("{message}")]
    InvalidInput {
        /// What was wrong and how to fix it.
        message: String,
    },
    /// The backend cannot do this at all.
    #[error("the {backend} backend cannot {operation}: {hint}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A background task panicked or was cancelled.
    #[error("{context}: background task failed: {message}")]
    Task {
        /// What was being done.
        context: String,
        /// The panic or cancellation.
        message: String,
    },
}

/// A deadlock (1213) or lock wait timeout (1205): what failed was rolled back
/// and may be tried again. Writers of the shadow table (copy, change applier,
/// import) meet on unique secondary indexes and their gaps.
pub fn is_lock_conflict(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(se) if se.code == 1213 || se.code == 1205)
}

impl BackendError {
    /// See [`is_lock_conflict`].
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self, BackendError::Sql { source, .. } if is_lock_conflict(source))
    }

    pub(crate) fn sql(context: impl Into<String>, table: &str, source: mysql_async::Error) -> Self {
        BackendError::Sql {
            context: context.into(),
            table: table.to_string(),
            source,
        }
    }

    pub(crate) fn storage(
        engine: Uuid,
        context: impl Into<String>,
        source: rocksdb::Error,
    ) -> Self {
        BackendError::Storage {
            engine,
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BackendError::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn task(context: impl Into<String>, err: tokio::task::JoinError) -> Self {
        BackendError::Task {
            context: context.into(),
            message: err.to_string(),
        }
    }

    /// Whether this is a [`BackendError::DuplicateDetected`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, BackendError::DuplicateDetected { .. })
    }

    /// Whether the server refused a value (see [`is_data_error_code`]): the
    /// same rows would be refused again, so retrying or resuming is useless.
    /// A bulk load that stored something other than what was sent counts
    /// too, whatever its warning.
    pub fn is_data_error(&self) -> bool {
        self.refused_value().is_some()
            || matches!(self, BackendError::LoadWarning { code, .. } if *code != 0)
    }

    /// The server's code and text when it refused a value of a row (an
    /// error, or a bulk load's warning, with a [`is_data_error_code`]).
    pub fn refused_value(&self) -> Option<(u32, &str)> {
        match self {
            BackendError::Sql {
                source: mysql_async::Error::Server(e),
                ..
            } if is_data_error_code(e.code) => Some((u32::from(e.code), &e.message)),
            BackendError::LoadWarning { code, message, .. }
                if u16::try_from(*code).is_ok_and(is_data_error_code) =>
            {
                Some((*code, message))
            }
            _ => None,
        }
    }
}

/// Server errors (and `LOAD DATA` warnings) that refuse a value of a row:
/// the data, not the moment, is at fault, so the same rows are refused
/// again on a retry or a resume. The one list for every writer (the copy,
/// the change applier, the import, which reports them at the row's file
/// and line): 1048 NULL into NOT NULL, 1138 invalid use of NULL, 1263 the
/// same in a load, 1264 out of range, 1265 truncated, 1292 bad date or
/// time, 1366 bad number or string, 1367 illegal value, 1406 too long, 1411
/// bad value for a function, 1452 foreign key, 1690 out of range in an
/// expression, 3140 bad JSON, 3819 and 4025 CHECK constraint.
pub fn is_data_error_code(code: u16) -> bool {
    matches!(
        code,
        1048 | 1138
            | 1263
            | 1264
            | 1265
            | 1292
            | 1366
            | 1367
            | 1406
            | 1411
            | 1452
            | 1690
            | 3140
            | 3819
            | 4025
    )
}

/// [`is_data_error_code`] of a driver error: the server refused a value.
pub fn refuses_value(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(se) if is_data_error_code(se.code))
}

/// Parses MySQL error 1062 / warning 1062 text, `Duplicate entry 'x' for key
/// 'y'`, into (key, index). The entry may itself contain quotes, so the key is
/// everything between the first `'` and the last `' for key '`.
pub fn parse_duplicate_message(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("Duplicate entry '")?;
    let sep = rest.rfind("' for key ")?;
    let key = &rest[..sep];
    let index = rest[sep + "' for key ".len()..]
        .trim()
        .trim_matches(|c| c == '\'' || c == '`');
    Some((format!("'{key}'"), index.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_duplicate_messages() {
        assert_eq!(
            parse_duplicate_message("Duplicate entry '5-abc' for key 'PRIMARY'"),
            Some(("'5-abc'".into(), "PRIMARY".into()))
        );
        assert_eq!(
            parse_duplicate_message("Duplicate entry 'it's' for key 't.uk_name'"),
            Some(("'it's'".into(), "t.uk_name".into()))
        );
        assert_eq!(parse_duplicate_message("Deadlock found"), None);
    }

    fn server(code: u16, message: &str) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: message.into(),
            state: "HY000".into(),
        })
    }

    #[test]
    fn refused_values_are_known_by_code() {
        let e = BackendError::sql("inserting", "d.t", server(1406, "Data too long at row 2"));
        assert_eq!(e.refused_value(), Some((1406, "Data too long at row 2")));
        assert!(e.is_data_error());
        let warned = BackendError::LoadWarning {
            table: "d.t".into(),
            code: 1452,
            message: "foreign key".into(),
        };
        assert_eq!(warned.refused_value(), Some((1452, "foreign key")));
        // A load that stored less for another reason is still the data's fault.
        let short = BackendError::LoadWarning {
            table: "d.t".into(),
            code: 1261,
            message: "row 1 doesn't contain data for all columns".into(),
        };
        assert!(short.refused_value().is_none() && short.is_data_error());
        let lock = BackendError::sql("inserting", "d.t", server(1213, "Deadlock found"));
        assert!(lock.refused_value().is_none() && !lock.is_data_error());
        assert!(lock.is_lock_conflict());
        assert!(refuses_value(&server(3140, "Invalid JSON text")));
        assert!(!refuses_value(&server(1062, "Duplicate entry")));
    }
}
