//! wraith's integration tests. One binary, so the whole run shares one scratch
//! server (see `wraith_tests::server`); each test works in its own schema.

/// The tests that judge the application's worst write against wraith's
/// report hold this exclusively; the test that writes 100 MB transactions to
/// the shared server holds it shared. A neighbour's bulk write stalls every
/// commit on the server (fsync and redo), which is not wraith's stall and
/// would make the application's worst write say nothing about wraith.
pub static LATENCY_JUDGED: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

mod bench;
mod copy;
mod cutover;
mod foreign_keys;
mod fuzz;
mod import;
mod multi;
mod online;
mod ops;
mod predict;
mod preflight;
mod queue;
mod queue_page;
mod resume;
mod revert;
mod together;
mod triggers;
mod types;
mod values;
mod verified;
