//! SnapshotManager behaviour on a local repository: round trips, incremental chains,
//! restore options, retention, verification, bad input.

mod common;

use common::{dump, make_vectors, restore_all, store_with};
use dakera_snapshot::id::SeededRandom;
use dakera_snapshot::paths::Key;
use dakera_snapshot::sink::fault::{Call, Fault, FaultySink};
use dakera_snapshot::testing::forge_directory;
use dakera_snapshot::Filter;
use dakera_snapshot::{
    CompressionLevel, CreateOptions, Error, InMemoryStorage, LocalFsSink, ManualClock, RestoreMode,
    RestoreOptions, RetentionPolicy, SinkExt, SnapshotConfig, SnapshotManager, Vector,
    VectorStorage,
};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_764_000_000_000; // 2025-11-24, unix ms

struct Repo {
    dir: tempfile::TempDir,
    sink: Arc<LocalFsSink>,
    clock: Arc<ManualClock>,
    seed: std::sync::atomic::AtomicU64,
}

impl Repo {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(LocalFsSink::new(dir.path()).unwrap());
        Repo {
            dir,
            sink,
            clock: ManualClock::new(T0),
            seed: Default::default(),
        }
    }

    fn manager(&self, config: SnapshotConfig) -> SnapshotManager {
        SnapshotManager::new(self.sink.clone(), config)
            .unwrap()
            .with_clock(self.clock.clone())
            // Each manager its own seed, as separate processes would have.
            .with_random(SeededRandom::new(self.seed.fetch_add(1, Ordering::SeqCst)))
    }

    fn default_manager(&self) -> SnapshotManager {
        self.manager(SnapshotConfig::default().with_max_snapshots(0))
    }

    fn blob_path(&self, id: &str) -> std::path::PathBuf {
        dakera_snapshot::testing::blob_path(self.dir.path(), id)
    }
}

async fn round_trip(m: &SnapshotManager, store: &InMemoryStorage) -> InMemoryStorage {
    let snap = m
        .create_snapshot(store, CreateOptions::default())
        .await
        .unwrap();
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
    let target = restore_all(m, snap.id.as_str()).await;
    target
}

#[tokio::test]
async fn empty_store_and_empty_namespace_round_trip() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let empty = InMemoryStorage::new();
    assert!(dump(&round_trip(&m, &empty).await).await.is_empty());

    let store = store_with(&[("nothing", 0, 0)]).await;
    let restored = round_trip(&m, &store).await;
    assert_eq!(dump(&restored).await, dump(&store).await);
    assert_eq!(restored.dimension("nothing").await.unwrap(), None);
}

#[tokio::test]
async fn unicode_ids_large_metadata_and_ttls_survive() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = InMemoryStorage::new();
    store.ensure_namespace("ümlaut ✓ namespace").await.unwrap();
    let big = "x".repeat(2 << 20);
    let far = T0 / 1000 + 10 * 365 * 86_400;
    let vs = vec![
        Vector::new("日本語-id", vec![f32::MIN_POSITIVE, -0.0, f32::MAX]),
        Vector::new("emoji-🦀", vec![1.0, 2.0, 3.0])
            .with_metadata(json!({"blob": big, "nested": {"a": [1, 2, null]}})),
        Vector::new("ttl", vec![0.5, 0.25, 0.125]).with_ttl(far),
        Vector {
            expires_at: Some(far),
            ttl_seconds: Some(60),
            ..Vector::new("abs-expiry", vec![9.0, 9.0, 9.0])
        },
    ];
    store.upsert("ümlaut ✓ namespace", vs).await.unwrap();
    let restored = round_trip(&m, &store).await;
    assert_eq!(dump(&restored).await, dump(&store).await);
    let got = restored
        .get("ümlaut ✓ namespace", &["abs-expiry".to_string()])
        .await
        .unwrap();
    assert_eq!(
        (got[0].ttl_seconds, got[0].expires_at),
        (Some(60), Some(far))
    );
}

