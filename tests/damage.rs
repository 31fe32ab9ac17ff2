//! Forged and damaged sidecars, and the clean-ups that must never remove committed data:
//! each test here is a defect a review found (a hang, a blocked repository, gc and copy
//! deleting a committed blob), run against a real local repository.

mod common;

use common::hiding::HidingSink;
use common::{restore_all, store_with};
use dakera_snapshot::paths::Key;
use dakera_snapshot::sink::fault::{Call, Fault, FaultySink};
use dakera_snapshot::VectorStorage;
use dakera_snapshot::{
    CreateOptions, Error, LocalFsSink, RetentionPolicy, SnapshotConfig, SnapshotManager,
    SnapshotMetadata, SnapshotSink,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Fails a test that would otherwise hang.
const PATIENCE: Duration = Duration::from_secs(20);

fn sidecar_key(id: &str) -> Key {
    Key::parse(format!("snapshots/{id}.meta.json")).unwrap()
}

/// The blob of a snapshot in a repository made by this version (blobs under `data/`).
fn blob_key(id: &str) -> Key {
    Key::parse(format!("data/{id}.snap.gz")).unwrap()
}

fn sidecar_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("snapshots/{id}.meta.json"))
}

/// Rewrites fields of a committed sidecar on disk.
fn forge(dir: &Path, id: &str, fields: Value) {
    let path = sidecar_path(dir, id);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (k, val) in fields.as_object().unwrap() {
        v[k] = val.clone();
    }
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn manager(dir: &Path, max_snapshots: usize) -> SnapshotManager {
    SnapshotManager::local(
        dir,
        SnapshotConfig::default().with_max_snapshots(max_snapshots),
    )
    .unwrap()
}

/// A full snapshot and an incremental on it.
async fn chain(m: &SnapshotManager) -> (SnapshotMetadata, SnapshotMetadata) {
    let store = store_with(&[("a", 5, 3), ("b", 4, 3)]).await;
    let full = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    (full, inc)
}

#[tokio::test]
async fn parents_forged_into_a_cycle_do_not_hang_retention() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 0);
    let (full, inc) = chain(&m).await;
    forge(
        dir.path(),
        full.id.as_str(),
        json!({"snapshot_type": "incremental", "parent_id": inc.id}),
    );
    let policy = RetentionPolicy::keep_last(1);
    let dry = tokio::time::timeout(PATIENCE, m.apply_retention(&policy, true))
        .await
        .expect("a dry-run prune over a parent cycle must end");
    let dry = dry.unwrap();
    assert_eq!(dry.plan.keep.len(), 2, "{dry:?}");
    // The same planner runs after every create (max_snapshots), where no timeout is set.
    let m10 = manager(dir.path(), 10);
    let store = store_with(&[("c", 2, 3)]).await;
    tokio::time::timeout(
        PATIENCE,
        m10.create_snapshot(&store, CreateOptions::default()),
    )
    .await
    .expect("a create followed by retention over a parent cycle must end")
    .unwrap();
    // Delete and verify walk the same links.
    let err = tokio::time::timeout(PATIENCE, m.delete_snapshot(inc.id.as_str(), false))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::HasDependents { .. }), "{err}");
    let all = tokio::time::timeout(PATIENCE, m.verify_all())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
}

#[tokio::test]
async fn a_sidecar_naming_itself_as_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 0);
    let (_, inc) = chain(&m).await;
    forge(dir.path(), inc.id.as_str(), json!({"parent_id": inc.id}));
    let err = m.get_snapshot_metadata(inc.id.as_str()).await.unwrap_err();
    assert!(
        err.to_string().contains("names itself as its parent"),
        "{err}"
    );
    let catalog = m.list_catalog().await.unwrap();
    assert_eq!(catalog.damaged.len(), 1);
    assert_eq!(catalog.damaged[0].id, inc.id);
}

