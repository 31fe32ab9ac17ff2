//! Byte pipelines between the format codec and a sink: the streaming blob writer (parallel
//! member compression, ordered output) and the spooled reader used by restore and verify.

use crate::error::{Error, Result};
use crate::format::blob::{self, DecodeError};
use crate::format::sidecar::MemberEntry;
use crate::paths::Key;
use crate::sink::{SinkWriter, SnapshotSink};
use crate::storage::Vector;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use tempfile::SpooledTempFile;
use tokio::task::JoinHandle;

/// Which part of the blob a member belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Header,
    Namespace(usize),
    Footer,
}

/// A member as written: where it landed and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub part: Part,
    pub entry: MemberEntry,
}

/// Streams gzip members into a sink upload. Up to `max_in_flight` members compress at once
/// on the blocking pool; they are written strictly in submission order, so offsets are
/// known as soon as a member is written. Memory: `max_in_flight` raw chunks plus their
/// compressed forms.
pub(crate) struct BlobWriter {
    out: Option<Box<dyn SinkWriter>>,
    level: u32,
    max_in_flight: usize,
    in_flight: VecDeque<(JoinHandle<Vec<u8>>, Part, u64, u64)>,
    offset: u64,
    raw_total: u64,
    sha: Sha256,
    written: Vec<Written>,
}

impl BlobWriter {
    pub fn new(out: Box<dyn SinkWriter>, level: u32, parallelism: usize) -> Self {
        BlobWriter {
            out: Some(out),
            level,
            max_in_flight: parallelism.max(1),
            in_flight: VecDeque::new(),
            offset: 0,
            raw_total: 0,
            sha: Sha256::new(),
            written: Vec::new(),
        }
    }

    /// Queues `raw` (whole frames) as one member.
    pub async fn submit(&mut self, raw: Vec<u8>, part: Part, vectors: u64) -> Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.write_next().await?;
        }
        let level = self.level;
        let raw_len = raw.len() as u64;
        let handle = tokio::task::spawn_blocking(move || blob::compress_member(&raw, level));
        self.in_flight.push_back((handle, part, raw_len, vectors));
        Ok(())
    }

    async fn write_next(&mut self) -> Result<()> {
        let Some((handle, part, raw_length, vectors)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let bytes = handle.await?;
        self.sha.update(&bytes);
        let length = bytes.len() as u64;
        let out = self
            .out
            .as_mut()
            .expect("writer present until finish or abort");
        out.write(Bytes::from(bytes)).await?;
        self.written.push(Written {
            part,
            entry: MemberEntry {
                offset: self.offset,
                length,
                raw_length,
                vectors,
            },
        });
        self.offset += length;
        self.raw_total += raw_length;
        Ok(())
    }

    /// Writes everything queued and publishes the blob. Returns the members, the blob size,
    /// its raw size and its SHA-256.
    pub async fn finish(mut self) -> Result<(Vec<Written>, u64, u64, [u8; 32])> {
        while !self.in_flight.is_empty() {
            self.write_next().await?;
        }
        let out = self
            .out
            .take()
            .expect("writer present until finish or abort");
        let info = out.finish().await?;
        if info.size != self.offset {
            return Err(Error::sink(
                crate::error::SinkOp::PutStreaming,
                info.key.as_str(),
                format!(
                    "stored {} bytes but {} were written",
                    info.size, self.offset
                ),
            ));
        }
        let sha = std::mem::take(&mut self.sha).finalize().into();
        Ok((
            std::mem::take(&mut self.written),
            self.offset,
            self.raw_total,
            sha,
        ))
    }

    /// Discards the upload (best effort: a failure to abort is logged, the original error
    /// is what the caller reports).
    pub async fn abort(mut self) {
        self.in_flight.clear();
        if let Some(out) = self.out.take() {
            if let Err(e) = out.abort().await {
                tracing::warn!(error = %e, "could not abort a failed blob upload; `gc` will remove it");
            }
        }
    }
}

/// Downloads `key` (or a range of it) into a spooled temporary file (memory up to 16 MiB,
/// then disk), checking its length and optionally hashing it.
pub(crate) async fn download(
    sink: &dyn SnapshotSink,
    key: &Key,
    range: Option<Range<u64>>,
    expected_len: u64,
    mut sha: Option<&mut Sha256>,
) -> Result<SpooledTempFile> {
    let mut stream = sink.get(key, range.clone()).await?;
    let mut spool = SpooledTempFile::new(16 << 20);
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        if got > expected_len {
            break;
        }
        if let Some(h) = sha.as_mut() {
            h.update(&chunk);
        }
        spool = tokio::task::spawn_blocking(move || spool.write_all(&chunk).map(|_| spool))
            .await?
            .map_err(|e| {
                Error::sink(
                    crate::error::SinkOp::Get,
                    key.as_str(),
                    format!("local temporary file: {e}"),
                )
            })?;
    }
    if got != expected_len {
        let what = match range {
            Some(r) => format!("bytes {}..{} of {key}", r.start, r.end),
            None => key.to_string(),
        };
        return Err(Error::sink(
            crate::error::SinkOp::Get,
            key.as_str(),
            format!("read {got} bytes of {what}, expected {expected_len}"),
        ));
    }
    Ok(spool)
}

/// Runs `f` over `len` bytes of the spool starting at `start`, on the blocking pool, and
/// hands the spool back.
pub(crate) async fn with_range<T, F>(
    mut spool: SpooledTempFile,
    start: u64,
    len: u64,
    f: F,
) -> Result<(SpooledTempFile, std::result::Result<T, DecodeError>)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> std::result::Result<T, DecodeError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let r = match spool.seek(SeekFrom::Start(start)) {
            Ok(_) => f(&mut (&mut spool).take(len)),
            Err(e) => Err(DecodeError::Corrupt(format!("local temporary file: {e}"))),
        };
        (spool, r)
    })
    .await
    .map_err(Error::from)
}

/// Decodes a namespace section from the spool and streams its vectors, in batches, to the
/// returned channel; the join handle yields the section's summary once decoding ends.
pub(crate) fn decode_to_channel(
    spool: SpooledTempFile,
    len: u64,
    batch: usize,
) -> (
    tokio::sync::mpsc::Receiver<Vec<Vector>>,
    JoinHandle<std::result::Result<blob::NamespaceSummary, DecodeError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let handle = tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        spool
            .seek(SeekFrom::Start(0))
            .map_err(|e| DecodeError::Corrupt(format!("local temporary file: {e}")))?;
        blob::decode_namespace((&mut spool).take(len), batch, |vectors| {
            tx.blocking_send(vectors)
                .map_err(|_| DecodeError::Corrupt("restore stopped".into()))
        })
    });
    (rx, handle)
}
