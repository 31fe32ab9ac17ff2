//! Shared test helpers and the conformance suite every sink runs.
#![allow(dead_code)]

pub mod conformance;
pub mod containers;
pub mod hiding;
pub mod servers;

use dakera_snapshot::{InMemoryStorage, Vector, VectorStorage};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Deterministic pseudo-random floats.
pub fn values(seed: u64, dim: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2_000_001) as f32 / 1_000_000.0 - 1.0
        })
        .collect()
}

/// `n` vectors of `dim` with ids `<prefix>-00000..`, metadata on every other one.
pub fn make_vectors(prefix: &str, n: usize, dim: usize) -> Vec<Vector> {
    (0..n)
        .map(|i| {
            let v = Vector::new(
                format!("{prefix}-{i:05}"),
                values(i as u64 + prefix.len() as u64 * 7919, dim),
            );
            if i % 2 == 0 {
                v.with_metadata(json!({"i": i, "tag": prefix}))
            } else {
                v
            }
        })
        .collect()
}

/// A store with the given namespaces: (name, vectors, dimension).
pub async fn store_with(spec: &[(&str, usize, usize)]) -> InMemoryStorage {
    let s = InMemoryStorage::new();
    for (name, n, dim) in spec {
        s.ensure_namespace(name).await.unwrap();
        if *n > 0 {
            s.upsert(name, make_vectors(name, *n, *dim)).await.unwrap();
        }
    }
    s
}

/// Everything in a store: namespace -> (dimension, vectors in id order).
pub async fn dump(s: &dyn VectorStorage) -> BTreeMap<String, (Option<usize>, Vec<Vector>)> {
    let mut out = BTreeMap::new();
    for ns in s.list_namespaces().await.unwrap() {
        let dim = s.dimension(&ns).await.unwrap();
        out.insert(ns.clone(), (dim, s.get_all(&ns).await.unwrap()));
    }
    out
}

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

/// Restores snapshot `id` with default options into a fresh store and returns it.
pub async fn restore_all(m: &dakera_snapshot::SnapshotManager, id: &str) -> InMemoryStorage {
    let target = InMemoryStorage::new();
    m.restore_snapshot(&target, id, &dakera_snapshot::RestoreOptions::new())
        .await
        .unwrap_or_else(|e| panic!("restore of {id}: {e}"));
    target
}
