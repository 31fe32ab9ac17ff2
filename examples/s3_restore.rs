//! s3_restore: restore a snapshot (the given id, or the latest) from the repository at
//! `DAKERA_SNAPSHOT_URL` into a fresh in-memory store, verify the snapshot, and check the
//! restored data.
//!
//! ```text
//! DAKERA_SNAPSHOT_URL=s3://dakera/backups cargo run --release --example s3_restore [-- SNAPSHOT_ID]
//! ```
//!
//! Credentials and endpoint come from the standard environment variables (see s3_backup).
//! For snapshots made by `s3_backup`, the data is regenerated from the labels it stored and
//! compared vector for vector; for others, counts are compared with the snapshot's metadata.
//! Exits non-zero on any difference.

#[path = "support/mod.rs"]
mod support;

use dakera_snapshot::{
    InMemoryStorage, RestoreOptions, SinkOptions, SnapshotConfig, SnapshotManager, SnapshotType,
    VectorStorage,
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
            eprintln!("s3_restore: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let url = std::env::var("DAKERA_SNAPSHOT_URL").map_err(|_| {
        "set DAKERA_SNAPSHOT_URL to the repository, e.g. s3://bucket/prefix".to_string()
    })?;
    let manager = SnapshotManager::from_url(&url, &SinkOptions::new(), SnapshotConfig::default())
        .map_err(|e| e.to_string())?;
    println!("repository: {}", manager.sink().describe());

    let id = match std::env::args().nth(1) {
        Some(id) => id,
        None => {
            let all = manager.list_snapshots().await.map_err(|e| e.to_string())?;
            let latest = all.first().ok_or("the repository holds no snapshot")?;
            latest.id.to_string()
        }
    };
    let meta = manager
        .get_snapshot_metadata(&id)
        .await
        .map_err(|e| e.to_string())?;
    // RFC 3339 ends at year 9999; a damaged sidecar could claim a later time.
    let secs = meta.created_at_ms / 1000;
    let created = if secs <= 253_402_300_799 {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        format!("{secs} s after 1970 (invalid)")
    };
    println!(
        "snapshot: {id} ({}, {} vectors stored, created {created})",
        match meta.snapshot_type {
            SnapshotType::Full => "full",
            SnapshotType::Incremental => "incremental",
        },
        meta.total_vectors,
    );

    let started = Instant::now();
    let report = manager
        .verify_snapshot(&id)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "verified: {} bytes, {} vectors in {:.2} s",
        report.bytes_checked,
        report.vectors_checked,
        started.elapsed().as_secs_f64()
    );

    let store = InMemoryStorage::new();
    let started = Instant::now();
    let result = manager
        .restore_snapshot(&store, &id, &RestoreOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "restored: {} namespaces, {} vectors in {:.2} s",
        result.namespaces_restored,
        result.vectors_restored,
        started.elapsed().as_secs_f64()
    );

    let label = |k: &str| meta.labels.get(k).and_then(|v| v.parse::<u64>().ok());
    match (
        label("example.namespaces"),
        label("example.vectors"),
        label("example.dim"),
        label("example.seed"),
    ) {
        (Some(k), Some(n), Some(dim), Some(seed)) => {
            let expected = InMemoryStorage::new();
            support::fill(&expected, k as usize, n as usize, dim as usize, seed)
                .await
                .map_err(|e| e.to_string())?;
            let (got, want) = (support::dump(&store).await, support::dump(&expected).await);
            // TTL'd vectors get their expiry at upsert time, so compare without expires_at.
            let strip = |m: std::collections::BTreeMap<String, Vec<dakera_snapshot::Vector>>| {
                m.into_iter()
                    .map(|(ns, vs)| {
                        (
                            ns,
                            vs.into_iter()
                                .map(|mut v| {
                                    v.expires_at = None;
                                    v
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect::<std::collections::BTreeMap<_, _>>()
            };
            if strip(got.map_err(|e| e.to_string())?) != strip(want.map_err(|e| e.to_string())?) {
                return Err("the restored store differs from the data s3_backup generated".into());
            }
            println!("check: restored data equals the generated data, vector for vector");
        }
        _ => {
            for ns in &result.namespaces {
                let count = store.count(&ns.target).await.map_err(|e| e.to_string())? as u64;
                if count != ns.vectors {
                    return Err(format!(
                        "namespace {} holds {count} vectors, {} were restored",
                        ns.target, ns.vectors
                    ));
                }
            }
            println!("check: every restored namespace holds the vectors restored into it");
        }
    }
    Ok(())
}