#[tokio::test]
async fn nan_and_signed_zero_are_bit_exact() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = InMemoryStorage::new();
    store.ensure_namespace("n").await.unwrap();
    let weird = vec![f32::NAN, -0.0, f32::INFINITY, f32::from_bits(1)];
    store
        .upsert("n", vec![Vector::new("w", weird.clone())])
        .await
        .unwrap();
    let restored = round_trip(&m, &store).await;
    let got = &restored.get_all("n").await.unwrap()[0].values;
    assert_eq!(
        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        weird.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn zero_dimension_vectors_are_rejected() {
    let store = InMemoryStorage::new();
    store.ensure_namespace("z").await.unwrap();
    let err = store
        .upsert("z", vec![Vector::new("a", vec![])])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}

#[tokio::test]
async fn many_members_per_namespace_and_options_are_honoured() {
    let repo = Repo::new();
    let store = store_with(&[("big", 3000, 64), ("small", 3, 2)]).await;
    let m = repo.manager(
        SnapshotConfig::default()
            .with_max_snapshots(0)
            .with_chunk_size(64 << 10)
            .with_scan_page_size(77)
            .with_restore_batch_size(13),
    );
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let big = snap.namespace("big").unwrap();
    assert_eq!(big.vector_count, 3000);
    let index = big
        .index
        .as_ref()
        .expect("format 2 keeps a chunk index in the blob");
    assert!(
        index.raw_length > 10 * 60,
        "an index of over 10 chunks: {index:?}"
    );
    assert!(big.chunks.is_empty(), "the sidecar no longer lists chunks");
    assert_eq!(snap.compression.filter, Filter::Shuffle);
    let target = restore_all(&m, snap.id.as_str()).await;
    assert_eq!(dump(&target).await, dump(&store).await);

    // compression off: stored gzip, bigger than compressed, still one valid gzip stream
    let off = repo.manager(
        SnapshotConfig::default()
            .with_max_snapshots(0)
            .with_compression(false),
    );
    let plain = off
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(plain.compression.level, 0);
    assert!(plain.size_bytes > snap.size_bytes);
    assert!(plain.size_bytes >= plain.raw_bytes);
    let mut whole = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(
            std::fs::File::open(repo.blob_path(plain.id.as_str())).unwrap(),
        ),
        &mut whole,
    )
    .unwrap();
    assert_eq!(whole.len() as u64, plain.raw_bytes);
    assert!(whole.starts_with(b"DKSNAP\r\n"));

    // the level is honoured: 9 is never larger than 1 and is recorded
    let best = repo.manager(
        SnapshotConfig::default()
            .with_max_snapshots(0)
            .with_compression_level(CompressionLevel::Best),
    );
    let small = best
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!((small.compression.level, snap.compression.level), (9, 2));
    assert!(
        small.size_bytes < snap.size_bytes,
        "{} vs {}",
        small.size_bytes,
        snap.size_bytes
    );

    // shuffle off: plain VECTOR frames, same content digests, same restore
    let unshuffled = repo.manager(
        SnapshotConfig::default()
            .with_max_snapshots(0)
            .with_shuffle(false),
    );
    let u = unshuffled
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(u.compression.filter, Filter::None);
    assert_eq!(
        u.namespace("big").unwrap().content_sha256,
        big.content_sha256,
        "the digest ignores the filter"
    );
    unshuffled.verify_snapshot(u.id.as_str()).await.unwrap();
    let target = restore_all(&unshuffled, u.id.as_str()).await;
    assert_eq!(dump(&target).await, dump(&store).await);

    // include_metadata off: vectors come back without metadata
    let nometa = repo.manager(
        SnapshotConfig::default()
            .with_max_snapshots(0)
            .with_include_metadata(false),
    );
    let s = nometa
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    assert!(!s.include_metadata);
    let target = restore_all(&nometa, s.id.as_str()).await;
    assert!(target
        .get_all("small")
        .await
        .unwrap()
        .iter()
        .all(|v| v.metadata.is_none()));
    assert!(store
        .get_all("small")
        .await
        .unwrap()
        .iter()
        .any(|v| v.metadata.is_some()));
}

#[tokio::test]
async fn the_blob_is_readable_by_zcat() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let snap = m
        .create_snapshot(
            &store_with(&[("a", 50, 4), ("b", 10, 2)]).await,
            CreateOptions::default(),
        )
        .await
        .unwrap();
    let Ok(out) = std::process::Command::new("zcat")
        .arg(repo.blob_path(snap.id.as_str()))
        .output()
    else {
        panic!("zcat is needed for this test (package gzip)");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, snap.raw_bytes);
    assert!(out.stdout.starts_with(b"DKSNAP\r\n"));
}

