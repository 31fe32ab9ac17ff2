//! The benchmark example runs end to end on tiny data and its last line is one JSON object
//! with every figure issues 4, 15 and 16 ask for. Timings are reported, never asserted.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn bench_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bench = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("bench");
    assert!(
        bench.exists(),
        "{} is missing: `cargo test` builds the examples",
        bench.display()
    );
    bench
}

/// True if `tool --version` runs.
fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The bench's last line of output, parsed, after checking it succeeded.
fn last_line(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bench_exe()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

#[test]
fn bench_prints_every_required_figure_as_its_last_line() {
    let v = last_line(&["--vectors", "600", "--dim", "16", "--repeat", "2"]);
    let last = v.to_string();
    for key in [
        "raw_bytes",
        "blob_bytes",
        "sidecar_bytes",
        "baseline_bytes",
        "create_mb_s",
        "restore_mb_s",
        "single_thread_create_mb_s",
        "baseline_create_mb_s",
        "baseline_restore_mb_s",
        "create_peak_extra_mib",
        "restore_peak_extra_mib",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {last}"));
        assert!(x >= 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert!(v["create_mb_s"].as_f64().unwrap() > 0.0);
    // A local directory: glibc's mmap threshold is left alone (pinned for object storage).
    assert_eq!(v["mmap_threshold_pinned"], false, "{v}");
    // The figures are consistent with each other (sizes, not speeds).
    let (raw, blob, json) = (
        v["raw_bytes"].as_f64().unwrap(),
        v["blob_bytes"].as_f64().unwrap(),
        v["baseline_bytes"].as_f64().unwrap(),
    );
    assert!(blob > 0.0 && blob < json, "blob {blob} vs JSON {json}");
    let sidecar = v["sidecar_bytes"].as_f64().unwrap();
    assert!(
        sidecar > 100.0 && sidecar < 16_384.0,
        "sidecar {sidecar} bytes"
    );
    assert!(json > raw, "JSON text is larger than the raw binary data");
    // Rounds: every phase and ratio has a median within its range.
    for phase in [
        "create",
        "restore",
        "create-1t",
        "restore-1t",
        "baseline-create",
    ] {
        let p = &v["phases"][phase];
        let (lo, mid, hi) = (p["min"].as_f64(), p["median"].as_f64(), p["max"].as_f64());
        assert!(lo <= mid && mid <= hi && lo > Some(0.0), "{phase}: {p}");
    }
    let r = &v["ratio_spread"]["create_vs_baseline"];
    assert!(r["min"].as_f64() <= r["median"].as_f64() && r["median"].as_f64() <= r["max"].as_f64());
    assert_eq!(v["create_vs_baseline"], r["median"]);
    // zstd: measured when installed, null (not zero) when not.
    if installed("zstd") {
        let z = v["zstd_bytes"]
            .as_f64()
            .unwrap_or_else(|| panic!("zstd_bytes in {last}"));
        assert!(z > 0.0 && z < raw, "zstd output {z} of {raw} raw bytes");
        assert!(v["zstd_mb_s"].as_f64().unwrap() > 0.0);
        assert!(v["create_vs_zstd"].as_f64().unwrap() > 0.0);
    } else {
        eprintln!("zstd is not installed: checking that its figures are null");
        assert!(
            v["zstd_bytes"].is_null() && v["zstd_mb_s"].is_null(),
            "{last}"
        );
    }
}

#[test]
fn bench_encrypt_adds_the_encrypted_phases_and_figures() {
    let v = last_line(&[
        "--vectors",
        "600",
        "--dim",
        "16",
        "--repeat",
        "2",
        "--encrypt",
    ]);
    let last = v.to_string();
    for key in [
        "encrypted_create_mb_s",
        "encrypted_restore_mb_s",
        "encrypted_blob_bytes",
        "encrypted_blob_vs_blob",
        "encrypted_open_secs",
        "encrypted_create_vs_create",
        "encrypted_restore_vs_restore",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {last}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    // Sealing adds 28 bytes per chunk: a little more than the plain blob, never less.
    let ratio = v["encrypted_blob_vs_blob"].as_f64().unwrap();
    assert!(
        ratio > 1.0 && ratio < 1.2,
        "encrypted blob {ratio}x the plain one"
    );
    // Without the flag the fields are there and null.
    let plain = last_line(&["--vectors", "300", "--dim", "8", "--repeat", "1"]);
    assert!(plain["encrypted_create_mb_s"].is_null(), "{plain}");
}

#[test]
fn callgrind_counts_instructions_of_each_single_threaded_path() {
    if !installed("valgrind") {
        eprintln!("not run: valgrind is not installed (apt-get install valgrind)");
        return;
    }
    let v = last_line(&["--vectors", "300", "--dim", "16", "--callgrind"]);
    for phase in [
        "create-1t",
        "restore-1t",
        "baseline-create",
        "baseline-restore",
    ] {
        let n = v["instructions"][phase]["instructions"]
            .as_u64()
            .unwrap_or(0);
        let per = v["instructions"][phase]["per_raw_byte"]
            .as_f64()
            .unwrap_or(0.0);
        // The setup is subtracted: what is left is the phase's own work, tens to hundreds of
        // instructions per raw byte, never nothing.
        assert!(n > 0 && per > 1.0 && per < 100_000.0, "{phase}: {v}");
    }
}
