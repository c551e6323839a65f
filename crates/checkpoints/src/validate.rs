//! Whether a saved checkpoint still fits what the engine sees now.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::model::{
    unix_seconds, BinlogPosition, SourceIdentity, TableCheckpoint, TableStage, TaskCheckpoint,
};

/// What to tell an operator who wants to discard a checkpoint.
const FRESH: &str = "run `wraith run --fresh CONFIG` to drop the old shadow table, engines and \
                     checkpoint and start over";

/// The default `[checkpoint] max_age`: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the engine observed now, to compare with a saved checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentState {
    /// [`config_fingerprint`] of the current config.
    pub config_fingerprint: String,
    /// The tables of the job as they are now.
    pub tables: Vec<CurrentTable>,
    /// What the server's binlogs and the local change store still hold.
    pub binlog: BinlogCoverage,
}

/// One table of the job, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTable {
    /// The source table's identity read now.
    pub source: SourceIdentity,
    /// The ALTER clause of the config (normalized again by [`validate`]).
    pub alter: String,
    /// The shadow table's fingerprint now; `None` when the shadow table does
    /// not exist.
    pub shadow_fingerprint: Option<String>,
}

/// Whether a saved binlog position can still be streamed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogCoverage {
    /// The oldest binlog file the server still has (`SHOW BINARY LOGS`);
    /// `None` when it has none.
    pub oldest_file: Option<String>,
    /// Whether the local change store holds every change from the saved
    /// position on, so the server's binlogs are not needed up to its end.
    pub local_store_covers: bool,
}

/// Why a checkpoint cannot be used. Spirit's resume errors, plus
/// [`ConfigChanged`](Self::ConfigChanged) and
/// [`ShadowChanged`](Self::ShadowChanged). Every message says what is wrong
/// and what to do; an invalid checkpoint is never half-used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCheckpoint {
    #[error(
        "the checkpoint of {table} was made for a different ALTER: saved {saved:?}, now {now:?}. \
         Put the saved ALTER back in the config to resume, or {FRESH}"
    )]
    MismatchedAlter {
        table: String,
        saved: String,
        now: String,
    },
    #[error(
        "the checkpoint of {table} resumes the change stream at {position}, but the server's \
         binlogs now start at {} and the local change store does not cover that position, so \
         changes made since cannot be replayed. {FRESH}; keep binlogs longer \
         (binlog_expire_logs_seconds) or keep the local change store to resume a paused run",
        oldest_available.as_deref().unwrap_or("(no binlog at all)")
    )]
    BinlogNotFound {
        table: String,
        position: BinlogPosition,
        oldest_available: Option<String>,
    },
    #[error(
        "the checkpoint is {} old, older than [checkpoint] max_age = {}. If the binlogs still \
         cover it, raise max_age to resume; otherwise {FRESH}",
        humantime::format_duration(*age),
        humantime::format_duration(*max_age)
    )]
    CheckpointTooOld { age: Duration, max_age: Duration },
    #[error(
        "the checkpoint belongs to another table: it was made for {saved_identity}, but the \
         source is now {current_identity} ({} differ{}); the table was probably dropped and \
         recreated, or the config points at another server. {FRESH}",
        saved_identity.differences(current_identity).join(", "),
        if saved_identity.differences(current_identity).len() == 1 { "s" } else { "" }
    )]
    CheckpointCollision {
        saved_identity: Box<SourceIdentity>,
        current_identity: Box<SourceIdentity>,
    },
    #[error(
        "the checkpoint of {table} was written before its copy frontier was recorded ({reason}), \
         so it is not known which rows are in the shadow table. {FRESH}"
    )]
    WatermarkNotReady { table: String, reason: String },
    #[error(
        "the config changed since the checkpoint in settings that shape what is already written: \
         {}. Restore them to resume, or {FRESH}",
        changed.join(", ")
    )]
    ConfigChanged {
        changed: Vec<String>,
        saved: String,
        now: String,
    },
    #[error(
        "the shadow table of {table} {} since the checkpoint, so the rows copied into it cannot \
         be trusted. {FRESH}",
        if now.is_some() { "was changed" } else { "was dropped" }
    )]
    ShadowChanged {
        table: String,
        saved: String,
        now: Option<String>,
    },
}

