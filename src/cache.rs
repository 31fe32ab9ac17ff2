//! A local cache of sidecars, so listing a remote repository costs one listing and not one
//! GET per snapshot.
//!
//! Sidecars are immutable once committed (they are written create-if-absent and never
//! rewritten), so a copy taken once stays right for as long as the repository lists the same
//! object. Each cached copy is filed under the snapshot id and the size and modification time
//! the listing reported; a listing entry that differs in either is a miss. Only snapshots the
//! current listing names are ever looked up, so a deleted snapshot never shows from the cache,
//! and a committed one is fetched the first time it is listed. Every file carries the SHA-256
//! of its content: a damaged or truncated copy is detected, removed and fetched again. The
//! cache only ever saves requests: any failure to read or write it is logged and the sidecar
//! is read from the repository instead.

use crate::id::SnapshotId;
use crate::sink::ObjectInfo;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first line of every cached file: this tag, then the content's SHA-256 in hex.
const TAG: &str = "dakera-snapshot sidecar cache 1 ";

/// A folder of cached sidecars of one repository (see the module docs for why it is safe).
///
/// ```no_run
/// # use dakera_snapshot::{SidecarCache, SinkOptions, SnapshotConfig, SnapshotManager};
/// let url = "s3://backups/prod";
/// let cache = SidecarCache::for_repository(&SidecarCache::default_root().unwrap(), url);
/// let manager = SnapshotManager::from_url(url, &SinkOptions::new(), SnapshotConfig::default())?
///     .with_sidecar_cache(cache);
/// # Ok::<(), dakera_snapshot::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SidecarCache {
    dir: PathBuf,
}

/// What one pass over the cache found for a listing.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// For each listed sidecar, in order: its cached bytes, if a sound copy was there.
    pub hits: Vec<Option<Vec<u8>>>,
    /// Copies that failed their checksum (removed; they are fetched again).
    pub damaged: usize,
}

impl SidecarCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SidecarCache { dir: dir.into() }
    }

    /// The cache of the repository named `repository` (its URL, and whatever else tells it
    /// apart, such as an endpoint) under `root`: one folder per repository.
    pub fn for_repository(root: &Path, repository: &str) -> Self {
        let name = hex::encode(&Sha256::digest(repository.as_bytes())[..12]);
        Self::new(root.join(name))
    }

    /// Where caches live unless told otherwise: `$DAKERA_SNAPSHOT_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/dakera-snapshot`, else `$HOME/.cache/dakera-snapshot`; `None` when
    /// none of them is set.
    pub fn default_root() -> Option<PathBuf> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("DAKERA_SNAPSHOT_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = var("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("dakera-snapshot"));
        }
        var("HOME").map(|home| PathBuf::from(home).join(".cache").join("dakera-snapshot"))
    }

    /// The folder this cache keeps its files in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_name(id: &SnapshotId, info: &ObjectInfo) -> String {
        format!("{id}.{}.{}.json", info.size, info.last_modified_ms)
    }

    /// Looks every listed sidecar up, and removes the files of sidecars no longer listed
    /// (deleted snapshots) and damaged ones. Blocking file work: call it off the runtime.
    pub(crate) fn lookup(&self, listed: &[(SnapshotId, ObjectInfo)]) -> Lookup {
        let wanted: Vec<String> = listed
            .iter()
            .map(|(id, info)| Self::file_name(id, info))
            .collect();
        self.remove_unlisted(&wanted);
        let mut lookup = Lookup::default();
        for name in &wanted {
            let hit = match self.read(name) {
                Read::Sound(bytes) => Some(bytes),
                Read::Missing => None,
                Read::Damaged => {
                    lookup.damaged += 1;
                    self.remove(name);
                    None
                }
            };
            lookup.hits.push(hit);
        }
        lookup
    }

    /// Files a sidecar just fetched and parsed. Blocking file work: call it off the runtime.
    pub(crate) fn store(&self, id: &SnapshotId, info: &ObjectInfo, bytes: &[u8]) {
        if let Err(e) = self.write(&Self::file_name(id, info), bytes) {
            tracing::warn!(cache = %self.dir.display(), error = %e, "could not write to the sidecar cache; listing works without it");
        }
    }

    fn read(&self, name: &str) -> Read {
        let data = match std::fs::read(self.dir.join(name)) {
            Ok(data) => data,
            Err(_) => return Read::Missing,
        };
        let Some(newline) = data.iter().position(|&b| b == b'\n') else {
            return Read::Damaged;
        };
        let (head, body) = (&data[..newline], &data[newline + 1..]);
        let expected = format!("{TAG}{}", hex::encode(Sha256::digest(body)));
        if head == expected.as_bytes() {
            Read::Sound(body.to_vec())
        } else {
            Read::Damaged
        }
    }

    /// Writes `name` whole or not at all: a temporary file, then a rename.
    fn write(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        writeln!(tmp, "{TAG}{}", hex::encode(Sha256::digest(body)))?;
        tmp.write_all(body)?;
        tmp.persist(self.dir.join(name)).map_err(|e| e.error)?;
        Ok(())
    }

    fn remove(&self, name: &str) {
        if let Err(e) = std::fs::remove_file(self.dir.join(name)) {
            tracing::debug!(file = name, error = %e, "could not remove a cache file");
        }
    }

    /// Removes cached files of sidecars the repository no longer lists, and leftovers of
    /// interrupted writes.
    fn remove_unlisted(&self, wanted: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let wanted: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let keep = name.to_str().is_some_and(|n| wanted.contains(n));
            if !keep && entry.file_type().is_ok_and(|t| t.is_file()) {
                self.remove(&name.to_string_lossy());
            }
        }
    }
}

