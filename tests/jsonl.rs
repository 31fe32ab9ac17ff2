//! JSON Lines export and import through the library: round trips (with the on-disk sort
//! forced to spill), validation errors naming lines, and what is refused.

mod common;

use common::{dump, restore_all, store_with};
use dakera_snapshot::jsonl::{export_jsonl, import_jsonl, import_jsonl_with_buffer, JsonlRecord};
use dakera_snapshot::{
    CreateOptions, Error, InMemoryStorage, ManualClock, SnapshotConfig, SnapshotManager,
    SnapshotMetadata, Vector, VectorStorage,
};
use std::io::Write;

fn manager(dir: &tempfile::TempDir) -> SnapshotManager {
    SnapshotManager::local(dir.path(), SnapshotConfig::default().with_max_snapshots(0)).unwrap()
}

/// A repository holding one snapshot of `store`.
async fn snapshot_of(
    store: &InMemoryStorage,
) -> (tempfile::TempDir, SnapshotManager, SnapshotMetadata) {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dir);
    let snap = m
        .create_snapshot(store, CreateOptions::default())
        .await
        .unwrap();
    (dir, m, snap)
}

async fn export_all(m: &SnapshotManager, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    export_jsonl(m, id, None, &mut out).await.unwrap();
    out
}

/// Reverses the line order so the import has to sort.
fn shuffled(jsonl: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = jsonl
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines.reverse();
    // interleave namespaces too: odd lines first, then even
    let (odd, even): (Vec<_>, Vec<_>) = lines.iter().enumerate().partition(|(i, _)| i % 2 == 1);
    let mut out = Vec::new();
    for (_, l) in odd.into_iter().chain(even) {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn export_then_import_spilling_to_disk_reproduces_the_store() {
    let store = store_with(&[("docs", 700, 16), ("images", 300, 3), ("z", 1, 1)]).await;
    store
        .upsert(
            "docs",
            vec![Vector::new("ttl", vec![0.5; 16]).with_ttl(3600)],
        )
        .await
        .unwrap();
    let (_dir, m, snap) = snapshot_of(&store).await;
    let jsonl = export_all(&m, snap.id.as_str()).await;
    assert_eq!(
        jsonl.iter().filter(|b| **b == b'\n').count(),
        1002,
        "one line per vector"
    );

    // A 4 KiB sort buffer: segments of 16 records, so about 60 sorted runs on disk.
    let input = shuffled(&jsonl);
    let report = import_jsonl_with_buffer(
        &m,
        std::io::Cursor::new(input),
        "shuffled.jsonl",
        CreateOptions::described("imported"),
        4096,
    )
    .await
    .unwrap();
    assert_eq!(report.records, 1002);
    assert_eq!(report.snapshot.description.as_deref(), Some("imported"));
    m.verify_snapshot(report.snapshot.id.as_str())
        .await
        .unwrap();
    let restored = restore_all(&m, report.snapshot.id.as_str()).await;
    assert_eq!(dump(&restored).await, dump(&store).await);
    // Same content, so the same per-namespace digests as the original snapshot.
    for (a, b) in snap.namespaces.iter().zip(&report.snapshot.namespaces) {
        assert_eq!((&a.name, &a.content_sha256), (&b.name, &b.content_sha256));
    }
    // And exporting the import gives the same bytes as the first export.
    assert_eq!(export_all(&m, report.snapshot.id.as_str()).await, jsonl);
}

#[tokio::test]
async fn gzip_input_is_recognised() {
    let store = store_with(&[("a", 50, 4)]).await;
    let (_dir, m, snap) = snapshot_of(&store).await;
    let jsonl = export_all(&m, snap.id.as_str()).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&jsonl).unwrap();
    let gz = gz.finish().unwrap();
    let report = import_jsonl(
        &m,
        std::io::Cursor::new(gz),
        "a.jsonl.gz",
        CreateOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.records, 50);
    assert_eq!(
        report.snapshot.namespaces[0].content_sha256,
        snap.namespaces[0].content_sha256
    );
}

/// Imports `text` and returns the error, checking that nothing was committed.
async fn import_error(text: &str, buffer: usize) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dir);
    let err = import_jsonl_with_buffer(
        &m,
        std::io::Cursor::new(text.as_bytes().to_vec()),
        "in.jsonl",
        CreateOptions::default(),
        buffer,
    )
    .await
    .unwrap_err();
    assert!(m.list_snapshots().await.unwrap().is_empty(), "{err}");
    assert!(m
        .collect_garbage(std::time::Duration::ZERO, true)
        .await
        .unwrap()
        .orphan_blobs
        .is_empty());
    err
}

fn line(ns: &str, id: &str, values: &[f32]) -> String {
    serde_json::to_string(&JsonlRecord {
        namespace: ns.into(),
        id: id.into(),
        values: values.to_vec(),
        metadata: None,
        ttl_seconds: None,
        expires_at: None,
    })
    .unwrap()
        + "\n"
}

