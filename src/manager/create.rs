//! Create: full and incremental snapshots of a store.

use super::catalog::ResolvedSnapshot;
use super::pipeline::change_token;
use super::pipeline::{ChunkEncoder, EncodeSettings, KnownChunks};
use super::plan::{self, Changes, ParentView, WritePlan};
use super::sections::namespace_shapes;
use super::{EndProgress, SnapshotManager};
use crate::config::CreateOptions;
use crate::error::{Error, Result};
use crate::format::blob::{self, Identity};
use crate::format::sidecar::SnapshotMetadata;
use crate::id::SnapshotId;
use crate::paths::validate_namespace;
use crate::sink::PutMode;
use crate::storage::VectorStorage;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

impl SnapshotManager {
    /// Snapshots every namespace of `storage`.
    pub async fn create_snapshot(
        &self,
        storage: &dyn VectorStorage,
        options: CreateOptions,
    ) -> Result<SnapshotMetadata> {
        options.validate()?;
        let names = store_namespaces(storage).await?;
        self.write_and_commit(storage, WritePlan::full(names), options)
            .await
    }

    /// Snapshots only what changed since `parent_id`.
    ///
    /// With `changed = Some(list)`, the listed namespaces are stored, plus any namespace the
    /// parent does not have (a new namespace is never silently left out). With `None`, each
    /// namespace's content digest is computed from the store and compared with the parent's
    /// view, and only those that differ are stored. Namespaces of the parent that the store
    /// no longer has are recorded as deleted.
    pub async fn create_incremental_snapshot(
        &self,
        storage: &dyn VectorStorage,
        parent_id: &str,
        changed: Option<&[String]>,
        options: CreateOptions,
    ) -> Result<SnapshotMetadata> {
        options.validate()?;
        let parent_id = SnapshotId::parse(parent_id)?;
        // Pin the parent first, so a concurrent prune or delete leaves it alone; then check,
        // after the commit, that it survived (the pin narrows the race, the check closes it).
        let pin = self.layout.pin_key(&parent_id, self.random.next_u64());
        self.sink.put(&pin, Bytes::new(), PutMode::Create).await?;
        let made = self
            .create_incremental_pinned(storage, &parent_id, changed, options, None)
            .await;
        let made = match made {
            Ok(meta) => self.check_parent_survived(meta, &parent_id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = self.sink.delete(&pin).await {
            tracing::warn!(pin = %pin, error = %e, "could not remove the pin; it expires by itself and `gc` removes it");
        }
        made
    }

    /// After an incremental commit: if its parent was deleted meanwhile (a prune or delete
    /// that ran despite the pin), the new snapshot cannot be restored; withdraw it.
    async fn check_parent_survived(
        &self,
        meta: SnapshotMetadata,
        parent: &SnapshotId,
    ) -> Result<SnapshotMetadata> {
        match self.sink.head(&self.layout.sidecar_key(parent)).await {
            Ok(_) => Ok(meta),
            Err(e) if e.is_not_found() => {
                tracing::warn!(snapshot = %meta.id, parent = %parent, "the parent was deleted while the snapshot was written; withdrawing it");
                self.remove(&meta.id).await?;
                Err(Error::Conflict {
                    key: parent.to_string(),
                    reason: format!(
                        "the parent was deleted by a concurrent prune or delete while incremental snapshot {} was written; it was withdrawn (take a full snapshot, or an incremental on a surviving parent)",
                        meta.id
                    ),
                })
            }
            Err(e) => {
                tracing::warn!(snapshot = %meta.id, error = %e, "could not check that the parent still exists; the snapshot is committed");
                Ok(meta)
            }
        }
    }

    pub(super) async fn create_incremental_pinned(
        &self,
        storage: &dyn VectorStorage,
        parent_id: &SnapshotId,
        changed: Option<&[String]>,
        options: CreateOptions,
        identity: Option<(SnapshotId, u64)>,
    ) -> Result<SnapshotMetadata> {
        let made = self
            .write_incremental(storage, parent_id, changed, options, identity)
            .await;
        // A prune or delete that looked for pins just before this writer placed its own
        // removed a snapshot of the chain while it was being read: a conflict, not damage.
        self.conflict_if_deleted_while_read(made, |gone| {
            format!(
                "snapshot {gone}, which this incremental builds on, was deleted by a concurrent prune or delete while it was being read; nothing was committed (take a full snapshot, or an incremental on a surviving parent)"
            )
        })
        .await
    }

    async fn write_incremental(
        &self,
        storage: &dyn VectorStorage,
        parent_id: &SnapshotId,
        changed: Option<&[String]>,
        options: CreateOptions,
        identity: Option<(SnapshotId, u64)>,
    ) -> Result<SnapshotMetadata> {
        let parent = self.resolve(parent_id).await?;
        let parent_names: BTreeSet<String> = parent.namespaces.keys().cloned().collect();
        let current = store_namespaces(storage).await?;
        let (same_content, compare);
        let changes = match changed {
            Some(list) => {
                compare = BTreeMap::new();
                Changes::Listed(list)
            }
            None => {
                let by_token = unchanged_by_token(storage, &parent, &current).await?;
                let rest: Vec<String> = current
                    .iter()
                    .filter(|n| !by_token.contains(*n))
                    .cloned()
                    .collect();
                let scan_first;
                (compare, scan_first) = split_comparisons(&parent, &rest);
                let mut same = self
                    .unchanged_by_digest(storage, &parent, &scan_first)
                    .await?;
                same.extend(by_token);
                same_content = same;
                Changes::SameContent(&same_content)
            }
        };
        let mut plan = plan::incremental(parent_id, &parent_names, &current, changes)?;
        plan.compare = compare;
        self.add_dedup_bases(&mut plan, &parent).await?;
        tracing::info!(parent = %parent_id, changed_or_compared = plan.store.len(), unchanged = plan.unchanged.len(), deleted = plan.deleted.len(), "incremental snapshot plan");
        match identity {
            Some(identity) => {
                self.write_and_commit_as(storage, plan, options, identity)
                    .await
            }
            None => self.write_and_commit(storage, plan, options).await,
        }
    }

    /// The namespaces of `compared` (all held by the parent) whose content digest and
    /// dimension match the parent's view (computed from the store; nothing is written).
    async fn unchanged_by_digest(
        &self,
        storage: &dyn VectorStorage,
        parent: &ResolvedSnapshot,
        compared: &[String],
    ) -> Result<BTreeSet<String>> {
        if compared.is_empty() {
            return Ok(BTreeSet::new());
        }
        let shapes = namespace_shapes(storage, compared).await?;
        let total = shapes.iter().map(|s| s.value_bytes).sum();
        self.progress.begin("compare with the parent", Some(total));
        let _end = EndProgress(self.progress.as_ref());
        let mut same = BTreeSet::new();
        for n in compared {
            let Some((_, entry)) = parent.namespaces.get(n) else {
                continue;
            };
            let (dim, digest) = self.digest_namespace(storage, n).await?;
            if entry.dimension.unwrap_or(0) == dim && entry.content_sha256 == hex::encode(digest) {
                same.insert(n.clone());
            }
        }
        Ok(same)
    }

    /// Reads the parent's chunk tables of the namespaces the plan stores (chunks to
    /// reference rather than store again) and the data size of those it leaves unchanged.
    async fn add_dedup_bases(&self, plan: &mut WritePlan, parent: &ResolvedSnapshot) -> Result<()> {
        for name in &plan.store {
            let Some((idx, entry)) = parent.namespaces.get(name) else {
                continue;
            };
            let table = self.chunk_table(&parent.chain[*idx], entry).await?;
            if let Some(base) = table.dedup_base() {
                plan.bases.insert(name.clone(), base);
            }
        }
        for name in &plan.unchanged {
            if let Some((_, entry)) = parent.namespaces.get(name) {
                plan.inherited_bytes += entry.logical_bytes.unwrap_or(entry.length);
            }
        }
        Ok(())
    }

    pub(super) fn encode_settings(&self, dimension: u32, level: Option<u32>) -> EncodeSettings {
        EncodeSettings {
            dimension,
            include_metadata: self.config.include_metadata,
            filter: self.config.effective_filter(),
            level,
            chunk_size: self.config.chunk_size,
            dedup_chunk_size: self.config.dedup_chunk_size,
            page_size: self.config.scan_page_size,
            parallelism: self.config.effective_parallelism(),
            identity: Identity::Vectors,
            sealing: None,
            buffers: Default::default(),
        }
    }

    /// Computes a namespace's dimension and content digest without writing anything.
    async fn digest_namespace(
        &self,
        storage: &dyn VectorStorage,
        ns: &str,
    ) -> Result<(u32, [u8; 32])> {
        let dim = namespace_dimension(storage, ns).await?;
        let mut digest = blob::ContentDigest::new(dim);
        let none: KnownChunks = Default::default();
        let mut batches = ChunkEncoder::new(storage, ns, self.encode_settings(dim, None), none);
        while let Some(batch) = batches.next().await? {
            digest.add(&batch.vector_hashes);
            self.progress
                .advance(4 * u64::from(dim) * batch.vector_hashes.len() as u64);
        }
        Ok((dim, digest.finish()))
    }
}

/// The namespaces of `current` whose store change token is the one the parent's view
/// records: unchanged, by the store's word, without reading them.
async fn unchanged_by_token(
    storage: &dyn VectorStorage,
    parent: &ResolvedSnapshot,
    current: &[String],
) -> Result<BTreeSet<String>> {
    let mut same = BTreeSet::new();
    for name in current {
        let Some((_, entry)) = parent.namespaces.get(name) else {
            continue;
        };
        let Some(recorded) = &entry.store_token else {
            continue;
        };
        if change_token(storage, name).await?.as_ref() == Some(recorded) {
            same.insert(name.clone());
        }
    }
    if !same.is_empty() {
        tracing::info!(
            namespaces = same.len(),
            "unchanged by the store's change tokens (not read)"
        );
    }
    Ok(same)
}

/// Namespaces at least this large in the parent (compressed) are compared with it while
/// they are written, rather than in a scan of their own before: their chunks are hashed
/// for deduplication anyway, and one scan of a large namespace is what an incremental costs.
/// Smaller ones are scanned first, so an unchanged one costs no read of its chunk index.
const COMPARE_WHILE_WRITING_MIN: u64 = 1 << 20;

/// Splits the namespaces that both `current` and the parent hold: those compared while
/// written (the parent stores them in format 2, with chunk hashes to deduplicate against,
/// and they are large), with the parent's view of each; and those to compare in a scan
/// first.
fn split_comparisons(
    parent: &ResolvedSnapshot,
    current: &[String],
) -> (BTreeMap<String, ParentView>, Vec<String>) {
    let mut while_writing = BTreeMap::new();
    let mut scan_first = Vec::new();
    for name in current {
        let Some((_, entry)) = parent.namespaces.get(name) else {
            continue;
        };
        let logical_bytes = entry.logical_bytes.unwrap_or(entry.length);
        if entry.index.is_some() && logical_bytes >= COMPARE_WHILE_WRITING_MIN {
            let view = ParentView {
                dimension: entry.dimension.unwrap_or(0),
                digest_hex: entry.content_sha256.clone(),
                logical_bytes,
            };
            while_writing.insert(name.clone(), view);
        } else {
            scan_first.push(name.clone());
        }
    }
    (while_writing, scan_first)
}

async fn store_namespaces(storage: &dyn VectorStorage) -> Result<Vec<String>> {
    let mut names = storage.list_namespaces().await?;
    for n in &names {
        validate_namespace(n)?;
    }
    names.sort();
    names.dedup();
    Ok(names)
}

pub(super) async fn namespace_dimension(storage: &dyn VectorStorage, ns: &str) -> Result<u32> {
    match storage.dimension(ns).await? {
        None => Ok(0),
        Some(0) => Err(Error::invalid(
            "namespace",
            format!("{ns:?} reports dimension 0"),
        )),
        Some(d) if d > blob::MAX_DIMENSION as usize => Err(Error::invalid(
            "namespace",
            format!(
                "{ns:?} has dimension {d}, more than the supported {}",
                blob::MAX_DIMENSION
            ),
        )),
        Some(d) => Ok(d as u32),
    }
}
