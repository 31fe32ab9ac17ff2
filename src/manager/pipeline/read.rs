//! Checking and decoding one namespace's chunks, wherever they are stored.

use super::{decode_error, Ordered, Spool};
use crate::error::{Error, Result};
use crate::format::blob::{self, ContentDigest, DecodedChunk, Identity, RawCheck};
use crate::manager::chunks::{ChunkTable, Located};
use crate::storage::Vector;
use std::ops::Range;
use std::sync::Arc;

/// A chunk's bytes: the spool of the run it is in, and the blob offset that run starts at.
#[derive(Clone)]
pub(crate) struct ChunkBytes {
    pub spool: Arc<Spool>,
    pub base: u64,
}

impl ChunkBytes {
    /// The chunk's bytes into `buf`, reused from one chunk to the next.
    fn read_into(&self, c: &Located, buf: &mut Vec<u8>) -> Result<()> {
        self.spool
            .read_into(c.chunk.offset - self.base, c.chunk.length, buf)
    }
}

/// The error for a chunk whose bytes do not match their CRC-32.
fn chunk_crc_mismatch(table: &ChunkTable, c: &Located) -> Error {
    let by = (c.snapshot != table.holder).then(|| table.holder.as_str());
    let range = c.chunk.offset..c.chunk.offset + c.chunk.length;
    super::crc_mismatch(c.snapshot.as_str(), &table.name, range, by)
}

/// Splits a namespace's chunks into runs of consecutive chunks of about `batch_bytes`
/// compressed bytes each: the unit of parallel work, so hand-offs to the worker pool stay
/// per batch and not per (small) chunk.
fn batches(table: &ChunkTable, batch_bytes: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, c) in table.chunks.iter().enumerate() {
        bytes += c.chunk.length;
        if bytes >= batch_bytes {
            out.push(start..i + 1);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < table.chunks.len() {
        out.push(start..table.chunks.len());
    }
    out
}

/// Checks every chunk of a namespace against its recorded CRC-32, in parallel batches of
/// about `batch_bytes`. Run before anything is changed, so damaged data is refused whole.
pub(crate) async fn check_chunks(
    table: &Arc<ChunkTable>,
    bytes: &Arc<[ChunkBytes]>,
    parallelism: usize,
    batch_bytes: u64,
) -> Result<()> {
    let mut jobs: Ordered<()> = Ordered::new(parallelism);
    let mut todo = batches(table, batch_bytes).into_iter();
    loop {
        while !jobs.is_full() {
            let Some(run) = todo.next() else { break };
            let (table, bytes) = (table.clone(), bytes.clone());
            jobs.push(move || {
                let chunks = run.map(|i| (&table.chunks[i], &bytes[i]));
                check_crcs(&table, chunks)
            });
        }
        match jobs.next().await {
            Some(r) => r?,
            None => return Ok(()),
        }
    }
}

/// Reads one namespace's chunks, checking everything against its chunk table: each chunk
/// (decoded in parallel batches; its length, and its SHA-256 if asked), ids in order across
/// chunks, and at the end the count and content digest.
pub(crate) struct NamespaceReader {
    table: Arc<ChunkTable>,
    hashes: bool,
    bytes: Arc<[ChunkBytes]>,
    todo: std::vec::IntoIter<Range<usize>>,
    jobs: Ordered<DecodedChunk>,
    digest: ContentDigest,
    count: u64,
    last_id: Option<String>,
}

impl NamespaceReader {
    /// With `hashes`, each format 2 chunk's identity is checked too: verify names a forged
    /// identity that way (it would mislead later dedup). A restore returns the chunks'
    /// authentic bytes (checked by CRC-32 before anything changes, and by the content
    /// digest over every vector), so a forged identity alone does not stop it halfway.
    pub fn new(
        table: Arc<ChunkTable>,
        bytes: Arc<[ChunkBytes]>,
        hashes: bool,
        parallelism: usize,
        batch_bytes: u64,
    ) -> Self {
        let digest = ContentDigest::new(table.dimension);
        let todo = batches(&table, batch_bytes).into_iter();
        NamespaceReader {
            table,
            hashes,
            bytes,
            todo,
            jobs: Ordered::new(parallelism),
            digest,
            count: 0,
            last_id: None,
        }
    }

    fn fill(&mut self) {
        while !self.jobs.is_full() {
            let Some(run) = self.todo.next() else { return };
            let (table, bytes) = (self.table.clone(), self.bytes.clone());
            let hashes = self.hashes;
            self.jobs
                .push(move || decode_batch(&table, &bytes, run, hashes));
        }
    }

    /// The next batch of vectors, checked; `None` after the last.
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
        check_totals(&self.table, self.count, self.digest.finish())?;
        Ok(self.count)
    }
}

