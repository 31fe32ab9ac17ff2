//! Exhaustive failure-point tests. Each operation runs once to count its sink calls; then,
//! for every call index and every fault kind, it runs again on a fresh repository with that
//! one call faulted, and the invariants are checked on the repository as a clean reader sees
//! it:
//! - no snapshot is listed unless it verifies;
//! - every snapshot committed before still verifies and restores identically (unless the
//!   operation's job was to delete it);
//! - a failed restore leaves each target namespace either untouched or fully restored;
//! - retention deletes nothing when the listing fails;
//! - retrying the operation without the fault succeeds.
//!
//! The number of failure points tested per operation is printed.

mod common;

use async_trait::async_trait;
use common::servers::announce;
use common::{dump, listed_all_verify, restore_all, store_with};
use dakera_snapshot::sink::fault::{Call, Fault, FaultySink};
use dakera_snapshot::{
    sink_from_url, CreateOptions, Error, InMemoryStorage, KdfParams, KeySource, LocalFsSink,
    RestoreOptions, Result, RetentionPolicy, SinkOptions, SnapshotConfig, SnapshotManager,
    SnapshotSink, Vector, VectorStorage,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type Dump = std::collections::BTreeMap<String, (Option<usize>, Vec<Vector>)>;

fn config() -> SnapshotConfig {
    // Small batches: several writes per namespace, so part failures are exercised; small
    // dedup chunks: incrementals reference chunks of their parent, so reads follow them.
    SnapshotConfig::default()
        .with_max_snapshots(0)
        .with_chunk_size(4096)
        .with_dedup_chunk_size(1024)
}

/// A fresh repository: a local directory, or a fresh prefix on an S3 server.
struct Repo {
    inner: Arc<dyn SnapshotSink>,
    /// The directory, for a local repository.
    dir: Option<PathBuf>,
    _guard: Option<tempfile::TempDir>,
    /// The key of an encrypted repository.
    key: Option<KeySource>,
}

impl Repo {
    fn local() -> Repo {
        let guard = tempfile::tempdir().unwrap();
        Repo {
            inner: Arc::new(LocalFsSink::new(guard.path()).unwrap()),
            dir: Some(guard.path().to_path_buf()),
            _guard: Some(guard),
            key: None,
        }
    }

    /// A local repository made encrypted (`init`, on a runtime of its own: the scenarios
    /// build repositories from synchronous code).
    fn local_encrypted() -> Repo {
        let repo = Repo::local();
        let sink = repo.inner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let m = SnapshotManager::new(sink, config())
                .unwrap()
                .with_key(key());
            rt.block_on(m.init(CHEAP_KDF)).unwrap();
        })
        .join()
        .unwrap();
        Repo {
            key: Some(key()),
            ..repo
        }
    }

    fn at(url: &str, options: &SinkOptions) -> Repo {
        let url = format!("{url}/faults-{:016x}", getrandom::u64().unwrap());
        Repo {
            inner: sink_from_url(&url, options).unwrap(),
            dir: None,
            _guard: None,
            key: None,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_deref().expect("a local repository")
    }
}

const CHEAP_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

fn key() -> KeySource {
    KeySource::password("fault-suite").unwrap()
}

/// A manager over `sink` for `repo`, with its key if it is encrypted.
fn manager(repo: &Repo, sink: Arc<dyn SnapshotSink>) -> SnapshotManager {
    let m = SnapshotManager::new(sink, config()).unwrap();
    match &repo.key {
        Some(k) => m.with_key(k.clone()),
        None => m,
    }
}

fn clean(repo: &Repo) -> SnapshotManager {
    manager(repo, repo.inner.clone())
}

fn faulty(repo: &Repo) -> (Arc<FaultySink>, SnapshotManager) {
    let sink = FaultySink::new(repo.inner.clone());
    let m = manager(repo, sink.clone());
    (sink, m)
}

