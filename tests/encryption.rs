//! Encrypted repositories (format 4.0), against a real local directory: what a key holder
//! can do, and what a bucket reader or writer without the key can neither learn nor change
//! unnoticed.

mod common;

use common::{dump, restore_all, store_with};
use dakera_snapshot::{
    CreateOptions, Error, InMemoryStorage, KdfParams, KeySource, RestoreOptions, SnapshotConfig,
    SnapshotManager, Vector, VectorStorage,
};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Cheap Argon2id parameters: the tests open repositories many times.
const KDF: KdfParams = KdfParams {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

const SECRET_ID: &str = "patient-record-4711";
const SECRET_META: &str = "diagnosis: confidential";
const SECRET_NS: &str = "tenant-acme-medical";
const SECRET_DESCRIPTION: &str = "nightly of the clinic";
const SECRET_LABEL: &str = "clinic-berlin";

fn password() -> KeySource {
    KeySource::password("correct horse battery staple").unwrap()
}

fn manager(dir: &Path, key: Option<KeySource>) -> SnapshotManager {
    let m = SnapshotManager::local(dir, SnapshotConfig::default()).unwrap();
    match key {
        Some(k) => m.with_key(k),
        None => m,
    }
}

async fn encrypted_repo(dir: &Path) -> SnapshotManager {
    let m = manager(dir, Some(password()));
    let info = m.init(KDF).await.unwrap();
    assert!(info.encrypted);
    m
}

/// A store whose ids, metadata and names are known strings, plus filler namespaces.
async fn secret_store() -> InMemoryStorage {
    let s = store_with(&[("alpha", 40, 16), ("beta", 3, 8)]).await;
    s.ensure_namespace(SECRET_NS).await.unwrap();
    let v = Vector::new(SECRET_ID, vec![0.25; 16]).with_metadata(json!({ "note": SECRET_META }));
    s.upsert(SECRET_NS, vec![v]).await.unwrap();
    s
}

fn options() -> CreateOptions {
    let mut o = CreateOptions {
        description: Some(SECRET_DESCRIPTION.into()),
        ..CreateOptions::default()
    };
    o.labels.insert("site".into(), SECRET_LABEL.into());
    o
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every file's bytes, to compare a repository before and after a refused operation.
fn snapshot_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn blob_path(dir: &Path, id: &str) -> PathBuf {
    dakera_snapshot::testing::blob_path(dir, id)
}

/// A full snapshot of a store of `namespaces` in a new encrypted repository at `dir`: the
/// manager, the store, the snapshot, its blob's path and the blob's bytes as written.
struct Sealed {
    m: SnapshotManager,
    store: InMemoryStorage,
    snap: dakera_snapshot::SnapshotMetadata,
    path: PathBuf,
    original: Vec<u8>,
}

async fn sealed_snapshot(dir: &Path, namespaces: &[(&str, usize, usize)]) -> Sealed {
    let m = encrypted_repo(dir).await;
    let store = store_with(namespaces).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let path = blob_path(dir, snap.id.as_str());
    let original = std::fs::read(&path).unwrap();
    Sealed {
        m,
        store,
        snap,
        path,
        original,
    }
}

#[tokio::test]
async fn an_encrypted_repository_round_trips_full_and_incremental_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let store = secret_store().await;
    let full = m.create_snapshot(&store, options()).await.unwrap();
    store
        .upsert("alpha", vec![Vector::new("alpha-00003", vec![9.0; 16])])
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert!(
        inc.size_bytes < full.size_bytes,
        "the incremental stores only what changed"
    );

    // A new process, with the password only.
    let m = manager(dir.path(), Some(password()));
    assert!(m.is_encrypted().await.unwrap());
    let listed = m.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), 2);
    let back = listed.iter().find(|s| s.id == full.id).unwrap();
    assert_eq!(back.description.as_deref(), Some(SECRET_DESCRIPTION));
    assert_eq!(
        back.labels.get("site").map(String::as_str),
        Some(SECRET_LABEL)
    );
    for s in &listed {
        m.verify_snapshot(s.id.as_str()).await.unwrap();
    }
    assert_eq!(
        dump(&restore_all(&m, inc.id.as_str()).await).await,
        dump(&store).await
    );
    let shown = m.get_snapshot_metadata(inc.id.as_str()).await.unwrap();
    assert_eq!(
        shown.format_version, "3.0",
        "the sealed content is format 3.0"
    );
}