impl InvalidCheckpoint {
    /// The error's name, stable for scripts (`wraith status --json`).
    pub fn kind(&self) -> &'static str {
        match self {
            InvalidCheckpoint::MismatchedAlter { .. } => "MismatchedAlter",
            InvalidCheckpoint::BinlogNotFound { .. } => "BinlogNotFound",
            InvalidCheckpoint::CheckpointTooOld { .. } => "CheckpointTooOld",
            InvalidCheckpoint::CheckpointCollision { .. } => "CheckpointCollision",
            InvalidCheckpoint::WatermarkNotReady { .. } => "WatermarkNotReady",
            InvalidCheckpoint::ConfigChanged { .. } => "ConfigChanged",
            InvalidCheckpoint::ShadowChanged { .. } => "ShadowChanged",
        }
    }
}

/// Checks that `cp` can be resumed given what the engine observes `current`ly.
///
/// In order, the first failing check is returned:
/// 1. every saved table is a current table of the same name whose identity
///    agrees (fields unknown on either side are not compared): else
///    [`CheckpointCollision`](InvalidCheckpoint::CheckpointCollision); a
///    table of the job the checkpoint does not list had not started yet;
/// 2. the config fingerprints are equal: else [`ConfigChanged`](InvalidCheckpoint::ConfigChanged);
/// 3. each table's normalized ALTER is equal: else [`MismatchedAlter`](InvalidCheckpoint::MismatchedAlter);
/// 4. the checkpoint is at most `max_age` old (from `updated_at`; a time in
///    the future counts as age zero): else [`CheckpointTooOld`](InvalidCheckpoint::CheckpointTooOld);
/// 5. for a table from `shadow_created` through `checksummed`, the shadow
///    table exists with the saved fingerprint: else [`ShadowChanged`](InvalidCheckpoint::ShadowChanged);
/// 6. for a table from `copying` until `cut_over`, a binlog position was
///    recorded and, while `copying`, the watermarks are consistent (no low
///    watermark without a high one, low ≤ high, a high watermark once rows
///    were copied): else [`WatermarkNotReady`](InvalidCheckpoint::WatermarkNotReady);
/// 7. for a table before `cut_over` with a position, the position's binlog
///    file is still on the server or the local change store covers it: else
///    [`BinlogNotFound`](InvalidCheckpoint::BinlogNotFound).
///
/// A failed table is judged by the stage it failed in.
pub fn validate(
    cp: &TaskCheckpoint,
    current: &CurrentState,
    now: SystemTime,
    max_age: Duration,
) -> Result<(), InvalidCheckpoint> {
    same_tables(cp, current)?;

    // 2. Config.
    if cp.config_fingerprint != current.config_fingerprint {
        return Err(InvalidCheckpoint::ConfigChanged {
            changed: fingerprint_changes(&cp.config_fingerprint, &current.config_fingerprint),
            saved: cp.config_fingerprint.clone(),
            now: current.config_fingerprint.clone(),
        });
    }

    same_statements(cp, current)?;

    // 4. Age.
    let age = Duration::from_secs(unix_seconds(now).saturating_sub(cp.updated_at));
    if age > max_age {
        return Err(InvalidCheckpoint::CheckpointTooOld { age, max_age });
    }

    for saved in &cp.tables {
        if let Some(c) = find(current, &saved.source) {
            check_table(saved, c, current)?;
        }
    }
    tracing::debug!(migration_id = %cp.migration_id, "checkpoint is valid");
    Ok(())
}

