//! The use cases: create (full and incremental), restore, list, inspect, verify, delete,
//! retention, garbage collection and copy. Knows nothing about files or S3: everything goes
//! through a [`SnapshotSink`].
//!
//! Where things are: this file holds the [`SnapshotManager`] type and its constructors;
//! each use case has its own file (`create`, `commit`, `catalog`, `restore`, `verify`,
//! `lifecycle`, `copy`), pure planners live in `plan` and `chain` (tested without a sink),
//! report types in `reports`, and the byte pipelines between codec and sink in `pipeline/`.

mod access;
mod catalog;
pub(crate) mod chain;
pub(crate) mod chunks;
mod commit;
mod copy;
mod create;
mod dedup;
#[cfg(test)]
mod forged_references;
mod lifecycle;
pub(crate) mod pipeline;
mod plan;
mod reencrypt;
mod reports;
mod restore;
mod restore_groups;
mod sections;
mod sections_in_parallel;
mod snapshot_view;
mod verify;

pub use access::RepositoryInfo;
pub use reports::{
    Catalog, CatalogEntry, CopyOutcome, DamagedSnapshot, DiffEntry, DiffKind, ExportReport,
    GcReport, Lineage, RestoreResult, RestoredNamespace, RetentionReport, SnapshotDiff,
    VerifyOutcome, VerifyReport,
};

use crate::cache::SidecarCache;
use crate::config::SnapshotConfig;
use crate::error::{Error, Result};
use crate::id::{Clock, IdGenerator, OsRandom, RandomSource, SnapshotId, SystemClock};
use crate::paths::RepoLayout;
use crate::progress::{NoProgress, Progress};
use crate::sink::{LocalFsSink, SnapshotSink};
use std::path::Path;
use std::sync::Arc;

/// Takes, restores, verifies and expires snapshots in one repository (a [`SnapshotSink`]).
///
/// Commit protocol: the blob is uploaded first (invisible until complete), then the
/// sidecar is written with [`crate::PutMode::Create`]. A snapshot exists if and only if its sidecar
/// exists; a blob without a sidecar is an orphan that is never listed and that
/// [`SnapshotManager::collect_garbage`] removes.
#[derive(Debug)]
pub struct SnapshotManager {
    sink: Arc<dyn SnapshotSink>,
    config: SnapshotConfig,
    layout: RepoLayout,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    ids: IdGenerator,
    progress: Arc<dyn Progress>,
    cache: Option<SidecarCache>,
    /// The key to open an encrypted repository with.
    key: Option<crate::crypto::KeySource>,
    /// The repository as opened (once, on first use).
    access: Arc<tokio::sync::OnceCell<access::Access>>,
}

impl SnapshotManager {
    /// A manager over `sink`; fails if `config` is invalid.
    pub fn new(sink: Arc<dyn SnapshotSink>, config: SnapshotConfig) -> Result<Self> {
        config.validate()?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let random: Arc<dyn RandomSource> = Arc::new(OsRandom);
        Ok(SnapshotManager {
            sink,
            config,
            layout: RepoLayout,
            ids: IdGenerator::new(clock.clone(), random.clone()),
            clock,
            random,
            progress: Arc::new(NoProgress),
            cache: None,
            key: None,
            access: Arc::default(),
        })
    }

    /// A manager over a local directory (created if missing).
    pub fn local(dir: impl AsRef<Path>, config: SnapshotConfig) -> Result<Self> {
        Self::new(Arc::new(LocalFsSink::new(dir)?), config)
    }

    /// A manager over the repository at `url` (see [`crate::sink_from_url`]).
    pub fn from_url(
        url: &str,
        options: &crate::SinkOptions,
        config: SnapshotConfig,
    ) -> Result<Self> {
        Self::new(crate::sink_from_url(url, options)?, config)
    }

    /// Uses `clock` for ids, creation times, expiry and retention.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.ids = IdGenerator::new(clock.clone(), self.random.clone());
        self.clock = clock;
        self
    }

    /// Uses `random` for the random part of ids.
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.ids = IdGenerator::new(self.clock.clone(), random.clone());
        self.random = random;
        self
    }

    /// Reports bytes moved by verify, restore, export and copy to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Keeps copies of the repository's sidecars in `cache`, so a listing fetches only the
    /// sidecars it has not seen before (see [`SidecarCache`] for why that is safe). Worth it
    /// for object storage; a local repository reads its sidecars as fast as the cache.
    pub fn with_sidecar_cache(mut self, cache: SidecarCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The repository.
    pub fn sink(&self) -> &Arc<dyn SnapshotSink> {
        &self.sink
    }

    /// The configuration.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// The clock used for ids, creation times, expiry and retention.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// Why [`blob_missing`] says a snapshot is corrupt.
const BLOB_MISSING: &str = "the blob is missing";

/// The error for a committed snapshot whose blob is gone.
fn blob_missing(id: &str) -> Error {
    Error::corrupt(id, None, None, BLOB_MISSING)
}

/// The snapshot `e` says has no blob, if it is [`blob_missing`]'s error.
fn missing_blob_of(e: &Error) -> Option<SnapshotId> {
    match e {
        Error::Corrupt { location, reason } if reason == BLOB_MISSING => {
            SnapshotId::parse(&location.snapshot_id).ok()
        }
        _ => None,
    }
}

impl SnapshotManager {
    /// The snapshot whose blob `e` found missing, if its sidecar is gone as well: it was
    /// deleted (sidecar first, then blob) while it was being read, which is no damage.
    /// `None` for any other error, and for a blob missing under a sidecar that is still
    /// there (corruption).
    async fn deleted_while_read(&self, e: &Error) -> Option<SnapshotId> {
        let id = missing_blob_of(e)?;
        match self.sink.head(&self.layout.sidecar_key(&id)).await {
            Err(gone) if gone.is_not_found() => Some(id),
            _ => None,
        }
    }

    /// `read`, unless it failed on a snapshot [`Self::deleted_while_read`] finds deleted:
    /// then a conflict that names it, `why` saying what the read was for and what is left.
    async fn conflict_if_deleted_while_read<T>(
        &self,
        read: Result<T>,
        why: impl FnOnce(&SnapshotId) -> String,
    ) -> Result<T> {
        let Err(e) = read else { return read };
        match self.deleted_while_read(&e).await {
            Some(gone) => Err(Error::Conflict {
                key: gone.to_string(),
                reason: why(&gone),
            }),
            None => Err(e),
        }
    }
}

/// Ends the current progress phase when dropped, however the phase ends.
struct EndProgress<'a>(&'a dyn Progress);

impl Drop for EndProgress<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}
