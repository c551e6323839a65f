//! `wraith serve --http`: the queue page in a real browser, its JSON and its
//! metrics, against a real registry that `submit` and `serve` filled.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wraith_tests::{browser, wraith_bin, wraith_with_config, Schema, WraithChild};

const REGISTRY: &str = "_wraith_q_page";

/// One request's row in the registry.
#[derive(Debug, Clone)]
struct Row {
    uuid: String,
    status: String,
    table_names: String,
    alter_statement: String,
    progress_pct: f64,
    rows_copied: u64,
}

async fn registry(s: &Schema) -> Vec<Row> {
    let mut c = s.conn().await;
    let rows: Vec<(String, String, String, String, f64, u64)> = c
        .query(format!(
            "SELECT uuid, status, table_names, alter_statement, progress_pct, rows_copied \
             FROM `{REGISTRY}`.`_wraith_migrations` ORDER BY id"
        ))
        .await
        .expect("read the registry");
    rows.into_iter()
        .map(
            |(uuid, status, table_names, alter_statement, progress_pct, rows_copied)| Row {
                uuid,
                status,
                table_names,
                alter_statement,
                progress_pct,
                rows_copied,
            },
        )
        .collect()
}

/// Waits until the registry shows `want` (uuid, status) for every pair.
async fn wait_for_statuses(s: &Schema, want: &[(&str, &str)], serve: &WraithChild) -> Vec<Row> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let rows = registry(s).await;
        let done = want
            .iter()
            .all(|(uuid, status)| rows.iter().any(|r| r.uuid == *uuid && r.status == *status));
        if done {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not reach {want:?} within 180 s: {rows:?}\n--- serve's stderr\n{}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A plain HTTP/1.1 GET (the tests have no HTTP client crate): the status
/// code, the lower-cased head and the body.
async fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("GET {path} took over 30 s"))
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head/body split in {raw:?}"));
    let head = head.to_ascii_lowercase();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, head, body)
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `s` as Chromium serializes a text node (`&`, `<`, `>`, no-break space escaped).
fn as_dom_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// The `<tr>` of one request in the rendered DOM.
fn dom_row<'a>(dom: &'a str, uuid: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-uuid=\"{uuid}\""))
        .unwrap_or_else(|| panic!("the page has no row for {uuid}:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_queue_in_a_browser_and_the_json_and_metrics_agree() {
    let s = Schema::new("q_page").await;
    s.exec(&format!(
        "DROP DATABASE IF EXISTS `{REGISTRY}`;
         CREATE TABLE t_a (id INT PRIMARY KEY, v VARCHAR(32));
         INSERT INTO t_a SELECT seq, CONCAT('a', seq) FROM seq_1_to_3000;
         CREATE TABLE t_b (id INT PRIMARY KEY, v VARCHAR(32));
         INSERT INTO t_b SELECT seq, CONCAT('b', seq) FROM seq_1_to_2000"
    ))
    .await;
    let config = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
         [registry]\nschema = \"{REGISTRY}\"\n",
        s.port, s.name
    );

    // Markup in an ALTER must reach the page as text.
    let alter_a = "ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT '<b>x</b>'";
    let submit_a =
        wraith_with_config(&["submit", "--table", "t_a", "--alter", alter_a], &config).await;
    assert_eq!(submit_a.code, 0, "{}", submit_a.output());
    let uuid_a = submit_a.stdout.trim().to_string();
    let submit_b = wraith_with_config(
        &[
            "submit",
            "--table",
            "t_b",
            "--alter",
            "ADD COLUMN d INT",
            "--postpone-completion",
        ],
        &config,
    )
    .await;
    assert_eq!(submit_b.code, 0, "{}", submit_b.output());
    let uuid_b = submit_b.stdout.trim().to_string();
    assert_eq!(
        uuid_a.len(),
        36,
        "submit prints the UUID: {}",
        submit_a.output()
    );
    assert_eq!(
        uuid_b.len(),
        36,
        "submit prints the UUID: {}",
        submit_b.output()
    );

    let mut serve = WraithChild::spawn(&["serve", "--http", "127.0.0.1:0"], &config);
    serve
        .wait_for("http: http://", Duration::from_secs(60))
        .await;
    let stderr = serve.stderr();
    let addr = stderr
        .lines()
        .find_map(|l| l.split("http: http://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no `http: http://ADDR/` line:\n{stderr}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "bound to localhost: {addr}");
    let url = format!("http://{addr}/");

    let rows = wait_for_statuses(&s, &[(&uuid_a, "complete"), (&uuid_b, "ready")], &serve).await;
    let row_a = rows.iter().find(|r| r.uuid == uuid_a).expect("a").clone();
    let row_b = rows.iter().find(|r| r.uuid == uuid_b).expect("b").clone();
    assert_eq!(
        row_a.progress_pct, 100.0,
        "a complete request is at 100%: {row_a:?}"
    );
    assert_eq!(row_a.rows_copied, 3000, "{row_a:?}");

    // The page, as Chromium renders it after its fetch.
    let dom = browser::dump_dom(&url).await;
    let tr_a = dom_row(&dom, &uuid_a);
    let tr_b = dom_row(&dom, &uuid_b);
    assert!(tr_a.contains("data-status=\"complete\""), "{tr_a}");
    assert!(tr_b.contains("data-status=\"ready\""), "{tr_b}");
    assert!(
        tr_a.contains("data-pct=\"100\""),
        "the complete one's bar: {tr_a}"
    );
    assert!(tr_a.contains("3,000 / "), "rows copied: {tr_a}");
    assert!(tr_b.contains("postponed"), "{tr_b}");
    assert!(
        tr_a.contains(&row_a.table_names) && row_a.table_names == "t_a",
        "{tr_a}"
    );
    assert!(
        tr_b.contains(&row_b.table_names) && row_b.table_names == "t_b",
        "{tr_b}"
    );
    assert!(
        tr_a.contains(&as_dom_text(&row_a.alter_statement)),
        "the ALTER as text ({:?}): {tr_a}",
        row_a.alter_statement
    );
    assert!(row_a.alter_statement.contains("'<b>x</b>'"), "{row_a:?}");
    assert!(!dom.contains("<b>x</b>"), "the ALTER became markup:\n{dom}");
    assert!(
        tr_b.contains(&as_dom_text(&row_b.alter_statement)),
        "{:?}: {tr_b}",
        row_b.alter_statement
    );
    assert!(
        dom.find(&uuid_b) < dom.find(&uuid_a),
        "newest first:\n{dom}"
    );
    assert!(
        dom.contains(&format!("{REGISTRY}._wraith_migrations")),
        "{dom}"
    );

    // The JSON agrees with the registry.
    let (code, head, body) = http_get(&addr, "/api/migrations").await;
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["registry"], format!("{REGISTRY}._wraith_migrations"));
    let list = json["migrations"].as_array().expect("migrations");
    let uuids: Vec<&str> = list.iter().filter_map(|m| m["uuid"].as_str()).collect();
    assert_eq!(uuids, [uuid_b.as_str(), uuid_a.as_str()], "newest first");
    for (m, row) in list.iter().zip([&row_b, &row_a]) {
        assert_eq!(m["status"], row.status.as_str(), "{m}");
        assert_eq!(m["rows_copied"], row.rows_copied, "{m}");
        assert_eq!(m["progress_pct"].as_f64(), Some(row.progress_pct), "{m}");
        assert_eq!(m["alter"], row.alter_statement.as_str(), "{m}");
        assert_eq!(m["tables"], serde_json::json!([row.table_names]), "{m}");
    }
    assert_eq!(list[0]["postpone_completion"], true);

    // The metrics agree too.
    let (code, head, metrics) = http_get(&addr, "/metrics").await;
    assert_eq!(code, 200, "{head}\n{metrics}");
    for (status, n) in [
        ("requested", 0),
        ("queued", 0),
        ("running", 0),
        ("ready", 1),
        ("complete", 1),
        ("failed", 0),
        ("cancelled", 0),
    ] {
        let line = format!("wraith_migrations{{status=\"{status}\"}} {n}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    for line in [
        format!("wraith_migration_progress_pct{{uuid=\"{uuid_a}\",table=\"t_a\"}} 100"),
        format!("wraith_migration_rows_copied{{uuid=\"{uuid_a}\",table=\"t_a\"}} 3000"),
        format!(
            "wraith_migration_rows_copied{{uuid=\"{uuid_b}\",table=\"t_b\"}} {}",
            row_b.rows_copied
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    // A picture for people, kept as a test artifact.
    let png = browser::artifacts_dir().join("queue-page.png");
    let _ = std::fs::remove_file(&png);
    browser::screenshot(&url, &png).await;
    let bytes = std::fs::read(&png).expect("read the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} is {} bytes: a blank page?",
        png.display(),
        bytes.len()
    );

    // Let the postponed one cut over, then stop serve.
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, &config).expect("write the server config");
    let complete = tokio::process::Command::new(wraith_bin())
        .arg("migrations")
        .arg(&config_path)
        .args(["complete", &uuid_b])
        .output()
        .await
        .expect("run wraith migrations complete");
    assert!(
        complete.status.success(),
        "wraith migrations complete: {}\n{}",
        complete.status,
        String::from_utf8_lossy(&complete.stderr)
    );
    wait_for_statuses(&s, &[(&uuid_b, "complete")], &serve).await;
    let mut c = s.conn().await;
    let cols: Vec<String> = c
        .query(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't_b' ORDER BY ORDINAL_POSITION",
        )
        .await
        .expect("columns");
    assert_eq!(cols, ["id", "v", "d"]);
    drop(c);
    serve.signal(libc::SIGTERM);
    let run = serve.finish(Duration::from_secs(60)).await;
    assert_eq!(run.code, 0, "{}", run.output());
}
