//! The change stream against a real scratch MariaDB: every column type
//! decodes to exactly what the copy reads, other tables are skipped,
//! transactions and rollbacks, DDL, a killed binlog connection, tokens, one
//! stream following several tables.

mod binlog_common;

use std::time::{Duration, Instant};

use binlog_common::*;
use mysql_async::prelude::Queryable;
use wraith_backend::{Row, Value};
use wraith_engine::binlog::{
    BinlogPosition, ChangeKind, ChangeStream, ChangeStreamConfig, ChangeStreamError, RowChange,
    StreamEvent,
};

const TYPES_TABLE: &str = "CREATE TABLE types (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, iu INT UNSIGNED,
  bi BIGINT, biu BIGINT UNSIGNED,
  f FLOAT, d DOUBLE, dec1 DECIMAL(65,30), dec2 DECIMAL(10,2),
  c CHAR(10), vc VARCHAR(100), t TEXT, lc VARCHAR(20) CHARACTER SET latin1,
  b BINARY(8), vb VARBINARY(20), bl BLOB,
  dt DATE, tm TIME(6), dtt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
  e ENUM('a','b','ö'), s SET('x','y','z'), bt BIT(64), bt1 BIT(1), j JSON
) DEFAULT CHARSET=utf8mb4";

const TYPES_ROWS: &str = "INSERT INTO types VALUES
 (1, -128, 0, -32768, -8388608, -2147483648, 0, -9223372036854775808, 0,
  -3.40282e38, -1.7976931348623157e308,
  '-99999999999999999999999999999999999.999999999999999999999999999999', -99999999.99,
  '', '', '', '', x'0000', x'', x'', '1000-01-01', '-838:59:59.000000',
  '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 1901, 'a', '', b'0', b'0', '{}'),
 (2, 127, 255, 32767, 8388607, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
  3.40282e38, 1.7976931348623157e308,
  '99999999999999999999999999999999999.999999999999999999999999999999', 99999999.99,
  'abc  ', 'trailing  ', 'emoji 😀 and ü', x'E9E8', x'0100000000000000', x'00FF00', x'00000000',
  '9999-12-31', '838:59:59.000000', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
  'ö', 'x,y,z', b'1111111111111111111111111111111111111111111111111111111111111111', b'1',
  '{\"k\": \"ünïcødé 😀\", \"n\": [1, 2.5, null]}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 1, 0, 0, 0, 1, 0, 1, -0.0, -0.0, '0.000000000000000000000000000001', 0.01,
  ' lead', ' ', 'x', 'ÿ', x'61', x'61', x'61', '0000-00-00', '-00:00:00.000001',
  '0000-00-00 00:00:00.000000', '2016-12-31 23:59:59.999999', 0, 'b', 'y', b'1000', b'0', '[]'),
 (5, 1, 2, 3, 4, 5, 6, 7, 8, 1.17549435e-38, 4.9406564584124654e-324, '-0.5', -0.5,
  'ab\\'c\"d', 'back\\\\slash\\nnewline\\ttab', REPEAT('long text ', 2000), 'Ä', x'DEADBEEF', x'00', x'FF',
  '2000-02-29', '00:00:00', '2000-02-29 12:34:56.5', '1999-12-31 23:59:59.000001', 2000, NULL, 'x,z',
  b'10101', b'1', '{\"a\": {\"b\": [true, false]}}')";

/// Types and widths the shared table does not reach: other fractional
/// precisions, zero and negative fractions, 2-byte lengths, latin1 labels,
/// an ENUM with more than 255 labels, narrow BITs and DECIMALs.
fn more_types_table() -> String {
    let labels: Vec<String> = (0..300).map(|i| format!("'l{i}'")).collect();
    format!(
        "CREATE TABLE more (
          id INT NOT NULL PRIMARY KEY,
          t0 TIME, t1 TIME(1), t2 TIME(2), t3 TIME(3), t4 TIME(4), t5 TIME(5),
          d0 DATETIME, d2 DATETIME(2), d3 DATETIME(3),
          s0 TIMESTAMP NULL DEFAULT NULL, s2 TIMESTAMP(2) NULL DEFAULT NULL, s4 TIMESTAMP(4) NULL DEFAULT NULL,
          n55 DECIMAL(5,5), n90 DECIMAL(9,0), n182 DECIMAL(18,2), n3010 DECIMAL(30,10),
          mu MEDIUMINT UNSIGNED, su SMALLINT UNSIGNED,
          cbig CHAR(255), vbig VARCHAR(300), bin16 BINARY(16), cl CHAR(5) CHARACTER SET latin1,
          tt TINYTEXT, mb MEDIUMBLOB, lb LONGBLOB,
          el ENUM('a','ö','ß') CHARACTER SET latin1, sl SET('ä','b') CHARACTER SET latin1,
          ebig ENUM({}), b7 BIT(7), b9 BIT(9), y YEAR
        ) DEFAULT CHARSET=utf8mb4",
        labels.join(",")
    )
}

