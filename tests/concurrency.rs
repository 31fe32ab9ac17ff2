//! Several managers on one repository at once: creating (full and incremental), pruning and
//! deleting concurrently never loses a snapshot nobody deleted and never leaves a listed
//! snapshot that does not verify (a broken chain). Run on a local directory and on moto.
//! Plus the two halves of the protocol that makes it so, provoked deterministically: pins
//! (a prune spares the parent of an incremental being written) and the post-commit parent
//! check (an incremental whose parent vanished anyway is withdrawn, not left broken).

mod common;

use common::servers::{self, announce};
use common::{listed_all_verify, store_with};
use dakera_snapshot::sink::fault::{Call, Fault, FaultySink};
use dakera_snapshot::{
    sink_from_url, CreateOptions, Error, LocalFsSink, RetentionPolicy, SinkOptions, SnapshotConfig,
    SnapshotManager, SnapshotSink, Vector, VectorStorage,
};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config() -> SnapshotConfig {
    SnapshotConfig::default().with_max_snapshots(0)
}

/// A repository with one full snapshot made by `plain`, then `more` full snapshots after
/// it, and an incremental on the first one started in the background whose first upload
/// write stalls for `stall`.
struct Stalled {
    dir: tempfile::TempDir,
    plain: SnapshotManager,
    parent: dakera_snapshot::SnapshotMetadata,
    later: Vec<dakera_snapshot::SnapshotMetadata>,
    create: tokio::task::JoinHandle<dakera_snapshot::Result<dakera_snapshot::SnapshotMetadata>>,
}

async fn stalled_incremental(more: usize, stall: Duration) -> Stalled {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dir.path()).unwrap());
    let plain = SnapshotManager::new(inner.clone(), config()).unwrap();
    let store = store_with(&[("a", 50, 8)]).await;
    let mut made = Vec::new();
    for _ in 0..=more {
        made.push(
            plain
                .create_snapshot(&store, CreateOptions::default())
                .await
                .unwrap(),
        );
    }
    store
        .upsert("a", vec![Vector::new("x", vec![0.0; 8])])
        .await
        .unwrap();
    let slow = FaultySink::new(inner);
    slow.inject_nth(Call::Write, 0, Fault::Delay(stall));
    let writer = SnapshotManager::new(slow.clone(), config()).unwrap();
    let parent = made.remove(0);
    let pid = parent.id.to_string();
    let create = tokio::spawn(async move {
        writer
            .create_incremental_snapshot(&store, &pid, None, CreateOptions::default())
            .await
    });
    // Wait until the writer is stalled in its upload: it has pinned and read its parent.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !slow.calls().iter().any(|r| r.call == Call::Write) {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never started its upload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Stalled {
        dir,
        plain,
        parent,
        later: made,
        create,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_spares_the_parent_of_an_incremental_being_written() {
    // The incremental on `old` stalls in its upload while a prune runs.
    let Stalled {
        dir,
        plain,
        parent: old,
        later,
        create,
    } = stalled_incremental(1, Duration::from_secs(3)).await;
    let report = plain
        .apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    let why = &report
        .plan
        .keep
        .iter()
        .find(|(id, _)| *id == old.id)
        .unwrap()
        .1;
    assert!(why.iter().any(|r| r.contains("pinned")), "{why:?}");
    let inc = create.await.unwrap().unwrap();
    plain.verify_snapshot(inc.id.as_str()).await.unwrap();
    // With the incremental committed, retention keeps `old` as its ancestor; the pin is gone.
    let listed: Vec<_> = plain.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(std::fs::read_dir(dir.path().join("pins"))
        .unwrap()
        .next()
        .is_none());
    let report = plain
        .apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .unwrap();
    assert_eq!(report.deleted, vec![later[0].id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_whose_parent_vanishes_is_withdrawn_not_left_broken() {
    let Stalled {
        dir,
        plain,
        parent,
        create,
        ..
    } = stalled_incremental(0, Duration::from_secs(2)).await;
    // Something that ignores pins (an older version, a manual rm) removes the parent.
    std::fs::remove_file(
        dir.path()
            .join(format!("snapshots/{}.meta.json", parent.id)),
    )
    .unwrap();
    let err = create.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }) && err.to_string().contains("withdrawn"),
        "{err}"
    );
    assert!(plain.list_snapshots().await.unwrap().is_empty());
}

