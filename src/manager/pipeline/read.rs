//! Checking and decoding one namespace's chunks, wherever they are stored.

use super::{decode_error, Ordered, Spool};
use crate::error::{Error, Result};
use crate::format::blob::{self, ContentDigest, DecodedChunk};
use crate::manager::chunks::{ChunkTable, Located};
use crate::storage::Vector;
use std::sync::Arc;

/// A chunk's bytes: the spool of the run it is in, and the blob offset that run starts at.
#[derive(Clone)]
pub(crate) struct ChunkBytes {
    pub spool: Arc<Spool>,
    pub base: u64,
}

impl ChunkBytes {
    fn read(&self, c: &Located) -> Result<Vec<u8>> {
        self.spool.read(c.chunk.offset - self.base, c.chunk.length)
    }
}

/// The error for a chunk whose bytes do not match their CRC-32.
fn crc_mismatch(table: &ChunkTable, c: &Located) -> Error {
    // The damage is somewhere in the chunk: name its range and the blob that holds it.
    let why = format!(
        "the chunk at bytes {}..{} does not match its recorded CRC-32 (damaged or truncated)",
        c.chunk.offset,
        c.chunk.offset + c.chunk.length
    );
    Error::corrupt(
        c.snapshot.as_str(),
        Some(&table.name),
        Some(c.chunk.offset),
        why,
    )
}

/// Checks every chunk of a namespace against its recorded CRC-32, in parallel. Run before
/// anything is changed, so damaged data is refused whole.
pub(crate) async fn check_chunks(
    table: &Arc<ChunkTable>,
    bytes: &[ChunkBytes],
    parallelism: usize,
) -> Result<()> {
    let mut jobs: Ordered<()> = Ordered::new(parallelism);
    let mut next = 0;
    loop {
        while !jobs.is_full() && next < table.chunks.len() {
            let (table, b, i) = (table.clone(), bytes[next].clone(), next);
            next += 1;
            jobs.push(move || {
                let c = &table.chunks[i];
                if crc32fast::hash(&b.read(c)?) != c.chunk.crc32 {
                    return Err(crc_mismatch(&table, c));
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

/// Reads one namespace's chunks, checking everything against its chunk table: each chunk
/// (decoded in parallel; its SHA-256 where recorded), ids in order across chunks, and at
/// the end the count and content digest.
pub(crate) struct NamespaceReader {
    table: Arc<ChunkTable>,
    bytes: Vec<ChunkBytes>,
    next_chunk: usize,
    jobs: Ordered<DecodedChunk>,
    digest: ContentDigest,
    count: u64,
    last_id: Option<String>,
}

impl NamespaceReader {
    pub fn new(table: Arc<ChunkTable>, bytes: Vec<ChunkBytes>, parallelism: usize) -> Self {
        let digest = ContentDigest::new(table.dimension);
        NamespaceReader {
            table,
            bytes,
            next_chunk: 0,
            jobs: Ordered::new(parallelism),
            digest,
            count: 0,
            last_id: None,
        }
    }

    fn fill(&mut self) {
        while !self.jobs.is_full() && self.next_chunk < self.table.chunks.len() {
            let (table, b, i) = (
                self.table.clone(),
                self.bytes[self.next_chunk].clone(),
                self.next_chunk,
            );
            self.next_chunk += 1;
            self.jobs
                .push(move || decode_one(&table, &table.chunks[i], &b));
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
                    self.table.holder.as_str(),
                    Some(&self.table.name),
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

    /// Compares the count and digest of what was decoded with the chunk table's. Call
    /// after `next` returned `None`.
    pub async fn finish(self) -> Result<u64> {
        let actual = self.digest.finish();
        let t = &self.table;
        let fail = |why: String| Err(Error::corrupt(t.holder.as_str(), Some(&t.name), None, why));
        if self.count != t.vector_count {
            return fail(format!(
                "{} vectors decoded, {} recorded",
                self.count, t.vector_count
            ));
        }
        if actual != t.digest {
            return fail("content digest differs from the one recorded".into());
        }
        Ok(self.count)
    }
}

/// Decodes one chunk, checking its vector count and, where recorded, its SHA-256.
fn decode_one(table: &ChunkTable, c: &Located, b: &ChunkBytes) -> Result<DecodedChunk> {
    let bytes = b.read(c)?;
    let at = c.chunk.offset;
    let id = c.snapshot.as_str();
    let decoded = match c.sha256 {
        Some(sha) => blob::decode_chunk_hashed(
            &bytes[..],
            table.dimension,
            table.filter,
            c.chunk.raw_length,
            &sha,
        ),
        None => blob::decode_chunk_within(
            &bytes[..],
            table.dimension,
            table.filter,
            c.chunk.raw_length,
        ),
    }
    .map_err(|e| decode_error(id, Some(&table.name), at, e))?;
    if decoded.vectors.len() as u64 != c.chunk.vectors {
        return Err(Error::corrupt(
            id,
            Some(&table.name),
            Some(at),
            format!(
                "chunk holds {} vectors, its index records {}",
                decoded.vectors.len(),
                c.chunk.vectors
            ),
        ));
    }
    Ok(decoded)
}
