//! `wraith serve --http ADDR`: the migration queue for people and for
//! monitoring, read-only. Three routes, all answered from one snapshot of the
//! registry (the `/api/migrations` JSON of the issue-17 contract):
//!
//! - `GET /` the page: one HTML document with inline CSS and JS, no external
//!   assets and no build step. It fetches `/api/migrations` every 2 s and
//!   draws a table of the requests (newest first, as the JSON orders them)
//!   with status, a progress bar, ETA, rows, rows/s, stage, retries, times
//!   and the last message; a failed fetch shows an error line and keeps the
//!   last data on screen.
//! - `GET /api/migrations` the snapshot JSON; 500 with `{"error": "..."}`
//!   when the snapshot fails (the registry is unreachable, say).
//! - `GET /metrics` Prometheus text from the same JSON: requests by status
//!   (every status, zeros too) and per request its progress, rows, rate and ETA.
//!
//! Everything else is 404. The HTTP is axum's (hyper underneath); this module
//! only routes and renders. What the snapshot holds is the caller's: `serve`
//! reads the registry, this module never touches the server.
//!
//! Safety of the page: requests carry text written by whoever submitted them
//! (the ALTER) and by the server (messages), so the page inserts every string
//! from the JSON as text (`textContent`, attribute setters), never as markup,
//! and the responses carry a Content-Security-Policy that allows only the
//! page's own inline style and script and fetches to its own origin.
//! Binding to localhost is the caller's default; there is no authentication.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

/// One read of the registry, as the `/api/migrations` JSON; `Err` is a
/// message for the operator.
pub type SnapshotFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;
/// Makes a fresh snapshot for every request.
pub type Snapshot = Arc<dyn Fn() -> SnapshotFuture + Send + Sync>;

/// Every status a request can have, in the order of its life.
const STATUSES: [&str; 7] = [
    "requested",
    "queued",
    "running",
    "ready",
    "complete",
    "failed",
    "cancelled",
];

/// The page only runs its own inline script and style and fetches its own origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const PAGE: &str = include_str!("serve_http_page.html");

/// Binds `addr` and serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, snapshot: Snapshot) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(snapshot);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the http server on {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

fn router(snapshot: Snapshot) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/migrations", get(migrations))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(snapshot)
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Every answer is a live view: never serve a cached one.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn migrations(State(snapshot): State<Snapshot>) -> Response {
    match snapshot().await {
        Ok(json) => json_response(StatusCode::OK, &json),
        Err(e) => snapshot_failed(&e),
    }
}

async fn metrics(State(snapshot): State<Snapshot>) -> Response {
    match snapshot().await {
        Ok(json) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render_metrics(&json),
        )
            .into_response(),
        Err(e) => snapshot_failed(&e),
    }
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not found: the routes are /, /api/migrations and /metrics"}),
    )
}

fn snapshot_failed(message: &str) -> Response {
    tracing::warn!("http: cannot read the registry: {message}");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({ "error": format!("cannot read the registry: {message}") }),
    )
}

fn json_response(status: StatusCode, json: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// Prometheus text (exposition format 0.0.4) of a `/api/migrations` snapshot.
fn render_metrics(json: &Value) -> String {
    let empty = Vec::new();
    let migrations = json["migrations"].as_array().unwrap_or(&empty);
    let mut out = String::new();
    out.push_str("# HELP wraith_migrations Requests in the registry, by status.\n");
    out.push_str("# TYPE wraith_migrations gauge\n");
    for status in STATUSES {
        let n = migrations
            .iter()
            .filter(|m| m["status"].as_str() == Some(status))
            .count();
        let _ = writeln!(out, "wraith_migrations{{status=\"{status}\"}} {n}");
    }
    let series: [(&str, &str, &str); 6] = [
        (
            "wraith_migration_progress_pct",
            "progress_pct",
            "Percent of the request's rows copied (100 once complete).",
        ),
        (
            "wraith_migration_rows_copied",
            "rows_copied",
            "Rows copied into the shadow table so far.",
        ),
        (
            "wraith_migration_rows_total",
            "rows_total",
            "Rows to copy (the estimate the progress is measured against).",
        ),
        (
            "wraith_migration_rows_per_sec",
            "rows_per_sec",
            "Recent copy rate in rows per second.",
        ),
        (
            "wraith_migration_eta_seconds",
            "eta_seconds",
            "Estimated seconds until the copy ends (absent while unknown).",
        ),
        (
            "wraith_migration_retries",
            "retries",
            "Times the request was retried.",
        ),
    ];
    for (name, field, help) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for m in migrations {
            // null (an unknown ETA) has no sample: Prometheus has no "unknown".
            let Some(value) = number(&m[field]) else {
                continue;
            };
            let tables = match &m["tables"] {
                Value::Array(t) => t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.as_str().unwrap_or_default().to_string(),
            };
            let _ = writeln!(
                out,
                "{name}{{uuid=\"{}\",table=\"{}\"}} {value}",
                crate::metrics::label_value(m["uuid"].as_str().unwrap_or_default()),
                crate::metrics::label_value(&tables),
            );
        }
    }
    out
}