#[tokio::test]
async fn incremental_chain_of_depth_four_with_deletions_restores_every_point_in_time() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 40, 4), ("b", 30, 4), ("c", 20, 4)]).await;
    let mut points = Vec::new();
    let s0 = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    points.push((s0.id.clone(), dump(&store).await));

    // 1: change a, delete b (auto-detected)
    store
        .upsert("a", make_vectors("a-extra", 3, 4))
        .await
        .unwrap();
    store.delete_namespace("b").await.unwrap();
    let s1 = m
        .create_incremental_snapshot(&store, s0.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        s1.namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(s1.deleted_namespaces, ["b"]);
    assert_eq!(s1.unchanged_namespaces, ["c"]);
    points.push((s1.id.clone(), dump(&store).await));

    // 2: re-create b with another dimension, delete c, nothing else (explicit list names none)
    store.ensure_namespace("b").await.unwrap();
    store.upsert("b", make_vectors("b2", 5, 8)).await.unwrap();
    store.delete_namespace("c").await.unwrap();
    let s2 = m
        .create_incremental_snapshot(&store, s1.id.as_str(), Some(&[]), CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        s2.namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["b"],
        "a new namespace is always stored"
    );
    assert_eq!(s2.deleted_namespaces, ["c"]);
    points.push((s2.id.clone(), dump(&store).await));

    // 3: remove vectors from a, explicitly named as changed
    store
        .delete("a", &["a-00000".to_string(), "a-00001".to_string()])
        .await
        .unwrap();
    let s3 = m
        .create_incremental_snapshot(
            &store,
            s2.id.as_str(),
            Some(&["a".to_string()]),
            CreateOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(s3.unchanged_namespaces, ["b"]);
    points.push((s3.id.clone(), dump(&store).await));

    // 4: nothing changed at all
    let s4 = m
        .create_incremental_snapshot(&store, s3.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert!(s4.namespaces.is_empty());
    assert_eq!(s4.total_vectors, 0);
    points.push((s4.id.clone(), dump(&store).await));

    for (id, expected) in &points {
        m.verify_snapshot(id.as_str()).await.unwrap();
        // Restoring into a store that holds *other* data must still give exactly the snapshot.
        let target = store_with(&[("a", 7, 4), ("zzz", 3, 2)]).await;
        for ns in ["zzz"] {
            target.delete_namespace(ns).await.unwrap();
        }
        let result = m
            .restore_snapshot(&target, id.as_str(), &RestoreOptions::new())
            .await
            .unwrap();
        let mut got = dump(&target).await;
        got.retain(|k, _| expected.contains_key(k));
        assert_eq!(&got, expected, "point in time {id}");
        assert_eq!(result.namespaces_restored, expected.len());
    }
    let restored = m
        .restore_snapshot(
            &InMemoryStorage::new(),
            s4.id.as_str(),
            &RestoreOptions::new(),
        )
        .await
        .unwrap();
    let holders: Vec<_> = restored
        .namespaces
        .iter()
        .map(|n| (n.source.as_str(), n.from_snapshot.clone()))
        .collect();
    assert_eq!(
        holders,
        [("a", s3.id.clone()), ("b", s2.id.clone())],
        "each namespace from the newest snapshot that stores it"
    );
}

#[tokio::test]
async fn restore_one_namespace_renamed_and_merge_versus_replace() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 20, 4), ("b", 10, 4)]).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();

    let target = InMemoryStorage::new();
    let r = m
        .restore_snapshot(
            &target,
            snap.id.as_str(),
            &RestoreOptions::new().only(["a"]).rename("a", "a-copy"),
        )
        .await
        .unwrap();
    assert_eq!(target.list_namespaces().await.unwrap(), ["a-copy"]);
    assert_eq!(
        target.get_all("a-copy").await.unwrap(),
        store.get_all("a").await.unwrap()
    );
    assert_eq!(
        (
            r.namespaces[0].source.as_str(),
            r.namespaces[0].target.as_str()
        ),
        ("a", "a-copy")
    );

    // Target "a" has extra vectors and a changed one.
    let target = store_with(&[("a", 5, 4)]).await;
    target
        .upsert(
            "a",
            vec![
                Vector::new("added-later", vec![0.0; 4]),
                Vector::new("a-00000", vec![9.0; 4]),
            ],
        )
        .await
        .unwrap();
    m.restore_snapshot(
        &target,
        snap.id.as_str(),
        &RestoreOptions::new().only(["a"]).mode(RestoreMode::Merge),
    )
    .await
    .unwrap();
    let merged = target.get_all("a").await.unwrap();
    assert!(
        merged.iter().any(|v| v.id == "added-later"),
        "merge keeps newer vectors"
    );
    assert_eq!(
        merged.iter().find(|v| v.id == "a-00000").unwrap().values,
        store.get_all("a").await.unwrap()[0].values
    );

    m.restore_snapshot(
        &target,
        snap.id.as_str(),
        &RestoreOptions::new().only(["a"]),
    )
    .await
    .unwrap();
    assert_eq!(
        target.get_all("a").await.unwrap(),
        store.get_all("a").await.unwrap(),
        "replace removes newer vectors"
    );
}