#[tokio::test]
async fn the_repository_holds_no_id_metadata_name_description_or_label_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let store = secret_store().await;
    let full = m.create_snapshot(&store, options()).await.unwrap();
    m.create_incremental_snapshot(&store, full.id.as_str(), None, options())
        .await
        .unwrap();
    let secrets = [
        SECRET_ID,
        SECRET_META,
        SECRET_NS,
        SECRET_DESCRIPTION,
        SECRET_LABEL,
        "alpha-00001",
        "correct horse",
    ];
    let all = files(dir.path());
    assert!(
        all.len() >= 6,
        "config, a key, two blobs, two sidecars: {all:?}"
    );
    for path in all {
        let bytes = std::fs::read(&path).unwrap();
        // Compressed plaintext would hide the strings from a plain search too: so the
        // blobs must not even be gzip (every chunk is sealed, headers included).
        if path.extension().is_some_and(|e| e == "gz") {
            assert_ne!(
                &bytes[..2],
                &[0x1f, 0x8b],
                "{} starts like gzip",
                path.display()
            );
        }
        for s in secrets {
            let found = bytes.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(!found, "{:?} found in clear in {}", s, path.display());
        }
    }
}

#[tokio::test]
async fn without_the_key_or_with_a_wrong_one_nothing_is_read_or_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let store = secret_store().await;
    let full = m.create_snapshot(&store, options()).await.unwrap();
    let before = snapshot_of(dir.path());

    let nokey = manager(dir.path(), None);
    let err = nokey.create_snapshot(&store, options()).await.unwrap_err();
    assert!(matches!(err, Error::KeyRequired { .. }), "{err}");
    assert!(err.to_string().contains("--password-file"), "{err}");
    let err = nokey.list_snapshots().await.unwrap_err();
    assert!(matches!(err, Error::KeyRequired { .. }), "{err}");

    let wrong = manager(
        dir.path(),
        Some(KeySource::password("Tr0ub4dor&3").unwrap()),
    );
    let err = wrong.list_snapshots().await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    let err = wrong.create_snapshot(&store, options()).await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    let target = InMemoryStorage::new();
    let err = wrong
        .restore_snapshot(&target, full.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    assert!(!err.to_string().contains("Tr0ub4dor"), "{err}");
    assert!(target.list_namespaces().await.unwrap().is_empty());
    assert_eq!(snapshot_of(dir.path()), before, "nothing changed");
}

#[tokio::test]
async fn keys_can_be_added_listed_and_removed_but_never_the_last_or_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let store = secret_store().await;
    let snap = m.create_snapshot(&store, options()).await.unwrap();
    let key_file = dir.path().join("..").join(format!(
        "{}.key",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    let file_key = KeySource::generate_key_file(&key_file).unwrap();
    let added = m.add_key(&file_key).await.unwrap();
    assert_eq!(added.kind, "key-file");
    let listed = m.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|k| k.current).count(), 1);
    let first = listed.iter().find(|k| k.current).unwrap().id.clone();
    let err = m.remove_key(&first).await.unwrap_err().to_string();
    assert!(err.contains("opened with"), "{err}");

    // The key file opens the repository; with it the passphrase key goes (a rotation).
    let by_file = manager(dir.path(), Some(KeySource::key_file(&key_file).unwrap()));
    assert_eq!(
        dump(&restore_all(&by_file, snap.id.as_str()).await).await,
        dump(&store).await
    );
    let err = by_file.remove_key(&added.id).await.unwrap_err().to_string();
    assert!(err.contains("opened with"), "{err}");
    by_file.remove_key(&first).await.unwrap();
    let err = manager(dir.path(), Some(password()))
        .list_snapshots()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongKey { .. }),
        "a removed key opens nothing: {err}"
    );
    assert_eq!(by_file.list_keys().await.unwrap().len(), 1);
    let err = by_file.remove_key("0123456789abcdef").await.unwrap_err();
    assert!(matches!(err, Error::ObjectNotFound { .. }), "{err}");
    std::fs::remove_file(&key_file).unwrap();
}

