//! Building a namespace's chunk index while it is written: chunks stored in this blob, and
//! references to chunks the parent's chain already holds.

use super::chunks::Located;
use crate::error::{Error, Result};
use crate::format::blob::{BatchChunk, Filter, Identity, MAX_FRAME_LEN};
use crate::format::index::{IndexedChunk, NamespaceIndex};
use std::collections::HashMap;

/// Chunks of the parent's version of a namespace, by identity, and how those identities
/// are computed (a child computes its own the same way, so they can match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DedupBase {
    pub identity: Identity,
    pub chunks: HashMap<[u8; 32], Located>,
}

/// Collects a namespace's chunk table as batches are written.
pub(crate) struct IndexBuilder<'a> {
    ix: NamespaceIndex,
    base: Option<&'a DedupBase>,
    /// Compressed bytes of every chunk, stored or referenced.
    pub logical_bytes: u64,
    /// Decompressed bytes of the chunks stored here.
    pub stored_raw: u64,
}

impl<'a> IndexBuilder<'a> {
    pub fn new(
        name: &str,
        dimension: u32,
        filter: Filter,
        identity: Identity,
        base: Option<&'a DedupBase>,
    ) -> Self {
        IndexBuilder {
            ix: NamespaceIndex {
                name: name.to_string(),
                dimension,
                filter,
                identity,
                vector_count: 0,
                digest: [0; 32],
                sources: Vec::new(),
                chunks: Vec::new(),
            },
            base,
            logical_bytes: 0,
            stored_raw: 0,
        }
    }

    /// Records a batch whose stored chunks were appended to the blob at `at`.
    pub fn add_batch(&mut self, mut at: u64, chunks: &[BatchChunk]) -> Result<()> {
        for c in chunks {
            let entry = match c.stored {
                Some((length, crc32)) => {
                    let e = IndexedChunk {
                        source: 0,
                        offset: at,
                        length,
                        raw_length: c.raw_length,
                        vectors: c.vectors,
                        crc32,
                        sha256: c.sha256,
                    };
                    at += u64::from(length);
                    self.stored_raw += u64::from(c.raw_length);
                    e
                }
                None => self.reference(c)?,
            };
            self.logical_bytes += u64::from(entry.length);
            self.ix.vector_count += u64::from(entry.vectors);
            self.ix.chunks.push(entry);
        }
        Ok(())
    }

    /// The index entry of a chunk the chain already holds.
    fn reference(&mut self, c: &BatchChunk) -> Result<IndexedChunk> {
        let held = self
            .base
            .and_then(|b| b.chunks.get(&c.sha256))
            .ok_or_else(|| {
                Error::Internal("a chunk was deduplicated against an unknown hash".into())
            })?;
        let id = held.snapshot.as_str();
        let source = match self.ix.sources.iter().position(|s| s == id) {
            Some(i) => i + 1,
            None => {
                self.ix.sources.push(id.to_string());
                self.ix.sources.len()
            }
        };
        Ok(IndexedChunk {
            source: u16::try_from(source)
                .map_err(|_| Error::Internal("more than 65535 source snapshots".into()))?,
            offset: held.chunk.offset,
            length: held.chunk.length as u32,
            raw_length: held.chunk.raw_length as u32,
            vectors: held.chunk.vectors as u32,
            crc32: held.chunk.crc32,
            sha256: c.sha256,
        })
    }

    /// The CHUNK_INDEX frame, with the namespace's content digest.
    pub fn finish(mut self, digest: [u8; 32]) -> Result<(NamespaceIndex, Vec<u8>)> {
        self.ix.digest = digest;
        let frame = self.ix.encode();
        if frame.len() > MAX_FRAME_LEN as usize + 5 {
            return Err(Error::invalid(
                "namespace",
                format!(
                    "{:?} has {} chunks, more than one chunk index holds; raise dedup_chunk_size",
                    self.ix.name,
                    self.ix.chunks.len()
                ),
            ));
        }
        Ok((self.ix, frame))
    }
}
