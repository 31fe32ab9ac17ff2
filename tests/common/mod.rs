//! Shared test helpers and the conformance suite every sink runs.
#![allow(dead_code)]

pub mod conformance;
pub mod containers;
pub mod servers;

use async_trait::async_trait;
use dakera_snapshot::error::SinkOp;
use dakera_snapshot::paths::Key;
use dakera_snapshot::sink::{ByteStream, ObjectInfo, SinkWriter};
use dakera_snapshot::{
    Error, InMemoryStorage, PutMode, Result, SnapshotSink, Vector, VectorStorage,
};
use futures::stream::BoxStream;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Which operations a [`FailingSink`] fails.
#[derive(Debug, Default)]
pub struct FailSwitches {
    pub list: AtomicBool,
    pub get: AtomicBool,
    pub put: AtomicBool,
    pub delete: AtomicBool,
}

/// A sink wrapper that fails chosen operations on demand.
#[derive(Debug)]
pub struct FailingSink {
    pub inner: Arc<dyn SnapshotSink>,
    pub fail: Arc<FailSwitches>,
}

fn injected(op: SinkOp, key: &str) -> Error {
    Error::sink(op, key, "injected failure")
}

#[async_trait]
impl SnapshotSink for FailingSink {
    async fn put(&self, key: &Key, data: bytes::Bytes, mode: PutMode) -> Result<()> {
        if self.fail.put.load(Ordering::SeqCst) {
            return Err(injected(SinkOp::Put, key.as_str()));
        }
        self.inner.put(key, data, mode).await
    }
    async fn put_streaming(&self, key: &Key, mode: PutMode) -> Result<Box<dyn SinkWriter>> {
        self.inner.put_streaming(key, mode).await
    }
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream> {
        if self.fail.get.load(Ordering::SeqCst) {
            return Err(injected(SinkOp::Get, key.as_str()));
        }
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectInfo> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &Key) -> BoxStream<'static, Result<ObjectInfo>> {
        if self.fail.list.load(Ordering::SeqCst) {
            let e = injected(SinkOp::List, prefix.as_str());
            return Box::pin(futures::stream::iter([Err(e)]));
        }
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        if self.fail.delete.load(Ordering::SeqCst) {
            return Err(injected(SinkOp::Delete, key.as_str()));
        }
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("failing({})", self.inner.describe())
    }
}