const MORE_ROWS: &str = "INSERT INTO more VALUES
 (1, '-00:00:01', '-00:00:00.1', '-00:00:00.01', '-12:34:56.789', '-838:59:58.9999', '-00:00:00.00001',
  '2001-02-03 04:05:06', '2001-02-03 04:05:06.07', '9999-12-31 23:59:59.999',
  '2001-02-03 04:05:06', '2001-02-03 04:05:06.07', '2038-01-19 03:14:07.9999',
  0.00001, 999999999, -1234567890123456.78, -12345678901234567890.0123456789,
  16777215, 65535, REPEAT('é', 255), REPEAT('x', 300), x'0102030405060708090A0B0C0D0E0F10', 'äb',
  'tiny', REPEAT('m', 70000), x'00', 'ö', 'ä,b', 'l299', b'1111111', b'100000001', 1999),
 (2, '838:59:59', '00:00:00.1', '00:00:00.99', '00:00:00.001', '-00:00:00.0001', '838:59:58.99999',
  '0000-00-00 00:00:00', '1000-01-01 00:00:00.01', '2000-01-01 00:00:00.001',
  '0000-00-00 00:00:00', '1970-01-01 00:00:01.01', '1999-12-31 23:59:59.0001',
  -0.00001, -999999999, 0.01, 0.0000000001,
  0, 0, '', '', x'00000000000000000000000000000000', '',
  '', '', '', 'ß', '', 'l0', b'0', b'0', 0),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 120 {
        format!("{}...", &s[..120])
    } else {
        s
    }
}

/// Equal rows, or a panic naming the first differing column.
fn same_row(want: &Row, got: &Row, what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: column count");
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        assert!(
            w == g,
            "{what} (id {}): column {i} differs: copy reads {}, stream gives {}",
            id_of(want),
            short(w),
            short(g)
        );
    }
}

