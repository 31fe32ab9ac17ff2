//! What the use cases report: plain data, serializable for the CLI's `--json`.

use crate::format::sidecar::SnapshotMetadata;
use crate::id::SnapshotId;
use crate::retention::RetentionPlan;
use serde::Serialize;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RestoreResult {
    /// The snapshot restored.
    pub snapshot_id: SnapshotId,
    /// Number of namespaces restored.
    pub namespaces_restored: usize,
    /// Vectors written to the store.
    pub vectors_restored: u64,
    /// Vectors left out because they had expired.
    pub vectors_skipped_expired: u64,
    /// Per namespace: source name, target name, vectors written.
    pub namespaces: Vec<RestoredNamespace>,
}

/// One restored namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RestoredNamespace {
    /// Its name in the snapshot.
    pub source: String,
    /// Its name in the store.
    pub target: String,
    /// The snapshot whose blob held it (an ancestor, for unchanged namespaces).
    pub from_snapshot: SnapshotId,
    /// Vectors written.
    pub vectors: u64,
}

/// What a successful verification checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The snapshot verified.
    pub snapshot_id: SnapshotId,
    /// Bytes of blob read and hashed.
    pub bytes_checked: u64,
    /// Namespaces decoded, with their vector counts (in JSON: objects with `namespace` and
    /// `vectors`).
    #[serde(serialize_with = "namespace_counts")]
    pub namespaces: Vec<(String, u64)>,
    /// Vectors decoded.
    pub vectors_checked: u64,
    /// The snapshot and its ancestors, newest first, all present.
    pub chain: Vec<SnapshotId>,
}

/// What retention did (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetentionReport {
    /// The plan: kept snapshots with reasons, and those to remove.
    pub plan: RetentionPlan,
    /// Snapshots actually deleted (empty in a dry run).
    pub deleted: Vec<SnapshotId>,
}

/// What garbage collection found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Blob keys with no sidecar, old enough to be orphans of crashed writers.
    pub orphan_blobs: Vec<String>,
    /// Orphans actually removed (empty in a dry run).
    pub removed: Vec<String>,
    /// Incomplete uploads / temporary files the sink removed.
    pub incomplete_uploads_removed: usize,
    /// Pins left by incremental writers that died, removed once six hours old (after that
    /// retention ignores them too).
    pub stale_pins_removed: usize,
}

/// A snapshot and its ancestors, as far as they exist.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Lineage {
    /// The snapshot first, then its parent, grandparent, ... up to a full snapshot or to the
    /// first missing ancestor. The snapshot comes with its namespace lists; its ancestors
    /// as their sidecars hold them (format 3: without, see
    /// [`SnapshotMetadata::contents_loaded`]).
    pub chain: Vec<SnapshotMetadata>,
    /// The ancestor that should exist but does not (the chain is broken there).
    pub missing: Option<SnapshotId>,
}

/// What [`crate::SnapshotManager::read_vectors`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExportReport {
    /// The snapshot read.
    pub snapshot_id: Option<SnapshotId>,
    /// Per namespace: name and vectors read (in JSON: objects with `namespace` and
    /// `vectors`).
    #[serde(serialize_with = "namespace_counts")]
    pub namespaces: Vec<(String, u64)>,
    /// Vectors read in all.
    pub vectors: u64,
}

/// One snapshot's verification in [`crate::SnapshotManager::verify_all`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VerifyOutcome {
    /// The snapshot.
    pub snapshot_id: SnapshotId,
    /// True when the snapshot verified and nothing it builds on was found broken.
    pub ok: bool,
    /// What was checked, when the snapshot's own data was intact.
    pub report: Option<super::VerifyReport>,
    /// What is broken, when something is.
    pub problem: Option<String>,
    /// Snapshots that cannot be fully restored because of this one: those building on it
    /// (its descendants, each after its parent). Empty when intact.
    pub affects: Vec<SnapshotId>,
    /// For an intact snapshot: the nearest ancestor found broken in the same run (only
    /// [`crate::SnapshotManager::verify_all`] looks), which its restore may depend on.
    pub broken_ancestor: Option<SnapshotId>,
}

