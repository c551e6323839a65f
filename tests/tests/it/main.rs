//! wraith's integration tests. One binary, so the whole run shares one scratch
//! server (see `wraith_tests::server`); each test works in its own schema.

mod bench;
mod copy;
mod cutover;
mod fuzz;
mod import;
mod online;
mod ops;
mod preflight;
mod resume;
mod values;
mod verified;
