//! Where a repository keeps its blobs. New repositories keep them under `data/` (their
//! `config.json` says version 2), so listing `snapshots/` reads only sidecars; repositories
//! written before keep them beside the sidecars, and every path (create, list, verify,
//! restore, delete, gc, copy) follows the repository's own layout.

mod common;

use common::fixtures::fixture_copy;
use common::servers::{self, announce};
use common::{dump, make_vectors, restore_all, store_with};
use dakera_snapshot::sink::fault::{Call, Fault, FaultySink};
use dakera_snapshot::{
    sink_from_url, CreateOptions, Error, InMemoryStorage, KdfParams, LocalFsSink, SnapshotConfig,
    SnapshotManager, SnapshotMetadata, SnapshotSink, VectorStorage,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The format 3.0 fixture's full snapshot (blobs beside sidecars, no config).
const V30_FULL: &str = "20261203T124217682Z-a8dd712f0ac0032f";

fn manager(dir: &Path) -> SnapshotManager {
    SnapshotManager::local(dir, SnapshotConfig::default().with_max_snapshots(0)).unwrap()
}

/// The files under `dir/sub`, by name (empty when `sub` does not exist).
fn files(dir: &Path, sub: &str) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
        return BTreeSet::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn config_version(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    config["version"].as_u64()
}

fn blob_name(id: &impl std::fmt::Display) -> String {
    format!("{id}.snap.gz")
}

/// Asserts that `data/` holds exactly the blobs of `ids`.
#[track_caller]
fn assert_data_holds(dir: &Path, ids: &[&str]) {
    let want: BTreeSet<String> = ids.iter().map(blob_name).collect();
    assert_eq!(files(dir, "data"), want);
}

fn only_sidecars(names: &BTreeSet<String>) -> bool {
    names
        .iter()
        .all(|n| n.ends_with(".meta.json") || n.starts_with('.'))
}

/// A full snapshot of `store` by `m`, which must succeed.
async fn full(m: &SnapshotManager, store: &InMemoryStorage) -> SnapshotMetadata {
    m.create_snapshot(store, CreateOptions::default())
        .await
        .unwrap()
}

async fn changed(store: &InMemoryStorage) {
    let mut v = make_vectors("alpha", 1, 4).remove(0);
    v.values[0] += 1.0;
    store.upsert("alpha", vec![v]).await.unwrap();
}

#[tokio::test]
async fn a_new_repository_keeps_blobs_under_data_and_only_sidecars_under_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    let store = store_with(&[("alpha", 40, 4), ("beta", 5, 4)]).await;
    let full = full(&m, &store).await;
    changed(&store).await;
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(config_version(dir.path()), Some(2));
    assert_data_holds(dir.path(), &[full.id.as_str(), inc.id.as_str()]);
    let sidecars = files(dir.path(), "snapshots");
    assert!(only_sidecars(&sidecars), "{sidecars:?}");
    assert_eq!(m.list_snapshots().await.unwrap().len(), 2);
    m.verify_snapshot(inc.id.as_str()).await.unwrap();
    assert_eq!(
        dump(&restore_all(&m, inc.id.as_str()).await).await,
        dump(&store).await
    );
    let gc = m.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert!(gc.orphan_blobs.is_empty(), "{gc:?}");
    m.delete_snapshot(inc.id.as_str(), false).await.unwrap();
    assert_data_holds(dir.path(), &[full.id.as_str()]);
}

