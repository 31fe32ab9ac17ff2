//! Repositories written by earlier format versions stay readable, restorable and
//! verifiable, and new snapshots can build on them. The fixtures under tests/fixtures were
//! written by the code of their time (see tests/fixtures/README.md) and are never rewritten.

mod common;

use common::fixtures::fixture_copy;
use dakera_snapshot::testing::{dump, make_vectors, restore_all, store_with};
use dakera_snapshot::{
    CreateOptions, InMemoryStorage, SnapshotConfig, SnapshotManager, Vector, VectorStorage,
};
use std::path::Path;

const V1_FULL: &str = "20261202T075849828Z-e82b9485b1f90f4d";
const V1_INCREMENTAL: &str = "20261202T075849848Z-40d6b5ddb3491548";
const V1_PLAIN: &str = "20261202T075849862Z-619e8ecb7f927fe2";
const V2_FULL: &str = "20261202T101641538Z-9ba14b511153258f";
const V2_INCREMENTAL: &str = "20261202T101641617Z-d1b97b3badc54d3b";
const V2_PLAIN: &str = "20261202T101641648Z-84749ded411cc178";
const V21_FULL: &str = "20261203T084229244Z-dfbbb30e72a90fc2";
const V21_INCREMENTAL: &str = "20261203T084229260Z-9cac0eec3b8295cd";
const V21_PLAIN: &str = "20261203T084229274Z-f482066a37e19411";
const V30_FULL: &str = "20261203T124217682Z-a8dd712f0ac0032f";
const V30_INCREMENTAL: &str = "20261203T124217698Z-60d90a8531256e54";
const V30_PLAIN: &str = "20261203T124217710Z-1eb12512df4fae45";
const V40_FULL: &str = "20261203T151043748Z-c7f3b8176afba3ea";
const V40_INCREMENTAL: &str = "20261203T151043991Z-6972cbf98f87edd7";
const V40_PLAIN: &str = "20261203T151044103Z-87514021567eb7cb";
/// The password of the format 4.0 fixture (default Argon2id parameters).
const V40_PASSWORD: &str = "dakera fixture 4.0";

/// The store's three states when a fixture was written (the steps of its generators, which
/// differ only in how `alpha` is updated): the full, the incremental, the plain incremental.
async fn fixture_states(update_alpha: impl Fn(&mut [Vector])) -> [InMemoryStorage; 3] {
    let full = store_with(&[("alpha", 60, 8), ("beta", 10, 4), ("empty", 0, 0)]).await;
    let incremental = store_with(&[("alpha", 60, 8), ("beta", 10, 4)]).await;
    let mut upd = make_vectors("alpha", 65, 8);
    update_alpha(&mut upd);
    incremental.upsert("alpha", upd).await.unwrap();
    incremental.ensure_namespace("gamma").await.unwrap();
    incremental
        .upsert("gamma", make_vectors("gamma", 5, 3))
        .await
        .unwrap();
    let plain = InMemoryStorage::new();
    for (ns, (_, vectors)) in dump(&incremental).await {
        plain.ensure_namespace(&ns).await.unwrap();
        plain.upsert(&ns, vectors).await.unwrap();
    }
    plain
        .delete("gamma", &["gamma-00001".to_string()])
        .await
        .unwrap();
    [full, incremental, plain]
}

/// The 1.0 fixture's states: its first three alpha vectors were updated.
async fn v1_states() -> [InMemoryStorage; 3] {
    fixture_states(|alpha| {
        for v in alpha.iter_mut().take(3) {
            v.values[0] += 1.0;
        }
    })
    .await
}

/// The 2.0 fixture's states: one alpha vector in the middle was updated.
async fn v2_states() -> [InMemoryStorage; 3] {
    fixture_states(|alpha| alpha[30].values[0] += 1.0).await
}

/// Every snapshot of the repository verifies, and each of `ids` restores to its state.
async fn verifies_and_restores(m: &SnapshotManager, ids: [&str; 3], states: [InMemoryStorage; 3]) {
    for outcome in m.verify_all().await.unwrap() {
        assert!(outcome.ok, "{}: {:?}", outcome.snapshot_id, outcome.problem);
    }
    for (id, want) in ids.iter().zip(&states) {
        let got = restore_all(m, id).await;
        assert_eq!(dump(&got).await, dump(want).await, "snapshot {id}");
    }
}

