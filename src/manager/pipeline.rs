//! Byte pipelines between the format codec and a sink.
//!
//! Create: [`ChunkEncoder`] scans a namespace page by page, cuts it into chunks of about
//! `chunk_size` raw bytes, encodes and compresses chunks on the blocking pool (at most
//! `parallelism` at once) and yields them in order; [`BlobWriter`] appends them to the
//! upload. Restore and verify: [`download`] spools a byte range (memory, then a temporary
//! file) while hashing it; [`NamespaceReader`] decodes its chunks in parallel and yields
//! checked batches of vectors in order. Memory stays at a few chunks whatever the size of
//! the snapshot.

use crate::error::{Error, Result, SinkOp};
use crate::format::blob::{self, ContentDigest, DecodeError, DecodedChunk, EncodedChunk, Filter};
use crate::format::sidecar::{ChunkEntry, NamespaceEntry, SnapshotMetadata};
use crate::format::FORMAT_MAJOR;
use crate::paths::Key;
use crate::progress::Progress;
use crate::sink::{SinkWriter, SnapshotSink};
use crate::storage::{Vector, VectorStorage};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Objects up to this size are downloaded into memory with one request.
const SPOOL_MEMORY: usize = 8 << 20;
/// Larger ones are fetched in ranged parts of this size...
const DOWNLOAD_PART: usize = 4 << 20;
/// ...this many at once (memory: about `DOWNLOAD_PART × DOWNLOAD_CONCURRENCY`).
const DOWNLOAD_CONCURRENCY: usize = 4;

/// CPU-bound jobs (chunk encoding and decoding) run at most `max` at once, their results
/// taken in submission order. They run on a small fixed pool of threads rather than the
/// runtime's blocking pool: with a shifting set of threads, glibc gives each one its own
/// malloc arena and the peak memory of a large snapshot doubled (measured: +74 MiB with the
/// blocking pool, about +30 MiB with two arenas).
pub(crate) struct Ordered<T> {
    max: usize,
    queue: VecDeque<tokio::sync::oneshot::Receiver<Result<T>>>,
}

/// The process-wide pool for chunk jobs, one thread per core.
fn cpu_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("dakera-snapshot-{i}"))
            .build()
            .expect("a thread pool can be built")
    })
}

impl<T: Send + 'static> Ordered<T> {
    pub fn new(max: usize) -> Self {
        Ordered {
            max: max.max(1),
            queue: VecDeque::new(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.max
    }

    pub fn push(&mut self, job: impl FnOnce() -> Result<T> + Send + 'static) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        cpu_pool().spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(Error::Task("a chunk job panicked".into())));
            let _ = tx.send(result);
        });
        self.queue.push_back(rx);
    }

    /// The oldest job's result.
    pub async fn next(&mut self) -> Option<Result<T>> {
        let rx = self.queue.pop_front()?;
        Some(
            rx.await
                .unwrap_or_else(|_| Err(Error::Task("a chunk job was dropped".into()))),
        )
    }
}

/// Maps a codec error to the crate error, naming the snapshot and namespace.
pub(crate) fn decode_error(snapshot: &str, ns: Option<&str>, offset: u64, e: DecodeError) -> Error {
    match e {
        DecodeError::Corrupt(reason) => Error::corrupt(snapshot, ns, Some(offset), reason),
        DecodeError::Version { major, minor } => Error::UnsupportedVersion {
            what: format!("blob of snapshot {snapshot}"),
            found: format!("{major}.{minor}"),
            supported: FORMAT_MAJOR,
        },
    }
}

pub(crate) fn encode_error(ns: &str, e: blob::EncodeError) -> Error {
    match e {
        blob::EncodeError::Dimension { expected, actual } => Error::DimensionMismatch {
            namespace: ns.to_string(),
            expected: expected as usize,
            actual,
        },
        blob::EncodeError::Invalid(reason) => Error::Storage(format!("namespace {ns:?}: {reason}")),
    }
}