#[tokio::test]
async fn gc_finds_an_orphan_under_data_and_leaves_committed_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    let store = store_with(&[("alpha", 10, 4)]).await;
    let kept = full(&m, &store).await;
    let doomed = full(&m, &store).await;
    // A writer that died between upload and commit leaves a blob without a sidecar.
    std::fs::remove_file(
        dir.path()
            .join(format!("snapshots/{}.meta.json", doomed.id)),
    )
    .unwrap();
    let gc = m.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert_eq!(gc.removed, [format!("data/{}", blob_name(&doomed.id))]);
    assert_data_holds(dir.path(), &[kept.id.as_str()]);
    m.verify_snapshot(kept.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn a_repository_written_before_keeps_its_blobs_beside_the_sidecars() {
    let (_tmp, dir) = fixture_copy("format-3.0");
    let before = files(&dir, "snapshots");
    let m = manager(&dir);
    let store = store_with(&[("alpha", 20, 4)]).await;
    let new = full(&m, &store).await;
    assert_eq!(config_version(&dir), None, "no config is written into it");
    assert!(files(&dir, "data").is_empty());
    let after = files(&dir, "snapshots");
    assert!(after.contains(&blob_name(&new.id)), "{after:?}");
    assert!(before.is_subset(&after));
    // gc must not take the fixture's blobs, which lie beside their sidecars, for orphans.
    let gc = m.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert!(gc.orphan_blobs.is_empty(), "{gc:?}");
    for s in m.list_snapshots().await.unwrap() {
        m.verify_snapshot(s.id.as_str()).await.unwrap();
    }
}

#[tokio::test]
async fn init_on_a_repository_written_before_declares_its_old_layout() {
    let (_tmp, dir) = fixture_copy("format-3.0");
    manager(&dir).init(KdfParams::default()).await.unwrap();
    assert_eq!(config_version(&dir), Some(1));
    let m = manager(&dir);
    let store = store_with(&[("alpha", 20, 4)]).await;
    let new = full(&m, &store).await;
    assert!(files(&dir, "snapshots").contains(&blob_name(&new.id)));
    assert!(files(&dir, "data").is_empty());
    assert_eq!(m.list_snapshots().await.unwrap().len(), 4);
    m.verify_snapshot(V30_FULL).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_snapshots_at_once_agree_on_one_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (manager(dir.path()), manager(dir.path()));
    let store = store_with(&[("alpha", 30, 4)]).await;
    let (x, y) = tokio::join!(
        a.create_snapshot(&store, CreateOptions::default()),
        b.create_snapshot(&store, CreateOptions::default()),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(config_version(dir.path()), Some(2));
    assert_data_holds(dir.path(), &[x.id.as_str(), y.id.as_str()]);
    for m in [&a, &b] {
        m.verify_snapshot(x.id.as_str()).await.unwrap();
        m.verify_snapshot(y.id.as_str()).await.unwrap();
    }
}

#[tokio::test]
async fn a_config_of_a_later_version_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let later = br#"{"format":"dakera-snapshot-repository","version":3,"repository_id":"00","created_at_ms":0}"#;
    std::fs::write(dir.path().join("config.json"), later).unwrap();
    let m = manager(dir.path());
    let store = store_with(&[("alpha", 5, 4)]).await;
    let err = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    let err = m.list_snapshots().await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    let names = files(dir.path(), "");
    assert_eq!(names, BTreeSet::from(["config.json".to_string()]));
    assert_eq!(
        std::fs::read(dir.path().join("config.json")).unwrap(),
        later
    );
}

/// The first whole-object put of a first snapshot is its config.
async fn first_snapshot_with_failing_config_put(fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let sink = FaultySink::new(Arc::new(LocalFsSink::new(dir.path()).unwrap()));
    sink.inject_nth(Call::Put, 0, fault);
    let config = SnapshotConfig::default().with_max_snapshots(0);
    let m = SnapshotManager::new(sink.clone() as Arc<dyn SnapshotSink>, config.clone()).unwrap();
    let store = store_with(&[("alpha", 10, 4)]).await;
    m.create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap_err();
    let put = sink.calls().into_iter().find(|r| r.call == Call::Put);
    assert_eq!(put.unwrap().key, "config.json");
    assert!(files(dir.path(), "data").is_empty());
    assert!(only_sidecars(&files(dir.path(), "snapshots")));
    assert!(m.list_snapshots().await.unwrap().is_empty());
    // The next run (a fresh process) makes or finds the config and writes under data/.
    let again = SnapshotManager::new(sink as Arc<dyn SnapshotSink>, config).unwrap();
    let snap = full(&again, &store).await;
    assert_eq!(config_version(dir.path()), Some(2));
    assert_data_holds(dir.path(), &[snap.id.as_str()]);
    again.verify_snapshot(snap.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn a_config_put_that_fails_fails_the_first_snapshot_and_a_retry_works() {
    first_snapshot_with_failing_config_put(Fault::Fail).await;
}

#[tokio::test]
async fn a_config_put_whose_answer_is_lost_fails_the_first_snapshot_and_a_retry_works() {
    first_snapshot_with_failing_config_put(Fault::FailAfter).await;
}

#[tokio::test]
async fn copy_puts_blobs_where_the_destination_keeps_them() {
    let (_tmp, old) = fixture_copy("format-3.0");
    let old_m = manager(&old);
    let new_dir = tempfile::tempdir().unwrap();
    let new_m = manager(new_dir.path());
    old_m.copy_snapshot(V30_FULL, &new_m).await.unwrap();
    assert_data_holds(new_dir.path(), &[V30_FULL]);
    new_m.verify_snapshot(V30_FULL).await.unwrap();

    let store = store_with(&[("alpha", 12, 4)]).await;
    let fresh = full(&new_m, &store).await;
    new_m
        .copy_snapshot(fresh.id.as_str(), &old_m)
        .await
        .unwrap();
    assert!(files(&old, "snapshots").contains(&blob_name(&fresh.id)));
    assert!(files(&old, "data").is_empty());
    assert_eq!(
        dump(&restore_all(&old_m, fresh.id.as_str()).await).await,
        dump(&store).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_new_repository_lists_only_sidecars_under_snapshots() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    let url = format!("{}/layout-{:016x}", server.url, getrandom::u64().unwrap());
    let sink = sink_from_url(&url, &server.options).unwrap();
    let m = SnapshotManager::new(sink.clone(), SnapshotConfig::default()).unwrap();
    let store = store_with(&[("alpha", 20, 4)]).await;
    let snap = full(&m, &store).await;
    let keys = |prefix: &'static str| {
        let sink = sink.clone();
        async move {
            use futures::TryStreamExt;
            let prefix = dakera_snapshot::paths::Key::parse(prefix).unwrap();
            let listed: Vec<_> = sink.list(&prefix).try_collect().await.unwrap();
            listed
                .into_iter()
                .map(|o| o.key.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        keys("snapshots").await,
        [format!("snapshots/{}.meta.json", snap.id)]
    );
    assert_eq!(
        keys("data").await,
        [format!("data/{}", blob_name(&snap.id))]
    );
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
    m.delete_snapshot(snap.id.as_str(), false).await.unwrap();
    assert!(keys("data").await.is_empty());
    announce(&format!(
        "repository layout on {}: blobs under data/",
        server.name
    ));
}

#[tokio::test]
async fn a_manager_that_opened_an_empty_repository_finds_blobs_written_under_data_since() {
    let dir = tempfile::tempdir().unwrap();
    let early = manager(dir.path());
    assert!(early.list_snapshots().await.unwrap().is_empty());
    let store = store_with(&[("alpha", 15, 4)]).await;
    let snap = full(&manager(dir.path()), &store).await;
    early.verify_snapshot(snap.id.as_str()).await.unwrap();
    assert_eq!(
        dump(&restore_all(&early, snap.id.as_str()).await).await,
        dump(&store).await
    );
    std::fs::remove_file(dir.path().join(format!("snapshots/{}.meta.json", snap.id))).unwrap();
    let gc = early.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert_eq!(gc.removed, [format!("data/{}", blob_name(&snap.id))]);
}

#[tokio::test]
async fn gc_on_an_empty_repository_leaves_its_first_snapshot_the_new_layout() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    m.collect_garbage(Duration::ZERO, false).await.unwrap();
    let store = store_with(&[("alpha", 5, 4)]).await;
    let snap = full(&m, &store).await;
    assert_eq!(config_version(dir.path()), Some(2));
    assert_data_holds(dir.path(), &[snap.id.as_str()]);
}