#[tokio::test]
async fn a_flipped_byte_anywhere_in_an_encrypted_blob_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let Sealed {
        m,
        store,
        snap,
        path,
        original,
    } = sealed_snapshot(dir.path(), &[("a", 3, 4), ("b", 2, 4)]).await;
    let blob_sha = snap.blob_sha256.clone();
    let mut refused = 0;
    for i in 0..original.len() {
        let mut bad = original.clone();
        bad[i] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let err = m.verify_snapshot(snap.id.as_str()).await.unwrap_err();
        assert!(err.is_corrupt(), "byte {i}: {err}");
        // Restore reads chunk by chunk, each authenticated, and not the blob's header or
        // footer: it refuses the damage before changing anything, or (a byte it does not
        // read) restores exactly what was stored.
        if refuses_or_restores_exactly(&m, snap.id.as_str(), &store, &format!("byte {i}")).await {
            refused += 1;
        }
    }
    let unread = (snap.header.length + snap.footer.length) as usize;
    assert_eq!(
        refused,
        original.len() - unread,
        "every byte restore reads is checked"
    );
    std::fs::write(&path, &original).unwrap();
    assert_eq!(
        m.verify_snapshot(snap.id.as_str())
            .await
            .unwrap()
            .bytes_checked as usize,
        original.len()
    );
    assert!(!blob_sha.is_empty());
}

/// Restores snapshot `id` into a fresh store: true if the restore was refused as corrupt
/// with the store left empty, false if it restored exactly `want`'s content; `context`
/// names the case in a failure.
async fn refuses_or_restores_exactly(
    m: &SnapshotManager,
    id: &str,
    want: &InMemoryStorage,
    context: &str,
) -> bool {
    let target = InMemoryStorage::new();
    match m
        .restore_snapshot(&target, id, &RestoreOptions::new())
        .await
    {
        Err(err) => {
            assert!(err.is_corrupt(), "{context}: {err}");
            assert!(
                target.list_namespaces().await.unwrap().is_empty(),
                "{context}"
            );
            true
        }
        Ok(_) => {
            assert_eq!(dump(&target).await, dump(want).await, "{context}");
            false
        }
    }
}

/// Copies the bytes at `from.1` of one blob over the bytes at `to.1` (as long) of another.
fn transplant(from: (&Path, std::ops::Range<u64>), to: (&Path, std::ops::Range<u64>)) {
    let src = std::fs::read(from.0).unwrap();
    let mut dst = std::fs::read(to.0).unwrap();
    let (f, t) = (from.1, to.1);
    dst[t.start as usize..t.end as usize].copy_from_slice(&src[f.start as usize..f.end as usize]);
    std::fs::write(to.0, dst).unwrap();
}

