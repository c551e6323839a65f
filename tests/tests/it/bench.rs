//! `wraith bench` end to end: the binary starts its own scratch server, runs
//! every method idle and under the write load, and checks each result. This
//! test looks at the shape of the JSON and the correctness flags, never at
//! timings (speed is the benchmark's business, not a test's).

use std::time::Duration;

use wraith_tests::wraith_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_method_and_checks_each_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("bench.json");
    let plot_path = dir.path().join("bench.svg");
    let mut cmd = tokio::process::Command::new(wraith_bin());
    cmd.args([
        "bench",
        "--rows",
        "20000",
        "--repeat",
        "1",
        "--baseline-secs",
        "1",
    ])
    .args(["--buffer-pool", "256M", "--load-rate", "100"])
    .arg("--json")
    .arg(&json_path)
    .arg("--plot")
    .arg(&plot_path)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("wraith bench did not finish within 600s")
        .expect("run wraith bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wraith bench failed:\n{stderr}\n{stdout}"
    );
    let text = std::fs::read_to_string(&json_path).expect("the JSON results");
    let results: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");

    let summary = results["summary"].as_array().expect("a summary");
    let skipped = results["skipped"].as_array().expect("a skipped list");
    for method in [
        "wraith-sql",
        "wraith-local",
        "native-inplace",
        "native-copy",
        "pt-osc",
    ] {
        if method == "pt-osc" && skipped.iter().any(|s| s["method"] == method) {
            continue;
        }
        for condition in ["idle", "load"] {
            let s = summary
                .iter()
                .find(|s| s["method"] == method && s["condition"] == condition)
                .unwrap_or_else(|| panic!("no summary for {method} {condition}:\n{text}"));
            assert_eq!(s["all_correct"], true, "{method} {condition}: {s}");
            assert!(
                s["wall_secs_median"].as_f64().is_some_and(|t| t > 0.0),
                "{method} {condition}: {s}"
            );
            assert!(s["rows_per_sec"].as_f64().is_some_and(|r| r > 0.0));
        }
    }
    let runs = results["runs"].as_array().expect("runs");
    assert!(!runs.is_empty());
    for run in runs {
        assert_eq!(run["correct"], true, "{run}");
        assert!(run["wall_secs"].as_f64().is_some_and(|t| t > 0.0), "{run}");
        let comparison = &run["comparison"];
        for field in ["rows_match", "checksum_match", "definition_match"] {
            assert_eq!(comparison[field], true, "{field}: {run}");
        }
        if run["method"]
            .as_str()
            .is_some_and(|m| m.starts_with("wraith"))
        {
            assert!(run["cutover_blocked_ms"].as_f64().is_some(), "{run}");
            assert!(
                run["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0),
                "{run}"
            );
        }
        if run["condition"] == "load" {
            assert!(
                run["load_during"]["transactions"].as_u64().is_some(),
                "{run}"
            );
        }
    }
    assert_eq!(results["tables"][0]["rows"], 20000);
    let svg = std::fs::read_to_string(&plot_path).expect("the plot");
    assert!(svg.contains("<svg") && svg.contains("wraith-sql"), "{svg}");
}
