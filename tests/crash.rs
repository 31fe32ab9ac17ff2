//! Crash consistency of the local sink: a real process (the CLI importing into a local
//! repository) is killed with SIGKILL at points spread over its whole run, again and again
//! on the same repository. After every kill: only complete snapshots are listed, every one
//! verifies, nothing committed before is lost; `gc` then removes every leftover.
#![cfg(feature = "cli")]

mod common;

use common::listed_all_verify;
use common::servers::announce;
use dakera_snapshot::{SnapshotConfig, SnapshotManager};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dakera-snapshot");
const RUNS: usize = 40;

fn import(repo: &Path, input: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["--repo", repo.to_str().unwrap(), "-q", "import"])
        .arg(input)
        .env_remove("DAKERA_SNAPSHOT_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Files in the repository's snapshots and blob folders.
fn files(repo: &Path) -> Vec<String> {
    ["snapshots", "data"]
        .iter()
        .filter_map(|folder| std::fs::read_dir(repo.join(folder)).ok())
        .flat_map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_writer_at_any_point_loses_nothing_committed() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..6000u64 {
            let values: Vec<f32> = common::values(i, 96);
            let line = serde_json::json!({
                "namespace": format!("ns{}", i % 3),
                "id": format!("v{:06}", (i * 7919) % 6000),
                "values": values,
            });
            writeln!(f, "{line}").unwrap();
        }
    }
    let repo = work.path().join("repo");
    let m = SnapshotManager::local(&repo, SnapshotConfig::default().with_max_snapshots(0)).unwrap();

    // Two undisturbed runs: how long a warm import takes (the first one also warms the
    // page cache), and snapshots committed before the kills start.
    let mut full_run = Duration::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        assert!(import(&repo, &input).wait().unwrap().success());
        full_run = full_run.min(started.elapsed());
    }
    let mut committed = listed_all_verify(&m, "after two undisturbed imports").await;
    assert_eq!(committed.len(), 2);

    let (mut killed, mut finished, mut leftovers) = (0, 0, 0);
    for run in 0..RUNS {
        // Kill points spread evenly over the whole run.
        let at = full_run.mul_f64((run as f64 + 0.5) / RUNS as f64);
        let mut child = import(&repo, &input);
        std::thread::sleep(at);
        let was_running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        if was_running {
            killed += 1;
        } else {
            finished += 1;
        }
        let context = format!("run {run}: killed after {at:?} (running: {was_running})");

        let listed = listed_all_verify(&m, &context).await;
        assert!(
            committed.is_subset(&listed),
            "{context}: a committed snapshot was lost"
        );
        assert!(listed.len() <= committed.len() + 1, "{context}");
        committed = listed;

        // Whatever the killed writer left (a temporary file, a blob without sidecar) is
        // removed by gc; then only sidecar + blob pairs remain.
        let before = files(&repo).len();
        m.collect_garbage(Duration::ZERO, false).await.unwrap();
        let after = files(&repo);
        leftovers += before - after.len();
        assert_eq!(after.len(), 2 * committed.len(), "{context}: {after:?}");
        for name in &after {
            assert!(
                name.ends_with(".meta.json") || name.ends_with(".snap.gz"),
                "{context}: {name} survived gc"
            );
        }
    }
    announce(&format!(
        "crash consistency: {RUNS} kills over a {full_run:?} import ({killed} while running, {finished} after it ended): \
         {} snapshots committed, none lost, every listed one verifies; gc removed {leftovers} leftovers",
        committed.len()
    ));
    assert!(
        killed >= RUNS * 3 / 4,
        "most kills must land while the writer runs"
    );
}
