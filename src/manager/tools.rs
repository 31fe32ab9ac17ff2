//! Operator tools over a repository: lineage, reading vectors out (export), verifying every
//! snapshot, diffing two snapshots and copying snapshots between repositories. The CLI is a
//! thin shell over these.

use super::{blob_missing, descendants, pipeline, EndProgress, SnapshotManager};
use crate::error::{Error, Result};
use crate::format::sidecar::SnapshotMetadata;
use crate::id::SnapshotId;
use crate::paths::Key;
use crate::sink::{PutMode, SinkExt};
use crate::storage::Vector;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// A snapshot and its ancestors, as far as they exist.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// The snapshot first, then its parent, grandparent, ... up to a full snapshot or to the
    /// first missing ancestor.
    pub chain: Vec<SnapshotMetadata>,
    /// The ancestor that should exist but does not (the chain is broken there).
    pub missing: Option<SnapshotId>,
}

/// What [`SnapshotManager::read_vectors`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// The snapshot read.
    pub snapshot_id: Option<SnapshotId>,
    /// Per namespace: name and vectors read.
    pub namespaces: Vec<(String, u64)>,
    /// Vectors read in all.
    pub vectors: u64,
}

/// One snapshot's verification in [`SnapshotManager::verify_all`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyOutcome {
    /// The snapshot.
    pub snapshot_id: SnapshotId,
    /// What was checked, when everything was intact.
    pub report: Option<super::VerifyReport>,
    /// What is broken, when something is.
    pub problem: Option<String>,
    /// Snapshots that cannot be fully restored because of this one: those building on it
    /// (its descendants, each after its parent). Empty when intact.
    pub affects: Vec<SnapshotId>,
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
pub struct SnapshotDiff {
    /// The first (older, usually) snapshot.
    pub from: SnapshotId,
    /// The second snapshot.
    pub to: SnapshotId,
    /// Every namespace of either, sorted by name.
    pub namespaces: Vec<DiffEntry>,
}

/// What [`SnapshotManager::copy_snapshot`] did with one snapshot.
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

impl SnapshotManager {
    /// Turns what a user typed into a snapshot id: an id, or `latest` for the newest
    /// snapshot (an error in an empty repository).
    pub async fn find_snapshot(&self, spec: &str) -> Result<SnapshotId> {
        if spec != "latest" {
            return SnapshotId::parse(spec);
        }
        self.list_snapshots()
            .await?
            .into_iter()
            .next()
            .map(|m| m.id)
            .ok_or_else(|| Error::SnapshotNotFound {
                id: format!("latest (the repository {} is empty)", self.sink.describe()),
            })
    }

