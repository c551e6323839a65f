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
async fn refuses_not_null_column_without_default_when_its_implicit_value_cannot_be_carried() {
    let s = Schema::new("pf_nodefault").await;
    s.exec(SBTEST).await;
    // The type's implicit value is '', which the column's JSON check
    // refuses (an instant ADD COLUMN would leave it in every row unchecked).
    let cfg = s.config("sbtest", "ADD COLUMN x JSON NOT NULL", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &[
            "column `x` of sbtest is added NOT NULL without a DEFAULT",
            "the type's implicit value cannot be carried",
            "CONSTRAINT",
            "give the ADD COLUMN an explicit default",
        ],
    )
    .await;
}

#[tokio::test]
async fn refuses_triggers_and_foreign_keys() {
    let s = Schema::new("pf_trig").await;
    s.exec(SBTEST).await;
    s.exec("CREATE TABLE audit (n INT); CREATE TRIGGER sb_ai AFTER INSERT ON sbtest FOR EACH ROW INSERT INTO audit VALUES (NEW.k)").await;
    // Triggers follow the table (see triggers.rs); one that uses a dropped column cannot.
    let cfg = s.config("sbtest", "DROP COLUMN k", "");
    assert_refused(&s, "sbtest", &cfg, &["trigger sb_ai", "uses NEW.k"]).await;

    let s = Schema::new("pf_fk").await;
    s.exec(SBTEST).await;
    s.exec("CREATE TABLE child (id INT PRIMARY KEY, p INT UNSIGNED, FOREIGN KEY fk_p (p) REFERENCES sbtest (id))").await;
    let cfg = s.config("sbtest", "FORCE", "");
    assert_refused(
        &s,
        "sbtest",
        &cfg,
        &[
            "is referenced by other tables' foreign keys",
            "pf_fk.child (constraint fk_p (p) -> sbtest (id)",
            "children = \"rebuild\"",
        ],
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

/// Tables wraith must not touch, and names an `alter` might try to create.
async fn assert_bystanders_untouched(s: &Schema) {
    assert!(s.table_exists("victim").await, "victim was dropped");
    assert_eq!(s.rows("victim").await.len(), 1);
    for stray in ["x", "_t_new", "_t_chk", "_wraith_changelog"] {
        assert!(!s.table_exists(stray).await, "{stray} was created");
    }
}

#[tokio::test]
async fn alter_with_a_second_statement_a_rename_or_another_table_is_refused_with_nothing_run() {
    let s = Schema::new("pf_alter_data").await;
    s.exec(&format!(
        "{}; CREATE TABLE victim (id INT PRIMARY KEY); INSERT INTO victim VALUES (1)",
        SBTEST.replace("sbtest", "t")
    ))
    .await;
    let sort_dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "[local]\nsort_dir = {:?}\n",
        sort_dir.path().display().to_string()
    );
    for (alter, needle) in [
        ("ADD COLUMN x INT; DROP TABLE victim", "holds a `;`"),
        ("ADD COLUMN x INT;DROP TABLE victim", "holds a `;`"),
        (
            "ADD COLUMN x INT -- note\n; DROP TABLE victim",
            "holds a `;`",
        ),
        (
            "ADD COLUMN x INT /* note */;DROP TABLE victim",
            "holds a `;`",
        ),
        (
            "ADD COLUMN x VARCHAR(5) DEFAULT 'a;b'; DROP TABLE victim",
            "holds a `;`",
        ),
        ("ADD COLUMN x INT /*! ; DROP TABLE victim */", "holds a `;`"),
        (
            "ADD COLUMN x INT /*M!100100 ; DROP TABLE victim */",
            "holds a `;`",
        ),
        ("RENAME TO x", "renames the table"),
        ("RENAME AS x", "renames the table"),
        ("ADD COLUMN y INT, RENAME x", "renames the table"),
        ("DROP TABLE victim", "statement of its own"),
        ("ALTER TABLE t ADD COLUMN x INT", "whole statement"),
        ("EXCHANGE PARTITION p0 WITH TABLE victim", "another table"),
    ] {
        let cfg = s.config("t", alter, &rest);
        assert_refused(&s, "t", &cfg, &[needle, "fix:"]).await;
        assert_bystanders_untouched(&s).await;
        let before = s.snapshot("t").await;
        let run = wraith_with_config(&["run"], &cfg).await;
        assert_eq!(run.code, 3, "{alter:?}: {}", run.output());
        assert!(run.stderr.contains(needle), "{alter:?}: {}", run.output());
        assert_eq!(before, s.snapshot("t").await, "{alter:?} changed t");
        assert_bystanders_untouched(&s).await;
    }
}

#[tokio::test]
async fn a_semicolon_inside_a_default_is_data_end_to_end() {
    let s = Schema::new("pf_alter_semicolon").await;
    s.exec(SBTEST).await;
    let sort_dir = tempfile::tempdir().unwrap();
    let cfg = s.config(
        "sbtest",
        "ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'a;b' -- a comment; with a semicolon",
        &format!(
            "[local]\nsort_dir = {:?}\n",
            sort_dir.path().display().to_string()
        ),
    );
    let run = wraith_with_config(&["run"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    let mut c = s.conn().await;
    let notes: Vec<String> = c
        .query("SELECT note FROM sbtest ORDER BY id")
        .await
        .unwrap();
    assert_eq!(notes, vec!["a;b"; 3]);
}

#[tokio::test]
async fn wraith_connections_refuse_a_second_statement() {
    let s = Schema::new("pf_multi_statements").await;
    s.exec("CREATE TABLE victim (id INT PRIMARY KEY); INSERT INTO victim VALUES (1)")
        .await;
    let config = wraith_engine::config::Config::parse(&s.config("victim", "FORCE", ""), "test")
        .expect("config");
    let opts = wraith_engine::server::connection_opts(&config.source).expect("opts");
    // A bare connection from the options, and one from wraith's pool.
    let mut bare = mysql_async::Conn::new(opts.clone()).await.expect("connect");
    let pool = wraith_engine::server::pool(opts, 2);
    let mut pooled = pool.get_conn().await.expect("connect");
    for conn in [&mut bare, &mut pooled] {
        let e = conn
            .query_drop("SELECT 1; DROP TABLE victim")
            .await
            .expect_err("a two-statement text must be refused");
        assert_eq!(
            wraith_engine::server::server_error_code(&e),
            Some(1064),
            "expected a syntax error from the server: {e}"
        );
        // One statement still works.
        let one: Option<u8> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
    }
    assert!(s.table_exists("victim").await);
    drop(pooled);
    let _ = pool.disconnect().await;
    let _ = bare.disconnect().await;
}

#[tokio::test]
async fn a_dropped_and_readded_column_holds_what_the_servers_alter_gives() {
    let s = Schema::new("pf_readd").await;
    let sort_dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "[local]\nsort_dir = {:?}\n",
        sort_dir.path().display().to_string()
    );
    for (i, alter) in [
        "DROP COLUMN c1, ADD COLUMN c1 INT NOT NULL DEFAULT 47",
        "DROP COLUMN c1, ADD COLUMN c1 INT NOT NULL DEFAULT 47 AFTER id",
        "DROP COLUMN c1, ADD COLUMN c1 VARCHAR(8) NOT NULL DEFAULT 'new' FIRST",
        "DROP COLUMN `c1`, ADD c1 BIGINT NULL DEFAULT 5 AFTER v, ADD COLUMN c2 INT DEFAULT 9",
    ]
    .into_iter()
    .enumerate()
    {
        let (t, native) = (format!("t{i}"), format!("native{i}"));
        s.exec(&format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, c1 INT NULL, v INT NOT NULL); \
             INSERT INTO {t} VALUES (1, 10, 1), (2, NULL, 2), (3, 30, 3), (4, NULL, 4); \
             CREATE TABLE {native} LIKE {t}; INSERT INTO {native} SELECT * FROM {t}; \
             ALTER TABLE {native} {alter}"
        ))
        .await;
        let cfg = s.config(&t, alter, &rest);
        let check = wraith_with_config(&["check"], &cfg).await;
        assert_eq!(check.code, 0, "{alter}: {}", check.output());
        assert!(
            check.stderr.contains("c1: added"),
            "{alter}: c1 must be planned as a new column:\n{}",
            check.output()
        );
        let run = wraith_with_config(&["run"], &cfg).await;
        assert_eq!(run.code, 0, "{alter}: {}", run.output());
        let (ours, theirs) = (s.snapshot(&t).await, s.snapshot(&native).await);
        assert_eq!(
            ours.rows, theirs.rows,
            "{alter}: rows differ from the server's own ALTER"
        );
        assert_eq!(
            ours.create.replace(&format!("`{t}`"), "T"),
            theirs.create.replace(&format!("`{native}`"), "T"),
            "{alter}"
        );
    }
}

