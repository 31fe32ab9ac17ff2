//! Stores of many small namespaces (a namespace per tenant): the grouped write and read
//! paths, against what they must not do. A restore of a few namespaces reads only their
//! bytes, a damaged namespace inside a group is refused by name before its group is written,
//! and a store that under-reports a namespace's size is still snapshotted whole; change
//! tokens spare an incremental the reads of unchanged namespaces.

mod common;

use async_trait::async_trait;
use common::{dump, make_vectors, restore_all, store_with};
use dakera_snapshot::paths::Key;
use dakera_snapshot::sink::{ByteStream, ObjectInfo, SinkWriter};
use dakera_snapshot::storage::NamespaceId;
use dakera_snapshot::{
    CreateOptions, Error, InMemoryStorage, LocalFsSink, PutMode, RestoreOptions, SnapshotConfig,
    SnapshotManager, SnapshotSink, Vector, VectorStorage,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A sink that counts the bytes read from blobs (sidecars are not counted).
#[derive(Debug)]
struct CountingSink {
    inner: LocalFsSink,
    blob_bytes: Arc<AtomicU64>,
}

#[async_trait]
impl SnapshotSink for CountingSink {
    async fn put(
        &self,
        key: &Key,
        data: bytes::Bytes,
        mode: PutMode,
    ) -> dakera_snapshot::Result<()> {
        self.inner.put(key, data, mode).await
    }
    async fn put_streaming(
        &self,
        key: &Key,
        mode: PutMode,
    ) -> dakera_snapshot::Result<Box<dyn SinkWriter>> {
        self.inner.put_streaming(key, mode).await
    }
    async fn get(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> dakera_snapshot::Result<ByteStream> {
        let stream = self.inner.get(key, range).await?;
        if !key.as_str().ends_with(".snap.gz") {
            return Ok(stream);
        }
        let counter = self.blob_bytes.clone();
        Ok(stream
            .inspect(move |chunk| {
                if let Ok(c) = chunk {
                    counter.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
            })
            .boxed())
    }
    async fn head(&self, key: &Key) -> dakera_snapshot::Result<ObjectInfo> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &Key) -> BoxStream<'static, dakera_snapshot::Result<ObjectInfo>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &Key) -> dakera_snapshot::Result<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

/// A manager on a local repository at `dir` whose blob reads are counted.
fn counting_manager(dir: &std::path::Path) -> (SnapshotManager, Arc<AtomicU64>) {
    let blob_bytes = Arc::new(AtomicU64::new(0));
    let sink = CountingSink {
        inner: LocalFsSink::new(dir).unwrap(),
        blob_bytes: blob_bytes.clone(),
    };
    let m = SnapshotManager::new(Arc::new(sink), SnapshotConfig::default()).unwrap();
    (m, blob_bytes)
}

fn tenants(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("tenant-{k:04}")).collect()
}

async fn tenant_store(names: &[String]) -> InMemoryStorage {
    let spec: Vec<(&str, usize, usize)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.as_str(), 2 + k % 5, 16))
        .collect();
    store_with(&spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_few_of_many_namespaces_reads_only_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (m, blob_bytes) = counting_manager(dir.path());
    let names = tenants(1_000);
    let store = tenant_store(&names).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    // Adjacent and apart, so one group and two single-member groups.
    let only = [&names[10], &names[11], &names[500], &names[999]];
    let section_bytes: u64 = snap
        .namespaces
        .iter()
        .filter(|n| only.contains(&&n.name))
        .map(|n| n.length)
        .sum();
    let directory = snap.directory.as_ref().unwrap().length;
    blob_bytes.store(0, Ordering::SeqCst);
    let target = InMemoryStorage::new();
    let opts = RestoreOptions::new().only(only.iter().map(|s| s.as_str()));
    m.restore_snapshot(&target, snap.id.as_str(), &opts)
        .await
        .unwrap();
    assert_eq!(
        blob_bytes.load(Ordering::SeqCst),
        section_bytes + directory,
        "read exactly the directory and the sections of the namespaces restored (of {} in the blob)",
        snap.size_bytes
    );
    let mut want = dump(&store).await;
    want.retain(|name, _| only.contains(&name));
    assert_eq!(dump(&target).await, want);
}

/// Format 3: the sidecar does not grow with the namespace count (the lists are in the blob's
/// directory), `list` reads no blob, and an incremental with few changes keeps it as small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_stay_small_and_listing_reads_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (m, blob_bytes) = counting_manager(dir.path());
    let sidecar_len = |id: &str| {
        std::fs::metadata(dir.path().join(format!("snapshots/{id}.meta.json")))
            .unwrap()
            .len()
    };
    let few = m
        .create_snapshot(&tenant_store(&tenants(3)).await, CreateOptions::default())
        .await
        .unwrap();
    let names = tenants(2_000);
    let store = tenant_store(&names).await;
    let many = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store
        .upsert(&names[7], make_vectors("changed", 2, 16))
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, many.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (inc.namespaces.len(), inc.unchanged_namespaces.len()),
        (1, 1_999)
    );
    let (small, large, incremental) = (
        sidecar_len(few.id.as_str()),
        sidecar_len(many.id.as_str()),
        sidecar_len(inc.id.as_str()),
    );
    assert!(large < small + 64 && incremental < small + 256, "sidecars of 3, 2,000 and an incremental of 2,000 namespaces: {small}, {large}, {incremental} bytes");

    blob_bytes.store(0, Ordering::SeqCst);
    let listed = m.list_snapshots().await.unwrap();
    assert_eq!(
        blob_bytes.load(Ordering::SeqCst),
        0,
        "list reads only sidecars"
    );
    assert_eq!(listed[0].namespace_count(), 2_000);
    assert!(!listed[0].contents_loaded());
    let read = m.get_snapshot_metadata(inc.id.as_str()).await.unwrap();
    assert_eq!(read, inc, "the lists read back from the directory");
    assert_eq!(
        blob_bytes.load(Ordering::SeqCst),
        inc.directory.as_ref().unwrap().length,
        "one ranged read of the directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_namespace_in_a_group_is_named_and_its_group_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = SnapshotManager::local(dir.path(), SnapshotConfig::default()).unwrap();
    let names = tenants(50);
    let store = tenant_store(&names).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let victim = &snap.namespaces[30];
    let index = victim.index.clone().unwrap();
    let blob = dakera_snapshot::testing::blob_path(dir.path(), snap.id.as_str());
    let mut bytes = std::fs::read(&blob).unwrap();
    // A byte inside the victim's data chunk (its section before its index).
    let at = (victim.offset + (index.offset - victim.offset) / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();

    let target = InMemoryStorage::new();
    let err = m
        .restore_snapshot(&target, snap.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap_err();
    match &err {
        Error::Corrupt { location, .. } => {
            assert_eq!(
                location.namespace.as_deref(),
                Some(victim.name.as_str()),
                "{err}"
            )
        }
        other => panic!("expected corruption, got {other}"),
    }
    // All 50 are one group: checked whole before the first is written.
    assert!(
        target.list_namespaces().await.unwrap().is_empty(),
        "nothing of the damaged group was written"
    );
    assert!(m.verify_snapshot(snap.id.as_str()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_larger_than_its_count_says_is_snapshotted_whole() {
    // Read on the task that creates the snapshot, and on the worker pool.
    for parallel in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // The 300 KB namespace outgrows a group while it is scanned.
        let m = small_batches(dir.path());
        let inner = store_with(&[("a-small", 3, 32), ("c-small", 4, 32)]).await;
        add_namespace(&inner, "b-big", 2_000, 32).await;
        let store = Watched::from(Spy {
            low_count: true,
            parallel,
            ..Spy::new(inner, true)
        });
        let snap = m
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
        assert_eq!(snap.total_vectors, 2_007);
        let names: Vec<&str> = snap.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a-small", "b-big", "c-small"], "in name order");
        m.verify_snapshot(snap.id.as_str()).await.unwrap();
        let back = restore_all(&m, snap.id.as_str()).await;
        assert_eq!(dump(&back).await, dump(&store.inner).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_scan_does_not_ascend_is_refused_by_namespace() {
    // A small namespace (read whole, encoded in a group) and a large one (streamed in
    // batches of 64 KiB); pages of 100 vectors, each returned backwards.
    let cases = [("small", 30), ("large", 2_000)];
    for ((name, count), parallel) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let dir = tempfile::tempdir().unwrap();
        let m = small_batches(dir.path());
        // One vector reads the same backwards: this namespace is fine.
        let inner = store_with(&[("a", 1, 8)]).await;
        add_namespace(&inner, name, count, 8).await;
        let store = Watched::from(Spy {
            reversed: true,
            parallel,
            ..Spy::new(inner, false)
        });
        let err = m
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{name:?}")), "{msg}");
        assert!(msg.contains("ascending order"), "{msg}");
        assert!(m.list_snapshots().await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_namespaces_are_read_on_the_worker_pool_only_when_the_store_allows_it() {
    let names = tenants(300);
    for parallel in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let m = SnapshotManager::local(dir.path(), SnapshotConfig::default()).unwrap();
        let store = Watched::from(Spy {
            parallel,
            ..Spy::new(tenant_store(&names).await, true)
        });
        let snap = m
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
        let threads = store.threads.lock().unwrap().clone();
        let on_pool = threads.iter().all(|t| t.starts_with("dakera-snapshot-"));
        assert_eq!(on_pool, parallel, "read on {threads:?}");
        assert_eq!(snap.namespace_count(), 300);
        m.verify_snapshot(snap.id.as_str()).await.unwrap();
        let back = restore_all(&m, snap.id.as_str()).await;
        assert_eq!(dump(&back).await, dump(&store.inner).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_or_panics_while_the_pool_reads_it_leaves_no_snapshot() {
    let names = tenants(300);
    for (breakage, expected) in [
        (Breakage::Fails, "disk on fire"),
        (Breakage::Panics, "panicked"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let m = SnapshotManager::local(dir.path(), SnapshotConfig::default()).unwrap();
        let store = Watched::from(Spy {
            broken: Some(("tenant-0211", breakage)),
            ..Spy::new(tenant_store(&names).await, true)
        });
        let err = m
            .create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert!(m.list_snapshots().await.unwrap().is_empty());
        let data = std::fs::read_dir(dir.path().join("data"));
        let blobs = data.map(|d| d.count()).unwrap_or(0);
        assert_eq!(blobs, 0, "no blob is left behind");
        // The repository still takes a snapshot once the store is sound.
        let sound = Watched::new(tenant_store(&names).await, true);
        let snap = m
            .create_snapshot(&sound, CreateOptions::default())
            .await
            .unwrap();
        m.verify_snapshot(snap.id.as_str()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_abandoned_while_a_store_read_hangs_keeps_no_worker_thread() {
    let names = tenants(300);
    let dir = tempfile::tempdir().unwrap();
    let m = SnapshotManager::local(dir.path(), SnapshotConfig::default()).unwrap();
    let hangs = Watched::from(Spy {
        broken: Some(("tenant-0211", Breakage::Hangs)),
        ..Spy::new(tenant_store(&names).await, true)
    });
    // More abandoned creates than the worker pool has threads: a read left hanging on one
    // would leave none for the next create.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..workers + 1 {
        let create = m.create_snapshot(&hangs, CreateOptions::default());
        let out = tokio::time::timeout(Duration::from_millis(300), create).await;
        assert!(
            out.is_err(),
            "the create waits for the hung read until abandoned"
        );
    }
    let sound = Watched::new(tenant_store(&names).await, true);
    let create = m.create_snapshot(&sound, CreateOptions::default());
    let snap = tokio::time::timeout(Duration::from_secs(60), create)
        .await
        .expect("the worker pool is free again")
        .unwrap();
    assert_eq!(m.list_snapshots().await.unwrap().len(), 1);
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
}

/// A manager of a local repository in `dir` that encodes batches of 64 KiB and scans pages
/// of 100 vectors, so a test namespace of a few hundred KB spans several of each.
fn small_batches(dir: &std::path::Path) -> SnapshotManager {
    let config = SnapshotConfig::default()
        .with_chunk_size(64 << 10)
        .with_scan_page_size(100);
    SnapshotManager::local(dir, config).unwrap()
}

/// Adds namespace `name` of `count` generated vectors of `dim` to `store`.
async fn add_namespace(store: &InMemoryStorage, name: &str, count: usize, dim: usize) {
    store.ensure_namespace(name).await.unwrap();
    let vectors = make_vectors(name, count, dim);
    store.upsert(name, vectors).await.unwrap();
}

/// A store that records which namespaces were scanned, can hide its change tokens, can
/// say that every namespace holds one vector (`low_count`), can break the scan contract
/// by returning every page of more than one vector in reverse order (`reversed`), and lets
/// the snapshot read namespaces in parallel through a shared handle or not (`parallel`),
/// can fail, panic or hang when one namespace is read (`broken`), and records the names of
/// the threads it was read on.
#[derive(Debug)]
struct Spy {
    inner: InMemoryStorage,
    tokens: bool,
    parallel: bool,
    low_count: bool,
    reversed: bool,
    broken: Option<(&'static str, Breakage)>,
    scanned: std::sync::Mutex<std::collections::BTreeSet<String>>,
    threads: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

#[derive(Debug, Clone, Copy)]
enum Breakage {
    Fails,
    Panics,
    Hangs,
}

#[async_trait]
impl VectorStorage for Watched {
    async fn upsert(&self, ns: &str, v: Vec<Vector>) -> dakera_snapshot::Result<usize> {
        self.inner.upsert(ns, v).await
    }
    async fn get(&self, ns: &str, ids: &[String]) -> dakera_snapshot::Result<Vec<Vector>> {
        self.inner.get(ns, ids).await
    }
    async fn delete(&self, ns: &str, ids: &[String]) -> dakera_snapshot::Result<usize> {
        self.inner.delete(ns, ids).await
    }
    async fn namespace_exists(&self, ns: &str) -> dakera_snapshot::Result<bool> {
        self.inner.namespace_exists(ns).await
    }
    async fn ensure_namespace(&self, ns: &str) -> dakera_snapshot::Result<()> {
        self.inner.ensure_namespace(ns).await
    }
    async fn list_namespaces(&self) -> dakera_snapshot::Result<Vec<NamespaceId>> {
        self.inner.list_namespaces().await
    }
    async fn dimension(&self, ns: &str) -> dakera_snapshot::Result<Option<usize>> {
        self.inner.dimension(ns).await
    }
    async fn count(&self, ns: &str) -> dakera_snapshot::Result<usize> {
        match self.low_count {
            true => Ok(1),
            false => self.inner.count(ns).await,
        }
    }
    async fn delete_namespace(&self, ns: &str) -> dakera_snapshot::Result<bool> {
        self.inner.delete_namespace(ns).await
    }
    async fn scan(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: usize,
    ) -> dakera_snapshot::Result<Vec<Vector>> {
        self.scanned.lock().unwrap().insert(ns.to_string());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        self.threads.lock().unwrap().insert(thread);
        match self.broken {
            Some((name, Breakage::Fails)) if name == ns => {
                return Err(Error::Storage("disk on fire".into()))
            }
            Some((name, Breakage::Panics)) if name == ns => panic!("the store's scan panics"),
            Some((name, Breakage::Hangs)) if name == ns => std::future::pending().await,
            _ => {}
        }
        let mut page = self.inner.scan(ns, after, limit).await?;
        if self.reversed {
            page.reverse();
        }
        Ok(page)
    }
    fn shared_handle(&self) -> Option<Arc<dyn VectorStorage>> {
        let handle = Watched(self.0.clone());
        self.parallel
            .then(|| Arc::new(handle) as Arc<dyn VectorStorage>)
    }
    async fn change_token(&self, ns: &str) -> dakera_snapshot::Result<Option<String>> {
        match self.tokens {
            true => self.inner.change_token(ns).await,
            false => Ok(None),
        }
    }
}

/// A [`Spy`] behind an `Arc`, so that it can hand the snapshot a handle to itself.
#[derive(Debug)]
struct Watched(Arc<Spy>);

impl std::ops::Deref for Watched {
    type Target = Spy;
    fn deref(&self) -> &Spy {
        &self.0
    }
}

impl From<Spy> for Watched {
    fn from(spy: Spy) -> Self {
        Watched(Arc::new(spy))
    }
}

impl Watched {
    fn new(inner: InMemoryStorage, tokens: bool) -> Self {
        Spy::new(inner, tokens).into()
    }
}

impl Spy {
    fn new(inner: InMemoryStorage, tokens: bool) -> Self {
        Spy {
            inner,
            tokens,
            parallel: true,
            low_count: false,
            reversed: false,
            broken: None,
            scanned: Default::default(),
            threads: Default::default(),
        }
    }

    fn take_scanned(&self) -> Vec<String> {
        std::mem::take(&mut *self.scanned.lock().unwrap())
            .into_iter()
            .collect()
    }
}

/// 300 tenants; then two changed by a write, one rewritten with the same content, one new.
async fn incremental_of_a_few_changes(tokens: bool) -> (Watched, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let m = SnapshotManager::local(dir.path(), SnapshotConfig::default()).unwrap();
    let names = tenants(300);
    let store = Watched::new(tenant_store(&names).await, tokens);
    let full = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let tokened = full.namespaces.iter().all(|n| n.store_token.is_some());
    assert_eq!(tokened, tokens, "the sidecar records the store's tokens");
    store.take_scanned();
    for ns in [&names[7], &names[250]] {
        store
            .upsert(ns, make_vectors("changed", 1, 16))
            .await
            .unwrap();
    }
    let same = store.inner.get_all(&names[100]).await.unwrap();
    store.upsert(&names[100], same).await.unwrap();
    store.ensure_namespace("tenant-new").await.unwrap();
    store
        .upsert("tenant-new", make_vectors("new", 2, 16))
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let stored: Vec<&str> = inc.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(stored, [names[7].as_str(), &names[250], "tenant-new"]);
    assert_eq!(inc.unchanged_namespaces.len(), 298);
    let back = restore_all(&m, inc.id.as_str()).await;
    assert_eq!(dump(&back).await, dump(&store.inner).await);
    let scanned = store.take_scanned();
    (store, scanned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_reads_only_namespaces_whose_change_token_moved() {
    let (_, scanned) = incremental_of_a_few_changes(true).await;
    // The rewritten one has a new token but the same content: read, found equal.
    assert_eq!(
        scanned,
        ["tenant-0007", "tenant-0100", "tenant-0250", "tenant-new"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_change_tokens_an_incremental_compares_every_namespace() {
    let (_, scanned) = incremental_of_a_few_changes(false).await;
    assert_eq!(
        scanned.len(),
        301,
        "every namespace read to compare digests"
    );
}

/// The shape of issue 16's goal 2 at its count (100,000 namespaces; one small vector each, to
/// keep the test quick): a full and an incremental with 1% of the namespaces changed restore
/// exactly, verify, and keep their sidecars small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_namespaces_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = SnapshotManager::local(dir.path(), SnapshotConfig::default()).unwrap();
    let store = InMemoryStorage::new();
    let names: Vec<String> = (0..100_000).map(|i| format!("agent-{i:06}")).collect();
    for (i, ns) in names.iter().enumerate() {
        store.ensure_namespace(ns).await.unwrap();
        let v = Vector::new(format!("m{i}"), vec![i as f32, 1.0, -1.0, 0.5]);
        store.upsert(ns, vec![v]).await.unwrap();
    }
    let full = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(full.namespace_count(), 100_000);
    for ns in names.iter().step_by(100) {
        let v = Vector::new("new", vec![9.0, 9.0, 9.0, 9.0]);
        store.upsert(ns, vec![v]).await.unwrap();
    }
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (inc.namespaces.len(), inc.unchanged_namespaces.len()),
        (1_000, 99_000)
    );
    for snap in [&full, &inc] {
        let sidecar = dir.path().join(format!("snapshots/{}.meta.json", snap.id));
        let size = std::fs::metadata(sidecar).unwrap().len();
        assert!(size < 16_384, "sidecar of {}: {size} bytes", snap.id);
    }
    m.verify_snapshot(inc.id.as_str()).await.unwrap();
    let got = restore_all(&m, inc.id.as_str()).await;
    assert!(
        dump(&got).await == dump(&store).await,
        "the restored store differs"
    );
}
