//! Values by the server's own rules: time zone conversions on a server whose
//! `time_zone` is not UTC, data the ALTER cannot hold refused before anything
//! is created, and values that would change refused unless allowed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use wraith_tests::{tz_server, wraith_with_config, PostponeFlag, Schema, WraithChild};

/// Each way rows can travel: server-side `INSERT ... SELECT`, batched
/// INSERTs through wraith (with the change applier in both), and the local
/// backend's LOAD DATA.
const BACKENDS: [&str; 3] = ["sql", "sql-client", "local"];

fn backend_settings(backend: &str) -> String {
    match backend {
        "sql-client" => "backend = \"sql\"\nserver_side_copy = false".into(),
        other => format!("backend = \"{other}\""),
    }
}

fn run_config(s: &Schema, alter: &str, backend: &str, table_extra: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    s.config(
        "t",
        alter,
        &format!(
            "[copy]\n{}\nthreads = 2\ninitial_chunk_rows = 500\nchunk_target = \"50ms\"\n\n\
             [local]\nsort_dir = {:?}\nengine_size = \"1MiB\"\n\n\
             [cutover]\nlock_wait_timeout = \"1s\"\nretries = 10\n",
            backend_settings(backend),
            sort_dir.display().to_string()
        ),
    )
    .replace(
        &format!("alter = {alter:?}\n"),
        &format!("alter = {alter:?}\n{table_extra}\n"),
    )
}

/// The tables of the schema: after a refusal only the source may be there.
async fn tables(s: &Schema) -> Vec<String> {
    let mut c = s.conn().await;
    c.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1",
        (&s.name,),
    )
    .await
    .expect("tables")
}

/// A TIMESTAMP or DATETIME literal from a seed: spread over 1971–2037, with
/// milliseconds.
fn moment(n: u64) -> String {
    let year = 1971 + n % 66;
    let month = 1 + (n / 7) % 12;
    let day = 1 + (n / 3) % 28;
    let hour = (n * 7) % 24;
    let minute = (n * 13) % 60;
    let second = (n * 17) % 60;
    let ms = (n * 37) % 1000;
    format!("'{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{ms:03}'")
}

/// Writes `t` and `m` in the same transactions (inserts, updates, deletes)
/// until `stop`; returns the transactions committed.
async fn mirrored_writes(s: &Schema, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let mut c = s.conn().await;
    let mut n = seed;
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (n >> 33) % 10;
        let id = 1 + (n >> 20) % 20_000;
        let (a, b) = (moment(n >> 7), moment(n >> 11));
        let stmt = match pick {
            0..=3 => format!(
                "INSERT INTO {{t}} (ts, dt, note) VALUES ({a}, {b}, 'load {}')",
                n % 1000
            ),
            4..=7 => format!("UPDATE {{t}} SET ts = {a}, dt = {b} WHERE id = {id}"),
            _ => format!("DELETE FROM {{t}} WHERE id = {id}"),
        };
        // Ids come from each table's own counter: keep them equal by naming them.
        let stmt = if pick <= 3 {
            stmt.replace(
                "(ts, dt, note) VALUES (",
                &format!("(id, ts, dt, note) VALUES ({}, ", 100_000 + committed),
            )
        } else {
            stmt
        };
        let txn = async {
            c.query_drop("START TRANSACTION").await?;
            c.query_drop(stmt.replace("{t}", "t")).await?;
            c.query_drop(stmt.replace("{t}", "m")).await?;
            c.query_drop("COMMIT").await
        }
        .await;
        match txn {
            Ok(()) => committed += 1,
            Err(_) => {
                let _ = c.query_drop("ROLLBACK").await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(4)).await;
    }
    committed
}

