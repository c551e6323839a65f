//! Bad configs: each gives exit code 2 and a message that names the problem.
//! These never reach a server.

use std::process::Command;

const GOOD: &str = r#"[source]
host = "127.0.0.1"
port = 3306
user = "root"
database = "app"

[[table]]
name = "orders"
alter = "ADD COLUMN note TEXT"
"#;

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wraith"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_config_error(config: &str, needles: &[&str]) {
    let (code, stderr) = check(config);
    assert_eq!(
        code, 2,
        "expected exit 2 for config:\n{config}\ngot:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "missing {n:?} in {stderr:?} for config:\n{config}"
        );
    }
}

#[test]
fn unknown_key_names_key_line_and_column() {
    let c = GOOD.replace("port = 3306", "port = 3306\nhots = \"db1\"");
    assert_config_error(&c, &["bad.toml:4:1", "unknown field `hots`"]);
}

#[test]
fn unknown_section() {
    assert_config_error(
        &format!("{GOOD}\n[cutovr]\nenabled = true\n"),
        &["unknown field `cutovr`", ":11:"],
    );
}

#[test]
fn unknown_key_in_table() {
    let c = GOOD.replace("name = \"orders\"", "name = \"orders\"\naltr = \"x\"");
    assert_config_error(&c, &["unknown field `altr`", ":9:1"]);
}

#[test]
fn wrong_type_port() {
    let c = GOOD.replace("port = 3306", "port = \"3306\"");
    assert_config_error(&c, &["bad.toml:3:8", "invalid type: string"]);
}

#[test]
fn wrong_type_threads() {
    assert_config_error(
        &format!("{GOOD}\n[copy]\nthreads = \"four\"\n"),
        &["invalid type", ":12:"],
    );
}

#[test]
fn missing_source() {
    let c = GOOD.replace(
        "[source]\nhost = \"127.0.0.1\"\nport = 3306\nuser = \"root\"\ndatabase = \"app\"\n",
        "",
    );
    assert_config_error(&c, &["missing field `source`"]);
}

#[test]
fn missing_table() {
    let c = GOOD.split("[[table]]").next().unwrap().to_string();
    assert_config_error(&c, &["missing field `table`"]);
}

#[test]
fn missing_user() {
    let c = GOOD.replace("user = \"root\"\n", "");
    assert_config_error(&c, &["missing field `user`", "bad.toml:1:"]);
}

#[test]
fn missing_alter() {
    let c = GOOD.replace("alter = \"ADD COLUMN note TEXT\"\n", "");
    assert_config_error(&c, &["missing field `alter`"]);
}

#[test]
fn empty_table_list() {
    let c = format!("table = []\n{}", GOOD.split("[[table]]").next().unwrap());
    assert_config_error(&c, &["no [[table]] given"]);
}

#[test]
fn bad_duration() {
    assert_config_error(
        &format!("{GOOD}\n[copy]\nchunk_target = \"fast\"\n"),
        &["invalid duration \"fast\"", "\"500ms\"", ":12:"],
    );
}

#[test]
fn bad_size() {
    assert_config_error(
        &format!("{GOOD}\n[local]\nmemory_limit = \"lots\"\n"),
        &["invalid size \"lots\"", "2GiB"],
    );
}

#[test]
fn both_password_and_password_env() {
    let c = GOOD.replace(
        "user = \"root\"",
        "user = \"root\"\npassword = \"pw-secret-1\"\npassword_env = \"DB_PW\"",
    );
    let (code, stderr) = check(&c);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("[source] sets password and password_env"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pw-secret-1"),
        "password printed: {stderr}"
    );
}

#[test]
fn wrong_type_password_is_not_echoed() {
    let c = GOOD.replace("user = \"root\"", "user = \"root\"\npassword = 123987456");
    let (code, stderr) = check(&c);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("password"), "{stderr}");
    assert!(!stderr.contains("123987456"), "password printed: {stderr}");
}

#[test]
fn unset_password_env() {
    let c = GOOD.replace(
        "user = \"root\"",
        "user = \"root\"\npassword_env = \"WRAITH_TEST_SURELY_UNSET_VAR\"",
    );
    let (code, stderr) = check(&c);
    // The variable is resolved when connecting: a preflight refusal naming it.
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("WRAITH_TEST_SURELY_UNSET_VAR, which is not set"),
        "{stderr}"
    );
}

#[test]
fn bad_backend_name() {
    assert_config_error(
        &format!("{GOOD}\n[copy]\nbackend = \"fast\"\n"),
        &["unknown variant `fast`", "auto", "sql", "local"],
    );
}

#[test]
fn zero_threads() {
    assert_config_error(
        &format!("{GOOD}\n[copy]\nthreads = 0\n"),
        &["[copy] threads = 0 is out of range"],
    );
}

#[test]
fn file_checkpoint_without_path() {
    assert_config_error(
        &format!("{GOOD}\n[checkpoint]\nstore = \"file\"\n"),
        &["store = \"file\" needs a path"],
    );
}

#[test]
fn duplicate_table() {
    let c = format!("{GOOD}\n[[table]]\nname = \"orders\"\nalter = \"FORCE\"\n");
    assert_config_error(&c, &["table app.orders is listed twice"]);
}

#[test]
fn empty_alter() {
    let c = GOOD.replace("alter = \"ADD COLUMN note TEXT\"", "alter = \"  \"");
    assert_config_error(&c, &["has an empty alter"]);
}

#[test]
fn lock_wait_timeout_too_small() {
    assert_config_error(
        &format!("{GOOD}\n[cutover]\nlock_wait_timeout = \"100ms\"\n"),
        &["lock_wait_timeout must be at least 1s"],
    );
}

#[test]
fn not_toml_at_all() {
    assert_config_error("this is [not toml", &["bad.toml:1:"]);
}

#[test]
fn missing_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_wraith"))
        .args(["check", "/nonexistent/wraith.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config /nonexistent/wraith.toml"));
}

#[test]
fn usage_error_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_wraith"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for sub in ["check", "run", "demo"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wraith"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: wraith"),
            "{sub} --help"
        );
    }
}
