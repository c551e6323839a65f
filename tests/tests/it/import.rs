//! `wraith import`: dumps written by the real tools (mydumper, mariadb-dump)
//! and generated CSV, loaded with both backends into a real scratch server,
//! compared by queries of the tests' own.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use wraith_tests::{server, wraith_with_config, Schema, WraithChild};

fn import_config(s: &Schema, dir: &Path, import_extra: &str, sections: &str) -> String {
    let sort_dir = std::env::temp_dir().join(format!("wraith-test-sort-{}", s.name));
    format!(
        "[target]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"{}\"\n\n\
         [import]\ndir = {:?}\n{import_extra}\n\n{sections}\n\n[local]\nsort_dir = {:?}\n",
        s.port,
        s.name,
        dir.display().to_string(),
        sort_dir.display().to_string()
    )
}

async fn import_ok(config: &str) -> serde_json::Value {
    let run = wraith_with_config(&["import", "--json"], config).await;
    assert_eq!(run.code, 0, "wraith import failed:\n{}", run.output());
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.output()))
}

/// Every value of a table as hex, ordered by the first column.
async fn hex_rows(s: &Schema, table: &str) -> Vec<String> {
    s.rows(table).await
}

const TYPES: &str = "CREATE TABLE types (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  f FLOAT, d DOUBLE, dec1 DECIMAL(65,30), dec2 DECIMAL(10,2),
  c CHAR(10), vc VARCHAR(200), t TEXT, lc VARCHAR(20) CHARACTER SET latin1,
  b BINARY(4), vb VARBINARY(20), bl BLOB,
  dt DATE, tm TIME(6), dtt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
  e ENUM('a','b','ö'), s SET('x','y','z'), bt BIT(64), bt1 BIT(1), j JSON,
  KEY k_i (i), KEY k_vc (vc(10))
) DEFAULT CHARSET=utf8mb4";

