//! Shared test helpers. The conformance suite and the test-data helpers live in the crate
//! (feature `test-util`), so third-party sinks can run them too.
#![allow(dead_code, unused_imports)]

pub use dakera_snapshot::testing::{
    conformance, dump, make_vectors, restore_all, store_with, values,
};

pub mod containers;
pub mod fixtures;
pub mod hiding;
pub mod servers;

use std::collections::BTreeSet;

/// Lists the repository and checks that every listed snapshot verifies (panicking with
/// `context` otherwise); returns the listed ids.
pub async fn listed_all_verify(
    m: &dakera_snapshot::SnapshotManager,
    context: &str,
) -> BTreeSet<String> {
    let all = m
        .list_snapshots()
        .await
        .unwrap_or_else(|e| panic!("{context}: the repository cannot be listed: {e}"));
    for s in &all {
        if let Err(e) = m.verify_snapshot(s.id.as_str()).await {
            panic!("{context}: listed snapshot {} does not verify: {e}", s.id);
        }
    }
    all.into_iter().map(|s| s.id.to_string()).collect()
}