#[tokio::test]
async fn bad_restore_requests_fail_before_touching_the_store() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 20, 4), ("b", 10, 4)]).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let target = store_with(&[("a", 3, 8), ("b", 2, 4)]).await;
    let before = dump(&target).await;
    let id = snap.id.as_str();

    let err = m
        .restore_snapshot(&target, id, &RestoreOptions::new().mode(RestoreMode::Merge))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimensionMismatch {
                expected: 8,
                actual: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = m
        .restore_snapshot(&target, id, &RestoreOptions::new().only(["nope"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("\"nope\" not found in snapshot"),
        "{err}"
    );
    let err = m
        .restore_snapshot(&target, id, &RestoreOptions::new().rename("a", "b"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("would both be restored into \"b\""),
        "{err}"
    );
    let err = m
        .restore_snapshot(
            &target,
            id,
            &RestoreOptions::new().only(["a"]).rename("b", "x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { what: "rename", .. }),
        "{err}"
    );
    let err = m
        .restore_snapshot(&target, id, &RestoreOptions::new().rename("a", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                what: "namespace",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(dump(&target).await, before);

    // Replace mode recreates a namespace of another dimension.
    m.restore_snapshot(&target, id, &RestoreOptions::new())
        .await
        .unwrap();
    assert_eq!(dump(&target).await, dump(&store).await);
}

#[tokio::test]
async fn expired_vectors_are_not_resurrected_unless_asked() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = InMemoryStorage::with_clock(repo.clock.clone());
    store.ensure_namespace("t").await.unwrap();
    store
        .upsert(
            "t",
            vec![
                Vector::new("short", vec![1.0]).with_ttl(60),
                Vector::new("forever", vec![2.0]),
            ],
        )
        .await
        .unwrap();
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    repo.clock.advance(Duration::from_secs(120));

    let target = InMemoryStorage::with_clock(ManualClock::new(0));
    let r = m
        .restore_snapshot(&target, snap.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap();
    assert_eq!((r.vectors_restored, r.vectors_skipped_expired), (1, 1));
    assert_eq!(target.get_all("t").await.unwrap().len(), 1);

    let target = InMemoryStorage::with_clock(ManualClock::new(0));
    let r = m
        .restore_snapshot(
            &target,
            snap.id.as_str(),
            &RestoreOptions::new().include_expired(true),
        )
        .await
        .unwrap();
    assert_eq!(r.vectors_restored, 2);
    assert_eq!(target.get_all("t").await.unwrap().len(), 2);
}

#[tokio::test]
async fn verify_and_restore_catch_flipped_bytes_and_truncation() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 200, 8), ("b", 100, 8)]).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let id = snap.id.as_str();
    let path = repo.blob_path(id);
    let good = std::fs::read(&path).unwrap();
    let b = snap.namespace("b").unwrap();

    // A flipped byte in the middle of namespace b's compressed data.
    let mut bad = good.clone();
    bad[(b.offset + b.length / 2) as usize] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let err = m.verify_snapshot(id).await.unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains(id), "{err}");

    // Restore checks namespace b before touching the target: the target stays as it was.
    let target = store_with(&[("b", 4, 8)]).await;
    let before = dump(&target).await;
    let err = m
        .restore_snapshot(&target, id, &RestoreOptions::new().only(["b"]))
        .await
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("namespace \"b\""), "{err}");
    assert_eq!(dump(&target).await, before);
    // Namespace a is intact and still restores (one ranged read of its own chunks).
    m.restore_snapshot(
        &InMemoryStorage::new(),
        id,
        &RestoreOptions::new().only(["a"]),
    )
    .await
    .unwrap();

    // Truncation at several offsets.
    for cut in [good.len() - 1, (b.offset + 3) as usize, 10, 0] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let err = m.verify_snapshot(id).await.unwrap_err();
        assert!(
            err.is_corrupt() && err.to_string().contains("truncated"),
            "cut {cut}: {err}"
        );
        let restore_b = m
            .restore_snapshot(
                &InMemoryStorage::new(),
                id,
                &RestoreOptions::new().only(["b"]),
            )
            .await;
        if cut as u64 >= b.offset + b.length {
            // Only the footer is lost: namespace b is whole and checked, so it still restores.
            assert_eq!(restore_b.unwrap().vectors_restored, 100);
        } else {
            assert!(restore_b.unwrap_err().is_corrupt(), "cut {cut}");
        }
    }

    // A flipped digit in the directory's recorded digest, the sidecar made to match.
    std::fs::write(&path, &good).unwrap();
    m.verify_snapshot(id).await.unwrap();
    let side = repo.dir.path().join(format!("snapshots/{id}.meta.json"));
    let text = std::fs::read_to_string(&side).unwrap();
    let digest = &b.content_sha256;
    let flipped = format!(
        "{}{}",
        if digest.starts_with('0') { "1" } else { "0" },
        &digest[1..]
    );
    forge_directory(repo.dir.path(), id, |m| {
        m.namespaces[1].content_sha256 = flipped.clone()
    });
    let err = m.verify_snapshot(id).await.unwrap_err();
    assert!(err.to_string().contains("content digest"), "{err}");

    // A missing blob.
    std::fs::write(&side, &text).unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = m.verify_snapshot(id).await.unwrap_err();
    assert!(err.to_string().contains("blob is missing"), "{err}");
}

