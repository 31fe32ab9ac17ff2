//! A vector store held in memory, for tests, examples and small deployments.

use super::{NamespaceId, Vector, VectorStorage};
use crate::error::{Error, Result};
use crate::id::{Clock, SystemClock};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
struct Namespace {
    dimension: Option<usize>,
    vectors: BTreeMap<String, Vector>,
    /// The store-wide write counter at this namespace's last change.
    version: u64,
    /// At most the earliest expiry of any vector stored (`None`: none has one). Deletes
    /// leave it as it is, so it stays a lower bound; until the clock reaches it nothing has
    /// expired, and counts and change tokens need no walk over the vectors.
    earliest_expiry: Option<u64>,
}

impl Namespace {
    /// How many stored vectors have expired by `now`.
    fn expired(&self, now: u64) -> usize {
        match self.earliest_expiry {
            Some(t) if t <= now => self.vectors.values().filter(|v| v.is_expired(now)).count(),
            _ => 0,
        }
    }
}

/// An in-memory [`VectorStorage`]: namespaces of vectors in id order, with dimension checks
/// and TTL expiry against an injectable clock.
#[derive(Debug)]
pub struct InMemoryStorage {
    /// Shared with the handles [`VectorStorage::shared_handle`] gives out.
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    namespaces: RwLock<BTreeMap<NamespaceId, Namespace>>,
    clock: Arc<dyn Clock>,
    /// Random per instance, so change tokens of two stores never match.
    epoch: u64,
    /// Bumped by every change of any namespace.
    writes: AtomicU64,
}