/// Inserts, updates (keys and values) and deletes every row of `table`, and
/// checks each image against the rows read the way the copy reads them.
async fn round_trip(db: &str, table: &str, create: &str, insert: &str, update: &str) {
    let mut c = schema(db).await;
    c.query_drop(format!("SET SESSION sql_mode = ''; {create}"))
        .await
        .expect("create");
    let from = position().await;
    let cfg = config(db, table).await;
    c.query_drop(format!("SET SESSION sql_mode = ''; {insert}"))
        .await
        .expect("insert");
    let inserted = snapshot(db, table).await;
    c.query_drop(format!("SET SESSION sql_mode = ''; {update}"))
        .await
        .expect("update");
    let updated = snapshot(db, table).await;
    c.query_drop(format!("DELETE FROM `{table}`"))
        .await
        .expect("delete");
    let end = position().await;

    let mut stream = start(from, cfg).await;
    let events = collect_until(&mut stream, &end).await;
    // Replay the changes on a model of the table: every before-image must be
    // the model's row, and the model must end as the snapshots say.
    let mut model: std::collections::BTreeMap<i64, Row> = Default::default();
    let mut phase = 0;
    for ch in changes(&events) {
        match ch.kind {
            ChangeKind::Insert => {
                assert!(ch.before.is_none());
                let after = ch.after.expect("after");
                model.insert(id_of(&after), after);
            }
            ChangeKind::Update | ChangeKind::Delete => {
                if phase == 0 {
                    let rows: Vec<Row> = model.values().cloned().collect();
                    assert_eq!(rows.len(), inserted.len(), "inserted rows");
                    for (w, g) in inserted.iter().zip(&rows) {
                        same_row(w, g, "insert");
                    }
                    phase = 1;
                }
                let before = ch.before.expect("before");
                let known = model.remove(&id_of(&before)).expect("known row");
                same_row(&known, &before, "before-image");
                if ch.kind == ChangeKind::Update {
                    let after = ch.after.expect("after");
                    model.insert(id_of(&after), after);
                } else {
                    assert!(ch.after.is_none());
                    if phase == 1 {
                        // First delete: the updates are all in.
                        let mut rows: Vec<Row> = model.values().cloned().collect();
                        rows.push(before.clone());
                        rows.sort_by_key(id_of);
                        assert_eq!(rows.len(), updated.len(), "updated rows");
                        for (w, g) in updated.iter().zip(&rows) {
                            same_row(w, g, "update after-image");
                        }
                        phase = 2;
                    }
                }
            }
        }
    }
    assert_eq!(phase, 2);
    assert!(model.is_empty(), "rows left after the deletes");
    stream.close().await;
}

#[tokio::test]
async fn every_column_type_decodes_like_the_copy_reads_it() {
    round_trip(
        "bl_types",
        "types",
        TYPES_TABLE,
        TYPES_ROWS,
        "UPDATE types SET id = id + 10; UPDATE types SET e = 'ö', s = 'y,z', vc = CONCAT(vc, '.') WHERE id = 13",
    )
    .await;
}

#[tokio::test]
async fn more_types_and_widths_decode_like_the_copy_reads_them() {
    round_trip(
        "bl_more",
        "more",
        &more_types_table(),
        MORE_ROWS,
        "UPDATE more SET id = id + 10, t2 = '-00:00:00.5', ebig = 'l256', b9 = b'111111111' WHERE id < 3; \
         UPDATE more SET y = 2155, n55 = -0.5 WHERE id = 11",
    )
    .await;
}

