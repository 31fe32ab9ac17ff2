//! The use cases: create (full and incremental), restore, list, inspect, verify, delete,
//! retention and garbage collection. Knows nothing about files or S3: everything goes
//! through a [`SnapshotSink`].

mod pipeline;
mod tools;

pub use tools::{
    CopyOutcome, DiffEntry, DiffKind, ExportReport, Lineage, SnapshotDiff, VerifyOutcome,
};

use crate::config::{CreateOptions, RestoreMode, RestoreOptions, SnapshotConfig};
use crate::error::SinkOp;
use crate::error::{Error, Result};
use crate::format::blob;
use crate::format::sidecar::{
    new_format_fields, ByteRange, CompressionInfo, NamespaceEntry, SnapshotMetadata, SnapshotType,
    MAX_SIDECAR_BYTES,
};
use crate::id::{Clock, IdGenerator, OsRandom, RandomSource, SnapshotId, SystemClock};
use crate::paths::{validate_namespace, Key, ObjectKind, RepoLayout};
use crate::progress::{NoProgress, Progress};
use crate::retention::{self, RetentionPlan, RetentionPolicy};
use crate::sink::{LocalFsSink, PutMode, SinkExt, SnapshotSink};
use crate::storage::{Vector, VectorStorage};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pipeline::{decode_error, BlobWriter, ChunkEncoder, EncodeSettings, NamespaceReader};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Sidecars fetched at once when listing.
const LIST_CONCURRENCY: usize = 16;
/// How long a pin protects its parent: a writer that crashed leaves its pin behind, and
/// after this long retention ignores it and `gc` removes it.
pub const PIN_TTL: Duration = Duration::from_secs(6 * 3600);
/// Longest ancestor chain followed before the chain is declared corrupt (a cycle).
const MAX_CHAIN: usize = 100_000;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
pub struct VerifyReport {
    /// The snapshot verified.
    pub snapshot_id: SnapshotId,
    /// Bytes of blob read and hashed.
    pub bytes_checked: u64,
    /// Namespaces decoded, with their vector counts.
    pub namespaces: Vec<(String, u64)>,
    /// Vectors decoded.
    pub vectors_checked: u64,
    /// The snapshot and its ancestors, newest first, all present.
    pub chain: Vec<SnapshotId>,
}

/// A snapshot's point-in-time view: where each of its namespaces is stored.
#[derive(Debug, Clone)]
pub struct ResolvedSnapshot {
    /// The snapshot and its ancestors up to the last one needed, newest first.
    pub chain: Vec<SnapshotMetadata>,
    /// Every namespace at that point in time: the index in `chain` of the snapshot that
    /// stores it, and its entry there.
    pub namespaces: BTreeMap<String, (usize, NamespaceEntry)>,
}

/// What retention did (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// The plan: kept snapshots with reasons, and those to remove.
    pub plan: RetentionPlan,
    /// Snapshots actually deleted (empty in a dry run).
    pub deleted: Vec<SnapshotId>,
}

/// What garbage collection found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blob keys with no sidecar, old enough to be orphans of crashed writers.
    pub orphan_blobs: Vec<String>,
    /// Orphans actually removed (empty in a dry run).
    pub removed: Vec<String>,
    /// Incomplete uploads / temporary files the sink removed.
    pub incomplete_uploads_removed: usize,
    /// Pins left by incremental writers that died, removed after [`PIN_TTL`].
    pub stale_pins_removed: usize,
}

