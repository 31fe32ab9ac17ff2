//! The one place that builds and checks object keys.
//!
//! Everything a sink stores lives under a key relative to the sink's root. Keys come from
//! the crate's repository layout only; user input (snapshot ids, namespace names) is validated before it can
//! become part of a key, so nothing can address an object outside the repository.

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use std::fmt;

/// Longest key accepted, in bytes (S3's limit is 1024).
pub const MAX_KEY_LEN: usize = 1024;

/// A validated object key, relative to a sink's root: `/`-separated segments, none empty,
/// none starting with `.` (so `.` and `..` are impossible and `.`-names stay free for a sink's
/// own temporary files), no backslash, NUL or other control character, no leading `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Checks `s` and wraps it.
    pub fn parse(s: impl Into<String>) -> Result<Key> {
        let s = s.into();
        validate_key(&s)?;
        Ok(Key(s))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True if this key lies under `prefix` (treated as a directory).
    pub fn is_under(&self, prefix: &Key) -> bool {
        self.0.len() > prefix.0.len()
            && self.0.starts_with(&prefix.0)
            && self.0.as_bytes()[prefix.0.len()] == b'/'
    }

    /// `self/child`, validated.
    pub fn child(&self, child: &str) -> Result<Key> {
        Key::parse(format!("{}/{}", self.0, child))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

fn validate_key(s: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::invalid("key", format!("{s:?}: {reason}")));
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            "key",
            format!("{} bytes long; at most {MAX_KEY_LEN}", s.len()),
        ));
    }
    if s.starts_with('/') {
        return bad("absolute keys are not allowed");
    }
    for seg in s.split('/') {
        if seg.is_empty() {
            return bad("empty path segment");
        }
        if seg.starts_with('.') {
            return bad("segments may not start with '.'");
        }
        if seg.chars().any(|c| c == '\\' || c.is_control()) {
            return bad("backslash or control character");
        }
    }
    Ok(())
}

/// Where a repository keeps its blobs; its `config.json` version says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BlobPlace {
    /// `snapshots/<id>.snap.gz`, beside the sidecars: every repository without a config, or
    /// with a version 1 config.
    #[default]
    BesideSidecars,
    /// `data/<id>.snap.gz` (config version 2): a listing of `snapshots/` holds sidecars only,
    /// half the keys, so `list` pages through half as much.
    Data,
}

impl BlobPlace {
    /// The folder the blobs are in.
    pub fn dir(self) -> Key {
        Key(self.folder().to_string())
    }

    /// The blob key of a snapshot.
    pub fn key(self, id: &SnapshotId) -> Key {
        Key(format!("{}/{id}{BLOB_SUFFIX}", self.folder()))
    }

    /// The snapshot a listed key is the blob of, if it is one in this place.
    pub fn parse(self, key: &Key) -> Option<SnapshotId> {
        let rest = key
            .as_str()
            .strip_prefix(self.folder())?
            .strip_prefix('/')?;
        SnapshotId::parse(rest.strip_suffix(BLOB_SUFFIX)?).ok()
    }

    fn folder(self) -> &'static str {
        match self {
            BlobPlace::BesideSidecars => SNAPSHOTS,
            BlobPlace::Data => DATA,
        }
    }
}

/// Where snapshot objects live inside a sink.
///
/// ```text
/// snapshots/<id>.meta.json   the sidecar; its presence is what makes the snapshot exist
/// data/<id>.snap.gz          the gzip blob (or snapshots/<id>.snap.gz: see BlobPlace)
/// pins/<parent id>.<16 hex>.pin
///                            an incremental snapshot being written on top of <parent id>:
///                            retention and delete leave that parent alone while it exists
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RepoLayout;

const SNAPSHOTS: &str = "snapshots";
const DATA: &str = "data";
const BLOB_SUFFIX: &str = ".snap.gz";
const SIDECAR_SUFFIX: &str = ".meta.json";
const PINS: &str = "pins";
const PIN_SUFFIX: &str = ".pin";
const CONFIG: &str = "config.json";
const KEYS: &str = "keys";
const KEY_SUFFIX: &str = ".json";

impl RepoLayout {
    /// The folder every snapshot object lives in.
    pub fn snapshots_dir(&self) -> Key {
        Key(SNAPSHOTS.to_string())
    }

    /// The sidecar key of a snapshot.
    pub fn sidecar_key(&self, id: &SnapshotId) -> Key {
        Key(format!("{SNAPSHOTS}/{id}{SIDECAR_SUFFIX}"))
    }

    /// The folder of pins.
    pub fn pins_dir(&self) -> Key {
        Key(PINS.to_string())
    }

    /// A pin on `parent`; `token` (16 hex digits) tells concurrent writers' pins apart.
    pub fn pin_key(&self, parent: &SnapshotId, token: u64) -> Key {
        Key(format!("{PINS}/{parent}.{token:016x}{PIN_SUFFIX}"))
    }

