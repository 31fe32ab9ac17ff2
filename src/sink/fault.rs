//! A fault-injecting [`SnapshotSink`] wrapper, for testing what happens when storage
//! misbehaves (feature `fault-injection`).
//!
//! [`FaultySink`] forwards every call to an inner sink and numbers it. Faults are attached to
//! a call number (every call counts, of any kind) or to the n-th call of one kind, and can
//! fail the call, fail it *after* it took effect (a lost response), delay it, hang it forever
//! (to test timeouts and cancellation) or truncate it (a short write reported as complete, a
//! short read, a listing that breaks off).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> dakera_snapshot::Result<()> {
//! use dakera_snapshot::sink::fault::{Call, Fault, FaultySink};
//! use dakera_snapshot::{InMemoryStorage, CreateOptions, LocalFsSink, SnapshotConfig, SnapshotManager};
//! use std::sync::Arc;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let sink = FaultySink::new(Arc::new(LocalFsSink::new(dir.path())?));
//! sink.inject_nth(Call::Put, 0, Fault::Fail); // the first whole-object put fails
//! let manager = SnapshotManager::new(sink.clone(), SnapshotConfig::default())?;
//! let store = InMemoryStorage::new();
//! assert!(manager.create_snapshot(&store, CreateOptions::default()).await.is_err());
//! assert!(manager.list_snapshots().await?.is_empty());
//! println!("{} calls: {:?}", sink.call_count(), sink.calls());
//! # Ok(())
//! # }
//! ```

use super::{ByteStream, ObjectInfo, PutMode, SinkWriter, SnapshotSink};
use crate::error::{Error, Result, SinkErrorKind, SinkOp};
use crate::paths::Key;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kinds of sink calls that are counted and can be faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`SnapshotSink::put`].
    Put,
    /// [`SnapshotSink::put_streaming`] (starting an upload).
    PutStreaming,
    /// [`SinkWriter::write`] (one part of an upload).
    Write,
    /// [`SinkWriter::finish`] (completing an upload).
    Finish,
    /// [`SinkWriter::abort`].
    Abort,
    /// [`SnapshotSink::get`].
    Get,
    /// [`SnapshotSink::head`].
    Head,
    /// [`SnapshotSink::list`] (one whole listing).
    List,
    /// [`SnapshotSink::delete`].
    Delete,
    /// [`SnapshotSink::remove_incomplete`].
    RemoveIncomplete,
}

/// What to do to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail without doing anything.
    Fail,
    /// Do it, then report failure (a response lost on the way back). For `Write`, the part
    /// is written; for `get`/`list`, the data is read and discarded.
    FailAfter,
    /// Wait this long, then do it.
    Delay(Duration),
    /// Never complete. Use a timeout around the operation: the point is what dropping it
    /// leaves behind.
    Hang,
    /// Put / write: store only the first half of the data and report success. Get: return
    /// only the first half of the bytes. List: yield half of the listing, then an error.
    /// Other calls: like `Fail`.
    Truncate,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number, from 0, over all calls.
    pub index: usize,
    /// Its kind.
    pub call: Call,
    /// The key (the prefix, for a listing).
    pub key: String,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Copy)]
enum When {
    Index(usize),
    Nth(Call, usize),
    Every(Call),
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Record>,
    rules: Vec<(When, Fault)>,
}

/// A sink wrapper that numbers calls and injects faults into chosen ones.
///
/// Reads always go through [`SnapshotSink::get`] (the wrapper does not expose the inner
/// sink's local files), so read faults apply to local sinks too.
#[derive(Debug)]
pub struct FaultySink {
    inner: Arc<dyn SnapshotSink>,
    state: Arc<Mutex<State>>,
}