/// Step 1 of [`validate`]: the saved tables are the current ones.
fn same_tables(cp: &TaskCheckpoint, current: &CurrentState) -> Result<(), InvalidCheckpoint> {
    for (i, saved) in cp.tables.iter().enumerate() {
        let found = current.tables.iter().find(|c| {
            c.source.schema == saved.source.schema && c.source.table == saved.source.table
        });
        let collision = |current_identity: SourceIdentity| InvalidCheckpoint::CheckpointCollision {
            saved_identity: Box::new(saved.source.clone()),
            current_identity: Box::new(current_identity),
        };
        match found {
            None => {
                let other = current
                    .tables
                    .get(i)
                    .or(current.tables.first())
                    .map(|c| c.source.clone())
                    .unwrap_or_else(|| SourceIdentity::named("(none)", "(none)"));
                return Err(collision(other));
            }
            Some(c) if !saved.source.differences(&c.source).is_empty() => {
                return Err(collision(c.source.clone()));
            }
            Some(_) => {}
        }
    }
    // A table of the job the checkpoint does not list had not started: a
    // table is recorded before anything is made for it, and the job's
    // tables run at once, so a kill can come before some are recorded.
    Ok(())
}

/// Step 3 of [`validate`]: each table's statement is the saved one.
fn same_statements(cp: &TaskCheckpoint, current: &CurrentState) -> Result<(), InvalidCheckpoint> {
    for saved in &cp.tables {
        let Some(c) = find(current, &saved.source) else {
            continue;
        };
        let (saved_alter, now_alter) = (normalize_alter(&saved.alter), normalize_alter(&c.alter));
        if saved_alter != now_alter {
            return Err(InvalidCheckpoint::MismatchedAlter {
                table: saved.source.qualified_name(),
                saved: saved_alter,
                now: now_alter,
            });
        }
    }
    Ok(())
}

/// Steps 5 to 7 of [`validate`] for one saved table and its current state.
fn check_table(
    saved: &TableCheckpoint,
    c: &CurrentTable,
    current: &CurrentState,
) -> Result<(), InvalidCheckpoint> {
    let stage = saved.stage();
    let table = saved.source.qualified_name();

    // 5. Shadow table.
    if (TableStage::ShadowCreated..=TableStage::Checksummed).contains(&stage)
        && c.shadow_fingerprint.as_deref() != Some(saved.shadow_fingerprint.as_str())
    {
        return Err(InvalidCheckpoint::ShadowChanged {
            table,
            saved: saved.shadow_fingerprint.clone(),
            now: c.shadow_fingerprint.clone(),
        });
    }

    // 6. Copy frontier.
    let stream = &saved.change_stream;
    let not_ready = |reason: &str| InvalidCheckpoint::WatermarkNotReady {
        table: table.clone(),
        reason: reason.to_string(),
    };
    if (TableStage::Copying..TableStage::CutOver).contains(&stage) && stream.position.is_none() {
        return Err(not_ready(&format!(
            "the table is {stage} but no binlog position was saved"
        )));
    }
    if stage == TableStage::Copying {
        match (&stream.low_watermark, &stream.high_watermark) {
            (Some(_), None) => return Err(not_ready("a low watermark without a high watermark")),
            (Some(low), Some(high)) if low > high => {
                return Err(not_ready("the low watermark is above the high watermark"))
            }
            (_, None) if saved.rows_copied > 0 => {
                return Err(not_ready(&format!(
                    "{} rows copied but no high watermark",
                    saved.rows_copied
                )))
            }
            _ => {}
        }
    }

    // 7. Binlog retention.
    if stage < TableStage::CutOver {
        if let Some(position) = &stream.position {
            let on_server = current
                .binlog
                .oldest_file
                .as_deref()
                .is_some_and(|oldest| compare_binlog_files(&position.file, oldest).is_ge());
            if !on_server && !current.binlog.local_store_covers {
                return Err(InvalidCheckpoint::BinlogNotFound {
                    table,
                    position: position.clone(),
                    oldest_available: current.binlog.oldest_file.clone(),
                });
            }
        }
    }
    Ok(())
}

fn find<'a>(current: &'a CurrentState, source: &SourceIdentity) -> Option<&'a CurrentTable> {
    current
        .tables
        .iter()
        .find(|c| c.source.schema == source.schema && c.source.table == source.table)
}

