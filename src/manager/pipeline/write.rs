//! Appending encoded chunks to an upload while hashing the blob.

use super::{outside_the_runtime, ByteBuffers};
use crate::crypto::{Chunk, Sealing};
use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::format::blob;
use crate::format::sidecar::ChunkEntry;
use crate::sink::SinkWriter;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// What the writer task ends with: the upload (to finish or abort) and the blob's SHA-256,
/// or the error that stopped it.
type WriterOutcome = (Box<dyn SinkWriter>, Result<[u8; 32]>);

/// Appends chunks to an upload, recording where each lands. A task of its own writes to the
/// sink and another ([`hasher`]) hashes the blob, so the caller goes on scanning while a chunk
/// is written and hashed; at most one chunk waits for each. Buffers the sink and the hasher
/// let go of go back to [`Self::buffers`].
pub(crate) struct BlobWriter {
    sealing: Option<Sealing>,
    buffers: ByteBuffers,
    tx: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    task: Option<JoinHandle<WriterOutcome>>,
    offset: u64,
    raw_total: u64,
}

/// Hashes the blob's bytes as they are written, on a task of its own: hashing a chunk and
/// copying it to the sink take about as long, and one after the other on one task they were
/// the longest stage of a create (the pool's two threads waited on it). The task holds at most
/// one chunk besides the one it hashes; it ends with the SHA-256 of all it was sent, in order.
fn hasher(spare: ByteBuffers) -> (tokio::sync::mpsc::Sender<Bytes>, JoinHandle<[u8; 32]>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let task = tokio::spawn(async move {
        let mut sha = Sha256::new();
        while let Some(bytes) = rx.recv().await {
            // CPU work: the runtime's other tasks move to other threads meanwhile. (On the
            // worker pool it would queue behind chunk encodes.)
            outside_the_runtime(|| sha.update(&bytes));
            recycle(bytes, &spare);
        }
        sha.finalize().into()
    });
    (tx, task)
}

/// Hands a written chunk's buffer back for a later batch, if neither the sink nor the hasher
/// still holds it (whichever lets go last gives it back).
fn recycle(bytes: Bytes, spare: &ByteBuffers) {
    if let Ok(unshared) = bytes.try_into_mut() {
        spare.give(unshared.into());
    }
}

impl BlobWriter {
    /// A writer to `out`; with `sealing`, of an encrypted repository's blob, whose every
    /// chunk is sealed.
    pub fn new(mut out: Box<dyn SinkWriter>, sealing: Option<Sealing>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let buffers = ByteBuffers::for_sink(!out.holds_written_bytes());
        let spare = buffers.clone();
        let task = tokio::spawn(async move {
            let (to_hash, hashed) = hasher(spare.clone());
            while let Some(bytes) = rx.recv().await {
                let bytes = Bytes::from(bytes);
                if to_hash.send(bytes.clone()).await.is_err() {
                    break;
                }
                if let Err(e) = out.write(bytes.clone()).await {
                    return (out, Err(e));
                }
                recycle(bytes, &spare);
            }
            drop(to_hash);
            let sha = hashed
                .await
                .map_err(|e| Error::Internal(format!("the blob's hasher failed: {e}")));
            (out, sha)
        });
        BlobWriter {
            sealing,
            buffers,
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
        let offset = self.append(bytes, raw_length).await?;
        Ok(ChunkEntry {
            offset,
            length,
            raw_length,
            vectors,
            crc32,
        })
    }

    /// Bytes written so far: where the next chunk starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends bytes (any number of whole chunks, `raw_length` decompressed bytes in all);
    /// returns the offset they start at.
    pub async fn append(&mut self, bytes: Vec<u8>, raw_length: u64) -> Result<u64> {
        let (offset, length) = (self.offset, bytes.len() as u64);
        if length == 0 {
            return Ok(offset);
        }
        let tx = self.tx.as_ref().expect("writer open until finish or abort");
        if tx.send(bytes).await.is_err() {
            // The writer task stopped on an error; `finish` or `abort` reports it.
            return Err(self.stopped().await);
        }
        self.offset += length;
        self.raw_total += raw_length;
        Ok(offset)
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
                    Error::Internal("the blob writer stopped early".into())
                }
                Err(e) => e.into(),
            },
            None => Error::Internal("the blob writer is gone".into()),
        }
    }

    /// Spare buffers for the chunks to come: those the sink was done with once written.
    pub fn buffers(&self) -> ByteBuffers {
        self.buffers.clone()
    }

    /// How this blob's chunks are sealed (encrypted repositories).
    pub fn sealing(&self) -> Option<&Sealing> {
        self.sealing.as_ref()
    }

    /// Compresses (and seals, as `what`) and appends a small chunk of raw frames: the
    /// header, the footer.
    pub async fn write_raw(
        &mut self,
        raw: Vec<u8>,
        level: u32,
        what: Chunk<'_>,
    ) -> Result<ChunkEntry> {
        let member = blob::compress_member(&raw, level);
        self.write_member(member, raw.len() as u64, what).await
    }

    /// Seals (as `what`) and appends a gzip member of `raw_length` raw bytes: a chunk the
    /// caller compressed its own way (a chunk index).
    pub async fn write_member(
        &mut self,
        member: Vec<u8>,
        raw_length: u64,
        what: Chunk<'_>,
    ) -> Result<ChunkEntry> {
        let bytes = Sealing::maybe_seal(self.sealing.as_ref(), member, what);
        let crc = crc32fast::hash(&bytes);
        self.write(bytes, crc, raw_length, 0).await
    }

    /// Publishes the blob; returns its size, raw size and SHA-256.
    pub async fn finish(mut self) -> Result<(u64, u64, [u8; 32])> {
        self.tx = None;
        let task = self
            .task
            .take()
            .ok_or_else(|| Error::Internal("the blob writer is gone".into()))?;
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
                SinkErrorKind::Other,
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
