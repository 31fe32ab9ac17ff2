//! Copying a snapshot between repositories whose keys differ (either or both encrypted): a
//! sealed blob opens only under its own repository's keys, so the snapshot is read here,
//! checked as a restore checks it, and written again there under the same id, creation
//! time, type, parent, description and labels, sealed with the destination's keys (and
//! deduplicated against the destination's copy of its parent).

use super::reports::CopyOutcome;
use super::snapshot_view::SnapshotView;
use super::SnapshotManager;
use crate::config::CreateOptions;
use crate::error::Result;
use crate::format::sidecar::{SnapshotMetadata, SnapshotType};
use crate::paths::validate_namespace;
use crate::sink::PutMode;
use bytes::Bytes;

impl SnapshotManager {
    /// Re-encodes snapshot `meta` (its sidecar, read here) into `to`. Its parent must be
    /// there already.
    pub(super) async fn copy_reencrypting(
        &self,
        meta: &SnapshotMetadata,
        to: &SnapshotManager,
    ) -> Result<CopyOutcome> {
        if let Some(present) = to.present_reencrypted(meta).await? {
            return Ok(present);
        }
        to.require_parent(meta).await?;
        let mut full = meta.clone();
        self.load_directory(&mut full).await?;
        let view = SnapshotView::new(self, &meta.id).await?;
        let options = CreateOptions {
            description: meta.description.clone(),
            labels: meta.labels.clone(),
        };
        let identity = (meta.id.clone(), meta.created_at_ms);
        to.discard_uncommitted_copy(&meta.id, &to.blob_key(&meta.id).await?)
            .await;
        let made = match (meta.snapshot_type, &meta.parent_id) {
            (SnapshotType::Incremental, Some(parent)) => {
                let stored: Vec<String> = full.namespaces.iter().map(|n| n.name.clone()).collect();
                to.copy_incremental(&view, parent, &stored, options, identity)
                    .await?
            }
            _ => {
                let names = view_namespaces(&view).await?;
                let plan = super::plan::WritePlan::full(names);
                to.write_and_commit_as(&view, plan, options, identity)
                    .await?
            }
        };
        tracing::info!(snapshot = %made.id, to = %to.sink.describe(), bytes = made.size_bytes, "snapshot copied, re-encrypted");
        Ok(CopyOutcome::Copied {
            snapshot_id: made.id,
            bytes: made.size_bytes,
        })
    }

    /// An incremental copy on `parent` (here already), pinned as any incremental create.
    async fn copy_incremental(
        &self,
        view: &SnapshotView<'_>,
        parent: &crate::id::SnapshotId,
        stored: &[String],
        options: CreateOptions,
        identity: (crate::id::SnapshotId, u64),
    ) -> Result<SnapshotMetadata> {
        let pin = self.layout.pin_key(parent, self.random.next_u64());
        self.sink.put(&pin, Bytes::new(), PutMode::Create).await?;
        let made = self
            .create_incremental_pinned(view, parent, Some(stored), options, Some(identity))
            .await;
        if let Err(e) = self.sink.delete(&pin).await {
            tracing::warn!(pin = %pin, error = %e, "could not remove the pin; it expires by itself and `gc` removes it");
        }
        made
    }

    /// `Some(AlreadyPresent)` if this repository has a snapshot with `meta`'s id, time,
    /// type and parent (a re-encrypted copy's blob differs from the original's, so its
    /// checksum cannot tell), a conflict if it has another under that id.
    async fn present_reencrypted(&self, meta: &SnapshotMetadata) -> Result<Option<CopyOutcome>> {
        self.present_as(meta, |have| {
            have.created_at_ms == meta.created_at_ms
                && have.snapshot_type == meta.snapshot_type
                && have.parent_id == meta.parent_id
        })
        .await
    }
}

async fn view_namespaces(view: &SnapshotView<'_>) -> Result<Vec<String>> {
    use crate::storage::VectorStorage;
    let names = view.list_namespaces().await?;
    for n in &names {
        validate_namespace(n)?;
    }
    Ok(names)
}
