//! FileStore: round trips, atomic replacement, concurrent writers, refusals.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wraith_checkpoints::{
    CheckpointError, CheckpointStore, ChunkCheckpoint, ChunkStatus, EngineCheckpoint, FileStore,
    SourceIdentity, TableCheckpoint, TableStage, TaskCheckpoint, FORMAT_VERSION,
};

fn checkpoint(rows: u64) -> TaskCheckpoint {
    let mut cp = TaskCheckpoint::new(
        "0.1.0",
        "backend=local",
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let mut t = TableCheckpoint::new(SourceIdentity::named("db", "t"), "fp", "ADD COLUMN c INT");
    t.advance(TableStage::Copying).unwrap();
    let mut e = EngineCheckpoint::new(uuid::Uuid::new_v4(), 0);
    let mut c = ChunkCheckpoint::new(0, None, Some(vec![0x80, 1]));
    c.advance(ChunkStatus::Flushed).unwrap();
    c.rows = rows;
    e.chunks.push(c);
    t.engines.push(e);
    t.rows_copied = rows;
    cp.tables.push(t);
    cp
}

fn temp_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn save_load_remove_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wraith.checkpoint");
    let store = FileStore::new(&path);
    assert_eq!(store.describe(), format!("file {}", path.display()));
    assert!(store.load("db.t").await.unwrap().is_none());

    let cp = checkpoint(10);
    store.save("db.t", &cp).await.unwrap();
    assert_eq!(store.load("db.t").await.unwrap().unwrap(), cp);
    assert!(store.load("db.other").await.unwrap().is_none());

    // The file is a readable JSON map of keys.
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["db.t"]["format_version"], FORMAT_VERSION);
    assert!(text.contains("\n  \"db.t\": {"), "pretty-printed: {text}");

    let mut newer = cp.clone();
    newer.tables[0].rows_copied = 20;
    newer.touch(SystemTime::now());
    store.save("db.t", &newer).await.unwrap();
    assert_eq!(store.load("db.t").await.unwrap().unwrap(), newer);

    store.remove("db.t").await.unwrap();
    assert!(store.load("db.t").await.unwrap().is_none());
    assert!(!path.exists(), "the last key's removal removes the file");
    store.remove("db.t").await.unwrap();
    assert!(temp_files(dir.path()).is_empty());

    // Keys are checked.
    let err = store.save("", &cp).await.unwrap_err();
    assert!(matches!(err, CheckpointError::InvalidKey { .. }), "{err}");
    let err = store.load(&"k".repeat(300)).await.unwrap_err();
    assert!(err.to_string().contains("longer than 255"), "{err}");
}

#[tokio::test]
async fn a_crash_between_write_and_rename_leaves_the_old_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let store = FileStore::new(&path);
    let old = checkpoint(10);
    store.save("db.t", &old).await.unwrap();

    // What a writer killed before its rename leaves: a temp file, complete
    // or cut short, beside the real one.
    let mut newer = old.clone();
    newer.tables[0].rows_copied = 99;
    let full = serde_json::to_vec(&serde_json::json!({ "db.t": newer })).unwrap();
    std::fs::write(dir.path().join(".cp.json.tmp-4242-0"), &full).unwrap();
    std::fs::write(
        dir.path().join(".cp.json.tmp-4242-1"),
        &full[..full.len() / 2],
    )
    .unwrap();

    // The old checkpoint is what a resumed run reads.
    assert_eq!(store.load("db.t").await.unwrap().unwrap(), old);
    assert_eq!(temp_files(dir.path()).len(), 2);

    // The next save succeeds and clears the strays.
    store.save("db.t", &newer).await.unwrap();
    assert_eq!(store.load("db.t").await.unwrap().unwrap(), newer);
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saves_of_different_keys_keep_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.checkpoint");
    let mut handles = Vec::new();
    for key in 0..16u64 {
        // Separate store values on the same file, as separate processes would have.
        let store = Arc::new(FileStore::new(&path));
        handles.push(tokio::spawn(async move {
            for round in 0..10u64 {
                store
                    .save(&format!("db.t{key}"), &checkpoint(key * 1000 + round))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let store = FileStore::new(&path);
    for key in 0..16u64 {
        let cp = store.load(&format!("db.t{key}")).await.unwrap().unwrap();
        assert_eq!(cp.tables[0].rows_copied, key * 1000 + 9, "key {key}");
    }
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    std::fs::write(&path, b"{ not json").unwrap();
    let store = FileStore::new(&path);
    let err = store.load("db.t").await.unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("--fresh"), "{err}");
    let err = store.save("db.t", &checkpoint(1)).await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::CouldNotWriteCheckpoint { .. }),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"{ not json");
}

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let store = FileStore::new(&path);
    let mut v = serde_json::to_value(checkpoint(1)).unwrap();
    v["format_version"] = (FORMAT_VERSION + 1).into();
    v["tool_version"] = "2.0.0".into();
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({ "db.t": v })).unwrap(),
    )
    .unwrap();
    let err = store.load("db.t").await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsupportedFormat { found, .. } if found == u64::from(FORMAT_VERSION) + 1),
        "{err}"
    );
    assert!(err.to_string().contains("written by wraith 2.0.0"), "{err}");
}

#[tokio::test]
async fn an_unwritable_place_gives_could_not_write_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that is a file: no user, not even root, can write below it.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let store: Box<dyn CheckpointStore> = Box::new(FileStore::new(blocker.join("cp.json")));
    let err = store.save("db.t", &checkpoint(1)).await.unwrap_err();
    match &err {
        CheckpointError::CouldNotWriteCheckpoint { store: s, .. } => {
            assert!(s.starts_with("file "), "{s}")
        }
        other => panic!("expected CouldNotWriteCheckpoint, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("could not write the checkpoint to file "),
        "{msg}"
    );
    assert!(msg.contains("the run stops here"), "{msg}");
}