/// One operation under test.
#[async_trait]
trait Scenario: Sized + Send + Sync {
    const NAME: &'static str;
    /// Builds the starting repository (with a clean manager).
    async fn setup(repo: &Repo) -> Self;
    /// The operation, through the faulty manager.
    async fn run(&self, m: &SnapshotManager) -> Result<()>;
    /// Invariants after a run that had one fault (`outcome` is what it returned).
    async fn check(&self, clean: &SnapshotManager, outcome: &Result<()>, context: &str);
    /// The retry after a faulted run; by default the operation again, which must succeed.
    async fn retry(&self, m: &SnapshotManager) {
        self.run(m).await.unwrap();
    }
    /// Invariants once the operation has succeeded.
    async fn check_done(&self, clean: &SnapshotManager, context: &str);
}

/// Runs scenario `S` with every fault at every call index, each on a repository from
/// `fresh`; returns the number of runs.
async fn exhaust<S: Scenario>(faults: &[Fault], backend: &str, fresh: &dyn Fn() -> Repo) -> usize {
    let repo = fresh();
    let s = S::setup(&repo).await;
    let (sink, m) = faulty(&repo);
    s.run(&m).await.unwrap();
    let calls = sink.call_count();
    s.check_done(&clean(&repo), "fault-free run").await;
    let mut runs = 0;
    for fault in faults {
        for i in 0..calls {
            let repo = fresh();
            let s = S::setup(&repo).await;
            let (sink, m) = faulty(&repo);
            sink.inject_at(i, *fault);
            let outcome = s.run(&m).await;
            let hit = sink.faulted();
            let context = format!(
                "{} on {backend}: {fault:?} at call {i} ({:?}), outcome {:?}",
                S::NAME,
                hit.first().map(|r| (r.call, r.key.clone())),
                outcome.as_ref().map_err(|e| e.to_string())
            );
            let c = clean(&repo);
            s.check(&c, &outcome, &context).await;
            sink.clear_faults();
            s.retry(&m).await;
            s.check_done(&c, &format!("{context}, after the retry"))
                .await;
            runs += 1;
        }
    }
    announce(&format!(
        "fault injection: {} on {backend}: {calls} sink calls x {} fault kinds = {runs} failure points, all invariants held",
        S::NAME,
        faults.len()
    ));
    runs
}

const WRITE_FAULTS: [Fault; 3] = [Fault::Fail, Fault::FailAfter, Fault::Truncate];

// ----- create (full) ------------------------------------------------------------------------

struct CreateFull {
    store: InMemoryStorage,
    base: String,
    base_data: Dump,
}

#[async_trait]
impl Scenario for CreateFull {
    const NAME: &'static str = "create (full)";

    async fn setup(repo: &Repo) -> Self {
        let store = store_with(&[("a", 60, 16), ("b", 30, 4)]).await;
        let base = clean(repo)
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
        let base_data = dump(&store).await;
        store
            .upsert("a", common::make_vectors("more", 20, 16))
            .await
            .unwrap();
        CreateFull {
            store,
            base: base.id.to_string(),
            base_data,
        }
    }

    async fn run(&self, m: &SnapshotManager) -> Result<()> {
        m.create_snapshot(&self.store, CreateOptions::default())
            .await
            .map(|_| ())
    }

    async fn check(&self, c: &SnapshotManager, outcome: &Result<()>, context: &str) {
        let listed = listed_all_verify(c, context).await;
        assert!(
            listed.contains(&self.base),
            "{context}: the base snapshot is gone"
        );
        assert_eq!(
            dump(&restore_all(c, &self.base).await).await,
            self.base_data,
            "{context}"
        );
        let new: Vec<&String> = listed.iter().filter(|i| **i != self.base).collect();
        assert!(new.len() <= 1, "{context}: {listed:?}");
        if outcome.is_ok() {
            assert_eq!(
                new.len(),
                1,
                "{context}: reported success but nothing is listed"
            );
        }
        for id in new {
            assert_eq!(
                dump(&restore_all(c, id).await).await,
                dump(&self.store).await,
                "{context}"
            );
        }
    }

