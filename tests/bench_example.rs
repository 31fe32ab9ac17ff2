//! The benchmark example runs end to end on tiny data and its last line is one JSON object
//! with every figure issue 4 asks for. Timings are reported, never asserted.

use std::process::Command;

#[test]
fn bench_prints_every_required_figure_as_its_last_line() {
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
    let out = Command::new(&bench)
        .args(["--vectors", "600", "--dim", "16", "--repeat", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
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
}
