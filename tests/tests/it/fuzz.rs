//! Bad input never panics: every subcommand is fed a few hundred generated
//! bad configs (broken TOML, wrong types, hostile strings, odd names, missing
//! and wrong files) and bad table shapes (views, sequences, tables without a
//! key, odd names), and must end with an exit code it documents (0-3), never
//! Rust's panic exit 101 or a "panicked at" on stderr. Seeded: a failure
//! names the case, and the same seed gives the same cases.

use std::time::Duration;

use wraith_tests::{wraith_bin, Schema};

/// A small deterministic generator (xorshift64*), so the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Strings that have broken parsers elsewhere: empty, huge, quotes, NUL,
/// control and right-to-left characters, non-ASCII letters, SQL, paths.
fn hostile(rng: &mut Rng) -> String {
    let fixed = [
        "",
        " ",
        "`",
        "``",
        "'",
        "\"",
        "\\",
        "\\u0000",
        "a\\u0000b",
        "\\n\\r\\t",
        "größe_ü",
        "таблица",
        "表",
        "🦀",
        "\\u202Eevil",
        "x; DROP TABLE t",
        "'; DROP TABLE t; -- ",
        "/*! ; DROP TABLE t */",
        "%s%n%x",
        "../../../../etc/passwd",
        "/dev/null",
        "/proc/self/mem",
        "/",
        "t.t",
        "information_schema",
        "mysql",
        "PRIMARY",
        "-1",
        "0",
        "18446744073709551616",
        "NaN",
        "1e309",
    ];
    match rng.below(4) {
        0 => "x".repeat(1 + rng.below(3) * 100),
        1 => {
            let a = rng.pick(&fixed);
            let b = rng.pick(&fixed);
            format!("{a}{b}")
        }
        _ => rng.pick(&fixed).to_string(),
    }
}

/// A TOML value of a random wrong (or right) type.
fn value(rng: &mut Rng) -> String {
    match rng.below(9) {
        0 => format!("\"{}\"", hostile(rng)),
        1 => rng
            .pick(&[
                "0",
                "-1",
                "1",
                "65536",
                "9223372036854775807",
                "-9223372036854775808",
            ])
            .into(),
        2 => rng.pick(&["true", "false"]).into(),
        3 => rng.pick(&["1.5", "-0.0", "inf", "nan", "1e308"]).into(),
        4 => "[]".into(),
        5 => format!("[\"{}\", 1]", hostile(rng)),
        6 => "{}".into(),
        7 => rng
            .pick(&[
                "\"0s\"",
                "\"-5s\"",
                "\"1XB\"",
                "\"99999999999999999999h\"",
                "\"1ms\"",
                "\"0B\"",
                "\"1TiB\"",
            ])
            .into(),
        _ => "1979-05-27T07:32:00Z".into(),
    }
}

const KEYS: &[(&str, &[&str])] = &[
    (
        "source",
        &[
            "host",
            "port",
            "user",
            "password",
            "password_env",
            "password_file",
            "database",
            "socket",
        ],
    ),
    (
        "copy",
        &[
            "backend",
            "threads",
            "chunk_target",
            "initial_chunk_rows",
            "defer_secondary_indexes",
        ],
    ),
    (
        "local",
        &["sort_dir", "memory_limit", "compression", "engine_size"],
    ),
    ("changes", &["memory_limit", "dir"]),
    (
        "cutover",
        &[
            "enabled",
            "lock_wait_timeout",
            "retries",
            "drop_old_table",
            "postpone_flag_file",
        ],
    ),
    ("checkpoint", &["store", "path", "interval", "max_age"]),
    ("throttle", &["max_lag", "interval"]),
    ("control", &["socket", "tcp_port"]),
    ("hooks", &["dir", "timeout", "status_interval"]),
    (
        "import",
        &[
            "dir",
            "format",
            "backend",
            "threads",
            "region_size",
            "on_duplicate",
            "create_tables",
            "verify",
            "charset",
        ],
    ),
];