    async fn check_done(&self, c: &SnapshotManager, context: &str) {
        let listed = listed_all_verify(c, context).await;
        let newest = c.list_snapshots().await.unwrap()[0].id.to_string();
        assert!(listed.len() >= 2 && newest != self.base, "{context}");
        assert_eq!(
            dump(&restore_all(c, &newest).await).await,
            dump(&self.store).await,
            "{context}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_full_survives_a_fault_at_every_call() {
    assert!(exhaust::<CreateFull>(&WRITE_FAULTS, "local", &Repo::local).await > 20);
}

// ----- create (incremental) -----------------------------------------------------------------

struct CreateIncremental(CreateFull);

#[async_trait]
impl Scenario for CreateIncremental {
    const NAME: &'static str = "create (incremental)";

    async fn setup(repo: &Repo) -> Self {
        CreateIncremental(CreateFull::setup(repo).await)
    }

    async fn run(&self, m: &SnapshotManager) -> Result<()> {
        m.create_incremental_snapshot(&self.0.store, &self.0.base, None, CreateOptions::default())
            .await
            .map(|_| ())
    }

    async fn check(&self, c: &SnapshotManager, outcome: &Result<()>, context: &str) {
        self.0.check(c, outcome, context).await;
    }

    async fn check_done(&self, c: &SnapshotManager, context: &str) {
        self.0.check_done(c, context).await;
        let newest = c.list_snapshots().await.unwrap().remove(0).id;
        let newest = c.get_snapshot_metadata(newest.as_str()).await.unwrap();
        let a = &newest.namespaces[0];
        assert!(
            a.logical_bytes.unwrap() > a.length,
            "{context}: namespace a references none of its parent's chunks"
        );
        assert_eq!(newest.parent_id.unwrap().as_str(), self.0.base, "{context}");
        assert_eq!(
            newest.unchanged_namespaces,
            vec!["b".to_string()],
            "{context}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_full_in_an_encrypted_repository_survives_a_fault_at_every_call() {
    let runs = exhaust::<CreateFull>(&WRITE_FAULTS, "local, encrypted", &Repo::local_encrypted);
    assert!(runs.await > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_incremental_survives_a_fault_at_every_call() {
    assert!(exhaust::<CreateIncremental>(&WRITE_FAULTS, "local", &Repo::local).await > 20);
}

// ----- restore ------------------------------------------------------------------------------

struct Restore {
    id: String,
    snapshot_data: Dump,
    target: InMemoryStorage,
    target_before: Dump,
}

#[async_trait]
impl Scenario for Restore {
    const NAME: &'static str = "restore (replace)";

    async fn setup(repo: &Repo) -> Self {
        let store = store_with(&[("a", 60, 16), ("b", 30, 4), ("c", 10, 2)]).await;
        let full = clean(repo)
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
        store.delete_namespace("c").await.unwrap();
        store
            .upsert("b", vec![Vector::new("changed", vec![0.5; 4])])
            .await
            .unwrap();
        store
            .upsert("a", common::make_vectors("more", 5, 16))
            .await
            .unwrap();
        // An incremental, so the restore reads from two blobs, namespace a from both (its
        // first chunks are referenced in the full).
        let inc = clean(repo)
            .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
            .await
            .unwrap();
        // The target holds other data in the same namespaces, and one more namespace.
        let target = store_with(&[("a", 5, 16), ("b", 7, 4), ("keep", 3, 2)]).await;
        let target_before = dump(&target).await;
        Restore {
            id: inc.id.to_string(),
            snapshot_data: dump(&store).await,
            target,
            target_before,
        }
    }

    async fn run(&self, m: &SnapshotManager) -> Result<()> {
        m.restore_snapshot(&self.target, &self.id, &RestoreOptions::new())
            .await
            .map(|_| ())
    }

    async fn check(&self, c: &SnapshotManager, outcome: &Result<()>, context: &str) {
        listed_all_verify(c, context).await;
        let now = dump(&self.target).await;
        for (ns, data) in &now {
            let untouched = self.target_before.get(ns) == Some(data);
            let restored = self.snapshot_data.get(ns) == Some(data);
            assert!(
                untouched || restored,
                "{context}: namespace {ns:?} is neither untouched nor restored"
            );
        }
        assert_eq!(now.get("keep"), self.target_before.get("keep"), "{context}");
        if outcome.is_ok() {
            self.check_done(c, context).await;
        }
    }

    async fn check_done(&self, _: &SnapshotManager, context: &str) {
        let mut now = dump(&self.target).await;
        assert_eq!(now.remove("keep"), self.target_before.get("keep").cloned());
        assert_eq!(now, self.snapshot_data, "{context}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_survives_a_fault_at_every_call() {
    assert!(exhaust::<Restore>(&[Fault::Fail, Fault::Truncate], "local", &Repo::local).await >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_incremental_and_restore_in_an_encrypted_repository_survive_a_fault_at_every_call() {
    let fresh = &Repo::local_encrypted;
    let backend = "local, encrypted";
    assert!(exhaust::<CreateIncremental>(&WRITE_FAULTS, backend, fresh).await > 20);
    assert!(exhaust::<Restore>(&[Fault::Fail, Fault::Truncate], backend, fresh).await >= 8);
}

// ----- delete -------------------------------------------------------------------------------

/// full1 <- inc1, full2: delete full1 with force (inc1 goes too).
struct Delete {
    full1: String,
    inc1: String,
    full2: String,
    full2_data: Dump,
}

async fn two_chains(repo: &Repo) -> (Vec<String>, Dump) {
    let c = clean(repo);
    let store = store_with(&[("a", 40, 8), ("b", 20, 4)]).await;
    let full1 = c
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store
        .upsert("a", vec![Vector::new("x", vec![1.0; 8])])
        .await
        .unwrap();
    let inc1 = c
        .create_incremental_snapshot(&store, full1.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let full2 = c
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store
        .upsert("b", vec![Vector::new("y", vec![1.0; 4])])
        .await
        .unwrap();
    let inc2 = c
        .create_incremental_snapshot(&store, full2.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let ids = [full1, inc1, full2, inc2]
        .map(|s| s.id.to_string())
        .to_vec();
    (ids, dump(&store).await)
}

#[async_trait]
impl Scenario for Delete {
    const NAME: &'static str = "delete (cascading)";

    async fn setup(repo: &Repo) -> Self {
        let (ids, _) = two_chains(repo).await;
        let c = clean(repo);
        let full2_data = dump(&restore_all(&c, &ids[2]).await).await;
        Delete {
            full1: ids[0].clone(),
            inc1: ids[1].clone(),
            full2: ids[2].clone(),
            full2_data,
        }
    }

    async fn run(&self, m: &SnapshotManager) -> Result<()> {
        m.delete_snapshot(&self.full1, true).await.map(|_| ())
    }

    async fn check(&self, c: &SnapshotManager, outcome: &Result<()>, context: &str) {
        let listed = listed_all_verify(c, context).await;
        assert!(listed.contains(&self.full2), "{context}");
        assert_eq!(
            dump(&restore_all(c, &self.full2).await).await,
            self.full2_data,
            "{context}"
        );
        // A child never outlives its parent (listed_all_verify would catch it too).
        assert!(
            !listed.contains(&self.inc1) || listed.contains(&self.full1),
            "{context}"
        );
        if outcome.is_ok() {
            self.check_done(c, context).await;
        }
    }

    async fn retry(&self, m: &SnapshotManager) {
        match m.delete_snapshot(&self.full1, true).await {
            Ok(_) | Err(Error::SnapshotNotFound { .. }) => {}
            Err(e) => panic!("retried delete: {e}"),
        }
    }

    async fn check_done(&self, c: &SnapshotManager, context: &str) {
        let listed = listed_all_verify(c, context).await;
        assert!(
            !listed.contains(&self.full1) && !listed.contains(&self.inc1),
            "{context}"
        );
        assert_eq!(listed.len(), 2, "{context}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_survives_a_fault_at_every_call() {
    assert!(
        exhaust::<Delete>(
            &[Fault::Fail, Fault::FailAfter, Fault::Truncate],
            "local",
            &Repo::local
        )
        .await
            > 10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_in_an_encrypted_repository_survives_a_fault_at_every_call() {
    let faults = [Fault::Fail, Fault::FailAfter, Fault::Truncate];
    let runs = exhaust::<Delete>(&faults, "local, encrypted", &Repo::local_encrypted).await;
    assert!(runs > 10);
}

// ----- prune --------------------------------------------------------------------------------

/// full1 <- inc1, full2 <- inc2; keep-last 1 keeps inc2 and its parent full2.
struct Prune {
    ids: Vec<String>,
    latest_data: Dump,
    /// Calls before the first delete in a fault-free run: a fault there deletes nothing.
    reads_before_delete: usize,
}

#[async_trait]
impl Scenario for Prune {
    const NAME: &'static str = "prune (retention)";

    async fn setup(repo: &Repo) -> Self {
        let (ids, latest_data) = two_chains(repo).await;
        // Learn where the first delete comes in a fault-free run on a copy.
        let copy = Repo::local();
        copy_dir(repo.dir(), copy.dir());
        let (sink, m) = faulty(&copy);
        m.apply_retention(&RetentionPolicy::keep_last(1), false)
            .await
            .unwrap();
        let reads_before_delete = sink
            .calls()
            .iter()
            .position(|r| r.call == Call::Delete)
            .unwrap();
        Prune {
            ids,
            latest_data,
            reads_before_delete,
        }
    }

    async fn run(&self, m: &SnapshotManager) -> Result<()> {
        m.apply_retention(&RetentionPolicy::keep_last(1), false)
            .await
            .map(|_| ())
    }

    async fn check(&self, c: &SnapshotManager, outcome: &Result<()>, context: &str) {
        let listed = listed_all_verify(c, context).await;
        assert!(
            listed.contains(&self.ids[2]) && listed.contains(&self.ids[3]),
            "{context}: a kept snapshot was deleted"
        );
        assert_eq!(
            dump(&restore_all(c, &self.ids[3]).await).await,
            self.latest_data,
            "{context}"
        );
        if outcome.is_ok() {
            self.check_done(c, context).await;
        }
    }

    async fn check_done(&self, c: &SnapshotManager, context: &str) {
        let listed = listed_all_verify(c, context).await;
        let want: BTreeSet<String> = self.ids[2..].iter().cloned().collect();
        assert_eq!(listed, want, "{context}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_survives_a_fault_at_every_call_and_deletes_nothing_if_reading_fails() {
    let runs = exhaust::<Prune>(
        &[Fault::Fail, Fault::FailAfter, Fault::Truncate],
        "local",
        &Repo::local,
    )
    .await;
    assert!(runs > 10);
    // Every fault before the first delete (the listing and the sidecar reads) leaves all four.
    let probe = Prune::setup(&Repo::local()).await;
    for fault in [Fault::Fail, Fault::Truncate] {
        // The first calls open the repository: a read of config.json (absent here) and the
        // listing of keys/ (empty). A short read of nothing is nothing: only a failure of
        // those can be reported.
        let first = if fault == Fault::Truncate {
            OPEN_CALLS
        } else {
            0
        };
        for i in first..probe.reads_before_delete {
            let repo = Repo::local();
            let s = Prune::setup(&repo).await;
            let (sink, m) = faulty(&repo);
            sink.inject_at(i, fault);
            let out = s.run(&m).await;
            assert!(out.is_err(), "{fault:?} at read {i} was not reported");
            let listed = listed_all_verify(&clean(&repo), "prune read fault").await;
            assert_eq!(
                listed.len(),
                4,
                "{fault:?} at read {i}: retention deleted something after a failed read"
            );
        }
    }
    announce(&format!(
        "fault injection: prune: {} read-phase failure points x 2 kinds deleted nothing",
        probe.reads_before_delete
    ));
}

/// Sink calls that open an unencrypted repository without a config object.
const OPEN_CALLS: usize = 2;

// ----- gc -----------------------------------------------------------------------------------

struct Gc {
    base: String,
    base_data: Dump,
    orphans: Vec<std::path::PathBuf>,
}

#[async_trait]
impl Scenario for Gc {
    const NAME: &'static str = "gc";

    async fn setup(repo: &Repo) -> Self {
        let store = store_with(&[("a", 30, 8)]).await;
        let base = clean(repo)
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
        let dir = repo.dir();
        let blob = dakera_snapshot::testing::blob_path(dir, base.id.as_str());
        let orphans: Vec<_> = [
            "20200101T000000000Z-00000000000000aa",
            "20200101T000000000Z-00000000000000bb",
        ]
        .iter()
        .map(|id| {
            let p = dakera_snapshot::testing::blob_path(dir, id);
            std::fs::copy(&blob, &p).unwrap();
            // Left by a writer that died a minute ago.
            let past = std::time::SystemTime::now() - Duration::from_secs(60);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(past)
                .unwrap();
            p
        })
        .collect();
        Gc {
            base: base.id.to_string(),
            base_data: dump(&store).await,
            orphans,
        }
    }

    async fn run(&self, m: &SnapshotManager) -> Result<()> {
        m.collect_garbage(Duration::ZERO, false).await.map(|_| ())
    }

    async fn check(&self, c: &SnapshotManager, outcome: &Result<()>, context: &str) {
        let listed = listed_all_verify(c, context).await;
        assert_eq!(listed.len(), 1, "{context}");
        assert_eq!(
            dump(&restore_all(c, &self.base).await).await,
            self.base_data,
            "{context}"
        );
        if outcome.is_ok() {
            self.check_done(c, context).await;
        }
    }

    async fn check_done(&self, c: &SnapshotManager, context: &str) {
        self.check(c, &Err(Error::Task(String::new())), context)
            .await;
        assert!(self.orphans.iter().all(|p| !p.exists()), "{context}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_survives_a_fault_at_every_call() {
    assert!(
        exhaust::<Gc>(
            &[Fault::Fail, Fault::FailAfter, Fault::Truncate],
            "local",
            &Repo::local
        )
        .await
            > 5
    );
}

// ----- hangs: an operation abandoned by its caller's timeout --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_abandoned_at_any_hung_call_leaves_nothing_half_made() {
    let repo = Repo::local();
    let s = CreateFull::setup(&repo).await;
    let (sink, m) = faulty(&repo);
    s.run(&m).await.unwrap();
    let calls = sink.call_count();
    for i in 0..calls {
        let repo = Repo::local();
        let s = CreateFull::setup(&repo).await;
        let (sink, m) = faulty(&repo);
        sink.inject_at(i, Fault::Hang);
        let out = tokio::time::timeout(Duration::from_millis(300), s.run(&m)).await;
        let context = format!("hang at call {i} ({:?})", sink.faulted());
        let c = clean(&repo);
        // Abandoned: either it finished before the hung call mattered, or nothing new is
        // half-visible.
        s.check(
            &c,
            &out.unwrap_or(Err(Error::Task("timed out".into()))),
            &context,
        )
        .await;
        // Leftovers are removed by gc, and a new create works.
        c.collect_garbage(Duration::ZERO, false).await.unwrap();
        sink.clear_faults();
        s.run(&m).await.unwrap();
        s.check_done(&c, &context).await;
    }
    announce(&format!(
        "fault injection: create abandoned at each of {calls} hung calls: nothing half-made"
    ));
}

// ----- the same on an S3 server, through the object-store sink -----------------------------

/// Create, restore and delete, each with a fault at every sink call, against `server`.
async fn exhaust_on_s3(server: &common::servers::Server) {
    let fresh = || Repo::at(&server.url, &server.options);
    let runs = exhaust::<CreateFull>(&WRITE_FAULTS, &server.name, &fresh).await
        + exhaust::<Restore>(&[Fault::Fail, Fault::Truncate], &server.name, &fresh).await
        + exhaust::<Delete>(&[Fault::Fail, Fault::FailAfter], &server.name, &fresh).await;
    assert!(runs > 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_restore_and_delete_on_s3_survive_a_fault_at_every_call() {
    let Some(server) = common::servers::start_moto().await else {
        return;
    };
    exhaust_on_s3(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_localstack_in_a_container() {
    let Some(server) = common::containers::start_localstack().await else {
        return;
    };
    exhaust_on_s3(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_seaweedfs_in_a_container() {
    let Some(server) = common::containers::start_seaweedfs().await else {
        return;
    };
    exhaust_on_s3(&server).await;
}
