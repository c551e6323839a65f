//! One retry policy: how many tries, how long between them, and which
//! errors are worth another try. Defined once in the backend crate
//! ([`wraith_backend::retry`], which the backend's own writers use too) and
//! re-exported here, where the engine's loops look for it.

pub use wraith_backend::retry::{is_lock_conflict, reconnect_may_help, RetryOn, RetryPolicy};