    /// The repository config object (written by `init`; absent in repositories made
    /// without it).
    pub fn config_key(&self) -> Key {
        Key(CONFIG.to_string())
    }

    /// The folder of user keys of an encrypted repository.
    pub fn keys_dir(&self) -> Key {
        Key(KEYS.to_string())
    }

    /// The object of user key `id` (16 hex digits).
    pub fn key_key(&self, id: &str) -> Key {
        Key(format!("{KEYS}/{id}{KEY_SUFFIX}"))
    }

    /// The id of a listed user key object, if it is one.
    pub fn parse_key_id<'k>(&self, key: &'k Key) -> Option<&'k str> {
        let id = key
            .as_str()
            .strip_prefix(KEYS)?
            .strip_prefix('/')?
            .strip_suffix(KEY_SUFFIX)?;
        (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }

    /// The snapshot a listed pin key protects, if it is a pin key.
    pub fn parse_pin(&self, key: &Key) -> Option<SnapshotId> {
        let rest = key.as_str().strip_prefix(PINS)?.strip_prefix('/')?;
        let stem = rest.strip_suffix(PIN_SUFFIX)?;
        let (id, token) = stem.rsplit_once('.')?;
        if token.len() != 16 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        SnapshotId::parse(id).ok()
    }

    /// The snapshot a listed key is the sidecar of, if it is one; anything else (blobs,
    /// foreign files, temporary files) yields `None`.
    pub fn parse_sidecar(&self, key: &Key) -> Option<SnapshotId> {
        let rest = key.as_str().strip_prefix(SNAPSHOTS)?.strip_prefix('/')?;
        SnapshotId::parse(rest.strip_suffix(SIDECAR_SUFFIX)?).ok()
    }
}

/// Longest namespace name accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 512;

/// Checks a namespace name (from a store, a filter or a rename map). Namespace names never
/// become keys, but they are printed, logged and stored, so they must be sane text.
pub fn validate_namespace(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("namespace", "empty name"));
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return Err(Error::invalid(
            "namespace",
            format!("{} bytes long; at most {MAX_NAMESPACE_LEN}", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "namespace",
            format!("{name:?} contains a control character"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_table() {
        let good = ["a", "snapshots/x.snap.gz", "a/b/c", "%2e%2e/x", "ünï/cødé"];
        for k in good {
            assert!(Key::parse(k).is_ok(), "{k} should be valid");
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        let bad = [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            ".hidden",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            "a\nb",
            long.as_str(),
        ];
        for k in bad {
            let err = Key::parse(k).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput { what: "key", .. }),
                "{k:?}: {err}"
            );
        }
    }

    #[test]
    fn layout_round_trip_and_foreign_files() {
        let l = RepoLayout;
        let id = SnapshotId::parse("20261125T115859123Z-0123456789abcdef").unwrap();
        assert_eq!(l.parse_sidecar(&l.sidecar_key(&id)), Some(id.clone()));
        for place in [BlobPlace::BesideSidecars, BlobPlace::Data] {
            let blob = place.key(&id);
            assert!(blob.is_under(&place.dir()));
            assert_eq!(place.parse(&blob), Some(id.clone()));
            assert_eq!(l.parse_sidecar(&blob), None);
        }
        assert_eq!(
            BlobPlace::Data.key(&id).as_str(),
            "data/20261125T115859123Z-0123456789abcdef.snap.gz"
        );
        assert_eq!(
            BlobPlace::Data.parse(&BlobPlace::BesideSidecars.key(&id)),
            None
        );
        assert_eq!(
            BlobPlace::BesideSidecars.parse(&BlobPlace::Data.key(&id)),
            None
        );
        for foreign in [
            "snapshots/readme.txt",
            "other/x.snap.gz",
            "snapshots/a b.meta.json",
            "data/a b.snap.gz",
        ] {
            let key = Key::parse(foreign).unwrap();
            assert_eq!(l.parse_sidecar(&key), None, "{foreign}");
            assert_eq!(BlobPlace::Data.parse(&key), None, "{foreign}");
            assert_eq!(BlobPlace::BesideSidecars.parse(&key), None, "{foreign}");
        }
    }

    #[test]
    fn is_under_needs_a_separator() {
        let p = Key::parse("snap").unwrap();
        assert!(Key::parse("snap/x").unwrap().is_under(&p));
        assert!(!Key::parse("snapshots/x").unwrap().is_under(&p));
        assert!(!p.is_under(&p));
    }

    #[test]
    fn namespaces() {
        assert!(validate_namespace("docs-ü").is_ok());
        assert!(validate_namespace("a/../b").is_ok(), "never used as a path");
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("a\0").is_err());
        assert!(validate_namespace(&"x".repeat(MAX_NAMESPACE_LEN + 1)).is_err());
    }
}