    /// The snapshot and its ancestors, following `parent_id` to a full snapshot. A missing
    /// ancestor ends the chain and is reported in [`Lineage::missing`] (not an error); a
    /// missing `id` is [`Error::SnapshotNotFound`].
    pub async fn lineage(&self, id: &str) -> Result<Lineage> {
        let id = SnapshotId::parse(id)?;
        let mut chain = vec![self.read_sidecar(&id).await?];
        while let Some(parent) = chain.last().and_then(|m| m.parent_id.clone()) {
            match self.read_ancestor(&id, &chain, &parent).await? {
                Some(m) => chain.push(m),
                None => {
                    return Ok(Lineage {
                        chain,
                        missing: Some(parent),
                    })
                }
            }
        }
        Ok(Lineage {
            chain,
            missing: None,
        })
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
        self.progress.begin(&format!("read {id}"), Some(total));
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

    /// Verifies every snapshot in the repository (see [`Self::verify_snapshot`]), oldest
    /// first, and reports for each what is broken and which snapshots that affects. Fails
    /// only if the repository cannot be listed.
    pub async fn verify_all(&self) -> Result<Vec<VerifyOutcome>> {
        let mut all = self.list_snapshots().await?;
        all.reverse();
        let mut out = Vec::with_capacity(all.len());
        for meta in &all {
            let checked = self.verify_snapshot(meta.id.as_str()).await;
            out.push(outcome(&meta.id, checked, || descendants(&all, &meta.id)));
        }
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
        Ok(descendants(&self.list_snapshots().await?, id))
    }

    /// Compares two snapshots' points in time namespace by namespace (by content digest,
    /// dimension and count; reads sidecars only).
    pub async fn diff_snapshots(&self, from: &str, to: &str) -> Result<SnapshotDiff> {
        let (from, to) = (SnapshotId::parse(from)?, SnapshotId::parse(to)?);
        let a = self.resolve(&from).await?.namespaces;
        let b = self.resolve(&to).await?.namespaces;
        let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let namespaces = names
            .into_iter()
            .map(|n| {
                let (x, y) = (a.get(n).map(|(_, e)| e), b.get(n).map(|(_, e)| e));
                let kind = match (x, y) {
                    (None, _) => DiffKind::Added,
                    (_, None) => DiffKind::Removed,
                    (Some(x), Some(y))
                        if x.content_sha256 == y.content_sha256
                            && x.dimension == y.dimension
                            && x.vector_count == y.vector_count =>
                    {
                        DiffKind::Unchanged
                    }
                    _ => DiffKind::Changed,
                };
                DiffEntry {
                    namespace: n.clone(),
                    kind,
                    vectors_before: x.map(|e| e.vector_count),
                    vectors_after: y.map(|e| e.vector_count),
                    dimension_before: x.and_then(|e| e.dimension),
                    dimension_after: y.and_then(|e| e.dimension),
                }
            })
            .collect();
        Ok(SnapshotDiff {
            from,
            to,
            namespaces,
        })
    }

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
        let sidecar_key = self.layout.sidecar_key(&id);
        let sidecar = match self.sink.get_bytes(&sidecar_key, None).await {
            Err(e) if e.is_not_found() => {
                return Err(Error::SnapshotNotFound { id: id.to_string() })
            }
            other => other?,
        };
        let meta = SnapshotMetadata::from_json(&sidecar, &id)?;
        if let Some(present) = to.present_copy(&meta).await? {
            return Ok(present);
        }
        if let Some(parent) = &meta.parent_id {
            if !to.snapshot_exists(parent.as_str()).await? {
                return Err(Error::BrokenChain {
                    id: format!("{id} (in {})", to.sink.describe()),
                    missing: parent.to_string(),
                });
            }
        }
        let blob_key = self.layout.blob_key(&id);
        self.progress
            .begin(&format!("copy {id}"), Some(meta.size_bytes));
        let sent = {
            let _end = EndProgress(self.progress.as_ref());
            self.send_blob(&meta, &blob_key, to).await
        };
        if let Err(e) = sent {
            if let Err(cleanup) = to.sink.delete(&blob_key).await {
                tracing::warn!(error = %cleanup, blob = %blob_key, "could not remove the partial copy; `gc` will");
            }
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

    /// `Some(AlreadyPresent)` if this repository has `meta`'s snapshot with the same blob
    /// checksum, `None` if it does not have it, a conflict if it has a different one.
    async fn present_copy(&self, meta: &SnapshotMetadata) -> Result<Option<CopyOutcome>> {
        match self.read_sidecar(&meta.id).await {
            Ok(have) if have.blob_sha256 == meta.blob_sha256 => {
                Ok(Some(CopyOutcome::AlreadyPresent {
                    snapshot_id: meta.id.clone(),
                }))
            }
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

    /// Streams the blob to `to`, checking size and hash on the way and again after arrival.
    async fn send_blob(
        &self,
        meta: &SnapshotMetadata,
        key: &Key,
        to: &SnapshotManager,
    ) -> Result<()> {
        let mut source = match self.sink.get(key, None).await {
            Err(e) if e.is_not_found() => return Err(blob_missing(meta.id.as_str())),
            other => other?,
        };
        // Overwrite: a blob without a sidecar at the destination is an orphan of an earlier
        // failed copy; the sidecar, written last, is what commits.
        let mut out = to.sink.put_streaming(key, PutMode::Overwrite).await?;
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
        // Read it back: what arrived must be what was sent.
        let mut back = to.sink.get(key, None).await?;
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
                    to.sink.describe()
                ),
            ));
        }
        Ok(())
    }
}

fn outcome(
    id: &SnapshotId,
    checked: Result<super::VerifyReport>,
    affects: impl FnOnce() -> Vec<SnapshotId>,
) -> VerifyOutcome {
    match checked {
        Ok(report) => VerifyOutcome {
            snapshot_id: id.clone(),
            report: Some(report),
            problem: None,
            affects: Vec::new(),
        },
        Err(e) => VerifyOutcome {
            snapshot_id: id.clone(),
            report: None,
            problem: Some(e.to_string()),
            affects: affects(),
        },
    }
}