/// Orders binlog file names: `binlog.000010` after `binlog.000009`, by the
/// numeric extension when both share a base name, else by text.
pub fn compare_binlog_files(a: &str, b: &str) -> Ordering {
    let split = |s: &str| {
        s.rsplit_once('.')
            .and_then(|(base, n)| n.parse::<u64>().ok().map(|n| (base.to_string(), n)))
    };
    match (split(a), split(b)) {
        (Some((ba, na)), Some((bb, nb))) if ba == bb => na.cmp(&nb),
        _ => a.cmp(b),
    }
}

/// The ALTER clause in a canonical form, so a config that only reformats it
/// still resumes: surrounding whitespace and trailing `;` dropped, every run
/// of whitespace one space, no space before `(`, `)`, `,` and `=` nor after
/// `(` and `=`, one space after `)` and `,` (before a word), and
/// everything outside quotes and backticks upper-cased (keywords, and
/// unquoted column and index names, which the server compares without
/// case). Quoted strings and `` `identifiers` `` are kept byte for byte.
///
/// Not handled: comments, and unquoted table names on a server with
/// case-sensitive table names (`REFERENCES Parent` equals `REFERENCES
/// parent` here).
pub fn normalize_alter(alter: &str) -> String {
    let mut out = String::with_capacity(alter.len());
    let mut chars = alter
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .chars()
        .peekable();
    let mut had_space = false;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            had_space = true;
            continue;
        }
        let space = match (out.chars().last(), c) {
            (None, _) => false,
            (_, '(' | ')' | ',' | '=') => false,
            (Some('(' | '='), _) => false,
            (Some(')' | ','), _) => true,
            _ => had_space,
        };
        if space {
            out.push(' ');
        }
        had_space = false;
        match c {
            '\'' | '"' | '`' => {
                out.push(c);
                while let Some(q) = chars.next() {
                    out.push(q);
                    if q == '\\' && c != '`' {
                        if let Some(escaped) = chars.next() {
                            out.push(escaped);
                        }
                    } else if q == c {
                        // A doubled quote is an escaped quote; stay inside.
                        if chars.peek() == Some(&c) {
                            if let Some(q2) = chars.next() {
                                out.push(q2);
                            }
                        } else {
                            break;
                        }
                    }
                }
            }
            _ => out.extend(c.to_uppercase()),
        }
    }
    out
}

/// A config fingerprint: the settings that shape what a run has already
/// written, as `name=value` pairs sorted by name and joined with `;` (`%`,
/// `;` and `=` in names and values are percent-escaped). Readable, so
/// [`InvalidCheckpoint::ConfigChanged`] can name what changed.
///
/// Which settings belong in it is the engine's call; the rule is: a setting
/// belongs if resuming under a new value could mix data written under the
/// old one. So: the backend (`sql` or `local`), the local backend's sort
/// directory (where the engines live), the change store's location, the
/// target schema and the shadow and old table names, the column mapping,
/// and the key the shadow is ordered by. Not: threads, chunk size or time,
/// throttling, checkpoint interval or `max_age`, cut-over timing, retries,
/// postponing, whether to drop the old table, logging or progress — a
/// resumed run may change those freely.
pub fn config_fingerprint<K: AsRef<str>, V: AsRef<str>>(
    settings: impl IntoIterator<Item = (K, V)>,
) -> String {
    let sorted: BTreeMap<String, String> = settings
        .into_iter()
        .map(|(k, v)| (escape(k.as_ref()), escape(v.as_ref())))
        .collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace(';', "%3B")
        .replace('=', "%3D")
}

fn unescape(s: &str) -> String {
    s.replace("%3D", "=")
        .replace("%3B", ";")
        .replace("%25", "%")
}

fn parse_fingerprint(fp: &str) -> Option<BTreeMap<String, String>> {
    if fp.is_empty() {
        return Some(BTreeMap::new());
    }
    fp.split(';')
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (unescape(k), unescape(v)))
        })
        .collect()
}

