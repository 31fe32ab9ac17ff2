//! A namespace's chunk table: where each of its data chunks is, in which snapshot's blob,
//! read from a format 2 chunk index or a format 1 sidecar, and checked before any of it is
//! trusted.

use super::catalog::Reading;
use super::dedup::DedupBase;
use super::pipeline::{blob_read_error, crc_mismatch, decode_error};
use super::SnapshotManager;
use crate::crypto::{Chunk, SealedBy};
use crate::error::{Error, Result};
use crate::format::blob::{self, Filter, Identity};
use crate::format::index::NamespaceIndex;
use crate::format::sidecar::{
    ByteRange, ChunkEntry, NamespaceEntry, SnapshotMetadata, MAX_CHUNK_RAW,
};
use crate::id::SnapshotId;
use crate::sink::SinkExt;

/// One data chunk and the blob that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    /// The snapshot whose blob holds the chunk.
    pub snapshot: SnapshotId,
    /// Where, how large, how many vectors, its CRC-32.
    pub chunk: ChunkEntry,
    /// SHA-256 of its raw bytes (format 2 only).
    pub sha256: Option<[u8; 32]>,
}

/// Everything needed to read one namespace of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct ChunkTable {
    /// The snapshot that records the namespace (errors name it).
    pub holder: SnapshotId,
    pub name: String,
    pub dimension: u32,
    pub filter: Filter,
    /// How chunk identities are computed (format 2; format 1 chunks have none).
    pub identity: Option<Identity>,
    pub vector_count: u64,
    pub digest: [u8; 32],
    /// Its data chunks, in id order.
    pub chunks: Vec<Located>,
    /// The keys its chunks are sealed with (format 4.0).
    pub sealed_by: SealedBy,
}

impl ChunkTable {
    /// The chunks by identity and where they are: what a child snapshot can reference
    /// (`None` for a format 1 table, which records no identities).
    pub fn dedup_base(&self) -> Option<DedupBase> {
        let identity = self.identity?;
        let chunks = self
            .chunks
            .iter()
            .filter_map(|c| c.sha256.map(|h| (h, c.clone())))
            .collect();
        Some(DedupBase { identity, chunks })
    }

    fn corrupt(&self, offset: Option<u64>, why: impl Into<String>) -> Error {
        Error::corrupt(self.holder.as_str(), Some(&self.name), offset, why)
    }

    /// Opens data chunk `c` in place in `buf` (its stored bytes, CRC-checked) and returns
    /// its gzip members: `buf` itself when the repository is not encrypted.
    pub fn unseal<'b>(&self, c: &Located, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        let Some(cipher) = self.sealed_by.cipher(c.snapshot.as_str()) else {
            return Ok(buf);
        };
        let Some(identity) = &c.sha256 else {
            return Err(self.corrupt(Some(c.chunk.offset), "a sealed chunk without an identity"));
        };
        let what = Chunk::Data {
            namespace: &self.name,
            identity,
        };
        match cipher.open(buf, what) {
            Ok(plain) => Ok(plain),
            Err(_) => {
                let by = (c.snapshot != self.holder).then(|| self.holder.as_str());
                let range = c.chunk.offset..c.chunk.offset + c.chunk.length;
                Err(unsealing_failed(c.snapshot.as_str(), &self.name, range, by))
            }
        }
    }
}

/// The error for a sealed chunk of `snapshot` at `range` that does not open.
pub(crate) fn unsealing_failed(
    snapshot: &str,
    ns: &str,
    range: std::ops::Range<u64>,
    referenced_by: Option<&str>,
) -> Error {
    let by = referenced_by.map_or(String::new(), |b| format!(", referenced by snapshot {b},"));
    Error::corrupt(
        snapshot,
        (!ns.is_empty()).then_some(ns),
        Some(range.start),
        format!(
            "the chunk at bytes {}..{}{by} fails authentication: it was altered, or moved here from another snapshot or position",
            range.start, range.end
        ),
    )
}

