//! Copying snapshots between repositories.

use super::reports::CopyOutcome;
use super::{blob_missing, EndProgress, SnapshotManager};
use crate::error::{Error, Result};
use crate::format::sidecar::SnapshotMetadata;
use crate::id::SnapshotId;
use crate::paths::Key;
use crate::sink::{PutMode, SinkExt};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

impl SnapshotManager {
    /// The snapshots to copy so that `ids` are complete in another repository: each with all
    /// its ancestors, oldest first, without repeats. Fails if an ancestor is missing here.
    pub async fn copy_plan(&self, ids: &[SnapshotId]) -> Result<Vec<SnapshotId>> {
        let mut order: Vec<SnapshotId> = Vec::new();
        for id in ids {
            let lineage = self.lineage(id.as_str()).await?;
            if let Some(missing) = lineage.missing {
                return Err(Error::BrokenChain {
                    id: id.to_string(),
                    missing: missing.to_string(),
                });
            }
            for m in lineage.chain.into_iter().rev() {
                if !order.contains(&m.id) {
                    order.push(m.id);
                }
            }
        }
        Ok(order)
    }

    /// Copies one snapshot into the repository of `to`, following the commit protocol
    /// there: the blob is streamed across (its size and SHA-256 checked against the sidecar
    /// on the way), read back from the destination and hashed again, and only then is the
    /// sidecar written, byte for byte. A snapshot the destination already has with the same
    /// blob checksum is skipped; one with a different checksum is an [`Error::Conflict`].
    /// Copy ancestors first ([`Self::copy_plan`]): this refuses a snapshot whose parent
    /// the destination lacks.
    pub async fn copy_snapshot(&self, id: &str, to: &SnapshotManager) -> Result<CopyOutcome> {
        let id = SnapshotId::parse(id)?;
        let verbatim = self.copies_verbatim(to).await?;
        let sidecar_key = self.layout.sidecar_key(&id);
        let sidecar = match self.sink.get_bytes(&sidecar_key, None).await {
            Err(e) if e.is_not_found() => {
                return Err(Error::SnapshotNotFound { id: id.to_string() })
            }
            other => other?,
        };
        let meta = self.parse_sidecar(&sidecar, &id)?;
        if !verbatim {
            return self.copy_reencrypting(&meta, to).await;
        }
        if let Some(present) = to.present_copy(&meta).await? {
            return Ok(present);
        }
        to.require_parent(&meta).await?;
        let from_key = self.blob_key(&id).await?;
        let to_key = to.blob_place_for_writing().await?.key(&id);
        self.progress
            .begin(&format!("copy {id}"), Some(meta.size_bytes));
        {
            let _end = EndProgress(self.progress.as_ref());
            // A failed upload is aborted: nothing of this copy is left to remove.
            self.send_blob(&meta, (&from_key, &to_key), to).await?;
        }
        if let Err(e) = to.check_arrived(&meta, &to_key).await {
            to.discard_uncommitted_copy(&id, &to_key).await;
            return Err(e);
        }
        match to
            .sink
            .put(&to.layout.sidecar_key(&id), sidecar, PutMode::Create)
            .await
        {
            Ok(()) => {}
            // Another copier committed it first: fine if it is the same snapshot.
            Err(Error::Conflict { .. }) => {
                if let Some(present) = to.present_copy(&meta).await? {
                    return Ok(present);
                }
                return Err(Error::Conflict {
                    key: id.to_string(),
                    reason: "the destination committed a different snapshot under this id".into(),
                });
            }
            Err(e) => return Err(e),
        }
        tracing::info!(snapshot = %id, to = %to.sink.describe(), bytes = meta.size_bytes, "snapshot copied");
        Ok(CopyOutcome::Copied {
            snapshot_id: id,
            bytes: meta.size_bytes,
        })
    }

    /// Refuses to copy `meta` here unless its parent is here already.
    pub(super) async fn require_parent(&self, meta: &SnapshotMetadata) -> Result<()> {
        if let Some(parent) = &meta.parent_id {
            if !self.snapshot_exists(parent.as_str()).await? {
                return Err(Error::BrokenChain {
                    id: format!("{} (in {})", meta.id, self.sink.describe()),
                    missing: parent.to_string(),
                });
            }
        }
        Ok(())
    }

    /// True if blobs can be copied byte for byte: between unencrypted repositories. A
    /// sealed blob opens only under its own repository's keys, so anything else is
    /// re-encoded ([`Self::copy_reencrypting`]).
    async fn copies_verbatim(&self, to: &SnapshotManager) -> Result<bool> {
        Ok(!self.is_encrypted().await? && !to.is_encrypted().await?)
    }

