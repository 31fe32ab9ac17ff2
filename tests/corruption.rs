//! Corruption: every byte of a blob flipped, the blob truncated at many offsets, every byte
//! of the sidecar flipped. Each case must be caught by `verify` with an error naming the
//! snapshot (and the namespace, when the damage is inside one), and `restore` must either
//! fail the same way or return exactly the original data: never panic, never wrong data.

mod common;

use common::servers::announce;
use common::{dump, store_with};
use dakera_snapshot::testing::forge_directory;
use dakera_snapshot::{
    CreateOptions, InMemoryStorage, RestoreOptions, SnapshotConfig, SnapshotManager,
    SnapshotMetadata, VectorStorage,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Fixture {
    _dir: tempfile::TempDir,
    m: SnapshotManager,
    meta: SnapshotMetadata,
    blob: PathBuf,
    sidecar: PathBuf,
    original: Vec<u8>,
    data: BTreeMap<String, (Option<usize>, Vec<dakera_snapshot::Vector>)>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = SnapshotConfig::default()
        .with_max_snapshots(0)
        .with_chunk_size(4096);
    let m = SnapshotManager::local(dir.path(), config).unwrap();
    let store = store_with(&[("alpha", 70, 12), ("beta", 12, 3)]).await;
    let meta = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    let blob = dakera_snapshot::testing::blob_path(dir.path(), meta.id.as_str());
    let sidecar = dir.path().join(format!("snapshots/{}.meta.json", meta.id));
    let original = std::fs::read(&blob).unwrap();
    Fixture {
        m,
        blob,
        sidecar,
        original,
        data: dump(&store).await,
        meta,
        _dir: dir,
    }
}

impl Fixture {
    /// The region of the blob holding `offset`: "header", "footer" or a namespace's chunk.
    fn region(&self, offset: u64) -> (String, Option<String>) {
        if offset < self.meta.header.length {
            return ("header".into(), None);
        }
        for ns in &self.meta.namespaces {
            let index = ns.index.as_ref().expect("format 2");
            if (ns.offset..index.offset).contains(&offset) {
                return (format!("{} data chunks", ns.name), Some(ns.name.clone()));
            }
            if (index.offset..index.offset + index.length).contains(&offset) {
                return (format!("{} chunk index", ns.name), Some(ns.name.clone()));
            }
        }
        ("footer".into(), None)
    }

    /// Checks verify and restore on the repository as it is now. `ns`: the namespace the
    /// damage is in (verify must name it). Returns whether restore succeeded.
    async fn check(&self, case: &str, ns: Option<&str>) -> bool {
        let id = self.meta.id.as_str();
        match self.m.verify_snapshot(id).await {
            Ok(_) => panic!("{case}: verify passed"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(id), "{case}: verify error lacks the id: {msg}");
                if let Some(ns) = ns {
                    assert!(
                        msg.contains(&format!("namespace {ns:?}")),
                        "{case}: verify error lacks the namespace: {msg}"
                    );
                }
            }
        }
        self.restore_is_right_or_refused(case, ns).await
    }

    async fn restore_is_right_or_refused(&self, case: &str, ns: Option<&str>) -> bool {
        let id = self.meta.id.as_str();
        let target = InMemoryStorage::new();
        match self
            .m
            .restore_snapshot(&target, id, &RestoreOptions::new())
            .await
        {
            Ok(_) => {
                assert_eq!(
                    dump(&target).await,
                    self.data,
                    "{case}: restore returned wrong data"
                );
                true
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(id),
                    "{case}: restore error lacks the id: {msg}"
                );
                if let Some(ns) = ns {
                    assert!(
                        msg.contains(&format!("namespace {ns:?}")),
                        "{case}: restore error lacks the namespace: {msg}"
                    );
                }
                false
            }
        }
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_blob_byte_is_caught_and_named() {
    let f = fixture().await;
    let mut per_region: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for at in 0..f.original.len() {
        for xor in [0x01u8, 0xff] {
            let mut bytes = f.original.clone();
            bytes[at] ^= xor;
            write(&f.blob, &bytes);
            let (region, ns) = f.region(at as u64);
            let case = format!("byte {at} ({region}) xor {xor:#x}");
            let restored = f.check(&case, ns.as_deref()).await;
            let e = per_region.entry(region).or_default();
            e.0 += 1;
            if !restored {
                e.1 += 1;
            }
            // Damage inside a namespace's data must stop its restore.
            if ns.is_some() {
                assert!(!restored, "{case}: restore did not notice");
            }
        }
    }
    write(&f.blob, &f.original);
    f.m.verify_snapshot(f.meta.id.as_str()).await.unwrap();
    let total: usize = per_region.values().map(|v| v.0).sum();
    let summary: Vec<String> = per_region
        .iter()
        .map(|(r, (n, refused))| format!("{r}: {n} ({refused} refused by restore)"))
        .collect();
    announce(&format!(
        "corruption: {total} single-byte flips over a {}-byte blob, all caught by verify; by region: {}",
        f.original.len(),
        summary.join("; ")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_truncation_is_caught() {
    let f = fixture().await;
    let len = f.original.len() as u64;
    let mut cuts: Vec<u64> = (0..len).step_by(7).collect();
    for ns in &f.meta.namespaces {
        let index = ns.index.as_ref().expect("format 2");
        for at in [
            ns.offset,
            ns.offset + 1,
            index.offset,
            index.offset + 1,
            index.offset + index.length - 1,
        ] {
            cuts.push(at);
        }
    }
    cuts.extend([f.meta.footer.offset, len - 1]);
    cuts.sort();
    cuts.dedup();
    let last_ns_end = f.meta.footer.offset;
    for &cut in &cuts {
        write(&f.blob, &f.original[..cut as usize]);
        let case = format!("truncated to {cut} of {len} bytes");
        let restored = f.check(&case, None).await;
        assert_eq!(
            restored,
            cut >= last_ns_end,
            "{case}: restore must fail exactly when namespace data is cut off"
        );
    }
    write(&f.blob, &f.original);
    announce(&format!(
        "corruption: {} truncations of a {len}-byte blob, all caught by verify and, when they cut namespace data, by restore",
        cuts.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_sidecar_byte_is_refused_or_harmless() {
    let f = fixture().await;
    let original = std::fs::read(&f.sidecar).unwrap();
    let id = f.meta.id.as_str();
    let (mut refused, mut harmless) = (0, 0);
    for at in 0..original.len() {
        for xor in [0x01u8, 0x10] {
            let mut bytes = original.clone();
            bytes[at] ^= xor;
            write(&f.sidecar, &bytes);
            let case = format!("sidecar byte {at} xor {xor:#x}");
            let verified = match f.m.verify_snapshot(id).await {
                Ok(_) => true,
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(id), "{case}: {msg}");
                    false
                }
            };
            let restored = f.restore_is_right_or_refused(&case, None).await;
            if verified {
                // Undetected only where it cannot matter (description, labels, writer...):
                // the data must come back exactly, which restore_is_right_or_refused checked.
                assert!(restored, "{case}: verify passed but restore failed");
                harmless += 1;
            } else {
                refused += 1;
            }
        }
    }
    write(&f.sidecar, &original);
    announce(&format!(
        "corruption: {} sidecar byte flips: {refused} refused, {harmless} harmless (data restored exactly); none returned wrong data",
        refused + harmless
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_numbers_in_the_sidecar_never_allocate_or_read_past_the_data() {
    let f = fixture().await;
    let original = std::fs::read_to_string(&f.sidecar).unwrap();
    // Every number in the sidecar (offsets, lengths, counts, sizes, CRCs, dimensions, times).
    let mut spans = Vec::new();
    let bytes = original.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            // numbers only, not digits inside ids or hex digests
            if i < bytes.len() && matches!(bytes[i], b',' | b'}' | b']' | b'\n') {
                spans.push(start..i);
            }
        } else {
            i += 1;
        }
    }
    let forged = [
        "18446744073709551615",
        "9007199254740993",
        "4294967296",
        "0",
        "1",
    ];
    let mut cases = 0;
    for span in &spans {
        for value in forged {
            let mut text = original.clone();
            text.replace_range(span.clone(), value);
            write(&f.sidecar, text.as_bytes());
            let case = format!("number at {span:?} forged to {value}");
            // Listing and retention planning take any sidecar without panicking.
            let catalog = f.m.list_catalog().await.unwrap();
            assert_eq!(catalog.snapshots.len() + catalog.damaged.len(), 1, "{case}");
            let _ =
                f.m.apply_retention(&dakera_snapshot::RetentionPolicy::keep_last(1), true)
                    .await;
            if f.m.verify_snapshot(f.meta.id.as_str()).await.is_ok() {
                // unchanged in effect (e.g. the same value): the data must still be right
                assert!(f.restore_is_right_or_refused(&case, None).await, "{case}");
            } else {
                f.restore_is_right_or_refused(&case, None).await;
            }
            cases += 1;
        }
    }
    write(&f.sidecar, original.as_bytes());
    announce(&format!(
        "corruption: {cases} forged numbers ({} numeric fields x {} values) in the sidecar: no panic, no runaway allocation, no wrong data",
        spans.len(),
        forged.len()
    ));
    assert!(spans.len() > 15);
}

/// Every number of every namespace entry in the blob's directory (format 3), forged with the
/// sidecar made consistent with the forged directory: no panic, no runaway allocation, no
/// wrong data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_numbers_in_the_directory_never_allocate_or_read_past_the_data() {
    let f = fixture().await;
    let sidecar = std::fs::read(&f.sidecar).unwrap();
    let repo = f.blob.parent().unwrap().parent().unwrap().to_path_buf();
    type Field = fn(&mut dakera_snapshot::NamespaceEntry, u64);
    let fields: [(&str, Field); 10] = [
        ("dimension", |e, v| e.dimension = Some(v as u32)),
        ("vector_count", |e, v| e.vector_count = v),
        ("offset", |e, v| e.offset = v),
        ("length", |e, v| e.length = v),
        ("raw_length", |e, v| e.raw_length = v),
        ("index offset", |e, v| e.index.as_mut().unwrap().offset = v),
        ("index length", |e, v| e.index.as_mut().unwrap().length = v),
        ("index raw_length", |e, v| {
            e.index.as_mut().unwrap().raw_length = v
        }),
        ("index crc32", |e, v| {
            e.index.as_mut().unwrap().crc32 = v as u32
        }),
        ("logical_bytes", |e, v| e.logical_bytes = Some(v)),
    ];
    let forged = [u64::MAX, (1 << 53) + 1, 1 << 32, 0, 1];
    let mut cases = 0;
    for ns in 0..f.meta.namespaces.len() {
        for (field, set) in fields {
            for value in forged {
                forge_directory(&repo, f.meta.id.as_str(), |m| {
                    set(&mut m.namespaces[ns], value)
                });
                let case = format!("{field} of namespace {ns} forged to {value}");
                let listed = f.m.list_catalog().await.unwrap();
                assert_eq!(listed.snapshots.len() + listed.damaged.len(), 1, "{case}");
                let verified = f.m.verify_snapshot(f.meta.id.as_str()).await.is_ok();
                let restored = f.restore_is_right_or_refused(&case, None).await;
                assert!(verified <= restored, "{case}: verified but not restorable");
                write(&f.blob, &f.original);
                write(&f.sidecar, &sidecar);
                cases += 1;
            }
        }
    }
    announce(&format!(
        "corruption: {cases} forged numbers in the blob's namespace directory: no panic, no runaway allocation, no wrong data"
    ));
}

/// Damage in a full snapshot's chunks that an incremental references (chunk-level dedup) is
/// caught when the incremental is read: each byte of the full's data chunks flipped, the
/// incremental's verify fails exactly when its restore refuses, naming the full (where the
/// bytes are) and the namespace, and its restore never returns wrong data. Most chunks are
/// referenced, so most flips must be caught this way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_referenced_chunk_is_caught_through_the_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let config = SnapshotConfig::default()
        .with_max_snapshots(0)
        .with_dedup_chunk_size(1024);
    let m = SnapshotManager::local(dir.path(), config).unwrap();
    let store = store_with(&[("alpha", 70, 12)]).await;
    let full = m
        .create_snapshot(&store, CreateOptions::default())
        .await
        .unwrap();
    store
        .upsert("alpha", common::make_vectors("zeta", 3, 12))
        .await
        .unwrap();
    let inc = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let data = dump(&store).await;
    let blob = dakera_snapshot::testing::blob_path(dir.path(), full.id.as_str());
    let original = std::fs::read(&blob).unwrap();
    let ns = &full.namespaces[0];
    let section = ns.offset..ns.index.as_ref().unwrap().offset;
    let (mut caught, mut flips) = (0, 0);
    for at in section.clone() {
        let mut bytes = original.clone();
        bytes[at as usize] ^= 0x01;
        write(&blob, &bytes);
        let case = format!("byte {at} of the full's data chunks");
        let verified = m.verify_snapshot(inc.id.as_str()).await;
        let target = InMemoryStorage::new();
        let restored = m
            .restore_snapshot(&target, inc.id.as_str(), &RestoreOptions::new())
            .await;
        match (&verified, &restored) {
            (Ok(_), Ok(_)) => assert_eq!(dump(&target).await, data, "{case}: wrong data"),
            (Err(v), Err(r)) => {
                for msg in [v.to_string(), r.to_string()] {
                    assert!(
                        msg.contains(full.id.as_str()) && msg.contains("namespace \"alpha\""),
                        "{case}: {msg}"
                    );
                }
                caught += 1;
            }
            _ => panic!("{case}: verify {verified:?} but restore {restored:?}"),
        }
        flips += 1;
    }
    write(&blob, &original);
    m.verify_snapshot(inc.id.as_str()).await.unwrap();
    assert!(caught * 2 > flips, "{caught} of {flips} flips caught");
    announce(&format!(
        "corruption: {flips} flips in a full's data chunks, {caught} in chunks an incremental references, each caught by its verify and restore"
    ));
}
