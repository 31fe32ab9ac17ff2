//! One sink for every object store: S3 and S3-compatible servers, Google Cloud Storage,
//! Azure Blob Storage and memory, through the `object_store` crate.

use super::{ByteStream, ObjectInfo, PutMode, SinkWriter, SnapshotSink};
use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::paths::Key;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::{Path, PathPart};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, WriteMultipart,
};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// Tuning of uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes per multipart part, at least [`MIN_PART_SIZE`]. Objects up to this size are
    /// written with one conditional put. Default 8 MiB.
    pub part_size: usize,
    /// Parts uploaded at once; memory is about `part_size × (max_concurrency + 1)`. Default 4.
    pub max_concurrency: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 8 << 20,
            max_concurrency: 4,
        }
    }
}

/// A [`SnapshotSink`] over any [`ObjectStore`], under a key prefix.
///
/// - Whole puts use `PutMode::Create` / `Overwrite` natively. If the backend answers that
///   conditional writes are not implemented, the sink logs a warning once and falls back to
///   head-then-put, which a concurrent writer can race (see `docs/BACKENDS.md`).
/// - Streaming uploads buffer up to one part; an object that fits is written with one put
///   (conditional if asked). Larger ones become multipart uploads with at most
///   `max_concurrency` parts in flight; `Create` is then checked with a head before the
///   upload starts (object_store has no conditional multipart completion). A failed, aborted
///   or dropped upload is aborted on the server, so no parts are left behind.
/// - Ranged gets check that the server returned exactly the range asked for.
#[derive(Debug, Clone)]
pub struct ObjectStoreSink {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    upload: UploadOptions,
    description: String,
    conditional_unsupported: Arc<AtomicBool>,
    /// Set when the store was built without explicit credentials: what to tell the user if
    /// fetching them (from instance metadata and the like) fails.
    credentials_hint: Option<&'static str>,
}

impl ObjectStoreSink {
    /// A sink over `store`, storing every key under `prefix` (may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        let description = format!("{store}/{prefix}");
        ObjectStoreSink {
            store,
            prefix,
            upload: UploadOptions::default(),
            description,
            conditional_unsupported: Arc::new(AtomicBool::new(false)),
            credentials_hint: None,
        }
    }

    /// A sink over an in-memory store (for tests and examples).
    pub fn memory() -> Self {
        let mut s = Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            Path::default(),
        );
        s.description = "memory://".to_string();
        s
    }

    /// Sets upload tuning; fails if the part size is below what S3 accepts.
    pub fn with_upload_options(mut self, upload: UploadOptions) -> Result<Self> {
        if upload.part_size < MIN_PART_SIZE || upload.max_concurrency == 0 {
            return Err(Error::Config(format!(
                "part_size must be at least {MIN_PART_SIZE} bytes and max_concurrency at least 1 (got {} and {})",
                upload.part_size, upload.max_concurrency
            )));
        }
        self.upload = upload;
        Ok(self)
    }

    /// Sets the description used in logs (must not contain credentials).
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Says how to provide credentials if the store, having none configured, fails to find
    /// any (for example from a cloud's instance metadata service).
    pub fn with_credentials_hint(mut self, hint: &'static str) -> Self {
        self.credentials_hint = Some(hint);
        self
    }

    /// Maps an object_store error at the sink boundary: operation and key attached, the
    /// kind classified once, the original error kept as the source.
    fn err(&self, op: SinkOp, key: &Key, e: object_store::Error) -> Error {
        let kind = classify(&e);
        if kind == SinkErrorKind::Transient || kind == SinkErrorKind::Other {
            if let Some(hint) = self.credentials_hint.filter(|_| is_credential_lookup(&e)) {
                let lookup = NoCredentials { hint, lookup: e };
                return Error::sink(op, key.as_str(), SinkErrorKind::NoCredentials, lookup)
                    .in_repository(&self.description);
            }
        }
        match kind {
            SinkErrorKind::NotFound if matches!(op, SinkOp::Get | SinkOp::Head) => {
                Error::ObjectNotFound {
                    key: key.to_string(),
                }
            }
            SinkErrorKind::AlreadyExists => conflict(key),
            kind => Error::sink(op, key.as_str(), kind, e).in_repository(&self.description),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key prefix.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn path(&self, key: &Key) -> Path {
        self.prefix
            .parts()
            .chain(key.segments().map(PathPart::from))
            .collect()
    }

    /// The key of a listed path, or `None` for paths outside the prefix or not valid keys.
    fn key_of(&self, path: &Path) -> Option<Key> {
        let rest = path.prefix_match(&self.prefix)?;
        let segments: Vec<String> = rest
            .map(|p| {
                percent_encoding::percent_decode_str(p.as_ref())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        Key::parse(segments.join("/")).ok()
    }

    /// The error of a failed get. A ranged get refused for a reason the error does not
    /// name (servers word a bad range differently) is checked against the object's size.
    async fn ranged_get_error(
        &self,
        key: &Key,
        range: Option<&Range<u64>>,
        e: object_store::Error,
    ) -> Error {
        let mapped = self.err(SinkOp::Get, key, e);
        if let (Some(r), Some(SinkErrorKind::Other | SinkErrorKind::InvalidRange)) =
            (range, mapped.sink_kind())
        {
            if let Ok(info) = self.head(key).await {
                if r.end > info.size {
                    return range_error(key, r, info.size);
                }
            }
        }
        mapped
    }

    async fn head_exists(&self, key: &Key, op: SinkOp) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(op, key, e)),
        }
    }

    async fn put_whole(&self, key: &Key, data: Bytes, mode: PutMode, op: SinkOp) -> Result<()> {
        let path = self.path(key);
        let native = match mode {
            PutMode::Create if !self.conditional_unsupported.load(Ordering::Relaxed) => {
                object_store::PutMode::Create
            }
            PutMode::Create => {
                if self.head_exists(key, op).await? {
                    return Err(conflict(key));
                }
                object_store::PutMode::Overwrite
            }
            PutMode::Overwrite => object_store::PutMode::Overwrite,
        };
        let opts = PutOptions {
            mode: native.clone(),
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) if matches!(native, object_store::PutMode::Create) => {
                if !self.conditional_unsupported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        repo = %self.description,
                        "this object store does not support conditional writes; falling back to head-then-put, \
                         which cannot stop two writers racing for one key"
                    );
                }
                Box::pin(self.put_whole(key, data, mode, op)).await
            }
            Err(e) => Err(self.err(op, key, e)),
        }
    }
}

