//! Multi-process cluster tests: controllers and brokers started as real processes on 127.0.0.1
//! with ephemeral ports and temporary directories, killed with real signals.
//!
//! Map: `tests/tests/*.rs` hold the scenarios; this library will hold the shared harness (start a
//! topology, poll a condition with a deadline, check the full history) once there are processes
//! to start (step 2 on). The store's own crash test lives in `broker/tests/` because it needs only
//! the store.
