//! The operator operations behind the CLI, through the library: copy between repositories
//! (damaged sources, conflicts, missing parents, idempotence), lineage with a missing
//! ancestor, verify_all's report, diff and `latest`.

mod common;

use common::{dump, restore_all, store_with};
use dakera_snapshot::id::SeededRandom;
use dakera_snapshot::{
    CopyOutcome, CreateOptions, Error, InMemoryStorage, ManualClock, SnapshotConfig,
    SnapshotManager, SnapshotMetadata, Vector, VectorStorage,
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
    dakera_snapshot::testing::blob_path(dir, id)
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
    let err = m.find_snapshot("latest").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "latest names no snapshot: {} has no snapshots yet",
            m.sink().describe()
        )
    );
    let store = store_with(&[("a", 10, 4), ("b", 10, 2)]).await;
    let (full, inc) = full_then_incremental(&m, &store, 4).await;
    assert_eq!(m.find_snapshot("latest").await.unwrap(), inc.id);
    assert_eq!(m.find_snapshot("latest~0").await.unwrap(), inc.id);
    assert_eq!(m.find_snapshot("latest~1").await.unwrap(), full.id);
    let err = m.find_snapshot("latest~2").await.unwrap_err().to_string();
    assert!(err.ends_with("has only 2 snapshots"), "{err}");
    for bad in ["latest~", "latest~x", "latest~-1", "latestx"] {
        let err = m.find_snapshot(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad}: {err}");
    }

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

/// One reported phase: its name, its total, the bytes advanced, whether it ended.
type Phase = (String, Option<u64>, u64, bool);

/// Records what a manager reports to its progress.
#[derive(Debug, Default)]
struct Recorded(std::sync::Mutex<Vec<Phase>>);

impl dakera_snapshot::Progress for Recorded {
    fn begin(&self, what: &str, total: Option<u64>) {
        self.0
            .lock()
            .unwrap()
            .push((what.to_string(), total, 0, false));
    }
    fn advance(&self, bytes: u64) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.2 += bytes;
        }
    }
    fn end(&self) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.3 = true;
        }
    }
}

#[tokio::test]
async fn long_operations_report_named_phases_that_end_at_their_total() {
    let dir = tempfile::tempdir().unwrap();
    let progress = std::sync::Arc::new(Recorded::default());
    let m = manager(dir.path(), 0).with_progress(progress.clone());
    let store = store_with(&[("a", 300, 8), ("b", 200, 4)]).await;
    let (full, inc) = full_then_incremental(&m, &store, 8).await;
    m.read_vectors(inc.id.as_str(), None, |_, _| Ok(()))
        .await
        .unwrap();
    let phases = progress.0.lock().unwrap().clone();
    let names: Vec<String> = phases
        .iter()
        .map(|p| p.0.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["write", "compare", "write", "export"], "{phases:?}");
    assert_eq!(phases[0].0, format!("write {}", full.id));
    for (what, total, done, ended) in &phases {
        assert!(ended, "{what} never ended");
        assert_eq!(Some(*done), *total, "{what} does not end at its total");
    }
    // value bytes: 300 x 8 + 200 x 4 floats; the incremental compares both namespaces and
    // writes only the changed one (301 x 8).
    assert_eq!(phases[0].1, Some(4 * (300 * 8 + 200 * 4)));
    assert_eq!(phases[2].1, Some(4 * 301 * 8));
}

/// A full snapshot of `store`, one new vector in namespace `a` (of dimension `dim`), then an
/// incremental (changes found by digest).
async fn full_then_incremental(
    m: &SnapshotManager,
    store: &InMemoryStorage,
    dim: usize,
) -> (SnapshotMetadata, SnapshotMetadata) {
    let full = m
        .create_snapshot(store, CreateOptions::default())
        .await
        .unwrap();
    store
        .upsert("a", vec![Vector::new("zzz-new", vec![0.5; dim])])
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    (full, inc)
}