/// Which `get` (from 0) in `calls` first reads snapshot `id`'s blob.
fn first_get_of_blob(calls: &FaultySink, id: &str) -> usize {
    calls
        .calls()
        .iter()
        .filter(|c| c.call == Call::Get)
        .position(|c| c.key.ends_with(&format!("{id}.snap.gz")))
        .expect("the blob is read")
}

/// Once `get` number `nth` of `calls` has started (delayed by the test), removes snapshot
/// `id` from the repository at `root` as a delete does: sidecar first, then blob.
async fn delete_during_get(calls: &FaultySink, nth: usize, root: &std::path::Path, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while calls.calls().iter().filter(|c| c.call == Call::Get).count() <= nth {
        assert!(
            std::time::Instant::now() < deadline,
            "the blob was never read"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for file in [
        format!("snapshots/{id}.meta.json"),
        format!("data/{id}.snap.gz"),
    ] {
        std::fs::remove_file(root.join(file)).unwrap();
    }
}

/// A repository with a full snapshot made by `plain`, the store changed since, and a
/// manager for incrementals whose calls go through `calls` (a [`FaultySink`]).
struct OnParent {
    dir: tempfile::TempDir,
    plain: SnapshotManager,
    calls: Arc<FaultySink>,
    writer: SnapshotManager,
    store: dakera_snapshot::InMemoryStorage,
    parent: String,
}

async fn on_a_parent() -> OnParent {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dir.path()).unwrap());
    let plain = SnapshotManager::new(inner.clone(), config()).unwrap();
    let store = store_with(&[("a", 50, 8)]).await;
    let parent = plain
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap()
        .id
        .to_string();
    store
        .upsert("a", vec![Vector::new("x", vec![0.0; 8])])
        .await
        .unwrap();
    let calls = FaultySink::new(inner);
    let writer = SnapshotManager::new(calls.clone(), config()).unwrap();
    OnParent {
        dir,
        plain,
        calls,
        writer,
        store,
        parent,
    }
}

/// Which `get` (from 0) of an incremental on a fresh parent first reads the parent's blob.
async fn first_get_of_the_parents_blob() -> usize {
    let r = on_a_parent().await;
    r.writer
        .create_incremental_snapshot(&r.store, &r.parent, None, CreateOptions::default())
        .await
        .unwrap();
    first_get_of_blob(&r.calls, &r.parent)
}

/// The other side of the pin: a delete that looked for pins just before the writer placed
/// its own removes the parent while the writer reads it (here the files are removed as that
/// delete would, sidecar first). The incremental fails as a conflict that says so, not as
/// corruption of the parent, and commits nothing. (Seen once in CI's stress run on moto.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_deleted_while_its_blob_is_read_is_a_conflict_not_corruption() {
    let nth = first_get_of_the_parents_blob().await;
    let r = on_a_parent().await;
    r.calls
        .inject_nth(Call::Get, nth, Fault::Delay(Duration::from_millis(300)));
    let (writer, store, pid) = (r.writer, r.store, r.parent.clone());
    let create = tokio::spawn(async move {
        writer
            .create_incremental_snapshot(&store, &pid, None, CreateOptions::default())
            .await
    });
    delete_during_get(&r.calls, nth, r.dir.path(), &r.parent).await;
    let err = create.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. })
            && err.to_string().contains(&r.parent)
            && err
                .to_string()
                .contains("deleted by a concurrent prune or delete"),
        "{err}"
    );
    assert!(r.plain.list_snapshots().await.unwrap().is_empty());
}

