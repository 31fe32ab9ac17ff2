//! The `zstd` phase: what a user might do instead of a snapshot, export the raw bytes and
//! pipe them through `zstd -1 -T2`, timed on the same bytes the benchmark counts as raw.

use super::support;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The command line measured.
pub const COMMAND: &str = "zstd -1 -T2";

/// True if `zstd` runs on this machine.
pub fn available() -> bool {
    Command::new("zstd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes the raw bytes of the generated data (each vector's id, f32 values little-endian
/// and metadata JSON, namespace by namespace) to `work/raw.bin`, untimed; then times `zstd
/// -1 -T2` compressing that file into `work/raw.bin.zst` (the file is in the page cache, as
/// the store is in memory for a create).
pub fn phase(namespaces: usize, per_ns: usize, dim: usize, work: &Path) -> Result<Value, String> {
    let e = |e: std::io::Error| e.to_string();
    let raw = work.join("raw.bin");
    let out = work.join("raw.bin.zst");
    write_raw(namespaces, per_ns, dim, &raw).map_err(e)?;
    let started = Instant::now();
    let status = Command::new("zstd")
        .args(["-1", "-T2", "-q", "-c"])
        .arg(&raw)
        .stdout(File::create(&out).map_err(e)?)
        .status()
        .map_err(e)?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("{COMMAND} failed: {status}"));
    }
    let bytes = std::fs::metadata(&out).map_err(e)?.len();
    std::fs::remove_file(&raw).map_err(e)?;
    std::fs::remove_file(&out).map_err(e)?;
    Ok(json!({ "secs": secs, "blob_bytes": bytes, "peak_extra_mib": 0.0 }))
}

fn write_raw(namespaces: usize, per_ns: usize, dim: usize, path: &Path) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for k in 0..namespaces {
        for v in support::vectors(&format!("ns{k}"), per_ns, dim, 1) {
            w.write_all(v.id.as_bytes())?;
            for x in &v.values {
                w.write_all(&x.to_le_bytes())?;
            }
            if let Some(m) = &v.metadata {
                serde_json::to_writer(&mut w, m)?;
            }
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}
