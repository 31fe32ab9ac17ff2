//! Checking and decoding one namespace section out of a spool.

use super::{decode_error, on_pool, Ordered, Spool};
use crate::error::{Error, Result};
use crate::format::blob::{self, ContentDigest, DecodeError, DecodedChunk, Filter};
use crate::format::sidecar::{ChunkEntry, NamespaceEntry, SnapshotMetadata};
use crate::storage::Vector;
use std::sync::Arc;

/// Checks every chunk of a namespace in the spool (which holds blob bytes from `base` on)
/// against its recorded CRC-32, in parallel. Run before anything is changed, so damaged
/// data is refused whole.
pub(crate) async fn check_chunks(
    spool: &Arc<Spool>,
    base: u64,
    meta: &SnapshotMetadata,
    entry: &NamespaceEntry,
    parallelism: usize,
) -> Result<()> {
    let mut jobs: Ordered<()> = Ordered::new(parallelism);
    let mut chunks = entry.chunks.iter();
    loop {
        while !jobs.is_full() {
            let Some(c) = chunks.next().cloned() else {
                break;
            };
            let (spool, id, ns) = (spool.clone(), meta.id.to_string(), entry.name.clone());
            jobs.push(move || {
                let bytes = spool.read(c.offset - base, c.length)?;
                if crc32fast::hash(&bytes) != c.crc32 {
                    // The damage is somewhere in the chunk: name its range, not a byte.
                    let why = format!(
                        "the chunk at bytes {}..{} does not match its recorded CRC-32 (damaged or truncated)",
                        c.offset,
                        c.offset + c.length
                    );
                    return Err(Error::corrupt(&id, Some(&ns), None, why));
                }
                Ok(())
            });
        }
        match jobs.next().await {
            Some(r) => r?,
            None => return Ok(()),
        }
    }
}

/// Reads one namespace section out of a spool holding blob bytes from `base` on, checking
/// everything against the sidecar: header, chunks (decoded in parallel), ids in order
/// across chunks, and at the end the count and content digest.
pub(crate) struct NamespaceReader<'m> {
    meta: &'m SnapshotMetadata,
    entry: &'m NamespaceEntry,
    spool: Arc<Spool>,
    base: u64,
    dimension: u32,
    filter: Filter,
    next_chunk: usize,
    jobs: Ordered<DecodedChunk>,
    digest: ContentDigest,
    count: u64,
    last_id: Option<String>,
}

impl<'m> NamespaceReader<'m> {
    pub async fn open(
        meta: &'m SnapshotMetadata,
        entry: &'m NamespaceEntry,
        spool: Arc<Spool>,
        base: u64,
        parallelism: usize,
    ) -> Result<Self> {
        let first = &entry.chunks[0];
        let header = read_chunk(&spool, base, first, meta, entry, |b| {
            blob::decode_ns_header_chunk(&b[..])
        })
        .await?;
        let fail = |why: String| {
            Err(Error::corrupt(
                meta.id.as_str(),
                Some(&entry.name),
                Some(first.offset),
                why,
            ))
        };
        if header.name != entry.name {
            return fail(format!(
                "the blob holds namespace {:?} where the sidecar records {:?}",
                header.name, entry.name
            ));
        }
        if header.dimension != entry.dimension.unwrap_or(0) {
            return fail(format!(
                "dimension {} in the blob, {:?} in the sidecar",
                header.dimension, entry.dimension
            ));
        }
        if header.filter != meta.compression.filter {
            return fail(format!(
                "filter {:?} in the blob, {:?} in the sidecar",
                header.filter, meta.compression.filter
            ));
        }
        Ok(NamespaceReader {
            meta,
            entry,
            spool,
            base,
            dimension: header.dimension,
            filter: header.filter,
            next_chunk: 1,
            jobs: Ordered::new(parallelism),
            digest: ContentDigest::new(header.dimension),
            count: 0,
            last_id: None,
        })
    }

    fn fill(&mut self) {
        let data_end = self.entry.chunks.len() - 1;
        while !self.jobs.is_full() && self.next_chunk < data_end {
            let c = self.entry.chunks[self.next_chunk].clone();
            self.next_chunk += 1;
            let (spool, base, dim, filter) =
                (self.spool.clone(), self.base, self.dimension, self.filter);
            let (meta_id, ns) = (self.meta.id.to_string(), self.entry.name.clone());
            self.jobs.push(move || {
                let bytes = spool.read(c.offset - base, c.length)?;
                let decoded = blob::decode_chunk_within(&bytes[..], dim, filter, c.raw_length)
                    .map_err(|e| decode_error(&meta_id, Some(&ns), c.offset, e))?;
                if decoded.vectors.len() as u64 != c.vectors {
                    return Err(Error::corrupt(
                        &meta_id,
                        Some(&ns),
                        Some(c.offset),
                        format!(
                            "chunk holds {} vectors, the sidecar records {}",
                            decoded.vectors.len(),
                            c.vectors
                        ),
                    ));
                }
                Ok(decoded)
            });
        }
    }

    /// The next chunk's vectors, checked; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<Vector>>> {
        self.fill();
        let Some(chunk) = self.jobs.next().await else {
            return Ok(None);
        };
        let chunk = chunk?;
        if let (Some(last), Some(first)) = (&self.last_id, chunk.vectors.first()) {
            if first.id.as_bytes() <= last.as_bytes() {
                return Err(Error::corrupt(
                    self.meta.id.as_str(),
                    Some(&self.entry.name),
                    None,
                    format!("vector ids out of order at {:?}", first.id),
                ));
            }
        }
        if let Some(last) = chunk.vectors.last() {
            self.last_id = Some(last.id.clone());
        }
        self.digest.add(&chunk.vector_hashes);
        self.count += chunk.vectors.len() as u64;
        Ok(Some(chunk.vectors))
    }

    /// Reads the end chunk and compares counts and digests with what was decoded and with
    /// the sidecar. Call after `next` returned `None`.
    pub async fn finish(self) -> Result<u64> {
        let last = &self.entry.chunks[self.entry.chunks.len() - 1];
        let (recorded, digest) =
            read_chunk(&self.spool, self.base, last, self.meta, self.entry, |b| {
                blob::decode_ns_end_chunk(&b[..])
            })
            .await?;
        let actual = self.digest.finish();
        let fail = |why: String| {
            Err(Error::corrupt(
                self.meta.id.as_str(),
                Some(&self.entry.name),
                Some(last.offset),
                why,
            ))
        };
        if recorded != self.count || self.count != self.entry.vector_count {
            return fail(format!(
                "{} vectors decoded, the end frame records {recorded}, the sidecar {}",
                self.count, self.entry.vector_count
            ));
        }
        if digest != actual || hex::encode(actual) != self.entry.content_sha256 {
            return fail("content digest differs from the one recorded".into());
        }
        Ok(self.count)
    }
}

/// Reads and decodes one small chunk on the worker pool.
async fn read_chunk<T: Send + 'static>(
    spool: &Arc<Spool>,
    base: u64,
    c: &ChunkEntry,
    meta: &SnapshotMetadata,
    entry: &NamespaceEntry,
    decode: impl FnOnce(Vec<u8>) -> std::result::Result<T, DecodeError> + Send + 'static,
) -> Result<T> {
    let (spool, off, len) = (spool.clone(), c.offset - base, c.length);
    let (id, ns, at) = (meta.id.to_string(), entry.name.clone(), c.offset);
    on_pool(move || decode(spool.read(off, len)?).map_err(|e| decode_error(&id, Some(&ns), at, e)))
        .await?
}
