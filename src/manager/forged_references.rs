//! Forged chunk references in a format 2 index: each is refused with an error that names
//! the snapshot, the namespace and the chunk, and nothing is written to the target store.
//! The forgeries are made as a writer with access to the bucket would: the index is
//! rewritten and the sidecar made consistent with it (sizes, CRC-32, blob SHA-256), so only
//! the reference checks stand between the forgery and a restore.

use crate::config::{CreateOptions, RestoreOptions, SnapshotConfig};
use crate::error::Error;
use crate::format::blob::kind;
use crate::format::directory;
use crate::format::gzip;
use crate::format::index::NamespaceIndex;
use crate::format::sidecar::SnapshotMetadata;
use crate::storage::{InMemoryStorage, Vector, VectorStorage};
use crate::SnapshotManager;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

const NS: &str = "big";

fn vector(i: usize, seed: u32) -> Vector {
    let values = (0..16)
        .map(|d| ((i * 31 + d * 7) as u32 ^ seed) as f32 / 1000.0)
        .collect();
    Vector::new(format!("v-{i:05}"), values)
}

/// A repository with a full snapshot, an incremental on it that references most of its
/// chunks, and a later full; returns the three.
async fn repo(dir: &Path) -> (SnapshotManager, [SnapshotMetadata; 3]) {
    let (m, snaps, _) = repo_and_store(dir).await;
    (m, snaps)
}

/// [`repo`], and the store as the incremental saw it.
async fn repo_and_store(dir: &Path) -> (SnapshotManager, [SnapshotMetadata; 3], InMemoryStorage) {
    let config = SnapshotConfig::default()
        .with_max_snapshots(0)
        .with_dedup_chunk_size(1024);
    let m = SnapshotManager::local(dir, config).unwrap();
    let store = InMemoryStorage::new();
    let all: Vec<Vector> = (0..300).map(|i| vector(i, 0)).collect();
    store.ensure_namespace(NS).await.unwrap();
    store.upsert(NS, all).await.unwrap();
    let full = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store.upsert(NS, vec![vector(150, 9)]).await.unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let later = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    (m, [full, inc, later], store)
}

/// Rewrites `snap`'s chunk index of [`NS`] (the last namespace of its blob) with `forge`,
/// and its directory and sidecar to match.
fn forge_index(dir: &Path, snap: &SnapshotMetadata, forge: impl FnOnce(&mut NamespaceIndex)) {
    let blob_path = crate::testing::blob_path(dir, snap.id.as_str());
    let blob = std::fs::read(&blob_path).unwrap();
    let mut meta = snap.clone();
    let entry = meta.namespaces.iter_mut().find(|n| n.name == NS).unwrap();
    let index = entry.index.clone().unwrap();
    let at = index.offset as usize;
    let mut frame = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[at..at + index.length as usize])
        .read_to_end(&mut frame)
        .unwrap();
    assert_eq!(frame[0], kind::CHUNK_INDEX);
    let mut ix = NamespaceIndex::decode(&frame[5..]).unwrap();
    forge(&mut ix);
    let frame = ix.encode();
    let mut member = Vec::new();
    gzip::append_member(&mut member, &frame, 6);
    let footer = &blob[meta.footer.offset as usize..];
    let grown = member.len() as i64 - index.length as i64;
    let raw_grown = frame.len() as i64 - index.raw_length as i64;
    let new_index = entry.index.as_mut().unwrap();
    new_index.length = member.len() as u64;
    new_index.raw_length = frame.len() as u64;
    new_index.crc32 = crc32fast::hash(&member);
    entry.length = (entry.length as i64 + grown) as u64;
    entry.raw_length = (entry.raw_length as i64 + raw_grown) as u64;
    let old_dir = meta.directory.clone().unwrap();
    let dir_at = at as u64 + member.len() as u64;
    let (dir_member, listed) = directory::chunk(
        &meta.namespaces,
        &meta.unchanged_namespaces,
        &meta.deleted_namespaces,
        6,
        dir_at,
    );
    let new_blob = [&blob[..at], &member[..], &dir_member[..], footer].concat();
    meta.footer.offset = listed.range().end();
    meta.raw_bytes = (meta.raw_bytes as i64 + raw_grown + listed.raw_length as i64
        - old_dir.raw_length as i64) as u64;
    meta.directory = Some(listed);
    meta.size_bytes = new_blob.len() as u64;
    meta.blob_sha256 = hex::encode(Sha256::digest(&new_blob));
    meta.check_layout().unwrap();
    std::fs::write(&blob_path, new_blob).unwrap();
    let sidecar = dir.join(format!("snapshots/{}.meta.json", snap.id));
    std::fs::write(sidecar, meta.to_json()).unwrap();
}

/// Where a corruption error says the damage is (any other error fails the test).
fn corrupt_location(e: &Error) -> &crate::error::Location {
    match e {
        Error::Corrupt { location, .. } => location,
        other => panic!("not a corruption error: {other}"),
    }
}

/// The first chunk of the index that references another snapshot.
fn first_reference(ix: &NamespaceIndex) -> usize {
    ix.chunks.iter().position(|c| c.source != 0).unwrap()
}

/// Restores and verifies `snap`: both must fail with a corruption error naming `snap`, the
/// namespace and a byte offset (the chunk), containing `says`, and the target store keeps
/// what it held.
async fn refused(m: &SnapshotManager, snap: &SnapshotMetadata, says: &str) {
    refused_blaming(m, snap, snap, says).await
}