    /// `Some(AlreadyPresent)` if this repository has `meta`'s snapshot with the same blob
    /// checksum, `None` if it does not have it, a conflict if it has a different one.
    async fn present_copy(&self, meta: &SnapshotMetadata) -> Result<Option<CopyOutcome>> {
        self.present_as(meta, |have| have.blob_sha256 == meta.blob_sha256)
            .await
    }

    /// `Some(AlreadyPresent)` if this repository has a snapshot with `meta`'s id that
    /// `same` accepts as the same snapshot, `None` if it has none, a conflict if it has
    /// another.
    pub(super) async fn present_as(
        &self,
        meta: &SnapshotMetadata,
        same: impl Fn(&SnapshotMetadata) -> bool,
    ) -> Result<Option<CopyOutcome>> {
        match self.read_summary(&meta.id).await {
            Ok(have) if same(&have) => Ok(Some(CopyOutcome::AlreadyPresent {
                snapshot_id: meta.id.clone(),
            })),
            Ok(_) => Err(Error::Conflict {
                key: meta.id.to_string(),
                reason: format!(
                    "{} already has a different snapshot under this id",
                    self.sink.describe()
                ),
            }),
            Err(Error::SnapshotNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a copied blob that failed its check, unless a sidecar for it is committed
    /// here (a concurrent copy of the same snapshot finished first: the blob is its too).
    pub(super) async fn discard_uncommitted_copy(&self, id: &SnapshotId, blob_key: &Key) {
        match self.sink.head(&self.layout.sidecar_key(id)).await {
            Err(e) if e.is_not_found() => self.discard_blob(blob_key).await,
            Ok(_) => {
                tracing::warn!(snapshot = %id, "a concurrent copy committed this snapshot; its blob is left in place")
            }
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "cannot tell whether the copy is committed; the blob is left for `gc`")
            }
        }
    }

    /// Streams the blob at `from` to `to`'s key `at`, checking size and hash on the way; a
    /// failure aborts the upload.
    async fn send_blob(
        &self,
        meta: &SnapshotMetadata,
        (from, at): (&Key, &Key),
        to: &SnapshotManager,
    ) -> Result<()> {
        let mut source = match self.sink.get(from, None).await {
            Err(e) if e.is_not_found() => return Err(blob_missing(meta.id.as_str())),
            other => other?,
        };
        // Overwrite: a blob without a sidecar at the destination is an orphan of an earlier
        // failed copy; the sidecar, written last, is what commits.
        let mut out = to.sink.put_streaming(at, PutMode::Overwrite).await?;
        let mut sha = Sha256::new();
        let mut sent = 0u64;
        let streamed: Result<()> = async {
            while let Some(chunk) = source.next().await {
                let chunk: Bytes = chunk?;
                sent += chunk.len() as u64;
                if sent > meta.size_bytes {
                    break;
                }
                sha.update(&chunk);
                self.progress.advance(chunk.len() as u64);
                out.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        let sha: [u8; 32] = sha.finalize().into();
        let problem = match streamed {
            Err(e) => Some(e),
            Ok(()) if sent != meta.size_bytes => Some(Error::corrupt(
                meta.id.as_str(),
                None,
                None,
                format!(
                    "the source blob has {} bytes where its sidecar records {}",
                    if sent > meta.size_bytes {
                        "more".to_string()
                    } else {
                        sent.to_string()
                    },
                    meta.size_bytes
                ),
            )),
            Ok(()) if hex::encode(sha) != meta.blob_sha256 => Some(Error::corrupt(
                meta.id.as_str(),
                None,
                None,
                "the source blob's SHA-256 does not match its sidecar; not copied",
            )),
            Ok(()) => None,
        };
        if let Some(e) = problem {
            let _ = out.abort().await;
            return Err(e);
        }
        out.finish().await?;
        Ok(())
    }

    /// Reads a copied blob back from this repository: what arrived must be what was sent.
    async fn check_arrived(&self, meta: &SnapshotMetadata, key: &Key) -> Result<()> {
        let mut back = self.sink.get(key, None).await?;
        let mut sha = Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = back.next().await {
            let chunk = chunk?;
            got += chunk.len() as u64;
            sha.update(&chunk);
        }
        let sha: [u8; 32] = sha.finalize().into();
        if got != meta.size_bytes || hex::encode(sha) != meta.blob_sha256 {
            return Err(Error::corrupt(
                meta.id.as_str(),
                None,
                None,
                format!(
                    "the copy in {} does not read back as written ({got} bytes)",
                    self.sink.describe()
                ),
            ));
        }
        Ok(())
    }
}