/// A config for `schema` (or a closed port) with one random fault.
fn bad_config(rng: &mut Rng, base: &str) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    match rng.below(7) {
        // A key of some section set to a random value (wrong types, hostile text).
        0 | 1 => {
            let (section, keys) = KEYS[rng.below(KEYS.len())];
            let key = rng.pick(keys);
            lines.push(format!("[{section}]\n{key} = {}", value(rng)));
        }
        // The table's name or alter hostile.
        2 => {
            let key = rng.pick(&["name", "alter"]);
            for l in lines.iter_mut() {
                if l.starts_with(&format!("{key} =")) {
                    *l = format!("{key} = \"{}\"", hostile(rng));
                }
            }
        }
        // Truncated text.
        3 => {
            let text = lines.join("\n");
            let mut cut = rng.below(text.len().max(1));
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            return text[..cut].to_string();
        }
        // A random line dropped, or doubled.
        4 => {
            let i = rng.below(lines.len());
            if rng.below(2) == 0 {
                lines.remove(i);
            } else {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
        }
        // Garbage bytes in the middle.
        5 => {
            let i = rng.below(lines.len());
            let junk = rng.pick(&[
                "[[",
                "]]",
                "= =",
                "\"\"\"",
                "[table]",
                "[[table]]",
                "\u{feff}",
                "\\",
                "=\"x",
            ]);
            lines.insert(i, junk.to_string());
        }
        // Paths that do not work.
        _ => {
            let missing = "/nonexistent-wraith-fuzz/x";
            let setting = rng.pick(&[
                "[source]\npassword_file = \"MISSING\"",
                "[checkpoint]\nstore = \"file\"\npath = \"MISSING\"",
                "[checkpoint]\nstore = \"file\"\npath = \"/\"",
                "[local]\nsort_dir = \"/dev/null/x\"",
                "[changes]\ndir = \"/dev/null\"",
                "[control]\nsocket = \"/dev/null\"",
                "[control]\nsocket = \"MISSING/s.sock\"",
                "[hooks]\ndir = \"MISSING\"",
                "[hooks]\ndir = \"/dev/null\"",
                "[import]\ndir = \"MISSING\"",
            ]);
            lines.push(setting.replace("MISSING", missing));
        }
    }
    lines.join("\n")
}

struct Outcome {
    code: i32,
    stderr: String,
}

