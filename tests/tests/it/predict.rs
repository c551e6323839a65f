//! `wraith check`'s prediction against the real run: time within 2x, disk
//! within 30%, on a million rows.

use std::time::Instant;

use mysql_async::prelude::Queryable;
use wraith_tests::{wraith_with_config, Schema};

const ROWS: u64 = 1_000_000;

/// Bytes of the binlog's row events (and their table maps) for tables of
/// `schema`, from `start` (file, position) to the end: what one run wrote,
/// whatever other tests wrote beside it.
async fn binlog_bytes_of(s: &Schema, start: &(String, u64)) -> u64 {
    // MariaDB writes a table map's table as `table_id: 79 (schema.table)`.
    let needle = format!("({}.", s.name);
    let mut total = 0;
    let mut ours = false;
    for e in s.binlog_events_since(start).await {
        if e.kind == "Table_map" {
            ours = e.info.contains(&needle);
        }
        let rows_event = e.kind.ends_with("_rows_v1") || e.kind.ends_with("_rows");
        if ours && (e.kind == "Table_map" || rows_event) {
            total += e.end.saturating_sub(e.pos);
        }
    }
    total
}

async fn table_bytes(s: &Schema, table: &str) -> u64 {
    let mut c = s.conn().await;
    c.query_drop(format!("ANALYZE TABLE `{table}`"))
        .await
        .expect("analyze");
    let n: Option<u64> = c
        .exec_first(
            "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&s.name, table),
        )
        .await
        .expect("size");
    n.unwrap_or(0)
}

/// CRC aggregate of the old columns, to compare source and result.
async fn content(s: &Schema, table: &str) -> (u64, String) {
    let mut c = s.conn().await;
    let row: Option<(u64, String)> = c
        .query_first(format!(
            "SELECT COUNT(*), CONCAT(BIT_XOR(CRC32(CONCAT_WS('#', id, k, c, pad, created))), '/', \
             SUM(CRC32(CONCAT_WS('#', id, k, c, pad, created)))) FROM `{table}`"
        ))
        .await
        .expect("content");
    row.expect("one row")
}

/// Within `factor` times either way.
fn within(estimated: f64, measured: f64, factor: f64) -> bool {
    estimated <= measured * factor && estimated * factor >= measured
}

/// Within `share` of the measured value.
fn close(estimated: f64, measured: f64, share: f64) -> bool {
    (estimated - measured).abs() <= measured * share
}

#[tokio::test]
async fn check_predicts_time_and_disk_of_a_million_rows() {
    let _alone = crate::LATENCY_JUDGED.write().await;
    let s = Schema::new("pd_million").await;
    s.exec(
        "CREATE TABLE t (id INT UNSIGNED NOT NULL PRIMARY KEY, k INT NOT NULL, \
         c VARCHAR(120) NOT NULL, pad CHAR(60) NOT NULL, created DATETIME NOT NULL, KEY k_1 (k))",
    )
    .await;
    s.exec(&format!(
        "INSERT INTO t SELECT seq, FLOOR(RAND(seq) * 1000000), \
         CONCAT('row-', seq, '-', REPEAT(SUBSTR(MD5(seq), 1, 8), 1 + seq % 10)), MD5(seq * 7), \
         '2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_{ROWS}"
    ))
    .await;
    let before = content(&s, "t").await;
    let config = s.config(
        "t",
        "ADD COLUMN note VARCHAR(32) NOT NULL DEFAULT 'rebuilt'",
        "[cutover]\ndrop_old_table = false\n",
    );

    // The prediction.
    let check = wraith_with_config(&["check", "--json"], &config).await;
    assert_eq!(check.code, 0, "check failed:\n{}", check.output());
    let report: serde_json::Value =
        serde_json::from_str(&check.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", check.output()));
    let est = &report["estimate"]["tables"][0];
    let num = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .unwrap_or_else(|| panic!("no {what} in the estimate:\n{}", check.stdout))
    };
    let est_total = num(&est["total_secs"], "total_secs");
    let est_shadow = num(&est["shadow_bytes"], "shadow_bytes");
    let est_binlog = num(&est["binlog_bytes"], "binlog_bytes");
    let est_rows = num(&est["rows"], "rows");
    let sample_rows = num(&est["sample"]["rows"], "sample rows");
    assert!(sample_rows > 0.0, "no rows sampled:\n{}", check.stdout);
    assert!(
        close(est_rows, ROWS as f64, 0.1),
        "estimated {est_rows} rows of {ROWS}"
    );
    // The throwaway is gone, the source untouched, and the human report says it.
    assert!(!s.table_exists("_t_chk").await, "the sample table was left");
    assert_eq!(content(&s, "t").await, before);
    let human = wraith_with_config(&["check"], &config).await;
    assert_eq!(human.code, 0, "{}", human.output());
    for needle in [
        "estimated time: copy ~",
        "measured sample:",
        "estimated disk: shadow table",
    ] {
        assert!(
            human.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            human.output()
        );
    }
    assert!(
        human.stderr.contains("free, seen by") || human.stderr.contains("unknown"),
        "no free space said:\n{}",
        human.output()
    );

    // The real run.
    let start = s.binlog_now().await;
    let t0 = Instant::now();
    let run = wraith_with_config(&["run", "--json"], &config).await;
    let run_secs = t0.elapsed().as_secs_f64();
    assert_eq!(run.code, 0, "run failed:\n{}", run.output());
    let binlog = binlog_bytes_of(&s, &start).await as f64;
    let shadow = table_bytes(&s, "t").await as f64;
    assert_eq!(content(&s, "t").await, before, "the rebuilt table differs");

    let summary =
        format!(
        "time: estimated {est_total:.1}s, run {run_secs:.1}s; shadow: estimated {est_shadow:.0}, \
         used {shadow:.0}; binlog: estimated {est_binlog:.0}, written {binlog:.0}\n\
         estimate: {est}\nrun: {}",
        run.stderr.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
    eprintln!("{summary}");
    assert!(
        within(est_total, run_secs, 2.0),
        "time not within 2x: {summary}"
    );
    assert!(
        close(est_shadow, shadow, 0.3),
        "shadow not within 30%: {summary}"
    );
    assert!(
        close(est_binlog, binlog, 0.3),
        "binlog not within 30%: {summary}"
    );
}
