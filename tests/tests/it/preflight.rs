//! `wraith check`: refusals against real server states, and the plan.

use mysql_async::prelude::Queryable;
use wraith_tests::{misconfigured_server, wraith_with_config, Schema};

const SBTEST: &str = "CREATE TABLE sbtest (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
    k INT NOT NULL DEFAULT 0, c CHAR(20) NOT NULL DEFAULT '', pad VARCHAR(30), KEY k_1 (k)); \
    INSERT INTO sbtest (k, c, pad) VALUES (1, 'a', NULL), (2, 'b', 'x'), (3, 'c', 'yy')";

/// Runs `wraith check` and asserts a refusal (exit 3) whose output contains
/// every one of `needles`; also asserts the table and its rows are unchanged
/// and the throwaway copy is gone.
async fn assert_refused(s: &Schema, table: &str, config: &str, needles: &[&str]) {
    let before = if s.table_exists(table).await {
        Some(s.snapshot(table).await)
    } else {
        None
    };
    let run = wraith_with_config(&["check"], config).await;
    assert_eq!(
        run.code,
        3,
        "expected a preflight refusal:\n{}",
        run.output()
    );
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "missing {n:?} in:\n{}",
            run.output()
        );
    }
    assert!(
        run.stderr.contains("fix:"),
        "a refusal must say how to fix it:\n{}",
        run.output()
    );
    if let Some(before) = before {
        assert_eq!(before, s.snapshot(table).await, "the source table changed");
    }
    assert!(
        !s.table_exists(&format!("_{table}_chk")).await,
        "throwaway copy left behind"
    );
}

#[tokio::test]
async fn refuses_table_without_usable_key() {
    let s = Schema::new("pf_nokey").await;
    s.exec("CREATE TABLE t (a INT, b INT NULL, UNIQUE KEY u (b)); INSERT INTO t VALUES (1, 1), (1, NULL)").await;
    let cfg = s.config("t", "ADD COLUMN c INT", "");
    assert_refused(
        &s,
        "t",
        &cfg,
        &[
            "no PRIMARY KEY and no UNIQUE key on NOT NULL columns",
            "ADD PRIMARY KEY",
        ],
    )
    .await;
}

#[tokio::test]
async fn refuses_alter_dropping_primary_key() {
    let s = Schema::new("pf_droppk").await;
    s.exec(SBTEST).await;
    let cfg = s.config(
        "sbtest",
        "DROP PRIMARY KEY, MODIFY id INT UNSIGNED NOT NULL",
        "",
    );
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &["after the ALTER", "would have no PRIMARY KEY"],
    )
    .await;
}

#[tokio::test]
async fn refuses_alter_with_syntax_error() {
    let s = Schema::new("pf_syntax").await;
    s.exec(SBTEST).await;
    let cfg = s.config("sbtest", "ADD COLUMN x INT,, DROP COLUMN c", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &[
            "the ALTER does not apply",
            "SQL syntax",
            "fix [[table]] alter",
        ],
    )
    .await;
}

#[tokio::test]
async fn refuses_missing_table() {
    let s = Schema::new("pf_missing").await;
    let cfg = s.config("nosuch", "FORCE", "");
    assert_refused(&s, "nosuch", &cfg, &["pf_missing.nosuch does not exist"]).await;
}

#[tokio::test]
async fn refuses_not_null_column_without_default() {
    let s = Schema::new("pf_nodefault").await;
    s.exec(SBTEST).await;
    let cfg = s.config("sbtest", "ADD COLUMN x INT NOT NULL", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &["adds column x as NOT NULL without a DEFAULT"],
    )
    .await;
}