const TYPES_ROWS: &str = "INSERT INTO types VALUES
 (1, -128, 0, -32768, -2147483648, 0, -9223372036854775808, 0, -1.5, -1.7976931348623157e308,
  '-99999999999999999999999999999999999.999999999999999999999999999999', -99999999.99,
  '', '', '', '', x'00000000', x'', x'', '1000-01-01', '-838:59:59.000000',
  '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 1901, 'a', '', b'0', b'0', '{}'),
 (2, 127, 255, 32767, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
  0.25, 5e-324, '99999999999999999999999999999999999.999999999999999999999999999999', 99999999.99,
  'abc', 'quote '' dq \" bs \\\\ nl \\n cr \\r tab \\t nul \\0 z \\Z pct \\\\% us \\\\_ end', 'emoji 😀 and ü 𝄞', 'ÿé',
  x'00FF0A27', x'005C2722', x'000102030405060708090A0B0C0D0E0F1A1B1C1D1E1F20272225305C5F7F80FF',
  '9999-12-31', '838:59:59.999999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
  'ö', 'x,y,z', b'1111111111111111111111111111111111111111111111111111111111111111', b'1',
  '{\"k\": \"ünïcødé 😀\", \"n\": [1, 2.5, null]}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 1, 0, 0, 1, 0, 1, -0.0, 1e300, '0.000000000000000000000000000001', 0.01,
  ' lead', ' ', 'x', 'Ä', x'61', x'61', x'61', '0000-00-00', '-00:00:00.000001',
  '0000-00-00 00:00:00.000000', '2016-12-31 23:59:59.999999', 0, 'b', 'y', b'1000', b'0', '[]')";

async fn types_source(name: &str) -> Schema {
    let s = Schema::new(name).await;
    s.exec(&format!("{TYPES}; {TYPES_ROWS}")).await;
    s
}

fn run_tool(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mydumper(db: &str, table: &str, dir: &Path, extra: &[&str]) {
    run_tool(
        std::process::Command::new("mydumper")
            .arg(format!("--socket={}", server().socket().display()))
            .args(["--user", "root", "--database", db])
            // mydumper 0.10 takes bare table names with --database.
            .arg(format!("--tables-list={table}"))
            .arg(format!("--outputdir={}", dir.display()))
            .args(extra),
    );
}

fn mariadb_dump(db: &str, table: &str, dir: &Path) {
    for (suffix, flag) in [(".sql", "--no-create-info"), ("-schema.sql", "--no-data")] {
        let out = std::process::Command::new("mariadb-dump")
            .arg("--no-defaults")
            .arg(format!("--socket={}", server().socket().display()))
            .args(["--user", "root", flag, db, table])
            .output()
            .expect("mariadb-dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.join(format!("{db}.{table}{suffix}")), out.stdout).expect("write dump");
    }
}

#[tokio::test]
async fn dumps_of_every_type_by_mydumper_and_mariadb_dump_round_trip() {
    let src = types_source("imp_types_src").await;
    let want = hex_rows(&src, "types").await;
    assert_eq!(want.len(), 4);
    for tool in ["mydumper", "mariadb_dump"] {
        let dir = tempfile::tempdir().expect("tempdir");
        match tool {
            "mydumper" => mydumper(&src.name, "types", dir.path(), &[]),
            _ => mariadb_dump(&src.name, "types", dir.path()),
        }
        // The sql path by LOAD DATA and by INSERTs, and the local engine.
        for (backend, load_data, sent_by) in [
            ("sql", true, "load-data"),
            ("sql", false, "insert"),
            ("local", true, "local-engine"),
        ] {
            let dst = Schema::new(&format!("imp_types_{tool}_{sent_by}")).await;
            let report = import_ok(&import_config(
                &dst,
                dir.path(),
                &format!("backend = \"{backend}\"\nload_data = {load_data}\nverify = \"checksum\""),
                "",
            ))
            .await;
            assert_eq!(report["backend"], backend);
            assert_eq!(report["rows_sent_by"], sent_by, "{report}");
            assert_eq!(report["tables"][0]["checksum_verified"], true, "{report}");
            assert_eq!(report["tables"][0]["created"], true, "{report}");
            assert_eq!(report["tables"][0]["rows_in_table"], 4);
            let stages: Vec<&str> = report["stages"]
                .as_array()
                .expect("stages")
                .iter()
                .filter_map(|s| s["stage"].as_str())
                .collect();
            assert_eq!(
                stages,
                ["plan", "checkpoint", "load", "finish", "cleanup"],
                "{report}"
            );
            let staged: f64 = report["stages"]
                .as_array()
                .expect("stages")
                .iter()
                .filter_map(|s| s["secs"].as_f64())
                .sum();
            assert!(
                staged <= report["elapsed_secs"].as_f64().expect("elapsed") + 0.001,
                "{report}"
            );
            assert_eq!(
                want,
                hex_rows(&dst, "types").await,
                "{tool} dump imported by {sent_by} differs from the source"
            );
            // The deferred secondary indexes are back (local), the definition is the source's.
            let sc = src.snapshot("types").await.create;
            assert_eq!(sc, dst.snapshot("types").await.create, "{tool}/{sent_by}");
        }
    }
}

#[tokio::test]
async fn compressed_and_chunked_mydumper_output() {
    let src = Schema::new("imp_mydumper_chunks_src").await;
    let mut c = src.conn().await;
    wraith_engine::testkit::workload::create_sysbench_table(&mut c, &src.name, "sbtest", 30_000)
        .await
        .expect("sbtest");
    drop(c);
    let dir = tempfile::tempdir().expect("tempdir");
    mydumper(
        &src.name,
        "sbtest",
        dir.path(),
        &["--rows=7000", "--compress"],
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().filter(|n| n.ends_with(".sql.gz")).count() > 2,
        "{names:?}"
    );
    let dst = Schema::new("imp_mydumper_chunks_dst").await;
    let report = import_ok(&import_config(&dst, dir.path(), "backend = \"local\"", "")).await;
    assert!(
        report["tables"][0]["files"].as_u64().unwrap() > 2,
        "{report}"
    );
    assert_eq!(
        hex_rows(&src, "sbtest").await,
        hex_rows(&dst, "sbtest").await
    );
}

/// id, hex of a, hex of b (None for NULL).
type ExpectedRow<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[tokio::test]
async fn csv_edge_cases_with_both_backends() {
    // id, a, b: quoted separators and newlines, doubled and escaped quotes,
    // \N versus empty, 4-byte UTF-8, CRLF, no final newline.
    let csv: &[u8] = b"id,a,b\r\n\
        1,\"x,y\",\"line1\nline2\"\r\n\
        2,\"say \"\"hi\"\"\",\"back\\\"slash\\\\\"\r\n\
        3,\\N,\r\n\
        4,\"\",\"\\N\"\r\n\
        5,\xF0\x9F\x98\x80 ok,\"\xF0\x9D\x84\x9E\"\r\n\
        6,tab\\there,\"cr\rinside\"";
    let want: Vec<ExpectedRow<'_>> = vec![
        (1, Some(b"x,y"), Some(b"line1\nline2")),
        (2, Some(b"say \"hi\""), Some(b"back\"slash\\")),
        (3, None, Some(b"")),
        (4, Some(b""), Some(b"N")),
        (5, Some("😀 ok".as_bytes()), Some("𝄞".as_bytes())),
        (6, Some(b"tab\there"), Some(b"cr\rinside")),
    ];
    let tsv: &[u8] = b"1\tplain\t\\N\n2\twith \\t tab\tq\"uote\n";
    // No header line: the columns come from [import.csv] columns.
    let body = &csv[8..];
    for (backend, load_data) in [("sql", true), ("sql", false), ("local", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("edge.csv"), body).unwrap();
        let mut z = zstd_file(&dir.path().join("edge2.csv.zst"));
        z.write_all(body).unwrap();
        z.finish().unwrap();
        std::fs::write(dir.path().join("tabs.tsv"), tsv).unwrap();
        let s = Schema::new(&format!("imp_csv_{backend}_{load_data}")).await;
        s.exec(
            "CREATE TABLE edge (id INT PRIMARY KEY, a VARCHAR(50) NULL, b TEXT NULL) DEFAULT CHARSET=utf8mb4; \
             CREATE TABLE edge2 LIKE edge; \
             CREATE TABLE tabs (id INT PRIMARY KEY, a VARCHAR(50), b VARCHAR(50) NULL)",
        )
        .await;
        let cfg = import_config(
            &s,
            dir.path(),
            &format!("backend = \"{backend}\"\nload_data = {load_data}"),
            "[import.csv]\nheader = false\ncolumns = [\"id\", \"a\", \"b\"]\n",
        );
        let report = import_ok(&cfg).await;
        assert_eq!(report["tables"].as_array().unwrap().len(), 3, "{report}");
        for table in ["edge", "edge2"] {
            let mut c = s.conn().await;
            let rows: Vec<(i64, Option<String>, Option<String>)> = c
                .query(format!(
                    "SELECT id, HEX(a), HEX(b) FROM {table} ORDER BY id"
                ))
                .await
                .unwrap();
            let expected: Vec<(i64, Option<String>, Option<String>)> = want
                .iter()
                .map(|(id, a, b)| (*id, a.map(hex), b.map(hex)))
                .collect();
            assert_eq!(
                rows, expected,
                "{backend} (load_data = {load_data}): {table}"
            );
        }
        let mut c = s.conn().await;
        let rows: Vec<(i64, String, Option<String>)> = c
            .query("SELECT id, a, b FROM tabs ORDER BY id")
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "plain".into(), None),
                (2, "with \t tab".into(), Some("q\"uote".into()))
            ]
        );
    }
}

