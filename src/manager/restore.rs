//! Reading snapshot data back: restore into a store, and `read_vectors` for exports.

use super::catalog::ResolvedSnapshot;
use super::pipeline::{self, NamespaceReader};
use super::plan;
use super::reports::{ExportReport, RestoreResult, RestoredNamespace};
use super::{blob_missing, EndProgress, SnapshotManager};
use crate::config::{RestoreMode, RestoreOptions};
use crate::error::{Error, Result, SinkErrorKind};
use crate::format::sidecar::{NamespaceEntry, SnapshotMetadata};
use crate::id::SnapshotId;
use crate::storage::{Vector, VectorStorage};
use std::sync::Arc;

impl SnapshotManager {
    /// Restores a snapshot into `storage`.
    ///
    /// Incremental chains are resolved once and each namespace is read from the snapshot
    /// that stores it (one ranged read per namespace; ancestors are not replayed). Each
    /// namespace is downloaded and every chunk's checksum checked before the store is
    /// touched, so corrupt data never half-replaces a namespace. All names, renames and
    /// dimensions are checked before the first change.
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
        let targets = plan::restore_targets(&selected, &options.rename)?;
        if options.mode == RestoreMode::Merge {
            self.check_merge_dimensions(storage, &resolved, &targets)
                .await?;
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

    /// A merge must not mix dimensions: each existing target has the snapshot's dimension.
    async fn check_merge_dimensions(
        &self,
        storage: &dyn VectorStorage,
        resolved: &ResolvedSnapshot,
        targets: &[(String, String)],
    ) -> Result<()> {
        for (src, target) in targets {
            let want = resolved.namespaces[src].1.dimension.map(|d| d as usize);
            if !storage.namespace_exists(target).await? {
                continue;
            }
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
        Ok(())
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
            Err(e) if e.sink_kind() == Some(SinkErrorKind::InvalidRange) => {
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

    /// Reads a snapshot's vectors at its point in time (incremental chains resolved),
    /// namespace by namespace in name order and each in id order, and hands every checked
    /// batch to `f`. `only` limits the namespaces. Each namespace's chunks are checked
    /// against their checksums before the first of its vectors is handed out, and its count
    /// and content digest are checked at its end.
    pub async fn read_vectors<F>(
        &self,
        id: &str,
        only: Option<&[String]>,
        mut f: F,
    ) -> Result<ExportReport>
    where
        F: FnMut(&str, Vec<Vector>) -> Result<()> + Send,
    {
        let id = SnapshotId::parse(id)?;
        let resolved = self.resolve_only(&id, only).await?;
        let total = resolved.namespaces.values().map(|(_, e)| e.length).sum();
        self.progress.begin(&format!("export {id}"), Some(total));
        let _end = EndProgress(self.progress.as_ref());
        let mut report = ExportReport {
            snapshot_id: Some(id.clone()),
            ..Default::default()
        };
        let parallelism = self.config.effective_parallelism();
        for (name, (idx, entry)) in &resolved.namespaces {
            let holder = &resolved.chain[*idx];
            let spool = self.fetch_namespace(holder, entry).await?;
            let mut reader =
                pipeline::NamespaceReader::open(holder, entry, spool, entry.offset, parallelism)
                    .await?;
            while let Some(batch) = reader.next().await? {
                f(name, batch)?;
            }
            let n = reader.finish().await?;
            report.vectors += n;
            report.namespaces.push((name.clone(), n));
        }
        Ok(report)
    }
}
