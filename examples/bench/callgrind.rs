//! `--callgrind`: a work measure that holds still where times drift. Each single-threaded
//! path runs under `valgrind --tool=callgrind`, and so does a child that only sets up the
//! same data; the difference is the phase's own instructions, reported per raw byte.
//! Instruction counts move by well under 1% between runs (ids differ in their random part);
//! times on this machine move by up to 1.7×.

use super::rounds::{phase_output, Runner};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// The measured phases and the setup each one's count is taken relative to.
const MEASURED: [(&str, &str); 4] = [
    ("create-1t", "setup-create"),
    ("restore-1t", "setup-restore"),
    ("baseline-create", "setup-create"),
    ("baseline-restore", "setup-restore"),
];

/// Runs the measured phases and their setups under callgrind; prints and returns the
/// instructions of each phase and per raw byte.
pub fn measure(r: &Runner, raw: u64, work: &Path) -> Result<Map<String, Value>, String> {
    if !available() {
        return Err("--callgrind needs valgrind (apt-get install valgrind)".into());
    }
    let mut counts = Map::new();
    let setup_create = instructions(r, "setup-create", &[], work)?;
    let setup_restore = instructions(r, "setup-restore", &[], work)?;
    let mut snapshot = None;
    for (phase, setup) in MEASURED {
        let extra: Vec<String> = match phase {
            "restore-1t" => vec![
                "--id".into(),
                snapshot.clone().ok_or("no snapshot")?,
                "--no-check".into(),
            ],
            "baseline-restore" => vec!["--no-check".into()],
            _ => Vec::new(),
        };
        let (total, out) = instructions_and_output(r, phase, &extra, work)?;
        if phase == "create-1t" {
            snapshot = out["snapshot_id"].as_str().map(str::to_string);
        }
        let base = if setup == "setup-create" {
            setup_create
        } else {
            setup_restore
        };
        let own = total.saturating_sub(base);
        println!(
            "  {phase:<17} {:>15} instructions  {:>8.1} per raw byte",
            group(own),
            own as f64 / raw as f64
        );
        counts.insert(
            phase.to_string(),
            json!({ "instructions": own, "per_raw_byte": own as f64 / raw as f64 }),
        );
    }
    Ok(counts)
}

fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn instructions(r: &Runner, phase: &str, extra: &[String], work: &Path) -> Result<u64, String> {
    instructions_and_output(r, phase, extra, work).map(|(n, _)| n)
}

/// Runs `phase` under callgrind: its instruction count (all threads) and its output line.
fn instructions_and_output(
    r: &Runner,
    phase: &str,
    extra: &[String],
    work: &Path,
) -> Result<(u64, Value), String> {
    let file = work.join(format!("callgrind.{phase}.out"));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(&r.exe);
    r.phase_args(&mut cmd, phase, extra);
    let v = phase_output(&mut cmd, phase)?;
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|n| n.trim().parse().ok())
        .ok_or(format!("{}: no instruction total", file.display()))?;
    Ok((total, v))
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