/// A JSON number as a sample value: integers exactly, floats as Rust prints them.
fn number(v: &Value) -> Option<String> {
    if let Some(i) = v.as_i64() {
        Some(i.to_string())
    } else if let Some(u) = v.as_u64() {
        Some(u.to_string())
    } else {
        v.as_f64().map(|f| f.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Markup in an ALTER and a message; its handler must never run (not
    /// `alert`, which would hang the headless browser instead of failing).
    const HOSTILE: &str = "<img src=x onerror=document.title=1>";

    fn contract_snapshot() -> Value {
        serde_json::json!({
            "server": "127.0.0.1:3306",
            "registry": "_wraith._wraith_migrations",
            "serve": {"pid": 123, "concurrency": 2, "started_at": "2026-12-02 08:10:00"},
            "migrations": [
                {"uuid": "5f0c3a4e-0000-4000-8000-00000000000b", "status": "running", "schema": "app",
                 "tables": ["t1", "t\"2"], "alter": format!("ALTER TABLE `t1` COMMENT '{HOSTILE}'"),
                 "stage": "CopyRows", "progress_pct": 42.5, "eta_seconds": 12, "rows_copied": 1000,
                 "rows_total": 2000, "rows_per_sec": 500.0, "message": format!("copying {HOSTILE}"),
                 "added_at": "2026-12-02 08:10:01", "started_at": "2026-12-02 08:10:02",
                 "ready_at": null, "completed_at": null, "retries": 1, "postpone_completion": true,
                 "in_order_completion": false, "cancel_requested": false},
                {"uuid": "5f0c3a4e-0000-4000-8000-00000000000a", "status": "complete", "schema": "app",
                 "tables": ["t0"], "alter": "ALTER TABLE `t0` ADD COLUMN c INT",
                 "stage": "Done", "progress_pct": 100.0, "eta_seconds": null, "rows_copied": 2000,
                 "rows_total": 2000, "rows_per_sec": 0.0, "message": "",
                 "added_at": "2026-12-02 08:10:00", "started_at": "2026-12-02 08:10:00",
                 "ready_at": null, "completed_at": "2026-12-02 08:10:05", "retries": 0,
                 "postpone_completion": false, "in_order_completion": false, "cancel_requested": false}
            ]
        })
    }

    fn fixed(json: Value) -> Snapshot {
        Arc::new(move || {
            let json = json.clone();
            Box::pin(async move { Ok(json) })
        })
    }

    /// One plain HTTP/1.1 GET; returns the status line, headers and body.
    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
        (head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn routes_answer_with_json_metrics_and_security_headers() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), fixed(contract_snapshot()))
            .await
            .expect("bind");

        let (head, body) = get(addr, "/").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(body.contains("<script>"), "the page carries its script");
        assert!(
            !body.contains("src=\"http") && !body.contains("href=\"http"),
            "no external assets"
        );

        let (head, body) = get(addr, "/api/migrations").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let got: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(got, contract_snapshot());

        let (head, body) = get(addr, "/metrics").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        for line in [
            "wraith_migrations{status=\"requested\"} 0",
            "wraith_migrations{status=\"queued\"} 0",
            "wraith_migrations{status=\"running\"} 1",
            "wraith_migrations{status=\"ready\"} 0",
            "wraith_migrations{status=\"complete\"} 1",
            "wraith_migrations{status=\"failed\"} 0",
            "wraith_migrations{status=\"cancelled\"} 0",
            "wraith_migration_progress_pct{uuid=\"5f0c3a4e-0000-4000-8000-00000000000b\",table=\"t1,t\\\"2\"} 42.5",
            "wraith_migration_progress_pct{uuid=\"5f0c3a4e-0000-4000-8000-00000000000a\",table=\"t0\"} 100",
            "wraith_migration_rows_copied{uuid=\"5f0c3a4e-0000-4000-8000-00000000000b\",table=\"t1,t\\\"2\"} 1000",
            "wraith_migration_eta_seconds{uuid=\"5f0c3a4e-0000-4000-8000-00000000000b\",table=\"t1,t\\\"2\"} 12",
            "wraith_migration_rows_per_sec{uuid=\"5f0c3a4e-0000-4000-8000-00000000000b\",table=\"t1,t\\\"2\"} 500",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
        assert!(
            !body.contains(
                "wraith_migration_eta_seconds{uuid=\"5f0c3a4e-0000-4000-8000-00000000000a\""
            ),
            "an unknown ETA has no sample:\n{body}"
        );

        let (head, _) = get(addr, "/nope").await;
        assert!(head.starts_with("http/1.1 404"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    }

    #[tokio::test]
    async fn a_failed_snapshot_is_a_500_with_the_reason() {
        let failing: Snapshot =
            Arc::new(|| Box::pin(async { Err("Access denied for user 'wraith'".to_string()) }));
        let addr = serve("127.0.0.1:0".parse().unwrap(), failing)
            .await
            .expect("bind");
        for path in ["/api/migrations", "/metrics"] {
            let (head, body) = get(addr, path).await;
            assert!(head.starts_with("http/1.1 500"), "{path}: {head}");
            let got: Value = serde_json::from_str(&body).expect("json error body");
            assert_eq!(
                got["error"],
                "cannot read the registry: Access denied for user 'wraith'"
            );
        }
    }

    /// The page in a real browser: hostile strings from the JSON show as
    /// text, and the rows, badges and bars carry what the JSON says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_page_renders_the_json_as_text_in_chromium() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), fixed(contract_snapshot()))
            .await
            .expect("bind");
        let url = format!("http://{addr}/");
        let dom = wraith_tests::browser::dump_dom(&url).await;
        // For people: how the page looks with the contract's example data.
        let png = wraith_tests::browser::artifacts_dir().join("queue-page-fixture.png");
        wraith_tests::browser::screenshot(&url, &png).await;

        assert!(
            !dom.contains("<img"),
            "the hostile ALTER became an element:\n{dom}"
        );
        assert!(
            dom.contains("COMMENT '&lt;img src=x onerror=document.title=1&gt;'"),
            "the ALTER is shown as text:\n{dom}"
        );
        assert!(
            dom.contains("copying &lt;img src=x onerror=document.title=1&gt;"),
            "the message is shown as text:\n{dom}"
        );
        let running = row(&dom, "5f0c3a4e-0000-4000-8000-00000000000b");
        assert!(running.contains("data-status=\"running\""), "{running}");
        assert!(running.contains("data-pct=\"42.5\""), "{running}");
        assert!(running.contains("1,000 / 2,000"), "{running}");
        assert!(
            running.contains("title=\"CopyRows\">Copy<wbr>Rows<"),
            "{running}"
        );
        assert!(running.contains(">12s<"), "the ETA: {running}");
        assert!(running.contains("postponed"), "{running}");
        let complete = row(&dom, "5f0c3a4e-0000-4000-8000-00000000000a");
        assert!(complete.contains("data-status=\"complete\""), "{complete}");
        assert!(complete.contains("data-pct=\"100\""), "{complete}");
        // Newest first, as the JSON orders them.
        assert!(
            dom.find("00000000000b").unwrap() < dom.find("00000000000a").unwrap(),
            "{dom}"
        );
        assert!(
            dom.contains("<title>wraith · 127.0.0.1:3306</title>"),
            "the server in the title (a hostile handler would have changed it):\n{dom}"
        );
        assert!(dom.contains("_wraith._wraith_migrations"), "the registry");
        assert!(
            error_tag(&dom).contains("hidden"),
            "no error line while the fetch works:\n{dom}"
        );
    }

    /// A failed fetch shows a visible error line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_page_shows_a_failed_fetch() {
        let failing: Snapshot =
            Arc::new(|| Box::pin(async { Err("the registry is gone".to_string()) }));
        let addr = serve("127.0.0.1:0".parse().unwrap(), failing)
            .await
            .expect("bind");
        let dom = wraith_tests::browser::dump_dom(&format!("http://{addr}/")).await;
        assert!(
            !error_tag(&dom).contains("hidden"),
            "the error line is hidden:\n{dom}"
        );
        let start = dom.find("id=\"error\"").unwrap_or(0);
        let line = &dom[start..start + dom[start..].find("</p>").unwrap_or(0)];
        assert!(
            line.contains("cannot read the registry: the registry is gone (HTTP 500)"),
            "{line}"
        );
    }

    /// The opening tag of the page's error line.
    fn error_tag(dom: &str) -> &str {
        let start = dom
            .find("<p id=\"error\"")
            .unwrap_or_else(|| panic!("no error line:\n{dom}"));
        &dom[start..start + dom[start..].find('>').unwrap_or(0)]
    }

    /// The `<tr>` of one request, as the browser rendered it.
    fn row<'a>(dom: &'a str, uuid: &str) -> &'a str {
        let start = dom
            .find(&format!("<tr data-uuid=\"{uuid}\""))
            .unwrap_or_else(|| panic!("no row for {uuid}:\n{dom}"));
        let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
        &dom[start..end]
    }
}
