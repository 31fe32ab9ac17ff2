//! Verification of one snapshot or of the whole repository.

use super::chain::ChainIndex;
use super::chunks::unseal_small;
use super::pipeline::{self, decode_error, Spool};
use super::reports::{VerifyOutcome, VerifyReport};
use super::{blob_missing, EndProgress, SnapshotManager};
use crate::crypto::Chunk;
use crate::error::{Error, Result};
use crate::format::blob;
use crate::format::sidecar::{ByteRange, SnapshotMetadata};
use crate::id::SnapshotId;
use sha2::{Digest, Sha256};
use std::sync::Arc;

impl SnapshotManager {
    /// Re-reads a snapshot completely and checks it: the blob's size and SHA-256, the header,
    /// every namespace's frames, counts and content digest against the sidecar, the footer,
    /// and that every ancestor it depends on exists. Returns what was checked, or the first
    /// problem as [`Error::Corrupt`] (naming the snapshot and namespace) or
    /// [`Error::BrokenChain`].
    pub async fn verify_snapshot(&self, id: &str) -> Result<VerifyReport> {
        let id = SnapshotId::parse(id)?;
        let checked = self.verify_parsed(&id).await;
        let Err(e) = checked else { return checked };
        // Deleted (sidecar first, then blob) while it was being read: gone, not damaged.
        match self.deleted_while_read(&e).await {
            Some(gone) if gone == id => Err(Error::SnapshotNotFound { id: id.to_string() }),
            _ => Err(e),
        }
    }

    async fn verify_parsed(&self, id: &SnapshotId) -> Result<VerifyReport> {
        let mut meta = self.read_summary(id).await?;
        self.check_blob_size(&meta).await?;
        self.load_directory(&mut meta).await?;
        let (spool, sha) = self.download_blob(&meta).await?;
        if hex::encode(sha) != meta.blob_sha256 {
            return Err(self.locate_damage(&meta).await);
        }
        check_header(&meta, &spool)?;
        let mut namespaces = Vec::new();
        for entry in &meta.namespaces {
            let mut reader = self
                .open_namespace_in(&meta, entry, true, Some(&spool))
                .await?;
            while reader.next().await?.is_some() {}
            namespaces.push((entry.name.clone(), reader.finish().await?));
        }
        check_footer(&meta, &spool)?;
        let chain = self
            .resolve(id)
            .await?
            .chain
            .into_iter()
            .map(|m| m.id)
            .collect();
        Ok(VerifyReport {
            snapshot_id: id.clone(),
            bytes_checked: meta.size_bytes,
            vectors_checked: meta.total_vectors,
            namespaces,
            chain,
        })
    }

    /// The blob exists and has the size the sidecar records.
    async fn check_blob_size(&self, meta: &SnapshotMetadata) -> Result<()> {
        let id = meta.id.as_str();
        let info = match self.sink.head(&self.blob_key(&meta.id).await?).await {
            Err(e) if e.is_not_found() => return Err(blob_missing(id)),
            other => other?,
        };
        if info.size == meta.size_bytes {
            return Ok(());
        }
        Err(Error::corrupt(
            id,
            None,
            Some(info.size.min(meta.size_bytes)),
            format!(
                "the blob is {} bytes but the sidecar records {} (truncated or replaced)",
                info.size, meta.size_bytes
            ),
        ))
    }

    /// Downloads the whole blob, hashing it on the way.
    async fn download_blob(&self, meta: &SnapshotMetadata) -> Result<(Arc<Spool>, [u8; 32])> {
        let mut sha = Sha256::new();
        self.progress
            .begin(&format!("verify {}", meta.id), Some(meta.size_bytes));
        let _end = EndProgress(self.progress.as_ref());
        let spool = pipeline::download(
            self.sink.as_ref(),
            &self.blob_key(&meta.id).await?,
            None,
            meta.size_bytes,
            Some(&mut sha),
            self.progress.as_ref(),
        )
        .await?;
        Ok((Arc::new(spool), sha.finalize().into()))
    }

    /// The blob's SHA-256 differs from the sidecar's: says where, by the first chunk whose
    /// checksum fails (which names the namespace and the chunk's byte range).
    async fn locate_damage(&self, meta: &SnapshotMetadata) -> Error {
        for entry in &meta.namespaces {
            if let Err(e @ Error::Corrupt { .. }) = self.open_namespace(meta, entry, true).await {
                return e;
            }
        }
        Error::corrupt(
            meta.id.as_str(),
            None,
            None,
            "blob SHA-256 does not match the sidecar (the namespaces' chunks are intact: the damage is in the header or footer)",
        )
    }

