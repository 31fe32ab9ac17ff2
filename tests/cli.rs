//! End-to-end tests of the `dakera-snapshot` binary (built by `cargo test`), run as a user
//! would: against a local directory and against the S3 server the suite starts (moto),
//! configured through the standard environment variables.
#![cfg(feature = "cli")]

mod common;

use common::servers::{self, announce, ACCESS_KEY, SECRET_KEY};
use common::store_with;
use dakera_snapshot::jsonl::JsonlRecord;
use dakera_snapshot::paths::Key;
use dakera_snapshot::{
    sink_from_url, CreateOptions, PutMode, SinkOptions, SnapshotConfig, SnapshotManager, Vector,
    VectorStorage,
};
use serde_json::{json, Value};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_dakera-snapshot");

/// Runs the binary with a controlled environment.
struct Cli {
    env: Vec<(String, String)>,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn local() -> Self {
        Cli { env: Vec::new() }
    }

    fn s3(endpoint: &str) -> Self {
        let env = [
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1"),
        ];
        // Each run's own sidecar cache, under the build's scratch folder, not the user's.
        let cache = format!(
            "{}/cli-cache-{:016x}",
            env!("CARGO_TARGET_TMPDIR"),
            getrandom::u64().unwrap()
        );
        Cli {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("DAKERA_SNAPSHOT_CACHE_DIR".to_string(), cache)])
                .collect(),
        }
    }

    fn cache_dir(&self) -> Option<&str> {
        let dir = self
            .env
            .iter()
            .find(|(k, _)| k == "DAKERA_SNAPSHOT_CACHE_DIR");
        dir.map(|(_, d)| d.as_str())
    }

    fn clear_cache(&self) {
        if let Some(dir) = self.cache_dir() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Files in the sidecar cache of this CLI's runs (every repository's).
    fn cached_files(&self) -> usize {
        let Some(dir) = self.cache_dir() else {
            return 0;
        };
        let Ok(repos) = std::fs::read_dir(dir) else {
            return 0;
        };
        repos
            .flatten()
            .map(|r| std::fs::read_dir(r.path()).map_or(0, |f| f.count()))
            .sum()
    }

    fn run_with(&self, repo: Option<&str>, args: &[&str], stdin: Option<Vec<u8>>) -> Out {
        let mut cmd = assert_cmd::Command::new(BIN);
        cmd.env_remove("DAKERA_SNAPSHOT_URL").env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(repo) = repo {
            cmd.args(["--repo", repo]);
        }
        cmd.args(args);
        if let Some(input) = stdin {
            cmd.write_stdin(input);
        }
        let out = cmd.output().unwrap();
        let out = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !out.stdout.contains(SECRET_KEY) && !out.stderr.contains(SECRET_KEY),
            "a secret was printed by {args:?}"
        );
        assert!(
            !out.stderr.contains("panicked"),
            "{args:?} panicked:\n{}",
            out.stderr
        );
        out
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, repo: &str, args: &[&str]) -> String {
        let out = self.run_with(Some(repo), args, None);
        assert_eq!(
            out.code, 0,
            "{args:?} failed:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    fn json(&self, repo: &str, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(repo, &all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs a command that must fail with `code` and a one-line error; returns that line.
    fn fails(&self, repo: Option<&str>, args: &[&str], code: i32) -> String {
        let out = self.run_with(repo, args, None);
        assert_eq!(
            out.code, code,
            "{args:?}:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {}", out.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        lines[0].to_string()
    }
}

/// Test records: three namespaces, metadata, TTLs, in an order the import must sort.
fn records() -> Vec<JsonlRecord> {
    let mut out = Vec::new();
    for (ns, n, dim) in [("docs", 120, 8), ("images", 40, 3), ("notes", 5, 1)] {
        for i in 0..n {
            out.push(JsonlRecord {
                namespace: ns.to_string(),
                id: format!("{ns}-{:04}", (i * 37) % n),
                values: common::values(i as u64 * 31 + dim as u64, dim),
                metadata: (i % 3 == 0).then(|| json!({"i": i, "tags": ["a", "b"]})),
                ttl_seconds: (i % 5 == 0).then_some(86_400),
                expires_at: (i % 5 == 0).then_some(4_000_000_000),
            });
        }
    }
    // interleave namespaces
    out.sort_by_key(|r| (r.id.len() * 7 + r.values.len()) % 5);
    out
}

fn to_jsonl(records: &[JsonlRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

fn parse_jsonl(text: &str) -> Vec<JsonlRecord> {
    let mut v: Vec<JsonlRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    v.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    v
}

fn sorted(mut v: Vec<JsonlRecord>) -> Vec<JsonlRecord> {
    v.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    v
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The issue's workflow: import -> list -> show -> verify -> export (equals the import) ->
/// copy -> prune (dry run, then real) -> gc -> delete.
fn workflow(cli: &Cli, repo: &str, dest: &str, options: &SinkOptions, work: &Path) {
    let input = work.join("vectors.jsonl");
    let recs = records();
    std::fs::write(&input, to_jsonl(&recs)).unwrap();
    let input = input.to_str().unwrap();

    // import
    let first = cli
        .ok(
            repo,
            &[
                "import",
                input,
                "--description",
                "first load",
                "--label",
                "env=test",
            ],
        )
        .trim()
        .to_string();
    assert_eq!(first.len(), 36, "the id on stdout: {first}");

    // list
    let text = cli.ok(repo, &["list"]);
    assert!(
        text.contains(&first) && text.contains("first load") && text.contains("env=test"),
        "{text}"
    );
    let list = cli.json(repo, &["list"]);
    assert_eq!(ids(&list), vec![first.clone()]);
    assert_eq!(list[0]["vectors_stored"], 165);
    assert_eq!(list[0]["namespace_count"], 3);

    // show
    let text = cli.ok(repo, &["show", &first]);
    for want in [
        "docs",
        "images",
        "notes",
        "first load",
        "chain (newest first)",
    ] {
        assert!(text.contains(want), "show lacks {want}: {text}");
    }
    let shown = cli.json(repo, &["show", "latest"]);
    assert_eq!(shown["snapshot"]["id"], first.as_str());
    assert_eq!(shown["chain"], json!([first]));
    assert_eq!(shown["snapshot"]["namespaces"][0]["dimension"], 8);

    // verify
    let text = cli.ok(repo, &["verify", &first]);
    assert!(text.starts_with("ok"), "{text}");
    assert!(text.ends_with("1 ok, 0 broken\n"), "{text}");
    let verified = cli.json(repo, &["verify", &first]);
    assert_eq!(verified[0]["ok"], true);
    assert_eq!(
        verified[0]["report"]["namespaces"][0],
        json!({"namespace": "docs", "vectors": 120})
    );

    // export equals the import (and a gzip export, imported again, too)
    let out = work.join("out.jsonl");
    cli.ok(repo, &["export", &first, "--output", out.to_str().unwrap()]);
    assert_eq!(
        parse_jsonl(&std::fs::read_to_string(&out).unwrap()),
        sorted(recs.clone())
    );
    let one = cli.ok(repo, &["export", "latest", "-n", "images", "--output", "-"]);
    assert_eq!(one.lines().count(), 40);
    let gz = work.join("out.jsonl.gz");
    cli.ok(
        repo,
        &["export", &first, "--gzip", "--output", gz.to_str().unwrap()],
    );
    let second = cli
        .ok(repo, &["-q", "import", gz.to_str().unwrap()])
        .trim()
        .to_string();
    let diff = cli.ok(repo, &["diff", &first, &second]);
    assert!(
        diff.contains("0 added, 0 removed, 0 changed, 3 unchanged"),
        "{diff}"
    );
    let list = cli.json(repo, &["list"]);
    assert_eq!(ids(&list), vec![second.clone(), first.clone()]);

    // copy to another repository, then again (skips), and check it there
    let text = cli.ok(repo, &["copy", "--all", "--to", dest]);
    assert_eq!(text.matches("copied ").count(), 2, "{text}");
    let text = cli.ok(repo, &["copy", "--all", "--to", dest]);
    assert_eq!(text.matches("already present").count(), 2, "{text}");
    let verified = cli.json(dest, &["verify", "--all"]);
    assert_eq!(verified.as_array().unwrap().len(), 2);
    assert!(verified
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["problem"].is_null()));
    let copied = cli.ok(dest, &["export", &first, "--output", "-"]);
    assert_eq!(parse_jsonl(&copied), sorted(recs));

    // prune: a dry run deletes nothing, then the real run
    let text = cli.ok(repo, &["prune", "--keep-last", "1", "--dry-run"]);
    assert!(text.contains(&format!("would delete {first}")), "{text}");
    let plan = cli.json(repo, &["prune", "--keep-last", "1", "--dry-run"]);
    assert_eq!(plan["plan"]["keep"][0]["id"], second.as_str());
    assert!(plan["plan"]["keep"][0]["reasons"][0].is_string(), "{plan}");
    assert_eq!(ids(&cli.json(repo, &["list"])).len(), 2);
    let text = cli.ok(repo, &["prune", "--keep-last", "1"]);
    assert!(text.contains("1 kept, 1 deleted"), "{text}");
    assert_eq!(ids(&cli.json(repo, &["list"])), vec![second.clone()]);

    // gc: an orphan blob (a writer that died before committing) goes, the snapshot stays
    let sink = sink_from_url(repo, options).unwrap();
    let orphan = "data/20200101T000000000Z-00000000000000aa.snap.gz";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(sink.put(
        &Key::parse(orphan).unwrap(),
        bytes::Bytes::from_static(b"half a blob"),
        PutMode::Create,
    ))
    .unwrap();
    let text = cli.ok(repo, &["gc", "--grace", "0s", "--dry-run"]);
    assert!(
        text.contains(orphan) && text.contains("would be removed"),
        "{text}"
    );
    let text = cli.ok(repo, &["gc", "--grace", "0s"]);
    assert!(text.contains(&format!("removed {orphan}")), "{text}");
    assert!(rt
        .block_on(sink.head(&Key::parse(orphan).unwrap()))
        .unwrap_err()
        .is_not_found());
    cli.ok(repo, &["verify", "--all"]);

    // delete
    let text = cli.ok(repo, &["delete", &second]);
    assert!(text.contains(&format!("deleted {second}")), "{text}");
    assert!(ids(&cli.json(repo, &["list"])).is_empty());
}

#[test]
fn the_readme_sample_imports() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let repo = repo.to_str().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vectors.jsonl");
    let cli = Cli::local();
    cli.ok(repo, &["import", sample, "--label", "source=readme"]);
    let list = cli.json(repo, &["list"]);
    assert_eq!(list[0]["vectors_stored"], 24);
    assert_eq!(list[0]["namespace_count"], 3);
    let shown = cli.json(repo, &["show", list[0]["id"].as_str().unwrap()]);
    let names: Vec<&str> = shown["snapshot"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["articles", "chat-memory", "images"]);
}

/// One large namespace (big enough to be compared while written) and a small one.
fn big_records(changed: &[usize]) -> Vec<JsonlRecord> {
    let mut out: Vec<JsonlRecord> = (0..1_500)
        .map(|i| JsonlRecord {
            namespace: "big".into(),
            id: format!("doc-{i:05}"),
            values: common::values(i as u64 + if changed.contains(&i) { 7 } else { 0 }, 256),
            metadata: None,
            ttl_seconds: None,
            expires_at: None,
        })
        .collect();
    out.extend(records().into_iter().filter(|r| r.namespace == "notes"));
    out
}

#[test]
fn an_incremental_import_stores_only_the_changed_chunks() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let repo = repo.to_str().unwrap();
    let day1 = work.path().join("day1.jsonl");
    std::fs::write(&day1, to_jsonl(&big_records(&[]))).unwrap();
    let mut day2_records = big_records(&[40, 900]);
    day2_records.retain(|r| r.namespace == "big");
    let day2 = work.path().join("day2.jsonl");
    std::fs::write(&day2, to_jsonl(&day2_records)).unwrap();
    let cli = Cli::local();
    let full = cli.json(repo, &["import", day1.to_str().unwrap()]);
    let full_id = full["id"].as_str().unwrap().to_string();

    // A parent that does not exist is refused before the input is read; nothing is written.
    let line = cli.fails(
        Some(repo),
        &["import", day2.to_str().unwrap(), "--parent", "latest~3"],
        1,
    );
    assert!(line.contains("latest~3"), "{line}");
    assert_eq!(ids(&cli.json(repo, &["list"])).len(), 1);

    let inc = cli.json(
        repo,
        &["import", day2.to_str().unwrap(), "--parent", "latest"],
    );
    assert_eq!(inc["type"], "incremental");
    assert_eq!(inc["parent_id"], full_id.as_str());
    assert_eq!(inc["namespace_count"], 1, "notes is gone");
    let (stored, full_size) = (
        inc["size_bytes"].as_u64().unwrap(),
        full["size_bytes"].as_u64().unwrap(),
    );
    assert!(stored * 10 < full_size, "stored {stored} of {full_size}");
    let logical = inc["logical_bytes"].as_u64().unwrap();
    assert!(
        logical * 10 > full_size * 9,
        "logical {logical} of {full_size}"
    );

    let listed = cli.ok(repo, &["list"]);
    let header = listed.lines().next().unwrap();
    assert!(
        header.contains("STORED") && header.contains("LOGICAL"),
        "{listed}"
    );
    let shown = cli.ok(repo, &["show", "latest"]);
    assert!(
        shown.contains("stored") && shown.contains("logical"),
        "{shown}"
    );
    let out = work.path().join("back.jsonl");
    cli.ok(
        repo,
        &["export", "latest", "--output", out.to_str().unwrap()],
    );
    let back: Vec<JsonlRecord> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, day2_records);
    cli.ok(repo, &["verify", "--all"]);
}

#[test]
fn workflow_on_a_local_directory() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let dest = format!("file://{}", work.path().join("copy").display());
    workflow(
        &Cli::local(),
        repo.to_str().unwrap(),
        &dest,
        &SinkOptions::new(),
        work.path(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_on_s3_and_from_local_to_s3() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let work = tempfile::tempdir().unwrap();
        let cli = Cli::s3(&server.endpoint);
        let prefix = format!("{}/cli-{:016x}", server.url, getrandom::u64().unwrap());
        // S3 to S3
        workflow(
            &cli,
            &format!("{prefix}/a"),
            &format!("{prefix}/b"),
            &server.options,
            work.path(),
        );
        // local to S3, the README's path: import locally, copy up, verify and export there
        let local = work.path().join("local");
        let input = work.path().join("v.jsonl");
        std::fs::write(&input, to_jsonl(&records())).unwrap();
        let local = local.to_str().unwrap();
        let id = cli
            .ok(local, &["import", input.to_str().unwrap()])
            .trim()
            .to_string();
        let up = format!("{prefix}/uploaded");
        let text = cli.ok(local, &["copy", &id, "--to", &up]);
        assert!(text.contains(&format!("copied {id}")), "{text}");
        cli.ok(&up, &["verify", &id]);
        let back = cli.ok(&up, &["export", &id, "--output", "-"]);
        assert_eq!(parse_jsonl(&back), sorted(records()));
        // `list` keeps copies of the sidecars it read; `--no-cache` keeps none.
        cli.clear_cache();
        let listed = cli.ok(&up, &["--no-cache", "list", "--json"]);
        assert_eq!(cli.cached_files(), 0, "--no-cache wrote to the cache");
        assert_eq!(cli.ok(&up, &["list", "--json"]), listed);
        assert_eq!(cli.cached_files(), 1, "one copy for the one snapshot");
        assert_eq!(cli.ok(&up, &["list", "--json"]), listed);
        // A copy to a bucket that does not exist says which side and which bucket, briefly.
        let line = cli.fails(
            Some(local),
            &[
                "--retries",
                "0",
                "copy",
                &id,
                "--to",
                "s3://no-such-bucket-4e1/x",
            ],
            1,
        );
        assert!(
            line.contains(
                "in s3://no-such-bucket-4e1/x failed: the bucket or container does not exist"
            ),
            "{line}"
        );
        assert!(!line.contains("<?xml"), "{line}");
        announce(&format!(
            "cli: workflow ran end to end against {} ({prefix})",
            server.name
        ));
    })
    .await
    .unwrap();
}