fn conflict(key: &Key) -> Error {
    Error::Conflict {
        key: key.to_string(),
        reason: "an object with this key already exists".to_string(),
    }
}

/// No credentials were configured and looking them up (instance metadata and the like)
/// failed: what to set, with the failed lookup as the source.
#[derive(Debug, thiserror::Error)]
#[error("no credentials found: {hint}")]
struct NoCredentials {
    hint: &'static str,
    #[source]
    lookup: object_store::Error,
}

/// The kind of an object_store error: from its variant, then, for `Generic` errors, from
/// the HTTP layer's own classification of the failure, then from the service's error code.
fn classify(e: &object_store::Error) -> SinkErrorKind {
    use object_store::Error as E;
    match e {
        // A missing bucket answers 404 too: only its code tells it from a missing object.
        E::NotFound { .. } => match service_code(e).and_then(code_kind) {
            Some(SinkErrorKind::BucketNotFound) => SinkErrorKind::BucketNotFound,
            _ => SinkErrorKind::NotFound,
        },
        E::AlreadyExists { .. } | E::Precondition { .. } => SinkErrorKind::AlreadyExists,
        E::Unauthenticated { .. } => SinkErrorKind::Unauthenticated,
        // Some servers answer a bad signature with 403: the service's code tells which.
        E::PermissionDenied { .. } => match service_code(e).and_then(code_kind) {
            Some(SinkErrorKind::Unauthenticated) => SinkErrorKind::Unauthenticated,
            _ => SinkErrorKind::PermissionDenied,
        },
        E::NotSupported { .. } | E::NotImplemented { .. } => SinkErrorKind::NotSupported,
        E::UnknownConfigurationKey { .. } | E::InvalidPath { .. } => SinkErrorKind::Configuration,
        _ => {
            if let Some(http) = chain(e).find_map(|s| s.downcast_ref::<HttpError>()) {
                if matches!(
                    http.kind(),
                    HttpErrorKind::Connect
                        | HttpErrorKind::Timeout
                        | HttpErrorKind::Interrupted
                        | HttpErrorKind::Request
                ) {
                    return SinkErrorKind::Transient;
                }
            }
            service_code(e)
                .and_then(code_kind)
                .unwrap_or(SinkErrorKind::Other)
        }
    }
}

/// The errors in `e`'s source chain, `e` first.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The service's error code (`<Code>NoSuchBucket</Code>` in an S3 or Azure error body).
/// object_store keeps the response body only inside its error's text, so the one element is
/// read out of that text; no other decision looks at messages.
fn service_code(e: &object_store::Error) -> Option<String> {
    let text = chain(e)
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].trim().to_string())
}

/// What a service's error code means.
fn code_kind(code: String) -> Option<SinkErrorKind> {
    Some(match code.as_str() {
        "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "AuthenticationFailed"
        | "AuthorizationFailure"
        | "InvalidToken"
        | "ExpiredToken" => SinkErrorKind::Unauthenticated,
        "AccessDenied" | "AuthorizationPermissionMismatch" => SinkErrorKind::PermissionDenied,
        "NoSuchBucket" | "ContainerNotFound" => SinkErrorKind::BucketNotFound,
        "InvalidRange" => SinkErrorKind::InvalidRange,
        "SlowDown" | "ServiceUnavailable" | "InternalError" | "ServerBusy" | "RequestTimeout" => {
            SinkErrorKind::Transient
        }
        _ => return None,
    })
}