impl FaultySink {
    /// Wraps `inner`; no faults until some are injected.
    pub fn new(inner: Arc<dyn SnapshotSink>) -> Arc<Self> {
        Arc::new(FaultySink {
            inner,
            state: Arc::default(),
        })
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &Arc<dyn SnapshotSink> {
        &self.inner
    }

    /// Applies `fault` to the call numbered `index` (counting every call from 0).
    pub fn inject_at(&self, index: usize, fault: Fault) {
        self.lock().rules.push((When::Index(index), fault));
    }

    /// Applies `fault` to the `n`-th (from 0) call of kind `call`.
    pub fn inject_nth(&self, call: Call, n: usize, fault: Fault) {
        self.lock().rules.push((When::Nth(call, n), fault));
    }

    /// Applies `fault` to every call of kind `call` from now on, until the faults are
    /// cleared (a backend that is down for one kind of request).
    pub fn inject_every(&self, call: Call, fault: Fault) {
        self.lock().rules.push((When::Every(call), fault));
    }

    /// Removes all faults (the call log is kept).
    pub fn clear_faults(&self) {
        self.lock().rules.clear();
    }

    /// Forgets the call log and the faults; numbering starts again from 0.
    pub fn reset(&self) {
        *self.lock() = State::default();
    }

    /// Calls made so far.
    pub fn call_count(&self) -> usize {
        self.lock().log.len()
    }

    /// The log of calls.
    pub fn calls(&self) -> Vec<Record> {
        self.lock().log.clone()
    }

    /// The calls a fault was applied to.
    pub fn faulted(&self) -> Vec<Record> {
        self.lock()
            .log
            .iter()
            .filter(|r| r.fault.is_some())
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Numbers a call and returns the fault to apply, if any.
fn enter(state: &Mutex<State>, call: Call, key: &str) -> Option<Fault> {
    let mut s = lock(state);
    let index = s.log.len();
    let nth = s.log.iter().filter(|r| r.call == call).count();
    let fault = s.rules.iter().find_map(|(w, f)| match *w {
        When::Index(i) if i == index => Some(*f),
        When::Nth(c, n) if c == call && n == nth => Some(*f),
        When::Every(c) if c == call => Some(*f),
        _ => None,
    });
    s.log.push(Record {
        index,
        call,
        key: key.to_string(),
        fault,
    });
    fault
}

fn op_of(call: Call) -> SinkOp {
    match call {
        Call::Put => SinkOp::Put,
        Call::PutStreaming | Call::Write | Call::Finish | Call::Abort => SinkOp::PutStreaming,
        Call::Get => SinkOp::Get,
        Call::Head => SinkOp::Head,
        Call::List => SinkOp::List,
        Call::Delete | Call::RemoveIncomplete => SinkOp::Delete,
    }
}

fn injected(call: Call, key: &str, fault: Fault) -> Error {
    Error::sink(
        op_of(call),
        key,
        SinkErrorKind::Transient,
        format!("injected fault {fault:?} on {call:?}"),
    )
}

/// Applies the fault's timing part. Returns `Some(fault)` for faults the call site must
/// still act on (fail before, fail after, truncate), `None` to proceed normally.
async fn before(fault: Option<Fault>) -> Option<Fault> {
    match fault {
        None => None,
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(Fault::Hang) => futures::future::pending().await,
        Some(other) => Some(other),
    }
}

/// Runs `op` under a fault that has no truncation meaning for it.
async fn simple<T>(
    call: Call,
    key: &str,
    fault: Option<Fault>,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match before(fault).await {
        None => op.await,
        Some(f @ Fault::FailAfter) => {
            op.await?;
            Err(injected(call, key, f))
        }
        Some(f) => Err(injected(call, key, f)),
    }
}

fn half(data: &Bytes) -> Bytes {
    data.slice(..data.len() / 2)
}

#[async_trait]
impl SnapshotSink for FaultySink {
    async fn put(&self, key: &Key, data: Bytes, mode: PutMode) -> Result<()> {
        let fault = enter(&self.state, Call::Put, key.as_str());
        match before(fault).await {
            Some(Fault::Truncate) => self.inner.put(key, half(&data), mode).await,
            f => simple(Call::Put, key.as_str(), f, self.inner.put(key, data, mode)).await,
        }
    }

    async fn put_streaming(&self, key: &Key, mode: PutMode) -> Result<Box<dyn SinkWriter>> {
        let fault = enter(&self.state, Call::PutStreaming, key.as_str());
        let inner = simple(
            Call::PutStreaming,
            key.as_str(),
            fault,
            self.inner.put_streaming(key, mode),
        )
        .await?;
        Ok(Box::new(FaultyWriter {
            inner,
            key: key.to_string(),
            state: self.state.clone(),
        }))
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream> {
        let fault = enter(&self.state, Call::Get, key.as_str());
        match before(fault).await {
            Some(Fault::Truncate) => {
                let all: Vec<Bytes> = self.inner.get(key, range).await?.try_collect().await?;
                let all = Bytes::from(all.concat());
                Ok(futures::stream::iter([Ok(half(&all))]).boxed())
            }
            Some(f @ Fault::FailAfter) => {
                let _: Vec<Bytes> = self.inner.get(key, range).await?.try_collect().await?;
                Err(injected(Call::Get, key.as_str(), f))
            }
            Some(f) => Err(injected(Call::Get, key.as_str(), f)),
            None => self.inner.get(key, range).await,
        }
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo> {
        let fault = enter(&self.state, Call::Head, key.as_str());
        simple(Call::Head, key.as_str(), fault, self.inner.head(key)).await
    }

    fn list(&self, prefix: &Key) -> BoxStream<'static, Result<ObjectInfo>> {
        let fault = enter(&self.state, Call::List, prefix.as_str());
        let inner = self.inner.list(prefix);
        let key = prefix.to_string();
        futures::stream::once(async move {
            let err = |f| Err(injected(Call::List, &key, f));
            let items: Vec<Result<ObjectInfo>> = match before(fault).await {
                None => return inner.boxed(),
                Some(f @ Fault::Fail) => vec![err(f)],
                Some(f @ Fault::FailAfter) => {
                    let all: Vec<Result<ObjectInfo>> = inner.collect().await;
                    all.into_iter()
                        .take_while(Result::is_ok)
                        .chain([err(f)])
                        .collect()
                }
                Some(f) => {
                    let all: Vec<Result<ObjectInfo>> = inner.collect().await;
                    let n = all.len() / 2;
                    all.into_iter().take(n).chain([err(f)]).collect()
                }
            };
            futures::stream::iter(items).boxed()
        })
        .flatten()
        .boxed()
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let fault = enter(&self.state, Call::Delete, key.as_str());
        simple(Call::Delete, key.as_str(), fault, self.inner.delete(key)).await
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    async fn remove_incomplete(&self, older_than_ms: u64) -> Result<usize> {
        let fault = enter(&self.state, Call::RemoveIncomplete, "");
        simple(
            Call::RemoveIncomplete,
            "",
            fault,
            self.inner.remove_incomplete(older_than_ms),
        )
        .await
    }
}

struct FaultyWriter {
    inner: Box<dyn SinkWriter>,
    key: String,
    state: Arc<Mutex<State>>,
}

#[async_trait]
impl SinkWriter for FaultyWriter {
    fn holds_written_bytes(&self) -> bool {
        self.inner.holds_written_bytes()
    }

    async fn write(&mut self, data: Bytes) -> Result<()> {
        let fault = enter(&self.state, Call::Write, &self.key);
        match before(fault).await {
            Some(Fault::Truncate) => self.inner.write(half(&data)).await,
            f => simple(Call::Write, &self.key, f, self.inner.write(data)).await,
        }
    }

    async fn finish(self: Box<Self>) -> Result<ObjectInfo> {
        let fault = enter(&self.state, Call::Finish, &self.key);
        let key = self.key.clone();
        match before(fault).await {
            // A completed upload reported as smaller than it is: what a buggy layer might do.
            Some(Fault::Truncate) => {
                let mut info = self.inner.finish().await?;
                info.size /= 2;
                Ok(info)
            }
            Some(f @ Fault::Fail) => {
                let _ = self.inner.abort().await;
                Err(injected(Call::Finish, &key, f))
            }
            f => simple(Call::Finish, &key, f, self.inner.finish()).await,
        }
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let fault = enter(&self.state, Call::Abort, &self.key);
        let key = self.key.clone();
        simple(Call::Abort, &key, fault, self.inner.abort()).await
    }
}
