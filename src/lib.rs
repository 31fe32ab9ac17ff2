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
#![warn(missing_docs)]

pub mod config;
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

pub use config::{CompressionLevel, CreateOptions, RestoreMode, RestoreOptions, SnapshotConfig};
pub use error::{Error, Result};
pub use format::blob::Filter;
pub use format::sidecar::{
    ByteRange, ChunkEntry, CompressionInfo, NamespaceEntry, SnapshotMetadata, SnapshotType,
};
pub use id::{Clock, ManualClock, SnapshotId, SystemClock};
pub use manager::{
    Catalog, CopyOutcome, DamagedSnapshot, DiffEntry, DiffKind, ExportReport, GcReport, Lineage,
    RestoreResult, RestoredNamespace, RetentionReport, SnapshotDiff, SnapshotManager,
    VerifyOutcome, VerifyReport,
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
