//! Reading snapshot data back: restore into a store, and `read_vectors` for exports.

use super::catalog::ResolvedSnapshot;
use super::chunks::{ChunkTable, Located};
use super::pipeline::{self, ChunkBytes, NamespaceReader, Run, Spool};
use super::plan;
use super::reports::{ExportReport, RestoreResult};
use super::{EndProgress, SnapshotManager};
use crate::config::{RestoreMode, RestoreOptions};
use crate::error::{Error, Result};
use crate::format::sidecar::{NamespaceEntry, SnapshotMetadata};
use crate::id::SnapshotId;
use crate::paths::BlobPlace;
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
        let restored = self.restore_parsed(storage, &id, options).await;
        self.conflict_if_deleted_while_read(restored, |gone| {
            format!(
                "snapshot {gone} was deleted by a concurrent prune or delete while snapshot {id} was being restored from it; namespaces restored before that stay restored (restore a surviving snapshot)"
            )
        })
        .await
    }

    async fn restore_parsed(
        &self,
        storage: &dyn VectorStorage,
        id: &SnapshotId,
        options: &RestoreOptions,
    ) -> Result<RestoreResult> {
        let resolved = self.resolve_only(id, options.namespaces.as_deref()).await?;
        let selected: Vec<String> = resolved.namespaces.keys().cloned().collect();
        let targets = plan::restore_targets(&selected, &options.rename)?;
        if options.mode == RestoreMode::Merge {
            self.check_merge_dimensions(storage, &resolved, &targets)
                .await?;
        }
        let mut result = RestoreResult {
            snapshot_id: id.clone(),
            namespaces_restored: 0,
            vectors_restored: 0,
            vectors_skipped_expired: 0,
            namespaces: Vec::new(),
        };
        let total = targets.iter().fold(0u64, |n, (src, _)| {
            n.saturating_add(logical(&resolved.namespaces[src].1))
        });
        self.progress.begin(&format!("restore {id}"), Some(total));
        let _end = EndProgress(self.progress.as_ref());
        self.restore_targets(storage, &resolved, targets, options, &mut result)
            .await?;
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

    pub(super) async fn restore_namespace(
        &self,
        storage: &dyn VectorStorage,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
        target: &str,
        options: &RestoreOptions,
        now: u64,
    ) -> Result<(u64, u64)> {
        // Every chunk fetched and checked against its checksum before anything changes:
        // a corrupt or truncated snapshot never half-replaces a namespace.
        let mut reader = self.open_namespace(holder, entry, false).await?;
        self.prepare_target(storage, target, options.mode).await?;
        let (mut written, mut skipped) = (0u64, 0u64);
        while let Some(vectors) = reader.next().await? {
            let (w, s) = self
                .upsert_live(storage, target, vectors, options, now)
                .await?;
            written += w;
            skipped += s;
        }
        reader.finish().await?;
        Ok((written, skipped))
    }

    /// Empties the target namespace (replace) or makes sure it exists (merge).
    pub(super) async fn prepare_target(
        &self,
        storage: &dyn VectorStorage,
        target: &str,
        mode: RestoreMode,
    ) -> Result<()> {
        if mode == RestoreMode::Replace && storage.namespace_exists(target).await? {
            storage.delete_namespace(target).await?;
        }
        storage.ensure_namespace(target).await
    }

    /// Upserts the vectors that have not expired (all of them with `include_expired`) in
    /// batches of `restore_batch_size`; returns (written, skipped as expired).
    pub(super) async fn upsert_live(
        &self,
        storage: &dyn VectorStorage,
        target: &str,
        vectors: Vec<Vector>,
        options: &RestoreOptions,
        now: u64,
    ) -> Result<(u64, u64)> {
        let before = vectors.len();
        let mut live: Vec<Vector> = if options.include_expired {
            vectors
        } else {
            vectors.into_iter().filter(|v| !v.is_expired(now)).collect()
        };
        let skipped = (before - live.len()) as u64;
        let mut written = 0;
        while !live.is_empty() {
            let rest = live.split_off(live.len().min(self.config.restore_batch_size));
            let n = live.len() as u64;
            storage
                .upsert(target, std::mem::replace(&mut live, rest))
                .await?;
            written += n;
        }
        Ok((written, skipped))
    }

    /// A reader of one namespace as `holder` records it: its chunk table read and checked,
    /// every chunk (in this blob or an ancestor's) fetched and checked against its CRC-32.
    /// With `hashes`, the reader checks each chunk's SHA-256 too (see [`NamespaceReader`]).
    pub(super) async fn open_namespace(
        &self,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
        hashes: bool,
    ) -> Result<NamespaceReader> {
        self.open_namespace_in(holder, entry, hashes, None).await
    }

    /// [`Self::open_namespace`], reading the chunks in `holder`'s own blob from `own` (the
    /// whole blob, already downloaded) instead of fetching them again.
    pub(super) async fn open_namespace_in(
        &self,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
        hashes: bool,
        own: Option<&Arc<Spool>>,
    ) -> Result<NamespaceReader> {
        let table = Arc::new(self.chunk_table(holder, entry).await?);
        let bytes: Arc<[ChunkBytes]> = self.fetch_chunks(&table, own).await?.into();
        let parallelism = self.config.effective_parallelism();
        let batch = self.config.chunk_size as u64;
        pipeline::check_chunks(&table, &bytes, parallelism, batch).await?;
        Ok(NamespaceReader::new(
            table,
            bytes,
            hashes,
            parallelism,
            batch,
        ))
    }

    /// Downloads a namespace's chunks: consecutive chunks of one blob in one ranged read.
    /// Chunks of the holder's own blob come from `own` when given.
    async fn fetch_chunks(
        &self,
        table: &ChunkTable,
        own: Option<&Arc<Spool>>,
    ) -> Result<Vec<ChunkBytes>> {
        let in_own = |c: &Located| own.is_some() && c.snapshot == table.holder;
        let to_fetch = table.chunks.iter().filter(|c| !in_own(c));
        let place = self.blob_place().await?;
        let (runs, firsts, run_of) = group_runs(place, to_fetch);
        let on_error = |i: usize, e: Error| {
            let first = firsts[i];
            let id = first.snapshot.as_str();
            pipeline::blob_read_error(e, id, &table.name, first.chunk.offset)
        };
        let spools =
            pipeline::download_runs(self.sink.as_ref(), &runs, self.progress.as_ref(), on_error)
                .await?;
        let mut fetched = run_of.into_iter().map(|i| ChunkBytes {
            spool: spools[i].clone(),
            base: runs[i].range.start,
        });
        let mut out = Vec::with_capacity(table.chunks.len());
        for c in &table.chunks {
            let bytes = match own {
                Some(spool) if in_own(c) => Some(ChunkBytes {
                    spool: spool.clone(),
                    base: 0,
                }),
                _ => fetched.next(),
            };
            out.push(bytes.ok_or_else(|| Error::Internal("a chunk was not fetched".into()))?);
        }
        Ok(out)
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
        f: F,
    ) -> Result<ExportReport>
    where
        F: FnMut(&str, Vec<Vector>) -> Result<()> + Send,
    {
        let id = SnapshotId::parse(id)?;
        let read = self.read_parsed(&id, only, f).await;
        self.conflict_if_deleted_while_read(read, |gone| {
            format!(
                "snapshot {gone} was deleted by a concurrent prune or delete while snapshot {id} was being read from it; the vectors handed out before that are not all of it (read a surviving snapshot)"
            )
        })
        .await
    }

    async fn read_parsed<F>(
        &self,
        id: &SnapshotId,
        only: Option<&[String]>,
        mut f: F,
    ) -> Result<ExportReport>
    where
        F: FnMut(&str, Vec<Vector>) -> Result<()> + Send,
    {
        let resolved = self.resolve_only(id, only).await?;
        let total = resolved
            .namespaces
            .values()
            .fold(0u64, |n, (_, e)| n.saturating_add(logical(e)));
        self.progress.begin(&format!("export {id}"), Some(total));
        let _end = EndProgress(self.progress.as_ref());
        let mut report = ExportReport {
            snapshot_id: Some(id.clone()),
            ..Default::default()
        };
        for (name, (idx, entry)) in &resolved.namespaces {
            let holder = &resolved.chain[*idx];
            let mut reader = self.open_namespace(holder, entry, false).await?;
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

/// Groups consecutive chunks of one blob into runs (one ranged read each): the runs, the
/// first chunk of each (errors name it), and for each chunk the index of its run.
fn group_runs<'a>(
    place: BlobPlace,
    chunks: impl Iterator<Item = &'a Located>,
) -> (Vec<Run>, Vec<&'a Located>, Vec<usize>) {
    let (mut runs, mut firsts, mut run_of): (Vec<Run>, Vec<&Located>, Vec<usize>) =
        Default::default();
    for c in chunks {
        let extends = runs.last_mut().filter(|r: &&mut Run| {
            firsts.last().is_some_and(|f| f.snapshot == c.snapshot) && r.range.end == c.chunk.offset
        });
        match extends {
            Some(r) => r.range.end += c.chunk.length,
            None => {
                let key = place.key(&c.snapshot);
                runs.push(Run {
                    key,
                    range: c.chunk.offset..c.chunk.offset + c.chunk.length,
                });
                firsts.push(c);
            }
        }
        run_of.push(runs.len() - 1);
    }
    (runs, firsts, run_of)
}

/// Compressed bytes of a namespace's data, wherever stored: what reading it downloads.
fn logical(entry: &NamespaceEntry) -> u64 {
    entry.logical_bytes.unwrap_or(entry.length)
}
