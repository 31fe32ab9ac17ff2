//! The conformance suite against real object-storage servers started by the test (moto,
//! SeaweedFS, LocalStack and Azurite as processes; LocalStack, SeaweedFS and MinIO in
//! containers through testcontainers) and
//! against object_store's in-memory store. Each run works under a fresh random prefix and
//! deletes only that prefix.

mod common;

use common::servers::{self, announce, Server, SECRET_KEY};
use common::{conformance, containers};
use dakera_snapshot::error::SinkErrorKind;
use dakera_snapshot::paths::Key;
use dakera_snapshot::{
    sink_from_url, Error, SinkExt, SinkOptions, SnapshotConfig, SnapshotManager, SnapshotSink,
};
use std::time::{Duration, Instant};

fn random_prefix() -> String {
    format!("conformance-{:016x}", getrandom::u64().unwrap())
}

/// Runs every conformance check on the repository at `url`, then removes what it wrote.
async fn run_suite(name: &str, url: &str, options: &SinkOptions) {
    let started = Instant::now();
    let url = match url.strip_suffix("://") {
        Some(scheme) => format!("{scheme}:///{}", random_prefix()),
        None => format!("{}/{}", url.trim_end_matches('/'), random_prefix()),
    };
    let options = options
        .clone()
        .with_part_size(5 * 1024 * 1024)
        .with_max_concurrency(2);
    let sink = sink_from_url(&url, &options).unwrap();
    conformance::sink_basics(sink.as_ref()).await;
    conformance::sink_ranges(sink.as_ref()).await;
    conformance::sink_streaming(sink.as_ref()).await;
    conformance::sink_listing(sink.as_ref()).await;
    conformance::sink_listing_paginates(sink.as_ref()).await;
    conformance::sink_multipart_blob(sink.as_ref()).await;
    let manager = SnapshotManager::new(sink.clone(), SnapshotConfig::default()).unwrap();
    conformance::manager_workflow(&manager).await;
    conformance::manager_large_namespace(&manager).await;
    conformance::manager_dedup_chain(&manager).await;
    conformance::manager_many_namespaces(&manager).await;
    let a = SnapshotManager::new(
        sink.clone(),
        SnapshotConfig::default().with_max_snapshots(0),
    )
    .unwrap();
    // A second client of the same repository; `memory://` opens a new, empty store on every
    // call, so there the second manager shares the first one's sink.
    let second = match url.starts_with("memory://") {
        true => sink.clone(),
        false => sink_from_url(&url, &options).unwrap(),
    };
    let b = SnapshotManager::new(second, SnapshotConfig::default().with_max_snapshots(0)).unwrap();
    conformance::concurrent_managers(&a, &b).await;
    cleanup(sink.as_ref()).await;
    announce(&format!(
        "object-store conformance: {name} passed all checks in {:.1?} ({url})",
        started.elapsed()
    ));
}

