//! The operator operations behind the CLI, through the library: copy between repositories
//! (damaged sources, conflicts, missing parents, idempotence), lineage with a missing
//! ancestor, verify_all's report, diff and `latest`.

mod common;

use common::{dump, restore_all, store_with};
use dakera_snapshot::id::SeededRandom;
use dakera_snapshot::{
    CopyOutcome, CreateOptions, Error, ManualClock, SnapshotConfig, SnapshotManager, Vector,
    VectorStorage,
};
use std::path::Path;

const T0: u64 = 1_790_000_000_000;

/// A manager whose ids are reproducible: the same seed gives the same ids.
fn manager(dir: &Path, seed: u64) -> SnapshotManager {
    SnapshotManager::local(dir, SnapshotConfig::default().with_max_snapshots(0))
        .unwrap()
        .with_clock(ManualClock::new(T0))
        .with_random(SeededRandom::new(seed))
}

fn blob(dir: &Path, id: &str) -> std::path::PathBuf {
    dir.join(format!("snapshots/{id}.snap.gz"))
}

#[tokio::test]
async fn copy_checks_the_source_and_commits_nothing_damaged() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = manager(a.path(), 1);
    let dst = manager(b.path(), 2);
    let store = store_with(&[("x", 200, 8)]).await;
    let snap = src
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let id = snap.id.as_str();

    // A flipped byte in the source: refused, and the destination holds nothing afterwards.
    let path = blob(a.path(), id);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let err = src.copy_snapshot(id, &dst).await.unwrap_err();
    assert!(err.is_corrupt() && err.to_string().contains(id), "{err}");
    assert!(dst.list_snapshots().await.unwrap().is_empty());
    assert!(!blob(b.path(), id).exists(), "the partial copy was left");

    // A truncated source: refused too.
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    let err = src.copy_snapshot(id, &dst).await.unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(dst.list_snapshots().await.unwrap().is_empty());

    // Repaired: copied, then skipped, and the copy restores the same data.
    std::fs::write(&path, &good).unwrap();
    assert_eq!(
        src.copy_snapshot(id, &dst).await.unwrap(),
        CopyOutcome::Copied {
            snapshot_id: snap.id.clone(),
            bytes: snap.size_bytes
        }
    );
    assert_eq!(
        src.copy_snapshot(id, &dst).await.unwrap(),
        CopyOutcome::AlreadyPresent {
            snapshot_id: snap.id.clone()
        }
    );
    dst.verify_snapshot(id).await.unwrap();
    assert_eq!(dump(&restore_all(&dst, id).await).await, dump(&store).await);
    // The sidecar is copied byte for byte.
    let sidecar = |d: &Path| std::fs::read(d.join(format!("snapshots/{id}.meta.json"))).unwrap();
    assert_eq!(sidecar(a.path()), sidecar(b.path()));
}

#[tokio::test]
async fn copy_refuses_a_different_snapshot_under_the_same_id_and_a_missing_parent() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Same clock and seed: both repositories produce the same first id, with other content.
    let src = manager(a.path(), 7);
    let dst = manager(b.path(), 7);
    let one = src
        .create_snapshot(&store_with(&[("x", 10, 4)]).await, CreateOptions::default())
        .await
        .unwrap();
    let other = dst
        .create_snapshot(&store_with(&[("y", 10, 4)]).await, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(one.id, other.id);
    let err = src.copy_snapshot(one.id.as_str(), &dst).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(
        dst.get_snapshot_metadata(one.id.as_str()).await.unwrap(),
        other,
        "the destination's snapshot was changed"
    );

    // An incremental whose parent the destination lacks is refused; copy_plan brings it.
    let store = store_with(&[("x", 10, 4)]).await;
    let c = tempfile::tempdir().unwrap();
    let fresh = manager(c.path(), 9);
    store
        .upsert("x", vec![Vector::new("new", vec![0.0; 4])])
        .await
        .unwrap();
    let inc = src
        .create_incremental_snapshot(&store, one.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let err = src
        .copy_snapshot(inc.id.as_str(), &fresh)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BrokenChain { .. }), "{err}");
    let plan = src.copy_plan(std::slice::from_ref(&inc.id)).await.unwrap();
    assert_eq!(plan, vec![one.id.clone(), inc.id.clone()]);
    for id in &plan {
        src.copy_snapshot(id.as_str(), &fresh).await.unwrap();
    }
    assert_eq!(
        dump(&restore_all(&fresh, inc.id.as_str()).await).await,
        dump(&store).await
    );
}

#[tokio::test]
async fn lineage_verify_all_diff_and_latest_report_a_lost_ancestor() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), 3);
    assert!(matches!(
        m.find_snapshot("latest").await.unwrap_err(),
        Error::SnapshotNotFound { .. }
    ));
    let store = store_with(&[("a", 10, 4), ("b", 10, 2)]).await;
    let full = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store
        .upsert("a", vec![Vector::new("new", vec![0.0; 4])])
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(m.find_snapshot("latest").await.unwrap(), inc.id);

    let d = m
        .diff_snapshots(full.id.as_str(), inc.id.as_str())
        .await
        .unwrap();
    let kinds: Vec<_> = d
        .namespaces
        .iter()
        .map(|e| (e.namespace.as_str(), e.kind))
        .collect();
    use dakera_snapshot::DiffKind::*;
    assert_eq!(kinds, vec![("a", Changed), ("b", Unchanged)]);
    assert_eq!(
        (
            d.namespaces[0].vectors_before,
            d.namespaces[0].vectors_after
        ),
        (Some(10), Some(11))
    );

    // Lose the full snapshot's sidecar (as if deleted behind our back).
    std::fs::remove_file(dir.path().join(format!("snapshots/{}.meta.json", full.id))).unwrap();
    let l = m.lineage(inc.id.as_str()).await.unwrap();
    assert_eq!(l.chain.len(), 1);
    assert_eq!(l.missing, Some(full.id.clone()));
    let all = m.verify_all().await.unwrap();
    assert_eq!(all.len(), 1);
    let problem = all[0].problem.as_deref().unwrap();
    assert!(
        problem.contains(full.id.as_str()) && problem.contains("missing"),
        "{problem}"
    );
    assert!(m.copy_plan(std::slice::from_ref(&inc.id)).await.is_err());
}