/// Takes, restores, verifies and expires snapshots in one repository (a [`SnapshotSink`]).
///
/// Commit protocol: the blob is uploaded first (invisible until complete), then the
/// sidecar is written with [`PutMode::Create`]. A snapshot exists if and only if its sidecar
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

    /// The repository.
    pub fn sink(&self) -> &Arc<dyn SnapshotSink> {
        &self.sink
    }

    /// The configuration.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    // ----- create -------------------------------------------------------------------------

    /// Snapshots every namespace of `storage`.
    pub async fn create_snapshot(
        &self,
        storage: &dyn VectorStorage,
        options: CreateOptions,
    ) -> Result<SnapshotMetadata> {
        options.validate()?;
        let names = store_namespaces(storage).await?;
        let plan = WritePlan {
            snapshot_type: SnapshotType::Full,
            parent: None,
            store: names,
            unchanged: Vec::new(),
            deleted: Vec::new(),
        };
        self.write_and_commit(storage, plan, options).await
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
            .create_incremental_pinned(storage, &parent_id, changed, options)
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

    async fn create_incremental_pinned(
        &self,
        storage: &dyn VectorStorage,
        parent_id: &SnapshotId,
        changed: Option<&[String]>,
        options: CreateOptions,
    ) -> Result<SnapshotMetadata> {
        let parent_id = parent_id.clone();
        let parent = self.resolve(&parent_id).await?;
        let current = store_namespaces(storage).await?;
        let current_set: BTreeSet<&String> = current.iter().collect();
        let deleted: Vec<String> = parent
            .namespaces
            .keys()
            .filter(|n| !current_set.contains(n))
            .cloned()
            .collect();
        let mut store = Vec::new();
        let mut unchanged = Vec::new();
        if let Some(list) = changed {
            for n in list {
                validate_namespace(n)?;
                if !current_set.contains(n) && !parent.namespaces.contains_key(n) {
                    return Err(Error::NamespaceNotFound {
                        namespace: n.clone(),
                        context: "in the store or the parent snapshot".into(),
                    });
                }
            }
            let listed: BTreeSet<&String> = list.iter().collect();
            for n in &current {
                if listed.contains(n) || !parent.namespaces.contains_key(n) {
                    store.push(n.clone());
                } else {
                    unchanged.push(n.clone());
                }
            }
        } else {
            for n in &current {
                let same = match parent.namespaces.get(n) {
                    Some((_, entry)) => {
                        let (dim, digest) = self.digest_namespace(storage, n).await?;
                        entry.dimension.unwrap_or(0) == dim
                            && entry.content_sha256 == hex::encode(digest)
                    }
                    None => false,
                };
                if same {
                    unchanged.push(n.clone());
                } else {
                    store.push(n.clone());
                }
            }
        }
        tracing::info!(parent = %parent_id, changed = store.len(), unchanged = unchanged.len(), deleted = deleted.len(), "incremental snapshot plan");
        let plan = WritePlan {
            snapshot_type: SnapshotType::Incremental,
            parent: Some(parent_id),
            store,
            unchanged,
            deleted,
        };
        self.write_and_commit(storage, plan, options).await
    }

    fn encode_settings(&self, dimension: u32, level: Option<u32>) -> EncodeSettings {
        EncodeSettings {
            dimension,
            include_metadata: self.config.include_metadata,
            filter: self.config.effective_filter(),
            level,
            chunk_size: self.config.chunk_size,
            page_size: self.config.scan_page_size,
            parallelism: self.config.effective_parallelism(),
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
        let mut chunks = ChunkEncoder::new(storage, ns, self.encode_settings(dim, None));
        while let Some(chunk) = chunks.next().await? {
            digest.add(&chunk.vector_hashes);
        }
        Ok((dim, digest.finish()))
    }

    async fn write_and_commit(
        &self,
        storage: &dyn VectorStorage,
        plan: WritePlan,
        options: CreateOptions,
    ) -> Result<SnapshotMetadata> {
        let (id, created_ms) = self.ids.next_id();
        let blob_key = self.layout.blob_key(&id);
        tracing::info!(snapshot = %id, repo = %self.sink.describe(), namespaces = plan.store.len(), "creating snapshot");
        let out = self.sink.put_streaming(&blob_key, PutMode::Create).await?;
        let mut w = BlobWriter::new(out);
        let body = self
            .write_body(&mut w, storage, &id, created_ms, &plan.store)
            .await;
        let (header, namespaces, footer) = match body {
            Ok(parts) => parts,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        };
        let (size, raw, sha) = match w.finish().await {
            Ok(done) => done,
            // The key is taken: the blob there is another writer's, leave it.
            Err(e @ Error::Conflict { .. }) => return Err(e),
            Err(e) => {
                self.discard_blob(&blob_key).await;
                return Err(e);
            }
        };
        // What the backend holds, not what the upload reported: a short blob never commits.
        match self.sink.head(&blob_key).await {
            Ok(info) if info.size == size => {}
            Ok(info) => {
                self.discard_blob(&blob_key).await;
                return Err(Error::sink(
                    SinkOp::PutStreaming,
                    blob_key.as_str(),
                    format!(
                        "the repository holds {} bytes of the blob but {size} were written",
                        info.size
                    ),
                ));
            }
            Err(e) => {
                self.discard_blob(&blob_key).await;
                return Err(e);
            }
        }
        let (format, format_version, writer) = new_format_fields();
        let meta = SnapshotMetadata {
            format,
            format_version,
            writer,
            id: id.clone(),
            created_at: created_ms / 1000,
            created_at_ms: created_ms,
            description: options.description,
            labels: options.labels,
            snapshot_type: plan.snapshot_type,
            parent_id: plan.parent,
            total_vectors: namespaces.iter().map(|n| n.vector_count).sum(),
            namespaces,
            unchanged_namespaces: plan.unchanged,
            deleted_namespaces: plan.deleted,
            size_bytes: size,
            raw_bytes: raw,
            blob_sha256: hex::encode(sha),
            header,
            footer,
            compression: CompressionInfo {
                codec: "gzip".into(),
                level: self.config.effective_level(),
                filter: self.config.effective_filter(),
            },
            include_metadata: self.config.include_metadata,
        };
        if let Err(e) = meta.check_layout() {
            let _ = self.sink.delete(&blob_key).await;
            return Err(Error::Task(format!(
                "internal error: the written layout is inconsistent: {e}"
            )));
        }
        // The commit point.
        self.commit_sidecar(&id, Bytes::from(meta.to_json()))
            .await?;
        tracing::info!(snapshot = %id, vectors = meta.total_vectors, bytes = meta.size_bytes, "snapshot committed");

        if self.config.max_snapshots > 0 {
            let policy = RetentionPolicy::keep_last(self.config.max_snapshots);
            if let Err(e) = self.apply_retention(&policy, false).await {
                // The snapshot is committed; a failed clean-up must not make it look failed.
                tracing::warn!(error = %e, "retention after create failed; nothing was lost, it will be retried after the next create");
            }
        }
        Ok(meta)
    }

    /// Removes a blob that will not be committed (best effort: `gc` removes what is left).
    async fn discard_blob(&self, blob_key: &Key) {
        if let Err(cleanup) = self.sink.delete(blob_key).await {
            tracing::warn!(error = %cleanup, blob = %blob_key, "could not remove the uncommitted blob; `gc` will");
        }
    }

    /// Writes the sidecar (create-if-absent): the commit. Handles the ambiguous cases: a put
    /// reported as failed may have taken effect (a lost response, or a retry that found its
    /// own first attempt and reports a conflict), so the sidecar is read back before the blob
    /// is given up; and a put reported as done is read back too, so a damaged sidecar never
    /// stays committed.
    async fn commit_sidecar(&self, id: &SnapshotId, bytes: Bytes) -> Result<()> {
        let (sidecar_key, blob_key) = (self.layout.sidecar_key(id), self.layout.blob_key(id));
        let put = self
            .sink
            .put(&sidecar_key, bytes.clone(), PutMode::Create)
            .await;
        let stored = self.sink.get_bytes(&sidecar_key, None).await;
        match (put, stored) {
            (Ok(()), Ok(back)) if back == bytes => Ok(()),
            (Ok(()), Ok(_)) => {
                // Ours, but damaged on the way: withdraw the commit.
                self.sink.delete(&sidecar_key).await?;
                self.discard_blob(&blob_key).await;
                Err(Error::corrupt(
                    id.as_str(),
                    None,
                    None,
                    "the sidecar did not read back as written; the snapshot was withdrawn",
                ))
            }
            (Ok(()), Err(e)) => {
                tracing::warn!(snapshot = %id, error = %e, "the sidecar was written but could not be read back to check it");
                Ok(())
            }
            (Err(e), Ok(back)) if back == bytes => {
                tracing::warn!(snapshot = %id, error = %e, "the sidecar write reported an error but took effect");
                Ok(())
            }
            // Another writer's sidecar under this id: the blob key is theirs too, leave it.
            (Err(e), Ok(_)) => Err(e),
            (Err(e), Err(read)) if read.is_not_found() => {
                self.discard_blob(&blob_key).await;
                Err(e)
            }
            // Unknown whether the commit happened: keep the blob (gc re-checks the sidecar).
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// Writes the header chunk, every namespace section and the footer chunk; returns the
    /// header range, the namespace entries and the footer range.
    async fn write_body(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        id: &SnapshotId,
        created_ms: u64,
        names: &[String],
    ) -> Result<(ByteRange, Vec<NamespaceEntry>, ByteRange)> {
        let level = self.config.effective_level();
        let filter = self.config.effective_filter();
        let range = |c: crate::format::sidecar::ChunkEntry| ByteRange {
            offset: c.offset,
            length: c.length,
        };
        let header = range(
            w.write_raw(blob::encode_header(id.as_str(), created_ms), level)
                .await?,
        );
        let mut entries = Vec::with_capacity(names.len());
        let mut total = 0;
        for ns in names {
            let dim = namespace_dimension(storage, ns).await?;
            let mut chunks = vec![
                w.write_raw(blob::encode_ns_header(ns, dim, filter), level)
                    .await?,
            ];
            let mut digest = blob::ContentDigest::new(dim);
            let mut count = 0u64;
            let mut encoder =
                ChunkEncoder::new(storage, ns, self.encode_settings(dim, Some(level)));
            while let Some(chunk) = encoder.next().await? {
                digest.add(&chunk.vector_hashes);
                count += chunk.vectors;
                chunks.push(
                    w.write(chunk.bytes, chunk.crc32, chunk.raw_len, chunk.vectors)
                        .await?,
                );
            }
            let digest = digest.finish();
            chunks.push(
                w.write_raw(blob::encode_ns_end(count, &digest), level)
                    .await?,
            );
            total += count;
            entries.push(NamespaceEntry {
                name: ns.clone(),
                dimension: (dim > 0).then_some(dim),
                vector_count: count,
                offset: chunks[0].offset,
                length: chunks.iter().map(|c| c.length).sum(),
                raw_length: chunks.iter().map(|c| c.raw_length).sum(),
                content_sha256: hex::encode(digest),
                chunks,
            });
        }
        let footer = range(
            w.write_raw(blob::encode_footer(names.len() as u32, total), level)
                .await?,
        );
        Ok((header, entries, footer))
    }

    // ----- read side ----------------------------------------------------------------------

    /// The metadata of one snapshot.
    pub async fn get_snapshot_metadata(&self, id: &str) -> Result<SnapshotMetadata> {
        let id = SnapshotId::parse(id)?;
        self.read_sidecar(&id).await
    }

    /// True if a snapshot with this id exists (is committed).
    pub async fn snapshot_exists(&self, id: &str) -> Result<bool> {
        let id = SnapshotId::parse(id)?;
        match self.sink.head(&self.layout.sidecar_key(&id)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every snapshot, newest first: one listing of the snapshots folder, then the sidecars
    /// fetched concurrently. Fails as a whole if the listing or any sidecar read fails (a
    /// partial list would let retention delete the wrong things).
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotMetadata>> {
        let objects = self.sink.list_all(&self.layout.snapshots_dir()).await?;
        let ids: Vec<SnapshotId> = objects
            .iter()
            .filter_map(|o| match self.layout.parse(&o.key) {
                Some((id, ObjectKind::Sidecar)) => Some(id),
                _ => None,
            })
            .collect();
        let mut metas: Vec<SnapshotMetadata> = futures::stream::iter(ids)
            .map(|id| async move {
                match self.read_sidecar(&id).await {
                    // Deleted between the listing and the read: no longer a snapshot.
                    Err(Error::SnapshotNotFound { .. }) => Ok(None),
                    other => other.map(Some),
                }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await?;
        metas.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        Ok(metas)
    }

    async fn read_sidecar(&self, id: &SnapshotId) -> Result<SnapshotMetadata> {
        let key = self.layout.sidecar_key(id);
        let mut stream = match self.sink.get(&key, None).await {
            Err(e) if e.is_not_found() => {
                return Err(Error::SnapshotNotFound { id: id.to_string() })
            }
            other => other?,
        };
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > MAX_SIDECAR_BYTES {
                return Err(Error::corrupt(
                    id.as_str(),
                    None,
                    None,
                    format!("sidecar larger than {MAX_SIDECAR_BYTES} bytes"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        SnapshotMetadata::from_json(&buf, id)
    }

    /// Resolves a snapshot's chain: for every namespace at its point in time, which snapshot
    /// stores it. Reads only sidecars, and only as far up the chain as needed.
    pub async fn resolve(&self, id: &SnapshotId) -> Result<ResolvedSnapshot> {
        self.resolve_only(id, None).await
    }

    /// Like [`Self::resolve`], but follows the chain only as far as the namespaces in `only`
    /// need (all of them when `None`), so a namespace stored in a snapshot itself stays
    /// restorable when an unrelated ancestor is lost. A name the snapshot does not have is a
    /// [`Error::NamespaceNotFound`].
    pub async fn resolve_only(
        &self,
        id: &SnapshotId,
        only: Option<&[String]>,
    ) -> Result<ResolvedSnapshot> {
        let top = self.read_sidecar(id).await?;
        let all: BTreeSet<String> = top.all_namespaces().into_iter().collect();
        let mut wanted = match only {
            None => all,
            Some(list) => {
                if let Some(n) = list.iter().find(|n| !all.contains(*n)) {
                    return Err(Error::NamespaceNotFound {
                        namespace: n.clone(),
                        context: format!("in snapshot {id}"),
                    });
                }
                list.iter().cloned().collect()
            }
        };
        let mut namespaces = BTreeMap::new();
        let mut chain = vec![top];
        loop {
            let idx = chain.len() - 1;
            let cur = &chain[idx];
            for entry in &cur.namespaces {
                if wanted.remove(&entry.name) {
                    namespaces.insert(entry.name.clone(), (idx, entry.clone()));
                }
            }
            if wanted.is_empty() {
                break;
            }
            let Some(parent) = cur.parent_id.clone() else {
                return Err(Error::corrupt(
                    chain[0].id.as_str(),
                    wanted.iter().next().map(String::as_str),
                    None,
                    "namespace is recorded as unchanged but no ancestor stores it",
                ));
            };
            match self.read_ancestor(id, &chain, &parent).await? {
                Some(p) => chain.push(p),
                None => {
                    return Err(Error::BrokenChain {
                        id: id.to_string(),
                        missing: parent.to_string(),
                    })
                }
            }
        }
        Ok(ResolvedSnapshot { chain, namespaces })
    }

    /// Reads `parent`, the next ancestor of the chain from `id` read so far: `None` if it
    /// does not exist, an error if following it would loop.
    async fn read_ancestor(
        &self,
        id: &SnapshotId,
        chain: &[SnapshotMetadata],
        parent: &SnapshotId,
    ) -> Result<Option<SnapshotMetadata>> {
        if chain.len() >= MAX_CHAIN || chain.iter().any(|s| &s.id == parent) {
            return Err(Error::corrupt(
                id.as_str(),
                None,
                None,
                "the ancestor chain loops",
            ));
        }
        match self.read_sidecar(parent).await {
            Ok(p) => Ok(Some(p)),
            Err(Error::SnapshotNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ----- restore ------------------------------------------------------------------------

    /// Restores a snapshot into `storage`.
    ///
    /// Incremental chains are resolved once and each namespace is read from the snapshot
    /// that stores it (one ranged read per namespace; ancestors are not replayed). With
    /// [`crate::SnapshotConfig::verify_before_restore`] (the default), each namespace is
    /// downloaded and checked completely before the store is touched, so corrupt data
    /// never half-replaces a namespace. All names, renames and dimensions are checked
    /// before the first change.
    pub async fn restore_snapshot(
        &self,
        storage: &dyn VectorStorage,
        id: &str,
        options: &RestoreOptions,
    ) -> Result<RestoreResult> {
        let id = SnapshotId::parse(id)?;
        let resolved = self
            .resolve_only(&id, options.namespaces.as_deref())
            .await?;
        let selected: Vec<String> = resolved.namespaces.keys().cloned().collect();
        // Plan targets and check everything before the first change.
        let mut targets: Vec<(String, String)> = Vec::new();
        let mut seen_targets = HashMap::new();
        for from in options.rename.keys() {
            if !selected.contains(from) {
                return Err(Error::invalid(
                    "rename",
                    format!("{from:?} is not among the namespaces being restored"),
                ));
            }
        }
        for src in &selected {
            let target = options.rename.get(src).unwrap_or(src).clone();
            validate_namespace(&target)?;
            if let Some(other) = seen_targets.insert(target.clone(), src.clone()) {
                return Err(Error::invalid(
                    "rename",
                    format!("{other:?} and {src:?} would both be restored into {target:?}"),
                ));
            }
            targets.push((src.clone(), target));
        }
        if options.mode == RestoreMode::Merge {
            for (src, target) in &targets {
                let want = resolved.namespaces[src].1.dimension.map(|d| d as usize);
                if storage.namespace_exists(target).await? {
                    if let (Some(have), Some(want)) = (storage.dimension(target).await?, want) {
                        if have != want {
                            return Err(Error::DimensionMismatch {
                                namespace: target.clone(),
                                expected: have,
                                actual: want,
                            });
                        }
                    }
                }
            }
        }

        let now = self.clock.now_secs();
        let mut result = RestoreResult {
            snapshot_id: id.clone(),
            namespaces_restored: 0,
            vectors_restored: 0,
            vectors_skipped_expired: 0,
            namespaces: Vec::new(),
        };
        let total = targets
            .iter()
            .map(|(src, _)| resolved.namespaces[src].1.length)
            .sum();
        self.progress.begin(&format!("restore {id}"), Some(total));
        let _end = EndProgress(self.progress.as_ref());
        for (src, target) in targets {
            let (idx, entry) = &resolved.namespaces[&src];
            let holder = &resolved.chain[*idx];
            let (written, skipped) = self
                .restore_namespace(storage, holder, entry, &target, options, now)
                .await?;
            tracing::info!(snapshot = %id, namespace = %src, target = %target, vectors = written, "namespace restored");
            result.namespaces_restored += 1;
            result.vectors_restored += written;
            result.vectors_skipped_expired += skipped;
            result.namespaces.push(RestoredNamespace {
                source: src,
                target,
                from_snapshot: holder.id.clone(),
                vectors: written,
            });
        }
        Ok(result)
    }

    async fn restore_namespace(
        &self,
        storage: &dyn VectorStorage,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
        target: &str,
        options: &RestoreOptions,
        now: u64,
    ) -> Result<(u64, u64)> {
        // One ranged read, checked against the namespace's checksum before anything changes:
        // a corrupt or truncated snapshot never half-replaces a namespace.
        let spool = self.fetch_namespace(holder, entry).await?;
        let parallelism = self.config.effective_parallelism();
        let mut reader =
            NamespaceReader::open(holder, entry, spool, entry.offset, parallelism).await?;

        match options.mode {
            RestoreMode::Replace => {
                if storage.namespace_exists(target).await? {
                    storage.delete_namespace(target).await?;
                }
                storage.ensure_namespace(target).await?;
            }
            RestoreMode::Merge => storage.ensure_namespace(target).await?,
        }
        let (mut written, mut skipped) = (0u64, 0u64);
        while let Some(vectors) = reader.next().await? {
            let before = vectors.len();
            let mut live: Vec<Vector> = if options.include_expired {
                vectors
            } else {
                vectors.into_iter().filter(|v| !v.is_expired(now)).collect()
            };
            skipped += (before - live.len()) as u64;
            while !live.is_empty() {
                let rest = live.split_off(live.len().min(self.config.restore_batch_size));
                let n = live.len() as u64;
                storage
                    .upsert(target, std::mem::replace(&mut live, rest))
                    .await?;
                written += n;
            }
        }
        reader.finish().await?;
        Ok((written, skipped))
    }

    /// Downloads one namespace's byte range and checks every chunk's SHA-256.
    async fn fetch_namespace(
        &self,
        meta: &SnapshotMetadata,
        entry: &NamespaceEntry,
    ) -> Result<Arc<pipeline::Spool>> {
        let blob_key = self.layout.blob_key(&meta.id);
        let range = entry.range();
        let fetched = pipeline::download(
            self.sink.as_ref(),
            &blob_key,
            Some(range.range()),
            range.length,
            None,
            self.progress.as_ref(),
        )
        .await;
        let spool = match fetched {
            Err(e) if e.is_not_found() => return Err(blob_missing(meta.id.as_str())),
            Err(Error::InvalidInput { what: "range", .. }) => {
                return Err(Error::corrupt(
                    meta.id.as_str(),
                    Some(&entry.name),
                    Some(range.offset),
                    "the blob is shorter than its sidecar records (truncated)",
                ))
            }
            other => other?,
        };
        let spool = Arc::new(spool);
        pipeline::check_chunks(
            &spool,
            range.offset,
            meta,
            entry,
            self.config.effective_parallelism(),
        )
        .await?;
        Ok(spool)
    }

    // ----- verify -------------------------------------------------------------------------

    /// Re-reads a snapshot completely and checks it: the blob's size and SHA-256, the header,
    /// every namespace's frames, counts and content digest against the sidecar, the footer,
    /// and that every ancestor it depends on exists. Returns what was checked, or the first
    /// problem as [`Error::Corrupt`] (naming the snapshot and namespace) or
    /// [`Error::BrokenChain`].
    pub async fn verify_snapshot(&self, id: &str) -> Result<VerifyReport> {
        let id = SnapshotId::parse(id)?;
        let meta = self.read_sidecar(&id).await?;
        let blob_key = self.layout.blob_key(&id);
        let info = match self.sink.head(&blob_key).await {
            Err(e) if e.is_not_found() => return Err(blob_missing(id.as_str())),
            other => other?,
        };
        if info.size != meta.size_bytes {
            return Err(Error::corrupt(
                id.as_str(),
                None,
                Some(info.size.min(meta.size_bytes)),
                format!(
                    "the blob is {} bytes but the sidecar records {} (truncated or replaced)",
                    info.size, meta.size_bytes
                ),
            ));
        }
        let mut sha = Sha256::new();
        self.progress
            .begin(&format!("verify {id}"), Some(meta.size_bytes));
        let spool = pipeline::download(
            self.sink.as_ref(),
            &blob_key,
            None,
            meta.size_bytes,
            Some(&mut sha),
            self.progress.as_ref(),
        )
        .await;
        self.progress.end();
        let spool = spool?;
        let spool = Arc::new(spool);
        let sha: [u8; 32] = sha.finalize().into();
        let parallelism = self.config.effective_parallelism();
        if hex::encode(sha) != meta.blob_sha256 {
            // Say where: the first chunk whose checksum fails names the namespace.
            for entry in &meta.namespaces {
                if let Err(Error::Corrupt { location, reason }) =
                    pipeline::check_chunks(&spool, 0, &meta, entry, parallelism).await
                {
                    let reason = format!("blob SHA-256 does not match the sidecar: {reason}");
                    return Err(Error::Corrupt { location, reason });
                }
            }
            return Err(Error::corrupt(
                id.as_str(),
                None,
                None,
                "blob SHA-256 does not match the sidecar (the namespaces' chunks are intact: the damage is in the header or footer)",
            ));
        }
        let small = |off: u64, len: u64| spool.read(off, len);
        let header = blob::decode_header(&small(0, meta.header.length)?[..])
            .map_err(|e| decode_error(id.as_str(), None, 0, e))?;
        if header.snapshot_id != id.as_str() || header.created_at_ms != meta.created_at_ms {
            let why = format!("the blob was written for snapshot {}", header.snapshot_id);
            return Err(Error::corrupt(id.as_str(), None, Some(0), why));
        }
        let mut namespaces = Vec::new();
        for entry in &meta.namespaces {
            pipeline::check_chunks(&spool, 0, &meta, entry, parallelism).await?;
            let mut reader =
                NamespaceReader::open(&meta, entry, spool.clone(), 0, parallelism).await?;
            while reader.next().await?.is_some() {}
            namespaces.push((entry.name.clone(), reader.finish().await?));
        }
        let footer = blob::decode_footer(&small(meta.footer.offset, meta.footer.length)?[..])
            .map_err(|e| decode_error(id.as_str(), None, meta.footer.offset, e))?;
        if footer.namespaces as usize != meta.namespaces.len()
            || footer.total_vectors != meta.total_vectors
        {
            let why = "the blob's footer disagrees with the sidecar";
            return Err(Error::corrupt(
                id.as_str(),
                None,
                Some(meta.footer.offset),
                why,
            ));
        }
        let chain = self
            .resolve(&id)
            .await?
            .chain
            .into_iter()
            .map(|m| m.id)
            .collect();
        Ok(VerifyReport {
            snapshot_id: id,
            bytes_checked: meta.size_bytes,
            vectors_checked: meta.total_vectors,
            namespaces,
            chain,
        })
    }

    // ----- delete, retention, gc ----------------------------------------------------------

    /// Deletes a snapshot. If other snapshots build on it, fails with
    /// [`Error::HasDependents`] unless `force`, in which case its descendants are deleted too
    /// (newest first, so no listed snapshot ever lacks its parent). Returns what was deleted.
    pub async fn delete_snapshot(&self, id: &str, force: bool) -> Result<Vec<SnapshotId>> {
        let id = SnapshotId::parse(id)?;
        if !self.snapshot_exists(id.as_str()).await? {
            return Err(Error::SnapshotNotFound { id: id.to_string() });
        }
        let all = self.list_snapshots().await?;
        let mut doomed = vec![id.clone()];
        doomed.extend(descendants(&all, &id));
        if doomed.len() > 1 && !force {
            return Err(Error::HasDependents {
                id: id.to_string(),
                children: doomed[1..].iter().map(|s| s.to_string()).collect(),
            });
        }
        let pins = self.live_pins().await?;
        if let Some(p) = doomed.iter().find(|d| pins.contains(*d)) {
            return Err(Error::Conflict {
                key: p.to_string(),
                reason:
                    "an incremental snapshot is being written on top of it; retry when that is done"
                        .into(),
            });
        }
        doomed.reverse();
        for s in &doomed {
            self.remove(s).await?;
        }
        Ok(doomed)
    }

    /// Removes one snapshot: the sidecar first (the snapshot stops existing atomically), then
    /// the blob (if that fails, the orphan is left for `gc`).
    async fn remove(&self, id: &SnapshotId) -> Result<()> {
        self.sink.delete(&self.layout.sidecar_key(id)).await?;
        if let Err(e) = self.sink.delete(&self.layout.blob_key(id)).await {
            tracing::warn!(snapshot = %id, error = %e, "sidecar deleted but blob not; `gc` will remove it");
        }
        tracing::info!(snapshot = %id, "snapshot deleted");
        Ok(())
    }

    /// Applies a retention policy (see [`crate::retention`]). Never deletes anything if the
    /// listing fails; never deletes an ancestor of a kept snapshot.
    pub async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        let all = self.list_snapshots().await?;
        let pins = self.live_pins().await?;
        let mut plan = retention::plan(&all, policy, self.clock.now_secs());
        let mut protected = BTreeSet::new();
        for p in &pins {
            protected.extend(ancestry(&all, p));
        }
        keep_protected(&mut plan, &protected);
        let mut deleted = Vec::new();
        if !dry_run {
            for id in plan.remove.clone() {
                // Pins placed since the plan: look again right before each delete.
                let pins = self.live_pins().await?;
                if pins.contains(&id) || protected.contains(&id) {
                    for p in &pins {
                        protected.extend(ancestry(&all, p));
                    }
                    continue;
                }
                self.remove(&id).await?;
                deleted.push(id);
            }
            for gone in &deleted {
                protected.remove(gone);
            }
            keep_protected(&mut plan, &protected);
        }
        Ok(RetentionReport { plan, deleted })
    }

    /// Snapshots pinned by incremental snapshots being written (pins younger than
    /// [`PIN_TTL`]; pins whose age the backend cannot tell count as live).
    async fn live_pins(&self) -> Result<BTreeSet<SnapshotId>> {
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(PIN_TTL.as_millis() as u64);
        Ok(self
            .sink
            .list_all(&self.layout.pins_dir())
            .await?
            .iter()
            .filter(|o| o.last_modified_ms == 0 || o.last_modified_ms >= cutoff)
            .filter_map(|o| self.layout.parse_pin(&o.key))
            .collect())
    }

    /// Removes blobs that have no sidecar and were last modified more than `grace` ago
    /// (orphans of writers that crashed between upload and commit), and the sink's own
    /// stale temporary files or incomplete uploads. `grace` protects writers still at work.
    pub async fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        let cutoff = self.clock.now_ms().saturating_sub(grace.as_millis() as u64);
        let objects = self.sink.list_all(&self.layout.snapshots_dir()).await?;
        let sidecars: BTreeSet<SnapshotId> = objects
            .iter()
            .filter_map(|o| match self.layout.parse(&o.key) {
                Some((id, ObjectKind::Sidecar)) => Some(id),
                _ => None,
            })
            .collect();
        let mut report = GcReport::default();
        for o in &objects {
            if let Some((id, ObjectKind::Blob)) = self.layout.parse(&o.key) {
                if !sidecars.contains(&id) && o.last_modified_ms < cutoff {
                    report.orphan_blobs.push(o.key.to_string());
                    if !dry_run {
                        // Re-check right before deleting: a slow writer may have committed.
                        if self.sink.head(&self.layout.sidecar_key(&id)).await.is_ok() {
                            continue;
                        }
                        self.sink.delete(&o.key).await?;
                        report.removed.push(o.key.to_string());
                    }
                }
            }
        }
        if !dry_run {
            report.incomplete_uploads_removed = self.sink.remove_incomplete(cutoff).await?;
            // Pins of writers that died: only once retention ignores them anyway.
            let pin_cutoff = cutoff.min(
                self.clock
                    .now_ms()
                    .saturating_sub(PIN_TTL.as_millis() as u64),
            );
            for o in self.sink.list_all(&self.layout.pins_dir()).await? {
                if self.layout.parse_pin(&o.key).is_some()
                    && o.last_modified_ms != 0
                    && o.last_modified_ms < pin_cutoff
                {
                    self.sink.delete(&o.key).await?;
                    report.stale_pins_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

/// Snapshots among `all` that build on `id`, directly or not, each after its parent
/// (children, then grandchildren, ...). A forged cycle back to `id` is ignored.
fn descendants(all: &[SnapshotMetadata], id: &SnapshotId) -> Vec<SnapshotId> {
    let mut children: BTreeMap<&SnapshotId, Vec<&SnapshotId>> = BTreeMap::new();
    for m in all {
        if let Some(p) = &m.parent_id {
            children.entry(p).or_default().push(&m.id);
        }
    }
    let mut out: Vec<SnapshotId> = Vec::new();
    let mut next = 0;
    let mut cur = id;
    loop {
        for c in children.get(cur).into_iter().flatten() {
            if *c != id && !out.contains(c) {
                out.push((*c).clone());
            }
        }
        let Some(n) = out.get(next) else { return out };
        cur = n;
        next += 1;
    }
}

/// `id` and its ancestors among `all`.
fn ancestry(all: &[SnapshotMetadata], id: &SnapshotId) -> Vec<SnapshotId> {
    let mut out = vec![id.clone()];
    while let Some(parent) = all
        .iter()
        .find(|m| &m.id == out.last().expect("not empty"))
        .and_then(|m| m.parent_id.clone())
    {
        if out.contains(&parent) {
            break;
        }
        out.push(parent);
    }
    out
}

/// Moves protected snapshots from the plan's removals to its keeps.
fn keep_protected(plan: &mut RetentionPlan, protected: &BTreeSet<SnapshotId>) {
    let (spared, remove): (Vec<SnapshotId>, Vec<SnapshotId>) = std::mem::take(&mut plan.remove)
        .into_iter()
        .partition(|id| protected.contains(id));
    plan.remove = remove;
    for id in spared {
        plan.keep.push((
            id,
            vec!["pinned: an incremental snapshot is being written on top of it".into()],
        ));
    }
}

/// The error for a committed snapshot whose blob is gone.
fn blob_missing(id: &str) -> Error {
    Error::corrupt(id, None, None, "the blob is missing")
}

/// Ends the current progress phase when dropped, however the phase ends.
struct EndProgress<'a>(&'a dyn Progress);

impl Drop for EndProgress<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

struct WritePlan {
    snapshot_type: SnapshotType,
    parent: Option<SnapshotId>,
    store: Vec<String>,
    unchanged: Vec<String>,
    deleted: Vec<String>,
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

async fn namespace_dimension(storage: &dyn VectorStorage, ns: &str) -> Result<u32> {
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
