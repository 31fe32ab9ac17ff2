//! A sink on the local filesystem, with crash-safe writes.

use super::{ByteStream, ObjectInfo, PutMode, SinkWriter, SnapshotSink};
use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::paths::Key;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use tempfile::NamedTempFile;

/// A streaming upload starts writeback of what it has written every this many bytes, so the
/// final fsync has little left to flush (RocksDB's `bytes_per_sync`).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts asynchronous writeback of `len` bytes at `offset` (Linux); durability still comes
/// from the fsync before the file is published.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a plain syscall on a descriptor we own; failure only loses the hint.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as i64,
                len as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Read chunk size for `get`.
const READ_CHUNK: usize = 4 << 20;

/// Stores objects as files under a root directory.
///
/// Every write goes to a temporary file (a `.tmp-` name in the target's folder, which never
/// parses as a key and is never listed), is fsynced, then renamed into place (or hard-linked,
/// for [`PutMode::Create`], which fails atomically if the name exists), and the folder is
/// fsynced. A crash at any point leaves either the old state or the new object, plus at most
/// a stray temporary file that [`LocalFsSink::remove_temp_files`] clears.
///
/// Keys are validated before they reach the filesystem, so no key can address a file
/// outside the root. (Symbolic links that an administrator places inside the root are
/// followed like any other path.)
#[derive(Debug, Clone)]
pub struct LocalFsSink {
    root: PathBuf,
}

impl LocalFsSink {
    /// A sink rooted at `root`, created (with parents) if it does not exist.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(|e| {
            Error::sink(
                SinkOp::Put,
                root.display().to_string(),
                io_kind(&e),
                format!("cannot create repository folder: {e}"),
            )
        })?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::sink(SinkOp::Head, root.display().to_string(), io_kind(&e), e))?;
        Ok(LocalFsSink { root })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &Key) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(key.segments());
        p
    }

    /// Removes temporary files left by crashed writers whose last change is older than
    /// `older_than_ms` (unix milliseconds); returns how many were removed.
    pub async fn remove_temp_files(&self, older_than_ms: u64) -> Result<usize> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(Error::sink(
                            SinkOp::List,
                            dir.display().to_string(),
                            io_kind(&e),
                            e,
                        ))
                    }
                };
                for entry in entries {
                    let entry = entry.map_err(|e| {
                        Error::sink(SinkOp::List, dir.display().to_string(), io_kind(&e), e)
                    })?;
                    let ty = entry.file_type().map_err(|e| {
                        Error::sink(SinkOp::List, dir.display().to_string(), io_kind(&e), e)
                    })?;
                    let name = entry.file_name();
                    if ty.is_dir() {
                        stack.push(entry.path());
                    } else if name.to_string_lossy().starts_with(".tmp-") {
                        let old = entry
                            .metadata()
                            .ok()
                            .map(|m| modified_ms(&m) < older_than_ms)
                            .unwrap_or(false);
                        if old && fs::remove_file(entry.path()).is_ok() {
                            removed += 1;
                        }
                    }
                }
            }
            Ok(removed)
        })
        .await?
    }
}

fn modified_ms(m: &fs::Metadata) -> u64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(op: SinkOp, key: &Key, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound && matches!(op, SinkOp::Get | SinkOp::Head) {
        Error::ObjectNotFound {
            key: key.to_string(),
        }
    } else {
        Error::sink(op, key.as_str(), io_kind(&e), e)
    }
}

/// The sink error kind of a filesystem error.
fn io_kind(e: &io::Error) -> SinkErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => SinkErrorKind::NotFound,
        io::ErrorKind::AlreadyExists => SinkErrorKind::AlreadyExists,
        io::ErrorKind::PermissionDenied => SinkErrorKind::PermissionDenied,
        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => SinkErrorKind::Transient,
        _ => SinkErrorKind::Other,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a temporary file next to where `path` will live. Folders created on the way are
