//! Reading the catalog: metadata, listing, chain resolution, lineage, `latest`, diffs.

use super::chunks::unseal_small;
use super::pipeline::{blob_read_error, decode_error, outside_the_runtime};
use super::reports::{
    Catalog, CatalogEntry, DamagedSnapshot, DiffEntry, DiffKind, Lineage, SnapshotDiff,
};
use super::SnapshotManager;
use crate::crypto::Chunk;
use crate::error::{Error, Result};
use crate::format::blob;
use crate::format::sidecar::{NamespaceEntry, SnapshotMetadata, MAX_SIDECAR_BYTES};
use crate::id::SnapshotId;
use crate::sink::{ObjectInfo, SinkExt};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};

/// Sidecars fetched at once when listing.
const LIST_CONCURRENCY: usize = 16;
/// Longest ancestor chain followed before the chain is declared corrupt (a cycle).
const MAX_CHAIN: usize = 100_000;

/// How much of an ancestor to read.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reading {
    /// The sidecar alone (format 3: no namespace lists).
    Summary,
    /// With the namespace lists (format 3: the blob's directory too).
    Lists,
}

/// A snapshot's point-in-time view: where each of its namespaces is stored.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedSnapshot {
    /// The snapshot and its ancestors up to the last one needed, newest first.
    pub chain: Vec<SnapshotMetadata>,
    /// Every namespace at that point in time: the index in `chain` of the snapshot that
    /// stores it, and its entry there.
    pub namespaces: BTreeMap<String, (usize, NamespaceEntry)>,
}

