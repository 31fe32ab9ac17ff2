//! # dakera-snapshot
//!
//! Point-in-time snapshots of a vector store, kept in a local directory or object storage,
//! restored, verified and expired.
//!
//! The layers, top to bottom:
//! - [`SnapshotManager`]: the use cases (create full and incremental snapshots, restore,
//!   list, verify, delete, retention, garbage collection).
//! - The format (crate-internal): the versioned blob codec (independent gzip members of
//!   binary framed vectors) and the JSON sidecar schema ([`SnapshotMetadata`]).
//!   `docs/FORMAT.md` documents both byte by byte.
//! - [`sink`]: where bytes go. [`SnapshotSink`] is the trait; [`LocalFsSink`] writes
//!   crash-safely to a directory; [`ObjectStoreSink`] serves S3, S3-compatible servers, GCS,
//!   Azure and memory; [`sink_from_url`] opens any of them from a URL.
//! - [`storage`]: the [`VectorStorage`] trait a store implements to be snapshotted and
//!   restored into, and [`InMemoryStorage`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> dakera_snapshot::Result<()> {
//! use dakera_snapshot::{CreateOptions, InMemoryStorage, RestoreOptions, SnapshotConfig,
//!     SnapshotManager, Vector, VectorStorage};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let manager = SnapshotManager::local(dir.path(), SnapshotConfig::default())?;
//!
//! let store = InMemoryStorage::new();
//! store.ensure_namespace("docs").await?;
//! store.upsert("docs", vec![Vector::new("a", vec![0.1, 0.2, 0.3])]).await?;
//!
//! let snap = manager.create_snapshot(&store, CreateOptions::described("nightly")).await?;
//! manager.verify_snapshot(snap.id.as_str()).await?;
//!
//! let restored = InMemoryStorage::new();
//! let result = manager.restore_snapshot(&restored, snap.id.as_str(), &RestoreOptions::new()).await?;
//! assert_eq!(result.vectors_restored, 1);
//! assert_eq!(restored.get_all("docs").await?, store.get_all("docs").await?);
//! # Ok(())
//! # }
//! ```
//!
//! ## The command-line tool
//!
//! The `dakera-snapshot` binary (feature `cli`, on by default) is a thin shell over this
//! library: `list`, `show`, `verify`, `export`, `import`, `delete`, `prune`, `gc`, `copy`,
//! `diff`, each a call of [`SnapshotManager`]. `cargo install --locked --path .`, then
//! `dakera-snapshot --repo ./backups list`; the README documents every command.
//!
//! ## Repository URLs and options
//!
//! [`sink_from_url`] (and [`SnapshotManager::from_url`]) open a repository from a URL: a
//! plain path or `file:///abs/path` (the crash-safe [`LocalFsSink`]), `s3://bucket/prefix`
//! (also S3-compatible servers, with the `endpoint` option), `gs://bucket/prefix`,
//! `az://container/prefix`, or `memory://`. Credentials and settings come from the usual
//! `AWS_*`, `GOOGLE_*` and `AZURE_*` variables, or from [`SinkOptions`] (the keys of
//! object_store's builders, e.g. `region`, `endpoint`, `allow_http`); an unknown key is an
//! error, and no value is ever printed.
//!
//! ```
//! use dakera_snapshot::{sink_from_url, SinkOptions};
//! let options = SinkOptions::new()
//!     .with("endpoint", "http://127.0.0.1:9000")
//!     .with("allow_http", "true")
//!     .with("region", "us-east-1");
//! let sink = sink_from_url("s3://backups/dakera", &options).unwrap(); // nothing is contacted yet
//! assert_eq!(sink.describe(), "s3://backups/dakera");
//! ```
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `cli` | yes | the `dakera-snapshot` binary (clap, indicatif, tracing-subscriber) |
//! | `fault-injection` | no | `sink::fault::FaultySink`: fail, delay, hang or truncate chosen sink calls |
//! | `test-util` | no | `testing`: the sink conformance suite, test-data helpers, `id::SeededRandom` |
//!
//! ## Snapshotting your own store
//!
//! Implement [`VectorStorage`] for it. The snapshot side only reads (`list_namespaces`,
//! `dimension`, `count`, `scan` in id order); restore writes (`ensure_namespace`,
//! `delete_namespace`, `upsert`). A store that holds its vectors in memory should also
//! implement [`VectorStorage::scan_each`], which lends them to the snapshot in place of
//! `scan`'s clones (at 10,000 namespaces of 20 vectors a create ran 1.6× faster with it), and
//! one that can tell cheaply what changed, [`VectorStorage::change_token`]. A minimal store
//! over a map:
//!
//! ```
//! use async_trait::async_trait;
//! use dakera_snapshot::{Error, Result, Vector, VectorStorage};
//! use std::collections::BTreeMap;
//! use std::sync::Mutex;
//!
//! /// namespace -> (dimension, vectors by id)
//! #[derive(Debug, Default)]
//! struct MapStore(Mutex<BTreeMap<String, (Option<usize>, BTreeMap<String, Vector>)>>);
//!
//! impl MapStore {
//!     fn with_ns<T>(&self, ns: &str, f: impl FnOnce(&mut (Option<usize>, BTreeMap<String, Vector>)) -> Result<T>) -> Result<T> {
//!         let mut all = self.0.lock().unwrap();
//!         let entry = all.get_mut(ns).ok_or_else(|| Error::NamespaceNotFound {
//!             namespace: ns.to_string(),
//!             context: String::new(),
//!         })?;
//!         f(entry)
//!     }
//! }
//!
//! #[async_trait]
//! impl VectorStorage for MapStore {
//!     async fn upsert(&self, ns: &str, vectors: Vec<Vector>) -> Result<usize> {
//!         self.with_ns(ns, |(dim, map)| {
//!             let want = dim.or(vectors.first().map(|v| v.values.len()));
//!             if let Some(bad) = vectors.iter().find(|v| Some(v.values.len()) != want) {
//!                 return Err(Error::DimensionMismatch {
//!                     namespace: ns.to_string(),
//!                     expected: want.unwrap_or(0),
//!                     actual: bad.values.len(),
//!                 });
//!             }
//!             *dim = want;
//!             let n = vectors.len();
//!             map.extend(vectors.into_iter().map(|v| (v.id.clone(), v)));
//!             Ok(n)
//!         })
//!     }
//!     async fn get(&self, ns: &str, ids: &[String]) -> Result<Vec<Vector>> {
//!         self.with_ns(ns, |(_, map)| Ok(ids.iter().filter_map(|i| map.get(i).cloned()).collect()))
//!     }
//!     async fn delete(&self, ns: &str, ids: &[String]) -> Result<usize> {
//!         self.with_ns(ns, |(_, map)| Ok(ids.iter().filter(|i| map.remove(*i).is_some()).count()))
//!     }
//!     async fn namespace_exists(&self, ns: &str) -> Result<bool> {
//!         Ok(self.0.lock().unwrap().contains_key(ns))
//!     }
//!     async fn ensure_namespace(&self, ns: &str) -> Result<()> {
//!         self.0.lock().unwrap().entry(ns.to_string()).or_default();
//!         Ok(())
//!     }
//!     async fn list_namespaces(&self) -> Result<Vec<String>> {
//!         Ok(self.0.lock().unwrap().keys().cloned().collect())
//!     }
//!     async fn dimension(&self, ns: &str) -> Result<Option<usize>> {
//!         self.with_ns(ns, |(dim, _)| Ok(*dim))
//!     }
//!     async fn count(&self, ns: &str) -> Result<usize> {
//!         self.with_ns(ns, |(_, map)| Ok(map.len()))
//!     }
//!     async fn delete_namespace(&self, ns: &str) -> Result<bool> {
//!         Ok(self.0.lock().unwrap().remove(ns).is_some())
//!     }
//!     async fn scan(&self, ns: &str, after: Option<&str>, limit: usize) -> Result<Vec<Vector>> {
//!         use std::ops::Bound::{Excluded, Unbounded};
//!         let from = after.map_or(Unbounded, |a| Excluded(a.to_string()));
//!         self.with_ns(ns, |(_, map)| {
//!             Ok(map.range((from, Unbounded)).take(limit).map(|(_, v)| v.clone()).collect())
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> dakera_snapshot::Result<()> {
//! use dakera_snapshot::{CreateOptions, RestoreOptions, SnapshotConfig, SnapshotManager};
//! let store = MapStore::default();
//! store.ensure_namespace("notes").await?;
//! store.upsert("notes", vec![Vector::new("n1", vec![0.5, 0.25])]).await?;
//! let dir = tempfile::tempdir().unwrap();
//! let manager = SnapshotManager::local(dir.path(), SnapshotConfig::default())?;
//! let snap = manager.create_snapshot(&store, CreateOptions::default()).await?;
//! let back = MapStore::default();
//! manager.restore_snapshot(&back, snap.id.as_str(), &RestoreOptions::new()).await?;
//! assert_eq!(back.get_all("notes").await?, store.get_all("notes").await?);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod allocator;
mod cache;
pub mod config;
pub mod crypto;
pub mod error;
mod format;
pub mod id;
pub mod jsonl;
mod manager;
pub mod paths;
pub mod progress;
mod retention;
pub mod sink;
pub mod storage;
#[cfg(feature = "test-util")]
pub mod testing;

/// The README's examples compile as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use cache::SidecarCache;
pub use config::{CompressionLevel, CreateOptions, RestoreMode, RestoreOptions, SnapshotConfig};
pub use crypto::{KdfParams, KeyInfo, KeySource};
pub use error::{Error, Result};
pub use format::blob::Filter;
pub use format::sidecar::{
    ByteRange, ChunkEntry, CompressionInfo, DirectoryInfo, NamespaceEntry, SnapshotMetadata,
    SnapshotType,
};
pub use id::{Clock, ManualClock, SnapshotId, SystemClock};
pub use manager::{
    Catalog, CatalogEntry, CopyOutcome, DamagedSnapshot, DiffEntry, DiffKind, ExportReport,
    GcReport, Lineage, RepositoryInfo, RestoreResult, RestoredNamespace, RetentionReport,
    SnapshotDiff, SnapshotManager, VerifyOutcome, VerifyReport,
};
pub use progress::{NoProgress, Progress};
pub use retention::{RetentionPlan, RetentionPolicy};
pub use sink::{
    sink_from_url, LocalFsSink, ObjectStoreSink, PutMode, SinkExt, SinkOptions, SnapshotSink,
};

/// The `object_store` crate this one is built on, so callers build stores with the same
/// version.
pub use object_store;
pub use storage::{InMemoryStorage, NamespaceId, Vector, VectorStorage};
