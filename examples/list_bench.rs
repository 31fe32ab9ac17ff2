//! list_bench: how long `list` takes on a repository of many snapshots, with and without the
//! sidecar cache, in interleaved rounds.
//!
//! ```text
//! bash localstack/start.sh moto && export AWS_ENDPOINT=... (the line start.sh prints)
//! cargo run --release --example list_bench -- --sink s3://dakera/list-1000 --snapshots 1000
//! ```
//!
//! The repository is built with the library: `--snapshots` snapshots of a store of
//! `--namespaces` namespaces (default 1) of one vector each, one vector changed between two
//! snapshots, are created in a local folder (a new repository: blobs under `data/`), then its
//! objects are uploaded to `--sink` as they are (32 at a time), so
//! building 10,000 costs uploads, not 10,000 creates against the server. An existing
//! repository at `--sink` that already holds that many snapshots is reused. `--layout beside`
//! uploads the same objects as a repository made before config version 2 holds them (blobs
//! beside the sidecars under `snapshots/`, no config), to compare the two layouts.
//!
//! Each of `--rounds` rounds (default 3) lists three ways, one after the other: without a
//! cache (one GET per sidecar, 16 at a time), with an empty cache (the first list on a new
//! machine: every sidecar fetched and filed), and with that cache warm (one listing, no
//! sidecar read). Medians and the spread over the rounds are printed; the last line is one
//! JSON object with every figure.

#[path = "support/mod.rs"]
mod support;

use dakera_snapshot::{
    sink_from_url, CreateOptions, InMemoryStorage, PutMode, SidecarCache, SinkExt, SinkOptions,
    SnapshotConfig, SnapshotManager, SnapshotSink, Vector, VectorStorage,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("list_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<(), String> {
    let url = support::flag(args, "--sink", String::new())?;
    if url.is_empty() {
        return Err("--sink URL is required (an S3 repository, e.g. on moto)".into());
    }
    let n = support::flag(args, "--snapshots", 1000usize)?;
    let namespaces = support::flag(args, "--namespaces", 1usize)?.max(1);
    let rounds = support::flag(args, "--rounds", 3usize)?.max(1);
    let layout: Layout = support::flag(args, "--layout", Layout::Data)?;
    let config = SnapshotConfig::default().with_max_snapshots(0);
    let sink = sink_from_url(&url, &SinkOptions::new()).map_err(|e| e.to_string())?;
    let plain = SnapshotManager::new(sink.clone(), config.clone()).map_err(|e| e.to_string())?;
    let have = plain
        .list_snapshots()
        .await
        .map_err(|e| e.to_string())?
        .len();
    if have != n {
        if have != 0 {
            return Err(format!(
                "{url} holds {have} snapshots, not {n}: use an empty prefix"
            ));
        }
        build(sink.clone(), n, namespaces, layout).await?;
    }
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        let cache = SidecarCache::new(work.path().join(format!("cache-{round}")));
        let cached = SnapshotManager::new(sink.clone(), config.clone())
            .map_err(|e| e.to_string())?
            .with_sidecar_cache(cache);
        for (k, m) in [&plain, &cached, &cached].into_iter().enumerate() {
            let started = Instant::now();
            let listed = m.list_snapshots().await.map_err(|e| e.to_string())?;
            times[k].push(started.elapsed().as_secs_f64());
            if listed.len() != n {
                return Err(format!("listed {} snapshots, expected {n}", listed.len()));
            }
        }
        println!(
            "  round {}: uncached {:.3} s, empty cache {:.3} s, warm cache {:.3} s",
            round + 1,
            times[0][round],
            times[1][round],
            times[2][round]
        );
    }
    let [uncached, cold, warm] = times.map(|t| summary(&t));
    println!(
        "list of {n} snapshots, median (min-max) of {rounds} rounds: uncached {}, empty cache {}, warm cache {}",
        uncached.1, cold.1, warm.1
    );
    println!(
        "{}",
        json!({
            "snapshots": n, "namespaces": namespaces, "sink": url, "rounds": rounds, "layout": format!("{layout:?}").to_lowercase(),
            "list_uncached_s": uncached.0, "list_cold_cache_s": cold.0, "list_warm_cache_s": warm.0,
            "warm_vs_uncached": warm.0 / uncached.0,
        })
    );
    Ok(())
}

