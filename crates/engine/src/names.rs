//! Every object wraith creates, named in one place.
//!
//! wraith recognizes its own tables by name (and, where a name could be
//! taken by someone else, by a comment it writes on them), so the names are
//! part of its contract with the operator: `config/README.md` lists them
//! all, and no other module spells one. A table's objects are named after
//! it (`_t_new`, `_t_old`, ...); the schema-wide ones start with
//! `_wraith_`. Files and directories live under `[local] sort_dir` unless
//! the config names them.

use std::path::PathBuf;

use crate::config::{Config, TableConfig};

/// The shadow table of `table`: the new schema, filled by the copy.
pub fn shadow_name(table: &str) -> String {
    format!("_{table}_new")
}

/// The name `table` gets at cut-over (kept unless `drop_old_table`).
pub fn old_name(table: &str) -> String {
    format!("_{table}_old")
}

/// The cut-over's sentry: `t` followed by more, so it sorts after `t`. The
/// server takes a statement's metadata locks in name order; the RENAME must
/// queue on `t` itself while the lock session still holds it.
pub fn sentry_name(table: &str) -> String {
    format!("{table}_wraith_sentry")
}

/// The marker table the cut-over's RENAME moves onto the sentry's name.
pub fn swap_name(table: &str) -> String {
    format!("{table}_wraith_swap")
}

/// The throwaway table preflight applies the ALTER to.
pub fn check_table_name(table: &str) -> String {
    format!("_{table}_chk")
}

/// The changelog table (the stream's tokens and heartbeats), next to the
/// source table.
pub const CHANGELOG_TABLE: &str = "_wraith_changelog";

/// The table whose existence postpones the cut-over (Spirit's sentinel);
/// the operator creates it, wraith only looks.
pub const SENTINEL_TABLE: &str = "_wraith_sentinel";

/// The heartbeat table, next to the source table, while replicas are watched.
pub const HEARTBEAT_TABLE: &str = "_wraith_heartbeat";

/// The checkpoint table (`[checkpoint] store = "table"`), in the target schema.
pub use wraith_checkpoints::CHECKPOINT_TABLE;

/// The import's marker table on the sql path: one row per committed region.
pub const REGIONS_TABLE: &str = "_wraith_import_regions";

/// The TEMPORARY table an import writes into to find a refused value's row.
pub const PROBE_TABLE: &str = "_wraith_probe";

/// Preflight's TEMPORARY table (per session) that asks the server for the
/// implicit value of a column added NOT NULL without a DEFAULT
/// (`crate::implicit`).
pub const IMPLICIT_PROBE_TABLE: &str = "_wraith_implicit";

/// Preflight's throwaway parent and child that measure re-pointing a
/// constraint (`crate::foreign_keys::measure_repoint`).
pub const FK_PROBE_PARENT: &str = "_wraith_fk_probe_p";
pub const FK_PROBE_CHILD: &str = "_wraith_fk_probe_c";

/// Where a table's spilled changes live: a directory of wraith's own under
/// `[changes] dir` (else `sort_dir`). wraith empties it at the start and
/// removes it at the end, so it is never the configured directory itself,
/// which may hold the operator's files or another table's store.
pub fn changes_dir(config: &Config, table: &TableConfig) -> PathBuf {
    config
        .changes
        .dir
        .as_ref()
        .unwrap_or(&config.local.sort_dir)
        .join(format!(
            "changes-{}-{}",
            config.schema_of(table),
            table.name
        ))
}

/// Where the revert window keeps a table's changes to apply back (beside
/// [`changes_dir`]; kept across resumes of the window, removed at its end).
pub fn revert_dir(config: &Config, schema: &str, table: &str) -> PathBuf {
    config
        .changes
        .dir
        .as_ref()
        .unwrap_or(&config.local.sort_dir)
        .join(format!("revert-{schema}-{table}"))
}

/// The name the old table takes on its way out at the window's end: out of
/// the way at once, dropped right after.
pub fn dropping_name(table: &str) -> String {
    format!("_{table}_wraith_drop")
}

/// Where a table's local-backend engines live.
pub fn engines_dir(config: &Config, table: &TableConfig) -> PathBuf {
    config.local.sort_dir.join(format!(
        "engines-{}-{}",
        config.schema_of(table),
        table.name
    ))
}

/// Where an import's local-backend engines live.
pub fn import_engines_dir(sort_dir: &std::path::Path, database: &str) -> PathBuf {
    sort_dir.join(format!("import-{database}"))
}

/// Where a run's control socket goes when `[control] socket` is not set.
pub fn default_socket_path(config: &Config) -> PathBuf {
    let table = config
        .tables
        .first()
        .map(|t| t.name.as_str())
        .unwrap_or("job");
    let name = format!("wraith-{}-{}.sock", config.source.database, table);
    let preferred = config.local.sort_dir.join(&name);
    // sun_path holds 108 bytes.
    if preferred.as_os_str().len() < 100 {
        preferred
    } else {
        std::env::temp_dir().join(name)
    }
}