fn zstd_file(path: &Path) -> zstd::stream::write::Encoder<'static, std::fs::File> {
    zstd::stream::write::Encoder::new(std::fs::File::create(path).unwrap(), 1).unwrap()
}

/// The generated table: every value is a function of `id` that SQL can
/// compute too, so the check is exact without reading the file back.
fn big_row(id: u64, out: &mut Vec<u8>) {
    let c = if id % 997 == 0 {
        format!("\"{id}, \"\"multi\nline\"\"\"")
    } else {
        format!("{id}-{}", "abcdefghij".repeat(10 + (id % 5) as usize))
    };
    let pad = ((b'a' + (id % 26) as u8) as char).to_string().repeat(60);
    writeln!(out, "{id},{},{c},{pad}", id * 7 % 1000).unwrap();
}

const BIG_CHECK: &str = "SELECT COUNT(*), COALESCE(SUM(NOT (k <=> id * 7 % 1000 \
    AND c <=> IF(id % 997 = 0, CONCAT(id, ', \"multi\\nline\"'), CONCAT(id, '-', REPEAT('abcdefghij', 10 + id % 5))) \
    AND pad <=> REPEAT(CHAR(97 + id % 26), 60))), 0) FROM big";

fn write_big_csv(path: &Path, rows: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"id,k,c,pad\n").unwrap();
    let mut buf = Vec::with_capacity(256);
    for id in 1..=rows {
        buf.clear();
        big_row(id, &mut buf);
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

const BIG_TABLE: &str =
    "CREATE TABLE big (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, k INT NOT NULL, \
    c VARCHAR(200) NOT NULL, pad CHAR(60) NOT NULL, KEY k_1 (k))";

async fn check_big(s: &Schema, rows: u64) {
    let mut c = s.conn().await;
    let (n, bad): (u64, u64) = c.query_first(BIG_CHECK).await.unwrap().unwrap();
    assert_eq!(
        (n, bad),
        (rows, 0),
        "rows in big, rows that differ from the generator"
    );
}

#[tokio::test]
async fn a_large_csv_is_split_into_regions_parsed_in_parallel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 300_000;
    write_big_csv(&dir.path().join("big.csv"), rows);
    let size = std::fs::metadata(dir.path().join("big.csv")).unwrap().len();
    assert!(size > 50 << 20, "{size}");
    let s = Schema::new("imp_big").await;
    s.exec(BIG_TABLE).await;
    let report = import_ok(&import_config(
        &s,
        dir.path(),
        "backend = \"local\"\nregion_size = \"4MiB\"\nthreads = 4",
        "",
    ))
    .await;
    assert!(report["regions"].as_u64().unwrap() >= 10, "{report}");
    assert!(
        report["max_concurrent_regions"].as_u64().unwrap() > 1,
        "regions were not parsed concurrently: {report}"
    );
    assert_eq!(report["rows"], rows);
    assert_eq!(report["tables"][0]["deferred_indexes"], 1);
    check_big(&s, rows).await;
    assert!(s.snapshot("big").await.create.contains("KEY `k_1`"));
}

