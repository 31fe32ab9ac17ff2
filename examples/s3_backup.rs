//! s3_backup: snapshot a generated vector store into the repository at `DAKERA_SNAPSHOT_URL`
//! and print the snapshot id and sizes.
//!
//! Works against any repository URL (`s3://bucket/prefix`, `gs://`, `az://`, `file:///`),
//! with credentials and endpoint from the standard environment variables. Against a local
//! S3 server (see localstack/README.md):
//!
//! ```text
//! bash localstack/start.sh seaweedfs && export AWS_ENDPOINT=http://127.0.0.1:8333 AWS_ALLOW_HTTP=true \
//!   AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=dakera-local AWS_SECRET_ACCESS_KEY=dakera-local-secret
//! DAKERA_SNAPSHOT_URL=s3://dakera/backups cargo run --release --example s3_backup -- --vectors 20000
//! ```
//!
//! Options: `--namespaces K` (3), `--vectors N` per namespace (5000), `--dim D` (384),
//! `--seed S` (1). The parameters are stored as labels so `s3_restore` can regenerate the
//! same data and check the restore vector for vector.

#[path = "support/mod.rs"]
mod support;

use dakera_snapshot::{
    CreateOptions, InMemoryStorage, SinkOptions, SnapshotConfig, SnapshotManager,
};
use std::process::ExitCode;
use std::time::Instant;

#[tokio::main]
async fn main() -> ExitCode {
    // As the CLI does: large uploads' buffers must not fragment glibc's heap.
    dakera_snapshot::allocator::pin_mmap_threshold();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3_backup: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var("DAKERA_SNAPSHOT_URL").map_err(|_| {
        "set DAKERA_SNAPSHOT_URL to the repository, e.g. s3://bucket/prefix".to_string()
    })?;
    let namespaces = support::flag(&args, "--namespaces", 3usize)?;
    let n = support::flag(&args, "--vectors", 5_000usize)?;
    let dim = support::flag(&args, "--dim", 384usize)?;
    let seed = support::flag(&args, "--seed", 1u64)?;

    let manager = SnapshotManager::from_url(
        &url,
        &SinkOptions::new(),
        SnapshotConfig::default().with_max_snapshots(0),
    )
    .map_err(|e| e.to_string())?;
    println!("repository: {}", manager.sink().describe());

    let store = InMemoryStorage::new();
    support::fill(&store, namespaces, n, dim, seed)
        .await
        .map_err(|e| e.to_string())?;
    println!("store: {namespaces} namespaces x {n} vectors of dimension {dim}");

    let started = Instant::now();
    let options = CreateOptions::described("s3_backup example")
        .with_label("example.namespaces", namespaces.to_string())
        .with_label("example.vectors", n.to_string())
        .with_label("example.dim", dim.to_string())
        .with_label("example.seed", seed.to_string());
    let snap = manager
        .create_snapshot(&store, options)
        .await
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    println!("snapshot id: {}", snap.id);
    println!(
        "vectors: {}, raw {} -> stored {} ({:.1}%), {:.2} s, {:.1} MB/s",
        snap.total_vectors,
        support::mb(snap.raw_bytes),
        support::mb(snap.size_bytes),
        100.0 * snap.size_bytes as f64 / snap.raw_bytes.max(1) as f64,
        secs,
        snap.raw_bytes as f64 / 1e6 / secs
    );
    println!("blob sha256: {}", snap.blob_sha256);
    Ok(())
}
