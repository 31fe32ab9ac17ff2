//! Quickstart: snapshot an in-memory vector store into a local directory and get it back.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example quickstart                 # repository in ./dakera-snapshots
//! cargo run --example quickstart -- /some/dir    # or anywhere else
//! ```
//!
//! It fills a store with a few thousand vectors in three namespaces, takes a full snapshot,
//! lists the repository, changes the store and takes an incremental snapshot (only the
//! changed namespace is stored), verifies both, restores the incremental into a fresh store
//! and checks that the restored store equals the original, vector for vector.

use dakera_snapshot::{
    CreateOptions, InMemoryStorage, RestoreOptions, SnapshotConfig, SnapshotManager, Vector,
    VectorStorage,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn embedding(seed: u64, dim: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let raw: Vec<f32> = (0..dim)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

async fn fill(
    store: &InMemoryStorage,
    ns: &str,
    n: usize,
    dim: usize,
) -> dakera_snapshot::Result<()> {
    store.ensure_namespace(ns).await?;
    let vectors = (0..n)
        .map(|i| {
            let v = Vector::new(
                format!("{ns}-{i:06}"),
                embedding((ns.len() * 100_000 + i) as u64, dim),
            )
            .with_metadata(
                json!({"source": ns, "chunk": i, "text": format!("passage {i} of {ns}")}),
            );
            if i % 10 == 0 {
                v.with_ttl(30 * 86_400)
            } else {
                v
            }
        })
        .collect();
    store.upsert(ns, vectors).await?;
    Ok(())
}

async fn dump(s: &InMemoryStorage) -> dakera_snapshot::Result<BTreeMap<String, Vec<Vector>>> {
    let mut out = BTreeMap::new();
    for ns in s.list_namespaces().await? {
        out.insert(ns.clone(), s.get_all(&ns).await?);
    }
    Ok(out)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn run() -> dakera_snapshot::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "dakera-snapshots".to_string());
    let manager = SnapshotManager::local(&dir, SnapshotConfig::default())?;
    println!("repository: {}", manager.sink().describe());

    let store = InMemoryStorage::new();
    fill(&store, "articles", 2_000, 384).await?;
    fill(&store, "faq", 500, 384).await?;
    fill(&store, "images", 1_000, 512).await?;
    println!("store: 3 namespaces, 3500 vectors");

    let full = manager
        .create_snapshot(
            &store,
            CreateOptions::described("quickstart full").with_label("example", "quickstart"),
        )
        .await?;
    println!(
        "created full snapshot {}: {} vectors, {} raw -> {} on disk",
        full.id,
        full.total_vectors,
        mib(full.raw_bytes),
        mib(full.size_bytes)
    );

    fill(&store, "faq", 650, 384).await?; // 150 new FAQ entries, the rest rewritten unchanged
    store
        .delete("articles", &["articles-000000".to_string()])
        .await?;
    let inc = manager
        .create_incremental_snapshot(
            &store,
            full.id.as_str(),
            None,
            CreateOptions::described("quickstart incremental"),
        )
        .await?;
    let stored: Vec<&str> = inc.namespaces.iter().map(|n| n.name.as_str()).collect();
    println!(
        "created incremental snapshot {} on {}: stored {:?}, unchanged {:?}, {} on disk",
        inc.id,
        full.id,
        stored,
        inc.unchanged_namespaces,
        mib(inc.size_bytes)
    );

    println!("snapshots in the repository, newest first:");
    for s in manager.list_snapshots().await? {
        println!(
            "  {}  {:<11}  {:>6} vectors  {:>10}  {}",
            s.id,
            format!("{:?}", s.snapshot_type).to_lowercase(),
            s.total_vectors,
            mib(s.size_bytes),
            s.description.unwrap_or_default()
        );
    }

    for id in [&full.id, &inc.id] {
        let report = manager.verify_snapshot(id.as_str()).await?;
        let chain: Vec<String> = report.chain.iter().map(|c| c.to_string()).collect();
        println!(
            "verified {}: {} bytes, {} vectors, chain {}",
            id,
            report.bytes_checked,
            report.vectors_checked,
            chain.join(" <- ")
        );
    }

    let restored = InMemoryStorage::new();
    let result = manager
        .restore_snapshot(&restored, inc.id.as_str(), &RestoreOptions::new())
        .await?;
    for ns in &result.namespaces {
        println!(
            "restored {} ({} vectors) from snapshot {}",
            ns.target, ns.vectors, ns.from_snapshot
        );
    }
    if dump(&restored).await? != dump(&store).await? {
        return Err(dakera_snapshot::Error::Task(
            "the restored store differs from the original".into(),
        ));
    }
    println!(
        "restored store equals the original: {} namespaces, {} vectors",
        result.namespaces_restored, result.vectors_restored
    );
    Ok(())
}