#[tokio::test]
async fn a_chunk_moved_from_another_snapshot_or_namespace_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    // Two namespaces with the same vectors: their chunks have the same lengths.
    let store = InMemoryStorage::new();
    for ns in ["left", "right"] {
        store.ensure_namespace(ns).await.unwrap();
        store
            .upsert(ns, common::make_vectors("same", 30, 8))
            .await
            .unwrap();
    }
    let a = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let b = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let (a, b) = (
        m.get_snapshot_metadata(a.id.as_str()).await.unwrap(),
        m.get_snapshot_metadata(b.id.as_str()).await.unwrap(),
    );
    let data = |meta: &dakera_snapshot::SnapshotMetadata, ns: &str| {
        let e = meta.namespace(ns).unwrap();
        e.offset..e.index.as_ref().unwrap().offset
    };
    // The same length; not always the same offset, as the header chunk before it holds the
    // snapshot's id and its compressed size can differ by a byte or two.
    let (from, to) = (data(&a, "left"), data(&b, "left"));
    assert_eq!(
        from.end - from.start,
        to.end - to.start,
        "same data in both snapshots"
    );
    let (pa, pb) = (
        blob_path(dir.path(), a.id.as_str()),
        blob_path(dir.path(), b.id.as_str()),
    );
    let original = std::fs::read(&pb).unwrap();
    let target = InMemoryStorage::new();

    // From another snapshot of the same repository, same namespace, to its place here.
    // (Its sealed bytes differ, so the CRC-32 in the sealed index already tells; an
    // attacker cannot fix that CRC without the key, and the seal's associated data names
    // the snapshot, as crypto's unit tests show.)
    transplant((&pa, from), (&pb, to));
    let err = m
        .restore_snapshot(&target, b.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(
        err.to_string().contains(b.id.as_str()),
        "names the snapshot: {err}"
    );
    assert!(target.list_namespaces().await.unwrap().is_empty());

    // Within the snapshot, from one namespace to the other (a swap).
    std::fs::write(&pb, &original).unwrap();
    let (left, right) = (data(&b, "left"), data(&b, "right"));
    assert_eq!(left.end - left.start, right.end - right.start);
    let mut swapped = original.clone();
    let (l, r) = (
        left.start as usize..left.end as usize,
        right.start as usize..right.end as usize,
    );
    swapped[l.clone()].copy_from_slice(&original[r.clone()]);
    swapped[r].copy_from_slice(&original[l]);
    std::fs::write(&pb, &swapped).unwrap();
    let err = m.verify_snapshot(b.id.as_str()).await.unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let err = m
        .restore_snapshot(&target, b.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(target.list_namespaces().await.unwrap().is_empty());
    std::fs::write(&pb, &original).unwrap();
    m.verify_snapshot(b.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn a_forged_config_or_replaced_key_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let store = secret_store().await;
    m.create_snapshot(&store, options()).await.unwrap();
    let config_path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let before = snapshot_of(dir.path());
    let refused = |err: Error, want: &str| {
        assert!(err.to_string().contains(want), "wanted {want:?}: {err}");
    };

    // Removed, so a writer would take the repository for an unencrypted one.
    std::fs::remove_file(&config_path).unwrap();
    let err = manager(dir.path(), None)
        .create_snapshot(&store, options())
        .await
        .unwrap_err();
    refused(err, "config.json is missing, but keys/ holds 1 key");

    // Replaced by an unencrypted config.
    let plain = tempfile::tempdir().unwrap();
    manager(plain.path(), None).init(KDF).await.unwrap();
    std::fs::copy(plain.path().join("config.json"), &config_path).unwrap();
    let err = manager(dir.path(), None)
        .create_snapshot(&store, options())
        .await
        .unwrap_err();
    refused(err, "says the repository is unencrypted");

    // Weakened key derivation for new keys.
    let weaker = config.replace("\"memory_kib\": 1024", "\"memory_kib\": 8");
    assert_ne!(weaker, config);
    std::fs::write(&config_path, weaker).unwrap();
    let err = manager(dir.path(), Some(password()))
        .list_snapshots()
        .await
        .unwrap_err();
    refused(err, "altered or replaced");
    std::fs::write(&config_path, &config).unwrap();

    // A key file from another repository opened by the same password.
    let other = tempfile::tempdir().unwrap();
    encrypted_repo(other.path()).await;
    let theirs = common_key(other.path());
    let ours = common_key(dir.path());
    let saved = std::fs::read(&ours).unwrap();
    std::fs::copy(&theirs, &ours).unwrap();
    let err = manager(dir.path(), Some(password()))
        .list_snapshots()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    std::fs::write(&ours, saved).unwrap();
    assert_eq!(
        snapshot_of(dir.path()),
        before,
        "nothing was written by the refused calls"
    );
    assert_eq!(
        manager(dir.path(), Some(password()))
            .list_snapshots()
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The one key object of a repository.
fn common_key(repo: &Path) -> PathBuf {
    let keys: Vec<PathBuf> = files(&repo.join("keys"));
    assert_eq!(keys.len(), 1);
    keys[0].clone()
}

#[tokio::test]
async fn a_plaintext_snapshot_planted_in_an_encrypted_repository_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let store = secret_store().await;
    m.create_snapshot(&store, options()).await.unwrap();
    let plain = tempfile::tempdir().unwrap();
    let forged = manager(plain.path(), None)
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let (id, sidecar) = (forged.id.as_str(), format!("{}.meta.json", forged.id));
    for (from, to) in [
        (blob_path(plain.path(), id), blob_path(dir.path(), id)),
        (
            plain.path().join("snapshots").join(&sidecar),
            dir.path().join("snapshots").join(&sidecar),
        ),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    let m = manager(dir.path(), Some(password()));
    let catalog = m.list_catalog().await.unwrap();
    assert_eq!(catalog.snapshots.len(), 1);
    assert_eq!(catalog.damaged.len(), 1);
    assert!(
        catalog.damaged[0]
            .problem
            .contains("not written by a holder"),
        "{:?}",
        catalog.damaged
    );
    let err = m
        .restore_snapshot(
            &InMemoryStorage::new(),
            forged.id.as_str(),
            &RestoreOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
}

#[tokio::test]
async fn an_unencrypted_repository_refuses_a_key_and_init_refuses_to_encrypt_a_used_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = secret_store().await;
    manager(dir.path(), None)
        .create_snapshot(&store, options())
        .await
        .unwrap();
    let err = manager(dir.path(), Some(password()))
        .list_snapshots()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotEncrypted { .. }), "{err}");
    let err = manager(dir.path(), Some(password()))
        .init(KDF)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("holds unencrypted snapshots"),
        "{err}"
    );
    // The first snapshot declared the repository unencrypted (config.json version 2).
    let m = manager(dir.path(), None);
    assert_eq!(m.list_snapshots().await.unwrap().len(), 1);
    assert!(!m.is_encrypted().await.unwrap());
    let err = m.init(KDF).await.unwrap_err();
    assert!(err.to_string().contains("initialized already"), "{err}");
}

#[tokio::test]
async fn init_with_a_key_on_an_empty_unencrypted_repository_says_how_to_start_over() {
    let dir = tempfile::tempdir().unwrap();
    manager(dir.path(), None).init(KDF).await.unwrap();
    let err = manager(dir.path(), Some(password()))
        .init(KDF)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("delete its config.json"), "{err}");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let m = manager(dir.path(), Some(password()));
    m.init(KDF).await.unwrap();
    assert!(m.is_encrypted().await.unwrap());
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = encrypted_repo(dir.path()).await;
    let debug = format!("{m:?} {:?}", password());
    assert!(!debug.contains("correct horse"), "{debug}");
    let store = secret_store().await;
    let snap = m.create_snapshot(&store, options()).await.unwrap();
    let meta = m.get_snapshot_metadata(snap.id.as_str()).await.unwrap();
    let shown = format!("{meta:?}");
    assert!(shown.contains("sealed_by: sealed"), "{shown}");
    let wrong = manager(
        dir.path(),
        Some(KeySource::password("hunter2-secret").unwrap()),
    );
    let err = wrong.list_snapshots().await.unwrap_err();
    assert!(
        !format!("{err} {err:?} {wrong:?}").contains("hunter2"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_repository_on_s3_round_trips() {
    let Some(server) = common::servers::start_seaweedfs().await else {
        return;
    };
    let url = format!(
        "{}/encrypted-{:016x}",
        server.url,
        getrandom::u64().unwrap()
    );
    let open = || {
        SnapshotManager::from_url(&url, &server.options, SnapshotConfig::default())
            .unwrap()
            .with_key(password())
    };
    open().init(KDF).await.unwrap();
    let store = secret_store().await;
    let m = open();
    let full = m.create_snapshot(&store, options()).await.unwrap();
    store
        .upsert(SECRET_NS, vec![Vector::new("another", vec![1.0; 16])])
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, options())
        .await
        .unwrap();
    let m = open();
    assert_eq!(m.list_snapshots().await.unwrap().len(), 2);
    m.verify_snapshot(inc.id.as_str()).await.unwrap();
    assert_eq!(
        dump(&restore_all(&m, inc.id.as_str()).await).await,
        dump(&store).await
    );
    let nokey =
        SnapshotManager::from_url(&url, &server.options, SnapshotConfig::default()).unwrap();
    let err = nokey.create_snapshot(&store, options()).await.unwrap_err();
    assert!(matches!(err, Error::KeyRequired { .. }), "{err}");
    println!(
        "SeaweedFS (S3): an encrypted repository round-trips, and refuses a writer without its key"
    );
}

/// Copies every snapshot of `from` into `to`, ancestors first; returns the outcomes.
async fn copy_all(
    from: &SnapshotManager,
    to: &SnapshotManager,
) -> Vec<dakera_snapshot::CopyOutcome> {
    let ids: Vec<_> = from
        .list_snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut out = Vec::new();
    for id in from.copy_plan(&ids).await.unwrap() {
        out.push(from.copy_snapshot(id.as_str(), to).await.unwrap());
    }
    out
}

#[tokio::test]
async fn copy_re_encrypts_between_repositories_with_different_keys() {
    let store = secret_store().await;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = manager(plain_dir.path(), None);
    let full = plain.create_snapshot(&store, options()).await.unwrap();
    store
        .upsert("alpha", vec![Vector::new("alpha-00007", vec![3.0; 16])])
        .await
        .unwrap();
    let inc = plain
        .create_incremental_snapshot(&store, full.id.as_str(), None, options())
        .await
        .unwrap();
    let want = dump(&store).await;

    // Plain into encrypted: same ids, times, chain, description; sealed; deduplicated.
    let a_dir = tempfile::tempdir().unwrap();
    let a = encrypted_repo(a_dir.path()).await;
    let copied = copy_all(&plain, &a).await;
    assert_eq!(copied.len(), 2);
    let got = a.get_snapshot_metadata(inc.id.as_str()).await.unwrap();
    assert_eq!(got.parent_id, inc.parent_id);
    assert_eq!(got.created_at_ms, inc.created_at_ms);
    assert_eq!(got.description.as_deref(), Some(SECRET_DESCRIPTION));
    assert_eq!(got.unchanged_namespaces, inc.unchanged_namespaces);
    assert!(
        got.size_bytes < full.size_bytes,
        "the copy of the incremental deduplicates"
    );
    assert_eq!(dump(&restore_all(&a, inc.id.as_str()).await).await, want);
    for s in a.list_snapshots().await.unwrap() {
        a.verify_snapshot(s.id.as_str()).await.unwrap();
    }
    for path in files(a_dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for s in [SECRET_ID, SECRET_NS, SECRET_DESCRIPTION] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} in {}",
                path.display()
            );
        }
    }
    // Again: nothing to do.
    assert!(copy_all(&plain, &a)
        .await
        .iter()
        .all(|o| matches!(o, dakera_snapshot::CopyOutcome::AlreadyPresent { .. })));

    // Encrypted into another encrypted repository, under another password.
    let b_dir = tempfile::tempdir().unwrap();
    let b = manager(
        b_dir.path(),
        Some(KeySource::password("another one").unwrap()),
    );
    b.init(KDF).await.unwrap();
    copy_all(&a, &b).await;
    assert_eq!(dump(&restore_all(&b, inc.id.as_str()).await).await, want);
    b.verify_snapshot(inc.id.as_str()).await.unwrap();

    // And back out to an unencrypted repository.
    let c_dir = tempfile::tempdir().unwrap();
    let c = manager(c_dir.path(), None);
    copy_all(&b, &c).await;
    assert_eq!(dump(&restore_all(&c, inc.id.as_str()).await).await, want);
    assert!(!c.is_encrypted().await.unwrap());
}

#[tokio::test]
async fn a_truncated_encrypted_blob_is_caught_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let Sealed {
        m,
        store,
        snap,
        path,
        original,
    } = sealed_snapshot(dir.path(), &[("a", 6, 4), ("b", 2, 4)]).await;
    for len in (0..original.len()).step_by(3) {
        std::fs::write(&path, &original[..len]).unwrap();
        let err = m.verify_snapshot(snap.id.as_str()).await.unwrap_err();
        assert!(err.is_corrupt(), "cut at {len}: {err}");
        let context = format!("cut at {len}");
        if !refuses_or_restores_exactly(&m, snap.id.as_str(), &store, &context).await {
            // Only the footer, which a restore does not read, was cut.
            assert!(len as u64 >= snap.footer.offset, "cut at {len} restored");
        }
    }
    std::fs::write(&path, &original).unwrap();
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
}