/// How a namespace differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Only in the second snapshot.
    Added,
    /// Only in the first snapshot.
    Removed,
    /// In both, with different content (content digest or dimension).
    Changed,
    /// In both, with identical content.
    Unchanged,
}

/// One namespace in a [`SnapshotDiff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DiffEntry {
    /// The namespace.
    pub namespace: String,
    /// How it differs.
    pub kind: DiffKind,
    /// Vectors in the first snapshot (`None` if absent there).
    pub vectors_before: Option<u64>,
    /// Vectors in the second snapshot (`None` if absent there).
    pub vectors_after: Option<u64>,
    /// Dimension in the first snapshot.
    pub dimension_before: Option<u32>,
    /// Dimension in the second snapshot.
    pub dimension_after: Option<u32>,
}

/// The namespace-level difference between two snapshots' points in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SnapshotDiff {
    /// The first (older, usually) snapshot.
    pub from: SnapshotId,
    /// The second snapshot.
    pub to: SnapshotId,
    /// Every namespace of either, sorted by name.
    pub namespaces: Vec<DiffEntry>,
}

/// What [`crate::SnapshotManager::copy_snapshot`] did with one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CopyOutcome {
    /// Copied, checked at the destination, committed there.
    Copied {
        /// The snapshot.
        snapshot_id: SnapshotId,
        /// Blob bytes transferred.
        bytes: u64,
    },
    /// The destination already had it, with the same blob checksum.
    AlreadyPresent {
        /// The snapshot.
        snapshot_id: SnapshotId,
    },
}

/// The repository's snapshots as listed: those whose sidecar reads, and those whose sidecar
/// does not (damaged, or written by a newer format).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Catalog {
    /// Readable snapshots, newest first.
    pub snapshots: Vec<SnapshotMetadata>,
    /// Unreadable ones, newest first.
    pub damaged: Vec<DamagedSnapshot>,
}

impl Catalog {
    /// Every listed snapshot, readable or not, newest first (by id, which carries the
    /// creation time): what `latest~N` counts and `list` shows.
    pub fn newest_first(&self) -> Vec<CatalogEntry<'_>> {
        let mut all: Vec<CatalogEntry<'_>> = self
            .snapshots
            .iter()
            .map(CatalogEntry::Readable)
            .chain(self.damaged.iter().map(CatalogEntry::Damaged))
            .collect();
        all.sort_by(|a, b| b.id().cmp(a.id()));
        all
    }
}

/// One snapshot of a [`Catalog`].
#[derive(Debug, Clone, Copy)]
pub enum CatalogEntry<'a> {
    /// Its sidecar reads.
    Readable(&'a SnapshotMetadata),
    /// Its sidecar cannot be read.
    Damaged(&'a DamagedSnapshot),
}

impl CatalogEntry<'_> {
    /// The snapshot's id.
    pub fn id(&self) -> &SnapshotId {
        match self {
            CatalogEntry::Readable(m) => &m.id,
            CatalogEntry::Damaged(d) => &d.id,
        }
    }
}

/// A listed snapshot whose sidecar cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DamagedSnapshot {
    /// Its id (from the sidecar's key).
    pub id: SnapshotId,
    /// Why it cannot be read.
    pub problem: String,
}

impl DamagedSnapshot {
    /// A snapshot that cannot be read, and why.
    pub fn new(id: SnapshotId, problem: impl Into<String>) -> Self {
        DamagedSnapshot {
            id,
            problem: problem.into(),
        }
    }
}

/// `(name, count)` pairs as `{"namespace": name, "vectors": count}` objects.
pub(crate) fn namespace_counts<S: serde::Serializer>(
    pairs: &[(String, u64)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(pairs.len()))?;
    for (namespace, vectors) in pairs {
        seq.serialize_element(&serde_json::json!({"namespace": namespace, "vectors": vectors}))?;
    }
    seq.end()
}
