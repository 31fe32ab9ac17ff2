//! Shared by the examples: a deterministic generator of realistic vector data, and a store
//! dump for comparisons. Not an example itself.
#![allow(dead_code)]

use dakera_snapshot::{InMemoryStorage, Vector, VectorStorage};
use serde_json::json;
use std::collections::BTreeMap;

/// splitmix64's output function: nearby inputs give unrelated outputs.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A normalized pseudo-random embedding, the same for the same seed.
pub fn embedding(seed: u64, dim: usize) -> Vec<f32> {
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

/// `n` vectors for namespace `ns` with ~100 bytes of metadata each; every tenth has a TTL.
pub fn vectors(ns: &str, n: usize, dim: usize, seed: u64) -> Vec<Vector> {
    // Mixed (splitmix64's finalizer), so namespaces whose names differ in the last digit
    // get seeds far apart: unmixed, `ns13`'s vectors were `ns12`'s shifted by one, and zstd
    // found them again across thousands of small namespaces.
    let folded = ns
        .bytes()
        .fold(seed, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let ns_seed = mix(folded);
    (0..n)
        .map(|i| {
            let v = Vector::new(format!("{ns}-{i:08}"), embedding(ns_seed.wrapping_add(i as u64), dim))
                .with_metadata(json!({"source": ns, "chunk": i, "text": format!("passage {i} of {ns}, generated for the example")}));
            if i % 10 == 0 {
                v.with_ttl(365 * 86_400)
            } else {
                v
            }
        })
        .collect()
}

/// Fills `store` with `namespaces` namespaces (`ns0`, `ns1`, ...) of `n` vectors each.
pub async fn fill(
    store: &InMemoryStorage,
    namespaces: usize,
    n: usize,
    dim: usize,
    seed: u64,
) -> dakera_snapshot::Result<()> {
    for k in 0..namespaces {
        let ns = format!("ns{k}");
        store.ensure_namespace(&ns).await?;
        for chunk in vectors(&ns, n, dim, seed).chunks(10_000) {
            store.upsert(&ns, chunk.to_vec()).await?;
        }
    }
    Ok(())
}

/// Every namespace with its vectors, for equality checks.
pub async fn dump(s: &InMemoryStorage) -> dakera_snapshot::Result<BTreeMap<String, Vec<Vector>>> {
    let mut out = BTreeMap::new();
    for ns in s.list_namespaces().await? {
        out.insert(ns.clone(), s.get_all(&ns).await?);
    }
    Ok(out)
}

/// Value of `--name` in `args`, parsed.
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|_| format!("{name}: not a valid value")),
    }
}

/// Megabytes, for printing.
pub fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}
