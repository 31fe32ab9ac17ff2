//! Scanning a namespace and encoding it into compressed chunks, in parallel and in order.

use super::{encode_error, Ordered};
use crate::error::Result;
use crate::format::blob::{self, ChunkSeal, Dedup, EncodedBatch, Filter, Identity, MantissaChoice};
use crate::format::chunker::Chunker;
use crate::format::framed::{out_of_order, FramedVectors};
use crate::storage::{Vector, VectorStorage};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Settings of one namespace's encoding.
#[derive(Clone)]
pub(crate) struct EncodeSettings {
    pub dimension: u32,
    pub include_metadata: bool,
    pub filter: Filter,
    /// `None`: canonical frames only (a digest pass).
    pub level: Option<u32>,
    /// Raw bytes per batch of chunks (the unit of parallel work).
    pub chunk_size: usize,
    /// Target raw bytes of a content-defined chunk (the unit of deduplication).
    pub dedup_chunk_size: usize,
    pub page_size: usize,
    pub parallelism: usize,
    /// How chunk identities are computed (the dedup base's way, if any).
    pub identity: Identity,
    /// In an encrypted repository: how the snapshot's chunks are sealed.
    pub sealing: Option<crate::crypto::Sealing>,
    /// Where encoded batches take their byte buffers from (the blob writer's spares).
    pub buffers: super::ByteBuffers,
}

/// Chunk identities already stored in the chain (chunks with these are referenced, not
/// compressed and stored again).
pub(crate) type KnownChunks = Arc<HashSet<[u8; 32]>>;

/// Scans a namespace, cuts it into content-defined chunks ([`Chunker`]) and yields them
/// encoded, in batches of about `chunk_size` raw bytes (the unit of parallel work), in order.
pub(crate) struct ChunkEncoder<'a> {
    storage: &'a dyn VectorStorage,
    ns: String,
    s: EncodeSettings,
    known: KnownChunks,
    /// The last id scanned: the next page starts after it.
    after: Option<String>,
    scanned_all: bool,
    batcher: Batcher,
    /// Each job hands its batch's vectors back, for their buffers to frame a later batch.
    jobs: Ordered<(Result<EncodedBatch>, FramedVectors)>,
}

impl<'a> ChunkEncoder<'a> {
    pub fn new(
        storage: &'a dyn VectorStorage,
        ns: &str,
        s: EncodeSettings,
        known: KnownChunks,
    ) -> Self {
        ChunkEncoder {
            storage,
            ns: ns.to_string(),
            batcher: Batcher::new(&s),
            jobs: Ordered::new(super::streaming_depth(
                s.parallelism,
                s.buffers.sink_lets_go(),
            )),
            s,
            known,
            after: None,
            scanned_all: false,
        }
    }

    /// Sends the oldest batch ready to the pool.
    fn submit(&mut self) {
        let Some((vectors, cuts)) = self.batcher.take(self.scanned_all) else {
            return;
        };
        let (ns, s, known) = (self.ns.clone(), self.s.clone(), self.known.clone());
        self.jobs.push(move || {
            let mantissas = &mut MantissaChoice::default();
            let take = |room| s.buffers.take(room);
            let mut batch = EncodedBatch::with_room(vectors.len(), s.dimension, s.level, take);
            let encoded = encode_cut(&mut batch, &ns, &vectors, &cuts, &known, &s, mantissas);
            // Grown by doubling, the buffer can be twice its content; on object storage a
            // batch's bytes stay alive until the multipart part holding them is uploaded.
            s.buffers.fit_for_sink(&mut batch.bytes);
            Ok((encoded.map(|()| batch), vectors))
        });
    }

    /// The next batch, or `None` when the namespace is done.
    ///
    /// The scan runs one batch ahead of compression: while every worker is busy, the next
    /// batch is read from the store, and only then does this wait for the oldest job.
    pub async fn next(&mut self) -> Result<Option<EncodedBatch>> {
        loop {
            if self.batcher.has_ready(self.scanned_all) {
                if self.jobs.is_full() {
                    return self.oldest().await;
                }
                self.submit();
                continue;
            }
            if self.scanned_all {
                return self.oldest().await;
            }
            self.scan_page().await?;
        }
    }

    /// The oldest job's batch (`None` when none is in flight); its vectors' buffers are
    /// kept for a later batch.
    async fn oldest(&mut self) -> Result<Option<EncodedBatch>> {
        let Some(done) = self.jobs.next().await else {
            return Ok(None);
        };
        let (encoded, vectors) = done?;
        self.batcher.recycle(vectors);
        encoded.map(Some)
    }

    async fn scan_page(&mut self) -> Result<()> {
        let (ns, after, batcher) = (&self.ns, self.after.as_deref(), &mut self.batcher);
        let mut take = |v: &Vector| batcher.add(v);
        let lent = self
            .storage
            .scan_each(ns, after, self.s.page_size, &mut take)
            .await?;
        if let Some(e) = self.batcher.failed.take() {
            return Err(encode_error(&self.ns, e));
        }
        if lent == 0 {
            self.scanned_all = true;
        } else {
            self.after = self.batcher.last_id().map(str::to_string);
        }
        Ok(())
    }
}