#[tokio::test]
async fn duplicates_across_files_follow_on_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dup.00001.csv"), "id,v\n1,a\n2,b\n").unwrap();
    std::fs::write(dir.path().join("dup.00002.csv"), "id,v\n2,B\n3,c\n").unwrap();
    let cases = [
        ("error", "sql", None),
        ("error", "sql-insert", None),
        ("error", "local", None),
        ("replace", "sql", Some(vec!["1a", "2B", "3c"])),
        ("ignore", "sql", Some(vec!["1a", "2b", "3c"])),
        ("replace", "auto", Some(vec!["1a", "2B", "3c"])),
    ];
    for (mode, backend, want) in cases {
        let s = Schema::new(&format!("imp_dup_{mode}_{}", backend.replace('-', "_"))).await;
        s.exec("CREATE TABLE dup (id INT PRIMARY KEY, v VARCHAR(5))")
            .await;
        // `sql-insert`: the sql backend with INSERT statements instead of LOAD DATA.
        let backend_toml = match backend {
            "sql-insert" => "backend = \"sql\"\nload_data = false".to_string(),
            b => format!("backend = \"{b}\""),
        };
        let cfg = import_config(
            &s,
            dir.path(),
            &format!("{backend_toml}\non_duplicate = \"{mode}\"\nthreads = 2"),
            "",
        );
        let run = wraith_with_config(&["import", "--json"], &cfg).await;
        match want {
            None => {
                assert_eq!(run.code, 1, "{mode}/{backend}: {}", run.output());
                assert!(
                    run.stderr.contains("duplicate key")
                        && (run.stderr.contains("'2'") || run.stderr.contains("(2)"))
                        && (run.stderr.contains("PRIMARY") || run.stderr.contains("key (id)")),
                    "{mode}/{backend}: {}",
                    run.output()
                );
            }
            Some(want) => {
                assert_eq!(run.code, 0, "{mode}/{backend}: {}", run.output());
                let mut c = s.conn().await;
                let got: Vec<String> = c
                    .query("SELECT CONCAT(id, v) FROM dup ORDER BY id")
                    .await
                    .unwrap();
                assert_eq!(got, want, "{mode}/{backend}");
                let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                assert_eq!(report["tables"][0]["duplicates_resolved"], 1, "{report}");
            }
        }
    }
}