#[tokio::test]
async fn sidecars_of_another_major_version_or_garbage_are_refused() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let snap = m
        .create_snapshot(&store_with(&[("a", 5, 2)]).await, CreateOptions::default())
        .await
        .unwrap();
    let side = repo
        .dir
        .path()
        .join(format!("snapshots/{}.meta.json", snap.id));
    let text = std::fs::read_to_string(&side).unwrap();
    let written = format!("\"format_version\": \"{}\"", snap.format_version);
    assert!(text.contains(&written), "{text}");
    let major = snap.format_version.split('.').next().unwrap().to_string();

    // (4.0 is the encrypted envelope, refused in an unencrypted repository elsewhere.)
    std::fs::write(&side, text.replace(&written, "\"format_version\": \"5.0\"")).unwrap();
    let err = m.get_snapshot_metadata(snap.id.as_str()).await.unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { ref found, .. } if found == "5.0"),
        "{err}"
    );

    // A newer minor with extra fields is fine.
    std::fs::write(
        &side,
        text.replace(
            &written,
            &format!("\"format_version\": \"{major}.7\", \"future_field\": [1]"),
        ),
    )
    .unwrap();
    m.get_snapshot_metadata(snap.id.as_str()).await.unwrap();

    std::fs::write(&side, "{ not json").unwrap();
    assert!(m
        .get_snapshot_metadata(snap.id.as_str())
        .await
        .unwrap_err()
        .is_corrupt());
    assert!(
        m.list_snapshots().await.unwrap_err().is_corrupt(),
        "a broken sidecar fails the listing loudly"
    );
}

#[tokio::test]
async fn wrong_and_hostile_ids_get_clear_errors_and_change_nothing() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let snap = m
        .create_snapshot(&store_with(&[("a", 5, 2)]).await, CreateOptions::default())
        .await
        .unwrap();
    let target = InMemoryStorage::new();
    for hostile in [
        "../../etc/passwd",
        "/abs",
        "a/b",
        "..",
        "x\0y",
        "%2e%2e",
        &"a".repeat(500),
    ] {
        let err = m
            .restore_snapshot(&target, hostile, &RestoreOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidInput {
                    what: "snapshot id",
                    ..
                }
            ),
            "{hostile:?}: {err}"
        );
        assert!(matches!(
            m.delete_snapshot(hostile, true).await,
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            m.verify_snapshot(hostile).await,
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            m.create_incremental_snapshot(&target, hostile, None, CreateOptions::default())
                .await,
            Err(Error::InvalidInput { .. })
        ));
    }
    let missing = "20991231T000000000Z-0000000000000000";
    let err = m
        .restore_snapshot(&target, missing, &RestoreOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("snapshot {missing} not found"));
    assert!(matches!(
        m.delete_snapshot(missing, false).await,
        Err(Error::SnapshotNotFound { .. })
    ));
    assert!(!m.snapshot_exists(missing).await.unwrap());
    assert!(matches!(
        m.create_incremental_snapshot(&target, missing, None, CreateOptions::default())
            .await,
        Err(Error::SnapshotNotFound { .. })
    ));
    assert!(target.list_namespaces().await.unwrap().is_empty());
    assert_eq!(m.list_snapshots().await.unwrap().len(), 1);
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn a_blob_without_sidecar_is_never_listed_and_gc_removes_it_after_the_grace_period() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let snap = m
        .create_snapshot(&store_with(&[("a", 5, 2)]).await, CreateOptions::default())
        .await
        .unwrap();
    // A writer that crashed after uploading its blob, before committing the sidecar.
    let orphan = "20251124T160000000Z-00000000deadbeef";
    std::fs::copy(repo.blob_path(snap.id.as_str()), repo.blob_path(orphan)).unwrap();
    let listed = m.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!m.snapshot_exists(orphan).await.unwrap());
    assert!(matches!(
        m.verify_snapshot(orphan).await,
        Err(Error::SnapshotNotFound { .. })
    ));

    // The orphan's mtime is "now" in real time; the manager's clock is in 2025, so move it on.
    repo.clock.set_ms(u64::MAX / 4);
    let dry = m
        .collect_garbage(Duration::from_secs(3600), true)
        .await
        .unwrap();
    assert_eq!(dry.orphan_blobs, [format!("data/{orphan}.snap.gz")]);
    assert!(dry.removed.is_empty() && repo.blob_path(orphan).exists());
    let real = m
        .collect_garbage(Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert_eq!(real.removed.len(), 1);
    assert!(!repo.blob_path(orphan).exists());
    m.verify_snapshot(snap.id.as_str()).await.unwrap();

    // Within the grace period nothing is touched.
    std::fs::copy(repo.blob_path(snap.id.as_str()), repo.blob_path(orphan)).unwrap();
    repo.clock.set_ms(T0);
    assert!(m
        .collect_garbage(Duration::from_secs(3600), false)
        .await
        .unwrap()
        .orphan_blobs
        .is_empty());
}

