//! S3 servers in containers, started through testcontainers on whichever Docker-API engine
//! answers: Docker, or podman's compatible API (`bash localstack/containers.sh up` sets that
//! up on a machine without Docker or a registry).
//!
//! Each `start_*` returns a [`Server`] whose drop removes the container, or `None` after
//! announcing why the server did not run. With `DAKERA_REQUIRE_CONTAINERS=1` (set in CI), a
//! LocalStack or SeaweedFS container that cannot run fails the test instead. MinIO's image
//! cannot be built without a MinIO server binary, which no registry we reach has, so MinIO
//! runs where the engine has or can pull `minio/minio` and otherwise reports
//! "not run: image not available", whatever the variable says.
//!
//! Ports are published on 127.0.0.1 only, by a host-config modifier: testcontainers asks for
//! every port on all interfaces, and podman 4.3 reports such ports without a host address,
//! which testcontainers then cannot see (docs/DECISIONS.md, "Container tests on podman").

use super::servers::{self, announce, Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use std::collections::HashMap;
use std::time::Duration;
use testcontainers_modules::localstack::LocalStack;
use testcontainers_modules::minio::MinIO;
use testcontainers_modules::testcontainers::bollard::models::PortBinding;
use testcontainers_modules::testcontainers::bollard::Docker;
use testcontainers_modules::testcontainers::core::{ExecCommand, IntoContainerPort, WaitFor};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{
    ContainerAsync, ContainerRequest, GenericImage, Image, ImageExt,
};

/// The label every container started here carries; `containers.sh down` removes what a
/// killed test binary left behind by it.
const TEST_LABEL: &str = "dev.dakera-snapshot.tests";

/// The SeaweedFS image `containers.sh up` builds (localstack/images/seaweedfs.Containerfile).
const SEAWEEDFS_IMAGE: (&str, &str) = ("localhost/dakera-test/seaweedfs", "test");

/// Why a container did not run, and whether that may be reported instead of failing.
fn not_run<T>(what: &str, why: &str, required: bool) -> Option<T> {
    let demanded = std::env::var("DAKERA_REQUIRE_CONTAINERS").is_ok_and(|v| v == "1");
    if required && demanded {
        panic!(
            "{what} in a container: {why}.\nDAKERA_REQUIRE_CONTAINERS=1 requires it: run \
             `bash localstack/containers.sh up` (podman) or start Docker."
        );
    }
    announce(&format!("{what} in a container: not run: {why}"));
    None
}

/// The engine that answers, named as the test output names it ("podman API 4.3.1",
/// "Docker 27.3.1"), with a client for looking at its images.
struct Engine {
    name: String,
    client: Docker,
}

async fn engine() -> Result<Engine, String> {
    let absent = |e: &dyn std::fmt::Display| {
        format!(
            "no container engine answers ({e}; `bash localstack/containers.sh up` starts \
             podman's Docker API)"
        )
    };
    let client = Docker::connect_with_defaults().map_err(|e| absent(&e))?;
    let asked = tokio::time::timeout(Duration::from_secs(10), client.version()).await;
    let version = match asked {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(absent(&e)),
        Err(_) => return Err(absent(&"no answer within 10 s")),
    };
    let podman = version
        .components
        .iter()
        .flatten()
        .any(|c| c.name.to_lowercase().contains("podman"));
    let number = version.version.unwrap_or_else(|| "?".into());
    let name = if podman {
        format!("podman API {number}")
    } else {
        format!("Docker {number}")
    };
    Ok(Engine { name, client })
}

/// Publishes `port` on 127.0.0.1 only, on a port the engine picks.
fn on_loopback<I: Image>(request: ContainerRequest<I>, port: u16) -> ContainerRequest<I> {
    request
        .with_label(TEST_LABEL, "1")
        .with_host_config_modifier(move |host| {
            host.publish_all_ports = Some(false);
            host.port_bindings = Some(HashMap::from([(
                format!("{port}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: None,
                }]),
            )]));
        })
}

/// Starts `request` on the engine and returns the container and the loopback port its
/// `port` is published on; `None` (after [`not_run`]) when it cannot.
async fn start<I: Image>(
    what: &str,
    request: ContainerRequest<I>,
    port: u16,
    required: bool,
) -> Option<(Engine, ContainerAsync<I>, u16)> {
    let engine = match engine().await {
        Ok(e) => e,
        Err(why) => return not_run(what, &why, required),
    };
    let image = format!("{}:{}", request.image().name(), request.image().tag());
    let present = engine.client.inspect_image(&image).await.is_ok();
    let container = match on_loopback(request, port).start().await {
        Ok(c) => c,
        Err(e) if !present => {
            let why = format!(
                "image not available ({image} is not in {}'s store and could not be pulled: \
                 {e})",
                engine.name
            );
            return not_run(what, &why, required);
        }
        Err(e) => return not_run(what, &format!("it did not start: {e}"), required),
    };
    let host_port = match container.get_host_port_ipv4(port).await {
        Ok(p) => p,
        Err(e) => {
            return not_run(
                what,
                &format!("its port {port} is not published: {e}"),
                required,
            )
        }
    };
    assert_on_loopback_only(what, &engine, &container).await;
    Some((engine, container, host_port))
}

