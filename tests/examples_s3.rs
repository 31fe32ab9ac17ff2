//! The S3 example binaries, run end to end against moto and SeaweedFS processes and
//! LocalStack and SeaweedFS containers, configured only
//! through the standard AWS_* environment variables.

mod common;

use common::containers;
use common::servers::{self, announce, Server, ACCESS_KEY, SECRET_KEY};
use std::path::PathBuf;
use std::process::Command;

/// Where cargo put the example binaries (`cargo test` builds them).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        dir.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        dir.display()
    );
    dir
}

fn run(server: &Server, name: &str, url: &str, args: &[&str]) -> String {
    let out = Command::new(example(name))
        .args(args)
        .env("DAKERA_SNAPSHOT_URL", url)
        .env("AWS_ENDPOINT", &server.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{name} failed on {}:\n{stdout}\n{stderr}",
        server.name
    );
    assert!(!stdout.contains(SECRET_KEY) && !stderr.contains(SECRET_KEY));
    stdout
}

fn backup_then_restore(server: &Server) {
    let url = format!(
        "s3://{}/examples-{:016x}",
        servers::BUCKET,
        getrandom::u64().unwrap()
    );
    let out = run(
        server,
        "s3_backup",
        &url,
        &[
            "--namespaces",
            "2",
            "--vectors",
            "1500",
            "--dim",
            "64",
            "--seed",
            "7",
        ],
    );
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("snapshot id: "))
        .expect("s3_backup prints the id")
        .to_string();
    // latest snapshot, then the same one by id
    let latest = run(server, "s3_restore", &url, &[]);
    assert!(
        latest.contains("restored data equals the generated data, vector for vector"),
        "{latest}"
    );
    assert!(latest.contains(&id), "{latest}");
    // The snapshot line reads as a person would write it: the type in words, a UTC time.
    let line = latest
        .lines()
        .find(|l| l.starts_with("snapshot: "))
        .unwrap();
    assert!(
        line.contains("(full, 3000 vectors stored, created 20"),
        "{line}"
    );
    assert!(line.ends_with("Z)"), "{line}");
    let by_id = run(server, "s3_restore", &url, &[&id]);
    assert!(
        by_id.contains("restored: 2 namespaces, 3000 vectors"),
        "{by_id}"
    );
    announce(&format!(
        "examples: s3_backup and s3_restore ran end to end against {} ({url})",
        server.name
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_against_moto() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    tokio::task::spawn_blocking(move || backup_then_restore(&server))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_against_seaweedfs() {
    let Some(server) = servers::start_seaweedfs().await else {
        return;
    };
    tokio::task::spawn_blocking(move || backup_then_restore(&server))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_against_localstack_in_a_container() {
    let Some(server) = containers::start_localstack().await else {
        return;
    };
    tokio::task::spawn_blocking(move || backup_then_restore(&server))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_against_seaweedfs_in_a_container() {
    let Some(server) = containers::start_seaweedfs().await else {
        return;
    };
    tokio::task::spawn_blocking(move || backup_then_restore(&server))
        .await
        .unwrap();
}

#[test]
fn examples_without_a_repository_say_what_to_set() {
    let out = Command::new(example("s3_backup"))
        .env_remove("DAKERA_SNAPSHOT_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set DAKERA_SNAPSHOT_URL"));
}

/// The README's `bash localstack/start.sh NAME && export ...` line works when run twice: the
/// second run finds the server up, prints how to reach it again and succeeds.
#[test]
fn start_sh_twice_succeeds_and_stop_sh_stops() {
    let here = env!("CARGO_MANIFEST_DIR");
    let port = servers::free_port().to_string();
    let run = |script: &str, args: &[&str]| {
        let out = Command::new("bash")
            .arg(format!("{here}/localstack/{script}"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, first) = run("start.sh", &["moto", &port]);
    assert_eq!(code, Some(0), "{first}");
    let (code, second) = run("start.sh", &["moto", &port]);
    let (stop_code, stopped) = run("stop.sh", &["moto"]);
    assert_eq!(code, Some(0), "{second}");
    assert!(second.contains("already running"), "{second}");
    let export = format!("export AWS_ENDPOINT=http://127.0.0.1:{port}");
    assert!(
        first.contains(&export) && second.contains(&export),
        "{second}"
    );
    assert_eq!(stop_code, Some(0), "{stopped}");
    assert!(stopped.contains("stopped moto"), "{stopped}");
    announce("localstack/start.sh: a second run finds moto up and prints its access line");
}

/// README command 1: the quickstart says what it changed between its two snapshots and
/// prints lists as text, not Rust debug output.
#[test]
fn quickstart_explains_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(example("quickstart"))
        .arg(dir.path().join("repo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "changed the store: 150 FAQ entries added, 1 article deleted (3649 vectors now)"
        ),
        "{stdout}"
    );
    let inc = stdout
        .lines()
        .find(|l| l.starts_with("created incremental snapshot"))
        .unwrap();
    assert!(
        inc.contains("stored articles, faq, unchanged images"),
        "{inc}"
    );
    assert!(!stdout.contains('[') && !stdout.contains('"'), "{stdout}");
    assert!(stdout.contains("restored store equals the original: 3 namespaces, 3649 vectors"));
}