/// The count and content digest of what was decoded match the chunk table's.
fn check_totals(t: &ChunkTable, count: u64, digest: [u8; 32]) -> Result<()> {
    let fail = |why: String| Err(Error::corrupt(t.holder.as_str(), Some(&t.name), None, why));
    if count != t.vector_count {
        return fail(format!(
            "{count} vectors decoded, {} recorded",
            t.vector_count
        ));
    }
    if digest != t.digest {
        return fail("content digest differs from the one recorded".into());
    }
    Ok(())
}

/// Checks each chunk's bytes against its CRC-32, read into one buffer reused across them.
fn check_crcs<'a>(
    table: &ChunkTable,
    chunks: impl Iterator<Item = (&'a Located, &'a ChunkBytes)>,
) -> Result<()> {
    let mut buf = Vec::new();
    for (c, bytes) in chunks {
        bytes.read_into(c, &mut buf)?;
        if crc32fast::hash(&buf) != c.chunk.crc32 {
            return Err(chunk_crc_mismatch(table, c));
        }
        // Sealed: authenticated too, so a deliberate change (which can keep the CRC-32)
        // is refused before anything changes as well.
        table.unseal(c, &mut buf)?;
    }
    Ok(())
}

/// Checks and decodes a whole (small) namespace whose chunks are all in `bytes`, on the
/// calling thread: every chunk against its CRC-32 first, then each decoded, then the count
/// and content digest. What [`check_chunks`] and [`NamespaceReader`] do, for a namespace
/// that one job handles whole.
pub(crate) fn decode_whole(table: &ChunkTable, bytes: &ChunkBytes) -> Result<Vec<Vector>> {
    check_crcs(table, table.chunks.iter().map(|c| (c, bytes)))?;
    let all = vec![bytes.clone(); table.chunks.len()];
    let decoded = decode_batch(table, &all, 0..table.chunks.len(), false)?;
    let mut digest = ContentDigest::new(table.dimension);
    digest.add(&decoded.vector_hashes);
    check_totals(table, decoded.vectors.len() as u64, digest.finish())?;
    Ok(decoded.vectors)
}

/// Decodes a run of consecutive chunks into one batch, checking that ids ascend across
/// the chunks' seams.
fn decode_batch(
    table: &ChunkTable,
    bytes: &[ChunkBytes],
    run: Range<usize>,
    hashes: bool,
) -> Result<DecodedChunk> {
    let mut out = DecodedChunk::default();
    let mut buf = Vec::new();
    for i in run {
        let c = &table.chunks[i];
        bytes[i].read_into(c, &mut buf)?;
        let members = table.unseal(c, &mut buf)?;
        let mut d = decode_one(table, c, members, hashes)?;
        if let (Some(last), Some(first)) = (out.vectors.last(), d.vectors.first()) {
            if first.id.as_bytes() <= last.id.as_bytes() {
                return Err(Error::corrupt(
                    c.snapshot.as_str(),
                    Some(&table.name),
                    Some(c.chunk.offset),
                    format!("vector ids out of order at {:?}", first.id),
                ));
            }
        }
        out.vectors.append(&mut d.vectors);
        out.vector_hashes.append(&mut d.vector_hashes);
    }
    Ok(out)
}

/// Decodes one chunk, checking its vector count and, with `hashes`, its identity.
fn decode_one(table: &ChunkTable, c: &Located, bytes: &[u8], hashes: bool) -> Result<DecodedChunk> {
    let at = c.chunk.offset;
    let id = c.snapshot.as_str();
    let raw_length = c.chunk.raw_length;
    let check = match (&c.sha256, table.identity) {
        (None, _) => RawCheck::AtMost(raw_length),
        (Some(sha), Some(Identity::RawBytes)) if hashes => RawCheck::Hashed(raw_length, sha),
        (Some(_), _) => RawCheck::Exactly(raw_length),
    };
    let decoded = blob::decode_chunk_slice(bytes, table.dimension, table.filter, check)
        .map_err(|e| decode_error(id, Some(&table.name), at, e))?;
    if let (true, Some(sha), Some(Identity::Vectors)) = (hashes, &c.sha256, table.identity) {
        let keys = table.sealed_by.keys().map(|k| &**k);
        if blob::repository_identity(keys, table.filter, &decoded.vector_hashes) != *sha {
            return Err(Error::corrupt(
                id,
                Some(&table.name),
                Some(at),
                format!(
                    "the chunk's vectors do not match the identity the chunk index of snapshot {} records",
                    table.holder
                ),
            ));
        }
    }
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