/// Tests listen on loopback only: every port the engine published for the container must
/// be bound to 127.0.0.1.
async fn assert_on_loopback_only<I: Image>(
    what: &str,
    engine: &Engine,
    container: &ContainerAsync<I>,
) {
    let inspected = engine
        .client
        .inspect_container(container.id(), None)
        .await
        .unwrap_or_else(|e| panic!("{what}: inspecting its container failed: {e}"));
    let ports = inspected.network_settings.and_then(|n| n.ports);
    let bindings: Vec<PortBinding> = ports
        .into_iter()
        .flatten()
        .flat_map(|(_, b)| b.into_iter().flatten())
        .collect();
    assert!(
        !bindings.is_empty(),
        "{what}: the engine reports no published port"
    );
    for b in bindings {
        assert_eq!(
            b.host_ip.as_deref(),
            Some("127.0.0.1"),
            "{what}: a port is published beyond loopback: {b:?}"
        );
    }
}

fn described(what: &str, engine: &Engine) -> String {
    format!("{what} in a container via testcontainers ({})", engine.name)
}

/// LocalStack 4.5's S3, the image testcontainers-modules' LocalStack module runs (on podman,
/// built from PyPI's localstack-core 4.5.0 by `containers.sh up`).
pub async fn start_localstack() -> Option<Server> {
    const WHAT: &str = "LocalStack 4.5";
    let request = LocalStack::default().with_env_var("SERVICES", "s3");
    let (engine, container, port) = start(WHAT, request, 4566, true).await?;
    let endpoint = format!("http://127.0.0.1:{port}");
    servers::put_bucket(&endpoint, WHAT, Duration::from_secs(60)).await;
    Some(Server::container(
        described(WHAT, &engine),
        endpoint,
        container,
    ))
}

/// SeaweedFS's `weed mini` with signature checking on: requests must be signed with the
/// test credentials.
pub async fn start_seaweedfs() -> Option<Server> {
    const WHAT: &str = "SeaweedFS";
    let image = GenericImage::new(SEAWEEDFS_IMAGE.0, SEAWEEDFS_IMAGE.1)
        .with_exposed_port(8333.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Press Ctrl+C to stop"));
    let request = image
        .with_env_var("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .with_env_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .with_cmd([
            "weed",
            "mini",
            "-dir=/data",
            "-ip=127.0.0.1",
            "-ip.bind=0.0.0.0",
            "-webdav=false",
            "-admin.ui=false",
            &format!("-bucket={BUCKET}"),
            "-s3.port=8333",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]);
    let (engine, container, port) = start(WHAT, request, 8333, true).await?;
    let server = Server::container(
        described(WHAT, &engine),
        format!("http://127.0.0.1:{port}"),
        container,
    );
    if let Err(e) = servers::wait_until_listable(&server, Duration::from_secs(60)).await {
        panic!("{} never became ready: {e}", server.name);
    }
    Some(server)
}

/// MinIO, where the engine has or can pull its image (signature-checking, conditional
/// writes supported).
pub async fn start_minio() -> Option<Server> {
    const WHAT: &str = "MinIO";
    let request = MinIO::default()
        .with_env_var("MINIO_ROOT_USER", ACCESS_KEY)
        .with_env_var("MINIO_ROOT_PASSWORD", SECRET_KEY);
    let (engine, container, port) = start(WHAT, request, 9000, false).await?;
    let make_bucket = ExecCommand::new([
        "sh",
        "-c",
        &format!(
            "mc alias set local http://127.0.0.1:9000 {ACCESS_KEY} {SECRET_KEY} \
             && mc mb --ignore-existing local/{BUCKET}"
        ),
    ]);
    let made = match container.exec(make_bucket).await {
        Ok(res) => res.exit_code().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if made != Ok(Some(0)) {
        panic!("{WHAT} started but mc did not create the bucket: {made:?}");
    }
    Some(Server::container(
        described(WHAT, &engine),
        format!("http://127.0.0.1:{port}"),
        container,
    ))
}