/// made durable (each new folder's entry is fsynced in its parent), so a committed object
/// can never vanish with a folder that was only in the page cache.
fn temp_beside(path: &Path) -> io::Result<NamedTempFile> {
    let dir = path.parent().expect("keys have a parent under the root");
    if !dir.is_dir() {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d);
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir)?;
        for created in missing {
            if let Some(parent) = created.parent() {
                sync_dir(parent)?;
            }
        }
    }
    tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)
}

/// fsyncs `tmp` and publishes it under `path`, then fsyncs the folder.
fn publish(
    tmp: NamedTempFile,
    path: &Path,
    mode: PutMode,
    key: &Key,
    op: SinkOp,
) -> Result<ObjectInfo> {
    tmp.as_file().sync_all().map_err(|e| io_err(op, key, e))?;
    let file = match mode {
        PutMode::Overwrite => tmp.persist(path),
        PutMode::Create => tmp.persist_noclobber(path),
    }
    .map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            Error::Conflict {
                key: key.to_string(),
                reason: "an object with this key already exists".to_string(),
            }
        } else {
            io_err(op, key, e.error)
        }
    })?;
    let dir = path.parent().expect("keys have a parent under the root");
    sync_dir(dir).map_err(|e| io_err(op, key, e))?;
    let meta = file.metadata().map_err(|e| io_err(op, key, e))?;
    Ok(ObjectInfo {
        key: key.clone(),
        size: meta.len(),
        last_modified_ms: modified_ms(&meta),
    })
}

#[async_trait]
impl SnapshotSink for LocalFsSink {
    async fn put(&self, key: &Key, data: Bytes, mode: PutMode) -> Result<()> {
        let path = self.path_of(key);
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            let mut tmp = temp_beside(&path).map_err(|e| io_err(SinkOp::Put, &key, e))?;
            tmp.write_all(&data)
                .map_err(|e| io_err(SinkOp::Put, &key, e))?;
            publish(tmp, &path, mode, &key, SinkOp::Put).map(|_| ())
        })
        .await?
    }

    async fn put_streaming(&self, key: &Key, mode: PutMode) -> Result<Box<dyn SinkWriter>> {
        let path = self.path_of(key);
        let k = key.clone();
        let (tmp, path) = tokio::task::spawn_blocking(move || {
            temp_beside(&path)
                .map(|t| (t, path))
                .map_err(|e| io_err(SinkOp::PutStreaming, &k, e))
        })
        .await??;
        Ok(Box::new(LocalWriter {
            tmp: Some(tmp),
            path,
            key: key.clone(),
            mode,
            written: 0,
            synced: 0,
        }))
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream> {
        let path = self.path_of(key);
        let k = key.clone();
        let (file, remaining) = tokio::task::spawn_blocking(move || -> Result<(File, u64)> {
            let mut file = File::open(&path).map_err(|e| io_err(SinkOp::Get, &k, e))?;
            let size = file
                .metadata()
                .map_err(|e| io_err(SinkOp::Get, &k, e))?
                .len();
            let range = range.unwrap_or(0..size);
            if range.start > range.end || range.end > size {
                return Err(Error::sink(
                    SinkOp::Get,
                    k.as_str(),
                    SinkErrorKind::InvalidRange,
                    format!(
                        "{}..{} of {k}, which is {size} bytes",
                        range.start, range.end
                    ),
                ));
            }
            file.seek(SeekFrom::Start(range.start))
                .map_err(|e| io_err(SinkOp::Get, &k, e))?;
            Ok((file, range.end - range.start))
        })
        .await??;
        let key = key.clone();
        let s = stream::try_unfold((file, remaining), move |(mut file, remaining)| {
            let key = key.clone();
            async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let (file, buf) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want];
                    file.read_exact(&mut buf).map(|_| (file, buf))
                })
                .await?
                .map_err(|e| io_err(SinkOp::Get, &key, e))?;
                Ok(Some((Bytes::from(buf), (file, remaining - want as u64))))
            }
        });
        Ok(s.boxed())
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo> {
        let path = self.path_of(key);
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| io_err(SinkOp::Head, key, e))?;
        if !meta.is_file() {
            return Err(Error::ObjectNotFound {
                key: key.to_string(),
            });
        }
        Ok(ObjectInfo {
            key: key.clone(),
            size: meta.len(),
            last_modified_ms: modified_ms(&meta),
        })
    }

    fn list(&self, prefix: &Key) -> BoxStream<'static, Result<ObjectInfo>> {
        let root = self.root.clone();
        let start = self.path_of(prefix);
        let prefix = prefix.clone();
        let fut = tokio::task::spawn_blocking(move || list_blocking(&root, &start, &prefix));
        stream::once(fut)
            .map(|joined| match joined {
                Ok(Ok(items)) => stream::iter(items.into_iter().map(Ok)).boxed(),
                Ok(Err(e)) => stream::iter([Err(e)]).boxed(),
                Err(e) => stream::iter([Err(Error::from(e))]).boxed(),
            })
            .flatten()
            .boxed()
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(SinkOp::Delete, key, e)),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn remove_incomplete(&self, older_than_ms: u64) -> Result<usize> {
        self.remove_temp_files(older_than_ms).await
    }

    async fn open_local(&self, key: &Key) -> Result<Option<File>> {
        let path = self.path_of(key);
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            File::open(&path)
                .map(Some)
                .map_err(|e| io_err(SinkOp::Get, &k, e))
        })
        .await?
    }
}

