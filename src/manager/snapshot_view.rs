//! A snapshot seen as a read-only [`VectorStorage`]: every namespace at its point in time,
//! read chunk by chunk (checked as a restore checks them) as a create scans it. What a
//! re-encrypting copy creates the snapshot again from, in another repository.

use super::catalog::ResolvedSnapshot;
use super::pipeline::NamespaceReader;
use super::SnapshotManager;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::storage::{NamespaceId, Vector, VectorStorage};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};

/// Snapshot `id` of `manager`'s repository, as a store.
pub(crate) struct SnapshotView<'a> {
    manager: &'a SnapshotManager,
    id: SnapshotId,
    resolved: ResolvedSnapshot,
    cursors: tokio::sync::Mutex<HashMap<String, Cursor>>,
}

/// Where a scan of one namespace is: its reader, vectors read but not handed out yet, and
/// the last id handed out.
struct Cursor {
    reader: Option<NamespaceReader>,
    ahead: VecDeque<Vector>,
    last: Option<String>,
}

impl std::fmt::Debug for SnapshotView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotView({})", self.id)
    }
}

impl<'a> SnapshotView<'a> {
    pub async fn new(manager: &'a SnapshotManager, id: &SnapshotId) -> Result<SnapshotView<'a>> {
        Ok(SnapshotView {
            manager,
            id: id.clone(),
            resolved: manager.resolve(id).await?,
            cursors: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    fn entry(&self, ns: &str) -> Result<&crate::format::sidecar::NamespaceEntry> {
        self.resolved
            .namespaces
            .get(ns)
            .map(|(_, e)| e)
            .ok_or_else(|| Error::NamespaceNotFound {
                namespace: ns.to_string(),
                context: format!("snapshot {}", self.id),
            })
    }

    /// A cursor at the start of namespace `ns`.
    async fn start(&self, ns: &str) -> Result<Cursor> {
        let (idx, entry) = &self.resolved.namespaces[ns];
        let holder = &self.resolved.chain[*idx];
        let reader = self.manager.open_namespace(holder, entry, false).await?;
        Ok(Cursor {
            reader: Some(reader),
            ahead: VecDeque::new(),
            last: None,
        })
    }

    /// Reads until `cursor` holds `limit` vectors after `after`, or the namespace ends (its
    /// count and content digest are then checked). What `cursor` already holds is after
    /// `after`: it is a fresh cursor, or one that goes on from `after`.
    async fn fill(cursor: &mut Cursor, after: Option<&str>, limit: usize) -> Result<()> {
        while cursor.ahead.len() < limit {
            let Some(reader) = cursor.reader.as_mut() else {
                break;
            };
            match reader.next().await? {
                Some(batch) => cursor.ahead.extend(
                    batch
                        .into_iter()
                        .filter(|v| after.is_none_or(|a| v.id.as_str() > a)),
                ),
                None => {
                    if let Some(done) = cursor.reader.take() {
                        done.finish().await?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_only() -> Error {
    Error::Storage("a snapshot seen as a store is read-only".into())
}

#[async_trait]
impl VectorStorage for SnapshotView<'_> {
    async fn upsert(&self, _: &str, _: Vec<Vector>) -> Result<usize> {
        Err(read_only())
    }

    async fn get(&self, namespace: &str, ids: &[String]) -> Result<Vec<Vector>> {
        let all = self.get_all(namespace).await?;
        Ok(all.into_iter().filter(|v| ids.contains(&v.id)).collect())
    }

    async fn delete(&self, _: &str, _: &[String]) -> Result<usize> {
        Err(read_only())
    }

    async fn namespace_exists(&self, namespace: &str) -> Result<bool> {
        Ok(self.resolved.namespaces.contains_key(namespace))
    }

    async fn ensure_namespace(&self, _: &str) -> Result<()> {
        Err(read_only())
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceId>> {
        Ok(self.resolved.namespaces.keys().cloned().collect())
    }

    async fn dimension(&self, namespace: &str) -> Result<Option<usize>> {
        Ok(self.entry(namespace)?.dimension.map(|d| d as usize))
    }

    async fn count(&self, namespace: &str) -> Result<usize> {
        Ok(self.entry(namespace)?.vector_count as usize)
    }

    async fn delete_namespace(&self, _: &str) -> Result<bool> {
        Err(read_only())
    }

    async fn scan(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Vector>> {
        self.entry(namespace)?;
        let mut cursors = self.cursors.lock().await;
        let resumes = cursors
            .get(namespace)
            .is_some_and(|c| c.last.as_deref() == after);
        if !resumes {
            // A scan that does not go on from the last page: read the namespace again.
            cursors.insert(namespace.to_string(), self.start(namespace).await?);
        }
        let cursor = cursors.get_mut(namespace).expect("inserted above");
        Self::fill(cursor, after, limit.max(1)).await?;
        let take = limit.min(cursor.ahead.len());
        let page: Vec<Vector> = cursor.ahead.drain(..take).collect();
        if let Some(v) = page.last() {
            cursor.last = Some(v.id.clone());
        }
        Ok(page)
    }
}
