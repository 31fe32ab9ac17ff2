//! MinIO and LocalStack in Docker containers via testcontainers, used when a Docker engine
//! is reachable. Without one, `start_*` returns why, quickly, and the caller reports it.

use super::servers::BUCKET;
use dakera_snapshot::SinkOptions;
use testcontainers_modules::localstack::LocalStack;
use testcontainers_modules::minio::MinIO;
use testcontainers_modules::testcontainers::core::ExecCommand;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

/// A running container and how to reach its bucket; the container is removed on drop.
pub struct Container<I: testcontainers_modules::testcontainers::Image> {
    pub _container: ContainerAsync<I>,
    pub url: String,
    pub options: SinkOptions,
}

fn s3_options(port: u16, key: &str, secret: &str) -> SinkOptions {
    super::servers::s3_options_with(&format!("http://127.0.0.1:{port}"), key, secret)
}

/// MinIO (signature-checking, conditional writes supported).
pub async fn start_minio() -> Result<Container<MinIO>, String> {
    let c = MinIO::default().start().await.map_err(|e| e.to_string())?;
    let port = c
        .get_host_port_ipv4(9000)
        .await
        .map_err(|e| e.to_string())?;
    let mb = ExecCommand::new([
        "sh",
        "-c",
        &format!("mc alias set local http://127.0.0.1:9000 minioadmin minioadmin && mc mb --ignore-existing local/{BUCKET}"),
    ]);
    let res = c
        .exec(mb)
        .await
        .map_err(|e| format!("creating the bucket: {e}"))?;
    match res.exit_code().await {
        Ok(Some(0)) => {}
        other => return Err(format!("creating the bucket with mc failed: {other:?}")),
    }
    Ok(Container {
        _container: c,
        url: format!("s3://{BUCKET}"),
        options: s3_options(port, "minioadmin", "minioadmin"),
    })
}

/// LocalStack's S3.
pub async fn start_localstack() -> Result<Container<LocalStack>, String> {
    let c = LocalStack::default()
        .with_env_var("SERVICES", "s3")
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let port = c
        .get_host_port_ipv4(4566)
        .await
        .map_err(|e| e.to_string())?;
    let resp = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{port}/{BUCKET}"))
        .send()
        .await
        .map_err(|e| format!("creating the bucket: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("creating the bucket: HTTP {}", resp.status()));
    }
    Ok(Container {
        _container: c,
        url: format!("s3://{BUCKET}"),
        options: s3_options(port, "test", "test"),
    })
}
