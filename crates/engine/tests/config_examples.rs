//! Every example in config/ parses: the documentation stays true.

use wraith_engine::config::Config;
use wraith_engine::import::config::ImportJobConfig;
use wraith_engine::registry::ServerConfig;

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            // An import job is the file with an [import] section.
            let text = std::fs::read_to_string(&path).expect("read example");
            if text.lines().any(|l| l.trim() == "[import]") {
                ImportJobConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            } else if !text.lines().any(|l| l.trim() == "[[table]]") {
                // `wraith serve`'s server config: a job without tables.
                ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            } else {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the example configs in {}",
        dir.display()
    );
}
