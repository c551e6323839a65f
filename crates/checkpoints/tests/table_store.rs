//! TableStore against a real MariaDB: one scratch server per test binary, a
//! schema per test.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool};
use wraith_checkpoints::{
    CheckpointError, CheckpointStore, SourceIdentity, StoreFailure, TableCheckpoint, TableStage,
    TableStore, TaskCheckpoint, CHECKPOINT_COLUMNS, CHECKPOINT_TABLE, FORMAT_VERSION,
};
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};

static SERVER: OnceLock<ScratchServer> = OnceLock::new();

fn server() -> &'static ScratchServer {
    SERVER.get_or_init(|| ScratchServer::start(ScratchOptions::default()).expect("scratch server"))
}

fn opts(db: Option<&str>) -> OptsBuilder {
    server().opts(db)
}

async fn root(db: Option<&str>) -> Conn {
    Conn::new(Opts::from(opts(db))).await.expect("connect")
}

/// A fresh, empty schema.
async fn schema(name: &str) {
    root(None)
        .await
        .query_drop(format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
        ))
        .await
        .expect("create schema");
}

fn root_store(db: &str) -> (Pool, TableStore) {
    let pool = Pool::new(Opts::from(opts(Some(db))));
    (pool.clone(), TableStore::new(pool, db))
}

fn checkpoint(rows: u64) -> TaskCheckpoint {
    let mut cp = TaskCheckpoint::new(
        "0.1.0",
        "backend=sql",
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let mut t = TableCheckpoint::new(SourceIdentity::named("app", "t"), "fp", "ADD INDEX (b)");
    t.advance(TableStage::Copying).unwrap();
    t.rows_copied = rows;
    t.change_stream.high_watermark = Some(vec![0x80, 0, 1]);
    cp.tables.push(t);
    cp
}

async fn table_exists(db: &str) -> bool {
    let n: Option<u64> = root(None)
        .await
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, CHECKPOINT_TABLE),
        )
        .await
        .unwrap();
    n == Some(1)
}

