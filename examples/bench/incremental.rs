//! The `--incremental on` measure: chunk-level dedup of a full snapshot and a chain of
//! incrementals under churn.

use super::{reset_peak, status_kib, support};
use dakera_snapshot::{
    CreateOptions, InMemoryStorage, RestoreOptions, SinkOptions, SnapshotConfig, SnapshotManager,
    SnapshotMetadata, Vector, VectorStorage,
};
use serde_json::{json, Value};
use std::time::Instant;

/// Chunk-level dedup (issue 10): a full snapshot, then 0.1% of the vectors updated, 0.1%
/// inserted with random ids and 0.1% deleted, at random places, then an incremental; both
/// timed and restored (the incremental's restore checked against the store). Then more such
/// rounds, up to `chain` incrementals in one chain: the repository's size and the restore of
/// the last one, checked against the store.
pub async fn incremental_phase(
    (namespaces, per_ns, dim): &(usize, usize, usize),
    chain: usize,
    sink: &str,
    config: SnapshotConfig,
) -> Result<Value, String> {
    let e = |e: dakera_snapshot::Error| e.to_string();
    let store = InMemoryStorage::new();
    support::fill(&store, *namespaces, *per_ns, *dim, 1)
        .await
        .map_err(|e| e.to_string())?;
    let m = SnapshotManager::from_url(sink, &SinkOptions::new(), config).map_err(e)?;
    let (full, full_create_s, full_peak) = timed_create(&m, &store, None).await?;
    let churned = churn(&store, *dim, 0).await.map_err(e)?;
    let (inc, incremental_create_s, inc_peak) = timed_create(&m, &store, Some(&full)).await?;
    let (full_restore_s, _, full_restore_peak) = timed_restore(&m, &full).await?;
    let (inc_restore_s, back, inc_restore_peak) = timed_restore(&m, &inc).await?;
    same_content(&back, &store, "the incremental").await?;
    let mut repo_bytes = stored_bytes(&full) + stored_bytes(&inc);
    let mut last = inc.clone();
    for round in 1..chain {
        churn(&store, *dim, round as u64).await.map_err(e)?;
        last = timed_create(&m, &store, Some(&last)).await?.0;
        repo_bytes += stored_bytes(&last);
    }
    let (chain_restore_s, back, _) = timed_restore(&m, &last).await?;
    same_content(&back, &store, "the last incremental of the chain").await?;
    let raw_mb = (namespaces * per_ns * dim * 4) as f64 / 1e6;
    println!(
        "  incremental: {churned} vectors changed; blob {:.2}% of the full; create {:.3} s vs full {:.3} s ({:.0}%); restore {:.0} MB/s vs full {:.0} MB/s",
        100.0 * inc.size_bytes as f64 / full.size_bytes as f64,
        incremental_create_s,
        full_create_s,
        100.0 * incremental_create_s / full_create_s,
        raw_mb / inc_restore_s,
        raw_mb / full_restore_s,
    );
    println!(
        "  chain of {chain}: repository {:.3}x one full; restore of the last {:.3} s ({:.2}x the full's)",
        repo_bytes as f64 / stored_bytes(&full) as f64,
        chain_restore_s,
        chain_restore_s / full_restore_s,
    );
    Ok(json!({
        "secs": incremental_create_s,
        "changed_vectors": churned,
        "full_blob_bytes": full.size_bytes,
        "incremental_blob_bytes": inc.size_bytes,
        "incremental_logical_mb": inc.logical_bytes.unwrap_or(0) as f64 / 1e6,
        "full_create_s": full_create_s,
        "incremental_create_s": incremental_create_s,
        "full_restore_mb_s": raw_mb / full_restore_s,
        "incremental_restore_mb_s": raw_mb / inc_restore_s,
        "full_create_peak_extra_mib": full_peak,
        "incremental_create_peak_extra_mib": inc_peak,
        "full_restore_peak_extra_mib": full_restore_peak,
        "incremental_restore_peak_extra_mib": inc_restore_peak,
        "chain_length": chain,
        "chain_repo_bytes": repo_bytes,
        "chain_repo_vs_full": repo_bytes as f64 / stored_bytes(&full) as f64,
        "chain_restore_s": chain_restore_s,
        "chain_restore_vs_full": chain_restore_s / full_restore_s,
    }))
}

/// A snapshot's blob and sidecar bytes.
fn stored_bytes(meta: &SnapshotMetadata) -> u64 {
    meta.size_bytes + meta.to_json().len() as u64
}

/// A full snapshot (no parent) or an incremental on `parent`: the snapshot, the seconds it
/// took and the peak memory it added (MiB).
async fn timed_create(
    m: &SnapshotManager,
    store: &InMemoryStorage,
    parent: Option<&SnapshotMetadata>,
) -> Result<(SnapshotMetadata, f64, f64), String> {
    let before = status_kib("VmRSS:");
    reset_peak();
    let started = Instant::now();
    let made = match parent {
        None => {
            m.create_snapshot(store, CreateOptions::described("full"))
                .await
        }
        Some(p) => {
            m.create_incremental_snapshot(store, p.id.as_str(), None, CreateOptions::default())
                .await
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:").saturating_sub(before) as f64 / 1024.0;
    Ok((made.map_err(|e| e.to_string())?, secs, peak))
}

/// Restores `snap` into a new store: the seconds it took, the store, and the peak memory
/// it added beyond the restored data (MiB).
async fn timed_restore(
    m: &SnapshotManager,
    snap: &SnapshotMetadata,
) -> Result<(f64, InMemoryStorage, f64), String> {
    let target = InMemoryStorage::new();
    let before = status_kib("VmRSS:");
    reset_peak();
    let started = Instant::now();
    m.restore_snapshot(&target, snap.id.as_str(), &RestoreOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:").saturating_sub(before.max(after)) as f64 / 1024.0;
    Ok((secs, target, peak))
}

/// Checks that `back` holds exactly what `store` holds.
async fn same_content(
    back: &InMemoryStorage,
    store: &InMemoryStorage,
    what: &str,
) -> Result<(), String> {
    let e = |e: dakera_snapshot::Error| e.to_string();
    for ns in store.list_namespaces().await.map_err(e)? {
        if back.get_all(&ns).await.map_err(e)? != store.get_all(&ns).await.map_err(e)? {
            return Err(format!("{what}: namespace {ns} differs after restore"));
        }
    }
    Ok(())
}

/// Updates, inserts and deletes 0.1% of every namespace's vectors each, at pseudo-random
/// places (new vectors are embeddings like the rest, with random UUID-like ids, which sort
/// before the generated ones); returns how many vectors changed.
async fn churn(store: &InMemoryStorage, dim: usize, round: u64) -> dakera_snapshot::Result<usize> {
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut changed = 0;
    for ns in store.list_namespaces().await? {
        let all = store.get_all(&ns).await?;
        let n = (all.len() / 1000).max(1);
        let mut upserts = Vec::new();
        for _ in 0..n {
            let mut v = all[next() as usize % all.len()].clone();
            v.values[0] += 0.25;
            upserts.push(v);
            let id = format!("{:016x}-{:016x}", next(), next());
            upserts.push(Vector::new(id, support::embedding(next(), dim)));
        }
        let gone: Vec<String> = (0..n)
            .map(|_| all[next() as usize % all.len()].id.clone())
            .collect();
        store.upsert(&ns, upserts).await?;
        store.delete(&ns, &gone).await?;
        changed += 3 * n;
    }
    Ok(changed)
}
