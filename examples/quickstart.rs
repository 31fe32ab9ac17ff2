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
//! lists the repository, changes two of the namespaces (150 FAQ entries added, one article
//! deleted) and takes an incremental snapshot (only those two namespaces are stored, and of
//! them only the chunks that changed; the third is recorded as unchanged: it prints the
//! bytes stored against the logical size they stand for), verifies both, restores the incremental into a fresh
//! store and checks that the restored store equals the original, vector for vector.

#[path = "support/mod.rs"]
mod support;

use dakera_snapshot::{
    CreateOptions, InMemoryStorage, RestoreOptions, SnapshotConfig, SnapshotManager, SnapshotType,
    VectorStorage,
};
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

async fn fill(
    store: &InMemoryStorage,
    ns: &str,
    n: usize,
    dim: usize,
) -> dakera_snapshot::Result<()> {
    store.ensure_namespace(ns).await?;
    store.upsert(ns, support::vectors(ns, n, dim, 1)).await?;
    Ok(())
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
    let removed = store
        .delete("articles", &["articles-00000000".to_string()])
        .await?;
    if removed != 1 {
        return Err(dakera_snapshot::Error::Task(
            "the example's deletion matched nothing".into(),
        ));
    }
    println!(
        "changed the store: 150 FAQ entries added, 1 article deleted ({} vectors now)",
        3_500 + 150 - 1
    );
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
        "created incremental snapshot {} on {}: stored {}, unchanged {}, {} on disk",
        inc.id,
        full.id,
        stored.join(", "),
        inc.unchanged_namespaces.join(", "),
        mib(inc.size_bytes)
    );
    println!(
        "  it stands for {} of compressed data: only the chunks that changed are stored again; \
         the rest, unchanged namespaces and unchanged chunks of changed ones, are referenced \
         in the full snapshot",
        mib(inc.logical_bytes.unwrap_or(inc.size_bytes))
    );

    println!("snapshots in the repository, newest first:");
    for s in manager.list_snapshots().await? {
        println!(
            "  {}  {:<11}  {:>6} vectors  {:>10}  {}",
            s.id,
            match s.snapshot_type {
                SnapshotType::Full => "full",
                SnapshotType::Incremental => "incremental",
            },
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
    if support::dump(&restored).await? != support::dump(&store).await? {
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