#[tokio::test]
async fn other_tables_are_skipped() {
    let mut c = schema("bl_skip").await;
    let mut c2 = schema("bl_skip_other").await;
    for conn in [&mut c, &mut c2] {
        conn.query_drop(
            "CREATE TABLE w (id INT PRIMARY KEY, v VARCHAR(10)); \
             CREATE TABLE o (id INT PRIMARY KEY, v VARCHAR(10), extra INT)",
        )
        .await
        .expect("create");
    }
    let from = position().await;
    let cfg = config("bl_skip", "w").await;
    c.query_drop(
        "INSERT INTO o VALUES (1, 'o', 1); INSERT INTO w VALUES (1, 'w'); \
         INSERT INTO bl_skip_other.w VALUES (1, 'ow'); \
         BEGIN; INSERT INTO o VALUES (2, 'o', 2); INSERT INTO w VALUES (2, 'w'); UPDATE o SET v = 'x'; COMMIT; \
         UPDATE o SET extra = 5; DELETE FROM o; UPDATE bl_skip_other.w SET v = 'z'; \
         UPDATE w SET v = 'u' WHERE id = 2; DELETE FROM bl_skip_other.w; DELETE FROM w WHERE id = 1",
    )
    .await
    .expect("writes");
    let end = position().await;
    let mut stream = start(from, cfg).await;
    let got: Vec<(ChangeKind, i64)> = changes(&collect_until(&mut stream, &end).await)
        .iter()
        .map(|c| {
            (
                c.kind,
                id_of(c.after.as_ref().or(c.before.as_ref()).expect("image")),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (ChangeKind::Insert, 1),
            (ChangeKind::Insert, 2),
            (ChangeKind::Update, 2),
            (ChangeKind::Delete, 1)
        ]
    );
}

#[tokio::test]
async fn transactions_commit_whole_and_rollbacks_never_appear() {
    let mut c = schema("bl_txn").await;
    c.query_drop(
        "CREATE TABLE w (id INT PRIMARY KEY, v INT); \
         CREATE TABLE m (id INT PRIMARY KEY) ENGINE=MyISAM",
    )
    .await
    .expect("create");
    let from = position().await;
    let cfg = config("bl_txn", "w").await;
    c.query_drop(
        "BEGIN; INSERT INTO w VALUES (1, 1); INSERT INTO w VALUES (2, 1); UPDATE w SET v = 2 WHERE id = 1; COMMIT; \
         BEGIN; INSERT INTO w VALUES (3, 1); ROLLBACK; \
         BEGIN; INSERT INTO w VALUES (4, 1); INSERT INTO m VALUES (4); ROLLBACK; \
         BEGIN; INSERT INTO w VALUES (6, 1); SAVEPOINT a; INSERT INTO w VALUES (7, 1); ROLLBACK TO SAVEPOINT a; COMMIT; \
         INSERT INTO w VALUES (5, 1)",
    )
    .await
    .expect("writes");
    let end = position().await;
    let mut stream = start(from, cfg).await;
    let events = collect_until(&mut stream, &end).await;
    let ids: Vec<(ChangeKind, i64)> = changes(&events)
        .iter()
        .map(|c| (c.kind, id_of(c.after.as_ref().expect("after"))))
        .collect();
    assert_eq!(
        ids,
        vec![
            (ChangeKind::Insert, 1),
            (ChangeKind::Insert, 2),
            (ChangeKind::Update, 1),
            (ChangeKind::Insert, 6),
            (ChangeKind::Insert, 5)
        ]
    );
    // Every change carries the position of its transaction's end: the next Commit's.
    let mut pending: Vec<BinlogPosition> = Vec::new();
    let mut committed_with_rows = 0;
    for e in &events {
        match e {
            StreamEvent::Rows(rows) => pending.extend(rows.iter().map(|r| r.position.clone())),
            StreamEvent::Commit { position } => {
                if !pending.is_empty() {
                    committed_with_rows += 1;
                }
                assert!(
                    pending.iter().all(|p| p == position),
                    "{pending:?} vs {position}"
                );
                pending.clear();
            }
            _ => {}
        }
    }
    assert!(pending.is_empty());
    assert_eq!(committed_with_rows, 3);
}

#[tokio::test]
async fn ddl_on_the_watched_table_stops_the_stream() {
    let mut c = schema("bl_ddl").await;
    c.query_drop("CREATE TABLE w (id INT PRIMARY KEY); CREATE TABLE o (id INT PRIMARY KEY)")
        .await
        .expect("create");
    let from = position().await;
    let cfg = config("bl_ddl", "w").await;
    c.query_drop(
        "INSERT INTO w VALUES (1); ALTER TABLE o ADD COLUMN x INT; CREATE TABLE w2 LIKE w; \
         ALTER TABLE /* wraith test */ `bl_ddl`.`w` ADD COLUMN x INT; INSERT INTO w VALUES (2, 2)",
    )
    .await
    .expect("writes");
    let mut stream = start(from, cfg).await;
    let (seen, err) = events_until_error(&mut stream).await;
    match &err {
        ChangeStreamError::DdlOnSource {
            table,
            statement,
            position,
        } => {
            assert_eq!(table, "bl_ddl.w");
            assert!(statement.contains("ADD COLUMN x"), "{statement}");
            assert_eq!(stream.position(), position);
        }
        other => panic!("expected DdlOnSource, got {other}"),
    }
    assert!(
        err.to_string().contains("changed the source table"),
        "{err}"
    );
    let ids: Vec<i64> = changes(&seen)
        .iter()
        .map(|c| id_of(c.after.as_ref().expect("after")))
        .collect();
    assert_eq!(ids, vec![1]);
    // It stays stopped.
    assert!(matches!(
        stream.next().await,
        Err(ChangeStreamError::DdlOnSource { .. })
    ));
}

/// `(table, kind, before, after)` of a change, values in words.
fn change_text(c: &RowChange) -> String {
    let word = |v: &Value| match v {
        Value::Int(i) => i.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Date { year, month, day } => format!("{year:04}-{month:02}-{day:02}"),
        Value::Null => "NULL".into(),
        other => format!("{other:?}"),
    };
    let row = |r: &Option<Row>| match r {
        Some(r) => r.iter().map(word).collect::<Vec<_>>().join(","),
        None => "-".into(),
    };
    format!(
        "{} {:?} [{}] [{}]",
        c.table,
        c.kind,
        row(&c.before),
        row(&c.after)
    )
}

#[tokio::test]
async fn one_stream_follows_two_tables_and_skips_a_third() {
    let mut c = schema("bl_multi").await;
    // Different layouts: a row decoded with the other table's plan would fail or show.
    c.query_drop(
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10), n BIGINT); \
         CREATE TABLE b (id INT PRIMARY KEY, d DATE, w VARCHAR(10)); \
         CREATE TABLE c (id INT PRIMARY KEY, v VARCHAR(10), n BIGINT)",
    )
    .await
    .expect("create");
    let from = position().await;
    let (ia, ib) = (info("bl_multi", "a").await, info("bl_multi", "b").await);
    let cfg = ChangeStreamConfig::for_tables(&[&ia, &ib]).expect("config");
    assert_eq!(cfg.tables.len(), 2);
    assert_eq!(
        (cfg.tables[1].schema.as_str(), cfg.tables[1].table.as_str()),
        ("bl_multi", "b")
    );
    c.query_drop(
        "BEGIN; INSERT INTO a VALUES (1, 'a1', 10), (2, 'a2', 20); INSERT INTO c VALUES (1, 'c1', 1); \
           INSERT INTO b VALUES (1, '2024-01-02', 'b1'); COMMIT; \
         BEGIN; UPDATE c SET n = 5; UPDATE b SET id = 10, w = 'b10' WHERE id = 1; \
           UPDATE a SET v = 'a1u' WHERE id = 1; DELETE FROM a WHERE id = 2; DELETE FROM c; COMMIT; \
         BEGIN; INSERT INTO a VALUES (3, 'a3', 30); INSERT INTO b VALUES (3, NULL, 'b3'); \
           INSERT INTO c VALUES (3, 'c3', 3); ROLLBACK; \
         BEGIN; INSERT INTO c VALUES (4, 'c4', 4); DELETE FROM b WHERE id = 10; \
           UPDATE a SET id = 7, n = -1 WHERE id = 1; COMMIT; \
         ALTER TABLE c ADD COLUMN z INT; INSERT INTO c VALUES (5, 'c5', 5, 5); \
         INSERT INTO a VALUES (5, 'a5', 50); \
         ALTER TABLE `bl_multi`.`b` ADD COLUMN x INT; INSERT INTO a VALUES (6, 'a6', 60)",
    )
    .await
    .expect("writes");
    let mut stream = start(from, cfg).await;
    assert_eq!(stream.tables().len(), 2);
    let (seen, err) = events_until_error(&mut stream).await;
    let got: Vec<String> = changes(&seen).iter().map(change_text).collect();
    assert_eq!(
        got,
        vec![
            "0 Insert [-] [1,a1,10]",
            "0 Insert [-] [2,a2,20]",
            "1 Insert [-] [1,2024-01-02,b1]",
            "1 Update [1,2024-01-02,b1] [10,2024-01-02,b10]",
            "0 Update [1,a1,10] [1,a1u,10]",
            "0 Delete [2,a2,20] [-]",
            "1 Delete [10,2024-01-02,b10] [-]",
            "0 Update [1,a1u,10] [7,a1u,-1]",
            "0 Insert [-] [5,a5,50]",
        ]
    );
    // Exact values, not only their words.
    let first = &changes(&seen)[2];
    assert_eq!(
        first.after,
        Some(vec![
            Value::Int(1),
            Value::Date {
                year: 2024,
                month: 1,
                day: 2
            },
            Value::Bytes(b"b1".to_vec())
        ])
    );
    match &err {
        ChangeStreamError::DdlOnSource {
            table, statement, ..
        } => {
            assert_eq!(table, "bl_multi.b");
            assert!(statement.contains("ADD COLUMN x"), "{statement}");
        }
        other => panic!("expected DdlOnSource, got {other}"),
    }
    assert!(err.to_string().contains("bl_multi.b"), "{err}");
}