    /// Verifies every snapshot in the repository (see [`Self::verify_snapshot`]), newest
    /// first (as `list`), and reports for each what is broken and which snapshots that
    /// affects; an intact snapshot that builds on a broken one is flagged
    /// ([`VerifyOutcome::broken_ancestor`], `ok` false). A snapshot whose sidecar cannot be
    /// read is reported broken with the reason. Fails only if the repository cannot be
    /// listed.
    pub async fn verify_all(&self) -> Result<Vec<VerifyOutcome>> {
        let catalog = self.list_catalog().await?;
        let chains = ChainIndex::new(&catalog.snapshots);
        let mut out: Vec<VerifyOutcome> = catalog
            .damaged
            .iter()
            .map(|d| VerifyOutcome {
                snapshot_id: d.id.clone(),
                ok: false,
                report: None,
                problem: Some(d.problem.clone()),
                affects: chains.descendants(&d.id),
                broken_ancestor: None,
            })
            .collect();
        for meta in &catalog.snapshots {
            let checked = self.verify_snapshot(meta.id.as_str()).await;
            if let Err(Error::SnapshotNotFound { .. }) = checked {
                // Listed, then deleted by a concurrent prune or delete: no longer there.
                tracing::info!(snapshot = %meta.id, "deleted while the repository was verified; not reported");
                continue;
            }
            out.push(outcome(&meta.id, checked, || chains.descendants(&meta.id)));
        }
        flag_broken_ancestors(&mut out, &chains);
        out.sort_by(|a, b| b.snapshot_id.cmp(&a.snapshot_id));
        Ok(out)
    }

    /// Verifies one snapshot and, if it is broken, says which snapshots that affects. A
    /// snapshot that does not exist is an error ([`Error::SnapshotNotFound`]), not a broken
    /// one.
    pub async fn verify_with_impact(&self, id: &str) -> Result<VerifyOutcome> {
        let id = SnapshotId::parse(id)?;
        let checked = self.verify_snapshot(id.as_str()).await;
        let affects = match checked {
            Ok(_) => Vec::new(),
            // Its own sidecar is absent (a missing ancestor is a BrokenChain instead).
            Err(e @ Error::SnapshotNotFound { .. }) => return Err(e),
            // Best effort: the report matters more than the list of dependents.
            Err(_) => self.dependents(&id).await.unwrap_or_default(),
        };
        Ok(outcome(&id, checked, || affects))
    }

    /// The snapshots that build on `id`, directly or not (what a problem with `id` affects).
    pub async fn dependents(&self, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
        let catalog = self.list_catalog().await?;
        Ok(ChainIndex::new(&catalog.snapshots).descendants(id))
    }
}

/// The gzip members of the header or footer chunk at `range` (opened, if sealed).
fn frame_chunk(
    meta: &SnapshotMetadata,
    spool: &Spool,
    range: ByteRange,
    what: Chunk<'_>,
) -> Result<Vec<u8>> {
    let stored = spool.read(range.offset, range.length)?;
    unseal_small(meta, what, range, stored.to_vec())
}

/// The header names this snapshot and its creation time.
fn check_header(meta: &SnapshotMetadata, spool: &Spool) -> Result<()> {
    let id = meta.id.as_str();
    let bytes = frame_chunk(meta, spool, meta.header, Chunk::Header)?;
    let header = blob::decode_header(&bytes[..]).map_err(|e| decode_error(id, None, 0, e))?;
    if header.snapshot_id != id || header.created_at_ms != meta.created_at_ms {
        let why = format!("the blob was written for snapshot {}", header.snapshot_id);
        return Err(Error::corrupt(id, None, Some(0), why));
    }
    Ok(())
}

/// The footer's counts agree with the sidecar.
fn check_footer(meta: &SnapshotMetadata, spool: &Spool) -> Result<()> {
    let at = meta.footer.offset;
    let bytes = frame_chunk(meta, spool, meta.footer, Chunk::Footer)?;
    let footer =
        blob::decode_footer(&bytes[..]).map_err(|e| decode_error(meta.id.as_str(), None, at, e))?;
    if footer.namespaces as usize != meta.namespaces.len()
        || footer.total_vectors != meta.total_vectors
    {
        let why = "the blob's footer disagrees with the sidecar";
        return Err(Error::corrupt(meta.id.as_str(), None, Some(at), why));
    }
    Ok(())
}

/// Marks intact snapshots whose ancestors include a broken one.
fn flag_broken_ancestors(outcomes: &mut [VerifyOutcome], chains: &ChainIndex<'_>) {
    let broken: std::collections::BTreeSet<SnapshotId> = outcomes
        .iter()
        .filter(|o| o.problem.is_some())
        .map(|o| o.snapshot_id.clone())
        .collect();
    for o in outcomes.iter_mut().filter(|o| o.problem.is_none()) {
        o.broken_ancestor = chains
            .ancestors(&o.snapshot_id)
            .into_iter()
            .find(|a| broken.contains(*a))
            .cloned();
        o.ok = o.broken_ancestor.is_none();
    }
}

fn outcome(
    id: &SnapshotId,
    checked: Result<VerifyReport>,
    affects: impl FnOnce() -> Vec<SnapshotId>,
) -> VerifyOutcome {
    match checked {
        Ok(report) => VerifyOutcome {
            snapshot_id: id.clone(),
            ok: true,
            report: Some(report),
            problem: None,
            affects: Vec::new(),
            broken_ancestor: None,
        },
        Err(e) => VerifyOutcome {
            snapshot_id: id.clone(),
            ok: false,
            report: None,
            problem: Some(e.to_string()),
            affects: affects(),
            broken_ancestor: None,
        },
    }
}