/// Frames a namespace's vectors as the store lends them, cuts them into chunks, and the
/// chunks into batches of about `chunk_size` raw bytes.
struct Batcher {
    chunker: Chunker,
    chunk_size: usize,
    /// The batch being filled, and the chunk ends within it.
    pending: FramedVectors,
    cuts: Vec<usize>,
    /// Batches filled (each ends at a chunk boundary), not yet sent to the pool.
    full: VecDeque<(FramedVectors, Vec<usize>)>,
    /// Encoded batches, emptied, whose buffers frame the next ones.
    spare: Vec<FramedVectors>,
    /// The last id of the batches before `pending`: ids ascend across batches too.
    before: Option<String>,
    /// Why the first vector that could not be taken was refused; the rest of its page is
    /// then skipped.
    failed: Option<blob::EncodeError>,
}

impl Batcher {
    fn new(s: &EncodeSettings) -> Self {
        Batcher {
            chunker: Chunker::new(s.dimension, s.dedup_chunk_size),
            chunk_size: s.chunk_size,
            pending: FramedVectors::new(s.dimension, s.include_metadata),
            cuts: Vec::new(),
            full: VecDeque::new(),
            spare: Vec::new(),
            before: None,
            failed: None,
        }
    }

    /// Takes the next vector the store lends.
    fn add(&mut self, v: &Vector) {
        if self.failed.is_some() {
            return;
        }
        if let (true, Some(before)) = (self.pending.is_empty(), &self.before) {
            if v.id.as_bytes() <= before.as_bytes() {
                self.failed = Some(out_of_order(&v.id, before));
                return;
            }
        }
        if let Err(e) = self.pending.push(v) {
            self.failed = Some(e);
            return;
        }
        let i = self.pending.len() - 1;
        if self
            .chunker
            .cut_after(self.pending.id(i), self.pending.size(i))
        {
            self.cuts.push(self.pending.len());
            if self.pending.raw_size() >= self.chunk_size {
                let batch = self.close();
                self.full.push_back(batch);
            }
        }
    }

    /// The id of the last vector taken.
    fn last_id(&self) -> Option<&str> {
        match self.pending.last_id() {
            Some(id) => std::str::from_utf8(id).ok(),
            None => self.before.as_deref(),
        }
    }

    /// Whether a batch is ready to encode: a full one, or once the scan is `done`, the last.
    fn has_ready(&self, done: bool) -> bool {
        !self.full.is_empty() || (done && !self.pending.is_empty())
    }

    /// The oldest batch ready to encode (see [`Self::has_ready`]), with its chunk ends.
    fn take(&mut self, done: bool) -> Option<(FramedVectors, Vec<usize>)> {
        match self.full.pop_front() {
            Some(batch) => Some(batch),
            None if done && !self.pending.is_empty() => Some(self.close()),
            None => None,
        }
    }

    /// Ends the pending batch, its last chunk with it, and starts another.
    fn close(&mut self) -> (FramedVectors, Vec<usize>) {
        if self.cuts.last() != Some(&self.pending.len()) {
            self.cuts.push(self.pending.len());
        }
        let fresh = match self.spare.pop() {
            Some(spare) => spare,
            None => self.pending.empty_like(),
        };
        let batch = std::mem::replace(&mut self.pending, fresh);
        if let Some(last) = batch.last_id() {
            let before = self.before.get_or_insert_with(String::new);
            before.clear();
            before.push_str(&String::from_utf8_lossy(last));
        }
        (batch, std::mem::take(&mut self.cuts))
    }

    /// Keeps an encoded batch's buffers for a later batch.
    fn recycle(&mut self, mut vectors: FramedVectors) {
        vectors.clear();
        self.spare.push(vectors);
    }
}

/// Encodes `vectors` of namespace `ns` (of `s.dimension`) as the chunks ending at `cuts`,
/// appended to `into`, referencing (not compressing) those whose identity `known` holds: the
/// job both encoders run on the pool. `mantissas` carries the choice of how mantissa planes
/// are coded from one call to the next.
pub(crate) fn encode_cut(
    into: &mut EncodedBatch,
    ns: &str,
    vectors: &FramedVectors,
    cuts: &[usize],
    known: &KnownChunks,
    s: &EncodeSettings,
    mantissas: &mut MantissaChoice,
) -> Result<()> {
    let known = |h: &[u8; 32]| known.contains(h);
    let dedup = Dedup {
        identity: s.identity,
        known: &known,
        seal: s.sealing.as_ref().map(|sealing| ChunkSeal {
            sealing,
            namespace: ns,
        }),
    };
    blob::encode_batch(into, vectors, cuts, s.filter, s.level, &dedup, mantissas)
        .map_err(|e| encode_error(ns, e))
}