#[tokio::test]
async fn a_table_listed_twice_or_an_uncarried_type_is_refused() {
    let mut c = schema("bl_multi_cfg").await;
    c.query_drop(
        "CREATE TABLE a (id INT PRIMARY KEY); CREATE TABLE g (id INT PRIMARY KEY, p POINT)",
    )
    .await
    .expect("create");
    let ia = info("bl_multi_cfg", "a").await;
    let err = ChangeStream::start(
        opts(None),
        flavor().await,
        position().await,
        ChangeStreamConfig::for_tables(&[&ia, &ia]).expect("config"),
    )
    .await
    .err()
    .expect("a table listed twice is refused");
    assert!(
        err.to_string().contains("bl_multi_cfg.a is listed twice"),
        "{err}"
    );
    // Every type of this server is carried: a type of a later server
    // (MariaDB 11.7's VECTOR) stands in for one that is not.
    let mut ig = info("bl_multi_cfg", "g").await;
    for col in ig.columns.iter_mut().filter(|c| c.name == "p") {
        col.data_type = "vector".into();
        col.column_type = "vector(4)".into();
    }
    let err = ChangeStreamConfig::for_tables(&[&ia, &ig]).expect_err("VECTOR is not carried");
    assert!(err.to_string().contains("of bl_multi_cfg.g"), "{err}");
}

