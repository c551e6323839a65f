//! Several `[[table]]`s in one job: the refusals of preflight, and
//! `together = false` for unrelated tables (the atomic swap of related
//! tables is tested in `multi`).

use mysql_async::prelude::Queryable;
use wraith_tests::Schema;

/// Two sysbench-like tables, `a` and `b`, with `rows` rows each.
async fn two_tables(s: &Schema, rows: u64) {
    let mut c = s.conn().await;
    for t in ["a", "b"] {
        wraith_engine::testkit::workload::create_sysbench_table(&mut c, &s.name, t, rows)
            .await
            .expect("create table");
    }
}

fn config(s: &Schema, rest: &str) -> String {
    format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
         [[table]]\nname = \"a\"\nalter = \"ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'x'\"\n\n\
         [[table]]\nname = \"b\"\nalter = \"ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'x'\"\n\n{rest}\n",
        s.port, s.name
    )
}

/// The `RENAME TABLE` statements the server logged for this schema since `from`.
async fn renames_since(s: &Schema, from: &(String, u64)) -> Vec<String> {
    s.binlog_events_since(from)
        .await
        .into_iter()
        .map(|e| e.info)
        .filter(|info| info.contains("RENAME TABLE") && info.contains(&s.name))
        .collect()
}

#[tokio::test]
async fn unrelated_tables_are_swapped_one_after_another() {
    let s = Schema::new("tg_apart").await;
    two_tables(&s, 2_000).await;
    let before_a = s.rows("a").await;
    let before_b = s.rows("b").await;
    let from = s.binlog_now().await;
    let dir = tempfile::tempdir().unwrap();
    let run = wraith_tests::wraith_with_config(
        &["run", "--json"],
        &config(
            &s,
            &format!(
                "[cutover]\ntogether = false\n\n[local]\nsort_dir = {:?}\n\n[control]\nsocket = {:?}",
                dir.path().join("sort").display().to_string(),
                dir.path().join("ctl.sock").display().to_string()
            ),
        ),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.output());
    let renames = renames_since(&s, &from).await;
    assert_eq!(renames.len(), 2, "one RENAME per table: {renames:#?}");
    assert!(
        renames
            .iter()
            .all(|r| r.contains("`_a_new`") != r.contains("`_b_new`")),
        "each RENAME swaps one table: {renames:#?}"
    );
    // The rows are the same, with the new column at its default.
    for (t, before) in [("a", before_a), ("b", before_b)] {
        let mut c = s.conn().await;
        let notes: Vec<String> = c
            .query(format!("SELECT DISTINCT note FROM {t}"))
            .await
            .expect("note");
        assert_eq!(notes, vec!["x".to_string()], "{t}");
        c.query_drop(format!("ALTER TABLE {t} DROP COLUMN note"))
            .await
            .expect("drop note");
        assert_eq!(s.rows(t).await, before, "{t} changed");
    }
}

#[tokio::test]
async fn a_lock_budget_too_small_for_the_tables_is_refused() {
    let s = Schema::new("tg_budget").await;
    two_tables(&s, 100).await;
    let before = s.snapshot("a").await;
    let run = wraith_tests::wraith_with_config(
        &["run"],
        &config(
            &s,
            "[cutover]\nlock_hold_budget = \"15ms\"\nlock_attempt_timeout = \"10ms\"",
        ),
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(
        run.stderr.contains("cutover_together") && run.stderr.contains("20ms"),
        "the refusal names the check and the budget needed: {}",
        run.output()
    );
    assert_eq!(s.snapshot("a").await, before);
    assert!(!s.table_exists("_a_new").await && !s.table_exists("_b_new").await);
    // The same tables apart fit the budget.
    let run = wraith_tests::wraith_with_config(
        &["check"],
        &config(
            &s,
            "[cutover]\ntogether = false\nlock_hold_budget = \"15ms\"\nlock_attempt_timeout = \"10ms\"",
        ),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.output());
}

/// Tables of two schemas of one server, changed together: one RENAME swaps
/// both, and the source rows come through.
#[tokio::test]
async fn tables_of_two_schemas_swap_in_one_rename() {
    let s = Schema::new("tg_two_a").await;
    let other = Schema::new("tg_two_b").await;
    for (schema, t) in [(&s, "a"), (&other, "b")] {
        let mut c = schema.conn().await;
        wraith_engine::testkit::workload::create_sysbench_table(&mut c, &schema.name, t, 3_000)
            .await
            .expect("create table");
    }
    let before = (s.rows("a").await, other.rows("b").await);
    let from = s.binlog_now().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
         [[table]]\nname = \"a\"\nalter = \"ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'x'\"\n\n\
         [[table]]\nschema = \"{}\"\nname = \"b\"\nalter = \"ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'x'\"\n\n\
         [local]\nsort_dir = {:?}\n\n[control]\nsocket = {:?}\n",
        s.port,
        s.name,
        other.name,
        dir.path().join("sort").display().to_string(),
        dir.path().join("ctl.sock").display().to_string()
    );
    let run = wraith_tests::wraith_with_config(&["run", "--json"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    let renames = renames_since(&s, &from).await;
    assert_eq!(
        renames.len(),
        1,
        "one RENAME for both schemas: {renames:#?}"
    );
    for name in [
        "`tg_two_a`.`a`",
        "`tg_two_a`.`_a_new`",
        "`tg_two_b`.`b`",
        "`tg_two_b`.`_b_new`",
    ] {
        assert!(renames[0].contains(name), "{name} in {}", renames[0]);
    }
    for (schema, t, rows) in [(&s, "a", before.0), (&other, "b", before.1)] {
        let mut c = schema.conn().await;
        c.query_drop(format!("ALTER TABLE {t} DROP COLUMN note"))
            .await
            .expect("the column was added");
        assert_eq!(schema.rows(t).await, rows, "{}.{t} changed", schema.name);
        assert!(schema.table_exists(&format!("_{t}_old")).await);
    }
}