#[tokio::test]
async fn refuses_triggers_and_foreign_keys() {
    let s = Schema::new("pf_trig").await;
    s.exec(SBTEST).await;
    s.exec("CREATE TABLE audit (n INT); CREATE TRIGGER sb_ai AFTER INSERT ON sbtest FOR EACH ROW INSERT INTO audit VALUES (NEW.k)").await;
    let cfg = s.config("sbtest", "FORCE", "");
    assert_refused(&s, "sbtest", &cfg, &["has triggers (sb_ai)"]).await;

    let s = Schema::new("pf_fk").await;
    s.exec(SBTEST).await;
    s.exec("CREATE TABLE child (id INT PRIMARY KEY, p INT UNSIGNED, FOREIGN KEY fk_p (p) REFERENCES sbtest (id))").await;
    let cfg = s.config("sbtest", "FORCE", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &["takes part in foreign keys", "child -> sbtest"],
    )
    .await;
}

#[tokio::test]
async fn refuses_statement_binlog_format() {
    let s = Schema::on(misconfigured_server(), "pf_stmt").await;
    s.exec(SBTEST).await;
    let cfg = s.config("sbtest", "FORCE", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &[
            "binlog_format is STATEMENT",
            "SET GLOBAL binlog_format = 'ROW'",
        ],
    )
    .await;
}

#[tokio::test]
async fn refuses_minimal_row_image_and_metadata() {
    let s = Schema::on(misconfigured_server(), "pf_minimal").await;
    s.exec(SBTEST).await;
    let cfg = s.config("sbtest", "FORCE", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &[
            "binlog_row_image is MINIMAL",
            "SET GLOBAL binlog_row_image = 'FULL'",
            "binlog_row_metadata is MINIMAL",
            "SET GLOBAL binlog_row_metadata = 'FULL'",
        ],
    )
    .await;
}

#[tokio::test]
async fn refuses_user_without_replication_privileges() {
    let s = Schema::new("pf_priv").await;
    s.exec(SBTEST).await;
    s.exec(
        "DROP USER IF EXISTS 'norepl'@'127.0.0.1'; \
         CREATE USER 'norepl'@'127.0.0.1' IDENTIFIED BY 's3cret-pw'; \
         GRANT ALL PRIVILEGES ON `pf_priv`.* TO 'norepl'@'127.0.0.1'",
    )
    .await;
    let cfg = s.config("sbtest", "FORCE", "").replace(
        "user = \"root\"",
        "user = \"norepl\"\npassword = \"s3cret-pw\"",
    );
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &[
            "norepl lacks REPLICATION SLAVE, BINLOG MONITOR",
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.*",
        ],
    )
    .await;
    let run = wraith_with_config(&["check", "-vv"], &cfg).await;
    assert!(
        !run.output().contains("s3cret-pw"),
        "password printed:\n{}",
        run.output()
    );
}