#[tokio::test]
async fn a_view_or_a_sequence_is_refused() {
    let s = Schema::new("pf_view").await;
    s.exec(&format!(
        "{SBTEST}; CREATE VIEW v AS SELECT * FROM sbtest; CREATE SEQUENCE seq"
    ))
    .await;
    let cfg = s.config("v", "ADD COLUMN x INT", "");
    assert_refused(&s, "sbtest", &cfg, &["is a VIEW, not a base table"]).await;
    let cfg = s.config("seq", "ADD COLUMN x INT", "");
    assert_refused(&s, "sbtest", &cfg, &["is a SEQUENCE, not a base table"]).await;
}

#[tokio::test]
async fn paths_that_cannot_work_are_refused_before_anything_is_created() {
    let s = Schema::new("pf_paths").await;
    s.exec(SBTEST).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let hooks_file = tmp.path().join("hooks");
    std::fs::create_dir(&hooks_file).unwrap();
    std::fs::write(hooks_file.join("on-before-cut-over"), "#!/bin/sh\nexit 0\n").unwrap();
    let sort_dir = tmp.path().join("sort");
    let p = |path: &std::path::Path| format!("{:?}", path.display().to_string());
    let base = format!("[local]\nsort_dir = {}\n", p(&sort_dir));
    let missing = tmp.path().join("missing");
    for (rest, needle) in [
        (
            format!("{base}[hooks]\ndir = {}\n", p(&missing)),
            "[hooks] dir",
        ),
        (
            format!("{base}[hooks]\ndir = {}\n", p(&file)),
            "is not a directory",
        ),
        (
            format!("{base}[hooks]\ndir = {}\n", p(&hooks_file)),
            "cannot be executed",
        ),
        (
            format!(
                "{base}[checkpoint]\nstore = \"file\"\npath = {}\n",
                p(&missing.join("cp"))
            ),
            "[checkpoint] path",
        ),
        (
            format!(
                "{base}[checkpoint]\nstore = \"file\"\npath = {}\n",
                p(tmp.path())
            ),
            "is a directory",
        ),
        (
            format!("[local]\nsort_dir = {}\n", p(&file.join("sort"))),
            "[local] sort_dir",
        ),
        (
            format!("{base}[changes]\ndir = {}\n", p(&file)),
            "[changes] dir",
        ),
        (
            format!("{base}[control]\nsocket = {}\n", p(&file)),
            "is not a socket",
        ),
        (
            format!("{base}[control]\nsocket = {}\n", p(&file.join("s.sock"))),
            "[control] socket",
        ),
        (
            format!(
                "{base}[control]\nsocket = {}\n",
                p(&tmp.path().join("s".repeat(120)))
            ),
            "at most 107",
        ),
    ] {
        let cfg = s.config("sbtest", "ADD COLUMN note INT", &rest);
        assert_refused(&s, "sbtest", &cfg, &[needle]).await;
        let run = wraith_with_config(&["run"], &cfg).await;
        assert_eq!(run.code, 3, "{rest}: {}", run.output());
        assert!(run.stderr.contains(needle), "{rest}: {}", run.output());
        assert!(
            !sort_dir.exists(),
            "{rest}: run created {}",
            sort_dir.display()
        );
        assert!(!s.table_exists("_sbtest_new").await);
    }
    // A missing password_file: named, refused.
    let cfg = s.config("sbtest", "ADD COLUMN note INT", &base).replace(
        "user = \"root\"",
        &format!("user = \"root\"\npassword_file = {}", p(&missing)),
    );
    assert_refused(&s, "sbtest", &cfg, &["password_file"]).await;
}