/// The gzip members of a small sealed chunk (`what`, at `at` of `holder`'s blob), from
/// its stored bytes; the bytes as they are when the repository is not encrypted.
pub(crate) fn unseal_small(
    holder: &SnapshotMetadata,
    what: Chunk<'_>,
    at: ByteRange,
    mut bytes: Vec<u8>,
) -> Result<Vec<u8>> {
    let Some(cipher) = holder.sealed_by.cipher(holder.id.as_str()) else {
        return Ok(bytes);
    };
    let ns = match what {
        Chunk::Data { namespace, .. } | Chunk::Index { namespace } => namespace,
        _ => "",
    };
    let len = match cipher.open(&mut bytes, what) {
        Ok(plain) => plain.len(),
        Err(_) => {
            return Err(unsealing_failed(holder.id.as_str(), ns, at.range(), None));
        }
    };
    bytes.truncate(crate::crypto::seal::NONCE_LEN + len);
    bytes.drain(..crate::crypto::seal::NONCE_LEN);
    Ok(bytes)
}

impl SnapshotManager {
    /// The chunk table of namespace `entry` as recorded by snapshot `holder`, checked: the
    /// index against its CRC-32 and the sidecar, local chunks against the section they must
    /// tile, and every reference against the holder's ancestors and their blobs' sizes.
    pub(crate) async fn chunk_table(
        &self,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
    ) -> Result<ChunkTable> {
        match &entry.index {
            Some(index) => self.chunk_table_v2(holder, entry, index).await,
            None => self.chunk_table_v1(holder, entry).await,
        }
    }

    /// Reads one small chunk of a blob, checked against its CRC-32.
    async fn read_small_chunk(
        &self,
        holder: &SnapshotMetadata,
        ns: &str,
        c: &ChunkEntry,
    ) -> Result<Vec<u8>> {
        let key = self.blob_key(&holder.id).await?;
        let id = holder.id.as_str();
        let bytes = self
            .sink
            .get_bytes(&key, Some(c.offset..c.offset + c.length))
            .await
            .map_err(|e| blob_read_error(e, id, ns, c.offset))?;
        if bytes.len() as u64 != c.length || crc32fast::hash(&bytes) != c.crc32 {
            return Err(crc_mismatch(id, ns, c.offset..c.offset + c.length, None));
        }
        Ok(bytes.to_vec())
    }

    async fn chunk_table_v1(
        &self,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
    ) -> Result<ChunkTable> {
        let (first, last) = (&entry.chunks[0], &entry.chunks[entry.chunks.len() - 1]);
        let id = holder.id.as_str();
        let head = self.read_small_chunk(holder, &entry.name, first).await?;
        let header = blob::decode_ns_header_chunk(&head[..])
            .map_err(|e| decode_error(id, Some(&entry.name), first.offset, e))?;
        let end = self.read_small_chunk(holder, &entry.name, last).await?;
        let (count, digest) = blob::decode_ns_end_chunk(&end[..])
            .map_err(|e| decode_error(id, Some(&entry.name), last.offset, e))?;
        let table = ChunkTable {
            holder: holder.id.clone(),
            name: header.name,
            dimension: header.dimension,
            filter: header.filter,
            identity: None,
            sealed_by: holder.sealed_by.clone(),
            vector_count: count,
            digest,
            chunks: entry.chunks[1..entry.chunks.len() - 1]
                .iter()
                .map(|c| Located {
                    snapshot: holder.id.clone(),
                    chunk: c.clone(),
                    sha256: None,
                })
                .collect(),
        };
        check_against_sidecar(&table, holder, entry, first.offset)?;
        Ok(table)
    }

    async fn chunk_table_v2(
        &self,
        holder: &SnapshotMetadata,
        entry: &NamespaceEntry,
        index: &ChunkEntry,
    ) -> Result<ChunkTable> {
        let stored = self.read_small_chunk(holder, &entry.name, index).await?;
        let what = Chunk::Index {
            namespace: &entry.name,
        };
        let bytes = unseal_small(holder, what, index.range(), stored)?;
        let ix = decode_index(holder, entry, index, &bytes)?;
        let sources = self.reference_sources(holder, &entry.name, &ix).await?;
        table_from_index(holder, entry, index, ix, &sources)
    }

