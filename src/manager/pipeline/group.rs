//! Encoding many small namespaces together: a group of them, about 1 MiB of raw bytes in
//! all, is one job on the worker pool. Each is scanned whole, by the creating task
//! ([`GroupEncoder`]) or, when the store gives out a shared handle, by the group's own job
//! ([`read_and_encode_group`]).
//!
//! A namespace of a few kilobytes costs little to encode but, one at a time, a pool hand-off,
//! a wait and two writes each; with thousands of them (a namespace per tenant) that overhead
//! was most of a snapshot, and one namespace at a time kept the second core idle. Groups in
//! flight (up to `parallelism`) keep every core busy, and their results come back in order.

use super::encode::encode_cut;
use super::{encode_error, EncodeSettings, KnownChunks, Ordered};
use crate::error::Result;
use crate::format::blob::{BatchChunk, EncodedBatch, Identity, MantissaChoice};
use crate::format::chunker::Chunker;
use crate::format::framed::FramedVectors;
use crate::storage::{Vector, VectorStorage};
use std::ops::Range;
use std::sync::Arc;

/// Raw bytes of a group (at most `chunk_size`): small enough that the scanned vectors of the
/// groups in flight stay a few MiB (a scanned vector takes several times its raw bytes on
/// the heap), large enough that a pool hand-off per group costs nothing.
pub(crate) const GROUP_BYTES: usize = 1 << 20;

/// One small namespace, scanned whole.
pub(crate) struct SmallNamespace {
    pub name: String,
    pub dimension: u32,
    pub vectors: FramedVectors,
    /// Identities already in the chain (referenced, not stored), and how they are computed.
    pub known: KnownChunks,
    pub identity: Identity,
    /// The store's change token, recorded with it.
    pub token: Option<String>,
}

/// A small namespace encoded: all its chunks in one batch.
pub(crate) struct EncodedNamespace {
    pub name: String,
    pub dimension: u32,
    pub token: Option<String>,
    /// Its bytes, chunks and vector hashes in the group's batch.
    bytes: Range<usize>,
    chunks: Range<usize>,
    hashes: Range<usize>,
}

impl EncodedNamespace {
    /// Its part of `group`'s batch.
    pub fn part<'g>(&self, group: &'g EncodedBatch) -> NamespacePart<'g> {
        NamespacePart {
            bytes: &group.bytes[self.bytes.clone()],
            chunks: &group.chunks[self.chunks.clone()],
            vector_hashes: &group.vector_hashes[self.hashes.clone()],
        }
    }
}

/// One namespace's chunks in a group's batch: their gzip members back to back, their index
/// entries and their vectors' hashes.
pub(crate) struct NamespacePart<'g> {
    pub bytes: &'g [u8],
    pub chunks: &'g [BatchChunk],
    pub vector_hashes: &'g [[u8; 32]],
}

/// A group of small namespaces encoded: one batch for all of them, in order, and where each
/// namespace's part of it is.
///
/// Every namespace is encoded straight into the group's batch. One batch, not one per
/// namespace, because the pool thread allocates it and the runtime thread frees it: with a
/// batch per namespace, three blocks each crossed threads, and each free of a pool thread's
/// block on the runtime took that arena's lock against the pool's own allocations (glibc). A
/// trace of a 10,000-namespace create (`perf record -e sched:sched_switch`) found 209 of the
/// runtime thread's 335 waits there.
pub(crate) struct EncodedGroup {
    pub batch: EncodedBatch,
    pub namespaces: Vec<EncodedNamespace>,
    /// Namespaces of the group found larger than a batch, in order, left to be streamed.
    pub too_large: Vec<TooLarge>,
}

/// A namespace a group job found larger than a batch (the store's count was low): not in
/// the group's batch, left for the caller to stream in its place.
pub(crate) struct TooLarge {
    /// How many of the group's encoded namespaces come before it.
    pub after: usize,
    pub name: String,
    pub dimension: u32,
    pub token: Option<String>,
}

/// A small namespace for a group job to read and encode ([`read_and_encode_group`]).
pub(crate) struct PlannedNamespace {
    pub name: String,
    pub dimension: u32,
    /// How many vectors the store counted (room to reserve; it may be low).
    pub count: usize,
    pub known: KnownChunks,
    pub identity: Identity,
}

impl EncodedGroup {
    /// An empty group with room for `namespaces` namespaces, its bytes in `bytes`.
    fn with_capacity(namespaces: usize, bytes: Vec<u8>) -> Self {
        EncodedGroup {
            batch: EncodedBatch {
                bytes,
                ..Default::default()
            },
            namespaces: Vec::with_capacity(namespaces),
            too_large: Vec::new(),
        }
    }

