//! The Rust client: producers (sync, async, one-way) and consumers (push with a listener, pull).
//!
//! Map (filled by step 2 of the plan in `docs/ARCHITECTURE.md`):
//! - `producer`: sends with `SendResult` statuses, retries of retriable errors.
//! - `consumer`: consumer groups (clustering and broadcasting), retry and dead-letter handling.
//! - `route`: topic routes from the controller's watch stream.
//!
//! `client` depends on `proto` only, never on `broker`.