#[tokio::test]
async fn a_failed_commit_leaves_no_snapshot_and_no_blob() {
    let repo = Repo::new();
    let sink = FaultySink::new(repo.sink.clone());
    let m = SnapshotManager::new(sink.clone(), SnapshotConfig::default()).unwrap();
    sink.inject_every(Call::Put, Fault::Fail);
    let err = m
        .create_snapshot(&store_with(&[("a", 5, 2)]).await, CreateOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert!(sink
        .list_all(&Key::parse("snapshots").unwrap())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_store_that_fails_mid_snapshot_leaves_nothing_behind() {
    #[derive(Debug)]
    struct Flaky(InMemoryStorage);
    #[async_trait::async_trait]
    impl VectorStorage for Flaky {
        async fn upsert(&self, ns: &str, v: Vec<Vector>) -> dakera_snapshot::Result<usize> {
            self.0.upsert(ns, v).await
        }
        async fn get(&self, ns: &str, ids: &[String]) -> dakera_snapshot::Result<Vec<Vector>> {
            self.0.get(ns, ids).await
        }
        async fn delete(&self, ns: &str, ids: &[String]) -> dakera_snapshot::Result<usize> {
            self.0.delete(ns, ids).await
        }
        async fn namespace_exists(&self, ns: &str) -> dakera_snapshot::Result<bool> {
            self.0.namespace_exists(ns).await
        }
        async fn ensure_namespace(&self, ns: &str) -> dakera_snapshot::Result<()> {
            self.0.ensure_namespace(ns).await
        }
        async fn list_namespaces(&self) -> dakera_snapshot::Result<Vec<String>> {
            self.0.list_namespaces().await
        }
        async fn dimension(&self, ns: &str) -> dakera_snapshot::Result<Option<usize>> {
            self.0.dimension(ns).await
        }
        async fn count(&self, ns: &str) -> dakera_snapshot::Result<usize> {
            self.0.count(ns).await
        }
        async fn delete_namespace(&self, ns: &str) -> dakera_snapshot::Result<bool> {
            self.0.delete_namespace(ns).await
        }
        async fn scan(
            &self,
            ns: &str,
            after: Option<&str>,
            limit: usize,
        ) -> dakera_snapshot::Result<Vec<Vector>> {
            if after.is_some_and(|a| a >= "b-00050") {
                return Err(Error::Storage("disk on fire".into()));
            }
            self.0.scan(ns, after, limit).await
        }
    }
    let repo = Repo::new();
    let m = repo.manager(SnapshotConfig::default().with_scan_page_size(10));
    let store = Flaky(store_with(&[("a", 20, 2), ("b", 100, 2)]).await);
    let err = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    // The repository's config (made by its first snapshot) stays; no snapshot object does.
    let left: Vec<_> = walk(repo.dir.path())
        .into_iter()
        .filter(|p| !p.ends_with("config.json"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[tokio::test]
async fn delete_refuses_to_orphan_descendants_unless_forced() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 5, 2)]).await;
    let s0 = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store.upsert("a", make_vectors("x", 1, 2)).await.unwrap();
    let s1 = m
        .create_incremental_snapshot(&store, s0.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let s2 = m
        .create_incremental_snapshot(&store, s1.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let other = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();

    let err = m.delete_snapshot(s0.id.as_str(), false).await.unwrap_err();
    match &err {
        Error::HasDependents { children, .. } => {
            assert_eq!(children, &[s1.id.to_string(), s2.id.to_string()])
        }
        e => panic!("{e}"),
    }
    assert_eq!(m.list_snapshots().await.unwrap().len(), 4);
    let removed = m.delete_snapshot(s0.id.as_str(), true).await.unwrap();
    assert_eq!(
        removed,
        [s2.id.clone(), s1.id.clone(), s0.id.clone()],
        "descendants first"
    );
    let left = m.list_snapshots().await.unwrap();
    assert_eq!(left.iter().map(|s| &s.id).collect::<Vec<_>>(), [&other.id]);
    assert!(!repo.blob_path(s1.id.as_str()).exists());
    // A leaf deletes without force.
    assert_eq!(
        m.delete_snapshot(other.id.as_str(), false).await.unwrap(),
        std::slice::from_ref(&other.id)
    );
}

#[tokio::test]
async fn a_missing_parent_is_reported_as_a_broken_chain() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 5, 2), ("b", 5, 2)]).await;
    let s0 = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store.upsert("a", make_vectors("x", 1, 2)).await.unwrap();
    let s1 = m
        .create_incremental_snapshot(&store, s0.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    std::fs::remove_file(
        repo.dir
            .path()
            .join(format!("snapshots/{}.meta.json", s0.id)),
    )
    .unwrap();
    let err = m
        .restore_snapshot(
            &InMemoryStorage::new(),
            s1.id.as_str(),
            &RestoreOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BrokenChain { ref missing, .. } if *missing == s0.id.to_string()),
        "{err}"
    );
    let err = m.verify_snapshot(s1.id.as_str()).await.unwrap_err();
    assert!(matches!(err, Error::BrokenChain { .. }), "{err}");
    // Namespace a is stored in s1 itself and can still be restored alone.
    let target = InMemoryStorage::new();
    m.restore_snapshot(&target, s1.id.as_str(), &RestoreOptions::new().only(["a"]))
        .await
        .unwrap();
    assert_eq!(
        target.get_all("a").await.unwrap(),
        store.get_all("a").await.unwrap()
    );
    let err = m
        .restore_snapshot(&target, s1.id.as_str(), &RestoreOptions::new().only(["b"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BrokenChain { .. }), "{err}");
}

#[tokio::test]
async fn max_snapshots_keeps_the_newest_and_their_ancestors() {
    let repo = Repo::new();
    let m = repo.manager(SnapshotConfig::default().with_max_snapshots(2));
    let store = store_with(&[("a", 5, 2)]).await;
    let base = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let mut parent = base.id.clone();
    let mut ids = vec![base.id.clone()];
    for i in 0..3 {
        store
            .upsert("a", make_vectors(&format!("n{i}"), 1, 2))
            .await
            .unwrap();
        let s = m
            .create_incremental_snapshot(&store, parent.as_str(), None, CreateOptions::default())
            .await
            .unwrap();
        parent = s.id.clone();
        ids.push(s.id);
    }
    // Newest two are incrementals; every ancestor of them must survive.
    assert_eq!(m.list_snapshots().await.unwrap().len(), 4);
    let lone = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let lone2 = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let left: Vec<_> = m
        .list_snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        left,
        [lone2.id, lone.id],
        "the old chain is no longer needed"
    );
}

