//! Throwaway generator of tests/fixtures/format-2.1 (run once with format 2.1 code).
use dakera_snapshot::testing::{make_vectors, store_with};
use dakera_snapshot::{CreateOptions, SnapshotConfig, SnapshotManager, VectorStorage};

#[tokio::test]
#[ignore]
async fn make_fixture_v2_1() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2.1");
    let _ = std::fs::remove_dir_all(&dir);
    let store = store_with(&[("alpha", 60, 8), ("beta", 10, 4), ("empty", 0, 0)]).await;
    let small = SnapshotConfig::new()
        .with_chunk_size(4096)
        .with_dedup_chunk_size(1024)
        .with_max_snapshots(0);
    let m = SnapshotManager::local(&dir, small.clone()).unwrap();
    let a = m
        .create_snapshot(&store, CreateOptions::described("fixture full"))
        .await
        .unwrap();
    // Changes: one alpha vector updated, five added at the end, empty dropped, gamma added;
    // beta unchanged (its store token says so). alpha's other chunks are referenced.
    let mut upd = make_vectors("alpha", 65, 8);
    upd[30].values[0] += 1.0;
    store.upsert("alpha", upd).await.unwrap();
    store.delete_namespace("empty").await.unwrap();
    store.ensure_namespace("gamma").await.unwrap();
    store
        .upsert("gamma", make_vectors("gamma", 5, 3))
        .await
        .unwrap();
    let b = m
        .create_incremental_snapshot(
            &store,
            a.id.as_str(),
            None,
            CreateOptions::described("fixture incremental"),
        )
        .await
        .unwrap();
    // Written plain (no shuffle, no compression): another incremental on top.
    let plain = small.with_shuffle(false).with_compression(false);
    let m2 = SnapshotManager::local(&dir, plain).unwrap();
    store
        .delete("gamma", &["gamma-00001".to_string()])
        .await
        .unwrap();
    let c = m2
        .create_incremental_snapshot(
            &store,
            b.id.as_str(),
            None,
            CreateOptions::described("fixture plain"),
        )
        .await
        .unwrap();
    println!("{} {} {}", a.id, b.id, c.id);
}
