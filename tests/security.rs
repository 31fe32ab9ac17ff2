//! Security review, as tests: nothing a user supplies (snapshot ids, keys, namespace names,
//! rename targets, repository URLs) can address anything outside the repository, and
//! credentials never appear in errors, `Debug` output or logs (even at trace level).

mod common;

use common::servers::{self, SECRET_KEY};
use common::store_with;
use dakera_snapshot::paths::Key;
use dakera_snapshot::{
    sink_from_url, CreateOptions, Error, InMemoryStorage, LocalFsSink, PutMode, RestoreOptions,
    SinkOptions, SnapshotConfig, SnapshotId, SnapshotManager, SnapshotSink, VectorStorage,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

const HOSTILE: &[&str] = &[
    "..",
    "../..",
    "../../etc/passwd",
    "a/../../b",
    "%2e%2e/%2e%2e/x",
    "%2e%2e",
    "/etc/passwd",
    "/",
    "",
    ".",
    "./x",
    "a\0b",
    "a\\..\\..\\b",
    "snapshots/../../x",
    "20261125T000000000Z-0123456789abcdef/../../x",
    "20261125T000000000Z-0123456789abcdef\0",
    "C:\\Windows",
];

fn long() -> String {
    "a".repeat(10_000)
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A repository inside a sandbox folder that also holds a canary file next to it.
struct Sandbox {
    outer: tempfile::TempDir,
    m: SnapshotManager,
    snap: String,
}

impl Sandbox {
    async fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("canary"), b"untouched").unwrap();
        let m = SnapshotManager::local(
            outer.path().join("repo"),
            SnapshotConfig::default().with_max_snapshots(0),
        )
        .unwrap();
        let snap = m
            .create_snapshot(&store_with(&[("a", 3, 2)]).await, CreateOptions::default())
            .await
            .unwrap()
            .id
            .to_string();
        Sandbox { outer, m, snap }
    }

    fn assert_contained(&self, before: &BTreeSet<String>, context: &str) {
        assert_eq!(&tree(self.outer.path()), before, "{context}: files changed");
        assert_eq!(
            std::fs::read(self.outer.path().join("canary")).unwrap(),
            b"untouched"
        );
    }
}

#[tokio::test]
async fn hostile_snapshot_ids_reach_nothing() {
    let s = Sandbox::new().await;
    let before = tree(s.outer.path());
    let other = tempfile::tempdir().unwrap();
    let dest = SnapshotManager::local(other.path(), SnapshotConfig::default()).unwrap();
    let target = InMemoryStorage::new();
    let mut ids: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    ids.push(long());
    for id in &ids {
        assert!(
            SnapshotId::parse(id.as_str()).is_err(),
            "{id:?} parsed as an id"
        );
        let ok_error = |e: Error| {
            assert!(
                matches!(
                    e,
                    Error::InvalidInput { .. } | Error::SnapshotNotFound { .. }
                ),
                "{id:?}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.len() < 400,
                "{id:?}: the error echoes too much: {}",
                msg.len()
            );
        };
        ok_error(s.m.get_snapshot_metadata(id).await.unwrap_err());
        ok_error(s.m.verify_snapshot(id).await.unwrap_err());
        ok_error(s.m.delete_snapshot(id, true).await.unwrap_err());
        ok_error(s.m.lineage(id).await.unwrap_err());
        ok_error(s.m.copy_snapshot(id, &dest).await.unwrap_err());
        ok_error(s.m.diff_snapshots(id, &s.snap).await.unwrap_err());
        ok_error(s.m.find_snapshot(id).await.unwrap_err());
        ok_error(
            s.m.restore_snapshot(&target, id, &RestoreOptions::new())
                .await
                .unwrap_err(),
        );
        ok_error(
            s.m.create_incremental_snapshot(&target, id, None, CreateOptions::default())
                .await
                .unwrap_err(),
        );
        s.assert_contained(&before, id);
    }
    assert!(target.list_namespaces().await.unwrap().is_empty());
    assert!(tree(other.path()).is_empty());
}

#[tokio::test]
async fn hostile_keys_are_refused_by_the_sink() {
    let outer = tempfile::tempdir().unwrap();
    let before = tree(outer.path());
    for (i, key) in HOSTILE
        .iter()
        .map(|s| s.to_string())
        .chain([long()])
        .enumerate()
    {
        let sink = LocalFsSink::new(outer.path().join(format!("root{i}"))).unwrap();
        match Key::parse(key.as_str()) {
            Err(e) => assert!(matches!(e, Error::InvalidInput { .. }), "{key:?}: {e}"),
            // Accepted keys are plain names inside the root (`%2e%2e` is not decoded).
            Ok(k) => {
                assert!(!k.segments().any(|s| s == ".." || s == "." || s.is_empty()));
                sink.put(&k, bytes::Bytes::from_static(b"x"), PutMode::Overwrite)
                    .await
                    .unwrap();
                sink.delete(&k).await.unwrap();
            }
        }
    }
    let after = tree(outer.path());
    assert!(
        after.iter().all(|p| p.starts_with("root")),
        "{after:?} vs {before:?}"
    );
}

