//! Downloading an object or a range of it into a spool readable at any offset.

use super::on_pool;
use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::paths::Key;
use crate::progress::Progress;
use crate::sink::SnapshotSink;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

/// Objects up to this size are downloaded into memory with one request.
const SPOOL_MEMORY: usize = 8 << 20;
/// Larger ones are fetched in ranged parts of this size...
const DOWNLOAD_PART: usize = 4 << 20;
/// ...this many at once (memory: about `DOWNLOAD_PART × DOWNLOAD_CONCURRENCY`).
const DOWNLOAD_CONCURRENCY: usize = 4;

/// Downloaded bytes of one object, readable at any offset from any thread.
pub(crate) struct Spool {
    data: SpoolData,
    /// The object's key, for error messages.
    key: String,
}

enum SpoolData {
    Memory(Vec<u8>),
    File(std::fs::File),
    /// A file (the object's own local file, or a temporary one several runs share);
    /// spool offset 0 is file offset `base`.
    Local {
        file: Arc<std::fs::File>,
        base: u64,
    },
}

impl Spool {
    /// `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(offset, len, &mut buf)?;
        Ok(buf)
    }

    /// `len` bytes at `offset` into `buf` (replacing what it held): a buffer reused across
    /// the chunks of a batch is allocated and faulted in once, where a fresh one per chunk
    /// cost a page fault per page of every chunk, twice per restore (check, then decode).
    pub fn read_into(&self, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        self.read_raw(offset, len, buf).map_err(|e| {
            Error::sink(
                SinkOp::Get,
                self.key.as_str(),
                SinkErrorKind::Other,
                format!("reading the local copy at {offset}: {e}"),
            )
        })
    }

    fn read_raw(&self, offset: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (file, at) = match &self.data {
            SpoolData::Local { file, base } => (&**file, base + offset),
            SpoolData::File(f) => (f, offset),
            SpoolData::Memory(v) => {
                let end = offset.checked_add(len).filter(|e| *e <= v.len() as u64);
                let end = end.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the spool")
                })?;
                buf.clear();
                buf.extend_from_slice(&v[offset as usize..end as usize]);
                return Ok(());
            }
        };
        buf.resize(len as usize, 0);
        file.read_exact_at(buf, at)
    }
}

/// Downloads `key` (or a range of it), checking its length and hashing it. Without a
/// hash to compute, a sink's own local file is read in place.
pub(crate) async fn download(
    sink: &dyn SnapshotSink,
    key: &Key,
    range: Option<Range<u64>>,
    expected_len: u64,
    sha: Option<&mut Sha256>,
    progress: &dyn Progress,
) -> Result<Spool> {
    if sha.is_none() {
        if let Some(file) = sink.open_local(key).await? {
            let spool = local_range(file, key, range, expected_len)?;
            progress.advance(expected_len);
            return Ok(spool);
        }
    }
    let whole = range.clone().unwrap_or(0..expected_len);
    if whole.end.checked_sub(whole.start) != Some(expected_len) {
        return Err(Error::Internal(format!(
            "download of {}..{} is not {expected_len} bytes",
            whole.start, whole.end
        )));
    }
    let fetch = Fetch {
        sink,
        key,
        whole,
        sha,
        progress,
    };
    if expected_len <= SPOOL_MEMORY as u64 {
        fetch.into_memory(range).await
    } else {
        fetch.in_parts().await
    }
}

/// The byte range of a sink's local file, without copying it.
fn local_range(
    file: std::fs::File,
    key: &Key,
    range: Option<Range<u64>>,
    expected_len: u64,
) -> Result<Spool> {
    let size = file.metadata().map_err(|e| local_error(key, e))?.len();
    let file = Arc::new(file);
    let r = range.unwrap_or(0..size);
    if r.end > size || r.end.checked_sub(r.start) != Some(expected_len) {
        let why = format!("{}..{} of {key}, which is {size} bytes", r.start, r.end);
        return Err(Error::sink(
            SinkOp::Get,
            key.as_str(),
            SinkErrorKind::InvalidRange,
            why,
        ));
    }
    Ok(Spool {
        data: SpoolData::Local {
            file,
            base: r.start,
        },
        key: key.to_string(),
    })
}

fn local_error(key: &Key, e: std::io::Error) -> Error {
    Error::sink(
        SinkOp::Get,
        key.as_str(),
        SinkErrorKind::Other,
        format!("local temporary file: {e}"),
    )
}