/// How many stderr lines of `child` contain `needle`.
fn count_lines(child: &WraithChild, needle: &str) -> usize {
    child
        .stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The kill is aimed at the riskiest moment: a region's rows are durable
/// (committed with their marker on the sql path, flushed into the engine on
/// the local one) but the checkpoint does not record the region yet (the
/// test hook holds each region there for 3 s). The rerun must then take the
/// region's status and sums together, or redo both.
#[tokio::test]
async fn kill_nine_during_an_import_then_rerun_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 150_000;
    write_big_csv(&dir.path().join("big.csv"), rows);
    for backend in ["sql", "local"] {
        let s = Schema::new(&format!("imp_kill_{backend}")).await;
        s.exec(BIG_TABLE).await;
        let cfg = import_config(
            &s,
            dir.path(),
            &format!(
                "backend = \"{backend}\"\nregion_size = \"1MiB\"\nthreads = 2\nverify = \"checksum\""
            ),
            "",
        );
        let mut child = WraithChild::spawn_with_env(
            &["import", "-vv"],
            &cfg,
            &[("WRAITH_TEST_REGION_PAUSE_MS", "3000")],
        );
        // One region recorded, and another durable but not yet recorded.
        child
            .wait_for("region loaded", Duration::from_secs(120))
            .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while count_lines(&child, "region durable") <= count_lines(&child, "region loaded") {
            assert!(
                std::time::Instant::now() < deadline && !child.try_finished(),
                "{backend}: no region became durable after the first was recorded:\n{}",
                child.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.signal(libc::SIGKILL);
        let killed = child.finish(Duration::from_secs(30)).await;
        assert_ne!(
            killed.code, 0,
            "{backend}: the import finished before the kill"
        );
        assert_tables(&s, &["big"], false, &format!("{backend} killed")).await;
        let report = import_ok(&cfg).await;
        assert_eq!(report["resumed"], true, "{report}");
        assert!(
            report["tables"][0]["regions_resumed"].as_u64().unwrap() > 0,
            "{backend}: {report}"
        );
        check_big(&s, rows).await;
        assert!(s.snapshot("big").await.create.contains("KEY `k_1`"));
        assert_tables(&s, &["big"], true, &format!("{backend} rerun")).await;
        // The resumed regions' sums came from the checkpoint (or, on the sql
        // path, from the markers committed with their rows), the rest from
        // this run: together they match the table read back.
        assert_eq!(report["tables"][0]["checksum_verified"], true, "{report}");
    }
}

/// A trigger that changes a value on the way in keeps the row count right;
/// `verify = "checksum"` still catches it (with each way of writing), and
/// a clean table passes.
#[tokio::test]
async fn checksum_verification_catches_rows_changed_on_the_way_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("t.csv"),
        "id,v,d\n1,a,1.5\n2,b,-0.25\n3,c,10\n4,,\\N\n",
    )
    .unwrap();
    for (backend, load_data) in [("sql", true), ("sql", false), ("local", true)] {
        for tampered in [false, true] {
            let s = Schema::new(&format!("imp_verify_{backend}_{load_data}_{tampered}")).await;
            // DECIMAL(6,3): the server stores 1.500 for the file's 1.5, which
            // is the same value and must not count as a change.
            s.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(5), d DECIMAL(6,3) NULL)")
                .await;
            if tampered {
                s.exec("CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.v = IF(NEW.id = 3, 'C', NEW.v)")
                    .await;
            }
            let cfg = import_config(
                &s,
                dir.path(),
                &format!("backend = \"{backend}\"\nload_data = {load_data}\nverify = \"checksum\""),
                "",
            );
            let run = wraith_with_config(&["import", "--json"], &cfg).await;
            if tampered {
                assert_eq!(run.code, 1, "{backend}/{load_data}: {}", run.output());
                assert!(
                    run.stderr.contains("differ from the rows parsed"),
                    "{backend}/{load_data}: {}",
                    run.output()
                );
            } else {
                assert_eq!(run.code, 0, "{backend}/{load_data}: {}", run.output());
                let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                assert_eq!(report["tables"][0]["checksum_verified"], true, "{report}");
            }
        }
    }
    // Checksums need every row kept: with on_duplicate = "replace" the
    // config is refused before anything is read.
    let s = Schema::new("imp_verify_refused").await;
    s.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(5), d DECIMAL(6,3) NULL)")
        .await;
    let run = wraith_with_config(
        &["import"],
        &import_config(
            &s,
            dir.path(),
            "verify = \"checksum\"\non_duplicate = \"replace\"",
            "",
        ),
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.output());
    assert!(
        run.stderr.contains("verify = \"checksum\""),
        "{}",
        run.output()
    );
    let mut c = s.conn().await;
    let n: Option<u64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(n, Some(0));
}