#[tokio::test]
async fn wrong_password_is_refused_without_printing_it() {
    let s = Schema::new("pf_badpw").await;
    s.exec(SBTEST).await;
    let cfg = s.config("sbtest", "FORCE", "").replace(
        "user = \"root\"",
        "user = \"nobody\"\npassword = \"wrong-Pa55\"",
    );
    let run = wraith_with_config(&["check", "-vvv"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(
        run.stderr.contains("cannot talk to nobody@127.0.0.1"),
        "{}",
        run.output()
    );
    assert!(
        !run.output().contains("wrong-Pa55"),
        "password printed:\n{}",
        run.output()
    );
}

#[tokio::test]
async fn plan_maps_added_dropped_renamed_and_retyped_columns() {
    let s = Schema::new("pf_plan").await;
    s.exec(
        "CREATE TABLE t (id BIGINT NOT NULL, a INT, b VARCHAR(10), c VARCHAR(10), d INT, e TEXT, \
         PRIMARY KEY (id), KEY ka (a), UNIQUE KEY ub (b)); INSERT INTO t VALUES (1, 2, 'x', 'y', 4, 'e')",
    )
    .await;
    let before = s.snapshot("t").await;
    let cfg = s.config(
        "t",
        "ADD COLUMN added INT NOT NULL DEFAULT 7, DROP COLUMN a, CHANGE COLUMN b b2 VARCHAR(10), \
         MODIFY d BIGINT, ADD KEY kd (d)",
        "[table.rename_columns]\ne = \"e2\"\n",
    );
    // The config renames e; the ALTER must do the rename too, or the server would not have e2.
    let cfg = cfg.replace("ADD KEY kd (d)", "ADD KEY kd (d), RENAME COLUMN e TO e2");
    let run = wraith_with_config(&["check"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    for line in [
        "chunk key:   id (PRIMARY)",
        "id: kept",
        "a: dropped",
        "b -> b2: renamed",
        "c: kept",
        "d: type changed int(11) -> bigint(20)",
        "e -> e2: renamed",
        "added: added, default 7",
        "KEY `kd` (`d`)",
        "backend:     sql",
    ] {
        assert!(
            run.stderr.contains(line),
            "plan lacks {line:?}:\n{}",
            run.output()
        );
    }
    // The unique key is not deferred: REPLACE needs it in place to stay exact.
    assert!(!run.stderr.contains("UNIQUE KEY `ub`"), "{}", run.output());

    let json = wraith_with_config(&["check", "--json"], &cfg).await;
    assert_eq!(json.code, 0, "{}", json.output());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json report");
    let cols = &v["plans"][0]["columns"];
    assert_eq!(cols[0], serde_json::json!({"kind": "kept", "name": "id"}));
    assert_eq!(cols[1], serde_json::json!({"kind": "dropped", "name": "a"}));
    assert_eq!(
        cols[2],
        serde_json::json!({"kind": "renamed", "from": "b", "to": "b2"})
    );
    assert_eq!(v["plans"][0]["new_key"], serde_json::json!(["id"]));
    assert_eq!(before, s.snapshot("t").await, "check changed the table");
}

#[tokio::test]
async fn plan_for_primary_key_change_picks_local_backend() {
    let s = Schema::new("pf_pkchange").await;
    s.exec("CREATE TABLE t (a INT NOT NULL, b INT NOT NULL, v TEXT, PRIMARY KEY (a, b))")
        .await;
    let cfg = s.config("t", "DROP PRIMARY KEY, ADD PRIMARY KEY (b, a)", "");
    let run = wraith_with_config(&["check"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("new key:     b, a"), "{}", run.output());
    assert!(
        run.stderr
            .contains("backend:     local (auto: the new primary key orders rows differently"),
        "{}",
        run.output()
    );
}

#[tokio::test]
async fn rename_without_alter_support_is_refused() {
    let s = Schema::new("pf_badrename").await;
    s.exec(SBTEST).await;
    let cfg = s.config("sbtest", "FORCE", "[table.rename_columns]\nc = \"c_new\"\n");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &["c is renamed to c_new, but the new table has no column c_new"],
    )
    .await;
}

/// A check killed mid-way leaves `_t_chk`: an empty copy of the source's
/// definition is dropped by the next check; one holding rows is someone's
/// data and is refused, untouched.
#[tokio::test]
async fn leftover_check_table_is_dropped_only_when_empty_and_wraiths() {
    let s = Schema::new("pf_leftover").await;
    s.exec(SBTEST).await;
    s.exec("CREATE TABLE _sbtest_chk LIKE sbtest").await;
    let cfg = s.config("sbtest", "ADD COLUMN note INT", "");
    let run = wraith_with_config(&["check"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!s.table_exists("_sbtest_chk").await);

    s.exec("CREATE TABLE _sbtest_chk LIKE sbtest; INSERT INTO _sbtest_chk (k) VALUES (7)")
        .await;
    let run = wraith_with_config(&["check"], &cfg).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(
        run.stderr.contains("_sbtest_chk already exists") && run.stderr.contains("fix:"),
        "{}",
        run.output()
    );
    let mut c = s.conn().await;
    let kept: Vec<i32> = c.query("SELECT k FROM _sbtest_chk").await.unwrap();
    assert_eq!(kept, vec![7], "the leftover with rows was changed");
}
