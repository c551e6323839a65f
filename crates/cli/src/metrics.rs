//! `wraith run --metrics-addr ADDR`: the run's progress as Prometheus text
//! metrics on `GET /metrics`. One endpoint, read-only, answered from the same
//! snapshot as the progress line and `status-json`: the job's totals
//! (`wraith_*`) and one series per table (`wraith_table_*{table="..."}`).

use std::fmt::Write as _;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wraith_engine::{Progress, ProgressHandle, TableProgress};

/// Binds `addr` and serves until the process ends.
pub async fn serve(addr: SocketAddr, progress: ProgressHandle) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]);
                let response = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                    let body = render(&progress.snapshot());
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}

/// The text exposition format of one snapshot.
pub fn render(p: &Progress) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64, labels: &str| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {value}"
        );
    };
    let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
    let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
    gauge(
        "wraith_rows_copied",
        "Rows copied into the shadow table.",
        copied as f64,
        "",
    );
    gauge(
        "wraith_rows_total",
        "Rows to copy (estimate until the copy ends).",
        total as f64,
        "",
    );
    gauge(
        "wraith_rows_per_second",
        "Copy rate since the start.",
        p.rows_per_sec,
        "",
    );
    gauge(
        "wraith_elapsed_seconds",
        "Time since the run started.",
        p.elapsed_secs,
        "",
    );
    gauge(
        "wraith_throttled",
        "1 while the copy is throttled.",
        if p.throttled.is_some() { 1.0 } else { 0.0 },
        "",
    );
    let state = format!("{{state=\"{}\"}}", p.current_state);
    gauge("wraith_state", "The run's current state.", 1.0, &state);
    if let Some(s) = &p.stream {
        gauge(
            "wraith_changes_received",
            "Row changes read from the binlog.",
            s.changes_received as f64,
            "",
        );
        gauge(
            "wraith_changes_applied",
            "Changes applied to the shadow table.",
            s.changes_applied as f64,
            "",
        );
        gauge(
            "wraith_changes_backlog",
            "Changes waiting to be applied.",
            s.changes_backlog as f64,
            "",
        );
        gauge(
            "wraith_binlog_lag_seconds",
            "How far behind the server the change stream reads.",
            s.lag_secs,
            "",
        );
    }
    if let Some(w) = &p.revert_window {
        gauge(
            "wraith_revert_window_seconds_left",
            "Time left in the revert window (the reverse backlog and lag are the changes_* and lag series).",
            w.seconds_left as f64,
            "",
        );
    }
    render_tables(&mut out, p);
    out
}

/// One series per table (label `table`), beside the job's totals above.
fn render_tables(out: &mut String, p: &Progress) {
    if p.tables.is_empty() {
        return;
    }
    let mut family = |name: &str, help: &str, value: &dyn Fn(&TableProgress) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for t in &p.tables {
            let _ = writeln!(
                out,
                "{name}{{table=\"{}\"}} {}",
                label_value(&t.table_name),
                value(t)
            );
        }
    };
    family(
        "wraith_table_rows_copied",
        "Rows of the table copied into its shadow table.",
        &|t| t.rows_copied as f64,
    );
    family(
        "wraith_table_rows_total",
        "Rows of the table to copy (estimate until its copy ends).",
        &|t| t.rows_total as f64,
    );
    family(
        "wraith_table_changes_applied",
        "Changes of the table applied to its shadow table.",
        &|t| t.changes_applied as f64,
    );
    family(
        "wraith_table_changes_backlog",
        "Changes of the table waiting to be applied.",
        &|t| t.changes_backlog as f64,
    );
    let _ = writeln!(
        out,
        "# HELP wraith_table_state The table's current state.\n# TYPE wraith_table_state gauge"
    );
    for t in &p.tables {
        let _ = writeln!(
            out,
            "wraith_table_state{{table=\"{}\",state=\"{}\"}} 1",
            label_value(&t.table_name),
            t.state
        );
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
pub(crate) fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_snapshot_as_text_metrics() {
        let progress = ProgressHandle::new();
        progress.add_table("t", 100).add_rows(40);
        let items = progress.table("o\"k", 10);
        items.add_rows(10);
        items.set_state(wraith_engine::State::Checksum);
        let addr = serve("127.0.0.1:0".parse().unwrap(), progress)
            .await
            .unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("\nwraith_rows_total 110\n"), "{text}");
        assert!(text.contains("wraith_state{state=\"Initial\"} 1"), "{text}");
        // Per table, beside the job's totals (50 of 110 rows).
        assert!(text.contains("\nwraith_rows_copied 50\n"), "{text}");
        for series in [
            "\nwraith_table_rows_copied{table=\"t\"} 40\n",
            "\nwraith_table_rows_total{table=\"t\"} 100\n",
            "\nwraith_table_rows_copied{table=\"o\\\"k\"} 10\n",
            "\nwraith_table_changes_backlog{table=\"t\"} 0\n",
            "\nwraith_table_state{table=\"t\",state=\"Initial\"} 1\n",
            "\nwraith_table_state{table=\"o\\\"k\",state=\"Checksum\"} 1\n",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE wraith_table_rows_copied gauge")
                .count(),
            1
        );
        let mut other = tokio::net::TcpStream::connect(addr).await.unwrap();
        other
            .write_all(b"GET /nope HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        other.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    }
}
