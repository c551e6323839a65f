//! Whether the watched replicas build deferred indexes with the source.
//!
//! **For:** `[copy] defer_secondary_indexes = true` with replicas watched.
//! A deferred build is one ALTER at the end of the copy. Logged the usual
//! way, a replica starts it only once the source has finished it, and lags
//! by its whole length (hours on a big table), whatever `max_lag` says; that
//! is why, unset, the setting keeps the indexes in the shadow while replicas
//! are watched. wraith logs the build in two phases
//! (`binlog_alter_two_phase`, MariaDB 10.8+: `START ALTER` as soon as the
//! source has its locks, `COMMIT ALTER` at the end), and a replica running
//! parallel replication starts the same build at once in a worker of its
//! own while the other workers go on applying.
//!
//! So preflight asks each watched replica whether it can: MariaDB 10.8 or
//! later, at least two parallel workers (one holds the build), and a
//! parallel mode that schedules transactions on them (not `none` or
//! `minimal`). All can: the report says so. One cannot, or cannot be
//! asked: a warning names it and why, as the replica will lag by the build.
//!
//! **Leaves to others:** whether the indexes are deferred (the config);
//! logging the build in two phases (the index build, through
//! [`crate::server::log_alter_in_two_phases`]); the lag itself (the
//! throttle).

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::Report;
use crate::config::{Config, ReplicaConfig};
use crate::server::{self, Context, DbError};

/// Parallel workers a replica needs: one holds the build until the source's
/// `COMMIT ALTER`, another applies everything else meanwhile.
const MIN_PARALLEL_THREADS: u64 = 2;

/// How long preflight waits for a replica to answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Says in `report` whether the deferred index build leaves every watched
/// replica in step (nothing when none is watched).
pub(super) async fn check_build_with_replicas(
    conn: &mut Conn,
    config: &Config,
    report: &mut Report,
) -> Result<(), DbError> {
    if config.throttle.replicas.is_empty() || !config.same_server() {
        // With [target] the build runs on another server, one the watched
        // replicas do not apply.
        return Ok(());
    }
    let keep = "leave [copy] defer_secondary_indexes unset (with replicas watched the \
                indexes are then kept in the shadow during the copy)";
    if !server::has_two_phase_alter(conn).await? {
        report.warn(
            "indexes",
            format!(
                "the secondary indexes are built after the copy, and {} cannot log the \
                 build in two phases (binlog_alter_two_phase, MariaDB 10.8+): each replica \
                 applies it only once the source has finished, lagging by its whole length, \
                 whatever max_lag says",
                config.source.describe()
            ),
            keep,
        );
        return Ok(());
    }
    let mut unable = Vec::new();
    for replica in &config.throttle.replicas {
        let name = replica.connection(&config.source.database).describe();
        match replica_can_build_with_source(replica, &config.source.database).await {
            Ok(None) => {}
            Ok(Some(why)) => unable.push(format!("{name}: {why}")),
            Err(e) => unable.push(format!("{name}: cannot ask it ({e})")),
        }
    }
    if unable.is_empty() {
        report.ok(
            "indexes",
            format!(
                "built after the copy, logged in two phases: each of the {} watched replicas \
                 starts the build with the source (parallel replication)",
                config.throttle.replicas.len()
            ),
        );
    } else {
        report.warn(
            "indexes",
            format!(
                "the secondary indexes are built after the copy, and these replicas would \
                 apply the build only once the source has finished, lagging by its whole \
                 length, whatever max_lag says: {}",
                unable.join("; ")
            ),
            format!(
                "give them slave_parallel_threads >= {MIN_PARALLEL_THREADS} (MariaDB 10.8+, \
                 slave_parallel_mode optimistic, conservative or aggressive) so they build \
                 with the source, or {keep}"
            ),
        );
    }
    Ok(())
}

/// Why `replica` would apply a two-phase build only after the source, or
/// `None` when it starts it with the source.
async fn replica_can_build_with_source(
    replica: &ReplicaConfig,
    database: &str,
) -> Result<Option<String>, String> {
    let opts = server::connection_opts(&replica.connection(database))?;
    let pool = server::pool(opts, 1);
    let variables: Result<Vec<(String, String)>, DbError> = async {
        let mut conn = tokio::time::timeout(ASK_TIMEOUT, pool.get_conn())
            .await
            .unwrap_or(Err(mysql_async::Error::Other(
                format!("no connection within {} s", ASK_TIMEOUT.as_secs()).into(),
            )))
            .context(|| "connecting to the replica".into())?;
        conn.query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('binlog_alter_two_phase', 'slave_parallel_threads', 'slave_parallel_mode')",
        )
        .await
        .context(|| "reading its replication settings".into())
    }
    .await;
    let _ = pool.disconnect().await;
    let variables = variables.map_err(|e| e.to_string())?;
    Ok(why_not_with_source(&variables))
}

/// The verdict on a replica's `SHOW GLOBAL VARIABLES` rows.
fn why_not_with_source(variables: &[(String, String)]) -> Option<String> {
    let value = |name: &str| {
        variables
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if value("binlog_alter_two_phase").is_none() {
        return Some("not MariaDB 10.8 or later (no two-phase ALTER)".into());
    }
    let threads: u64 = value("slave_parallel_threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if threads < MIN_PARALLEL_THREADS {
        return Some(format!("slave_parallel_threads = {threads}"));
    }
    match value("slave_parallel_mode").map(str::to_ascii_lowercase) {
        Some(mode) if mode == "none" || mode == "minimal" => {
            Some(format!("slave_parallel_mode = {mode}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_replica_builds_with_the_source_only_with_parallel_workers_and_two_phase_alter() {
        let able = vars(&[
            ("binlog_alter_two_phase", "OFF"),
            ("slave_parallel_threads", "4"),
            ("slave_parallel_mode", "optimistic"),
        ]);
        assert_eq!(why_not_with_source(&able), None);
        let single = vars(&[
            ("binlog_alter_two_phase", "OFF"),
            ("slave_parallel_threads", "1"),
            ("slave_parallel_mode", "optimistic"),
        ]);
        assert_eq!(
            why_not_with_source(&single).as_deref(),
            Some("slave_parallel_threads = 1")
        );
        let none = vars(&[
            ("binlog_alter_two_phase", "OFF"),
            ("slave_parallel_threads", "8"),
            ("slave_parallel_mode", "NONE"),
        ]);
        assert_eq!(
            why_not_with_source(&none).as_deref(),
            Some("slave_parallel_mode = none")
        );
        // MySQL, or MariaDB before 10.8: no such variable.
        let old = vars(&[("slave_parallel_threads", "8")]);
        assert!(why_not_with_source(&old).is_some_and(|w| w.contains("10.8")));
    }
}
