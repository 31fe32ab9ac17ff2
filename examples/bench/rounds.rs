//! The parent process: runs the phases in interleaved rounds, each phase a child process,
//! and reports medians, best runs and the spread, and each ratio as the median of the
//! ratios within rounds.
//!
//! This machine's speed drifts by up to 1.7× from one minute to the next. Phases run one
//! after the other each best of N compared a fast minute with a slow one; in rounds (create,
//! restore, the JSON module, one thread, zstd, then again), every ratio compares runs taken
//! moments apart.

use super::zstd;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The median, the smallest and the largest of some figures.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Of `xs` (at least one).
    pub fn of(xs: &[f64]) -> Spread {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn to_json(self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// Runs phases as child processes of this binary with the arguments they share.
pub struct Runner {
    pub exe: PathBuf,
    pub common: Vec<String>,
}

impl Runner {
    /// Runs `phase` once; its last line of output, parsed.
    pub fn run(&self, phase: &str, extra: &[String]) -> Result<Value, String> {
        let mut cmd = Command::new(&self.exe);
        self.phase_args(&mut cmd, phase, extra);
        phase_output(&mut cmd, phase)
    }

    /// Adds what makes `cmd` run `phase` of this binary.
    pub fn phase_args(&self, cmd: &mut Command, phase: &str, extra: &[String]) {
        cmd.args(["--phase", phase]).args(&self.common).args(extra);
    }
}

/// Runs `cmd` (a phase child, possibly under a tool) and parses its last line of output.
pub fn phase_output(cmd: &mut Command, phase: &str) -> Result<Value, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "phase {phase} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("phase {phase}: {e}: {line}"))
}

/// One round's results, by phase.
type Round = BTreeMap<&'static str, Value>;

/// Runs one round: create and restore (with `encrypt`, both also into the encrypted
/// repository, in turns first and second, so neither always meets the page cache's
/// writeback of the other's blob), the JSON module's create and restore, the same pipeline
/// on one thread, and zstd when it is installed.
pub fn run_round(r: &Runner, n: usize, with_zstd: bool, encrypt: bool) -> Result<Round, String> {
    let mut round = Round::new();
    let pairs: &[(&'static str, &'static str)] = match (encrypt, n % 2) {
        (false, _) => &[("create", "restore")],
        (true, 0) => &[
            ("create", "restore"),
            ("encrypted-create", "encrypted-restore"),
        ],
        (true, _) => &[
            ("encrypted-create", "encrypted-restore"),
            ("create", "restore"),
        ],
    };
    for &(create, restore) in pairs {
        create_and_restore(r, &mut round, create, restore)?;
    }
    round.insert("baseline-create", r.run("baseline-create", &[])?);
    round.insert("baseline-restore", r.run("baseline-restore", &[])?);
    create_and_restore(r, &mut round, "create-1t", "restore-1t")?;
    if with_zstd {
        round.insert("zstd", r.run("zstd", &[])?);
    }
    Ok(round)
}

/// Runs phase `create`, then `restore` of the snapshot it made, into `round`. The
/// repository's earlier snapshots are deleted first (`forget_all` says why).
fn create_and_restore(
    r: &Runner,
    round: &mut Round,
    create: &'static str,
    restore: &'static str,
) -> Result<(), String> {
    let forget = if create.starts_with("encrypted-") {
        "encrypted-forget"
    } else {
        "forget"
    };
    r.run(forget, &[])?;
    let made = r.run(create, &[])?;
    let id = snapshot_id(&made, create)?;
    round.insert(restore, r.run(restore, &["--id".into(), id])?);
    round.insert(create, made);
    Ok(())
}

fn snapshot_id(v: &Value, phase: &str) -> Result<String, String> {
    v["snapshot_id"]
        .as_str()
        .map(str::to_string)
        .ok_or(format!("{phase} printed no snapshot id"))
}

/// `field` of `phase`'s output in `round` (NaN if that phase did not run).
fn figure(round: &Round, phase: &str, field: &str) -> f64 {
    round
        .get(phase)
        .and_then(|v| v[field].as_f64())
        .unwrap_or(f64::NAN)
}

fn secs(round: &Round, phase: &str) -> f64 {
    figure(round, phase, "secs")
}

fn cpu_secs(round: &Round, phase: &str) -> f64 {
    figure(round, phase, "cpu_secs")
}

/// A figure computed from one round.
type Factor = fn(&Round) -> f64;

/// The two factors of `create_vs_single_thread`, per round: how many cores the create kept
/// busy (its CPU time over its time; the one-thread create keeps about one), and the CPU time
/// it spent against the one-thread create's for the same work (over 1: the threads got in each
/// other's way). The ratio is about the first over the second: it falls short of 2 by idle
/// time or by extra work, and these say which.
const FACTORS: [(&str, Factor); 2] = [
    ("create_cores_busy", |r| {
        cpu_secs(r, "create") / secs(r, "create")
    }),
    ("create_cpu_vs_single_thread", |r| {
        cpu_secs(r, "create") / cpu_secs(r, "create-1t")
    }),
];

/// The ratios within one round: what each is, and the phases whose times it divides
/// (numerator's time over the denominator's: how many times faster the second is).
const RATIOS: [(&str, &str, &str); 6] = [
    ("create_vs_baseline", "baseline-create", "create"),
    ("restore_vs_baseline", "baseline-restore", "restore"),
    ("create_vs_single_thread", "create-1t", "create"),
    ("create_vs_zstd", "zstd", "create"),
    ("encrypted_create_vs_create", "create", "encrypted-create"),
    (
        "encrypted_restore_vs_restore",
        "restore",
        "encrypted-restore",
    ),
];

/// Phases in the order they are reported.
const PHASES: [&str; 9] = [
    "create",
    "restore",
    "create-1t",
    "restore-1t",
    "baseline-create",
    "baseline-restore",
    "zstd",
    "encrypted-create",
    "encrypted-restore",
];

/// Prints one round's times and ratios on one line.
pub fn print_round(n: usize, of: usize, round: &Round) {
    let times: Vec<String> = PHASES
        .iter()
        .filter(|p| round.contains_key(*p))
        .map(|p| format!("{p} {:.3}", secs(round, p)))
        .collect();
    let ratios: Vec<String> = RATIOS
        .iter()
        .filter(|(_, a, b)| round.contains_key(a) && round.contains_key(b))
        .map(|(name, a, b)| format!("{name} {:.2}x", secs(round, a) / secs(round, b)))
        .collect();
    println!(
        "  round {n}/{of}: {} s; {}",
        times.join(", "),
        ratios.join(", ")
    );
}

/// The summary of all rounds: per phase the median, best and worst time (and MB/s of the
/// median), the largest peak; per ratio the median of the rounds' ratios and their range;
/// then the sizes. Prints a table and returns the JSON fields.
pub fn summarize(rounds: &[Round], raw: u64) -> Map<String, Value> {
    let mb = raw as f64 / 1e6;
    let mut out = Map::new();
    let mut phases = Map::new();
    println!(
        "  {:<17} {:>9} {:>10} {:>19} {:>13}",
        "phase", "median s", "MB/s", "min–max s", "peak (max)"
    );
    for phase in PHASES.iter().filter(|p| rounds[0].contains_key(*p)) {
        let s = Spread::of(&rounds.iter().map(|r| secs(r, phase)).collect::<Vec<_>>());
        let peak = rounds
            .iter()
            .filter_map(|r| r[phase]["peak_extra_mib"].as_f64())
            .fold(0.0, f64::max);
        println!(
            "  {phase:<17} {:>9.3} {:>10.1} {:>9.3}–{:<9.3} +{peak:>7.1} MiB",
            s.median,
            mb / s.median,
            s.min,
            s.max
        );
        let mut v = s.to_json();
        v["peak_extra_mib"] = json!(peak);
        phases.insert(phase.to_string(), v);
    }
    out.insert("phases".into(), Value::Object(phases));
    let mut spread = Map::new();
    for (name, a, b) in RATIOS {
        if !rounds[0].contains_key(a) {
            out.insert(name.into(), Value::Null);
            continue;
        }
        let s = Spread::of(
            &rounds
                .iter()
                .map(|r| secs(r, a) / secs(r, b))
                .collect::<Vec<_>>(),
        );
        out.insert(name.into(), json!(s.median));
        spread.insert(name.into(), s.to_json());
    }
    for (name, factor) in FACTORS {
        let s = Spread::of(&rounds.iter().map(factor).collect::<Vec<_>>());
        out.insert(name.into(), json!(s.median));
        spread.insert(name.into(), s.to_json());
    }
    out.insert("ratio_spread".into(), Value::Object(spread));
    out
}

/// The largest of `field` of `phase` over the rounds.
pub fn max_of(rounds: &[Round], phase: &str, field: &str) -> Value {
    rounds
        .iter()
        .filter_map(|r| r.get(phase).and_then(|v| v[field].as_f64()))
        .reduce(f64::max)
        .map_or(Value::Null, |x| json!(x))
}

/// The last round's `field` of `phase` (sizes are the same in every round).
pub fn last_of(rounds: &[Round], phase: &str, field: &str) -> Value {
    rounds
        .last()
        .and_then(|r| r.get(phase))
        .map_or(Value::Null, |v| v[field].clone())
}

/// Runs `n` rounds, printing each, and returns them.
pub fn run_rounds(r: &Runner, n: usize, encrypt: bool) -> Result<Vec<Round>, String> {
    let with_zstd = zstd::available();
    if !with_zstd {
        println!("  note: zstd is not installed; zstd_mb_s and zstd_bytes are null (apt-get install zstd)");
    }
    let mut rounds = Vec::with_capacity(n);
    for i in 0..n {
        let round = run_round(r, i, with_zstd, encrypt)?;
        print_round(i + 1, n, &round);
        rounds.push(round);
    }
    Ok(rounds)
}