/// [`refused`], with the error naming `blamed` (the snapshot that holds the bytes).
async fn refused_blaming(
    m: &SnapshotManager,
    snap: &SnapshotMetadata,
    blamed: &SnapshotMetadata,
    says: &str,
) {
    let target = InMemoryStorage::new();
    target.ensure_namespace(NS).await.unwrap();
    target.upsert(NS, vec![vector(7, 1)]).await.unwrap();
    let errors = [
        m.restore_snapshot(&target, snap.id.as_str(), &RestoreOptions::new())
            .await
            .unwrap_err(),
        m.verify_snapshot(snap.id.as_str()).await.unwrap_err(),
    ];
    for e in errors {
        let location = corrupt_location(&e);
        assert_eq!(location.snapshot_id, blamed.id.as_str(), "{e}");
        assert_eq!(location.namespace.as_deref(), Some(NS), "{e}");
        assert!(location.offset.is_some(), "no chunk named: {e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(target.get_all(NS).await.unwrap(), vec![vector(7, 1)]);
}

#[tokio::test]
async fn a_reference_to_a_missing_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, [_, inc, _]) = repo(dir.path()).await;
    forge_index(dir.path(), &inc, |ix| {
        ix.sources[0] = "20200101T000000000Z-00000000000000ff".into();
    });
    refused(&m, &inc, "20200101T000000000Z-00000000000000ff").await;
}

#[tokio::test]
async fn a_reference_to_a_later_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, [_, inc, later]) = repo(dir.path()).await;
    forge_index(dir.path(), &inc, |ix| ix.sources[0] = later.id.to_string());
    refused(&m, &inc, "not an ancestor").await;
}

#[tokio::test]
async fn a_reference_to_the_snapshot_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, [_, inc, _]) = repo(dir.path()).await;
    let own = inc.id.to_string();
    forge_index(dir.path(), &inc, |ix| ix.sources[0] = own);
    refused(&m, &inc, "not an ancestor").await;
}

#[tokio::test]
async fn a_reference_past_the_end_of_its_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, [full, inc, _]) = repo(dir.path()).await;
    forge_index(dir.path(), &inc, |ix| {
        let i = first_reference(ix);
        ix.chunks[i].offset = full.size_bytes + 10;
    });
    refused(&m, &inc, "outside its data").await;
}

/// A forged identity would mislead later dedup, not the data: verify refuses it, naming the
/// chunk; a restore returns the authentic bytes (checked by CRC-32 and the content digest).
#[tokio::test]
async fn a_reference_that_does_not_match_its_identity_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (m, [full, inc, _], store) = repo_and_store(dir.path()).await;
    forge_index(dir.path(), &inc, |ix| {
        let i = first_reference(ix);
        ix.chunks[i].sha256[0] ^= 1;
    });
    let e = m.verify_snapshot(inc.id.as_str()).await.unwrap_err();
    let location = corrupt_location(&e);
    assert_eq!(location.snapshot_id, full.id.as_str(), "{e}");
    assert_eq!(location.namespace.as_deref(), Some(NS), "{e}");
    assert!(location.offset.is_some(), "{e}");
    let by = format!("identity the chunk index of snapshot {} records", inc.id);
    assert!(e.to_string().contains(&by), "{e}");
    let target = InMemoryStorage::new();
    m.restore_snapshot(&target, inc.id.as_str(), &RestoreOptions::new())
        .await
        .unwrap();
    assert_eq!(
        target.get_all(NS).await.unwrap(),
        store.get_all(NS).await.unwrap()
    );
}

#[tokio::test]
async fn a_reference_into_the_middle_of_a_chunk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, [full, inc, _]) = repo(dir.path()).await;
    forge_index(dir.path(), &inc, |ix| {
        let i = first_reference(ix);
        ix.chunks[i].offset += 3;
    });
    let by = format!("referenced by snapshot {}", inc.id);
    refused_blaming(&m, &inc, &full, &by).await;
}

fn fuzz_cases() -> u32 {
    std::env::var("DAKERA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Changes one field of one chunk entry to a value derived from `v`.
fn forge_field(ix: &mut NamespaceIndex, at: usize, field: u8, v: u64, blob_size: u64) {
    let sources = ix.sources.len() as u64;
    let c = &mut ix.chunks[at];
    match field {
        0 => c.source = (v % (sources + 2)) as u16,
        1 => c.offset = v % (blob_size + 64),
        2 => c.length = (v % 4096) as u32,
        3 => c.raw_length = (v % 65_536) as u32,
        4 => c.vectors = (v % 32) as u32,
        5 => c.crc32 = v as u32,
        _ => c.sha256[(v % 32) as usize] ^= 1 | v as u8,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: fuzz_cases(),
        ..Default::default()
    })]

    /// Random forgeries of an incremental's chunk entries (sources, places, sizes, counts,
    /// checksums, identities), with the sidecar kept consistent: restore never panics and
    /// either refuses or returns exactly the data the incremental recorded.
    #[test]
    fn forged_chunk_entries_never_restore_wrong_data(
        edits in proptest::collection::vec(
            (proptest::prelude::any::<proptest::sample::Index>(), 0u8..7, proptest::prelude::any::<u64>()),
            1..4,
        )
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (m, [full, inc, _], store) = repo_and_store(dir.path()).await;
            forge_index(dir.path(), &inc, |ix| {
                for (at, field, v) in &edits {
                    let at = at.index(ix.chunks.len());
                    forge_field(ix, at, *field, *v, full.size_bytes);
                }
            });
            let target = InMemoryStorage::new();
            let restored = m
                .restore_snapshot(&target, inc.id.as_str(), &RestoreOptions::new())
                .await;
            if restored.is_ok() {
                let want = store.get_all(NS).await.unwrap();
                assert_eq!(target.get_all(NS).await.unwrap(), want, "{edits:?}");
            }
        });
    }
}