/// The median, and a printed "median (min-max)".
fn summary(times: &[f64]) -> (f64, String) {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let median = t[t.len() / 2];
    let text = format!("{median:.3} s ({:.3}-{:.3})", t[0], t[t.len() - 1]);
    (median, text)
}

/// Where the built repository keeps its blobs (`--layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `data` (default): as this version makes a repository, blobs under `data/`.
    Data,
    /// `beside`: as repositories made before config version 2, blobs beside the sidecars
    /// under `snapshots/` and no config (the same objects, uploaded under those keys).
    Beside,
}

impl std::str::FromStr for Layout {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "data" => Ok(Layout::Data),
            "beside" => Ok(Layout::Beside),
            _ => Err(()),
        }
    }
}

impl Layout {
    /// The key an object of the locally built (new-layout) repository gets in `--sink`.
    fn upload_key(self, key: &str) -> Option<String> {
        match (self, key.strip_prefix("data/")) {
            (Layout::Beside, _) if key == "config.json" => None,
            (Layout::Beside, Some(blob)) => Some(format!("snapshots/{blob}")),
            _ => Some(key.to_string()),
        }
    }
}

/// Creates `n` snapshots of a store of `namespaces` one-vector namespaces in a local folder,
/// one vector changed before each, then uploads every object of it, laid out as `layout`.
async fn build(
    sink: Arc<dyn SnapshotSink>,
    n: usize,
    namespaces: usize,
    layout: Layout,
) -> Result<(), String> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let local = SnapshotManager::local(dir.path(), SnapshotConfig::default().with_max_snapshots(0))
        .map_err(|e| e.to_string())?;
    let store = InMemoryStorage::new();
    let name = |k: usize| format!("ns{:06}", k % namespaces);
    for k in 0..namespaces {
        store
            .ensure_namespace(&name(k))
            .await
            .map_err(|e| e.to_string())?;
        let v = Vector::new("v", support::embedding(k as u64, 8));
        store
            .upsert(&name(k), vec![v])
            .await
            .map_err(|e| e.to_string())?;
    }
    for k in 0..n {
        let v = Vector::new(format!("v{k}"), support::embedding(k as u64, 8));
        store
            .upsert(&name(k), vec![v])
            .await
            .map_err(|e| e.to_string())?;
        local
            .create_snapshot(&store, CreateOptions::described("list bench"))
            .await
            .map_err(|e| e.to_string())?;
    }
    let key = |k: &str| dakera_snapshot::paths::Key::parse(k).map_err(|e| e.to_string());
    let mut keys = vec![key("config.json")?];
    for dir in ["snapshots", "data"] {
        let listed = local
            .sink()
            .list_all(&key(dir)?)
            .await
            .map_err(|e| e.to_string())?;
        keys.extend(listed.into_iter().map(|o| o.key));
    }
    let from = local.sink().clone();
    let moves: Vec<_> = keys
        .into_iter()
        .filter_map(|k| Some((layout.upload_key(k.as_str())?, k)))
        .map(|(to, from)| Ok((from, key(&to)?)))
        .collect::<Result<_, String>>()?;
    futures::stream::iter(moves)
        .map(|(from_key, to_key)| {
            let (from, to) = (from.clone(), sink.clone());
            async move {
                let bytes = from.get_bytes(&from_key, None).await?;
                to.put(&to_key, bytes, PutMode::Overwrite).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "built {n} snapshots ({} objects) in {:.1} s",
        2 * n,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