/// Deletes everything under the run's prefix (only that prefix).
async fn cleanup(sink: &dyn SnapshotSink) {
    for top in ["conf", "snapshots", "data"] {
        for o in sink.list_all(&Key::parse(top).unwrap()).await.unwrap() {
            sink.delete(&o.key).await.unwrap();
        }
    }
    match sink.delete(&Key::parse("config.json").unwrap()).await {
        Err(e) if !e.is_not_found() => panic!("{e}"),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    run_suite("memory", "memory://", &SinkOptions::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_via_url() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(
        "local filesystem",
        &format!("file://{}", dir.path().display()),
        &SinkOptions::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_s3() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    run_suite("moto (S3)", &server.url, &server.options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_s3() {
    let Some(server) = servers::start_seaweedfs().await else {
        return;
    };
    run_suite("SeaweedFS (S3, signed)", &server.url, &server.options).await;
    wrong_secret_is_an_authentication_error(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_s3_host_runtime() {
    let Some(server) = servers::start_localstack_host().await else {
        return;
    };
    run_suite(
        "LocalStack (S3, host runtime)",
        &server.url,
        &server.options,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_blob() {
    let Some(server) = servers::start_azurite().await else {
        return;
    };
    run_suite("Azurite (Azure Blob)", &server.url, &server.options).await;
}

async fn wrong_secret_is_an_authentication_error(server: &Server) {
    let bad = "wrong-secret-6d2b91";
    let mut options = server.options.clone().with("secret_access_key", bad);
    options.max_retries = Some(0);
    let m = SnapshotManager::from_url(&server.url, &options, SnapshotConfig::default()).unwrap();
    let err = m.list_snapshots().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert_eq!(
        err.sink_kind(),
        Some(SinkErrorKind::Unauthenticated),
        "{text}"
    );
    assert!(!err.is_retryable(), "{text}");
    assert!(
        err.to_string()
            .ends_with("failed: authentication failed: check the access key and secret"),
        "{text}"
    );
    let mut chain = String::new();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        chain.push_str(&c.to_string());
        cause = c.source();
    }
    assert!(
        chain.contains("SignatureDoesNotMatch"),
        "the server's code stays in the source chain: {text}"
    );
    assert!(
        !text.contains(bad) && !text.contains(SECRET_KEY),
        "an error must never show a secret: {text}"
    );
    announce(&format!(
        "{}: a wrong secret key fails with: {err}",
        server.name
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_and_unreachable_endpoint_fail_clearly() {
    let Some(server) = servers::start_moto().await else {
        return;
    };
    let m = SnapshotManager::from_url(
        "s3://no-such-bucket-here/x",
        &server.options,
        SnapshotConfig::default(),
    )
    .unwrap();
    let err = m.list_snapshots().await.unwrap_err();
    assert!(
        err.to_string().ends_with(
            "in s3://no-such-bucket-here/x failed: the bucket or container does not exist"
        ),
        "{err}"
    );
    assert_eq!(
        err.sink_kind(),
        Some(SinkErrorKind::BucketNotFound),
        "{err}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the backend's error is kept as the source"
    );

    // A closed port: fails fast with the retry budget given, naming the operation.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = server
        .options
        .clone()
        .with("endpoint", format!("http://127.0.0.1:{closed}"))
        .with_max_retries(1)
        .with_retry_timeout(Duration::from_secs(5));
    let m = SnapshotManager::from_url(&server.url, &options, SnapshotConfig::default()).unwrap();
    let started = Instant::now();
    let err = m.list_snapshots().await.unwrap_err();
    assert!(matches!(err, Error::Sink { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("get of config.json in {} failed", server.url)),
        "{err}"
    );
    assert_eq!(err.sink_kind(), Some(SinkErrorKind::Transient), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn snapshot_repository_urls() {
    let ok = [
        "memory://",
        "s3://bucket",
        "s3://bucket/a/prefix",
        "s3a://bucket/p",
        "gs://bucket/prefix",
        "az://container/prefix",
        "azure://container/prefix",
        "https://account.blob.core.windows.net/container/prefix",
        "https://s3.eu-west-1.amazonaws.com/bucket/prefix",
    ];
    let creds = |url: &str| {
        let o = SinkOptions::new().with("metadata_endpoint", "http://127.0.0.1:1");
        if url.starts_with("s3") || url.contains("amazonaws") {
            o.with("region", "us-east-1")
                .with("access_key_id", "k")
                .with("secret_access_key", "s")
        } else if url.starts_with("gs") {
            SinkOptions::new().with("service_account_key", FAKE_GCS_KEY)
        } else if url.contains("az") || url.contains("windows") {
            SinkOptions::new()
                .with("account_name", "account")
                .with("access_key", "a2V5")
        } else {
            SinkOptions::new()
        }
    };
    for url in ok {
        let sink = sink_from_url(url, &creds(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(!sink.describe().is_empty());
    }
    let dir = tempfile::tempdir().unwrap();
    for local in [
        format!("file://{}/repo", dir.path().display()),
        dir.path().join("plain").display().to_string(),
    ] {
        sink_from_url(&local, &SinkOptions::new()).unwrap();
    }

    let bad: [(&str, SinkOptions, &str); 14] = [
        ("", SinkOptions::new(), "empty repository URL"),
        (
            "memory:/conformance",
            SinkOptions::new(),
            "starts with \"memory:\" but not \"memory://\": write memory://…",
        ),
        (
            "s3:/bucket/prefix",
            SinkOptions::new(),
            "write s3://… (or ./s3:… for a local folder of that name)",
        ),
        ("GS:bucket", SinkOptions::new(), "write GS://…"),
        (
            "ftp://host/x",
            SinkOptions::new(),
            "unsupported repository URL ftp://host/x",
        ),
        (
            "https://example.com/bucket",
            SinkOptions::new(),
            "plain HTTP(S) stores are not supported",
        ),
        (
            "s3://",
            SinkOptions::new(),
            "names no bucket or container: use s3://bucket/prefix",
        ),
        (
            "s3://bucket/p",
            SinkOptions::new().with("no_such_option", "1"),
            "unknown S3 option \"no_such_option\"",
        ),
        (
            "file://relative/path",
            SinkOptions::new(),
            "is not an absolute local path",
        ),
        (
            "memory://",
            SinkOptions::new().with_part_size(1024),
            "part_size must be at least",
        ),
        (
            "not a url://x",
            SinkOptions::new(),
            "invalid repository URL",
        ),
        (
            "s3://bucket/p",
            SinkOptions::new()
                .with("endpoint", "http://user:hunter2@127.0.0.1:9")
                .with("region", "x"),
            "the endpoint http://127.0.0.1:9/ is plain HTTP, which is refused unless allowed: add -o allow_http=true (or set AWS_ALLOW_HTTP=true)",
        ),
        (
            "/tmp/dakera-snapshot-options-test",
            SinkOptions::new().with("foo", "bar"),
            "a local repository takes no backend options (got \"foo\")",
        ),
        (
            "file:///tmp/dakera-snapshot-options-test",
            SinkOptions::new().with("region", "x"),
            "a local repository takes no backend options",
        ),
    ];
    for (url, options, expect) in bad {
        let err = sink_from_url(url, &options)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{url:?}: {err}");
    }
    // Secrets in the URL or the options never appear in errors or Debug output.
    let err = sink_from_url("s3://user:hunter2@/x", &SinkOptions::new())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    let opts = SinkOptions::new().with("secret_access_key", "hunter2");
    assert!(!format!("{opts:?}").contains("hunter2"));
    let err = sink_from_url(
        "gs://bucket/p",
        &SinkOptions::new().with("service_account_key", "{\"private_key\": \"hunter2\""),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    let s3 = sink_from_url("s3://bucket/pre/fix?x-secret=hunter2", &creds("s3://")).unwrap();
    assert!(!s3.describe().contains("hunter2"), "{}", s3.describe());
}

/// A service-account key made for these tests only (a throwaway RSA key, never registered
/// anywhere); its token URI is a closed loopback port.
const FAKE_GCS_KEY: &str = include_str!("fixtures/gcs-throwaway-key.json");

/// The full suite against real GCS, when `DAKERA_TEST_GCS_URL` (e.g. `gs://bucket/prefix`)
/// and the usual GOOGLE_* credentials are set. Otherwise says that it did not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_gcs_when_configured() {
    match std::env::var("DAKERA_TEST_GCS_URL") {
        Ok(url) => run_suite("Google Cloud Storage", &url, &SinkOptions::new()).await,
        Err(_) => announce("GCS: not run against a real bucket (set DAKERA_TEST_GCS_URL=gs://bucket/prefix to run it)"),
    }
}

// ----- the same suite against servers in containers (tests/common/containers.rs) ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_s3_in_a_container() {
    let Some(server) = containers::start_localstack().await else {
        return;
    };
    run_suite(&server.name, &server.url, &server.options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_s3_in_a_container() {
    let Some(server) = containers::start_seaweedfs().await else {
        return;
    };
    run_suite(&server.name, &server.url, &server.options).await;
    wrong_secret_is_an_authentication_error(&server).await;
}

/// Without an engine, a container test says it did not run, and fails when
/// `DAKERA_REQUIRE_CONTAINERS=1` demands containers (as CI does). Runs this binary's
/// LocalStack container test in a child, pointed at a socket nothing listens on.
#[test]
fn a_missing_engine_is_reported_and_fails_when_containers_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix://{}", dir.path().join("no-engine.sock").display());
    let run = |require: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["localstack_s3_in_a_container", "--exact", "--nocapture"])
            .env("DOCKER_HOST", &nowhere)
            .env("DAKERA_REQUIRE_CONTAINERS", require)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (passed, text) = run("0");
    assert!(passed, "{text}");
    assert!(
        text.contains("LocalStack 4.5 in a container: not run: no container engine answers"),
        "{text}"
    );
    let (passed, text) = run("1");
    assert!(!passed, "{text}");
    assert!(
        text.contains("DAKERA_REQUIRE_CONTAINERS=1 requires it"),
        "{text}"
    );
}

/// Runs where the engine has or can pull `minio/minio`; elsewhere it reports that the image
/// is not available (it cannot be built here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_s3_in_a_container() {
    let Some(server) = containers::start_minio().await else {
        return;
    };
    run_suite(&server.name, &server.url, &server.options).await;
    wrong_secret_is_an_authentication_error(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_are_reported_clearly() {
    let Some(server) = servers::start_seaweedfs().await else {
        return;
    };
    // No key at all: object_store would ask the cloud's instance metadata service for
    // credentials; point that at a closed loopback port so nothing leaves the machine.
    let options = SinkOptions::new()
        .with("endpoint", &server.endpoint)
        .with("region", "us-east-1")
        .with("allow_http", "true")
        .with("metadata_endpoint", "http://127.0.0.1:1")
        .with_max_retries(0)
        .with_retry_timeout(Duration::from_secs(5));
    let m = SnapshotManager::from_url(&server.url, &options, SnapshotConfig::default()).unwrap();
    let err = m.list_snapshots().await.unwrap_err();
    assert_eq!(err.sink_kind(), Some(SinkErrorKind::NoCredentials), "{err}");
    let err = err.to_string();
    announce(&format!("S3 with no credentials: {err}"));
    assert!(err.contains("no credentials"), "{err}");

    let err = sink_from_url("az://container/prefix", &SinkOptions::new())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    announce(&format!("Azure with no account: {err}"));
    assert!(err.contains("Azure repository"), "{err}");
}