fn manager(dir: &Path) -> SnapshotManager {
    SnapshotManager::local(dir, SnapshotConfig::new().with_max_snapshots(0)).unwrap()
}

#[tokio::test]
async fn a_format_1_0_repository_lists_verifies_and_restores() {
    let (_tmp, dir) = fixture_copy("format-1.0");
    let m = manager(&dir);
    let listed = m.list_snapshots().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [V1_PLAIN, V1_INCREMENTAL, V1_FULL]);
    assert!(listed.iter().all(|s| s.format_version == "1.0"));
    verifies_and_restores(&m, [V1_FULL, V1_INCREMENTAL, V1_PLAIN], v1_states().await).await;
}

#[tokio::test]
async fn a_new_incremental_builds_on_a_format_1_0_parent() {
    let (_tmp, dir) = fixture_copy("format-1.0");
    let m = manager(&dir);
    let [_, _, store] = v1_states().await;
    store
        .upsert("beta", make_vectors("beta", 12, 4))
        .await
        .unwrap();
    let child = m
        .create_incremental_snapshot(&store, V1_PLAIN, None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(child.parent_id.as_ref().unwrap().as_str(), V1_PLAIN);
    let stored: Vec<&str> = child.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(stored, ["beta"], "only the changed namespace is stored");
    m.verify_snapshot(child.id.as_str()).await.unwrap();
    let got = restore_all(&m, child.id.as_str()).await;
    assert_eq!(dump(&got).await, dump(&store).await);
    // Its blob lies beside the sidecars, where this repository's code put them.
    let blob = dir.join(format!("snapshots/{}.snap.gz", child.id));
    assert!(blob.exists(), "{}", blob.display());
    assert!(!dir.join("config.json").exists() && !dir.join("data").exists());
}

/// A fixture of format 2 or later (`ids`: full, incremental, plain) lists in order with its version,
/// its incremental references chunks of its parent, and it verifies and restores.
async fn chunked_fixture_reads(fixture: &str, version: &str, ids: [&str; 3]) {
    let (_tmp, dir) = fixture_copy(fixture);
    let m = manager(&dir);
    let listed = m.list_snapshots().await.unwrap();
    let listed_ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(listed_ids, [ids[2], ids[1], ids[0]]);
    assert!(listed.iter().all(|s| s.format_version == version));
    let inc = m.get_snapshot_metadata(ids[1]).await.unwrap();
    let alpha = inc.namespaces.iter().find(|n| n.name == "alpha").unwrap();
    assert!(
        alpha.logical_bytes.unwrap() > alpha.length - alpha.index.as_ref().unwrap().length,
        "the fixture's incremental references chunks of its parent"
    );
    verifies_and_restores(&m, ids, v2_states().await).await;
}

/// A new incremental on the incremental of a fixture of format 2 or later stores only a little of `alpha`:
/// the rest is referenced in the old chain.
async fn new_incremental_dedups_on(fixture: &str, parent: &str) {
    let (_tmp, dir) = fixture_copy(fixture);
    let config = SnapshotConfig::new()
        .with_max_snapshots(0)
        .with_chunk_size(4096)
        .with_dedup_chunk_size(1024);
    let m = SnapshotManager::local(&dir, config).unwrap();
    let [_, store, _] = v2_states().await;
    let mut one = make_vectors("alpha", 65, 8).remove(50);
    one.values[1] += 1.0;
    store.upsert("alpha", vec![one]).await.unwrap();
    let child = m
        .create_incremental_snapshot(&store, parent, None, CreateOptions::default())
        .await
        .unwrap();
    let alpha = &child.namespaces[0];
    assert_eq!(alpha.name, "alpha");
    let data = alpha.length - alpha.index.as_ref().unwrap().length;
    assert!(
        data * 2 < alpha.logical_bytes.unwrap(),
        "most of alpha is referenced in the old chain: {data} of {:?} bytes stored",
        alpha.logical_bytes
    );
    m.verify_snapshot(child.id.as_str()).await.unwrap();
    let got = restore_all(&m, child.id.as_str()).await;
    assert_eq!(dump(&got).await, dump(&store).await);
    // Its blob lies beside the sidecars, where this repository's code put them.
    let blob = dir.join(format!("snapshots/{}.snap.gz", child.id));
    assert!(blob.exists(), "{}", blob.display());
    assert!(!dir.join("config.json").exists() && !dir.join("data").exists());
}

#[tokio::test]
async fn a_format_2_0_repository_lists_verifies_and_restores() {
    chunked_fixture_reads("format-2.0", "2.0", [V2_FULL, V2_INCREMENTAL, V2_PLAIN]).await;
}

#[tokio::test]
async fn a_new_incremental_dedups_against_a_format_2_0_parent() {
    new_incremental_dedups_on("format-2.0", V2_INCREMENTAL).await;
}

#[tokio::test]
async fn a_format_2_1_repository_lists_verifies_and_restores() {
    chunked_fixture_reads("format-2.1", "2.1", [V21_FULL, V21_INCREMENTAL, V21_PLAIN]).await;
}

#[tokio::test]
async fn a_new_incremental_dedups_against_a_format_2_1_parent() {
    new_incremental_dedups_on("format-2.1", V21_INCREMENTAL).await;
}

#[tokio::test]
async fn a_format_3_0_repository_lists_verifies_and_restores() {
    chunked_fixture_reads("format-3.0", "3.0", [V30_FULL, V30_INCREMENTAL, V30_PLAIN]).await;
    // Its namespace lists are in the blobs: listing gives counts, not names.
    let (_tmp, dir) = fixture_copy("format-3.0");
    let listed = manager(&dir).list_snapshots().await.unwrap();
    assert!(listed
        .iter()
        .all(|s| s.directory.is_some() && !s.contents_loaded()));
    let counts: Vec<u64> = listed.iter().map(|s| s.namespace_count()).collect();
    assert_eq!(counts, [3, 3, 3], "plain, incremental, full");
}

#[tokio::test]
async fn a_new_incremental_dedups_against_a_format_3_0_parent() {
    new_incremental_dedups_on("format-3.0", V30_INCREMENTAL).await;
}

#[tokio::test]
async fn a_format_4_0_encrypted_repository_opens_lists_verifies_restores_and_dedups() {
    let (_tmp, dir) = fixture_copy("format-4.0");
    let key = dakera_snapshot::KeySource::password(V40_PASSWORD).unwrap();
    let err = manager(&dir).list_snapshots().await.unwrap_err();
    assert!(
        matches!(err, dakera_snapshot::Error::KeyRequired { .. }),
        "{err}"
    );
    let m = manager(&dir).with_key(key.clone());
    let listed = m.list_snapshots().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [V40_PLAIN, V40_INCREMENTAL, V40_FULL]);
    assert!(listed.iter().all(|s| s.sealed_by.is_sealed()));
    assert_eq!(listed[2].description.as_deref(), Some("fixture full"));
    verifies_and_restores(
        &m,
        [V40_FULL, V40_INCREMENTAL, V40_PLAIN],
        v2_states().await,
    )
    .await;
    // A new incremental on it deduplicates against its sealed chunks (keyed identities).
    let config = SnapshotConfig::new()
        .with_max_snapshots(0)
        .with_chunk_size(4096)
        .with_dedup_chunk_size(1024);
    let m = SnapshotManager::local(&dir, config).unwrap().with_key(key);
    let [_, store, _] = v2_states().await;
    let mut one = make_vectors("alpha", 65, 8).remove(50);
    one.values[1] += 1.0;
    store.upsert("alpha", vec![one]).await.unwrap();
    let child = m
        .create_incremental_snapshot(&store, V40_INCREMENTAL, None, CreateOptions::default())
        .await
        .unwrap();
    let alpha = &child.namespaces[0];
    let data = alpha.length - alpha.index.as_ref().unwrap().length;
    assert!(
        data * 2 < alpha.logical_bytes.unwrap(),
        "{data} of {:?}",
        alpha.logical_bytes
    );
    m.verify_snapshot(child.id.as_str()).await.unwrap();
    assert_eq!(
        dump(&restore_all(&m, child.id.as_str()).await).await,
        dump(&store).await
    );
}
