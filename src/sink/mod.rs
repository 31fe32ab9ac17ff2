//! Where snapshot bytes go: the [`SnapshotSink`] trait and its implementations.
//!
//! A sink is a flat key-value store of immutable objects under validated [`Key`]s. The
//! manager only ever talks to a sink through this trait, so a new backend, or a wrapper that
//! injects faults or counts calls, plugs in without touching the snapshot logic.

#[cfg(feature = "fault-injection")]
pub mod fault;
mod local;
mod object;
mod url;

pub use local::LocalFsSink;
pub use object::{ObjectStoreSink, UploadOptions, MIN_PART_SIZE};
pub use url::{redact_url, sink_from_url, SinkOptions};

use crate::error::Result;
use crate::paths::Key;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use std::ops::Range;

/// A stream of byte chunks read from a sink.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What a sink knows about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: Key,
    /// Its size in bytes.
    pub size: u64,
    /// Last modification, unix milliseconds (0 if the backend cannot tell).
    pub last_modified_ms: u64,
}

/// How a put treats an existing object under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`crate::Error::Conflict`] if an object with the key exists. Atomic: of two
    /// concurrent creates of one key, exactly one succeeds.
    Create,
}

/// Object storage for snapshot repositories.
///
/// # Contract
/// - **Atomic visibility.** An object appears under its key whole or not at all: a put that
///   fails, a streaming upload that is aborted or dropped, or a process that crashes
///   mid-write never leaves a partial object under the final key.
/// - **Create-if-absent.** [`PutMode::Create`] is atomic where the backend supports it (the
///   local filesystem does, via `link(2)`); the snapshot commit protocol relies on it.
/// - **Not found.** `get` and `head` of a missing key fail with
///   [`crate::Error::ObjectNotFound`]; `delete` of a missing key succeeds (deletes are
///   idempotent).
/// - **Listing.** `list` yields every object whose key lies under `prefix` (as a folder), in
///   no particular order, possibly paginated by the backend; callers sort. A missing prefix
///   lists nothing. A listing error is yielded as an `Err` item, never as a short listing.
/// - **Ranges.** `get` with a range returns exactly those bytes; a range past the end of the
///   object is an error, never a silently shorter read.
#[async_trait]
pub trait SnapshotSink: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a whole object.
    async fn put(&self, key: &Key, data: Bytes, mode: PutMode) -> Result<()>;

    /// Starts a streaming upload; the object becomes visible only when
    /// [`SinkWriter::finish`] succeeds.
    async fn put_streaming(&self, key: &Key, mode: PutMode) -> Result<Box<dyn SinkWriter>>;

    /// Reads an object, or the byte `range` of it, as a stream of chunks.
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream>;

    /// Size and modification time of an object.
    async fn head(&self, key: &Key) -> Result<ObjectInfo>;

    /// Every object under `prefix`.
    fn list(&self, prefix: &Key) -> BoxStream<'static, Result<ObjectInfo>>;

    /// Removes an object; succeeds if it is already absent.
    async fn delete(&self, key: &Key) -> Result<()>;

    /// A short, credential-free description for logs ("file:///var/backups").
    fn describe(&self) -> String;

    /// Removes leftovers of uploads that never finished (temporary files, incomplete
    /// multipart uploads) last touched before `older_than_ms` (unix milliseconds); returns
    /// how many were removed. Sinks that cannot leave any return `Ok(0)`.
    async fn remove_incomplete(&self, older_than_ms: u64) -> Result<usize> {
        let _ = older_than_ms;
        Ok(0)
    }

    /// An open local file holding the object, for sinks that have one (the local
    /// filesystem): readers then use positional reads on it instead of copying the object
    /// through a stream. Objects are immutable, and an open file stays readable even if the
    /// object is deleted meanwhile. `Ok(None)` for sinks without local files.
    async fn open_local(&self, key: &Key) -> Result<Option<std::fs::File>> {
        let _ = key;
        Ok(None)
    }
}

/// An upload in progress. Dropping it without `finish` discards it.
#[async_trait]
pub trait SinkWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Makes the object durable and visible under its key; returns what was stored.
    async fn finish(self: Box<Self>) -> Result<ObjectInfo>;

    /// Discards the upload and everything written to it.
    async fn abort(self: Box<Self>) -> Result<()>;

    /// Whether the bytes of a write may stay held after it returns (in an upload part still
    /// being sent): then a blob's writer keeps fewer chunks in flight, to bound memory. The
    /// default says yes; a sink done with them when `write` returns (the local one) says no.
    fn holds_written_bytes(&self) -> bool {
        true
    }
}

/// Conveniences every sink gets for free.
#[async_trait]
pub trait SinkExt: SnapshotSink {
    /// Reads an object (or a range of it) whole into memory.
    async fn get_bytes(&self, key: &Key, range: Option<Range<u64>>) -> Result<Bytes> {
        let chunks: Vec<Bytes> = self.get(key, range).await?.try_collect().await?;
        Ok(match chunks.len() {
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(chunks.concat()),
        })
    }

    /// Every key under `prefix`, collected; fails if any page of the listing fails.
    async fn list_all(&self, prefix: &Key) -> Result<Vec<ObjectInfo>> {
        self.list(prefix).try_collect().await
    }
}

impl<S: SnapshotSink + ?Sized> SinkExt for S {}