fn list_blocking(root: &Path, start: &Path, prefix: &Key) -> Result<Vec<ObjectInfo>> {
    let err = |e: io::Error| Error::sink(SinkOp::List, prefix.as_str(), io_kind(&e), e);
    let mut out = Vec::new();
    let mut stack = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(err)?;
            let ty = entry.file_type().map_err(err)?;
            let path = entry.path();
            if ty.is_dir() {
                stack.push(path);
                continue;
            }
            // Temporary files and anything else that is not a valid key are not objects.
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            let Ok(key) = Key::parse(rel.replace(std::path::MAIN_SEPARATOR, "/")) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted between readdir and stat: not there any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                last_modified_ms: modified_ms(&meta),
            });
        }
    }
    Ok(out)
}

struct LocalWriter {
    tmp: Option<NamedTempFile>,
    path: PathBuf,
    key: Key,
    mode: PutMode,
    written: u64,
    synced: u64,
}

impl LocalWriter {
    /// The temporary file, taken for one write or the finish; a failed write leaves none.
    fn take_tmp(&mut self) -> Result<NamedTempFile> {
        self.tmp.take().ok_or_else(|| {
            Error::sink(
                SinkOp::PutStreaming,
                self.key.as_str(),
                SinkErrorKind::Other,
                "writer used after a failed write",
            )
        })
    }
}

#[async_trait]
impl SinkWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let mut tmp = self.take_tmp()?;
        let key = self.key.clone();
        self.written += data.len() as u64;
        let (from, to) = (self.synced, self.written);
        let writeback = to - from >= WRITEBACK_EVERY;
        if writeback {
            self.synced = to;
        }
        let tmp = tokio::task::spawn_blocking(move || {
            tmp.write_all(&data)
                .map_err(|e| io_err(SinkOp::PutStreaming, &key, e))?;
            if writeback {
                start_writeback(tmp.as_file(), from, to - from);
            }
            Ok::<_, Error>(tmp)
        })
        .await??;
        self.tmp = Some(tmp);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo> {
        let tmp = self.take_tmp()?;
        let (path, key, mode) = (self.path.clone(), self.key.clone(), self.mode);
        tokio::task::spawn_blocking(move || publish(tmp, &path, mode, &key, SinkOp::PutStreaming))
            .await?
    }

    fn holds_written_bytes(&self) -> bool {
        false
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(tmp) = self.tmp.take() {
            let key = self.key.clone();
            tokio::task::spawn_blocking(move || {
                tmp.close()
                    .map_err(|e| io_err(SinkOp::PutStreaming, &key, e))
            })
            .await??;
        }
        Ok(())
    }
}
