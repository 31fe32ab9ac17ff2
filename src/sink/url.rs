//! Building a sink from a repository URL and options.

use super::{LocalFsSink, ObjectStoreSink, SnapshotSink, UploadOptions};
use crate::error::{Error, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, ObjectStoreScheme, RetryConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Options for [`sink_from_url`]. Everything has a default; the backend also reads its usual
/// environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), which options override.
///
/// `Debug` prints option keys but never their values, so credentials passed here cannot end
/// up in logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkOptions {
    /// Backend settings, by object_store configuration key: for S3 `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `session_token`, `allow_http`,
    /// `virtual_hosted_style_request`, `conditional_put`, ...; for GCS
    /// `service_account_path`, `service_account_key`, ...; for Azure `account_name`,
    /// `access_key`, `use_emulator`, ... An unknown key is an error.
    pub store: BTreeMap<String, String>,
    /// Multipart part size in bytes (default 8 MiB, at least 5 MiB).
    pub part_size: Option<usize>,
    /// Parts uploaded at once (default 4).
    pub max_concurrency: Option<usize>,
    /// Retries of a failed request (default 10; 0 disables retries).
    pub max_retries: Option<usize>,
    /// Give up retrying a request after this long (default 3 minutes).
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Option<Duration>,
    /// Timeout of one HTTP request (default 30 s, object_store's).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// Timeout to establish a connection (default 5 s, object_store's).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

impl fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkOptions")
            .field("store_keys", &self.store.keys().collect::<Vec<_>>())
            .field("part_size", &self.part_size)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl SinkOptions {
    /// No options: defaults and environment variables only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a backend option.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.store.insert(key.into(), value.into());
        self
    }

    /// Sets the multipart part size.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = Some(bytes);
        self
    }

    /// Sets the number of parts uploaded at once.
    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Sets retries per request.
    pub fn with_max_retries(mut self, n: usize) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Sets the overall retry deadline per request.
    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = Some(d);
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = Some(d);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    fn retry(&self) -> RetryConfig {
        let d = RetryConfig::default();
        RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            retry_timeout: self.retry_timeout.unwrap_or(d.retry_timeout),
        }
    }

    fn upload(&self) -> UploadOptions {
        let d = UploadOptions::default();
        UploadOptions {
            part_size: self.part_size.unwrap_or(d.part_size),
            max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency),
        }
    }

    /// Backend options plus the timeouts, as object_store configuration pairs.
    fn pairs(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .store
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(t) = self.request_timeout {
            v.push(("timeout".into(), humantime::format_duration(t).to_string()));
        }
        if let Some(t) = self.connect_timeout {
            v.push((
                "connect_timeout".into(),
                humantime::format_duration(t).to_string(),
            ));
        }
        v
    }
}

/// The URL without user info, query or fragment: safe to print.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn parse_key<K: std::str::FromStr>(backend: &str, key: &str) -> Result<K> {
    key.to_ascii_lowercase()
        .parse()
        .map_err(|_| Error::Config(format!("unknown {backend} option {key:?}")))
}

fn build_error(backend: &str, shown: &str, e: object_store::Error) -> Error {
    Error::Config(format!("cannot open the {backend} repository {shown}: {e}"))
}