#[tokio::test]
async fn bad_lines_are_refused_with_their_line_number() {
    let ok = line("a", "x", &[1.0, 2.0]);
    let cases: Vec<(String, u64, &str)> = vec![
        (
            format!("{ok}\n{}", line("a", "y", &[1.0])),
            3,
            "dimension 1, but namespace \"a\" has dimension 2 (set by line 1)",
        ),
        (
            format!("{ok}{{\"namespace\":\"a\",\"id\":\"y\"}}\n"),
            2,
            "missing field `values`",
        ),
        (
            format!("{ok}{{\"namespace\":\"a\",\"id\":\"y\",\"values\":[1,2],\"extra\":1}}\n"),
            2,
            "unknown field `extra`",
        ),
        (
            format!("{ok}{{\"namespace\":\"a\",\"id\":\"y\",\"values\":[1,2]"),
            2,
            "EOF while parsing",
        ),
        (format!("{ok}%not json\n"), 2, "expected value"),
        (format!("{ok}{}", line("", "y", &[1.0])), 2, "empty name"),
        (format!("{ok}{}", line("a", "", &[1.0, 2.0])), 2, "empty id"),
        (format!("{ok}{}", line("b", "y", &[])), 2, "has no values"),
        (
            format!("{ok}{}", line("a\u{1}", "y", &[1.0])),
            2,
            "control character",
        ),
        (
            format!("{ok}{{\"namespace\":\"a\",\"id\":\"y\",\"values\":[1,\"2\"]}}\n"),
            2,
            "invalid type",
        ),
        (
            "[{\"namespace\":\"a\",\"id\":\"x\",\"values\":[1]}]\n".to_string(),
            1,
            "a JSON array, but the input must be JSON Lines: one record object per line (convert with `jq -c '.[]' FILE`)",
        ),
        (
            "[\n  {\"namespace\":\"a\",\"id\":\"x\",\"values\":[1]}\n]\n".to_string(),
            1,
            "a JSON array",
        ),
    ];
    for (text, want_line, want) in cases {
        match import_error(&text, 1 << 20).await {
            Error::BadInput {
                input,
                line,
                reason,
            } => {
                assert_eq!(input, "in.jsonl");
                assert_eq!(line, want_line, "{reason}");
                assert!(reason.contains(want), "{reason:?} lacks {want:?}");
            }
            other => panic!("expected BadInput, got {other}"),
        }
    }
}

#[tokio::test]
async fn duplicate_ids_are_refused_even_across_sorted_runs() {
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&line("a", &format!("id{i:03}"), &[i as f32]));
    }
    text.push_str(&line("a", "id042", &[7.0])); // line 201
    for small in [1 << 20, 64] {
        let err = import_error(&text, small).await;
        let msg = err.to_string();
        assert!(
            msg.contains("line 201")
                && msg.contains("duplicate id \"id042\"")
                && msg.contains("also on line 43"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn ttl_without_expiry_expires_after_the_import_and_empty_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The manager's clock, not the machine's, dates the expiry.
    let clock = ManualClock::new(1_700_000_000_000);
    let m = manager(&dir).with_clock(clock.clone());
    let text = "{\"namespace\":\"a\",\"id\":\"t\",\"values\":[1],\"ttl_seconds\":60}\n";
    let r = import_jsonl(
        &m,
        std::io::Cursor::new(text.as_bytes().to_vec()),
        "t",
        CreateOptions::default(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    m.read_vectors(r.snapshot.id.as_str(), None, |_, batch| {
        seen.extend(batch);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(seen[0].expires_at, Some(1_700_000_000 + 60));
    assert_eq!(seen[0].ttl_seconds, Some(60));

    // An empty (or blank) input is refused: an empty snapshot is never what was meant.
    for input in [&b""[..], b"\n  \n"] {
        let err = import_jsonl(
            &m,
            std::io::Cursor::new(input.to_vec()),
            "e",
            CreateOptions::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "e: no records (the input is empty or blank); nothing was imported"
        );
    }
    assert_eq!(m.list_snapshots().await.unwrap().len(), 1);
}

#[tokio::test]
async fn non_finite_values_are_not_exported_as_something_else() {
    let store = InMemoryStorage::new();
    store.ensure_namespace("a").await.unwrap();
    store
        .upsert("a", vec![Vector::new("nan", vec![f32::NAN, 1.0])])
        .await
        .unwrap();
    let (_dir, m, snap) = snapshot_of(&store).await;
    let mut out = Vec::new();
    let err = export_jsonl(&m, snap.id.as_str(), None, &mut out)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("\"nan\" in namespace \"a\" holds NaN"),
        "{err}"
    );
}