    /// Where the group's batch ends now: the start of the next namespace's part.
    fn end(&self) -> (usize, usize, usize) {
        let b = &self.batch;
        (b.bytes.len(), b.chunks.len(), b.vector_hashes.len())
    }

    /// Records the part of the batch from `start` to its end as namespace `name`'s.
    fn close(
        &mut self,
        start: (usize, usize, usize),
        name: String,
        dim: u32,
        token: Option<String>,
    ) {
        let end = self.end();
        self.namespaces.push(EncodedNamespace {
            name,
            dimension: dim,
            token,
            bytes: start.0..end.0,
            chunks: start.1..end.1,
            hashes: start.2..end.2,
        });
    }
}

/// Reads namespace `ns` whole, in id order, framed into `vectors` (empty), unless it holds
/// more than `limit` raw bytes: then `None` (the store's count was low), and the namespace
/// is to be streamed instead.
pub(crate) async fn scan_whole(
    storage: &dyn VectorStorage,
    ns: &str,
    mut vectors: FramedVectors,
    page_size: usize,
    limit: usize,
) -> Result<Option<FramedVectors>> {
    let mut failed = None;
    loop {
        let after = vectors
            .last_id()
            .map(|id| String::from_utf8_lossy(id).into_owned());
        let mut take = |v: &Vector| {
            if failed.is_none() {
                failed = vectors.push(v).err();
            }
        };
        let lent = storage
            .scan_each(ns, after.as_deref(), page_size, &mut take)
            .await?;
        if let Some(e) = failed {
            return Err(encode_error(ns, e));
        }
        if lent == 0 {
            return Ok(Some(vectors));
        }
        if vectors.raw_size() > limit {
            return Ok(None);
        }
    }
}

/// The store's change token of `ns`, if it keeps one that a sidecar can carry (at most 128
/// printable ASCII characters; another is ignored, with a warning).
pub(crate) async fn change_token(storage: &dyn VectorStorage, ns: &str) -> Result<Option<String>> {
    let token = storage.change_token(ns).await?;
    let usable = |t: &String| t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic());
    Ok(match token {
        Some(t) if !usable(&t) => {
            tracing::warn!(
                namespace = ns,
                "the store's change token is not 1-128 printable ASCII characters; ignored"
            );
            None
        }
        other => other,
    })
}

/// A group's work, run on a pool thread ([`super::InOrderTasks::spawn_on_pool`]): reads each
/// namespace of `group` whole from `store`, its change token first, and encodes it into the
/// group's batch before reading the next, framing every namespace in the same buffers.
pub(crate) async fn read_and_encode_group(
    store: Arc<dyn VectorStorage>,
    group: Vec<PlannedNamespace>,
    s: EncodeSettings,
) -> Result<EncodedGroup> {
    let room = group
        .iter()
        .map(|p| p.count * (4 * p.dimension as usize + 64));
    let mut encoded = EncodedGroup::with_capacity(group.len(), s.buffers.take(room.sum()));
    let mantissas = &mut MantissaChoice::default();
    let mut spent = Vec::with_capacity(1);
    let mut framed = FramedVectors::new(0, s.include_metadata);
    for p in group {
        let token = change_token(&*store, &p.name).await?;
        framed.clear_for(p.dimension);
        let read = scan_whole(&*store, &p.name, framed, s.page_size, s.chunk_size);
        let Some(vectors) = read.await? else {
            encoded.too_large.push(TooLarge {
                after: encoded.namespaces.len(),
                name: p.name,
                dimension: p.dimension,
                token,
            });
            framed = FramedVectors::new(0, s.include_metadata);
            continue;
        };
        let ns = SmallNamespace {
            name: p.name,
            dimension: p.dimension,
            vectors,
            known: p.known,
            identity: p.identity,
            token,
        };
        encode(ns, &s, mantissas, &mut encoded, &mut spent)?;
        framed = spent.pop().map(|(vectors, _)| vectors).unwrap_or_default();
    }
    Ok(encoded)
}

/// Encodes `group` (`raw_bytes` in all) into one batch, handing back its scanned vectors.
fn encode_group(
    group: Vec<SmallNamespace>,
    raw_bytes: usize,
    s: &EncodeSettings,
) -> (Result<EncodedGroup>, Spent) {
    let mantissas = &mut MantissaChoice::default();
    let mut spent = Vec::with_capacity(group.len());
    let bytes = s.buffers.take(raw_bytes);
    let mut encoded = EncodedGroup::with_capacity(group.len(), bytes);
    let result = group
        .into_iter()
        .try_for_each(|ns| encode(ns, s, mantissas, &mut encoded, &mut spent));
    (result.map(|()| encoded), spent)
}

