//! Downloading an object or a range of it into a spool readable at any offset.

use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::paths::Key;
use crate::progress::Progress;
use crate::sink::SnapshotSink;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;

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
                SinkErrorKind::Other,
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
            SinkErrorKind::Other,
            format!("local temporary file: {e}"),
        )
    };
    if sha.is_none() {
        if let Some(file) = sink.open_local(key).await? {
            let size = file.metadata().map_err(local_err)?.len();
            let r = range.clone().unwrap_or(0..size);
            if r.end > size || r.end - r.start != expected_len {
                let why = format!("{}..{} of {key}, which is {size} bytes", r.start, r.end);
                return Err(Error::sink(
                    SinkOp::Get,
                    key.as_str(),
                    SinkErrorKind::InvalidRange,
                    why,
                ));
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
        return Err(Error::Internal(format!(
            "download of {}..{} is not {expected_len} bytes",
            whole.start, whole.end
        )));
    }
    let short = |got: u64| {
        Error::sink(
            SinkOp::Get,
            key.as_str(),
            SinkErrorKind::Other,
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