/// `verify --all` while a prune deletes one of the snapshots it listed (here: the files
/// removed as that delete would, sidecar first, while the snapshot's blob is being read): the
/// deleted snapshot is not reported at all, not as damage; the others verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_deleted_while_verify_all_reads_it_is_not_reported_damaged() {
    let two_snapshots = || async {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dir.path()).unwrap());
        let plain = SnapshotManager::new(inner.clone(), config()).unwrap();
        let store = store_with(&[("a", 50, 8)]).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let made = plain
                .create_snapshot(&store, CreateOptions::default())
                .await;
            ids.push(made.unwrap().id.to_string());
        }
        let calls = FaultySink::new(inner);
        let verifier = SnapshotManager::new(calls.clone(), config()).unwrap();
        (dir, calls, verifier, ids)
    };
    // Which `get` of `verify_all` first reads the older snapshot's blob.
    let nth = {
        let (_dir, calls, verifier, ids) = two_snapshots().await;
        assert!(verifier.verify_all().await.unwrap().iter().all(|o| o.ok));
        first_get_of_blob(&calls, &ids[0])
    };
    let (dir, calls, verifier, ids) = two_snapshots().await;
    calls.inject_nth(Call::Get, nth, Fault::Delay(Duration::from_millis(300)));
    let run = tokio::spawn(async move { verifier.verify_all().await });
    delete_during_get(&calls, nth, dir.path(), &ids[0]).await;
    let outcomes = run.await.unwrap().unwrap();
    let reported: Vec<String> = outcomes.iter().map(|o| o.snapshot_id.to_string()).collect();
    assert_eq!(reported, vec![ids[1].clone()], "{outcomes:?}");
    assert!(outcomes[0].ok, "{outcomes:?}");
}

/// A full snapshot of two namespaces; a manager on it whose calls go through a [`FaultySink`].
async fn one_snapshot() -> (tempfile::TempDir, Arc<FaultySink>, SnapshotManager, String) {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dir.path()).unwrap());
    let plain = SnapshotManager::new(inner.clone(), config()).unwrap();
    let store = store_with(&[("a", 50, 8), ("b", 20, 4)]).await;
    let made = plain
        .create_snapshot(&store, CreateOptions::default())
        .await;
    let calls = FaultySink::new(inner);
    let reader = SnapshotManager::new(calls.clone(), config()).unwrap();
    (dir, calls, reader, made.unwrap().id.to_string())
}

/// What `read` (of the snapshot, by the manager given) fails with when a prune deletes the
/// snapshot while `read` reads its blob (the files removed as that delete would, sidecar
/// first, during a delayed read).
async fn deleted_while<F, Fut>(read: F) -> Error
where
    F: Fn(SnapshotManager, String) -> Fut,
    Fut: std::future::Future<Output = dakera_snapshot::Result<()>> + Send + 'static,
{
    let nth = {
        let (_dir, calls, reader, id) = one_snapshot().await;
        read(reader, id.clone()).await.unwrap();
        first_get_of_blob(&calls, &id)
    };
    let (dir, calls, reader, id) = one_snapshot().await;
    calls.inject_nth(Call::Get, nth, Fault::Delay(Duration::from_millis(300)));
    let run = tokio::spawn(read(reader, id.clone()));
    delete_during_get(&calls, nth, dir.path(), &id).await;
    run.await.unwrap().unwrap_err()
}

/// A restore, or an export (`read_vectors`), whose snapshot a prune deletes while it reads
/// it: a conflict that says so, not corruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_deleted_while_it_is_restored_or_exported_is_a_conflict_not_corruption() {
    let restore = deleted_while(|m, id| async move {
        let target = dakera_snapshot::InMemoryStorage::new();
        let options = dakera_snapshot::RestoreOptions::new();
        m.restore_snapshot(&target, &id, &options).await.map(drop)
    })
    .await;
    let export =
        deleted_while(
            |m, id| async move { m.read_vectors(&id, None, |_, _| Ok(())).await.map(drop) },
        )
        .await;
    for err in [restore, export] {
        assert!(
            matches!(err, Error::Conflict { .. })
                && err
                    .to_string()
                    .contains("deleted by a concurrent prune or delete"),
            "{err}"
        );
    }
}

/// A blob missing under a sidecar that is still there is corruption, and an incremental on
/// it says so (the check above does not turn every missing blob into a conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_blob_alone_is_missing_is_corrupt() {
    let r = on_a_parent().await;
    std::fs::remove_file(r.dir.path().join(format!("data/{}.snap.gz", r.parent))).unwrap();
    let err = r
        .writer
        .create_incremental_snapshot(&r.store, &r.parent, None, CreateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("the blob is missing"),
        "{err}"
    );
}