#[tokio::test]
async fn malformed_input_names_file_offset_and_line() {
    let cases: [(&str, &str, &[u8], &str); 4] = [
        (
            "bad_quote",
            "t.csv",
            b"id,v\n1,a\n2,\"open\n3,c\n",
            "t.csv: byte offset 11, line 3",
        ),
        (
            "columns",
            "t.csv",
            b"id,v\n1,a\n2,b,extra\n",
            "t.csv: byte offset 9, line 3",
        ),
        (
            "number",
            "t.csv",
            b"id,v\n1,a\n2x,b\n",
            "t.csv: byte offset 9, line 3",
        ),
        (
            "sql",
            "db.t.sql",
            b"INSERT INTO `t` VALUES (1,'a'),\n(2,'b'),\n(3x,'c');\n",
            "db.t.sql: byte offset 42, line 3",
        ),
    ];
    for (name, file, body, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(file), body).unwrap();
        let s = Schema::new(&format!("imp_bad_{name}")).await;
        s.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(5))")
            .await;
        let run = wraith_with_config(&["import"], &import_config(&s, dir.path(), "", "")).await;
        assert_eq!(run.code, 1, "{name}: {}", run.output());
        assert!(
            run.stderr.contains(want),
            "{name}: want {want:?} in\n{}",
            run.output()
        );
    }
}

/// The tables of a schema, by name.
async fn tables_of(s: &Schema) -> Vec<String> {
    let mut c = s.conn().await;
    c.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
        (&s.name,),
    )
    .await
    .unwrap()
}

/// What an unfinished import keeps for its rerun, as config/README.md lists
/// it ("Names wraith creates" of import jobs).
const KEPT_FOR_RERUN: [&str; 2] = ["_wraith_checkpoint", "_wraith_import_regions"];

/// After a finished import only the imported tables are there; after a
/// failed one, at most what a rerun needs.
async fn assert_tables(s: &Schema, imported: &[&str], finished: bool, what: &str) {
    let tables = tables_of(s).await;
    for t in &tables {
        assert!(
            imported.contains(&t.as_str()) || (!finished && KEPT_FOR_RERUN.contains(&t.as_str())),
            "{what}: table {t} is left in {} ({tables:?})",
            s.name
        );
    }
    for t in imported {
        assert!(
            tables.iter().any(|x| x == t),
            "{what}: {t} is missing ({tables:?})"
        );
    }
}