#[tokio::test]
async fn retention_policy_daily_weekly_within_and_dry_run() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 3, 2)]).await;
    // Two snapshots a day for 20 days, starting on a Monday at 00:00 UTC (2025-11-24).
    let mut made = Vec::new();
    for day in 0..20u64 {
        for hour in [1u64, 13] {
            repo.clock
                .set_ms(T0 - T0 % 86_400_000 + day * 86_400_000 + hour * 3_600_000);
            made.push(
                m.create_snapshot(&store, CreateOptions::default())
                    .await
                    .unwrap(),
            );
        }
    }
    let policy = RetentionPolicy {
        keep_daily: Some(3),
        keep_weekly: Some(2),
        keep_within: Some(Duration::from_secs(12 * 3600)),
        keep_last: Some(1),
    };
    let dry = m.apply_retention(&policy, true).await.unwrap();
    assert!(dry.deleted.is_empty());
    assert_eq!(m.list_snapshots().await.unwrap().len(), 40);
    let kept: Vec<&str> = dry.plan.keep.iter().map(|(id, _)| id.as_str()).collect();
    let newest = made.last().unwrap();
    // Newest (day 19 13:00) is kept by keep-last and daily; keep-within 12 h adds day 19 01:00;
    // daily adds days 18 and 17 (13:00); weekly: week of day 14-20 (day 19 13:00) and week of
    // day 7-13 (day 13 13:00).
    let expect: Vec<&str> = [39, 38, 37, 35, 27]
        .iter()
        .map(|&i| made[i].id.as_str())
        .collect();
    assert_eq!(kept, expect);
    assert!(
        dry.plan.keep[0].1.contains(&"keep-last 1".to_string()),
        "{:?}",
        dry.plan.keep[0]
    );
    assert_eq!(dry.plan.keep[0].0, newest.id);
    let real = m.apply_retention(&policy, false).await.unwrap();
    assert_eq!(real.deleted.len(), 35);
    assert_eq!(m.list_snapshots().await.unwrap().len(), 5);
    // An empty policy deletes nothing.
    assert!(m
        .apply_retention(&RetentionPolicy::default(), false)
        .await
        .unwrap()
        .deleted
        .is_empty());
}