/// One download through the sink's streams.
struct Fetch<'a> {
    sink: &'a dyn SnapshotSink,
    key: &'a Key,
    whole: Range<u64>,
    sha: Option<&'a mut Sha256>,
    progress: &'a dyn Progress,
}

impl Fetch<'_> {
    fn expected(&self) -> u64 {
        self.whole.end - self.whole.start
    }

    fn short(&self, got: u64) -> Error {
        Error::sink(
            SinkOp::Get,
            self.key.as_str(),
            SinkErrorKind::Other,
            format!(
                "read {got} bytes of {} at {}..{}, expected {}",
                self.key,
                self.whole.start,
                self.whole.end,
                self.expected()
            ),
        )
    }

    /// Feeds `data` to the caller's hash, if any, on the worker pool; gives `data` back.
    async fn hash(&mut self, data: Vec<u8>) -> Result<Vec<u8>> {
        let Some(sha) = self.sha.as_deref_mut() else {
            return Ok(data);
        };
        let mut h = sha.clone();
        let (h, data) = on_pool(move || {
            h.update(&data);
            (h, data)
        })
        .await?;
        *sha = h;
        Ok(data)
    }

    /// Small objects: one request into memory.
    async fn into_memory(mut self, range: Option<Range<u64>>) -> Result<Spool> {
        let expected = self.expected() as usize;
        let mut stream = self.sink.get(self.key, range).await?;
        let mut mem = Vec::with_capacity(expected);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if mem.len() + chunk.len() > expected {
                return Err(self.short((mem.len() + chunk.len()) as u64));
            }
            mem.extend_from_slice(&chunk);
            self.progress.advance(chunk.len() as u64);
        }
        if mem.len() != expected {
            return Err(self.short(mem.len() as u64));
        }
        let mem = self.hash(mem).await?;
        Ok(Spool {
            data: SpoolData::Memory(mem),
            key: self.key.to_string(),
        })
    }

    /// Larger ones: ranged requests of DOWNLOAD_PART bytes, DOWNLOAD_CONCURRENCY at once,
    /// taken in order (so hashing stays sequential) and appended to an unnamed temporary
    /// file; hashing and the file writes run on the worker pool, off the runtime's threads.
    async fn in_parts(mut self) -> Result<Spool> {
        let (sink, key) = (self.sink, self.key);
        let parts: Vec<Range<u64>> = (self.whole.start..self.whole.end)
            .step_by(DOWNLOAD_PART)
            .map(|at| at..(at + DOWNLOAD_PART as u64).min(self.whole.end))
            .collect();
        let mut fetched = futures::stream::iter(parts)
            .map(|r| async move {
                let want = r.end - r.start;
                let bytes = crate::sink::SinkExt::get_bytes(sink, key, Some(r)).await?;
                Ok::<_, Error>((want, bytes))
            })
            .buffered(DOWNLOAD_CONCURRENCY);
        let mut file = tempfile::tempfile().map_err(|e| local_error(key, e))?;
        let mut got = 0u64;
        while let Some(part) = fetched.next().await {
            let (want, bytes) = part?;
            got += bytes.len() as u64;
            if bytes.len() as u64 != want {
                return Err(self.short(got));
            }
            self.progress.advance(bytes.len() as u64);
            let bytes = self.hash(bytes.into()).await?;
            file = on_pool(move || file.write_all(&bytes).map(|_| file))
                .await?
                .map_err(|e| local_error(key, e))?;
        }
        Ok(Spool {
            data: SpoolData::File(file),
            key: key.to_string(),
        })
    }
}

/// One byte range of one object, among several downloaded together.
pub(crate) struct Run {
    pub key: Key,
    pub range: Range<u64>,
}

