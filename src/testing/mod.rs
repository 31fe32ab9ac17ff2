//! Test support (feature `test-util`): the conformance suite that proves a
//! [`SnapshotSink`](crate::SnapshotSink) keeps the contract the manager relies on, test-data
//! helpers, and the codec entry points the crate's fuzz tests and benchmarks drive.
//!
//! Run the suite on your own sink (here the in-memory one stands in for it):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> dakera_snapshot::Result<()> {
//! use dakera_snapshot::testing::conformance;
//! use dakera_snapshot::{ObjectStoreSink, SnapshotConfig, SnapshotManager, SnapshotSink};
//! use std::sync::Arc;
//!
//! let sink: Arc<dyn SnapshotSink> = Arc::new(ObjectStoreSink::memory()); // yours here
//! conformance::sink_basics(sink.as_ref()).await;
//! conformance::sink_ranges(sink.as_ref()).await;
//! conformance::sink_streaming(sink.as_ref()).await;
//! conformance::sink_listing(sink.as_ref()).await;
//! conformance::sink_listing_paginates(sink.as_ref()).await;
//! let manager = SnapshotManager::new(sink, SnapshotConfig::default())?;
//! conformance::manager_workflow(&manager).await;
//! # Ok(())
//! # }
//! ```

pub mod conformance;

/// The blob codec, for fuzzing and benchmarks. Not a stable API.
pub mod codec {
    pub use crate::format::blob::{
        compress_member, decode_chunk, decode_footer, decode_header, decode_namespace,
        encode_chunk, encode_ns_end, encode_ns_header, ContentDigest, Filter,
    };
}

pub use crate::id::SeededRandom;

/// The file of snapshot `id`'s blob in the local repository at `repo` (whether or not it
/// exists): under `data/` where the repository's config is version 2 (every repository
/// made since that layout), else beside the sidecar under `snapshots/`.
pub fn blob_path(repo: &std::path::Path, id: &str) -> std::path::PathBuf {
    let config: serde_json::Value = std::fs::read(repo.join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let folder = if config["version"] == 2 {
        "data"
    } else {
        "snapshots"
    };
    repo.join(folder).join(format!("{id}.snap.gz"))
}

use crate::{InMemoryStorage, Vector, VectorStorage};
use serde_json::json;
use std::collections::BTreeMap;

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

/// Restores snapshot `id` with default options into a fresh store and returns it.
pub async fn restore_all(m: &crate::SnapshotManager, id: &str) -> InMemoryStorage {
    let target = InMemoryStorage::new();
    m.restore_snapshot(&target, id, &crate::RestoreOptions::new())
        .await
        .unwrap_or_else(|e| panic!("restore of {id}: {e}"));
    target
}

/// Rewrites the namespace directory of format 3 snapshot `id` in the local repository at
/// `repo` with `edit` applied to its lists, and its sidecar to match (directory record,
/// footer offset, sizes, blob SHA-256): a forgery by a writer with access to the bucket,
/// which only the checks behind the directory can catch.
pub fn forge_directory(
    repo: &std::path::Path,
    id: &str,
    edit: impl FnOnce(&mut crate::SnapshotMetadata),
) {
    use crate::format::{blob, directory};
    use sha2::{Digest, Sha256};
    let (blob_path, sidecar_path) = (
        blob_path(repo, id),
        repo.join("snapshots").join(format!("{id}.meta.json")),
    );
    let id = crate::SnapshotId::parse(id).unwrap();
    let mut meta =
        crate::SnapshotMetadata::from_json(&std::fs::read(&sidecar_path).unwrap(), &id).unwrap();
    let old = meta.directory.clone().expect("a format 3 snapshot");
    let bytes = std::fs::read(&blob_path).unwrap();
    let (listed, _) = blob::decode_directory_chunk(
        &bytes[old.offset as usize..][..old.length as usize],
        old.raw_length,
    )
    .unwrap();
    meta.fill_directory(listed).unwrap();
    edit(&mut meta);
    let (member, new) = directory::chunk(
        &meta.namespaces,
        &meta.unchanged_namespaces,
        &meta.deleted_namespaces,
        6,
        old.offset,
    );
    let footer = &bytes[meta.footer.offset as usize..];
    let forged = [&bytes[..old.offset as usize], &member[..], footer].concat();
    meta.footer.offset = new.range().end();
    meta.raw_bytes = meta.raw_bytes - old.raw_length + new.raw_length;
    meta.size_bytes = forged.len() as u64;
    meta.blob_sha256 = hex::encode(Sha256::digest(&forged));
    meta.directory = Some(new);
    std::fs::write(&blob_path, forged).unwrap();
    std::fs::write(&sidecar_path, meta.to_json()).unwrap();
}
