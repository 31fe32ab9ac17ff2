//! The data source and restore target: the [`VectorStorage`] trait and [`InMemoryStorage`].
//!
//! The trait stays close to the original dakera-storage one (upsert, get, get_all, delete,
//! namespaces, dimension, count) and adds [`VectorStorage::scan`], a paginated read in id
//! order, so a snapshot never holds a namespace in memory whole.

mod memory;

pub use memory::InMemoryStorage;

use crate::error::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A namespace name.
pub type NamespaceId = String;

/// One stored vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vector {
    /// Unique id inside its namespace.
    pub id: String,
    /// The embedding. Every vector of a namespace has the same, non-zero length.
    pub values: Vec<f32>,
    /// Optional JSON metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Time to live requested at upsert, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Absolute expiry, unix seconds. Stores set it from `ttl_seconds` at upsert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Vector {
    /// A vector with no metadata and no TTL.
    pub fn new(id: impl Into<String>, values: Vec<f32>) -> Self {
        Vector {
            id: id.into(),
            values,
            metadata: None,
            ttl_seconds: None,
            expires_at: None,
        }
    }

    /// Adds metadata.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Adds a TTL; the store computes `expires_at` at upsert.
    pub fn with_ttl(mut self, ttl_seconds: u64) -> Self {
        self.ttl_seconds = Some(ttl_seconds);
        self
    }

    /// True if the vector has an expiry at or before `now_secs`.
    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_secs)
    }
}

/// A vector store that can be snapshotted and restored into.
///
/// Contract:
/// - Every vector in a namespace has the namespace's dimension; the first upsert into an empty
///   namespace sets it, and `upsert` rejects a mismatch with [`crate::Error::DimensionMismatch`]
///   (and zero-length vectors with [`crate::Error::InvalidInput`]) without storing any of the
///   batch.
/// - Reads (`get`, `get_all`, `scan`, `count`) never return vectors whose `expires_at` is in
///   the past.
/// - `scan` (and `scan_each`, which lends what `scan` would return) returns vectors in
///   ascending byte order of their ids, starting strictly after `after`; an empty page means
///   the end. Snapshots are written in this order, which makes their per-namespace digests
///   reproducible.
/// - Operations on a namespace that does not exist fail with
///   [`crate::Error::NamespaceNotFound`], except `ensure_namespace`, `namespace_exists` and
///   `delete_namespace`.
#[async_trait]
pub trait VectorStorage: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces vectors; returns how many were written.
    async fn upsert(&self, namespace: &str, vectors: Vec<Vector>) -> Result<usize>;

    /// The vectors with these ids that exist and have not expired.
    async fn get(&self, namespace: &str, ids: &[String]) -> Result<Vec<Vector>>;

    /// Removes vectors by id; returns how many existed.
    async fn delete(&self, namespace: &str, ids: &[String]) -> Result<usize>;

    /// True if the namespace exists.
    async fn namespace_exists(&self, namespace: &str) -> Result<bool>;

    /// Creates the namespace if it does not exist.
    async fn ensure_namespace(&self, namespace: &str) -> Result<()>;

    /// All namespace names, sorted.
    async fn list_namespaces(&self) -> Result<Vec<NamespaceId>>;

    /// The namespace's dimension, or `None` while it has never held a vector.
    async fn dimension(&self, namespace: &str) -> Result<Option<usize>>;

    /// Number of live (unexpired) vectors.
    async fn count(&self, namespace: &str) -> Result<usize>;

    /// Removes a namespace and its vectors; returns whether it existed.
    async fn delete_namespace(&self, namespace: &str) -> Result<bool>;

    /// Up to `limit` live vectors with ids greater than `after`, in ascending id order.
    async fn scan(&self, namespace: &str, after: Option<&str>, limit: usize)
        -> Result<Vec<Vector>>;

    /// Lends up to `limit` live vectors with ids greater than `after` to `visit`, one at a
    /// time, in ascending id order (what [`Self::scan`] returns, without handing them over);
    /// returns how many it lent, 0 at the end.
    ///
    /// Snapshots read through this. A store that holds its vectors in memory should lend
    /// them in place: the snapshot copies what it needs into its own buffers, and a clone of
    /// each vector (its id, values and metadata tree), freed right after, was most of a
    /// snapshot's time at thousands of small namespaces. The default calls `scan`.
    async fn scan_each(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut (dyn for<'v> FnMut(&'v Vector) + Send),
    ) -> Result<usize> {
        let page = self.scan(namespace, after, limit).await?;
        page.iter().for_each(&mut *visit);
        Ok(page.len())
    }

    /// A token naming the namespace's current live content, for stores that keep one (a
    /// version counter, a digest maintained on write). Equal tokens from this store promise
    /// equal content (`scan` returns the same vectors), so an incremental snapshot records a
    /// namespace whose token matches the parent's as unchanged without reading it. A token
    /// must change whenever the live content may have changed (writes, deletes, expiry), and
    /// must never name other content later, across restarts too (a random store epoch plus a
    /// counter will do). At most 128 printable ASCII characters; anything else is ignored.
    /// `None`, the default: incrementals compare content digests, which reads the namespace.
    async fn change_token(&self, namespace: &str) -> Result<Option<String>> {
        let _ = namespace;
        Ok(None)
    }

    /// A handle to this same store that a snapshot's own tasks can keep: reads through it
    /// see what reads through `self` see. With one, a snapshot of many small namespaces reads
    /// several of them at once and keeps every core busy: it calls [`Self::scan_each`] and
    /// [`Self::change_token`] on the handle from its worker threads, each call's future
    /// driven there by [`tokio::runtime::Handle::block_on`] on the caller's runtime (so
    /// its I/O and timers work, and a future dropped mid-read must leave the store sound, as
    /// any cancelled read must).
    ///
    /// `None`, the default: namespaces are read one at a time, in name order, by the task
    /// that creates the snapshot. A store that can only be read in order (a stream) keeps it.
    /// A store that is a cheap handle already (a client around a connection pool) returns
    /// `Some(Arc::new(self.clone()))`.
    fn shared_handle(&self) -> Option<std::sync::Arc<dyn VectorStorage>> {
        None
    }

    /// Every live vector of the namespace, in id order. Holds the namespace in memory: the
    /// snapshot code never calls it, it exists for API compatibility and small tools.
    async fn get_all(&self, namespace: &str) -> Result<Vec<Vector>> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map(|v: &Vector| v.id.clone());
            let page = self.scan(namespace, after.as_deref(), 4096).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }
}