/// Paths, the database and the charset are judged before anything is
/// loaded: `wraith import --check`, `wraith check` and `wraith import`
/// itself refuse with exit 3 and the fix, and nothing is created.
#[tokio::test]
async fn import_preflight_refuses_a_bad_dir_database_or_charset_before_loading() {
    let good = tempfile::tempdir().expect("tempdir");
    std::fs::write(good.path().join("t.csv"), "id,v\n1,a\n2,b\n").unwrap();
    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::write(empty.path().join("README"), "not data").unwrap();
    let bad_names = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        bad_names.path().join("db.t.sql"),
        "/*!40101 SET NAMES klingon */;\nINSERT INTO `t` VALUES (1,'a');\n",
    )
    .unwrap();
    let s = Schema::new("imp_preflight").await;
    s.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(5))")
        .await;
    let missing = good.path().join("nowhere");
    let a_file = good.path().join("t.csv");
    let cases: Vec<(&str, &Path, String, &str, &str)> = vec![
        (
            "missing dir",
            &missing,
            String::new(),
            "does not exist",
            "set [import] dir",
        ),
        (
            "dir is a file",
            &a_file,
            String::new(),
            "is not a directory",
            "set [import] dir",
        ),
        (
            "no data files",
            empty.path(),
            String::new(),
            "no data files",
            "[[import.mapping]]",
        ),
        (
            "unknown charset",
            good.path(),
            "charset = \"klingon\"".into(),
            "the server knows no charset \"klingon\"",
            "SHOW CHARACTER SET",
        ),
        (
            "unknown SET NAMES",
            bad_names.path(),
            String::new(),
            "\"klingon\" (SET NAMES in db.t.sql)",
            "SHOW CHARACTER SET",
        ),
    ];
    for (what, dir, extra, seen, fix) in &cases {
        let cfg = import_config(&s, dir, extra, "");
        for args in [&["import", "--check"][..], &["check"][..], &["import"][..]] {
            let run = wraith_with_config(args, &cfg).await;
            assert_eq!(run.code, 3, "{what} {args:?}: {}", run.output());
            assert!(
                run.stderr.contains(seen) && run.stderr.contains(fix),
                "{what} {args:?}: want {seen:?} and {fix:?} in\n{}",
                run.output()
            );
        }
        assert_tables(&s, &["t"], true, what).await;
    }
    // A database that is not there, and no schema file to create tables from.
    let gone = Schema::new("imp_preflight_gone").await;
    gone.exec("DROP DATABASE imp_preflight_gone").await;
    let cfg = import_config(&gone, good.path(), "", "");
    for args in [&["import", "--check"][..], &["import"][..]] {
        let run = wraith_with_config(args, &cfg).await;
        assert_eq!(run.code, 3, "{args:?}: {}", run.output());
        assert!(
            run.stderr
                .contains("database imp_preflight_gone does not exist")
                && run.stderr.contains("CREATE DATABASE `imp_preflight_gone`"),
            "{}",
            run.output()
        );
    }
    // ... and a table that is not there.
    let no_table = Schema::new("imp_preflight_no_table").await;
    let run = wraith_with_config(&["import"], &import_config(&no_table, good.path(), "", "")).await;
    assert_eq!(run.code, 3, "{}", run.output());
    assert!(run.stderr.contains("table(s) t of"), "{}", run.output());
    assert_tables(&no_table, &[], true, "missing table").await;
    // With a schema file for every table, create_tables creates the
    // database too; --check first says so and creates nothing.
    let with_schema = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        with_schema.path().join("src.t-schema.sql"),
        "CREATE TABLE `t` (id INT PRIMARY KEY, v VARCHAR(5));\n",
    )
    .unwrap();
    std::fs::write(
        with_schema.path().join("src.t.sql"),
        "INSERT INTO `t` VALUES (1,'a'),(2,'b');\n",
    )
    .unwrap();
    let cfg = import_config(&gone, with_schema.path(), "", "");
    let run = wraith_with_config(&["import", "--check"], &cfg).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stderr.contains("it will be created"),
        "{}",
        run.output()
    );
    let mut c = s.conn().await;
    let there: Option<u8> = c
        .query_first(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'imp_preflight_gone'",
        )
        .await
        .unwrap();
    assert_eq!(there, None, "--check created the database");
    let report = import_ok(&cfg).await;
    assert_eq!(report["tables"][0]["rows_in_table"], 2, "{report}");
    assert_tables(&gone, &["t"], true, "created database").await;
}