    /// The sidecars of the snapshots an index references, each checked to be an ancestor
    /// of `holder` (a reference may only point into an ancestor).
    async fn reference_sources(
        &self,
        holder: &SnapshotMetadata,
        ns: &str,
        ix: &NamespaceIndex,
    ) -> Result<Vec<SnapshotMetadata>> {
        if ix.sources.is_empty() {
            return Ok(Vec::new());
        }
        let mut wanted: Vec<SnapshotId> = Vec::with_capacity(ix.sources.len());
        for s in &ix.sources {
            wanted.push(SnapshotId::parse(s).map_err(|_| {
                Error::corrupt(
                    holder.id.as_str(),
                    Some(ns),
                    None,
                    format!("the chunk index names {s:?}, which is not a snapshot id"),
                )
            })?);
        }
        let ancestors = self.ancestors_until(holder, &wanted).await?;
        wanted
            .iter()
            .enumerate()
            .map(|(k, w)| {
                ancestors.iter().find(|a| &a.id == w).cloned().ok_or_else(|| {
                    let first = ix.chunks.iter().position(|c| usize::from(c.source) == k + 1);
                    let (n, at) = first.map_or((0, None), |i| (i, Some(ix.chunks[i].offset)));
                    Error::corrupt(
                        holder.id.as_str(),
                        Some(ns),
                        at,
                        format!("chunk {n} of the index is referenced in snapshot {w}, which is missing or not an ancestor"),
                    )
                })
            })
            .collect()
    }

    /// `holder`'s ancestors, parent first, read until every id of `wanted` is found or the
    /// chain ends.
    async fn ancestors_until(
        &self,
        holder: &SnapshotMetadata,
        wanted: &[SnapshotId],
    ) -> Result<Vec<SnapshotMetadata>> {
        let mut chain = vec![holder.clone()];
        let mut found = Vec::new();
        while let Some(parent) = chain.last().and_then(|m| m.parent_id.clone()) {
            if wanted
                .iter()
                .all(|w| found.iter().any(|f: &SnapshotMetadata| &f.id == w))
            {
                break;
            }
            match self
                .read_ancestor(&holder.id, &chain, &parent, Reading::Summary)
                .await?
            {
                Some(meta) => {
                    found.push(meta.clone());
                    chain.push(meta);
                }
                None => break,
            }
        }
        Ok(found)
    }
}

/// Decodes the bytes of a namespace's index chunk (its CRC-32 already checked).
pub(crate) fn decode_index(
    holder: &SnapshotMetadata,
    entry: &NamespaceEntry,
    index: &ChunkEntry,
    bytes: &[u8],
) -> Result<NamespaceIndex> {
    blob::decode_index_chunk(bytes, index.raw_length)
        .map_err(|e| decode_error(holder.id.as_str(), Some(&entry.name), index.offset, e))
}

/// The chunk table of a format 2 namespace from its decoded index, checked against the
/// sidecar, the section it must tile, and `sources` (the sidecars of the ancestors the
/// index references, in its order).
pub(crate) fn table_from_index(
    holder: &SnapshotMetadata,
    entry: &NamespaceEntry,
    index: &ChunkEntry,
    ix: NamespaceIndex,
    sources: &[SnapshotMetadata],
) -> Result<ChunkTable> {
    let chunks = ix
        .chunks
        .iter()
        .map(|c| Located {
            snapshot: match c.source {
                0 => holder.id.clone(),
                k => sources[usize::from(k) - 1].id.clone(),
            },
            chunk: ChunkEntry {
                offset: c.offset,
                length: u64::from(c.length),
                raw_length: u64::from(c.raw_length),
                vectors: u64::from(c.vectors),
                crc32: c.crc32,
            },
            sha256: Some(c.sha256),
        })
        .collect();
    let table = ChunkTable {
        holder: holder.id.clone(),
        name: ix.name,
        dimension: ix.dimension,
        filter: ix.filter,
        identity: Some(ix.identity),
        sealed_by: holder.sealed_by.clone(),
        vector_count: ix.vector_count,
        digest: ix.digest,
        chunks,
    };
    check_against_sidecar(&table, holder, entry, index.offset)?;
    check_local_tiling(&table, entry, index)?;
    check_references(&table, sources)?;
    Ok(table)
}

