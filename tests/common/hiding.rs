//! A sink wrapper that shows a stale view of the repository: chosen keys are left out of
//! listings or answered "not found", as a listing taken before a concurrent commit would.

use async_trait::async_trait;
use dakera_snapshot::paths::Key;
use dakera_snapshot::sink::{ByteStream, ObjectInfo, SinkWriter};
use dakera_snapshot::{Error, PutMode, Result, SnapshotSink};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Hidden {
    from_listing: BTreeSet<String>,
    from_reads: BTreeSet<String>,
}

/// Forwards everything to `inner`, except that hidden keys are missing from listings, or
/// read as absent.
#[derive(Debug)]
pub struct HidingSink {
    inner: Arc<dyn SnapshotSink>,
    hidden: Mutex<Hidden>,
}

impl HidingSink {
    pub fn new(inner: Arc<dyn SnapshotSink>) -> Arc<Self> {
        Arc::new(HidingSink {
            inner,
            hidden: Mutex::default(),
        })
    }

    /// Listings leave `key` out.
    pub fn hide_from_listing(&self, key: &Key) {
        let mut h = self.hidden.lock().unwrap();
        h.from_listing.insert(key.to_string());
    }

    /// `get` of `key` answers "not found".
    pub fn hide_from_reads(&self, key: &Key) {
        let mut h = self.hidden.lock().unwrap();
        h.from_reads.insert(key.to_string());
    }

    pub fn show_all(&self) {
        *self.hidden.lock().unwrap() = Hidden::default();
    }
}

#[async_trait]
impl SnapshotSink for HidingSink {
    async fn put(&self, key: &Key, data: bytes::Bytes, mode: PutMode) -> Result<()> {
        self.inner.put(key, data, mode).await
    }
    async fn put_streaming(&self, key: &Key, mode: PutMode) -> Result<Box<dyn SinkWriter>> {
        self.inner.put_streaming(key, mode).await
    }
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream> {
        if self
            .hidden
            .lock()
            .unwrap()
            .from_reads
            .contains(key.as_str())
        {
            return Err(Error::ObjectNotFound {
                key: key.to_string(),
            });
        }
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectInfo> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &Key) -> BoxStream<'static, Result<ObjectInfo>> {
        let hidden = self.hidden.lock().unwrap().from_listing.clone();
        self.inner
            .list(prefix)
            .filter(move |o| {
                let keep = !matches!(o, Ok(o) if hidden.contains(o.key.as_str()));
                futures::future::ready(keep)
            })
            .boxed()
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("hiding({})", self.inner.describe())
    }
}
