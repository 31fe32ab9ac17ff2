//! Scanning a namespace and encoding it into compressed chunks, in parallel and in order.

use super::{encode_error, Ordered};
use crate::error::{Error, Result};
use crate::format::blob::{
    self, ChunkSeal, ChunkShape, Dedup, EncodedBatch, Filter, Identity, MantissaChoice,
};
use crate::format::chunker::Chunker;
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
    chunker: Chunker,
    known: KnownChunks,
    after: Option<String>,
    scanned_all: bool,
    /// The batch being filled, and the chunk ends within it.
    pending: Vec<Vector>,
    cuts: Vec<usize>,
    pending_bytes: usize,
    /// Scanned vectors not yet in a batch.
    carry: VecDeque<Vector>,
    /// Each job hands its batch's vectors back to be freed on the runtime thread (see
    /// [`Ordered::next_freeing_here`]).
    jobs: Ordered<(Result<EncodedBatch>, Vec<Vector>)>,
}

impl<'a> ChunkEncoder<'a> {
    pub fn new(
        storage: &'a dyn VectorStorage,
        ns: &str,
        s: EncodeSettings,
        known: KnownChunks,
    ) -> Self {
        let parallelism = s.parallelism;
        ChunkEncoder {
            storage,
            ns: ns.to_string(),
            chunker: Chunker::new(s.dimension, s.dedup_chunk_size),
            s,
            known,
            after: None,
            scanned_all: false,
            pending: Vec::new(),
            cuts: Vec::new(),
            pending_bytes: 0,
            carry: VecDeque::new(),
            jobs: Ordered::new(parallelism),
        }
    }

    /// Like [`Self::new`], going on from `scanned`: the namespace's first vectors, already
    /// read from the store in id order.
    pub fn resume(
        storage: &'a dyn VectorStorage,
        ns: &str,
        s: EncodeSettings,
        known: KnownChunks,
        scanned: Vec<Vector>,
    ) -> Self {
        let mut encoder = Self::new(storage, ns, s, known);
        encoder.after = scanned.last().map(|v| v.id.clone());
        encoder.carry = scanned.into();
        encoder
    }

    fn submit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.cuts.last() != Some(&self.pending.len()) {
            self.cuts.push(self.pending.len());
        }
        let vectors = std::mem::take(&mut self.pending);
        let cuts = std::mem::take(&mut self.cuts);
        self.pending_bytes = 0;
        let (ns, s, known) = (self.ns.clone(), self.s.clone(), self.known.clone());
        self.jobs.push(move || {
            let mantissas = &mut MantissaChoice::default();
            let mut batch = EncodedBatch::with_room(vectors.len(), s.dimension, s.level);
            let encoded = encode_cut(&mut batch, &ns, &vectors, &cuts, &known, &s, mantissas);
            // Grown by doubling, the buffer can be twice its content; on object storage a
            // batch's bytes stay alive until the multipart part holding them is uploaded.
            batch.bytes.shrink_to_fit();
            Ok((encoded.map(|()| batch), vectors))
        });
    }

    /// Moves scanned vectors into the pending batch, cutting chunks as it goes; true when
    /// the batch is full (it ends at a chunk boundary).
    fn fill_batch(&mut self) -> bool {
        while let Some(v) = self.carry.pop_front() {
            let size = vector_size(&v);
            let cut = self.chunker.cut_after(&v.id, size);
            self.pending_bytes += size;
            self.pending.push(v);
            if cut {
                self.cuts.push(self.pending.len());
                if self.pending_bytes >= self.s.chunk_size {
                    return true;
                }
            }
        }
        false
    }

    /// The next batch, or `None` when the namespace is done.
    ///
    /// The scan runs one batch ahead of compression: while every worker is busy, the next
    /// batch is read from the store, and only then does this wait for the oldest job.
    pub async fn next(&mut self) -> Result<Option<EncodedBatch>> {
        loop {
            let full = self.fill_batch();
            let ready = full || (self.scanned_all && !self.pending.is_empty());
            if ready {
                if self.jobs.is_full() {
                    return self.jobs.next_freeing_here().await.transpose();
                }
                self.submit();
                continue;
            }
            if self.scanned_all {
                return self.jobs.next_freeing_here().await.transpose();
            }
            self.scan_page().await?;
        }
    }

    async fn scan_page(&mut self) -> Result<()> {
        let page = self
            .storage
            .scan(&self.ns, self.after.as_deref(), self.s.page_size)
            .await?;
        let Some(last) = page.last() else {
            self.scanned_all = true;
            return Ok(());
        };
        // Chunks are encoded apart: check the id order across their boundaries here.
        check_page_order(&self.ns, self.after.as_deref(), &page)?;
        self.after = Some(last.id.clone());
        self.carry.extend(page);
        Ok(())
    }
}

/// Raw bytes a vector counts for, in batches and in the chunker.
pub(crate) fn vector_size(v: &Vector) -> usize {
    4 * v.values.len() + v.id.len() + 16
}

/// A page of a scan must start after the last id of the previous one.
pub(crate) fn check_page_order(ns: &str, after: Option<&str>, page: &[Vector]) -> Result<()> {
    if let (Some(prev), Some(first)) = (after, page.first()) {
        if first.id.as_bytes() <= prev.as_bytes() {
            return Err(Error::Storage(format!(
                "namespace {ns:?}: the store's scan returned {:?} after {prev:?}; scans must ascend by id",
                first.id
            )));
        }
    }
    Ok(())
}

/// Encodes `vectors` of namespace `ns` (of `s.dimension`) as the chunks ending at `cuts`,
/// appended to `into`, referencing (not compressing) those whose identity `known` holds: the
/// job both encoders run on the pool. `mantissas` carries the choice of how mantissa planes
/// are coded from one call to the next.
pub(crate) fn encode_cut(
    into: &mut EncodedBatch,
    ns: &str,
    vectors: &[Vector],
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
    let shape = ChunkShape {
        dimension: s.dimension,
        include_metadata: s.include_metadata,
        filter: s.filter,
    };
    blob::encode_batch(into, vectors, cuts, shape, s.level, &dedup, mantissas)
        .map_err(|e| encode_error(ns, e))
}