#[tokio::test]
async fn a_damaged_sidecar_is_reported_and_removable_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 0);
    let (full, inc) = chain(&m).await;
    let other = m
        .create_snapshot(&store_with(&[("z", 3, 2)]).await, CreateOptions::default())
        .await
        .unwrap();
    std::fs::write(sidecar_path(dir.path(), full.id.as_str()), b"{ not json").unwrap();

    // list: the readable ones, and the damaged one apart.
    let catalog = m.list_catalog().await.unwrap();
    let ids: Vec<_> = catalog.snapshots.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, [other.id.clone(), inc.id.clone()]);
    assert_eq!(catalog.damaged.len(), 1);
    assert_eq!(catalog.damaged[0].id, full.id);
    // The strict listing (what retention relies on) names it and the way out.
    let err = m.list_snapshots().await.unwrap_err().to_string();
    assert!(
        err.contains(full.id.as_str()) && err.contains("--force"),
        "{err}"
    );

    // verify --all: BROKEN with the reason, the rest checked.
    let outcomes = m.verify_all().await.unwrap();
    assert_eq!(outcomes.len(), 3);
    let broken: Vec<_> = outcomes.iter().filter(|o| o.problem.is_some()).collect();
    assert_eq!(broken.len(), 2, "the damaged one and the incremental on it");
    assert!(outcomes
        .iter()
        .any(|o| o.snapshot_id == other.id && o.report.is_some()));

    // Retention refuses, naming it; nothing is deleted.
    let err = m
        .apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(full.id.as_str()), "{err}");
    assert_eq!(m.list_catalog().await.unwrap().snapshots.len(), 2);

    // Deleting another snapshot is refused while the damaged one's parent is unknown.
    let err = m
        .delete_snapshot(other.id.as_str(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(full.id.as_str()), "{err}");

    // The damaged one: refused without force, removed (with what builds on it) with force.
    let err = m
        .delete_snapshot(full.id.as_str(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    let deleted = m.delete_snapshot(full.id.as_str(), true).await.unwrap();
    assert_eq!(deleted, [inc.id.clone(), full.id.clone()]);
    assert_eq!(m.list_snapshots().await.unwrap(), [other.summary()]);
    assert!(!dakera_snapshot::testing::blob_path(dir.path(), full.id.as_str()).exists());
    m.apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .unwrap();
}

#[tokio::test]
async fn gc_never_deletes_a_blob_whose_sidecar_it_cannot_rule_out() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dir.path()).unwrap());
    let m = SnapshotManager::new(local.clone(), SnapshotConfig::default()).unwrap();
    let store = store_with(&[("a", 5, 3)]).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    // gc's listing predates the commit (its sidecar is not listed), and the last check
    // before deleting fails with an error that is not "not found".
    let hiding = HidingSink::new(local.clone());
    hiding.hide_from_listing(&sidecar_key(snap.id.as_str()));
    let faulty = FaultySink::new(hiding.clone());
    faulty.inject_every(Call::Head, Fault::Fail);
    let gc = SnapshotManager::new(faulty.clone(), SnapshotConfig::default()).unwrap();
    let outcome = gc.collect_garbage(Duration::ZERO, false).await;
    assert!(outcome.is_err(), "{outcome:?}");
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
    assert_eq!(
        restore_all(&m, snap.id.as_str())
            .await
            .get_all("a")
            .await
            .unwrap()
            .len(),
        5
    );
    // When the repository does say "not found", the orphan goes.
    faulty.clear_faults();
    hiding.show_all();
    std::fs::remove_file(sidecar_path(dir.path(), snap.id.as_str())).unwrap();
    let report = gc.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert_eq!(report.removed, [blob_key(snap.id.as_str()).to_string()]);
}

#[tokio::test]
async fn a_failed_copy_leaves_a_concurrently_committed_copy_alone() {
    let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source_sink = FaultySink::new(Arc::new(LocalFsSink::new(src_dir.path()).unwrap()));
    let source = SnapshotManager::new(source_sink.clone(), SnapshotConfig::default()).unwrap();
    let store = store_with(&[("a", 50, 8)]).await;
    let snap = source
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let dst_local: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dst_dir.path()).unwrap());
    // Another copier committed the snapshot at the destination, after this copier looked
    // (the destination still answers "not found" for the sidecar to this one).
    let other = SnapshotManager::new(dst_local.clone(), SnapshotConfig::default()).unwrap();
    source
        .copy_snapshot(snap.id.as_str(), &other)
        .await
        .unwrap();
    let hiding = HidingSink::new(dst_local.clone());
    hiding.hide_from_reads(&sidecar_key(snap.id.as_str()));
    let stale = SnapshotManager::new(hiding, SnapshotConfig::default()).unwrap();
    // This copier's read of the source blob comes back short: its copy fails.
    source_sink.clear_faults();
    source_sink.reset();
    // (get 0 is the source sidecar, get 1 the source blob)
    source_sink.inject_nth(Call::Get, 1, Fault::Truncate);
    let err = source
        .copy_snapshot(snap.id.as_str(), &stale)
        .await
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    // The committed copy at the destination is whole.
    other.verify_snapshot(snap.id.as_str()).await.unwrap();
}