/// Settings of one namespace's encoding.
#[derive(Clone)]
pub(crate) struct EncodeSettings {
    pub dimension: u32,
    pub include_metadata: bool,
    pub filter: Filter,
    /// `None`: canonical frames only (a digest pass).
    pub level: Option<u32>,
    pub chunk_size: usize,
    pub page_size: usize,
    pub parallelism: usize,
}

/// Scans a namespace and yields its encoded chunks in order.
pub(crate) struct ChunkEncoder<'a> {
    storage: &'a dyn VectorStorage,
    ns: String,
    s: EncodeSettings,
    after: Option<String>,
    scanned_all: bool,
    pending: Vec<Vector>,
    pending_bytes: usize,
    /// Scanned vectors not yet in a chunk.
    carry: VecDeque<Vector>,
    jobs: Ordered<EncodedChunk>,
}

impl<'a> ChunkEncoder<'a> {
    pub fn new(storage: &'a dyn VectorStorage, ns: &str, s: EncodeSettings) -> Self {
        let parallelism = s.parallelism;
        ChunkEncoder {
            storage,
            ns: ns.to_string(),
            s,
            after: None,
            scanned_all: false,
            pending: Vec::new(),
            pending_bytes: 0,
            carry: VecDeque::new(),
            jobs: Ordered::new(parallelism),
        }
    }

    fn submit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let vectors = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let (ns, s) = (self.ns.clone(), self.s.clone());
        self.jobs.push(move || {
            blob::encode_chunk_owned(vectors, s.dimension, s.include_metadata, s.filter, s.level)
                .map_err(|e| encode_error(&ns, e))
        });
    }

    /// The next chunk, or `None` when the namespace is done.
    ///
    /// The scan runs one chunk ahead of compression: while every worker is busy, the next
    /// chunk is read from the store, and only then does this wait for the oldest job.
    pub async fn next(&mut self) -> Result<Option<EncodedChunk>> {
        loop {
            // Move scanned vectors into the pending chunk, up to the chunk size.
            while self.pending_bytes < self.s.chunk_size {
                let Some(v) = self.carry.pop_front() else {
                    break;
                };
                self.pending_bytes += 4 * v.values.len() + v.id.len() + 64;
                self.pending.push(v);
            }
            let ready = self.pending_bytes >= self.s.chunk_size
                || (self.scanned_all && self.carry.is_empty() && !self.pending.is_empty());
            if ready {
                if self.jobs.is_full() {
                    return self.jobs.next().await.transpose();
                }
                self.submit();
                continue;
            }
            if self.scanned_all {
                return self.jobs.next().await.transpose();
            }
            let page = self
                .storage
                .scan(&self.ns, self.after.as_deref(), self.s.page_size)
                .await?;
            let Some(last) = page.last() else {
                self.scanned_all = true;
                continue;
            };
            // Chunks are encoded apart: check the id order across their boundaries here.
            if let (Some(prev), Some(first)) = (&self.after, page.first()) {
                if first.id.as_bytes() <= prev.as_bytes() {
                    return Err(Error::Storage(format!(
                        "namespace {:?}: the store's scan returned {:?} after {prev:?}; scans must ascend by id",
                        self.ns, first.id
                    )));
                }
            }
            self.after = Some(last.id.clone());
            self.carry.extend(page);
        }
    }
}

/// What the writer task ends with: the upload (to finish or abort) and the blob's SHA-256,
/// or the error that stopped it.
type WriterOutcome = (Box<dyn SinkWriter>, Result<[u8; 32]>);

/// Appends chunks to an upload, recording where each lands. A task of its own hashes the
/// blob and writes to the sink, so the caller goes on scanning while a chunk is written; at
/// most one chunk waits for it.
pub(crate) struct BlobWriter {
    tx: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    task: Option<JoinHandle<WriterOutcome>>,
    offset: u64,
    raw_total: u64,
}

impl BlobWriter {
    pub fn new(mut out: Box<dyn SinkWriter>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let task = tokio::spawn(async move {
            let mut sha = Sha256::new();
            while let Some(bytes) = rx.recv().await {
                sha.update(&bytes);
                if let Err(e) = out.write(Bytes::from(bytes)).await {
                    return (out, Err(e));
                }
            }
            (out, Ok(sha.finalize().into()))
        });
        BlobWriter {
            tx: Some(tx),
            task: Some(task),
            offset: 0,
            raw_total: 0,
        }
    }