/// What the stress workers saw.
#[derive(Default)]
struct Ledger {
    committed: BTreeSet<String>,
    deleted: BTreeSet<String>,
    refused: usize,
}

async fn stress(sink: Arc<dyn SnapshotSink>, rounds: usize) -> (usize, usize, usize) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let manager = |seed: u64| {
        SnapshotManager::new(sink.clone(), config())
            .unwrap()
            .with_random(dakera_snapshot::id::SeededRandom::new(seed))
    };
    let mut tasks = Vec::new();
    // Two writers: full snapshots and incrementals on whatever is newest.
    for w in 0..2u64 {
        let (m, ledger) = (manager(100 + w), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let store = store_with(&[("a", 40, 8), ("b", 10, 4)]).await;
            for i in 0..rounds {
                store
                    .upsert(
                        "a",
                        vec![Vector::new(format!("w{w}-{i}"), vec![i as f32; 8])],
                    )
                    .await
                    .unwrap();
                let newest = m
                    .list_snapshots()
                    .await
                    .unwrap()
                    .first()
                    .map(|s| s.id.clone());
                let made = match (i % 3, newest) {
                    (0, _) | (_, None) => m.create_snapshot(&store, CreateOptions::default()).await,
                    (_, Some(p)) => {
                        m.create_incremental_snapshot(
                            &store,
                            p.as_str(),
                            None,
                            CreateOptions::default(),
                        )
                        .await
                    }
                };
                match made {
                    Ok(s) => {
                        ledger.lock().unwrap().committed.insert(s.id.to_string());
                    }
                    // The parent went away before or during the write: reported, not broken.
                    Err(
                        Error::Conflict { .. }
                        | Error::SnapshotNotFound { .. }
                        | Error::BrokenChain { .. },
                    ) => {
                        ledger.lock().unwrap().refused += 1;
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
        }));
    }
    // A pruner.
    {
        let (m, ledger) = (manager(200), ledger.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                match m
                    .apply_retention(&RetentionPolicy::keep_last(2), false)
                    .await
                {
                    Ok(r) => ledger
                        .lock()
                        .unwrap()
                        .deleted
                        .extend(r.deleted.iter().map(|d| d.to_string())),
                    // A snapshot deleted by the deleter between listing and reading.
                    Err(e) => panic!("prune: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // A deleter: removes the oldest snapshot (and what builds on it).
    {
        let (m, ledger) = (manager(300), ledger.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds / 2 {
                let all = m.list_snapshots().await.unwrap();
                if let Some(oldest) = all.last().filter(|_| all.len() > 2) {
                    match m.delete_snapshot(oldest.id.as_str(), true).await {
                        Ok(gone) => ledger
                            .lock()
                            .unwrap()
                            .deleted
                            .extend(gone.iter().map(|d| d.to_string())),
                        Err(Error::Conflict { .. } | Error::SnapshotNotFound { .. }) => {}
                        Err(e) => panic!("delete: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = manager(400);
    let listed = listed_all_verify(&m, "after the concurrent run").await;
    let l = ledger.lock().unwrap();
    let lost: Vec<&String> = l
        .committed
        .iter()
        .filter(|id| !l.deleted.contains(*id) && !listed.contains(*id))
        .collect();
    assert!(lost.is_empty(), "snapshots lost: {lost:?}");
    (l.committed.len(), l.deleted.len(), l.refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_pruners_and_deleters_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn SnapshotSink> = Arc::new(LocalFsSink::new(dir.path()).unwrap());
    let (made, deleted, refused) = stress(sink, 24).await;
    announce(&format!(
        "concurrency (local): 2 writers, a pruner and a deleter: {made} snapshots committed, {deleted} deleted by prune/delete, \
         {refused} incrementals refused because their parent went; none lost, every listed one verifies"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_pruners_and_deleters_on_s3() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    let url = format!(
        "{}/concurrency-{:016x}",
        server.url,
        getrandom::u64().unwrap()
    );
    let options: SinkOptions = server.options.clone();
    let sink = sink_from_url(&url, &options).unwrap();
    let (made, deleted, refused) = stress(sink, 12).await;
    announce(&format!(
        "concurrency ({}): 2 writers, a pruner and a deleter: {made} committed, {deleted} deleted, {refused} refused; none lost, all verify",
        server.name
    ));
}