enum Read {
    Sound(Vec<u8>),
    Missing,
    Damaged,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Key;

    fn listed(n: usize) -> Vec<(SnapshotId, ObjectInfo)> {
        (0..n)
            .map(|k| {
                let id =
                    SnapshotId::parse(&format!("20261202T120000{k:03}Z-00000000000000{k:02x}"))
                        .unwrap();
                let info = ObjectInfo {
                    key: Key::parse(format!("snapshots/{id}.meta.json")).unwrap(),
                    size: 10 + k as u64,
                    last_modified_ms: 1_000 + k as u64,
                };
                (id, info)
            })
            .collect()
    }

    #[test]
    fn a_stored_copy_is_found_only_under_the_same_size_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SidecarCache::new(dir.path().join("c"));
        let mut l = listed(2);
        cache.store(&l[0].0, &l[0].1, b"{one}");
        let found = cache.lookup(&l);
        assert_eq!(found.hits, vec![Some(b"{one}".to_vec()), None]);
        l[0].1.size += 1;
        assert_eq!(cache.lookup(&l).hits, vec![None, None]);
    }

    #[test]
    fn damaged_copies_are_misses_and_removed_and_unlisted_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SidecarCache::new(dir.path());
        let l = listed(3);
        for (id, info) in &l {
            cache.store(id, info, format!("{{{id}}}").as_bytes());
        }
        let first = dir.path().join(SidecarCache::file_name(&l[0].0, &l[0].1));
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&first, bytes).unwrap();
        std::fs::write(dir.path().join(".tmpLEFTOVER"), b"x").unwrap();
        let found = cache.lookup(&l[..2]);
        assert_eq!(found.damaged, 1);
        assert_eq!(found.hits[0], None);
        assert!(found.hits[1].is_some());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the sound, listed copy stays: {left:?}");
    }

    #[test]
    fn an_unusable_folder_is_only_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let cache = SidecarCache::new(&file);
        let l = listed(1);
        cache.store(&l[0].0, &l[0].1, b"{}");
        assert_eq!(cache.lookup(&l).hits, vec![None]);
    }

    #[test]
    fn each_repository_has_its_own_folder() {
        let root = Path::new("/cache");
        let a = SidecarCache::for_repository(root, "s3://b/p http://127.0.0.1:9000");
        let b = SidecarCache::for_repository(root, "s3://b/p http://127.0.0.1:9001");
        assert_ne!(a.dir(), b.dir());
        assert!(a.dir().starts_with(root));
    }
}