    /// Appends one encoded chunk.
    pub async fn write(
        &mut self,
        bytes: Vec<u8>,
        crc32: u32,
        raw_length: u64,
        vectors: u64,
    ) -> Result<ChunkEntry> {
        let length = bytes.len() as u64;
        let tx = self.tx.as_ref().expect("writer open until finish or abort");
        if tx.send(bytes).await.is_err() {
            // The writer task stopped on an error; `finish` or `abort` reports it.
            return Err(self.stopped().await);
        }
        let entry = ChunkEntry {
            offset: self.offset,
            length,
            raw_length,
            vectors,
            crc32,
        };
        self.offset += length;
        self.raw_total += raw_length;
        Ok(entry)
    }

    /// The error the writer task stopped with.
    async fn stopped(&mut self) -> Error {
        self.tx = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok((out, Err(e))) => {
                    if let Err(abort) = out.abort().await {
                        tracing::warn!(error = %abort, "could not abort a failed blob upload; `gc` will remove it");
                    }
                    e
                }
                Ok((out, Ok(_))) => {
                    let _ = out.abort().await;
                    Error::Task("the blob writer stopped early".into())
                }
                Err(e) => e.into(),
            },
            None => Error::Task("the blob writer is gone".into()),
        }
    }

    /// Compresses and appends a small chunk of raw frames (headers, ends).
    pub async fn write_raw(&mut self, raw: Vec<u8>, level: u32) -> Result<ChunkEntry> {
        let bytes = blob::compress_member(&raw, level);
        let crc = crc32fast::hash(&bytes);
        self.write(bytes, crc, raw.len() as u64, 0).await
    }

    /// Publishes the blob; returns its size, raw size and SHA-256.
    pub async fn finish(mut self) -> Result<(u64, u64, [u8; 32])> {
        self.tx = None;
        let task = self
            .task
            .take()
            .ok_or_else(|| Error::Task("the blob writer is gone".into()))?;
        let (out, sha) = task.await?;
        let sha = match sha {
            Ok(sha) => sha,
            Err(e) => {
                let _ = out.abort().await;
                return Err(e);
            }
        };
        let info = out.finish().await?;
        if info.size != self.offset {
            return Err(Error::sink(
                SinkOp::PutStreaming,
                info.key.as_str(),
                format!(
                    "stored {} bytes but {} were written",
                    info.size, self.offset
                ),
            ));
        }
        Ok((self.offset, self.raw_total, sha))
    }

    /// Discards the upload (best effort: a failure to abort is logged; the original error
    /// is what the caller reports).
    pub async fn abort(mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            if let Ok((out, _)) = task.await {
                if let Err(e) = out.abort().await {
                    tracing::warn!(error = %e, "could not abort a failed blob upload; `gc` will remove it");
                }
            }
        }
    }
}

/// Downloaded bytes of one object, readable at any offset from any thread.
pub(crate) struct Spool {
    data: SpoolData,
    /// The object's key, for error messages.
    key: String,
}

enum SpoolData {
    Memory(Vec<u8>),
    File(std::fs::File),
    /// The object's own local file; spool offset 0 is file offset `base`.
    Local {
        file: std::fs::File,
        base: u64,
    },
}

impl Spool {
    /// `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read_raw(offset, len).map_err(|e| {
            Error::sink(
                SinkOp::Get,
                self.key.as_str(),
                format!("reading the local copy at {offset}: {e}"),
            )
        })
    }

    fn read_raw(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        match &self.data {
            SpoolData::Local { file, base } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, base + offset)?;
                Ok(buf)
            }
            SpoolData::Memory(v) => {
                let end = offset.checked_add(len).filter(|e| *e <= v.len() as u64);
                let end = end.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the spool")
                })?;
                Ok(v[offset as usize..end as usize].to_vec())
            }
            SpoolData::File(f) => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
        }
    }
}