#[tokio::test]
async fn save_load_remove_round_trip_with_explicit_columns() {
    let db = "cp_round_trip";
    schema(db).await;
    let (pool, store) = root_store(db);
    assert_eq!(
        store.describe(),
        "table `cp_round_trip`.`_wraith_checkpoint`"
    );

    // Loading and removing never create the table.
    assert!(store.load("app.t").await.unwrap().is_none());
    store.remove("app.t").await.unwrap();
    assert!(!table_exists(db).await);

    let cp = checkpoint(5);
    store.save("app.t", &cp).await.unwrap();
    assert!(table_exists(db).await);
    assert_eq!(store.load("app.t").await.unwrap().unwrap(), cp);

    // The columns are the documented ones, with their types.
    let mut c = root(Some(db)).await;
    let columns: Vec<(String, String)> = c
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (db, CHECKPOINT_TABLE),
        )
        .await
        .unwrap();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, CHECKPOINT_COLUMNS);
    let types: Vec<&str> = columns.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "varchar(255)",
            "int(10) unsigned",
            "varchar(64)",
            "char(36)",
            "varchar(64)",
            "longtext",
            "timestamp(6)"
        ]
    );
    let pk: Vec<String> = c
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'",
            (db, CHECKPOINT_TABLE),
        )
        .await
        .unwrap();
    assert_eq!(pk, ["job"]);

    // The columns repeat what the body says.
    let row: (String, u32, String, String, String) = c
        .query_first(
            "SELECT job, format_version, tool_version, migration_id, status FROM _wraith_checkpoint",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row,
        (
            "app.t".to_string(),
            FORMAT_VERSION,
            "0.1.0".to_string(),
            cp.migration_id.to_string(),
            "copying".to_string()
        )
    );

    // An update replaces the row, and a second key gets its own row.
    let mut newer = cp.clone();
    newer.tables[0].rows_copied = 500;
    newer.tables[0].advance(TableStage::CopyDone).unwrap();
    store.save("app.t", &newer).await.unwrap();
    store.save("app.u", &checkpoint(1)).await.unwrap();
    assert_eq!(store.load("app.t").await.unwrap().unwrap(), newer);
    let rows: Vec<(String, String)> = c
        .query("SELECT job, status FROM _wraith_checkpoint ORDER BY job")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            ("app.t".to_string(), "copy_done".to_string()),
            ("app.u".to_string(), "copying".to_string())
        ]
    );

    // Aging a checkpoint by editing its body, as the docs say.
    c.query_drop("UPDATE _wraith_checkpoint SET body = JSON_SET(body, '$.updated_at', 1000) WHERE job = 'app.t'")
        .await
        .unwrap();
    assert_eq!(store.load("app.t").await.unwrap().unwrap().updated_at, 1000);

    store.remove("app.t").await.unwrap();
    assert!(store.load("app.t").await.unwrap().is_none());
    assert!(store.load("app.u").await.unwrap().is_some());

    // A table dropped behind the store's back is recreated by the next save.
    c.query_drop("DROP TABLE _wraith_checkpoint").await.unwrap();
    store.save("app.t", &cp).await.unwrap();
    assert_eq!(store.load("app.t").await.unwrap().unwrap(), cp);
    drop(c);
    pool.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_read_only_checkpoint_table_gives_could_not_write_checkpoint() {
    let db = "cp_read_only";
    schema(db).await;
    let (pool, store) = root_store(db);
    let saved = checkpoint(7);
    store.save("app.t", &saved).await.unwrap();

    // A user that may read and create but not INSERT or UPDATE.
    let mut c = root(None).await;
    c.query_drop(format!(
        "DROP USER IF EXISTS 'cp_ro'@'127.0.0.1'; \
         CREATE USER 'cp_ro'@'127.0.0.1' IDENTIFIED BY 'pw'; \
         GRANT ALL PRIVILEGES ON `{db}`.* TO 'cp_ro'@'127.0.0.1'; \
         REVOKE INSERT, UPDATE ON `{db}`.* FROM 'cp_ro'@'127.0.0.1'"
    ))
    .await
    .unwrap();
    let ro_pool = Pool::new(Opts::from(
        opts(Some(db)).user(Some("cp_ro")).pass(Some("pw")),
    ));
    let ro = TableStore::new(ro_pool.clone(), db);

    // Reading works; writing fails with the typed error and names the store.
    assert_eq!(ro.load("app.t").await.unwrap().unwrap(), saved);
    let mut newer = saved.clone();
    newer.tables[0].rows_copied = 70;
    let err = ro.save("app.t", &newer).await.unwrap_err();
    match &err {
        CheckpointError::CouldNotWriteCheckpoint { store, source } => {
            assert_eq!(store, "table `cp_read_only`.`_wraith_checkpoint`");
            assert!(
                source.to_string().contains("INSERT, UPDATE command denied"),
                "{source}"
            );
        }
        other => panic!("expected CouldNotWriteCheckpoint, got {other:?}"),
    }
    assert!(err.to_string().contains("the run stops here"), "{err}");
    // A new key fails the same way.
    assert!(matches!(
        ro.save("app.u", &newer).await.unwrap_err(),
        CheckpointError::CouldNotWriteCheckpoint { .. }
    ));

    // Nothing was lost: the previous checkpoint is intact.
    assert_eq!(store.load("app.t").await.unwrap().unwrap(), saved);
    assert!(store.load("app.u").await.unwrap().is_none());

    // Without the table and without CREATE, the first save fails the same way.
    c.query_drop(format!(
        "DROP TABLE `{db}`.`_wraith_checkpoint`; \
         REVOKE CREATE ON `{db}`.* FROM 'cp_ro'@'127.0.0.1'"
    ))
    .await
    .unwrap();
    // Database-level privileges are cached per connection: connect anew.
    ro_pool.disconnect().await.unwrap();
    let ro_pool = Pool::new(Opts::from(
        opts(Some(db)).user(Some("cp_ro")).pass(Some("pw")),
    ));
    let ro_fresh = TableStore::new(ro_pool.clone(), db);
    let err = ro_fresh.save("app.t", &newer).await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::CouldNotWriteCheckpoint { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("CREATE command denied"), "{err}");

    ro_pool.disconnect().await.unwrap();
    pool.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_newer_format_in_the_table_is_refused() {
    let db = "cp_newer_format";
    schema(db).await;
    let (pool, store) = root_store(db);
    store.save("app.t", &checkpoint(1)).await.unwrap();
    root(Some(db))
        .await
        .query_drop(format!(
            "UPDATE _wraith_checkpoint SET format_version = {}, tool_version = '3.0.0'",
            FORMAT_VERSION + 1
        ))
        .await
        .unwrap();
    let err = store.load("app.t").await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsupportedFormat { found, .. } if found == u64::from(FORMAT_VERSION) + 1),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("written by wraith 3.0.0"), "{msg}");
    assert!(msg.contains("wraith run --fresh CONFIG"), "{msg}");
    pool.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_foreign_table_of_that_name_is_refused_not_altered() {
    let db = "cp_foreign_table";
    schema(db).await;
    root(Some(db))
        .await
        .query_drop("CREATE TABLE _wraith_checkpoint (job VARCHAR(10) PRIMARY KEY, x INT)")
        .await
        .unwrap();
    let (pool, store) = root_store(db);
    let err = store.save("app.t", &checkpoint(1)).await.unwrap_err();
    match &err {
        CheckpointError::CouldNotWriteCheckpoint {
            source: StoreFailure::UnexpectedTable { missing, .. },
            ..
        } => {
            assert_eq!(
                missing,
                &[
                    "format_version",
                    "tool_version",
                    "migration_id",
                    "status",
                    "body",
                    "updated_at"
                ]
            )
        }
        other => panic!("expected UnexpectedTable, got {other:?}"),
    }
    assert!(
        err.to_string().contains("is not a wraith checkpoint table"),
        "{err}"
    );
    // The foreign table is untouched.
    let n: Option<u64> = root(Some(db))
        .await
        .query_first("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_wraith_checkpoint'")
        .await
        .unwrap();
    assert_eq!(n, Some(2));
    pool.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saves_of_different_keys() {
    let db = "cp_concurrent";
    schema(db).await;
    let pool = Pool::new(Opts::from(opts(Some(db))));
    let mut handles = Vec::new();
    for key in 0..8u64 {
        // Each with its own store: all race to create the table.
        let store = TableStore::new(pool.clone(), db);
        handles.push(tokio::spawn(async move {
            for round in 0..5u64 {
                store
                    .save(&format!("app.t{key}"), &checkpoint(key * 100 + round))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let store = TableStore::new(pool.clone(), db);
    for key in 0..8u64 {
        let cp = store.load(&format!("app.t{key}")).await.unwrap().unwrap();
        assert_eq!(cp.tables[0].rows_copied, key * 100 + 4);
    }
    pool.disconnect().await.unwrap();
}