/// Downloads several ranges (the runs of a namespace's chunks, possibly in several
/// blobs), one spool each. A sink's local files are read in place (each file opened once);
/// otherwise runs totalling up to `SPOOL_MEMORY` go into memory, and larger sets into one
/// temporary file, in parts of `DOWNLOAD_PART`, `DOWNLOAD_CONCURRENCY` at once, so memory
/// stays bounded however many runs there are. An error names the run it happened in
/// (`on_error`).
pub(crate) async fn download_runs(
    sink: &dyn SnapshotSink,
    runs: &[Run],
    progress: &dyn Progress,
    on_error: impl Fn(usize, Error) -> Error,
) -> Result<Vec<Arc<Spool>>> {
    if let Some(local) = local_runs(sink, runs, progress, &on_error).await? {
        return Ok(local);
    }
    let total: u64 = runs.iter().map(|r| r.range.end - r.range.start).sum();
    if total <= SPOOL_MEMORY as u64 {
        let mut out = Vec::with_capacity(runs.len());
        for (i, r) in runs.iter().enumerate() {
            let len = r.range.end - r.range.start;
            let spool = download(sink, &r.key, Some(r.range.clone()), len, None, progress)
                .await
                .map_err(|e| on_error(i, e))?;
            out.push(Arc::new(spool));
        }
        return Ok(out);
    }
    runs_into_file(sink, runs, progress, &on_error).await
}

/// Runs read in place from the sink's local files, or `None` if the sink has none.
async fn local_runs(
    sink: &dyn SnapshotSink,
    runs: &[Run],
    progress: &dyn Progress,
    on_error: &impl Fn(usize, Error) -> Error,
) -> Result<Option<Vec<Arc<Spool>>>> {
    let mut files: std::collections::HashMap<&Key, (Arc<std::fs::File>, u64)> = Default::default();
    let mut out = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        let (file, size) = match files.get(&r.key) {
            Some(f) => f.clone(),
            None => {
                let Some(file) = sink.open_local(&r.key).await.map_err(|e| on_error(i, e))? else {
                    return Ok(None);
                };
                let size = file
                    .metadata()
                    .map_err(|e| on_error(i, local_error(&r.key, e)))?
                    .len();
                files.insert(&r.key, (Arc::new(file), size));
                files[&r.key].clone()
            }
        };
        if r.range.end > size {
            let why = format!(
                "{}..{} of {}, which is {size} bytes",
                r.range.start, r.range.end, r.key
            );
            return Err(on_error(
                i,
                Error::sink(
                    SinkOp::Get,
                    r.key.as_str(),
                    SinkErrorKind::InvalidRange,
                    why,
                ),
            ));
        }
        progress.advance(r.range.end - r.range.start);
        out.push(Arc::new(Spool {
            data: SpoolData::Local {
                file,
                base: r.range.start,
            },
            key: r.key.to_string(),
        }));
    }
    Ok(Some(out))
}

/// Runs fetched in parts into one temporary file, each run's spool a window of it.
async fn runs_into_file(
    sink: &dyn SnapshotSink,
    runs: &[Run],
    progress: &dyn Progress,
    on_error: &impl Fn(usize, Error) -> Error,
) -> Result<Vec<Arc<Spool>>> {
    let parts: Vec<(usize, Range<u64>)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            (r.range.start..r.range.end)
                .step_by(DOWNLOAD_PART)
                .map(move |at| (i, at..(at + DOWNLOAD_PART as u64).min(r.range.end)))
        })
        .collect();
    let mut fetched = futures::stream::iter(parts)
        .map(|(i, r)| async move {
            let want = r.end - r.start;
            let bytes = crate::sink::SinkExt::get_bytes(sink, &runs[i].key, Some(r))
                .await
                .map_err(|e| on_error(i, e))?;
            if bytes.len() as u64 != want {
                let why = format!("read {} bytes of a {want}-byte range", bytes.len());
                let e = Error::sink(
                    SinkOp::Get,
                    runs[i].key.as_str(),
                    SinkErrorKind::InvalidRange,
                    why,
                );
                return Err(on_error(i, e));
            }
            Ok::<_, Error>(bytes)
        })
        .buffered(DOWNLOAD_CONCURRENCY);
    let first = runs.first().map(|r| r.key.clone());
    let key = first
        .as_ref()
        .ok_or_else(|| Error::Internal("no runs to download".into()))?;
    let mut file = tempfile::tempfile().map_err(|e| local_error(key, e))?;
    while let Some(part) = fetched.next().await {
        let bytes = part?;
        progress.advance(bytes.len() as u64);
        file = on_pool(move || file.write_all(&bytes).map(|_| file))
            .await?
            .map_err(|e| local_error(key, e))?;
    }
    let file = Arc::new(file);
    let mut base = 0;
    Ok(runs
        .iter()
        .map(|r| {
            let spool = Spool {
                data: SpoolData::Local {
                    file: file.clone(),
                    base,
                },
                key: r.key.to_string(),
            };
            base += r.range.end - r.range.start;
            Arc::new(spool)
        })
        .collect())
}
