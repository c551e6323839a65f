//! Every MariaDB column type wraith carries, exactly, through every path:
//! spatial columns (SRID and WKB), INET4, INET6 and UUID copied by both
//! backends and changed through the binlog (where they are fixed binary
//! strings with their trailing zero bytes stripped), compared value by value
//! with a mirror table that received the same writes; and a type wraith
//! cannot carry refused by `check` before anything is created.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use wraith_tests::{wraith_with_config, PostponeFlag, Schema, WraithChild};

const TYPED_TABLE: &str = "(id INT NOT NULL PRIMARY KEY, \
     p POINT REF_SYSTEM_ID=4326 NULL, poly POLYGON NULL, gc GEOMETRYCOLLECTION NULL, \
     g GEOMETRY NULL, i4 INET4 NULL, i6 INET6 NULL, u UUID NULL, note VARCHAR(20) NULL)";

/// A pseudo-random step (PCG's multiplier).
fn step(n: u64) -> u64 {
    n.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
}

/// A polygon ring of `k` vertices around (x, y), closed.
fn ring(x: f64, y: f64, k: usize) -> String {
    let mut pts: Vec<String> = (0..k)
        .map(|i| {
            let a = i as f64 / k as f64 * std::f64::consts::TAU;
            format!("{} {}", x + a.cos() * 1.5, y + a.sin() * 0.75)
        })
        .collect();
    pts.push(pts[0].clone());
    pts.join(",")
}

/// The values of one row from a seed: NULLs, SRIDs 0/4326/3857, empty
/// collections, a large polygon, and INET/UUID values whose binary form
/// ends in zero bytes (a row event strips those).
fn row_values(n: u64) -> String {
    row_value_list(n).join(", ")
}

/// [`row_values`], one SQL expression per column of [`COLUMNS`].
fn row_value_list(n: u64) -> Vec<String> {
    let pick = |k: u64| (n >> k) % 8;
    let x = (n % 36_000) as f64 / 100.0 - 180.0;
    let y = ((n >> 8) % 18_000) as f64 / 200.0 - 45.0;
    let p = match pick(3) {
        0 => "NULL".to_string(),
        1 => format!("ST_GeomFromText('POINT({x} {y})')"),
        _ => format!("ST_GeomFromText('POINT({x} {y})', 4326)"),
    };
    let poly = match pick(6) {
        0 => "NULL".to_string(),
        1 => format!("ST_GeomFromText('POLYGON(({}))', 3857)", ring(x, y, 600)),
        2 => format!(
            "ST_GeomFromText('POLYGON(({}),({}))')",
            ring(x, y, 5),
            ring(x + 0.1, y, 4)
        ),
        _ => format!(
            "ST_GeomFromText('POLYGON(({}))', 4326)",
            ring(x, y, 4 + n as usize % 9)
        ),
    };
    let gc = match pick(9) {
        0 => "NULL".to_string(),
        1 | 2 => "ST_GeomFromText('GEOMETRYCOLLECTION EMPTY')".to_string(),
        _ => format!(
            "ST_GeomFromText('GEOMETRYCOLLECTION(POINT({x} {y}),LINESTRING(0 0,{x} {y}),\
             MULTIPOINT(1 1,2 2))', {})",
            if n % 2 == 0 { 0 } else { 4326 }
        ),
    };
    let g = match pick(12) {
        0 | 1 => "NULL".to_string(),
        2 => format!("ST_GeomFromText('LINESTRING(0 0,{x} {y},1 1)', 3857)"),
        3 => "ST_GeomFromText('MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))')".into(),
        4 => "ST_GeomFromText('GEOMETRYCOLLECTION EMPTY', 4326)".into(),
        5 => format!("ST_GeomFromText('MULTILINESTRING((0 0,{x} {y}),(1 1,2 2))')"),
        _ => format!("ST_GeomFromText('POINT({y} {x})', {})", n % 5000),
    };
    let b = |k: u32| (n >> k) & 0xff;
    let i4 = match pick(15) {
        0 => "NULL".to_string(),
        1 => "'0.0.0.0'".to_string(),
        2 => format!("'{}.0.0.0'", b(17)),
        3 => format!("'10.{}.32.0'", b(19)),
        _ => format!("'{}.{}.{}.{}'", b(17), b(21), b(25), b(29)),
    };
    let i6 = match pick(18) {
        0 => "NULL".to_string(),
        1 => "'::'".to_string(),
        2 => format!("'{:x}::'", n & 0xffff),
        3 => format!("'::ffff:{}.{}.{}.0'", b(17), b(21), b(25)),
        4 => "'::1'".to_string(),
        _ => format!(
            "'fe80::{:x}:{:x}:{:x}'",
            n & 0xffff,
            (n >> 16) & 0xffff,
            (n >> 32) & 0xffff
        ),
    };
    let u = match pick(21) {
        0 => "NULL".to_string(),
        1 => "'00000000-0000-0000-0000-000000000000'".to_string(),
        2 => format!("'{:08x}-0000-1000-8000-000000000000'", n & 0xffff_ffff),
        3 => "UUID()".to_string(),
        // Versions 1 and 4 of the RFC variant (the server refuses others).
        _ => format!(
            "'{:08x}-{:04x}-{}{:03x}-{:x}{:03x}-{:012x}'",
            n & 0xffff_ffff,
            (n >> 32) & 0xffff,
            if n % 2 == 0 { 1 } else { 4 },
            (n >> 40) & 0xfff,
            8 + (n >> 13) % 4,
            (n >> 20) & 0xfff,
            step(n) & 0xffff_ffff_ffff
        ),
    };
    vec![p, poly, gc, g, i4, i6, u]
}