/// Opens the repository at `url`:
///
/// | URL | sink |
/// |---|---|
/// | `/path`, `./path`, `file:///path` | [`LocalFsSink`] (folder created if missing) |
/// | `memory://` | in-memory [`ObjectStoreSink`], new and empty on every call |
/// | `s3://bucket/prefix`, `s3a://`, `https://s3.<region>.amazonaws.com/bucket/prefix`, R2 URLs | S3 or S3-compatible |
/// | `gs://bucket/prefix` | Google Cloud Storage |
/// | `az://container/prefix`, `azure://`, `abfs[s]://`, `https://<account>.blob.core.windows.net/container/prefix` | Azure Blob Storage |
///
/// Credentials and settings come from `options` and the usual environment variables. A bad
/// URL, an unknown scheme or option, or an incomplete configuration is an
/// [`Error::Config`] that never contains a secret. Missing buckets and wrong credentials are
/// reported by the first operation (try [`crate::SnapshotManager::list_snapshots`]).
pub fn sink_from_url(url: &str, options: &SinkOptions) -> Result<Arc<dyn SnapshotSink>> {
    if !url.contains("://") {
        if url.is_empty() {
            return Err(Error::Config("empty repository URL".into()));
        }
        if let Some(scheme) = scheme_without_slashes(url) {
            return Err(Error::Config(format!(
                "the repository URL starts with \"{scheme}:\" but not \"{scheme}://\": write {scheme}://… (or ./{scheme}:… for a local folder of that name)"
            )));
        }
        return local_sink(Path::new(url), options);
    }
    let (parsed, shown) = parse_repo_url(url)?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| {
        Error::Config(format!(
            "unsupported repository URL {shown}: {e}; use file://, memory://, s3://, gs:// or az://"
        ))
    })?;
    let sink = match scheme {
        ObjectStoreScheme::Local => {
            let path = parsed
                .to_file_path()
                .map_err(|_| Error::Config(format!("{shown} is not an absolute local path")))?;
            return local_sink(&path, options);
        }
        ObjectStoreScheme::Memory => ObjectStoreSink::memory(),
        scheme => cloud_sink(scheme, url, prefix, &shown, options)?,
    };
    Ok(Arc::new(
        sink.with_upload_options(options.upload())?
            .with_description(shown),
    ))
}

/// The scheme of a string that starts like a repository URL (`s3:`, `memory:`, …) but lacks
/// the `//` after it (`s3:/bucket`, `memory:`): a typo, which as a local path would quietly
/// create a folder named after the scheme in the current directory.
fn scheme_without_slashes(url: &str) -> Option<&str> {
    const SCHEMES: [&str; 12] = [
        "file", "memory", "s3", "s3a", "gs", "az", "azure", "adl", "abfs", "abfss", "http", "https",
    ];
    let (scheme, _) = url.split_once(':')?;
    SCHEMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(scheme))
        .map(|_| scheme)
}

/// A local directory; it takes no backend options.
fn local_sink(path: &Path, options: &SinkOptions) -> Result<Arc<dyn SnapshotSink>> {
    if let Some(key) = options.store.keys().next() {
        return Err(Error::Config(format!(
            "a local repository takes no backend options (got {key:?})"
        )));
    }
    Ok(Arc::new(LocalFsSink::new(path)?))
}

/// Parses a repository URL and checks what object_store's parser lets through: a cloud
/// URL names a bucket, a `file://` URL an absolute path. Returns it with its redacted form.
fn parse_repo_url(url: &str) -> Result<(Url, String)> {
    let parsed = Url::parse(url).map_err(|e| {
        let scheme = url.split("://").next().unwrap_or_default();
        Error::Config(format!("invalid repository URL ({scheme}://...): {e}"))
    })?;
    let shown = redact_url(&parsed);
    let cloud = matches!(
        parsed.scheme(),
        "s3" | "s3a" | "gs" | "az" | "azure" | "adl" | "abfs" | "abfss"
    );
    if cloud && parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::Config(format!(
            "repository URL {shown} names no bucket or container: use {}://bucket/prefix",
            parsed.scheme()
        )));
    }
    if parsed.scheme() == "file"
        && parsed
            .host_str()
            .is_some_and(|h| !h.is_empty() && h != "localhost")
    {
        return Err(Error::Config(format!(
            "{shown} is not an absolute local path: use file:///absolute/path (three slashes)"
        )));
    }
    Ok((parsed, shown))
}