#[tokio::test]
async fn changelog_rows_become_tokens() {
    let mut c = schema("bl_token").await;
    c.query_drop(
        "CREATE TABLE w (id INT PRIMARY KEY); \
         CREATE TABLE _wraith_changelog (id BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64), at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6))",
    )
    .await
    .expect("create");
    let from = position().await;
    let mut cfg = config("bl_token", "w").await;
    cfg.token_table = Some(("bl_token".into(), "_wraith_changelog".into()));
    c.query_drop(
        "INSERT INTO w VALUES (1); INSERT INTO _wraith_changelog (token) VALUES ('cutover-1'); \
         INSERT INTO w VALUES (2)",
    )
    .await
    .expect("writes");
    let end = position().await;
    let mut stream = start(from, cfg).await;
    let events = collect_until(&mut stream, &end).await;
    let interesting: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rows(r) => Some(format!("row {}", id_of(r[0].after.as_ref()?))),
            StreamEvent::Token(t) => Some(format!("token {t}")),
            _ => None,
        })
        .collect();
    assert_eq!(interesting, vec!["row 1", "token cutover-1", "row 2"]);
}

#[tokio::test]
async fn a_purged_position_is_refused() {
    let cfg = {
        let mut c = schema("bl_purged").await;
        c.query_drop("CREATE TABLE w (id INT PRIMARY KEY)")
            .await
            .expect("create");
        config("bl_purged", "w").await
    };
    let from = BinlogPosition {
        file: "binlog.999999".into(),
        pos: 4,
        gtid: None,
    };
    let err = ChangeStream::start(opts(None), flavor().await, from, cfg)
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(err, ChangeStreamError::Purged { .. }),
        "expected Purged, got {err}"
    );
}