#[tokio::test]
async fn retention_deletes_nothing_when_listing_or_reading_fails() {
    let repo = Repo::new();
    let sink = FaultySink::new(repo.sink.clone());
    let m = SnapshotManager::new(
        sink.clone(),
        SnapshotConfig::default().with_max_snapshots(0),
    )
    .unwrap();
    let store = store_with(&[("a", 3, 2)]).await;
    for _ in 0..4 {
        m.create_snapshot(&store, CreateOptions::default())
            .await
            .unwrap();
    }
    sink.inject_every(Call::List, Fault::Fail);
    assert!(m
        .apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .is_err());
    sink.clear_faults();
    sink.inject_every(Call::Get, Fault::Fail);
    assert!(m
        .apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .is_err());
    sink.clear_faults();
    assert_eq!(m.list_snapshots().await.unwrap().len(), 4);
    // And a create whose after-create retention fails still succeeds.
    let m2 = SnapshotManager::new(
        sink.clone(),
        SnapshotConfig::default().with_max_snapshots(1),
    )
    .unwrap();
    sink.inject_every(Call::Delete, Fault::Fail);
    m2.create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    sink.clear_faults();
    assert_eq!(m.list_snapshots().await.unwrap().len(), 5);
}

#[tokio::test]
async fn labels_and_descriptions_are_stored_and_validated() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 3, 2)]).await;
    let s = m
        .create_snapshot(
            &store,
            CreateOptions::described("before upgrade").with_label("env", "prod"),
        )
        .await
        .unwrap();
    let back = m.get_snapshot_metadata(s.id.as_str()).await.unwrap();
    assert_eq!(back, s);
    assert_eq!(back.description.as_deref(), Some("before upgrade"));
    let err = m
        .create_snapshot(&store, CreateOptions::default().with_label("", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { what: "label", .. }));
}

#[tokio::test]
async fn ids_are_time_ordered_and_created_at_matches() {
    let repo = Repo::new();
    let m = repo.default_manager();
    let store = store_with(&[("a", 3, 2)]).await;
    let a = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let b = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    assert!(a.id < b.id);
    assert_eq!(a.id.timestamp_ms(), Some(a.created_at_ms));
    assert_eq!(a.created_at, T0 / 1000);
}

#[tokio::test]
async fn two_writers_that_draw_the_same_id_cannot_overwrite_each_other() {
    let repo = Repo::new();
    let a = SnapshotManager::new(repo.sink.clone(), SnapshotConfig::default())
        .unwrap()
        .with_clock(repo.clock.clone())
        .with_random(SeededRandom::new(42));
    let b = SnapshotManager::new(repo.sink.clone(), SnapshotConfig::default())
        .unwrap()
        .with_clock(repo.clock.clone())
        .with_random(SeededRandom::new(42));
    let first = a
        .create_snapshot(
            &store_with(&[("a", 3, 2)]).await,
            CreateOptions::described("first"),
        )
        .await
        .unwrap();
    let err = b
        .create_snapshot(
            &store_with(&[("other", 9, 2)]).await,
            CreateOptions::described("second"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let listed = a.list_snapshots().await.unwrap();
    assert_eq!(listed, [first.summary()]);
    a.verify_snapshot(first.id.as_str()).await.unwrap();
}
