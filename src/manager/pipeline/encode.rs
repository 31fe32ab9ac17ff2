//! Scanning a namespace and encoding it into compressed chunks, in parallel and in order.

use super::{encode_error, Ordered};
use crate::error::{Error, Result};
use crate::format::blob::{self, EncodedChunk, Filter};
use crate::storage::{Vector, VectorStorage};
use std::collections::VecDeque;

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
