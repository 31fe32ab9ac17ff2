//! The sidecar cache against a real S3 server (moto): a second listing reads no sidecar, a
//! snapshot deleted elsewhere never shows, one committed elsewhere always does, and a
//! damaged cache is detected and rebuilt, with every listing equal to an uncached one.

mod common;

use common::servers::{self, announce};
use dakera_snapshot::sink::fault::{Call, FaultySink};
use dakera_snapshot::{
    sink_from_url, CreateOptions, InMemoryStorage, SidecarCache, SnapshotConfig, SnapshotManager,
    SnapshotMetadata, SnapshotSink, Vector, VectorStorage,
};
use std::sync::Arc;

fn ids(list: &[SnapshotMetadata]) -> Vec<String> {
    list.iter().map(|m| m.id.to_string()).collect()
}

/// Sidecar GETs recorded by `sink` since its last reset.
fn sidecar_gets(sink: &FaultySink) -> usize {
    sink.calls()
        .iter()
        .filter(|r| r.call == Call::Get && r.key.ends_with(".meta.json"))
        .count()
}

async fn one_vector_store(k: usize) -> InMemoryStorage {
    let store = InMemoryStorage::new();
    let v = Vector::new(format!("v{k}"), vec![k as f32, 1.0]);
    store.ensure_namespace("ns").await.unwrap();
    store.upsert("ns", vec![v]).await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_listing_reads_only_new_sidecars_and_never_shows_a_deleted_one() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    let url = format!(
        "{}/list-cache-{:016x}",
        server.url,
        getrandom::u64().unwrap()
    );
    let config = SnapshotConfig::default().with_max_snapshots(0);
    let counted = FaultySink::new(sink_from_url(&url, &server.options).unwrap());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = SidecarCache::new(cache_dir.path());
    let cached = SnapshotManager::new(counted.clone() as Arc<dyn SnapshotSink>, config.clone())
        .unwrap()
        .with_sidecar_cache(cache);
    // Another machine: same repository, no cache.
    let other =
        SnapshotManager::new(sink_from_url(&url, &server.options).unwrap(), config).unwrap();
    for k in 0..5 {
        let store = one_vector_store(k).await;
        other
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
    }

    counted.reset();
    let first = cached.list_snapshots().await.unwrap();
    assert_eq!(first.len(), 5);
    assert_eq!(
        sidecar_gets(&counted),
        5,
        "a cold cache reads every sidecar"
    );
    counted.reset();
    let second = cached.list_snapshots().await.unwrap();
    assert_eq!(ids(&second), ids(&first));
    assert_eq!(sidecar_gets(&counted), 0, "a warm cache reads no sidecar");

    // Deleted and committed by the other machine.
    other
        .delete_snapshot(first[2].id.as_str(), false)
        .await
        .unwrap();
    let store = one_vector_store(9).await;
    let new = other
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    counted.reset();
    let third = cached.list_snapshots().await.unwrap();
    assert_eq!(ids(&third), ids(&other.list_snapshots().await.unwrap()));
    assert!(
        !ids(&third).contains(&first[2].id.to_string()),
        "deleted never shows"
    );
    assert_eq!(third[0].id, new.id, "committed always shows");
    assert_eq!(sidecar_gets(&counted), 1, "only the new sidecar is read");

    // Damage every cached copy a different way: each is caught, refetched and rewritten.
    let mut files: Vec<_> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "one file per listed sidecar: {files:?}");
    std::fs::write(&files[0], b"").unwrap();
    let truncated = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &truncated[..truncated.len() / 2]).unwrap();
    let mut flipped = std::fs::read(&files[2]).unwrap();
    let at = flipped.len() - 3;
    flipped[at] ^= 0x20;
    std::fs::write(&files[2], flipped).unwrap();
    // A sound file for one snapshot copied over another's: its checksum holds, its id does not.
    std::fs::copy(&files[4], &files[3]).unwrap();
    counted.reset();
    let fourth = cached.list_snapshots().await.unwrap();
    assert_eq!(ids(&fourth), ids(&third));
    assert_eq!(sidecar_gets(&counted), 4, "each damaged copy is read again");
    counted.reset();
    assert_eq!(ids(&cached.list_snapshots().await.unwrap()), ids(&third));
    assert_eq!(sidecar_gets(&counted), 0, "and the cache is whole again");
    announce("sidecar cache on moto (S3): passed all checks");
}
