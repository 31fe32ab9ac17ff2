//! Writing a snapshot: the blob upload, then the sidecar that commits it.

use super::pipeline::BlobWriter;
use super::plan::WritePlan;
use super::sections::{namespace_shapes, BlobBody};
use super::{EndProgress, SnapshotManager};
use crate::config::CreateOptions;
use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::format::sidecar::{new_format_fields, CompressionInfo, SnapshotMetadata};
use crate::id::SnapshotId;
use crate::paths::Key;
use crate::retention::RetentionPolicy;
use crate::sink::{PutMode, SinkExt};
use crate::storage::VectorStorage;
use bytes::Bytes;

/// A blob uploaded and checked, not yet committed.
struct UploadedBlob {
    body: BlobBody,
    size: u64,
    raw: u64,
    sha: [u8; 32],
}

impl SnapshotManager {
    /// Writes the blob, then commits its sidecar; then applies `max_snapshots`.
    pub(super) async fn write_and_commit(
        &self,
        storage: &dyn VectorStorage,
        plan: WritePlan,
        options: CreateOptions,
    ) -> Result<SnapshotMetadata> {
        let meta = self
            .write_and_commit_as(storage, plan, options, self.ids.next_id())
            .await?;
        self.retention_after_create().await;
        Ok(meta)
    }

    /// Writes the blob and commits the sidecar of a snapshot with the given id and
    /// creation time (a new one's, or, for a copy, the original's).
    pub(super) async fn write_and_commit_as(
        &self,
        storage: &dyn VectorStorage,
        plan: WritePlan,
        options: CreateOptions,
        (id, created_ms): (SnapshotId, u64),
    ) -> Result<SnapshotMetadata> {
        // Opens the repository: an encrypted one seals everything written (and refuses a
        // writer without its key) from here on.
        self.access().await?;
        tracing::info!(snapshot = %id, repo = %self.sink.describe(), namespaces = plan.store.len(), "creating snapshot");
        let blob = self.upload_blob(storage, &id, created_ms, &plan).await?;
        let meta = self.new_metadata(id, created_ms, plan, options, blob).await;
        if let Err(e) = meta.check_layout() {
            self.discard_blob(&self.blob_key(&meta.id).await?).await;
            return Err(Error::Internal(format!(
                "the written layout is inconsistent: {e}"
            )));
        }
        // The commit point.
        self.commit_sidecar(&meta.id, Bytes::from(self.stored_sidecar(&meta)))
            .await?;
        tracing::info!(snapshot = %meta.id, vectors = meta.total_vectors, bytes = meta.size_bytes, "snapshot committed");
        Ok(meta)
    }

    /// Streams the blob to the sink and checks that the backend holds all of it. On any
    /// failure the upload is aborted or the blob removed, except when the key belongs to
    /// another writer.
    async fn upload_blob(
        &self,
        storage: &dyn VectorStorage,
        id: &SnapshotId,
        created_ms: u64,
        plan: &WritePlan,
    ) -> Result<UploadedBlob> {
        let blob_key = self.blob_place_for_writing().await?.key(id);
        let shapes = namespace_shapes(storage, &plan.store).await?;
        let total = shapes.iter().map(|s| s.value_bytes).sum();
        self.progress.begin(&format!("write {id}"), Some(total));
        let _end = EndProgress(self.progress.as_ref());
        let out = self.sink.put_streaming(&blob_key, PutMode::Create).await?;
        let sealing = self
            .opened_keys()
            .map(|keys| crate::crypto::Sealing::new(keys, id.as_str()));
        let mut w = BlobWriter::new(out, sealing);
        let written = self
            .write_body(&mut w, storage, (id, created_ms), plan, &shapes)
            .await;
        let body = match written {
            Ok(body) => body,
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
        if let Err(e) = self.check_stored_size(&blob_key, size).await {
            self.discard_blob(&blob_key).await;
            return Err(e);
        }
        Ok(UploadedBlob {
            body,
            size,
            raw,
            sha,
        })
    }

    /// What the backend holds, not what the upload reported: a short blob never commits.
    async fn check_stored_size(&self, blob_key: &Key, size: u64) -> Result<()> {
        let info = self.sink.head(blob_key).await?;
        if info.size == size {
            return Ok(());
        }
        Err(Error::sink(
            SinkOp::PutStreaming,
            blob_key.as_str(),
            SinkErrorKind::Other,
            format!(
                "the repository holds {} bytes of the blob but {size} were written",
                info.size
            ),
        ))
    }

    async fn new_metadata(
        &self,
        id: SnapshotId,
        created_ms: u64,
        mut plan: WritePlan,
        options: CreateOptions,
        blob: UploadedBlob,
    ) -> SnapshotMetadata {
        let (format, format_version, writer) = new_format_fields();
        let body = blob.body;
        // Written by this build a moment ago: a failure would be a bug, caught by the layout
        // check that follows (as empty lists that disagree with the counts).
        let listed = match body.listed.result().await {
            Ok(Ok((listed, _))) => listed,
            _ => Default::default(),
        };
        for name in &body.found_unchanged {
            plan.inherited_bytes += plan.compare.get(name).map_or(0, |v| v.logical_bytes);
        }
        SnapshotMetadata {
            format,
            format_version,
            writer,
            id,
            created_at: created_ms / 1000,
            created_at_ms: created_ms,
            description: options.description,
            labels: options.labels,
            snapshot_type: plan.snapshot_type,
            parent_id: plan.parent,
            total_vectors: listed.stored.iter().map(|n| n.vector_count).sum(),
            logical_bytes: Some(
                plan.inherited_bytes
                    + listed
                        .stored
                        .iter()
                        .filter_map(|n| n.logical_bytes)
                        .sum::<u64>(),
            ),
            namespaces: listed.stored,
            unchanged_namespaces: listed.unchanged,
            deleted_namespaces: listed.deleted,
            size_bytes: blob.size,
            raw_bytes: blob.raw,
            blob_sha256: hex::encode(blob.sha),
            header: body.header,
            footer: body.footer,
            directory: Some(body.directory),
            compression: CompressionInfo {
                codec: "gzip".into(),
                level: self.config.effective_level(),
                filter: self.config.effective_filter(),
            },
            include_metadata: self.config.include_metadata,
            sealed_by: crate::crypto::SealedBy(self.opened_keys()),
        }
    }

    /// The sidecar of `meta` as stored: sealed in an encrypted repository (format 4.0).
    pub(super) fn stored_sidecar(&self, meta: &SnapshotMetadata) -> Vec<u8> {
        match self.opened_keys() {
            Some(keys) => crate::crypto::sidecar::seal(meta, &keys),
            None => meta.to_json(),
        }
    }

    /// `max_snapshots`: retention after each create. The snapshot is committed already, so
    /// a failed clean-up is logged, never reported as a failed create.
    async fn retention_after_create(&self) {
        if self.config.max_snapshots == 0 {
            return;
        }
        let policy = RetentionPolicy::keep_last(self.config.max_snapshots);
        if let Err(e) = self.apply_retention(&policy, false).await {
            tracing::warn!(error = %e, "retention after create failed; nothing was lost, it will be retried after the next create");
        }
    }

    /// Removes a blob that will not be committed (best effort: `gc` removes what is left).
    pub(super) async fn discard_blob(&self, blob_key: &Key) {
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
        let (sidecar_key, blob_key) = (self.layout.sidecar_key(id), self.blob_key(id).await?);
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
}