/// The index or the format 1 header and end frames agree with the sidecar.
fn check_against_sidecar(
    table: &ChunkTable,
    holder: &SnapshotMetadata,
    entry: &NamespaceEntry,
    at: u64,
) -> Result<()> {
    if table.name != entry.name {
        return Err(table.corrupt(
            Some(at),
            format!(
                "the blob holds namespace {:?} where the sidecar records {:?}",
                table.name, entry.name
            ),
        ));
    }
    if table.dimension != entry.dimension.unwrap_or(0) {
        return Err(table.corrupt(
            Some(at),
            format!(
                "dimension {} in the blob, {:?} in the sidecar",
                table.dimension, entry.dimension
            ),
        ));
    }
    if table.filter != holder.compression.filter {
        return Err(table.corrupt(
            Some(at),
            format!(
                "filter {:?} in the blob, {:?} in the sidecar",
                table.filter, holder.compression.filter
            ),
        ));
    }
    if table.vector_count != entry.vector_count || hex::encode(table.digest) != entry.content_sha256
    {
        return Err(table.corrupt(
            Some(at),
            "the blob's vector count or content digest differs from the sidecar's",
        ));
    }
    let in_chunks = table
        .chunks
        .iter()
        .fold(0u64, |n, c| n.saturating_add(c.chunk.vectors));
    if in_chunks != table.vector_count {
        return Err(table.corrupt(
            Some(at),
            format!(
                "chunks hold {in_chunks} vectors, {} recorded",
                table.vector_count
            ),
        ));
    }
    Ok(())
}

/// The chunks stored in the holder's own blob fill its section up to the index, in order.
fn check_local_tiling(
    table: &ChunkTable,
    entry: &NamespaceEntry,
    index: &ChunkEntry,
) -> Result<()> {
    let mut at = entry.offset;
    for c in table.chunks.iter().filter(|c| c.snapshot == table.holder) {
        if c.chunk.offset != at {
            return Err(table.corrupt(
                Some(c.chunk.offset),
                format!(
                    "a chunk at byte {} does not follow byte {at} in the section",
                    c.chunk.offset
                ),
            ));
        }
        at = at.saturating_add(c.chunk.length);
    }
    if at != index.offset {
        return Err(table.corrupt(
            Some(at),
            "the stored chunks do not fill the section up to the chunk index",
        ));
    }
    Ok(())
}

/// Every referenced chunk lies inside its blob's data (after the header, before the end)
/// and no chunk is larger than a writer makes.
fn check_references(table: &ChunkTable, sources: &[SnapshotMetadata]) -> Result<()> {
    for c in &table.chunks {
        if c.chunk.raw_length > MAX_CHUNK_RAW {
            return Err(table.corrupt(
                Some(c.chunk.offset),
                "a chunk claims more decompressed bytes than a writer produces",
            ));
        }
        let Some(src) = sources.iter().find(|s| s.id == c.snapshot) else {
            continue;
        };
        let end = c.chunk.offset.checked_add(c.chunk.length);
        if c.chunk.offset < src.header.end() || end.is_none_or(|e| e > src.footer.offset) {
            return Err(table.corrupt(
                Some(c.chunk.offset),
                format!(
                    "a chunk referenced at bytes {}..{} of snapshot {} lies outside its data",
                    c.chunk.offset,
                    c.chunk.offset.saturating_add(c.chunk.length),
                    src.id
                ),
            ));
        }
    }
    Ok(())
}