#[tokio::test]
async fn namespace_names_never_become_paths_and_bad_rename_targets_change_nothing() {
    let s = Sandbox::new().await;
    let store = InMemoryStorage::new();
    let odd = ["../../escape", "/abs", "%2e%2e", "a b/c", "ünï"];
    for ns in odd {
        store.ensure_namespace(ns).await.unwrap();
        store
            .upsert(ns, vec![dakera_snapshot::Vector::new("v", vec![1.0])])
            .await
            .unwrap();
    }
    let snap =
        s.m.create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
    // Only the repository's config and snapshot objects were written, all inside it.
    for p in tree(s.outer.path()) {
        assert!(
            p == "canary"
                || p == "repo"
                || p == "repo/config.json"
                || ["repo/snapshots", "repo/data"]
                    .iter()
                    .any(|dir| p == *dir || p.starts_with(&format!("{dir}/"))),
            "{p}"
        );
    }
    let target = InMemoryStorage::new();
    for bad in ["", "a\0b", "x\ny", &"n".repeat(513)] {
        let opts = RestoreOptions::new().rename("../../escape", bad);
        let err =
            s.m.restore_snapshot(&target, snap.id.as_str(), &opts)
                .await
                .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad:?}: {err}");
        assert!(
            target.list_namespaces().await.unwrap().is_empty(),
            "{bad:?}"
        );
    }
    // Odd but valid names are only names: they round-trip as store namespaces.
    s.m.restore_snapshot(&target, snap.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap();
    let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(target.list_namespaces().await.unwrap(), want);
}

#[test]
fn url_dot_segments_stay_inside_the_bucket() {
    let o = SinkOptions::new().with("region", "us-east-1");
    for (url, shown) in [
        ("s3://bucket/a/../../../x", "s3://bucket/x"),
        ("s3://bucket/%2e%2e/%2E%2E/x", "s3://bucket/x"),
        ("memory:///../../x", "memory:///x"),
    ] {
        let sink = sink_from_url(url, &o).unwrap();
        assert_eq!(sink.describe(), shown, "{url}");
    }
}

/// A tracing writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Captures this thread's logs at trace level until the guard is dropped.
    fn trace_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_never_appear_in_errors_debug_output_or_trace_logs() {
    let Some(server) = servers::start_seaweedfs().await else {
        return;
    };
    let (logs, _guard) = Captured::trace_logs();

    let wrong = format!("{SECRET_KEY}-but-wrong");
    let mut texts = Vec::new();
    for secret in [SECRET_KEY.to_string(), wrong] {
        let options = servers::s3_options_with(&server.endpoint, servers::ACCESS_KEY, &secret)
            .with_max_retries(0);
        let url = format!("{}/security-{:016x}", server.url, getrandom::u64().unwrap());
        let m = SnapshotManager::from_url(&url, &options, SnapshotConfig::default()).unwrap();
        texts.push(format!("{m:?}"));
        texts.push(format!("{options:?}"));
        let store = store_with(&[("a", 5, 4)]).await;
        match m.create_snapshot(&store, CreateOptions::default()).await {
            Ok(s) => {
                m.verify_snapshot(s.id.as_str()).await.unwrap();
                m.delete_snapshot(s.id.as_str(), false).await.unwrap();
            }
            Err(e) => {
                texts.push(e.to_string());
                texts.push(format!("{e:?}"));
                assert!(e.to_string().contains("authentication failed"), "{e}");
            }
        }
    }
    let logs = logs.text();
    assert!(
        logs.len() > 1000,
        "trace logging captured too little to mean anything"
    );
    texts.push(logs);
    for t in &texts {
        assert!(!t.contains(SECRET_KEY), "a secret leaked: ...{}", {
            let at = t.find(SECRET_KEY).unwrap();
            &t[at.saturating_sub(200)..at]
        });
    }
}

#[tokio::test(flavor = "current_thread")]
async fn passwords_never_appear_in_errors_debug_output_or_trace_logs() {
    const PASSWORD: &str = "never-print-this-passphrase";
    let (logs, _guard) = Captured::trace_logs();
    let cheap = dakera_snapshot::KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dakera_snapshot::KeySource::password(PASSWORD).unwrap();
    let m = SnapshotManager::local(dir.path(), SnapshotConfig::default())
        .unwrap()
        .with_key(key.clone());
    let mut texts = vec![format!("{m:?} {key:?}")];
    m.init(cheap).await.unwrap();
    let store = store_with(&[("a", 5, 4)]).await;
    let s = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    m.verify_snapshot(s.id.as_str()).await.unwrap();
    texts.push(format!("{:?}", m.list_snapshots().await.unwrap()));
    texts.push(format!("{:?}", m.list_keys().await.unwrap()));
    let wrong = dakera_snapshot::KeySource::password(format!("{PASSWORD}-wrong")).unwrap();
    let other = SnapshotManager::local(dir.path(), SnapshotConfig::default())
        .unwrap()
        .with_key(wrong);
    let e = other.list_snapshots().await.unwrap_err();
    texts.push(format!("{e} {e:?} {other:?}"));
    let logs = logs.text();
    assert!(
        logs.contains("repository opened"),
        "trace logging captured nothing: {logs}"
    );
    texts.push(logs);
    for t in &texts {
        assert!(!t.contains(PASSWORD), "a password leaked: {t}");
    }
}