/// Runs `wraith args... config`; `None` when it had to be killed (a run that
/// went ahead with a valid config: not a panic).
async fn wraith(args: &[&str], config: &str) -> Option<Outcome> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = tokio::process::Command::new(wraith_bin());
    cmd.args(args).arg(&path).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .ok()?
        .expect("run wraith");
    Some(Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn assert_no_panic(case: &str, args: &[&str], config: &str, out: &Outcome) {
    assert!(
        out.code != 101 && !out.stderr.contains("panicked at"),
        "{case}: wraith {args:?} panicked (exit {}):\n--- config\n{config}\n--- stderr\n{}",
        out.code,
        out.stderr
    );
    assert!(
        (0..=3).contains(&out.code),
        "{case}: wraith {args:?} ended with exit {} (documented: 0-3):\n--- config\n{config}\n--- stderr\n{}",
        out.code,
        out.stderr
    );
}

#[tokio::test]
async fn generated_bad_configs_never_panic() {
    // Port 1 is closed: configs that get past parsing fail to connect, fast.
    let rebuild =
        "[source]\nhost = \"127.0.0.1\"\nport = 1\nuser = \"root\"\ndatabase = \"app\"\n\n\
                   [[table]]\nname = \"t\"\nalter = \"ADD COLUMN x INT\"";
    let import =
        "[target]\nhost = \"127.0.0.1\"\nport = 1\nuser = \"root\"\ndatabase = \"app\"\n\n\
                  [import]\ndir = \"/tmp\"";
    let mut rng = Rng(0x5eed_0013);
    let mut runs = 0;
    let mut codes = [0usize; 4];
    for case in 0..300 {
        let bench: &[&str] = &[
            "bench",
            "--rows",
            "10",
            "--repeat",
            "1",
            "--methods",
            "wraith-sql",
            "--conditions",
            "idle",
            "--config",
        ];
        let (base, commands): (&str, &[&[&str]]) = if case % 4 == 3 {
            (import, &[&["import"]])
        } else if case % 10 == 0 {
            (rebuild, &[bench])
        } else {
            (
                rebuild,
                &[&["check"], &["run"], &["status"], &["check", "--json"]],
            )
        };
        let config = bad_config(&mut rng, base);
        let args = commands[case % commands.len()];
        let out = wraith(args, &config)
            .await
            .unwrap_or_else(|| panic!("case {case}: wraith {args:?} against a closed port did not end within 60s:\n{config}"));
        assert_no_panic(&format!("case {case}"), args, &config, &out);
        codes[out.code as usize] += 1;
        runs += 1;
    }
    assert_eq!(runs, 300);
    // The faults reach more than the parser: config errors (2) and refusals
    // or connection failures past it (1, 3) both occur.
    eprintln!("exit codes 0..=3: {codes:?}");
    assert!(codes[2] > 50 && codes[1] + codes[3] > 50, "{codes:?}");
}

#[tokio::test]
async fn bad_arguments_never_panic() {
    // Each is refused before a server is started or reached.
    for args in [
        &["bench", "--table", "nonsense"][..],
        &["bench", "--methods", "nope"],
        &["bench", "--conditions", "nope"],
        &["bench", "--repeat", "0"],
        &["bench", "--rows", "-5"],
        &[
            "bench",
            "--config",
            "/nonexistent-wraith-fuzz.toml",
            "--methods",
            "wraith-sql",
        ],
        &["demo", "--rows", "many"],
        &["demo", "--load-rate", "-1"],
        &["check"],
        &["run", "/nonexistent-wraith-fuzz.toml"],
        &["status", "/dev/null"],
        &["import", "/"],
        &["check", "/proc/self/mem"],
        &["nonsense"],
        &[],
    ] {
        let mut cmd = tokio::process::Command::new(wraith_bin());
        cmd.args(args).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("ends quickly")
            .expect("run wraith");
        let out = Outcome {
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_no_panic("arguments", args, "(none)", &out);
        assert!(
            out.code == 2 || out.code == 1,
            "{args:?}: exit {}: {}",
            out.code,
            out.stderr
        );
    }
}

#[tokio::test]
async fn bad_table_shapes_and_names_never_panic() {
    let s = Schema::new("fz_shapes").await;
    s.exec(
        "CREATE TABLE base (id INT PRIMARY KEY, v INT); INSERT INTO base VALUES (1, 1), (2, 2); \
         CREATE VIEW v AS SELECT * FROM base; \
         CREATE SEQUENCE seq; \
         CREATE TABLE nokey (a INT, b INT); INSERT INTO nokey VALUES (1, 1); \
         CREATE TABLE nullable_unique (a INT NULL, UNIQUE KEY u (a)); \
         CREATE TABLE gen (id INT PRIMARY KEY, v INT, g INT AS (v * 2) VIRTUAL); \
         CREATE TABLE blobkey (b BLOB NOT NULL, PRIMARY KEY (b(10))); \
         CREATE TABLE `größe_ü` (id INT PRIMARY KEY); \
         CREATE TABLE `a b` (id INT PRIMARY KEY); \
         CREATE TABLE `sel;ect` (id INT PRIMARY KEY); \
         CREATE TABLE versioned (id INT PRIMARY KEY) WITH SYSTEM VERSIONING; \
         CREATE TABLE myisam (id INT PRIMARY KEY) ENGINE=MyISAM; \
         CREATE TABLE geo (id INT PRIMARY KEY, p POINT NOT NULL)",
    )
    .await;
    let names = [
        "v",
        "seq",
        "nokey",
        "nullable_unique",
        "gen",
        "blobkey",
        "größe_ü",
        "a b",
        "sel;ect",
        "versioned",
        "missing",
        "myisam",
        "geo",
        "base",
    ];
    let alters = [
        "ADD COLUMN x INT; DROP TABLE base",
        "RENAME TO other",
        "DROP COLUMN id",
        "DROP PRIMARY KEY",
        "ADD COLUMN x INT NOT NULL",
        "MODIFY v VARCHAR(1)",
        "ADD COLUMN x INT /* open",
        "ENGINE=MEMORY",
        "garbage",
        "ALTER TABLE base FORCE",
        "EXCHANGE PARTITION p WITH TABLE base",
        "ADD COLUMN `größe` INT DEFAULT 1",
    ];
    let mut rng = Rng(0x5eed_7ab1e);
    for case in 0..60 {
        let name = names[case % names.len()];
        let alter = rng.pick(&alters);
        let config = s.config(name, alter, "[cutover]\nenabled = false");
        // `run` only where preflight refuses for sure (a refused alter), so
        // no case rebuilds a table the next one expects.
        let args: &[&str] = if case % 3 == 0 && alter.contains("DROP TABLE") {
            &["run"]
        } else if case % 5 == 0 {
            &["status"]
        } else {
            &["check"]
        };
        let out = wraith(args, &config).await.unwrap_or_else(|| {
            panic!("case {case}: wraith {args:?} did not end within 60s:\n{config}")
        });
        assert_no_panic(
            &format!("shape case {case} ({name}, {alter})"),
            args,
            &config,
            &out,
        );
        if name == "v" && args == ["check"] {
            assert_eq!(out.code, 3, "a view is refused:\n{}", out.stderr);
            assert!(out.stderr.contains("is a VIEW"), "{}", out.stderr);
        }
    }
    // Nothing ran: the base table is as it was.
    assert_eq!(s.rows("base").await.len(), 2);
}

#[tokio::test]
async fn bad_configs_and_dump_files_against_a_real_server_never_panic() {
    let s = Schema::new("fz_real").await;
    s.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1, 'a')")
        .await;
    // Dump files that are broken in the ways files break: cut off, wrong
    // compression, wrong quoting, unknown tables, hostile schema files.
    let dump = tempfile::tempdir().unwrap();
    let files: &[(&str, &[u8])] = &[
        (
            "fz_real.t.00000.sql",
            b"INSERT INTO `t` VALUES (2,'b'),(3,'c",
        ),
        (
            "fz_real.t-schema.sql",
            b"CREATE TABLE `t` (id INT PRIMARY KEY, v VARCHAR(10));",
        ),
        (
            "fz_real.u-schema.sql",
            b"CREATE TABLE u (id INT PRIMARY KEY); SET NAMES nonsense; /* open",
        ),
        (
            "fz_real.u.00000.sql",
            b"INSERT INTO u VALUES (1),(1),(x'zz'),(0x),(_utf8mb4 'a');",
        ),
        ("fz_real.w.00000.sql.gz", b"not gzip at all"),
        ("fz_real.z.00000.sql.zst", b"\x28\xb5\x2f\xfd garbage"),
        ("t.csv", b"1,\"unterminated\n2,b,c,d\n\xff\xfe,\\N\n"),
        ("t.tsv", b"1\tb\t\\\n\t\t\t\n"),
        ("größe.csv", b"1,\xc3\n"),
        ("metadata", b"\x00\x01\x02"),
    ];
    for (name, body) in files {
        std::fs::write(dump.path().join(name), body).unwrap();
    }
    let dir = format!("{:?}", dump.path().display().to_string());
    let import = format!(
        "[target]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\ndatabase = \"fz_real\"\n\n\
         [import]\ndir = {dir}",
        s.port
    );
    let rebuild = s.config("t", "ADD COLUMN x INT", "[cutover]\nenabled = false");
    let mut rng = Rng(0x5eed_4ea1);
    for case in 0..120 {
        let (config, args): (String, &[&str]) = match case % 3 {
            0 => {
                let extra = rng.pick(&[
                    "",
                    "format = \"csv\"",
                    "format = \"tsv\"",
                    "format = \"sql\"",
                    "on_duplicate = \"replace\"",
                    "verify = \"checksum\"",
                    "charset = \"latin1\"",
                    "charset = \"nonsense\"",
                    "create_tables = false",
                    "region_size = \"1B\"",
                ]);
                let base = format!("{import}\n{extra}");
                let config = if rng.below(2) == 0 {
                    base
                } else {
                    bad_config(&mut rng, &base)
                };
                (config, &["import"])
            }
            1 => (bad_config(&mut rng, &rebuild), &["check"]),
            _ => (bad_config(&mut rng, &rebuild), &["status"]),
        };
        let out = wraith(args, &config).await.unwrap_or_else(|| {
            panic!("case {case}: wraith {args:?} did not end within 60s:\n{config}")
        });
        assert_no_panic(&format!("real-server case {case}"), args, &config, &out);
    }
    assert!(s.table_exists("t").await);
}