/// True when `e` is a failed lookup of credentials from a cloud's metadata service. object_store
/// reports those as generic errors naming the endpoint, so only that address tells them apart.
fn is_credential_lookup(e: &object_store::Error) -> bool {
    const METADATA_ENDPOINTS: [&str; 5] = [
        "/latest/api/token",
        "/latest/meta-data",
        "169.254.169.254",
        "metadata.google.internal",
        "/metadata/identity",
    ];
    let text = e.to_string();
    METADATA_ENDPOINTS.iter().any(|m| text.contains(m))
}

#[async_trait]
impl SnapshotSink for ObjectStoreSink {
    async fn put(&self, key: &Key, data: Bytes, mode: PutMode) -> Result<()> {
        self.put_whole(key, data, mode, SinkOp::Put).await
    }

    async fn put_streaming(&self, key: &Key, mode: PutMode) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(ObjectWriter {
            sink: self.clone(),
            key: key.clone(),
            mode,
            buffer: BytesMut::new(),
            multipart: None,
            written: 0,
        }))
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream> {
        let opts = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..Default::default()
        };
        if let Some(r) = &range {
            if r.start == r.end {
                // An empty range: the object must exist and be long enough.
                let size = self.head(key).await?.size;
                if r.end > size {
                    return Err(range_error(key, r, size));
                }
                return Ok(futures::stream::empty().boxed());
            }
        }
        let result = match self.store.get_opts(&self.path(key), opts).await {
            Ok(result) => result,
            Err(e) => return Err(self.ranged_get_error(key, range.as_ref(), e).await),
        };
        if let Some(r) = &range {
            if result.range != *r {
                return Err(range_error(key, r, result.meta.size));
            }
        }
        let (key, this) = (key.clone(), self.clone());
        Ok(result
            .into_stream()
            .map(move |c| c.map_err(|e| this.err(SinkOp::Get, &key, e)))
            .boxed())
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo> {
        let meta = self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| self.err(SinkOp::Head, key, e))?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: meta.size,
            last_modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
        })
    }

    fn list(&self, prefix: &Key) -> BoxStream<'static, Result<ObjectInfo>> {
        let this = self.clone();
        let prefix_key = prefix.clone();
        self.store
            .list(Some(&self.path(prefix)))
            .filter_map(move |item| {
                let r = match item {
                    Ok(meta) => this.key_of(&meta.location).map(|key| {
                        Ok(ObjectInfo {
                            key,
                            size: meta.size,
                            last_modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
                        })
                    }),
                    Err(e) => Some(Err(this.err(SinkOp::List, &prefix_key, e))),
                };
                futures::future::ready(r)
            })
            .boxed()
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(SinkOp::Delete, key, e)),
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

fn range_error(key: &Key, r: &Range<u64>, size: u64) -> Error {
    Error::sink(
        SinkOp::Get,
        key.as_str(),
        SinkErrorKind::InvalidRange,
        format!("{}..{} of {key}, which is {size} bytes", r.start, r.end),
    )
}

struct ObjectWriter {
    sink: ObjectStoreSink,
    key: Key,
    mode: PutMode,
    /// Data not yet handed to a multipart upload (at most one part).
    buffer: BytesMut,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl ObjectWriter {
    async fn start_multipart(&mut self) -> Result<()> {
        if self.mode == PutMode::Create
            && self
                .sink
                .head_exists(&self.key, SinkOp::PutStreaming)
                .await?
        {
            return Err(conflict(&self.key));
        }
        let upload = self
            .sink
            .store
            .put_multipart(&self.sink.path(&self.key))
            .await
            .map_err(|e| self.sink.err(SinkOp::PutStreaming, &self.key, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.sink.upload.part_size);
        w.put(std::mem::take(&mut self.buffer).freeze());
        self.multipart = Some(w);
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for ObjectWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        if let Some(w) = self.multipart.as_mut() {
            w.wait_for_capacity(self.sink.upload.max_concurrency)
                .await
                .map_err(|e| self.sink.err(SinkOp::PutStreaming, &self.key, e))?;
            w.put(data);
            return Ok(());
        }
        self.buffer.extend_from_slice(&data);
        if self.buffer.len() > self.sink.upload.part_size {
            self.start_multipart().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo> {
        match self.multipart.take() {
            None => {
                let data = std::mem::take(&mut self.buffer).freeze();
                self.sink
                    .put_whole(&self.key, data, self.mode, SinkOp::PutStreaming)
                    .await?;
            }
            Some(w) => {
                // `finish` aborts the upload itself if completing fails.
                w.finish()
                    .await
                    .map_err(|e| self.sink.err(SinkOp::PutStreaming, &self.key, e))?;
            }
        }
        Ok(ObjectInfo {
            key: self.key.clone(),
            size: self.written,
            last_modified_ms: 0,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(w) = self.multipart.take() {
            w.abort()
                .await
                .map_err(|e| self.sink.err(SinkOp::PutStreaming, &self.key, e))?;
        }
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // Dropped mid-upload (an error or a cancelled task): abort the parts on the server.
        if let Some(w) = self.multipart.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let key = self.key.clone();
                handle.spawn(async move {
                    if let Err(e) = w.abort().await {
                        tracing::warn!(key = %key, error = %e, "could not abort a dropped multipart upload");
                    }
                });
            }
        }
    }
}