/// Groups small namespaces into pool jobs and yields each group encoded, in order.
pub(crate) struct GroupEncoder {
    settings: EncodeSettings,
    pending: Vec<SmallNamespace>,
    pending_bytes: usize,
    jobs: Ordered<(Result<EncodedGroup>, Spent)>,
}

/// A group's scanned vectors (and each namespace's known identities) after encoding, handed
/// back to be freed on the runtime thread that allocated them (see
/// [`Ordered::next_freeing_here`]).
type Spent = Vec<(FramedVectors, KnownChunks)>;

impl GroupEncoder {
    /// `settings` apply to every namespace (their dimension and identity are each
    /// namespace's own).
    pub fn new(settings: EncodeSettings) -> Self {
        GroupEncoder {
            jobs: Ordered::new(settings.parallelism),
            settings,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Adds a namespace to the group being filled; true when that group is full.
    pub fn add(&mut self, ns: SmallNamespace) -> bool {
        self.pending_bytes += ns.vectors.raw_size() + 64;
        self.pending.push(ns);
        self.pending_bytes >= GROUP_BYTES.min(self.settings.chunk_size)
    }

    /// True when as many groups are in flight as may be.
    pub fn is_busy(&self) -> bool {
        self.jobs.is_full()
    }

    /// Sends the group being filled to the pool (if it holds anything).
    pub fn submit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.pending);
        let raw_bytes = std::mem::take(&mut self.pending_bytes);
        let s = self.settings.clone();
        self.jobs
            .push(move || Ok(encode_group(group, raw_bytes, &s)));
    }

    /// The oldest group in flight, encoded; `None` when none is.
    pub async fn next(&mut self) -> Option<Result<EncodedGroup>> {
        self.jobs.next_freeing_here().await
    }
}

/// Cuts one namespace into its content-defined chunks and encodes them.
/// Mantissa planes are coded as `mantissas` decides for the whole group: a trial deflate
/// per namespace of a few kilobytes cost as much as the namespace's own deflate.
fn encode(
    ns: SmallNamespace,
    s: &EncodeSettings,
    mantissas: &mut MantissaChoice,
    into: &mut EncodedGroup,
    spent: &mut Spent,
) -> Result<()> {
    let mut chunker = Chunker::new(ns.dimension, s.dedup_chunk_size);
    let vectors = &ns.vectors;
    let mut cuts: Vec<usize> = (0..vectors.len())
        .filter(|&i| chunker.cut_after(vectors.id(i), vectors.size(i)))
        .map(|i| i + 1)
        .collect();
    if !vectors.is_empty() && cuts.last() != Some(&vectors.len()) {
        cuts.push(vectors.len());
    }
    // Each namespace's identities are computed its own way (its dedup base's).
    let settings = EncodeSettings {
        identity: ns.identity,
        dimension: ns.dimension,
        ..s.clone()
    };
    let start = into.end();
    let encoded = encode_cut(
        &mut into.batch,
        &ns.name,
        &ns.vectors,
        &cuts,
        &ns.known,
        &settings,
        mantissas,
    );
    spent.push((ns.vectors, ns.known));
    encoded?;
    into.close(start, ns.name, ns.dimension, ns.token);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(raw_length: u32) -> BatchChunk {
        BatchChunk {
            stored: Some((raw_length, 0)),
            raw_length,
            vectors: 1,
            sha256: [0; 32],
        }
    }

    /// What a namespace appends: bytes, its chunks' raw lengths, vector hashes.
    type Appended<'a> = (&'a [u8], &'a [u32], &'a [[u8; 32]]);

    #[test]
    fn each_namespace_gets_back_exactly_its_part_of_the_group() {
        let parts: [Appended; 3] = [
            (b"first", &[1, 2], &[[1; 32], [2; 32], [3; 32]]),
            (b"", &[], &[]),
            (b"third!", &[3], &[[4; 32], [5; 32]]),
        ];
        let mut group = EncodedGroup::with_capacity(parts.len(), Vec::new());
        for (i, (bytes, chunks, hashes)) in parts.iter().enumerate() {
            let start = group.end();
            group.batch.bytes.extend_from_slice(bytes);
            group.batch.chunks.extend(chunks.iter().map(|&r| chunk(r)));
            group.batch.vector_hashes.extend_from_slice(hashes);
            group.close(start, format!("ns-{i}"), 4, None);
        }
        for (ns, (bytes, chunks, hashes)) in group.namespaces.iter().zip(&parts) {
            let got = ns.part(&group.batch);
            assert_eq!(got.bytes, *bytes, "{}", ns.name);
            assert_eq!(got.vector_hashes, *hashes, "{}", ns.name);
            let raw: Vec<u32> = got.chunks.iter().map(|c| c.raw_length).collect();
            assert_eq!(raw, *chunks, "{}", ns.name);
        }
    }
}