/// A repository with a chain full <- inc1 <- inc2 made through the library.
async fn chain_repo(dir: &Path) -> (SnapshotManager, Vec<String>) {
    let m = SnapshotManager::local(dir, SnapshotConfig::default().with_max_snapshots(0)).unwrap();
    let store = store_with(&[("a", 30, 4), ("b", 20, 2), ("c", 5, 3)]).await;
    let full = m
        .create_snapshot(&store, CreateOptions::described("full"))
        .await
        .unwrap();
    store
        .upsert("a", vec![Vector::new("new", vec![1.0; 4])])
        .await
        .unwrap();
    let inc1 = m
        .create_incremental_snapshot(&store, full.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    store.delete_namespace("c").await.unwrap();
    store
        .upsert("b", vec![Vector::new("new", vec![1.0; 2])])
        .await
        .unwrap();
    let inc2 = m
        .create_incremental_snapshot(&store, inc1.id.as_str(), None, CreateOptions::default())
        .await
        .unwrap();
    let ids = [full, inc1, inc2].map(|s| s.id.to_string()).to_vec();
    (m, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_show_diff_copy_delete_and_corruption() {
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let (m, chain) = chain_repo(&repo_dir).await;
    let [full, inc1, inc2] = [&chain[0], &chain[1], &chain[2]];
    let repo = repo_dir.to_str().unwrap().to_string();
    let expected = {
        let store = common::restore_all(&m, inc2).await;
        let mut out = Vec::new();
        for ns in store.list_namespaces().await.unwrap() {
            for v in store.get_all(&ns).await.unwrap() {
                out.push((ns.clone(), v.id, v.values));
            }
        }
        out
    };
    let (full, inc1, inc2) = (full.clone(), inc1.clone(), inc2.clone());
    tokio::task::spawn_blocking(move || {
        let cli = Cli::local();
        // show: the chain, newest first; unchanged and deleted namespaces named
        let text = cli.ok(&repo, &["show", &inc2]);
        let at = |id: &str| text.find(&format!("  {id}  ")).unwrap();
        assert!(at(&inc2) < at(&inc1) && at(&inc1) < at(&full), "{text}");
        assert!(text.contains("deleted since the parent: c"), "{text}");
        assert!(text.contains("unchanged since the parent"), "{text}");
        // diff across the chain
        let d = cli.json(&repo, &["diff", &full, &inc2]);
        let kinds: Vec<(String, String)> = d["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["namespace"].as_str().unwrap().into(),
                    e["kind"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want = [("a", "changed"), ("b", "changed"), ("c", "removed")];
        assert_eq!(
            kinds,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        // export resolves the chain
        let text = cli.ok(&repo, &["export", &inc2, "--output", "-"]);
        let got: Vec<(String, String, Vec<f32>)> = text
            .lines()
            .map(|l| {
                let r: JsonlRecord = serde_json::from_str(l).unwrap();
                (r.namespace, r.id, r.values)
            })
            .collect();
        assert_eq!(got, expected);
        // copying the newest brings its ancestors, oldest first
        let dest = work.path().join("dest");
        let dest = dest.to_str().unwrap();
        let text = cli.ok(&repo, &["copy", &inc2, "--to", dest]);
        let order: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(1)).collect();
        assert_eq!(order, vec![full.as_str(), inc1.as_str(), inc2.as_str()]);
        cli.ok(dest, &["verify", "--all"]);
        // delete refuses to orphan, --force says what it removed
        let line = cli.fails(Some(dest), &["delete", &inc1], 1);
        assert!(
            line.ends_with(&format!(
                "has snapshots built on it ({inc2}); delete them first, or force the delete (--force) to remove them too"
            )),
            "{line}"
        );
        // A dry run says what would go and deletes nothing.
        let text = cli.ok(dest, &["delete", &inc1, "--force", "--dry-run"]);
        assert_eq!(
            text,
            format!("would delete {inc2} (built on it)\nwould delete {inc1}\n")
        );
        assert_eq!(ids(&cli.json(dest, &["list"])).len(), 3);
        // Several ids are all checked first: a bad one deletes nothing.
        cli.fails(Some(dest), &["delete", &inc2, "20200101T000000000Z-00000000000000aa"], 1);
        assert_eq!(ids(&cli.json(dest, &["list"])).len(), 3);
        let text = cli.ok(dest, &["delete", &inc1, "--force"]);
        assert!(
            text.contains(&format!("deleted {inc2} (built on it)"))
                && text.contains(&format!("deleted {inc1}")),
            "{text}"
        );
        assert_eq!(ids(&cli.json(dest, &["list"])), vec![full.clone()]);

        // corrupt one byte in the middle of the full snapshot's blob
        let blob = dakera_snapshot::testing::blob_path(&repo_dir, &full);
        let mut bytes = std::fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&blob, &bytes).unwrap();
        let out = cli.run_with(Some(&repo), &["verify", "--all"], None);
        assert_eq!(out.code, 1, "{}", out.stdout);
        let broken = out
            .stdout
            .lines()
            .find(|l| l.starts_with("BROKEN"))
            .unwrap();
        assert!(broken.contains(&full), "{}", out.stdout);
        // The reason names the damaged chunk's byte range, which holds the flipped byte.
        let range = broken
            .split("the chunk at bytes ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no chunk range in {broken}"));
        let (a, b) = range.split_once("..").unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(a <= mid && mid < b, "{mid} outside {range}: {broken}");
        assert!(
            !broken.contains("SHA-256"),
            "one check per reason: {broken}"
        );
        assert!(
            out.stdout.contains(&format!(
                "affects the snapshots built on it: {inc1}, {inc2}"
            )),
            "{}",
            out.stdout
        );
        // Newest first, like `list`; the intact children of the broken one are flagged.
        let order: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|w| w.len() > 30)
            .collect();
        assert_eq!(
            order,
            [inc2.as_str(), inc1.as_str(), full.as_str()],
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!(
                "AFFECTED  {inc2}  its own data verified, but it builds on BROKEN {full}"
            )),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .ends_with("0 ok, 1 broken, 2 affected by a broken ancestor\n"),
            "{}",
            out.stdout
        );
        assert!(
            out.stderr.contains(
                "1 of 3 snapshot(s) failed verification; 2 more build on a broken snapshot"
            ),
            "{}",
            out.stderr
        );
        let all = cli.run_with(Some(&repo), &["--json", "verify", "--all"], None);
        let all: Value = serde_json::from_str(&all.stdout).unwrap();
        assert_eq!(all[0]["ok"], false);
        assert_eq!(all[0]["broken_ancestor"], json!(full));
        let out = cli.run_with(Some(&repo), &["--json", "verify", &full], None);
        assert_eq!(out.code, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(v[0]["problem"].as_str().unwrap().contains(&full));
        assert_eq!(v[0]["affects"], json!([inc1, inc2]));
        assert_eq!(v[0]["ok"], false);
        // exporting the damaged snapshot fails, naming it, and leaves no file
        let target = work.path().join("never.jsonl");
        let line = cli.fails(
            Some(&repo),
            &["export", &full, "--output", target.to_str().unwrap()],
            1,
        );
        assert!(line.contains(&format!("snapshot {full}")), "{line}");
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(work.path())
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp"))
                .count(),
            0,
            "the partial export was left behind"
        );
    })
    .await
    .unwrap();
}

#[test]
fn bad_input_gives_one_line_and_the_right_exit_code() {
    let work = tempfile::tempdir().unwrap();
    let cli = Cli::local();
    let repo = work.path().join("repo");
    let repo = repo.to_str().unwrap();

    // usage errors: 2
    let line = cli.fails(None, &["list"], 2);
    assert!(line.contains("DAKERA_SNAPSHOT_URL"), "{line}");
    let line = cli.fails(Some("ftp://host/x"), &["list"], 2);
    assert!(line.contains("unsupported repository URL"), "{line}");
    let line = cli.fails(Some("s3://"), &["list"], 2);
    assert!(line.contains("names no bucket"), "{line}");
    let out = cli.run_with(Some(repo), &["verify"], None);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = cli.run_with(Some(repo), &["prune", "--dry-run"], None);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = cli.run_with(Some(repo), &["list", "--no-such-flag"], None);
    assert_eq!(out.code, 2, "{}", out.stderr);

    // a missing repository is not silently created
    let line = cli.fails(Some(repo), &["list"], 1);
    assert!(line.contains("does not exist"), "{line}");
    assert!(!Path::new(repo).exists());

    // a malformed line: exit 1, the line named, nothing committed
    let input = work.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"namespace\":\"a\",\"id\":\"x\",\"values\":[1,2]}\n\n{\"namespace\":\"a\",\"id\":\"y\",\"values\":[1]}\n",
    )
    .unwrap();
    let out = cli.run_with(Some(repo), &["import", input.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap();
    assert!(
        line.contains("bad.jsonl, line 3") && line.contains("dimension"),
        "{line}"
    );
    // The first import into a path that does not exist says it creates a repository there.
    assert!(
        out.stderr
            .contains(&format!("creating a new repository at {repo}")),
        "{}",
        out.stderr
    );
    assert!(cli.ok(repo, &["list", "--json"]).trim() == "[]");
    // An empty repository: `latest` says so plainly.
    let line = cli.fails(Some(repo), &["show", "latest"], 1);
    assert!(
        line.starts_with("error: latest names no snapshot:")
            && line.ends_with("has no snapshots yet"),
        "{line}"
    );
    // An empty input file and a JSON array file are refused, saying why.
    let empty = work.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let line = cli.fails(Some(repo), &["import", empty.to_str().unwrap()], 1);
    assert!(
        line.ends_with(
            "empty.jsonl: no records (the input is empty or blank); nothing was imported"
        ),
        "{line}"
    );
    let array = work.path().join("array.json");
    std::fs::write(
        &array,
        "[{\"namespace\":\"a\",\"id\":\"x\",\"values\":[1]}]",
    )
    .unwrap();
    let line = cli.fails(Some(repo), &["import", array.to_str().unwrap()], 1);
    assert!(line.contains("jq -c '.[]'"), "{line}");
    assert!(cli.ok(repo, &["list", "--json"]).trim() == "[]");
    // --repo naming a file says so.
    let line = cli.fails(Some(input.to_str().unwrap()), &["list"], 1);
    assert!(line.contains("is a file, not a folder"), "{line}");
    let line = cli.fails(Some(repo), &["import", "/no/such/file.jsonl"], 1);
    assert!(line.contains("opening /no/such/file.jsonl"), "{line}");

    // stdin import works; a missing id is exit 1 naming the id
    let id = {
        let out = cli.run_with(
            Some(repo),
            &["import", "-"],
            Some(b"{\"namespace\":\"a\",\"id\":\"x\",\"values\":[1,2]}\n".to_vec()),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout.trim().to_string()
    };
    // Export into a folder that does not exist names that folder, not a temporary file.
    let line = cli.fails(
        Some(repo),
        &["export", &id, "--output", "/no-such-dir-7f3/out.jsonl"],
        1,
    );
    assert_eq!(
        line,
        "error: cannot write /no-such-dir-7f3/out.jsonl: the folder /no-such-dir-7f3 does not exist"
    );
    let missing = format!("{}0", &id[..id.len() - 1]);
    let missing = if missing == id {
        format!("{}1", &id[..id.len() - 1])
    } else {
        missing
    };
    let line = cli.fails(Some(repo), &["show", &missing], 1);
    assert!(
        line.contains(&missing) && line.contains("not found"),
        "{line}"
    );
    let line = cli.fails(Some(repo), &["verify", &missing], 1);
    assert!(line.contains("not found"), "{line}");
    let line = cli.fails(Some(repo), &["export", "nonsense", "--output", "-"], 1);
    assert!(line.contains("nonsense"), "{line}");

    // -v adds the chain of causes and logs, still no panic
    let out = cli.run_with(Some(repo), &["-v", "verify", "latest"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn wrong_credentials_fail_in_one_line_without_the_secret() {
    // Nothing listens on port 1: an unreachable endpoint is reported, not hung on.
    let cli = Cli {
        env: vec![
            ("AWS_ENDPOINT".into(), "http://127.0.0.1:1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_METADATA_ENDPOINT".into(), "http://127.0.0.1:1".into()),
        ],
    };
    let line = cli.fails(
        Some("s3://bucket/x"),
        &["--option", "no_such_key=1", "list"],
        2,
    );
    assert!(line.contains("no_such_key"), "{line}");
    let line = cli.fails(Some("s3://bucket/x"), &["--retries", "0", "list"], 1);
    // The first request of every command reads the repository's config object.
    assert!(
        line.contains("get of config.json in s3://bucket/x failed")
            && line.contains("Connection refused"),
        "{line}"
    );
    // A secret passed as an option, with trace logging: still never printed (run_with checks).
    let out = cli.run_with(
        Some("s3://bucket/x"),
        &[
            "-vvv",
            "--retries",
            "0",
            "--option",
            &format!("secret_access_key={SECRET_KEY}"),
            "list",
        ],
        None,
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("caused by"), "{}", out.stderr);

    // No credentials at all: the error says what to set.
    let mut none = Cli::s3("http://127.0.0.1:1");
    none.env
        .retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
    let line = none.fails(Some("s3://bucket/x"), &["--retries", "0", "list"], 1);
    assert!(line.contains("AWS_ACCESS_KEY_ID"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_on_a_signing_server_is_one_line_without_the_secret() {
    let Some(server) = servers::start_seaweedfs().await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let mut cli = Cli::s3(&server.endpoint);
        for (k, v) in cli.env.iter_mut() {
            if k == "AWS_SECRET_ACCESS_KEY" {
                *v = format!("{SECRET_KEY}-wrong");
            }
        }
        let url = format!("{}/cli-auth", server.url);
        let line = cli.fails(Some(&url), &["--retries", "0", "list"], 1);
        // One short line that names the repository and what to do; the server's XML only
        // under -v.
        assert_eq!(
            line,
            format!("error: get of config.json in {url} failed: authentication failed: check the access key and secret")
        );
        let out = cli.run_with(Some(&url), &["-v", "--retries", "0", "list"], None);
        assert_eq!(out.code, 1);
        assert!(
            out.stderr.contains("caused by:") && out.stderr.contains("SignatureDoesNotMatch"),
            "{}",
            out.stderr
        );
        // and the right secret works on the same server
        let cli = Cli::s3(&server.endpoint);
        cli.ok(&url, &["list"]);
    })
    .await
    .unwrap();
}

#[test]
fn every_command_has_help_with_examples() {
    let cli = Cli::local();
    let top = cli.run_with(None, &["--help"], None);
    assert_eq!(top.code, 0);
    for cmd in [
        "list",
        "show",
        "verify",
        "export",
        "import",
        "delete",
        "prune",
        "gc",
        "copy",
        "diff",
        "completions",
        "init",
    ] {
        assert!(top.stdout.contains(cmd), "top-level help lacks {cmd}");
        let out = cli.run_with(None, &[cmd, "--help"], None);
        assert_eq!(out.code, 0, "{cmd} --help");
        assert!(
            out.stdout.contains("Example"),
            "{cmd} --help has no example:\n{}",
            out.stdout
        );
        // The command's own options first, the global ones under their own heading.
        let global = out.stdout.find("Global options:").unwrap();
        assert!(out.stdout[global..].contains("--repo <URL>"), "{cmd}");
        assert!(!out.stdout[..global].contains("--repo <URL>"), "{cmd}");
    }
    let prune = cli.run_with(None, &["prune", "--help"], None).stdout;
    let global = prune.find("Global options:").unwrap();
    assert!(prune[..global].contains("--keep-weekly"), "{prune}");
}

/// Rewrites fields of a committed sidecar on disk.
fn forge_sidecar(dir: &Path, id: &str, fields: Value) {
    let path = dir.join(format!("snapshots/{id}.meta.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (k, val) in fields.as_object().unwrap() {
        v[k] = val.clone();
    }
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_damaged_sidecars_are_shown_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, snaps) = chain_repo(dir.path()).await;
    let repo = dir.path().to_str().unwrap();
    let cli = Cli::local();

    // list fits 120 columns with incrementals: parents by a short id, no repeated time.
    let text = cli.ok(repo, &["list"]);
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
    let row = text.lines().find(|l| l.starts_with(&snaps[2])).unwrap();
    let short = format!("~{}", &snaps[1][snaps[1].len() - 8..]);
    assert!(row.contains(&short) && row.contains("incremental"), "{row}");
    assert!(text.starts_with("ID "), "{text}");

    // A creation time past year 9999 (and one that overflows the clock) renders.
    forge_sidecar(
        dir.path(),
        &snaps[2],
        json!({"created_at": 300_000_000_000u64}),
    );
    cli.ok(repo, &["list"]);
    let text = cli.ok(repo, &["show", &snaps[2]]);
    assert!(
        text.contains("300000000000 s after 1970 (invalid)"),
        "{text}"
    );
    let listed = cli.json(repo, &["list"]);
    assert!(listed
        .to_string()
        .contains("300000000000 s after 1970 (invalid)"));
    forge_sidecar(dir.path(), &snaps[2], json!({"created_at": u64::MAX}));
    cli.ok(repo, &["list"]);
    cli.ok(repo, &["show", &snaps[2]]);

    // A damaged sidecar: list shows it, --json says so, verify --all names it BROKEN.
    std::fs::write(
        dir.path().join(format!("snapshots/{}.meta.json", snaps[1])),
        b"{ damaged",
    )
    .unwrap();
    let out = cli.run_with(Some(repo), &["list"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&snaps[1]))
        .unwrap();
    assert!(row.contains("DAMAGED"), "{row}");
    assert!(out.stderr.contains("cannot be read"), "{}", out.stderr);
    let listed = cli.json(repo, &["list"]);
    let damaged: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["damaged"] == true)
        .collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0]["id"], snaps[1].as_str());
    assert!(damaged[0]["problem"].as_str().unwrap().contains("sidecar"));
    let out = cli.run_with(Some(repo), &["verify", "--all"], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(&format!("BROKEN    {}", snaps[1])),
        "{}",
        out.stdout
    );

    // prune refuses and says which and how; delete --force removes it and its child.
    let line = cli.fails(Some(repo), &["prune", "--keep-last", "1"], 1);
    assert!(
        line.contains(&snaps[1]) && line.contains("--force"),
        "{line}"
    );
    let line = cli.fails(Some(repo), &["delete", &snaps[1]], 1);
    assert!(line.contains("--force"), "{line}");
    let text = cli.ok(repo, &["delete", &snaps[1], "--force"]);
    assert!(
        text.contains(&snaps[1]) && text.contains(&snaps[2]),
        "{text}"
    );
    let left = ids(&cli.json(repo, &["list"]));
    assert_eq!(left, [snaps[0].clone()]);
    cli.ok(repo, &["verify", "--all"]);
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vectors.jsonl");
    let cli = Cli::local();
    cli.ok(repo.to_str().unwrap(), &["-q", "import", sample]);
    // The reader is gone before the command writes anything.
    let mut child = std::process::Command::new(BIN)
        .args(["--repo", repo.to_str().unwrap(), "--json", "list"])
        .env_remove("DAKERA_SNAPSHOT_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn completions_for_bash_zsh_and_fish_need_no_repository() {
    let cli = Cli::local();
    for (shell, marker) in [
        ("bash", "_dakera__snapshot()"),
        ("zsh", "#compdef dakera-snapshot"),
        ("fish", "complete -c dakera-snapshot"),
    ] {
        let out = cli.run_with(None, &["completions", shell], None);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains(marker),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        assert!(
            out.stdout.contains("prune") && out.stdout.contains("keep-last"),
            "{shell}"
        );
    }
    let out = cli.run_with(None, &["completions", "tcsh"], None);
    assert_eq!(out.code, 2);
}

#[test]
fn a_config_file_names_the_repository_options_and_settings_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let other = dir.path().join("other");
    let config = dir.path().join("dakera.toml");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vectors.jsonl");
    std::fs::write(
        &config,
        format!(
            "repo = {:?}\n\n[snapshot]\ncompression_level = \"best\"\ninclude_metadata = false\n",
            repo.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let cli = Cli::local();
    // No --repo: the file's repository and settings.
    let out = cli.run_with(None, &["--config", cfg, "-q", "import", sample], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let shown = cli.json(repo.to_str().unwrap(), &["show", "latest"]);
    assert_eq!(shown["snapshot"]["compression"]["level"], 9, "{shown}");
    assert_eq!(shown["snapshot"]["include_metadata"], false);
    // --repo and --level win over the file.
    let out = cli.run_with(
        Some(other.to_str().unwrap()),
        &["--config", cfg, "-q", "import", sample, "--level", "fast"],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let shown = cli.json(other.to_str().unwrap(), &["show", "latest"]);
    assert_eq!(shown["snapshot"]["compression"]["level"], 2, "{shown}");
    // The file's backend options reach the repository (a local one takes none).
    std::fs::write(
        &config,
        format!(
            "repo = {:?}\n[options]\nfoo = \"bar\"\n",
            repo.to_str().unwrap()
        ),
    )
    .unwrap();
    let line = cli.fails(None, &["--config", cfg, "list"], 2);
    assert!(
        line.contains("takes no backend options (got \"foo\")"),
        "{line}"
    );
    // Unknown keys and bad values are usage errors naming the file.
    std::fs::write(&config, "repo = \"x\"\nrepository = \"y\"\n").unwrap();
    let line = cli.fails(None, &["--config", cfg, "list"], 2);
    assert!(
        line.contains("dakera.toml") && line.contains("repository"),
        "{line}"
    );
    std::fs::write(&config, "[snapshot]\nchunk_size = 0\n").unwrap();
    let line = cli.fails(Some(repo.to_str().unwrap()), &["--config", cfg, "list"], 2);
    assert!(line.contains("chunk_size"), "{line}");
    let line = cli.fails(None, &["--config", "/no/such/dakera.toml", "list"], 1);
    assert!(
        line.contains("reading the config file /no/such/dakera.toml"),
        "{line}"
    );
}

#[test]
fn an_encrypted_repository_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, to_jsonl(&records())).unwrap();
    let pw = dir.path().join("pw.txt");
    std::fs::write(&pw, "a long passphrase\n").unwrap();
    let pw = pw.to_str().unwrap();
    let cli = Cli::local();
    let made = cli.ok(repo, &["--password-file", pw, "init", "--encrypt"]);
    assert!(made.contains("initialized encrypted repository"), "{made}");
    let id = cli
        .ok(
            repo,
            &["--password-file", pw, "import", input.to_str().unwrap()],
        )
        .trim()
        .to_string();
    // Without a key (and no terminal to ask on): one line that says what to pass.
    let line = cli.fails(Some(repo), &["list"], 1);
    assert!(
        line.contains("is encrypted") && line.contains("--password-file"),
        "{line}"
    );
    let line = cli.fails(Some(repo), &["import", input.to_str().unwrap()], 1);
    assert!(line.contains("is encrypted"), "{line}");
    // The password from the environment; verify and export work as on any repository.
    let env = Cli {
        env: vec![(
            "DAKERA_SNAPSHOT_PASSWORD".into(),
            "a long passphrase".into(),
        )],
    };
    let listed = env.json(repo, &["list"]);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["encrypted"], true);
    env.ok(repo, &["verify", "--all"]);
    let out = dir.path().join("out.jsonl");
    env.ok(
        repo,
        &["export", "latest", "--output", out.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        records().len()
    );
    // Every other command, on the encrypted repository.
    let inc = env
        .ok(
            repo,
            &["import", input.to_str().unwrap(), "--parent", "latest"],
        )
        .trim()
        .to_string();
    let shown = env.ok(repo, &["show", "latest"]);
    assert!(shown.contains(&inc) && shown.contains("docs"), "{shown}");
    let diff = env.ok(repo, &["diff", &id, "latest"]);
    assert!(diff.contains("unchanged"), "{diff}");
    env.ok(repo, &["prune", "--keep-last", "5", "--dry-run"]);
    env.ok(repo, &["gc", "--grace", "0s"]);
    env.ok(repo, &["delete", &inc]);
    assert_eq!(env.json(repo, &["list"]).as_array().unwrap().len(), 1);
    let line = cli.fails(Some(repo), &["gc"], 1);
    assert!(
        line.contains("is encrypted"),
        "gc needs the key too: {line}"
    );
    // Rotate: a key file is added, the password key removed with it.
    let key = dir.path().join("repo.key");
    let key = key.to_str().unwrap();
    let wrote = cli.run_with(None, &["key", "generate", key], None);
    assert_eq!(wrote.code, 0, "{}", wrote.stderr);
    env.ok(repo, &["key", "add", "--new-key-file", key]);
    let keys = cli.json(repo, &["--key-file", key, "key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let old = keys.iter().find(|k| k["kind"] == "password").unwrap();
    let old = old["id"].as_str().unwrap();
    cli.ok(repo, &["--key-file", key, "key", "remove", old]);
    let line = env.fails(Some(repo), &["list"], 1);
    assert!(line.contains("no key of"), "{line}");
    // A flag wins over the environment's password (it does not conflict with it).
    env.ok(repo, &["--key-file", key, "list"]);
    let current = keys.iter().find(|k| k["id"] != old).unwrap()["id"]
        .as_str()
        .unwrap();
    let line = cli.fails(
        Some(repo),
        &["--key-file", key, "key", "remove", current],
        2,
    );
    assert!(line.contains("opened with"), "{line}");
    // Copy out to an unencrypted repository re-encodes the snapshots in the clear there.
    let other = dir.path().join("other");
    let other = other.to_str().unwrap();
    cli.ok(
        repo,
        &["-q", "--key-file", key, "copy", "--all", "--to", other],
    );
    let copied = cli.json(other, &["list"]);
    assert_eq!(copied[0]["id"], id.as_str());
    cli.ok(other, &["verify", "--all"]);
    // Into another encrypted repository with its own password (re-encrypted there), and
    // into one that the same key file opens.
    let pw2 = dir.path().join("pw2.txt");
    std::fs::write(&pw2, "the other passphrase\n").unwrap();
    let pw2 = pw2.to_str().unwrap();
    let sealed = dir.path().join("sealed");
    let sealed = sealed.to_str().unwrap();
    cli.ok(sealed, &["--password-file", pw2, "init", "--encrypt"]);
    let to = ["--to", sealed, "--to-password-file", pw2];
    let args: Vec<&str> = ["-q", "--key-file", key, "copy", "--all"]
        .iter()
        .chain(&to)
        .copied()
        .collect();
    cli.ok(repo, &args);
    cli.ok(sealed, &["--password-file", pw2, "verify", "--all"]);
    let same = dir.path().join("same-key");
    let same = same.to_str().unwrap();
    cli.ok(same, &["--key-file", key, "init", "--encrypt"]);
    cli.ok(
        repo,
        &["-q", "--key-file", key, "copy", "--all", "--to", same],
    );
    assert_eq!(
        cli.json(same, &["--key-file", key, "list"])[0]["id"],
        id.as_str()
    );
    // A password given to an unencrypted repository is refused, not ignored.
    let plain = dir.path().join("plain");
    let plain = plain.to_str().unwrap();
    cli.ok(plain, &["import", input.to_str().unwrap()]);
    let line = cli.fails(Some(plain), &["--password-file", pw, "list"], 1);
    assert!(line.contains("is not encrypted"), "{line}");
}

/// Runs the CLI on a terminal (a pty from util-linux `script`), typing each of `answers`
/// after the prompt before it appears; returns what the terminal showed and the exit code.
fn on_a_terminal(args: &[&str], answers: &[(&str, &str)]) -> (String, i32) {
    use std::io::{Read, Write};
    let command = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("DAKERA_SNAPSHOT_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    for (prompt, answer) in answers {
        let mut buf = [0u8; 256];
        while !seen.contains(prompt) {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "no prompt {prompt:?}; the terminal showed {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen = seen.replacen(prompt, "<asked>", 1);
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (seen + &rest, code)
}

#[test]
fn on_a_terminal_the_password_is_asked_for_and_never_echoed() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("not run: util-linux `script` (a pty for the prompt) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    let (shown, code) = on_a_terminal(
        &["--repo", repo, "init", "--encrypt"],
        &[
            ("new password: ", "typed secret"),
            ("new password again: ", "typed secret"),
        ],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("initialized encrypted repository"),
        "{shown}"
    );
    let (shown, code) = on_a_terminal(
        &["--repo", repo, "list"],
        &[("password for ", "typed secret")],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("no snapshots in") && !shown.contains("typed secret"),
        "{shown}"
    );
    let (shown, code) = on_a_terminal(&["--repo", repo, "list"], &[("password for ", "wrong")]);
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("no key of"), "{shown}");
    let (shown, code) = on_a_terminal(
        &["--repo", &format!("{repo}-2"), "init", "--encrypt"],
        &[("new password: ", "one"), ("new password again: ", "two")],
    );
    assert_eq!(code, 2, "{shown}");
    assert!(shown.contains("differ"), "{shown}");
}