/// A value the server refuses (too long in strict mode, a bad date, an
/// out-of-range integer) is reported at its file, byte offset and line, on
/// each way rows reach the server; the failed import leaves only what its
/// rerun needs.
#[tokio::test]
async fn a_value_the_server_refuses_is_reported_at_its_file_and_line() {
    // Rows 1..=6; row 4 (line 5 under the header) holds the bad value.
    let bad_values = [
        ("too_long", "v", "far too long"),
        ("bad_date", "d", "2021-02-30"),
        ("out_of_range", "n", "300"),
    ];
    let ways = [
        ("sql", true, "load-data"),
        ("sql", false, "insert"),
        ("local", true, "local-engine"),
    ];
    for (what, column, value) in bad_values {
        let mut csv = String::from("id,v,d,n\n");
        let mut sql = String::from("/*!40101 SET NAMES binary*/;\nINSERT INTO `t` VALUES ");
        let mut csv_at = 0;
        let mut sql_at = 0;
        for i in 1..=6 {
            let (mut v, mut d, mut n) = (format!("v{i}"), format!("2020-01-0{i}"), i.to_string());
            if i == 4 {
                match column {
                    "v" => v = value.to_string(),
                    "d" => d = value.to_string(),
                    _ => n = value.to_string(),
                }
                csv_at = csv.len();
                sql_at = sql.len();
            }
            csv.push_str(&format!("{i},{v},{d},{n}\n"));
            sql.push_str(&format!(
                "({i},'{v}','{d}',{n}){}",
                if i == 6 { ";\n" } else { ",\n" }
            ));
        }
        for (file, body, want) in [
            (
                "t.csv",
                &csv,
                format!("t.csv: byte offset {csv_at}, line 5"),
            ),
            (
                "db.t.sql",
                &sql,
                format!("db.t.sql: byte offset {sql_at}, line 5"),
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join(file), body).unwrap();
            for (backend, load_data, sent_by) in ways {
                let s = Schema::new(&format!(
                    "imp_refused_{what}_{}_{}",
                    &file[file.len() - 3..],
                    sent_by.replace('-', "_")
                ))
                .await;
                s.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(5), d DATE NULL, n TINYINT NULL)")
                    .await;
                let cfg = import_config(
                    &s,
                    dir.path(),
                    &format!(
                        "backend = \"{backend}\"\nload_data = {load_data}\nregion_size = \"4KiB\""
                    ),
                    "",
                );
                let run = wraith_with_config(&["import"], &cfg).await;
                let case = format!("{what} in {file} by {sent_by}");
                assert_eq!(run.code, 1, "{case}: {}", run.output());
                // The server's words differ by path (a load truncates with a
                // warning where an INSERT fails): the column is named.
                assert!(
                    run.stderr.contains(&want)
                        && (run.stderr.contains(&format!("'{column}'"))
                            || run.stderr.contains(&format!("`{column}`"))),
                    "{case}: want {want:?} and column {column} in\n{}",
                    run.output()
                );
                assert!(
                    !run.stderr.contains("_wraith_probe"),
                    "{case}: the error names the table, not wraith's temporary copy:\n{}",
                    run.output()
                );
                assert_tables(&s, &["t"], false, &case).await;
            }
        }
    }
}