impl Default for InMemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStorage {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose expiry follows `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let state = State {
            namespaces: RwLock::new(BTreeMap::new()),
            clock,
            epoch: getrandom::u64().unwrap_or_else(|_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
            writes: AtomicU64::new(0),
        };
        InMemoryStorage {
            state: Arc::new(state),
        }
    }

    fn next_version(&self) -> u64 {
        self.state.writes.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NamespaceId, Namespace>> {
        self.state
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NamespaceId, Namespace>> {
        self.state
            .namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn with_ns<T>(&self, namespace: &str, f: impl FnOnce(&Namespace, u64) -> T) -> Result<T> {
        let now = self.state.clock.now_secs();
        let map = self.read();
        let ns = map.get(namespace).ok_or_else(|| not_found(namespace))?;
        Ok(f(ns, now))
    }
}

/// The namespace's live vectors with ids greater than `after`, in id order.
fn live_after<'n>(
    ns: &'n Namespace,
    after: Option<&str>,
    now: u64,
) -> impl Iterator<Item = &'n Vector> {
    let start = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    ns.vectors
        .range::<str, _>((start, Bound::Unbounded))
        .map(|(_, v)| v)
        .filter(move |v| !v.is_expired(now))
}

fn not_found(namespace: &str) -> Error {
    Error::NamespaceNotFound {
        namespace: namespace.to_string(),
        context: "in the store".to_string(),
    }
}

#[async_trait]
impl VectorStorage for InMemoryStorage {
    async fn upsert(&self, namespace: &str, vectors: Vec<Vector>) -> Result<usize> {
        let now = self.state.clock.now_secs();
        let mut map = self.write();
        let ns = map.get_mut(namespace).ok_or_else(|| not_found(namespace))?;
        // Check the whole batch before storing any of it.
        let mut dim = ns.dimension;
        for v in &vectors {
            if v.values.is_empty() {
                return Err(Error::invalid(
                    "vector",
                    format!("{:?} in namespace {namespace:?} has no values", v.id),
                ));
            }
            match dim {
                Some(d) if d != v.values.len() => {
                    return Err(Error::DimensionMismatch {
                        namespace: namespace.to_string(),
                        expected: d,
                        actual: v.values.len(),
                    })
                }
                _ => dim = Some(v.values.len()),
            }
        }
        ns.dimension = dim;
        ns.version = self.next_version();
        let n = vectors.len();
        for mut v in vectors {
            if v.expires_at.is_none() {
                v.expires_at = v.ttl_seconds.map(|ttl| now.saturating_add(ttl));
            }
            if let Some(t) = v.expires_at {
                ns.earliest_expiry = Some(ns.earliest_expiry.map_or(t, |e| e.min(t)));
            }
            ns.vectors.insert(v.id.clone(), v);
        }
        Ok(n)
    }

    async fn get(&self, namespace: &str, ids: &[String]) -> Result<Vec<Vector>> {
        self.with_ns(namespace, |ns, now| {
            ids.iter()
                .filter_map(|id| ns.vectors.get(id))
                .filter(|v| !v.is_expired(now))
                .cloned()
                .collect()
        })
    }

    async fn delete(&self, namespace: &str, ids: &[String]) -> Result<usize> {
        let mut map = self.write();
        let ns = map.get_mut(namespace).ok_or_else(|| not_found(namespace))?;
        let removed = ids
            .iter()
            .filter(|id| ns.vectors.remove(*id).is_some())
            .count();
        if removed > 0 {
            ns.version = self.next_version();
        }
        Ok(removed)
    }

    async fn namespace_exists(&self, namespace: &str) -> Result<bool> {
        Ok(self.read().contains_key(namespace))
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        crate::paths::validate_namespace(namespace)?;
        let mut map = self.write();
        if !map.contains_key(namespace) {
            let ns = Namespace {
                version: self.next_version(),
                ..Namespace::default()
            };
            map.insert(namespace.to_string(), ns);
        }
        Ok(())
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceId>> {
        Ok(self.read().keys().cloned().collect())
    }

    async fn dimension(&self, namespace: &str) -> Result<Option<usize>> {
        self.with_ns(namespace, |ns, _| ns.dimension)
    }

    async fn count(&self, namespace: &str) -> Result<usize> {
        self.with_ns(namespace, |ns, now| ns.vectors.len() - ns.expired(now))
    }

    /// `epoch.version.expired`: the instance, the namespace's last write, and how many of its
    /// vectors have expired by now (expiry only ever removes, so for one version that count
    /// names the live set).
    async fn change_token(&self, namespace: &str) -> Result<Option<String>> {
        self.with_ns(namespace, |ns, now| {
            let expired = ns.expired(now);
            Some(format!(
                "{:016x}.{}.{expired}",
                self.state.epoch, ns.version
            ))
        })
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<bool> {
        Ok(self.write().remove(namespace).is_some())
    }

    async fn scan(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Vector>> {
        self.with_ns(namespace, |ns, now| {
            live_after(ns, after, now).take(limit).cloned().collect()
        })
    }

    fn shared_handle(&self) -> Option<Arc<dyn VectorStorage>> {
        let state = self.state.clone();
        Some(Arc::new(InMemoryStorage { state }))
    }

    async fn scan_each(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut (dyn for<'v> FnMut(&'v Vector) + Send),
    ) -> Result<usize> {
        self.with_ns(namespace, |ns, now| {
            live_after(ns, after, now).take(limit).map(visit).count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ManualClock;

    fn v(id: &str, dim: usize) -> Vector {
        Vector::new(id, vec![1.0; dim])
    }

    #[tokio::test]
    async fn dimension_checks_reject_the_whole_batch() {
        let s = InMemoryStorage::new();
        s.ensure_namespace("a").await.unwrap();
        let err = s.upsert("a", vec![v("x", 3), v("y", 4)]).await.unwrap_err();
        assert!(matches!(
            err,
            Error::DimensionMismatch {
                expected: 3,
                actual: 4,
                ..
            }
        ));
        assert_eq!(s.count("a").await.unwrap(), 0);
        assert_eq!(s.dimension("a").await.unwrap(), None);
        let err = s.upsert("a", vec![v("z", 0)]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(s
            .upsert("missing", vec![v("x", 3)])
            .await
            .unwrap_err()
            .is_not_found());
    }

    #[tokio::test]
    async fn ttl_sets_expiry_and_expired_vectors_are_hidden() {
        let clock = ManualClock::new(1_000_000);
        let s = InMemoryStorage::with_clock(clock.clone());
        s.ensure_namespace("a").await.unwrap();
        s.upsert("a", vec![v("keep", 2), v("ttl", 2).with_ttl(10)])
            .await
            .unwrap();
        let got = s.get("a", &["ttl".to_string()]).await.unwrap();
        assert_eq!(got[0].expires_at, Some(1_010));
        clock.advance(std::time::Duration::from_secs(10));
        assert_eq!(s.count("a").await.unwrap(), 1);
        assert_eq!(s.scan("a", None, 10).await.unwrap().len(), 1);
        assert!(s.get("a", &["ttl".to_string()]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn counts_follow_expiry_after_the_earliest_expiring_vector_is_deleted_or_rewritten() {
        let clock = ManualClock::new(1_000_000);
        let s = InMemoryStorage::with_clock(clock.clone());
        s.ensure_namespace("a").await.unwrap();
        let vs = vec![
            v("gone", 2).with_ttl(5),
            v("late", 2).with_ttl(20),
            v("kept", 2).with_ttl(5),
            v("plain", 2),
        ];
        s.upsert("a", vs).await.unwrap();
        assert_eq!(s.count("a").await.unwrap(), 4);
        s.delete("a", &["gone".into()]).await.unwrap();
        s.upsert("a", vec![v("kept", 2)]).await.unwrap();
        let token = s.change_token("a").await.unwrap();
        clock.advance(std::time::Duration::from_secs(10));
        assert_eq!(s.count("a").await.unwrap(), 3, "nothing left has expired");
        assert_eq!(s.change_token("a").await.unwrap(), token);
        clock.advance(std::time::Duration::from_secs(10));
        assert_eq!(s.count("a").await.unwrap(), 2, "\"late\" has expired");
        assert_ne!(s.change_token("a").await.unwrap(), token);
    }

    #[tokio::test]
    async fn change_tokens_change_with_writes_deletes_and_expiry_and_differ_between_stores() {
        let clock = ManualClock::new(1_000_000);
        let s = InMemoryStorage::with_clock(clock.clone());
        s.ensure_namespace("a").await.unwrap();
        let mut seen: Vec<String> = Vec::new();
        fn fresh(seen: &mut Vec<String>, t: Option<String>) {
            let t = t.unwrap();
            assert!(!seen.contains(&t), "{t} repeats {seen:?}");
            seen.push(t);
        }
        fresh(&mut seen, s.change_token("a").await.unwrap());
        s.upsert("a", vec![v("x", 2), v("y", 2).with_ttl(10)])
            .await
            .unwrap();
        fresh(&mut seen, s.change_token("a").await.unwrap());
        let same = s.change_token("a").await.unwrap();
        assert_eq!(same.as_ref(), seen.last(), "no change, same token");
        clock.advance(std::time::Duration::from_secs(11));
        fresh(&mut seen, s.change_token("a").await.unwrap());
        assert_eq!(s.delete("a", &["nope".into()]).await.unwrap(), 0);
        assert_eq!(s.change_token("a").await.unwrap().as_ref(), seen.last());
        s.delete("a", &["x".into()]).await.unwrap();
        fresh(&mut seen, s.change_token("a").await.unwrap());
        s.delete_namespace("a").await.unwrap();
        s.ensure_namespace("a").await.unwrap();
        fresh(&mut seen, s.change_token("a").await.unwrap());
        let other = InMemoryStorage::new();
        other.ensure_namespace("a").await.unwrap();
        fresh(&mut seen, other.change_token("a").await.unwrap());
    }

    #[tokio::test]
    async fn scan_pages_in_id_order() {
        let s = InMemoryStorage::new();
        s.ensure_namespace("a").await.unwrap();
        let vs: Vec<_> = (0..25).rev().map(|i| v(&format!("id{i:02}"), 2)).collect();
        s.upsert("a", vs).await.unwrap();
        let p1 = s.scan("a", None, 10).await.unwrap();
        let p3 = s.scan("a", Some("id19"), 10).await.unwrap();
        assert_eq!(p1.first().unwrap().id, "id00");
        assert_eq!(p3.len(), 5);
        assert_eq!(s.get_all("a").await.unwrap().len(), 25);
    }

    #[tokio::test]
    async fn scan_each_lends_what_scan_returns() {
        let clock = ManualClock::new(1_000_000);
        let s = InMemoryStorage::with_clock(clock.clone());
        s.ensure_namespace("a").await.unwrap();
        let mut vs: Vec<_> = (0..12).map(|i| v(&format!("id{i:02}"), 2)).collect();
        vs[3] = vs[3].clone().with_ttl(10);
        s.upsert("a", vs).await.unwrap();
        clock.advance(std::time::Duration::from_secs(11));
        for (after, limit) in [
            (None, 5),
            (Some("id02"), 4),
            (Some("id09"), 10),
            (Some("id11"), 3),
        ] {
            let mut lent = Vec::new();
            let n = s
                .scan_each("a", after, limit, &mut |v: &Vector| lent.push(v.clone()))
                .await
                .unwrap();
            assert_eq!(n, lent.len());
            assert_eq!(lent, s.scan("a", after, limit).await.unwrap(), "{after:?}");
        }
        let mut none = |_: &Vector| {};
        assert!(s.scan_each("b", None, 5, &mut none).await.is_err());
    }
}