/// The names of the settings that differ between two fingerprints made by
/// [`config_fingerprint`]; `["(fingerprint)"]` when either is not one.
pub fn fingerprint_changes(saved: &str, now: &str) -> Vec<String> {
    let (Some(a), Some(b)) = (parse_fingerprint(saved), parse_fingerprint(now)) else {
        return if saved == now {
            Vec::new()
        } else {
            vec!["(fingerprint)".to_string()]
        };
    };
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeStreamCheckpoint, TableCheckpoint};
    use std::time::UNIX_EPOCH;

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn identity() -> SourceIdentity {
        SourceIdentity {
            server_uuid: Some("uuid-a".into()),
            gtid_domain: Some("0".into()),
            schema: "shop".into(),
            table: "orders".into(),
            create_time: Some("2024-05-01 10:00:00".into()),
            table_id: Some(77),
        }
    }

    fn fingerprint() -> String {
        config_fingerprint([("backend", "local"), ("sort_dir", "/var/wraith")])
    }

    /// A table in the middle of its copy, and a current state that fits it.
    fn fitting() -> (TaskCheckpoint, CurrentState) {
        let mut cp = TaskCheckpoint::new("0.1.0", fingerprint(), now());
        let mut t = TableCheckpoint::new(identity(), "shadow-fp", "ADD COLUMN note TEXT");
        t.advance(TableStage::Copying).unwrap();
        t.rows_copied = 500;
        t.change_stream = ChangeStreamCheckpoint {
            position: Some(BinlogPosition {
                file: "binlog.000009".into(),
                pos: 4,
                gtid: Some("0-1-5".into()),
            }),
            low_watermark: Some(vec![1]),
            high_watermark: Some(vec![2]),
        };
        cp.tables.push(t);
        let current = CurrentState {
            config_fingerprint: fingerprint(),
            tables: vec![CurrentTable {
                source: identity(),
                alter: "add   column note text;".into(),
                shadow_fingerprint: Some("shadow-fp".into()),
            }],
            binlog: BinlogCoverage {
                oldest_file: Some("binlog.000002".into()),
                local_store_covers: false,
            },
        };
        (cp, current)
    }

    fn check(cp: &TaskCheckpoint, current: &CurrentState) -> Result<(), InvalidCheckpoint> {
        validate(cp, current, now(), DEFAULT_MAX_AGE)
    }

    #[test]
    fn a_fitting_checkpoint_is_valid() {
        let (cp, current) = fitting();
        check(&cp, &current).unwrap();
    }

    #[test]
    fn mismatched_alter() {
        let (cp, mut current) = fitting();
        current.tables[0].alter = "ADD COLUMN note VARCHAR(10)".into();
        let err = check(&cp, &current).unwrap_err();
        assert_eq!(
            err,
            InvalidCheckpoint::MismatchedAlter {
                table: "shop.orders".into(),
                saved: "ADD COLUMN NOTE TEXT".into(),
                now: "ADD COLUMN NOTE VARCHAR(10)".into(),
            }
        );
        assert_eq!(err.kind(), "MismatchedAlter");
        let msg = err.to_string();
        assert!(msg.contains("different ALTER"), "{msg}");
        assert!(msg.contains("wraith run --fresh CONFIG"), "{msg}");
    }

    #[test]
    fn binlog_not_found_unless_the_local_store_covers_it() {
        let (cp, mut current) = fitting();
        current.binlog.oldest_file = Some("binlog.000010".into());
        let err = check(&cp, &current).unwrap_err();
        assert!(
            matches!(&err, InvalidCheckpoint::BinlogNotFound { position, oldest_available, .. }
                if position.file == "binlog.000009" && oldest_available.as_deref() == Some("binlog.000010")),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("binlog.000009:4"), "{msg}");
        assert!(msg.contains("start at binlog.000010"), "{msg}");
        assert!(msg.contains("--fresh"), "{msg}");

        current.binlog.local_store_covers = true;
        check(&cp, &current).unwrap();

        // No binlogs on the server at all.
        current.binlog = BinlogCoverage {
            oldest_file: None,
            local_store_covers: false,
        };
        assert_eq!(check(&cp, &current).unwrap_err().kind(), "BinlogNotFound");

        // After cut-over the position is no longer needed.
        let mut done = cp.clone();
        done.tables[0].advance(TableStage::CutOver).unwrap();
        check(&done, &current).unwrap();
    }

    #[test]
    fn binlog_files_compare_by_number() {
        assert!(compare_binlog_files("binlog.000010", "binlog.000009").is_gt());
        assert!(compare_binlog_files("binlog.999999", "binlog.1000000").is_lt());
        assert!(compare_binlog_files("binlog.000003", "binlog.000003").is_eq());
    }

    #[test]
    fn checkpoint_too_old() {
        let (mut cp, current) = fitting();
        cp.updated_at = NOW - 8 * 24 * 3600;
        let err = check(&cp, &current).unwrap_err();
        assert_eq!(
            err,
            InvalidCheckpoint::CheckpointTooOld {
                age: Duration::from_secs(8 * 24 * 3600),
                max_age: DEFAULT_MAX_AGE
            }
        );
        assert!(
            err.to_string().starts_with(
                "the checkpoint is 8days old, older than [checkpoint] max_age = 7days"
            ),
            "{err}"
        );
        // Just inside, and a clock that went back.
        cp.updated_at = NOW - 7 * 24 * 3600;
        check(&cp, &current).unwrap();
        cp.updated_at = NOW + 60;
        check(&cp, &current).unwrap();
    }

    #[test]
    fn checkpoint_collision_on_a_recreated_table() {
        let (cp, mut current) = fitting();
        current.tables[0].source.create_time = Some("2024-06-01 09:00:00".into());
        current.tables[0].source.table_id = Some(78);
        let err = check(&cp, &current).unwrap_err();
        assert_eq!(err.kind(), "CheckpointCollision");
        let msg = err.to_string();
        assert!(msg.contains("(table_id differs)"), "{msg}");
        assert!(msg.contains("dropped and"), "{msg}");

        // Another server.
        let (cp, mut current) = fitting();
        current.tables[0].source.server_uuid = Some("uuid-b".into());
        let msg = check(&cp, &current).unwrap_err().to_string();
        assert!(msg.contains("(server_uuid differs)"), "{msg}");

        // Unknown fields are not compared.
        let (cp, mut current) = fitting();
        current.tables[0].source.table_id = None;
        check(&cp, &current).unwrap();

        // Another table of the same job.
        let (cp, mut current) = fitting();
        current.tables[0].source.table = "invoices".into();
        let err = check(&cp, &current).unwrap_err();
        assert!(
            matches!(&err, InvalidCheckpoint::CheckpointCollision { saved_identity, current_identity }
                if saved_identity.table == "orders" && current_identity.table == "invoices"),
            "{err:?}"
        );

        // A table of the job the checkpoint does not list yet had not
        // started (tables run at once; a kill can come before it is recorded).
        let (cp, mut current) = fitting();
        let mut extra = current.tables[0].clone();
        extra.source.table = "extra".into();
        current.tables.push(extra);
        check(&cp, &current).unwrap();
    }

    #[test]
    fn watermark_not_ready() {
        let (mut cp, current) = fitting();
        cp.tables[0].change_stream.high_watermark = None;
        let err = check(&cp, &current).unwrap_err();
        assert_eq!(err.kind(), "WatermarkNotReady");
        assert!(
            err.to_string()
                .contains("a low watermark without a high watermark"),
            "{err}"
        );

        let (mut cp, current) = fitting();
        cp.tables[0].change_stream.low_watermark = Some(vec![3]);
        assert!(check(&cp, &current)
            .unwrap_err()
            .to_string()
            .contains("low watermark is above"));

        let (mut cp, current) = fitting();
        cp.tables[0].change_stream.low_watermark = None;
        cp.tables[0].change_stream.high_watermark = None;
        assert!(check(&cp, &current)
            .unwrap_err()
            .to_string()
            .contains("500 rows copied but no high watermark"));
        // Nothing copied yet: no watermarks needed.
        cp.tables[0].rows_copied = 0;
        check(&cp, &current).unwrap();

        let (mut cp, current) = fitting();
        cp.tables[0].change_stream.position = None;
        let err = check(&cp, &current).unwrap_err();
        assert!(
            err.to_string()
                .contains("copying but no binlog position was saved"),
            "{err}"
        );

        // A failed table is judged by its stage.
        let (mut cp, current) = fitting();
        cp.tables[0].change_stream.position = None;
        cp.tables[0].fail("killed").unwrap();
        assert_eq!(
            check(&cp, &current).unwrap_err().kind(),
            "WatermarkNotReady"
        );
    }

    #[test]
    fn config_changed_names_the_settings() {
        let (cp, mut current) = fitting();
        current.config_fingerprint =
            config_fingerprint([("backend", "sql"), ("sort_dir", "/var/wraith")]);
        let err = check(&cp, &current).unwrap_err();
        assert!(
            matches!(&err, InvalidCheckpoint::ConfigChanged { changed, .. } if changed == &vec!["backend".to_string()]),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("already written: backend. Restore"),
            "{err}"
        );

        assert_eq!(fingerprint_changes("a=1;b=2", "a=1;c=3"), vec!["b", "c"]);
        assert_eq!(
            fingerprint_changes("opaque-hash-1", "opaque-hash-2"),
            vec!["(fingerprint)"]
        );
    }

    #[test]
    fn shadow_changed_or_dropped() {
        let (cp, mut current) = fitting();
        current.tables[0].shadow_fingerprint = None;
        let err = check(&cp, &current).unwrap_err();
        assert_eq!(err.kind(), "ShadowChanged");
        assert!(err.to_string().contains("was dropped"), "{err}");
        current.tables[0].shadow_fingerprint = Some("other".into());
        assert!(check(&cp, &current)
            .unwrap_err()
            .to_string()
            .contains("was changed"));
        // A pending table has no shadow yet.
        let (mut cp, mut current) = fitting();
        cp.tables[0] = TableCheckpoint::new(identity(), "shadow-fp", "ADD COLUMN note TEXT");
        current.tables[0].shadow_fingerprint = None;
        check(&cp, &current).unwrap();
    }

    #[test]
    fn fingerprints_are_sorted_and_escaped() {
        let fp = config_fingerprint([("sort_dir", "/a;b=c%"), ("backend", "local")]);
        assert_eq!(fp, "backend=local;sort_dir=/a%3Bb%3Dc%25");
        let parsed = parse_fingerprint(&fp).unwrap();
        assert_eq!(parsed["sort_dir"], "/a;b=c%");
        assert_eq!(config_fingerprint(Vec::<(&str, &str)>::new()), "");
    }

    #[test]
    fn alter_normalization() {
        let n = normalize_alter;
        assert_eq!(
            n("  add column  c int ,\n\tADD INDEX idx_c ( c ) ;"),
            "ADD COLUMN C INT, ADD INDEX IDX_C(C)"
        );
        assert_eq!(
            n("ADD COLUMN C INT, ADD INDEX IDX_C(C)"),
            n("add column c int,add index idx_c (c)")
        );
        assert_eq!(n("varchar(5)default 1"), n("VARCHAR( 5 ) DEFAULT 1"));
        // Quoted text keeps its case and spaces.
        assert_eq!(
            n("modify `Col  A` varchar(5) default 'a  B' comment \"x'y\""),
            "MODIFY `Col  A` VARCHAR(5) DEFAULT 'a  B' COMMENT \"x'y\""
        );
        assert_ne!(n("DEFAULT 'a'"), n("DEFAULT 'A'"));
        // Escaped and doubled quotes do not end a string.
        assert_eq!(n(r"default 'it\'s  x' , x"), r"DEFAULT 'it\'s  x', X");
        assert_eq!(n("default 'it''s  x' , x"), "DEFAULT 'it''s  x', X");
        assert_eq!(n("rename column `a``b`  to c"), "RENAME COLUMN `a``b` TO C");
        // Idempotent.
        let once = n("engine = innodb , algorithm=inplace");
        assert_eq!(once, "ENGINE=INNODB, ALGORITHM=INPLACE");
        assert_eq!(n(&once), once);
    }
}