const COLUMNS: &str = "p, poly, gc, g, i4, i6, u";

/// Writes `t` and `m` in the same transactions (inserts, updates of every
/// column, updates to NULL, deletes) until `stop`; returns the transactions
/// committed. UUID() is evaluated once per transaction through a variable.
async fn mirrored_writes(s: &Schema, stop: Arc<AtomicBool>, seed: u64, rows: u64) -> u64 {
    let mut c = s.conn().await;
    let mut n = seed;
    let mut committed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n = step(n);
        let id = 1 + (n >> 20) % rows;
        let values = row_values(n).replace("UUID()", "@u");
        let stmt = match (n >> 33) % 10 {
            0..=3 => format!(
                "INSERT INTO {{t}} (id, {COLUMNS}, note) VALUES ({}, {values}, 'load')",
                rows + 1 + committed
            ),
            4..=6 => {
                let sets: Vec<String> = COLUMNS
                    .split(", ")
                    .zip(row_value_list(n))
                    .map(|(col, v)| format!("{col} = {}", v.replace("UUID()", "@u")))
                    .collect();
                format!(
                    "UPDATE {{t}} SET {}, note = 'upd' WHERE id = {id}",
                    sets.join(", ")
                )
            }
            7 => {
                format!("UPDATE {{t}} SET p = NULL, g = NULL, i6 = NULL, u = NULL WHERE id = {id}")
            }
            _ => format!("DELETE FROM {{t}} WHERE id = {id}"),
        };
        let txn = async {
            c.query_drop("START TRANSACTION").await?;
            c.query_drop("SET @u = UUID()").await?;
            c.query_drop(stmt.replace("{t}", "t")).await?;
            c.query_drop(stmt.replace("{t}", "m")).await?;
            c.query_drop("COMMIT").await
        }
        .await;
        match txn {
            Ok(()) => committed += 1,
            Err(e) => {
                let _ = c.query_drop("ROLLBACK").await;
                panic!("a mirrored write failed: {e}\n{stmt}");
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    committed
}

fn run_config(s: &Schema, alter: &str, backend: &str, cutover: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    s.config(
        "t",
        alter,
        &format!(
            "[copy]\nbackend = \"{backend}\"\nthreads = 2\ninitial_chunk_rows = 200\n\
             chunk_target = \"50ms\"\n\n[local]\nsort_dir = {:?}\nengine_size = \"1MiB\"\n\n\
             [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n{cutover}\n",
            sort_dir.display().to_string()
        ),
    )
}

/// Rows of `t` and `m` that differ by any value's exact bytes: the SRID and
/// WKB of every spatial column, the binary form and text of INET/UUID.
async fn differing_rows(s: &Schema) -> Vec<(i64, String)> {
    let mut c = s.conn().await;
    let mut same = Vec::new();
    for col in ["p", "poly", "gc", "g"] {
        same.push(format!(
            "ST_AsBinary(t.{col}) <=> ST_AsBinary(m.{col}) AND ST_SRID(t.{col}) <=> ST_SRID(m.{col}) \
             AND CAST(t.{col} AS BINARY) <=> CAST(m.{col} AS BINARY)"
        ));
    }
    for col in ["i4", "i6", "u"] {
        same.push(format!(
            "CAST(t.{col} AS BINARY) <=> CAST(m.{col} AS BINARY) \
             AND CAST(t.{col} AS CHAR) <=> CAST(m.{col} AS CHAR)"
        ));
    }
    same.push("t.note <=> m.note".into());
    c.query(format!(
        "SELECT m.id, 'different or missing in t' FROM m LEFT JOIN t USING (id) \
         WHERE t.id IS NULL OR NOT ({}) \
         UNION ALL SELECT t.id, 'only in t' FROM t LEFT JOIN m USING (id) WHERE m.id IS NULL \
         LIMIT 20",
        same.join(" AND ")
    ))
    .await
    .expect("compare t and m")
}

#[tokio::test]
async fn spatial_columns_copied_and_changed_under_load() {
    let _judged = crate::LATENCY_JUDGED.read().await;
    for (backend, seed) in [("sql", 11u64), ("local", 23)] {
        let s = Schema::new(&format!("types_spatial_{backend}")).await;
        let rows = 3_000u64;
        s.exec(&format!("CREATE TABLE t {TYPED_TABLE}")).await;
        let mut c = s.conn().await;
        let mut n = seed;
        for start in (1..=rows).step_by(250) {
            let mut values = Vec::new();
            for id in start..start + 250 {
                n = step(n);
                values.push(format!("({id}, {}, 'row')", row_values(n)));
            }
            c.query_drop(format!(
                "INSERT INTO t (id, {COLUMNS}, note) VALUES {}",
                values.join(", ")
            ))
            .await
            .unwrap();
        }
        c.query_drop("CREATE TABLE m LIKE t; INSERT INTO m SELECT * FROM t")
            .await
            .unwrap();
        let srid: Option<u32> = c
            .exec_first(
                "SELECT SRID FROM information_schema.GEOMETRY_COLUMNS \
                 WHERE G_TABLE_SCHEMA = ? AND G_TABLE_NAME = 't' AND G_GEOMETRY_COLUMN = 'p'",
                (&s.name,),
            )
            .await
            .unwrap();
        assert_eq!(srid, Some(4326), "the column SRID of p");
        drop(c);

        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let s = s.clone();
            let stop = stop.clone();
            tokio::spawn(async move { mirrored_writes(&s, stop, seed * 7, rows).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let alter = "ADD COLUMN extra INT NULL";
        let flag = PostponeFlag::new();
        let cfg = run_config(&s, alter, backend, &flag.setting());
        let check = wraith_with_config(&["check"], &cfg).await;
        assert_eq!(check.code, 0, "{backend}: {}", check.output());
        let mut child = WraithChild::spawn(&["run"], &cfg);
        child
            .wait_for("cut-over postponed", Duration::from_secs(180))
            .await;
        // Changes that only the binlog carries.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let committed = load.await.unwrap();
        drop(flag);
        let run = child.finish(Duration::from_secs(180)).await;
        assert_eq!(run.code, 0, "{backend}: {}", run.output());
        assert!(
            committed > 100,
            "{backend}: the load barely ran ({committed})"
        );

        let diff = differing_rows(&s).await;
        assert!(diff.is_empty(), "{backend}: t differs from m: {diff:?}");
        let mut c = s.conn().await;
        let counts: Option<(u64, u64, u64, u64, u64)> = c
            .query_first(
                "SELECT (SELECT COUNT(*) FROM t), (SELECT COUNT(*) FROM m), \
                 (SELECT COUNT(*) FROM t WHERE note = 'upd'), \
                 (SELECT COUNT(*) FROM t WHERE ST_SRID(p) = 4326), \
                 (SELECT COUNT(*) FROM t WHERE i4 = '0.0.0.0' OR i6 = '::' \
                  OR u = '00000000-0000-0000-0000-000000000000')",
            )
            .await
            .unwrap();
        let (nt, nm, updated, srid_4326, zeros) = counts.unwrap();
        assert_eq!(nt, nm, "{backend}");
        assert!(nt > rows / 2, "{backend}: {nt} rows");
        assert!(
            updated > 10,
            "{backend}: only {updated} rows updated by the load"
        );
        assert!(
            srid_4326 > 100,
            "{backend}: {srid_4326} points with SRID 4326"
        );
        assert!(zeros > 10, "{backend}: {zeros} all-zero INET/UUID values");
        // The column SRID moved with the table.
        let srid: Option<u32> = c
            .exec_first(
                "SELECT SRID FROM information_schema.GEOMETRY_COLUMNS \
                 WHERE G_TABLE_SCHEMA = ? AND G_TABLE_NAME = 't' AND G_GEOMETRY_COLUMN = 'p'",
                (&s.name,),
            )
            .await
            .unwrap();
        assert_eq!(
            srid,
            Some(4326),
            "{backend}: the column SRID of p after the run"
        );
    }
}

/// The tables of the schema, by name.
async fn tables(s: &Schema) -> Vec<String> {
    let mut c = s.conn().await;
    c.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1",
        (&s.name,),
    )
    .await
    .expect("tables")
}

/// `check` and `run` refuse `alter` with exit 3, naming `needles`, and leave
/// the schema as it was (no shadow, no changelog, the source untouched).
async fn assert_refused(s: &Schema, alter: &str, needles: &[&str]) {
    let before = s.snapshot("t").await;
    let tables_before = tables(s).await;
    let cfg = run_config(s, alter, "sql", "");
    for cmd in ["check", "run"] {
        let run = wraith_with_config(&[cmd], &cfg).await;
        assert_eq!(
            run.code,
            3,
            "{cmd} {alter}: expected a refusal:\n{}",
            run.output()
        );
        for n in needles {
            assert!(
                run.stderr.contains(n),
                "{cmd} {alter}: missing {n:?} in:\n{}",
                run.output()
            );
        }
        assert!(
            run.stderr.contains("fix:"),
            "{cmd}: no fix:\n{}",
            run.output()
        );
        assert_eq!(
            tables(s).await,
            tables_before,
            "{cmd} {alter}: tables created"
        );
        assert_eq!(
            s.snapshot("t").await,
            before,
            "{cmd} {alter}: source changed"
        );
    }
}

#[tokio::test]
async fn types_wraith_cannot_carry_are_refused_by_check() {
    let s = Schema::new("types_refused").await;
    s.exec(&format!("CREATE TABLE t {TYPED_TABLE}")).await;
    s.exec(
        "INSERT INTO t (id, p, g, i6, u) VALUES \
         (1, ST_GeomFromText('POINT(1 2)', 4326), ST_GeomFromText('POINT(1 1)'), '::1', UUID()), \
         (2, NULL, ST_GeomFromText('LINESTRING(0 0,1 1)'), NULL, NULL), \
         (3, NULL, NULL, NULL, NULL)",
    )
    .await;
    // A GEOMETRY that holds a LINESTRING cannot become a POINT: the
    // server's own ALTER refuses it too.
    assert_refused(
        &s,
        "MODIFY g POINT NULL",
        &["column `g` of t becomes point but 1 rows hold another geometry type"],
    )
    .await;
    // A change whose result wraith would not write the server's way.
    assert_refused(
        &s,
        "MODIFY i6 BINARY(16) NULL",
        &["changes column `i6` of t from inet6 to binary(16)"],
    )
    .await;
    assert_refused(
        &s,
        "MODIFY g VARCHAR(200) NULL",
        &["changes column `g` of t from geometry to varchar(200)"],
    )
    .await;

    // What wraith carries passes the check: a spatial type widened, INET6
    // and UUID into text.
    for alter in [
        "MODIFY p GEOMETRY NULL",
        "MODIFY i6 VARCHAR(50) NULL, MODIFY u CHAR(36) NULL",
        "DROP COLUMN note, ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'x'",
        // Without a default, every row gets '' (see implicit.rs).
        "DROP COLUMN note, ADD COLUMN note VARCHAR(20) NOT NULL",
    ] {
        let run = wraith_with_config(&["check"], &run_config(&s, alter, "sql", "")).await;
        assert_eq!(run.code, 0, "{alter}: {}", run.output());
    }
}

#[tokio::test]
async fn inet_and_uuid_into_text_give_the_server_text() {
    for backend in ["sql", "local"] {
        let s = Schema::new(&format!("types_text_{backend}")).await;
        s.exec(&format!("CREATE TABLE t {TYPED_TABLE}")).await;
        let mut values = Vec::new();
        let mut n = 5u64;
        for id in 1..=500u64 {
            n = step(n);
            values.push(format!("({id}, {}, 'row')", row_values(n)));
        }
        s.exec(&format!(
            "INSERT INTO t (id, {COLUMNS}, note) VALUES {}",
            values.join(", ")
        ))
        .await;
        s.exec("CREATE TABLE m LIKE t; INSERT INTO m SELECT * FROM t")
            .await;
        let alter = "MODIFY i4 VARCHAR(20) NULL, MODIFY i6 VARCHAR(50) NULL, \
                     MODIFY u CHAR(36) NULL, MODIFY p GEOMETRY NULL";
        let run = wraith_with_config(&["run"], &run_config(&s, alter, backend, "")).await;
        assert_eq!(run.code, 0, "{backend}: {}", run.output());
        s.exec(&format!("ALTER TABLE m {alter}")).await;
        let (rebuilt, oracle) = (s.snapshot("t").await, s.snapshot("m").await);
        assert_eq!(
            rebuilt.rows, oracle.rows,
            "{backend}: differs from the native ALTER"
        );
        assert_eq!(rebuilt.rows.len(), 500);
    }
}
