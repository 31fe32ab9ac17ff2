//! The conformance suite and filesystem-specific guarantees for `LocalFsSink`.

mod common;

use bytes::Bytes;
use common::conformance;
use dakera_snapshot::paths::Key;
use dakera_snapshot::{
    LocalFsSink, PutMode, SinkExt, SnapshotConfig, SnapshotManager, SnapshotSink,
};
use std::sync::Arc;

fn sink() -> (tempfile::TempDir, LocalFsSink) {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalFsSink::new(dir.path().join("repo")).unwrap();
    (dir, sink)
}

#[tokio::test]
async fn conformance_basics() {
    let (_d, s) = sink();
    conformance::sink_basics(&s).await;
}

#[tokio::test]
async fn conformance_ranges() {
    let (_d, s) = sink();
    conformance::sink_ranges(&s).await;
}

#[tokio::test]
async fn conformance_streaming() {
    let (_d, s) = sink();
    conformance::sink_streaming(&s).await;
}

#[tokio::test]
async fn conformance_listing() {
    let (_d, s) = sink();
    conformance::sink_listing(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_manager_workflow() {
    let (_d, s) = sink();
    let m = SnapshotManager::new(Arc::new(s), SnapshotConfig::default()).unwrap();
    conformance::manager_workflow(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_dedup_chain() {
    let (_d, s) = sink();
    let m = SnapshotManager::new(Arc::new(s), SnapshotConfig::default()).unwrap();
    conformance::manager_dedup_chain(&m).await;
    conformance::manager_many_namespaces(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_concurrent_managers() {
    let (_d, s) = sink();
    let s: Arc<dyn SnapshotSink> = Arc::new(s);
    let a =
        SnapshotManager::new(s.clone(), SnapshotConfig::default().with_max_snapshots(0)).unwrap();
    let b = SnapshotManager::new(s, SnapshotConfig::default().with_max_snapshots(0)).unwrap();
    conformance::concurrent_managers(&a, &b).await;
}

#[tokio::test]
async fn writes_leave_no_partial_file_under_the_final_name() {
    let (d, s) = sink();
    let k = Key::parse("snapshots/x.snap.gz").unwrap();
    let mut w = s.put_streaming(&k, PutMode::Create).await.unwrap();
    w.write(Bytes::from(vec![7u8; 1 << 20])).await.unwrap();
    // Mid-upload, the data lives only in a temporary file that is not a key.
    let final_path = d.path().join("repo/snapshots/x.snap.gz");
    assert!(!final_path.exists());
    let temps: Vec<_> = std::fs::read_dir(d.path().join("repo/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(temps.len(), 1);
    assert!(temps[0].starts_with(".tmp-"), "{temps:?}");
    assert!(s
        .list_all(&Key::parse("snapshots").unwrap())
        .await
        .unwrap()
        .is_empty());
    w.finish().await.unwrap();
    assert_eq!(std::fs::metadata(&final_path).unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn stale_temp_files_from_a_crashed_writer_are_removed() {
    let (d, s) = sink();
    let snaps = d.path().join("repo/snapshots");
    std::fs::create_dir_all(&snaps).unwrap();
    // What a writer killed mid-upload leaves behind.
    std::fs::write(snaps.join(".tmp-crashed"), b"half a blob").unwrap();
    assert!(s
        .list_all(&Key::parse("snapshots").unwrap())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.remove_incomplete(0).await.unwrap(),
        0,
        "younger than the cutoff: kept"
    );
    assert_eq!(s.remove_incomplete(u64::MAX).await.unwrap(), 1);
    assert!(!snaps.join(".tmp-crashed").exists());
}

#[tokio::test]
async fn nothing_outside_the_root_is_reachable() {
    let (d, s) = sink();
    std::fs::write(d.path().join("secret"), b"outside").unwrap();
    for bad in [
        "../secret",
        "/etc/passwd",
        "snapshots/../../secret",
        "a\\..\\..\\secret",
        "a/\0",
    ] {
        assert!(Key::parse(bad).is_err(), "{bad:?} must not become a key");
    }
    // Percent-encoded dots are a literal file name here, not a traversal.
    let k = Key::parse("%2e%2e/secret").unwrap();
    s.put(&k, Bytes::from_static(b"inside"), PutMode::Create)
        .await
        .unwrap();
    assert!(d.path().join("repo/%2e%2e/secret").exists());
    assert_eq!(std::fs::read(d.path().join("secret")).unwrap(), b"outside");
}

#[tokio::test]
async fn a_missing_repository_folder_is_created_and_an_unusable_one_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let nested = d.path().join("a/b/c");
    LocalFsSink::new(&nested).unwrap();
    assert!(nested.is_dir());
    let file = d.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = LocalFsSink::new(file.join("repo")).unwrap_err().to_string();
    assert!(err.contains("cannot create repository folder"), "{err}");
}

/// A chain of incrementals that reference their ancestors' chunks copies to another
/// repository ancestors first, keeps its references (stored far less than logical), and
/// verifies and restores there to the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_chain_copies_ancestors_first_and_restores_there() {
    use dakera_snapshot::{CreateOptions, InMemoryStorage, RestoreOptions, VectorStorage};
    let config = || {
        SnapshotConfig::default()
            .with_max_snapshots(0)
            .with_dedup_chunk_size(1024)
    };
    let (_a, from) = sink();
    let (_b, to) = sink();
    let from = SnapshotManager::new(Arc::new(from), config()).unwrap();
    let to = SnapshotManager::new(Arc::new(to), config()).unwrap();
    let store = common::store_with(&[("big", 400, 16)]).await;
    let mut last = from
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    for round in 0..2 {
        let mut changed = common::make_vectors("big", 400, 16).remove(100 + 150 * round);
        changed.values[0] += 1.0;
        store.upsert("big", vec![changed]).await.unwrap();
        last = from
            .create_incremental_snapshot(&store, last.id.as_str(), None, CreateOptions::default())
            .await
            .unwrap();
    }
    let order = from
        .copy_plan(std::slice::from_ref(&last.id))
        .await
        .unwrap();
    assert_eq!(order.len(), 3, "the full, then each incremental");
    assert_eq!(order.last(), Some(&last.id));
    for id in &order {
        from.copy_snapshot(id.as_str(), &to).await.unwrap();
    }
    let copied = to.get_snapshot_metadata(last.id.as_str()).await.unwrap();
    assert!(
        copied.size_bytes * 3 < copied.logical_bytes.unwrap(),
        "{copied:?}"
    );
    for id in &order {
        to.verify_snapshot(id.as_str()).await.unwrap();
    }
    let target = InMemoryStorage::new();
    to.restore_snapshot(&target, last.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap();
    assert_eq!(common::dump(&target).await, common::dump(&store).await);
}