/// The three clouds differ only in their builder and key types: build from the environment
/// and the URL, apply options (unknown keys are errors), and remember whether any
/// credentials were given, to explain a failed lookup of implicit ones.
macro_rules! cloud_sink {
    ($url:expr, $prefix:expr, $shown:expr, $options:expr, $builder:ty, $key:ident, $name:literal, [$($cred:ident),*], $hint:literal, $check:expr) => {{
        let mut b = <$builder>::from_env().with_url($url).with_retry($options.retry());
        for (k, v) in $options.pairs() {
            b = b.with_config(parse_key::<$key>($name, &k)?, v);
        }
        $check(&b)?;
        let explicit = [$($key::$cred),*]
            .iter()
            .any(|k| b.get_config_value(k).is_some_and(|v| !v.is_empty() && v != "false"));
        let store = b.build().map_err(|e| build_error($name, $shown, e))?;
        let sink = ObjectStoreSink::new(Arc::new(store), $prefix);
        if explicit { sink } else { sink.with_credentials_hint($hint) }
    }};
}

/// A plain `http://` endpoint needs `allow_http`: object_store would refuse it later with
/// "URL scheme is not allowed", which does not say what to set.
fn plain_http_allowed(
    endpoint: Option<String>,
    allow_http: Option<String>,
    env_hint: &str,
) -> Result<()> {
    let plain = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let allowed = allow_http.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if plain && !allowed {
        let shown = endpoint
            .and_then(|e| Url::parse(&e).ok())
            .map_or_else(|| "http://...".to_string(), |u| redact_url(&u));
        return Err(Error::Config(format!(
            "the endpoint {shown} is plain HTTP, which is refused unless allowed: add -o allow_http=true (or set {env_hint})"
        )));
    }
    Ok(())
}

/// An S3, GCS or Azure sink.
fn cloud_sink(
    scheme: ObjectStoreScheme,
    url: &str,
    prefix: object_store::path::Path,
    shown: &str,
    options: &SinkOptions,
) -> Result<ObjectStoreSink> {
    Ok(match scheme {
        ObjectStoreScheme::AmazonS3 => cloud_sink!(
            url, prefix, shown, options,
            AmazonS3Builder,
            AmazonS3ConfigKey,
            "S3",
            [AccessKeyId, SkipSignature, WebIdentityTokenFile, ContainerCredentialsRelativeUri, ContainerCredentialsFullUri],
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the access_key_id and secret_access_key options)",
            |b: &AmazonS3Builder| plain_http_allowed(
                b.get_config_value(&AmazonS3ConfigKey::Endpoint),
                b.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)),
                "AWS_ALLOW_HTTP=true"
            )
        ),
        ObjectStoreScheme::GoogleCloudStorage => cloud_sink!(
            url, prefix, shown, options,
            GoogleCloudStorageBuilder,
            GoogleConfigKey,
            "GCS",
            [ServiceAccount, ServiceAccountKey, ApplicationCredentials, SkipSignature],
            "set GOOGLE_SERVICE_ACCOUNT to a service-account key file (or the service_account_key option)",
            |_: &GoogleCloudStorageBuilder| Ok::<(), Error>(())
        ),
        ObjectStoreScheme::MicrosoftAzure => cloud_sink!(
            url, prefix, shown, options,
            MicrosoftAzureBuilder,
            AzureConfigKey,
            "Azure",
            [AccessKey, SasKey, Token, ClientSecret, FederatedTokenFile, UseEmulator, UseAzureCli, SkipSignature],
            "set AZURE_STORAGE_ACCOUNT_KEY (or the access_key option), a SAS token, or client credentials",
            |_: &MicrosoftAzureBuilder| Ok::<(), Error>(())
        ),
        _ => {
            return Err(Error::Config(format!(
                "unsupported repository URL {shown}: plain HTTP(S) stores are not supported; \
                 for an S3-compatible server use s3://bucket/prefix with the `endpoint` option"
            )))
        }
    })
}
