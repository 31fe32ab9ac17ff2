//! bench: measures snapshot create and restore against the naive JSON baseline, in one run,
//! on the same generated data.
//!
//! ```text
//! cargo run --release --example bench -- --vectors 50000 --dim 768 [--namespaces 2] [--sink URL]
//! ```
//!
//! Data: normalized random embeddings, ids, ~100 bytes of JSON metadata per vector (every
//! tenth with a TTL). Measured, each in its own child process of this binary:
//!
//! - `create` / `restore`: our pipeline, default settings, into `--sink` (default: a local
//!   temporary directory);
//! - `create-1t` / `restore-1t`: the same pipeline forced onto one CPU (the child pins itself
//!   to a single core with `sched_setaffinity` and uses `parallelism = 1`);
//! - `baseline-create` / `baseline-restore`: the original module's way: `get_all` of every
//!   namespace, `serde_json::to_writer` of the whole snapshot into a `BufWriter<File>`; restore
//!   with `serde_json::from_reader(BufReader<File>)`, then upsert.
//!
//! Memory: each child generates the store (or, for restore, starts empty), then resets its
//! peak-RSS counter (`echo 5 > /proc/self/clear_refs`), runs the phase and reads `VmHWM`.
//! Create reports the peak above the RSS before the phase (the store is already in memory).
//! Restore reports the peak above the larger of the RSS before and after the phase (after a
//! restore, the restored store is "data already in memory"). Linux only.
//!
//! - `zstd`: what a user might do instead, the same raw bytes written to a file and
//!   compressed by `zstd -1 -T2` (skipped, with a note, when zstd is not installed).
//!
//! The phases run in `--repeat` interleaved rounds (default 3): create, restore, the JSON
//! module's create and restore, one thread, zstd, then the next round. Each ratio is taken
//! within a round, from runs moments apart, and the median of the rounds is reported with
//! its range; each phase's median, fastest and slowest time, and its largest peak. MB/s are
//! counted on raw bytes (f32 values + ids + metadata JSON). The last line of output is one
//! JSON object with every figure (speeds and ratios are the medians). Before each create, the
//! repository's snapshots are deleted (`forget`, untimed): the JSON module and zstd overwrite
//! or delete their output each round, and every phase should write into page cache on the
//! same terms (`forget_all`).
//!
//! `--part-mib M` and `--uploads N` set an object storage sink's multipart part size and
//! parts in flight (memory against throughput; the defaults otherwise). On object storage every
//! process pins glibc's mmap threshold as the CLI does (`dakera_snapshot::allocator`);
//! `--dynamic-mmap-threshold` leaves it as glibc has it, to measure the difference.
//!
//! `--callgrind` counts instructions instead (valgrind's callgrind; use a small size such as
//! `--vectors 5000`): the single-threaded create and restore and the JSON module's, each
//! less a child that only sets up the same data, per raw byte.
//!
//! `--incremental on [--chain N] [--dedup-chunk-kib K]` measures chunk-level dedup instead: a
//! full snapshot; 0.1% of the vectors updated, 0.1% inserted, 0.1% deleted, at random places;
//! an incremental (blob size, create time and restore speed against the full's); then more
//! such rounds up to a chain of N incrementals (default 30): the repository's size against
//! one full, and the restore of the last against the full's, each checked against the store.

mod callgrind;
mod encrypted;
mod incremental;
mod rounds;
#[path = "../support/mod.rs"]
mod support;
mod zstd;