/// Downloads `key` (or a range of it), checking its length and hashing it.
pub(crate) async fn download(
    sink: &dyn SnapshotSink,
    key: &Key,
    range: Option<std::ops::Range<u64>>,
    expected_len: u64,
    mut sha: Option<&mut Sha256>,
    progress: &dyn Progress,
) -> Result<Spool> {
    let local_err = |e: std::io::Error| {
        Error::sink(
            SinkOp::Get,
            key.as_str(),
            format!("local temporary file: {e}"),
        )
    };
    if sha.is_none() {
        if let Some(file) = sink.open_local(key).await? {
            let size = file.metadata().map_err(local_err)?.len();
            let r = range.clone().unwrap_or(0..size);
            if r.end > size || r.end - r.start != expected_len {
                let why = format!("{}..{} of {key}, which is {size} bytes", r.start, r.end);
                return Err(Error::invalid("range", why));
            }
            progress.advance(expected_len);
            return Ok(Spool {
                data: SpoolData::Local {
                    file,
                    base: r.start,
                },
                key: key.to_string(),
            });
        }
    }
    let whole = range.clone().unwrap_or(0..expected_len);
    if whole.end - whole.start != expected_len {
        return Err(Error::invalid(
            "range",
            format!("{}..{} is not {expected_len} bytes", whole.start, whole.end),
        ));
    }
    let short = |got: u64| {
        Error::sink(
            SinkOp::Get,
            key.as_str(),
            format!(
                "read {got} bytes of {key} at {}..{}, expected {expected_len}",
                whole.start, whole.end
            ),
        )
    };
    // Small objects: one request into memory.
    if expected_len <= SPOOL_MEMORY as u64 {
        let mut stream = sink.get(key, range.clone()).await?;
        let mut mem = Vec::with_capacity(expected_len as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if mem.len() + chunk.len() > expected_len as usize {
                return Err(short(mem.len() as u64 + chunk.len() as u64));
            }
            mem.extend_from_slice(&chunk);
            progress.advance(chunk.len() as u64);
        }
        if mem.len() as u64 != expected_len {
            return Err(short(mem.len() as u64));
        }
        if let Some(h) = sha.as_mut() {
            h.update(&mem);
        }
        return Ok(Spool {
            data: SpoolData::Memory(mem),
            key: key.to_string(),
        });
    }
    // Larger ones: ranged requests of DOWNLOAD_PART bytes, DOWNLOAD_CONCURRENCY at once, taken
    // in order (so hashing stays sequential) and appended to an unnamed temporary file.
    let parts: Vec<std::ops::Range<u64>> = (whole.start..whole.end)
        .step_by(DOWNLOAD_PART)
        .map(|at| at..(at + DOWNLOAD_PART as u64).min(whole.end))
        .collect();
    let mut fetched = futures::stream::iter(parts)
        .map(|r| async move {
            let want = r.end - r.start;
            let bytes = crate::sink::SinkExt::get_bytes(sink, key, Some(r)).await?;
            Ok::<_, Error>((want, bytes))
        })
        .buffered(DOWNLOAD_CONCURRENCY);
    let mut file = tempfile::tempfile().map_err(local_err)?;
    let mut got = 0u64;
    while let Some(part) = fetched.next().await {
        let (want, bytes) = part?;
        got += bytes.len() as u64;
        if bytes.len() as u64 != want {
            return Err(short(got));
        }
        if let Some(h) = sha.as_mut() {
            h.update(&bytes);
        }
        progress.advance(bytes.len() as u64);
        file = tokio::task::spawn_blocking(move || file.write_all(&bytes).map(|_| file))
            .await?
            .map_err(local_err)?;
    }
    Ok(Spool {
        data: SpoolData::File(file),
        key: key.to_string(),
    })
}

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
                    return Err(Error::corrupt(
                        &id,
                        Some(&ns),
                        Some(c.offset),
                        "chunk bytes do not match their recorded checksum (damaged or truncated)",
                    ));
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

/// Reads and decodes one small chunk on the blocking pool.
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
    tokio::task::spawn_blocking(move || {
        decode(spool.read(off, len)?).map_err(|e| decode_error(&id, Some(&ns), at, e))
    })
    .await?
}
