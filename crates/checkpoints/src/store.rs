//! The store trait and what every store shares: key checks, encoding, and
//! the format check on load.

use async_trait::async_trait;
use serde::de::Error as _;

use crate::error::{CheckpointError, StoreFailure};
use crate::model::{TaskCheckpoint, FORMAT_VERSION, MIN_FORMAT_VERSION};

/// Where checkpoints live. One checkpoint per job key (the job's
/// `schema.table`, say); implementations are safe to share across tasks.
///
/// Contract:
/// - [`save`](Self::save) is atomic: after a crash at any instant, `load`
///   returns either the previous checkpoint or the new one, never a mix.
///   Any failure is [`CheckpointError::CouldNotWriteCheckpoint`], and the
///   previous checkpoint is still there.
/// - [`load`](Self::load) returns `None` when there is no checkpoint for the
///   key, refuses a checkpoint of a newer format
///   ([`CheckpointError::UnsupportedFormat`]) and never creates anything.
/// - [`remove`](Self::remove) of a missing key is not an error.
/// - The checkpoint is stored as given: set its `updated_at` with
///   [`TaskCheckpoint::touch`] before saving.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint saved under `key`, if any.
    async fn load(&self, key: &str) -> Result<Option<TaskCheckpoint>, CheckpointError>;

    /// Replaces the checkpoint under `key`, atomically.
    async fn save(&self, key: &str, cp: &TaskCheckpoint) -> Result<(), CheckpointError>;

    /// Deletes the checkpoint under `key`.
    async fn remove(&self, key: &str) -> Result<(), CheckpointError>;

    /// The store for messages: `file /path/to/wraith.checkpoint` or
    /// ``table `db`.`_wraith_checkpoint` ``.
    fn describe(&self) -> String;
}

/// The longest key the stores accept (the table store's `job` column).
pub const MAX_KEY_LEN: usize = 255;

pub(crate) fn check_key(store: &dyn CheckpointStore, key: &str) -> Result<(), CheckpointError> {
    let reason = if key.is_empty() {
        "it is empty".to_string()
    } else if key.chars().count() > MAX_KEY_LEN {
        format!("it is longer than {MAX_KEY_LEN} characters")
    } else if key.chars().any(char::is_control) {
        "it contains control characters".to_string()
    } else {
        return Ok(());
    };
    Err(CheckpointError::InvalidKey {
        store: store.describe(),
        key: key.to_string(),
        reason,
    })
}

pub(crate) fn encode(cp: &TaskCheckpoint) -> Result<serde_json::Value, StoreFailure> {
    serde_json::to_value(cp).map_err(StoreFailure::Encode)
}

/// Checks the format version of a stored checkpoint, then decodes it.
pub(crate) fn decode(
    store: &str,
    key: &str,
    value: serde_json::Value,
) -> Result<TaskCheckpoint, CheckpointError> {
    let corrupt = |source| CheckpointError::Corrupt {
        store: store.to_string(),
        key: key.to_string(),
        source,
    };
    let found = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            corrupt(serde_json::Error::custom(
                "it has no numeric format_version: it is not a wraith checkpoint",
            ))
        })?;
    check_format(store, key, found, || {
        value
            .get("tool_version")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    })?;
    serde_json::from_value(value).map_err(corrupt)
}

/// Refuses formats this crate cannot read.
pub(crate) fn check_format(
    store: &str,
    key: &str,
    found: u64,
    tool_version: impl FnOnce() -> Option<String>,
) -> Result<(), CheckpointError> {
    if found > u64::from(FORMAT_VERSION) || found < u64::from(MIN_FORMAT_VERSION) {
        return Err(CheckpointError::UnsupportedFormat {
            store: store.to_string(),
            key: key.to_string(),
            found,
            min: MIN_FORMAT_VERSION,
            supported: FORMAT_VERSION,
            tool_version: tool_version(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn a_newer_format_is_refused_with_its_writer() {
        let cp = TaskCheckpoint::new("9.9.9", "fp", SystemTime::now());
        let mut v = encode(&cp).unwrap();
        v["format_version"] = (FORMAT_VERSION + 1).into();
        let err = decode("file /x", "db.t", v).unwrap_err();
        assert!(
            matches!(err, CheckpointError::UnsupportedFormat { found, .. } if found == u64::from(FORMAT_VERSION) + 1)
        );
        let msg = err.to_string();
        assert!(
            msg.contains("format version 2 (written by wraith 9.9.9)"),
            "{msg}"
        );
        assert!(msg.contains("wraith run --fresh CONFIG"), "{msg}");
    }

    #[test]
    fn the_current_format_decodes_and_garbage_is_corrupt() {
        let cp = TaskCheckpoint::new("0.1.0", "fp", SystemTime::now());
        assert_eq!(decode("s", "k", encode(&cp).unwrap()).unwrap(), cp);
        let err = decode("s", "k", serde_json::json!({"hello": 1})).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("no numeric format_version"),
            "{err}"
        );
        let mut v = encode(&cp).unwrap();
        v["tables"] = "nope".into();
        assert!(matches!(
            decode("s", "k", v).unwrap_err(),
            CheckpointError::Corrupt { .. }
        ));
        let mut v = encode(&cp).unwrap();
        v["format_version"] = 0.into();
        assert!(matches!(
            decode("s", "k", v).unwrap_err(),
            CheckpointError::UnsupportedFormat { found: 0, .. }
        ));
    }
}