/// What a stream hands out, as comparable text (rows and commit positions).
fn transcript(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rows(rows) => Some(
                rows.iter()
                    .map(|r| {
                        format!(
                            "{:?} {:?} -> {:?} @{}",
                            r.kind, r.before, r.after, r.position
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            StreamEvent::Commit { position } => {
                Some(format!("commit {position} {:?}", position.gtid))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_killed_binlog_connection_resumes_without_loss_or_duplicates() {
    let mut c = schema("bl_kill").await;
    c.query_drop("CREATE TABLE w (id INT PRIMARY KEY, v INT, pad VARCHAR(200))")
        .await
        .expect("create");
    let from = position().await;
    let cfg = config("bl_kill", "w").await;

    // A writer runs the whole time: single rows, multi-row statements and
    // multi-statement transactions, some rolled back.
    let writer = tokio::spawn(async move {
        let mut c = conn(Some("bl_kill")).await;
        for i in 0..400i64 {
            let q = match i % 5 {
                0 => format!(
                    "INSERT INTO w VALUES ({i}, 0, REPEAT('p', 150)), ({}, 0, 'x'), ({}, 0, 'y')",
                    i + 100_000,
                    i + 200_000
                ),
                1 => format!(
                    "UPDATE w SET v = v + 1 WHERE id >= {} AND id < {}",
                    i - 50,
                    i
                ),
                2 => format!(
                    "BEGIN; INSERT INTO w VALUES ({i}, 2, 'b'); UPDATE w SET v = 7 WHERE id = {}; \
                     DELETE FROM w WHERE id = {}; COMMIT",
                    i - 2,
                    i + 99_995
                ),
                3 => format!("BEGIN; INSERT INTO w VALUES ({i}, 3, 'r'); ROLLBACK"),
                _ => format!("DELETE FROM w WHERE id = {}", i + 199_996),
            };
            c.query_drop(q).await.expect("write");
            if i % 40 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut killer = conn(None).await;
    let mut stream = start(from.clone(), cfg.clone()).await;
    let mut killed_events = Vec::new();
    let mut kills = 0;
    let mut since_kill = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut end: Option<BinlogPosition> = None;
    loop {
        if end.is_none() && writer.is_finished() {
            end = Some(position().await);
        }
        if let Some(e) = &end {
            if reached(stream.position(), e) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "stream too slow");
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("stream stalled")
            .expect("next");
        killed_events.push(ev);
        since_kill += 1;
        // Kill every ~150 events: mid-transaction more often than not.
        if since_kill >= 150 {
            if let Some(id) = stream.connection_id() {
                let _ = killer.query_drop(format!("KILL {id}")).await;
                kills += 1;
                since_kill = 0;
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills");
    let end = end.expect("end");

    let mut calm = start(from, cfg).await;
    let calm_events = collect_until(&mut calm, &end).await;
    let (a, b) = (transcript(&killed_events), transcript(&calm_events));
    assert_eq!(
        a.len(),
        b.len(),
        "{kills} kills changed what was handed out"
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert!(changes(&calm_events).len() > 1000);
}

/// Not a timed test: prints how fast rows decode, for the report.
#[tokio::test]
async fn decode_rate_is_reported() {
    let mut c = schema("bl_rate").await;
    c.query_drop("CREATE TABLE sb (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60), KEY (k))")
        .await
        .expect("create");
    let from = position().await;
    let cfg = config("bl_rate", "sb").await;
    c.query_drop(
        "SET SESSION max_recursive_iterations = 1000000; INSERT INTO sb WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
         SELECT i, i * 7 % 1000, REPEAT(CHAR(65 + i % 26), 120), REPEAT('p', 60) FROM n",
    )
    .await
    .expect("load");
    let end = position().await;
    let t = Instant::now();
    let mut stream = start(from, cfg).await;
    let mut n = 0usize;
    while !reached(stream.position(), &end) {
        if let StreamEvent::Rows(r) = stream.next().await.expect("next") {
            n += r.len();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, 200_000);
    println!(
        "change stream: {n} rows in {secs:.2}s = {:.0} rows/s",
        n as f64 / secs
    );
    assert!(matches!(
        stream.lag(),
        d if d < Duration::from_secs(600)
    ));
    let _ = Value::Null;
}

#[tokio::test]
async fn generated_columns_decode_like_the_copy_reads_them() {
    round_trip(
        "bl_gen",
        "g",
        "CREATE TABLE g (id INT PRIMARY KEY, a INT, v INT AS (a * 2) VIRTUAL, s VARCHAR(20) AS (CONCAT('s', a)) STORED, b BLOB)",
        "INSERT INTO g (id, a, b) VALUES (1, 1, 'x'), (2, NULL, NULL)",
        "UPDATE g SET id = id + 10; UPDATE g SET a = 5 WHERE id = 11",
    )
    .await;
}

/// Every event the stream hands out until it fails, and the failure.
async fn events_until_error(stream: &mut ChangeStream) -> (Vec<StreamEvent>, ChangeStreamError) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("stream stalled")
        {
            Ok(ev) => seen.push(ev),
            Err(e) => return (seen, e),
        }
    }
}

/// A table followed from its RENAME (the revert window's stream): the rows
/// of the table that had the name before are skipped undecoded (they have
/// other columns), the RENAME that brings the followed table under the
/// name is handed out as `Renamed` with the position after it, and from
/// there its rows come, until a later DDL on it stops the stream.
#[tokio::test]
async fn a_table_followed_from_its_rename_starts_there() {
    let mut c = schema("bl_renamed").await;
    c.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); \
         CREATE TABLE _t_new (id INT PRIMARY KEY, v VARCHAR(20), extra INT NOT NULL)",
    )
    .await
    .expect("create");
    let mut cfg = config("bl_renamed", "_t_new").await;
    cfg.tables[0].table = "t".into();
    cfg.tables[0].from_rename = true;
    let from = position().await;
    c.query_drop(
        "INSERT INTO t VALUES (1, 'old'); INSERT INTO _t_new VALUES (1, 'copied', 5); \
         ALTER TABLE t COMMENT 'before'; \
         RENAME TABLE t TO _t_old, _t_new TO t; \
         INSERT INTO t VALUES (2, 'new', 7); INSERT INTO _t_old VALUES (3, 'old again'); \
         ALTER TABLE t ADD COLUMN y INT",
    )
    .await
    .expect("writes");
    let mut stream = start(from, cfg).await;
    let (seen, err) = events_until_error(&mut stream).await;
    assert!(
        matches!(&err, ChangeStreamError::DdlOnSource { statement, .. } if statement.contains("ADD COLUMN y")),
        "{err}"
    );
    let renamed: Vec<usize> = seen
        .iter()
        .position(|e| matches!(e, StreamEvent::Renamed { .. }))
        .into_iter()
        .collect();
    let Some(&at) = renamed.first() else {
        panic!("no Renamed event: {}", transcript(&seen).join("\n"));
    };
    // A DDL on the old table under the name (the COMMENT) is not the
    // followed table's: only the statement that renames it into place counts.
    let ids: Vec<i64> = changes(&seen[at..])
        .iter()
        .map(|c| id_of(c.after.as_ref().expect("after")))
        .collect();
    assert_eq!(ids, vec![2], "{}", transcript(&seen).join("\n"));
    assert!(
        changes(&seen[..at]).is_empty(),
        "rows before the rename: {}",
        transcript(&seen).join("\n")
    );
    // The position handed with it is the one its statement commits at.
    match (&seen[at], seen.get(at + 1)) {
        (StreamEvent::Renamed { tables, position }, Some(StreamEvent::Commit { position: p })) => {
            assert_eq!(tables, &vec![0]);
            assert_eq!(position, p);
        }
        other => panic!("Renamed then Commit expected, got {other:?}"),
    }
}