#[tokio::test]
async fn timestamp_and_datetime_convert_in_the_server_time_zone_under_changes() {
    let server = tz_server();
    let alter = "MODIFY ts DATETIME(3) NULL, MODIFY dt TIMESTAMP(3) NULL DEFAULT NULL";
    for backend in BACKENDS {
        let s = Schema::on(server, &format!("val_tz_{}", backend.replace('-', "_"))).await;
        let mut c = s.conn().await;
        let zone: Option<String> = c.query_first("SELECT @@global.time_zone").await.unwrap();
        assert_eq!(zone.as_deref(), Some("+05:00"));
        c.query_drop(
            "CREATE TABLE t (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, ts TIMESTAMP(3) NULL DEFAULT NULL, \
             dt DATETIME(3) NULL, note VARCHAR(20))",
        )
        .await
        .unwrap();
        let mut values = Vec::new();
        for i in 1..=20_000u64 {
            values.push(format!(
                "({i}, {}, {}, 'row {i}')",
                moment(i * 11),
                moment(i * 29 + 5)
            ));
        }
        c.query_drop(format!("INSERT INTO t VALUES {}", values.join(", ")))
            .await
            .unwrap();
        // The zero date, NULLs and both ends of the TIMESTAMP range (as the
        // +05:00 session writes them).
        c.query_drop(
            "INSERT INTO t VALUES (20001, '0000-00-00 00:00:00', '0000-00-00 00:00:00', 'zero'), \
             (20002, NULL, NULL, 'null'), \
             (20003, '1970-01-01 05:00:01', '1970-01-01 05:00:01', 'low'), \
             (20004, '2038-01-19 08:14:07.999', '2038-01-19 08:14:07.999', 'high')",
        )
        .await
        .unwrap();
        c.query_drop("CREATE TABLE m LIKE t; INSERT INTO m SELECT * FROM t")
            .await
            .unwrap();
        drop(c);

        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let s = s.clone();
            let stop = stop.clone();
            tokio::spawn(async move { mirrored_writes(&s, stop, 7).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let cfg = run_config(&s, alter, backend, "");
        let check = wraith_with_config(&["check"], &cfg).await;
        assert_eq!(check.code, 0, "{backend}: {}", check.output());
        assert!(
            check
                .stderr
                .contains("ts, dt converted in the server's time_zone +05:00"),
            "{backend}: the plan does not say the zone:\n{}",
            check.output()
        );
        let run = wraith_with_config(&["run"], &cfg).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let committed = load.await.unwrap();
        assert_eq!(run.code, 0, "{backend}: {}", run.output());
        assert!(
            committed > 20,
            "{backend}: the load barely ran ({committed})"
        );

        // The server's own ALTER on the mirror (same final data), in a
        // session of the server's default zone.
        s.exec(&format!("ALTER TABLE m {alter}")).await;
        let (rebuilt, oracle) = (s.snapshot("t").await, s.snapshot("m").await);
        assert_eq!(
            definition(&rebuilt.create),
            definition(&oracle.create),
            "{backend}: definitions differ"
        );
        assert_eq!(
            rebuilt.rows.len(),
            oracle.rows.len(),
            "{backend}: row counts differ"
        );
        let differing: Vec<_> = rebuilt
            .rows
            .iter()
            .zip(&oracle.rows)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        assert!(
            differing.is_empty(),
            "{backend}: values differ from the server's own ALTER: {differing:?}"
        );
        // The UTC instants too: a shift would be hidden by nothing here.
        let mut c = s.conn().await;
        let shifted: Option<u64> = c
            .query_first(
                "SELECT COUNT(*) FROM t JOIN m USING (id) WHERE NOT (t.ts <=> m.ts AND \
                 UNIX_TIMESTAMP(t.dt) <=> UNIX_TIMESTAMP(m.dt))",
            )
            .await
            .unwrap();
        assert_eq!(shifted, Some(0), "{backend}: shifted values");
        let zero: Option<String> = c
            .query_first("SELECT CAST(ts AS CHAR) FROM t WHERE id = 20001")
            .await
            .unwrap();
        assert_eq!(zero.as_deref(), Some("0000-00-00 00:00:00.000"));
    }
}

/// A `SHOW CREATE TABLE` without the table's name and counter.
fn definition(create: &str) -> String {
    create
        .split_once('(')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split(' ')
        .filter(|w| !w.starts_with("AUTO_INCREMENT="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `check` and `run` refuse with exit 3, naming what `needles` say, and
/// leave the source and the schema as they were.
async fn assert_refused_before_anything(s: &Schema, config: &str, needles: &[&str]) {
    let before = s.snapshot("t").await;
    let tables_before = tables(s).await;
    for cmd in ["check", "run"] {
        let run = wraith_with_config(&[cmd], config).await;
        assert_eq!(run.code, 3, "{cmd}: expected a refusal:\n{}", run.output());
        for n in needles {
            assert!(
                run.stderr.contains(n),
                "{cmd}: missing {n:?} in:\n{}",
                run.output()
            );
        }
        assert!(
            run.stderr.contains("fix:"),
            "{cmd}: no fix:\n{}",
            run.output()
        );
        assert_eq!(before, s.snapshot("t").await, "{cmd}: the source changed");
        assert_eq!(
            tables_before,
            tables(s).await,
            "{cmd}: wraith left an object behind"
        );
    }
}

#[tokio::test]
async fn data_the_alter_cannot_hold_is_refused_before_anything_is_created() {
    let s = Schema::new("val_refuse").await;
    s.exec(
        "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, n INT NULL, big BIGINT, name VARCHAR(40), \
         amount DECIMAL(12,2), email VARCHAR(40) COLLATE utf8mb4_bin, word VARCHAR(20) COLLATE utf8mb4_bin, \
         UNIQUE KEY u_word (word)) DEFAULT CHARSET=utf8mb4; \
         INSERT INTO t VALUES (1, 1, 5, 'short', 1.50, 'a@x', 'apple'), \
         (2, NULL, 300, 'a name that is rather long', 123456.78, 'b@x', 'Apple'), \
         (3, 3, -7, 'ok', 2.25, 'a@x', 'pear')",
    )
    .await;
    let cases: [(&str, &[&str]); 6] = [
        (
            "MODIFY n INT NOT NULL",
            &["column n", "NOT NULL but holds NULLs", "key (2)"],
        ),
        (
            "MODIFY name VARCHAR(10)",
            &["column name", "longer than 10 characters", "key (2)"],
        ),
        (
            "MODIFY big TINYINT",
            &["column big", "outside -128..127", "key (2)"],
        ),
        (
            "MODIFY amount DECIMAL(5,2)",
            &["column amount", "more than 3 digit(s)", "key (2)"],
        ),
        (
            "ADD UNIQUE KEY u_email (email)",
            &["unique key u_email", "(a@x)", "(1) and (3)"],
        ),
        (
            "MODIFY word VARCHAR(20) COLLATE utf8mb4_general_ci",
            &["unique key u_word", "2 rows share"],
        ),
    ];
    for (alter, needles) in cases {
        let cfg = run_config(&s, alter, "sql", "");
        assert_refused_before_anything(&s, &cfg, needles).await;
    }
}

#[tokio::test]
async fn time_zone_refusals_on_a_non_utc_server() {
    let s = Schema::on(tz_server(), "val_tz_refuse").await;
    s.exec(
        "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, dt DATETIME NULL, txt VARCHAR(30)); \
         INSERT INTO t VALUES (1, '2020-01-01 00:00:00', '2020-01-01 00:00:00'), \
         (2, '1970-01-01 03:00:00', '2021-01-01 00:00:00')",
    )
    .await;
    // 03:00 at +05:00 is before 1970 in UTC: the server's ALTER refuses it too.
    let cfg = run_config(&s, "MODIFY dt TIMESTAMP NULL", "sql", "");
    assert_refused_before_anything(
        &s,
        &cfg,
        &["column dt", "outside the TIMESTAMP range", "key (2)"],
    )
    .await;
    let cfg = run_config(&s, "MODIFY txt TIMESTAMP NULL", "sql", "");
    assert_refused_before_anything(
        &s,
        &cfg,
        &["column txt", "time_zone is +05:00", "two steps"],
    )
    .await;
}

#[tokio::test]
async fn values_that_change_need_allow_lossy_and_then_equal_the_server_alter() {
    let alter = "MODIFY amount DECIMAL(10,2), MODIFY at DATETIME, MODIFY ratio INT";
    for backend in ["sql", "local"] {
        let s = Schema::new(&format!("val_lossy_{backend}")).await;
        s.exec(
            "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, amount DECIMAL(10,4), at DATETIME(6), ratio DOUBLE)",
        )
        .await;
        let mut rows = Vec::new();
        for i in 1..=2000u64 {
            rows.push(format!(
                "({i}, {}.{:04}, '2024-03-{:02} 10:11:12.{:06}', {}.{})",
                i % 997,
                (i * 7919) % 10_000,
                1 + i % 28,
                (i * 104_729) % 1_000_000,
                i % 50,
                i % 10
            ));
        }
        s.exec(&format!("INSERT INTO t VALUES {}", rows.join(", ")))
            .await;
        s.exec("CREATE TABLE m LIKE t; INSERT INTO m SELECT * FROM t")
            .await;

        let refused = run_config(&s, alter, backend, "");
        let check = wraith_with_config(&["check"], &refused).await;
        assert_eq!(check.code, 3, "{backend}: {}", check.output());
        for needle in [
            "values that will change:",
            "column amount: decimal(10,4) -> decimal(10,2): values are rounded to 2 decimal(s)",
            "fractional seconds beyond 0 digit(s) are dropped",
            "fractional values are rounded to integers",
            "allow_lossy = true",
        ] {
            assert!(
                check.stderr.contains(needle),
                "{backend}: missing {needle:?}:\n{}",
                check.output()
            );
        }
        let run = wraith_with_config(&["run"], &refused).await;
        assert_eq!(run.code, 3, "{backend}: {}", run.output());
        assert_eq!(tables(&s).await, vec!["m".to_string(), "t".to_string()]);

        let allowed = run_config(&s, alter, backend, "allow_lossy = true");
        let check = wraith_with_config(&["check"], &allowed).await;
        assert_eq!(check.code, 0, "{backend}: {}", check.output());
        assert!(check.stderr.contains("values that will change:"));
        let run = wraith_with_config(&["run"], &allowed).await;
        assert_eq!(run.code, 0, "{backend}: {}", run.output());
        s.exec(&format!("ALTER TABLE m {alter}")).await;
        assert_eq!(
            s.rows("t").await,
            s.rows("m").await,
            "{backend}: values differ from the server's own ALTER"
        );
    }
}

#[tokio::test]
async fn a_value_refused_mid_run_drops_what_wraith_created() {
    // A row written after preflight's look that the new definition cannot
    // hold fails the run; it cannot be resumed, so nothing of wraith's stays.
    let s = Schema::new("val_midrun").await;
    s.exec("CREATE TABLE t (id INT NOT NULL PRIMARY KEY, n INT NULL)")
        .await;
    let mut rows = Vec::new();
    for i in 1..=5_000u64 {
        rows.push(format!("({i}, {i})"));
    }
    s.exec(&format!("INSERT INTO t VALUES {}", rows.join(", ")))
        .await;
    let before = s.snapshot("t").await;
    let flag = PostponeFlag::new();
    let cfg = run_config(&s, "MODIFY n INT NOT NULL", "sql", "")
        .replace("[cutover]\n", &format!("[cutover]\n{}\n", flag.setting()));
    let mut child = WraithChild::spawn(&["run"], &cfg);
    child
        .wait_for("cut-over postponed", std::time::Duration::from_secs(120))
        .await;
    assert!(s.table_exists("_t_new").await);
    let mut c = s.conn().await;
    c.query_drop("UPDATE t SET n = NULL WHERE id = 4999")
        .await
        .unwrap();
    let run = child.finish(std::time::Duration::from_secs(120)).await;
    assert_eq!(run.code, 1, "{}", run.output());
    for needle in [
        "this run cannot be resumed, so wraith dropped what it had created",
        "the shadow table",
        "the changelog table",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            run.output()
        );
    }
    let left: Vec<String> = tables(&s)
        .await
        .into_iter()
        .filter(|t| t != "t" && t != "_wraith_checkpoint")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", run.output());
    assert_eq!(
        s.snapshot("t").await.create,
        before.create,
        "the source changed"
    );
    let checkpoints: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM _wraith_checkpoint")
        .await
        .unwrap_or(Some(0));
    assert_eq!(checkpoints, Some(0), "the checkpoint was kept");
}

/// A column the ALTER adds NOT NULL without a DEFAULT (or drops and adds
/// again so): every row gets the type's implicit value, as the server's own
/// ALTER gives it, on every path (copy, changes applied during the run), and
/// the new table's definition is the server's (no DEFAULT left behind).
#[tokio::test]
async fn columns_added_not_null_without_a_default_get_the_servers_value_under_changes() {
    let alter = "DROP COLUMN note, ADD COLUMN note VARCHAR(40) NOT NULL, \
                 ADD COLUMN n INT UNSIGNED NOT NULL, ADD COLUMN e ENUM('x','y') NOT NULL, \
                 ADD COLUMN d DATETIME(3) NOT NULL, ADD COLUMN b BINARY(4) NOT NULL, \
                 ADD COLUMN i6 INET6 NOT NULL, ADD COLUMN bits BIT(5) NOT NULL, \
                 ADD COLUMN y YEAR NOT NULL";
    for (k, backend) in BACKENDS.iter().enumerate() {
        let s = Schema::new(&format!("val_implicit_{}", backend.replace('-', "_"))).await;
        s.exec(
            "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, ts TIMESTAMP(3) NULL, \
             dt DATETIME(3) NULL, note VARCHAR(40) NULL, KEY by_dt (dt))",
        )
        .await;
        let rows: Vec<String> = (1..=4000u64)
            .map(|i| format!("({i}, {}, {}, 'row {i}')", moment(i * 31), moment(i * 57)))
            .collect();
        s.exec(&format!("INSERT INTO t VALUES {}", rows.join(", ")))
            .await;
        s.exec("CREATE TABLE m LIKE t; INSERT INTO m SELECT * FROM t")
            .await;

        // A revert window could not give rows written to the old table a
        // value in the new one after a revert.
        let windowed = run_config(&s, "ADD COLUMN n INT NOT NULL", backend, "")
            .replace("[cutover]\n", "[cutover]\nrevert_window = \"1h\"\n");
        let check = wraith_with_config(&["check"], &windowed).await;
        assert_eq!(check.code, 3, "{backend}: {}", check.output());
        assert!(
            check
                .output()
                .contains("adds column `n` NOT NULL without a DEFAULT, so after a revert"),
            "{backend}: {}",
            check.output()
        );

        let flag = PostponeFlag::new();
        let cfg = run_config(&s, alter, backend, "")
            .replace("[cutover]\n", &format!("[cutover]\n{}\n", flag.setting()));
        let check = wraith_with_config(&["check"], &cfg).await;
        assert_eq!(check.code, 0, "{backend}: {}", check.output());
        for shown in [
            "note: added NOT NULL without a DEFAULT, so every row gets ''",
            "n: added NOT NULL without a DEFAULT, so every row gets '0'",
            "e: added NOT NULL without a DEFAULT, so every row gets 'x'",
            "d: added NOT NULL without a DEFAULT, so every row gets '0000-00-00 00:00:00.000'",
            "b: added NOT NULL without a DEFAULT, so every row gets X'00000000'",
            "i6: added NOT NULL without a DEFAULT, so every row gets '::'",
        ] {
            assert!(
                check.output().contains(shown),
                "{backend}: the plan does not show {shown:?}:\n{}",
                check.output()
            );
        }

        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let s = s.clone();
            let stop = stop.clone();
            tokio::spawn(async move { mirrored_writes(&s, stop, 97 + k as u64).await })
        };
        let mut child = WraithChild::spawn(&["run"], &cfg);
        child
            .wait_for("cut-over postponed", std::time::Duration::from_secs(180))
            .await;
        // Inserts and updates that only the change stream carries.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let committed = load.await.expect("load");
        drop(flag);
        let run = child.finish(std::time::Duration::from_secs(180)).await;
        assert_eq!(run.code, 0, "{backend}: {}", run.output());
        assert!(
            committed > 50,
            "{backend}: the load barely ran ({committed})"
        );

        s.exec(&format!("ALTER TABLE m {alter}")).await;
        let (rebuilt, oracle) = (s.snapshot("t").await, s.snapshot("m").await);
        assert_eq!(
            rebuilt.create,
            oracle
                .create
                .replacen("CREATE TABLE `m`", "CREATE TABLE `t`", 1),
            "{backend}: the definition differs from the server's own ALTER"
        );
        assert_eq!(
            rebuilt.rows.len(),
            oracle.rows.len(),
            "{backend}: row counts differ"
        );
        assert!(
            rebuilt.rows == oracle.rows,
            "{backend}: rows differ from the server's own ALTER; first: {:?}",
            rebuilt.rows.iter().zip(&oracle.rows).find(|(a, b)| a != b)
        );
        let mut c = s.conn().await;
        let inserted: Option<u64> = c
            .query_first("SELECT COUNT(*) FROM t WHERE id >= 100000 AND note = '' AND e = 'x'")
            .await
            .expect("count");
        assert!(
            inserted.unwrap_or(0) > 10,
            "{backend}: too few rows inserted during the run: {inserted:?}"
        );
    }
}