impl SnapshotManager {
    /// The metadata of one snapshot, with its namespace lists (format 3: read from the
    /// blob's directory, one ranged read).
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
    /// fetched concurrently. Fails as a whole if the listing or a sidecar read fails, or if
    /// any sidecar cannot be read (the error names it and how to remove it): a partial list
    /// would let retention delete the wrong things. [`Self::list_catalog`] reports damaged
    /// sidecars instead. Only sidecars are read: a format 3 snapshot's namespace lists are
    /// left in its blob ([`SnapshotMetadata::contents_loaded`] is false, the counts are
    /// there); [`Self::get_snapshot_metadata`] reads them.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotMetadata>> {
        let catalog = self.list_catalog().await?;
        if let Some(d) = catalog.damaged.first() {
            return Err(Error::corrupt(
                d.id.as_str(),
                None,
                None,
                format!(
                    "the sidecar cannot be read ({}); `verify --all` reports every such snapshot, and `delete {} --force` removes it",
                    d.problem, d.id
                ),
            ));
        }
        Ok(catalog.snapshots)
    }

    /// Every snapshot, newest first, with those whose sidecar cannot be read (damaged, or
    /// from a newer format) reported apart instead of failing the listing. Fails only if the
    /// repository cannot be listed or a sidecar cannot be fetched.
    pub async fn list_catalog(&self) -> Result<Catalog> {
        self.access().await?;
        let objects = self.sink.list_all(&self.layout.snapshots_dir()).await?;
        let listed: Vec<(SnapshotId, ObjectInfo)> = objects
            .into_iter()
            .filter_map(|o| self.layout.parse_sidecar(&o.key).map(|id| (id, o)))
            .collect();
        let cached = self.cached_sidecars(&listed);
        let read: Vec<(SnapshotId, Result<SnapshotMetadata>)> =
            futures::stream::iter(listed.into_iter().zip(cached))
                .map(|((id, info), cached)| async move {
                    let meta = self.listed_sidecar(&id, &info, cached).await;
                    (id, meta)
                })
                .buffer_unordered(LIST_CONCURRENCY)
                .collect()
                .await;
        let mut catalog = Catalog::default();
        for (id, meta) in read {
            match meta {
                Ok(m) => catalog.snapshots.push(m),
                // Deleted between the listing and the read: no longer a snapshot.
                Err(Error::SnapshotNotFound { .. }) => {}
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedVersion { .. })) => {
                    catalog.damaged.push(DamagedSnapshot {
                        id,
                        problem: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        catalog
            .snapshots
            .sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        catalog.damaged.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(catalog)
    }

    /// The cached copies of the listed sidecars (all misses without a cache).
    fn cached_sidecars(&self, listed: &[(SnapshotId, ObjectInfo)]) -> Vec<Option<Vec<u8>>> {
        let Some(cache) = &self.cache else {
            return vec![None; listed.len()];
        };
        let lookup = outside_the_runtime(|| cache.lookup(listed));
        if lookup.damaged > 0 {
            tracing::warn!(cache = %cache.dir().display(), damaged = lookup.damaged, "damaged copies in the sidecar cache were removed; their sidecars are read from the repository");
        }
        lookup.hits
    }

    /// A listed sidecar: its cached copy when there is a sound one, else read from the
    /// repository (and then cached, if it is the object the listing saw).
    async fn listed_sidecar(
        &self,
        id: &SnapshotId,
        info: &ObjectInfo,
        cached: Option<Vec<u8>>,
    ) -> Result<SnapshotMetadata> {
        if let Some(meta) = cached.and_then(|b| self.parse_sidecar(&b, id).ok()) {
            return Ok(meta);
        }
        let bytes = self.fetch_sidecar(id).await?;
        let meta = self.parse_sidecar(&bytes, id)?;
        if let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| bytes.len() as u64 == info.size)
        {
            outside_the_runtime(|| cache.store(id, info, &bytes));
        }
        Ok(meta)
    }

    /// A snapshot's metadata with its namespace lists: the sidecar, and for format 3 the
    /// directory from the blob (one ranged read), checked.
    pub(super) async fn read_sidecar(&self, id: &SnapshotId) -> Result<SnapshotMetadata> {
        let mut meta = self.read_summary(id).await?;
        self.load_directory(&mut meta).await?;
        Ok(meta)
    }

    /// A snapshot's sidecar alone: for format 3 without the namespace lists (enough for its
    /// identity, links, sizes and layout).
    pub(super) async fn read_summary(&self, id: &SnapshotId) -> Result<SnapshotMetadata> {
        let bytes = self.fetch_sidecar(id).await?;
        self.parse_sidecar(&bytes, id)
    }

    /// Parses a sidecar read from `id`'s key: opened with the repository's keys when it is
    /// sealed (format 4.0). A snapshot whose sealing differs from the repository's is
    /// refused: in an encrypted repository an unencrypted snapshot was not written by a key
    /// holder (a reader could otherwise be handed forged data).
    pub(super) fn parse_sidecar(&self, bytes: &[u8], id: &SnapshotId) -> Result<SnapshotMetadata> {
        let refuse = |why: &str| {
            Err(Error::corrupt(
                id.as_str(),
                None,
                None,
                format!("sidecar: {why}"),
            ))
        };
        match (self.opened_keys(), crate::crypto::sidecar::is_sealed(bytes)) {
            (Some(keys), true) => crate::crypto::sidecar::open(bytes, id, &keys),
            (None, false) => SnapshotMetadata::from_json(bytes, id),
            (Some(_), false) => refuse(
                "an unencrypted snapshot in an encrypted repository, so not written by a holder of its key; check where it came from, then `delete ID --force`",
            ),
            (None, true) => refuse(
                "an encrypted snapshot (format 4.0) in a repository that is not encrypted; it cannot be opened here",
            ),
        }
    }

    /// Reads a format 3 snapshot's namespace lists from its blob's directory chunk, checked
    /// against the sidecar's CRC-32 and SHA-256 and counts (nothing to do before format 3,
    /// or when they are loaded already).
    pub(super) async fn load_directory(&self, meta: &mut SnapshotMetadata) -> Result<()> {
        let Some(dir) = meta.directory.clone().filter(|_| !meta.contents_loaded()) else {
            return Ok(());
        };
        let owner = meta.id.clone();
        let id = owner.as_str();
        let corrupt = |why: String| Error::corrupt(id, None, Some(dir.offset), why);
        let bytes = self
            .sink
            .get_bytes(&self.blob_key(&meta.id).await?, Some(dir.range().range()))
            .await
            .map_err(|e| blob_read_error(e, id, "(directory)", dir.offset))?;
        if bytes.len() as u64 != dir.length || crc32fast::hash(&bytes) != dir.crc32 {
            return Err(corrupt(format!(
                "the namespace directory (bytes {}..{}) fails its CRC-32",
                dir.offset,
                dir.range().end()
            )));
        }
        let bytes = unseal_small(meta, Chunk::Directory, dir.range(), bytes.to_vec())?;
        let (listed, sha) =
            outside_the_runtime(|| blob::decode_directory_chunk(&bytes, dir.raw_length))
                .map_err(|e| decode_error(id, None, dir.offset, e))?;
        if hex::encode(sha) != dir.sha256 {
            return Err(corrupt(
                "the namespace directory does not match the sidecar's SHA-256".into(),
            ));
        }
        meta.fill_directory(listed)
            .map_err(|why| corrupt(format!("the namespace directory: {why}")))
    }

    /// A sidecar's bytes, refusing one larger than any writer makes.
    async fn fetch_sidecar(&self, id: &SnapshotId) -> Result<Vec<u8>> {
        self.access().await?;
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
        Ok(buf)
    }

    /// Resolves a snapshot's chain: for every namespace at its point in time, which snapshot
    /// stores it. Reads only sidecars, and only as far up the chain as needed.
    pub(crate) async fn resolve(&self, id: &SnapshotId) -> Result<ResolvedSnapshot> {
        self.resolve_only(id, None).await
    }

    /// Like [`Self::resolve`], but follows the chain only as far as the namespaces in `only`
    /// need (all of them when `None`), so a namespace stored in a snapshot itself stays
    /// restorable when an unrelated ancestor is lost. A name the snapshot does not have is a
    /// [`Error::NamespaceNotFound`].
    pub(crate) async fn resolve_only(
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
            match self
                .read_ancestor(id, &chain, &parent, Reading::Lists)
                .await?
            {
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
    pub(super) async fn read_ancestor(
        &self,
        id: &SnapshotId,
        chain: &[SnapshotMetadata],
        parent: &SnapshotId,
        reading: Reading,
    ) -> Result<Option<SnapshotMetadata>> {
        if chain.len() >= MAX_CHAIN || chain.iter().any(|s| &s.id == parent) {
            return Err(Error::corrupt(
                id.as_str(),
                None,
                None,
                "the ancestor chain loops",
            ));
        }
        let read = match reading {
            Reading::Lists => self.read_sidecar(parent).await,
            Reading::Summary => self.read_summary(parent).await,
        };
        match read {
            Ok(p) => Ok(Some(p)),
            Err(Error::SnapshotNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Turns what a user typed into a snapshot id: an id, `latest` for the newest snapshot,
    /// or `latest~N` for the one N before it (`latest~0` is `latest`). Fails when the
    /// repository has fewer snapshots, or when the one meant cannot be read (rather than
    /// silently mean another).
    pub async fn find_snapshot(&self, spec: &str) -> Result<SnapshotId> {
        let Some(back) = parse_relative(spec)? else {
            return SnapshotId::parse(spec);
        };
        let catalog = self.list_catalog().await?;
        let all = catalog.newest_first();
        match all.get(back) {
            Some(CatalogEntry::Readable(m)) => Ok(m.id.clone()),
            Some(CatalogEntry::Damaged(d)) => Err(Error::corrupt(
                d.id.as_str(),
                None,
                None,
                format!(
                    "{spec} is this snapshot, and its sidecar cannot be read ({}); name another by id, or remove it with `delete {} --force`",
                    d.problem, d.id
                ),
            )),
            None => Err(Error::NotThatMany {
                spec: spec.to_string(),
                repository: self.sink.describe(),
                count: all.len(),
            }),
        }
    }

    /// The snapshot and its ancestors, following `parent_id` to a full snapshot. A missing
    /// ancestor ends the chain and is reported in [`Lineage::missing`] (not an error); a
    /// missing `id` is [`Error::SnapshotNotFound`].
    pub async fn lineage(&self, id: &str) -> Result<Lineage> {
        let id = SnapshotId::parse(id)?;
        let mut chain = vec![self.read_sidecar(&id).await?];
        while let Some(parent) = chain.last().and_then(|m| m.parent_id.clone()) {
            match self
                .read_ancestor(&id, &chain, &parent, Reading::Summary)
                .await?
            {
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
}

/// `latest` → `Some(0)`, `latest~N` → `Some(N)`, anything else → `None` (an id).
fn parse_relative(spec: &str) -> Result<Option<usize>> {
    let Some(rest) = spec.strip_prefix("latest") else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(Some(0));
    }
    rest.strip_prefix('~')
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                "snapshot id",
                format!(
                    "{spec:?}: use an id, `latest`, or `latest~N` (N snapshots before the newest)"
                ),
            )
        })
}
