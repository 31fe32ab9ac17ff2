//! The conformance suite: plain async functions over a sink or a manager, each asserting
//! the [`SnapshotSink`] contract or a whole workflow and panicking with what failed. Every
//! backend's test calls each of them once, so a new backend is tested by adding one call.
//! Each works under its own `conf/` keys or a fresh manager and deletes nothing else.

use super::{dump, make_vectors, restore_all, store_with};
use crate::paths::Key;
use crate::{
    CreateOptions, Error, PutMode, RetentionPolicy, SinkExt, SnapshotManager, SnapshotSink,
    SnapshotType, VectorStorage,
};
use bytes::Bytes;

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

/// put / get / head / overwrite / create-conflict / not-found / delete semantics.
pub async fn sink_basics(sink: &dyn SnapshotSink) {
    let k = key("conf/a/object.bin");
    assert!(sink.get(&k, None).await.err().unwrap().is_not_found());
    assert!(sink.head(&k).await.unwrap_err().is_not_found());

    sink.put(&k, Bytes::from_static(b"hello world"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        sink.get_bytes(&k, None).await.unwrap(),
        Bytes::from_static(b"hello world")
    );
    assert_eq!(sink.head(&k).await.unwrap().size, 11);

    let err = sink
        .put(&k, Bytes::from_static(b"other"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }),
        "create over an existing key: {err}"
    );
    assert_eq!(
        sink.get_bytes(&k, None).await.unwrap(),
        Bytes::from_static(b"hello world"),
        "a refused create changes nothing"
    );

    sink.put(&k, Bytes::from_static(b"replaced"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        sink.get_bytes(&k, None).await.unwrap(),
        Bytes::from_static(b"replaced")
    );

    sink.delete(&k).await.unwrap();
    assert!(sink.head(&k).await.unwrap_err().is_not_found());
    sink.delete(&k)
        .await
        .expect("deleting a missing key succeeds");

    let empty = key("conf/empty");
    sink.put(&empty, Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(sink.get_bytes(&empty, None).await.unwrap().len(), 0);
    sink.delete(&empty).await.unwrap();
}

/// Ranged reads return exactly the bytes asked for; a range past the end is an error.
pub async fn sink_ranges(sink: &dyn SnapshotSink) {
    let k = key("conf/ranges.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    sink.put(&k, Bytes::from(data.clone()), PutMode::Overwrite)
        .await
        .unwrap();
    for r in [
        0..1,
        10..20,
        0..3_000_000,
        1_048_575..2_097_153,
        2_999_999..3_000_000,
        5..5,
    ] {
        let got = sink.get_bytes(&k, Some(r.clone())).await.unwrap();
        assert_eq!(
            &got[..],
            &data[r.start as usize..r.end as usize],
            "range {r:?}"
        );
    }
    let past = sink.get_bytes(&k, Some(2_999_990..3_000_010)).await;
    assert!(
        past.is_err(),
        "a range past the end must fail, not read short"
    );
    sink.delete(&k).await.unwrap();
}

/// Streaming uploads are invisible until finished; aborted or dropped ones never appear.
pub async fn sink_streaming(sink: &dyn SnapshotSink) {
    let k = key("conf/stream.bin");
    let mut w = sink.put_streaming(&k, PutMode::Create).await.unwrap();
    let mut expect = Vec::new();
    for i in 0..12u8 {
        let chunk = vec![i; 700_000];
        expect.extend_from_slice(&chunk);
        w.write(Bytes::from(chunk)).await.unwrap();
        if i == 5 {
            assert!(
                sink.head(&k).await.unwrap_err().is_not_found(),
                "visible before finish"
            );
        }
    }
    let info = w.finish().await.unwrap();
    assert_eq!(info.size, expect.len() as u64);
    assert_eq!(sink.get_bytes(&k, None).await.unwrap(), Bytes::from(expect));

    // A second create of the same key loses, and the first object survives.
    let mut w = sink.put_streaming(&k, PutMode::Create).await.unwrap();
    w.write(Bytes::from_static(b"loser")).await.unwrap();
    assert!(matches!(w.finish().await, Err(Error::Conflict { .. })));
    assert_eq!(sink.head(&k).await.unwrap().size, 12 * 700_000);

    let aborted = key("conf/aborted.bin");
    let mut w = sink.put_streaming(&aborted, PutMode::Create).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await.unwrap();
    assert!(sink.head(&aborted).await.unwrap_err().is_not_found());

    let dropped = key("conf/dropped.bin");
    let mut w = sink.put_streaming(&dropped, PutMode::Create).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    drop(w);
    assert!(sink.head(&dropped).await.unwrap_err().is_not_found());
    let listed = sink.list_all(&key("conf")).await.unwrap();
    assert!(
        listed.iter().all(|o| o.key != aborted && o.key != dropped),
        "{listed:?}"
    );
    sink.delete(&k).await.unwrap();
}

/// Listing returns exactly the objects under a prefix, nested ones included.
pub async fn sink_listing(sink: &dyn SnapshotSink) {
    let keys = [
        "conf/list/a",
        "conf/list/b/c",
        "conf/list/b/d/e",
        "conf/listing-not-under/x",
    ];
    for k in keys {
        sink.put(&key(k), Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let mut got: Vec<String> = sink
        .list_all(&key("conf/list"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["conf/list/a", "conf/list/b/c", "conf/list/b/d/e"]);
    assert!(sink
        .list_all(&key("conf/nothing-here"))
        .await
        .unwrap()
        .is_empty());
    for k in keys {
        sink.delete(&key(k)).await.unwrap();
    }
}

/// A whole workflow through a manager: full, mutate, incremental (auto-detected), restore
/// both points in time, verify, retention. The manager must keep at least 10 snapshots.
pub async fn manager_workflow(m: &SnapshotManager) {
    let store = store_with(&[("docs", 300, 16), ("images", 120, 8), ("empty", 0, 0)]).await;
    let full = m
        .create_snapshot(
            &store,
            CreateOptions::described("full").with_label("env", "test"),
        )
        .await
        .unwrap();
    assert_eq!(full.snapshot_type, SnapshotType::Full);
    assert_eq!(full.total_vectors, 420);
    let at_full = dump(&store).await;

    store
        .upsert("docs", make_vectors("docs-new", 10, 16))
        .await
        .unwrap();
    store.delete_namespace("images").await.unwrap();
    store.ensure_namespace("audio").await.unwrap();
    store
        .upsert("audio", make_vectors("audio", 5, 4))
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(inc.parent_id.as_ref(), Some(&full.id));
    let stored: Vec<&str> = inc.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        stored,
        ["audio", "docs"],
        "only changed and new namespaces are stored"
    );
    assert_eq!(inc.unchanged_namespaces, ["empty"]);
    assert_eq!(inc.deleted_namespaces, ["images"]);
    let at_inc = dump(&store).await;

    let listed = m.list_snapshots().await.unwrap();
    assert_eq!(
        listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
        [&inc.id, &full.id],
        "newest first"
    );
    assert_eq!(
        listed[1].labels.get("env").map(String::as_str),
        Some("test")
    );

    for snap in [&full, &inc] {
        let report = m.verify_snapshot(snap.id.as_str()).await.unwrap();
        assert_eq!(report.vectors_checked, snap.total_vectors);
    }
    let target = restore_all(m, inc.id.as_str()).await;
    assert_eq!(dump(&target).await, at_inc);
    let target = restore_all(m, full.id.as_str()).await;
    assert_eq!(dump(&target).await, at_full);

    let report = m
        .apply_retention(&RetentionPolicy::keep_last(1), false)
        .await
        .unwrap();
    assert!(
        report.deleted.is_empty(),
        "the full snapshot is the parent of the kept one"
    );
    assert!(m.snapshot_exists(full.id.as_str()).await.unwrap());
    m.delete_snapshot(full.id.as_str(), true).await.unwrap();
    assert!(m.list_snapshots().await.unwrap().is_empty());
}

/// Two managers writing to the same repository at once: every snapshot lands, none is
/// damaged, ids differ.
pub async fn concurrent_managers(a: &SnapshotManager, b: &SnapshotManager) {
    let store = store_with(&[("ns", 200, 8)]).await;
    let (ra, rb) = tokio::join!(
        async {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(
                    a.create_snapshot(&store, CreateOptions::described("a"))
                        .await
                        .unwrap(),
                );
            }
            v
        },
        async {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(
                    b.create_snapshot(&store, CreateOptions::described("b"))
                        .await
                        .unwrap(),
                );
            }
            v
        }
    );
    let listed = a.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), 6);
    for s in ra.iter().chain(&rb) {
        assert!(listed.iter().any(|l| l.id == s.id));
        a.verify_snapshot(s.id.as_str()).await.unwrap();
    }
    for s in listed {
        a.delete_snapshot(s.id.as_str(), true).await.unwrap();
    }
}

/// Listing more keys than one page of an S3 listing (1000) returns all of them.
pub async fn sink_listing_paginates(sink: &dyn SnapshotSink) {
    use futures::StreamExt;
    let n = 1050;
    futures::stream::iter(0..n)
        .map(|i| async move {
            sink.put(
                &key(&format!("conf/many/k{i:05}")),
                Bytes::from_static(b"."),
                PutMode::Overwrite,
            )
            .await
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<crate::Result<Vec<_>>>()
        .unwrap();
    let listed = sink.list_all(&key("conf/many")).await.unwrap();
    assert_eq!(listed.len(), n);
    let mut names: Vec<_> = listed.iter().map(|o| o.key.to_string()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "no duplicates across pages");
    futures::stream::iter(listed)
        .map(|o| async move { sink.delete(&o.key).await })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(sink.list_all(&key("conf/many")).await.unwrap().is_empty());
}

/// A blob several parts long (with the 5 MiB minimum part size) round-trips, and ranged reads
/// across part boundaries return the right bytes.
pub async fn sink_multipart_blob(sink: &dyn SnapshotSink) {
    let k = key("conf/multipart.bin");
    let total = 13 * 1024 * 1024 + 12_345;
    let data: Vec<u8> = (0..total as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut w = sink.put_streaming(&k, PutMode::Create).await.unwrap();
    for chunk in data.chunks(1_000_003) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert!(
        sink.head(&k).await.unwrap_err().is_not_found(),
        "visible before finish"
    );
    assert_eq!(w.finish().await.unwrap().size, total as u64);
    assert_eq!(sink.head(&k).await.unwrap().size, total as u64);
    let back = sink.get_bytes(&k, None).await.unwrap();
    assert!(back[..] == data[..], "multipart content differs");
    let r = 5 * 1024 * 1024 - 10..5 * 1024 * 1024 + 10;
    assert_eq!(
        &sink.get_bytes(&k, Some(r.clone())).await.unwrap()[..],
        &data[r.start as usize..r.end as usize]
    );
    // A multipart create of an existing key is refused before anything is uploaded.
    let mut w = sink.put_streaming(&k, PutMode::Create).await.unwrap();
    let err = w.write(Bytes::from(vec![1u8; 6 * 1024 * 1024])).await.err();
    let err = match err {
        Some(e) => e,
        None => w.finish().await.unwrap_err(),
    };
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(sink.head(&k).await.unwrap().size, total as u64);
    sink.delete(&k).await.unwrap();
}

/// A namespace larger than one download request (8 MiB): restore and verify fetch it in
/// parallel ranged parts, and the result is exact.
pub async fn manager_large_namespace(m: &SnapshotManager) {
    let store = store_with(&[("big", 3_500, 768)]).await;
    let snap = m
        .create_snapshot(&store, CreateOptions::described("large"))
        .await
        .unwrap();
    assert!(
        snap.namespace("big").unwrap().length > 8 << 20,
        "the namespace must exceed one request"
    );
    m.verify_snapshot(snap.id.as_str()).await.unwrap();
    let target = restore_all(m, snap.id.as_str()).await;
    assert_eq!(dump(&target).await, dump(&store).await);
    m.delete_snapshot(snap.id.as_str(), false).await.unwrap();
}

/// Chunk-level dedup: incrementals of one namespace with a little churn (updates, inserts,
/// deletes) store only the chunks that changed and reference the rest in their ancestors;
/// each restores and verifies exactly, reading chunks from several blobs (more than one
/// download request in all), and deleting the chain newest first leaves nothing behind.
pub async fn manager_dedup_chain(m: &SnapshotManager) {
    let store = store_with(&[("big", 3_000, 768), ("tiny", 5, 8)]).await;
    let full = m
        .create_snapshot(&store, CreateOptions::described("dedup base"))
        .await
        .unwrap();
    let mut chain = vec![full.clone()];
    for round in 0..2u32 {
        churn(&store, round).await;
        let parent = chain.last().unwrap().id.clone();
        let inc = m
            .create_incremental_snapshot(&store, parent.as_str(), None, CreateOptions::default())
            .await
            .unwrap();
        assert!(
            inc.size_bytes * 5 < full.size_bytes,
            "round {round}: the incremental stores {} bytes, the full {}",
            inc.size_bytes,
            full.size_bytes
        );
        let logical = inc.logical_bytes.unwrap();
        assert!(
            logical > full.size_bytes * 9 / 10,
            "logical size {logical} vs full {}",
            full.size_bytes
        );
        assert_eq!(inc.unchanged_namespaces, vec!["tiny".to_string()]);
        m.verify_snapshot(inc.id.as_str()).await.unwrap();
        let back = restore_all(m, inc.id.as_str()).await;
        assert_eq!(dump(&back).await, dump(&store).await, "round {round}");
        chain.push(inc);
    }
    // Nothing changed: the large namespace, compared while written, is recorded unchanged
    // like the small one compared before, and the blob holds no section.
    let last = chain.last().unwrap();
    let same = m
        .create_incremental_snapshot(&store, last.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    assert!(same.namespaces.is_empty(), "{:?}", same.namespaces);
    assert_eq!(
        same.unchanged_namespaces,
        vec!["big".to_string(), "tiny".to_string()]
    );
    assert_eq!(same.logical_bytes, last.logical_bytes);
    let back = restore_all(m, same.id.as_str()).await;
    assert_eq!(dump(&back).await, dump(&store).await, "nothing changed");
    chain.push(same);
    // Retention keeping only the newest keeps every snapshot whose chunks it references.
    let plan = m
        .apply_retention(&crate::RetentionPolicy::keep_last(1), true)
        .await
        .unwrap()
        .plan;
    for snap in &chain {
        assert!(
            !plan.remove.contains(&snap.id),
            "retention would remove {}",
            snap.id
        );
    }
    for snap in chain.iter().rev() {
        m.delete_snapshot(snap.id.as_str(), false).await.unwrap();
    }
}

/// Updates, inserts and deletes a few vectors of `big` at spread-out places.
async fn churn(store: &crate::InMemoryStorage, round: u32) {
    let mut changed = Vec::new();
    for i in (round as usize * 7..3_000).step_by(400) {
        let mut v = make_vectors("big", i + 1, 768).pop().unwrap();
        v.values[round as usize] += 0.5;
        changed.push(v);
    }
    for k in 0..5 {
        let id = format!("big-{:05}x{round}{k}", 100 + 611 * k);
        changed.push(crate::Vector::new(
            id,
            super::values(u64::from(round) * 10 + k as u64, 768),
        ));
    }
    store.upsert("big", changed).await.unwrap();
    let gone: Vec<String> = (0..4)
        .map(|k| format!("big-{:05}", 250 + 700 * k + round as usize))
        .collect();
    store.delete("big", &gone).await.unwrap();
}

/// Many small namespaces around a large one and an empty one, so grouped and one-by-one
/// writes and reads interleave: a full and an incremental (a few changed, one deleted, one
/// new) verify and restore exactly, and a restore of three namespaces restores just those.
pub async fn manager_many_namespaces(m: &SnapshotManager) {
    let names: Vec<String> = (0..240).map(|k| format!("t{k:03}")).collect();
    let mut spec: Vec<(&str, usize, usize)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.as_str(), 1 + k % 7, 16))
        .collect();
    // Between t120 and t121 by name: 1,100 × 256 values (1.1 MB) go the one-namespace way.
    spec.push(("t120-large", 1_100, 256));
    spec.push(("t200-empty", 0, 0));
    let store = store_with(&spec).await;
    let full = m
        .create_snapshot(&store, CreateOptions::described("many namespaces"))
        .await
        .unwrap();
    assert_eq!(full.namespaces.len(), 242);
    m.verify_snapshot(full.id.as_str()).await.unwrap();
    let back = restore_all(m, full.id.as_str()).await;
    assert_eq!(dump(&back).await, dump(&store).await, "full");

    for k in [3usize, 77, 121, 239] {
        let ns = &names[k];
        store
            .upsert(ns, make_vectors(&format!("{ns}-new"), 2, 16))
            .await
            .unwrap();
    }
    store.delete_namespace("t050").await.unwrap();
    store.ensure_namespace("t999-new").await.unwrap();
    store
        .upsert("t999-new", make_vectors("t999-new", 3, 16))
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let stored: Vec<&str> = inc.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(stored, ["t003", "t077", "t121", "t239", "t999-new"]);
    assert_eq!(inc.deleted_namespaces, vec!["t050".to_string()]);
    m.verify_snapshot(inc.id.as_str()).await.unwrap();
    let back = restore_all(m, inc.id.as_str()).await;
    assert_eq!(dump(&back).await, dump(&store).await, "incremental");

    let some = crate::InMemoryStorage::new();
    let only = ["t003", "t120-large", "t121"];
    m.restore_snapshot(
        &some,
        inc.id.as_str(),
        &crate::RestoreOptions::new().only(only),
    )
    .await
    .unwrap();
    let mut want = dump(&store).await;
    want.retain(|name, _| only.contains(&name.as_str()));
    assert_eq!(dump(&some).await, want, "only three");
    m.delete_snapshot(full.id.as_str(), true).await.unwrap();
}