use dakera_snapshot::{
    CreateOptions, InMemoryStorage, RestoreOptions, SinkOptions, SnapshotConfig, SnapshotManager,
    Vector, VectorStorage,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As the CLI runs (dakera_snapshot::allocator), unless asked to measure glibc's default.
    let sink = support::flag(&args, "--sink", String::new()).unwrap_or_default();
    let pinned =
        !dynamic_threshold(&args) && dakera_snapshot::allocator::pin_mmap_threshold_for(&sink);
    let result = match args.iter().position(|a| a == "--phase") {
        Some(i) => phase(&args[i + 1], &args),
        None => parent(&args, pinned),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Params {
    vectors: usize,
    dim: usize,
    namespaces: usize,
}

fn params(args: &[String]) -> Result<Params, String> {
    Ok(Params {
        vectors: support::flag(args, "--vectors", 50_000usize)?,
        dim: support::flag(args, "--dim", 768usize)?,
        namespaces: support::flag(args, "--namespaces", 2usize)?,
    })
}

/// Vectors per namespace.
fn per_ns(p: &Params) -> usize {
    p.vectors.div_ceil(p.namespaces)
}

fn raw_bytes(p: &Params) -> u64 {
    (0..p.namespaces)
        .map(|k| {
            support::vectors(&format!("ns{k}"), per_ns(p), p.dim, 1)
                .iter()
                .map(|v| {
                    (4 * v.values.len() + v.id.len()) as u64
                        + v.metadata
                            .as_ref()
                            .map_or(0, |m| serde_json::to_vec(m).unwrap().len() as u64)
                })
                .sum::<u64>()
        })
        .sum()
}

/// `pinned`: whether this process (and so each phase's child) pinned glibc's mmap threshold.
fn parent(args: &[String], pinned: bool) -> Result<(), String> {
    let p = params(args)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sink = match support::flag(args, "--sink", String::new())? {
        s if s.is_empty() => format!("file://{}/repo", work.path().display()),
        s => s,
    };
    let raw = raw_bytes(&p);
    let repeat = support::flag(args, "--repeat", 3usize)?.max(1);
    println!(
        "bench: {} vectors x {} dims in {} namespaces, {:.1} MB raw, sink {}, level {}, shuffle {}, {} rounds",
        p.vectors,
        p.dim,
        p.namespaces,
        raw as f64 / 1e6,
        sink,
        support::flag(args, "--level", "fast".to_string())?,
        support::flag(args, "--shuffle", "on".to_string())?,
        repeat,
    );
    let runner = rounds::Runner {
        exe,
        common: common_args(args, &p, &sink, work.path())?,
    };
    if support::flag(args, "--incremental", "off".to_string())? == "on" {
        let chain = support::flag(args, "--chain", 30usize)?;
        let v = runner.run("incremental", &["--chain".into(), chain.to_string()])?;
        println!("{v}");
        return Ok(());
    }
    if args.iter().any(|a| a == "--callgrind") {
        let counts = callgrind::measure(&runner, raw, work.path())?;
        println!("{}", json!({ "raw_bytes": raw, "instructions": counts }));
        return Ok(());
    }
    let encrypt = args.iter().any(|a| a == "--encrypt");
    let open_secs = if encrypt {
        runner.run("encrypted-init", &[])?["open_secs"].as_f64()
    } else {
        None
    };
    let all = rounds::run_rounds(&runner, repeat, encrypt)?;
    let mut summary = rounds::summarize(&all, raw);
    let mb = raw as f64 / 1e6;
    // From the medians `summarize` computed (NaN for a phase that did not run).
    let medians = summary["phases"].clone();
    let mbs = |phase: &str| mb / medians[phase]["median"].as_f64().unwrap_or(f64::NAN);
    let blob = rounds::last_of(&all, "create", "blob_bytes")
        .as_u64()
        .unwrap_or(0);
    let baseline_bytes = rounds::last_of(&all, "baseline-create", "blob_bytes")
        .as_u64()
        .unwrap_or(0);
    let zstd_bytes = rounds::last_of(&all, "zstd", "blob_bytes").as_u64();
    let fields = json!({
        "vectors": p.vectors,
        "dim": p.dim,
        "namespaces": p.namespaces,
        "mmap_threshold_pinned": pinned,
        "sink": sink,
        "repeat": repeat,
        "raw_bytes": raw,
        "blob_bytes": blob,
        "sidecar_bytes": rounds::last_of(&all, "create", "sidecar_bytes"),
        "baseline_bytes": baseline_bytes,
        "blob_pct_of_raw": 100.0 * blob as f64 / raw as f64,
        "blob_pct_of_baseline": 100.0 * blob as f64 / baseline_bytes as f64,
        "create_mb_s": mbs("create"),
        "restore_mb_s": mbs("restore"),
        "single_thread_create_mb_s": mbs("create-1t"),
        "single_thread_restore_mb_s": mbs("restore-1t"),
        "baseline_create_mb_s": mbs("baseline-create"),
        "baseline_restore_mb_s": mbs("baseline-restore"),
        "zstd_command": zstd::COMMAND,
        "zstd_mb_s": zstd_bytes.map(|_| mbs("zstd")),
        "zstd_bytes": zstd_bytes,
        "blob_vs_zstd_bytes": zstd_bytes.map(|z| blob as f64 / z as f64),
        "encrypted_create_mb_s": encrypt.then(|| mbs("encrypted-create")),
        "encrypted_restore_mb_s": encrypt.then(|| mbs("encrypted-restore")),
        "encrypted_blob_bytes": rounds::last_of(&all, "encrypted-create", "blob_bytes"),
        "encrypted_blob_vs_blob": rounds::last_of(&all, "encrypted-create", "blob_bytes").as_u64().map(|e| e as f64 / blob as f64),
        "encrypted_open_secs": open_secs,
        "create_peak_extra_mib": rounds::max_of(&all, "create", "peak_extra_mib"),
        "restore_peak_extra_mib": rounds::max_of(&all, "restore", "peak_extra_mib"),
        "baseline_create_peak_extra_mib": rounds::max_of(&all, "baseline-create", "peak_extra_mib"),
        "baseline_restore_peak_extra_mib": rounds::max_of(&all, "baseline-restore", "peak_extra_mib"),
    });
    summary.extend(fields.as_object().cloned().unwrap_or_default());
    print_ratios(&summary);
    println!("{}", Value::Object(summary));
    Ok(())
}

/// Object storage upload tuning from `--part-mib` and `--uploads` (the sink's defaults
/// when absent).
fn sink_options(args: &[String]) -> Result<SinkOptions, String> {
    let mut o = SinkOptions::new();
    let part = support::flag(args, "--part-mib", 0usize)?;
    if part > 0 {
        o = o.with_part_size(part << 20);
    }
    let uploads = support::flag(args, "--uploads", 0usize)?;
    if uploads > 0 {
        o = o.with_max_concurrency(uploads);
    }
    Ok(o)
}

/// The arguments every phase child gets.
fn common_args(
    args: &[String],
    p: &Params,
    sink: &str,
    work: &std::path::Path,
) -> Result<Vec<String>, String> {
    Ok(vec![
        "--vectors".to_string(),
        p.vectors.to_string(),
        "--dim".into(),
        p.dim.to_string(),
        "--namespaces".into(),
        p.namespaces.to_string(),
        "--sink".into(),
        sink.to_string(),
        "--work".into(),
        work.display().to_string(),
        "--level".into(),
        support::flag(args, "--level", "fast".to_string())?,
        "--shuffle".into(),
        support::flag(args, "--shuffle", "on".to_string())?,
        "--dedup-chunk-kib".into(),
        support::flag(args, "--dedup-chunk-kib", 16usize)?.to_string(),
        "--part-mib".into(),
        support::flag(args, "--part-mib", 0usize)?.to_string(),
        "--uploads".into(),
        support::flag(args, "--uploads", 0usize)?.to_string(),
    ]
    .into_iter()
    .chain(dynamic_threshold(args).then(|| "--dynamic-mmap-threshold".to_string()))
    .collect())
}

/// `--dynamic-mmap-threshold`: leave glibc's mmap threshold dynamic in every phase, to
/// measure what pinning it (as the CLI does) saves.
fn dynamic_threshold(args: &[String]) -> bool {
    args.iter().any(|a| a == "--dynamic-mmap-threshold")
}

/// The one-line verdict: medians of the rounds' ratios, with their ranges.
fn print_ratios(s: &serde_json::Map<String, Value>) {
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    let range = |k: &str| {
        let r = &s["ratio_spread"][k];
        match (r["min"].as_f64(), r["max"].as_f64()) {
            (Some(a), Some(b)) => format!(" ({a:.2}–{b:.2})"),
            _ => String::new(),
        }
    };
    let ratio = |k: &str, what: &str| f(k).map(|x| format!("{k}: {x:.2}x{}{what}", range(k)));
    let parts: Vec<String> = [
        ratio("create_vs_baseline", ""),
        ratio("restore_vs_baseline", ""),
        ratio("create_vs_single_thread", ""),
        ratio("create_vs_zstd", &format!(" ({})", zstd::COMMAND)),
        ratio("encrypted_create_vs_create", ""),
        ratio("encrypted_restore_vs_restore", ""),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!("ratios (median of rounds): {}", parts.join(", "));
    if let (Some(busy), Some(cpu)) = (f("create_cores_busy"), f("create_cpu_vs_single_thread")) {
        println!(
            "create vs one thread, its factors (median of rounds): {busy:.2} cores busy{}, {cpu:.3}x the CPU time of one thread{}",
            range("create_cores_busy"),
            range("create_cpu_vs_single_thread")
        );
    }
    let zstd_size = f("blob_vs_zstd_bytes")
        .map(|x| format!(", {x:.3}x the bytes of {}", zstd::COMMAND))
        .unwrap_or_default();
    println!(
        "blob {:.1}% of raw, {:.1}% of baseline JSON{zstd_size}",
        f("blob_pct_of_raw").unwrap_or(0.0),
        f("blob_pct_of_baseline").unwrap_or(0.0),
    );
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user and system) this process has used, in seconds: beside the wall time of
/// a phase, it says how busy the cores were (two full cores: twice the wall time).
fn cpu_secs() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn pin_to_one_cpu() {
    #[cfg(target_os = "linux")]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn phase(name: &str, args: &[String]) -> Result<(), String> {
    let p = params(args)?;
    let sink = support::flag(args, "--sink", String::new())?;
    let work = std::path::PathBuf::from(support::flag(args, "--work", String::new())?);
    let single = name.ends_with("-1t");
    if single {
        pin_to_one_cpu();
    }
    let rt = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| e.to_string())?;
    let level = support::flag(args, "--level", "fast".to_string())?;
    let mut config = SnapshotConfig::default()
        .with_max_snapshots(0)
        .with_dedup_chunk_size(support::flag(args, "--dedup-chunk-kib", 16usize)? << 10)
        .with_parallelism(if single { 1 } else { 0 })
        .with_shuffle(support::flag(args, "--shuffle", "on".to_string())? == "on");
    config = match level.as_str() {
        "none" => config.with_compression(false),
        other => config.with_compression_level(
            serde_json::from_value(json!(other))
                .map_err(|_| format!("--level: {other} is not fast, default, best or none"))?,
        ),
    };
    let out = rt.block_on(async move {
        match name {
            "create" | "create-1t" | "baseline-create" | "encrypted-create" => {
                let store = InMemoryStorage::new();
                support::fill(&store, p.namespaces, per_ns(&p), p.dim, 1).await.map_err(|e| e.to_string())?;
                let m = open_manager(name, &sink, args, config).await?;
                let before = status_kib("VmRSS:");
                reset_peak();
                let started = Instant::now();
                let cpu_before = cpu_secs();
                let (id, blob_bytes, sidecar_bytes) = if name == "baseline-create" {
                    let mut all: BTreeMap<String, Vec<Vector>> = BTreeMap::new();
                    for ns in store.list_namespaces().await.map_err(|e| e.to_string())? {
                        let vs = store.get_all(&ns).await.map_err(|e| e.to_string())?;
                        all.insert(ns, vs);
                    }
                    let path = work.join("baseline.json");
                    let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
                    let mut w = BufWriter::new(f);
                    serde_json::to_writer(&mut w, &all).map_err(|e| e.to_string())?;
                    let f = w.into_inner().map_err(|e| e.to_string())?;
                    f.sync_all().map_err(|e| e.to_string())?;
                    (String::new(), std::fs::metadata(&path).map_err(|e| e.to_string())?.len(), 0)
                } else {
                    let m = m.ok_or("no manager")?;
                    let s = m.create_snapshot(&store, CreateOptions::described(name)).await.map_err(|e| e.to_string())?;
                    (s.id.to_string(), s.size_bytes, s.to_json().len())
                };
                let secs = started.elapsed().as_secs_f64();
                let cpu = cpu_secs() - cpu_before;
                let peak = status_kib("VmHWM:");
                Ok::<Value, String>(json!({
                    "secs": secs, "cpu_secs": cpu, "snapshot_id": id, "blob_bytes": blob_bytes, "sidecar_bytes": sidecar_bytes,
                    "peak_extra_mib": peak.saturating_sub(before) as f64 / 1024.0,
                }))
            }
            "restore" | "restore-1t" | "baseline-restore" | "encrypted-restore" => {
                let store = InMemoryStorage::new();
                let m = open_manager(name, &sink, args, config).await?;
                let before = status_kib("VmRSS:");
                reset_peak();
                let started = Instant::now();
                if name == "baseline-restore" {
                    let f = std::fs::File::open(work.join("baseline.json")).map_err(|e| e.to_string())?;
                    let all: BTreeMap<String, Vec<Vector>> = serde_json::from_reader(BufReader::new(f)).map_err(|e| e.to_string())?;
                    for (ns, vs) in all {
                        store.ensure_namespace(&ns).await.map_err(|e| e.to_string())?;
                        store.upsert(&ns, vs).await.map_err(|e| e.to_string())?;
                    }
                } else {
                    let id = support::flag(args, "--id", String::new())?;
                    let m = m.ok_or("no manager")?;
                    m.restore_snapshot(&store, &id, &RestoreOptions::new()).await.map_err(|e| e.to_string())?;
                }
                let secs = started.elapsed().as_secs_f64();
                let peak = status_kib("VmHWM:");
                let after = status_kib("VmRSS:");
                if args.iter().any(|a| a == "--no-check") {
                    return Ok(json!({ "secs": secs, "peak_extra_mib": peak.saturating_sub(before.max(after)) as f64 / 1024.0 }));
                }
                // Correctness: the restored store holds exactly the generated data.
                let expected = InMemoryStorage::new();
                support::fill(&expected, p.namespaces, per_ns(&p), p.dim, 1).await.map_err(|e| e.to_string())?;
                for ns in expected.list_namespaces().await.map_err(|e| e.to_string())? {
                    let strip = |vs: Vec<Vector>| vs.into_iter().map(|mut v| { v.expires_at = None; v }).collect::<Vec<_>>();
                    if strip(store.get_all(&ns).await.map_err(|e| e.to_string())?) != strip(expected.get_all(&ns).await.map_err(|e| e.to_string())?) {
                        return Err(format!("{name}: namespace {ns} differs after restore"));
                    }
                }
                Ok(json!({ "secs": secs, "peak_extra_mib": peak.saturating_sub(before.max(after)) as f64 / 1024.0 }))
            }
            "forget" | "encrypted-forget" => {
                let m = open_manager(name, &sink, args, config).await?.ok_or("no manager")?;
                forget_all(&m).await
            }
            "zstd" => zstd::phase(p.namespaces, per_ns(&p), p.dim, &work),
            "encrypted-init" => encrypted::init(&sink, &sink_options(args)?).await,
            // What the measured phases do before their timer starts, for `--callgrind`.
            "setup-create" => {
                let store = InMemoryStorage::new();
                support::fill(&store, p.namespaces, per_ns(&p), p.dim, 1).await.map_err(|e| e.to_string())?;
                Ok(json!({ "secs": 0.0 }))
            }
            "setup-restore" => Ok(json!({ "secs": 0.0 })),
            "incremental" => {
                let chain = support::flag(args, "--chain", 30usize)?.max(1);
                incremental::incremental_phase(&store_params(&p), chain, &sink, config).await
            }
            other => Err(format!("unknown phase {other}")),
        }
    })?;
    println!("{out}");
    Ok(())
}

/// Deletes every snapshot in the repository `m` opens, so a create writes into page cache
/// that was just released, as the JSON module (which truncates its file) and zstd (which
/// deletes its output) do. On this VM, writing into pages never used before costs ten
/// times more (`dd` of 128 MiB: 350 MB/s against 4.4 GB/s), and a repository that keeps
/// every round's blob would give only the creates that cost.
async fn forget_all(m: &SnapshotManager) -> Result<Value, String> {
    let snapshots = m.list_snapshots().await.map_err(|e| e.to_string())?;
    for s in &snapshots {
        m.delete_snapshot(s.id.as_str(), true)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(json!({ "secs": 0.0, "deleted": snapshots.len() }))
}

/// The manager a create or restore phase measures (none for the JSON baseline): for the
/// encrypted phases, of the encrypted repository and already opened.
async fn open_manager(
    name: &str,
    sink: &str,
    args: &[String],
    config: SnapshotConfig,
) -> Result<Option<SnapshotManager>, String> {
    let options = sink_options(args)?;
    match name {
        n if n.starts_with("baseline-") => Ok(None),
        n if n.starts_with("encrypted-") => {
            encrypted::opened(sink, &options, config).await.map(Some)
        }
        _ => SnapshotManager::from_url(sink, &options, config)
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

fn store_params(p: &Params) -> (usize, usize, usize) {
    (p.namespaces, per_ns(p), p.dim)
}
